//! One running rule: a wasmtime store and instance, and the calls that hand it events.

use super::host_functions::HostError;
use super::{Limits, Sandbox};
use crate::state::RuleState;
use picket_abi::{EXPORT_ALLOC, EXPORT_MEMORY, EXPORT_ON_EVENT, HANDLER_BAD_EVENT, HANDLER_OK};
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;
use wasmtime::{Instance, InstancePre, Memory, ResourceLimiter, Store, Trap, TypedFunc};

/// The new value behind a raised signal; serialized as the signal's `new_value` (docs/signals.md).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NewValue {
    /// The event field the value came from.
    pub field: String,
    /// The value.
    pub value: String,
    /// The group it was new in.
    pub group: String,
}

/// Key-value context a rule attached to a signal, in the rule's order, each key once; written
/// as the signal's `context` object (docs/signals.md).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context(pub Vec<(String, String)>);

impl Context {
    /// Whether the rule attached none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl serde::Serialize for Context {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// A signal a rule raised for the event being handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaisedSignal {
    /// The new value behind it, if the rule gave one.
    pub new_value: Option<NewValue>,
    /// The context the rule attached.
    pub context: Context,
}

/// Why a rule failed on one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleError {
    /// The call ran past its deadline and was interrupted.
    Timeout(std::time::Duration),
    /// The module asked for more memory than its cap.
    MemoryCap {
        /// Bytes it asked for.
        requested: usize,
        /// The cap.
        cap: usize,
    },
    /// The module panicked (its panic message, when it logged one).
    Panic(Option<String>),
    /// The module misused an import.
    Host(String),
    /// Any other trap.
    Trap(String),
    /// The handler returned a nonzero code.
    Handler(i32),
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleError::Timeout(limit) => write!(f, "interrupted after running past {limit:?}"),
            RuleError::MemoryCap { requested, cap } => write!(
                f,
                "memory limit exceeded: asked for {requested} bytes, the cap is {cap}"
            ),
            RuleError::Panic(Some(message)) => f.write_str(message),
            RuleError::Panic(None) => f.write_str("trapped on `unreachable` (a panic or abort)"),
            RuleError::Host(message) => f.write_str(message),
            RuleError::Trap(message) => write!(f, "trapped: {message}"),
            RuleError::Handler(HANDLER_BAD_EVENT) => {
                f.write_str("handler could not decode the event (ABI mismatch?)")
            }
            RuleError::Handler(code) => write!(f, "handler returned error code {code}"),
        }
    }
}

/// Store data: what the host imports work on during a call.
pub(super) struct RuleCtx {
    pub(super) rule_id: Arc<str>,
    pub(super) limits: Arc<Limits>,
    pub(super) limiter: MemoryCap,
    pub(super) memory: Option<Memory>,
    pub(super) state: LentState,
    pub(super) ts_ns: i64,
    pub(super) signals: Vec<RaisedSignal>,
    pub(super) logs_this_event: u32,
    pub(super) panic_message: Option<String>,
}

/// The rule's new-value state while it is lent to the instance for one call; empty otherwise.
///
/// The state stays with its owner (`RuleStates`): only a pointer to it enters the wasmtime
/// store, for the length of [`RuleInstance::lending`], so a trap or a panic cannot lose it and
/// no placeholder state is ever swapped in.
#[derive(Default)]
pub(super) struct LentState(Option<NonNull<RuleState>>);

// SAFETY: the pointer is set only inside `RuleInstance::lending`, which holds the `&mut RuleState`
// it came from for as long as the pointer is set, on the thread that makes the call; moving the
// store to another thread between calls moves only an empty `LentState`.
unsafe impl Send for LentState {}
// SAFETY: as above; the state is reached only through `&mut LentState`.
unsafe impl Sync for LentState {}

impl LentState {
    /// The lent state, if a call is under way.
    pub(super) fn get(&mut self) -> Option<&mut RuleState> {
        // SAFETY: non-null only while `RuleInstance::lending` holds the exclusive borrow of the
        // state (see the `Send` impl); the returned borrow is tied to `&mut self`, so no two
        // borrows of the state exist at once.
        self.0.map(|mut state| unsafe { state.as_mut() })
    }
}

