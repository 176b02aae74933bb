//! A kill in the middle of GC's removal of an unpacked image (issue 13, item 1): the test
//! re-runs itself as a child process with `COVE_FAULT=gc.image_removal`, which aborts after
//! the first of the image's files is deleted. Whatever that leaves behind must never be
//! taken for the image: neither by a store opened before the kill (the same image imported
//! again "before the restart") nor by one opened after it.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use cove_image::content::sha256;
use cove_image::oci::OCI_MANIFEST;
use cove_image::{ImageStore, RegistryConfig};
use cove_types::Digest;
use serde_json::json;

const DISK: u64 = 3 << 30;
/// Set in the child: the data directory whose store it garbage-collects.
const CHILD_DIR: &str = "COVE_TEST_GC_CRASH_DIR";
const TOP_DIRS: usize = 40;
const FILES_PER_DIR: usize = 5;
const TOP_FILES: usize = 40;

/// A layer of `TOP_DIRS` directories with `FILES_PER_DIR` files each, and `TOP_FILES` files.
fn many_files_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: String, dir: bool| {
        let mut h = tar::Header::new_gnu();
        let body = path.as_bytes().to_vec();
        h.set_entry_type(if dir { tar::EntryType::Directory } else { tar::EntryType::Regular });
        h.set_mode(if dir { 0o755 } else { 0o644 });
        h.set_size(if dir { 0 } else { body.len() as u64 });
        let data: &[u8] = if dir { &[] } else { &body };
        b.append_data(&mut h, &path, data).unwrap();
    };
    for d in 0..TOP_DIRS {
        add(format!("d{d}"), true);
        for f in 0..FILES_PER_DIR {
            add(format!("d{d}/f{f}"), false);
        }
    }
    for f in 0..TOP_FILES {
        add(format!("top{f}"), false);
    }
    b.into_inner().unwrap()
}

/// Stores the one-layer image (an uncompressed tar layer); returns its manifest digest.
fn store_image(store: &ImageStore) -> Digest {
    let cs = store.content();
    let layer = many_files_layer();
    let layer_digest = sha256(&layer);
    cs.put(&layer_digest, &layer).unwrap();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer_digest.to_string()]},
    }))
    .unwrap();
    let config_digest = sha256(&config);
    cs.put(&config_digest, &config).unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest.to_string(), "size": layer.len()}],
    }))
    .unwrap();
    let d = sha256(&manifest);
    cs.put(&d, &manifest).unwrap();
    d
}

/// Files and directories under `dir`, recursively.
fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| 1 + if e.file_type().unwrap().is_dir() { count_entries(&e.path()) } else { 0 })
        .sum()
}

const EXPECTED: usize = TOP_DIRS * (1 + FILES_PER_DIR) + TOP_FILES;

/// GC with nothing kept, in a child process that `COVE_FAULT` aborts mid-removal.
fn gc_in_a_child_killed_mid_removal(dir: &Path) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["a_kill_during_image_removal_never_leaves_a_partial_tree_that_looks_complete", "--exact"])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env("COVE_FAULT", "gc.image_removal")
        .status()
        .unwrap();
    assert!(!status.success(), "the child must die at the fault point: {status:?}");
}

#[tokio::test]
async fn a_kill_during_image_removal_never_leaves_a_partial_tree_that_looks_complete() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        // The child: the server whose GC is killed. Keep the blobs so the image can be imported again.
        let store = ImageStore::open(Path::new(&dir), RegistryConfig::default()).unwrap();
        let blobs: HashSet<Digest> = store.content().list().into_iter().collect();
        store.gc(|| async { Some((HashSet::new(), blobs.clone())) }).await;
        unreachable!("COVE_FAULT=gc.image_removal aborts the removal");
    }
    let dir = tempfile::tempdir().unwrap();
    let before = ImageStore::open(dir.path(), RegistryConfig::default()).unwrap();
    let manifest = store_image(&before);
    let rec = before.import(&manifest, DISK).await.unwrap().record;
    assert_eq!(count_entries(&rec.rootfs), EXPECTED);

    gc_in_a_child_killed_mid_removal(dir.path());

    // What the kill left is not the image, and some of its files really are gone.
    assert!(before.image(&manifest).is_none(), "a tree whose removal began is invisible");
    let trash: Vec<_> = std::fs::read_dir(dir.path().join("trash"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(manifest.hex()))
        .collect();
    assert_eq!(trash.len(), 1, "the partly deleted tree is in the trash");
    let left = count_entries(&trash[0].path().join("rootfs"));
    assert!(left < EXPECTED && left > 0, "the kill came mid-removal: {left} of {EXPECTED} left");

    // The same image again, before the restart: unpacked afresh, complete.
    let again = before.import(&manifest, DISK).await.unwrap().record;
    assert_eq!(count_entries(&again.rootfs), EXPECTED);

    // Killed again mid-removal, then a restart: the new store neither trusts nor keeps the debris.
    gc_in_a_child_killed_mid_removal(dir.path());
    drop(before);
    let after = ImageStore::open(dir.path(), RegistryConfig::default()).unwrap();
    assert!(after.image(&manifest).is_none());
    let rec = after.import(&manifest, DISK).await.unwrap().record;
    assert_eq!(count_entries(&rec.rootfs), EXPECTED);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_dir(dir.path().join("trash")).unwrap().count() > 0 {
        assert!(std::time::Instant::now() < deadline, "the trash is emptied in the background after a restart");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[tokio::test]
async fn gc_keeps_the_blobs_it_is_told_to_but_frees_their_unpacked_tree() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path(), RegistryConfig::default()).unwrap();
    let manifest = store_image(&store);
    store.import(&manifest, DISK).await.unwrap();
    let blobs: HashSet<Digest> = store.content().list().into_iter().collect();
    assert_eq!(store.gc(|| async { Some((HashSet::new(), blobs.clone())) }).await, (1, 0));
    assert!(store.image(&manifest).is_none());
    assert!(blobs.iter().all(|b| store.content().contains(b)));
    // Used again: unpacked again from the kept blobs.
    let rec = store.import(&manifest, DISK).await.unwrap().record;
    assert_eq!(count_entries(&rec.rootfs), EXPECTED);
}
