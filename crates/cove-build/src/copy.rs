//! COPY and ADD into a fresh layer directory (an overlay "upper" directory).
//!
//! Docker's rules: a destination ending in `/` (or an existing directory) receives sources by
//! name; several sources need such a destination; a directory source copies its contents;
//! new files and directories belong to 0:0 unless `--chown` says otherwise (names resolved in
//! the image's own `/etc/passwd` and `/etc/group`); `--chmod` (octal) replaces modes; files
//! keep their modification times. ADD extracts local tar archives (plain or gzip).
//!
//! Parent directories that already exist below are recreated in the upper directory with
//! their lower metadata, as overlayfs copy-up would, so a COPY into `/tmp` does not turn
//! `/tmp` into a 0755 directory.
//!
//! Trees are copied with an explicit stack, never one call per directory level, and a path
//! that would land in the layer deeper or longer than [`crate::limits`] allows fails the
//! COPY with [`CopyError::Path`].

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::context::{DockerIgnore, Source, set_mtime};
use crate::limits::{PathProblem, ShortPath, check_path};
use crate::lower::LowerStack;

/// A failed COPY/ADD.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Several sources and a destination that is not a directory.
    #[error(
        "when using COPY with more than one source file, the destination must be a directory and end with a /: {dest}"
    )]
    DestinationNotDirectory {
        /// The destination.
        dest: String,
    },
    /// `--chown` names a user the image does not have.
    #[error("unable to find user {name} in /etc/passwd of the image")]
    UnknownUser {
        /// The name.
        name: String,
    },
    /// `--chown` names a group the image does not have.
    #[error("unable to find group {name} in /etc/group of the image")]
    UnknownGroup {
        /// The name.
        name: String,
    },
    /// ADD of an archive format that is not extracted here.
    #[error(
        "ADD of the {format} archive {path} is not supported: use a plain or gzip tar, or COPY it and extract it with RUN"
    )]
    UnsupportedArchive {
        /// The source.
        path: PathBuf,
        /// The format.
        format: &'static str,
    },
    /// Destination path resolution looped.
    #[error("too many symbolic links while resolving the destination {dest}")]
    DestinationLoop {
        /// The destination.
        dest: String,
    },
    /// Reading a source failed.
    #[error("read copy source {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Writing into the layer failed.
    #[error("write {path} into the layer")]
    Write {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A path the COPY would create in the layer is too long or nested too deep.
    #[error("copying would create {} in the image, which {problem}", ShortPath(path))]
    Path {
        /// The path in the image.
        path: String,
        /// What is wrong with it.
        #[source]
        problem: PathProblem,
    },
    /// Extracting an ADD archive failed.
    #[error("extract archive {path}")]
    Extract {
        /// The archive.
        path: PathBuf,
        /// Cause.
        #[source]
        source: cove_image::unpack::UnpackError,
    },
}

impl CopyError {
    /// Bad destinations, users and archives are the Dockerfile's fault; IO is ours.
    pub fn kind(&self) -> cove_types::ErrorKind {
        match self {
            CopyError::Read { .. } | CopyError::Write { .. } => cove_types::ErrorKind::Internal,
            _ => cove_types::ErrorKind::InvalidArgument,
        }
    }
}

/// One thing to copy.
#[derive(Debug, Clone)]
pub enum CopyItem {
    /// A file or directory on this machine.
    Source(Source),
    /// A heredoc file.
    File {
        /// Its name in a directory destination.
        name: String,
        /// Its contents.
        content: String,
    },
}

/// A COPY/ADD to apply.
#[derive(Debug, Clone)]
pub struct CopyRequest<'a> {
    /// What to copy.
    pub items: Vec<CopyItem>,
    /// Absolute destination in the image; a trailing `/` means a directory.
    pub dest: &'a str,
    /// Owner of everything created (default 0:0).
    pub owner: (u32, u32),
    /// `--chmod`.
    pub chmod: Option<u32>,
    /// ADD semantics.
    pub add: bool,
    /// Files to leave out when copying context directories.
    pub ignore: Option<&'a DockerIgnore>,
}

