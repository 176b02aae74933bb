//! Sandbox lifecycle automation: auto-stop, auto-archive, auto-delete, and the `archive`,
//! restore (`start` of an archived sandbox), interval and `refresh_activity` verbs.
//!
//! Contract:
//! - **Activity** is any toolbox call through the proxy (at its start and end, and while it
//!   is in flight), a session command still running in the sandbox (asked of the agent
//!   before an auto-stop), `refresh_activity`, a change of an interval, and every state change
//!   the sweep notices (at the row's `updated_at`). It is kept in memory and written to
//!   `sandbox_lifecycle` (migration 0011) once a lifecycle minute, never per call.
//! - **One sweep** every quarter of a lifecycle minute decides per sandbox with [`decide`], a
//!   pure function of its state, idle time and intervals: `started` idle ≥ `autoStopInterval`
//!   (0 = never) → stop (`stopping` → `stopped`); `stopped` or `archived` for ≥
//!   `autoDeleteInterval` (≥ 0; -1 never; 0 = at once) → delete; `stopped` for ≥
//!   `autoArchiveInterval` (0 = the maximum, 30 days) → archive. Delete wins over archive.
//!   Warm-pool sandboxes have no row and are never swept.
//! - **Archive** never loses data: `stopped` → `archiving` (compare-and-set), the disk is
//!   streamed (sparse, zstd; `cove_runtime::archive`) into the content store, committed
//!   (fsync + link) and recorded in the row (only while `archiving`, so a GC root from then
//!   on), then the disk image is deleted, then `archiving` → `archived`. A failure before the
//!   disk is deleted goes back to `stopped` with the disk. **Restore**: `archived` →
//!   `restoring`, the disk is written beside and renamed into place once complete and fsynced,
//!   `restoring` → `stopped`, then the archive is forgotten (its blob becomes garbage).
//! - **After a crash** ([`LifecycleService::reconcile`]): `archiving` with its disk → `stopped`
//!   (a stored blob is garbage); without its disk but with a recorded archive → `archived`.
//!   `restoring` with its disk → `stopped`; without → `archived`.
//! - A lifecycle minute is `--lifecycle-minute-secs` (60; tests use 1 so nothing waits).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cove_image::ContentStore;
use cove_image::content::{ContentError, Ingest};
use cove_runtime::Runtime;
use cove_runtime::archive::ArchiveError;
use cove_types::sandbox::SandboxDto;
use cove_types::{ErrorKind, SandboxState};

use super::keys::Principal;
use super::now_millis;
use super::sandboxes::{SandboxError, SandboxService};
use crate::store::{Millis, SandboxArchive, SandboxRecord, Store, StoreError};
use crate::toolbox::AgentAddr;

/// Daytona's default auto-stop interval, in minutes.
pub const DEFAULT_AUTO_STOP: i64 = 15;
/// Daytona's default auto-archive interval: 7 days, in minutes.
pub const DEFAULT_AUTO_ARCHIVE: i64 = 7 * 24 * 60;
/// The longest auto-archive interval (what 0 means): 30 days, in minutes.
pub const MAX_AUTO_ARCHIVE: i64 = 30 * 24 * 60;
/// Auto-delete is off by default.
pub const DEFAULT_AUTO_DELETE: i64 = -1;

/// A failed lifecycle operation.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// An interval out of range.
    #[error("{field} must be {rule}, got {value}")]
    Interval {
        /// The wire name of the field.
        field: &'static str,
        /// What it must be.
        rule: &'static str,
        /// What was given.
        value: String,
    },
    /// Writing the archive into the content store failed.
    #[error("store the disk archive of sandbox {id}")]
    Content {
        /// The sandbox.
        id: String,
        /// Cause.
        #[source]
        source: Box<ContentError>,
    },
    /// Reading or writing the disk failed.
    #[error("{op} the disk of sandbox {id}")]
    Disk {
        /// What was done.
        op: &'static str,
        /// The sandbox.
        id: String,
        /// Cause.
        #[source]
        source: Box<ArchiveError>,
    },
    /// The archive a sandbox records is not in the content store.
    #[error("the disk archive {digest} of sandbox {id} is missing")]
    ArchiveMissing {
        /// The sandbox.
        id: String,
        /// Its recorded digest.
        digest: String,
    },
    /// The sandbox left `archiving` (it was deleted) before its archive was recorded.
    #[error("sandbox {id} was no longer being archived when its archive was stored")]
    NoLongerArchiving {
        /// The sandbox.
        id: String,
    },
    /// The store failed.
    #[error("{op}")]
    Store {
        /// The operation.
        op: &'static str,
        /// Cause.
        #[source]
        source: Box<StoreError>,
    },
}

