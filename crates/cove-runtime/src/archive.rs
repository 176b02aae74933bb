//! Sandbox disk archives: a stopped sandbox's sparse `disk.img` as one zstd stream, and back.
//!
//! Contract: [`Runtime::archive_disk`] streams the disk of a stopped sandbox (nothing runs,
//! nothing mounted) into any writer and never changes the disk; the caller stores the stream
//! durably and only then calls [`Runtime::remove_disk`]. [`Runtime::restore_disk`] writes a
//! new image next to the bundle's `disk.img` and renames it into place only once it is
//! complete and fsynced, so at every instant the bundle has either no disk or a whole one.
//! All three hold the sandbox's lock, so no start, stop or destroy runs meanwhile.
//!
//! Format, all inside one zstd frame (with its checksum):
//!
//! ```text
//! "COVEDISK" 0x01                    magic and version
//! u64 BE                             the image's length in bytes
//! { u64 BE offset, u64 BE len, len bytes }*   data, offsets increasing, len ≤ 1 MiB
//! u64 BE 0xffff_ffff_ffff_ffff       end
//! ```
//!
//! Only data is stored: holes (found with `SEEK_DATA`/`SEEK_HOLE`) and all-zero chunks are
//! left out and come back as holes, so a 10 GiB disk with 100 MiB written archives (and
//! restores) as about 100 MiB.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

use crate::runtime::Runtime;
use crate::{RuntimeError, SandboxStatus, disk};

/// The first bytes of an archive (version 1).
pub const MAGIC: &[u8; 9] = b"COVEDISK\x01";
/// The zstd level archives are written with (zstd's default: fast, and a fair ratio).
pub const LEVEL: i32 = 3;
/// Data records are at most this long.
const CHUNK: usize = 1 << 20;
const END: u64 = u64::MAX;
const DISK: &str = "disk.img";
const RESTORING: &str = "disk.img.restoring";

/// A failed archive or restore.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The sandbox has no bundle.
    #[error("sandbox {id} does not exist")]
    NotFound {
        /// The sandbox.
        id: String,
    },
    /// Its container runs or its disk is mounted.
    #[error("sandbox {id} is not stopped: its disk is in use")]
    NotStopped {
        /// The sandbox.
        id: String,
    },
    /// There is no disk image to archive.
    #[error("sandbox {id} has no disk image")]
    NoDisk {
        /// The sandbox.
        id: String,
    },
    /// Reading the runtime's view of the sandbox failed.
    #[error("read the state of sandbox {id}")]
    Status {
        /// The sandbox.
        id: String,
        /// Cause.
        #[source]
        source: RuntimeError,
    },
    /// A file operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// What an archive or a restore moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ArchiveStats {
    /// The image's (apparent) length.
    pub disk_bytes: u64,
    /// Data bytes stored (holes and zero chunks left out).
    pub data_bytes: u64,
}

