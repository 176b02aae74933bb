//! Image references (`python:3.12`, `ghcr.io/o/i:1@sha256:…`), normalised as Docker does.

use std::fmt;

use crate::digest::Digest;

/// The registry host that short names such as `python:3.12` refer to.
pub const DOCKER_HUB: &str = "docker.io";

/// Tags that name a moving target; snapshots must be pinned, so these are refused.
pub const FLOATING_TAGS: [&str; 3] = ["latest", "lts", "stable"];

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host with optional port, e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/python`.
    pub repository: String,
    /// Tag, if given.
    pub tag: Option<String>,
    /// Digest, if given.
    pub digest: Option<Digest>,
}

/// Why an image reference was refused. Each message names the reference and says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseRefError {
    /// Empty input.
    #[error("image name must not be empty")]
    Empty,
    /// Bad characters or shape.
    #[error("invalid image name {input:?}: {why}")]
    Invalid {
        /// The refused text.
        input: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Neither tag nor digest.
    #[error("image name {input:?} must include a tag (e.g. ubuntu:22.04) or a digest (@sha256:...)")]
    MissingTag {
        /// The refused text.
        input: String,
    },
    /// `latest`, `lts` or `stable`.
    #[error(
        "image {input:?} uses the tag \"{tag}\", which is not allowed: the latest, lts and stable tags move, so pin a version tag or a digest"
    )]
    FloatingTag {
        /// The refused text.
        input: String,
        /// The refused tag.
        tag: String,
    },
}

impl ImageRef {
    /// Parses a reference the way `docker pull` does: a first component containing `.` or
    /// `:`, or equal to `localhost`, is a registry host; otherwise the image is on Docker Hub,
    /// where one-component names live under `library/`.
    pub fn parse(input: &str) -> Result<Self, ParseRefError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ParseRefError::Empty);
        }
        let invalid = |why| ParseRefError::Invalid { input: input.to_string(), why };
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("it contains whitespace"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let d: Digest = d.parse().map_err(|_| {
                    invalid("the digest must be sha256:<64 lowercase hex> or sha512:<128 lowercase hex>")
                })?;
                (r, Some(d))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                return Err(invalid("the tag may use letters, digits, _ . - (at most 128, not starting with . or -)"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                let host =
                    if first == "index.docker.io" || first == "registry-1.docker.io" { DOCKER_HUB } else { first };
                (host.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if registry.bytes().any(|b| !(b.is_ascii_alphanumeric() || b".-:[]".contains(&b))) {
            return Err(invalid("the registry host may use letters, digits, . - and a :port"));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !repository.split('/').all(valid_path_component) {
            return Err(invalid(
                "repository names use lowercase letters, digits and single separators (. _ __ -) between them",
            ));
        }
        Ok(ImageRef { registry, repository, tag: tag.map(str::to_string), digest })
    }

    /// Parses and requires a pinned version: a tag other than latest/lts/stable, or a digest.
    pub fn parse_pinned(input: &str) -> Result<Self, ParseRefError> {
        let r = Self::parse(input)?;
        match (&r.tag, &r.digest) {
            (None, None) => Err(ParseRefError::MissingTag { input: input.to_string() }),
            (Some(t), None) if FLOATING_TAGS.contains(&t.to_ascii_lowercase().as_str()) => {
                Err(ParseRefError::FloatingTag { input: input.to_string(), tag: t.clone() })
            }
            _ => Ok(r),
        }
    }

    /// What to ask the registry for: the digest when pinned by digest, else the tag.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }
}

fn valid_path_component(c: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_to_docker_hub_library() {
        let r = ImageRef::parse("python:3.12").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "library/python", Some("3.12"))
        );
        assert_eq!(r.to_string(), "docker.io/library/python:3.12");
        let r = ImageRef::parse("daytonaio/sandbox:0.4.3").unwrap();
        assert_eq!(r.repository, "daytonaio/sandbox");
    }

    #[test]
    fn hosts_with_dots_ports_or_localhost_are_registries() {
        let r = ImageRef::parse("127.0.0.1:5000/test/busybox:1.0").unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("127.0.0.1:5000", "test/busybox"));
        let r = ImageRef::parse("us-central1-docker.pkg.dev/proj/repo/img:2").unwrap();
        assert_eq!(r.registry, "us-central1-docker.pkg.dev");
        assert_eq!(r.repository, "proj/repo/img");
        let r = ImageRef::parse("localhost/x:1").unwrap();
        assert_eq!(r.registry, "localhost");
        let r = ImageRef::parse("index.docker.io/library/alpine:3.21").unwrap();
        assert_eq!(r.registry, "docker.io");
    }

    #[test]
    fn digests_are_kept_and_asked_for_in_preference_to_tags() {
        let d = format!("sha256:{}", "0".repeat(64));
        let r = ImageRef::parse(&format!("alpine:3.21@{d}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("3.21"));
        assert_eq!(r.reference(), d);
        ImageRef::parse_pinned(&format!("alpine@{d}")).unwrap();
    }

    #[test]
    fn a_tag_or_digest_is_required() {
        let e = ImageRef::parse_pinned("ubuntu").unwrap_err();
        assert!(matches!(e, ParseRefError::MissingTag { .. }));
        assert!(e.to_string().contains("must include a tag"), "{e}");
        // A registry port is not a tag.
        assert!(matches!(ImageRef::parse_pinned("localhost:5000/ubuntu"), Err(ParseRefError::MissingTag { .. })));
    }

    #[test]
    fn latest_lts_and_stable_are_refused_naming_the_tag() {
        for tag in ["latest", "lts", "stable", "LATEST"] {
            let e = ImageRef::parse_pinned(&format!("node:{tag}")).unwrap_err();
            assert!(e.to_string().contains(&format!("\"{tag}\"")), "{e}");
        }
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in ["", "UPPER/case:1", "a b:1", "x:tag with space", "x:-bad", "x@sha256:zz", "a//b:1", "a/-b:1", "x:"]
        {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?}");
        }
    }
}
