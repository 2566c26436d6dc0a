//! P2P OS WebAssembly sandbox: runs ONE WebAssembly job in a process of its own.
//!
//! The node starts `p2posd __p2pos-wasm-job DIR` (behind its helper shim, in a cgroup); the
//! daemon's `main` calls [`run_if_requested`] first, which runs the job in `DIR` and exits.
//!
//! The job directory: the node writes [`SPEC_FILE`] (a [`JobSpec`]), [`MODULE_FILE`] (a WASI
//! preview 1 core module, a WASI 0.2 command component, or WebAssembly text), optionally
//! [`STDIN_FILE`], and the directory [`SCRATCH_DIR`], the only file system the job sees (as
//! `/`). The sandbox writes [`STDOUT_FILE`], [`STDERR_FILE`] and [`RESULT_FILE`] (a [`Report`]).
//!
//! The job is hostile: it gets its arguments, no environment, no network, its memories and tables
//! capped together, a wall-time limit (epoch interruption), optionally a fuel budget, bounded
//! output, and (when asked) fixed clocks and seeded randomness.
//!
//! # Layout
//! - `spec`: [`JobSpec`], [`Report`], [`Outcome`], [`Error`].
//! - `job`: compiling and running the module or component, and classifying how it ended.
//! - `limits`: the memory limiter.
//! - `watchdog`: the wall-time limit.
//! - `capture`: bounded stdout and stderr.
//! - `determinism`: fixed clocks and seeded randomness.

mod capture;
mod determinism;
mod job;
mod limits;
mod spec;
mod watchdog;

use std::path::Path;
use std::time::Instant;

use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::capture::Capture;
use crate::job::Ended;
pub use crate::spec::{Error, JobSpec, Outcome, Report, TABLE_ELEMENT_BYTES};

/// The first argument that makes `p2posd` run a job instead of the node.
pub const JOB_COMMAND: &str = "__p2pos-wasm-job";
/// The job's [`JobSpec`], as JSON.
pub const SPEC_FILE: &str = "job.json";
/// The job's WebAssembly: core module, component, or text.
pub const MODULE_FILE: &str = "module.wasm";
/// The job's standard input (optional: empty when absent).
pub const STDIN_FILE: &str = "stdin";
/// The directory the job sees as `/`.
pub const SCRATCH_DIR: &str = "scratch";
/// The job's standard output (at most [`JobSpec::max_output_bytes`]).
pub const STDOUT_FILE: &str = "stdout";
/// The job's standard error (at most [`JobSpec::max_output_bytes`]).
pub const STDERR_FILE: &str = "stderr";
/// The [`Report`], as JSON; written last.
pub const RESULT_FILE: &str = "result.json";

/// If `argv[1]` is [`JOB_COMMAND`]: runs the job in `argv[2]` ([`run`]), then exits the process:
/// 0 when `result.json` was written, 2 with a one-line error on stderr otherwise. Otherwise
/// returns.
pub fn run_if_requested() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(JOB_COMMAND.as_ref()) {
        return;
    }
    let code = match (args.next(), args.next()) {
        (Some(dir), None) => {
            // This process is the job's: a panic is reported on one line, like any failure.
            std::panic::set_hook(Box::new(|_| {}));
            match std::panic::catch_unwind(|| run_job(Path::new(&dir), true)) {
                Ok(Ok(_)) => 0,
                Ok(Err(e)) => {
                    eprintln!("p2posd {JOB_COMMAND}: {}", job::one_line(&e.to_string()));
                    2
                }
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    eprintln!("p2posd {JOB_COMMAND}: panicked: {}", job::one_line(&what));
                    2
                }
            }
        }
        _ => {
            eprintln!("p2posd {JOB_COMMAND}: usage: p2posd {JOB_COMMAND} DIR");
            2
        }
    };
    std::process::exit(code);
}

/// Caps every file this process writes at `bytes` (`RLIMIT_FSIZE`): a write past it fails with
/// `EFBIG` (`SIGXFSZ` ignored) rather than killing the process.
fn limit_file_size(bytes: u64) -> Result<(), Error> {
    use nix::sys::{
        resource::{Resource, setrlimit},
        signal::{SigHandler, Signal, signal},
    };
    // SAFETY: ignoring a signal installs no handler; nothing else runs in this process yet.
    unsafe { signal(Signal::SIGXFSZ, SigHandler::SigIgn) }
        .map_err(|e| Error::Setup(format!("cannot ignore SIGXFSZ: {e}")))?;
    setrlimit(Resource::RLIMIT_FSIZE, bytes, bytes)
        .map_err(|e| Error::Setup(format!("cannot limit file sizes: {e}")))
}

/// The most random bytes one `wasi:random` call may ask for (wasmtime-wasi's default).
const MAX_RANDOM_BYTES: u64 = 64 << 20;

/// Runs the job described in `dir`, writing its outputs there.
///
/// Blocks until the job ends; call it from a plain thread, not from inside an async runtime
/// (WASI's host calls run on a runtime of their own). Unlike the job process, it cannot give up on
/// a job blocked in a host call past its deadline (a long `poll_oneoff` sleep): it waits for it.
pub fn run(dir: &Path) -> Result<Report, Error> {
    run_job(dir, false)
}

