//! One output's queue and delivery: the event thread hands signal lines to a bounded channel;
//! a thread of the output's own (with its own small tokio runtime) takes them into its backlog
//! (the disk spool of a remote output under `--state`, else memory), delivers them in order,
//! retries with backoff, and meters all of it per output. Nothing here ever blocks the event
//! thread (with [`WhenFull::Drop`]), and one output's trouble never touches another's.

use super::spool::{Spool, Spooled};
use super::{Destination, Failure};
use crate::metrics::OutputMetrics;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

/// What the event thread does when an output's queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Drop the new signal, counted and reported: the live agent must keep detecting whatever
    /// its outputs do.
    Drop,
    /// Wait for room: a replay is a batch job whose outputs set the pace, and loses nothing.
    Wait,
}

/// First wait after a failed delivery; doubled at each failure up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two tries.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often a failing output is reported again, and the gauges refreshed.
const REPORT_EVERY: Duration = Duration::from_secs(60);
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where signals wait for delivery.
pub enum Backlog {
    /// In memory, at most `bound` signals; past it the oldest are dropped (the live agent) or
    /// no more are taken (a replay, which then waits; a batch taken may go past it).
    Memory {
        /// The signals, with when they were queued.
        items: VecDeque<Spooled>,
        /// Most signals held.
        bound: usize,
        /// Whether the oldest are dropped past the bound (else no more are taken meanwhile).
        drops: bool,
    },
    /// On disk (see [`Spool`]).
    Disk(Box<Spool>),
}

impl Backlog {
    fn len(&self) -> u64 {
        match self {
            Backlog::Memory { items, .. } => items.len() as u64,
            Backlog::Disk(spool) => spool.pending(),
        }
    }

    fn has_room(&self, when_full: WhenFull) -> bool {
        match self {
            Backlog::Memory { items, bound, .. } => {
                when_full == WhenFull::Drop || items.len() < *bound
            }
            Backlog::Disk(_) => true,
        }
    }

    /// Takes `lines` in; returns how many older signals were dropped to make room.
    fn push(&mut self, lines: Vec<Bytes>) -> std::io::Result<u64> {
        let queued_ms = now_ms();
        match self {
            Backlog::Memory {
                items,
                bound,
                drops,
            } => {
                let mut dropped = 0;
                for line in lines {
                    if *drops && items.len() >= *bound {
                        items.pop_front();
                        dropped += 1;
                    }
                    items.push_back(Spooled { queued_ms, line });
                }
                Ok(dropped)
            }
            Backlog::Disk(spool) => spool.append(&lines, queued_ms),
        }
    }

    fn peek(&mut self, max: usize) -> std::io::Result<(Vec<Bytes>, u64)> {
        match self {
            Backlog::Memory { items, .. } => {
                Ok((items.iter().take(max).map(|s| s.line.clone()).collect(), 0))
            }
            Backlog::Disk(spool) => Ok((
                spool.peek(max)?.into_iter().map(|s| s.line).collect(),
                spool.generation(),
            )),
        }
    }

    fn ack(&mut self, count: usize, generation: u64) -> std::io::Result<()> {
        match self {
            Backlog::Memory { items, .. } => {
                items.drain(..count.min(items.len()));
                Ok(())
            }
            Backlog::Disk(spool) => spool.ack(count, generation),
        }
    }

    fn oldest_ms(&mut self) -> Option<u64> {
        match self {
            Backlog::Memory { items, .. } => items.front().map(|s| s.queued_ms),
            Backlog::Disk(spool) => spool.oldest_ms(),
        }
    }
}

/// Counts kept for the summary at the end (the metrics count the same, process-wide).
#[derive(Default)]
struct Stats {
    /// Signals handed over after the worker had ended.
    orphaned: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    /// Signals in the backlog when the worker last looked.
    waiting: AtomicU64,
    /// The failure that ended the output (a replay's).
    fatal: Mutex<Option<String>>,
    /// When drops in the backlog were last logged (at most once a minute while they go on).
    drops_logged: Mutex<Option<Instant>>,
}

/// How an output ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// The output's name.
    pub name: String,
    /// Signals delivered.
    pub delivered: u64,
    /// Signals dropped (queue or spool full, refused by the receiver).
    pub dropped: u64,
    /// Signals still waiting at the end.
    pub undelivered: u64,
    /// Whether those wait in a disk spool, to be delivered by the next run.
    pub spooled: bool,
}

