//! The vocabulary P2P OS services speak to each other: the protocols the kernel routes between
//! the gateway and the service actors, the network handle, the framing of node-to-node streams,
//! and validated names. Not a service: every service crate may depend on it, and the kernel does
//! not (it routes any [`Protocol`] without knowing its types).
//!
//! Every request carries its own typed [`Reply`] (rust-libp2p's `file-sharing` `Command`
//! shape): the caller gets exactly the type it asked for. Names in requests are validated types
//! ([`ids`]), parsed once at the edge. The apps and services protocols hand out data-plane
//! handles (byte streams and bounded receivers): the bytes themselves then flow without passing
//! through any actor.
//!
//! # Layout
//! - this file: one marker type per protocol ([`Overlay`], [`Monitor`], [`Apps`], [`Tasks`],
//!   [`Services`], [`Forwarding`], [`Resources`], [`Groups`], [`Jobs`]) and one module of request types each.
//! - [`ids`]: [`AppId`](ids::AppId), [`ServiceName`](ids::ServiceName),
//!   [`PeerRef`](ids::PeerRef).
//! - [`network`]: the network handle other services use (streams by protocol id, inbound
//!   streams within limits, DHT providers and signed records, peers, tickets).
//! - [`wire`]: framing shared by the node-to-node protocols and the channel splice.
//! - [`marked`]: the end mark that tells a channel's clean end from a broken channel.
//! - [`pipe`]: the copy loop between a local socket and a channel's stream (data sockets,
//!   port forwarding).
//! - [`names`]: app ids and helpers' app ids, one grammar for every service.
//! - [`certs`]: publisher keys and the service certificates they sign.

pub mod certs;
pub mod ids;
pub mod marked;
pub mod names;
pub mod network;
pub mod pipe;
pub mod wire;

pub use libp2p::PeerId;
use p2pos_kernel::Protocol;
pub use p2pos_kernel::Reply;

/// Answers `reply` with `result`, converting the service's error. A caller that gave up is not
/// an error.
pub fn answer<T, E: Into<p2pos_kernel::ServiceError>>(reply: Reply<T>, result: Result<T, E>) {
    let _ = reply.send(result.map_err(Into::into));
}

/// `p2pos.overlay.v1`: tickets, dialing, peers, ping, DHT, overlay status.
#[derive(Debug)]
pub enum Overlay {}

impl Protocol for Overlay {
    const NAME: &'static str = "p2pos.overlay.v1";
    type Request = overlay::Request;
}

/// `p2pos.monitor.v1`: node status.
#[derive(Debug)]
pub enum Monitor {}

impl Protocol for Monitor {
    const NAME: &'static str = "p2pos.monitor.v1";
    type Request = monitor::Request;
}

/// `p2pos.app.v1`: app sessions, channels and messages.
#[derive(Debug)]
pub enum Apps {}

impl Protocol for Apps {
    const NAME: &'static str = "p2pos.app.v1";
    type Request = apps::Request;
}

/// `p2pos.tasks.v1`: helper specs and processes.
#[derive(Debug)]
pub enum Tasks {}

impl Protocol for Tasks {
    const NAME: &'static str = "p2pos.tasks.v1";
    type Request = tasks::Request;
}

/// `p2pos.service.v1`: services that apps provide, calls and channels to them.
#[derive(Debug)]
pub enum Services {}

impl Protocol for Services {
    const NAME: &'static str = "p2pos.service.v1";
    type Request = services::Request;
}

/// Port forwarding, the admin's part of `p2pos.service.v1`: exposures and forwards.
#[derive(Debug)]
pub enum Forwarding {}

impl Protocol for Forwarding {
    const NAME: &'static str = "p2pos.service.v1.forwarding";
    type Request = forwarding::Request;
}

/// `p2pos.resources.v1`: the machine's inventory and what the node and its helpers use.
#[derive(Debug)]
pub enum Resources {}

impl Protocol for Resources {
    const NAME: &'static str = "p2pos.resources.v1";
    type Request = resources::Request;
}

/// `p2pos.jobs.v1`: WebAssembly jobs run on peers that lend.
#[derive(Debug)]
pub enum Jobs {}

impl Protocol for Jobs {
    const NAME: &'static str = "p2pos.jobs.v1";
    type Request = jobs::Request;
}

