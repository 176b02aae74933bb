//! Request and response bodies of the Daytona-compatible API, field for field as the
//! official SDKs read and write them (see `shared/reference/daytona-sdk-contract.md` §2).
//!
//! Requests ignore unknown keys on purpose: newer SDKs send fields older servers do not
//! know, and Daytona's own server ignores them too.

use serde::{Deserialize, Serialize};

use crate::state::SnapshotState;

/// `POST /snapshots` body.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSnapshot {
    /// Snapshot name, unique in the organization.
    pub name: String,
    /// Image reference to pull (exclusive with `build_info`).
    pub image_name: Option<String>,
    /// Entrypoint override.
    pub entrypoint: Option<Vec<String>>,
    /// vCPUs.
    pub cpu: Option<i64>,
    /// GPUs.
    pub gpu: Option<i64>,
    /// GPU types (a list of exactly one when given).
    pub gpu_type: Option<Vec<String>>,
    /// Memory in GiB.
    pub memory: Option<i64>,
    /// Disk in GiB.
    pub disk: Option<i64>,
    /// A Dockerfile build instead of a pull.
    pub build_info: Option<CreateBuildInfo>,
    /// Region id; the server's first region when absent.
    pub region_id: Option<String>,
    /// `container` (the only class served).
    pub sandbox_class: Option<String>,
}

/// `buildInfo` in a create request.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateBuildInfo {
    /// The Dockerfile text.
    pub dockerfile_content: String,
    /// Hashes of uploaded context archives.
    #[serde(default)]
    pub context_hashes: Vec<String>,
}

/// A snapshot as the SDK reads it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotDto {
    /// UUID.
    pub id: String,
    /// Owning organization.
    pub organization_id: String,
    /// System-wide snapshot (never for user snapshots here).
    pub general: bool,
    /// Name.
    pub name: String,
    /// The image reference as given.
    pub image_name: String,
    /// Lifecycle state.
    pub state: SnapshotState,
    /// Unpacked size in GiB, once active.
    pub size: Option<f64>,
    /// The command sandboxes run.
    pub entrypoint: Option<Vec<String>>,
    /// vCPUs.
    pub cpu: i64,
    /// GPUs.
    pub gpu: i64,
    /// GPU type, if requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_type: Option<String>,
    /// Memory in GiB (`mem`, not `memory`, on the response side).
    pub mem: i64,
    /// Disk in GiB.
    pub disk: i64,
    /// Why the pull or build failed.
    pub error_reason: Option<String>,
    /// ISO-8601.
    pub created_at: String,
    /// ISO-8601.
    pub updated_at: String,
    /// ISO-8601, set when a sandbox last used it.
    pub last_used_at: Option<String>,
    /// Regions it is available in.
    pub region_ids: Vec<String>,
    /// Content digest of the resolved linux/amd64 manifest.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub ref_: Option<String>,
    /// Always `container`.
    pub sandbox_class: String,
    /// Snapshots made from sandboxes (not supported: always null).
    pub source_sandbox_id: Option<String>,
    /// The Dockerfile build it comes from, when built rather than pulled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_info: Option<BuildInfoDto>,
}

/// `BuildInfo` of a built snapshot or sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildInfoDto {
    /// The Dockerfile text.
    pub dockerfile_content: String,
    /// Hashes of the uploaded context archives.
    pub context_hashes: Vec<String>,
    /// ISO-8601.
    pub created_at: String,
    /// ISO-8601.
    pub updated_at: String,
    /// Content address of the build: identical Dockerfile and contexts share it.
    pub snapshot_ref: String,
}

/// `GET /snapshots` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaginatedSnapshots {
    /// This page.
    pub items: Vec<SnapshotDto>,
    /// All matches.
    pub total: i64,
    /// 1-based page number.
    pub page: i64,
    /// `ceil(total / limit)`.
    pub total_pages: i64,
}

/// A region (`GET /shared-regions`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegionDto {
    /// Region id, as used in `regionId` / `target`.
    pub id: String,
    /// Display name (same as the id).
    pub name: String,
    /// `shared`: every organization may use it.
    pub region_type: String,
    /// ISO-8601.
    pub created_at: String,
    /// ISO-8601.
    pub updated_at: String,
}

/// `POST /api-keys` body.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateApiKey {
    /// A label for the key.
    pub name: String,
}

/// An API key as listed (never with its secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyDto {
    /// Key id.
    pub id: String,
    /// Label.
    pub name: String,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    /// Owning organization.
    pub organization_id: String,
    /// ISO-8601.
    pub created_at: String,
    /// ISO-8601.
    pub last_used_at: Option<String>,
}

/// The answer to creating a key: the only time its value is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedApiKey {
    /// The key's record.
    #[serde(flatten)]
    pub key: ApiKeyDto,
    /// The secret itself.
    pub value: String,
}

/// `POST /organizations` body (admin only).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateOrganization {
    /// Display name.
    pub name: String,
}

/// An organization, with a first API key when just created.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrganizationDto {
    /// Organization id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// ISO-8601.
    pub created_at: String,
    /// The organization's first key (only in the create answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<CreatedApiKey>,
}

/// Daytona's error envelope (the NestJS shape the SDK parses `message` from).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorEnvelope {
    /// HTTP status.
    pub status_code: u16,
    /// Status text, e.g. `Not Found`.
    pub error: String,
    /// What went wrong, for a human.
    pub message: String,
    /// Machine code, e.g. `NOT_FOUND`.
    pub code: String,
    /// The request path.
    pub path: String,
    /// ISO-8601.
    pub timestamp: String,
    /// Always `COVE_API`.
    pub source: String,
}

/// Formats a timestamp the way the SDK's pydantic models parse it: `2024-01-01T00:00:00.000Z`.
pub fn iso8601(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdk_create_body_parses_and_unknown_keys_are_ignored() {
        let body =
            r#"{"name":"gpu-snap","cpu":1,"gpu":1,"memory":1,"disk":1,"regionId":"us-east-1","futureField":true}"#;
        let c: CreateSnapshot = serde_json::from_str(body).unwrap();
        assert_eq!((c.cpu, c.gpu, c.memory, c.disk), (Some(1), Some(1), Some(1), Some(1)));
        assert_eq!(c.region_id.as_deref(), Some("us-east-1"));
    }

    #[test]
    fn timestamps_have_milliseconds_and_a_z() {
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 5_000_000).unwrap();
        assert_eq!(iso8601(t), "2023-11-14T22:13:20.005Z");
    }
}
