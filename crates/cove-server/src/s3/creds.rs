//! Temporary object-storage credentials, scoped to one organization, without a table.
//!
//! The session token carries the claims (organization, expiry, a nonce) and an HMAC over them
//! with a server secret kept in `<data-dir>/s3-credentials.key` (32 random bytes, 0600, made
//! on first start). The access key id is another HMAC of the claims, and the secret access key
//! an HMAC of the access key id, so the server rebuilds both from the token of each request:
//! nothing is stored, and credentials survive a restart until they expire.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use cove_types::ErrorKind;

use super::sigv4::{constant_time_eq, hmac_sha256};

/// How long issued credentials stay valid.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// File name of the server secret under the data directory.
pub const SECRET_FILE: &str = "s3-credentials.key";
const TOKEN_PREFIX: &str = "cove1";
/// What session tokens are signed under (see [`crate::claims`]).
const LABEL: &str = "token";

/// Issues and checks credentials with the server secret.
#[derive(Clone)]
pub struct CredentialIssuer {
    secret: [u8; 32],
    ttl: Duration,
}

/// A set of credentials as handed to a client.
#[derive(Clone)]
pub struct TemporaryCredentials {
    /// Access key id (`CV…`).
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token, sent as `x-amz-security-token`.
    pub session_token: String,
    /// The organization whose prefix they open.
    pub org_id: String,
    /// When they stop working.
    pub expires_at: DateTime<Utc>,
}

/// What a verified request may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Keys must start with `{org_id}/`.
    pub org_id: String,
    /// Expiry of the credentials.
    pub expires_at: DateTime<Utc>,
    /// The secret to check the signature with.
    pub secret_access_key: String,
}

/// A failed issue or check of credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The request carried no `x-amz-security-token`.
    #[error("the request has no x-amz-security-token: temporary credentials need their session token")]
    MissingToken,
    /// The token is not one of ours or was altered.
    #[error("the session token is malformed or was not issued by this server")]
    InvalidToken,
    /// The credentials are past their expiry.
    #[error("the credentials expired at {0}")]
    Expired(DateTime<Utc>),
    /// The access key id does not belong to the token.
    #[error("the access key id does not match the session token")]
    AccessKeyMismatch,
    /// The server secret could not be read.
    #[error("read object storage secret {path}")]
    ReadSecret {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The server secret could not be created.
    #[error("create object storage secret {path}")]
    WriteSecret {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No randomness was available.
    #[error("generate random bytes: {0}")]
    Random(getrandom::Error),
}

impl CredentialError {
    /// The class of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CredentialError::MissingToken | CredentialError::InvalidToken | CredentialError::Expired(_) => {
                ErrorKind::Unauthenticated
            }
            CredentialError::AccessKeyMismatch => ErrorKind::Unauthenticated,
            CredentialError::ReadSecret { .. } | CredentialError::WriteSecret { .. } | CredentialError::Random(_) => {
                ErrorKind::Internal
            }
        }
    }
}

impl std::fmt::Debug for CredentialIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialIssuer").field("secret", &"<redacted>").field("ttl", &self.ttl).finish()
    }
}

impl std::fmt::Debug for TemporaryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemporaryCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .field("org_id", &self.org_id)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl CredentialIssuer {
    /// Reads `<data_dir>/s3-credentials.key`, creating it (0600) on first start.
    pub fn open(data_dir: &Path, ttl: Duration) -> Result<Self, CredentialError> {
        use crate::keyfile::{KeyFileError, load_or_create};
        let secret = load_or_create(&data_dir.join(SECRET_FILE), "the object storage credential secret").map_err(
            |e| match e {
                KeyFileError::Read(path, source) => CredentialError::ReadSecret { path, source },
                KeyFileError::Write(path, source) => CredentialError::WriteSecret { path, source },
                KeyFileError::Random(e) => CredentialError::Random(e),
            },
        )?;
        Ok(Self::from_secret(secret, ttl))
    }

    /// An issuer with a given secret (tests, or a secret kept elsewhere).
    pub fn from_secret(secret: [u8; 32], ttl: Duration) -> Self {
        CredentialIssuer { secret, ttl }
    }

