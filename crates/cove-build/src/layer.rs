//! Overlay upper directory → OCI layer blob (gzip tar) in the content store.
//!
//! The tar is deterministic: entries sorted by name, ownership, mode and mtime taken from the
//! files, no user/group names. Overlay's own markers are translated to OCI whiteouts, the
//! reverse of what `cove_image::unpack` applies: a character device 0:0 becomes an empty
//! `.wh.<name>` file, a directory with `trusted.overlay.opaque=y` (or `user.overlay.opaque`)
//! gets a `.wh..wh..opq` entry right after it. `trusted.overlay.*`/`user.overlay.*` xattrs
//! are dropped, all other xattrs are kept (PAX `SCHILY.xattr.*`). Hard links inside the
//! layer stay hard links.
//!
//! The tree is walked without recursion, and a path deeper or longer than
//! [`crate::limits`] allows (a RUN step can nest directories as deep as it likes) fails the
//! export with [`LayerError::Path`] naming it.
//!
//! The upper directory must be self-contained: the backend should mount overlay with
//! `metacopy=off` and `redirect_dir=off` (or nothing on kernels without them), otherwise a
//! file in the upper directory can be a metadata-only stub.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use cove_image::ContentStore;
use cove_image::content::{ContentError, Ingest};
use cove_types::Digest;
use sha2::Digest as _;

use crate::limits::{PathProblem, ShortPath, check_path};
use crate::lower::{is_opaque, is_whiteout};

/// OCI media type of the layers this crate writes.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A layer written to the content store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerBlob {
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Compressed size in bytes.
    pub size: u64,
    /// Digest of the uncompressed tar (goes into `rootfs.diff_ids`).
    pub diff_id: Digest,
}

