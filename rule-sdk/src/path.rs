//! Matching file paths the way the kernel reports them.
//!
//! Event paths are resolved by the kernel: links are followed, so a token read through
//! `/var/run/...` may arrive as `/run/...`, and files that the kubelet projects into a pod
//! arrive through its atomic-writer directories (`..data` or `..2026_11_22_10_00_00.123456789`).
//! These helpers match all of those spellings of one file and nothing that merely looks like it.

/// Byte equality a word at a time. On wasm32, `==` on strings compiles to compiler-builtins'
/// byte-by-byte `memcmp`, which measured as the largest single cost of the bundled rules.
fn eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let ((words_a, tail_a), (words_b, tail_b)) = (a.as_chunks::<8>(), b.as_chunks::<8>());
    words_a
        .iter()
        .zip(words_b)
        .all(|(x, y)| u64::from_ne_bytes(*x) == u64::from_ne_bytes(*y))
        && tail_a.iter().zip(tail_b).all(|(x, y)| x == y)
}

/// `text` without `prefix`, compared with [`eq`].
fn strip_prefix<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    eq(head, prefix).then(|| &text[prefix.len()..])
}

/// The last component of `path`.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whether `segment` is a directory the kubelet's atomic writer creates: `..data`, or a
/// timestamped `..YYYY_MM_DD_HH_MM_SS.N` with one or more fraction digits.
pub fn is_atomic_writer_dir(segment: &str) -> bool {
    if eq(segment, "..data") {
        return true;
    }
    let Some(stamp) = strip_prefix(segment, "..") else {
        return false;
    };
    let Some((date_time, fraction)) = stamp.split_once('.') else {
        return false;
    };
    let fields: [usize; 6] = [4, 2, 2, 2, 2, 2];
    let mut parts = date_time.split('_');
    let fields_ok = fields.iter().all(|&width| {
        parts
            .next()
            .is_some_and(|part| part.len() == width && part.bytes().all(|b| b.is_ascii_digit()))
    });
    fields_ok
        && parts.next().is_none()
        && !fraction.is_empty()
        && fraction.bytes().all(|b| b.is_ascii_digit())
}

/// A file the kubelet projects into pods, such as a service-account token.
///
/// It matches the file under `/run` or `/var/run`, directly or through one atomic-writer
/// directory, and, for processes of the host, in the kubelet's own copy of the volume
/// (`/var/lib/kubelet/pods/<pod>/volumes/kubernetes.io~projected/<volume>/...`) when the volume
/// name is known.
#[derive(Clone, Copy, Debug)]
pub struct ProjectedFile {
    dir: &'static str,
    name: &'static str,
    volume: Option<VolumeName>,
}

