//! The embedded default store: SQLite through sqlx, in WAL mode.
//!
//! Two pools over one file, so that reads never wait behind writes: `write` has a single
//! connection (SQLite allows one writer; queueing in the pool is cheaper than the busy-wait
//! of several connections contending for the lock, and never starves readers), and `read`
//! has [`READERS`] read-only connections, each reading the last committed state (WAL
//! readers are not blocked by the writer). Writes are single statements or short
//! transactions; nothing slow happens while a connection is held.

use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use cove_types::{SandboxState, SnapshotState};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{
    ApiKeyRecord, BuildSpec, Change, KeyHashScheme, Millis, Organization, RegistryRecord, Revoked, SandboxRecord,
    SnapshotQuery, SnapshotRecord, SnapshotSort, Store, StoreError,
};

/// SQLite-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// The one writer connection: every INSERT, UPDATE, DELETE and write transaction.
    write: SqlitePool,
    /// Read-only connections for every SELECT.
    read: SqlitePool,
    /// [`Store::changes`]: sandbox and snapshot writes, sent after they commit.
    changes: tokio::sync::broadcast::Sender<Change>,
}

/// Read-only connections: enough that a burst of requests rarely queues for one.
const READERS: u32 = 8;

const SNAPSHOT_COLUMNS: &str = "id, org_id, name, image_name, state, error_reason, cpu, gpu, gpu_type, mem, disk, \
     entrypoint, region_id, size_bytes, image_digest, created_at, updated_at, last_used_at, build_dockerfile, \
     build_context_hashes, general";
const SNAPSHOT_COLUMN_COUNT: usize = 21;
const SANDBOX_COLUMNS: &str = "id, org_id, name, snapshot_id, snapshot_name, image_digest, user_name, env, labels, public, \
     network_block_all, privileged, region_id, cpu, gpu, mem, disk, state, desired_state, error_reason, auto_stop, \
     auto_archive, auto_delete, daemon_version, created_at, updated_at, build_dockerfile, build_context_hashes, \
     network_allow_list, domain_allow_list, linked_sandbox_id";
const SANDBOX_COLUMN_COUNT: usize = 31;

impl SqliteStore {
    /// Opens (creating) the database file and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // Deleted and replaced content is zeroed, so a re-hashed API key leaves no trace of
            // its old hash in free space.
            .pragma("secure_delete", "on")
            .busy_timeout(Duration::from_secs(10));
        let open = |source| StoreError::Open { path: path.display().to_string(), source };
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(opts.clone())
            .await
            .map_err(open)?;
        sqlx::migrate!("./migrations/sqlite").run(&write).await.map_err(StoreError::Migrate)?;
        // After the migrations: the file and its WAL exist, and readers see the final schema.
        let read = SqlitePoolOptions::new()
            .max_connections(READERS)
            .min_connections(1)
            .connect_with(opts.create_if_missing(false).read_only(true))
            .await
            .map_err(open)?;
        Ok(SqliteStore { write, read, changes: tokio::sync::broadcast::channel(1024).0 })
    }

    /// One row of `table` in the organization, by id or else by name (an id match wins).
    async fn get_scoped<T>(
        &self,
        table: &str,
        columns: &str,
        org_id: &str,
        id_or_name: &str,
        decode: fn(&SqliteRow) -> Result<T, StoreError>,
        op: &'static str,
    ) -> Result<Option<T>, StoreError> {
        let sql = format!(
            "SELECT {columns} FROM {table} WHERE org_id = ? AND (id = ? OR name = ?) ORDER BY (id = ?) DESC LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(org_id)
            .bind(id_or_name)
            .bind(id_or_name)
            .bind(id_or_name)
            .fetch_optional(&self.read)
            .await
            .map_err(q(op))?;
        row.as_ref().map(decode).transpose()
    }
}

