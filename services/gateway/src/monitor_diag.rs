//! Checks of the diagnostic calls of `p2pos.monitor.v1.Monitor` (`GetLogs`, `GetMetrics`,
//! `GetConfig`, admin only): what a `GetLogsRequest` may ask for.

use p2pos_proto::monitor::v1::GetLogsRequest;
use tonic::Status;
use tracing::Level;

/// Lines `GetLogs` answers when the request says 0.
pub const DEFAULT_LOG_LINES: usize = 200;
/// The most lines `GetLogs` answers; a larger limit is answered with this many.
pub const MAX_LOG_LINES: usize = 2000;

/// The level and the number of lines a `GetLogs` request asks for.
pub(crate) fn logs_request(req: GetLogsRequest) -> Result<(Level, usize), Status> {
    let GetLogsRequest { min_level, limit } = req;
    let level = match min_level.trim().to_ascii_lowercase().as_str() {
        "" | "info" => Level::INFO,
        "warn" | "warning" => Level::WARN,
        "error" => Level::ERROR,
        other => {
            let mut shown: String = other.chars().take(32).collect();
            if other.chars().count() > 32 {
                shown.push('…');
            }
            return Err(Status::invalid_argument(format!(
                "unknown log level {shown:?}: use error, warn or info (the node keeps nothing \
                 below info)"
            )));
        }
    };
    let limit = match usize::try_from(limit).unwrap_or(MAX_LOG_LINES) {
        0 => DEFAULT_LOG_LINES,
        n => n.min(MAX_LOG_LINES),
    };
    Ok((level, limit))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn req(min_level: &str, limit: u32) -> GetLogsRequest {
        GetLogsRequest {
            min_level: min_level.to_owned(),
            limit,
        }
    }

    #[test]
    fn levels_and_limits_are_checked_and_bounded() {
        assert_eq!(
            logs_request(req("", 0)).unwrap(),
            (Level::INFO, DEFAULT_LOG_LINES)
        );
        assert_eq!(logs_request(req("WARN", 5)).unwrap(), (Level::WARN, 5));
        assert_eq!(
            logs_request(req("error", u32::MAX)).unwrap(),
            (Level::ERROR, MAX_LOG_LINES)
        );
        let err = logs_request(req("debug", 1)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let err = logs_request(req(&"x".repeat(10_000), 1)).unwrap_err();
        assert!(err.message().len() < 200, "{}", err.message());
    }
}
