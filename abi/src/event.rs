//! The event layout: a fixed header of integers and string slots, then the string bytes.
//!
//! Events are the one hot path of the interface (every event, every subscribed rule), so they are
//! not bincode-encoded like the rest: a rule reads any field at a fixed offset without decoding
//! the others, and a string is sliced, and checked as UTF-8, only when the rule asks for it.
//! Measured on the bundled rules, decoding a whole bincode event cost more than the rule itself.
//!
//! Layout (all integers little endian; offsets from the start of the buffer):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | `ts_ns`, i64, nanoseconds since the Unix epoch (UTC) |
//! | 8 | 4 | `pid`, u32 |
//! | 12 | 4 | `ppid`, u32 (valid when flag bit 0 is set) |
//! | 16 | 4 | `uid`, u32 (flag bit 1) |
//! | 20 | 4 | `gid`, u32 (flag bit 2) |
//! | 24 | 4 | number of arguments in the `args` string |
//! | 28 | 1 | `kind`: 0 = open |
//! | 29 | 1 | `access`: 0 = unknown, 1 = read, 2 = write, 3 = read and write |
//! | 30 | 1 | flags: bit 0 ppid, bit 1 uid, bit 2 gid, bit 3 the process runs in a container |
//! | 30 | 1 | flags: … bit 4 `file_dev` and `file_ino` are valid |
//! | 31 | 1 | header extension: 0 = none (strings from 88), 1 = the file-identity block at 88 |
//! | 32 | 56 | seven string slots of (u32 offset, u32 length): host, path, comm, exe, args, container id, container image; offset `u32::MAX` = absent |
//! | 88 | 8 | `file_dev`, u64 (extension 1) |
//! | 96 | 8 | `file_ino`, u64 (extension 1) |
//! | 104 | 8 | eighth string slot: `canonical_path` (extension 1) |
//! | 112 | 160 | the lineage block, when flag bit 5 is set (see [`LINEAGE_LEN`]) |
//! | 112 or 272 | … | string bytes, UTF-8; `args` holds the arguments joined by NUL bytes |
//!
//! The lineage block (flag bit 5, only with extension 1):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 112 | 4 | `euid`, u32 (lineage flag bit 0) |
//! | 116 | 4 | `egid`, u32 (lineage flag bit 1) |
//! | 120 | 8 | string slot: `exe_digest` |
//! | 128 | 8 | string slot: `exe_swapped_to` |
//! | 136 | 1 | number of ancestors, 0 to 4 |
//! | 137 | 1 | lineage flags: bit 0 euid valid, bit 1 egid valid |
//! | 138 | 6 | zero |
//! | 144 | 4 × 32 | ancestors, parent first: `pid` u32, `uid` u32, number of arguments u32, flags u32 (bit 0 uid valid), string slots `exe` and `args` |
//!
//! A host before the lineage block never sets flag bit 5, and a rule built before it ignores
//! the bit and the block (its strings are found through the slots, wherever they are): both
//! keep working with the ABI version unchanged.

use crate::{Access, Args, EventKind};

/// Ancestors an event carries at most: the parent and three more.
pub const LINEAGE_DEPTH: usize = 4;
use alloc::vec::Vec;
use core::fmt;

/// Size of the fixed header with the file-identity extension (and without the lineage block).
pub const HEADER_LEN: usize = 112;
/// Size of the lineage block that follows [`HEADER_LEN`] when flag bit 5 is set.
pub const LINEAGE_LEN: usize = 160;
/// Size of the fixed header this version writes: the identity extension and the lineage block.
pub const FULL_HEADER_LEN: usize = HEADER_LEN + LINEAGE_LEN;
/// Size of the header without extension, as hosts before the file-identity fields wrote it.
pub const BASE_HEADER_LEN: usize = 88;
/// Byte 31: which extension follows the base header.
const EXTENSION_AT: usize = 31;
/// Extension: `file_dev` at 88, `file_ino` at 96, the `canonical_path` slot at 104.
const EXTENSION_IDENTITY: u8 = 1;
const FILE_DEV_AT: usize = 88;
const FILE_INO_AT: usize = 96;
const CANONICAL_SLOT_AT: usize = 104;

