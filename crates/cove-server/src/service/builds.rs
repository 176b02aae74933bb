//! Dockerfile builds for snapshots (and sandboxes created from an `Image`): the runc/image-store
//! backend of `cove-build`, the build-log files and their followers, and the reuse of images
//! built from identical `buildInfo` (Daytona's `snapshotRef`).
//!
//! ```text
//! <data>/build-cache/         cove-build's step cache
//! <data>/build-logs/<key>.log the log of one build (snapshot or sandbox id), from the start
//! <data>/build-logs/<key>.done written when the build ended; followers stop at it
//! <data>/build-refs/<ref>     manifest digest built for a snapshotRef
//! <data>/build-tmp/           per-build contexts and layer scratch space
//! ```

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cove_build::{Backend, BackendError, BaseImage, BuildRequest, Builder, Cache, LogSink, MergedView, RunStep};
use cove_image::{ImageStore, Lease, Pulled};
use cove_runtime::{Runtime, StepSpec};
use cove_types::{Digest, ErrorKind, ImageRef};

use crate::s3::ObjectStore;
use crate::store::BuildSpec;

/// CPU, memory and processes a RUN step may use.
const STEP_CPU: u32 = 2;
const STEP_MEMORY_MIB: u64 = 4096;
const STEP_PIDS: u32 = 4096;
/// How often a follower looks for more log.
const FOLLOW_POLL: Duration = Duration::from_millis(50);

/// A failed build, worded for `errorReason`.
#[derive(Debug, thiserror::Error)]
pub enum BuildFailure {
    /// A `contextHashes` entry was never uploaded.
    #[error("build context {hash} was not uploaded to object storage (expected {org}/{hash}/context.tar)")]
    MissingContext {
        /// Organization.
        org: String,
        /// The hash.
        hash: String,
    },
    /// The build itself failed (parse, step, pull…).
    #[error("{0}")]
    Build(String),
    /// Local disk trouble around the build.
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
    /// The built image could not be imported.
    #[error("import the built image: {0}")]
    Import(String),
}

/// Where FROM images come from: pulled as the building organization (its own registry
/// repositories, its private registries' credentials).
#[async_trait::async_trait]
pub trait ImageSource: Send + Sync {
    /// Pulls (or finds) `image` for organization `org`, unpacked to at most
    /// `max_unpacked_bytes`; the error is worded for `errorReason`.
    async fn pull(&self, org: &str, image: &ImageRef, max_unpacked_bytes: u64) -> Result<Pulled, String>;
}

/// Builds images; cheap to clone.
#[derive(Debug, Clone)]
pub struct BuildService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    images: Arc<ImageStore>,
    runtime: Arc<Runtime>,
    objects: ObjectStore,
    cache: Cache,
    logs: PathBuf,
    refs: PathBuf,
    tmp: PathBuf,
    /// One build per snapshotRef at a time; a second waits and reuses the first's image.
    ref_locks: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildFailure {
    let path = path.to_path_buf();
    move |source| BuildFailure::Io { op, path, source }
}

/// Log keys are record ids (uuids); anything else could name a path outside the log dir.
fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 64 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl BuildFailure {
    /// The error class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::MissingContext { .. } => ErrorKind::FailedPrecondition,
            Self::Build(_) | Self::Io { .. } | Self::Import(_) => ErrorKind::Internal,
        }
    }
}

