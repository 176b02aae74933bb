//! `POST /files/bulk-download`: many files in one streamed `multipart/form-data` answer, the
//! shape both official SDKs parse (`download_file(s)`, `download_file_stream`, `downloadFile(s)`,
//! `downloadFileStream`).
//!
//! Contract:
//! - Body `{"paths": [...]}` (unknown fields, an empty list or a non-JSON body: 400 before anything
//!   is streamed). Paths resolve like every file route (absolute, or relative to the workdir); a
//!   path given twice is sent once, because the SDKs key their results by path.
//! - The answer is 200 with `Content-Type: multipart/form-data; boundary=<random>`, one part per
//!   path in request order. A file is a part named `file` with `filename` = the path exactly as
//!   requested (`filename*=UTF-8''…` as well when it is not plain printable ASCII), its
//!   `Content-Length`, and its bytes. A path that cannot be served is a part named `error` with
//!   the same `filename` and a JSON body `{message, statusCode, code, source}` (`code` one of
//!   `FILE_NOT_FOUND`, `FILE_ACCESS_DENIED`, `INVALID_FILE_PATH`, `FILE_READ_FAILED`), so one
//!   missing file never fails the others.
//! - Streaming: files are read chunk by chunk as the client takes them (hyper's back-pressure),
//!   never whole, so memory stays bounded whatever the sizes. Files are opened with `O_NONBLOCK`
//!   and must be regular files, so a FIFO planted by another process cannot hang the agent.
//! - A file that shrinks while it is sent cannot be turned into an error part any more (its
//!   headers are out): the response is aborted, and the SDKs report a truncated multipart body.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use axum::body::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::error::ErrorKind;
use crate::process::resolve;

/// Bytes read from a file per chunk of the answer.
const CHUNK: usize = 128 * 1024;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadRequest {
    /// Files to send, absolute or relative to the workdir.
    pub paths: Vec<String>,
}

/// A request that cannot be answered at all.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// `paths` is empty.
    #[error("paths must name at least one file")]
    NoPaths,
}

impl DownloadError {
    /// Class of the failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DownloadError::NoPaths => ErrorKind::InvalidArgument,
        }
    }
}

/// Why one file of the request is sent as an `error` part.
#[derive(Debug, thiserror::Error)]
enum PartError {
    #[error("path is empty")]
    Empty,
    #[error("open {path}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} is a directory")]
    Directory { path: String },
    #[error("{path} is not a regular file")]
    NotRegular { path: String },
}

/// The JSON body of an `error` part, as the SDKs read it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PartErrorBody<'a> {
    message: &'a str,
    status_code: u16,
    code: &'static str,
    source: &'static str,
}

impl PartError {
    fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            PartError::Open { source, .. } => match source.kind() {
                io::ErrorKind::NotFound => (404, "FILE_NOT_FOUND"),
                io::ErrorKind::PermissionDenied => (403, "FILE_ACCESS_DENIED"),
                io::ErrorKind::NotADirectory | io::ErrorKind::InvalidInput | io::ErrorKind::InvalidFilename => {
                    (400, "INVALID_FILE_PATH")
                }
                _ => (500, "FILE_READ_FAILED"),
            },
            PartError::Empty | PartError::Directory { .. } | PartError::NotRegular { .. } => (400, "INVALID_FILE_PATH"),
        }
    }
}

/// The streamed answer: its boundary and the body's chunks.
pub struct Download {
    boundary: String,
    workdir: std::path::PathBuf,
    paths: std::vec::IntoIter<String>,
    current: Option<Current>,
    finished: bool,
}

struct Current {
    file: tokio::fs::File,
    remaining: u64,
    shown: String,
}

/// Checks `req` and prepares the answer; nothing is opened yet.
pub fn start(workdir: &Path, req: DownloadRequest) -> Result<Download, DownloadError> {
    if req.paths.is_empty() {
        return Err(DownloadError::NoPaths);
    }
    let mut seen = HashSet::new();
    let paths: Vec<String> = req.paths.into_iter().filter(|p| seen.insert(p.clone())).collect();
    Ok(Download {
        boundary: format!("cove-{}", crate::sys::new_uuid().simple()),
        workdir: workdir.to_path_buf(),
        paths: paths.into_iter(),
        current: None,
        finished: false,
    })
}

