//! Container metadata by container id: the image, the container's name and its Kubernetes pod,
//! read from the files the container runtimes keep per container (containerd's and CRI-O's OCI
//! `config.json` annotations, Docker's `config.v2.json` labels), under the host root the agent
//! was given (`/` on the node itself, where the host's paths are mounted in a container).

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

/// The Kubernetes pod a container belongs to. Each field is `None` when the runtime did not
/// record it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pod {
    /// The pod's name.
    pub name: Option<String>,
    /// Its namespace.
    pub namespace: Option<String>,
    /// Its uid.
    pub uid: Option<String>,
}

/// What a container runtime recorded about one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerMeta {
    /// Image reference.
    pub image: Option<String>,
    /// The container's name in its pod (Kubernetes), or in Docker.
    pub name: Option<String>,
    /// The pod, for a container started by a Kubernetes runtime.
    pub pod: Option<Pod>,
}

/// containerd's per-container bundles (the second: k3s's and RKE2's embedded containerd).
const CONTAINERD_DIRS: [&str; 2] = [
    "/run/containerd/io.containerd.runtime.v2.task",
    "/run/k3s/containerd/io.containerd.runtime.v2.task",
];
/// CRI-O's (and podman's) per-container directories.
const CRIO_DIRS: [&str; 2] = [
    "/run/containers/storage/overlay-containers",
    "/var/lib/containers/storage/overlay-containers",
];
/// Docker's.
const DOCKER_DIR: &str = "/var/lib/docker/containers";

/// Every directory, under the host root, where a runtime's per-container metadata is read.
pub const RUNTIME_METADATA_DIRS: [&str; 5] = [
    CONTAINERD_DIRS[0],
    CONTAINERD_DIRS[1],
    CRIO_DIRS[0],
    CRIO_DIRS[1],
    DOCKER_DIR,
];

/// The annotation (or label) keys one runtime uses.
struct Keys {
    image: &'static [&'static str],
    name: &'static str,
    pod_name: &'static str,
    pod_namespace: &'static str,
    pod_uid: &'static str,
}

/// containerd's CRI plugin.
const CONTAINERD: Keys = Keys {
    image: &["io.kubernetes.cri.image-name"],
    name: "io.kubernetes.cri.container-name",
    pod_name: "io.kubernetes.cri.sandbox-name",
    pod_namespace: "io.kubernetes.cri.sandbox-namespace",
    pod_uid: "io.kubernetes.cri.sandbox-uid",
};

/// CRI-O, and Docker under cri-dockerd (as labels).
const CRIO: Keys = Keys {
    image: &["io.kubernetes.cri-o.ImageName", "io.kubernetes.cri-o.Image"],
    name: "io.kubernetes.container.name",
    pod_name: "io.kubernetes.pod.name",
    pod_namespace: "io.kubernetes.pod.namespace",
    pod_uid: "io.kubernetes.pod.uid",
};

/// How long an id without metadata waits before it is looked for again: a container's files can
/// appear shortly after its first process runs.
const RETRY_MISSING: Duration = Duration::from_secs(10);
/// Most containers remembered; past it the memory is cleared and refilled from disk as needed
/// (containers come and go over a node's life, and a lookup is a few small file reads).
const MAX_REMEMBERED: usize = 8192;
/// Largest metadata file read (a runtime's real ones are a few tens of KiB).
const MAX_FILE_BYTES: u64 = 4 << 20;

/// Container metadata by container id, remembered once read.
#[derive(Debug)]
pub(crate) struct ContainerMetadata {
    /// Prefix for every metadata path: `/`, or where the host's paths are mounted.
    root: PathBuf,
    found: HashMap<String, Arc<ContainerMeta>>,
    /// Ids without metadata yet, and when they were last looked for.
    missing: HashMap<String, Instant>,
}

impl ContainerMetadata {
    pub(crate) fn new(root: impl Into<PathBuf>) -> ContainerMetadata {
        ContainerMetadata {
            root: root.into(),
            found: HashMap::new(),
            missing: HashMap::new(),
        }
    }

    /// What the runtimes recorded about container `id`, `None` while no runtime has metadata
    /// for it.
    pub(crate) fn get(&mut self, id: &str) -> Option<Arc<ContainerMeta>> {
        if let Some(meta) = self.found.get(id) {
            return Some(Arc::clone(meta));
        }
        if self
            .missing
            .get(id)
            .is_some_and(|at| at.elapsed() < RETRY_MISSING)
        {
            return None;
        }
        if self.found.len() >= MAX_REMEMBERED {
            self.found.clear();
        }
        if self.missing.len() >= MAX_REMEMBERED {
            self.missing.clear();
        }
        match self.lookup(id) {
            Some(meta) => {
                let meta = Arc::new(meta);
                self.missing.remove(id);
                self.found.insert(id.to_owned(), Arc::clone(&meta));
                Some(meta)
            }
            None => {
                self.missing.insert(id.to_owned(), Instant::now());
                None
            }
        }
    }

