//! Runs the real `p2p-chat` binary against a fake node: an in-process `Apps` service on a Unix
//! socket in a temporary directory, whose remote peer can be switched online and offline. Checks
//! the printed lines and that every typed line reaches the node exactly once.
#![allow(clippy::unwrap_used, missing_docs)]

use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use p2pos_proto::app::v1::apps_server::{Apps, AppsServer};
use p2pos_proto::app::v1::{
    ChannelInput, ChannelOpened, ChannelOutput, DeliveryState, IncomingChannel, ListAppsReply,
    ListAppsRequest, ReceiveRequest, ReceivedMessage, Registered, SendReply, SendRequest,
    SessionEvent, SessionRequest, channel_input, channel_output, session_event,
};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status, Streaming};

const BOB: &str = "12D3KooWBobBobBob";
const T: Duration = Duration::from_secs(15);

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What the fake node saw, and the switch for the remote peer.
#[derive(Default)]
struct State {
    online: AtomicBool,
    /// Announce an incoming channel from BOB right after registering.
    announce: AtomicBool,
    frames: Mutex<Vec<String>>,
    sent: Mutex<Vec<String>>,
    kick: Notify,
}

#[derive(Clone)]
struct FakeApps(Arc<State>);

#[tonic::async_trait]
impl Apps for FakeApps {
    type SessionStream = Out<SessionEvent>;
    type ChannelStream = Out<ChannelOutput>;
    type ReceiveStream = Out<ReceivedMessage>;

