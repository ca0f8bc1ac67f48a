//! The fleet worker: one thread that talks to the store so that the event path never waits on
//! the network. The event loop hands it what its rules learned and claimed ([`Fleet::push`],
//! [`Fleet::claim`]) and takes back what the other nodes learned and the store's answers
//! ([`Fleet::updates`]), between events.
//!
//! - At start it loads the fleet's baseline (every group and value) before the agent judges
//!   anything, then follows the store's log for what other nodes learn.
//! - What this node learned is pushed in batches every [`PUSH_EVERY`]; while the store is
//!   unreachable it waits here, folded to one entry per value and bounded.
//! - A claim is answered within the store's timeout, or "unconfirmed": the signal stands
//!   (an outage never costs a detection) and the value is pushed once the store is back.
//! - When the store comes back (or the log was trimmed past this node's place), the node
//!   reconciles: it pushes what it learned alone, then loads the baseline again.

use super::store::{ClaimAnswer, Remote, SharedStore, StoreOptions};
use crate::state::{Settings, Sighting};
use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// How often what this node learned is pushed, and the log followed.
pub const PUSH_EVERY: Duration = Duration::from_secs(1);
/// How often the log's oldest entry is checked against this node's place in it.
const CHECK_GAP_EVERY: u32 = 30;
/// Sightings pushed in one round trip.
const PUSH_CHUNK: usize = 2000;
/// Log entries read at once.
const FOLLOW_BATCH: usize = 2000;
/// Most sightings waiting for the store (one per value); past it, new ones are dropped and
/// counted (the node still knows them; only the fleet does not hear of them until they are
/// seen again).
const MAX_WAITING: usize = 1 << 20;
/// Most claims in flight at once; past it, a claim is answered "unconfirmed" at once.
const MAX_CLAIMS_IN_FLIGHT: usize = 4096;
/// Longest a stopping node spends pushing what it learned last.
const FINAL_PUSH: Duration = Duration::from_secs(2);

/// How to run the fleet worker.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// The store.
    pub store: StoreOptions,
    /// This node's name, as the log records who learned what.
    pub node: String,
    /// Longest the start waits for the store and its baseline.
    pub start_timeout: Duration,
}

/// What the store answered a claim, or why it did not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The store's answer.
    Answered(ClaimAnswer),
    /// No answer in time, or the store is unreachable: the node decided alone.
    Unconfirmed(String),
}

/// What the worker hands back to the event loop.
#[derive(Debug)]
pub enum Update {
    /// What other nodes learned (or the baseline, after a reconciliation), to apply.
    Remote(Vec<Remote>),
    /// The answer to claim `id`.
    Claimed {
        /// The id [`Fleet::claim`] returned.
        id: u64,
        /// The answer.
        outcome: ClaimOutcome,
        /// The group's learning start as the store has it, when it answered.
        started_ns: Option<i64>,
    },
}

enum Request {
    Push(Vec<(String, Sighting)>),
    Claim {
        id: u64,
        rule: String,
        sighting: Sighting,
        settings: Settings,
    },
    Settings {
        rule: String,
        settings: Settings,
    },
}

/// The event loop's handle on the fleet worker.
pub struct Fleet {
    requests: Option<mpsc::UnboundedSender<Request>>,
    updates: mpsc::UnboundedReceiver<Update>,
    next_claim: u64,
    thread: Option<JoinHandle<()>>,
    done: std_mpsc::Receiver<()>,
    store: String,
}

/// How the start went.
pub struct Started {
    /// The worker.
    pub fleet: Fleet,
    /// The fleet's baseline, to apply before the first event; empty if the store could not be
    /// reached (the node starts alone and reconciles once it can).
    pub baseline: Vec<Remote>,
    /// Why the store could not be reached, if it could not.
    pub unreachable: Option<String>,
}