/// How the kubelet names the projected volume that holds a file.
#[derive(Clone, Copy, Debug)]
pub enum VolumeName {
    /// Exactly this name.
    Exact(&'static str),
    /// This prefix followed by a generated suffix.
    Prefix(&'static str),
}

impl VolumeName {
    fn matches(self, volume: &str) -> bool {
        match self {
            VolumeName::Exact(name) => eq(volume, name),
            VolumeName::Prefix(prefix) => {
                strip_prefix(volume, prefix).is_some_and(|suffix| !suffix.is_empty())
            }
        }
    }
}

/// The Kubernetes service-account token (`kube-api-access-*` projected volume).
pub const KUBERNETES_SERVICE_ACCOUNT_TOKEN: ProjectedFile =
    ProjectedFile::new("secrets/kubernetes.io/serviceaccount", "token")
        .in_volume(VolumeName::Prefix("kube-api-access-"));

/// The AWS EKS (IRSA) web-identity token (`aws-iam-token` projected volume).
pub const EKS_WEB_IDENTITY_TOKEN: ProjectedFile =
    ProjectedFile::new("secrets/eks.amazonaws.com/serviceaccount", "token")
        .in_volume(VolumeName::Exact("aws-iam-token"));

const KUBELET_PODS: &str = "/var/lib/kubelet/pods/";
const PROJECTED_VOLUMES: &str = "volumes/kubernetes.io~projected/";

impl ProjectedFile {
    /// The file `name` in the directory `dir`, relative to `/run` (for example
    /// `secrets/kubernetes.io/serviceaccount` and `token`).
    pub const fn new(dir: &'static str, name: &'static str) -> Self {
        ProjectedFile {
            dir,
            name,
            volume: None,
        }
    }

    /// Also match the kubelet's copy of the volume on the host, for volumes named so.
    pub const fn in_volume(mut self, volume: VolumeName) -> Self {
        self.volume = Some(volume);
        self
    }

    /// The file's basename, for the manifest's subscription.
    pub const fn basename(&self) -> &'static str {
        self.name
    }

    /// Prefixes of every path this file can be reported under, for a manifest's subscription.
    pub fn path_prefixes(&self) -> Vec<String> {
        let mut prefixes = vec![
            format!("/run/{}/", self.dir),
            format!("/var/run/{}/", self.dir),
        ];
        if self.volume.is_some() {
            prefixes.push(KUBELET_PODS.to_string());
        }
        prefixes
    }

    /// Whether the event is about this file: by its path, or by its canonical path, which the
    /// agent adds when it knows the file by its device and inode (so that a hard link, a bind
    /// mount of the file or its directory, or a chrooted reader's shortened path still match).
    pub fn matches_event(&self, event: &crate::Event<'_>) -> bool {
        self.matches(event.path())
            || event
                .canonical_path()
                .is_some_and(|path| self.matches(path))
    }

    /// Whether `path` is this file.
    pub fn matches(&self, path: &str) -> bool {
        if let Some(rest) = strip_prefix(path, "/run/").or_else(|| strip_prefix(path, "/var/run/"))
        {
            return strip_prefix(rest, self.dir)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|rest| self.matches_in_volume(rest));
        }
        match (self.volume, strip_prefix(path, KUBELET_PODS)) {
            (Some(volume), Some(rest)) => {
                let Some((pod, rest)) = rest.split_once('/') else {
                    return false;
                };
                let Some((name, rest)) =
                    strip_prefix(rest, PROJECTED_VOLUMES).and_then(|rest| rest.split_once('/'))
                else {
                    return false;
                };
                !pod.is_empty() && volume.matches(name) && self.matches_in_volume(rest)
            }
            _ => false,
        }
    }

    /// `rest` is the path inside the volume: the name, optionally behind one atomic-writer dir.
    fn matches_in_volume(&self, rest: &str) -> bool {
        match rest.split_once('/') {
            None => eq(rest, self.name),
            Some((dir, name)) => eq(name, self.name) && is_atomic_writer_dir(dir),
        }
    }
}

/// A file in a user's home directory, such as `~/.aws/credentials`: `/root/<dir>/<name>` for
/// root, `/home/<user>/<dir>/<name>` for every other user whose home is under `/home`.
#[derive(Clone, Copy, Debug)]
pub struct HomeFile {
    dir: &'static str,
    name: &'static str,
}

/// AWS's shared credentials file, `~/.aws/credentials`.
pub const AWS_CREDENTIALS: HomeFile = HomeFile::new(".aws", "credentials");
/// Google Cloud's application default credentials,
/// `~/.config/gcloud/application_default_credentials.json`.
pub const GCP_APPLICATION_DEFAULT_CREDENTIALS: HomeFile =
    HomeFile::new(".config/gcloud", "application_default_credentials.json");
/// The Azure CLI's token cache, `~/.azure/msal_token_cache.json`.
pub const AZURE_MSAL_TOKEN_CACHE: HomeFile = HomeFile::new(".azure", "msal_token_cache.json");

impl HomeFile {
    /// The file `name` in the directory `dir` of a home (for example `.aws` and `credentials`).
    pub const fn new(dir: &'static str, name: &'static str) -> Self {
        HomeFile { dir, name }
    }

