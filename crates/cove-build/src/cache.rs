//! The step cache: finished layer directories and their blobs, by cache key.
//!
//! A key is the sha256 of the parent step's key, the step's canonical text after
//! substitution (for RUN that includes the environment, hence the build args it can see),
//! and what the step reads from outside (the content hash of COPY sources, the base image's
//! manifest digest). Layout:
//!
//! ```text
//! <cache-dir>/
//!   entries/<key>.json    CacheEntry: step text, times, size, the layer blob's digests
//!   layers/<key>/         the layer in overlay upper format (a lowerdir for later RUNs)
//!   tmp/                  steps being executed (emptied at open)
//! ```
//!
//! The JSON file is written last (temp file + rename), so an entry that exists is complete.
//! An entry that cannot be read is removed and treated as a miss. Builds hold a shared
//! [`Cache::lease`] while they use layer directories; [`Cache::prune`] takes it exclusively.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::layer::LayerBlob;

/// A failed cache operation.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Creating the cache directories failed.
    #[error("create cache directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Storing an entry failed.
    #[error("store cache entry {key}")]
    Insert {
        /// The key.
        key: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Removing entries failed.
    #[error("remove cache entry {key}")]
    Remove {
        /// The key.
        key: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

impl CacheError {
    /// Cache failures are ours.
    pub fn kind(&self) -> cove_types::ErrorKind {
        cove_types::ErrorKind::Internal
    }
}

/// One cached step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The cache key (64 hex).
    pub key: String,
    /// The step as written (`RUN apt-get update`).
    pub step: String,
    /// Unix seconds when it was built.
    pub created: u64,
    /// Unix seconds when it was last used.
    pub last_used: u64,
    /// Bytes in the layer directory.
    pub size: u64,
    /// The OCI layer made from it, if the step produced one.
    pub layer: Option<LayerBlob>,
}

/// A cache hit: the entry and its layer directory.
#[derive(Debug, Clone)]
pub struct CacheHit {
    /// The entry.
    pub entry: CacheEntry,
    /// The layer directory (overlay upper format), when the step produced one.
    pub dir: Option<PathBuf>,
}

/// What [`Cache::prune`] removes.
#[derive(Debug, Clone, Copy)]
pub enum Prune {
    /// Everything.
    All,
    /// Entries not used for this long.
    UnusedFor(Duration),
}

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Entries removed.
    pub entries: usize,
    /// Bytes of layer directories freed.
    pub bytes: u64,
}

/// The step cache (see the module docs).
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    lock: Arc<tokio::sync::RwLock<()>>,
}

/// A temporary directory under the cache's `tmp/`, removed on drop unless
/// [`ScratchDir::keep`] was called. Being on the cache's filesystem, it can be renamed into
/// place and can hold an overlay upper and work directory.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    keep: bool,
}

