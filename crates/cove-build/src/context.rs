//! The build context: a directory on disk, `.dockerignore`, COPY source resolution and the
//! content hash of what a COPY reads.
//!
//! The Daytona SDKs upload one `context.tar` per context entry; [`extract_tars`] merges them
//! into one directory, refusing entries that would land outside it.
//!
//! Sources are Go `filepath.Match` globs relative to the context root (`*` never crosses a
//! `/`). A leading `/` means the context root; a `..` that climbs out is refused. Symlinks
//! met while resolving a source are followed but clamped to the root, as a chroot would.
//!
//! Paths are held to [`crate::limits`]: an archive entry nested deeper or named longer than
//! a path may be is refused before anything of it is created, and trees are hashed without
//! recursion.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use cove_image::unpack::resolve_in_root;
use sha2::Digest as _;

use crate::limits::{PathProblem, ShortPath, check_path};

/// A failed context operation.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// A COPY/ADD source climbs out of the context with `..`.
    #[error("{instruction} source {source_path} is outside the build context")]
    OutsideContext {
        /// COPY or ADD.
        instruction: &'static str,
        /// The source as written.
        source_path: String,
    },
    /// A source (or glob) matched nothing.
    #[error("{instruction} source {source_path} not found in the build context")]
    NotFound {
        /// COPY or ADD.
        instruction: &'static str,
        /// The source as written.
        source_path: String,
    },
    /// Reading the context failed.
    #[error("read build context path {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A context tar could not be read.
    #[error("read context archive {tar}")]
    ReadTar {
        /// The archive.
        tar: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A context tar entry would escape the destination.
    #[error("context archive {tar}: entry {entry:?} {why}")]
    UnsafeEntry {
        /// The archive.
        tar: PathBuf,
        /// The entry name.
        entry: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A context tar entry's path is too long or nested too deep.
    #[error("context archive {tar}: entry {} {problem}", ShortPath(entry))]
    EntryPath {
        /// The archive.
        tar: PathBuf,
        /// The entry name.
        entry: String,
        /// What is wrong with it.
        #[source]
        problem: PathProblem,
    },
    /// A path met while reading the context is too long or nested too deep.
    #[error("build context path {} {problem}", ShortPath(path))]
    TreePath {
        /// The path relative to the context.
        path: String,
        /// What is wrong with it.
        #[source]
        problem: PathProblem,
    },
    /// Writing an extracted entry failed.
    #[error("extract context entry to {path}")]
    Extract {
        /// Destination path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

impl ContextError {
    /// Missing and escaping sources are the caller's fault; IO is ours.
    pub fn kind(&self) -> cove_types::ErrorKind {
        match self {
            ContextError::OutsideContext { .. }
            | ContextError::NotFound { .. }
            | ContextError::UnsafeEntry { .. }
            | ContextError::EntryPath { .. }
            | ContextError::TreePath { .. } => cove_types::ErrorKind::InvalidArgument,
            _ => cove_types::ErrorKind::Internal,
        }
    }
}

/// `.dockerignore` rules with Docker's semantics: patterns are cleaned (leading `/` dropped),
/// `**` matches any number of directories, `!` re-includes, the last matching rule wins, and
/// a rule matching a directory applies to everything under it.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    rules: Vec<(bool, Vec<String>)>,
}

/// A build context directory with its ignore rules.
#[derive(Debug, Clone)]
pub struct BuildContext {
    root: PathBuf,
    ignore: DockerIgnore,
}

/// A resolved COPY source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Where it is on this machine (symlinks resolved inside the root).
    pub host: PathBuf,
    /// Its path relative to the root, `/`-separated (for ignore rules and hashing).
    pub rel: String,
    /// The name a file source gets inside a directory destination.
    pub name: String,
    /// Whether it is a directory (whose contents are copied).
    pub is_dir: bool,
}

impl DockerIgnore {
    /// Parses `.dockerignore` text.
    pub fn parse(text: &str) -> Self {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (neg, pat) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let segs = clean_segments(pat);
            if segs.is_empty() {
                continue;
            }
            rules.push((neg, segs));
        }
        DockerIgnore { rules }
    }

    /// Whether any rule re-includes (then excluded directories must still be walked).
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|(neg, _)| *neg)
    }

    /// Whether `rel` (relative, `/`-separated) is excluded.
    pub fn is_excluded(&self, rel: &str) -> bool {
        let path: Vec<&str> = rel.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
        if path.is_empty() {
            return false;
        }
        let mut excluded = false;
        for (neg, pat) in &self.rules {
            let pat: Vec<&str> = pat.iter().map(String::as_str).collect();
            // The path itself or any of its parents.
            let hit = (1..=path.len()).any(|n| match_segments(&pat, &path[..n]));
            if hit {
                excluded = !neg;
            }
        }
        excluded
    }
}

