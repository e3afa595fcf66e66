//! The API socket and the requests' routing: Firecracker's paths, bodies and status codes.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use vmm::builder::RestoreOptions;
use vmm::config::{SerialConfig, VirtioTransport, VmConfig};
use vmm::snapshot::{SnapshotKind, SnapshotRequest};

use crate::http::{Method, Request, Response};
use crate::logger::{LoggerControl, LoggerSettings};
use crate::metrics::MetricsWriter;
use crate::models::{
    ActionType, Balloon, BalloonStats, BalloonStatsUpdate, BalloonUpdate, BootSource, Drive, EntropyDevice,
    InstanceActionInfo, InstanceInfo, InstanceState, Logger, MachineConfiguration, MemoryBackendType,
    Metrics, NetworkInterface, PartialDrive, SnapshotCreateParams, SnapshotLoadParams, SnapshotType, VmState,
    VmStateValue, Vsock,
};
use crate::resources::VmResources;
use crate::{NOT_SUPPORTED_AFTER_START, NOT_SUPPORTED_BEFORE_START};

/// Why the API socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("API socket {0} is in use by a running process")]
    InUse(PathBuf),
    #[error("API socket path {0} exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("cannot replace the stale API socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: std::io::Error },
    #[error("cannot create the API socket {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
}

/// Creates the API socket with owner-only permissions (0600). A stale socket left by an earlier
/// run is replaced; a live one, or any other file, is an error. Sets the process umask while
/// binding, so call it before other threads create files.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServerError::NotASocket(path.to_owned()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(ServerError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path)
            .map_err(|source| ServerError::RemoveStale { path: path.to_owned(), source })?;
    }
    // SAFETY: umask only changes the process's file-creation mask; it cannot fail.
    let old_mask = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old_mask) };
    let listener = listener.map_err(|source| ServerError::Bind { path: path.to_owned(), source })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| ServerError::Bind { path: path.to_owned(), source })?;
    Ok(listener)
}

/// What `InstanceStart` or `PUT /snapshot/load` asks the VMM to build and run.
#[derive(Clone, Debug)]
pub enum Launch {
    /// Boot a VM from a complete configuration.
    Boot(VmConfig),
    /// Restore a VM from a snapshot; it stays paused unless `resume`.
    Restore { state_path: PathBuf, memory_path: PathBuf, options: RestoreOptions, resume: bool },
}

/// Builds and starts the VM and returns its control; an error is reported to the client as a 400.
pub type Starter = Box<dyn FnMut(Launch) -> Result<Box<dyn VmControl>, String> + Send>;

/// What the API can do to a running VM: `PATCH /vm`, `PUT /snapshot/create`, and the post-boot
/// device actions.
pub trait VmControl: Send {
    /// Returns once the vCPUs are paused; pausing a paused VM succeeds.
    fn pause(&self) -> Result<(), String>;
    /// Resuming a running VM succeeds.
    fn resume(&self) -> Result<(), String>;
    /// Writes a snapshot of the paused VM.
    fn snapshot(&self, request: &SnapshotRequest) -> Result<(), String>;
    /// `SendCtrlAltDel`: types Ctrl+Alt+Del on the guest's keyboard.
    fn send_ctrl_alt_del(&self) -> Result<(), String>;
    /// `PATCH /balloon`: gives the balloon a new target.
    fn update_balloon(&self, amount_mib: u32) -> Result<(), String>;
    /// `GET /balloon/statistics`: fails if the balloon has no statistics.
    fn balloon_statistics(&self) -> Result<BalloonStats, String>;
    /// `PATCH /balloon/statistics`: a new interval (statistics cannot be turned on or off).
    fn update_balloon_stats_interval(&self, seconds: u16) -> Result<(), String>;
    /// `PATCH /drives/{drive_id}`: disk `index` (in the order of the VM configuration's disks)
    /// is the file at `path` from now on.
    fn update_drive(&self, index: usize, path: &Path) -> Result<(), String>;
}

impl VmControl for vmm::vm::VmHandle {
    fn pause(&self) -> Result<(), String> {
        vmm::vm::VmHandle::pause(self).map_err(|e| e.to_string())
    }

    fn resume(&self) -> Result<(), String> {
        vmm::vm::VmHandle::resume(self);
        Ok(())
    }

    fn snapshot(&self, request: &SnapshotRequest) -> Result<(), String> {
        let report = vmm::vm::VmHandle::snapshot(self, request).map_err(|e| e.to_string())?;
        tracing::info!(
            "snapshot written in {:?}: {} bytes of state, {} bytes of memory",
            report.duration,
            report.state_bytes,
            report.memory_bytes_written
        );
        Ok(())
    }

    fn send_ctrl_alt_del(&self) -> Result<(), String> {
        self.devices().send_ctrl_alt_del().map_err(|e| e.to_string())
    }

    fn update_balloon(&self, amount_mib: u32) -> Result<(), String> {
        self.devices().set_balloon_target(amount_mib).map_err(|e| e.to_string())
    }

    fn balloon_statistics(&self) -> Result<BalloonStats, String> {
        let report = self.devices().balloon_report().map_err(|e| e.to_string())?;
        let stats = report.stats;
        Ok(BalloonStats {
            target_pages: report.target_pages,
            actual_pages: report.actual_pages,
            target_mib: report.target_mib,
            actual_mib: report.actual_mib,
            swap_in: stats.swap_in,
            swap_out: stats.swap_out,
            major_faults: stats.major_faults,
            minor_faults: stats.minor_faults,
            free_memory: stats.free_memory,
            total_memory: stats.total_memory,
            available_memory: stats.available_memory,
            disk_caches: stats.disk_caches,
            hugetlb_allocations: stats.hugetlb_allocations,
            hugetlb_failures: stats.hugetlb_failures,
            oom_kill: stats.oom_kills,
            alloc_stall: stats.alloc_stalls,
            async_scan: stats.async_scan,
            direct_scan: stats.direct_scan,
            async_reclaim: stats.async_reclaim,
            direct_reclaim: stats.direct_reclaim,
        })
    }

    fn update_balloon_stats_interval(&self, seconds: u16) -> Result<(), String> {
        self.devices().set_balloon_stats_interval(seconds).map_err(|e| e.to_string())
    }