    fn lookup(&self, id: &str) -> Option<ContainerMeta> {
        let at = |p: &str| self.root.join(p.trim_start_matches('/'));
        // containerd: one bundle per container, under the namespace's directory (k8s.io, moby, ...).
        for base in CONTAINERD_DIRS {
            let Ok(namespaces) = fs::read_dir(at(base)) else {
                continue;
            };
            for ns in namespaces.flatten() {
                if let Some(config) = read_json(&ns.path().join(id).join("config.json")) {
                    return Some(from_annotations(config.get("annotations"), &CONTAINERD));
                }
            }
        }
        // CRI-O (and podman, whose containers carry none of the Kubernetes keys).
        for base in CRIO_DIRS {
            let path = at(base).join(id).join("userdata").join("config.json");
            if let Some(config) = read_json(&path) {
                return Some(from_annotations(config.get("annotations"), &CRIO));
            }
        }
        // Docker: Kubernetes' keys are labels there (cri-dockerd); else the Docker name.
        let path = at(DOCKER_DIR).join(id).join("config.v2.json");
        if let Some(config) = read_json(&path) {
            let mut meta = from_annotations(config.pointer("/Config/Labels"), &CRIO);
            meta.image = text(config.pointer("/Config/Image"));
            if meta.name.is_none() {
                meta.name = text(config.get("Name")).map(|n| n.trim_start_matches('/').to_owned());
            }
            return Some(meta);
        }
        None
    }
}

fn from_annotations(map: Option<&serde_json::Value>, keys: &Keys) -> ContainerMeta {
    let get = |key: &str| text(map.and_then(|m| m.get(key)));
    let pod = Pod {
        name: get(keys.pod_name),
        namespace: get(keys.pod_namespace),
        uid: get(keys.pod_uid),
    };
    let has_pod = pod.name.is_some() || pod.namespace.is_some() || pod.uid.is_some();
    ContainerMeta {
        image: keys.image.iter().find_map(|key| get(key)),
        name: get(keys.name),
        pod: has_pod.then_some(pod),
    }
}

fn text(value: Option<&serde_json::Value>) -> Option<String> {
    value?.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    use std::io::Read;
    let file = fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES).read_to_end(&mut bytes).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn metadata_from_each_runtime() {
        let dir = std::env::temp_dir().join(format!("picket-containers-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        write(
            &dir.join(format!(
                "run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"
            )),
            r#"{"annotations":{"io.kubernetes.cri.image-name":"registry.k8s.io/pause:3.10",
                "io.kubernetes.cri.container-name":"api",
                "io.kubernetes.cri.sandbox-name":"api-7d9f8-x2x4q",
                "io.kubernetes.cri.sandbox-namespace":"payments",
                "io.kubernetes.cri.sandbox-uid":"0f1e2d3c"}}"#,
        );
        let crio_id = ID.replace('0', "1");
        write(
            &dir.join(format!(
                "run/containers/storage/overlay-containers/{crio_id}/userdata/config.json"
            )),
            r#"{"annotations":{"io.kubernetes.cri-o.ImageName":"quay.io/x/y:1",
                "io.kubernetes.container.name":"worker","io.kubernetes.pod.name":"w-1",
                "io.kubernetes.pod.namespace":"jobs","io.kubernetes.pod.uid":"u-2"}}"#,
        );
        let docker_id = ID.replace('0', "2");
        write(
            &dir.join(format!(
                "var/lib/docker/containers/{docker_id}/config.v2.json"
            )),
            r#"{"Name":"/web","Config":{"Image":"alpine:3","Labels":{}}}"#,
        );
        let podman_id = ID.replace('0', "4");
        write(
            &dir.join(format!(
                "var/lib/containers/storage/overlay-containers/{podman_id}/userdata/config.json"
            )),
            r#"{"annotations":{"io.kubernetes.cri-o.ImageName":""}}"#,
        );

        let mut meta = ContainerMetadata::new(&dir);
        let containerd = meta.get(ID).unwrap();
        assert_eq!(
            *containerd,
            ContainerMeta {
                image: Some("registry.k8s.io/pause:3.10".into()),
                name: Some("api".into()),
                pod: Some(Pod {
                    name: Some("api-7d9f8-x2x4q".into()),
                    namespace: Some("payments".into()),
                    uid: Some("0f1e2d3c".into()),
                }),
            }
        );
        let crio = meta.get(&crio_id).unwrap();
        assert_eq!(crio.image.as_deref(), Some("quay.io/x/y:1"));
        assert_eq!(crio.name.as_deref(), Some("worker"));
        let pod = crio.pod.as_ref().unwrap();
        assert_eq!(
            (
                pod.name.as_deref(),
                pod.namespace.as_deref(),
                pod.uid.as_deref()
            ),
            (Some("w-1"), Some("jobs"), Some("u-2"))
        );
        let docker = meta.get(&docker_id).unwrap();
        assert_eq!(
            *docker,
            ContainerMeta {
                image: Some("alpine:3".into()),
                name: Some("web".into()),
                pod: None,
            }
        );
        // Metadata without anything known: found, but every field unknown.
        assert_eq!(*meta.get(&podman_id).unwrap(), ContainerMeta::default());
        assert_eq!(meta.get(&ID.replace('0', "3")), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
