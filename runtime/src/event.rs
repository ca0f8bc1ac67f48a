//! The normalized event (docs/events.md): its JSON form, and parsing that names the line and
//! field of bad input.

use crate::time::Timestamp;
use picket_abi::{
    Access, AncestorFields, Ancestors, Args, EventFields, EventKind, FileId, LINEAGE_DEPTH,
};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;

/// One event: a process acted on a file. Strings borrow from the JSON line where they can.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event<'a> {
    /// When it happened.
    pub ts: Timestamp,
    /// What happened.
    pub kind: EventKind,
    /// Name of the node the event happened on, when known; `host` in the event JSON (a
    /// contract, docs/events.md).
    #[serde(
        rename = "host",
        borrow,
        default,
        deserialize_with = "optional_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub node_name: Option<Cow<'a, str>>,
    /// The file.
    #[serde(borrow)]
    pub file: File<'a>,
    /// The process.
    #[serde(borrow)]
    pub process: Process<'a>,
    /// The container; absent for a process of the host itself.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container<'a>>,
    /// The Kubernetes pod of the container, when its runtime says.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod<'a>>,
}

/// The file an event is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File<'a> {
    /// Path as the kernel resolved it for the process.
    #[serde(borrow)]
    pub path: Cow<'a, str>,
    /// How it was opened, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    /// Device of the file, as `stat(2)`'s `st_dev` (`stat -c %d`); given with `ino`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<u64>,
    /// Inode number of the file (`st_ino`); given with `dev`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ino: Option<u64>,
    /// Where the agent found the same file (same `dev` and `ino`) on the node, seen from its own
    /// root: present when the file is one it watches by identity, whatever name, mount or root
    /// the process reached it through.
    #[serde(
        borrow,
        default,
        deserialize_with = "optional_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub canonical_path: Option<Cow<'a, str>>,
}

impl File<'_> {
    /// The file's device and inode, when both are known.
    pub fn id(&self) -> Option<FileId> {
        Some(FileId {
            dev: self.dev?,
            ino: self.ino?,
        })
    }
}

/// The process behind an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process<'a> {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    /// Real user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Real group id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// The user name of `uid` in the process's own root (its `/etc/passwd`).
    #[serde(
        borrow,
        default,
        deserialize_with = "optional_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub user: Option<Cow<'a, str>>,
    /// Command name.
    #[serde(
        borrow,
        default,
        deserialize_with = "optional_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub comm: Option<Cow<'a, str>>,
    /// Executable path.
    #[serde(borrow)]
    pub exe: Cow<'a, str>,
    /// Command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<ArgList>,
    /// Effective user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub euid: Option<u32>,
    /// Effective group id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egid: Option<u32>,
    /// The executable's content digest, `sha256:<hex>`.
    #[serde(
        borrow,
        default,
        deserialize_with = "optional_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub exe_digest: Option<Cow<'a, str>>,
    /// What the process made `/proc/PID/exe` point at after its exec, when that is not what it
    /// exec'd (`exe`).
    #[serde(
        borrow,
        default,
        deserialize_with = "optional_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub exe_swapped_to: Option<Cow<'a, str>>,
    /// The process that forked this one, as it was then.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Ancestor<'a>>,
    /// The parent's parent and on up, nearest first, at most `LINEAGE_DEPTH - 1`.
    #[serde(borrow, default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<Ancestor<'a>>,
}

/// A process of the lineage of an event's process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ancestor<'a> {
    /// Process id.
    pub pid: u32,
    /// Real user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Executable path.
    #[serde(borrow)]
    pub exe: Cow<'a, str>,
    /// Command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<ArgList>,
}

impl Ancestor<'_> {
    /// The ancestor with its strings owned.
    pub fn into_owned(self) -> Ancestor<'static> {
        Ancestor {
            pid: self.pid,
            uid: self.uid,
            exe: Cow::Owned(self.exe.into_owned()),
            args: self.args,
        }
    }

    fn fields(&self) -> AncestorFields<'_> {
        AncestorFields {
            pid: self.pid,
            uid: self.uid,
            exe: &self.exe,
            args: self.args.as_ref().map(ArgList::view),
        }
    }
}

