//! 32-byte secrets kept in the data directory (mode 0600), made on first start: the S3
//! credential key, the registry token key and the key that seals stored passwords.

use std::path::{Path, PathBuf};

/// Why a key file could not be had.
#[derive(Debug)]
pub enum KeyFileError {
    /// Unreadable, or not exactly 32 bytes.
    Read(PathBuf, std::io::Error),
    /// A new key could not be written.
    Write(PathBuf, std::io::Error),
    /// The system's random source failed.
    Random(getrandom::Error),
}

/// Reads the key at `path`, or creates it with fresh random bytes when it does not exist;
/// `what` names it in the log line of a creation.
pub fn load_or_create(path: &Path, what: &str) -> Result<[u8; 32], KeyFileError> {
    match std::fs::read(path) {
        Ok(bytes) => bytes.try_into().map_err(|_| {
            KeyFileError::Read(
                path.to_path_buf(),
                std::io::Error::new(std::io::ErrorKind::InvalidData, "expected exactly 32 bytes"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(KeyFileError::Random)?;
            crate::tls::write_private(path, &key).map_err(|e| KeyFileError::Write(path.to_path_buf(), e))?;
            tracing::info!(path = %path.display(), "created {what}");
            Ok(key)
        }
        Err(e) => Err(KeyFileError::Read(path.to_path_buf(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_once_private_and_then_read_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.key");
        let a = load_or_create(&p, "a test key").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create(&p, "a test key").unwrap(), a);
        std::fs::write(&p, b"short").unwrap();
        assert!(matches!(load_or_create(&p, "a test key"), Err(KeyFileError::Read(..))));
    }
}
