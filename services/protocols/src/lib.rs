//! The vocabulary P2P OS services speak to each other: the protocols the kernel routes between
//! the gateway and the service actors, the framing of node-to-node streams, and the grammar of
//! app ids. Not a service: every service crate may depend on it, and the kernel does not (it
//! routes any [`Protocol`] without knowing its types).
//!
//! Control-plane protocols use the protobuf envelopes of the open spec (one `oneof` per
//! service). The apps protocol hands out data-plane handles (byte streams and bounded
//! receivers): the bytes themselves then flow without passing through any actor.
//!
//! # Layout
//! - this file: one marker type per protocol ([`Overlay`], [`Monitor`], [`Apps`], [`Tasks`],
//!   [`Services`]) and the request and response types of those that are not protobuf
//!   envelopes.
//! - [`network`]: the network handle other services use (streams by protocol id, inbound
//!   streams within limits, DHT providers and signed records, peers, tickets).
//! - [`wire`]: framing shared by the node-to-node protocols and the channel splice.
//! - [`names`]: app ids and helpers' app ids, one grammar for every service.

pub mod names;
pub mod network;
pub mod wire;

use p2pos_kernel::Protocol;

/// `p2pos.overlay.v1`: tickets, dialing, peers, ping, DHT, overlay status.
#[derive(Debug)]
pub enum Overlay {}

impl Protocol for Overlay {
    const NAME: &'static str = "p2pos.overlay.v1";
    type Request = p2pos_proto::overlay::v1::OverlayRequest;
    type Response = p2pos_proto::overlay::v1::OverlayResponse;
}

/// `p2pos.monitor.v1`: node status.
#[derive(Debug)]
pub enum Monitor {}

impl Protocol for Monitor {
    const NAME: &'static str = "p2pos.monitor.v1";
    type Request = p2pos_proto::monitor::v1::MonitorRequest;
    type Response = p2pos_proto::monitor::v1::MonitorResponse;
}

/// `p2pos.app.v1`: app sessions, channels and messages.
#[derive(Debug)]
pub enum Apps {}

impl Protocol for Apps {
    const NAME: &'static str = "p2pos.app.v1";
    type Request = apps::Request;
    type Response = apps::Response;
}

/// `p2pos.tasks.v1`: helper specs and processes.
#[derive(Debug)]
pub enum Tasks {}

impl Protocol for Tasks {
    const NAME: &'static str = "p2pos.tasks.v1";
    type Request = tasks::Request;
    type Response = tasks::Response;
}

/// `p2pos.service.v1`: services that apps provide, calls and channels to them, port forwarding.
#[derive(Debug)]
pub enum Services {}

impl Protocol for Services {
    const NAME: &'static str = "p2pos.service.v1";
    type Request = services::Request;
    type Response = services::Response;
}

/// Request and response types of the [`Services`] protocol.
pub mod services {
    use std::time::Instant;

    use p2pos_proto::service::v1::{
        CallReply, CallRequest, CloseForwardRequest, ExposeRequest, Exposure, FindServiceReply,
        FindServiceRequest, Forward, ListExposuresReply, ListForwardsReply, ListServicesReply,
        OpenForwardRequest, OpenServiceChannel, RegisterRequest, ReplyRequest, ServiceInfo,
        UnregisterRequest, WithdrawRequest,
    };

    use super::apps::ChannelStream;

    /// One request; app ids in it have already been checked against the caller's scope, and
    /// port-forwarding requests come from the admin.
    #[derive(Debug)]
    pub enum Request {
        /// `Services.Register`.
        Register(RegisterRequest),
        /// `Services.Unregister`.
        Unregister(UnregisterRequest),
        /// `Services.ListServices`.
        List,
        /// `Services.FindService`.
        Find(FindServiceRequest),
        /// `Services.Call`.
        Call {
            /// The call.
            request: CallRequest,
            /// The caller's gRPC deadline, if it set one.
            deadline: Option<Instant>,
        },
        /// `Services.Reply`.
        Reply(ReplyRequest),
        /// `Services.Channel`'s first frame.
        OpenChannel(OpenServiceChannel),
        /// `Services.Expose`.
        Expose(ExposeRequest),
        /// `Services.Withdraw`.
        Withdraw(WithdrawRequest),
        /// `Services.ListExposures`.
        ListExposures,
        /// `Services.OpenForward`.
        OpenForward(OpenForwardRequest),
        /// `Services.CloseForward`.
        CloseForward(CloseForwardRequest),
        /// `Services.ListForwards`.
        ListForwards,
    }

    /// The answer to a [`Request`], variant by variant.
    #[derive(Debug)]
    pub enum Response {
        /// To `Register`.
        Registered(ServiceInfo),
        /// To `Unregister`.
        Unregistered,
        /// To `List`.
        Services(ListServicesReply),
        /// To `Find`.
        Providers(FindServiceReply),
        /// To `Call`.
        Called(CallReply),
        /// To `Reply`.
        Replied,
        /// To `OpenChannel`: the channel, carrying length-delimited frames like an app channel.
        Channel(ChannelStream),
        /// To `Expose`.
        Exposed(Exposure),
        /// To `Withdraw`.
        Withdrawn,
        /// To `ListExposures`.
        Exposures(ListExposuresReply),
        /// To `OpenForward`.
        Forwarding(Forward),
        /// To `CloseForward`.
        ForwardClosed,
        /// To `ListForwards`.
        Forwards(ListForwardsReply),
    }
}

/// Request and response types of the [`Tasks`] protocol.
pub mod tasks {
    use p2pos_proto::tasks::v1::{LogLine, LogsRequest, TasksRequest, TasksResponse};
    use tokio::sync::mpsc;

