//! The caller's gRPC deadline, from the `grpc-timeout` request header (gRPC over HTTP/2:
//! `TimeoutValue` of 1–8 ASCII digits, then a unit `H`, `M`, `S`, `m`, `u` or `n`).
//!
//! The service is given a deadline a little before the caller's own ([`margin`]): tonic
//! clients cut a call at their deadline themselves, with `CANCELLED "Timeout expired"` (and the
//! gateway's tonic server does too), so a `DEADLINE_EXCEEDED` from the node, with a message
//! saying what was waited for, must be on its way back before then.

use std::time::{Duration, Instant};

use tonic::{Status, metadata::MetadataMap};

/// The request header carrying the caller's timeout.
const HEADER: &str = "grpc-timeout";

/// Most digits of a timeout value, per the gRPC spec.
const MAX_DIGITS: usize = 8;

/// When the node must have answered for the caller to still be waiting, counted from now:
/// `None` without a `grpc-timeout` header (or with one too far away to represent);
/// `INVALID_ARGUMENT` for a malformed one.
pub fn from_metadata(metadata: &MetadataMap) -> Result<Option<Instant>, Status> {
    let Some(value) = metadata.get(HEADER) else {
        return Ok(None);
    };
    let timeout = value
        .to_str()
        .ok()
        .and_then(parse_timeout)
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "malformed grpc-timeout header {value:?}: expected 1-8 digits and a unit (H, M, S, m, u, n)"
            ))
        })?;
    Ok(Instant::now().checked_add(timeout - margin(timeout)))
}

/// How much sooner than the caller's timeout the node answers: a tenth of it, at least 20 ms
/// and at most 250 ms, and never more than half of it.
pub fn margin(timeout: Duration) -> Duration {
    (timeout / 10)
        .clamp(Duration::from_millis(20), Duration::from_millis(250))
        .min(timeout / 2)
}

/// A `grpc-timeout` value as a duration, e.g. `"250m"` → 250 ms; `None` if malformed.
pub fn parse_timeout(text: &str) -> Option<Duration> {
    let split = text.len().checked_sub(1)?;
    if !text.is_char_boundary(split) {
        return None;
    }
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() || digits.len() > MAX_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // At most 8 digits: no overflow below, even in hours.
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_timeout("4S"), Some(Duration::from_secs(4)));
        assert_eq!(parse_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("30000000u"), Some(Duration::from_secs(30)));
        assert_eq!(parse_timeout("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(parse_timeout("0m"), Some(Duration::ZERO));
        assert_eq!(
            parse_timeout("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600)),
            "the largest value does not overflow"
        );
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "S",
            "m",
            "123",
            "123456789S",
            "12s",
            "1.5S",
            "-1S",
            "+1S",
            " 1S",
            "1S ",
            "1 S",
            "1é",
            "éS",
            "0x1S",
        ] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_node_answers_a_little_before_the_caller_gives_up() {
        let ms = Duration::from_millis;
        assert_eq!(margin(ms(500)), ms(50), "a tenth");
        assert_eq!(margin(ms(100)), ms(20), "at least 20 ms");
        assert_eq!(margin(ms(30)), ms(15), "at most half");
        assert_eq!(margin(Duration::ZERO), Duration::ZERO);
        assert_eq!(margin(Duration::from_secs(60)), ms(250), "at most 250 ms");
    }

    #[test]
    fn a_header_becomes_a_deadline_from_now() {
        let mut metadata = MetadataMap::new();
        assert_eq!(from_metadata(&metadata).expect("no header"), None);

        metadata.insert(HEADER, "5S".parse().expect("ascii"));
        let before = Instant::now();
        let deadline = from_metadata(&metadata)
            .expect("well formed")
            .expect("a deadline");
        let after = Instant::now();
        let answer_within = Duration::from_millis(4750);
        assert!(deadline >= before + answer_within);
        assert!(deadline <= after + answer_within);

        metadata.insert(HEADER, "soon".parse().expect("ascii"));
        let err = from_metadata(&metadata).expect_err("malformed");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("grpc-timeout"), "{err:?}");
    }
}