impl LifecycleError {
    /// The error class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Interval { .. } => ErrorKind::InvalidArgument,
            Self::Store { source, .. } => source.kind(),
            Self::NoLongerArchiving { .. } => ErrorKind::AlreadyExists,
            Self::Content { .. } | Self::Disk { .. } | Self::ArchiveMissing { .. } => ErrorKind::Internal,
        }
    }
}

fn store_err(op: &'static str) -> impl FnOnce(StoreError) -> LifecycleError {
    move |source| LifecycleError::Store { op, source: Box::new(source) }
}

/// Which interval a `POST /sandbox/{id}/auto…/{n}` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    /// `autostop`.
    Stop,
    /// `autoarchive`.
    Archive,
    /// `autodelete`.
    Delete,
}

/// A sandbox's three intervals, in minutes, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intervals {
    /// Idle minutes before a stop; 0 never.
    pub auto_stop: i64,
    /// Stopped minutes before an archive (1..=[`MAX_AUTO_ARCHIVE`]).
    pub auto_archive: i64,
    /// Stopped minutes before a delete; -1 never, 0 at once.
    pub auto_delete: i64,
}

impl Intervals {
    /// The intervals of a create: Daytona's defaults where not given, each validated.
    pub fn for_create(stop: Option<i64>, archive: Option<i64>, delete: Option<i64>) -> Result<Self, LifecycleError> {
        Ok(Intervals {
            auto_stop: validate(Interval::Stop, stop.unwrap_or(DEFAULT_AUTO_STOP))?,
            auto_archive: validate(Interval::Archive, archive.unwrap_or(DEFAULT_AUTO_ARCHIVE))?,
            auto_delete: validate(Interval::Delete, delete.unwrap_or(DEFAULT_AUTO_DELETE))?,
        })
    }

    fn of(r: &SandboxRecord) -> Self {
        Intervals { auto_stop: r.auto_stop, auto_archive: r.auto_archive, auto_delete: r.auto_delete }
    }
}

/// Checks one interval and returns what is stored: `autoArchiveInterval` 0 means the maximum.
pub fn validate(which: Interval, minutes: i64) -> Result<i64, LifecycleError> {
    let bad = |field, rule| Err(LifecycleError::Interval { field, rule, value: minutes.to_string() });
    match which {
        Interval::Stop if minutes < 0 => bad("autoStopInterval", "0 (never) or a positive number of minutes"),
        Interval::Archive if !(0..=MAX_AUTO_ARCHIVE).contains(&minutes) => {
            bad("autoArchiveInterval", "0 (the maximum) or a number of minutes up to 43200 (30 days)")
        }
        Interval::Archive if minutes == 0 => Ok(MAX_AUTO_ARCHIVE),
        Interval::Delete if minutes < -1 => bad("autoDeleteInterval", "-1 (never), 0 (at stop) or a number of minutes"),
        _ => Ok(minutes),
    }
}

/// Parses the `{interval}` of a route (an integer, else a 400 naming the field).
pub fn parse_interval(which: Interval, text: &str) -> Result<i64, LifecycleError> {
    let field = match which {
        Interval::Stop => "autoStopInterval",
        Interval::Archive => "autoArchiveInterval",
        Interval::Delete => "autoDeleteInterval",
    };
    let n = text.parse::<i64>().map_err(|_| LifecycleError::Interval {
        field,
        rule: "an integer number of minutes",
        value: format!("{text:?}"),
    })?;
    validate(which, n)
}

/// What the sweep does to one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing yet.
    Keep,
    /// Stop it (idle too long).
    Stop,
    /// Archive it (stopped too long).
    Archive,
    /// Delete it (stopped too long, or ephemeral and stopped).
    Delete,
}

