//! `picket state`: what the rules learned, shown, exported, imported, allowed and forgotten,
//! on one of three targets: a state directory, a running agent (its control socket under
//! `--state`: redb allows one writer, the agent), or the fleet store (docs/cli.md).
//!
//! A group is one JSON line (docs/new-value.md, "Seeing and editing what was learned"):
//! `show` and `export` print them, `import` reads them back.

use crate::rule_states::RuleStates;
use crate::state::fleet::keys::GroupName;
use crate::state::fleet::{Remote, SharedStore, StoreOptions};
use crate::state::{NOT_STARTED, RuleState, Settings};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// One value of a group as `picket state` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueRecord {
    /// The value.
    pub value: String,
    /// When it was first seen (where the target keeps it: the fleet store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<Timestamp>,
    /// When it was last seen.
    pub last_seen: Timestamp,
}

/// One group as `picket state` lists it: a JSON line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRecord {
    /// Rule id.
    pub rule: String,
    /// State name (the rules' field, e.g. `process.exe`).
    pub state: String,
    /// Group (e.g. the image repository).
    pub group: String,
    /// `learning`, `detecting`, or `not_started` (values allowed before the group's first
    /// event); left out when the rule's settings are unknown. Ignored by `import`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// When the group's learning started (absent: not started yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_started: Option<Timestamp>,
    /// When it ends (absent when not started, or the settings are unknown). Ignored by `import`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_until: Option<Timestamp>,
    /// The values learned.
    pub values: Vec<ValueRecord>,
}

impl GroupRecord {
    fn new(rule: &str, state: &str, group: &str, started_ns: i64) -> GroupRecord {
        GroupRecord {
            rule: rule.into(),
            state: state.into(),
            group: group.into(),
            status: None,
            learning_started: (started_ns != NOT_STARTED)
                .then(|| Timestamp::from_nanos(started_ns)),
            learning_until: None,
            values: Vec::new(),
        }
    }

    /// Fills the status at `now` from the rule's settings.
    fn with_status(mut self, settings: Option<&Settings>, now: Timestamp) -> GroupRecord {
        self.values.sort_by(|a, b| a.value.cmp(&b.value));
        match (self.learning_started, settings) {
            (None, _) => self.status = Some("not_started".into()),
            (Some(started), Some(settings)) => {
                let period = i64::try_from(settings.learning_period_ns).unwrap_or(i64::MAX);
                let until = started.as_nanos().saturating_add(period);
                self.learning_until = Some(Timestamp::from_nanos(until));
                self.status = Some(
                    if now.as_nanos() < until {
                        "learning"
                    } else {
                        "detecting"
                    }
                    .into(),
                );
            }
            (Some(_), None) => {}
        }
        self
    }

    /// Reads one line of `export`; the error names the field.
    pub fn parse(line: &str) -> Result<GroupRecord, String> {
        let mut de = serde_json::Deserializer::from_str(line);
        let record: GroupRecord = serde_path_to_error::deserialize(&mut de)
            .map_err(|err| crate::event::describe_path_error(&err))?;
        crate::state::fleet::keys::check_name(&record.rule, &record.state, &record.group)?;
        for value in &record.values {
            crate::state::fleet::keys::check_value(value.value.as_bytes())?;
        }
        Ok(record)
    }
}

/// What to do to a state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// List groups, optionally of one rule and one group.
    Show {
        /// Only this rule.
        rule: Option<String>,
        /// Only this group.
        group: Option<String>,
    },
    /// Merge groups in: learning starts at the earliest, values seen at the latest.
    Import {
        /// The groups.
        groups: Vec<GroupRecord>,
    },
    /// Make a value known in a group, seen now.
    Allow {
        /// The rule, state, group.
        rule: String,
        /// The state name.
        state: String,
        /// The group.
        group: String,
        /// The value.
        value: String,
    },
    /// Make a value, or the whole group, be forgotten.
    Forget {
        /// The rule.
        rule: String,
        /// The state name.
        state: String,
        /// The group.
        group: String,
        /// The value, or the whole group.
        value: Option<String>,
    },
}

/// What an operation did: groups to print (show), or a line saying what changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Groups listed.
    pub groups: Vec<GroupRecord>,
    /// What changed, for the operator.
    pub message: Option<String>,
}

/// Applies `op` to in-memory states (a state directory's, or a running agent's): changes are
/// journaled like learning, so whoever owns the file saves them. `settings` gives each rule's
/// learning settings for the status, `now` the time for `allow` and the status.
pub fn apply_local(
    states: &mut RuleStates,
    settings: &HashMap<String, Settings>,
    op: Op,
    now: Timestamp,
) -> Result<Outcome, String> {
    match op {
        Op::Show { rule, group } => {
            let mut groups = Vec::new();
            for (id, state) in states.iter() {
                if rule.as_deref().is_some_and(|r| r != id) {
                    continue;
                }
                groups.extend(
                    records_of(id, state, group.as_deref())
                        .into_iter()
                        .map(|r| r.with_status(settings.get(id), now)),
                );
            }
            groups
                .sort_by(|a, b| (&a.rule, &a.state, &a.group).cmp(&(&b.rule, &b.state, &b.group)));
            Ok(Outcome {
                groups,
                message: None,
            })
        }
        Op::Import { groups } => {
            let (mut count, mut values) = (0, 0);
            for record in groups {
                let state = states.state_of(&record.rule);
                let started = record
                    .learning_started
                    .map_or(NOT_STARTED, |t| t.as_nanos());
                state.merge_group(&record.state, &record.group, started);
                for value in &record.values {
                    state.merge_value(
                        &record.state,
                        &record.group,
                        &value.value,
                        value.last_seen.as_nanos(),
                    );
                    values += 1;
                }
                count += 1;
            }
            Ok(message(format!("imported {count} groups, {values} values")))
        }
        Op::Allow {
            rule,
            state: name,
            group,
            value,
        } => {
            let state = states.state_of(&rule);
            state.merge_group(&name, &group, NOT_STARTED);
            state.merge_value(&name, &group, &value, now.as_nanos());
            Ok(message(format!(
                "allowed {value:?} in {rule} {name} {group:?}: it is known from now on"
            )))
        }
        Op::Forget {
            rule,
            state: name,
            group,
            value,
        } => {
            let state = states.state_of(&rule);
            let known = match &value {
                Some(value) => state.forget_value(&name, &group, value),
                None => state.forget_group(&name, &group),
            };
            if !known {
                return Err(format!(
                    "{rule} {name} has no {}",
                    describe(&group, value.as_deref())
                ));
            }
            Ok(message(format!(
                "forgot {}: {}",
                describe(&group, value.as_deref()),
                if value.is_some() {
                    "it is new again when it returns"
                } else {
                    "its learning starts again at its next event"
                }
            )))
        }
    }
}

