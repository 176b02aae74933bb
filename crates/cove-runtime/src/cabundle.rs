//! Extra trusted certificates for sandboxes and build steps (`--sandbox-ca-bundle`).
//!
//! Contract: when the server is given a PEM file (a corporate TLS-intercepting proxy's CA,
//! say), every sandbox and every build step trusts those certificates wherever a tool looks:
//!
//! - read-only at [`SANDBOX_PATH`], the image's own bundle ([`IMAGE_BUNDLE`]) followed by them,
//!   with the variables of [`ENV_VARS`] pointing at it (an image or user value of the same
//!   variable wins). Generated in the bundle directory at every start and bind-mounted at a
//!   path of its own.
//! - in the image's own trust store, for tools that read only the system path (wget, apt over
//!   https, Java's `cacerts` hook): the merged bundle as a regular file at [`IMAGE_BUNDLE`], and
//!   each certificate as `cove-<n>.crt` in [`LOCAL_DIR`], where `update-ca-certificates`
//!   (Debian, Alpine) picks local certificates up, so that `apt-get install ca-certificates`
//!   or `update-ca-certificates` later keeps them. Neither is a mount (a bind over the bundle
//!   would make the rename of a new one fail with `EBUSY`). A sandbox gets them in its
//!   writable layer at every start ([`install`], with the sandbox's root as owner); a build
//!   step gets them in a lower layer of its own on top of the image's, so that they are not
//!   part of the step's layer unless the step rewrites the bundle itself.
//!
//! A sandbox's disk is hostile: it may hold links, FIFOs or directories at any of these paths,
//! planted before a stop. The image's bundle is read with `RESOLVE_IN_ROOT`, regular files
//! only, bounded in size; [`install`] opens every directory and file relative to a descriptor
//! with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` and replaces files by renaming a fresh
//! `O_EXCL` file over them, so a planted link is replaced, never followed, and a link in
//! place of a directory makes that file skipped. The merged bundle leaves out copies of the
//! extra certificates already in the image's (from an earlier start or an
//! `update-ca-certificates`), so restarts do not grow it.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Where sandboxes find the merged bundle.
pub const SANDBOX_PATH: &str = "/etc/cove/ca-certificates.crt";
/// The image's own bundle (Debian's and Alpine's system path), the start of the merged one.
pub const IMAGE_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where `update-ca-certificates` finds local certificates; the extra ones are `cove-<n>.crt`.
pub const LOCAL_DIR: &str = "/usr/local/share/ca-certificates";
/// Variables pointed at [`SANDBOX_PATH`]: OpenSSL (and so Python's `ssl`), pip, requests,
/// Node.js, curl and git read them.
pub const ENV_VARS: &[&str] =
    &["SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"];
/// The most of an image's own bundle or of the extra file that is read.
const MAX_BYTES: u64 = 8 << 20;
const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const PEM_END: &str = "-----END CERTIFICATE-----";

/// The extra certificates could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    /// The file could not be read.
    #[error("read the sandbox CA bundle {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no PEM certificate, or is too large.
    #[error("sandbox CA bundle {path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// Reads and checks the server's extra certificates: PEM, at least one certificate, at most
