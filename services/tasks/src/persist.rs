//! What the service keeps in the node's store: helper specs (tree [`HELPERS_TREE`], key
//! `app \0 name`, value the protobuf `HelperSpec`) and the tokens of running helpers
//! ([`HELPER_TOKENS_TREE`], token → the app id the helper acts as).

use std::sync::Arc;

use p2pos_kernel::{
    Store,
    store::{BatchOp, HELPER_TOKENS_TREE, StoreError},
};
use p2pos_proto::tasks::v1::HelperSpec;
use prost::Message;
use tracing::warn;

use crate::{scope::Key, spec::Spec};

/// Store tree of the helper specs.
pub const HELPERS_TREE: &str = "helpers";
/// Keys read or removed at a time.
const SCAN_BATCH: usize = 1024;
/// Most specs read at start (well over the limits, so that none is silently lost).
const LOAD_LIMIT: usize = 4096;

/// The stored specs, in key order. A record that cannot be decoded or checked is skipped
/// with a warning (and left in the store).
pub(crate) fn load(store: &dyn Store) -> Result<Vec<Spec>, StoreError> {
    let pairs = store.scan_prefix(HELPERS_TREE, b"", LOAD_LIMIT)?;
    let mut specs = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        let shown = String::from_utf8_lossy(&key).replace('\0', "/");
        let spec = HelperSpec::decode(value.as_slice())
            .map_err(|e| e.to_string())
            .and_then(|spec| Spec::try_from(spec).map_err(|e| e.to_string()));
        match spec {
            Ok(spec) if Key::of(&spec).store_key() == key => specs.push(spec),
            Ok(_) => warn!(key = %shown, "stored helper spec under the wrong key; skipped"),
            Err(e) => warn!(key = %shown, "unreadable helper spec skipped: {e}"),
        }
    }
    Ok(specs)
}

/// Stores `spec` (not flushed).
pub(crate) fn save(store: &dyn Store, spec: &Spec) -> Result<(), StoreError> {
    let key = Key::of(spec).store_key();
    store.insert(HELPERS_TREE, &key, &spec.to_proto().encode_to_vec())
}

/// Removes the spec under `key` (not flushed).
pub(crate) fn remove(store: &dyn Store, key: &Key) -> Result<(), StoreError> {
    store.remove(HELPERS_TREE, &key.store_key())
}

/// Makes the writes so far durable, off the actor's thread.
pub(crate) async fn flush(store: Arc<dyn Store>) -> Result<(), StoreError> {
    tokio::task::spawn_blocking(move || store.flush())
        .await
        .map_err(|e| StoreError::Io(format!("flush task failed: {e}")))?
}

/// Forgets every helper token (no helper outlives the service).
pub(crate) fn clear_tokens(store: &dyn Store) -> Result<(), StoreError> {
    loop {
        let keys = store.scan_prefix(HELPER_TOKENS_TREE, b"", SCAN_BATCH)?;
        if keys.is_empty() {
            return Ok(());
        }
        let ops = keys.into_iter().map(|(k, _)| BatchOp::Remove(k)).collect();
        store.batch(HELPER_TOKENS_TREE, ops)?;
    }
}

/// Lets `token` act as `app_id` on the gateway.
pub(crate) fn add_token(store: &dyn Store, token: &str, app_id: &str) -> Result<(), StoreError> {
    store.insert(HELPER_TOKENS_TREE, token.as_bytes(), app_id.as_bytes())
}

/// Revokes `token`.
pub(crate) fn remove_token(store: &dyn Store, token: &str) {
    if let Err(e) = store.remove(HELPER_TOKENS_TREE, token.as_bytes()) {
        warn!("cannot revoke a helper token: {e}");
    }
}

impl Key {
    /// The key of `spec`.
    pub(crate) fn of(spec: &Spec) -> Key {
        Key {
            app: spec.app_id.clone(),
            name: spec.name.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use p2pos_kernel::store::SledStore;

    use super::*;

    #[test]
    fn specs_and_tokens_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let spec = Spec::try_from(HelperSpec {
            name: "voice".into(),
            app_id: "chat".into(),
            program: "p2p-voice".into(),
            args: vec!["--quiet".into()],
            ..HelperSpec::default()
        })
        .unwrap();
        let node = spec.for_app("");
        save(store.as_ref(), &spec).unwrap();
        save(store.as_ref(), &node).unwrap();
        store.insert(HELPERS_TREE, b"junk\0x", b"\xff\xff").unwrap();
        let loaded = load(store.as_ref()).unwrap();
        assert_eq!(loaded, vec![node.clone(), spec.clone()]);
        remove(store.as_ref(), &Key::of(&node)).unwrap();
        assert_eq!(load(store.as_ref()).unwrap(), vec![spec]);

        for i in 0..(SCAN_BATCH + 3) {
            add_token(store.as_ref(), &format!("helper-{i}"), "chat:voice").unwrap();
        }
        remove_token(store.as_ref(), "helper-0");
        assert_eq!(store.get(HELPER_TOKENS_TREE, b"helper-0").unwrap(), None);
        assert!(
            store
                .get(HELPER_TOKENS_TREE, b"helper-1")
                .unwrap()
                .is_some()
        );
        clear_tokens(store.as_ref()).unwrap();
        assert!(
            store
                .scan_prefix(HELPER_TOKENS_TREE, b"", 10)
                .unwrap()
                .is_empty()
        );
    }
}
