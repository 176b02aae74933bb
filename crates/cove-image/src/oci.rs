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

/// What a manifest document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest (OCI or Docker schema 2): a config and layers.
    Image,
    /// An index (OCI index or Docker manifest list): per-platform manifests.
    Index,
}

/// Why a document's kind could not be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KindError {
    /// A media type that is neither a manifest's nor an index's.
    #[error("media type {0} is not an image manifest or index")]
    Unsupported(String),
    /// No media type, and fields of neither kind (or of both).
    #[error(
        "the document has no mediaType and not the fields of an image manifest (config, layers) or an index (manifests)"
    )]
    Shapeless,
    /// The media type says one kind, the fields another.
    #[error("the document's fields do not fit its media type {0}")]
    Mismatch(String),
    /// An image manifest without the config every image needs.
    #[error("the image manifest (media type {0}) has no config")]
    NoConfig(String),
}

impl ManifestKind {
    /// The kind a media type names, if it names one Cove reads.
    pub fn of_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            OCI_MANIFEST | DOCKER_MANIFEST => Some(Self::Image),
            OCI_INDEX | DOCKER_LIST => Some(Self::Index),
            _ => None,
        }
    }

    /// The OCI media type of this kind (for documents that carry none).
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Self::Image => OCI_MANIFEST,
            Self::Index => OCI_INDEX,
        }
    }
}

impl ManifestOrIndex {
    /// What this document is, and its media type. OCI lets a manifest leave `mediaType` out
    /// (umoci and older buildah do); its type then comes from `hint`, the media type of the
    /// descriptor that referenced it or the `Content-Type` it was served or pushed with (one
    /// that names no manifest type, such as `application/json`, is ignored), and as a last
    /// resort from its fields: `manifests` is an index, `config` + `layers` an image manifest
    /// (the OCI types are then returned). A `mediaType` in the document wins over the hint
    /// (registries are not all careful with `Content-Type`); the fields must fit the type
    /// either way.
    pub fn kind(&self, hint: Option<&str>) -> Result<(ManifestKind, String), KindError> {
        let hint = hint.map(|h| h.split(';').next().unwrap_or_default().trim()).filter(|h| !h.is_empty());
        let known_hint = hint.filter(|h| ManifestKind::of_media_type(h).is_some());
        let media_type = match (self.media_type.as_deref().filter(|m| !m.is_empty()), known_hint) {
            (Some(d), _) => d.to_string(),
            (None, Some(h)) => h.to_string(),
            (None, None) => match (self.manifests.is_some(), self.config.is_some() && self.layers.is_some()) {
                (true, false) => OCI_INDEX.to_string(),
                (false, true) => OCI_MANIFEST.to_string(),
                _ => return Err(KindError::Shapeless),
            },
        };
        let kind =
            ManifestKind::of_media_type(&media_type).ok_or_else(|| KindError::Unsupported(media_type.clone()))?;
        let fits = match kind {
            ManifestKind::Index => self.config.is_none() && self.layers.is_none(),
            ManifestKind::Image => self.manifests.is_none(),
        };
        if !fits {
            return Err(KindError::Mismatch(media_type));
        }
        if kind == ManifestKind::Image && self.config.is_none() {
            return Err(KindError::NoConfig(media_type));
        }
        Ok((kind, media_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(json: &str) -> ManifestOrIndex {
        serde_json::from_str(json).unwrap()
    }

    const IMAGE: &str = r#"{"schemaVersion":2,"config":{"digest":"sha256:c","size":1},"layers":[]}"#;
    const INDEX: &str = r#"{"schemaVersion":2,"manifests":[]}"#;

    #[test]
    fn a_manifest_without_media_type_takes_the_type_it_was_referenced_or_served_with() {
        assert_eq!(doc(IMAGE).kind(Some(DOCKER_MANIFEST)).unwrap(), (ManifestKind::Image, DOCKER_MANIFEST.into()));
        let served = format!("{OCI_INDEX}; charset=utf-8");
        assert_eq!(doc(INDEX).kind(Some(&served)).unwrap(), (ManifestKind::Index, OCI_INDEX.into()));
    }

    #[test]
    fn a_manifest_without_any_media_type_is_told_by_its_fields() {
        assert_eq!(doc(IMAGE).kind(None).unwrap(), (ManifestKind::Image, OCI_MANIFEST.into()));
        assert_eq!(doc(INDEX).kind(None).unwrap(), (ManifestKind::Index, OCI_INDEX.into()));
        // A content type that names no manifest type says nothing.
        assert_eq!(doc(IMAGE).kind(Some("application/json")).unwrap().0, ManifestKind::Image);
        assert_eq!(doc(IMAGE).kind(Some("application/octet-stream")).unwrap().0, ManifestKind::Image);
    }

    #[test]
    fn the_documents_own_media_type_wins_over_the_hint() {
        let m = doc(&format!(r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"digest":"x"}}}}"#));
        assert_eq!(m.kind(None).unwrap(), (ManifestKind::Image, DOCKER_MANIFEST.into()));
        assert_eq!(m.kind(Some("text/plain")).unwrap().1, DOCKER_MANIFEST);
        assert_eq!(m.kind(Some(OCI_MANIFEST)).unwrap().1, DOCKER_MANIFEST);
        assert_eq!(m.kind(Some(OCI_INDEX)).unwrap().0, ManifestKind::Image);
    }

    #[test]
    fn documents_whose_fields_do_not_fit_their_type_or_say_nothing_are_refused() {
        assert_eq!(doc(IMAGE).kind(Some(OCI_INDEX)).unwrap_err(), KindError::Mismatch(OCI_INDEX.into()));
        assert_eq!(doc(INDEX).kind(Some(OCI_MANIFEST)).unwrap_err(), KindError::Mismatch(OCI_MANIFEST.into()));
        assert_eq!(doc(r#"{"schemaVersion":2}"#).kind(None).unwrap_err(), KindError::Shapeless);
        let no_config = doc(&format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[]}}"#));
        assert_eq!(no_config.kind(None).unwrap_err(), KindError::NoConfig(OCI_MANIFEST.into()));
        let both = r#"{"schemaVersion":2,"config":{"digest":"x"},"layers":[],"manifests":[]}"#;
        assert_eq!(doc(both).kind(None).unwrap_err(), KindError::Shapeless);
        let v1 = doc(r#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+json"}"#);
        assert!(matches!(v1.kind(None), Err(KindError::Unsupported(_))));
        let err = doc(r#"{"schemaVersion":2}"#).kind(None).unwrap_err().to_string();
        assert!(err.contains("no mediaType"), "{err}");
    }
}