    fn update_drive(&self, index: usize, path: &Path) -> Result<(), String> {
        self.devices().replace_disk(index, path).map_err(|e| e.to_string())
    }
}

/// The API's state: the configuration so far, and whether the VM has started.
pub struct Api {
    id: String,
    resources: VmResources,
    state: InstanceState,
    serial: SerialConfig,
    transport: VirtioTransport,
    starter: Starter,
    /// The started VM's control; `None` before `InstanceStart`.
    vm: Option<Box<dyn VmControl>>,
    /// A configuration request succeeded: loading a snapshot is no longer allowed.
    configured: bool,
    metrics: Arc<MetricsWriter>,
    /// Applies `PUT /logger`; without it the endpoint is not served.
    logger: Option<LoggerControl>,
}

impl Api {
    /// `id` is the instance ID `GET /` reports; `serial` and `transport` are not part of
    /// Firecracker's API and come from the command line.
    pub fn new(id: String, serial: SerialConfig, transport: VirtioTransport, starter: Starter) -> Api {
        Api {
            id,
            resources: VmResources::default(),
            state: InstanceState::NotStarted,
            serial,
            transport,
            starter,
            vm: None,
            configured: false,
            metrics: MetricsWriter::new(),
            logger: None,
        }
    }

    /// The metrics `PUT /metrics` and `FlushMetrics` write: the runner attaches the VM's counters
    /// once it has built the VM, and writes a last line when it ends.
    pub fn metrics(&self) -> Arc<MetricsWriter> {
        self.metrics.clone()
    }

    /// Serves `PUT /logger` through `control`.
    pub fn set_logger_control(&mut self, control: LoggerControl) {
        self.logger = Some(control);
    }

    /// Answers one request. Never panics on client input.
    pub fn handle(&mut self, request: &Request) -> Response {
        let response = match self.route(request) {
            Ok(response) => response,
            Err(message) => Response::bad_request(&message),
        };
        self.metrics.api().count(request, response.status);
        response
    }

    fn started(&self) -> bool {
        self.state != InstanceState::NotStarted
    }

    /// The configured balloon.
    fn balloon(&self) -> Result<&Balloon, String> {
        self.resources.balloon().ok_or_else(|| "Invalid request: no balloon device is configured".into())
    }

    /// The running VM, for a post-boot-only request.
    fn vm(&self) -> Result<&dyn VmControl, String> {
        self.vm.as_deref().ok_or_else(|| NOT_SUPPORTED_BEFORE_START.into())
    }

    /// A pre-boot-only configuration request.
    fn configure<T: DeserializeOwned>(
        &mut self,
        body: &[u8],
        apply: impl FnOnce(&mut VmResources, T) -> Result<(), crate::resources::ConfigError>,
    ) -> Result<Response, String> {
        let value: T = parse_body(body)?;
        if self.started() {
            return Err(NOT_SUPPORTED_AFTER_START.into());
        }
        apply(&mut self.resources, value).map_err(|e| e.to_string())?;
        self.configured = true;
        Ok(Response::no_content())
    }

