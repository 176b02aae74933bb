//! Objects on the local disk, with keys confined to their bucket directory.
//!
//! Layout:
//! ```text
//! <data-dir>/objects/
//!   <bucket>/<key>              object bytes (e.g. cove-builds/<org>/<hash>/context.tar)
//!   .meta/<bucket>/<key>        {"etag", "crc32"} beside each object
//!   .tmp/<uuid>                 writes in progress: renamed into place when complete (emptied at start)
//!   .uploads/<upload-id>/       a multipart upload: upload.json, part-00001, part-00001.etag, …
//! ```
//! Writes in progress are [`TempFile`]s, deleted when dropped: a request whose body breaks off,
//! or whose future is dropped because its client went away, leaves nothing in `.tmp/`.
//! Multipart uploads are tracked by [`super::multipart`]: idle ones are swept, and their parts
//! count against the organization's staging limit.
//! Bucket names cannot start with `.`, so the bookkeeping directories never collide with one.
//! A key is a `/`-separated path of non-empty segments other than `.` and `..`: it cannot leave
//! its bucket. Readers may open an object at any time: replacing it is a rename, so an open
//! file keeps its old content.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cove_types::ErrorKind;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::multipart::{self, InUse, Tracker, UploadRecord};
use crate::staging::{Charge, OverLimit, Staging};

/// The bucket build contexts go to.
pub const BUILD_BUCKET: &str = "cove-builds";
/// Longest key S3 allows.
pub const MAX_KEY_LEN: usize = 1024;
/// The object store root.
#[derive(Debug, Clone)]
pub struct ObjectStore {
    root: PathBuf,
    uploads: Arc<Tracker>,
}

/// A file in `.tmp/` for a write in progress, deleted when dropped unless it was moved into
/// place ([`TempFile::persisted`]).
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    /// Where to write.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file was renamed away: nothing to delete.
    fn persisted(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            match std::fs::remove_file(&self.path) {
                Ok(()) => tracing::debug!(path = %self.path.display(), "unfinished write deleted"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "could not delete an unfinished write")
                }
            }
        }
    }
}

/// A part of a multipart upload, as ListParts shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    /// Its number.
    pub number: u32,
    /// Bytes.
    pub size: u64,
    /// Its ETag, without quotes.
    pub etag: String,
    /// When it was stored.
    pub last_modified: DateTime<Utc>,
}

/// What is known about a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Bytes.
    pub size: u64,
    /// Modification time of the file.
    pub last_modified: DateTime<Utc>,
    /// Entity tag without quotes: hex MD5, or `md5-of-md5s-N` after a multipart upload.
    pub etag: String,
    /// Base64 CRC32 the client sent, if it sent one.
    pub crc32: Option<String>,
}

/// The sidecar kept next to each object.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredMeta {
    /// Entity tag without quotes.
    pub etag: String,
    /// Base64 CRC32, when the client sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<String>,
}

/// A listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its key.
    pub key: String,
    /// Its metadata.
    pub meta: ObjectMeta,
}

