//! The monitor's diagnostic answers: `GetLogs` from the log ring, `GetMetrics` from the node's
//! registries, `GetConfig` from the text the daemon rendered at start.

use p2pos_kernel::{ErrorCode, ServiceContext, ServiceError};
use p2pos_proto::monitor::v1::{GetConfigReply, GetLogsReply, GetMetricsReply, LogCount, LogLine};

use crate::logs::{self, LogRing};

/// The last `limit` lines of `min_level` or more severe, and the WARN/ERROR counts.
pub fn logs_reply(ring: &LogRing, min_level: tracing::Level, limit: usize) -> GetLogsReply {
    let lines = ring
        .recent(min_level, limit)
        .iter()
        .map(|line| {
            let logs::LogLine {
                seq,
                at_ms,
                level,
                target,
                text,
            } = line.as_ref();
            LogLine {
                seq: *seq,
                at_ms: *at_ms,
                level: level.as_str().to_owned(),
                target: target.clone(),
                text: text.clone(),
            }
        })
        .collect();
    let counts = ring
        .counts()
        .into_iter()
        .map(
            |logs::TargetCounts {
                 target,
                 warnings,
                 errors,
             }| LogCount {
                target,
                warnings,
                errors,
            },
        )
        .collect();
    GetLogsReply {
        lines,
        counts,
        written: ring.written(),
    }
}

/// The largest metrics text `GetMetrics` answers: what a gRPC message carries (2 MiB), less
/// room for its framing.
pub const MAX_METRICS_BYTES: usize = 2 * 1024 * 1024 - 4096;

/// Every service's metrics in the Prometheus text format; `RESOURCE_EXHAUSTED` if the text is
/// too large for one gRPC message (it is never cut: a cut exposition would not parse).
pub fn metrics_reply(ctx: &ServiceContext) -> Result<GetMetricsReply, ServiceError> {
    let text = ctx.metrics.encode();
    if text.len() > MAX_METRICS_BYTES {
        return Err(ServiceError::new(
            ErrorCode::ResourceExhausted,
            format!(
                "the metrics text is {} bytes, more than one gRPC message carries \
                 ({MAX_METRICS_BYTES}); serve them over HTTP with --metrics",
                text.len()
            ),
        ));
    }
    Ok(GetMetricsReply { text })
}

/// The configuration the daemon rendered; `UNAVAILABLE` if it handed none.
pub fn config_reply(effective: &str) -> Result<GetConfigReply, ServiceError> {
    if effective.is_empty() {
        return Err(ServiceError::unavailable(
            "this node was started without its configuration rendered",
        ));
    }
    Ok(GetConfigReply {
        toml: effective.to_owned(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use p2pos_kernel::ErrorCode;
    use tracing::Level;

    use super::*;

    #[test]
    fn logs_come_oldest_first_with_their_counts() {
        let ring = LogRing::default();
        ring.push(Level::INFO, "a", "one");
        ring.push(Level::WARN, "b", "two");
        ring.push(Level::INFO, "a", "three");
        let reply = logs_reply(&ring, Level::INFO, 2);
        let texts: Vec<_> = reply.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["two", "three"]);
        assert_eq!(reply.lines[0].level, "WARN");
        assert_eq!(reply.written, 3);
        assert_eq!(
            (reply.counts[0].target.as_str(), reply.counts[0].warnings),
            ("b", 1)
        );
    }

    #[test]
    fn a_config_never_rendered_is_unavailable() {
        assert_eq!(config_reply("").unwrap_err().code, ErrorCode::Unavailable);
        assert_eq!(config_reply("a = 1\n").unwrap().toml, "a = 1\n");
    }
}