    fn route(&mut self, request: &Request) -> Result<Response, String> {
        let segments = request.segments();
        let body = &request.body[..];
        use Method::{Get, Patch, Put};
        match (request.method, &segments[..]) {
            (Get, []) => Ok(Response::json(
                200,
                &InstanceInfo {
                    app_name: "Kestrel".into(),
                    id: self.id.clone(),
                    state: self.state,
                    vmm_version: env!("CARGO_PKG_VERSION").into(),
                },
            )),
            (Get, ["version"]) => Ok(Response::json(
                200,
                &serde_json::json!({ "firecracker_version": "1.16.1", "kestrel_version": env!("CARGO_PKG_VERSION") }),
            )),
            (Put, ["boot-source"]) => self.configure(body, |r, v: BootSource| r.set_boot_source(v)),
            (Get, ["machine-config"]) => Ok(Response::json(200, self.resources.machine_config())),
            (Put, ["machine-config"]) => {
                self.configure(body, |r, v: MachineConfiguration| r.set_machine_config(v))
            }
            (Patch, ["machine-config"]) => {
                let patch: serde_json::Value = parse_body(body)?;
                let mut merged =
                    serde_json::to_value(self.resources.machine_config()).map_err(|e| e.to_string())?;
                let (Some(fields), Some(target)) = (patch.as_object(), merged.as_object_mut()) else {
                    return Err("The body must be a JSON object".into());
                };
                for (key, value) in fields {
                    target.insert(key.clone(), value.clone());
                }
                let merged = serde_json::to_vec(&merged).map_err(|e| e.to_string())?;
                self.configure(&merged, |r, v: MachineConfiguration| r.set_machine_config(v))
            }
            (Put, ["drives", id]) => self.configure(body, |r, v: Drive| r.put_drive(id, v)),
            (Put, ["network-interfaces", id]) => {
                self.configure(body, |r, v: NetworkInterface| r.put_network_interface(id, v))
            }
            (Put, ["vsock"]) => self.configure(body, |r, v: Vsock| r.set_vsock(v)),
            (Put, ["balloon"]) => self.configure(body, |r, v: Balloon| r.set_balloon(v)),
            // After the start, the configuration follows every change made through PATCH: the
            // target and interval are what the running device has.
            (Get, ["balloon"]) => Ok(Response::json(200, self.balloon()?)),
            (Patch, ["balloon"]) => {
                let BalloonUpdate { amount_mib } = parse_body(body)?;
                let vm = self.vm()?;
                self.balloon()?;
                vm.update_balloon(amount_mib).map_err(|e| format!("Cannot update the balloon: {e}"))?;
                self.resources.record_balloon_target(amount_mib);
                Ok(Response::no_content())
            }
            (Get, ["balloon", "statistics"]) => {
                let vm = self.vm()?;
                self.balloon()?;
                let stats = vm
                    .balloon_statistics()
                    .map_err(|e| format!("Cannot read the balloon statistics: {e}"))?;
                Ok(Response::json(200, &stats))
            }
            (Patch, ["balloon", "statistics"]) => {
                let BalloonStatsUpdate { stats_polling_interval_s } = parse_body(body)?;
                let vm = self.vm()?;
                self.balloon()?;
                vm.update_balloon_stats_interval(stats_polling_interval_s)
                    .map_err(|e| format!("Cannot update the balloon statistics: {e}"))?;
                self.resources.record_balloon_stats_interval(stats_polling_interval_s);
                Ok(Response::no_content())
            }
            (Put, ["entropy"]) => self.configure(body, |r, v: EntropyDevice| r.set_entropy(v)),
            (Get, ["vm", "config"]) => Ok(Response::json(200, &self.resources.export())),
            (Put, ["actions"]) => {
                let action: InstanceActionInfo = parse_body(body)?;
                match action.action_type {
                    ActionType::InstanceStart => self.start(),
                    ActionType::SendCtrlAltDel => {
                        self.vm()?.send_ctrl_alt_del()?;
                        Ok(Response::no_content())
                    }
                    // Like Firecracker: before the start there is nothing to flush.
                    ActionType::FlushMetrics if !self.started() => Err(NOT_SUPPORTED_BEFORE_START.into()),
                    ActionType::FlushMetrics => {
                        self.metrics.flush().map_err(|e| e.to_string())?;
                        Ok(Response::no_content())
                    }
                }
            }
            (Patch, ["vm"]) => {
                let VmState { state } = parse_body(body)?;
                let vm = self.vm()?;
                // Like Firecracker, pausing a paused VM and resuming a running one succeed.
                match state {
                    VmStateValue::Paused => {
                        vm.pause().map_err(|e| format!("Cannot pause the microVM: {e}"))?;
                        self.state = InstanceState::Paused;
                    }
                    VmStateValue::Resumed => {
                        vm.resume().map_err(|e| format!("Cannot resume the microVM: {e}"))?;
                        self.state = InstanceState::Running;
                    }
                }
                Ok(Response::no_content())
            }
            (Patch, ["drives", id]) => {
                let update: PartialDrive = parse_body(body)?;
                let vm = self.vm()?;
                let (index, path) =
                    self.resources.check_drive_update(id, &update).map_err(|e| e.to_string())?;
                vm.update_drive(index, &path).map_err(|e| format!("Cannot update the drive: {e}"))?;
                self.resources.record_drive_path(id, &path.to_string_lossy());
                Ok(Response::no_content())
            }
            (Patch, ["network-interfaces", _]) if !self.started() => Err(NOT_SUPPORTED_BEFORE_START.into()),
            (Patch, ["network-interfaces", _]) => {
                Err(not_yet("Updating rate limiters (PATCH /network-interfaces)"))
            }
            (Put, ["snapshot", "create"]) => self.create_snapshot(body),
            (Put, ["snapshot", "load"]) => self.load_snapshot(body),
            (Put, ["logger"]) => self.put_logger(body),
            (Put, ["metrics"]) => self.put_metrics(body),
            (Put | Patch | Get, ["mmds"]) | (Put, ["mmds", "config"]) => Err(not_yet("MMDS")),
            (Put, ["cpu-config"]) => Err(not_yet("CPU configuration")),
            (Put, ["serial"]) => Err(not_yet("The serial endpoint (use --serial)")),
            (Put, ["pmem", _]) | (Patch, ["pmem", _]) => Err(not_yet("pmem devices")),
            (Put | Patch | Get, ["hotplug", "memory"]) => Err(not_yet("Memory hotplug")),
            (Put | Get, ["balloon", "hinting", _]) | (Patch, ["balloon", "hinting", _]) => {
                Err(not_yet("Balloon free page hinting"))
            }
            _ => Err(format!(
                "Invalid request method and/or path: {} {}.",
                request.method.as_str(),
                request.path.chars().take(200).collect::<String>()
            )),
        }
    }

    /// `PUT /logger`: before the start, as often as asked (Firecracker's rules).
    fn put_logger(&mut self, body: &[u8]) -> Result<Response, String> {
        let request: Logger = parse_body(body)?;
        if self.started() {
            return Err(NOT_SUPPORTED_AFTER_START.into());
        }
        let control = self.logger.as_mut().ok_or_else(|| not_yet("The logger endpoint (use --log-level)"))?;
        control(LoggerSettings::open(request).map_err(|e| e.to_string())?)?;
        Ok(Response::no_content())
    }

    /// `PUT /metrics`: before the start, once (Firecracker's rules).
    fn put_metrics(&mut self, body: &[u8]) -> Result<Response, String> {
        let Metrics { metrics_path } = parse_body(body)?;
        if self.started() {
            return Err(NOT_SUPPORTED_AFTER_START.into());
        }
        self.metrics.init(Path::new(&metrics_path)).map_err(|e| e.to_string())?;
        Ok(Response::no_content())
    }

    fn start(&mut self) -> Result<Response, String> {
        if self.started() {
            return Err(NOT_SUPPORTED_AFTER_START.into());
        }
        let config =
            self.resources.to_vm_config(self.serial.clone(), self.transport).map_err(|e| e.to_string())?;
        let vm =
            (self.starter)(Launch::Boot(config)).map_err(|e| format!("Cannot start the microVM: {e}"))?;
        self.vm = Some(vm);
        self.state = InstanceState::Running;
        Ok(Response::no_content())
    }

    fn create_snapshot(&mut self, body: &[u8]) -> Result<Response, String> {
        let params: SnapshotCreateParams = parse_body(body)?;
        let Some(vm) = &self.vm else {
            return Err(NOT_SUPPORTED_BEFORE_START.into());
        };
        if self.state != InstanceState::Paused {
            return Err("Cannot create a snapshot: the microVM must be paused first.".into());
        }
        let request = SnapshotRequest {
            state_path: params.snapshot_path.into(),
            memory_path: params.mem_file_path.into(),
            kind: match params.snapshot_type {
                SnapshotType::Full => SnapshotKind::Full,
                SnapshotType::Diff => SnapshotKind::Diff,
            },
        };
        vm.snapshot(&request).map_err(|e| format!("Cannot create the snapshot: {e}"))?;
        Ok(Response::no_content())
    }

