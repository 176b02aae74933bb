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
    /// The blob's algorithm was not hashed while writing (an [`Ingest`] opened with
    /// [`ContentStore::ingest_for`] another algorithm), so it cannot be verified.
    #[error("cannot verify {digest}: its algorithm was not hashed while the blob was written")]
    NotHashed {
        /// The blob.
        digest: Digest,
    },
    /// [`Ingest::commit_sha256`] on an ingest that did not hash sha256.
    #[error("cannot commit under the blob's own sha256: it was not hashed while the blob was written")]
    NoSha256,
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

    /// The size in bytes of a stored blob.
    pub fn size(&self, d: &Digest) -> std::io::Result<u64> {
        Ok(std::fs::metadata(self.path(d))?.len())
    }

    /// Reads a whole (small) blob such as a manifest or config.
    pub fn read(&self, d: &Digest) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.path(d))
    }

    /// Starts writing a new blob whose digest is not known yet: every supported algorithm
    /// (sha256 and sha512) is hashed while writing, so [`Ingest::commit`] can verify either.
    pub fn ingest(&self) -> Result<Ingest, ContentError> {
        self.ingest_with(Hashers { sha256: Some(sha2::Sha256::new()), sha512: Some(sha2::Sha512::new()) })
    }

    /// Starts writing a new blob that will be committed under a sha256 digest (layers made
    /// here): sha512 is not computed.
    pub fn ingest_sha256(&self) -> Result<Ingest, ContentError> {
        self.ingest_with(Hashers { sha256: Some(sha2::Sha256::new()), sha512: None })
    }

    /// Starts writing a new blob that will be committed as `expected`: only its algorithm is
    /// hashed while writing.
    pub fn ingest_for(&self, expected: &Digest) -> Result<Ingest, ContentError> {
        let sha512 = expected.algorithm() == "sha512";
        self.ingest_with(Hashers { sha256: (!sha512).then(sha2::Sha256::new), sha512: sha512.then(sha2::Sha512::new) })
    }

    fn ingest_with(&self, hashers: Hashers) -> Result<Ingest, ContentError> {
        let path = self.root.join("ingest").join(uuid::Uuid::new_v4().to_string());
        let file = std::fs::File::create(&path).map_err(|source| ContentError::Write { path: path.clone(), source })?;
        Ok(Ingest {
            path,
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            hashers,
            size: 0,
            store: self.clone(),
        })
    }

    /// Stores bytes already in memory (manifests, configs) after checking that they hash to
    /// `expected`; a blob already present is kept as it is.
    pub fn put(&self, expected: &Digest, bytes: &[u8]) -> Result<(), ContentError> {
        let actual = hash_like(expected, bytes);
        if &actual != expected {
            return Err(ContentError::DigestMismatch { expected: expected.clone(), actual });
        }
        if self.contains(expected) {
            return Ok(());
        }
        let mut w = self.ingest_for(expected)?;
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

    /// Every blob present (sha256 and sha512).
    pub fn list(&self) -> Vec<Digest> {
        // Every supported algorithm, so that GC also frees sha512 blobs pushed to the registry.
        let mut out = Vec::new();
        for alg in ["sha256", "sha512"] {
            let Ok(rd) = std::fs::read_dir(self.root.join("blobs").join(alg)) else { continue };
            out.extend(rd.flatten().filter_map(|e| format!("{alg}:{}", e.file_name().to_string_lossy()).parse().ok()));
        }
        out
    }
}

/// A blob being written: hashed as it is written, moved into the store by [`Ingest::commit`].
/// Dropped without a commit, its file is deleted.
#[derive(Debug)]
pub struct Ingest {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    hashers: Hashers,
    size: u64,
    store: ContentStore,
}

/// The running hashes of an [`Ingest`], one per algorithm it can be committed under.
#[derive(Debug)]
struct Hashers {
    sha256: Option<sha2::Sha256>,
    sha512: Option<sha2::Sha512>,
}

impl Hashers {
    fn update(&mut self, buf: &[u8]) {
        if let Some(h) = &mut self.sha256 {
            h.update(buf);
        }
        if let Some(h) = &mut self.sha512 {
            h.update(buf);
        }
    }

    /// The digest of what was written, in `expected`'s algorithm; `None` when that
    /// algorithm was not hashed.
    fn finish_like(self, expected: &Digest) -> Option<Digest> {
        match expected.algorithm() {
            "sha256" => self.sha256.map(|h| Digest::sha256_from_bytes(&h.finalize().into())),
            "sha512" => self.sha512.map(|h| sha512_digest(&h.finalize())),
            _ => None,
        }
    }
}

