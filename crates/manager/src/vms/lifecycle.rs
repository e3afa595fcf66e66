//! Start (boot or restore), shutdown, destroy, reboot, suspend, resume and save.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use model::disk::ImageFormat;
use model::manager::event::EventKind;
use model::manager::vm::{ShutdownRequest, VmInfo, VmState};

use super::process::{self, Spawn};
use super::records::{self, Pending, Record};
use super::runtime::{Intent, Runtime};
use super::vmm_client::{snapshot_limit, transport_word, HostDisk, Vmm};
use super::{now_secs, Vms};
use crate::error::{ApiResult, ManagerError};
use crate::server::AppState;

/// How long a new VMM may take to listen on its socket.
const SOCKET_LIMIT: Duration = Duration::from_secs(10);
/// How long a killed VMM may take to be seen ending.
const KILL_LIMIT: Duration = Duration::from_secs(10);
/// The graceful shutdown's default wait.
const SHUTDOWN_DEFAULT: Duration = Duration::from_secs(60);

impl Vms {
    /// `POST /v1/vms/{vm}/start` (and `/restore` of a saved VM).
    pub async fn start(&self, state: &AppState, key: &str) -> ApiResult<VmInfo> {
        let (lock, record) = self.locked(key).await?;
        let _guard = lock.lock().await;
        let record = self.find(&record.uuid)?;
        if record.state.is_active() {
            return Err(ManagerError::conflict(format!(
                "VM '{}' is already {}",
                record.name(),
                word(record.state)
            )));
        }
        let restoring = record.state == VmState::Saved;
        let kind = if restoring { EventKind::Restored } else { EventKind::Started };
        self.start_locked(state, record.clone(), (kind, None)).await?;
        self.info(&record.uuid)
    }

    /// `POST /v1/vms/{vm}/restore`: start a saved VM.
    pub async fn restore(&self, state: &AppState, key: &str) -> ApiResult<VmInfo> {
        let record = self.find(key)?;
        if record.state != VmState::Saved {
            return Err(ManagerError::conflict(format!("VM '{}' has no saved state", record.name())));
        }
        self.start(state, key).await
    }

    /// The VM's lock and its record (read before locking; re-read it under the lock).
    pub(super) async fn locked(&self, key: &str) -> ApiResult<(Arc<tokio::sync::Mutex<()>>, Record)> {
        let record = self.find(key)?;
        Ok((self.lock_of(&record.uuid), record))
    }

    /// Starts a VM that is not active, under its lock: boots it, or restores its saved state.
    /// `started` is the event told once it runs: before the watcher may tell how it ended, so
    /// followers never see a VM stop before it started.
    pub(super) async fn start_locked(
        &self,
        state: &AppState,
        record: Record,
        started: (EventKind, Option<String>),
    ) -> ApiResult<()> {
        let uuid = record.uuid.clone();
        let definition = &record.definition;
        let name = definition.name.clone();
        for (field, path) in std::iter::once(("kernel", &definition.kernel))
            .chain(definition.initrd.iter().map(|p| ("initrd", p)))
        {
            if !path.is_file() {
                return Err(ManagerError::invalid(format!(
                    "VM '{name}': the {field} {} does not exist",
                    path.display()
                )));
            }
        }
        let disks = self.resolve_disks(state, &record)?;
        let restoring = record.state == VmState::Saved;
        let saved = self.paths.saved_state(&uuid);
        if restoring && !saved.join("state").is_file() {
            return Err(ManagerError::conflict(format!(
                "VM '{name}': its saved state is missing from {}",
                saved.display()
            )));
        }
        self.prepare_files(&uuid)?;
        self.kill_stray(&uuid).await;

        let socket = self.paths.vmm_socket(&uuid);
        let spawned = process::spawn(&Spawn {
            binary: &self.kestrel_binary,
            name: &name,
            socket: &socket,
            transport: transport_word(definition.transport),
            console_input: &self.paths.console_input(&uuid),
            console_log: &self.paths.console_log(&uuid),
            vmm_log: &self.paths.vmm_log(&uuid),
            exit_status: &exit_status_path(&self.paths, &uuid),
            landlock_allow: std::slice::from_ref(&saved),
        })
        .map_err(|e| {
            ManagerError::internal(format!(
                "VM '{name}': cannot start {}: {e}",
                self.kestrel_binary.display()
            ))
        })?;
        // Recorded before anything else, so a daemon killed from here on finds this VMM again.
        if let Err(e) = records::set_spawned(&self.store, &uuid, spawned.pid, spawned.start_time, now_secs())
        {
            let _ = process::kill_and_wait(&spawned.pidfd, KILL_LIMIT).await;
            return Err(e.into());
        }
        let runtime = self.watch_gated(state, &uuid, spawned.pid, spawned.pidfd);
        // Opens the watcher's gate however this ends (even if this request is dropped).
        let gate = runtime.gate();
        let brought_up = match self.bring_up(state, &record, &disks, restoring, &runtime).await {
            Ok(()) => records::set_active_state(&self.store, &uuid, runtime.pid, VmState::Running)
                .map(drop)
                .map_err(ManagerError::from),
            Err(error) => Err(error),
        };
        match brought_up {
            Ok(()) => {
                state.events.emit(started.0, &name, started.1);
                drop(gate);
                if restoring {
                    // The state is in the running VM now; the files would only mislead. The
                    // directory itself stays: the VMM's Landlock rule allows that inode, and a
                    // new directory would refuse the next save.
                    empty_dir(&saved);
                }
                Ok(())
            }
            Err(error) => {
                drop(gate);
                Err(self.abort_start(&uuid, &runtime, error).await)
            }
        }
    }

