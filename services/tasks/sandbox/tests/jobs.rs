//! Runs real jobs through `p2pos_sandbox::run` in temporary job directories: each test asserts
//! the outcome a node would read from `result.json`, stdout and the scratch directory.

use std::path::Path;
use std::time::{Duration, Instant};

use p2pos_sandbox::{JobSpec, Outcome, Report};

/// A job directory with its inputs written.
struct Job {
    dir: tempfile::TempDir,
}

impl Job {
    fn new(module: &[u8], spec: &JobSpec) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(p2pos_sandbox::MODULE_FILE), module).expect("module");
        std::fs::write(
            dir.path().join(p2pos_sandbox::SPEC_FILE),
            serde_json::to_vec(spec).expect("spec json"),
        )
        .expect("spec");
        std::fs::create_dir(dir.path().join(p2pos_sandbox::SCRATCH_DIR)).expect("scratch");
        Self { dir }
    }

    fn from_file(name: &str, spec: &JobSpec) -> Self {
        Self::new(&module(name), spec)
    }

    fn stdin(self, bytes: &[u8]) -> Self {
        std::fs::write(self.dir.path().join(p2pos_sandbox::STDIN_FILE), bytes).expect("stdin");
        self
    }

    fn run(&self) -> Report {
        let report = p2pos_sandbox::run(self.dir.path()).expect("the job runs");
        let written: Report = serde_json::from_slice(&self.read(p2pos_sandbox::RESULT_FILE))
            .expect("result.json is a report");
        assert_eq!(written, report, "result.json says what run returned");
        report
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(name)).expect(name)
    }

    fn stdout(&self) -> Vec<u8> {
        self.read(p2pos_sandbox::STDOUT_FILE)
    }
}

fn module(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/modules")
        .join(format!("{name}.wat"));
    std::fs::read(&path).expect("test module")
}

fn spec() -> JobSpec {
    JobSpec {
        args: vec!["prog".to_owned()],
        memory_bytes: 16 << 20,
        timeout_ms: 30_000,
        fuel: 0,
        deterministic: false,
        max_output_bytes: 1 << 20,
        max_file_bytes: 0,
        max_cpu_secs: 0,
    }
}

fn assert_exited(report: &Report, code: i32) {
    assert_eq!(
        (report.outcome, report.exit_code),
        (Outcome::Exited, code),
        "{report:?}"
    );
}

#[test]
fn hello_world_prints_and_exits_0() {
    let job = Job::from_file("hello", &spec());
    let report = job.run();
    assert_exited(&report, 0);
    assert_eq!(job.stdout(), b"hello, world\n");
    assert_eq!(job.read(p2pos_sandbox::STDERR_FILE), b"");
    assert!(!report.stdout_truncated && !report.stderr_truncated);
    assert_eq!(report.memory_peak_bytes, 65536);
    assert_eq!(report.fuel_used, 0);
}

#[test]
fn proc_exit_code_is_the_exit_code() {
    let report = Job::from_file("exit3", &spec()).run();
    assert_exited(&report, 3);
}

#[test]
fn stdin_is_the_file() {
    let job = Job::from_file("echo", &spec()).stdin(b"ping\npong\n");
    assert_exited(&job.run(), 0);
    assert_eq!(job.stdout(), b"ping\npong\n");
}

#[test]
fn stdin_is_empty_without_the_file() {
    let job = Job::from_file("echo", &spec());
    assert_exited(&job.run(), 0);
    assert_eq!(job.stdout(), b"");
}

#[test]
fn args_are_the_specs() {
    let spec = JobSpec {
        args: vec!["prog".to_owned(), "a b".to_owned(), "c".to_owned()],
        ..spec()
    };
    let job = Job::from_file("args", &spec);
    assert_exited(&job.run(), 0);
    assert_eq!(job.stdout(), b"prog\0a b\0c\0");
}

#[test]
fn growing_past_the_memory_limit_is_out_of_memory() {
    let spec = JobSpec {
        memory_bytes: 1 << 20,
        ..spec()
    };
    let report = Job::from_file("grow", &spec).run();
    assert_eq!(report.outcome, Outcome::OutOfMemory, "{report:?}");
    assert_eq!(report.exit_code, -1);
    assert!(
        report
            .message
            .starts_with("memory limit 1 MiB reached: a memory.grow was refused"),
        "{}",
        report.message
    );
    assert_eq!(report.memory_peak_bytes, 1 << 20);
}

