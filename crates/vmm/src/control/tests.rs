//! The controller with a fake engine: snapshots and drive updates run off the loop while other
//! requests are answered, and conflicting requests are refused until they report back.

use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};

use model::api::{
    ActionType, BalloonStats, BootSource, InstanceState, Operation, SnapshotCreateParams, SnapshotType,
    VmStateValue,
};
use model::config::{SerialConfig, VirtioTransport};
use model::control::{ControlError, Dispatch, VmmRequest, VmmResponse};

use super::*;

/// What the gate says to panic instead of answering.
const PANIC: &str = "panic";

/// A VM whose snapshots and drive updates wait for the test's word and then succeed or fail as
/// told (or panic, told [`PANIC`]).
struct GatedVm {
    gate: Mutex<Receiver<Result<(), String>>>,
}

impl VmControl for GatedVm {
    fn pause(&self) -> Result<(), EngineError> {
        Ok(())
    }
    fn resume(&self) -> Result<(), EngineError> {
        Ok(())
    }
    fn snapshot(&self, _request: &SnapshotRequest) -> Result<(), EngineError> {
        self.wait_at_gate()
    }
    fn send_ctrl_alt_del(&self) -> Result<(), EngineError> {
        Ok(())
    }
    fn send_power_button(&self) -> Result<(), EngineError> {
        Ok(())
    }
    fn update_balloon(&self, _amount_mib: u32) -> Result<(), EngineError> {
        Ok(())
    }
    fn balloon_statistics(&self) -> Result<BalloonStats, EngineError> {
        Ok(BalloonStats::default())
    }
    fn update_balloon_stats_interval(&self, _seconds: u16) -> Result<(), EngineError> {
        Ok(())
    }
    fn update_drive(&self, _update: &DriveUpdate) -> Result<(), EngineError> {
        self.wait_at_gate()
    }
    fn update_net(&self, _update: &super::NetUpdate) -> Result<(), EngineError> {
        Ok(())
    }
}

impl GatedVm {
    fn wait_at_gate(&self) -> Result<(), EngineError> {
        let word = self.gate.lock().unwrap().recv().map_err(|_| "the test ended")?;
        if word.as_ref().err().map(String::as_str) == Some(PANIC) {
            panic!("the gate said so");
        }
        Ok(word?)
    }
}

struct GatedLauncher(Option<Arc<GatedVm>>);

impl Launcher for GatedLauncher {
    fn launch(&mut self, _launch: Launch) -> Result<Arc<dyn VmControl>, EngineError> {
        Ok(self.0.take().ok_or("launched twice")?)
    }
}

/// A started, paused VM's controller, its sender, and the gate its snapshots wait on.
fn paused_vm() -> (Controller<GatedLauncher>, ControlSender, mpsc::Sender<Result<(), String>>) {
    let (open, gate) = mpsc::channel();
    let vm = Arc::new(GatedVm { gate: Mutex::new(gate) });
    let (sender, receiver) = channel().unwrap();
    let settings = ControllerSettings {
        id: "t".into(),
        serial: SerialConfig::None,
        transport: VirtioTransport::Mmio,
        metrics: None,
        logger: None,
        mmds_size_limit: super::DEFAULT_MMDS_SIZE_LIMIT,
    };
    let mut controller = Controller::new(settings, GatedLauncher(Some(vm)), receiver);
    let kernel = tempfile_path();
    let boot = BootSource { kernel_image_path: kernel.clone(), initrd_path: None, boot_args: None };
    let drive = model::api::Drive {
        drive_id: "rootfs".into(),
        is_root_device: true,
        partuuid: None,
        cache_type: None,
        is_read_only: Some(false),
        path_on_host: Some(kernel),
        rate_limiter: None,
        io_engine: None,
        socket: None,
        kestrel: None,
    };
    for request in [
        VmmRequest::PutBootSource(boot),
        VmmRequest::PutDrive { id: "rootfs".into(), drive: Box::new(drive) },
        VmmRequest::Action(ActionType::InstanceStart),
        VmmRequest::PatchVm(VmStateValue::Paused),
    ] {
        assert!(matches!(answer_now(&mut controller, request), Ok(VmmResponse::NoContent)));
    }
    (controller, sender, open)
}

/// A file that exists for the whole test run (the kernel only has to be readable).
fn tempfile_path() -> String {
    std::env::current_exe().unwrap().to_str().unwrap().to_owned()
}

/// Hands `request` to the controller and takes its answer, which must come at once.
fn answer_now(
    controller: &mut Controller<GatedLauncher>,
    request: VmmRequest,
) -> Result<VmmResponse, ControlError> {
    let (reply, answer) = mpsc::channel();
    controller.handle_message(ControlMessage::Request(request, reply));
    answer.try_recv().expect("answered at once")
}

