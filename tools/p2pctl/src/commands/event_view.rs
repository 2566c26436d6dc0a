//! How `p2pctl events` shows one monitor event: a line for people, a flat JSON object for
//! scripts (`{"at_ms": .., "type": "<snake_case kind>", ..the kind's fields}`).

use p2pos_proto::monitor::v1::event::Kind;
use p2pos_proto::monitor::v1::{
    ChannelClosed, ChannelOpened, ConnectionUpgraded, Event, HelperChanged, Lagged,
    MessageDelivered, MessageFailed, MessageWaiting, PeerConnected, PeerGone, RelayReserved,
    ServiceRestarted, ServiceStateChanged,
};
use serde_json::{Value, json};

use crate::output;

/// `<UTC time> <kind> <details>`, e.g.
/// `2024-06-15T12:34:56.789Z peer-connected 12D3KooW... via /ip4/10.0.0.2/tcp/4001`.
pub(crate) fn text(event: &Event) -> String {
    let details = match &event.kind {
        Some(Kind::PeerConnected(PeerConnected { peer_id, address })) => {
            format!("peer-connected {peer_id} via {address}")
        }
        Some(Kind::PeerGone(PeerGone { peer_id })) => format!("peer-gone {peer_id}"),
        Some(Kind::RelayReserved(RelayReserved { relay_peer_id })) => {
            format!("relay-reserved on {relay_peer_id}")
        }
        Some(Kind::ConnectionUpgraded(ConnectionUpgraded { peer_id, address })) => {
            format!("connection-upgraded {peer_id} direct via {address}")
        }
        Some(Kind::ChannelOpened(ChannelOpened {
            channel_id,
            peer_id,
            app_id,
            inbound,
        })) => {
            let direction = if *inbound { "inbound" } else { "outbound" };
            format!("channel-opened #{channel_id} {app_id} with {peer_id} ({direction})")
        }
        Some(Kind::ChannelClosed(ChannelClosed {
            channel_id,
            peer_id,
            app_id,
        })) => format!("channel-closed #{channel_id} {app_id} with {peer_id}"),
        Some(Kind::ServiceRestarted(ServiceRestarted {
            service,
            reason,
            restarts,
        })) => format!("service-restarted {service} (restart {restarts}): {reason}"),
        Some(Kind::ServiceState(ServiceStateChanged { service, state })) => {
            format!("service-state {service} {state}")
        }
        Some(Kind::MessageDelivered(MessageDelivered {
            inbound,
            peer_id,
            app_id,
            message_id,
        })) => {
            let direction = if *inbound { "from" } else { "to" };
            format!("message-delivered #{message_id} {app_id} {direction} {peer_id}")
        }
        Some(Kind::MessageFailed(MessageFailed {
            peer_id,
            app_id,
            message_id,
            reason,
        })) => format!("message-failed #{message_id} {app_id} to {peer_id}: {reason}"),
        Some(Kind::MessageWaiting(MessageWaiting {
            peer_id,
            app_id,
            message_id,
            reason,
        })) => format!("message-waiting #{message_id} {app_id} to {peer_id}: {reason}"),
        Some(Kind::Helper(HelperChanged {
            app_id,
            name,
            state,
            pid,
            restarts,
            reason,
        })) => {
            let owner = if app_id.is_empty() { "node" } else { app_id };
            let mut line = format!("helper {owner}/{name} {state}");
            if *pid != 0 {
                line.push_str(&format!(" pid {pid}"));
            }
            if *restarts != 0 {
                line.push_str(&format!(" restarts {restarts}"));
            }
            if !reason.is_empty() {
                line.push_str(&format!(": {reason}"));
            }
            line
        }
        Some(Kind::Lagged(Lagged { missed })) => format!("lagged: missed {missed} events"),
        None => "unknown".to_owned(),
    };
    format!("{} {details}", output::timestamp(event.at_ms))
}

