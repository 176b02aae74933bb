//! The per-sandbox writable disk: a sparse ext4 image loop-mounted at `<bundle>/disk`, holding
//! the overlay's `upper/` and `work/`, so a full disk is a hard ENOSPC for that sandbox only
//! (this kernel has no XFS or ext4 project quota). The overlay itself is mounted with
//! `mount(2)`.
//!
//! Space is guaranteed, not promised: a new image is `fallocate`d to its full size (unwritten
//! extents: a few milliseconds, nothing is written), and only when the data filesystem keeps
//! at least the configured reserve (`--disk-reserve`) free afterwards for the database and
//! the blobs. So one sandbox filling its disk never takes blocks another disk counts on.
//! Disks are mounted `errors=remount-ro`; [`read_only_disks`] finds the ones that failed.

use std::path::{Path, PathBuf};

use crate::cmd::{self, CommandError};
use crate::userns::{self, Userns, UsernsError};

/// A failed disk or mount operation.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Creating or sizing the sparse image file failed.
    #[error("create disk image {path}")]
    CreateImage {
        /// The image.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `mkfs.ext4` failed.
    #[error("format disk image {path}")]
    Format {
        /// The image.
        path: PathBuf,
        /// Cause.
        #[source]
        source: CommandError,
    },
    /// The image could not be bound to a loop device.
    #[error("attach {image} to a loop device")]
    AttachImage {
        /// The image.
        image: PathBuf,
        /// Cause.
        #[source]
        source: crate::loopdev::LoopError,
    },
    /// mount(2) of the image's loop device failed (for a damaged image: EINVAL or EUCLEAN).
    #[error("mount {image} ({device}) at {target}")]
    MountImage {
        /// The image.
        image: PathBuf,
        /// Its loop device.
        device: PathBuf,
        /// The mount point.
        target: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The image is still attached to a loop device from an earlier mount that has not gone
    /// away (a lazily detached mount still in use): mounting it again would reuse that live
    /// file system instead of reading the image.
    #[error("disk image {image} is still in use by {device} from an earlier run; try again shortly")]
    StillAttached {
        /// The image.
        image: PathBuf,
        /// The loop device.
        device: String,
    },
    /// A directory under the mounted disk could not be created.
    #[error("create directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Allocating the disk would leave the data filesystem less than its reserve (or none).
    #[error(
        "not enough free space for a {needed}-byte disk on {path}: {free} bytes free, and {reserve} bytes must stay \
         free for the database and images (--disk-reserve); delete sandboxes or snapshots to make room"
    )]
    NoSpace {
        /// A directory on the data filesystem.
        path: PathBuf,
        /// Bytes free now.
        free: u64,
        /// Bytes the disk needs.
        needed: u64,
        /// Bytes kept free.
        reserve: u64,
    },
    /// A lower dir path that overlayfs options cannot express.
    #[error("overlay path {path} contains ',' ':' or a newline")]
    UnsafeOverlayPath {
        /// The path.
        path: PathBuf,
    },
    /// `mount -t overlay` failed.
    #[error("mount overlay at {target}")]
    MountOverlay {
        /// The mount point.
        target: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A lower layer could not be idmapped.
    #[error("present a layer with the sandbox's ids")]
    Idmap(#[source] UsernsError),
    /// `mount -t tmpfs` failed.
    #[error("mount tmpfs at {target}")]
    MountTmpfs {
        /// The mount point.
        target: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `umount` failed even lazily.
    #[error("unmount {target}")]
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Making a directory a private mount point failed.
    #[error("make {dir} a private mount point")]
    Private {
        /// The directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Moving a mount failed.
    #[error("move the mount at {from} to {to}")]
    Move {
        /// Where it was.
        from: PathBuf,
        /// Where it was to go.
        to: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Bytes the unprivileged can still allocate on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Refuses (with [`DiskError::NoSpace`]) when allocating `needed` bytes on the filesystem of
/// `dir` would leave less than `reserve` free.
pub fn check_room(dir: &Path, needed: u64, reserve: u64) -> Result<(), DiskError> {
    let free = free_bytes(dir).map_err(|source| DiskError::CreateImage { path: dir.into(), source })?;
    if free < needed.saturating_add(reserve) {
        return Err(DiskError::NoSpace { path: dir.into(), free, needed, reserve });
    }
    Ok(())
}

/// Allocates every block of `f`'s first `len` bytes (holes become unwritten extents; data
/// already there is kept), so later writes into it never need free space.
pub fn allocate(f: &std::fs::File, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    rustix::fs::fallocate(f, rustix::fs::FallocateFlags::empty(), 0, len).map_err(std::io::Error::from)
}

/// Creates a `size_mib` image with all its blocks allocated (see the module doc; `sparse`:
/// none, only promised) and formats it ext4 (lazy init). Refused with [`DiskError::NoSpace`]
/// when the data filesystem would keep less than `reserve` bytes free; nothing is left
/// behind then.
pub async fn create_image(path: &Path, size_mib: u64, reserve: u64, sparse: bool) -> Result<(), DiskError> {
    format_image(path, size_mib, reserve, sparse, false).await
}

/// [`create_image`] for work nobody waits for (the disk pool's filler): `mkfs.ext4` runs at
/// the lowest CPU priority (`nice -n 19`), so that it yields to the creates and commands
/// that run meanwhile on a machine with few cores.
pub async fn create_image_in_background(
    path: &Path,
    size_mib: u64,
    reserve: u64,
    sparse: bool,
) -> Result<(), DiskError> {
    format_image(path, size_mib, reserve, sparse, true).await
}

async fn format_image(
    path: &Path,
    size_mib: u64,
    reserve: u64,
    sparse: bool,
    background: bool,
) -> Result<(), DiskError> {
    let len = size_mib << 20;
    let dir = path.parent().unwrap_or(Path::new("/"));
    check_room(dir, if sparse { 0 } else { len }, reserve)?;
    let f = std::fs::File::create(path).map_err(|source| DiskError::CreateImage { path: path.into(), source })?;
    let allocated = f.set_len(len).and_then(|()| if sparse { Ok(()) } else { allocate(&f, len) });
    drop(f);
    if let Err(source) = allocated {
        let _ = std::fs::remove_file(path);
        if source.raw_os_error() == Some(libc_enospc()) {
            let free = free_bytes(dir).unwrap_or(0);
            return Err(DiskError::NoSpace { path: dir.into(), free, needed: len, reserve });
        }
        return Err(DiskError::CreateImage { path: path.into(), source });
    }
    let mkfs: [&std::ffi::OsStr; 7] = [
        "mkfs.ext4".as_ref(),
        "-q".as_ref(),
        "-F".as_ref(),
        "-m".as_ref(),
        "0".as_ref(),
        "-E".as_ref(),
        "lazy_itable_init=1,lazy_journal_init=1,nodiscard".as_ref(),
    ];
    let mut args: Vec<&std::ffi::OsStr> = mkfs[1..].to_vec();
    args.push(path.as_os_str());
    let run = if background {
        // `nice -n 19 mkfs.ext4 …`: the lowest CPU priority, set before mkfs runs.
        let niced: Vec<&std::ffi::OsStr> = ["-n".as_ref(), "19".as_ref(), mkfs[0]].into_iter().chain(args).collect();
        cmd::run("nice", &niced, None).await
    } else {
        cmd::run("mkfs.ext4", &args, None).await
    };
    run.map_err(|source| DiskError::Format { path: path.into(), source })?;
    Ok(())
}

fn libc_enospc() -> i32 {
    rustix::io::Errno::NOSPC.raw_os_error()
}

/// Whether `e` or one of its causes is "no space left on device" (ENOSPC).
pub fn is_no_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && io.raw_os_error() == Some(libc_enospc())
        {
            return true;
        }
        if matches!(c.downcast_ref::<DiskError>(), Some(DiskError::NoSpace { .. })) {
            return true;
        }
        cur = c.source();
    }
    false
}

/// Loop-mounted disks under `root` (`<root>/<id>/disk`) whose filesystem is read-only now
/// (ext4 remounted it after an I/O or consistency error): sandbox id → the kernel's options.
pub fn read_only_disks(root: &Path) -> std::collections::HashMap<String, String> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return Default::default() };
    read_only_disks_in(&info, root)
}

fn read_only_disks_in(info: &str, root: &Path) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(mount_point) = fields.get(4).map(|m| PathBuf::from(unescape_mountinfo(m))) else { continue };
        let Ok(rest) = mount_point.strip_prefix(root) else { continue };
        let mut parts = rest.components();
        let (Some(id), Some(last), None) = (parts.next(), parts.next(), parts.next()) else { continue };
        if last.as_os_str() != "disk" {
            continue;
        }
        // After the optional fields: "- fstype source super_options".
        let Some(dash) = fields.iter().position(|f| *f == "-") else { continue };
        let (Some(fstype), Some(super_opts)) = (fields.get(dash + 1), fields.get(dash + 3)) else { continue };
        let per_mount = fields.get(5).copied().unwrap_or("");
        if *fstype == "ext4" && (super_opts.split(',').any(|o| o == "ro") || per_mount.split(',').any(|o| o == "ro")) {
            out.insert(id.as_os_str().to_string_lossy().into_owned(), super_opts.to_string());
        }
    }
    out
}