/// A failed object store operation.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The key would leave its bucket or is not a valid key.
    #[error("invalid object key {0:?}: it must be a relative path of non-empty segments without '.' or '..'")]
    InvalidKey(String),
    /// The bucket name is not valid.
    #[error("invalid bucket name {0:?}")]
    InvalidBucket(String),
    /// No object under that key.
    #[error("no object {bucket}/{key}")]
    NoSuchKey {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
    },
    /// No multipart upload with that id for that key.
    #[error("no multipart upload {0}")]
    NoSuchUpload(String),
    /// A part named in the completion is missing or has another ETag.
    #[error("part {0} was not uploaded or its ETag does not match")]
    InvalidPart(u32),
    /// Parts are not in ascending order.
    #[error("parts must be listed in ascending order")]
    InvalidPartOrder,
    /// The key clashes with an existing object or prefix (`a` and `a/b` cannot both exist here).
    #[error("object key {0:?} clashes with an existing object or prefix")]
    KeyConflict(String),
    /// The organization's unfinished uploads would hold more than `--upload-staging-limit-mib`.
    #[error(transparent)]
    OverLimit(#[from] OverLimit),
    /// Filesystem failure.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl ObjectError {
    /// The class of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ObjectError::InvalidKey(_)
            | ObjectError::InvalidBucket(_)
            | ObjectError::InvalidPart(_)
            | ObjectError::InvalidPartOrder => ErrorKind::InvalidArgument,
            ObjectError::NoSuchKey { .. } | ObjectError::NoSuchUpload(_) => ErrorKind::NotFound,
            ObjectError::KeyConflict(_) => ErrorKind::AlreadyExists,
            ObjectError::OverLimit(_) => ErrorKind::PermissionDenied,
            ObjectError::Io { .. } => ErrorKind::Internal,
        }
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ObjectError + 'a {
    move |source| ObjectError::Io { op, path: path.to_path_buf(), source }
}

/// Checks that `key` is a confined relative path.
pub fn validate_key(key: &str) -> Result<(), ObjectError> {
    let bad = key.is_empty()
        || key.len() > MAX_KEY_LEN
        || key.contains('\0')
        || key.split('/').any(|s| s.is_empty() || s == "." || s == "..");
    if bad { Err(ObjectError::InvalidKey(key.to_string())) } else { Ok(()) }
}

/// Checks S3's bucket naming rules (3–63 of `a-z0-9.-`, starting and ending alphanumeric).
pub fn validate_bucket(bucket: &str) -> Result<(), ObjectError> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok { Ok(()) } else { Err(ObjectError::InvalidBucket(bucket.to_string())) }
}

impl ObjectStore {
    /// Opens (creating) `<data_dir>/objects` and empties `.tmp`. Multipart uploads idle for
    /// `staging`'s idle time are deleted, the others' parts charged to `staging`; a sweeper
    /// (when a runtime is running) removes uploads that go idle later.
    pub fn open(data_dir: &Path, staging: Staging) -> Result<Self, ObjectError> {
        let root = data_dir.join("objects");
        let tmp = root.join(".tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        for d in [tmp, root.join(".uploads"), root.join(".meta"), root.join(BUILD_BUCKET)] {
            std::fs::create_dir_all(&d).map_err(io("create directory", &d))?;
        }
        let uploads = Arc::new(Tracker::load(&root.join(".uploads"), staging));
        multipart::spawn_sweeper(&uploads);
        Ok(ObjectStore { root, uploads })
    }

    /// The ledger uploads are charged to.
    pub fn staging(&self) -> &Staging {
        self.uploads.staging()
    }

    /// The file holding `bucket/key` if that object exists. This is how the builder reads an
    /// uploaded context: `store.path(BUILD_BUCKET, &format!("{org}/{hash}/context.tar"))`.
    pub fn path(&self, bucket: &str, key: &str) -> Option<PathBuf> {
        let p = self.object_path(bucket, key).ok()?;
        std::fs::metadata(&p).ok().filter(|m| m.is_file()).map(|_| p)
    }

    /// The `context.tar` an SDK uploaded for `org_id` under `context_hash` (the build's
    /// `contextHashes` entry), if it exists.
    pub fn context_tar(&self, org_id: &str, context_hash: &str) -> Option<PathBuf> {
        if org_id.contains('/') || context_hash.contains('/') {
            return None;
        }
        self.path(BUILD_BUCKET, &format!("{org_id}/{context_hash}/context.tar"))
    }

    /// Where `bucket/key` lives (whether or not it exists).
    pub fn object_path(&self, bucket: &str, key: &str) -> Result<PathBuf, ObjectError> {
        validate_bucket(bucket)?;
        validate_key(key)?;
        Ok(self.root.join(bucket).join(key))
    }

