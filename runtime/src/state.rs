//! New-value state: what each rule has learned, kept by the host (docs/new-value.md).
//!
//! For every rule the host keeps named states; in each, per group, the values seen and when each
//! was last seen. A group's learning period starts at its first event; during it values are
//! learned silently. Afterwards an unseen value is answered "new" once and learned. A value unseen
//! for longer than the forget-after period is forgotten and is new again when it returns. Time is
//! the events' own timestamps, so replays are deterministic.
//!
//! The state is bounded, in entries and in bytes: past either bound the least recently seen
//! values are evicted, and counted. Bytes are estimated as each key's length plus a fixed
//! overhead per entry ([`VALUE_OVERHEAD`], [`GROUP_OVERHEAD`]); keys are kept as boxed bytes,
//! with no spare capacity.
//!
//! Time (docs/new-value.md): the forget sweep runs on the stream's time, the newest event time
//! seen, which an event dated more than [`MAX_AHEAD_NS`] beyond it does not move (such events
//! are counted as `ahead`); a real jump of the stream is followed once [`AHEAD_CONFIRM`] events
//! in a row are that far ahead. An event dated before its group's learning period started is
//! judged, not learned silently: silence is granted only inside the learning window. Every change can be journaled so a durable store can follow the state without
//! scanning it.

use hashbrown::HashMap;

/// The timing of a rule's new-value states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How long after a group's first event values are learned silently.
    pub learning_period_ns: u64,
    /// How long an unseen value is remembered.
    pub forget_after_ns: u64,
}

/// The answer to "is this value new?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The group is learning; the value is now known.
    Learning,
    /// The value was known.
    Known,
    /// The value was unseen (or forgotten) after learning; it is now known.
    New,
}

/// Counters of what the state did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Values learned silently during a learning period.
    pub learned: u64,
    /// Values answered "new".
    pub new: u64,
    /// Values that came back after being forgotten.
    pub forgotten: u64,
    /// Values dropped by the periodic sweep because they were unseen past forget-after.
    pub expired: u64,
    /// Values and groups dropped because the state was full (entries or bytes).
    pub evicted: u64,
    /// Events dated implausibly far ahead of the stream, not used to advance the forget sweep.
    pub ahead: u64,
}

/// One change to the state, for a durable store to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A group started learning at `started_ns`.
    Group {
        /// State name.
        state: Box<str>,
        /// Group.
        group: Box<str>,
        /// Start of its learning period.
        started_ns: i64,
    },
    /// A value was seen at `last_seen_ns`.
    Value {
        /// State name.
        state: Box<str>,
        /// Group.
        group: Box<str>,
        /// Value.
        value: Box<str>,
        /// When it was last seen.
        last_seen_ns: i64,
        /// Whether the value was just added (it was not in the state before this change), so
        /// that a store can drop an addition that a later removal undoes before either landed.
        fresh: bool,
    },
    /// A value was dropped (expired or evicted).
    ValueRemoved {
        /// State name.
        state: Box<str>,
        /// Group.
        group: Box<str>,
        /// Value.
        value: Box<str>,
    },
    /// A group was dropped with all its values (evicted).
    GroupRemoved {
        /// State name.
        state: Box<str>,
        /// Group.
        group: Box<str>,
    },
}

impl Change {
    /// Bytes of its keys (what it costs to hold while waiting to be saved).
    pub fn key_bytes(&self) -> usize {
        let (state, group, value) = self.place();
        state.len() + group.len() + value.map_or(0, str::len)
    }

    /// The state, group and (for value changes) value the change is about.
    pub fn place(&self) -> (&str, &str, Option<&str>) {
        match self {
            Change::Group { state, group, .. } | Change::GroupRemoved { state, group } => {
                (state, group, None)
            }
            Change::Value {
                state,
                group,
                value,
                ..
            }
            | Change::ValueRemoved {
                state,
                group,
                value,
            } => (state, group, Some(value)),
        }
    }
}

/// Why a query was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum StateError {
    /// Too many distinct state names for one rule (the limit).
    TooManyStates(usize),
    /// A state name, group or value to be learned is not UTF-8 (which of them).
    NotUtf8(&'static str),
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::TooManyStates(limit) => {
                write!(f, "a rule may use at most {limit} new-value states")
            }
            StateError::NotUtf8(what) => write!(f, "the {what} is not valid UTF-8"),
        }
    }
}

impl std::error::Error for StateError {}

/// One change, attributed to the id of the rule whose state made it: what the durable store
/// is handed.
pub type RuleChange = (String, Change);

/// Most distinct state names a rule may use (an ABI limit).
pub const MAX_STATES: usize = picket_abi::MAX_STATES_PER_RULE;

/// Default bound on a rule's entries (values plus groups).
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// Default bound on the bytes of one rule's state.
pub const DEFAULT_RULE_BYTES: usize = 16 << 20;

/// Default bound on the bytes of every rule's state together.
pub const DEFAULT_TOTAL_BYTES: usize = 64 << 20;