/// The container behind an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container<'a> {
    /// Container id.
    #[serde(
        borrow,
        default,
        deserialize_with = "optional_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<Cow<'a, str>>,
    /// Image reference.
    #[serde(
        borrow,
        default,
        deserialize_with = "optional_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub image: Option<Cow<'a, str>>,
    /// The container's name (in its pod).
    #[serde(
        borrow,
        default,
        deserialize_with = "optional_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<Cow<'a, str>>,
}

/// The Kubernetes pod behind an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pod<'a> {
    /// The pod's name.
    #[serde(
        borrow,
        default,
        deserialize_with = "optional_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<Cow<'a, str>>,
    /// Its namespace.
    #[serde(
        borrow,
        default,
        deserialize_with = "optional_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub namespace: Option<Cow<'a, str>>,
    /// Its uid.
    #[serde(
        borrow,
        default,
        deserialize_with = "optional_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub uid: Option<Cow<'a, str>>,
}

/// A command line, kept as its arguments joined by NUL bytes: the form the kernel hands over and
/// the form rules receive, so it is built once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArgList {
    joined: String,
    count: u32,
}

impl ArgList {
    /// Arguments as the kernel stores them: each one terminated by a NUL byte. A trailing
    /// fragment without its NUL (a truncated read) counts as an argument too.
    pub fn from_nul_terminated(raw: &[u8]) -> ArgList {
        let mut list = ArgList::default();
        let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
        if raw.is_empty() {
            return list;
        }
        for arg in raw.split(|&b| b == 0) {
            list.push(&String::from_utf8_lossy(arg));
        }
        list
    }

    /// Appends one argument; a NUL inside it becomes U+FFFD so the joined form stays unambiguous.
    pub fn push(&mut self, arg: &str) {
        if self.count > 0 {
            self.joined.push('\0');
        }
        if arg.contains('\0') {
            self.joined.push_str(&arg.replace('\0', "\u{fffd}"));
        } else {
            self.joined.push_str(arg);
        }
        self.count += 1;
    }

    /// The arguments in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.view().iter()
    }

    fn view(&self) -> Args<'_> {
        Args::from_joined(&self.joined, self.count)
    }
}

impl<S: AsRef<str>> FromIterator<S> for ArgList {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> ArgList {
        let mut list = ArgList::default();
        for arg in iter {
            list.push(arg.as_ref());
        }
        list
    }
}

impl Serialize for ArgList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.count as usize))?;
        for arg in self.iter() {
            seq.serialize_element(arg)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for ArgList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ArgList, D::Error> {
        struct ArgsVisitor;
        impl<'de> Visitor<'de> for ArgsVisitor {
            type Value = ArgList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ArgList, A::Error> {
                let mut list = ArgList::default();
                while let Some(arg) = seq.next_element::<Cow<'de, str>>()? {
                    if arg.contains('\0') {
                        return Err(de::Error::custom(
                            "an argument contains a NUL byte, which no Linux argument can",
                        ));
                    }
                    list.push(&arg);
                }
                Ok(list)
            }
        }
        deserializer.deserialize_seq(ArgsVisitor)
    }
}

/// `Option<Cow<str>>` that borrows from the input when it can: serde's own impl for an optional
/// `Cow` always allocates, which cost more than the rest of parsing an event.
fn optional_text<'de: 'a, 'a, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Text<'a>>::deserialize(deserializer)?.map(|text| text.0))
}

