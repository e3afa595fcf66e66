//! Define, edit and undefine: the definition is checked (shape, host files, cards, volumes)
//! before anything is stored, and stored in one transaction, so a refused request leaves the
//! store as it was.

use model::manager::event::EventKind;
use model::manager::vm::{VmDefinition, VmInfo, VmState};

use super::records;
use super::Vms;
use crate::error::{ApiResult, ManagerError};
use crate::server::AppState;
use crate::store::StoreError;

impl Vms {
    /// `POST /v1/vms`.
    pub async fn define(&self, state: &AppState, mut definition: VmDefinition) -> ApiResult<VmInfo> {
        check_definition(&definition)?;
        let uuid = uuid::Uuid::new_v4().to_string();
        super::defaults::fill_in(&mut definition, &uuid, None);
        self.check_host(state, &uuid, &definition)?;
        let name = definition.name.clone();
        // A conflict is found before anything is written, so committing it changes nothing.
        self.store.transaction(|tx| -> Result<ApiResult<()>, StoreError> {
            if records::name_taken(tx, &name, &uuid)? {
                return Ok(Err(ManagerError::conflict(format!("a VM named '{name}' is already defined"))));
            }
            records::put_definition(tx, &uuid, &definition, true)?;
            Ok(Ok(()))
        })??;
        state.events.emit(EventKind::Defined, &name, None);
        self.info(&uuid)
    }

    /// `PUT /v1/vms/{vm}`: a new definition, applied at the next start. The name may change if
    /// the new one is free.
    pub async fn edit(&self, state: &AppState, key: &str, mut definition: VmDefinition) -> ApiResult<VmInfo> {
        check_definition(&definition)?;
        let (lock, record) = self.locked(key).await?;
        let _guard = lock.lock().await;
        let record = self.find(&record.uuid)?;
        if record.state == VmState::Saved {
            return Err(ManagerError::conflict(format!(
                "VM '{}' has a saved state, which needs the definition it was saved with; start it first",
                record.name()
            )));
        }
        super::defaults::fill_in(&mut definition, &record.uuid, Some(&record.definition));
        self.check_host(state, &record.uuid, &definition)?;
        let name = definition.name.clone();
        // A conflict is found before anything is written, so committing it changes nothing.
        self.store.transaction(|tx| -> Result<ApiResult<()>, StoreError> {
            if records::name_taken(tx, &name, &record.uuid)? {
                return Ok(Err(ManagerError::conflict(format!("a VM named '{name}' is already defined"))));
            }
            records::put_definition(tx, &record.uuid, &definition, false)?;
            Ok(Ok(()))
        })??;
        let detail = (name != record.name()).then(|| format!("renamed from '{}'", record.name()));
        state.events.emit(EventKind::Edited, &name, detail);
        self.info(&record.uuid)
    }

    /// `DELETE /v1/vms/{vm}`: refused while the VM runs; its directory (console log, saved
    /// state) goes with it.
    pub async fn undefine(&self, state: &AppState, key: &str) -> ApiResult<()> {
        let (lock, record) = self.locked(key).await?;
        let _guard = lock.lock().await;
        let record = self.find(&record.uuid)?;
        if record.state.is_active() {
            return Err(ManagerError::conflict(format!(
                "VM '{}' is {}; stop it (shutdown or destroy) before undefining it",
                record.name(),
                super::lifecycle::word(record.state)
            )));
        }
        records::delete(&self.store, &record.uuid)?;
        let dir = self.paths.vm_dir(&record.uuid);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("VM {}: cannot remove {}: {e}", record.name(), dir.display());
            }
        }
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).remove(&record.uuid);
        self.restarts.lock().unwrap_or_else(|p| p.into_inner()).remove(&record.uuid);
        state.events.emit(EventKind::Undefined, record.name(), None);
        Ok(())
    }

    /// What only the host can say: the kernel and initrd exist, the cards' networks and the
    /// disks' volumes do.
    fn check_host(&self, state: &AppState, uuid: &str, definition: &VmDefinition) -> ApiResult<()> {
        for (field, path) in std::iter::once(("kernel", &definition.kernel))
            .chain(definition.initrd.iter().map(|p| ("initrd", p)))
        {
            if !path.is_file() {
                return Err(ManagerError::invalid(format!("the {field} {} does not exist", path.display())));
            }
        }
        for nic in &definition.nics {
            state.networks.check_nic(uuid, nic, |network| state.vms.fixed_ips_on_network(network))?;
        }
        for reference in definition.disks.iter().filter_map(|d| d.volume.as_deref()) {
            state.pools.resolve_volume(reference)?;
        }
        Ok(())
    }
}

/// The definition's own checks, and one of the daemon's: `{vm}` in a path is a name or a UUID,
/// so a name may not be a UUID (it could be another VM's).
fn check_definition(definition: &VmDefinition) -> ApiResult<()> {
    definition.validate().map_err(ManagerError::invalid)?;
    if uuid::Uuid::parse_str(&definition.name).is_ok() {
        return Err(ManagerError::invalid(format!(
            "the name '{}' is a UUID; VMs are found by name or UUID, so a name may not be one",
            definition.name
        )));
    }
    Ok(())
}
