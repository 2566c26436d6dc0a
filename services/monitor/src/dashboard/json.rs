//! Protobuf messages as JSON, one mapping for all: the canonical proto3 JSON mapping, read from
//! the spec's own descriptors (`p2pos_proto::FILE_DESCRIPTOR_SET`) with `prost-reflect`, so the
//! dashboard's JSON follows the `.proto` files without a hand-kept copy of each message.
//!
//! Options within the mapping: field names as in the `.proto` files (`peer_id`, which the
//! mapping allows printers to use), fields at their default value included (so a page need
//! not know the defaults), enums by name, 64-bit integers as decimal strings (as canonical).

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

/// The spec's messages; `None` only if the build's own descriptors do not decode.
static POOL: LazyLock<Option<DescriptorPool>> =
    LazyLock::new(|| DescriptorPool::decode(p2pos_proto::FILE_DESCRIPTOR_SET).ok());

const OPTIONS: SerializeOptions = SerializeOptions::new()
    .use_proto_field_name(true)
    .skip_default_fields(false);

/// `message`, whose full protobuf name is `name` (`p2pos.monitor.v1.NodeStatus`), as JSON.
pub(crate) fn to_json<M: prost::Message>(message: &M, name: &str) -> Result<Value, String> {
    let pool = POOL
        .as_ref()
        .ok_or("the spec's descriptors do not decode")?;
    let descriptor = pool
        .get_message_by_name(name)
        .ok_or_else(|| format!("no message {name} in the spec"))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .map_err(|e| format!("{name}: {e}"))?;
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &OPTIONS)
        .map_err(|e| format!("{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use p2pos_proto::{
        monitor::v1::{Event, NodeStatus, PeerConnected, event},
        overlay::v1::PeerInfo,
    };

    use super::*;

    #[test]
    fn messages_map_to_canonical_json_with_proto_names() {
        let status = NodeStatus {
            peer_id: "12D3KooW".into(),
            uptime_secs: 7,
            peers: vec![PeerInfo {
                peer_id: "12D3KooX".into(),
                rtt_us: 1500,
                direct: true,
                ..PeerInfo::default()
            }],
            ..NodeStatus::default()
        };
        let json = to_json(&status, "p2pos.monitor.v1.NodeStatus").expect("json");
        assert_eq!(json["peer_id"], "12D3KooW");
        assert_eq!(json["uptime_secs"], "7", "64-bit integers as strings");
        assert_eq!(json["peers"][0]["rtt_us"], "1500");
        assert_eq!(json["peers"][0]["direct"], true);
        assert_eq!(json["reachability"], "", "defaults are included");
        assert_eq!(json["relays"], serde_json::json!([]));

        let event = Event {
            at_ms: 5,
            kind: Some(event::Kind::PeerConnected(PeerConnected {
                peer_id: "p".into(),
                address: "/ip4/127.0.0.1".into(),
            })),
        };
        let json = to_json(&event, "p2pos.monitor.v1.Event").expect("json");
        assert_eq!(json["peer_connected"]["peer_id"], "p");
        assert!(json.get("lagged").is_none(), "only the oneof's set field");
    }

    #[test]
    fn every_name_the_dashboard_uses_is_in_the_spec() {
        let pool = POOL.as_ref().expect("descriptors");
        for name in super::super::api::MESSAGES {
            assert!(pool.get_message_by_name(name).is_some(), "{name}");
        }
    }
}
