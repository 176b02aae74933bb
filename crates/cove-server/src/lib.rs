//! The Cove server: a Daytona-compatible HTTP API over the image store, with its metadata
//! in SQLite (or PostgreSQL with `--database-url`).
//!
//! `api` is HTTP only (routes, extractors, error mapping); `service` holds every rule and
//! background job; `store` is persistence behind a trait. Nothing here runs `runc` or
//! parses tar files: that is `cove-image`'s (and later `cove-runtime`'s) job.

pub mod api;
pub mod claims;
pub mod config;
pub mod dashboard;
pub mod datadir;
pub mod dns;
pub mod events;
pub mod forward;
pub mod keyfile;
pub mod preview;
pub mod proxy;
pub mod registry;
pub mod s3;
pub mod service;
pub mod space;
pub mod staging;
pub mod startup;
pub mod state;
pub mod store;
pub mod tls;
pub mod toolbox;

use std::sync::Arc;
use std::time::Duration;

use cove_image::ImageStore;

pub use config::ServerConfig;
pub use state::AppState;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory is not usable.
    #[error("create data directory {path}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened.
    #[error("open metadata store")]
    Store(#[source] store::StoreError),
    /// The build cache or build directories could not be opened.
    #[error("open the build service")]
    Builds(#[source] service::builds::BuildFailure),
    /// The image store could not be opened.
    #[error("open image store")]
    Images(#[source] cove_image::PullError),
    /// The secret API keys are hashed under could not be read or made.
    #[error("open the api key secret")]
    KeySecret(#[source] service::keys::KeyError),
    /// Bootstrapping keys failed.
    #[error("bootstrap api key")]
    Bootstrap(#[source] service::keys::KeyError),
    /// Resuming jobs failed.
    #[error("resume unfinished jobs")]
    Resume(#[source] service::snapshots::SnapshotError),
    /// The sandbox runtime could not be set up.
    #[error("set up the sandbox runtime")]
    Runtime(#[source] cove_runtime::RuntimeError),
    /// Reconciling sandboxes with runc failed.
    #[error("reconcile sandboxes")]
    Reconcile(#[source] service::sandboxes::SandboxError),
    /// Object storage (credentials, objects, certificate) could not be set up.
    #[error("set up object storage")]
    ObjectStorage(#[source] s3::ObjectStorageError),
    /// The built-in registry could not be opened.
    #[error("open the built-in registry")]
    Registry(#[source] registry::RegistryError),
    /// The key that encrypts stored secrets could not be read or made.
    #[error("open the secrets key")]
    Secrets(#[source] service::secrets::SecretError),
    /// The data dir's permissions or its recorded id range could not be set or checked.
    #[error("secure the data dir")]
    Secure(#[source] datadir::DataDirError),
    /// The sandboxes' DNS forwarder could not start.
    #[error("start the sandboxes' DNS forwarder")]
    Dns(#[source] dns::DnsError),
    /// The preview service (its key) could not be set up.
    #[error("set up preview links")]
    Preview(#[source] preview::PreviewError),
    /// The node could not be set up or registered (`--database-url`).
    #[error("register this node")]
    Node(#[source] service::nodes::NodeError),
    /// The installation secret for forwarding between nodes could not be read or made.
    #[error("set up forwarding between nodes")]
    Forward(#[source] forward::ForwardError),
    /// Binding the listener failed.
    #[error("listen on {addr}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A server ready to serve: state built, jobs resumed, and a key to show if one was made.
#[derive(Debug)]
pub struct Prepared {
    /// Application state.
    pub state: AppState,
    /// A freshly generated bootstrap key, to print once.
    pub generated_key: Option<String>,
    /// The sandboxes' DNS forwarder; serves until dropped.
    pub dns: dns::Forwarder,
}

/// Opens the stores, bootstraps the admin key and resumes unfinished jobs.
pub async fn prepare(cfg: &ServerConfig) -> Result<Prepared, StartError> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|source| StartError::DataDir { path: cfg.data_dir.clone(), source })?;
    datadir::secure(&cfg.data_dir, cfg.runtime.userns).map_err(StartError::Secure)?;
    datadir::check_reachable(&cfg.runtime.agent_binary, cfg.runtime.userns).map_err(StartError::Secure)?;
    let store: Arc<dyn store::Store> = match &cfg.database {
        None => Arc::new(store::SqliteStore::open(&cfg.data_dir.join("cove.db")).await.map_err(StartError::Store)?),
        Some(url) => Arc::new(store::PgStore::connect(url).await.map_err(StartError::Store)?),
    };
    let images = Arc::new(
        ImageStore::open(&cfg.data_dir, cfg.registries.clone())
            .map_err(StartError::Images)?
            .with_max_unpack_ratio(cfg.max_unpack_ratio),
    );
    let keys = service::keys::KeyService::open(store.clone(), &cfg.data_dir).map_err(StartError::KeySecret)?;
    // One ledger for registry pushes and multipart uploads: they share the org's limit.
    let staging = staging::Staging::new(cfg.uploads);
    let object_storage = s3::ObjectStorage::open(&s3::ObjectStorageConfig {
        data_dir: cfg.data_dir.clone(),
        listen: cfg.s3_listen,
        public_host: s3::host_of_url(&cfg.public_url).unwrap_or_else(|| "127.0.0.1".into()),
        staging: staging.clone(),
    })
    .map_err(StartError::ObjectStorage)?;
    let generated_key = keys.bootstrap(cfg.api_key.as_deref()).await.map_err(StartError::Bootstrap)?;
    let runtime = Arc::new(cove_runtime::Runtime::new(cfg.runtime.clone()).await.map_err(StartError::Runtime)?);
    runtime.set_disk_reserve(cfg.disk_reserve);
    space::init(&cfg.data_dir);
    let dns = service::network::start_dns(runtime.clone()).await.map_err(StartError::Dns)?;
    let builds = service::builds::BuildService::open(
        &cfg.data_dir,
        images.clone(),
        runtime.clone(),
        object_storage.store().clone(),
    )
    .map_err(StartError::Builds)?;
    let registry =
        registry::RegistryService::open(&cfg.data_dir, images.clone(), keys.clone(), &cfg.public_url, staging)
            .map_err(StartError::Registry)?;
    let content = images.content().clone();
    let snapshots = service::snapshots::SnapshotService::new(store.clone(), images, cfg.regions.clone(), builds);
    snapshots.attach_registry(registry.clone());
    let secrets = service::secrets::SecretBox::open(&cfg.data_dir).map_err(StartError::Secrets)?;
    let docker_registries = service::registries::DockerRegistryService::new(store.clone(), secrets, cfg.aws.clone());
    snapshots.attach_docker_registries(docker_registries.clone());
    // Pre-format disks of the default size so the first sandboxes skip mkfs.
    runtime.warm_disk_pool(u64::try_from(service::snapshots::DEFAULT_DISK_GIB).unwrap_or(3) * 1024);
    let toolbox_url = format!("{}/toolbox", cfg.public_url.trim_end_matches('/'));
    let preview = preview::PreviewService::open(
        store.clone(),
        runtime.clone(),
        keys.clone(),
        &cfg.data_dir,
        preview::PreviewConfig {
            domain: cfg.preview_domain.clone().unwrap_or_else(|| format!("localhost:{}", cfg.listen.port())),
            scheme: if cfg.public_url.starts_with("https://") { "https".into() } else { "http".into() },
        },
    )
    .map_err(StartError::Preview)?;
    // With --database-url this server is a node: a stable id, registered before anything
    // reads sandboxes, so that no other node counts it lost while it reconciles.
    let nodes = match &cfg.database {
        None => None,
        Some(_) => {
            let timing = cfg.node_timing.validate().map_err(StartError::Node)?;
            let id = service::nodes::load_or_create_id(&cfg.data_dir).map_err(StartError::Node)?;
            let me = service::nodes::this_machine(
                id,
                cfg.regions.first().cloned().unwrap_or_default(),
                cfg.node_address.clone().unwrap_or_else(|| cfg.public_url.trim_end_matches('/').to_string()),
                &cfg.data_dir,
                runtime.gpu_total(),
            );
            let nodes = service::nodes::NodeService::new(store.clone(), me, timing);
            nodes.register().await.map_err(StartError::Node)?;
            Some(nodes)
        }
    };
    let node_id = nodes.as_ref().map(|n| n.id().to_string());
    let forwarder = match &node_id {
        None => None,
        Some(id) => Some(forward::Forwarder::open(store.clone(), id.clone()).await.map_err(StartError::Forward)?),
    };
    let lifecycle =
        service::lifecycle::LifecycleService::new(store.clone(), runtime.clone(), content, cfg.lifecycle_minute)
            .on_node(node_id.clone());
    let sandboxes = service::sandboxes::SandboxService::new(
        store.clone(),
        runtime,
        snapshots.clone(),
        cfg.default_snapshot.clone(),
        toolbox_url,
        cfg.pids_limit,
        cfg.warm_pool,
    )
    .allow_privileged(cfg.allow_privileged)
    .on_node(node_id);
    let gate = startup::Gate::new();
    if let Some(n) = &nodes {
        sandboxes.attach_nodes(n.clone());
        tokio::spawn(n.clone().run(sandboxes.clone(), gate.clone()));
    }
    sandboxes.attach_quotas(service::quotas::QuotaService::new(store.clone(), cfg.org_quota));
    sandboxes.attach_lifecycle(lifecycle.clone());
    // Reconciliation, resumed jobs, garbage collection and the sweepers run in the background:
    // the API listens at once and holds requests until sandboxes are reconciled.
    tokio::spawn(startup::run(startup::Work {
        gate: gate.clone(),
        lifecycle,
        sandboxes: sandboxes.clone(),
        snapshots: snapshots.clone(),
        inactive_after: cfg.inactive_after,
        sweep_interval: cfg.sweep_interval,
        monitor_interval: cfg.monitor_interval,
        pool_sweep: Duration::from_secs(30).min(cfg.warm_pool.idle),
    }));
    Ok(Prepared {
        state: AppState {
            store,
            keys,
            snapshots,
            sandboxes,
            registry,
            docker_registries,
            object_storage,
            public_url: cfg.public_url.trim_end_matches('/').to_string(),
            preview,
            startup: gate,
            nodes,
            forwarder,
            started_at: chrono::Utc::now(),
        },
        generated_key,
        dns,
    })
}

/// Serves the API until `shutdown` resolves.
pub async fn serve(
    cfg: &ServerConfig,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let listener = startup::bind(cfg.listen).await.map_err(|source| StartError::Listen { addr: cfg.listen, source })?;
    let s3_listener =
        startup::bind(cfg.s3_listen).await.map_err(|source| StartError::Listen { addr: cfg.s3_listen, source })?;
    let s3 = tokio::spawn(state.object_storage.clone().serve(s3_listener));
    tracing::info!(addr = %cfg.listen, data_dir = %cfg.data_dir.display(), regions = ?cfg.regions, "cove server listening");
    // The peer address feeds the preview proxy's X-Forwarded-For.
    let app = api::app(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    // A clean stop lets requests in flight finish, but not forever: a followed log, a
    // long poll or a slow client would otherwise hold the process (and the sandboxes'
    // network lockdown after it) for as long as it lasts.
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let signalled = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let serving = axum::serve(listener, app).with_graceful_shutdown(signalled).into_future();
    let grace = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let served = tokio::select! {
        r = serving => r.map_err(|source| StartError::Listen { addr: cfg.listen, source }),
        () = grace => {
            tracing::warn!(grace_secs = SHUTDOWN_GRACE.as_secs(), "requests still open at shutdown after the grace period; closing them");
            Ok(())
        }
    };
    tracing::info!("API closed");
    s3.abort();
    served
}

/// How long a clean stop waits for requests in flight before closing them.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
