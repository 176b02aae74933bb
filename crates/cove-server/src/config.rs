//! Server configuration, as parsed from flags and `COVE_*` variables by the binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use cove_image::RegistryConfig;
pub use cove_image::store::DEFAULT_MAX_UNPACK_RATIO;
pub use cove_runtime::RuntimeConfig;
pub use cove_runtime::netpolicy::Ipv4Net;
pub use cove_runtime::userns::IdRange;

/// Two weeks: unused snapshots go inactive after this long.
pub const DEFAULT_INACTIVE_AFTER: Duration = Duration::from_secs(14 * 24 * 3600);

/// Everything `cove server` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the API listens.
    pub listen: SocketAddr,
    /// Root of all state: database, blobs, images.
    pub data_dir: PathBuf,
    /// Mirrors and insecure registries.
    pub registries: RegistryConfig,
    /// `--max-unpack-ratio`: images may unpack to this many times their compressed layers
    /// (never less than 64 MiB; 0: only the disk size limits them).
    pub max_unpack_ratio: u64,
    /// Regions served; the first is the default.
    pub regions: Vec<String>,
    /// The bootstrap admin key, when given.
    pub api_key: Option<String>,
    /// Inactivity period before a snapshot is deactivated.
    pub inactive_after: Duration,
    /// How often to look for inactive snapshots.
    pub sweep_interval: Duration,
    /// Where and how sandboxes run.
    pub runtime: RuntimeConfig,
    /// Snapshot used by `POST /sandbox` when the request names none.
    pub default_snapshot: Option<String>,
    /// How clients reach this server (the toolbox proxy URL is derived from it).
    pub public_url: String,
    /// Where the S3-compatible object storage endpoint (HTTPS) listens.
    pub s3_listen: SocketAddr,
    /// How often to check that started sandboxes are still running.
    pub monitor_interval: Duration,
    /// Processes allowed in one sandbox.
    pub pids_limit: u32,
    /// The warm pool of prepared sandboxes.
    pub warm_pool: crate::service::sandboxes::WarmPoolConfig,
    /// `--allow-privileged`: admin keys may create privileged sandboxes (off by default).
    pub allow_privileged: bool,
    /// STS and ECR endpoints for ECR registries (`None`: AWS's regional endpoints).
    pub aws: crate::service::ecr::AwsEndpoints,
    /// Every organization's quota unless an admin set its own (`--org-quota-*`).
    pub org_quota: crate::service::quotas::Limits,
    /// `--lifecycle-minute-secs`: how long a "minute" of the sandboxes' auto-stop, auto-archive
    /// and auto-delete intervals lasts (60 s; tests use 1 s). The lifecycle sweep runs every
    /// quarter of it.
    pub lifecycle_minute: Duration,
    /// `--preview-domain`: `host[:port]` under which `{port}-{sandboxId}` preview host names
    /// are served (`None`: `localhost:{listen port}`, which resolves with no DNS set-up).
    pub preview_domain: Option<String>,
    /// `--disk-reserve`: bytes that must stay free on the data filesystem after a sandbox's
    /// disk is allocated (for the database and the blobs).
    pub disk_reserve: u64,
    /// `--upload-idle-secs`, `--upload-staging-limit-mib`: how long abandoned registry and
    /// object-storage uploads keep their bytes, and how many bytes one organization's
    /// unfinished uploads may stage.
    pub uploads: crate::registry::upload::UploadLimits,
}

/// A `--registry-mirror HOST=URL` value that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid registry mirror {0:?}: expected HOST=URL, e.g. docker.io=http://127.0.0.1:5000")]
pub struct BadMirror(pub String);

/// Parses `HOST=URL`.
pub fn parse_mirror(s: &str) -> Result<(String, String), BadMirror> {
    let (host, url) = s.split_once('=').ok_or_else(|| BadMirror(s.to_string()))?;
    let host = host.trim();
    let url = url.trim().trim_end_matches('/');
    let ok_url = (url.starts_with("http://") || url.starts_with("https://")) && url.len() > "https://".len();
    if host.is_empty() || !ok_url {
        return Err(BadMirror(s.to_string()));
    }
    let host = if host == "index.docker.io" || host == "registry-1.docker.io" { "docker.io" } else { host };
    Ok((host.to_string(), url.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_parse_as_host_equals_url() {
        assert_eq!(
            parse_mirror("docker.io=http://127.0.0.1:5000/").unwrap(),
            ("docker.io".into(), "http://127.0.0.1:5000".into())
        );
        assert_eq!(parse_mirror("index.docker.io=https://m.example").unwrap().0, "docker.io");
        for bad in ["docker.io", "=http://x", "docker.io=ftp://x", "docker.io=http://"] {
            assert!(parse_mirror(bad).is_err(), "{bad}");
        }
    }
}

/// A `--disk-reserve` value that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid disk reserve {0:?}: expected bytes with an optional K, M, G or T (binary) suffix, e.g. 1G or 512M")]
pub struct BadSize(pub String);

/// Parses `1G`, `512MiB`, `1048576` (binary units) into bytes.
pub fn parse_size(s: &str) -> Result<u64, BadSize> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| BadSize(s.into()))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(BadSize(s.into())),
    };
    n.checked_mul(1 << shift).ok_or_else(|| BadSize(s.into()))
}
