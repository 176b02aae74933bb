//! The server's CA as `cove login` pins it: fetched over the authenticated API
//! (`GET /object-storage/ca`) or given out of band with `--ca-file` (then it must be the one
//! the server serves), kept in the CLI's config, and trusted besides the system's roots for
//! object storage and the registry. A different CA at a later login of the same server is
//! shown and refused unless `--trust-new-ca` accepts it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::client::{ApiError, Client};

/// A CA certificate and its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PinnedCa {
    /// PEM.
    pub certificate: String,
    /// Hex sha256 of the certificate's DER, as `cove tls init` prints it on the server.
    pub sha256: String,
}

/// Why a CA could not be pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// `--ca-file` could not be read.
    #[error("read the CA file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file or answer held no PEM certificate.
    #[error("{what} holds no PEM certificate ({reason})")]
    NotACertificate {
        /// The file or the server's answer.
        what: String,
        /// What the PEM reader said.
        reason: String,
    },
    /// Asking the server for its CA failed.
    #[error("fetch the server's CA")]
    Fetch(#[source] anyhow::Error),
    /// `--ca-file` is not the CA the server serves.
    #[error(
        "CA fingerprint mismatch: {path} has sha256 {given}, but the server serves a CA with sha256 {served}; \
         nothing was saved (check that the file is this server's CA: `cove tls init` prints its fingerprint)"
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// Its fingerprint.
        given: String,
        /// The served CA's fingerprint.
        served: String,
    },
    /// The server's CA is not the one pinned at an earlier login.
    #[error(
        "the server's CA changed: pinned sha256 {pinned}, now sha256 {now}; nothing was saved. \
         If the server's CA was replaced on purpose, log in again with --trust-new-ca to accept it"
    )]
    Changed {
        /// The pinned fingerprint.
        pinned: String,
        /// The served one.
        now: String,
    },
}

/// `GET /object-storage/ca`.
#[derive(Debug, Deserialize)]
struct Served {
    certificate: String,
}

impl PinnedCa {
    /// A CA from PEM text; the fingerprint is computed here, never taken from the server.
    pub fn from_pem(pem: String, what: &str) -> Result<Self, PinError> {
        let sha256 = cove_server::tls::pem_fingerprint(pem.as_bytes())
            .map_err(|e| PinError::NotACertificate { what: what.to_string(), reason: e.to_string() })?;
        Ok(PinnedCa { certificate: pem, sha256 })
    }

    /// Reads `--ca-file`.
    pub fn from_file(path: &Path) -> Result<Self, PinError> {
        let pem =
            std::fs::read_to_string(path).map_err(|source| PinError::Read { path: path.to_path_buf(), source })?;
        Self::from_pem(pem, &path.display().to_string())
    }
}

/// The server's CA, `None` from a server that does not serve one (404).
pub async fn fetch(c: &Client) -> Result<Option<PinnedCa>, PinError> {
    match c.get_json::<Served>("/object-storage/ca").await {
        Ok(s) => PinnedCa::from_pem(s.certificate, "the server's CA answer").map(Some),
        Err(e) if e.downcast_ref::<ApiError>().is_some_and(|a| a.status == reqwest::StatusCode::NOT_FOUND) => Ok(None),
        Err(e) => Err(PinError::Fetch(e)),
    }
}

/// What to pin: the served CA, checked against `--ca-file` when one is given (a file is used as
/// is only when the server serves none), and against the `earlier` pin of the same server
/// unless `accept_new`.
pub fn choose(
    served: Option<PinnedCa>,
    file: Option<(&Path, PinnedCa)>,
    earlier: Option<&PinnedCa>,
    accept_new: bool,
) -> Result<Option<PinnedCa>, PinError> {
    let chosen = match (served, file) {
        (Some(s), Some((path, f))) if s.sha256 != f.sha256 => {
            return Err(PinError::Mismatch { path: path.to_path_buf(), given: f.sha256, served: s.sha256 });
        }
        (_, Some((_, f))) => Some(f),
        (s, None) => s,
    };
    if let (Some(old), Some(new)) = (earlier, &chosen)
        && old.sha256 != new.sha256
        && !accept_new
    {
        return Err(PinError::Changed { pinned: old.sha256.clone(), now: new.sha256.clone() });
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh CA, made the way a server makes its own.
    fn ca(name: &str) -> PinnedCa {
        let d = tempfile::tempdir().unwrap();
        let info = cove_server::tls::ensure_ca(d.path()).unwrap();
        let pinned = PinnedCa::from_file(&info.cert_path).unwrap();
        assert_eq!(pinned.sha256, info.fingerprint, "{name}: the same fingerprint as the server computes");
        pinned
    }

    #[test]
    fn the_served_ca_is_pinned_when_no_file_is_given() {
        let a = ca("a");
        assert_eq!(choose(Some(a.clone()), None, None, false).unwrap(), Some(a));
        assert_eq!(choose(None, None, None, false).unwrap(), None);
    }

    #[test]
    fn a_ca_file_that_is_not_the_served_ca_is_refused_naming_both_fingerprints() {
        let (a, b) = (ca("a"), ca("b"));
        let e = choose(Some(a.clone()), Some((Path::new("/tmp/ca.pem"), b.clone())), None, false).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("fingerprint mismatch") && msg.contains(&a.sha256) && msg.contains(&b.sha256), "{msg}");
        let same = choose(Some(a.clone()), Some((Path::new("/tmp/ca.pem"), a.clone())), None, false).unwrap();
        assert_eq!(same, Some(a));
        assert_eq!(choose(None, Some((Path::new("/x"), b.clone())), None, false).unwrap(), Some(b), "used as is");
    }

    #[test]
    fn a_changed_ca_is_refused_unless_accepted_explicitly() {
        let (a, b) = (ca("a"), ca("b"));
        let e = choose(Some(b.clone()), None, Some(&a), false).unwrap_err();
        assert!(matches!(e, PinError::Changed { .. }) && e.to_string().contains("--trust-new-ca"), "{e}");
        assert_eq!(choose(Some(b.clone()), None, Some(&a), true).unwrap(), Some(b));
        assert_eq!(choose(Some(a.clone()), None, Some(&a), false).unwrap(), Some(a), "the same CA again");
    }

    #[test]
    fn text_without_a_certificate_is_refused() {
        let e = PinnedCa::from_pem("not pem".into(), "ca.txt").unwrap_err();
        assert!(e.to_string().contains("ca.txt holds no PEM certificate"), "{e}");
    }
}
