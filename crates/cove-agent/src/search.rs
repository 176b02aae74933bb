//! Content search, name search and replace over the sandbox's files: `GET /files/find`,
//! `GET /files/search`, `POST /files/replace` (the SDKs' `find_files`, `search_files`,
//! `replace_in_files`). All three are blocking filesystem work; the router runs them on the
//! blocking pool.
//!
//! Contract (the semantics of Daytona's daemon, with limits made explicit):
//! - Paths resolve like every file route (absolute, or relative to the workdir). Answers carry
//!   absolute paths; `replace` echoes each path as sent.
//! - Walks never follow symbolic links below the root (the root itself is followed, like
//!   `grep -r DIR`), so a link can neither lead a search out of the tree nor loop it; `/proc` and
//!   `/sys` are not entered unless they are the root. Unreadable entries are skipped, as grep -s
//!   does; a missing root is 404.
//! - `find`: the `pattern` is a literal string (not a regex) matched per line in regular files;
//!   files with a NUL byte in their first 8 KiB are binary and skipped; lines are numbered from 1
//!   and returned without their line ending; a line longer than 1 MiB is matched within its first
//!   MiB.
//! - `search`: the `pattern` is a glob (`*`, `?`, `[..]`, `{a,b}`) matched, like the daemon's
//!   `filepath.Match(pattern, info.Name())`, against the name of every entry at any depth, the
//!   root and directories included (so `*.py` is every Python file and every directory named
//!   `*.py`; links are matched by their own name, never followed). A pattern with a `/` can never
//!   match a name; Cove matches it against the entry's path relative to the root instead, `*` not
//!   crossing `/` (`src/*.py`, `**/*.py`). An invalid glob is 400 naming it (the daemon answers
//!   an empty list).
//! - Answers are capped at 64 MiB of paths and lines: beyond that the request is refused with
//!   400 asking for a narrower path or pattern, never silently truncated.
//! - `replace`: every occurrence of the literal `pattern` (not empty) becomes `newValue`, streamed
//!   through a temporary file (bounded memory). A changed file is renamed into place atomically
//!   with its mode and owner kept, or, when it has several hard links, copied back into the same
//!   inode. A file without an occurrence is left untouched. Symbolic links are refused (name the
//!   target). Each file gets its own `{file, success, error}`; one failure does not stop the rest.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use memchr::memmem;
use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;
use crate::process::resolve;

/// Most bytes of paths and line contents one answer may carry.
const MAX_ANSWER_BYTES: usize = 64 << 20;
/// Longest line prefix `find` matches in.
const MAX_LINE: usize = 1 << 20;
/// Prefix in which a NUL byte marks a file as binary.
const BINARY_PROBE: usize = 8 * 1024;
/// Read size of the streamed replace.
const REPLACE_CHUNK: usize = 64 * 1024;

/// One matching line, as the toolbox client reads it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Match {
    /// Absolute path of the file.
    pub file: String,
    /// Line number, from 1.
    pub line: u64,
    /// The line without its ending (invalid UTF-8 replaced).
    pub content: String,
}

/// `GET /files/search` answer.
#[derive(Debug, Serialize)]
pub struct SearchFilesResponse {
    /// Absolute paths of the matching entries, in walk order (sorted by name per directory).
    pub files: Vec<String>,
}

/// `POST /files/replace` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReplaceRequest {
    /// Files to edit.
    pub files: Vec<String>,
    /// Literal text to replace.
    pub pattern: String,
    /// Replacement text.
    pub new_value: String,
}

