//! Secrets at rest: registry passwords and keys are sealed with AES-256-GCM under a 32-byte
//! key kept in `<data-dir>/secrets.key` (0600, made on first start).
//!
//! A sealed value is `v1:` + base64(nonce ‖ ciphertext ‖ tag), with a fresh random 96-bit
//! nonce per value. The caller passes associated data (the owning row's organization and
//! id), so a ciphertext copied into another row does not decrypt there.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cove_types::ErrorKind;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// The key file under the data directory.
pub const KEY_FILE: &str = "secrets.key";
/// Prefix of values sealed by this version.
const VERSION_PREFIX: &str = "v1:";

/// A failed secret operation.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key file exists but cannot be read or has the wrong size.
    #[error("read secret key {path}")]
    ReadKey {
        /// The key file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file could not be created.
    #[error("write secret key {path}")]
    WriteKey {
        /// The key file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The system random generator failed.
    #[error("generate random bytes: {0}")]
    Random(String),
    /// A stored value is not in a format this version reads.
    #[error("stored secret is not in a known format ({0})")]
    Format(&'static str),
    /// Authentication of a stored value failed: wrong key, tampered value or wrong row.
    #[error(
        "stored secret cannot be decrypted: the data directory's secrets.key does not match or the value was altered"
    )]
    Decrypt,
}

impl SecretError {
    /// The error class.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Internal
    }
}

/// Seals and opens secrets with the data directory's key.
pub struct SecretBox {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBox").field("key", &"<redacted>").finish()
    }
}

impl SecretBox {
    /// Reads `<data_dir>/secrets.key`, creating it (0600) on first start.
    pub fn open(data_dir: &Path) -> Result<Self, SecretError> {
        use crate::keyfile::{KeyFileError, load_or_create};
        let key =
            load_or_create(&data_dir.join(KEY_FILE), "the key that encrypts stored secrets").map_err(|e| match e {
                KeyFileError::Read(path, source) => SecretError::ReadKey { path, source },
                KeyFileError::Write(path, source) => SecretError::WriteKey { path, source },
                KeyFileError::Random(e) => SecretError::Random(e.to_string()),
            })?;
        Ok(Self::from_key(&key))
    }

    /// A box with a given key (tests).
    pub fn from_key(key: &[u8; 32]) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key is valid for AES-256-GCM");
        SecretBox { key: LessSafeKey::new(unbound) }
    }

    /// Encrypts `plain`, bound to `context` (authenticated, not stored).
    pub fn seal(&self, plain: &str, context: &str) -> Result<String, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| SecretError::Random(e.to_string()))?;
        let mut buf = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| SecretError::Decrypt)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{VERSION_PREFIX}{}", B64.encode(out)))
    }

    /// Decrypts a value made by [`SecretBox::seal`] with the same `context`.
    pub fn unseal(&self, sealed: &str, context: &str) -> Result<String, SecretError> {
        let b64 = sealed.strip_prefix(VERSION_PREFIX).ok_or(SecretError::Format("unknown version prefix"))?;
        let bytes = B64.decode(b64).map_err(|_| SecretError::Format("not base64"))?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SecretError::Format("too short"));
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Format("bad nonce"))?;
        let mut buf = rest.to_vec();
        let plain =
            self.key.open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf).map_err(|_| SecretError::Decrypt)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretError::Format("not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_sealed_secret_opens_again_with_the_same_context() {
        let b = SecretBox::from_key(&[7; 32]);
        let sealed = b.seal("hunter2", "org/reg").unwrap();
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("hunter2"));
        assert_eq!(b.unseal(&sealed, "org/reg").unwrap(), "hunter2");
    }

    #[test]
    fn each_seal_uses_a_fresh_nonce() {
        let b = SecretBox::from_key(&[7; 32]);
        assert_ne!(b.seal("same", "c").unwrap(), b.seal("same", "c").unwrap());
    }

    #[test]
    fn a_tampered_value_another_context_or_another_key_is_refused() {
        let b = SecretBox::from_key(&[7; 32]);
        let sealed = b.seal("hunter2", "org/reg").unwrap();
        let mut raw = B64.decode(sealed.strip_prefix("v1:").unwrap()).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let tampered = format!("v1:{}", B64.encode(&raw));
        assert!(matches!(b.unseal(&tampered, "org/reg"), Err(SecretError::Decrypt)));
        raw[last] ^= 1;
        raw[NONCE_LEN] ^= 0x80;
        assert!(matches!(b.unseal(&format!("v1:{}", B64.encode(&raw)), "org/reg"), Err(SecretError::Decrypt)));
        assert!(matches!(b.unseal(&sealed, "org/other"), Err(SecretError::Decrypt)));
        assert!(matches!(SecretBox::from_key(&[8; 32]).unseal(&sealed, "org/reg"), Err(SecretError::Decrypt)));
        assert!(matches!(b.unseal("v0:abc", "org/reg"), Err(SecretError::Format(_))));
        assert!(matches!(b.unseal("v1:AAAA", "org/reg"), Err(SecretError::Format(_))));
    }

    #[test]
    fn the_key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = SecretBox::open(dir.path()).unwrap().seal("pw", "c").unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(dir.path().join(KEY_FILE)).unwrap().len(), 32);
        assert_eq!(SecretBox::open(dir.path()).unwrap().unseal(&sealed, "c").unwrap(), "pw");
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let b = SecretBox::from_key(&[0x41; 32]);
        assert_eq!(format!("{b:?}"), "SecretBox { key: \"<redacted>\" }");
    }
}
