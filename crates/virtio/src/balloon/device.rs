//! The balloon as its transport sees it: features, queues, configuration space, activation.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

use super::control::{BalloonControl, BalloonError, Shared};
use super::handler::{BalloonHandler, QueueRole};
use crate::device::{
    device_type, read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::metrics::BalloonMetrics;
use crate::snapshot::DeviceState;
use crate::worker::Worker;
use devices::RestoreError;

const QUEUE_SIZE: u16 = 256;

// Feature bits (virtio 1.2, 5.5.3).
const VIRTIO_BALLOON_F_STATS_VQ: u64 = 1 << 1;
const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u64 = 1 << 2;
const VIRTIO_BALLOON_F_REPORTING: u64 = 1 << 5;

/// `struct virtio_balloon_config` up to `actual`: the later fields belong to features Kestrel does
/// not offer (free page hinting, page poisoning).
const CONFIG_BYTES: usize = 8;
const NUM_PAGES: std::ops::Range<usize> = 0..4;
const ACTUAL: std::ops::Range<usize> = 4..8;

/// What the balloon offers the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BalloonSettings {
    /// The balloon size the guest is asked for at start, in MiB.
    pub target_mib: u32,
    /// With an interval, the stats queue is offered and the device asks the guest for fresh
    /// statistics that often.
    pub stats_interval: Option<Duration>,
    /// Offer free page reporting: the guest reports pages it frees, and the host discards them.
    pub free_page_reporting: bool,
    /// Let the guest take pages back from the balloon when it is out of memory, instead of
    /// invoking its OOM killer.
    pub deflate_on_oom: bool,
}

/// What a snapshot keeps of a balloon: the target (which the API may have changed), the size the
/// driver reported, both in 4 KiB pages, and the statistics interval in seconds (None: no
/// statistics).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalloonState {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub stats_interval_secs: Option<u64>,
}

/// A virtio-balloon device: the host asks the guest for memory back, and gets it.
pub struct Balloon {
    features: u64,
    queue_sizes: Vec<u16>,
    shared: Arc<Shared>,
    metrics: Arc<BalloonMetrics>,
    worker: Option<Worker>,
}

impl Balloon {
    /// A balloon for a guest with `ram_bytes` of RAM; fails if the target is larger than that.
    pub fn new(settings: &BalloonSettings, ram_bytes: u64) -> Result<Balloon, BalloonError> {
        let mut features = VIRTIO_F_VERSION_1;
        if settings.stats_interval.is_some() {
            features |= VIRTIO_BALLOON_F_STATS_VQ;
        }
        if settings.deflate_on_oom {
            features |= VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        if settings.free_page_reporting {
            features |= VIRTIO_BALLOON_F_REPORTING;
        }
        Ok(Balloon {
            features,
            queue_sizes: vec![QUEUE_SIZE; queue_roles(features).len()],
            shared: Arc::new(Shared::new(settings.target_mib, ram_bytes, settings.stats_interval)?),
            metrics: Arc::default(),
            worker: None,
        })
    }

    /// What the balloon counts, for the VMM's metrics.
    pub fn metrics(&self) -> Arc<BalloonMetrics> {
        self.metrics.clone()
    }

    /// The host's handle on this balloon.
    pub fn control(&self) -> BalloonControl {
        BalloonControl::new(self.shared.clone())
    }

    fn config(&self) -> [u8; CONFIG_BYTES] {
        let mut config = [0u8; CONFIG_BYTES];
        config[NUM_PAGES].copy_from_slice(&self.shared.target_pages().to_le_bytes());
        config[ACTUAL].copy_from_slice(&self.shared.actual_pages().to_le_bytes());
        config
    }

    /// The timer that asks for statistics, at the interval the host last set.
    fn stats_timer(&self, acked_features: u64) -> io::Result<Option<TimerFd>> {
        let interval = self.shared.stats_interval();
        let Some(interval) = interval.filter(|_| acked_features & VIRTIO_BALLOON_F_STATS_VQ != 0) else {
            return Ok(None);
        };
        let mut timer = TimerFd::new()?;
        timer.reset(interval, Some(interval))?;
        Ok(Some(timer))
    }
}

/// The role of each queue, by transport index. The queues of features that were not negotiated
/// take no index: Linux numbers only the queues it uses, so with reporting but no stats queue,
/// queue 2 is the reporting queue.
fn queue_roles(features: u64) -> Vec<QueueRole> {
    let mut roles = vec![QueueRole::Inflate, QueueRole::Deflate];
    if features & VIRTIO_BALLOON_F_STATS_VQ != 0 {
        roles.push(QueueRole::Stats);
    }
    if features & VIRTIO_BALLOON_F_REPORTING != 0 {
        roles.push(QueueRole::Reporting);
    }
    roles
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        device_type::BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    /// Only `actual` is the driver's to write; bytes of `num_pages` and beyond are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut config = self.config();
        for (index, &byte) in data.iter().enumerate() {
            let position = offset.checked_add(index as u64).and_then(|p| usize::try_from(p).ok());
            if let Some(position) = position.filter(|p| ACTUAL.contains(p)) {
                config[position] = byte;
            }
        }
        let mut actual = [0u8; 4];
        actual.copy_from_slice(&config[ACTUAL]);
        self.shared.set_actual_pages(u32::from_le_bytes(actual));
    }