/// The outcome for one file of a replace.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ReplaceResult {
    /// The path as sent.
    pub file: String,
    /// Whether the file now holds no occurrence of the pattern it had.
    pub success: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A failed search or replace request.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// A required parameter is missing or empty.
    #[error("{0} is required")]
    MissingParameter(&'static str),
    /// The root cannot be examined.
    #[error("stat {path}")]
    Root {
        /// The root.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `search` needs a directory.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The root.
        path: String,
    },
    /// The glob does not parse.
    #[error("invalid glob pattern {pattern:?}")]
    InvalidGlob {
        /// As sent.
        pattern: String,
        /// Why.
        #[source]
        source: globset::Error,
    },
    /// The answer would exceed [`MAX_ANSWER_BYTES`].
    #[error("the results exceed {} MiB; narrow the path or the pattern", MAX_ANSWER_BYTES >> 20)]
    TooManyResults,
}

impl SearchError {
    /// Class of the failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SearchError::Root { source, .. } => ErrorKind::from_io(source.kind()),
            SearchError::MissingParameter(_)
            | SearchError::NotADirectory { .. }
            | SearchError::InvalidGlob { .. }
            | SearchError::TooManyResults => ErrorKind::InvalidArgument,
        }
    }
}

fn required<'a>(value: Option<&'a str>, name: &'static str) -> Result<&'a str, SearchError> {
    value.filter(|v| !v.is_empty()).ok_or(SearchError::MissingParameter(name))
}

/// The root's metadata (links followed), or 404/403.
fn root(workdir: &Path, path: Option<&str>) -> Result<(PathBuf, std::fs::Metadata), SearchError> {
    // Lexically without `.` components, so answers read `/root/a.txt`, not `/root/./a.txt`.
    let root: PathBuf = resolve(workdir, Some(required(path, "path")?)).components().collect();
    let meta =
        std::fs::metadata(&root).map_err(|source| SearchError::Root { path: root.display().to_string(), source })?;
    Ok((root, meta))
}

/// A walk below `root` that follows no link but the root and stays out of `/proc` and `/sys`.
fn walk(root: &Path) -> impl Iterator<Item = walkdir::DirEntry> {
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .follow_root_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !(e.path() == Path::new("/proc") || e.path() == Path::new("/sys")))
        .filter_map(Result::ok)
}

/// `GET /files/find?path=&pattern=`.
pub fn find(workdir: &Path, path: Option<&str>, pattern: Option<&str>) -> Result<Vec<Match>, SearchError> {
    let (root, _) = root(workdir, path)?;
    let pattern = required(pattern, "pattern")?;
    let finder = memmem::Finder::new(pattern.as_bytes());
    let mut out = Vec::new();
    let mut budget = MAX_ANSWER_BYTES;
    for entry in walk(&root) {
        if !entry.file_type().is_file() {
            continue;
        }
        let shown = entry.path().display().to_string();
        // An unreadable file is skipped, as grep -s does; a full answer stops the walk.
        if let Err(FindStop::Full) = find_in_file(entry.path(), &shown, &finder, &mut out, &mut budget) {
            return Err(SearchError::TooManyResults);
        }
    }
    Ok(out)
}

enum FindStop {
    Io,
    Full,
}

impl From<io::Error> for FindStop {
    fn from(_: io::Error) -> Self {
        FindStop::Io
    }
}

/// Opens a walked entry: no link followed, no FIFO waited for, regular files only.
fn open_regular(path: &Path, write: bool) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(file)
}

fn find_in_file(
    path: &Path,
    shown: &str,
    finder: &memmem::Finder<'_>,
    out: &mut Vec<Match>,
    budget: &mut usize,
) -> Result<(), FindStop> {
    let mut reader = BufReader::with_capacity(64 * 1024, open_regular(path, false)?);
    let head = reader.fill_buf()?;
    if memchr::memchr(0, &head[..head.len().min(BINARY_PROBE)]).is_some() {
        return Ok(());
    }
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_LINE as u64).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        } else if n == MAX_LINE {
            skip_line(&mut reader)?;
        }
        if finder.find(&line).is_some() {
            let content = String::from_utf8_lossy(&line).into_owned();
            *budget = budget.checked_sub(content.len() + shown.len() + 32).ok_or(FindStop::Full)?;
            out.push(Match { file: shown.to_string(), line: number, content });
        }
    }
}

