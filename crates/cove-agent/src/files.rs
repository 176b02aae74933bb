//! File operations of the toolbox. Paths are absolute or relative to the workdir; `..` is left to
//! the kernel, because the agent runs inside the sandbox and confinement is the container's job.
//! Uploads are streamed to disk part by part, never held in memory.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use axum::extract::Multipart;
use axum::extract::multipart::Field;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::error::{ErrorKind, iso8601};
use crate::process::resolve;
use crate::users::Users;

/// `FileInfo` exactly as the toolbox client reads it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileInfo {
    /// Base name.
    pub name: String,
    /// Whether it is a directory (links are followed).
    pub is_dir: bool,
    /// Bytes.
    pub size: u64,
    /// Last modification, ISO 8601.
    pub mod_time: String,
    /// The same instant (the SDKs' newer field; `modTime` is kept for older clients).
    pub modified_at: String,
    /// `ls`-style, e.g. `-rw-r--r--`.
    pub mode: String,
    /// Octal, e.g. `0644`.
    pub permissions: String,
    /// User name, or the uid.
    pub owner: String,
    /// Group name, or the gid.
    pub group: String,
    /// The absolute path.
    pub path: String,
}

/// One written file of an upload.
#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct UploadedEntry {
    /// The destination as sent.
    pub path: String,
    /// Bytes written.
    pub bytes: u64,
}

/// What a bulk upload did: 200 when `errors` is empty, else 400.
#[derive(Debug, Serialize, Default)]
pub struct BulkUploadResult {
    /// Failures, one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Files written.
    pub files: Vec<UploadedEntry>,
}