fn snapshot_request() -> VmmRequest {
    VmmRequest::CreateSnapshot(SnapshotCreateParams {
        mem_file_path: "/m".into(),
        snapshot_path: "/s".into(),
        snapshot_type: SnapshotType::Full,
    })
}

fn operation(controller: &mut Controller<GatedLauncher>) -> Option<Operation> {
    match answer_now(controller, VmmRequest::GetInstanceInfo) {
        Ok(VmmResponse::InstanceInfo(info)) => {
            assert_eq!(info.state, InstanceState::Paused);
            info.kestrel.operation_in_progress
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn other_requests_are_answered_while_a_snapshot_runs_and_conflicting_ones_refused() {
    let (mut controller, sender, open) = paused_vm();
    let client = sender.clone();
    let snapshot = std::thread::spawn(move || client.dispatch(snapshot_request()));
    // The snapshot request arrives and its thread starts (and waits at the gate).
    assert!(controller.wait_and_handle());
    assert_eq!(operation(&mut controller), Some(Operation::SnapshotCreate));
    assert!(answer_now(&mut controller, VmmRequest::GetMachineConfig).is_ok());
    assert!(answer_now(&mut controller, VmmRequest::GetVmConfig).is_ok());
    for conflicting in [
        snapshot_request(),
        VmmRequest::PatchVm(VmStateValue::Resumed),
        VmmRequest::PatchVm(VmStateValue::Paused),
        VmmRequest::Action(ActionType::SendCtrlAltDel),
        VmmRequest::Action(ActionType::SendPowerButton),
        VmmRequest::PatchBalloon(model::api::BalloonUpdate { amount_mib: 1 }),
        VmmRequest::PatchBalloonStats(model::api::BalloonStatsUpdate { stats_polling_interval_s: 1 }),
        VmmRequest::PatchDrive {
            id: "rootfs".into(),
            update: model::api::PartialDrive {
                drive_id: "rootfs".into(),
                path_on_host: Some("/d".into()),
                rate_limiter: None,
            },
        },
    ] {
        let error = answer_now(&mut controller, conflicting).unwrap_err();
        assert!(matches!(error, ControlError::Busy { operation: Operation::SnapshotCreate }), "{error}");
    }
    assert!(!snapshot.is_finished(), "the client waits for its snapshot");

    open.send(Ok(())).unwrap();
    // The snapshot thread's report arrives through the channel, and the client gets its answer.
    assert!(controller.wait_and_handle());
    assert!(matches!(snapshot.join().unwrap(), Ok(VmmResponse::NoContent)));
    assert_eq!(operation(&mut controller), None);
    assert!(answer_now(&mut controller, VmmRequest::PatchVm(VmStateValue::Resumed)).is_ok());
}

#[test]
fn a_failed_snapshot_is_reported_and_ends_the_busy_state() {
    let (mut controller, sender, open) = paused_vm();
    let snapshot = std::thread::spawn(move || sender.dispatch(snapshot_request()));
    assert!(controller.wait_and_handle());
    open.send(Err("disk full".into())).unwrap();
    assert!(controller.wait_and_handle());
    let error = snapshot.join().unwrap().unwrap_err();
    assert_eq!(error.to_string(), "Cannot create the snapshot: disk full");
    assert_eq!(operation(&mut controller), None);
}

#[test]
fn the_event_loop_side_drains_every_queued_request_on_one_wake_up() {
    let (mut controller, sender, _open) = paused_vm();
    let answers: Vec<_> = (0..3)
        .map(|_| {
            let (reply, answer) = mpsc::channel();
            sender.send(ControlMessage::Request(VmmRequest::GetInstanceInfo, reply)).unwrap();
            answer
        })
        .collect();
    // The wake-up fd is readable, as the event loop's epoll sees it.
    let mut poll = libc::pollfd { fd: controller.wake_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd and its count; poll only writes `revents`.
    assert_eq!(unsafe { libc::poll(&mut poll, 1, 0) }, 1);
    assert_eq!(controller.handle_pending(), Pending::Handled);
    for answer in answers {
        assert!(matches!(answer.try_recv(), Ok(Ok(VmmResponse::InstanceInfo(_)))));
    }
    // And once drained, it is not readable until the next request.
    // SAFETY: as above.
    assert_eq!(unsafe { libc::poll(&mut poll, 1, 0) }, 0);
}

#[test]
fn a_gone_controller_is_a_clear_error() {
    let (controller, sender, _open) = paused_vm();
    drop(controller);
    assert!(matches!(sender.dispatch(VmmRequest::GetInstanceInfo), Err(ControlError::VmmGone)));
}

#[test]
fn the_controller_sees_when_the_api_is_gone() {
    let (mut controller, sender, _open) = paused_vm();
    let client = sender.clone();
    let asked = std::thread::spawn(move || client.dispatch(VmmRequest::GetMachineConfig));
    assert!(controller.wait_and_handle(), "a request came");
    assert!(asked.join().unwrap().is_ok());
    drop(sender);
    assert!(!controller.wait_and_handle(), "no request can come any more");
}

fn drive_update(path: &str) -> VmmRequest {
    VmmRequest::PatchDrive {
        id: "rootfs".into(),
        update: model::api::PartialDrive {
            drive_id: "rootfs".into(),
            path_on_host: Some(path.into()),
            rate_limiter: None,
        },
    }
}

fn drive_path(controller: &mut Controller<GatedLauncher>) -> serde_json::Value {
    match answer_now(controller, VmmRequest::GetVmConfig) {
        Ok(VmmResponse::FullConfig(config)) => {
            serde_json::to_value(&config).unwrap()["drives"][0]["path_on_host"].clone()
        }
        other => panic!("{other:?}"),
    }
}

/// PATCH /drives syncs the old file before the swap, which takes as long as the guest's unsynced
/// writes: it runs off the loop like a snapshot, and the configuration shows the new path only
/// once it succeeded.
#[test]
fn a_drive_update_runs_off_the_loop_and_is_recorded_when_it_succeeds() {
    let (mut controller, sender, open) = paused_vm();
    let old = drive_path(&mut controller);
    let new = std::env::temp_dir().to_str().unwrap().to_owned() + "/kestrel-control-test-disk";
    std::fs::write(&new, b"disk").unwrap();
    let client = sender.clone();
    let update = drive_update(&new);
    let patch = std::thread::spawn(move || client.dispatch(update));
    assert!(controller.wait_and_handle());
    assert_eq!(operation(&mut controller), Some(Operation::DriveUpdate));
    assert_eq!(drive_path(&mut controller), old, "not recorded before it is done");
    let error = answer_now(&mut controller, snapshot_request()).unwrap_err();
    assert!(matches!(error, ControlError::Busy { operation: Operation::DriveUpdate }), "{error}");
    open.send(Ok(())).unwrap();
    assert!(controller.wait_and_handle());
    assert!(matches!(patch.join().unwrap(), Ok(VmmResponse::NoContent)));
    assert_eq!(drive_path(&mut controller), serde_json::Value::from(new.clone()));

    // A failed update leaves the configuration as it was.
    let client = sender.clone();
    let update = drive_update(old.as_str().unwrap());
    let patch = std::thread::spawn(move || client.dispatch(update));
    assert!(controller.wait_and_handle());
    open.send(Err("cannot sync".into())).unwrap();
    assert!(controller.wait_and_handle());
    assert_eq!(patch.join().unwrap().unwrap_err().to_string(), "Cannot update the drive: cannot sync");
    assert_eq!(drive_path(&mut controller), serde_json::Value::from(new.clone()));
    let _ = std::fs::remove_file(&new);
}

/// A panic on an operation's thread still answers its client and ends the busy state.
#[test]
fn a_panicked_operation_is_answered_and_the_vmm_is_not_left_busy() {
    let (mut controller, sender, open) = paused_vm();
    let snapshot = std::thread::spawn(move || sender.dispatch(snapshot_request()));
    assert!(controller.wait_and_handle());
    open.send(Err(PANIC.into())).unwrap();
    assert!(controller.wait_and_handle());
    let error = snapshot.join().unwrap().unwrap_err();
    assert!(error.to_string().contains("panicked"), "{error}");
    assert_eq!(operation(&mut controller), None);
}

/// A snapshot whose state and memory paths are one file is refused: the second file written
/// would replace the first.
#[test]
fn a_snapshot_into_one_file_for_both_is_refused() {
    let (mut controller, _sender, _open) = paused_vm();
    let same = VmmRequest::CreateSnapshot(SnapshotCreateParams {
        mem_file_path: "/tmp/x".into(),
        snapshot_path: "/tmp/x".into(),
        snapshot_type: SnapshotType::Full,
    });
    assert!(matches!(answer_now(&mut controller, same), Err(ControlError::SamePaths)));
    assert_eq!(operation(&mut controller), None);
}

/// Restores a [`GatedVm`], leaving `config` as the restored configuration.
struct RestoringLauncher {
    vm: Arc<GatedVm>,
    config: VmConfig,
}

impl Launcher for RestoringLauncher {
    fn launch(&mut self, launch: Launch) -> Result<Arc<dyn VmControl>, EngineError> {
        let Launch::Restore { restored, .. } = launch else { return Err("not a restore".into()) };
        restored.set(&self.config);
        Ok(self.vm.clone())
    }
}

/// After `PUT /snapshot/load`, the requests that name the restored VM's devices by ID find them,
/// as after `InstanceStart` (Firecracker allows them).
#[test]
fn a_restored_vms_drives_cards_and_balloon_can_be_patched() {
    use model::config::{BalloonConfig, BlockConfig, NetConfig, VirtioConfig};

    let (open, gate) = mpsc::channel();
    let vm = Arc::new(GatedVm { gate: Mutex::new(gate) });
    let config = VmConfig {
        kernel: "/k".into(),
        initrd: None,
        cmdline: "console=ttyS0 root=/dev/vda rw".into(),
        vcpus: 1,
        memory_bytes: 64 << 20,
        serial: SerialConfig::None,
        virtio: vec![
            VirtioConfig::Block(BlockConfig {
                id: Some("rootfs".into()),
                ..BlockConfig::new(tempfile_path())
            }),
            VirtioConfig::Net(NetConfig { id: Some("eth0".into()), ..NetConfig::new(Some("tap0".into())) }),
            VirtioConfig::Balloon(BalloonConfig {
                target_mib: 0,
                stats_interval: None,
                free_page_reporting: false,
                deflate_on_oom: false,
            }),
        ],
        transport: VirtioTransport::Mmio,
        track_dirty_pages: false,
        host: Default::default(),
        cpu_template: None,
    };
    config.validate().unwrap();
    let (sender, receiver) = channel().unwrap();
    let settings = ControllerSettings {
        id: "t".into(),
        serial: SerialConfig::None,
        transport: VirtioTransport::Mmio,
        metrics: None,
        logger: None,
        mmds_size_limit: super::DEFAULT_MMDS_SIZE_LIMIT,
    };
    let launcher = RestoringLauncher { vm, config: config.clone() };
    let mut controller = Controller::new(settings, launcher, receiver);
    let (reply, answer) = mpsc::channel();
    let load = serde_json::from_str(r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#).unwrap();
    controller.handle_message(ControlMessage::Request(VmmRequest::LoadSnapshot(load), reply));
    assert!(matches!(answer.try_recv().unwrap(), Ok(VmmResponse::NoContent)));

    let limiter: model::rate_limiter::RateLimiterConfig =
        serde_json::from_str(r#"{"ops": {"size": 10, "refill_time": 100}}"#).unwrap();
    let answer = |controller: &mut Controller<RestoringLauncher>, request| {
        let (reply, answer) = mpsc::channel();
        controller.handle_message(ControlMessage::Request(request, reply));
        answer
    };
    let net = VmmRequest::PatchNetworkInterface {
        id: "eth0".into(),
        update: Box::new(model::api::PartialNetworkInterface {
            iface_id: "eth0".into(),
            rx_rate_limiter: None,
            tx_rate_limiter: Some(limiter),
        }),
    };
    assert!(matches!(answer(&mut controller, net).try_recv().unwrap(), Ok(VmmResponse::NoContent)));
    let balloon = VmmRequest::PatchBalloon(model::api::BalloonUpdate { amount_mib: 8 });
    assert!(matches!(answer(&mut controller, balloon).try_recv().unwrap(), Ok(VmmResponse::NoContent)));
    let drive = VmmRequest::PatchDrive {
        id: "rootfs".into(),
        update: model::api::PartialDrive {
            drive_id: "rootfs".into(),
            path_on_host: Some(tempfile_path()),
            rate_limiter: Some(limiter),
        },
    };
    let drive_answer = answer(&mut controller, drive);
    open.send(Ok(())).unwrap();
    assert!(controller.wait_and_handle());
    assert!(matches!(drive_answer.recv().unwrap(), Ok(VmmResponse::NoContent)));
    drop(sender);

    // GET /vm/config shows the restored devices with what the PATCHes changed.
    let exported = match answer(&mut controller, VmmRequest::GetVmConfig).try_recv().unwrap() {
        Ok(VmmResponse::FullConfig(exported)) => exported,
        other => panic!("{other:?}"),
    };
    assert_eq!(exported.drives[0].drive_id, "rootfs");
    assert!(exported.drives[0].is_root_device);
    assert_eq!(exported.drives[0].rate_limiter, Some(limiter));
    assert_eq!(exported.network_interfaces[0].host_dev_name, "tap0");
    assert_eq!(exported.network_interfaces[0].tx_rate_limiter, Some(limiter));
    assert_eq!(exported.balloon.as_ref().map(|b| b.amount_mib), Some(8));
}