/// Consumes the rest of an over-long line, its newline included.
fn skip_line(reader: &mut impl BufRead) -> io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(i) = memchr::memchr(b'\n', buf) {
            reader.consume(i + 1);
            return Ok(());
        }
        let n = buf.len();
        reader.consume(n);
    }
}

/// `GET /files/search?path=&pattern=`.
pub fn search(workdir: &Path, path: Option<&str>, pattern: Option<&str>) -> Result<SearchFilesResponse, SearchError> {
    let (root, meta) = root(workdir, path)?;
    let pattern = required(pattern, "pattern")?;
    if !meta.is_dir() {
        return Err(SearchError::NotADirectory { path: root.display().to_string() });
    }
    let glob = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|source| SearchError::InvalidGlob { pattern: pattern.to_string(), source })?
        .compile_matcher();
    let by_path = pattern.contains('/');
    let mut files = Vec::new();
    let mut budget = MAX_ANSWER_BYTES;
    for entry in walk(&root) {
        let matched = if by_path {
            entry.depth() > 0 && entry.path().strip_prefix(&root).is_ok_and(|relative| glob.is_match(relative))
        } else {
            // The root of `/` has no name; `Path::new("/")` never matches a name pattern.
            glob.is_match(entry.path().file_name().map_or(entry.path().as_os_str(), |n| n))
        };
        if matched {
            let shown = entry.path().display().to_string();
            budget = budget.checked_sub(shown.len() + 4).ok_or(SearchError::TooManyResults)?;
            files.push(shown);
        }
    }
    Ok(SearchFilesResponse { files })
}

