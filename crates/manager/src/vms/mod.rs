//! VMs: definitions in the store, and their VMM processes (start, adopt, watch, stop).
//!
//! - `records`: the `vms` table and its side tables; `defaults`: what the daemon fills in.
//! - `define`: define, edit, undefine. `lifecycle`: start, shutdown, destroy, reboot, suspend,
//!   resume, save, restore. `runtime`: a running VMM's handle and its watcher (what happens
//!   when it ends). `adopt`: the daemon's start (VMMs of the previous daemon). `routes`: HTTP.
//! - `process`: pidfds, spawning, SO_PEERCRED; `vmm_client`: the VMM's API.
//!
//! Every request on one VM runs under that VM's async lock, so two starts never make two VMMs.

mod adopt;
mod defaults;
mod define;
mod lifecycle;
mod process;
mod records;
mod routes;
mod runtime;
pub mod usage;
mod vmm_client;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use model::manager::vm::{VmInfo, VmSummary};

use crate::error::{ApiResult, ManagerError};
use crate::paths::Paths;
use crate::store::Store;

pub use records::SCHEMA;
pub use routes::routes;
/// The daemon's limit on writing or loading a snapshot (the CLI waits longer than this).
pub use vmm_client::snapshot_limit;

/// The VMs the daemon keeps.
pub struct Vms {
    store: Arc<Store>,
    paths: Paths,
    kestrel_binary: PathBuf,
    /// One lock per VM (by UUID), held by each request on it.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The VMMs running now, by VM UUID.
    running: Mutex<HashMap<String, Arc<runtime::Runtime>>>,
    /// When each VM was last restarted by the daemon (after a reset or a crash), for the
    /// back-off.
    restarts: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Vms {
    /// The VMs kept in `store`; each VM's VMM is `kestrel_binary vmm …`.
    pub fn new(store: Arc<Store>, paths: &Paths, kestrel_binary: PathBuf) -> Vms {
        Vms {
            store,
            paths: paths.clone(),
            kestrel_binary,
            locks: Mutex::default(),
            running: Mutex::default(),
            restarts: Mutex::default(),
        }
    }

    /// Every defined VM, by name.
    pub fn list(&self) -> Vec<VmSummary> {
        match records::summaries(&self.store) {
            Ok(summaries) => summaries,
            Err(e) => {
                tracing::error!("cannot list the VMs: {e}");
                Vec::new()
            }
        }
    }

    /// Every defined VM, by name; a store that cannot be read is an error.
    pub fn try_list(&self) -> ApiResult<Vec<VmSummary>> {
        Ok(records::summaries(&self.store)?)
    }

    /// One VM, by name or UUID.
    pub fn info(&self, key: &str) -> ApiResult<VmInfo> {
        let record = self.find(key)?;
        Ok(self.info_of(&record))
    }

    /// The names of the defined VMs whose definitions use the volume `POOL/VOLUME`. A store
    /// that cannot say is an error (503), never "nobody": a deletion must not go ahead on it.
    pub fn users_of_volume(&self, reference: &str) -> ApiResult<Vec<String>> {
        records::users_of_volume(&self.store, reference).map_err(|e| {
            ManagerError::unavailable(format!("cannot look up the VMs using volume {reference}: {e}"))
        })
    }

    /// The names of the defined VMs with a card on network `name`; a store that cannot say is
    /// an error (503).
    pub fn users_of_network(&self, name: &str) -> ApiResult<Vec<String>> {
        records::users_of_network(&self.store, name).map_err(|e| {
            ManagerError::unavailable(format!("cannot look up the VMs using network {name}: {e}"))
        })
    }

    fn find(&self, key: &str) -> ApiResult<records::Record> {
        records::find(&self.store, key)?
            .ok_or_else(|| ManagerError::not_found(format!("no VM named '{key}'")))
    }

    fn info_of(&self, record: &records::Record) -> VmInfo {
        VmInfo {
            summary: record.summary(),
            definition: record.definition.clone(),
            started_at: record.started_at,
            last_exit: record.last_exit.clone(),
            console_log: self.paths.console_log(&record.uuid),
            taps: record.taps.clone(),
        }
    }

    /// The lock of the VM with this UUID.
    fn lock_of(&self, uuid: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(uuid.to_owned()).or_default().clone()
    }

    fn runtime_of(&self, uuid: &str) -> Option<Arc<runtime::Runtime>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).get(uuid).cloned()
    }

    // --- networks ---
    /// The fixed addresses the defined VMs' cards hold on the network `name`, from their
    /// definitions: (VM UUID, VM name, address). A store that cannot be read is an error, so no
    /// address is taken twice for want of an answer.
    pub fn fixed_ips_on_network(&self, name: &str) -> ApiResult<Vec<crate::network::FixedIp>> {
        let mut fixed = Vec::new();
        for vm in records::users_of_network(&self.store, name)? {
            let Some(record) = records::find(&self.store, &vm)? else { continue };
            for nic in record.definition.nics.iter().filter(|nic| nic.network.as_deref() == Some(name)) {
                if let Some(ip) = nic.ip {
                    fixed.push((record.uuid.clone(), vm.clone(), ip));
                }
            }
        }
        Ok(fixed)
    }
    // --- end networks ---
}

/// Unix seconds now.
fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