impl BuildContext {
    /// Opens a context directory, reading its `.dockerignore` if there is one.
    pub fn open(root: &Path) -> Result<Self, ContextError> {
        let ignore = match std::fs::read_to_string(root.join(".dockerignore")) {
            Ok(t) => DockerIgnore::parse(&t),
            Err(e) if e.kind() == io::ErrorKind::NotFound => DockerIgnore::default(),
            Err(source) => return Err(ContextError::Read { path: root.join(".dockerignore"), source }),
        };
        Ok(BuildContext { root: root.to_path_buf(), ignore })
    }

    /// The context directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The ignore rules.
    pub fn ignore(&self) -> &DockerIgnore {
        &self.ignore
    }

    /// Reads a file regardless of `.dockerignore` (the Dockerfile itself may be ignored for
    /// COPY yet is still what the build reads).
    pub fn read_unfiltered(&self, rel: &str) -> Result<Vec<u8>, ContextError> {
        let p = self.root.join(rel.trim_start_matches('/'));
        std::fs::read(&p).map_err(|source| ContextError::Read { path: p, source })
    }

    /// Resolves a COPY/ADD source pattern in the context, minus ignored files.
    pub fn resolve(&self, pattern: &str, instruction: &'static str) -> Result<Vec<Source>, ContextError> {
        resolve_sources(&self.root, pattern, Some(&self.ignore), instruction)
    }
}

/// Resolves a source pattern under `root` (a context, or a stage's root filesystem for
/// `COPY --from`). Errors if it climbs out of `root` or matches nothing.
pub fn resolve_sources(
    root: &Path,
    pattern: &str,
    ignore: Option<&DockerIgnore>,
    instruction: &'static str,
) -> Result<Vec<Source>, ContextError> {
    let segs = clean_relative(pattern)
        .ok_or_else(|| ContextError::OutsideContext { instruction, source_path: pattern.to_string() })?;
    let not_found = || ContextError::NotFound { instruction, source_path: pattern.to_string() };
    let mut matches: Vec<Vec<String>> = vec![Vec::new()];
    for seg in &segs {
        let mut next = Vec::new();
        for m in &matches {
            if has_meta(seg) {
                let dir = resolve_in_root(root, &m.iter().collect::<PathBuf>()).ok_or_else(not_found)?;
                let Ok(rd) = std::fs::read_dir(&dir) else { continue };
                let mut names: Vec<String> =
                    rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
                names.sort();
                for n in names {
                    if fnmatch(seg, &n) {
                        let mut p = m.clone();
                        p.push(n);
                        next.push(p);
                    }
                }
            } else {
                let mut p = m.clone();
                p.push(seg.clone());
                next.push(p);
            }
        }
        matches = next;
    }
    let mut out = Vec::new();
    for m in matches {
        let rel = m.join("/");
        if let Some(ig) = ignore
            && ig.is_excluded(&rel)
            && !(ig.has_exceptions() && is_dir_in(root, &m))
        {
            continue;
        }
        let host = resolve_in_root(root, &m.iter().collect::<PathBuf>()).ok_or_else(not_found)?;
        let Ok(meta) = std::fs::metadata(&host) else { continue };
        let name = m.last().cloned().unwrap_or_default();
        out.push(Source { host, rel, name, is_dir: meta.is_dir() });
    }
    if out.is_empty() {
        return Err(not_found());
    }
    Ok(out)
}

