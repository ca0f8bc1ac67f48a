//! One running rule: a wasmtime store and instance, and the calls that hand it events.

use super::imports::HostError;
use super::{Limits, Sandbox};
use crate::state::RuleState;
use picket_abi::{EXPORT_ALLOC, EXPORT_MEMORY, EXPORT_ON_EVENT, HANDLER_BAD_EVENT, HANDLER_OK};
use std::fmt;
use std::sync::Arc;
use wasmtime::{Instance, Memory, Module, ResourceLimiter, Store, Trap, TypedFunc};

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

/// A signal a rule raised for the event being handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaisedSignal {
    /// The new value behind it, if the rule gave one.
    pub new_value: Option<NewValue>,
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
    pub(super) state: RuleState,
    pub(super) ts_ns: i64,
    pub(super) signals: Vec<RaisedSignal>,
    pub(super) logs_this_event: u32,
    pub(super) panic_message: Option<String>,
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
    /// Instantiates `module` for the rule `rule_id`, with `state` as its new-value state.
    pub(super) fn new(
        sandbox: &Sandbox,
        module: &Module,
        rule_id: Arc<str>,
        state: RuleState,
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
            state,
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
        let instance = match sandbox.linker.instantiate(&mut store, module) {
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

    /// Calls a `() -> R` export under the deadline (the ABI version and manifest exports,
    /// called once per load).
    pub(super) fn call_nullary<R: wasmtime::WasmResults>(
        &mut self,
        name: &str,
    ) -> Result<R, RuleError> {
        let func = self
            .instance
            .get_typed_func::<(), R>(&mut self.store, name)
            .map_err(|err| RuleError::Host(format!("export `{name}`: {err}")))?;
        self.store.set_epoch_deadline(self.deadline_ticks);
        func.call(&mut self.store, ())
            .map_err(|err| classify(&mut self.store, &err, self.timeout))
    }

    /// The bytes of the module's memory (to read what an export returned).
    pub(super) fn memory_bytes(&self) -> &[u8] {
        self.memory.data(&self.store)
    }

    /// Handles one encoded event at event time `ts_ns`. Signals raised, even by a call that then
    /// failed, are left for [`RuleInstance::take_signals`].
    pub fn handle(&mut self, event: &[u8], ts_ns: i64) -> Result<(), RuleError> {
        let ctx = self.store.data_mut();
        ctx.ts_ns = ts_ns;
        ctx.logs_this_event = 0;
        ctx.panic_message = None;
        self.store.set_epoch_deadline(self.deadline_ticks);
        let result = self.deliver(event);
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

    /// The rule's new-value state.
    pub fn state(&self) -> &RuleState {
        &self.store.data().state
    }

    /// The rule's new-value state, to change settings or drain its journal.
    pub fn state_mut(&mut self) -> &mut RuleState {
        &mut self.store.data_mut().state
    }

    /// Ends the instance, handing back its state.
    pub fn into_state(self) -> RuleState {
        self.store.into_data().state
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
