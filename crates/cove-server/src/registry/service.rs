//! The registry's rules: who may touch which repository, uploads into the shared content
//! store, manifest validation, tags, and what the garbage collector must keep.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use cove_image::ImageStore;
use cove_image::content::{ContentError, hash_like, sha256};
use cove_image::oci;
use cove_types::dto::RegistryPushAccessDto;
use cove_types::{Digest, ErrorKind, ImageRef};
use futures_util::Stream;
use serde::Deserialize;

use super::path::{MAX_NAME_LEN, PathError, Reference, valid_name, valid_tag};
use super::repos::{RepoError, Repos};
use super::token::{TOKEN_PREFIX, TOKEN_TTL, TokenError, TokenIssuer};
use super::upload::{Chunk, UploadError, Uploads};
use crate::service::keys::{KeyError, KeyService};

/// The largest manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// The registry id the push-access answer names.
pub const REGISTRY_ID: &str = "internal";

/// The system namespace: `cove/…` repositories (the images `cove image bootstrap` builds)
/// are pulled by every organization and pushed only with a token issued to an admin key.
/// Organization ids are UUIDs, so none is ever `cove`; [`owns`] does not rely on it either.
pub const SYSTEM_NAMESPACE: &str = "cove";

/// The built-in registry.
#[derive(Debug, Clone)]
pub struct RegistryService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    images: Arc<ImageStore>,
    repos: Repos,
    uploads: Uploads,
    tokens: TokenIssuer,
    keys: KeyService,
    /// `host[:port]` of the public URL: image names starting with it are served locally.
    host: String,
}

/// Who is calling: every repository they write is under `<org_id>/`, or under
/// [`SYSTEM_NAMESPACE`] for a system caller; they read those and `cove/…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's organization ([`SYSTEM_NAMESPACE`] for a system caller).
    pub org_id: String,
    /// Holds a push token for the system namespace (issued to an admin key).
    pub system: bool,
}

impl Caller {
    /// A caller of organization `org_id`.
    pub fn org(org_id: impl Into<String>) -> Self {
        Caller { org_id: org_id.into(), system: false }
    }

    /// A caller holding a system namespace token.
    pub fn system() -> Self {
        Caller { org_id: SYSTEM_NAMESPACE.to_string(), system: true }
    }
}

/// Whose push-access credentials to issue (`?namespace=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    /// The caller's organization.
    Org,
    /// [`SYSTEM_NAMESPACE`] (admin keys only).
    System,
}

/// What a request does to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads.
    Pull,
    /// Writes or deletes.
    Push,
}

/// A manifest just stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// Its digest.
    pub digest: Digest,
    /// The manifest its `subject` names, now listing it among its referrers.
    pub subject: Option<Digest>,
}

/// A manifest as served.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Its digest.
    pub digest: Digest,
    /// Its media type (the `Content-Type`).
    pub media_type: String,
    /// The exact bytes pushed.
    pub bytes: Vec<u8>,
}

