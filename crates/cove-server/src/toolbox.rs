//! Talking to a sandbox's agent over its unix socket: readiness probes and the toolbox
//! proxy (HTTP requests and WebSocket upgrades forwarded as they are).
//!
//! The caller's API key is authenticated by the server and never forwarded: the agent
//! trusts whoever can reach its socket, which only the server can.

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

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

async fn send(socket: &Path, req: Request<Body>) -> Result<Response<hyper::body::Incoming>, ToolboxError> {
    // The socket's directory is writable from inside the sandbox: refuse anything but a real
    // socket, so a sandbox cannot point the server at another socket on the host with a
    // symlink. (A swap between this check and the connect remains possible; passing the
    // agent a listening socket created outside the sandbox would close that window.)
    match std::fs::symlink_metadata(socket) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {}
        Ok(_) => {
            return Err(ToolboxError::Connect {
                path: socket.display().to_string(),
                source: std::io::Error::other("not a unix socket (replaced from inside the sandbox?)"),
            });
        }
        Err(source) => return Err(ToolboxError::Connect { path: socket.display().to_string(), source }),
    }
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ToolboxError::Connect { path: socket.display().to_string(), source })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(ToolboxError::Http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "agent connection ended with an error");
        }
    });
    sender.send_request(req).await.map_err(ToolboxError::Http)
}

/// `GET /version` once; the agent's version when it answers 200.
pub async fn version(socket: &Path) -> Result<String, ToolboxError> {
    let req =
        Request::get("/version").header(header::HOST, "agent").body(Body::empty()).expect("a static request is valid");
    let resp = send(socket, req).await?;
    if !resp.status().is_success() {
        return Err(ToolboxError::Status { what: "GET /version", status: resp.status() });
    }
    let bytes = axum::body::to_bytes(Body::new(resp.into_body()), 64 * 1024).await.unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    Ok(v.get("version").and_then(|v| v.as_str()).unwrap_or("unknown").to_string())
}

/// Polls `GET /version` until the agent answers, up to `timeout`.
pub async fn wait_ready(socket: &Path, timeout: Duration) -> Result<String, ToolboxError> {
    // The agent is usually up within a few milliseconds of `runc run` returning: poll every
    // millisecond rather than backing off, which would overshoot by as much as it waited.
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match version(socket).await {
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
    socket: &Path,
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
    let mut resp = send(socket, out).await?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let agent_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, agent_upgrade) {
                Ok((client, agent)) => {
                    let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(agent)).await;
                }
                Err(e) => tracing::debug!(error = %e, "websocket upgrade through the toolbox proxy failed"),
            }
        });
        let mut r = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for (name, value) in resp.headers() {
            r = r.header(name, value);
        }
        return Ok(r.body(Body::empty()).expect("a response rebuilt from a valid one is valid"));
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.entry(header::CONTENT_TYPE).or_insert(HeaderValue::from_static("application/json"));
    Ok(Response::from_parts(parts, Body::new(body)))
}
