//! `cove snapshot …`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

use super::client::{Client, seg};
use super::output::{self, Format};
use super::{Global, context, push};

/// Resources and placement shared by `create` and `push`.
#[derive(Args, Debug, Clone, Default)]
pub struct Resources {
    /// vCPUs.
    #[arg(long)]
    pub cpu: Option<i64>,
    /// Memory in GiB.
    #[arg(long)]
    pub memory: Option<i64>,
    /// Disk in GiB.
    #[arg(long)]
    pub disk: Option<i64>,
    /// GPUs.
    #[arg(long)]
    pub gpu: Option<i64>,
    /// Region id (default: the server's first region).
    #[arg(long)]
    pub region: Option<String>,
}

/// `cove snapshot …`.
#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Create a snapshot from an image (`--image`) or a Dockerfile (`--dockerfile`).
    Create(CreateArgs),
    /// Push a local image (Docker engine, `oci:DIR[:TAG]` or `docker-archive:FILE`) and make a snapshot of it.
    Push(push::PushArgs),
    /// List snapshots.
    List(ListArgs),
    /// Show one snapshot.
    Get {
        /// Name or id.
        name: String,
    },
    /// Make an inactive snapshot usable again.
    Activate {
        /// Name or id.
        name: String,
    },
    /// Deactivate a snapshot (it can be activated again).
    Deactivate {
        /// Name or id.
        name: String,
    },
    /// Delete a snapshot, or all of them with `--all`.
    Delete {
        /// Name or id.
        #[arg(required_unless_present = "all")]
        name: Option<String>,
        /// Delete every snapshot of your organization.
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
}

/// `cove snapshot create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Snapshot name.
    pub name: String,
    /// Image to pull, e.g. python:3.12-slim.
    #[arg(long, conflicts_with = "dockerfile", required_unless_present = "dockerfile")]
    pub image: Option<String>,
    /// Dockerfile to build; the files its COPY/ADD use are uploaded with it.
    #[arg(long)]
    pub dockerfile: Option<PathBuf>,
    /// Extra files or directories to upload with the Dockerfile (repeatable).
    #[arg(long, requires = "dockerfile")]
    pub context: Vec<PathBuf>,
    /// Entrypoint (image snapshots; a Dockerfile sets its own with ENTRYPOINT).
    #[arg(long, conflicts_with = "dockerfile")]
    pub entrypoint: Option<String>,
    #[command(flatten)]
    pub resources: Resources,
}

/// `cove snapshot list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Page (1-based).
    #[arg(long, default_value_t = 1)]
    pub page: u32,
    /// Snapshots per page.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

const TERMINAL: [&str; 3] = ["active", "error", "build_failed"];

pub async fn run(c: Client, cmd: SnapshotCommand, g: &Global) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::Create(a) => create(&c, a, g).await,
        SnapshotCommand::Push(a) => push::run(&c, a, g).await,
        SnapshotCommand::List(a) => {
            let page: Value = c.get_json(&format!("/snapshots?page={}&limit={}", a.page, a.limit)).await?;
            match g.format {
                Format::Json => output::json(&page),
                Format::Table => {
                    let items = page["items"].as_array().cloned().unwrap_or_default();
                    print_snapshots(&items);
                    println!("page {} of {} ({} snapshots)", page["page"], page["totalPages"], page["total"]);
                }
            }
            Ok(())
        }
        SnapshotCommand::Get { name } => {
            let s: Value = c.get_json(&format!("/snapshots/{}", seg(&name))).await?;
            show(&s, g);
            Ok(())
        }
        SnapshotCommand::Activate { name } => {
            let s: Value = c.post_json(&format!("/snapshots/{}/activate", seg(&name)), &json!({})).await?;
            show(&s, g);
            Ok(())
        }
        SnapshotCommand::Deactivate { name } => {
            c.post_empty(&format!("/snapshots/{}/deactivate", seg(&name))).await?;
            println!("Snapshot {name} deactivated");
            Ok(())
        }
        SnapshotCommand::Delete { name: Some(name), .. } => {
            c.delete(&format!("/snapshots/{}", seg(&name))).await?;
            println!("Snapshot {name} deleted");
            Ok(())
        }
        SnapshotCommand::Delete { name: None, .. } => {
            let mut deleted = 0;
            loop {
                let page: Value = c.get_json("/snapshots?page=1&limit=100").await?;
                let ids: Vec<String> = page["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|s| s["state"] != "removing")
                    .filter_map(|s| s["id"].as_str().map(str::to_string))
                    .collect();
                if ids.is_empty() {
                    break;
                }
                for id in ids {
                    c.delete(&format!("/snapshots/{}", seg(&id))).await?;
                    deleted += 1;
                }
            }
            println!("Deleted {deleted} snapshots");
            Ok(())
        }
    }
}

