//! Data sockets: a channel's bytes over a plain local stream socket rather than gRPC messages.
//!
//! The app asks for one when it opens or accepts a channel (`transport`); the node then offers
//! the channel under a one-time secret, answers `opened` with where to connect and the secret,
//! and waits (at most [`CLAIM_WITHIN`]) for a connection that presents it. The connection is
//! then piped to the channel's libp2p stream by [`p2pos_protocols::pipe`], in the call's own
//! task; the gRPC call stays open as the channel's control: `peer_closed`, then its final
//! status. The listeners are the node's `data.sock` in the data directory (for calls on the
//! unix socket) and a loopback TCP port beside the TCP gateway (for calls on it).
//!
//! Who may use a data socket: whoever presents its secret, which only the gRPC call of the
//! app (scope) that opened or accepted the channel was told; it works once, then never again.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use p2pos_kernel::EventBus;
use p2pos_proto::app::v1::{
    ChannelOutput, ChannelTransport, DataSocket, PeerClosed, channel_output,
};
use p2pos_protocols::{
    apps::ChannelStream,
    network::Circuit,
    pipe::{Ends, Framing, PipeError, Side, pipe_within},
    wire::MAX_PAYLOAD,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::{mpsc, oneshot},
    task::AbortHandle,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{either::Either, sync::CancellationToken};
use tonic::{Status, Streaming};
use tracing::{debug, warn};

use crate::{
    BoxStream, cut_on_stop,
    relayed::{frame_limit, too_large_for_relay, via},
    splice::{ChannelFrame, OutputOptions, open, splice},
};

/// The transport a channel's first input asks for; an unknown value is refused.
pub fn transport(value: i32) -> Result<ChannelTransport, Status> {
    ChannelTransport::try_from(value)
        .map_err(|_| Status::invalid_argument(format!("unknown channel transport {value}")))
}

/// Whether a call came over the TCP gateway (its data socket is then a TCP one too).
pub fn over_tcp<T>(req: &tonic::Request<T>) -> bool {
    req.extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
        .is_some()
}

/// How an app asked for its channel: over its call with these options, or over a data socket
/// already reserved (before the channel was opened or accepted, so that running out of room
/// refuses the request rather than a channel the peer already has).
pub(crate) enum Asked {
    /// `data`/`frames` messages on the call, with its `batch` and `half_close`.
    Grpc(OutputOptions),
    /// A data socket.
    Socket(Reserved),
}

/// A data socket reserved for a channel about to be opened or accepted.
pub(crate) struct Reserved {
    framing: Framing,
    socket: DataSocket,
    claim: Claim,
}

/// How long after `opened` a channel waits for its data socket.
const CLAIM_WITHIN: Duration = Duration::from_secs(10);
/// How long a connection to a data socket listener may take to present its secret (an app
/// writes it at once).
const HANDSHAKE_WITHIN: Duration = Duration::from_secs(2);
/// Connections presenting their secret at once; past it, the one that has waited longest is
/// closed (so idle connections cannot shut the door on apps that present theirs at once).
const HANDSHAKES: usize = 128;
/// Channels waiting for their data socket, per app and in all.
const OFFERS_PER_APP: usize = 64;
const OFFERS: usize = 1024;
/// The secret's length.
const SECRET_LEN: usize = 32;
/// The handshake's answer when the node took the connection.
const ACCEPTED: u8 = 0;
/// The handshake's answer when it did not (a UTF-8 reason follows).
const REFUSED: u8 = 1;

/// A data socket connection.
type Conn = Either<UnixStream, TcpStream>;

type Secret = [u8; SECRET_LEN];

/// The channels waiting for their data socket, and where apps connect.
#[derive(Clone)]
pub struct DataSockets {
    inner: Arc<Inner>,
}

struct Inner {
    unix_path: PathBuf,
    tcp: Option<SocketAddr>,
    offers: Mutex<Offers>,
    /// The tasks of connections presenting their secret, oldest first.
    handshakes: Mutex<VecDeque<AbortHandle>>,
    /// Where channels' opening and closing are told.
    events: EventBus,
    /// Cancelled when the gateway stops: every channel's call ends, its listeners too.
    stop: CancellationToken,
}

#[derive(Default)]
struct Offers {
    by_secret: HashMap<Secret, Offer>,
    per_app: HashMap<String, usize>,
}

struct Offer {
    app: String,
    deliver: oneshot::Sender<Conn>,
}

/// A channel's claim on its data socket: the connection that presents its secret, if one
/// does in time. Dropping it withdraws the offer.
struct Claim {
    sockets: DataSockets,
    secret: Secret,
    conn: oneshot::Receiver<Conn>,
}

impl Claim {
    /// Withdraws the offer now: no connection can claim it after this.
    fn withdrawn(&self) {
        self.sockets.take(&self.secret);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.sockets.take(&self.secret);
    }
}

impl DataSockets {
    /// Data sockets at `unix_path` and, if the gateway serves TCP, `tcp` (already bound), for
    /// a gateway that tells `events` and stops with `stop`.
    pub fn new(
        unix_path: PathBuf,
        tcp: Option<SocketAddr>,
        events: EventBus,
        stop: CancellationToken,
    ) -> Self {
        DataSockets {
            inner: Arc::new(Inner {
                unix_path,
                tcp,
                offers: Mutex::new(Offers::default()),
                handshakes: Mutex::new(VecDeque::with_capacity(HANDSHAKES)),
                events,
                stop,
            }),
        }
    }

    /// What `transport` asks for: the call's messages with `options`, or a data socket for
    /// app `app` reserved under a fresh secret (a TCP one for a call that came over TCP).
    pub(crate) fn ask(
        &self,
        transport: ChannelTransport,
        options: OutputOptions,
        app: &str,
        over_tcp: bool,
    ) -> Result<Asked, Status> {
        let framing = match transport {
            ChannelTransport::Unspecified | ChannelTransport::Grpc => {
                return Ok(Asked::Grpc(options));
            }
            ChannelTransport::SocketFrames => Framing::Frames,
            ChannelTransport::SocketBytes => Framing::Bytes,
        };
        let (socket, claim) = self.offer(app, over_tcp)?;
        Ok(Asked::Socket(Reserved {
            framing,
            socket,
            claim,
        }))
    }

    /// Offers a channel of `app` under a fresh secret: where to connect (TCP for a call that
    /// came over TCP) and the claim that receives the connection.
    fn offer(&self, app: &str, over_tcp: bool) -> Result<(DataSocket, Claim), Status> {
        let (unix_path, tcp_address) = match (over_tcp, self.inner.tcp) {
            (true, Some(addr)) => (String::new(), addr.to_string()),
            (true, None) => {
                return Err(Status::internal(
                    "a TCP call but no TCP data socket listens",
                ));
            }
            (false, _) => (self.inner.unix_path.display().to_string(), String::new()),
        };
        let secret: Secret = rand::random();
        let (deliver, conn) = oneshot::channel();
        let mut offers = self.lock();
        if offers.by_secret.len() >= OFFERS {
            return Err(Status::resource_exhausted(format!(
                "{OFFERS} channels are already waiting for their data socket on this node"
            )));
        }
        let waiting = offers.per_app.entry(app.to_owned()).or_default();
        if *waiting >= OFFERS_PER_APP {
            return Err(Status::resource_exhausted(format!(
                "{OFFERS_PER_APP} channels of app {app:?} are already waiting for their data socket: connect to them first"
            )));
        }
        *waiting += 1;
        offers.by_secret.insert(
            secret,
            Offer {
                app: app.to_owned(),
                deliver,
            },
        );
        drop(offers);
        let socket = DataSocket {
            unix_path,
            tcp_address,
            secret: secret.to_vec().into(),
        };
        let claim = Claim {
            sockets: self.clone(),
            secret,
            conn,
        };
        Ok((socket, claim))
    }

    /// Takes the offer of `secret` off the table (used, expired or given up).
    fn take(&self, secret: &Secret) -> Option<Offer> {
        let mut offers = self.lock();
        let offer = offers.by_secret.remove(secret)?;
        if let Some(waiting) = offers.per_app.get_mut(&offer.app) {
            *waiting = waiting.saturating_sub(1);
            if *waiting == 0 {
                offers.per_app.remove(&offer.app);
            }
        }
        Some(offer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Offers> {
        // The map stays consistent whatever panicked while holding it.
        self.inner
            .offers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Accepts connections on the unix listener until the gateway stops.
    pub async fn serve_unix(self, listener: UnixListener) {
        self.accept_loop(|| async { listener.accept().await.map(|(conn, _)| Either::Left(conn)) })
            .await;
    }

    /// Accepts connections on the TCP listener until the gateway stops.
    pub async fn serve_tcp(self, listener: TcpListener) {
        self.accept_loop(|| async {
            let (conn, _) = listener.accept().await?;
            // Small frames (an echo, a keystroke) should not wait for more.
            let _ = conn.set_nodelay(true);
            Ok(Either::Right(conn))
        })
        .await;
    }

    /// Hands each connection `accept` gives to [`DataSockets::handshake`] until the gateway
    /// stops; a failed accept (out of file descriptors, say) is logged and waited out.
    async fn accept_loop<F, Fut>(&self, accept: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::io::Result<Conn>>,
    {
        let stop = self.inner.stop.clone();
        loop {
            let accepted = tokio::select! {
                accepted = accept() => accepted,
                () = stop.cancelled() => return,
            };
            match accepted {
                Ok(conn) => self.handshake(conn),
                Err(e) => {
                    warn!("data socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Reads the connection's secret and hands the connection to the channel that offered it,
    /// in a task of its own; past [`HANDSHAKES`] at once, the oldest is closed.
    fn handshake(&self, mut conn: Conn) {
        let sockets = self.clone();
        let task = tokio::spawn(async move {
            let mut secret = [0u8; SECRET_LEN];
            let read = tokio::time::timeout(HANDSHAKE_WITHIN, conn.read_exact(&mut secret)).await;
            let why = match read {
                Ok(Ok(_)) => match sockets.take(&secret) {
                    Some(offer) => match offer.deliver.send(conn) {
                        Ok(()) => return,
                        Err(back) => {
                            conn = back;
                            "the channel of this secret has ended"
                        }
                    },
                    None => "unknown, used or expired data socket secret",
                },
                Ok(Err(_)) => return,
                Err(_) => "no secret in time",
            };
            refuse(conn, why).await;
        });
        let mut handshakes = self
            .inner
            .handshakes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        handshakes.retain(|task| !task.is_finished());
        if handshakes.len() >= HANDSHAKES
            && let Some(oldest) = handshakes.pop_front()
        {
            debug!("data socket: too many connections presenting their secret; the oldest closed");
            oldest.abort();
        }
        handshakes.push_back(task.abort_handle());
    }

    /// Serves an open channel the way the app asked: over its call ([`splice`]), or over the
    /// data socket reserved for it ([`DataSockets::serve`]).
    pub(crate) fn channel<I: ChannelFrame>(
        &self,
        channel: ChannelStream,
        asked: Asked,
        input: Streaming<I>,
    ) -> BoxStream<ChannelOutput> {
        let events = self.inner.events.clone();
        let stop = self.inner.stop.clone();
        match asked {
            Asked::Grpc(options) => splice(channel, options, input, events, stop),
            Asked::Socket(reserved) => serve(channel, reserved, input, events, stop),
        }
    }
}

/// Serves an open channel over its data socket: `opened` (with where to connect) first, then
/// `peer_closed` when the peer half-closes, then the end of the call with the channel's.
fn serve<I: ChannelFrame>(
    channel: ChannelStream,
    reserved: Reserved,
    input: Streaming<I>,
    events: EventBus,
    stop: CancellationToken,
) -> BoxStream<ChannelOutput> {
    let Reserved {
        framing,
        socket,
        claim,
    } = reserved;
    let (io, closed, opened, circuit) = open(channel, &events, Some(socket));
    let channel_id = closed.channel_id();
    // `opened`, `peer_closed` and the final status: never more than three.
    let (tx, rx) = mpsc::channel(4);
    let _ = tx.try_send(Ok(opened));
    let task_stop = stop.clone();
    tokio::spawn(async move {
        let _closed = closed;
        let outcome = run(claim, (io, circuit), framing, input, &tx, task_stop).await;
        if let Err(status) = outcome {
            debug!(channel_id, "data socket channel ended: {status}");
            let _ = tx.send(Err(status)).await;
        }
    });
    cut_on_stop(Box::pin(ReceiverStream::new(rx)), stop)
}

/// Tells a connection why the node did not take it, and closes it.
async fn refuse(mut conn: Conn, why: &str) {
    debug!("data socket refused: {why}");
    let mut answer = vec![REFUSED];
    answer.extend_from_slice(why.as_bytes());
    let _ = tokio::time::timeout(HANDSHAKE_WITHIN, async {
        conn.write_all(&answer).await?;
        conn.shutdown().await
    })
    .await;
}

/// Waits for the claim, then pipes the connection and the channel's stream until both
/// directions end, the call ends, the app misuses the call, or the node stops.
async fn run<I: ChannelFrame>(
    mut claim: Claim,
    (mut io, circuit): (Box<dyn p2pos_protocols::apps::Duplex>, Option<Circuit>),
    framing: Framing,
    mut input: Streaming<I>,
    tx: &mpsc::Sender<Result<ChannelOutput, Status>>,
    stop: CancellationToken,
) -> Result<(), Status> {
    let stopping = || Status::unavailable("the node is stopping");
    let claimed = tokio::select! {
        conn = tokio::time::timeout(CLAIM_WITHIN, &mut claim.conn) => match conn {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(_)) => Err(Status::internal("the data socket listener went away")),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no connection presented this channel's data socket secret within {CLAIM_WITHIN:?}"
            ))),
        },
        () = tx.closed() => Err(Status::cancelled("the call ended")),
        status = misuse(&mut input) => Err(status),
        () = stop.cancelled() => Err(stopping()),
    };
    let mut conn = match claimed {
        Ok(conn) => conn,
        Err(status) => {
            // A connection that presented the secret just as the wait ended hears why.
            claim.withdrawn();
            if let Ok(conn) = claim.conn.try_recv() {
                tokio::spawn(refuse(conn, "the channel of this secret has ended"));
            }
            return Err(status);
        }
    };
    drop(claim);
    conn.write_all(&[ACCEPTED])
        .await
        .map_err(|e| Status::cancelled(format!("the app's data socket broke: {e}")))?;
    let ends = Control {
        tx,
        unix: match &conn {
            Either::Left(unix) => unix.as_fd().try_clone_to_owned().ok(),
            Either::Right(_) => None,
        },
    };
    let piped = tokio::select! {
        piped = pipe_within(&mut conn, &mut io, framing, ends, frame_limit(circuit.as_ref())) => {
            piped.map_err(|e| status(e, circuit.as_ref()))
        }
        () = tx.closed() => Err(Status::cancelled("the call ended")),
        status = misuse(&mut input) => Err(status),
        () = stop.cancelled() => Err(stopping()),
    };
    if piped.is_err() {
        // The app must see a broken channel as an error, not an end: TCP gets a reset (a
        // unix socket has none: the call's status says it).
        if let Either::Right(tcp) = &conn {
            let _ = tcp.set_zero_linger();
        }
    }
    // The channel's stream is dropped unclosed on failure, which resets it for the peer.
    piped
}

/// What the pipe tells the call, and how it tells an app's close from its half-close.
struct Control<'a> {
    tx: &'a mpsc::Sender<Result<ChannelOutput, Status>>,
    /// The unix socket (a duplicate of its descriptor), which can tell them apart.
    unix: Option<OwnedFd>,
}

impl Ends for Control<'_> {
    fn remote_ended(&mut self) {
        let closed = channel_output::Kind::PeerClosed(PeerClosed {});
        // Room for it was kept (see `serve`).
        let _ = self.tx.try_send(Ok(ChannelOutput { kind: Some(closed) }));
    }

    /// A unix socket whose peer closed it (or died) hangs up; one only shut down for writing
    /// does not (while the node has not shut its own side down).
    fn local_closed(&self) -> bool {
        let Some(fd) = &self.unix else {
            return false;
        };
        let mut polled = [PollFd::new(fd.as_fd(), PollFlags::empty())];
        match poll(&mut polled, PollTimeout::ZERO) {
            Ok(_) => polled[0]
                .revents()
                .is_some_and(|events| events.contains(PollFlags::POLLHUP)),
            Err(_) => false,
        }
    }
}

/// The status for a broken pipe, on a channel that crosses `circuit` (if any).
fn status(e: PipeError, circuit: Option<&Circuit>) -> Status {
    match (&e, e.side()) {
        (PipeError::TooLarge { len, .. }, Side::Local) => match circuit {
            Some(c) if *len <= MAX_PAYLOAD => too_large_for_relay(*len, c),
            _ => Status::resource_exhausted(format!(
                "the app wrote a frame of {len} bytes to its data socket; the limit is \
                 {MAX_PAYLOAD}"
            )),
        },
        (PipeError::Truncated { .. }, Side::Local) => {
            Status::cancelled("the app's data socket ended inside a frame")
        }
        (PipeError::Abandoned, _) => Status::cancelled(
            "the app closed its data socket before the peer's frames ended (shut down its write side to half-close)",
        ),
        (_, Side::Local) => Status::cancelled(format!("the app's data socket broke: {e}")),
        (_, Side::Remote) => Status::unavailable(format!(
            "the channel to the peer broke: {e}{}",
            via(circuit)
        )),
    }
}

/// Ready with a status when the app sends anything after its first input (its frames belong
/// on the data socket) or the call breaks; never ready when the input just ends.
async fn misuse<I: ChannelFrame>(input: &mut Streaming<I>) -> Status {
    match input.message().await {
        Ok(Some(_)) => Status::invalid_argument(
            "this channel's frames go over its data socket: send nothing on the call after its first input",
        ),
        Ok(None) => std::future::pending().await,
        Err(status) => status,
    }
}
