//! The one implementation of [`Store`], for both engines: every query is written here once,
//! in SQL that SQLite and PostgreSQL both accept, and an [`Engine`] only runs statements.
//!
//! Placeholders are `$1`, `$2`, …: PostgreSQL's own, and sqlx's SQLite driver binds `$N` to
//! the N-th argument too (so a value used twice is bound once). Flags are bound and read as
//! `bool` (SQLite stores 0/1 in INTEGER columns, PostgreSQL has BOOLEAN) and tested as bare
//! predicates (`WHERE general`, `NOT admin`), which both accept.
//!
//! Where the dialects differ, the engine says how (see [`Engine`]):
//! - the tie-break for rows inserted in the same millisecond: SQLite's implicit `rowid`,
//!   PostgreSQL's `seq` identity column (migration 0005) ([`Engine::INSERT_ORDER`]);
//! - a check-then-write on another table (`INSERT … SELECT … FROM sandboxes`) is atomic in
//!   SQLite because it has one writer; PostgreSQL locks the rows read ([`Engine::LOCK_READ`]);
//! - revoking an admin key counts the live ones in the same statement: SQLite's one writer
//!   runs it alone, PostgreSQL takes an advisory lock ([`Engine::execute_serialized`]);
//! - an overwritten key hash is scrubbed from SQLite's WAL; PostgreSQL has no equivalent
//!   ([`Engine::scrub`]).
//!
//! Spellings picked because both accept them: `CAST(SUM(..) AS BIGINT)` (PostgreSQL's SUM of
//! BIGINT is NUMERIC), an upsert's `DO UPDATE … WHERE` instead of SQLite's two-argument `MAX`
//! (PostgreSQL's is `GREATEST`), and `LOWER(name) LIKE` with a lower-case pattern for SQLite's
//! ASCII-case-insensitive LIKE (PostgreSQL's LIKE is case-sensitive; names are ASCII).

use std::borrow::Cow;
use std::collections::HashSet;
use std::str::FromStr;

use cove_types::{SandboxState, SnapshotState};

use super::{
    ApiKeyRecord, BuildSpec, Change, Heartbeat, KeyHashScheme, Millis, NodeRecord, NodeState, Organization,
    PreviewTokenRecord, QuotaRecord, RegistryRecord, Revoked, SandboxArchive, SandboxLifecycle, SandboxRecord,
    SandboxUsage, SnapshotQuery, SnapshotRecord, SnapshotSort, Store, StoreError,
};

/// One value bound to a statement.
#[derive(Debug, Clone)]
pub(super) enum Arg {
    /// TEXT (`None`: NULL).
    Text(Option<String>),
    /// An integer (`None`: NULL).
    Int(Option<i64>),
    /// A flag.
    Flag(bool),
}

/// What [`Stmt::bind`] takes.
pub(super) trait IntoArg {
    /// The bound value.
    fn into_arg(self) -> Arg;
}

impl IntoArg for &str {
    fn into_arg(self) -> Arg {
        Arg::Text(Some(self.to_string()))
    }
}

impl IntoArg for &String {
    fn into_arg(self) -> Arg {
        Arg::Text(Some(self.clone()))
    }
}

impl IntoArg for String {
    fn into_arg(self) -> Arg {
        Arg::Text(Some(self))
    }
}

impl IntoArg for Option<String> {
    fn into_arg(self) -> Arg {
        Arg::Text(self)
    }
}

impl IntoArg for &Option<String> {
    fn into_arg(self) -> Arg {
        Arg::Text(self.clone())
    }
}

impl IntoArg for Option<&str> {
    fn into_arg(self) -> Arg {
        Arg::Text(self.map(str::to_string))
    }
}

impl IntoArg for i64 {
    fn into_arg(self) -> Arg {
        Arg::Int(Some(self))
    }
}

impl IntoArg for Option<i64> {
    fn into_arg(self) -> Arg {
        Arg::Int(self)
    }
}

impl IntoArg for bool {
    fn into_arg(self) -> Arg {
        Arg::Flag(self)
    }
}

/// A statement and its arguments, in the SQL both engines accept.
#[derive(Debug)]
pub(super) struct Stmt {
    /// The SQL, with `$N` placeholders.
    pub(super) sql: Cow<'static, str>,
    /// `$1`, `$2`, … in order.
    pub(super) args: Vec<Arg>,
}

impl Stmt {
    /// A statement without arguments yet.
    pub(super) fn new(sql: impl Into<Cow<'static, str>>) -> Self {
        Stmt { sql: sql.into(), args: Vec::new() }
    }

    /// Binds the next `$N`.
    pub(super) fn bind(mut self, v: impl IntoArg) -> Self {
        self.args.push(v.into_arg());
        self
    }

    /// The sqlx query for one engine.
    pub(super) fn query<'q, DB>(&'q self) -> sqlx::query::Query<'q, DB, DB::Arguments<'q>>
    where
        DB: sqlx::Database,
        Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        self.args.iter().fold(sqlx::query(&self.sql), |q, a| match a {
            Arg::Text(v) => q.bind(v.as_deref()),
            Arg::Int(v) => q.bind(*v),
            Arg::Flag(v) => q.bind(*v),
        })
    }
}

