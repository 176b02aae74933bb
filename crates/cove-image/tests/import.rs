//! Importing locally built images: blobs written straight into the content store (as the
//! builder does), then `ImageStore::import` validates and unpacks them like a pull.

use std::collections::HashSet;
use std::io::Write;

use cove_image::content::{ContentStore, sha256};
use cove_image::oci::{DOCKER_LIST, OCI_MANIFEST};
use cove_image::{ImageStore, PullError, RegistryConfig};
use cove_types::Digest;
use serde_json::json;

/// One file, directory or whiteout of a hand-made layer.
enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
}

/// An uncompressed tar of `entries`.
fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        match e {
            Entry::Dir(path) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
            Entry::File(path, text) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(text.len() as u64);
                b.append_data(&mut h, path, text.as_bytes()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// Stores an image of the given (layer blob, diff id) pairs; returns its manifest digest.
fn store_image(store: &ImageStore, layers: &[(Vec<u8>, Digest)]) -> Digest {
    let cs = store.content();
    let mut descriptors = Vec::new();
    for (blob, _) in layers {
        let d = sha256(blob);
        cs.put(&d, blob).unwrap();
        descriptors.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": d.to_string(),
            "size": blob.len(),
        }));
    }
    let diff_ids: Vec<String> = layers.iter().map(|(_, d)| d.to_string()).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    put_manifest(cs, &config, descriptors).0
}

/// Stores `config` and a manifest of it and the layer `descriptors`; returns (manifest,
/// config) digests.
fn put_manifest(cs: &ContentStore, config: &[u8], descriptors: Vec<serde_json::Value>) -> (Digest, Digest) {
    let config_digest = sha256(config);
    cs.put(&config_digest, config).unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config.len(),
        },
        "layers": descriptors,
    }))
    .unwrap();
    let d = sha256(&manifest);
    cs.put(&d, &manifest).unwrap();
    (d, config_digest)
}

/// A gzip layer holding one file `zeros` of `mib` MiB of zeros, as concatenated gzip members
/// (one compressed MiB repeated): a few hundred KiB that unpack to `mib` MiB.
fn zeros_layer(mib: usize) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_path("zeros").unwrap();
    h.set_mode(0o644);
    h.set_size((mib as u64) << 20);
    h.set_cksum();
    let mut out = gzip(h.as_bytes());
    let mut one = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    one.write_all(&vec![0u8; 1 << 20]).unwrap();
    let one = one.finish().unwrap();
    for _ in 0..mib {
        out.extend_from_slice(&one);
    }
    out.extend_from_slice(&gzip(&[0u8; 1024]));
    out
}

/// A hand-built image in the content store.
struct Built {
    manifest: Digest,
    config: Digest,
    layers: Vec<Digest>,
}

/// Layer 1: `etc/a`, `etc/b`, `data/x`; layer 2 deletes `etc/a` (whiteout), adds `etc/c` and
/// replaces `data/` by an opaque directory holding only `data/y`. With `store_layer_2` false
/// the second layer blob is left out of the content store.
fn build_image(store: &ImageStore, store_layer_2: bool) -> Built {
    let l1 = tar(&[
        Entry::Dir("etc"),
        Entry::File("etc/a", "a\n"),
        Entry::File("etc/b", "b\n"),
        Entry::Dir("data"),
        Entry::File("data/x", "x\n"),
    ]);
    let l2 = tar(&[
        Entry::Dir("etc"),
        Entry::File("etc/.wh.a", ""),
        Entry::File("etc/c", "c\n"),
        Entry::Dir("data"),
        Entry::File("data/.wh..wh..opq", ""),
        Entry::File("data/y", "y\n"),
    ]);
    let cs = store.content();
    let mut layers = Vec::new();
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, raw) in [l1, l2].iter().enumerate() {
        let blob = gzip(raw);
        let d = sha256(&blob);
        if i == 0 || store_layer_2 {
            // As the builder does: streamed through an ingest.
            let mut w = cs.ingest().unwrap();
            w.write(&blob).unwrap();
            w.commit(&d, Some(blob.len() as u64)).unwrap();
        }
        descriptors.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": d.to_string(),
            "size": blob.len(),
        }));
        diff_ids.push(sha256(raw).to_string());
        layers.push(d);
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/data"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "test"}],
    }))
    .unwrap();
    let (manifest, config) = put_manifest(cs, &config, descriptors);
    Built { manifest, config, layers }
}

