//! Request and response bodies of the Daytona-compatible API, field for field as the
//! official SDKs read and write them (see `shared/reference/daytona-sdk-contract.md` §2).
//!
//! Requests ignore unknown keys on purpose: newer SDKs send fields older servers do not
//! know, and Daytona's own server ignores them too.

use serde::{Deserialize, Serialize};

use crate::state::SnapshotState;

/// `POST /snapshots` body. Unknown fields are refused (400 naming them), never ignored.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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
    /// A general snapshot (admin keys only): visible to every organization.
    pub general: Option<bool>,
}

/// `buildInfo` in a create request.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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

/// `POST /docker-registry` body: Daytona's `CreateDockerRegistry` plus Cove's optional `type`
/// and `roleArn` (the SDK never sends them, so its registries are `generic`).
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateDockerRegistry {
    /// Display name.
    pub name: String,
    /// Registry URL (fixed for `dockerhub` and `github`, so optional there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// User name (implied for `google` and `ecr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password, token or key; never returned, never printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Project or namespace below the URL (required for `google`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// `dockerhub`, `google`, `github`, `ecr` or `generic` (the default).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The IAM role the server assumes for an `ecr` registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
}

/// `PATCH /docker-registry/{id}` body: Daytona's `UpdateDockerRegistry`; absent fields (and an
/// empty password) keep their stored value.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateDockerRegistry {
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Registry URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// User name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// New password; absent or empty keeps the stored one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Project or namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Must equal the stored type when given (a registry's type cannot change).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The IAM role of an `ecr` registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
}

macro_rules! redacted_registry_debug {
    ($t:ty) => {
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("name", &self.name)
                    .field("url", &self.url)
                    .field("username", &self.username)
                    .field("password", &self.password.as_ref().map(|_| "<redacted>"))
                    .field("project", &self.project)
                    .field("provider", &self.provider)
                    .field("role_arn", &self.role_arn)
                    .finish()
            }
        }
    };
}
redacted_registry_debug!(CreateDockerRegistry);
redacted_registry_debug!(UpdateDockerRegistry);

/// A registry as the API returns it (`DockerRegistry`): never with its password.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerRegistryDto {
    /// UUID.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Normalised URL: host[:port][/path], no scheme.
    pub url: String,
    /// User name.
    pub username: String,
    /// Project or namespace (`""` when none).
    pub project: String,
    /// Always `organization` for registries created through the API.
    pub registry_type: String,
    /// ISO-8601.
    pub created_at: String,
    /// ISO-8601.
    pub updated_at: String,
    /// Cove extension: `dockerhub`, `google`, `github`, `ecr` or `generic`.
    pub provider: String,
    /// Cove extension: the role assumed for an `ecr` registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
}

/// `GET /docker-registry/registry-push-access`: short-lived credentials for the built-in
/// registry. Push `<registryUrl>/<project>/<name>:<tag>` with `username`/`secret` (Basic).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegistryPushAccessDto {
    /// Any user name works; this is the one to use.
    pub username: String,
    /// The token (the Basic password); valid until `expires_at`.
    pub secret: String,
    /// `host[:port]` of the registry.
    pub registry_url: String,
    /// `internal`.
    pub registry_id: String,
    /// The organization's namespace: repositories are `<project>/<name>`.
    pub project: String,
    /// ISO-8601.
    pub expires_at: String,
}

/// `GET /docker-registry/ecr-broker` (Cove extension): what the caller's organization puts in
/// the trust policy of the role an `ecr` registry names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EcrBrokerDto {
    /// The IAM identity of the server's AWS credentials: the trust policy's `Principal`.
    pub principal_arn: String,
    /// Its account id.
    pub account: String,
    /// The `sts:ExternalId` the server sends: the organization id.
    pub external_id: String,
    /// The `RoleSessionName` the server uses (`cove-<orgId>-pull`).
    pub session_name: String,
}

/// Formats a timestamp the way the SDK's pydantic models parse it: `2024-01-01T00:00:00.000Z`.
pub fn iso8601(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdk_create_body_parses_and_an_unknown_key_is_refused_by_name() {
        let body = r#"{"name":"gpu-snap","cpu":1,"gpu":1,"memory":1,"disk":1,"regionId":"us-east-1","gpuType":null}"#;
        let c: CreateSnapshot = serde_json::from_str(body).unwrap();
        assert_eq!((c.cpu, c.gpu, c.memory, c.disk), (Some(1), Some(1), Some(1), Some(1)));
        assert_eq!(c.region_id.as_deref(), Some("us-east-1"));
        let e = serde_json::from_str::<CreateSnapshot>(r#"{"name":"s","futureField":true}"#).unwrap_err();
        assert!(e.to_string().contains("futureField"), "{e}");
    }

    #[test]
    fn registry_requests_never_print_their_password_and_take_the_sdk_body() {
        let body = r#"{"name":"r","url":"x.io","username":"u","password":"hunter2","project":null}"#;
        let c: CreateDockerRegistry = serde_json::from_str(body).unwrap();
        assert_eq!((c.project.as_deref(), c.provider.as_deref()), (None, None));
        assert!(!format!("{c:?}").contains("hunter2"));
        let u: UpdateDockerRegistry = serde_json::from_str(r#"{"password":"hunter2","type":"ecr"}"#).unwrap();
        assert_eq!(u.provider.as_deref(), Some("ecr"));
        assert!(!format!("{u:?}").contains("hunter2"));
    }

    #[test]
    fn timestamps_have_milliseconds_and_a_z() {
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 5_000_000).unwrap();
        assert_eq!(iso8601(t), "2023-11-14T22:13:20.005Z");
    }
}