/// Loop-mounts `image` at `target` (created if needed) unless something is mounted there
/// already, then makes sure `upper/` and `work/` exist. The image gets a loop device of its
/// own ([`crate::loopdev`], never one `mount -o loop` would reuse), with autoclear, so the
/// device goes away with the unmount.
pub async fn mount_image(image: &Path, target: &Path) -> Result<(), DiskError> {
    std::fs::create_dir_all(target).map_err(|source| DiskError::CreateDir { path: target.into(), source })?;
    if !is_mountpoint(target) {
        wait_detached(image).await?;
        let (image_owned, target_owned) = (image.to_path_buf(), target.to_path_buf());
        tokio::task::spawn_blocking(move || mount_loop(&image_owned, &target_owned))
            .await
            .map_err(|e| DiskError::CreateDir { path: target.into(), source: std::io::Error::other(e) })??;
    }
    for d in ["upper", "work"] {
        let p = target.join(d);
        std::fs::create_dir_all(&p).map_err(|source| DiskError::CreateDir { path: p.clone(), source })?;
    }
    Ok(())
}

/// Binds `image` to a fresh loop device and mounts it at `target` with mount(2).
fn mount_loop(image: &Path, target: &Path) -> Result<(), DiskError> {
    use rustix::mount::MountFlags;
    let dev = crate::loopdev::attach(image).map_err(|source| DiskError::AttachImage { image: image.into(), source })?;
    // ext4 named: the image is always ext4, so no type probe, and the (sandbox-written) image
    // is never mounted as another file system type.
    // nosuid,nodev: what the sandbox wrote is never a set-id program or a device for the host,
    // whoever reaches the mount.
    // errors=remount-ro: a disk that failed stops taking writes and is reported (see
    // `read_only_disks`) instead of being written on in an unknown state.
    rustix::mount::mount(dev.path(), target, "ext4", MountFlags::NOSUID | MountFlags::NODEV, c"errors=remount-ro")
        .map_err(|e| DiskError::MountImage {
            image: image.into(),
            device: dev.path().into(),
            target: target.into(),
            source: e.into(),
        })
    // `dev` closes here: the mount holds the device now (or, if the mount failed, autoclear
    // releases it).
}

