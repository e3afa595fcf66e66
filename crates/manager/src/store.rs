//! The daemon's store: one SQLite database (`kestrel.db` in the state directory) in WAL mode.
//!
//! Every change is one transaction, so a daemon killed at any point leaves the store as it was
//! before or after the change, never between. Each module brings its own tables (`SCHEMA`
//! constants, created if missing); the connection is shared behind a mutex, and every statement
//! is short (indexed lookups, or a scan of at most a few thousand rows).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

/// A failure of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("the store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the store holds a bad record: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the store failed because the disk under the state directory is full.
    pub fn is_disk_full(&self) -> bool {
        let sql = match self {
            StoreError::Open { source, .. } | StoreError::Sql(source) => source,
            StoreError::Corrupt(_) => return false,
        };
        matches!(sql.sqlite_error_code(), Some(rusqlite::ErrorCode::DiskFull))
            || matches!(sql, rusqlite::Error::SqliteFailure(e, _) if e.extended_code == libc::ENOSPC)
    }
}

/// The store.
pub struct Store {
    connection: Mutex<Connection>,
}

impl Store {
    /// Opens (or creates, 0600) the database at `path` and creates the tables the `schemas` name.
    pub fn open(path: &Path, schemas: &[&str]) -> Result<Store, StoreError> {
        let open_error = |source| StoreError::Open { path: path.display().to_string(), source };
        // The database and its -wal/-shm files are created under the daemon's umask (0077).
        let connection = Connection::open(path).map_err(open_error)?;
        Store::prepare(connection, schemas).map_err(open_error)
    }

    /// An in-memory store, for tests.
    pub fn in_memory(schemas: &[&str]) -> Result<Store, StoreError> {
        Ok(Store::prepare(Connection::open_in_memory()?, schemas)?)
    }

    fn prepare(connection: Connection, schemas: &[&str]) -> rusqlite::Result<Store> {
        // WAL: readers do not block the writer, and a killed process loses no committed change.
        // synchronous=NORMAL is durable against process crashes (a power loss may lose the last
        // transactions, never consistency).
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        for schema in schemas {
            connection.execute_batch(schema)?;
        }
        Ok(Store { connection: Mutex::new(connection) })
    }

    /// The connection, for one short piece of work. A panic while it was held does not poison
    /// the store for good: SQLite rolled back whatever transaction was open.
    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `work` in one transaction, committed if it returns `Ok`.
    pub fn transaction<T, E: From<rusqlite::Error>>(
        &self,
        work: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        let value = work(&transaction)?;
        transaction.commit()?;
        Ok(value)
    }
}
