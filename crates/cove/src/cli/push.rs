//! `cove snapshot push LOCAL_IMAGE --name NAME`: read an image from the local Docker engine,
//! an OCI layout (`oci:DIR[:TAG]`) or a `docker save` archive (`docker-archive:FILE`), push it
//! into the server's built-in registry and create a snapshot from it.
//!
//! Blobs go up [`PARALLEL_UPLOADS`] at a time, each as one request: a `HEAD` skips what the
//! repository has, else a monolithic `POST …/blobs/uploads/?digest=` streams the file (large
//! reads, no copy in memory). The client hashes nothing a layout already names: the registry
//! verifies the digest while it writes (hashing only that algorithm) and refuses a mismatch,
//! which the error names with the blob's file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use base64::Engine as _;
use clap::Args;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::client::Client;
use super::output::Progress;
use super::snapshot::{Resources, finish, wait};
use super::{Global, output};

/// Blob uploads in flight at once.
const PARALLEL_UPLOADS: usize = 4;
/// Bytes per read of a blob file while it is streamed.
const READ_BUFFER: usize = 2 << 20;
/// Blobs up to this size are read into memory and sent as one body.
const SMALL_BLOB: u64 = 1 << 20;

use cove_image::oci::{self, OCI_INDEX, OCI_MANIFEST};

/// `cove snapshot push`.
#[derive(Args, Debug)]
pub struct PushArgs {
    /// The image: a Docker engine image (`custom-alpine:3.21`), `oci:DIR[:TAG]` or `docker-archive:FILE`.
    pub image: String,
    /// Snapshot name.
    #[arg(long)]
    pub name: String,
    /// Entrypoint (default: the image's, else `sleep infinity`).
    #[arg(long)]
    pub entrypoint: Option<String>,
    #[command(flatten)]
    pub resources: Resources,
}

/// `GET /docker-registry/registry-push-access`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PushAccess {
    username: String,
    secret: String,
    registry_url: String,
    project: String,
}

/// Push credentials for the server's built-in registry, and where it is.
pub struct Registry {
    /// `http[s]://host[:port]`.
    base: String,
    /// `host[:port]`, as image names start.
    pub host: String,
    /// The namespace the credentials open (the organization id, or `cove`).
    pub project: String,
    /// The `Authorization` header value.
    auth: String,
}

impl Registry {
    /// Asks the server for push credentials: the organization's, or with `namespace`
    /// (`cove`, admin keys only) the system namespace's.
    pub async fn open(c: &Client, namespace: Option<&str>) -> anyhow::Result<Self> {
        let path = match namespace {
            Some(n) => format!("/docker-registry/registry-push-access?namespace={}", super::client::seg(n)),
            None => "/docker-registry/registry-push-access".to_string(),
        };
        let access: PushAccess = c.get_json(&path).await?;
        let (base, host) = match access.registry_url.split_once("://") {
            Some((_, rest)) => {
                (access.registry_url.trim_end_matches('/').to_string(), rest.trim_end_matches('/').to_string())
            }
            None => (format!("http://{}", access.registry_url.trim_end_matches('/')), access.registry_url.clone()),
        };
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", access.username, access.secret))
        );
        Ok(Registry { base, host, project: access.project, auth })
    }

    /// Uploads a blob unless the repository has it.
    pub async fn push_blob(
        &self,
        c: &Client,
        repo: &str,
        digest: &str,
        path: &Path,
        size: u64,
        bar: &mut Progress,
    ) -> anyhow::Result<()> {
        self.push_blobs(c, repo, &[(digest.to_string(), path.to_path_buf(), size)], bar).await.map(drop)
    }

    /// Uploads `(digest, file, size)` blobs the repository lacks, [`PARALLEL_UPLOADS`] at a
    /// time; the bar follows the bytes handed to the connections (skipped blobs count at once).
    /// Answers how many the repository already had.
    pub async fn push_blobs(
        &self,
        c: &Client,
        repo: &str,
        blobs: &[(String, PathBuf, u64)],
        bar: &mut Progress,
    ) -> anyhow::Result<usize> {
        use futures_util::{StreamExt as _, TryStreamExt as _};
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let uploads = futures_util::stream::iter(blobs.iter().map(|(d, p, size)| {
            let sent = sent.clone();
            async move { push_blob(c, &self.base, repo, &self.auth, d, p, *size, &sent).await }
        }))
        .buffer_unordered(PARALLEL_UPLOADS)
        .try_collect::<Vec<bool>>();
        tokio::pin!(uploads);
        let mut shown = 0u64;
        let skipped = loop {
            tokio::select! {
                r = &mut uploads => break r?.into_iter().filter(|s| *s).count(),
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {
                    let now = sent.load(std::sync::atomic::Ordering::Relaxed);
                    bar.advance(now.saturating_sub(shown));
                    shown = now.max(shown);
                }
            }
        };
        let total: u64 = blobs.iter().map(|b| b.2).sum();
        bar.advance(total.saturating_sub(shown));
        Ok(skipped)
    }

    /// Pushes a manifest under `tag`.
    pub async fn push_manifest(
        &self,
        c: &Client,
        repo: &str,
        tag: &str,
        media_type: &str,
        manifest: &[u8],
    ) -> anyhow::Result<()> {
        let resp = c
            .http()
            .put(format!("{}/v2/{repo}/manifests/{tag}", self.base))
            .header("authorization", &self.auth)
            .header("content-type", media_type)
            .body(manifest.to_vec())
            .send()
            .await
            .context("push the manifest")?;
        check(resp, "push the manifest").await.map(drop)
    }

    /// The digest `repo:tag` points at, `None` when there is no such tag.
    pub async fn manifest_digest(&self, c: &Client, repo: &str, tag: &str) -> anyhow::Result<Option<String>> {
        let resp = c
            .http()
            .head(format!("{}/v2/{repo}/manifests/{tag}", self.base))
            .header("authorization", &self.auth)
            .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
            .send()
            .await
            .context("look up the manifest")?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = check(resp, &format!("look up {repo}:{tag}")).await?;
        let d = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok());
        Ok(d.map(str::to_string))
    }
}