impl Download {
    /// The `Content-Type` of the answer.
    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    /// The body as a stream of chunks.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send + 'static {
        futures_util::stream::unfold(self, |mut d| async move {
            let item = d.next_chunk().await?;
            Some((item, d))
        })
    }

    /// The next piece of the body, `None` after the closing delimiter.
    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        if let Some(cur) = &mut self.current {
            if cur.remaining == 0 {
                self.current = None;
                return Some(Ok(Bytes::from_static(b"\r\n")));
            }
            let want = usize::try_from(cur.remaining).map_or(CHUNK, |r| r.min(CHUNK));
            let mut buf = vec![0u8; want];
            return Some(match cur.file.read(&mut buf).await {
                Ok(0) => {
                    tracing::warn!(path = %cur.shown, missing = cur.remaining, "file shrank while it was downloaded");
                    let msg = format!("{} shrank by {} bytes while it was sent", cur.shown, cur.remaining);
                    self.current = None;
                    self.finished = true;
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg))
                }
                Ok(n) => {
                    buf.truncate(n);
                    cur.remaining -= n as u64;
                    Ok(Bytes::from(buf))
                }
                Err(e) => {
                    tracing::warn!(path = %cur.shown, error = %e, "reading a downloaded file failed");
                    self.current = None;
                    self.finished = true;
                    Err(e)
                }
            });
        }
        if self.finished {
            return None;
        }
        let Some(requested) = self.paths.next() else {
            self.finished = true;
            return Some(Ok(Bytes::from(format!("--{}--\r\n", self.boundary))));
        };
        Some(Ok(match open(&self.workdir, &requested).await {
            Ok((file, size, shown)) => {
                let head = self.part_head("file", &requested, "application/octet-stream", Some(size));
                self.current = Some(Current { file, remaining: size, shown });
                Bytes::from(head)
            }
            Err(e) => {
                let (status_code, code) = e.status_and_code();
                let message = crate::error::chain(&e);
                tracing::debug!(path = %requested, error = %message, "download part is an error");
                let body = PartErrorBody { message: &message, status_code, code, source: crate::error::SOURCE };
                let json = serde_json::to_vec(&body).unwrap_or_default();
                let mut part = self.part_head("error", &requested, "application/json", Some(json.len() as u64));
                part.extend_from_slice(&json);
                part.extend_from_slice(b"\r\n");
                Bytes::from(part)
            }
        }))
    }

    fn part_head(&self, name: &str, requested: &str, content_type: &str, len: Option<u64>) -> Vec<u8> {
        let mut head = format!(
            "--{}\r\nContent-Disposition: form-data; name=\"{name}\"; {}\r\nContent-Type: {content_type}\r\n",
            self.boundary,
            filename_params(requested)
        );
        if let Some(len) = len {
            head.push_str(&format!("Content-Length: {len}\r\n"));
        }
        head.push_str("\r\n");
        head.into_bytes()
    }
}

/// `filename="…"` (quoted-pair escapes), plus `filename*=UTF-8''…` (RFC 5987) when the path is
/// not printable ASCII; both SDKs prefer `filename*`, and the plain one is then an ASCII stand-in.
fn filename_params(path: &str) -> String {
    let plain = path.bytes().all(|b| (0x20..0x7f).contains(&b));
    let fallback: String = path
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '_' })
        .flat_map(|c| if c == '"' || c == '\\' { vec!['\\', c] } else { vec![c] })
        .collect();
    if plain {
        return format!("filename=\"{fallback}\"");
    }
    let mut encoded = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

