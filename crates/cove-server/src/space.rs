//! Room on the data filesystem when it is full.
//!
//! Contract:
//! - [`init`] (once, at start) records the data dir and makes `<data-dir>/space-reserve`: a
//!   [`RESERVE_BYTES`] file (0600, made with `O_EXCL`, so never through a link; every block
//!   allocated)
//!   that holds space nobody else may take.
//! - A write that must succeed on a full disk (a sandbox delete: SQLite needs room for its
//!   WAL) calls [`release`] when it failed for lack of space and tries once more; the file is
//!   made again by [`restore`] once a delete freed space.
//! - [`full_message`] says that the data disk is full and where (path, free bytes): what an
//!   API error answers (507) instead of a bare 500.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Size of the reserve file: room for many SQLite write transactions.
pub const RESERVE_BYTES: u64 = 64 << 20;
const RESERVE_FILE: &str = "space-reserve";

static DATA_DIR: OnceLock<PathBuf> = OnceLock::new();
static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Records the data dir and makes the reserve file when missing (best effort: on a full disk
/// it is made later by [`restore`]).
pub fn init(data_dir: &Path) {
    let _ = DATA_DIR.set(data_dir.to_path_buf());
    restore();
}

fn reserve_path() -> Option<PathBuf> {
    DATA_DIR.get().map(|d| d.join(RESERVE_FILE))
}

/// Deletes the reserve file so that a write can proceed on a full disk; whether there was one.
pub fn release() -> bool {
    let Some(path) = reserve_path() else { return false };
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    match std::fs::remove_file(&path) {
        Ok(()) => {
            tracing::warn!(path = %path.display(), bytes = RESERVE_BYTES, "data disk full: released the space reserve");
            true
        }
        Err(_) => false,
    }
}

/// Makes the reserve file again if it is missing and there is room for it.
pub fn restore() {
    let Some(path) = reserve_path() else { return };
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == RESERVE_BYTES) {
        return;
    }
    let _ = std::fs::remove_file(&path);
    let made = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).and_then(|f| {
        cove_runtime::disk::allocate(&f, RESERVE_BYTES)?;
        f.set_len(RESERVE_BYTES)?;
        f.sync_all()
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        tracing::warn!(path = %path.display(), error = %e, "cannot make the space reserve yet");
    }
}

/// Whether `e` or a cause is a full disk: ENOSPC, or SQLite's "database or disk is full".
pub fn is_full(e: &(dyn std::error::Error + 'static)) -> bool {
    if cove_runtime::disk::is_no_space(e) {
        return true;
    }
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(sqlx::Error::Database(d)) = c.downcast_ref::<sqlx::Error>()
            // SQLITE_FULL (13) and its extended codes (13 | n << 8).
            && d.code().and_then(|code| code.parse::<u32>().ok()).is_some_and(|n| n & 0xff == 13)
        {
            return true;
        }
        if let Some(sqlx::Error::Io(io)) = c.downcast_ref::<sqlx::Error>()
            && io.kind() == std::io::ErrorKind::StorageFull
        {
            return true;
        }
        cur = c.source();
    }
    false
}

/// "the data disk is full (PATH: N bytes free)" for error messages.
pub fn full_message() -> String {
    match DATA_DIR.get() {
        Some(dir) => {
            let free = cove_runtime::disk::free_bytes(dir).map_or_else(|_| "unknown".into(), |b| b.to_string());
            format!(
                "the data disk is full ({}: {free} bytes free); delete sandboxes, snapshots or uploads to make room",
                dir.display()
            )
        }
        None => "the data disk is full".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_space_left_is_recognised_through_a_cause_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("write thing")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::from_raw_os_error(28 /* ENOSPC */));
        assert!(is_full(&e));
        let e = Outer(std::io::Error::from_raw_os_error(13 /* EACCES */));
        assert!(!is_full(&e));
    }
}