fn is_dir_in(root: &Path, m: &[String]) -> bool {
    resolve_in_root(root, &m.iter().collect::<PathBuf>()).is_some_and(|p| p.is_dir())
}

/// sha256 (hex) over exactly what a COPY reads: each source's files in sorted order with
/// their relative path, type, permission bits and contents (or link target), skipping ignored
/// files, plus the ownership and mode the COPY applies. Modification times are left out, as
/// BuildKit does.
pub fn hash_sources(
    sources: &[Source],
    ignore: Option<&DockerIgnore>,
    chown: Option<&str>,
    chmod: Option<u32>,
) -> Result<String, ContextError> {
    let mut h = sha2::Sha256::new();
    h.update(format!("chown={chown:?} chmod={chmod:?}\n"));
    for s in sources {
        h.update(format!("source {} dir={}\n", s.rel, s.is_dir));
        hash_tree(&mut h, &s.host, &s.rel, ignore)?;
    }
    Ok(hex::encode(h.finalize()))
}

/// A directory being hashed: where it is, its relative path, the names still to hash.
type HashDir = (PathBuf, String, std::vec::IntoIter<OsString>);

/// Hashes the tree at `host` depth first with an explicit stack (no recursion per level).
/// Each node is its path and mode, then its contents (a directory's children, a link's
/// target, a file's bytes), then a newline; an ignored file leaves out the newline.
fn hash_tree(h: &mut sha2::Sha256, host: &Path, rel: &str, ignore: Option<&DockerIgnore>) -> Result<(), ContextError> {
    let mut stack: Vec<HashDir> = Vec::new();
    if let Some(dir) = hash_node(h, host, rel, ignore)? {
        stack.push(dir);
    }
    while let Some((dir, dir_rel, names)) = stack.last_mut() {
        let Some(n) = names.next() else {
            stack.pop();
            h.update(b"\n");
            continue;
        };
        let child_rel = format!("{dir_rel}/{}", n.to_string_lossy());
        if let Some(ig) = ignore
            && ig.is_excluded(&child_rel)
            && !ig.has_exceptions()
        {
            continue;
        }
        if let Err(problem) = check_path(&child_rel) {
            return Err(ContextError::TreePath { path: child_rel, problem });
        }
        let child = dir.join(&n);
        if let Some(d) = hash_node(h, &child, &child_rel, ignore)? {
            stack.push(d);
        }
    }
    Ok(())
}

/// Hashes one node; for a directory, returns its sorted names (its newline comes after them).
fn hash_node(
    h: &mut sha2::Sha256,
    host: &Path,
    rel: &str,
    ignore: Option<&DockerIgnore>,
) -> Result<Option<HashDir>, ContextError> {
    let read = |source| ContextError::Read { path: host.to_path_buf(), source };
    let meta = std::fs::symlink_metadata(host).map_err(read)?;
    let ft = meta.file_type();
    h.update(format!("{rel}\0{:o}\0", meta.mode()));
    if ft.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(host).map_err(read)?.flatten().map(|e| e.file_name()).collect();
        names.sort();
        return Ok(Some((host.to_path_buf(), rel.to_string(), names.into_iter())));
    } else if ft.is_symlink() {
        h.update(std::fs::read_link(host).map_err(read)?.as_os_str().as_encoded_bytes());
    } else if ft.is_file() {
        if ignore.is_some_and(|ig| ig.is_excluded(rel)) {
            return Ok(None);
        }
        let mut f = std::fs::File::open(host).map_err(read)?;
        let mut hw = HashWriter(h);
        io::copy(&mut f, &mut hw).map_err(read)?;
    }
    h.update(b"\n");
    Ok(None)
}

