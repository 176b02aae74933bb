//! `cove`: the server (`cove server`) and the command-line client (`cove login`,
//! `cove snapshot …`, `cove sandbox …`, `cove registry …`, `cove api-key …`; see `cli`).

mod cli;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cove_server::ServerConfig;
use cove_server::config::{DEFAULT_INACTIVE_AFTER, parse_mirror};

/// `--sandbox-disks`: how a sandbox's disk takes room on the data filesystem.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum SandboxDisks {
    /// The disk's full size is allocated at create.
    Allocated,
    /// Only what the sandbox writes takes room.
    Sparse,
}

/// `--launcher`: what starts sandbox containers.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Launcher {
    /// Cove's own launcher (`cove_runtime::launch`); configs it does not cover go to runc.
    Native,
    /// runc for every sandbox.
    Runc,
}

#[derive(Parser, Debug)]
#[command(name = "cove", version, about = "Self-hosted sandboxes and snapshots, Daytona-compatible")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    global: cli::Global,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the Cove server (API under /api).
    Server(Box<ServerArgs>),
    /// The local certificate authority of the object storage endpoint.
    #[command(subcommand)]
    Tls(TlsCommand),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

#[derive(Subcommand, Debug)]
enum TlsCommand {
    /// Create the CA under DATA_DIR/tls/ unless it exists.
    Init(TlsArgs),
    /// Install DATA_DIR/tls/ca.pem into the system trust store (creating the CA if needed).
    Trust(TlsArgs),
    /// Remove DATA_DIR/tls/ca.pem from the system trust store.
    Untrust(TlsArgs),
}

#[derive(clap::Args, Debug)]
struct TlsArgs {
    /// The server's data directory.
    #[arg(long, env = "COVE_DATA_DIR", default_value = "/var/lib/cove")]
    data_dir: PathBuf,
}

