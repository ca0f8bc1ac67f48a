//! Missing container metadata is loud: an agent that cannot read the container runtime's
//! per-container files (a runtime that keeps them elsewhere, a directory not mounted into the
//! agent's container) still reports opens, but with only `container.id`, so the rules group by
//! id instead of image and signals name no pod. The agent says so at start, when none of the
//! runtimes' directories holds anything, and per container, once, when an event's container
//! has no pod; `picket_events_without_pod_total` counts those events.

use picket_probes::RUNTIME_METADATA_DIRS;
use std::collections::HashSet;
use std::path::Path;

/// Containers named in a warning; past this many, they are only counted.
const WARNED_CONTAINERS: usize = 1024;

/// Warns when no runtime metadata directory under `host_root` has an entry (absent or empty),
/// naming each directory looked at. Returns whether it warned.
pub fn warn_if_missing(host_root: &Path) -> bool {
    let mut looked = Vec::new();
    for dir in RUNTIME_METADATA_DIRS {
        let path = host_root.join(dir.trim_start_matches('/'));
        let state = match std::fs::read_dir(&path).map(|mut entries| entries.next().is_some()) {
            Ok(true) => return false,
            Ok(false) => "empty",
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => "absent",
            Err(_) => "unreadable",
        };
        looked.push(format!("{} ({state})", path.display()));
    }
    tracing::warn!(
        looked = %looked.join(", "),
        "no container runtime metadata found: events from containers will carry only \
         container.id (no image, container name or pod) until it appears; in Kubernetes, \
         mount the runtime's directory under --host-root (the chart's containerRuntime: \
         containerd, crio or k3s)"
    );
    true
}

/// Events from containers without a pod, warned about once per container.
#[derive(Default)]
pub struct Podless {
    warned: HashSet<String>,
}

impl Podless {
    /// Counts an event from container `id` whose metadata named no pod, and warns the first
    /// time that container is seen so.
    pub fn event(&mut self, id: &str, image: Option<&str>) {
        crate::metrics::global().event_without_pod();
        if self.warned.len() < WARNED_CONTAINERS && self.warned.insert(id.to_owned()) {
            tracing::warn!(
                container = id,
                image = image.unwrap_or("unknown"),
                "an event from a container with no pod in its runtime metadata (metadata not \
                 found, or not a Kubernetes container); counted in picket_events_without_pod_total"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_only_when_every_directory_is_empty_or_absent() {
        let root = tempfile::tempdir().unwrap();
        assert!(warn_if_missing(root.path()));
        let crio = root
            .path()
            .join("run/containers/storage/overlay-containers");
        std::fs::create_dir_all(&crio).unwrap();
        assert!(
            warn_if_missing(root.path()),
            "an empty directory is missing metadata"
        );
        std::fs::create_dir(crio.join("5ca1ab1e")).unwrap();
        assert!(!warn_if_missing(root.path()));
    }

    #[test]
    fn counts_every_podless_event_and_warns_once_per_container() {
        let before = crate::metrics::global().encode();
        let count = |text: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix("picket_events_without_pod_total "))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let mut podless = Podless::default();
        podless.event("abc", None);
        podless.event("abc", Some("img"));
        podless.event("def", None);
        assert_eq!(podless.warned.len(), 2);
        assert!(count(&crate::metrics::global().encode()) >= count(&before) + 3);
    }
}