struct HashWriter<'a>(&'a mut sha2::Sha256);

impl io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Extracts several context archives into `dest` (created if missing); later archives win on
/// conflicts. Entries with absolute paths or `..` are refused, and so is any entry whose
/// parent inside `dest` is a symlink, so nothing is ever written through a link. Symlink
/// entries themselves are created as they are (they are resolved inside the context later).
pub fn extract_tars(tars: &[PathBuf], dest: &Path) -> Result<(), ContextError> {
    std::fs::create_dir_all(dest).map_err(|source| ContextError::Extract { path: dest.to_path_buf(), source })?;
    for tar_path in tars {
        let read = |source| ContextError::ReadTar { tar: tar_path.clone(), source };
        let f = std::fs::File::open(tar_path).map_err(read)?;
        let mut archive = tar::Archive::new(io::BufReader::new(f));
        for entry in archive.entries().map_err(read)? {
            let mut entry = entry.map_err(read)?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let unsafe_entry = |why| ContextError::UnsafeEntry { tar: tar_path.clone(), entry: raw.clone(), why };
            if raw.starts_with('/') {
                return Err(unsafe_entry("has an absolute path"));
            }
            let segs = clean_relative(&raw).ok_or_else(|| unsafe_entry("climbs out with .."))?;
            if segs.is_empty() {
                continue;
            }
            if let Err(problem) = check_path(&segs.join("/")) {
                return Err(ContextError::EntryPath { tar: tar_path.clone(), entry: raw, problem });
            }
            let mut parent = dest.to_path_buf();
            for s in &segs[..segs.len() - 1] {
                parent.push(s);
                match std::fs::symlink_metadata(&parent) {
                    Ok(m) if m.file_type().is_symlink() => return Err(unsafe_entry("goes through a symbolic link")),
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        std::fs::remove_file(&parent)
                            .map_err(|source| ContextError::Extract { path: parent.clone(), source })?;
                        mkdir(&parent)?;
                    }
                    Err(_) => mkdir(&parent)?,
                }
            }
            let target = parent.join(&segs[segs.len() - 1]);
            let fail = |source| ContextError::Extract { path: target.clone(), source };
            let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
            let mtime = entry.header().mtime().unwrap_or(0);
            match entry.header().entry_type() {
                tar::EntryType::Directory => {
                    match std::fs::symlink_metadata(&target) {
                        Ok(m) if m.is_dir() => {}
                        Ok(_) => {
                            std::fs::remove_file(&target).map_err(fail)?;
                            mkdir(&target)?;
                        }
                        Err(_) => mkdir(&target)?,
                    }
                    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode | 0o700)).map_err(fail)?;
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    remove_non_dir(&target).map_err(fail)?;
                    let mut out = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(mode)
                        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                        .open(&target)
                        .map_err(fail)?;
                    io::copy(&mut entry, &mut out).map_err(read)?;
                    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
                    set_mtime(&target, mtime);
                }
                tar::EntryType::Symlink => {
                    let link =
                        entry.link_name().map_err(read)?.ok_or_else(|| unsafe_entry("is a link without target"))?;
                    remove_non_dir(&target).map_err(fail)?;
                    std::os::unix::fs::symlink(&*link, &target).map_err(fail)?;
                }
                tar::EntryType::Link => {
                    let link =
                        entry.link_name().map_err(read)?.ok_or_else(|| unsafe_entry("is a link without target"))?;
                    let link_segs = clean_relative(&link.to_string_lossy())
                        .ok_or_else(|| unsafe_entry("is a hard link that climbs out"))?;
                    let src = resolve_in_root(dest, &link_segs.iter().collect::<PathBuf>())
                        .ok_or_else(|| unsafe_entry("is a hard link through a symlink loop"))?;
                    remove_non_dir(&target).map_err(fail)?;
                    std::fs::hard_link(&src, &target).map_err(fail)?;
                }
                // Devices, fifos and the like have no business in a build context.
                _ => {}
            }
        }
    }
    Ok(())
}

