//! `cove image bootstrap`: builds a Debian sandbox image on this host with mmdebstrap (see
//! [`super::debian`]), pushes it into the server's built-in registry as
//! `cove/sandbox:<profile>-<release>` (the system namespace: an admin key), and with
//! `--general` makes the general snapshots `cove-small`, `cove-medium` and `cove-large` of it,
//! and `cove-gpu` (1 GPU) where the server's regions report GPUs.
//!
//! Idempotent: a cached build is reused (`--force` rebuilds), a manifest already in the
//! registry is not pushed again, general snapshots of the same image are left alone, and
//! those of an older build under the same tag are re-pinned to the new one in place.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::{ApiError, Client, seg};
use super::debian::{self, Profile, Recipe};
use super::output::{self, Format, Progress};
use super::push::Registry;
use super::{Global, snapshot};

/// The repository in the system namespace.
const REPOSITORY: &str = "cove/sandbox";
/// The general snapshots `--general` ensures: name, vCPUs, memory GiB, disk GiB.
const GENERAL: [(&str, i64, i64, i64); 3] =
    [("cove-small", 1, 1, 3), ("cove-medium", 2, 4, 8), ("cove-large", 4, 8, 10)];
/// `(name, vCPUs, memory GiB, disk GiB, GPUs)` of the general GPU snapshot, made only on a
/// server whose regions report GPUs.
const GPU_GENERAL: (&str, i64, i64, i64, i64) = ("cove-gpu", 4, 8, 10, 1);
/// The general snapshot of `--profile docker --general`: container-engine mode comes from
/// the image's label.
const DOCKER_GENERAL: (&str, i64, i64, i64, i64) = ("cove-docker", 2, 4, 10, 0);

/// `cove image …`.
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Build a Debian sandbox image with mmdebstrap (no Docker) and store it in the server's
    /// registry as cove/sandbox:<profile>-<release> (admin key).
    Bootstrap(BootstrapArgs),
}

/// `cove image bootstrap`.
#[derive(Args, Debug)]
pub struct BootstrapArgs {
    /// What to install: minimal (python, pip), python (+ venv, git, curl, build-essential,
    /// numpy, pandas, matplotlib, requests, bs4), node (+ nodejs, npm), full (both), docker
    /// (minimal + Docker engine and Compose; its general snapshot is cove-docker).
    #[arg(long, value_enum, default_value = "full")]
    pub profile: Profile,
    /// Debian release codename (default: this host's, from /etc/os-release).
    #[arg(long)]
    pub release: Option<String>,
    /// Debian mirror URL (default: this host's apt sources for the release).
    #[arg(long)]
    pub mirror: Option<String>,
    /// Rebuild even when a cached build exists.
    #[arg(long)]
    pub force: bool,
    /// Also make the general snapshots cove-small, cove-medium and cove-large of the image.
    #[arg(long)]
    pub general: bool,
    /// Where builds are kept (default: /var/cache/cove/bootstrap as root, else ~/.cache/cove/bootstrap).
    #[arg(long, env = "COVE_BOOTSTRAP_CACHE")]
    pub cache_dir: Option<PathBuf>,
}

pub async fn run(c: Client, cmd: ImageCommand, g: &Global) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Bootstrap(a) => bootstrap(&c, a, g).await,
    }
}

fn default_cache() -> anyhow::Result<PathBuf> {
    if rustix::process::geteuid().is_root() {
        return Ok(PathBuf::from("/var/cache/cove/bootstrap"));
    }
    let home = std::env::var_os("HOME").context("HOME is not set: give --cache-dir")?;
    Ok(PathBuf::from(home).join(".cache/cove/bootstrap"))
}

