//! Container image references, as the runtime reports them in `container.image`.
//!
//! A reference is `[registry[:port]/]path[:tag][@digest]` (the OCI distribution grammar). New
//! values are best learned per *repository*, the reference without tag or digest: a deploy of a
//! new tag (or the same image pinned by digest) is the same workload, and should keep what was
//! learned instead of starting another learning period.

/// The repository of an image reference: `image` without its tag and digest.
///
/// `registry.example/app:1.2`, `registry.example/app:1.3`, `registry.example/app@sha256:…` and
/// `registry.example/app:1.2@sha256:…` all give `registry.example/app`. A registry's port is
/// not a tag: `host:5000/app:1` gives `host:5000/app`, and `host:5000/app` is returned as is
/// (a tag can only follow the last `/`).
///
/// The result is a slice of `image`, not normalized: no case folding, and no default registry
/// or `library/` added, so `nginx` and `docker.io/library/nginx` are two repositories (the
/// runtime reports the reference as the pod spec or its own configuration spells it). A
/// reference that is all tag or digest (`""`, `":"`, `"@sha256:…"`) gives `""`; callers should
/// then group by something else ([`crate::EventExt::workload`] falls back to the container id).
///
/// ```
/// use picket_rule_sdk::image_repository;
///
/// assert_eq!(image_repository("registry.example/app:1.2"), "registry.example/app");
/// assert_eq!(image_repository("registry.example/app@sha256:0123abcd"), "registry.example/app");
/// assert_eq!(image_repository("host:5000/app:1"), "host:5000/app");
/// assert_eq!(image_repository("host:5000/app"), "host:5000/app");
/// ```
pub fn image_repository(image: &str) -> &str {
    // The digest goes first: it contains a ':' of its own (`sha256:…`).
    let name = image.split_once('@').map_or(image, |(name, _digest)| name);
    // A tag can only be in the last path component; a ':' before the last '/' is a port.
    let last = name.rfind('/').map_or(0, |slash| slash + 1);
    match name[last..].find(':') {
        Some(colon) => &name[..last + colon],
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::image_repository;

    #[test]
    fn tags_and_digests_are_one_repository() {
        for image in [
            "registry.example/app",
            "registry.example/app:1.2",
            "registry.example/app:1.3",
            "registry.example/app:latest",
            "registry.example/app@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "registry.example/app:1.2@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ] {
            assert_eq!(image_repository(image), "registry.example/app", "{image}");
        }
    }

    #[test]
    fn a_registry_port_is_not_a_tag() {
        assert_eq!(image_repository("host:5000/app:1"), "host:5000/app");
        assert_eq!(image_repository("host:5000/app"), "host:5000/app");
        assert_eq!(
            image_repository("host:5000/team/app:1.0"),
            "host:5000/team/app"
        );
        assert_eq!(image_repository("host:5000/app@sha256:ab"), "host:5000/app");
        assert_eq!(
            image_repository("[fd00::1]:5000/app:2@sha256:ab"),
            "[fd00::1]:5000/app"
        );
        // Without a '/', the ':' can only start a tag (the grammar has no bare registry).
        assert_eq!(image_repository("host:5000"), "host");
    }

    #[test]
    fn short_names_keep_their_spelling() {
        assert_eq!(image_repository("nginx"), "nginx");
        assert_eq!(image_repository("nginx:1.27"), "nginx");
        assert_eq!(image_repository("library/nginx:1.27"), "library/nginx");
        // Not normalized: the runtime's spelling is the group.
        assert_eq!(
            image_repository("Registry.Example/App:V1"),
            "Registry.Example/App"
        );
    }

    #[test]
    fn odd_references_give_a_slice_and_never_panic() {
        assert_eq!(image_repository(""), "");
        assert_eq!(image_repository(":"), "");
        assert_eq!(image_repository("@"), "");
        assert_eq!(image_repository(":@:"), "");
        assert_eq!(image_repository("@sha256:ab"), "");
        assert_eq!(image_repository("app:"), "app");
        assert_eq!(image_repository("app:1:2"), "app");
        assert_eq!(image_repository("/"), "/");
        assert_eq!(image_repository("a/"), "a/");
        assert_eq!(image_repository("a/:1"), "a/");
        assert_eq!(image_repository("ré/ünïcode:ß"), "ré/ünïcode");
        let long = format!("registry.example/{}", "a/".repeat(50_000));
        assert_eq!(
            image_repository(&format!("{long}b:1.0@sha256:00")),
            format!("{long}b")
        );
        assert_eq!(image_repository(&long), long);
    }
}
