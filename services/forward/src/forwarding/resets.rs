//! Resets of forwarded connections: every connection a forward or an exposure ends before its
//! time (no channel to the service could be opened, the target could not be reached, the
//! tunnel broke, too many were open, it was idle too long) is logged as a warning with its reason and counted: per
//! forward or exposure (`resets` and `last_reset` in the lists), and node-wide in the
//! Prometheus counter `p2pos_forward_connection_resets_total{reason}`.

use std::sync::{
    Mutex,
    atomic::{AtomicU64, Ordering},
};

use p2pos_kernel::metrics::Metrics;
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

/// Longest `last_reset` kept, in bytes.
const MAX_REASON: usize = 256;

/// Why a forwarded connection was reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// No channel to the service could be opened (nobody provides it, the provider refused
    /// or could not be reached).
    NoChannel,
    /// The exposure's target did not accept the connection.
    TargetUnreachable,
    /// The tunnel broke while open.
    Broke,
    /// Too many tunnels were open.
    TooMany,
    /// No byte moved either way for the tunnel's idle time.
    Idle,
}

impl Reason {
    /// The counter's label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Reason::NoChannel => "no_channel",
            Reason::TargetUnreachable => "target_unreachable",
            Reason::Broke => "broke",
            Reason::TooMany => "too_many",
            Reason::Idle => "idle",
        }
    }
}

/// The node-wide counter of resets, by reason (unregistered until [`Resets::register`]).
#[derive(Clone, Default, Debug)]
pub(crate) struct Resets(Family<Vec<(String, String)>, Counter>);

impl Resets {
    /// A counter registered with the node's metrics (as service `forward`).
    pub(crate) fn register(metrics: &Metrics) -> Self {
        let resets = Self::default();
        let mut registry = Registry::with_prefix("p2pos_forward");
        registry.register(
            "connection_resets",
            "Forwarded connections reset, by reason",
            resets.0.clone(),
        );
        metrics.set("forward", registry);
        resets
    }

    fn count(&self, reason: Reason) {
        self.0
            .get_or_create(&vec![("reason".to_owned(), reason.label().to_owned())])
            .inc();
    }
}

/// The resets of one forward or exposure.
#[derive(Debug, Default)]
pub(crate) struct Counted {
    total: AtomicU64,
    last: Mutex<String>,
}

impl Counted {
    /// Counts a reset here and node-wide, `why` saying what happened.
    pub(crate) fn reset(&self, resets: &Resets, reason: Reason, mut why: String) {
        self.total.fetch_add(1, Ordering::Relaxed);
        resets.count(reason);
        if why.len() > MAX_REASON {
            let mut end = MAX_REASON;
            while !why.is_char_boundary(end) {
                end -= 1;
            }
            why.truncate(end);
        }
        if let Ok(mut last) = self.last.lock() {
            *last = why;
        }
    }

    /// Resets so far, and why the last one happened.
    pub(crate) fn get(&self) -> (u64, String) {
        let last = self.last.lock().map(|l| l.clone()).unwrap_or_default();
        (self.total.load(Ordering::Relaxed), last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_are_counted_with_a_bounded_reason() {
        let metrics = Metrics::default();
        let resets = Resets::register(&metrics);
        let counted = Counted::default();
        counted.reset(&resets, Reason::NoChannel, "é".repeat(300));
        counted.reset(&resets, Reason::Broke, "broke".into());
        assert_eq!(counted.get(), (2, "broke".to_owned()));
        counted.reset(&resets, Reason::NoChannel, "é".repeat(300));
        assert!(counted.get().1.len() <= MAX_REASON);
        let text = metrics.encode();
        assert!(
            text.contains(r#"p2pos_forward_connection_resets_total{reason="no_channel"} 2"#),
            "{text}"
        );
    }
}