async fn bootstrap(c: &Client, a: BootstrapArgs, g: &Global) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let release = match a.release {
        Some(r) => r,
        None => debian::host_release()?,
    };
    anyhow::ensure!(
        !release.is_empty() && release.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "--release {release:?}: give a Debian codename such as bookworm"
    );
    let mirrors = match &a.mirror {
        Some(m) => vec![m.clone()],
        None => {
            let s = debian::host_sources(&release);
            if s.is_empty() {
                eprintln!(
                    "No apt sources for {release} on this host: mmdebstrap uses its default mirror (give --mirror URL to choose one)"
                );
            }
            s
        }
    };
    let recipe = Recipe { profile: a.profile, release, mirrors };
    let cache = match a.cache_dir {
        Some(d) => d,
        None => default_cache()?,
    };
    // The credentials first: a key that may not push into cove/ fails before a long build.
    let reg = Registry::open(c, Some("cove")).await.context("get push access to the system namespace cove/")?;
    let tag = recipe.tag();
    let image = format!("{}/{REPOSITORY}:{tag}", reg.host);

    let (entry, reused) = match recipe.cached(&cache).filter(|_| !a.force) {
        Some(e) => {
            eprintln!("[1/3] Reusing the build of {tag} from {} ({})", e.dir.display(), e.built.created);
            (e, true)
        }
        None => {
            eprintln!(
                "[1/3] Building {tag} with mmdebstrap (Debian {} minbase + {}); log in {}",
                recipe.release,
                recipe.profile.packages().join(" "),
                recipe.entry_dir(&cache).display()
            );
            let r = recipe.clone();
            let dir = cache.clone();
            let force = a.force;
            let e = tokio::task::spawn_blocking(move || r.build(&dir, force)).await.context("the build task")??;
            eprintln!(
                "      built in {:.0} s: layer {:.1} MB ({})",
                t0.elapsed().as_secs_f64(),
                e.built.layer_size as f64 / 1e6,
                e.built.layer_digest
            );
            (e, false)
        }
    };

    let digest = entry.built.manifest_digest.clone();
    let pushed = if reg.manifest_digest(c, REPOSITORY, &tag).await?.as_deref() == Some(digest.as_str()) {
        eprintln!("[2/3] {image} is already in the registry ({digest}); nothing to push");
        false
    } else {
        eprintln!("[2/3] Pushing {image}");
        let mut bar = Progress::new(format!("Pushing {tag}"), entry.built.layer_size);
        reg.push_blob(c, REPOSITORY, &entry.built.layer_digest, &entry.layer(), entry.built.layer_size, &mut bar)
            .await?;
        let config = entry.config();
        let config_size = std::fs::metadata(&config).with_context(|| format!("read {}", config.display()))?.len();
        reg.push_blob(c, REPOSITORY, &entry.built.config_digest, &config, config_size, &mut bar).await?;
        reg.push_manifest(c, REPOSITORY, &tag, debian::OCI_MANIFEST, &entry.manifest()?).await?;
        bar.finish();
        true
    };

    let mut snapshots = Vec::new();
    if a.general {
        eprintln!("[3/3] General snapshots of {image}");
        let mut general: Vec<(&str, i64, i64, i64, i64)> = if recipe.profile == Profile::Docker {
            // The engine's image is for container-engine sandboxes only.
            vec![DOCKER_GENERAL]
        } else {
            GENERAL.iter().map(|&(n, cpu, mem, disk)| (n, cpu, mem, disk, 0)).collect()
        };
        // The seed's daytona-gpu: only where the server has GPUs (GET /regions → gpus).
        let regions: Value = c.get_json("/regions").await.context("read the server's regions")?;
        if recipe.profile != Profile::Docker
            && regions.as_array().is_some_and(|r| r.iter().any(|r| r["gpus"].as_i64().unwrap_or(0) > 0))
        {
            general.push(GPU_GENERAL);
        }
        for (name, cpu, memory, disk, gpu) in general {
            let state = ensure_general(c, name, &image, &digest, cpu, memory, disk, gpu).await?;
            snapshots.push(json!({ "name": name, "state": state }));
        }
    } else {
        eprintln!(
            "[3/3] No general snapshots asked for (--general makes cove-small, cove-medium, cove-large; cove-docker for --profile docker)"
        );
    }
    let summary = json!({
        "image": image, "digest": digest, "profile": recipe.profile.name(), "release": recipe.release,
        "reusedBuild": reused, "pushed": pushed, "cache": entry.dir, "generalSnapshots": snapshots,
        "seconds": t0.elapsed().as_secs_f64(),
    });
    match g.format {
        Format::Json => output::json(&summary),
        Format::Table => println!("{image}"),
    }
    Ok(())
}

