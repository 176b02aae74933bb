//! Request bodies streamed to a file while their hashes are checked: the signed sha256, a
//! `Content-MD5`, an `x-amz-checksum-crc32` (header or `aws-chunked` trailer). Nothing is
//! buffered whole; a body that fails a check leaves no file behind. Every byte is charged to
//! the caller's organization in the staging ledger before it is written.

use std::path::{Path, PathBuf};

use axum::body::Body;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::staging::{Charge, OverLimit};

/// What to check while writing.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// The signed payload hash, when it is a hex sha256.
    pub sha256: Option<[u8; 32]>,
    /// `Content-MD5`, decoded.
    pub md5: Option<Vec<u8>>,
    /// `x-amz-checksum-crc32` (base64) from the headers.
    pub crc32: Option<String>,
    /// The body is `aws-chunked` with unsigned chunks and a trailer.
    pub aws_chunked: bool,
    /// `x-amz-decoded-content-length`, for an aws-chunked body.
    pub decoded_length: Option<u64>,
    /// Refuse bodies longer than this.
    pub max_len: u64,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Bytes of (decoded) payload.
    pub size: u64,
    /// Hex MD5 of the payload: the ETag.
    pub md5_hex: String,
    /// Base64 CRC32, when the client sent one to check (header or trailer).
    pub crc32: Option<String>,
}

/// A body that could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The connection failed while reading.
    #[error("read request body")]
    Read(#[source] axum::Error),
    /// The file could not be written.
    #[error("write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// sha256 differs from `x-amz-content-sha256`.
    #[error("the payload does not match x-amz-content-sha256")]
    Sha256Mismatch,
    /// MD5 differs from `Content-MD5`.
    #[error("the payload does not match Content-MD5")]
    Md5Mismatch,
    /// CRC32 differs from `x-amz-checksum-crc32`.
    #[error("the payload does not match x-amz-checksum-crc32")]
    Crc32Mismatch,
    /// The aws-chunked framing is broken.
    #[error("malformed aws-chunked body: {0}")]
    Chunked(&'static str),
    /// The decoded size differs from `x-amz-decoded-content-length`.
    #[error("the decoded body has {actual} bytes, x-amz-decoded-content-length said {expected}")]
    Length {
        /// Announced.
        expected: u64,
        /// Received.
        actual: u64,
    },
    /// Longer than allowed.
    #[error("the body is larger than {0} bytes")]
    TooLarge(u64),
    /// Keeping the bytes would pass the organization's staging limit.
    #[error(transparent)]
    OverLimit(#[from] OverLimit),
}

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32 (IEEE 802.3), as S3's `x-amz-checksum-crc32`.
#[derive(Debug, Clone)]
pub struct Crc32(u32);

impl Default for Crc32 {
    fn default() -> Self {
        Crc32(0xFFFF_FFFF)
    }
}

impl Crc32 {
    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = CRC_TABLE[usize::from((self.0 as u8) ^ b)] ^ (self.0 >> 8);
        }
    }

    /// The checksum as S3 sends it: base64 of the big-endian value.
    pub fn base64(&self) -> String {
        STANDARD.encode((!self.0).to_be_bytes())
    }
}

/// Incremental decoder of `aws-chunked` with unsigned chunks: `<hex>[;ext]\r\n<data>\r\n` …
/// `0\r\n<trailer lines>\r\n`.
#[derive(Debug, Default)]
struct Chunked {
    buf: Vec<u8>,
    remaining: u64,
    state: ChunkState,
    trailers: Vec<(String, String)>,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data,
    DataEnd,
    Trailer,
    Done,
}

