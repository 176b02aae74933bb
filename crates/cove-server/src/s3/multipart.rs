//! Multipart uploads in progress: which exist, when each was last used, and the bytes its
//! parts hold.
//!
//! Contract: the [`Tracker`], not the disk, says whether an upload exists. Every request
//! naming one goes through [`Tracker::begin`], which answers [`ObjectError::NoSuchUpload`] for
//! an id it does not hold and otherwise marks the upload in use until the returned [`InUse`]
//! is dropped (a request dropped mid-body included). An upload not in use and without a
//! request for the idle time (`--upload-idle-secs`) is swept: taken out of the tracker, so
//! later requests get `NoSuchUpload`, then its directory is deleted and its bytes given back.
//! Each upload's parts are charged to its organization (the key's first segment) in the
//! [`Staging`] ledger shared with the registry's uploads; completion, abort and sweeping give
//! them back. Last activity is kept on disk too, as the mtime of the upload's `upload.json`
//! (touched on every request; a crash loses at most that touch), so that at start an upload
//! idle for longer than the idle time is removed and the others are tracked again, their
//! parts on disk charged whatever the limit.
//!
//! The `.uploads/` directory lies inside the data directory, which no sandbox or host user
//! reaches, so the touch may open `upload.json` by name.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::store::ObjectError;
use crate::staging::{Charge, Staging};

/// What `upload.json` records.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct UploadRecord {
    pub(crate) bucket: String,
    pub(crate) key: String,
    pub(crate) created: DateTime<Utc>,
}

/// The uploads in progress.
#[derive(Debug)]
pub(crate) struct Tracker {
    uploads: Mutex<HashMap<String, Entry>>,
    staging: Staging,
}

/// One upload in progress.
#[derive(Debug)]
pub(crate) struct Entry {
    bucket: String,
    key: String,
    pub(crate) dir: PathBuf,
    /// Requests naming it now.
    in_use: u32,
    /// When the last request ended (or began, while one runs).
    last_used: Instant,
    /// What its parts hold, charged to its organization.
    charge: Charge,
    /// Bytes of each part on disk.
    parts: BTreeMap<u32, u64>,
    /// Held while a part is moved into place, and across completion and abort, so that no part
    /// lands in a directory being joined or deleted.
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl Entry {
    pub(crate) fn bytes(&self) -> u64 {
        self.charge.bytes()
    }
}

/// An upload marked in use by one request; the mark goes (and the idle clock restarts) when
/// this is dropped.
#[derive(Debug)]
pub(crate) struct InUse {
    tracker: Arc<Tracker>,
    id: String,
    dir: PathBuf,
    org: String,
    gate: Arc<tokio::sync::Mutex<()>>,
}

/// The organization an object key belongs to: its first segment.
pub(crate) fn org_of(key: &str) -> &str {
    key.split('/').next().unwrap_or(key)
}

/// The part number of a part file's name (`part-00001`), if it is one.
fn part_number(name: &str) -> Option<u32> {
    name.strip_prefix("part-").filter(|n| n.len() == 5 && n.bytes().all(|b| b.is_ascii_digit()))?.parse().ok()
}

/// Sets the mtime of `dir/upload.json` to now: the upload's last activity, as a restart sees it.
fn touch(dir: &Path) {
    let p = dir.join("upload.json");
    if let Err(e) = std::fs::File::open(&p).and_then(|f| f.set_modified(SystemTime::now())) {
        tracing::debug!(path = %p.display(), error = %e, "could not record a multipart upload's activity");
    }
}

impl Tracker {
    /// Tracks the uploads under `uploads_dir` again: one idle for `idle` or longer (by its
    /// `upload.json`'s mtime) or without a readable record is deleted; the others' parts are
    /// charged to `staging`.
    pub(crate) fn load(uploads_dir: &Path, staging: Staging) -> Tracker {
        let idle = staging.limits().idle;
        let tracker = Tracker { uploads: Mutex::default(), staging };
        let Ok(entries) = std::fs::read_dir(uploads_dir) else { return tracker };
        for e in entries.flatten() {
            let dir = e.path();
            let id = e.file_name().to_string_lossy().into_owned();
            let json = dir.join("upload.json");
            let record: Option<UploadRecord> = std::fs::read(&json).ok().and_then(|b| serde_json::from_slice(&b).ok());
            let age = std::fs::symlink_metadata(&json)
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default())
                .unwrap_or(Duration::MAX);
            let Some(record) =
                record.filter(|_| age < idle && valid_id(&id) && e.file_type().is_ok_and(|t| t.is_dir()))
            else {
                tracing::info!(upload_id = %id, idle_secs = age.as_secs(), "stale multipart upload removed at start");
                let _ = std::fs::remove_dir_all(&dir).or_else(|_| std::fs::remove_file(&dir));
                continue;
            };
            let mut parts = BTreeMap::new();
            for p in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = p.file_name();
                let Some(n) = name.to_str().and_then(part_number) else { continue };
                if let Ok(m) = p.metadata()
                    && m.is_file()
                {
                    parts.insert(n, m.len());
                }
            }
            let mut charge = tracker.staging.charge(org_of(&record.key));
            charge.force(parts.values().sum());
            let last_used = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
            tracker.map().insert(
                id,
                Entry {
                    bucket: record.bucket,
                    key: record.key,
                    dir,
                    in_use: 0,
                    last_used,
                    charge,
                    parts,
                    gate: Arc::default(),
                },
            );
        }
        tracker
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.uploads.lock().expect("multipart tracker is never poisoned")
    }

    /// The ledger parts are charged to.
    pub(crate) fn staging(&self) -> &Staging {
        &self.staging
    }

    /// Tracks a new upload whose directory and record were just written.
    pub(crate) fn insert(&self, id: &str, bucket: &str, key: &str, dir: PathBuf, charge: Charge) {
        let entry = Entry {
            bucket: bucket.into(),
            key: key.into(),
            dir,
            in_use: 0,
            last_used: Instant::now(),
            charge,
            parts: BTreeMap::new(),
            gate: Arc::default(),
        };
        self.map().insert(id.to_string(), entry);
    }

    /// Marks upload `id` of `bucket/key` in use, or answers `NoSuchUpload` (unknown, finished,
    /// swept, or another key's).
    pub(crate) fn begin(self: &Arc<Self>, id: &str, bucket: &str, key: &str) -> Result<InUse, ObjectError> {
        let in_use = {
            let mut map = self.map();
            let e = map
                .get_mut(id)
                .filter(|e| e.bucket == bucket && e.key == key)
                .ok_or_else(|| ObjectError::NoSuchUpload(id.to_string()))?;
            e.in_use += 1;
            e.last_used = Instant::now();
            InUse {
                tracker: self.clone(),
                id: id.to_string(),
                dir: e.dir.clone(),
                org: e.charge.org().to_string(),
                gate: e.gate.clone(),
            }
        };
        touch(&in_use.dir);
        Ok(in_use)
    }

    /// Takes out the uploads not in use and idle for `idle` or longer; the caller deletes
    /// their directories, then drops them (giving their bytes back).
    pub(crate) fn take_idle(&self, idle: Duration) -> Vec<(String, Entry)> {
        let mut map = self.map();
        let ids: Vec<String> = map
            .iter()
            .filter(|(_, e)| e.in_use == 0 && e.last_used.elapsed() >= idle)
            .map(|(id, _)| id.clone())
            .collect();
        ids.into_iter().filter_map(|id| map.remove(&id).map(|e| (id, e))).collect()
    }
}

