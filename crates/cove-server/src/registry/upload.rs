//! Blob upload sessions: `POST` starts one, `PATCH` appends a chunk, `PUT ?digest=` appends the
//! last chunk and commits, `DELETE` cancels. A chunk's `Content-Range`, when given (on a
//! `PATCH` or the final `PUT`), must start exactly where the upload stands and cover exactly
//! the bytes sent: a gap or an overlap is refused before a byte is written. The bytes stream
//! into a content-store [`Ingest`] (a file under `<data-dir>/ingest/`) that hashes every
//! supported algorithm as it writes (the digest, sha256 or sha512, arrives with the last
//! request), so completing checks the digest without reading the data again, and the blob
//! appears in the store only once verified. Sessions
//! live in memory: a restart loses uploads in progress (clients start over, as they do after
//! any `BLOB_UPLOAD_UNKNOWN`).
//!
//! Abandoned uploads do not keep their bytes: a request whose body breaks off (the client
//! disconnected mid-chunk, or its handler was dropped) ends its session and deletes what
//! the session received; sessions idle for [`UploadLimits::idle`] (`--upload-idle-secs`) are
//! dropped by a sweeper. Bytes staged by unfinished uploads (chunked and monolithic) count
//! against their organization's [`UploadLimits::org_bytes`] (`--upload-staging-limit-mib`;
//! the organization is the repository's first path segment) in the ledger shared with object
//! storage's multipart uploads ([`crate::staging`]): a new upload is refused while the
//! organization is at its limit, and a chunk that would pass it ends its upload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use cove_image::ContentStore;
use cove_image::content::{ContentError, Ingest};
use cove_types::Digest;
use futures_util::{Stream, StreamExt};

use crate::staging::{Charge, OverLimit, Staging};
pub use crate::staging::{DEFAULT_IDLE, DEFAULT_ORG_BYTES, UploadLimits};

type SessionMap = HashMap<String, Arc<tokio::sync::Mutex<Session>>>;

/// The upload sessions of the registry.
#[derive(Debug, Clone)]
pub struct Uploads {
    content: ContentStore,
    sessions: Arc<Mutex<SessionMap>>,
    /// The ledger shared with object storage's multipart uploads, and the limits.
    staging: Staging,
}

#[derive(Debug)]
struct Session {
    repo: String,
    /// `None` once completed or cancelled (the entry is about to go).
    ingest: Option<Ingest>,
    /// What `ingest` holds, charged to the organization (given back when the session goes).
    staged: Charge,
    last_used: Instant,
}

/// A locked session that, unless `keep` is set when it goes out of scope, ends: its bytes are
/// deleted and its entry removed. A request whose body breaks off, or whose handler is
/// dropped because its client went away, thus leaves nothing behind.
struct Open<'a> {
    uploads: &'a Uploads,
    id: &'a str,
    s: tokio::sync::OwnedMutexGuard<Session>,
    keep: bool,
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        if !self.keep {
            if self.s.ingest.take().is_some() {
                tracing::info!(upload = %self.id, repository = %self.s.repo, "upload abandoned; its bytes are deleted");
            }
            self.uploads.map().remove(self.id);
        }
    }
}