/// Bytes counted for a value besides its key: its slot in the table (key pointer and length,
/// last-seen time, control byte, spare slots) and the allocation of the key.
pub const VALUE_OVERHEAD: usize = 48;

/// Bytes counted for a group besides its key: its slot, learning start and value table.
pub const GROUP_OVERHEAD: usize = 128;

/// The learning start of a group that values were allowed in (`picket state allow`) before any
/// event was seen with it: its learning starts at its first event, as for any group.
pub const NOT_STARTED: i64 = i64::MAX;

/// How far ahead of the stream's time an event may be dated and still move it.
pub const MAX_AHEAD_NS: i64 = 86_400 * 1_000_000_000;

/// Events in a row dated beyond [`MAX_AHEAD_NS`] after which the stream's time follows them.
pub const AHEAD_CONFIRM: u32 = 64;

fn value_cost(value: &[u8]) -> usize {
    value.len() + VALUE_OVERHEAD
}

fn group_cost(group: &[u8]) -> usize {
    group.len() + GROUP_OVERHEAD
}

/// Keys are bytes, checked as UTF-8 once, when first learned: a query for something already
/// known (nearly every query) then costs no UTF-8 check at all.
type Key = Box<[u8]>;

#[derive(Debug, Default)]
struct Group {
    started_ns: i64,
    values: HashMap<Key, i64>,
}

type Groups = HashMap<Key, Group>;

/// The new-value states of one rule.
#[derive(Debug)]
pub struct RuleState {
    settings: Settings,
    capacity: usize,
    max_bytes: usize,
    states: HashMap<Key, Groups>,
    entries: usize,
    bytes: usize,
    /// The stream's time: the newest plausible event time (see the module documentation).
    stream_ns: i64,
    /// Events in a row dated too far ahead, and the earliest of them.
    ahead_run: u32,
    ahead_min_ns: i64,
    next_sweep_ns: i64,
    stats: Stats,
    journal: Option<Vec<Change>>,
    /// Bytes of keys in the journal, so the host can hand it over before it grows large.
    journal_bytes: usize,
    /// last_seen updates are journaled once per bucket of this many ns, so a value seen
    /// constantly does not rewrite the store on every event.
    journal_granularity_ns: i64,
    /// What this node decided that the fleet should hear of, when the state is shared
    /// (`--shared-state`); `None` otherwise.
    outbox: Option<Outbox>,
    /// Sightings of known values go to the fleet once per bucket of this many ns: coarser
    /// than the journal's, since the store only needs them to keep forget-after right.
    outbox_granularity_ns: i64,
}

/// Shortest event-time interval between sweeps of expired values.
const MIN_SWEEP_INTERVAL_NS: i64 = 60 * 1_000_000_000;

impl RuleState {
    /// An empty state with these settings and at most `capacity` entries.
    pub fn new(settings: Settings, capacity: usize) -> RuleState {
        let mut state = RuleState {
            settings,
            capacity: capacity.max(2),
            max_bytes: usize::MAX,
            states: HashMap::new(),
            entries: 0,
            bytes: 0,
            stream_ns: i64::MIN,
            ahead_run: 0,
            ahead_min_ns: i64::MAX,
            next_sweep_ns: i64::MIN,
            stats: Stats::default(),
            journal: None,
            journal_bytes: 0,
            journal_granularity_ns: 0,
            outbox: None,
            outbox_granularity_ns: 1,
        };
        state.set_settings(settings);
        state
    }