/// A failed registry operation; [`RegistryError::code`] gives the distribution spec's
/// status and error code.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No or unusable credentials.
    #[error("authentication required: {0}")]
    Unauthenticated(&'static str),
    /// An API key that does not authenticate.
    #[error("authenticate with an API key")]
    Key(#[source] KeyError),
    /// A push token that does not verify.
    #[error("authenticate with a registry token")]
    Token(#[source] TokenError),
    /// Push credentials for the system namespace asked with a key that is not admin.
    #[error("push access to the system namespace {SYSTEM_NAMESPACE}/ needs an admin API key")]
    SystemNeedsAdmin,
    /// `?namespace=` names neither the organization nor the system namespace.
    #[error(
        "unknown namespace {0:?}: leave it out for your organization's, or ask for {SYSTEM_NAMESPACE:?} with an admin key"
    )]
    UnknownNamespace(String),
    /// A push outside the caller's organization.
    #[error("repository {name} is outside your organization's namespace {org_id}/")]
    Denied {
        /// The repository.
        name: String,
        /// The caller's organization.
        org_id: String,
    },
    /// A malformed path element.
    #[error(transparent)]
    Path(#[from] PathError),
    /// A name without the organization id that is too long with it.
    #[error("repository {name} is stored as {repo}, longer than {MAX_NAME_LEN} characters")]
    NameTooLong {
        /// As the client named it.
        name: String,
        /// In the caller's organization.
        repo: String,
    },
    /// No such repository (for this caller).
    #[error("repository {name} not found")]
    NameUnknown {
        /// The repository.
        name: String,
    },
    /// No such blob in the repository.
    #[error("blob {digest} not found in {name}")]
    BlobUnknown {
        /// The repository.
        name: String,
        /// The blob.
        digest: Digest,
    },
    /// No such manifest or tag.
    #[error("manifest {reference} not found in {name}")]
    ManifestUnknown {
        /// The repository.
        name: String,
        /// Tag or digest.
        reference: String,
    },
    /// An upload step failed.
    #[error("blob upload")]
    Upload(#[source] UploadError),
    /// `PUT` or monolithic `POST` without `?digest=`.
    #[error("the digest query parameter is required to complete an upload")]
    DigestMissing,
    /// A manifest pushed by digest whose bytes hash differently.
    #[error("manifest digest mismatch: the reference says {expected}, the body hashes to {actual}")]
    ManifestDigest {
        /// From the URL.
        expected: Digest,
        /// Of the body.
        actual: Digest,
    },
    /// A manifest that is not one this registry stores.
    #[error("invalid manifest: {0}")]
    ManifestInvalid(String),
    /// A manifest descriptor whose `size` is not the size of the blob it names.
    #[error("invalid manifest: {descriptor} declares {declared} bytes for {digest}, which has {actual}")]
    DescriptorSize {
        /// Which descriptor (`config`, `layers[2]`, `manifests[0]`).
        descriptor: String,
        /// The blob it names.
        digest: Digest,
        /// Its `size`.
        declared: u64,
        /// The stored blob's size.
        actual: u64,
    },
    /// A manifest referencing a blob or child manifest the repository lacks.
    #[error("manifest references {digest}, which is not in repository {name}")]
    ManifestBlobUnknown {
        /// The repository.
        name: String,
        /// What is missing.
        digest: Digest,
    },
    /// Reading or writing repository metadata failed.
    #[error("registry metadata")]
    Metadata(#[from] RepoError),
    /// Reading or writing the content store failed.
    #[error("{op}")]
    Content {
        /// What was being done.
        op: &'static str,
        /// Cause.
        #[source]
        source: ContentError,
    },
    /// Reading a blob failed.
    #[error("{op} {digest}")]
    Read {
        /// What was being done.
        op: &'static str,
        /// The blob.
        digest: Digest,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A method the endpoint does not have.
    #[error("{0} is not supported")]
    Unsupported(String),
}

impl RegistryError {
    /// The HTTP status and the distribution spec's error code.
    pub fn code(&self) -> (u16, &'static str) {
        match self {
            Self::Unauthenticated(_) => (401, "UNAUTHORIZED"),
            Self::Key(e) if e.kind() == ErrorKind::Unauthenticated => (401, "UNAUTHORIZED"),
            Self::Token(TokenError::Invalid | TokenError::Expired(_)) => (401, "UNAUTHORIZED"),
            Self::Key(_) | Self::Token(_) => (500, "UNKNOWN"),
            Self::Denied { .. } | Self::SystemNeedsAdmin => (403, "DENIED"),
            Self::UnknownNamespace(_) => (400, "NAME_INVALID"),
            Self::Path(PathError::Name(_)) | Self::NameTooLong { .. } => (400, "NAME_INVALID"),
            Self::Path(PathError::Tag(_)) => (400, "TAG_INVALID"),
            Self::Path(PathError::Digest(_)) => (400, "DIGEST_INVALID"),
            Self::Path(PathError::Upload(_)) => (404, "BLOB_UPLOAD_UNKNOWN"),
            Self::Path(PathError::Unknown(_)) => (404, "NOT_FOUND"),
            Self::NameUnknown { .. } => (404, "NAME_UNKNOWN"),
            Self::BlobUnknown { .. } => (404, "BLOB_UNKNOWN"),
            Self::ManifestUnknown { .. } => (404, "MANIFEST_UNKNOWN"),
            Self::Upload(UploadError::Unknown { .. }) => (404, "BLOB_UPLOAD_UNKNOWN"),
            Self::Upload(UploadError::OutOfOrder { .. } | UploadError::RangeLength { .. }) => {
                (416, "BLOB_UPLOAD_INVALID")
            }
            Self::Upload(UploadError::OrgLimit { .. }) => (403, "DENIED"),
            Self::Upload(UploadError::BadRange(_) | UploadError::Body(_)) => (400, "BLOB_UPLOAD_INVALID"),
            Self::Upload(UploadError::Content(ContentError::DigestMismatch { .. })) => (400, "DIGEST_INVALID"),
            Self::Upload(UploadError::Content(ContentError::SizeMismatch { .. })) => (400, "SIZE_INVALID"),
            Self::Upload(UploadError::Content(_) | UploadError::Task(_)) => (500, "UNKNOWN"),
            Self::DigestMissing | Self::ManifestDigest { .. } => (400, "DIGEST_INVALID"),
            Self::ManifestInvalid(_) | Self::DescriptorSize { .. } => (400, "MANIFEST_INVALID"),
            Self::ManifestBlobUnknown { .. } => (400, "MANIFEST_BLOB_UNKNOWN"),
            Self::Metadata(_) | Self::Content { .. } | Self::Read { .. } => (500, "UNKNOWN"),
            Self::Unsupported(_) => (405, "UNSUPPORTED"),
        }
    }

    /// The `detail` of the spec's error body: what a client needs to find the culprit.
    pub fn detail(&self) -> serde_json::Value {
        match self {
            Self::DescriptorSize { descriptor, digest, declared, actual } => serde_json::json!({
                "descriptor": descriptor, "digest": digest, "declaredSize": declared, "actualSize": actual,
            }),
            Self::Upload(UploadError::OutOfOrder { start, size }) => {
                serde_json::json!({ "rangeStart": start, "uploadSize": size })
            }
            Self::Upload(UploadError::OrgLimit { org, staged, limit }) => {
                serde_json::json!({ "organizationId": org, "stagedBytes": staged, "limitBytes": limit })
            }
            _ => serde_json::Value::Null,
        }
    }

    /// The class of failure.
    pub fn kind(&self) -> ErrorKind {
        match self.code().0 {
            401 => ErrorKind::Unauthenticated,
            403 => ErrorKind::PermissionDenied,
            404 => ErrorKind::NotFound,
            405 => ErrorKind::Unimplemented,
            500 => ErrorKind::Internal,
            _ => ErrorKind::InvalidArgument,
        }
    }
}

/// The fields of a manifest or index this registry checks.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Doc {
    #[serde(default)]
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Desc>,
    #[serde(default)]
    layers: Option<Vec<Desc>>,
    #[serde(default)]
    manifests: Option<Vec<Desc>>,
    /// The manifest this one refers to (signatures, SBOMs, attestations).
    #[serde(default)]
    subject: Option<Desc>,
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
struct Desc {
    #[serde(default, rename = "mediaType")]
    media_type: Option<String>,
    digest: String,
    /// Checked when a manifest is pushed; kept loose here so that reading stored manifests
    /// (GC roots, snapshots) never fails on it.
    #[serde(default)]
    size: Option<serde_json::Value>,
    /// Foreign (non-distributable) layers live elsewhere and need not be pushed.
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default)]
    platform: Option<oci::Platform>,
}

impl RegistryService {
    /// Opens the registry under `data_dir` over the image store's content store; its uploads
    /// are charged to `staging` (shared with object storage).
    pub fn open(
        data_dir: &Path,
        images: Arc<ImageStore>,
        keys: KeyService,
        public_url: &str,
        staging: crate::staging::Staging,
    ) -> Result<Self, RegistryError> {
        let repos = Repos::open(data_dir)?;
        let tokens = TokenIssuer::open(data_dir, TOKEN_TTL).map_err(RegistryError::Token)?;
        let uploads = Uploads::new(images.content().clone(), staging);
        uploads.spawn_sweeper();
        let host = host_port(public_url);
        Ok(RegistryService { inner: Arc::new(Inner { images, repos, uploads, tokens, keys, host }) })
    }

    /// `host[:port]` under which clients name this registry's images.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// Whether an image reference points at this registry.
    pub fn is_local(&self, image: &ImageRef) -> bool {
        image.registry.eq_ignore_ascii_case(&self.inner.host)
    }

    /// Resolves an `Authorization` header: HTTP Basic with any user name and an API key or
    /// push token as the password, or `Bearer <API key or push token>`.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, RegistryError> {
        let header = authorization.ok_or(RegistryError::Unauthenticated("send an API key as the Basic password"))?;
        let (scheme, value) =
            header.trim().split_once(' ').ok_or(RegistryError::Unauthenticated("malformed header"))?;
        let secret = if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(RegistryError::Unauthenticated("malformed Basic credentials"))?;
            let (_user, password) =
                decoded.split_once(':').ok_or(RegistryError::Unauthenticated("malformed Basic credentials"))?;
            password.to_string()
        } else if scheme.eq_ignore_ascii_case("bearer") {
            value.trim().to_string()
        } else {
            return Err(RegistryError::Unauthenticated("use Basic or Bearer authentication"));
        };
        if secret.starts_with(TOKEN_PREFIX) {
            let namespace = self.inner.tokens.verify(&secret, chrono::Utc::now()).map_err(RegistryError::Token)?;
            // Only `push_access` with `Namespace::System` (an admin key) signs this name.
            return Ok(if namespace == SYSTEM_NAMESPACE { Caller::system() } else { Caller::org(namespace) });
        }
        let p = self.inner.keys.authenticate(Some(&secret)).await.map_err(RegistryError::Key)?;
        Ok(Caller::org(p.org_id))
    }

    /// Short-lived push credentials for the caller's organization, or for the system
    /// namespace when `namespace` asks for it and `admin` (the key is an admin key).
    pub fn push_access(
        &self,
        org_id: &str,
        admin: bool,
        namespace: Namespace,
    ) -> Result<RegistryPushAccessDto, RegistryError> {
        let project = match namespace {
            Namespace::System if !admin => return Err(RegistryError::SystemNeedsAdmin),
            Namespace::System => SYSTEM_NAMESPACE,
            // Never happens (ids are UUIDs); a token for it would open the system namespace.
            Namespace::Org if org_id == SYSTEM_NAMESPACE => return Err(RegistryError::SystemNeedsAdmin),
            Namespace::Org => org_id,
        };
        let t = self.inner.tokens.issue(project, chrono::Utc::now()).map_err(RegistryError::Token)?;
        tracing::info!(org_id = %org_id, namespace = %project, expires_at = %t.expires_at, "issued a registry push token");
        Ok(RegistryPushAccessDto {
            username: "cove".into(),
            secret: t.token,
            registry_url: self.inner.host.clone(),
            registry_id: REGISTRY_ID.into(),
            project: project.to_string(),
            expires_at: cove_types::dto::iso8601(t.expires_at),
        })
    }

    /// Checks that `caller` may `access` repository `name`: names under `<orgId>/` (or
    /// `cove/` for a system caller), and reads of `cove/…` for everyone. Another
    /// organization's repository does not exist for a reader and is denied to a writer.
    pub fn check(&self, caller: &Caller, name: &str, access: Access) -> Result<(), RegistryError> {
        if owns(caller, name) || (access == Access::Pull && is_system(name)) {
            return Ok(());
        }
        Err(match access {
            Access::Pull => RegistryError::NameUnknown { name: name.to_string() },
            Access::Push => RegistryError::Denied { name: name.to_string(), org_id: caller.org_id.clone() },
        })
    }

    /// The repository `name` stands for (see [`qualify`]), if `caller` may `access` it.
    fn repo(&self, caller: &Caller, name: &str, access: Access) -> Result<String, RegistryError> {
        let repo = qualify(caller, name);
        if !valid_name(&repo) {
            return Err(RegistryError::NameTooLong { name: name.to_string(), repo });
        }
        self.check(caller, &repo, access)?;
        Ok(repo)
    }

    fn content(&self) -> &cove_image::ContentStore {
        self.inner.images.content()
    }

    fn blob_readable(&self, name: &str, d: &Digest) -> bool {
        let r = &self.inner.repos;
        (r.has_blob(name, d) || r.manifest_media_type(name, d).is_some()) && self.content().contains(d)
    }

    /// A blob's size and an open file to stream it from.
    pub async fn open_blob(
        &self,
        caller: &Caller,
        name: &str,
        d: &Digest,
    ) -> Result<(tokio::fs::File, u64), RegistryError> {
        let name = &self.repo(caller, name, Access::Pull)?;
        if !self.blob_readable(name, d) {
            return Err(RegistryError::BlobUnknown { name: name.to_string(), digest: d.clone() });
        }
        let read = |source| RegistryError::Read { op: "open blob", digest: d.clone(), source };
        let f = tokio::fs::File::open(self.content().path(d)).await.map_err(read)?;
        let size = f.metadata().await.map_err(read)?.len();
        Ok((f, size))
    }

    /// `file` (a blob opened by [`Self::open_blob`]) positioned at byte `start`.
    pub async fn blob_part(
        &self,
        mut file: tokio::fs::File,
        d: &Digest,
        start: u64,
    ) -> Result<tokio::fs::File, RegistryError> {
        use tokio::io::AsyncSeekExt as _;
        if start > 0 {
            file.seek(std::io::SeekFrom::Start(start)).await.map_err(|source| RegistryError::Read {
                op: "seek in blob",
                digest: d.clone(),
                source,
            })?;
        }
        Ok(file)
    }

    /// Unlinks a blob from the repository; the garbage collector frees it when nothing else
    /// keeps it.
    pub fn delete_blob(&self, caller: &Caller, name: &str, d: &Digest) -> Result<(), RegistryError> {
        let name = &self.repo(caller, name, Access::Push)?;
        if self.inner.repos.unlink_blob(name, d)? {
            tracing::info!(repository = %name, digest = %d, "blob unlinked");
            Ok(())
        } else {
            Err(RegistryError::BlobUnknown { name: name.to_string(), digest: d.clone() })
        }
    }

    /// Starts a chunked upload; returns its id.
    pub fn start_upload(&self, caller: &Caller, name: &str) -> Result<String, RegistryError> {
        let name = &self.repo(caller, name, Access::Push)?;
        self.inner.uploads.start(name).map_err(RegistryError::Upload)
    }

    /// Cross-repository mount: links `d` from `from` into `name` when the caller may read
    /// `from` and it has the blob. Returns false (the client then uploads) otherwise.
    pub fn mount(&self, caller: &Caller, name: &str, d: &Digest, from: &str) -> Result<bool, RegistryError> {
        let name = &self.repo(caller, name, Access::Push)?;
        let from = &qualify(caller, from);
        if !valid_name(from) || self.check(caller, from, Access::Pull).is_err() || !self.blob_readable(from, d) {
            return Ok(false);
        }
        self.inner.repos.link_blob(name, d)?;
        tracing::debug!(repository = %name, from = %from, digest = %d, "blob mounted");
        Ok(true)
    }

    /// A monolithic upload: the whole blob in one request.
    pub async fn upload_whole<S, B, E>(
        &self,
        caller: &Caller,
        name: &str,
        d: &Digest,
        body: S,
    ) -> Result<(), RegistryError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let name = &self.repo(caller, name, Access::Push)?;
        self.linked_while(name, d, self.inner.uploads.put_whole(name, d, body)).await
    }

    /// Bytes received by an upload.
    pub async fn upload_status(&self, caller: &Caller, name: &str, id: &str) -> Result<u64, RegistryError> {
        let name = &self.repo(caller, name, Access::Push)?;
        self.inner.uploads.status(name, id).await.map_err(RegistryError::Upload)
    }

    /// Appends a chunk (refused unless its `Content-Range`, when given, continues the
    /// upload exactly); returns the new size.
    pub async fn upload_chunk<S, B, E>(
        &self,
        caller: &Caller,
        name: &str,
        id: &str,
        chunk: Chunk,
        body: S,
    ) -> Result<u64, RegistryError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let name = &self.repo(caller, name, Access::Push)?;
        self.inner.uploads.append(name, id, chunk, body).await.map_err(RegistryError::Upload)
    }

    /// Completes an upload with its last chunk (its range checked like a `PATCH`'s) and links
    /// the verified blob.
    pub async fn upload_finish<S, B, E>(
        &self,
        caller: &Caller,
        name: &str,
        id: &str,
        d: &Digest,
        chunk: Chunk,
        body: S,
    ) -> Result<(), RegistryError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let name = &self.repo(caller, name, Access::Push)?;
        self.linked_while(name, d, self.inner.uploads.finish(name, id, d, chunk, body)).await
    }

    /// Links `d` before the upload commits it, so a garbage collection in between keeps it;
    /// unlinks again if the upload fails and the blob was not linked before.
    async fn linked_while(
        &self,
        name: &str,
        d: &Digest,
        upload: impl std::future::Future<Output = Result<u64, UploadError>>,
    ) -> Result<(), RegistryError> {
        let had = self.inner.repos.has_blob(name, d);
        self.inner.repos.link_blob(name, d)?;
        match upload.await {
            Ok(size) => {
                tracing::debug!(repository = %name, digest = %d, size, "blob uploaded");
                Ok(())
            }
            Err(e) => {
                if !had {
                    self.inner.repos.unlink_blob(name, d)?;
                }
                Err(RegistryError::Upload(e))
            }
        }
    }

    /// Cancels an upload.
    pub async fn upload_cancel(&self, caller: &Caller, name: &str, id: &str) -> Result<(), RegistryError> {
        let name = &self.repo(caller, name, Access::Push)?;
        self.inner.uploads.cancel(name, id).await.map_err(RegistryError::Upload)
    }

    /// [`Self::push_manifest`]'s digest.
    pub fn put_manifest(
        &self,
        caller: &Caller,
        name: &str,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        self.push_manifest(caller, name, reference, content_type, bytes).map(|p| p.digest)
    }

    /// Stores a manifest or index after checking that everything it references is in the
    /// repository with the size its descriptor declares (its `subject` need not be there
    /// yet: referrers may be pushed first); tags it when `reference` is a tag, and lists it
    /// among its subject's referrers. Its digest is that of a digest `reference` (sha256 or
    /// sha512), else the canonical sha256 (a tag push names no digest).
    pub fn push_manifest(
        &self,
        caller: &Caller,
        name: &str,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: &[u8],
    ) -> Result<Pushed, RegistryError> {
        let name = &self.repo(caller, name, Access::Push)?;
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(RegistryError::ManifestInvalid(format!("larger than {MAX_MANIFEST_BYTES} bytes")));
        }
        let digest = match reference {
            Reference::Digest(d) => hash_like(d, bytes),
            Reference::Tag(_) => sha256(bytes),
        };
        if let Reference::Digest(expected) = reference
            && expected != &digest
        {
            return Err(RegistryError::ManifestDigest { expected: expected.clone(), actual: digest });
        }
        let doc: Doc =
            serde_json::from_slice(bytes).map_err(|e| RegistryError::ManifestInvalid(format!("not JSON: {e}")))?;
        let media_type = manifest_media_type(content_type, &doc)?;
        let repos = &self.inner.repos;
        let missing = |d: Digest| RegistryError::ManifestBlobUnknown { name: name.to_string(), digest: d };
        if is_index(&media_type) {
            for (i, child) in doc.manifests.iter().flatten().enumerate() {
                let d = parse_ref_digest(&child.digest)?;
                if repos.manifest_media_type(name, &d).is_none() {
                    return Err(missing(d));
                }
                self.check_size(&format!("manifests[{i}]"), child, &d)?;
            }
        } else {
            let config = doc.config.as_ref().ok_or_else(|| RegistryError::ManifestInvalid("no config".into()))?;
            let layers = doc.layers.iter().flatten().enumerate().map(|(i, l)| (format!("layers[{i}]"), l));
            for (field, desc) in std::iter::once(("config".to_string(), config)).chain(layers) {
                let d = parse_ref_digest(&desc.digest)?;
                if !self.blob_readable(name, &d) {
                    // Foreign (non-distributable) layers live elsewhere.
                    if desc.urls.is_empty() {
                        return Err(missing(d));
                    }
                    continue;
                }
                self.check_size(&field, desc, &d)?;
            }
        }
        let subject = match &doc.subject {
            Some(s) => Some(
                s.digest
                    .parse::<Digest>()
                    .map_err(|_| RegistryError::ManifestInvalid(format!("subject: invalid digest {:?}", s.digest)))?,
            ),
            None => None,
        };
        self.content().put(&digest, bytes).map_err(|source| RegistryError::Content { op: "store manifest", source })?;
        // The referrer entry before the revision: listings skip entries without a manifest.
        if let Some(s) = &subject {
            let desc = referrer_descriptor(&doc, &media_type, &digest, bytes.len());
            repos.add_referrer(name, s, &digest, desc.to_string().as_bytes())?;
        }
        repos.put_manifest(name, &digest, &media_type)?;
        if let Reference::Tag(t) = reference {
            repos.set_tag(name, t, &digest)?;
        }
        tracing::info!(repository = %name, reference = %reference, digest = %digest, media_type = %media_type, subject = ?subject, "manifest pushed");
        Ok(Pushed { digest, subject })
    }

    /// The referrers of `subject` in a repository: an OCI image index of the descriptors of
    /// its manifests whose `subject` is `subject`, only those of `artifact_type` when given.
    /// A repository without any is an empty index, not an error.
    pub fn referrers(
        &self,
        caller: &Caller,
        name: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<serde_json::Value, RegistryError> {
        let name = &self.repo(caller, name, Access::Pull)?;
        let mut manifests = Vec::new();
        for raw in self.inner.repos.referrers(name, subject)? {
            let Ok(desc) = serde_json::from_slice::<serde_json::Value>(&raw) else {
                tracing::warn!(repository = %name, subject = %subject, "skipped an unreadable referrer entry");
                continue;
            };
            if artifact_type.is_none_or(|t| desc["artifactType"].as_str() == Some(t)) {
                manifests.push(desc);
            }
        }
        tracing::debug!(repository = %name, subject = %subject, artifact_type, count = manifests.len(), "referrers listed");
        Ok(serde_json::json!({ "schemaVersion": 2, "mediaType": oci::OCI_INDEX, "manifests": manifests }))
    }

    /// The error for reading or deleting (`access`) a manifest by a reference that is neither
    /// a tag nor a digest: no manifest can be there, so after the same access check as a
    /// valid reference it is 404 `MANIFEST_UNKNOWN` (`NAME_UNKNOWN` without the repository).
    /// A push by such a reference is refused with `why` instead.
    pub fn bad_reference(&self, caller: &Caller, name: &str, access: Access, why: &PathError) -> RegistryError {
        match self.repo(caller, name, access) {
            Err(e) => e,
            Ok(repo) if !self.inner.repos.exists(&repo) => RegistryError::NameUnknown { name: repo },
            Ok(repo) => RegistryError::ManifestUnknown { name: repo, reference: why.input().to_string() },
        }
    }

    /// Checks that descriptor `field` declares the size of the stored blob `d`.
    fn check_size(&self, field: &str, desc: &Desc, d: &Digest) -> Result<(), RegistryError> {
        let declared = desc
            .size
            .as_ref()
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| RegistryError::ManifestInvalid(format!("{field} ({d}) has no valid size")))?;
        let actual = self.content().size(d).map_err(|source| RegistryError::Read {
            op: "read the size of blob",
            digest: d.clone(),
            source,
        })?;
        if declared != actual {
            return Err(RegistryError::DescriptorSize {
                descriptor: field.to_string(),
                digest: d.clone(),
                declared,
                actual,
            });
        }
        Ok(())
    }

    /// A manifest by tag or digest.
    pub fn manifest(&self, caller: &Caller, name: &str, reference: &Reference) -> Result<Manifest, RegistryError> {
        let name = &self.repo(caller, name, Access::Pull)?;
        self.manifest_in(name, reference)
    }

    fn manifest_in(&self, name: &str, reference: &Reference) -> Result<Manifest, RegistryError> {
        let repos = &self.inner.repos;
        let unknown = || {
            if repos.exists(name) {
                RegistryError::ManifestUnknown { name: name.to_string(), reference: reference.to_string() }
            } else {
                RegistryError::NameUnknown { name: name.to_string() }
            }
        };
        let digest = match reference {
            Reference::Tag(t) => repos.resolve_tag(name, t).ok_or_else(unknown)?,
            Reference::Digest(d) => d.clone(),
        };
        let media_type = repos.manifest_media_type(name, &digest).ok_or_else(unknown)?;
        let bytes = self.content().read(&digest).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => unknown(),
            _ => RegistryError::Read { op: "read manifest", digest: digest.clone(), source: e },
        })?;
        Ok(Manifest { digest, media_type, bytes })
    }

    /// Deletes a manifest (by digest, with its tags) or a tag.
    pub fn delete_manifest(&self, caller: &Caller, name: &str, reference: &Reference) -> Result<(), RegistryError> {
        let name = &self.repo(caller, name, Access::Push)?;
        let repos = &self.inner.repos;
        let deleted = match reference {
            Reference::Tag(t) => repos.delete_tag(name, t)?,
            Reference::Digest(d) => {
                // Its subject, read before the revision goes (the bytes stay until GC).
                let subject = self
                    .content()
                    .read(d)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Doc>(&b).ok())
                    .and_then(|doc| doc.subject)
                    .and_then(|s| s.digest.parse::<Digest>().ok());
                let deleted = repos.delete_manifest(name, d)?;
                if deleted {
                    repos.remove_referrer(name, subject.as_ref(), d)?;
                }
                deleted
            }
        };
        if !deleted {
            return Err(RegistryError::ManifestUnknown { name: name.to_string(), reference: reference.to_string() });
        }
        tracing::info!(repository = %name, reference = %reference, "manifest deleted");
        Ok(())
    }

    /// One page of a repository's tags (after `last`, at most `n`), and whether more follow.
    pub fn tags(
        &self,
        caller: &Caller,
        name: &str,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<(Vec<String>, bool), RegistryError> {
        let name = &self.repo(caller, name, Access::Pull)?;
        if !self.inner.repos.exists(name) {
            return Err(RegistryError::NameUnknown { name: name.to_string() });
        }
        Ok(page(self.inner.repos.tags(name), n, last))
    }

    /// One page of the caller's repositories.
    pub fn catalog(&self, caller: &Caller, n: Option<usize>, last: Option<&str>) -> (Vec<String>, bool) {
        let mine = self.inner.repos.repositories(&caller.org_id).into_iter().filter(|r| owns(caller, r)).collect();
        page(mine, n, last)
    }

    /// Every digest the registry keeps alive: linked blobs, manifests and everything the
    /// manifests reference (a blob unlinked by `DELETE` stays while a manifest uses it).
    pub fn gc_roots(&self) -> HashSet<Digest> {
        let r = self.inner.repos.referenced();
        let mut keep = r.blobs;
        for m in &r.manifests {
            if let Ok(bytes) = self.content().read(m)
                && let Ok(doc) = serde_json::from_slice::<Doc>(&bytes)
            {
                let descs = doc.config.iter().chain(doc.layers.iter().flatten()).chain(doc.manifests.iter().flatten());
                keep.extend(descs.filter_map(|d| d.digest.parse().ok()));
            }
        }
        keep.extend(r.manifests);
        keep
    }

    /// The linux/amd64 image manifest an image name in this registry stands for, in the
    /// organization `org_id` (another organization's repositories do not exist for it).
    pub fn resolve_for_snapshot(&self, org_id: &str, image: &ImageRef) -> Result<Digest, RegistryError> {
        let caller = Caller::org(org_id);
        if !valid_name(&image.repository) {
            return Err(PathError::Name(image.repository.clone()).into());
        }
        let name = &self.repo(&caller, &image.repository, Access::Pull)?;
        let reference = match (&image.digest, &image.tag) {
            (Some(d), _) => Reference::Digest(d.clone()),
            (None, Some(t)) if valid_tag(t) => Reference::Tag(t.clone()),
            (None, t) => return Err(PathError::Tag(t.clone().unwrap_or_default()).into()),
        };
        let m = self.manifest_in(name, &reference)?;
        if !is_index(&m.media_type) {
            return Ok(m.digest);
        }
        let doc: Doc = serde_json::from_slice(&m.bytes).map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;
        let child = doc
            .manifests
            .iter()
            .flatten()
            .find(|c| c.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == "amd64"))
            .ok_or_else(|| RegistryError::ManifestInvalid(format!("{name}:{reference} has no linux/amd64 image")))?;
        let d = parse_ref_digest(&child.digest)?;
        Ok(self.manifest_in(name, &Reference::Digest(d))?.digest)
    }
}