/// Caps linear memory and tables, recording what was refused for the error message.
pub(super) struct MemoryCap {
    cap: usize,
    refused: Option<usize>,
}

/// Most table elements a module may have (Rust modules use a few hundred).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.refused = Some(desired);
            // An error (rather than `false`) traps at once with a clear cause instead of handing
            // the module a failed grow it would turn into an anonymous abort.
            return Err(HostError(format!(
                "memory limit exceeded: asked for {desired} bytes, the cap is {}",
                self.cap
            ))
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }

    fn memories(&self) -> usize {
        1
    }
}

/// An instantiated rule module, ready to handle events.
pub struct RuleInstance {
    store: Store<RuleCtx>,
    instance: Instance,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    on_event: TypedFunc<(i32, i32), i32>,
    /// The module's input buffer: address and capacity.
    input: Option<(u32, u32)>,
    deadline_ticks: u64,
    timeout: std::time::Duration,
    /// A trap can leave the module's own memory inconsistent, so the instance is not reused.
    poisoned: bool,
}

impl RuleInstance {
    /// Instantiates a module whose imports were resolved ahead of time (`pre`) for the rule
    /// `rule_id`.
    pub(super) fn new(
        sandbox: &Sandbox,
        pre: &InstancePre<RuleCtx>,
        rule_id: Arc<str>,
    ) -> Result<RuleInstance, RuleError> {
        let limits = Arc::clone(&sandbox.limits);
        let ctx = RuleCtx {
            rule_id,
            limiter: MemoryCap {
                cap: limits.memory_bytes,
                refused: None,
            },
            limits,
            memory: None,
            state: LentState::default(),
            ts_ns: 0,
            signals: Vec::new(),
            logs_this_event: 0,
            panic_message: None,
        };
        let mut store = Store::new(&sandbox.engine, ctx);
        store.limiter(|ctx| &mut ctx.limiter);
        let deadline_ticks = sandbox.deadline_ticks();
        let timeout = sandbox.limits.timeout;
        store.set_epoch_deadline(deadline_ticks);
        let instance = match pre.instantiate(&mut store) {
            Ok(instance) => instance,
            Err(err) => return Err(classify(&mut store, &err, timeout)),
        };
        match Self::exports(&mut store, &instance) {
            Ok((memory, alloc, on_event)) => {
                store.data_mut().memory = Some(memory);
                Ok(RuleInstance {
                    store,
                    instance,
                    memory,
                    alloc,
                    on_event,
                    input: None,
                    deadline_ticks,
                    timeout,
                    poisoned: false,
                })
            }
            Err(message) => Err(RuleError::Host(message)),
        }
    }

    #[allow(clippy::type_complexity)]
    fn exports(
        store: &mut Store<RuleCtx>,
        instance: &Instance,
    ) -> Result<(Memory, TypedFunc<i32, i32>, TypedFunc<(i32, i32), i32>), String> {
        let memory = instance
            .get_memory(&mut *store, EXPORT_MEMORY)
            .ok_or_else(|| format!("no exported memory named `{EXPORT_MEMORY}`"))?;
        let alloc = instance
            .get_typed_func(&mut *store, EXPORT_ALLOC)
            .map_err(|err| format!("export `{EXPORT_ALLOC}`: {err}"))?;
        let on_event = instance
            .get_typed_func(&mut *store, EXPORT_ON_EVENT)
            .map_err(|err| format!("export `{EXPORT_ON_EVENT}`: {err}"))?;
        Ok((memory, alloc, on_event))
    }

    /// Calls a `() -> R` export under the deadline, with `state` lent for the call (the ABI
    /// version and manifest exports, called once per load).
    pub(super) fn call_nullary<R: wasmtime::WasmResults>(
        &mut self,
        name: &str,
        state: &mut RuleState,
    ) -> Result<R, RuleError> {
        let func = self
            .instance
            .get_typed_func::<(), R>(&mut self.store, name)
            .map_err(|err| RuleError::Host(format!("export `{name}`: {err}")))?;
        self.store.set_epoch_deadline(self.deadline_ticks);
        self.lending(state, |this| {
            func.call(&mut this.store, ())
                .map_err(|err| classify(&mut this.store, &err, this.timeout))
        })
    }

