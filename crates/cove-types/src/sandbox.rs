//! Sandbox states and the sandbox wire types (contract §4.3).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The label that asks for container-engine mode (Docker-in-Docker without a privileged
/// container): on an image (`"true"`), or on a sandbox (`"true"` or `"false"`, over what its
/// image says).
pub const ENGINE_LABEL: &str = "dev.cove.container-engine";

/// Whether an image asks for container-engine mode: its [`ENGINE_LABEL`] is `"true"`, or its
/// entrypoint starts Docker's daemon (`dockerd`, `dockerd-entrypoint.sh` of `docker:*-dind`).
pub fn image_wants_engine(labels: Option<&std::collections::HashMap<String, String>>, entrypoint: &[String]) -> bool {
    labels.and_then(|l| l.get(ENGINE_LABEL)).is_some_and(|v| v == "true")
        || entrypoint.first().is_some_and(|e| e.rsplit('/').next().is_some_and(|b| b.starts_with("dockerd")))
}

/// A sandbox's state, spelled as Daytona spells it.
///
/// ```text
/// creating ─► started ◄─► stopped ─► archiving ─► archived ─► restoring ─► stopped
///    │           │  (stopping/starting in between)
///    └► error ◄──┘
/// any ─► destroying ─► destroyed
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// Being set up.
    Creating,
    /// Waiting for its snapshot to be pulled.
    PullingSnapshot,
    /// Starting again after a stop.
    Starting,
    /// Running; the toolbox answers.
    Started,
    /// Being stopped.
    Stopping,
    /// Stopped; its files are kept.
    Stopped,
    /// Failed; `errorReason` says why.
    Error,
    /// Being deleted.
    Destroying,
    /// Gone.
    Destroyed,
    /// Created from an `Image`: its build has not started yet.
    PendingBuild,
    /// Created from an `Image`: its image is being built.
    BuildingSnapshot,
    /// Created from an `Image` whose build failed; `errorReason` says why.
    BuildFailed,
    /// Stopped, and its disk is being compressed into the content store.
    Archiving,
    /// Stopped with its disk only in the content store (no disk image); `start` restores it.
    Archived,
    /// Its disk is being restored from its archive (the first part of starting an archived
    /// sandbox).
    Restoring,
}

impl SandboxState {
    /// Every state.
    pub const ALL: [SandboxState; 15] = [
        Self::Creating,
        Self::PullingSnapshot,
        Self::Starting,
        Self::Started,
        Self::Stopping,
        Self::Stopped,
        Self::Error,
        Self::Destroying,
        Self::Destroyed,
        Self::PendingBuild,
        Self::BuildingSnapshot,
        Self::BuildFailed,
        Self::Archiving,
        Self::Archived,
        Self::Restoring,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::PullingSnapshot => "pulling_snapshot",
            Self::Starting => "starting",
            Self::Started => "started",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Error => "error",
            Self::Destroying => "destroying",
            Self::Destroyed => "destroyed",
            Self::PendingBuild => "pending_build",
            Self::BuildingSnapshot => "building_snapshot",
            Self::BuildFailed => "build_failed",
            Self::Archiving => "archiving",
            Self::Archived => "archived",
            Self::Restoring => "restoring",
        }
    }

    /// `start` is allowed from stopped, archived (its disk is restored first) and error (a
    /// crashed sandbox can be started again), and is a no-op on a started one.
    pub fn can_start(self) -> bool {
        matches!(self, Self::Stopped | Self::Archived | Self::Error | Self::Started)
    }

    /// `archive` is allowed from stopped only, and is a no-op on an archived one.
    pub fn can_archive(self) -> bool {
        matches!(self, Self::Stopped | Self::Archived)
    }

    /// `stop` is allowed from started, and is a no-op on a stopped one.
    pub fn can_stop(self) -> bool {
        matches!(self, Self::Started | Self::Stopped)
    }

    /// Anything not already going away can be deleted, except while its disk moves to or
    /// from its archive.
    pub fn can_delete(self) -> bool {
        !matches!(self, Self::Destroying | Self::Destroyed | Self::Archiving | Self::Restoring)
    }

    /// Toolbox calls are proxied only to a started sandbox.
    pub fn can_use_toolbox(self) -> bool {
        self == Self::Started
    }

    /// A verb is in flight; another must wait.
    pub fn is_transitional(self) -> bool {
        matches!(
            self,
            Self::Creating
                | Self::PullingSnapshot
                | Self::Starting
                | Self::Stopping
                | Self::Destroying
                | Self::PendingBuild
                | Self::BuildingSnapshot
                | Self::Archiving
                | Self::Restoring
        )
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown state string.
#[derive(Debug, thiserror::Error)]
#[error("unknown sandbox state {0:?}")]
pub struct ParseSandboxStateError(pub String);

impl FromStr for SandboxState {
    type Err = ParseSandboxStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| ParseSandboxStateError(s.to_string()))
    }
}