const FLAG_PPID: u8 = 1;
const FLAG_UID: u8 = 2;
const FLAG_GID: u8 = 4;
const FLAG_CONTAINER: u8 = 8;
const FLAG_FILE_ID: u8 = 16;
const FLAG_LINEAGE: u8 = 32;
const EUID_AT: usize = 112;
const EGID_AT: usize = 116;
const DIGEST_SLOT_AT: usize = 120;
const SWAPPED_SLOT_AT: usize = 128;
const ANCESTOR_COUNT_AT: usize = 136;
const LINEAGE_FLAGS_AT: usize = 137;
const LINEAGE_EUID: u8 = 1;
const LINEAGE_EGID: u8 = 2;
const ANCESTORS_AT: usize = 144;
const ANCESTOR_LEN: usize = 32;
const ANCESTOR_UID: u32 = 1;
const ABSENT: u32 = u32::MAX;

#[derive(Clone, Copy)]
#[repr(usize)]
enum Slot {
    NodeName = 0,
    Path,
    Comm,
    Exe,
    Args,
    ContainerId,
    ContainerImage,
    /// In the identity extension, not after the others.
    CanonicalPath,
}

/// String slots of the base header.
const SLOTS: usize = 7;
const SLOTS_AT: usize = 32;

/// Where string slot `index` is: the base header's seven, then the extension's.
const fn slot_at(index: usize) -> usize {
    if index < SLOTS {
        SLOTS_AT + index * 8
    } else {
        CANONICAL_SLOT_AT
    }
}

/// The string slots of ancestor `index`: its exe, then its args.
const fn ancestor_slots(index: usize) -> [usize; 2] {
    let at = ANCESTORS_AT + index * ANCESTOR_LEN;
    [at + 16, at + 24]
}

/// One process of the lineage of an event's process: its parent, the parent's parent, and so on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AncestorFields<'a> {
    /// Process id.
    pub pid: u32,
    /// Real user id, when known.
    pub uid: Option<u32>,
    /// Executable path.
    pub exe: &'a str,
    /// Command line, when known.
    pub args: Option<Args<'a>>,
}

/// The ancestors of an event's process, parent first, at most [`LINEAGE_DEPTH`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ancestors<'a> {
    list: [AncestorFields<'a>; LINEAGE_DEPTH],
    len: u8,
}

impl<'a> Ancestors<'a> {
    /// The first [`LINEAGE_DEPTH`] of `ancestors` (parent first); the rest are dropped.
    pub fn new(ancestors: impl IntoIterator<Item = AncestorFields<'a>>) -> Ancestors<'a> {
        let mut out = Ancestors::default();
        for ancestor in ancestors.into_iter().take(LINEAGE_DEPTH) {
            out.list[out.len as usize] = ancestor;
            out.len += 1;
        }
        out
    }

    /// Parent first.
    pub fn as_slice(&self) -> &[AncestorFields<'a>] {
        &self.list[..self.len as usize]
    }

    /// The parent, when known.
    pub fn parent(&self) -> Option<&AncestorFields<'a>> {
        self.as_slice().first()
    }

    /// How many are known.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether none is known.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Which file an event is about, beyond its path: the device and inode number that `stat(2)`
/// reports for it (`st_dev`, `st_ino`), the same through every name, link and mount of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

/// The fields of an event, as the host fills them in before encoding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventFields<'a> {
    /// Event time, nanoseconds since the Unix epoch (UTC).
    pub ts_ns: i64,
    /// What happened.
    pub kind: EventKind,
    /// Name of the node the event happened on, when known (the event JSON's `host` field).
    pub node_name: Option<&'a str>,
    /// Resolved path of the file.
    pub path: &'a str,
    /// How the file was opened, when known.
    pub access: Option<Access>,
    /// Process id.
    pub pid: u32,
    /// Parent process id, when known.
    pub ppid: Option<u32>,
    /// Real user id, when known.
    pub uid: Option<u32>,
    /// Real group id, when known.
    pub gid: Option<u32>,
    /// Command name, when known.
    pub comm: Option<&'a str>,
    /// Executable path.
    pub exe: &'a str,
    /// Command line, when known.
    pub args: Option<Args<'a>>,
    /// Whether the process runs in a container (`false` for a process of the host).
    pub in_container: bool,
    /// Container id, when known.
    pub container_id: Option<&'a str>,
    /// Container image, when known.
    pub container_image: Option<&'a str>,
    /// The file's device and inode, when known.
    pub file_id: Option<FileId>,
    /// Where the agent found the same file (same device and inode) on the node, seen from the
    /// agent's root, when the file is one it watches by identity: the path a rule recognizes
    /// even when `path` is a hard link's, a bind mount's or a chrooted reader's.
    pub canonical_path: Option<&'a str>,
    /// Effective user id, when known.
    pub euid: Option<u32>,
    /// Effective group id, when known.
    pub egid: Option<u32>,
    /// The executable's content digest (`sha256:<hex>`), when known.
    pub exe_digest: Option<&'a str>,
    /// The executable the process made itself look like after its exec (what
    /// `/proc/PID/exe` showed at the event), when it swapped it; `exe` stays what it exec'd.
    pub exe_swapped_to: Option<&'a str>,
    /// Parent first.
    pub ancestors: Ancestors<'a>,
}