    /// Waits for the VMM's socket, plugs the cards, configures and starts (or restores).
    async fn bring_up(
        &self,
        state: &AppState,
        record: &Record,
        disks: &[HostDisk],
        restoring: bool,
        runtime: &Runtime,
    ) -> ApiResult<()> {
        let uuid = &record.uuid;
        let name = record.name();
        let socket = self.paths.vmm_socket(uuid);
        let mut taps = Vec::new();
        for (index, nic) in record.definition.nics.iter().enumerate() {
            match &nic.tap {
                Some(tap) => taps.push(tap.clone()),
                None => taps.push(state.networks.plug(uuid, name, index, nic).await?.tap),
            }
        }
        records::set_taps(&self.store, uuid, &taps)?;
        wait_for_socket(&socket, runtime, name).await?;
        let vmm = Vmm { socket: &socket, vm: name };
        vmm.set_metrics(&self.paths.vmm_metrics(uuid)).await?;
        let vsock = self.paths.vm_dir(uuid).join("vsock.sock");
        if restoring {
            vmm.restore(
                snapshot_limit(record.definition.memory_mib),
                &self.paths.saved_state(uuid),
                disks,
                &taps,
                record.definition.vsock.as_ref().map(|_| vsock.as_path()),
            )
            .await
        } else {
            vmm.configure_and_start(&record.definition, disks, &taps, &vsock).await
        }
    }

    /// A start failed after the spawn: kill the VMM (unless it already died, which makes it a
    /// crash with its last words), wait for the watcher to record it, and say why.
    async fn abort_start(&self, uuid: &str, runtime: &Runtime, error: ManagerError) -> ManagerError {
        let died = runtime.pidfd.has_ended();
        if !died {
            runtime.set_intent(Intent::AbortStart);
            let _ = runtime.pidfd.signal(libc::SIGKILL);
        }
        runtime.wait_recorded(KILL_LIMIT).await;
        if died {
            let words = process::tail(&self.paths.vmm_log(uuid), 3).join(" / ");
            return ManagerError::new(error.kind, format!("{} (the VMM ended: {words})", error.message));
        }
        error
    }

    /// Each disk's host file and format: a pool volume through the pools, a path as given.
    fn resolve_disks(&self, state: &AppState, record: &Record) -> ApiResult<Vec<HostDisk>> {
        let mut disks = Vec::new();
        for (index, disk) in record.definition.disks.iter().enumerate() {
            let id = disk.id.clone().unwrap_or_else(|| format!("disk{index}"));
            let (path, format) = match (&disk.volume, &disk.path) {
                (Some(reference), _) => {
                    let volume = state.pools.resolve_volume_for(reference, !disk.readonly)?;
                    (volume.path, volume.format)
                }
                (None, Some(path)) => (path.clone(), disk.format.unwrap_or(ImageFormat::Raw)),
                (None, None) => return Err(ManagerError::invalid(format!("disk {index} has no source"))),
            };
            disks.push(HostDisk { id, path, format });
        }
        Ok(disks)
    }

