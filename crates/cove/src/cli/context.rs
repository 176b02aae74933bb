//! `snapshot create --dockerfile`: find the files the Dockerfile's COPY/ADD use (plus any
//! `--context` paths), pack them into one `context.tar` named by the hash of its content, and
//! upload it to the server's object storage the way the SDKs do (push-access credentials,
//! SigV4-signed S3 requests), so the server's builder sees the same relative paths.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use cove_build::context::BuildContext;
use cove_build::dockerfile::{CopySource, InstructionKind};
use md5::Digest as _;
use serde::Deserialize;

use super::client::Client;

/// What `POST /snapshots` needs for a Dockerfile build.
#[derive(Debug)]
pub struct BuildInfo {
    /// The Dockerfile text.
    pub dockerfile: String,
    /// Uploaded context archives (none when the Dockerfile copies nothing).
    pub hashes: Vec<String>,
}

/// `GET /object-storage/push-access`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PushAccess {
    access_key: String,
    secret: String,
    session_token: String,
    storage_url: String,
    organization_id: String,
    bucket: String,
    region: String,
}

/// Reads the Dockerfile, collects and uploads its context.
pub async fn prepare_build(c: &Client, dockerfile: &Path, extra: &[PathBuf]) -> anyhow::Result<BuildInfo> {
    let text = std::fs::read_to_string(dockerfile).with_context(|| format!("read {}", dockerfile.display()))?;
    let parsed = cove_build::dockerfile::parse(&text).with_context(|| format!("parse {}", dockerfile.display()))?;
    let root = dockerfile
        .canonicalize()
        .with_context(|| format!("resolve {}", dockerfile.display()))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let files = context_files(&root, &parsed.instructions, extra)?;
    if files.is_empty() {
        return Ok(BuildInfo { dockerfile: text, hashes: Vec::new() });
    }
    let (tar, hash) = pack(&root, &files)?;
    eprintln!("Uploading the build context: {} files, {:.1} kB", files.len(), tar.len() as f64 / 1e3);
    upload(c, &hash, tar).await?;
    Ok(BuildInfo { dockerfile: text, hashes: vec![hash] })
}

/// Relative paths (files and directories) under `root` that the build needs.
fn context_files(
    root: &Path,
    instructions: &[cove_build::dockerfile::Instruction],
    extra: &[PathBuf],
) -> anyhow::Result<BTreeSet<String>> {
    let ctx = BuildContext::open(root).with_context(|| format!("open the build context {}", root.display()))?;
    let mut out = BTreeSet::new();
    for ins in instructions {
        let InstructionKind::Copy(copy) = &ins.kind else { continue };
        if copy.from.is_some() {
            continue;
        }
        for src in &copy.sources {
            let CopySource::Path(p) = src else { continue };
            if p.contains("://") {
                continue; // ADD <url>: the server refuses it with its own message
            }
            if p.contains('$') {
                // Depends on ARG values: send the whole context (minus .dockerignore).
                out.insert(".".to_string());
                continue;
            }
            let keyword = if copy.add { "ADD" } else { "COPY" };
            let found = ctx
                .resolve(p, keyword)
                .with_context(|| format!("line {}: {keyword} {p} (relative to {})", ins.line, root.display()))?;
            out.extend(found.into_iter().map(|s| s.rel));
        }
    }
    for e in extra {
        let abs = e.canonicalize().with_context(|| format!("--context {}", e.display()))?;
        let rel = abs.strip_prefix(root).with_context(|| {
            format!("--context {} is outside the Dockerfile's directory {}", e.display(), root.display())
        })?;
        let rel = rel.to_string_lossy().to_string();
        out.insert(if rel.is_empty() { ".".into() } else { rel });
    }
    if out.contains(".") {
        out = BTreeSet::from([".".to_string()]);
    }
    Ok(out)
}

/// A tar of `files` (directories recursively, entries sorted, names relative to `root`) and
/// the md5 of every path and content in it, which names the upload.
fn pack(root: &Path, files: &BTreeSet<String>) -> anyhow::Result<(Vec<u8>, String)> {
    let ignore = BuildContext::open(root)?.ignore().clone();
    let mut entries: Vec<(String, PathBuf)> = Vec::new();
    for rel in files {
        let host = root.join(rel);
        collect(&host, rel.trim_start_matches("./"), &mut entries, &ignore)?;
    }
    entries.sort();
    entries.dedup();
    let mut hasher = md5::Md5::new();
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    for (name, host) in &entries {
        if name.is_empty() {
            continue;
        }
        hasher.update(name.as_bytes());
        let meta = std::fs::symlink_metadata(host).with_context(|| format!("read {}", host.display()))?;
        if meta.is_file() {
            let bytes = std::fs::read(host).with_context(|| format!("read {}", host.display()))?;
            hasher.update(&bytes);
        }
        builder.append_path_with_name(host, name).with_context(|| format!("pack {}", host.display()))?;
    }
    let tar = builder.into_inner().context("finish the context archive")?;
    Ok((tar, hex::encode(hasher.finalize())))
}

