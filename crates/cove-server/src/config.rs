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
    /// `--database-url`: the metadata store on PostgreSQL (`None`: the embedded SQLite file
    /// `<data-dir>/cove.db`).
    pub database: Option<DatabaseUrl>,
    /// `--node-heartbeat`, `--node-lost-after`: how often a node (a server with
    /// `--database-url`) heartbeats, and how old a heartbeat makes a node lost.
    pub node_timing: crate::service::nodes::NodeTiming,
    /// `--node-address`: this node's API base URL as other nodes reach it (`None`: the
    /// public URL).
    pub node_address: Option<String>,
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

/// `--database-url`: the PostgreSQL database that holds the metadata instead of the embedded
/// SQLite file. Shown (`Debug`, `Display`) without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

/// A `--database-url` that Cove cannot use. Each says the URL without its password.
#[derive(Debug, thiserror::Error)]
pub enum BadDatabaseUrl {
    /// A `sqlite:` URL: SQLite is what no `--database-url` gives.
    #[error(
        "--database-url {url}: SQLite is the embedded default; leave --database-url out to use \
         <data-dir>/cove.db, or give a postgres:// URL"
    )]
    Sqlite {
        /// The URL, without its password.
        url: String,
    },
    /// Any scheme but `postgres` or `postgresql`.
    #[error(
        "--database-url {url}: only PostgreSQL is supported, as postgres://USER:PASSWORD@HOST:PORT/DATABASE \
         (or postgresql://…)"
    )]
    Scheme {
        /// The URL, without its password.
        url: String,
    },
    /// A PostgreSQL URL that does not parse.
    #[error("--database-url {url}: {why}")]
    Invalid {
        /// The URL, without its password.
        url: String,
        /// Why.
        why: String,
    },
}

impl DatabaseUrl {
    /// Accepts `postgres://` and `postgresql://` URLs (every option sqlx reads from them,
    /// e.g. `?host=/run/postgresql` for a unix socket directory).
    pub fn parse(s: &str) -> Result<Self, BadDatabaseUrl> {
        let s = s.trim();
        let scheme = s.split_once(':').map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("postgres" | "postgresql") => {}
            Some("sqlite") => return Err(BadDatabaseUrl::Sqlite { url: redact_url(s) }),
            _ => return Err(BadDatabaseUrl::Scheme { url: redact_url(s) }),
        }
        <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(s)
            .map_err(|e| BadDatabaseUrl::Invalid { url: redact_url(s), why: e.to_string() })?;
        Ok(DatabaseUrl(s.to_string()))
    }

    /// The URL as given, password included: for the driver only, never for a log.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// `url` with the password of its user info and any `password=` query value replaced by
/// `***`. What does not look like `scheme://…` shows only its scheme: a libpq
/// `key=value` string may hold a password anywhere. Where the user info ends is taken to be
/// the last `@` before the query, so a malformed URL loses more than its password, never less.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return match url.split_once(':') {
            Some((scheme, _))
                if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
            {
                format!("{scheme}:…")
            }
            _ => "(not a URL)".to_string(),
        };
    };
    let (authority_and_path, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let mut out = format!("{scheme}://");
    match authority_and_path.rfind('@') {
        Some(at) if authority_and_path[..at].contains(':') => {
            let user = authority_and_path[..at].split_once(':').map_or("", |(user, _)| user);
            out.push_str(user);
            out.push_str(":***");
            out.push_str(&authority_and_path[at..]);
        }
        _ => out.push_str(authority_and_path),
    }
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_never_shows_its_password() {
        let u = DatabaseUrl::parse("postgres://cove:s3cr%40t@db.example:5432/cove?sslmode=prefer").unwrap();
        assert_eq!(u.to_string(), "postgres://cove:***@db.example:5432/cove?sslmode=prefer");
        assert_eq!(format!("{u:?}"), "DatabaseUrl(postgres://cove:***@db.example:5432/cove?sslmode=prefer)");
        assert_eq!(u.expose(), "postgres://cove:s3cr%40t@db.example:5432/cove?sslmode=prefer");
        let q = DatabaseUrl::parse("postgresql://cove@localhost/cove?host=/run/postgresql&Password=hunter2").unwrap();
        assert_eq!(q.to_string(), "postgresql://cove@localhost/cove?host=/run/postgresql&Password=***");
        assert_eq!(redact_url("postgres://db/cove"), "postgres://db/cove");
        assert_eq!(
            redact_url("postgres://u:p@ss@db/cove"),
            "postgres://u:***@db/cove",
            "the last @ ends the user info"
        );
        assert_eq!(redact_url("host=db password=hunter2"), "(not a URL)");
        assert_eq!(redact_url("mysql:u:hunter2@db"), "mysql:…");
    }

    #[test]
    fn a_database_url_that_is_not_postgresql_is_refused_naming_the_flag() {
        let e = DatabaseUrl::parse("sqlite:///var/lib/cove/cove.db").unwrap_err();
        assert!(matches!(e, BadDatabaseUrl::Sqlite { .. }));
        assert!(e.to_string().starts_with("--database-url sqlite:"), "{e}");
        assert!(e.to_string().contains("leave --database-url out"), "{e}");
        let e = DatabaseUrl::parse("mysql://root:hunter2@db/cove").unwrap_err();
        assert!(matches!(e, BadDatabaseUrl::Scheme { .. }));
        assert!(e.to_string().starts_with("--database-url mysql://root:***@db/cove: only PostgreSQL"), "{e}");
        let e = DatabaseUrl::parse("postgres://cove:hunter2@db:notaport/cove").unwrap_err();
        assert!(matches!(e, BadDatabaseUrl::Invalid { .. }));
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

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

/// A duration flag that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid duration {0:?}: expected e.g. 2s, 500ms, 1m or seconds (1.5)")]
pub struct BadDuration(pub String);

/// Parses `2s`, `500ms`, `1m` or bare (possibly fractional) seconds.
pub fn parse_duration(s: &str) -> Result<Duration, BadDuration> {
    let t = s.trim();
    let bad = || BadDuration(s.to_string());
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    Duration::try_from_secs_f64(v * scale).map_err(|_| bad())
}

#[cfg(test)]
mod duration_tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_or_as_seconds() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        for bad in ["", "s", "-1s", "two", "1h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