impl Chunked {
    /// Feeds input; calls `out` with each decoded slice.
    fn push(&mut self, input: &[u8], out: &mut dyn FnMut(&[u8]) -> Result<(), BodyError>) -> Result<(), BodyError> {
        self.buf.extend_from_slice(input);
        let mut pos = 0;
        loop {
            match self.state {
                ChunkState::Size | ChunkState::Trailer | ChunkState::DataEnd => {
                    let Some(nl) = self.buf[pos..].windows(2).position(|w| w == b"\r\n") else {
                        if self.buf.len() - pos > 4096 {
                            return Err(BodyError::Chunked("line too long"));
                        }
                        break;
                    };
                    let line = std::str::from_utf8(&self.buf[pos..pos + nl])
                        .map_err(|_| BodyError::Chunked("line is not UTF-8"))?
                        .to_string();
                    pos += nl + 2;
                    match self.state {
                        ChunkState::Size => {
                            let hex = line.split(';').next().unwrap_or("").trim();
                            let n = u64::from_str_radix(hex, 16).map_err(|_| BodyError::Chunked("bad chunk size"))?;
                            self.remaining = n;
                            self.state = if n == 0 { ChunkState::Trailer } else { ChunkState::Data };
                        }
                        ChunkState::DataEnd => {
                            if !line.is_empty() {
                                return Err(BodyError::Chunked("chunk data longer than its size"));
                            }
                            self.state = ChunkState::Size;
                        }
                        _ => {
                            if line.is_empty() {
                                self.state = ChunkState::Done;
                            } else {
                                let (k, v) = line.split_once(':').ok_or(BodyError::Chunked("bad trailer line"))?;
                                self.trailers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                            }
                        }
                    }
                }
                ChunkState::Data => {
                    let avail = self.buf.len() - pos;
                    if avail == 0 {
                        break;
                    }
                    let take = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(avail);
                    out(&self.buf[pos..pos + take])?;
                    pos += take;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                }
                ChunkState::Done => {
                    if self.buf[pos..].iter().any(|b| !b.is_ascii_whitespace()) {
                        return Err(BodyError::Chunked("data after the final chunk"));
                    }
                    pos = self.buf.len();
                    break;
                }
            }
        }
        self.buf.drain(..pos);
        Ok(())
    }

    /// The stream ended: fine after the last chunk (a missing final blank line is tolerated).
    fn finish(&self) -> Result<(), BodyError> {
        match self.state {
            ChunkState::Done => Ok(()),
            ChunkState::Trailer if self.buf.is_empty() => Ok(()),
            _ => Err(BodyError::Chunked("the body ended inside a chunk")),
        }
    }
}

struct Hashes {
    sha256: Option<Sha256>,
    md5: Md5,
    crc32: Option<Crc32>,
    size: u64,
}

/// Writes `body` to `path` (created new), checking `expect` and charging each byte to `charge`
/// before writing it; removes the file on any failure.
pub async fn write(body: Body, path: &Path, expect: &Expect, charge: &mut Charge) -> Result<Written, BodyError> {
    let result = write_inner(body, path, expect, charge).await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(path).await;
    }
    result
}

