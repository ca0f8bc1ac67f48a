//! What the live agent reports periodically about the kernel side: events lost in the ring
//! buffer and whose they were (by cgroup, container where known), and opens the kernel dropped as
//! repeats (issue 8: a flood of one reader must not hide others, and where events were lost
//! anyway the operator must know whose).

use picket_probes::{CgroupLoss, Probes};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// How often the count of dropped repeats is logged (when it changed).
const REPEATS_EVERY: Duration = Duration::from_secs(60);
/// Cgroups named one by one in a lost-events warning; the rest are summed.
const CGROUPS_NAMED: usize = 8;

/// Counters as last reported.
pub struct KernelReport {
    lost: u64,
    lost_by_cgroup: HashMap<u64, u64>,
    repeats: u64,
    repeats_reported_at: Instant,
}

impl Default for KernelReport {
    fn default() -> Self {
        KernelReport {
            lost: 0,
            lost_by_cgroup: HashMap::new(),
            repeats: 0,
            repeats_reported_at: Instant::now(),
        }
    }
}

impl KernelReport {
    /// Called on the agent's periodic tick: warns at once about new lost events, and logs the
    /// repeats dropped every [`REPEATS_EVERY`].
    pub fn tick(&mut self, probes: &mut Probes) {
        self.report_lost(probes);
        if self.repeats_reported_at.elapsed() >= REPEATS_EVERY {
            self.report_repeats(probes, false);
        }
    }

    /// Called when the agent stops: the last lost events, and the totals.
    pub fn at_stop(&mut self, probes: &mut Probes) {
        self.report_lost(probes);
        self.report_repeats(probes, true);
    }

    fn report_lost(&mut self, probes: &mut Probes) {
        let lost = probes.lost_events();
        if lost <= self.lost {
            return;
        }
        let losses = probes.lost_by_cgroup();
        let by_cgroup = describe_losses(&losses, &self.lost_by_cgroup, lost - self.lost);
        tracing::warn!(
            lost = lost - self.lost,
            total = lost,
            by_cgroup = %by_cgroup,
            "events lost in the kernel's ring buffer (reader too slow)"
        );
        self.lost = lost;
        self.lost_by_cgroup = losses.iter().map(|l| (l.cgroup_id, l.events)).collect();
    }

    fn report_repeats(&mut self, probes: &Probes, stopping: bool) {
        self.repeats_reported_at = Instant::now();
        let Some(window) = probes.repeat_window() else {
            if stopping {
                tracing::info!("repeated opens were not dropped (PICKET_PROBES_DROP_REPEATS=off)");
            }
            return;
        };
        let dropped = probes.repeats_dropped();
        if dropped == self.repeats && !stopping {
            return;
        }
        tracing::info!(
            dropped = dropped - self.repeats,
            total = dropped,
            window = ?window,
            "repeated opens dropped in the kernel (same process, executable, cgroup and file within the window)"
        );
        self.repeats = dropped;
    }
}

/// `new_lost` events by cgroup since the counts in `before`, most first: the cgroup's path and
/// container where known (`/kubepods.slice/... (container 3f9c...): 120`), else its id; then
/// what the kernel could not attribute (its per-cgroup map keeps the most recent cgroups only).
pub fn describe_losses(losses: &[CgroupLoss], before: &HashMap<u64, u64>, new_lost: u64) -> String {
    let mut deltas: Vec<(&CgroupLoss, u64)> = losses
        .iter()
        .filter_map(|loss| {
            // A count below the last one: evicted and counted again from zero since.
            let delta = match before.get(&loss.cgroup_id) {
                Some(&was) if was <= loss.events => loss.events - was,
                _ => loss.events,
            };
            (delta > 0).then_some((loss, delta))
        })
        .collect();
    deltas.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cgroup_id.cmp(&b.0.cgroup_id)));
    let mut text = String::new();
    for (loss, delta) in deltas.iter().take(CGROUPS_NAMED) {
        match (&loss.path, &loss.container_id) {
            (Some(path), Some(id)) => write!(text, "{path} (container {id}): {delta}; "),
            (Some(path), None) => write!(text, "{path}: {delta}; "),
            _ => write!(text, "cgroup id {}: {delta}; ", loss.cgroup_id),
        }
        .expect("writing to a String cannot fail");
    }
    if deltas.len() > CGROUPS_NAMED {
        let rest: u64 = deltas[CGROUPS_NAMED..].iter().map(|(_, d)| d).sum();
        let more = deltas.len() - CGROUPS_NAMED;
        write!(text, "{more} more cgroups: {rest}; ").expect("writing to a String");
    }
    let attributed: u64 = deltas.iter().map(|(_, d)| d).sum();
    if new_lost > attributed {
        write!(text, "not attributed: {}; ", new_lost - attributed).expect("writing to a String");
    }
    text.truncate(text.trim_end_matches("; ").len());
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss(id: u64, events: u64, path: Option<&str>, container: Option<&str>) -> CgroupLoss {
        CgroupLoss {
            cgroup_id: id,
            events,
            path: path.map(str::to_owned),
            container_id: container.map(str::to_owned),
        }
    }

    #[test]
    fn losses_name_the_cgroups_and_containers_they_came_from() {
        let id = "3f9c".repeat(16);
        let path = format!("/kubepods.slice/cri-containerd-{id}.scope");
        let losses = [
            loss(7, 40, Some("/user.slice/session-1.scope"), None),
            loss(9, 500, Some(&path), Some(&id)),
            loss(11, 3, None, None),
        ];
        let before = HashMap::from([(7, 10), (9, 0)]);
        assert_eq!(
            describe_losses(&losses, &before, 540),
            format!(
                "{path} (container {id}): 500; /user.slice/session-1.scope: 30; cgroup id 11: 3; \
                 not attributed: 7"
            )
        );
    }

    #[test]
    fn an_evicted_cgroup_counts_from_zero_and_unchanged_ones_are_left_out() {
        let losses = [loss(7, 4, Some("/a"), None), loss(8, 6, Some("/b"), None)];
        let before = HashMap::from([(7, 10), (8, 6)]);
        assert_eq!(describe_losses(&losses, &before, 4), "/a: 4");
    }

    #[test]
    fn many_cgroups_are_summed_past_the_first_ones() {
        let losses: Vec<CgroupLoss> = (1..=10).map(|i| loss(i, i, None, None)).collect();
        let text = describe_losses(&losses, &HashMap::new(), 55);
        assert!(
            text.starts_with("cgroup id 10: 10; cgroup id 9: 9;"),
            "{text}"
        );
        assert!(text.ends_with("2 more cgroups: 3"), "{text}");
    }
}