/// Whether `name` is under the caller's namespace: `<orgId>/`, or `cove/` for a system
/// caller only (an organization never owns `cove/…`, whatever its id).
pub fn owns(caller: &Caller, name: &str) -> bool {
    if is_system(name) || caller.system {
        return caller.system && is_system(name);
    }
    under(name, &caller.org_id)
}

/// The repository a name stands for: a name under `<orgId>/` or the system namespace `cove/`
/// is itself; any other name of an organization's caller is in its organization
/// (`team/app` → `<orgId>/team/app`), so `docker push HOST/team/app:1` works with the
/// organization's credentials. A first component shaped like an organization id (a UUID)
/// is taken as one, so another organization's repositories stay refused rather than being
/// made the caller's own under a longer name. A system caller's names are never mapped.
pub fn qualify(caller: &Caller, name: &str) -> String {
    let first = name.split('/').next().unwrap_or_default();
    if caller.system || first == caller.org_id || first == SYSTEM_NAMESPACE || uuid::Uuid::try_parse(first).is_ok() {
        return name.to_string();
    }
    format!("{}/{name}", caller.org_id)
}

/// Whether `name` is in the system namespace `cove/`.
pub fn is_system(name: &str) -> bool {
    under(name, SYSTEM_NAMESPACE)
}

