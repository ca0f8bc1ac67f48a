//! New-value state: what each rule has learned, kept by the host (docs/new-value.md).
//!
//! For every rule the host keeps named states; in each, per group, the values seen and when each
//! was last seen. A group's learning period starts at its first event; during it values are
//! learned silently. Afterwards an unseen value is answered "new" once and learned. A value unseen
//! for longer than the forget-after period is forgotten and is new again when it returns. Time is
//! the events' own timestamps, so replays are deterministic.
//!
//! The state is bounded, in entries and in bytes, and no group can make room at another's
//! expense (docs/new-value.md, "Bounds"): past a bound, the groups holding the most values evict
//! their own least recently seen ones, down to a fair level that groups holding less never
//! reach, and a group is never dropped for its values. The group records themselves may take at
//! most a quarter of the bounds ([`RuleState::max_groups`]); a new group past that drops the
//! least recently seen groups still learning, and one that had finished learning only when no
//! group is learning. Everything evicted is counted, and the groups that evicted are named
//! ([`RuleState::take_evicting_groups`]). Bytes are estimated as each key's length plus a fixed
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
    /// Groups dropped, with their values, because the group table was full (included in
    /// `evicted`, like their values).
    pub groups_evicted: u64,
    /// Of `groups_evicted`, groups that had finished learning: dropped only when no group was
    /// learning, they learn again when they return.
    pub detecting_groups_evicted: u64,
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
    /// A group was dropped with all its values (evicted because the group table was full).
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

/// A group named in an eviction report: one that evicted its own values because it held more
/// than its share of the state, or one dropped after finishing learning because the group table
/// was full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvictingGroup {
    /// State name.
    pub state: Box<str>,
    /// Group.
    pub group: Box<str>,
    /// Its values evicted since the last report.
    pub values: u64,
    /// Whether the group itself was dropped, having finished learning (it learns again when it
    /// returns).
    pub dropped: bool,
}

/// Most groups kept for one eviction report (those that evicted the most).
pub const MAX_EVICTING_REPORTED: usize = 8;

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

/// Values with their last sighting, most recent first.
type Sighted = Vec<(i64, Key)>;

/// Keys are bytes, checked as UTF-8 once, when first learned: a query for something already
/// known (nearly every query) then costs no UTF-8 check at all.
type Key = Box<[u8]>;

#[derive(Debug)]
struct Group {
    started_ns: i64,
    /// The newest sighting of any of its values (or its start): orders groups for dropping.
    last_seen_ns: i64,
    /// Bytes of its values (each [`value_cost`]), its size for the fair share.
    value_bytes: usize,
    values: HashMap<Key, i64>,
}

impl Group {
    fn new(started_ns: i64) -> Group {
        Group {
            started_ns,
            last_seen_ns: started_ns,
            value_bytes: 0,
            values: HashMap::new(),
        }
    }

    /// Whether it is still learning at `now_ns`.
    fn learning(&self, now_ns: i64, learning_period_ns: i64) -> bool {
        now_ns < self.started_ns.saturating_add(learning_period_ns)
    }
}

type Groups = HashMap<Key, Group>;

/// The new-value states of one rule.
#[derive(Debug)]
pub struct RuleState {
    settings: Settings,
    /// States whose settings differ from `settings` (the manifest's `states`), by name.
    state_settings: HashMap<Key, Settings>,
    capacity: usize,
    max_bytes: usize,
    states: HashMap<Key, Groups>,
    /// Values plus groups, and their bytes.
    entries: usize,
    bytes: usize,
    /// Groups, and the bytes of their records alone (without their values).
    groups: usize,
    group_bytes: usize,
    /// Groups that evicted since the last report: see [`RuleState::take_evicting_groups`].
    evicting: Vec<EvictingGroup>,
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
            state_settings: HashMap::new(),
            capacity: capacity.max(2),
            max_bytes: usize::MAX,
            states: HashMap::new(),
            entries: 0,
            bytes: 0,
            groups: 0,
            group_bytes: 0,
            evicting: Vec::new(),
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

    /// The settings of the state named `state`: its own, else the rule's.
    pub fn settings_of(&self, state: &[u8]) -> Settings {
        self.state_settings
            .get(state)
            .copied()
            .unwrap_or(self.settings)
    }

    /// The states with settings of their own, by name.
    pub fn state_settings(&self) -> impl Iterator<Item = (&str, Settings)> {
        self.state_settings
            .iter()
            .map(|(name, settings)| (std::str::from_utf8(name).unwrap_or(""), *settings))
    }

    /// Gives these states settings of their own (replacing any given before); every other state
    /// follows the rule's. What was learned is kept.
    pub fn set_state_settings<'a>(
        &mut self,
        states: impl IntoIterator<Item = (&'a str, Settings)>,
    ) {
        self.state_settings = states
            .into_iter()
            .map(|(name, settings)| (Key::from(name.as_bytes()), settings))
            .collect();
    }

