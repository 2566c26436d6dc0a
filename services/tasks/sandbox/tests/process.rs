//! The job process: this test binary calls `run_if_requested` first, as `p2posd` does, and runs
//! itself as `__p2pos-wasm-job DIR`, checking its exit status and what it leaves in the job
//! directory. (No libtest harness: the binary must be able to become a job process.)

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use p2pos_sandbox::{JobSpec, Outcome, Report};

fn main() {
    p2pos_sandbox::run_if_requested();
    let tests: [(&str, fn()); 3] = [
        ("a_job_process_exits_0_with_a_report", exits_0_with_a_report),
        (
            "a_broken_job_dir_exits_2_with_one_line",
            exits_2_with_one_line,
        ),
        (
            "a_job_blocked_in_a_host_call_is_given_up_on",
            gives_up_on_a_blocked_job,
        ),
    ];
    // The test runners' protocol, as libtest speaks it: `--list [--ignored]` lists the tests
    // (`NAME: test`), a name filter (with `--exact`: the whole name) picks those to run.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let exact = args.iter().any(|a| a == "--exact");
    // None of these tests is ignored: asked for the ignored ones only, there is nothing to do.
    let only_ignored = args.iter().any(|a| a == "--ignored");
    // Options that take a value: the value is not a name filter.
    let valued = [
        "--format",
        "--test-threads",
        "--skip",
        "--color",
        "--logfile",
        "-Z",
    ];
    let filter = args
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            let value_of_option = *i > 0 && valued.contains(&args[i - 1].as_str());
            !a.starts_with('-') && !value_of_option
        })
        .map(|(_, a)| a)
        .next();
    let chosen: Vec<&(&str, fn())> = tests
        .iter()
        .filter(|(name, _)| match filter {
            None => true,
            Some(f) if exact => name == f,
            Some(f) => name.contains(f.as_str()),
        })
        .collect();
    if args.iter().any(|a| a == "--list") {
        if !only_ignored {
            for (name, _) in &chosen {
                println!("{name}: test");
            }
        }
        return;
    }
    if only_ignored {
        println!("0 passed, 0 failed");
        return;
    }
    for (name, test) in &chosen {
        test();
        println!("test {name} ... ok");
    }
    println!();
    println!("{} passed, 0 failed", chosen.len());
}

fn job_dir(module: &str, spec: &JobSpec) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let wat = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/modules/{module}.wat"));
    std::fs::copy(wat, dir.path().join(p2pos_sandbox::MODULE_FILE)).expect("module");
    let spec = serde_json::to_vec(spec).expect("spec json");
    std::fs::write(dir.path().join(p2pos_sandbox::SPEC_FILE), spec).expect("spec");
    std::fs::create_dir(dir.path().join(p2pos_sandbox::SCRATCH_DIR)).expect("scratch");
    dir
}

fn spec(timeout_ms: u64) -> JobSpec {
    JobSpec {
        args: vec!["prog".to_owned()],
        memory_bytes: 16 << 20,
        timeout_ms,
        fuel: 0,
        deterministic: true,
        max_output_bytes: 1 << 20,
        max_file_bytes: 0,
        max_cpu_secs: 0,
    }
}

fn run_job_process(dir: &Path) -> Output {
    Command::new(std::env::current_exe().expect("this test binary"))
        .arg(p2pos_sandbox::JOB_COMMAND)
        .arg(dir)
        .output()
        .expect("the job process starts")
}

fn report(dir: &Path) -> Report {
    let json = std::fs::read(dir.join(p2pos_sandbox::RESULT_FILE)).expect("result.json");
    serde_json::from_slice(&json).expect("a report")
}

fn exits_0_with_a_report() {
    let dir = job_dir("hello", &spec(30_000));
    let output = run_job_process(dir.path());
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let report = report(dir.path());
    assert_eq!((report.outcome, report.exit_code), (Outcome::Exited, 0));
    let stdout = std::fs::read(dir.path().join(p2pos_sandbox::STDOUT_FILE)).expect("stdout");
    assert_eq!(stdout, b"hello, world\n");
}

fn exits_2_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = run_job_process(dir.path());
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("job.json"), "{stderr}");
    assert!(!dir.path().join(p2pos_sandbox::RESULT_FILE).exists());
}

fn gives_up_on_a_blocked_job() {
    let dir = job_dir("sleep", &spec(300));
    let started = Instant::now();
    let output = run_job_process(dir.path());
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let report = report(dir.path());
    assert_eq!(report.outcome, Outcome::TimedOut, "{report:?}");
    assert!(
        report.message.contains("did not stop"),
        "{}",
        report.message
    );
}
