//! Metadata persistence behind one small trait, on two engines: the embedded SQLite file
//! (the default) and PostgreSQL (`--database-url`, for nodes that share one database).
//!
//! Records here are plain data; validation and state rules live in the services. Every
//! state change that races with a background job goes through a compare-and-set
//! ([`Store::update_snapshot_if`]) so a finished pull can never revive a deleted snapshot.
//! The queries are written once (`sql.rs`), in SQL both engines accept; `sqlite.rs` and
//! `postgres.rs` only connect, migrate (`migrations/sqlite/`, `migrations/postgres/`: the
//! same numbers and meaning) and run statements.

mod postgres;
mod sql;
mod sqlite;
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod testing;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashSet;

use std::collections::BTreeMap;

use cove_types::{SandboxState, SnapshotState};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Unix milliseconds.
pub type Millis = i64;

/// An organization.
#[derive(Debug, Clone, PartialEq)]
pub struct Organization {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Created.
    pub created_at: Millis,
}

/// How an API key's `key_hash` was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyHashScheme {
    /// Bare sha256 hex: rows written before migration 0006, re-hashed when their key is next
    /// presented.
    Sha256,
    /// HMAC-SHA256 hex under the server's `api-keys.key`.
    HmacSha256,
}

impl KeyHashScheme {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::HmacSha256 => "hmac-sha256",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sha256" => Some(Self::Sha256),
            "hmac-sha256" => Some(Self::HmacSha256),
            _ => None,
        }
    }
}

/// A stored API key (only its hash).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRecord {
    /// Id.
    pub id: String,
    /// Owner.
    pub org_id: String,
    /// Label.
    pub name: String,
    /// Hex hash of the key, computed as `hash_scheme` says.
    pub key_hash: String,
    /// How `key_hash` was computed.
    pub hash_scheme: KeyHashScheme,
    /// First characters of the key.
    pub prefix: String,
    /// May create organizations (and revoke admin keys, create privileged sandboxes).
    pub admin: bool,
    /// Created.
    pub created_at: Millis,
    /// Last authenticated.
    pub last_used_at: Option<Millis>,
    /// When it was revoked; `None` while it is live.
    pub revoked_at: Option<Millis>,
}

/// What [`Store::revoke_api_key`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// The key is revoked now.
    Done,
    /// The organization has no such live key.
    NotFound,
    /// It is the last live admin key, so it was kept.
    LastAdmin,
}

/// A snapshot row.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    /// UUID.
    pub id: String,
    /// Owner.
    pub org_id: String,
    /// Name, unique per organization.
    pub name: String,
    /// Image reference as given.
    pub image_name: String,
    /// State.
    pub state: SnapshotState,
    /// Why it failed.
    pub error_reason: Option<String>,
    /// vCPUs.
    pub cpu: i64,
    /// GPUs.
    pub gpu: i64,
    /// GPU type.
    pub gpu_type: Option<String>,
    /// GiB.
    pub mem: i64,
    /// GiB.
    pub disk: i64,
    /// Command sandboxes run; `None` until known.
    pub entrypoint: Option<Vec<String>>,
    /// Region id.
    pub region_id: String,
    /// Unpacked size.
    pub size_bytes: Option<i64>,
    /// Manifest digest of the unpacked image.
    pub image_digest: Option<String>,
    /// Created.
    pub created_at: Millis,
    /// Last changed.
    pub updated_at: Millis,
    /// Last used by a sandbox.
    pub last_used_at: Option<Millis>,
    /// The Dockerfile build it comes from, instead of a pull.
    pub build: Option<BuildSpec>,
    /// Visible to every organization, changeable only by an admin key, never made inactive.
    pub general: bool,
}

/// A Dockerfile build as the SDK sends it (`buildInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// The Dockerfile text.
    pub dockerfile: String,
    /// Hashes of the uploaded context archives (`{org}/{hash}/context.tar`), in order.
    pub context_hashes: Vec<String>,
}

