//! The image store: pulls an image reference into the content store, unpacks it once into a
//! read-only root filesystem, and garbage-collects what nothing references.
//!
//! Crash safety of removal: an image directory is never deleted in place. GC (and the
//! cleanup of crash debris) first renames `images/<hex>/` to `trash/<hex>-<uuid>/` and syncs
//! both directories, so a tree whose removal began is invisible at once, whatever a kill
//! leaves of it; the trash is deleted afterwards, and what a crash left there is swept in the
//! background at the next open. A later pull or import of the same image unpacks it afresh.
//!
//! Fault points (`COVE_FAULT`, see `cove_types::fault`):
//! - `gc.image_removal`: after the first entry of a retired image's `rootfs/` is deleted.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cove_types::fs::{sync_dir, write_atomic};
use cove_types::{Digest, ImageRef};
use serde::{Deserialize, Serialize};

use crate::content::{ContentError, ContentStore};
use crate::distribution::{Credentials, DistributionError, Endpoint, FetchedManifest, RegistryClient, RegistryConfig};
use crate::oci::{self, Descriptor, ImageConfigFile, ManifestOrIndex, RunConfig};
use crate::unpack::{self, UnpackError};

const COMPLETE_MARKER: &str = ".complete";
/// Where image trees (and staging debris) go to be deleted; see the module docs.
const TRASH: &str = "trash";
/// Layers downloaded at once per pull.
const PARALLEL_LAYERS: usize = 3;
/// How many times its compressed layers an image may unpack to, unless set otherwise. Real
/// layers expand 2 to 5 times (text-heavy ones up to about 10); gzip of zeros expands about
/// 1000 times and zstd far more. 100 leaves real images ten times the room they need and
/// cuts a bomb to a tenth of what gzip alone allows (a 2 MiB layer: 200 MiB, not 2 GiB).
pub const DEFAULT_MAX_UNPACK_RATIO: u64 = 100;
/// The ratio never limits an image below this: a tiny image with one compressible file
/// (a zero-filled database page, a log) is no bomb, and this much is cheap.
pub const MIN_RATIO_LIMIT: u64 = 64 << 20;

/// What a snapshot needs to know about an unpacked image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// Digest of the linux/amd64 manifest: the image's identity.
    pub manifest_digest: Digest,
    /// Entrypoint, cmd, env, workdir, user from the image config.
    pub config: RunConfig,
    /// Apparent size of the unpacked root filesystem in bytes.
    pub size_bytes: u64,
    /// Where the root filesystem is (read-only by convention).
    #[serde(skip)]
    pub rootfs: PathBuf,
}

/// A local image's manifest and config, parsed and as stored (the raw bytes keep the fields
/// Cove does not model, for builders that extend the image).
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// The image manifest.
    pub manifest: ManifestOrIndex,
    /// Its bytes (they hash to the image's digest).
    pub manifest_bytes: Vec<u8>,
    /// The image config.
    pub config: ImageConfigFile,
    /// Its bytes.
    pub config_bytes: Vec<u8>,
}

/// An image whose blobs are all in the content store, ready to unpack.
struct StoredImage {
    /// For error messages.
    name: String,
    digest: Digest,
    manifest_bytes: Vec<u8>,
    config_bytes: Vec<u8>,
    run: RunConfig,
    /// Layer blobs, bottom first.
    layers: Vec<Digest>,
    /// One per layer.
    diff_ids: Vec<String>,
}