/// Runs the job in `dir`; `own_process` when this process is the job's, so that a job stuck past
/// its deadline may end it.
fn run_job(dir: &Path, own_process: bool) -> Result<Report, Error> {
    let started = Instant::now();
    let spec_path = dir.join(SPEC_FILE);
    let spec_text = std::fs::read(&spec_path).map_err(|e| Error::io(&spec_path, e))?;
    let spec: JobSpec = serde_json::from_slice(&spec_text).map_err(|source| Error::Spec {
        path: spec_path,
        source,
    })?;
    if own_process && spec.max_file_bytes > 0 {
        limit_file_size(spec.max_file_bytes)?;
    }
    if own_process && spec.max_cpu_secs > 0 {
        // Past the soft limit the kernel sends SIGXCPU (which ends the process), past the
        // hard one SIGKILL.
        let soft = spec.max_cpu_secs;
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CPU, soft, soft + 5)
            .map_err(|e| Error::Setup(format!("cannot limit CPU time: {e}")))?;
    }
    let max_output = usize::try_from(spec.max_output_bytes)
        .map_err(|_| Error::InvalidSpec("max_output_bytes does not fit in memory".to_owned()))?;
    let module_path = dir.join(MODULE_FILE);
    let wasm = std::fs::read(&module_path).map_err(|e| Error::io(&module_path, e))?;
    let stdin_path = dir.join(STDIN_FILE);
    let stdin = match std::fs::read(&stdin_path) {
        Ok(stdin) => stdin,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(&stdin_path, e)),
    };
    let scratch = dir.join(SCRATCH_DIR);
    let stdout = Capture::new(max_output);
    let stderr = Capture::new(max_output);

    let mut wasi = WasiCtxBuilder::new();
    wasi.args(&spec.args)
        .stdin(MemoryInputPipe::new(stdin))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        // `wasi:random` answers into host memory first: no more than the job could hold.
        .max_random_size(spec.memory_bytes.min(MAX_RANDOM_BYTES));
    wasi.preopened_dir(&scratch, "/", FsPerms::ReadWrite)
        .map_err(|e| Error::Setup(format!("cannot open {}: {e:#}", scratch.display())))?;
    if spec.deterministic {
        determinism::make_deterministic(&mut wasi);
    }

    let on_hang = own_process.then(|| {
        let (dir, spec) = (dir.to_owned(), spec.clone());
        let (stdout, stderr) = (stdout.clone(), stderr.clone());
        let on_hang: watchdog::OnHang = Box::new(move || {
            let ended = Ended {
                outcome: Outcome::TimedOut,
                exit_code: -1,
                message: format!(
                    "time limit of {} ms reached, and the job did not stop (blocked in a host call)",
                    spec.timeout_ms
                ),
                memory_peak_bytes: 0,
                fuel_used: 0,
            };
            let code = match write_outputs(&dir, started, ended, &stdout, &stderr) {
                Ok(_) => 0,
                Err(e) => {
                    eprintln!("p2posd {JOB_COMMAND}: {}", job::one_line(&e.to_string()));
                    2
                }
            };
            std::process::exit(code);
        });
        on_hang
    });

    let ended = job::execute(&spec, &wasm, wasi, on_hang)?;
    write_outputs(dir, started, ended, &stdout, &stderr)
}

/// Writes stdout, stderr, then the report (through a temporary file, so that a reader never
/// sees half of it).
fn write_outputs(
    dir: &Path,
    started: Instant,
    ended: Ended,
    stdout: &Capture,
    stderr: &Capture,
) -> Result<Report, Error> {
    let (out, stdout_truncated) = stdout.snapshot();
    let (err, stderr_truncated) = stderr.snapshot();
    for (name, bytes) in [(STDOUT_FILE, out), (STDERR_FILE, err)] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| Error::io(path, e))?;
    }
    let Ended {
        outcome,
        exit_code,
        message,
        memory_peak_bytes,
        fuel_used,
    } = ended;
    let report = Report {
        outcome,
        exit_code,
        message,
        wall_ms: millis(started.elapsed()),
        cpu_ms: cpu_ms(),
        memory_peak_bytes,
        fuel_used,
        stdout_truncated,
        stderr_truncated,
    };
    let json = serde_json::to_vec_pretty(&report)
        .map_err(|e| Error::Setup(format!("cannot encode the report: {e}")))?;
    let partial = dir.join(format!("{RESULT_FILE}.partial"));
    std::fs::write(&partial, json).map_err(|e| Error::io(&partial, e))?;
    let path = dir.join(RESULT_FILE);
    std::fs::rename(&partial, &path).map_err(|e| Error::io(path, e))?;
    Ok(report)
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// User and system CPU time of this process so far, in milliseconds (0 if unknown).
fn cpu_ms() -> u64 {
    use nix::sys::resource::{UsageWho, getrusage};
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return 0;
    };
    let ms = |t: nix::sys::time::TimeVal| {
        u64::try_from(t.tv_sec())
            .unwrap_or(0)
            .saturating_mul(1000)
            .saturating_add(u64::try_from(t.tv_usec()).unwrap_or(0) / 1000)
    };
    ms(usage.user_time()).saturating_add(ms(usage.system_time()))
}