    /// New credentials for `org_id`, valid from `now` for the issuer's lifetime.
    pub fn issue(&self, org_id: &str, now: DateTime<Utc>) -> Result<TemporaryCredentials, CredentialError> {
        let ttl = chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::hours(1));
        let expires_at = now + ttl;
        let (claims, sealed) =
            crate::claims::seal(&self.secret, LABEL, org_id, expires_at).map_err(CredentialError::Random)?;
        let session_token = format!("{TOKEN_PREFIX}.{sealed}");
        let access_key_id = self.access_key_id(&claims);
        Ok(TemporaryCredentials {
            secret_access_key: self.secret_access_key(&access_key_id),
            access_key_id,
            session_token,
            org_id: org_id.to_string(),
            expires_at,
        })
    }

    /// Checks that `session_token` is ours, unexpired at `now`, and belongs to
    /// `access_key_id`; answers what the holder may do and the secret to verify with.
    pub fn verify(
        &self,
        access_key_id: &str,
        session_token: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Grant, CredentialError> {
        let token = session_token.ok_or(CredentialError::MissingToken)?;
        let sealed = token.strip_prefix(TOKEN_PREFIX).and_then(|t| t.strip_prefix('.'));
        let claims =
            sealed.and_then(|t| crate::claims::open(&self.secret, LABEL, t)).ok_or(CredentialError::InvalidToken)?;
        if now >= claims.expires_at {
            return Err(CredentialError::Expired(claims.expires_at));
        }
        let (org_id, expires_at, claims) = (claims.org_id, claims.expires_at, claims.text);
        if !constant_time_eq(self.access_key_id(&claims).as_bytes(), access_key_id.as_bytes()) {
            return Err(CredentialError::AccessKeyMismatch);
        }
        Ok(Grant { org_id, expires_at, secret_access_key: self.secret_access_key(access_key_id) })
    }

    fn access_key_id(&self, claims: &str) -> String {
        let mac = hmac_sha256(&self.secret, format!("access-key-id\n{claims}").as_bytes());
        format!("CV{}", hex::encode_upper(&mac[..12]))
    }

    fn secret_access_key(&self, access_key_id: &str) -> String {
        URL_SAFE_NO_PAD.encode(hmac_sha256(&self.secret, format!("secret-access-key\n{access_key_id}").as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> CredentialIssuer {
        CredentialIssuer::from_secret([7; 32], DEFAULT_TTL)
    }

    #[test]
    fn issued_credentials_verify_and_name_their_organization() {
        let now = Utc::now();
        let c = issuer().issue("org-a", now).unwrap();
        let g = issuer().verify(&c.access_key_id, Some(&c.session_token), now).unwrap();
        assert_eq!(g.org_id, "org-a");
        assert_eq!(g.secret_access_key, c.secret_access_key);
        assert_eq!(g.expires_at.timestamp(), (now + chrono::Duration::hours(1)).timestamp());
        assert!(c.access_key_id.starts_with("CV") && !c.access_key_id.contains('/'));
        assert!(!format!("{c:?}").contains(&c.secret_access_key));
    }

    #[test]
    fn credentials_stop_working_at_their_expiry() {
        let now = Utc::now();
        let c = issuer().issue("org-a", now).unwrap();
        let later = now + chrono::Duration::seconds(3601);
        assert!(matches!(
            issuer().verify(&c.access_key_id, Some(&c.session_token), later),
            Err(CredentialError::Expired(_))
        ));
    }

    #[test]
    fn a_token_is_bound_to_its_access_key_and_to_the_server_secret() {
        let now = Utc::now();
        let a = issuer().issue("org-a", now).unwrap();
        let b = issuer().issue("org-b", now).unwrap();
        assert_ne!(a.access_key_id, b.access_key_id);
        assert!(matches!(
            issuer().verify(&a.access_key_id, Some(&b.session_token), now),
            Err(CredentialError::AccessKeyMismatch)
        ));
        let other = CredentialIssuer::from_secret([8; 32], DEFAULT_TTL);
        assert!(matches!(
            other.verify(&a.access_key_id, Some(&a.session_token), now),
            Err(CredentialError::InvalidToken)
        ));
        assert!(matches!(issuer().verify(&a.access_key_id, None, now), Err(CredentialError::MissingToken)));
    }

    #[test]
    fn an_edited_token_claiming_another_organization_is_refused() {
        let now = Utc::now();
        let a = issuer().issue("org-a", now).unwrap();
        let parts: Vec<&str> = a.session_token.split('.').collect();
        let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        let forged = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(claims.replace("org-a", "org-b")), parts[2]);
        assert!(matches!(issuer().verify(&a.access_key_id, Some(&forged), now), Err(CredentialError::InvalidToken)));
    }

    #[test]
    fn the_secret_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = CredentialIssuer::open(dir.path(), DEFAULT_TTL).unwrap();
        let mode = std::fs::metadata(dir.path().join(SECRET_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let c = first.issue("org", Utc::now()).unwrap();
        let again = CredentialIssuer::open(dir.path(), DEFAULT_TTL).unwrap();
        assert!(again.verify(&c.access_key_id, Some(&c.session_token), Utc::now()).is_ok());
    }
}