/// Why a pull failed, worded for a snapshot's `errorReason`.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Every endpoint failed to produce the manifest.
    #[error("{}", describe_attempts(.image, .attempts))]
    Resolve {
        /// The image.
        image: String,
        /// Each endpoint's failure, in the order tried.
        attempts: Vec<DistributionError>,
    },
    /// No linux/amd64 image in the index, or the config says another platform.
    #[error("image {image} is built for {found}, not linux/amd64; rebuild it with --platform=linux/amd64")]
    WrongPlatform {
        /// The image.
        image: String,
        /// The platforms it has.
        found: String,
    },
    /// The manifest or config is not something we can use.
    #[error("image {image} has an invalid manifest or config: {why}")]
    InvalidImage {
        /// The image.
        image: String,
        /// What is wrong.
        why: String,
    },
    /// A blob download failed.
    #[error("download {digest} of {image}: {source}")]
    Download {
        /// The image.
        image: String,
        /// The blob.
        digest: Digest,
        /// Cause.
        #[source]
        source: Box<DistributionError>,
    },
    /// Applying a layer failed.
    #[error("unpack layer {digest} of {image}: {source}")]
    Unpack {
        /// The image.
        image: String,
        /// The layer.
        digest: Digest,
        /// Cause.
        #[source]
        source: Box<UnpackError>,
    },
    /// An image that is already unpacked is larger than the caller allows (a snapshot's or
    /// build's disk size). Images being unpacked fail with [`UnpackError::TooLarge`] instead.
    #[error(
        "image {image} unpacks to {}, past its size limit of {} (the disk size it is pulled for)",
        unpack::Bytes(*size),
        unpack::Bytes(*limit)
    )]
    TooLarge {
        /// The image.
        image: String,
        /// Its unpacked size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// Local disk trouble.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The content store refused a blob.
    #[error("store blob: {0}")]
    Content(#[from] ContentError),
    /// An image to import refers to a blob that is not in the content store.
    #[error("import image {image}: blob {digest} is not in the content store")]
    MissingBlob {
        /// The image (its manifest digest).
        image: String,
        /// The missing blob.
        digest: Digest,
    },
}

fn describe_attempts(image: &str, attempts: &[DistributionError]) -> String {
    // Lead with the most telling failure: "not found" or "unauthorized" from someone who
    // answered beats "unreachable" from someone who did not.
    let rank = |e: &DistributionError| match e.kind() {
        cove_types::ErrorKind::Unauthenticated => 0,
        cove_types::ErrorKind::NotFound => 1,
        cove_types::ErrorKind::InvalidArgument => 2,
        _ => 3,
    };
    let lead = attempts.iter().min_by_key(|e| rank(e));
    let headline = match lead.map(|e| e.kind()) {
        Some(cove_types::ErrorKind::Unauthenticated) => format!("unauthorized to pull image {image}"),
        Some(cove_types::ErrorKind::NotFound) => format!("image {image} not found"),
        Some(cove_types::ErrorKind::Unavailable) => format!("cannot reach any registry for image {image}"),
        _ => format!("cannot pull image {image}"),
    };
    // Each attempt with its cause chain ("store blob from http://…: write …: No space left").
    let details: Vec<String> = attempts.iter().map(|e| cove_types::error::chain(e)).collect();
    format!("{headline} ({})", details.join("; "))
}

impl PullError {
    /// The error class.
    pub fn kind(&self) -> cove_types::ErrorKind {
        use cove_types::ErrorKind as K;
        match self {
            Self::Resolve { attempts, .. } => attempts
                .iter()
                .map(DistributionError::kind)
                .min_by_key(|k| match k {
                    K::Unauthenticated => 0,
                    K::NotFound => 1,
                    _ => 2,
                })
                .unwrap_or(K::Unavailable),
            Self::WrongPlatform { .. } | Self::InvalidImage { .. } | Self::TooLarge { .. } => K::InvalidArgument,
            Self::Download { source, .. } => source.kind(),
            Self::Unpack { .. } => K::InvalidArgument,
            Self::MissingBlob { .. } => K::FailedPrecondition,
            Self::Io { .. } | Self::Content(_) => K::Internal,
        }
    }
}

type LockMap = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;
type LeaseMap = Arc<Mutex<HashMap<Digest, usize>>>;

/// Keeps a freshly pulled image safe from garbage collection until the caller has recorded
/// that it uses it (containerd's lease). Dropping it releases the image.
#[derive(Debug)]
pub struct Lease {
    digest: Digest,
    leases: LeaseMap,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut m = self.leases.lock().expect("lease map is never poisoned");
        if let Some(n) = m.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.digest);
            }
        }
    }
}

/// A pulled image and the lease protecting it.
#[derive(Debug)]
pub struct Pulled {
    /// The image.
    pub record: ImageRecord,
    /// Drop after recording the reference.
    pub lease: Lease,
}

/// Images on disk; see the crate docs for the layout.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    content: ContentStore,
    client: RegistryClient,
    /// One lock per blob digest and per image digest, so concurrent pulls of the same content
    /// download and unpack it once.
    locks: LockMap,
    /// Pulls hold it shared; garbage collection holds it exclusively.
    gc_lock: tokio::sync::RwLock<()>,
    leases: LeaseMap,
    /// Images may unpack to this many times their compressed layers (0: no such limit).
    max_unpack_ratio: u64,
}

