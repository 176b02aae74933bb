//! One HTTP/1 exchange over a stream the caller connected (and checked), shared by the
//! server's two reverse proxies: the toolbox proxy (to an agent's unix socket) and the preview
//! proxy (to a sandbox's TCP port).
//!
//! Contract: the request goes out as given (the caller has already chosen its headers) and
//! bodies stream both ways. When the client asked for an upgrade (`client_upgrade`) and the
//! upstream answers 101, the answer goes back with an empty body and the two upgraded
//! connections are bridged byte for byte in the background until either side closes.
//!
//! An upstream may answer before it has read the whole request body and close its end (an
//! early 4xx, or a server that leaves an epilogue unread). Its answer is what the client gets:
//! once a write to the upstream fails because the upstream closed it (EPIPE, reset), the rest
//! of the request body is read from the client and dropped, so hyper still reads the answer
//! the upstream sent instead of failing the whole exchange with "Broken pipe" (a 503). When the
//! upstream closed without answering, the exchange still fails (the read sees the end).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
    let stream = KeepReadingAfterClose { inner: stream, write_closed: false, upstream: upstream.to_string() };
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

/// A stream whose writes, once the peer has closed its reading end, succeed by dropping the
/// bytes: reads go on, so an answer the peer sent before closing is still read (module doc).
struct KeepReadingAfterClose<S> {
    inner: S,
    write_closed: bool,
    upstream: String,
}

fn peer_closed(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted)
}

impl<S> KeepReadingAfterClose<S> {
    fn closed(&mut self, e: &io::Error) {
        if !self.write_closed {
            tracing::debug!(upstream = %self.upstream, error = %e, "upstream stopped reading the request; \
                dropping the rest of its body and waiting for its answer");
            self.write_closed = true;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for KeepReadingAfterClose<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for KeepReadingAfterClose<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.write_closed {
            return Poll::Ready(Ok(buf.len()));
        }
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Err(e)) if peer_closed(&e) => {
                self.closed(&e);
                Poll::Ready(Ok(buf.len()))
            }
            other => other,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        if self.write_closed {
            return Poll::Ready(Ok(len));
        }
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Err(e)) if peer_closed(&e) => {
                self.closed(&e);
                Poll::Ready(Ok(len))
            }
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_closed {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(Err(e)) if peer_closed(&e) => {
                self.closed(&e);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_closed {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Ready(Err(e)) if peer_closed(&e) => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An upstream that answers 400 before it has read the last `unread` bytes of the body,
    /// then closes (an agent's multipart parser that stops at the closing boundary and leaves
    /// the epilogue, or one that refuses a request up front).
    async fn early_answerer(mut s: tokio::net::UnixStream, body_len: usize, unread: usize) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let mut body = vec![0u8; body_len - unread];
        s.read_exact(&mut body).await.unwrap();
        s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 4\r\n\r\nnope").await.unwrap();
        drop(s);
    }

    /// Sends `pieces` of 64 KiB, then, after a pause, a 2-byte tail.
    async fn upload_through(pieces: usize, unread: usize) -> Result<Response<Body>, hyper::Error> {
        let (client, server) = tokio::net::UnixStream::pair().unwrap();
        let len = pieces * 64 * 1024 + 2;
        let upstream = tokio::spawn(early_answerer(server, len, unread));
        let chunks = futures_util::stream::iter(0..=pieces).then(move |i| async move {
            if i == pieces {
                // The tail comes after the upstream has answered and closed.
                tokio::time::sleep(Duration::from_millis(20)).await;
                return Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"\r\n"));
            }
            Ok(axum::body::Bytes::from(vec![b'x'; 64 * 1024]))
        });
        let req = Request::post("/files/bulk-upload")
            .header("host", "agent")
            .header("content-length", len.to_string())
            .body(Body::from_stream(chunks))
            .unwrap();
        let resp = exchange(client, req, None, "test upstream").await;
        upstream.await.unwrap();
        resp
    }

    #[tokio::test]
    async fn an_answer_sent_before_the_body_was_read_reaches_the_client_instead_of_a_broken_pipe() {
        for (pieces, unread) in [(0, 2), (4, 2), (16, 2), (16, 64 * 1024 + 2)] {
            let resp = upload_through(pieces, unread).await.expect("the upstream's answer, not an error");
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
            let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
            assert_eq!(&body[..], b"nope");
        }
    }

    #[tokio::test]
    async fn an_upstream_that_closes_without_answering_is_still_an_error() {
        let (client, server) = tokio::net::UnixStream::pair().unwrap();
        drop(server);
        let req = Request::post("/x").header("host", "agent").body(Body::from(vec![0u8; 1 << 20])).unwrap();
        assert!(exchange(client, req, None, "test upstream").await.is_err());
    }
}