    /// The file's basename, for the manifest's subscription.
    pub const fn basename(&self) -> &'static str {
        self.name
    }

    /// Root's directory and every home's, as path prefixes (`/home/*/.aws/`: a `*` segment
    /// stands for any one user).
    pub fn path_prefixes(&self) -> [String; 2] {
        [
            format!("/root/{}/", self.dir),
            format!("/home/*/{}/", self.dir),
        ]
    }

    /// Whether the event is about this file, by its path or its canonical path.
    pub fn matches_event(&self, event: &crate::Event<'_>) -> bool {
        self.matches(event.path())
            || event
                .canonical_path()
                .is_some_and(|path| self.matches(path))
    }

    /// Whether `path` is this file in root's home or in one under `/home`.
    pub fn matches(&self, path: &str) -> bool {
        let in_home = strip_prefix(path, "/root/").or_else(|| {
            let rest = strip_prefix(path, "/home/")?;
            let (user, rest) = rest.split_once('/')?;
            (!user.is_empty()).then_some(rest)
        });
        in_home
            .and_then(|rest| strip_prefix(rest, self.dir))
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|name| eq(name, self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K8S: &str = "secrets/kubernetes.io/serviceaccount";

    #[test]
    fn token_matches_every_spelling_the_kernel_produces() {
        let token = KUBERNETES_SERVICE_ACCOUNT_TOKEN;
        for path in [
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "/run/secrets/kubernetes.io/serviceaccount/token",
            "/run/secrets/kubernetes.io/serviceaccount/..data/token",
            "/run/secrets/kubernetes.io/serviceaccount/..2026_11_22_10_00_00.123456789/token",
            "/var/run/secrets/kubernetes.io/serviceaccount/..2026_11_22_10_00_00.1/token",
            "/var/lib/kubelet/pods/0b5e/volumes/kubernetes.io~projected/kube-api-access-x7k2p/token",
            "/var/lib/kubelet/pods/0b5e/volumes/kubernetes.io~projected/kube-api-access-x7k2p/..2026_11_22_10_00_00.1/token",
        ] {
            assert!(token.matches(path), "{path}");
        }
    }

    #[test]
    fn look_alikes_do_not_match() {
        let token = KUBERNETES_SERVICE_ACCOUNT_TOKEN;
        for path in [
            "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
            "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
            "/var/run/secrets/kubernetes.io/serviceaccount/..data/ca.crt",
            "/var/run/secrets/kubernetes.io/serviceaccount/token.bak",
            "/var/run/secrets/kubernetes.io/serviceaccount/tokens",
            "/var/run/secrets/kubernetes.io/serviceaccount/x/token",
            "/var/run/secrets/kubernetes.io/serviceaccount/..data/..data/token",
            "/var/run/secrets/kubernetes.io/serviceaccount/..2026_11_22/token",
            "/var/run/secrets/kubernetes.io/serviceaccount/..2026_11_22_10_00_00./token",
            "/var/run/secrets/kubernetes.io/serviceaccount/..2026_11_22_10_00_0a.1/token",
            "/var/run/secrets/kubernetes.io/serviceaccountx/token",
            "/var/run/secrets/kubernetes.io/serviceaccount",
            "/tmp/var/run/secrets/kubernetes.io/serviceaccount/token",
            "/run/secrets/eks.amazonaws.com/serviceaccount/token",
            "/var/run/../run/secrets/kubernetes.io/serviceaccount/token",
            "run/secrets/kubernetes.io/serviceaccount/token",
            "/var/lib/kubelet/pods/0b5e/volumes/kubernetes.io~projected/aws-iam-token/token",
            "/var/lib/kubelet/pods/0b5e/volumes/kubernetes.io~projected/kube-api-access-/token",
            "/var/lib/kubelet/pods/0b5e/volumes/kubernetes.io~secret/kube-api-access-x/token",
            "/var/lib/kubelet/pods//volumes/kubernetes.io~projected/kube-api-access-x/token",
        ] {
            assert!(!token.matches(path), "{path}");
        }
    }

    #[test]
    fn every_matching_path_is_under_a_prefix() {
        for file in [KUBERNETES_SERVICE_ACCOUNT_TOKEN, EKS_WEB_IDENTITY_TOKEN] {
            let prefixes = file.path_prefixes();
            for path in [
                "/var/run/secrets/kubernetes.io/serviceaccount/token",
                "/run/secrets/kubernetes.io/serviceaccount/..data/token",
                "/run/secrets/eks.amazonaws.com/serviceaccount/..2026_11_22_10_00_00.1/token",
                "/var/lib/kubelet/pods/p/volumes/kubernetes.io~projected/aws-iam-token/token",
                "/var/lib/kubelet/pods/p/volumes/kubernetes.io~projected/kube-api-access-x/token",
            ] {
                if file.matches(path) {
                    assert!(
                        prefixes.iter().any(|p| path.starts_with(p.as_str())),
                        "{path}"
                    );
                }
            }
        }
    }

    #[test]
    fn events_match_by_path_or_by_canonical_path() {
        use picket_abi::{Access, EventFields, FileId};
        let token = KUBERNETES_SERVICE_ACCOUNT_TOKEN;
        let kubelet = "/var/lib/kubelet/pods/p/volumes/kubernetes.io~projected/kube-api-access-x/..2026_11_22_10_00_00.1/token";
        let matches = |path: &str, canonical: Option<&str>| {
            let mut buf = Vec::new();
            EventFields {
                path,
                exe: "/x",
                access: Some(Access::Read),
                file_id: canonical.map(|_| FileId { dev: 1, ino: 2 }),
                canonical_path: canonical,
                ..EventFields::default()
            }
            .encode(&mut buf);
            token.matches_event(&crate::Event::parse(&buf).unwrap())
        };
        assert!(matches(
            "/run/secrets/kubernetes.io/serviceaccount/token",
            None
        ));
        assert!(matches("/tmp/hardlink", Some(kubelet)));
        assert!(matches(
            "/kubernetes.io/serviceaccount/..data/token",
            Some(kubelet)
        ));
        assert!(!matches("/tmp/hardlink", None));
        assert!(!matches(
            "/tmp/hardlink",
            Some("/var/lib/kubelet/pods/p/volumes/kubernetes.io~projected/aws-iam-token/token")
        ));
    }

    #[test]
    fn eks_token_is_its_own_file() {
        let eks = EKS_WEB_IDENTITY_TOKEN;
        assert!(eks.matches("/var/run/secrets/eks.amazonaws.com/serviceaccount/token"));
        assert!(eks.matches("/run/secrets/eks.amazonaws.com/serviceaccount/..data/token"));
        assert!(eks.matches(
            "/var/lib/kubelet/pods/p/volumes/kubernetes.io~projected/aws-iam-token/token"
        ));
        assert!(!eks.matches("/run/secrets/kubernetes.io/serviceaccount/token"));
        assert!(!ProjectedFile::new(K8S, "token").matches(
            "/var/lib/kubelet/pods/p/volumes/kubernetes.io~projected/kube-api-access-x/token"
        ));
    }

    #[test]
    fn atomic_writer_dirs() {
        assert!(is_atomic_writer_dir("..data"));
        assert!(is_atomic_writer_dir("..2026_11_22_10_00_00.123456789"));
        assert!(!is_atomic_writer_dir("..2026_11_22_10_00_00_00.1"));
        assert!(!is_atomic_writer_dir("..."));
        assert!(!is_atomic_writer_dir("data"));
        assert_eq!(basename("/a/b/token"), "token");
        assert_eq!(basename("token"), "token");
        assert!(eq("0123456789abcdefX", "0123456789abcdefX"));
        assert!(!eq("0123456789abcdefX", "0123456789abcdefY"));
        assert!(!eq("0123456X89abcdefX", "0123456789abcdefX"));
        assert!(!eq("short", "shorter"));
        assert_eq!(strip_prefix("/run/x", "/run/"), Some("x"));
        assert_eq!(strip_prefix("/ru", "/run/"), None);
        assert_eq!(strip_prefix("/rün/x", "/ru"), None);
    }

    #[test]
    fn home_files_match_root_and_every_home_only() {
        let aws = AWS_CREDENTIALS;
        for path in ["/root/.aws/credentials", "/home/alice/.aws/credentials"] {
            assert!(aws.matches(path), "{path}");
        }
        for path in [
            "/home/.aws/credentials",
            "/home/a/b/.aws/credentials",
            "/root/.aws/credentials.bak",
            "/root/.aws/config",
            "/tmp/.aws/credentials",
            "/root/.aws/x/credentials",
        ] {
            assert!(!aws.matches(path), "{path}");
        }
        let gcp = GCP_APPLICATION_DEFAULT_CREDENTIALS;
        assert!(gcp.matches("/home/b/.config/gcloud/application_default_credentials.json"));
        assert_eq!(
            gcp.path_prefixes(),
            ["/root/.config/gcloud/", "/home/*/.config/gcloud/"]
        );
        assert!(AZURE_MSAL_TOKEN_CACHE.matches("/root/.azure/msal_token_cache.json"));
    }
}