#[test]
fn an_initial_memory_past_the_limit_is_out_of_memory() {
    let spec = JobSpec {
        memory_bytes: 1 << 20,
        ..spec()
    };
    let wat = br#"(module (memory 17) (func (export "_start")))"#;
    let report = Job::new(wat, &spec).run();
    assert_eq!(report.outcome, Outcome::OutOfMemory, "{report:?}");
    assert!(
        report.message.contains("initial size"),
        "{}",
        report.message
    );
}

#[test]
fn a_table_past_the_memory_limit_is_out_of_memory() {
    let spec = JobSpec {
        memory_bytes: 1 << 20,
        ..spec()
    };
    let wat = br#"(module (table 1000000 funcref) (func (export "_start")))"#;
    let report = Job::new(wat, &spec).run();
    assert_eq!(report.outcome, Outcome::OutOfMemory, "{report:?}");
    assert!(report.message.contains("table"), "{}", report.message);
}

#[test]
fn endless_recursion_is_trapped() {
    let wat = br#"(module (func $f (call $f)) (func (export "_start") (call $f)))"#;
    let report = Job::new(wat, &spec()).run();
    assert_eq!(report.outcome, Outcome::Trapped, "{report:?}");
    assert!(report.message.contains("stack"), "{}", report.message);
}

#[test]
fn an_endless_loop_times_out() {
    let spec = JobSpec {
        timeout_ms: 500,
        ..spec()
    };
    let job = Job::from_file("spin", &spec);
    let started = Instant::now();
    let report = job.run();
    assert_eq!(report.outcome, Outcome::TimedOut, "{report:?}");
    assert_eq!(report.exit_code, -1);
    assert!(started.elapsed() < Duration::from_secs(5), "{report:?}");
    assert!(report.cpu_ms > 0, "{report:?}");
}

#[test]
fn an_endless_loop_runs_out_of_fuel() {
    let spec = JobSpec {
        fuel: 10_000,
        ..spec()
    };
    let report = Job::from_file("spin", &spec).run();
    assert_eq!(report.outcome, Outcome::OutOfFuel, "{report:?}");
    assert_eq!(report.fuel_used, 10_000);
}

#[test]
fn fuel_used_is_counted() {
    let spec = JobSpec {
        fuel: 1_000_000,
        ..spec()
    };
    let report = Job::from_file("hello", &spec).run();
    assert_exited(&report, 0);
    assert!(
        report.fuel_used > 0 && report.fuel_used < 1_000,
        "{report:?}"
    );
}

#[test]
fn deterministic_jobs_repeat_exactly() {
    let fixed = JobSpec {
        deterministic: true,
        fuel: 1_000_000,
        ..spec()
    };
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let job = Job::from_file("entropy", &fixed);
            let report = job.run();
            assert_exited(&report, 0);
            (job.stdout(), report.fuel_used)
        })
        .collect();
    assert_eq!(runs[0].0.len(), 32);
    assert_eq!(runs[0], runs[1]);
    assert_eq!(&runs[0].0[..8], &[0; 8], "the wall clock is the epoch");

    let free = Job::from_file("entropy", &spec());
    assert_exited(&free.run(), 0);
    assert_ne!(
        free.stdout(),
        runs[0].0,
        "without it, real time and entropy"
    );
}

#[test]
fn the_job_sees_only_scratch() {
    let job = Job::from_file("files", &spec());
    let report = job.run();
    assert_eq!(report.outcome, Outcome::Exited, "{report:?}");
    assert_ne!(report.exit_code, 0, "../outside opened");
    assert_ne!(report.exit_code, 99, "/etc/passwd opened");
    assert_ne!(report.exit_code, 98, "out.txt not created");
    assert_eq!(job.read("scratch/out.txt"), b"made it\n");
    assert!(!job.dir.path().join("outside").exists());
}

