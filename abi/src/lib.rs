//! The binary interface between picket's host and its WebAssembly rule modules.
//!
//! Both sides depend on this crate, so the exported names, the import names, the ABI version and
//! the wire types are defined exactly once. `docs/abi.md` describes the same contract for authors
//! who write rules in other languages.
//!
//! Events, the hot path, use a flat layout that rules read in place ([`Event`]); the manifest and
//! signal requests are encoded with bincode 2 in one fixed configuration, [`CONFIG`]: little
//! endian, variable-length integers.
#![warn(missing_docs)]
#![no_std]

extern crate alloc;

mod event;
mod explain;

pub use event::{
    AncestorFields, Ancestors, BASE_HEADER_LEN, Event, EventFields, FULL_HEADER_LEN, FileId,
    HEADER_LEN, LINEAGE_DEPTH, LINEAGE_LEN, LayoutError,
};
pub use explain::{DecodeFailure, decode_manifest, decode_signal_request};

use alloc::string::String;
use alloc::vec::Vec;
use bincode::enc::write::Writer;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};

/// Version of this interface. A module reports the version it was built against through
/// [`EXPORT_ABI_VERSION`]; the host refuses any other.
pub const ABI_VERSION: u32 = 1;

/// Name of the import module under which the host provides its functions.
pub const IMPORT_MODULE: &str = "picket";

/// A WebAssembly value type in an import or export signature. The host maps it to its wasm
/// engine's type; this crate stays free of any engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValType {
    /// A 32-bit integer (pointers and lengths in wasm32 memory too).
    I32,
    /// A 64-bit integer.
    I64,
}

impl ValType {
    /// The name used in the WebAssembly text format.
    pub const fn as_str(self) -> &'static str {
        match self {
            ValType::I32 => "i32",
            ValType::I64 => "i64",
        }
    }
}

/// The name and signature of a function across the boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuncSig {
    /// The import or export name.
    pub name: &'static str,
    /// Parameter types, in order.
    pub params: &'static [ValType],
    /// Result types, in order.
    pub results: &'static [ValType],
}

impl core::fmt::Display for FuncSig {
    /// `(i32, i32) -> (i32)`: the signature, as load errors print it.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let list = |f: &mut core::fmt::Formatter<'_>, types: &[ValType]| {
            for (i, ty) in types.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                f.write_str(ty.as_str())?;
            }
            Ok(())
        };
        f.write_str("(")?;
        list(f, self.params)?;
        f.write_str(") -> (")?;
        list(f, self.results)?;
        f.write_str(")")
    }
}

#[doc(hidden)]
#[macro_export]
macro_rules! __val_type {
    (i32) => {
        $crate::ValType::I32
    };
    (i64) => {
        $crate::ValType::I64
    };
}

