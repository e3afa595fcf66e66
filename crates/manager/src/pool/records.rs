//! The store's record of pools (name → directory) and of each volume's format.
//!
//! The directory is the truth for which volumes exist; the store keeps what a file cannot tell
//! safely: the format the daemon created or received the volume in (see `model::manager::pool`).

use model::disk::ImageFormat;
use rusqlite::{params, OptionalExtension};

use crate::store::{Store, StoreError};

/// The tables. `pool_volumes` rows go with their pool, into `pool_forgotten_volumes` (by the
/// pool's directory), from where defining a pool on that directory again takes them back: a
/// volume's format is never guessed again (a raw volume whose guest wrote a qcow2 header into
/// it stays raw).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pools (
    name TEXT PRIMARY KEY NOT NULL,
    path TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS pool_volumes (
    pool TEXT NOT NULL REFERENCES pools(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    format TEXT NOT NULL,
    PRIMARY KEY (pool, name)
);
CREATE TABLE IF NOT EXISTS pool_forgotten_volumes (
    path TEXT NOT NULL,
    name TEXT NOT NULL,
    format TEXT NOT NULL,
    PRIMARY KEY (path, name)
);
";

pub fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Raw => "raw",
        ImageFormat::Qcow2 => "qcow2",
    }
}

fn parse_format(text: &str) -> Result<ImageFormat, StoreError> {
    match text {
        "raw" => Ok(ImageFormat::Raw),
        "qcow2" => Ok(ImageFormat::Qcow2),
        other => Err(StoreError::Corrupt(format!("a volume of format '{other}'"))),
    }
}

/// Why a pool could not be recorded.
pub enum Insert {
    Done,
    NameTaken,
    PathTaken(String),
}

pub fn insert_pool(store: &Store, name: &str, path: &str) -> Result<Insert, StoreError> {
    store.transaction(|tx| {
        let by_name: Option<String> =
            tx.query_row("SELECT path FROM pools WHERE name = ?1", [name], |r| r.get(0)).optional()?;
        if by_name.is_some() {
            return Ok(Insert::NameTaken);
        }
        let by_path: Option<String> =
            tx.query_row("SELECT name FROM pools WHERE path = ?1", [path], |r| r.get(0)).optional()?;
        if let Some(other) = by_path {
            return Ok(Insert::PathTaken(other));
        }
        tx.execute("INSERT INTO pools (name, path) VALUES (?1, ?2)", [name, path])?;
        tx.execute(
            "INSERT OR REPLACE INTO pool_volumes (pool, name, format)
             SELECT ?1, name, format FROM pool_forgotten_volumes WHERE path = ?2",
            [name, path],
        )?;
        tx.execute("DELETE FROM pool_forgotten_volumes WHERE path = ?1", [path])?;
        Ok(Insert::Done)
    })
}

pub fn pool_path(store: &Store, name: &str) -> Result<Option<String>, StoreError> {
    Ok(store.lock().query_row("SELECT path FROM pools WHERE name = ?1", [name], |r| r.get(0)).optional()?)
}

pub fn pools(store: &Store) -> Result<Vec<(String, String)>, StoreError> {
    let connection = store.lock();
    let mut statement = connection.prepare_cached("SELECT name, path FROM pools ORDER BY name")?;
    let rows = statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Forgets a pool; its volumes' formats are kept by its directory (see [`SCHEMA`]).
pub fn delete_pool(store: &Store, name: &str) -> Result<bool, StoreError> {
    store.transaction(|tx| {
        tx.execute(
            "INSERT OR REPLACE INTO pool_forgotten_volumes (path, name, format)
             SELECT pools.path, pool_volumes.name, pool_volumes.format
             FROM pool_volumes JOIN pools ON pools.name = pool_volumes.pool
             WHERE pool_volumes.pool = ?1",
            [name],
        )?;
        Ok(tx.execute("DELETE FROM pools WHERE name = ?1", [name])? > 0)
    })
}

pub fn volume_format(store: &Store, pool: &str, name: &str) -> Result<Option<ImageFormat>, StoreError> {
    let format: Option<String> = store
        .lock()
        .query_row("SELECT format FROM pool_volumes WHERE pool = ?1 AND name = ?2", [pool, name], |r| {
            r.get(0)
        })
        .optional()?;
    format.as_deref().map(parse_format).transpose()
}

/// The pool's volumes and their formats, by name.
pub fn volumes(store: &Store, pool: &str) -> Result<Vec<(String, ImageFormat)>, StoreError> {
    let rows: Vec<(String, String)> = {
        let connection = store.lock();
        let mut statement = connection
            .prepare_cached("SELECT name, format FROM pool_volumes WHERE pool = ?1 ORDER BY name")?;
        let rows = statement.query_map([pool], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    rows.into_iter().map(|(name, format)| Ok((name, parse_format(&format)?))).collect()
}

pub fn volume_count(store: &Store, pool: &str) -> Result<usize, StoreError> {
    let count: i64 =
        store.lock().query_row("SELECT COUNT(*) FROM pool_volumes WHERE pool = ?1", [pool], |r| r.get(0))?;
    Ok(usize::try_from(count).unwrap_or(0))
}

/// Records (or re-records: a row left by a file that is gone) a volume.
pub fn put_volume(store: &Store, pool: &str, name: &str, format: ImageFormat) -> Result<(), StoreError> {
    store.lock().execute(
        "INSERT OR REPLACE INTO pool_volumes (pool, name, format) VALUES (?1, ?2, ?3)",
        params![pool, name, format_name(format)],
    )?;
    Ok(())
}

pub fn delete_volume(store: &Store, pool: &str, name: &str) -> Result<(), StoreError> {
    store.lock().execute("DELETE FROM pool_volumes WHERE pool = ?1 AND name = ?2", [pool, name])?;
    Ok(())
}