/// Opens `requested` for reading without blocking on FIFOs; only regular files are sent.
async fn open(workdir: &Path, requested: &str) -> Result<(tokio::fs::File, u64, String), PartError> {
    if requested.is_empty() {
        return Err(PartError::Empty);
    }
    let p = resolve(workdir, Some(requested));
    let shown = p.display().to_string();
    let opened = {
        let p = p.clone();
        tokio::task::spawn_blocking(move || {
            let file =
                std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(&p)?;
            let meta = file.metadata()?;
            Ok::<_, io::Error>((file, meta))
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
    };
    let (file, meta) = opened.map_err(|source| PartError::Open { path: shown.clone(), source })?;
    if meta.is_dir() {
        return Err(PartError::Directory { path: shown });
    }
    if !meta.is_file() {
        return Err(PartError::NotRegular { path: shown });
    }
    Ok((tokio::fs::File::from_std(file), meta.len(), shown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_are_quoted_and_others_get_an_rfc5987_filename_too() {
        assert_eq!(filename_params("/root/a b.txt"), "filename=\"/root/a b.txt\"");
        assert_eq!(filename_params("q\"uo\\te"), "filename=\"q\\\"uo\\\\te\"");
        assert_eq!(filename_params("dé\n"), "filename=\"d__\"; filename*=UTF-8''d%C3%A9%0A");
    }

    /// Splits a multipart body into (headers, body) per part.
    fn parts(body: &[u8], boundary: &str) -> Vec<(String, Vec<u8>)> {
        let delim = format!("\r\n--{boundary}");
        let first = format!("--{boundary}\r\n");
        assert!(body.starts_with(first.as_bytes()), "starts with the first boundary");
        assert!(body.ends_with(format!("--{boundary}--\r\n").as_bytes()), "ends with the closing delimiter");
        let mut rest = &body[first.len()..];
        let mut out = Vec::new();
        loop {
            let head_end = memchr::memmem::find(rest, b"\r\n\r\n").expect("part headers end");
            let head = String::from_utf8(rest[..head_end].to_vec()).expect("ascii headers");
            rest = &rest[head_end + 4..];
            let end = memchr::memmem::find(rest, delim.as_bytes()).expect("part ends");
            out.push((head, rest[..end].to_vec()));
            rest = &rest[end + delim.len()..];
            if rest.starts_with(b"--") {
                return out;
            }
            rest = &rest[2..];
        }
    }

    #[tokio::test]
    async fn several_files_stream_as_parts_and_a_missing_one_becomes_an_error_part() {
        use axum::http::Request;
        use tower::ServiceExt;

        let dir = tempfile::tempdir().expect("tempdir");
        let config = crate::server::test_config(dir.path());
        let work = config.workdir.clone();
        std::fs::create_dir(work.join("sub")).expect("mkdir");
        let big: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(|i: u32| (i % 251) as u8).collect();
        std::fs::write(work.join("big.bin"), &big).expect("write");
        std::fs::write(work.join("sub/a \"q\".txt"), "small").expect("write");
        std::fs::write(work.join("empty"), "").expect("write");
        let app = crate::server::app(crate::server::AppState::new(config));
        let body =
            serde_json::json!({"paths": ["big.bin", "missing.txt", "sub/a \"q\".txt", "sub", "big.bin", "empty"]});
        let req =
            Request::post("/files/bulk-download").body(axum::body::Body::from(body.to_string())).expect("request");
        let resp = app.clone().oneshot(req).await.expect("infallible");
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()[axum::http::header::CONTENT_TYPE].to_str().expect("ascii").to_string();
        let boundary = ct.strip_prefix("multipart/form-data; boundary=").expect("multipart").to_string();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
        let p = parts(&bytes, &boundary);
        assert_eq!(p.len(), 5, "one part per distinct path");
        assert!(p[0].0.contains("name=\"file\"; filename=\"big.bin\""), "{}", p[0].0);
        assert!(p[0].0.contains(&format!("Content-Length: {}", big.len())), "{}", p[0].0);
        assert!(p[0].1 == big, "the big file arrives intact");
        assert!(p[1].0.contains("name=\"error\"; filename=\"missing.txt\""), "{}", p[1].0);
        let err: serde_json::Value = serde_json::from_slice(&p[1].1).expect("json error");
        assert_eq!((err["statusCode"].as_u64(), err["code"].as_str()), (Some(404), Some("FILE_NOT_FOUND")));
        assert!(err["message"].as_str().is_some_and(|m| m.contains("missing.txt")), "{err}");
        assert!(p[2].0.contains("filename=\"sub/a \\\"q\\\".txt\""), "{}", p[2].0);
        assert_eq!(p[2].1, b"small");
        let err: serde_json::Value = serde_json::from_slice(&p[3].1).expect("json error");
        assert_eq!((err["statusCode"].as_u64(), err["code"].as_str()), (Some(400), Some("INVALID_FILE_PATH")));
        assert!(p[4].0.contains("filename=\"empty\"") && p[4].1.is_empty());

        for bad in [r#"{"paths": []}"#, r#"{"paths": ["a"], "extra": 1}"#, "nope"] {
            let req = Request::post("/files/bulk-download").body(axum::body::Body::from(bad)).expect("request");
            let resp = app.clone().oneshot(req).await.expect("infallible");
            assert_eq!(resp.status(), 400, "{bad}");
        }
    }

    #[test]
    fn an_empty_path_list_is_refused() {
        let e = start(Path::new("/"), DownloadRequest { paths: vec![] }).err().expect("refused");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
}
