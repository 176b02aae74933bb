//! The few OCI / Docker image-spec documents Cove reads, with only the fields it uses.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The `Accept` header for manifest requests: everything above.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// A content descriptor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:…` (validated where used).
    pub digest: String,
    /// Bytes.
    #[serde(default)]
    pub size: u64,
    /// For index entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// An index entry's platform.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Platform {
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// e.g. `v8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// Either a manifest or an index; `mediaType` (or the response's content type) tells which.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestOrIndex {
    /// Schema version (2).
    #[serde(default)]
    pub schema_version: u32,
    /// Media type, when the document carries it.
    #[serde(default)]
    pub media_type: Option<String>,
    /// Manifest: image config.
    #[serde(default)]
    pub config: Option<Descriptor>,
    /// Manifest: layers, bottom first.
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
    /// Index: per-platform manifests.
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
}

/// The image configuration blob.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfigFile {
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// Runtime defaults.
    #[serde(default)]
    pub config: Option<RunConfig>,
    /// Uncompressed layer digests.
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

/// `config.config`: how a container from the image runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// Entrypoint.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` pairs.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// Working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// User (name, uid, uid:gid).
    #[serde(default)]
    pub user: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: Option<HashMap<String, String>>,
}

/// `config.rootfs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    /// `layers`.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// Digest of each uncompressed layer.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}
