//! The content store: immutable blobs addressed by digest.

use std::io::Write;
use std::path::{Path, PathBuf};

use cove_types::Digest;
use cove_types::fs::sync_dir;
use sha2::Digest as _;

/// Blobs under `blobs/<alg>/<hex>`; writes go through [`Ingest`] in `ingest/` and are
/// renamed into place only after their digest and size check out, so a blob file that
/// exists is always complete and correct.
#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

/// A failed content-store operation.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// Could not create the store's directories.
    #[error("create content store directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing an ingest file failed.
    #[error("write ingest file {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The bytes did not hash to the expected digest.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What the manifest promised.
        expected: Digest,
        /// What arrived.
        actual: Digest,
    },
    /// The byte count differs from the descriptor's size.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// Descriptor size.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// Renaming into place or deleting failed.
    #[error("commit blob {digest}")]
    Commit {
        /// The blob.
        digest: Digest,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl ContentStore {
    /// Opens (creating) the store under `root` and removes ingest debris from a crash.
    pub fn open(root: &Path) -> Result<Self, ContentError> {
        let s = ContentStore { root: root.to_path_buf() };
        for d in [s.root.join("blobs/sha256"), s.root.join("blobs/sha512"), s.root.join("ingest")] {
            std::fs::create_dir_all(&d).map_err(|source| ContentError::CreateDir { path: d.clone(), source })?;
        }
        if let Ok(entries) = std::fs::read_dir(s.root.join("ingest")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(s)
    }

    /// Where the blob lives (whether or not it exists).
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join(d.algorithm()).join(d.hex())
    }

    /// Whether the blob is present.
    pub fn contains(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    /// Reads a whole (small) blob such as a manifest or config.
    pub fn read(&self, d: &Digest) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.path(d))
    }

    /// Starts writing a new blob.
    pub fn ingest(&self) -> Result<Ingest, ContentError> {
        let path = self.root.join("ingest").join(uuid::Uuid::new_v4().to_string());
        let file = std::fs::File::create(&path).map_err(|source| ContentError::Write { path: path.clone(), source })?;
        Ok(Ingest {
            path,
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: sha2::Sha256::new(),
            size: 0,
            store: self.clone(),
        })
    }

    /// Stores bytes already in memory (manifests, configs).
    pub fn put(&self, expected: &Digest, bytes: &[u8]) -> Result<(), ContentError> {
        if self.contains(expected) {
            return Ok(());
        }
        let mut w = self.ingest()?;
        w.write(bytes)?;
        w.commit(expected, Some(bytes.len() as u64))
    }

    /// Deletes a blob; a missing blob is not an error.
    pub fn delete(&self, d: &Digest) -> Result<(), ContentError> {
        match std::fs::remove_file(self.path(d)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ContentError::Commit { digest: d.clone(), source }),
        }
    }

    /// Every sha256 blob present.
    pub fn list(&self) -> Vec<Digest> {
        let Ok(rd) = std::fs::read_dir(self.root.join("blobs/sha256")) else { return Vec::new() };
        rd.flatten().filter_map(|e| format!("sha256:{}", e.file_name().to_string_lossy()).parse().ok()).collect()
    }
}

/// A blob being written: hashed as it is written, moved into the store by [`Ingest::commit`].
/// Dropped without a commit, its file is deleted.
#[derive(Debug)]
pub struct Ingest {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    hasher: sha2::Sha256,
    size: u64,
    store: ContentStore,
}

impl Ingest {
    /// Appends bytes.
    pub fn write(&mut self, buf: &[u8]) -> Result<(), ContentError> {
        self.hasher.update(buf);
        self.size += buf.len() as u64;
        self.file.write_all(buf).map_err(|source| ContentError::Write { path: self.path.clone(), source })
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Verifies digest (sha256 only) and size, fsyncs and renames into place.
    pub fn commit(mut self, expected: &Digest, expected_size: Option<u64>) -> Result<(), ContentError> {
        let hash: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        let actual = Digest::sha256_from_bytes(&hash);
        if expected.algorithm() == "sha256" && &actual != expected {
            return Err(ContentError::DigestMismatch { expected: expected.clone(), actual });
        }
        if let Some(n) = expected_size.filter(|n| *n != self.size) {
            return Err(ContentError::SizeMismatch { digest: expected.clone(), expected: n, actual: self.size });
        }
        let commit = |source| ContentError::Commit { digest: expected.clone(), source };
        self.file.flush().map_err(commit)?;
        self.file.get_ref().sync_all().map_err(commit)?;
        let dst = self.store.path(expected);
        std::fs::rename(&self.path, &dst).map_err(commit)?;
        sync_dir(dst.parent().unwrap_or(Path::new("."))).map_err(commit)?;
        Ok(())
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        // After a successful commit the path no longer exists; otherwise clean up.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// sha256 of a byte slice as a [`Digest`].
pub fn sha256(bytes: &[u8]) -> Digest {
    let h: [u8; 32] = sha2::Sha256::digest(bytes).into();
    Digest::sha256_from_bytes(&h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committed_blob_is_readable_by_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let d = sha256(b"hello");
        let mut w = cs.ingest().unwrap();
        w.write(b"hel").unwrap();
        w.write(b"lo").unwrap();
        w.commit(&d, Some(5)).unwrap();
        assert_eq!(cs.read(&d).unwrap(), b"hello");
        assert_eq!(cs.list(), vec![d]);
        assert_eq!(std::fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    }

    #[test]
    fn a_blob_with_the_wrong_digest_is_refused_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let d = sha256(b"expected");
        let mut w = cs.ingest().unwrap();
        w.write(b"tampered").unwrap();
        assert!(matches!(w.commit(&d, None), Err(ContentError::DigestMismatch { .. })));
        assert!(!cs.contains(&d));
        assert_eq!(std::fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    }

    #[test]
    fn a_truncated_blob_is_refused_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let d = sha256(b"abc");
        let mut w = cs.ingest().unwrap();
        w.write(b"abc").unwrap();
        assert!(matches!(w.commit(&d, Some(4)), Err(ContentError::SizeMismatch { .. })));
    }
}
