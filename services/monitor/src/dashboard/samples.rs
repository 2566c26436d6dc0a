//! The charts' data: every [`INTERVAL`] the node samples its own counters into a ring of the
//! last [`KEPT`] samples (five minutes), so a page opened now shows the last minutes at once;
//! each new sample is also pushed to the open pages. The last [`RECENT_EVENTS`] events are
//! kept too, so a page opened now shows what just happened.
//!
//! Traffic is the swarm's byte counters (`libp2p_bandwidth_bytes_total`, all connections,
//! by direction) read from the node's metrics; messages are the store-and-forward messages
//! delivered each way and group pubsub messages accepted; events are everything on the
//! event bus. Each sample holds per-second rates over its interval.

use std::{collections::VecDeque, sync::Mutex, time::Duration};

use p2pos_kernel::{EventBus, events::now_ms, metrics::Metrics};
use p2pos_proto::monitor::v1::{Event, event::Kind};
use serde::Serialize;
use tokio::sync::broadcast::{self, error::RecvError};

/// How often the counters are sampled.
pub(crate) const INTERVAL: Duration = Duration::from_secs(2);
/// How many samples are kept: five minutes.
pub(crate) const KEPT: usize = 150;
/// How many recent events are kept.
pub(crate) const RECENT_EVENTS: usize = 100;

/// One sample: per-second rates over the interval that ends at `at_ms`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Sample {
    /// When it was taken, ms since the Unix epoch.
    pub(crate) at_ms: u64,
    /// Bytes received per second, all connections.
    pub(crate) bytes_in: f64,
    /// Bytes sent per second.
    pub(crate) bytes_out: f64,
    /// Messages delivered to apps here per second.
    pub(crate) messages_in: f64,
    /// Messages of apps here that peers confirmed per second.
    pub(crate) messages_out: f64,
    /// Group pubsub messages accepted per second.
    pub(crate) pubsub: f64,
    /// Events per second.
    pub(crate) events: f64,
    /// Connected peers when it was taken.
    pub(crate) peers: f64,
}

/// The counters a sample is the difference of.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    bytes_in: f64,
    bytes_out: f64,
    messages_in: u64,
    messages_out: u64,
    pubsub: f64,
    events: u64,
}

/// The kept samples, and the channel on which new ones go to the open pages; the recent
/// events.
#[derive(Debug)]
pub(crate) struct Samples {
    ring: Mutex<VecDeque<Sample>>,
    new: broadcast::Sender<Sample>,
    recent: Mutex<VecDeque<Event>>,
}

impl Samples {
    /// An empty ring.
    pub(crate) fn new() -> Self {
        Self {
            ring: Mutex::new(VecDeque::with_capacity(KEPT)),
            new: broadcast::channel(16).0,
            recent: Mutex::new(VecDeque::with_capacity(RECENT_EVENTS)),
        }
    }

