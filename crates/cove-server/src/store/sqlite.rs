//! The embedded default store: SQLite through sqlx, in WAL mode.
//!
//! Two pools over one file, so that reads never wait behind writes: `write` has a single
//! connection (SQLite allows one writer; queueing in the pool is cheaper than the busy-wait
//! of several connections contending for the lock, and never starves readers), and `read`
//! has [`READERS`] read-only connections, each reading the last committed state (WAL
//! readers are not blocked by the writer). Writes are single statements or short
//! transactions; nothing slow happens while a connection is held.

use std::path::Path;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};

use super::sql::{Engine, Stmt};
use super::{Change, StoreError};

/// SQLite-backed [`Store`](super::Store) (the queries are `super::sql`'s).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// The one writer connection: every INSERT, UPDATE, DELETE and write transaction.
    write: SqlitePool,
    /// Read-only connections for every SELECT.
    read: SqlitePool,
    /// [`Store::changes`](super::Store::changes): sandbox and snapshot writes, sent after they commit.
    changes: tokio::sync::broadcast::Sender<Change>,
}

/// Read-only connections: enough that a burst of requests rarely queues for one.
const READERS: u32 = 8;

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
}

#[async_trait::async_trait]
impl Engine for SqliteStore {
    type Row = SqliteRow;

    const INSERT_ORDER: &'static str = "rowid";

    // One writer connection: a write statement never runs beside another.
    const LOCK_READ: &'static str = "";

    async fn execute(&self, s: Stmt) -> Result<u64, sqlx::Error> {
        Ok(s.query().execute(&self.write).await?.rows_affected())
    }

    async fn execute_all(&self, all: Vec<Stmt>) -> Result<(), sqlx::Error> {
        let mut tx = self.write.begin().await?;
        for s in &all {
            s.query().execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    async fn execute_serialized(&self, s: Stmt) -> Result<u64, sqlx::Error> {
        // SQLite runs the statement under its write lock, on the one writer connection.
        self.execute(s).await
    }

    async fn fetch_all(&self, s: Stmt) -> Result<Vec<SqliteRow>, sqlx::Error> {
        s.query().fetch_all(&self.read).await
    }

    async fn fetch_optional(&self, s: Stmt) -> Result<Option<SqliteRow>, sqlx::Error> {
        s.query().fetch_optional(&self.read).await
    }

    async fn scrub(&self) -> Result<(), sqlx::Error> {
        // The pages that held the old value may still sit in the WAL from earlier writes: copy
        // the WAL back (secure_delete zeroed the old cells) and truncate it. A reader in the
        // way only delays this to a later checkpoint, so "busy" is not an error.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.write).await.map(drop)
    }

    fn change_feed(&self) -> &tokio::sync::broadcast::Sender<Change> {
        &self.changes
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{key, snap};
    use super::super::{KeyHashScheme, Organization, Store};
    use super::*;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let d = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&d.path().join("cove.db")).await.unwrap();
        s.insert_org(&Organization { id: "o1".into(), name: "o1".into(), created_at: 0 }).await.unwrap();
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