/// How one database runs the statements [`Store`] is written in. Every type that implements
/// it is a [`Store`].
#[async_trait::async_trait]
pub(super) trait Engine: Send + Sync + std::fmt::Debug + 'static {
    /// A row as the engine's driver returns it.
    type Row: RowExt + Send;

    /// The column that orders rows inserted in the same millisecond, in insertion order.
    const INSERT_ORDER: &'static str;

    /// Appended to a `SELECT … FROM sandboxes` inside a write, so that the rows it read cannot
    /// change or go before the write commits (empty where writes never run side by side).
    const LOCK_READ: &'static str;

    /// Runs a write; returns how many rows it changed.
    async fn execute(&self, s: Stmt) -> Result<u64, sqlx::Error>;

    /// Runs writes in one transaction.
    async fn execute_all(&self, s: Vec<Stmt>) -> Result<(), sqlx::Error>;

    /// Runs a write that never overlaps another call of this (on any connection, or any
    /// node sharing the database); returns how many rows it changed.
    async fn execute_serialized(&self, s: Stmt) -> Result<u64, sqlx::Error>;

    /// Every row a read returns.
    async fn fetch_all(&self, s: Stmt) -> Result<Vec<Self::Row>, sqlx::Error>;

    /// The first row a read returns, if any.
    async fn fetch_optional(&self, s: Stmt) -> Result<Option<Self::Row>, sqlx::Error>;

    /// Removes what it can of overwritten values from the engine's files (an API key's old
    /// hash).
    async fn scrub(&self) -> Result<(), sqlx::Error>;

    /// Where [`Store::changes`] receivers subscribe.
    fn change_feed(&self) -> &tokio::sync::broadcast::Sender<Change>;
}

