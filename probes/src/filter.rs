//! Keeps the kernel's [`Filter`] in step with the approved basenames.
//!
//! The array map holding the filter is updated by a plain copy while programs read it, so a
//! reader can see a mix of the old and new value. Two rules make every mix safe for names that
//! stay approved: a name keeps its prefix slot for as long as it is approved (slots are filled
//! and emptied in place, never compacted), and a length that has more names than slots is marked
//! [`PREFIX_ANY`] in every slot, which sends the reader to the exact lookup.

use std::collections::{BTreeMap, BTreeSet};

use picket_probes_common::{Filter, PREFIX_ANY, prefix_word};

/// Adds `names` to `filter`. Names must be 1 to 63 bytes (checked by the caller).
pub(crate) fn widen(filter: &mut Filter, names: &BTreeSet<String>) {
    for name in names {
        let len = name.len();
        filter.len_mask |= 1 << len;
        let word = prefix_word(name.as_bytes());
        let slots = &mut filter.prefixes[len];
        if slots.iter().any(|&s| s == word || s == PREFIX_ANY) {
            continue;
        }
        match slots.iter_mut().find(|s| **s == 0) {
            Some(free) => *free = word,
            None => *slots = [PREFIX_ANY; _],
        }
    }
}

/// Removes from `filter` every name that is not in `keep`, which must all be in it already.
pub(crate) fn narrow(filter: &mut Filter, keep: &BTreeSet<String>) {
    let mut kept: BTreeMap<usize, BTreeSet<u64>> = BTreeMap::new();
    for name in keep {
        kept.entry(name.len())
            .or_default()
            .insert(prefix_word(name.as_bytes()));
    }
    for (len, slots) in filter.prefixes.iter_mut().enumerate() {
        let words = kept.remove(&len).unwrap_or_default();
        if words.is_empty() {
            filter.len_mask &= !(1 << len);
            *slots = [0; _];
        } else if slots.contains(&PREFIX_ANY) {
            if words.len() <= slots.len() {
                let mut words = words.into_iter();
                for slot in slots.iter_mut() {
                    *slot = words.next().unwrap_or(0);
                }
            }
        } else {
            for slot in slots.iter_mut() {
                if !words.contains(slot) {
                    *slot = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use picket_probes_common::PREFIX_SLOTS;

    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// What the kernel side decides for a name, given a filter.
    fn passes(filter: &Filter, name: &str) -> bool {
        let len = name.len();
        if filter.len_mask >> len & 1 == 0 {
            return false;
        }
        let word = prefix_word(name.as_bytes());
        filter.prefixes[len]
            .iter()
            .any(|&s| s == word || s == PREFIX_ANY)
    }

    fn apply(filter: &mut Filter, names: &BTreeSet<String>) -> Filter {
        widen(filter, names);
        let wide = *filter;
        narrow(filter, names);
        wide
    }

    #[test]
    fn passes_exactly_the_approved_prefixes() {
        let mut filter = Filter::EMPTY;
        apply(&mut filter, &set(&["token", "ca.crt", "credentials.json"]));
        assert!(passes(&filter, "token"));
        assert!(passes(&filter, "ca.crt"));
        assert!(passes(&filter, "credentials.json"));
        // Same first 8 bytes and length: only the exact lookup tells them apart.
        assert!(passes(&filter, "credentials.jsox"));
        assert!(!passes(&filter, "tokem"));
        assert!(!passes(&filter, "hosts"));
        assert!(!passes(&filter, "tokens"));
        assert_eq!(filter.len_mask, 1 << 5 | 1 << 6 | 1 << 16);
    }

    #[test]
    fn overflowing_a_length_passes_everything_of_it_until_it_fits_again() {
        let mut filter = Filter::EMPTY;
        let five = set(&["aaaaa", "bbbbb", "ccccc", "ddddd", "eeeee"]);
        assert!(five.len() > PREFIX_SLOTS);
        apply(&mut filter, &five);
        assert_eq!(filter.prefixes[5], [PREFIX_ANY; PREFIX_SLOTS]);
        assert!(passes(&filter, "zzzzz"));
        apply(&mut filter, &set(&["aaaaa", "token"]));
        assert!(passes(&filter, "aaaaa") && passes(&filter, "token"));
        assert!(!passes(&filter, "zzzzz"));
    }

    #[test]
    fn names_kept_across_an_update_never_drop_out() {
        let mut filter = Filter::EMPTY;
        apply(&mut filter, &set(&["bbbbb", "token"]));
        let before = filter;
        let next = set(&["aaaaa", "token"]);
        let wide = apply(&mut filter, &next);
        // Every word-by-word mix of before/wide and of wide/after still passes "token".
        for (from, to) in [(before, wide), (wide, filter)] {
            for mix in 0u32..1 << PREFIX_SLOTS {
                let mut torn = from;
                for i in 0..PREFIX_SLOTS {
                    if mix >> i & 1 == 1 {
                        torn.prefixes[5][i] = to.prefixes[5][i];
                    }
                }
                assert!(passes(&torn, "token"), "{:?}", torn.prefixes[5]);
            }
        }
        assert!(passes(&filter, "aaaaa") && !passes(&filter, "bbbbb"));
    }

    #[test]
    fn emptying_clears_everything() {
        let mut filter = Filter::EMPTY;
        apply(&mut filter, &set(&["token"]));
        apply(&mut filter, &set(&[]));
        assert_eq!(filter, Filter::EMPTY);
    }
}