impl EventFields<'_> {
    /// Whether any lineage field is set, which makes the encoding carry the lineage block.
    fn has_lineage(&self) -> bool {
        self.euid.is_some()
            || self.egid.is_some()
            || self.exe_digest.is_some()
            || self.exe_swapped_to.is_some()
            || !self.ancestors.is_empty()
    }

    /// Encodes the event into `buf`, replacing its contents.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        buf.clear();
        let lineage = self.has_lineage();
        buf.resize(if lineage { FULL_HEADER_LEN } else { HEADER_LEN }, 0);
        buf[0..8].copy_from_slice(&self.ts_ns.to_le_bytes());
        let mut flags = 0;
        for (at, value, flag) in [
            (8, Some(self.pid), 0),
            (12, self.ppid, FLAG_PPID),
            (16, self.uid, FLAG_UID),
            (20, self.gid, FLAG_GID),
            (24, Some(self.args.map_or(0, |a| a.len() as u32)), 0),
        ] {
            if let Some(value) = value {
                buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
                flags |= flag;
            }
        }
        if self.in_container {
            flags |= FLAG_CONTAINER;
        }
        if let Some(id) = self.file_id {
            buf[FILE_DEV_AT..FILE_DEV_AT + 8].copy_from_slice(&id.dev.to_le_bytes());
            buf[FILE_INO_AT..FILE_INO_AT + 8].copy_from_slice(&id.ino.to_le_bytes());
            flags |= FLAG_FILE_ID;
        }
        buf[EXTENSION_AT] = EXTENSION_IDENTITY;
        buf[28] = match self.kind {
            EventKind::Open => 0,
        };
        buf[29] = match self.access {
            None => 0,
            Some(Access::Read) => 1,
            Some(Access::Write) => 2,
            Some(Access::ReadWrite) => 3,
        };
        if lineage {
            flags |= FLAG_LINEAGE;
            let mut lineage_flags = 0;
            for (at, value, flag) in [
                (EUID_AT, self.euid, LINEAGE_EUID),
                (EGID_AT, self.egid, LINEAGE_EGID),
            ] {
                if let Some(value) = value {
                    buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
                    lineage_flags |= flag;
                }
            }
            buf[LINEAGE_FLAGS_AT] = lineage_flags;
            buf[ANCESTOR_COUNT_AT] = self.ancestors.len;
            for (index, ancestor) in self.ancestors.as_slice().iter().enumerate() {
                let at = ANCESTORS_AT + index * ANCESTOR_LEN;
                let count = ancestor.args.map_or(0, |a| a.len() as u32);
                let uid_flag = if ancestor.uid.is_some() {
                    ANCESTOR_UID
                } else {
                    0
                };
                for (offset, value) in [
                    (0, ancestor.pid),
                    (4, ancestor.uid.unwrap_or(0)),
                    (8, count),
                    (12, uid_flag),
                ] {
                    buf[at + offset..at + offset + 4].copy_from_slice(&value.to_le_bytes());
                }
                let [exe_slot, args_slot] = ancestor_slots(index);
                put_string(buf, exe_slot, Some(ancestor.exe));
                put_string(buf, args_slot, ancestor.args.map(|a| a.joined()));
            }
            put_string(buf, DIGEST_SLOT_AT, self.exe_digest);
            put_string(buf, SWAPPED_SLOT_AT, self.exe_swapped_to);
        }
        buf[30] = flags;
        let strings = [
            self.node_name,
            Some(self.path),
            self.comm,
            Some(self.exe),
            self.args.map(|a| a.joined()),
            self.container_id,
            self.container_image,
            self.canonical_path,
        ];
        for (index, string) in strings.into_iter().enumerate() {
            put_string(buf, slot_at(index), string);
        }
    }
}

