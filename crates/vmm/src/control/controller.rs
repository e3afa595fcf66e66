//! The controller: Firecracker's pre-boot configuration state machine, `InstanceStart` and
//! snapshot load, and the requests to a running VM. It lives on the VMM thread and owns all of
//! the VMM's control state, so requests need no lock; a snapshot runs on a thread of its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use model::api::{
    ActionType, Balloon, BalloonStatsUpdate, BalloonUpdate, InstanceInfo, InstanceState, KestrelInstanceInfo,
    MachineConfiguration, MemoryBackendType, Operation, PartialDrive, PartialNetworkInterface,
    SnapshotCreateParams, SnapshotLoadParams, SnapshotType, VmStateValue,
};
use model::config::{SerialConfig, VirtioTransport};
use model::control::{ControlError, VmmRequest, VmmResponse};
use model::error::ConfigError;
use model::mmds::MmdsStore;
use model::resources::VmResources;

use super::channel::{ControlMessage, ControlReceiver, Received, Reply};
use super::{EngineError, Launch, Launcher, LoggerHook, MetricsControl, PathUse, RestoredConfig, VmControl};
use crate::builder::RestoreOptions;
use crate::snapshot::{SnapshotKind, SnapshotRequest};

/// What the controller is given besides its requests.
pub struct ControllerSettings {
    /// The instance ID `GET /` reports.
    pub id: String,
    /// Not part of Firecracker's API: from the command line.
    pub serial: SerialConfig,
    /// Not part of Firecracker's API: from the command line.
    pub transport: VirtioTransport,
    /// Serves `PUT /metrics` and `FlushMetrics`; without it both are refused as not supported.
    pub metrics: Option<Arc<dyn MetricsControl>>,
    /// Serves `PUT /logger`; without it the endpoint is not supported.
    pub logger: Option<LoggerHook>,
    /// The most bytes the MMDS data store may hold, as JSON (`--mmds-size-limit`; Firecracker's
    /// default is the API's payload limit, 51,200 bytes).
    pub mmds_size_limit: usize,
}

/// Firecracker's default `--mmds-size-limit` (its `--http-api-max-payload-size` default).
pub const DEFAULT_MMDS_SIZE_LIMIT: usize = 51_200;

type Answer = Result<VmmResponse, ControlError>;

/// What [`Controller::handle_pending`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// It handled at least one message.
    Handled,
    /// Nothing was queued.
    Nothing,
    /// Nothing was queued, and no request can come any more (the API is gone).
    Closed,
}

/// The VMM's control state, answering one request at a time on the VMM thread.
pub struct Controller<L: Launcher> {
    settings: ControllerSettings,
    resources: VmResources,
    /// The metadata service's store, shared with the cards that answer for it.
    mmds: MmdsStore,
    state: InstanceState,
    launcher: L,
    /// The started VM's control; `None` before `InstanceStart` or a snapshot load.
    vm: Option<Arc<dyn VmControl>>,
    /// A configuration request succeeded: loading a snapshot is no longer allowed.
    configured: bool,
    /// The long operation under way on a thread of its own, if one is.
    in_flight: Option<InFlight>,
    receiver: ControlReceiver,
}

/// A long operation running off the VMM thread: its client waits for the answer meanwhile.
struct InFlight {
    operation: Operation,
    reply: Reply,
    /// A drive update's drive ID and new path, recorded in the configuration once it succeeded.
    drive_update: Option<PartialDrive>,
}

/// Reports a panicked operation thread to the controller, so that its client gets an answer and
/// the VMM does not stay busy for ever (with `panic = "abort"` a panic ends the process instead).
struct ReportOnUnwind(Option<super::ControlSender>);

impl ReportOnUnwind {
    fn report(mut self, result: Result<(), EngineError>) {
        if let Some(sender) = self.0.take() {
            // The controller may be gone (the VM ended): nobody is left to tell.
            let _ = sender.send(ControlMessage::OperationDone(result));
        }
    }
}

impl Drop for ReportOnUnwind {
    fn drop(&mut self) {
        if let Some(sender) = self.0.take() {
            let _ = sender.send(ControlMessage::OperationDone(Err("the operation's thread panicked".into())));
        }
    }
}

