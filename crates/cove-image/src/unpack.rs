//! Applying image layers to a root filesystem.
//!
//! Layers are applied in order into one directory. Each tar entry is placed with its parent
//! path resolved *inside* the root (symlinks followed but clamped to the root, as
//! containerd's `fs.RootPath` does), so no entry, link or whiteout can touch anything outside
//! it. Entries whose own name contains `..` or is absolute are refused outright: a layer that
//! tries that is malicious or broken, and the pull fails with the entry named.
//!
//! OCI whiteouts: `.wh.NAME` deletes `NAME` from lower layers; `.wh..wh..opq` empties its
//! directory of lower-layer entries while keeping this layer's own.
//!
//! Layers cannot make devices or bombs on the host: character and block device entries are
//! skipped (a sandbox's `/dev` is a tmpfs the runtime fills; a device under `images/` would
//! be usable by host users), and every byte of file content, holes of sparse entries
//! included (they are written out as zeros), is charged to a [`Budget`] before it is written.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use cove_types::Digest;
use sha2::Digest as _;

/// Symlink hops allowed while resolving one path (Linux's own limit).
const MAX_SYMLINK_HOPS: usize = 40;
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// A failed layer application. Each variant names the layer entry involved.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// Reading the tar stream failed (corrupt or truncated layer).
    #[error("read layer archive")]
    ReadArchive(#[source] io::Error),
    /// An entry's path is absolute or contains `..`.
    #[error("layer entry {} escapes the root filesystem", Shown(path))]
    EscapingPath {
        /// The entry path as in the archive.
        path: String,
    },
    /// A hard link points outside the root or at something missing.
    #[error("layer entry {} is a hard link to {}, which {why}", Shown(path), Shown(target))]
    BadHardlink {
        /// The entry path.
        path: String,
        /// Its link target.
        target: String,
        /// What is wrong.
        why: &'static str,
    },
    /// Too many symlinks while resolving a path.
    #[error("too many symbolic links while resolving {}", Shown(path))]
    SymlinkLoop {
        /// The entry path.
        path: String,
    },
    /// Creating the entry on disk failed. The cause is part of the message as well: callers
    /// that print only the top error (`to_string()`) must not lose why.
    #[error("create {} from layer entry: {source}", Shown(path))]
    Create {
        /// The entry path.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A regular file would take the bytes written past the image's [`Budget`].
    #[error(
        "layer entry {path:?} ({}) would take the unpacked image past its size limit of {} ({why})",
        Bytes(*size),
        Bytes(*limit)
    )]
    TooLarge {
        /// The entry path.
        path: String,
        /// Its content size (for a sparse entry, its real size with the holes).
        size: u64,
        /// The budget's limit in bytes.
        limit: u64,
        /// Where the limit comes from.
        why: String,
    },
    /// The uncompressed stream does not hash to the config's diff id.
    #[error("layer content does not match its diff id: expected {expected}, got {actual}")]
    DiffIdMismatch {
        /// From the image config.
        expected: String,
        /// Computed.
        actual: Digest,
    },
}

/// The bytes of file content the layers of one image may still write, and why that many: a
/// layer that would go past it fails with [`UnpackError::TooLarge`] before anything of the
/// offending entry is written. Bytes are counted as written, not net: a file that a later
/// layer deletes or replaces still counts.
#[derive(Debug, Clone)]
pub struct Budget {
    limit: u64,
    used: u64,
    why: String,
}

impl Budget {
    /// At most `limit` bytes; `why` says where the limit comes from (it ends up in errors).
    pub fn new(limit: u64, why: impl Into<String>) -> Self {
        Budget { limit, used: 0, why: why.into() }
    }

    /// No limit (build contexts, tests).
    pub fn unlimited() -> Self {
        Budget::new(u64::MAX, "no limit")
    }

    /// Bytes charged so far.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Charges `size` bytes for the entry `path`, or refuses them all.
    fn charge(&mut self, path: &str, size: u64) -> Result<(), UnpackError> {
        match self.used.checked_add(size) {
            Some(total) if total <= self.limit => {
                self.used = total;
                Ok(())
            }
            _ => Err(UnpackError::TooLarge { path: path.to_string(), size, limit: self.limit, why: self.why.clone() }),
        }
    }
}