impl Fleet {
    /// Starts the worker, connects, and waits up to `start_timeout` for the fleet's baseline.
    pub fn start(options: FleetOptions) -> anyhow::Result<Started> {
        super::keys::check_prefix(&options.store.prefix).map_err(anyhow::Error::msg)?;
        let (request_tx, request_rx) = mpsc::unbounded_channel();
        let (update_tx, update_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let (done_tx, done) = std_mpsc::channel();
        let start_timeout = options.start_timeout;
        let store = super::store::redact(&options.store.url);
        let thread = std::thread::Builder::new()
            .name("picket-fleet".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = ready_tx.send(Err(format!("cannot start its runtime: {err}")));
                        return;
                    }
                };
                runtime.block_on(work(options, request_rx, update_tx, ready_tx));
                let _ = done_tx.send(());
            })?;
        let (baseline, unreachable) = match ready_rx.recv_timeout(start_timeout) {
            Ok(Ok(baseline)) => (baseline, None),
            Ok(Err(why)) => (Vec::new(), Some(why)),
            Err(_) => (
                Vec::new(),
                Some(format!(
                    "no answer within {start_timeout:?}; starting alone, the baseline follows \
                     once the store answers"
                )),
            ),
        };
        Ok(Started {
            fleet: Fleet {
                requests: Some(request_tx),
                updates: update_rx,
                next_claim: 0,
                thread: Some(thread),
                done,
                store,
            },
            baseline,
            unreachable,
        })
    }

    /// The store, for messages (no password).
    pub fn store(&self) -> &str {
        &self.store
    }

    /// Hands over what this node learned, to be pushed with the next batch.
    pub fn push(&mut self, sightings: Vec<(String, Sighting)>) {
        if !sightings.is_empty() {
            self.send(Request::Push(sightings));
        }
    }

    /// Asks the fleet to confirm a value this node found new; the answer comes back as
    /// [`Update::Claimed`] with the returned id.
    pub fn claim(&mut self, rule: &str, sighting: Sighting, settings: Settings) -> u64 {
        self.next_claim += 1;
        let id = self.next_claim;
        self.send(Request::Claim {
            id,
            rule: rule.to_string(),
            sighting,
            settings,
        });
        id
    }

    /// Records a rule's learning settings in the store, for `picket state show`.
    pub fn set_settings(&mut self, rule: &str, settings: Settings) {
        self.send(Request::Settings {
            rule: rule.to_string(),
            settings,
        });
    }

    fn send(&mut self, request: Request) {
        if let Some(requests) = &self.requests
            && requests.send(request).is_err()
        {
            tracing::error!(store = %self.store, "the fleet worker stopped; deciding alone from now on");
            self.requests = None;
        }
    }

    /// The updates channel: awaited by the live agent between events.
    pub fn updates(&mut self) -> &mut mpsc::UnboundedReceiver<Update> {
        &mut self.updates
    }

    /// Stops the worker after it pushed what it was handed (within a bound).
    pub fn shutdown(mut self) {
        self.requests = None;
        if self
            .done
            .recv_timeout(FINAL_PUSH + Duration::from_secs(1))
            .is_ok()
            && let Some(thread) = self.thread.take()
        {
            let _ = thread.join();
        }
    }
}

/// A value's place: rule, state, group, value.
type ValueKey = (String, Box<str>, Box<str>, Box<str>);

/// A claim's round trip as it ends: its id, rule and sighting, the answer, the time it took.
type ClaimDone = (
    u64,
    String,
    Sighting,
    Result<(ClaimAnswer, i64), String>,
    Duration,
);

/// What the worker keeps between rounds.
struct Worker {
    options: FleetOptions,
    store: Option<SharedStore>,
    /// Where this node is in the log.
    cursor: String,
    /// Sightings waiting for the store, one per (rule, state, group, value): the latest, with
    /// the first sighting folded into it.
    waiting: HashMap<ValueKey, (Sighting, i64)>,
    dropped: u64,
    settings: HashMap<String, Settings>,
    updates: mpsc::UnboundedSender<Update>,
    rounds: u32,
    /// Since when the store has been unreachable, and why.
    down: Option<(Instant, String)>,
}

