//! The monitor's diagnostic answers: `GetLogs` from the log ring, `GetMetrics` from the node's
//! registries, `GetConfig` from the text the daemon rendered at start.

use p2pos_kernel::{ServiceContext, ServiceError};
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

/// Every service's metrics in the Prometheus text format.
pub fn metrics_reply(ctx: &ServiceContext) -> GetMetricsReply {
    GetMetricsReply {
        text: ctx.metrics.encode(),
    }
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