async fn write_inner(body: Body, path: &Path, expect: &Expect, charge: &mut Charge) -> Result<Written, BodyError> {
    let werr = |source| BodyError::Write { path: path.to_path_buf(), source };
    let mut file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(path).await.map_err(werr)?;
    let mut h = Hashes {
        sha256: expect.sha256.map(|_| Sha256::new()),
        md5: Md5::new(),
        // aws-chunked always carries its checksum in the trailer; compute it to check.
        crc32: (expect.crc32.is_some() || expect.aws_chunked).then(Crc32::default),
        size: 0,
    };
    let mut chunked = expect.aws_chunked.then(Chunked::default);
    let mut stream = body.into_data_stream();
    let mut decoded: Vec<u8> = Vec::new();
    while let Some(frame) = stream.next().await {
        let bytes = frame.map_err(BodyError::Read)?;
        if let Some(sha) = h.sha256.as_mut() {
            // The signed hash covers the bytes as sent (for aws-chunked it is not hex anyway).
            sha.update(&bytes);
        }
        let data: &[u8] = match chunked.as_mut() {
            Some(c) => {
                decoded.clear();
                c.push(&bytes, &mut |d| {
                    decoded.extend_from_slice(d);
                    Ok(())
                })?;
                &decoded
            }
            None => &bytes,
        };
        h.size += data.len() as u64;
        if h.size > expect.max_len {
            return Err(BodyError::TooLarge(expect.max_len));
        }
        h.md5.update(data);
        if let Some(c) = h.crc32.as_mut() {
            c.update(data);
        }
        charge.add(data.len() as u64)?;
        file.write_all(data).await.map_err(werr)?;
    }
    file.flush().await.map_err(werr)?;
    file.sync_all().await.map_err(werr)?;
    let mut want_crc = expect.crc32.clone();
    if let Some(c) = &chunked {
        c.finish()?;
        if let Some((_, v)) = c.trailers.iter().find(|(k, _)| k.starts_with("x-amz-checksum-")) {
            if c.trailers.iter().any(|(k, _)| k.starts_with("x-amz-checksum-") && k != "x-amz-checksum-crc32") {
                return Err(BodyError::Chunked("only a CRC32 trailer checksum is supported"));
            }
            if want_crc.as_ref().is_some_and(|w| w != v) {
                return Err(BodyError::Crc32Mismatch);
            }
            want_crc = Some(v.clone());
        }
        if let Some(expected) = expect.decoded_length
            && expected != h.size
        {
            return Err(BodyError::Length { expected, actual: h.size });
        }
    }
    if let (Some(want), Some(sha)) = (expect.sha256, h.sha256) {
        let got: [u8; 32] = sha.finalize().into();
        if got != want {
            return Err(BodyError::Sha256Mismatch);
        }
    }
    let md5: [u8; 16] = h.md5.finalize().into();
    if expect.md5.as_deref().is_some_and(|m| m != md5) {
        return Err(BodyError::Md5Mismatch);
    }
    let crc32 = match (want_crc, h.crc32) {
        (Some(want), Some(c)) => {
            if c.base64() != want {
                return Err(BodyError::Crc32Mismatch);
            }
            Some(want)
        }
        _ => None,
    };
    Ok(Written { size: h.size, md5_hex: hex::encode(md5), crc32 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect() -> Expect {
        Expect { max_len: 1 << 20, ..Expect::default() }
    }

    fn charge() -> Charge {
        crate::staging::Staging::default().charge("o")
    }

    fn crc(data: &[u8]) -> String {
        let mut c = Crc32::default();
        c.update(data);
        c.base64()
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        let mut c = Crc32::default();
        c.update(b"123456789");
        assert_eq!(!c.0, 0xCBF4_3926);
        assert_eq!(crc(b""), "AAAAAA==");
    }

    #[tokio::test]
    async fn a_plain_body_is_written_with_its_hashes_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data = b"hello world";
        let mut e = expect();
        e.sha256 = Some(Sha256::digest(data).into());
        e.crc32 = Some(crc(data));
        let w = write(Body::from(&data[..]), &p, &e, &mut charge()).await.unwrap();
        assert_eq!(w.size, 11);
        assert_eq!(w.md5_hex, "5eb63bbbe01eeed093cb22bb8f5acdc3");
        assert_eq!(w.crc32, Some(crc(data)));
        assert_eq!(std::fs::read(&p).unwrap(), data);
        std::fs::remove_file(&p).unwrap();

        e.crc32 = Some(crc(b"other"));
        assert!(matches!(write(Body::from(&data[..]), &p, &e, &mut charge()).await, Err(BodyError::Crc32Mismatch)));
        assert!(!p.exists(), "a refused body leaves no file");
        e.crc32 = None;
        e.sha256 = Some([0; 32]);
        assert!(matches!(write(Body::from(&data[..]), &p, &e, &mut charge()).await, Err(BodyError::Sha256Mismatch)));
    }

    #[tokio::test]
    async fn an_aws_chunked_body_is_decoded_and_its_trailer_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let framed =
            format!("5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-amz-checksum-crc32:{}\r\n\r\n", crc(b"hello world"));
        let mut e = expect();
        e.aws_chunked = true;
        e.decoded_length = Some(11);
        // Split the framing at awkward places.
        let parts: Vec<Result<Vec<u8>, std::io::Error>> = framed.as_bytes().chunks(3).map(|c| Ok(c.to_vec())).collect();
        let body = Body::from_stream(futures_util::stream::iter(parts));
        let w = write(body, &p, &e, &mut charge()).await.unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"hello world");
        assert_eq!(w.crc32, Some(crc(b"hello world")));
        std::fs::remove_file(&p).unwrap();

        let bad = format!("5\r\nhello\r\n0\r\nx-amz-checksum-crc32:{}\r\n\r\n", crc(b"nope"));
        e.decoded_length = None;
        assert!(matches!(write(Body::from(bad), &p, &e, &mut charge()).await, Err(BodyError::Crc32Mismatch)));
        assert!(matches!(write(Body::from("5\r\nhel"), &p, &e, &mut charge()).await, Err(BodyError::Chunked(_))));
    }

    #[tokio::test]
    async fn an_oversized_body_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = expect();
        e.max_len = 4;
        assert!(matches!(
            write(Body::from("hello"), &dir.path().join("f"), &e, &mut charge()).await,
            Err(BodyError::TooLarge(4))
        ));
    }
}