/// Typed column reads, the same for both engines' rows.
pub(super) trait RowExt {
    /// A TEXT column.
    fn text(&self, col: &'static str) -> Result<String, StoreError>;
    /// A nullable TEXT column.
    fn opt_text(&self, col: &'static str) -> Result<Option<String>, StoreError>;
    /// An integer column.
    fn int(&self, col: &'static str) -> Result<i64, StoreError>;
    /// A nullable integer column.
    fn opt_int(&self, col: &'static str) -> Result<Option<i64>, StoreError>;
    /// A flag column.
    fn flag(&self, col: &'static str) -> Result<bool, StoreError>;
}

impl<R> RowExt for R
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn text(&self, col: &'static str) -> Result<String, StoreError> {
        self.try_get(col).map_err(decode(col))
    }

    fn opt_text(&self, col: &'static str) -> Result<Option<String>, StoreError> {
        self.try_get(col).map_err(decode(col))
    }

    fn int(&self, col: &'static str) -> Result<i64, StoreError> {
        self.try_get(col).map_err(decode(col))
    }

    fn opt_int(&self, col: &'static str) -> Result<Option<i64>, StoreError> {
        self.try_get(col).map_err(decode(col))
    }

    fn flag(&self, col: &'static str) -> Result<bool, StoreError> {
        self.try_get(col).map_err(decode(col))
    }
}

fn decode(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| StoreError::Decode { what, why: e.to_string() }
}

fn q(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

/// [`q`], except that a uniqueness violation is [`StoreError::Duplicate`].
fn unique(what: &'static str, op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Duplicate { what },
        _ => q(op)(e),
    }
}

const SNAPSHOT_COLUMNS: &str = "id, org_id, name, image_name, state, error_reason, cpu, gpu, gpu_type, mem, disk, \
     entrypoint, region_id, size_bytes, image_digest, created_at, updated_at, last_used_at, build_dockerfile, \
     build_context_hashes, general";
const SNAPSHOT_COLUMN_COUNT: usize = 21;
const SANDBOX_COLUMNS: &str = "id, org_id, name, snapshot_id, snapshot_name, image_digest, user_name, env, labels, public, \
     network_block_all, privileged, region_id, cpu, gpu, mem, disk, state, desired_state, error_reason, auto_stop, \
     auto_archive, auto_delete, daemon_version, created_at, updated_at, build_dockerfile, build_context_hashes, \
     network_allow_list, domain_allow_list, linked_sandbox_id, node_id";
const SANDBOX_COLUMN_COUNT: usize = 32;
const NODE_COLUMNS: &str =
    "id, region, address, cpus, memory_mib, disk_mib, gpus, state, started_at, heartbeat_at, version";
const REGISTRY_COLUMNS: &str =
    "id, org_id, name, url, username, secret, project, provider, role_arn, created_at, updated_at";
const REGISTRY_COLUMN_COUNT: usize = 11;
const API_KEY_COLUMNS: &str =
    "id, org_id, name, key_hash, hash_scheme, prefix, admin, created_at, last_used_at, revoked_at";

/// `$from, $from+1, …`: `n` placeholders.
fn params(from: usize, n: usize) -> String {
    (from..from + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

fn json<T: serde::de::DeserializeOwned>(what: &'static str, v: &str) -> Result<T, StoreError> {
    serde_json::from_str(v).map_err(|e| StoreError::Decode { what, why: e.to_string() })
}

fn snapshot_from_row(r: &impl RowExt) -> Result<SnapshotRecord, StoreError> {
    let state = r.text("state")?;
    Ok(SnapshotRecord {
        id: r.text("id")?,
        org_id: r.text("org_id")?,
        name: r.text("name")?,
        image_name: r.text("image_name")?,
        state: SnapshotState::from_str(&state).map_err(|e| StoreError::Decode { what: "state", why: e.to_string() })?,
        error_reason: r.opt_text("error_reason")?,
        cpu: r.int("cpu")?,
        gpu: r.int("gpu")?,
        gpu_type: r.opt_text("gpu_type")?,
        mem: r.int("mem")?,
        disk: r.int("disk")?,
        entrypoint: r.opt_text("entrypoint")?.map(|e| json("entrypoint", &e)).transpose()?,
        region_id: r.text("region_id")?,
        size_bytes: r.opt_int("size_bytes")?,
        image_digest: r.opt_text("image_digest")?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
        last_used_at: r.opt_int("last_used_at")?,
        build: build_from_row(r)?,
        general: r.flag("general")?,
    })
}

fn org_from_row(r: &impl RowExt) -> Result<Organization, StoreError> {
    Ok(Organization { id: r.text("id")?, name: r.text("name")?, created_at: r.int("created_at")? })
}

fn registry_from_row(r: &impl RowExt) -> Result<RegistryRecord, StoreError> {
    Ok(RegistryRecord {
        id: r.text("id")?,
        org_id: r.text("org_id")?,
        name: r.text("name")?,
        url: r.text("url")?,
        username: r.text("username")?,
        sealed_secret: r.opt_text("secret")?,
        project: r.text("project")?,
        provider: r.text("provider")?,
        role_arn: r.opt_text("role_arn")?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
    })
}

fn key_from_row(r: &impl RowExt) -> Result<ApiKeyRecord, StoreError> {
    let scheme = r.text("hash_scheme")?;
    Ok(ApiKeyRecord {
        id: r.text("id")?,
        org_id: r.text("org_id")?,
        name: r.text("name")?,
        key_hash: r.text("key_hash")?,
        hash_scheme: KeyHashScheme::parse(&scheme).ok_or_else(|| StoreError::Decode {
            what: "api key hash scheme",
            why: format!("unknown scheme {scheme:?}"),
        })?,
        prefix: r.text("prefix")?,
        admin: r.flag("admin")?,
        created_at: r.int("created_at")?,
        last_used_at: r.opt_int("last_used_at")?,
        revoked_at: r.opt_int("revoked_at")?,
    })
}

fn sandbox_from_row(r: &impl RowExt) -> Result<SandboxRecord, StoreError> {
    let state = r.text("state")?;
    Ok(SandboxRecord {
        id: r.text("id")?,
        org_id: r.text("org_id")?,
        name: r.text("name")?,
        snapshot_id: r.opt_text("snapshot_id")?,
        snapshot_name: r.opt_text("snapshot_name")?,
        image_digest: r.text("image_digest")?,
        user: r.text("user_name")?,
        env: json("env", &r.text("env")?)?,
        labels: json("labels", &r.text("labels")?)?,
        public: r.flag("public")?,
        network_block_all: r.flag("network_block_all")?,
        privileged: r.flag("privileged")?,
        region_id: r.text("region_id")?,
        cpu: r.int("cpu")?,
        gpu: r.int("gpu")?,
        mem: r.int("mem")?,
        disk: r.int("disk")?,
        state: SandboxState::from_str(&state).map_err(|e| StoreError::Decode { what: "state", why: e.to_string() })?,
        desired_state: r.text("desired_state")?,
        error_reason: r.opt_text("error_reason")?,
        auto_stop: r.int("auto_stop")?,
        auto_archive: r.int("auto_archive")?,
        auto_delete: r.int("auto_delete")?,
        daemon_version: r.opt_text("daemon_version")?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
        build: build_from_row(r)?,
        network_allow_list: r.opt_text("network_allow_list")?,
        domain_allow_list: r.opt_text("domain_allow_list")?,
        linked_sandbox_id: r.opt_text("linked_sandbox_id")?,
        node_id: r.opt_text("node_id")?,
    })
}

fn node_from_row(r: &impl RowExt) -> Result<NodeRecord, StoreError> {
    let state = r.text("state")?;
    Ok(NodeRecord {
        id: r.text("id")?,
        region: r.text("region")?,
        address: r.text("address")?,
        cpus: r.int("cpus")?,
        memory_mib: r.int("memory_mib")?,
        disk_mib: r.int("disk_mib")?,
        gpus: r.int("gpus")?,
        state: NodeState::parse(&state)
            .ok_or_else(|| StoreError::Decode { what: "node state", why: format!("unknown state {state:?}") })?,
        started_at: r.int("started_at")?,
        heartbeat_at: r.int("heartbeat_at")?,
        version: r.text("version")?,
    })
}

/// The `build_dockerfile` and `build_context_hashes` columns of a snapshot or sandbox row.
fn build_from_row(r: &impl RowExt) -> Result<Option<BuildSpec>, StoreError> {
    let Some(dockerfile) = r.opt_text("build_dockerfile")? else { return Ok(None) };
    let context_hashes =
        r.opt_text("build_context_hashes")?.map(|h| json("build_context_hashes", &h)).transpose()?.unwrap_or_default();
    Ok(Some(BuildSpec { dockerfile, context_hashes }))
}

fn build_json(b: &Option<BuildSpec>) -> Option<String> {
    b.as_ref().map(|b| serde_json::to_string(&b.context_hashes).expect("strings serialize"))
}

/// Binds every column of [`SANDBOX_COLUMNS`], in its order (`$1` is the id).
fn bind_sandbox(q: Stmt, s: &SandboxRecord) -> Stmt {
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
        .bind(s.public)
        .bind(s.network_block_all)
        .bind(s.privileged)
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
        .bind(&s.node_id)
}

/// Binds every column of [`SNAPSHOT_COLUMNS`], in its order (`$1` is the id).
fn bind_snapshot(q: Stmt, s: &SnapshotRecord) -> Stmt {
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
        .bind(s.general)
}

fn entrypoint_json(e: &Option<Vec<String>>) -> Option<String> {
    e.as_ref().map(|v| serde_json::to_string(v).expect("a list of strings always serializes"))
}

/// Binds a compare-and-set's expected states, numbered from `$from`, and returns the list
/// of their placeholders.
fn bind_states<'a>(mut q: Stmt, from: usize, states: impl ExactSizeIterator<Item = &'a str>) -> (Stmt, String) {
    let list = params(from, states.len());
    for st in states {
        q = q.bind(st);
    }
    (q, list)
}

/// Rewrites a whole row only while its stored state is one of `states`; returns whether it
/// did. `row` binds every one of `columns` (`$1` is the id): row-value assignment rewrites
/// every column (id, owner and creation time with their unchanged values), so inserts and
/// updates share one binding order.
async fn update_row_if<'a, E: Engine>(
    e: &E,
    table: &str,
    (columns, n): (&str, usize),
    row: Stmt,
    states: impl ExactSizeIterator<Item = &'a str>,
    op: &'static str,
) -> Result<bool, StoreError> {
    let (rq, states) = bind_states(row, n + 1, states);
    let sql = format!("UPDATE {table} SET ({columns}) = ({}) WHERE id = $1 AND state IN ({states})", params(1, n));
    Ok(e.execute(Stmt { sql: sql.into(), ..rq }).await.map_err(q(op))? == 1)
}

/// The state a compare-and-set replaced, when it named only one ([`Change`]'s `previous`).
fn only<T: Copy>(expected: &[T]) -> Option<T> {
    if let [one] = expected { Some(*one) } else { None }
}

/// An API key row by a `WHERE` clause over `$1` and `$2`.
async fn api_key_where<E: Engine>(
    e: &E,
    filter: &str,
    (a, b): (&str, &str),
    op: &'static str,
) -> Result<Option<ApiKeyRecord>, StoreError> {
    let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE {filter}");
    one(e, Stmt::new(sql).bind(a).bind(b), key_from_row, op).await
}

/// Every row of a read, decoded.
async fn all<E: Engine, T>(
    e: &E,
    s: Stmt,
    decode: fn(&E::Row) -> Result<T, StoreError>,
    op: &'static str,
) -> Result<Vec<T>, StoreError> {
    e.fetch_all(s).await.map_err(q(op))?.iter().map(decode).collect()
}

/// The first row of a read, decoded.
async fn one<E: Engine, T>(
    e: &E,
    s: Stmt,
    decode: fn(&E::Row) -> Result<T, StoreError>,
    op: &'static str,
) -> Result<Option<T>, StoreError> {
    e.fetch_optional(s).await.map_err(q(op))?.as_ref().map(decode).transpose()
}

/// The `n` column of a one-row read (`SELECT COUNT(*) AS n …`).
async fn count<E: Engine>(e: &E, s: Stmt, op: &'static str) -> Result<i64, StoreError> {
    Ok(one(e, s, |r| r.int("n"), op).await?.unwrap_or(0))
}

#[async_trait::async_trait]
impl<E: Engine> Store for E {
    async fn insert_org(&self, org: &Organization) -> Result<(), StoreError> {
        let s = Stmt::new("INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3)");
        self.execute(s.bind(&org.id).bind(&org.name).bind(org.created_at)).await.map_err(q("insert organization"))?;
        Ok(())
    }

    async fn first_org(&self) -> Result<Option<Organization>, StoreError> {
        let s = Stmt::new("SELECT id, name, created_at FROM organizations ORDER BY created_at, id LIMIT 1");
        one(self, s, org_from_row, "get first organization").await
    }

    async fn insert_api_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError> {
        let s = Stmt::new(
            "INSERT INTO api_keys (id, org_id, name, key_hash, hash_scheme, prefix, admin, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&k.id)
        .bind(&k.org_id)
        .bind(&k.name)
        .bind(&k.key_hash)
        .bind(k.hash_scheme.as_str())
        .bind(&k.prefix)
        .bind(k.admin)
        .bind(k.created_at);
        self.execute(s).await.map_err(unique("api key", "insert api key"))?;
        Ok(())
    }

    async fn api_key_by_hash(&self, scheme: KeyHashScheme, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let filter = "key_hash = $1 AND hash_scheme = $2 AND revoked_at IS NULL";
        api_key_where(self, filter, (hash, scheme.as_str()), "find api key").await
    }

    async fn api_key_by_hash_including_revoked(
        &self,
        scheme: KeyHashScheme,
        hash: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        api_key_where(self, "key_hash = $1 AND hash_scheme = $2", (hash, scheme.as_str()), "find api key").await
    }

    async fn get_api_key(&self, org_id: &str, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        api_key_where(self, "org_id = $1 AND id = $2 AND revoked_at IS NULL", (org_id, id), "get api key").await
    }

    async fn list_api_keys(&self, org_id: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let sql = format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE org_id = $1 AND revoked_at IS NULL ORDER BY created_at, id"
        );
        all(self, Stmt::new(sql).bind(org_id), key_from_row, "list api keys").await
    }

    async fn revoke_api_key(&self, org_id: &str, id: &str, at: Millis) -> Result<Revoked, StoreError> {
        // One statement, never run beside another revoke (`execute_serialized`), so two
        // revokes of the last two admin keys cannot both see the other one still live.
        let s = Stmt::new(
            "UPDATE api_keys SET revoked_at = $1 WHERE org_id = $2 AND id = $3 AND revoked_at IS NULL \
             AND (NOT admin OR (SELECT COUNT(*) FROM api_keys WHERE admin AND revoked_at IS NULL) > 1)",
        );
        let n = self.execute_serialized(s.bind(at).bind(org_id).bind(id)).await.map_err(q("revoke api key"))?;
        if n == 1 {
            return Ok(Revoked::Done);
        }
        Ok(match self.get_api_key(org_id, id).await? {
            Some(k) if k.admin => Revoked::LastAdmin,
            _ => Revoked::NotFound,
        })
    }

    async fn rehash_api_key(&self, id: &str, scheme: KeyHashScheme, hash: &str) -> Result<(), StoreError> {
        let s = Stmt::new("UPDATE api_keys SET key_hash = $1, hash_scheme = $2 WHERE id = $3");
        self.execute(s.bind(hash).bind(scheme.as_str()).bind(id)).await.map_err(q("rehash api key"))?;
        self.scrub().await.map_err(q("scrub the old hash of a rehashed api key"))
    }

    async fn restore_admin_key(&self, id: &str) -> Result<(), StoreError> {
        let s = Stmt::new("UPDATE api_keys SET revoked_at = NULL, admin = TRUE WHERE id = $1");
        self.execute(s.bind(id)).await.map_err(q("restore admin api key"))?;
        Ok(())
    }

    async fn touch_api_key(&self, id: &str, at: Millis) -> Result<(), StoreError> {
        let s = Stmt::new("UPDATE api_keys SET last_used_at = $1 WHERE id = $2");
        self.execute(s.bind(at).bind(id)).await.map_err(q("touch api key"))?;
        Ok(())
    }

    async fn count_admin_keys(&self) -> Result<i64, StoreError> {
        let s = Stmt::new("SELECT COUNT(*) AS n FROM api_keys WHERE admin AND revoked_at IS NULL");
        count(self, s, "count admin api keys").await
    }

    async fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<(), StoreError> {
        let sql = format!("INSERT INTO snapshots ({SNAPSHOT_COLUMNS}) VALUES ({})", params(1, SNAPSHOT_COLUMN_COUNT));
        self.execute(bind_snapshot(Stmt::new(sql), s)).await.map_err(unique("snapshot", "insert snapshot"))?;
        let _ = self.change_feed().send(Change::Snapshot { record: s.clone(), created: true, previous: None });
        Ok(())
    }

    async fn get_snapshot(&self, org_id: &str, id_or_name: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        // An id first, then the organization's own name before a general snapshot's.
        let sql = format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE (org_id = $1 OR general) AND (id = $2 OR name = $2) \
             ORDER BY (id = $2) DESC, (org_id = $1) DESC LIMIT 1"
        );
        one(self, Stmt::new(sql).bind(org_id).bind(id_or_name), snapshot_from_row, "get snapshot").await
    }

    async fn general_snapshot_named(&self, name: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        let sql = format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE general AND name = $1 LIMIT 1");
        one(self, Stmt::new(sql).bind(name), snapshot_from_row, "get general snapshot").await
    }

    async fn get_snapshot_for_job(&self, id: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        let sql = format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE id = $1");
        one(self, Stmt::new(sql).bind(id), snapshot_from_row, "get snapshot").await
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
        // A case-insensitive substring, as SQLite's LIKE matches (ASCII only; names are ASCII).
        let pattern = query.name.as_ref().map(|n| {
            format!("%{}%", n.to_ascii_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"))
        });
        let (filter, limit) = if pattern.is_some() { ("AND LOWER(name) LIKE $2 ESCAPE '\\'", 3) } else { ("", 2) };
        let sql = format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE (org_id = $1 OR general) {filter} \
             ORDER BY {col} {dir}, id {dir} LIMIT ${limit} OFFSET ${}",
            limit + 1
        );
        let count_sql = format!("SELECT COUNT(*) AS n FROM snapshots WHERE (org_id = $1 OR general) {filter}");
        let (mut page, mut total) = (Stmt::new(sql).bind(org_id), Stmt::new(count_sql).bind(org_id));
        if let Some(p) = pattern {
            page = page.bind(p.clone());
            total = total.bind(p);
        }
        let items = all(self, page.bind(query.limit).bind(query.offset), snapshot_from_row, "list snapshots").await?;
        Ok((items, count(self, total, "count snapshots").await?))
    }

    async fn update_snapshot_if(&self, s: &SnapshotRecord, expected: &[SnapshotState]) -> Result<bool, StoreError> {
        let row = bind_snapshot(Stmt::new(""), s);
        let states = expected.iter().map(|st| st.as_str());
        let done =
            update_row_if(self, "snapshots", (SNAPSHOT_COLUMNS, SNAPSHOT_COLUMN_COUNT), row, states, "update snapshot")
                .await?;
        if done {
            let previous = only(expected);
            let _ = self.change_feed().send(Change::Snapshot { record: s.clone(), created: false, previous });
        }
        Ok(done)
    }

    async fn delete_snapshot(&self, id: &str) -> Result<(), StoreError> {
        self.execute(Stmt::new("DELETE FROM snapshots WHERE id = $1").bind(id)).await.map_err(q("delete snapshot"))?;
        let _ = self.change_feed().send(Change::SnapshotDeleted { id: id.to_string() });
        Ok(())
    }

    async fn snapshots_in_states_for_job(&self, states: &[SnapshotState]) -> Result<Vec<SnapshotRecord>, StoreError> {
        let (rq, list) = bind_states(Stmt::new(""), 1, states.iter().map(|st| st.as_str()));
        let sql = format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE state IN ({list}) ORDER BY created_at");
        all(self, Stmt { sql: sql.into(), ..rq }, snapshot_from_row, "list snapshots by state").await
    }

    async fn referenced_images(&self) -> Result<HashSet<String>, StoreError> {
        // Every sandbox keeps its image (its overlay's lower; a snapshot may be deleted
        // under it), and archived sandboxes' disks (migration 0011) are blobs to keep too.
        let s = Stmt::new(
            "SELECT DISTINCT image_digest AS digest FROM snapshots WHERE image_digest IS NOT NULL \
             UNION SELECT image_digest FROM sandboxes \
             UNION SELECT archive_digest FROM sandbox_lifecycle WHERE archive_digest IS NOT NULL",
        );
        let v = all(self, s, |r| r.text("digest"), "list referenced images").await?;
        Ok(v.into_iter().collect())
    }

    async fn deactivate_unused(&self, before: Millis, now: Millis) -> Result<u64, StoreError> {
        let s = Stmt::new(
            "UPDATE snapshots SET state = 'inactive', updated_at = $1 \
             WHERE state = 'active' AND NOT general AND COALESCE(last_used_at, created_at) < $2",
        );
        self.execute(s.bind(now).bind(before)).await.map_err(q("deactivate unused snapshots"))
    }

    async fn touch_snapshot(&self, id: &str, at: Millis) -> Result<(), StoreError> {
        let s = Stmt::new("UPDATE snapshots SET last_used_at = $1 WHERE id = $2");
        self.execute(s.bind(at).bind(id)).await.map_err(q("record snapshot use"))?;
        Ok(())
    }

    async fn insert_sandbox(&self, s: &SandboxRecord) -> Result<(), StoreError> {
        let sql = format!("INSERT INTO sandboxes ({SANDBOX_COLUMNS}) VALUES ({})", params(1, SANDBOX_COLUMN_COUNT));
        self.execute(bind_sandbox(Stmt::new(sql), s)).await.map_err(unique("sandbox", "insert sandbox"))?;
        let _ = self.change_feed().send(Change::Sandbox { record: s.clone(), created: true, previous: None });
        Ok(())
    }

    async fn get_sandbox(&self, org_id: &str, id_or_name: &str) -> Result<Option<SandboxRecord>, StoreError> {
        // An id match wins over a name match.
        let sql = format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE org_id = $1 AND (id = $2 OR name = $2) \
             ORDER BY (id = $2) DESC LIMIT 1"
        );
        one(self, Stmt::new(sql).bind(org_id).bind(id_or_name), sandbox_from_row, "get sandbox").await
    }

    async fn list_sandboxes(&self, org_id: &str) -> Result<Vec<SandboxRecord>, StoreError> {
        let sql =
            format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE org_id = $1 ORDER BY created_at DESC, id DESC");
        all(self, Stmt::new(sql).bind(org_id), sandbox_from_row, "list sandboxes").await
    }

    async fn update_sandbox_if(&self, s: &SandboxRecord, expected: &[SandboxState]) -> Result<bool, StoreError> {
        let row = bind_sandbox(Stmt::new(""), s);
        let states = expected.iter().map(|st| st.as_str());
        let done =
            update_row_if(self, "sandboxes", (SANDBOX_COLUMNS, SANDBOX_COLUMN_COUNT), row, states, "update sandbox")
                .await?;
        if done {
            let previous = only(expected);
            let _ = self.change_feed().send(Change::Sandbox { record: s.clone(), created: false, previous });
        }
        Ok(done)
    }

    async fn delete_sandbox(&self, id: &str) -> Result<(), StoreError> {
        self.execute(Stmt::new("DELETE FROM sandboxes WHERE id = $1").bind(id)).await.map_err(q("delete sandbox"))?;
        let _ = self.change_feed().send(Change::SandboxDeleted { id: id.to_string() });
        Ok(())
    }

    async fn all_sandboxes_for_job(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        let sql = format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes ORDER BY created_at");
        all(self, Stmt::new(sql), sandbox_from_row, "list all sandboxes").await
    }

    async fn node_sandboxes_for_job(&self, node: Option<&str>) -> Result<Vec<SandboxRecord>, StoreError> {
        let Some(node) = node else { return self.all_sandboxes_for_job().await };
        let sql = format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE node_id = $1 ORDER BY created_at, id");
        all(self, Stmt::new(sql).bind(node), sandbox_from_row, "list a node's sandboxes").await
    }

    async fn claim_sandbox(&self, id: &str, node: &str) -> Result<bool, StoreError> {
        let s = Stmt::new("UPDATE sandboxes SET node_id = $1 WHERE id = $2 AND node_id IS NULL").bind(node).bind(id);
        Ok(self.execute(s).await.map_err(q("claim sandbox for a node"))? == 1)
    }

    async fn fail_sandbox_if_unchanged(
        &self,
        seen: &SandboxRecord,
        reason: &str,
        at: Millis,
    ) -> Result<Option<SandboxRecord>, StoreError> {
        let s = Stmt::new(
            "UPDATE sandboxes SET state = $1, error_reason = $2, updated_at = $3 \
             WHERE id = $4 AND state = $5 AND updated_at = $6",
        )
        .bind(SandboxState::Error.as_str())
        .bind(reason)
        .bind(at)
        .bind(&seen.id)
        .bind(seen.state.as_str())
        .bind(seen.updated_at);
        if self.execute(s).await.map_err(q("mark sandbox failed"))? != 1 {
            return Ok(None);
        }
        let record = SandboxRecord {
            state: SandboxState::Error,
            error_reason: Some(reason.to_string()),
            updated_at: at,
            ..seen.clone()
        };
        let _ = self.change_feed().send(Change::Sandbox {
            record: record.clone(),
            created: false,
            previous: Some(seen.state),
        });
        Ok(Some(record))
    }

    async fn register_node(&self, n: &NodeRecord) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO nodes ({NODE_COLUMNS}) VALUES ({}) \
             ON CONFLICT (id) DO UPDATE SET region = excluded.region, address = excluded.address, \
             cpus = excluded.cpus, memory_mib = excluded.memory_mib, disk_mib = excluded.disk_mib, \
             gpus = excluded.gpus, started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, \
             version = excluded.version, \
             state = CASE WHEN nodes.state = 'draining' THEN 'draining' ELSE excluded.state END",
            params(1, 11)
        );
        let s = Stmt::new(sql)
            .bind(&n.id)
            .bind(&n.region)
            .bind(&n.address)
            .bind(n.cpus)
            .bind(n.memory_mib)
            .bind(n.disk_mib)
            .bind(n.gpus)
            .bind(n.state.as_str())
            .bind(n.started_at)
            .bind(n.heartbeat_at)
            .bind(&n.version);
        self.execute(s).await.map_err(q("register node"))?;
        Ok(())
    }

