//! A check's result, built in one expression: `ok("store", "…").evidence(…)`,
//! `fail("disk", "…", "remedy")`.

use p2pos_proto::monitor::v1::{Check, Verdict};

/// A check that passed.
pub(crate) fn ok(name: &str, summary: impl Into<String>) -> Check {
    Check {
        name: name.to_owned(),
        verdict: Verdict::Ok.into(),
        summary: summary.into(),
        evidence: Vec::new(),
        remedy: String::new(),
    }
}

/// A check that works, but with something off, and what to do about it.
pub(crate) fn warn(name: &str, summary: impl Into<String>, remedy: impl Into<String>) -> Check {
    Check {
        verdict: Verdict::Warn.into(),
        remedy: remedy.into(),
        ..ok(name, summary)
    }
}

/// A check that found something broken, and what to do about it.
pub(crate) fn fail(name: &str, summary: impl Into<String>, remedy: impl Into<String>) -> Check {
    Check {
        verdict: Verdict::Fail.into(),
        remedy: remedy.into(),
        ..ok(name, summary)
    }
}

/// Adds what a check saw.
pub(crate) trait Evidence {
    /// With these facts, one per line.
    fn evidence<S: Into<String>>(self, facts: impl IntoIterator<Item = S>) -> Self;
}

impl Evidence for Check {
    fn evidence<S: Into<String>>(mut self, facts: impl IntoIterator<Item = S>) -> Self {
        self.evidence.extend(facts.into_iter().map(Into::into));
        self
    }
}

/// "1 peer", "2 peers".
pub(crate) fn count(n: usize, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    }
}

/// Bytes for people: "1.5 GiB".
pub(crate) fn bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_as_people_say_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 * 1024 * 1024), "64.0 MiB");
    }
}
