//! Sandboxes: creation from snapshots, start/stop/delete, reconciliation with `runc` after
//! a restart, a monitor that notices sandboxes that died, and the lookup the toolbox proxy
//! uses.
//!
//! `POST /sandbox` answers only once the agent inside answers `GET /version`, so clients
//! get `started` straight away and never poll. A create a crash interrupted ends, at the
//! next start, as `error` [`INTERRUPTED_CREATE`] with whatever it had made removed; it can be
//! deleted. A start that fails answers an error with the reason (and the sandbox is `error`).
//!
//! Fault points (`cove_types::fault`): `sandbox.create_recorded` (the row is written, nothing
//! launched), `sandbox.create_launched` (the container runs, the agent not yet asked).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cove_runtime::netpolicy::NetPolicy;
use cove_runtime::{Runtime, RuntimeError, SandboxSpec, SandboxStatus};
use cove_types::sandbox::{CreateSandbox, SandboxDto, UpdateNetworkSettings};
use cove_types::{ErrorKind, SandboxState, SnapshotName};

use super::keys::Principal;
use super::pool::{self, PoolKey, WarmPool};
use super::quotas::{QuotaError, QuotaService};
use super::snapshots::{SnapshotError, SnapshotService};
use super::{iso, now_millis};
use crate::store::{SandboxRecord, Store, StoreError};
use crate::toolbox::{self, AgentAddr, ToolboxError};

/// `errorReason` of a sandbox whose create a crash of the server interrupted.
pub const INTERRUPTED_CREATE: &str = "its create was interrupted by a server restart; delete it and create it again";
/// The reason of a sandbox whose files are gone from the data directory at a restart.
const FILES_MISSING: &str =
    "its files are missing from the data directory, so it cannot start; delete it and create it again";
/// `errorReason` of a sandbox whose start a crash of the server interrupted.
pub const INTERRUPTED_START: &str = "its start was interrupted by a server restart; start it again";

/// Sandboxes get at most this many processes unless configured otherwise.
pub const DEFAULT_PIDS_LIMIT: u32 = 4096;
/// How long a stop waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the agent may take to answer after `runc run`.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a create waits for a snapshot that is still pulling.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(300);

