//! Repository metadata of the built-in registry, as small files (the blobs themselves are in
//! the shared content store). The layout follows the reference registry's:
//!
//! ```text
//! registry/repos/<name>/_layers/<alg>/<hex>               a blob linked to the repository (empty)
//! registry/repos/<name>/_manifests/revisions/<alg>/<hex>  a manifest of the repository: its media type
//! registry/repos/<name>/_manifests/tags/<tag>             the digest the tag points at
//! registry/repos/<name>/_manifests/referrers/<alg>/<hex>/<alg>-<hex>
//!                                     a manifest whose `subject` is <alg>:<hex>: its descriptor
//! ```
//!
//! The referrers index is one small file per (subject, referrer), so listing a subject's
//! referrers reads one directory however many manifests the repository has, and adding or
//! removing one never rewrites the others. An entry is written before its manifest's revision
//! and removed after it, and [`Repos::referrers`] lists only entries whose manifest is
//! recorded, so a crash in between never shows a manifest that is not there.
//!
//! `<name>` always starts with the owning organization's id (`<orgId>/…`), so an
//! organization's repositories are the tree under `registry/repos/<orgId>/`. Names are
//! validated by [`super::path::valid_name`] (no `..`, no component starting with `_`), which
//! keeps every path inside the root and apart from the `_layers`/`_manifests` entries.
//! Every write is atomic (temp file, fsync, rename), so the state survives a crash.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cove_types::Digest;
use cove_types::fs::write_atomic;

use super::path::{valid_name, valid_tag};

/// The file-backed repository metadata.
#[derive(Debug)]
pub struct Repos {
    root: PathBuf,
    /// Serializes writes: `write_atomic` uses one temp name per target and process.
    write: Mutex<()>,
}

/// A failed metadata read or write.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}")]
pub struct RepoError {
    /// What was being done.
    pub op: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// Cause.
    #[source]
    pub source: std::io::Error,
}

/// Every digest the registry's metadata points at, for the garbage collector.
#[derive(Debug, Default)]
pub struct Referenced {
    /// Blobs linked to some repository.
    pub blobs: HashSet<Digest>,
    /// Manifests of some repository.
    pub manifests: HashSet<Digest>,
}

impl Repos {
    /// Opens (creating) `<data_dir>/registry/repos`.
    pub fn open(data_dir: &Path) -> Result<Self, RepoError> {
        let root = data_dir.join("registry").join("repos");
        std::fs::create_dir_all(&root).map_err(|source| RepoError { op: "create", path: root.clone(), source })?;
        Ok(Repos { root, write: Mutex::new(()) })
    }

    fn dir(&self, name: &str) -> PathBuf {
        debug_assert!(valid_name(name), "names are validated before they reach the metadata");
        self.root.join(name)
    }

    fn layer(&self, name: &str, d: &Digest) -> PathBuf {
        self.dir(name).join("_layers").join(d.algorithm()).join(d.hex())
    }

    fn revision(&self, name: &str, d: &Digest) -> PathBuf {
        self.dir(name).join("_manifests/revisions").join(d.algorithm()).join(d.hex())
    }

    fn tag_path(&self, name: &str, tag: &str) -> PathBuf {
        self.dir(name).join("_manifests/tags").join(tag)
    }

    fn referrers_dir(&self, name: &str, subject: &Digest) -> PathBuf {
        self.dir(name).join("_manifests/referrers").join(subject.algorithm()).join(subject.hex())
    }

    fn referrer(&self, name: &str, subject: &Digest, d: &Digest) -> PathBuf {
        self.referrers_dir(name, subject).join(format!("{}-{}", d.algorithm(), d.hex()))
    }

    fn write(&self, op: &'static str, path: &Path, data: &[u8]) -> Result<(), RepoError> {
        let err = |source| RepoError { op, path: path.to_path_buf(), source };
        let _g = self.write.lock().expect("metadata write lock is never poisoned");
        std::fs::create_dir_all(path.parent().unwrap_or(&self.root)).map_err(err)?;
        write_atomic(path, data).map_err(err)
    }

