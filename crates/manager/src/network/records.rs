//! The networks' rows in the store: definitions (with the bridge name and whether the network
//! should be up) and the ports (the VMs' cards plugged in, with their taps and reservations).

use model::manager::network::{NetworkDefinition, NetworkPort};
use rusqlite::{params, OptionalExtension};

use crate::store::{Store, StoreError};

/// The tables.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS networks (
    name TEXT PRIMARY KEY,
    bridge TEXT NOT NULL UNIQUE,
    definition TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS network_ports (
    vm_uuid TEXT NOT NULL,
    nic_index INTEGER NOT NULL,
    vm_name TEXT NOT NULL,
    network TEXT NOT NULL,
    tap TEXT NOT NULL UNIQUE,
    mac TEXT NOT NULL,
    ip TEXT,
    PRIMARY KEY (vm_uuid, nic_index)
);
CREATE INDEX IF NOT EXISTS network_ports_by_network ON network_ports (network);
";

/// A network as stored.
#[derive(Clone, Debug)]
pub struct NetworkRecord {
    pub definition: NetworkDefinition,
    pub bridge: String,
    /// Whether it should be up (it was started and not stopped since).
    pub active: bool,
}

fn record(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, bool)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
}

fn decode((definition, bridge, active): (String, String, bool)) -> Result<NetworkRecord, StoreError> {
    let definition = serde_json::from_str(&definition)
        .map_err(|e| StoreError::Corrupt(format!("a network definition: {e}")))?;
    Ok(NetworkRecord { definition, bridge, active })
}

pub fn load(store: &Store, name: &str) -> Result<Option<NetworkRecord>, StoreError> {
    let row = store
        .lock()
        .query_row("SELECT definition, bridge, active FROM networks WHERE name = ?1", [name], record)
        .optional()?;
    row.map(decode).transpose()
}

pub fn all(store: &Store) -> Result<Vec<NetworkRecord>, StoreError> {
    let rows = {
        let connection = store.lock();
        let mut statement =
            connection.prepare("SELECT definition, bridge, active FROM networks ORDER BY name")?;
        let rows = statement.query_map([], record)?.collect::<rusqlite::Result<Vec<_>>>()?;
        rows
    };
    rows.into_iter().map(decode).collect()
}

pub fn insert(store: &Store, record: &NetworkRecord) -> Result<(), StoreError> {
    let definition =
        serde_json::to_string(&record.definition).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    store.lock().execute(
        "INSERT INTO networks (name, bridge, definition, active) VALUES (?1, ?2, ?3, ?4)",
        params![record.definition.name, record.bridge, definition, record.active],
    )?;
    Ok(())
}

pub fn set_active(store: &Store, name: &str, active: bool) -> Result<(), StoreError> {
    store.lock().execute("UPDATE networks SET active = ?2 WHERE name = ?1", params![name, active])?;
    Ok(())
}

pub fn delete(store: &Store, name: &str) -> Result<(), StoreError> {
    store.lock().execute("DELETE FROM networks WHERE name = ?1", [name])?;
    Ok(())
}

fn port(row: &rusqlite::Row<'_>) -> rusqlite::Result<NetworkPort> {
    let ip: Option<String> = row.get(5)?;
    Ok(NetworkPort {
        vm_uuid: row.get(0)?,
        index: row.get::<_, i64>(1)?.try_into().unwrap_or(usize::MAX),
        vm: row.get(2)?,
        tap: row.get(3)?,
        mac: row.get(4)?,
        ip: ip.and_then(|ip| ip.parse().ok()),
    })
}

const PORT_COLUMNS: &str = "SELECT vm_uuid, nic_index, vm_name, tap, mac, ip, network FROM network_ports";

fn ports_where(
    store: &Store,
    condition: &str,
    value: &str,
) -> Result<Vec<(NetworkPort, String)>, StoreError> {
    let connection = store.lock();
    let mut statement =
        connection.prepare(&format!("{PORT_COLUMNS} WHERE {condition} = ?1 ORDER BY vm_name, nic_index"))?;
    let rows = statement
        .query_map([value], |row| Ok((port(row)?, row.get::<_, String>(6)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The cards plugged into `network`.
pub fn ports_of_network(store: &Store, network: &str) -> Result<Vec<NetworkPort>, StoreError> {
    Ok(ports_where(store, "network", network)?.into_iter().map(|(port, _)| port).collect())
}

/// A VM's plugged cards, each with its network.
pub fn ports_of_vm(store: &Store, vm_uuid: &str) -> Result<Vec<(NetworkPort, String)>, StoreError> {
    ports_where(store, "vm_uuid", vm_uuid)
}

/// The card with this tap, whatever VM it is of.
pub fn port_by_tap(store: &Store, tap: &str) -> Result<Option<NetworkPort>, StoreError> {
    Ok(ports_where(store, "tap", tap)?.into_iter().next().map(|(port, _)| port))
}

/// Records a plugged card (replacing the same card's earlier record).
pub fn upsert_port(store: &Store, network: &str, port: &NetworkPort) -> Result<(), StoreError> {
    store.lock().execute(
        "INSERT OR REPLACE INTO network_ports (vm_uuid, nic_index, vm_name, network, tap, mac, ip)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            port.vm_uuid,
            port.index as i64,
            port.vm,
            network,
            port.tap,
            port.mac,
            port.ip.map(|ip| ip.to_string())
        ],
    )?;
    Ok(())
}

pub fn delete_port(store: &Store, vm_uuid: &str, index: usize) -> Result<(), StoreError> {
    store.lock().execute(
        "DELETE FROM network_ports WHERE vm_uuid = ?1 AND nic_index = ?2",
        params![vm_uuid, index as i64],
    )?;
    Ok(())
}
