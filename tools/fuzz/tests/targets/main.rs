//! The fuzz targets, one module each: what a remote peer (or a user, for tickets) can feed the
//! node's decoders. Each is one test, run within the budget of `P2POS_FUZZ_SECS` or
//! `P2POS_FUZZ_CASES` (see the crate's docs): `cargo nextest run -p p2pos-fuzz -E
//! 'test(channel)'` runs one.
//!
//! The helpers here drive a decoder over an in-memory peer ([`Trickle`]) with one poll, and
//! hold the model of a frame: what any decoder of it must make of the bytes.

mod call;
mod channel;
mod marked;
mod msg;
mod packed;
mod tickets;
mod wire_frames;

use std::{future::Future, io, ops::Range, pin::pin, task::Poll, time::Duration};

use p2pos_fuzz::{
    alloc::{Metered, peak_during},
    io::{Then, Trickle, pieces, then},
    mutate::inputs,
};
use p2pos_protocols::wire;
use proptest::{prelude::*, test_runner::TestCaseResult};
use prost::Message;

#[global_allocator]
static ALLOC: Metered = Metered;

/// What reading a frame may hold beyond twice the bytes that arrived: the first room of a
/// frame's buffer (8 KiB), the codec's initial buffer (8 KiB), the timer, the future.
const SLACK: usize = 32 * 1024;

/// A time limit no case reaches (a case polls once).
const NEVER: Duration = Duration::from_secs(3600);

/// A runtime on this thread (timers work, nothing runs elsewhere, so [`peak_during`] sees
/// every allocation).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
}

/// Polls `fut` once on `rt`: a peer that went silent leaves it pending.
fn poll_once<F: Future>(rt: &tokio::runtime::Runtime, fut: F) -> Poll<F::Output> {
    rt.block_on(async {
        let mut fut = pin!(fut);
        futures::poll!(fut.as_mut())
    })
}

/// What a peer sends on a stream: bytes, the pieces they come in, what it does after them.
type Sent = (Vec<u8>, Vec<usize>, Then);

/// What a peer may send where `valid` is what it should (frames of at most `max` bytes).
fn sent(valid: BoxedStrategy<Vec<u8>>, max: usize) -> impl Strategy<Value = Sent> {
    (inputs(valid, max), pieces(), then())
}

/// What the bytes at the start of a stream are, as one frame of at most `max` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Frame {
    /// No byte at all.
    Nothing,
    /// A frame's bytes (its body is this range of the stream).
    Whole(Range<usize>),
    /// A length over `max`.
    TooLarge,
    /// A length prefix, or a body, that is not all there.
    Partial,
}

fn frame_at(bytes: &[u8], max: usize) -> Frame {
    let Some(&[a, b, c, d]) = bytes.get(..4) else {
        return if bytes.is_empty() {
            Frame::Nothing
        } else {
            Frame::Partial
        };
    };
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    if len > max {
        Frame::TooLarge
    } else if bytes.len() - 4 >= len {
        Frame::Whole(4..4 + len)
    } else {
        Frame::Partial
    }
}

/// The frames a stream of `bytes` holds (limit `max` each), and what ends them.
fn frames_in(bytes: &[u8], max: usize) -> (Vec<Range<usize>>, Frame) {
    let mut at = 0;
    let mut frames = Vec::new();
    loop {
        match frame_at(&bytes[at..], max) {
            Frame::Whole(body) => {
                frames.push(at + body.start..at + body.end);
                at += body.end;
            }
            end => return (frames, end),
        }
    }
}

