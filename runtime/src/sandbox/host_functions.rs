//! The host functions: what the host provides for the imports a rule may declare
//! (`picket_abi::IMPORTS`, docs/abi.md): `new_value`, `is_known`, `emit_signal`, `log`.
//!
//! Every pointer and length a module passes is checked against its memory before it is read, and
//! every string against a size bound; a bad one becomes a trap with a message naming the import
//! and argument, never a host panic or an out-of-bounds read.

use super::instance::{Context, NewValue, RaisedSignal, RuleCtx};
use crate::state::Verdict;
use picket_abi::{
    FuncSig, IMPORT_EMIT_SIGNAL, IMPORT_IS_KNOWN, IMPORT_LOG, IMPORT_MODULE, IMPORT_NEW_VALUE,
    IS_KNOWN_KNOWN, IS_KNOWN_UNKNOWN, LogLevel, MAX_CONTEXT_ENTRIES, MAX_CONTEXT_KEY_BYTES,
    MAX_LOG_LINE_BYTES as MAX_LOG_LINE, MAX_SIGNAL_BYTES, MAX_STATE_NAME_BYTES as MAX_STATE_NAME,
    MAX_STRING_BYTES as MAX_STRING, NEW_VALUE_NEW, NEW_VALUE_NOT_NEW, SignalRequest, ValType,
};
use std::fmt;
use wasmtime::{Caller, Engine, FuncType, Linker};

/// A rule misused an import; the call traps with this message.
#[derive(Debug)]
pub struct HostError(pub String);

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HostError {}

/// The linker that resolves a rule's imports, and nothing else.
pub(super) fn linker(engine: &Engine) -> anyhow::Result<Linker<RuleCtx>> {
    let mut linker = Linker::new(engine);
    let wrap = |err: wasmtime::Error| anyhow::anyhow!("defining the picket imports: {err}");
    linker
        .func_wrap(IMPORT_MODULE, IMPORT_NEW_VALUE, new_value)
        .map_err(wrap)?;
    linker
        .func_wrap(IMPORT_MODULE, IMPORT_EMIT_SIGNAL, emit_signal)
        .map_err(wrap)?;
    linker
        .func_wrap(IMPORT_MODULE, IMPORT_LOG, log)
        .map_err(wrap)?;
    linker
        .func_wrap(IMPORT_MODULE, IMPORT_IS_KNOWN, is_known)
        .map_err(wrap)?;
    Ok(linker)
}

/// Whether a wasm function type is the ABI's signature `sig`.
pub(super) fn matches(ty: &FuncType, sig: &FuncSig) -> bool {
    fn same(engine: impl ExactSizeIterator<Item = wasmtime::ValType>, abi: &[ValType]) -> bool {
        engine.len() == abi.len()
            && engine.zip(abi).all(|(ty, abi)| match abi {
                ValType::I32 => matches!(ty, wasmtime::ValType::I32),
                ValType::I64 => matches!(ty, wasmtime::ValType::I64),
            })
    }
    same(ty.params(), sig.params) && same(ty.results(), sig.results)
}

/// The `(state, group, value)` arguments of `new_value` and `is_known`, as pointer and length
/// each.
type StateQuery = (i32, i32, i32, i32, i32, i32);

/// Runs `answer` on the arguments of a `new_value` or `is_known` call, checked against the
/// module's memory and the ABI's limits, and the state lent for the call under way. Bytes, not
/// &str: the state checks UTF-8 only for what it has to learn, so the common query, for a known
/// value, validates nothing.
fn state_query(
    caller: &mut Caller<'_, RuleCtx>,
    import: &str,
    (state_ptr, state_len, group_ptr, group_len, value_ptr, value_len): StateQuery,
    answer: impl FnOnce(&mut crate::state::RuleState, i64, [&[u8]; 3]) -> Result<i32, HostError>,
) -> wasmtime::Result<i32> {
    let memory = bound_memory(caller, import)?;
    let (data, ctx) = memory.data_and_store_mut(caller);
    let arg = |ptr, len, what, limit| guest_bytes(data, ptr, len, import, what, limit);
    let query = [
        arg(state_ptr, state_len, "state name", MAX_STATE_NAME)?,
        arg(group_ptr, group_len, "group", MAX_STRING)?,
        arg(value_ptr, value_len, "value", MAX_STRING)?,
    ];
    let ts_ns = ctx.ts_ns;
    let Some(rule_state) = ctx.state.get() else {
        return Err(HostError(format!(
            "{import} was called outside a call from the host (from a start function?)"
        ))
        .into());
    };
    Ok(answer(rule_state, ts_ns, query)?)
}

