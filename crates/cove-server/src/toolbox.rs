//! Talking to a sandbox's agent over its unix socket: readiness probes and the toolbox
//! proxy (HTTP requests and WebSocket upgrades forwarded as they are).
//!
//! The caller's API key is authenticated by the server and never forwarded: the agent
//! trusts whoever can reach its socket, which only the server can.

use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use tokio::net::UnixStream;

/// Where a sandbox's agent listens, and which sandbox it must be.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentAddr {
    /// The unix socket on the host (inside the sandbox's bind-mounted toolbox directory).
    pub socket: PathBuf,
    /// The sandbox id: the peer on the socket must run in that sandbox's cgroup.
    pub sandbox_id: String,
}

/// A failed exchange with an agent.
#[derive(Debug, thiserror::Error)]
pub enum ToolboxError {
    /// The socket does not accept connections.
    #[error("connect to the sandbox agent at {path}")]
    Connect {
        /// Socket path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Whatever answered on the socket is not a process of that sandbox.
    #[error(
        "the socket of sandbox {sandbox_id} is served by a process outside it (pid {pid:?}); refusing to talk to it"
    )]
    ForeignPeer {
        /// The sandbox.
        sandbox_id: String,
        /// The peer's pid, when the kernel told.
        pid: Option<i32>,
    },
    /// The HTTP exchange failed.
    #[error("talk to the sandbox agent")]
    Http(#[source] hyper::Error),
    /// The agent did not answer in time.
    #[error("the sandbox agent did not become ready within {0:?}")]
    NotReady(Duration),
    /// The agent answered something unexpected.
    #[error("the sandbox agent answered {status} to {what}")]
    Status {
        /// The request.
        what: &'static str,
        /// The status.
        status: StatusCode,
    },
}

async fn send(
    agent: &AgentAddr,
    req: Request<Body>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response<Body>, ToolboxError> {
    let socket = &agent.socket;
    let connect_err = |source| ToolboxError::Connect { path: socket.display().to_string(), source };
    // The socket's directory is writable from inside the sandbox, so the path may have been
    // replaced (say, by a symlink to another socket on the host). Refuse anything but a real
    // socket, and after connecting, check that the peer runs in this sandbox's cgroup before
    // a single byte is sent: that closes the window between the check and the connect.
    match std::fs::symlink_metadata(socket) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {}
        Ok(_) => return Err(connect_err(std::io::Error::other("not a unix socket"))),
        Err(source) => return Err(connect_err(source)),
    }
    let stream = UnixStream::connect(socket).await.map_err(connect_err)?;
    let pid = stream.peer_cred().ok().and_then(|c| c.pid());
    let in_sandbox = pid
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/cgroup")).ok())
        .is_some_and(|cg| cg.lines().any(|l| l.ends_with(&format!("/{}", agent.sandbox_id))));
    if !in_sandbox {
        return Err(ToolboxError::ForeignPeer { sandbox_id: agent.sandbox_id.clone(), pid });
    }
    crate::proxy::exchange(stream, req, client_upgrade, "sandbox agent").await.map_err(ToolboxError::Http)
}

/// `GET /version` once; the agent's version when it answers 200.
pub async fn version(agent: &AgentAddr) -> Result<String, ToolboxError> {
    let req =
        Request::get("/version").header(header::HOST, "agent").body(Body::empty()).expect("a static request is valid");
    let resp = send(agent, req, None).await?;
    if !resp.status().is_success() {
        return Err(ToolboxError::Status { what: "GET /version", status: resp.status() });
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024).await.unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    Ok(v.get("version").and_then(|v| v.as_str()).unwrap_or("unknown").to_string())
}

/// How many session commands have not finished in the sandbox (`GET /process/session`:
/// commands without an exit code). The entrypoint is not a session command.
pub async fn running_commands(agent: &AgentAddr) -> Result<usize, ToolboxError> {
    let req = Request::get("/process/session")
        .header(header::HOST, "agent")
        .body(Body::empty())
        .expect("a static request is valid");
    let resp = send(agent, req, None).await?;
    if !resp.status().is_success() {
        return Err(ToolboxError::Status { what: "GET /process/session", status: resp.status() });
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20).await.unwrap_or_default();
    let sessions: Vec<serde_json::Value> = serde_json::from_slice(&bytes).unwrap_or_default();
    Ok(sessions
        .iter()
        .filter_map(|s| s.get("commands").and_then(|c| c.as_array()))
        .flatten()
        .filter(|c| c.get("exitCode").is_none_or(serde_json::Value::is_null))
        .count())
}

/// How long [`wait_ready`] watches for the agent's socket file at a fine grain before it
/// falls back to asking every millisecond.
const SOCKET_WATCH: Duration = Duration::from_millis(50);

/// Polls `GET /version` until the agent answers, up to `timeout`.
pub async fn wait_ready(agent: &AgentAddr, timeout: Duration) -> Result<String, ToolboxError> {
    // The agent binds its socket first thing, a few milliseconds after its `execve`. A
    // `GET /version` attempt costs a connect, a peer check and a request, and the async timer
    // ticks in whole milliseconds (a sleep of 1 ms waits ~2): so first watch for the socket
    // file itself every 100 µs on a blocking thread (a `stat`, ~2 µs), then ask.
    let socket = agent.socket.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let until = std::time::Instant::now() + SOCKET_WATCH.min(timeout);
        while std::time::Instant::now() < until {
            match std::fs::symlink_metadata(&socket) {
                Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => return,
                _ => std::thread::sleep(Duration::from_micros(100)),
            }
        }
    })
    .await;
    // Then every millisecond rather than backing off, which would overshoot by as much as it
    // waited.
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match version(agent).await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                tracing::debug!(error = %e, "agent not ready");
                return Err(ToolboxError::NotReady(timeout));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// Forwards `req` to the agent as `path_and_query`, streaming both bodies; a WebSocket
/// upgrade is bridged byte for byte once both sides have switched protocols.
pub async fn forward(
    agent: &AgentAddr,
    mut req: Request<Body>,
    path_and_query: &str,
) -> Result<Response<Body>, ToolboxError> {
    let wants_upgrade = req.headers().get(header::UPGRADE).is_some();
    let client_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut out = Request::builder().method(parts.method).uri(path_and_query);
    for (name, value) in &parts.headers {
        if name == header::AUTHORIZATION || name == header::HOST {
            continue;
        }
        out = out.header(name, value);
    }
    let out = out.header(header::HOST, "agent").body(body).expect("a request rebuilt from a valid one is valid");
    let mut resp = send(agent, out, client_upgrade).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        resp.headers_mut().entry(header::CONTENT_TYPE).or_insert(HeaderValue::from_static("application/json"));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_served_by_a_process_outside_the_sandbox_gets_no_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("toolbox.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let accepted = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf).await.unwrap();
            buf
        });
        let agent = AgentAddr { socket: path, sandbox_id: "3f1e2d4c-0000-4000-8000-000000000000".into() };
        let err = version(&agent).await.unwrap_err();
        assert!(matches!(err, ToolboxError::ForeignPeer { .. }), "{err}");
        assert!(accepted.await.unwrap().is_empty(), "not a byte was sent to the foreign process");
    }

    #[tokio::test]
    async fn a_symlink_in_place_of_the_socket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("elsewhere.sock");
        let _listener = tokio::net::UnixListener::bind(&real).unwrap();
        let link = dir.path().join("toolbox.sock");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let agent = AgentAddr { socket: link, sandbox_id: "any".into() };
        assert!(matches!(version(&agent).await, Err(ToolboxError::Connect { .. })));
    }
}
