//! The connected [`Client`]: one gRPC channel to the gateway, handing out per-service clients
//! that present the token on every call.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use p2pos_proto::app::v1::apps_client::AppsClient;
use p2pos_proto::group::v1::groups_client::GroupsClient;
use p2pos_proto::jobs::v1::jobs_client::JobsClient;
use p2pos_proto::monitor::v1::monitor_client::MonitorClient;
use p2pos_proto::node::v1::node_client::NodeClient;
use p2pos_proto::overlay::v1::overlay_client::OverlayClient;
use p2pos_proto::resources::v1::resources_client::ResourcesClient;
use p2pos_proto::service::v1::services_client::ServicesClient;
use p2pos_proto::tasks::v1::tasks_client::TasksClient;
use tokio::net::UnixStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{Error, root_cause};
use crate::target::{Gateway, Target};
use crate::token_file::{TokenFile, bearer};

/// Largest gRPC message the clients encode or decode: 2 MiB (frames and payloads are at most
/// 1 MiB, plus framing).
pub const MAX_MESSAGE_SIZE: usize = 2 * 1024 * 1024;
/// The largest message of the jobs service (a job's module, input and files; a result's
/// outputs and files): the gateway's bound for `p2pos.jobs.v1`.
pub const MAX_JOB_MESSAGE_SIZE: usize = 40 << 20;

/// How long to wait for a TCP connection to the gateway.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The channel type of every per-service client: the transport channel plus [`Auth`].
pub type AuthChannel = InterceptedService<Channel, Auth>;

/// Adds `authorization: Bearer <token>` to every request, when there is a token: the one given,
/// or the one the node's token file holds at the time of the call.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    header: Option<MetadataValue<Ascii>>,
    file: Option<TokenFile>,
}

impl Auth {
    /// An interceptor presenting `token` (none: requests go out unchanged).
    pub fn new(token: Option<&str>) -> Result<Auth, Error> {
        let header = match token {
            Some(token) => Some(bearer(token).ok_or(Error::InvalidToken)?),
            None => None,
        };
        Ok(Auth { header, file: None })
    }

    /// The interceptor of `target`: its token, or else the token its token file holds at each
    /// call (the node writes a new one at every start).
    pub fn for_target(target: &Target) -> Result<Auth, Error> {
        let mut auth = Auth::new(target.token())?;
        if auth.header.is_none() {
            auth.file = target.token_file().map(|p| TokenFile::new(p.to_owned()));
        }
        Ok(auth)
    }
}

impl Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let header = match (&self.header, &self.file) {
            (Some(header), _) => Some(header.clone()),
            (None, Some(file)) => file.header(),
            (None, None) => None,
        };
        if let Some(header) = header {
            request.metadata_mut().insert("authorization", header);
        }
        Ok(request)
    }
}

/// A connection to the local node. Cheap to clone; clones share the underlying connection.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    auth: Auth,
}

impl Client {
    /// Connects to the target's gateway (Unix socket or TCP). The channel reconnects by itself
    /// if the node restarts later.
    pub async fn connect(target: &Target) -> Result<Client, Error> {
        let channel = match target.gateway() {
            Gateway::Unix(path) => connect_unix(path.clone()).await,
            Gateway::Tcp(uri) => connect_tcp(uri).await,
        }
        .map_err(|reason| Error::Unreachable {
            gateway: target.gateway().clone(),
            reason,
            hint: hint(target),
        })?;
        Ok(Client {
            channel,
            auth: Auth::for_target(target)?,
        })
    }

    /// Wraps an already connected channel (e.g. an in-memory one in tests).
    pub fn with_channel(channel: Channel, token: Option<&str>) -> Result<Client, Error> {
        Ok(Client {
            channel,
            auth: Auth::new(token)?,
        })
    }

