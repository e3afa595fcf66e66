//! A running VMM as the daemon holds it, and its watcher: a task that waits on the VMM's pidfd
//! and, when it ends, records how (exit status from `waitid` for the daemon's own children, from
//! the VMM's exit-status file for adopted ones), removes its taps, tells the event followers,
//! and restarts the VM after a reset or (by its policy) a crash, with a back-off.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use model::manager::event::EventKind;
use model::manager::vm::{CrashPolicy, ExitRecord, VmState};
use tokio::sync::watch;

use super::process::{Ended, PidFd};
use super::{now_secs, records, Vms};
use crate::server::AppState;

/// Restarts after resets or crashes allowed per minute before the VM is left crashed.
pub const RESTARTS_PER_MINUTE: usize = 5;
/// Console lines kept in an exit record.
const CONSOLE_TAIL_LINES: usize = 10;

/// What the daemon meant when it stopped a VMM itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// Nothing: the VMM ended on its own.
    None,
    /// `destroy` (or a forced shutdown): the VM is stopped.
    Destroy,
    /// `save` wrote the state; the VM is saved.
    Save,
    /// The start failed and the daemon killed the VMM.
    AbortStart,
    /// `reboot` pressed Ctrl+Alt+Del: the reset that follows is the user's, not counted
    /// against the restart back-off.
    Reboot,
}

/// One running VMM.
pub struct Runtime {
    pub pid: u32,
    pub pidfd: PidFd,
    pub intent: Mutex<Intent>,
    /// Set once the watcher has recorded the end.
    ended: watch::Sender<bool>,
    /// Set once the start has told its event: the watcher records the end only after it.
    gate: Arc<watch::Sender<bool>>,
}

/// Opens a runtime's gate when dropped (the start told its event, or gave up).
pub struct Gate(Arc<watch::Sender<bool>>);

impl Drop for Gate {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl Runtime {
    pub fn set_intent(&self, intent: Intent) {
        *self.intent.lock().unwrap_or_else(|p| p.into_inner()) = intent;
    }

    fn intent(&self) -> Intent {
        *self.intent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The gate the watcher waits on before recording the end; open once this is dropped.
    pub fn gate(&self) -> Gate {
        Gate(self.gate.clone())
    }

    /// Waits (at most `limit`) until the watcher has recorded the VMM's end; whether it has.
    pub async fn wait_recorded(&self, limit: Duration) -> bool {
        let mut receiver = self.ended.subscribe();
        let recorded = tokio::time::timeout(limit, receiver.wait_for(|ended| *ended)).await.is_ok();
        recorded
    }
}

impl Vms {
    /// Starts watching the VMM `pid` of VM `uuid` (adopted: its start was told long ago).
    pub(super) fn watch(&self, state: &AppState, uuid: &str, pid: u32, pidfd: PidFd) -> Arc<Runtime> {
        let runtime = self.watch_gated(state, uuid, pid, pidfd);
        drop(runtime.gate());
        runtime
    }

    /// Starts watching the VMM `pid` of VM `uuid`, just spawned: its end is recorded only once
    /// the [`Runtime::gate`] is dropped.
    pub(super) fn watch_gated(&self, state: &AppState, uuid: &str, pid: u32, pidfd: PidFd) -> Arc<Runtime> {
        let runtime = Arc::new(Runtime {
            pid,
            pidfd,
            intent: Mutex::new(Intent::None),
            ended: watch::channel(false).0,
            gate: Arc::new(watch::channel(false).0),
        });
        self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(uuid.to_owned(), runtime.clone());
        let task_state = state.clone();
        let task_runtime = runtime.clone();
        let uuid = uuid.to_owned();
        tokio::spawn(async move {
            if let Err(e) = task_runtime.pidfd.ended().await {
                tracing::error!("cannot watch the VMM {}: {e}", task_runtime.pid);
                // Without a watcher the process is still killed and reaped cleanly.
                let _ = super::process::kill_and_wait(&task_runtime.pidfd, Duration::from_secs(10)).await;
            }
            // The start tells `started` first (a Gate is dropped on every path out of it).
            let _ = task_runtime.gate.subscribe().wait_for(|open| *open).await;
            task_state.vms.ended(&task_state, &uuid, &task_runtime).await;
        });
        runtime
    }