impl ImageStore {
    /// Opens the store under `root`. Staging debris and images a crash left without their
    /// completion marker are moved to the trash at once (renames, so the store is usable
    /// right away) and deleted, with whatever the trash already held, by a background thread.
    pub fn open(root: &Path, registries: RegistryConfig) -> Result<Self, PullError> {
        let content = ContentStore::open(root)?;
        let tmp = root.join("tmp");
        let images = root.join("images");
        let trash = root.join(TRASH);
        std::fs::create_dir_all(&trash).map_err(io_err("create", &trash))?;
        if tmp.exists() {
            retire(&tmp, &trash, "tmp").map_err(io_err("move staging debris to the trash", &tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        std::fs::create_dir_all(&images).map_err(io_err("create", &images))?;
        for e in std::fs::read_dir(&images).map_err(io_err("list", &images))?.flatten() {
            if !e.path().join(COMPLETE_MARKER).exists() {
                tracing::info!(path = %e.path().display(), "removing incomplete image left by a crash");
                retire(&e.path(), &trash, &e.file_name().to_string_lossy())
                    .map_err(io_err("move an incomplete image to the trash", &e.path()))?;
            }
        }
        let sweep = trash.clone();
        std::thread::Builder::new()
            .name("cove-image-trash".into())
            .spawn(move || empty_trash(&sweep))
            .map_err(io_err("start the trash sweeper", &trash))?;
        Ok(ImageStore {
            root: root.to_path_buf(),
            content,
            client: RegistryClient::new(registries),
            locks: Mutex::new(HashMap::new()),
            gc_lock: tokio::sync::RwLock::new(()),
            leases: Arc::default(),
            max_unpack_ratio: DEFAULT_MAX_UNPACK_RATIO,
        })
    }

    /// Images may unpack to at most `ratio` times the size of their compressed layers (but
    /// always to [`MIN_RATIO_LIMIT`]); 0 removes this limit, leaving the disk size.
    pub fn with_max_unpack_ratio(mut self, ratio: u64) -> Self {
        self.max_unpack_ratio = ratio;
        self
    }

    /// The content store.
    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    fn image_dir(&self, d: &Digest) -> PathBuf {
        self.root.join("images").join(d.hex())
    }

    /// The unpacked image, if it is complete on disk.
    pub fn image(&self, d: &Digest) -> Option<ImageRecord> {
        let dir = self.image_dir(d);
        if !dir.join(COMPLETE_MARKER).exists() {
            return None;
        }
        let mut rec: ImageRecord = serde_json::from_slice(&std::fs::read(dir.join("meta.json")).ok()?).ok()?;
        rec.rootfs = dir.join("rootfs");
        Some(rec)
    }

    /// The unpacked image `d` with a lease that keeps it from garbage collection, if it is
    /// there. Taken under the collector's lock: a collection either sees the lease or has
    /// already removed the image (then `None`), never removes it under a holder.
    pub async fn lease_existing(&self, d: &Digest) -> Option<(ImageRecord, Lease)> {
        let _gc = self.gc_lock.read().await;
        let lease = self.lease(d);
        self.image(d).map(|rec| (rec, lease))
    }

    fn lock_for(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().expect("lock map is never poisoned").entry(key).or_default().clone()
    }

    /// Pulls `image` (mirrors first), downloads missing blobs, and unpacks the linux/amd64
    /// root filesystem unless it already exists. The root filesystem may take at most
    /// `max_unpacked_bytes` (the disk size it is pulled for) and the store's ratio times the
    /// compressed layers; past either, the unpack stops, its staging directory is removed
    /// and the error names the limit.
    #[tracing::instrument(skip_all, fields(image = %image, max_unpacked_bytes))]
    pub async fn pull(
        &self,
        image: &ImageRef,
        creds: Option<&Credentials>,
        max_unpacked_bytes: u64,
    ) -> Result<Pulled, PullError> {
        let _gc = self.gc_lock.read().await;
        let record = self.pull_locked(image, creds, max_unpacked_bytes).await?;
        check_size(&image.to_string(), &record, max_unpacked_bytes)?;
        let lease = self.lease(&record.manifest_digest);
        Ok(Pulled { record, lease })
    }

    async fn pull_locked(
        &self,
        image: &ImageRef,
        creds: Option<&Credentials>,
        max_unpacked_bytes: u64,
    ) -> Result<ImageRecord, PullError> {
        let name = image.to_string();
        let (ep, manifest, body) = self.resolve(image, creds).await?;
        if let Some(rec) = self.image(&manifest.digest) {
            tracing::debug!(digest = %manifest.digest, "image already unpacked");
            return Ok(rec);
        }
        let invalid = |why: String| PullError::InvalidImage { image: name.clone(), why };
        let config_desc = body.config.clone().ok_or_else(|| invalid("manifest has no config".into()))?;
        let layers = body.layers.clone().unwrap_or_default();
        let config_digest: Digest = config_desc.digest.parse().map_err(|e| invalid(format!("{e}")))?;
        self.fetch(&ep, image, &config_desc, &config_digest, creds).await?;
        let config_bytes = self.read_blob(&config_digest, "read config")?;
        let (config, diff_ids) = check_config(&name, &config_bytes, layers.len())?;
        let layer_digests = parse_layer_digests(&name, &layers)?;

        // Download layers, a few at a time.
        let t_download = std::time::Instant::now();
        for batch in layers.iter().zip(&layer_digests).collect::<Vec<_>>().chunks(PARALLEL_LAYERS) {
            let futs = batch.iter().map(|(desc, d)| self.fetch(&ep, image, desc, d, creds));
            for r in futures_util::future::join_all(futs).await {
                r?;
            }
        }
        self.content.put(&manifest.digest, &manifest.bytes)?;
        tracing::debug!(layers = layers.len(), ms = t_download.elapsed().as_millis() as u64, "layers downloaded");
        let image = StoredImage {
            name,
            digest: manifest.digest.clone(),
            manifest_bytes: manifest.bytes.clone(),
            config_bytes,
            run: config.config.unwrap_or_default(),
            layers: layer_digests,
            diff_ids,
        };
        self.unpack_stored(image, max_unpacked_bytes).await
    }

    /// Unpacks an image whose manifest, config and layer blobs are all in the content store
    /// into `images/<digest>/` (rootfs, manifest.json, config.json, meta.json, then the
    /// completion marker), once per image even when several callers ask at the same time.
    /// Shared by pulls and imports.
    async fn unpack_stored(&self, image: StoredImage, max_unpacked_bytes: u64) -> Result<ImageRecord, PullError> {
        let lock = self.lock_for(format!("image:{}", image.digest));
        let _guard = lock.lock().await;
        if let Some(rec) = self.image(&image.digest) {
            return Ok(rec);
        }
        let staging = self.root.join("tmp").join(format!("unpack-{}", uuid::Uuid::new_v4()));
        let paths: Vec<(PathBuf, Digest, String)> = image
            .layers
            .iter()
            .zip(&image.diff_ids)
            .map(|(d, diff)| (self.content.path(d), d.clone(), diff.clone()))
            .collect();
        let dst = self.image_dir(&image.digest);
        let ratio = self.max_unpack_ratio;
        let t_unpack = std::time::Instant::now();
        let rec = tokio::task::spawn_blocking(move || {
            let r = unpack_budget(&paths, ratio, max_unpacked_bytes).and_then(|mut budget| {
                unpack_image(
                    &staging,
                    &dst,
                    &paths,
                    &mut budget,
                    &image.manifest_bytes,
                    &image.config_bytes,
                    image.digest,
                    image.run,
                    &image.name,
                )
            });
            if r.is_err() {
                let _ = std::fs::remove_dir_all(&staging);
            }
            r
        })
        .await
        .expect("the unpack task does not panic")?;
        tracing::info!(
            digest = %rec.manifest_digest,
            size = rec.size_bytes,
            ms = t_unpack.elapsed().as_millis() as u64,
            "image unpacked"
        );
        Ok(rec)
    }

    fn read_blob(&self, d: &Digest, op: &'static str) -> Result<Vec<u8>, PullError> {
        self.content.read(d).map_err(|source| PullError::Io { op, path: self.content.path(d), source })
    }

    /// Keeps `digest` (an image's manifest digest or any single blob) from garbage collection
    /// until the lease is dropped. Builders lease the blobs they write before they import
    /// the image that references them.
    pub fn lease(&self, digest: &Digest) -> Lease {
        *self.leases.lock().expect("lease map is never poisoned").entry(digest.clone()).or_default() += 1;
        Lease { digest: digest.clone(), leases: self.leases.clone() }
    }

    /// Imports a locally built image: its OCI (or Docker schema 2) manifest, config and
    /// layer blobs must already be in the content store. Validates them, unpacks the root
    /// filesystem exactly as a pull does (with the same limits), and returns it with a lease.
    /// Importing an image that is already unpacked only takes the lease.
    #[tracing::instrument(skip_all, fields(image = %manifest_digest, max_unpacked_bytes))]
    pub async fn import(&self, manifest_digest: &Digest, max_unpacked_bytes: u64) -> Result<Pulled, PullError> {
        let _gc = self.gc_lock.read().await;
        let record = self.import_locked(manifest_digest, max_unpacked_bytes).await?;
        check_size(&manifest_digest.to_string(), &record, max_unpacked_bytes)?;
        let lease = self.lease(&record.manifest_digest);
        Ok(Pulled { record, lease })
    }

    async fn import_locked(&self, digest: &Digest, max_unpacked_bytes: u64) -> Result<ImageRecord, PullError> {
        let name = digest.to_string();
        if let Some(rec) = self.image(digest) {
            tracing::debug!("image already unpacked");
            return Ok(rec);
        }
        let missing = |d: &Digest| PullError::MissingBlob { image: name.clone(), digest: d.clone() };
        let invalid = |why: String| PullError::InvalidImage { image: name.clone(), why };
        if !self.content.contains(digest) {
            return Err(missing(digest));
        }
        let manifest_bytes = self.read_blob(digest, "read manifest")?;
        let body: ManifestOrIndex =
            serde_json::from_slice(&manifest_bytes).map_err(|e| invalid(format!("manifest is not valid JSON: {e}")))?;
        // The registry keeps the type a manifest was pushed with; a document without
        // `mediaType` (umoci, older buildah) is told by its fields here.
        match body.kind(None) {
            Ok((oci::ManifestKind::Image, _)) => {}
            Ok((oci::ManifestKind::Index, mt)) => {
                return Err(invalid(format!(
                    "{mt} is an index, not an image manifest ({} or {})",
                    oci::OCI_MANIFEST,
                    oci::DOCKER_MANIFEST
                )));
            }
            Err(e) => return Err(invalid(e.to_string())),
        }
        if body.schema_version != 2 {
            return Err(invalid("not a schema version 2 image manifest".into()));
        }
        let config_desc = body.config.as_ref().ok_or_else(|| invalid("manifest has no config".into()))?;
        let config_digest: Digest = config_desc.digest.parse().map_err(|e| invalid(format!("{e}")))?;
        if !self.content.contains(&config_digest) {
            return Err(missing(&config_digest));
        }
        let layers = body.layers.clone().unwrap_or_default();
        let layer_digests = parse_layer_digests(&name, &layers)?;
        if let Some(d) = layer_digests.iter().find(|d| !self.content.contains(d)) {
            return Err(missing(d));
        }
        let config_bytes = self.read_blob(&config_digest, "read config")?;
        let (config, diff_ids) = check_config(&name, &config_bytes, layers.len())?;
        let image = StoredImage {
            name,
            digest: digest.clone(),
            manifest_bytes,
            config_bytes,
            run: config.config.unwrap_or_default(),
            layers: layer_digests,
            diff_ids,
        };
        self.unpack_stored(image, max_unpacked_bytes).await
    }

    /// The manifest and config of a local image (pulled or imported), from the content
    /// store, falling back to the copies in the image directory; `None` when neither has it.
    /// Builders extend a base image from this.
    pub fn manifest(&self, d: &Digest) -> Option<StoredManifest> {
        let dir = self.image_dir(d);
        let manifest_bytes = self.content.read(d).or_else(|_| std::fs::read(dir.join("manifest.json"))).ok()?;
        let manifest: ManifestOrIndex = serde_json::from_slice(&manifest_bytes).ok()?;
        let config_digest: Digest = manifest.config.as_ref()?.digest.parse().ok()?;
        let config_bytes =
            self.content.read(&config_digest).or_else(|_| std::fs::read(dir.join("config.json"))).ok()?;
        let config: ImageConfigFile = serde_json::from_slice(&config_bytes).ok()?;
        Some(StoredManifest { manifest, manifest_bytes, config, config_bytes })
    }

    async fn fetch(
        &self,
        ep: &Endpoint,
        image: &ImageRef,
        desc: &Descriptor,
        digest: &Digest,
        creds: Option<&Credentials>,
    ) -> Result<(), PullError> {
        let lock = self.lock_for(format!("blob:{digest}"));
        let _g = lock.lock().await;
        self.client.fetch_blob(ep, &image.repository, desc, digest, creds, &self.content).await.map_err(|source| {
            PullError::Download { image: image.to_string(), digest: digest.clone(), source: Box::new(source) }
        })
    }

    /// Finds the image's linux/amd64 manifest on the first endpoint that has it.
    async fn resolve(
        &self,
        image: &ImageRef,
        creds: Option<&Credentials>,
    ) -> Result<(Endpoint, FetchedManifest, ManifestOrIndex), PullError> {
        let name = image.to_string();
        let mut attempts = Vec::new();
        for ep in self.client.endpoints(image) {
            let top = match self.client.manifest(&ep, &image.repository, &image.reference(), creds).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(endpoint = %ep.base, error = %e, "manifest fetch failed");
                    attempts.push(e);
                    continue;
                }
            };
            let parsed: ManifestOrIndex = serde_json::from_slice(&top.bytes).map_err(|e| PullError::InvalidImage {
                image: name.clone(),
                why: format!("manifest is not valid JSON: {e}"),
            })?;
            // The type: the document's `mediaType`, else the `Content-Type` it was served
            // with, else its fields (OCI lets a manifest leave `mediaType` out).
            let (kind, _) = parsed.kind(Some(&top.media_type)).map_err(|e| PullError::InvalidImage {
                image: name.clone(),
                why: format!("{}:{}: {e}", image.repository, image.reference()),
            })?;
            if kind == oci::ManifestKind::Image {
                return Ok((ep, top, parsed));
            }
            let entries = parsed.manifests.unwrap_or_default();
            let chosen = entries
                .iter()
                .find(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == "amd64"));
            let Some(chosen) = chosen else {
                let found: Vec<String> = entries
                    .iter()
                    .filter_map(|m| m.platform.as_ref())
                    .filter(|p| p.os != "unknown")
                    .map(|p| {
                        format!(
                            "{}/{}{}",
                            p.os,
                            p.architecture,
                            p.variant.as_deref().map(|v| format!("/{v}")).unwrap_or_default()
                        )
                    })
                    .collect();
                return Err(PullError::WrongPlatform { image: name, found: found.join(", ") });
            };
            let m = self
                .client
                .manifest(&ep, &image.repository, &chosen.digest, creds)
                .await
                .map_err(|e| PullError::Resolve { image: name.clone(), attempts: vec![e] })?;
            let body: ManifestOrIndex = serde_json::from_slice(&m.bytes).map_err(|e| PullError::InvalidImage {
                image: name.clone(),
                why: format!("manifest is not valid JSON: {e}"),
            })?;
            // A child without `mediaType` has its index entry's (or its `Content-Type`).
            let hint = Some(chosen.media_type.as_str()).filter(|t| !t.is_empty()).unwrap_or(&m.media_type);
            match body.kind(Some(hint)) {
                Ok((oci::ManifestKind::Image, _)) => {}
                Ok((oci::ManifestKind::Index, mt)) => {
                    return Err(PullError::InvalidImage {
                        image: name,
                        why: format!("the linux/amd64 entry {} is a nested index ({mt})", chosen.digest),
                    });
                }
                Err(e) => return Err(PullError::InvalidImage { image: name, why: format!("{}: {e}", chosen.digest) }),
            }
            self.content.put(&top.digest, &top.bytes)?;
            return Ok((ep, m, body));
        }
        Err(PullError::Resolve { image: name, attempts })
    }

