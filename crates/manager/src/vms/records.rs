//! The `vms` table and its side tables (`vm_volumes`, `vm_networks`, kept in the same
//! transaction as the definition so "who uses this volume" is one indexed lookup).

use model::manager::vm::{ExitRecord, VmDefinition, VmState, VmSummary};
use rusqlite::{params, OptionalExtension, Row, Transaction};

use crate::store::{Store, StoreError};

/// The store's tables for VMs.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS vms (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    definition TEXT NOT NULL,
    state TEXT NOT NULL,
    pid INTEGER,
    pid_start INTEGER,
    started_at INTEGER,
    last_exit TEXT,
    taps TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS vm_volumes (
    vm_uuid TEXT NOT NULL REFERENCES vms(uuid) ON DELETE CASCADE,
    volume TEXT NOT NULL,
    PRIMARY KEY (vm_uuid, volume)
);
CREATE INDEX IF NOT EXISTS vm_volumes_by_volume ON vm_volumes(volume);
CREATE TABLE IF NOT EXISTS vm_networks (
    vm_uuid TEXT NOT NULL REFERENCES vms(uuid) ON DELETE CASCADE,
    network TEXT NOT NULL,
    PRIMARY KEY (vm_uuid, network)
);
CREATE INDEX IF NOT EXISTS vm_networks_by_network ON vm_networks(network);
CREATE TABLE IF NOT EXISTS vm_macs (
    vm_uuid TEXT NOT NULL REFERENCES vms(uuid) ON DELETE CASCADE,
    mac TEXT NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS vm_macs_by_vm ON vm_macs(vm_uuid);
CREATE TABLE IF NOT EXISTS vm_intents (
    vm_uuid TEXT PRIMARY KEY REFERENCES vms(uuid) ON DELETE CASCADE,
    intent TEXT NOT NULL
);
";

/// What the daemon was doing to a VM when it last wrote down, kept in the store so a daemon
/// killed in the middle finishes it: a completed save stays saved, a reset VM is started again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// `/snapshot/create` succeeded and the VMM is being ended: the VM is saved.
    Save,
    /// The VM reset (or crashed with `on_crash = restart`) and is to be started again.
    Restart,
}

impl Pending {
    fn word(self) -> &'static str {
        match self {
            Pending::Save => "save",
            Pending::Restart => "restart",
        }
    }
}

/// Records (or with `None` clears) what is pending for the VM.
pub fn set_pending(store: &Store, uuid: &str, pending: Option<Pending>) -> Result<(), StoreError> {
    let connection = store.lock();
    match pending {
        Some(pending) => connection.execute(
            "INSERT OR REPLACE INTO vm_intents (vm_uuid, intent) VALUES (?1, ?2)",
            params![uuid, pending.word()],
        )?,
        None => connection.execute("DELETE FROM vm_intents WHERE vm_uuid = ?1", params![uuid])?,
    };
    Ok(())
}

/// What is pending for the VM (an unknown word is nothing: it was never written by this daemon).
pub fn pending(store: &Store, uuid: &str) -> Result<Option<Pending>, StoreError> {
    let word: Option<String> = store
        .lock()
        .query_row("SELECT intent FROM vm_intents WHERE vm_uuid = ?1", params![uuid], |row| row.get(0))
        .optional()?;
    Ok(match word.as_deref() {
        Some("save") => Some(Pending::Save),
        Some("restart") => Some(Pending::Restart),
        _ => None,
    })
}

/// One VM as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub uuid: String,
    pub definition: VmDefinition,
    pub state: VmState,
    pub pid: Option<u32>,
    /// The VMM's start time (`/proc/PID/stat`), so a reused PID is never taken for it.
    pub pid_start: Option<u64>,
    pub started_at: Option<u64>,
    pub last_exit: Option<ExitRecord>,
    pub taps: Vec<String>,
}

impl Record {
    pub fn name(&self) -> &str {
        &self.definition.name
    }

    pub fn summary(&self) -> VmSummary {
        VmSummary {
            name: self.definition.name.clone(),
            uuid: self.uuid.clone(),
            state: self.state,
            pid: self.pid,
            cpus: self.definition.cpus,
            memory_mib: self.definition.memory_mib,
            autostart: self.definition.autostart,
        }
    }
}

