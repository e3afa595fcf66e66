//! The API end to end without KVM: the router, the controller and the metrics writer wired as
//! `kestrel vmm` wires them, with a fake engine behind the controller.

mod tests {
    use std::sync::mpsc::{self, TryRecvError};
    use std::sync::{Arc, Mutex};

    use api::http::{Method, Request, Response};
    use api::router::{RequestCounter, Router};
    use model::api::BalloonStats;
    use model::config::{SerialConfig, VirtioTransport, VmConfig};
    use model::control::{ControlError, Dispatch, VmmRequest, VmmResponse};
    use model::resources::{DriveUpdate, NetUpdate};
    use model::{NOT_SUPPORTED_AFTER_START, NOT_SUPPORTED_BEFORE_START};
    use vmm::control::{
        channel, ControlMessage, ControlSender, Controller, ControllerSettings, EngineError, Launch,
        Launcher, LoggerHook, MetricsControl, VmControl,
    };
    use vmm::snapshot::SnapshotRequest;

    use crate::metrics::{MetricsHandle, MetricsWriter};

    /// A VM that records the calls it gets.
    struct FakeVm(Arc<Mutex<Vec<String>>>);

    impl FakeVm {
        fn record(&self, call: String) {
            self.0.lock().unwrap().push(call);
        }
    }

    impl VmControl for FakeVm {
        fn pause(&self) -> Result<(), EngineError> {
            self.record("pause".into());
            Ok(())
        }

        fn resume(&self) -> Result<(), EngineError> {
            self.record("resume".into());
            Ok(())
        }

        fn send_ctrl_alt_del(&self) -> Result<(), EngineError> {
            self.record("ctrl-alt-del".into());
            Ok(())
        }

        fn send_power_button(&self) -> Result<(), EngineError> {
            self.record("power-button".into());
            Ok(())
        }

        /// Refuses more than 1 GiB, as a device in a 1 GiB guest would.
        fn update_balloon(&self, amount_mib: u32) -> Result<(), EngineError> {
            if amount_mib > 1024 {
                return Err("too large".into());
            }
            self.record(format!("balloon {amount_mib}"));
            Ok(())
        }

        fn balloon_statistics(&self) -> Result<BalloonStats, EngineError> {
            self.record("statistics".into());
            Ok(BalloonStats { target_mib: 64, free_memory: Some(1 << 20), ..BalloonStats::default() })
        }

        /// Refuses 0, as a device with statistics does.
        fn update_balloon_stats_interval(&self, seconds: u16) -> Result<(), EngineError> {
            if seconds == 0 {
                return Err("cannot turn them off".into());
            }
            self.record(format!("interval {seconds}"));
            Ok(())
        }

        /// Refuses directories, as a disk does.
        fn update_drive(&self, update: &DriveUpdate) -> Result<(), EngineError> {
            if update.path.as_ref().is_some_and(|p| p.is_dir()) {
                return Err("not a disk".into());
            }
            let path = update.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
            let limit = update
                .rate_limiter
                .and_then(|l| l.ops)
                .map(|o| format!(" ops {}", o.size))
                .unwrap_or_default();
            self.record(format!("drive {} {path}{limit} {:?}", update.index, update.disk.format));
            Ok(())
        }

        fn update_net(&self, update: &NetUpdate) -> Result<(), EngineError> {
            let size = |l: Option<model::api::RateLimiterConfig>| l.and_then(|l| l.bandwidth).map(|b| b.size);
            self.record(format!(
                "net {} rx {:?} tx {:?}",
                update.index,
                size(update.rx_rate_limiter),
                size(update.tx_rate_limiter)
            ));
            Ok(())
        }

        fn snapshot(&self, _request: &SnapshotRequest) -> Result<(), EngineError> {
            self.record("snapshot".into());
            Ok(())
        }
    }

    /// Builds fake VMs, recording the configurations booted and the restores; or fails.
    struct FakeLauncher {
        calls: Arc<Mutex<Vec<String>>>,
        started: Arc<Mutex<Vec<VmConfig>>>,
        fail: bool,
    }