/// Why one file of a replace failed.
#[derive(Debug, thiserror::Error)]
enum ReplaceFileError {
    #[error("path is empty")]
    Empty,
    #[error("{path} is a symbolic link; name the file it points to")]
    Symlink { path: String },
    #[error("open {path}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("rewrite {path}")]
    Rewrite {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// `POST /files/replace`.
pub fn replace(workdir: &Path, req: &ReplaceRequest) -> Result<Vec<ReplaceResult>, SearchError> {
    if req.pattern.is_empty() {
        return Err(SearchError::MissingParameter("pattern"));
    }
    Ok(req
        .files
        .iter()
        .map(|file| match replace_file(workdir, file, req.pattern.as_bytes(), req.new_value.as_bytes()) {
            Ok(()) => ReplaceResult { file: file.clone(), success: true, error: None },
            Err(e) => ReplaceResult { file: file.clone(), success: false, error: Some(crate::error::chain(&e)) },
        })
        .collect())
}

fn replace_file(workdir: &Path, file: &str, pattern: &[u8], new_value: &[u8]) -> Result<(), ReplaceFileError> {
    if file.is_empty() {
        return Err(ReplaceFileError::Empty);
    }
    let path = resolve(workdir, Some(file));
    let shown = path.display().to_string();
    // Opening for writing checks the permission to change the file itself (a rename alone
    // would only need the directory's).
    let mut original = open_regular(&path, true).map_err(|source| match source.raw_os_error() {
        Some(libc::ELOOP) => ReplaceFileError::Symlink { path: shown.clone() },
        _ => ReplaceFileError::Open { path: shown.clone(), source },
    })?;
    let rewrite = |source| ReplaceFileError::Rewrite { path: shown.clone(), source };
    let meta = original.metadata().map_err(rewrite)?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut temp = tempfile::Builder::new().prefix(".cove-replace-").tempfile_in(dir).map_err(rewrite)?;
    let count = stream_replace(&mut original, temp.as_file_mut(), pattern, new_value).map_err(rewrite)?;
    if count == 0 {
        return Ok(());
    }
    if meta.nlink() > 1 {
        // Renaming would split the hard links: write the new content into the same inode.
        let t = temp.as_file_mut();
        t.flush().map_err(rewrite)?;
        t.rewind().map_err(rewrite)?;
        original.rewind().map_err(rewrite)?;
        let len = io::copy(t, &mut original).map_err(rewrite)?;
        original.set_len(len).map_err(rewrite)?;
        return original.sync_all().map_err(rewrite);
    }
    let t = temp.as_file();
    t.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(rewrite)?;
    let tmeta = t.metadata().map_err(rewrite)?;
    if (tmeta.uid(), tmeta.gid()) != (meta.uid(), meta.gid()) {
        std::os::unix::fs::fchown(t, Some(meta.uid()), Some(meta.gid())).map_err(rewrite)?;
        // chown clears set-id bits; put the mode back.
        t.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(rewrite)?;
    }
    t.sync_all().map_err(rewrite)?;
    temp.persist(&path).map_err(|e| rewrite(e.error))?;
    Ok(())
}

/// Copies `from` to `to` with every `pattern` replaced; returns the number of replacements.
fn stream_replace(from: &mut impl Read, to: &mut impl Write, pattern: &[u8], new_value: &[u8]) -> io::Result<u64> {
    let finder = memmem::Finder::new(pattern);
    let mut data: Vec<u8> = Vec::with_capacity(REPLACE_CHUNK + pattern.len());
    let mut buf = vec![0u8; REPLACE_CHUNK];
    let mut count = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        data.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(i) = finder.find(&data[start..]) {
            to.write_all(&data[start..start + i])?;
            to.write_all(new_value)?;
            start += i + pattern.len();
            count += 1;
        }
        if n == 0 {
            to.write_all(&data[start..])?;
            to.flush()?;
            return Ok(count);
        }
        // Keep a tail that could be the start of an occurrence split across reads.
        let keep_from = start.max(data.len().saturating_sub(pattern.len() - 1));
        to.write_all(&data[start..keep_from])?;
        data.drain(..keep_from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (p, content) in [
            ("file1.txt", "hello\nTODO: one\n"),
            ("file2.go", "package main // TODO: two\r\n"),
            ("src/main.go", "x\ny TODO: three"),
            ("src/components/button.tsx", "no match"),
            ("bin.dat", "TODO:\0binary"),
        ] {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, content).expect("write");
        }
        dir
    }

    #[test]
    fn find_reports_literal_matches_per_line_and_skips_binary_files_and_links() {
        let dir = tree();
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("secret"), "TODO: outside").expect("write");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).expect("symlink");
        let m = find(dir.path(), Some("."), Some("TODO:")).expect("find");
        let got: Vec<(String, u64, &str)> = m
            .iter()
            .map(|m| {
                (
                    m.file.strip_prefix(&format!("{}/", dir.path().display())).unwrap_or(&m.file).to_string(),
                    m.line,
                    m.content.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("file1.txt".to_string(), 2, "TODO: one"),
                ("file2.go".to_string(), 1, "package main // TODO: two"),
                ("src/main.go".to_string(), 2, "y TODO: three"),
            ]
        );
        assert!(find(dir.path(), Some("x"), Some("a")).expect_err("missing").kind() == ErrorKind::NotFound);
        assert!(matches!(find(dir.path(), Some("."), Some("")), Err(SearchError::MissingParameter("pattern"))));
        assert!(find(dir.path(), Some("."), Some("T.DO")).expect("find").is_empty(), "literal, not a regex");
    }

