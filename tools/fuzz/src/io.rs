//! An in-memory peer for async decoders: a reader that hands out its bytes in the pieces a
//! case chooses (so every split of a frame across reads is tried), then ends the stream or
//! stays silent, and counts what was taken from it (so a decoder that reads past its frame is
//! caught).

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use proptest::{collection::vec, prelude::*};
use tokio::io::{AsyncRead, ReadBuf};

/// What the peer does once its bytes are out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Closes its side: reads return 0.
    End,
    /// Sends nothing more and keeps the stream open: reads stay pending.
    Silence,
}

/// Bytes handed out in pieces of the given sizes (the last size repeats; 0 counts as 1).
#[derive(Debug, Clone)]
pub struct Trickle {
    bytes: Vec<u8>,
    pieces: Vec<usize>,
    taken: usize,
    reads: usize,
    then: Then,
}

impl Trickle {
    /// A peer that sends `bytes` in pieces of `pieces`, then does `then`.
    pub fn new(bytes: Vec<u8>, pieces: Vec<usize>, then: Then) -> Trickle {
        Trickle {
            bytes,
            pieces,
            taken: 0,
            reads: 0,
            then,
        }
    }

    /// How many bytes were read from it.
    pub fn taken(&self) -> usize {
        self.taken
    }
}

impl AsyncRead for Trickle {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let left = &this.bytes[this.taken..];
        if left.is_empty() {
            return match this.then {
                Then::End => Poll::Ready(Ok(())),
                // Nothing will wake the task: a test polls once and looks.
                Then::Silence => Poll::Pending,
            };
        }
        let piece = this
            .pieces
            .get(this.reads)
            .or(this.pieces.last())
            .copied()
            .unwrap_or(usize::MAX)
            .max(1);
        let n = piece.min(left.len()).min(buf.remaining());
        buf.put_slice(&left[..n]);
        this.taken += n;
        this.reads += 1;
        Poll::Ready(Ok(()))
    }
}

/// Piece sizes: mostly small (splits inside a length prefix), sometimes large.
pub fn pieces() -> impl Strategy<Value = Vec<usize>> {
    vec(
        prop_oneof![4 => 1usize..8, 2 => 8usize..512, 1 => Just(usize::MAX)],
        0..6,
    )
}

/// What the peer does after its bytes.
pub fn then() -> impl Strategy<Value = Then> {
    prop_oneof![Just(Then::End), Just(Then::Silence)]
}
