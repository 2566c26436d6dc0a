//! What the service keeps in the node's store: helper specs (tree [`HELPERS_TREE`], key
//! `app \0 name`, value the protobuf `HelperSpec`). The tokens of running helpers live only in
//! the service's memory: no helper outlives it.

use std::sync::Arc;

use p2pos_kernel::{Store, store::StoreError};
use p2pos_proto::tasks::v1::HelperSpec;
use prost::Message;
use tracing::warn;

use crate::{scope::Key, spec::Spec};

/// Store tree of the helper specs.
pub const HELPERS_TREE: &str = "helpers";
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
    fn specs_round_trip() {
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
    }
}