fn under(name: &str, namespace: &str) -> bool {
    name.strip_prefix(namespace).is_some_and(|rest| rest.starts_with('/'))
}

/// How the referrers list shows a manifest: its media type, digest and size, its
/// `artifactType` (for an image manifest without one, its config's media type; for an index
/// without one, none), and its annotations.
fn referrer_descriptor(doc: &Doc, media_type: &str, digest: &Digest, size: usize) -> serde_json::Value {
    let mut desc = serde_json::json!({ "mediaType": media_type, "digest": digest, "size": size });
    let artifact_type =
        doc.artifact_type.clone().filter(|t| !t.is_empty()).or_else(|| {
            if is_index(media_type) { None } else { doc.config.as_ref().and_then(|c| c.media_type.clone()) }
        });
    if let Some(t) = artifact_type {
        desc["artifactType"] = t.into();
    }
    if let Some(a) = doc.annotations.as_ref().filter(|a| !a.is_empty()) {
        desc["annotations"] = serde_json::Value::Object(a.clone());
    }
    desc
}

fn is_index(media_type: &str) -> bool {
    media_type == oci::OCI_INDEX || media_type == oci::DOCKER_LIST
}

fn parse_ref_digest(s: &str) -> Result<Digest, RegistryError> {
    s.parse().map_err(|_| RegistryError::ManifestInvalid(format!("invalid digest {s:?}")))
}