/// An image ready to push: blobs on disk, and its manifest.
struct LocalImage {
    manifest: Vec<u8>,
    media_type: String,
    /// (digest, path, size) of the config and every layer.
    blobs: Vec<(String, PathBuf, u64)>,
    tag: Option<String>,
    /// Temporary directories the blobs live in, removed when the image is dropped.
    _tmp: Vec<tempfile::TempDir>,
}

pub async fn run(c: &Client, a: PushArgs, g: &Global) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let image = load(&a.image).await?;
    let reg = Registry::open(c, None).await?;
    let host = reg.host.clone();
    let repo = format!("{}/{}", reg.project, a.name.to_ascii_lowercase());
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&image.manifest)));
    let tag = match image.tag.as_deref().filter(|t| *t != "latest" && !t.is_empty()) {
        Some(t) => t.to_string(),
        None => format!("pushed-{}", &digest[7..19]),
    };
    let total: u64 = image.blobs.iter().map(|b| b.2).sum();
    let mut bar = Progress::new(format!("Pushing {}", a.image), total);
    let skipped = reg.push_blobs(c, &repo, &image.blobs, &mut bar).await?;
    reg.push_manifest(c, &repo, &tag, &image.media_type, &image.manifest).await?;
    bar.finish();
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "Pushed {:.1} MB in {secs:.3} s ({:.1} MB/s; {skipped} of {} blobs were already in the registry)",
        total as f64 / 1e6,
        total as f64 / 1e6 / secs.max(1e-6),
        image.blobs.len()
    );

    let r = &a.resources;
    let mut body = json!({
        "name": a.name, "imageName": format!("{host}/{repo}:{tag}"),
        "cpu": r.cpu, "memory": r.memory, "disk": r.disk, "gpu": r.gpu, "regionId": r.region,
    });
    if let Some(e) = &a.entrypoint {
        body["entrypoint"] = json!(e.split_whitespace().collect::<Vec<_>>());
    }
    let created: Value = c.post_json("/snapshots", &body).await?;
    let id = created["id"].as_str().context("the server answered without an id")?;
    eprintln!("Creating snapshot {} from {}", a.name, body["imageName"].as_str().unwrap_or_default());
    let done = wait(c, id).await?;
    finish(&done, &a.name, g)?;
    if g.format == super::output::Format::Table {
        output::table(&["SNAPSHOT", "IMAGE"], &[vec![a.name, format!("{host}/{repo}:{tag}")]]);
    }
    Ok(())
}

async fn check(resp: reqwest::Response, what: &str) -> anyhow::Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    anyhow::bail!("{what}: {status}: {}", resp.text().await.unwrap_or_default())
}

/// Absolute URL of an upload `Location` (which may be relative).
fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else {
        format!("{base}{location}")
    }
}