fn new_value(
    mut caller: Caller<'_, RuleCtx>,
    state_ptr: i32,
    state_len: i32,
    group_ptr: i32,
    group_len: i32,
    value_ptr: i32,
    value_len: i32,
) -> wasmtime::Result<i32> {
    let args = (
        state_ptr, state_len, group_ptr, group_len, value_ptr, value_len,
    );
    state_query(
        &mut caller,
        IMPORT_NEW_VALUE,
        args,
        |rule_state, ts_ns, [state, group, value]| match rule_state
            .check_bytes(ts_ns, state, group, value)
        {
            Ok(Verdict::New) => Ok(NEW_VALUE_NEW),
            Ok(Verdict::Known | Verdict::Learning) => Ok(NEW_VALUE_NOT_NEW),
            Err(err) => Err(HostError(format!("{IMPORT_NEW_VALUE}: {err}"))),
        },
    )
}

fn is_known(
    mut caller: Caller<'_, RuleCtx>,
    state_ptr: i32,
    state_len: i32,
    group_ptr: i32,
    group_len: i32,
    value_ptr: i32,
    value_len: i32,
) -> wasmtime::Result<i32> {
    let args = (
        state_ptr, state_len, group_ptr, group_len, value_ptr, value_len,
    );
    state_query(
        &mut caller,
        IMPORT_IS_KNOWN,
        args,
        |rule_state, ts_ns, [state, group, value]| {
            Ok(if rule_state.is_known(ts_ns, state, group, value) {
                IS_KNOWN_KNOWN
            } else {
                IS_KNOWN_UNKNOWN
            })
        },
    )
}

/// The context of a signal request, checked against docs/abi.md's limits.
fn checked_context(request: &SignalRequest<'_>) -> Result<Context, HostError> {
    let entries = &request.context;
    if entries.len() > MAX_CONTEXT_ENTRIES {
        return Err(HostError(format!(
            "{IMPORT_EMIT_SIGNAL}: {} context entries, more than {MAX_CONTEXT_ENTRIES}",
            entries.len()
        )));
    }
    let mut context = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let key = entry.key;
        let well_formed = key.len() <= MAX_CONTEXT_KEY_BYTES
            && key.starts_with(|c: char| c.is_ascii_lowercase())
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
        if !well_formed {
            return Err(HostError(format!(
                "{IMPORT_EMIT_SIGNAL}: context[{i}].key {:?} is not a key (`[a-z][a-z0-9_.]*`, at \
                 most {MAX_CONTEXT_KEY_BYTES} bytes)",
                key.chars()
                    .take(MAX_CONTEXT_KEY_BYTES + 8)
                    .collect::<String>()
            )));
        }
        if entries[..i].iter().any(|earlier| earlier.key == key) {
            return Err(HostError(format!(
                "{IMPORT_EMIT_SIGNAL}: context key `{key}` is given twice"
            )));
        }
        if entry.value.len() > MAX_STRING {
            return Err(HostError(format!(
                "{IMPORT_EMIT_SIGNAL}: context `{key}` is {} bytes, more than {MAX_STRING}",
                entry.value.len()
            )));
        }
        context.push((key.to_owned(), entry.value.to_owned()));
    }
    Ok(Context(context))
}