/// How long a start waits for an earlier, lazily detached mount of its image to go away.
const DETACH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until no loop device is backed by `image`. `mount -o loop` reuses a loop device
/// already attached to the same file, and the kernel then hands back the file system still
/// alive on it (a previous run's mount that was detached lazily while busy) without reading
/// the image: the start would see the old state, and a damaged image would seem to mount.
async fn wait_detached(image: &Path) -> Result<(), DiskError> {
    wait_detached_for(image, DETACH_WAIT).await
}

/// Waits (up to `wait`) until the kernel has let go of `image`: no loop device is backed by
/// it any more. An unmount returns while another mount namespace still holds a copy of the
/// mount (one that a concurrent `runc` start cloned from the host's a moment earlier); the
/// file system lives on until that copy goes, and its last act is to write its superblock
/// and journal into the image. A stop waits for that, so that a stopped sandbox's image is
/// quiescent: a copy or a change made to it after the stop is never overwritten.
pub async fn wait_released(image: &Path, wait: std::time::Duration) -> Result<(), DiskError> {
    wait_detached_for(image, wait).await
}

async fn wait_detached_for(image: &Path, wait: std::time::Duration) -> Result<(), DiskError> {
    let Ok(want) = std::fs::canonicalize(image) else { return Ok(()) };
    let start = std::time::Instant::now();
    let deadline = start + wait;
    let mut waited = false;
    loop {
        let Some(device) = loop_device_of(&want) else {
            if waited {
                tracing::info!(image = %image.display(), ms = start.elapsed().as_millis() as u64, "an earlier mount of the disk went away");
            }
            return Ok(());
        };
        waited = true;
        if std::time::Instant::now() >= deadline {
            return Err(DiskError::StillAttached { image: image.into(), device });
        }
        tracing::debug!(image = %image.display(), device, "waiting for an earlier mount of the disk to go away");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The loop device (`loopN`) whose backing file is `image`, if any (from sysfs).
pub(crate) fn loop_device_of(image: &Path) -> Option<String> {
    let want = image.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/sys/block").ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            return None;
        }
        let backing = std::fs::read(e.path().join("loop/backing_file")).ok()?;
        let backing = backing.strip_suffix(b"\n").unwrap_or(&backing);
        (backing == want).then_some(name)
    })
}

