//! Stores for tests, of either engine: [`open`] makes a fresh, migrated one, and
//! [`each_store!`](crate::store::testing::each_store) runs a test once per engine.
//!
//! Built for the crate's own tests and, with the `test-support` feature, for its
//! integration tests (`tests/forward.rs`); not part of the server.
//!
//! PostgreSQL tests share one throw-away cluster per test binary, started at first use:
//! `initdb` into a temp dir and `postgres` listening only on a unix socket in it (no TCP
//! port, so parallel test binaries never collide), with a fresh database per test. As root it
//! runs as `nobody` (PostgreSQL refuses root). It runs under a small shell that
//! `setpriv --pdeathsig` ties to this process: when the test binary exits, however it exits,
//! the shell stops the server and deletes the temp dir. Missing PostgreSQL binaries fail the
//! PostgreSQL variants with a message to run `make setup`; they are never skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sqlx::Connection as _;

use super::{PgStore, SandboxRecord, SqliteStore, Store};
use crate::config::DatabaseUrl;
use cove_types::SandboxState;

/// Which engine a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The embedded file.
    Sqlite,
    /// A fresh database on the test binary's PostgreSQL cluster.
    Postgres,
}

/// A fresh, empty, migrated store of `kind`; `dir` holds the SQLite file (and whatever else
/// the test keeps there).
pub async fn open(kind: Kind, dir: &Path) -> Arc<dyn Store> {
    match kind {
        Kind::Sqlite => Arc::new(SqliteStore::open(&dir.join("cove.db")).await.expect("open the SQLite store")),
        Kind::Postgres => Arc::new(PgStore::connect(&fresh_database().await).await.expect("open the PostgreSQL store")),
    }
}

/// Runs each named `async fn(Kind)` once per engine, as the tests `<name>::on_sqlite` and
/// `<name>::on_postgres`.
#[cfg(test)]
macro_rules! each_store {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[::tokio::test]
            async fn on_sqlite() {
                super::$name($crate::store::testing::Kind::Sqlite).await
            }

            #[::tokio::test]
            async fn on_postgres() {
                super::$name($crate::store::testing::Kind::Postgres).await
            }
        }
    )*};
}
#[cfg(test)]
pub(crate) use each_store;

/// The superuser `initdb` makes (trusted on the socket).
const SUPERUSER: &str = "cove";
/// The port in the socket's name (`.s.PGSQL.5432`); nothing listens on TCP.
const PORT: u16 = 5432;

