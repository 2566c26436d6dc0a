//! Output for people and for scripts: lines on stdout, tables, JSON, and value formatting.

use std::io::Write;

use comfy_table::{Table, presets};
use p2pos_proto::overlay::v1::PeerInfo;
use serde_json::{Value, json};

/// Writes one line to stdout and flushes (so a follower like `events` streams through pipes).
pub(crate) fn line(text: impl std::fmt::Display) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()
}

/// Writes a JSON value on one line.
pub(crate) fn json_line(value: &Value) -> std::io::Result<()> {
    line(value)
}

/// A borderless table with a header row, aligned for reading and for `awk`.
pub(crate) fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING).set_header(header);
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

/// A borderless two-column table of labels and values (a value may span several lines).
pub(crate) fn key_values(rows: Vec<(&str, String)>) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    for (key, value) in rows {
        table.add_row([key.to_owned(), value]);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

/// Writes a table built by [`table`], without trailing spaces.
pub(crate) fn print_table(table: &Table) -> std::io::Result<()> {
    line(table.trim_fmt())
}

/// A peer as JSON: `{peer_id, addresses, transport, rtt_us, agent_version, connections,
/// direct, relays, why_relayed}`.
pub(crate) fn peer_json(peer: &PeerInfo) -> Value {
    let PeerInfo {
        peer_id,
        addresses,
        transport,
        rtt_us,
        agent_version,
        connections,
        direct,
        relays,
        why_relayed,
    } = peer;
    json!({
        "peer_id": peer_id,
        "addresses": addresses,
        "transport": transport,
        "rtt_us": rtt_us,
        "agent_version": agent_version,
        "connections": connections,
        "direct": direct,
        "relays": relays,
        "why_relayed": why_relayed,
    })
}

/// The peers table: peer id, path (direct, or relayed through which relay), transport, rtt,
/// connections, addresses, agent; then, for each peer reached only through a relay, why.
pub(crate) fn peers_table(peers: &[PeerInfo]) -> Table {
    let mut table = table([
        "PEER ID",
        "PATH",
        "TRANSPORT",
        "RTT",
        "CONNS",
        "ADDRESSES",
        "AGENT",
    ]);
    for peer in peers {
        table.add_row([
            peer.peer_id.clone(),
            path(peer),
            peer.transport.clone(),
            rtt(peer.rtt_us),
            peer.connections.to_string(),
            list_or_dash(&peer.addresses),
            dash_if_empty(&peer.agent_version),
        ]);
    }
    table
}

/// `direct`, or `relayed via <relay>` (the relays' peer ids shortened).
fn path(peer: &PeerInfo) -> String {
    if peer.direct {
        return "direct".to_owned();
    }
    let relays: Vec<String> = peer.relays.iter().map(|r| short_id(r)).collect();
    match relays.is_empty() {
        true => "relayed".to_owned(),
        false => format!("relayed via {}", relays.join(", ")),
    }
}

/// The lines that say why peers reached only through a relay are not direct.
pub(crate) fn why_relayed(peers: &[PeerInfo]) -> String {
    peers
        .iter()
        .filter(|p| !p.direct && !p.why_relayed.is_empty())
        .map(|p| format!("{} is relayed: {}\n", short_id(&p.peer_id), p.why_relayed))
        .collect()
}

/// `text` with its control characters escaped (`\n`, `\u{1b}`): it stays one line, and a
/// terminal takes no escape sequence from it.
pub(crate) fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c.is_control() {
            true => out.extend(c.escape_default()),
            false => out.push(c),
        }
    }
    out
}

/// A peer id cut to its first 8 and last 6 characters.
pub(crate) fn short_id(id: &str) -> String {
    match (
        id.get(..8),
        id.len().checked_sub(6).and_then(|i| id.get(i..)),
    ) {
        (Some(head), Some(tail)) if id.len() > 16 => format!("{head}…{tail}"),
        _ => id.to_owned(),
    }
}

/// A round-trip time for tables: `1.2 ms`, or `-` when not measured.
pub(crate) fn rtt(rtt_us: u64) -> String {
    if rtt_us == 0 {
        "-".to_owned()
    } else {
        format!("{:.1} ms", rtt_us as f64 / 1000.0)
    }
}

/// A duration in seconds as `2d 3h 4m 5s`, from the largest non-zero unit down.
pub(crate) fn duration(secs: u64) -> String {
    let units = [(86_400, "d"), (3_600, "h"), (60, "m")];
    let mut out = String::new();
    let mut rest = secs;
    for (size, unit) in units {
        if rest >= size || !out.is_empty() {
            out.push_str(&format!("{}{unit} ", rest / size));
            rest %= size;
        }
    }
    out.push_str(&format!("{rest}s"));
    out
}

/// Milliseconds since the Unix epoch as UTC `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub(crate) fn timestamp(at_ms: u64) -> String {
    let secs = at_ms / 1000;
    let (days, day_secs) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60,
        at_ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The items one per line, or `-` when empty.
pub(crate) fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join("\n")
    }
}

/// The text, or `-` when empty.
pub(crate) fn dash_if_empty(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn formats_durations() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(65), "1m 5s");
        assert_eq!(duration(3600), "1h 0m 0s");
        assert_eq!(duration(2 * 86_400 + 3 * 3600 + 4 * 60 + 5), "2d 3h 4m 5s");
    }

    #[test]
    fn formats_timestamps() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(timestamp(1_718_454_896_789), "2024-06-15T12:34:56.789Z");
    }

    #[test]
    fn formats_rtt() {
        assert_eq!(rtt(0), "-");
        assert_eq!(rtt(1_234), "1.2 ms");
    }

    #[test]
    fn peer_json_has_a_stable_shape() {
        let peer = PeerInfo {
            peer_id: "12D3KooWabc".into(),
            addresses: vec!["/ip4/127.0.0.1/tcp/1".into()],
            transport: "tcp".into(),
            rtt_us: 500,
            agent_version: "p2posd/0.1.0".into(),
            connections: 1,
            direct: true,
            relays: vec![],
            why_relayed: String::new(),
        };
        assert_eq!(
            peer_json(&peer),
            json!({
                "peer_id": "12D3KooWabc",
                "addresses": ["/ip4/127.0.0.1/tcp/1"],
                "transport": "tcp",
                "rtt_us": 500,
                "agent_version": "p2posd/0.1.0",
                "connections": 1,
                "direct": true,
                "relays": [],
                "why_relayed": "",
            })
        );
    }

    #[test]
    fn tables_have_no_trailing_spaces() {
        let mut t = table(["A", "B"]);
        t.add_row(["x", "y"]);
        let text = t.trim_fmt();
        assert!(text.lines().all(|l| !l.ends_with(' ')), "{text:?}");
        assert!(text.starts_with('A'), "{text:?}");
    }
}
