//! Startup that keeps the API up: the server listens at once and brings its state in line
//! with what runs in the background.
//!
//! Contract:
//! - [`bind`] binds a listener with `SO_REUSEADDR` and retries an address still in use (a
//!   server killed a moment ago, its sockets not yet released) for [`BIND_RETRY`] before it
//!   gives up with an error naming the address.
//! - [`Gate`] is closed while sandboxes are reconciled after a restart (adopting running
//!   ones, marking dead and interrupted ones). [`wait_reconciled`] lets `/api/health` through
//!   at once; every other request waits for the gate (at most [`GATE_WAIT`], then 503), so
//!   no request sees a sandbox in the state the last process left it. A failed reconciliation
//!   answers 503 with its reason.
//! - [`run`] does the background work in order: archives, sandboxes (gate opens), then
//!   snapshots' resume and garbage collection, then the periodic sweepers.
//!
//! Test hook: `COVE_TEST_RECONCILE_DELAY_MS` delays reconciliation by that many milliseconds
//! (tests that check the API answers while it runs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cove_types::ErrorKind;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use crate::api::ApiError;
use crate::state::AppState;

/// How long binding retries an address in use.
pub const BIND_RETRY: Duration = Duration::from_secs(5);
/// How long a request waits for reconciliation before it is answered 503.
pub const GATE_WAIT: Duration = Duration::from_secs(120);

/// Binds `addr` for listening with `SO_REUSEADDR`, retrying while it is in use.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    bind_within(addr, BIND_RETRY).await
}

async fn bind_within(addr: SocketAddr, limit: Duration) -> std::io::Result<TcpListener> {
    let t0 = Instant::now();
    let mut warned = false;
    loop {
        match try_bind(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if t0.elapsed() >= limit {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!(
                            "{addr} is still in use after {:.1} s of retrying: another process listens there \
                             (a cove server that is still exiting, or another service); stop it or pick \
                             another address ({e})",
                            limit.as_secs_f64()
                        ),
                    ));
                }
                if !warned {
                    tracing::warn!(%addr, error = %e, "address in use; retrying while a previous server exits");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => {
                if warned {
                    tracing::info!(%addr, waited_ms = t0.elapsed().as_millis() as u64, "address free again");
                }
                return r;
            }
        }
    }
}

fn try_bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // Connections of a killed server linger (TIME_WAIT, FIN_WAIT2) on the port; they must not
    // keep a new server from listening there.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

#[derive(Debug, Clone)]
enum Phase {
    Reconciling,
    Ready,
    Failed(String),
}

/// Why a request could not pass the gate.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// Reconciliation is still running after [`GATE_WAIT`].
    #[error("the server is still reconciling its sandboxes after a restart ({waited_s} s so far); retry shortly")]
    StillReconciling {
        /// Seconds waited.
        waited_s: u64,
    },
    /// Reconciliation failed; sandboxes' records cannot be trusted.
    #[error("the server could not reconcile its sandboxes at startup (see its log; restart it to retry): {0}")]
    Failed(String),
}

/// Open once sandboxes are reconciled (see the module doc).
#[derive(Debug, Clone)]
pub struct Gate {
    tx: Arc<watch::Sender<Phase>>,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Gate { tx: Arc::new(watch::channel(Phase::Reconciling).0) }
    }

    /// Lets every request through.
    pub fn open(&self) {
        self.tx.send_replace(Phase::Ready);
    }

    /// Answers every waiting and later request with `reason`.
    pub fn fail(&self, reason: String) {
        self.tx.send_replace(Phase::Failed(reason));
    }

    /// Whether reconciliation is done.
    pub fn is_open(&self) -> bool {
        matches!(*self.tx.borrow(), Phase::Ready)
    }

    /// Waits until the gate opens, at most `limit`.
    pub async fn wait(&self, limit: Duration) -> Result<(), GateError> {
        let mut rx = self.tx.subscribe();
        let done = tokio::time::timeout(limit, rx.wait_for(|p| !matches!(p, Phase::Reconciling))).await;
        match done {
            Err(_) => Err(GateError::StillReconciling { waited_s: limit.as_secs() }),
            Ok(Err(_)) => Err(GateError::Failed("the startup task ended".into())),
            Ok(Ok(p)) => match &*p {
                Phase::Failed(reason) => Err(GateError::Failed(reason.clone())),
                _ => Ok(()),
            },
        }
    }
}

