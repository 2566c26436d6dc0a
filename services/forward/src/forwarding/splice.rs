//! The tunnel's data path: one TCP connection spliced onto one channel carrying
//! length-delimited frames, both ways at once, each direction half-closed on its own. Used on
//! both ends of a tunnel: the forward's listener and the exposure's target. The copy loop is
//! the one data sockets use ([`p2pos_protocols::pipe`]), with the socket as a byte stream.

use p2pos_protocols::{
    apps::Duplex,
    pipe::{Framing, PipeError, pipe},
};
use tokio::net::TcpStream;

/// Splices `tcp` and `channel` until both directions have ended: TCP bytes become frames (one
/// per read), frames become TCP bytes. The first error ends both directions. Memory stays
/// within two buffers of 64 KiB.
pub(crate) async fn splice(
    mut tcp: TcpStream,
    mut channel: Box<dyn Duplex>,
) -> Result<(), PipeError> {
    // Small writes (a prompt, a keystroke) should not wait for more.
    tcp.set_nodelay(true)
        .map_err(|e| PipeError::Io(p2pos_protocols::pipe::Side::Local, e))?;
    let piped = pipe(&mut tcp, &mut channel, Framing::Bytes, ()).await;
    if piped.is_err() {
        // A broken tunnel must not look like a clean end to the TCP side: it gets a reset.
        let _ = tcp.set_zero_linger();
    }
    piped
}