/// Requests of the [`Overlay`] protocol.
pub mod overlay {
    use p2pos_proto::overlay::v1::{
        DialReply, DialRequest, FindPeerReply, ListPeersReply, OverlayStatus, PingReply, Ticket,
    };

    use crate::{Reply, ids::PeerRef};

    /// One request.
    #[derive(Debug)]
    pub enum Request {
        /// `Overlay.GetTicket`.
        GetTicket {
            /// This node's ticket.
            reply: Reply<Ticket>,
        },
        /// `Overlay.Dial` (admin).
        Dial {
            /// The target and time limit.
            request: DialRequest,
            /// The connection made.
            reply: Reply<DialReply>,
        },
        /// `Overlay.ListPeers`.
        ListPeers {
            /// Connected peers.
            reply: Reply<ListPeersReply>,
        },
        /// `Overlay.Ping` of a peer named by its peer id alone.
        Ping {
            /// The peer.
            peer: PeerRef,
            /// The round-trip time.
            reply: Reply<PingReply>,
        },
        /// `Overlay.FindPeer`.
        FindPeer {
            /// The peer.
            peer: PeerRef,
            /// Its addresses.
            reply: Reply<FindPeerReply>,
        },
        /// The overlay part of `Monitor.GetStatus`.
        Status {
            /// The status.
            reply: Reply<OverlayStatus>,
        },
    }
}

/// `p2pos.group.v1`: groups with a signed member list.
#[derive(Debug)]
pub enum Groups {}

impl Protocol for Groups {
    const NAME: &'static str = "p2pos.group.v1";
    type Request = groups::Request;
}

/// Requests of the [`Groups`] protocol: the gateway hands the checked gRPC request on.
pub mod groups {
    use p2pos_kernel::ServiceError;
    use p2pos_proto::group::v1::{
        CreateRequest, Group, InviteReply, InviteRequest, JoinRequest, ListReply, MemberRequest,
        MembersReply, PublishReply, PublishRequest, RenameRequest, SetNameRequest,
        SubscribeRequest, SyncReply, TopicMessage,
    };
    use tokio::sync::mpsc;

    use crate::Reply;

    /// A followed topic's messages; an `Err` says why it ended (this node left the group, or
    /// the subscriber fell too far behind).
    pub type Messages = mpsc::Receiver<Result<TopicMessage, ServiceError>>;
    /// A group, and a member of it, as [`Request::Resolve`] found them.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Resolved {
        /// The group's id.
        pub group: String,
        /// The member holding the name asked for (none asked: `None`).
        pub peer: Option<libp2p::PeerId>,
    }

    /// A membership change an admin signs.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Change {
        /// `Groups.Remove`.
        Remove,
        /// `Groups.AddAdmin`.
        AddAdmin,
        /// `Groups.RemoveAdmin`.
        RemoveAdmin,
    }

    /// One request.
    #[derive(Debug)]
    pub enum Request {
        /// `Groups.Create`.
        Create {
            /// The name.
            request: CreateRequest,
            /// The group.
            reply: Reply<Group>,
        },
        /// `Groups.Invite`.
        Invite {
            /// What to invite to.
            request: InviteRequest,
            /// The invite.
            reply: Reply<InviteReply>,
        },
        /// `Groups.Join`.
        Join {
            /// The invite.
            request: JoinRequest,
            /// The group joined.
            reply: Reply<Group>,
        },
        /// `Groups.Leave`.
        Leave {
            /// The group (id or name).
            group: String,
            /// Done.
            reply: Reply<()>,
        },
        /// `Groups.List`.
        List {
            /// The groups.
            reply: Reply<ListReply>,
        },
        /// `Groups.Members`.
        Members {
            /// The group (id or name).
            group: String,
            /// Its members.
            reply: Reply<MembersReply>,
        },
        /// `Groups.Remove`, `AddAdmin`, `RemoveAdmin`.
        Change {
            /// Which change.
            change: Change,
            /// The group and the peer.
            request: MemberRequest,
            /// The group after it.
            reply: Reply<Group>,
        },
        /// `Groups.Rename`.
        Rename {
            /// The group and its new name.
            request: RenameRequest,
            /// The group after it.
            reply: Reply<Group>,
        },
        /// `Groups.Sync`.
        Sync {
            /// The group (id or name).
            group: String,
            /// How each member fared.
            reply: Reply<SyncReply>,
        },
        /// `Groups.Publish`, for `app` (the caller's, checked by the gateway).
        Publish {
            /// The app whose topic it is.
            app: String,
            /// What to publish.
            request: PublishRequest,
            /// Its number, and receipts when asked.
            reply: Reply<PublishReply>,
        },
        /// `Groups.Subscribe`, for `app` (the caller's, checked by the gateway).
        Subscribe {
            /// The app whose topic it is.
            app: String,
            /// What to follow.
            request: SubscribeRequest,
            /// The messages.
            reply: Reply<Messages>,
        },
        /// `Groups.SetName`: names this node within a group.
        SetName {
            /// The group and the name.
            request: SetNameRequest,
            /// The group after it.
            reply: Reply<Group>,
        },
        /// A group (id or name here) and, with `name`, the one member holding that short name
        /// in it: how `NAME@GROUP` and a channel's group are resolved. `NOT_FOUND` for a group
        /// or name unknown here, `INVALID_ARGUMENT` for a bad or ambiguous name. A group id not
        /// held here is answered as it is when no name is asked.
        Resolve {
            /// The group (id or name).
            group: String,
            /// The member's short name.
            name: Option<String>,
            /// What they name.
            reply: Reply<Resolved>,
        },
        /// Whether a channel in `group` (an id) from `peer` may be taken: `PERMISSION_DENIED`,
        /// saying why, unless `peer` and this node are both members of it now, as this node
        /// knows.
        Admit {
            /// The group's id.
            group: String,
            /// The opener's node.
            peer: libp2p::PeerId,
            /// Admitted.
            reply: Reply<()>,
        },
        /// Whether `peer` is a member of `group` now, as this node knows: what group-scoped
        /// traffic (pubsub, channels, services) checks.
        IsMember {
            /// The group's id.
            group: String,
            /// The peer.
            peer: libp2p::PeerId,
            /// Whether it is.
            reply: Reply<bool>,
        },
    }
}

