//! Nodes (issue 18): every `cove server` started with `--database-url` is a node of one
//! installation that shares the database. A server without it is the installation's only
//! node and has no node row at all.
//!
//! Contract:
//! - A node's id is stable: made once, a UUID in `<data-dir>/node-id` (0600, created without
//!   following links, never replaced) — [`load_or_create_id`].
//! - [`NodeService::register`] writes the node's row at start (an upsert: address, region,
//!   capacity, version; `lost` becomes `ready`, `draining` stays draining).
//! - Every heartbeat interval [`NodeService::tick`] records the heartbeat, then sweeps: any
//!   other node whose heartbeat is older than `lost_after` is marked `lost` by a
//!   compare-and-set on its state and heartbeat (of several sweeping nodes exactly one wins),
//!   and the live sandboxes (creating, starting, started, stopping) of every lost node become
//!   `error` [`NODE_LOST`], each by a compare-and-set on its state and `updated_at`, so a
//!   write the node made meanwhile is never overwritten.
//! - A node that finds itself marked `lost` (its heartbeats resumed) is `ready` again; its own
//!   sandboxes in `error` [`NODE_LOST`] are handed back from [`NodeService::tick`] and
//!   reconciled with what the runtime reports (`SandboxService::reconcile_records`, the
//!   reconciliation a restart runs), at every tick that finds some.
//! - A `draining` node refuses creates ([`NodeService::admit_create`], 400 naming the
//!   drain); its sandboxes stay and keep serving. Requests for a sandbox on another node are
//!   forwarded there (`crate::forward`); placement on other nodes and image transfer are
//!   not built yet.
//! - The node endpoints are for admin keys only ([`for_admin`]); without `--database-url`
//!   they answer 400 [`NodeError::SingleNode`].

use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cove_types::{ErrorKind, SandboxState};
use serde::Serialize;

use super::keys::Principal;
use super::{iso, now_millis};
use crate::store::{Heartbeat, NodeRecord, NodeState, SandboxRecord, Store, StoreError};

/// `errorReason` of a sandbox whose node missed its heartbeats.
pub const NODE_LOST: &str = "node lost";

/// The file in the data dir that holds the node's id.
pub const NODE_ID_FILE: &str = "node-id";

/// Default `--node-heartbeat`.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);
/// Default `--node-lost-after`.
pub const DEFAULT_LOST_AFTER: Duration = Duration::from_secs(10);

/// Sandbox states that mean "runs, or is about to, on its node": the ones a lost node's
/// sandboxes leave for `error` [`NODE_LOST`].
const LIVE: [SandboxState; 4] =
    [SandboxState::Creating, SandboxState::Starting, SandboxState::Started, SandboxState::Stopping];

/// A failed node operation.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// `--node-heartbeat` / `--node-lost-after` out of range.
    #[error("{0}")]
    Invalid(String),
    /// The node id file could not be read or made.
    #[error("{op} node id {path}: {source}")]
    IdFile {
        /// What was done.
        op: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A member key called a node endpoint.
    #[error("only an admin API key may list, drain or undrain nodes")]
    NotAdmin,
    /// A node endpoint on a server without `--database-url`.
    #[error("nodes need --database-url: this server keeps its metadata in SQLite and is the installation's only node")]
    SingleNode,
    /// No node with that id.
    #[error("node {id} not found")]
    NotFound {
        /// What was asked for.
        id: String,
    },
    /// A drain or undrain the node's state does not allow.
    #[error("cannot {verb} node {id}: it is {state}")]
    WrongState {
        /// The verb.
        verb: &'static str,
        /// The node.
        id: String,
        /// Its state.
        state: NodeState,
    },
    /// This node is draining: it takes no new sandboxes.
    #[error(
        "node {id} is draining and takes no new sandboxes (`cove node undrain {id}` ends the drain; \
         placement on other nodes is not built yet)"
    )]
    Draining {
        /// This node.
        id: String,
    },
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

impl NodeError {
    /// The error class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) | Self::SingleNode | Self::Draining { .. } => ErrorKind::InvalidArgument,
            Self::WrongState { .. } => ErrorKind::FailedPrecondition,
            Self::NotAdmin => ErrorKind::PermissionDenied,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::IdFile { .. } => ErrorKind::Internal,
            Self::Store { source, .. } => source.kind(),
        }
    }
}