    async fn session(
        &self,
        _: Request<SessionRequest>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let registered = SessionEvent {
            kind: Some(session_event::Kind::Registered(Registered {
                app_id: "chat".into(),
                peer_id: "12D3KooWSelf".into(),
            })),
        };
        let mut events = vec![Ok(registered)];
        if self.0.announce.load(Ordering::SeqCst) {
            events.push(Ok(SessionEvent {
                kind: Some(session_event::Kind::Incoming(IncomingChannel {
                    channel_id: 7,
                    peer_id: BOB.into(),
                    app_id: "chat".into(),
                })),
            }));
        }
        let stream = futures::stream::iter(events).chain(futures::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn channel(
        &self,
        request: Request<Streaming<ChannelInput>>,
    ) -> Result<Response<Self::ChannelStream>, Status> {
        let mut input = request.into_inner();
        let first = input
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty"))?;
        match first.kind {
            Some(channel_input::Kind::Open(open)) if open.peer == BOB => {}
            Some(channel_input::Kind::Accept(accept))
                if accept.channel_id == 7 && accept.app_id == "chat" => {}
            other => return Err(Status::invalid_argument(format!("unexpected {other:?}"))),
        }
        if !self.0.online.load(Ordering::SeqCst) {
            return Err(Status::failed_precondition(
                "chat has no session on the peer",
            ));
        }
        let (tx, rx) = mpsc::channel(16);
        let opened = ChannelOutput {
            kind: Some(channel_output::Kind::Opened(ChannelOpened {
                channel_id: 1,
                peer_id: BOB.into(),
                app_id: "chat".into(),
            })),
        };
        tx.send(Ok(opened)).await.unwrap();
        let state = self.0.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = input.message() => message,
                    () = state.kick.notified() => break,
                };
                let Ok(Some(ChannelInput {
                    kind: Some(channel_input::Kind::Data(data)),
                })) = message
                else {
                    break;
                };
                let text = String::from_utf8(data.to_vec()).unwrap();
                state.frames.lock().unwrap().push(text.clone());
                let echo = ChannelOutput {
                    kind: Some(channel_output::Kind::Data(format!("echo: {text}").into())),
                };
                if tx.send(Ok(echo)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendReply>, Status> {
        let request = request.into_inner();
        assert_eq!(request.peer, BOB);
        let text = String::from_utf8(request.payload.to_vec()).unwrap();
        let mut sent = self.0.sent.lock().unwrap();
        sent.push(text);
        Ok(Response::new(SendReply {
            message_id: sent.len() as u64,
            state: DeliveryState::Queued as i32,
        }))
    }

    async fn receive(
        &self,
        _: Request<ReceiveRequest>,
    ) -> Result<Response<Self::ReceiveStream>, Status> {
        let stored = ReceivedMessage {
            from_peer: "12D3KooWStored".into(),
            app_id: "chat".into(),
            message_id: 1,
            sequence: 1,
            payload: "stored hi".into(),
            sent_at_ms: 0,
        };
        let stream = futures::stream::iter([Ok(stored)]).chain(futures::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_apps(
        &self,
        _: Request<ListAppsRequest>,
    ) -> Result<Response<ListAppsReply>, Status> {
        Ok(Response::new(ListAppsReply::default()))
    }
}

/// Serves the fake node on `<dir>/gateway.sock`.
fn serve(dir: &std::path::Path, state: Arc<State>) {
    let listener = tokio::net::UnixListener::bind(dir.join("gateway.sock")).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AppsServer::new(FakeApps(state)))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
}

/// The chat process, its stdin, and its stdout lines.
struct ChatProcess {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl ChatProcess {
    fn start(dir: &std::path::Path, peer: Option<&str>) -> ChatProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_p2p-chat"))
            .arg("--data-dir")
            .arg(dir)
            .args(peer)
            .env_remove("P2POS_GATEWAY")
            .env_remove("P2POS_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                if tx.send(line.unwrap()).is_err() {
                    return;
                }
            }
        });
        ChatProcess {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn type_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the line `wanted` (lines may come in any order across expectations).
    async fn expect(&mut self, wanted: &str) {
        if let Some(at) = self.seen.iter().position(|l| l == wanted) {
            self.seen.remove(at);
            return;
        }
        let until = Instant::now() + T;
        loop {
            match self.lines.try_recv() {
                Ok(line) if line == wanted => return,
                Ok(line) => self.seen.push(line),
                Err(_) if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(_) => panic!("no line {wanted:?}; saw {:?}", self.seen),
            }
        }
    }

    /// Closes stdin and waits for the exit status.
    async fn finish(mut self) -> std::process::ExitStatus {
        drop(self.child.stdin.take());
        let until = Instant::now() + T;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < until, "p2p-chat did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn wait_until(what: &str, check: impl Fn() -> bool) {
    let until = Instant::now() + T;
    while !check() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn online_peer_gets_frames_and_eof_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(State::default());
    state.online.store(true, Ordering::SeqCst);
    serve(dir.path(), state.clone());

    let mut chat = ChatProcess::start(dir.path(), Some(BOB));
    chat.expect(&format!("* connected to {BOB}")).await;
    chat.expect("oWStored> stored hi").await;
    chat.type_line("hello");
    chat.expect("obBobBob> echo: hello").await;
    chat.type_line("bye");
    assert!(chat.finish().await.success());
    assert_eq!(*state.frames.lock().unwrap(), ["hello", "bye"]);
    assert!(state.sent.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_peer_gets_messages_then_a_channel_each_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(State::default());
    serve(dir.path(), state.clone());

    let mut chat = ChatProcess::start(dir.path(), Some(BOB));
    chat.expect(&format!(
        "* {BOB} is offline; your lines will be delivered when it returns"
    ))
    .await;
    chat.type_line("a");
    chat.type_line("b");
    wait_until("two messages sent", || {
        state.sent.lock().unwrap().len() == 2
    })
    .await;

    state.online.store(true, Ordering::SeqCst);
    chat.expect(&format!("* connected to {BOB}")).await;
    chat.type_line("c");
    chat.expect("obBobBob> echo: c").await;

    // The peer goes away: the channel ends and lines go by Send again.
    state.online.store(false, Ordering::SeqCst);
    state.kick.notify_waiters();
    chat.expect(&format!(
        "* {BOB} went offline; your lines will be delivered when it returns"
    ))
    .await;
    chat.type_line("d");
    assert!(chat.finish().await.success());
    assert_eq!(*state.sent.lock().unwrap(), ["a", "b", "d"]);
    assert_eq!(*state.frames.lock().unwrap(), ["c"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_node_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_p2p-chat"))
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("P2POS_GATEWAY")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("error: cannot reach the node at unix:"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn listener_accepts_an_incoming_channel() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(State::default());
    state.online.store(true, Ordering::SeqCst);
    state.announce.store(true, Ordering::SeqCst);
    serve(dir.path(), state.clone());

    let mut chat = ChatProcess::start(dir.path(), None);
    chat.expect("* waiting for a chat (peer id 12D3KooWSelf)")
        .await;
    chat.expect(&format!("* connected to {BOB}")).await;
    chat.type_line("");
    chat.type_line("x y  z ");
    chat.expect("obBobBob> echo: x y  z ").await;
    assert!(chat.finish().await.success());
    assert_eq!(*state.frames.lock().unwrap(), ["", "x y  z "]);
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_exits_with_130() {
    let dir = tempfile::tempdir().unwrap();
    serve(dir.path(), Arc::new(State::default()));
    let mut chat = ChatProcess::start(dir.path(), None);
    chat.expect("* waiting for a chat (peer id 12D3KooWSelf)")
        .await;
    chat.type_line("anyone?");
    chat.expect("* no peer yet").await;
    let killed = Command::new("kill")
        .args(["-INT", &chat.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let until = Instant::now() + T;
    let status = loop {
        if let Some(status) = chat.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < until, "p2p-chat ignored SIGINT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(130));
}