/// Requests of the [`Jobs`] protocol.
pub mod jobs {
    use p2pos_proto::jobs::v1::{Job, JobSpec, ListReply};
    use tokio::sync::mpsc;

    use crate::Reply;

    /// Who calls: `None` for the admin, else the app whose scope the gateway resolved.
    pub type CallerApp = Option<String>;

    /// One request.
    #[derive(Debug)]
    pub enum Request {
        /// `Jobs.Submit`: the job's events, the first one at once; the job ends when the
        /// receiver is dropped before it ends, unless `detach`.
        Submit {
            /// Who calls (the job's owner).
            caller_app: CallerApp,
            /// What to run (checked by the service).
            spec: Box<JobSpec>,
            /// Keep running when the receiver goes.
            detach: bool,
            /// The job's snapshots, one per change, until it ends.
            reply: Reply<mpsc::Receiver<Job>>,
        },
        /// `Jobs.Watch`.
        Watch {
            /// Who calls (an app sees only its own jobs).
            caller_app: CallerApp,
            /// The job.
            job_id: String,
            /// Its snapshots.
            reply: Reply<mpsc::Receiver<Job>>,
        },
        /// `Jobs.Get`.
        Get {
            /// Who calls.
            caller_app: CallerApp,
            /// The job.
            job_id: String,
            /// It, with its result.
            reply: Reply<Job>,
        },
        /// `Jobs.List`.
        List {
            /// Who calls (an app sees only its own jobs, and no hosted runs).
            caller_app: CallerApp,
            /// The jobs.
            reply: Reply<ListReply>,
        },
        /// `Jobs.Cancel`.
        Cancel {
            /// Who calls.
            caller_app: CallerApp,
            /// The job.
            job_id: String,
            /// It, as it is after the cancel.
            reply: Reply<Job>,
        },
    }
}

/// Requests of the [`Resources`] protocol.
pub mod resources {
    use libp2p::PeerId;
    use p2pos_proto::resources::v1::{
        Amounts, FindReply, FindRequest, Inventory, Lease, LeaseReply, ListLeasesReply, Refused,
        Sharing,
    };

    use crate::Reply;

    /// Who calls: `None` for the admin, else the app whose scope the gateway resolved.
    pub type CallerApp = Option<String>;