/// A failed sandbox operation.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A field is missing or out of range.
    #[error("{0}")]
    Invalid(String),
    /// The sandbox lives on another node. Requests for it are forwarded there before a
    /// handler runs (`crate::forward`); this is what is left: a linked sandbox on another
    /// node, or an owner that changed in between.
    #[error("sandbox {id} runs on node {node}, not on this one")]
    OnOtherNode {
        /// The sandbox.
        id: String,
        /// The node that holds it.
        node: String,
    },
    /// Neither a snapshot in the request nor a server default.
    #[error(
        "no snapshot given and this server has no default snapshot; name one, or start the server with --default-snapshot NAME"
    )]
    NoSnapshot,
    /// No snapshot named, and the server's default does not exist (yet).
    #[error(
        "no snapshot given, and this server's default snapshot {0} does not exist; name a snapshot, or have an \
         admin create the general snapshots with `cove image bootstrap --general`"
    )]
    DefaultSnapshotMissing(String),
    /// A requested field this server does not honour: refused rather than ignored (400).
    #[error("{0} is not supported by this server; the request was refused rather than run without it")]
    Unsupported(&'static str),
    /// The snapshot cannot be used.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The organization's quota does not admit it.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// The caller may not ask for this (privileged mode).
    #[error(transparent)]
    Forbidden(#[from] super::keys::KeyError),
    /// The snapshot asks for GPUs this machine does not have.
    #[error("no GPU is available in region {region}: snapshot {snapshot} needs {gpu} GPU(s) and this server has none")]
    NoGpu {
        /// Snapshot.
        snapshot: String,
        /// Its region.
        region: String,
        /// GPUs asked for.
        gpu: i64,
    },
    /// The snapshot asks for more GPUs than this machine has at all.
    #[error("snapshot {snapshot} needs {gpu} GPUs and this server has {total}")]
    TooManyGpus {
        /// Snapshot.
        snapshot: String,
        /// GPUs asked for.
        gpu: i64,
        /// GPUs of the server.
        total: usize,
    },
    /// Every GPU it needs is held by other sandboxes now (409: retrying later succeeds).
    #[error("GPUs for {snapshot}: {source}")]
    NoFreeGpu {
        /// Snapshot (or sandbox).
        snapshot: String,
        /// Requested, free and total.
        source: cove_runtime::gpu::NoFreeGpu,
    },
    /// Build logs of a sandbox that was created from a snapshot.
    #[error("sandbox {id} has no build info: it was created from a snapshot")]
    NoBuildInfo {
        /// The sandbox.
        id: String,
    },
    /// Name taken.
    #[error("sandbox with name \"{name}\" already exists for this organization")]
    NameTaken {
        /// The name.
        name: String,
    },
    /// No such sandbox in the caller's organization.
    #[error("sandbox {id_or_name} not found")]
    NotFound {
        /// What was asked for.
        id_or_name: String,
    },
    /// The verb is not allowed now.
    #[error("cannot {verb} sandbox {name}: it is {state}")]
    WrongState {
        /// The verb.
        verb: &'static str,
        /// The sandbox.
        name: String,
        /// Its state.
        state: SandboxState,
    },
    /// Another verb is in flight.
    #[error("sandbox {name} is {state}; wait for that to finish")]
    Busy {
        /// The sandbox.
        name: String,
        /// Its state.
        state: SandboxState,
    },
    /// The runtime failed.
    #[error("{op} sandbox {id}: {source}")]
    Runtime {
        /// The verb.
        op: &'static str,
        /// The sandbox.
        id: String,
        /// Cause.
        #[source]
        source: RuntimeError,
    },
    /// A start failed; the sandbox is `error` with `reason` (which it also reports).
    #[error("sandbox {name} failed to start: {reason}")]
    StartFailed {
        /// The sandbox.
        name: String,
        /// Why (its `errorReason`).
        reason: String,
    },
    /// Nothing of the sandbox is on disk (its create never finished): it cannot start.
    #[error("sandbox {name} cannot be started: it has nothing on disk ({reason})")]
    NothingToStart {
        /// The sandbox.
        name: String,
        /// Its `errorReason`, or why it has nothing.
        reason: String,
    },
    /// The data filesystem cannot guarantee the new sandbox's disk (409 naming free and
    /// needed bytes; the same create succeeds once space is freed).
    #[error("cannot guarantee the sandbox's disk: {0}")]
    NoDiskRoom(#[source] cove_runtime::disk::DiskError),
    /// The agent did not come up.
    #[error("sandbox {id} started but its agent did not answer: {source}")]
    Agent {
        /// The sandbox.
        id: String,
        /// Cause.
        #[source]
        source: ToolboxError,
    },
    /// This node refuses creates (draining), or reading its state failed.
    #[error(transparent)]
    Node(#[from] super::nodes::NodeError),
    /// Archive, restore or an interval failed (`service::lifecycle`).
    #[error(transparent)]
    Lifecycle(#[from] super::lifecycle::LifecycleError),
    /// The store failed.
    #[error("{op}: {source}")]
    Store {
        /// The operation.
        op: &'static str,
        /// Cause.
        #[source]
        source: StoreError,
    },
}

impl SandboxError {
    /// The error class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_)
            | Self::NoSnapshot
            | Self::DefaultSnapshotMissing(_)
            | Self::NoGpu { .. }
            | Self::TooManyGpus { .. }
            | Self::Unsupported(_) => ErrorKind::InvalidArgument,
            Self::Snapshot(e) => match e.kind() {
                // A snapshot that does not exist is a bad request for a sandbox (Daytona: 400).
                ErrorKind::NotFound => ErrorKind::InvalidArgument,
                k => k,
            },
            Self::Quota(e) => e.kind(),
            Self::NameTaken { .. } | Self::Busy { .. } => ErrorKind::AlreadyExists,
            Self::NotFound { .. } | Self::NoBuildInfo { .. } => ErrorKind::NotFound,
            Self::Forbidden(e) => e.kind(),
            Self::WrongState { .. } | Self::NothingToStart { .. } | Self::OnOtherNode { .. } => {
                ErrorKind::FailedPrecondition
            }
            // The reason is the sandbox's own errorReason, which it reports anyway.
            Self::StartFailed { .. } => ErrorKind::Unavailable,
            Self::NoFreeGpu { .. } | Self::NoDiskRoom(_) => ErrorKind::Exhausted,
            Self::Runtime { source, .. } if source.kind() == ErrorKind::Exhausted => ErrorKind::Exhausted,
            Self::Runtime { .. } | Self::Agent { .. } => ErrorKind::Internal,
            Self::Store { source, .. } => source.kind(),
            Self::Lifecycle(e) => e.kind(),
            Self::Node(e) => e.kind(),
        }
    }
}

fn store(op: &'static str) -> impl FnOnce(StoreError) -> SandboxError {
    move |source| SandboxError::Store { op, source }
}

/// Sandbox operations.
#[derive(Debug, Clone)]
pub struct SandboxService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    runtime: Arc<Runtime>,
    snapshots: SnapshotService,
    default_snapshot: Option<String>,
    toolbox_url: String,
    has_gpu: bool,
    pids_limit: u32,
    /// `--allow-privileged`: privileged sandboxes may be created (by admin keys).
    allow_privileged: bool,
    pool: Arc<WarmPool>,
    /// (organization, id or name) → (sandbox id, agent socket) of started sandboxes, so that
    /// toolbox calls skip the database. Every transition away from `started` clears its entries.
    sockets: std::sync::Mutex<std::collections::HashMap<(String, String), AgentAddr>>,
    /// Per-organization quotas, checked by every create ([`SandboxService::attach_quotas`]).
    quotas: std::sync::OnceLock<QuotaService>,
    /// Activity, archive and restore ([`SandboxService::attach_lifecycle`]).
    lifecycle: std::sync::OnceLock<super::lifecycle::LifecycleService>,
    /// This node's id, recorded on every sandbox it creates; reconciliation and the monitor
    /// touch only its sandboxes. `None`: a single-node server (no `--database-url`).
    node: Option<String>,
    /// This node's drain state, which every create asks first ([`SandboxService::attach_nodes`]).
    nodes: std::sync::OnceLock<super::nodes::NodeService>,
}

/// How many prepared sandboxes to keep per snapshot, and for how long after its last use.
#[derive(Debug, Clone, Copy)]
pub struct WarmPoolConfig {
    /// Prepared sandboxes per snapshot and spec; 0 disables the pool.
    pub size: usize,
    /// A snapshot's prepared sandboxes are removed after this long without a create.
    pub idle: Duration,
}

impl SandboxService {
    /// A service; `toolbox_url` is the public base of the toolbox proxy (`…/toolbox`).
    pub fn new(
        store: Arc<dyn Store>,
        runtime: Arc<Runtime>,
        snapshots: SnapshotService,
        default_snapshot: Option<String>,
        toolbox_url: String,
        pids_limit: u32,
        warm_pool: WarmPoolConfig,
    ) -> Self {
        let has_gpu = runtime.gpu_total() > 0;
        let pool = WarmPool::new(runtime.clone(), snapshots.clone(), warm_pool.size, warm_pool.idle);
        SandboxService {
            inner: Arc::new(Inner {
                store,
                runtime,
                pool,
                snapshots,
                default_snapshot,
                toolbox_url,
                has_gpu,
                pids_limit,
                allow_privileged: false,
                sockets: Default::default(),
                quotas: Default::default(),
                lifecycle: Default::default(),
                node: None,
                nodes: Default::default(),
            }),
        }
    }

    /// Lets admin keys create privileged sandboxes (`--allow-privileged`; off unless called).
    /// Called on the service [`SandboxService::new`] returned, before it is shared.
    pub fn allow_privileged(mut self, allow: bool) -> Self {
        Arc::get_mut(&mut self.inner).expect("configured before the service is cloned").allow_privileged = allow;
        self
    }

    /// Makes this the service of node `node` (`None`: a single-node server). Called on the
    /// service [`SandboxService::new`] returned, before it is shared.
    pub fn on_node(mut self, node: Option<String>) -> Self {
        Arc::get_mut(&mut self.inner).expect("configured before the service is cloned").node = node;
        self
    }

    /// Installs the node service every create asks whether this node is draining (once, at
    /// start; only with `--database-url`).
    pub fn attach_nodes(&self, nodes: super::nodes::NodeService) {
        let _ = self.inner.nodes.set(nodes);
    }

    /// Installs the quota service every create asks first (once, at start).
    pub fn attach_quotas(&self, quotas: QuotaService) {
        let _ = self.inner.quotas.set(quotas);
    }

    /// Installs the lifecycle service (once, at start).
    pub fn attach_lifecycle(&self, lifecycle: super::lifecycle::LifecycleService) {
        let _ = self.inner.lifecycle.set(lifecycle);
    }

    /// The metadata store (for `service::lifecycle`'s verbs).
    pub(super) fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The lifecycle service (activity, archive, restore).
    pub fn lifecycle(&self) -> &super::lifecycle::LifecycleService {
        self.inner.lifecycle.get().expect("attach_lifecycle is called at start, before any request")
    }

    /// The quota service (for `/organizations/{id}/quota`).
    pub fn quotas(&self) -> &QuotaService {
        self.inner.quotas.get().expect("attach_quotas is called at start, before any request")
    }

    /// Creates a sandbox from a snapshot and answers once its agent is ready.
    #[tracing::instrument(skip_all, fields(org_id = %who.org_id))]
    pub async fn create(&self, who: &Principal, req: CreateSandbox) -> Result<SandboxDto, SandboxError> {
        if let Some(nodes) = self.inner.nodes.get() {
            nodes.admit_create().await?;
        }
        if req.privileged == Some(true) {
            who.may_create_privileged(self.inner.allow_privileged)?;
        }
        if let Some(info) = req.build_info.clone() {
            return self.create_from_build(who, req, info).await;
        }
        // Phase times for `make bench`'s breakdown (debug log "create phases").
        let t0 = std::time::Instant::now();
        let since = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1000.0;
        if req.cpu.is_some() || req.memory.is_some() || req.disk.is_some() || req.gpu.is_some() {
            return Err(SandboxError::Invalid(
                "cannot specify sandbox resources when using a snapshot: the snapshot's resources apply".into(),
            ));
        }
        let net = self.net_setup(who, &req).await?;
        let intervals = super::lifecycle::Intervals::for_create(
            req.auto_stop_interval,
            req.auto_archive_interval,
            req.auto_delete_interval,
        )?;
        let named = req.snapshot.clone().filter(|s| !s.trim().is_empty());
        let by_default = named.is_none();
        let snapshot_ref = named.or_else(|| self.inner.default_snapshot.clone()).ok_or(SandboxError::NoSnapshot)?;
        // `_image_lease` keeps the image from garbage collection until this create returns:
        // by then the sandbox's record references it (or the create failed).
        let (snap, image, _image_lease) =
            match self.inner.snapshots.acquire_for_sandbox(who, &snapshot_ref, SNAPSHOT_WAIT).await {
                Err(SnapshotError::NotFound { .. }) if by_default => {
                    return Err(SandboxError::DefaultSnapshotMissing(snapshot_ref));
                }
                r => r?,
            };
        // A general snapshot is every served region's (as Daytona's are): the sandbox goes
        // where the client targets. An organization's snapshot is its own region's.
        let region_id = if snap.general {
            self.inner.snapshots.region(req.target.as_deref())?
        } else {
            if let Some(t) = req.target.as_deref().filter(|t| *t != snap.region_id) {
                return Err(SandboxError::Invalid(format!(
                    "snapshot {} is available in region {}, not {t}",
                    snap.name, snap.region_id
                )));
            }
            snap.region_id.clone()
        };
        self.check_gpus(&snap.name, &region_id, snap.gpu)?;
        let user =
            req.user.clone().filter(|u| !u.is_empty()).or_else(|| image.config.user.clone().filter(|u| !u.is_empty()));
        let privileged = req.privileged.unwrap_or(false);
        let entrypoint = snap.entrypoint.clone().unwrap_or_else(|| vec!["sleep".into(), "infinity".into()]);
        let engine = engine_mode(image.config.labels.as_ref(), &entrypoint, req.labels.as_ref())?;
        let mut template_env: Vec<String> = image.config.env.clone().unwrap_or_default();
        template_env.push(format!("DAYTONA_SANDBOX_SNAPSHOT={}", snap.name));
        let key = PoolKey {
            snapshot_id: snap.id.clone(),
            image_digest: image.manifest_digest.to_string(),
            template: SandboxSpec {
                id: String::new(),
                lower: image.rootfs.clone(),
                entrypoint,
                env: template_env,
                workdir: image.config.working_dir.clone().filter(|w| !w.is_empty()),
                user: user.clone(),
                cpu: u32::try_from(snap.cpu).unwrap_or(1),
                memory_mib: u64::try_from(snap.mem).unwrap_or(1) * 1024,
                disk_mib: u64::try_from(snap.disk).unwrap_or(3) * 1024,
                pids: self.inner.pids_limit,
                privileged,
                gpu: u32::try_from(snap.gpu).unwrap_or(0),
                engine,
            },
        };
        let name = sandbox_name(req.name.as_deref())?;
        let env = req.env.unwrap_or_default();
        validate_env(&env)?;
        let admission = self.quotas().admit(&who.org_id, snap.cpu, snap.mem, snap.disk).await?;
        let lookup_ms = since(t0);
        // Privileged sandboxes are rare and never pooled: a prepared one would sit with every
        // capability. GPU sandboxes neither: a prepared one would hold GPUs.
        let gpu = key.template.gpu;
        let pooled = if privileged || gpu > 0 { None } else { self.inner.pool.take(&key) };
        if pooled.is_none() {
            // A prepared sandbox has its disk already; a new one must be guaranteed its space.
            self.inner.runtime.check_disk_room(key.template.disk_mib).map_err(SandboxError::NoDiskRoom)?;
        }
        let id = pooled.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        self.reserve_gpus(&id, gpu, &snap.name)?;
        let name = name.unwrap_or_else(|| id.clone());
        let net = NetSetup { name: Some(name.clone()), ..net };
        let now = now_millis();
        let mut rec = SandboxRecord {
            id: id.clone(),
            org_id: who.org_id.clone(),
            name,
            snapshot_id: Some(snap.id.clone()),
            snapshot_name: Some(snap.name.clone()),
            image_digest: image.manifest_digest.to_string(),
            user: user.clone().unwrap_or_else(|| "root".into()),
            env: env.clone(),
            labels: req.labels.unwrap_or_default(),
            public: req.public.unwrap_or(false),
            network_block_all: net.policy.block_all,
            privileged,
            region_id,
            cpu: snap.cpu,
            gpu: snap.gpu,
            mem: snap.mem,
            disk: snap.disk,
            state: SandboxState::Creating,
            desired_state: "started".into(),
            error_reason: None,
            auto_stop: intervals.auto_stop,
            auto_archive: intervals.auto_archive,
            auto_delete: intervals.auto_delete,
            daemon_version: None,
            created_at: now,
            updated_at: now,
            build: None,
            network_allow_list: net.policy.allow_list_string(),
            domain_allow_list: net.policy.domain_list_string(),
            linked_sandbox_id: net.link.clone(),
            node_id: self.inner.node.clone(),
        };
        if let Err(e) = self.inner.store.insert_sandbox(&rec).await {
            self.inner.runtime.release_gpus(&id);
            if let Some(id) = pooled {
                self.inner.pool.give_back(&key, id);
            }
            return Err(match e {
                StoreError::Duplicate { .. } => SandboxError::NameTaken { name: rec.name.clone() },
                e => store("create sandbox")(e),
            });
        }
        drop(admission); // the row holds its share of the quota now
        let record_ms = since(t0) - lookup_ms;
        let t_launch = std::time::Instant::now();
        let mut launch_ms = 0.0;
        cove_types::fault::point("sandbox.create_recorded");
        let user_env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let runtime_err = |op, source| SandboxError::Runtime { op, id: id.clone(), source };
        let started = async {
            let cold = match pooled {
                Some(_) => match self.apply_net(&id, &net).await {
                    Err(e) => return Err(e),
                    Ok(()) => match self.inner.runtime.start_prepared(&id, &user_env).await {
                        Ok(()) => false,
                        Err(e @ cove_runtime::RuntimeError::NotPrepared { .. }) => {
                            tracing::warn!(sandbox_id = %id, error = %e, "warm sandbox unusable, creating it again");
                            self.inner.runtime.destroy(&id).await.map_err(|e| runtime_err("create", e))?;
                            true
                        }
                        Err(e) => return Err(runtime_err("start", e)),
                    },
                },
                None => true,
            };
            if cold {
                let mut spec = pool::spec_for(&key.template, &id);
                cove_runtime::oci::merge_env(&mut spec.env, &user_env);
                self.launch(&spec, &net).await?;
            }
            launch_ms = since(t_launch);
            cove_types::fault::point("sandbox.create_launched");
            self.wait_agent(&id).await
        }
        .await;
        let agent_ms = since(t_launch) - launch_ms;
        if !privileged && gpu == 0 {
            self.inner.pool.refill(&key);
        }
        let t_finish = std::time::Instant::now();
        let out = self.finish_start(&mut rec, started, SandboxState::Creating).await;
        tracing::debug!(
            sandbox_id = %id,
            warm = pooled.is_some(),
            lookup_ms,
            record_ms,
            launch_ms,
            agent_ms,
            finish_ms = since(t_finish),
            total_ms = since(t0),
            "create phases (snapshot lookup and admission, insert, runtime launch, agent ready, state recorded)"
        );
        out
    }

    /// `POST /sandbox` with `buildInfo` (the SDK's `CreateSandboxFromImageParams`): records the
    /// sandbox as `pending_build` and answers at once; a job builds the image (or reuses one
    /// built from identical build info), then starts the sandbox from it.
    async fn create_from_build(
        &self,
        who: &Principal,
        req: CreateSandbox,
        info: cove_types::dto::CreateBuildInfo,
    ) -> Result<SandboxDto, SandboxError> {
        use super::snapshots::{self as snaps, resource};
        if req.snapshot.as_deref().is_some_and(|s| !s.trim().is_empty()) {
            return Err(SandboxError::Invalid("cannot specify a snapshot when using a build info entry".into()));
        }
        let net = self.net_setup(who, &req).await?;
        let intervals = super::lifecycle::Intervals::for_create(
            req.auto_stop_interval,
            req.auto_archive_interval,
            req.auto_delete_interval,
        )?;
        let build = snaps::validate_build(info)?;
        engine_mode(None, &[], req.labels.as_ref())?;
        let cpu = resource("cpu", req.cpu, snaps::DEFAULT_CPU, 1, snaps::MAX_CPU)?;
        let mem = resource("memory", req.memory, snaps::DEFAULT_MEMORY_GIB, 1, snaps::MAX_MEMORY_GIB)?;
        let disk = resource("disk", req.disk, snaps::DEFAULT_DISK_GIB, 1, snaps::MAX_DISK_GIB)?;
        let gpu = resource("gpu", req.gpu, 0, 0, snaps::MAX_GPU)?;
        let region_id = self.inner.snapshots.region(req.target.as_deref())?;
        self.check_gpus("(built from an image)", &region_id, gpu)?;
        let name = sandbox_name(req.name.as_deref())?;
        let env = req.env.unwrap_or_default();
        validate_env(&env)?;
        let admission = self.quotas().admit(&who.org_id, cpu, mem, disk).await?;
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_millis();
        let rec = SandboxRecord {
            id: id.clone(),
            org_id: who.org_id.clone(),
            name: name.unwrap_or_else(|| id.clone()),
            snapshot_id: None,
            snapshot_name: None,
            image_digest: String::new(),
            // Empty until the image says (its USER), unless the request names one.
            user: req.user.clone().unwrap_or_default(),
            env,
            labels: req.labels.unwrap_or_default(),
            public: req.public.unwrap_or(false),
            network_block_all: net.policy.block_all,
            privileged: req.privileged.unwrap_or(false),
            region_id,
            cpu,
            gpu,
            mem,
            disk,
            state: SandboxState::PendingBuild,
            desired_state: "started".into(),
            error_reason: None,
            auto_stop: intervals.auto_stop,
            auto_archive: intervals.auto_archive,
            auto_delete: intervals.auto_delete,
            daemon_version: None,
            created_at: now,
            updated_at: now,
            build: Some(build),
            network_allow_list: net.policy.allow_list_string(),
            domain_allow_list: net.policy.domain_list_string(),
            linked_sandbox_id: net.link.clone(),
            node_id: self.inner.node.clone(),
        };
        self.inner.store.insert_sandbox(&rec).await.map_err(|e| match e {
            StoreError::Duplicate { .. } => SandboxError::NameTaken { name: rec.name.clone() },
            e => store("create sandbox")(e),
        })?;
        drop(admission);
        self.inner.snapshots.builds().reset_log(&id);
        tracing::info!(sandbox_id = %id, "sandbox waits for its image build");
        tokio::spawn(self.clone().run_build(rec.org_id.clone(), id));
        Ok(self.dto(&rec))
    }

    /// The build job of a sandbox created from an `Image`: build, then start. Durable: a
    /// restart runs it again for sandboxes still `pending_build` or `building_snapshot`.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id))]
    async fn run_build(self, org: String, id: String) {
        let st = &self.inner.store;
        let mut rec = match st.get_sandbox(&org, &id).await {
            Ok(Some(r)) if matches!(r.state, SandboxState::PendingBuild | SandboxState::BuildingSnapshot) => r,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(error = %e, "sandbox build job cannot read its sandbox");
                return;
            }
        };
        let Some(build) = rec.build.clone() else { return };
        rec.state = SandboxState::BuildingSnapshot;
        rec.updated_at = now_millis();
        match st.update_sandbox_if(&rec, &[SandboxState::PendingBuild, SandboxState::BuildingSnapshot]).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::error!(error = %e, "sandbox build job cannot record the building state");
                return;
            }
        }
        let builds = self.inner.snapshots.builds().clone();
        let built =
            builds.build(&id, &org, &build, &self.inner.snapshots, super::snapshots::disk_bytes(rec.disk)).await;
        builds.finish_log(
            &id,
            &match &built {
                Ok(_) => "Build finished".to_string(),
                Err(e) => format!("Build failed: {}", e.to_string().lines().next().unwrap_or_default()),
            },
        );
        let pulled = match built {
            Ok(p) => p,
            Err(e) => {
                rec.state = SandboxState::BuildFailed;
                rec.error_reason = Some(e.to_string());
                rec.updated_at = now_millis();
                if let Err(e) = st.update_sandbox_if(&rec, &[SandboxState::BuildingSnapshot]).await {
                    tracing::error!(error = %e, "sandbox build job cannot record the failure");
                }
                return;
            }
        };
        let image = &pulled.record;
        if rec.user.is_empty() {
            rec.user = image.config.user.clone().filter(|u| !u.is_empty()).unwrap_or_else(|| "root".into());
        }
        rec.image_digest = image.manifest_digest.to_string();
        rec.state = SandboxState::Creating;
        rec.updated_at = now_millis();
        match st.update_sandbox_if(&rec, &[SandboxState::BuildingSnapshot]).await {
            Ok(true) => {}
            Ok(false) => return, // deleted while building
            Err(e) => {
                tracing::error!(error = %e, "sandbox build job cannot record the built image");
                return;
            }
        }
        let mut env: Vec<String> = image.config.env.clone().unwrap_or_default();
        env.push(format!("DAYTONA_SANDBOX_ID={id}"));
        let user_env: Vec<String> = rec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        cove_runtime::oci::merge_env(&mut env, &user_env);
        let entrypoint = super::snapshots::entrypoint_from_image(&image.config);
        // The request's label was checked when the sandbox was created.
        let engine = engine_mode(image.config.labels.as_ref(), &entrypoint, Some(&rec.labels)).unwrap_or(false);
        let spec = SandboxSpec {
            id: id.clone(),
            lower: image.rootfs.clone(),
            entrypoint,
            env,
            workdir: image.config.working_dir.clone().filter(|w| !w.is_empty()),
            user: Some(rec.user.clone()).filter(|u| u != "root"),
            cpu: u32::try_from(rec.cpu).unwrap_or(1),
            memory_mib: u64::try_from(rec.mem).unwrap_or(1) * 1024,
            disk_mib: u64::try_from(rec.disk).unwrap_or(3) * 1024,
            pids: self.inner.pids_limit,
            privileged: rec.privileged,
            gpu: u32::try_from(rec.gpu).unwrap_or(0),
            engine,
        };
        let started = async {
            let net = NetSetup {
                policy: stored_policy(&rec)?,
                link: rec.linked_sandbox_id.clone(),
                name: Some(rec.name.clone()),
            };
            self.launch(&spec, &net).await?;
            self.wait_agent(&id).await
        }
        .await;
        drop(pulled.lease); // the record now references the image
        if let Err(e) = self.finish_start(&mut rec, started, SandboxState::Creating).await {
            tracing::error!(error = %e, "sandbox build job cannot record the start");
        }
    }

    /// The build log of a sandbox created from an `Image`.
    pub async fn build_logs(
        &self,
        who: &Principal,
        id_or_name: &str,
        follow: bool,
    ) -> Result<impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + use<>, SandboxError> {
        let rec = self.built_sandbox(who, id_or_name).await?;
        Ok(self.inner.snapshots.builds().log_stream(&rec.id, follow))
    }

    /// The id of a sandbox created from an `Image` (for its build-logs URL).
    pub async fn built_sandbox(&self, who: &Principal, id_or_name: &str) -> Result<SandboxRecord, SandboxError> {
        let rec = self.find(who, id_or_name).await?;
        if rec.build.is_none() {
            return Err(SandboxError::NoBuildInfo { id: rec.id });
        }
        Ok(rec)
    }

    async fn wait_agent(&self, id: &str) -> Result<String, SandboxError> {
        toolbox::wait_ready(&self.agent(id), READY_TIMEOUT)
            .await
            .map_err(|source| SandboxError::Agent { id: id.to_string(), source })
    }

    /// Records the outcome of a create or start: `started`, or `error` with the reason.
    async fn finish_start(
        &self,
        rec: &mut SandboxRecord,
        outcome: Result<String, SandboxError>,
        from: SandboxState,
    ) -> Result<SandboxDto, SandboxError> {
        match outcome {
            Ok(version) => {
                rec.state = SandboxState::Started;
                rec.daemon_version = Some(version);
                rec.error_reason = None;
            }
            Err(e) => {
                tracing::warn!(sandbox_id = %rec.id, error = %e, "sandbox failed to start");
                rec.state = SandboxState::Error;
                rec.error_reason = Some(cove_types::error::chain(&e));
            }
        }
        rec.updated_at = now_millis();
        if !self.inner.store.update_sandbox_if(rec, &[from]).await.map_err(store("record sandbox start"))? {
            // Deleted meanwhile: report what is stored (or that it is gone).
            return self.get_by_id(rec).await;
        }
        tracing::info!(sandbox_id = %rec.id, state = %rec.state, "sandbox start finished");
        Ok(self.dto(rec))
    }

    async fn get_by_id(&self, rec: &SandboxRecord) -> Result<SandboxDto, SandboxError> {
        let r = self.inner.store.get_sandbox(&rec.org_id, &rec.id).await.map_err(store("get sandbox"))?;
        r.map(|r| self.dto(&r)).ok_or_else(|| SandboxError::NotFound { id_or_name: rec.id.clone() })
    }

    pub(super) async fn find(&self, who: &Principal, id_or_name: &str) -> Result<SandboxRecord, SandboxError> {
        self.inner
            .store
            .get_sandbox(&who.org_id, id_or_name)
            .await
            .map_err(store("get sandbox"))?
            .ok_or_else(|| SandboxError::NotFound { id_or_name: id_or_name.to_string() })
    }

    /// [`Self::find`] for a request this node's runtime must carry out (start, stop, delete,
    /// archive, the toolbox, network changes): refused, naming the owner, when the sandbox
    /// belongs to another node of the installation, whose runtime holds it.
    pub(super) async fn find_here(&self, who: &Principal, id_or_name: &str) -> Result<SandboxRecord, SandboxError> {
        let rec = self.find(who, id_or_name).await?;
        match other_owner(self.inner.node.as_deref(), rec.node_id.as_deref()) {
            Some(owner) => Err(SandboxError::OnOtherNode { id: rec.id.clone(), node: owner.to_string() }),
            None => Ok(rec),
        }
    }

    /// The sandbox's id and the node that holds it, when that is another node of the
    /// installation (`crate::forward` sends the request there); `None` when it is this node's,
    /// has no node, or is not found (the handler then answers as usual).
    pub async fn owner_elsewhere(
        &self,
        who: &Principal,
        id_or_name: &str,
    ) -> Result<Option<(String, String)>, SandboxError> {
        if self.inner.node.is_none() {
            return Ok(None);
        }
        let rec = match self.find(who, id_or_name).await {
            Ok(rec) => rec,
            Err(SandboxError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(other_owner(self.inner.node.as_deref(), rec.node_id.as_deref()).map(|n| (rec.id.clone(), n.to_string())))
    }

    /// One sandbox.
    pub async fn get(&self, who: &Principal, id_or_name: &str) -> Result<SandboxDto, SandboxError> {
        Ok(self.dto(&self.find(who, id_or_name).await?))
    }

    /// Starts a stopped (or crashed) sandbox again; its files are where they were.
    pub async fn start(&self, who: &Principal, id_or_name: &str) -> Result<SandboxDto, SandboxError> {
        let mut rec = self.find_here(who, id_or_name).await?;
        if rec.state == SandboxState::Started {
            return Ok(self.dto(&rec));
        }
        if rec.state == SandboxState::Archived {
            // Its disk comes back from the archive first; it is then stopped like any other.
            rec = self.lifecycle().restore(rec).await?;
        }
        if matches!(self.inner.runtime.status(&rec.id).await, Ok(SandboxStatus::Missing)) {
            return Err(SandboxError::NothingToStart {
                name: rec.name.clone(),
                reason: rec.error_reason.clone().unwrap_or_else(|| "its files are gone".into()),
            });
        }
        // The GPUs first: without free ones the sandbox stays stopped and the caller hears why.
        let gpu = u32::try_from(rec.gpu).unwrap_or(0);
        self.reserve_gpus(&rec.id, gpu, rec.snapshot_name.as_deref().unwrap_or(&rec.name))?;
        if let Err(e) = self.transition(&mut rec, "start", SandboxState::Starting, "started").await {
            self.inner.runtime.release_gpus(&rec.id);
            return Err(e);
        }
        let id = rec.id.clone();
        let outcome = async {
            self.inner.runtime.start(&id).await.map_err(|source| SandboxError::Runtime {
                op: "start",
                id: id.clone(),
                source,
            })?;
            self.wait_agent(&id).await
        }
        .await;
        let dto = self.finish_start(&mut rec, outcome, SandboxState::Starting).await?;
        if rec.state == SandboxState::Error {
            // Recorded as `error` with the reason; the caller hears it too, not a 200.
            return Err(SandboxError::StartFailed {
                name: rec.name.clone(),
                reason: rec.error_reason.clone().unwrap_or_default(),
            });
        }
        Ok(dto)
    }

    /// Stops a sandbox, keeping its files. An ephemeral sandbox (autoDeleteInterval 0) is
    /// deleted instead.
    pub async fn stop(&self, who: &Principal, id_or_name: &str) -> Result<SandboxDto, SandboxError> {
        self.stop_with(who, id_or_name, false).await
    }

    /// [`Self::stop`]; with `force` its processes are killed at once (no SIGTERM and grace
    /// period), as the SDKs' `stop(force=True)` asks.
    pub async fn stop_with(&self, who: &Principal, id_or_name: &str, force: bool) -> Result<SandboxDto, SandboxError> {
        let mut rec = self.find_here(who, id_or_name).await?;
        if rec.auto_delete == 0 {
            return self.delete(who, id_or_name).await;
        }
        if matches!(rec.state, SandboxState::Stopped | SandboxState::Archived) {
            return Ok(self.dto(&rec));
        }
        self.transition(&mut rec, "stop", SandboxState::Stopping, "stopped").await?;
        let grace = if force { Duration::ZERO } else { STOP_GRACE };
        let result = self.inner.runtime.stop(&rec.id, grace).await;
        match result {
            Ok(()) => {
                rec.state = SandboxState::Stopped;
                rec.error_reason = None;
            }
            Err(source) => {
                let e = SandboxError::Runtime { op: "stop", id: rec.id.clone(), source };
                rec.state = SandboxState::Error;
                rec.error_reason = Some(cove_types::error::chain(&e));
            }
        }
        rec.updated_at = now_millis();
        self.inner
            .store
            .update_sandbox_if(&rec, &[SandboxState::Stopping])
            .await
            .map_err(store("record sandbox stop"))?;
        tracing::info!(sandbox_id = %rec.id, state = %rec.state, "sandbox stopped");
        Ok(self.dto(&rec))
    }

    /// Destroys a sandbox and everything it had on disk; answers with its final record.
    pub async fn delete(&self, who: &Principal, id_or_name: &str) -> Result<SandboxDto, SandboxError> {
        let mut rec = self.find_here(who, id_or_name).await?;
        if !rec.state.can_delete() {
            return Err(SandboxError::Busy { name: rec.name.clone(), state: rec.state });
        }
        let from = rec.state;
        self.forget_socket(&rec.id);
        rec.state = SandboxState::Destroying;
        rec.desired_state = "destroyed".into();
        rec.updated_at = now_millis();
        // On a full data disk SQLite has no room for its journal: the space reserve is
        // released for the delete (`crate::space`), which then frees the sandbox's disk.
        let mut marked = self.inner.store.update_sandbox_if(&rec, &[from]).await;
        if marked.as_ref().is_err_and(|e| crate::space::is_full(e)) && crate::space::release() {
            marked = self.inner.store.update_sandbox_if(&rec, &[from]).await;
        }
        if !marked.map_err(store("delete sandbox"))? {
            let now = self.find(who, id_or_name).await?;
            return Err(SandboxError::Busy { name: now.name, state: now.state });
        }
        self.inner.runtime.destroy(&rec.id).await.map_err(|source| SandboxError::Runtime {
            op: "destroy",
            id: rec.id.clone(),
            source,
        })?;
        let mut deleted = self.inner.store.delete_sandbox(&rec.id).await;
        if deleted.as_ref().is_err_and(|e| crate::space::is_full(e)) && crate::space::release() {
            deleted = self.inner.store.delete_sandbox(&rec.id).await;
        }
        deleted.map_err(store("delete sandbox"))?;
        tokio::task::spawn_blocking(crate::space::restore);
        self.inner.snapshots.builds().remove_log(&rec.id);
        tracing::info!(sandbox_id = %rec.id, "sandbox destroyed");
        let snapshots = self.inner.snapshots.clone();
        tokio::spawn(async move { snapshots.collect_garbage().await });
        rec.state = SandboxState::Destroyed;
        Ok(self.dto(&rec))
    }

    /// Replaces a sandbox's labels.
    pub async fn set_labels(
        &self,
        who: &Principal,
        id_or_name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, SandboxError> {
        let mut rec = self.find(who, id_or_name).await?;
        let engine = cove_types::sandbox::ENGINE_LABEL;
        if labels.get(engine) != rec.labels.get(engine) {
            return Err(SandboxError::Invalid(format!(
                "label {engine} is set when a sandbox is created (it decides how its container is made); create a new sandbox to change it"
            )));
        }
        let from = rec.state;
        rec.labels = labels;
        rec.updated_at = now_millis();
        if !self.inner.store.update_sandbox_if(&rec, &[from]).await.map_err(store("set labels"))? {
            return Err(SandboxError::Busy { name: rec.name.clone(), state: from });
        }
        Ok(rec.labels)
    }

    async fn transition(
        &self,
        rec: &mut SandboxRecord,
        verb: &'static str,
        to: SandboxState,
        desired: &str,
    ) -> Result<(), SandboxError> {
        let allowed = match verb {
            "start" => rec.state.can_start(),
            _ => rec.state.can_stop(),
        };
        if rec.state.is_transitional() {
            return Err(SandboxError::Busy { name: rec.name.clone(), state: rec.state });
        }
        if !allowed {
            return Err(SandboxError::WrongState { verb, name: rec.name.clone(), state: rec.state });
        }
        let from = rec.state;
        self.forget_socket(&rec.id);
        rec.state = to;
        rec.desired_state = desired.into();
        rec.updated_at = now_millis();
        if !self.inner.store.update_sandbox_if(rec, &[from]).await.map_err(store("record sandbox transition"))? {
            return Err(SandboxError::Busy { name: rec.name.clone(), state: from });
        }
        Ok(())
    }

    /// Refuses GPUs this server does not have at all: none (`NoGpu`) or fewer than asked.
    fn check_gpus(&self, snapshot: &str, region: &str, gpu: i64) -> Result<(), SandboxError> {
        let total = self.inner.runtime.gpu_total();
        if gpu > 0 && !self.inner.has_gpu {
            return Err(SandboxError::NoGpu { snapshot: snapshot.into(), region: region.into(), gpu });
        }
        if usize::try_from(gpu).unwrap_or(usize::MAX) > total {
            return Err(SandboxError::TooManyGpus { snapshot: snapshot.into(), gpu, total });
        }
        Ok(())
    }

    /// Takes `gpu` free GPUs for sandbox `id` before its create or start (409 when there are
    /// not that many free); nothing for `gpu == 0`.
    fn reserve_gpus(&self, id: &str, gpu: u32, snapshot: &str) -> Result<(), SandboxError> {
        if gpu == 0 {
            return Ok(());
        }
        self.inner.runtime.reserve_gpus(id, gpu).map_err(|e| match e {
            RuntimeError::NoFreeGpu { source, .. } => SandboxError::NoFreeGpu { snapshot: snapshot.into(), source },
            source => SandboxError::Runtime { op: "reserve GPUs for", id: id.into(), source },
        })
    }

    /// GPUs of this server (what `/api/regions` reports).
    pub fn gpu_total(&self) -> usize {
        self.inner.runtime.gpu_total()
    }

    /// Where a started sandbox's agent listens, for the toolbox proxy.
    pub async fn toolbox_agent(&self, who: &Principal, id_or_name: &str) -> Result<AgentAddr, SandboxError> {
        let key = (who.org_id.clone(), id_or_name.to_string());
        if let Some(addr) = self.sockets().get(&key) {
            return Ok(addr.clone());
        }
        let rec = self.find_here(who, id_or_name).await?;
        if !rec.state.can_use_toolbox() {
            return Err(SandboxError::WrongState { verb: "use the toolbox of", name: rec.name, state: rec.state });
        }
        let addr = self.agent(&rec.id);
        self.sockets().insert(key, addr.clone());
        Ok(addr)
    }

    fn agent(&self, id: &str) -> AgentAddr {
        AgentAddr { socket: self.inner.runtime.socket_path(id), sandbox_id: id.to_string() }
    }

    fn sockets(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, String), AgentAddr>> {
        self.inner.sockets.lock().expect("socket cache is never poisoned")
    }

    /// Forgets cached toolbox routes of a sandbox that is leaving `started`.
    fn forget_socket(&self, sandbox_id: &str) {
        self.sockets().retain(|_, a| a.sandbox_id != sandbox_id);
    }

    /// The toolbox base URL.
    pub fn toolbox_url(&self) -> &str {
        &self.inner.toolbox_url
    }

    /// Brings records in line with what really runs, after a restart: sandboxes keep running
    /// while the server is down, so running ones are adopted, dead ones are marked with the
    /// reason, half-deleted ones are finished.
    ///
    /// On a node (`--database-url`), only the node's own sandboxes: rows without a node
    /// (written before nodes) whose files are in this data dir are claimed first; those that
    /// are not are left alone.
    pub async fn reconcile(&self) -> Result<(), SandboxError> {
        let all = self.inner.store.all_sandboxes_for_job().await.map_err(store("list sandboxes"))?;
        // Bundles without a record: warm-pool sandboxes of the previous run (a record is
        // always written before a sandbox is started for a request).
        let known: std::collections::HashSet<&str> = all.iter().map(|r| r.id.as_str()).collect();
        // A create the previous process started may still be running; let it finish first.
        self.inner.runtime.wait_for_foreign_runc(Duration::from_secs(10)).await;
        let mut on_disk = self.inner.runtime.list().await.map_err(|source| SandboxError::Runtime {
            op: "list",
            id: String::new(),
            source,
        })?;
        on_disk.extend(self.inner.runtime.runc_ids());
        on_disk.sort();
        on_disk.dedup();
        for id in on_disk.iter().filter(|id| !known.contains(id.as_str())) {
            tracing::info!(sandbox_id = %id, "removing a sandbox without a record (warm pool of the last run)");
            if let Err(e) = self.inner.runtime.destroy(id).await {
                tracing::warn!(sandbox_id = %id, error = %cove_types::error::chain(&e), "cannot remove it");
            }
        }
        let mut mine = Vec::with_capacity(all.len());
        for mut rec in all {
            match (&self.inner.node, &rec.node_id) {
                (None, _) => {}
                (Some(me), Some(n)) if me == n => {}
                (Some(_), Some(_)) => continue,
                (Some(me), None) => {
                    if on_disk.binary_search(&rec.id).is_err() {
                        continue;
                    }
                    if !self.inner.store.claim_sandbox(&rec.id, me).await.map_err(store("claim sandbox"))? {
                        continue;
                    }
                    tracing::info!(sandbox_id = %rec.id, node_id = %me, "sandbox from before nodes claimed by this node");
                    rec.node_id = Some(me.clone());
                }
            }
            mine.push(rec);
        }
        self.reconcile_records(mine).await
    }

    /// Brings these records (this node's) in line with what the runtime reports: the
    /// reconciliation a restart runs, also used for sandboxes another node marked
    /// `error` "node lost" while this node's heartbeats were late (`service::nodes`).
    pub async fn reconcile_records(&self, recs: Vec<SandboxRecord>) -> Result<(), SandboxError> {
        for mut rec in recs {
            if rec.state == SandboxState::Destroying {
                if let Err(e) = self.inner.runtime.destroy(&rec.id).await {
                    tracing::error!(sandbox_id = %rec.id, error = %e, "cannot finish destroying sandbox");
                    continue;
                }
                self.inner.store.delete_sandbox(&rec.id).await.map_err(store("delete sandbox"))?;
                continue;
            }
            if matches!(rec.state, SandboxState::Archiving | SandboxState::Archived | SandboxState::Restoring) {
                continue; // nothing runs; service::lifecycle reconciles interrupted archives
            }
            if matches!(rec.state, SandboxState::PendingBuild | SandboxState::BuildingSnapshot) {
                tracing::info!(sandbox_id = %rec.id, "restarting the image build a restart interrupted");
                self.inner.snapshots.builds().reset_log(&rec.id);
                tokio::spawn(self.clone().run_build(rec.org_id.clone(), rec.id.clone()));
                continue;
            }
            let from = rec.state;
            if from == SandboxState::Creating {
                // Its client never heard back: whatever it made (bundle, container, network)
                // goes, and the record says why.
                tracing::warn!(sandbox_id = %rec.id, "a create was interrupted by the restart");
                if let Err(e) = self.inner.runtime.destroy(&rec.id).await {
                    tracing::warn!(sandbox_id = %rec.id, error = %cove_types::error::chain(&e), "cannot remove what it made");
                }
                rec.state = SandboxState::Error;
                rec.error_reason = Some(INTERRUPTED_CREATE.into());
                rec.updated_at = now_millis();
                self.inner.store.update_sandbox_if(&rec, &[from]).await.map_err(store("reconcile sandbox"))?;
                continue;
            }
            let status = self.inner.runtime.status(&rec.id).await;
            let (state, reason) = match status {
                Ok(SandboxStatus::Running { .. }) => match self.wait_agent(&rec.id).await {
                    Ok(v) => {
                        rec.daemon_version = Some(v);
                        (SandboxState::Started, None)
                    }
                    Err(e) => (SandboxState::Error, Some(cove_types::error::chain(&e))),
                },
                Ok(SandboxStatus::Stopped { exit_code, oom_killed }) => {
                    // Unmount and release what the dead container held; files stay.
                    if let Err(e) = self.inner.runtime.stop(&rec.id, Duration::ZERO).await {
                        tracing::warn!(sandbox_id = %rec.id, error = %e, "cleanup of a stopped sandbox failed");
                    }
                    if rec.desired_state == "stopped" {
                        (SandboxState::Stopped, None)
                    } else if from == SandboxState::Starting {
                        (SandboxState::Error, Some(INTERRUPTED_START.into()))
                    } else {
                        (SandboxState::Error, Some(death_reason(exit_code, oom_killed, rec.mem)))
                    }
                }
                // Nothing on disk: a failed sandbox keeps its reason, anything else could not
                // start either, so it is never reported `stopped`.
                Ok(SandboxStatus::Missing) if rec.error_reason.as_deref() == Some(super::nodes::NODE_LOST) => {
                    (SandboxState::Error, Some(FILES_MISSING.into()))
                }
                Ok(SandboxStatus::Missing) if matches!(from, SandboxState::Error | SandboxState::BuildFailed) => {
                    (from, rec.error_reason.clone())
                }
                Ok(SandboxStatus::Missing) => (SandboxState::Error, Some(FILES_MISSING.into())),
                Err(e) => (SandboxState::Error, Some(format!("cannot read the sandbox's state: {e}"))),
            };
            if state != from || reason != rec.error_reason {
                rec.state = state;
                rec.error_reason = reason;
                rec.updated_at = now_millis();
                self.inner.store.update_sandbox_if(&rec, &[from]).await.map_err(store("reconcile sandbox"))?;
                tracing::info!(sandbox_id = %rec.id, from = %from, to = %state, "sandbox reconciled");
            }
        }
        Ok(())
    }

    /// Removes idle warm-pool sandboxes every `interval`; runs forever.
    pub async fn run_pool_sweeper(self, interval: Duration) {
        self.inner.pool.clone().run_sweeper(interval).await
    }

    /// Destroys the warm pool's waiting sandboxes (at shutdown).
    pub async fn drain_pool(&self) {
        self.inner.pool.drain().await
    }

    /// Prepared sandboxes waiting per snapshot id.
    pub fn pool_ready(&self) -> std::collections::HashMap<String, usize> {
        self.inner.pool.ready()
    }

    /// At a clean stop, after the pool is drained: the runtime removes Cove's firewall table
    /// when no sandbox is left, else locks the bridge down until the next start.
    pub async fn shutdown_network(&self) {
        self.inner.runtime.shutdown().await;
    }

    /// Every `interval`, marks started sandboxes whose container died (e.g. OOM) or whose
    /// disk went read-only (an I/O or filesystem error) as `error`, with the reason.
    pub async fn run_monitor(self, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let Ok(all) = self.inner.store.node_sandboxes_for_job(self.inner.node.as_deref()).await else { continue };
            let failed_disks = self.inner.runtime.failed_disks();
            for mut rec in all.into_iter().filter(|r| r.state == SandboxState::Started) {
                if let Some(options) = failed_disks.get(&rec.id) {
                    self.forget_socket(&rec.id);
                    if let Err(e) = self.inner.runtime.stop(&rec.id, Duration::ZERO).await {
                        tracing::warn!(sandbox_id = %rec.id, error = %e, "stopping a sandbox with a failed disk failed");
                    }
                    rec.state = SandboxState::Error;
                    rec.error_reason = Some(format!(
                        "its disk's filesystem went read-only after an I/O or filesystem error ({options}); \
                         it no longer takes writes: delete it"
                    ));
                    rec.updated_at = now_millis();
                    match self.inner.store.update_sandbox_if(&rec, &[SandboxState::Started]).await {
                        Ok(_) => {
                            tracing::warn!(sandbox_id = %rec.id, reason = ?rec.error_reason, "sandbox disk failed")
                        }
                        Err(e) => tracing::error!(sandbox_id = %rec.id, error = %e, "cannot record a failed disk"),
                    }
                    continue;
                }
                if let Ok(SandboxStatus::Stopped { exit_code, oom_killed }) = self.inner.runtime.status(&rec.id).await {
                    self.forget_socket(&rec.id);
                    if let Err(e) = self.inner.runtime.stop(&rec.id, Duration::ZERO).await {
                        tracing::warn!(sandbox_id = %rec.id, error = %e, "cleanup of a dead sandbox failed");
                    }
                    rec.state = SandboxState::Error;
                    rec.error_reason = Some(death_reason(exit_code, oom_killed, rec.mem));
                    rec.updated_at = now_millis();
                    if let Err(e) = self.inner.store.update_sandbox_if(&rec, &[SandboxState::Started]).await {
                        tracing::error!(sandbox_id = %rec.id, error = %e, "cannot record a dead sandbox");
                    } else {
                        tracing::warn!(sandbox_id = %rec.id, reason = ?rec.error_reason, "sandbox died");
                    }
                }
            }
        }
    }

    /// The network a create asks for: its policy (validated) and the sandbox it links to
    /// (same organization, not being destroyed). Fields Cove cannot honour are refused.
    async fn net_setup(&self, who: &Principal, req: &CreateSandbox) -> Result<NetSetup, SandboxError> {
        refuse_unhonoured(req)?;
        let policy = NetPolicy::from_fields(
            req.network_block_all,
            req.network_allow_list.as_deref(),
            req.domain_allow_list.as_deref(),
        )
        .and_then(|p| p.refuse_never_reachable(self.inner.runtime.allow_private()).map(|()| p))
        .map_err(|e| SandboxError::Invalid(e.to_string()))?;
        let link = match req.linked_sandbox.as_deref().filter(|l| !l.trim().is_empty()) {
            None => None,
            Some(l) => {
                let peer = self.find_here(who, l).await.map_err(|e| match e {
                    SandboxError::NotFound { id_or_name } => {
                        SandboxError::Invalid(format!("linkedSandbox {id_or_name} not found"))
                    }
                    e => e,
                })?;
                if !matches!(peer.state, SandboxState::Started | SandboxState::Stopped) {
                    return Err(SandboxError::Invalid(format!(
                        "linkedSandbox {} is {}; it must be started or stopped",
                        peer.name, peer.state
                    )));
                }
                Some(peer.id)
            }
        };
        Ok(NetSetup { policy, link, name: None })
    }

    /// Puts a sandbox's policy and link in place: before anything in it runs at a create,
    /// live at an update.
    async fn apply_net(&self, id: &str, net: &NetSetup) -> Result<(), SandboxError> {
        let runtime_err = |op, source| SandboxError::Runtime { op, id: id.to_string(), source };
        if let Some(name) = net.name.as_ref().filter(|n| *n != id) {
            self.inner
                .runtime
                .set_host_names(id, std::slice::from_ref(name))
                .await
                .map_err(|e| runtime_err("name", e))?;
        }
        if net.policy.is_restricted() {
            self.inner
                .runtime
                .set_network_policy(id, net.policy.clone())
                .await
                .map_err(|e| runtime_err("apply the network policy of", e))?;
        }
        if let Some(peer) = &net.link {
            self.inner.runtime.link(id, peer).await.map_err(|e| runtime_err("link", e))?;
        }
        Ok(())
    }

    /// A cold start: prepared (`runc create`), given its name, policy and link, and only then
    /// started (as cheap as `runc run`: the fifo is read in process), so that nothing in the
    /// sandbox ever runs without them.
    async fn launch(&self, spec: &SandboxSpec, net: &NetSetup) -> Result<(), SandboxError> {
        let runtime_err = |op, source| SandboxError::Runtime { op, id: spec.id.clone(), source };
        self.inner.runtime.prepare(spec).await.map_err(|e| runtime_err("create", e))?;
        self.apply_net(&spec.id, net).await?;
        self.inner.runtime.start_prepared(&spec.id, &[]).await.map_err(|e| runtime_err("start", e))
    }

    /// `update_network_settings`: replaces the policy of a sandbox, live when it runs.
    /// `networkBlockAll: true` blocks everything; `false` alone lifts every restriction; a
    /// list given replaces the stored one, a list not given is kept.
    pub async fn update_network(
        &self,
        who: &Principal,
        id_or_name: &str,
        req: UpdateNetworkSettings,
    ) -> Result<SandboxDto, SandboxError> {
        if req.network_block_all.is_none() && req.network_allow_list.is_none() && req.domain_allow_list.is_none() {
            return Err(SandboxError::Invalid(
                "at least one of networkBlockAll, networkAllowList or domainAllowList must be set".into(),
            ));
        }
        let mut rec = self.find_here(who, id_or_name).await?;
        if rec.state.is_transitional() {
            return Err(SandboxError::Busy { name: rec.name.clone(), state: rec.state });
        }
        if !matches!(rec.state, SandboxState::Started | SandboxState::Stopped) {
            return Err(SandboxError::WrongState {
                verb: "update the network of",
                name: rec.name.clone(),
                state: rec.state,
            });
        }
        let lists_given = req.network_allow_list.is_some() || req.domain_allow_list.is_some();
        let policy = match req.network_block_all {
            Some(true) => {
                NetPolicy::from_fields(Some(true), req.network_allow_list.as_deref(), req.domain_allow_list.as_deref())
            }
            Some(false) if !lists_given => Ok(NetPolicy::default()),
            _ => NetPolicy::from_fields(
                Some(false),
                req.network_allow_list.as_deref().or(rec.network_allow_list.as_deref()),
                req.domain_allow_list.as_deref().or(rec.domain_allow_list.as_deref()),
            ),
        }
        .and_then(|p| p.refuse_never_reachable(self.inner.runtime.allow_private()).map(|()| p))
        .map_err(|e| SandboxError::Invalid(e.to_string()))?;
        let from = rec.state;
        rec.network_block_all = policy.block_all;
        rec.network_allow_list = policy.allow_list_string();
        rec.domain_allow_list = policy.domain_list_string();
        rec.updated_at = now_millis();
        // The runtime first: a stored policy that is not in force would be a lie.
        self.inner.runtime.set_network_policy(&rec.id, policy.clone()).await.map_err(|source| {
            SandboxError::Runtime { op: "apply the network policy of", id: rec.id.clone(), source }
        })?;
        if !self.inner.store.update_sandbox_if(&rec, &[from]).await.map_err(store("update network settings"))? {
            let now = self.find(who, id_or_name).await?;
            return Err(SandboxError::Busy { name: now.name, state: now.state });
        }
        tracing::info!(sandbox_id = %rec.id, block_all = policy.block_all, cidrs = policy.allow_cidrs.len(),
            domains = policy.allow_domains.len(), "network policy updated");
        Ok(self.dto(&rec))
    }

    pub(crate) fn dto(&self, r: &SandboxRecord) -> SandboxDto {
        SandboxDto {
            id: r.id.clone(),
            organization_id: r.org_id.clone(),
            name: r.name.clone(),
            snapshot: r.snapshot_name.clone(),
            user: r.user.clone(),
            env: r.env.clone(),
            labels: r.labels.clone(),
            public: r.public,
            network_block_all: r.network_block_all,
            network_allow_list: r.network_allow_list.clone(),
            domain_allow_list: r.domain_allow_list.clone(),
            ip: self.inner.runtime.ip(&r.id).map(|ip| ip.to_string()),
            linked_sandbox_id: r.linked_sandbox_id.clone(),
            kvm: false,
            target: r.region_id.clone(),
            cpu: r.cpu,
            gpu: r.gpu,
            memory: r.mem,
            disk: r.disk,
            state: r.state,
            desired_state: r.desired_state.clone(),
            error_reason: r.error_reason.clone(),
            auto_stop_interval: r.auto_stop,
            auto_archive_interval: r.auto_archive,
            auto_delete_interval: r.auto_delete,
            volumes: Vec::new(),
            created_at: iso(r.created_at),
            updated_at: iso(r.updated_at),
            sandbox_class: "container".into(),
            daemon_version: r.daemon_version.clone(),
            toolbox_proxy_url: self.inner.toolbox_url.clone(),
        }
    }
}

/// The network a sandbox starts with.
#[derive(Debug, Clone, Default)]
struct NetSetup {
    policy: NetPolicy,
    /// Id of the linked sandbox.
    link: Option<String>,
    /// Its name, for `/etc/hosts` (its own and its peers').
    name: Option<String>,
}

/// Fields of a create Cove does not honour, refused when set to anything but their neutral
/// value (the SDKs send `volumes: []` by default).
fn refuse_unhonoured(req: &CreateSandbox) -> Result<(), SandboxError> {
    let set = |s: &Option<String>| s.as_deref().is_some_and(|v| !v.trim().is_empty());
    let unhonoured = [
        ("outboundProxyUrl", set(&req.outbound_proxy_url)),
        ("otelEndpointOverride", set(&req.otel_endpoint_override)),
        ("kvm", req.kvm == Some(true)),
        ("gpuType", req.gpu_type.as_ref().is_some_and(|v| !v.is_empty())),
        ("spot", req.spot == Some(true)),
        ("autoPauseInterval", req.auto_pause_interval.is_some_and(|v| v != 0)),
        ("ttlMinutes", req.ttl_minutes.is_some_and(|v| v != 0)),
        ("volumes", req.volumes.as_ref().is_some_and(|v| !v.is_empty())),
        ("secrets", req.secrets.as_ref().is_some_and(|v| !v.is_empty())),
    ];
    if let Some((field, _)) = unhonoured.iter().find(|(_, set)| *set) {
        return Err(SandboxError::Unsupported(field));
    }
    if req.queue_timeout.is_some_and(|v| v < 1) {
        return Err(SandboxError::Invalid("queueTimeout must be a positive number of minutes".into()));
    }
    Ok(())
}

/// The policy a sandbox row records.
fn stored_policy(r: &SandboxRecord) -> Result<NetPolicy, SandboxError> {
    NetPolicy::from_fields(Some(r.network_block_all), r.network_allow_list.as_deref(), r.domain_allow_list.as_deref())
        .map_err(|e| SandboxError::Invalid(format!("stored network policy of sandbox {}: {e}", r.id)))
}

/// Container-engine mode (`cove_types::sandbox::ENGINE_LABEL`): the sandbox's label decides
/// when it has one (`"true"` or `"false"`, anything else is refused), else the image
/// ([`cove_types::sandbox::image_wants_engine`]).
fn engine_mode(
    image_labels: Option<&std::collections::HashMap<String, String>>,
    entrypoint: &[String],
    labels: Option<&BTreeMap<String, String>>,
) -> Result<bool, SandboxError> {
    use cove_types::sandbox::{ENGINE_LABEL, image_wants_engine};
    match labels.and_then(|l| l.get(ENGINE_LABEL)).map(String::as_str) {
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(SandboxError::Invalid(format!(
            "label {ENGINE_LABEL} is \"true\" or \"false\" (container-engine mode), not {other:?}"
        ))),
        None => Ok(image_wants_engine(image_labels, entrypoint)),
    }
}

/// A requested sandbox name, checked (`None`: the id will be the name).
fn sandbox_name(asked: Option<&str>) -> Result<Option<String>, SandboxError> {
    match asked.filter(|n| !n.is_empty()) {
        Some(n) => Ok(Some(
            SnapshotName::parse(n)
                .map_err(|e| SandboxError::Invalid(e.to_string().replace("snapshot name", "sandbox name")))?
                .as_str()
                .to_string(),
        )),
        None => Ok(None),
    }
}

fn validate_env(env: &BTreeMap<String, String>) -> Result<(), SandboxError> {
    if let Some(k) = env.keys().find(|k| k.is_empty() || k.contains('=') || k.contains('\0')) {
        return Err(SandboxError::Invalid(format!("invalid environment variable name {k:?}")));
    }
    if let Some(k) = env.iter().find(|(_, v)| v.contains('\0')).map(|(k, _)| k) {
        return Err(SandboxError::Invalid(format!("environment variable {k} contains a NUL byte")));
    }
    Ok(())
}

/// Why a sandbox's container ended, for `errorReason`.
fn death_reason(exit_code: Option<i32>, oom_killed: bool, mem_gib: i64) -> String {
    if oom_killed {
        return format!("the sandbox ran out of memory (limit {mem_gib} GiB) and was killed");
    }
    match exit_code {
        Some(c) => format!("the sandbox's main process exited with code {c}"),
        None => "the sandbox's main process exited".into(),
    }
}

/// The node that holds a sandbox, when it is not `me`. A server without nodes (SQLite) and a
/// row from before nodes (`None`, claimed at start by the node whose data dir has its files)
/// are this node's.
fn other_owner<'a>(me: Option<&str>, owner: Option<&'a str>) -> Option<&'a str> {
    match (me, owner) {
        (Some(me), Some(owner)) if me != owner => Some(owner),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_of_another_node_is_refused_here_and_one_of_this_node_or_without_nodes_is_not() {
        assert_eq!(other_owner(Some("a"), Some("b")), Some("b"));
        assert_eq!(other_owner(Some("a"), Some("a")), None);
        assert_eq!(other_owner(Some("a"), None), None, "a row from before nodes");
        assert_eq!(other_owner(None, Some("b")), None, "a single server without --database-url");
        let e = SandboxError::OnOtherNode { id: "s1".into(), node: "b".into() };
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        assert!(e.to_string().contains("runs on node b"), "{e}");
    }

    #[test]
    fn an_oom_death_names_the_memory_limit() {
        assert_eq!(death_reason(Some(137), true, 1), "the sandbox ran out of memory (limit 1 GiB) and was killed");
        assert!(death_reason(Some(3), false, 1).contains("code 3"));
    }
}