fn vm_error(context: &'static str) -> impl FnOnce(EngineError) -> ControlError {
    move |e| ControlError::Vm { context, message: e.to_string() }
}

impl<L: Launcher> Controller<L> {
    /// A controller answering the messages `receiver` gets.
    pub fn new(settings: ControllerSettings, launcher: L, receiver: ControlReceiver) -> Controller<L> {
        Controller {
            mmds: MmdsStore::new(settings.mmds_size_limit),
            settings,
            resources: VmResources::default(),
            state: InstanceState::NotStarted,
            launcher,
            vm: None,
            configured: false,
            in_flight: None,
            receiver,
        }
    }

    /// The launcher, to take what it built.
    pub fn launcher_mut(&mut self) -> &mut L {
        &mut self.launcher
    }

    /// Waits until there is at least one message and handles every queued one (before the VM
    /// runs, when nothing else needs the thread); `false` once the API is gone and nothing is left
    /// to handle, or the wait fails.
    pub fn wait_and_handle(&mut self) -> bool {
        loop {
            match self.handle_pending() {
                Pending::Handled => return true,
                Pending::Closed => return false,
                Pending::Nothing => {
                    if let Err(e) = self.receiver.wait() {
                        tracing::error!("the control channel cannot be waited on: {e}");
                        return false;
                    }
                }
            }
        }
    }

    /// Handles every queued message (the event loop calls this when the wake-up fd is readable).
    pub fn handle_pending(&mut self) -> Pending {
        self.receiver.clear_wake();
        let mut handled = false;
        loop {
            match self.receiver.try_recv() {
                Received::Message(message) => {
                    self.handle_message(message);
                    handled = true;
                }
                // What was handled counts first (a start the API asked for before it ended).
                Received::Empty | Received::Closed if handled => return Pending::Handled,
                Received::Empty => return Pending::Nothing,
                Received::Closed => return Pending::Closed,
            }
        }
    }

    /// The fd that becomes readable when messages are queued.
    pub fn wake_fd(&self) -> std::os::fd::RawFd {
        self.receiver.wake_fd()
    }

    /// Handles one message: answers a request (or, for a snapshot, starts it and answers when it
    /// reports back), or takes a worker's report.
    pub fn handle_message(&mut self, message: ControlMessage) {
        match message {
            ControlMessage::Request(VmmRequest::CreateSnapshot(params), reply) => {
                if let Err(e) = self.start_snapshot(params, &reply) {
                    let _ = reply.send(Err(e));
                }
            }
            ControlMessage::Request(VmmRequest::PatchDrive { id, update }, reply) => {
                if let Err(e) = self.start_drive_update(&id, &update, &reply) {
                    let _ = reply.send(Err(e));
                }
            }
            ControlMessage::Request(request, reply) => {
                // A client that went away does not mind the lost answer.
                let _ = reply.send(self.answer(request));
            }
            ControlMessage::OperationDone(result) => self.finish_operation(result),
        }
    }

    fn started(&self) -> bool {
        self.state != InstanceState::NotStarted
    }

    /// The long operation under way, if any.
    fn operation(&self) -> Option<Operation> {
        self.in_flight.as_ref().map(|in_flight| in_flight.operation)
    }

    /// Runs `work` on a thread of its own as the one long operation; its client (`reply`) gets
    /// the answer when the thread reports back. Meanwhile the controller answers other requests
    /// and refuses conflicting ones.
    fn start_operation(
        &mut self,
        operation: Operation,
        reply: &Reply,
        drive_update: Option<PartialDrive>,
        work: impl FnOnce() -> Result<(), EngineError> + Send + 'static,
    ) -> Result<(), ControlError> {
        if let Some(operation) = self.operation() {
            return Err(ControlError::Busy { operation });
        }
        let report = ReportOnUnwind(Some(self.receiver.report_sender()));
        let builder = std::thread::Builder::new().name("kestrel-operation".into());
        jail::seccomp::spawn(jail::seccomp::ThreadRole::Vmm, builder, move || report.report(work()))
            .map_err(|e| ControlError::Vm { context: operation.request(), message: e.to_string() })?;
        self.in_flight = Some(InFlight { operation, reply: reply.clone(), drive_update });
        Ok(())
    }

