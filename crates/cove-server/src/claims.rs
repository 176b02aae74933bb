//! Short-lived organization claims signed with a server key (HMAC-SHA256): the body of the
//! object storage session tokens and of the registry push tokens. The text is
//! `{orgId}\n{expiry unix seconds}\n{nonce}`, carried as `base64url(text).base64url(mac)`;
//! each kind of token signs under its own label, so one kind never passes as another.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};

use crate::s3::sigv4::{constant_time_eq, hmac_sha256};

/// What a valid sealed string says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The organization.
    pub org_id: String,
    /// When it stops being valid (not checked by [`open`]).
    pub expires_at: DateTime<Utc>,
    /// The signed text (other values may be derived from it).
    pub text: String,
}

fn mac(secret: &[u8; 32], label: &str, text: &str) -> [u8; 32] {
    hmac_sha256(secret, format!("{label}\n{text}").as_bytes())
}

/// Claims for `org_id` until `expires_at` with a fresh nonce: `(text, sealed)`.
pub fn seal(
    secret: &[u8; 32],
    label: &str,
    org_id: &str,
    expires_at: DateTime<Utc>,
) -> Result<(String, String), getrandom::Error> {
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce)?;
    let text = format!("{org_id}\n{}\n{}", expires_at.timestamp(), hex::encode(nonce));
    let sealed =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(text.as_bytes()), URL_SAFE_NO_PAD.encode(mac(secret, label, &text)));
    Ok((text, sealed))
}

/// The claims of `sealed` if this key signed it under `label` and it is well formed; the
/// caller checks the expiry.
pub fn open(secret: &[u8; 32], label: &str, sealed: &str) -> Option<Claims> {
    let (text, sig) = sealed.split_once('.')?;
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(text).ok()?).ok()?;
    let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
    if !constant_time_eq(&mac(secret, label, &text), &sig) {
        return None;
    }
    let mut fields = text.split('\n');
    let (Some(org_id), Some(expiry), Some(_nonce), None) = (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return None;
    };
    let expires_at = DateTime::<Utc>::from_timestamp(expiry.parse().ok()?, 0)?;
    Some(Claims { org_id: org_id.to_string(), expires_at, text })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_claims_open_only_with_the_same_key_and_label_and_unaltered() {
        let exp = DateTime::<Utc>::from_timestamp(2_000_000_000, 0).unwrap();
        let (text, sealed) = seal(&[1; 32], "a", "org-1", exp).unwrap();
        let c = open(&[1; 32], "a", &sealed).unwrap();
        assert_eq!((c.org_id.as_str(), c.expires_at, c.text.as_str()), ("org-1", exp, text.as_str()));
        assert!(open(&[2; 32], "a", &sealed).is_none());
        assert!(open(&[1; 32], "b", &sealed).is_none());
        let (_, mac) = sealed.split_once('.').unwrap();
        let forged = format!("{}.{mac}", URL_SAFE_NO_PAD.encode(text.replace("org-1", "org-2")));
        assert!(open(&[1; 32], "a", &forged).is_none());
        assert!(open(&[1; 32], "a", "garbage").is_none());
    }
}
