//! The results: one [`Row`] per figure, printed as a table for people or one JSON object.

use comfy_table::Table;
use serde_json::{Value, json};

/// What a figure must meet.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Goal {
    /// P2P OS / baseline at least this.
    RatioAtLeast(f64),
    /// P2P OS / baseline at most this.
    RatioAtMost(f64),
    /// P2P OS / the TCP floor (two relay processes) at most this.
    FloorRatioAtMost(f64),
    /// The P2P OS figure itself at most this.
    AtMost(f64),
    /// The P2P OS figure itself at least this.
    AtLeast(f64),
    /// Reported only.
    None,
}

/// One measured figure.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    /// What was measured.
    pub(crate) scenario: String,
    /// Its unit.
    pub(crate) unit: &'static str,
    /// Through P2P OS.
    pub(crate) p2pos: f64,
    /// On bare rust-libp2p, when there is one.
    pub(crate) baseline: Option<f64>,
    /// On plain loopback TCP, when there is one.
    pub(crate) ceiling: Option<f64>,
    /// On plain loopback TCP through two relay processes (P2P OS's process hops, nothing
    /// else), when there is one.
    pub(crate) floor: Option<f64>,
    /// The target.
    pub(crate) goal: Goal,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        self.baseline.map(|b| self.p2pos / b)
    }

    /// Whether the target is met; `None` when there is no target.
    fn pass(&self) -> Option<bool> {
        match (self.goal, self.ratio()) {
            (Goal::RatioAtLeast(min), Some(r)) => Some(r >= min),
            (Goal::RatioAtMost(max), Some(r)) => Some(r <= max),
            (Goal::FloorRatioAtMost(max), _) => self
                .floor
                .filter(|f| f.is_finite())
                .map(|floor| self.p2pos / floor <= max),
            (Goal::AtMost(max), _) => Some(self.p2pos <= max),
            (Goal::AtLeast(min), _) => Some(self.p2pos >= min),
            _ => None,
        }
    }

    fn target(&self) -> String {
        match self.goal {
            Goal::RatioAtLeast(min) => format!("ratio ≥ {min}"),
            Goal::RatioAtMost(max) => format!("ratio ≤ {max}"),
            Goal::FloorRatioAtMost(max) => format!("÷ 2 relays ≤ {max}"),
            Goal::AtMost(max) => format!("≤ {max} {}", self.unit),
            Goal::AtLeast(min) => format!("≥ {min} {}", self.unit),
            Goal::None => "-".to_owned(),
        }
    }
}

/// The table for people.
pub(crate) fn table(rows: &[Row]) -> Table {
    let mut table = Table::new();
    table.load_preset(comfy_table::presets::ASCII_MARKDOWN);
    table.set_header([
        "scenario",
        "unit",
        "P2P OS",
        "baseline",
        "ratio",
        "TCP ceiling",
        "TCP, 2 relays",
        "target",
        "result",
    ]);
    for row in rows {
        table.add_row([
            row.scenario.clone(),
            row.unit.to_owned(),
            number(row.p2pos),
            row.baseline.map_or("-".to_owned(), number),
            row.ratio().map_or("-".to_owned(), |r| format!("{r:.2}")),
            row.ceiling.map_or("-".to_owned(), number),
            row.floor.map_or("-".to_owned(), number),
            row.target(),
            match row.pass() {
                Some(true) => "pass",
                Some(false) => "FAIL",
                None => "-",
            }
            .to_owned(),
        ]);
    }
    table
}

/// One JSON object for machines.
pub(crate) fn json(rows: &[Row], machine: Value) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|row| {
            json!({
                "scenario": row.scenario,
                "unit": row.unit,
                "p2pos": row.p2pos,
                "baseline": row.baseline,
                "ratio": row.ratio(),
                "tcp_ceiling": row.ceiling,
                "tcp_two_relays": row.floor.filter(|f| f.is_finite()),
                "target": row.target(),
                "pass": row.pass(),
            })
        })
        .collect();
    json!({ "machine": machine, "results": rows })
}

/// Three significant-ish digits.
fn number(value: f64) -> String {
    if !value.is_finite() {
        "-".to_owned()
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}