    /// Deletes the unpacked images whose manifest digest is not in `keep_images`, then every
    /// blob that neither a kept image uses nor `keep_blobs` names (a registry's manifests
    /// and layers are kept as blobs without keeping their unpacked trees). Leased digests
    /// keep both. Waits for pulls in progress; each image is made invisible by a rename
    /// before its files are deleted (see the module docs). Returns the number of (images,
    /// blobs) removed.
    ///
    /// The roots come from `roots`, called once the collection holds the store's lock: roots
    /// read before it would miss an image whose pull finished, whose record was written and
    /// whose lease was dropped in between, and the image would go while a record names it.
    /// `None` from `roots` (they could not be read) skips the collection.
    pub async fn gc<F, Fut>(&self, roots: F) -> (usize, usize)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Option<(HashSet<Digest>, HashSet<Digest>)>>,
    {
        let g = self.gc_lock.write().await;
        let Some((keep_images, keep_blobs)) = roots().await else { return (0, 0) };
        let mut keep = keep_images.clone();
        keep.extend(self.leases.lock().expect("lease map is never poisoned").keys().cloned());
        // A leased digest may also be a single blob (a build's layer before its import).
        let mut used: HashSet<Digest> = keep.clone();
        used.extend(keep_blobs.iter().cloned());
        let trash = self.root.join(TRASH);
        let mut retired = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.root.join("images")) {
            for e in rd.flatten() {
                let Ok(d) = format!("sha256:{}", e.file_name().to_string_lossy()).parse::<Digest>() else { continue };
                if keep.contains(&d) {
                    used.insert(d.clone());
                    if let Ok(bytes) = std::fs::read(e.path().join("manifest.json"))
                        && let Ok(m) = serde_json::from_slice::<ManifestOrIndex>(&bytes)
                    {
                        for desc in m.config.iter().chain(m.layers.iter().flatten()) {
                            if let Ok(d) = desc.digest.parse() {
                                used.insert(d);
                            }
                        }
                    }
                    continue;
                }
                match retire(&e.path(), &trash, d.hex()) {
                    Ok(to) => retired.push(to),
                    Err(err) => tracing::warn!(digest = %d, error = %err, "cannot move an unused image to the trash"),
                }
            }
        }
        let mut blobs_removed = 0;
        for b in self.content.list() {
            if !used.contains(&b) && self.content.delete(&b).is_ok() {
                blobs_removed += 1;
            }
        }
        // Pulls may go on while the retired trees' files are deleted: nothing sees them.
        drop(g);
        let images_removed = retired.len();
        tokio::task::spawn_blocking(move || {
            for dir in retired {
                if let Err(err) = remove_retired(&dir) {
                    tracing::warn!(path = %dir.display(), error = %err, "cannot delete a retired image; the next start retries");
                }
            }
        })
        .await
        .expect("the removal task does not panic");
        tracing::info!(images_removed, blobs_removed, "garbage collected");
        (images_removed, blobs_removed)
    }
}

