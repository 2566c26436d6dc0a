//! The store's checks and repair at their edges: interrupted repairs, unclean stops followed
//! by damage (checked on a copy, never changed), the node's own removals (never damage), and
//! clean stops after churn (no copy needed).

use std::path::Path;

use super::{
    damage_tests::{files, filled, reopen},
    salvage::{Step, repair_with},
    *,
};

/// Opens the store and lets it go without a clean stop (as kill -9 would, with every write
/// flushed): its manifest is the open's.
fn unclean(dir: &Path, f: impl FnOnce(&SledStore)) {
    let store = reopen(dir).expect("open");
    f(&store);
    store.flush().expect("flush");
    drop(store);
}

fn truncate(file: &Path, len: impl FnOnce(u64) -> u64) {
    let size = std::fs::metadata(file).expect("file").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("open")
        .set_len(len(size))
        .expect("truncate");
}

fn leftovers(data: &Path) -> Vec<String> {
    std::fs::read_dir(data)
        .expect("data dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("store.") && !n.starts_with("store.damaged-"))
        .collect()
}

#[test]
fn an_interrupted_repair_stops_the_node_and_the_next_repair_finishes_it() {
    for step in [Step::Built, Step::MovedAside] {
        let data = tempfile::tempdir().expect("tempdir");
        std::fs::write(data.path().join(crate::identity::KEY_FILE), b"key").expect("key");
        let dir = data.path().join(DIR);
        filled(&dir);
        truncate(&dir.join("db"), |n| n / 4);
        let damaged = files(&dir);

        let died = repair_with(&dir, &mut |at| {
            if at == step {
                Err(StoreError::Io("killed".to_owned()))
            } else {
                Ok(())
            }
        });
        assert!(died.is_err(), "{step:?}");
        let refused = preflight(data.path()).expect_err("a start after it is refused");
        assert!(matches!(refused, StoreError::Damaged { .. }), "{refused}");
        assert!(refused.to_string().contains("interrupted"), "{refused}");

        let done = repair(&dir).expect("the next repair finishes it");
        assert!(done.resumed, "{step:?}");
        let moved = done.moved_to.clone().expect("moved aside");
        assert_eq!(
            files(&moved),
            damaged,
            "{step:?}: the damaged store is kept as found"
        );
        assert!(
            leftovers(data.path()).is_empty(),
            "{:?}",
            leftovers(data.path())
        );
        preflight(data.path()).expect("the node starts again");
        let store = reopen(&dir).expect("the repaired store opens");
        assert_eq!(
            store.scan_prefix("tokens", b"", 5000).expect("scan").len() as u64,
            done.recovered.trees.get("tokens").map_or(0, |t| t.entries)
        );
        store.close().expect("close");
    }
}

#[test]
fn a_repair_killed_while_building_is_begun_again_and_the_store_was_never_touched() {
    let data = tempfile::tempdir().expect("tempdir");
    std::fs::write(data.path().join(crate::identity::KEY_FILE), b"key").expect("key");
    let dir = data.path().join(DIR);
    filled(&dir);
    truncate(&dir.join("db"), |n| n / 4);
    let damaged = files(&dir);
    // What a repair killed halfway through its copy leaves.
    std::fs::create_dir(data.path().join("store.salvage")).expect("salvage");
    std::fs::write(data.path().join("store.salvage/db"), b"half").expect("half");
    std::fs::create_dir(data.path().join("store.new")).expect("new");
    std::fs::write(data.path().join("store.repairing"), b"{\"swap\":null}").expect("marker");
    assert!(preflight(data.path()).is_err(), "a start is refused");
    assert_eq!(files(&dir), damaged, "the store itself was not touched");
    let done = repair(&dir).expect("repair");
    assert!(!done.resumed);
    assert_eq!(files(&done.moved_to.expect("moved")), damaged);
    assert!(
        leftovers(data.path()).is_empty(),
        "{:?}",
        leftovers(data.path())
    );
}

#[test]
fn a_missing_store_is_refused_when_there_is_an_identity_and_repair_makes_it_anew() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path().join(DIR);
    preflight(data.path()).expect("a first start");
    filled(&dir);
    std::fs::write(data.path().join(crate::identity::KEY_FILE), b"key").expect("key");
    std::fs::remove_dir_all(&dir).expect("lose the store");
    let refused = preflight(data.path()).expect_err("refused");
    assert!(refused.to_string().contains("missing"), "{refused}");
    let done = repair(&dir).expect("repair");
    assert!(done.moved_to.is_none());
    assert!(!done.unreadable.is_empty(), "the report says all was lost");
    preflight(data.path()).expect("starts again");
    assert!(reopen(&dir).is_ok());
}

