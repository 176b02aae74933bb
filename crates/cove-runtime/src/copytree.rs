//! Copying a build step's overlay upper dir out of the step's disk, exactly.
//!
//! A build step writes into an overlay whose upper dir lives on a loop disk of the build's size
//! (so a step cannot fill the host). When the step ends, [`copy_upper`] copies that upper dir
//! into the layer store, on another file system, where it later becomes an OCI layer and an
//! overlay lower dir. The copy therefore keeps everything overlayfs and the layer need:
//! owners (shifted back from the step's user namespace ids with [`IdShift`]), modes including
//! set-id and sticky bits, `trusted.*` (`trusted.overlay.opaque`, …), `user.*` and
//! `security.capability` extended attributes, access and modification times, hard links,
//! symlinks, whiteouts (character devices 0/0), FIFOs and holes in sparse files.
//!
//! The walk never follows a symlink: every entry is reached with `*at` calls relative to its
//! parent directory's descriptor, opened with `O_NOFOLLOW`, and the extended attributes of
//! entries that cannot be opened (symlinks, whiteouts, FIFOs) are read and written with the
//! `l*xattr` calls through `/proc/self/fd/<parent>/<name>`.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Gid, Mode, OFlags, SeekFrom, Stat, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

/// A shift of user and group ids: ids in `[start, start + count)` become `id - start`, others
/// are unchanged. Used to map the ids a step's user namespace wrote on disk back to the ids
/// inside the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdShift {
    /// First shifted id (the host id of the container's root).
    pub start: u32,
    /// Number of shifted ids.
    pub count: u32,
}

impl IdShift {
    /// The shifted id: `id - start` when `id` is in the range, else `id`.
    pub fn apply(self, id: u32) -> u32 {
        match id.checked_sub(self.start) {
            Some(offset) if offset < self.count => offset,
            _ => id,
        }
    }
}

/// What [`copy_upper`] copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Regular files whose contents were copied (further hard links to one are not counted).
    pub files: u64,
    /// Bytes of regular file data copied (holes of sparse files are not copied nor counted).
    pub bytes: u64,
}

/// A failed step of [`copy_upper`].
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}")]
pub struct CopyTreeError {
    /// What was attempted (`stat`, `open`, `create`, `chown`, `set xattr trusted.overlay.opaque on`, …).
    pub op: String,
    /// The entry, under the source or the destination.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: io::Error,
}

/// Copies the overlay upper dir `src` into the empty existing directory `dst` (on another file
/// system), exactly: contents, owners, modes, extended attributes (`trusted.*`, `user.*`,
/// `security.capability`), times, hard links, symlinks, whiteouts and FIFOs, and `src`'s own
/// owner, mode, extended attributes and times onto `dst`. Other device nodes and sockets are
/// skipped (a build step cannot create device nodes). With `shift`, the uid and gid of every
/// entry, and the root id of namespaced file capabilities, go through [`IdShift::apply`].
///
/// Symlinks are never followed, neither in `src` nor in `dst`; `src` should not change while it
/// is copied (the step has ended). On error, `dst` holds a partial copy.
pub fn copy_upper(src: &Path, dst: &Path, shift: Option<IdShift>) -> Result<CopyStats, CopyTreeError> {
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let src_root = rustix::fs::open(src, dir_flags, Mode::empty()).map_err(fail("open", src))?;
    let dst_root = rustix::fs::open(dst, dir_flags, Mode::empty()).map_err(fail("open", dst))?;
    let st = rustix::fs::fstat(&src_root).map_err(fail("stat", src))?;
    let mut copier = Copier {
        src,
        dst,
        shift,
        dst_root: dst_root.try_clone().map_err(fail("duplicate descriptor of", dst))?,
        links: HashMap::new(),
        stats: CopyStats::default(),
    };
    copier.copy_dir(&st, &src_root, &dst_root, Path::new(""))?;
    Ok(copier.stats)
}

/// The deepest directory nesting copied (as deep as layers and contexts may be, see
/// `cove-build`'s limits). Each level costs a few KiB of stack: callers run the copy on a
/// thread with [`STACK_SIZE`].
pub const MAX_DEPTH: usize = 512;
/// Stack size for a thread running [`copy_upper`] at [`MAX_DEPTH`].
pub const STACK_SIZE: usize = 16 << 20;

/// The state of one copy.
struct Copier<'a> {
    src: &'a Path,
    dst: &'a Path,
    shift: Option<IdShift>,
    /// `dst` itself, to hard-link relative to it.
    dst_root: OwnedFd,
    /// (device, inode) of regular files with several links → their first copy, relative to `dst`.
    links: HashMap<(u64, u64), PathBuf>,
    stats: CopyStats,
}

