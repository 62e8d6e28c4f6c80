//! The wasmtime [`Engine`] configured for untrusted code, and the epoch
//! ticker that enforces wall-clock limits.
//!
//! A process shares one engine per configuration ([`shared`]): compiled
//! code, the epoch counter and the ticker thread are per engine.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How the engine allocates instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Allocation {
    /// Memories are mapped when an instance is created. Cheapest when
    /// instances are long-lived and reused.
    OnDemand,
    /// Memories and tables come from pre-reserved slots, which makes creating
    /// an instance per event cheap. `max_memory_bytes` bounds one slot (and so
    /// any plugin's memory limit); `total_instances` bounds how many
    /// instances exist at once.
    Pooling {
        /// The most instances alive at once.
        total_instances: u32,
        /// The largest linear memory of any instance.
        max_memory_bytes: u64,
    },
}

/// The engine-wide settings. Two hosts with equal options share an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EngineOptions {
    /// Meter execution with fuel, so that each event has a fuel budget.
    pub consume_fuel: bool,
    /// Interrupt execution at epoch deadlines, so that each event has a
    /// wall-clock limit.
    pub epoch_interruption: bool,
    /// How often the epoch ticks; the granularity of wall-clock limits.
    pub epoch_tick: Duration,
    /// The most bytes of native stack wasm code may use.
    pub max_wasm_stack: usize,
    /// How instances are allocated.
    pub allocation: Allocation,
}

impl Default for EngineOptions {
    /// Fuel and epochs on, a 5 ms tick, a 512 KiB wasm stack, on-demand
    /// allocation.
    fn default() -> Self {
        Self {
            consume_fuel: true,
            epoch_interruption: true,
            epoch_tick: Duration::from_millis(5),
            max_wasm_stack: 512 * 1024,
            allocation: Allocation::OnDemand,
        }
    }
}

/// Why an engine could not be created.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime refused the configuration.
    #[error("cannot configure the WebAssembly engine: {0}")]
    Config(String),
    /// The epoch ticker thread could not be started.
    #[error("cannot start the epoch ticker thread: {0}")]
    Ticker(std::io::Error),
}

/// Builds the wasmtime configuration for `options`.
pub fn config(options: &EngineOptions) -> Config {
    let mut config = Config::new();
    config
        .consume_fuel(options.consume_fuel)
        .epoch_interruption(options.epoch_interruption)
        .max_wasm_stack(options.max_wasm_stack)
        // Plugins make no async host calls and the component-model async
        // features are not used: turning concurrency support off makes every
        // call cheaper.
        .concurrency_support(false)
        .wasm_component_model(true)
        .cranelift_opt_level(wasmtime::OptLevel::Speed);
    if let Allocation::Pooling {
        total_instances,
        max_memory_bytes,
    } = options.allocation
    {
        let mut pool = PoolingAllocationConfig::default();
        let max_memory = usize::try_from(max_memory_bytes).unwrap_or(usize::MAX);
        pool.total_component_instances(total_instances)
            // A Rust component holds a handful of core instances (the
            // program, its WASI adapters and shims).
            .total_core_instances(total_instances.saturating_mul(8))
            .total_memories(total_instances.saturating_mul(2))
            .total_tables(total_instances.saturating_mul(4))
            .max_memory_size(max_memory)
            .max_memories_per_module(2)
            .max_core_instances_per_component(16);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// Creates a new engine for `options` and starts its epoch ticker.
///
/// Prefer [`shared`]: an engine is meant to live as long as the process.
pub fn new(options: &EngineOptions) -> Result<Engine, EngineError> {
    let engine =
        Engine::new(&config(options)).map_err(|e| EngineError::Config(format!("{e:#}")))?;
    if options.epoch_interruption {
        start_ticker(&engine, options.epoch_tick)?;
    }
    Ok(engine)
}

/// The process's engine for `options`, created on first use.
pub fn shared(options: &EngineOptions) -> Result<Engine, EngineError> {
    static ENGINES: Mutex<Vec<(EngineOptions, Engine)>> = Mutex::new(Vec::new());
    let mut engines = ENGINES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, engine)) = engines.iter().find(|(o, _)| o == options) {
        return Ok(engine.clone());
    }
    let engine = new(options)?;
    engines.push((*options, engine.clone()));
    Ok(engine)
}

/// Increments the engine's epoch every `tick` until the engine is dropped.
fn start_ticker(engine: &Engine, tick: Duration) -> Result<(), EngineError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("plugbus-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .map_err(EngineError::Ticker)?;
    Ok(())
}

/// How many epoch ticks cover `timeout`, rounded up, plus one: the deadline
/// is counted from the current epoch, which may be about to tick.
pub fn deadline_ticks(timeout: Duration, tick: Duration) -> u64 {
    let tick = tick.as_nanos().max(1);
    let ticks = timeout.as_nanos().div_ceil(tick);
    u64::try_from(ticks).unwrap_or(u64::MAX).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_up() {
        let tick = Duration::from_millis(5);
        assert_eq!(deadline_ticks(Duration::from_millis(1000), tick), 201);
        assert_eq!(deadline_ticks(Duration::from_millis(1), tick), 2);
        assert_eq!(deadline_ticks(Duration::from_millis(6), tick), 3);
    }

    #[test]
    fn engines_are_shared_per_options() {
        let a = shared(&EngineOptions::default()).expect("engine");
        let b = shared(&EngineOptions::default()).expect("engine");
        assert!(Engine::same(&a, &b));
    }
}