    fn activate(&mut self, mut context: ActivateContext) -> Result<(), ActivateError> {
        let roles = queue_roles(context.acked_features);
        let queues = context.take_queues(&self.worker, self.queue_sizes.len(), roles.len())?;
        // Queues past the negotiated ones stay unused (their notifications are ignored).
        let queues = roles.into_iter().zip(queues).collect();
        let stats_timer = self.stats_timer(context.acked_features).map_err(ActivateError::Backend)?;
        let handler = BalloonHandler::new(
            context.memory.clone(),
            context.interrupt.clone(),
            context.guest_errors.clone(),
            self.metrics.clone(),
            self.shared.clone(),
            queues,
            stats_timer,
        );
        self.worker =
            Some(context.spawn_worker("virtio-balloon", jail::seccomp::ThreadRole::Balloon, handler)?);
        self.shared.set_interrupt(Some(context.interrupt));
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
        self.shared.set_interrupt(None);
        // The guest's balloon is gone with its driver's state: the pages are its own again.
        self.shared.set_actual_pages(0);
    }

    fn worker(&self) -> Option<&Worker> {
        self.worker.as_ref()
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Balloon(BalloonState {
            target_pages: self.shared.target_pages(),
            actual_pages: self.shared.actual_pages(),
            stats_interval_secs: self.shared.stats_interval().map(|i| i.as_secs()),
        })
    }

    fn restore_state(&mut self, saved: &DeviceState) -> Result<(), RestoreError> {
        let DeviceState::Balloon(saved) = saved else {
            return Err(RestoreError::value(
                "virtio-balloon",
                "device state",
                0u8,
                "is not a balloon's (it keeps its target, size and interval)",
            ));
        };
        let interval = saved.stats_interval_secs.map(Duration::from_secs);
        self.shared.restore(saved.target_pages, saved.actual_pages, interval)
    }

    fn activation_failed(&self) {
        self.metrics.activate_fails.inc();
    }
}

#[cfg(test)]
mod tests {
    use crate::GuestRam;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::device::testing::{guest_errors, Recorder};
    use crate::device::InterruptCause;

    const RAM: u64 = 256 << 20;

    fn balloon(settings: BalloonSettings) -> Balloon {
        Balloon::new(&settings, RAM).unwrap()
    }

    fn read_u32(balloon: &Balloon, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        balloon.read_config(offset, &mut data);
        u32::from_le_bytes(data)
    }