/// Builds a `&[FuncSig]` from the declarations [`for_each_import!`] hands over.
#[doc(hidden)]
#[macro_export]
macro_rules! __func_table {
    ($( $(#[$doc:meta])* fn $name:ident ( $($param:ident : $pty:ident),* ) $(-> $rty:ident)? ;)*) => {
        &[$(
            $crate::FuncSig {
                name: stringify!($name),
                params: &[$($crate::__val_type!($pty)),*],
                results: &[$($crate::__val_type!($rty))?],
            }
        ),*]
    };
}

/// The functions the host provides under [`IMPORT_MODULE`], declared once: this crate's
/// [`IMPORTS`] table and the SDK's `extern` block are both generated from this list, so the two
/// sides cannot disagree. Passes the declarations, as `fn name(param: type, ...) -> type;` with
/// `i32`/`i64` types, to the macro named `$then`.
#[macro_export]
macro_rules! for_each_import {
    ($then:ident) => {
        $then! {
            /// `(state, group, value)`: asks whether `value` is new for `group` in the named
            /// new-value state; returns [`NEW_VALUE_NEW`] or [`NEW_VALUE_NOT_NEW`]. All three
            /// are UTF-8 strings, each given as pointer and length.
            fn new_value(
                state_ptr: i32,
                state_len: i32,
                group_ptr: i32,
                group_len: i32,
                value_ptr: i32,
                value_len: i32
            ) -> i32;
            /// Raises the encoded [`SignalRequest`] for the event being handled; returns 0.
            fn emit_signal(ptr: i32, len: i32) -> i32;
            /// A UTF-8 log line; `level` is a [`LogLevel`].
            fn log(level: i32, ptr: i32, len: i32);
            /// `(state, group, value)`: whether `value` is known for `group` in the named
            /// new-value state, without learning it; returns [`IS_KNOWN_KNOWN`] or
            /// [`IS_KNOWN_UNKNOWN`]. Nothing changes: no value is learned or refreshed, no group
            /// starts learning. (Added in ABI 1 after the first three; a module that does not
            /// call it does not import it, and loads on hosts that lack it.)
            fn is_known(
                state_ptr: i32,
                state_len: i32,
                group_ptr: i32,
                group_len: i32,
                value_ptr: i32,
                value_len: i32
            ) -> i32;
        }
    };
}

/// Every function a rule may import from [`IMPORT_MODULE`], with its signature.
pub const IMPORTS: &[FuncSig] = for_each_import!(__func_table);

/// The name of the `new_value` import; its signature and meaning are in [`for_each_import!`].
pub const IMPORT_NEW_VALUE: &str = IMPORTS[0].name;
/// The name of the `emit_signal` import; its signature and meaning are in [`for_each_import!`].
pub const IMPORT_EMIT_SIGNAL: &str = IMPORTS[1].name;
/// The name of the `log` import; its signature and meaning are in [`for_each_import!`].
pub const IMPORT_LOG: &str = IMPORTS[2].name;
/// The name of the `is_known` import; its signature and meaning are in [`for_each_import!`].
pub const IMPORT_IS_KNOWN: &str = IMPORTS[3].name;

/// Export: `() -> i32`, the [`ABI_VERSION`] the module was built against.
pub const EXPORT_ABI_VERSION: &str = "picket_abi_version";
/// Export: `() -> i64`, the encoded [`Manifest`] as `ptr << 32 | len` in the module's memory.
pub const EXPORT_MANIFEST: &str = "picket_manifest";
/// Export: `(len: i32) -> i32`, a buffer of at least `len` bytes for the host to write an event
/// into. The buffer stays valid until the next call of this export.
pub const EXPORT_ALLOC: &str = "picket_alloc";
/// Export: `(ptr: i32, len: i32) -> i32`, handle one encoded [`Event`]; returns
/// [`HANDLER_OK`] or a rule-defined nonzero error code.
pub const EXPORT_ON_EVENT: &str = "picket_on_event";
/// Export: the module's linear memory.
pub const EXPORT_MEMORY: &str = "memory";

/// Every function a rule module must export, with its signature (besides [`EXPORT_MEMORY`]).
pub const EXPORTS: &[FuncSig] = {
    use ValType::{I32, I64};
    &[
        FuncSig {
            name: EXPORT_ABI_VERSION,
            params: &[],
            results: &[I32],
        },
        FuncSig {
            name: EXPORT_MANIFEST,
            params: &[],
            results: &[I64],
        },
        FuncSig {
            name: EXPORT_ALLOC,
            params: &[I32],
            results: &[I32],
        },
        FuncSig {
            name: EXPORT_ON_EVENT,
            params: &[I32, I32],
            results: &[I32],
        },
    ]
};

/// What `picket_on_event` returns when the event was handled.
pub const HANDLER_OK: i32 = 0;
/// `picket_on_event` return value: the event bytes could not be decoded.
pub const HANDLER_BAD_EVENT: i32 = 1;
/// `new_value` answer: the value is new (and the host has now learned it).
pub const NEW_VALUE_NEW: i32 = 1;
/// `new_value` answer: the value is known, or the group is still learning.
pub const NEW_VALUE_NOT_NEW: i32 = 0;
/// `is_known` answer: the value is known (learned, and not forgotten).
pub const IS_KNOWN_KNOWN: i32 = 1;
/// `is_known` answer: the value is not known (never seen, forgotten, or evicted).
pub const IS_KNOWN_UNKNOWN: i32 = 0;

/// Largest encoded manifest the host accepts.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// Largest encoded signal request the host accepts.
pub const MAX_SIGNAL_BYTES: usize = 64 * 1024;
/// Longest new-value state name `new_value` accepts.
pub const MAX_STATE_NAME_BYTES: usize = 128;
/// Longest group or value `new_value` accepts, and longest field of a signal's new value
/// (Linux's PATH_MAX).
pub const MAX_STRING_BYTES: usize = 4096;
/// Longest log line kept; a longer one is cut, not refused.
pub const MAX_LOG_LINE_BYTES: usize = 4096;
/// Most distinct new-value state names one rule may use.
pub const MAX_STATES_PER_RULE: usize = 64;
/// Signals a rule may raise for one event unless the operator sets another bound; one more
/// traps the call as a signal flood.
pub const DEFAULT_MAX_SIGNALS_PER_EVENT: u32 = 16;
/// Longest basename a manifest may subscribe to: the kernel prefilter keys names of up to this
/// many bytes (plus a NUL).
pub const MAX_BASENAME_BYTES: usize = 63;
/// Most basenames one manifest may subscribe to.
pub const MAX_BASENAMES: usize = 64;
/// Most path prefixes one manifest may subscribe to.
pub const MAX_PATH_PREFIXES: usize = 64;
/// Longest path prefix a manifest may give.
pub const MAX_PATH_PREFIX_BYTES: usize = 4096;
/// Longest rule id.
pub const MAX_RULE_ID_BYTES: usize = 64;
/// Most key-value pairs of context one signal may carry.
pub const MAX_CONTEXT_ENTRIES: usize = 16;
/// Longest context key (`[a-z0-9_.]`, starting with a letter).
pub const MAX_CONTEXT_KEY_BYTES: usize = 64;

/// The one bincode configuration used on both sides of the boundary.
pub const CONFIG: bincode::config::Configuration = bincode::config::standard();

/// How severe a rule's signals are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Severity {
    /// Worth recording; not worth waking anyone for.
    Info,
    /// Unusual, low impact.
    Low,
    /// Likely malicious or risky; investigate.
    Medium,
    /// Malicious with high impact; investigate now.
    High,
    /// Compromise in progress.
    Critical,
}

impl Severity {
    /// The lower-case name used in signals.
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// Kinds of events: what a rule subscribes to, and an event's `kind` in JSON (`open`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Encode, Decode)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum EventKind {
    /// A file was opened.
    #[default]
    Open,
}

impl EventKind {
    /// The name used in event JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::Open => "open",
        }
    }
}