fn q(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn snapshot_from_row(r: &SqliteRow) -> Result<SnapshotRecord, StoreError> {
    let get = |e: sqlx::Error| StoreError::Decode { what: "snapshot row", why: e.to_string() };
    let state: String = r.try_get("state").map_err(get)?;
    let entrypoint: Option<String> = r.try_get("entrypoint").map_err(get)?;
    Ok(SnapshotRecord {
        id: r.try_get("id").map_err(get)?,
        org_id: r.try_get("org_id").map_err(get)?,
        name: r.try_get("name").map_err(get)?,
        image_name: r.try_get("image_name").map_err(get)?,
        state: SnapshotState::from_str(&state).map_err(|e| StoreError::Decode { what: "state", why: e.to_string() })?,
        error_reason: r.try_get("error_reason").map_err(get)?,
        cpu: r.try_get("cpu").map_err(get)?,
        gpu: r.try_get("gpu").map_err(get)?,
        gpu_type: r.try_get("gpu_type").map_err(get)?,
        mem: r.try_get("mem").map_err(get)?,
        disk: r.try_get("disk").map_err(get)?,
        entrypoint: entrypoint
            .map(|e| serde_json::from_str(&e))
            .transpose()
            .map_err(|e| StoreError::Decode { what: "entrypoint", why: e.to_string() })?,
        region_id: r.try_get("region_id").map_err(get)?,
        size_bytes: r.try_get("size_bytes").map_err(get)?,
        image_digest: r.try_get("image_digest").map_err(get)?,
        created_at: r.try_get("created_at").map_err(get)?,
        updated_at: r.try_get("updated_at").map_err(get)?,
        last_used_at: r.try_get("last_used_at").map_err(get)?,
        build: build_from_row(r)?,
        general: r.try_get::<i64, _>("general").map_err(get)? != 0,
    })
}

const REGISTRY_COLUMNS: &str =
    "id, org_id, name, url, username, secret, project, provider, role_arn, created_at, updated_at";

fn org_from_row(r: &SqliteRow) -> Result<Organization, StoreError> {
    let get = |e: sqlx::Error| StoreError::Decode { what: "organization row", why: e.to_string() };
    Ok(Organization {
        id: r.try_get("id").map_err(get)?,
        name: r.try_get("name").map_err(get)?,
        created_at: r.try_get("created_at").map_err(get)?,
    })
}

fn registry_from_row(r: &SqliteRow) -> Result<RegistryRecord, StoreError> {
    let get = |e: sqlx::Error| StoreError::Decode { what: "registry row", why: e.to_string() };
    Ok(RegistryRecord {
        id: r.try_get("id").map_err(get)?,
        org_id: r.try_get("org_id").map_err(get)?,
        name: r.try_get("name").map_err(get)?,
        url: r.try_get("url").map_err(get)?,
        username: r.try_get("username").map_err(get)?,
        sealed_secret: r.try_get("secret").map_err(get)?,
        project: r.try_get("project").map_err(get)?,
        provider: r.try_get("provider").map_err(get)?,
        role_arn: r.try_get("role_arn").map_err(get)?,
        created_at: r.try_get("created_at").map_err(get)?,
        updated_at: r.try_get("updated_at").map_err(get)?,
    })
}

fn key_from_row(r: &SqliteRow) -> Result<ApiKeyRecord, StoreError> {
    let get = |e: sqlx::Error| StoreError::Decode { what: "api key row", why: e.to_string() };
    let scheme: String = r.try_get("hash_scheme").map_err(get)?;
    Ok(ApiKeyRecord {
        id: r.try_get("id").map_err(get)?,
        org_id: r.try_get("org_id").map_err(get)?,
        name: r.try_get("name").map_err(get)?,
        key_hash: r.try_get("key_hash").map_err(get)?,
        hash_scheme: KeyHashScheme::parse(&scheme).ok_or_else(|| StoreError::Decode {
            what: "api key hash scheme",
            why: format!("unknown scheme {scheme:?}"),
        })?,
        prefix: r.try_get("prefix").map_err(get)?,
        admin: r.try_get::<i64, _>("admin").map_err(get)? != 0,
        created_at: r.try_get("created_at").map_err(get)?,
        last_used_at: r.try_get("last_used_at").map_err(get)?,
        revoked_at: r.try_get("revoked_at").map_err(get)?,
    })
}

fn sandbox_from_row(r: &SqliteRow) -> Result<SandboxRecord, StoreError> {
    let get = |e: sqlx::Error| StoreError::Decode { what: "sandbox row", why: e.to_string() };
    let json = |what: &'static str, v: String| {
        serde_json::from_str(&v).map_err(|e| StoreError::Decode { what, why: e.to_string() })
    };
    let state: String = r.try_get("state").map_err(get)?;
    Ok(SandboxRecord {
        id: r.try_get("id").map_err(get)?,
        org_id: r.try_get("org_id").map_err(get)?,
        name: r.try_get("name").map_err(get)?,
        snapshot_id: r.try_get("snapshot_id").map_err(get)?,
        snapshot_name: r.try_get("snapshot_name").map_err(get)?,
        image_digest: r.try_get("image_digest").map_err(get)?,
        user: r.try_get("user_name").map_err(get)?,
        env: json("env", r.try_get("env").map_err(get)?)?,
        labels: json("labels", r.try_get("labels").map_err(get)?)?,
        public: r.try_get::<i64, _>("public").map_err(get)? != 0,
        network_block_all: r.try_get::<i64, _>("network_block_all").map_err(get)? != 0,
        privileged: r.try_get::<i64, _>("privileged").map_err(get)? != 0,
        region_id: r.try_get("region_id").map_err(get)?,
        cpu: r.try_get("cpu").map_err(get)?,
        gpu: r.try_get("gpu").map_err(get)?,
        mem: r.try_get("mem").map_err(get)?,
        disk: r.try_get("disk").map_err(get)?,
        state: SandboxState::from_str(&state).map_err(|e| StoreError::Decode { what: "state", why: e.to_string() })?,
        desired_state: r.try_get("desired_state").map_err(get)?,
        error_reason: r.try_get("error_reason").map_err(get)?,
        auto_stop: r.try_get("auto_stop").map_err(get)?,
        auto_archive: r.try_get("auto_archive").map_err(get)?,
        auto_delete: r.try_get("auto_delete").map_err(get)?,
        daemon_version: r.try_get("daemon_version").map_err(get)?,
        created_at: r.try_get("created_at").map_err(get)?,
        updated_at: r.try_get("updated_at").map_err(get)?,
        build: build_from_row(r)?,
        network_allow_list: r.try_get("network_allow_list").map_err(get)?,
        domain_allow_list: r.try_get("domain_allow_list").map_err(get)?,
        linked_sandbox_id: r.try_get("linked_sandbox_id").map_err(get)?,
    })
}

/// The `build_dockerfile` and `build_context_hashes` columns of a snapshot or sandbox row.
fn build_from_row(r: &SqliteRow) -> Result<Option<BuildSpec>, StoreError> {
    let get = |e: sqlx::Error| StoreError::Decode { what: "build columns", why: e.to_string() };
    let Some(dockerfile) = r.try_get::<Option<String>, _>("build_dockerfile").map_err(get)? else { return Ok(None) };
    let hashes: Option<String> = r.try_get("build_context_hashes").map_err(get)?;
    let context_hashes = hashes
        .map(|h| serde_json::from_str(&h))
        .transpose()
        .map_err(|e| StoreError::Decode { what: "build_context_hashes", why: e.to_string() })?
        .unwrap_or_default();
    Ok(Some(BuildSpec { dockerfile, context_hashes }))
}

fn build_json(b: &Option<BuildSpec>) -> Option<String> {
    b.as_ref().map(|b| serde_json::to_string(&b.context_hashes).expect("strings serialize"))
}