/// The manifest's media type: the request's `Content-Type` when it is a manifest type, else
/// the document's `mediaType`, else what its fields say (an OCI index or manifest). The two,
/// when both given, must agree.
fn manifest_media_type(content_type: Option<&str>, doc: &Doc) -> Result<String, RegistryError> {
    const KNOWN: [&str; 4] = [oci::OCI_MANIFEST, oci::OCI_INDEX, oci::DOCKER_MANIFEST, oci::DOCKER_LIST];
    if doc.schema_version != 2 {
        return Err(RegistryError::ManifestInvalid("schemaVersion must be 2".into()));
    }
    let header = content_type.map(|c| c.split(';').next().unwrap_or_default().trim()).filter(|c| KNOWN.contains(c));
    let mt = match (header, doc.media_type.as_deref()) {
        (Some(h), Some(d)) if h != d => {
            return Err(RegistryError::ManifestInvalid(format!("Content-Type {h} differs from mediaType {d}")));
        }
        (Some(h), _) => h.to_string(),
        (None, Some(d)) if KNOWN.contains(&d) => d.to_string(),
        (None, Some(d)) => return Err(RegistryError::ManifestInvalid(format!("unsupported media type {d}"))),
        (None, None) if doc.manifests.is_some() => oci::OCI_INDEX.to_string(),
        (None, None) => oci::OCI_MANIFEST.to_string(),
    };
    if is_index(&mt) != doc.manifests.is_some() || (!is_index(&mt) && doc.config.is_none()) {
        return Err(RegistryError::ManifestInvalid(format!("the document does not have the fields of a {mt}")));
    }
    Ok(mt)
}