/// 8 MiB, text only.
pub fn load_extra(path: &Path) -> Result<String, CaBundleError> {
    let read = |source| CaBundleError::Read { path: path.to_path_buf(), source };
    let invalid = |why: &str| CaBundleError::Invalid { path: path.to_path_buf(), why: why.into() };
    let f = std::fs::File::open(path).map_err(read)?;
    let mut text = String::new();
    f.take(MAX_BYTES + 1).read_to_string(&mut text).map_err(read)?;
    if text.len() as u64 > MAX_BYTES {
        return Err(invalid("larger than 8 MiB"));
    }
    if !text.contains(PEM_BEGIN) {
        return Err(invalid("holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(text)
}

/// The image's bundle at [`IMAGE_BUNDLE`] under `rootfs` (empty when missing, not a regular
/// file, or unreadable) without the certificates of `extra` it already holds, then `extra`.
pub fn merged(rootfs: &Path, extra: &str) -> Vec<u8> {
    let image = read_in_root(rootfs, IMAGE_BUNDLE.trim_start_matches('/'));
    let known: Vec<String> = certificates(extra.as_bytes()).into_iter().map(|(_, norm)| norm).collect();
    let mut out = Vec::with_capacity(image.len() + extra.len() + 1);
    let mut at = 0;
    for (range, norm) in certificates(&image) {
        if known.contains(&norm) {
            out.extend_from_slice(&image[at..range.start]);
            at = range.end;
        }
    }
    out.extend_from_slice(&image[at..]);
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(extra.as_bytes());
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out
}

/// The PEM certificates of `text`: the byte range of each (from its BEGIN line to the end of
/// its END line) and its text with every line trimmed, `\n`-terminated (for comparison).
fn certificates(text: &[u8]) -> Vec<(std::ops::Range<usize>, String)> {
    let mut out = Vec::new();
    let (mut start, mut lines, mut pos) = (None, String::new(), 0);
    for line in text.split_inclusive(|b| *b == b'\n') {
        let trimmed = String::from_utf8_lossy(line).trim().to_string();
        if trimmed == PEM_BEGIN {
            (start, lines) = (Some(pos), String::new());
        }
        pos += line.len();
        if let Some(s) = start {
            lines.push_str(&trimmed);
            lines.push('\n');
            if trimmed == PEM_END {
                out.push((s..pos, std::mem::take(&mut lines)));
                start = None;
            }
        }
    }
    out
}

/// Owner of what [`install`] creates (host ids as the files are seen where they are written).
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Writes `bundle` (see [`merged`]) at [`IMAGE_BUNDLE`] and each certificate of `extra` as
/// [`LOCAL_DIR`]`/cove-<n>.crt` under `root`, without following any link (see the module
/// documentation); `cove-<n>.crt` files beyond the current certificates are removed. Missing
/// directories are made 0755, files 0644, both owned by `owner`. Each of the two is tried
/// whatever became of the other; the first error is returned (the caller decides whether a
/// sandbox that broke its own trust store still starts).
pub fn install(root: &Path, bundle: &[u8], extra: &str, owner: Owner) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let root_fd = rustix::fs::open(root, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let system = (|| {
        let (dir, name) = IMAGE_BUNDLE.trim_start_matches('/').rsplit_once('/').expect("a path with a directory");
        let fd = open_dirs(&root_fd, dir, owner)?;
        replace_file(&fd, name, bundle, owner)
    })();
    let local = (|| {
        let fd = open_dirs(&root_fd, LOCAL_DIR.trim_start_matches('/'), owner)?;
        let certs = certificates(extra.as_bytes());
        for (n, (range, _)) in certs.iter().enumerate() {
            replace_file(&fd, &format!("cove-{n}.crt"), &extra.as_bytes()[range.clone()], owner)?;
        }
        let stale: Vec<String> = rustix::fs::Dir::read_from(&fd)?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().ok().map(str::to_string))
            .filter(|name| {
                name.strip_prefix("cove-")
                    .and_then(|n| n.strip_suffix(".crt"))
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| n >= certs.len())
            })
            .collect();
        for name in stale {
            // Unlinks the entry itself (a link is not followed; a directory is left).
            let _ = rustix::fs::unlinkat(&fd, name.as_str(), rustix::fs::AtFlags::empty());
        }
        Ok(())
    })();
    system.and(local)
}

/// Opens `rel` (`a/b/c`) below `root` one component at a time, each a real directory (a link
/// is `ELOOP`, never followed), making missing ones.
fn open_dirs(root: &rustix::fd::OwnedFd, rel: &str, owner: Owner) -> std::io::Result<rustix::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let mut cur = rustix::fs::openat(root, ".", OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    for name in rel.split('/') {
        let open = |dir: &rustix::fd::OwnedFd| {
            rustix::fs::openat2(
                dir,
                name,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                confined(),
            )
        };
        cur = match open(&cur) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                match rustix::fs::mkdirat(&cur, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                let fd = open(&cur)?;
                rustix::fs::fchown(&fd, Some(uid(owner.uid)), Some(gid(owner.gid)))?;
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))?;
                fd
            }
            Err(e) => return Err(e.into()),
        };
    }
    Ok(cur)
}