/// A failed upload step.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// No such session for this repository.
    #[error("upload {id} is unknown or finished")]
    Unknown {
        /// Upload id.
        id: String,
    },
    /// A chunk did not start where the upload stands (a gap or an overlap).
    #[error("chunk starts at byte {start} but the upload has {size} bytes")]
    OutOfOrder {
        /// Where the chunk claimed to start.
        start: u64,
        /// Bytes received so far.
        size: u64,
    },
    /// A `Content-Range` that does not describe the chunk's bytes.
    #[error("Content-Range {start}-{end} does not cover the {length} bytes of the chunk")]
    RangeLength {
        /// First byte of the range.
        start: u64,
        /// Last byte of the range (inclusive).
        end: u64,
        /// Bytes in the chunk (its `Content-Length`, or what arrived).
        length: u64,
    },
    /// A `Content-Range` that cannot be parsed.
    #[error("malformed Content-Range {0:?}: expected <start>-<end>")]
    BadRange(String),
    /// The organization's unfinished uploads hold as much as they may.
    #[error(
        "organization {org} has {staged} bytes in unfinished uploads; the limit is {limit} bytes \
         (--upload-staging-limit-mib): finish or cancel uploads first"
    )]
    OrgLimit {
        /// The organization (the repository's first segment).
        org: String,
        /// Bytes it has staged.
        staged: u64,
        /// Its limit.
        limit: u64,
    },
    /// Reading the request body failed.
    #[error("read the upload body")]
    Body(#[source] BoxError),
    /// The blocking commit task did not finish.
    #[error("commit task")]
    Task(#[source] tokio::task::JoinError),
    /// Writing or committing the blob failed (digest or size mismatches included).
    #[error("store the uploaded blob")]
    Content(#[source] ContentError),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl From<OverLimit> for UploadError {
    fn from(e: OverLimit) -> Self {
        UploadError::OrgLimit { org: e.org, staged: e.staged, limit: e.limit }
    }
}

/// Where a chunk says it goes: its `Content-Range` (first and last byte, inclusive) and its
/// `Content-Length`, each when the client sent it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Chunk {
    /// `(start, end)` of the `Content-Range`.
    pub range: Option<(u64, u64)>,
    /// The `Content-Length`.
    pub length: Option<u64>,
}

impl Chunk {
    /// From the request's headers. `Content-Range: [bytes[ =]]<start>-<end>[/<total>]`.
    pub fn from_headers(content_range: Option<&str>, content_length: Option<&str>) -> Result<Chunk, UploadError> {
        let range = content_range
            .map(|raw| {
                let bad = || UploadError::BadRange(raw.to_string());
                let v = raw.trim();
                let v = v.strip_prefix("bytes").unwrap_or(v).trim_start().trim_start_matches('=').trim();
                let v = v.split('/').next().unwrap_or_default();
                let (a, b) = v.split_once('-').ok_or_else(bad)?;
                let start = a.trim().parse::<u64>().map_err(|_| bad())?;
                let end = b.trim().parse::<u64>().map_err(|_| bad())?;
                Ok::<_, UploadError>((start, end))
            })
            .transpose()?;
        let length = content_length.and_then(|l| l.trim().parse().ok());
        Ok(Chunk { range, length })
    }

    /// Checks, before anything is written, that the chunk continues an upload of `size`
    /// bytes and that its range and length agree.
    fn check(&self, size: u64) -> Result<(), UploadError> {
        let Some((start, end)) = self.range else { return Ok(()) };
        if start != size {
            return Err(UploadError::OutOfOrder { start, size });
        }
        match (covered(start, end), self.length) {
            (None, length) => Err(UploadError::RangeLength { start, end, length: length.unwrap_or(0) }),
            (Some(n), Some(length)) if n != length => Err(UploadError::RangeLength { start, end, length }),
            _ => Ok(()),
        }
    }

    /// After writing: the bytes that arrived must be what the range announced.
    fn check_written(&self, written: u64) -> Result<(), UploadError> {
        match self.range {
            Some((start, end)) if covered(start, end) != Some(written) => {
                Err(UploadError::RangeLength { start, end, length: written })
            }
            _ => Ok(()),
        }
    }
}

impl Uploads {
    /// Sessions writing into `content`, held within `staging`'s limits and charged to its
    /// ledger (shared with object storage).
    pub fn new(content: ContentStore, staging: Staging) -> Self {
        Uploads { content, sessions: Arc::default(), staging }
    }

    /// Removes idle sessions every so often (a quarter of the idle time, 1 to 30 s) for as
    /// long as these sessions exist.
    pub fn spawn_sweeper(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let weak: Weak<Mutex<SessionMap>> = Arc::downgrade(&self.sessions);
        let idle = self.staging.limits().idle;
        let every = (idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(sessions) = weak.upgrade() else { return };
                expire(&sessions, idle);
            }
        });
    }

    /// Bytes the unfinished uploads of organization `org` hold.
    pub fn staged_bytes(&self, org: &str) -> u64 {
        self.staging.staged(org)
    }

    /// Refuses a new upload while `repo`'s organization is at its limit.
    fn admit(&self, repo: &str) -> Result<Charge, UploadError> {
        Ok(self.staging.admit(org_of(repo))?)
    }

    /// The session `id`, locked, that ends unless [`Open::keep`] is set.
    async fn open<'a>(&'a self, repo: &str, id: &'a str) -> Result<Open<'a>, UploadError> {
        let s = self.session(id)?.lock_owned().await;
        let mut open = Open { uploads: self, id, s, keep: true };
        live(&mut open.s, repo, id)?;
        Ok(open)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, SessionMap> {
        self.sessions.lock().expect("upload map is never poisoned")
    }

    /// Starts an upload into `repo`; returns its id.
    pub fn start(&self, repo: &str) -> Result<String, UploadError> {
        expire(&self.sessions, self.staging.limits().idle);
        let staged = self.admit(repo)?;
        let ingest = self.content.ingest().map_err(UploadError::Content)?;
        let id = uuid::Uuid::new_v4().to_string();
        let s = Session { repo: repo.to_string(), ingest: Some(ingest), staged, last_used: Instant::now() };
        self.map().insert(id.clone(), Arc::new(tokio::sync::Mutex::new(s)));
        Ok(id)
    }

    /// The session `id`; its repository is checked under its lock ([`live`]).
    fn session(&self, id: &str) -> Result<Arc<tokio::sync::Mutex<Session>>, UploadError> {
        self.map().get(id).cloned().ok_or_else(|| UploadError::Unknown { id: id.to_string() })
    }

    /// Bytes received so far.
    pub async fn status(&self, repo: &str, id: &str) -> Result<u64, UploadError> {
        let s = self.session(id)?;
        let mut s = s.lock().await;
        let ingest = live(&mut s, repo, id)?;
        Ok(ingest.size())
    }

    /// Appends a chunk whose headers say `chunk`. Returns the upload's size after it. A chunk
    /// refused by its range changes nothing; one whose bytes turn out to differ from its range
    /// ends the session (what it holds is no longer what the client thinks).
    pub async fn append<S, B, E>(&self, repo: &str, id: &str, chunk: Chunk, body: S) -> Result<u64, UploadError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: Into<BoxError>,
    {
        let mut open = self.open(repo, id).await?;
        let s = &mut *open.s;
        let ingest = s.ingest.as_mut().expect("checked live by open");
        chunk.check(ingest.size())?;
        let before = ingest.size();
        open.keep = false;
        let s = &mut *open.s;
        let size = write_body(s.ingest.as_mut().expect("checked live by open"), &mut s.staged, body).await?;
        chunk.check_written(size - before)?;
        open.keep = true;
        Ok(size)
    }

    /// Appends the last chunk (possibly empty; its range checked like a `PATCH`'s), then
    /// verifies the digest and commits the blob into the content store. A chunk refused by
    /// its range leaves the session as it was, so the client may retry; otherwise (a body
    /// that broke off included) the session ends either way.
    pub async fn finish<S, B, E>(
        &self,
        repo: &str,
        id: &str,
        digest: &Digest,
        chunk: Chunk,
        body: S,
    ) -> Result<u64, UploadError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: Into<BoxError>,
    {
        let mut open = self.open(repo, id).await?;
        let s = &mut *open.s;
        let ingest = s.ingest.as_mut().expect("checked live by open");
        chunk.check(ingest.size())?;
        let before = ingest.size();
        open.keep = false;
        let s = &mut *open.s;
        let size = write_body(s.ingest.as_mut().expect("checked live by open"), &mut s.staged, body).await?;
        let ingest = open.s.ingest.take().expect("checked live by open");
        drop(open);
        chunk.check_written(size - before)?;
        commit(ingest, digest).await?;
        Ok(size)
    }

    /// Cancels an upload and deletes what it received.
    pub async fn cancel(&self, repo: &str, id: &str) -> Result<(), UploadError> {
        let mut open = self.open(repo, id).await?;
        open.keep = false;
        Ok(())
    }

    /// Writes a whole body as a new blob (a monolithic upload) and commits it under `digest`.
    pub async fn put_whole<S, B, E>(&self, repo: &str, digest: &Digest, body: S) -> Result<u64, UploadError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: Into<BoxError>,
    {
        let mut staged = self.admit(repo)?;
        let mut ingest = self.content.ingest_for(digest).map_err(UploadError::Content)?;
        let size = write_body(&mut ingest, &mut staged, body).await?;
        commit(ingest, digest).await?;
        Ok(size)
    }
}