/// The event thread's end of one output.
pub struct OutputQueue {
    name: String,
    tx: Option<mpsc::Sender<Bytes>>,
    stop: watch::Sender<bool>,
    done: std::sync::mpsc::Receiver<()>,
    stats: Arc<Stats>,
    metrics: OutputMetrics,
    when_full: WhenFull,
    spooled: bool,
    dropped_reported: u64,
    last_drop_report: Option<Instant>,
}

impl OutputQueue {
    /// Starts the thread delivering to `destination` from `backlog`.
    pub fn start(
        name: String,
        destination: Box<dyn Destination>,
        backlog: Backlog,
        queue: usize,
        when_full: WhenFull,
    ) -> std::io::Result<OutputQueue> {
        let metrics = crate::metrics::global().output(&name);
        let stats = Arc::new(Stats::default());
        let spooled = matches!(backlog, Backlog::Disk(_));
        let (tx, rx) = mpsc::channel(queue.clamp(1, 4096));
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = std::sync::mpsc::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let worker = Worker {
            name: name.clone(),
            destination,
            backlog,
            stats: Arc::clone(&stats),
            metrics: metrics.clone(),
            when_full,
            failing_since: None,
            last_report: None,
        };
        std::thread::Builder::new()
            .name("picket-output".into())
            .spawn(move || {
                runtime.block_on(worker.run(rx, stop_rx));
                let _ = done_tx.send(());
            })?;
        Ok(OutputQueue {
            name,
            tx: Some(tx),
            stop,
            done,
            stats,
            metrics,
            when_full,
            spooled,
            dropped_reported: 0,
            last_drop_report: None,
        })
    }

