//! The service registry, `p2pos.service.v1`, a part of the overlay with an actor of its own
//! ([`actor::ServiceRegistry`]): services that apps provide (port forwarding among them, as
//! app `_node:forward`), found by name on this node and through the DHT, used by unary calls.
//! Channels to services are opened by the sessions part (`service_channels`), which reads
//! who provides what here from the registry's published [`state::Providers`].
//!
//! A registration belongs to an app with a live session (the sessions part's
//! `SessionDirectory` says which): it lasts until `Unregister` or the app's last session ends
//! (the sessions part sends `AppGone`). While a service is registered here, the network
//! provides its DHT key (the registry sets its announcer's keys).
//!
//! - `actor`: the registry's actor, its life with the overlay instance, and the messages the
//!   sessions part sends it.
//! - `protocol`: the protocol's one `match`.
//! - `state`: what the registry keeps, and the names and limits its parts share.
//! - `provide`: registering, unregistering and listing the services provided here.
//! - `names`: service names, descriptions and payloads as the registry takes them.
//! - `find`: `FindService`: this node's provider, then remote ones, in order.
//! - `tries`: the remote providers a call or channel tries, in order, with the filters it
//!   gives, and how each fared.
//! - `call`: what a call is on both sides: the protocol, its limits, codes.
//! - `calls`: the calling side of `Call`: local delivery or `/p2pos/call/2`.
//! - `slots`: the calls in flight to each peer, bounded.
//! - `answers`: the providing side: calls announced to a session until answered with `Reply`
//!   or expired, and the server of `/p2pos/call/2` (withdrawal notices from providers too).
//! - `trust`: publisher keys on the calling side: providers' certificates, asked for and
//!   checked before a provider sees a request that pins keys (its node checks them again).
//! - `withdraw`: the peers that called each service provided here recently, told when it
//!   stops.
//!
//! No part imports another that imports it back: `call` imports no other part.

pub(crate) mod actor;
mod answers;
mod call;
pub(crate) mod calls;
pub(crate) mod find;
pub(crate) mod names;
mod protocol;
mod provide;
mod slots;
pub(crate) mod state;
pub(crate) mod tries;
pub(crate) mod trust;
mod withdraw;

pub(crate) use answers::{CALL_STREAM_IDLE, refuse_call, serve_call};
pub(crate) use call::CALL_PROTOCOL;
pub(crate) use call::MAX_CALL_FRAME;

#[cfg(test)]
mod tests {
    use super::state::service_key;

    #[test]
    fn service_keys_are_namespaced() {
        assert_eq!(service_key("translate/1"), "/p2pos/service/translate/1");
        assert!(p2pos_protocols::network::check_key(&service_key("translate/1")).is_ok());
    }
}
