//! What the in-process server tests share: a server configuration that starts no sandbox
//! and touches nothing of the host's beyond its own bridge, and the teardown of that bridge.

use std::path::Path;
use std::time::Duration;

use cove_server::ServerConfig;
use cove_server::config::{RegistryConfig, RuntimeConfig};

/// The host names a test server's plumbing uses (each test file its own).
pub struct Plumbing<'a> {
    /// The bridge (and so the nftables tables `cove_<bridge>`).
    pub bridge: &'a str,
    /// Its network.
    pub cidr: &'a str,
    /// The cgroup parent.
    pub cgroup_parent: &'a str,
    /// The netns/veth name prefix.
    pub name_prefix: &'a str,
}

/// A server in `dir` with admin key `key`, regions `us` and `eu`, no warm pool, no egress
/// (these tests must not turn on forwarding on the host's uplink), hour-long sweeps and the
/// SQLite store; tests override what they need with struct update syntax.
pub fn server_config(dir: &Path, key: &str, net: Plumbing<'_>) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        registries: RegistryConfig::default(),
        max_unpack_ratio: cove_server::config::DEFAULT_MAX_UNPACK_RATIO,
        disk_reserve: 0,
        regions: vec!["us".into(), "eu".into()],
        api_key: Some(key.into()),
        inactive_after: Duration::from_secs(3600),
        sweep_interval: Duration::from_secs(3600),
        runtime: RuntimeConfig {
            root: dir.join("sandboxes"),
            runc_root: dir.join("runc"),
            agent_binary: "/bin/busybox".into(),
            bridge: net.bridge.into(),
            cidr: net.cidr.into(),
            cgroup_parent: net.cgroup_parent.into(),
            name_prefix: net.name_prefix.into(),
            seccomp_profile: None,
            userns: "100000:65536".parse().unwrap(),
            ca_bundle: None,
            egress: false,
            allow_private: vec![],
            cdi_spec_dirs: vec![],
            sparse_disks: false,
            native_launcher: true,
        },
        default_snapshot: None,
        // Not the host of any image the tests name: those must be remote (unreachable)
        // registries, not this server's built-in one.
        public_url: "http://127.0.0.1:2".into(),
        s3_listen: "127.0.0.1:0".parse().unwrap(),
        monitor_interval: Duration::from_secs(3600),
        pids_limit: 64,
        warm_pool: cove_server::service::sandboxes::WarmPoolConfig { size: 0, idle: Duration::from_secs(60) },
        allow_privileged: false,
        aws: Default::default(),
        org_quota: cove_server::service::quotas::DEFAULT_LIMITS,
        preview_domain: None,
        lifecycle_minute: Duration::from_secs(60),
        uploads: Default::default(),
        database: None,
        node_timing: Default::default(),
        node_address: None,
    }
}

/// Takes down what a server made on the host and leaves when it stops (its sandboxes would
/// outlive it; these tests start none): `bridge` and its two nftables tables.
pub fn remove_bridge(bridge: &str) {
    for family in ["inet", "bridge"] {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", family, &format!("cove_{bridge}")])
            .stderr(std::process::Stdio::null())
            .status();
    }
    let _ =
        std::process::Command::new("ip").args(["link", "delete", bridge]).stderr(std::process::Stdio::null()).status();
}