/// The disk size images are imported for in these tests: the default snapshot's 3 GiB.
const DISK: u64 = 3 << 30;

fn open(dir: &tempfile::TempDir) -> ImageStore {
    ImageStore::open(dir.path(), RegistryConfig::default()).unwrap()
}

#[tokio::test]
async fn an_imported_image_is_unpacked_with_its_whiteouts_applied() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let img = build_image(&store, true);

    let pulled = store.import(&img.manifest, DISK).await.unwrap();
    let rec = &pulled.record;
    assert_eq!(rec.manifest_digest, img.manifest);
    assert_eq!(rec.config.working_dir.as_deref(), Some("/data"));
    assert_eq!(rec.config.env.as_deref(), Some(&["PATH=/bin".to_string()][..]));
    let root = &rec.rootfs;
    assert_eq!(std::fs::read_to_string(root.join("etc/b")).unwrap(), "b\n");
    assert_eq!(std::fs::read_to_string(root.join("etc/c")).unwrap(), "c\n");
    assert!(!root.join("etc/a").exists(), "the whiteout in layer 2 deletes etc/a");
    assert!(!root.join("etc/.wh.a").exists());
    assert!(!root.join("data/x").exists(), "the opaque directory hides layer 1's data/");
    assert_eq!(std::fs::read_to_string(root.join("data/y")).unwrap(), "y\n");
    assert!(rec.size_bytes > 0);
    assert_eq!(store.image(&img.manifest), Some(rec.clone()));
}

#[tokio::test]
async fn importing_the_same_image_twice_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let img = build_image(&store, true);
    let first = store.import(&img.manifest, DISK).await.unwrap();
    std::fs::write(first.record.rootfs.join("marker"), "kept").unwrap();
    let second = store.import(&img.manifest, DISK).await.unwrap();
    assert_eq!(first.record, second.record);
    // Not unpacked again: the directory is the same one.
    assert_eq!(std::fs::read_to_string(second.record.rootfs.join("marker")).unwrap(), "kept");
    let images = std::fs::read_dir(dir.path().join("images")).unwrap().count();
    assert_eq!(images, 1);
}

#[tokio::test]
async fn concurrent_imports_of_one_image_unpack_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let img = build_image(&store, true);
    let (a, b) = tokio::join!(store.import(&img.manifest, DISK), store.import(&img.manifest, DISK));
    assert_eq!(a.unwrap().record, b.unwrap().record);
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

#[tokio::test]
async fn an_import_with_a_missing_layer_blob_fails_naming_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let img = build_image(&store, false);
    let err = store.import(&img.manifest, DISK).await.unwrap_err();
    assert!(matches!(&err, PullError::MissingBlob { digest, .. } if *digest == img.layers[1]), "{err:?}");
    assert!(err.to_string().contains(&img.layers[1].to_string()), "{err}");
    assert_eq!(err.kind(), cove_types::ErrorKind::FailedPrecondition);
    assert!(store.image(&img.manifest).is_none());
    assert_eq!(std::fs::read_dir(dir.path().join("images")).unwrap().count(), 0);
}

#[tokio::test]
async fn an_import_of_an_unknown_manifest_or_a_missing_config_fails_naming_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let unknown = sha256(b"no such manifest");
    let err = store.import(&unknown, DISK).await.unwrap_err();
    assert!(matches!(&err, PullError::MissingBlob { digest, .. } if *digest == unknown), "{err:?}");

    let img = build_image(&store, true);
    store.content().delete(&img.config).unwrap();
    let err = store.import(&img.manifest, DISK).await.unwrap_err();
    assert!(matches!(&err, PullError::MissingBlob { digest, .. } if *digest == img.config), "{err:?}");
}

/// Stores `manifest` as JSON and imports it.
async fn import_json(store: &ImageStore, manifest: serde_json::Value) -> Result<(), PullError> {
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let d = sha256(&bytes);
    store.content().put(&d, &bytes).unwrap();
    store.import(&d, DISK).await.map(drop)
}

