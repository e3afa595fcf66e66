//! The daemon's start: the VMMs the previous daemon left are adopted when the store accounts
//! for them (same PID, same start time, their socket answers and SO_PEERCRED says that PID),
//! and killed when it does not, so no VM ever has two VMMs and none is left running unseen.
//! Then the autostart VMs start.

use std::collections::HashSet;
use std::time::Duration;

use model::api::InstanceState;
use model::manager::event::EventKind;
use model::manager::vm::{CrashPolicy, ExitRecord, VmState};

use super::process::{self, Ended, PidFd};
use super::records::{self, Pending, Record};
use super::vmm_client::Vmm;
use super::{now_secs, Vms};
use crate::server::AppState;

impl Vms {
    /// Brings every VM the store says is active back under watch, or records that it ended;
    /// kills the VMMs of this state directory nobody accounts for.
    pub async fn reconcile(&self, state: &AppState) {
        let records = match records::list(&self.store) {
            Ok(records) => records,
            Err(e) => {
                tracing::error!("cannot read the VMs from the store: {e}");
                return;
            }
        };
        let mut adopted = HashSet::new();
        for record in &records {
            if record.state.is_active() {
                if let Some(pid) = self.adopt(state, record).await {
                    adopted.insert(pid);
                }
            }
        }
        let vms_dir = self.paths.state_dir.join("vms");
        for (pid, socket) in process::vmm_processes(&vms_dir) {
            if adopted.contains(&pid) {
                continue;
            }
            tracing::warn!("killing the VMM {pid} on {}: no VM of the store runs it", socket.display());
            if let Ok(pidfd) = PidFd::open(pid) {
                process::kill_and_wait(&pidfd, Duration::from_secs(10)).await;
            }
        }
    }

    /// Adopts the VMM of an active VM; its PID when it did.
    async fn adopt(&self, state: &AppState, record: &Record) -> Option<u32> {
        let name = record.name();
        let socket = self.paths.vmm_socket(&record.uuid);
        let live = record.pid.and_then(|pid| {
            let pidfd = PidFd::open(pid).ok()?;
            // The PID is the recorded process (not a reuse) and serves the VM's socket.
            let same = record.pid_start.is_none_or(|t| process::start_time(pid) == Some(t));
            (same && process::socket_peer(&socket) == Some(pid) && !pidfd.has_ended()).then_some((pid, pidfd))
        });
        let Some((pid, pidfd)) = live else {
            self.record_gone(state, record).await;
            return None;
        };
        let instance = Vmm { socket: &socket, vm: name }.instance().await;
        let vm_state = match instance.map(|i| i.state) {
            Ok(InstanceState::Running) => VmState::Running,
            Ok(InstanceState::Paused) => VmState::Paused,
            // Configured but never started (the daemon died mid-start): that start failed.
            Ok(InstanceState::NotStarted) | Err(_) => {
                tracing::warn!("VM {name}: its VMM {pid} never started the guest; killing it");
                process::kill_and_wait(&pidfd, Duration::from_secs(10)).await;
                state.networks.unplug_vm(&record.uuid).await;
                let _ = records::set_ended(&self.store, &record.uuid, Some(pid), VmState::Stopped, None);
                state.events.emit(
                    EventKind::Stopped,
                    name,
                    Some("start interrupted by a daemon restart".into()),
                );
                return Some(pid);
            }
        };
        let _ = records::set_active_state(&self.store, &record.uuid, pid, vm_state);
        self.watch(state, &record.uuid, pid, pidfd);
        state.events.emit(EventKind::Adopted, name, Some(format!("pid {pid}")));
        Some(pid)
    }

    /// An active VM whose VMM is gone: stopped (it powered off) or crashed, from its exit
    /// status file when the VMM wrote one.
    async fn record_gone(&self, state: &AppState, record: &Record) {
        let status =
            process::read_exit_status(&super::lifecycle::exit_status_path(&self.paths, &record.uuid));
        let ended = status.map(Ended::from_status).unwrap_or_default();
        let pending = records::pending(&self.store, &record.uuid).unwrap_or_else(|e| {
            tracing::error!("VM {}: cannot read what was pending: {e}", record.name());
            None
        });
        let saved = self.paths.saved_state(&record.uuid).join("state").is_file();
        let (vm_state, outcome) = match status {
            // The save was complete when the previous daemon ended the VMM.
            _ if pending == Some(Pending::Save) && saved => (VmState::Saved, "saved".to_owned()),
            Some(0) => (VmState::Stopped, "power-off".to_owned()),
            Some(3) => (VmState::Stopped, "reset".to_owned()),
            Some(status) => (VmState::Crashed, format!("crash: status {status} while the daemon was away")),
            None if record.state == VmState::Starting => (VmState::Stopped, "start interrupted".to_owned()),
            None => (VmState::Crashed, "crash: ended while the daemon was away (status unknown)".to_owned()),
        };
        let exit = ExitRecord {
            at: now_secs(),
            status: ended.status,
            signal: ended.signal,
            outcome: outcome.clone(),
            console_tail: process::tail(&self.paths.console_log(&record.uuid), 10),
        };
        // A reset, or a crash of a VM whose policy is restart, is started again once the
        // networks are up: the autostart task takes the VMs with a pending restart.
        let restart = pending == Some(Pending::Restart)
            || outcome == "reset"
            || (vm_state == VmState::Crashed && record.definition.on_crash == CrashPolicy::Restart);
        let pending = restart.then_some(Pending::Restart);
        if let Err(e) = records::set_pending(&self.store, &record.uuid, pending) {
            tracing::error!("VM {}: cannot record what is pending: {e}", record.name());
        }
        state.networks.unplug_vm(&record.uuid).await;
        if let Err(e) = records::set_ended(&self.store, &record.uuid, None, vm_state, Some(&exit)) {
            tracing::error!("VM {}: cannot record its end: {e}", record.name());
        }
        let kind = match vm_state {
            VmState::Crashed => EventKind::Crashed,
            VmState::Saved => EventKind::Saved,
            _ => EventKind::Stopped,
        };
        state.events.emit(kind, record.name(), Some(outcome));
    }

    /// Starts the VMs marked autostart that are not running, and those with a pending restart
    /// (a reset or crash the previous daemon did not restart), after the networks started.
    pub async fn autostart(&self, state: &AppState) {
        let Ok(records) = records::list(&self.store) else { return };
        for record in records {
            let pending =
                records::pending(&self.store, &record.uuid).ok().flatten() == Some(Pending::Restart);
            if !(record.definition.autostart || pending) || record.state.is_active() {
                continue;
            }
            if let Err(e) = self.start(state, &record.uuid).await {
                tracing::warn!("VM {}: autostart failed: {e}", record.name());
            }
        }
    }
}
