//! The kernel maps the loader writes and reads: the approvers (basenames, file identities) and
//! the prefilter derived from them, the repeat window, and the counters of lost and dropped
//! events.

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Context as _, Result, ensure};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap};
use picket_probes_common::{BasenameKey, Filter, MAX_BASENAME, RepeatConfig, names};

use crate::{CgroupLoss, FileId, Probes, filter};

impl Probes {
    /// The approved basenames, as last set.
    pub fn basenames(&self) -> &BTreeSet<String> {
        &self.basenames
    }

    /// Replaces the set of basenames whose opens are reported; an empty set reports nothing.
    /// Each name is at most 63 bytes, without `/` or NUL. Opens already in the ring buffer are
    /// still delivered.
    pub fn set_basenames(&mut self, names: &BTreeSet<String>) -> Result<()> {
        for name in names {
            ensure!(
                !name.is_empty()
                    && name.len() <= MAX_BASENAME
                    && !name.contains('/')
                    && !name.contains('\0'),
                "invalid basename {name:?}: must be 1 to {MAX_BASENAME} bytes without '/' or NUL"
            );
        }
        // Widen the filter, change the map, then narrow the filter: at no point is a name that is
        // in both the old and the new set missed (see filter::widen for torn reads).
        let mut wide = self.filter;
        filter::widen(&mut wide, names);
        self.set_filter(&wide)?;
        let mut approvers: BpfHashMap<&mut MapData, BasenameKey, u8> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(names::APPROVERS)
                .context("no APPROVERS map")?,
        )?;
        for name in names.difference(&self.basenames) {
            approvers.insert(&key(name), &1, 0)?;
        }
        for name in self.basenames.difference(names) {
            approvers.remove(&key(name))?;
        }
        let mut narrow = wide;
        filter::narrow(&mut narrow, names);
        self.set_filter(&narrow)?;
        self.filter = narrow;
        self.basenames = names.clone();
        self.forget_repeats()
    }

    /// Replaces the set of files whose opens are reported whatever name, mount or root they are
    /// reached through (hard links, bind mounts, chroots): opens of these pass the kernel
    /// prefilter beside those of approved basenames, and are flagged
    /// [`OpenEvent::by_identity`](crate::OpenEvent::by_identity) when their name is not approved. At most
    /// [`Probes::MAX_IDENTITIES`]; a file whose device the kernel could not encode is refused.
    pub fn set_identities(&mut self, files: &BTreeSet<FileId>) -> Result<()> {
        self.identities.set(&mut self.ebpf, files)
    }

    /// The files approved by identity, as last set.
    pub fn identities(&self) -> &BTreeSet<FileId> {
        self.identities.files()
    }

    /// Most files [`Probes::set_identities`] takes.
    pub const MAX_IDENTITIES: usize = picket_probes_common::IDENTITY_CAPACITY as usize;

    fn set_filter(&mut self, value: &Filter) -> Result<()> {
        let mut map: Array<&mut MapData, Filter> =
            Array::try_from(self.ebpf.map_mut(names::FILTER).context("no FILTER map")?)?;
        map.set(0, value, 0)?;
        Ok(())
    }

    /// Events the kernel could not queue because the ring buffer was full.
    pub fn lost_events(&self) -> u64 {
        let lost = || -> Result<u64> {
            let map: PerCpuArray<&MapData, u64> =
                PerCpuArray::try_from(self.ebpf.map(names::LOST).context("no LOST map")?)?;
            Ok(map.get(&0, 0)?.iter().sum())
        };
        lost().unwrap_or_else(|err| {
            tracing::warn!("reading the lost-events counter: {err:#}");
            0
        })
    }

    /// Approved opens the kernel dropped as repeats: the same executable in the same cgroup
    /// (same root, user, group) opening the same file the same way less than
    /// [`REPEAT_WINDOW_NS`](picket_probes_common::REPEAT_WINDOW_NS) after an open that was sent.
    pub fn repeats_dropped(&self) -> u64 {
        let dropped = || -> Result<u64> {
            let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
                self.ebpf
                    .map(names::REPEATS_DROPPED)
                    .context("no REPEATS_DROPPED map")?,
            )?;
            Ok(map.get(&0, 0)?.iter().sum())
        };
        dropped().unwrap_or_else(|err| {
            tracing::warn!("reading the repeats counter: {err:#}");
            0
        })
    }

    /// The repeat window, or `None` when every open is sent.
    pub fn repeat_window(&self) -> Option<Duration> {
        (self.repeats.window_ns != 0).then(|| Duration::from_nanos(self.repeats.window_ns))
    }

    /// Sets the repeat window (`None`: send every open, repeats included). [`Probes::load`]
    /// sets [`REPEAT_WINDOW_NS`](picket_probes_common::REPEAT_WINDOW_NS), or `None` with `PICKET_PROBES_DROP_REPEATS=off`.
    pub fn set_repeat_window(&mut self, window: Option<Duration>) -> Result<()> {
        let window_ns = window.map_or(0, |w| u64::try_from(w.as_nanos()).unwrap_or(u64::MAX));
        self.write_repeats(RepeatConfig {
            window_ns,
            epoch: self.repeats.epoch + 1,
        })
    }

    /// Makes every open remembered so far stale, so the next open of each is sent. Call it when
    /// the rules change: an open sent before may not have reached the rules running now.
    /// [`Probes::set_basenames`] does it too.
    pub fn forget_repeats(&mut self) -> Result<()> {
        self.write_repeats(RepeatConfig {
            epoch: self.repeats.epoch + 1,
            ..self.repeats
        })
    }

    fn write_repeats(&mut self, config: RepeatConfig) -> Result<()> {
        let mut map: Array<&mut MapData, RepeatConfig> = Array::try_from(
            self.ebpf
                .map_mut(names::REPEATS_CONFIG)
                .context("no REPEATS_CONFIG map")?,
        )?;
        map.set(0, &config, 0)?;
        self.repeats = config;
        Ok(())
    }

    /// Events lost (ring buffer full) by the cgroup of the task that was current, most first,
    /// with the cgroup's path and container id where they can be found. Best effort: the kernel
    /// keeps the [`picket_probes_common::LOST_CGROUP_ENTRIES`] most recent cgroups; the total is
    /// [`Probes::lost_events`].
    pub fn lost_by_cgroup(&mut self) -> Vec<CgroupLoss> {
        let read = || -> Result<Vec<CgroupLoss>> {
            let map: PerCpuHashMap<&MapData, u64, u64> = PerCpuHashMap::try_from(
                self.ebpf
                    .map(names::LOST_BY_CGROUP)
                    .context("no LOST_BY_CGROUP map")?,
            )?;
            let mut losses = Vec::new();
            for item in map.iter() {
                let (cgroup_id, per_cpu) = item?;
                losses.push(CgroupLoss {
                    cgroup_id,
                    events: per_cpu.iter().sum(),
                    path: None,
                    container_id: None,
                });
            }
            Ok(losses)
        };
        let mut losses = read().unwrap_or_else(|err| {
            tracing::warn!("reading the lost-events counters by cgroup: {err:#}");
            Vec::new()
        });
        losses.sort_by(|a, b| b.events.cmp(&a.events).then(a.cgroup_id.cmp(&b.cgroup_id)));
        self.cgroup_paths.describe(&mut losses);
        losses
    }
}

/// The APPROVERS key of a basename: its bytes, NUL-padded.
fn key(name: &str) -> BasenameKey {
    let mut key = BasenameKey {
        name: [0; picket_probes_common::BASENAME_KEY_LEN],
    };
    key.name[..name.len()].copy_from_slice(name.as_bytes());
    key
}
