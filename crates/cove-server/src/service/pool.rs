//! The warm pool: sandboxes prepared ahead of demand ([`Runtime::prepare`]: disk, overlay,
//! network, cgroup and namespaces ready, the agent held before `execve`) for the snapshot and
//! spec combinations that were asked for recently. A create that finds one costs a
//! `runc start` instead of a full `runc run`.
//!
//! Pooled sandboxes have no database record until they are taken; a restart removes them
//! (reconciliation destroys bundles without a record). Their images are pinned against
//! garbage collection while they wait. Those of a deleted snapshot are destroyed as soon as
//! the deletion is announced, and garbage collection then frees the image.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cove_runtime::{Runtime, SandboxSpec};

use crate::service::snapshots::SnapshotService;

/// What a pooled sandbox must match to serve a request: the snapshot and the spec without
/// its id (see [`spec_for`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The snapshot the sandbox starts from.
    pub snapshot_id: String,
    /// The image digest (pinned while entries wait).
    pub image_digest: String,
    /// The spec with an empty id and the environment every sandbox of it gets.
    pub template: SandboxSpec,
}

/// The spec of sandbox `id` made from `template`: the id and its `DAYTONA_SANDBOX_ID` added.
pub fn spec_for(template: &SandboxSpec, id: &str) -> SandboxSpec {
    let mut spec = template.clone();
    spec.id = id.to_string();
    spec.env.push(format!("DAYTONA_SANDBOX_ID={id}"));
    spec
}

#[derive(Debug)]
struct Slot {
    ready: Vec<String>,
    filling: usize,
    last_used: Instant,
}

/// Prepared sandboxes per [`PoolKey`].
#[derive(Debug)]
pub struct WarmPool {
    runtime: Arc<Runtime>,
    snapshots: SnapshotService,
    /// Prepared sandboxes kept per key; 0 disables the pool.
    size: usize,
    /// Keys not asked for during this long are emptied.
    idle: Duration,
    slots: Mutex<HashMap<PoolKey, Slot>>,
    /// Set by [`WarmPool::drain`]: nothing new is prepared.
    closed: AtomicBool,
    /// Prepares running now (drain waits for them).
    inflight: AtomicUsize,
}