impl Event<'_> {
    /// The fields a rule receives, borrowing from this event.
    pub fn fields(&self) -> EventFields<'_> {
        EventFields {
            ts_ns: self.ts.as_nanos(),
            kind: self.kind,
            node_name: self.node_name.as_deref(),
            path: &self.file.path,
            access: self.file.access,
            pid: self.process.pid,
            ppid: self.process.ppid,
            uid: self.process.uid,
            gid: self.process.gid,
            comm: self.process.comm.as_deref(),
            exe: &self.process.exe,
            args: self.process.args.as_ref().map(ArgList::view),
            in_container: self.container.is_some(),
            container_id: self.container.as_ref().and_then(|c| c.id.as_deref()),
            container_image: self.container.as_ref().and_then(|c| c.image.as_deref()),
            file_id: self.file.id(),
            canonical_path: self.file.canonical_path.as_deref(),
            euid: self.process.euid,
            egid: self.process.egid,
            exe_digest: self.process.exe_digest.as_deref(),
            exe_swapped_to: self.process.exe_swapped_to.as_deref(),
            ancestors: Ancestors::new(
                self.process
                    .parent
                    .iter()
                    .chain(&self.process.ancestors)
                    .map(Ancestor::fields),
            ),
        }
    }

    /// What serde cannot say: `file.dev` and `file.ino` come together. Every way an event enters
    /// (replay line, case file) goes through here, so a half identity is refused everywhere; `at`
    /// prefixes the field path where the event sits inside a larger document (`events[1].`).
    pub fn check_fields(&self, at: &str) -> Result<(), String> {
        match (self.file.dev, self.file.ino) {
            (Some(_), None) => Err(format!("field `{at}file.ino`: required with `file.dev`")),
            (None, Some(_)) => Err(format!("field `{at}file.dev`: required with `file.ino`")),
            _ => Ok(()),
        }?;
        let ancestors = self.process.ancestors.len();
        if ancestors > 0 && self.process.parent.is_none() {
            return Err(format!(
                "field `{at}process.ancestors`: given without `{at}process.parent`"
            ));
        }
        if ancestors >= LINEAGE_DEPTH {
            return Err(format!(
                "field `{at}process.ancestors`: {ancestors} given, at most {} (the parent and {} more make {LINEAGE_DEPTH})",
                LINEAGE_DEPTH - 1,
                LINEAGE_DEPTH - 1
            ));
        }
        Ok(())
    }

    /// The event with every string owned, to keep beyond the input it was parsed from (a
    /// signal held while the fleet confirms it).
    pub fn into_owned(self) -> Event<'static> {
        fn own(text: Option<Cow<'_, str>>) -> Option<Cow<'static, str>> {
            text.map(|text| Cow::Owned(text.into_owned()))
        }
        Event {
            ts: self.ts,
            kind: self.kind,
            node_name: own(self.node_name),
            file: File {
                path: Cow::Owned(self.file.path.into_owned()),
                access: self.file.access,
                dev: self.file.dev,
                ino: self.file.ino,
                canonical_path: own(self.file.canonical_path),
            },
            process: Process {
                pid: self.process.pid,
                ppid: self.process.ppid,
                uid: self.process.uid,
                gid: self.process.gid,
                user: own(self.process.user),
                comm: own(self.process.comm),
                exe: Cow::Owned(self.process.exe.into_owned()),
                args: self.process.args,
                euid: self.process.euid,
                egid: self.process.egid,
                exe_digest: own(self.process.exe_digest),
                exe_swapped_to: own(self.process.exe_swapped_to),
                parent: self.process.parent.map(Ancestor::into_owned),
                ancestors: self
                    .process
                    .ancestors
                    .into_iter()
                    .map(Ancestor::into_owned)
                    .collect(),
            },
            container: self.container.map(|c| Container {
                id: own(c.id),
                image: own(c.image),
                name: own(c.name),
            }),
            pod: self.pod.map(|p| Pod {
                name: own(p.name),
                namespace: own(p.namespace),
                uid: own(p.uid),
            }),
        }
    }

    /// The basename of the file, which rules subscribe by.
    pub fn basename(&self) -> &str {
        let path: &str = &self.file.path;
        path.rsplit('/').next().unwrap_or(path)
    }
}