impl BuildSpec {
    /// The content address of the build (Daytona's `snapshotRef`): identical Dockerfile and
    /// contexts give the same image.
    pub fn snapshot_ref(&self) -> String {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(self.dockerfile.as_bytes());
        for c in &self.context_hashes {
            h.update(b"\0");
            h.update(c.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// A sandbox row.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxRecord {
    /// UUID.
    pub id: String,
    /// Owner.
    pub org_id: String,
    /// Name, unique per organization.
    pub name: String,
    /// The snapshot it was made from (may have been deleted since).
    pub snapshot_id: Option<String>,
    /// That snapshot's name.
    pub snapshot_name: Option<String>,
    /// The image its root filesystem is layered on.
    pub image_digest: String,
    /// User commands run as.
    pub user: String,
    /// Environment given at creation.
    pub env: BTreeMap<String, String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Public preview links.
    pub public: bool,
    /// No network at all.
    pub network_block_all: bool,
    /// Runs privileged (explicit opt-in).
    pub privileged: bool,
    /// Region.
    pub region_id: String,
    /// vCPUs.
    pub cpu: i64,
    /// GPUs.
    pub gpu: i64,
    /// GiB.
    pub mem: i64,
    /// GiB.
    pub disk: i64,
    /// State.
    pub state: SandboxState,
    /// What the last verb asked for (`started`, `stopped`, `destroyed`).
    pub desired_state: String,
    /// Why it failed.
    pub error_reason: Option<String>,
    /// Minutes.
    pub auto_stop: i64,
    /// Minutes.
    pub auto_archive: i64,
    /// Minutes.
    pub auto_delete: i64,
    /// The agent's version, once it answered.
    pub daemon_version: Option<String>,
    /// Created.
    pub created_at: Millis,
    /// Last changed.
    pub updated_at: Millis,
    /// The Dockerfile build it comes from, when created from an `Image` rather than a snapshot.
    pub build: Option<BuildSpec>,
    /// Outbound CIDR allow-list, canonical `a.b.c.d/n,…` (`None`: no CIDR restriction).
    pub network_allow_list: Option<String>,
    /// Outbound domain allow-list, canonical `example.com,*.example.org` (`None`: none).
    pub domain_allow_list: Option<String>,
    /// The sandbox linked to this one at create (each reaches the other).
    pub linked_sandbox_id: Option<String>,
    /// The node it lives on (migration 0012); `None`: the installation's only node (a
    /// server without `--database-url`, or a row written before nodes).
    pub node_id: Option<String>,
}

/// A node's state (migration 0012; `service::nodes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Heartbeating and taking new sandboxes.
    Ready,
    /// Heartbeating; its sandboxes stay, new ones are refused (`cove node drain`).
    Draining,
    /// Its heartbeat is older than the limit: marked by another node's sweep.
    Lost,
}

impl NodeState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Draining => "draining",
            Self::Lost => "lost",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ready" => Some(Self::Ready),
            "draining" => Some(Self::Draining),
            "lost" => Some(Self::Lost),
            _ => None,
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node's row (migration 0012).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Stable id (`<data-dir>/node-id`).
    pub id: String,
    /// The region it serves.
    pub region: String,
    /// Its API base URL as other nodes reach it.
    pub address: String,
    /// CPUs of the machine.
    pub cpus: i64,
    /// Memory of the machine, MiB.
    pub memory_mib: i64,
    /// Size of the data filesystem, MiB.
    pub disk_mib: i64,
    /// GPUs the runtime found.
    pub gpus: i64,
    /// State.
    pub state: NodeState,
    /// When the node's process started.
    pub started_at: Millis,
    /// Its last heartbeat.
    pub heartbeat_at: Millis,
    /// The `cove` version it runs.
    pub version: String,
}

/// What [`Store::heartbeat_node`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// The node was ready or draining; its heartbeat time is updated.
    Beat,
    /// The node had been marked lost; it is ready again (its sandboxes need reconciling).
    Revived,
    /// There is no row for the node (it must register again).
    Missing,
}