impl Runtime {
    /// Streams the disk of stopped sandbox `id` into `out` as an archive (see the module
    /// doc) and hands `out` back. The disk is left as it is.
    pub async fn archive_disk<W: Write + Send + 'static>(
        &self,
        id: &str,
        out: W,
    ) -> Result<(W, ArchiveStats), ArchiveError> {
        let _guard = self.lock(id).await;
        let path = self.stopped_bundle(id).await?.join(DISK);
        let file = match open_nofollow(&path, std::fs::OpenOptions::new().read(true)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ArchiveError::NoDisk { id: id.into() }),
            r => r.map_err(io_err("open", &path))?,
        };
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let done = tokio::task::spawn_blocking(move || write_archive(&file, out, LEVEL, workers)).await;
        done.unwrap_or_else(|e| Err(io::Error::other(e))).map_err(io_err("archive", &path))
    }

    /// Deletes the disk image of stopped sandbox `id` (after its archive was stored). A disk
    /// already gone is not an error.
    pub async fn remove_disk(&self, id: &str) -> Result<(), ArchiveError> {
        let _guard = self.lock(id).await;
        let bundle = self.stopped_bundle(id).await?;
        let path = bundle.join(DISK);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("remove", &path)(e)),
            _ => {}
        }
        cove_types::fs::sync_dir(&bundle).map_err(io_err("sync", &bundle))
    }

    /// Writes the disk of stopped sandbox `id` from an archive read from `input`: into a new
    /// file, fsynced, then renamed to `disk.img`. A sandbox that has its disk already (a
    /// restore that finished before a crash) is left as it is, with `None`. An error leaves
    /// no partial image.
    pub async fn restore_disk<R: Read + Send + 'static>(
        &self,
        id: &str,
        input: R,
    ) -> Result<Option<ArchiveStats>, ArchiveError> {
        let _guard = self.lock(id).await;
        let bundle = self.stopped_bundle(id).await?;
        let (disk, tmp) = (bundle.join(DISK), bundle.join(RESTORING));
        if disk.symlink_metadata().is_ok() {
            return Ok(None);
        }
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("remove", &tmp)(e)),
            _ => {}
        }
        let file = open_nofollow(&tmp, std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600))
            .map_err(io_err("create", &tmp))?;
        let written = tokio::task::spawn_blocking(move || {
            let stats = read_archive(input, &file)?;
            file.sync_all()?;
            Ok::<_, io::Error>(stats)
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
        let stats = match written {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io_err("restore", &disk)(e));
            }
        };
        std::fs::rename(&tmp, &disk).map_err(io_err("rename into place", &disk))?;
        cove_types::fs::sync_dir(&bundle).map_err(io_err("sync", &bundle))?;
        Ok(Some(stats))
    }

    /// Whether sandbox `id` has its disk image (it has none while archived).
    pub fn has_disk(&self, id: &str) -> bool {
        self.bundle(id).join(DISK).symlink_metadata().is_ok_and(|m| m.is_file())
    }

    /// The bundle of `id`, checked to exist with nothing running and nothing mounted.
    async fn stopped_bundle(&self, id: &str) -> Result<PathBuf, ArchiveError> {
        let bundle = self.bundle(id);
        if !bundle.is_dir() {
            return Err(ArchiveError::NotFound { id: id.into() });
        }
        let status = self.status(id).await.map_err(|source| ArchiveError::Status { id: id.into(), source })?;
        if matches!(status, SandboxStatus::Running { .. }) || !disk::mounts_under(&bundle).is_empty() {
            return Err(ArchiveError::NotStopped { id: id.into() });
        }
        Ok(bundle)
    }
}

fn io_err(op: &'static str, path: &std::path::Path) -> impl FnOnce(io::Error) -> ArchiveError {
    let path = path.to_path_buf();
    move |source| ArchiveError::Io { op, path, source }
}

/// Opens without following a link in the last component: the bundle is the server's, but
/// nothing is opened through a link.
fn open_nofollow(path: &std::path::Path, opts: &mut std::fs::OpenOptions) -> io::Result<File> {
    opts.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path)
}

/// Writes the archive of `image` into `out` (zstd `level`, `workers` compression threads).
pub fn write_archive<W: Write>(image: &File, out: W, level: i32, workers: u32) -> io::Result<(W, ArchiveStats)> {
    let len = image.metadata()?.len();
    let mut enc = zstd::Encoder::new(out, level)?;
    enc.include_checksum(true)?;
    if workers > 1 {
        enc.multithread(workers)?;
    }
    enc.write_all(MAGIC)?;
    enc.write_all(&len.to_be_bytes())?;
    let mut buf = vec![0u8; CHUNK];
    let mut stats = ArchiveStats { disk_bytes: len, data_bytes: 0 };
    let mut pos = 0u64;
    while pos < len {
        let Some(start) = seek_data(image, pos)? else { break };
        let end = seek_hole(image, start)?.min(len);
        let mut off = start;
        while off < end {
            let n = usize::try_from(end - off).unwrap_or(CHUNK).min(CHUNK);
            image.read_exact_at(&mut buf[..n], off)?;
            if buf[..n].iter().any(|b| *b != 0) {
                enc.write_all(&off.to_be_bytes())?;
                enc.write_all(&(n as u64).to_be_bytes())?;
                enc.write_all(&buf[..n])?;
                stats.data_bytes += n as u64;
            }
            off += n as u64;
        }
        pos = end;
    }
    enc.write_all(&END.to_be_bytes())?;
    Ok((enc.finish()?, stats))
}