/// How a file was opened: the rule ABI's byte, an event's `file.access` in JSON (`read`,
/// `write`, `read_write`), and what the probes report. An open that is neither readable nor
/// writable (`O_RDONLY|O_WRONLY`, ioctl-only opens of devices) has no `Access`: the probes report
/// `None` and the JSON has no `access`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Access {
    /// Opened for reading only.
    Read,
    /// Opened for writing only.
    Write,
    /// Opened for reading and writing.
    ReadWrite,
}

impl Access {
    /// The name used in event JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "read_write",
        }
    }
}

/// Which events a rule wants. The host, and the kernel where it can, drop every other event
/// before the rule runs.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Subscription {
    /// Event kinds the rule handles.
    pub kinds: Vec<EventKind>,
    /// File basenames (the last path component, after links are resolved) the rule handles.
    /// Empty means every file, which disables the kernel prefilter for this rule.
    pub basenames: Vec<String>,
    /// Path prefixes the rule handles; an event whose resolved path starts with none of them
    /// never enters the rule. Empty means any path.
    pub path_prefixes: Vec<String>,
}

/// Defaults for the rule's new-value states; an operator may override them per run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct NewValueDefaults {
    /// Nanoseconds from a group's first event during which values are learned silently.
    pub learning_period_ns: u64,
    /// Nanoseconds after which an unseen value is forgotten.
    pub forget_after_ns: u64,
}

/// What a rule module says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Stable identifier, `[a-z0-9][a-z0-9-]*`; new-value state is kept under it.
    pub id: String,
    /// One-line title carried by every signal.
    pub title: String,
    /// What the rule detects and why it matters.
    pub description: String,
    /// Severity of the rule's signals.
    pub severity: Severity,
    /// MITRE ATT&CK tactic, such as `TA0006-credential-access`.
    pub tactic: String,
    /// MITRE ATT&CK technique, such as `T1552-unsecured-credentials`.
    pub technique: String,
    /// The events the rule handles.
    pub subscription: Subscription,
    /// New-value defaults.
    pub new_value: NewValueDefaults,
    /// States whose learning settings differ from [`Manifest::new_value`]. Optional on the
    /// wire: an encoding that ends after `new_value` (every module built before it existed)
    /// decodes with none.
    pub states: Vec<StateSettings>,
}

/// The learning settings of one new-value state, in place of the rule's defaults.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct StateSettings {
    /// The state's name, as the rule gives it to `new_value` (at most
    /// [`MAX_STATE_NAME_BYTES`]); each listed once.
    pub name: String,
    /// Nanoseconds from a group's first event during which the state's values are learned
    /// silently.
    pub learning_period_ns: u64,
    /// Nanoseconds after which an unseen value of the state is forgotten.
    pub forget_after_ns: u64,
}