fn emit_signal(mut caller: Caller<'_, RuleCtx>, ptr: i32, len: i32) -> wasmtime::Result<i32> {
    let memory = bound_memory(&caller, IMPORT_EMIT_SIGNAL)?;
    let (data, ctx) = memory.data_and_store_mut(&mut caller);
    if ctx.signals.len() >= ctx.limits.max_signals_per_event as usize {
        return Err(HostError(format!(
            "{IMPORT_EMIT_SIGNAL}: more than {} signals for one event (a signal flood)",
            ctx.limits.max_signals_per_event
        ))
        .into());
    }
    let bytes = guest_bytes(
        data,
        ptr,
        len,
        IMPORT_EMIT_SIGNAL,
        "signal request",
        MAX_SIGNAL_BYTES,
    )?;
    let request: SignalRequest<'_> =
        picket_abi::decode_signal_request(bytes).map_err(|failure| {
            HostError(format!(
                "{IMPORT_EMIT_SIGNAL}: the signal request is not a valid encoding: {failure} (the \
             encoding: docs/abi.md#signal-request)"
            ))
        })?;
    let new_value = match request.new_value {
        None => None,
        Some(nv) => {
            for (what, text) in [
                ("field", nv.field),
                ("value", nv.value),
                ("group", nv.group),
            ] {
                if text.len() > MAX_STRING {
                    return Err(HostError(format!(
                        "{IMPORT_EMIT_SIGNAL}: new_value.{what} is {} bytes, more than {MAX_STRING}",
                        text.len()
                    ))
                    .into());
                }
            }
            Some(NewValue {
                field: nv.field.to_owned(),
                value: nv.value.to_owned(),
                group: nv.group.to_owned(),
            })
        }
    };
    let context = checked_context(&request)?;
    ctx.signals.push(RaisedSignal { new_value, context });
    Ok(0)
}

fn log(mut caller: Caller<'_, RuleCtx>, level: i32, ptr: i32, len: i32) -> wasmtime::Result<()> {
    let memory = bound_memory(&caller, IMPORT_LOG)?;
    let (data, ctx) = memory.data_and_store_mut(&mut caller);
    // A long line is cut rather than refused: logging must not be what makes a rule fail.
    let len = len.clamp(0, MAX_LOG_LINE as i32);
    let bytes = guest_bytes(data, ptr, len, IMPORT_LOG, "message", MAX_LOG_LINE)?;
    // Control characters escaped: a rule's text must not start a line of its own in the log
    // (forging a host message) or drive a terminal.
    let text = String::from_utf8_lossy(bytes);
    let level = LogLevel::from_raw(level);
    if level == LogLevel::Panic {
        // A panic message is the reason of one failure, reported on one line: its own line
        // breaks (a message over several lines, from any language) become spaces rather than
        // a literal `\n`.
        let one_line: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        ctx.panic_message = Some(crate::text::escape_controls(&one_line.join(" ")));
        return Ok(());
    }
    let message = crate::text::escape_controls(&text);
    if ctx.logs_this_event >= ctx.limits.max_logs_per_event {
        if ctx.logs_this_event == ctx.limits.max_logs_per_event {
            // Said once per event, so that the report of a flood is not a flood itself.
            tracing::warn!(
                rule = &*ctx.rule_id,
                "rule wrote more than {} log lines for one event; the rest of this event's are dropped",
                ctx.limits.max_logs_per_event
            );
            ctx.logs_this_event += 1;
        }
        return Ok(());
    }
    ctx.logs_this_event += 1;
    let rule = &*ctx.rule_id;
    match level {
        LogLevel::Error => tracing::error!(rule, "{message}"),
        LogLevel::Warn => tracing::warn!(rule, "{message}"),
        LogLevel::Info => tracing::info!(rule, "{message}"),
        LogLevel::Debug => tracing::debug!(rule, "{message}"),
        LogLevel::Panic => unreachable!("handled above"),
    }
    Ok(())
}

fn bound_memory(caller: &Caller<'_, RuleCtx>, import: &str) -> Result<wasmtime::Memory, HostError> {
    caller.data().memory.ok_or_else(|| {
        HostError(format!(
            "{import} was called before the module's memory was bound (from a start function?)"
        ))
    })
}