/// Reads an archive from `input` into `dst` (an empty file): sets its length and writes the
/// data records, leaving holes elsewhere. Checks the magic, the records' order and bounds,
/// the end record, and that nothing follows it (which also verifies zstd's checksum).
pub fn read_archive<R: Read>(input: R, dst: &File) -> io::Result<ArchiveStats> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("not a valid disk archive: {why}"));
    let mut dec = zstd::Decoder::new(input)?;
    let mut magic = [0u8; 9];
    dec.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(bad("wrong magic"));
    }
    let len = read_u64(&mut dec)?;
    dst.set_len(len)?;
    // A restored disk is guaranteed its space like a new one (`disk::create_image`).
    crate::disk::allocate(dst, len)?;
    let mut stats = ArchiveStats { disk_bytes: len, data_bytes: 0 };
    let mut buf = vec![0u8; CHUNK];
    let mut next = 0u64;
    loop {
        let off = read_u64(&mut dec)?;
        if off == END {
            break;
        }
        let n = read_u64(&mut dec)?;
        if off < next || n == 0 || n > CHUNK as u64 || off.checked_add(n).is_none_or(|e| e > len) {
            return Err(bad("a record out of order or out of bounds"));
        }
        let n_us = usize::try_from(n).map_err(|_| bad("record too long"))?;
        dec.read_exact(&mut buf[..n_us])?;
        dst.write_all_at(&buf[..n_us], off)?;
        stats.data_bytes += n;
        next = off + n;
    }
    if dec.read(&mut [0u8; 1])? != 0 {
        return Err(bad("data after the end record"));
    }
    // Read the source to its end, so that a reader that checks what it read (a digest) at
    // its end gets to.
    io::copy(&mut dec.finish(), &mut io::sink())?;
    Ok(stats)
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// The first data offset at or after `pos`, `None` past the last data.
fn seek_data(f: &File, pos: u64) -> io::Result<Option<u64>> {
    match rustix::fs::seek(f, rustix::fs::SeekFrom::Data(pos)) {
        Ok(p) => Ok(Some(p)),
        Err(rustix::io::Errno::NXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The first hole at or after `pos` (the end of the file counts as one).
fn seek_hole(f: &File, pos: u64) -> io::Result<u64> {
    Ok(rustix::fs::seek(f, rustix::fs::SeekFrom::Hole(pos))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sparse_image(dir: &std::path::Path) -> (PathBuf, Vec<(u64, Vec<u8>)>) {
        let path = dir.join("disk.img");
        let f = File::create(&path).unwrap();
        f.set_len(64 << 20).unwrap();
        let pieces: Vec<(u64, Vec<u8>)> = vec![
            (0, b"superblock".to_vec()),
            (5 << 20, (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()),
            ((64 << 20) - 7, b"the end".to_vec()),
        ];
        for (off, bytes) in &pieces {
            f.write_all_at(bytes, *off).unwrap();
        }
        (path, pieces)
    }

    #[test]
    fn an_archive_restores_the_image_byte_for_byte_with_its_holes() {
        let d = tempfile::tempdir().unwrap();
        let (path, _) = sparse_image(d.path());
        let (bytes, stats) = write_archive(&File::open(&path).unwrap(), Vec::new(), LEVEL, 2).unwrap();
        assert_eq!(stats.disk_bytes, 64 << 20);
        assert!(stats.data_bytes < 8 << 20, "holes are not stored: {stats:?}");
        let out = d.path().join("restored.img");
        let dst = File::create(&out).unwrap();
        let back = read_archive(bytes.as_slice(), &dst).unwrap();
        assert_eq!(back, stats);
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&out).unwrap());
        let allocated = std::os::unix::fs::MetadataExt::blocks(&dst.metadata().unwrap()) * 512;
        // Its space is guaranteed like a new disk's: the holes are allocated (unwritten), not written.
        assert!(allocated >= 64 << 20, "the restored image has every block allocated ({allocated} bytes)");
    }

    #[test]
    fn a_truncated_or_altered_archive_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (path, _) = sparse_image(d.path());
        let (bytes, _) = write_archive(&File::open(&path).unwrap(), Vec::new(), LEVEL, 1).unwrap();
        let dst = File::create(d.path().join("x")).unwrap();
        assert!(read_archive(&bytes[..bytes.len() - 10], &dst).is_err(), "truncated");
        let mut altered = bytes.clone();
        let mid = altered.len() / 2;
        altered[mid] ^= 0x55;
        assert!(read_archive(altered.as_slice(), &dst).is_err(), "altered");
        assert!(read_archive(&b"not zstd at all"[..], &dst).is_err(), "garbage");
    }
}
