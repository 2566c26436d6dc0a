//! The numbers of a set of [trials](super::trials): counts, percentiles, and a report of every
//! trial, as the NAT lab's tests print them.

use std::{fmt, time::Duration};

use super::trials::{DIAL_DEADLINE, Outcome, RESERVATION_DEADLINE};

/// The numbers of a set of trials.
#[derive(Debug, Clone)]
pub struct Summary {
    /// What was tried (for the report's first line).
    pub label: String,
    /// The trials.
    pub outcomes: Vec<Outcome>,
    /// How long each trial waited for a direct connection.
    pub direct_within: Duration,
}

impl Summary {
    /// Number of trials.
    pub fn trials(&self) -> usize {
        self.outcomes.len()
    }

    /// Every node's time to its reservation (two per trial).
    pub fn reservations(&self) -> Vec<Option<Duration>> {
        self.outcomes.iter().flat_map(|o| o.reservations).collect()
    }

    /// Trials in which A reached B by peer id.
    pub fn reached(&self) -> usize {
        self.outcomes.iter().filter(|o| o.dial.is_ok()).count()
    }

    /// Trials in which A and B got a direct connection.
    pub fn direct(&self) -> usize {
        self.outcomes.iter().filter(|o| o.direct.is_some()).count()
    }

    /// Trials that ended connected only through the relay where A's or B's status did not say
    /// why.
    pub fn unexplained_relayed(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| {
                o.seen.iter().any(|seen| {
                    seen.as_ref()
                        .is_some_and(|p| !p.direct && p.why_relayed.is_empty())
                })
            })
            .count()
    }

    /// Every trial's time to a direct connection.
    pub fn direct_times(&self) -> Vec<Option<Duration>> {
        self.outcomes.iter().map(|o| o.direct).collect()
    }
}

/// The `p`-th percentile (nearest rank) of `samples`, where `None` (never happened) counts as
/// longer than any time: `None` when the percentile falls on one.
pub fn percentile(samples: &[Option<Duration>], p: f64) -> Option<Duration> {
    let mut sorted: Vec<Option<Duration>> = samples.to_vec();
    sorted.sort_by_key(|s| s.unwrap_or(Duration::MAX));
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.max(1) - 1).copied().flatten()
}

/// At most the first 240 characters of `error` (a dial's error lists every address tried).
fn short(error: &str) -> String {
    match error.char_indices().nth(240) {
        Some((end, _)) => format!("{}…", &error[..end]),
        None => error.to_owned(),
    }
}

/// "1.23 s", or "> DEADLINE" for `None`.
fn shown(time: Option<Duration>, deadline: Duration) -> String {
    match time {
        Some(t) => format!("{:.2} s", t.as_secs_f64()),
        None => format!("> {} s", deadline.as_secs()),
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.trials();
        let reservations = self.reservations();
        let held = reservations.iter().filter(|r| r.is_some()).count();
        let (rd, dd) = (RESERVATION_DEADLINE, self.direct_within);
        writeln!(f, "== {} ({n} trials)", self.label)?;
        writeln!(
            f,
            "  relay reservation after start: {held}/{} within {} s; p50 {}, p95 {}",
            reservations.len(),
            rd.as_secs(),
            shown(percentile(&reservations, 50.0), rd),
            shown(percentile(&reservations, 95.0), rd),
        )?;
        let dials: Vec<Option<Duration>> =
            self.outcomes.iter().map(|o| o.dial.clone().ok()).collect();
        writeln!(
            f,
            "  dial by peer id alone: {}/{n} reached; p50 {}",
            self.reached(),
            shown(percentile(&dials, 50.0), DIAL_DEADLINE),
        )?;
        let by_ticket: Vec<&Result<Duration, String>> = self
            .outcomes
            .iter()
            .filter_map(|o| o.ticket_dial.as_ref())
            .collect();
        if !by_ticket.is_empty() {
            writeln!(
                f,
                "  dial by ticket where the dial by peer id failed: {}/{} reached",
                by_ticket.iter().filter(|d| d.is_ok()).count(),
                by_ticket.len(),
            )?;
        }
        let direct = self.direct_times();
        writeln!(
            f,
            "  direct connection: {}/{n} within {} s of the dial ({} after a dial by ticket); \
             p50 {}, p95 {}",
            self.direct(),
            dd.as_secs(),
            self.outcomes
                .iter()
                .filter(|o| o.direct.is_some() && o.ticket_dial.is_some())
                .count(),
            shown(percentile(&direct, 50.0), dd),
            shown(percentile(&direct, 95.0), dd),
        )?;
        for o in &self.outcomes {
            let reservations = o.reservations.map(|r| shown(r, rd));
            let dial = match (&o.dial, &o.ticket_dial) {
                (Ok(t), _) => format!("{:.2} s", t.as_secs_f64()),
                (Err(e), None) => format!("failed: {}", short(e)),
                (Err(e), Some(Ok(t))) => {
                    format!("failed: {}; by ticket {:.2} s", short(e), t.as_secs_f64())
                }
                (Err(e), Some(Err(t))) => {
                    format!("failed: {}; by ticket failed: {}", short(e), short(t))
                }
            };
            let seen = o.seen.each_ref().map(|seen| match seen {
                Some(p) if p.direct => format!("direct ({})", p.transport),
                Some(p) => format!("relayed ({:?}; {:?})", p.why_relayed, p.addresses),
                None => "not connected".to_owned(),
            });
            let [mapping_a, mapping_b] = &o.nat_mapping;
            writeln!(
                f,
                "  trial {:2}: reservations {} / {}; dial {dial}; direct {}; at the end A sees \
                 B {}, B sees A {}; NAT mappings {mapping_a:?} / {mapping_b:?}",
                o.trial,
                reservations[0],
                reservations[1],
                shown(o.direct, dd),
                seen[0],
                seen[1],
            )?;
        }
        Ok(())
    }
}