/// The sweep's decision for a sandbox in `state`, idle (or stopped) for `idle_ms`, with its
/// intervals; `minute_ms` is the length of a lifecycle minute.
pub fn decide(state: SandboxState, idle_ms: Millis, iv: Intervals, minute_ms: Millis) -> Action {
    let reached = |minutes: i64| idle_ms >= minutes.saturating_mul(minute_ms);
    match state {
        SandboxState::Started if iv.auto_stop > 0 && reached(iv.auto_stop) => Action::Stop,
        SandboxState::Stopped | SandboxState::Archived if iv.auto_delete >= 0 && reached(iv.auto_delete) => {
            Action::Delete
        }
        SandboxState::Stopped if reached(if iv.auto_archive <= 0 { MAX_AUTO_ARCHIVE } else { iv.auto_archive }) => {
            Action::Archive
        }
        _ => Action::Keep,
    }
}

/// The lifecycle of sandboxes: activity, the sweep, archive and restore.
#[derive(Debug, Clone)]
pub struct LifecycleService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    runtime: Arc<Runtime>,
    content: ContentStore,
    minute: Duration,
    state: Mutex<Memory>,
    /// This node's id (`service::nodes`): the sweep and the reconciliation touch only its
    /// sandboxes. `None`: a single-node server, every sandbox.
    node: Option<String>,
}

#[derive(Debug, Default)]
struct Memory {
    /// Sandbox id → last activity.
    activity: HashMap<String, Millis>,
    /// Activity not yet written to the store.
    dirty: HashSet<String>,
    /// Toolbox requests in flight per sandbox.
    in_flight: HashMap<String, usize>,
    /// The state and `updated_at` each sandbox had at the last sweep.
    seen: HashMap<String, (SandboxState, Millis)>,
    /// Sandboxes an action of the sweep is working on.
    working: HashSet<String>,
    /// The store's activity has been read (once, at the first sweep).
    loaded: bool,
}

/// Marks a toolbox request in flight; its end is activity too.
#[derive(Debug)]
pub struct ActivityGuard {
    svc: LifecycleService,
    id: String,
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let mut m = self.svc.mem();
        if let Some(n) = m.in_flight.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.in_flight.remove(&self.id);
            }
        }
        touch(&mut m, &self.id, now_millis());
    }
}

fn touch(m: &mut Memory, id: &str, at: Millis) {
    let e = m.activity.entry(id.to_string()).or_insert(at);
    if *e < at {
        *e = at;
    }
    m.dirty.insert(id.to_string());
}

/// Writes into an [`Ingest`] (for [`Runtime::archive_disk`]).
struct IngestWriter(Ingest);

impl std::io::Write for IngestWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads a blob while hashing it, and fails at its end if it does not hash to `expected`: a
/// restore never renames a disk into place from a damaged archive.
struct VerifyingReader {
    file: std::fs::File,
    hasher: sha2::Sha256,
    expected: String,
}

