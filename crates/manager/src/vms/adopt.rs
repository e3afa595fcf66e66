//! The daemon's start: the VMMs the previous daemon left are adopted when the store accounts
//! for them (same PID and start time, or a `kestrel vmm` of the VM's socket when no start time
//! was recorded), and killed when it does not, so no VM ever has two VMMs and none is left
//! running unseen. Then the autostart VMs start.
//!
//! A VMM the store accounts for is killed only when its guest never ran: it answers
//! `NotStarted`, or its VM was still `starting` and it does not answer (the start it was in
//! died with the previous daemon). A VMM of a running or paused VM that does not answer (busy
//! writing a snapshot, stopped, wedged) is adopted all the same with the state the store
//! recorded: killing it would lose a live guest.

use std::collections::HashSet;
use std::time::Duration;

use model::api::InstanceState;
use model::manager::event::EventKind;
use model::manager::vm::{CrashPolicy, ExitRecord, VmState};

use super::process::{self, Ended, PidFd};
use super::records::{self, Pending, Record};
use super::vmm_client::Vmm;
use super::{now_secs, Vms};
use crate::error::ManagerError;
use crate::server::AppState;

/// How long one `GET /` of an adopted VMM may take.
const ASK_LIMIT: Duration = Duration::from_secs(2);
/// The pauses between the asks of a VMM that does not answer (so at most 1 + 2 asks).
const ASK_BACKOFF: [Duration; 2] = [Duration::from_millis(500), Duration::from_secs(1)];

impl Vms {
    /// Brings every VM the store says is active back under watch, or records that it ended;
    /// kills the VMMs of this state directory nobody accounts for. A row of the store that
    /// cannot be read is logged and its VMM (by PID and by VM directory) left alone.
    pub async fn reconcile(&self, state: &AppState) {
        let (records, unreadable) = match records::list_each(&self.store) {
            Ok(found) => found,
            Err(e) => {
                tracing::error!("cannot read the VMs from the store: {e}; no VMM is adopted or killed");
                return;
            }
        };
        let mut spared = HashSet::new();
        let mut spared_dirs = HashSet::new();
        for bad in &unreadable {
            tracing::error!(
                "VM {}: its record cannot be read ({}); its VMM{} is left alone",
                bad.uuid.as_deref().unwrap_or("(no UUID)"),
                bad.error,
                bad.pid.map(|p| format!(" {p}")).unwrap_or_default()
            );
            spared.extend(bad.pid);
            spared_dirs.extend(bad.uuid.as_deref().map(|uuid| self.paths.vm_dir(uuid)));
        }
        // Each adoption may wait seconds on a VMM that does not answer: they go side by side.
        let adoptions =
            records.iter().filter(|r| r.state.is_active()).map(|record| self.adopt(state, record));
        spared.extend(futures_util::future::join_all(adoptions).await.into_iter().flatten());
        let vms_dir = self.paths.state_dir.join("vms");
        for (pid, socket) in process::vmm_processes(&vms_dir) {
            if spared.contains(&pid) || socket.parent().is_some_and(|dir| spared_dirs.contains(dir)) {
                continue;
            }
            tracing::warn!("killing the VMM {pid} on {}: no VM of the store runs it", socket.display());
            if let Ok(pidfd) = PidFd::open(pid) {
                process::kill_and_wait(&pidfd, Duration::from_secs(10)).await;
            }
        }
    }

    /// The VMM the store records for this VM, when it still runs (not a reused PID).
    pub(super) fn recorded_vmm(&self, record: &Record) -> Option<(u32, PidFd)> {
        let pid = record.pid?;
        let pidfd = PidFd::open(pid).ok()?;
        let socket = self.paths.vmm_socket(&record.uuid);
        process::is_recorded_vmm(pid, &pidfd, record.pid_start, &socket).then_some((pid, pidfd))
    }

