//! Plain errors for a manifest or a signal request that does not decode: which field, at which
//! byte, what was found there and what was expected, in words that hold for any language.
//!
//! The derived bincode decoders only say what went wrong (`UnexpectedVariant { type_name:
//! "Severity", .. }`, `1 trailing bytes`), not where. When one fails, the bytes are walked again
//! here, field by field in the order docs/abi.md lists them, to find the first that does not
//! read. The walk is only for the error: the value itself comes from the derived decoder, and a
//! test holds the walk to the same encoding (`the_walks_read_what_the_encoders_write`).

use alloc::format;
use alloc::string::{String, ToString};
use core::fmt;

/// Why encoded bytes are not a manifest or signal request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeFailure {
    /// The field that does not read, as a path (`subscription.kinds[0]`); empty when the bytes
    /// read whole and something follows them.
    pub field: String,
    /// Where that field starts, from the start of the encoding.
    pub offset: usize,
    /// What is wrong there, with a hint on the encoding.
    pub problem: String,
}

impl fmt::Display for DecodeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "at byte {}: {}", self.offset, self.problem)
        } else {
            write!(
                f,
                "field `{}` at byte {}: {}",
                self.field, self.offset, self.problem
            )
        }
    }
}

const VARINT_HINT: &str = "an integer is a varint: one byte below 251, or 251, 252 or 253 \
                           followed by a 2-, 4- or 8-byte little-endian integer";

/// A position in the bytes being walked.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    /// What the value is, for the messages ("manifest", "signal request").
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn fail(&self, field: &str, offset: usize, problem: String) -> DecodeFailure {
        DecodeFailure {
            field: field.to_string(),
            offset,
            problem,
        }
    }

    fn take(&mut self, field: &str, start: usize, n: usize) -> Result<&'a [u8], DecodeFailure> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.fail(
                field,
                start,
                format!(
                    "the {} ends after {} bytes, in the middle of this field (it needs {} more); \
                     is the length the module returned the length of the whole encoding?",
                    self.what,
                    self.bytes.len(),
                    self.at.saturating_add(n) - self.bytes.len()
                ),
            ));
        };
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn varint(&mut self, field: &str) -> Result<u64, DecodeFailure> {
        let start = self.at;
        let first = self.take(field, start, 1)?[0];
        let width = match first {
            0..=250 => return Ok(u64::from(first)),
            251 => 2,
            252 => 4,
            253 => 8,
            _ => {
                return Err(self.fail(
                    field,
                    start,
                    format!("{first} does not start an integer that fits 64 bits; {VARINT_HINT}"),
                ));
            }
        };
        let raw = self.take(field, start, width)?;
        let mut value = [0u8; 8];
        value[..width].copy_from_slice(raw);
        Ok(u64::from_le_bytes(value))
    }

    /// A length (of a string or a list) that cannot ask for more bytes than are left, since
    /// each element takes at least one byte.
    fn len(&mut self, field: &str) -> Result<usize, DecodeFailure> {
        let start = self.at;
        let len = self.varint(field)?;
        let left = self.bytes.len() - self.at;
        if len > left as u64 {
            return Err(self.fail(
                field,
                start,
                format!(
                    "its length says {len}, but only {left} bytes of the {} follow; a string or \
                     list is its length (a varint) followed by its elements",
                    self.what
                ),
            ));
        }
        Ok(len as usize)
    }

    fn string(&mut self, field: &str) -> Result<(), DecodeFailure> {
        let start = self.at;
        let len = self.len(field)?;
        let bytes = self.take(field, start, len)?;
        if let Err(err) = core::str::from_utf8(bytes) {
            return Err(self.fail(
                field,
                start,
                format!(
                    "the string is not UTF-8 (byte {} of it); strings are UTF-8 bytes after \
                     their length, with no NUL terminator",
                    err.valid_up_to()
                ),
            ));
        }
        Ok(())
    }

    fn variant(&mut self, field: &str, names: &[&str]) -> Result<(), DecodeFailure> {
        let start = self.at;
        let index = self.varint(field)?;
        if index >= names.len() as u64 {
            let choices: alloc::vec::Vec<String> = names
                .iter()
                .enumerate()
                .map(|(i, name)| format!("{i} = {name}"))
                .collect();
            return Err(self.fail(
                field,
                start,
                format!(
                    "{index} is not one of its values ({}); an enum is its index as a varint",
                    choices.join(", ")
                ),
            ));
        }
        Ok(())
    }

    fn option(&mut self, field: &str) -> Result<bool, DecodeFailure> {
        let start = self.at;
        match self.take(field, start, 1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.fail(
                field,
                start,
                format!(
                    "{other} is neither 0 (absent) nor 1 (present, the value follows); an \
                     optional field starts with one of those two bytes"
                ),
            )),
        }
    }

    fn end(&self) -> Result<(), DecodeFailure> {
        let left = self.bytes.len() - self.at;
        if left == 0 {
            return Ok(());
        }
        Err(self.fail(
            "",
            self.at,
            format!(
                "the {} ends here, but {left} more byte(s) follow; the length the module gives \
                 must be that of the encoding exactly (is it the buffer's capacity, or a field \
                 that ABI version {} does not have?)",
                self.what,
                crate::ABI_VERSION
            ),
        ))
    }
}

