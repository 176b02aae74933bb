//! User namespaces for sandboxes and build steps.
//!
//! Contract:
//! - Every unprivileged sandbox and every build step runs in a user namespace whose uid/gid 0
//!   is host id `range.start`, for `range.count` ids ([`IdRange`]). The range is the server's
//!   own: configured (`--userns-range`), else the `cove` entry of `/etc/subuid` and
//!   `/etc/subgid`, else a free range that is appended there for user `cove` (as Docker's
//!   `dockremap` does), so that `useradd` never hands it to a host user.
//! - Image trees (`images/<d>/rootfs`, build layer dirs) stay on disk with the image's own
//!   ids and are shared by all sandboxes. A sandbox sees them through **idmapped mounts**
//!   (`open_tree(OPEN_TREE_CLONE)` + `mount_setattr(MOUNT_ATTR_IDMAP)`), which present on-disk
//!   id `n` as host id `start + n`; overlayfs takes these detached trees as lower layers.
//!   Nothing is chowned per image or per sandbox.
//! - The sandbox's writable layer (its disk's `upper/`) holds host ids (`start + n`): what the
//!   sandbox creates is never owned by host root. A build step's upper is copied off its disk
//!   shifted back to image ids when the step ends (`copytree`), so that layers and the step
//!   cache keep image ids.
//! - One namespace file descriptor, made once at start by a short-lived child, serves every
//!   idmapped mount (they only read its mapping).
// mount_setattr(2) has no safe wrapper in rustix; unshare(2) runs between fork and exec.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// A failed user-namespace operation.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    /// `--userns-range` or a subid line is not `START:COUNT`.
    #[error("invalid user namespace range {text:?}: {why}")]
    InvalidRange {
        /// The text.
        text: String,
        /// What is wrong.
        why: String,
    },
    /// Reading or appending `/etc/subuid` / `/etc/subgid` failed.
    #[error("{op} {path}")]
    SubidFile {
        /// `read` or `append to`.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The subid files have different ranges for `cove`.
    #[error("/etc/subuid gives cove {uid} but /etc/subgid gives {gid}: they must be the same range")]
    Mismatch {
        /// The uid range.
        uid: IdRange,
        /// The gid range.
        gid: IdRange,
    },
    /// No free range of the wanted size below 2^31.
    #[error("no free range of {count} ids for sandboxes in /etc/subuid and /etc/subgid")]
    NoFreeRange {
        /// The size wanted.
        count: u32,
    },
    /// Making the namespace that idmapped mounts use failed.
    #[error("create the sandbox user namespace ({step})")]
    Create {
        /// Which step.
        step: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// `open_tree` or `mount_setattr` on a layer failed.
    #[error("idmapped mount of {path}")]
    Idmap {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Shifting a step's changes back to image ids failed.
    #[error("shift ownership of {path}")]
    Shift {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Host ids `start .. start + count`: sandbox id `n` is host id `start + n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdRange {
    /// First host id (sandbox root).
    pub start: u32,
    /// How many ids.
    pub count: u32,
}

impl std::fmt::Display for IdRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.start, self.count)
    }
}

/// Name of the subordinate-id owner in `/etc/subuid` and `/etc/subgid`.
pub const SUBID_USER: &str = "cove";
/// Sandboxes need at least the ids images use in practice (`nobody` is 65534).
pub const MIN_COUNT: u32 = 65536;

impl std::str::FromStr for IdRange {
    type Err = UsernsError;

    fn from_str(text: &str) -> Result<Self, UsernsError> {
        let bad = |why: &str| UsernsError::InvalidRange { text: text.into(), why: why.into() };
        let (s, c) = text.split_once(':').ok_or_else(|| bad("expected START:COUNT"))?;
        let start: u32 = s.trim().parse().map_err(|_| bad("START is not a number"))?;
        let count: u32 = c.trim().parse().map_err(|_| bad("COUNT is not a number"))?;
        if start == 0 {
            return Err(bad("START must not be 0: sandbox root would be host root"));
        }
        if count < MIN_COUNT {
            return Err(bad(&format!("COUNT must be at least {MIN_COUNT}")));
        }
        if u64::from(start) + u64::from(count) > 1 << 31 {
            return Err(bad("the range must end below 2^31"));
        }
        Ok(IdRange { start, count })
    }
}

impl IdRange {
    /// Host id of sandbox id `id`, `None` past the range.
    pub fn host(&self, id: u32) -> Option<u32> {
        (id < self.count).then(|| self.start + id)
    }

    fn overlaps(&self, start: u64, count: u64) -> bool {
        let (a, b) = (u64::from(self.start), u64::from(self.start) + u64::from(self.count));
        start < b && a < start + count
    }

    /// The `cove` range of the subid files; when absent, a free one (not in any subid entry,
    /// not a uid or gid of a host account) is chosen and appended to both files.
    pub fn from_subid_files(subuid: &Path, subgid: &Path, passwd: &Path, group: &Path) -> Result<Self, UsernsError> {
        let read = |p: &Path| match std::fs::read_to_string(p) {
            Ok(t) => Ok(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(source) => Err(UsernsError::SubidFile { op: "read", path: p.into(), source }),
        };
        let (u, g) = (read(subuid)?, read(subgid)?);
        let own = |text: &str| -> Result<Option<IdRange>, UsernsError> {
            for line in text.lines() {
                let mut f = line.splitn(3, ':');
                if f.next() == Some(SUBID_USER)
                    && let (Some(s), Some(c)) = (f.next(), f.next())
                {
                    return format!("{s}:{c}").parse().map(Some);
                }
            }
            Ok(None)
        };
        match (own(&u)?, own(&g)?) {
            (Some(a), Some(b)) if a == b => return Ok(a),
            (Some(a), Some(b)) => return Err(UsernsError::Mismatch { uid: a, gid: b }),
            _ => {}
        }
        let mut taken: Vec<(u64, u64)> = Vec::new();
        for text in [&u, &g] {
            for line in text.lines() {
                let mut f = line.splitn(3, ':').skip(1);
                if let (Some(Ok(s)), Some(Ok(c))) = (f.next().map(str::parse::<u64>), f.next().map(str::parse::<u64>)) {
                    taken.push((s, c));
                }
            }
        }
        for p in [passwd, group] {
            for line in read(p)?.lines() {
                if let Some(Ok(id)) = line.split(':').nth(2).map(str::parse::<u64>) {
                    taken.push((id, 1));
                }
            }
        }
        let mut start: u64 = 100_000;
        let range = loop {
            if start + u64::from(MIN_COUNT) > 1 << 31 {
                return Err(UsernsError::NoFreeRange { count: MIN_COUNT });
            }
            let r = IdRange { start: start as u32, count: MIN_COUNT };
            match taken.iter().filter(|(s, c)| r.overlaps(*s, *c)).map(|(s, c)| s + c).max() {
                None => break r,
                Some(end) => start = end.div_ceil(u64::from(MIN_COUNT)) * u64::from(MIN_COUNT),
            }
        };
        for p in [subuid, subgid] {
            use std::io::Write;
            let append = || -> std::io::Result<()> {
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p)?;
                let text = read(p).unwrap_or_default();
                let sep = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
                writeln!(f, "{sep}{SUBID_USER}:{}:{}", range.start, range.count)
            };
            append().map_err(|source| UsernsError::SubidFile { op: "append to", path: p.into(), source })?;
        }
        tracing::info!(range = %range, "reserved a subordinate id range for sandboxes in /etc/subuid and /etc/subgid");
        Ok(range)
    }
}

/// `struct mount_attr` of `<linux/mount.h>`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// The sandboxes' id mapping and a namespace file descriptor that carries it.
#[derive(Debug)]
pub struct Userns {
    range: IdRange,
    fd: OwnedFd,
}

impl Userns {
    /// Makes a user namespace with `range` mapped (uid and gid 0 → `range.start`): a child
    /// unshares it, we write its maps and keep `/proc/<child>/ns/user` open, the child exits.
    pub fn new(range: IdRange) -> Result<Self, UsernsError> {
        use std::os::unix::process::CommandExt;
        let create = |step| move |source| UsernsError::Create { step, source };
        let mut cmd = std::process::Command::new("/bin/sh");
        // Waits for its stdin to close, so we decide when it exits.
        cmd.args(["-c", "read _"]).stdin(std::process::Stdio::piped());
        // SAFETY: the closure only calls unshare(2), which is async-signal-safe, between fork
        // and exec.
        unsafe {
            cmd.pre_exec(|| rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWUSER).map_err(Into::into));
        }
        let mut child = cmd.spawn().map_err(create("spawn"))?;
        let result = (|| {
            let pid = child.id();
            let map = format!("0 {} {}\n", range.start, range.count);
            std::fs::write(format!("/proc/{pid}/uid_map"), &map).map_err(create("write uid_map"))?;
            std::fs::write(format!("/proc/{pid}/gid_map"), &map).map_err(create("write gid_map"))?;
            let f = std::fs::File::open(format!("/proc/{pid}/ns/user")).map_err(create("open ns/user"))?;
            Ok(OwnedFd::from(f))
        })();
        drop(child.stdin.take());
        let _ = child.wait();
        Ok(Userns { range, fd: result? })
    }

    /// The mapped range.
    pub fn range(&self) -> IdRange {
        self.range
    }

    /// A detached clone of the tree at `path` that presents on-disk id `n` as `start + n`
    /// (read-only layers: an overlay lower). Usable as a path through `/proc/self/fd/<fd>`
    /// while the descriptor is open; overlayfs keeps its own reference once mounted.
    pub fn idmapped_tree(&self, path: &Path) -> Result<OwnedFd, UsernsError> {
        use rustix::mount::{OpenTreeFlags, open_tree};
        let fail = |source: std::io::Error| UsernsError::Idmap { path: path.into(), source };
        let tree = open_tree(rustix::fs::CWD, path, OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC)
            .map_err(|e| fail(e.into()))?;
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_IDMAP,
            attr_clr: 0,
            propagation: 0,
            userns_fd: self.fd.as_raw_fd() as u64,
        };
        // SAFETY: mount_setattr(2) reads `size_of::<MountAttr>()` bytes from a live, properly
        // laid out `struct mount_attr`; the path is a NUL-terminated empty string used with
        // AT_EMPTY_PATH on a descriptor we own.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_fd().as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if rc != 0 {
            return Err(fail(std::io::Error::last_os_error()));
        }
        Ok(tree)
    }

    /// Shifts every entry under `dir` (and `dir`) from image ids into the range: `n` becomes
    /// `start + n` for `n < count` (ids past it are left). Set-id bits, which chown clears,
    /// are put back; symlinks are not followed. For a disk written before user namespaces,
    /// whose sandbox is not running.
    pub fn shift_tree(&self, dir: &Path) -> Result<(), UsernsError> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let r = self.range;
        let mut stack = vec![dir.to_path_buf()];
        while let Some(p) = stack.pop() {
            let fail = |source| UsernsError::Shift { path: p.clone(), source };
            let meta = std::fs::symlink_metadata(&p).map_err(fail)?;
            let (uid, gid) = (r.host(meta.uid()), r.host(meta.gid()));
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&p, uid, gid).map_err(fail)?;
                let mode = meta.mode() & 0o7777;
                if meta.is_file() && mode & 0o6000 != 0 {
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
                }
            }
            if meta.is_dir() {
                for e in std::fs::read_dir(&p).map_err(fail)? {
                    stack.push(e.map_err(fail)?.path());
                }
            }
        }
        Ok(())
    }

    /// Makes `dir` (a new upper dir, or a sandbox's toolbox dir) owned by the sandbox's root.
    pub fn chown_root(&self, dir: &Path) -> Result<(), UsernsError> {
        std::os::unix::fs::lchown(dir, Some(self.range.start), Some(self.range.start))
            .map_err(|source| UsernsError::Shift { path: dir.into(), source })
    }
}

/// `/proc/self/fd/<n>`: the path through which mount(2) reaches a detached tree.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The per-user key quota that sandboxes need: every sandbox's root is the same host uid
/// (`range.start`), and runc gives each container a session keyring of its own, counted
/// against that uid's quota (`kernel.keys.maxkeys`, 200 keys by default, and
/// `kernel.keys.maxbytes`, 20,000 bytes, for every non-root user). Past about 200 sandboxes,
/// creates failed with "unable to create session key: disk quota exceeded". Sandboxes
/// themselves cannot make keys (the seccomp profile denies `add_key`, `keyctl` and
/// `request_key`), so only runc's one keyring per sandbox counts.
pub const KEY_QUOTA: [(&str, u64); 2] = [("kernel/keys/maxkeys", 20_000), ("kernel/keys/maxbytes", 2_000_000)];

/// Raises the host's per-user key quota to [`KEY_QUOTA`] where it is lower (as LXD's
/// production settings do); never lowers it. Returns the sysctls changed, as
/// (name, from, to).
pub fn ensure_key_quota() -> std::io::Result<Vec<(String, u64, u64)>> {
    let mut changed = Vec::new();
    for (key, want) in KEY_QUOTA {
        let path = std::path::Path::new("/proc/sys").join(key);
        let now: u64 = std::fs::read_to_string(&path)?
            .trim()
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?;
        if now < want {
            std::fs::write(&path, want.to_string())?;
            changed.push((key.replace('/', "."), now, want));
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_per_user_key_quota_is_raised_to_what_a_thousand_sandboxes_need_and_never_lowered() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let read =
            |k: &str| -> u64 { std::fs::read_to_string(format!("/proc/sys/{k}")).unwrap().trim().parse().unwrap() };
        ensure_key_quota().unwrap();
        for (key, want) in KEY_QUOTA {
            assert!(read(key) >= want, "{key}");
            assert!(want >= 1_000 * if key.ends_with("maxkeys") { 1 } else { 64 }, "{key} covers 1,000 sandboxes");
        }
        let again = ensure_key_quota().unwrap();
        assert!(again.is_empty(), "nothing to raise twice: {again:?}");
    }
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_root_small_and_overflowing_ones() {
        assert_eq!("100000:65536".parse::<IdRange>().unwrap(), IdRange { start: 100_000, count: 65536 });
        for bad in ["0:65536", "100000:1000", "abc:65536", "100000", "2147418112:131072"] {
            assert!(bad.parse::<IdRange>().is_err(), "{bad}");
        }
        let r = IdRange { start: 100_000, count: 65536 };
        assert_eq!(r.host(0), Some(100_000));
        assert_eq!(r.host(65535), Some(165_535));
        assert_eq!(r.host(65536), None);
    }

    #[test]
    fn the_cove_entry_of_the_subid_files_is_used_when_present() {
        let d = tempfile::tempdir().unwrap();
        let (u, g, p, gr) = (d.path().join("u"), d.path().join("g"), d.path().join("p"), d.path().join("gr"));
        std::fs::write(&u, "alice:100000:65536\ncove:231072:65536\n").unwrap();
        std::fs::write(&g, "cove:231072:65536\n").unwrap();
        let r = IdRange::from_subid_files(&u, &g, &p, &gr).unwrap();
        assert_eq!(r, IdRange { start: 231_072, count: 65536 });
        std::fs::write(&g, "cove:300000:65536\n").unwrap();
        assert!(matches!(IdRange::from_subid_files(&u, &g, &p, &gr), Err(UsernsError::Mismatch { .. })));
    }

    #[test]
    fn a_free_range_avoiding_users_and_other_subids_is_reserved_once() {
        let d = tempfile::tempdir().unwrap();
        let (u, g, p, gr) = (d.path().join("u"), d.path().join("g"), d.path().join("p"), d.path().join("gr"));
        std::fs::write(&u, "alice:100000:65536").unwrap();
        std::fs::write(&p, "root:x:0:0::/root:/bin/sh\nbig:x:170000:170000::/:/bin/sh\n").unwrap();
        let r = IdRange::from_subid_files(&u, &g, &p, &gr).unwrap();
        assert_eq!(r, IdRange { start: 196_608, count: 65536 });
        assert_eq!(std::fs::read_to_string(&u).unwrap(), "alice:100000:65536\ncove:196608:65536\n");
        assert_eq!(std::fs::read_to_string(&g).unwrap(), "cove:196608:65536\n");
        assert_eq!(IdRange::from_subid_files(&u, &g, &p, &gr).unwrap(), r, "the second start reuses it");
    }
}