/// A byte count for people: `512 B`, `1.5 MiB`, `3.0 GiB`.
#[derive(Debug, Clone, Copy)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut v = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while v >= 1024.0 && unit + 1 < UNITS.len() {
            v /= 1024.0;
            unit += 1;
        }
        write!(f, "{v:.1} {}", UNITS[unit])
    }
}

/// Opens a stored layer blob as an uncompressed tar stream, detecting gzip and zstd by their
/// magic numbers (media types lie often enough that the bytes are the better witness).
pub fn open_layer(path: &Path) -> io::Result<Box<dyn Read + Send>> {
    let mut f = std::fs::File::open(path)?;
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut f, &mut magic)?;
    let head = io::Cursor::new(magic[..n].to_vec());
    let r = io::BufReader::with_capacity(1 << 20, head.chain(f));
    if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(r)))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(r)?))
    } else {
        Ok(Box::new(r))
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Bytes of a layer read ahead of the applier: 16 chunks of 256 KiB.
const READ_AHEAD_CHUNK: usize = 256 << 10;
const READ_AHEAD_CHUNKS: usize = 16;

/// The applier's end of the read-ahead channel.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(c)) => (self.chunk, self.at) = (c, 0),
                Ok(Err(e)) => return Err(e),
                // The reader finished: end of the stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Applies one uncompressed layer stream to `root`, checking it against `diff_id` when given,
/// with no limit on the bytes it writes.
pub fn apply_layer(root: &Path, layer: impl Read + Send, diff_id: Option<&str>) -> Result<(), UnpackError> {
    apply_layer_within(root, layer, diff_id, &mut Budget::unlimited())
}

/// Applies one uncompressed layer stream to `root` like [`apply_layer`], charging the file
/// content it writes to `budget` (shared by all layers of an image).
///
/// Two threads: one reads the stream (decompressing it) and hashes it, the calling one parses
/// the tar and writes the files. A layer's unpack is about half each, so on two cores this
/// takes the time of the slower half rather than of both.
pub fn apply_layer_within(
    root: &Path,
    layer: impl Read + Send,
    diff_id: Option<&str>,
    budget: &mut Budget,
) -> Result<(), UnpackError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(READ_AHEAD_CHUNKS);
    let actual = std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let mut hashing = HashingReader { inner: layer, hasher: sha2::Sha256::new() };
            loop {
                let mut buf = vec![0u8; READ_AHEAD_CHUNK];
                match read_up_to(&mut hashing, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        // The applier stopped (an error): nothing more to read.
                        if tx.send(Ok(buf)).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                }
            }
            let h: [u8; 32] = hashing.hasher.finalize().into();
            h
        });
        let mut chunks = ChannelReader { rx, chunk: Vec::new(), at: 0 };
        let applied = (|| {
            let mut archive = tar::Archive::new(&mut chunks);
            let mut applier = Applier { root, budget, created: HashSet::new(), dir_times: Vec::new() };
            for entry in archive.entries().map_err(UnpackError::ReadArchive)? {
                let entry = entry.map_err(UnpackError::ReadArchive)?;
                applier.entry(entry)?;
            }
            // Directory mtimes last: creating children changes them.
            for (path, mtime) in applier.dir_times.iter().rev() {
                set_mtime(path, *mtime);
            }
            // Drain the tar's zero padding so the hash covers the whole stream.
            io::copy(&mut chunks, &mut io::sink()).map_err(UnpackError::ReadArchive)?;
            Ok(())
        })();
        // Dropping the receiver ends the reader early after an error.
        drop(chunks);
        let h = reader.join().map_err(|_| UnpackError::ReadArchive(io::Error::other("the layer reader panicked")))?;
        applied.map(|()| h)
    })?;
    let actual = Digest::sha256_from_bytes(&actual);
    if let Some(expected) = diff_id
        && expected != actual.to_string()
    {
        return Err(UnpackError::DiffIdMismatch { expected: expected.to_string(), actual });
    }
    Ok(())
}

struct Applier<'a> {
    root: &'a Path,
    budget: &'a mut Budget,
    /// Paths this layer has put in place: an opaque marker keeps them.
    created: HashSet<PathBuf>,
    dir_times: Vec<(PathBuf, u64)>,
}

