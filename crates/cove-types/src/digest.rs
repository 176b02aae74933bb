//! Content digests (`sha256:<64 hex>`).

use std::fmt;
use std::str::FromStr;

/// A validated content digest. Only `sha256` and `sha512` are accepted, with lowercase hex
/// of the right length, so a digest can be used as a file name without further checks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: &'static str,
    hex: String,
}

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {input:?}: expected sha256:<64 lowercase hex> or sha512:<128 lowercase hex>")]
pub struct ParseDigestError {
    /// The refused text.
    pub input: String,
}

impl Digest {
    /// Builds a sha256 digest from 32 raw bytes.
    pub fn sha256_from_bytes(bytes: &[u8; 32]) -> Self {
        let mut hex = String::with_capacity(64);
        for b in bytes {
            hex.push_str(&format!("{b:02x}"));
        }
        Digest { algorithm: "sha256", hex }
    }

    /// The algorithm name (`sha256`).
    pub fn algorithm(&self) -> &str {
        self.algorithm
    }

    /// The hex part, safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl FromStr for Digest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseDigestError { input: s.to_string() };
        let (alg, hex) = s.split_once(':').ok_or_else(err)?;
        let (algorithm, len) = match alg {
            "sha256" => ("sha256", 64),
            "sha512" => ("sha512", 128),
            _ => return Err(err()),
        };
        if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(err());
        }
        Ok(Digest { algorithm, hex: hex.to_string() })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sha256_digest_round_trips() {
        let s = format!("sha256:{}", "ab".repeat(32));
        let d: Digest = s.parse().unwrap();
        assert_eq!(d.to_string(), s);
        assert_eq!(d.hex().len(), 64);
    }

    #[test]
    fn digests_that_could_escape_a_directory_are_refused() {
        for bad in
            ["sha256:../../etc/passwd", "sha256:ABCD", "md5:abcd", "sha256", &format!("sha256:{}", "g".repeat(64))]
        {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }
}