impl WarmPool {
    /// A pool keeping `size` sandboxes per key in use during the last `idle`.
    pub fn new(runtime: Arc<Runtime>, snapshots: SnapshotService, size: usize, idle: Duration) -> Arc<Self> {
        Arc::new(WarmPool {
            runtime,
            snapshots,
            size,
            idle,
            slots: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Slot>> {
        self.slots.lock().expect("pool map is never poisoned")
    }

    /// Takes a prepared sandbox for `key`, if one is ready, and marks the key as in use (a
    /// later [`WarmPool::refill`] keeps it stocked).
    pub fn take(&self, key: &PoolKey) -> Option<String> {
        if self.size == 0 {
            return None;
        }
        let mut slots = self.slots();
        let slot = slots.entry(key.clone()).or_insert_with(|| Slot {
            ready: Vec::new(),
            filling: 0,
            last_used: Instant::now(),
        });
        slot.last_used = Instant::now();
        let id = slot.ready.pop()?;
        drop(slots);
        self.snapshots.unpin_image(&key.image_digest);
        Some(id)
    }

    /// Returns a taken sandbox that was not used (its record could not be written).
    pub fn give_back(&self, key: &PoolKey, id: String) {
        let mut slots = self.slots();
        if let Some(slot) = slots.get_mut(key) {
            self.snapshots.pin_image(&key.image_digest);
            slot.ready.push(id);
            return;
        }
        drop(slots);
        self.discard(id);
    }

    /// Prepares sandboxes for `key` in the background until it has `size` of them.
    pub fn refill(self: &Arc<Self>, key: &PoolKey) {
        if self.size == 0 {
            return;
        }
        let this = self.clone();
        let key = key.clone();
        tokio::spawn(async move {
            loop {
                {
                    let mut slots = this.slots();
                    let Some(slot) = slots.get_mut(&key) else { return };
                    if this.closed.load(Ordering::SeqCst) || slot.ready.len() + slot.filling >= this.size {
                        return;
                    }
                    slot.filling += 1;
                    this.inflight.fetch_add(1, Ordering::SeqCst);
                }
                let id = uuid::Uuid::new_v4().to_string();
                this.snapshots.pin_image(&key.image_digest);
                let result = this.runtime.prepare(&spec_for(&key.template, &id)).await;
                let (keep, orphaned) = {
                    let mut slots = this.slots();
                    let closed = this.closed.load(Ordering::SeqCst);
                    match (slots.get_mut(&key), &result) {
                        (Some(slot), Ok(())) if !closed => {
                            slot.filling -= 1;
                            slot.ready.push(id.clone());
                            (true, false)
                        }
                        (slot, _) => {
                            let orphaned = slot.is_none() && !closed;
                            if let Some(slot) = slot {
                                slot.filling -= 1;
                            }
                            (false, orphaned)
                        }
                    }
                };
                if !keep {
                    this.snapshots.unpin_image(&key.image_digest);
                    if result.is_ok()
                        && let Err(e) = this.runtime.destroy(&id).await
                    {
                        tracing::warn!(sandbox_id = %id, error = %cove_types::error::chain(&e), "cannot remove a warm sandbox");
                    }
                    if orphaned {
                        // The key went (idle, or its snapshot deleted) while this one was
                        // prepared: its pin may have been the image's last.
                        this.snapshots.collect_garbage().await;
                    }
                }
                this.inflight.fetch_sub(1, Ordering::SeqCst);
                match result {
                    Ok(()) if keep => {
                        tracing::debug!(sandbox_id = %id, snapshot_id = %key.snapshot_id, "warm sandbox ready")
                    }
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(
                            snapshot_id = %key.snapshot_id,
                            error = %cove_types::error::chain(&e),
                            "cannot prepare a warm sandbox; creates of this snapshot start cold"
                        );
                        return;
                    }
                }
            }
        });
    }

    fn discard(&self, id: String) {
        let runtime = self.runtime.clone();
        tokio::spawn(async move {
            if let Err(e) = runtime.destroy(&id).await {
                tracing::warn!(sandbox_id = %id, error = %cove_types::error::chain(&e), "cannot remove a warm sandbox");
            }
        });
    }

    fn remove_where(&self, pred: impl Fn(&PoolKey, &Slot) -> bool) -> Vec<String> {
        let mut removed = Vec::new();
        self.slots().retain(|k, slot| {
            if !pred(k, slot) {
                return true;
            }
            for id in slot.ready.drain(..) {
                self.snapshots.unpin_image(&k.image_digest);
                removed.push(id);
            }
            false
        });
        removed
    }

    /// Destroys the sandboxes of keys unused for the idle period, and those of deleted
    /// snapshots at once; runs forever.
    pub async fn run_sweeper(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        let mut deleted = self.snapshots.deleted_snapshots();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let idle = self.idle;
                    let ids = self.remove_where(|_, slot| slot.last_used.elapsed() >= idle);
                    self.destroy_all(ids, "removing an idle warm sandbox").await;
                }
                r = deleted.recv() => match r {
                    Ok(snapshot_id) => self.forget_snapshot(&snapshot_id).await,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "missed snapshot deletions; their warm sandboxes go when idle");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// Destroys the prepared sandboxes of a deleted snapshot and stops keeping its key, then
    /// collects garbage (their pins no longer keep the image).
    pub async fn forget_snapshot(&self, snapshot_id: &str) {
        let ids = self.remove_where(|k, _| k.snapshot_id == snapshot_id);
        if ids.is_empty() {
            return;
        }
        tracing::info!(snapshot_id, sandboxes = ids.len(), "removing the warm sandboxes of a deleted snapshot");
        self.destroy_all(ids, "removing a warm sandbox of a deleted snapshot").await;
        self.snapshots.collect_garbage().await;
    }

    async fn destroy_all(&self, ids: Vec<String>, why: &'static str) {
        for id in ids {
            tracing::debug!(sandbox_id = %id, "{why}");
            if let Err(e) = self.runtime.destroy(&id).await {
                tracing::warn!(sandbox_id = %id, error = %cove_types::error::chain(&e), "cannot remove a warm sandbox");
            }
        }
    }

    /// Stops preparing and destroys every waiting sandbox, after the prepares under way (at
    /// shutdown).
    pub async fn drain(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // Preparations in flight remove their sandbox themselves once they see the pool
        // closed; one cut short by the exit is removed at the next start (a bundle without
        // a record), so this waits only briefly.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.inflight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let removals = self.remove_where(|_, _| true).into_iter().map(|id| async move {
            if let Err(e) = self.runtime.destroy(&id).await {
                tracing::warn!(sandbox_id = %id, error = %cove_types::error::chain(&e), "cannot remove a warm sandbox");
            }
        });
        futures_util::future::join_all(removals).await;
    }

    /// Sandboxes ready per snapshot id (diagnostics and tests).
    pub fn ready(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for (k, slot) in self.slots().iter() {
            *out.entry(k.snapshot_id.clone()).or_default() += slot.ready.len();
        }
        out
    }
}