/// Entries after `last`, at most `n`, and whether more follow.
fn page(all: Vec<String>, n: Option<usize>, last: Option<&str>) -> (Vec<String>, bool) {
    let rest: Vec<String> = all.into_iter().filter(|x| last.is_none_or(|l| x.as_str() > l)).collect();
    match n {
        Some(n) if rest.len() > n => (rest.into_iter().take(n).collect(), true),
        _ => (rest, false),
    }
}

/// `host[:port]` of a URL (`http://127.0.0.1:3000/x` → `127.0.0.1:3000`).
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.rsplit_once('@').map(|(_, a)| a).unwrap_or(authority).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_owns_only_repositories_under_its_organization() {
        let c = Caller::org("org1");
        assert!(owns(&c, "org1/app") && owns(&c, "org1/a/b"));
        assert!(!owns(&c, "org1") && !owns(&c, "org10/app") && !owns(&c, "org2/org1/app"));
    }

    #[test]
    fn only_a_system_caller_owns_the_system_namespace_and_it_owns_nothing_else() {
        let sys = Caller::system();
        assert!(owns(&sys, "cove/sandbox") && !owns(&sys, "org1/app") && !owns(&sys, "cove"));
        // Even an organization whose id were `cove` would not own the system namespace.
        let named_cove = Caller::org(SYSTEM_NAMESPACE);
        assert!(!owns(&named_cove, "cove/sandbox"));
        assert!(!owns(&Caller::org("org1"), "cove/sandbox"));
    }

    #[tokio::test]
    async fn system_push_access_needs_an_admin_key_and_its_token_opens_only_the_system_namespace() {
        let (_d, reg) = registry().await;
        let e = reg.push_access("org1", false, Namespace::System).unwrap_err();
        assert_eq!(e.code(), (403, "DENIED"));
        assert!(e.to_string().contains("admin API key"), "{e}");
        let a = reg.push_access("org1", true, Namespace::System).unwrap();
        assert_eq!(a.project, SYSTEM_NAMESPACE);
        let who = reg.authenticate(Some(&format!("Bearer {}", a.secret))).await.unwrap();
        assert_eq!(who, Caller::system());
        reg.check(&who, "cove/sandbox", Access::Push).unwrap();
        assert!(matches!(reg.check(&who, "org1/app", Access::Push), Err(RegistryError::Denied { .. })));
        assert!(matches!(reg.check(&who, "org1/app", Access::Pull), Err(RegistryError::NameUnknown { .. })));
        // An ordinary token stays an organization's, admin or not.
        let o = reg.push_access("org1", true, Namespace::Org).unwrap();
        assert_eq!(o.project, "org1");
        let who = reg.authenticate(Some(&format!("Bearer {}", o.secret))).await.unwrap();
        assert_eq!(who, Caller::org("org1"));
    }

    #[tokio::test]
    async fn every_organization_pulls_the_system_namespace_but_none_writes_or_deletes_there() {
        let (_d, reg) = registry().await;
        let sys = Caller::system();
        let m = manifest_declaring(&reg, &sys, "cove/sandbox", b"layer", 5).await;
        let tag = Reference::Tag("minimal-bookworm".into());
        let d = reg.put_manifest(&sys, "cove/sandbox", &tag, Some(oci::OCI_MANIFEST), &m).unwrap();
        let other = org("org2");
        assert_eq!(reg.manifest(&other, "cove/sandbox", &tag).unwrap().digest, d);
        assert_eq!(read_blob(&reg, &other, "cove/sandbox", &sha256(b"layer")).await, b"layer");
        let image = ImageRef::parse("127.0.0.1:2/cove/sandbox:minimal-bookworm").unwrap();
        assert_eq!(reg.resolve_for_snapshot("org2", &image).unwrap(), d);

        let denied = |r: Result<(), RegistryError>| assert!(matches!(r, Err(RegistryError::Denied { .. })), "{r:?}");
        denied(reg.put_manifest(&other, "cove/sandbox", &tag, Some(oci::OCI_MANIFEST), &m).map(drop));
        denied(reg.delete_manifest(&other, "cove/sandbox", &tag));
        denied(reg.delete_manifest(&other, "cove/sandbox", &Reference::Digest(d.clone())));
        denied(reg.delete_blob(&other, "cove/sandbox", &sha256(b"layer")));
        denied(reg.start_upload(&other, "cove/sandbox").map(drop));
        denied(reg.upload_whole(&other, "cove/sandbox", &sha256(b"x"), body(b"x")).await);
        assert_eq!(reg.manifest(&other, "cove/sandbox", &tag).unwrap().digest, d, "the tag is unchanged");
    }

    const ORG_A: &str = "6f1c2f9e-3b7a-4c1d-9e55-0a4b8d2c7e10";
    const ORG_B: &str = "0d9e8c7b-6a5f-4e3d-8c2b-1a0f9e8d7c6b";

    #[test]
    fn names_without_an_organization_prefix_are_in_the_callers_organization() {
        let a = Caller::org(ORG_A);
        assert_eq!(qualify(&a, "team/app"), format!("{ORG_A}/team/app"));
        assert_eq!(qualify(&a, "app"), format!("{ORG_A}/app"));
        assert_eq!(qualify(&a, &format!("{ORG_A}/team/app")), format!("{ORG_A}/team/app"));
        // Another organization's id and the system namespace are never made the caller's.
        assert_eq!(qualify(&a, &format!("{ORG_B}/app")), format!("{ORG_B}/app"));
        assert_eq!(qualify(&a, "cove/sandbox"), "cove/sandbox");
        // A system caller's names are not mapped.
        assert_eq!(qualify(&Caller::system(), "team/app"), "team/app");
    }

    #[tokio::test]
    async fn an_image_pushed_without_the_organization_id_is_the_same_under_both_names_and_no_one_elses() {
        let (_d, reg) = registry().await;
        let (a, b) = (org(ORG_A), org(ORG_B));
        let m = manifest_declaring(&reg, &a, "team/app", b"layer", 5).await;
        let tag = Reference::Tag("1".into());
        let d = reg.put_manifest(&a, "team/app", &tag, Some(oci::OCI_MANIFEST), &m).unwrap();
        let full = format!("{ORG_A}/team/app");
        assert_eq!(reg.manifest(&a, &full, &tag).unwrap().digest, d);
        assert_eq!(reg.manifest(&a, "team/app", &tag).unwrap().digest, d);
        assert_eq!(reg.tags(&a, "team/app", None, None).unwrap().0, ["1"]);
        assert_eq!(reg.catalog(&a, None, None).0, vec![full.clone()]);
        assert_eq!(read_blob(&reg, &a, "team/app", &sha256(b"layer")).await, b"layer");
        let image = |name: &str| ImageRef::parse(&format!("127.0.0.1:2/{name}:1")).unwrap();
        assert_eq!(reg.resolve_for_snapshot(ORG_A, &image("team/app")).unwrap(), d);
        assert_eq!(reg.resolve_for_snapshot(ORG_A, &image(&full)).unwrap(), d);

        // Organization B sees nothing under either name, and cannot write under A's.
        let unknown = |r: Result<Manifest, RegistryError>| {
            assert!(matches!(r, Err(RegistryError::NameUnknown { .. })), "{r:?}");
        };
        unknown(reg.manifest(&b, &full, &tag));
        unknown(reg.manifest(&b, "team/app", &tag));
        assert!(reg.resolve_for_snapshot(ORG_B, &image("team/app")).is_err());
        assert!(reg.resolve_for_snapshot(ORG_B, &image(&full)).is_err());
        let e = reg.put_manifest(&b, &full, &tag, Some(oci::OCI_MANIFEST), &m).unwrap_err();
        assert_eq!(e.code(), (403, "DENIED"), "{e}");
        assert!(reg.catalog(&b, None, None).0.is_empty());
        // B's own team/app is another repository.
        assert!(!reg.mount(&b, "team/app", &sha256(b"layer"), &full).unwrap());
        // A name that fits the limit alone but not with the organization id is refused.
        let e = reg.start_upload(&a, &"a".repeat(MAX_NAME_LEN - 4)).unwrap_err();
        assert_eq!(e.code(), (400, "NAME_INVALID"));
        assert!(e.to_string().contains("longer than 255 characters"), "{e}");
    }

    #[test]
    fn pages_start_after_last_and_say_whether_more_follow() {
        let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(page(all.clone(), Some(2), None), (vec!["a".to_string(), "b".to_string()], true));
        assert_eq!(page(all.clone(), Some(2), Some("b")), (vec!["c".to_string(), "d".to_string()], false));
        assert_eq!(page(all.clone(), None, Some("c")), (vec!["d".to_string()], false));
        assert_eq!(page(all, Some(0), None).0.len(), 0);
    }

    #[test]
    fn the_media_type_comes_from_the_header_or_the_document_and_must_fit_the_fields() {
        let m: Doc = serde_json::from_str(r#"{"schemaVersion":2,"config":{"digest":"x"},"layers":[]}"#).unwrap();
        assert_eq!(manifest_media_type(None, &m).unwrap(), oci::OCI_MANIFEST);
        assert_eq!(manifest_media_type(Some(oci::DOCKER_MANIFEST), &m).unwrap(), oci::DOCKER_MANIFEST);
        assert!(manifest_media_type(Some(oci::OCI_INDEX), &m).is_err());
        let i: Doc =
            serde_json::from_str(&format!(r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[]}}"#, oci::OCI_INDEX))
                .unwrap();
        assert_eq!(manifest_media_type(Some("application/json"), &i).unwrap(), oci::OCI_INDEX);
        assert!(manifest_media_type(Some(oci::OCI_MANIFEST), &i).is_err());
        let v1: Doc = serde_json::from_str(r#"{"schemaVersion":1}"#).unwrap();
        assert!(manifest_media_type(None, &v1).is_err());
    }

    #[test]
    fn the_registry_host_is_the_public_urls_authority() {
        assert_eq!(host_port("http://127.0.0.1:3000"), "127.0.0.1:3000");
        assert_eq!(host_port("https://Cove.Example/api"), "cove.example");
    }

    type Item = Result<Vec<u8>, std::convert::Infallible>;

    fn body(bytes: &[u8]) -> futures_util::stream::Iter<std::vec::IntoIter<Item>> {
        futures_util::stream::iter(vec![Ok(bytes.to_vec())])
    }

    async fn registry() -> (tempfile::TempDir, RegistryService) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SqliteStore::open(&dir.path().join("cove.db")).await.unwrap();
        let keys = KeyService::open(Arc::new(store), dir.path()).unwrap();
        let images = Arc::new(ImageStore::open(dir.path(), Default::default()).unwrap());
        let reg = RegistryService::open(dir.path(), images, keys, "http://127.0.0.1:2", Default::default()).unwrap();
        (dir, reg)
    }

    fn org(id: &str) -> Caller {
        Caller::org(id)
    }

    async fn read_blob(reg: &RegistryService, caller: &Caller, name: &str, d: &Digest) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let (mut f, _) = reg.open_blob(caller, name, d).await.unwrap();
        let mut out = Vec::new();
        f.read_to_end(&mut out).await.unwrap();
        out
    }

    /// Pushes a config and one layer; returns a manifest for them with the layer's `size`.
    async fn manifest_declaring(reg: &RegistryService, who: &Caller, name: &str, layer: &[u8], size: u64) -> Vec<u8> {
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let (cd, ld) = (sha256(config), sha256(layer));
        reg.upload_whole(who, name, &cd, body(config)).await.unwrap();
        reg.upload_whole(who, name, &ld, body(layer)).await.unwrap();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": oci::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": size}],
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn another_organization_cannot_overwrite_a_sha512_blob() {
        let (_d, reg) = registry().await;
        let (a, b) = (org("orga"), org("orgb"));
        let d = cove_image::content::sha512(b"organization A's layer");
        reg.upload_whole(&a, "orga/app", &d, body(b"organization A's layer")).await.unwrap();
        let e = reg.upload_whole(&b, "orgb/app", &d, body(b"organization B's layer")).await.unwrap_err();
        assert_eq!(e.code(), (400, "DIGEST_INVALID"), "{e}");
        let id = reg.start_upload(&b, "orgb/app").unwrap();
        let e = reg.upload_finish(&b, "orgb/app", &id, &d, Chunk::default(), body(b"organization B's layer")).await;
        assert_eq!(e.unwrap_err().code(), (400, "DIGEST_INVALID"));
        assert_eq!(read_blob(&reg, &a, "orga/app", &d).await, b"organization A's layer");
        assert!(matches!(reg.open_blob(&b, "orgb/app", &d).await, Err(RegistryError::BlobUnknown { .. })));
    }

    #[tokio::test]
    async fn a_final_put_whose_range_leaves_a_gap_is_refused_with_416_and_nothing_is_committed() {
        let (_d, reg) = registry().await;
        let who = org("o");
        let id = reg.start_upload(&who, "o/app").unwrap();
        reg.upload_chunk(&who, "o/app", &id, Chunk { range: Some((0, 2)), length: Some(3) }, body(b"abc"))
            .await
            .unwrap();
        let d = sha256(b"abcxyz");
        let gap = Chunk { range: Some((6, 8)), length: Some(3) };
        let e = reg.upload_finish(&who, "o/app", &id, &d, gap, body(b"xyz")).await.unwrap_err();
        assert_eq!(e.code(), (416, "BLOB_UPLOAD_INVALID"), "{e}");
        assert!(!reg.content().contains(&d));
        assert!(matches!(reg.open_blob(&who, "o/app", &d).await, Err(RegistryError::BlobUnknown { .. })));
        assert_eq!(reg.upload_status(&who, "o/app", &id).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_manifest_whose_layer_size_lies_is_refused_naming_the_descriptor() {
        let (_d, reg) = registry().await;
        let who = org("o");
        let layer = vec![7u8; 1 << 20];
        let m = manifest_declaring(&reg, &who, "o/app", &layer, 100).await;
        let tag = Reference::Tag("1.0".into());
        let e = reg.put_manifest(&who, "o/app", &tag, Some(oci::OCI_MANIFEST), &m).unwrap_err();
        assert_eq!(e.code(), (400, "MANIFEST_INVALID"));
        assert!(e.to_string().contains("layers[0] declares 100 bytes"), "{e}");
        assert_eq!(e.detail()["actualSize"], 1 << 20);
        assert!(reg.manifest(&who, "o/app", &tag).is_err(), "nothing was tagged");
        assert!(!reg.content().contains(&sha256(&m)));

        let honest = manifest_declaring(&reg, &who, "o/app", &layer, layer.len() as u64).await;
        reg.put_manifest(&who, "o/app", &tag, Some(oci::OCI_MANIFEST), &honest).unwrap();
    }

    #[tokio::test]
    async fn a_descriptor_without_a_size_and_an_index_child_with_a_wrong_one_are_refused() {
        let (_d, reg) = registry().await;
        let who = org("o");
        let layer = b"layer";
        let m = manifest_declaring(&reg, &who, "o/app", layer, 5).await;
        let mut unsized_: serde_json::Value = serde_json::from_slice(&m).unwrap();
        unsized_["config"].as_object_mut().unwrap().remove("size");
        let bytes = serde_json::to_vec(&unsized_).unwrap();
        let e = reg.put_manifest(&who, "o/app", &Reference::Tag("a".into()), None, &bytes).unwrap_err();
        assert_eq!(e.code(), (400, "MANIFEST_INVALID"));
        assert!(e.to_string().contains("config"), "{e}");

        let md = reg.put_manifest(&who, "o/app", &Reference::Tag("b".into()), None, &m).unwrap();
        let index = |size: usize| {
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2, "mediaType": oci::OCI_INDEX,
                "manifests": [{"mediaType": oci::OCI_MANIFEST, "digest": md, "size": size,
                               "platform": {"os": "linux", "architecture": "amd64"}}],
            }))
            .unwrap()
        };
        let e = reg.put_manifest(&who, "o/app", &Reference::Tag("i".into()), None, &index(1)).unwrap_err();
        assert!(
            matches!(e, RegistryError::DescriptorSize { ref descriptor, .. } if descriptor == "manifests[0]"),
            "{e}"
        );
        reg.put_manifest(&who, "o/app", &Reference::Tag("i".into()), None, &index(m.len())).unwrap();
    }

    #[tokio::test]
    async fn a_manifest_pushed_by_a_sha512_digest_is_verified_and_stored_under_it() {
        let (_d, reg) = registry().await;
        let who = org("o");
        let m = manifest_declaring(&reg, &who, "o/app", b"layer", 5).await;
        let d = cove_image::content::sha512(&m);
        assert_eq!(reg.put_manifest(&who, "o/app", &Reference::Digest(d.clone()), None, &m).unwrap(), d);
        assert_eq!(reg.manifest(&who, "o/app", &Reference::Digest(d.clone())).unwrap().bytes, m);
        let other = cove_image::content::sha512(b"something else");
        let e = reg.put_manifest(&who, "o/app", &Reference::Digest(other), None, &m).unwrap_err();
        assert_eq!(e.code(), (400, "DIGEST_INVALID"));
    }

    /// Pushes an artifact manifest (empty config) whose `subject` is `subject`.
    async fn referrer(
        reg: &RegistryService,
        who: &Caller,
        name: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
        note: &str,
    ) -> Pushed {
        let (cd, ld) = (sha256(b"{}"), sha256(note.as_bytes()));
        reg.upload_whole(who, name, &cd, body(b"{}")).await.unwrap();
        reg.upload_whole(who, name, &ld, body(note.as_bytes())).await.unwrap();
        let mut m = serde_json::json!({
            "schemaVersion": 2, "mediaType": oci::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.example.config.v1+json", "digest": cd, "size": 2},
            "layers": [{"mediaType": "text/plain", "digest": ld, "size": note.len()}],
            "subject": {"mediaType": oci::OCI_MANIFEST, "digest": subject, "size": 1},
            "annotations": {"note": note},
        });
        if let Some(t) = artifact_type {
            m["artifactType"] = t.into();
        }
        let bytes = serde_json::to_vec(&m).unwrap();
        reg.push_manifest(who, name, &Reference::Digest(sha256(&bytes)), None, &bytes).unwrap()
    }

    #[tokio::test]
    async fn referrers_are_listed_with_their_artifact_type_filtered_and_forgotten_when_deleted() {
        let (_d, reg) = registry().await;
        let who = org(ORG_A);
        let app = &format!("{ORG_A}/app");
        // The subject need not exist yet.
        let subject = sha256(b"not pushed yet");
        let sig = referrer(&reg, &who, app, &subject, Some("application/vnd.example.sig"), "sig").await;
        assert_eq!(sig.subject.as_ref(), Some(&subject));
        let sbom = referrer(&reg, &who, app, &subject, None, "sbom").await;
        let all = reg.referrers(&who, app, &subject, None).unwrap();
        assert_eq!(all["mediaType"], oci::OCI_INDEX);
        let listed = all["manifests"].as_array().unwrap();
        assert_eq!(listed.len(), 2);
        let by = |d: &Digest| listed.iter().find(|x| x["digest"] == d.to_string()).unwrap().clone();
        assert_eq!(by(&sig.digest)["artifactType"], "application/vnd.example.sig");
        assert_eq!(by(&sbom.digest)["artifactType"], "application/vnd.example.config.v1+json", "the config's type");
        assert_eq!(by(&sbom.digest)["annotations"]["note"], "sbom");
        assert_eq!(by(&sbom.digest)["mediaType"], oci::OCI_MANIFEST);
        let size = reg.manifest(&who, app, &Reference::Digest(sbom.digest.clone())).unwrap().bytes.len();
        assert_eq!(by(&sbom.digest)["size"], size);

        let only = reg.referrers(&who, app, &subject, Some("application/vnd.example.sig")).unwrap();
        assert_eq!(only["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(only["manifests"][0]["digest"], sig.digest.to_string());
        let none = reg.referrers(&who, app, &sha256(b"other"), None).unwrap();
        assert_eq!(none["manifests"], serde_json::json!([]));

        reg.delete_manifest(&who, app, &Reference::Digest(sig.digest.clone())).unwrap();
        let left = reg.referrers(&who, app, &subject, None).unwrap();
        assert_eq!(left["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(left["manifests"][0]["digest"], sbom.digest.to_string());
        // Another organization cannot list them.
        let e = reg.referrers(&org(ORG_B), app, &subject, None).unwrap_err();
        assert_eq!(e.code(), (404, "NAME_UNKNOWN"));
    }

    #[tokio::test]
    async fn a_reference_neither_tag_nor_digest_is_an_unknown_manifest_for_reads_and_deletes() {
        let (_d, reg) = registry().await;
        let who = org(ORG_A);
        let app = &format!("{ORG_A}/app");
        let m = manifest_declaring(&reg, &who, app, b"layer", 5).await;
        reg.put_manifest(&who, app, &Reference::Tag("1".into()), None, &m).unwrap();
        let why = PathError::Tag("-bad".into());
        let e = reg.bad_reference(&who, app, Access::Pull, &why);
        assert_eq!(e.code(), (404, "MANIFEST_UNKNOWN"));
        assert!(e.to_string().contains("-bad"), "{e}");
        assert_eq!(reg.bad_reference(&who, app, Access::Push, &why).code(), (404, "MANIFEST_UNKNOWN"));
        assert_eq!(reg.bad_reference(&who, &format!("{ORG_A}/none"), Access::Pull, &why).code(), (404, "NAME_UNKNOWN"));
        assert_eq!(reg.bad_reference(&org(ORG_B), app, Access::Push, &why).code(), (403, "DENIED"));
    }
}
