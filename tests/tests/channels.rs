//! Application channels over gRPC: an app opens a channel to the same app on a peer by ticket,
//! the remote app accepts it from its session, and frames flow both ways, boundaries kept.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use p2pos_proto::{
    app::v1::{
        AcceptChannel, ChannelInput, ChannelTransport, OpenChannel, channel_input, channel_output,
    },
    monitor::v1::{EventsRequest, event},
};
use p2pos_tests::{Node, next_incoming, open_session};

const T: Duration = Duration::from_secs(30);

fn data(bytes: impl Into<Bytes>) -> ChannelInput {
    ChannelInput {
        kind: Some(channel_input::Kind::Data(bytes.into())),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_flow_both_ways_with_boundaries_kept() {
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    let client_a = a.client().await;
    let client_b = b.client().await;
    let b_ticket = b.ticket().await;
    let a_id = a.peer_id().await;
    let mut events_b = client_b
        .monitor()
        .events(EventsRequest {})
        .await
        .expect("events")
        .into_inner();

    let mut session = open_session(&client_b, "echo").await;

    // A opens.
    let (mut a_tx, a_rx) = futures::channel::mpsc::channel::<ChannelInput>(8);
    a_tx.send(ChannelInput {
        kind: Some(channel_input::Kind::Open(OpenChannel {
            app_id: "echo".into(),
            peer: b_ticket,
            batch: false,
            half_close: false,
            group: String::new(),
            transport: 0,
        })),
    })
    .await
    .expect("queue open");
    let client = client_a.clone();
    let opening = tokio::spawn(async move { client.apps().channel(a_rx).await });

    // B sees it on its session and accepts.
    let incoming = next_incoming(&mut session, T).await;
    assert_eq!(incoming.peer_id, a_id);
    assert_eq!(incoming.app_id, "echo");
    let (mut b_tx, b_rx) = futures::channel::mpsc::channel::<ChannelInput>(8);
    b_tx.send(ChannelInput {
        kind: Some(channel_input::Kind::Accept(AcceptChannel {
            channel_id: incoming.channel_id,
            app_id: "echo".into(),
            batch: false,
            half_close: false,
            transport: 0,
        })),
    })
    .await
    .expect("queue accept");
    let mut b_out = client_b
        .apps()
        .channel(b_rx)
        .await
        .expect("accept")
        .into_inner();
    let mut a_out = opening.await.expect("join").expect("open").into_inner();
    for out in [&mut a_out, &mut b_out] {
        let opened = tokio::time::timeout(T, out.next())
            .await
            .expect("opened")
            .expect("open")
            .expect("ok");
        assert!(matches!(opened.kind, Some(channel_output::Kind::Opened(_))));
    }

    // Frames keep their boundaries, including empty and large ones.
    let frames: Vec<Bytes> = vec![
        Bytes::from_static(b"hello"),
        Bytes::new(),
        Bytes::from(vec![0xab; 1024 * 1024]),
        Bytes::from_static(b"bye"),
    ];
    for f in &frames {
        a_tx.send(data(f.clone())).await.expect("send");
    }
    for f in &frames {
        let got = tokio::time::timeout(T, b_out.next())
            .await
            .expect("frame")
            .expect("open")
            .expect("ok");
        let Some(channel_output::Kind::Data(got)) = got.kind else {
            panic!("data expected")
        };
        assert_eq!(got.len(), f.len());
        assert_eq!(&got, f);
    }
    b_tx.send(data(Bytes::from_static(b"reply")))
        .await
        .expect("send");
    let got = tokio::time::timeout(T, a_out.next())
        .await
        .expect("frame")
        .expect("open")
        .expect("ok");
    assert_eq!(
        got.kind,
        Some(channel_output::Kind::Data(Bytes::from_static(b"reply")))
    );

    // A half-closes: B's output ends; B closes too: A's output ends.
    drop(a_tx);
    assert!(
        tokio::time::timeout(T, b_out.next())
            .await
            .expect("end")
            .is_none()
    );
    drop(b_tx);
    assert!(
        tokio::time::timeout(T, a_out.next())
            .await
            .expect("end")
            .is_none()
    );

    // B's monitor saw the channel open and close.
    let mut saw_open = false;
    tokio::time::timeout(T, async {
        while let Some(Ok(ev)) = events_b.next().await {
            match ev.kind {
                Some(event::Kind::ChannelOpened(o)) if o.inbound && o.app_id == "echo" => {
                    saw_open = true
                }
                Some(event::Kind::ChannelClosed(c)) if c.app_id == "echo" => return,
                _ => {}
            }
        }
    })
    .await
    .expect("channel events");
    assert!(saw_open);
}

/// Frames packed as the spec says: each a 4-byte big-endian length, then its bytes.
fn pack(frames: &[&[u8]]) -> Bytes {
    let mut packed = Vec::new();
    for frame in frames {
        packed.extend_from_slice(&u32::try_from(frame.len()).expect("small").to_be_bytes());
        packed.extend_from_slice(frame);
    }
    packed.into()
}

/// The frames of a packed batch; panics if it is malformed.
fn unpack(mut packed: &[u8]) -> Vec<Bytes> {
    let mut frames = Vec::new();
    while !packed.is_empty() {
        let (len, rest) = packed.split_at(4);
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        let (frame, rest) = rest.split_at(len);
        frames.push(Bytes::copy_from_slice(frame));
        packed = rest;
    }
    frames
}

/// Frame `i` of the batching test: its index repeated `i % 25` times (so every 25th is empty),
/// and one of 1 MiB in the middle.
fn numbered_frame(i: u32) -> Bytes {
    if i == 10_000 {
        return Bytes::from(vec![0xab; 1024 * 1024]);
    }
    Bytes::from(i.to_be_bytes().repeat((i % 25) as usize))
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_carry_small_frames_in_order_and_a_half_closed_peer_can_still_answer() {
    const FRAMES: u32 = 20_000;
    let mut a = Node::start(&[]);
    let mut b = Node::start(&[]);
    let client_a = a.client().await;
    let client_b = b.client().await;
    let b_ticket = b.ticket().await;
    let mut session = open_session(&client_b, "bulk").await;

    // A opens through the SDK, whose sender batches what is fed between flushes.
    let opening = tokio::spawn(async move {
        let open = OpenChannel {
            app_id: "bulk".into(),
            peer: b_ticket,
            batch: true,
            half_close: false,
            group: String::new(),
            // The batching of the call's messages is what is tested here.
            transport: ChannelTransport::Grpc as i32,
        };
        client_a.open_channel(open).await
    });
    let incoming = next_incoming(&mut session, T).await;
    // B accepts with plain gRPC messages, asking for batches (to see them as they come) and
    // to keep its call open when A half-closes.
    let (mut b_tx, b_rx) = futures::channel::mpsc::channel::<ChannelInput>(8);
    b_tx.send(ChannelInput {
        kind: Some(channel_input::Kind::Accept(AcceptChannel {
            channel_id: incoming.channel_id,
            app_id: "bulk".into(),
            batch: true,
            half_close: true,
            transport: 0,
        })),
    })
    .await
    .expect("queue accept");
    let mut b_out = client_b
        .apps()
        .channel(b_rx)
        .await
        .expect("accept")
        .into_inner();
    let opened = tokio::time::timeout(T, b_out.next())
        .await
        .expect("opened")
        .expect("open")
        .expect("ok");
    assert!(matches!(opened.kind, Some(channel_output::Kind::Opened(_))));
    let channel = opening.await.expect("join").expect("A's channel opens");
    let (mut sender, mut receiver) = (channel.sender, channel.receiver);

    // A to B: many small frames and a large one, fed to the SDK's sender, which sends what
    // was fed between flushes as batches.
    let sending = tokio::spawn(async move {
        for i in 0..FRAMES {
            sender.feed(numbered_frame(i)).await?;
        }
        // Flushes the last batch and half-closes.
        sender.close().await
    });
    let mut got = 0u32;
    let mut outputs = 0u32;
    loop {
        let output = tokio::time::timeout(T, b_out.next())
            .await
            .expect("frames keep coming");
        let output = output.expect("the output lasts until B's input ends");
        let batch = match output.expect("no error").kind {
            Some(channel_output::Kind::Frames(batch)) => batch,
            // A has half-closed; with `half_close` B's call stays open.
            Some(channel_output::Kind::PeerClosed(_)) => break,
            other => panic!("a channel accepted with `batch` gets `frames`, got {other:?}"),
        };
        let frames = unpack(&batch);
        assert!(!frames.is_empty(), "a batch holds at least one frame");
        outputs += 1;
        for frame in frames {
            assert_eq!(frame, numbered_frame(got), "frame {got}");
            got += 1;
        }
    }
    sending.await.expect("join").expect("A sent everything");
    assert_eq!(got, FRAMES, "every frame arrived, then `peer_closed`");
    assert!(
        outputs < FRAMES / 2,
        "small frames that arrive together come together ({outputs} outputs for {FRAMES} frames)"
    );
    // B to A, after A has half-closed: a plain `frames` input and a `data` input reach the
    // SDK's receiver as frames, in order.
    b_tx.send(ChannelInput {
        kind: Some(channel_input::Kind::Frames(pack(&[b"x", b"", b"yz"]))),
    })
    .await
    .expect("send batch");
    b_tx.send(data(Bytes::from_static(b"w")))
        .await
        .expect("send");
    let mut back = Vec::new();
    for _ in 0..4 {
        let frame = tokio::time::timeout(T, receiver.message())
            .await
            .expect("in time")
            .expect("no error")
            .expect("a frame");
        back.push(frame);
    }
    assert_eq!(back, [&b"x"[..], b"", b"yz", b"w"]);

    // B closes too: A's receiver ends, and B's output (the call) with it.
    drop(b_tx);
    let end = tokio::time::timeout(T, receiver.message())
        .await
        .expect("in time");
    assert_eq!(end.expect("no error"), None);
    let end = tokio::time::timeout(T, b_out.next())
        .await
        .expect("in time");
    assert!(end.is_none(), "B's output ends with its input: {end:?}");
}