/// Walks a manifest's encoding as docs/abi.md lays it out; the first field that does not read.
fn walk_manifest(c: &mut Cursor<'_>) -> Result<(), DecodeFailure> {
    for field in ["id", "title", "description"] {
        c.string(field)?;
    }
    c.variant("severity", &["info", "low", "medium", "high", "critical"])?;
    c.string("tactic")?;
    c.string("technique")?;
    for i in 0..c.len("subscription.kinds")? {
        c.variant(&format!("subscription.kinds[{i}]"), &["open"])?;
    }
    for list in ["subscription.basenames", "subscription.path_prefixes"] {
        for i in 0..c.len(list)? {
            c.string(&format!("{list}[{i}]"))?;
        }
    }
    c.varint("new_value.learning_period_ns")?;
    c.varint("new_value.forget_after_ns")?;
    if c.at < c.bytes.len() {
        for i in 0..c.len("states")? {
            c.string(&format!("states[{i}].name"))?;
            c.varint(&format!("states[{i}].learning_period_ns"))?;
            c.varint(&format!("states[{i}].forget_after_ns"))?;
        }
    }
    c.end()
}

/// Walks a signal request's encoding; the first field that does not read.
fn walk_signal_request(c: &mut Cursor<'_>) -> Result<(), DecodeFailure> {
    if c.option("new_value")? {
        for field in ["new_value.field", "new_value.value", "new_value.group"] {
            c.string(field)?;
        }
    }
    if c.at < c.bytes.len() {
        for i in 0..c.len("context")? {
            c.string(&format!("context[{i}].key"))?;
            c.string(&format!("context[{i}].value"))?;
        }
    }
    c.end()
}