    /// The VM's directory (0700), its saved-state directory, the console FIFO; no stale
    /// exit status.
    fn prepare_files(&self, uuid: &str) -> ApiResult<()> {
        let internal = |what: &Path, e: std::io::Error| {
            let error = ManagerError::internal(format!("cannot prepare {}: {e}", what.display()));
            if e.raw_os_error() == Some(libc::ENOSPC) {
                return ManagerError::unavailable(error.message);
            }
            error
        };
        let dir = self.paths.vm_dir(uuid);
        create_private_dir(&dir).map_err(|e| internal(&dir, e))?;
        let saved = self.paths.saved_state(uuid);
        create_private_dir(&saved).map_err(|e| internal(&saved, e))?;
        // Only this run's metrics are summed: the file starts empty (it never grows across runs).
        let metrics = self.paths.vmm_metrics(uuid);
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&metrics)
                .map_err(|e| internal(&metrics, e))?;
        }
        crate::metrics::forget(&metrics);
        let fifo = self.paths.console_input(uuid);
        if !fifo.exists() {
            let c_path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(fifo.as_os_str()))
                .map_err(|_| ManagerError::internal("a NUL in the state directory's path"))?;
            // SAFETY: mkfifo reads a NUL-terminated path we own.
            if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } < 0 {
                return Err(internal(&fifo, std::io::Error::last_os_error()));
            }
        }
        match std::fs::remove_file(exit_status_path(&self.paths, uuid)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(internal(&dir, e)),
            _ => Ok(()),
        }
    }

    /// A VMM still listening on the VM's socket that the daemon does not run (left by a daemon
    /// killed mid-start) is killed before a new one starts: never two VMMs for one VM.
    async fn kill_stray(&self, uuid: &str) {
        let socket = self.paths.vmm_socket(uuid);
        let Some(pid) = process::socket_peer(&socket).await else { return };
        if self.runtime_of(uuid).is_some_and(|r| r.pid == pid) {
            return;
        }
        if let Ok(pidfd) = process::PidFd::open(pid) {
            tracing::warn!("killing the stray VMM {pid} on {}", socket.display());
            process::kill_and_wait(&pidfd, KILL_LIMIT).await;
        }
    }

    /// The running VM's VMM, or a conflict naming its state.
    fn active(&self, record: &Record, allowed: &[VmState]) -> ApiResult<Arc<Runtime>> {
        if !allowed.contains(&record.state) {
            return Err(ManagerError::conflict(format!("VM '{}' is {}", record.name(), word(record.state))));
        }
        self.runtime_of(&record.uuid)
            .ok_or_else(|| ManagerError::conflict(format!("VM '{}' has no VMM running", record.name())))
    }

    /// `POST /v1/vms/{vm}/destroy`: kill the VMM now.
    pub async fn destroy(&self, state: &AppState, key: &str) -> ApiResult<VmInfo> {
        let (lock, record) = self.locked(key).await?;
        let _guard = lock.lock().await;
        let record = self.find(&record.uuid)?;
        self.destroy_locked(state, &record).await?;
        self.info(&record.uuid)
    }

    async fn destroy_locked(&self, state: &AppState, record: &Record) -> ApiResult<()> {
        let Some(runtime) = self.runtime_of(&record.uuid) else {
            if record.state.is_active() {
                return self.destroy_unwatched(state, record).await;
            }
            return Err(ManagerError::conflict(format!("VM '{}' is not running", record.name())));
        };
        runtime.set_intent(Intent::Destroy);
        runtime
            .pidfd
            .signal(libc::SIGKILL)
            .map_err(|e| ManagerError::internal(format!("cannot kill the VMM: {e}")))?;
        if !runtime.wait_recorded(KILL_LIMIT).await {
            return Err(ManagerError::internal(format!(
                "VM '{}': its VMM did not end after SIGKILL",
                record.name()
            )));
        }
        Ok(())
    }

    /// Destroys a VM the store says is active but that no watcher holds (its record could not
    /// be read when the daemon started): its recorded VMM, if that is still the process the
    /// store names, is killed before the VM is recorded stopped, so no VMM runs on unseen.
    async fn destroy_unwatched(&self, state: &AppState, record: &Record) -> ApiResult<()> {
        let name = record.name();
        let mut ended = process::Ended::default();
        if let Some((pid, pidfd)) = self.recorded_vmm(record) {
            tracing::warn!("VM {name}: killing its unwatched VMM {pid}");
            // Not the daemon's child, so nothing reaps it here: it ended by this SIGKILL.
            let reaped = process::kill_and_wait(&pidfd, KILL_LIMIT).await;
            ended = reaped.unwrap_or(process::Ended { status: None, signal: Some(libc::SIGKILL) });
            if !pidfd.has_ended() {
                return Err(ManagerError::internal(format!(
                    "VM '{name}': its VMM {pid} did not end after SIGKILL"
                )));
            }
        }
        state.networks.unplug_vm(&record.uuid).await;
        let exit = model::manager::vm::ExitRecord {
            at: now_secs(),
            status: ended.status,
            signal: ended.signal,
            outcome: "destroyed".to_owned(),
            console_tail: process::tail(&self.paths.console_log(&record.uuid), 10),
        };
        records::set_ended(&self.store, &record.uuid, None, VmState::Stopped, Some(&exit))?;
        state.events.emit(EventKind::Stopped, name, Some("destroyed".into()));
        Ok(())
    }

    /// `POST /v1/vms/{vm}/shutdown`: the ACPI power button, then wait for the power-off (and
    /// destroy after the timeout if `force`).
    pub async fn shutdown(&self, state: &AppState, key: &str, request: ShutdownRequest) -> ApiResult<VmInfo> {
        let (lock, record) = self.locked(key).await?;
        let guard = lock.lock().await;
        let record = self.find(&record.uuid)?;
        let runtime = self.active(&record, &[VmState::Running, VmState::ShuttingDown])?;
        let name = record.name().to_owned();
        let socket = self.paths.vmm_socket(&record.uuid);
        let pressed = Vmm { socket: &socket, vm: &name }.action("SendPowerButton").await;
        if let Err(error) = pressed {
            if !request.force {
                return Err(ManagerError::conflict(format!(
                    "{error}; `destroy` (or shutdown with force) stops it"
                )));
            }
            tracing::warn!("{error}; destroying VM '{name}' as asked");
            self.destroy_locked(state, &record).await?;
            return self.info(&record.uuid);
        }
        records::set_active_state(&self.store, &record.uuid, runtime.pid, VmState::ShuttingDown)?;
        state.events.emit(EventKind::ShutdownRequested, &name, None);
        // Other requests (a destroy) may come while the guest takes its time.
        drop(guard);
        let limit = request.timeout_secs.map_or(SHUTDOWN_DEFAULT, |s| Duration::from_secs(s.min(3600)));
        if runtime.wait_recorded(limit).await {
            return self.info(&record.uuid);
        }
        let _guard = lock.lock().await;
        if self.runtime_of(&record.uuid).is_none_or(|r| r.pid != runtime.pid) {
            return self.info(&record.uuid);
        }
        if request.force {
            let record = self.find(&record.uuid)?;
            self.destroy_locked(state, &record).await?;
            return self.info(&record.uuid);
        }
        records::set_active_state(&self.store, &record.uuid, runtime.pid, VmState::Running)?;
        Err(ManagerError::conflict(format!(
            "VM '{name}' did not power off within {} s of the power button; `destroy` (or shutdown with force) stops it",
            limit.as_secs()
        )))
    }

    /// `POST /v1/vms/{vm}/reboot`: Ctrl+Alt+Del; the guest resets, and the watcher starts it
    /// again.
    pub async fn reboot(&self, state: &AppState, key: &str) -> ApiResult<VmInfo> {
        let (lock, record) = self.locked(key).await?;
        let _guard = lock.lock().await;
        let record = self.find(&record.uuid)?;
        let runtime = self.active(&record, &[VmState::Running])?;
        let socket = self.paths.vmm_socket(&record.uuid);
        runtime.set_intent(Intent::Reboot);
        let vmm = Vmm { socket: &socket, vm: record.name() };
        if let Err(error) = vmm.action("SendCtrlAltDel").await {
            runtime.set_intent(Intent::None);
            return Err(error);
        }
        state.events.emit(EventKind::ShutdownRequested, record.name(), Some("reboot (Ctrl+Alt+Del)".into()));
        self.info(&record.uuid)
    }

    /// `POST /v1/vms/{vm}/suspend` and `/resume`.
    pub async fn set_paused(&self, state: &AppState, key: &str, paused: bool) -> ApiResult<VmInfo> {
        let (lock, record) = self.locked(key).await?;
        let _guard = lock.lock().await;
        let record = self.find(&record.uuid)?;
        let from = if paused { VmState::Running } else { VmState::Paused };
        let runtime = self.active(&record, &[from])?;
        let socket = self.paths.vmm_socket(&record.uuid);
        Vmm { socket: &socket, vm: record.name() }.set_paused(paused).await?;
        let to = if paused { VmState::Paused } else { VmState::Running };
        records::set_active_state(&self.store, &record.uuid, runtime.pid, to)?;
        state.events.emit(if paused { EventKind::Paused } else { EventKind::Resumed }, record.name(), None);
        self.info(&record.uuid)
    }

    /// `POST /v1/vms/{vm}/save`: pause, write the state and memory to the VM's saved-state
    /// directory, and end the VMM. `start` (or `restore`) resumes it.
    pub async fn save(&self, state: &AppState, key: &str) -> ApiResult<VmInfo> {
        let (lock, record) = self.locked(key).await?;
        let _guard = lock.lock().await;
        let record = self.find(&record.uuid)?;
        let runtime = self.active(&record, &[VmState::Running, VmState::Paused])?;
        let socket = self.paths.vmm_socket(&record.uuid);
        let vmm = Vmm { socket: &socket, vm: record.name() };
        if record.state == VmState::Running {
            vmm.set_paused(true).await?;
        }
        let saved = self.paths.saved_state(&record.uuid);
        if let Err(error) = vmm.snapshot(&saved, snapshot_limit(record.definition.memory_mib)).await {
            // The guest goes on as it was, when the VMM can be told so; a VMM still busy
            // writing (the limit passed) stays paused, and the store says what it is.
            if record.state == VmState::Running && vmm.set_paused(false).await.is_err() {
                let now = match vmm.instance().await.map(|i| i.state) {
                    Ok(model::api::InstanceState::Running) => VmState::Running,
                    _ => VmState::Paused,
                };
                if now == VmState::Paused {
                    let _ = records::set_active_state(&self.store, &record.uuid, runtime.pid, now);
                    state.events.emit(EventKind::Paused, record.name(), Some("the save failed".into()));
                }
            }
            return Err(error);
        }
        // Written down before the kill: a daemon killed from here on finds the VM saved.
        records::set_pending(&self.store, &record.uuid, Some(Pending::Save))?;
        runtime.set_intent(Intent::Save);
        if let Err(e) = runtime.pidfd.signal(libc::SIGKILL) {
            runtime.set_intent(Intent::None);
            let _ = records::set_pending(&self.store, &record.uuid, None);
            return Err(ManagerError::internal(format!("cannot end the VMM: {e}")));
        }
        if !runtime.wait_recorded(KILL_LIMIT).await {
            return Err(ManagerError::internal(format!(
                "VM '{}': its VMM did not end after the save",
                record.name()
            )));
        }
        self.info(&record.uuid)
    }
}