/// A private registry of an organization (`/api/docker-registry`).
#[derive(Clone, PartialEq)]
pub struct RegistryRecord {
    /// UUID.
    pub id: String,
    /// Owner.
    pub org_id: String,
    /// Display name.
    pub name: String,
    /// Normalised URL (host[:port][/path], no scheme).
    pub url: String,
    /// User name.
    pub username: String,
    /// The password, token or key, sealed (never plain); `None` for ECR.
    pub sealed_secret: Option<String>,
    /// Project or namespace below the URL, `""` when none.
    pub project: String,
    /// `dockerhub`, `google`, `github`, `ecr` or `generic`.
    pub provider: String,
    /// The role assumed for ECR.
    pub role_arn: Option<String>,
    /// Created.
    pub created_at: Millis,
    /// Last changed.
    pub updated_at: Millis,
}

impl std::fmt::Debug for RegistryRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryRecord")
            .field("id", &self.id)
            .field("org_id", &self.org_id)
            .field("name", &self.name)
            .field("url", &self.url)
            .field("username", &self.username)
            .field("sealed_secret", &self.sealed_secret.as_ref().map(|_| "<sealed>"))
            .field("project", &self.project)
            .field("provider", &self.provider)
            .field("role_arn", &self.role_arn)
            .finish()
    }
}

/// An organization's stored quota (migration 0007); `None` fields fall back to the server
/// defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaRecord {
    /// The organization.
    pub org_id: String,
    /// Sandboxes.
    pub sandboxes: Option<i64>,
    /// vCPUs.
    pub cpu: Option<i64>,
    /// Memory, GiB.
    pub memory: Option<i64>,
    /// Disk, GiB.
    pub disk: Option<i64>,
    /// Last changed.
    pub updated_at: Millis,
}

/// What an organization's sandbox rows hold (every state but `destroyed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SandboxUsage {
    /// Rows.
    pub sandboxes: i64,
    /// vCPUs.
    pub cpu: i64,
    /// Memory, GiB.
    pub memory: i64,
    /// Disk, GiB.
    pub disk: i64,
}

/// Sort keys for listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotSort {
    /// `createdAt`.
    CreatedAt,
    /// `updatedAt`.
    UpdatedAt,
    /// `lastUsedAt` (never used last).
    LastUsedAt,
    /// `name`.
    Name,
    /// `state`.
    State,
}

/// A validated list query.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotQuery {
    /// Substring filter on the name.
    pub name: Option<String>,
    /// Sort key.
    pub sort: SnapshotSort,
    /// Ascending.
    pub ascending: bool,
    /// Rows to skip.
    pub offset: i64,
    /// Rows to return.
    pub limit: i64,
}

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening or migrating the database failed.
    #[error("open database {path}")]
    Open {
        /// The database file, or the database URL without its password.
        path: String,
        /// Cause.
        #[source]
        source: sqlx::Error,
    },
    /// Applying migrations failed.
    #[error("migrate database")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A uniqueness constraint refused the write.
    #[error("{what} already exists")]
    Duplicate {
        /// What collided.
        what: &'static str,
    },
    /// A query failed.
    #[error("{op}")]
    Query {
        /// The operation.
        op: &'static str,
        /// Cause.
        #[source]
        source: sqlx::Error,
    },
    /// A stored value could not be decoded.
    #[error("decode {what}: {why}")]
    Decode {
        /// The column.
        what: &'static str,
        /// Why.
        why: String,
    },
}

impl StoreError {
    /// The error class.
    pub fn kind(&self) -> cove_types::ErrorKind {
        match self {
            Self::Duplicate { .. } => cove_types::ErrorKind::AlreadyExists,
            _ => cove_types::ErrorKind::Internal,
        }
    }
}