    /// Adopts the VMM of an active VM; its PID when it did (or killed it: either way the
    /// sweep leaves it).
    async fn adopt(&self, state: &AppState, record: &Record) -> Option<u32> {
        let name = record.name();
        let Some((pid, pidfd)) = self.recorded_vmm(record) else {
            self.record_gone(state, record).await;
            return None;
        };
        let socket = self.paths.vmm_socket(&record.uuid);
        let vmm = Vmm { socket: &socket, vm: name };
        // A VM that was starting gets one ask: its start died with the previous daemon, so
        // only a guest that already runs is worth keeping.
        let asks = if record.state == VmState::Starting { 1 } else { 1 + ASK_BACKOFF.len() };
        let answer = ask_state(&vmm, asks, &pidfd).await;
        if answer.is_err() && pidfd.has_ended() {
            // It was ending (killed by the previous daemon just before it died, say).
            self.record_gone(state, record).await;
            return None;
        }
        let vm_state = match answer {
            Ok(InstanceState::Running) => VmState::Running,
            Ok(InstanceState::Paused) => VmState::Paused,
            // Configured but never started (the daemon died mid-start): that start failed.
            Ok(InstanceState::NotStarted) => {
                self.end_unstarted(state, record, pid, &pidfd, "never started the guest").await;
                return Some(pid);
            }
            Err(error) if record.state == VmState::Starting => {
                let why = format!("does not answer ({error})");
                self.end_unstarted(state, record, pid, &pidfd, &why).await;
                return Some(pid);
            }
            Err(error) => {
                // Running or paused as far as the store knows: a guest may be running, so it
                // is adopted as recorded and watched like any other. (A shutdown in progress
                // had its waiter die with the previous daemon: the VM is running until it
                // powers off.)
                let as_recorded =
                    if record.state == VmState::Paused { VmState::Paused } else { VmState::Running };
                tracing::warn!(
                    "VM {name}: its VMM {pid} is unresponsive ({error}); adopting it as {}",
                    super::lifecycle::word(as_recorded)
                );
                as_recorded
            }
        };
        let _ = records::set_active_state(&self.store, &record.uuid, pid, vm_state);
        self.watch(state, &record.uuid, pid, pidfd);
        state.events.emit(EventKind::Adopted, name, Some(format!("pid {pid}")));
        Some(pid)
    }

    /// A VMM whose guest never ran (its start died with the previous daemon): killed, and the
    /// VM back where it was before that start (saved when its saved state is still there).
    async fn end_unstarted(&self, state: &AppState, record: &Record, pid: u32, pidfd: &PidFd, why: &str) {
        let name = record.name();
        tracing::warn!("VM {name}: its VMM {pid} {why}; killing it");
        process::kill_and_wait(pidfd, Duration::from_secs(10)).await;
        state.networks.unplug_vm(&record.uuid).await;
        let restorable = self.paths.saved_state(&record.uuid).join("state").is_file();
        let back_to = if restorable { VmState::Saved } else { VmState::Stopped };
        if let Err(e) = records::set_ended(&self.store, &record.uuid, Some(pid), back_to, None) {
            tracing::error!("VM {name}: cannot record its end: {e}");
        }
        state.events.emit(EventKind::Stopped, name, Some("start interrupted by a daemon restart".into()));
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

/// The VMM's `GET /` state, asked up to `asks` times with a back-off while it does not answer
/// (and its process lives): the last error when it never does.
async fn ask_state(vmm: &Vmm<'_>, asks: usize, pidfd: &PidFd) -> Result<InstanceState, ManagerError> {
    let mut attempt = 0;
    loop {
        let answer = vmm.instance_within(ASK_LIMIT).await;
        attempt += 1;
        match answer {
            Ok(info) => return Ok(info.state),
            Err(error) if attempt >= asks || pidfd.has_ended() => return Err(error),
            Err(_) => tokio::time::sleep(ASK_BACKOFF[(attempt - 1).min(ASK_BACKOFF.len() - 1)]).await,
        }
    }
}