fn store(op: &'static str) -> impl FnOnce(StoreError) -> NodeError {
    move |source| NodeError::Store { op, source }
}

/// How a node heartbeats and when others count it lost (`--node-heartbeat`,
/// `--node-lost-after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeTiming {
    /// How often the node records its heartbeat and sweeps.
    pub heartbeat: Duration,
    /// A node whose heartbeat is older than this is lost.
    pub lost_after: Duration,
}

impl Default for NodeTiming {
    fn default() -> Self {
        NodeTiming { heartbeat: DEFAULT_HEARTBEAT, lost_after: DEFAULT_LOST_AFTER }
    }
}

impl NodeTiming {
    /// Checks the two together: a heartbeat of at least 10 ms, and a limit of at least two
    /// heartbeats (one late heartbeat must not lose a node).
    pub fn validate(self) -> Result<Self, NodeError> {
        if self.heartbeat < Duration::from_millis(10) {
            return Err(NodeError::Invalid(format!(
                "--node-heartbeat {:?} is too short: at least 10 ms",
                self.heartbeat
            )));
        }
        if self.lost_after < self.heartbeat * 2 {
            return Err(NodeError::Invalid(format!(
                "--node-lost-after {:?} must be at least two heartbeats (--node-heartbeat {:?})",
                self.lost_after, self.heartbeat
            )));
        }
        Ok(self)
    }
}