    /// Firecracker's rule: only into a fresh VMM, before any configuration.
    fn load_snapshot(&mut self, body: &[u8]) -> Result<Response, String> {
        let params: SnapshotLoadParams = parse_body(body)?;
        if self.started() {
            return Err(NOT_SUPPORTED_AFTER_START.into());
        }
        if self.configured {
            return Err(
                "Loading a microVM snapshot is not allowed after configuring boot-specific resources.".into(),
            );
        }
        let memory_path = match (params.mem_file_path, params.mem_backend) {
            (Some(path), None) => path,
            (None, Some(backend)) if backend.backend_type == MemoryBackendType::File => backend.backend_path,
            (None, Some(_)) => return Err(not_yet("The Uffd memory backend")),
            _ => return Err("Exactly one of mem_file_path and mem_backend must be given.".into()),
        };
        if !params.network_overrides.is_empty() {
            return Err(not_yet("network_overrides"));
        }
        let launch = Launch::Restore {
            state_path: params.snapshot_path.into(),
            memory_path: memory_path.into(),
            options: RestoreOptions {
                serial: self.serial.clone(),
                track_dirty_pages: params.track_dirty_pages || params.enable_diff_snapshots,
                vsock_uds: params.vsock_override.map(|o| o.uds_path.into()),
                drive_paths: Default::default(),
            },
            resume: params.resume_vm,
        };
        let vm = (self.starter)(launch).map_err(|e| format!("Cannot load the snapshot: {e}"))?;
        self.vm = Some(vm);
        self.state = if params.resume_vm { InstanceState::Running } else { InstanceState::Paused };
        Ok(Response::no_content())
    }
}

fn not_yet(what: &str) -> String {
    format!("{what} is not supported by Kestrel yet.")
}