impl std::io::Read for VerifyingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        let n = self.file.read(buf)?;
        if n == 0 {
            let got = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
            if got != self.expected {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the archive hashes to {got}, not {}", self.expected),
                ));
            }
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl LifecycleService {
    /// A service whose minutes last `minute`.
    pub fn new(store: Arc<dyn Store>, runtime: Arc<Runtime>, content: ContentStore, minute: Duration) -> Self {
        LifecycleService {
            inner: Arc::new(Inner {
                store,
                runtime,
                content,
                minute,
                state: Mutex::new(Memory::default()),
                node: None,
            }),
        }
    }

    /// Confines the sweep and the reconciliation to one node's sandboxes (`None`: all).
    /// Called on the service [`LifecycleService::new`] returned, before it is shared.
    pub fn on_node(mut self, node: Option<String>) -> Self {
        Arc::get_mut(&mut self.inner).expect("configured before the service is cloned").node = node;
        self
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.inner.state.lock().expect("lifecycle memory is never poisoned")
    }

    fn minute_ms(&self) -> Millis {
        Millis::try_from(self.inner.minute.as_millis()).unwrap_or(Millis::MAX).max(1)
    }

    /// Records activity of a sandbox now (`refresh_activity`, interval changes).
    pub fn touch(&self, sandbox_id: &str) {
        touch(&mut self.mem(), sandbox_id, now_millis());
    }

    /// A toolbox request to `sandbox_id` begins: activity now, and the sandbox counts as
    /// active until the guard drops.
    pub fn begin_request(&self, sandbox_id: &str) -> ActivityGuard {
        let mut m = self.mem();
        *m.in_flight.entry(sandbox_id.to_string()).or_default() += 1;
        touch(&mut m, sandbox_id, now_millis());
        ActivityGuard { svc: self.clone(), id: sandbox_id.to_string() }
    }

    /// The last activity known for a sandbox.
    pub fn last_activity(&self, sandbox_id: &str) -> Option<Millis> {
        self.mem().activity.get(sandbox_id).copied()
    }

    /// Writes activity not yet stored.
    pub async fn flush(&self) -> Result<(), LifecycleError> {
        let batch: Vec<(String, Millis)> = {
            let mut m = self.mem();
            let dirty: Vec<String> = m.dirty.drain().collect();
            dirty.into_iter().filter_map(|id| m.activity.get(&id).map(|t| (id, *t))).collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        self.inner.store.record_sandbox_activity(&batch).await.map_err(store_err("record sandbox activity"))
    }

    /// Sweeps every quarter of a lifecycle minute, and flushes activity every minute; runs
    /// forever.
    pub async fn run_sweeper(self, sandboxes: SandboxService) {
        let period = (self.inner.minute / 4).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            if let Err(e) = self.sweep(&sandboxes).await {
                tracing::error!(error = %cove_types::error::chain(&e), "lifecycle sweep failed");
            }
            n += 1;
            if n.is_multiple_of(4)
                && let Err(e) = self.flush().await
            {
                tracing::warn!(error = %cove_types::error::chain(&e), "cannot write sandbox activity");
            }
        }
    }

    /// One sweep: notes state changes as activity, then starts the actions [`decide`] asks
    /// for (each in its own task; a sandbox with an action in progress is skipped).
    pub async fn sweep(&self, sandboxes: &SandboxService) -> Result<(), LifecycleError> {
        if !self.mem().loaded {
            let stored = self.inner.store.sandbox_lifecycles().await.map_err(store_err("read sandbox activity"))?;
            let mut m = self.mem();
            for l in stored {
                let e = m.activity.entry(l.sandbox_id).or_insert(l.last_activity_at);
                *e = (*e).max(l.last_activity_at);
            }
            m.loaded = true;
        }
        let all = self
            .inner
            .store
            .node_sandboxes_for_job(self.inner.node.as_deref())
            .await
            .map_err(store_err("list sandboxes"))?;
        let now = now_millis();
        let mut todo = Vec::new();
        {
            let mut m = self.mem();
            let present: HashSet<&str> = all.iter().map(|r| r.id.as_str()).collect();
            m.activity.retain(|id, _| present.contains(id.as_str()));
            m.seen.retain(|id, _| present.contains(id.as_str()));
            for r in &all {
                if m.seen.get(&r.id).is_none_or(|(st, _)| *st != r.state) {
                    touch(&mut m, &r.id, r.updated_at);
                }
                m.seen.insert(r.id.clone(), (r.state, r.updated_at));
                if m.in_flight.contains_key(&r.id) {
                    touch(&mut m, &r.id, now);
                }
                if m.working.contains(&r.id) {
                    continue;
                }
                let idle = now - m.activity.get(&r.id).copied().unwrap_or(r.updated_at);
                let action = decide(r.state, idle, Intervals::of(r), self.minute_ms());
                if action != Action::Keep {
                    m.working.insert(r.id.clone());
                    todo.push((r.clone(), action));
                }
            }
        }
        for (rec, action) in todo {
            let (this, sandboxes) = (self.clone(), sandboxes.clone());
            tokio::spawn(async move {
                let id = rec.id.clone();
                this.act(&sandboxes, rec, action).await;
                this.mem().working.remove(&id);
            });
        }
        Ok(())
    }

    async fn act(&self, sandboxes: &SandboxService, rec: SandboxRecord, action: Action) {
        let who = Principal { org_id: rec.org_id.clone(), key_id: "lifecycle".into(), admin: false };
        let outcome = match action {
            Action::Keep => return,
            Action::Stop => {
                if self.has_running_commands(&rec.id).await {
                    self.touch(&rec.id);
                    return;
                }
                tracing::info!(sandbox_id = %rec.id, interval = rec.auto_stop, "auto-stop: idle for its interval");
                sandboxes.stop(&who, &rec.id).await.map(drop)
            }
            Action::Archive => {
                tracing::info!(sandbox_id = %rec.id, interval = rec.auto_archive, "auto-archive: stopped for its interval");
                self.archive(rec.clone()).await.map(drop)
            }
            Action::Delete => {
                tracing::info!(sandbox_id = %rec.id, interval = rec.auto_delete, "auto-delete: stopped for its interval");
                sandboxes.delete(&who, &rec.id).await.map(drop)
            }
        };
        if let Err(e) = outcome {
            // A verb the user ran meanwhile wins (the state moved on): not worth a warning.
            let level_info = matches!(e, SandboxError::Busy { .. } | SandboxError::WrongState { .. });
            if level_info {
                tracing::info!(sandbox_id = %rec.id, ?action, error = %e, "lifecycle action skipped");
            } else {
                tracing::warn!(sandbox_id = %rec.id, ?action, error = %cove_types::error::chain(&e), "lifecycle action failed");
            }
        }
    }

    /// Whether the agent reports a session command that has not finished (such a sandbox is
    /// busy, not idle). An agent that does not answer runs nothing we can see.
    async fn has_running_commands(&self, id: &str) -> bool {
        let agent = AgentAddr { socket: self.inner.runtime.socket_path(id), sandbox_id: id.to_string() };
        match tokio::time::timeout(Duration::from_secs(5), crate::toolbox::running_commands(&agent)).await {
            Ok(Ok(n)) => n > 0,
            Ok(Err(e)) => {
                tracing::debug!(sandbox_id = %id, error = %e, "cannot list session commands");
                false
            }
            Err(_) => false,
        }
    }

    /// Archives a stopped sandbox (see the module doc); an archived one is returned as it is.
    /// Runs in its own task, so a caller that goes away does not cut it short.
    pub async fn archive(&self, rec: SandboxRecord) -> Result<SandboxRecord, SandboxError> {
        let this = self.clone();
        tokio::spawn(async move { this.archive_now(rec).await })
            .await
            .unwrap_or_else(|e| panic!("archive task panicked: {e}"))
    }

    async fn archive_now(&self, mut rec: SandboxRecord) -> Result<SandboxRecord, SandboxError> {
        if rec.state == SandboxState::Archived {
            return Ok(rec);
        }
        if rec.state.is_transitional() {
            return Err(SandboxError::Busy { name: rec.name.clone(), state: rec.state });
        }
        if !rec.state.can_archive() {
            return Err(SandboxError::WrongState { verb: "archive", name: rec.name.clone(), state: rec.state });
        }
        let st = &self.inner.store;
        rec.state = SandboxState::Archiving;
        rec.desired_state = "archived".into();
        rec.updated_at = now_millis();
        if !st.update_sandbox_if(&rec, &[SandboxState::Stopped]).await.map_err(store_err("record archiving"))? {
            return Err(SandboxError::Busy { name: rec.name.clone(), state: SandboxState::Stopped });
        }
        let t0 = std::time::Instant::now();
        match self.store_disk(&rec).await {
            Ok(archive) => {
                rec.state = SandboxState::Archived;
                rec.error_reason = None;
                rec.updated_at = now_millis();
                st.update_sandbox_if(&rec, &[SandboxState::Archiving]).await.map_err(store_err("record archived"))?;
                tracing::info!(sandbox_id = %rec.id, digest = %archive.digest, bytes = archive.size,
                    ms = t0.elapsed().as_millis() as u64, "sandbox archived");
                Ok(rec)
            }
            Err(e) => {
                // The disk is still there unless the archive was recorded (store_disk deletes
                // it last): back to stopped with it, and the blob (if any) is garbage.
                let has_disk = self.inner.runtime.has_disk(&rec.id);
                if has_disk {
                    let _ = st.set_sandbox_archive_if(&rec.id, None, SandboxState::Archiving).await;
                }
                rec.state = if has_disk { SandboxState::Stopped } else { SandboxState::Archived };
                rec.desired_state = if has_disk { "stopped".into() } else { "archived".into() };
                rec.updated_at = now_millis();
                st.update_sandbox_if(&rec, &[SandboxState::Archiving])
                    .await
                    .map_err(store_err("record a failed archive"))?;
                Err(e.into())
            }
        }
    }

    /// Compresses the disk into the content store, records it, then deletes the disk.
    async fn store_disk(&self, rec: &SandboxRecord) -> Result<SandboxArchive, LifecycleError> {
        let id = rec.id.clone();
        let content = |source| LifecycleError::Content { id: id.clone(), source: Box::new(source) };
        let ingest = self.inner.content.ingest_sha256().map_err(content)?;
        let (writer, stats) = self
            .inner
            .runtime
            .archive_disk(&rec.id, IngestWriter(ingest))
            .await
            .map_err(|source| LifecycleError::Disk { op: "archive", id: id.clone(), source: Box::new(source) })?;
        let ingest = writer.0;
        let size = i64::try_from(ingest.size()).unwrap_or(i64::MAX);
        let digest = tokio::task::spawn_blocking(move || ingest.commit_sha256())
            .await
            .unwrap_or_else(|e| panic!("commit task panicked: {e}"))
            .map_err(content)?;
        let archive = SandboxArchive { digest: digest.to_string(), size };
        if !self
            .inner
            .store
            .set_sandbox_archive_if(&rec.id, Some(&archive), SandboxState::Archiving)
            .await
            .map_err(store_err("record the disk archive"))?
        {
            // Not archiving any more (deleted meanwhile): keep the disk, the blob is garbage.
            return Err(LifecycleError::NoLongerArchiving { id });
        }
        tracing::debug!(sandbox_id = %rec.id, disk_bytes = stats.disk_bytes, data_bytes = stats.data_bytes,
            archive_bytes = size, "disk archived; deleting the disk image");
        self.inner.runtime.remove_disk(&rec.id).await.map_err(|source| LifecycleError::Disk {
            op: "remove",
            id: id.clone(),
            source: Box::new(source),
        })?;
        Ok(archive)
    }

    /// Restores the disk of an archived sandbox and leaves it `stopped` (what `start` of an
    /// archived sandbox does first); the archive is released after. Runs in its own task.
    pub async fn restore(&self, rec: SandboxRecord) -> Result<SandboxRecord, SandboxError> {
        let this = self.clone();
        tokio::spawn(async move { this.restore_now(rec).await })
            .await
            .unwrap_or_else(|e| panic!("restore task panicked: {e}"))
    }

    async fn restore_now(&self, mut rec: SandboxRecord) -> Result<SandboxRecord, SandboxError> {
        let st = &self.inner.store;
        rec.state = SandboxState::Restoring;
        rec.updated_at = now_millis();
        if !st.update_sandbox_if(&rec, &[SandboxState::Archived]).await.map_err(store_err("record restoring"))? {
            return Err(SandboxError::Busy { name: rec.name.clone(), state: SandboxState::Archived });
        }
        let t0 = std::time::Instant::now();
        let restored = self.load_disk(&rec).await;
        let has_disk = self.inner.runtime.has_disk(&rec.id);
        rec.state = if has_disk { SandboxState::Stopped } else { SandboxState::Archived };
        rec.desired_state = if has_disk { "stopped".into() } else { "archived".into() };
        rec.updated_at = now_millis();
        st.update_sandbox_if(&rec, &[SandboxState::Restoring]).await.map_err(store_err("record a restore"))?;
        restored?;
        if has_disk {
            // The disk is back: the archive is garbage from now on.
            st.set_sandbox_archive_if(&rec.id, None, SandboxState::Stopped)
                .await
                .map_err(store_err("release the disk archive"))?;
            tracing::info!(sandbox_id = %rec.id, ms = t0.elapsed().as_millis() as u64, "sandbox disk restored");
        }
        Ok(rec)
    }

    async fn load_disk(&self, rec: &SandboxRecord) -> Result<(), LifecycleError> {
        if self.inner.runtime.has_disk(&rec.id) {
            return Ok(());
        }
        let archive = self
            .recorded_archive(&rec.id)
            .await?
            .ok_or_else(|| LifecycleError::ArchiveMissing { id: rec.id.clone(), digest: "(none recorded)".into() })?;
        let missing = || LifecycleError::ArchiveMissing { id: rec.id.clone(), digest: archive.digest.clone() };
        let digest: cove_types::Digest = archive.digest.parse().map_err(|_| missing())?;
        let file = std::fs::File::open(self.inner.content.path(&digest)).map_err(|_| missing())?;
        let reader = VerifyingReader { file, hasher: Default::default(), expected: archive.digest.clone() };
        self.inner
            .runtime
            .restore_disk(&rec.id, std::io::BufReader::with_capacity(1 << 20, reader))
            .await
            .map_err(|source| LifecycleError::Disk { op: "restore", id: rec.id.clone(), source: Box::new(source) })?;
        Ok(())
    }

    async fn recorded_archive(&self, id: &str) -> Result<Option<SandboxArchive>, LifecycleError> {
        let all = self.inner.store.sandbox_lifecycles().await.map_err(store_err("read sandbox archives"))?;
        Ok(all.into_iter().find(|l| l.sandbox_id == id).and_then(|l| l.archive))
    }

    /// After a restart: finishes or undoes archives and restores a crash interrupted (see
    /// the module doc). Called before anything else touches sandboxes.
    pub async fn reconcile(&self) -> Result<(), LifecycleError> {
        let st = &self.inner.store;
        let all = st.node_sandboxes_for_job(self.inner.node.as_deref()).await.map_err(store_err("list sandboxes"))?;
        let lifecycles = st.sandbox_lifecycles().await.map_err(store_err("read sandbox archives"))?;
        for mut rec in all {
            let from = rec.state;
            if !matches!(from, SandboxState::Archiving | SandboxState::Restoring) {
                continue;
            }
            let archived = lifecycles.iter().any(|l| l.sandbox_id == rec.id && l.archive.is_some());
            let has_disk = self.inner.runtime.has_disk(&rec.id);
            if has_disk {
                st.set_sandbox_archive_if(&rec.id, None, from).await.map_err(store_err("release the disk archive"))?;
            }
            rec.state = after_crash(has_disk, archived);
            rec.desired_state = if rec.state == SandboxState::Archived { "archived" } else { "stopped" }.into();
            rec.updated_at = now_millis();
            if rec.state == SandboxState::Error {
                rec.error_reason = Some("the sandbox's disk was lost while it was being archived".into());
            }
            st.update_sandbox_if(&rec, &[from]).await.map_err(store_err("reconcile an archive"))?;
            tracing::info!(sandbox_id = %rec.id, from = %from, to = %rec.state, "interrupted archive or restore reconciled");
        }
        Ok(())
    }
}