fn print_snapshots(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            vec![
                output::field(s, "name"),
                output::field(s, "state"),
                output::field(s, "imageName"),
                format!("{}/{}/{}", output::field(s, "cpu"), output::field(s, "mem"), output::field(s, "disk")),
                output::field(s, "gpu"),
                s["regionIds"]
                    .as_array()
                    .map(|r| r.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                if s["general"].as_bool() == Some(true) { "yes" } else { "" }.to_string(),
                output::field(s, "createdAt"),
            ]
        })
        .collect();
    output::table(&["NAME", "STATE", "IMAGE", "CPU/MEM/DISK", "GPU", "REGION", "GENERAL", "CREATED"], &rows);
}

fn show(s: &Value, g: &Global) {
    match g.format {
        Format::Json => output::json(s),
        Format::Table => {
            print_snapshots(std::slice::from_ref(s));
            if let Some(r) = s["errorReason"].as_str() {
                println!("\nerror: {r}");
            }
        }
    }
}

async fn create(c: &Client, a: CreateArgs, g: &Global) -> anyhow::Result<()> {
    let r = &a.resources;
    let mut body = json!({
        "name": a.name, "cpu": r.cpu, "memory": r.memory, "disk": r.disk, "gpu": r.gpu, "regionId": r.region,
    });
    let built = if let Some(df) = &a.dockerfile {
        let info = context::prepare_build(c, df, &a.context).await?;
        body["buildInfo"] = json!({ "dockerfileContent": info.dockerfile, "contextHashes": info.hashes });
        true
    } else {
        body["imageName"] = json!(a.image);
        if let Some(e) = &a.entrypoint {
            body["entrypoint"] = json!(shell_words(e));
        }
        false
    };
    let created: Value = c.post_json("/snapshots", &body).await?;
    let id = created["id"].as_str().context("the server answered without an id")?.to_string();
    eprintln!("Creating snapshot {} ({})", a.name, created["state"].as_str().unwrap_or("?"));
    let logs = built.then(|| tokio::spawn(stream_logs(c.clone(), id.clone())));
    let done = wait(c, &id).await?;
    if let Some(l) = logs {
        let _ = tokio::time::timeout(Duration::from_secs(10), l).await;
    }
    finish(&done, &a.name, g)
}

/// Waits until the snapshot reaches a terminal state.
pub async fn wait(c: &Client, id: &str) -> anyhow::Result<Value> {
    let mut last = String::new();
    loop {
        let s: Value = c.get_json(&format!("/snapshots/{}", seg(id))).await?;
        let state = s["state"].as_str().unwrap_or_default().to_string();
        if TERMINAL.contains(&state.as_str()) {
            return Ok(s);
        }
        if state != last {
            tracing::debug!(%state, "snapshot state");
            last = state;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Prints the result; a failure is an error (non-zero exit) carrying the reason.
pub fn finish(s: &Value, name: &str, g: &Global) -> anyhow::Result<()> {
    match s["state"].as_str() {
        Some("active") => {
            match g.format {
                Format::Json => output::json(s),
                Format::Table => println!("Snapshot {name} is active"),
            }
            Ok(())
        }
        _ => anyhow::bail!(
            "snapshot {name} ended {}: {}",
            s["state"].as_str().unwrap_or("?"),
            s["errorReason"].as_str().unwrap_or("no reason given")
        ),
    }
}

/// Streams the build log to stderr until the server closes it.
async fn stream_logs(c: Client, id: String) -> anyhow::Result<()> {
    let url: Value = c.get_json(&format!("/snapshots/{}/build-logs-url", seg(&id))).await?;
    let url = url["url"].as_str().context("no build log URL")?;
    let resp = c.send(c.request_url(reqwest::Method::GET, &format!("{url}?follow=true")), "GET", "build-logs").await?;
    let mut body = resp.bytes_stream();
    let mut err = std::io::stderr();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("read the build log")?;
        std::io::Write::write_all(&mut err, &chunk)?;
    }
    Ok(())
}

/// Splits an entrypoint given as one string (`"sleep infinity"`) like a shell would, for the
/// simple quoting people use on command lines.
fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for ch in s.chars() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(ch);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entrypoints_split_like_a_shell_with_simple_quotes() {
        assert_eq!(shell_words("sleep infinity"), ["sleep", "infinity"]);
        assert_eq!(shell_words(r#"sh -c "echo a b""#), ["sh", "-c", "echo a b"]);
        assert_eq!(shell_words("a '' b"), ["a", "", "b"]);
    }
}