fn guest_bytes<'m>(
    data: &'m [u8],
    ptr: i32,
    len: i32,
    import: &str,
    what: &str,
    limit: usize,
) -> Result<&'m [u8], HostError> {
    // Wasm passes addresses and sizes as i32 but means them unsigned.
    let (start, len) = (ptr as u32 as usize, len as u32 as usize);
    if len > limit {
        return Err(HostError(format!(
            "{import}: {what} is {len} bytes, more than the {limit} allowed"
        )));
    }
    start
        .checked_add(len)
        .and_then(|end| data.get(start..end))
        .ok_or_else(|| {
            HostError(format!(
                "{import}: {what} at {start:#x} (+{len} bytes) lies outside the module's {}-byte memory",
                data.len()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::test_module;
    use picket_abi::ContextEntry;

    fn context_of(entries: &[(&'static str, &'static str)]) -> Result<Context, HostError> {
        checked_context(&SignalRequest {
            new_value: None,
            context: entries
                .iter()
                .map(|&(key, value)| ContextEntry { key, value })
                .collect(),
        })
    }

    #[test]
    fn context_is_kept_in_order_and_held_to_the_limits() {
        let context = context_of(&[("process.chain", "a <- b"), ("user_2", "")]).unwrap();
        assert_eq!(
            context.0,
            [
                ("process.chain".to_string(), "a <- b".to_string()),
                ("user_2".to_string(), String::new())
            ]
        );
        for (entries, says) in [
            (&[("Upper", "v")][..], "is not a key"),
            (&[("9lives", "v")][..], "is not a key"),
            (&[("a\nforged", "v")][..], "is not a key"),
            (&[("", "v")][..], "is not a key"),
            (&[("k", "1"), ("k", "2")][..], "given twice"),
        ] {
            let err = context_of(entries).unwrap_err().to_string();
            assert!(err.contains(says), "{entries:?}: {err}");
        }
        let long: &'static str = "x".repeat(MAX_STRING + 1).leak();
        let err = context_of(&[("k", long)]).unwrap_err().to_string();
        assert!(err.contains("more than 4096"), "{err}");
        let many: Vec<(&'static str, &'static str)> = (0..=MAX_CONTEXT_ENTRIES)
            .map(|i| (&*format!("k{i}").leak(), "v"))
            .collect();
        let err = context_of(&many).unwrap_err().to_string();
        assert!(err.contains("context entries, more than 16"), "{err}");
    }

    /// The functions defined here are the ABI's imports, with its signatures: a module that
    /// imports all of them as `picket_abi::IMPORTS` says links, and one with a signature off
    /// by one parameter does not.
    #[test]
    fn the_linker_provides_the_abi_imports() {
        let engine = Engine::default();
        let linker = linker(&engine).unwrap();
        let wat = test_module::wat_importing(picket_abi::IMPORTS);
        let module = wasmtime::Module::new(&engine, wat::parse_str(&wat).unwrap()).unwrap();
        linker.instantiate_pre(&module).unwrap();
        for import in module.imports() {
            let sig = picket_abi::IMPORTS.iter().find(|s| s.name == import.name());
            let ty = import.ty().func().cloned().unwrap();
            assert!(matches(&ty, sig.unwrap()), "{}", import.name());
        }

        let mut wrong = picket_abi::IMPORTS[1];
        wrong.params = &[ValType::I32];
        let wat = test_module::wat_importing(&[wrong]);
        let module = wasmtime::Module::new(&engine, wat::parse_str(&wat).unwrap()).unwrap();
        assert!(linker.instantiate_pre(&module).is_err());
        let ty = module
            .imports()
            .next()
            .unwrap()
            .ty()
            .func()
            .cloned()
            .unwrap();
        assert!(!matches(&ty, &picket_abi::IMPORTS[1]));
    }

    #[test]
    fn pointers_are_checked_against_memory() {
        let memory = [0u8; 64];
        assert!(guest_bytes(&memory, 0, 64, "i", "x", 100).is_ok());
        assert!(guest_bytes(&memory, 1, 64, "i", "x", 100).is_err());
        assert!(guest_bytes(&memory, -1, 2, "i", "x", 100).is_err());
        assert!(guest_bytes(&memory, 60, -1, "i", "x", usize::MAX).is_err());
        assert!(guest_bytes(&memory, 0, 65, "i", "x", 64).is_err());
        let err = guest_bytes(&memory, 0x7fff_fff0, 32, "new_value", "group", 100).unwrap_err();
        assert!(err.0.contains("new_value: group at 0x7ffffff0"), "{err}");
    }
}
