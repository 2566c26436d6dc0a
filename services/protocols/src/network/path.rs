//! How this node reaches a peer now, as far as what may pass goes: directly, or only through
//! relays whose circuits end after so many bytes or seconds (circuit relay v2 limits, which a
//! relay announces when it accepts a reservation or a circuit). Services that send a lot over
//! one stream ask before they send ([`Network::path`](super::Network::path)), so that nothing
//! is sent into a circuit that would end in the middle of it.

use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;

/// Room kept in a circuit for what else crosses it besides one frame: the connection's own
/// protocols (identify, ping, Kademlia, hole punching), the framing of yamux and noise, and the
/// answer; a sixteenth of the circuit's data limit more, for other streams on it.
pub const CIRCUIT_OVERHEAD: u64 = 16 * 1024;

/// The limits of one relayed connection (a circuit), as its relay announced them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Circuit {
    /// The relay.
    pub relay: PeerId,
    /// Most bytes the circuit carries, both ways together; `None` when the relay told none.
    pub data_limit: Option<u64>,
    /// When the relay ends it; `None` when the relay told no duration.
    pub ends_at: Option<Instant>,
    /// The duration the relay told, for messages.
    pub duration: Option<Duration>,
}

impl Circuit {
    /// The largest single frame that a fresh circuit of this relay can carry, with room for
    /// [`CIRCUIT_OVERHEAD`] and a sixteenth of the limit; `None`: no data limit.
    pub fn max_frame(&self) -> Option<u64> {
        self.data_limit
            .map(|limit| limit.saturating_sub(CIRCUIT_OVERHEAD + limit / 16))
    }

    /// Whether a frame of `len` bytes can cross a fresh circuit of this relay.
    pub fn fits(&self, len: u64) -> bool {
        self.max_frame().is_none_or(|max| len <= max)
    }

    /// How long it has left, if the relay told its duration.
    pub fn left(&self) -> Option<Duration> {
        self.ends_at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// What the relay allows, as a person reads it: "131072 bytes and 120 s per circuit".
    pub fn describe(&self) -> String {
        let bytes = self.data_limit.map(|b| format!("{b} bytes"));
        let secs = self.duration.map(|d| format!("{} s", d.as_secs()));
        let limits = match (bytes, secs) {
            (Some(b), Some(s)) => format!("{b} and {s} per circuit"),
            (Some(b), None) => format!("{b} per circuit"),
            (None, Some(s)) => format!("{s} per circuit"),
            (None, None) => "no limits it told".to_owned(),
        };
        format!("relay {}: {limits}", self.relay)
    }
}

/// How this node reaches a peer now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Not connected.
    NotConnected,
    /// A direct connection is open: new streams take it, and no relay limits them.
    Direct,
    /// Only relayed connections are open: the tightest of their circuits (a new stream may
    /// take any of them).
    Relayed(Circuit),
}

impl Path {
    /// The circuit new streams cross, if only relays reach the peer.
    pub fn circuit(&self) -> Option<&Circuit> {
        match self {
            Path::Relayed(circuit) => Some(circuit),
            Path::NotConnected | Path::Direct => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit(data_limit: Option<u64>) -> Circuit {
        Circuit {
            relay: PeerId::random(),
            data_limit,
            ends_at: None,
            duration: None,
        }
    }

    #[test]
    fn a_frame_fits_a_circuit_with_room_for_what_else_crosses_it() {
        // libp2p's default relay: 128 KiB per circuit.
        let small = circuit(Some(128 * 1024));
        assert_eq!(small.max_frame(), Some(128 * 1024 - 16 * 1024 - 8 * 1024));
        assert!(small.fits(100 * 1024));
        assert!(!small.fits(200 * 1024));
        // P2P OS relays: 64 MiB; any message or channel frame (1 MiB) fits.
        assert!(circuit(Some(64 << 20)).fits(1 << 20));
        assert!(circuit(None).fits(u64::MAX));
        assert_eq!(circuit(Some(1000)).max_frame(), Some(0));
    }
}