    /// One request; the caller's scope has been checked by the gateway.
    #[derive(Debug)]
    pub enum Request {
        /// A unary call, with the caller's app in `caller_app` (empty: admin).
        Control(TasksRequest),
        /// The app id a running helper's token acts as (`<app>:<helper>`), for the gateway.
        HelperToken {
            /// The token the caller presented.
            token: String,
        },
        /// Read (and maybe follow) a helper's output.
        Logs {
            /// The caller's app; empty: admin.
            caller_app: String,
            /// What to read.
            request: LogsRequest,
        },
    }

    /// The answer to a [`Request`].
    // One answer per control call, moved once through a mailbox: boxing the large variant
    // would only add an allocation.
    #[allow(clippy::large_enum_variant)]
    #[derive(Debug)]
    pub enum Response {
        /// To `Control`.
        Control(TasksResponse),
        /// To `Logs`: kept lines, then (when following) new ones; the stream ends when the
        /// helper's log is gone or, without `follow`, after the kept lines.
        Logs(mpsc::Receiver<LogLine>),
        /// To `HelperToken`: the helper's app id, or `None` for a token of no running helper.
        HelperToken(Option<String>),
    }
}

/// Request and response types of the [`Apps`] protocol.
pub mod apps {
    use bytes::Bytes;
    use p2pos_proto::app::v1::{
        IncomingCall, IncomingChannel, ListAppsReply, ReceivedMessage, Registered, SendReply,
    };
    use tokio::{
        io::{AsyncRead, AsyncWrite},
        sync::mpsc,
    };

    /// A bidirectional byte stream (a libp2p stream, behind a box).
    pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
    impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Duplex for T {}

    /// An open channel: its identity and the byte stream to the remote app, carrying
    /// length-delimited frames (see [`crate::wire`]) after the handshake.
    pub struct ChannelStream {
        /// Node-local id of the channel.
        pub channel_id: u64,
        /// The remote peer.
        pub peer_id: String,
        /// The app on both ends.
        pub app_id: String,
        /// True when the remote peer opened it.
        pub inbound: bool,
        /// The bytes.
        pub io: Box<dyn Duplex>,
    }

    impl std::fmt::Debug for ChannelStream {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ChannelStream")
                .field("channel_id", &self.channel_id)
                .field("peer_id", &self.peer_id)
                .field("app_id", &self.app_id)
                .field("inbound", &self.inbound)
                .finish_non_exhaustive()
        }
    }

    /// A live app session: the registration lasts until `incoming` is dropped.
    #[derive(Debug)]
    pub struct Session {
        /// The registration.
        pub registered: Registered,
        /// What the session is told: channels to accept and calls to answer.
        pub incoming: mpsc::Receiver<Incoming>,
    }

    /// One event of a live session, after its registration.
    #[derive(Debug)]
    pub enum Incoming {
        /// A channel opened to the app (by a remote copy of it, or, with `service` set, to a
        /// service it provides); accept it with [`Request::AcceptChannel`].
        Channel(IncomingChannel),
        /// A call to a service the app provides; answer it with `Services.Reply`.
        Call(IncomingCall),
    }

    /// One request; the app id has already been checked against the caller's scope.
    #[derive(Debug)]
    pub enum Request {
        /// Register the app for as long as the returned session lives.
        OpenSession {
            /// The app.
            app_id: String,
        },
        /// Open a channel to the same app on `peer` (peer id, ticket or multiaddr).
        OpenChannel {
            /// The app.
            app_id: String,
            /// The peer.
            peer: String,
        },
        /// Accept an incoming channel announced on a session of `app_id`.
        AcceptChannel {
            /// The app.
            app_id: String,
            /// From the announcement.
            channel_id: u64,
        },
        /// Store-and-forward one message.
        Send {
            /// The app.
            app_id: String,
            /// The peer.
            peer: String,
            /// At most [`crate::wire::MAX_PAYLOAD`] bytes.
            payload: Bytes,
        },
        /// Follow the app's inbox.
        Receive {
            /// The app.
            app_id: String,
        },
        /// Acknowledge every message of the app's inbox up to and including `inbox_id`.
        Ack {
            /// The app.
            app_id: String,
            /// From [`ReceivedMessage::inbox_id`].
            inbox_id: u64,
        },
        /// List apps: all of them, or just one.
        ListApps {
            /// Only this app, for an app-scoped caller.
            only: Option<String>,
        },
        /// Watch the app's sessions: answered with [`Response::SessionEnd`] if the app has a
        /// live session, `FAILED_PRECONDITION` otherwise.
        WatchSession {
            /// The app.
            app_id: String,
        },
    }

    /// The answer to a [`Request`], variant by variant.
    #[derive(Debug)]
    pub enum Response {
        /// To `OpenSession`.
        Session(Session),
        /// To `OpenChannel` and `AcceptChannel`.
        Channel(ChannelStream),
        /// To `Send`.
        Sent(SendReply),
        /// To `Receive`: messages, oldest first, each once; each stays in the inbox until it is
        /// acknowledged with [`Request::Ack`].
        Inbox(mpsc::Receiver<ReceivedMessage>),
        /// To `Ack`: the acknowledged messages are gone from the inbox, durably.
        Acked,
        /// To `ListApps`.
        Apps(ListAppsReply),
        /// To `WatchSession`: completes (with `Ok` or `Err`) once the app has no live session
        /// left, or the service holding the sessions stops.
        SessionEnd(tokio::sync::oneshot::Receiver<()>),
    }
}