impl Applier<'_> {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let raw_str = String::from_utf8_lossy(&raw).into_owned();
        let rel = clean_relative(&raw_str).ok_or_else(|| UnpackError::EscapingPath { path: raw_str.clone() })?;
        let Some(name) = rel.file_name().map(|n| n.to_os_string()) else {
            return Ok(()); // the root itself ("./"): nothing to create
        };
        let create = |source| UnpackError::Create { path: raw_str.clone(), source };
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let parent =
            resolve_in_root(self.root, parent_rel).ok_or_else(|| UnpackError::SymlinkLoop { path: raw_str.clone() })?;
        let name_str = name.to_string_lossy();

        if name_str == OPAQUE_MARKER {
            if let Ok(rd) = std::fs::read_dir(&parent) {
                for child in rd.flatten() {
                    let p = child.path();
                    if !self.created.contains(&p) {
                        remove_any(&p).map_err(create)?;
                    }
                }
            }
            return Ok(());
        }
        if let Some(victim) = name_str.strip_prefix(WHITEOUT_PREFIX) {
            if victim.is_empty() || victim == "." || victim == ".." {
                return Err(UnpackError::EscapingPath { path: raw_str });
            }
            remove_any(&parent.join(victim)).map_err(create)?;
            return Ok(());
        }

        std::fs::create_dir_all(&parent).map_err(create)?;
        let dst = parent.join(&name);
        let header = entry.header().clone();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let mtime = header.mtime().unwrap_or(0);
        let kind = header.entry_type();

        match kind {
            tar::EntryType::Directory => {
                match std::fs::symlink_metadata(&dst) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_any(&dst).map_err(create)?;
                        std::fs::create_dir(&dst).map_err(create)?;
                    }
                    Err(_) => std::fs::create_dir(&dst).map_err(create)?,
                }
                self.dir_times.push((dst.clone(), mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                // The tar crate reads a GNU sparse entry with its holes filled with zeros,
                // and those zeros are written: its size here is the real (expanded) size.
                self.budget.charge(&raw_str, entry.size())?;
                remove_any(&dst).map_err(create)?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(&dst)
                    .map_err(create)?;
                io::copy(&mut entry, &mut f).map_err(UnpackError::ReadArchive)?;
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|b| OsString::from(String::from_utf8_lossy(&b).into_owned()));
                let target = target
                    .ok_or_else(|| create(io::Error::new(io::ErrorKind::InvalidData, "symlink without target")))?;
                remove_any(&dst).map_err(create)?;
                std::os::unix::fs::symlink(&target, &dst).map_err(create)?;
            }
            tar::EntryType::Link => {
                let target =
                    entry.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
                let bad = |why| UnpackError::BadHardlink { path: raw_str.clone(), target: target.clone(), why };
                let target_rel = clean_relative(&target).ok_or_else(|| bad("escapes the root filesystem"))?;
                let tparent = resolve_in_root(self.root, target_rel.parent().unwrap_or(Path::new("")))
                    .ok_or_else(|| bad("goes through a symlink loop"))?;
                let src = tparent.join(target_rel.file_name().ok_or_else(|| bad("names no file"))?);
                match std::fs::symlink_metadata(&src) {
                    Ok(m) if !m.is_dir() => {}
                    Ok(_) => return Err(bad("is a directory")),
                    Err(_) => return Err(bad("does not exist in this or a lower layer")),
                }
                if src != dst {
                    remove_any(&dst).map_err(create)?;
                    std::fs::hard_link(&src, &dst).map_err(create)?;
                }
                self.created.insert(dst);
                return Ok(()); // a hard link shares the target's metadata
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                // A device node in an image tree would be a device for host users too, and a
                // sandbox's /dev comes from the runtime. What the layer replaced is gone.
                tracing::debug!(
                    path = %raw_str,
                    kind = ?kind,
                    major = header.device_major().ok().flatten().unwrap_or(0),
                    minor = header.device_minor().ok().flatten().unwrap_or(0),
                    "skipping device node from layer"
                );
                remove_any(&dst).map_err(create)?;
                return Ok(());
            }
            tar::EntryType::Fifo => {
                remove_any(&dst).map_err(create)?;
                let perm = rustix::fs::Mode::from_raw_mode(mode);
                rustix::fs::mknodat(rustix::fs::CWD, &dst, rustix::fs::FileType::Fifo, perm, 0)
                    .map_err(|e| create(e.into()))?;
            }
            // PAX/GNU headers are folded into their entries by the tar crate; anything else
            // (sockets, unknown types) has no place in a root filesystem.
            _ => return Ok(()),
        }

        if kind != tar::EntryType::Symlink {
            let is_file =
                matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse);
            let mode = if is_file { safe_file_mode(mode, &raw_str) } else { mode };
            // chown before chmod: chown clears set-uid/set-gid bits.
            std::os::unix::fs::lchown(&dst, Some(uid), Some(gid)).map_err(create)?;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode)).map_err(create)?;
        } else {
            std::os::unix::fs::lchown(&dst, Some(uid), Some(gid)).map_err(create)?;
        }
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                let Ok(key) = ext.key() else { continue };
                if let Some(attr) = key.strip_prefix("SCHILY.xattr.") {
                    // overlayfs reads trusted.overlay.* from lower dirs: an image must not
                    // be able to plant them.
                    if attr.starts_with("trusted.overlay.") {
                        continue;
                    }
                    rustix::fs::lsetxattr(&dst, attr, ext.value_bytes(), rustix::fs::XattrFlags::empty())
                        .map_err(|e| create(e.into()))?;
                }
            }
        }
        if kind != tar::EntryType::Directory {
            set_mtime(&dst, mtime);
        }
        self.created.insert(dst);
        Ok(())
    }
}