    /// The long operation's thread reported: answer its client.
    fn finish_operation(&mut self, result: Result<(), EngineError>) {
        let Some(InFlight { operation, reply, drive_update }) = self.in_flight.take() else {
            return;
        };
        let context = match operation {
            Operation::SnapshotCreate => "Cannot create the snapshot",
            Operation::DriveUpdate => "Cannot update the drive",
        };
        let answer = result.map(|()| VmmResponse::NoContent).map_err(vm_error(context));
        if let (Ok(_), Some(update)) = (&answer, drive_update) {
            self.resources.record_drive_update(&update);
        }
        let _ = reply.send(answer);
    }

    /// Requests that change the running VM cannot run beside a snapshot; the others (reads,
    /// and configuration requests, which are refused after the start anyway) go on.
    fn conflicts(request: &VmmRequest) -> bool {
        matches!(
            request,
            VmmRequest::PatchVm(_)
                | VmmRequest::CreateSnapshot(_)
                | VmmRequest::PatchDrive { .. }
                | VmmRequest::PatchNetworkInterface { .. }
                | VmmRequest::PatchBalloon(_)
                | VmmRequest::PatchBalloonStats(_)
                | VmmRequest::Action(ActionType::SendCtrlAltDel)
                | VmmRequest::Action(ActionType::SendPowerButton)
        )
    }

    /// Answers one request (all but snapshot creation, which [`Self::handle_message`] starts and
    /// answers later).
    fn answer(&mut self, request: VmmRequest) -> Answer {
        if let Some(operation) = self.operation().filter(|_| Self::conflicts(&request)) {
            return Err(ControlError::Busy { operation });
        }
        match request {
            VmmRequest::GetInstanceInfo => Ok(VmmResponse::InstanceInfo(self.instance_info())),
            VmmRequest::GetMachineConfig => {
                Ok(VmmResponse::MachineConfiguration(self.resources.machine_config().clone()))
            }
            VmmRequest::GetVmConfig => Ok(VmmResponse::FullConfig(Box::new(self.resources.export()))),
            VmmRequest::GetBalloon => Ok(VmmResponse::Balloon(self.balloon()?.clone())),
            VmmRequest::PutBootSource(boot) => self.configure(|r| r.set_boot_source(boot)),
            VmmRequest::PutMachineConfig(machine) => self.configure(|r| r.set_machine_config(machine)),
            VmmRequest::PatchMachineConfig(fields) => {
                let machine = self.patched_machine_config(fields)?;
                self.configure(|r| r.set_machine_config(machine))
            }
            VmmRequest::PutDrive { id, drive } => self.configure(|r| r.put_drive(&id, *drive)),
            VmmRequest::PutNetworkInterface { id, interface } => {
                self.configure(|r| r.put_network_interface(&id, *interface))
            }
            VmmRequest::PutVsock(vsock) => self.configure(|r| r.set_vsock(vsock)),
            VmmRequest::PutBalloon(balloon) => self.configure(|r| r.set_balloon(balloon)),
            VmmRequest::PutEntropy(entropy) => self.configure(|r| r.set_entropy(entropy)),
            VmmRequest::PatchBalloon(update) => self.patch_balloon(update),
            VmmRequest::GetBalloonStats => self.balloon_statistics(),
            VmmRequest::PatchBalloonStats(update) => self.patch_balloon_stats(update),
            // Taken by `handle_message` before it gets here.
            VmmRequest::PatchDrive { .. } => Err(ControlError::NotYet("A drive update answered at once")),
            VmmRequest::PatchNetworkInterface { .. } if !self.started() => {
                Err(ControlError::NotSupportedBeforeStart)
            }
            VmmRequest::PatchNetworkInterface { id, update } => self.patch_network_interface(&id, &update),
            VmmRequest::Action(action) => self.action(action),
            VmmRequest::PatchVm(state) => self.patch_vm(state),
            // Taken by `handle_message` before it gets here.
            VmmRequest::CreateSnapshot(_) => Err(ControlError::NotYet("A snapshot answered at once")),
            VmmRequest::LoadSnapshot(params) => self.load_snapshot(params),
            VmmRequest::PutLogger(logger) => self.put_logger(logger),
            VmmRequest::PutMetrics(metrics) => self.put_metrics(Path::new(&metrics.metrics_path)),
            // The data store, before and after the start (Firecracker's rule).
            VmmRequest::PutMmds(data) => Ok(self.mmds.put(data).map(|()| VmmResponse::NoContent)?),
            VmmRequest::PatchMmds(patch) => Ok(self.mmds.patch(&patch).map(|()| VmmResponse::NoContent)?),
            // Nothing stored (no PUT yet, or a PUT of null) reads as {}, as in Firecracker.
            VmmRequest::GetMmds => Ok(VmmResponse::Mmds(match self.mmds.get() {
                serde_json::Value::Null => serde_json::Value::Object(Default::default()),
                value => value,
            })),
            VmmRequest::PutMmdsConfig(config) => self.configure(|r| r.set_mmds_config(config)),
        }
    }