    #[test]
    fn search_matches_names_at_any_depth_directories_included_and_paths_when_the_pattern_has_a_slash() {
        let dir = tree();
        let names = |pattern: &str| -> Vec<String> {
            search(dir.path(), Some(dir.path().to_str().expect("utf8")), Some(pattern))
                .expect("search")
                .files
                .iter()
                .map(|f| f.strip_prefix(&format!("{}/", dir.path().display())).expect("under root").to_string())
                .collect()
        };
        std::fs::create_dir_all(dir.path().join("src/tools.go")).expect("mkdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("secret.go"), "").expect("write");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link.go")).expect("symlink");
        assert_eq!(names("*.txt"), vec!["file1.txt"]);
        assert_eq!(
            names("*.go"),
            vec!["file2.go", "link.go", "src/main.go", "src/tools.go"],
            "names at any depth, a directory and a link (by its own name, not followed) included"
        );
        assert_eq!(names("components"), vec!["src/components"]);
        assert_eq!(
            names("*.{go,tsx}"),
            vec!["file2.go", "link.go", "src/components/button.tsx", "src/main.go", "src/tools.go"]
        );
        assert_eq!(names("file?.*"), vec!["file1.txt", "file2.go"]);
        assert!(names("*.xyz").is_empty());
        assert!(names("secret*").is_empty(), "the link is not followed out of the root");
        assert_eq!(names("**/*.go"), vec!["file2.go", "link.go", "src/main.go", "src/tools.go"]);
        assert_eq!(names("src/*.go"), vec!["src/main.go", "src/tools.go"], "a slash matches the relative path");
        assert_eq!(names("src/**/*.tsx"), vec!["src/components/button.tsx"]);
        let root_name = dir.path().file_name().expect("name").to_str().expect("utf8");
        let found = search(dir.path(), Some(dir.path().to_str().expect("utf8")), Some(root_name)).expect("search");
        assert_eq!(
            found.files,
            vec![dir.path().display().to_string()],
            "the root itself is an entry, as in the daemon"
        );
        let e = search(dir.path(), Some("."), Some("a[")).expect_err("bad glob");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(crate::error::chain(&e).contains("a["), "{e}");
        assert!(matches!(search(dir.path(), Some("file1.txt"), Some("*")), Err(SearchError::NotADirectory { .. })));
    }

    #[test]
    fn replace_streams_across_chunk_boundaries() {
        let pattern = b"needle";
        let mut input = vec![b'a'; REPLACE_CHUNK - 3];
        input.extend_from_slice(b"needle in the middle needle");
        let mut out = Vec::new();
        let n = stream_replace(&mut input.as_slice(), &mut out, pattern, b"pin").expect("replace");
        assert_eq!(n, 2);
        let mut expected = vec![b'a'; REPLACE_CHUNK - 3];
        expected.extend_from_slice(b"pin in the middle pin");
        assert_eq!(out, expected);
    }

    #[test]
    fn replace_keeps_mode_and_hard_links_and_refuses_links_per_file() {
        let dir = tree();
        let p = dir.path().join("file1.txt");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        std::fs::hard_link(dir.path().join("file2.go"), dir.path().join("hard.go")).expect("link");
        std::os::unix::fs::symlink("file1.txt", dir.path().join("sym")).expect("symlink");
        let req = ReplaceRequest {
            files: vec![
                "file1.txt".into(),
                "file2.go".into(),
                "sym".into(),
                "missing".into(),
                "src/components/button.tsx".into(),
            ],
            pattern: "TODO".into(),
            new_value: "DONE".into(),
        };
        let r = replace(dir.path(), &req).expect("replace");
        assert_eq!(r.iter().map(|r| r.success).collect::<Vec<_>>(), vec![true, true, false, false, true]);
        assert!(r[2].error.as_deref().is_some_and(|e| e.contains("symbolic link")), "{r:?}");
        assert!(r[3].error.as_deref().is_some_and(|e| e.contains("No such file")), "{r:?}");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "hello\nDONE: one\n");
        assert_eq!(std::fs::metadata(&p).expect("stat").mode() & 0o7777, 0o640);
        assert_eq!(std::fs::read_to_string(dir.path().join("hard.go")).expect("read"), "package main // DONE: two\r\n");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".cove-replace"))
            .collect();
        assert!(leftovers.is_empty());
        let empty = ReplaceRequest { files: vec!["file1.txt".into()], pattern: String::new(), new_value: "x".into() };
        assert!(matches!(replace(dir.path(), &empty), Err(SearchError::MissingParameter("pattern"))));
    }
}