/// The event as one flat JSON object with `at_ms` and `type`.
pub(crate) fn json(event: &Event) -> Value {
    let mut value = match &event.kind {
        Some(Kind::PeerConnected(PeerConnected { peer_id, address })) => {
            json!({ "type": "peer_connected", "peer_id": peer_id, "address": address })
        }
        Some(Kind::PeerGone(PeerGone { peer_id })) => {
            json!({ "type": "peer_gone", "peer_id": peer_id })
        }
        Some(Kind::RelayReserved(RelayReserved { relay_peer_id })) => {
            json!({ "type": "relay_reserved", "relay_peer_id": relay_peer_id })
        }
        Some(Kind::ConnectionUpgraded(ConnectionUpgraded { peer_id, address })) => {
            json!({ "type": "connection_upgraded", "peer_id": peer_id, "address": address })
        }
        Some(Kind::ChannelOpened(ChannelOpened {
            channel_id,
            peer_id,
            app_id,
            inbound,
        })) => json!({
            "type": "channel_opened",
            "channel_id": channel_id,
            "peer_id": peer_id,
            "app_id": app_id,
            "inbound": inbound,
        }),
        Some(Kind::ChannelClosed(ChannelClosed {
            channel_id,
            peer_id,
            app_id,
        })) => json!({
            "type": "channel_closed",
            "channel_id": channel_id,
            "peer_id": peer_id,
            "app_id": app_id,
        }),
        Some(Kind::ServiceRestarted(ServiceRestarted {
            service,
            reason,
            restarts,
        })) => json!({
            "type": "service_restarted",
            "service": service,
            "reason": reason,
            "restarts": restarts,
        }),
        Some(Kind::ServiceState(ServiceStateChanged { service, state })) => {
            json!({ "type": "service_state", "service": service, "state": state })
        }
        Some(Kind::MessageDelivered(MessageDelivered {
            inbound,
            peer_id,
            app_id,
            message_id,
        })) => json!({
            "type": "message_delivered",
            "inbound": inbound,
            "peer_id": peer_id,
            "app_id": app_id,
            "message_id": message_id,
        }),
        Some(Kind::MessageFailed(MessageFailed {
            peer_id,
            app_id,
            message_id,
            reason,
        })) => json!({
            "type": "message_failed",
            "peer_id": peer_id,
            "app_id": app_id,
            "message_id": message_id,
            "reason": reason,
        }),
        Some(Kind::MessageWaiting(MessageWaiting {
            peer_id,
            app_id,
            message_id,
            reason,
        })) => json!({
            "type": "message_waiting",
            "peer_id": peer_id,
            "app_id": app_id,
            "message_id": message_id,
            "reason": reason,
        }),
        Some(Kind::Helper(HelperChanged {
            app_id,
            name,
            state,
            pid,
            restarts,
            reason,
        })) => json!({
            "type": "helper",
            "app_id": app_id,
            "name": name,
            "state": state,
            "pid": pid,
            "restarts": restarts,
            "reason": reason,
        }),
        Some(Kind::Lagged(Lagged { missed })) => json!({ "type": "lagged", "missed": missed }),
        None => json!({ "type": "unknown" }),
    };
    value["at_ms"] = json!(event.at_ms);
    value
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn event(kind: Kind) -> Event {
        Event {
            at_ms: 1_718_454_896_789,
            kind: Some(kind),
        }
    }

    #[test]
    fn peer_connected_text_and_json() {
        let e = event(Kind::PeerConnected(PeerConnected {
            peer_id: "12D3KooWx".into(),
            address: "/ip4/10.0.0.2/tcp/4001".into(),
        }));
        assert_eq!(
            text(&e),
            "2024-06-15T12:34:56.789Z peer-connected 12D3KooWx via /ip4/10.0.0.2/tcp/4001"
        );
        assert_eq!(
            json(&e),
            json!({
                "at_ms": 1_718_454_896_789u64,
                "type": "peer_connected",
                "peer_id": "12D3KooWx",
                "address": "/ip4/10.0.0.2/tcp/4001",
            })
        );
    }

    #[test]
    fn channel_and_message_events() {
        let opened = event(Kind::ChannelOpened(ChannelOpened {
            channel_id: 3,
            peer_id: "P".into(),
            app_id: "chat".into(),
            inbound: true,
        }));
        assert!(text(&opened).ends_with("channel-opened #3 chat with P (inbound)"));
        assert_eq!(json(&opened)["type"], "channel_opened");
        let delivered = event(Kind::MessageDelivered(MessageDelivered {
            inbound: false,
            peer_id: "P".into(),
            app_id: "chat".into(),
            message_id: 9,
        }));
        assert!(text(&delivered).ends_with("message-delivered #9 chat to P"));
        let none = Event {
            at_ms: 0,
            kind: None,
        };
        assert_eq!(json(&none), json!({ "type": "unknown", "at_ms": 0 }));
    }
}