async fn work(
    options: FleetOptions,
    mut requests: mpsc::UnboundedReceiver<Request>,
    updates: mpsc::UnboundedSender<Update>,
    ready: std_mpsc::Sender<Result<Vec<Remote>, String>>,
) {
    let metrics = &crate::metrics::global().fleet;
    let mut worker = Worker {
        options,
        store: None,
        cursor: "0-0".into(),
        waiting: HashMap::new(),
        dropped: 0,
        settings: HashMap::new(),
        updates,
        rounds: 0,
        down: None,
    };
    match worker.join().await {
        Ok(baseline) => {
            let _ = ready.send(Ok(baseline));
        }
        Err(why) => {
            worker.down = Some((Instant::now(), why.clone()));
            metrics.set_up(false);
            let _ = ready.send(Err(why));
        }
    }
    let mut claims: JoinSet<ClaimDone> = JoinSet::new();
    let mut tick = tokio::time::interval(PUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            request = requests.recv() => match request {
                None => break,
                Some(Request::Push(batch)) => worker.wait(batch),
                Some(Request::Settings { rule, settings }) => {
                    worker.settings.insert(rule, settings);
                }
                Some(Request::Claim { id, rule, sighting, settings }) => {
                    let store = match (&worker.store, &worker.down) {
                        (Some(store), None) if claims.len() < MAX_CLAIMS_IN_FLIGHT => store.clone(),
                        _ => {
                            let why = worker.down.as_ref().map_or_else(
                                || "too many claims in flight".to_string(),
                                |(_, why)| format!("store unreachable: {why}"),
                            );
                            worker.unconfirmed(id, rule, sighting, why);
                            continue;
                        }
                    };
                    let node = worker.options.node.clone();
                    let timeout = worker.options.store.timeout;
                    claims.spawn(async move {
                        let mut store = store;
                        let started = Instant::now();
                        let answer = match tokio::time::timeout(
                            timeout,
                            store.claim(&node, &rule, &sighting, settings),
                        )
                        .await
                        {
                            Ok(answer) => answer,
                            Err(_) => Err(format!("no answer within {timeout:?}")),
                        };
                        (id, rule, sighting, answer, started.elapsed())
                    });
                }
            },
            Some(joined) = claims.join_next(), if !claims.is_empty() => {
                let Ok((id, rule, sighting, answer, took)) = joined else { continue };
                metrics.round_trip("claim", answer.is_ok());
                match answer {
                    Ok((answer, started_ns)) => {
                        metrics.claimed(took);
                        let _ = worker.updates.send(Update::Claimed {
                            id,
                            outcome: ClaimOutcome::Answered(answer),
                            started_ns: Some(started_ns),
                        });
                    }
                    Err(why) => {
                        worker.lost(why.clone());
                        worker.unconfirmed(id, rule, sighting, why);
                    }
                }
            }
            _ = tick.tick() => worker.round().await,
        }
    }
    // Stopping: what this node learned last goes out if the store answers in time.
    if worker.down.is_none() && !worker.waiting.is_empty() {
        let pushed = tokio::time::timeout(FINAL_PUSH, worker.push()).await;
        let failed = match pushed {
            Ok(Ok(())) => None,
            Ok(Err(why)) => Some(why),
            Err(_) => Some(format!("no answer within {FINAL_PUSH:?}")),
        };
        if let Some(why) = failed {
            tracing::error!(
                values = worker.waiting.len(),
                "fleet: what this node learned last could not be pushed before stopping (it is \
                 in its state file, and pushed at its next start): {why}"
            );
        }
    }
}