fn check_overlay_path(p: &Path) -> Result<String, DiskError> {
    let s = p.to_str().ok_or_else(|| DiskError::UnsafeOverlayPath { path: p.into() })?;
    if s.contains([',', ':', '\n']) {
        return Err(DiskError::UnsafeOverlayPath { path: p.into() });
    }
    Ok(s.to_string())
}

/// Idmapped clones of `lowers` (kept open until the overlay is mounted) and the paths through
/// which mount(2) reaches them; the lowers themselves without a user namespace.
fn lower_paths(
    lowers: &[PathBuf],
    ns: Option<&Userns>,
) -> Result<(Vec<std::os::fd::OwnedFd>, Vec<PathBuf>), DiskError> {
    let Some(ns) = ns else { return Ok((Vec::new(), lowers.to_vec())) };
    let fds = lowers.iter().map(|l| ns.idmapped_tree(l)).collect::<Result<Vec<_>, _>>().map_err(DiskError::Idmap)?;
    let paths = fds.iter().map(userns::fd_path).collect();
    Ok((fds, paths))
}

/// Mounts `lower` + `upper`/`work` as an overlay at `target` unless already mounted. With a
/// user namespace, the lower is presented shifted into its ids (idmapped); `upper` then holds
/// host ids.
pub fn mount_overlay(
    lower: &Path,
    upper: &Path,
    work: &Path,
    target: &Path,
    ns: Option<&Userns>,
) -> Result<(), DiskError> {
    std::fs::create_dir_all(target).map_err(|source| DiskError::CreateDir { path: target.into(), source })?;
    if is_mountpoint(target) {
        return Ok(());
    }
    let (_fds, lowers) = lower_paths(&[lower.to_path_buf()], ns)?;
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        check_overlay_path(&lowers[0])?,
        check_overlay_path(upper)?,
        check_overlay_path(work)?
    );
    let data = std::ffi::CString::new(data).map_err(|_| DiskError::UnsafeOverlayPath { path: lower.into() })?;
    rustix::mount::mount("overlay", target, "overlay", rustix::mount::MountFlags::empty(), data.as_c_str())
        .map_err(|e| DiskError::MountOverlay { target: target.into(), source: e.into() })
}