/// This machine as a node row (`ready`, times set at registration): its CPUs, memory
/// (`/proc/meminfo`), the data dir's filesystem and `gpus`.
pub fn this_machine(id: String, region: String, address: String, data_dir: &Path, gpus: usize) -> NodeRecord {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        })
        .unwrap_or(0);
    let disk = rustix::fs::statvfs(data_dir).map_or(0, |st| st.f_blocks.saturating_mul(st.f_frsize));
    NodeRecord {
        id,
        region,
        address,
        cpus: i64::try_from(cpus).unwrap_or(i64::MAX),
        memory_mib: memory_kib / 1024,
        disk_mib: i64::try_from(disk >> 20).unwrap_or(i64::MAX),
        gpus: i64::try_from(gpus).unwrap_or(i64::MAX),
        state: NodeState::Ready,
        started_at: 0,
        heartbeat_at: 0,
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Reads the node id from `<data-dir>/node-id`, or makes one (a UUID, 0600, created
/// exclusively and without following a link someone placed there).
pub fn load_or_create_id(data_dir: &Path) -> Result<String, NodeError> {
    let path = data_dir.join(NODE_ID_FILE);
    let err = |op, source| NodeError::IdFile { op, path: path.clone(), source };
    let open = std::fs::OpenOptions::new().read(true).custom_flags(o_nofollow()).open(&path);
    match open {
        Ok(mut f) => {
            let mut s = String::new();
            f.read_to_string(&mut s).map_err(|e| err("read", e))?;
            let id = s.trim();
            if id.is_empty() {
                // A crash between the exclusive create and the write's fsync: no id was ever
                // handed out from it, so a new one is made.
                std::fs::remove_file(&path).map_err(|e| err("remove the empty", e))?;
                return load_or_create_id(data_dir);
            }
            uuid::Uuid::parse_str(id).map_err(|e| {
                err("read", std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a UUID: {e}")))
            })?;
            Ok(id.to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = uuid::Uuid::new_v4().to_string();
            // `create_new` is O_CREAT|O_EXCL, which never follows a link at the name.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(o_nofollow())
                .open(&path)
                .map_err(|e| err("create", e))?;
            f.write_all(format!("{id}\n").as_bytes()).and_then(|()| f.sync_all()).map_err(|e| err("write", e))?;
            cove_types::fs::sync_dir(data_dir).map_err(|e| err("sync the directory of", e))?;
            tracing::info!(node_id = %id, path = %path.display(), "created this node's id");
            Ok(id)
        }
        Err(e) => Err(err("open", e)),
    }
}

/// `O_NOFOLLOW`: a link placed at the name is refused (`ELOOP`), never followed.
fn o_nofollow() -> i32 {
    i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).expect("O_NOFOLLOW fits an int")
}

/// A node as `GET /api/nodes` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeDto {
    /// Id.
    pub id: String,
    /// `ready`, `draining` or `lost`.
    pub state: String,
    /// Region.
    pub region: String,
    /// API base URL as other nodes reach it.
    pub address: String,
    /// CPUs.
    pub cpus: i64,
    /// Memory, MiB.
    pub memory_mib: i64,
    /// Data filesystem, MiB.
    pub disk_mib: i64,
    /// GPUs.
    pub gpus: i64,
    /// When its process started (ISO-8601).
    pub started_at: String,
    /// Its last heartbeat (ISO-8601).
    pub heartbeat_at: String,
    /// Milliseconds since its last heartbeat, as the answering node's clock sees it.
    pub heartbeat_age_ms: i64,
    /// Sandboxes on it, every state but `destroyed`.
    pub sandboxes: i64,
    /// The `cove` version it runs.
    pub version: String,
    /// Whether this is the node that answered.
    pub this_node: bool,
}

/// What one [`NodeService::tick`] did.
#[derive(Debug, Default)]
pub struct Tick {
    /// This node had been marked lost and is ready again.
    pub revived: bool,
    /// Nodes this tick marked lost.
    pub marked_lost: Vec<String>,
    /// Sandboxes of lost nodes this tick moved to `error` [`NODE_LOST`].
    pub failed: Vec<String>,
    /// This node's own sandboxes in `error` [`NODE_LOST`], to reconcile.
    pub to_reconcile: Vec<SandboxRecord>,
}

/// This node's registration, heartbeat, sweep and drain.
#[derive(Debug, Clone)]
pub struct NodeService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    /// This node's row as it registers (times filled in then).
    me: NodeRecord,
    timing: NodeTiming,
    started_at: i64,
}

impl NodeService {
    /// A node service for `me` ([`this_machine`]; not registered yet).
    pub fn new(store: Arc<dyn Store>, me: NodeRecord, timing: NodeTiming) -> Self {
        NodeService { inner: Arc::new(Inner { store, me, timing, started_at: now_millis() }) }
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.inner.me.id
    }

    /// Writes this node's row (see the module doc).
    #[tracing::instrument(skip_all, fields(node_id = %self.inner.me.id))]
    pub async fn register(&self) -> Result<(), NodeError> {
        let me = &self.inner.me;
        let rec = NodeRecord {
            state: NodeState::Ready,
            started_at: self.inner.started_at,
            heartbeat_at: now_millis(),
            ..me.clone()
        };
        self.inner.store.register_node(&rec).await.map_err(store("register node"))?;
        tracing::info!(region = %me.region, address = %me.address, cpus = me.cpus, memory_mib = me.memory_mib,
            disk_mib = me.disk_mib, gpus = me.gpus, "node registered");
        Ok(())
    }

    /// One heartbeat and one sweep (see the module doc).
    pub async fn tick(&self) -> Result<Tick, NodeError> {
        let st = &self.inner.store;
        let mut tick = Tick::default();
        match st.heartbeat_node(self.id(), now_millis()).await.map_err(store("record heartbeat"))? {
            Heartbeat::Beat => {}
            Heartbeat::Revived => {
                tracing::warn!(node_id = %self.id(), "this node had been marked lost; it is ready again");
                tick.revived = true;
            }
            Heartbeat::Missing => {
                tracing::warn!(node_id = %self.id(), "this node's row is gone; registering again");
                self.register().await?;
            }
        }
        let now = now_millis();
        let limit = i64::try_from(self.inner.timing.lost_after.as_millis()).unwrap_or(i64::MAX);
        let nodes = st.list_nodes().await.map_err(store("list nodes"))?;
        let mut lost = Vec::new();
        for n in nodes.into_iter().filter(|n| n.id != self.id()) {
            if n.state == NodeState::Lost {
                lost.push(n.id);
            } else if n.heartbeat_at < now - limit
                && st.mark_node_lost_if(&n.id, now - limit).await.map_err(store("mark node lost"))?
            {
                tracing::warn!(node_id = %n.id, region = %n.region, heartbeat_age_ms = now - n.heartbeat_at,
                    by = %self.id(), "node missed its heartbeats; marked lost");
                tick.marked_lost.push(n.id.clone());
                lost.push(n.id);
            }
        }
        // Every lost node's live sandboxes, at every tick: a sweeper that stopped between
        // marking a node and failing its sandboxes leaves the rest to the next one.
        for node in &lost {
            let recs = st.node_sandboxes_for_job(Some(node)).await.map_err(store("list a lost node's sandboxes"))?;
            for rec in recs.iter().filter(|r| LIVE.contains(&r.state)) {
                if st
                    .fail_sandbox_if_unchanged(rec, NODE_LOST, now_millis())
                    .await
                    .map_err(store("mark a lost node's sandbox"))?
                    .is_some()
                {
                    tracing::warn!(sandbox_id = %rec.id, node_id = %node, from = %rec.state, "sandbox's node lost");
                    tick.failed.push(rec.id.clone());
                }
            }
        }
        let mine = st.node_sandboxes_for_job(Some(self.id())).await.map_err(store("list this node's sandboxes"))?;
        tick.to_reconcile = mine
            .into_iter()
            .filter(|r| r.state == SandboxState::Error && r.error_reason.as_deref() == Some(NODE_LOST))
            .collect();
        Ok(tick)
    }

    /// Heartbeats and sweeps every heartbeat interval, forever; this node's sandboxes that
    /// another node marked [`NODE_LOST`] are reconciled by `sandboxes` once `reconciled`
    /// is open (the start's own reconciliation covers them before).
    pub async fn run(self, sandboxes: super::sandboxes::SandboxService, reconciled: crate::startup::Gate) {
        let mut every = tokio::time::interval(self.inner.timing.heartbeat);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match self.tick().await {
                Ok(t) if !t.to_reconcile.is_empty() && reconciled.is_open() => {
                    let n = t.to_reconcile.len();
                    match sandboxes.reconcile_records(t.to_reconcile).await {
                        Ok(()) => {
                            tracing::info!(node_id = %self.id(), sandboxes = n, "reconciled sandboxes marked node lost")
                        }
                        Err(e) => tracing::error!(node_id = %self.id(), error = %cove_types::error::chain(&e),
                            "reconciling sandboxes marked node lost failed"),
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(node_id = %self.id(), error = %cove_types::error::chain(&e), "node heartbeat failed")
                }
            }
        }
    }

    /// Refuses a create while this node is draining.
    pub async fn admit_create(&self) -> Result<(), NodeError> {
        let me = self.inner.store.get_node(self.id()).await.map_err(store("read this node"))?;
        match me {
            Some(n) if n.state == NodeState::Draining => Err(NodeError::Draining { id: n.id }),
            _ => Ok(()),
        }
    }

    /// Every node with its sandbox count (admin keys only: see [`for_admin`]).
    pub async fn list(&self) -> Result<Vec<NodeDto>, NodeError> {
        let st = &self.inner.store;
        let nodes = st.list_nodes().await.map_err(store("list nodes"))?;
        let counts = st.sandbox_counts_by_node().await.map_err(store("count sandboxes per node"))?;
        let now = now_millis();
        Ok(nodes
            .into_iter()
            .map(|n| {
                let sandboxes = counts.iter().filter(|(id, _)| id.as_deref() == Some(&n.id)).map(|(_, c)| *c).sum();
                NodeDto {
                    this_node: n.id == self.id(),
                    state: n.state.to_string(),
                    heartbeat_age_ms: (now - n.heartbeat_at).max(0),
                    started_at: iso(n.started_at),
                    heartbeat_at: iso(n.heartbeat_at),
                    id: n.id,
                    region: n.region,
                    address: n.address,
                    cpus: n.cpus,
                    memory_mib: n.memory_mib,
                    disk_mib: n.disk_mib,
                    gpus: n.gpus,
                    sandboxes,
                    version: n.version,
                }
            })
            .collect())
    }

    /// `ready` → `draining` (already draining: unchanged).
    #[tracing::instrument(skip(self))]
    pub async fn drain(&self, id: &str) -> Result<NodeDto, NodeError> {
        self.change(id, "drain", NodeState::Draining, &[NodeState::Ready, NodeState::Draining]).await
    }

    /// `draining` → `ready` (already ready: unchanged).
    #[tracing::instrument(skip(self))]
    pub async fn undrain(&self, id: &str) -> Result<NodeDto, NodeError> {
        self.change(id, "undrain", NodeState::Ready, &[NodeState::Draining, NodeState::Ready]).await
    }

    async fn change(
        &self,
        id: &str,
        verb: &'static str,
        to: NodeState,
        from: &[NodeState],
    ) -> Result<NodeDto, NodeError> {
        let st = &self.inner.store;
        let Some(node) = st.get_node(id).await.map_err(store("get node"))? else {
            return Err(NodeError::NotFound { id: id.to_string() });
        };
        if !st.set_node_state_if(id, to, from).await.map_err(store("change node state"))? {
            let state = st.get_node(id).await.map_err(store("get node"))?.map_or(node.state, |n| n.state);
            return Err(NodeError::WrongState { verb, id: id.to_string(), state });
        }
        tracing::info!(node_id = %id, from = %node.state, to = %to, "node {verb}ed");
        self.list().await?.into_iter().find(|n| n.id == id).ok_or_else(|| NodeError::NotFound { id: id.to_string() })
    }
}

/// The node service for a node endpoint: admin keys only (403 for others, checked first),
/// and only on a server with `--database-url`.
pub fn for_admin<'a>(nodes: Option<&'a NodeService>, who: &Principal) -> Result<&'a NodeService, NodeError> {
    if !who.admin {
        return Err(NodeError::NotAdmin);
    }
    nodes.ok_or(NodeError::SingleNode)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::store::{Organization, PgStore, SandboxRecord, testing};

    const FAST: NodeTiming =
        NodeTiming { heartbeat: Duration::from_millis(50), lost_after: Duration::from_millis(300) };

    fn identity(id: &str) -> NodeRecord {
        NodeRecord {
            address: format!("http://{id}.test:3000"),
            cpus: 4,
            memory_mib: 8192,
            ..this_machine(id.into(), "us".into(), String::new(), Path::new("/"), 0)
        }
    }

    /// `n` nodes, each with its own connection pool to one fresh database (as separate
    /// servers would have), registered.
    async fn nodes(n: usize) -> (Vec<NodeService>, Arc<dyn Store>) {
        let url = testing::fresh_database().await;
        let mut out = Vec::new();
        for i in 0..n {
            let st: Arc<dyn Store> = Arc::new(PgStore::connect(&url).await.unwrap());
            let node = NodeService::new(st, identity(&format!("node-{i}")), FAST);
            node.register().await.unwrap();
            out.push(node);
        }
        let st: Arc<dyn Store> = Arc::new(PgStore::connect(&url).await.unwrap());
        st.insert_org(&Organization { id: "o1".into(), name: "o1".into(), created_at: 0 }).await.unwrap();
        (out, st)
    }

    async fn sandbox_on(st: &Arc<dyn Store>, id: &str, node: &str, state: SandboxState) {
        let mut rec = crate::store::tests::sandbox(id, "o1", state);
        rec.node_id = Some(node.into());
        st.insert_sandbox(&rec).await.unwrap();
    }

    async fn get(st: &Arc<dyn Store>, id: &str) -> SandboxRecord {
        st.get_sandbox_by_id(id).await.unwrap().unwrap()
    }

    /// Ticks `node` every heartbeat until `done` holds or `limit` passes; returns the time taken.
    async fn tick_until(node: &NodeService, limit: Duration, mut done: impl FnMut(&Tick) -> bool) -> Duration {
        let t0 = std::time::Instant::now();
        loop {
            let t = node.tick().await.unwrap();
            if done(&t) {
                return t0.elapsed();
            }
            assert!(t0.elapsed() < limit, "not done within {limit:?}");
            tokio::time::sleep(FAST.heartbeat).await;
        }
    }

    #[tokio::test]
    async fn two_nodes_register_on_one_database_and_list_each_other_with_heartbeats() {
        let (n, st) = nodes(2).await;
        sandbox_on(&st, "s1", "node-1", SandboxState::Started).await;
        n[0].tick().await.unwrap();
        n[1].tick().await.unwrap();
        let seen = n[0].list().await.unwrap();
        assert_eq!(seen.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["node-0", "node-1"]);
        assert!(seen.iter().all(|d| d.state == "ready" && d.heartbeat_age_ms < 5_000), "{seen:?}");
        assert_eq!((seen[0].this_node, seen[1].this_node), (true, false));
        assert_eq!((seen[0].sandboxes, seen[1].sandboxes), (0, 1));
        assert_eq!(seen[1].address, "http://node-1.test:3000");
        assert_eq!((seen[1].cpus, seen[1].memory_mib), (4, 8192));
    }

    #[tokio::test]
    async fn a_node_that_stops_heartbeating_is_lost_within_the_limit_and_its_running_sandboxes_fail_node_lost() {
        let (n, st) = nodes(2).await;
        for (id, state) in [
            ("started", SandboxState::Started),
            ("starting", SandboxState::Starting),
            ("stopped", SandboxState::Stopped),
            ("archived", SandboxState::Archived),
        ] {
            sandbox_on(&st, id, "node-0", state).await;
        }
        sandbox_on(&st, "elsewhere", "node-1", SandboxState::Started).await;
        // node-0 stops heartbeating now; node-1 goes on.
        let mut failed = HashSet::new();
        let took = tick_until(&n[1], Duration::from_secs(5), |t| {
            failed.extend(t.failed.iter().cloned());
            !t.marked_lost.is_empty()
        })
        .await;
        assert!(took < FAST.lost_after + FAST.heartbeat * 4, "lost after {took:?}");
        assert_eq!(st.get_node("node-0").await.unwrap().unwrap().state, NodeState::Lost);
        assert_eq!(failed, HashSet::from(["started".to_string(), "starting".to_string()]));
        for id in ["started", "starting"] {
            let r = get(&st, id).await;
            assert_eq!((r.state, r.error_reason.as_deref()), (SandboxState::Error, Some(NODE_LOST)), "{id}");
        }
        assert_eq!(get(&st, "stopped").await.state, SandboxState::Stopped, "nothing runs: left as it is");
        assert_eq!(get(&st, "archived").await.state, SandboxState::Archived);
        assert_eq!(get(&st, "elsewhere").await.state, SandboxState::Started, "the sweeper's own sandbox");
        assert!(n[1].tick().await.unwrap().failed.is_empty(), "a second sweep changes nothing");
    }

    #[tokio::test]
    async fn two_sweepers_mark_a_lost_node_and_fail_its_sandboxes_exactly_once() {
        let (n, st) = nodes(3).await;
        for i in 0..10 {
            sandbox_on(&st, &format!("s{i}"), "node-0", SandboxState::Started).await;
        }
        tokio::time::sleep(FAST.lost_after + FAST.heartbeat).await;
        let (mut marked, mut failed) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let (a, b) = tokio::join!(n[1].tick(), n[2].tick());
            for t in [a.unwrap(), b.unwrap()] {
                marked.extend(t.marked_lost);
                failed.extend(t.failed);
            }
        }
        assert_eq!(marked, ["node-0"], "exactly one sweeper marked it");
        failed.sort();
        let expected: Vec<String> =
            (0..10).map(|i| format!("s{i}")).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        assert_eq!(failed, expected, "each sandbox failed once, by one sweeper");
    }

    #[tokio::test]
    async fn a_lost_node_whose_heartbeats_resume_is_ready_and_hands_its_node_lost_sandboxes_to_reconciliation() {
        let (n, st) = nodes(2).await;
        sandbox_on(&st, "s1", "node-0", SandboxState::Started).await;
        sandbox_on(&st, "s2", "node-0", SandboxState::Stopped).await;
        tokio::time::sleep(FAST.lost_after + FAST.heartbeat).await;
        tick_until(&n[1], Duration::from_secs(5), |t| t.failed == ["s1"]).await;
        let back = n[0].tick().await.unwrap();
        assert!(back.revived);
        assert_eq!(st.get_node("node-0").await.unwrap().unwrap().state, NodeState::Ready);
        assert_eq!(back.to_reconcile.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["s1"]);
        // Reconciliation (SandboxService::reconcile_records) writes what the runtime says.
        let mut r = back.to_reconcile[0].clone();
        r.state = SandboxState::Started;
        r.error_reason = None;
        assert!(st.update_sandbox_if(&r, &[SandboxState::Error]).await.unwrap());
        assert!(n[0].tick().await.unwrap().to_reconcile.is_empty());
        assert!(n[1].tick().await.unwrap().marked_lost.is_empty(), "it heartbeats again");
    }

    #[tokio::test]
    async fn a_draining_node_refuses_creates_naming_the_drain_until_it_is_undrained() {
        let (n, _st) = nodes(2).await;
        n[0].admit_create().await.unwrap();
        let d = n[1].drain("node-0").await.unwrap();
        assert_eq!(d.state, "draining");
        let e = n[0].admit_create().await.unwrap_err();
        assert!(matches!(e, NodeError::Draining { .. }) && e.to_string().contains("node-0 is draining"), "{e}");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        n[1].admit_create().await.unwrap();
        n[0].register().await.unwrap();
        assert!(n[0].admit_create().await.is_err(), "a restart keeps the drain");
        assert_eq!(n[0].undrain("node-0").await.unwrap().state, "ready");
        n[0].admit_create().await.unwrap();
        let e = n[0].drain("no-such-node").await.unwrap_err();
        assert!(matches!(e, NodeError::NotFound { .. }) && e.to_string().contains("no-such-node"), "{e}");
    }

    #[tokio::test]
    async fn a_lost_node_cannot_be_drained_or_undrained() {
        let (n, _st) = nodes(2).await;
        tokio::time::sleep(FAST.lost_after + FAST.heartbeat).await;
        tick_until(&n[1], Duration::from_secs(5), |t| !t.marked_lost.is_empty()).await;
        let e = n[1].drain("node-0").await.unwrap_err();
        assert!(matches!(e, NodeError::WrongState { state: NodeState::Lost, .. }), "{e}");
    }

    #[test]
    fn node_endpoints_are_for_admin_keys_and_need_a_database_url() {
        let member = Principal { org_id: "o".into(), key_id: "k".into(), admin: false };
        let admin = Principal { admin: true, ..member.clone() };
        let e = for_admin(None, &member).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "a member learns nothing, not even single-node");
        let e = for_admin(None, &admin).unwrap_err();
        assert!(matches!(e, NodeError::SingleNode) && e.to_string().contains("--database-url"), "{e}");
    }

    #[test]
    fn an_empty_node_id_file_left_by_a_crash_is_replaced_by_a_new_id() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(NODE_ID_FILE), b"").unwrap();
        let id = load_or_create_id(dir.path()).unwrap();
        assert!(uuid::Uuid::parse_str(&id).is_ok());
        assert_eq!(load_or_create_id(dir.path()).unwrap(), id, "and it is kept from then on");
    }

    #[test]
    fn the_node_id_is_made_once_private_and_never_through_a_link() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let id = load_or_create_id(d.path()).unwrap();
        uuid::Uuid::parse_str(&id).unwrap();
        let path = d.path().join(NODE_ID_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create_id(d.path()).unwrap(), id, "stable across restarts");
        std::fs::remove_file(&path).unwrap();
        let target = d.path().join("elsewhere");
        std::fs::write(&target, format!("{id}\n")).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(matches!(load_or_create_id(d.path()), Err(NodeError::IdFile { op: "open", .. })), "read refused");
        std::fs::remove_file(&target).unwrap();
        assert!(matches!(load_or_create_id(d.path()), Err(NodeError::IdFile { .. })), "dangling link refused too");
        assert!(!target.exists(), "nothing written through the link");
    }

    #[test]
    fn heartbeat_and_lost_limits_are_validated_together() {
        NodeTiming::default().validate().unwrap();
        FAST.validate().unwrap();
        let e = NodeTiming { heartbeat: Duration::from_secs(5), lost_after: Duration::from_secs(8) }
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("--node-lost-after") && e.to_string().contains("two heartbeats"), "{e}");
        let e = NodeTiming { heartbeat: Duration::ZERO, lost_after: Duration::from_secs(8) }.validate().unwrap_err();
        assert!(e.to_string().contains("--node-heartbeat"), "{e}");
    }
}