/// Replaces `dir/name` with `data` (0644, `owner`): a fresh `O_EXCL` file renamed over it.
fn replace_file(dir: &rustix::fd::OwnedFd, name: &str, data: &[u8], owner: Owner) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let tmp = format!(".{name}.cove-{}", uuid::Uuid::new_v4().simple());
    let fd = rustix::fs::openat2(
        dir,
        tmp.as_str(),
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
        confined(),
    )?;
    let written = (|| {
        rustix::fs::fchown(&fd, Some(uid(owner.uid)), Some(gid(owner.gid)))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o644))?;
        std::io::Write::write_all(&mut std::fs::File::from(fd), data)?;
        rustix::fs::renameat(dir, tmp.as_str(), dir, name).map_err(std::io::Error::from)
    })();
    if written.is_err() {
        let _ = rustix::fs::unlinkat(dir, tmp.as_str(), rustix::fs::AtFlags::empty());
    }
    written
}

fn confined() -> rustix::fs::ResolveFlags {
    use rustix::fs::ResolveFlags;
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV
}

fn uid(n: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(n)
}

fn gid(n: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(n)
}

fn read_in_root(root: &Path, rel: &str) -> Vec<u8> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let Ok(dir) = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) else {
        return Vec::new();
    };
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let Ok(fd) = rustix::fs::openat2(&dir, rel, flags, Mode::empty(), ResolveFlags::IN_ROOT) else {
        return Vec::new();
    };
    // A FIFO or device planted there must not block or feed the read.
    if rustix::fs::fstat(&fd).map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode)).ok()
        != Some(rustix::fs::FileType::RegularFile)
    {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = std::fs::File::from(fd).take(MAX_BYTES).read_to_end(&mut buf);
    buf
}

/// The image's own trust store ([`install`]): a sandbox's writable layer, a build step's
/// layer of its own.
impl crate::runtime::Runtime {
    /// The extra certificates (`None` without `--sandbox-ca-bundle`).
    fn extra_certificates(&self) -> Result<Option<String>, crate::runtime::RuntimeError> {
        let Some(path) = &self.config().ca_bundle else { return Ok(None) };
        load_extra(path).map(Some).map_err(|e| crate::runtime::RuntimeError::InvalidConfig {
            field: "ca_bundle",
            why: cove_types::error::chain(&e),
        })
    }

    /// Installs the extra certificates in sandbox `id`'s image trust store, through its
    /// mounted `rootfs` (so into its writable layer), owned by the sandbox's root. A sandbox
    /// that broke its own trust store (a link or a directory where a file goes) still
    /// starts, with a warning: it has the merged bundle at [`SANDBOX_PATH`] all the same.
    pub(crate) fn install_ca_certificates(
        &self,
        id: &str,
        rootfs: &Path,
        owner: Owner,
    ) -> Result<(), crate::runtime::RuntimeError> {
        let Some(extra) = self.extra_certificates()? else { return Ok(()) };
        if let Err(e) = install(rootfs, &merged(rootfs, &extra), &extra, owner) {
            tracing::warn!(sandbox_id = id, error = %e, "cannot add the sandbox CA bundle to the image's trust store");
        }
        Ok(())
    }