/// One blob: `HEAD` (present: done), else one monolithic `POST ?digest=` with the file as
/// body; a registry that answers it with an upload session (202) gets the body in the
/// closing `PUT ?digest=` instead. `sent` counts the bytes handed to the connection. Answers
/// whether the repository had it.
#[allow(clippy::too_many_arguments)]
async fn push_blob(
    c: &Client,
    base: &str,
    repo: &str,
    auth: &str,
    digest: &str,
    path: &Path,
    size: u64,
    sent: &std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<bool> {
    let what = format!("upload {digest} ({})", path.display());
    let head = c
        .http()
        .head(format!("{base}/v2/{repo}/blobs/{digest}"))
        .header("authorization", auth)
        .send()
        .await
        .with_context(|| format!("{what}: look it up"))?;
    if head.status().is_success() {
        tracing::debug!(digest = %digest, size, "blob already in the repository");
        sent.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        return Ok(true);
    }
    let sep = |u: &str| if u.contains('?') { '&' } else { '?' };
    let post = format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}");
    // The blob's bytes, streamed from the file, in a POST or the closing PUT.
    let send = |req: reqwest::RequestBuilder| async {
        req.header("authorization", auth)
            .header("content-type", "application/octet-stream")
            .header("content-length", size.to_string())
            .body(file_body(path, size, sent.clone()).await.with_context(|| what.clone())?)
            .send()
            .await
            .with_context(|| what.clone())
    };
    let resp = send(c.http().post(&post)).await?;
    if resp.status() == reqwest::StatusCode::ACCEPTED {
        // Not taken whole: the answer opened a session; the body goes with the closing PUT.
        let location = location(&resp, base)?;
        let resp = send(c.http().put(format!("{location}{}digest={digest}", sep(&location)))).await?;
        check(resp, &what).await?;
    } else {
        check(resp, &what).await?;
    }
    Ok(false)
}

