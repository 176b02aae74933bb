//! `cove`: the server (`cove server`) and, in later versions, the command-line client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cove_server::ServerConfig;
use cove_server::config::{DEFAULT_INACTIVE_AFTER, parse_mirror};

#[derive(Parser, Debug)]
#[command(name = "cove", version, about = "Self-hosted sandboxes and snapshots, Daytona-compatible")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the Cove server (API under /api).
    Server(ServerArgs),
}

#[derive(clap::Args, Debug)]
struct ServerArgs {
    /// Address the API listens on.
    #[arg(long, env = "COVE_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Directory for the database, blobs and unpacked images.
    #[arg(long, env = "COVE_DATA_DIR", default_value = "/var/lib/cove")]
    data_dir: PathBuf,
    /// HOST=URL: try URL before HOST when pulling (repeatable), e.g. docker.io=http://127.0.0.1:5000.
    #[arg(long = "registry-mirror", env = "COVE_REGISTRY_MIRROR", value_delimiter = ',', value_parser = parse_mirror)]
    registry_mirrors: Vec<(String, String)>,
    /// HOST:PORT reached over plain HTTP (repeatable).
    #[arg(long = "insecure-registry", env = "COVE_INSECURE_REGISTRY", value_delimiter = ',')]
    insecure_registries: Vec<String>,
    /// Region id this machine serves (repeatable); the first is the default.
    #[arg(long = "region", env = "COVE_REGION", value_delimiter = ',', default_value = "us")]
    regions: Vec<String>,
    /// Bootstrap admin API key; generated and printed once when unset.
    #[arg(long, env = "COVE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Seconds without use before a snapshot goes inactive (default: two weeks).
    #[arg(long, env = "COVE_SNAPSHOT_INACTIVE_AFTER_SECS")]
    snapshot_inactive_after_secs: Option<u64>,
    /// Seconds between inactivity sweeps.
    #[arg(long, env = "COVE_INACTIVITY_SWEEP_SECS", default_value_t = 3600)]
    inactivity_sweep_secs: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COVE_LOG")
                .unwrap_or_else(|_| "info,sqlx=warn,tower_http=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start the async runtime")?;
    match cli.command {
        Command::Server(args) => rt.block_on(server(args)),
    }
}

async fn server(a: ServerArgs) -> anyhow::Result<()> {
    let mut registries = cove_server::config::RegistryConfig::default();
    for (host, url) in a.registry_mirrors {
        registries.mirrors.entry(host).or_default().push(url);
    }
    registries.insecure = a.insecure_registries.into_iter().collect();
    let mut regions: Vec<String> = Vec::new();
    for r in a.regions {
        let r = r.trim().to_string();
        anyhow::ensure!(
            !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)),
            "invalid region id {r:?}"
        );
        if !regions.contains(&r) {
            regions.push(r);
        }
    }
    let cfg = ServerConfig {
        listen: a.listen,
        data_dir: a.data_dir,
        registries,
        regions,
        api_key: a.api_key.filter(|k| !k.is_empty()),
        inactive_after: a.snapshot_inactive_after_secs.map(Duration::from_secs).unwrap_or(DEFAULT_INACTIVE_AFTER),
        sweep_interval: Duration::from_secs(a.inactivity_sweep_secs.max(1)),
    };
    let prepared = cove_server::prepare(&cfg).await.context("start cove server")?;
    if let Some(key) = &prepared.generated_key {
        println!(
            "\nGenerated an admin API key for this server. It is shown only this once; store it now:\n\n    {key}\n\n\
             Use it with the Daytona SDKs or curl:\n\n    export DAYTONA_API_URL=http://{}/api\n    export DAYTONA_API_KEY={key}\n",
            cfg.listen
        );
    }
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down");
    };
    cove_server::serve(&cfg, prepared.state, shutdown).await.context("serve the API")
}
