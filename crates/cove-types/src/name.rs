//! Snapshot names.

use std::fmt;

/// A validated snapshot name: `^[a-zA-Z0-9_.\-:]+(/[a-zA-Z0-9_.\-:]+)*(@sha256:[a-f0-9]{64})?$`,
/// at most 255 characters (the rule Daytona applies, so names that work there work here).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SnapshotName(String);

/// Why a snapshot name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseNameError {
    /// Empty names are not names.
    #[error("snapshot name must not be empty")]
    Empty,
    /// Longer than 255 characters.
    #[error("snapshot name is {len} characters long; the maximum is 255")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// A character or a shape the rule does not allow.
    #[error(
        "invalid snapshot name {name:?}: use letters, digits and _ . - : in parts separated by single slashes, optionally ending in @sha256:<digest>"
    )]
    Invalid {
        /// The refused name.
        name: String,
    },
}

impl SnapshotName {
    /// Validates `s` as a snapshot name.
    pub fn parse(s: &str) -> Result<Self, ParseNameError> {
        if s.is_empty() {
            return Err(ParseNameError::Empty);
        }
        if s.len() > 255 {
            return Err(ParseNameError::TooLong { len: s.len() });
        }
        let invalid = || ParseNameError::Invalid { name: s.to_string() };
        let (body, digest) = match s.split_once('@') {
            Some((b, d)) => (b, Some(d)),
            None => (s, None),
        };
        if let Some(d) = digest {
            let hex = d.strip_prefix("sha256:").ok_or_else(invalid)?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(invalid());
            }
        }
        let part_ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-:".contains(&b));
        if !body.split('/').all(part_ok) {
            return Err(invalid());
        }
        Ok(SnapshotName(s.to_string()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_seed_are_accepted() {
        for ok in ["my-awesome-snapshot", "alpine-minimal", "my-gpu-snapshot", "org/team:v1.2", "a_b.c"] {
            SnapshotName::parse(ok).unwrap();
        }
    }

    #[test]
    fn names_with_spaces_slashes_at_the_ends_or_bad_digests_are_refused() {
        for bad in ["", "has space", "/lead", "trail/", "a//b", "x@sha256:12", "ünïcode", "a\nb"] {
            assert!(SnapshotName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(SnapshotName::parse(&"a".repeat(256)), Err(ParseNameError::TooLong { len: 256 })));
    }
}
