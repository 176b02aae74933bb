//! What a `/v2/…` path names, parsed from the right (repository names contain `/`), and the
//! distribution spec's rules for repository names and tags.

use cove_types::Digest;

/// The longest repository name accepted (the distribution spec's recommended limit).
pub const MAX_NAME_LEN: usize = 255;

/// The resource a `/v2/` path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/` itself.
    Base,
    /// `/v2/_catalog`.
    Catalog,
    /// `/v2/<name>/tags/list`.
    Tags(String),
    /// `/v2/<name>/manifests/<tag or digest>`.
    Manifest(String, Reference),
    /// `/v2/<name>/manifests/<x>` where `x` is neither a valid tag nor a valid digest: no
    /// manifest can be there (a read or delete answers 404), and none may be pushed (400).
    BadReference(String, PathError),
    /// `/v2/<name>/referrers/<digest>`.
    Referrers(String, Digest),
    /// `/v2/<name>/blobs/<digest>`.
    Blob(String, Digest),
    /// `/v2/<name>/blobs/uploads/` (start an upload).
    StartUpload(String),
    /// `/v2/<name>/blobs/uploads/<uuid>`.
    Upload(String, String),
}

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A tag.
    Tag(String),
    /// A digest.
    Digest(Digest),
}

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not a distribution API path.
    #[error("no registry endpoint at {0}")]
    Unknown(String),
    /// The repository name breaks the spec's grammar.
    #[error("invalid repository name {0:?}: lowercase letters and digits, separated by . _ __ - and /")]
    Name(String),
    /// The tag breaks the spec's grammar.
    #[error("invalid tag {0:?}: letters, digits, _ . - (at most 128, not starting with . or -)")]
    Tag(String),
    /// The digest is malformed or of an unsupported algorithm.
    #[error(
        "invalid digest {0:?}: expected sha256:<64 lowercase hex> or sha512:<128 lowercase hex> (no other algorithm is supported)"
    )]
    Digest(String),
    /// The upload id is not one this server issues.
    #[error("invalid upload id {0:?}")]
    Upload(String),
}

impl PathError {
    /// The refused path element as the client sent it.
    pub fn input(&self) -> &str {
        match self {
            PathError::Unknown(s)
            | PathError::Name(s)
            | PathError::Tag(s)
            | PathError::Digest(s)
            | PathError::Upload(s) => s,
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => write!(f, "{d}"),
        }
    }
}

/// Parses the part of the path after `/v2/`.
pub fn parse(rest: &str) -> Result<Route, PathError> {
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() {
        return Ok(Route::Base);
    }
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    let unknown = || PathError::Unknown(format!("/v2/{rest}"));
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Route::Tags(checked_name(name)?));
    }
    if let Some(name) = rest.strip_suffix("/blobs/uploads/").or_else(|| rest.strip_suffix("/blobs/uploads")) {
        return Ok(Route::StartUpload(checked_name(name)?));
    }
    let (head, last) = rest.rsplit_once('/').ok_or_else(unknown)?;
    if let Some(name) = head.strip_suffix("/blobs/uploads") {
        return Ok(Route::Upload(checked_name(name)?, checked_upload_id(last)?));
    }
    if let Some(name) = head.strip_suffix("/blobs") {
        let d = last.parse().map_err(|_| PathError::Digest(last.to_string()))?;
        return Ok(Route::Blob(checked_name(name)?, d));
    }
    if let Some(name) = head.strip_suffix("/manifests") {
        let name = checked_name(name)?;
        return Ok(match parse_reference(last) {
            Ok(r) => Route::Manifest(name, r),
            Err(e) => Route::BadReference(name, e),
        });
    }
    if let Some(name) = head.strip_suffix("/referrers") {
        let d = last.parse().map_err(|_| PathError::Digest(last.to_string()))?;
        return Ok(Route::Referrers(checked_name(name)?, d));
    }
    Err(unknown())
}