/// A failed layer export.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Reading the upper directory failed.
    #[error("read layer directory entry {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Writing the tar stream failed.
    #[error("write layer archive")]
    Write(#[source] io::Error),
    /// The content store refused the blob.
    #[error("store layer blob")]
    Store(#[source] ContentError),
    /// A path in the layer is too long or nested too deep to be stored.
    #[error("the layer's path {} {problem}", ShortPath(path))]
    Path {
        /// The path inside the layer.
        path: String,
        /// What is wrong with it.
        #[source]
        problem: PathProblem,
    },
}

impl LayerError {
    /// A path past the limits is the step's doing; everything else is ours.
    pub fn kind(&self) -> cove_types::ErrorKind {
        match self {
            LayerError::Path { .. } => cove_types::ErrorKind::InvalidArgument,
            _ => cove_types::ErrorKind::Internal,
        }
    }
}

/// Streams the blob into an `Ingest`, hashing the compressed bytes.
struct IngestWriter {
    ingest: Ingest,
    hasher: sha2::Sha256,
}

impl Write for IngestWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.ingest.write(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Hashes the uncompressed tar on its way into the compressor.
struct DiffIdWriter<W> {
    inner: W,
    hasher: sha2::Sha256,
}

impl<W: Write> Write for DiffIdWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `upper` as a gzip OCI layer into `store` (blocking IO: call it from
/// `spawn_blocking`).
pub fn write_layer(upper: &Path, store: &ContentStore) -> Result<LayerBlob, LayerError> {
    let ingest = store.ingest_sha256().map_err(LayerError::Store)?;
    let sink = IngestWriter { ingest, hasher: sha2::Sha256::new() };
    let gz = flate2::write::GzEncoder::new(sink, flate2::Compression::fast());
    let diff = DiffIdWriter { inner: gz, hasher: sha2::Sha256::new() };
    let mut tar = tar::Builder::new(diff);
    tar.follow_symlinks(false);
    let mut links = HashMap::new();
    add_tree(&mut tar, upper, &mut links)?;
    let diff = tar.into_inner().map_err(LayerError::Write)?;
    let diff_id = finish_hash(diff.hasher);
    let sink = diff.inner.finish().map_err(LayerError::Write)?;
    let digest = finish_hash(sink.hasher);
    let size = sink.ingest.size();
    sink.ingest.commit(&digest, Some(size)).map_err(LayerError::Store)?;
    Ok(LayerBlob { digest, size, diff_id })
}

fn finish_hash(h: sha2::Sha256) -> Digest {
    let bytes: [u8; 32] = h.finalize().into();
    Digest::sha256_from_bytes(&bytes)
}

/// One directory being written: where it is, its path in the layer (with a trailing `/`,
/// empty for the root), and the names still to write.
struct Dir {
    host: PathBuf,
    prefix: String,
    names: std::vec::IntoIter<OsString>,
}

fn open_dir(host: PathBuf, prefix: String) -> Result<Dir, LayerError> {
    let read = |source| LayerError::Read { path: host.clone(), source };
    let mut names: Vec<_> = std::fs::read_dir(&host)
        .map_err(read)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(read)?;
    names.sort();
    Ok(Dir { host, prefix, names: names.into_iter() })
}

/// Writes the tree under `root` depth first, entries sorted by name, with an explicit stack:
/// how deep a step nests directories must not decide how deep this thread's stack goes.
fn add_tree<W: Write>(
    tar: &mut tar::Builder<W>,
    root: &Path,
    links: &mut HashMap<(u64, u64), String>,
) -> Result<(), LayerError> {
    let mut stack = vec![open_dir(root.to_path_buf(), String::new())?];
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.names.next() else {
            stack.pop();
            continue;
        };
        let host = top.host.join(&name);
        let rel = format!("{}{}", top.prefix, name.to_string_lossy());
        if let Err(problem) = check_path(&rel) {
            return Err(LayerError::Path { path: rel, problem });
        }
        let meta =
            std::fs::symlink_metadata(&host).map_err(|source| LayerError::Read { path: host.clone(), source })?;
        let ft = meta.file_type();
        if is_whiteout(&meta) {
            let parent = rel.rsplit_once('/').map(|(p, _)| format!("{p}/")).unwrap_or_default();
            let wh = format!("{parent}.wh.{}", name.to_string_lossy());
            append_marker(tar, &wh, &meta)?;
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_uid(u64::from(meta.uid()));
        h.set_gid(u64::from(meta.gid()));
        h.set_mode(meta.mode() & 0o7777);
        h.set_mtime(meta.mtime().max(0) as u64);
        h.set_size(0);
        append_xattrs(tar, &host)?;
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            tar.append_data(&mut h, format!("{rel}/"), io::empty()).map_err(LayerError::Write)?;
            if is_opaque(&host) {
                append_marker(tar, &format!("{rel}/.wh..wh..opq"), &meta)?;
            }
            stack.push(open_dir(host, format!("{rel}/"))?);
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&host).map_err(|source| LayerError::Read { path: host.clone(), source })?;
            h.set_entry_type(tar::EntryType::Symlink);
            tar.append_link(&mut h, &rel, &target).map_err(LayerError::Write)?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                    h.set_entry_type(tar::EntryType::Link);
                    tar.append_link(&mut h, &rel, first).map_err(LayerError::Write)?;
                    continue;
                }
                links.insert((meta.dev(), meta.ino()), rel.clone());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(meta.len());
            let f = std::fs::File::open(&host).map_err(|source| LayerError::Read { path: host.clone(), source })?;
            tar.append_data(&mut h, &rel, io::BufReader::with_capacity(1 << 16, f)).map_err(LayerError::Write)?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            h.set_entry_type(if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            });
            let rdev = meta.rdev();
            h.set_device_major(rustix::fs::major(rdev)).map_err(LayerError::Write)?;
            h.set_device_minor(rustix::fs::minor(rdev)).map_err(LayerError::Write)?;
            tar.append_data(&mut h, &rel, io::empty()).map_err(LayerError::Write)?;
        }
        // Sockets are not part of an image.
    }
    Ok(())
}