    fn remove(&self, op: &'static str, path: &Path) -> Result<bool, RepoError> {
        let _g = self.write.lock().expect("metadata write lock is never poisoned");
        match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(RepoError { op, path: path.to_path_buf(), source }),
        }
    }

    /// Whether the repository has ever had a blob or a manifest.
    pub fn exists(&self, name: &str) -> bool {
        let d = self.dir(name);
        d.join("_layers").is_dir() || d.join("_manifests").is_dir()
    }

    /// Links a blob to the repository.
    pub fn link_blob(&self, name: &str, d: &Digest) -> Result<(), RepoError> {
        let p = self.layer(name, d);
        if p.is_file() {
            return Ok(());
        }
        self.write("link blob", &p, b"")
    }

    /// Whether the blob is linked to the repository.
    pub fn has_blob(&self, name: &str, d: &Digest) -> bool {
        self.layer(name, d).is_file()
    }

    /// Unlinks a blob; false when it was not linked.
    pub fn unlink_blob(&self, name: &str, d: &Digest) -> Result<bool, RepoError> {
        self.remove("unlink blob", &self.layer(name, d))
    }

    /// Records a manifest of the repository with its media type.
    pub fn put_manifest(&self, name: &str, d: &Digest, media_type: &str) -> Result<(), RepoError> {
        self.write("record manifest", &self.revision(name, d), media_type.as_bytes())
    }

    /// The media type of a manifest of the repository; `None` when it has no such manifest.
    pub fn manifest_media_type(&self, name: &str, d: &Digest) -> Option<String> {
        std::fs::read_to_string(self.revision(name, d)).ok()
    }

    /// Deletes a manifest and every tag pointing at it; false when there was none.
    pub fn delete_manifest(&self, name: &str, d: &Digest) -> Result<bool, RepoError> {
        if !self.remove("delete manifest", &self.revision(name, d))? {
            return Ok(false);
        }
        for t in self.tags(name) {
            if self.resolve_tag(name, &t).as_ref() == Some(d) {
                self.remove("delete tag", &self.tag_path(name, &t))?;
            }
        }
        Ok(true)
    }

    /// Records manifest `d` as a referrer of `subject`, with the descriptor the referrers
    /// list shows for it.
    pub fn add_referrer(&self, name: &str, subject: &Digest, d: &Digest, descriptor: &[u8]) -> Result<(), RepoError> {
        self.write("record referrer", &self.referrer(name, subject, d), descriptor)
    }

    /// Removes manifest `d` from the referrers of `subject`, or, when its subject is not
    /// known (the manifest's bytes are gone), from those of every subject.
    pub fn remove_referrer(&self, name: &str, subject: Option<&Digest>, d: &Digest) -> Result<(), RepoError> {
        if let Some(subject) = subject {
            self.remove("remove referrer", &self.referrer(name, subject, d))?;
            return Ok(());
        }
        let file = format!("{}-{}", d.algorithm(), d.hex());
        let Ok(algs) = std::fs::read_dir(self.dir(name).join("_manifests/referrers")) else { return Ok(()) };
        for subjects in algs.flatten().filter_map(|a| std::fs::read_dir(a.path()).ok()) {
            for s in subjects.flatten() {
                self.remove("remove referrer", &s.path().join(&file))?;
            }
        }
        Ok(())
    }

    /// The descriptors of the recorded manifests whose subject is `subject`, by digest.
    pub fn referrers(&self, name: &str, subject: &Digest) -> Result<Vec<Vec<u8>>, RepoError> {
        let dir = self.referrers_dir(name, subject);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(RepoError { op: "list referrers", path: dir, source }),
        };
        let mut entries: Vec<(Digest, PathBuf)> = rd
            .flatten()
            .filter_map(|e| {
                let file = e.file_name().into_string().ok()?;
                let (alg, hex) = file.split_once('-')?;
                Some((format!("{alg}:{hex}").parse().ok()?, e.path()))
            })
            .filter(|(d, _)| self.revision(name, d).is_file())
            .collect();
        entries.sort();
        let mut out = Vec::with_capacity(entries.len());
        for (_, path) in entries {
            match std::fs::read(&path) {
                Ok(b) => out.push(b),
                // Removed since the listing (its manifest deleted meanwhile).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(RepoError { op: "read referrer", path, source }),
            }
        }
        Ok(out)
    }

    /// Points a tag at a manifest.
    pub fn set_tag(&self, name: &str, tag: &str, d: &Digest) -> Result<(), RepoError> {
        self.write("write tag", &self.tag_path(name, tag), d.to_string().as_bytes())
    }

    /// The manifest a tag points at.
    pub fn resolve_tag(&self, name: &str, tag: &str) -> Option<Digest> {
        std::fs::read_to_string(self.tag_path(name, tag)).ok()?.trim().parse().ok()
    }

    /// Deletes a tag; false when there was none.
    pub fn delete_tag(&self, name: &str, tag: &str) -> Result<bool, RepoError> {
        self.remove("delete tag", &self.tag_path(name, tag))
    }

    /// The repository's tags, sorted.
    pub fn tags(&self, name: &str) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.dir(name).join("_manifests/tags")) else { return Vec::new() };
        let mut tags: Vec<String> =
            rd.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|t| valid_tag(t)).collect();
        tags.sort();
        tags
    }

    /// The repositories under `prefix` (an organization id), sorted.
    pub fn repositories(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        if valid_name(prefix) {
            self.walk(prefix, &mut out);
        }
        out.sort();
        out
    }

    fn walk(&self, name: &str, out: &mut Vec<String>) {
        if self.exists(name) {
            out.push(name.to_string());
        }
        let Ok(rd) = std::fs::read_dir(self.dir(name)) else { return };
        for e in rd.flatten() {
            let Ok(child) = e.file_name().into_string() else { continue };
            let full = format!("{name}/{child}");
            if e.file_type().is_ok_and(|t| t.is_dir()) && valid_name(&full) {
                self.walk(&full, out);
            }
        }
    }

    /// Every linked blob and recorded manifest in all repositories.
    pub fn referenced(&self) -> Referenced {
        let mut r = Referenced::default();
        let Ok(rd) = std::fs::read_dir(&self.root) else { return r };
        for e in rd.flatten() {
            let Ok(org) = e.file_name().into_string() else { continue };
            for repo in self.repositories(&org) {
                collect_digests(&self.dir(&repo).join("_layers"), &mut r.blobs);
                collect_digests(&self.dir(&repo).join("_manifests/revisions"), &mut r.manifests);
            }
        }
        r
    }
}