    fn instance_info(&self) -> InstanceInfo {
        InstanceInfo {
            // Firecracker's values: clients (Kata Containers, the SDKs) compare them.
            app_name: "Firecracker".into(),
            id: self.settings.id.clone(),
            state: self.state,
            vmm_version: model::api::FIRECRACKER_VERSION.into(),
            kestrel: KestrelInstanceInfo {
                kestrel_version: env!("CARGO_PKG_VERSION").into(),
                operation_in_progress: self.operation(),
            },
        }
    }

    /// The configured balloon.
    fn balloon(&self) -> Result<&Balloon, ControlError> {
        self.resources.balloon().ok_or(ControlError::NoBalloon)
    }

    /// The running VM, for a post-boot-only request.
    fn vm(&self) -> Result<Arc<dyn VmControl>, ControlError> {
        self.vm.clone().ok_or(ControlError::NotSupportedBeforeStart)
    }

    /// A pre-boot-only configuration request.
    fn configure(
        &mut self,
        apply: impl FnOnce(&mut VmResources) -> Result<(), model::error::ConfigError>,
    ) -> Answer {
        if self.started() {
            return Err(ControlError::NotSupportedAfterStart);
        }
        apply(&mut self.resources)?;
        self.configured = true;
        Ok(VmmResponse::NoContent)
    }