impl Copier<'_> {
    /// Gives `dst_dir` the metadata of `src_dir` (whose stat is `st`) and copies its contents;
    /// the times are set last, once the contents no longer change them.
    fn copy_dir(&mut self, st: &Stat, src_dir: &OwnedFd, dst_dir: &OwnedFd, rel: &Path) -> Result<(), CopyTreeError> {
        let (sp, dp) = (self.src.join(rel), self.dst.join(rel));
        // The copy recurses once per level: a step's deep tree is refused, not a stack overflow.
        if rel.components().count() > MAX_DEPTH {
            let why = format!("directories nested deeper than {MAX_DEPTH} levels");
            // Named by its first 200 bytes: the whole path would be kilobytes of a/a/a/….
            let text = sp.to_string_lossy();
            let cut = (0..=200.min(text.len())).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            let shown = PathBuf::from(format!("{}…", &text[..cut]));
            return Err(fail("copy", &shown)(io::Error::new(io::ErrorKind::InvalidInput, why)));
        }
        self.set_owner_and_mode(Target::Fd(dst_dir.as_fd()), st, &dp)?;
        copy_xattrs(Target::Fd(src_dir.as_fd()), Target::Fd(dst_dir.as_fd()), self.shift, &sp, &dp)?;
        for name in entry_names(src_dir).map_err(fail("read directory", &sp))? {
            let rel = rel.join(OsStr::from_bytes(name.to_bytes()));
            self.copy_entry(src_dir, dst_dir, &name, &rel)?;
        }
        rustix::fs::futimens(dst_dir, &timestamps(st)).map_err(fail("set times of", &dp))
    }

    /// Copies the entry `name` of `src_dir` (at `rel` under the roots) into `dst_dir`.
    fn copy_entry(
        &mut self,
        src_dir: &OwnedFd,
        dst_dir: &OwnedFd,
        name: &CStr,
        rel: &Path,
    ) -> Result<(), CopyTreeError> {
        let (sp, dp) = (self.src.join(rel), self.dst.join(rel));
        let st = rustix::fs::statat(src_dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(fail("stat", &sp))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let src_sub = rustix::fs::openat(src_dir, name, flags, Mode::empty()).map_err(fail("open", &sp))?;
                let st = rustix::fs::fstat(&src_sub).map_err(fail("stat", &sp))?;
                rustix::fs::mkdirat(dst_dir, name, Mode::from_raw_mode(0o700))
                    .map_err(fail("create directory", &dp))?;
                let dst_sub = rustix::fs::openat(dst_dir, name, flags, Mode::empty()).map_err(fail("open", &dp))?;
                self.copy_dir(&st, &src_sub, &dst_sub, rel)
            }
            FileType::RegularFile => self.copy_file(src_dir, dst_dir, name, rel),
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(src_dir, name, Vec::new()).map_err(fail("read symlink", &sp))?;
                rustix::fs::symlinkat(target.as_c_str(), dst_dir, name).map_err(fail("create symlink", &dp))?;
                self.copy_node_metadata(&st, src_dir, dst_dir, name, rel)
            }
            FileType::CharacterDevice | FileType::Fifo if st.st_rdev == 0 => {
                // A character device 0/0 is an overlay whiteout.
                let file_type = FileType::from_raw_mode(st.st_mode);
                rustix::fs::mknodat(dst_dir, name, file_type, Mode::from_raw_mode(0o600), 0)
                    .map_err(fail("create node", &dp))?;
                self.copy_node_metadata(&st, src_dir, dst_dir, name, rel)
            }
            other => {
                tracing::debug!(
                    path = %sp.display(),
                    file_type = ?other,
                    "not copying a device node or socket from a step's upper dir"
                );
                Ok(())
            }
        }
    }

    /// Copies the regular file `name` of `src_dir`, or hard-links its first copy.
    fn copy_file(
        &mut self,
        src_dir: &OwnedFd,
        dst_dir: &OwnedFd,
        name: &CStr,
        rel: &Path,
    ) -> Result<(), CopyTreeError> {
        let (sp, dp) = (self.src.join(rel), self.dst.join(rel));
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let src_file = rustix::fs::openat(src_dir, name, flags, Mode::empty()).map_err(fail("open", &sp))?;
        let st = rustix::fs::fstat(&src_file).map_err(fail("stat", &sp))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(fail("open", &sp)(io::Error::other("changed into a non-regular file during the copy")));
        }
        let key = inode_key(&st);
        if st.st_nlink > 1
            && let Some(first) = self.links.get(&key)
        {
            return rustix::fs::linkat(&self.dst_root, first, dst_dir, name, AtFlags::empty())
                .map_err(fail("hard-link", &dp));
        }
        let dst_flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dst_file =
            rustix::fs::openat(dst_dir, name, dst_flags, Mode::from_raw_mode(0o600)).map_err(fail("create", &dp))?;
        let (src_file, dst_file) = (File::from(src_file), File::from(dst_file));
        let bytes = copy_data(&src_file, &dst_file, file_size(&st)).map_err(fail("copy data to", &dp))?;
        self.set_owner_and_mode(Target::Fd(dst_file.as_fd()), &st, &dp)?;
        copy_xattrs(Target::Fd(src_file.as_fd()), Target::Fd(dst_file.as_fd()), self.shift, &sp, &dp)?;
        rustix::fs::futimens(&dst_file, &timestamps(&st)).map_err(fail("set times of", &dp))?;
        self.stats.files += 1;
        self.stats.bytes += bytes;
        if st.st_nlink > 1 {
            self.links.insert(key, rel.to_path_buf());
        }
        Ok(())
    }

    /// Owner, mode (not for symlinks), extended attributes and times of an entry that cannot be
    /// opened: a symlink, whiteout or FIFO just created in `dst_dir`.
    fn copy_node_metadata(
        &self,
        st: &Stat,
        src_dir: &OwnedFd,
        dst_dir: &OwnedFd,
        name: &CStr,
        rel: &Path,
    ) -> Result<(), CopyTreeError> {
        let (sp, dp) = (self.src.join(rel), self.dst.join(rel));
        self.set_owner_and_mode(Target::At(dst_dir.as_fd(), name), st, &dp)?;
        copy_xattrs(Target::At(src_dir.as_fd(), name), Target::At(dst_dir.as_fd(), name), self.shift, &sp, &dp)?;
        rustix::fs::utimensat(dst_dir, name, &timestamps(st), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(fail("set times of", &dp))
    }

    /// Sets the (shifted) owner, then the mode: chown clears the set-id bits, and the file
    /// capabilities, which are copied after this.
    fn set_owner_and_mode(&self, target: Target<'_>, st: &Stat, dp: &Path) -> Result<(), CopyTreeError> {
        let shift = |id: u32| self.shift.map_or(id, |s| s.apply(id));
        let uid = Some(Uid::from_raw(shift(st.st_uid)));
        let gid = Some(Gid::from_raw(shift(st.st_gid)));
        let mode = Mode::from_raw_mode(st.st_mode);
        match target {
            Target::Fd(fd) => {
                rustix::fs::fchown(fd, uid, gid).map_err(fail("chown", dp))?;
                rustix::fs::fchmod(fd, mode).map_err(fail("chmod", dp))
            }
            Target::At(dir, name) => {
                rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW).map_err(fail("chown", dp))?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                    return Ok(());
                }
                // Not a symlink (this copy just created it), so chmodat does not follow anything.
                rustix::fs::chmodat(dir, name, mode, AtFlags::empty()).map_err(fail("chmod", dp))
            }
        }
    }
}

