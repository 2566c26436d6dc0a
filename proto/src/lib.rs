//! The open spec of P2P OS: protobuf messages and gRPC services generated from `p2pos/**.proto`.
//!
//! # Layout
//! - [`node::v1`]: node info, shutdown, app tokens.
//! - [`overlay::v1`]: tickets, dialing, peers, ping, DHT look-ups.
//! - [`app::v1`]: app sessions, channels and store-and-forward messages.
//! - [`monitor::v1`]: status and event stream.
//! - [`service::v1`]: services apps provide to other apps, and port forwarding.
//! - [`tasks::v1`]: helper applications (plug-ins) the node starts and supervises.
//! - [`resources::v1`]: the machine's inventory and what the node and its helpers use.
//! - [`group::v1`]: groups with a signed member list.
//! - [`jobs::v1`]: WebAssembly jobs run on peers that lend.
//! - [`wire::v1`]: node-to-node frames of the `/p2pos/...` protocols.
//! - [`packed`]: frames packed into one `bytes` field (channel batches).
//!
//! The prose spec is `proto/SPEC.md`.
#![allow(missing_docs, unreachable_pub, clippy::all)]

pub mod packed;

/// `p2pos.node.v1`
pub mod node {
    pub mod v1 {
        tonic::include_proto!("p2pos.node.v1");
    }
}
/// `p2pos.overlay.v1`
pub mod overlay {
    pub mod v1 {
        tonic::include_proto!("p2pos.overlay.v1");
    }
}
/// `p2pos.app.v1`
pub mod app {
    pub mod v1 {
        tonic::include_proto!("p2pos.app.v1");
    }
}
/// `p2pos.monitor.v1`
pub mod monitor {
    pub mod v1 {
        tonic::include_proto!("p2pos.monitor.v1");
    }
}
/// `p2pos.tasks.v1`
pub mod tasks {
    pub mod v1 {
        tonic::include_proto!("p2pos.tasks.v1");
    }
}
/// `p2pos.service.v1`
pub mod service {
    pub mod v1 {
        tonic::include_proto!("p2pos.service.v1");
    }
}
/// `p2pos.group.v1`
pub mod group {
    pub mod v1 {
        tonic::include_proto!("p2pos.group.v1");
    }
}

/// `p2pos.resources.v1`
pub mod resources {
    pub mod v1 {
        tonic::include_proto!("p2pos.resources.v1");
    }
}
/// `p2pos.jobs.v1`
pub mod jobs {
    pub mod v1 {
        tonic::include_proto!("p2pos.jobs.v1");
    }
}
/// `p2pos.wire.v1`
pub mod wire {
    pub mod v1 {
        tonic::include_proto!("p2pos.wire.v1");
    }
}

/// Encoded `FileDescriptorSet` of the whole spec, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/p2pos_descriptor.bin"));

/// The API versions this build serves.
pub const API_VERSIONS: &[&str] = &[
    "p2pos.node.v1",
    "p2pos.overlay.v1",
    "p2pos.app.v1",
    "p2pos.monitor.v1",
    "p2pos.tasks.v1",
    "p2pos.service.v1",
    "p2pos.resources.v1",
    "p2pos.group.v1",
    "p2pos.jobs.v1",
];