/// Mounts an overlay of several lower dirs (topmost first) + `upper`/`work` at `target`, with
/// redirects and metacopy off so that every change lands in `upper` as plain files, 0:0
/// character-device whiteouts and opaque directories (what a layer diff reads). The options
/// must fit in one page (about 4000 bytes of paths).
pub fn mount_overlay_layers(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
    ns: Option<&Userns>,
) -> Result<(), DiskError> {
    std::fs::create_dir_all(target).map_err(|source| DiskError::CreateDir { path: target.into(), source })?;
    if is_mountpoint(target) {
        return Ok(());
    }
    let (_fds, lowers) = lower_paths(lowers, ns)?;
    let lower = lowers.iter().map(|l| check_overlay_path(l)).collect::<Result<Vec<_>, _>>()?.join(":");
    let data = format!(
        "lowerdir={lower},upperdir={},workdir={},redirect_dir=off,metacopy=off",
        check_overlay_path(upper)?,
        check_overlay_path(work)?
    );
    let data = std::ffi::CString::new(data).map_err(|_| DiskError::UnsafeOverlayPath { path: target.into() })?;
    rustix::mount::mount("overlay", target, "overlay", rustix::mount::MountFlags::empty(), data.as_c_str())
        .map_err(|e| DiskError::MountOverlay { target: target.into(), source: e.into() })
}

/// Mounts a read-only merged view of `lowers` (topmost first) at `target`: an overlay without
/// upper dir, or a read-only bind mount of a single directory.
pub fn mount_readonly_view(lowers: &[PathBuf], target: &Path) -> Result<(), DiskError> {
    use rustix::mount::MountFlags;
    std::fs::create_dir_all(target).map_err(|source| DiskError::CreateDir { path: target.into(), source })?;
    let failed = |e: rustix::io::Errno| DiskError::MountOverlay { target: target.into(), source: e.into() };
    match lowers {
        [] => Ok(()),
        [only] => {
            rustix::mount::mount_bind(only, target).map_err(failed)?;
            rustix::mount::mount_remount(target, MountFlags::BIND | MountFlags::RDONLY, c"").map_err(|e| {
                let _ = unmount(target);
                failed(e)
            })
        }
        _ => {
            let lower = lowers.iter().map(|l| check_overlay_path(l)).collect::<Result<Vec<_>, _>>()?.join(":");
            let data = std::ffi::CString::new(format!("lowerdir={lower}"))
                .map_err(|_| DiskError::UnsafeOverlayPath { path: target.into() })?;
            rustix::mount::mount("overlay", target, "overlay", MountFlags::RDONLY, data.as_c_str()).map_err(failed)
        }
    }
}

/// Mounts a fresh tmpfs of `size_kib` at `target` (created if needed), owned by `uid:gid`
/// with `mode`, `nosuid,nodev,noexec`; whatever was mounted there before is unmounted first.
pub fn mount_tmpfs(target: &Path, size_kib: u64, uid: u32, gid: u32, mode: u32) -> Result<(), DiskError> {
    use rustix::mount::MountFlags;
    std::fs::create_dir_all(target).map_err(|source| DiskError::CreateDir { path: target.into(), source })?;
    unmount(target)?;
    let data = std::ffi::CString::new(format!("size={size_kib}k,nr_inodes=1024,mode={mode:o},uid={uid},gid={gid}"))
        .map_err(|_| DiskError::UnsafeOverlayPath { path: target.into() })?;
    rustix::mount::mount(
        "tmpfs",
        target,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        data.as_c_str(),
    )
    .map_err(|e| DiskError::MountTmpfs { target: target.into(), source: e.into() })
}

/// Makes `dir` (created if needed) a private mount point of its own: a bind mount of itself,
/// unless it is one already. Mounts directly under a private mount can be moved
/// ([`move_mount`]); under a shared one (the host's `/` usually is) the kernel refuses.
pub fn private_mount_point(dir: &Path) -> Result<(), DiskError> {
    use rustix::mount::MountPropagationFlags;
    std::fs::create_dir_all(dir).map_err(|source| DiskError::CreateDir { path: dir.into(), source })?;
    if !is_mountpoint(dir) {
        rustix::mount::mount_bind(dir, dir).map_err(|e| DiskError::Private { dir: dir.into(), source: e.into() })?;
    }
    rustix::mount::mount_change(dir, MountPropagationFlags::PRIVATE)
        .map_err(|e| DiskError::Private { dir: dir.into(), source: e.into() })
}