/// Resolves a `--chown` value (`user`, `user:group`, names or ids) against the image's
/// `/etc/passwd` and `/etc/group`. A user without a group uses the uid as gid, as Docker
/// documents.
pub fn resolve_chown(spec: &str, image: &LowerStack) -> Result<(u32, u32), CopyError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let uid = match user.parse::<u32>() {
        Ok(n) => n,
        Err(_) => {
            lookup(image, "/etc/passwd", user).ok_or_else(|| CopyError::UnknownUser { name: user.to_string() })?
        }
    };
    let gid = match group {
        None => uid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup(image, "/etc/group", g).ok_or_else(|| CopyError::UnknownGroup { name: g.to_string() })?,
        },
    };
    Ok((uid, gid))
}

fn lookup(image: &LowerStack, file: &str, name: &str) -> Option<u32> {
    let text = String::from_utf8(image.read(file)?).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.nth(1)?.parse().ok()).flatten()
    })
}

/// Applies `req` into `upper`, consulting `lower` (the image so far) for existing
/// directories and symlinks on the destination path.
pub fn apply_copy(req: &CopyRequest<'_>, upper: &Path, lower: &LowerStack) -> Result<(), CopyError> {
    let dest_is_dir_syntax = req.dest.ends_with('/');
    if req.items.len() > 1 && !dest_is_dir_syntax {
        return Err(CopyError::DestinationNotDirectory { dest: req.dest.to_string() });
    }
    let comps = lower.resolve(req.dest).ok_or_else(|| CopyError::DestinationLoop { dest: req.dest.to_string() })?;
    let existing_dir = lower.find(&comps).is_some_and(|f| f.meta.is_dir())
        || std::fs::metadata(upper.join(comps.iter().collect::<PathBuf>())).is_ok_and(|m| m.is_dir());
    let single_dir_source = matches!(req.items.as_slice(), [CopyItem::Source(s)] if s.is_dir);
    let into_dir = dest_is_dir_syntax || existing_dir || single_dir_source;
    let w = Writer { upper, lower, owner: req.owner, chmod: req.chmod };
    let dest_rel = comps.join("/");
    if let Err(problem) = check_path(&dest_rel) {
        return Err(CopyError::Path { path: format!("/{dest_rel}"), problem });
    }

    for item in &req.items {
        match item {
            CopyItem::File { name, content } => {
                let target = if into_dir { join(&comps, name) } else { comps.clone() };
                let host = w.prepare_parent(&target)?;
                w.write_file(&host, &mut content.as_bytes(), 0o644, None)?;
            }
            CopyItem::Source(s) if s.is_dir => {
                let host = w.ensure_dir(&comps)?;
                w.copy_tree(&s.host, &s.rel, &host, req.ignore, None)?;
            }
            CopyItem::Source(s) => {
                if req.add
                    && let Some(format) = archive_format(&s.host)?
                {
                    let host = w.ensure_dir(&comps)?;
                    w.extract(&s.host, format, &host)?;
                    continue;
                }
                let target = if into_dir { join(&comps, &s.name) } else { comps.clone() };
                let host = w.prepare_parent(&target)?;
                w.copy_node(&s.host, &host)?;
            }
        }
    }
    Ok(())
}

/// Creates the directory `path` (absolute, in the image) and any missing parents in `upper`,
/// as WORKDIR does: new directories are 0755 and owned by root, existing ones keep their
/// metadata.
pub fn make_dir(path: &str, upper: &Path, lower: &LowerStack) -> Result<(), CopyError> {
    let comps = lower.resolve(path).ok_or_else(|| CopyError::DestinationLoop { dest: path.to_string() })?;
    if let Err(problem) = check_path(&comps.join("/")) {
        return Err(CopyError::Path { path: path.to_string(), problem });
    }
    let w = Writer { upper, lower, owner: (0, 0), chmod: None };
    w.ensure_dir(&comps).map(|_| ())
}