/// Appends `string` to `buf` and points the slot at `slot` to it (or marks it absent).
fn put_string(buf: &mut Vec<u8>, slot: usize, string: Option<&str>) {
    let (offset, len) = match string {
        Some(s) => {
            let offset = buf.len() as u32;
            buf.extend_from_slice(s.as_bytes());
            (offset, s.len() as u32)
        }
        None => (ABSENT, 0),
    };
    buf[slot..slot + 4].copy_from_slice(&offset.to_le_bytes());
    buf[slot + 4..slot + 8].copy_from_slice(&len.to_le_bytes());
}

/// Why bytes are not an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// Fewer bytes than the header.
    Short,
    /// A string slot points outside the buffer.
    SlotOutOfBounds,
    /// The kind or access byte holds an unknown value.
    UnknownTag,
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LayoutError::Short => "shorter than the event header",
            LayoutError::SlotOutOfBounds => "a string slot points outside the event",
            LayoutError::UnknownTag => "unknown kind or access value",
        })
    }
}

/// An event as a rule reads it: fields come straight from the buffer, strings on demand.
#[derive(Clone, Copy)]
pub struct Event<'a> {
    bytes: &'a [u8],
    /// The strings are known to be UTF-8 (see [`Event::parse_trusted`]).
    trusted: bool,
}

impl<'a> Event<'a> {
    /// Checks the header and every string slot's bounds, so that reading fields cannot fail
    /// later except on invalid UTF-8.
    pub fn parse(bytes: &'a [u8]) -> Result<Event<'a>, LayoutError> {
        if bytes.len() < BASE_HEADER_LEN {
            return Err(LayoutError::Short);
        }
        if bytes[28] != 0 || bytes[29] > 3 || bytes[EXTENSION_AT] > EXTENSION_IDENTITY {
            return Err(LayoutError::UnknownTag);
        }
        let slots = if bytes[EXTENSION_AT] == EXTENSION_IDENTITY {
            if bytes.len() < HEADER_LEN {
                return Err(LayoutError::Short);
            }
            SLOTS + 1
        } else {
            SLOTS
        };
        let mut checked = [0usize; SLOTS + 3 + 2 * LINEAGE_DEPTH];
        let mut count = 0;
        for index in 0..slots {
            checked[count] = slot_at(index);
            count += 1;
        }
        if bytes[30] & FLAG_LINEAGE != 0 {
            if slots == SLOTS || bytes.len() < FULL_HEADER_LEN {
                return Err(LayoutError::Short);
            }
            if bytes[ANCESTOR_COUNT_AT] as usize > LINEAGE_DEPTH {
                return Err(LayoutError::UnknownTag);
            }
            for at in [DIGEST_SLOT_AT, SWAPPED_SLOT_AT] {
                checked[count] = at;
                count += 1;
            }
            for index in 0..bytes[ANCESTOR_COUNT_AT] as usize {
                for at in ancestor_slots(index) {
                    checked[count] = at;
                    count += 1;
                }
            }
        }
        for &at in &checked[..count] {
            let offset = read_u32(bytes, at);
            let len = read_u32(bytes, at + 4) as usize;
            if offset != ABSENT {
                let end = (offset as usize).checked_add(len);
                if end.is_none_or(|end| end > bytes.len()) {
                    return Err(LayoutError::SlotOutOfBounds);
                }
            }
        }
        Ok(Event {
            bytes,
            trusted: false,
        })
    }

    /// Like [`Event::parse`], but the strings are taken as UTF-8 without checking each one when
    /// it is read.
    ///
    /// # Safety
    ///
    /// Every string slot of `bytes` must hold valid UTF-8, as it does in a buffer written by
    /// [`EventFields::encode`] and not modified since. The picket host guarantees this for the
    /// buffer it hands a rule (docs/abi.md); the SDK relies on it because checking every string
    /// again inside the sandbox was a measurable share of a rule's time.
    pub unsafe fn parse_trusted(bytes: &'a [u8]) -> Result<Event<'a>, LayoutError> {
        let mut event = Event::parse(bytes)?;
        event.trusted = true;
        Ok(event)
    }

    /// Event time, nanoseconds since the Unix epoch (UTC).
    pub fn ts_ns(&self) -> i64 {
        i64::from_le_bytes(self.bytes[0..8].try_into().expect("8 bytes"))
    }

    /// What happened.
    pub fn kind(&self) -> EventKind {
        EventKind::Open
    }

    /// Name of the node the event happened on, when known (the event JSON's `host` field).
    pub fn node_name(&self) -> Option<&'a str> {
        self.string(Slot::NodeName)
    }

    /// The former name of [`Event::node_name`], kept so that rules written against it build.
    #[deprecated = "renamed to node_name: \"host\" named several things in picket"]
    pub fn host(&self) -> Option<&'a str> {
        self.node_name()
    }