    /// The settings in force.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Changes the settings (a reloaded rule with new defaults, an operator override); what was
    /// learned is kept.
    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
        let forget = clamp_i64(settings.forget_after_ns);
        self.journal_granularity_ns = (forget / 64).clamp(1, 3_600 * 1_000_000_000);
        // Forget-after stays right within a sixteenth of it across the fleet.
        self.outbox_granularity_ns = (forget / 16).max(1);
    }

    /// Starts recording every change; take them with [`RuleState::take_changes`].
    pub fn enable_journal(&mut self) {
        self.journal.get_or_insert_with(Vec::new);
    }

    /// The changes recorded since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        self.journal_bytes = 0;
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Bytes of keys recorded in the journal since it was last taken.
    pub fn journal_bytes(&self) -> usize {
        self.journal_bytes
    }

    /// Starts recording what this node learns for the fleet; take it with
    /// [`RuleState::take_outbox`].
    pub fn enable_outbox(&mut self) {
        self.outbox.get_or_insert_with(Outbox::default);
    }

    /// What this node learned and claimed since the last call.
    pub fn take_outbox(&mut self) -> Outbox {
        self.outbox.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Takes only the claims made since the last call: the values this node answered "new"
    /// and the fleet must confirm (a signal raised on them waits for the answer).
    pub fn take_claims(&mut self) -> Vec<Claim> {
        self.outbox
            .as_mut()
            .map(|outbox| std::mem::take(&mut outbox.claims))
            .unwrap_or_default()
    }

    /// Groups still learning and groups detecting, at the stream's time.
    pub fn group_status(&self) -> (usize, usize) {
        let period = clamp_i64(self.settings.learning_period_ns);
        let now = self.stream_ns;
        let mut learning = 0;
        let mut total = 0;
        for groups in self.states.values() {
            for group in groups.values() {
                total += 1;
                if group.started_ns == NOT_STARTED || now < group.started_ns.saturating_add(period)
                {
                    learning += 1;
                }
            }
        }
        (learning, total - learning)
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Most values plus groups held before the least recently seen are evicted.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Values plus groups held now.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Bytes held now (estimated: keys plus a fixed overhead per entry).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Most bytes held before the least recently seen values are evicted.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Sets the bounds: at most `capacity` entries and `max_bytes` bytes. Evicts at once if
    /// the state holds more.
    pub fn set_bounds(&mut self, capacity: usize, max_bytes: usize) {
        self.capacity = capacity.max(2);
        self.max_bytes = max_bytes;
        if self.entries > self.capacity || self.bytes > self.max_bytes {
            self.evict(usize::MAX);
        }
    }

    /// Evicts the least recently seen values until at most `target` bytes are held (for a
    /// budget shared by several rules).
    pub fn shrink_to(&mut self, target: usize) {
        if self.bytes > target {
            self.evict(target);
        }
    }

    /// Answers whether `value` is new for `group` in `state` at event time `ts_ns`, and learns it.
    pub fn check(
        &mut self,
        ts_ns: i64,
        state: &str,
        group: &str,
        value: &str,
    ) -> Result<Verdict, StateError> {
        self.check_bytes(ts_ns, state.as_bytes(), group.as_bytes(), value.as_bytes())
    }

    /// [`RuleState::check`] on raw bytes, as a rule hands them over; each part is checked as
    /// UTF-8 only if it has to be learned.
    pub fn check_bytes(
        &mut self,
        ts_ns: i64,
        state: &[u8],
        group: &[u8],
        value: &[u8],
    ) -> Result<Verdict, StateError> {
        let learning_period = clamp_i64(self.settings.learning_period_ns);
        let forget_after = clamp_i64(self.settings.forget_after_ns);
        let granularity = self.journal_granularity_ns;
        let outbox_granularity = self.outbox_granularity_ns;
        let states = self.states.len();
        let groups = match self.states.entry_ref(state) {
            hashbrown::hash_map::EntryRef::Occupied(entry) => entry.into_mut(),
            hashbrown::hash_map::EntryRef::Vacant(_) if states >= MAX_STATES => {
                return Err(StateError::TooManyStates(MAX_STATES));
            }
            hashbrown::hash_map::EntryRef::Vacant(entry) => {
                utf8(state, "state name")?;
                entry.insert(Groups::new())
            }
        };
        let mut journal = Journal(self.journal.as_mut(), &mut self.journal_bytes);

        let verdict = match groups.get_mut(group) {
            None => {
                utf8(group, "group")?;
                utf8(value, "value")?;
                // A group's first value is always learned silently: with a learning period of 0
                // it is the baseline that later values are new against.
                let mut values = HashMap::new();
                values.insert(Key::from(value), ts_ns);
                groups.insert(
                    group.into(),
                    Group {
                        started_ns: ts_ns,
                        values,
                    },
                );
                self.entries += 2;
                self.bytes += group_cost(group) + value_cost(value);
                journal.group(state, group, ts_ns);
                journal.value(state, group, value, ts_ns, true);
                self.stats.learned += 1;
                if let Some(outbox) = self.outbox.as_mut() {
                    outbox.sighting(state, group, ts_ns, value, ts_ns);
                }
                Verdict::Learning
            }
            Some(entry) => {
                if entry.started_ns == NOT_STARTED {
                    // Values were allowed ahead of the group's first event: its learning starts
                    // now, as it would have without them.
                    entry.started_ns = ts_ns;
                    journal.group(state, group, ts_ns);
                }
                // Silence only inside the learning window: an event dated before the group's
                // first one is judged like one after it (docs/new-value.md).
                let learning = ts_ns >= entry.started_ns
                    && ts_ns < entry.started_ns.saturating_add(learning_period);
                let started_ns = entry.started_ns;
                // Whether this sighting of a known value is one the store should hear of.
                let mut refreshed = false;
                let unfamiliar = match entry.values.get_mut(value) {
                    Some(last_seen) if ts_ns.saturating_sub(*last_seen) > forget_after => {
                        self.stats.forgotten += 1;
                        *last_seen = ts_ns;
                        journal.value(state, group, value, ts_ns, false);
                        true
                    }
                    Some(last_seen) => {
                        if ts_ns > *last_seen {
                            if ts_ns / granularity != *last_seen / granularity {
                                journal.value(state, group, value, ts_ns, false);
                            }
                            refreshed =
                                ts_ns / outbox_granularity != *last_seen / outbox_granularity;
                            *last_seen = ts_ns;
                        }
                        false
                    }
                    None => {
                        utf8(value, "value")?;
                        entry.values.insert(value.into(), ts_ns);
                        self.entries += 1;
                        self.bytes += value_cost(value);
                        journal.value(state, group, value, ts_ns, true);
                        true
                    }
                };
                let verdict = match (unfamiliar, learning) {
                    (false, true) => Verdict::Learning,
                    (false, false) => Verdict::Known,
                    (true, true) => {
                        self.stats.learned += 1;
                        Verdict::Learning
                    }
                    (true, false) => {
                        self.stats.new += 1;
                        Verdict::New
                    }
                };
                if let Some(outbox) = self.outbox.as_mut() {
                    if verdict == Verdict::New {
                        outbox.claim(state, group, started_ns, value, ts_ns);
                    } else if unfamiliar || refreshed {
                        outbox.sighting(state, group, started_ns, value, ts_ns);
                    }
                }
                verdict
            }
        };

        self.advance_stream(ts_ns);
        if self.stream_ns >= self.next_sweep_ns {
            self.sweep_expired();
        }
        if self.entries > self.capacity || self.bytes > self.max_bytes {
            self.evict(usize::MAX);
        }
        Ok(verdict)
    }

    /// Moves the stream's time to `ts_ns`, unless it is implausibly far ahead.
    fn advance_stream(&mut self, ts_ns: i64) {
        if self.stream_ns == i64::MIN || ts_ns <= self.stream_ns.saturating_add(MAX_AHEAD_NS) {
            self.stream_ns = self.stream_ns.max(ts_ns);
            self.ahead_run = 0;
            return;
        }
        self.stats.ahead += 1;
        self.ahead_min_ns = if self.ahead_run == 0 {
            ts_ns
        } else {
            self.ahead_min_ns.min(ts_ns)
        };
        self.ahead_run += 1;
        if self.ahead_run >= AHEAD_CONFIRM {
            // Not one odd event but the stream itself: follow it.
            self.stream_ns = self.ahead_min_ns;
            self.ahead_run = 0;
        }
    }

    /// Drops values unseen for longer than forget-after, relative to the newest event time.
    fn sweep_expired(&mut self) {
        let forget_after = clamp_i64(self.settings.forget_after_ns);
        let interval = (forget_after / 8).max(MIN_SWEEP_INTERVAL_NS);
        self.next_sweep_ns = self.stream_ns.saturating_add(interval);
        let cutoff = self.stream_ns.saturating_sub(forget_after);
        let mut journal = Journal(self.journal.as_mut(), &mut self.journal_bytes);
        let mut removed = 0;
        let mut freed = 0;
        for (state, groups) in &mut self.states {
            for (group, entry) in groups.iter_mut() {
                entry.values.retain(|value, last_seen| {
                    let keep = *last_seen >= cutoff;
                    if !keep {
                        journal.value_removed(state, group, value);
                        removed += 1;
                        freed += value_cost(value);
                    }
                    keep
                });
            }
        }
        self.entries -= removed;
        self.bytes -= freed;
        self.stats.expired += removed as u64;
    }

    /// Evicts the least recently seen values until the state is at 7/8 of its capacity and of
    /// its byte budget, and at most `bytes_target`; groups left empty go with them.
    fn evict(&mut self, bytes_target: usize) {
        let entries_target = self.capacity - self.capacity / 8;
        let bytes_target = bytes_target.min(self.max_bytes - self.max_bytes / 8);
        let excess_entries = self.entries.saturating_sub(entries_target);
        let excess_bytes = self.bytes.saturating_sub(bytes_target);
        if excess_entries == 0 && excess_bytes == 0 {
            return;
        }
        let mut seen: Vec<(i64, usize)> = self
            .states
            .values()
            .flat_map(|groups| groups.values())
            .flat_map(|entry| entry.values.iter().map(|(v, at)| (*at, value_cost(v))))
            .collect();
        seen.sort_unstable_by_key(|(at, _)| *at);
        // The newest last-seen time that has to go: everything older goes too.
        let (mut count, mut bytes, mut cutoff) = (0, 0, i64::MIN);
        for (at, cost) in seen {
            if count >= excess_entries && bytes >= excess_bytes {
                break;
            }
            (count, bytes, cutoff) = (count + 1, bytes + cost, at);
        }
        let mut journal = Journal(self.journal.as_mut(), &mut self.journal_bytes);
        let (mut evicted, mut freed) = (0, 0);
        let (mut still_entries, mut still_bytes) = (excess_entries, excess_bytes);
        for (state, groups) in &mut self.states {
            groups.retain(|group, entry| {
                entry.values.retain(|value, last_seen| {
                    if (still_entries > 0 || still_bytes > 0) && *last_seen <= cutoff {
                        journal.value_removed(state, group, value);
                        let cost = value_cost(value);
                        still_entries = still_entries.saturating_sub(1);
                        still_bytes = still_bytes.saturating_sub(cost);
                        evicted += 1;
                        freed += cost;
                        return false;
                    }
                    true
                });
                if entry.values.is_empty() {
                    journal.group_removed(state, group);
                    evicted += 1;
                    freed += group_cost(group);
                    return false;
                }
                true
            });
        }
        self.entries -= evicted;
        self.bytes -= freed;
        self.stats.evicted += evicted as u64;
    }

    /// Restores a group's learning start, as read back from a durable store.
    pub fn restore_group(&mut self, state: &str, group: &str, started_ns: i64) {
        let (state, group) = (state.as_bytes(), group.as_bytes());
        let groups = self.states.entry_ref(state).or_default();
        match groups.get_mut(group) {
            Some(entry) => entry.started_ns = entry.started_ns.min(started_ns),
            None => {
                groups.insert(
                    group.into(),
                    Group {
                        started_ns,
                        values: HashMap::new(),
                    },
                );
                self.entries += 1;
                self.bytes += group_cost(group);
            }
        }
    }

    /// Restores a value, as read back from a durable store; its group must be restored first.
    pub fn restore_value(&mut self, state: &str, group: &str, value: &str, last_seen_ns: i64) {
        let Some(entry) = self
            .states
            .get_mut(state.as_bytes())
            .and_then(|groups| groups.get_mut(group.as_bytes()))
        else {
            return;
        };
        let last_seen = entry.values.entry_ref(value.as_bytes()).or_insert_with(|| {
            self.entries += 1;
            self.bytes += value_cost(value.as_bytes());
            i64::MIN
        });
        // The stream's time is left to the events that come: a value stored with a bogus
        // future time must not make the first sweep forget everything.
        *last_seen = (*last_seen).max(last_seen_ns);
    }
}

/// Changes that come from the fleet (another node learned, an operator allowed or forgot):
/// applied like the node's own learning, journaled for the local store, but never put in the
/// outbox, so that nothing the fleet said is sent back to it.
impl RuleState {
    /// Another node saw `group` first at `started_ns`: the group's learning period starts at
    /// the earliest first sighting anywhere.
    pub fn merge_group(&mut self, state: &str, group: &str, started_ns: i64) {
        if !self.has_room_for_state(state) {
            return;
        }
        let groups = self.states.entry_ref(state.as_bytes()).or_default();
        match groups.get_mut(group.as_bytes()) {
            Some(entry) if entry.started_ns <= started_ns => return,
            Some(entry) => entry.started_ns = started_ns,
            None => {
                groups.insert(
                    group.as_bytes().into(),
                    Group {
                        started_ns,
                        values: HashMap::new(),
                    },
                );
                self.entries += 1;
                self.bytes += group_cost(group.as_bytes());
            }
        }
        let mut journal = Journal(self.journal.as_mut(), &mut self.journal_bytes);
        journal.group(state.as_bytes(), group.as_bytes(), started_ns);
        self.evict_if_full();
    }

    /// Another node saw `value` in `group` at `seen_ns` (or an operator allowed it): it is
    /// known here too, and its last sighting is the latest anywhere. The group must exist
    /// ([`RuleState::merge_group`] first); a value for an unknown group is ignored.
    pub fn merge_value(&mut self, state: &str, group: &str, value: &str, seen_ns: i64) {
        let Some(entry) = self
            .states
            .get_mut(state.as_bytes())
            .and_then(|groups| groups.get_mut(group.as_bytes()))
        else {
            return;
        };
        let mut journal = Journal(self.journal.as_mut(), &mut self.journal_bytes);
        match entry.values.get_mut(value.as_bytes()) {
            Some(last_seen) if *last_seen >= seen_ns => return,
            Some(last_seen) => {
                *last_seen = seen_ns;
                journal.value(
                    state.as_bytes(),
                    group.as_bytes(),
                    value.as_bytes(),
                    seen_ns,
                    false,
                );
            }
            None => {
                entry.values.insert(value.as_bytes().into(), seen_ns);
                self.entries += 1;
                self.bytes += value_cost(value.as_bytes());
                journal.value(
                    state.as_bytes(),
                    group.as_bytes(),
                    value.as_bytes(),
                    seen_ns,
                    true,
                );
            }
        }
        self.evict_if_full();
    }

    /// An operator made `value` be forgotten in `group`: it is new again when it returns.
    /// Returns whether it was known.
    pub fn forget_value(&mut self, state: &str, group: &str, value: &str) -> bool {
        let Some(entry) = self
            .states
            .get_mut(state.as_bytes())
            .and_then(|groups| groups.get_mut(group.as_bytes()))
        else {
            return false;
        };
        if entry.values.remove(value.as_bytes()).is_none() {
            return false;
        }
        self.entries -= 1;
        self.bytes -= value_cost(value.as_bytes());
        let mut journal = Journal(self.journal.as_mut(), &mut self.journal_bytes);
        journal.value_removed(state.as_bytes(), group.as_bytes(), value.as_bytes());
        true
    }

    /// An operator made `group` be forgotten with all its values: its learning starts again
    /// at its next event. Returns whether it was known.
    pub fn forget_group(&mut self, state: &str, group: &str) -> bool {
        let Some(groups) = self.states.get_mut(state.as_bytes()) else {
            return false;
        };
        let Some(entry) = groups.remove(group.as_bytes()) else {
            return false;
        };
        let freed: usize = entry.values.keys().map(|v| value_cost(v)).sum();
        self.entries -= entry.values.len() + 1;
        self.bytes -= freed + group_cost(group.as_bytes());
        let mut journal = Journal(self.journal.as_mut(), &mut self.journal_bytes);
        journal.group_removed(state.as_bytes(), group.as_bytes());
        true
    }

    /// Every group with its learning start and values (value, last seen), for `picket state`.
    pub fn groups(&self) -> impl Iterator<Item = GroupView<'_>> {
        self.states.iter().flat_map(|(state, groups)| {
            groups.iter().map(move |(group, entry)| GroupView {
                state: text_ref(state),
                group: text_ref(group),
                started_ns: entry.started_ns,
                values: entry
                    .values
                    .iter()
                    .map(|(value, seen)| (text_ref(value), *seen))
                    .collect(),
            })
        })
    }

    fn has_room_for_state(&self, state: &str) -> bool {
        self.states.contains_key(state.as_bytes()) || self.states.len() < MAX_STATES
    }

    fn evict_if_full(&mut self) {
        if self.entries > self.capacity || self.bytes > self.max_bytes {
            self.evict(usize::MAX);
        }
    }
}