/// The state's word in the store (serde's snake_case name).
pub fn state_name(state: VmState) -> String {
    serde_json::to_value(state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn parse_state(text: &str) -> Result<VmState, StoreError> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| StoreError::Corrupt(format!("VM state '{text}'")))
}

const COLUMNS: &str = "uuid, definition, state, pid, pid_start, started_at, last_exit, taps";

fn from_row(row: &Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok(RawRecord {
        uuid: row.get(0)?,
        definition: row.get(1)?,
        state: row.get(2)?,
        pid: row.get(3)?,
        pid_start: row.get(4)?,
        started_at: row.get(5)?,
        last_exit: row.get(6)?,
        taps: row.get(7)?,
    })
}

struct RawRecord {
    uuid: String,
    definition: String,
    state: String,
    pid: Option<i64>,
    pid_start: Option<i64>,
    started_at: Option<i64>,
    last_exit: Option<String>,
    taps: String,
}

impl RawRecord {
    fn decode(self) -> Result<Record, StoreError> {
        let corrupt =
            |what: &str, e: serde_json::Error| StoreError::Corrupt(format!("VM {}: {what}: {e}", self.uuid));
        Ok(Record {
            definition: serde_json::from_str(&self.definition).map_err(|e| corrupt("definition", e))?,
            state: parse_state(&self.state)?,
            pid: self.pid.and_then(|p| u32::try_from(p).ok()),
            pid_start: self.pid_start.map(|t| t as u64),
            started_at: self.started_at.map(|t| t as u64),
            last_exit: self
                .last_exit
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| corrupt("last exit", e))?,
            taps: serde_json::from_str(&self.taps).map_err(|e| corrupt("taps", e))?,
            uuid: self.uuid,
        })
    }
}

/// A row of `vms` that does not decode (a bad definition, state word or column): what could
/// be read of it, so the daemon leaves its VMM alone.
#[derive(Debug)]
pub struct Unreadable {
    pub uuid: Option<String>,
    pub pid: Option<u32>,
    pub error: StoreError,
}

/// Every VM, by name, decoded row by row: one bad row does not hide the others.
pub fn list_each(store: &Store) -> Result<(Vec<Record>, Vec<Unreadable>), StoreError> {
    let connection = store.lock();
    let mut statement = connection.prepare_cached(&format!("SELECT {COLUMNS} FROM vms ORDER BY name"))?;
    let mut rows = statement.query([])?;
    let mut raw = Vec::new();
    let mut unreadable = Vec::new();
    while let Some(row) = rows.next()? {
        match from_row(row) {
            Ok(record) => raw.push(record),
            Err(e) => unreadable.push(Unreadable {
                uuid: row.get(0).ok(),
                pid: row.get::<_, Option<i64>>(3).ok().flatten().and_then(|p| u32::try_from(p).ok()),
                error: e.into(),
            }),
        }
    }
    drop(rows);
    drop(statement);
    drop(connection);
    let mut records = Vec::new();
    for raw in raw {
        let (uuid, pid) = (raw.uuid.clone(), raw.pid.and_then(|p| u32::try_from(p).ok()));
        match raw.decode() {
            Ok(record) => records.push(record),
            Err(error) => unreadable.push(Unreadable { uuid: Some(uuid), pid, error }),
        }
    }
    Ok((records, unreadable))
}

/// Every VM that can be read, by name; the rows that cannot are logged and left out.
pub fn list(store: &Store) -> Result<Vec<Record>, StoreError> {
    let (records, unreadable) = list_each(store)?;
    for bad in unreadable {
        tracing::warn!("VM {}: left out: {}", bad.uuid.as_deref().unwrap_or("(no UUID)"), bad.error);
    }
    Ok(records)
}