    impl Launcher for FakeLauncher {
        fn launch(&mut self, launch: Launch) -> Result<Arc<dyn VmControl>, EngineError> {
            if self.fail {
                return Err("no KVM".into());
            }
            match launch {
                Launch::Boot(config) => self.started.lock().unwrap().push(config),
                Launch::Restore { options, .. } => {
                    let mut calls = self.calls.lock().unwrap();
                    calls.push("restore".into());
                    for (id, path) in &options.drive_paths {
                        calls.push(format!("drive {id} from {}", path.display()));
                    }
                }
            }
            Ok(Arc::new(FakeVm(self.calls.clone())))
        }
    }

    /// The controller called directly on the test's thread; a snapshot's report is waited for.
    /// Holds the channel's API side, as the API thread does, so the controller sees it open.
    struct Direct {
        controller: Mutex<Controller<FakeLauncher>>,
        _api_side: ControlSender,
    }

    impl Dispatch for Direct {
        fn dispatch(&self, request: VmmRequest) -> Result<VmmResponse, ControlError> {
            let mut controller = self.controller.lock().unwrap();
            let (reply, answer) = mpsc::channel();
            controller.handle_message(ControlMessage::Request(request, reply));
            loop {
                match answer.try_recv() {
                    Ok(answer) => return answer,
                    Err(TryRecvError::Empty) if controller.wait_and_handle() => {}
                    Err(_) => return Err(ControlError::VmmGone),
                }
            }
        }
    }

    /// The router over a controller over a fake engine, and the metrics both count into.
    struct Api {
        router: Router,
        metrics: Arc<MetricsWriter>,
    }

    impl Api {
        fn handle(&mut self, request: &Request) -> Response {
            self.router.handle(request)
        }

        fn metrics(&self) -> Arc<MetricsWriter> {
            self.metrics.clone()
        }
    }

    fn build(launcher: FakeLauncher, logger: Option<LoggerHook>) -> Api {
        let metrics = MetricsWriter::new();
        let settings = ControllerSettings {
            id: "test".into(),
            serial: SerialConfig::None,
            transport: VirtioTransport::Mmio,
            metrics: Some(Arc::new(MetricsHandle(metrics.clone())) as Arc<dyn MetricsControl>),
            logger,
            mmds_size_limit: vmm::control::DEFAULT_MMDS_SIZE_LIMIT,
        };
        let (sender, receiver) = channel().unwrap();
        let controller = Controller::new(settings, launcher, receiver);
        let router = Router::new(
            Arc::new(Direct { controller: Mutex::new(controller), _api_side: sender }),
            Some(metrics.clone() as Arc<dyn RequestCounter>),
        );
        Api { router, metrics }
    }

    fn api() -> (Api, Arc<Mutex<Vec<VmConfig>>>) {
        api_with_calls(Arc::default())
    }