/// One group as `picket state show` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupView<'a> {
    /// State name.
    pub state: &'a str,
    /// Group.
    pub group: &'a str,
    /// Start of its learning period.
    pub started_ns: i64,
    /// Its values with when each was last seen.
    pub values: Vec<(&'a str, i64)>,
}

/// A value this node learned or saw again, with its group's learning start, for the fleet
/// store to merge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    /// State name.
    pub state: Box<str>,
    /// Group.
    pub group: Box<str>,
    /// Start of the group's learning period, as this node knows it.
    pub started_ns: i64,
    /// Value.
    pub value: Box<str>,
    /// When it was seen.
    pub seen_ns: i64,
}

/// A value this node answered "new": the fleet store decides, atomically, whether it is new
/// for the whole fleet (then the signal stands) or was known to another node (then it does not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The value, its group and the event's time (`seen_ns`).
    pub sighting: Sighting,
}

/// What one rule's state has for the fleet since it was last taken.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outbox {
    /// Values learned, and sightings of known ones (at most one per value per journal bucket).
    pub sightings: Vec<Sighting>,
    /// Values answered "new".
    pub claims: Vec<Claim>,
}

impl Outbox {
    fn sighting(
        &mut self,
        state: &[u8],
        group: &[u8],
        started_ns: i64,
        value: &[u8],
        seen_ns: i64,
    ) {
        self.sightings
            .push(sighting(state, group, started_ns, value, seen_ns));
    }