    #[test]
    fn features_and_queues_follow_the_settings() {
        let plain = balloon(BalloonSettings::default());
        assert_eq!(plain.device_type(), 5);
        assert_eq!(plain.features(), VIRTIO_F_VERSION_1);
        assert_eq!(plain.queue_max_sizes(), [256, 256]);

        let full = balloon(BalloonSettings {
            target_mib: 0,
            stats_interval: Some(Duration::from_secs(1)),
            free_page_reporting: true,
            deflate_on_oom: true,
        });
        assert_eq!(full.features(), VIRTIO_F_VERSION_1 | 1 << 1 | 1 << 2 | 1 << 5);
        assert_eq!(full.queue_max_sizes(), [256; 4]);
    }

    #[test]
    fn queues_are_numbered_over_the_negotiated_features_only() {
        use QueueRole::*;
        assert_eq!(queue_roles(0), [Inflate, Deflate]);
        assert_eq!(queue_roles(VIRTIO_BALLOON_F_REPORTING), [Inflate, Deflate, Reporting]);
        assert_eq!(
            queue_roles(VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_REPORTING),
            [Inflate, Deflate, Stats, Reporting]
        );
    }

    #[test]
    fn a_snapshot_keeps_the_target_the_size_and_the_interval() {
        let settings = BalloonSettings {
            target_mib: 16,
            stats_interval: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        let mut original = balloon(settings.clone());
        original.control().set_target_mib(48).unwrap();
        original.write_config(4, &777u32.to_le_bytes());
        original.control().set_stats_interval(9).unwrap();
        let saved = original.save_state();

        let mut restored = balloon(settings);
        restored.restore_state(&saved).unwrap();
        assert_eq!((read_u32(&restored, 0), read_u32(&restored, 4)), (48 * 256, 777));
        assert_eq!(restored.control().stats_interval(), Some(Duration::from_secs(9)));
        // A balloon built without statistics cannot take a state with them, nor a state of
        // another kind, a target beyond the guest's RAM or an interval the API never sets.
        assert!(balloon(BalloonSettings::default()).restore_state(&saved).is_err());
        let DeviceState::Balloon(state) = saved else { panic!("a balloon's state: {saved:?}") };
        let with_stats = || {
            balloon(BalloonSettings { stats_interval: Some(Duration::from_secs(1)), ..Default::default() })
        };
        assert!(matches!(
            with_stats().restore_state(&DeviceState::None),
            Err(RestoreError::Value { field, .. }) if field == "device state"
        ));
        let refused = |change: &dyn Fn(&mut BalloonState)| {
            let mut bad = state.clone();
            change(&mut bad);
            with_stats().restore_state(&DeviceState::Balloon(bad)).unwrap_err()
        };
        let ram_pages = (RAM / 4096) as u32;
        assert!(
            matches!(refused(&|s| s.target_pages = ram_pages + 1), RestoreError::Value { field, .. } if field == "target")
        );
        with_stats()
            .restore_state(&DeviceState::Balloon(BalloonState { target_pages: ram_pages, ..state.clone() }))
            .unwrap();
        for seconds in [0, 65536, u64::MAX] {
            assert!(matches!(
                refused(&|s| s.stats_interval_secs = Some(seconds)),
                RestoreError::Value { value, .. } if value == seconds
            ));
        }
        // Any size the driver could write is taken: it is only reported.
        with_stats()
            .restore_state(&DeviceState::Balloon(BalloonState { actual_pages: u32::MAX, ..state }))
            .unwrap();
    }

    #[test]
    fn the_guest_reads_the_target_and_writes_actual_only() {
        let mut balloon = balloon(BalloonSettings { target_mib: 64, ..BalloonSettings::default() });
        let control = balloon.control();
        assert_eq!(read_u32(&balloon, 0), 64 * 256);
        assert_eq!(read_u32(&balloon, 4), 0);

        balloon.write_config(4, &1000u32.to_le_bytes());
        assert_eq!((read_u32(&balloon, 4), control.actual_pages()), (1000, 1000));
        // Byte by byte, as a driver may: the fields change only where written.
        balloon.write_config(5, &[0x01]);
        assert_eq!(control.actual_pages(), 1000 & 0xff | 0x100);
        // num_pages is the host's; a write across both fields changes only actual.
        balloon.write_config(0, &[0xff; 8]);
        assert_eq!((read_u32(&balloon, 0), control.actual_pages()), (64 * 256, u32::MAX));
        balloon.write_config(8, &[1; 4]);
        balloon.write_config(u64::MAX, &[1; 4]);
        assert_eq!(control.actual_pages(), u32::MAX);

        let mut past_the_end = [0xffu8; 4];
        balloon.read_config(6, &mut past_the_end);
        assert_eq!(past_the_end, [0xff, 0xff, 0, 0]);

        control.set_target_mib(16).unwrap();
        assert_eq!(read_u32(&balloon, 0), 16 * 256);
    }

    #[test]
    fn a_target_larger_than_guest_ram_is_refused() {
        let settings = BalloonSettings { target_mib: 257, ..BalloonSettings::default() };
        assert!(matches!(Balloon::new(&settings, RAM), Err(BalloonError::TargetTooLarge { .. })));
    }

    /// Activation inputs for `count` queues, `ready` of them set up by the driver.
    fn context(
        memory: &GuestRam,
        count: usize,
        ready: usize,
        acked_features: u64,
        interrupt: Arc<Recorder>,
    ) -> ActivateContext {
        let queues = (0..count)
            .map(|i| {
                let mock = MockSplitQueue::create(memory, GuestAddress(i as u64 * 0x1000), 16);
                let mut queue: Queue = mock.create_queue().unwrap();
                queue.set_ready(i < ready);
                queue
            })
            .collect();
        ActivateContext {
            memory: memory.clone(),
            queues,
            queue_events: (0..count).map(|_| EventFd::new(EFD_NONBLOCK).unwrap()).collect(),
            interrupt,
            acked_features,
            guest_errors: guest_errors(),
            restored: false,
        }
    }

    #[test]
    fn activation_checks_the_negotiated_queues_and_wires_the_config_interrupt() {
        let memory = GuestRam::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let settings = BalloonSettings { free_page_reporting: true, ..BalloonSettings::default() };
        let mut balloon = balloon(settings);
        let control = balloon.control();
        let interrupt = Arc::new(Recorder::default());
        let acked = VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING;

        let error = balloon.activate(context(&memory, 2, 2, acked, interrupt.clone())).unwrap_err();
        assert!(matches!(error, ActivateError::QueueCount { given: 2, expected: 3 }));
        let error = balloon.activate(context(&memory, 3, 2, acked, interrupt.clone())).unwrap_err();
        assert!(matches!(error, ActivateError::QueueNotReady(2)));
        // Without reporting negotiated, its queue may stay down.
        balloon.activate(context(&memory, 3, 2, VIRTIO_F_VERSION_1, interrupt.clone())).unwrap();
        let error = balloon.activate(context(&memory, 3, 3, acked, interrupt.clone())).unwrap_err();
        assert!(matches!(error, ActivateError::AlreadyActive));

        control.set_target_mib(8).unwrap();
        assert_eq!(*interrupt.0.lock().unwrap(), [InterruptCause::Config]);

        balloon.write_config(4, &5u32.to_le_bytes());
        balloon.reset();
        assert_eq!(control.actual_pages(), 0, "a reset driver holds no balloon");
        control.set_target_mib(4).unwrap();
        assert_eq!(interrupt.0.lock().unwrap().len(), 1, "no interrupt without a driver");
        balloon.activate(context(&memory, 3, 3, acked, interrupt.clone())).unwrap();
    }
}