/// Reads one `M` with [`wire::read_message`] from a peer that sends `input` in `pieces` then
/// does `then`, and checks it against the model: the message when the frame is whole (taking
/// exactly its bytes), `InvalidData` for a frame over `max` or that does not decode,
/// `UnexpectedEof` for a stream that ends early, still waiting for one that went silent, and
/// never more memory than the bytes that arrived call for. Returns the message read.
fn check_message<M>(
    rt: &tokio::runtime::Runtime,
    input: &[u8],
    pieces: Vec<usize>,
    then: Then,
    max: usize,
) -> Result<Option<M>, TestCaseError>
where
    M: Message + Default + PartialEq,
{
    let mut io = Trickle::new(input.to_vec(), pieces, then);
    let (got, peak) =
        peak_during(|| poll_once(rt, wire::read_message::<M, _>(&mut io, max, NEVER)));
    prop_assert!(
        peak <= 2 * input.len() + SLACK,
        "{peak} bytes held reading {} bytes",
        input.len()
    );
    match (frame_at(input, max), then, got) {
        (Frame::Whole(body), _, Poll::Ready(got)) => {
            prop_assert_eq!(io.taken(), body.end, "read past its frame");
            match M::decode(&input[body]) {
                Ok(want) => {
                    let got = got.map_err(|e| TestCaseError::fail(format!("{e}")))?;
                    prop_assert!(got == want, "another message than decoded");
                    Ok(Some(got))
                }
                Err(_) => {
                    let kind = got.err().map(|e| e.kind());
                    prop_assert_eq!(kind, Some(io::ErrorKind::InvalidData));
                    Ok(None)
                }
            }
        }
        (Frame::TooLarge, _, Poll::Ready(Err(e))) => {
            prop_assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            prop_assert_eq!(io.taken(), 4, "read past a refused length");
            Ok(None)
        }
        (Frame::Nothing | Frame::Partial, Then::End, Poll::Ready(Err(e))) => {
            prop_assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
            Ok(None)
        }
        (Frame::Nothing | Frame::Partial, Then::Silence, Poll::Pending) => Ok(None),
        (want, then, got) => Err(TestCaseError::fail(format!(
            "{want:?} then {then:?} read as {:?}",
            got.map(|r| r.map(|_| "a message"))
        ))),
    }
}

/// `msg` framed, read back whole with [`wire::read_message`], unless it is over `max`
/// (`InvalidData`).
fn check_round_trip<M>(rt: &tokio::runtime::Runtime, msg: &M, max: usize) -> TestCaseResult
where
    M: Message + Default + PartialEq + std::fmt::Debug,
{
    let bytes = p2pos_fuzz::mutate::framed(&msg.encode_to_vec());
    let mut io = Trickle::new(bytes, Vec::new(), Then::End);
    match poll_once(rt, wire::read_message::<M, _>(&mut io, max, NEVER)) {
        Poll::Ready(Ok(back)) => {
            prop_assert!(msg.encoded_len() <= max);
            prop_assert_eq!(&back, msg);
        }
        Poll::Ready(Err(e)) => {
            prop_assert!(msg.encoded_len() > max, "refused: {e}");
            prop_assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        }
        Poll::Pending => prop_assert!(false, "pending with every byte there"),
    }
    Ok(())
}

/// Strings a peer may send: plausible names, any text, and long ones near a 4 KiB frame.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[a-z0-9._:/-]{0,40}",
        2 => "[a-zA-Z0-9._:-]{1,66}/[0-9]{1,10}",
        3 => "\\PC{0,40}",
        1 => "[a-z]{0,9}".prop_map(|s| s.repeat(450)),
    ]
    .boxed()
}

/// Payloads: small ones of any bytes, and ones of one byte repeated around `limit` bytes.
fn payload(limit: usize) -> BoxedStrategy<bytes::Bytes> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..256).prop_map(bytes::Bytes::from),
        1 => (limit - 64..=limit + 64, any::<u8>())
            .prop_map(|(n, b)| bytes::Bytes::from(vec![b; n])),
    ]
    .boxed()
}

/// The names a peer's frame carries, through the checks the receiving node applies
/// ([`AppId::parse`], [`ServiceName::parse`]): no panic, and what passes keeps the grammar
/// (an app id of 1 to 64 ASCII bytes, a service `name/version`).
fn check_names(app_id: &str, service: &str) -> TestCaseResult {
    use p2pos_protocols::ids::{AppId, ServiceName};
    if let Ok(id) = AppId::parse(app_id) {
        prop_assert_eq!(id.as_str(), app_id);
        prop_assert!(
            (1..=64).contains(&app_id.len()) && app_id.is_ascii(),
            "{app_id:?}"
        );
    }
    if let Ok(name) = ServiceName::parse(service) {
        prop_assert_eq!(&*name, service);
        let (base, version) = service.split_once('/').unwrap_or_default();
        prop_assert!(!base.is_empty() && !version.is_empty(), "{service:?}");
        prop_assert!(version.bytes().all(|b| b.is_ascii_digit()), "{service:?}");
    }
    let _ = ServiceName::parse_or_first(service);
    Ok(())
}