    /// `PATCH /machine-config`: the current configuration with the given fields replaced.
    fn patched_machine_config(
        &self,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Result<MachineConfiguration, ControlError> {
        let invalid = |e: serde_json::Error| ControlError::InvalidBody(e.to_string());
        let mut merged = serde_json::to_value(self.resources.machine_config()).map_err(invalid)?;
        let Some(target) = merged.as_object_mut() else {
            return Err(ControlError::InvalidBody("expected a JSON object".into()));
        };
        target.extend(fields);
        serde_json::from_value(merged).map_err(invalid)
    }

    fn patch_balloon(&mut self, BalloonUpdate { amount_mib }: BalloonUpdate) -> Answer {
        let vm = self.vm()?;
        self.balloon()?;
        vm.update_balloon(amount_mib).map_err(vm_error("Cannot update the balloon"))?;
        self.resources.record_balloon_target(amount_mib);
        Ok(VmmResponse::NoContent)
    }

    fn balloon_statistics(&self) -> Answer {
        let vm = self.vm()?;
        self.balloon()?;
        let stats = vm.balloon_statistics().map_err(vm_error("Cannot read the balloon statistics"))?;
        Ok(VmmResponse::BalloonStats(stats))
    }

    fn patch_balloon_stats(&mut self, update: BalloonStatsUpdate) -> Answer {
        let seconds = update.stats_polling_interval_s;
        let vm = self.vm()?;
        self.balloon()?;
        vm.update_balloon_stats_interval(seconds)
            .map_err(vm_error("Cannot update the balloon statistics"))?;
        self.resources.record_balloon_stats_interval(seconds);
        Ok(VmmResponse::NoContent)
    }

    /// `PATCH /network-interfaces/{id}`: quick (new buckets and a timer), so answered on the
    /// loop.
    fn patch_network_interface(&mut self, id: &str, update: &PartialNetworkInterface) -> Answer {
        let vm = self.vm()?;
        let checked = self.resources.check_net_update(id, update)?;
        vm.update_net(&checked).map_err(vm_error("Cannot update the network interface"))?;
        self.resources.record_net_update(update);
        Ok(VmmResponse::NoContent)
    }

    /// `PATCH /drives/{id}`, off the loop: syncing the old file can take as long as the guest's
    /// unsynced writes.
    fn start_drive_update(
        &mut self,
        id: &str,
        update: &PartialDrive,
        reply: &Reply,
    ) -> Result<(), ControlError> {
        if let Some(operation) = self.operation() {
            return Err(ControlError::Busy { operation });
        }
        let vm = self.vm()?;
        let checked = self.resources.check_drive_update(id, update).map_err(|error| match error {
            // The process's confinement, not the file, may be why it cannot be opened (for
            // reading: the check's open).
            ConfigError::FileOpen { what, path, reason } => {
                let refusal = vm.confinement_refusal(Path::new(&path), PathUse::Read);
                let reason = refusal.map_or(reason, |refusal| refusal.to_string());
                ConfigError::FileOpen { what, path, reason }
            }
            error => error,
        })?;
        self.start_operation(Operation::DriveUpdate, reply, Some(update.clone()), move || {
            vm.update_drive(&checked)
        })
    }

    fn action(&mut self, action: ActionType) -> Answer {
        match action {
            ActionType::InstanceStart => self.start(),
            ActionType::SendCtrlAltDel => {
                self.vm()?.send_ctrl_alt_del().map_err(vm_error("Cannot send Ctrl+Alt+Del"))?;
                Ok(VmmResponse::NoContent)
            }
            // Also while paused: the press is latched and the guest sees it on resume.
            ActionType::SendPowerButton => {
                self.vm()?.send_power_button().map_err(vm_error("Cannot press the power button"))?;
                Ok(VmmResponse::NoContent)
            }
            // Like Firecracker: before the start there is nothing to flush.
            ActionType::FlushMetrics if !self.started() => Err(ControlError::NotSupportedBeforeStart),
            ActionType::FlushMetrics => {
                if let Some(metrics) = &self.settings.metrics {
                    metrics.flush().map_err(|e| ControlError::Metrics(e.to_string()))?;
                }
                Ok(VmmResponse::NoContent)
            }
        }
    }

    /// `PATCH /vm`. Like Firecracker, pausing a paused VM and resuming a running one succeed.
    fn patch_vm(&mut self, state: VmStateValue) -> Answer {
        let vm = self.vm()?;
        match state {
            VmStateValue::Paused => {
                vm.pause().map_err(vm_error("Cannot pause the microVM"))?;
                self.state = InstanceState::Paused;
            }
            VmStateValue::Resumed => {
                vm.resume().map_err(vm_error("Cannot resume the microVM"))?;
                self.state = InstanceState::Running;
            }
        }
        Ok(VmmResponse::NoContent)
    }

    /// `PUT /logger`: before the start, as often as asked (Firecracker's rules).
    fn put_logger(&mut self, logger: model::api::Logger) -> Answer {
        if self.started() {
            return Err(ControlError::NotSupportedAfterStart);
        }
        let hook = self
            .settings
            .logger
            .as_mut()
            .ok_or(ControlError::NotYet("The logger endpoint (use --log-level)"))?;
        hook(logger).map_err(|e| ControlError::Logger(e.to_string()))?;
        Ok(VmmResponse::NoContent)
    }

    /// `PUT /metrics`: before the start, once (Firecracker's rules; the writer enforces "once").
    fn put_metrics(&mut self, path: &Path) -> Answer {
        if self.started() {
            return Err(ControlError::NotSupportedAfterStart);
        }
        let metrics = self.settings.metrics.as_ref().ok_or(ControlError::NotYet("The metrics endpoint"))?;
        metrics.init(path).map_err(|e| ControlError::Metrics(e.to_string()))?;
        Ok(VmmResponse::NoContent)
    }

    fn start(&mut self) -> Answer {
        if self.started() {
            return Err(ControlError::NotSupportedAfterStart);
        }
        let mut config =
            self.resources.to_vm_config(self.settings.serial.clone(), self.settings.transport)?;
        if let Some(mmds) = self.resources.mmds_config() {
            config.attach_mmds(mmds, &self.mmds);
        }
        let vm = self.launcher.launch(Launch::Boot(config)).map_err(vm_error("Cannot start the microVM"))?;
        self.vm = Some(vm);
        self.state = InstanceState::Running;
        Ok(VmmResponse::NoContent)
    }

    /// Checks a snapshot request and starts it on a thread of its own; the answer goes to `reply`
    /// when the thread reports back. Meanwhile the controller answers other requests.
    fn start_snapshot(&mut self, params: SnapshotCreateParams, reply: &Reply) -> Result<(), ControlError> {
        if let Some(operation) = self.operation() {
            return Err(ControlError::Busy { operation });
        }
        let vm = self.vm()?;
        if self.state != InstanceState::Paused {
            return Err(ControlError::NotPaused);
        }
        let request = SnapshotRequest {
            state_path: params.snapshot_path.into(),
            memory_path: params.mem_file_path.into(),
            kind: match params.snapshot_type {
                SnapshotType::Full => SnapshotKind::Full,
                SnapshotType::Diff => SnapshotKind::Diff,
            },
        };
        if request.state_path == request.memory_path {
            return Err(ControlError::SamePaths);
        }
        self.start_operation(Operation::SnapshotCreate, reply, None, move || vm.snapshot(&request))
    }

    /// Firecracker's rule: only into a fresh VMM, before any configuration.
    fn load_snapshot(&mut self, params: SnapshotLoadParams) -> Answer {
        if self.started() {
            return Err(ControlError::NotSupportedAfterStart);
        }
        if self.configured {
            return Err(ControlError::ConfiguredBeforeLoad);
        }
        let (memory_backend, memory_path) = match (params.mem_file_path, params.mem_backend) {
            (Some(path), None) => (MemoryBackendType::File, path),
            (None, Some(backend)) => (backend.backend_type, backend.backend_path),
            _ => return Err(ControlError::MemorySource),
        };
        for card in &params.network_overrides {
            model::resources::check_tap_name(&card.host_dev_name)?;
        }
        let host = match &params.kestrel {
            Some(extensions) => extensions.host_resources(None)?,
            None => Default::default(),
        };
        let drive_paths =
            params.drive_overrides.into_iter().map(|o| (o.drive_id, PathBuf::from(o.path_on_host))).collect();
        let tap_names = params.network_overrides.into_iter().map(|o| (o.iface_id, o.host_dev_name)).collect();
        let restored = RestoredConfig::default();
        let launch = Launch::Restore {
            state_path: params.snapshot_path.into(),
            memory_path: memory_path.into(),
            options: RestoreOptions {
                serial: self.settings.serial.clone(),
                memory_backend,
                track_dirty_pages: params.track_dirty_pages || params.enable_diff_snapshots,
                vsock_uds: params.vsock_override.map(|o| o.uds_path.into()),
                drive_paths,
                tap_names,
                host,
                mmds: Some(self.mmds.clone()),
            },
            resume: params.resume_vm,
            restored: restored.clone(),
        };
        let vm = self.launcher.launch(launch).map_err(vm_error("Cannot load the snapshot"))?;
        // The restored devices, for the requests that name them by ID.
        if let Some(config) = restored.get() {
            self.resources = VmResources::restored(config, params.kestrel.map(|extensions| *extensions));
        }
        self.vm = Some(vm);
        self.state = if params.resume_vm { InstanceState::Running } else { InstanceState::Paused };
        Ok(VmmResponse::NoContent)
    }
}

impl<L: Launcher> crate::vm::LoopClient for Controller<L> {
    fn fd(&self) -> std::os::fd::RawFd {
        self.wake_fd()
    }

    fn ready(&mut self) {
        // A closed channel leaves the VM running, as the API thread's end always has.
        self.handle_pending();
    }
}