    fn api_with_calls(calls: Arc<Mutex<Vec<String>>>) -> (Api, Arc<Mutex<Vec<VmConfig>>>) {
        let started = Arc::new(Mutex::new(Vec::new()));
        let launcher = FakeLauncher { calls, started: started.clone(), fail: false };
        (build(launcher, None), started)
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
            r#"{{"drive_id": "rootfs", "path_on_host": "{disk}", "is_root_device": true, "is_read_only": false, "cache_type": "Writeback", "io_engine": "Async",
                "rate_limiter": {{"bandwidth": {{"size": 1048576, "refill_time": 100}}, "ops": {{"size": 1000, "one_time_burst": 100, "refill_time": 1000}}}},
                "x-kestrel": {{"format": "qcow2", "cache": "none", "allow_backing": false, "num_queues": 2}}}}"#
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
        // Firecracker's GET /vm/config shows the drive's cache type and engine even when the
        // request left them out; Kestrel's additions come back as given.
        assert_eq!(
            (&config["drives"][0]["cache_type"], &config["drives"][0]["io_engine"]),
            (&"Writeback".into(), &"Async".into())
        );
        assert_eq!(config["drives"][1]["x-kestrel"]["format"], "qcow2");
        assert_eq!(config["drives"][1]["rate_limiter"]["ops"]["one_time_burst"], 100);
        assert_eq!(config["network-interfaces"][0]["host_dev_name"], "tap0");

        assert_eq!(call(&mut api, Method::Put, "/actions", r#"{"action_type": "InstanceStart"}"#).0, 204);
        let configs = started.lock().unwrap();
        let config = &configs[0];
        assert_eq!((config.vcpus, config.memory_bytes), (4, 1024 << 20));
        assert!(config.cmdline.ends_with("pci=off root=/dev/vda rw"));
        use model::config::VirtioConfig;
        use model::config::{CacheMode, ImageFormat, IoEngine};
        let VirtioConfig::Block(first) = &config.virtio[0] else { panic!("{:?}", config.virtio) };
        assert_eq!((first.id.as_deref(), first.read_only), (Some("rootfs"), false));
        assert_eq!(
            (first.format, first.cache, first.allow_backing, first.num_queues, first.io_engine),
            (ImageFormat::Qcow2, CacheMode::None, false, 2, IoEngine::Async)
        );
        assert_eq!(first.rate_limiter.and_then(|l| l.bandwidth).map(|b| b.size), Some(1 << 20));
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
    fn send_power_button_reaches_the_running_vm_and_is_refused_before_the_start() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (mut api, _) = api_with_calls(calls.clone());
        let action = r#"{"action_type": "SendPowerButton"}"#;
        assert_eq!(fault(&mut api, Method::Put, "/actions", action), NOT_SUPPORTED_BEFORE_START);
        let _kernel = start(&mut api);
        assert_eq!(call(&mut api, Method::Put, "/actions", action).0, 204);
        // Paused, the press is still taken (the guest sees it on resume).
        assert_eq!(call(&mut api, Method::Patch, "/vm", r#"{"state": "Paused"}"#).0, 204);
        assert_eq!(call(&mut api, Method::Put, "/actions", action).0, 204);
        assert_eq!(*calls.lock().unwrap(), ["power-button", "pause", "power-button"]);
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
                r#"{{"drive_id": "{id}", "path_on_host": "{old}", "is_root_device": {root}, "is_read_only": false, "x-kestrel": {{"format": "qcow2"}}}}"#
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
        let message = fault(&mut api, Method::Patch, "/drives/rootfs", &refused);
        assert!(message.contains("it is a directory, not a regular file or a block device"), "{message}");
        assert!(fault(
            &mut api,
            Method::Patch,
            "/drives/other",
            r#"{"drive_id": "other", "path_on_host": "/x"}"#
        )
        .contains("no drive other is configured"));
        assert!(fault(&mut api, Method::Patch, "/drives/data", r#"{"drive_id": "data", "x": 1}"#)
            .contains("unknown field"));
        // A rate limiter alone changes the limiter; the configuration shows it.
        let limit = r#"{"drive_id": "rootfs", "rate_limiter": {"ops": {"size": 50, "refill_time": 1000}}}"#;
        assert_eq!(call(&mut api, Method::Patch, "/drives/rootfs", limit).0, 204);
        let config = call(&mut api, Method::Get, "/vm/config", "").1;
        assert_eq!(config["drives"][1]["rate_limiter"]["ops"]["size"], 50);
        let bad_limit = r#"{"drive_id": "rootfs", "rate_limiter": {"ops": {"size": 50, "refill_time": 0}}}"#;
        assert!(
            fault(&mut api, Method::Patch, "/drives/rootfs", bad_limit).contains("refill_time must not be 0")
        );
        // The drive keeps its format: the new file is opened as qcow2.
        assert_eq!(
            *calls.lock().unwrap(),
            [format!("drive 1 {new} Qcow2"), "drive 0  ops 50 Qcow2".to_owned()],
            "the root drive is the VM's disk 0"
        );
    }

    #[test]
    fn a_network_interface_gets_new_rate_limiters_after_start() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (mut api, _) = api_with_calls(calls.clone());
        for (id, tap) in [("eth0", "tap0"), ("eth1", "tap1")] {
            let net = format!(
                r#"{{"iface_id": "{id}", "host_dev_name": "{tap}", "rx_rate_limiter": {{"ops": {{"size": 100, "refill_time": 1000}}}}}}"#
            );
            assert_eq!(call(&mut api, Method::Put, &format!("/network-interfaces/{id}"), &net).0, 204);
        }
        let update =
            r#"{"iface_id": "eth1", "tx_rate_limiter": {"bandwidth": {"size": 4096, "refill_time": 100}}}"#;
        assert_eq!(
            fault(&mut api, Method::Patch, "/network-interfaces/eth1", update),
            NOT_SUPPORTED_BEFORE_START
        );
        let _kernel = start(&mut api);

        assert_eq!(call(&mut api, Method::Patch, "/network-interfaces/eth1", update).0, 204);
        let config = call(&mut api, Method::Get, "/vm/config", "").1;
        let eth1 = &config["network-interfaces"][1];
        assert_eq!(eth1["tx_rate_limiter"]["bandwidth"]["size"], 4096);
        assert_eq!(eth1["rx_rate_limiter"]["ops"]["size"], 100, "the limiter left out is kept");
        assert!(config["network-interfaces"][0].get("tx_rate_limiter").is_none());
        for (path, body, expected) in [
            ("/network-interfaces/eth2", r#"{"iface_id": "eth2"}"#, "no network interface eth2"),
            ("/network-interfaces/eth0", r#"{"iface_id": "eth1"}"#, "does not match"),
            ("/network-interfaces/eth0", r#"{"iface_id": "eth0", "mtu": 1500}"#, "unknown field"),
            (
                "/network-interfaces/eth0",
                r#"{"iface_id": "eth0", "rx_rate_limiter": {"ops": {"size": 1, "refill_time": 0}}}"#,
                "Invalid rx_rate_limiter.ops: refill_time must not be 0",
            ),
        ] {
            let message = fault(&mut api, Method::Patch, path, body);
            assert!(message.contains(expected), "{body}: {message}");
        }
        assert_eq!(*calls.lock().unwrap(), ["net 1 rx None tx Some(4096)"]);
    }

    #[test]
    fn the_mmds_store_is_put_patched_and_read_before_and_after_the_start() {
        let (mut api, _) = api();
        assert_eq!(call(&mut api, Method::Get, "/mmds", ""), (200, serde_json::json!({})));
        assert_eq!(
            fault(&mut api, Method::Patch, "/mmds", r#"{"a": 1}"#),
            "The MMDS data store is not initialized."
        );
        let data = r#"{"latest": {"meta-data": {"ami-id": "ami-1", "old": "x"}}}"#;
        assert_eq!(call(&mut api, Method::Put, "/mmds", data).0, 204);
        let patch = r#"{"latest": {"meta-data": {"old": null, "new": "y"}}}"#;
        assert_eq!(call(&mut api, Method::Patch, "/mmds", patch).0, 204);
        let expected = serde_json::json!({"latest": {"meta-data": {"ami-id": "ami-1", "new": "y"}}});
        assert_eq!(call(&mut api, Method::Get, "/mmds", ""), (200, expected.clone()));
        // Over --mmds-size-limit (51,200 bytes of JSON): Firecracker's 413, and nothing changes.
        let huge = format!(r#"{{"blob": "{}"}}"#, "x".repeat(vmm::control::DEFAULT_MMDS_SIZE_LIMIT));
        for method in [Method::Put, Method::Patch] {
            let (status, body) = call(&mut api, method, "/mmds", &huge);
            assert_eq!(
                (status, body["fault_message"].as_str()),
                (413, Some("The MMDS patch request doesn't fit."))
            );
        }
        assert_eq!(call(&mut api, Method::Get, "/mmds", "").1, expected);
        assert!(fault(&mut api, Method::Put, "/mmds", "{").contains("Invalid request body"));

        let _kernel = start(&mut api);
        assert_eq!(call(&mut api, Method::Patch, "/mmds", r#"{"after": "start"}"#).0, 204);
        assert_eq!(call(&mut api, Method::Get, "/mmds", "").1["after"], "start");
        assert_eq!(call(&mut api, Method::Put, "/mmds", r#"{"x": 1}"#).0, 204);
        assert_eq!(call(&mut api, Method::Get, "/mmds", "").1, serde_json::json!({"x": 1}));
    }

    #[test]
    fn mmds_config_names_configured_interfaces_and_reaches_their_cards() {
        let (mut api, started) = api();
        for (body, expected) in [
            (r#"{"network_interfaces": ["eth0"]}"#, "does not correspond to any existing network interface"),
            (r#"{"network_interfaces": []}"#, "is empty"),
            (r#"{"network_interfaces": ["eth0"], "version": "V3"}"#, "unknown variant"),
            (r#"{"network_interfaces": ["eth0"], "bogus": 1}"#, "unknown field"),
        ] {
            let message = fault(&mut api, Method::Put, "/mmds/config", body);
            assert!(message.contains(expected), "{body}: {message}");
        }
        for (id, tap) in [("eth0", "tap0"), ("eth1", "tap1")] {
            let net = format!(r#"{{"iface_id": "{id}", "host_dev_name": "{tap}"}}"#);
            assert_eq!(call(&mut api, Method::Put, &format!("/network-interfaces/{id}"), &net).0, 204);
        }
        for address in ["10.0.0.1", "169.254.0.1", "169.254.255.7"] {
            let body = format!(r#"{{"network_interfaces": ["eth1"], "ipv4_address": "{address}"}}"#);
            assert_eq!(
                fault(&mut api, Method::Put, "/mmds/config", &body),
                "The MMDS IPv4 address is not link local."
            );
        }
        let body = r#"{"version": "V2", "network_interfaces": ["eth1"], "ipv4_address": "169.254.170.2", "imds_compat": true}"#;
        assert_eq!(call(&mut api, Method::Put, "/mmds/config", body).0, 204);
        let shown = call(&mut api, Method::Get, "/vm/config", "").1;
        assert_eq!(
            shown["mmds-config"],
            serde_json::json!({"version": "V2", "network_interfaces": ["eth1"], "ipv4_address": "169.254.170.2", "imds_compat": true})
        );

        let _kernel = start(&mut api);
        let configs = started.lock().unwrap();
        let nets: Vec<_> = configs[0]
            .virtio
            .iter()
            .filter_map(|d| match d {
                model::config::VirtioConfig::Net(net) => Some(net),
                _ => None,
            })
            .collect();
        assert!(nets[0].mmds.is_none(), "eth0 was not named");
        let mmds = nets[1].mmds.as_ref().expect("eth1 serves MMDS");
        assert_eq!(mmds.address, std::net::Ipv4Addr::new(169, 254, 170, 2));
        assert_eq!((mmds.version, mmds.imds_compat), (model::api::MmdsVersion::V2, true));
        drop(configs);
        assert_eq!(fault(&mut api, Method::Put, "/mmds/config", body), NOT_SUPPORTED_AFTER_START);
        // The cards read the store the API fills.
        assert_eq!(call(&mut api, Method::Put, "/mmds", r#"{"k": "v"}"#).0, 204);
        let configs = started.lock().unwrap();
        let Some(model::config::VirtioConfig::Net(net)) = configs[0]
            .virtio
            .iter()
            .rev()
            .find(|d| matches!(d, model::config::VirtioConfig::Net(n) if n.mmds.is_some()))
        else {
            panic!()
        };
        assert_eq!(net.mmds.as_ref().unwrap().store.get(), serde_json::json!({"k": "v"}));
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
    fn a_snapshot_load_hands_the_clients_drive_paths_to_the_restore() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (mut api, _) = api_with_calls(calls.clone());
        let load = r#"{"snapshot_path": "/s", "mem_file_path": "/m", "drive_overrides": [
            {"drive_id": "rootfs", "path_on_host": "/images/root.img"},
            {"drive_id": "data", "path_on_host": "/images/data.img"}]}"#;
        assert_eq!(call(&mut api, Method::Put, "/snapshot/load", load).0, 204);
        assert_eq!(
            *calls.lock().unwrap(),
            ["restore", "drive data from /images/data.img", "drive rootfs from /images/root.img"]
        );
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
            (Method::Put, "/drives/a", format!(r#"{{"drive_id": "a", "path_on_host": "{path}", "is_root_device": false, "is_read_only": false, "io_engine": "Uring"}}"#), "unknown variant `Uring`, expected `Sync` or `Async`"),
            (Method::Put, "/drives/a", format!(r#"{{"drive_id": "a", "path_on_host": "{path}", "is_root_device": false, "is_read_only": false, "cache_type": "Unsafe", "x-kestrel": {{"cache": "none"}}}}"#), "disagree"),
            (Method::Put, "/drives/a", format!(r#"{{"drive_id": "a", "path_on_host": "{path}", "is_root_device": false, "is_read_only": false, "x-kestrel": {{"format": "vmdk"}}}}"#), "unknown variant `vmdk`, expected `raw` or `qcow2`"),
            (Method::Put, "/drives/a", format!(r#"{{"drive_id": "a", "path_on_host": "{path}", "is_root_device": false, "is_read_only": false, "x-kestrel": {{"num_queues": 17}}}}"#), "num_queues must be 1 to 16, got 17"),
            (Method::Put, "/drives/a", format!(r#"{{"drive_id": "a", "path_on_host": "{path}", "is_root_device": false, "is_read_only": false, "rate_limiter": {{"ops": {{"size": 5, "refill_time": 0}}}}}}"#), "Invalid rate_limiter.ops: refill_time must not be 0"),
            (Method::Put, "/drives/a", format!(r#"{{"drive_id": "a", "path_on_host": "{path}", "is_root_device": false, "is_read_only": false, "rate_limiter": {{"bandwidth": {{"size": 5}}}}}}"#), "missing field `refill_time`"),
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
            (Method::Put, "/snapshot/load", r#"{"snapshot_path": "/s", "mem_file_path": "/m", "drive_overrides": [{"drive_id": "a"}]}"#.into(), "missing field `path_on_host`"),
            (Method::Put, "/snapshot/load", r#"{"snapshot_path": "/s", "mem_file_path": "/m", "drive_overrides": [{"drive_id": "a", "path_on_host": "/d", "x": 1}]}"#.into(), "unknown field `x`"),
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
        let applied = Arc::new(Mutex::new(Vec::new()));
        let seen = applied.clone();
        // As `kestrel vmm`'s hook: the request's file opened, then the settings applied.
        let hook: LoggerHook = Box::new(move |request| {
            let settings = api::logger::LoggerSettings::open(request)?;
            if settings.module.as_deref() == Some("refused") {
                return Err("the control refused".into());
            }
            seen.lock().unwrap().push((settings.level, settings.show_level, settings.file.is_some()));
            Ok(())
        });
        let launcher = FakeLauncher { calls: Arc::default(), started: Arc::default(), fail: false };
        let mut api = build(launcher, Some(hook));
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
        let launcher = FakeLauncher { calls: Arc::default(), started: Arc::default(), fail: true };
        let mut api = build(launcher, None);
        let kernel = kernel();
        let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.path().display());
        assert_eq!(call(&mut api, Method::Put, "/boot-source", &boot).0, 204);
        let message = fault(&mut api, Method::Put, "/actions", r#"{"action_type": "InstanceStart"}"#);
        assert_eq!(message, "Cannot start the microVM: no KVM");
        assert_eq!(call(&mut api, Method::Put, "/boot-source", &boot).0, 204);
    }
}
