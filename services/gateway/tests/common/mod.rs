//! What the gateway's in-process tests share: a real kernel (temporary data directory) running
//! the gateway beside one stand-in service actor, and clients on the gateway's unix socket.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use actix::prelude::*;
use p2pos_client::{Client, Gateway, Target};
use p2pos_kernel::{
    Call, ChildHandle, ChildSpec, Config, DeathGuard, InjectPanic, Kernel, Protocol, RestartType,
    ServiceContext, StopService, Uses,
};
use p2pos_proto::node::v1::{CreateAppTokenRequest, GetInfoRequest};

pub(crate) const T: Duration = Duration::from_secs(30);

pub(crate) struct Node {
    /// The kernel's context. `gateway.rs` drives the kernel through it; `services.rs` only
    /// holds it.
    #[allow(dead_code)]
    pub(crate) ctx: ServiceContext,
    dir: tempfile::TempDir,
}

impl Node {
    /// Boots a kernel with the gateway and a stand-in service: the actor `make` builds, started
    /// as child `name` and registered under that name as the route for protocol `P`.
    // Each test file boots one kind of stand-in.
    #[allow(dead_code)]
    pub(crate) async fn boot<P, A>(
        name: &'static str,
        make: impl Fn(DeathGuard) -> A + 'static,
    ) -> Node
    where
        P: Protocol,
        A: Actor<Context = Context<A>>
            + Handler<Call<P>>
            + Handler<StopService>
            + Handler<InjectPanic>,
    {
        let provides: &'static [&'static str] = Box::leak(Box::new([P::NAME]));
        Node::boot_routes(name, provides, make, |registry, addr: Addr<A>| {
            registry.register::<P>(addr.recipient())
        })
        .await
    }

    /// [`Node::boot`] with a stand-in that answers two protocols, `P` and `Q`.
    #[allow(dead_code)]
    pub(crate) async fn boot_two<P, Q, A>(
        name: &'static str,
        make: impl Fn(DeathGuard) -> A + 'static,
    ) -> Node
    where
        P: Protocol,
        Q: Protocol,
        A: Actor<Context = Context<A>>
            + Handler<Call<P>>
            + Handler<Call<Q>>
            + Handler<StopService>
            + Handler<InjectPanic>,
    {
        let provides: &'static [&'static str] = Box::leak(Box::new([P::NAME, Q::NAME]));
        Node::boot_routes(name, provides, make, |registry, addr: Addr<A>| {
            registry.register::<P>(addr.clone().recipient())?;
            registry.register::<Q>(addr.recipient())
        })
        .await
    }

    /// Boots a kernel with the gateway and a stand-in `make` builds, started as child `name`,
    /// providing the protocols named in `provides`, whose routes `register` sets.
    #[allow(dead_code)]
    pub(crate) async fn boot_routes<A>(
        name: &'static str,
        provides: &'static [&'static str],
        make: impl Fn(DeathGuard) -> A + 'static,
        register: impl Fn(&p2pos_kernel::Registry, Addr<A>) -> Result<(), p2pos_kernel::ServiceError>
        + 'static,
    ) -> Node
    where
        A: Actor<Context = Context<A>> + Handler<StopService> + Handler<InjectPanic>,
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            data_dir: dir.path().join("node"),
            ..Config::default()
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let slot = Arc::new(Mutex::new(Some(tx)));
        let stand_in = ChildSpec {
            name,
            restart: RestartType::Temporary,
            uses: Uses {
                provides,
                ..Uses::default()
            },
            start: Box::new(move |ctx, guard| {
                let registry = ctx.registry.clone();
                if let Some(tx) = slot.lock().expect("lock").take() {
                    let _ = tx.send(ctx);
                }
                let addr = make(guard).start();
                register(&registry, addr.clone()).map_err(|e| e.to_string())?;
                Ok(ChildHandle {
                    stop: addr.clone().recipient(),
                    panic: addr.recipient(),
                })
            }),
        };
        let children = vec![
            stand_in,
            p2pos_gateway::child_spec(p2pos_gateway::Config::default()),
        ];
        Kernel::boot(config, children).expect("boot");
        let ctx = tokio::time::timeout(T, rx)
            .await
            .expect("kernel started")
            .expect("context");
        Node { ctx, dir }
    }

    /// A client presenting `token` (none: the admin token of the node's `gateway.token`).
    pub(crate) async fn client(&self, token: Option<&str>) -> Client {
        let data_dir = self.dir.path().join("node");
        let socket = data_dir.join(p2pos_gateway::SOCKET_FILE);
        let target = Target::new(
            Gateway::Unix(socket),
            token.map(str::to_owned),
            Some(data_dir),
        )
        .expect("target");
        eventually("the gateway to answer", || async {
            let client = Client::connect(&target).await.ok()?;
            client.node().get_info(GetInfoRequest {}).await.ok()?;
            Some(client)
        })
        .await
    }

    /// A client scoped to app `chat`, and the admin.
    pub(crate) async fn chat_and_admin(&self) -> (Client, Client) {
        let admin = self.client(None).await;
        let token = admin
            .node()
            .create_app_token(CreateAppTokenRequest {
                app_id: "chat".into(),
                ttl_secs: 0,
            })
            .await
            .expect("app token")
            .into_inner()
            .token;
        (self.client(Some(&token)).await, admin)
    }
}

/// Polls `check` until it answers `Some`, failing after [`T`].
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + T;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