    /// One request.
    #[derive(Debug)]
    pub enum Request {
        /// `Resources.GetInventory`: the last sample, every helper included (the gateway
        /// narrows it to the caller's scope).
        GetInventory {
            /// The inventory.
            reply: Reply<Inventory>,
        },
        /// `Resources.GetSharing`.
        GetSharing {
            /// The policy.
            reply: Reply<Sharing>,
        },
        /// `Resources.Share` and `Unshare` (an empty policy): the admin's.
        Share {
            /// The new policy.
            sharing: Sharing,
            /// The policy as kept.
            reply: Reply<Sharing>,
        },
        /// `Resources.Find`.
        Find {
            /// What to find.
            request: FindRequest,
            /// The matches.
            reply: Reply<FindReply>,
        },
        /// `Resources.Lease`.
        Lease {
            /// The lender.
            peer: PeerId,
            /// What to reserve.
            amounts: Amounts,
            /// For how long (0: the default).
            ttl_secs: u32,
            /// The app it is for.
            app_id: String,
            /// The lease, or why not.
            reply: Reply<LeaseReply>,
        },
        /// `Resources.Renew`.
        Renew {
            /// Who calls.
            caller_app: CallerApp,
            /// The held lease.
            lease_id: String,
            /// For how long from now.
            ttl_secs: u32,
            /// The lease, or why not.
            reply: Reply<LeaseReply>,
        },
        /// `Resources.Release`.
        Release {
            /// Who calls.
            caller_app: CallerApp,
            /// The held lease.
            lease_id: String,
            /// Done.
            reply: Reply<()>,
        },
        /// `Resources.ListLeases`.
        ListLeases {
            /// Who calls (an app sees only the leases it holds).
            caller_app: CallerApp,
            /// Granted and held leases.
            reply: Reply<ListLeasesReply>,
        },
        /// Another service's (the jobs runner's): claims the lease `lease_id` that `holder`
        /// holds on this node for one run (a lease serves one run), or why not (`NOT_SHARED`,
        /// `UNKNOWN_LEASE`, `INVALID` when a run claimed it already). The token is cancelled
        /// when the lease ends: it expires, its holder gives it back, or the lender goes.
        ClaimLease {
            /// Who says it holds it.
            holder: PeerId,
            /// The lease.
            lease_id: String,
            /// It and its end, or the refusal.
            reply: Reply<Result<(Lease, tokio_util::sync::CancellationToken), Refused>>,
        },
        /// Another service's (the jobs runner's): the run that claimed the lease `lease_id`
        /// of `holder` ended, and the lease with it.
        EndLease {
            /// Its holder.
            holder: PeerId,
            /// The lease.
            lease_id: String,
            /// Done (a lease already gone is not an error).
            reply: Reply<()>,
        },
    }
}

/// Requests of the [`Monitor`] protocol.
pub mod monitor {
    use p2pos_proto::monitor::v1::DashboardLoginReply;
    use p2pos_proto::monitor::v1::{
        DoctorReport, GetConfigReply, GetLogsReply, GetMetricsReply, NodeStatus,
    };

    use crate::Reply;

    /// What the doctor diagnoses.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Diagnose {
        /// This node.
        Node,
        /// This node and a peer (a peer id or ticket, parsed by the doctor).
        Peer(String),
        /// A group's members (its name or id).
        Group(String),
    }

    /// One request.
    #[derive(Debug)]
    pub enum Request {
        /// `Monitor.GetStatus`.
        GetStatus {
            /// The node's status.
            reply: Reply<NodeStatus>,
        },
        /// `Monitor.Doctor` (the gateway checked the admin scope).
        Doctor {
            /// What to diagnose.
            target: Diagnose,
            /// The checks.
            reply: Reply<DoctorReport>,
        },
        /// `Monitor.GetLogs` (checked by the gateway).
        GetLogs {
            /// The least severe level wanted.
            min_level: tracing::Level,
            /// Most lines (1 to the gateway's bound).
            limit: usize,
            /// The lines and the counts.
            reply: Reply<GetLogsReply>,
        },
        /// `Monitor.GetMetrics`.
        GetMetrics {
            /// The Prometheus text.
            reply: Reply<GetMetricsReply>,
        },
        /// `Monitor.GetConfig`.
        GetConfig {
            /// The effective configuration.
            reply: Reply<GetConfigReply>,
        },
        /// `Monitor.DashboardLogin` (the gateway checked the admin scope).
        DashboardLogin {
            /// A one-time login link for the dashboard.
            reply: Reply<DashboardLoginReply>,
        },
    }
}