/// `POST /files/upload-v2` answer.
#[derive(Debug, Serialize)]
pub struct UploadedFile {
    /// Base name.
    pub name: String,
    /// The destination as sent.
    pub path: String,
    /// Always `file`.
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// A failed file operation.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A required query parameter is empty.
    #[error("{0} is required")]
    MissingParameter(&'static str),
    /// `stat` failed.
    #[error("stat {path}")]
    Stat {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Listing a directory failed.
    #[error("list {path}")]
    List {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Opening for download failed.
    #[error("open {path}")]
    Open {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Download of a directory.
    #[error("{path} is a directory")]
    IsDirectory {
        /// The path.
        path: String,
    },
    /// `mkdir -p` failed.
    #[error("create folder {path}")]
    CreateFolder {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A boolean query parameter that is neither `true` nor `false`.
    #[error("invalid {name} {value:?}: expected true or false")]
    InvalidBool {
        /// The parameter.
        name: &'static str,
        /// As sent.
        value: String,
    },
    /// Copying across filesystems met an entry that cannot be copied.
    #[error("cannot move {path} across filesystems: only files, directories and symbolic links can be copied")]
    Uncopyable {
        /// The entry.
        path: String,
    },
    /// The mode is not octal.
    #[error("invalid mode {mode:?}: expected octal digits such as 755")]
    InvalidMode {
        /// As sent.
        mode: String,
    },
    /// Deleting failed.
    #[error("delete {path}")]
    Delete {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A directory with entries and no `recursive=true`.
    #[error("directory {path} is not empty; pass recursive=true to delete it with its contents")]
    DirectoryNotEmpty {
        /// The path.
        path: String,
    },
    /// The move target exists.
    #[error("destination {path} already exists")]
    DestinationExists {
        /// The path.
        path: String,
    },
    /// Renaming failed.
    #[error("move {source_path} to {destination}")]
    Move {
        /// From.
        source_path: String,
        /// To.
        destination: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// chmod/chown failed.
    #[error("set permissions of {path}")]
    SetPermissions {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An owner or group name not in /etc/passwd or /etc/group.
    #[error("unknown {what} {name:?}")]
    UnknownId {
        /// `user` or `group`.
        what: &'static str,
        /// As sent.
        name: String,
    },
    /// The multipart body is malformed.
    #[error("read multipart body")]
    Multipart(#[source] axum::extract::multipart::MultipartError),
    /// No `file` part in an upload-v2 request.
    #[error("the multipart body has no \"file\" part")]
    NoFilePart,
    /// Writing an uploaded file failed.
    #[error("write {path}")]
    Write {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl FileError {
    /// Class of the failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            FileError::MissingParameter(_)
            | FileError::IsDirectory { .. }
            | FileError::InvalidMode { .. }
            | FileError::InvalidBool { .. }
            | FileError::Uncopyable { .. }
            | FileError::DirectoryNotEmpty { .. }
            | FileError::UnknownId { .. }
            | FileError::Multipart(_)
            | FileError::NoFilePart => ErrorKind::InvalidArgument,
            FileError::DestinationExists { .. } => ErrorKind::AlreadyExists,
            FileError::Stat { source, .. }
            | FileError::List { source, .. }
            | FileError::Open { source, .. }
            | FileError::CreateFolder { source, .. }
            | FileError::Delete { source, .. }
            | FileError::Move { source, .. }
            | FileError::SetPermissions { source, .. }
            | FileError::Write { source, .. } => ErrorKind::from_io(source.kind()),
        }
    }
}

fn required<'a>(value: Option<&'a str>, name: &'static str) -> Result<&'a str, FileError> {
    value.filter(|v| !v.is_empty()).ok_or(FileError::MissingParameter(name))
}

/// `GET /files/info`.
pub fn info(workdir: &Path, path: Option<&str>) -> Result<FileInfo, FileError> {
    let p = resolve(workdir, Some(required(path, "path")?));
    let meta = std::fs::metadata(&p).map_err(|source| FileError::Stat { path: p.display().to_string(), source })?;
    Ok(file_info(&p, &meta, &Users::load()))
}

/// `GET /files`: the entries of a directory (the workdir when `path` is empty), sorted by name.
pub fn list(workdir: &Path, path: Option<&str>) -> Result<Vec<FileInfo>, FileError> {
    let dir = resolve(workdir, path.filter(|p| !p.is_empty()));
    let err = |source| FileError::List { path: dir.display().to_string(), source };
    let users = Users::load();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let p = entry.path();
        // Follow links like `ls -L`; a dangling link is described by the link itself.
        let Ok(meta) = std::fs::metadata(&p).or_else(|_| std::fs::symlink_metadata(&p)) else { continue };
        out.push(file_info(&p, &meta, &users));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn file_info(p: &Path, meta: &std::fs::Metadata, users: &Users) -> FileInfo {
    let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
    FileInfo {
        name: p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned()),
        is_dir: meta.is_dir(),
        size: meta.len(),
        mod_time: iso8601(mtime),
        modified_at: iso8601(mtime),
        mode: mode_string(meta.mode()),
        permissions: format!("{:04o}", meta.mode() & 0o7777),
        owner: users.user_name(meta.uid()),
        group: users.group_name(meta.gid()),
        path: p.display().to_string(),
    }
}

/// `ls -l`-style mode: type letter then rwx triplets (with s/t bits).
pub fn mode_string(mode: u32) -> String {
    let kind = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        _ => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(kind);
    for (shift, special, lower, upper) in [(6, 0o4000, 's', 'S'), (3, 0o2000, 's', 'S'), (0, 0o1000, 't', 'T')] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// `GET /files/download`: the opened file and its size.
pub async fn open_download(workdir: &Path, path: Option<&str>) -> Result<(tokio::fs::File, u64, String), FileError> {
    let p = resolve(workdir, Some(required(path, "path")?));
    let shown = p.display().to_string();
    let file = tokio::fs::File::open(&p).await.map_err(|source| FileError::Open { path: shown.clone(), source })?;
    let meta = file.metadata().await.map_err(|source| FileError::Stat { path: shown.clone(), source })?;
    if meta.is_dir() {
        return Err(FileError::IsDirectory { path: shown });
    }
    let name = p.file_name().map_or_else(|| "download".into(), |n| n.to_string_lossy().into_owned());
    Ok((file, meta.len(), name))
}

fn parse_mode(mode: Option<&str>, default: u32) -> Result<u32, FileError> {
    match mode.map(str::trim).filter(|m| !m.is_empty()) {
        None => Ok(default),
        Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
            .ok()
            .filter(|v| *v <= 0o7777)
            .ok_or_else(|| FileError::InvalidMode { mode: m.to_string() }),
    }
}

/// `POST /files/folder`: `mkdir -p` with `mode` (octal, default 755) on the last component.
pub fn create_folder(workdir: &Path, path: Option<&str>, mode: Option<&str>) -> Result<(), FileError> {
    let p = resolve(workdir, Some(required(path, "path")?));
    let mode = parse_mode(mode, 0o755)?;
    let err = |source| FileError::CreateFolder { path: p.display().to_string(), source };
    let existed = p.is_dir();
    std::fs::create_dir_all(&p).map_err(err)?;
    if !existed {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    }
    Ok(())
}

/// A boolean query parameter: absent is `false`; `true`/`false`/`1`/`0` (any case); else 400.
pub fn parse_bool(value: Option<&str>, name: &'static str) -> Result<bool, FileError> {
    match value.map(str::trim) {
        None | Some("") => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => Ok(false),
        Some(v) => Err(FileError::InvalidBool { name, value: v.to_string() }),
    }
}

/// `DELETE /files`: a file, an empty directory, or with `recursive` a whole tree. A link is
/// removed itself, never what it points to (`remove_dir_all` does not follow links either).
pub fn delete(workdir: &Path, path: Option<&str>, recursive: bool) -> Result<(), FileError> {
    let p = resolve(workdir, Some(required(path, "path")?));
    let shown = p.display().to_string();
    let meta = std::fs::symlink_metadata(&p).map_err(|source| FileError::Stat { path: shown.clone(), source })?;
    let result = if !meta.is_dir() {
        std::fs::remove_file(&p)
    } else if recursive {
        std::fs::remove_dir_all(&p)
    } else {
        std::fs::remove_dir(&p)
    };
    result.map_err(|source| match source.kind() {
        io::ErrorKind::DirectoryNotEmpty => FileError::DirectoryNotEmpty { path: shown.clone() },
        _ => FileError::Delete { path: shown.clone(), source },
    })
}

/// `POST /files/move`: rename; refuses to overwrite. Across filesystems (`EXDEV`, e.g. from a
/// tmpfs to the disk) the tree is copied without following links (files, directories with
/// their modes, links as links), then the source is removed.
pub fn move_path(workdir: &Path, source: Option<&str>, destination: Option<&str>) -> Result<(), FileError> {
    let from = resolve(workdir, Some(required(source, "source")?));
    let to = resolve(workdir, Some(required(destination, "destination")?));
    if std::fs::symlink_metadata(&to).is_ok() {
        return Err(FileError::DestinationExists { path: to.display().to_string() });
    }
    let err = |e| FileError::Move {
        source_path: from.display().to_string(),
        destination: to.display().to_string(),
        source: e,
    };
    match std::fs::rename(&from, &to) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            copy_tree(&from, &to).map_err(|e| match e {
                CopyError::Io(e) => err(e),
                CopyError::Uncopyable(path) => FileError::Uncopyable { path: path.display().to_string() },
            })?;
            let meta = std::fs::symlink_metadata(&from).map_err(err)?;
            if meta.is_dir() { std::fs::remove_dir_all(&from) } else { std::fs::remove_file(&from) }.map_err(err)
        }
        other => other.map_err(err),
    }
}

enum CopyError {
    Io(io::Error),
    Uncopyable(PathBuf),
}

impl From<io::Error> for CopyError {
    fn from(e: io::Error) -> Self {
        CopyError::Io(e)
    }
}

/// Copies `from` to the new path `to`, links as links; on failure removes what it made.
fn copy_tree(from: &Path, to: &Path) -> Result<(), CopyError> {
    let result = copy_entry(from, to);
    if result.is_err() {
        let made = std::fs::symlink_metadata(to);
        let _ = if made.is_ok_and(|m| m.is_dir()) { std::fs::remove_dir_all(to) } else { std::fs::remove_file(to) };
    }
    result
}

/// One entry of [`copy_tree`], recursing into directories (never through links).
fn copy_entry(from: &Path, to: &Path) -> Result<(), CopyError> {
    let meta = std::fs::symlink_metadata(from)?;
    let ft = meta.file_type();
    if ft.is_dir() {
        std::fs::create_dir(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_entry(&entry.path(), &to.join(entry.file_name()))?;
        }
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)?;
    } else if ft.is_file() {
        std::fs::copy(from, to)?;
    } else {
        return Err(CopyError::Uncopyable(from.to_path_buf()));
    }
    Ok(())
}

/// `POST /files/permissions`: chmod and/or chown.
pub fn set_permissions(
    workdir: &Path,
    path: Option<&str>,
    owner: Option<&str>,
    group: Option<&str>,
    mode: Option<&str>,
) -> Result<(), FileError> {
    let p = resolve(workdir, Some(required(path, "path")?));
    let err = |source| FileError::SetPermissions { path: p.display().to_string(), source };
    std::fs::metadata(&p).map_err(|source| FileError::Stat { path: p.display().to_string(), source })?;
    if mode.is_some_and(|m| !m.trim().is_empty()) {
        let m = parse_mode(mode, 0)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).map_err(err)?;
    }
    let owner = owner.filter(|o| !o.is_empty());
    let group = group.filter(|g| !g.is_empty());
    if owner.is_some() || group.is_some() {
        let users = Users::load();
        // A name from /etc/passwd or /etc/group, else a numeric id.
        let uid = owner
            .map(|o| {
                users
                    .uid(o)
                    .or_else(|| o.parse().ok())
                    .ok_or_else(|| FileError::UnknownId { what: "user", name: o.into() })
            })
            .transpose()?;
        let gid = group
            .map(|g| {
                users
                    .gid(g)
                    .or_else(|| g.parse().ok())
                    .ok_or_else(|| FileError::UnknownId { what: "group", name: g.into() })
            })
            .transpose()?;
        std::os::unix::fs::chown(&p, uid, gid).map_err(err)?;
    }
    Ok(())
}

/// Streams one multipart field into `dest` (creating parents); returns the byte count.
async fn write_field(field: &mut Field<'_>, dest: &Path) -> Result<u64, FileError> {
    let err = |source| FileError::Write { path: dest.display().to_string(), source };
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent).await.map_err(err)?;
    }
    let mut file = tokio::fs::File::create(dest).await.map_err(err)?;
    let mut bytes = 0u64;
    while let Some(chunk) = field.chunk().await.map_err(FileError::Multipart)? {
        file.write_all(&chunk).await.map_err(err)?;
        bytes += chunk.len() as u64;
    }
    file.flush().await.map_err(err)?;
    Ok(bytes)
}

/// `files[3].path` → (3, "path").
fn parse_field_name(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("files[")?;
    let (index, attr) = rest.split_once("].")?;
    Some((index.parse().ok()?, attr))
}

#[derive(Default)]
struct Slot {
    path: Option<String>,
    /// A file part that came before its path, spooled to a temporary file.
    spooled: Option<PathBuf>,
    written: bool,
}

/// `POST /files/bulk-upload`. The destination of `files[i].file` is taken only from the
/// `files[i].path` field (the part's filename is ignored): Python sends all paths first, the
/// TypeScript SDK interleaves them. A file part whose path has not arrived yet is spooled to a
/// temporary file and moved into place when it does.
pub async fn bulk_upload(workdir: &Path, mut mp: Multipart) -> Result<BulkUploadResult, FileError> {
    let mut slots: BTreeMap<usize, Slot> = BTreeMap::new();
    let mut result = BulkUploadResult::default();
    while let Some(mut field) = mp.next_field().await.map_err(FileError::Multipart)? {
        let Some((i, attr)) = field.name().and_then(parse_field_name).map(|(i, a)| (i, a.to_string())) else {
            tracing::debug!(name = ?field.name(), "ignoring unknown multipart field");
            continue;
        };
        let slot = slots.entry(i).or_default();
        match attr.as_str() {
            "path" => {
                let path = field.text().await.map_err(FileError::Multipart)?;
                if let Some(spool) = slot.spooled.take() {
                    let dest = resolve(workdir, Some(&path));
                    match place_spooled(&spool, &dest).await {
                        Ok(bytes) => result.files.push(UploadedEntry { path: path.clone(), bytes }),
                        Err(e) => result.errors.push(format!("files[{i}]: {}", crate::error::chain(&e))),
                    }
                    slot.written = true;
                }
                slot.path = Some(path);
            }
            "file" => {
                if slot.written || slot.spooled.is_some() {
                    result.errors.push(format!("files[{i}]: more than one file part"));
                    continue;
                }
                match slot.path.clone() {
                    Some(path) => {
                        let dest = resolve(workdir, Some(&path));
                        match write_field(&mut field, &dest).await {
                            Ok(bytes) => result.files.push(UploadedEntry { path, bytes }),
                            Err(e @ FileError::Multipart(_)) => return Err(e),
                            Err(e) => result.errors.push(format!("files[{i}]: {}", crate::error::chain(&e))),
                        }
                        slot.written = true;
                    }
                    None => {
                        let spool =
                            std::env::temp_dir().join(format!(".cove-upload-{}", crate::sys::new_uuid().simple()));
                        match write_field(&mut field, &spool).await {
                            Ok(_) => slot.spooled = Some(spool),
                            Err(e @ FileError::Multipart(_)) => return Err(e),
                            Err(e) => {
                                result.errors.push(format!("files[{i}]: {}", crate::error::chain(&e)));
                                slot.written = true;
                            }
                        }
                    }
                }
            }
            other => tracing::debug!(index = i, attr = other, "ignoring unknown multipart attribute"),
        }
    }
    for (i, slot) in slots {
        if let Some(spool) = slot.spooled {
            let _ = tokio::fs::remove_file(spool).await;
            result.errors.push(format!("files[{i}]: no files[{i}].path field names the destination"));
        } else if !slot.written && slot.path.is_some() {
            result.errors.push(format!("files[{i}]: no files[{i}].file part"));
        }
    }
    Ok(result)
}

async fn place_spooled(spool: &Path, dest: &Path) -> Result<u64, FileError> {
    let err = |source| FileError::Write { path: dest.display().to_string(), source };
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent).await.map_err(err)?;
    }
    let bytes = tokio::fs::metadata(spool).await.map_err(err)?.len();
    if tokio::fs::rename(spool, dest).await.is_err() {
        tokio::fs::copy(spool, dest).await.map_err(err)?;
        let _ = tokio::fs::remove_file(spool).await;
    }
    Ok(bytes)
}

/// `POST /files/upload-v2?path=`: the `file` part goes to `path`.
pub async fn upload_v2(workdir: &Path, path: Option<&str>, mut mp: Multipart) -> Result<UploadedFile, FileError> {
    let path = required(path, "path")?.to_string();
    let dest = resolve(workdir, Some(&path));
    while let Some(mut field) = mp.next_field().await.map_err(FileError::Multipart)? {
        if field.name() == Some("file") {
            write_field(&mut field, &dest).await?;
            let name = dest.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            return Ok(UploadedFile { name, path, kind: "file" });
        }
    }
    Err(FileError::NoFilePart)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_give_the_index_and_the_attribute() {
        assert_eq!(parse_field_name("files[12].path"), Some((12, "path")));
        assert_eq!(parse_field_name("files[0].file"), Some((0, "file")));
        assert_eq!(parse_field_name("file"), None);
        assert_eq!(parse_field_name("files[x].file"), None);
    }

    #[test]
    fn modes_render_like_ls() {
        assert_eq!(mode_string(libc::S_IFREG | 0o644), "-rw-r--r--");
        assert_eq!(mode_string(libc::S_IFDIR | 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(libc::S_IFDIR | 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(libc::S_IFREG | 0o4750), "-rwsr-x---");
    }

    #[test]
    fn a_non_empty_directory_needs_recursive() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("d/e")).expect("mkdir");
        let e = delete(dir.path(), Some("d"), false).expect_err("refused");
        assert!(matches!(e, FileError::DirectoryNotEmpty { .. }), "{e:?}");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        delete(dir.path(), Some("d"), true).expect("recursive delete");
        assert!(!dir.path().join("d").exists());
    }

    #[test]
    fn a_folder_gets_the_requested_mode_and_nested_parents() {
        let dir = tempfile::tempdir().expect("tempdir");
        create_folder(dir.path(), Some("a/b"), Some("700")).expect("mkdir");
        let meta = std::fs::metadata(dir.path().join("a/b")).expect("stat");
        assert_eq!(meta.mode() & 0o777, 0o700);
        assert!(matches!(create_folder(dir.path(), Some("x"), Some("9z")), Err(FileError::InvalidMode { .. })));
    }

    #[test]
    fn a_move_across_filesystems_copies_the_tree_with_links_as_links_then_removes_the_source() {
        let shm = Path::new("/dev/shm");
        let dir = tempfile::tempdir().expect("tempdir");
        let Ok(src) = tempfile::tempdir_in(shm) else {
            eprintln!("skipped: no /dev/shm");
            return;
        };
        let dev = |p: &Path| std::fs::metadata(p).expect("stat").dev();
        if dev(src.path()) == dev(dir.path()) {
            eprintln!("skipped: /dev/shm and the temporary directory share a filesystem");
            return;
        }
        let tree = src.path().join("t");
        std::fs::create_dir_all(tree.join("d")).expect("mkdir");
        std::fs::write(tree.join("d/f"), "data").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", tree.join("l")).expect("symlink");
        std::fs::set_permissions(tree.join("d"), std::fs::Permissions::from_mode(0o500)).expect("chmod");
        move_path(dir.path(), tree.to_str(), Some("moved")).expect("moves");
        let moved = dir.path().join("moved");
        assert_eq!(std::fs::read_to_string(moved.join("d/f")).expect("read"), "data");
        assert_eq!(std::fs::read_link(moved.join("l")).expect("link"), Path::new("/etc/passwd"));
        assert_eq!(std::fs::metadata(moved.join("d")).expect("stat").mode() & 0o777, 0o500);
        assert!(!tree.exists());
        assert_eq!(parse_bool(Some("TRUE"), "recursive").ok(), Some(true));
        assert!(matches!(parse_bool(Some("yes"), "recursive"), Err(FileError::InvalidBool { .. })));
        std::fs::set_permissions(moved.join("d"), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }

    #[test]
    fn move_refuses_to_overwrite_and_a_missing_source_is_not_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a"), "1").expect("write");
        std::fs::write(dir.path().join("b"), "2").expect("write");
        assert_eq!(move_path(dir.path(), Some("a"), Some("b")).expect_err("exists").kind(), ErrorKind::AlreadyExists);
        assert_eq!(move_path(dir.path(), Some("zz"), Some("c")).expect_err("missing").kind(), ErrorKind::NotFound);
        move_path(dir.path(), Some("a"), Some("c")).expect("moves");
        assert_eq!(std::fs::read_to_string(dir.path().join("c")).expect("read"), "1");
    }
}