#[derive(clap::Args, Debug)]
struct ServerArgs {
    /// Address the API listens on.
    #[arg(long, env = "COVE_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Directory for the database, blobs and unpacked images.
    #[arg(long, env = "COVE_DATA_DIR", default_value = "/var/lib/cove")]
    data_dir: PathBuf,
    /// Keep the metadata in PostgreSQL instead of the embedded SQLite file DATA_DIR/cove.db:
    /// postgres://USER:PASSWORD@HOST:PORT/DATABASE (logged without the password).
    #[arg(long, env = "COVE_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// With --database-url: how often this node records its heartbeat and looks for lost
    /// nodes (`2s`, `500ms`, or seconds: `1.5`).
    #[arg(long, env = "COVE_NODE_HEARTBEAT", default_value = "2s", value_parser = cove_server::config::parse_duration)]
    node_heartbeat: Duration,
    /// With --database-url: a node whose last heartbeat is older than this is marked lost and
    /// its running sandboxes `error` "node lost" (at least two heartbeats).
    #[arg(long, env = "COVE_NODE_LOST_AFTER", default_value = "10s", value_parser = cove_server::config::parse_duration)]
    node_lost_after: Duration,
    /// With --database-url: this node's API base URL as other nodes reach it (default:
    /// --public-url).
    #[arg(long, env = "COVE_NODE_ADDRESS")]
    node_address: Option<String>,
    /// HOST=URL: try URL before HOST when pulling (repeatable), e.g. docker.io=http://127.0.0.1:5000.
    #[arg(long = "registry-mirror", env = "COVE_REGISTRY_MIRROR", value_delimiter = ',', value_parser = parse_mirror)]
    registry_mirrors: Vec<(String, String)>,
    /// HOST:PORT reached over plain HTTP (repeatable).
    #[arg(long = "insecure-registry", env = "COVE_INSECURE_REGISTRY", value_delimiter = ',')]
    insecure_registries: Vec<String>,
    /// An image may unpack to this many times the size of its compressed layers (never less
    /// than 64 MiB; 0: no such limit), and never to more than the disk size of the snapshot
    /// or sandbox it is for. Real images expand 2-10 times; layer bombs 1000 times and more.
    #[arg(long, env = "COVE_MAX_UNPACK_RATIO", default_value_t = cove_server::config::DEFAULT_MAX_UNPACK_RATIO)]
    max_unpack_ratio: u64,
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
    /// Snapshot for `POST /api/sandbox` requests that name none (the general snapshot that
    /// `cove image bootstrap --general` makes; an empty value: none).
    #[arg(long, env = "COVE_DEFAULT_SNAPSHOT", default_value = "cove-small")]
    default_snapshot: Option<String>,
    /// URL clients use to reach this server (toolboxProxyUrl is derived from it); default http://LISTEN.
    #[arg(long, env = "COVE_PUBLIC_URL")]
    public_url: Option<String>,
    /// `HOST[:PORT]` under which preview URLs `{port}-{sandboxId}.HOST[:PORT]` are served
    /// (a wildcard DNS name pointing here); default localhost:LISTEN-PORT, which browsers
    /// and curl resolve to this machine with no DNS set-up. The scheme is --public-url's.
    #[arg(long, env = "COVE_PREVIEW_DOMAIN")]
    preview_domain: Option<String>,
    /// Seconds in a "minute" of the sandboxes' autoStop/autoArchive/autoDelete intervals
    /// (tests use 1 so that nothing waits minutes); the lifecycle sweep runs 4 times per one.
    #[arg(long, env = "COVE_LIFECYCLE_MINUTE_SECS", default_value_t = 60)]
    lifecycle_minute_secs: u64,
    /// Seconds an unfinished registry push or object-storage multipart upload may sit
    /// without a request before its staged bytes are deleted (tests use a few).
    #[arg(long, env = "COVE_UPLOAD_IDLE_SECS", default_value_t = 300)]
    upload_idle_secs: u64,
    /// MiB one organization's unfinished uploads (registry pushes, multipart uploads) may
    /// stage together; a new upload past it is refused with 403 naming the limit.
    #[arg(long, env = "COVE_UPLOAD_STAGING_LIMIT_MIB", default_value_t = 10240)]
    upload_staging_limit_mib: u64,
    /// Space that must stay free on the data filesystem for the database and the blobs:
    /// a create whose disk (allocated in full) would eat into it is refused with 409 naming
    /// free and needed bytes. Bytes with an optional K, M, G or T suffix.
    #[arg(long, env = "COVE_DISK_RESERVE", default_value = "1G", value_parser = cove_server::config::parse_size)]
    disk_reserve: u64,
    /// How sandbox disks take room on the data filesystem: `allocated` (each disk's full size
    /// at create, so one sandbox filling its disk never fails another's writes; creates past
    /// the free space are refused) or `sparse` (only what is written; many more sandboxes fit,
    /// but a full data filesystem fails writes in every sandbox, which then go read-only and
    /// are reported `error`).
    #[arg(long, env = "COVE_SANDBOX_DISKS", value_enum, default_value_t = SandboxDisks::Allocated)]
    sandbox_disks: SandboxDisks,
    /// What starts sandbox containers: `native` (Cove's launcher, the same isolation without
    /// a runc process per create; privileged and GPU sandboxes, and hosts without cgroup v1,
    /// still go to runc) or `runc` (runc for every sandbox). Build steps always use runc.
    #[arg(long, env = "COVE_LAUNCHER", value_enum, default_value_t = Launcher::Native)]
    launcher: Launcher,
    /// Address of the S3-compatible object storage endpoint (HTTPS; storageUrl uses --public-url's host).
    #[arg(long, env = "COVE_S3_LISTEN", default_value = "127.0.0.1:9443")]
    s3_listen: SocketAddr,
    /// Private IPv4 range for sandbox addresses; the first address is the bridge's.
    #[arg(long, env = "COVE_SANDBOX_CIDR", default_value = "10.213.0.0/16")]
    sandbox_cidr: String,
    /// Name of the host bridge sandboxes are attached to.
    #[arg(long, env = "COVE_BRIDGE", default_value = "cove0")]
    bridge: String,
    /// Sandboxes and build steps reach the outside world through the host (IPv4 NAT out of
    /// the default route); `--sandbox-egress=false` keeps them on the bridge (the server's
    /// DNS forwarder still answers, linked sandboxes still reach each other).
    #[arg(long, env = "COVE_SANDBOX_EGRESS", default_value_t = true, action = clap::ArgAction::Set)]
    sandbox_egress: bool,
    /// Private ranges (RFC 1918, CGNAT) sandboxes may reach after all, comma-separated CIDRs
    /// (e.g. a company network); by default every such range is blocked, as are the host,
    /// other sandboxes, loopback and link-local (cloud metadata), whatever this says.
    #[arg(long, env = "COVE_SANDBOX_ALLOW_PRIVATE", value_delimiter = ',')]
    sandbox_allow_private: Vec<String>,
    /// Directory of CDI specs the GPUs are read from at start (repeatable; a later one's device
    /// replaces an earlier one's of the same name). Write one with
    /// `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`; an empty value: no GPUs.
    #[arg(long = "cdi-spec-dir", env = "COVE_CDI_SPEC_DIR", value_delimiter = ',', default_values = ["/etc/cdi", "/var/run/cdi"])]
    cdi_spec_dirs: Vec<PathBuf>,
    /// PEM certificates every sandbox and build step trusts besides its image's own (a
    /// TLS-intercepting proxy's CA): merged with the image's bundle at /etc/cove/ca-certificates.crt,
    /// with SSL_CERT_FILE, PIP_CERT, REQUESTS_CA_BUNDLE, NODE_EXTRA_CA_CERTS, CURL_CA_BUNDLE and
    /// GIT_SSL_CAINFO pointing at it.
    #[arg(long, env = "COVE_SANDBOX_CA_BUNDLE")]
    sandbox_ca_bundle: Option<PathBuf>,
    /// Cgroup under which each sandbox gets its own.
    #[arg(long, env = "COVE_CGROUP_PARENT", default_value = "/cove")]
    cgroup_parent: String,
    /// Prefix of network namespace and veth names.
    #[arg(long, env = "COVE_NET_PREFIX", default_value = "cv")]
    net_prefix: String,
    /// runc's state directory.
    #[arg(long, env = "COVE_RUNC_ROOT", default_value = "/run/cove/runc")]
    runc_root: PathBuf,
    /// The static in-sandbox agent (default: cove-agent next to this binary).
    #[arg(long, env = "COVE_AGENT_BINARY")]
    agent_binary: Option<PathBuf>,
    /// Processes allowed in one sandbox (a fork bomb stops there).
    #[arg(long, env = "COVE_SANDBOX_PIDS_LIMIT", default_value_t = 4096)]
    sandbox_pids_limit: u32,
    /// Sandboxes kept prepared (created, not yet started) per recently used snapshot, so that
    /// a create costs one `runc start`; 0 disables the warm pool.
    #[arg(long, env = "COVE_WARM_POOL_SIZE", default_value_t = 2)]
    warm_pool_size: usize,
    /// Prepared sandboxes of a snapshot are removed after this many seconds without a create.
    #[arg(long, env = "COVE_WARM_POOL_IDLE_SECS", default_value_t = 600)]
    warm_pool_idle_secs: u64,
    /// Allow privileged sandboxes (`privileged: true`, every capability, no seccomp), for
    /// admin API keys only; without it such requests are refused with 403.
    #[arg(long, env = "COVE_ALLOW_PRIVILEGED")]
    allow_privileged: bool,
    /// Host ids for sandboxes' user namespaces, `START:COUNT` (sandbox root is host id
    /// START). Default: the `cove` entry of /etc/subuid and /etc/subgid, reserved there on
    /// first start when missing. A data dir keeps the range it was first used with.
    #[arg(long, env = "COVE_USERNS_RANGE")]
    userns_range: Option<cove_server::config::IdRange>,
    /// Sandboxes one organization may have (any state but deleted), unless an admin set its
    /// own quota with `PUT /api/organizations/{id}/quota`.
    #[arg(long, env = "COVE_ORG_QUOTA_SANDBOXES", default_value_t = 100)]
    org_quota_sandboxes: i64,
    /// vCPUs one organization's sandboxes may hold together (default: unlimited).
    #[arg(long, env = "COVE_ORG_QUOTA_CPU")]
    org_quota_cpu: Option<i64>,
    /// Memory in GiB one organization's sandboxes may hold together (default: unlimited).
    #[arg(long, env = "COVE_ORG_QUOTA_MEMORY")]
    org_quota_memory: Option<i64>,
    /// Disk in GiB one organization's sandboxes may hold together (default: unlimited).
    #[arg(long, env = "COVE_ORG_QUOTA_DISK")]
    org_quota_disk: Option<i64>,
    /// Docker-format seccomp profile applied to unprivileged sandboxes.
    #[arg(long, env = "COVE_SECCOMP_PROFILE")]
    seccomp_profile: Option<PathBuf>,
    /// STS endpoint for ECR registries' AssumeRole (default: https://sts.REGION.amazonaws.com).
    #[arg(long, env = "COVE_STS_ENDPOINT")]
    sts_endpoint: Option<String>,
    /// ECR API endpoint for GetAuthorizationToken (default: https://api.ecr.REGION.amazonaws.com).
    #[arg(long, env = "COVE_ECR_ENDPOINT")]
    ecr_endpoint: Option<String>,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The cause chain on one line (no backtrace, even with RUST_BACKTRACE set).
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The server logs at info; client commands print their own output and only warnings.
    let default_filter =
        if matches!(cli.command, Command::Server(_)) { "info,sqlx=warn,tower_http=info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COVE_LOG").unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start the async runtime")?;
    match cli.command {
        Command::Server(args) => rt.block_on(server(*args)),
        Command::Tls(cmd) => tls(cmd),
        Command::Client(cmd) => rt.block_on(cli::run(cmd, cli.global)),
    }
}