#[test]
fn damage_after_an_unclean_stop_is_found_on_a_copy_and_the_store_left_as_found() {
    for damage in ["zeroed page", "emptied", "deleted"] {
        let dir = tempfile::tempdir().expect("tempdir");
        filled(dir.path());
        unclean(dir.path(), |_| {});
        let db = dir.path().join("db");
        match damage {
            "zeroed page" => {
                let mut bytes = std::fs::read(&db).expect("db");
                let len = bytes.len();
                bytes[len / 2..(len / 2 + 4096).min(len)].fill(0);
                std::fs::write(&db, &bytes).expect("write db");
            }
            "emptied" => truncate(&db, |_| 0),
            _ => std::fs::remove_file(&db).expect("delete db"),
        }
        let found = files(dir.path());
        match reopen(dir.path()) {
            Err(StoreError::Damaged { .. }) => {}
            Err(other) => panic!("{damage}: not taken for damage: {other}"),
            Ok(_) => panic!("{damage}: went unnoticed"),
        }
        assert_eq!(files(dir.path()), found, "{damage}: left as found");
    }
}

#[test]
fn the_nodes_own_removals_before_an_unclean_stop_are_not_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    filled(dir.path());
    unclean(dir.path(), |store| {
        // The outbox drains; most tokens are revoked, one by one and in batches.
        for i in 0u32..2000 {
            store
                .remove("outbox", &[&b"q"[..], &i.to_be_bytes()].concat())
                .expect("remove");
        }
        let ops = (0u32..1500)
            .map(|i| BatchOp::Remove(i.to_be_bytes().to_vec()))
            .collect();
        store.batch("tokens", ops).expect("batch");
        for i in 1500u32..1990 {
            store.remove("tokens", &i.to_be_bytes()).expect("remove");
        }
    });
    let store = reopen(dir.path()).expect("no damage: the node removed them");
    assert!(matches!(store.checked(), Checked::OnCopy(_)));
    assert_eq!(
        store.scan_prefix("tokens", b"", 5000).expect("scan").len(),
        10
    );
    assert!(
        store
            .scan_prefix("outbox", b"", 5000)
            .expect("scan")
            .is_empty()
    );
}

#[test]
fn a_big_loss_after_an_unclean_stop_is_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    filled(dir.path());
    // The manifest of that start says the trees held 2,000 entries each; what sled then
    // recovers holds far fewer (as after a lost tail of `db`): here, the store of a
    // run that removed them is put under the manifest of the run before.
    unclean(dir.path(), |_| {});
    let manifest = std::fs::read(dir.path().join(census::MANIFEST)).expect("manifest");
    unclean(dir.path(), |store| {
        for i in 0u32..1500 {
            store.remove("tokens", &i.to_be_bytes()).expect("remove");
        }
    });
    std::fs::write(dir.path().join(census::MANIFEST), manifest).expect("old manifest");
    match reopen(dir.path()) {
        Err(StoreError::Damaged { what, .. }) => assert!(what.contains("tokens"), "{what}"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a loss of 1,500 of 2,000 entries went unnoticed"),
    }
}