/// The lifecycle verbs of the API (`archive`, `autostop`/`autoarchive`/`autodelete`,
/// `last-activity`), next to the rest of the lifecycle.
impl SandboxService {
    /// `POST /sandbox/{id}/archive`: archives a stopped sandbox and answers once it is
    /// `archived` (an archived one is answered as it is).
    pub async fn archive(&self, who: &Principal, id_or_name: &str) -> Result<SandboxDto, SandboxError> {
        let rec = self.find_here(who, id_or_name).await?;
        let rec = self.lifecycle().archive(rec).await?;
        Ok(self.dto(&rec))
    }

    /// `POST /sandbox/{id}/{autostop|autoarchive|autodelete}/{minutes}`. A change counts as
    /// activity, so a new, shorter interval runs from now.
    pub async fn set_interval(
        &self,
        who: &Principal,
        id_or_name: &str,
        which: Interval,
        minutes: &str,
    ) -> Result<SandboxDto, SandboxError> {
        let minutes = parse_interval(which, minutes)?;
        let mut rec = self.find(who, id_or_name).await?;
        let from = rec.state;
        match which {
            Interval::Stop => rec.auto_stop = minutes,
            Interval::Archive => rec.auto_archive = minutes,
            Interval::Delete => rec.auto_delete = minutes,
        }
        rec.updated_at = now_millis();
        self.lifecycle().touch(&rec.id);
        if !self
            .store()
            .update_sandbox_if(&rec, &[from])
            .await
            .map_err(|e| LifecycleError::Store { op: "set a lifecycle interval", source: Box::new(e) })?
        {
            return Err(SandboxError::Busy { name: rec.name.clone(), state: from });
        }
        tracing::info!(sandbox_id = %rec.id, ?which, minutes, "lifecycle interval set");
        Ok(self.dto(&rec))
    }

