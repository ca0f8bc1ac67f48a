//! The WebAssembly sandbox that rules run in.
//!
//! One wasmtime engine compiles every module; each rule gets its own store and instance, with
//! its memory capped, every call bounded by an epoch deadline, and only picket's three imports
//! (`picket_abi::IMPORTS`, docs/abi.md), linked once per module ahead of time. Nothing a module does can reach the host beyond those imports, and every
//! pointer it hands them is bounds-checked.

mod host_functions;
mod instance;
mod load;
#[cfg(test)]
pub(crate) mod test_module;

pub use instance::{Context, NewValue, RaisedSignal, RuleError, RuleInstance};
pub use load::{LoadError, LoadedModule};

use crate::module_cache::{CacheKey, ModuleCache};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::Duration;
use wasmtime::{Config, Engine, Linker, OptLevel};

/// Limits that each rule instance runs under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest linear memory a module may have.
    pub memory_bytes: usize,
    /// Longest one call into a module may run before it is interrupted.
    pub timeout: Duration,
    /// Most signals a rule may raise for one event.
    pub max_signals_per_event: u32,
    /// Most log lines a rule may write for one event; later ones are dropped, and that is logged once.
    pub max_logs_per_event: u32,
    /// Largest module file accepted.
    pub max_module_bytes: usize,
    /// Longest a module's compile is waited for before the module is refused.
    pub compile_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory_bytes: 16 << 20,
            timeout: Duration::from_millis(50),
            max_signals_per_event: picket_abi::DEFAULT_MAX_SIGNALS_PER_EVENT,
            max_logs_per_event: 8,
            max_module_bytes: 16 << 20,
            compile_timeout: Duration::from_secs(30),
        }
    }
}

/// How often the engine's epoch advances; call deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The compiler, linker and limits shared by all rules.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<instance::RuleCtx>,
    limits: Arc<Limits>,
    cache: Option<ModuleCache>,
    _ticker: EpochTicker,
}

impl Sandbox {
    /// Builds the engine with only the features rules use.
    pub fn new(limits: Limits) -> anyhow::Result<Sandbox> {
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            .max_wasm_stack(512 << 10);
        let engine = Engine::new(&config).map_err(|err| anyhow::anyhow!("{err}"))?;
        let linker = host_functions::linker(&engine)?;
        let ticker = EpochTicker::start(&engine)?;
        Ok(Sandbox {
            engine,
            linker,
            limits: Arc::new(limits),
            cache: None,
            _ticker: ticker,
        })
    }

    /// Keeps compiled modules in `dir`, authenticated with `key`, so that loading a module seen
    /// before skips compiling.
    pub fn use_module_cache(
        &mut self,
        dir: &std::path::Path,
        key: CacheKey,
    ) -> std::io::Result<()> {
        self.cache = Some(ModuleCache::open(dir, &self.engine, key)?);
        Ok(())
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The wasmtime engine (for compiling and caching modules).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn deadline_ticks(&self) -> u64 {
        let ticks = self.limits.timeout.as_nanos() / EPOCH_TICK.as_nanos();
        // The ticker runs independently of calls, so one extra tick keeps a call from losing
        // part of its budget to the tick already under way.
        u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
    }
}

/// Advances the engine's epoch from a background thread so that deadlines expire in real time.
/// The thread ends once the sandbox is dropped.
struct EpochTicker {
    _alive: Arc<()>,
}

impl EpochTicker {
    fn start(engine: &Engine) -> anyhow::Result<EpochTicker> {
        let alive = Arc::new(());
        let watch: Weak<()> = Arc::downgrade(&alive);
        let engine = engine.weak();
        thread::Builder::new()
            .name("picket-epoch".into())
            .spawn(move || {
                while watch.strong_count() > 0 {
                    thread::sleep(EPOCH_TICK);
                    match engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .map_err(|err| {
                anyhow::anyhow!("cannot start the thread that bounds rule run times: {err}")
            })?;
        Ok(EpochTicker { _alive: alive })
    }
}
