//! Target `packed`: the packed-frames reader (`p2pos_proto::packed`), which checks the frames a
//! client packs into one message (`check`), cuts the batches the node reads from a peer
//! (`whole_frames`) and unpacks them (`Unpack`): each gives exactly the frames the bytes hold,
//! refuses a frame over the limit or cut short with the matching error, and never panics.

use bytes::{Bytes, BytesMut};
use p2pos_fuzz::{
    fuzz,
    mutate::{framed, inputs},
};
use p2pos_proto::packed::{self, PackedError, Unpack};
use proptest::{collection::vec, prelude::*};

use super::{Frame, frames_in, wire};

/// Limits of a frame: the channel's, and small ones.
fn limit() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(wire::MAX_CHANNEL_FRAME),
        Just(wire::MAX_PAYLOAD),
        Just(0),
        Just(5),
        Just(300),
    ]
}

/// How many bytes a batch may hold: 64 KiB (the splice's), none, or a few.
fn batch_limit() -> impl Strategy<Value = usize> {
    prop_oneof![Just(64 * 1024), Just(0), 1usize..600]
}

fn frames() -> impl Strategy<Value = Vec<Vec<u8>>> {
    vec(vec(any::<u8>(), 0..300), 0..6)
}

fn valid() -> BoxedStrategy<Vec<u8>> {
    frames()
        .prop_map(|frames| frames.iter().flat_map(|f| framed(f)).collect())
        .boxed()
}

#[derive(Debug, Clone)]
enum Case {
    /// Bytes, a frame's limit and a batch's.
    Read(Vec<u8>, usize, usize),
    /// Frames packed with `push`.
    Back(Vec<Vec<u8>>),
}

fn case() -> impl Strategy<Value = Case> {
    prop_oneof![
        6 => (limit(), batch_limit())
            .prop_flat_map(|(max, batch)| (inputs(valid(), max), Just(max), Just(batch)))
            .prop_map(|(bytes, max, batch)| Case::Read(bytes, max, batch)),
        1 => frames().prop_map(Case::Back),
    ]
}

#[test]
fn packed() {
    fuzz("packed", case(), |case| {
        match case {
            Case::Read(bytes, max, batch) => read(&bytes, max, batch)?,
            Case::Back(frames) => {
                let mut batch = BytesMut::new();
                for frame in &frames {
                    packed::push(&mut batch, frame);
                }
                prop_assert_eq!(packed::check(&batch, 300), Ok(frames.len()));
                prop_assert_eq!(
                    packed::whole_frames(&batch, usize::MAX, 300),
                    Ok((batch.len(), packed::HEADER))
                );
                let back: Result<Vec<Bytes>, _> = Unpack::new(batch.freeze()).collect();
                prop_assert_eq!(back, Ok(frames.into_iter().map(Bytes::from).collect()));
            }
        }
        Ok(())
    });
}

/// The length the frame at the start of `bytes` announces.
fn announced(bytes: &[u8]) -> usize {
    let mut len = [0u8; 4];
    len.copy_from_slice(&bytes[..4]);
    u32::from_be_bytes(len) as usize
}

fn read(bytes: &[u8], max: usize, batch: usize) -> Result<(), TestCaseError> {
    let (frames, end) = frames_in(bytes, max);
    let last = frames.last().map_or(0, |f| f.end);

    // `check`: every frame whole and within the limit.
    let checked = packed::check(bytes, max);
    match &end {
        Frame::Whole(_) => unreachable!("frames_in takes every whole frame"),
        Frame::Nothing => prop_assert_eq!(checked, Ok(frames.len())),
        Frame::Partial => prop_assert_eq!(checked, Err(PackedError::Truncated)),
        Frame::TooLarge => {
            let len = announced(&bytes[last..]);
            prop_assert_eq!(checked, Err(PackedError::TooLarge { len, max }));
        }
    }

    // `Unpack` knows no limit: every whole frame, then `Truncated` if bytes are left.
    let (all, rest) = frames_in(bytes, usize::MAX);
    let mut want: Vec<Result<Bytes, PackedError>> = all
        .iter()
        .map(|r| Ok(Bytes::copy_from_slice(&bytes[r.clone()])))
        .collect();
    if rest != Frame::Nothing {
        want.push(Err(PackedError::Truncated));
    }
    let got: Vec<_> = Unpack::new(Bytes::copy_from_slice(bytes)).collect();
    prop_assert_eq!(got, want);

    // `whole_frames`: whole frames while under `batch` bytes, then what the next one needs.
    let mut at = 0;
    for f in &frames {
        if at >= batch {
            break;
        }
        at = f.end;
    }
    let want = if at >= batch {
        Ok((at, 0))
    } else {
        let rest = &bytes[at..];
        match end {
            Frame::Whole(_) => unreachable!("frames_in takes every whole frame"),
            Frame::Nothing => Ok((at, packed::HEADER)),
            Frame::Partial if rest.len() < packed::HEADER => Ok((at, packed::HEADER - rest.len())),
            Frame::Partial => Ok((at, packed::HEADER + announced(rest) - rest.len())),
            Frame::TooLarge if at > 0 => Ok((at, 0)),
            Frame::TooLarge => Err(PackedError::TooLarge {
                len: announced(rest),
                max,
            }),
        }
    };
    prop_assert_eq!(packed::whole_frames(bytes, batch, max), want);
    Ok(())
}