fn mkdir(p: &Path) -> Result<(), ContextError> {
    std::fs::create_dir(p).map_err(|source| ContextError::Extract { path: p.to_path_buf(), source })
}

fn remove_non_dir(p: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(_) => Ok(()),
    }
}

pub(crate) fn set_mtime(p: &Path, mtime: u64) {
    let ts = rustix::fs::Timespec { tv_sec: mtime as i64, tv_nsec: 0 };
    let times = rustix::fs::Timestamps { last_access: ts, last_modification: ts };
    // Best effort: a wrong mtime never breaks a build.
    let _ = rustix::fs::utimensat(rustix::fs::CWD, p, &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW);
}

/// Cleans a relative path into segments; `None` if `..` climbs above the start. A leading
/// `/` is dropped (context paths are relative to the context root).
pub(crate) fn clean_relative(p: &str) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => out.push(n.to_string_lossy().into_owned()),
            Component::ParentDir => {
                out.pop()?;
            }
            _ => {}
        }
    }
    Some(out)
}

/// Cleans a .dockerignore pattern (`filepath.Clean` with the leading `/` dropped; a `..` that
/// climbs out is dropped too, as it can match nothing).
fn clean_segments(p: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in p.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_string()),
        }
    }
    out
}

fn has_meta(s: &str) -> bool {
    s.contains(['*', '?', '[', '\\'])
}

fn match_segments(pat: &[&str], path: &[&str]) -> bool {
    match pat.first() {
        None => path.is_empty(),
        Some(&"**") => (0..=path.len()).any(|i| match_segments(&pat[1..], &path[i..])),
        Some(p) => !path.is_empty() && fnmatch(p, path[0]) && match_segments(&pat[1..], &path[1..]),
    }
}

