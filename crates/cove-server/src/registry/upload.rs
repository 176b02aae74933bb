//! Blob upload sessions: `POST` starts one, `PATCH` appends a chunk (its `Content-Range`, when
//! given, must start where the upload stands), `PUT ?digest=` appends the last chunk and
//! commits, `DELETE` cancels. The bytes stream into a content-store [`Ingest`] (a file under
//! `<data-dir>/ingest/`) that hashes as it writes, so completing checks the digest without
//! reading the data again, and the blob appears in the store only once verified. Sessions
//! live in memory: a restart loses uploads in progress (clients start over, as they do after
//! any `BLOB_UPLOAD_UNKNOWN`), and sessions idle for [`IDLE_EXPIRY`] are dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cove_image::ContentStore;
use cove_image::content::{ContentError, Ingest};
use cove_types::Digest;
use futures_util::{Stream, StreamExt};

/// How long an upload may sit without a request before it is dropped.
pub const IDLE_EXPIRY: Duration = Duration::from_secs(3600);

type SessionMap = HashMap<String, Arc<tokio::sync::Mutex<Session>>>;

/// The upload sessions of the registry.
#[derive(Debug, Clone)]
pub struct Uploads {
    content: ContentStore,
    sessions: Arc<Mutex<SessionMap>>,
}

#[derive(Debug)]
struct Session {
    repo: String,
    /// `None` once completed or cancelled (the entry is about to go).
    ingest: Option<Ingest>,
    last_used: Instant,
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
    /// A chunk did not start where the upload stands.
    #[error("chunk starts at byte {start} but the upload has {size} bytes")]
    OutOfOrder {
        /// Where the chunk claimed to start.
        start: u64,
        /// Bytes received so far.
        size: u64,
    },
    /// Reading the request body failed.
    #[error("read the upload body: {0}")]
    Body(String),
    /// Writing or committing the blob failed (digest or size mismatches included).
    #[error("store the uploaded blob")]
    Content(#[source] ContentError),
}

impl Uploads {
    /// Sessions writing into `content`.
    pub fn new(content: ContentStore) -> Self {
        Uploads { content, sessions: Arc::default() }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, SessionMap> {
        self.sessions.lock().expect("upload map is never poisoned")
    }

    /// Starts an upload into `repo`; returns its id.
    pub fn start(&self, repo: &str) -> Result<String, UploadError> {
        self.expire();
        let ingest = self.content.ingest().map_err(UploadError::Content)?;
        let id = uuid::Uuid::new_v4().to_string();
        let s = Session { repo: repo.to_string(), ingest: Some(ingest), last_used: Instant::now() };
        self.map().insert(id.clone(), Arc::new(tokio::sync::Mutex::new(s)));
        Ok(id)
    }

    fn expire(&self) {
        let now = Instant::now();
        self.map().retain(|_, s| match s.try_lock() {
            Ok(s) => now.duration_since(s.last_used) < IDLE_EXPIRY,
            Err(_) => true,
        });
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

    /// Appends a chunk. `start` is the first byte of a `Content-Range`, when the client sent
    /// one. Returns the upload's size after the chunk.
    pub async fn append<S, B, E>(&self, repo: &str, id: &str, start: Option<u64>, body: S) -> Result<u64, UploadError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        let s = self.session(id)?;
        let mut s = s.lock().await;
        let ingest = live(&mut s, repo, id)?;
        if let Some(start) = start
            && start != ingest.size()
        {
            return Err(UploadError::OutOfOrder { start, size: ingest.size() });
        }
        write_body(ingest, body).await
    }

    /// Appends the last chunk (possibly empty), then verifies the digest and commits the
    /// blob into the content store. The session ends either way, except for a body that
    /// could not be read (the client may retry the `PUT`).
    pub async fn finish<S, B, E>(&self, repo: &str, id: &str, digest: &Digest, body: S) -> Result<u64, UploadError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        let s = self.session(id)?;
        let mut s = s.lock().await;
        let ingest = live(&mut s, repo, id)?;
        let size = write_body(ingest, body).await?;
        let ingest = s.ingest.take().expect("checked live above");
        self.map().remove(id);
        commit(ingest, digest).await?;
        Ok(size)
    }

    /// Cancels an upload and deletes what it received.
    pub async fn cancel(&self, repo: &str, id: &str) -> Result<(), UploadError> {
        let s = self.session(id)?;
        let mut s = s.lock().await;
        live(&mut s, repo, id)?;
        s.ingest = None;
        self.map().remove(id);
        Ok(())
    }