    /// The recent events, oldest first.
    pub(crate) fn recent_events(&self) -> Vec<Event> {
        self.recent
            .lock()
            .map(|recent| recent.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn remember(&self, event: Event) {
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == RECENT_EVENTS {
                recent.pop_front();
            }
            recent.push_back(event);
        }
    }

    /// The kept samples, oldest first.
    pub(crate) fn kept(&self) -> Vec<Sample> {
        self.ring
            .lock()
            .map(|ring| ring.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// New samples from now on.
    pub(crate) fn follow(&self) -> broadcast::Receiver<Sample> {
        self.new.subscribe()
    }

    fn push(&self, sample: Sample) {
        if let Ok(mut ring) = self.ring.lock() {
            if ring.len() == KEPT {
                ring.pop_front();
            }
            ring.push_back(sample.clone());
        }
        let _ = self.new.send(sample);
    }

    /// Samples the node's counters every [`INTERVAL`], forever.
    pub(crate) async fn run(&self, metrics: Metrics, events: EventBus) {
        let mut bus = events.subscribe();
        let mut totals = Totals::default();
        read_metrics(&metrics.encode(), &mut totals);
        let mut last = totals;
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut started = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let text = metrics.encode();
                    read_metrics(&text, &mut totals);
                    let secs = started.elapsed().as_secs_f64().max(0.001);
                    started = tokio::time::Instant::now();
                    let peers = metric_sum(&text, "p2pos_overlay_connected_peers", None);
                    self.push(rates(&last, &totals, secs, peers.unwrap_or(0.0)));
                    last = totals;
                }
                event = bus.recv() => match event {
                    Ok(event) => {
                        count(&mut totals, event.kind.as_ref());
                        self.remember(event);
                    }
                    Err(RecvError::Lagged(missed)) => totals.events += missed,
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }
}

fn count(totals: &mut Totals, kind: Option<&Kind>) {
    totals.events += 1;
    if let Some(Kind::MessageDelivered(delivered)) = kind {
        if delivered.inbound {
            totals.messages_in += 1;
        } else {
            totals.messages_out += 1;
        }
    }
}

fn read_metrics(text: &str, totals: &mut Totals) {
    let bytes = "libp2p_bandwidth_bytes_total";
    totals.bytes_in = metric_sum(text, bytes, Some(("direction", "inbound"))).unwrap_or(0.0);
    totals.bytes_out = metric_sum(text, bytes, Some(("direction", "outbound"))).unwrap_or(0.0);
    totals.pubsub = metric_sum(text, "p2pos_overlay_gossip_accepted_total", None).unwrap_or(0.0);
}

/// Rates from `before` to `after` over `secs`; a counter that went down (its service
/// restarted with fresh counters) counts from zero.
fn rates(before: &Totals, after: &Totals, secs: f64, peers: f64) -> Sample {
    let rate = |b: f64, a: f64| if a >= b { (a - b) / secs } else { a / secs };
    let count_rate = |b: u64, a: u64| a.saturating_sub(b) as f64 / secs;
    Sample {
        at_ms: now_ms(),
        bytes_in: rate(before.bytes_in, after.bytes_in),
        bytes_out: rate(before.bytes_out, after.bytes_out),
        messages_in: count_rate(before.messages_in, after.messages_in),
        messages_out: count_rate(before.messages_out, after.messages_out),
        pubsub: rate(before.pubsub, after.pubsub),
        events: count_rate(before.events, after.events),
        peers,
    }
}

/// The sum of the samples of metric `name` in the Prometheus text format, over those whose
/// label `label.0` is `label.1` (case-insensitively) when one is given; `None` if none.
fn metric_sum(text: &str, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(rest) => match rest.rsplit_once('}') {
                Some((labels, value)) => (labels, value),
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue, // another metric whose name starts with this one
        };
        if let Some((key, wanted)) = label {
            let matches = labels.split(',').any(|pair| {
                pair.split_once('=').is_some_and(|(k, v)| {
                    k.trim() == key && v.trim().trim_matches('"').eq_ignore_ascii_case(wanted)
                })
            });
            if !matches {
                continue;
            }
        }
        let Some(value) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        sum = Some(sum.unwrap_or(0.0) + value);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP libp2p_bandwidth_bytes Bandwidth\n\
        # TYPE libp2p_bandwidth_bytes counter\n\
        libp2p_bandwidth_bytes_total{protocols=\"/ip4/tcp\",direction=\"Inbound\"} 100\n\
        libp2p_bandwidth_bytes_total{protocols=\"/ip4/udp/quic-v1\",direction=\"Inbound\"} 50\n\
        libp2p_bandwidth_bytes_total{protocols=\"/ip4/tcp\",direction=\"Outbound\"} 7\n\
        p2pos_overlay_connected_peers 3\n\
        p2pos_overlay_connected_peers_max 9\n\
        # EOF\n";

    #[test]
    fn counters_are_summed_by_label() {
        let bytes = "libp2p_bandwidth_bytes_total";
        assert_eq!(
            metric_sum(TEXT, bytes, Some(("direction", "inbound"))),
            Some(150.0)
        );
        assert_eq!(
            metric_sum(TEXT, bytes, Some(("direction", "outbound"))),
            Some(7.0)
        );
        assert_eq!(metric_sum(TEXT, bytes, None), Some(157.0));
        assert_eq!(
            metric_sum(TEXT, "p2pos_overlay_connected_peers", None),
            Some(3.0)
        );
        assert_eq!(metric_sum(TEXT, "nope", None), None);
    }

    #[test]
    fn rates_are_per_second_and_survive_a_reset() {
        let before = Totals {
            bytes_in: 100.0,
            bytes_out: 1000.0,
            messages_in: 1,
            ..Totals::default()
        };
        let after = Totals {
            bytes_in: 300.0,
            bytes_out: 10.0, // restarted
            messages_in: 5,
            ..Totals::default()
        };
        let sample = rates(&before, &after, 2.0, 4.0);
        assert_eq!(sample.bytes_in, 100.0);
        assert_eq!(sample.bytes_out, 5.0);
        assert_eq!(sample.messages_in, 2.0);
        assert_eq!(sample.peers, 4.0);
    }

    #[test]
    fn the_ring_keeps_the_last_samples() {
        let samples = Samples::new();
        for at_ms in 0..(KEPT as u64 + 10) {
            samples.push(Sample {
                at_ms,
                ..Sample::default()
            });
        }
        let kept = samples.kept();
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].at_ms, 10);
    }
}