/// Moves `dir` into `trash` under a name no other removal uses (`<name>-<uuid>`) and syncs
/// both parents, so `dir` is gone for good before anything in it is deleted.
fn retire(dir: &Path, trash: &Path, name: &str) -> std::io::Result<PathBuf> {
    let to = trash.join(format!("{name}-{}", uuid::Uuid::new_v4()));
    std::fs::rename(dir, &to)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    sync_dir(trash)?;
    Ok(to)
}

/// Deletes a tree [`retire`] moved to the trash: its `rootfs/` entries one by one (the
/// fault point `gc.image_removal` follows the first), then the rest.
fn remove_retired(dir: &Path) -> std::io::Result<()> {
    if let Ok(rd) = std::fs::read_dir(dir.join("rootfs")) {
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p)?,
                _ => std::fs::remove_file(&p)?,
            }
            cove_types::fault::point("gc.image_removal");
        }
    }
    std::fs::remove_dir_all(dir)
}

/// Deletes everything in the trash (at open, in the background). An entry GC retires and
/// deletes meanwhile may vanish under it: that is no error.
fn empty_trash(trash: &Path) {
    let Ok(rd) = std::fs::read_dir(trash) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let started = std::time::Instant::now();
        match std::fs::remove_dir_all(&p) {
            Ok(()) => tracing::info!(path = %p.display(), ms = started.elapsed().as_millis() as u64, "trash emptied"),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(path = %p.display(), error = %err, "cannot empty the trash"),
        }
    }
}