    fn claim(&mut self, state: &[u8], group: &[u8], started_ns: i64, value: &[u8], seen_ns: i64) {
        self.claims.push(Claim {
            sighting: sighting(state, group, started_ns, value, seen_ns),
        });
    }

    /// Whether there is nothing in it.
    pub fn is_empty(&self) -> bool {
        self.sightings.is_empty() && self.claims.is_empty()
    }
}

fn sighting(state: &[u8], group: &[u8], started_ns: i64, value: &[u8], seen_ns: i64) -> Sighting {
    Sighting {
        state: text(state),
        group: text(group),
        started_ns,
        value: text(value),
        seen_ns,
    }
}

fn text_ref(key: &[u8]) -> &str {
    std::str::from_utf8(key).expect("keys are checked as UTF-8 when learned")
}

/// Appends changes when journaling is on; costs nothing when it is off. Keys reach it as the
/// bytes the state stores, which were checked as UTF-8 when learned.
struct Journal<'a>(Option<&'a mut Vec<Change>>, &'a mut usize);

impl Journal<'_> {
    fn group(&mut self, state: &[u8], group: &[u8], started_ns: i64) {
        if let Some(changes) = self.0.as_mut() {
            *self.1 += state.len() + group.len();
            changes.push(Change::Group {
                state: text(state),
                group: text(group),
                started_ns,
            });
        }
    }

    fn value(&mut self, state: &[u8], group: &[u8], value: &[u8], last_seen_ns: i64, fresh: bool) {
        if let Some(changes) = self.0.as_mut() {
            *self.1 += state.len() + group.len() + value.len();
            changes.push(Change::Value {
                state: text(state),
                group: text(group),
                value: text(value),
                last_seen_ns,
                fresh,
            });
        }
    }

    fn value_removed(&mut self, state: &[u8], group: &[u8], value: &[u8]) {
        if let Some(changes) = self.0.as_mut() {
            *self.1 += state.len() + group.len() + value.len();
            changes.push(Change::ValueRemoved {
                state: text(state),
                group: text(group),
                value: text(value),
            });
        }
    }

    fn group_removed(&mut self, state: &[u8], group: &[u8]) {
        if let Some(changes) = self.0.as_mut() {
            *self.1 += state.len() + group.len();
            changes.push(Change::GroupRemoved {
                state: text(state),
                group: text(group),
            });
        }
    }
}