/// The test binary's running cluster.
#[derive(Debug)]
struct Cluster {
    /// The temp dir: `data/`, the socket, `postgres.log`.
    dir: PathBuf,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// A new database on the cluster (started at first use), as a URL.
pub async fn fresh_database() -> DatabaseUrl {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let cluster = match CLUSTER.get_or_init(Cluster::start) {
        Ok(c) => c,
        Err(why) => panic!("{why}"),
    };
    let admin = cluster.url("postgres");
    let mut conn = sqlx::PgConnection::connect(admin.expose()).await.expect("connect to the test cluster");
    let name = format!("test_{}", NEXT.fetch_add(1, Ordering::Relaxed));
    // An ICU English default collation, not "C": a text column that sorted by the database's
    // locale instead of by bytes (as SQLite does) would fail the ordering tests.
    let icu = format!("CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'");
    if sqlx::query(&icu).execute(&mut conn).await.is_err() {
        // A server built without ICU.
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create a test database");
    }
    cluster.url(&name)
}

impl Cluster {
    /// `initdb`, then the server under its supervising shell; waits until it accepts
    /// connections.
    fn start() -> Result<Cluster, String> {
        let bin = pg_bin_dir().ok_or_else(|| {
            "PostgreSQL server binaries (initdb, postgres) not found in $COVE_TEST_PG_BIN, /usr/lib/postgresql/*/bin \
             or PATH: run `make setup` (it installs postgresql-15), or point COVE_TEST_PG_BIN at their directory"
                .to_string()
        })?;
        let dir = tempfile::Builder::new()
            .prefix("cove-test-pg-")
            .tempdir()
            .map_err(|e| format!("make the PostgreSQL test dir: {e}"))?
            .keep();
        // PostgreSQL refuses to run as root: as root, the cluster belongs to `nobody`.
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
        let user = if root {
            let (uid, gid) = nobody().ok_or("no user `nobody` in /etc/passwd to run the PostgreSQL test cluster")?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", dir.display()))?;
            vec![format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".to_string()]
        } else {
            Vec::new()
        };
        let as_user = |program: &Path| {
            let mut c = Command::new("setpriv");
            c.args(&user).arg("--").arg(program).current_dir(&dir);
            c
        };
        let out = as_user(&bin.join("initdb"))
            .arg("--pgdata")
            .arg(dir.join("data"))
            .args(["--username", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"])
            .output()
            .map_err(|e| format!("run setpriv (util-linux) for initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let log = std::fs::File::create(dir.join("postgres.log")).map_err(|e| format!("create postgres.log: {e}"))?;
        // The shell stops the server (immediate shutdown: the data is thrown away) and deletes
        // the dir when this process goes (`--pdeathsig`), or when the server stops by itself.
        let script = r#"dir=$1; shift
            trap 'kill -QUIT $pid 2>/dev/null; wait $pid; rm -rf "$dir"; exit 0' TERM
            "$@" & pid=$!
            wait $pid; rm -rf "$dir""#;
        let mut supervisor = Command::new("setpriv");
        supervisor
            .args(&user)
            .args(["--pdeathsig", "TERM", "--", "sh", "-c", script, "sh"])
            .arg(&dir)
            .arg(bin.join("postgres"))
            .arg("-D")
            .arg(dir.join("data"))
            .arg("-k")
            .arg(&dir)
            .arg(format!("--port={PORT}"))
            .args(["-c", "listen_addresses=", "-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=400"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        // The parent-death signal follows the thread that spawned the shell, so that thread
        // lives as long as the shell (waiting on it), not only as long as one test.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("postgres-test-cluster".into())
            .spawn(move || match supervisor.spawn() {
                Ok(mut child) => {
                    let _ = tx.send(Ok(()));
                    let status = child.wait();
                    let _ = tx.send(Err(format!("the PostgreSQL test server exited: {status:?}")));
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("run setpriv (util-linux) for postgres: {e}")));
                }
            })
            .map_err(|e| format!("spawn the cluster's thread: {e}"))?;
        rx.recv().map_err(|e| e.to_string())??;
        let cluster = Cluster { dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .arg("--host")
                .arg(&cluster.dir)
                .arg(format!("--port={PORT}"))
                .args(["--username", SUPERUSER, "--quiet"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(cluster);
            }
            let gone = rx.try_recv().err() != Some(std::sync::mpsc::TryRecvError::Empty);
            if gone || Instant::now() > deadline {
                let log = std::fs::read_to_string(cluster.dir.join("postgres.log")).unwrap_or_default();
                return Err(format!("the PostgreSQL test server did not start:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The URL of one of its databases.
    fn url(&self, database: &str) -> DatabaseUrl {
        let url = format!("postgres://{SUPERUSER}@localhost:{PORT}/{database}?host={}", self.dir.display());
        DatabaseUrl::parse(&url).expect("a well-formed test URL")
    }
}

/// Where `initdb`, `postgres` and `pg_isready` are: `$COVE_TEST_PG_BIN`, else the newest
/// Debian `/usr/lib/postgresql/<major>/bin` (not on PATH there), else PATH.
fn pg_bin_dir() -> Option<PathBuf> {
    let complete = |d: &Path| ["initdb", "postgres", "pg_isready"].iter().all(|b| d.join(b).is_file());
    if let Some(d) = std::env::var_os("COVE_TEST_PG_BIN") {
        return Some(PathBuf::from(d)).filter(|d| complete(d));
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, d)| complete(d))
        .collect();
    debian.sort();
    debian.pop().map(|(_, d)| d).or_else(|| std::env::split_paths(&std::env::var_os("PATH")?).find(|d| complete(d)))
}

/// `nobody`'s uid and gid.
fn nobody() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("nobody:"))?;
    let mut fields = line.split(':').skip(2);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// A sandbox row of organization `org` in `state`, with small resources and nothing else
/// set; tests change what they need with struct update syntax.
pub fn sandbox(id: &str, org: &str, state: SandboxState) -> SandboxRecord {
    SandboxRecord {
        id: id.into(),
        org_id: org.into(),
        name: id.into(),
        snapshot_id: None,
        snapshot_name: None,
        image_digest: format!("sha256:{id}"),
        user: "root".into(),
        env: Default::default(),
        labels: Default::default(),
        public: false,
        network_block_all: false,
        privileged: false,
        region_id: "us".into(),
        cpu: 1,
        gpu: 0,
        mem: 2,
        disk: 3,
        state,
        desired_state: "started".into(),
        error_reason: None,
        auto_stop: 15,
        auto_archive: 0,
        auto_delete: -1,
        daemon_version: None,
        created_at: 1,
        updated_at: 1,
        build: None,
        network_allow_list: None,
        domain_allow_list: None,
        linked_sandbox_id: None,
        node_id: None,
    }
}