    /// For a build step: a fresh lower layer at `layer` holding the image's trust store with
    /// the extra certificates ([`install`], image ids), to be mounted on top of the step's
    /// lowers, so that they are not in the step's own layer unless the step rewrites them.
    /// `view` is the step's rootfs as mounted without it: the image's bundle is read there,
    /// and the layer's directories take the mode, owner and times of the ones they cover
    /// (`shift`: the idmap start to take off owners) so that a copy-up by the step records
    /// the image's. A path whose directory is not a real directory in the image (a link,
    /// as `/etc/ssl/certs` on Fedora) is left out: the layer must not hide it. `Ok(false)`:
    /// nothing to add.
    pub(crate) fn ca_certificates_layer(
        &self,
        view: &Path,
        layer: &Path,
        shift: u32,
    ) -> Result<bool, crate::runtime::RuntimeError> {
        let Some(extra) = self.extra_certificates()? else { return Ok(false) };
        let io = |source| crate::runtime::RuntimeError::Dir { path: layer.to_path_buf(), source };
        let bundle = merged(view, &extra);
        let dirs = [IMAGE_BUNDLE.rsplit_once('/').expect("a directory").0, LOCAL_DIR];
        let metas: Vec<Option<Vec<Option<rustix::fs::Stat>>>> =
            dirs.iter().map(|d| dir_stats(view, d.trim_start_matches('/'))).collect();
        std::fs::create_dir_all(layer).map_err(io)?;
        let root = Owner { uid: 0, gid: 0 };
        if let Some(Some(_)) = metas.first() {
            let fd = rustix::fs::open(
                layer,
                rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| io(e.into()))?;
            let (dir, name) = IMAGE_BUNDLE.trim_start_matches('/').rsplit_once('/').expect("a directory");
            open_dirs(&fd, dir, root).and_then(|d| replace_file(&d, name, &bundle, root)).map_err(io)?;
        }
        if let Some(Some(_)) = metas.get(1) {
            let fd = rustix::fs::open(
                layer,
                rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| io(e.into()))?;
            let d = open_dirs(&fd, LOCAL_DIR.trim_start_matches('/'), root).map_err(io)?;
            for (n, (range, _)) in certificates(extra.as_bytes()).iter().enumerate() {
                replace_file(&d, &format!("cove-{n}.crt"), &extra.as_bytes()[range.clone()], root).map_err(io)?;
            }
        }
        for (dir, stats) in dirs.iter().zip(&metas) {
            let Some(stats) = stats else { continue };
            let mut path = layer.to_path_buf();
            for (name, st) in dir.trim_start_matches('/').split('/').zip(stats) {
                path.push(name);
                let Some(st) = st else { break };
                copy_dir_meta(&path, st, shift).map_err(io)?;
            }
        }
        Ok(true)
    }
}

/// The stats of each directory of `rel` (`a/b/c`) under `root` as far as they exist (`None`
/// from the first missing one on), or `None` when one of them is not a real directory.
fn dir_stats(root: &Path, rel: &str) -> Option<Vec<Option<rustix::fs::Stat>>> {
    use rustix::fs::{AtFlags, FileType};
    let mut out = Vec::new();
    let mut path = root.to_path_buf();
    let mut missing = false;
    for name in rel.split('/') {
        path.push(name);
        if missing {
            out.push(None);
            continue;
        }
        match rustix::fs::statat(rustix::fs::CWD, &path, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => out.push(Some(st)),
            Ok(_) => return None,
            Err(_) => {
                missing = true;
                out.push(None);
            }
        }
    }
    Some(out)
}

