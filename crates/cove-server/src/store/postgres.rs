//! The store on PostgreSQL (`--database-url postgres://…`), for installations whose nodes
//! share one database.
//!
//! One pool serves reads and writes: PostgreSQL runs writers side by side, so every write
//! that depends on what it reads is one statement whose `WHERE` re-checks the row it changes
//! (a compare-and-set: READ COMMITTED re-evaluates it on the newest row version), or locks the
//! rows it read (`LOCK_READ`), or holds an advisory lock (`execute_serialized`). The queries
//! are `super::sql`'s; the schema is `migrations/postgres/`, number for number the SQLite one.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Connection as _, PgConnection, PgPool};

use super::sql::{Engine, Stmt};
use super::{Change, StoreError};
use crate::config::DatabaseUrl;

/// Connections one server keeps at most: a node's share of PostgreSQL's `max_connections`
/// (100 by default), leaving room for a few nodes and the operators' own sessions.
const POOL_SIZE: u32 = 16;

/// The advisory lock key [`Engine::execute_serialized`] takes (`'cove'` in ASCII, then 1:
/// revoking API keys).
const SERIALIZED_WRITES: i64 = 0x636f_7665_0000_0001;

/// PostgreSQL-backed [`Store`](super::Store).
#[derive(Debug, Clone)]
pub struct PgStore {
    /// Reads and writes.
    pool: PgPool,
    /// [`Store::changes`](super::Store::changes): sandbox and snapshot writes this server
    /// made, sent after they commit.
    changes: tokio::sync::broadcast::Sender<Change>,
}

impl PgStore {
    /// Connects to the database and applies pending migrations (under sqlx's advisory lock,
    /// so servers starting together migrate once).
    pub async fn connect(url: &DatabaseUrl) -> Result<Self, StoreError> {
        let open = |source| StoreError::Open { path: url.to_string(), source };
        tracing::info!(url = %url, "connecting to the metadata store on PostgreSQL");
        let mut opts = PgConnectOptions::from_str(url.expose()).map_err(open)?;
        if opts.get_application_name().is_none() {
            opts = opts.application_name("cove");
        }
        // One connection first, for the migrations: its error says why it failed (refused,
        // authentication, no such database) where a pool would only time out.
        let mut first = PgConnection::connect_with(&opts).await.map_err(open)?;
        sqlx::migrate!("./migrations/postgres").run(&mut first).await.map_err(StoreError::Migrate)?;
        let _ = first.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(60))
            .connect_lazy_with(opts);
        tracing::info!(url = %url, "metadata store on PostgreSQL, migrated");
        Ok(PgStore { pool, changes: tokio::sync::broadcast::channel(1024).0 })
    }
}

#[async_trait::async_trait]
impl Engine for PgStore {
    type Row = PgRow;

    const INSERT_ORDER: &'static str = "seq";

    // A share lock: a concurrent UPDATE or DELETE of the row waits for this write to commit,
    // and one that committed first is seen (the row is re-read, and the WHERE re-checked).
    const LOCK_READ: &'static str = " FOR SHARE";

    async fn execute(&self, s: Stmt) -> Result<u64, sqlx::Error> {
        Ok(s.query().execute(&self.pool).await?.rows_affected())
    }

    async fn execute_all(&self, all: Vec<Stmt>) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for s in &all {
            s.query().execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    async fn execute_serialized(&self, s: Stmt) -> Result<u64, sqlx::Error> {
        // The statement that follows the lock takes its snapshot after it, so it sees what
        // the previous holder committed.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(SERIALIZED_WRITES).execute(&mut *tx).await?;
        let n = s.query().execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    async fn fetch_all(&self, s: Stmt) -> Result<Vec<PgRow>, sqlx::Error> {
        s.query().fetch_all(&self.pool).await
    }

    async fn fetch_optional(&self, s: Stmt) -> Result<Option<PgRow>, sqlx::Error> {
        s.query().fetch_optional(&self.pool).await
    }

    async fn scrub(&self) -> Result<(), sqlx::Error> {
        // Nothing to do that would help: PostgreSQL has no secure_delete, so an overwritten
        // value stays in the table's dead row versions until VACUUM reuses their space, and
        // in the WAL and its archives. The database's own access control and encryption at
        // rest protect it there.
        Ok(())
    }

    fn change_feed(&self) -> &tokio::sync::broadcast::Sender<Change> {
        &self.changes
    }
}

#[cfg(test)]
mod tests {
    use cove_types::SandboxState;

    use super::super::tests::sandbox;
    use super::super::{Organization, SandboxArchive, Store, testing};
    use super::*;

    #[tokio::test]
    async fn an_archive_compare_and_set_waits_for_a_state_change_in_flight_and_then_sees_it() {
        let url = testing::fresh_database().await;
        let s = PgStore::connect(&url).await.unwrap();
        s.insert_org(&Organization { id: "o1".into(), name: "o1".into(), created_at: 0 }).await.unwrap();
        s.insert_sandbox(&sandbox("x", "o1", SandboxState::Stopped)).await.unwrap();
        // Another node moves the sandbox on and has not committed yet.
        let mut other = sqlx::PgConnection::connect(url.expose()).await.unwrap();
        let mut tx = other.begin().await.unwrap();
        sqlx::query("UPDATE sandboxes SET state = 'destroyed' WHERE id = 'x'").execute(&mut *tx).await.unwrap();
        let archive = SandboxArchive { digest: "sha256:disk".into(), size: 1 };
        let set =
            tokio::spawn(async move { s.set_sandbox_archive_if("x", Some(&archive), SandboxState::Stopped).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!set.is_finished(), "the write waits for the row it read");
        tx.commit().await.unwrap();
        assert!(!set.await.unwrap().unwrap(), "and then finds the state moved on");
    }
}