/// The number of bytes `start..=end` covers (`end = start - 1` is an empty chunk); `None`
/// for a range that ends before it starts.
fn covered(start: u64, end: u64) -> Option<u64> {
    end.checked_add(1)?.checked_sub(start)
}

/// Drops the sessions of `sessions` idle for `idle` or longer (one in use is never idle).
fn expire(sessions: &Mutex<SessionMap>, idle: Duration) {
    let now = Instant::now();
    sessions.lock().expect("upload map is never poisoned").retain(|id, s| match s.try_lock() {
        Ok(s) => {
            let keep = now.duration_since(s.last_used) < idle;
            if !keep {
                tracing::info!(upload = %id, repository = %s.repo, bytes = s.staged.bytes(), "idle upload removed");
            }
            keep
        }
        Err(_) => true,
    });
}

/// The organization a repository belongs to: its first path segment (`<orgId>` or `cove`).
fn org_of(repo: &str) -> &str {
    repo.split('/').next().unwrap_or(repo)
}

/// The session's ingest, if it belongs to `repo` and is still open.
fn live<'a>(s: &'a mut Session, repo: &str, id: &str) -> Result<&'a mut Ingest, UploadError> {
    if s.repo != repo {
        return Err(UploadError::Unknown { id: id.to_string() });
    }
    s.last_used = Instant::now();
    s.ingest.as_mut().ok_or_else(|| UploadError::Unknown { id: id.to_string() })
}