#[test]
fn a_clean_stop_after_churn_needs_no_copy_at_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    filled(dir.path());
    for round in 0u32..3 {
        let store = reopen(dir.path()).expect("open");
        assert!(
            matches!(store.checked(), Checked::Unchanged(_)),
            "round {round}: {:?}",
            std::mem::discriminant(store.checked())
        );
        for i in 0u32..20_000 {
            let key = (i % 500).to_be_bytes();
            if i % 3 == 0 {
                store.remove("churn", &key).expect("remove");
            } else {
                store
                    .insert("churn", &key, &[i as u8; 1000])
                    .expect("insert");
            }
        }
        store.close().expect("close");
    }
}

#[test]
fn reading_a_tree_that_does_not_exist_makes_none_and_a_closed_store_refuses_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    filled(dir.path());
    let store = reopen(dir.path()).expect("open");
    assert_eq!(store.get("nothing", b"k").expect("get"), None);
    assert!(
        store
            .scan_prefix("nothing", b"", 10)
            .expect("scan")
            .is_empty()
    );
    store.close().expect("close");
    assert!(store.get("later", b"k").is_err());
    assert!(store.scan_prefix("later", b"", 10).is_err());
    assert!(store.insert("later", b"k", b"v").is_err());
    drop(store);
    let store = reopen(dir.path()).expect("reopen: no tree appeared");
    let Checked::Unchanged(census) = store.checked() else {
        panic!("the files changed after close");
    };
    assert!(!census.trees.contains_key("nothing") && !census.trees.contains_key("later"));
}

#[test]
fn a_quiet_panic_is_an_error_and_nests() {
    let outer = census::quietly(|| {
        let inner = census::quietly(|| panic!("inner"));
        assert!(inner.expect_err("caught").contains("inner"));
        panic!("outer")
    });
    assert!(outer.expect_err("caught").contains("outer"));
}

#[test]
fn a_manifest_that_cannot_be_read_is_an_error_not_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    filled(dir.path());
    let manifest = dir.path().join(census::MANIFEST);
    std::fs::remove_file(&manifest).expect("rm");
    // Reading a directory fails as EACCES or EIO would (the tests may run as root).
    std::fs::create_dir(&manifest).expect("a directory in its place");
    match reopen(dir.path()) {
        Err(StoreError::Open { message, .. }) => {
            assert!(message.contains("cannot be read"), "{message}")
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("opened without its manifest"),
    }
}

#[test]
fn a_store_without_its_manifest_that_holds_nothing_is_damage_when_there_is_an_identity() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path().join(DIR);
    filled(&dir);
    std::fs::write(data.path().join(crate::identity::KEY_FILE), b"key").expect("key");
    std::fs::remove_file(dir.join(census::MANIFEST)).expect("lose the manifest");
    // A store from before manifests that holds entries opens (on a copy).
    assert!(matches!(check(&dir), Ok(Checked::OnCopy(_))));
    truncate(&dir.join("db"), |_| 0);
    let err = check(&dir).expect_err("emptied, no manifest, an identity");
    assert!(err.to_string().contains("holds nothing"), "{err}");
    std::fs::remove_file(dir.join("db")).expect("no db");
    let err = check(&dir).expect_err("no db, no manifest, an identity");
    assert!(err.to_string().contains("neither"), "{err}");
}

#[test]
fn a_garbled_marker_stops_the_repair_and_keeps_the_new_store() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path().join(DIR);
    filled(&dir);
    // A crash after the damaged store went aside: the new store is all there is.
    std::fs::rename(&dir, data.path().join("store.new")).expect("aside");
    std::fs::write(data.path().join("store.repairing"), b"{\"swap\":").expect("garbled");
    let err = repair(&dir).expect_err("garbled marker");
    assert!(err.to_string().contains("garbled"), "{err}");
    assert!(
        data.path().join("store.new/db").exists(),
        "the new store is kept"
    );
    // An empty marker (cut before its first byte) is not enough to remove it either.
    std::fs::write(data.path().join("store.repairing"), b"").expect("empty");
    let err = repair(&dir).expect_err("the store is gone");
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(
        data.path().join("store.new/db").exists(),
        "the new store is kept"
    );
}