/// Gives the directory `path` (made by the server in a layer of its own) the mode, owner
/// (less `shift`) and times of `st`.
fn copy_dir_meta(path: &Path, st: &rustix::fs::Stat, shift: u32) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, Mode, Timespec, Timestamps};
    let unshift = |id: u32| id.checked_sub(shift).unwrap_or(id);
    rustix::fs::chownat(
        rustix::fs::CWD,
        path,
        Some(uid(unshift(st.st_uid))),
        Some(gid(unshift(st.st_gid))),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    rustix::fs::chmod(path, Mode::from_raw_mode(st.st_mode & 0o7777))?;
    let times = Timestamps {
        last_access: Timespec { tv_sec: st.st_atime as _, tv_nsec: st.st_atime_nsec as _ },
        last_modification: Timespec { tv_sec: st.st_mtime as _, tv_nsec: st.st_mtime_nsec as _ },
    };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn the_merged_bundle_is_the_images_followed_by_the_extra_certificates() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/ssl/certs")).unwrap();
        std::fs::write(root.path().join("etc/ssl/certs/ca-certificates.crt"), "IMAGE").unwrap();
        assert_eq!(merged(root.path(), CERT), format!("IMAGE\n{CERT}").into_bytes());
    }

    #[test]
    fn an_image_without_a_bundle_gets_the_extra_certificates_alone() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(merged(root.path(), CERT), CERT.as_bytes());
    }

    #[test]
    fn a_bundle_link_pointing_at_a_host_file_is_resolved_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let host = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(host.path(), "HOST SECRET").unwrap();
        std::fs::create_dir_all(root.path().join("etc/ssl/certs")).unwrap();
        std::os::unix::fs::symlink(host.path(), root.path().join("etc/ssl/certs/ca-certificates.crt")).unwrap();
        let out = String::from_utf8(merged(root.path(), CERT)).unwrap();
        assert!(!out.contains("HOST SECRET"), "{out}");
    }

    const CERT2: &str = "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_restart_does_not_repeat_the_extra_certificates_already_in_the_images_bundle() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/ssl/certs")).unwrap();
        let extra = format!("{CERT}{CERT2}");
        std::fs::write(root.path().join("etc/ssl/certs/ca-certificates.crt"), "IMAGE").unwrap();
        let first = merged(root.path(), &extra);
        // What a start installed, or update-ca-certificates rebuilt with trailing blanks.
        let rebuilt = String::from_utf8(first.clone()).unwrap().replace("MIIC", "MIIC  ");
        std::fs::write(root.path().join("etc/ssl/certs/ca-certificates.crt"), rebuilt).unwrap();
        assert_eq!(merged(root.path(), &extra), first);
        assert_eq!(String::from_utf8(first).unwrap(), format!("IMAGE\n{CERT}{CERT2}"));
    }

    fn owner() -> Owner {
        Owner { uid: rustix::process::geteuid().as_raw(), gid: rustix::process::getegid().as_raw() }
    }

    #[test]
    fn install_writes_the_system_bundle_and_one_local_file_per_certificate_as_regular_files() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("usr/local/share/ca-certificates")).unwrap();
        std::fs::write(root.path().join("usr/local/share/ca-certificates/cove-7.crt"), "stale").unwrap();
        std::fs::write(root.path().join("usr/local/share/ca-certificates/mine.crt"), "mine").unwrap();
        install(root.path(), b"BUNDLE\n", &format!("{CERT}{CERT2}"), owner()).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(read("etc/ssl/certs/ca-certificates.crt"), "BUNDLE\n");
        assert_eq!(read("usr/local/share/ca-certificates/cove-0.crt"), CERT);
        assert_eq!(read("usr/local/share/ca-certificates/cove-1.crt"), CERT2);
        assert_eq!(read("usr/local/share/ca-certificates/mine.crt"), "mine");
        assert!(!root.path().join("usr/local/share/ca-certificates/cove-7.crt").exists(), "stale one removed");
        let meta = std::fs::symlink_metadata(root.path().join("etc/ssl/certs/ca-certificates.crt")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert!(meta.file_type().is_file() && meta.permissions().mode() & 0o777 == 0o644);
        let leftovers: Vec<_> = std::fs::read_dir(root.path().join("etc/ssl/certs")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left");
    }

    #[test]
    fn links_planted_at_the_bundle_or_a_parent_directory_are_replaced_or_refused_never_followed() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "HOST FILE").unwrap();
        // The bundle itself a link to a host file: replaced by a regular file.
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/ssl/certs")).unwrap();
        std::os::unix::fs::symlink(&victim, root.path().join("etc/ssl/certs/ca-certificates.crt")).unwrap();
        std::fs::create_dir_all(root.path().join("usr/local/share")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("usr/local/share/ca-certificates")).unwrap();
        let r = install(root.path(), b"BUNDLE\n", CERT, owner());
        assert!(r.is_err(), "the linked local directory is refused");
        let bundle = root.path().join("etc/ssl/certs/ca-certificates.crt");
        assert!(std::fs::symlink_metadata(&bundle).unwrap().file_type().is_file());
        assert_eq!(std::fs::read_to_string(&bundle).unwrap(), "BUNDLE\n");
        // A parent directory a link out of the root.
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("etc/ssl")).unwrap();
        assert!(install(root.path(), b"BUNDLE\n", CERT, owner()).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "HOST FILE");
        let names: Vec<_> = std::fs::read_dir(outside.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from("victim")], "nothing written outside the root");
    }

    #[test]
    fn a_file_without_certificates_is_refused_with_its_name() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "not a certificate").unwrap();
        let e = load_extra(f.path()).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate") && e.contains(&f.path().display().to_string()), "{e}");
        std::fs::write(f.path(), CERT).unwrap();
        assert_eq!(load_extra(f.path()).unwrap(), CERT);
    }
}
