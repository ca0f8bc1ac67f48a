//! The fleet store's layout: key names, how times are written, and the checks everything read
//! back from the store must pass (the store is a trust boundary: docs/threat-model.md).
//!
//! For a cluster prefix `P` and a group (rule, state, group) whose tag is `H`:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P:g:{H}` | hash | `r` rule, `s` state, `n` group, `t` start of its learning period |
//! | `P:v:{H}` | hash | value → `first:last` seen |
//! | `P:groups` | hash | `H` → `rule NUL state NUL group`: the index a joining node loads |
//! | `P:log` | stream | what nodes learned, allowed and forgot, for the others to follow |
//! | `P:rules` | hash | rule → its learning settings, for `picket state show` |
//!
//! `{H}` is a Redis Cluster hash tag: one group's keys share one slot, so that the scripts that
//! decide on a group stay atomic on ElastiCache or MemoryDB in cluster mode. Times are
//! nanoseconds written as 16 lowercase hex digits of the offset-binary form (`ns XOR 2^63`),
//! so that the store's scripts compare them exactly as strings; Lua's numbers are doubles and
//! would round event times.

use crate::state::Settings;

/// Longest cluster prefix accepted.
pub const MAX_PREFIX_BYTES: usize = 64;

/// Longest state name, group or value read from the store (the ABI's own limits).
const MAX_STATE_NAME: usize = picket_abi::MAX_STATE_NAME_BYTES;
const MAX_TEXT: usize = picket_abi::MAX_STRING_BYTES;

/// Checks a key prefix: letters, digits and `.`, `_`, `-`, `:` only, so that no prefix can
/// carry a hash tag of its own or run into another cluster's keys.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_BYTES {
        return Err(format!(
            "the shared-state prefix must be 1 to {MAX_PREFIX_BYTES} bytes, not {}",
            prefix.len()
        ));
    }
    if let Some(bad) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
    {
        return Err(format!(
            "the shared-state prefix `{prefix}` has `{}`; use letters, digits, `.`, `_`, `-`, `:`",
            bad.escape_default()
        ));
    }
    Ok(())
}

/// The keys of one cluster's fleet state.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The keys under a checked prefix.
    pub fn new(prefix: &str) -> Result<Keys, String> {
        check_prefix(prefix)?;
        Ok(Keys {
            prefix: prefix.to_string(),
        })
    }

    /// The group's meta hash.
    pub fn meta(&self, tag: &str) -> String {
        format!("{}:g:{{{tag}}}", self.prefix)
    }

    /// The group's values hash.
    pub fn values(&self, tag: &str) -> String {
        format!("{}:v:{{{tag}}}", self.prefix)
    }

    /// The index of every group.
    pub fn index(&self) -> String {
        format!("{}:groups", self.prefix)
    }

    /// The stream of changes.
    pub fn log(&self) -> String {
        format!("{}:log", self.prefix)
    }

    /// The learning settings per rule.
    pub fn rules(&self) -> String {
        format!("{}:rules", self.prefix)
    }
}

/// A group's tag: 24 hex digits of a digest of its rule, state and group, so that every key of
/// a group shares one hash slot, any group name fits in a key, and an entry found under a tag
/// can be checked to belong there.
pub fn tag(rule: &str, state: &str, group: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in [rule, state, group] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().to_hex()[..24].to_string()
}

/// A time as the store writes it (see the module documentation).
pub fn time(ns: i64) -> String {
    format!("{:016x}", (ns as u64) ^ (1 << 63))
}

/// Reads a time the store wrote; `None` for anything else.
pub fn parse_time(text: &str) -> Option<i64> {
    if text.len() != 16 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(text, 16)
        .ok()
        .map(|raw| (raw ^ (1 << 63)) as i64)
}

/// A value's `first:last` sightings as the store writes them.
pub fn seen(first_ns: i64, last_ns: i64) -> String {
    format!("{}:{}", time(first_ns), time(last_ns))
}

/// Reads `first:last`; `None` when malformed or when the last is before the first.
pub fn parse_seen(text: &str) -> Option<(i64, i64)> {
    let (first, last) = text.split_once(':')?;
    let (first, last) = (parse_time(first)?, parse_time(last)?);
    (first <= last).then_some((first, last))
}

/// The index entry of a group: `rule NUL state NUL group`.
pub fn index_entry(rule: &str, state: &str, group: &str) -> String {
    format!("{rule}\0{state}\0{group}")
}