    /// Writes a whole body as a new blob (a monolithic upload) and commits it under `digest`.
    pub async fn put_whole<S, B, E>(&self, digest: &Digest, body: S) -> Result<u64, UploadError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        let mut ingest = self.content.ingest().map_err(UploadError::Content)?;
        let size = write_body(&mut ingest, body).await?;
        commit(ingest, digest).await?;
        Ok(size)
    }
}

/// The session's ingest, if it belongs to `repo` and is still open.
fn live<'a>(s: &'a mut Session, repo: &str, id: &str) -> Result<&'a mut Ingest, UploadError> {
    if s.repo != repo {
        return Err(UploadError::Unknown { id: id.to_string() });
    }
    s.last_used = Instant::now();
    s.ingest.as_mut().ok_or_else(|| UploadError::Unknown { id: id.to_string() })
}

async fn write_body<S, B, E>(ingest: &mut Ingest, mut body: S) -> Result<u64, UploadError>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
        ingest.write(chunk.as_ref()).map_err(UploadError::Content)?;
    }
    Ok(ingest.size())
}

/// Verifies and renames into place (fsync included) off the async threads.
async fn commit(ingest: Ingest, digest: &Digest) -> Result<(), UploadError> {
    let digest = digest.clone();
    tokio::task::spawn_blocking(move || ingest.commit(&digest, None))
        .await
        .map_err(|e| UploadError::Body(format!("commit task failed: {e}")))?
        .map_err(UploadError::Content)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Chunk = Result<Vec<u8>, std::convert::Infallible>;

    fn body(parts: &[&[u8]]) -> futures_util::stream::Iter<std::vec::IntoIter<Chunk>> {
        futures_util::stream::iter(parts.iter().map(|p| Ok(p.to_vec())).collect::<Vec<Chunk>>())
    }

    fn uploads() -> (tempfile::TempDir, ContentStore, Uploads) {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        (dir, cs.clone(), Uploads::new(cs))
    }

    #[tokio::test]
    async fn chunks_in_order_then_put_commit_a_verified_blob() {
        let (_d, cs, up) = uploads();
        let id = up.start("o/r").unwrap();
        assert_eq!(up.append("o/r", &id, Some(0), body(&[b"hel", b"lo "])).await.unwrap(), 6);
        assert_eq!(up.status("o/r", &id).await.unwrap(), 6);
        assert_eq!(up.append("o/r", &id, None, body(&[b"wor"])).await.unwrap(), 9);
        let d = cove_image::content::sha256(b"hello world");
        assert_eq!(up.finish("o/r", &id, &d, body(&[b"ld"])).await.unwrap(), 11);
        assert_eq!(cs.read(&d).unwrap(), b"hello world");
        assert!(matches!(up.status("o/r", &id).await, Err(UploadError::Unknown { .. })), "finished sessions end");
    }

    #[tokio::test]
    async fn a_chunk_that_does_not_continue_the_upload_is_refused_and_changes_nothing() {
        let (_d, _cs, up) = uploads();
        let id = up.start("o/r").unwrap();
        up.append("o/r", &id, Some(0), body(&[b"abc"])).await.unwrap();
        let e = up.append("o/r", &id, Some(5), body(&[b"xyz"])).await.unwrap_err();
        assert!(matches!(e, UploadError::OutOfOrder { start: 5, size: 3 }));
        assert_eq!(up.status("o/r", &id).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_wrong_digest_is_refused_and_nothing_is_stored() {
        let (_d, cs, up) = uploads();
        let id = up.start("o/r").unwrap();
        let d = cove_image::content::sha256(b"expected");
        let e = up.finish("o/r", &id, &d, body(&[b"tampered"])).await.unwrap_err();
        assert!(matches!(e, UploadError::Content(ContentError::DigestMismatch { .. })));
        assert!(!cs.contains(&d));
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

    #[tokio::test]
    async fn a_monolithic_upload_is_verified_like_a_chunked_one() {
        let (_d, cs, up) = uploads();
        let d = cove_image::content::sha256(b"blob");
        assert_eq!(up.put_whole(&d, body(&[b"bl", b"ob"])).await.unwrap(), 4);
        assert!(cs.contains(&d));
        let bad = cove_image::content::sha256(b"other");
        assert!(up.put_whole(&bad, body(&[b"blob"])).await.is_err());
    }
}