/// Waits until the VMM listens (bounded), failing early if it ends.
async fn wait_for_socket(socket: &Path, runtime: &Runtime, name: &str) -> ApiResult<()> {
    let deadline = tokio::time::Instant::now() + SOCKET_LIMIT;
    loop {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Ok(());
        }
        if runtime.pidfd.has_ended() {
            return Err(ManagerError::internal(format!("VM '{name}': the VMM ended before it listened")));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ManagerError::internal(format!(
                "VM '{name}': the VMM did not listen on {} within {SOCKET_LIMIT:?}",
                socket.display()
            )));
        }
        // Polling a socket that is about to appear: a few milliseconds apart, bounded above.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Where `kestrel vmm --exit-status-file` writes its status.
pub(super) fn exit_status_path(paths: &crate::paths::Paths, uuid: &str) -> PathBuf {
    paths.vm_dir(uuid).join("exit-status")
}

/// Removes what `dir` holds (files and subdirectories), keeping `dir` itself.
fn empty_dir(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(kind) if kind.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        if let Err(e) = removed {
            tracing::warn!("cannot remove {}: {e}", path.display());
        }
    }
}

pub(super) fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// A state in the words of a message ("VM 'web' is running").
pub(super) fn word(state: VmState) -> &'static str {
    match state {
        VmState::Stopped => "stopped",
        VmState::Starting => "starting",
        VmState::Running => "running",
        VmState::Paused => "paused",
        VmState::ShuttingDown => "shutting down",
        VmState::Crashed => "crashed",
        VmState::Saved => "saved",
    }
}
