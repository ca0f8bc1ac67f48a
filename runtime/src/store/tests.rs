//! Tests of the schema and the folding of pending changes together: what is folded must
//! commit and read back as the unfolded log would.

use super::pending::Pending;
use super::*;
use crate::state::{Change, RuleState, Settings, Verdict};

fn group(state: &str, group: &str, started_ns: i64) -> RuleChange {
    let change = Change::Group {
        state: state.into(),
        group: group.into(),
        started_ns,
    };
    ("rule".into(), change)
}

fn value(group: &str, value: &str, last_seen_ns: i64) -> RuleChange {
    let change = Change::Value {
        state: "s".into(),
        group: group.into(),
        value: value.into(),
        last_seen_ns,
        fresh: false,
    };
    ("rule".into(), change)
}

/// The rule's state as read back from `store`, with learning off; asserts the value count.
fn reloaded(store: &StateStore, values: usize) -> RuleState {
    let (mut states, count) = store.load(1000).unwrap();
    assert_eq!(count, values);
    let mut state = states.remove("rule").unwrap();
    state.set_settings(Settings {
        learning_period_ns: 0,
        forget_after_ns: u64::MAX,
    });
    state
}

#[test]
fn folding_keeps_the_outcome_of_the_log() {
    let removed = |g: &str| {
        let change = Change::GroupRemoved {
            state: "s".into(),
            group: g.into(),
        };
        ("rule".to_string(), change)
    };
    let mut pending = Pending::default();
    pending.push(vec![
        group("s", "g", 1),
        value("g", "/old", 1),
        value("g", "/kept", 2),
        removed("g"),
        group("s", "g", 5),
        value("g", "/kept", 6),
        value("g", "/kept", 7),
        group("s", "h", 8),
        value("h", "/h", 8),
    ]);
    pending.fold();
    let dir = tempfile::tempdir().unwrap();
    let mut store = StateStore::open(dir.path()).unwrap();
    store.apply(&pending.changes).unwrap();
    assert_eq!(pending.changes.len(), 5, "{:?}", pending.changes);
    let mut state = reloaded(&store, 2);
    assert_eq!(state.check(9, "s", "g", "/old").unwrap(), Verdict::New);
    assert_eq!(state.check(9, "s", "g", "/kept").unwrap(), Verdict::Known);
    assert_eq!(state.check(9, "s", "h", "/h").unwrap(), Verdict::Known);
}

#[test]
fn folding_drops_what_appeared_and_vanished_before_it_was_saved() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = StateStore::open(dir.path()).unwrap();
    store
        .apply(&[group("s", "old", 1), value("old", "/kept", 1)])
        .unwrap();
    let removed_group = |g: &str| {
        let change = Change::GroupRemoved {
            state: "s".into(),
            group: g.into(),
        };
        ("rule".to_string(), change)
    };
    let removed_value = |g: &str, v: &str| {
        let change = Change::ValueRemoved {
            state: "s".into(),
            group: g.into(),
            value: v.into(),
        };
        ("rule".to_string(), change)
    };
    let fresh = |g: &str, v: &str, at: i64| {
        let mut change = value(g, v, at);
        if let Change::Value { fresh, .. } = &mut change.1 {
            *fresh = true;
        }
        change
    };
    let mut pending = Pending::default();
    let mut changes = Vec::new();
    // Churn: a thousand groups created and evicted, a thousand values added and evicted.
    for i in 0..1000 {
        let g = format!("churn{i}");
        changes.extend([
            group("s", &g, i),
            fresh(&g, "/v", i),
            removed_value(&g, "/v"),
        ]);
        changes.push(removed_group(&g));
        changes.extend([
            fresh("old", &format!("/x{i}"), i),
            removed_value("old", &format!("/x{i}")),
        ]);
    }
    changes.push(fresh("old", "/new", 2000));
    pending.push(changes);
    pending.fold();
    assert_eq!(pending.changes.len(), 1, "{:?}", &pending.changes[..3]);
    store.apply(&pending.changes).unwrap();
    let mut state = reloaded(&store, 2);
    assert_eq!(state.check(9, "s", "old", "/kept").unwrap(), Verdict::Known);
    assert_eq!(state.check(9, "s", "old", "/new").unwrap(), Verdict::Known);
    assert_eq!(state.check(9, "s", "old", "/x1").unwrap(), Verdict::New);
}

#[test]
fn changes_survive_a_reopen_including_removals() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = StateStore::open(dir.path()).unwrap();
    store
        .apply(&[
            group("s", "g", 10),
            value("g", "/a", 10),
            value("g", "/b", 11),
            group("s", "h", 12),
            value("h", "/c", 12),
        ])
        .unwrap();
    // In one batch: a value evicted, a group evicted and learned again from scratch.
    let removed_value = Change::ValueRemoved {
        state: "s".into(),
        group: "g".into(),
        value: "/a".into(),
    };
    let removed_group = Change::GroupRemoved {
        state: "s".into(),
        group: "h".into(),
    };
    store
        .apply(&[
            ("rule".into(), removed_value),
            ("rule".into(), removed_group),
            group("s", "h", 20),
            value("h", "/d", 20),
        ])
        .unwrap();
    drop(store);

    let store = StateStore::open(dir.path()).unwrap();
    let state = &mut reloaded(&store, 2);
    let check = |state: &mut RuleState, group: &str, value: &str| {
        state.check(30, "s", group, value).unwrap()
    };
    assert_eq!(check(state, "g", "/b"), Verdict::Known);
    assert_eq!(check(state, "g", "/a"), Verdict::New);
    assert_eq!(check(state, "h", "/d"), Verdict::Known);
    assert_eq!(check(state, "h", "/c"), Verdict::New);
}

/// An older picket given a file a newer one wrote (an upgrade rolled back) leaves it untouched
/// and keeps its own state in the side file, across its restarts.
#[test]
fn a_newer_format_is_left_untouched_and_a_side_file_is_used() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = StateStore::open(dir.path()).unwrap();
        store
            .apply(&[group("s", "g", 1), value("g", "/old", 5)])
            .unwrap();
    }
    let main = dir.path().join(STATE_FILE);
    db::set_format(&main, STATE_FORMAT + 1);
    let newer = std::fs::read(&main).unwrap();

    let restored = open_and_load(dir.path(), 1000).unwrap();
    let side = dir.path().join(recovery::side_file());
    assert_eq!(restored.store.path(), side);
    assert_eq!(restored.values, 0, "the newer file's values are not read");
    assert!(restored.set_aside.is_none());
    let mut store = restored.store;
    store
        .apply(&[group("s", "g", 1), value("g", "/learned-meanwhile", 9)])
        .unwrap();
    drop(store);
    assert_eq!(
        std::fs::read(&main).unwrap(),
        newer,
        "the newer file was changed"
    );

    // Restarted, still rolled back: the side file's state comes back.
    let restored = open_and_load(dir.path(), 1000).unwrap();
    assert_eq!(restored.store.path(), side);
    assert_eq!(restored.values, 1);
    assert_eq!(std::fs::read(&main).unwrap(), newer);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "nothing moved aside"
    );
}
