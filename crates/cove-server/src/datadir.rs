//! The data directory's own protection, applied at every start before anything is opened.
//!
//! Contract:
//! - `<data-dir>` is owned by root, group = the sandboxes' root gid, mode 0710: host users
//!   cannot list or enter it (so nothing below it, image trees with set-uid files, build
//!   contexts, logs, the database, is reachable for them), while runc's init, running as the
//!   sandbox's root inside its user namespace, can pass through to a bundle's mount sources.
//! - `cove.db` and its `-wal`/`-shm` files are 0600 (SQLite gives new WAL files the mode of
//!   the database file, so it is created 0600 before SQLite opens it).
//! - `userns-range` records the id range the data dir was first used with. Sandbox disks hold
//!   host ids of that range, so starting with another range is refused rather than giving
//!   every existing sandbox files owned by ids it does not map.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::IdRange;

/// A failed data-dir check or change.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Changing an owner or mode, or reading/writing the range record, failed.
    #[error("{op} {path}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A directory above a path runc's init must reach is closed to the sandboxes' root.
    #[error(
        "sandboxes run as host uid {uid}, which cannot reach {path}: {dir} is mode {mode:04o} owned by {owner}; \
         make it traversable (e.g. chmod o+x {dir}) or choose another location"
    )]
    Unreachable {
        /// The path that must be reachable.
        path: PathBuf,
        /// The closed directory.
        dir: PathBuf,
        /// Its mode.
        mode: u32,
        /// Its owner uid.
        owner: u32,
        /// The sandboxes' root uid.
        uid: u32,
    },
    /// The data dir was made with another id range.
    #[error(
        "the data dir was set up for sandbox ids {recorded}, not {configured}: its sandboxes' files are owned by \
         that range; start with --userns-range {recorded}"
    )]
    RangeChanged {
        /// What `userns-range` says.
        recorded: String,
        /// What this start uses.
        configured: IdRange,
    },
}

const RANGE_FILE: &str = "userns-range";
const DB_FILES: [&str; 3] = ["cove.db", "cove.db-wal", "cove.db-shm"];

/// Checks that every directory above `path` lets the sandboxes' root (host uid and gid
/// `range.start`, no capabilities over host files) search it: runc's init resolves bundle
/// and agent paths as that user.
pub fn check_reachable(path: &Path, range: IdRange) -> Result<(), DataDirError> {
    use std::os::unix::fs::MetadataExt;
    for dir in path.ancestors().skip(1) {
        let m = std::fs::metadata(dir).map_err(|source| DataDirError::Io {
            op: "stat",
            path: dir.to_path_buf(),
            source,
        })?;
        let mode = m.mode() & 0o7777;
        let ok = if m.uid() == range.start {
            mode & 0o100 != 0
        } else if m.gid() == range.start {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            return Err(DataDirError::Unreachable {
                path: path.to_path_buf(),
                dir: dir.to_path_buf(),
                mode,
                owner: m.uid(),
                uid: range.start,
            });
        }
    }
    Ok(())
}

/// Applies the contract above to `dir` for sandboxes of `range`.
pub fn secure(dir: &Path, range: IdRange) -> Result<(), DataDirError> {
    let io = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| DataDirError::Io { op, path, source }
    };
    check_reachable(dir, range)?;
    std::os::unix::fs::chown(dir, Some(0), Some(range.start)).map_err(io("chown", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710)).map_err(io("chmod", dir))?;

    let record = dir.join(RANGE_FILE);
    match std::fs::read_to_string(&record) {
        Ok(text) if text.trim() == range.to_string() => {}
        Ok(text) => return Err(DataDirError::RangeChanged { recorded: text.trim().to_string(), configured: range }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            cove_types::fs::write_atomic(&record, format!("{range}\n").as_bytes()).map_err(io("write", &record))?;
        }
        Err(e) => return Err(io("read", &record)(e)),
    }

    for name in DB_FILES {
        let p = dir.join(name);
        if name == "cove.db" {
            // Made 0600 before SQLite creates it with its default 0644.
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&p)
                .map_err(io("create", &p))?;
        }
        match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("chmod", &p)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    const RANGE: IdRange = IdRange { start: 100_000, count: 65536 };

    #[test]
    fn the_data_dir_becomes_0710_for_the_sandbox_group_and_the_database_0600() {
        let d = tempfile::tempdir().unwrap();
        secure(d.path(), RANGE).unwrap();
        let m = std::fs::metadata(d.path()).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o710, 0, 100_000));
        let db = std::fs::metadata(d.path().join("cove.db")).unwrap();
        assert_eq!(db.mode() & 0o777, 0o600);
    }

    #[test]
    fn a_data_dir_below_a_closed_directory_is_refused_with_the_directory_named() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = secure(&d.path().join("data"), RANGE).unwrap_err();
        assert!(e.to_string().contains("cannot reach") && e.to_string().contains("0700"), "{e}");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::create_dir(d.path().join("data")).unwrap();
        secure(&d.path().join("data"), RANGE).unwrap();
    }

    #[test]
    fn a_data_dir_refuses_to_start_with_another_id_range() {
        let d = tempfile::tempdir().unwrap();
        secure(d.path(), RANGE).unwrap();
        secure(d.path(), RANGE).unwrap();
        let other = IdRange { start: 300_000, count: 65536 };
        let e = secure(d.path(), other).unwrap_err();
        assert!(e.to_string().contains("--userns-range 100000:65536"), "{e}");
    }
}
