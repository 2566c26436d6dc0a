//! The overlay's configuration: the `[overlay]` table of `p2posd.toml`.

use serde::{Deserialize, Serialize};

/// Limits of the app layer. Every field has a default that just works.
///
/// The inbox quotas count what this node holds for its apps and has not yet removed (unread,
/// or acknowledged and still owed to an open `Receive` stream), and what is being stored. A
/// message that would take a holder over a quota is refused (nothing is lost: its sender keeps
/// it and tries again later), unless the holder holds nothing: one message of any allowed size
/// always fits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Most channels open at once, in either direction, waiting ones included. Default: 1024.
    pub max_channels: u32,
    /// Most inbound channels from one remote peer open at once, waiting ones included (port
    /// forwarding's tunnels are channels too); past it the peer is answered `BUSY`. A peer's
    /// first channel is taken even when other peers hold all of `max_channels`. Default: 64.
    pub max_channels_per_peer: u32,
    /// Most outbound channel opens in progress at once (each waits for its peer to be reached
    /// and to accept); past it an open is refused at once. Default: 32.
    pub max_opens: u32,
    /// Most messages one app's inbox holds, from all senders together; past it senders are told
    /// to retry that app later. Default: 10,000.
    pub max_inbox_messages: u64,
    /// Most payload bytes one app's inbox holds, from all senders together. Default: 256 MiB.
    pub max_inbox_bytes: u64,
    /// Most messages held from one sending peer, all apps together; past it the peer is told
    /// to retry later (every app). Default: 2,000.
    pub max_inbox_messages_per_peer: u64,
    /// Most payload bytes held from one sending peer, all apps together. Default: 64 MiB.
    pub max_inbox_bytes_per_peer: u64,
    /// Most messages held from one sending peer for one app; past it the peer is told to retry
    /// that app later, and its messages to other apps still flow. Below
    /// `max_inbox_messages_per_peer`, so that one app that does not read never holds back the
    /// others. Default: 1,000.
    pub max_inbox_messages_per_peer_app: u64,
    /// Most payload bytes held from one sending peer for one app; below
    /// `max_inbox_bytes_per_peer`. Default: 32 MiB.
    pub max_inbox_bytes_per_peer_app: u64,
    /// Most messages held, all senders together, for app ids not registered here (a sender
    /// cannot tell them from registered ones: they are taken alike, within the same quotas, and
    /// kept for the app should it register); past it the oldest of them is dropped. Default:
    /// 1,000.
    pub max_unclaimed_messages: u64,
    /// Most payload bytes held for app ids not registered here, all together. Default: 16 MiB.
    pub max_unclaimed_bytes: u64,
    /// How long, in seconds, a message for an app id not registered here is kept. Default: 7
    /// days.
    pub unclaimed_ttl_secs: u64,
    /// How long, in seconds, what a sender's messages left to tell repeats from new messages
    /// (one sequence number per sender store and app) is kept after its last use, at most.
    /// Default: 30 days.
    pub dedupe_ttl_secs: u64,
    /// How long, in seconds, a message waits in the outbox for a peer this node has never
    /// delivered a message to (a peer id nobody here has seen, say) before it is dropped and
    /// reported (`MessageFailed`). Messages to a peer reached once wait for as long as it
    /// takes. Default: 7 days.
    pub unreached_message_ttl_secs: u64,
    /// How long, in seconds, an idempotency key of `Send` is kept after the `Send` that gave
    /// it: a retry with the key within this window answers the message stored the first time.
    /// Default: 24 h.
    pub send_key_ttl_secs: u64,
    /// Most idempotency keys kept for one app and its helpers together; a `Send` with a new key
    /// past it is refused (`RESOURCE_EXHAUSTED`), no kept key is dropped early. Default:
    /// 100,000.
    pub max_send_keys_per_app: u64,
    /// Most idempotency keys kept in all. Default: 1,000,000.
    pub max_send_keys: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_channels: 1024,
            max_channels_per_peer: 64,
            max_opens: 32,
            max_inbox_messages: 10_000,
            max_inbox_bytes: 256 << 20,
            max_inbox_messages_per_peer: 2_000,
            max_inbox_bytes_per_peer: 64 << 20,
            max_inbox_messages_per_peer_app: 1_000,
            max_inbox_bytes_per_peer_app: 32 << 20,
            max_unclaimed_messages: 1_000,
            max_unclaimed_bytes: 16 << 20,
            unclaimed_ttl_secs: 7 * 24 * 3600,
            dedupe_ttl_secs: 30 * 24 * 3600,
            unreached_message_ttl_secs: 7 * 24 * 3600,
            send_key_ttl_secs: 24 * 3600,
            max_send_keys_per_app: 100_000,
            max_send_keys: 1_000_000,
        }
    }
}