    async fn heartbeat_node(&self, id: &str, at: Millis) -> Result<Heartbeat, StoreError> {
        let beat = Stmt::new("UPDATE nodes SET heartbeat_at = $1 WHERE id = $2 AND state != 'lost'").bind(at).bind(id);
        if self.execute(beat).await.map_err(q("record node heartbeat"))? == 1 {
            return Ok(Heartbeat::Beat);
        }
        let revive = Stmt::new("UPDATE nodes SET heartbeat_at = $1, state = 'ready' WHERE id = $2 AND state = 'lost'")
            .bind(at)
            .bind(id);
        Ok(match self.execute(revive).await.map_err(q("revive lost node"))? {
            1 => Heartbeat::Revived,
            _ => Heartbeat::Missing,
        })
    }

    async fn get_node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        let sql = format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = $1");
        one(self, Stmt::new(sql).bind(id), node_from_row, "get node").await
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let sql = format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY region, id");
        all(self, Stmt::new(sql), node_from_row, "list nodes").await
    }

    async fn mark_node_lost_if(&self, id: &str, heartbeat_before: Millis) -> Result<bool, StoreError> {
        // READ COMMITTED re-evaluates the WHERE on the newest row version after waiting for a
        // concurrent writer: a second sweeper finds `lost` and changes nothing.
        let s = Stmt::new("UPDATE nodes SET state = 'lost' WHERE id = $1 AND state != 'lost' AND heartbeat_at < $2")
            .bind(id)
            .bind(heartbeat_before);
        Ok(self.execute(s).await.map_err(q("mark node lost"))? == 1)
    }

    async fn set_node_state_if(&self, id: &str, to: NodeState, from: &[NodeState]) -> Result<bool, StoreError> {
        let (rq, list) = bind_states(Stmt::new("").bind(to.as_str()).bind(id), 3, from.iter().map(|s| s.as_str()));
        let sql = format!("UPDATE nodes SET state = $1 WHERE id = $2 AND state IN ({list})");
        Ok(self.execute(Stmt { sql: sql.into(), ..rq }).await.map_err(q("change node state"))? == 1)
    }

    async fn installation_secret(&self, name: &str, candidate: &str) -> Result<String, StoreError> {
        // Both engines: an insert that keeps the first value, then read whichever won.
        let s =
            Stmt::new("INSERT INTO installation_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                .bind(name)
                .bind(candidate);
        self.execute(s).await.map_err(q("store installation secret"))?;
        let s = Stmt::new("SELECT value FROM installation_secrets WHERE name = $1").bind(name);
        one(self, s, |r| r.text("value"), "read installation secret").await?.ok_or_else(|| StoreError::Decode {
            what: "installation_secrets.value",
            why: format!("no row {name} after its insert"),
        })
    }

    async fn sandbox_counts_by_node(&self) -> Result<Vec<(Option<String>, i64)>, StoreError> {
        let s = Stmt::new("SELECT node_id, COUNT(*) AS n FROM sandboxes WHERE state != $1 GROUP BY node_id")
            .bind(SandboxState::Destroyed.as_str());
        all(self, s, |r| Ok((r.opt_text("node_id")?, r.int("n")?)), "count sandboxes per node").await
    }

    async fn insert_registry(&self, r: &RegistryRecord) -> Result<(), StoreError> {
        let sql =
            format!("INSERT INTO docker_registries ({REGISTRY_COLUMNS}) VALUES ({})", params(1, REGISTRY_COLUMN_COUNT));
        let s = Stmt::new(sql)
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
            .bind(r.updated_at);
        self.execute(s).await.map_err(q("insert registry"))?;
        Ok(())
    }

    async fn get_registry(&self, org_id: &str, id: &str) -> Result<Option<RegistryRecord>, StoreError> {
        let sql = format!("SELECT {REGISTRY_COLUMNS} FROM docker_registries WHERE org_id = $1 AND id = $2");
        one(self, Stmt::new(sql).bind(org_id).bind(id), registry_from_row, "get registry").await
    }

    async fn list_registries(&self, org_id: &str) -> Result<Vec<RegistryRecord>, StoreError> {
        let sql = format!(
            "SELECT {REGISTRY_COLUMNS} FROM docker_registries WHERE org_id = $1 ORDER BY created_at DESC, {} DESC",
            E::INSERT_ORDER
        );
        all(self, Stmt::new(sql).bind(org_id), registry_from_row, "list registries").await
    }

    async fn update_registry(&self, r: &RegistryRecord) -> Result<bool, StoreError> {
        let s = Stmt::new(
            "UPDATE docker_registries SET name = $1, url = $2, username = $3, secret = $4, project = $5, \
             role_arn = $6, updated_at = $7 WHERE org_id = $8 AND id = $9",
        )
        .bind(&r.name)
        .bind(&r.url)
        .bind(&r.username)
        .bind(&r.sealed_secret)
        .bind(&r.project)
        .bind(&r.role_arn)
        .bind(r.updated_at)
        .bind(&r.org_id)
        .bind(&r.id);
        Ok(self.execute(s).await.map_err(q("update registry"))? == 1)
    }

    async fn delete_registry(&self, org_id: &str, id: &str) -> Result<bool, StoreError> {
        let s = Stmt::new("DELETE FROM docker_registries WHERE org_id = $1 AND id = $2").bind(org_id).bind(id);
        Ok(self.execute(s).await.map_err(q("delete registry"))? == 1)
    }

    async fn get_org(&self, id: &str) -> Result<Option<Organization>, StoreError> {
        let s = Stmt::new("SELECT id, name, created_at FROM organizations WHERE id = $1").bind(id);
        one(self, s, org_from_row, "get organization").await
    }

    async fn get_org_quota(&self, org_id: &str) -> Result<Option<QuotaRecord>, StoreError> {
        let s = Stmt::new("SELECT org_id, sandboxes, cpu, memory, disk, updated_at FROM org_quotas WHERE org_id = $1");
        let quota = |r: &E::Row| {
            Ok(QuotaRecord {
                org_id: r.text("org_id")?,
                sandboxes: r.opt_int("sandboxes")?,
                cpu: r.opt_int("cpu")?,
                memory: r.opt_int("memory")?,
                disk: r.opt_int("disk")?,
                updated_at: r.int("updated_at")?,
            })
        };
        one(self, s.bind(org_id), quota, "get organization quota").await
    }

    async fn set_org_quota(&self, rec: &QuotaRecord) -> Result<(), StoreError> {
        let s = Stmt::new(
            "INSERT INTO org_quotas (org_id, sandboxes, cpu, memory, disk, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (org_id) DO UPDATE SET sandboxes = excluded.sandboxes, cpu = excluded.cpu, \
             memory = excluded.memory, disk = excluded.disk, updated_at = excluded.updated_at",
        )
        .bind(&rec.org_id)
        .bind(rec.sandboxes)
        .bind(rec.cpu)
        .bind(rec.memory)
        .bind(rec.disk)
        .bind(rec.updated_at);
        self.execute(s).await.map_err(q("set organization quota"))?;
        Ok(())
    }

    async fn sandbox_usage(&self, org_id: &str) -> Result<SandboxUsage, StoreError> {
        let s = Stmt::new(
            "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(cpu), 0) AS BIGINT) AS cpu, \
             CAST(COALESCE(SUM(mem), 0) AS BIGINT) AS mem, CAST(COALESCE(SUM(disk), 0) AS BIGINT) AS disk \
             FROM sandboxes WHERE org_id = $1 AND state != $2",
        )
        .bind(org_id)
        .bind(SandboxState::Destroyed.as_str());
        let usage = |r: &E::Row| {
            Ok(SandboxUsage { sandboxes: r.int("n")?, cpu: r.int("cpu")?, memory: r.int("mem")?, disk: r.int("disk")? })
        };
        Ok(one(self, s, usage, "sum organization sandboxes").await?.unwrap_or_default())
    }

    async fn get_sandbox_by_id(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
        let sql = format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE id = $1");
        one(self, Stmt::new(sql).bind(id), sandbox_from_row, "get sandbox by id").await
    }

    async fn insert_preview_token(&self, t: &PreviewTokenRecord, now: Millis) -> Result<(), StoreError> {
        let expired = Stmt::new("DELETE FROM preview_tokens WHERE expires_at <= $1").bind(now);
        self.execute(expired).await.map_err(q("drop expired preview tokens"))?;
        let s =
            Stmt::new("INSERT INTO preview_tokens (token_hash, sandbox_id, port, expires_at) VALUES ($1, $2, $3, $4)")
                .bind(&t.token_hash)
                .bind(&t.sandbox_id)
                .bind(i64::from(t.port))
                .bind(t.expires_at);
        self.execute(s).await.map_err(q("insert preview token"))?;
        Ok(())
    }

    async fn get_preview_token(&self, hash: &str, now: Millis) -> Result<Option<PreviewTokenRecord>, StoreError> {
        let s = Stmt::new(
            "SELECT token_hash, sandbox_id, port, expires_at FROM preview_tokens \
             WHERE token_hash = $1 AND expires_at > $2",
        )
        .bind(hash)
        .bind(now);
        let token = |r: &E::Row| {
            Ok(PreviewTokenRecord {
                token_hash: r.text("token_hash")?,
                sandbox_id: r.text("sandbox_id")?,
                port: u16::try_from(r.int("port")?)
                    .map_err(|e| StoreError::Decode { what: "preview token port", why: e.to_string() })?,
                expires_at: r.int("expires_at")?,
            })
        };
        one(self, s, token, "get preview token").await
    }

    async fn delete_preview_token(&self, sandbox_id: &str, port: u16, hash: &str) -> Result<bool, StoreError> {
        let s = Stmt::new("DELETE FROM preview_tokens WHERE token_hash = $1 AND sandbox_id = $2 AND port = $3")
            .bind(hash)
            .bind(sandbox_id)
            .bind(i64::from(port));
        Ok(self.execute(s).await.map_err(q("delete preview token"))? == 1)
    }

    async fn sandbox_lifecycles(&self) -> Result<Vec<SandboxLifecycle>, StoreError> {
        let s = Stmt::new("SELECT sandbox_id, last_activity_at, archive_digest, archive_size FROM sandbox_lifecycle");
        let lifecycle = |r: &E::Row| {
            Ok(SandboxLifecycle {
                sandbox_id: r.text("sandbox_id")?,
                last_activity_at: r.int("last_activity_at")?,
                archive: r
                    .opt_text("archive_digest")?
                    .map(|digest| {
                        Ok::<_, StoreError>(SandboxArchive { digest, size: r.opt_int("archive_size")?.unwrap_or(0) })
                    })
                    .transpose()?,
            })
        };
        all(self, s, lifecycle, "list sandbox lifecycles").await
    }

    async fn record_sandbox_activity(&self, at: &[(String, Millis)]) -> Result<(), StoreError> {
        // In id order, so that two transactions touching the same rows take their locks in the
        // same order (PostgreSQL).
        let mut at: Vec<_> = at.iter().collect();
        at.sort();
        let sql = format!(
            "INSERT INTO sandbox_lifecycle (sandbox_id, last_activity_at) \
             SELECT id, $1 FROM sandboxes WHERE id = $2{} \
             ON CONFLICT (sandbox_id) DO UPDATE SET last_activity_at = excluded.last_activity_at \
             WHERE excluded.last_activity_at > sandbox_lifecycle.last_activity_at",
            E::LOCK_READ
        );
        let stmts = at.into_iter().map(|(id, t)| Stmt::new(sql.clone()).bind(*t).bind(id)).collect();
        self.execute_all(stmts).await.map_err(q("record sandbox activity"))
    }

    async fn set_sandbox_archive_if(
        &self,
        id: &str,
        archive: Option<&SandboxArchive>,
        state: SandboxState,
    ) -> Result<bool, StoreError> {
        let sql = format!(
            "INSERT INTO sandbox_lifecycle (sandbox_id, last_activity_at, archive_digest, archive_size) \
             SELECT id, updated_at, $1, $2 FROM sandboxes WHERE id = $3 AND state = $4{} \
             ON CONFLICT (sandbox_id) DO UPDATE SET \
             archive_digest = excluded.archive_digest, archive_size = excluded.archive_size",
            E::LOCK_READ
        );
        let s = Stmt::new(sql)
            .bind(archive.map(|a| a.digest.as_str()))
            .bind(archive.map(|a| a.size))
            .bind(id)
            .bind(state.as_str());
        Ok(self.execute(s).await.map_err(q("record sandbox archive"))? == 1)
    }

    fn changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.change_feed().subscribe()
    }
}
