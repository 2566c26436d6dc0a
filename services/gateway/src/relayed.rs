//! Channels over a relay's circuit: the largest frame an app may write on one, and how a
//! refused frame and a broken channel read (both the gRPC and the data-socket data paths).

use p2pos_protocols::{
    network::Circuit,
    wire::{HEADER, MAX_PAYLOAD},
};
use tonic::Status;

/// The largest frame an app may write on a channel that crosses `circuit` (or none).
pub(crate) fn frame_limit(circuit: Option<&Circuit>) -> usize {
    let fits = circuit
        .and_then(Circuit::max_frame)
        .map_or(usize::MAX, |max| {
            usize::try_from(max.saturating_sub(HEADER as u64)).unwrap_or(usize::MAX)
        });
    MAX_PAYLOAD.min(fits)
}

/// Why a frame of `len` bytes may not go on a channel that crosses `circuit`.
pub(crate) fn too_large_for_relay(len: usize, circuit: &Circuit) -> Status {
    Status::resource_exhausted(format!(
        "a frame of {len} bytes cannot cross this channel's relayed connection ({}; at most {}          bytes of one frame fit): the channel ends before it, and the connection goes on; send          smaller frames, or open the channel again once the peer is reached directly",
        circuit.describe(),
        frame_limit(Some(circuit)),
    ))
}

/// What a broken channel's status adds when it crossed `circuit`.
pub(crate) fn via(circuit: Option<&Circuit>) -> String {
    match circuit {
        Some(c) => format!(
            " (it crossed a relayed connection, {}: a circuit ends when either runs out)",
            c.describe()
        ),
        None => String::new(),
    }
}