/// Whether bytes follow in what is being decoded: the optional trailing fields of
/// [`Manifest`] and [`SignalRequest`] are read only when they do. Only a slice reader can tell
/// (the host and SDK decode from slices); any other reads as ended.
fn more_follows<R: bincode::de::read::Reader>(reader: &mut R) -> bool {
    reader.peek_read(1).is_some()
}

impl Encode for Manifest {
    fn encode<E: bincode::enc::Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.id.encode(encoder)?;
        self.title.encode(encoder)?;
        self.description.encode(encoder)?;
        self.severity.encode(encoder)?;
        self.tactic.encode(encoder)?;
        self.technique.encode(encoder)?;
        self.subscription.encode(encoder)?;
        self.new_value.encode(encoder)?;
        // Left out when empty, so that a host older than the field loads the module.
        if !self.states.is_empty() {
            self.states.encode(encoder)?;
        }
        Ok(())
    }
}

impl<Context> Decode<Context> for Manifest {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Ok(Manifest {
            id: Decode::decode(decoder)?,
            title: Decode::decode(decoder)?,
            description: Decode::decode(decoder)?,
            severity: Decode::decode(decoder)?,
            tactic: Decode::decode(decoder)?,
            technique: Decode::decode(decoder)?,
            subscription: Decode::decode(decoder)?,
            new_value: Decode::decode(decoder)?,
            states: if more_follows(decoder.reader()) {
                Decode::decode(decoder)?
            } else {
                Vec::new()
            },
        })
    }
}

/// A command line kept as its arguments joined by NUL bytes, which no Linux argument can contain;
/// iterating it allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Args<'a> {
    joined: &'a str,
    count: u32,
}

impl<'a> Args<'a> {
    /// Wraps arguments already joined by NUL bytes.
    pub fn from_joined(joined: &'a str, count: u32) -> Self {
        Args { joined, count }
    }

    /// The arguments joined by NUL bytes.
    pub fn joined(&self) -> &'a str {
        self.joined
    }

    /// Number of arguments.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether there are no arguments.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The arguments in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        let joined = self.joined;
        let count = self.count as usize;
        joined.split('\0').take(count)
    }
}

/// The new value behind a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, BorrowDecode)]
pub struct NewValueView<'a> {
    /// The event field the value came from, such as `process.exe`.
    pub field: &'a str,
    /// The unfamiliar value.
    pub value: &'a str,
    /// The group it was unfamiliar in.
    pub group: &'a str,
}

/// One key-value pair of a signal's context: what the rule wants the reader of the signal to
/// see first (the reader's parent, its user...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, BorrowDecode)]
pub struct ContextEntry<'a> {
    /// `[a-z][a-z0-9_.]*`, at most [`MAX_CONTEXT_KEY_BYTES`]; each key once per signal.
    pub key: &'a str,
    /// At most [`MAX_STRING_BYTES`].
    pub value: &'a str,
}

/// What a rule sends with `emit_signal`. The host adds the rule's manifest fields and the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalRequest<'a> {
    /// The new value that raised the signal, for new-value rules.
    pub new_value: Option<NewValueView<'a>>,
    /// Key-value context, in the rule's order (at most [`MAX_CONTEXT_ENTRIES`]). Optional on the
    /// wire: a request that ends after `new_value` has none.
    pub context: Vec<ContextEntry<'a>>,
}

impl Encode for SignalRequest<'_> {
    fn encode<E: bincode::enc::Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.new_value.encode(encoder)?;
        // Left out when empty, so that a host older than the field takes the signal.
        if !self.context.is_empty() {
            self.context.encode(encoder)?;
        }
        Ok(())
    }
}

impl<'de, Context> BorrowDecode<'de, Context> for SignalRequest<'de> {
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Ok(SignalRequest {
            new_value: BorrowDecode::borrow_decode(decoder)?,
            context: if more_follows(decoder.reader()) {
                BorrowDecode::borrow_decode(decoder)?
            } else {
                Vec::new()
            },
        })
    }
}

/// Levels of the `log` import.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum LogLevel {
    /// Something failed.
    Error = 0,
    /// Something looks wrong.
    Warn = 1,
    /// Routine information.
    Info = 2,
    /// Detail for rule authors.
    Debug = 3,
    /// The message of a panic that is about to trap; the host reports it as the reason for the
    /// failure instead of as a log line.
    Panic = 4,
}

