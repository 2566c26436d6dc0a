//! Compiling and running the job: a WASI preview 1 core module or a WASI 0.2 command component,
//! in a store bounded by the memory limiter, the epoch deadline and (when asked) fuel; and
//! turning how it ended into an [`Outcome`].

use std::borrow::Cow;
use std::time::Duration;

use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Config, Engine, ExternType, Linker, Module, Store, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::sync::CommandPre;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::limits::Limiter;
use crate::spec::{Error, JobSpec, Outcome};
use crate::watchdog::{OnHang, Watchdog};

/// The longest message kept in a report.
const MAX_MESSAGE_CHARS: usize = 1000;

/// How the job ended, before the process-wide measures (wall and CPU time, output) are added.
#[derive(Debug)]
pub(crate) struct Ended {
    pub(crate) outcome: Outcome,
    pub(crate) exit_code: i32,
    pub(crate) message: String,
    pub(crate) memory_peak_bytes: u64,
    pub(crate) fuel_used: u64,
}

impl Ended {
    fn invalid(message: impl AsRef<str>) -> Self {
        Self {
            outcome: Outcome::InvalidModule,
            exit_code: -1,
            message: one_line(message.as_ref()),
            memory_peak_bytes: 0,
            fuel_used: 0,
        }
    }
}

/// What the store holds: the WASI context and the memory limiter.
struct State<W> {
    wasi: W,
    limiter: Limiter,
}

/// The WASI context of a component.
struct ComponentWasi {
    ctx: WasiCtx,
    table: ResourceTable,
}

impl WasiView for State<ComponentWasi> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi.ctx,
            table: &mut self.wasi.table,
        }
    }
}

/// Compiles `wasm` (binary or text) and runs it with `wasi`; the deadline starts once it has
/// compiled.
pub(crate) fn execute(
    spec: &JobSpec,
    wasm: &[u8],
    mut wasi: WasiCtxBuilder,
    on_hang: Option<OnHang>,
) -> Result<Ended, Error> {
    let binary = match to_binary(wasm) {
        Ok(binary) => binary,
        Err(message) => return Ok(Ended::invalid(message)),
    };
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.consume_fuel(spec.fuel > 0);
    config.wasm_component_model(true);
    if spec.deterministic {
        // The same bits on every machine: NaNs canonical, relaxed SIMD one way.
        config.cranelift_nan_canonicalization(true);
        config.relaxed_simd_deterministic(true);
    }
    let engine = Engine::new(&config).map_err(|e| Error::Setup(e.to_string()))?;
    let timeout = Duration::from_millis(spec.timeout_ms);
    if is_component(&binary) {
        let component = match Component::new(&engine, &binary) {
            Ok(component) => component,
            Err(e) => return Ok(Ended::invalid(format!("{e:#}"))),
        };
        let mut linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(setup)?;
        let pre = match linker.instantiate_pre(&component) {
            Ok(pre) => pre,
            Err(e) => return Ok(Ended::invalid(format!("{e:#}"))),
        };
        let pre = match CommandPre::new(pre) {
            Ok(pre) => pre,
            Err(e) => return Ok(Ended::invalid(format!("not a WASI command: {e:#}"))),
        };
        let wasi = ComponentWasi {
            ctx: wasi.build(),
            table: ResourceTable::new(),
        };
        let mut store = new_store(&engine, spec, wasi)?;
        let watchdog = Watchdog::start(engine.clone(), timeout, on_hang)?;
        let result = pre
            .instantiate(&mut store)
            .and_then(|command| command.wasi_cli_run().call_run(&mut store))
            .map(|ran| if ran.is_ok() { 0 } else { 1 });
        watchdog.finish();
        Ok(ended(&mut store, spec, result))
    } else {
        let module = match Module::new(&engine, &binary) {
            Ok(module) => module,
            Err(e) => return Ok(Ended::invalid(format!("{e:#}"))),
        };
        if !is_command(&module) {
            return Ok(Ended::invalid(
                "not a WASI command: no `_start` export of type [] -> []",
            ));
        }
        let mut linker: Linker<State<WasiP1Ctx>> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |state| &mut state.wasi)
            .map_err(setup)?;
        let pre = match linker.instantiate_pre(&module) {
            Ok(pre) => pre,
            Err(e) => return Ok(Ended::invalid(format!("{e:#}"))),
        };
        let mut store = new_store(&engine, spec, wasi.build_p1())?;
        let watchdog = Watchdog::start(engine.clone(), timeout, on_hang)?;
        let result = pre.instantiate(&mut store).and_then(|instance| {
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call(&mut store, ()).map(|()| 0)
        });
        watchdog.finish();
        Ok(ended(&mut store, spec, result))
    }
}