    /// The VMM of VM `uuid` has ended: record it, clean up, and restart it if it should be.
    async fn ended(&self, state: &AppState, uuid: &str, runtime: &Runtime) {
        let ended = runtime.pidfd.reap().unwrap_or_else(|| {
            // Not our child (adopted after a restart): the VMM wrote its status, unless killed.
            super::process::read_exit_status(&self.paths.vm_dir(uuid).join("exit-status"))
                .map(Ended::from_status)
                .unwrap_or_default()
        });
        let intent = runtime.intent();
        let record = records::find(&self.store, uuid).ok().flatten();
        let name = record.as_ref().map_or_else(|| uuid.to_owned(), |r| r.name().to_owned());
        let on_crash = record.as_ref().map_or(CrashPolicy::Stop, |r| r.definition.on_crash);
        let (new_state, outcome) = match (intent, ended.status) {
            (Intent::Destroy, _) => (VmState::Stopped, "destroyed".to_owned()),
            (Intent::Save, _) => (VmState::Saved, "saved".to_owned()),
            (Intent::AbortStart, _) => (VmState::Stopped, "start failed".to_owned()),
            (Intent::None | Intent::Reboot, Some(0)) => (VmState::Stopped, "power-off".to_owned()),
            (Intent::None | Intent::Reboot, Some(3)) => (VmState::Stopped, "reset".to_owned()),
            (Intent::None | Intent::Reboot, _) => (VmState::Crashed, crash_outcome(ended)),
        };
        let mut exit = ExitRecord {
            at: now_secs(),
            status: ended.status,
            signal: ended.signal,
            outcome: outcome.clone(),
            console_tail: super::process::tail(&self.paths.console_log(uuid), CONSOLE_TAIL_LINES),
        };
        let vmm_words = super::process::tail(&self.paths.vmm_log(uuid), 3);
        let restart = match (new_state, exit.outcome.as_str()) {
            (VmState::Stopped, "reset") => true,
            (VmState::Crashed, _) => on_crash == CrashPolicy::Restart,
            _ => false,
        };
        let asked = intent == Intent::Reboot && new_state == VmState::Stopped;
        let allowed = restart && (asked || self.may_restart(uuid));
        let final_state = if restart && !allowed {
            exit.outcome = format!(
                "{} (restarted {RESTARTS_PER_MINUTE} times within a minute; left crashed)",
                exit.outcome
            );
            VmState::Crashed
        } else {
            new_state
        };
        state.networks.unplug_vm(uuid).await;
        // Written down first: a daemon killed before the restart below starts it at its start.
        if allowed {
            if let Err(e) = records::set_pending(&self.store, uuid, Some(records::Pending::Restart)) {
                tracing::error!("VM {name}: cannot record its pending restart: {e}");
            }
        }
        match records::set_ended(&self.store, uuid, Some(runtime.pid), final_state, Some(&exit)) {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("VM {name}: the VMM {} ended but is no longer the one recorded", runtime.pid)
            }
            Err(e) => tracing::error!("VM {name}: cannot record the end of its VMM: {e}"),
        }
        if !allowed {
            // A pending save is done (recorded above as saved), or overtaken.
            let _ = records::set_pending(&self.store, uuid, None);
        }
        self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(uuid);
        runtime.ended.send_replace(true);
        let mut detail = exit.outcome.clone();
        if final_state == VmState::Crashed {
            if let Some(last) = vmm_words.last() {
                detail.push_str(&format!(": {last}"));
            }
        }
        let kind = match final_state {
            VmState::Crashed => EventKind::Crashed,
            VmState::Saved => EventKind::Saved,
            _ => EventKind::Stopped,
        };
        state.events.emit(kind, &name, Some(detail));
        if allowed {
            let state = state.clone();
            let uuid = uuid.to_owned();
            let reboot = outcome == "reset";
            tokio::spawn(async move { state.vms.restart(&state, &uuid, reboot).await });
        }
    }