/// A request body of the file at `path`: small ones read at once, larger ones streamed in
/// [`READ_BUFFER`] reads; `sent` grows as the connection takes them.
async fn file_body(
    path: &Path,
    size: u64,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<reqwest::Body> {
    if size <= SMALL_BLOB {
        let bytes = tokio::fs::read(path).await.with_context(|| format!("read {}", path.display()))?;
        sent.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        return Ok(reqwest::Body::from(bytes));
    }
    let file = tokio::fs::File::open(path).await.with_context(|| format!("open {}", path.display()))?;
    let stream =
        futures_util::StreamExt::inspect(tokio_util::io::ReaderStream::with_capacity(file, READ_BUFFER), move |c| {
            if let Ok(c) = c {
                sent.fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        });
    Ok(reqwest::Body::wrap_stream(stream))
}

fn location(resp: &reqwest::Response, base: &str) -> anyhow::Result<String> {
    let l = resp.headers().get("location").and_then(|v| v.to_str().ok()).context("the registry sent no Location")?;
    Ok(absolute(base, l))
}

/// Reads the image named on the command line.
async fn load(image: &str) -> anyhow::Result<LocalImage> {
    if let Some(rest) = image.strip_prefix("oci:") {
        let (dir, tag) = match rest.rsplit_once(':') {
            Some((d, t)) if !t.contains('/') => (d, Some(t.to_string())),
            _ => (rest, None),
        };
        return load_oci(Path::new(dir), tag);
    }
    if let Some(file) = image.strip_prefix("docker-archive:") {
        return load_archive(Path::new(file), None);
    }
    let tmp = tempfile::tempdir().context("create a temporary directory")?;
    let tar = tmp.path().join("image.tar");
    docker_save(image, &tar).await?;
    let mut img = load_archive(&tar, Some(image))?;
    img._tmp.push(tmp);
    Ok(img)
}

/// Refuses images that are not linux/amd64, with the seed's advice.
fn check_platform(config: &[u8], image: &str) -> anyhow::Result<()> {
    let v: Value = serde_json::from_slice(config).context("read the image config")?;
    let (os, arch) = (v["os"].as_str().unwrap_or("linux"), v["architecture"].as_str().unwrap_or("amd64"));
    if os != "linux" || arch != "amd64" {
        anyhow::bail!(
            "image {image} is built for {os}/{arch}; sandboxes run linux/amd64: rebuild it with `docker build --platform=linux/amd64` (or pull it with --platform=linux/amd64) and push again"
        );
    }
    Ok(())
}

fn load_oci(dir: &Path, tag: Option<String>) -> anyhow::Result<LocalImage> {
    let blob = |d: &str| dir.join("blobs").join(d.replace(':', "/"));
    let index: Value = serde_json::from_slice(
        &std::fs::read(dir.join("index.json")).with_context(|| format!("{} is not an OCI layout", dir.display()))?,
    )?;
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    let chosen = match &tag {
        Some(t) => manifests.iter().find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == t.as_str()),
        None if manifests.len() == 1 => manifests.first(),
        None => anyhow::bail!("{} holds {} images: name one with oci:DIR:TAG", dir.display(), manifests.len()),
    }
    .with_context(|| format!("no image tagged {} in {}", tag.as_deref().unwrap_or("?"), dir.display()))?
    .clone();
    let read_doc = |desc: &Value| -> anyhow::Result<(Vec<u8>, oci::ManifestKind, String)> {
        let d = desc["digest"].as_str().context("an index entry without digest")?;
        let bytes = std::fs::read(blob(d)).with_context(|| format!("read {d} from {}", dir.display()))?;
        let doc: oci::ManifestOrIndex = serde_json::from_slice(&bytes).with_context(|| format!("{d} is not JSON"))?;
        // A manifest may leave `mediaType` out (umoci does): the entry's, else its fields.
        let (kind, media) = doc.kind(desc["mediaType"].as_str()).with_context(|| format!("read manifest {d}"))?;
        Ok((bytes, kind, media))
    };
    let (mut manifest, mut kind, mut media) = read_doc(&chosen)?;
    if kind == oci::ManifestKind::Index {
        let idx: Value = serde_json::from_slice(&manifest)?;
        let all = idx["manifests"].as_array().cloned().unwrap_or_default();
        let desc = all
            .iter()
            .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64")
            .cloned()
            .with_context(|| {
                let found: Vec<String> = all
                    .iter()
                    .map(|m| {
                        format!(
                            "{}/{}",
                            m["platform"]["os"].as_str().unwrap_or("?"),
                            m["platform"]["architecture"].as_str().unwrap_or("?")
                        )
                    })
                    .collect();
                format!(
                    "the image has no linux/amd64 variant (it has {}): rebuild it with --platform=linux/amd64",
                    found.join(", ")
                )
            })?;
        (manifest, kind, media) = read_doc(&desc)?;
        if kind == oci::ManifestKind::Index {
            anyhow::bail!("the linux/amd64 entry of {} is a nested index ({media})", dir.display());
        }
    }
    let m: Value = serde_json::from_slice(&manifest)?;
    let config_d = m["config"]["digest"].as_str().context("the manifest has no config")?.to_string();
    check_platform(&std::fs::read(blob(&config_d))?, &dir.display().to_string())?;
    let mut blobs = vec![(config_d.clone(), blob(&config_d), m["config"]["size"].as_u64().unwrap_or(0))];
    for l in m["layers"].as_array().into_iter().flatten() {
        let d = l["digest"].as_str().context("a layer without digest")?.to_string();
        let p = blob(&d);
        let size = std::fs::metadata(&p).with_context(|| format!("missing blob {d}"))?.len();
        blobs.push((d, p, size));
    }
    Ok(LocalImage { manifest, media_type: media, blobs, tag, _tmp: Vec::new() })
}

/// A `docker save` archive: `manifest.json` names the config and the layer tars. Layers are
/// pushed as they are (uncompressed tars, or gzip where the archive has them) in an OCI manifest.
fn load_archive(file: &Path, name: Option<&str>) -> anyhow::Result<LocalImage> {
    let tmp = tempfile::tempdir().context("create a temporary directory")?;
    let f = std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?;
    let mut ar = tar::Archive::new(f);
    for e in ar.entries().with_context(|| format!("{} is not a tar archive", file.display()))? {
        let mut e = e?;
        // `unpack_in` refuses absolute paths and `..`.
        e.unpack_in(tmp.path()).context("extract the image archive")?;
    }
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(tmp.path().join("manifest.json"))
            .with_context(|| format!("{} has no manifest.json: not a `docker save` archive", file.display()))?,
    )?;
    let entries = manifest.as_array().cloned().unwrap_or_default();
    let entry = match name {
        Some(n) => entries
            .iter()
            .find(|e| {
                e["RepoTags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|x| x.as_str().is_some_and(|x| tag_matches(x, n))))
            })
            .or(entries.first()),
        None => entries.first(),
    }
    .context("the archive holds no image")?
    .clone();
    let tag = entry["RepoTags"][0].as_str().and_then(|t| t.rsplit_once(':')).map(|(_, t)| t.to_string());
    let config_path = tmp.path().join(entry["Config"].as_str().context("no Config in manifest.json")?);
    let config = std::fs::read(&config_path)?;
    check_platform(&config, name.unwrap_or(&file.display().to_string()))?;
    let config_d = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&config)));
    let mut blobs = vec![(config_d.clone(), config_path, config.len() as u64)];
    let mut layers = Vec::new();
    for l in entry["Layers"].as_array().into_iter().flatten() {
        let rel = l.as_str().context("a layer path is not a string")?;
        let p = tmp.path().join(rel);
        // Archives in the OCI layout name layers by digest: not hashed here, the registry
        // verifies them while they are written.
        let (d, size, gz) = match named_digest(rel) {
            Some(d) => {
                let size = std::fs::metadata(&p).with_context(|| format!("missing layer {rel}"))?.len();
                (d, size, starts_with_gzip_magic(&p)?)
            }
            None => hash_file(&p)?,
        };
        let media =
            if gz { "application/vnd.oci.image.layer.v1.tar+gzip" } else { "application/vnd.oci.image.layer.v1.tar" };
        layers.push(json!({ "mediaType": media, "digest": d, "size": size }));
        blobs.push((d, p, size));
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config.len() },
        "layers": layers,
    }))?;
    Ok(LocalImage { manifest, media_type: OCI_MANIFEST.into(), blobs, tag, _tmp: vec![tmp] })
}