    /// Absolute path of the file as the kernel resolved it for the process (links followed,
    /// seen from the process's own root).
    pub fn path(&self) -> &'a str {
        self.string(Slot::Path).unwrap_or("")
    }

    /// How the file was opened, when known.
    pub fn access(&self) -> Option<Access> {
        match self.bytes[29] {
            1 => Some(Access::Read),
            2 => Some(Access::Write),
            3 => Some(Access::ReadWrite),
            _ => None,
        }
    }

    /// Process id (thread group id).
    pub fn pid(&self) -> u32 {
        read_u32(self.bytes, 8)
    }

    /// Parent process id, when known.
    pub fn ppid(&self) -> Option<u32> {
        self.flagged(12, FLAG_PPID)
    }

    /// Real user id, when known.
    pub fn uid(&self) -> Option<u32> {
        self.flagged(16, FLAG_UID)
    }

    /// Real group id, when known.
    pub fn gid(&self) -> Option<u32> {
        self.flagged(20, FLAG_GID)
    }

    /// Command name (the kernel's `comm`), when known.
    pub fn comm(&self) -> Option<&'a str> {
        self.string(Slot::Comm)
    }

    /// Absolute path of the executable.
    pub fn exe(&self) -> &'a str {
        self.string(Slot::Exe).unwrap_or("")
    }

    /// Command line, when known.
    pub fn args(&self) -> Option<Args<'a>> {
        let joined = self.string(Slot::Args)?;
        Some(Args::from_joined(joined, read_u32(self.bytes, 24)))
    }

    /// Whether the process runs in a container; `false` for a process of the host itself.
    pub fn in_container(&self) -> bool {
        self.bytes[30] & FLAG_CONTAINER != 0
    }

    /// Container id, when known.
    pub fn container_id(&self) -> Option<&'a str> {
        self.string(Slot::ContainerId)
    }

    /// Container image, when known.
    pub fn container_image(&self) -> Option<&'a str> {
        self.string(Slot::ContainerImage)
    }

    /// The file's device and inode (`st_dev`, `st_ino`), when known.
    pub fn file_id(&self) -> Option<FileId> {
        if self.bytes[EXTENSION_AT] != EXTENSION_IDENTITY || self.bytes[30] & FLAG_FILE_ID == 0 {
            return None;
        }
        Some(FileId {
            dev: read_u64(self.bytes, FILE_DEV_AT),
            ino: read_u64(self.bytes, FILE_INO_AT),
        })
    }

    /// Where the agent found the same file on the node (same device and inode), when the file
    /// is one it watches by identity; see [`EventFields::canonical_path`].
    pub fn canonical_path(&self) -> Option<&'a str> {
        if self.bytes[EXTENSION_AT] != EXTENSION_IDENTITY {
            return None;
        }
        self.string(Slot::CanonicalPath)
    }

    /// Whether the event carries the lineage block (a host before it never writes it).
    fn has_lineage(&self) -> bool {
        self.bytes[30] & FLAG_LINEAGE != 0
    }

    fn lineage_flagged(&self, at: usize, flag: u8) -> Option<u32> {
        (self.has_lineage() && self.bytes[LINEAGE_FLAGS_AT] & flag != 0)
            .then(|| read_u32(self.bytes, at))
    }

    /// Effective user id, when known: the user the kernel checks access as (a setuid program's
    /// owner), which may differ from [`Event::uid`].
    pub fn euid(&self) -> Option<u32> {
        self.lineage_flagged(EUID_AT, LINEAGE_EUID)
    }

    /// Effective group id, when known.
    pub fn egid(&self) -> Option<u32> {
        self.lineage_flagged(EGID_AT, LINEAGE_EGID)
    }

    /// The executable's content digest, `sha256:<64 hex digits>`, when known: another file at
    /// the same path has another digest.
    pub fn exe_digest(&self) -> Option<&'a str> {
        if !self.has_lineage() {
            return None;
        }
        self.string_at(DIGEST_SLOT_AT)
    }

    /// When the process swapped its executable after its exec (`prctl(PR_SET_MM_MAP)` and the
    /// like), what it now claims to be; [`Event::exe`] stays what it exec'd.
    pub fn exe_swapped_to(&self) -> Option<&'a str> {
        if !self.has_lineage() {
            return None;
        }
        self.string_at(SWAPPED_SLOT_AT)
    }

    /// The process's ancestors, parent first (empty when unknown).
    pub fn ancestors(&self) -> Ancestors<'a> {
        if !self.has_lineage() {
            return Ancestors::default();
        }
        let count = self.bytes[ANCESTOR_COUNT_AT] as usize;
        Ancestors::new((0..count).map(|index| {
            let at = ANCESTORS_AT + index * ANCESTOR_LEN;
            let [exe_slot, args_slot] = ancestor_slots(index);
            let uid_valid = read_u32(self.bytes, at + 12) & ANCESTOR_UID != 0;
            AncestorFields {
                pid: read_u32(self.bytes, at),
                uid: uid_valid.then(|| read_u32(self.bytes, at + 4)),
                exe: self.string_at(exe_slot).unwrap_or(""),
                args: self
                    .string_at(args_slot)
                    .map(|joined| Args::from_joined(joined, read_u32(self.bytes, at + 8))),
            }
        }))
    }

    /// The parent, when known: the process that forked this one (as it was then), which may
    /// have exited since.
    pub fn parent(&self) -> Option<AncestorFields<'a>> {
        self.ancestors().parent().copied()
    }

    /// All fields, for a rule that wants them at once (validates every string).
    pub fn fields(&self) -> EventFields<'a> {
        EventFields {
            ts_ns: self.ts_ns(),
            kind: self.kind(),
            node_name: self.node_name(),
            path: self.path(),
            access: self.access(),
            pid: self.pid(),
            ppid: self.ppid(),
            uid: self.uid(),
            gid: self.gid(),
            comm: self.comm(),
            exe: self.exe(),
            args: self.args(),
            in_container: self.in_container(),
            container_id: self.container_id(),
            container_image: self.container_image(),
            file_id: self.file_id(),
            canonical_path: self.canonical_path(),
            euid: self.euid(),
            egid: self.egid(),
            exe_digest: self.exe_digest(),
            exe_swapped_to: self.exe_swapped_to(),
            ancestors: self.ancestors(),
        }
    }

    fn flagged(&self, at: usize, flag: u8) -> Option<u32> {
        (self.bytes[30] & flag != 0).then(|| read_u32(self.bytes, at))
    }

    fn string(&self, slot: Slot) -> Option<&'a str> {
        self.string_at(slot_at(slot as usize))
    }

    /// The string whose slot is at `at` (a slot [`Event::parse`] checked).
    fn string_at(&self, at: usize) -> Option<&'a str> {
        let offset = read_u32(self.bytes, at);
        if offset == ABSENT {
            return None;
        }
        let len = read_u32(self.bytes, at + 4) as usize;
        let bytes = &self.bytes[offset as usize..offset as usize + len];
        if self.trusted {
            // SAFETY: `parse_trusted`'s caller vouched that every string slot is UTF-8, and
            // `parse` checked that this slot lies inside the buffer.
            return Some(unsafe { core::str::from_utf8_unchecked(bytes) });
        }
        // Unless a buffer is broken this holds; if not, the rule traps with this message
        // rather than reading garbage.
        Some(core::str::from_utf8(bytes).expect("an event string is not UTF-8"))
    }
}

