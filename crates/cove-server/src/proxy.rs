//! One HTTP/1 exchange over a stream the caller connected (and checked), shared by the
//! server's two reverse proxies: the toolbox proxy (to an agent's unix socket) and the preview
//! proxy (to a sandbox's TCP port).
//!
//! Contract: the request goes out as given (the caller has already chosen its headers) and
//! bodies stream both ways. When the client asked for an upgrade (`client_upgrade`) and the
//! upstream answers 101, the answer goes back with an empty body and the two upgraded
//! connections are bridged byte for byte in the background until either side closes.

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Sends `req` over `stream`; `upstream` names the peer in the logs.
pub async fn exchange<S>(
    stream: S,
    req: Request<Body>,
    client_upgrade: Option<OnUpgrade>,
    upstream: &str,
) -> Result<Response<Body>, hyper::Error>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let label = upstream.to_string();
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(upstream = %label, error = %e, "proxied connection ended with an error");
        }
    });
    let mut resp = sender.send_request(req).await?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let label = upstream.to_string();
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => {
                    let r = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(upstream)).await;
                    tracing::debug!(upstream = %label, result = ?r, "upgraded connection closed");
                }
                Err(e) => tracing::debug!(upstream = %label, error = %e, "upgrade through the proxy failed"),
            }
        });
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    Ok(resp.map(Body::new))
}