    /// The connection with the token interceptor, for other gRPC clients on the same gateway
    /// (e.g. `grpc.health.v1.Health`: `HealthClient::new(client.channel())`).
    pub fn channel(&self) -> AuthChannel {
        InterceptedService::new(self.channel.clone(), self.auth.clone())
    }

    /// The `p2pos.node.v1.Node` service: identity, shutdown, app tokens.
    pub fn node(&self) -> NodeClient<AuthChannel> {
        NodeClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The `p2pos.overlay.v1.Overlay` service: tickets, dialing, peers, ping.
    pub fn overlay(&self) -> OverlayClient<AuthChannel> {
        OverlayClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The `p2pos.app.v1.Apps` service: sessions, channels, store-and-forward messages.
    pub fn apps(&self) -> AppsClient<AuthChannel> {
        AppsClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The `p2pos.tasks.v1.Tasks` service: helper applications (plug-ins).
    pub fn tasks(&self) -> TasksClient<AuthChannel> {
        TasksClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The `p2pos.service.v1.Services` service: services apps provide to other apps (register,
    /// find, call, reply, channels) and port forwarding. A provider's `Reply` with
    /// `RESOURCE_EXHAUSTED` means "declined, not acted on": the caller's node sends the same
    /// call to another provider, so answer it only for a call the app did not act on (see
    /// `ReplyRequest` in `service.proto`).
    pub fn services(&self) -> ServicesClient<AuthChannel> {
        ServicesClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The `p2pos.monitor.v1.Monitor` service: status and events.
    pub fn monitor(&self) -> MonitorClient<AuthChannel> {
        MonitorClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The `p2pos.group.v1.Groups` service: groups with a signed member list.
    pub fn groups(&self) -> GroupsClient<AuthChannel> {
        GroupsClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// The `p2pos.resources.v1.Resources` service: the machine's inventory and what the node
    /// and its helpers use.
    pub fn resources(&self) -> ResourcesClient<AuthChannel> {
        ResourcesClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// The `p2pos.jobs.v1.Jobs` service: WebAssembly jobs run on peers that lend (messages up
    /// to [`MAX_JOB_MESSAGE_SIZE`]).
    pub fn jobs(&self) -> JobsClient<AuthChannel> {
        JobsClient::with_interceptor(self.channel.clone(), self.auth.clone())
            .max_decoding_message_size(MAX_JOB_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_JOB_MESSAGE_SIZE)
    }
}

/// Connects over a Unix socket; the URI is a placeholder that the connector ignores.
async fn connect_unix(path: std::path::PathBuf) -> Result<Channel, String> {
    let endpoint = Endpoint::try_from("http://[::]:50051").map_err(|e| root_cause(&e))?;
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| root_cause(&e))
}

async fn connect_tcp(uri: &str) -> Result<Channel, String> {
    Endpoint::from_shared(uri.to_owned())
        .map_err(|e| root_cause(&e))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|e| root_cause(&e))
}

/// A suggestion for a failed connection, prefixed by a space.
fn hint(target: &Target) -> String {
    match (target.gateway(), target.data_dir()) {
        (Gateway::Unix(_), Some(dir)) => {
            format!(" (is p2posd running with --data-dir {}?)", dir.display())
        }
        _ => " (is p2posd running?)".to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn auth_adds_the_bearer_header() {
        let mut auth = Auth::new(Some("abc")).unwrap();
        let request = auth.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer abc"
        );
        let mut none = Auth::new(None).unwrap();
        let request = none.call(tonic::Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
    }

    #[tokio::test]
    async fn missing_socket_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::new(
            Gateway::Unix(dir.path().join("gateway.sock")),
            None,
            Some(dir.path().to_path_buf()),
        )
        .unwrap();
        let err = Client::connect(&target).await.unwrap_err().to_string();
        let expected = format!(
            "cannot reach the node at unix:{}: No such file or directory (is p2posd running with --data-dir {}?)",
            dir.path().join("gateway.sock").display(),
            dir.path().display()
        );
        assert_eq!(err, expected);
    }
}
