//! The check of the node's recent log: errors (and warnings) in the last minutes, from the ring
//! of log lines the node keeps (`GetLogs`).

use p2pos_kernel::events::now_ms;
use p2pos_proto::monitor::v1::Check;
use tracing::Level;

use super::check::{Evidence, count, ok, warn};
use crate::LogRing;

/// How far back the check looks.
const WINDOW_MS: u64 = 10 * 60 * 1000;
/// Most lines it reads, and shows.
const READ: usize = 500;
const SHOWN: usize = 5;

/// Errors in the last [`WINDOW_MS`] warn (with the last ones as evidence); warnings alone are
/// told, not judged: the other checks say whether something they point at is broken.
pub(crate) fn recent(ring: &LogRing) -> Check {
    let since = now_ms().saturating_sub(WINDOW_MS);
    let lines: Vec<_> = ring
        .recent(Level::WARN, READ)
        .into_iter()
        .filter(|l| l.at_ms >= since)
        .collect();
    let errors = lines.iter().filter(|l| l.level == Level::ERROR).count();
    let warnings = lines.len() - errors;
    let shown = |level: Option<Level>| -> Vec<String> {
        let picked: Vec<String> = lines
            .iter()
            .filter(|l| level.is_none_or(|want| l.level == want))
            .map(|l| format!("{} {}: {}", l.level, l.target, l.text))
            .collect();
        picked[picked.len().saturating_sub(SHOWN)..].to_vec()
    };
    if errors > 0 {
        let last = shown(Some(Level::ERROR)).pop().unwrap_or_default();
        return warn(
            "log",
            format!(
                "{} in the last 10 minutes; the last: {last}",
                count(errors, "error")
            ),
            "read them in full with `p2pctl logs --level warn`; for a bug report, \
             `p2pctl diag bundle FILE` gathers logs, status and this report",
        )
        .evidence(shown(None));
    }
    let summary = match warnings {
        0 => "no warnings or errors in the last 10 minutes".to_owned(),
        n => format!("no errors; {} in the last 10 minutes", count(n, "warning")),
    };
    ok("log", summary).evidence(shown(None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pos_proto::monitor::v1::Verdict;

    #[test]
    fn errors_warn_with_the_last_one_and_warnings_alone_are_told() {
        let ring = LogRing::new(100, 64 * 1024);
        let quiet = recent(&ring);
        assert_eq!(quiet.verdict(), Verdict::Ok);
        assert_eq!(
            quiet.summary,
            "no warnings or errors in the last 10 minutes"
        );
        ring.push(
            Level::WARN,
            "p2pos_network",
            "a bootstrap peer is not a peer",
        );
        ring.push(Level::INFO, "p2pos_kernel", "booting");
        let warned = recent(&ring);
        assert_eq!(warned.verdict(), Verdict::Ok);
        assert_eq!(
            warned.summary,
            "no errors; 1 warning in the last 10 minutes"
        );
        ring.push(Level::ERROR, "p2pos_tasks", "cannot start helper x");
        let failed = recent(&ring);
        assert_eq!(failed.verdict(), Verdict::Warn);
        assert!(
            failed
                .summary
                .ends_with("the last: ERROR p2pos_tasks: cannot start helper x"),
            "{}",
            failed.summary
        );
        assert_eq!(failed.evidence.len(), 2);
    }
}