    /// Runs `call` with `state` lent to the imports, and takes it back however `call` ends: a
    /// trap returns normally, and a panic is caught just long enough to clear the loan. This is
    /// the one place a state enters the store.
    fn lending<R>(&mut self, state: &mut RuleState, call: impl FnOnce(&mut Self) -> R) -> R {
        self.store.data_mut().state = LentState(Some(NonNull::from(state)));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(&mut *self)));
        self.store.data_mut().state = LentState(None);
        result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// The bytes of the module's memory (to read what an export returned).
    pub(super) fn memory_bytes(&self) -> &[u8] {
        self.memory.data(&self.store)
    }

    /// Handles one encoded event at event time `ts_ns`, with the rule's new-value `state` lent
    /// to it for the call and back with the caller afterwards, whatever happened. Signals
    /// raised, even by a call that then failed, are left for [`RuleInstance::take_signals`].
    pub fn handle(
        &mut self,
        event: &[u8],
        ts_ns: i64,
        state: &mut RuleState,
    ) -> Result<(), RuleError> {
        let ctx = self.store.data_mut();
        ctx.ts_ns = ts_ns;
        ctx.logs_this_event = 0;
        ctx.panic_message = None;
        self.store.set_epoch_deadline(self.deadline_ticks);
        let result = self.lending(state, |this| this.deliver(event));
        if let Err(error) = result {
            self.poisoned = true;
            return Err(error);
        }
        Ok(())
    }

    fn deliver(&mut self, event: &[u8]) -> Result<(), RuleError> {
        let len =
            u32::try_from(event.len()).map_err(|_| RuleError::Host("event too large".into()))?;
        let ptr = match self.input {
            Some((ptr, capacity)) if capacity >= len => ptr,
            _ => {
                let capacity = len.max(1024).next_power_of_two();
                let ptr = self
                    .alloc
                    .call(&mut self.store, capacity as i32)
                    .map_err(|err| classify(&mut self.store, &err, self.timeout))?
                    as u32;
                self.input = Some((ptr, capacity));
                ptr
            }
        };
        let target = self
            .memory
            .data_mut(&mut self.store)
            .get_mut(ptr as usize..ptr as usize + len as usize)
            .ok_or_else(|| {
                RuleError::Host(format!(
                    "`{EXPORT_ALLOC}` returned {ptr:#x}, which leaves no room for {len} bytes in the module's memory"
                ))
            })?;
        target.copy_from_slice(event);
        let code = self
            .on_event
            .call(&mut self.store, (ptr as i32, len as i32))
            .map_err(|err| classify(&mut self.store, &err, self.timeout))?;
        match code {
            HANDLER_OK => Ok(()),
            code => Err(RuleError::Handler(code)),
        }
    }

    /// Signals raised since the last call.
    pub fn take_signals(&mut self) -> std::vec::Drain<'_, RaisedSignal> {
        self.store.data_mut().signals.drain(..)
    }

    /// Whether a failure has made this instance unfit for more events.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }
}