#[test]
fn output_past_the_limit_is_truncated() {
    let spec = JobSpec {
        max_output_bytes: 10,
        ..spec()
    };
    let job = Job::from_file("chatty", &spec);
    let report = job.run();
    assert_exited(&report, 0);
    assert!(report.stdout_truncated && !report.stderr_truncated);
    assert_eq!(job.stdout(), b"0123456789");
}

#[test]
fn garbage_is_an_invalid_module() {
    for garbage in [&b"\0asm\x01\0\0\0garbage"[..], b"not wasm at all", b""] {
        let report = Job::new(garbage, &spec()).run();
        assert_eq!(report.outcome, Outcome::InvalidModule, "{report:?}");
        assert_eq!(report.exit_code, -1);
        assert!(!report.message.contains('\n'));
    }
}

#[test]
fn a_module_without_start_is_an_invalid_module() {
    let report = Job::new(b"(module)", &spec()).run();
    assert_eq!(report.outcome, Outcome::InvalidModule, "{report:?}");
    assert!(report.message.contains("_start"), "{}", report.message);
}

#[test]
fn an_import_not_offered_is_an_invalid_module_named() {
    for (module, name) in [("wasi_snapshot_preview1", "sock_open"), ("env", "anything")] {
        let wat = format!(
            r#"(module (import "{module}" "{name}" (func (param i32) (result i32)))
                (func (export "_start")))"#
        );
        let report = Job::new(wat.as_bytes(), &spec()).run();
        assert_eq!(report.outcome, Outcome::InvalidModule, "{report:?}");
        assert!(report.message.contains(name), "{}", report.message);
    }
}

#[test]
fn a_trap_is_trapped_with_its_text() {
    let wat = br#"(module (func (export "_start") unreachable))"#;
    let report = Job::new(wat, &spec()).run();
    assert_eq!(report.outcome, Outcome::Trapped, "{report:?}");
    assert!(report.message.contains("unreachable"), "{}", report.message);
}

#[test]
fn a_component_command_exits_0_or_1() {
    let report = Job::from_file("component_ok", &spec()).run();
    assert_exited(&report, 0);
    let report = Job::from_file("component_err", &spec()).run();
    assert_exited(&report, 1);
}

#[test]
fn a_component_prints_through_wasi_stdout() {
    let spec = JobSpec {
        max_output_bytes: 10,
        ..spec()
    };
    let job = Job::from_file("component_hello", &spec);
    let report = job.run();
    assert_exited(&report, 0);
    assert_eq!(job.stdout(), b"hello, com");
    assert!(report.stdout_truncated);
    assert_eq!(report.memory_peak_bytes, 65536);
}

#[test]
fn a_component_calling_wasi_exit_exits_with_its_code() {
    let report = Job::from_file("component_exit", &spec()).run();
    assert_exited(&report, 1);
}

#[test]
fn a_component_importing_what_is_not_offered_is_an_invalid_module() {
    let wat = br#"(component
        (import "example:nope/thing@1.0.0" (instance (export "f" (func))))
        (core module $m (func (export "run") (result i32) (i32.const 0)))
        (core instance $i (instantiate $m))
        (func $run (result (result)) (canon lift (core func $i "run")))
        (instance $run-instance (export "run" (func $run)))
        (export "wasi:cli/run@0.2.0" (instance $run-instance)))"#;
    let report = Job::new(wat, &spec()).run();
    assert_eq!(report.outcome, Outcome::InvalidModule, "{report:?}");
    assert!(
        report.message.contains("example:nope"),
        "{}",
        report.message
    );
}

#[test]
fn a_component_binary_is_detected_by_its_header() {
    let text = module("component_ok");
    let binary = wat::parse_bytes(&text).expect("component text");
    assert_eq!(&binary[4..8], &[0x0d, 0, 1, 0]);
    assert_exited(&Job::new(&binary, &spec()).run(), 0);
}

#[test]
fn a_bad_spec_is_an_error_not_a_report() {
    let job = Job::from_file("hello", &spec());
    std::fs::write(
        job.dir.path().join(p2pos_sandbox::SPEC_FILE),
        br#"{"args":[],"surprise":1}"#,
    )
    .expect("spec");
    assert!(p2pos_sandbox::run(job.dir.path()).is_err());
    assert!(!job.dir.path().join(p2pos_sandbox::RESULT_FILE).exists());
}