    fn meta_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(".meta").join(bucket).join(key)
    }

    /// A fresh path in the staging directory for a write in progress.
    fn temp_path(&self) -> PathBuf {
        self.root.join(".tmp").join(uuid::Uuid::new_v4().simple().to_string())
    }

    /// A fresh file (not yet created) in the staging directory, deleted unless committed.
    pub fn temp_file(&self) -> TempFile {
        TempFile { path: self.temp_path(), armed: true }
    }

    /// Metadata of an existing object.
    pub async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, ObjectError> {
        let p = self.object_path(bucket, key)?;
        let md = match tokio::fs::metadata(&p).await {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Err(ObjectError::NoSuchKey { bucket: bucket.into(), key: key.into() }),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
                return Err(ObjectError::NoSuchKey { bucket: bucket.into(), key: key.into() });
            }
            Err(e) => return Err(io("stat object", &p)(e)),
        };
        let stored: StoredMeta = tokio::fs::read(self.meta_path(bucket, key))
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Ok(meta_of(&md, stored))
    }

    /// Moves the finished file `tmp` into place as `bucket/key`, with its sidecar (`tmp` is
    /// deleted if that fails).
    pub async fn commit(
        &self,
        bucket: &str,
        key: &str,
        tmp: TempFile,
        stored: StoredMeta,
    ) -> Result<ObjectMeta, ObjectError> {
        let dst = self.object_path(bucket, key)?;
        let meta_dst = self.meta_path(bucket, key);
        for p in [&dst, &meta_dst] {
            let parent = p.parent().expect("object paths have a parent");
            tokio::fs::create_dir_all(parent).await.map_err(|e| conflict_or(e, key, "create directory", parent))?;
        }
        let meta_tmp = self.temp_file();
        let json = serde_json::to_vec(&stored).expect("metadata serializes");
        tokio::fs::write(meta_tmp.path(), json).await.map_err(io("write metadata", meta_tmp.path()))?;
        tokio::fs::rename(meta_tmp.path(), &meta_dst)
            .await
            .map_err(|e| conflict_or(e, key, "rename metadata", &meta_dst))?;
        meta_tmp.persisted();
        tokio::fs::rename(tmp.path(), &dst).await.map_err(|e| conflict_or(e, key, "rename object into place", &dst))?;
        tmp.persisted();
        let md = tokio::fs::metadata(&dst).await.map_err(io("stat object", &dst))?;
        Ok(meta_of(&md, stored))
    }

    /// Removes an object (absent is fine, as in S3) and prunes empty prefixes.
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), ObjectError> {
        let p = self.object_path(bucket, key)?;
        match tokio::fs::remove_file(&p).await {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {}
            Err(e) if e.kind() == std::io::ErrorKind::IsADirectory => {}
            Err(e) => return Err(io("remove object", &p)(e)),
        }
        let _ = tokio::fs::remove_file(self.meta_path(bucket, key)).await;
        for base in [self.root.join(bucket), self.root.join(".meta").join(bucket)] {
            let mut dir = base.join(key);
            while dir.pop() && dir != base && dir.starts_with(&base) {
                if tokio::fs::remove_dir(&dir).await.is_err() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Keys under `prefix` in byte order, after `start_after`, at most `max`; also says
    /// whether more follow.
    pub async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<(Vec<Listed>, bool), ObjectError> {
        validate_bucket(bucket)?;
        let base = self.root.join(bucket);
        // Walk only the directory the prefix already names.
        let dir_part = prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        if !dir_part.is_empty() {
            validate_key(dir_part)?;
        }
        let start = if dir_part.is_empty() { base.clone() } else { base.join(dir_part) };
        let meta_root = self.root.join(".meta").join(bucket);
        let (prefix, start_after) = (prefix.to_string(), start_after.map(str::to_string));
        tokio::task::spawn_blocking(move || {
            let mut keys = Vec::new();
            walk(&base, &start, &mut keys);
            keys.retain(|k: &String| k.starts_with(&prefix) && start_after.as_ref().is_none_or(|s| k > s));
            keys.sort();
            let truncated = keys.len() > max;
            keys.truncate(max);
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                let Ok(md) = std::fs::metadata(base.join(&key)) else { continue };
                let stored = std::fs::read(meta_root.join(&key))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                out.push(Listed { meta: meta_of(&md, stored), key });
            }
            (out, truncated)
        })
        .await
        .map_err(|e| ObjectError::Io {
            op: "list objects",
            path: self.root.clone(),
            source: std::io::Error::other(e),
        })
    }

    /// Starts a multipart upload for `bucket/key`; answers its id. Refused while the key's
    /// organization is at its staging limit.
    pub async fn create_upload(&self, bucket: &str, key: &str) -> Result<String, ObjectError> {
        self.object_path(bucket, key)?;
        let charge = self.staging().admit(multipart::org_of(key))?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = self.root.join(".uploads").join(&id);
        tokio::fs::create_dir_all(&dir).await.map_err(io("create upload directory", &dir))?;
        let rec = UploadRecord { bucket: bucket.into(), key: key.into(), created: Utc::now() };
        let p = dir.join("upload.json");
        if let Err(e) = tokio::fs::write(&p, serde_json::to_vec(&rec).expect("record serializes")).await {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(io("write upload", &p)(e));
        }
        self.uploads.insert(&id, bucket, key, dir, charge);
        Ok(id)
    }

    /// Marks upload `id` of `bucket/key` in use by a request (its idle time restarts when the
    /// mark is dropped); `NoSuchUpload` if there is none (unknown, finished or swept).
    pub(crate) fn begin_upload(&self, id: &str, bucket: &str, key: &str) -> Result<InUse, ObjectError> {
        if !multipart::valid_id(id) {
            return Err(ObjectError::NoSuchUpload(id.to_string()));
        }
        self.uploads.begin(id, bucket, key)
    }

    /// Moves the finished part file `tmp` of `size` bytes, charged as `charge`, into the upload
    /// as part `n` with its ETag (replacing an earlier part `n`).
    pub(crate) async fn commit_part(
        &self,
        upload: &InUse,
        n: u32,
        tmp: TempFile,
        size: u64,
        etag: &str,
        charge: Charge,
    ) -> Result<(), ObjectError> {
        let _gate = upload.gate().await;
        upload.check_live()?;
        let dir = upload.dir();
        let etag_path = dir.join(format!("part-{n:05}.etag"));
        let etag_tmp = self.temp_file();
        tokio::fs::write(etag_tmp.path(), etag).await.map_err(io("write part etag", etag_tmp.path()))?;
        let part = dir.join(format!("part-{n:05}"));
        tokio::fs::rename(tmp.path(), &part).await.map_err(io("rename part into place", &part))?;
        tmp.persisted();
        upload.record_part(n, size, charge)?;
        tokio::fs::rename(etag_tmp.path(), &etag_path).await.map_err(io("rename part etag", &etag_path))?;
        etag_tmp.persisted();
        Ok(())
    }

    /// The parts of upload `id`, in order.
    pub async fn list_parts(&self, id: &str, bucket: &str, key: &str) -> Result<Vec<PartInfo>, ObjectError> {
        let upload = self.begin_upload(id, bucket, key)?;
        let mut out = Vec::new();
        for (number, size) in upload.parts()? {
            let part = upload.dir().join(format!("part-{number:05}"));
            let Ok(etag) = tokio::fs::read_to_string(upload.dir().join(format!("part-{number:05}.etag"))).await else {
                continue;
            };
            let last_modified = tokio::fs::metadata(&part)
                .await
                .and_then(|m| m.modified())
                .map(DateTime::<Utc>::from)
                .unwrap_or_else(|_| Utc::now());
            out.push(PartInfo { number, size, etag, last_modified });
        }
        Ok(out)
    }

    /// Joins the listed parts, in order, into `bucket/key` and removes the upload (its bytes
    /// are given back to the staging ledger).
    pub async fn complete(
        &self,
        id: &str,
        bucket: &str,
        key: &str,
        parts: &[(u32, String)],
    ) -> Result<ObjectMeta, ObjectError> {
        let upload = self.begin_upload(id, bucket, key)?;
        let _gate = upload.gate().await;
        upload.check_live()?;
        let dir = upload.dir();
        if parts.is_empty() {
            return Err(ObjectError::InvalidPart(0));
        }
        if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(ObjectError::InvalidPartOrder);
        }
        let mut md5s = Vec::with_capacity(parts.len() * 16);
        for (n, etag) in parts {
            let stored = tokio::fs::read_to_string(dir.join(format!("part-{n:05}.etag")))
                .await
                .map_err(|_| ObjectError::InvalidPart(*n))?;
            if stored != etag.trim_matches('"') {
                return Err(ObjectError::InvalidPart(*n));
            }
            md5s.extend(hex::decode(&stored).map_err(|_| ObjectError::InvalidPart(*n))?);
        }
        let tmp = self.temp_file();
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp.path())
            .await
            .map_err(io("create object", tmp.path()))?;
        for (n, _) in parts {
            let p = dir.join(format!("part-{n:05}"));
            let mut f = tokio::fs::File::open(&p).await.map_err(io("open part", &p))?;
            tokio::io::copy(&mut f, &mut out).await.map_err(io("copy part", &p))?;
        }
        out.flush().await.map_err(io("write object", tmp.path()))?;
        out.sync_all().await.map_err(io("sync object", tmp.path()))?;
        drop(out);
        let etag = format!("{}-{}", hex::encode(Md5::digest(&md5s)), parts.len());
        let meta = self.commit(bucket, key, tmp, StoredMeta { etag, crc32: None }).await?;
        let entry = upload.end()?;
        let _ = tokio::fs::remove_dir_all(&entry.dir).await;
        Ok(meta)
    }

    /// Drops upload `id` and its parts (their bytes are given back to the staging ledger).
    pub async fn abort(&self, id: &str, bucket: &str, key: &str) -> Result<(), ObjectError> {
        let upload = self.begin_upload(id, bucket, key)?;
        let _gate = upload.gate().await;
        let entry = upload.end()?;
        tokio::fs::remove_dir_all(&entry.dir).await.map_err(io("remove upload", &entry.dir))
    }
}