impl Ingest {
    /// Appends bytes.
    pub fn write(&mut self, buf: &[u8]) -> Result<(), ContentError> {
        self.hashers.update(buf);
        self.size += buf.len() as u64;
        self.file.write_all(buf).map_err(|source| ContentError::Write { path: self.path.clone(), source })
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Verifies the digest (in its own algorithm, sha256 or sha512) and the size, fsyncs
    /// and links the file into place. A blob already stored under `expected` is never
    /// replaced: it was verified when it was committed, so the existing file is kept as is.
    pub fn commit(mut self, expected: &Digest, expected_size: Option<u64>) -> Result<(), ContentError> {
        let hashers = std::mem::replace(&mut self.hashers, Hashers { sha256: None, sha512: None });
        let actual =
            hashers.finish_like(expected).ok_or_else(|| ContentError::NotHashed { digest: expected.clone() })?;
        if &actual != expected {
            return Err(ContentError::DigestMismatch { expected: expected.clone(), actual });
        }
        if let Some(n) = expected_size.filter(|n| *n != self.size) {
            return Err(ContentError::SizeMismatch { digest: expected.clone(), expected: n, actual: self.size });
        }
        let commit = |source| ContentError::Commit { digest: expected.clone(), source };
        self.file.flush().map_err(commit)?;
        self.file.get_ref().sync_all().map_err(commit)?;
        let dst = self.store.path(expected);
        // A hard link never replaces an existing file (rename would); the ingest name is
        // removed when `self` drops.
        match std::fs::hard_link(&self.path, &dst) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                tracing::debug!(digest = %expected, "blob already stored; the existing copy is kept");
                return Ok(());
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::Unsupported | std::io::ErrorKind::PermissionDenied) => {
                // A file system without hard links: rename, unless the blob appeared.
                if dst.exists() {
                    return Ok(());
                }
                std::fs::rename(&self.path, &dst).map_err(commit)?;
            }
            Err(e) => return Err(commit(e)),
        }
        sync_dir(dst.parent().unwrap_or(Path::new("."))).map_err(commit)?;
        Ok(())
    }
}

impl Ingest {
    /// Commits under the sha256 of what was written and returns that digest: for content made
    /// here whose digest is known only at its end (a sandbox's disk archive). The ingest must
    /// hash sha256 ([`ContentStore::ingest_sha256`] or [`ContentStore::ingest`]).
    pub fn commit_sha256(self) -> Result<Digest, ContentError> {
        let h = self.hashers.sha256.clone().ok_or(ContentError::NoSha256)?;
        let digest = Digest::sha256_from_bytes(&h.finalize().into());
        let size = self.size;
        self.commit(&digest, Some(size))?;
        Ok(digest)
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

/// sha512 of a byte slice as a [`Digest`].
pub fn sha512(bytes: &[u8]) -> Digest {
    sha512_digest(&sha2::Sha512::digest(bytes))
}

/// The digest of `bytes` in the algorithm of `like` (sha256 or sha512).
pub fn hash_like(like: &Digest, bytes: &[u8]) -> Digest {
    match like.algorithm() {
        "sha512" => sha512(bytes),
        _ => sha256(bytes),
    }
}

fn sha512_digest(hash: &[u8]) -> Digest {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(7 + 128);
    s.push_str("sha512:");
    for b in hash {
        let _ = write!(s, "{b:02x}");
    }
    s.parse().expect("64 bytes of hex make a valid sha512 digest")
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
    fn a_blob_committed_under_its_own_sha256_is_found_by_that_digest() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let mut w = cs.ingest_sha256().unwrap();
        w.write(b"made here").unwrap();
        let d = w.commit_sha256().unwrap();
        assert_eq!(d, sha256(b"made here"));
        assert_eq!(cs.read(&d).unwrap(), b"made here");
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

    #[test]
    fn a_sha512_blob_is_verified_and_stored_under_its_algorithm() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let d = sha512(b"hello");
        assert_eq!(d.algorithm(), "sha512");
        let mut w = cs.ingest().unwrap();
        w.write(b"hello").unwrap();
        w.commit(&d, Some(5)).unwrap();
        assert_eq!(cs.read(&d).unwrap(), b"hello");
        assert!(dir.path().join("blobs/sha512").join(d.hex()).is_file());
    }

    #[test]
    fn a_sha512_blob_with_the_wrong_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let d = sha512(b"organization A's bytes");
        for mut w in [cs.ingest().unwrap(), cs.ingest_for(&d).unwrap()] {
            w.write(b"organization B's bytes").unwrap();
            assert!(matches!(w.commit(&d, None), Err(ContentError::DigestMismatch { .. })));
        }
        assert!(!cs.contains(&d));
        assert!(matches!(cs.put(&d, b"organization B's bytes"), Err(ContentError::DigestMismatch { .. })));
        assert!(!cs.contains(&d));
        assert_eq!(std::fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    }

    #[test]
    fn an_ingest_for_one_algorithm_cannot_be_committed_under_another() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let mut w = cs.ingest_for(&sha256(b"x")).unwrap();
        w.write(b"x").unwrap();
        assert!(matches!(w.commit(&sha512(b"x"), None), Err(ContentError::NotHashed { .. })));
        assert!(!cs.contains(&sha512(b"x")));
    }

    #[test]
    fn a_stored_blob_is_never_replaced_by_a_later_commit() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let d = sha512(b"first");
        cs.put(&d, b"first").unwrap();
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let before = inode(&cs.path(&d));
        let mut w = cs.ingest().unwrap();
        w.write(b"first").unwrap();
        w.commit(&d, Some(5)).unwrap();
        assert_eq!(inode(&cs.path(&d)), before, "the stored file is kept, not replaced");
        assert_eq!(cs.read(&d).unwrap(), b"first");
        assert_eq!(std::fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    }

    #[test]
    fn put_checks_the_bytes_even_when_the_blob_is_already_stored() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let d = sha256(b"manifest");
        cs.put(&d, b"manifest").unwrap();
        assert!(matches!(cs.put(&d, b"other"), Err(ContentError::DigestMismatch { .. })));
        assert_eq!(cs.read(&d).unwrap(), b"manifest");
        assert_eq!(cs.size(&d).unwrap(), 8);
    }
}