    /// `POST /sandbox/{id}/last-activity` (`refresh_activity`).
    pub async fn refresh_activity(&self, who: &Principal, id_or_name: &str) -> Result<(), SandboxError> {
        let rec = self.find(who, id_or_name).await?;
        self.lifecycle().touch(&rec.id);
        Ok(())
    }
}

/// Where a sandbox a crash left `archiving` or `restoring` goes: its disk, when it has one,
/// is complete (archive deletes it only after recording the archive, restore renames a
/// complete one into place), so it is `stopped`; else the recorded archive has it.
pub fn after_crash(has_disk: bool, archive_recorded: bool) -> SandboxState {
    match (has_disk, archive_recorded) {
        (true, _) => SandboxState::Stopped,
        (false, true) => SandboxState::Archived,
        (false, false) => SandboxState::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Millis = 1000;

    fn iv(stop: i64, archive: i64, delete: i64) -> Intervals {
        Intervals { auto_stop: stop, auto_archive: archive, auto_delete: delete }
    }

    #[test]
    fn a_started_sandbox_stops_once_idle_for_its_interval_and_never_with_zero() {
        use SandboxState::Started;
        assert_eq!(decide(Started, 2 * MIN - 1, iv(2, 60, -1), MIN), Action::Keep);
        assert_eq!(decide(Started, 2 * MIN, iv(2, 60, -1), MIN), Action::Stop);
        assert_eq!(decide(Started, 1_000_000 * MIN, iv(0, 60, -1), MIN), Action::Keep);
    }

    #[test]
    fn a_stopped_sandbox_is_archived_after_its_interval_unless_deleted_first() {
        use SandboxState::Stopped;
        assert_eq!(decide(Stopped, 59 * MIN, iv(15, 60, -1), MIN), Action::Keep);
        assert_eq!(decide(Stopped, 60 * MIN, iv(15, 60, -1), MIN), Action::Archive);
        assert_eq!(decide(Stopped, 60 * MIN, iv(15, 60, 30), MIN), Action::Delete, "delete wins");
        assert_eq!(decide(Stopped, 0, iv(15, 60, 0), MIN), Action::Delete, "0 deletes at stop");
        assert_eq!(decide(Stopped, MAX_AUTO_ARCHIVE * MIN - 1, iv(15, 0, -1), MIN), Action::Keep, "0 is the maximum");
    }

    #[test]
    fn an_archived_sandbox_is_only_ever_deleted_and_transitional_ones_are_left_alone() {
        assert_eq!(decide(SandboxState::Archived, 10 * MIN, iv(1, 1, -1), MIN), Action::Keep);
        assert_eq!(decide(SandboxState::Archived, 10 * MIN, iv(1, 1, 5), MIN), Action::Delete);
        for s in [SandboxState::Archiving, SandboxState::Restoring, SandboxState::Stopping, SandboxState::Error] {
            assert_eq!(decide(s, 1_000 * MIN, iv(1, 1, 0), MIN), Action::Keep, "{s}");
        }
    }

    #[test]
    fn a_crash_in_an_archive_or_restore_leaves_the_disk_or_a_complete_archive_in_charge() {
        // Killed before the archive was recorded: the disk is intact and wins.
        assert_eq!(after_crash(true, false), SandboxState::Stopped);
        // Killed after recording, before or after deleting the disk.
        assert_eq!(after_crash(true, true), SandboxState::Stopped);
        assert_eq!(after_crash(false, true), SandboxState::Archived);
    }

    #[test]
    fn intervals_are_validated_by_name_and_an_archive_interval_of_zero_means_the_maximum() {
        assert_eq!(
            Intervals::for_create(None, None, None).unwrap(),
            iv(DEFAULT_AUTO_STOP, DEFAULT_AUTO_ARCHIVE, DEFAULT_AUTO_DELETE)
        );
        assert_eq!(validate(Interval::Archive, 0).unwrap(), MAX_AUTO_ARCHIVE);
        assert_eq!(validate(Interval::Delete, -1).unwrap(), -1);
        let e = validate(Interval::Delete, -2).unwrap_err().to_string();
        assert!(e.contains("autoDeleteInterval"), "{e}");
        let e = validate(Interval::Stop, -1).unwrap_err().to_string();
        assert!(e.contains("autoStopInterval"), "{e}");
        assert!(validate(Interval::Archive, MAX_AUTO_ARCHIVE + 1).is_err());
        let e = parse_interval(Interval::Stop, "soon").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("autoStopInterval"), "{e}");
    }
}