/// A tag or a digest (anything with a `:` must be a digest).
pub fn parse_reference(s: &str) -> Result<Reference, PathError> {
    if s.contains(':') {
        return s.parse().map(Reference::Digest).map_err(|_| PathError::Digest(s.to_string()));
    }
    if valid_tag(s) { Ok(Reference::Tag(s.to_string())) } else { Err(PathError::Tag(s.to_string())) }
}

fn checked_name(name: &str) -> Result<String, PathError> {
    if valid_name(name) { Ok(name.to_string()) } else { Err(PathError::Name(name.to_string())) }
}

fn checked_upload_id(id: &str) -> Result<String, PathError> {
    uuid::Uuid::parse_str(id).map(|u| u.to_string()).map_err(|_| PathError::Upload(id.to_string()))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most
/// [`MAX_NAME_LEN`] bytes. Such a name is also safe as a relative path: no component is
/// empty, `.` or `..`, or starts with `_` (which the metadata layout uses for its own files).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.split('/').all(valid_component)
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn paths_are_parsed_from_the_right_so_names_may_contain_slashes() {
        let d: Digest = D.parse().unwrap();
        assert_eq!(parse("").unwrap(), Route::Base);
        assert_eq!(parse("_catalog").unwrap(), Route::Catalog);
        assert_eq!(parse("org/a/b/tags/list").unwrap(), Route::Tags("org/a/b".into()));
        assert_eq!(parse("org/blobs/uploads/").unwrap(), Route::StartUpload("org".into()));
        assert_eq!(parse(&format!("org/x/blobs/{D}")).unwrap(), Route::Blob("org/x".into(), d.clone()));
        assert_eq!(
            parse("org/x/manifests/1.0").unwrap(),
            Route::Manifest("org/x".into(), Reference::Tag("1.0".into()))
        );
        assert_eq!(parse(&format!("o/manifests/{D}")).unwrap(), Route::Manifest("o".into(), Reference::Digest(d)));
        let id = uuid::Uuid::new_v4().to_string();
        assert_eq!(parse(&format!("o/p/blobs/uploads/{id}")).unwrap(), Route::Upload("o/p".into(), id));
        assert_eq!(parse(&format!("o/x/referrers/{D}")).unwrap(), Route::Referrers("o/x".into(), D.parse().unwrap()));
        // A repository may itself be called "blobs" or "manifests".
        assert_eq!(parse("o/blobs/tags/list").unwrap(), Route::Tags("o/blobs".into()));
    }

    #[test]
    fn repository_names_follow_the_distribution_grammar() {
        for ok in ["a", "a/b", "my-org/my__img.v2", "0ab9c1d2-1111-2222-3333-444455556666/img", "a--b"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "A", "a/", "/a", "a//b", "a/../b", "..", "a/.b", "a/_x", "a___b", "a.-b", "a b", "a:b"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(!valid_name(&"a".repeat(256)));
    }

    #[test]
    fn bad_names_tags_digests_and_upload_ids_are_refused_not_treated_as_paths() {
        assert!(matches!(parse("../../etc/tags/list"), Err(PathError::Name(_))));
        assert!(matches!(parse("a/manifests/.hidden"), Ok(Route::BadReference(_, PathError::Tag(_)))));
        assert!(matches!(parse("a/manifests/sha256:zz"), Ok(Route::BadReference(_, PathError::Digest(_)))));
        assert!(matches!(parse("UPPER/manifests/1.0"), Err(PathError::Name(_))));
        assert!(matches!(parse("a/referrers/sha256:zz"), Err(PathError::Digest(_))));
        assert!(matches!(parse("a/blobs/uploads/not-a-uuid"), Err(PathError::Upload(_))));
        assert!(matches!(parse("a/blobs/latest"), Err(PathError::Digest(_))));
        assert!(matches!(parse("a/whatever"), Err(PathError::Unknown(_))));
        assert!(valid_tag("_x.Y-1") && !valid_tag("-x") && !valid_tag(&"t".repeat(129)));
    }
}