fn tag_matches(repo_tag: &str, asked: &str) -> bool {
    repo_tag == asked
        || repo_tag.strip_prefix("docker.io/library/") == Some(asked)
        || repo_tag == format!("{asked}:latest")
}

/// `sha256:<hex>` of a path `blobs/sha256/<hex>`, the name an OCI layout gives a blob.
fn named_digest(rel: &str) -> Option<String> {
    let hex = rel.strip_prefix("blobs/sha256/")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| format!("sha256:{hex}"))
}

fn starts_with_gzip_magic(p: &Path) -> anyhow::Result<bool> {
    use std::io::Read as _;
    let mut magic = [0u8; 2];
    let f = std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?;
    let n = f.take(2).read(&mut magic).with_context(|| format!("read {}", p.display()))?;
    Ok(n == 2 && magic == [0x1f, 0x8b])
}

fn hash_file(p: &Path) -> anyhow::Result<(String, u64, bool)> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let (mut size, mut first) = (0u64, Vec::new());
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if first.is_empty() {
            first = buf[..n.min(2)].to_vec();
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((format!("sha256:{}", hex::encode(h.finalize())), size, first == [0x1f, 0x8b]))
}

/// `GET /images/{name}/get` from the Docker engine's socket into `dest`.
async fn docker_save(image: &str, dest: &Path) -> anyhow::Result<()> {
    let sock = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".into());
    let mut s = tokio::net::UnixStream::connect(&sock).await.with_context(|| {
        format!(
            "no Docker engine answers at {sock} (is dockerd running?); push an OCI layout with oci:DIR[:TAG] or a `docker save` file with docker-archive:FILE instead"
        )
    })?;
    let path = format!("/images/{}/get", super::client::seg(image));
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await? == 0 {
            anyhow::bail!("the Docker engine closed the connection");
        }
        head.push(byte[0]);
        anyhow::ensure!(head.len() < 64 * 1024, "the Docker engine sent an oversized header");
    }
    let head = String::from_utf8_lossy(&head);
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        let mut body = String::new();
        let _ = s.read_to_string(&mut body).await;
        anyhow::bail!("the Docker engine cannot export {image}: {status} {}", body.trim());
    }
    let mut out = tokio::fs::File::create(dest).await?;
    tokio::io::copy(&mut s, &mut out).await.context("read the image from the Docker engine")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_amd64_image_is_refused_with_the_platform_advice() {
        let e = check_platform(br#"{"os":"linux","architecture":"arm64"}"#, "custom-alpine:3.21").unwrap_err();
        assert!(e.to_string().contains("--platform=linux/amd64"), "{e}");
        check_platform(br#"{"os":"linux","architecture":"amd64"}"#, "x").unwrap();
    }

    #[test]
    fn layer_paths_named_by_digest_are_taken_at_their_word_and_others_hashed() {
        let hex = "a".repeat(64);
        assert_eq!(named_digest(&format!("blobs/sha256/{hex}")), Some(format!("sha256:{hex}")));
        assert_eq!(named_digest("abc/layer.tar"), None);
        assert_eq!(named_digest(&format!("blobs/sha256/{}", "A".repeat(64))), None, "not a canonical digest");
        assert_eq!(named_digest("blobs/sha256/../../etc/passwd"), None);
    }

    #[test]
    fn upload_locations_may_be_relative() {
        assert_eq!(absolute("http://h:1", "/v2/a/blobs/uploads/u"), "http://h:1/v2/a/blobs/uploads/u");
        assert_eq!(absolute("http://h:1", "http://o:2/x"), "http://o:2/x");
    }
}