/// Requests of the [`Services`] protocol.
pub mod services {
    use std::time::Instant;

    use bytes::Bytes;
    use p2pos_proto::service::v1::{
        CallReply, FindServiceReply, ListServicesReply, ReplyRequest, ServiceInfo,
    };

    use crate::{
        Reply,
        apps::ChannelStream,
        certs::PublisherKey,
        ids::{AppId, PeerRef, ServiceName},
    };

    /// `Services.Call` as the registry takes it.
    #[derive(Debug)]
    pub struct OutgoingCall {
        /// The calling app.
        pub app_id: AppId,
        /// The service.
        pub service: ServiceName,
        /// The call's payload (at most 1 MiB, checked by the registry).
        pub payload: Bytes,
        /// The provider's node; `None`: the best provider found.
        pub peer: Option<PeerRef>,
        /// The call's own time limit in ms (0: none).
        pub timeout_ms: u32,
        /// The caller's gRPC deadline, if it set one.
        pub deadline: Option<Instant>,
        /// Which providers the caller accepts.
        pub filter: ProviderFilter,
    }

    /// Which providers a caller accepts: among given peers (those it named, a group's
    /// members), and holding a certificate signed by a publisher key it pinned.
    #[derive(Debug, Clone, Default)]
    pub struct ProviderFilter {
        /// Only providers among these peers; `None`: any.
        pub only: Option<Vec<libp2p::PeerId>>,
        /// Only providers with a certificate for the service signed by one of these keys
        /// (checked before the provider sees the request); empty: any.
        pub publisher_keys: Vec<PublisherKey>,
    }

    impl ProviderFilter {
        /// Whether `peer` may be a provider, as far as the peers go.
        pub fn allows(&self, peer: &libp2p::PeerId) -> bool {
            self.only.as_ref().is_none_or(|only| only.contains(peer))
        }
    }

    /// One request; app ids in it have already been checked against the caller's scope.
    #[derive(Debug)]
    pub enum Request {
        /// `Services.Register`.
        Register {
            /// The providing app.
            app_id: AppId,
            /// The service.
            service: ServiceName,
            /// What it does, at most 256 bytes (checked by the registry).
            description: String,
            /// Publishers' certificates it presents (checked by the registry).
            certificates: Vec<crate::certs::Certificate>,
            /// The registration.
            reply: Reply<ServiceInfo>,
        },
        /// `Services.Unregister`.
        Unregister {
            /// The providing app.
            app_id: AppId,
            /// The service.
            service: ServiceName,
            /// Done.
            reply: Reply<()>,
        },
        /// `Services.ListServices`.
        List {
            /// The services provided here.
            reply: Reply<ListServicesReply>,
        },
        /// `Services.FindService`.
        Find {
            /// The service.
            service: ServiceName,
            /// Most providers wanted (0: the default).
            limit: u32,
            /// Which providers the caller accepts.
            filter: ProviderFilter,
            /// The providers.
            reply: Reply<FindServiceReply>,
        },
        /// `Services.Call`.
        Call {
            /// The call.
            call: OutgoingCall,
            /// The provider's answer.
            reply: Reply<CallReply>,
        },
        /// `Services.Reply`.
        Reply {
            /// The answer (its app id checked against the caller's scope).
            request: ReplyRequest,
            /// Taken.
            reply: Reply<()>,
        },
        /// `Services.Channel`'s first frame (`batch` and `half_close` are the gateway's).
        OpenChannel {
            /// The opening app.
            app_id: AppId,
            /// The service.
            service: ServiceName,
            /// The provider's node; `None`: the best provider found.
            peer: Option<PeerRef>,
            /// Which providers the caller accepts.
            filter: ProviderFilter,
            /// The channel, carrying length-delimited frames like an app channel.
            reply: Reply<ChannelStream>,
        },
    }
}

/// Requests of the [`Forwarding`] protocol.
pub mod forwarding {
    use p2pos_proto::service::v1::{
        CloseForwardRequest, ExposeRequest, Exposure, Forward, ListExposuresReply,
        ListForwardsReply, OpenForwardRequest, WithdrawRequest,
    };