/// Parses one JSON event; the error names the field at fault.
pub fn parse_event(json: &str) -> Result<Event<'_>, String> {
    // The plain parse is the fast path; only a failure pays for the field-tracking second pass.
    match serde_json::from_str::<Event<'_>>(json) {
        Ok(event) => event.check_fields("").map(|()| event),
        Err(_) => {
            let mut de = serde_json::Deserializer::from_str(json);
            match serde_path_to_error::deserialize::<_, Event<'_>>(&mut de) {
                Ok(event) => event.check_fields("").map(|()| event),
                Err(err) => Err(describe_path_error(&err)),
            }
        }
    }
}

/// Renders a serde error with the dotted path of the field it concerns, folding a missing or
/// unknown field's name into the path.
pub fn describe_path_error(err: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let inner = err.inner();
    let message = inner.to_string();
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(&message)
        .to_string();
    let path = err.path().to_string();
    let path = if path == "." { String::new() } else { path };
    let field = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    // A missing field's path ends at its parent; an unknown field's already names it.
    let location = match field {
        Some(name) if path.is_empty() => name.to_string(),
        Some(name) if !path.ends_with(&format!(".{name}")) && path != name => {
            format!("{path}.{name}")
        }
        _ => path,
    };
    let position = if inner.line() > 0 {
        format!(" (column {})", inner.column())
    } else {
        String::new()
    };
    if location.is_empty() {
        format!("{message}{position}")
    } else {
        format!("field `{location}`: {message}{position}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"ts": "2026-11-22T10:00:00.000000001Z", "kind": "open", "host": "node-a",
 "file": {"path": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token", "access": "read"},
 "process": {"pid": 4242, "ppid": 4200, "uid": 1000, "gid": 1000, "user": "app", "comm": "cat",
             "exe": "/usr/bin/cat", "args": ["cat", "/var/run/secrets/..."]},
 "container": {"id": "3f9c0a", "image": "registry.example/app:1.2", "name": "api"},
 "pod": {"name": "api-7d9f8-x2x4q", "namespace": "payments", "uid": "0f1e2d3c-9a8b"}}"#;

    #[test]
    fn parses_the_design_example_and_borrows_strings() {
        let event = parse_event(LINE).unwrap();
        assert_eq!(event.process.pid, 4242);
        assert!(matches!(event.file.path, Cow::Borrowed(_)));
        assert!(matches!(event.process.comm, Some(Cow::Borrowed(_))));
        let image = &event.container.as_ref().unwrap().image;
        assert!(matches!(image, Some(Cow::Borrowed(_))));
        assert_eq!(event.process.user.as_deref(), Some("app"));
        assert_eq!(
            event.container.as_ref().unwrap().name.as_deref(),
            Some("api")
        );
        let pod = event.pod.as_ref().unwrap();
        assert_eq!(
            (
                pod.name.as_deref(),
                pod.namespace.as_deref(),
                pod.uid.as_deref()
            ),
            (
                Some("api-7d9f8-x2x4q"),
                Some("payments"),
                Some("0f1e2d3c-9a8b")
            )
        );
        let escaped = LINE.replace(r#""comm": "cat""#, r#""comm": "c\u0061t""#);
        let event = parse_event(&escaped).unwrap();
        assert_eq!(event.process.comm.as_deref(), Some("cat"));
        assert_eq!(event.basename(), "token");
        let args: Vec<&str> = event.process.args.as_ref().unwrap().iter().collect();
        assert_eq!(args, ["cat", "/var/run/secrets/..."]);
        let back: serde_json::Value = serde_json::to_value(&event).unwrap();
        let original: serde_json::Value = serde_json::from_str(LINE).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                LINE.replace(r#""pid": 4242"#, r#""pid": "x""#),
                "process.pid",
            ),
            (
                LINE.replace(r#""exe": "/usr/bin/cat", "#, ""),
                "process.exe",
            ),
            (LINE.replace(r#""comm""#, r#""comn""#), "process.comn"),
            (
                LINE.replace(r#""ts": "2026-11-22T10:00:00.000000001Z", "#, ""),
                "`ts`",
            ),
            (LINE.replace("2026-11-22T10", "2026-13-22T10"), "`ts`"),
            (LINE.replace(r#""open""#, r#""exec""#), "`kind`"),
            (LINE.replace(r#""read""#, r#""rw""#), "file.access"),
            (
                LINE.replace(r#""user": "app""#, r#""user": 1000"#),
                "process.user",
            ),
            (
                LINE.replace(r#""namespace""#, r#""nameSpace""#),
                "pod.nameSpace",
            ),
            (
                LINE.replace(r#""name": "api""#, r#""name": 1"#),
                "container.name",
            ),
            (
                LINE.replace(r#""cat", "/var"#, r#""c\u0000at", "/var"#),
                "process.args",
            ),
        ];
        for (json, field) in cases {
            let err = parse_event(&json).unwrap_err();
            assert!(err.contains(field), "{err} should name {field}");
        }
    }

    #[test]
    fn file_identity_fields_round_trip_and_come_in_pairs() {
        let line = LINE.replace(
            r#""access": "read"}"#,
            r#""access": "read", "dev": 52, "ino": 18446744073709551615,
               "canonical_path": "/var/lib/kubelet/pods/p/volumes/kubernetes.io~projected/v/token"}"#,
        );
        let event = parse_event(&line).unwrap();
        assert_eq!(
            event.file.id(),
            Some(FileId {
                dev: 52,
                ino: u64::MAX
            })
        );
        let fields = event.fields();
        assert_eq!(fields.file_id, event.file.id());
        assert!(fields.canonical_path.unwrap().ends_with("/v/token"));
        let back: serde_json::Value = serde_json::to_value(&event).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(&line).unwrap()
        );
        let err = parse_event(&LINE.replace(r#""access": "read"}"#, r#""dev": 52}"#)).unwrap_err();
        assert!(err.contains("file.ino"), "{err}");
        let err = parse_event(&LINE.replace(r#""access": "read"}"#, r#""ino": 1}"#)).unwrap_err();
        assert!(err.contains("file.dev"), "{err}");
        let err = parse_event(&LINE.replace(r#""access": "read"}"#, r#""dev": -1, "ino": 1}"#))
            .unwrap_err();
        assert!(err.contains("file.dev"), "{err}");
        assert!(parse_event(LINE).unwrap().fields().file_id.is_none());
    }

    #[test]
    fn minimal_event_needs_only_the_required_fields() {
        let json = r#"{"ts":"2026-11-22T10:00:00Z","kind":"open","file":{"path":"/x"},"process":{"pid":1,"exe":"/bin/x"}}"#;
        let event = parse_event(json).unwrap();
        assert!(event.container.is_none());
        assert_eq!(serde_json::to_string(&event).unwrap(), json);
    }

    #[test]
    fn kernel_args_are_split_on_nul() {
        let args = ArgList::from_nul_terminated(b"cat\0/run/x\0");
        assert_eq!(args.iter().collect::<Vec<_>>(), ["cat", "/run/x"]);
        assert_eq!(ArgList::from_nul_terminated(b"").iter().count(), 0);
    }

    #[test]
    fn access_and_kind_are_spelled_in_json_as_the_abi_names_them() {
        for access in [Access::Read, Access::Write, Access::ReadWrite] {
            let line = LINE.replace(
                r#""access": "read""#,
                &format!(r#""access": "{}""#, access.as_str()),
            );
            let event = parse_event(&line).unwrap();
            assert_eq!(event.file.access, Some(access));
            assert_eq!(event.fields().access, Some(access));
            let json = serde_json::to_value(&event).unwrap();
            assert_eq!(json["file"]["access"], access.as_str());
        }
        let json = serde_json::to_value(parse_event(LINE).unwrap()).unwrap();
        assert_eq!(json["kind"], EventKind::Open.as_str());
        let bad = LINE.replace(r#""access": "read""#, r#""access": "neither""#);
        assert!(parse_event(&bad).unwrap_err().contains("file.access"));
    }
}