/// A learned key as text.
fn text(key: &[u8]) -> Box<str> {
    std::str::from_utf8(key)
        .expect("keys are checked as UTF-8 when learned")
        .into()
}

fn utf8<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a str, StateError> {
    std::str::from_utf8(bytes).map_err(|_| StateError::NotUtf8(what))
}

fn clamp_i64(ns: u64) -> i64 {
    i64::try_from(ns).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;
    const DAY: i64 = 86_400 * S;

    fn state(learning_days: i64, forget_days: i64) -> RuleState {
        RuleState::new(
            Settings {
                learning_period_ns: (learning_days * DAY) as u64,
                forget_after_ns: (forget_days * DAY) as u64,
            },
            DEFAULT_CAPACITY,
        )
    }

    fn check(state: &mut RuleState, ts: i64, group: &str, value: &str) -> Verdict {
        state.check(ts, "process.exe", group, value).unwrap()
    }

    #[test]
    fn learning_then_new_once_then_known() {
        let mut st = state(7, 28);
        assert_eq!(check(&mut st, 0, "g", "/a"), Verdict::Learning);
        assert_eq!(check(&mut st, DAY, "g", "/b"), Verdict::Learning);
        assert_eq!(check(&mut st, 7 * DAY - 1, "g", "/c"), Verdict::Learning);
        assert_eq!(check(&mut st, 7 * DAY, "g", "/a"), Verdict::Known);
        assert_eq!(check(&mut st, 7 * DAY, "g", "/x"), Verdict::New);
        assert_eq!(check(&mut st, 7 * DAY + 1, "g", "/x"), Verdict::Known);
        assert_eq!(st.stats().new, 1);
    }

    #[test]
    fn learning_period_is_per_group() {
        let mut st = state(7, 28);
        check(&mut st, 0, "old", "/a");
        assert_eq!(check(&mut st, 10 * DAY, "young", "/x"), Verdict::Learning);
        assert_eq!(check(&mut st, 10 * DAY, "young", "/y"), Verdict::Learning);
        assert_eq!(check(&mut st, 10 * DAY, "old", "/x"), Verdict::New);
    }

    #[test]
    fn zero_period_learns_only_the_first_value() {
        let mut st = state(0, 28);
        assert_eq!(check(&mut st, 0, "g", "/a"), Verdict::Learning);
        assert_eq!(check(&mut st, 0, "g", "/a"), Verdict::Known);
        assert_eq!(check(&mut st, 0, "g", "/b"), Verdict::New);
        assert_eq!(check(&mut st, 0, "h", "/b"), Verdict::Learning);
    }

    #[test]
    fn unseen_values_are_forgotten_and_new_again() {
        let mut st = state(0, 28);
        check(&mut st, 0, "g", "/a");
        assert_eq!(check(&mut st, 28 * DAY, "g", "/a"), Verdict::Known);
        assert_eq!(check(&mut st, 56 * DAY + 1, "g", "/a"), Verdict::New);
        assert_eq!(st.stats().forgotten, 1);
    }

    #[test]
    fn sweep_drops_expired_values_but_keeps_groups() {
        let mut st = state(0, 1);
        for i in 0..100 {
            check(&mut st, 0, "g", &format!("/v{i}"));
        }
        // The stream moves on (in steps: a lone event days ahead would not move it).
        for half_day in 1..=20 {
            check(&mut st, half_day * DAY / 2, "other", "/z");
        }
        assert_eq!(st.stats().expired, 100);
        // The group's learning start survives, so its old values come back as new.
        assert_eq!(check(&mut st, 10 * DAY, "g", "/v1"), Verdict::New);
    }

    #[test]
    fn capacity_evicts_least_recently_seen() {
        let mut st = RuleState::new(
            Settings {
                learning_period_ns: 0,
                forget_after_ns: u64::MAX,
            },
            1000,
        );
        st.enable_journal();
        check(&mut st, 0, "g", "/first");
        for i in 0..5000 {
            check(&mut st, i + 1, "g", &format!("/v{i}"));
        }
        assert!(st.entries() <= 1000, "{}", st.entries());
        assert!(st.stats().evicted >= 4000);
        // The most recent value is still known; the oldest was evicted and is new again.
        assert_eq!(check(&mut st, 6000, "g", "/v4999"), Verdict::Known);
        assert_eq!(check(&mut st, 6000, "g", "/first"), Verdict::New);
        let removed = st
            .take_changes()
            .iter()
            .filter(|c| matches!(c, Change::ValueRemoved { .. }))
            .count();
        assert!(removed >= 4000);
    }

    #[test]
    fn the_byte_budget_evicts_least_recently_seen_and_counts_it() {
        let mut st = state(0, 28);
        st.set_bounds(DEFAULT_CAPACITY, 1 << 20);
        st.enable_journal();
        let big = |tag: &str, i: i64| format!("{tag}{i:08}{}", "x".repeat(4087));
        for i in 0..1000 {
            st.check(i, "s", &big("g", i), &big("v", i)).unwrap();
            assert!(st.bytes() <= 1 << 20, "{} bytes after {i}", st.bytes());
        }
        assert!(st.stats().evicted > 800, "{:?}", st.stats());
        // What is left is the most recent.
        assert_eq!(
            st.check(1000, "s", &big("g", 999), &big("v", 999)).unwrap(),
            Verdict::Known
        );
        assert_eq!(
            st.check(1000, "s", &big("g", 0), &big("v", 0)).unwrap(),
            Verdict::Learning
        );
        let removed = st
            .take_changes()
            .iter()
            .filter(|c| matches!(c, Change::GroupRemoved { .. }))
            .count();
        assert!(removed > 800, "{removed}");
        // A shared budget shrinks a state further.
        st.shrink_to(100_000);
        assert!(st.bytes() <= 100_000, "{}", st.bytes());
    }

    #[test]
    fn an_event_far_ahead_does_not_move_the_forget_sweep() {
        let mut st = state(0, 28);
        check(&mut st, 0, "g", "/known");
        check(&mut st, 0, "g", "/also-known");
        // One event dated 174 years later, in another group.
        check(&mut st, 174 * 365 * DAY, "h", "/odd");
        assert_eq!(st.stats().ahead, 1);
        assert_eq!(st.stats().expired, 0);
        assert_eq!(check(&mut st, DAY, "g", "/known"), Verdict::Known);
        assert_eq!(check(&mut st, DAY, "g", "/also-known"), Verdict::Known);
        // A stream that really jumps is followed once it keeps coming.
        for i in 0..AHEAD_CONFIRM as i64 {
            check(&mut st, 100 * DAY + i, "g", "/known");
        }
        check(&mut st, 100 * DAY + 100, "h", "/z");
        assert_eq!(
            check(&mut st, 100 * DAY + 101, "g", "/also-known"),
            Verdict::New
        );
        assert!(st.stats().expired >= 1, "{:?}", st.stats());
    }

    #[test]
    fn an_event_before_the_learning_window_is_judged() {
        let mut st = state(7, 28);
        check(&mut st, 10 * DAY, "g", "/a");
        assert_eq!(check(&mut st, 11 * DAY, "g", "/b"), Verdict::Learning);
        // Dated before the group's first event: outside the window, so judged.
        assert_eq!(check(&mut st, 9 * DAY, "g", "/early"), Verdict::New);
        assert_eq!(check(&mut st, 9 * DAY, "g", "/a"), Verdict::Known);
        // The window did not move: still learning inside it.
        assert_eq!(check(&mut st, 12 * DAY, "g", "/c"), Verdict::Learning);
    }

    #[test]
    fn restored_future_times_do_not_make_the_first_sweep_forget() {
        let mut st = state(0, 28);
        st.restore_group("process.exe", "g", 0);
        st.restore_value("process.exe", "g", "/a", DAY);
        st.restore_value("process.exe", "g", "/future", 174 * 365 * DAY);
        assert_eq!(check(&mut st, 2 * DAY, "g", "/a"), Verdict::Known);
    }

    #[test]
    fn too_many_state_names_is_an_error() {
        let mut st = state(0, 1);
        for i in 0..MAX_STATES {
            st.check(0, &format!("s{i}"), "g", "v").unwrap();
        }
        assert_eq!(
            st.check(0, "one-more", "g", "v"),
            Err(StateError::TooManyStates(MAX_STATES))
        );
        assert_eq!(
            st.check_bytes(0, b"s0", b"g", b"\xff"),
            Err(StateError::NotUtf8("value"))
        );
        assert_eq!(
            st.check_bytes(0, b"s0", b"\xfe", b"v"),
            Err(StateError::NotUtf8("group"))
        );
        // Nothing invalid was learned.
        assert_eq!(st.check_bytes(0, b"s0", b"g", b"v"), Ok(Verdict::Known));
    }

    #[test]
    fn journal_throttles_last_seen_updates() {
        let mut st = state(0, 28);
        st.enable_journal();
        check(&mut st, 0, "g", "/a");
        assert_eq!(st.take_changes().len(), 2);
        for i in 1..1000 {
            check(&mut st, i * S, "g", "/a");
        }
        assert!(st.take_changes().is_empty());
        check(&mut st, 2 * DAY, "g", "/a");
        assert_eq!(st.take_changes().len(), 1);
    }

    #[test]
    fn restored_state_answers_like_the_original() {
        let mut st = state(7, 28);
        st.restore_group("process.exe", "g", 0);
        st.restore_value("process.exe", "g", "/a", DAY);
        assert_eq!(check(&mut st, 8 * DAY, "g", "/a"), Verdict::Known);
        assert_eq!(check(&mut st, 8 * DAY, "g", "/b"), Verdict::New);
    }
}

pub mod admin;
/// New-value state shared by every agent of a fleet (`--shared-state`).
pub mod fleet;