impl BuildService {
    /// Opens the step cache and the directories under `data_dir`.
    pub fn open(
        data_dir: &Path,
        images: Arc<ImageStore>,
        runtime: Arc<Runtime>,
        objects: ObjectStore,
    ) -> Result<Self, BuildFailure> {
        let cache_dir = data_dir.join("build-cache");
        let cache = Cache::open(&cache_dir).map_err(|e| BuildFailure::Build(cove_types::error::chain(&e)))?;
        let (logs, refs, tmp) = (data_dir.join("build-logs"), data_dir.join("build-refs"), data_dir.join("build-tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        for d in [&logs, &refs, &tmp] {
            std::fs::create_dir_all(d).map_err(io("create", d))?;
        }
        Ok(BuildService {
            inner: Arc::new(Inner { images, runtime, objects, cache, logs, refs, tmp, ref_locks: Mutex::default() }),
        })
    }

    /// The step cache (listing and pruning).
    pub fn cache(&self) -> &Cache {
        &self.inner.cache
    }

    /// The step cache as `GET /builds/cache` shows it: entries (newest use first) and totals.
    pub fn cache_report(&self) -> serde_json::Value {
        let mut entries = self.inner.cache.list();
        entries.sort_by_key(|e| std::cmp::Reverse(e.last_used));
        let iso = |secs: u64| {
            chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(0), 0)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default()
        };
        let total: u64 = entries.iter().map(|e| e.size).sum();
        let items: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "key": e.key,
                    "step": e.step,
                    "sizeBytes": e.size,
                    "createdAt": iso(e.created),
                    "lastUsedAt": iso(e.last_used),
                    "layer": e.layer.as_ref().map(|l| l.digest.to_string()),
                })
            })
            .collect();
        serde_json::json!({ "entries": items, "count": entries.len(), "totalBytes": total })
    }

    /// Removes cache entries unused for `unused_for_secs` (all when `None`).
    pub async fn prune_cache(&self, unused_for_secs: Option<u64>) -> Result<serde_json::Value, BuildFailure> {
        let what = match unused_for_secs {
            Some(s) => cove_build::Prune::UnusedFor(Duration::from_secs(s)),
            None => cove_build::Prune::All,
        };
        let report =
            self.inner.cache.prune(what).await.map_err(|e| BuildFailure::Build(cove_types::error::chain(&e)))?;
        tracing::info!(entries = report.entries, bytes = report.bytes, "build cache pruned");
        Ok(serde_json::json!({ "entriesRemoved": report.entries, "bytesFreed": report.bytes }))
    }

    fn log_path(&self, key: &str) -> PathBuf {
        self.inner.logs.join(format!("{key}.log"))
    }

    fn done_path(&self, key: &str) -> PathBuf {
        self.inner.logs.join(format!("{key}.done"))
    }

    /// Starts a fresh log for `key` (a retried build logs from the beginning again).
    pub fn reset_log(&self, key: &str) {
        if valid_key(key) {
            let _ = std::fs::remove_file(self.done_path(key));
            let _ = std::fs::write(self.log_path(key), b"");
        }
    }

    /// Marks the log of `key` as complete, with a last line.
    pub fn finish_log(&self, key: &str, last_line: &str) {
        if !valid_key(key) {
            return;
        }
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(key)) {
            let _ = writeln!(f, "{last_line}");
        }
        let _ = std::fs::write(self.done_path(key), b"");
    }

    /// Removes the log of `key` (its snapshot or sandbox is gone).
    pub fn remove_log(&self, key: &str) {
        if valid_key(key) {
            let _ = std::fs::remove_file(self.log_path(key));
            let _ = std::fs::remove_file(self.done_path(key));
        }
    }

    /// The log of `key` as a byte stream from its beginning: what exists, or (`follow`) also
    /// what is written until the build ends.
    pub fn log_stream(
        &self,
        key: &str,
        follow: bool,
    ) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + use<> {
        let (log, done) = (self.log_path(key), self.done_path(key));
        let valid = valid_key(key);
        futures_util::stream::unfold((0u64, false), move |(offset, finished)| {
            let (log, done) = (log.clone(), done.clone());
            async move {
                if finished || !valid {
                    return None;
                }
                loop {
                    // Read `done` before the data: everything written before it is then seen.
                    let ended = !follow || done.exists();
                    let chunk = read_from(&log, offset).await;
                    match chunk {
                        Ok(c) if !c.is_empty() => {
                            let next = offset + c.len() as u64;
                            return Some((Ok(c), (next, false)));
                        }
                        Ok(_) if ended => return None,
                        Ok(_) => tokio::time::sleep(FOLLOW_POLL).await,
                        Err(e) => return Some((Err(e), (offset, true))),
                    }
                }
            }
        })
    }

    /// Builds `spec` for organization `org`, logging under `key`, and returns the unpacked
    /// image (leased). An image already built for the same snapshotRef is reused. Base images
    /// and the built image may unpack to at most `max_unpacked_bytes` (the disk size of the
    /// snapshot or sandbox built for).
    #[tracing::instrument(skip_all, fields(key = %key, org_id = %org, max_unpacked_bytes))]
    pub async fn build(
        &self,
        key: &str,
        org: &str,
        spec: &BuildSpec,
        source: &dyn ImageSource,
        max_unpacked_bytes: u64,
    ) -> Result<Pulled, BuildFailure> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(key))
            .map_err(io("open build log", &self.log_path(key)))?;
        let log_file = Arc::new(Mutex::new(log_file));
        let log = LogSink::new(move |bytes| {
            let mut f = log_file.lock().unwrap_or_else(|e| e.into_inner());
            let _ = f.write_all(bytes);
        });

        let snapshot_ref = spec.snapshot_ref();
        let lock = {
            let mut locks = self.inner.ref_locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(snapshot_ref.clone()).or_default().clone()
        };
        let _same_ref = lock.lock().await;
        let ref_file = self.inner.refs.join(&snapshot_ref);
        if let Some(digest) = std::fs::read_to_string(&ref_file).ok().and_then(|d| d.trim().parse::<Digest>().ok())
            && self.inner.images.image(&digest).is_some()
            && let Ok(pulled) = self.inner.images.import(&digest, max_unpacked_bytes).await
        {
            log.line(&format!("Reusing image {digest}, built before from the same Dockerfile and context"));
            return Ok(pulled);
        }

        let work = tempfile::Builder::new()
            .prefix("b")
            .tempdir_in(&self.inner.tmp)
            .map_err(io("create build directory", &self.inner.tmp))?;
        let context_dir = work.path().join("context");
        std::fs::create_dir_all(&context_dir).map_err(io("create", &context_dir))?;
        let mut tars = Vec::new();
        for hash in &spec.context_hashes {
            let tar = self
                .inner
                .objects
                .context_tar(org, hash)
                .ok_or_else(|| BuildFailure::MissingContext { org: org.into(), hash: hash.clone() })?;
            tars.push(tar);
        }
        let extract_dir = context_dir.clone();
        tokio::task::spawn_blocking(move || cove_build::extract_tars(&tars, &extract_dir))
            .await
            .map_err(|e| BuildFailure::Build(format!("extract the build context: {e}")))?
            .map_err(|e| BuildFailure::Build(format!("extract the build context: {}", cove_types::error::chain(&e))))?;

        let backend = RuncBackend {
            source,
            org: org.to_string(),
            max_unpacked_bytes,
            images: self.inner.images.clone(),
            runtime: self.inner.runtime.clone(),
            scratch: work.path().to_path_buf(),
            leases: Mutex::default(),
        };
        let req = BuildRequest {
            dockerfile: spec.dockerfile.clone(),
            build_args: Default::default(),
            context_dir,
            target: None,
        };
        let out = Builder::new(&backend, &self.inner.cache, self.inner.images.content())
            .build(&req, &log)
            .await
            .map_err(|e| BuildFailure::Build(e.reason()))?;
        let pulled = self
            .inner
            .images
            .import(&out.manifest_digest, max_unpacked_bytes)
            .await
            .map_err(|e| BuildFailure::Import(cove_types::error::chain(&e)))?;
        if let Err(e) = cove_types::fs::write_atomic(&ref_file, out.manifest_digest.to_string().as_bytes()) {
            tracing::warn!(error = %e, "cannot record the build's snapshotRef; an identical build will run again");
        }
        tracing::info!(manifest = %out.manifest_digest, cache_hits = out.cache_hits, "image built");
        Ok(pulled)
    }
}

