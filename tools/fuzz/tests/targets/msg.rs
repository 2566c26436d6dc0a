//! Target `msg`: `/p2pos/msg/1` — the sender's `MessageFrame`s (1 MiB + 4 KiB each, several
//! on one stream) and the receiver's `MessageAck`s (4 KiB), as [`wire::read_message`] reads
//! them: each frame of a stream comes back whole and in order, damaged or hostile bytes are
//! clear errors, and a frame's memory follows the bytes that arrived.

use p2pos_fuzz::{fuzz, mutate::framed};
use p2pos_proto::wire::v1::{MessageAck, MessageFrame, message_ack};
use proptest::{collection::vec, prelude::*};
use prost::Message;

use super::{Sent, check_message, check_round_trip, frames_in, payload, runtime, sent, text, wire};

fn message() -> impl Strategy<Value = MessageFrame> {
    (any::<[u64; 5]>(), text(), payload(wire::MAX_PAYLOAD)).prop_map(
        |([sequence, message_id, sent_at_ms, epoch, answered_below], app_id, payload)| {
            MessageFrame {
                sequence,
                message_id,
                app_id,
                payload,
                sent_at_ms,
                epoch,
                answered_below,
            }
        },
    )
}

fn small_message() -> impl Strategy<Value = MessageFrame> {
    message().prop_filter("small", |m| m.payload.len() < 1024)
}

fn ack() -> impl Strategy<Value = MessageAck> {
    (any::<u64>(), prop_oneof![0..5i32, any::<i32>()], text()).prop_map(
        |(sequence, result, reason)| MessageAck {
            sequence,
            result,
            reason,
        },
    )
}

#[derive(Debug, Clone)]
enum Case {
    /// A stream of message frames.
    Frames(Sent),
    Ack(Sent),
    FrameBack(MessageFrame),
    AckBack(MessageAck),
}

fn case() -> impl Strategy<Value = Case> {
    let frames = vec(small_message(), 1..4)
        .prop_map(|ms| ms.iter().flat_map(|m| framed(&m.encode_to_vec())).collect())
        .boxed();
    let acks = ack().prop_map(|a| framed(&a.encode_to_vec())).boxed();
    prop_oneof![
        4 => sent(frames, wire::MAX_MESSAGE_FRAME).prop_map(Case::Frames),
        2 => sent(acks, wire::MAX_CONTROL_FRAME).prop_map(Case::Ack),
        1 => message().prop_map(Case::FrameBack),
        1 => ack().prop_map(Case::AckBack),
    ]
}

#[test]
fn msg() {
    let rt = runtime();
    fuzz("msg", case(), |case| {
        match case {
            Case::Frames((bytes, pieces, then)) => {
                // The receiver reads frame after frame until one fails: each read starts
                // where the last ended (`check_message` checks it takes no more).
                let (frames, _) = frames_in(&bytes, wire::MAX_MESSAGE_FRAME);
                let starts = frames.iter().map(|f| f.start - 4);
                let last = frames.last().map_or(0, |f| f.end);
                for start in starts.chain([last]) {
                    check_message::<MessageFrame>(
                        &rt,
                        &bytes[start..],
                        pieces.clone(),
                        then,
                        wire::MAX_MESSAGE_FRAME,
                    )?;
                }
            }
            Case::Ack((bytes, pieces, then)) => {
                if let Some(ack) =
                    check_message::<MessageAck>(&rt, &bytes, pieces, then, wire::MAX_CONTROL_FRAME)?
                {
                    let known = message_ack::Result::try_from(ack.result).is_ok();
                    prop_assert_eq!(known, (0..=4).contains(&ack.result));
                }
            }
            Case::FrameBack(m) => check_round_trip(&rt, &m, wire::MAX_MESSAGE_FRAME)?,
            Case::AckBack(a) => check_round_trip(&rt, &a, wire::MAX_CONTROL_FRAME)?,
        }
        Ok(())
    });
}