fn explain(
    bytes: &[u8],
    what: &'static str,
    walk: fn(&mut Cursor<'_>) -> Result<(), DecodeFailure>,
    err: bincode::error::DecodeError,
) -> DecodeFailure {
    let mut cursor = Cursor { bytes, at: 0, what };
    walk(&mut cursor).err().unwrap_or_else(|| DecodeFailure {
        // The walk read what the decoder did not: say what the decoder said.
        field: String::new(),
        offset: 0,
        problem: format!("{err}"),
    })
}

/// Decodes a manifest; a failure names the field and byte where the encoding goes wrong.
pub fn decode_manifest(bytes: &[u8]) -> Result<crate::Manifest, DecodeFailure> {
    crate::decode_owned(bytes).map_err(|err| explain(bytes, "manifest", walk_manifest, err))
}

/// Decodes a signal request; a failure names the field and byte where the encoding goes wrong.
pub fn decode_signal_request(bytes: &[u8]) -> Result<crate::SignalRequest<'_>, DecodeFailure> {
    crate::decode_borrowed(bytes)
        .map_err(|err| explain(bytes, "signal request", walk_signal_request, err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        EventKind, Manifest, NewValueDefaults, NewValueView, Severity, SignalRequest, Subscription,
        encode_into_vec,
    };
    use alloc::vec;
    use alloc::vec::Vec;

    fn manifest() -> Manifest {
        Manifest {
            id: "r".into(),
            title: "t".into(),
            description: String::new(),
            severity: Severity::High,
            tactic: "ta".into(),
            technique: "te".into(),
            subscription: Subscription {
                kinds: vec![EventKind::Open],
                basenames: vec!["shadow".into()],
                path_prefixes: vec!["/etc/".into(), "/x/".into()],
            },
            new_value: NewValueDefaults {
                learning_period_ns: 7 * 86_400_000_000_000,
                forget_after_ns: 300,
            },
            states: vec![crate::StateSettings {
                name: "process.parent.exe".into(),
                learning_period_ns: 14 * 86_400_000_000_000,
                forget_after_ns: 600,
            }],
        }
    }

    fn encoded<T: bincode::Encode>(value: &T) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_into_vec(value, &mut buf).unwrap();
        buf
    }

    /// The walks follow the derived encoding exactly; a field added to `Manifest` or
    /// `SignalRequest` fails this until the walk has it too.
    #[test]
    fn the_walks_read_what_the_encoders_write() {
        let bytes = encoded(&manifest());
        let mut cursor = Cursor {
            bytes: &bytes,
            at: 0,
            what: "manifest",
        };
        walk_manifest(&mut cursor).unwrap();
        for request in [
            SignalRequest {
                new_value: None,
                context: Vec::new(),
            },
            SignalRequest {
                new_value: Some(NewValueView {
                    field: "process.exe",
                    value: "/tmp/x",
                    group: "g",
                }),
                context: vec![crate::ContextEntry {
                    key: "parent.exe",
                    value: "/bin/sh",
                }],
            },
        ] {
            let bytes = encoded(&request);
            let mut cursor = Cursor {
                bytes: &bytes,
                at: 0,
                what: "signal request",
            };
            walk_signal_request(&mut cursor).unwrap();
            assert_eq!(decode_signal_request(&bytes).unwrap(), request);
        }
        assert_eq!(decode_manifest(&encoded(&manifest())).unwrap(), manifest());
    }

    /// A module built before the optional trailing fields existed encodes none: it still
    /// decodes, with none, and an encoding without them is what such a module wrote.
    #[test]
    fn the_optional_trailing_fields_may_be_absent() {
        let mut old = manifest();
        old.states.clear();
        let bytes = encoded(&old);
        assert_eq!(decode_manifest(&bytes).unwrap(), old);
        let full = encoded(&manifest());
        assert_eq!(&full[..bytes.len()], &bytes[..]);
        let request = SignalRequest {
            new_value: None,
            context: Vec::new(),
        };
        assert_eq!(encoded(&request), [0]);
        assert_eq!(decode_signal_request(&[0]).unwrap(), request);
    }

    #[test]
    fn a_bad_severity_is_named_with_its_byte_and_values() {
        let mut bytes = encoded(&manifest());
        // id "r", title "t", description "": 2 + 2 + 1 bytes, then the severity.
        assert_eq!(bytes[5], 3);
        bytes[5] = 7;
        let failure = decode_manifest(&bytes).unwrap_err();
        assert_eq!(failure.field, "severity");
        assert_eq!(failure.offset, 5);
        assert_eq!(
            failure.to_string(),
            "field `severity` at byte 5: 7 is not one of its values (0 = info, 1 = low, \
             2 = medium, 3 = high, 4 = critical); an enum is its index as a varint"
        );
    }

    #[test]
    fn trailing_bytes_are_located() {
        let mut bytes = encoded(&manifest());
        let end = bytes.len();
        bytes.push(0);
        let failure = decode_manifest(&bytes).unwrap_err();
        assert_eq!((failure.field.as_str(), failure.offset), ("", end));
        assert!(
            failure
                .to_string()
                .contains("the manifest ends here, but 1 more byte(s) follow"),
            "{failure}"
        );
    }

    #[test]
    fn a_short_manifest_names_the_cut_field() {
        let mut without_states = manifest();
        without_states.states.clear();
        let bytes = encoded(&without_states);
        // Cut inside the second path prefix ("/x/"), before the two durations (9 + 3 bytes).
        let cut = &bytes[..bytes.len() - 12 - 1];
        let failure = decode_manifest(cut).unwrap_err();
        assert_eq!(failure.field, "subscription.path_prefixes[1]");
        assert!(
            failure
                .problem
                .contains("its length says 3, but only 2 bytes"),
            "{failure}"
        );
        let failure = decode_manifest(&bytes[..bytes.len() - 1]).unwrap_err();
        assert_eq!(failure.field, "new_value.forget_after_ns");
        assert!(
            failure.problem.contains("in the middle of this field"),
            "{failure}"
        );
    }

    #[test]
    fn a_bad_option_tag_and_bad_utf8_are_named() {
        let failure = decode_signal_request(&[2]).unwrap_err();
        assert_eq!(
            failure.to_string(),
            "field `new_value` at byte 0: 2 is neither 0 (absent) nor 1 (present, the value \
             follows); an optional field starts with one of those two bytes"
        );
        let failure = decode_signal_request(&[1, 1, b'f', 1, 0xff, 1, b'g']).unwrap_err();
        assert_eq!(failure.field, "new_value.value");
        assert_eq!(failure.offset, 3);
        assert!(failure.problem.contains("not UTF-8"), "{failure}");
        // No new value, an empty context, and a byte too many.
        let failure = decode_signal_request(&[0, 0, 0]).unwrap_err();
        assert_eq!(failure.offset, 2);
        assert!(failure.problem.contains("1 more byte(s)"), "{failure}");
    }
}