/// The shortest `send_key_ttl_secs` (1 h).
const MIN_SEND_KEY_TTL_SECS: u64 = 3_600;

impl Config {
    /// Checks what the types alone do not.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_inbox_messages", self.max_inbox_messages),
            ("max_inbox_bytes", self.max_inbox_bytes),
            (
                "max_inbox_messages_per_peer",
                self.max_inbox_messages_per_peer,
            ),
            ("max_inbox_bytes_per_peer", self.max_inbox_bytes_per_peer),
            (
                "max_inbox_messages_per_peer_app",
                self.max_inbox_messages_per_peer_app,
            ),
            (
                "max_inbox_bytes_per_peer_app",
                self.max_inbox_bytes_per_peer_app,
            ),
            ("max_unclaimed_messages", self.max_unclaimed_messages),
            ("max_unclaimed_bytes", self.max_unclaimed_bytes),
            ("unclaimed_ttl_secs", self.unclaimed_ttl_secs),
            ("dedupe_ttl_secs", self.dedupe_ttl_secs),
            (
                "unreached_message_ttl_secs",
                self.unreached_message_ttl_secs,
            ),
            ("send_key_ttl_secs", self.send_key_ttl_secs),
            ("max_send_keys_per_app", self.max_send_keys_per_app),
            ("max_send_keys", self.max_send_keys),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{name} must be > 0"));
        }
        if self.send_key_ttl_secs < MIN_SEND_KEY_TTL_SECS {
            return Err(format!(
                "send_key_ttl_secs ({}) must be at least {MIN_SEND_KEY_TTL_SECS}: apps retry a \
                 lost Send with its key for as long as a node takes to come back",
                self.send_key_ttl_secs
            ));
        }
        if self.max_inbox_messages_per_peer_app >= self.max_inbox_messages_per_peer {
            return Err(format!(
                "max_inbox_messages_per_peer_app ({}) must be below max_inbox_messages_per_peer \
                 ({}), so that one app that does not read cannot hold back the others",
                self.max_inbox_messages_per_peer_app, self.max_inbox_messages_per_peer
            ));
        }
        if self.max_inbox_bytes_per_peer_app >= self.max_inbox_bytes_per_peer {
            return Err(format!(
                "max_inbox_bytes_per_peer_app ({}) must be below max_inbox_bytes_per_peer ({}), \
                 so that one app that does not read cannot hold back the others",
                self.max_inbox_bytes_per_peer_app, self.max_inbox_bytes_per_peer
            ));
        }
        if self.max_channels_per_peer == 0 {
            return Err("max_channels_per_peer must be > 0".into());
        }
        if self.max_opens == 0 || self.max_opens > 4096 {
            return Err("max_opens must be 1 to 4096".into());
        }
        Ok(())
    }

    /// The inbox's quotas.
    pub(crate) fn quotas(&self) -> crate::mailbox::Quotas {
        use crate::mailbox::Usage;
        let quota = |messages, bytes| Usage { messages, bytes };
        crate::mailbox::Quotas {
            app: quota(self.max_inbox_messages, self.max_inbox_bytes),
            peer: quota(
                self.max_inbox_messages_per_peer,
                self.max_inbox_bytes_per_peer,
            ),
            peer_app: quota(
                self.max_inbox_messages_per_peer_app,
                self.max_inbox_bytes_per_peer_app,
            ),
            unclaimed: quota(self.max_unclaimed_messages, self.max_unclaimed_bytes),
            unclaimed_ttl_ms: self.unclaimed_ttl_secs.saturating_mul(1000),
            dedupe_ttl_ms: self.dedupe_ttl_secs.saturating_mul(1000),
            send_keys: crate::mailbox::KeyLimits {
                ttl_ms: self.send_key_ttl_secs.saturating_mul(1000),
                per_app: self.max_send_keys_per_app,
                total: self.max_send_keys,
            },
        }
    }
}