impl fmt::Debug for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fields().fmt(f)
    }
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EventFields<'static> {
        EventFields {
            ts_ns: 1_700_000_000_000_000_001,
            kind: EventKind::Open,
            node_name: Some("node-a"),
            path: "/run/secrets/kubernetes.io/serviceaccount/token",
            access: Some(Access::Read),
            pid: 42,
            ppid: Some(1),
            uid: Some(0),
            gid: None,
            comm: Some("cat"),
            exe: "/usr/bin/cat",
            args: Some(Args::from_joined("cat\0token", 2)),
            in_container: true,
            container_id: None,
            container_image: Some("registry.example/app:1.2"),
            file_id: Some(FileId {
                dev: 52,
                ino: 1 << 40,
            }),
            canonical_path: Some("/var/lib/kubelet/pods/p/volumes/kubernetes.io~projected/v/token"),
            euid: Some(0),
            egid: None,
            exe_digest: Some("sha256:00ff"),
            exe_swapped_to: None,
            ancestors: Ancestors::new([
                AncestorFields {
                    pid: 41,
                    uid: Some(1000),
                    exe: "/bin/sh",
                    args: Some(Args::from_joined("sh\0-c\0cat token", 3)),
                },
                AncestorFields {
                    pid: 1,
                    uid: None,
                    exe: "/sbin/init",
                    args: None,
                },
            ]),
        }
    }

    #[test]
    fn fields_round_trip_and_strings_are_borrowed() {
        let fields = sample();
        let mut buf = Vec::new();
        fields.encode(&mut buf);
        let event = Event::parse(&buf).unwrap();
        assert_eq!(event.fields(), fields);
        // SAFETY: `buf` was just written by `encode`.
        let trusted = unsafe { Event::parse_trusted(&buf) }.unwrap();
        assert_eq!(trusted.fields(), fields);
        assert!(buf.as_ptr_range().contains(&event.path().as_ptr()));
        let args: Vec<&str> = event.args().unwrap().iter().collect();
        assert_eq!(args, ["cat", "token"]);
    }

    #[test]
    fn layout_matches_the_documentation() {
        let mut buf = Vec::new();
        EventFields {
            ts_ns: -2,
            path: "/t",
            pid: 7,
            uid: Some(1000),
            exe: "/x",
            access: Some(Access::Write),
            ..EventFields::default()
        }
        .encode(&mut buf);
        assert_eq!(buf.len(), HEADER_LEN + 4);
        assert_eq!(&buf[0..8], &(-2i64).to_le_bytes());
        assert_eq!(&buf[8..12], &7u32.to_le_bytes());
        assert_eq!(&buf[16..20], &1000u32.to_le_bytes());
        assert_eq!(&buf[28..32], &[0, 2, FLAG_UID, 1]);
        // host absent; path at 112, 2 bytes; comm absent; exe at 114, 2 bytes.
        assert_eq!(&buf[32..40], &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!(&buf[40..48], &[112, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(&buf[56..64], &[114, 0, 0, 0, 2, 0, 0, 0]);
        // No identity: dev and ino zero, canonical path absent.
        assert_eq!(&buf[88..104], &[0; 16]);
        assert_eq!(&buf[104..112], &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!(&buf[112..], b"/t/x");
        let mut buf = Vec::new();
        EventFields {
            path: "/t",
            exe: "/x",
            file_id: Some(FileId {
                dev: 0x34,
                ino: 0x0102,
            }),
            canonical_path: Some("/c"),
            ..EventFields::default()
        }
        .encode(&mut buf);
        assert_eq!(buf[30], FLAG_FILE_ID);
        assert_eq!(&buf[88..96], &0x34u64.to_le_bytes());
        assert_eq!(&buf[96..104], &0x0102u64.to_le_bytes());
        assert_eq!(&buf[104..112], &[116, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(&buf[112..], b"/t/x/c");
    }

    #[test]
    fn the_lineage_block_is_where_the_documentation_says_and_older_readers_skip_it() {
        let mut buf = Vec::new();
        sample().encode(&mut buf);
        assert_eq!(buf[30] & FLAG_LINEAGE, FLAG_LINEAGE);
        assert_eq!(buf[EXTENSION_AT], EXTENSION_IDENTITY);
        assert_eq!(&buf[112..116], &0u32.to_le_bytes());
        assert_eq!(buf[136], 2);
        assert_eq!(buf[137], LINEAGE_EUID);
        assert_eq!(&buf[144..148], &41u32.to_le_bytes());
        assert_eq!(&buf[148..152], &1000u32.to_le_bytes());
        assert_eq!(&buf[152..156], &3u32.to_le_bytes());
        assert_eq!(&buf[156..160], &ANCESTOR_UID.to_le_bytes());
        assert_eq!(&buf[176..180], &1u32.to_le_bytes());
        assert_eq!(&buf[188..192], &0u32.to_le_bytes());
        let event = Event::parse(&buf).unwrap();
        assert_eq!(event.parent().unwrap().exe, "/bin/sh");
        let args: Vec<&str> = event.parent().unwrap().args.unwrap().iter().collect();
        assert_eq!(args, ["sh", "-c", "cat token"]);
        assert_eq!(event.ancestors().as_slice()[1].uid, None);
        // What a reader built before the block sees: the same base fields, with every string
        // found through its slot past the block.
        let mut old = buf.clone();
        old[30] &= !FLAG_LINEAGE;
        let event = Event::parse(&old).unwrap();
        assert_eq!(event.exe(), "/usr/bin/cat");
        assert_eq!(event.canonical_path(), sample().canonical_path);
        assert_eq!(event.euid(), None);
        assert!(event.ancestors().is_empty());
        // Without lineage fields the block is not written.
        let mut bare = Vec::new();
        EventFields {
            path: "/t",
            exe: "/x",
            ..EventFields::default()
        }
        .encode(&mut bare);
        assert_eq!((bare.len(), bare[30] & FLAG_LINEAGE), (HEADER_LEN + 4, 0));
        // A block that claims more ancestors than there can be, or is cut short, is refused.
        let mut bad = buf.clone();
        bad[ANCESTOR_COUNT_AT] = 5;
        assert_eq!(Event::parse(&bad).unwrap_err(), LayoutError::UnknownTag);
        assert_eq!(
            Event::parse(&buf[..FULL_HEADER_LEN - 1]).unwrap_err(),
            LayoutError::Short
        );
        let mut bad = buf;
        let [exe_slot, _] = ancestor_slots(1);
        bad[exe_slot..exe_slot + 4].copy_from_slice(&u32::MAX.wrapping_sub(1).to_le_bytes());
        assert_eq!(
            Event::parse(&bad).unwrap_err(),
            LayoutError::SlotOutOfBounds
        );
    }

    #[test]
    fn a_buffer_without_the_identity_extension_still_reads() {
        // As a host before the extension wrote it: 88 bytes of header, then the strings.
        let mut buf = alloc::vec![0u8; BASE_HEADER_LEN];
        buf[8..12].copy_from_slice(&9u32.to_le_bytes());
        for index in 0..SLOTS {
            buf[slot_at(index)..slot_at(index) + 4].copy_from_slice(&ABSENT.to_le_bytes());
        }
        buf[40..48].copy_from_slice(&[88, 0, 0, 0, 2, 0, 0, 0]);
        buf.extend_from_slice(b"/t");
        let event = Event::parse(&buf).unwrap();
        assert_eq!(event.path(), "/t");
        assert_eq!(event.file_id(), None);
        assert_eq!(event.canonical_path(), None);
        buf[EXTENSION_AT] = 1;
        assert_eq!(Event::parse(&buf).unwrap_err(), LayoutError::Short);
        buf[EXTENSION_AT] = 2;
        assert_eq!(Event::parse(&buf).unwrap_err(), LayoutError::UnknownTag);
    }

    #[test]
    fn malformed_buffers_are_refused() {
        let mut buf = Vec::new();
        sample().encode(&mut buf);
        assert_eq!(Event::parse(&buf[..40]).unwrap_err(), LayoutError::Short);
        let mut bad = buf.clone();
        bad[40..44].copy_from_slice(&(buf.len() as u32 - 1).to_le_bytes());
        assert_eq!(
            Event::parse(&bad).unwrap_err(),
            LayoutError::SlotOutOfBounds
        );
        let mut bad = buf.clone();
        bad[44..48].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Event::parse(&bad).unwrap_err(),
            LayoutError::SlotOutOfBounds
        );
        let mut bad = buf;
        bad[29] = 9;
        assert_eq!(Event::parse(&bad).unwrap_err(), LayoutError::UnknownTag);
    }
}
