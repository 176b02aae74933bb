//! What every handler can reach.

use std::sync::Arc;

use crate::service::keys::KeyService;
use crate::service::sandboxes::SandboxService;
use crate::service::snapshots::SnapshotService;
use crate::store::Store;

/// Shared application state, built once in [`crate::serve`].
#[derive(Debug, Clone)]
pub struct AppState {
    /// Metadata.
    pub store: Arc<dyn Store>,
    /// Authentication and keys.
    pub keys: KeyService,
    /// Snapshots.
    pub snapshots: SnapshotService,
    /// Sandboxes.
    pub sandboxes: SandboxService,
    /// The built-in OCI registry (`/v2/`).
    pub registry: crate::registry::RegistryService,
    /// The organizations' private registries (`/api/docker-registry`).
    pub docker_registries: crate::service::registries::DockerRegistryService,
    /// Object storage for build contexts.
    pub object_storage: crate::s3::ObjectStorage,
    /// How clients reach this server (no trailing slash).
    pub public_url: String,
    /// Preview links and the preview proxy.
    pub preview: crate::preview::PreviewService,
    /// Open once sandboxes are reconciled after a start (`crate::startup`).
    pub startup: crate::startup::Gate,
    /// This node (`--database-url`); `None` on a single-node server.
    pub nodes: Option<crate::service::nodes::NodeService>,
    /// Forwarding to other nodes (`--database-url`); `None` on a single-node server.
    pub forwarder: Option<crate::forward::Forwarder>,
    /// When this server started.
    pub started_at: chrono::DateTime<chrono::Utc>,
}