fn conflict_or(e: std::io::Error, key: &str, op: &'static str, path: &Path) -> ObjectError {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::AlreadyExists | K::NotADirectory | K::IsADirectory | K::DirectoryNotEmpty => {
            ObjectError::KeyConflict(key.to_string())
        }
        _ => ObjectError::Io { op, path: path.to_path_buf(), source: e },
    }
}

fn meta_of(md: &std::fs::Metadata, stored: StoredMeta) -> ObjectMeta {
    let last_modified = md.modified().map(DateTime::<Utc>::from).unwrap_or_else(|_| Utc::now());
    let etag = if stored.etag.is_empty() {
        // A file without sidecar: a stable tag from size and time.
        format!("{:x}-{:x}", md.len(), last_modified.timestamp_nanos_opt().unwrap_or_default())
    } else {
        stored.etag
    };
    ObjectMeta { size: md.len(), last_modified, etag, crc32: stored.crc32 }
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        let p = e.path();
        if ft.is_dir() {
            walk(base, &p, out);
        } else if ft.is_file()
            && let Some(k) = p.strip_prefix(base).ok().and_then(|r| r.to_str())
        {
            out.push(k.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::staging::UploadLimits;
    use std::time::Duration;

    fn open(dir: &Path) -> ObjectStore {
        ObjectStore::open(dir, Staging::default()).unwrap()
    }

    async fn put(store: &ObjectStore, key: &str, data: &[u8]) -> ObjectMeta {
        let tmp = store.temp_file();
        tokio::fs::write(tmp.path(), data).await.unwrap();
        let etag = hex::encode(Md5::digest(data));
        store.commit(BUILD_BUCKET, key, tmp, StoredMeta { etag, crc32: None }).await.unwrap()
    }

    /// Uploads part `n` of upload `id` as a request would; answers its quoted ETag.
    async fn part(store: &ObjectStore, id: &str, key: &str, n: u32, data: &[u8]) -> Result<String, ObjectError> {
        let upload = store.begin_upload(id, BUILD_BUCKET, key)?;
        let mut charge = upload.charge();
        charge.add(data.len() as u64)?;
        let tmp = store.temp_file();
        tokio::fs::write(tmp.path(), data).await.unwrap();
        let etag = hex::encode(Md5::digest(data));
        store.commit_part(&upload, n, tmp, data.len() as u64, &etag, charge).await?;
        Ok(format!("\"{etag}\""))
    }

    fn entries(dir: &Path) -> usize {
        std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }

    #[test]
    fn keys_that_could_leave_the_bucket_are_refused() {
        for bad in ["", "/abs", "a/../b", "..", "a//b", "a/./b", "a/", "x\0y", &"k".repeat(1025)] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "org/hash/context.tar", "a b/c~d/é", "a..b/.hidden"] {
            assert!(validate_key(good).is_ok(), "{good:?}");
        }
        for bad in [".meta", ".uploads", "AB", "ab", "a/b", "-ab"] {
            assert!(validate_bucket(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn objects_are_stored_under_their_bucket_and_found_by_context_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let m = put(&store, "org1/abc/context.tar", b"hello").await;
        assert_eq!(m.size, 5);
        assert_eq!(m.etag, "5d41402abc4b2a76b9719d911017c592");
        let p = store.context_tar("org1", "abc").unwrap();
        assert_eq!(p, dir.path().join("objects/cove-builds/org1/abc/context.tar"));
        assert_eq!(std::fs::read(p).unwrap(), b"hello");
        assert!(store.context_tar("org1", "../org2").is_none());
        assert!(store.context_tar("org2", "abc").is_none());
        assert_eq!(store.head(BUILD_BUCKET, "org1/abc/context.tar").await.unwrap().etag, m.etag);
        assert!(matches!(store.head(BUILD_BUCKET, "org1/abc").await, Err(ObjectError::NoSuchKey { .. })));
        store.delete(BUILD_BUCKET, "org1/abc/context.tar").await.unwrap();
        assert!(store.path(BUILD_BUCKET, "org1/abc/context.tar").is_none());
        assert!(!dir.path().join("objects/cove-builds/org1").exists(), "empty prefixes are pruned");
    }

    #[tokio::test]
    async fn listing_is_sorted_prefix_filtered_and_paged() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for k in ["o/b/x", "o/a/x", "o/a/y", "p/a/x"] {
            put(&store, k, b"1").await;
        }
        let (all, more) = store.list(BUILD_BUCKET, "o/", None, 10).await.unwrap();
        assert_eq!(all.iter().map(|l| l.key.as_str()).collect::<Vec<_>>(), ["o/a/x", "o/a/y", "o/b/x"]);
        assert!(!more);
        let (page, more) = store.list(BUILD_BUCKET, "o/a", None, 1).await.unwrap();
        assert_eq!(page[0].key, "o/a/x");
        assert!(more);
        let (rest, _) = store.list(BUILD_BUCKET, "o/", Some("o/a/y"), 10).await.unwrap();
        assert_eq!(rest[0].key, "o/b/x");
        assert!(store.list(BUILD_BUCKET, "o/../p/", None, 10).await.is_err());
    }

    #[tokio::test]
    async fn multipart_parts_are_joined_in_order_and_the_staging_dir_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let key = "org/h/context.tar";
        let id = store.create_upload(BUILD_BUCKET, key).await.unwrap();
        let mut tags = Vec::new();
        for (n, data) in [(1u32, b"abc".as_slice()), (2, b"def")] {
            tags.push((n, part(&store, &id, key, n, data).await.unwrap()));
        }
        assert!(matches!(store.begin_upload(&id, BUILD_BUCKET, "org/other"), Err(ObjectError::NoSuchUpload(_))));
        let wrong = vec![(1, tags[0].1.clone()), (2, "\"0000\"".to_string())];
        assert!(matches!(store.complete(&id, BUILD_BUCKET, key, &wrong).await, Err(ObjectError::InvalidPart(2))));
        let reversed = vec![tags[1].clone(), tags[0].clone()];
        assert!(matches!(store.complete(&id, BUILD_BUCKET, key, &reversed).await, Err(ObjectError::InvalidPartOrder)));
        let m = store.complete(&id, BUILD_BUCKET, key, &tags).await.unwrap();
        assert!(m.etag.ends_with("-2"));
        assert_eq!(std::fs::read(store.path(BUILD_BUCKET, key).unwrap()).unwrap(), b"abcdef");
        assert!(!dir.path().join("objects/.uploads").join(&id).exists());
        let id2 = store.create_upload(BUILD_BUCKET, key).await.unwrap();
        store.abort(&id2, BUILD_BUCKET, key).await.unwrap();
        assert!(matches!(store.abort(&id2, BUILD_BUCKET, key).await, Err(ObjectError::NoSuchUpload(_))));
    }

    #[tokio::test]
    async fn an_object_cannot_shadow_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        put(&store, "o/a/b", b"1").await;
        let tmp = store.temp_file();
        tokio::fs::write(tmp.path(), b"2").await.unwrap();
        let r = store.commit(BUILD_BUCKET, "o/a", tmp, StoredMeta::default()).await;
        assert!(matches!(r, Err(ObjectError::KeyConflict(_))), "{r:?}");
        assert_eq!(entries(&dir.path().join("objects/.tmp")), 0, "the refused write is deleted");
    }

    #[tokio::test]
    async fn an_idle_multipart_upload_is_swept_with_its_parts_and_its_bytes_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::new(UploadLimits { idle: Duration::from_secs(1), ..UploadLimits::default() });
        let store = ObjectStore::open(dir.path(), staging.clone()).unwrap();
        let key = "org/h/context.tar";
        let id = store.create_upload(BUILD_BUCKET, key).await.unwrap();
        part(&store, &id, key, 1, b"partial").await.unwrap();
        assert_eq!(staging.staged("org"), 7);
        // The sweeper runs every second; the upload is idle after one.
        tokio::time::sleep(Duration::from_millis(2600)).await;
        assert_eq!(entries(&dir.path().join("objects/.uploads")), 0, "its directory and parts are deleted");
        assert_eq!(staging.staged("org"), 0);
        for r in [
            part(&store, &id, key, 2, b"late").await.map(drop),
            store.list_parts(&id, BUILD_BUCKET, key).await.map(drop),
            store.complete(&id, BUILD_BUCKET, key, &[(1, "x".into())]).await.map(drop),
            store.abort(&id, BUILD_BUCKET, key).await,
        ] {
            assert!(matches!(r, Err(ObjectError::NoSuchUpload(_))), "{r:?}");
        }
    }

    #[tokio::test]
    async fn an_upload_with_requests_inside_the_idle_time_or_one_in_progress_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::new(UploadLimits { idle: Duration::from_millis(600), ..UploadLimits::default() });
        let store = ObjectStore::open(dir.path(), staging.clone()).unwrap();
        let key = "org/h/context.tar";
        let active = store.create_upload(BUILD_BUCKET, key).await.unwrap();
        let busy = store.create_upload(BUILD_BUCKET, key).await.unwrap();
        let idle = store.create_upload(BUILD_BUCKET, key).await.unwrap();
        // A request that lasts longer than the idle time (a slow part) holds its upload.
        let slow = store.begin_upload(&busy, BUILD_BUCKET, key).unwrap();
        for n in 1..=4 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            part(&store, &active, key, n, b"x").await.unwrap();
            multipart::sweep(&store.uploads, Duration::from_millis(600)).await;
        }
        assert!(store.begin_upload(&active, BUILD_BUCKET, key).is_ok(), "an upload in use is kept");
        assert!(store.begin_upload(&busy, BUILD_BUCKET, key).is_ok(), "an upload whose request runs is kept");
        assert!(matches!(store.begin_upload(&idle, BUILD_BUCKET, key), Err(ObjectError::NoSuchUpload(_))));
        assert!(!dir.path().join("objects/.uploads").join(&idle).exists());
        assert_eq!(store.list_parts(&active, BUILD_BUCKET, key).await.unwrap().len(), 4);
        drop(slow);
        assert_eq!(staging.staged("org"), 4);
    }

    #[tokio::test]
    async fn completing_or_aborting_an_upload_gives_its_bytes_back_and_a_replaced_part_is_not_counted_twice() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::default();
        let store = ObjectStore::open(dir.path(), staging.clone()).unwrap();
        let key = "org/h/context.tar";
        let id = store.create_upload(BUILD_BUCKET, key).await.unwrap();
        part(&store, &id, key, 1, b"first try").await.unwrap();
        let e1 = part(&store, &id, key, 1, b"abc").await.unwrap();
        let e2 = part(&store, &id, key, 2, b"de").await.unwrap();
        assert_eq!(staging.staged("org"), 5);
        store.complete(&id, BUILD_BUCKET, key, &[(1, e1), (2, e2)]).await.unwrap();
        assert_eq!(staging.staged("org"), 0);
        assert_eq!(std::fs::read(store.path(BUILD_BUCKET, key).unwrap()).unwrap(), b"abcde");
        let id = store.create_upload(BUILD_BUCKET, key).await.unwrap();
        part(&store, &id, key, 1, b"abc").await.unwrap();
        store.abort(&id, BUILD_BUCKET, key).await.unwrap();
        assert_eq!(staging.staged("org"), 0);
        assert_eq!(entries(&dir.path().join("objects/.uploads")), 0);
        assert_eq!(entries(&dir.path().join("objects/.tmp")), 0);
    }

    #[tokio::test]
    async fn uploads_found_at_start_are_charged_again_and_ones_idle_too_long_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let key = "org/h/context.tar";
        let (fresh, stale) = {
            let store = open(dir.path());
            let fresh = store.create_upload(BUILD_BUCKET, key).await.unwrap();
            part(&store, &fresh, key, 1, b"abc").await.unwrap();
            part(&store, &fresh, key, 2, b"defg").await.unwrap();
            let stale = store.create_upload(BUILD_BUCKET, key).await.unwrap();
            part(&store, &stale, key, 1, b"old").await.unwrap();
            (fresh, stale)
        };
        // The stale upload's last request was an hour ago (its record's mtime says so).
        let record = dir.path().join("objects/.uploads").join(&stale).join("upload.json");
        let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::open(&record).unwrap().set_modified(hour_ago).unwrap();
        let staging = Staging::new(UploadLimits { org_bytes: 8, ..UploadLimits::default() });
        let store = ObjectStore::open(dir.path(), staging.clone()).unwrap();
        assert!(!dir.path().join("objects/.uploads").join(&stale).exists());
        assert_eq!(staging.staged("org"), 7, "the parts already on disk count");
        let e = part(&store, &fresh, key, 3, b"hi").await.unwrap_err();
        assert!(matches!(e, ObjectError::OverLimit(_)), "{e:?}");
        assert_eq!(store.list_parts(&fresh, BUILD_BUCKET, key).await.unwrap().len(), 2);
        store.abort(&fresh, BUILD_BUCKET, key).await.unwrap();
        assert_eq!(staging.staged("org"), 0);
    }
}