fn setup(e: wasmtime::Error) -> Error {
    Error::Setup(format!("{e:#}"))
}

/// The job as binary WebAssembly: as it is when it has the binary magic, else compiled from text.
fn to_binary(wasm: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    if wasm.starts_with(b"\0asm") {
        Ok(Cow::Borrowed(wasm))
    } else {
        wat::parse_bytes(wasm).map_err(|e| format!("not WebAssembly (binary or text): {e}"))
    }
}

/// Whether `binary` is a component (layer 1) rather than a core module (version 1).
fn is_component(binary: &[u8]) -> bool {
    binary.get(4..8) == Some(&[0x0d, 0x00, 0x01, 0x00][..])
}

/// Whether `module` exports a WASI command's `_start: [] -> []`.
fn is_command(module: &Module) -> bool {
    matches!(
        module.get_export("_start"),
        Some(ExternType::Func(f)) if f.params().len() == 0 && f.results().len() == 0
    )
}

fn new_store<W>(engine: &Engine, spec: &JobSpec, wasi: W) -> Result<Store<State<W>>, Error> {
    let mut store = Store::new(
        engine,
        State {
            wasi,
            limiter: Limiter::new(spec.memory_bytes),
        },
    );
    store.limiter(|state| &mut state.limiter);
    // The watchdog bumps the epoch once, at the deadline.
    store.set_epoch_deadline(1);
    if spec.fuel > 0 {
        store.set_fuel(spec.fuel).map_err(setup)?;
    }
    Ok(store)
}

/// How the job ended, given what its run returned (its exit code, or why it stopped).
fn ended<W>(store: &mut Store<State<W>>, spec: &JobSpec, result: wasmtime::Result<i32>) -> Ended {
    let fuel_used = if spec.fuel > 0 {
        spec.fuel.saturating_sub(store.get_fuel().unwrap_or(0))
    } else {
        0
    };
    let limiter = &store.data().limiter;
    let (outcome, exit_code, message) = classify(spec, result, limiter.refused());
    Ended {
        outcome,
        exit_code,
        message: one_line(&message),
        memory_peak_bytes: limiter.peak_memory(),
        fuel_used,
    }
}

fn classify(
    spec: &JobSpec,
    result: wasmtime::Result<i32>,
    refused: Option<&str>,
) -> (Outcome, i32, String) {
    let result = match result {
        Ok(code) => Ok(code),
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(I32Exit(code)) => Ok(*code),
            None => Err(e),
        },
    };
    match (result, refused) {
        (Ok(0), _) => (Outcome::Exited, 0, "exited with code 0".to_owned()),
        (Ok(code), Some(refused)) => (
            Outcome::OutOfMemory,
            -1,
            format!("{refused}; then the job exited with code {code}"),
        ),
        (Ok(code), None) => (Outcome::Exited, code, format!("exited with code {code}")),
        (Err(e), refused) => match (e.downcast_ref::<Trap>(), refused) {
            (Some(Trap::OutOfFuel), _) => (
                Outcome::OutOfFuel,
                -1,
                format!("fuel budget of {} used up", spec.fuel),
            ),
            (Some(Trap::Interrupt), _) => (
                Outcome::TimedOut,
                -1,
                format!("time limit of {} ms reached", spec.timeout_ms),
            ),
            (trap, Some(refused)) => (
                Outcome::OutOfMemory,
                -1,
                format!("{refused}; then: {}", describe(trap, &e)),
            ),
            (trap, None) => (Outcome::Trapped, -1, describe(trap, &e)),
        },
    }
}

/// The trap when there is one, else the whole error chain.
fn describe(trap: Option<&Trap>, e: &wasmtime::Error) -> String {
    match trap {
        Some(trap) => trap.to_string(),
        None => format!("{e:#}"),
    }
}

/// `text` on one line (whitespace runs become one space), at most [`MAX_MESSAGE_CHARS`] long.
pub(crate) fn one_line(text: &str) -> String {
    let mut line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some((cut, _)) = line.char_indices().nth(MAX_MESSAGE_CHARS) {
        line.truncate(cut);
        line.push('…');
    }
    line
}