async fn read_from(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
    let mut f = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    f.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = f.read(&mut buf).await?;
    buf.truncate(n);
    Ok(buf)
}

/// `cove-build`'s backend: images from the image store, RUN steps in runc, overlay views.
struct RuncBackend<'a> {
    source: &'a dyn ImageSource,
    org: String,
    /// What base images may unpack to.
    max_unpacked_bytes: u64,
    images: Arc<ImageStore>,
    runtime: Arc<Runtime>,
    /// Per-build scratch space (mount points of views).
    scratch: PathBuf,
    /// Base images stay leased (safe from GC) for the whole build.
    leases: Mutex<Vec<Lease>>,
}

fn backend_err(
    op: impl Into<String>,
    kind: ErrorKind,
    e: impl std::error::Error + Send + Sync + 'static,
) -> BackendError {
    BackendError::new(op, kind, e)
}

#[async_trait::async_trait]
impl Backend for RuncBackend<'_> {
    async fn base_image(&self, image: &str) -> Result<BaseImage, BackendError> {
        let op = format!("pull {image}");
        let r = ImageRef::parse(image).map_err(|e| backend_err(op.clone(), ErrorKind::InvalidArgument, e))?;
        let pulled = self
            .source
            .pull(&self.org, &r, self.max_unpacked_bytes)
            .await
            .map_err(|e| backend_err(op.clone(), ErrorKind::FailedPrecondition, std::io::Error::other(e)))?;
        let digest = pulled.record.manifest_digest.clone();
        let rootfs = pulled.record.rootfs.clone();
        self.leases.lock().unwrap_or_else(|e| e.into_inner()).push(pulled.lease);
        let stored = self.images.manifest(&digest).ok_or_else(|| {
            backend_err(op.clone(), ErrorKind::Internal, std::io::Error::other("the pulled manifest is not stored"))
        })?;
        let config = serde_json::from_slice(&stored.config_bytes)
            .map_err(|e| backend_err(format!("read the config of {image}"), ErrorKind::InvalidArgument, e))?;
        Ok(BaseImage { manifest_digest: digest, config, layers: stored.manifest.layers.unwrap_or_default(), rootfs })
    }

    async fn run(&self, step: RunStep<'_>, log: &LogSink) -> Result<i32, BackendError> {
        let spec = StepSpec {
            id: uuid::Uuid::new_v4().simple().to_string(),
            lowers: step.lowers.to_vec(),
            upper: step.upper.to_path_buf(),
            // The step writes to a disk of the build's size (its changes are copied off it).
            disk_mib: (self.max_unpacked_bytes >> 20).max(8),
            argv: step.argv.to_vec(),
            env: step.env.to_vec(),
            workdir: step.workdir.to_string(),
            user: Some(step.user.to_string()).filter(|u| !u.is_empty()),
            // Like `docker build`: network unless `RUN --network=none` (the planner refuses
            // `host`); a sandbox-like port on the isolated bridge behind the same NAT, DNS
            // forwarder and blocks as sandboxes, never the host's network.
            network: step.network != Some("none"),
            cpu: STEP_CPU,
            memory_mib: STEP_MEMORY_MIB,
            pids: STEP_PIDS,
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let sink = log.clone();
        let forward = tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                sink.write(&chunk);
            }
        });
        let result = self.runtime.run_step(&spec, tx).await;
        let _ = forward.await;
        result.map_err(|e| {
            let kind = e.kind();
            backend_err("run the step in a build container", kind, e)
        })
    }

    async fn view(&self, lowers: &[PathBuf]) -> Result<Box<dyn MergedView>, BackendError> {
        let target = self.scratch.join(format!("view-{}", uuid::Uuid::new_v4().simple()));
        cove_runtime::disk::mount_readonly_view(lowers, &target)
            .map_err(|e| backend_err("mount a merged view of a stage", ErrorKind::Internal, e))?;
        Ok(Box::new(View { root: target }))
    }
}

/// A read-only merged view, unmounted when dropped.
struct View {
    root: PathBuf,
}

impl MergedView for View {
    fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for View {
    fn drop(&mut self) {
        if let Err(e) = cove_runtime::disk::unmount(&self.root) {
            tracing::warn!(path = %self.root.display(), error = %e, "unmount a build view");
        }
        let _ = std::fs::remove_dir(&self.root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_are_ids_and_never_paths() {
        assert!(valid_key("0b1c2d3e-aaaa-bbbb-cccc-1234567890ab"));
        for bad in ["", "../x", "a/b", ".", "a.log", &"x".repeat(65)] {
            assert!(!valid_key(bad), "{bad}");
        }
    }
}