/// Go's `filepath.Match` for one path segment: `*`, `?`, `[a-z]`, `[^…]`, `\` escapes.
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => {
                let Some(&c) = n.first() else { return false };
                let mut i = 1;
                let negate = matches!(p.get(1), Some('^') | Some('!'));
                if negate {
                    i += 1;
                }
                let mut matched = false;
                let mut first = true;
                while i < p.len() && (p[i] != ']' || first) {
                    first = false;
                    let mut lo = p[i];
                    if lo == '\\' && i + 1 < p.len() {
                        i += 1;
                        lo = p[i];
                    }
                    let mut hi = lo;
                    if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
                        hi = p[i + 2];
                        i += 2;
                    }
                    if lo <= c && c <= hi {
                        matched = true;
                    }
                    i += 1;
                }
                if i >= p.len() {
                    return false; // unterminated class: Go reports ErrBadPattern
                }
                matched != negate && go(&p[i + 1..], &n[1..])
            }
            Some('\\') if p.len() > 1 => !n.is_empty() && n[0] == p[1] && go(&p[2..], &n[1..]),
            Some(&c) => !n.is_empty() && n[0] == c && go(&p[1..], &n[1..]),
        }
    }
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, data: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    #[test]
    fn dockerignore_follows_docker_rules_including_exceptions() {
        let ig = DockerIgnore::parse("# comment\n*.log\n!keep.log\n/build\n**/tmp\nnode_modules\n!node_modules/x/y\n");
        assert!(ig.is_excluded("a.log"));
        assert!(!ig.is_excluded("keep.log"), "a later ! rule re-includes");
        assert!(!ig.is_excluded("sub/a.log"), "* does not cross directories");
        assert!(ig.is_excluded("build/out/bin"), "a directory rule covers its contents");
        assert!(ig.is_excluded("tmp") && ig.is_excluded("a/b/tmp/c"));
        assert!(ig.is_excluded("node_modules/z"));
        assert!(!ig.is_excluded("node_modules/x/y/z"));
        assert!(!ig.is_excluded("src/main.rs"));
    }

    #[test]
    fn go_glob_matching_handles_classes_and_escapes() {
        assert!(fnmatch("*.txt", "a.txt"));
        assert!(!fnmatch("*.txt", "a.txt.bak"));
        assert!(fnmatch("file?.[a-c]", "file1.b"));
        assert!(!fnmatch("file?.[^a-c]", "file1.b"));
        assert!(fnmatch(r"a\*", "a*"));
        assert!(!fnmatch(r"a\*", "ab"));
    }

    #[test]
    fn sources_resolve_globs_skip_ignored_files_and_refuse_escapes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(root, "a.txt", "a");
        write(root, "b.txt", "b");
        write(root, "c.log", "c");
        write(root, "dir/x", "x");
        write(root, ".dockerignore", "b.txt\n");
        let ctx = BuildContext::open(root).unwrap();
        let got: Vec<_> = ctx.resolve("*.txt", "COPY").unwrap().into_iter().map(|s| s.rel).collect();
        assert_eq!(got, ["a.txt"]);
        let dir = ctx.resolve("/dir", "COPY").unwrap();
        assert!(dir[0].is_dir);
        let e = ctx.resolve("../etc/passwd", "COPY").unwrap_err();
        assert_eq!(e.to_string(), "COPY source ../etc/passwd is outside the build context");
        let e = ctx.resolve("missing.txt", "COPY").unwrap_err();
        assert_eq!(e.to_string(), "COPY source missing.txt not found in the build context");
        assert!(ctx.resolve("b.txt", "COPY").is_err(), "an ignored file cannot be copied");
        assert_eq!(ctx.read_unfiltered(".dockerignore").unwrap(), b"b.txt\n");
    }

    #[test]
    fn symlinks_in_the_context_cannot_reach_outside_it() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("ctx");
        std::fs::create_dir(&root).unwrap();
        write(t.path(), "secret", "s");
        std::os::unix::fs::symlink(t.path().join("secret"), root.join("link")).unwrap();
        let e = resolve_sources(&root, "link", None, "COPY");
        assert!(e.is_err(), "the link resolves inside the root, where there is no /secret");
    }

    #[test]
    fn the_content_hash_changes_with_content_mode_and_chown_only() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(root, "d/f", "1");
        let ctx = BuildContext::open(root).unwrap();
        let h = |chown| hash_sources(&ctx.resolve("d", "COPY").unwrap(), None, chown, None).unwrap();
        let h1 = h(None);
        set_mtime(&root.join("d/f"), 12345);
        assert_eq!(h(None), h1, "mtime is not content");
        write(root, "d/f", "2");
        let h2 = h(None);
        assert_ne!(h2, h1);
        std::fs::set_permissions(root.join("d/f"), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_ne!(h(None), h2);
        assert_ne!(h(Some("1:1")), h(None));
    }

    fn tar_with(entries: &[(&str, char, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_mtime(1_600_000_000);
            let (ty, body): (_, &[u8]) = match kind {
                'd' => (tar::EntryType::Directory, b""),
                'f' => (tar::EntryType::Regular, data.as_bytes()),
                _ => (tar::EntryType::Symlink, b""),
            };
            h.set_entry_type(ty);
            h.set_size(body.len() as u64);
            let name = h.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            if *kind == 's' {
                h.as_old_mut().linkname.as_mut()[..data.len()].copy_from_slice(data.as_bytes());
            }
            h.set_cksum();
            b.append(&h, body).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn several_context_tars_merge_into_one_directory() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a.tar");
        let b = t.path().join("b.tar");
        std::fs::write(&a, tar_with(&[("home/u/ctx/a.txt", 'f', "A")])).unwrap();
        std::fs::write(
            &b,
            tar_with(&[("home/u/ctx/", 'd', ""), ("home/u/ctx/d/b.txt", 'f', "B"), ("ctx/l", 's', "/etc")]),
        )
        .unwrap();
        let dest = t.path().join("ctx");
        extract_tars(&[a, b], &dest).unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("home/u/ctx/a.txt")).unwrap(), "A");
        assert_eq!(std::fs::read_to_string(dest.join("home/u/ctx/d/b.txt")).unwrap(), "B");
        assert_eq!(std::fs::read_link(dest.join("ctx/l")).unwrap(), Path::new("/etc"));
        let src = resolve_sources(&dest, "home/u/ctx/a.txt", None, "COPY").unwrap();
        assert_eq!(src[0].name, "a.txt");
    }

    #[test]
    fn context_tars_with_escaping_entries_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let dest = t.path().join("ctx");
        for (i, entries) in [
            vec![("../x", 'f', "pwn")],
            vec![("/abs", 'f', "pwn")],
            vec![("l", 's', outside.to_str().unwrap()), ("l/x", 'f', "pwn")],
        ]
        .into_iter()
        .enumerate()
        {
            let p = t.path().join(format!("{i}.tar"));
            std::fs::write(&p, tar_with(&entries)).unwrap();
            let e = extract_tars(&[p], &dest).unwrap_err();
            assert!(matches!(e, ContextError::UnsafeEntry { .. }), "{e}");
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        assert!(!t.path().join("x").exists());
    }

    fn tar_of_long_names(entries: &[(String, tar::EntryType)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, ty) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o755);
            h.set_entry_type(*ty);
            h.set_size(0);
            b.append_data(&mut h, path, io::empty()).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn a_context_entry_five_thousand_directories_deep_is_refused_before_anything_is_created() {
        let t = tempfile::tempdir().unwrap();
        let tar = t.path().join("deep.tar");
        let deep = format!("{}f", "a/".repeat(5000));
        std::fs::write(&tar, tar_of_long_names(&[(deep, tar::EntryType::Regular)])).unwrap();
        let dest = t.path().join("ctx");
        let e = extract_tars(&[tar], &dest).unwrap_err();
        assert!(matches!(e, ContextError::EntryPath { problem: PathProblem::TooLong { len: 10_001 }, .. }), "{e}");
        assert_eq!(e.kind(), cove_types::ErrorKind::InvalidArgument);
        let msg = cove_types::error::chain(&e);
        assert!(
            msg.contains("entry a/a/a/") && msg.ends_with("is 10001 bytes long, over the limit of 3 KiB for a path"),
            "{msg}"
        );
        assert!(msg.len() < 400, "{msg}");
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
    }

    #[test]
    fn context_directories_nested_past_the_depth_limit_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let tar = t.path().join("deep.tar");
        let entries: Vec<_> = (1..=600).map(|n| ("d/".repeat(n), tar::EntryType::Directory)).collect();
        std::fs::write(&tar, tar_of_long_names(&entries)).unwrap();
        let e = extract_tars(&[tar], &t.path().join("ctx")).unwrap_err();
        assert!(e.to_string().ends_with("nests 513 directories deep, over the limit of 512"), "{e}");
    }

    #[test]
    fn hashing_a_tree_deeper_than_the_limit_fails_naming_the_path_instead_of_overflowing_the_stack() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("ctx");
        std::fs::create_dir(&root).unwrap();
        crate::limits::nest_dirs(&root, "d", 3000);
        let src = resolve_sources(&root, "d", None, "COPY").unwrap();
        let e = crate::limits::on_small_stack(move || hash_sources(&src, None, None, None)).unwrap_err();
        assert!(matches!(&e, ContextError::TreePath { problem: PathProblem::TooDeep { depth: 513 }, .. }), "{e}");
        let root_ok = t.path().join("ok");
        std::fs::create_dir(&root_ok).unwrap();
        crate::limits::nest_dirs(&root_ok, "d", 500);
        let src = resolve_sources(&root_ok, "d", None, "COPY").unwrap();
        crate::limits::on_small_stack(move || hash_sources(&src, None, None, None)).unwrap();
    }
}