/// Turns a wasmtime error into why the rule failed.
pub(super) fn classify(
    store: &mut Store<RuleCtx>,
    err: &wasmtime::Error,
    timeout: std::time::Duration,
) -> RuleError {
    let ctx = store.data_mut();
    if let Some(requested) = ctx.limiter.refused.take() {
        return RuleError::MemoryCap {
            requested,
            cap: ctx.limiter.cap,
        };
    }
    if let Some(host) = err.downcast_ref::<HostError>() {
        return RuleError::Host(host.0.clone());
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => RuleError::Timeout(timeout),
        Some(Trap::UnreachableCodeReached) => RuleError::Panic(ctx.panic_message.take()),
        Some(trap) => RuleError::Trap(trap.to_string()),
        None => RuleError::Trap(format!("{err:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::test_module;
    use crate::state::{Settings, Verdict};

    fn state() -> RuleState {
        let settings = Settings {
            learning_period_ns: 0,
            forget_after_ns: u64::MAX,
        };
        RuleState::new(settings, 100)
    }

    fn sandbox() -> Sandbox {
        Sandbox::new(Limits::default()).unwrap()
    }

    #[test]
    fn the_state_is_lent_for_the_call_and_back_after_a_trap() {
        let sandbox = sandbox();
        let bytes = test_module::rule(&test_module::manifest("lender"), &[2]);
        let module = sandbox.load("lender.wasm", &bytes).unwrap();
        let mut instance = sandbox.instantiate(&module).unwrap();
        let mut state = state();

        // First event: "a" starts the group, learned silently.
        instance.handle(b"event", 1, &mut state).unwrap();
        assert_eq!(instance.take_signals().count(), 0);
        assert!(!instance.is_poisoned());

        // Second event: "b" is new (a signal), then the module traps.
        let err = instance.handle(b"event", 2, &mut state).unwrap_err();
        assert_eq!(err, RuleError::Panic(None));
        assert!(instance.is_poisoned());
        let raised: Vec<_> = instance.take_signals().collect();
        assert_eq!(raised.len(), 1, "a signal raised before the trap is kept");
        // What the trapped call learned is in the caller's state, which it still holds.
        assert_eq!(state.check(3, "s", "g", "b").unwrap(), Verdict::Known);
        assert_eq!(state.entries(), 3, "group g with values a and b");
        assert!(instance.store.data_mut().state.get().is_none());
    }

    #[test]
    fn a_rebuilt_instance_starts_afresh_on_the_same_state() {
        let sandbox = sandbox();
        let bytes = test_module::rule(&test_module::manifest("rebuilt"), &[2]);
        let module = sandbox.load("rebuilt.wasm", &bytes).unwrap();
        let mut state = state();
        let mut instance = sandbox.instantiate(&module).unwrap();
        instance.handle(b"e", 1, &mut state).unwrap();
        instance.handle(b"e", 2, &mut state).unwrap_err();

        let mut again = sandbox.instantiate(&module).unwrap();
        assert!(!again.is_poisoned());
        // Its counter is back at "a", which the state knows: no signal, no trap.
        again.handle(b"e", 3, &mut state).unwrap();
        assert_eq!(again.take_signals().count(), 0);
        // "b" too; the third event asks about "c", which is new.
        again.handle(b"e", 4, &mut state).unwrap_err();
        let mut third = sandbox.instantiate(&module).unwrap();
        third.handle(b"e", 5, &mut state).unwrap();
        third.handle(b"e", 6, &mut state).unwrap_err();
        assert_eq!(third.take_signals().count(), 0, "b was learned before");
    }

    /// A panic message over several lines (any language may log one) is reported on one line,
    /// not with escaped line breaks.
    #[test]
    fn a_panic_message_is_one_line() {
        let sandbox = sandbox();
        let mut encoded = Vec::new();
        picket_abi::encode_into_vec(&test_module::manifest("multi"), &mut encoded).unwrap();
        let literal: String = encoded.iter().map(|b| format!("\\{b:02x}")).collect();
        let message = "assertion failed\n  left: 1\r\n right: 2\n";
        let wat = format!(
            r#"(module
  (import "picket" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "{literal}")
  (data (i32.const 2048) "{text}")
  (func (export "picket_abi_version") (result i32) (i32.const 1))
  (func (export "picket_manifest") (result i64) (i64.const {packed}))
  (func (export "picket_alloc") (param i32) (result i32) (i32.const 8192))
  (func (export "picket_on_event") (param i32 i32) (result i32)
    (call $log (i32.const 4) (i32.const 2048) (i32.const {len}))
    unreachable))"#,
            text = message.escape_default(),
            packed = picket_abi::pack_ptr_len(1024, encoded.len() as u32),
            len = message.len(),
        );
        let bytes = wat::parse_str(&wat).unwrap();
        let module = sandbox.load("multi.wasm", &bytes).unwrap();
        let mut instance = sandbox.instantiate(&module).unwrap();
        let err = instance.handle(b"e", 1, &mut state()).unwrap_err();
        assert_eq!(
            err,
            RuleError::Panic(Some("assertion failed left: 1 right: 2".into()))
        );
    }
}