/// A JSON body, or a message saying why it is not one of the expected shape.
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    if body.is_empty() {
        return Err("The request needs a JSON body".into());
    }
    // Every body is an object; serde would also read a struct from an array of its fields in
    // order, so `[3, "v.sock"]` would configure a vsock.
    if body.iter().find(|b| !b" \t\r\n".contains(b)) != Some(&b'{') {
        return Err("Invalid request body: expected a JSON object".into());
    }
    serde_json::from_slice(body).map_err(|e| format!("Invalid request body: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A VM that records the calls it gets.
    struct FakeVm(Arc<Mutex<Vec<String>>>);

    impl FakeVm {
        fn record(&self, call: String) {
            self.0.lock().unwrap().push(call);
        }
    }

    impl VmControl for FakeVm {
        fn pause(&self) -> Result<(), String> {
            self.record("pause".into());
            Ok(())
        }

        fn resume(&self) -> Result<(), String> {
            self.record("resume".into());
            Ok(())
        }

        fn send_ctrl_alt_del(&self) -> Result<(), String> {
            self.record("ctrl-alt-del".into());
            Ok(())
        }

        /// Refuses more than 1 GiB, as a device in a 1 GiB guest would.
        fn update_balloon(&self, amount_mib: u32) -> Result<(), String> {
            if amount_mib > 1024 {
                return Err("too large".into());
            }
            self.record(format!("balloon {amount_mib}"));
            Ok(())
        }

        fn balloon_statistics(&self) -> Result<BalloonStats, String> {
            self.record("statistics".into());
            Ok(BalloonStats { target_mib: 64, free_memory: Some(1 << 20), ..BalloonStats::default() })
        }

        /// Refuses 0, as a device with statistics does.
        fn update_balloon_stats_interval(&self, seconds: u16) -> Result<(), String> {
            if seconds == 0 {
                return Err("cannot turn them off".into());
            }
            self.record(format!("interval {seconds}"));
            Ok(())
        }

        /// Refuses directories, as a disk does.
        fn update_drive(&self, index: usize, path: &Path) -> Result<(), String> {
            if path.is_dir() {
                return Err("not a disk".into());
            }
            self.record(format!("drive {index} {}", path.display()));
            Ok(())
        }

        fn snapshot(&self, _request: &SnapshotRequest) -> Result<(), String> {
            self.record("snapshot".into());
            Ok(())
        }
    }

    fn api() -> (Api, Arc<Mutex<Vec<VmConfig>>>) {
        api_with_calls(Arc::default())
    }

    fn api_with_calls(calls: Arc<Mutex<Vec<String>>>) -> (Api, Arc<Mutex<Vec<VmConfig>>>) {
        let started = Arc::new(Mutex::new(Vec::new()));
        let seen = started.clone();
        let starter: Starter = Box::new(move |launch| {
            match launch {
                Launch::Boot(config) => seen.lock().unwrap().push(config),
                Launch::Restore { .. } => calls.lock().unwrap().push("restore".into()),
            }
            Ok(Box::new(FakeVm(calls.clone())))
        });
        (Api::new("test".into(), SerialConfig::None, VirtioTransport::Mmio, starter), started)
    }

    fn call(api: &mut Api, method: Method, path: &str, body: &str) -> (u16, serde_json::Value) {
        let response =
            api.handle(&Request { method, path: path.into(), body: body.as_bytes().to_vec(), close: false });
        let body =
            response.body.map(|b| serde_json::from_str(&b).unwrap()).unwrap_or(serde_json::Value::Null);
        (response.status, body)
    }

    fn fault(api: &mut Api, method: Method, path: &str, body: &str) -> String {
        let (status, body) = call(api, method, path, body);
        assert_eq!(status, 400, "{path} {body}");
        body["fault_message"].as_str().unwrap().to_owned()
    }

    fn kernel() -> tempfile::NamedTempFile {
        tempfile::NamedTempFile::new().unwrap()
    }

    #[test]
    fn configure_then_start() {
        let (mut api, started) = api();
        let kernel = kernel();
        let disk = kernel.path().to_str().unwrap();
        let (status, info) = call(&mut api, Method::Get, "/", "");
        assert_eq!((status, info["state"].as_str()), (200, Some("Not started")));
        let boot = format!(
            r#"{{"kernel_image_path": "{disk}", "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"}}"#
        );
        assert_eq!(call(&mut api, Method::Put, "/boot-source", &boot).0, 204);
        let machine = r#"{"vcpu_count": 2, "mem_size_mib": 1024, "smt": false, "track_dirty_pages": false}"#;
        assert_eq!(call(&mut api, Method::Put, "/machine-config", machine).0, 204);
        assert_eq!(call(&mut api, Method::Patch, "/machine-config", r#"{"vcpu_count": 4}"#).0, 204);
        let (_, current) = call(&mut api, Method::Get, "/machine-config", "");
        assert_eq!((current["vcpu_count"].as_u64(), current["mem_size_mib"].as_u64()), (Some(4), Some(1024)));
        let data = format!(
            r#"{{"drive_id": "data", "path_on_host": "{disk}", "is_root_device": false, "is_read_only": true}}"#
        );
        assert_eq!(call(&mut api, Method::Put, "/drives/data", &data).0, 204);
        let root = format!(
            r#"{{"drive_id": "rootfs", "path_on_host": "{disk}", "is_root_device": true, "is_read_only": false, "cache_type": "Unsafe", "io_engine": "Sync"}}"#
        );
        assert_eq!(call(&mut api, Method::Put, "/drives/rootfs", &root).0, 204);
        let net = r#"{"iface_id": "eth0", "guest_mac": "AA:FC:00:00:00:01", "host_dev_name": "tap0"}"#;
        assert_eq!(call(&mut api, Method::Put, "/network-interfaces/eth0", net).0, 204);
        let vsock = r#"{"guest_cid": 3, "uds_path": "./v.sock"}"#;
        assert_eq!(call(&mut api, Method::Put, "/vsock", vsock).0, 204);
        let balloon = r#"{"amount_mib": 100, "deflate_on_oom": true, "stats_polling_interval_s": 1}"#;
        assert_eq!(call(&mut api, Method::Put, "/balloon", balloon).0, 204);
        let (status, config) = call(&mut api, Method::Get, "/vm/config", "");
        assert_eq!(status, 200);
        assert_eq!(config["drives"].as_array().map(Vec::len), Some(2));
        assert_eq!(config["network-interfaces"][0]["host_dev_name"], "tap0");

        assert_eq!(call(&mut api, Method::Put, "/actions", r#"{"action_type": "InstanceStart"}"#).0, 204);
        let configs = started.lock().unwrap();
        let config = &configs[0];
        assert_eq!((config.vcpus, config.memory_bytes), (4, 1024 << 20));
        assert!(config.cmdline.ends_with("pci=off root=/dev/vda rw"));
        use vmm::config::VirtioConfig;
        let VirtioConfig::Block(first) = &config.virtio[0] else { panic!("{:?}", config.virtio) };
        assert_eq!((first.id.as_deref(), first.read_only), (Some("rootfs"), false));
        assert_eq!(config.virtio.len(), 5);
        drop(configs);

        assert_eq!(call(&mut api, Method::Get, "/", "").1["state"], "Running");
        for (path, body) in
            [("/boot-source", boot.as_str()), ("/machine-config", machine), ("/drives/rootfs", &root)]
        {
            assert_eq!(fault(&mut api, Method::Put, path, body), NOT_SUPPORTED_AFTER_START);
        }
        let again = fault(&mut api, Method::Put, "/actions", r#"{"action_type": "InstanceStart"}"#);
        assert_eq!(again, NOT_SUPPORTED_AFTER_START);
    }

    #[test]
    fn patch_vm_pauses_and_resumes_after_start() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (mut api, _) = api_with_calls(calls.clone());
        let kernel = kernel();
        let paused = r#"{"state": "Paused"}"#;
        let resumed = r#"{"state": "Resumed"}"#;
        assert_eq!(fault(&mut api, Method::Patch, "/vm", paused), NOT_SUPPORTED_BEFORE_START);
        assert_eq!(fault(&mut api, Method::Patch, "/vm", resumed), NOT_SUPPORTED_BEFORE_START);
        let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.path().display());
        assert_eq!(call(&mut api, Method::Put, "/boot-source", &boot).0, 204);
        assert_eq!(call(&mut api, Method::Put, "/actions", r#"{"action_type": "InstanceStart"}"#).0, 204);
        assert!(fault(&mut api, Method::Patch, "/vm", r#"{"state": "Stopped"}"#).contains("unknown variant"));
        assert!(fault(&mut api, Method::Patch, "/vm", "{").contains("Invalid request body"));
        assert!(
            fault(&mut api, Method::Patch, "/vm", r#"{"state": "Paused", "x": 1}"#).contains("unknown field")
        );
        assert!(calls.lock().unwrap().is_empty());
        assert_eq!(call(&mut api, Method::Patch, "/vm", paused).0, 204);
        assert_eq!(call(&mut api, Method::Get, "/", "").1["state"], "Paused");
        assert_eq!(call(&mut api, Method::Patch, "/vm", paused).0, 204);
        assert_eq!(call(&mut api, Method::Patch, "/vm", resumed).0, 204);
        assert_eq!(call(&mut api, Method::Get, "/", "").1["state"], "Running");
        assert_eq!(call(&mut api, Method::Patch, "/vm", resumed).0, 204);
        assert_eq!(*calls.lock().unwrap(), ["pause", "pause", "resume", "resume"]);
    }

    /// Starts the API's VM on a kernel file that only has to exist.
    fn start(api: &mut Api) -> tempfile::NamedTempFile {
        let kernel = kernel();
        let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.path().display());
        assert_eq!(call(api, Method::Put, "/boot-source", &boot).0, 204);
        assert_eq!(call(api, Method::Put, "/actions", r#"{"action_type": "InstanceStart"}"#).0, 204);
        kernel
    }

    #[test]
    fn send_ctrl_alt_del_reaches_the_running_vm() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (mut api, _) = api_with_calls(calls.clone());
        let action = r#"{"action_type": "SendCtrlAltDel"}"#;
        assert_eq!(fault(&mut api, Method::Put, "/actions", action), NOT_SUPPORTED_BEFORE_START);
        let _kernel = start(&mut api);
        assert_eq!(call(&mut api, Method::Put, "/actions", action).0, 204);
        assert_eq!(call(&mut api, Method::Put, "/actions", action).0, 204);
        assert_eq!(*calls.lock().unwrap(), ["ctrl-alt-del", "ctrl-alt-del"]);
    }

    #[test]
    fn the_balloon_takes_a_new_target_and_interval_and_reports_after_start() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (mut api, _) = api_with_calls(calls.clone());
        let balloon = r#"{"amount_mib": 16, "deflate_on_oom": false, "stats_polling_interval_s": 5}"#;
        assert_eq!(call(&mut api, Method::Put, "/balloon", balloon).0, 204);
        for (method, path, body) in [
            (Method::Patch, "/balloon", r#"{"amount_mib": 64}"#),
            (Method::Get, "/balloon/statistics", ""),
            (Method::Patch, "/balloon/statistics", r#"{"stats_polling_interval_s": 1}"#),
        ] {
            assert_eq!(fault(&mut api, method, path, body), NOT_SUPPORTED_BEFORE_START, "{path}");
        }
        let _kernel = start(&mut api);

        assert_eq!(call(&mut api, Method::Patch, "/balloon", r#"{"amount_mib": 64}"#).0, 204);
        assert_eq!(
            call(&mut api, Method::Patch, "/balloon/statistics", r#"{"stats_polling_interval_s": 2}"#).0,
            204
        );
        let (status, config) = call(&mut api, Method::Get, "/balloon", "");
        assert_eq!(status, 200);
        assert_eq!(
            (config["amount_mib"].as_u64(), config["stats_polling_interval_s"].as_u64()),
            (Some(64), Some(2))
        );
        assert_eq!(call(&mut api, Method::Get, "/vm/config", "").1["balloon"]["amount_mib"], 64);
        let (status, stats) = call(&mut api, Method::Get, "/balloon/statistics", "");
        assert_eq!(status, 200);
        assert_eq!((stats["target_mib"].as_u64(), stats["free_memory"].as_u64()), (Some(64), Some(1 << 20)));
        assert!(stats.get("swap_in").is_none(), "statistics the guest did not report are left out: {stats}");

        // The device's refusals are 400s, and the configuration keeps what the device has.
        let message = fault(&mut api, Method::Patch, "/balloon", r#"{"amount_mib": 2048}"#);
        assert_eq!(message, "Cannot update the balloon: too large");
        let off = r#"{"stats_polling_interval_s": 0}"#;
        assert_eq!(
            fault(&mut api, Method::Patch, "/balloon/statistics", off),
            "Cannot update the balloon statistics: cannot turn them off"
        );
        let config = call(&mut api, Method::Get, "/balloon", "").1;
        assert_eq!(
            (config["amount_mib"].as_u64(), config["stats_polling_interval_s"].as_u64()),
            (Some(64), Some(2))
        );
        assert!(fault(&mut api, Method::Patch, "/balloon", r#"{"amount_mib": 1, "x": 2}"#)
            .contains("unknown field"));
        assert!(fault(&mut api, Method::Patch, "/balloon", r#"{"amount_mib": -1}"#).contains("invalid value"));
        assert!(fault(&mut api, Method::Patch, "/balloon/statistics", "{}").contains("missing field"));
        assert_eq!(*calls.lock().unwrap(), ["balloon 64", "interval 2", "statistics"]);
    }

    #[test]
    fn a_drive_gets_a_new_file_after_start() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (mut api, _) = api_with_calls(calls.clone());
        let (old, new) = (kernel(), kernel());
        let (old, new) = (old.path().to_str().unwrap(), new.path().to_str().unwrap());
        for (id, root) in [("data", false), ("rootfs", true)] {
            let drive = format!(
                r#"{{"drive_id": "{id}", "path_on_host": "{old}", "is_root_device": {root}, "is_read_only": false}}"#
            );
            assert_eq!(call(&mut api, Method::Put, &format!("/drives/{id}"), &drive).0, 204);
        }
        let update = format!(r#"{{"drive_id": "data", "path_on_host": "{new}"}}"#);
        assert_eq!(fault(&mut api, Method::Patch, "/drives/data", &update), NOT_SUPPORTED_BEFORE_START);
        let _kernel = start(&mut api);

        assert_eq!(call(&mut api, Method::Patch, "/drives/data", &update).0, 204);
        let config = call(&mut api, Method::Get, "/vm/config", "").1;
        let paths: Vec<_> =
            config["drives"].as_array().unwrap().iter().map(|d| d["path_on_host"].clone()).collect();
        assert_eq!(paths, [new, old], "the configuration follows the change");

        let directory = tempfile::tempdir().unwrap();
        let refused =
            format!(r#"{{"drive_id": "rootfs", "path_on_host": "{}"}}"#, directory.path().display());
        assert_eq!(
            fault(&mut api, Method::Patch, "/drives/rootfs", &refused),
            "Cannot update the drive: not a disk"
        );
        assert!(fault(
            &mut api,
            Method::Patch,
            "/drives/other",
            r#"{"drive_id": "other", "path_on_host": "/x"}"#
        )
        .contains("no drive other is configured"));
        assert!(fault(&mut api, Method::Patch, "/drives/data", r#"{"drive_id": "data", "x": 1}"#)
            .contains("unknown field"));
        assert_eq!(*calls.lock().unwrap(), [format!("drive 1 {new}")], "the root drive is the VM's disk 0");
    }

    #[test]
    fn balloon_requests_without_a_balloon_are_refused() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (mut api, _) = api_with_calls(calls.clone());
        let _kernel = start(&mut api);
        for (method, path, body) in [
            (Method::Get, "/balloon", ""),
            (Method::Patch, "/balloon", r#"{"amount_mib": 64}"#),
            (Method::Get, "/balloon/statistics", ""),
            (Method::Patch, "/balloon/statistics", r#"{"stats_polling_interval_s": 1}"#),
        ] {
            assert!(
                fault(&mut api, method, path, body).contains("no balloon device is configured"),
                "{path}"
            );
        }
        assert!(calls.lock().unwrap().is_empty());
    }

    #[test]
    fn snapshots_are_created_only_while_paused() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (mut api, _) = api_with_calls(calls.clone());
        let create = r#"{"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m", "snapshot_type": "Diff"}"#;
        assert_eq!(fault(&mut api, Method::Put, "/snapshot/create", create), NOT_SUPPORTED_BEFORE_START);
        let kernel = kernel();
        let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.path().display());
        assert_eq!(call(&mut api, Method::Put, "/boot-source", &boot).0, 204);
        assert_eq!(call(&mut api, Method::Put, "/actions", r#"{"action_type": "InstanceStart"}"#).0, 204);
        assert!(fault(&mut api, Method::Put, "/snapshot/create", create).contains("must be paused"));
        assert!(fault(&mut api, Method::Put, "/snapshot/create", r#"{"snapshot_path": "/s"}"#)
            .contains("missing field `mem_file_path`"));
        let bad_type = r#"{"snapshot_path": "/s", "mem_file_path": "/m", "snapshot_type": "Half"}"#;
        assert!(fault(&mut api, Method::Put, "/snapshot/create", bad_type).contains("unknown variant"));
        assert_eq!(call(&mut api, Method::Patch, "/vm", r#"{"state": "Paused"}"#).0, 204);
        assert_eq!(call(&mut api, Method::Put, "/snapshot/create", create).0, 204);
        assert_eq!(*calls.lock().unwrap(), ["pause", "snapshot"]);
        // A loaded snapshot needs a fresh VMM.
        let load =
            r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}"#;
        assert_eq!(fault(&mut api, Method::Put, "/snapshot/load", load), NOT_SUPPORTED_AFTER_START);
    }

    #[test]
    fn snapshot_loads_need_a_fresh_vmm_and_one_memory_source() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (mut api, _) = api_with_calls(calls.clone());
        let both = r#"{"snapshot_path": "/s", "mem_file_path": "/m",
            "mem_backend": {"backend_type": "File", "backend_path": "/m"}}"#;
        assert!(fault(&mut api, Method::Put, "/snapshot/load", both).contains("Exactly one"));
        assert!(fault(&mut api, Method::Put, "/snapshot/load", r#"{"snapshot_path": "/s"}"#)
            .contains("Exactly one"));
        let uffd =
            r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}}"#;
        assert!(fault(&mut api, Method::Put, "/snapshot/load", uffd).contains("not supported by Kestrel yet"));
        let load = r#"{"snapshot_path": "/s", "mem_file_path": "/m", "resume_vm": false}"#;
        assert_eq!(call(&mut api, Method::Put, "/snapshot/load", load).0, 204);
        assert_eq!(call(&mut api, Method::Get, "/", "").1["state"], "Paused", "loaded without resume_vm");
        assert_eq!(*calls.lock().unwrap(), ["restore"]);

        let (mut configured, _) = super::tests::api();
        assert_eq!(
            call(&mut configured, Method::Put, "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 64}"#)
                .0,
            204
        );
        assert!(fault(&mut configured, Method::Put, "/snapshot/load", load).contains("after configuring"));
    }

    #[test]
    fn bad_bodies_are_400_with_a_message() {
        let (mut api, started) = api();
        let kernel = kernel();
        let path = kernel.path().to_str().unwrap();
        let cases: Vec<(Method, &str, String, &str)> = vec![
            (Method::Put, "/boot-source", "{".into(), "Invalid request body"),
            (Method::Put, "/boot-source", "".into(), "needs a JSON body"),
            (Method::Put, "/boot-source", "[]".into(), "Invalid request body"),
            (Method::Put, "/entropy", "[]".into(), "expected a JSON object"),
            (Method::Put, "/vsock", r#" [3, "v.sock"]"#.into(), "expected a JSON object"),
            (Method::Patch, "/machine-config", "[2, 256]".into(), "expected a JSON object"),
            (Method::Put, "/boot-source", r#"{"kernel_image_path": 3}"#.into(), "invalid type"),
            (Method::Put, "/boot-source", format!(r#"{{"kernel_image_path": "{path}", "x": 1}}"#), "unknown field `x`"),
            (Method::Put, "/boot-source", r#"{"kernel_image_path": "/nonexistent/k"}"#.into(), "kernel file cannot be opened"),
            (Method::Put, "/boot-source", r#"{"kernel_image_path": ""}"#.into(), "must not be empty"),
            (Method::Put, "/machine-config", r#"{"vcpu_count": 0, "mem_size_mib": 128}"#.into(), "vCPU number is invalid"),
            (Method::Put, "/machine-config", r#"{"vcpu_count": 255, "mem_size_mib": 128}"#.into(), "vCPU number is invalid"),
            (Method::Put, "/machine-config", r#"{"vcpu_count": 256, "mem_size_mib": 128}"#.into(), "invalid value"),
            (Method::Put, "/machine-config", r#"{"vcpu_count": -1, "mem_size_mib": 128}"#.into(), "invalid value"),
            (Method::Put, "/machine-config", r#"{"vcpu_count": 3, "mem_size_mib": 128, "smt": true}"#.into(), "vCPU number is invalid"),
            (Method::Put, "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 0}"#.into(), "memory size"),
            (Method::Put, "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 18446744073709551615}"#.into(), "memory size"),
            (Method::Put, "/machine-config", r#"{"vcpu_count": 1}"#.into(), "missing field `mem_size_mib`"),
            (Method::Put, "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "1G"}"#.into(), "unknown variant"),
            (Method::Put, "/drives/a", format!(r#"{{"drive_id": "b", "path_on_host": "{path}", "is_root_device": false, "is_read_only": false}}"#), "does not match"),
            (Method::Put, "/drives/a-b", format!(r#"{{"drive_id": "a-b", "path_on_host": "{path}", "is_root_device": false, "is_read_only": false}}"#), "Invalid id"),
            (Method::Put, "/drives/a", r#"{"drive_id": "a", "is_root_device": false}"#.into(), "required"),
            (Method::Put, "/drives/a", r#"{"drive_id": "a", "path_on_host": "/nonexistent", "is_root_device": false, "is_read_only": false}"#.into(), "cannot be opened"),
            (Method::Put, "/drives/a", format!(r#"{{"drive_id": "a", "path_on_host": "{path}", "is_root_device": false, "is_read_only": false, "io_engine": "Async"}}"#), "not supported by Kestrel yet"),
            (Method::Put, "/network-interfaces/e", r#"{"iface_id": "e", "host_dev_name": "tap0", "guest_mac": "zz"}"#.into(), "Invalid guest_mac"),
            (Method::Put, "/network-interfaces/e", r#"{"iface_id": "e", "host_dev_name": "a/b"}"#.into(), "Invalid host_dev_name"),
            (Method::Put, "/vsock", r#"{"guest_cid": 2, "uds_path": "/tmp/v"}"#.into(), "Invalid guest_cid"),
            (Method::Put, "/vsock", r#"{"guest_cid": 4294967296, "uds_path": "/tmp/v"}"#.into(), "invalid value"),
            (Method::Put, "/balloon", r#"{"amount_mib": 129, "deflate_on_oom": false}"#.into(), "more than the guest's memory"),
            (Method::Put, "/balloon", r#"{"amount_mib": 1}"#.into(), "missing field `deflate_on_oom`"),
            (Method::Put, "/actions", r#"{"action_type": "Reboot"}"#.into(), "unknown variant"),
            (Method::Put, "/actions", r#"{"action_type": "InstanceStart"}"#.into(), "without kernel configuration"),
            (Method::Put, "/actions", r#"{"action_type": "SendCtrlAltDel"}"#.into(), "before starting"),
            (Method::Put, "/snapshot/create", "{}".into(), "missing field"),
            (Method::Put, "/logger", "{}".into(), "not supported by Kestrel yet"),
            (Method::Put, "/logger", r#"{"level": "loud"}"#.into(), "one of Error, Warning, Info, Debug, Trace, Off"),
            (Method::Put, "/logger", r#"{"log_path": "/tmp/l", "colour": true}"#.into(), "unknown field `colour`"),
            (Method::Put, "/metrics", "{}".into(), "missing field `metrics_path`"),
            (Method::Put, "/metrics", r#"{"metrics_path": "/tmp/m", "x": 1}"#.into(), "unknown field `x`"),
            (Method::Put, "/metrics", r#"{"metrics_path": "/nonexistent/dir/m"}"#.into(), "Cannot open the metrics file"),
            (Method::Put, "/actions", r#"{"action_type": "FlushMetrics"}"#.into(), "before starting"),
            (Method::Get, "/nowhere", "".into(), "Invalid request method and/or path: GET /nowhere."),
            (Method::Patch, "/boot-source", "{}".into(), "Invalid request method and/or path"),
        ];
        for (method, path, body, expected) in cases {
            let message = fault(&mut api, method, path, &body);
            assert!(message.contains(expected), "{path} {body}: {message}");
        }
        assert!(started.lock().unwrap().is_empty());
        assert_eq!(call(&mut api, Method::Get, "/", "").1["state"], "Not started");
    }

    #[test]
    fn metrics_are_set_up_once_before_the_start_and_flushed_after_it() {
        let (mut api, _) = api();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        let put = format!(r#"{{"metrics_path": "{}"}}"#, path.display());
        let flush = r#"{"action_type": "FlushMetrics"}"#;
        assert_eq!(call(&mut api, Method::Put, "/metrics", &put).0, 204);
        let again = fault(&mut api, Method::Put, "/metrics", &put);
        assert_eq!(again, "Reinitialization of metrics not allowed.");
        assert_eq!(fault(&mut api, Method::Put, "/actions", flush), NOT_SUPPORTED_BEFORE_START);
        let kernel = kernel();
        let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.path().display());
        assert_eq!(call(&mut api, Method::Put, "/boot-source", &boot).0, 204);
        assert_eq!(call(&mut api, Method::Put, "/actions", r#"{"action_type": "InstanceStart"}"#).0, 204);
        assert_eq!(call(&mut api, Method::Put, "/actions", flush).0, 204);
        assert_eq!(fault(&mut api, Method::Put, "/metrics", &put), NOT_SUPPORTED_AFTER_START);

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 1, "{text}");
        let put_requests = &lines[0]["put_api_requests"];
        assert_eq!((&put_requests["metrics_count"], &put_requests["metrics_fails"]), (&2.into(), &1.into()));
        // The flush counts itself once answered: in the next line.
        assert_eq!((&put_requests["actions_count"], &put_requests["actions_fails"]), (&2.into(), &1.into()));
        assert_eq!(lines[0]["api_server"]["request_count"], 5);
        api.metrics().flush().unwrap();
        let last = std::fs::read_to_string(&path).unwrap().lines().nth(1).map(str::to_owned).unwrap();
        let last: serde_json::Value = serde_json::from_str(&last).unwrap();
        assert_eq!(last["put_api_requests"]["actions_count"], 1);
        assert_eq!(last["put_api_requests"]["metrics_fails"], 1);
    }

    #[test]
    fn the_logger_is_configured_through_its_control_before_the_start() {
        let (mut api, _) = api();
        let applied = Arc::new(Mutex::new(Vec::new()));
        let seen = applied.clone();
        api.set_logger_control(Box::new(move |settings| {
            if settings.module.as_deref() == Some("refused") {
                return Err("the control refused".into());
            }
            seen.lock().unwrap().push((settings.level, settings.show_level, settings.file.is_some()));
            Ok(())
        }));
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("kestrel.log");
        let with_file =
            format!(r#"{{"log_path": "{}", "level": "debug", "show_level": true}}"#, log.display());
        assert_eq!(call(&mut api, Method::Put, "/logger", &with_file).0, 204);
        assert!(log.exists());
        // Firecracker lets the logger be changed again before the start.
        assert_eq!(call(&mut api, Method::Put, "/logger", r#"{"level": "Error"}"#).0, 204);
        let refused = fault(&mut api, Method::Put, "/logger", r#"{"module": "refused"}"#);
        assert_eq!(refused, "the control refused");
        let missing = format!(r#"{{"log_path": "{}/no/such/dir/log"}}"#, dir.path().display());
        assert!(fault(&mut api, Method::Put, "/logger", &missing).starts_with("Cannot open the log file"));
        use tracing::level_filters::LevelFilter;
        assert_eq!(
            *applied.lock().unwrap(),
            [(LevelFilter::DEBUG, true, true), (LevelFilter::ERROR, false, false)]
        );

        let kernel = kernel();
        let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.path().display());
        assert_eq!(call(&mut api, Method::Put, "/boot-source", &boot).0, 204);
        assert_eq!(call(&mut api, Method::Put, "/actions", r#"{"action_type": "InstanceStart"}"#).0, 204);
        assert_eq!(fault(&mut api, Method::Put, "/logger", "{}"), NOT_SUPPORTED_AFTER_START);
        assert_eq!(applied.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_failed_start_leaves_the_vm_configurable() {
        let starter: Starter = Box::new(|_| Err("no KVM".into()));
        let mut api = Api::new("t".into(), SerialConfig::None, VirtioTransport::Mmio, starter);
        let kernel = kernel();
        let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.path().display());
        assert_eq!(call(&mut api, Method::Put, "/boot-source", &boot).0, 204);
        let message = fault(&mut api, Method::Put, "/actions", r#"{"action_type": "InstanceStart"}"#);
        assert_eq!(message, "Cannot start the microVM: no KVM");
        assert_eq!(call(&mut api, Method::Put, "/boot-source", &boot).0, 204);
    }

    #[test]
    fn the_socket_is_owner_only_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(bind(&path), Err(ServerError::InUse(_))));
        drop(listener);
        bind(&path).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(bind(&file), Err(ServerError::NotASocket(_))));
    }
}