/// `POST /sandbox` body: every key the official SDKs send. Unknown keys are refused (400
/// naming the key), and known ones Cove does not honour are refused by the service when set:
/// a caller must never believe a setting applies that does not.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSandbox {
    /// Name (defaults to the id).
    pub name: Option<String>,
    /// Snapshot name or id (defaults to the server's default snapshot).
    pub snapshot: Option<String>,
    /// User inside the sandbox.
    pub user: Option<String>,
    /// Environment.
    pub env: Option<BTreeMap<String, String>>,
    /// Labels.
    pub labels: Option<BTreeMap<String, String>>,
    /// Public preview links.
    pub public: Option<bool>,
    /// Region.
    pub target: Option<String>,
    /// vCPUs (only with an image build).
    pub cpu: Option<i64>,
    /// GPUs.
    pub gpu: Option<i64>,
    /// GiB.
    pub memory: Option<i64>,
    /// GiB.
    pub disk: Option<i64>,
    /// Minutes of inactivity before stopping (0 = never).
    pub auto_stop_interval: Option<i64>,
    /// Minutes before archiving.
    pub auto_archive_interval: Option<i64>,
    /// Minutes after stop before deleting (0 = delete on stop, -1 = never).
    pub auto_delete_interval: Option<i64>,
    /// Block all outbound network traffic.
    pub network_block_all: Option<bool>,
    /// Outbound allow-list: comma-separated IPv4 CIDRs.
    pub network_allow_list: Option<String>,
    /// Outbound allow-list: comma-separated domains (`example.com`, `*.example.org`).
    pub domain_allow_list: Option<String>,
    /// Id or name of a sandbox of the same organization that this one may reach (and that may
    /// reach it), by name and address.
    pub linked_sandbox: Option<String>,
    /// Daytona's outbound HTTP proxy: not supported, refused when set.
    pub outbound_proxy_url: Option<String>,
    /// OpenTelemetry collector override: not supported, refused when set.
    pub otel_endpoint_override: Option<String>,
    /// `/dev/kvm` inside the sandbox: not supported, refused when `true`.
    pub kvm: Option<bool>,
    /// GPU models: not supported, refused when non-empty.
    pub gpu_type: Option<Vec<String>>,
    /// Pre-emptible GPU sandbox: not supported, refused when `true`.
    pub spot: Option<bool>,
    /// Minutes before pausing: not supported, refused when non-zero.
    pub auto_pause_interval: Option<i64>,
    /// Minutes before the sandbox is deleted: not supported, refused when non-zero.
    pub ttl_minutes: Option<i64>,
    /// Minutes to wait for a runner: Cove places at once, so any positive value is met.
    pub queue_timeout: Option<i64>,
    /// Volume mounts: not supported, refused when non-empty.
    pub volumes: Option<Vec<serde_json::Value>>,
    /// Organization secrets as environment: not supported, refused when non-empty.
    pub secrets: Option<Vec<serde_json::Value>>,
    /// Build from a Dockerfile instead of a snapshot.
    pub build_info: Option<crate::dto::CreateBuildInfo>,
    /// Run privileged (explicit opt-in).
    pub privileged: Option<bool>,
}

/// `POST /sandbox/{id}/network-settings` body (the SDK's `update_network_settings`). Unknown
/// keys are refused: a caller must never believe a restriction applies that does not.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateNetworkSettings {
    /// `true`: nothing leaves the sandbox; `false` alone: back to unrestricted.
    pub network_block_all: Option<bool>,
    /// Comma-separated IPv4 CIDRs (replaces the stored list).
    pub network_allow_list: Option<String>,
    /// Comma-separated domains (replaces the stored list).
    pub domain_allow_list: Option<String>,
}