/// A regular file's mode as in the layer, except that a set-uid or set-gid file is never
/// left writable by its group or others: anyone who can reach the image tree on the host
/// could otherwise put their own code into a program that runs as its owner (often root).
fn safe_file_mode(mode: u32, path: &str) -> u32 {
    if mode & 0o6000 != 0 && mode & 0o022 != 0 {
        tracing::debug!(path, mode = %format!("{mode:o}"), "set-id file from layer made writable by its owner only");
        mode & !0o022
    } else {
        mode
    }
}

/// Normalises an archive path to a relative one; `None` when it is absolute or has `..`.
fn clean_relative(p: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Resolves `rel` under `root`, following symlinks found on the way but never leaving `root`
/// (an absolute link target restarts at `root`, `..` stops at it). Missing components are
/// kept as they are. `None` on a symlink loop.
pub fn resolve_in_root(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut pending: Vec<OsString> = rel.components().rev().filter_map(component_name).collect();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let candidate: PathBuf = root.join(resolved.iter().collect::<PathBuf>()).join(&c);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return None;
                }
                let target = std::fs::read_link(&candidate).ok()?;
                if target.is_absolute() {
                    resolved.clear();
                }
                pending.extend(target.components().rev().filter_map(component_name));
            }
            _ => resolved.push(c),
        }
    }
    Some(root.join(resolved.iter().collect::<PathBuf>()))
}

fn component_name(c: Component<'_>) -> Option<OsString> {
    match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        _ => None,
    }
}

fn remove_any(p: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_mtime(p: &Path, mtime: u64) {
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec { tv_sec: mtime as i64, tv_nsec: 0 },
        last_modification: rustix::fs::Timespec { tv_sec: mtime as i64, tv_nsec: 0 },
    };
    // Best effort: a wrong mtime never makes a root filesystem unusable.
    let _ = rustix::fs::utimensat(rustix::fs::CWD, p, &ts, rustix::fs::AtFlags::SYMLINK_NOFOLLOW);
}

/// Total apparent size of regular files under `root` (hard links counted once).
pub fn tree_size(root: &Path) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() && (m.nlink() == 1 || seen.insert(m.ino())) {
                total += m.len();
            }
        }
    }
    total
}

