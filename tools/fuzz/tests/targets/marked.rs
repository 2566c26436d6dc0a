//! Target `marked`: what a peer's channel stream can feed the node after the handshake: the end
//! mark reader ([`EndMarked`]), under which every channel is read, and the data sockets' frame
//! cursor ([`FrameCursor`]), which checks (or strips) the lengths of what passes. The bytes come
//! in any pieces; the reader hands on exactly the frames' bytes (the mark taken out), calls the
//! end of the stream clean only right after the mark, a reset without it, and never panics.

use std::{io, task::Poll};

use p2pos_fuzz::{
    fuzz,
    io::{Then, Trickle},
    mutate::framed,
};
use p2pos_protocols::{
    marked::{END_MARK, EndMarked},
    pipe::FrameCursor,
};
use proptest::{collection::vec, prelude::*};
use tokio::io::AsyncReadExt;

use super::{Frame, frames_in, poll_once, runtime, sent};

/// Whole frames, then (usually) the mark.
fn valid() -> BoxedStrategy<Vec<u8>> {
    (vec(vec(any::<u8>(), 0..300), 0..6), any::<bool>())
        .prop_map(|(frames, marked)| {
            let mut bytes: Vec<u8> = frames.iter().flat_map(|f| framed(f)).collect();
            if marked {
                bytes.extend(END_MARK.to_be_bytes());
            }
            bytes
        })
        .boxed()
}

/// The stream's whole frames, as they came (lengths included), and whether the mark and
/// nothing else follows them.
fn model(bytes: &[u8]) -> (&[u8], bool) {
    let (frames, end) = frames_in(bytes, u32::MAX as usize - 1);
    let at = frames.last().map_or(0, |f| f.end);
    let marked = end == Frame::TooLarge && bytes[at..] == END_MARK.to_be_bytes();
    (&bytes[..at], marked)
}

#[test]
fn marked() {
    let rt = runtime();
    fuzz(
        "marked",
        (sent(valid(), 300), 1usize..70_000),
        |((bytes, pieces, then), room)| {
            let (whole, marked) = model(&bytes);
            let whole = whole.to_vec();
            let reader = async {
                let mut reader =
                    EndMarked::new(Trickle::new(bytes.clone(), pieces.clone(), then), true);
                let mut got = Vec::new();
                let mut buf = vec![0u8; room];
                loop {
                    match reader.read(&mut buf).await {
                        Ok(0) => return Ok(got),
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e) => return Err((e, got)),
                    }
                }
            };
            match poll_once(&rt, reader) {
                Poll::Pending => prop_assert_eq!(then, Then::Silence, "a peer that ended"),
                Poll::Ready(Ok(got)) => {
                    prop_assert!(marked, "a clean end only after the mark");
                    prop_assert_eq!(then, Then::End);
                    prop_assert_eq!(got, whole, "the frames as they came, the mark taken out");
                }
                Poll::Ready(Err((e, got))) => {
                    prop_assert!(
                        !marked || then == Then::Silence || e.kind() == io::ErrorKind::InvalidData,
                        "whole frames and the mark are a clean end: {e}"
                    );
                    // Whatever was handed on is the frames' bytes, in order.
                    prop_assert!(bytes.len() >= got.len());
                    if e.kind() == io::ErrorKind::ConnectionReset {
                        // Whole frames and no mark: all of them were handed on first.
                        prop_assert_eq!(&got, &bytes, "a reset comes after every whole frame");
                    }
                }
            }

            // The cursor: scanning any split checks every length, and unframing keeps exactly
            // the bodies of whole frames (up to the first bad length).
            let max = 300;
            let (frames, end) = frames_in(&bytes, max);
            let cut = pieces.first().copied().unwrap_or(0).min(bytes.len());
            let mut scan = FrameCursor::default();
            let scanned = scan
                .scan(&bytes[..cut], max)
                .and_then(|_| scan.scan(&bytes[cut..], max));
            prop_assert_eq!(scanned.is_err(), end == Frame::TooLarge);
            let mut unframe = FrameCursor::default();
            let mut kept = Vec::new();
            for piece in [&bytes[..cut], &bytes[cut..]] {
                let mut chunk = piece.to_vec();
                match unframe.unframe(&mut chunk, max) {
                    Ok(n) => kept.extend_from_slice(&chunk[..n]),
                    Err((n, _)) => {
                        kept.extend_from_slice(&chunk[..n]);
                        break;
                    }
                }
            }
            let whole: Vec<u8> = frames
                .iter()
                .flat_map(|f| bytes[f.clone()].to_vec())
                .collect();
            prop_assert!(
                kept.starts_with(&whole),
                "the bodies of whole frames, in order"
            );
            if end == Frame::Nothing {
                prop_assert_eq!(kept, whole);
                prop_assert!(unframe.at_boundary());
            }
            Ok(())
        },
    );
}