/// Parses the config blob and checks it against the manifest: linux/amd64 (or unset), and
/// one diff id per layer. Returns the config and the diff ids.
fn check_config(image: &str, config_bytes: &[u8], layers: usize) -> Result<(ImageConfigFile, Vec<String>), PullError> {
    let invalid = |why: String| PullError::InvalidImage { image: image.to_string(), why };
    let config: ImageConfigFile =
        serde_json::from_slice(config_bytes).map_err(|e| invalid(format!("config is not valid JSON: {e}")))?;
    if !(config.os.is_empty() || config.os == "linux")
        || !(config.architecture.is_empty() || config.architecture == "amd64")
    {
        return Err(PullError::WrongPlatform {
            image: image.to_string(),
            found: format!("{}/{}", config.os, config.architecture),
        });
    }
    let diff_ids = config.rootfs.as_ref().map(|r| r.diff_ids.clone()).unwrap_or_default();
    if diff_ids.len() != layers {
        return Err(invalid(format!("{layers} layers but {} diff ids", diff_ids.len())));
    }
    Ok((config, diff_ids))
}

fn parse_layer_digests(image: &str, layers: &[Descriptor]) -> Result<Vec<Digest>, PullError> {
    layers
        .iter()
        .map(|l| {
            l.digest
                .parse::<Digest>()
                .map_err(|e| PullError::InvalidImage { image: image.to_string(), why: format!("{e}") })
        })
        .collect()
}