    /// The output's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hands a signal line over (dropping it, counted, when the queue is full and the output
    /// drops; waiting for room when it waits).
    pub fn send(&mut self, line: Bytes) {
        let Some(tx) = &self.tx else { return };
        let handed = match self.when_full {
            WhenFull::Drop => match tx.try_send(line) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    self.metrics.dropped_queue_full.inc();
                    if self.last_drop_report.is_none() {
                        self.report();
                    }
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
            WhenFull::Wait => tx.blocking_send(line).is_ok(),
        };
        self.metrics.queued.inc();
        if !handed {
            // The worker is gone (its output failed for good): queued, never delivered.
            self.stats.orphaned.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The failure that ended the output, if one did (only outputs that give up: a replay's
    /// stdout or file).
    pub fn error(&self) -> Option<String> {
        self.stats
            .fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Logs signals dropped at the queue since the last report (at most once a minute).
    pub fn report(&mut self) {
        let dropped = self.metrics.dropped_queue_full.get();
        if dropped > self.dropped_reported
            && self
                .last_drop_report
                .is_none_or(|at| at.elapsed() >= REPORT_EVERY)
        {
            tracing::error!(
                output = %self.name,
                dropped = dropped - self.dropped_reported,
                total = dropped,
                "signals dropped: the output does not keep up and its queue is full (see --output-queue)"
            );
            self.dropped_reported = dropped;
            self.last_drop_report = Some(Instant::now());
        }
    }

    /// Closes the queue and waits until everything is delivered: up to `grace` (for as long as
    /// it takes with `None`). Past it the worker is stopped; what it holds stays in its spool.
    pub fn finish(mut self, grace: Option<Duration>) -> Delivery {
        self.last_drop_report = None;
        self.report();
        self.tx.take();
        let finished = match grace {
            Some(grace) => self.done.recv_timeout(grace).is_ok(),
            None => self.done.recv().is_ok(),
        };
        if !finished {
            let _ = self.stop.send(true);
            // A worker stuck in a local write never answers; it is left behind.
            let _ = self.done.recv_timeout(Duration::from_secs(1));
        }
        let stats = &self.stats;
        let delivery = Delivery {
            name: self.name.clone(),
            delivered: stats.delivered.load(Ordering::Relaxed),
            dropped: stats.dropped.load(Ordering::Relaxed),
            undelivered: stats.waiting.load(Ordering::Relaxed)
                + stats.orphaned.load(Ordering::Relaxed),
            spooled: self.spooled,
        };
        if delivery.undelivered > 0 {
            if self.spooled {
                tracing::warn!(
                    output = %self.name,
                    undelivered = delivery.undelivered,
                    "signals not delivered yet stay in the spool for the next start"
                );
            } else if self.error().is_some() {
                tracing::error!(
                    output = %self.name,
                    undelivered = delivery.undelivered,
                    "signals not delivered: the output failed"
                );
            } else {
                tracing::error!(
                    output = %self.name,
                    undelivered = delivery.undelivered,
                    "signals not delivered: the output did not take the waiting signals in time"
                );
            }
        }
        delivery
    }
}

/// The output's thread.
struct Worker {
    name: String,
    destination: Box<dyn Destination>,
    backlog: Backlog,
    stats: Arc<Stats>,
    metrics: OutputMetrics,
    when_full: WhenFull,
    failing_since: Option<Instant>,
    last_report: Option<Instant>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Bytes>, mut stop: watch::Receiver<bool>) {
        let mut open = true;
        let mut backoff = BACKOFF_MIN;
        let mut publish = tokio::time::interval(PUBLISH_EVERY);
        publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *stop.borrow() {
                break;
            }
            if open && self.backlog.has_room(self.when_full) {
                open = self.take_waiting(&mut rx, None);
            }
            if self.backlog.len() == 0 {
                if !open {
                    break;
                }
                tokio::select! {
                    line = rx.recv() => open = self.take_waiting(&mut rx, line),
                    _ = stop.changed() => {}
                    _ = publish.tick() => self.publish(),
                }
                continue;
            }
            let max = self.destination.max_batch().max(1);
            let (batch, generation) = match self.backlog.peek(max) {
                Ok(batch) => batch,
                Err(err) => {
                    self.failed(&format!("reading the spool: {err}"));
                    tokio::time::sleep(BACKOFF_MAX).await;
                    continue;
                }
            };
            let result = {
                let room = self.backlog.has_room(self.when_full);
                let delivery = self.destination.deliver(&batch);
                tokio::pin!(delivery);
                let mut taking = open && room;
                loop {
                    tokio::select! {
                        biased;
                        result = &mut delivery => break Some(result),
                        _ = stop.changed() => break None,
                        line = rx.recv(), if taking => {
                            open = take_into(&mut self.backlog, &self.stats, &self.metrics, &mut rx, line);
                            taking = open && self.backlog.has_room(self.when_full);
                        }
                        _ = publish.tick() => publish_gauges(&mut self.backlog, &self.stats, &self.metrics),
                    }
                }
            };
            let n = batch.len();
            match result {
                None => break,
                Some(Ok(())) => {
                    self.acknowledge(n, generation);
                    self.stats.delivered.fetch_add(n as u64, Ordering::Relaxed);
                    self.metrics.delivered.inc_by(n as u64);
                    backoff = BACKOFF_MIN;
                    if let Some(since) = self.failing_since.take() {
                        tracing::info!(output = %self.name, "signals delivered again after failing for {:?}", since.elapsed());
                        crate::metrics::global().output_failing(&self.name, None);
                    }
                }
                Some(Err(Failure::Rejected(error))) => {
                    tracing::error!(output = %self.name, signals = n, "signals refused by the receiver for good, dropped: {error}");
                    self.acknowledge(n, generation);
                    self.stats.dropped.fetch_add(n as u64, Ordering::Relaxed);
                    self.metrics.dropped_rejected.inc_by(n as u64);
                }
                Some(Err(Failure::Fatal(error))) => {
                    tracing::error!(output = %self.name, "signal output failed, no more signals are written to it: {error}");
                    *self.stats.fatal.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(format!("{}: {error}", self.name));
                    break;
                }
                Some(Err(Failure::Retry(error))) => {
                    self.metrics.retries.inc();
                    self.failed(&error);
                    let wait = tokio::time::sleep(backoff);
                    tokio::pin!(wait);
                    let mut taking = open && self.backlog.has_room(self.when_full);
                    loop {
                        tokio::select! {
                            _ = &mut wait => break,
                            _ = stop.changed() => break,
                            line = rx.recv(), if taking => {
                                open = take_into(&mut self.backlog, &self.stats, &self.metrics, &mut rx, line);
                                taking = open && self.backlog.has_room(self.when_full);
                            }
                            _ = publish.tick() => publish_gauges(&mut self.backlog, &self.stats, &self.metrics),
                        }
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        // What is still in the channel goes to the backlog: a spool keeps it for the next start,
        // and in memory it is counted as not delivered.
        rx.close();
        while self.take_waiting(&mut rx, None) {}
        self.publish();
        if self.failing_since.is_some() {
            crate::metrics::global().output_failing(&self.name, None);
        }
    }

    /// Takes `first` and whatever else waits in the channel; `false` once it is closed.
    fn take_waiting(&mut self, rx: &mut mpsc::Receiver<Bytes>, first: Option<Bytes>) -> bool {
        match first {
            Some(line) => take_into(
                &mut self.backlog,
                &self.stats,
                &self.metrics,
                rx,
                Some(line),
            ),
            None => {
                let mut lines = Vec::new();
                loop {
                    match rx.try_recv() {
                        Ok(line) => lines.push(line),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            push(&mut self.backlog, &self.stats, &self.metrics, lines);
                            return false;
                        }
                    }
                    if lines.len() >= 1024 {
                        break;
                    }
                }
                push(&mut self.backlog, &self.stats, &self.metrics, lines);
                true
            }
        }
    }

    fn acknowledge(&mut self, count: usize, generation: u64) {
        if let Err(err) = self.backlog.ack(count, generation) {
            tracing::error!(output = %self.name, "recording a delivery in the spool (it may be sent again): {err}");
        }
        self.stats
            .waiting
            .store(self.backlog.len(), Ordering::Relaxed);
    }

    fn failed(&mut self, error: &str) {
        let first = self.failing_since.is_none();
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        crate::metrics::global().output_failing(&self.name, Some((since, error.to_string())));
        if first
            || self
                .last_report
                .is_none_or(|at| at.elapsed() >= REPORT_EVERY)
        {
            self.last_report = Some(Instant::now());
            tracing::error!(
                output = %self.name,
                waiting = self.backlog.len(),
                "cannot deliver signals, keeping them and retrying: {error}"
            );
        }
    }

    fn publish(&mut self) {
        publish_gauges(&mut self.backlog, &self.stats, &self.metrics);
    }
}

/// Takes `first` (`None`: the channel closed) and what else is waiting, up to a batch.
fn take_into(
    backlog: &mut Backlog,
    stats: &Stats,
    metrics: &OutputMetrics,
    rx: &mut mpsc::Receiver<Bytes>,
    first: Option<Bytes>,
) -> bool {
    let Some(first) = first else { return false };
    let mut lines = vec![first];
    let mut open = true;
    while lines.len() < 1024 {
        match rx.try_recv() {
            Ok(line) => lines.push(line),
            Err(mpsc::error::TryRecvError::Empty) => break,
            Err(mpsc::error::TryRecvError::Disconnected) => {
                open = false;
                break;
            }
        }
    }
    push(backlog, stats, metrics, lines);
    open
}

fn push(backlog: &mut Backlog, stats: &Stats, metrics: &OutputMetrics, lines: Vec<Bytes>) {
    if lines.is_empty() {
        return;
    }
    let count = lines.len() as u64;
    match backlog.push(lines) {
        Ok(0) => {}
        Ok(dropped) => {
            stats.dropped.fetch_add(dropped, Ordering::Relaxed);
            let (counter, why) = match backlog {
                Backlog::Disk(_) => (
                    &metrics.dropped_spool_full,
                    "its spool is full (see --spool-bytes)",
                ),
                Backlog::Memory { .. } => (
                    &metrics.dropped_queue_full,
                    "its queue is full (see --output-queue)",
                ),
            };
            counter.inc_by(dropped);
            let mut logged = stats.drops_logged.lock().unwrap_or_else(|p| p.into_inner());
            if logged.is_none_or(|at| at.elapsed() >= REPORT_EVERY) {
                *logged = Some(Instant::now());
                tracing::error!(output = %metrics.name, dropped, total = counter.get(), "oldest signals dropped: {why}");
            }
        }
        Err(err) => {
            // The disk refused them (full, failing): they are lost, and said to be.
            stats.dropped.fetch_add(count, Ordering::Relaxed);
            metrics.dropped_spool_full.inc_by(count);
            tracing::error!(output = %metrics.name, dropped = count, "signals dropped: cannot write them to the spool: {err}");
        }
    }
    stats.waiting.store(backlog.len(), Ordering::Relaxed);
}

fn publish_gauges(backlog: &mut Backlog, stats: &Stats, metrics: &OutputMetrics) {
    let waiting = backlog.len();
    stats.waiting.store(waiting, Ordering::Relaxed);
    metrics
        .spooled
        .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    let age = backlog
        .oldest_ms()
        .map_or(0.0, |at| now_ms().saturating_sub(at) as f64 / 1000.0);
    metrics.oldest.set(age);
}
