//! Durable file writes.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Writes `data` to `path` so that a crash leaves either the old file or the new one, never
/// a torn write: temp file in the same directory → fsync → rename → fsync the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let (f, tmp, dir) = write_temp(path, data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(&dir)
}

/// [`write_atomic`] for a hot path: the complete file is in place (a crashed process leaves
/// either the old file or the new one) when this returns, and the returned closure makes it
/// durable (fsync of the file, then of the directory), to be run off the caller's path. Until
/// it ran, a power loss may lose the write, as it loses a SQLite commit in WAL mode with
/// `synchronous=NORMAL`.
pub fn write_atomic_sync_later(
    path: &Path,
    data: &[u8],
) -> std::io::Result<impl FnOnce() -> std::io::Result<()> + Send + 'static> {
    let (f, tmp, dir) = write_temp(path, data)?;
    std::fs::rename(&tmp, path)?;
    Ok(move || {
        f.sync_all()?;
        sync_dir(&dir)
    })
}

/// `data` in a new temp file beside `path`: the open file, its path and the directory.
fn write_temp(path: &Path, data: &[u8]) -> std::io::Result<(std::fs::File, PathBuf, PathBuf)> {
    let dir = path.parent().unwrap_or_else(|| Path::new(".")).to_path_buf();
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    // 0600: these files are the server's own records (some hold secrets, such as a
    // sandbox's environment); nothing else on the host needs to read them.
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(data)?;
    Ok((f, tmp, dir))
}

/// fsyncs a directory so that renames and creations inside it survive a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_synced_later_is_complete_before_its_sync_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("cove-types-fs-later-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("record.json");
        write_atomic(&p, b"old record, longer").unwrap();
        let sync = write_atomic_sync_later(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        sync().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_atomic_replaces_the_whole_file_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("cove-types-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.json");
        write_atomic(&p, b"first version, longer").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