impl LogLevel {
    /// The level for a raw import argument; unknown values read as `Info`.
    pub fn from_raw(raw: i32) -> LogLevel {
        match raw {
            0 => LogLevel::Error,
            1 => LogLevel::Warn,
            3 => LogLevel::Debug,
            4 => LogLevel::Panic,
            _ => LogLevel::Info,
        }
    }
}

/// Packs a pointer and a length into the `i64` that `picket_manifest` returns.
pub const fn pack_ptr_len(ptr: u32, len: u32) -> i64 {
    (((ptr as u64) << 32) | len as u64) as i64
}

/// Splits what `picket_manifest` returns into pointer and length.
pub const fn unpack_ptr_len(packed: i64) -> (u32, u32) {
    let packed = packed as u64;
    ((packed >> 32) as u32, packed as u32)
}

/// Appends the encoding of `value` to `buf`, reusing its allocation.
pub fn encode_into_vec<T: Encode>(value: &T, buf: &mut Vec<u8>) -> Result<usize, EncodeError> {
    struct VecWriter<'b>(&'b mut Vec<u8>);
    impl Writer for VecWriter<'_> {
        fn write(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
            self.0.extend_from_slice(bytes);
            Ok(())
        }
    }
    let start = buf.len();
    bincode::encode_into_writer(value, VecWriter(buf), CONFIG)?;
    Ok(buf.len() - start)
}

/// Decodes a value that borrows from `bytes`, refusing trailing bytes.
pub fn decode_borrowed<'a, T: BorrowDecode<'a, ()>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    let (value, used) = bincode::borrow_decode_from_slice(bytes, CONFIG)?;
    if used != bytes.len() {
        return Err(DecodeError::OtherString(alloc::format!(
            "{} trailing bytes after the value",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// Decodes an owned value, refusing trailing bytes.
pub fn decode_owned<T: Decode<()>>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, used) = bincode::decode_from_slice(bytes, CONFIG)?;
    if used != bytes.len() {
        return Err(DecodeError::OtherString(alloc::format!(
            "{} trailing bytes after the value",
            bytes.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the wire format that docs/abi.md describes for authors in other languages.
    #[test]
    fn wire_format_matches_the_documentation() {
        let mut buf = Vec::new();
        let request = SignalRequest {
            new_value: Some(NewValueView {
                field: "f",
                value: "v",
                group: "g",
            }),
            context: Vec::new(),
        };
        encode_into_vec(&request, &mut buf).unwrap();
        assert_eq!(buf, [1, 1, b'f', 1, b'v', 1, b'g']);
        // With context: the list follows, as a length and (key, value) pairs.
        buf.clear();
        let with_context = SignalRequest {
            context: alloc::vec![ContextEntry {
                key: "k",
                value: "v"
            }],
            ..request
        };
        encode_into_vec(&with_context, &mut buf).unwrap();
        assert_eq!(buf, [1, 1, b'f', 1, b'v', 1, b'g', 1, 1, b'k', 1, b'v']);
        assert_eq!(
            decode_borrowed::<SignalRequest<'_>>(&buf).unwrap(),
            with_context
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut buf = Vec::new();
        encode_into_vec(
            &SignalRequest {
                new_value: None,
                context: Vec::new(),
            },
            &mut buf,
        )
        .unwrap();
        // An empty context list, then a byte too many.
        buf.extend([0, 9]);
        assert!(decode_borrowed::<SignalRequest<'_>>(&buf).is_err());
    }

    #[test]
    fn import_names_and_signatures_come_from_one_list() {
        use alloc::string::ToString;
        let names: Vec<&str> = IMPORTS.iter().map(|f| f.name).collect();
        assert_eq!(
            names,
            [
                IMPORT_NEW_VALUE,
                IMPORT_EMIT_SIGNAL,
                IMPORT_LOG,
                IMPORT_IS_KNOWN
            ]
        );
        assert_eq!(names, ["new_value", "emit_signal", "log", "is_known"]);
        assert_eq!(
            IMPORTS[0].to_string(),
            "(i32, i32, i32, i32, i32, i32) -> (i32)"
        );
        assert_eq!(IMPORTS[2].to_string(), "(i32, i32, i32) -> ()");
        assert_eq!(EXPORTS[1].to_string(), "() -> (i64)");
    }

    #[test]
    fn ptr_len_packing_round_trips() {
        assert_eq!(
            unpack_ptr_len(pack_ptr_len(0xdead_beef, 17)),
            (0xdead_beef, 17)
        );
    }
}