/// Makes `name` a general snapshot of `image` (whose manifest is `digest`) unless it is one
/// already. One of the same image name pinned to another digest (an older build of the tag:
/// `--force`) is re-pinned in place (`POST /snapshots/{id}/pull`): never missing meanwhile,
/// and its running sandboxes keep their image. Another image's snapshot of that name is
/// deleted first. Returns the final state (`active`).
#[allow(clippy::too_many_arguments)]
async fn ensure_general(
    c: &Client,
    name: &str,
    image: &str,
    digest: &str,
    cpu: i64,
    memory: i64,
    disk: i64,
    gpu: i64,
) -> anyhow::Result<String> {
    let path = format!("/snapshots/{}", seg(name));
    let existing: Option<Value> = match c.get_json::<Value>(&path).await {
        Ok(v) => Some(v),
        Err(e) if is_not_found(&e) => None,
        Err(e) => return Err(e),
    };
    if let Some(s) = existing {
        let id = s["id"].as_str().context("the server answered without an id")?.to_string();
        anyhow::ensure!(
            s["general"].as_bool() == Some(true),
            "snapshot {name} exists and is not general: delete it (cove snapshot delete {name}) or run without --general"
        );
        let state = s["state"].as_str().unwrap_or_default();
        if s["imageName"].as_str() == Some(image) && !matches!(state, "error" | "build_failed") {
            let done = snapshot::wait(c, &id).await?;
            if done["state"].as_str() != Some("active") || done["ref"].as_str() == Some(digest) {
                eprintln!("      {name}: already a general snapshot of this image ({})", output::field(&done, "state"));
                return finished(&done, name);
            }
            eprintln!("      {name}: re-pinning from the older build {} to {digest}", output::field(&done, "ref"));
            let repinned: Value = c
                .post_json(&format!("/snapshots/{}/pull", seg(&id)), &json!({}))
                .await
                .with_context(|| format!("re-pin the general snapshot {name} to {digest}"))?;
            anyhow::ensure!(
                repinned["ref"].as_str() == Some(digest),
                "general snapshot {name} was re-pinned to {} instead of {digest}: was {image} pushed again meanwhile?",
                output::field(&repinned, "ref")
            );
            return finished(&repinned, name);
        }
        eprintln!("      {name}: replacing the snapshot of {} ({state})", output::field(&s, "imageName"));
        c.delete(&format!("/snapshots/{}", seg(&id))).await?;
    }
    let body = json!({
        "name": name, "imageName": image, "cpu": cpu, "memory": memory, "disk": disk, "gpu": gpu, "general": true,
    });
    // A deleted snapshot's name is free once its removal finished.
    let deadline = Instant::now() + Duration::from_secs(60);
    let created: Value = loop {
        match c.post_json("/snapshots", &body).await {
            Ok(v) => break v,
            Err(e) if is_conflict(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.context(format!("create the general snapshot {name}"))),
        }
    };
    let id = created["id"].as_str().context("the server answered without an id")?;
    eprintln!(
        "      {name}: created ({cpu} vCPU, {memory} GiB memory, {disk} GiB disk, {gpu} GPU), waiting until active"
    );
    let done = snapshot::wait(c, id).await?;
    finished(&done, name)
}

fn finished(s: &Value, name: &str) -> anyhow::Result<String> {
    match s["state"].as_str() {
        Some("active") => Ok("active".into()),
        other => anyhow::bail!(
            "general snapshot {name} ended {}: {}",
            other.unwrap_or("?"),
            s["errorReason"].as_str().unwrap_or("no reason given")
        ),
    }
}

fn status_of(e: &anyhow::Error) -> Option<reqwest::StatusCode> {
    e.downcast_ref::<ApiError>().map(|a| a.status)
}

fn is_not_found(e: &anyhow::Error) -> bool {
    status_of(e) == Some(reqwest::StatusCode::NOT_FOUND)
}

fn is_conflict(e: &anyhow::Error) -> bool {
    status_of(e) == Some(reqwest::StatusCode::CONFLICT)
}