    /// Most exposures on a node; each is a registration of port forwarding's, so the
    /// registry lets port forwarding register as many.
    pub const MAX_EXPOSURES: usize = 64;

    /// The app id port forwarding acts as in the service registry: the provider of
    /// exposures, the opener of forwards. A node-wide helper's id, which no app can have a
    /// token for.
    pub const FORWARD_APP: &str = "_node:forward";

    use crate::Reply;

    /// One request; it comes from the admin.
    #[derive(Debug)]
    pub enum Request {
        /// `Services.Expose`.
        Expose {
            /// The exposure.
            request: ExposeRequest,
            /// As kept.
            reply: Reply<Exposure>,
        },
        /// `Services.Withdraw`.
        Withdraw {
            /// The exposure.
            request: WithdrawRequest,
            /// Done.
            reply: Reply<()>,
        },
        /// `Services.ListExposures`.
        ListExposures {
            /// The exposures.
            reply: Reply<ListExposuresReply>,
        },
        /// `Services.OpenForward`.
        OpenForward {
            /// The forward.
            request: OpenForwardRequest,
            /// As opened.
            reply: Reply<Forward>,
        },
        /// `Services.CloseForward`.
        CloseForward {
            /// The forward.
            request: CloseForwardRequest,
            /// Done.
            reply: Reply<()>,
        },
        /// `Services.ListForwards`.
        ListForwards {
            /// The forwards.
            reply: Reply<ListForwardsReply>,
        },
    }
}

/// Requests of the [`Tasks`] protocol.
pub mod tasks {
    use p2pos_proto::tasks::v1::{
        HelperRef, HelperSpec, HelperStatus, ListHelpersReply, LogLine, LogsRequest,
        RemoveHelperReply,
    };
    use tokio::sync::mpsc;

    use crate::Reply;

    /// Who calls: the app whose scope the gateway resolved (empty: the admin).
    pub type CallerApp = String;

    /// How every helper token begins (`helper-` and 64 hex digits): the gateway asks the
    /// task-control service only about tokens that do.
    pub const HELPER_TOKEN_PREFIX: &str = "helper-";

    /// One request; the app ids it names have been checked against the caller's scope.
    #[derive(Debug)]
    pub enum Request {
        /// `Tasks.AddHelper`.
        Add {
            /// Who calls.
            caller_app: CallerApp,
            /// The spec.
            spec: HelperSpec,
            /// The helper's status.
            reply: Reply<HelperStatus>,
        },
        /// `Tasks.RemoveHelper`.
        Remove {
            /// Who calls.
            caller_app: CallerApp,
            /// The helper.
            helper: HelperRef,
            /// Done.
            reply: Reply<RemoveHelperReply>,
        },
        /// `Tasks.ListHelpers`: of `app_id` (empty: the caller's own, or all for the admin).
        List {
            /// Who calls.
            caller_app: CallerApp,
            /// Whose helpers.
            app_id: String,
            /// The helpers.
            reply: Reply<ListHelpersReply>,
        },
        /// `Tasks.GetHelper`, `StartHelper`, `StopHelper`, `RestartHelper` and
        /// `SignalHelper`: one operation on one helper, answered with its status.
        Helper {
            /// Who calls.
            caller_app: CallerApp,
            /// The helper.
            helper: HelperRef,
            /// What to do.
            op: HelperOp,
            /// The helper's status after it.
            reply: Reply<HelperStatus>,
        },
        /// The app id a running helper's token acts as (`<app>:<helper>`), for the gateway;
        /// only tokens that begin with [`HELPER_TOKEN_PREFIX`] are asked about.
        HelperToken {
            /// The token the caller presented.
            token: String,
            /// The helper's app id, or `None` for a token of no running helper.
            reply: Reply<Option<String>>,
        },
        /// Whether `app_id` is the app id of a helper that exists (`<owner>:<name>`, at every
        /// level a helper its owner has, or may start: its own spec, its instance of a spec the
        /// admin installed, or such a spec): an app may act as one of its helpers' app ids
        /// only then.
        HelperExists {
            /// The helper's app id.
            app_id: String,
            /// Whether it exists.
            reply: Reply<bool>,
        },
        /// `Tasks.Logs`: kept lines, then (when following) new ones; the stream ends when the
        /// helper's log is gone or, without `follow`, after the kept lines.
        Logs {
            /// Who calls.
            caller_app: CallerApp,
            /// What to read.
            request: LogsRequest,
            /// The lines.
            reply: Reply<mpsc::Receiver<LogLine>>,
        },
    }

