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
        let chosen = super::defaults::fill_in(&mut definition, &uuid, None);
        self.check_host(state, &uuid, &definition)?;
        let name = definition.name.clone();
        // A conflict is found before anything is written, so committing it changes nothing.
        self.store.transaction(|tx| -> Result<ApiResult<()>, StoreError> {
            if records::name_taken(tx, &name, &uuid)? {
                return Ok(Err(ManagerError::conflict(format!("a VM named '{name}' is already defined"))));
            }
            if let Err(e) = claim_macs(tx, &uuid, &mut definition, &chosen)? {
                return Ok(Err(e));
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
        let chosen = super::defaults::fill_in(&mut definition, &record.uuid, Some(&record.definition));
        self.check_host(state, &record.uuid, &definition)?;
        let name = definition.name.clone();
        // A conflict is found before anything is written, so committing it changes nothing.
        self.store.transaction(|tx| -> Result<ApiResult<()>, StoreError> {
            if records::name_taken(tx, &name, &record.uuid)? {
                return Ok(Err(ManagerError::conflict(format!("a VM named '{name}' is already defined"))));
            }
            if let Err(e) = claim_macs(tx, &record.uuid, &mut definition, &chosen)? {
                return Ok(Err(e));
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
        crate::metrics::forget(&self.paths.vmm_metrics(&record.uuid));
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

/// MACs are unique across VMs (two guests with one MAC on a bridge break each other's traffic):
/// a MAC the daemon chose (`chosen` cards) that another VM has is chosen again; one the user gave
/// is refused. Runs in the define/edit transaction, so two defines at once cannot both take it.
fn claim_macs(
    tx: &rusqlite::Transaction<'_>,
    uuid: &str,
    definition: &mut VmDefinition,
    chosen: &[usize],
) -> Result<ApiResult<()>, StoreError> {
    for index in 0..definition.nics.len() {
        let Some(mac) = definition.nics[index].mac.clone() else { continue };
        let Some(owner) = records::mac_owner(tx, &mac, uuid)? else { continue };
        if !chosen.contains(&index) {
            return Ok(Err(ManagerError::conflict(format!("the MAC {mac} is already on VM '{owner}'"))));
        }
        let in_definition: Vec<String> = definition.nics.iter().filter_map(|n| n.mac.clone()).collect();
        // Bounded: each try is a fresh 24-bit value, and a store holds far fewer MACs.
        let mut failure = None;
        let another = super::defaults::another_mac(uuid, index, |candidate| {
            in_definition.contains(candidate)
                || match records::mac_owner(tx, candidate, uuid) {
                    Ok(owner) => owner.is_some(),
                    Err(e) => {
                        failure.get_or_insert(e);
                        false
                    }
                }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        definition.nics[index].mac = Some(another);
    }
    Ok(Ok(()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use model::manager::vm::NicDefinition;

    fn with_mac(name: &str, mac: &str) -> VmDefinition {
        let mut definition: VmDefinition =
            serde_json::from_str(&format!(r#"{{"name": "{name}", "kernel": "/k"}}"#)).unwrap();
        definition.nics =
            vec![NicDefinition { tap: Some("t".into()), mac: Some(mac.into()), ..Default::default() }];
        definition
    }

    #[test]
    fn another_vms_mac_is_chosen_again_when_generated_and_refused_when_given() {
        let store = Store::in_memory(&[records::SCHEMA]).unwrap();
        let mac = "52:54:00:12:34:56";
        store.transaction(|tx| records::put_definition(tx, "u1", &with_mac("one", mac), true)).unwrap();

        let mut given = with_mac("two", &mac.to_uppercase());
        let refused = store.transaction(|tx| claim_macs(tx, "u2", &mut given, &[])).unwrap();
        assert!(refused.unwrap_err().message.contains("already on VM 'one'"));

        let mut generated = with_mac("two", mac);
        store
            .transaction(|tx| {
                claim_macs(tx, "u2", &mut generated, &[0])?.unwrap();
                records::put_definition(tx, "u2", &generated, true)
            })
            .unwrap();
        let chosen = generated.nics[0].mac.clone().unwrap();
        assert!(chosen != mac && chosen.starts_with("52:54:00:"), "{chosen}");
        // The store itself refuses a duplicate that skipped the check.
        let duplicate =
            store.transaction(|tx| records::put_definition(tx, "u3", &with_mac("three", mac), true));
        assert!(duplicate.is_err());
    }
}