/// Binds every column of [`SANDBOX_COLUMNS`], in its order.
fn bind_sandbox<'q>(q: SqliteQuery<'q>, s: &'q SandboxRecord) -> SqliteQuery<'q> {
    let json = |m| serde_json::to_string(m).expect("a string map always serializes");
    q.bind(&s.id)
        .bind(&s.org_id)
        .bind(&s.name)
        .bind(&s.snapshot_id)
        .bind(&s.snapshot_name)
        .bind(&s.image_digest)
        .bind(&s.user)
        .bind(json(&s.env))
        .bind(json(&s.labels))
        .bind(i64::from(s.public))
        .bind(i64::from(s.network_block_all))
        .bind(i64::from(s.privileged))
        .bind(&s.region_id)
        .bind(s.cpu)
        .bind(s.gpu)
        .bind(s.mem)
        .bind(s.disk)
        .bind(s.state.as_str())
        .bind(&s.desired_state)
        .bind(&s.error_reason)
        .bind(s.auto_stop)
        .bind(s.auto_archive)
        .bind(s.auto_delete)
        .bind(&s.daemon_version)
        .bind(s.created_at)
        .bind(s.updated_at)
        .bind(s.build.as_ref().map(|b| b.dockerfile.clone()))
        .bind(build_json(&s.build))
        .bind(&s.network_allow_list)
        .bind(&s.domain_allow_list)
        .bind(&s.linked_sandbox_id)
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds every column of [`SNAPSHOT_COLUMNS`], in its order.
fn bind_snapshot<'q>(q: SqliteQuery<'q>, s: &'q SnapshotRecord) -> SqliteQuery<'q> {
    q.bind(&s.id)
        .bind(&s.org_id)
        .bind(&s.name)
        .bind(&s.image_name)
        .bind(s.state.as_str())
        .bind(&s.error_reason)
        .bind(s.cpu)
        .bind(s.gpu)
        .bind(&s.gpu_type)
        .bind(s.mem)
        .bind(s.disk)
        .bind(entrypoint_json(&s.entrypoint))
        .bind(&s.region_id)
        .bind(s.size_bytes)
        .bind(&s.image_digest)
        .bind(s.created_at)
        .bind(s.updated_at)
        .bind(s.last_used_at)
        .bind(s.build.as_ref().map(|b| b.dockerfile.clone()))
        .bind(build_json(&s.build))
        .bind(i64::from(s.general))
}

fn entrypoint_json(e: &Option<Vec<String>>) -> Option<String> {
    e.as_ref().map(|v| serde_json::to_string(v).expect("a list of strings always serializes"))
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn insert_org(&self, org: &Organization) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO organizations (id, name, created_at) VALUES (?, ?, ?)")
            .bind(&org.id)
            .bind(&org.name)
            .bind(org.created_at)
            .execute(&self.write)
            .await
            .map_err(q("insert organization"))?;
        Ok(())
    }

    async fn first_org(&self) -> Result<Option<Organization>, StoreError> {
        let row = sqlx::query("SELECT id, name, created_at FROM organizations ORDER BY created_at, id LIMIT 1")
            .fetch_optional(&self.read)
            .await
            .map_err(q("get first organization"))?;
        row.as_ref().map(org_from_row).transpose()
    }

    async fn insert_api_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (id, org_id, name, key_hash, hash_scheme, prefix, admin, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&k.id)
        .bind(&k.org_id)
        .bind(&k.name)
        .bind(&k.key_hash)
        .bind(k.hash_scheme.as_str())
        .bind(&k.prefix)
        .bind(i64::from(k.admin))
        .bind(k.created_at)
        .execute(&self.write)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) { StoreError::Duplicate { what: "api key" } } else { q("insert api key")(e) }
        })?;
        Ok(())
    }

    async fn api_key_by_hash(&self, scheme: KeyHashScheme, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE key_hash = ? AND hash_scheme = ? AND revoked_at IS NULL")
            .bind(hash)
            .bind(scheme.as_str())
            .fetch_optional(&self.read)
            .await
            .map_err(q("find api key"))?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn api_key_by_hash_including_revoked(
        &self,
        scheme: KeyHashScheme,
        hash: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE key_hash = ? AND hash_scheme = ?")
            .bind(hash)
            .bind(scheme.as_str())
            .fetch_optional(&self.read)
            .await
            .map_err(q("find api key"))?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn get_api_key(&self, org_id: &str, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE org_id = ? AND id = ? AND revoked_at IS NULL")
            .bind(org_id)
            .bind(id)
            .fetch_optional(&self.read)
            .await
            .map_err(q("get api key"))?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn list_api_keys(&self, org_id: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM api_keys WHERE org_id = ? AND revoked_at IS NULL ORDER BY created_at, id")
                .bind(org_id)
                .fetch_all(&self.read)
                .await
                .map_err(q("list api keys"))?;
        rows.iter().map(key_from_row).collect()
    }

    async fn revoke_api_key(&self, org_id: &str, id: &str, at: Millis) -> Result<Revoked, StoreError> {
        // One statement: SQLite runs it under the write lock, so two revokes of the last two
        // admin keys cannot both see the other one still live.
        let r = sqlx::query(
            "UPDATE api_keys SET revoked_at = ? WHERE org_id = ? AND id = ? AND revoked_at IS NULL \
             AND (admin = 0 OR (SELECT COUNT(*) FROM api_keys WHERE admin = 1 AND revoked_at IS NULL) > 1)",
        )
        .bind(at)
        .bind(org_id)
        .bind(id)
        .execute(&self.write)
        .await
        .map_err(q("revoke api key"))?;
        if r.rows_affected() == 1 {
            return Ok(Revoked::Done);
        }
        Ok(match self.get_api_key(org_id, id).await? {
            Some(k) if k.admin => Revoked::LastAdmin,
            _ => Revoked::NotFound,
        })
    }

    async fn rehash_api_key(&self, id: &str, scheme: KeyHashScheme, hash: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_keys SET key_hash = ?, hash_scheme = ? WHERE id = ?")
            .bind(hash)
            .bind(scheme.as_str())
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(q("rehash api key"))?;
        // The pages that held the old hash may still sit in the WAL from earlier writes: copy
        // the WAL back (secure_delete zeroed the old cells) and truncate it. A reader in the
        // way only delays this to a later checkpoint, so "busy" is not an error.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.write)
            .await
            .map_err(q("checkpoint after rehashing an api key"))?;
        Ok(())
    }

    async fn restore_admin_key(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_keys SET revoked_at = NULL, admin = 1 WHERE id = ?")
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(q("restore admin api key"))?;
        Ok(())
    }

    async fn touch_api_key(&self, id: &str, at: Millis) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_keys SET last_used_at = ? WHERE id = ?")
            .bind(at)
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(q("touch api key"))?;
        Ok(())
    }

    async fn count_admin_keys(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE admin = 1 AND revoked_at IS NULL")
            .fetch_one(&self.read)
            .await
            .map_err(q("count admin api keys"))
    }

    async fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<(), StoreError> {
        let sql =
            format!("INSERT INTO snapshots ({SNAPSHOT_COLUMNS}) VALUES ({})", placeholders(SNAPSHOT_COLUMN_COUNT));
        bind_snapshot(sqlx::query(&sql), s).execute(&self.write).await.map_err(|e| {
            if is_unique_violation(&e) { StoreError::Duplicate { what: "snapshot" } } else { q("insert snapshot")(e) }
        })?;
        let _ = self.changes.send(Change::Snapshot { record: s.clone(), created: true, previous: None });
        Ok(())
    }

    async fn get_snapshot(&self, org_id: &str, id_or_name: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        // An id first, then the organization's own name before a general snapshot's.
        let sql = format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE (org_id = ? OR general = 1) AND (id = ? OR name = ?) \
             ORDER BY (id = ?) DESC, (org_id = ?) DESC LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(org_id)
            .bind(id_or_name)
            .bind(id_or_name)
            .bind(id_or_name)
            .bind(org_id)
            .fetch_optional(&self.read)
            .await
            .map_err(q("get snapshot"))?;
        row.as_ref().map(snapshot_from_row).transpose()
    }

    async fn general_snapshot_named(&self, name: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        let sql = format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE general = 1 AND name = ? LIMIT 1");
        let row = sqlx::query(&sql).bind(name).fetch_optional(&self.read).await.map_err(q("get general snapshot"))?;
        row.as_ref().map(snapshot_from_row).transpose()
    }

    async fn get_snapshot_for_job(&self, id: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        let sql = format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE id = ?");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.read).await.map_err(q("get snapshot"))?;
        row.as_ref().map(snapshot_from_row).transpose()
    }

    async fn list_snapshots(
        &self,
        org_id: &str,
        query: &SnapshotQuery,
    ) -> Result<(Vec<SnapshotRecord>, i64), StoreError> {
        let col = match query.sort {
            SnapshotSort::CreatedAt => "created_at",
            SnapshotSort::UpdatedAt => "updated_at",
            SnapshotSort::LastUsedAt => "COALESCE(last_used_at, 0)",
            SnapshotSort::Name => "name",
            SnapshotSort::State => "state",
        };
        let dir = if query.ascending { "ASC" } else { "DESC" };
        let pattern = query
            .name
            .as_ref()
            .map(|n| format!("%{}%", n.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
        let filter = if pattern.is_some() { "AND name LIKE ? ESCAPE '\\'" } else { "" };
        let sql = format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE (org_id = ? OR general = 1) {filter} \
             ORDER BY {col} {dir}, id {dir} LIMIT ? OFFSET ?"
        );
        let mut rq = sqlx::query(&sql).bind(org_id);
        if let Some(p) = &pattern {
            rq = rq.bind(p);
        }
        let rows = rq.bind(query.limit).bind(query.offset).fetch_all(&self.read).await.map_err(q("list snapshots"))?;
        let count_sql = format!("SELECT COUNT(*) FROM snapshots WHERE (org_id = ? OR general = 1) {filter}");
        let mut cq = sqlx::query_scalar(&count_sql).bind(org_id);
        if let Some(p) = &pattern {
            cq = cq.bind(p);
        }
        let total: i64 = cq.fetch_one(&self.read).await.map_err(q("count snapshots"))?;
        Ok((rows.iter().map(snapshot_from_row).collect::<Result<_, _>>()?, total))
    }

    async fn update_snapshot_if(&self, s: &SnapshotRecord, expected: &[SnapshotState]) -> Result<bool, StoreError> {
        // Row-value assignment rewrites every column (id, owner and creation time with
        // their unchanged values), so inserts and updates share one binding order.
        let sql = format!(
            "UPDATE snapshots SET ({SNAPSHOT_COLUMNS}) = ({}) WHERE id = ? AND state IN ({})",
            placeholders(SNAPSHOT_COLUMN_COUNT),
            placeholders(expected.len())
        );
        let mut rq = bind_snapshot(sqlx::query(&sql), s).bind(&s.id);
        for st in expected {
            rq = rq.bind(st.as_str());
        }
        let r = rq.execute(&self.write).await.map_err(q("update snapshot"))?;
        if r.rows_affected() == 1 {
            let previous = if let [one] = expected { Some(*one) } else { None };
            let _ = self.changes.send(Change::Snapshot { record: s.clone(), created: false, previous });
        }
        Ok(r.rows_affected() == 1)
    }

    async fn delete_snapshot(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM snapshots WHERE id = ?")
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(q("delete snapshot"))?;
        let _ = self.changes.send(Change::SnapshotDeleted { id: id.to_string() });
        Ok(())
    }

    async fn snapshots_in_states_for_job(&self, states: &[SnapshotState]) -> Result<Vec<SnapshotRecord>, StoreError> {
        let sql = format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE state IN ({}) ORDER BY created_at",
            placeholders(states.len())
        );
        let mut rq = sqlx::query(&sql);
        for st in states {
            rq = rq.bind(st.as_str());
        }
        let rows = rq.fetch_all(&self.read).await.map_err(q("list snapshots by state"))?;
        rows.iter().map(snapshot_from_row).collect()
    }

    async fn referenced_images(&self) -> Result<HashSet<String>, StoreError> {
        let v: Vec<String> =
            // Every sandbox keeps its image (its overlay's lower; a snapshot may be deleted
            // under it), and archived sandboxes' disks (migration 0011) are blobs to keep too.
            sqlx::query_scalar(
                "SELECT DISTINCT image_digest FROM snapshots WHERE image_digest IS NOT NULL \
                 UNION SELECT image_digest FROM sandboxes \
                 UNION SELECT archive_digest FROM sandbox_lifecycle WHERE archive_digest IS NOT NULL",
            )
                .fetch_all(&self.read)
                .await
                .map_err(q("list referenced images"))?;
        Ok(v.into_iter().collect())
    }

    async fn deactivate_unused(&self, before: Millis, now: Millis) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE snapshots SET state = 'inactive', updated_at = ? \
             WHERE state = 'active' AND general = 0 AND COALESCE(last_used_at, created_at) < ?",
        )
        .bind(now)
        .bind(before)
        .execute(&self.write)
        .await
        .map_err(q("deactivate unused snapshots"))?;
        Ok(r.rows_affected())
    }

    async fn touch_snapshot(&self, id: &str, at: Millis) -> Result<(), StoreError> {
        sqlx::query("UPDATE snapshots SET last_used_at = ? WHERE id = ?")
            .bind(at)
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(q("record snapshot use"))?;
        Ok(())
    }

    async fn insert_sandbox(&self, s: &SandboxRecord) -> Result<(), StoreError> {
        let sql = format!("INSERT INTO sandboxes ({SANDBOX_COLUMNS}) VALUES ({})", placeholders(SANDBOX_COLUMN_COUNT));
        bind_sandbox(sqlx::query(&sql), s).execute(&self.write).await.map_err(|e| {
            if is_unique_violation(&e) { StoreError::Duplicate { what: "sandbox" } } else { q("insert sandbox")(e) }
        })?;
        let _ = self.changes.send(Change::Sandbox { record: s.clone(), created: true, previous: None });
        Ok(())
    }

    async fn get_sandbox(&self, org_id: &str, id_or_name: &str) -> Result<Option<SandboxRecord>, StoreError> {
        self.get_scoped("sandboxes", SANDBOX_COLUMNS, org_id, id_or_name, sandbox_from_row, "get sandbox").await
    }

    async fn list_sandboxes(&self, org_id: &str) -> Result<Vec<SandboxRecord>, StoreError> {
        let sql = format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE org_id = ? ORDER BY created_at DESC, id DESC");
        let rows = sqlx::query(&sql).bind(org_id).fetch_all(&self.read).await.map_err(q("list sandboxes"))?;
        rows.iter().map(sandbox_from_row).collect()
    }

    async fn update_sandbox_if(&self, s: &SandboxRecord, expected: &[SandboxState]) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE sandboxes SET ({SANDBOX_COLUMNS}) = ({}) WHERE id = ? AND state IN ({})",
            placeholders(SANDBOX_COLUMN_COUNT),
            placeholders(expected.len())
        );
        let mut rq = bind_sandbox(sqlx::query(&sql), s).bind(&s.id);
        for st in expected {
            rq = rq.bind(st.as_str());
        }
        let r = rq.execute(&self.write).await.map_err(q("update sandbox"))?;
        if r.rows_affected() == 1 {
            let previous = if let [one] = expected { Some(*one) } else { None };
            let _ = self.changes.send(Change::Sandbox { record: s.clone(), created: false, previous });
        }
        Ok(r.rows_affected() == 1)
    }

    async fn delete_sandbox(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sandboxes WHERE id = ?")
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(q("delete sandbox"))?;
        let _ = self.changes.send(Change::SandboxDeleted { id: id.to_string() });
        Ok(())
    }

    async fn all_sandboxes_for_job(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        let sql = format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes ORDER BY created_at");
        let rows = sqlx::query(&sql).fetch_all(&self.read).await.map_err(q("list all sandboxes"))?;
        rows.iter().map(sandbox_from_row).collect()
    }

    async fn insert_registry(&self, r: &RegistryRecord) -> Result<(), StoreError> {
        let sql = format!("INSERT INTO docker_registries ({REGISTRY_COLUMNS}) VALUES ({})", placeholders(11));
        sqlx::query(&sql)
            .bind(&r.id)
            .bind(&r.org_id)
            .bind(&r.name)
            .bind(&r.url)
            .bind(&r.username)
            .bind(&r.sealed_secret)
            .bind(&r.project)
            .bind(&r.provider)
            .bind(&r.role_arn)
            .bind(r.created_at)
            .bind(r.updated_at)
            .execute(&self.write)
            .await
            .map_err(q("insert registry"))?;
        Ok(())
    }

    async fn get_registry(&self, org_id: &str, id: &str) -> Result<Option<RegistryRecord>, StoreError> {
        let sql = format!("SELECT {REGISTRY_COLUMNS} FROM docker_registries WHERE org_id = ? AND id = ?");
        let row =
            sqlx::query(&sql).bind(org_id).bind(id).fetch_optional(&self.read).await.map_err(q("get registry"))?;
        row.as_ref().map(registry_from_row).transpose()
    }

    async fn list_registries(&self, org_id: &str) -> Result<Vec<RegistryRecord>, StoreError> {
        let sql = format!(
            "SELECT {REGISTRY_COLUMNS} FROM docker_registries WHERE org_id = ? ORDER BY created_at DESC, rowid DESC"
        );
        let rows = sqlx::query(&sql).bind(org_id).fetch_all(&self.read).await.map_err(q("list registries"))?;
        rows.iter().map(registry_from_row).collect()
    }

    async fn update_registry(&self, r: &RegistryRecord) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE docker_registries SET name = ?, url = ?, username = ?, secret = ?, project = ?, role_arn = ?, \
             updated_at = ? WHERE org_id = ? AND id = ?",
        )
        .bind(&r.name)
        .bind(&r.url)
        .bind(&r.username)
        .bind(&r.sealed_secret)
        .bind(&r.project)
        .bind(&r.role_arn)
        .bind(r.updated_at)
        .bind(&r.org_id)
        .bind(&r.id)
        .execute(&self.write)
        .await
        .map_err(q("update registry"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_registry(&self, org_id: &str, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM docker_registries WHERE org_id = ? AND id = ?")
            .bind(org_id)
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(q("delete registry"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn get_org(&self, id: &str) -> Result<Option<Organization>, StoreError> {
        let row = sqlx::query("SELECT id, name, created_at FROM organizations WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.read)
            .await
            .map_err(q("get organization"))?;
        row.as_ref().map(org_from_row).transpose()
    }

    async fn get_org_quota(&self, org_id: &str) -> Result<Option<super::QuotaRecord>, StoreError> {
        let row =
            sqlx::query("SELECT org_id, sandboxes, cpu, memory, disk, updated_at FROM org_quotas WHERE org_id = ?")
                .bind(org_id)
                .fetch_optional(&self.read)
                .await
                .map_err(q("get organization quota"))?;
        row.map(|r| {
            let get = |e: sqlx::Error| StoreError::Decode { what: "org_quotas row", why: e.to_string() };
            Ok(super::QuotaRecord {
                org_id: r.try_get("org_id").map_err(get)?,
                sandboxes: r.try_get("sandboxes").map_err(get)?,
                cpu: r.try_get("cpu").map_err(get)?,
                memory: r.try_get("memory").map_err(get)?,
                disk: r.try_get("disk").map_err(get)?,
                updated_at: r.try_get("updated_at").map_err(get)?,
            })
        })
        .transpose()
    }

    async fn set_org_quota(&self, rec: &super::QuotaRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO org_quotas (org_id, sandboxes, cpu, memory, disk, updated_at) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (org_id) DO UPDATE SET sandboxes = excluded.sandboxes, cpu = excluded.cpu, \
             memory = excluded.memory, disk = excluded.disk, updated_at = excluded.updated_at",
        )
        .bind(&rec.org_id)
        .bind(rec.sandboxes)
        .bind(rec.cpu)
        .bind(rec.memory)
        .bind(rec.disk)
        .bind(rec.updated_at)
        .execute(&self.write)
        .await
        .map_err(q("set organization quota"))?;
        Ok(())
    }

    async fn sandbox_usage(&self, org_id: &str) -> Result<super::SandboxUsage, StoreError> {
        let r = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(cpu), 0) AS cpu, COALESCE(SUM(mem), 0) AS mem, \
             COALESCE(SUM(disk), 0) AS disk FROM sandboxes WHERE org_id = ? AND state != ?",
        )
        .bind(org_id)
        .bind(SandboxState::Destroyed.as_str())
        .fetch_one(&self.read)
        .await
        .map_err(q("sum organization sandboxes"))?;
        let get = |e: sqlx::Error| StoreError::Decode { what: "sandbox usage", why: e.to_string() };
        Ok(super::SandboxUsage {
            sandboxes: r.try_get("n").map_err(get)?,
            cpu: r.try_get("cpu").map_err(get)?,
            memory: r.try_get("mem").map_err(get)?,
            disk: r.try_get("disk").map_err(get)?,
        })
    }

    async fn get_sandbox_by_id(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
        let sql = format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE id = ?");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.read).await.map_err(q("get sandbox by id"))?;
        row.as_ref().map(sandbox_from_row).transpose()
    }

    async fn insert_preview_token(&self, t: &super::PreviewTokenRecord, now: Millis) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM preview_tokens WHERE expires_at <= ?")
            .bind(now)
            .execute(&self.write)
            .await
            .map_err(q("drop expired preview tokens"))?;
        sqlx::query("INSERT INTO preview_tokens (token_hash, sandbox_id, port, expires_at) VALUES (?, ?, ?, ?)")
            .bind(&t.token_hash)
            .bind(&t.sandbox_id)
            .bind(i64::from(t.port))
            .bind(t.expires_at)
            .execute(&self.write)
            .await
            .map_err(q("insert preview token"))?;
        Ok(())
    }

    async fn get_preview_token(
        &self,
        hash: &str,
        now: Millis,
    ) -> Result<Option<super::PreviewTokenRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT token_hash, sandbox_id, port, expires_at FROM preview_tokens WHERE token_hash = ? AND expires_at > ?",
        )
        .bind(hash)
        .bind(now)
        .fetch_optional(&self.read)
        .await
        .map_err(q("get preview token"))?;
        let Some(r) = row else { return Ok(None) };
        let get = |e: sqlx::Error| StoreError::Decode { what: "preview token", why: e.to_string() };
        let port: i64 = r.try_get("port").map_err(get)?;
        Ok(Some(super::PreviewTokenRecord {
            token_hash: r.try_get("token_hash").map_err(get)?,
            sandbox_id: r.try_get("sandbox_id").map_err(get)?,
            port: u16::try_from(port)
                .map_err(|e| StoreError::Decode { what: "preview token port", why: e.to_string() })?,
            expires_at: r.try_get("expires_at").map_err(get)?,
        }))
    }

    async fn delete_preview_token(&self, sandbox_id: &str, port: u16, hash: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM preview_tokens WHERE token_hash = ? AND sandbox_id = ? AND port = ?")
            .bind(hash)
            .bind(sandbox_id)
            .bind(i64::from(port))
            .execute(&self.write)
            .await
            .map_err(q("delete preview token"))?;
        Ok(r.rows_affected() == 1)
    }

    async fn sandbox_lifecycles(&self) -> Result<Vec<super::SandboxLifecycle>, StoreError> {
        let rows =
            sqlx::query("SELECT sandbox_id, last_activity_at, archive_digest, archive_size FROM sandbox_lifecycle")
                .fetch_all(&self.read)
                .await
                .map_err(q("list sandbox lifecycles"))?;
        Ok(rows
            .iter()
            .map(|r| super::SandboxLifecycle {
                sandbox_id: r.get(0),
                last_activity_at: r.get(1),
                archive: r
                    .get::<Option<String>, _>(2)
                    .map(|digest| super::SandboxArchive { digest, size: r.get::<Option<i64>, _>(3).unwrap_or(0) }),
            })
            .collect())
    }

    async fn record_sandbox_activity(&self, at: &[(String, Millis)]) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await.map_err(q("record sandbox activity"))?;
        for (id, t) in at {
            sqlx::query(
                "INSERT INTO sandbox_lifecycle (sandbox_id, last_activity_at) \
                 SELECT id, ? FROM sandboxes WHERE id = ? \
                 ON CONFLICT(sandbox_id) DO UPDATE SET \
                 last_activity_at = MAX(last_activity_at, excluded.last_activity_at)",
            )
            .bind(t)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(q("record sandbox activity"))?;
        }
        tx.commit().await.map_err(q("record sandbox activity"))
    }

    async fn set_sandbox_archive_if(
        &self,
        id: &str,
        archive: Option<&super::SandboxArchive>,
        state: SandboxState,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "INSERT INTO sandbox_lifecycle (sandbox_id, last_activity_at, archive_digest, archive_size) \
             SELECT id, updated_at, ?, ? FROM sandboxes WHERE id = ? AND state = ? \
             ON CONFLICT(sandbox_id) DO UPDATE SET \
             archive_digest = excluded.archive_digest, archive_size = excluded.archive_size",
        )
        .bind(archive.map(|a| a.digest.as_str()))
        .bind(archive.map(|a| a.size))
        .bind(id)
        .bind(state.as_str())
        .execute(&self.write)
        .await
        .map_err(q("record sandbox archive"))?;
        Ok(r.rows_affected() == 1)
    }

    fn changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, org: &str, name: &str, created: Millis) -> SnapshotRecord {
        SnapshotRecord {
            id: id.into(),
            org_id: org.into(),
            name: name.into(),
            image_name: "busybox:1.36".into(),
            state: SnapshotState::Pending,
            error_reason: None,
            cpu: 1,
            gpu: 0,
            gpu_type: None,
            mem: 1,
            disk: 3,
            entrypoint: None,
            region_id: "us".into(),
            size_bytes: None,
            image_digest: None,
            created_at: created,
            updated_at: created,
            last_used_at: None,
            build: None,
            general: false,
        }
    }

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&d.path().join("cove.db")).await.unwrap();
        for org in ["o1", "o2"] {
            s.insert_org(&Organization { id: org.into(), name: org.into(), created_at: 0 }).await.unwrap();
        }
        (d, s)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_answer_at_once_while_writes_queue_behind_an_open_write_transaction() {
        let (_d, s) = store().await;
        s.insert_snapshot(&snap("a", "o1", "base", 1)).await.unwrap();
        // The writer is busy (a transaction left open) and a burst of writes queues behind it.
        let mut tx = s.write.begin().await.unwrap();
        sqlx::query("UPDATE snapshots SET updated_at = 2 WHERE id = 'a'").execute(&mut *tx).await.unwrap();
        let writes: Vec<_> = (0..16)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move { s.insert_snapshot(&snap(&format!("w{i}"), "o1", &format!("w{i}"), 3)).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = std::time::Instant::now();
        for _ in 0..20 {
            let got = s.get_snapshot("o1", "a").await.unwrap().unwrap();
            assert_eq!(got.updated_at, 1, "readers see the last committed state");
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "20 reads took {:?} behind the writes", t0.elapsed());
        tx.commit().await.unwrap();
        for w in writes {
            w.await.unwrap().unwrap();
        }
        assert_eq!(s.get_snapshot("o1", "a").await.unwrap().unwrap().updated_at, 2);
        assert!(s.get_snapshot("o1", "w15").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn snapshot_names_are_unique_per_organization_only() {
        let (_d, s) = store().await;
        s.insert_snapshot(&snap("a", "o1", "same", 1)).await.unwrap();
        let e = s.insert_snapshot(&snap("b", "o1", "same", 2)).await.unwrap_err();
        assert!(matches!(e, StoreError::Duplicate { .. }));
        s.insert_snapshot(&snap("c", "o2", "same", 3)).await.unwrap();
    }

    #[tokio::test]
    async fn one_organization_cannot_read_anothers_snapshot_by_id_or_name() {
        let (_d, s) = store().await;
        s.insert_snapshot(&snap("a", "o1", "mine", 1)).await.unwrap();
        assert!(s.get_snapshot("o2", "a").await.unwrap().is_none());
        assert!(s.get_snapshot("o2", "mine").await.unwrap().is_none());
        assert_eq!(s.get_snapshot("o1", "mine").await.unwrap().unwrap().id, "a");
        assert_eq!(s.list_snapshots("o2", &all()).await.unwrap().1, 0);
    }

    fn all() -> SnapshotQuery {
        SnapshotQuery { name: None, sort: SnapshotSort::CreatedAt, ascending: true, offset: 0, limit: 100 }
    }

    #[tokio::test]
    async fn every_organization_sees_general_snapshots_and_its_own_name_wins_over_theirs() {
        let (_d, s) = store().await;
        let mut general = snap("g", "o1", "cove-small", 1);
        general.general = true;
        general.state = SnapshotState::Active;
        s.insert_snapshot(&general).await.unwrap();
        assert_eq!(s.get_snapshot("o2", "cove-small").await.unwrap().unwrap().id, "g");
        assert_eq!(s.get_snapshot("o2", "g").await.unwrap().unwrap().id, "g");
        assert!(s.get_snapshot("o2", "g").await.unwrap().unwrap().general);
        assert_eq!(s.list_snapshots("o2", &all()).await.unwrap().1, 1);
        assert_eq!(s.general_snapshot_named("cove-small").await.unwrap().unwrap().id, "g");
        s.insert_snapshot(&snap("own", "o2", "cove-small", 2)).await.unwrap();
        assert_eq!(s.get_snapshot("o2", "cove-small").await.unwrap().unwrap().id, "own");
        assert_eq!(s.get_snapshot("o2", "g").await.unwrap().unwrap().id, "g", "an id still names the general one");
        assert!(s.general_snapshot_named("own").await.unwrap().is_none());
        assert_eq!(s.deactivate_unused(i64::MAX, 5).await.unwrap(), 0, "a general snapshot never becomes inactive");
    }

    #[tokio::test]
    async fn pages_are_stable_and_counted() {
        let (_d, s) = store().await;
        for i in 0..25 {
            s.insert_snapshot(&snap(&format!("id{i:02}"), "o1", &format!("snap-{i:02}"), i)).await.unwrap();
        }
        let q = SnapshotQuery { offset: 10, limit: 10, ..all() };
        let (items, total) = s.list_snapshots("o1", &q).await.unwrap();
        assert_eq!(total, 25);
        let names: Vec<_> = items.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names.first(), Some(&"snap-10"));
        assert_eq!(names.len(), 10);
        let q = SnapshotQuery { name: Some("-2".into()), ..all() };
        assert_eq!(s.list_snapshots("o1", &q).await.unwrap().1, 5);
        let q = SnapshotQuery { name: Some("%".into()), ..all() };
        assert_eq!(s.list_snapshots("o1", &q).await.unwrap().1, 0, "LIKE wildcards in the filter are literal");
    }

    #[tokio::test]
    async fn a_conditional_update_does_nothing_when_the_state_moved_on() {
        let (_d, s) = store().await;
        let mut r = snap("a", "o1", "x", 1);
        s.insert_snapshot(&r).await.unwrap();
        r.state = SnapshotState::Pulling;
        assert!(s.update_snapshot_if(&r, &[SnapshotState::Pending]).await.unwrap());
        r.state = SnapshotState::Active;
        assert!(!s.update_snapshot_if(&r, &[SnapshotState::Pending]).await.unwrap());
        assert_eq!(s.get_snapshot("o1", "a").await.unwrap().unwrap().state, SnapshotState::Pulling);
    }

    #[tokio::test]
    async fn snapshots_unused_for_the_period_become_inactive() {
        let (_d, s) = store().await;
        let mut old = snap("a", "o1", "old", 10);
        old.state = SnapshotState::Active;
        let mut used = snap("b", "o1", "used", 10);
        used.state = SnapshotState::Active;
        used.last_used_at = Some(1_000);
        s.insert_snapshot(&old).await.unwrap();
        s.insert_snapshot(&used).await.unwrap();
        assert_eq!(s.deactivate_unused(500, 2_000).await.unwrap(), 1);
        assert_eq!(s.get_snapshot("o1", "old").await.unwrap().unwrap().state, SnapshotState::Inactive);
        assert_eq!(s.get_snapshot("o1", "used").await.unwrap().unwrap().state, SnapshotState::Active);
    }

    fn key(id: &str, org: &str, hash: &str, admin: bool) -> ApiKeyRecord {
        ApiKeyRecord {
            id: id.into(),
            org_id: org.into(),
            name: "ci".into(),
            key_hash: hash.into(),
            hash_scheme: KeyHashScheme::HmacSha256,
            prefix: "cove_ab".into(),
            admin,
            created_at: 1,
            last_used_at: None,
            revoked_at: None,
        }
    }

    #[tokio::test]
    async fn revoked_keys_no_longer_authenticate() {
        let (_d, s) = store().await;
        s.insert_api_key(&key("k", "o1", "h", false)).await.unwrap();
        let hmac = KeyHashScheme::HmacSha256;
        assert!(s.api_key_by_hash(hmac, "h").await.unwrap().is_some());
        assert!(s.api_key_by_hash(KeyHashScheme::Sha256, "h").await.unwrap().is_none(), "the scheme must match");
        assert_eq!(s.revoke_api_key("o2", "k", 2).await.unwrap(), Revoked::NotFound, "another organization cannot");
        assert_eq!(s.revoke_api_key("o1", "k", 2).await.unwrap(), Revoked::Done);
        assert!(s.api_key_by_hash(hmac, "h").await.unwrap().is_none());
        assert_eq!(s.api_key_by_hash_including_revoked(hmac, "h").await.unwrap().unwrap().revoked_at, Some(2));
    }

    #[tokio::test]
    async fn the_last_live_admin_key_is_never_revoked() {
        let (_d, s) = store().await;
        s.insert_api_key(&key("a1", "o1", "h1", true)).await.unwrap();
        s.insert_api_key(&key("a2", "o1", "h2", true)).await.unwrap();
        assert_eq!(s.count_admin_keys().await.unwrap(), 2);
        assert_eq!(s.revoke_api_key("o1", "a1", 2).await.unwrap(), Revoked::Done);
        assert_eq!(s.revoke_api_key("o1", "a2", 3).await.unwrap(), Revoked::LastAdmin);
        assert!(s.api_key_by_hash(KeyHashScheme::HmacSha256, "h2").await.unwrap().is_some());
        s.restore_admin_key("a1").await.unwrap();
        assert_eq!(s.count_admin_keys().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_rehashed_key_leaves_no_old_hash_in_the_database_or_its_wal() {
        let (d, s) = store().await;
        let old = "0123456789abcdef".repeat(4);
        let mut k = key("k", "o1", &old, false);
        k.hash_scheme = KeyHashScheme::Sha256;
        s.insert_api_key(&k).await.unwrap();
        let holds_old = || {
            ["cove.db", "cove.db-wal"].map(|f| {
                let bytes = std::fs::read(d.path().join(f)).unwrap_or_default();
                bytes.windows(old.len()).any(|w| w == old.as_bytes())
            })
        };
        assert!(holds_old().contains(&true), "the test sees the hash before");
        let new = "fedcba9876543210".repeat(4);
        s.rehash_api_key("k", KeyHashScheme::HmacSha256, &new).await.unwrap();
        let got = s.api_key_by_hash(KeyHashScheme::HmacSha256, &new).await.unwrap().unwrap();
        assert_eq!(got.hash_scheme, KeyHashScheme::HmacSha256);
        assert_eq!(holds_old(), [false, false], "cove.db and its WAL no longer hold the old hash");
    }
}