fn join(comps: &[String], name: &str) -> Vec<String> {
    let mut v = comps.to_vec();
    v.push(name.to_string());
    v
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Archive {
    Tar,
    Gzip,
}

fn archive_format(p: &Path) -> Result<Option<Archive>, CopyError> {
    let mut f = std::fs::File::open(p).map_err(|source| CopyError::Read { path: p.to_path_buf(), source })?;
    let mut head = [0u8; 512];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(source) => return Err(CopyError::Read { path: p.to_path_buf(), source }),
        }
    }
    let h = &head[..n];
    if h.starts_with(&[0x1f, 0x8b]) {
        return Ok(Some(Archive::Gzip));
    }
    if h.starts_with(b"BZh") {
        return Err(CopyError::UnsupportedArchive { path: p.to_path_buf(), format: "bzip2" });
    }
    if h.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(CopyError::UnsupportedArchive { path: p.to_path_buf(), format: "xz" });
    }
    if h.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(CopyError::UnsupportedArchive { path: p.to_path_buf(), format: "zstd" });
    }
    if n >= 262 && &h[257..262] == b"ustar" {
        return Ok(Some(Archive::Tar));
    }
    Ok(None)
}

struct Writer<'a> {
    upper: &'a Path,
    lower: &'a LowerStack,
    owner: (u32, u32),
    chmod: Option<u32>,
}