    /// Whether the daemon is about to start VM `uuid` again (after a reset, or a crash by its
    /// policy): it is stopped only for a moment.
    pub fn restart_pending(&self, uuid: &str) -> bool {
        records::pending(&self.store, uuid).ok().flatten() == Some(records::Pending::Restart)
    }

    /// Whether the VM may be restarted now (fewer than the allowed restarts in the last
    /// minute), counting this one.
    fn may_restart(&self, uuid: &str) -> bool {
        let mut restarts = self.restarts.lock().unwrap_or_else(|p| p.into_inner());
        let times = restarts.entry(uuid.to_owned()).or_default();
        let now = Instant::now();
        while times.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
            times.pop_front();
        }
        if times.len() >= RESTARTS_PER_MINUTE {
            return false;
        }
        times.push_back(now);
        true
    }

    /// Starts the VM again after a reset or a crash, unless something else happened to it since.
    async fn restart(&self, state: &AppState, uuid: &str, reboot: bool) {
        let lock = self.lock_of(uuid);
        let _guard = lock.lock().await;
        let Ok(Some(record)) = records::find(&self.store, uuid) else { return };
        if !matches!(record.state, VmState::Stopped | VmState::Crashed) {
            // Something else (a start, a destroy) came first.
            let _ = records::set_pending(&self.store, uuid, None);
            return;
        }
        let name = record.name().to_owned();
        let (kind, detail) = if reboot {
            (EventKind::Rebooted, "after a reset")
        } else {
            (EventKind::Started, "after a crash")
        };
        let previous = record.last_exit.clone();
        if let Err(e) = self.start_locked(state, record, (kind, Some(detail.into()))).await {
            self.restart_failed(state, uuid, &name, previous, &e.message);
        }
    }

    /// An automatic restart failed: the VM is left crashed, and its last exit and an event say
    /// why (its kernel was removed, its network is gone…).
    fn restart_failed(
        &self,
        state: &AppState,
        uuid: &str,
        name: &str,
        previous: Option<ExitRecord>,
        why: &str,
    ) {
        tracing::warn!("VM {name}: cannot start it again: {why}");
        let _ = records::set_pending(&self.store, uuid, None);
        // The start may have recorded its own end ("start failed"); the cause before it is kept.
        let mut exit = previous.unwrap_or_else(|| ExitRecord {
            at: now_secs(),
            status: None,
            signal: None,
            outcome: String::new(),
            console_tail: Vec::new(),
        });
        let failed = format!("restart failed: {why}");
        exit.outcome =
            if exit.outcome.is_empty() { failed.clone() } else { format!("{}; {failed}", exit.outcome) };
        if let Err(e) = records::set_ended(&self.store, uuid, None, VmState::Crashed, Some(&exit)) {
            tracing::error!("VM {name}: cannot record the failed restart: {e}");
        }
        state.events.emit(EventKind::Crashed, name, Some(failed));
    }
}

/// A crash in words: the status's meaning (`kestrel vmm`'s exit statuses) or the signal.
fn crash_outcome(ended: Ended) -> String {
    match (ended.status, ended.signal) {
        (Some(1), _) => "crash: the VMM failed (status 1)".into(),
        (Some(4), _) => "crash: triple fault (status 4)".into(),
        (Some(5), _) => "crash: vCPU failure (status 5)".into(),
        (Some(159), _) => "crash: seccomp violation (status 159)".into(),
        (Some(status), _) if status > 128 => {
            format!("crash: killed by signal {} (status {status})", status - 128)
        }
        (Some(status), _) => format!("crash: status {status}"),
        (None, Some(signal)) => format!("crash: killed by signal {signal}"),
        (None, None) => "crash: ended while the daemon was away (status unknown)".into(),
    }
}
