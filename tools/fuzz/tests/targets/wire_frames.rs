//! Target `wire_frames`: [`wire::read_frame`], the reader of every `/p2pos/...` stream's frames
//! (a 4-byte big-endian length, then that many bytes), with each protocol's limit: frames come
//! back whole and in order, a length over the limit is `InvalidData` before its body is read,
//! an early end is `UnexpectedEof`, a silent peer leaves the read waiting, and the memory a
//! frame takes follows the bytes that arrived, not the length announced.

use std::task::Poll;

use p2pos_fuzz::{
    alloc::peak_during,
    fuzz,
    io::{Then, Trickle, pieces, then},
    mutate::{framed, inputs},
};
use proptest::{collection::vec, prelude::*};

use super::{Frame, SLACK, frames_in, poll_once, runtime, wire};

/// The limits the node reads with, and a few small ones.
fn limit() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(8),
        Just(300),
        Just(wire::MAX_CONTROL_FRAME),
        Just(wire::MAX_CHANNEL_FRAME),
        Just(wire::MAX_MESSAGE_FRAME),
    ]
}

/// Up to four frames of up to 300 bytes, back to back.
fn valid() -> BoxedStrategy<Vec<u8>> {
    vec(vec(any::<u8>(), 0..300), 0..4)
        .prop_map(|frames| frames.iter().flat_map(|f| framed(f)).collect())
        .boxed()
}

#[test]
fn wire_frames() {
    let rt = runtime();
    let case = limit().prop_flat_map(|max| (inputs(valid(), max), pieces(), then(), Just(max)));
    fuzz("wire_frames", case, |(input, pieces, then, max)| {
        let (frames, end) = frames_in(&input, max);
        let mut io = Trickle::new(input.clone(), pieces, then);
        for body in frames {
            let got = poll_once(&rt, wire::read_frame(&mut io, max));
            let Poll::Ready(Ok(Some(frame))) = got else {
                return Err(TestCaseError::fail(format!(
                    "frame {body:?} read as {got:?}"
                )));
            };
            prop_assert_eq!(&frame[..], &input[body.clone()]);
            prop_assert_eq!(io.taken(), body.end, "read past its frame");
        }
        let start = io.taken();
        let (got, peak) = peak_during(|| poll_once(&rt, wire::read_frame(&mut io, max)));
        let arrived = input.len() - start;
        prop_assert!(
            peak <= 2 * arrived + SLACK,
            "{peak} bytes held for a frame of which {arrived} bytes arrived"
        );
        let kind = |got: &Poll<std::io::Result<Option<bytes::Bytes>>>| match got {
            Poll::Ready(Err(e)) => Some(e.kind()),
            _ => None,
        };
        match (end, then) {
            (Frame::Whole(_), _) => unreachable!("frames_in takes every whole frame"),
            (Frame::Nothing, Then::End) => prop_assert!(matches!(got, Poll::Ready(Ok(None)))),
            (Frame::Nothing | Frame::Partial, Then::Silence) => {
                prop_assert!(got.is_pending(), "{got:?}")
            }
            (Frame::TooLarge, _) => {
                prop_assert_eq!(kind(&got), Some(std::io::ErrorKind::InvalidData));
                prop_assert_eq!(io.taken(), start + 4, "read the body of a refused frame");
            }
            (Frame::Partial, Then::End) => {
                prop_assert_eq!(kind(&got), Some(std::io::ErrorKind::UnexpectedEof))
            }
        }
        Ok(())
    });
}

/// Found by these targets: the frame readers took room for the length a frame announced
/// before its bytes came (up to 1 MiB + 4 KiB per stream for a 4-byte header). Each limit the
/// node reads with, each reader: a header announcing the limit, then 9 bytes, then silence.
#[test]
fn a_frame_announced_but_not_sent_takes_no_memory() {
    use futures::StreamExt;
    use tokio_util::codec::FramedRead;

    let rt = runtime();
    for max in [
        wire::MAX_CONTROL_FRAME,
        wire::MAX_CHANNEL_FRAME,
        wire::MAX_MESSAGE_FRAME,
    ] {
        let mut sent = u32::try_from(max).expect("a limit").to_be_bytes().to_vec();
        sent.extend([7u8; 9]);
        let peer = || Trickle::new(sent.clone(), Vec::new(), Then::Silence);
        let mut io = peer();
        let (got, peak) = peak_during(|| poll_once(&rt, wire::read_frame(&mut io, max)));
        assert!(
            got.is_pending() && peak < SLACK,
            "read_frame, {max}: {peak} bytes"
        );
        let mut io = peer();
        let read =
            wire::read_message::<p2pos_proto::wire::v1::CallFrame, _>(&mut io, max, super::NEVER);
        let (got, peak) = peak_during(|| poll_once(&rt, read));
        assert!(
            got.is_pending() && peak < SLACK,
            "read_message, {max}: {peak} bytes"
        );
        let mut frames = FramedRead::new(peer(), wire::codec(max));
        let (got, peak) = peak_during(|| poll_once(&rt, frames.next()));
        assert!(
            got.is_pending() && peak < SLACK,
            "codec, {max}: {peak} bytes"
        );
    }
}