fn describe(group: &str, value: Option<&str>) -> String {
    match value {
        Some(value) => format!("{value:?} in group {group:?}"),
        None => format!("group {group:?}"),
    }
}

fn message(text: String) -> Outcome {
    Outcome {
        groups: Vec::new(),
        message: Some(text),
    }
}

fn records_of(rule: &str, state: &RuleState, group: Option<&str>) -> Vec<GroupRecord> {
    state
        .groups()
        .filter(|view| group.is_none_or(|g| g == view.group))
        .map(|view| {
            let mut record = GroupRecord::new(rule, view.state, view.group, view.started_ns);
            record.values = view
                .values
                .iter()
                .map(|(value, last)| ValueRecord {
                    value: value.to_string(),
                    first_seen: None,
                    last_seen: Timestamp::from_nanos(*last),
                })
                .collect();
            record
        })
        .collect()
}

/// Applies `op` to the fleet store: every agent following it applies the same change within
/// about a second.
pub async fn apply_fleet(
    options: &StoreOptions,
    node: &str,
    op: Op,
    now: Timestamp,
) -> Result<Outcome, String> {
    let mut store = SharedStore::connect(options).await?;
    match op {
        Op::Show { rule, group } => {
            let settings = store.settings().await?;
            let mut groups: BTreeMap<(String, String, String), GroupRecord> = BTreeMap::new();
            let malformed = store
                .load(rule.as_deref(), |remote| {
                    let Remote::Seen {
                        name,
                        started_ns,
                        value,
                    } = remote
                    else {
                        return;
                    };
                    if group.as_deref().is_some_and(|g| g != name.group) {
                        return;
                    }
                    let record = groups
                        .entry((name.rule.clone(), name.state.clone(), name.group.clone()))
                        .or_insert_with(|| {
                            GroupRecord::new(&name.rule, &name.state, &name.group, started_ns)
                        });
                    if let Some((value, first, last)) = value {
                        record.values.push(ValueRecord {
                            value,
                            first_seen: Some(Timestamp::from_nanos(first)),
                            last_seen: Timestamp::from_nanos(last),
                        });
                    }
                })
                .await?;
            if malformed > 0 {
                tracing::warn!(
                    malformed,
                    "entries of the fleet store failed the checks and were skipped"
                );
            }
            Ok(Outcome {
                groups: groups
                    .into_values()
                    .map(|record| {
                        let rule_settings = settings.get(&record.rule).copied();
                        record.with_status(rule_settings.as_ref(), now)
                    })
                    .collect(),
                message: None,
            })
        }
        Op::Import { groups } => {
            let (mut count, mut values) = (0, 0);
            for record in groups {
                let started = record
                    .learning_started
                    .map_or(NOT_STARTED, |t| t.as_nanos());
                let mut batch = Vec::new();
                for value in &record.values {
                    let last = value.last_seen.as_nanos();
                    batch.push((
                        record.rule.clone(),
                        crate::state::Sighting {
                            state: record.state.as_str().into(),
                            group: record.group.as_str().into(),
                            started_ns: started,
                            value: value.value.as_str().into(),
                            seen_ns: last,
                        },
                        value.first_seen.map_or(last, |t| t.as_nanos().min(last)),
                    ));
                }
                if batch.is_empty() {
                    continue;
                }
                values += batch.len();
                let pushed = store.push(node, &batch, false).await?;
                if pushed.refused > 0 {
                    tracing::warn!(
                        rule = record.rule,
                        group = record.group,
                        refused = pushed.refused,
                        "values not imported: the group is full in the store"
                    );
                }
                count += 1;
            }
            Ok(message(format!(
                "imported {count} groups, {values} values into the fleet store"
            )))
        }
        Op::Allow {
            rule,
            state,
            group,
            value,
        } => {
            let name = GroupName { rule, state, group };
            store.allow(node, &name, &value, now.as_nanos()).await?;
            Ok(message(format!(
                "allowed {value:?} in {} {} {:?} for the whole fleet",
                name.rule, name.state, name.group
            )))
        }
        Op::Forget {
            rule,
            state,
            group,
            value,
        } => {
            let name = GroupName { rule, state, group };
            if !store.forget(node, &name, value.as_deref()).await? {
                return Err(format!(
                    "the fleet store has no {} for {} {}",
                    describe(&name.group, value.as_deref()),
                    name.rule,
                    name.state
                ));
            }
            Ok(message(format!(
                "forgot {} for the whole fleet",
                describe(&name.group, value.as_deref())
            )))
        }
    }
}
