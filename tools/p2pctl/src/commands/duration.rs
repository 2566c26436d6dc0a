//! Durations people type: `500ms`, `30s`, `10m`, `1h`, `2d`, or a bare number of seconds.
//! Parsed when the command runs (not by clap), so that a bad one is a one-line error naming
//! its option.

use std::time::Duration;

/// The duration in `text`, the value of option `flag` (named in the error).
pub(crate) fn parse(flag: &str, text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| {
        anyhow::anyhow!("{flag} is a duration such as 500ms, 30s, 10m, 1h, 2d (got {text:?})")
    })?;
    let millis: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => anyhow::bail!("{flag}: unknown unit {other:?} (ms, s, m, h or d)"),
    };
    Ok(Duration::from_millis(n.saturating_mul(millis)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_units() {
        let ms = |t: &str| parse("--x", t).unwrap().as_millis();
        assert_eq!(ms("500ms"), 500);
        assert_eq!(ms("30"), 30_000);
        assert_eq!(ms("30s"), 30_000);
        assert_eq!(ms(" 10m "), 600_000);
        assert_eq!(ms("1h"), 3_600_000);
        assert_eq!(ms("2d"), 172_800_000);
        assert_eq!(ms("0s"), 0);
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        let err = |t: &str| parse("--report", t).unwrap_err().to_string();
        assert!(err("").starts_with("--report is a duration"), "{}", err(""));
        assert!(err("s").starts_with("--report is a duration"));
        assert!(err("-5s").starts_with("--report is a duration"));
        assert!(
            err("1.5s").contains("unknown unit \".5s\""),
            "{}",
            err("1.5s")
        );
        assert!(err("5y").contains("unknown unit \"y\""));
    }
}