async fn server(a: ServerArgs) -> anyhow::Result<()> {
    // Checked before anything starts; an empty value is the embedded SQLite file, as unset.
    let database = a
        .database_url
        .filter(|u| !u.trim().is_empty())
        .map(|u| cove_server::config::DatabaseUrl::parse(&u))
        .transpose()?;
    let node_timing =
        cove_server::service::nodes::NodeTiming { heartbeat: a.node_heartbeat, lost_after: a.node_lost_after }
            .validate()?;
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
    let agent_binary = match a.agent_binary {
        Some(p) => p,
        None => std::env::current_exe().context("find this binary")?.with_file_name("cove-agent"),
    };
    anyhow::ensure!(
        agent_binary.is_file(),
        "the sandbox agent {} is missing: build it with `make build` (or pass --agent-binary)",
        agent_binary.display()
    );
    // runc resolves bind-mount sources from the bundle directory: the path must be absolute.
    let agent_binary = std::fs::canonicalize(&agent_binary).context("resolve --agent-binary")?;
    let public_url = a.public_url.unwrap_or_else(|| {
        let host = if a.listen.ip().is_unspecified() { "127.0.0.1".to_string() } else { a.listen.ip().to_string() };
        format!("http://{host}:{}", a.listen.port())
    });
    // Each sandbox's agent socket is <data-dir>/sandboxes/<uuid>/toolbox/toolbox.sock, and unix
    // socket paths are limited to 107 bytes.
    let data_len = a.data_dir.as_os_str().len();
    anyhow::ensure!(
        data_len <= 50,
        "--data-dir {} is {data_len} bytes long; at most 50 are allowed so that sandbox agent sockets fit the 107-byte unix socket limit",
        a.data_dir.display()
    );
    let runtime = cove_server::config::RuntimeConfig {
        root: a.data_dir.join("sandboxes"),
        runc_root: a.runc_root,
        agent_binary,
        bridge: a.bridge,
        cidr: a.sandbox_cidr,
        cgroup_parent: a.cgroup_parent,
        name_prefix: a.net_prefix,
        seccomp_profile: a.seccomp_profile,
        egress: a.sandbox_egress,
        allow_private: a
            .sandbox_allow_private
            .iter()
            .filter(|c| !c.trim().is_empty())
            .map(|c| {
                cove_server::config::Ipv4Net::parse(c.trim()).with_context(|| format!("--sandbox-allow-private {c}"))
            })
            .collect::<anyhow::Result<_>>()?,
        ca_bundle: a.sandbox_ca_bundle,
        cdi_spec_dirs: a.cdi_spec_dirs.into_iter().filter(|d| !d.as_os_str().is_empty()).collect(),
        sparse_disks: a.sandbox_disks == SandboxDisks::Sparse,
        native_launcher: a.launcher == Launcher::Native,
        userns: match a.userns_range {
            Some(r) => r,
            None => cove_server::config::IdRange::from_subid_files(
                Path::new("/etc/subuid"),
                Path::new("/etc/subgid"),
                Path::new("/etc/passwd"),
                Path::new("/etc/group"),
            )
            .context("choose the sandboxes' id range (or pass --userns-range)")?,
        },
    };
    let quota = [
        a.org_quota_sandboxes,
        a.org_quota_cpu.unwrap_or(0),
        a.org_quota_memory.unwrap_or(0),
        a.org_quota_disk.unwrap_or(0),
    ];
    anyhow::ensure!(quota.iter().all(|v| *v >= 0), "--org-quota-* values must not be negative");
    let cfg = ServerConfig {
        listen: a.listen,
        data_dir: a.data_dir,
        registries,
        max_unpack_ratio: a.max_unpack_ratio,
        regions,
        api_key: a.api_key.filter(|k| !k.is_empty()),
        inactive_after: a.snapshot_inactive_after_secs.map(Duration::from_secs).unwrap_or(DEFAULT_INACTIVE_AFTER),
        sweep_interval: Duration::from_secs(a.inactivity_sweep_secs.max(1)),
        runtime,
        default_snapshot: a.default_snapshot.filter(|s| !s.is_empty()),
        public_url,
        s3_listen: a.s3_listen,
        monitor_interval: Duration::from_secs(2),
        pids_limit: a.sandbox_pids_limit.max(16),
        warm_pool: cove_server::service::sandboxes::WarmPoolConfig {
            size: a.warm_pool_size.min(64),
            idle: Duration::from_secs(a.warm_pool_idle_secs.max(1)),
        },
        allow_privileged: a.allow_privileged,
        org_quota: cove_server::service::quotas::Limits {
            sandboxes: Some(a.org_quota_sandboxes),
            cpu: a.org_quota_cpu,
            memory: a.org_quota_memory,
            disk: a.org_quota_disk,
        },
        preview_domain: a.preview_domain.map(|d| d.trim().to_string()).filter(|d| !d.is_empty()),
        disk_reserve: a.disk_reserve,
        lifecycle_minute: Duration::from_secs(a.lifecycle_minute_secs.max(1)),
        uploads: cove_server::registry::upload::UploadLimits {
            idle: Duration::from_secs(a.upload_idle_secs.max(1)),
            org_bytes: a.upload_staging_limit_mib.saturating_mul(1 << 20),
        },
        aws: cove_server::service::ecr::AwsEndpoints {
            sts: a.sts_endpoint.filter(|u| !u.is_empty()).map(|u| u.trim_end_matches('/').to_string()),
            ecr: a.ecr_endpoint.filter(|u| !u.is_empty()).map(|u| u.trim_end_matches('/').to_string()),
        },
        database,
        node_timing,
        node_address: a.node_address.map(|u| u.trim().trim_end_matches('/').to_string()).filter(|u| !u.is_empty()),
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
    let sandboxes = prepared.state.sandboxes.clone();
    let dns = prepared.dns;
    let served = cove_server::serve(&cfg, prepared.state, shutdown).await.context("serve the API");
    // Started sandboxes keep running; the prepared ones nobody asked for go. Their network is
    // fenced off while no server answers their DNS or applies their policies.
    sandboxes.drain_pool().await;
    tracing::info!("warm pool drained");
    sandboxes.shutdown_network().await;
    dns.shutdown();
    tracing::info!("stopped");
    served
}

fn tls(cmd: TlsCommand) -> anyhow::Result<()> {
    use cove_server::tls::{TrustOutcome, TrustStore, ensure_ca, trust, untrust};
    let store = TrustStore::debian();
    match cmd {
        TlsCommand::Init(a) => {
            let ca = ensure_ca(&a.data_dir).context("create the certificate authority")?;
            let verb = if ca.created { "created" } else { "exists" };
            println!("CA {verb}: {} (sha256 {})", ca.cert_path.display(), ca.fingerprint);
        }
        TlsCommand::Trust(a) => match trust(&a.data_dir, &store).context("trust the certificate authority")? {
            TrustOutcome::Installed(p) => println!(
                "installed {} as {} and ran update-ca-certificates",
                cove_server::s3::ca_path(&a.data_dir).display(),
                p.display()
            ),
            TrustOutcome::AlreadyTrusted(p) => println!("already trusted: {}", p.display()),
            other => println!("{other:?}"),
        },
        TlsCommand::Untrust(a) => match untrust(&a.data_dir, &store).context("untrust the certificate authority")? {
            TrustOutcome::Removed(p) => println!("removed {} and ran update-ca-certificates", p.display()),
            TrustOutcome::NotTrusted(p) => println!("not trusted: {} does not exist", p.display()),
            other => println!("{other:?}"),
        },
    }
    Ok(())
}
