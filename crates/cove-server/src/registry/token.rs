//! Short-lived registry push tokens (`GET /api/docker-registry/registry-push-access`), made
//! like the object-storage credentials (`crate::s3::creds`): the token carries its claims
//! (organization, expiry, nonce) and an HMAC over them with a server secret kept in
//! `<data-dir>/registry-token.key` (32 random bytes, 0600). Nothing is stored; a token works
//! until it expires, across restarts. A separate secret keeps the two kinds of credentials
//! from standing in for each other.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// How long a push token stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// File name of the server secret under the data directory.
pub const SECRET_FILE: &str = "registry-token.key";
/// Every token starts with this, so a password can be told apart from an API key.
pub const TOKEN_PREFIX: &str = "cvr1.";

/// Issues and checks push tokens.
#[derive(Clone)]
pub struct TokenIssuer {
    secret: [u8; 32],
    ttl: Duration,
}

/// A token as handed out.
#[derive(Clone)]
pub struct PushToken {
    /// The secret to present as a password or bearer token.
    pub token: String,
    /// The organization it opens.
    pub org_id: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// A failed issue or check of a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not one of ours, or altered.
    #[error("the registry token is malformed or was not issued by this server")]
    Invalid,
    /// Past its expiry.
    #[error("the registry token expired at {0}")]
    Expired(DateTime<Utc>),
    /// The secret file could not be read.
    #[error("read registry token secret {path}")]
    ReadSecret {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The secret file could not be written.
    #[error("create registry token secret {path}")]
    WriteSecret {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No randomness.
    #[error("generate random bytes: {0}")]
    Random(getrandom::Error),
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer").field("secret", &"<redacted>").field("ttl", &self.ttl).finish()
    }
}

impl std::fmt::Debug for PushToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushToken")
            .field("token", &"<redacted>")
            .field("org_id", &self.org_id)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl TokenIssuer {
    /// Reads `<data_dir>/registry-token.key`, creating it (0600) on first start.
    pub fn open(data_dir: &Path, ttl: Duration) -> Result<Self, TokenError> {
        use crate::keyfile::{KeyFileError, load_or_create};
        let secret = load_or_create(&data_dir.join(SECRET_FILE), "the registry token secret").map_err(|e| match e {
            KeyFileError::Read(path, source) => TokenError::ReadSecret { path, source },
            KeyFileError::Write(path, source) => TokenError::WriteSecret { path, source },
            KeyFileError::Random(e) => TokenError::Random(e),
        })?;
        Ok(Self::from_secret(secret, ttl))
    }

    /// An issuer with a given secret.
    pub fn from_secret(secret: [u8; 32], ttl: Duration) -> Self {
        TokenIssuer { secret, ttl }
    }

    /// A new token for `org_id`, valid from `now` for the issuer's lifetime.
    pub fn issue(&self, org_id: &str, now: DateTime<Utc>) -> Result<PushToken, TokenError> {
        let expires_at = now + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::hours(1));
        let (_, sealed) = crate::claims::seal(&self.secret, LABEL, org_id, expires_at).map_err(TokenError::Random)?;
        Ok(PushToken { token: format!("{TOKEN_PREFIX}{sealed}"), org_id: org_id.to_string(), expires_at })
    }

    /// The organization a token opens, if it is ours and unexpired at `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<String, TokenError> {
        let sealed = token.strip_prefix(TOKEN_PREFIX).ok_or(TokenError::Invalid)?;
        let claims = crate::claims::open(&self.secret, LABEL, sealed).ok_or(TokenError::Invalid)?;
        if now >= claims.expires_at {
            return Err(TokenError::Expired(claims.expires_at));
        }
        Ok(claims.org_id)
    }
}

/// What push tokens are signed under (see [`crate::claims`]).
const LABEL: &str = "registry-push";

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    fn issuer() -> TokenIssuer {
        TokenIssuer::from_secret([3; 32], TOKEN_TTL)
    }

    #[test]
    fn an_issued_token_names_its_organization_until_it_expires() {
        let now = Utc::now();
        let t = issuer().issue("org-a", now).unwrap();
        assert!(t.token.starts_with(TOKEN_PREFIX));
        assert_eq!(issuer().verify(&t.token, now).unwrap(), "org-a");
        let later = now + chrono::Duration::seconds(3601);
        assert!(matches!(issuer().verify(&t.token, later), Err(TokenError::Expired(_))));
        assert!(!format!("{t:?}").contains(&t.token));
    }

    #[test]
    fn forged_or_foreign_tokens_are_refused() {
        let now = Utc::now();
        let t = issuer().issue("org-a", now).unwrap();
        let (claims, mac) = t.token.strip_prefix(TOKEN_PREFIX).unwrap().split_once('.').unwrap();
        let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        let forged = format!("{TOKEN_PREFIX}{}.{mac}", URL_SAFE_NO_PAD.encode(claims.replace("org-a", "org-b")));
        assert!(matches!(issuer().verify(&forged, now), Err(TokenError::Invalid)));
        let other = TokenIssuer::from_secret([4; 32], TOKEN_TTL);
        assert!(matches!(other.verify(&t.token, now), Err(TokenError::Invalid)));
        assert!(matches!(issuer().verify("cove_0123", now), Err(TokenError::Invalid)));
    }
}