/// One group as read from the store, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupName {
    /// Rule id.
    pub rule: String,
    /// State name.
    pub state: String,
    /// Group.
    pub group: String,
}

/// Reads and checks an index entry found under `tag`: three parts within the ABI's limits,
/// and the tag must be theirs (an entry cannot be filed under another group's keys).
pub fn parse_index_entry(tag: &str, entry: &[u8]) -> Result<GroupName, String> {
    let entry = std::str::from_utf8(entry).map_err(|_| "not UTF-8".to_string())?;
    let mut parts = entry.split('\0');
    let (Some(rule), Some(state), Some(group), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not `rule NUL state NUL group`".into());
    };
    check_name(rule, state, group)?;
    if self::tag(rule, state, group) != tag {
        return Err(format!("filed under tag {tag}, which is not its own"));
    }
    Ok(GroupName {
        rule: rule.into(),
        state: state.into(),
        group: group.into(),
    })
}

/// Checks a (rule, state, group) within the ABI's limits.
pub fn check_name(rule: &str, state: &str, group: &str) -> Result<(), String> {
    if rule.is_empty() || rule.len() > picket_abi::MAX_RULE_ID_BYTES {
        return Err(format!("rule id of {} bytes", rule.len()));
    }
    if state.is_empty() || state.len() > MAX_STATE_NAME {
        return Err(format!("state name of {} bytes", state.len()));
    }
    if group.len() > MAX_TEXT {
        return Err(format!("group of {} bytes", group.len()));
    }
    Ok(())
}

/// Checks a value read from the store.
pub fn check_value(value: &[u8]) -> Result<&str, String> {
    let value = std::str::from_utf8(value).map_err(|_| "value is not UTF-8".to_string())?;
    if value.len() > MAX_TEXT {
        return Err(format!("value of {} bytes", value.len()));
    }
    Ok(value)
}

/// A rule's settings as stored in `P:rules`.
pub fn settings_entry(settings: Settings) -> String {
    format!(
        "{}:{}",
        settings.learning_period_ns, settings.forget_after_ns
    )
}

/// Reads a rule's settings from `P:rules`.
pub fn parse_settings(text: &[u8]) -> Option<Settings> {
    let (learning, forget) = std::str::from_utf8(text).ok()?.split_once(':')?;
    Some(Settings {
        learning_period_ns: learning.parse().ok()?,
        forget_after_ns: forget.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_compare_as_strings_like_numbers() {
        let times = [
            i64::MIN,
            -1_000_000_000,
            -1,
            0,
            1,
            1_764_000_000_000_000_000,
            1_764_000_000_000_000_001,
            i64::MAX,
        ];
        for pair in times.windows(2) {
            assert!(time(pair[0]) < time(pair[1]), "{pair:?}");
        }
        for t in times {
            assert_eq!(parse_time(&time(t)), Some(t));
        }
        assert_eq!(parse_seen(&seen(5, 9)), Some((5, 9)));
        assert_eq!(parse_seen(&seen(9, 5)), None);
        for bad in [
            "",
            "12",
            "zzzzzzzzzzzzzzzz",
            "800000000000000G",
            "8000000000000000 ",
        ] {
            assert_eq!(parse_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn prefixes_cannot_carry_a_hash_tag() {
        assert!(check_prefix("picket:prod-eu_1.a").is_ok());
        for bad in ["", "a{b}", "a b", "a\nb", &"x".repeat(65)] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn index_entries_must_be_filed_under_their_own_tag() {
        let tag = tag("eks-token", "process.exe", "registry.example/app");
        let entry = index_entry("eks-token", "process.exe", "registry.example/app");
        assert_eq!(
            parse_index_entry(&tag, entry.as_bytes()).unwrap().group,
            "registry.example/app"
        );
        let other = index_entry("eks-token", "process.exe", "registry.example/other");
        assert!(parse_index_entry(&tag, other.as_bytes()).is_err());
        assert!(parse_index_entry(&tag, b"no separators").is_err());
        assert!(parse_index_entry(&tag, b"a\0b\0c\0d").is_err());
        assert!(parse_index_entry(&tag, b"\xff\0b\0c").is_err());
        // A group name with the separator cannot be confused with another split.
        assert_ne!(
            tag,
            self::tag("eks-token\0process.exe", "", "registry.example/app")
        );
    }

    #[test]
    fn keys_share_the_group_hash_tag() {
        let keys = Keys::new("picket").unwrap();
        assert_eq!(keys.meta("abc"), "picket:g:{abc}");
        assert_eq!(keys.values("abc"), "picket:v:{abc}");
    }
}