impl ScratchDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Disarms the cleanup (the directory was moved away).
    pub fn keep(mut self) -> PathBuf {
        self.keep = true;
        self.path.clone()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The cache key of a step: sha256 over the parent key, the step's canonical text and what
/// it reads from outside (COPY content hash, base manifest digest).
pub fn step_key(parent: &str, text: &str, inputs: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(b"cove-build/v1\0");
    h.update(parent.as_bytes());
    h.update(b"\0");
    h.update(text.as_bytes());
    h.update(b"\0");
    h.update(inputs.as_bytes());
    hex::encode(h.finalize())
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn valid_key(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl Cache {
    /// Opens (creating) the cache under `root`, emptying `tmp/` and removing layer
    /// directories without an entry (debris of a crash). Call it once at server start,
    /// before any build runs.
    pub fn open(root: &Path) -> Result<Self, CacheError> {
        let c = Cache { root: root.to_path_buf(), lock: Arc::new(tokio::sync::RwLock::new(())) };
        let tmp = c.root.join("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        for d in [c.root.join("entries"), c.root.join("layers"), tmp] {
            std::fs::create_dir_all(&d).map_err(|source| CacheError::CreateDir { path: d.clone(), source })?;
        }
        if let Ok(rd) = std::fs::read_dir(c.root.join("layers")) {
            for e in rd.flatten() {
                let key = e.file_name().to_string_lossy().into_owned();
                if !c.entry_path(&key).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(c)
    }

    fn entry_path(&self, key: &str) -> PathBuf {
        self.root.join("entries").join(format!("{key}.json"))
    }

    fn layer_path(&self, key: &str) -> PathBuf {
        self.root.join("layers").join(key)
    }

    /// A shared hold that keeps [`Cache::prune`] from removing layer directories a build uses.
    pub async fn lease(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.lock.clone().read_owned().await
    }

    /// A fresh scratch directory on the cache's filesystem.
    pub fn scratch(&self) -> Result<ScratchDir, CacheError> {
        let path = self.root.join("tmp").join(uuid::Uuid::new_v4().to_string());
        std::fs::create_dir_all(&path).map_err(|source| CacheError::CreateDir { path: path.clone(), source })?;
        Ok(ScratchDir { path, keep: false })
    }

    /// Looks up a key, refreshing its last use. A corrupt or incomplete entry is removed and
    /// reported as a miss.
    pub fn lookup(&self, key: &str) -> Option<CacheHit> {
        if !valid_key(key) {
            return None;
        }
        let path = self.entry_path(key);
        let bytes = std::fs::read(&path).ok()?;
        let mut entry: CacheEntry = match serde_json::from_slice(&bytes) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(key, error = %e, "corrupt build cache entry removed");
                self.remove(key);
                return None;
            }
        };
        let dir = self.layer_path(key);
        let dir = if entry.layer.is_some() {
            if !dir.is_dir() || entry.key != key {
                tracing::warn!(key, "incomplete build cache entry removed");
                self.remove(key);
                return None;
            }
            Some(dir)
        } else {
            None
        };
        entry.last_used = now();
        if let Ok(json) = serde_json::to_vec_pretty(&entry) {
            // Best effort: a stale last-use time only makes pruning less precise.
            let _ = write_atomic_unique(&path, &json);
        }
        Some(CacheHit { entry, dir })
    }

    /// Stores a step's result: `dir` (a layer directory, typically a [`ScratchDir`] that the
    /// caller then [`ScratchDir::keep`]s) is moved into the cache. If another build stored
    /// the same key meanwhile, that entry wins and `dir` is removed.
    pub fn insert(
        &self,
        key: &str,
        step: &str,
        dir: Option<&Path>,
        layer: Option<LayerBlob>,
    ) -> Result<CacheHit, CacheError> {
        let fail = |source| CacheError::Insert { key: key.to_string(), source };
        if !valid_key(key) {
            return Err(fail(io::Error::new(io::ErrorKind::InvalidInput, "cache keys are 64 lowercase hex")));
        }
        let mut size = 0;
        let final_dir = match dir {
            Some(d) => {
                size = cove_image::unpack::tree_size(d);
                let dst = self.layer_path(key);
                if let Err(e) = std::fs::rename(d, &dst) {
                    if dst.is_dir() && self.entry_path(key).exists() {
                        let _ = std::fs::remove_dir_all(d);
                        if let Some(hit) = self.lookup(key) {
                            return Ok(hit);
                        }
                    }
                    return Err(fail(e));
                }
                Some(dst)
            }
            None => None,
        };
        let t = now();
        let entry = CacheEntry { key: key.to_string(), step: step.to_string(), created: t, last_used: t, size, layer };
        let json = serde_json::to_vec_pretty(&entry).map_err(|e| fail(io::Error::other(e)))?;
        write_atomic_unique(&self.entry_path(key), &json).map_err(fail)?;
        Ok(CacheHit { entry, dir: final_dir })
    }

    /// Replaces the blob recorded for an entry (after regenerating a garbage-collected blob).
    pub fn set_layer(&self, key: &str, layer: LayerBlob) -> Result<(), CacheError> {
        let fail = |source| CacheError::Insert { key: key.to_string(), source };
        let path = self.entry_path(key);
        let bytes = std::fs::read(&path).map_err(fail)?;
        let mut entry: CacheEntry = serde_json::from_slice(&bytes).map_err(|e| fail(io::Error::other(e)))?;
        entry.layer = Some(layer);
        let json = serde_json::to_vec_pretty(&entry).map_err(|e| fail(io::Error::other(e)))?;
        write_atomic_unique(&path, &json).map_err(fail)
    }

    /// Every readable entry, most recently used first.
    pub fn list(&self) -> Vec<CacheEntry> {
        let Ok(rd) = std::fs::read_dir(self.root.join("entries")) else { return Vec::new() };
        let mut out: Vec<CacheEntry> = rd
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect();
        out.sort_by(|a, b| b.last_used.cmp(&a.last_used).then_with(|| a.key.cmp(&b.key)));
        out
    }

    /// Removes entries (waits for running builds to release their leases).
    pub async fn prune(&self, what: Prune) -> Result<PruneReport, CacheError> {
        let _exclusive = self.lock.write().await;
        let cutoff = match what {
            Prune::All => u64::MAX,
            Prune::UnusedFor(d) => now().saturating_sub(d.as_secs()),
        };
        let mut report = PruneReport::default();
        for e in self.list() {
            if matches!(what, Prune::All) || e.last_used < cutoff {
                self.try_remove(&e.key)?;
                report.entries += 1;
                report.bytes += e.size;
            }
        }
        // Unreadable entries go too.
        if let Ok(rd) = std::fs::read_dir(self.root.join("entries")) {
            for f in rd.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if let Some(key) = name.strip_suffix(".json")
                    && serde_json::from_slice::<CacheEntry>(&std::fs::read(f.path()).unwrap_or_default()).is_err()
                {
                    self.try_remove(key)?;
                }
            }
        }
        Ok(report)
    }

    fn remove(&self, key: &str) {
        let _ = self.try_remove(key);
    }

    fn try_remove(&self, key: &str) -> Result<(), CacheError> {
        let fail = |source| CacheError::Remove { key: key.to_string(), source };
        // Entry first: without it the directory is debris, never a half-entry.
        match std::fs::remove_file(self.entry_path(key)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(e)),
        }
        match std::fs::remove_dir_all(self.layer_path(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(fail(e)),
        }
    }
}

/// `write_atomic` with a temp name unique per call, so two tasks of one process updating the
/// same entry cannot trample each other's temp file.
fn write_atomic_unique(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        cove_types::fs::sync_dir(dir)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob() -> LayerBlob {
        let d = cove_image::content::sha256(b"x");
        LayerBlob { digest: d.clone(), size: 1, diff_id: d }
    }

    #[test]
    fn an_inserted_layer_is_found_and_listed() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path()).unwrap();
        let key = step_key("", "RUN x", "");
        let s = c.scratch().unwrap();
        std::fs::write(s.path().join("f"), "12345").unwrap();
        let hit = c.insert(&key, "RUN x", Some(s.path()), Some(blob())).unwrap();
        s.keep();
        assert_eq!(std::fs::read_to_string(hit.dir.unwrap().join("f")).unwrap(), "12345");
        let again = c.lookup(&key).unwrap();
        assert_eq!(again.entry.layer, Some(blob()));
        let list = c.list();
        assert_eq!((list.len(), list[0].step.as_str(), list[0].size), (1, "RUN x", 5));
        assert!(c.lookup(&step_key("", "RUN y", "")).is_none());
    }

    #[test]
    fn keys_depend_on_parent_text_and_inputs() {
        let k = step_key("p", "RUN x", "i");
        assert_ne!(k, step_key("q", "RUN x", "i"));
        assert_ne!(k, step_key("p", "RUN y", "i"));
        assert_ne!(k, step_key("p", "RUN x", "j"));
        assert_eq!(k.len(), 64);
    }

    #[test]
    fn a_corrupt_entry_is_a_miss_and_is_removed() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path()).unwrap();
        let key = step_key("", "RUN x", "");
        std::fs::write(t.path().join("entries").join(format!("{key}.json")), "{not json").unwrap();
        assert!(c.lookup(&key).is_none());
        assert!(!t.path().join("entries").join(format!("{key}.json")).exists());
        let key2 = step_key("", "RUN y", "");
        c.insert(&key2, "RUN y", None, Some(blob())).unwrap();
        assert!(c.lookup(&key2).is_none(), "a layer entry without its directory is incomplete");
    }

    #[tokio::test]
    async fn prune_removes_old_or_all_entries_and_their_directories() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path()).unwrap();
        for text in ["RUN a", "RUN b"] {
            let key = step_key("", text, "");
            let s = c.scratch().unwrap();
            std::fs::write(s.path().join("f"), "ab").unwrap();
            c.insert(&key, text, Some(s.path()), Some(blob())).unwrap();
            s.keep();
        }
        let r = c.prune(Prune::UnusedFor(Duration::from_secs(3600))).await.unwrap();
        assert_eq!(r.entries, 0);
        let r = c.prune(Prune::All).await.unwrap();
        assert_eq!(r, PruneReport { entries: 2, bytes: 4 });
        assert!(c.list().is_empty());
        assert_eq!(std::fs::read_dir(t.path().join("layers")).unwrap().count(), 0);
    }

    #[test]
    fn reopening_clears_temporary_and_orphaned_directories() {
        let t = tempfile::tempdir().unwrap();
        let c = Cache::open(t.path()).unwrap();
        let s = c.scratch().unwrap();
        let leftover = s.keep();
        std::fs::create_dir_all(t.path().join("layers").join("f".repeat(64))).unwrap();
        Cache::open(t.path()).unwrap();
        assert!(!leftover.exists());
        assert_eq!(std::fs::read_dir(t.path().join("layers")).unwrap().count(), 0);
    }
}