    /// Whether `value` is known for `group` in `state` at event time `ts_ns`: learned, and not
    /// unseen past forget-after. Changes nothing (the `is_known` import).
    pub fn is_known(&self, ts_ns: i64, state: &[u8], group: &[u8], value: &[u8]) -> bool {
        let forget_after = clamp_i64(self.settings_of(state).forget_after_ns);
        self.states
            .get(state)
            .and_then(|groups| groups.get(group))
            .and_then(|entry| entry.values.get(value))
            .is_some_and(|last_seen| ts_ns.saturating_sub(*last_seen) <= forget_after)
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
        let now = self.stream_ns;
        let mut learning = 0;
        let mut total = 0;
        for (state, groups) in &self.states {
            let period = clamp_i64(self.settings_of(state).learning_period_ns);
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

    /// Most values plus groups held before the groups holding the most evict their own least
    /// recently seen values.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Groups held now.
    pub fn group_count(&self) -> usize {
        self.groups
    }

    /// Most groups held (a quarter of the capacity) before a new group drops the least recently
    /// seen learning ones; their records (keys and overhead) may also take at most a quarter of
    /// the byte budget.
    pub fn max_groups(&self) -> usize {
        (self.capacity / 4).max(1)
    }

    /// The groups that evicted since the last call, those that evicted the most first, at most
    /// [`MAX_EVICTING_REPORTED`]: who fills the state, for the log.
    pub fn take_evicting_groups(&mut self) -> Vec<EvictingGroup> {
        std::mem::take(&mut self.evicting)
    }

    /// Values plus groups held now.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Bytes held now (estimated: keys plus a fixed overhead per entry).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Most bytes held before the groups holding the most evict their own least recently seen
    /// values.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Sets the bounds: at most `capacity` entries and `max_bytes` bytes. Evicts at once if
    /// the state holds more.
    pub fn set_bounds(&mut self, capacity: usize, max_bytes: usize) {
        self.capacity = capacity.max(2);
        self.max_bytes = max_bytes;
        if self.entries > self.capacity
            || self.bytes > self.max_bytes
            || self.groups > self.max_groups()
        {
            self.evict(None, None, None);
        }
    }

    /// Evicts until at most `target` bytes are held (for a budget shared by several rules): the
    /// groups holding the most evict their own least recently seen values, as for the rule's
    /// own bounds.
    pub fn shrink_to(&mut self, target: usize) {
        if self.bytes > target {
            self.evict(Some(target), None, None);
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
        let settings = self.settings_of(state);
        let learning_period = clamp_i64(settings.learning_period_ns);
        let forget_after = clamp_i64(settings.forget_after_ns);
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
        let verdict = match groups.get_mut(group) {
            None => return self.start_group(ts_ns, state, group, value),
            Some(entry) => {
                let mut journal = Journal(self.journal.as_mut(), &mut self.journal_bytes);
                if entry.started_ns == NOT_STARTED {
                    // Values were allowed ahead of the group's first event: its learning starts
                    // now, as it would have without them.
                    entry.started_ns = ts_ns;
                    journal.group(state, group, ts_ns);
                }
                entry.last_seen_ns = entry.last_seen_ns.max(ts_ns);
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
                        entry.value_bytes += value_cost(value);
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
        self.after_check(ts_ns, state, group);
        Ok(verdict)
    }

    /// The first event of a group: makes room for its record if the group table is full, and
    /// starts it. Its first value is always learned silently: with a learning period of 0 it is
    /// the baseline that later values are new against.
    fn start_group(
        &mut self,
        ts_ns: i64,
        state: &[u8],
        group: &[u8],
        value: &[u8],
    ) -> Result<Verdict, StateError> {
        utf8(group, "group")?;
        utf8(value, "value")?;
        self.make_room_for_group(group_cost(group), ts_ns);
        let mut entry = Group::new(ts_ns);
        entry.values.insert(value.into(), ts_ns);
        entry.value_bytes = value_cost(value);
        self.states
            .get_mut(state)
            .expect("the state name was added before its first group")
            .insert(group.into(), entry);
        self.groups += 1;
        self.group_bytes += group_cost(group);
        self.entries += 2;
        self.bytes += group_cost(group) + value_cost(value);
        let mut journal = Journal(self.journal.as_mut(), &mut self.journal_bytes);
        journal.group(state, group, ts_ns);
        journal.value(state, group, value, ts_ns, true);
        self.stats.learned += 1;
        if let Some(outbox) = self.outbox.as_mut() {
            outbox.sighting(state, group, ts_ns, value, ts_ns);
        }
        self.after_check(ts_ns, state, group);
        Ok(Verdict::Learning)
    }

    /// What follows every answer: the stream's time, the forget sweep, and the bounds (the
    /// group just answered is never dropped by its own event).
    fn after_check(&mut self, ts_ns: i64, state: &[u8], group: &[u8]) {
        self.advance_stream(ts_ns);
        if self.stream_ns >= self.next_sweep_ns {
            self.sweep_expired();
        }
        if self.entries > self.capacity || self.bytes > self.max_bytes {
            self.evict(None, Some((state, group)), Some(ts_ns));
        }
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
        // As often as the shortest forget-after of any state asks.
        let shortest = self
            .state_settings
            .values()
            .map(|settings| settings.forget_after_ns)
            .fold(self.settings.forget_after_ns, u64::min);
        let interval = (clamp_i64(shortest) / 8).max(MIN_SWEEP_INTERVAL_NS);
        self.next_sweep_ns = self.stream_ns.saturating_add(interval);
        let stream_ns = self.stream_ns;
        let (default, per_state) = (self.settings, &self.state_settings);
        let mut journal = Journal(self.journal.as_mut(), &mut self.journal_bytes);
        let mut removed = 0;
        let mut freed = 0;
        for (state, groups) in &mut self.states {
            let forget_after = per_state.get(state).unwrap_or(&default).forget_after_ns;
            let cutoff = stream_ns.saturating_sub(clamp_i64(forget_after));
            for (group, entry) in groups.iter_mut() {
                let mut group_freed = 0;
                entry.values.retain(|value, last_seen| {
                    let keep = *last_seen >= cutoff;
                    if !keep {
                        journal.value_removed(state, group, value);
                        removed += 1;
                        group_freed += value_cost(value);
                    }
                    keep
                });
                entry.value_bytes -= group_freed;
                freed += group_freed;
            }
        }
        self.entries -= removed;
        self.bytes -= freed;
        self.stats.expired += removed as u64;
    }

    /// Brings the state within its bounds, or within `bytes_goal` (for a budget shared by
    /// several rules), to 7/8 of them so that eviction does not run on every event. First the
    /// group records, if they take more than their share ([`RuleState::max_groups`], a quarter
    /// of the bytes); then the values, fairly: the groups holding the most evict their own
    /// least recently seen values ([`RuleState::trim_values`]). `keep` is the group of the event
    /// being answered, which its own event never drops, and `ts_ns` its time.
    fn evict(
        &mut self,
        bytes_goal: Option<usize>,
        keep: Option<(&[u8], &[u8])>,
        ts_ns: Option<i64>,
    ) {
        let limit = bytes_goal.map_or(self.max_bytes, |goal| goal.min(self.max_bytes));
        let (max_groups, max_group_bytes) = (self.max_groups(), limit / 4);
        if self.groups > max_groups || self.group_bytes > max_group_bytes {
            let soft = (
                max_groups - max_groups / 8,
                max_group_bytes - max_group_bytes / 8,
            );
            self.drop_groups(soft, (max_groups, max_group_bytes), keep, ts_ns);
        }
        let entries_goal = self.capacity - self.capacity / 8;
        let bytes_goal = bytes_goal
            .unwrap_or(usize::MAX)
            .min(self.max_bytes - self.max_bytes / 8);
        if self.entries > entries_goal || self.bytes > bytes_goal {
            self.trim_values(
                entries_goal.saturating_sub(self.groups),
                bytes_goal.saturating_sub(self.group_bytes),
            );
        }
    }

    /// Makes room for the record of a new group costing `cost` bytes, if the group table is
    /// full (more than [`RuleState::max_groups`], or a quarter of the byte budget); `ts_ns` is
    /// the time of its first event.
    fn make_room_for_group(&mut self, cost: usize, ts_ns: i64) {
        let (max_groups, max_group_bytes) = (self.max_groups(), self.max_bytes / 4);
        if self.groups < max_groups && self.group_bytes + cost <= max_group_bytes {
            return;
        }
        let soft = (
            (max_groups - max_groups / 8).saturating_sub(1),
            (max_group_bytes - max_group_bytes / 8).saturating_sub(cost),
        );
        let hard = (max_groups - 1, max_group_bytes.saturating_sub(cost));
        self.drop_groups(soft, hard, None, Some(ts_ns));
    }

    /// Drops whole groups, with their values, until at most `soft` groups (count, record bytes)
    /// are left: the least recently seen groups still learning first. A group that has
    /// finished learning is dropped only when no group is learning any more, and then only as
    /// many as it takes to get within `hard`: a flood of new groups churns through its own
    /// learning groups, and costs the groups that learned one at a time, least recently seen
    /// first, each named in the report.
    fn drop_groups(
        &mut self,
        soft: (usize, usize),
        hard: (usize, usize),
        keep: Option<(&[u8], &[u8])>,
        ts_ns: Option<i64>,
    ) {
        // Whether a group is still learning is judged at the latest time known: the event being
        // answered or the stream's time. A time too late can only make learning groups look
        // finished, and so protected; one too early (the stream lags after a gap of days, until
        // it follows) would let finished groups be dropped as learning ones.
        let newest = || {
            let groups = self.states.values().flat_map(|groups| groups.values());
            groups.map(|entry| entry.last_seen_ns).max()
        };
        let now = match ts_ns {
            Some(ts) => ts.max(self.stream_ns),
            None if self.stream_ns != i64::MIN => self.stream_ns,
            // Bounds applied to restored state, before any event.
            None => newest().unwrap_or(i64::MIN),
        };
        // (finished learning, last seen, state, group): learning groups first, oldest first.
        let mut order: Vec<(bool, i64, &[u8], &[u8])> = self
            .states
            .iter()
            .flat_map(|(state, groups)| {
                let period = clamp_i64(self.settings_of(state).learning_period_ns);
                groups.iter().map(move |(group, entry)| {
                    let detecting = !entry.learning(now, period);
                    (detecting, entry.last_seen_ns, &state[..], &group[..])
                })
            })
            .filter(|(_, _, state, group)| keep != Some((*state, *group)))
            .collect();
        order.sort_unstable();
        let (mut count, mut bytes) = (self.groups, self.group_bytes);
        let mut doomed = Vec::new();
        for (detecting, _, state, group) in order {
            let goal = if detecting { hard } else { soft };
            if count <= goal.0 && bytes <= goal.1 {
                break;
            }
            count -= 1;
            bytes -= group_cost(group);
            doomed.push((Key::from(state), Key::from(group), detecting));
        }
        let mut journal = Journal(self.journal.as_mut(), &mut self.journal_bytes);
        for (state, group, detecting) in doomed {
            let groups = self.states.get_mut(&state).expect("listed above");
            let entry = groups.remove(&group).expect("listed above");
            journal.group_removed(&state, &group);
            let values = entry.values.len();
            self.groups -= 1;
            self.group_bytes -= group_cost(&group);
            self.entries -= 1 + values;
            self.bytes -= group_cost(&group) + entry.value_bytes;
            self.stats.evicted += 1 + values as u64;
            self.stats.groups_evicted += 1;
            if detecting {
                self.stats.detecting_groups_evicted += 1;
                note_evicting(&mut self.evicting, &state, &group, values as u64, true);
            }
        }
    }

    /// Evicts values until they are at most `entries_budget` and take at most `bytes_budget`,
    /// fairly: every group keeps its values up to a common level (in count and in bytes), the
    /// highest at which they fit, and a group holding more evicts its own least recently seen
    /// values down to that level; what the level leaves of the budget (values come whole) goes
    /// back to the most recently seen of the values past it. A group holding less than the
    /// level loses nothing, whatever another group does; and a group is never dropped for its
    /// values (one left with none keeps its learning start, so its unknown values are judged).
    fn trim_values(&mut self, entries_budget: usize, bytes_budget: usize) {
        let (mut counts, mut sizes): (Vec<usize>, Vec<usize>) = self
            .states
            .values()
            .flat_map(|groups| groups.values())
            .map(|entry| (entry.values.len(), entry.value_bytes))
            .unzip();
        let count_level = fair_level(&mut counts, entries_budget);
        let bytes_level = fair_level(&mut sizes, bytes_budget);
        // Each group over the level: its values past it, most recently seen first.
        let mut over: Vec<(Key, Key, Sighted)> = Vec::new();
        let (mut kept_count, mut kept_bytes) = (0, 0);
        for (state, groups) in &self.states {
            for (group, entry) in groups {
                if entry.values.len() <= count_level && entry.value_bytes <= bytes_level {
                    kept_count += entry.values.len();
                    kept_bytes += entry.value_bytes;
                    continue;
                }
                let (kept, past) = split_at_level(&entry.values, count_level, bytes_level);
                kept_count += kept.0;
                kept_bytes += kept.1;
                over.push((state.clone(), group.clone(), past));
            }
        }
        // The rest of the budget, to the most recently seen values past the level, in order
        // of sighting across groups (ties in the groups' order), until one does not fit.
        over.sort_unstable_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let mut back: Vec<(i64, usize)> = over
            .iter()
            .enumerate()
            .flat_map(|(at, (_, _, past))| past.iter().map(move |(seen, _)| (*seen, at)))
            .collect();
        back.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut given = vec![0; over.len()];
        for (_, at) in back {
            let cost = value_cost(&over[at].2[given[at]].1);
            if kept_count + 1 > entries_budget || kept_bytes + cost > bytes_budget {
                break;
            }
            (kept_count, kept_bytes) = (kept_count + 1, kept_bytes + cost);
            given[at] += 1;
        }
        let mut journal = Journal(self.journal.as_mut(), &mut self.journal_bytes);
        let (mut evicted, mut freed) = (0, 0);
        for ((state, group, past), given) in over.into_iter().zip(given) {
            let entry = self
                .states
                .get_mut(&state)
                .and_then(|groups| groups.get_mut(&group))
                .expect("listed above");
            let doomed = &past[given..];
            for (_, value) in doomed {
                entry.values.remove(value);
                entry.value_bytes -= value_cost(value);
                freed += value_cost(value);
                journal.value_removed(&state, &group, value);
            }
            evicted += doomed.len();
            note_evicting(
                &mut self.evicting,
                &state,
                &group,
                doomed.len() as u64,
                false,
            );
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
                groups.insert(group.into(), Group::new(started_ns));
                self.groups += 1;
                self.group_bytes += group_cost(group);
                self.entries += 1;
                self.bytes += group_cost(group);
            }
        }
    }

    /// Restores a value, as read back from a durable store; its group must be restored first.
    pub fn restore_value(&mut self, state: &str, group: &str, value: &str, last_seen_ns: i64) {
        let Some(entry) = group_mut(&mut self.states, state, group) else {
            return;
        };
        let last_seen = entry.values.entry_ref(value.as_bytes()).or_insert_with(|| {
            entry.value_bytes += value_cost(value.as_bytes());
            self.entries += 1;
            self.bytes += value_cost(value.as_bytes());
            i64::MIN
        });
        // The stream's time is left to the events that come: a value stored with a bogus
        // future time must not make the first sweep forget everything.
        *last_seen = (*last_seen).max(last_seen_ns);
        entry.last_seen_ns = entry.last_seen_ns.max(last_seen_ns);
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
        let exists = self
            .states
            .get(state.as_bytes())
            .is_some_and(|groups| groups.contains_key(group.as_bytes()));
        if !exists {
            // A group from the fleet takes its place in the group table like one of this
            // node's own (the table's bound holds; learning groups go first).
            let at = if started_ns == NOT_STARTED {
                self.stream_ns
            } else {
                started_ns
            };
            self.make_room_for_group(group_cost(group.as_bytes()), at);
        }
        let groups = self.states.entry_ref(state.as_bytes()).or_default();
        match groups.get_mut(group.as_bytes()) {
            Some(entry) if entry.started_ns <= started_ns => return,
            Some(entry) => entry.started_ns = started_ns,
            None => {
                let mut entry = Group::new(started_ns);
                if started_ns == NOT_STARTED {
                    entry.last_seen_ns = self.stream_ns;
                }
                groups.insert(group.as_bytes().into(), entry);
                self.groups += 1;
                self.group_bytes += group_cost(group.as_bytes());
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
        let Some(entry) = group_mut(&mut self.states, state, group) else {
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
                entry.value_bytes += value_cost(value.as_bytes());
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
        entry.last_seen_ns = entry.last_seen_ns.max(seen_ns);
        self.evict_if_full();
    }

    /// An operator made `value` be forgotten in `group`: it is new again when it returns.
    /// Returns whether it was known.
    pub fn forget_value(&mut self, state: &str, group: &str, value: &str) -> bool {
        let Some(entry) = group_mut(&mut self.states, state, group) else {
            return false;
        };
        if entry.values.remove(value.as_bytes()).is_none() {
            return false;
        }
        entry.value_bytes -= value_cost(value.as_bytes());
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
        self.groups -= 1;
        self.group_bytes -= group_cost(group.as_bytes());
        self.entries -= entry.values.len() + 1;
        self.bytes -= entry.value_bytes + group_cost(group.as_bytes());
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
        if self.entries > self.capacity
            || self.bytes > self.max_bytes
            || self.groups > self.max_groups()
        {
            self.evict(None, None, None);
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

/// The group `group` of state `state`, if there is one.
fn group_mut<'s>(
    states: &'s mut HashMap<Key, Groups>,
    state: &str,
    group: &str,
) -> Option<&'s mut Group> {
    states
        .get_mut(state.as_bytes())
        .and_then(|groups| groups.get_mut(group.as_bytes()))
}

fn text_ref(key: &[u8]) -> &str {
    std::str::from_utf8(key).expect("keys are checked as UTF-8 when learned")
}

/// The highest level such that every group keeping `min(size, level)` fits in `budget`
/// (max-min fairness); `usize::MAX` when everything fits. Sorts `sizes`.
fn fair_level(sizes: &mut [usize], budget: usize) -> usize {
    if sizes
        .iter()
        .fold(0usize, |sum, size| sum.saturating_add(*size))
        <= budget
    {
        return usize::MAX;
    }
    sizes.sort_unstable();
    let mut left = budget;
    for (at, &size) in sizes.iter().enumerate() {
        let rest = sizes.len() - at;
        if size.saturating_mul(rest) > left {
            // Every group from here on holds more than an even share of what is left.
            return left / rest;
        }
        left -= size;
    }
    usize::MAX
}

/// Splits one group's values at a level: the count and bytes of the most recently seen that
/// fit in `count` values and `bytes`, and the others, most recently seen first (ties broken by
/// the value, so that a replay evicts the same).
fn split_at_level(
    values: &HashMap<Key, i64>,
    count: usize,
    bytes: usize,
) -> ((usize, usize), Sighted) {
    let mut order: Vec<(i64, &Key)> = values.iter().map(|(value, at)| (*at, value)).collect();
    order.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let mut kept = 0;
    let cut = order
        .iter()
        .enumerate()
        .position(|(at, (_, value))| {
            if at >= count || kept + value_cost(value) > bytes {
                return true;
            }
            kept += value_cost(value);
            false
        })
        .unwrap_or(order.len());
    let past = order[cut..]
        .iter()
        .map(|(at, value)| (*at, (*value).clone()))
        .collect();
    ((cut, kept), past)
}

/// Adds `values` evicted by a group to the report, which keeps the groups that evicted the
/// most, at most [`MAX_EVICTING_REPORTED`].
fn note_evicting(
    report: &mut Vec<EvictingGroup>,
    state: &[u8],
    group: &[u8],
    values: u64,
    dropped: bool,
) {
    if values == 0 && !dropped {
        return;
    }
    let (state, group) = (text(state), text(group));
    match report
        .iter_mut()
        .find(|seen| seen.state == state && seen.group == group)
    {
        Some(seen) => {
            seen.values += values;
            seen.dropped |= dropped;
        }
        None => report.push(EvictingGroup {
            state,
            group,
            values,
            dropped,
        }),
    }
    // Dropped groups that had learned are always worth naming; then the biggest evictors.
    report.sort_by(|a, b| b.dropped.cmp(&a.dropped).then(b.values.cmp(&a.values)));
    report.truncate(MAX_EVICTING_REPORTED);
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

    /// A state with settings of its own learns and forgets on them; the rule's other states on
    /// the rule's. `is_known` answers from what is learned and changes nothing.
    #[test]
    fn a_state_with_settings_of_its_own_learns_and_forgets_on_them() {
        let mut st = state(1, 28);
        st.set_state_settings([(
            "pair",
            Settings {
                learning_period_ns: (3 * DAY) as u64,
                forget_after_ns: (2 * DAY) as u64,
            },
        )]);
        for name in ["process.exe", "pair"] {
            assert_eq!(st.check(0, name, "g", "/a").unwrap(), Verdict::Learning);
        }
        // Day 2: the rule's state detects, the pair still learns.
        assert_eq!(
            st.check(2 * DAY, "process.exe", "g", "/b").unwrap(),
            Verdict::New
        );
        assert_eq!(
            st.check(2 * DAY, "pair", "g", "/b").unwrap(),
            Verdict::Learning
        );
        // Asking changes nothing: not learned, and a known value keeps its last sighting.
        assert!(!st.is_known(2 * DAY, b"pair", b"g", b"/c"));
        assert!(!st.is_known(2 * DAY, b"pair", b"g", b"/c"));
        assert!(st.is_known(2 * DAY, b"pair", b"g", b"/a"));
        assert!(!st.is_known(2 * DAY, b"pair", b"other", b"/a"));
        // Day 5: `/a` of the pair was last seen 5 days ago, past its 2 days: forgotten (for the
        // rule's state, 28 days, it is still known).
        assert!(!st.is_known(5 * DAY, b"pair", b"g", b"/a"));
        assert!(st.is_known(5 * DAY, b"process.exe", b"g", b"/a"));
        assert_eq!(st.check(5 * DAY, "pair", "g", "/a").unwrap(), Verdict::New);
        assert_eq!(
            st.check(5 * DAY, "process.exe", "g", "/a").unwrap(),
            Verdict::Known
        );
        assert_eq!(st.settings_of(b"pair").forget_after_ns, (2 * DAY) as u64);
        assert_eq!(st.settings_of(b"other").forget_after_ns, (28 * DAY) as u64);
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
    fn with_no_group_learning_the_least_recently_seen_groups_make_room() {
        // A learning period of 0: every group has finished learning once it exists.
        let mut st = state(0, 28);
        st.set_bounds(DEFAULT_CAPACITY, 1 << 20);
        st.enable_journal();
        let big = |tag: &str, i: i64| format!("{tag}{i:08}{}", "x".repeat(4087));
        for i in 0..1000 {
            st.check(i, "s", &big("g", i), &big("v", i)).unwrap();
            assert!(st.bytes() <= 1 << 20, "{} bytes after {i}", st.bytes());
            assert!(
                st.group_count() * (4096 + GROUP_OVERHEAD) <= 1 << 18,
                "{}",
                st.group_count()
            );
        }
        assert!(st.stats().evicted > 800, "{:?}", st.stats());
        assert_eq!(
            st.stats().groups_evicted,
            st.stats().detecting_groups_evicted
        );
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
        // Each was named as it went.
        let named = st.take_evicting_groups();
        assert!(named.iter().all(|e| e.dropped), "{named:?}");
        assert!(!named.is_empty() && named.len() <= MAX_EVICTING_REPORTED);
        // A shared budget shrinks a state further.
        st.shrink_to(100_000);
        assert!(st.bytes() <= 100_000, "{}", st.bytes());
    }

    /// A mirror of the state built from its journal alone, as a durable store keeps it.
    #[derive(Default)]
    struct Mirror {
        groups: std::collections::BTreeMap<(String, String), std::collections::BTreeSet<String>>,
    }

    impl Mirror {
        fn apply(&mut self, changes: Vec<Change>) {
            for change in changes {
                match change {
                    Change::Group { state, group, .. } => {
                        self.groups.entry((state.into(), group.into())).or_default();
                    }
                    Change::Value {
                        state,
                        group,
                        value,
                        ..
                    } => {
                        let values = self.groups.get_mut(&(state.into(), group.into()));
                        values
                            .expect("a value after its group")
                            .insert(value.into());
                    }
                    Change::ValueRemoved {
                        state,
                        group,
                        value,
                    } => {
                        let values = self.groups.get_mut(&(state.into(), group.into()));
                        assert!(values.unwrap().remove(&*value));
                    }
                    Change::GroupRemoved { state, group } => {
                        assert!(self.groups.remove(&(state.into(), group.into())).is_some());
                    }
                }
            }
        }

        fn entries(&self) -> usize {
            self.groups.values().map(|values| 1 + values.len()).sum()
        }
    }

    /// 50 groups learned in the first week (readers `/usr/bin/app` and `/usr/bin/helper`).
    fn victims(st: &mut RuleState) {
        for g in 0..50 {
            check(st, g * S, &format!("victim-{g}"), "/usr/bin/app");
            check(st, DAY + g * S, &format!("victim-{g}"), "/usr/bin/helper");
        }
    }

    /// Every victim still knows its readers, and judges an unfamiliar one at `ts`.
    fn victims_judge(st: &mut RuleState, ts: i64) {
        for g in 0..50 {
            let group = format!("victim-{g}");
            for known in ["/usr/bin/app", "/usr/bin/helper"] {
                assert_eq!(check(st, ts, &group, known), Verdict::Known, "{group}");
            }
            assert_eq!(
                check(st, ts, &group, "/tmp/kubectl"),
                Verdict::New,
                "{group}"
            );
        }
    }

    fn long_exe(i: usize) -> String {
        format!("/tmp/{i:06}/{}", "x".repeat(2000))
    }

    #[test]
    fn a_flood_in_one_group_evicts_only_that_groups_values() {
        let mut st = state(7, 28);
        st.set_bounds(DEFAULT_CAPACITY, 1 << 20);
        st.enable_journal();
        victims(&mut st);
        let mut mirror = Mirror::default();
        mirror.apply(st.take_changes());
        // Day 8: a new image, still learning, reads its token with 12,000 exes of 2 KB.
        for i in 0..12_000 {
            let verdict = check(&mut st, 8 * DAY + i as i64, "attacker", &long_exe(i));
            assert_eq!(verdict, Verdict::Learning);
            assert!(st.bytes() <= 1 << 20, "{} bytes after {i}", st.bytes());
        }
        let stats = st.stats();
        assert!(stats.evicted > 11_000, "{stats:?}");
        assert_eq!(stats.groups_evicted, 0, "{stats:?}");
        // Only the attacker's own values went, and it is named as the one evicting.
        let changes = st.take_changes();
        assert!(
            changes
                .iter()
                .all(|c| !matches!(c, Change::GroupRemoved { .. })
                    && (!matches!(c, Change::ValueRemoved { .. }) || c.place().1 == "attacker")),
            "a victim's value or group was removed"
        );
        mirror.apply(changes);
        assert_eq!(mirror.entries(), st.entries());
        let named = st.take_evicting_groups();
        assert_eq!(named.len(), 1, "{named:?}");
        assert_eq!((&*named[0].group, named[0].dropped), ("attacker", false));
        assert_eq!(named[0].values, stats.evicted);
        victims_judge(&mut st, 9 * DAY);
        // The attacker kept its most recent values, within the budget.
        assert_eq!(
            check(&mut st, 9 * DAY, "attacker", &long_exe(11_999)),
            Verdict::Learning
        );
        assert_eq!(st.stats().learned, 100 + 12_000);
    }

    #[test]
    fn a_group_left_without_values_keeps_its_learning_start() {
        // Values of 3 KB against a 20 KB budget: a fair share is less than one value.
        let mut st = state(1, 28);
        st.set_bounds(DEFAULT_CAPACITY, 20_000);
        st.enable_journal();
        let value = |tag: &str| format!("/{tag}/{}", "v".repeat(3000));
        for g in 0..10 {
            check(&mut st, g, &format!("g{g}"), &value("a"));
        }
        // Day 2, after learning: every group sees a new value; the budget holds about five.
        for g in 0..10 {
            let group = format!("g{g}");
            assert_eq!(
                check(&mut st, 2 * DAY + g, &group, &value("b")),
                Verdict::New
            );
        }
        assert!(st.bytes() <= 20_000);
        assert_eq!(st.group_count(), 10);
        assert_eq!(st.stats().groups_evicted, 0);
        assert!(st.entries() < 20, "{}", st.entries());
        // No group learns again: an evicted value is judged, new again, never silent.
        let mut new = 0;
        for g in 0..10 {
            let group = format!("g{g}");
            for v in ["a", "b"] {
                let verdict = check(&mut st, 3 * DAY, &group, &value(v));
                assert_ne!(verdict, Verdict::Learning, "{group} learns again");
                new += usize::from(verdict == Verdict::New);
            }
        }
        assert!(new > 0);
        assert!(
            st.take_changes()
                .iter()
                .all(|c| !matches!(c, Change::GroupRemoved { .. }))
        );
    }

    #[test]
    fn a_group_evicts_its_least_recently_seen_values() {
        let mut st = RuleState::new(
            Settings {
                learning_period_ns: 0,
                forget_after_ns: u64::MAX,
            },
            // 25 groups at most, 200 entries: values to 175 when full.
            100,
        );
        // Two groups; "busy" has values 0..60, with the even ones seen again later.
        check(&mut st, 0, "quiet", "/q");
        for i in 0..60 {
            check(&mut st, i, "busy", &format!("/v{i:02}"));
        }
        for i in (0..60).step_by(2) {
            check(&mut st, 100 + i, "busy", &format!("/v{i:02}"));
        }
        // Over the capacity (to 7/8 of it: 86 values for two groups): "busy" keeps its 85 most
        // recently seen, so the oldest odd values went; the quiet group's value, older than all
        // of them, stays.
        for i in 60..100 {
            check(&mut st, 200 + i, "busy", &format!("/v{i:02}"));
        }
        assert!(st.entries() <= 100);
        use Verdict::{Known, New};
        for (group, value, verdict) in [
            ("quiet", "/q", Known),
            ("busy", "/v99", Known),
            ("busy", "/v58", Known),
            ("busy", "/v59", Known),
            ("busy", "/v27", Known),
            ("busy", "/v25", New),
            ("busy", "/v01", New),
        ] {
            assert_eq!(
                check(&mut st, 1000, group, value),
                verdict,
                "{group} {value}"
            );
        }
    }

    #[test]
    fn a_flood_of_new_groups_drops_learning_groups_never_detecting_ones() {
        // Capacity 400: at most 100 groups.
        let mut st = state(7, 28);
        st.set_bounds(400, DEFAULT_RULE_BYTES);
        st.enable_journal();
        victims(&mut st);
        for i in 0..5_000 {
            let group = format!("registry.example/flood-{i}");
            assert_eq!(
                check(&mut st, 8 * DAY + i, &group, "/app"),
                Verdict::Learning
            );
            assert!(st.group_count() <= st.max_groups());
        }
        let stats = st.stats();
        assert!(stats.groups_evicted > 4_900, "{stats:?}");
        assert_eq!(stats.detecting_groups_evicted, 0, "{stats:?}");
        assert!(st.entries() <= 400);
        let changes = st.take_changes();
        assert!(
            changes
                .iter()
                .filter(|c| matches!(c, Change::GroupRemoved { .. } | Change::ValueRemoved { .. }))
                .all(|c| c.place().1.starts_with("registry.example/flood-")),
        );
        victims_judge(&mut st, 9 * DAY);
        // The flood's most recent groups are kept, still learning.
        let last = "registry.example/flood-4999";
        assert_eq!(check(&mut st, 9 * DAY, last, "/other"), Verdict::Learning);
    }

    #[test]
    fn a_detecting_group_is_dropped_only_when_none_is_learning_and_one_at_a_time() {
        // Capacity 40: at most 10 groups, all of them detecting after a day.
        let mut st = state(1, 28);
        st.set_bounds(40, DEFAULT_RULE_BYTES);
        st.enable_journal();
        for g in 0..10 {
            check(&mut st, g * S, &format!("g{g}"), "/app");
        }
        // g0 is seen again, so g1 is the least recently seen.
        check(&mut st, 2 * DAY, "g0", "/app");
        st.take_changes();
        assert_eq!(check(&mut st, 3 * DAY, "new-1", "/app"), Verdict::Learning);
        assert_eq!(st.stats().detecting_groups_evicted, 1);
        assert_eq!(
            st.take_changes()
                .iter()
                .filter_map(|c| match c {
                    Change::GroupRemoved { group, .. } => Some(&**group),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            ["g1"]
        );
        let named = st.take_evicting_groups();
        assert_eq!(named.len(), 1);
        assert_eq!((&*named[0].group, named[0].dropped), ("g1", true));
        // Another new group: one is learning (new-1), and it goes instead of a detecting one.
        assert_eq!(
            check(&mut st, 3 * DAY + 1, "new-2", "/app"),
            Verdict::Learning
        );
        assert_eq!(st.stats().detecting_groups_evicted, 1);
        assert_eq!(st.stats().groups_evicted, 2);
        assert_eq!(
            check(&mut st, 3 * DAY + 2, "new-1", "/app"),
            Verdict::Learning
        );
        assert_eq!(check(&mut st, 3 * DAY + 3, "g2", "/intruder"), Verdict::New);
    }

    #[test]
    fn lowered_bounds_keep_groups_and_restored_state_is_bounded_the_same_way() {
        // 50 small groups and a big one, learned live or read back from a store.
        let mut live = state(0, 28);
        victims(&mut live);
        for i in 0..500 {
            check(&mut live, 2 * DAY + i, "big", &format!("/big/{i}"));
        }
        let mut restored = state(0, 28);
        for g in 0..50 {
            let group = format!("victim-{g}");
            restored.restore_group("process.exe", &group, g * S);
            restored.restore_value("process.exe", &group, "/usr/bin/app", g * S);
            restored.restore_value("process.exe", &group, "/usr/bin/helper", DAY + g * S);
        }
        restored.restore_group("process.exe", "big", 2 * DAY);
        for i in 0..500 {
            restored.restore_value("process.exe", "big", &format!("/big/{i}"), 2 * DAY + i);
        }
        for st in [&mut live, &mut restored] {
            assert_eq!(st.entries(), 51 + 100 + 500);
            st.enable_journal();
            st.set_bounds(400, DEFAULT_RULE_BYTES);
            assert!(st.entries() <= 400, "{}", st.entries());
            assert_eq!(st.group_count(), 51);
            assert_eq!(st.stats().groups_evicted, 0);
            // Only the big group gave way, its oldest values first.
            assert!(
                st.take_changes()
                    .iter()
                    .all(|c| matches!(c, Change::ValueRemoved { group, .. } if &**group == "big"))
            );
            assert_eq!(check(st, 3 * DAY, "big", "/big/499"), Verdict::Known);
            assert_eq!(check(st, 3 * DAY, "big", "/big/0"), Verdict::New);
            assert_eq!(
                check(st, 3 * DAY, "victim-7", "/usr/bin/helper"),
                Verdict::Known
            );
        }
    }

    #[test]
    fn the_fair_level_is_the_highest_that_fits() {
        assert_eq!(fair_level(&mut [1, 2, 3], 6), usize::MAX);
        assert_eq!(fair_level(&mut [1, 2, 100], 10), 7);
        assert_eq!(fair_level(&mut [5, 5, 5, 5], 10), 2);
        assert_eq!(fair_level(&mut [3, 1000, 1000], 3), 1);
        assert_eq!(fair_level(&mut [3, 1000, 1000], 2), 0);
        assert_eq!(fair_level(&mut [], 0), usize::MAX);
        assert_eq!(fair_level(&mut [usize::MAX, usize::MAX], 10), 5);
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