/// Every VM's summary, by name, without decoding the definitions (what `vm list` needs, fast
/// with thousands of VMs).
pub fn summaries(store: &Store) -> Result<Vec<VmSummary>, StoreError> {
    let connection = store.lock();
    let mut statement = connection.prepare_cached(
        "SELECT uuid, name, state, pid, json_extract(definition, '$.cpus'), \
         json_extract(definition, '$.memory_mib'), json_extract(definition, '$.autostart') \
         FROM vms ORDER BY name",
    )?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, Option<i64>>(3)?,
            row.get::<_, Option<i64>>(4)?,
            row.get::<_, Option<i64>>(5)?,
            row.get::<_, Option<i64>>(6)?,
        ))
    })?;
    let mut summaries = Vec::new();
    for row in rows {
        let (uuid, name, state, pid, cpus, memory_mib, autostart) = row?;
        let corrupt = || StoreError::Corrupt(format!("VM {uuid}: its definition lacks cpus or memory"));
        summaries.push(VmSummary {
            state: parse_state(&state)?,
            pid: pid.and_then(|p| u32::try_from(p).ok()),
            cpus: cpus.and_then(|c| u8::try_from(c).ok()).ok_or_else(corrupt)?,
            memory_mib: memory_mib.and_then(|m| u32::try_from(m).ok()).ok_or_else(corrupt)?,
            autostart: autostart.unwrap_or(0) != 0,
            name,
            uuid,
        });
    }
    Ok(summaries)
}

/// One VM by name or UUID.
pub fn find(store: &Store, key: &str) -> Result<Option<Record>, StoreError> {
    let connection = store.lock();
    let raw = connection
        .query_row(&format!("SELECT {COLUMNS} FROM vms WHERE name = ?1 OR uuid = ?1"), params![key], from_row)
        .optional()?;
    drop(connection);
    raw.map(RawRecord::decode).transpose()
}