impl Worker {
    /// Connects, records where the log is, and loads every group: the baseline.
    async fn join(&mut self) -> Result<Vec<Remote>, String> {
        let metrics = &crate::metrics::global().fleet;
        let timeout = self.options.start_timeout;
        let mut store = tokio::time::timeout(timeout, SharedStore::connect(&self.options.store))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))??;
        // The log's head first: whatever is learned while the groups load is followed after.
        let head = store.log_head().await?;
        let mut baseline = Vec::new();
        let malformed = store.load(None, |remote| baseline.push(remote)).await;
        metrics.round_trip("load", malformed.is_ok());
        let malformed = malformed?;
        metrics.malformed(malformed);
        metrics.set_up(true);
        tracing::info!(
            store = store.display(),
            cluster = store.is_cluster(),
            entries = baseline.len(),
            malformed,
            "fleet baseline loaded"
        );
        self.cursor = head;
        self.store = Some(store);
        Ok(baseline)
    }

    /// Queues sightings for the next push, one per value.
    fn wait(&mut self, batch: Vec<(String, Sighting)>) {
        self.wait_seen(batch.into_iter().map(|(rule, s)| {
            let first = s.seen_ns;
            (rule, s, first)
        }));
    }

    /// Queues sightings with their first sighting.
    fn wait_seen(&mut self, batch: impl IntoIterator<Item = (String, Sighting, i64)>) {
        for (rule, sighting, first_ns) in batch {
            let key = (
                rule,
                sighting.state.clone(),
                sighting.group.clone(),
                sighting.value.clone(),
            );
            let full = self.waiting.len() >= MAX_WAITING;
            match self.waiting.get_mut(&key) {
                Some((waiting, first)) => {
                    *first = (*first).min(first_ns);
                    waiting.seen_ns = waiting.seen_ns.max(sighting.seen_ns);
                    waiting.started_ns = waiting.started_ns.min(sighting.started_ns);
                }
                None if full => self.dropped += 1,
                None => {
                    self.waiting.insert(key, (sighting, first_ns));
                }
            }
        }
    }

    /// A claim that could not be confirmed: the node's own decision stands, and the value is
    /// pushed with the next batch that reaches the store.
    fn unconfirmed(&mut self, id: u64, rule: String, sighting: Sighting, why: String) {
        self.wait(vec![(rule, sighting)]);
        let _ = self.updates.send(Update::Claimed {
            id,
            outcome: ClaimOutcome::Unconfirmed(why),
            started_ns: None,
        });
    }

    /// The store stopped answering.
    fn lost(&mut self, why: String) {
        if self.down.is_none() {
            tracing::error!(
                store = %super::store::redact(&self.options.store.url),
                "fleet store unreachable, deciding alone (signals are marked unconfirmed) and \
                 reconciling when it is back: {why}"
            );
            crate::metrics::global().fleet.set_up(false);
            self.down = Some((Instant::now(), why));
        }
    }

    /// One round: push, follow; or, while the store is down, try it again.
    async fn round(&mut self) {
        if self.down.is_some() || self.store.is_none() {
            self.reconcile().await;
            return;
        }
        if let Err(why) = self.push().await {
            self.lost(why);
            return;
        }
        if let Err(why) = self.follow().await {
            self.lost(why);
        }
    }

    async fn push(&mut self) -> Result<(), String> {
        let metrics = &crate::metrics::global().fleet;
        if self.dropped > 0 {
            tracing::warn!(
                dropped = self.dropped,
                "fleet: sightings dropped while the store was behind (bounded queue); they are \
                 sent again when seen again"
            );
            self.dropped = 0;
        }
        let Some(store) = self.store.as_mut() else {
            return Err("not connected".into());
        };
        let timeout = self.options.store.timeout;
        for (rule, settings) in std::mem::take(&mut self.settings) {
            let set = tokio::time::timeout(timeout, store.set_settings(&rule, settings)).await;
            if !matches!(set, Ok(Ok(()))) {
                self.settings.insert(rule, settings);
            }
        }
        if self.waiting.is_empty() {
            return Ok(());
        }
        let index_full = store.group_count().await? >= self.options.store.max_groups;
        let mut batch: Vec<(String, Sighting, i64)> = self
            .waiting
            .drain()
            .map(|((rule, ..), (sighting, first))| (rule, sighting, first))
            .collect();
        let node = self.options.node.clone();
        // A large push (a reconciliation) goes in chunks, each within the timeout.
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(PUSH_CHUNK));
            let pushed = tokio::time::timeout(timeout, store.push(&node, &batch, index_full)).await;
            let pushed = match pushed {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
            metrics.round_trip("push", pushed.is_ok());
            match pushed {
                Ok(pushed) if pushed.refused > 0 => {
                    metrics.refused(pushed.refused);
                    tracing::warn!(
                        refused = pushed.refused,
                        "fleet store: values not kept there because their group is full \
                         (--shared-state-max-values); this node still knows them"
                    );
                }
                Ok(_) => {}
                Err(why) => {
                    // Nothing is lost: what was not pushed waits for the next round.
                    self.wait_seen(batch);
                    self.wait_seen(rest);
                    return Err(why);
                }
            }
            batch = rest;
        }
        Ok(())
    }

    async fn follow(&mut self) -> Result<(), String> {
        let metrics = &crate::metrics::global().fleet;
        let Some(store) = self.store.as_mut() else {
            return Err("not connected".into());
        };
        self.rounds += 1;
        if self.rounds.is_multiple_of(CHECK_GAP_EVERY)
            && let Some(tail) = store.log_tail().await?
            && stream_id(&tail) > stream_id(&self.cursor)
            && self.cursor != "0-0"
        {
            tracing::warn!(
                "fleet: the store's log was trimmed past this node's place; loading the \
                 baseline again"
            );
            return self.reload().await;
        }
        let node = self.options.node.clone();
        loop {
            let followed = store.follow(&node, &self.cursor, FOLLOW_BATCH).await;
            metrics.round_trip("follow", followed.is_ok());
            let (remotes, cursor, malformed) = followed?;
            metrics.malformed(malformed);
            let more = cursor != self.cursor && remotes.len() + (malformed as usize) > 0;
            self.cursor = cursor;
            if !remotes.is_empty() {
                tracing::debug!(changes = remotes.len(), "fleet: changes from other nodes");
                let _ = self.updates.send(Update::Remote(remotes));
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// After an outage: connect if need be, push what this node learned alone, and load the
    /// baseline again (what other nodes learned meanwhile, whatever the log still holds).
    async fn reconcile(&mut self) {
        let timeout = self.options.store.timeout;
        if self.store.is_none() {
            match tokio::time::timeout(timeout, SharedStore::connect(&self.options.store)).await {
                Ok(Ok(store)) => self.store = Some(store),
                Ok(Err(why)) => return self.still_down(why),
                Err(_) => return self.still_down(format!("no answer within {timeout:?}")),
            }
        }
        let Some(store) = self.store.as_mut() else {
            return;
        };
        if let Err(why) = tokio::time::timeout(timeout, store.ping())
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
        {
            return self.still_down(why);
        }
        if let Err(why) = self.push().await {
            return self.still_down(why);
        }
        if let Err(why) = self.reload().await {
            return self.still_down(why);
        }
        let metrics = &crate::metrics::global().fleet;
        metrics.set_up(true);
        metrics.reconciled();
        if let Some((since, _)) = self.down.take() {
            tracing::info!(
                "fleet store reachable again after {:?}: what this node learned alone was \
                 pushed and the fleet's baseline loaded again",
                since.elapsed()
            );
        }
    }

    fn still_down(&mut self, why: String) {
        if self.down.is_none() {
            self.lost(why);
        }
    }

    /// Loads every group again and hands it over (merged, so nothing local is lost).
    async fn reload(&mut self) -> Result<(), String> {
        let metrics = &crate::metrics::global().fleet;
        let Some(store) = self.store.as_mut() else {
            return Err("not connected".into());
        };
        let head = store.log_head().await?;
        let mut baseline = Vec::new();
        let malformed = store.load(None, |remote| baseline.push(remote)).await;
        metrics.round_trip("load", malformed.is_ok());
        metrics.malformed(malformed?);
        self.cursor = head;
        if !baseline.is_empty() {
            let _ = self.updates.send(Update::Remote(baseline));
        }
        Ok(())
    }
}

/// A stream id's (milliseconds, sequence), for comparing places in the log.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}