/// An image that is already unpacked must still fit the caller's limit.
fn check_size(image: &str, rec: &ImageRecord, max_unpacked_bytes: u64) -> Result<(), PullError> {
    if rec.size_bytes > max_unpacked_bytes {
        return Err(PullError::TooLarge { image: image.to_string(), size: rec.size_bytes, limit: max_unpacked_bytes });
    }
    Ok(())
}

/// What the layers (stored blobs, compressed or not) may unpack to: the smaller of `ratio`
/// times their total size (at least [`MIN_RATIO_LIMIT`]; no limit when `ratio` is 0) and
/// `max_unpacked_bytes`.
fn unpack_budget(
    layers: &[(PathBuf, Digest, String)],
    ratio: u64,
    max_unpacked_bytes: u64,
) -> Result<unpack::Budget, PullError> {
    let mut compressed = 0u64;
    for (path, _, _) in layers {
        compressed += std::fs::metadata(path).map_err(io_err("stat layer", path))?.len();
    }
    let by_ratio = match ratio {
        0 => u64::MAX,
        r => compressed.saturating_mul(r).max(MIN_RATIO_LIMIT),
    };
    let budget = if by_ratio < max_unpacked_bytes {
        unpack::Budget::new(
            by_ratio,
            format!(
                "{ratio} times its {} of compressed layers, at least {}; the server's --max-unpack-ratio",
                unpack::Bytes(compressed),
                unpack::Bytes(MIN_RATIO_LIMIT)
            ),
        )
    } else {
        unpack::Budget::new(max_unpacked_bytes, "the disk size it is pulled for")
    };
    tracing::debug!(compressed, limit = budget.limit(), "unpack size limit");
    Ok(budget)
}

