//! Application channels over gRPC: an app opens a channel to the same app on a peer by ticket,
//! the remote app accepts it from its session, and frames flow both ways, boundaries kept.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use p2pos_proto::{
    app::v1::{
        AcceptChannel, ChannelInput, OpenChannel, SessionRequest, channel_input, channel_output,
        session_event,
    },
    monitor::v1::{EventsRequest, event},
};
use p2pos_tests::Node;

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

    let mut session = client_b
        .apps()
        .session(SessionRequest {
            app_id: "echo".into(),
        })
        .await
        .expect("session")
        .into_inner();
    let first = session.next().await.expect("event").expect("ok");
    assert!(matches!(
        first.kind,
        Some(session_event::Kind::Registered(_))
    ));

    // A opens.
    let (mut a_tx, a_rx) = futures::channel::mpsc::channel::<ChannelInput>(8);
    a_tx.send(ChannelInput {
        kind: Some(channel_input::Kind::Open(OpenChannel {
            app_id: "echo".into(),
            peer: b_ticket,
        })),
    })
    .await
    .expect("queue open");
    let client = client_a.clone();
    let opening = tokio::spawn(async move { client.apps().channel(a_rx).await });

    // B sees it on its session and accepts.
    let incoming = tokio::time::timeout(T, session.next())
        .await
        .expect("announced")
        .expect("open")
        .expect("ok");
    let Some(session_event::Kind::Incoming(incoming)) = incoming.kind else {
        panic!("expected an incoming channel, got {incoming:?}");
    };
    assert_eq!(incoming.peer_id, a_id);
    assert_eq!(incoming.app_id, "echo");
    let (mut b_tx, b_rx) = futures::channel::mpsc::channel::<ChannelInput>(8);
    b_tx.send(ChannelInput {
        kind: Some(channel_input::Kind::Accept(AcceptChannel {
            channel_id: incoming.channel_id,
            app_id: "echo".into(),
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