fn append_marker<W: Write>(tar: &mut tar::Builder<W>, path: &str, meta: &std::fs::Metadata) -> Result<(), LayerError> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    h.set_mode(0o644);
    h.set_mtime(meta.mtime().max(0) as u64);
    tar.append_data(&mut h, path, io::empty()).map_err(LayerError::Write)
}

fn append_xattrs<W: Write>(tar: &mut tar::Builder<W>, host: &Path) -> Result<(), LayerError> {
    let mut names = vec![0u8; 4096];
    let n = match rustix::fs::llistxattr(host, &mut names) {
        Ok(n) => n,
        Err(_) => return Ok(()), // no xattr support: nothing to keep
    };
    let mut exts: Vec<(String, Vec<u8>)> = Vec::new();
    for raw in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let name = String::from_utf8_lossy(raw).into_owned();
        if name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.") {
            continue;
        }
        let mut value = vec![0u8; 65536];
        if let Ok(len) = rustix::fs::lgetxattr(host, name.as_str(), &mut value) {
            value.truncate(len);
            exts.push((format!("SCHILY.xattr.{name}"), value));
        }
    }
    if exts.is_empty() {
        return Ok(());
    }
    exts.sort();
    tar.append_pax_extensions(exts.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).map_err(LayerError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mknod_whiteout(p: &Path) -> bool {
        std::process::Command::new("mknod").arg(p).args(["c", "0", "0"]).status().is_ok_and(|s| s.success())
    }

    fn set_opaque(p: &Path) -> bool {
        rustix::fs::lsetxattr(p, "trusted.overlay.opaque", b"y", rustix::fs::XattrFlags::empty()).is_ok()
    }

    #[test]
    fn an_upper_dir_with_whiteouts_round_trips_through_unpack() {
        let t = tempfile::tempdir().unwrap();
        let store = ContentStore::open(&t.path().join("store")).unwrap();
        let lower = t.path().join("lower");
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::write(lower.join("etc/gone"), "old").unwrap();
        std::fs::write(lower.join("etc/kept"), "kept").unwrap();
        std::fs::create_dir_all(lower.join("opq/old")).unwrap();
        std::fs::write(lower.join("opq/old/f"), "x").unwrap();

        let upper = t.path().join("upper");
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::create_dir_all(upper.join("opq")).unwrap();
        std::fs::write(upper.join("opq/new"), "n").unwrap();
        std::fs::write(upper.join("etc/hello"), "hi").unwrap();
        std::fs::hard_link(upper.join("etc/hello"), upper.join("etc/hello2")).unwrap();
        std::os::unix::fs::symlink("hello", upper.join("etc/link")).unwrap();
        if !mknod_whiteout(&upper.join("etc/gone")) || !set_opaque(&upper.join("opq")) {
            eprintln!("skipped: whiteouts and trusted xattrs need root");
            return;
        }

        let blob = write_layer(&upper, &store).unwrap();
        assert!(store.contains(&blob.digest));
        assert_eq!(std::fs::metadata(store.path(&blob.digest)).unwrap().len(), blob.size);
        let reader = cove_image::unpack::open_layer(&store.path(&blob.digest)).unwrap();
        cove_image::unpack::apply_layer(&lower, reader, Some(&blob.diff_id.to_string())).unwrap();

        assert!(!lower.join("etc/gone").exists(), "the whiteout deleted the lower file");
        assert!(!lower.join("etc/.wh.gone").exists());
        assert_eq!(std::fs::read_to_string(lower.join("etc/kept")).unwrap(), "kept");
        assert_eq!(std::fs::read_to_string(lower.join("etc/hello")).unwrap(), "hi");
        assert_eq!(std::fs::read_link(lower.join("etc/link")).unwrap(), Path::new("hello"));
        assert_eq!(
            std::fs::metadata(lower.join("etc/hello")).unwrap().ino(),
            std::fs::metadata(lower.join("etc/hello2")).unwrap().ino()
        );
        let opq: Vec<_> = std::fs::read_dir(lower.join("opq")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(opq, ["new"], "the opaque dir hid the lower contents");
        let mut buf = [0u8; 4];
        assert!(rustix::fs::lgetxattr(lower.join("opq"), "trusted.overlay.opaque", &mut buf).is_err());
    }

    #[test]
    fn the_same_tree_gives_the_same_digests() {
        let t = tempfile::tempdir().unwrap();
        let store = ContentStore::open(&t.path().join("store")).unwrap();
        let upper = t.path().join("upper");
        std::fs::create_dir_all(upper.join("b/c")).unwrap();
        std::fs::write(upper.join("a"), "1").unwrap();
        std::fs::write(upper.join("b/c/d"), "2").unwrap();
        let one = write_layer(&upper, &store).unwrap();
        let two = write_layer(&upper, &store).unwrap();
        assert_eq!(one, two);
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(cove_image::unpack::open_layer(&store.path(&one.digest)).unwrap());
        for e in ar.entries().unwrap() {
            names.push(e.unwrap().path().unwrap().to_string_lossy().into_owned());
        }
        assert_eq!(names, ["a", "b/", "b/c/", "b/c/d"]);
    }

    fn export_on_a_small_stack(upper: PathBuf, store: ContentStore) -> Result<LayerBlob, LayerError> {
        crate::limits::on_small_stack(move || write_layer(&upper, &store))
    }

    #[test]
    fn a_tree_nested_thousands_of_directories_deep_is_refused_naming_the_depth_not_crashing() {
        let t = tempfile::tempdir().unwrap();
        let store = ContentStore::open(&t.path().join("store")).unwrap();
        let upper = t.path().join("upper");
        std::fs::create_dir(&upper).unwrap();
        crate::limits::nest_dirs(&upper, "a", 5000);
        let e = export_on_a_small_stack(upper.clone(), store).unwrap_err();
        assert!(matches!(&e, LayerError::Path { problem: PathProblem::TooDeep { depth: 513 }, .. }), "{e}");
        assert_eq!(e.kind(), cove_types::ErrorKind::InvalidArgument);
        let msg = cove_types::error::chain(&e);
        assert!(
            msg.starts_with("the layer's path a/a/a/")
                && msg.ends_with("nests 513 directories deep, over the limit of 512"),
            "{msg}"
        );
        std::fs::remove_dir_all(&upper).unwrap();
    }

    #[test]
    fn a_path_longer_than_the_limit_is_refused_naming_its_length() {
        let t = tempfile::tempdir().unwrap();
        let store = ContentStore::open(&t.path().join("store")).unwrap();
        let upper = t.path().join("upper");
        std::fs::create_dir(&upper).unwrap();
        crate::limits::nest_dirs(&upper, &"n".repeat(255), 13);
        let e = export_on_a_small_stack(upper, store).unwrap_err();
        assert!(matches!(&e, LayerError::Path { problem: PathProblem::TooLong { len: 3327 }, .. }), "{e}");
    }

    #[test]
    fn a_tree_just_inside_the_depth_limit_is_exported_on_a_small_stack() {
        let t = tempfile::tempdir().unwrap();
        let store = ContentStore::open(&t.path().join("store")).unwrap();
        let upper = t.path().join("upper");
        std::fs::create_dir(&upper).unwrap();
        crate::limits::nest_dirs(&upper, "a", crate::limits::MAX_PATH_DEPTH);
        let blob = export_on_a_small_stack(upper, store.clone()).unwrap();
        let mut ar = tar::Archive::new(cove_image::unpack::open_layer(&store.path(&blob.digest)).unwrap());
        assert_eq!(ar.entries().unwrap().count(), crate::limits::MAX_PATH_DEPTH);
    }
}