/// Metadata storage. Snapshot lookups are always scoped to an organization, except the few
/// calls background jobs make, which say so in their names.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Creates an organization.
    async fn insert_org(&self, org: &Organization) -> Result<(), StoreError>;
    /// The first organization created (the bootstrap one), if any.
    async fn first_org(&self) -> Result<Option<Organization>, StoreError>;
    /// Stores a new key.
    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    /// A live (unrevoked) key by its hash under `scheme`.
    async fn api_key_by_hash(&self, scheme: KeyHashScheme, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// A key by its hash under `scheme`, revoked or not (for the bootstrap key).
    async fn api_key_by_hash_including_revoked(
        &self,
        scheme: KeyHashScheme,
        hash: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// One of an organization's live keys.
    async fn get_api_key(&self, org_id: &str, id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// An organization's live keys.
    async fn list_api_keys(&self, org_id: &str) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Revokes one of an organization's live keys, unless it is the last live admin key of
    /// the server (checked in the same statement, so two revokes cannot both pass).
    async fn revoke_api_key(&self, org_id: &str, id: &str, at: Millis) -> Result<Revoked, StoreError>;
    /// Replaces a key's stored hash, and makes sure the old one is not left behind in the
    /// database or its write-ahead log.
    async fn rehash_api_key(&self, id: &str, scheme: KeyHashScheme, hash: &str) -> Result<(), StoreError>;
    /// Makes a key a live admin key again (the bootstrap key after a revoke).
    async fn restore_admin_key(&self, id: &str) -> Result<(), StoreError>;
    /// Records a use of a key.
    async fn touch_api_key(&self, id: &str, at: Millis) -> Result<(), StoreError>;
    /// Number of live admin keys in all organizations.
    async fn count_admin_keys(&self) -> Result<i64, StoreError>;

    /// Inserts a snapshot; [`StoreError::Duplicate`] when the name is taken in the organization.
    async fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<(), StoreError>;
    /// A snapshot by id or, failing that, by name, that one organization sees: its own and the
    /// general ones (its own name wins over a general snapshot's).
    async fn get_snapshot(&self, org_id: &str, id_or_name: &str) -> Result<Option<SnapshotRecord>, StoreError>;
    /// The general snapshot called `name`, if there is one.
    async fn general_snapshot_named(&self, name: &str) -> Result<Option<SnapshotRecord>, StoreError>;
    /// A snapshot by id in any organization (for background jobs).
    async fn get_snapshot_for_job(&self, id: &str) -> Result<Option<SnapshotRecord>, StoreError>;
    /// One page of the snapshots an organization sees (its own and the general ones), and the
    /// total count.
    async fn list_snapshots(&self, org_id: &str, q: &SnapshotQuery) -> Result<(Vec<SnapshotRecord>, i64), StoreError>;
    /// Writes `s` only if the stored state is one of `expected`; returns whether it did.
    async fn update_snapshot_if(&self, s: &SnapshotRecord, expected: &[SnapshotState]) -> Result<bool, StoreError>;
    /// Deletes a snapshot row.
    async fn delete_snapshot(&self, id: &str) -> Result<(), StoreError>;
    /// Snapshots in the given states, in all organizations (for resuming jobs).
    async fn snapshots_in_states_for_job(&self, states: &[SnapshotState]) -> Result<Vec<SnapshotRecord>, StoreError>;
    /// Every image digest a snapshot row references.
    async fn referenced_images(&self) -> Result<HashSet<String>, StoreError>;
    /// Moves active snapshots not used since `before` to inactive; returns how many.
    async fn deactivate_unused(&self, before: Millis, now: Millis) -> Result<u64, StoreError>;
    /// Records that a sandbox used a snapshot.
    async fn touch_snapshot(&self, id: &str, at: Millis) -> Result<(), StoreError>;

    /// Inserts a sandbox; [`StoreError::Duplicate`] when the name is taken in the organization.
    async fn insert_sandbox(&self, s: &SandboxRecord) -> Result<(), StoreError>;
    /// A sandbox by id or, failing that, by name, within one organization.
    async fn get_sandbox(&self, org_id: &str, id_or_name: &str) -> Result<Option<SandboxRecord>, StoreError>;
    /// An organization's sandboxes, newest first.
    async fn list_sandboxes(&self, org_id: &str) -> Result<Vec<SandboxRecord>, StoreError>;
    /// Writes `s` only if the stored state is one of `expected`; returns whether it did.
    async fn update_sandbox_if(&self, s: &SandboxRecord, expected: &[SandboxState]) -> Result<bool, StoreError>;
    /// Deletes a sandbox row.
    async fn delete_sandbox(&self, id: &str) -> Result<(), StoreError>;
    /// Every sandbox row in all organizations (for reconciling at start).
    async fn all_sandboxes_for_job(&self) -> Result<Vec<SandboxRecord>, StoreError>;
    /// The sandbox rows of one node (`None`: every row, a single-node server's), in all
    /// organizations, for the node's own jobs (monitor, lifecycle, reconciliation).
    async fn node_sandboxes_for_job(&self, node: Option<&str>) -> Result<Vec<SandboxRecord>, StoreError>;
    /// Records `node` as the node of a sandbox that has none yet; returns whether it did.
    async fn claim_sandbox(&self, id: &str, node: &str) -> Result<bool, StoreError>;
    /// Sets a sandbox `error` with `reason`, only while its row is exactly as `seen` left it
    /// (same state and `updated_at`), so nothing written since is overwritten; returns the
    /// row as written, or `None` when it changed.
    async fn fail_sandbox_if_unchanged(
        &self,
        seen: &SandboxRecord,
        reason: &str,
        at: Millis,
    ) -> Result<Option<SandboxRecord>, StoreError>;

    /// Registers a node, or updates its row at a restart (address, capacity, version, start
    /// and heartbeat times); a `lost` node becomes `ready`, a `draining` one stays draining.
    async fn register_node(&self, n: &NodeRecord) -> Result<(), StoreError>;
    /// Records a node's heartbeat at `at`; a `lost` node becomes `ready` again.
    async fn heartbeat_node(&self, id: &str, at: Millis) -> Result<Heartbeat, StoreError>;
    /// A node by id.
    async fn get_node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError>;
    /// Every node, by region and id.
    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// Marks a node `lost` only if it is not already and its heartbeat is older than
    /// `heartbeat_before` (a compare-and-set: of several sweepers, exactly one gets `true`).
    async fn mark_node_lost_if(&self, id: &str, heartbeat_before: Millis) -> Result<bool, StoreError>;
    /// Moves a node to `to` only while it is in one of `from`; returns whether it did.
    async fn set_node_state_if(&self, id: &str, to: NodeState, from: &[NodeState]) -> Result<bool, StoreError>;
    /// The installation secret `name`: `candidate` is stored if there is none yet (the first
    /// node to ask wins), and the stored value is returned either way (migration 0013).
    async fn installation_secret(&self, name: &str, candidate: &str) -> Result<String, StoreError>;
    /// Sandboxes not `destroyed`, per node (`None`: rows without a node).
    async fn sandbox_counts_by_node(&self) -> Result<Vec<(Option<String>, i64)>, StoreError>;

    /// Inserts a registry.
    async fn insert_registry(&self, r: &RegistryRecord) -> Result<(), StoreError>;
    /// A registry by id within one organization.
    async fn get_registry(&self, org_id: &str, id: &str) -> Result<Option<RegistryRecord>, StoreError>;
    /// An organization's registries, newest first.
    async fn list_registries(&self, org_id: &str) -> Result<Vec<RegistryRecord>, StoreError>;
    /// Overwrites a registry (matched by organization and id); false when there is none.
    async fn update_registry(&self, r: &RegistryRecord) -> Result<bool, StoreError>;
    /// Deletes a registry; false when the organization has none with that id.
    async fn delete_registry(&self, org_id: &str, id: &str) -> Result<bool, StoreError>;

    /// An organization by id.
    async fn get_org(&self, id: &str) -> Result<Option<Organization>, StoreError>;
    /// An organization's stored quota, if an admin set one.
    async fn get_org_quota(&self, org_id: &str) -> Result<Option<QuotaRecord>, StoreError>;
    /// Replaces an organization's stored quota.
    async fn set_org_quota(&self, q: &QuotaRecord) -> Result<(), StoreError>;
    /// What an organization's sandboxes hold, over every row not `destroyed`.
    async fn sandbox_usage(&self, org_id: &str) -> Result<SandboxUsage, StoreError>;

    /// A sandbox by id in any organization (for the preview proxy, which learns the
    /// organization from the sandbox it is asked for).
    async fn get_sandbox_by_id(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError>;
    /// Stores a signed preview token (its hash), dropping every token expired before `now`.
    async fn insert_preview_token(&self, t: &PreviewTokenRecord, now: Millis) -> Result<(), StoreError>;
    /// A signed preview token by its hash, unless it expired at or before `now`.
    async fn get_preview_token(&self, hash: &str, now: Millis) -> Result<Option<PreviewTokenRecord>, StoreError>;
    /// Removes a sandbox's signed preview token for `port`; false when there was none.
    async fn delete_preview_token(&self, sandbox_id: &str, port: u16, hash: &str) -> Result<bool, StoreError>;

    /// Every sandbox's lifecycle row (migration 0011; `service::lifecycle`).
    async fn sandbox_lifecycles(&self) -> Result<Vec<SandboxLifecycle>, StoreError>;
    /// Raises sandboxes' last activity to the given times (never lowers it); sandboxes
    /// deleted meanwhile are skipped.
    async fn record_sandbox_activity(&self, at: &[(String, Millis)]) -> Result<(), StoreError>;
    /// Sets (or with `None` clears) a sandbox's archive, only while the sandbox is in `state`;
    /// returns whether it did.
    async fn set_sandbox_archive_if(
        &self,
        id: &str,
        archive: Option<&SandboxArchive>,
        state: SandboxState,
    ) -> Result<bool, StoreError>;

    /// Every later write of a sandbox or snapshot row, in commit order (`crate::events`
    /// turns them into the SDKs' Socket.IO events). A receiver that falls behind by more
    /// than the channel's capacity loses the oldest changes (`RecvError::Lagged`).
    fn changes(&self) -> tokio::sync::broadcast::Receiver<Change>;
}

/// A write [`Store::changes`] reports: the row as written, or the id of a deleted one.
#[derive(Debug, Clone)]
pub enum Change {
    /// A sandbox row was inserted (`created`) or updated.
    Sandbox {
        /// The row as written.
        record: SandboxRecord,
        /// Whether this was the insert.
        created: bool,
        /// The state the write replaced, when the compare-and-set named only one.
        previous: Option<SandboxState>,
    },
    /// A sandbox row was deleted.
    SandboxDeleted {
        /// Its id.
        id: String,
    },
    /// A snapshot row was inserted (`created`) or updated.
    Snapshot {
        /// The row as written.
        record: SnapshotRecord,
        /// Whether this was the insert.
        created: bool,
        /// The state the write replaced, when the compare-and-set named only one.
        previous: Option<SnapshotState>,
    },
    /// A snapshot row was deleted.
    SnapshotDeleted {
        /// Its id.
        id: String,
    },
}

/// What the lifecycle sweep keeps about a sandbox (migration 0011).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxLifecycle {
    /// The sandbox.
    pub sandbox_id: String,
    /// Its last activity as last flushed.
    pub last_activity_at: Millis,
    /// Its compressed disk, while it is archived (or being archived or restored).
    pub archive: Option<SandboxArchive>,
}

/// A sandbox disk's archive: a content store blob (a GC root while recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxArchive {
    /// `sha256:…` of the blob.
    pub digest: String,
    /// Its size in bytes.
    pub size: i64,
}

/// A signed preview URL's token (migration 0009): only its hash is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewTokenRecord {
    /// sha256 hex of the token.
    pub token_hash: String,
    /// The sandbox it opens (the row goes with it).
    pub sandbox_id: String,
    /// The port it opens.
    pub port: u16,
    /// When it stops working.
    pub expires_at: Millis,
}