/// Middleware: `/api/health` passes at once, every other request waits for the gate.
pub async fn wait_reconciled(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/api/health" || state.startup.is_open() {
        return next.run(req).await;
    }
    match state.startup.wait(GATE_WAIT).await {
        Ok(()) => next.run(req).await,
        Err(e) => {
            let mut err = ApiError::new(ErrorKind::Unavailable, e.to_string());
            err.path = req.uri().path().to_string();
            err.into_response()
        }
    }
}

/// What the background startup works on.
pub(crate) struct Work {
    pub gate: Gate,
    pub lifecycle: crate::service::lifecycle::LifecycleService,
    pub sandboxes: crate::service::sandboxes::SandboxService,
    pub snapshots: crate::service::snapshots::SnapshotService,
    pub inactive_after: Duration,
    pub sweep_interval: Duration,
    pub monitor_interval: Duration,
    pub pool_sweep: Duration,
}

/// Reconciles, resumes and collects garbage, then starts the sweepers (see the module doc).
pub(crate) async fn run(w: Work) {
    let t0 = Instant::now();
    if let Some(ms) = std::env::var("COVE_TEST_RECONCILE_DELAY_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
        tracing::warn!(ms, "COVE_TEST_RECONCILE_DELAY_MS: delaying reconciliation (tests only)");
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    // Archives and restores a crash interrupted first: the disk or the archive decides.
    let reconciled = match w.lifecycle.reconcile().await {
        Err(e) => Err(cove_types::error::chain(&e)),
        // Sandboxes before snapshots: their images must count as referenced before garbage
        // is collected.
        Ok(()) => w.sandboxes.reconcile().await.map_err(|e| cove_types::error::chain(&e)),
    };
    match reconciled {
        Ok(()) => {
            tracing::info!(ms = t0.elapsed().as_millis() as u64, "sandboxes reconciled; serving every route");
            w.gate.open();
        }
        Err(reason) => {
            tracing::error!(error = %reason, "reconciling sandboxes failed; sandbox routes answer 503");
            w.gate.fail(reason);
            return;
        }
    }
    if let Err(e) = w.snapshots.resume().await {
        tracing::error!(error = %cove_types::error::chain(&e), "resuming unfinished pulls and builds failed");
    }
    tracing::info!(ms = t0.elapsed().as_millis() as u64, "startup work finished");
    tokio::spawn(w.snapshots.clone().run_inactivity_sweeper(w.inactive_after, w.sweep_interval));
    tokio::spawn(w.sandboxes.clone().run_monitor(w.monitor_interval));
    tokio::spawn(w.lifecycle.run_sweeper(w.sandboxes.clone()));
    tokio::spawn(w.sandboxes.clone().run_pool_sweeper(w.pool_sweep));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_listener_binds_a_port_whose_first_one_is_closing() {
        let first = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = first.local_addr().unwrap();
        let closer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(first);
        });
        let t0 = Instant::now();
        let second = bind(addr).await.expect("bound once the first listener closed");
        assert_eq!(second.local_addr().unwrap(), addr);
        assert!(t0.elapsed() >= Duration::from_millis(250), "it waited for the port");
        closer.await.unwrap();
    }

    #[tokio::test]
    async fn a_port_held_past_the_retry_time_is_an_error_naming_the_address() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let e = bind_within(addr, Duration::from_millis(300)).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains(&addr.to_string()) && e.to_string().contains("still in use"), "{e}");
    }

    #[tokio::test]
    async fn requests_wait_for_the_gate_and_hear_why_it_failed() {
        let gate = Gate::new();
        assert!(matches!(gate.wait(Duration::from_millis(50)).await, Err(GateError::StillReconciling { .. })));
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.wait(Duration::from_secs(5)).await }
        });
        gate.open();
        waiter.await.unwrap().unwrap();
        let failed = Gate::new();
        failed.fail("list sandboxes: disk I/O error".into());
        let e = failed.wait(Duration::from_secs(1)).await.unwrap_err();
        assert!(e.to_string().contains("disk I/O error"), "{e}");
    }
}
