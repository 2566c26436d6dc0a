//! Target `call`: `/p2pos/call/2` — the caller's `CallFrame` and the provider's `CallAnswer`
//! after its call-taken byte (1 MiB + 4 KiB each), as [`wire::read_message`] reads them:
//! damaged or hostile bytes are clear errors, valid ones come back whole, and a frame's memory
//! follows the bytes that arrived. (What the provider's node then checks in a call is
//! fuzzed where it lives: `p2pos-overlay`'s `registry::fuzz`.)

use p2pos_fuzz::{fuzz, mutate::framed};
use p2pos_proto::wire::v1::{CallAnswer, CallFrame};
use proptest::prelude::*;
use prost::Message;

use super::{
    Sent, check_message, check_names, check_round_trip, payload, runtime, sent, text, wire,
};

/// `/p2pos/call/2`'s limit of a frame (the overlay's `MAX_CALL_FRAME`).
const MAX_CALL_FRAME: usize = wire::MAX_PAYLOAD + 4 * 1024;
/// The byte a provider's node writes when it takes a call stream.
const CALL_TAKEN: u8 = 0x01;

fn call_frame() -> impl Strategy<Value = CallFrame> {
    (
        text(),
        text(),
        payload(wire::MAX_PAYLOAD),
        prop_oneof![Just(0u32), 1..120_000u32, any::<u32>()],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(service, from_app, payload, timeout_ms, withdrawn, certificates)| CallFrame {
                service,
                from_app,
                payload,
                timeout_ms,
                withdrawn,
                certificates,
                publisher_keys: Vec::new(),
            },
        )
}

fn answer() -> impl Strategy<Value = CallAnswer> {
    (
        prop_oneof![0..17u32, any::<u32>()],
        text(),
        payload(wire::MAX_PAYLOAD),
        text(),
        prop::collection::vec(payload(600), 0..10),
    )
        .prop_map(
            |(code, message, payload, provider_app, certificates)| CallAnswer {
                code,
                message,
                payload,
                provider_app,
                certificates,
            },
        )
}

fn small<M: Message>(m: &M) -> bool {
    m.encoded_len() < 4096
}

#[derive(Debug, Clone)]
enum Case {
    Call(Sent),
    /// What the caller reads: the call-taken byte, then the answer.
    Answer(Sent),
    CallBack(CallFrame),
    AnswerBack(CallAnswer),
}

fn case() -> impl Strategy<Value = Case> {
    let calls = call_frame()
        .prop_filter("small", small)
        .prop_map(|c| framed(&c.encode_to_vec()))
        .boxed();
    let answers = answer()
        .prop_filter("small", small)
        .prop_map(|a| {
            let mut bytes = vec![CALL_TAKEN];
            bytes.extend(framed(&a.encode_to_vec()));
            bytes
        })
        .boxed();
    prop_oneof![
        3 => sent(calls, MAX_CALL_FRAME).prop_map(Case::Call),
        3 => sent(answers, MAX_CALL_FRAME).prop_map(Case::Answer),
        1 => call_frame().prop_map(Case::CallBack),
        1 => answer().prop_map(Case::AnswerBack),
    ]
}

#[test]
fn call() {
    let rt = runtime();
    fuzz("call", case(), |case| {
        match case {
            Case::Call((bytes, pieces, then)) => {
                if let Some(call) =
                    check_message::<CallFrame>(&rt, &bytes, pieces, then, MAX_CALL_FRAME)?
                {
                    check_names(&call.from_app, &call.service)?;
                }
            }
            // The caller reads the call-taken byte (any other is refused), then the answer.
            Case::Answer((bytes, pieces, then)) => {
                if bytes.first() == Some(&CALL_TAKEN) {
                    check_message::<CallAnswer>(&rt, &bytes[1..], pieces, then, MAX_CALL_FRAME)?;
                }
            }
            Case::CallBack(c) => {
                check_round_trip(&rt, &c, MAX_CALL_FRAME)?;
                check_names(&c.from_app, &c.service)?;
            }
            Case::AnswerBack(a) => check_round_trip(&rt, &a, MAX_CALL_FRAME)?,
        }
        Ok(())
    });
}
