//! Target `channel`: `/p2pos/channel/1` — the opener's `ChannelHello` and the responder's
//! `ChannelWelcome` (4 KiB each) as [`wire::read_message`] reads them, and the data frames
//! after them (1 MiB + 64 bytes each) as the gateway's splice reads them ([`wire::codec`] in a
//! `FramedRead`): damaged or hostile bytes are clear errors, valid ones come back whole, and
//! a frame's memory follows the bytes that arrived.

use std::task::Poll;

use futures::StreamExt;
use p2pos_fuzz::{
    alloc::peak_during,
    fuzz,
    io::{Then, Trickle},
    mutate::framed,
};
use p2pos_proto::wire::v1::{ChannelHello, ChannelWelcome, channel_welcome};
use proptest::{collection::vec, prelude::*};
use prost::Message;
use tokio_util::codec::FramedRead;

use super::{
    Frame, SLACK, Sent, check_message, check_names, check_round_trip, frames_in, poll_once,
    runtime, sent, text, wire,
};

fn hello() -> impl Strategy<Value = ChannelHello> {
    (text(), text(), text(), any::<bool>()).prop_map(|(app_id, service, group, end_mark)| {
        ChannelHello {
            app_id,
            service,
            group,
            end_mark,
            publisher_keys: Vec::new(),
            taken_byte: false,
        }
    })
}

fn welcome() -> impl Strategy<Value = ChannelWelcome> {
    (prop_oneof![0..6i32, any::<i32>()], text(), any::<bool>()).prop_map(
        |(result, message, end_mark)| ChannelWelcome {
            result,
            message,
            end_mark,
        },
    )
}

/// Up to four data frames (some empty, some long) back to back.
fn data() -> BoxedStrategy<Vec<u8>> {
    let frame = prop_oneof![
        3 => vec(any::<u8>(), 0..200),
        1 => (0usize..3000, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
    ];
    vec(frame, 0..4)
        .prop_map(|frames| frames.iter().flat_map(|f| framed(f)).collect())
        .boxed()
}

#[derive(Debug, Clone)]
enum Case {
    Hello(Sent),
    Welcome(Sent),
    HelloBack(ChannelHello),
    WelcomeBack(ChannelWelcome),
    /// Data frames, read with this limit.
    Data(Sent, usize),
}

fn case() -> impl Strategy<Value = Case> {
    let control = wire::MAX_CONTROL_FRAME;
    let hellos = hello().prop_map(|h| framed(&h.encode_to_vec())).boxed();
    let welcomes = welcome().prop_map(|w| framed(&w.encode_to_vec())).boxed();
    let data_limit = prop_oneof![Just(wire::MAX_CHANNEL_FRAME), Just(100usize)];
    prop_oneof![
        3 => sent(hellos, control).prop_map(Case::Hello),
        2 => sent(welcomes, control).prop_map(Case::Welcome),
        1 => hello().prop_map(Case::HelloBack),
        1 => welcome().prop_map(Case::WelcomeBack),
        3 => data_limit
            .prop_flat_map(|max| (sent(data(), max), Just(max)))
            .prop_map(|(sent, max)| Case::Data(sent, max)),
    ]
}

#[test]
fn channel() {
    let rt = runtime();
    fuzz("channel", case(), |case| {
        let control = wire::MAX_CONTROL_FRAME;
        match case {
            Case::Hello((bytes, pieces, then)) => {
                if let Some(hello) =
                    check_message::<ChannelHello>(&rt, &bytes, pieces, then, control)?
                {
                    check_names(&hello.app_id, &hello.service)?;
                }
            }
            Case::Welcome((bytes, pieces, then)) => {
                if let Some(welcome) =
                    check_message::<ChannelWelcome>(&rt, &bytes, pieces, then, control)?
                {
                    // The opener tells a result it does not know from the ones it does.
                    let known = channel_welcome::Result::try_from(welcome.result).is_ok();
                    prop_assert_eq!(known, (0..=5).contains(&welcome.result));
                }
            }
            Case::HelloBack(hello) => {
                check_round_trip(&rt, &hello, control)?;
                check_names(&hello.app_id, &hello.service)?;
            }
            Case::WelcomeBack(welcome) => check_round_trip(&rt, &welcome, control)?,
            Case::Data((bytes, pieces, then), max) => data_frames(&rt, &bytes, pieces, then, max)?,
        }
        Ok(())
    });
}

/// What reading data frames gave.
#[derive(Debug, Default)]
struct Read {
    /// Frames read as sent.
    frames: usize,
    /// The first frame that was not the one sent.
    wrong: Option<usize>,
    /// The error that ended them.
    error: Option<std::io::ErrorKind>,
    /// Whether the reader ended (at an error or at the end of the stream).
    ended: bool,
}

/// Reads `input` as channel data frames the way the splice does.
fn data_frames(
    rt: &tokio::runtime::Runtime,
    input: &[u8],
    pieces: Vec<usize>,
    then: Then,
    max: usize,
) -> Result<(), TestCaseError> {
    let (frames, end) = frames_in(input, max);
    let mut reader = FramedRead::new(Trickle::new(input.to_vec(), pieces, then), wire::codec(max));
    // Frames are compared as they come and dropped, as the splice passes them on: the
    // memory measured is the reader's.
    let (read, peak) = peak_during(|| {
        let mut read = Read::default();
        loop {
            match poll_once(rt, reader.next()) {
                Poll::Ready(Some(Ok(frame))) => {
                    let want = frames.get(read.frames).map(|r| &input[r.clone()]);
                    if want != Some(&frame[..]) {
                        read.wrong = Some(read.frames);
                        return read;
                    }
                    read.frames += 1;
                }
                Poll::Ready(Some(Err(e))) => {
                    read.error = Some(e.kind());
                    read.ended = true;
                }
                Poll::Ready(None) => {
                    read.ended = true;
                    return read;
                }
                Poll::Pending => return read,
            }
        }
    });
    prop_assert!(
        peak <= 2 * input.len() + SLACK,
        "{peak} bytes held reading {} bytes",
        input.len()
    );
    prop_assert_eq!(
        read.wrong,
        None,
        "frame {:?} is not the one sent",
        read.wrong
    );
    prop_assert_eq!(read.frames, frames.len());
    let Read { error, ended, .. } = read;
    match (end, then) {
        (Frame::Whole(_), _) => unreachable!("frames_in takes every whole frame"),
        (Frame::Nothing, Then::End) => prop_assert!(error.is_none() && ended),
        (Frame::Nothing | Frame::Partial, Then::Silence) => {
            prop_assert!(error.is_none() && !ended)
        }
        (Frame::TooLarge, _) => prop_assert_eq!(error, Some(std::io::ErrorKind::InvalidData)),
        // tokio-util's own words: "bytes remaining on stream".
        (Frame::Partial, Then::End) => prop_assert!(error.is_some()),
    }
    Ok(())
}