#[tokio::test]
async fn an_index_a_manifest_without_config_and_a_diff_id_mismatch_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let img = build_image(&store, true);
    let stored = store.manifest(&img.manifest).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&stored.manifest_bytes).unwrap();

    let index = json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": []});
    let err = import_json(&store, index).await.unwrap_err();
    assert!(matches!(err, PullError::InvalidImage { .. }), "{err:?}");

    let mut no_config = manifest.clone();
    no_config.as_object_mut().unwrap().remove("config");
    let err = import_json(&store, no_config).await.unwrap_err();
    assert!(err.to_string().contains("no config"), "{err}");

    let mut one_layer_only = manifest.clone();
    one_layer_only["layers"].as_array_mut().unwrap().pop();
    let err = import_json(&store, one_layer_only).await.unwrap_err();
    assert!(err.to_string().contains("1 layers but 2 diff ids"), "{err}");
}

#[tokio::test]
async fn the_manifest_of_an_imported_image_can_be_read_back_to_extend_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let img = build_image(&store, true);
    assert!(store.manifest(&sha256(b"unknown")).is_none());
    let _pulled = store.import(&img.manifest, DISK).await.unwrap();
    let m = store.manifest(&img.manifest).unwrap();
    assert_eq!(sha256(&m.manifest_bytes), img.manifest);
    assert_eq!(sha256(&m.config_bytes), img.config);
    let layers: Vec<String> = m.manifest.layers.unwrap().iter().map(|l| l.digest.clone()).collect();
    assert_eq!(layers, img.layers.iter().map(ToString::to_string).collect::<Vec<_>>());
    assert_eq!(m.config.rootfs.unwrap().diff_ids.len(), 2);
    // Fields Cove does not model survive in the raw bytes.
    let raw: serde_json::Value = serde_json::from_slice(&m.config_bytes).unwrap();
    assert_eq!(raw["history"][0]["created_by"], "test");
}

#[tokio::test]
async fn gc_keeps_the_blobs_of_kept_imported_images_and_leased_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let img = build_image(&store, true);
    let pulled = store.import(&img.manifest, DISK).await.unwrap();
    drop(pulled.lease);
    let stray = sha256(b"stray");
    store.content().put(&stray, b"stray").unwrap();
    let leased = sha256(b"a build's layer");
    store.content().put(&leased, b"a build's layer").unwrap();
    let lease = store.lease(&leased);

    let keep: HashSet<Digest> = [img.manifest.clone()].into();
    assert_eq!(store.gc(|| async { Some((keep.clone(), HashSet::new())) }).await, (0, 1));
    for d in [&img.manifest, &img.config, &img.layers[0], &img.layers[1], &leased] {
        assert!(store.content().contains(d), "{d}");
    }
    assert!(!store.content().contains(&stray));
    assert!(store.image(&img.manifest).is_some());

    drop(lease);
    assert_eq!(store.gc(|| async { Some((HashSet::new(), HashSet::new())) }).await, (1, 5));
    assert!(store.image(&img.manifest).is_none());
    assert!(store.content().list().is_empty());
}

#[tokio::test]
async fn a_layer_bomb_is_stopped_at_the_ratio_limit_and_leaves_no_staging_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).with_max_unpack_ratio(100);
    let blob = zeros_layer(256);
    assert!(blob.len() < 1 << 20, "{}", blob.len());
    // The unpack fails before the diff id is checked, so any diff id will do.
    let manifest = store_image(&store, &[(blob, sha256(b"not checked"))]);
    let err = store.import(&manifest, DISK).await.unwrap_err();
    assert!(matches!(&err, PullError::Unpack { .. }), "{err:?}");
    let msg = cove_types::error::chain(&err);
    assert!(msg.contains("size limit of 64.0 MiB"), "the floor applies to a small image: {msg}");
    assert!(msg.contains("--max-unpack-ratio"), "{msg}");
    assert_eq!(err.kind(), cove_types::ErrorKind::InvalidArgument);
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "the staging directory is removed");
    assert!(store.image(&manifest).is_none());
}

#[tokio::test]
async fn an_image_larger_than_the_disk_is_refused_whether_or_not_it_is_unpacked_already() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let img = build_image(&store, true);
    let err = store.import(&img.manifest, 4).await.unwrap_err();
    let msg = cove_types::error::chain(&err);
    assert!(msg.contains("size limit of 4 B (the disk size it is pulled for)"), "{msg}");
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);

    let pulled = store.import(&img.manifest, DISK).await.unwrap();
    let size = pulled.record.size_bytes;
    let err = store.import(&img.manifest, size - 1).await.unwrap_err();
    assert!(matches!(err, PullError::TooLarge { limit, .. } if limit == size - 1), "{err:?}");
    assert!(err.to_string().contains("the disk size it is pulled for"), "{err}");
    store.import(&img.manifest, size).await.unwrap();
}