/// Whether a VM other than `uuid` is named `name`.
pub fn name_taken(tx: &Transaction<'_>, name: &str, uuid: &str) -> Result<bool, StoreError> {
    Ok(tx
        .query_row("SELECT 1 FROM vms WHERE name = ?1 AND uuid != ?2", params![name, uuid], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Inserts a new VM, or replaces the definition of an existing one, with its side tables.
pub fn put_definition(
    tx: &Transaction<'_>,
    uuid: &str,
    definition: &VmDefinition,
    new: bool,
) -> Result<(), StoreError> {
    let text = serde_json::to_string(definition).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if new {
        tx.execute(
            "INSERT INTO vms (uuid, name, definition, state) VALUES (?1, ?2, ?3, ?4)",
            params![uuid, definition.name, text, state_name(VmState::Stopped)],
        )?;
    } else {
        tx.execute(
            "UPDATE vms SET name = ?2, definition = ?3 WHERE uuid = ?1",
            params![uuid, definition.name, text],
        )?;
        tx.execute("DELETE FROM vm_volumes WHERE vm_uuid = ?1", params![uuid])?;
        tx.execute("DELETE FROM vm_networks WHERE vm_uuid = ?1", params![uuid])?;
        tx.execute("DELETE FROM vm_macs WHERE vm_uuid = ?1", params![uuid])?;
    }
    // UNIQUE: a MAC another VM has fails the transaction (callers check `mac_owner` first).
    for mac in definition.nics.iter().filter_map(|n| n.mac.as_deref()) {
        tx.execute("INSERT INTO vm_macs (vm_uuid, mac) VALUES (?1, ?2)", params![uuid, mac_key(mac)])?;
    }
    for volume in definition.disks.iter().filter_map(|d| d.volume.as_deref()) {
        tx.execute(
            "INSERT OR IGNORE INTO vm_volumes (vm_uuid, volume) VALUES (?1, ?2)",
            params![uuid, volume],
        )?;
    }
    for network in definition.nics.iter().filter_map(|n| n.network.as_deref()) {
        tx.execute(
            "INSERT OR IGNORE INTO vm_networks (vm_uuid, network) VALUES (?1, ?2)",
            params![uuid, network],
        )?;
    }
    Ok(())
}

/// A MAC as the `vm_macs` table keys it (one spelling per address).
fn mac_key(mac: &str) -> String {
    mac.parse::<model::config::MacAddress>().map_or_else(|_| mac.to_ascii_lowercase(), |m| m.to_string())
}

/// The name of the VM other than `uuid` whose card has `mac`.
pub fn mac_owner(tx: &Transaction<'_>, mac: &str, uuid: &str) -> Result<Option<String>, StoreError> {
    Ok(tx
        .query_row(
            "SELECT vms.name FROM vm_macs JOIN vms ON vms.uuid = vm_uuid WHERE mac = ?1 AND vm_uuid != ?2",
            params![mac_key(mac), uuid],
            |row| row.get(0),
        )
        .optional()?)
}

/// Removes a VM (its side tables follow by cascade).
pub fn delete(store: &Store, uuid: &str) -> Result<(), StoreError> {
    store.transaction(|tx| -> Result<(), StoreError> {
        tx.execute("DELETE FROM vm_volumes WHERE vm_uuid = ?1", params![uuid])?;
        tx.execute("DELETE FROM vm_networks WHERE vm_uuid = ?1", params![uuid])?;
        tx.execute("DELETE FROM vm_intents WHERE vm_uuid = ?1", params![uuid])?;
        tx.execute("DELETE FROM vm_macs WHERE vm_uuid = ?1", params![uuid])?;
        tx.execute("DELETE FROM vms WHERE uuid = ?1", params![uuid])?;
        Ok(())
    })
}

/// A VMM was spawned: its PID and start time (NULL when unknown), state `starting`.
pub fn set_spawned(
    store: &Store,
    uuid: &str,
    pid: u32,
    pid_start: Option<u64>,
    started_at: u64,
) -> Result<(), StoreError> {
    store.transaction(|tx| -> Result<(), StoreError> {
        tx.execute(
            "UPDATE vms SET state = ?2, pid = ?3, pid_start = ?4, started_at = ?5, taps = '[]' WHERE uuid = ?1",
            params![uuid, state_name(VmState::Starting), pid, pid_start.map(|t| t as i64), started_at as i64],
        )?;
        // A new run: whatever the previous one left pending is done or overtaken.
        tx.execute("DELETE FROM vm_intents WHERE vm_uuid = ?1", params![uuid])?;
        Ok(())
    })
}

/// The taps made for the VM's current run.
pub fn set_taps(store: &Store, uuid: &str, taps: &[String]) -> Result<(), StoreError> {
    let text = serde_json::to_string(taps).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    store.lock().execute("UPDATE vms SET taps = ?2 WHERE uuid = ?1", params![uuid, text])?;
    Ok(())
}

/// A new state for the VM while its VMM `pid` runs; nothing changes if another VMM (or none)
/// is recorded by now. Whether it changed.
pub fn set_active_state(store: &Store, uuid: &str, pid: u32, state: VmState) -> Result<bool, StoreError> {
    let changed = store.lock().execute(
        "UPDATE vms SET state = ?3 WHERE uuid = ?1 AND pid = ?2",
        params![uuid, pid, state_name(state)],
    )?;
    Ok(changed > 0)
}

/// The VMM `pid` ended (or none runs): the VM's new state and how it ended. With `pid`, only if
/// that VMM is still the one recorded.
pub fn set_ended(
    store: &Store,
    uuid: &str,
    pid: Option<u32>,
    state: VmState,
    exit: Option<&ExitRecord>,
) -> Result<bool, StoreError> {
    let exit = exit.map(serde_json::to_string).transpose().map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let connection = store.lock();
    let sql = "UPDATE vms SET state = ?2, pid = NULL, pid_start = NULL, taps = '[]', \
               last_exit = COALESCE(?3, last_exit) WHERE uuid = ?1";
    let changed = match pid {
        Some(pid) => {
            connection.execute(&format!("{sql} AND pid = ?4"), params![uuid, state_name(state), exit, pid])?
        }
        None => connection.execute(sql, params![uuid, state_name(state), exit])?,
    };
    Ok(changed > 0)
}

/// The names of the VMs whose definitions use the volume `reference`.
pub fn users_of_volume(store: &Store, reference: &str) -> Result<Vec<String>, StoreError> {
    names(
        store,
        "SELECT vms.name FROM vm_volumes JOIN vms ON vms.uuid = vm_uuid WHERE volume = ?1 ORDER BY 1",
        reference,
    )
}

/// The names of the VMs with a card on the network `name`.
pub fn users_of_network(store: &Store, name: &str) -> Result<Vec<String>, StoreError> {
    names(
        store,
        "SELECT vms.name FROM vm_networks JOIN vms ON vms.uuid = vm_uuid WHERE network = ?1 ORDER BY 1",
        name,
    )
}

fn names(store: &Store, sql: &str, key: &str) -> Result<Vec<String>, StoreError> {
    let connection = store.lock();
    let mut statement = connection.prepare_cached(sql)?;
    let names = statement.query_map(params![key], |row| row.get(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::manager::vm::{DiskDefinition, NicDefinition};

    fn definition(name: &str) -> VmDefinition {
        let mut definition: VmDefinition =
            serde_json::from_str(&format!(r#"{{"name": "{name}", "kernel": "/k"}}"#)).unwrap();
        definition.disks = vec![DiskDefinition { volume: Some("default/a".into()), ..Default::default() }];
        definition.nics = vec![NicDefinition { network: Some("lan".into()), ..Default::default() }];
        definition
    }

    #[test]
    fn definitions_round_trip_and_side_tables_follow_edits_and_deletes() {
        let store = Store::in_memory(&[SCHEMA]).unwrap();
        store.transaction(|tx| put_definition(tx, "u1", &definition("web"), true)).unwrap();
        let record = find(&store, "web").unwrap().unwrap();
        assert_eq!(find(&store, "u1").unwrap(), Some(record.clone()));
        assert_eq!((record.state, record.definition.name.as_str()), (VmState::Stopped, "web"));
        assert_eq!(users_of_volume(&store, "default/a").unwrap(), ["web"]);
        assert_eq!(users_of_network(&store, "lan").unwrap(), ["web"]);
        assert_eq!(summaries(&store).unwrap(), [record.summary()]);

        let mut edited = definition("web2");
        edited.disks[0].volume = Some("default/b".into());
        store.transaction(|tx| put_definition(tx, "u1", &edited, false)).unwrap();
        assert!(users_of_volume(&store, "default/a").unwrap().is_empty());
        assert_eq!(users_of_volume(&store, "default/b").unwrap(), ["web2"]);

        delete(&store, "u1").unwrap();
        assert!(list(&store).unwrap().is_empty());
        assert!(users_of_network(&store, "lan").unwrap().is_empty());
    }

    #[test]
    fn a_bad_row_is_set_aside_and_the_others_still_read() {
        let store = Store::in_memory(&[SCHEMA]).unwrap();
        store.transaction(|tx| put_definition(tx, "u1", &definition("a"), true)).unwrap();
        store.transaction(|tx| put_definition(tx, "u2", &definition("b"), true)).unwrap();
        store.transaction(|tx| put_definition(tx, "u3", &definition("c"), true)).unwrap();
        set_spawned(&store, "u2", 42, None, 100).unwrap();
        let connection = store.lock();
        connection.execute("UPDATE vms SET definition = '{\"cpus\": 1}' WHERE uuid = 'u2'", []).unwrap();
        connection.execute("UPDATE vms SET state = 'bogus', pid = 43 WHERE uuid = 'u3'", []).unwrap();
        drop(connection);
        assert_eq!(list(&store).unwrap().iter().map(Record::name).collect::<Vec<_>>(), ["a"]);
        let (records, unreadable) = list_each(&store).unwrap();
        assert_eq!(records.iter().map(Record::name).collect::<Vec<_>>(), ["a"]);
        let mut bad: Vec<_> = unreadable.iter().map(|u| (u.uuid.as_deref(), u.pid)).collect();
        bad.sort();
        assert_eq!(bad, [(Some("u2"), Some(42)), (Some("u3"), Some(43))]);
    }

    #[test]
    fn an_end_is_recorded_only_for_the_recorded_vmm() {
        let store = Store::in_memory(&[SCHEMA]).unwrap();
        store.transaction(|tx| put_definition(tx, "u1", &definition("web"), true)).unwrap();
        set_spawned(&store, "u1", 42, Some(7), 100).unwrap();
        assert!(set_active_state(&store, "u1", 42, VmState::Running).unwrap());
        assert!(!set_ended(&store, "u1", Some(43), VmState::Stopped, None).unwrap());
        assert_eq!(find(&store, "u1").unwrap().unwrap().state, VmState::Running);
        assert!(set_ended(&store, "u1", Some(42), VmState::Stopped, None).unwrap());
        let record = find(&store, "u1").unwrap().unwrap();
        assert_eq!((record.state, record.pid), (VmState::Stopped, None));
    }
}
