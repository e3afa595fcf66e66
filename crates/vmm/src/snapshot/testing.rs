//! A deterministic [`VmState`] built without KVM, for the golden file, the stream round trips and
//! the mutation test.

use std::sync::Arc;

use devices::ioapic::{Ioapic, MsiMessage, MsiSink};
use devices::legacy::{Cmos, SerialSnapshot, I8042};
use devices::InterruptLine;
use kvm_bindings::{kvm_clock_data, kvm_cpuid_entry2, kvm_msr_entry};
use virtio::mmio::MmioTransport;
use virtio::snapshot::SnapshotTransport;
use virtio::GuestRam;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::memory_file::layout_of;
use super::vcpu_state::VcpuState;
use super::VmState;
use crate::config::{
    BalloonConfig, BlockConfig, CacheMode, ImageFormat, IoEngine, MacAddress, NetConfig, RateLimiterConfig,
    SerialConfig, TokenBucket, VirtioConfig, VirtioTransport, VmConfig,
};

/// An interrupt sink that drops everything: restores in tests reach no KVM.
pub struct NoInterrupts;

impl MsiSink for NoInterrupts {
    fn send_msi(&self, _: MsiMessage) -> std::io::Result<()> {
        Ok(())
    }
}

impl InterruptLine for NoInterrupts {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

pub const MEMORY_BYTES: u64 = 128 << 20;

pub fn sample_config() -> VmConfig {
    VmConfig {
        kernel: "/kernels/vmlinux".into(),
        initrd: None,
        cmdline: "console=ttyS0 reboot=k panic=1".into(),
        vcpus: 2,
        memory_bytes: MEMORY_BYTES,
        serial: SerialConfig::None,
        virtio: vec![
            VirtioConfig::Rng,
            VirtioConfig::Block(BlockConfig {
                id: Some("rootfs".into()),
                // Raw, so the restore checks' tests can use a plain file in its place.
                format: ImageFormat::Raw,
                cache: CacheMode::None,
                allow_backing: false,
                num_queues: 2,
                io_engine: IoEngine::Async,
                rate_limiter: Some(RateLimiterConfig {
                    bandwidth: Some(TokenBucket {
                        size: 1 << 20,
                        one_time_burst: Some(4096),
                        refill_time: 100,
                    }),
                    ops: None,
                }),
                poll_us: Some(50),
                ..BlockConfig::new("/images/rootfs.img")
            }),
            VirtioConfig::Net(NetConfig {
                mac: Some(MacAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56])),
                id: Some("eth0".into()),
                rx_rate_limiter: Some(RateLimiterConfig {
                    bandwidth: None,
                    ops: Some(TokenBucket::per_second(1000)),
                }),
                tx_rate_limiter: Some(RateLimiterConfig {
                    bandwidth: Some(TokenBucket { size: 1 << 20, one_time_burst: None, refill_time: 100 }),
                    ops: None,
                }),
                mmds: Some(model::mmds::NetMmds {
                    address: std::net::Ipv4Addr::new(169, 254, 170, 2),
                    version: model::api::MmdsVersion::V2,
                    imds_compat: true,
                    store: Default::default(),
                }),
                ..NetConfig::new(Some("tap0".into()))
            }),
            VirtioConfig::Balloon(BALLOON),
        ],
        transport: VirtioTransport::Mmio,
        track_dirty_pages: false,
        host: Default::default(),
    }
}

/// A balloon, so the golden file covers a device with state of its own.
const BALLOON: BalloonConfig = BalloonConfig {
    target_mib: 16,
    stats_interval: Some(std::time::Duration::from_secs(5)),
    free_page_reporting: false,
    deflate_on_oom: true,
};

fn vcpu(index: u8) -> VcpuState {
    let mut state = VcpuState {
        cpuid: vec![kvm_cpuid_entry2 {
            function: 1,
            eax: 0x806f8,
            ebx: u32::from(index) << 24,
            ..Default::default()
        }],
        msrs: vec![
            kvm_msr_entry { index: 0x10, data: 123_456_789, ..Default::default() },
            kvm_msr_entry { index: 0x6e0, data: 0, ..Default::default() },
        ],
        regs: Default::default(),
        sregs: Default::default(),
        xsave: Default::default(),
        xcrs: Default::default(),
        debug_regs: Default::default(),
        lapic: Default::default(),
        mp_state: Default::default(),
        events: Default::default(),
        tsc_khz: Some(2_000_000),
    };
    state.regs.rip = 0x20_0200;
    state.regs.rflags = 0x3202;
    state.sregs.cr0 = 0x8005_0033;
    state.xsave.region[0] = 0x37f;
    state.lapic.regs[0x20] = index as _;
    state
}

/// A virtio-mmio transport's state as a fresh (not yet driven) device has it.
fn fresh_mmio_device(device: Box<dyn virtio::VirtioDevice>) -> virtio::snapshot::VirtioSnapshot {
    let memory = GuestRam::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("1 MiB of guest RAM");
    let mut transport = MmioTransport::new(device, memory).expect("a virtio-mmio transport");
    let saved = transport.hold().expect("an idle device holds");
    transport.release();
    saved
}

fn balloon() -> virtio::balloon::Balloon {
    let settings = virtio::balloon::BalloonSettings {
        target_mib: BALLOON.target_mib,
        stats_interval: BALLOON.stats_interval,
        free_page_reporting: BALLOON.free_page_reporting,
        deflate_on_oom: BALLOON.deflate_on_oom,
    };
    virtio::balloon::Balloon::new(&settings, MEMORY_BYTES).expect("a 16 MiB balloon in 128 MiB")
}

/// The same state every time: no clocks, no random numbers, no KVM.
pub fn sample_state() -> VmState {
    let ioapic = Ioapic::new(Arc::new(NoInterrupts));
    let reset = EventFd::new(EFD_NONBLOCK).expect("an eventfd");
    let i8042 = I8042::new(reset, Arc::new(NoInterrupts));
    let regions = arch::ram_regions(MEMORY_BYTES)
        .iter()
        .map(|&(start, size)| (start.0, size as u64))
        .collect::<Vec<_>>();
    VmState {
        config: sample_config(),
        disk_sectors: vec![2048],
        memory: layout_of(regions),
        clock: kvm_clock_data { clock: 987_654_321, ..Default::default() },
        vcpus: vec![vcpu(0), vcpu(1)],
        ioapic: ioapic.snapshot(),
        serial: SerialSnapshot::default(),
        cmos: Cmos::new(MEMORY_BYTES, 0).snapshot(),
        i8042: i8042.snapshot(),
        virtio: vec![
            fresh_mmio_device(Box::new(virtio::rng::Rng::new())),
            // Stand-ins for the disk and the card, whose devices need host files: restoring
            // checks the number of devices and their transport, not their kinds.
            fresh_mmio_device(Box::new(virtio::rng::Rng::new())),
            fresh_mmio_device(Box::new(virtio::rng::Rng::new())),
            fresh_mmio_device(Box::new(balloon())),
        ],
    }
}

/// Sets the process's umask for as long as it lives (the umask is process-wide: use a value the
/// other tests do not mind, such as the usual 022).
pub struct Umask(libc::mode_t);

impl Umask {
    pub fn set(mask: libc::mode_t) -> Umask {
        // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
        Umask(unsafe { libc::umask(mask) })
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::umask(self.0) };
    }
}