/// The full sandbox DTO (create, get, start, stop, delete answers).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SandboxDto {
    /// Id.
    pub id: String,
    /// Owner.
    pub organization_id: String,
    /// Name.
    pub name: String,
    /// Snapshot name.
    pub snapshot: Option<String>,
    /// User.
    pub user: String,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Public.
    pub public: bool,
    /// Network blocked.
    pub network_block_all: bool,
    /// Outbound CIDR allow-list (`None`: unrestricted by CIDR).
    pub network_allow_list: Option<String>,
    /// Outbound domain allow-list.
    pub domain_allow_list: Option<String>,
    /// The sandbox's IPv4 address on the host's sandbox network (Cove's addition).
    pub ip: Option<String>,
    /// The sandbox linked at create, when any (Cove's addition).
    pub linked_sandbox_id: Option<String>,
    /// Always false.
    pub kvm: bool,
    /// Region id.
    pub target: String,
    /// vCPUs.
    pub cpu: i64,
    /// GPUs.
    pub gpu: i64,
    /// GiB.
    pub memory: i64,
    /// GiB.
    pub disk: i64,
    /// State.
    pub state: SandboxState,
    /// Desired state.
    pub desired_state: String,
    /// Why it failed.
    pub error_reason: Option<String>,
    /// Minutes.
    pub auto_stop_interval: i64,
    /// Minutes.
    pub auto_archive_interval: i64,
    /// Minutes.
    pub auto_delete_interval: i64,
    /// Volumes (none yet).
    pub volumes: Vec<serde_json::Value>,
    /// ISO-8601.
    pub created_at: String,
    /// ISO-8601.
    pub updated_at: String,
    /// `container`.
    pub sandbox_class: String,
    /// The agent's version.
    pub daemon_version: Option<String>,
    /// Base URL of toolbox calls: `{toolboxProxyUrl}/{id}/process/execute`.
    pub toolbox_proxy_url: String,
}

/// A list item (no env, kvm, volumes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SandboxListItem {
    /// Id.
    pub id: String,
    /// Owner.
    pub organization_id: String,
    /// Name.
    pub name: String,
    /// Region.
    pub target: String,
    /// Snapshot name.
    pub snapshot: Option<String>,
    /// User.
    pub user: String,
    /// State.
    pub state: SandboxState,
    /// Why it failed.
    pub error_reason: Option<String>,
    /// Public.
    pub public: bool,
    /// Network blocked.
    pub network_block_all: bool,
    /// vCPUs.
    pub cpu: i64,
    /// GPUs.
    pub gpu: i64,
    /// GiB.
    pub memory: i64,
    /// GiB.
    pub disk: i64,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// ISO-8601.
    pub created_at: String,
    /// ISO-8601.
    pub updated_at: String,
    /// Toolbox base URL.
    pub toolbox_proxy_url: String,
}

/// `GET /sandbox` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListSandboxesResponse {
    /// Items.
    pub items: Vec<SandboxListItem>,
    /// Next page cursor, when there is one.
    pub next_cursor: Option<String>,
}

impl From<&SandboxDto> for SandboxListItem {
    fn from(s: &SandboxDto) -> Self {
        SandboxListItem {
            id: s.id.clone(),
            organization_id: s.organization_id.clone(),
            name: s.name.clone(),
            target: s.target.clone(),
            snapshot: s.snapshot.clone(),
            user: s.user.clone(),
            state: s.state,
            error_reason: s.error_reason.clone(),
            public: s.public,
            network_block_all: s.network_block_all,
            cpu: s.cpu,
            gpu: s.gpu,
            memory: s.memory,
            disk: s.disk,
            labels: s.labels.clone(),
            created_at: s.created_at.clone(),
            updated_at: s.updated_at.clone(),
            toolbox_proxy_url: s.toolbox_proxy_url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dind_images_and_images_labelled_for_an_engine_ask_for_container_engine_mode() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(image_wants_engine(None, &v(&["dockerd-entrypoint.sh"])));
        assert!(image_wants_engine(None, &v(&["/usr/local/bin/dockerd", "--debug"])));
        let labelled: std::collections::HashMap<String, String> =
            [(ENGINE_LABEL.to_string(), "true".to_string())].into();
        assert!(image_wants_engine(Some(&labelled), &v(&["sleep", "infinity"])));
        assert!(!image_wants_engine(None, &v(&["sleep", "infinity"])));
        assert!(
            !image_wants_engine(None, &v(&["/docker-entrypoint.sh", "nginx"])),
            "nginx's entrypoint is not an engine"
        );
    }

    #[test]
    fn every_sandbox_state_round_trips() {
        for s in SandboxState::ALL {
            assert_eq!(s.as_str().parse::<SandboxState>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
    }

    #[test]
    fn a_sandbox_in_transition_accepts_no_other_verb_but_delete() {
        for s in SandboxState::ALL.into_iter().filter(|s| s.is_transitional()) {
            assert!(!s.can_start() && !s.can_stop(), "{s}");
        }
        assert!(SandboxState::Creating.can_delete());
        assert!(!SandboxState::Destroying.can_delete());
    }

    #[test]
    fn the_python_sdk_create_body_parses() {
        let b = r#"{"snapshot":"docker-dind","env":{},"labels":{"code-toolbox-language":"python"},"volumes":[]}"#;
        let c: CreateSandbox = serde_json::from_str(b).unwrap();
        assert_eq!(c.snapshot.as_deref(), Some("docker-dind"));
        assert_eq!(c.labels.unwrap()["code-toolbox-language"], "python");
    }
}