impl Writer<'_> {
    fn fail(path: &Path) -> impl FnOnce(io::Error) -> CopyError + '_ {
        move |source| CopyError::Write { path: path.to_path_buf(), source }
    }

    /// Makes sure every directory of `comps` exists in the upper dir: lower directories are
    /// recreated with their metadata, new ones get the COPY's owner and 0755.
    fn ensure_dir(&self, comps: &[String]) -> Result<PathBuf, CopyError> {
        let mut host = self.upper.to_path_buf();
        for i in 0..comps.len() {
            host.push(&comps[i]);
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => std::fs::remove_file(&host).map_err(Self::fail(&host))?,
                Err(_) => {}
            }
            std::fs::create_dir(&host).map_err(Self::fail(&host))?;
            match self.lower.find(&comps[..=i]).filter(|f| f.meta.is_dir()) {
                Some(f) => {
                    std::os::unix::fs::lchown(&host, Some(f.meta.uid()), Some(f.meta.gid()))
                        .map_err(Self::fail(&host))?;
                    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(f.meta.mode() & 0o7777))
                        .map_err(Self::fail(&host))?;
                    set_mtime(&host, f.meta.mtime().max(0) as u64);
                }
                None => {
                    std::os::unix::fs::lchown(&host, Some(self.owner.0), Some(self.owner.1))
                        .map_err(Self::fail(&host))?;
                    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(self.chmod.unwrap_or(0o755)))
                        .map_err(Self::fail(&host))?;
                }
            }
        }
        Ok(host)
    }

    fn prepare_parent(&self, target: &[String]) -> Result<PathBuf, CopyError> {
        let (name, parent) = target.split_last().map(|(n, p)| (n.clone(), p)).unwrap_or_default();
        Ok(self.ensure_dir(parent)?.join(name))
    }

    fn finish(&self, host: &Path, mode: u32, mtime: Option<u64>) -> Result<(), CopyError> {
        // chown before chmod: chown clears set-id bits.
        std::os::unix::fs::lchown(host, Some(self.owner.0), Some(self.owner.1)).map_err(Self::fail(host))?;
        std::fs::set_permissions(host, std::fs::Permissions::from_mode(self.chmod.unwrap_or(mode)))
            .map_err(Self::fail(host))?;
        if let Some(t) = mtime {
            set_mtime(host, t);
        }
        Ok(())
    }

    fn write_file(&self, host: &Path, data: &mut dyn Read, mode: u32, mtime: Option<u64>) -> Result<(), CopyError> {
        remove_any(host).map_err(Self::fail(host))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(host)
            .map_err(Self::fail(host))?;
        io::copy(data, &mut f).map_err(Self::fail(host))?;
        drop(f);
        self.finish(host, mode, mtime)
    }

    /// The path of `host` in the image (relative to the upper directory), checked.
    fn check_image_path(&self, host: &Path) -> Result<(), CopyError> {
        let rel = host.strip_prefix(self.upper).unwrap_or(host).to_string_lossy();
        match check_path(&rel) {
            Ok(()) => Ok(()),
            Err(problem) => Err(CopyError::Path { path: format!("/{rel}"), problem }),
        }
    }

    /// Copies one file, symlink or directory tree from `src` to `host`.
    fn copy_node(&self, src: &Path, host: &Path) -> Result<(), CopyError> {
        let read = |source| CopyError::Read { path: src.to_path_buf(), source };
        let meta = std::fs::symlink_metadata(src).map_err(read)?;
        if meta.is_dir() {
            self.make_copied_dir(host)?;
            let mtime = Some(meta.mtime().max(0) as u64);
            return self.copy_tree(src, "", host, None, Some((meta.mode() & 0o7777, mtime)));
        }
        self.copy_leaf(src, &meta, host)
    }

    /// Copies a file or symlink; devices, sockets and fifos in a context or stage are
    /// skipped, as Docker's COPY of a context does.
    fn copy_leaf(&self, src: &Path, meta: &std::fs::Metadata, host: &Path) -> Result<(), CopyError> {
        let read = |source| CopyError::Read { path: src.to_path_buf(), source };
        let ft = meta.file_type();
        let mtime = Some(meta.mtime().max(0) as u64);
        if ft.is_symlink() {
            let target = std::fs::read_link(src).map_err(read)?;
            remove_any(host).map_err(Self::fail(host))?;
            std::os::unix::fs::symlink(&target, host).map_err(Self::fail(host))?;
            std::os::unix::fs::lchown(host, Some(self.owner.0), Some(self.owner.1)).map_err(Self::fail(host))?;
            set_mtime(host, meta.mtime().max(0) as u64);
        } else if ft.is_file() {
            let mut f = std::fs::File::open(src).map_err(read)?;
            self.write_file(host, &mut f, meta.mode() & 0o7777, mtime)?;
        }
        Ok(())
    }

    /// Makes `host` a directory (keeping one that is there).
    fn make_copied_dir(&self, host: &Path) -> Result<(), CopyError> {
        match std::fs::symlink_metadata(host) {
            Ok(m) if m.is_dir() => Ok(()),
            _ => {
                remove_any(host).map_err(Self::fail(host))?;
                std::fs::create_dir(host).map_err(Self::fail(host))
            }
        }
    }

    /// Copies the contents of the directory `src` into `host`, depth first with an explicit
    /// stack; each copied directory gets its mode and mtime after its contents. `ignore`
    /// (with `rel`, the source's path in the context) filters what is copied; `finish` is
    /// the mode and mtime `host` itself gets at the end.
    fn copy_tree(
        &self,
        src: &Path,
        rel: &str,
        host: &Path,
        ignore: Option<&DockerIgnore>,
        finish: Option<(u32, Option<u64>)>,
    ) -> Result<(), CopyError> {
        let mut stack = vec![CopyDir::open(src, rel, host, finish)?];
        while let Some(top) = stack.last_mut() {
            let Some(n) = top.names.next() else {
                let done = stack.pop().expect("the loop saw a top");
                if let Some((mode, mtime)) = done.finish {
                    self.finish(&done.host, mode, mtime)?;
                }
                continue;
            };
            let child_rel = if top.rel.is_empty() {
                n.to_string_lossy().into_owned()
            } else {
                format!("{}/{}", top.rel, n.to_string_lossy())
            };
            let child_src = top.src.join(&n);
            let child_host = top.host.join(&n);
            let read = |source| CopyError::Read { path: child_src.clone(), source };
            let meta = std::fs::symlink_metadata(&child_src).map_err(read)?;
            if let Some(ig) = ignore
                && ig.is_excluded(&child_rel)
                && !(meta.is_dir() && ig.has_exceptions())
            {
                continue;
            }
            self.check_image_path(&child_host)?;
            if meta.is_dir() {
                self.make_copied_dir(&child_host)?;
                let finish = Some((meta.mode() & 0o7777, Some(meta.mtime().max(0) as u64)));
                stack.push(CopyDir::open(&child_src, &child_rel, &child_host, finish)?);
            } else {
                self.copy_leaf(&child_src, &meta, &child_host)?;
            }
        }
        Ok(())
    }

    fn extract(&self, archive: &Path, format: Archive, into: &Path) -> Result<(), CopyError> {
        let f =
            std::fs::File::open(archive).map_err(|source| CopyError::Read { path: archive.to_path_buf(), source })?;
        let reader: Box<dyn Read + Send> = match format {
            Archive::Tar => Box::new(io::BufReader::new(f)),
            Archive::Gzip => Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(f))),
        };
        // The same path-safe applier as image layers: nothing lands outside `into`.
        cove_image::unpack::apply_layer(into, reader, None)
            .map_err(|source| CopyError::Extract { path: archive.to_path_buf(), source })?;
        if self.owner != (0, 0) || self.chmod.is_some() {
            self.chown_tree(into)?;
        }
        Ok(())
    }

    /// Applies the COPY's owner and mode to everything under `dir` (not `dir` itself), each
    /// directory after its contents, with an explicit stack.
    fn chown_tree(&self, dir: &Path) -> Result<(), CopyError> {
        let list = |d: &Path| -> Result<std::vec::IntoIter<PathBuf>, CopyError> {
            let rd = std::fs::read_dir(d).map_err(|source| CopyError::Read { path: d.to_path_buf(), source })?;
            Ok(rd.flatten().map(|e| e.path()).collect::<Vec<_>>().into_iter())
        };
        // (directory, entries left, the mode to finish it with once they are done)
        let mut stack: Vec<(PathBuf, std::vec::IntoIter<PathBuf>, Option<u32>)> =
            vec![(dir.to_path_buf(), list(dir)?, None)];
        while let Some((_, entries, _)) = stack.last_mut() {
            let Some(p) = entries.next() else {
                let (d, _, mode) = stack.pop().expect("the loop saw a top");
                if let Some(mode) = mode {
                    self.finish(&d, mode, None)?;
                }
                continue;
            };
            let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
            if m.is_dir() {
                let entries = list(&p)?;
                stack.push((p, entries, Some(m.mode() & 0o7777)));
            } else if m.file_type().is_symlink() {
                std::os::unix::fs::lchown(&p, Some(self.owner.0), Some(self.owner.1)).map_err(Self::fail(&p))?;
            } else {
                self.finish(&p, m.mode() & 0o7777, None)?;
            }
        }
        Ok(())
    }
}