/// An entry whose extended attributes, owner or mode are read or written: an open descriptor,
/// or a name in a directory for entries that cannot be opened.
#[derive(Clone, Copy)]
enum Target<'a> {
    Fd(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a CStr),
}

impl Target<'_> {
    /// The `/proc/self/fd/<dir>/<name>` path of an `At` target: short whatever the depth, and
    /// resolved through the directory descriptor; the `l*xattr` calls do not follow its last
    /// component.
    fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> PathBuf {
        let mut path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        path.push(OsStr::from_bytes(name.to_bytes()));
        path
    }

    /// The names of the entry's extended attributes, NUL-separated.
    fn list(self) -> io::Result<Vec<u8>> {
        loop {
            let size = match self {
                Target::Fd(fd) => rustix::fs::flistxattr_query(fd),
                Target::At(dir, entry) => rustix::fs::llistxattr_query(Self::proc_path(dir, entry)),
            };
            let size = match size {
                Ok(size) => size,
                Err(Errno::NOTSUP) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut list = vec![0; size];
            if size == 0 {
                return Ok(list);
            }
            let len = match self {
                Target::Fd(fd) => rustix::fs::flistxattr(fd, &mut list[..]),
                Target::At(dir, entry) => rustix::fs::llistxattr(Self::proc_path(dir, entry), &mut list[..]),
            };
            match len {
                Ok(len) => {
                    list.truncate(len);
                    return Ok(list);
                }
                // The list grew between the two calls.
                Err(Errno::RANGE) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The value of the extended attribute `name`.
    fn get(self, name: &CStr) -> io::Result<Vec<u8>> {
        loop {
            let size = match self {
                Target::Fd(fd) => rustix::fs::fgetxattr_query(fd, name),
                Target::At(dir, entry) => rustix::fs::lgetxattr_query(Self::proc_path(dir, entry), name),
            }?;
            let mut value = vec![0; size];
            if size == 0 {
                return Ok(value);
            }
            let len = match self {
                Target::Fd(fd) => rustix::fs::fgetxattr(fd, name, &mut value[..]),
                Target::At(dir, entry) => rustix::fs::lgetxattr(Self::proc_path(dir, entry), name, &mut value[..]),
            };
            match len {
                Ok(len) => {
                    value.truncate(len);
                    return Ok(value);
                }
                Err(Errno::RANGE) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sets the extended attribute `name` to `value`.
    fn set(self, name: &CStr, value: &[u8]) -> io::Result<()> {
        match self {
            Target::Fd(fd) => rustix::fs::fsetxattr(fd, name, value, XattrFlags::empty()),
            Target::At(dir, entry) => {
                rustix::fs::lsetxattr(Self::proc_path(dir, entry), name, value, XattrFlags::empty())
            }
        }
        .map_err(Into::into)
    }
}

/// Whether the extended attribute `name` is copied: overlayfs' own (`trusted.overlay.*`, or
/// `user.overlay.*` with `userxattr`), other `trusted.*` and `user.*` ones, and file
/// capabilities. Security labels (`security.selinux`, …) belong to the destination's policy and
/// POSIX ACLs (`system.*`) are not carried by build layers.
fn copied_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.") || name.starts_with(b"user.") || name == b"security.capability"
}

/// Copies the copied extended attributes of `from` to `to`, shifting the root id of
/// namespaced file capabilities.
fn copy_xattrs(
    from: Target<'_>,
    to: Target<'_>,
    shift: Option<IdShift>,
    sp: &Path,
    dp: &Path,
) -> Result<(), CopyTreeError> {
    let list = from.list().map_err(fail("list xattrs of", sp))?;
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty() && copied_xattr(n)) {
        let name_text = String::from_utf8_lossy(name);
        let name = CString::new(name).expect("split at NUL bytes");
        let mut value = match from.get(&name) {
            Ok(value) => value,
            // Removed since it was listed.
            Err(e) if e.raw_os_error() == Some(Errno::NODATA.raw_os_error()) => continue,
            Err(e) => return Err(fail_op(format!("get xattr {name_text} of"), sp)(e)),
        };
        if let (b"security.capability", Some(shift)) = (name.to_bytes(), shift) {
            shift_capability_root(&mut value, shift);
        }
        to.set(&name, &value).map_err(fail_op(format!("set xattr {name_text} on"), dp))?;
    }
    Ok(())
}

const VFS_CAP_REVISION_MASK: u32 = 0xff00_0000;
const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
const VFS_CAP_REVISION_3: u32 = 0x0300_0000;
/// Size of a `vfs_cap_data` (revision 2).
const XATTR_CAPS_SZ_2: usize = 20;
/// Size of a `vfs_ns_cap_data` (revision 3: revision 2 followed by the namespace's root uid).
const XATTR_CAPS_SZ_3: usize = 24;

/// File capabilities set inside a user namespace are stored as revision 3, with the host uid
/// of the namespace's root. Shifts that uid; when it becomes 0 the capabilities are rewritten
/// as revision 2, which is what the kernel reports for a root id of 0 and what image layers
/// carry.
fn shift_capability_root(value: &mut Vec<u8>, shift: IdShift) {
    let Ok(v3) = <[u8; XATTR_CAPS_SZ_3]>::try_from(value.as_slice()) else { return };
    let magic = u32::from_le_bytes([v3[0], v3[1], v3[2], v3[3]]);
    if magic & VFS_CAP_REVISION_MASK != VFS_CAP_REVISION_3 {
        return;
    }
    let root = shift.apply(u32::from_le_bytes([v3[20], v3[21], v3[22], v3[23]]));
    if root == 0 {
        value[..4].copy_from_slice(&((magic & !VFS_CAP_REVISION_MASK) | VFS_CAP_REVISION_2).to_le_bytes());
        value.truncate(XATTR_CAPS_SZ_2);
    } else {
        value[20..].copy_from_slice(&root.to_le_bytes());
    }
}

/// Copies the data of `src` (of `size` bytes) into the empty `dst`, keeping holes; returns the
/// bytes copied.
fn copy_data(src: &File, dst: &File, size: u64) -> io::Result<u64> {
    let mut copied = 0;
    let mut pos = 0;
    while pos < size {
        let data = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(data) => data,
            // Only a hole up to the end.
            Err(Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if data >= size {
            break;
        }
        let hole = rustix::fs::seek(src, SeekFrom::Hole(data))?.min(size);
        rustix::fs::seek(src, SeekFrom::Start(data))?;
        rustix::fs::seek(dst, SeekFrom::Start(data))?;
        let n = io::copy(&mut src.take(hole - data), &mut &*dst)?;
        copied += n;
        if n < hole - data {
            // The file shrank since it was opened.
            break;
        }
        pos = hole;
    }
    // Extends `dst` over a final hole.
    rustix::fs::ftruncate(dst, size)?;
    Ok(copied)
}

/// The names in the directory, without `.` and `..`, sorted so that the copy (which of a set of
/// hard links is copied first) does not depend on the directory's order.
fn entry_names(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

// `Stat`'s field types differ between rustix's backends and architectures, hence the casts.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
fn timestamps(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec { tv_sec: st.st_atime as i64, tv_nsec: st.st_atime_nsec as _ },
        last_modification: Timespec { tv_sec: st.st_mtime as i64, tv_nsec: st.st_mtime_nsec as _ },
    }
}

#[allow(clippy::unnecessary_cast)]
fn inode_key(st: &Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

fn file_size(st: &Stat) -> u64 {
    u64::try_from(st.st_size).unwrap_or(0)
}

fn fail<'a, E: Into<io::Error>>(op: &'static str, path: &'a Path) -> impl FnOnce(E) -> CopyTreeError + use<'a, E> {
    fail_op(op.to_owned(), path)
}

fn fail_op<E: Into<io::Error>>(op: String, path: &Path) -> impl FnOnce(E) -> CopyTreeError + use<'_, E> {
    move |e| CopyTreeError { op, path: path.to_path_buf(), source: e.into() }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown};

    use super::*;

    const SHIFT: IdShift = IdShift { start: 100_000, count: 65_536 };

    fn is_root() -> bool {
        if rustix::process::geteuid().is_root() {
            return true;
        }
        eprintln!("skipped: copying owners, whiteouts and trusted xattrs needs root");
        false
    }

    fn set_times(path: &Path, atime: (i64, i64), mtime: (i64, i64)) {
        let times = Timestamps {
            last_access: Timespec { tv_sec: atime.0, tv_nsec: atime.1 },
            last_modification: Timespec { tv_sec: mtime.0, tv_nsec: mtime.1 },
        };
        rustix::fs::utimensat(rustix::fs::CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    }

    fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
        let mut buf = vec![0; 256];
        let len = rustix::fs::lgetxattr(path, name, &mut buf[..]).ok()?;
        buf.truncate(len);
        Some(buf)
    }

    fn lchown_ids(path: &Path, uid: u32, gid: u32) {
        lchown(path, Some(uid), Some(gid)).unwrap();
    }

    /// A v3 `security.capability` granting `cap_net_bind_service` (bit 10), effective, with
    /// namespace root `root`.
    fn capability_v3(root: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(VFS_CAP_REVISION_3 | 1).to_le_bytes());
        v.extend_from_slice(&(1u32 << 10).to_le_bytes()); // permitted, low word
        v.extend_from_slice(&0u32.to_le_bytes()); // inheritable, low word
        v.extend_from_slice(&0u32.to_le_bytes()); // permitted, high word
        v.extend_from_slice(&0u32.to_le_bytes()); // inheritable, high word
        v.extend_from_slice(&root.to_le_bytes());
        v
    }

    /// Builds an upper dir as a step under the user namespace shifted by [`SHIFT`] leaves it.
    fn build_upper(src: &Path) {
        let a = 100_000;
        std::fs::create_dir_all(src.join("usr/local/bin")).unwrap();
        std::fs::write(src.join("usr/local/bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
        lchown_ids(&src.join("usr/local/bin/tool"), a + 1000, a + 1000);
        std::fs::set_permissions(src.join("usr/local/bin/tool"), PermissionsExt::from_mode(0o4755)).unwrap();
        // chown clears file capabilities, so they are set after it.
        rustix::fs::lsetxattr(
            src.join("usr/local/bin/tool"),
            "security.capability",
            &capability_v3(a),
            XattrFlags::empty(),
        )
        .unwrap();
        rustix::fs::lsetxattr(src.join("usr/local/bin/tool"), "user.origin", b"build", XattrFlags::empty()).unwrap();

        std::fs::write(src.join("usr/local/bin/a"), b"linked").unwrap();
        std::fs::hard_link(src.join("usr/local/bin/a"), src.join("usr/b")).unwrap();
        lchown_ids(&src.join("usr/b"), a, a + 50);

        std::os::unix::fs::symlink("../usr/local/bin/tool", src.join("usr/tool-link")).unwrap();
        lchown_ids(&src.join("usr/tool-link"), a + 2, a + 3);
        rustix::fs::lsetxattr(src.join("usr/tool-link"), "trusted.note", b"link", XattrFlags::empty()).unwrap();
        set_times(&src.join("usr/tool-link"), (1_500_000_000, 5), (1_500_000_001, 6));

        std::fs::create_dir(src.join("etc")).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, src.join("etc/removed"), FileType::CharacterDevice, Mode::empty(), 0)
            .unwrap();
        // Overlayfs links whiteouts to a shared one; the copies need not be linked.
        std::fs::hard_link(src.join("etc/removed"), src.join("etc/removed-too")).unwrap();
        lchown_ids(&src.join("etc"), a, a);

        std::fs::create_dir_all(src.join("opt/replaced")).unwrap();
        std::fs::write(src.join("opt/replaced/new"), b"").unwrap();
        rustix::fs::lsetxattr(src.join("opt/replaced"), "trusted.overlay.opaque", b"y", XattrFlags::empty()).unwrap();
        std::fs::set_permissions(src.join("opt"), PermissionsExt::from_mode(0o1777)).unwrap();

        rustix::fs::mknodat(rustix::fs::CWD, src.join("run.fifo"), FileType::Fifo, Mode::from_raw_mode(0o640), 0)
            .unwrap();
        lchown_ids(&src.join("run.fifo"), a + 7, a + 8);
        rustix::fs::lsetxattr(src.join("run.fifo"), "trusted.note", b"fifo", XattrFlags::empty()).unwrap();

        // Directory times last: creating entries changes them.
        set_times(&src.join("usr/local/bin/tool"), (1_600_000_000, 0), (1_600_000_100, 123_456_789));
        set_times(&src.join("usr/local/bin"), (1_600_000_200, 1), (1_600_000_300, 2));
        set_times(&src.join("usr/local"), (1_600_000_400, 3), (1_600_000_500, 4));
        set_times(&src.join("usr"), (1_600_000_600, 5), (1_600_000_700, 6));
        set_times(&src.join("opt/replaced"), (1_600_000_800, 7), (1_600_000_900, 8));
        set_times(src, (1_600_001_000, 9), (1_600_001_100, 10));
    }

    /// Checks every entry of `src` against `dst`: type, owner (shifted), mode, times, size and
    /// contents, device number, symlink target and copied xattrs.
    fn assert_same_tree(src: &Path, dst: &Path, shift: Option<IdShift>) {
        let s = std::fs::symlink_metadata(src).unwrap();
        let d = std::fs::symlink_metadata(dst).unwrap();
        let shifted = |id: u32| shift.map_or(id, |s| s.apply(id));
        let at = dst.display();
        assert_eq!(d.file_type(), s.file_type(), "{at}");
        assert_eq!(d.mode(), s.mode(), "{at}");
        assert_eq!((d.uid(), d.gid()), (shifted(s.uid()), shifted(s.gid())), "{at}");
        assert_eq!((d.mtime(), d.mtime_nsec()), (s.mtime(), s.mtime_nsec()), "{at}");
        assert_eq!(d.rdev(), s.rdev(), "{at}");
        if s.is_file() {
            assert_eq!(std::fs::read(dst).unwrap(), std::fs::read(src).unwrap(), "{at}");
        }
        if s.is_symlink() {
            assert_eq!(std::fs::read_link(dst).unwrap(), std::fs::read_link(src).unwrap(), "{at}");
        }
        let mut list = vec![0; 4096];
        let len = rustix::fs::llistxattr(src, &mut list[..]).unwrap();
        for name in list[..len].split(|&b| b == 0).filter(|n| !n.is_empty() && copied_xattr(n)) {
            let name = std::str::from_utf8(name).unwrap();
            let value = xattr(dst, name);
            assert!(value.is_some(), "{at} lacks {name}");
            if name != "security.capability" {
                assert_eq!(value, xattr(src, name), "{at} {name}");
            }
        }
        if s.is_dir() {
            for entry in std::fs::read_dir(src).unwrap() {
                let name = entry.unwrap().file_name();
                assert_same_tree(&src.join(&name), &dst.join(&name), shift);
            }
            assert_eq!(std::fs::read_dir(dst).unwrap().count(), std::fs::read_dir(src).unwrap().count(), "{at}");
        }
    }

    #[test]
    fn an_upper_dir_is_copied_exactly_with_its_ids_shifted_back() {
        if !is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("upper"), tmp.path().join("layer"));
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&dst).unwrap();
        lchown_ids(&src, 100_000, 100_000);
        build_upper(&src);

        let stats = copy_upper(&src, &dst, Some(SHIFT)).unwrap();

        // Before anything reads the copy and moves its access time.
        let tool = std::fs::symlink_metadata(dst.join("usr/local/bin/tool")).unwrap();
        assert_eq!((tool.atime(), tool.atime_nsec()), (1_600_000_000, 0));
        assert_eq!((tool.mtime(), tool.mtime_nsec()), (1_600_000_100, 123_456_789));
        assert_eq!((tool.uid(), tool.gid()), (1000, 1000));
        assert_eq!(tool.mode() & 0o7777, 0o4755);
        let link = std::fs::symlink_metadata(dst.join("usr/tool-link")).unwrap();
        assert!(link.is_symlink());
        assert_eq!(std::fs::read_link(dst.join("usr/tool-link")).unwrap(), Path::new("../usr/local/bin/tool"));
        assert_eq!((link.uid(), link.gid()), (2, 3));
        assert_eq!(
            (link.atime(), link.atime_nsec(), link.mtime(), link.mtime_nsec()),
            (1_500_000_000, 5, 1_500_000_001, 6)
        );

        assert_same_tree(&src, &dst, Some(SHIFT));
        assert_eq!(stats, CopyStats { files: 3, bytes: 20 + 6 });
        // The root dir itself: the container's root owns it.
        let root = std::fs::metadata(&dst).unwrap();
        assert_eq!((root.uid(), root.gid(), root.mtime(), root.mtime_nsec()), (0, 0, 1_600_001_100, 10));

        assert_eq!(xattr(&dst.join("usr/local/bin/tool"), "user.origin").as_deref(), Some(&b"build"[..]));

        let (a, b) =
            (std::fs::metadata(dst.join("usr/local/bin/a")).unwrap(), std::fs::metadata(dst.join("usr/b")).unwrap());
        assert_eq!(a.ino(), b.ino());
        assert_eq!(a.nlink(), 2);
        assert_eq!((b.uid(), b.gid()), (0, 50));

        let whiteout = std::fs::symlink_metadata(dst.join("etc/removed")).unwrap();
        assert_eq!(FileType::from_raw_mode(whiteout.mode()), FileType::CharacterDevice);
        assert_eq!(whiteout.rdev(), 0);

        assert_eq!(xattr(&dst.join("opt/replaced"), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
        assert_eq!(std::fs::metadata(dst.join("opt")).unwrap().mode() & 0o7777, 0o1777);

        let fifo = std::fs::symlink_metadata(dst.join("run.fifo")).unwrap();
        assert_eq!(FileType::from_raw_mode(fifo.mode()), FileType::Fifo);
        assert_eq!((fifo.uid(), fifo.gid(), fifo.mode() & 0o7777), (7, 8, 0o640));
        assert_eq!(xattr(&dst.join("run.fifo"), "trusted.note").as_deref(), Some(&b"fifo"[..]));
        assert_eq!(xattr(&dst.join("usr/tool-link"), "trusted.note").as_deref(), Some(&b"link"[..]));

        for (dir, mtime) in
            [("usr/local/bin", (1_600_000_300, 2)), ("usr/local", (1_600_000_500, 4)), ("usr", (1_600_000_700, 6))]
        {
            let m = std::fs::metadata(dst.join(dir)).unwrap();
            assert_eq!((m.mtime(), m.mtime_nsec()), mtime, "{dir}");
        }
    }

    #[test]
    fn file_capabilities_of_the_steps_root_become_plain_capabilities() {
        if !is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("upper"), tmp.path().join("layer"));
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&dst).unwrap();
        build_upper(&src);

        copy_upper(&src, &dst, Some(SHIFT)).unwrap();

        let cap = xattr(&dst.join("usr/local/bin/tool"), "security.capability").unwrap();
        let mut expected = capability_v3(0);
        expected[..4].copy_from_slice(&(VFS_CAP_REVISION_2 | 1).to_le_bytes());
        expected.truncate(XATTR_CAPS_SZ_2);
        assert_eq!(cap, expected);
    }

    #[test]
    fn ids_outside_the_shifted_range_are_kept() {
        if !is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("upper"), tmp.path().join("layer"));
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&dst).unwrap();
        for (name, uid, gid) in [("low", 5, 99_999), ("high", 165_536, 200_000), ("edge", 165_535, 100_000)] {
            std::fs::write(src.join(name), name).unwrap();
            lchown_ids(&src.join(name), uid, gid);
        }

        copy_upper(&src, &dst, Some(SHIFT)).unwrap();

        let ids = |name: &str| {
            let m = std::fs::symlink_metadata(dst.join(name)).unwrap();
            (m.uid(), m.gid())
        };
        assert_eq!(ids("low"), (5, 99_999));
        assert_eq!(ids("high"), (165_536, 200_000));
        assert_eq!(ids("edge"), (65_535, 0));
    }

    #[test]
    fn without_a_shift_ids_and_capabilities_are_copied_unchanged() {
        if !is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("upper"), tmp.path().join("layer"));
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&dst).unwrap();
        build_upper(&src);

        copy_upper(&src, &dst, None).unwrap();

        assert_same_tree(&src, &dst, None);
        let tool = std::fs::symlink_metadata(dst.join("usr/local/bin/tool")).unwrap();
        assert_eq!((tool.uid(), tool.gid(), tool.mode() & 0o7777), (101_000, 101_000, 0o4755));
        assert_eq!(xattr(&dst.join("usr/local/bin/tool"), "security.capability"), Some(capability_v3(100_000)));
    }

    #[test]
    fn holes_in_sparse_files_stay_holes() {
        if !is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("upper"), tmp.path().join("layer"));
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&dst).unwrap();
        let file = File::create(src.join("sparse")).unwrap();
        file.set_len(64 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, b"middle", 32 << 20).unwrap();
        drop(file);

        let stats = copy_upper(&src, &dst, None).unwrap();

        let copy = std::fs::metadata(dst.join("sparse")).unwrap();
        assert_eq!(copy.len(), 64 << 20);
        assert!(copy.blocks() * 512 < 1 << 20, "{} blocks", copy.blocks());
        assert!(stats.bytes < 1 << 20);
        assert_eq!(std::fs::read(dst.join("sparse")).unwrap(), std::fs::read(src.join("sparse")).unwrap());
    }

    #[test]
    fn symlinks_are_not_followed_out_of_the_tree() {
        if !is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst, outside) = (tmp.path().join("upper"), tmp.path().join("layer"), tmp.path().join("outside"));
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&dst).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(&outside, src.join("dir-link")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), src.join("file-link")).unwrap();

        let stats = copy_upper(&src, &dst, None).unwrap();

        assert_eq!(stats, CopyStats::default());
        assert!(std::fs::symlink_metadata(dst.join("dir-link")).unwrap().is_symlink());
        assert!(std::fs::symlink_metadata(dst.join("file-link")).unwrap().is_symlink());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    }

    #[test]
    fn id_shifts_map_only_their_range() {
        assert_eq!(SHIFT.apply(100_000), 0);
        assert_eq!(SHIFT.apply(165_535), 65_535);
        assert_eq!(SHIFT.apply(165_536), 165_536);
        assert_eq!(SHIFT.apply(99_999), 99_999);
        assert_eq!(IdShift { start: u32::MAX, count: 1 }.apply(u32::MAX), 0);
    }

    #[test]
    fn a_tree_nested_past_the_depth_limit_is_refused_without_overflowing_the_stack() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        // create_dir_all recurses per level too: build it iteratively, relative to each level.
        std::fs::create_dir(&src).unwrap();
        let mut fd = rustix::fs::open(&src, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
        for _ in 0..MAX_DEPTH + 2 {
            rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            fd = rustix::fs::openat(&fd, "d", OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
        }
        std::fs::create_dir(&dst).unwrap();
        let e = std::thread::Builder::new()
            .stack_size(STACK_SIZE)
            .spawn(move || copy_upper(&src, &dst, None).unwrap_err())
            .unwrap()
            .join()
            .unwrap();
        assert!(e.source.to_string().contains("deeper than 512"), "{e}: {}", e.source);
    }
}