/// An entry path in an error message: quoted, and shortened to its start and end when long,
/// so an entry thousands of directories deep does not make a message thousands of bytes long.
struct Shown<'a>(&'a str);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const KEEP: usize = 48;
        let p = self.0;
        if p.len() <= 3 * KEEP {
            return write!(f, "{p:?}");
        }
        let mut head = KEEP;
        while !p.is_char_boundary(head) {
            head -= 1;
        }
        let mut tail = p.len() - KEEP;
        while !p.is_char_boundary(tail) {
            tail += 1;
        }
        write!(f, "\"{}…{}\" ({} bytes)", p[..head].escape_debug(), p[tail..].escape_debug(), p.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tar in memory from (path, kind, content/link target) triples.
    fn layer(entries: &[(&str, char, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o755);
            h.set_mtime(1_600_000_000);
            match kind {
                'd' => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                }
                'f' => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                }
                's' => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                }
                'h' => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                }
                _ => unreachable!(),
            }
            // Write the raw name so that tests can use paths the builder would refuse.
            let name = h.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            if matches!(kind, 's' | 'h') {
                let ln = h.as_old_mut().linkname.as_mut();
                ln[..data.len()].copy_from_slice(data.as_bytes());
            }
            h.set_cksum();
            b.append(&h, if *kind == 'f' { data.as_bytes() } else { &[][..] }).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn apply(root: &Path, entries: &[(&str, char, &str)]) -> Result<(), UnpackError> {
        apply_layer(root, io::Cursor::new(layer(entries)), None)
    }

    #[test]
    fn files_directories_and_symlinks_are_created_with_their_modes() {
        let t = tempfile::tempdir().unwrap();
        apply(
            t.path(),
            &[("etc/", 'd', ""), ("etc/hostname", 'f', "box\n"), ("bin/sh", 'f', "#!"), ("bin/ash", 's', "sh")],
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(t.path().join("etc/hostname")).unwrap(), "box\n");
        assert_eq!(std::fs::read_link(t.path().join("bin/ash")).unwrap(), Path::new("sh"));
        let m = std::fs::metadata(t.path().join("bin/sh")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o755);
        assert_eq!(m.mtime(), 1_600_000_000);
    }

    #[test]
    fn a_whiteout_deletes_the_lower_file_and_is_not_itself_created() {
        let t = tempfile::tempdir().unwrap();
        apply(t.path(), &[("a/keep", 'f', "1"), ("a/gone", 'f', "2")]).unwrap();
        apply(t.path(), &[("a/.wh.gone", 'f', "")]).unwrap();
        assert!(t.path().join("a/keep").exists());
        assert!(!t.path().join("a/gone").exists());
        assert!(!t.path().join("a/.wh.gone").exists());
    }

    #[test]
    fn an_opaque_directory_hides_lower_entries_but_keeps_its_own_layers_entries() {
        let t = tempfile::tempdir().unwrap();
        apply(t.path(), &[("d/old1", 'f', "x"), ("d/sub/old2", 'f', "y")]).unwrap();
        apply(t.path(), &[("d/", 'd', ""), ("d/new", 'f', "z"), ("d/.wh..wh..opq", 'f', "")]).unwrap();
        let mut names: Vec<_> =
            std::fs::read_dir(t.path().join("d")).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["new"]);
    }

    #[test]
    fn entries_with_dot_dot_or_absolute_paths_fail_the_layer() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        for bad in ["../outside", "a/../../outside", "/outside"] {
            let e = apply(&root, &[(bad, 'f', "pwned")]).unwrap_err();
            assert!(matches!(e, UnpackError::EscapingPath { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("escapes the root"), "{e}");
        }
        assert!(!outside.exists());
    }

    #[test]
    fn writing_through_a_symlink_that_points_outside_stays_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let victim_dir = t.path().join("victim");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&victim_dir).unwrap();
        let abs = victim_dir.to_str().unwrap().to_string();
        apply(
            &root,
            &[
                ("evil", 's', &abs),
                ("rel", 's', "../../../victim"),
                ("evil/passwd", 'f', "x"),
                ("rel/shadow", 'f', "y"),
            ],
        )
        .unwrap();
        assert_eq!(std::fs::read_dir(&victim_dir).unwrap().count(), 0, "nothing may land outside the root");
        // The writes were clamped to the root, as a chroot would resolve them.
        assert!(root.join(victim_dir.strip_prefix("/").unwrap()).join("passwd").exists());
        assert!(root.join("victim/shadow").exists());
    }

    #[test]
    fn hard_links_must_point_inside_the_root_at_existing_files() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let e = apply(&root, &[("x", 'h', "../../etc/passwd")]).unwrap_err();
        assert!(matches!(e, UnpackError::BadHardlink { .. }), "{e}");
        let e = apply(&root, &[("x", 'h', "missing")]).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        apply(&root, &[("a", 'f', "data"), ("b", 'h', "a")]).unwrap();
        assert_eq!(std::fs::metadata(root.join("b")).unwrap().ino(), std::fs::metadata(root.join("a")).unwrap().ino());
    }

    #[test]
    fn a_whiteout_of_dot_dot_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("a")).unwrap();
        let e = apply(&root, &[("a/.wh...", 'f', "")]).unwrap_err();
        assert!(matches!(e, UnpackError::EscapingPath { .. }), "{e}");
        assert!(t.path().exists() && root.exists());
    }

    #[test]
    fn a_layer_that_does_not_match_its_diff_id_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let bytes = layer(&[("f", 'f', "x")]);
        let wrong = format!("sha256:{}", "0".repeat(64));
        let e = apply_layer(t.path(), io::Cursor::new(bytes.clone()), Some(&wrong)).unwrap_err();
        assert!(matches!(e, UnpackError::DiffIdMismatch { .. }));
        let right = crate::content::sha256(&bytes).to_string();
        apply_layer(t.path(), io::Cursor::new(bytes), Some(&right)).unwrap();
    }

    #[test]
    fn a_layer_that_breaks_off_or_escapes_fails_without_hanging_the_read_ahead() {
        let t = tempfile::tempdir().unwrap();
        // Large enough to fill the read-ahead channel several times over.
        let big = "y".repeat(READ_AHEAD_CHUNK * READ_AHEAD_CHUNKS * 2);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &layer(&[("big", 'f', &big), ("after", 'f', "z")])).unwrap();
        let packed = gz.finish().unwrap();
        let cut = packed[..packed.len() / 2].to_vec();
        let reader = flate2::read::MultiGzDecoder::new(io::Cursor::new(cut));
        let e = apply_layer(t.path(), reader, None).unwrap_err();
        assert!(matches!(e, UnpackError::ReadArchive(_)), "{e:?}");
        assert!(!t.path().join("after").exists());
        // The applier refuses the first entry while the reader still has megabytes to send.
        let escaping = layer(&[("../x", 'f', "z"), ("big", 'f', &big)]);
        let e = apply_layer(t.path(), io::Cursor::new(escaping), None).unwrap_err();
        assert!(matches!(e, UnpackError::EscapingPath { .. }), "{e:?}");
    }

    #[test]
    fn gzip_and_zstd_layers_are_detected_by_their_magic() {
        let t = tempfile::tempdir().unwrap();
        let raw = layer(&[("hello", 'f', "world")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &raw).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(io::Cursor::new(&raw), 3).unwrap();
        for (name, bytes) in [("plain", raw.clone()), ("gz", gz), ("zst", zs)] {
            let p = t.path().join(name);
            std::fs::write(&p, &bytes).unwrap();
            let root = t.path().join(format!("root-{name}"));
            std::fs::create_dir(&root).unwrap();
            apply_layer(&root, open_layer(&p).unwrap(), Some(&crate::content::sha256(&raw).to_string())).unwrap();
            assert_eq!(std::fs::read_to_string(root.join("hello")).unwrap(), "world");
        }
    }

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    #[test]
    fn ownership_set_id_bits_fifos_and_xattrs_are_kept() {
        if !is_root() {
            eprintln!("skipped: creating foreign-owned files needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_path("usr/bin/tool").unwrap();
        h.set_size(2);
        h.set_mode(0o4755);
        h.set_uid(1000);
        h.set_gid(2000);
        h.set_cksum();
        b.append_pax_extensions([
            ("SCHILY.xattr.user.cove", &b"yes"[..]),
            ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
        ])
        .unwrap();
        b.append(&h, &b"hi"[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Fifo);
        h.set_path("run/pipe").unwrap();
        h.set_size(0);
        h.set_mode(0o620);
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        let bytes = b.into_inner().unwrap();
        apply_layer(t.path(), io::Cursor::new(bytes), None).unwrap();

        let m = std::fs::metadata(t.path().join("usr/bin/tool")).unwrap();
        assert_eq!((m.uid(), m.gid()), (1000, 2000));
        assert_eq!(m.permissions().mode() & 0o7777, 0o4755, "set-uid survives the chown");
        let mut buf = [0u8; 8];
        let n = rustix::fs::lgetxattr(t.path().join("usr/bin/tool"), "user.cove", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"yes");
        assert!(
            rustix::fs::lgetxattr(t.path().join("usr/bin/tool"), "trusted.overlay.opaque", &mut buf).is_err(),
            "overlay control attributes from an image are dropped"
        );
        let fifo = std::fs::metadata(t.path().join("run/pipe")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
        assert_eq!(fifo.permissions().mode() & 0o7777, 0o620);
    }

    /// A ustar header of `kind` at `path` with device numbers `major:minor`.
    fn special(path: &str, kind: tar::EntryType, mode: u32, major: u32, minor: u32) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_path(path).unwrap();
        h.set_size(0);
        h.set_mode(mode);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        h
    }

    #[test]
    fn device_nodes_from_a_layer_are_not_created_and_what_they_replace_is_gone() {
        let t = tempfile::tempdir().unwrap();
        apply(t.path(), &[("dev/", 'd', ""), ("dev/sda", 'f', "lower file")]).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for h in [
            special("dev/evil", tar::EntryType::Char, 0o666, 1, 1),
            special("dev/sda", tar::EntryType::Block, 0o666, 8, 0),
            special("dev/zero-zero", tar::EntryType::Char, 0o666, 0, 0),
        ] {
            b.append(&h, &[][..]).unwrap();
        }
        apply_layer(t.path(), io::Cursor::new(b.into_inner().unwrap()), None).unwrap();
        for name in ["evil", "sda", "zero-zero"] {
            let p = t.path().join("dev").join(name);
            assert!(std::fs::symlink_metadata(&p).is_err(), "{} exists", p.display());
        }
        assert!(t.path().join("dev").is_dir());
    }

    #[test]
    fn a_set_id_file_is_never_left_writable_by_group_or_others() {
        let t = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (path, mode) in [("suid", 0o4777), ("sgid", 0o2775), ("plain", 0o777)] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_path(path).unwrap();
            h.set_size(0);
            h.set_mode(mode);
            h.set_uid(rustix::process::geteuid().as_raw().into());
            h.set_gid(rustix::process::getegid().as_raw().into());
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
        }
        apply_layer(t.path(), io::Cursor::new(b.into_inner().unwrap()), None).unwrap();
        let mode = |p: &str| std::fs::metadata(t.path().join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("suid"), 0o4755);
        assert_eq!(mode("sgid"), 0o2755);
        assert_eq!(mode("plain"), 0o777, "files without set-id bits keep their mode");
    }

    /// A gzip stream of a tar holding one regular file `name` of `size` zero bytes, made
    /// of concatenated gzip members (as `MultiGzDecoder` reads them) so that a large file
    /// costs one compressed MiB of zeros repeated, not its whole size in compression work.
    fn gzip_of_zeros(name: &str, size: u64) -> Vec<u8> {
        let gz = |bytes: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            io::Write::write_all(&mut e, bytes).unwrap();
            e.finish().unwrap()
        };
        const MIB: u64 = 1 << 20;
        assert_eq!(size % MIB, 0);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_path(name).unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        let mut out = gz(h.as_bytes());
        let mib = gz(&vec![0u8; MIB as usize]);
        for _ in 0..size / MIB {
            out.extend_from_slice(&mib);
        }
        out.extend_from_slice(&gz(&[0u8; 1024])); // the end-of-archive blocks
        out
    }

    #[test]
    fn a_gzip_of_zeros_expanding_past_its_budget_is_refused_with_an_error_naming_the_limit() {
        let t = tempfile::tempdir().unwrap();
        let gz = gzip_of_zeros("zeros", 1 << 30);
        assert!(gz.len() < 2 << 20, "about a MiB compressed: {}", gz.len());
        let path = t.path().join("bomb.tar.gz");
        std::fs::write(&path, &gz).unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let limit = gz.len() as u64 * 100;
        let mut budget = Budget::new(limit, "100 times the compressed size");
        let e = apply_layer_within(&root, open_layer(&path).unwrap(), None, &mut budget).unwrap_err();
        assert!(matches!(e, UnpackError::TooLarge { limit: l, .. } if l == limit), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("\"zeros\" (1.0 GiB)"), "{msg}");
        assert!(msg.contains(&format!("size limit of {}", Bytes(limit))), "{msg}");
        assert!(msg.contains("100 times the compressed size"), "{msg}");
        assert!(!root.join("zeros").exists(), "nothing of the refused entry is written");
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_budget_counts_every_layer_of_an_image() {
        let t = tempfile::tempdir().unwrap();
        let mut budget = Budget::new(10, "test");
        apply_layer_within(t.path(), io::Cursor::new(layer(&[("a", 'f', "123456")])), None, &mut budget).unwrap();
        assert_eq!(budget.used(), 6);
        // A second layer that replaces the file still writes its bytes.
        let e = apply_layer_within(t.path(), io::Cursor::new(layer(&[("a", 'f', "abcde")])), None, &mut budget)
            .unwrap_err();
        assert!(matches!(e, UnpackError::TooLarge { size: 5, limit: 10, .. }), "{e}");
        assert_eq!(std::fs::read_to_string(t.path().join("a")).unwrap(), "123456");
    }

    /// A GNU sparse entry `name` whose real size is `real` with one 512-byte block of data at
    /// its end; the rest is a hole.
    fn sparse_layer(name: &str, real: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_path(name).unwrap();
        h.set_mode(0o644);
        h.set_size(512);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(real);
        gnu.sparse[0].set_offset(real - 512);
        gnu.sparse[0].set_length(512);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &[7u8; 512][..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn a_sparse_entry_is_charged_its_real_size_and_refused_past_the_budget() {
        let t = tempfile::tempdir().unwrap();
        let bytes = sparse_layer("huge", 2 << 30);
        assert!(bytes.len() < 4096, "a 2 GiB sparse file is a few blocks of archive");
        let mut budget = Budget::new(100 << 20, "test limit");
        let e = apply_layer_within(t.path(), io::Cursor::new(bytes), None, &mut budget).unwrap_err();
        assert!(matches!(e, UnpackError::TooLarge { size, .. } if size == 2 << 30), "{e}");
        assert!(e.to_string().contains("(2.0 GiB)"), "{e}");
        assert!(!t.path().join("huge").exists());

        let mut budget = Budget::new(100 << 20, "test limit");
        apply_layer_within(t.path(), io::Cursor::new(sparse_layer("small", 1 << 20)), None, &mut budget).unwrap();
        assert_eq!(budget.used(), 1 << 20, "the hole counts: it is written out as zeros");
        let data = std::fs::read(t.path().join("small")).unwrap();
        assert_eq!(data.len(), 1 << 20);
        assert!(data[..(1 << 20) - 512].iter().all(|&b| b == 0) && data[(1 << 20) - 512..].iter().all(|&b| b == 7));
    }

    #[test]
    fn byte_counts_are_shown_in_binary_units() {
        assert_eq!(Bytes(512).to_string(), "512 B");
        assert_eq!(Bytes(1536).to_string(), "1.5 KiB");
        assert_eq!(Bytes(3 << 30).to_string(), "3.0 GiB");
    }

    #[test]
    fn a_truncated_archive_fails_instead_of_leaving_a_partial_success() {
        let t = tempfile::tempdir().unwrap();
        let mut bytes = layer(&[("big", 'f', &"x".repeat(5000))]);
        bytes.truncate(1500);
        assert!(apply_layer(t.path(), io::Cursor::new(bytes), None).is_err());
    }

    #[test]
    fn a_long_entry_path_is_shortened_in_the_error_and_its_cause_is_kept() {
        let t = tempfile::tempdir().unwrap();
        let deep = format!("{}f", "a/".repeat(5000));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, &deep, &b"x"[..]).unwrap();
        let e = apply_layer(t.path(), &b.into_inner().unwrap()[..], None).unwrap_err();
        let msg = cove_types::error::chain(&e);
        assert!(msg.starts_with("create \"a/a/a/") && msg.contains("a/f\" (10001 bytes) from layer entry: "), "{msg}");
        assert!(msg.ends_with("File name too long (os error 36)"), "{msg}");
        assert_eq!(Shown("short/path").to_string(), "\"short/path\"");
    }
}
