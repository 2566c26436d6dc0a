//! A job spec checked against the bounds of `p2pos.jobs.v1` (on the submitter, and again on
//! the runner: a peer may send anything), with its defaults filled in; and the digest that
//! tells equal results apart.

use p2pos_proto::jobs::v1::{File, JobSpec, Limits, Result as JobResult};
use sha2::{Digest, Sha256};

/// Largest module.
pub(crate) const MAX_MODULE: usize = 16 << 20;
/// Most arguments, and their bytes together.
pub(crate) const MAX_ARGS: usize = 256;
pub(crate) const MAX_ARG_BYTES: usize = 64 << 10;
/// Largest standard input.
pub(crate) const MAX_STDIN: usize = 4 << 20;
/// Most input (or output) files, their bytes together, and a path's length.
pub(crate) const MAX_FILES: usize = 64;
pub(crate) const MAX_FILE_BYTES: usize = 16 << 20;
pub(crate) const MAX_PATH: usize = 255;
/// Memory: the default, the least and the most.
pub(crate) const DEFAULT_MEMORY: u64 = 256 << 20;
pub(crate) const MIN_MEMORY: u64 = 1 << 20;
pub(crate) const MAX_MEMORY: u64 = 4 << 30;
/// Wall time: the default and the most, in ms.
pub(crate) const DEFAULT_TIMEOUT_MS: u64 = 30_000;
pub(crate) const MAX_TIMEOUT_MS: u64 = 23 * 3600 * 1000;
/// CPU cores: the default, the least and the most.
pub(crate) const DEFAULT_CPU: f64 = 1.0;
pub(crate) const MIN_CPU: f64 = 0.1;
pub(crate) const MAX_CPU: f64 = 64.0;
/// Output kept per stream: the default and the most.
pub(crate) const DEFAULT_OUTPUT: u64 = 1 << 20;
pub(crate) const MAX_OUTPUT: u64 = 8 << 20;
/// Most replicas.
pub(crate) const MAX_REPLICAS: u32 = 7;
/// Retries after a lost runner: the default and the most.
pub(crate) const DEFAULT_RETRIES: u32 = 2;
pub(crate) const MAX_RETRIES: u32 = 5;
/// The longest name.
const MAX_NAME: usize = 64;

/// The spec with every bound checked and every default filled in (`limits` set, `name` not
/// empty, `replicas` ≥ 1, `retries` the number to use).
pub(crate) fn check(mut spec: JobSpec) -> Result<JobSpec, String> {
    let JobSpec {
        module,
        args,
        name,
        stdin,
        files,
        limits,
        placement,
        replicas,
        deterministic,
        retries,
    } = &mut spec;
    if module.is_empty() {
        return Err("the module is empty".into());
    }
    if module.len() > MAX_MODULE {
        return Err(format!(
            "the module is {} bytes, more than {MAX_MODULE}",
            module.len()
        ));
    }
    if args.len() > MAX_ARGS {
        return Err(format!("{} arguments, more than {MAX_ARGS}", args.len()));
    }
    let arg_bytes: usize = args.iter().map(String::len).sum();
    if arg_bytes > MAX_ARG_BYTES {
        return Err(format!(
            "the arguments take {arg_bytes} bytes, more than {MAX_ARG_BYTES}"
        ));
    }
    if args.iter().any(|a| a.contains('\0')) {
        return Err("an argument contains a NUL character".into());
    }
    if name.is_empty() {
        "job".clone_into(name);
    }
    if name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(format!(
            "name {name:?} is not 1 to {MAX_NAME} printable characters"
        ));
    }
    if stdin.len() > MAX_STDIN {
        return Err(format!(
            "the standard input is {} bytes, more than {MAX_STDIN}",
            stdin.len()
        ));
    }
    check_files(files, "input")?;
    if let Some(placement) = placement {
        check_placement(placement)?;
    }
    *limits = Some(check_limits(limits.unwrap_or_default())?);
    if *replicas == 0 {
        *replicas = 1;
    }
    if *replicas > MAX_REPLICAS {
        return Err(format!("{replicas} replicas, more than {MAX_REPLICAS}"));
    }
    if *replicas > 1 && !*deterministic {
        return Err(
            "replicas can agree only on a deterministic job: set deterministic (and, for an \
             exact count of work, fuel)"
                .into(),
        );
    }
    *retries = match *retries {
        0 => DEFAULT_RETRIES,
        r if r > MAX_RETRIES => {
            return Err(format!("{r} retries, more than {MAX_RETRIES}"));
        }
        r => r,
    };
    Ok(spec)
}