/// `<dir>/<alg>/<hex>` files as digests.
fn collect_digests(dir: &Path, into: &mut HashSet<Digest>) {
    let Ok(algs) = std::fs::read_dir(dir) else { return };
    for a in algs.flatten() {
        let alg = a.file_name().to_string_lossy().into_owned();
        let Ok(files) = std::fs::read_dir(a.path()) else { continue };
        for f in files.flatten() {
            if let Ok(d) = format!("{alg}:{}", f.file_name().to_string_lossy()).parse() {
                into.insert(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(s: &str) -> Digest {
        cove_image::content::sha256(s.as_bytes())
    }

    #[test]
    fn tags_blobs_and_manifests_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (m, b) = (digest("manifest"), digest("layer"));
        {
            let r = Repos::open(dir.path()).unwrap();
            r.link_blob("org1/app", &b).unwrap();
            r.put_manifest("org1/app", &m, "application/vnd.oci.image.manifest.v1+json").unwrap();
            r.set_tag("org1/app", "1.0", &m).unwrap();
        }
        let r = Repos::open(dir.path()).unwrap();
        assert!(r.has_blob("org1/app", &b));
        assert_eq!(r.resolve_tag("org1/app", "1.0"), Some(m.clone()));
        assert_eq!(
            r.manifest_media_type("org1/app", &m).as_deref(),
            Some("application/vnd.oci.image.manifest.v1+json")
        );
        let refs = r.referenced();
        assert!(refs.blobs.contains(&b) && refs.manifests.contains(&m));
    }

    #[test]
    fn repositories_are_listed_per_organization_including_nested_ones() {
        let dir = tempfile::tempdir().unwrap();
        let r = Repos::open(dir.path()).unwrap();
        let b = digest("x");
        for n in ["org1/a", "org1/a/b", "org1/c", "org2/a"] {
            r.link_blob(n, &b).unwrap();
        }
        assert_eq!(r.repositories("org1"), vec!["org1/a", "org1/a/b", "org1/c"]);
        assert_eq!(r.repositories("org2"), vec!["org2/a"]);
        assert!(r.repositories("org3").is_empty());
    }

    #[test]
    fn referrers_are_listed_by_subject_only_while_their_manifest_is_recorded_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (subject, other) = (digest("subject"), digest("other"));
        let (a, b, c) = (digest("a"), cove_image::content::sha512(b"b"), digest("c"));
        {
            let r = Repos::open(dir.path()).unwrap();
            for (d, s) in [(&a, &subject), (&b, &subject), (&c, &other)] {
                r.add_referrer("o/x", s, d, d.to_string().as_bytes()).unwrap();
                r.put_manifest("o/x", d, "t").unwrap();
            }
            // Recorded as a referrer but its manifest never was (a crash in between).
            r.add_referrer("o/x", &subject, &digest("half"), b"half").unwrap();
        }
        let r = Repos::open(dir.path()).unwrap();
        let mut want = vec![a.to_string().into_bytes(), b.to_string().into_bytes()];
        want.sort_by_key(|w| String::from_utf8(w.clone()).unwrap().parse::<Digest>().unwrap());
        assert_eq!(r.referrers("o/x", &subject).unwrap(), want);
        assert_eq!(r.referrers("o/x", &other).unwrap(), vec![c.to_string().into_bytes()]);
        assert!(r.referrers("o/x", &digest("none")).unwrap().is_empty());
        assert!(r.referrers("o/never", &subject).unwrap().is_empty());

        r.delete_manifest("o/x", &a).unwrap();
        assert_eq!(r.referrers("o/x", &subject).unwrap(), vec![b.to_string().into_bytes()], "a is gone");
        r.remove_referrer("o/x", Some(&subject), &a).unwrap();
        // Without the subject every subject's entry for the manifest goes.
        r.remove_referrer("o/x", None, &c).unwrap();
        assert!(!r.referrer("o/x", &other, &c).exists());
        assert!(r.referrer("o/x", &subject, &b).exists());
    }

    #[test]
    fn deleting_a_manifest_removes_the_tags_pointing_at_it_only() {
        let dir = tempfile::tempdir().unwrap();
        let r = Repos::open(dir.path()).unwrap();
        let (m1, m2) = (digest("m1"), digest("m2"));
        r.put_manifest("o/x", &m1, "t").unwrap();
        r.put_manifest("o/x", &m2, "t").unwrap();
        r.set_tag("o/x", "a", &m1).unwrap();
        r.set_tag("o/x", "b", &m1).unwrap();
        r.set_tag("o/x", "c", &m2).unwrap();
        assert!(r.delete_manifest("o/x", &m1).unwrap());
        assert!(!r.delete_manifest("o/x", &m1).unwrap());
        assert_eq!(r.tags("o/x"), vec!["c"]);
    }
}