    /// What to do with one helper.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum HelperOp {
        /// Its status.
        Get,
        /// Start it (an app's instance of an admin-installed spec included).
        Start,
        /// Stop it (its stop signal, then SIGKILL after its timeout).
        Stop,
        /// Stop it if it runs, then start it.
        Restart,
        /// Send it a signal, by name (`TERM`, `SIGHUP`, ...).
        Signal(String),
    }
}

/// Requests of the [`Apps`] protocol, and the data-plane handles it hands out.
pub mod apps {
    use bytes::Bytes;
    use p2pos_proto::app::v1::{
        IncomingCall, IncomingChannel, ListAppsReply, ReceivedMessage, Registered, SendReply,
    };
    use tokio::{
        io::{AsyncRead, AsyncWrite},
        sync::mpsc,
    };

    use crate::{
        Reply,
        ids::{AppId, PeerRef},
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
        /// The group it is in (its id); empty: none.
        pub group: String,
        /// The relay's circuit the channel crosses, when its peer was reached only through
        /// relays as it opened (the channel stays on it: its limits end the channel); `None`
        /// for a direct connection or a channel inside this node.
        pub circuit: Option<crate::network::Circuit>,
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
                .field("group", &self.group)
                .field("circuit", &self.circuit)
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
            app_id: AppId,
            /// Only channels in this group (its id) are announced to it; `None`: any.
            group: Option<String>,
            /// The session.
            reply: Reply<Session>,
        },
        /// Open a channel to the same app on `peer` (in a group, when one is given).
        OpenChannel {
            /// The app.
            app_id: AppId,
            /// The peer.
            peer: PeerRef,
            /// The group it is in (its id): the peer's node checks both ends are members.
            group: Option<String>,
            /// The channel, once the remote app accepted it.
            reply: Reply<ChannelStream>,
        },
        /// Accept an incoming channel announced on a session of `app_id`.
        AcceptChannel {
            /// The app.
            app_id: AppId,
            /// From the announcement.
            channel_id: u64,
            /// The channel.
            reply: Reply<ChannelStream>,
        },
        /// Store-and-forward one message.
        Send {
            /// The app.
            app_id: AppId,
            /// The peer.
            peer: PeerRef,
            /// At most [`crate::wire::MAX_PAYLOAD`] bytes.
            payload: Bytes,
            /// The app's idempotency key for this message (1 to
            /// [`crate::wire::MAX_IDEMPOTENCY_KEY`] bytes), if it gave one: a `Send` with a key
            /// that already names a message answers that message.
            idempotency_key: Option<Bytes>,
            /// The message's id and state, once it is durable here.
            reply: Reply<SendReply>,
        },
        /// Follow the app's inbox: messages, oldest first, each once; each stays in the inbox
        /// until it is acknowledged with [`Request::Ack`].
        Receive {
            /// The app.
            app_id: AppId,
            /// The messages.
            reply: Reply<mpsc::Receiver<ReceivedMessage>>,
        },
        /// Acknowledge every message of the app's inbox up to and including `inbox_id`: they
        /// are gone from the inbox, durably, when it is answered.
        Ack {
            /// The app.
            app_id: AppId,
            /// From [`ReceivedMessage::inbox_id`].
            inbox_id: u64,
            /// Done.
            reply: Reply<()>,
        },
        /// List apps: all of them, or just one.
        ListApps {
            /// Only this app, for an app-scoped caller.
            only: Option<String>,
            /// The apps.
            reply: Reply<ListAppsReply>,
        },
        /// Watch the app's sessions: answered with a receiver that completes (with `Ok` or
        /// `Err`) once the app has no live session left, or the service holding the sessions
        /// stops; `FAILED_PRECONDITION` if the app has no live session now.
        WatchSession {
            /// The app.
            app_id: AppId,
            /// Completes when the last session ends.
            reply: Reply<tokio::sync::oneshot::Receiver<()>>,
        },
    }
}
