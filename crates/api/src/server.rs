//! The API socket and the requests' routing: Firecracker's paths, bodies and status codes.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use vmm::config::{SerialConfig, VirtioTransport, VmConfig};

use crate::http::{read_request, HttpError, Method, Request, Response};
use crate::models::{
    ActionType, Balloon, BootSource, Drive, EntropyDevice, InstanceActionInfo, InstanceInfo, InstanceState,
    MachineConfiguration, NetworkInterface, VmState, VmStateValue, Vsock,
};
use crate::resources::VmResources;
use crate::{NOT_SUPPORTED_AFTER_START, NOT_SUPPORTED_BEFORE_START};

/// At most this many connections are served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;

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

/// Starts the VM from a complete configuration and returns its control; an error is reported to
/// the client as a 400.
pub type Starter = Box<dyn FnMut(VmConfig) -> Result<Box<dyn VmControl>, String> + Send>;

/// What the API can do to a running VM: `PATCH /vm`.
pub trait VmControl: Send {
    /// Returns once the vCPUs are paused; pausing a paused VM succeeds.
    fn pause(&self) -> Result<(), String>;
    /// Resuming a running VM succeeds.
    fn resume(&self) -> Result<(), String>;
}

impl VmControl for vmm::vm::VmHandle {
    fn pause(&self) -> Result<(), String> {
        vmm::vm::VmHandle::pause(self).map_err(|e| e.to_string())
    }

    fn resume(&self) -> Result<(), String> {
        vmm::vm::VmHandle::resume(self);
        Ok(())
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
        }
    }

    /// Answers one request. Never panics on client input.
    pub fn handle(&mut self, request: &Request) -> Response {
        match self.route(request) {
            Ok(response) => response,
            Err(message) => Response::bad_request(&message),
        }
    }

    fn started(&self) -> bool {
        self.state != InstanceState::NotStarted
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
        Ok(Response::no_content())
    }

    fn route(&mut self, request: &Request) -> Result<Response, String> {
        let segments: Vec<&str> = request.path.trim_end_matches('/').split('/').skip(1).collect();
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
            (Get, ["balloon"]) => match self.resources.balloon() {
                Some(balloon) => Ok(Response::json(200, balloon)),
                None => Err("Invalid request: no balloon device is configured".into()),
            },
            (Put, ["entropy"]) => self.configure(body, |r, v: EntropyDevice| r.set_entropy(v)),
            (Get, ["vm", "config"]) => Ok(Response::json(200, &self.resources.export())),
            (Put, ["actions"]) => {
                let action: InstanceActionInfo = parse_body(body)?;
                match action.action_type {
                    ActionType::InstanceStart => self.start(),
                    ActionType::SendCtrlAltDel if !self.started() => Err(NOT_SUPPORTED_BEFORE_START.into()),
                    ActionType::SendCtrlAltDel => Err(not_yet("SendCtrlAltDel")),
                    ActionType::FlushMetrics => Err(not_yet("FlushMetrics (metrics)")),
                }
            }
            (Patch, ["vm"]) => {
                let VmState { state } = parse_body(body)?;
                let Some(vm) = &self.vm else {
                    return Err(NOT_SUPPORTED_BEFORE_START.into());
                };
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
            (Patch, ["drives", _]) | (Patch, ["network-interfaces", _]) if !self.started() => {
                Err(NOT_SUPPORTED_BEFORE_START.into())
            }
            (Patch, ["drives", _]) => Err(not_yet("Updating a drive after start (PATCH /drives)")),
            (Patch, ["network-interfaces", _]) => {
                Err(not_yet("Updating rate limiters (PATCH /network-interfaces)"))
            }
            (Patch, ["balloon"]) | (Get, ["balloon", "statistics"]) | (Patch, ["balloon", "statistics"]) => {
                Err(not_yet("Balloon updates and statistics through the API"))
            }
            (Put, ["snapshot", "create"]) | (Put, ["snapshot", "load"]) => Err(not_yet("Snapshots")),
            (Put, ["logger"]) => Err(not_yet("The logger endpoint (use --log-level)")),
            (Put, ["metrics"]) => Err(not_yet("Metrics")),
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

    fn start(&mut self) -> Result<Response, String> {
        if self.started() {
            return Err(NOT_SUPPORTED_AFTER_START.into());
        }
        let config =
            self.resources.to_vm_config(self.serial.clone(), self.transport).map_err(|e| e.to_string())?;
        let vm = (self.starter)(config).map_err(|e| format!("Cannot start the microVM: {e}"))?;
        self.vm = Some(vm);
        self.state = InstanceState::Running;
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

/// Serves the API on `listener` until the process exits: one thread per connection (at most
/// [`MAX_CONNECTIONS`]), requests answered in order, the state shared under a lock.
pub fn serve(listener: UnixListener, api: Arc<Mutex<Api>>) {
    let connections = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            connections.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("API: too many connections; closing a new one");
            continue;
        }
        let (api, connections) = (api.clone(), connections.clone());
        let spawned = std::thread::Builder::new().name("kestrel-api-conn".into()).spawn(move || {
            serve_connection(stream, &api);
            connections.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            tracing::warn!("API: cannot start a connection thread");
        }
    }
}

fn serve_connection(mut stream: UnixStream, api: &Mutex<Api>) {
    let mut buffer = Vec::new();
    loop {
        // Waiting for a request has no time limit (clients keep connections open); once it has
        // started, the rest must arrive within the transport's timeout.
        let _ = stream.set_read_timeout(None);
        let (response, close) = match read_request(&mut stream, &mut buffer) {
            Ok(request) => {
                tracing::debug!("API: {} {}", request.method.as_str(), request.path);
                let response = match api.lock() {
                    Ok(mut api) => api.handle(&request),
                    Err(_) => Response::error(500, "the API state is unavailable"),
                };
                (response, request.close)
            }
            Err(HttpError::Closed | HttpError::Io(_)) => return,
            Err(e) => (Response::bad_request(&e.to_string()), true),
        };
        if stream.write_all(&response.to_bytes(close)).is_err() || close {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VM that records the pause and resume calls it gets.
    struct FakeVm(Arc<Mutex<Vec<&'static str>>>);

    impl VmControl for FakeVm {
        fn pause(&self) -> Result<(), String> {
            self.0.lock().unwrap().push("pause");
            Ok(())
        }

        fn resume(&self) -> Result<(), String> {
            self.0.lock().unwrap().push("resume");
            Ok(())
        }
    }

    fn api() -> (Api, Arc<Mutex<Vec<VmConfig>>>) {
        api_with_calls(Arc::default())
    }

    fn api_with_calls(calls: Arc<Mutex<Vec<&'static str>>>) -> (Api, Arc<Mutex<Vec<VmConfig>>>) {
        let started = Arc::new(Mutex::new(Vec::new()));
        let seen = started.clone();
        let starter: Starter = Box::new(move |config| {
            seen.lock().unwrap().push(config);
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
            (Method::Put, "/snapshot/create", "{}".into(), "Snapshots is not supported by Kestrel yet"),
            (Method::Put, "/logger", "{}".into(), "not supported by Kestrel yet"),
            (Method::Put, "/metrics", "{}".into(), "not supported by Kestrel yet"),
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