/// A directory being copied: its source, its path in the context (for ignore rules), where
/// it goes, the names left, and the mode and mtime it gets once they are copied.
struct CopyDir {
    src: PathBuf,
    rel: String,
    host: PathBuf,
    names: std::vec::IntoIter<OsString>,
    finish: Option<(u32, Option<u64>)>,
}

impl CopyDir {
    fn open(src: &Path, rel: &str, host: &Path, finish: Option<(u32, Option<u64>)>) -> Result<Self, CopyError> {
        let read = |source| CopyError::Read { path: src.to_path_buf(), source };
        let mut names: Vec<_> = std::fs::read_dir(src).map_err(read)?.flatten().map(|e| e.file_name()).collect();
        names.sort();
        Ok(CopyDir {
            src: src.to_path_buf(),
            rel: rel.to_string(),
            host: host.to_path_buf(),
            names: names.into_iter(),
            finish,
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::resolve_sources;

    struct Fixture {
        _t: tempfile::TempDir,
        ctx: PathBuf,
        upper: PathBuf,
        lower: LowerStack,
    }

    fn fixture() -> Fixture {
        let t = tempfile::tempdir().unwrap();
        let ctx = t.path().join("ctx");
        let upper = t.path().join("upper");
        let base = t.path().join("base");
        for d in [&ctx, &upper, &base] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::create_dir_all(base.join("etc")).unwrap();
        std::fs::write(base.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n")
            .unwrap();
        std::fs::write(base.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        std::fs::create_dir(base.join("tmp")).unwrap();
        std::fs::set_permissions(base.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::write(ctx.join("a.txt"), "A").unwrap();
        std::fs::set_permissions(ctx.join("a.txt"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(ctx.join("dir/sub")).unwrap();
        std::fs::write(ctx.join("dir/sub/b.txt"), "B").unwrap();
        std::fs::write(ctx.join("dir/skip.log"), "L").unwrap();
        Fixture { ctx, upper, lower: LowerStack::new(vec![base]), _t: t }
    }

    fn src(f: &Fixture, p: &str) -> CopyItem {
        CopyItem::Source(resolve_sources(&f.ctx, p, None, "COPY").unwrap().remove(0))
    }

    fn req<'a>(items: Vec<CopyItem>, dest: &'a str) -> CopyRequest<'a> {
        CopyRequest { items, dest, owner: (0, 0), chmod: None, add: false, ignore: None }
    }

    #[test]
    fn a_file_to_a_file_path_keeps_its_mode_and_lower_parents_keep_theirs() {
        let f = fixture();
        apply_copy(&req(vec![src(&f, "a.txt")], "/tmp/renamed"), &f.upper, &f.lower).unwrap();
        let m = std::fs::metadata(f.upper.join("tmp/renamed")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o755);
        assert_eq!(std::fs::metadata(f.upper.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
    }

    #[test]
    fn a_trailing_slash_or_existing_directory_receives_files_by_name() {
        let f = fixture();
        apply_copy(&req(vec![src(&f, "a.txt")], "/app/"), &f.upper, &f.lower).unwrap();
        assert_eq!(std::fs::read_to_string(f.upper.join("app/a.txt")).unwrap(), "A");
        apply_copy(&req(vec![src(&f, "a.txt")], "/etc"), &f.upper, &f.lower).unwrap();
        assert!(f.upper.join("etc/a.txt").is_file());
    }

    #[test]
    fn a_directory_source_copies_its_contents_minus_ignored_files() {
        let f = fixture();
        let ig = DockerIgnore::parse("dir/*.log\n");
        let mut r = req(vec![src(&f, "dir")], "/srv");
        r.ignore = Some(&ig);
        apply_copy(&r, &f.upper, &f.lower).unwrap();
        assert_eq!(std::fs::read_to_string(f.upper.join("srv/sub/b.txt")).unwrap(), "B");
        assert!(!f.upper.join("srv/dir").exists());
        assert!(!f.upper.join("srv/skip.log").exists());
    }

    #[test]
    fn several_sources_need_a_directory_destination() {
        let f = fixture();
        let e = apply_copy(&req(vec![src(&f, "a.txt"), src(&f, "dir")], "/x"), &f.upper, &f.lower).unwrap_err();
        assert!(matches!(e, CopyError::DestinationNotDirectory { .. }), "{e}");
    }

    #[test]
    fn chown_names_resolve_in_the_image_and_chmod_applies() {
        let f = fixture();
        assert_eq!(resolve_chown("app:staff", &f.lower).unwrap(), (1000, 50));
        assert_eq!(resolve_chown("app", &f.lower).unwrap(), (1000, 1000));
        assert_eq!(resolve_chown("7:8", &f.lower).unwrap(), (7, 8));
        assert!(matches!(resolve_chown("ghost", &f.lower), Err(CopyError::UnknownUser { .. })));
        let mut r = req(vec![src(&f, "a.txt")], "/opt/new/");
        r.owner = (1000, 50);
        r.chmod = Some(0o600);
        apply_copy(&r, &f.upper, &f.lower).unwrap();
        let m = std::fs::metadata(f.upper.join("opt/new/a.txt")).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 50, 0o600));
        let d = std::fs::metadata(f.upper.join("opt/new")).unwrap();
        assert_eq!((d.uid(), d.gid()), (1000, 50), "new directories belong to the --chown owner");
    }

    #[test]
    fn heredoc_files_are_created_by_name() {
        let f = fixture();
        let items = vec![CopyItem::File { name: "conf".into(), content: "v=1\n".into() }];
        apply_copy(&req(items, "/etc/app/"), &f.upper, &f.lower).unwrap();
        assert_eq!(std::fs::read_to_string(f.upper.join("etc/app/conf")).unwrap(), "v=1\n");
    }

    #[test]
    fn add_extracts_a_local_gzip_tar_and_copy_does_not() {
        let f = fixture();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_path("inner/x.txt").unwrap();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b"X"[..]).unwrap();
        let raw = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &raw).unwrap();
        std::fs::write(f.ctx.join("pkg.tar.gz"), gz.finish().unwrap()).unwrap();
        let mut r = req(vec![src(&f, "pkg.tar.gz")], "/opt/");
        r.add = true;
        apply_copy(&r, &f.upper, &f.lower).unwrap();
        assert_eq!(std::fs::read_to_string(f.upper.join("opt/inner/x.txt")).unwrap(), "X");
        apply_copy(&req(vec![src(&f, "pkg.tar.gz")], "/copied/"), &f.upper, &f.lower).unwrap();
        assert!(f.upper.join("copied/pkg.tar.gz").is_file());
    }

    fn deep_source(f: &Fixture, depth: usize) -> CopyItem {
        let root = f.ctx.join("deep");
        std::fs::create_dir(&root).unwrap();
        crate::limits::nest_dirs(&root, "d", depth);
        src(f, "deep")
    }

    #[test]
    fn copying_a_tree_that_would_nest_past_the_depth_limit_fails_naming_the_path() {
        let f = fixture();
        let item = deep_source(&f, 3000);
        let (upper, lower) = (f.upper.clone(), f.lower.clone());
        let e = crate::limits::on_small_stack(move || apply_copy(&req(vec![item], "/x/"), &upper, &lower)).unwrap_err();
        assert!(matches!(&e, CopyError::Path { problem: PathProblem::TooDeep { depth: 513 }, .. }), "{e}");
        assert_eq!(e.kind(), cove_types::ErrorKind::InvalidArgument);
        let msg = cove_types::error::chain(&e);
        assert!(msg.starts_with("copying would create /x/d/d/d/") && msg.contains("bytes)"), "{msg}");
        assert!(msg.ends_with("nests 513 directories deep, over the limit of 512"), "{msg}");
    }

    #[test]
    fn a_tree_inside_the_limits_is_copied_on_a_small_stack_with_its_modes() {
        let f = fixture();
        let item = deep_source(&f, 500);
        let (upper, lower) = (f.upper.clone(), f.lower.clone());
        crate::limits::on_small_stack(move || apply_copy(&req(vec![item], "/x/"), &upper, &lower)).unwrap();
        let mut p = f.upper.join("x");
        for _ in 0..500 {
            p.push("d");
        }
        assert!(p.is_dir());
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o755);
    }

    #[test]
    fn a_destination_past_the_limits_is_refused_before_anything_is_created() {
        let f = fixture();
        let dest = format!("{}/", "/a".repeat(600));
        let e = apply_copy(&req(vec![src(&f, "a.txt")], &dest), &f.upper, &f.lower).unwrap_err();
        assert!(matches!(e, CopyError::Path { problem: PathProblem::TooDeep { depth: 600 }, .. }), "{e}");
        assert_eq!(std::fs::read_dir(&f.upper).unwrap().count(), 0);
        let e = make_dir(&"/w".repeat(600), &f.upper, &f.lower).unwrap_err();
        assert!(matches!(e, CopyError::Path { .. }), "{e}");
    }

    #[test]
    fn add_with_chown_walks_a_deep_archive_without_recursion() {
        let f = fixture();
        let mut b = tar::Builder::new(Vec::new());
        for n in 1..=400 {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(0o755);
            b.append_data(&mut h, "d/".repeat(n), io::empty()).unwrap();
        }
        std::fs::write(f.ctx.join("deep.tar"), b.into_inner().unwrap()).unwrap();
        let item = src(&f, "deep.tar");
        let (upper, lower) = (f.upper.clone(), f.lower.clone());
        crate::limits::on_small_stack(move || {
            let mut r = req(vec![item], "/opt/");
            r.add = true;
            r.owner = (1000, 1001);
            apply_copy(&r, &upper, &lower)
        })
        .unwrap();
        let deepest = f.upper.join("opt").join("d/".repeat(400));
        assert_eq!(std::fs::metadata(&deepest).unwrap().uid(), 1000);
    }
}
