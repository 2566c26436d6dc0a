//! A store damaged on disk: refused at open with its files left as found, and repaired.

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use super::*;

/// Opens the store in `dir`, waiting (up to 10 s) for sled's threads of an earlier handle in
/// this process to let go of its lock.
pub(super) fn reopen(dir: &Path) -> Result<Arc<SledStore>, StoreError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match SledStore::open(dir) {
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Every file under `dir` with its bytes, by relative path.
pub(super) fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).expect("inside");
                out.insert(
                    rel.to_string_lossy().into_owned(),
                    std::fs::read(&path).expect("read"),
                );
            }
        }
    }
    out
}

/// A store with 2,000 entries in each of two trees (queued messages, tokens), closed cleanly.
pub(super) fn filled(dir: &Path) {
    let store = reopen(dir).expect("open");
    for i in 0u32..2000 {
        store
            .insert(
                "outbox",
                &[&b"q"[..], &i.to_be_bytes()].concat(),
                &[7u8; 100],
            )
            .expect("insert");
        store
            .insert("tokens", &i.to_be_bytes(), &[9u8; 60])
            .expect("insert");
    }
    store.close().expect("close");
    assert!(
        store.insert("tokens", b"late", b"x").is_err(),
        "writes after close fail"
    );
}

#[test]
fn clean_stops_open_again_and_a_closed_store_counts_what_it_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    filled(dir.path());
    for _ in 0..3 {
        let store = reopen(dir.path()).expect("a clean store opens");
        assert_eq!(
            store.scan_prefix("tokens", b"", 5000).expect("scan").len(),
            2000
        );
        store.close().expect("close");
    }
}

#[test]
fn a_truncated_store_is_refused_left_as_found_and_repaired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join(DIR);
    filled(&store_dir);
    let id_before = {
        let store = reopen(&store_dir).expect("open");
        let id = store.next_id().expect("id");
        store.close().expect("close");
        id
    };
    let db = store_dir.join("db");
    let len = std::fs::metadata(&db).expect("db").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .expect("open db");
    file.set_len(len / 4).expect("truncate");
    drop(file);
    let damaged = files(&store_dir);

    let refused = reopen(&store_dir)
        .err()
        .expect("a damaged store is refused");
    assert!(matches!(refused, StoreError::Damaged { .. }), "{refused}");
    assert_eq!(
        files(&store_dir),
        damaged,
        "a refused store is left as found"
    );

    let done = repair(&store_dir).expect("repair");
    let moved = done.moved_to.clone().expect("moved aside");
    assert!(
        moved
            .file_name()
            .expect("name")
            .to_string_lossy()
            .starts_with("store.damaged-"),
        "{moved:?}"
    );
    assert_eq!(files(&moved), damaged, "the damaged store is kept as found");
    let before = &done.before.as_ref().expect("manifest").1;
    assert_eq!(before.trees["tokens"].entries, 2000);
    let recovered = done.recovered.trees.get("tokens").map_or(0, |t| t.entries);
    assert!(recovered < 2000 || done.recovered.trees.get("outbox").map_or(0, |t| t.entries) < 2000);

    let store = reopen(&store_dir).expect("the repaired store opens");
    assert_eq!(
        store.scan_prefix("tokens", b"", 5000).expect("scan").len() as u64,
        recovered
    );
    assert!(
        store.next_id().expect("id") > id_before,
        "ids stay unique across a repair"
    );
    store.close().expect("close");
    drop(store);
    let again = repair(&store_dir).expect("repair of a whole store");
    assert!(again.moved_to.is_none(), "a whole store is left alone");
}

#[test]
fn a_zeroed_page_is_damage_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join(DIR);
    filled(&store_dir);
    let db = store_dir.join("db");
    let mut bytes = std::fs::read(&db).expect("db");
    let len = bytes.len();
    bytes[len / 2..(len / 2 + 4096).min(len)].fill(0);
    std::fs::write(&db, &bytes).expect("write db");
    let damaged = files(&store_dir);
    match reopen(&store_dir) {
        Err(StoreError::Damaged { what, .. }) => assert!(!what.is_empty()),
        Err(other) => panic!("not taken for damage: {other}"),
        Ok(_) => panic!("a zeroed page went unnoticed"),
    }
    assert_eq!(
        files(&store_dir),
        damaged,
        "a refused store is left as found"
    );
    let done = repair(&store_dir).expect("repair");
    assert!(done.moved_to.is_some());
    assert!(reopen(&store_dir).is_ok(), "the repaired store opens");
}