async fn write_body<S, B, E>(ingest: &mut Ingest, staged: &mut Charge, mut body: S) -> Result<u64, UploadError>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: Into<BoxError>,
{
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| UploadError::Body(e.into()))?;
        staged.add(chunk.as_ref().len() as u64)?;
        ingest.write(chunk.as_ref()).map_err(UploadError::Content)?;
    }
    Ok(ingest.size())
}

/// Verifies and renames into place (fsync included) off the async threads.
async fn commit(ingest: Ingest, digest: &Digest) -> Result<(), UploadError> {
    let digest = digest.clone();
    tokio::task::spawn_blocking(move || ingest.commit(&digest, None))
        .await
        .map_err(UploadError::Task)?
        .map_err(UploadError::Content)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cove_image::content::{sha256, sha512};

    type Item = Result<Vec<u8>, std::convert::Infallible>;

    fn body(parts: &[&[u8]]) -> futures_util::stream::Iter<std::vec::IntoIter<Item>> {
        futures_util::stream::iter(parts.iter().map(|p| Ok(p.to_vec())).collect::<Vec<Item>>())
    }

    fn uploads() -> (tempfile::TempDir, ContentStore, Uploads) {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        (dir, cs.clone(), Uploads::new(cs, Staging::default()))
    }

    /// A chunk with `Content-Range: start-end` and no `Content-Length`.
    fn at(start: u64, end: u64) -> Chunk {
        Chunk { range: Some((start, end)), length: None }
    }

    #[tokio::test]
    async fn chunks_in_order_then_put_commit_a_verified_blob() {
        let (_d, cs, up) = uploads();
        let id = up.start("o/r").unwrap();
        assert_eq!(up.append("o/r", &id, at(0, 5), body(&[b"hel", b"lo "])).await.unwrap(), 6);
        assert_eq!(up.status("o/r", &id).await.unwrap(), 6);
        assert_eq!(up.append("o/r", &id, Chunk::default(), body(&[b"wor"])).await.unwrap(), 9);
        let d = sha256(b"hello world");
        assert_eq!(up.finish("o/r", &id, &d, at(9, 10), body(&[b"ld"])).await.unwrap(), 11);
        assert_eq!(cs.read(&d).unwrap(), b"hello world");
        assert!(matches!(up.status("o/r", &id).await, Err(UploadError::Unknown { .. })), "finished sessions end");
    }

    #[tokio::test]
    async fn a_chunk_that_does_not_continue_the_upload_is_refused_and_changes_nothing() {
        let (_d, _cs, up) = uploads();
        let id = up.start("o/r").unwrap();
        up.append("o/r", &id, at(0, 2), body(&[b"abc"])).await.unwrap();
        let e = up.append("o/r", &id, at(5, 7), body(&[b"xyz"])).await.unwrap_err();
        assert!(matches!(e, UploadError::OutOfOrder { start: 5, size: 3 }), "a gap: {e:?}");
        let e = up.append("o/r", &id, at(1, 3), body(&[b"xyz"])).await.unwrap_err();
        assert!(matches!(e, UploadError::OutOfOrder { start: 1, size: 3 }), "an overlap: {e:?}");
        assert_eq!(up.status("o/r", &id).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_final_put_whose_range_skips_a_chunk_is_refused_and_commits_nothing() {
        let (_d, cs, up) = uploads();
        let id = up.start("o/r").unwrap();
        up.append("o/r", &id, at(0, 2), body(&[b"abc"])).await.unwrap();
        // The digest matches what was actually sent, so only the range can stop it.
        let d = sha256(b"abcxyz");
        let e = up.finish("o/r", &id, &d, at(6, 8), body(&[b"xyz"])).await.unwrap_err();
        assert!(matches!(e, UploadError::OutOfOrder { start: 6, size: 3 }), "{e:?}");
        assert!(!cs.contains(&d));
        assert_eq!(up.status("o/r", &id).await.unwrap(), 3, "the session is left as it was");
        up.finish("o/r", &id, &d, at(3, 5), body(&[b"xyz"])).await.unwrap();
        assert_eq!(cs.read(&d).unwrap(), b"abcxyz");
    }

    #[tokio::test]
    async fn a_range_that_disagrees_with_the_content_length_is_refused_before_writing() {
        let (_d, _cs, up) = uploads();
        let id = up.start("o/r").unwrap();
        let chunk = Chunk { range: Some((0, 9)), length: Some(3) };
        let e = up.append("o/r", &id, chunk, body(&[b"abc"])).await.unwrap_err();
        assert!(matches!(e, UploadError::RangeLength { start: 0, end: 9, length: 3 }), "{e:?}");
        assert_eq!(up.status("o/r", &id).await.unwrap(), 0);
        let one = Chunk { range: Some((0, 0)), length: Some(1) };
        assert_eq!(up.append("o/r", &id, one, body(&[b"a"])).await.unwrap(), 1);
        let empty = Chunk { range: Some((1, 0)), length: Some(0) };
        assert_eq!(up.append("o/r", &id, empty, body(&[])).await.unwrap(), 1, "start-1 is an empty range");
        let backwards = Chunk { range: Some((3, 0)), length: None };
        assert!(matches!(backwards.check(3), Err(UploadError::RangeLength { .. })));
    }

    #[tokio::test]
    async fn a_chunk_whose_bytes_differ_from_its_range_ends_the_upload() {
        let (_d, _cs, up) = uploads();
        let id = up.start("o/r").unwrap();
        let e = up.append("o/r", &id, at(0, 9), body(&[b"abc"])).await.unwrap_err();
        assert!(matches!(e, UploadError::RangeLength { start: 0, end: 9, length: 3 }), "{e:?}");
        assert!(matches!(up.status("o/r", &id).await, Err(UploadError::Unknown { .. })));
    }

    #[test]
    fn content_ranges_parse_with_or_without_a_unit_and_malformed_ones_are_refused() {
        for v in ["0-99", "bytes 0-99", "bytes=0-99", "bytes 0-99/100", " 0 - 99 "] {
            assert_eq!(
                Chunk::from_headers(Some(v), Some("100")).unwrap(),
                Chunk { range: Some((0, 99)), length: Some(100) },
                "{v}"
            );
        }
        assert_eq!(Chunk::from_headers(None, None).unwrap(), Chunk::default());
        for v in ["", "0", "a-b", "-5", "5-", "bytes */100"] {
            assert!(matches!(Chunk::from_headers(Some(v), None), Err(UploadError::BadRange(_))), "{v}");
        }
    }

    #[tokio::test]
    async fn a_wrong_digest_is_refused_and_nothing_is_stored() {
        let (_d, cs, up) = uploads();
        let id = up.start("o/r").unwrap();
        let d = sha256(b"expected");
        let e = up.finish("o/r", &id, &d, Chunk::default(), body(&[b"tampered"])).await.unwrap_err();
        assert!(matches!(e, UploadError::Content(ContentError::DigestMismatch { .. })));
        assert!(!cs.contains(&d));
    }

    #[tokio::test]
    async fn a_sha512_upload_is_verified_chunked_or_whole() {
        let (_d, cs, up) = uploads();
        let theirs = sha512(b"organization A's layer");
        for whole in [false, true] {
            let e = if whole {
                up.put_whole("o/r", &theirs, body(&[b"organization B's layer"])).await.unwrap_err()
            } else {
                let id = up.start("o/r").unwrap();
                up.append("o/r", &id, Chunk::default(), body(&[b"organization B's"])).await.unwrap();
                up.finish("o/r", &id, &theirs, Chunk::default(), body(&[b" layer"])).await.unwrap_err()
            };
            assert!(matches!(e, UploadError::Content(ContentError::DigestMismatch { .. })), "{e:?}");
            assert!(!cs.contains(&theirs));
        }
        let id = up.start("o/r").unwrap();
        up.append("o/r", &id, at(0, 13), body(&[b"organization A"])).await.unwrap();
        up.finish("o/r", &id, &theirs, Chunk::default(), body(&[b"'s layer"])).await.unwrap();
        assert_eq!(cs.read(&theirs).unwrap(), b"organization A's layer");
    }

    #[tokio::test]
    async fn a_session_is_only_reachable_through_its_own_repository_and_ends_when_cancelled() {
        let (_d, _cs, up) = uploads();
        let id = up.start("o/r").unwrap();
        assert!(matches!(up.status("o/other", &id).await, Err(UploadError::Unknown { .. })));
        assert!(matches!(up.cancel("o/other", &id).await, Err(UploadError::Unknown { .. })));
        up.cancel("o/r", &id).await.unwrap();
        assert!(matches!(up.status("o/r", &id).await, Err(UploadError::Unknown { .. })));
    }

    fn ingest_files(dir: &tempfile::TempDir) -> usize {
        std::fs::read_dir(dir.path().join("ingest")).unwrap().count()
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_ends_the_upload_and_deletes_its_bytes() {
        let (d, _cs, up) = uploads();
        let id = up.start("o/r").unwrap();
        let broken = futures_util::stream::iter(vec![
            Ok(b"abc".to_vec()),
            Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "client went away")),
        ]);
        let e = up.append("o/r", &id, Chunk::default(), broken).await.unwrap_err();
        assert!(matches!(e, UploadError::Body(_)), "{e:?}");
        assert!(matches!(up.status("o/r", &id).await, Err(UploadError::Unknown { .. })));
        assert_eq!(ingest_files(&d), 0, "the staged bytes are deleted");
        assert_eq!(up.staged_bytes("o"), 0);
    }

    #[tokio::test]
    async fn a_request_dropped_mid_body_leaves_no_staged_bytes() {
        let (d, _cs, up) = uploads();
        for finishing in [false, true] {
            let id = up.start("o/r").unwrap();
            // One chunk arrives, then the client stalls and the server drops the request.
            let stalled = futures_util::stream::iter(vec![Ok::<_, std::convert::Infallible>(b"abc".to_vec())])
                .chain(futures_util::stream::pending());
            let digest = sha256(b"abcdef");
            let request = async {
                if finishing {
                    up.finish("o/r", &id, &digest, Chunk::default(), stalled).await
                } else {
                    up.append("o/r", &id, Chunk::default(), stalled).await
                }
            };
            assert!(tokio::time::timeout(Duration::from_millis(100), request).await.is_err());
            assert_eq!(up.staged_bytes("o"), 0, "finishing: {finishing}");
            assert_eq!(ingest_files(&d), 0, "finishing: {finishing}");
            assert!(matches!(up.status("o/r", &id).await, Err(UploadError::Unknown { .. })));
        }
    }

    #[tokio::test]
    async fn an_idle_upload_is_removed_with_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let up =
            Uploads::new(cs, Staging::new(UploadLimits { idle: Duration::from_secs(1), ..UploadLimits::default() }));
        up.spawn_sweeper();
        let id = up.start("o/r").unwrap();
        up.append("o/r", &id, Chunk::default(), body(&[b"partial"])).await.unwrap();
        assert_eq!(up.staged_bytes("o"), 7);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(up.staged_bytes("o"), 0);
        assert_eq!(ingest_files(&dir), 0);
        assert!(matches!(up.status("o/r", &id).await, Err(UploadError::Unknown { .. })));
    }

    #[tokio::test]
    async fn an_organization_at_its_staging_limit_is_refused_new_uploads_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let up = Uploads::new(cs, Staging::new(UploadLimits { org_bytes: 10, ..UploadLimits::default() }));
        let first = up.start("o/r").unwrap();
        up.append("o/r", &first, Chunk::default(), body(&[b"0123456789"])).await.unwrap();
        let e = up.start("o/other").unwrap_err();
        assert!(matches!(e, UploadError::OrgLimit { staged: 10, limit: 10, .. }), "{e:?}");
        assert!(e.to_string().contains("the limit is 10 bytes"), "{e}");
        let e = up.put_whole("o/r", &sha256(b"x"), body(&[b"x"])).await.unwrap_err();
        assert!(matches!(e, UploadError::OrgLimit { .. }), "monolithic uploads count too: {e:?}");
        up.start("p/r").expect("another organization has its own limit");
        up.cancel("o/r", &first).await.unwrap();
        assert_eq!(up.staged_bytes("o"), 0, "cancelling gives the bytes back");
        // A chunk that would pass the limit ends its upload.
        let second = up.start("o/r").unwrap();
        let e = up.append("o/r", &second, Chunk::default(), body(&[b"01234", b"56789", b"!"])).await.unwrap_err();
        assert!(matches!(e, UploadError::OrgLimit { staged: 10, .. }), "{e:?}");
        assert_eq!(up.staged_bytes("o"), 0);
        assert!(matches!(up.status("o/r", &second).await, Err(UploadError::Unknown { .. })));
        // A finished upload gives its bytes back too.
        let third = up.start("o/r").unwrap();
        up.finish("o/r", &third, &sha256(b"done"), Chunk::default(), body(&[b"done"])).await.unwrap();
        assert_eq!(up.staged_bytes("o"), 0);
    }

    #[tokio::test]
    async fn a_monolithic_upload_is_verified_like_a_chunked_one() {
        let (_d, cs, up) = uploads();
        let d = sha256(b"blob");
        assert_eq!(up.put_whole("o/r", &d, body(&[b"bl", b"ob"])).await.unwrap(), 4);
        assert!(cs.contains(&d));
        let bad = sha256(b"other");
        assert!(up.put_whole("o/r", &bad, body(&[b"blob"])).await.is_err());
    }
}