/// Most peers a job may be placed among by name.
pub(crate) const MAX_PEERS: usize = 64;

/// Named peers are peer ids (at most [`MAX_PEERS`], no repeats); a group, a name or id of at
/// most 128 characters.
fn check_placement(placement: &p2pos_proto::jobs::v1::Placement) -> Result<(), String> {
    if placement.peers.len() > MAX_PEERS {
        return Err(format!(
            "placement.peers names {} peers, more than {MAX_PEERS}",
            placement.peers.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for peer in &placement.peers {
        let id: libp2p::PeerId = peer.parse().map_err(|_| {
            format!(
                "placement.peers: {:?} is not a peer id",
                peer.chars().take(80).collect::<String>()
            )
        })?;
        if !seen.insert(id) {
            return Err(format!("placement.peers names {id} twice"));
        }
    }
    if placement.group.chars().count() > 128 {
        return Err("placement.group is longer than 128 characters".into());
    }
    Ok(())
}

/// The limits with their defaults, checked.
fn check_limits(limits: Limits) -> Result<Limits, String> {
    let Limits {
        memory_bytes,
        timeout_ms,
        fuel,
        cpu,
        max_output_bytes,
    } = limits;
    let memory_bytes = match memory_bytes {
        0 => DEFAULT_MEMORY,
        m if (MIN_MEMORY..=MAX_MEMORY).contains(&m) => m,
        m => {
            return Err(format!(
                "limits.memory_bytes {m} is not from {MIN_MEMORY} to {MAX_MEMORY} (0: {DEFAULT_MEMORY})"
            ));
        }
    };
    let timeout_ms = match timeout_ms {
        0 => DEFAULT_TIMEOUT_MS,
        t if t <= MAX_TIMEOUT_MS => t,
        t => {
            return Err(format!(
                "limits.timeout_ms {t} is more than {MAX_TIMEOUT_MS} (23 hours)"
            ));
        }
    };
    let cpu = if cpu == 0.0 {
        DEFAULT_CPU
    } else if cpu.is_finite() && (MIN_CPU..=MAX_CPU).contains(&cpu) {
        cpu
    } else {
        return Err(format!(
            "limits.cpu {cpu} is not from {MIN_CPU} to {MAX_CPU} cores (0: {DEFAULT_CPU})"
        ));
    };
    let max_output_bytes = match max_output_bytes {
        0 => DEFAULT_OUTPUT,
        o if o <= MAX_OUTPUT => o,
        o => {
            return Err(format!(
                "limits.max_output_bytes {o} is more than {MAX_OUTPUT}"
            ));
        }
    };
    Ok(Limits {
        memory_bytes,
        timeout_ms,
        fuel,
        cpu,
        max_output_bytes,
    })
}

/// Files (`what`: "input" or "output") within the bounds, each path relative and plain.
pub(crate) fn check_files(files: &[File], what: &str) -> Result<(), String> {
    if files.len() > MAX_FILES {
        return Err(format!(
            "{} {what} files, more than {MAX_FILES}",
            files.len()
        ));
    }
    let bytes: usize = files.iter().map(|f| f.data.len()).sum();
    if bytes > MAX_FILE_BYTES {
        return Err(format!(
            "the {what} files take {bytes} bytes, more than {MAX_FILE_BYTES}"
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for file in files {
        check_path(&file.path).map_err(|why| format!("{what} file {:?}: {why}", file.path))?;
        if !seen.insert(file.path.as_str()) {
            return Err(format!("{what} file {:?} is given twice", file.path));
        }
    }
    Ok(())
}

/// A relative path of plain components (no `..`, `.`, empty parts, NUL or backslash).
pub(crate) fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() || path.len() > MAX_PATH {
        return Err("a path is 1 to 255 bytes");
    }
    if path.starts_with('/') {
        return Err("the path must be relative (to the job's scratch directory)");
    }
    if path.contains(['\0', '\\']) {
        return Err("the path contains a NUL or a backslash");
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("the path has an empty, `.` or `..` component");
    }
    Ok(())
}

/// SHA-256 over the exit code (4 bytes big-endian), then stdout, stderr and each file sorted
/// by path (path, then data), each preceded by its length as 8 bytes big-endian.
pub(crate) fn digest(result: &JobResult) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(result.exit_code.to_be_bytes());
    let mut part = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    part(&result.stdout);
    part(&result.stderr);
    let mut files: Vec<&File> = result.files.iter().collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    for file in files {
        part(file.path.as_bytes());
        part(&file.data);
    }
    hash.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            module: b"(module)".to_vec().into(),
            ..JobSpec::default()
        }
    }

    #[test]
    fn defaults_are_filled_in() {
        let checked = check(spec()).unwrap();
        let limits = checked.limits.unwrap();
        assert_eq!(limits.memory_bytes, DEFAULT_MEMORY);
        assert_eq!(limits.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(limits.cpu, DEFAULT_CPU);
        assert_eq!(checked.replicas, 1);
        assert_eq!(checked.retries, DEFAULT_RETRIES);
        assert_eq!(checked.name, "job");
    }

    #[test]
    fn out_of_bounds_specs_say_why() {
        let err = |f: fn(&mut JobSpec)| {
            let mut s = spec();
            f(&mut s);
            check(s).unwrap_err()
        };
        assert!(err(|s| s.module = Default::default()).contains("empty"));
        assert!(err(|s| s.replicas = 3).contains("deterministic"));
        assert!(err(|s| s.replicas = 9).contains("more than 7"));
        assert!(
            err(|s| s.placement = Some(p2pos_proto::jobs::v1::Placement {
                peers: vec!["not-a-peer".into()],
                group: String::new(),
            }))
            .contains("not a peer id")
        );
        assert!(
            err(|s| s.files = vec![File {
                path: "../x".into(),
                data: Default::default()
            }])
            .contains("`..`")
        );
        assert!(
            err(|s| s.files = vec![File {
                path: "/etc/passwd".into(),
                data: Default::default()
            }])
            .contains("relative")
        );
        assert!(
            err(|s| s.limits = Some(Limits {
                cpu: f64::NAN,
                ..Limits::default()
            }))
            .contains("limits.cpu")
        );
        assert!(
            err(|s| s.limits = Some(Limits {
                memory_bytes: 5,
                ..Limits::default()
            }))
            .contains("limits.memory_bytes")
        );
    }

    #[test]
    fn digests_tell_results_apart() {
        let a = JobResult {
            exit_code: 0,
            stdout: b"42\n".to_vec().into(),
            ..JobResult::default()
        };
        let mut b = a.clone();
        assert_eq!(digest(&a), digest(&b));
        b.stdout = b"43\n".to_vec().into();
        assert_ne!(digest(&a), digest(&b));
        // Moving a byte from stdout to stderr is a different result.
        let c = JobResult {
            stdout: b"42".to_vec().into(),
            stderr: b"\n".to_vec().into(),
            ..JobResult::default()
        };
        assert_ne!(digest(&a), digest(&c));
        // The files' order does not matter, their paths do.
        let f = |p: &str| File {
            path: p.into(),
            data: b"x".to_vec().into(),
        };
        let d = JobResult {
            files: vec![f("a"), f("b")],
            ..JobResult::default()
        };
        let e = JobResult {
            files: vec![f("b"), f("a")],
            ..JobResult::default()
        };
        assert_eq!(digest(&d), digest(&e));
    }
}