#[allow(clippy::too_many_arguments)]
fn unpack_image(
    staging: &Path,
    dst: &Path,
    layers: &[(PathBuf, Digest, String)],
    budget: &mut unpack::Budget,
    manifest: &[u8],
    config: &[u8],
    digest: Digest,
    run: RunConfig,
    image: &str,
) -> Result<ImageRecord, PullError> {
    let rootfs = staging.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(io_err("create", &rootfs))?;
    for (path, d, diff_id) in layers {
        let reader = unpack::open_layer(path).map_err(io_err("open layer", path))?;
        unpack::apply_layer_within(&rootfs, reader, Some(diff_id), budget).map_err(|source| PullError::Unpack {
            image: image.to_string(),
            digest: d.clone(),
            source: Box::new(source),
        })?;
    }
    let rec = ImageRecord {
        manifest_digest: digest,
        config: run,
        size_bytes: unpack::tree_size(&rootfs),
        rootfs: dst.join("rootfs"),
    };
    write_atomic(&staging.join("manifest.json"), manifest).map_err(io_err("write", staging))?;
    write_atomic(&staging.join("config.json"), config).map_err(io_err("write", staging))?;
    let meta = serde_json::to_vec_pretty(&rec).expect("an image record always serializes");
    write_atomic(&staging.join("meta.json"), &meta).map_err(io_err("write", staging))?;
    if dst.exists() {
        std::fs::remove_dir_all(dst).map_err(io_err("remove stale", dst))?;
    }
    std::fs::rename(staging, dst).map_err(io_err("move into place", dst))?;
    write_atomic(&dst.join(COMPLETE_MARKER), b"").map_err(io_err("mark complete", dst))?;
    if let Some(parent) = dst.parent() {
        sync_dir(parent).map_err(io_err("sync", parent))?;
    }
    Ok(rec)
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PullError {
    let path = path.to_path_buf();
    move |source| PullError::Io { op, path, source }
}