fn collect(
    host: &Path,
    rel: &str,
    out: &mut Vec<(String, PathBuf)>,
    ignore: &cove_build::context::DockerIgnore,
) -> anyhow::Result<()> {
    let rel = if rel == "." { "" } else { rel };
    if !rel.is_empty() && ignore.is_excluded(rel) {
        return Ok(());
    }
    out.push((rel.to_string(), host.to_path_buf()));
    let meta = std::fs::symlink_metadata(host).with_context(|| format!("read {}", host.display()))?;
    if meta.is_dir() {
        for e in std::fs::read_dir(host).with_context(|| format!("list {}", host.display()))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().to_string();
            let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            collect(&e.path(), &child, out, ignore)?;
        }
    }
    Ok(())
}

/// `HEAD` then (if missing) a SigV4-signed `PUT` of `{org}/{hash}/context.tar`.
async fn upload(c: &Client, hash: &str, body: Vec<u8>) -> anyhow::Result<()> {
    let a: PushAccess = c.get_json("/object-storage/push-access").await?;
    let key = format!("{}/{hash}/context.tar", a.organization_id);
    let path = format!("/{}/{}", a.bucket, key);
    let url = format!("{}{path}", a.storage_url.trim_end_matches('/'));
    let head = signed(c, &a, reqwest::Method::HEAD, &path, &url, &[]);
    let resp = head.send().await.with_context(|| {
        format!(
            "reach the object storage at {}: if this is a certificate error, log in again with `cove login` \
             (it pins the server's CA) or pass the CA your administrator gave you with `cove login --ca-file FILE`",
            a.storage_url
        )
    })?;
    if resp.status().is_success() {
        eprintln!("Build context {hash} already uploaded");
        return Ok(());
    }
    let resp = signed(c, &a, reqwest::Method::PUT, &path, &url, &body).body(body).send().await?;
    if !resp.status().is_success() {
        let status = resp.status();
        anyhow::bail!("upload the build context: {status}: {}", resp.text().await.unwrap_or_default());
    }
    Ok(())
}

/// A request signed with AWS SigV4 (header form, payload hash included).
fn signed(
    c: &Client,
    a: &PushAccess,
    method: reqwest::Method,
    path: &str,
    url: &str,
    body: &[u8],
) -> reqwest::RequestBuilder {
    use cove_server::s3::sigv4;
    use sha2::Digest as _;
    let now = chrono::Utc::now();
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let date = now.format("%Y%m%d").to_string();
    let host = url.split("://").nth(1).and_then(|r| r.split('/').next()).unwrap_or_default().to_string();
    let payload = hex::encode(sha2::Sha256::digest(body));
    let canonical_uri = sigv4::uri_encode(path, true);
    let headers = [
        ("host", host.as_str()),
        ("x-amz-content-sha256", payload.as_str()),
        ("x-amz-date", amz_date.as_str()),
        ("x-amz-security-token", a.session_token.as_str()),
    ];
    let signed_names = headers.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(";");
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{}\n", v.trim())).collect();
    let canonical = format!("{}\n{canonical_uri}\n\n{canonical_headers}\n{signed_names}\n{payload}", method.as_str());
    let scope = format!("{date}/{}/s3/aws4_request", a.region);
    let sts = sigv4::string_to_sign(&amz_date, &scope, &canonical);
    let sig = sigv4::signature(&a.secret, (&date, &a.region, "s3"), &sts);
    let auth =
        format!("AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_names}, Signature={sig}", a.access_key);
    c.http()
        .request(method, url)
        .header("x-amz-content-sha256", payload)
        .header("x-amz-date", amz_date)
        .header("x-amz-security-token", &a.session_token)
        .header("authorization", auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_a_dockerfile_copies_are_found_and_ignored_ones_left_out() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("app/sub")).unwrap();
        std::fs::write(d.path().join("app/a.txt"), "a").unwrap();
        std::fs::write(d.path().join("app/sub/b.log"), "b").unwrap();
        std::fs::write(d.path().join("req.txt"), "r").unwrap();
        std::fs::write(d.path().join("unused.txt"), "u").unwrap();
        std::fs::write(d.path().join(".dockerignore"), "**/*.log\n").unwrap();
        let df = "FROM scratch\nCOPY app /app\nCOPY --from=other /x /y\nADD req.txt /\n";
        let parsed = cove_build::dockerfile::parse(df).unwrap();
        let files = context_files(d.path(), &parsed.instructions, &[]).unwrap();
        assert_eq!(files, BTreeSet::from(["app".to_string(), "req.txt".to_string()]));
        let (tar, hash) = pack(d.path(), &files).unwrap();
        let names: Vec<String> = tar::Archive::new(&tar[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().trim_end_matches('/').to_string())
            .collect();
        assert_eq!(names, ["app", "app/a.txt", "app/sub", "req.txt"]);
        assert_eq!(pack(d.path(), &files).unwrap().1, hash, "the name is a content address");
    }

    #[test]
    fn a_missing_copy_source_is_an_error_naming_its_line() {
        let d = tempfile::tempdir().unwrap();
        let parsed = cove_build::dockerfile::parse("FROM scratch\nCOPY nope.txt /\n").unwrap();
        let e = context_files(d.path(), &parsed.instructions, &[]).unwrap_err();
        assert!(format!("{e:#}").contains("line 2"), "{e:#}");
    }
}