/// Moves the mount at `from` (whose parent mount must be private) to `to` (created if
/// needed): one `mount(MS_MOVE)`, the file system stays as it is.
pub fn move_mount(from: &Path, to: &Path) -> Result<(), DiskError> {
    std::fs::create_dir_all(to).map_err(|source| DiskError::CreateDir { path: to.into(), source })?;
    rustix::mount::mount_move(from, to).map_err(|e| DiskError::Move {
        from: from.into(),
        to: to.into(),
        source: e.into(),
    })
}

/// Unmounts `target` if it is a mount point; falls back to a lazy unmount when busy.
pub fn unmount(target: &Path) -> Result<(), DiskError> {
    use rustix::mount::UnmountFlags;
    // Bounded: a stack of mounts on the same point is peeled one per round.
    for _ in 0..16 {
        if !is_mountpoint(target) {
            break;
        }
        match rustix::mount::unmount(target, UnmountFlags::empty()) {
            Ok(()) => {}
            Err(rustix::io::Errno::BUSY) => {
                tracing::warn!(target = %target.display(), "mount busy, detaching lazily");
                rustix::mount::unmount(target, UnmountFlags::DETACH)
                    .map_err(|e| DiskError::Unmount { target: target.into(), source: e.into() })?;
            }
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(DiskError::Unmount { target: target.into(), source: e.into() }),
        }
    }
    Ok(())
}

/// Whether `path` is a mount point in our mount namespace.
///
/// Asked of the path itself (`statx`'s `STATX_ATTR_MOUNT_ROOT`, Linux 5.8): reading
/// `mountinfo` costs time in proportion to every mount on the host, and a create asks this
/// four times (with a few hundred sandboxes, that was most of the server's own CPU in a
/// burst). Kernels that do not report the attribute get the `mountinfo` answer.
pub fn is_mountpoint(path: &Path) -> bool {
    use rustix::fs::{AtFlags, StatxAttributes, StatxFlags};
    match rustix::fs::statx(rustix::fs::CWD, path, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS) {
        Ok(st) if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) => {
            st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
        }
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => false,
        _ => is_mountpoint_in_mountinfo(path),
    }
}

/// [`is_mountpoint`] from `/proc/self/mountinfo`.
pub fn is_mountpoint_in_mountinfo(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = path.to_string_lossy();
    info.lines().filter_map(|l| l.split(' ').nth(4)).any(|m| unescape_mountinfo(m) == want)
}