/// Whether `id` has the shape this store gives upload ids (so it names one directory).
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl InUse {
    /// The upload's staging directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The organization its bytes are charged to.
    pub(crate) fn org(&self) -> &str {
        &self.org
    }

    /// An empty charge to the upload's organization (for a part while it arrives).
    pub(crate) fn charge(&self) -> Charge {
        self.tracker.staging.charge(&self.org)
    }

    /// Waits for the upload's gate (see [`Entry::gate`]).
    pub(crate) async fn gate(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.gate.clone().lock_owned().await
    }

    /// `NoSuchUpload` if the upload was completed or aborted meanwhile.
    pub(crate) fn check_live(&self) -> Result<(), ObjectError> {
        if self.tracker.map().contains_key(&self.id) { Ok(()) } else { Err(ObjectError::NoSuchUpload(self.id.clone())) }
    }

    /// Records part `n` of `size` bytes, now in place, taking over `charge`; what a part it
    /// replaced held is given back.
    pub(crate) fn record_part(&self, n: u32, size: u64, charge: Charge) -> Result<(), ObjectError> {
        let mut map = self.tracker.map();
        let e = map.get_mut(&self.id).ok_or_else(|| ObjectError::NoSuchUpload(self.id.clone()))?;
        e.charge.absorb(charge);
        if let Some(old) = e.parts.insert(n, size) {
            e.charge.release(old);
        }
        Ok(())
    }

    /// The parts on record, by number, with their sizes.
    pub(crate) fn parts(&self) -> Result<Vec<(u32, u64)>, ObjectError> {
        let map = self.tracker.map();
        let e = map.get(&self.id).ok_or_else(|| ObjectError::NoSuchUpload(self.id.clone()))?;
        Ok(e.parts.iter().map(|(n, s)| (*n, *s)).collect())
    }

    /// Ends the upload: takes it out of the tracker (later requests get `NoSuchUpload`). The
    /// caller deletes its directory, then drops the entry (giving its bytes back).
    pub(crate) fn end(&self) -> Result<Entry, ObjectError> {
        self.tracker.map().remove(&self.id).ok_or_else(|| ObjectError::NoSuchUpload(self.id.clone()))
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        if let Some(e) = self.tracker.map().get_mut(&self.id) {
            e.in_use = e.in_use.saturating_sub(1);
            e.last_used = Instant::now();
        }
    }
}

/// Sweeps idle uploads every so often (a quarter of the idle time, 1 to 30 s) for as long as
/// the tracker exists.
pub(crate) fn spawn_sweeper(tracker: &Arc<Tracker>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
    let weak: Weak<Tracker> = Arc::downgrade(tracker);
    let idle = tracker.staging.limits().idle;
    let every = (idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    rt.spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(tracker) = weak.upgrade() else { return };
            sweep(&tracker, idle).await;
        }
    });
}

/// Removes the uploads idle for `idle` or longer, with their parts.
pub(crate) async fn sweep(tracker: &Tracker, idle: Duration) {
    for (id, entry) in tracker.take_idle(idle) {
        if let Err(e) = tokio::fs::remove_dir_all(&entry.dir).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(upload_id = %id, path = %entry.dir.display(), error = %e, "could not delete an idle multipart upload");
        }
        tracing::info!(
            upload_id = %id,
            org_id = %entry.charge.org(),
            key = %entry.key,
            bytes = entry.bytes(),
            "idle multipart upload removed"
        );
    }
}