/// Mount points under `dir` (for leak checks and cleanup).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn a_mount_point_is_known_from_the_path_itself_as_mountinfo_knows_it() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (plain, bound, fresh) = (tmp.path().join("plain"), tmp.path().join("bound"), tmp.path().join("tmpfs"));
        for d in [&plain, &bound, &fresh] {
            std::fs::create_dir(d).unwrap();
        }
        // A bind mount of the same file system: the device number alone would miss it.
        rustix::mount::mount_bind(&bound, &bound).unwrap();
        mount_tmpfs(&fresh, 64, 0, 0, 0o700).unwrap();
        for (p, want) in [(&plain, false), (&bound, true), (&fresh, true), (&tmp.path().join("missing"), false)] {
            assert_eq!(is_mountpoint(p), want, "{}", p.display());
            assert_eq!(is_mountpoint_in_mountinfo(p), want, "{} (mountinfo)", p.display());
        }
        unmount(&bound).unwrap();
        unmount(&fresh).unwrap();
        assert!(!is_mountpoint(&bound) && !is_mountpoint(&fresh));
    }

    #[test]
    fn a_disk_whose_filesystem_went_read_only_is_found_and_others_are_not() {
        let info = "\
36 35 7:0 / /data/sandboxes/aaa/disk rw,nosuid,nodev,relatime shared:1 - ext4 /dev/loop0 ro,errors=remount-ro
37 35 7:1 / /data/sandboxes/bbb/disk rw,nosuid,nodev,relatime - ext4 /dev/loop1 rw,errors=remount-ro
38 35 0:5 / /data/sandboxes/ccc/rootfs rw - overlay overlay ro
39 35 7:2 / /data/sandboxes/ddd/disk ro,relatime - ext4 /dev/loop2 rw
";
        let found = read_only_disks_in(info, Path::new("/data/sandboxes"));
        let mut ids: Vec<&str> = found.keys().map(String::as_str).collect();
        ids.sort();
        assert_eq!(ids, ["aaa", "ddd"]);
    }

    #[tokio::test]
    async fn a_disk_still_attached_from_an_earlier_mount_is_waited_for_and_then_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img).unwrap().set_len(1 << 20).unwrap();
        assert_eq!(loop_device_of(&std::fs::canonicalize(&img).unwrap()), None);
        wait_detached_for(&img, std::time::Duration::ZERO).await.unwrap();

        let out = std::process::Command::new("losetup").args(["-f", "--show"]).arg(&img).output().unwrap();
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let name = dev.trim_start_matches("/dev/").to_string();
        assert_eq!(loop_device_of(&std::fs::canonicalize(&img).unwrap()), Some(name.clone()));
        let e = wait_detached_for(&img, std::time::Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(&e, DiskError::StillAttached { device, .. } if *device == name), "{e}");
        assert!(e.to_string().contains(&name), "{e}");

        // Detached while a start waits: the start goes on.
        let detach = tokio::task::spawn_blocking(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            std::process::Command::new("losetup").args(["-d", &dev]).status().unwrap()
        });
        wait_detached_for(&img, std::time::Duration::from_secs(10)).await.unwrap();
        assert!(detach.await.unwrap().success());
    }

    #[test]
    fn an_image_that_would_eat_the_reserve_is_refused_naming_free_and_needed_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        let e = check_room(dir.path(), 8 << 20, free).unwrap_err();
        let DiskError::NoSpace { needed, reserve, .. } = &e else { panic!("{e}") };
        assert_eq!((*needed, *reserve), (8 << 20, free));
        assert!(e.to_string().contains("bytes free"), "{e}");
        assert!(is_no_space(&e));
        check_room(dir.path(), 8 << 20, 0).unwrap();
    }

    #[test]
    fn allocate_reserves_every_block_of_a_sparse_file() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("img")).unwrap();
        f.set_len(4 << 20).unwrap();
        assert!(f.metadata().unwrap().blocks() * 512 < 4 << 20);
        allocate(&f, 4 << 20).unwrap();
        assert!(f.metadata().unwrap().blocks() * 512 >= 4 << 20);
    }

    #[tokio::test]
    async fn a_sparse_disk_takes_only_what_mkfs_wrote_and_an_allocated_one_its_full_size() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (sparse, full) = (dir.path().join("sparse.img"), dir.path().join("full.img"));
        create_image(&sparse, 256, 0, true).await.unwrap();
        create_image(&full, 256, 0, false).await.unwrap();
        let used = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
        assert_eq!(std::fs::metadata(&sparse).unwrap().len(), 256 << 20);
        assert!(used(&sparse) < 64 << 20, "sparse image holds {} bytes", used(&sparse));
        assert!(used(&full) >= 256 << 20, "allocated image holds {} bytes", used(&full));
        // A sparse disk needs only the reserve free; an allocated one its size besides (2 GiB
        // of slack: other work on the machine writes meanwhile).
        let free = free_bytes(dir.path()).unwrap();
        let reserve = free.saturating_sub(2 << 30);
        create_image(&dir.path().join("fits.img"), 4096, reserve, true).await.unwrap();
        let e = create_image(&dir.path().join("no.img"), 4096, reserve, false).await.unwrap_err();
        assert!(matches!(e, DiskError::NoSpace { .. }), "{e}");
        assert!(!dir.path().join("no.img").exists());
    }

    #[test]
    fn overlay_paths_with_separators_are_refused() {
        assert!(check_overlay_path(Path::new("/a,b")).is_err());
        assert!(check_overlay_path(Path::new("/a:b")).is_err());
        assert!(check_overlay_path(Path::new("/data/images/abc/rootfs")).is_ok());
    }
}
