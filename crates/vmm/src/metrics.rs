//! What a VM counts, gathered for the metrics writer: each vCPU's exits (Firecracker's `vcpu`
//! group) and each virtio device's group (see [`virtio::metrics`]).
//!
//! Every vCPU thread counts into its own [`VcpuMetrics`] with relaxed atomic adds: an exit costs
//! no lock and no shared cache line. The writer takes each counter's delta at a flush.

use std::sync::Arc;

use kvm_ioctls::VcpuExit;
use virtio::counter_group;
use virtio::metrics::{BalloonMetrics, BlockMetrics, Counts, EntropyMetrics, NetMetrics, VsockMetrics};

use crate::outcome::VmOutcome;

counter_group! {
    /// One vCPU's exits to the VMM. Aligned to a cache line of its own, so vCPU threads counting
    /// at the same time do not contend for one.
    #[repr(align(64))]
    pub struct VcpuMetrics {
        /// Port reads and writes.
        exit_io_in,
        exit_io_out,
        /// MMIO reads and writes.
        exit_mmio_read,
        exit_mmio_write,
        /// The vCPU stopped in failure: a triple fault, an exit KVM or Kestrel could not handle.
        failures,
    }
}

impl VcpuMetrics {
    /// Counts one exit KVM_RUN returned.
    pub(crate) fn count_exit(&self, exit: &VcpuExit<'_>) {
        match exit {
            VcpuExit::IoIn(..) => self.exit_io_in.inc(),
            VcpuExit::IoOut(..) => self.exit_io_out.inc(),
            VcpuExit::MmioRead(..) => self.exit_mmio_read.inc(),
            VcpuExit::MmioWrite(..) => self.exit_mmio_write.inc(),
            _ => {}
        }
    }

    /// Counts how the vCPU's run ended, if it ended in failure.
    pub(crate) fn count_end(&self, outcome: &VmOutcome) {
        if matches!(outcome, VmOutcome::TripleFault { .. } | VmOutcome::VcpuFailure { .. }) {
            self.failures.inc();
        }
    }
}

/// The virtio devices' counters by kind. Disks and network cards are also written one by one,
/// each under its key (`block_<key>`, `net_<key>`, as Firecracker names them after the drive and
/// interface IDs); the other kinds exist once per VM.
#[derive(Default)]
pub struct DeviceMetrics {
    block: Vec<(String, Arc<BlockMetrics>)>,
    net: Vec<(String, Arc<NetMetrics>)>,
    vsock: Vec<Arc<VsockMetrics>>,
    entropy: Vec<Arc<EntropyMetrics>>,
    balloon: Vec<Arc<BalloonMetrics>>,
}

impl DeviceMetrics {
    /// A disk's counters under `key` (made unique with a `_2`, `_3`, ... suffix if taken).
    pub(crate) fn add_block(&mut self, key: &str, metrics: Arc<BlockMetrics>) {
        let key = unique_key(self.block.iter().map(|(k, _)| k.as_str()), key);
        self.block.push((key, metrics));
    }

    /// A network card's counters under `key` (made unique as for disks).
    pub(crate) fn add_net(&mut self, key: &str, metrics: Arc<NetMetrics>) {
        let key = unique_key(self.net.iter().map(|(k, _)| k.as_str()), key);
        self.net.push((key, metrics));
    }

    pub(crate) fn add_vsock(&mut self, metrics: Arc<VsockMetrics>) {
        self.vsock.push(metrics);
    }

    pub(crate) fn add_entropy(&mut self, metrics: Arc<EntropyMetrics>) {
        self.entropy.push(metrics);
    }

    pub(crate) fn add_balloon(&mut self, metrics: Arc<BalloonMetrics>) {
        self.balloon.push(metrics);
    }
}

/// `key`, or `key_N` for the first N from 2 that no existing key has.
fn unique_key<'a>(existing: impl Iterator<Item = &'a str> + Clone, key: &str) -> String {
    let taken = |candidate: &str| existing.clone().any(|k| k == candidate);
    if !taken(key) {
        return key.to_owned();
    }
    (2..).map(|n| format!("{key}_{n}")).find(|candidate| !taken(candidate)).unwrap_or_default()
}

/// Every counter of one VM. The default (no vCPUs, no devices) writes all groups as zeros, so
/// the metrics have the same shape before a VM starts.
#[derive(Default)]
pub struct VmMetrics {
    vcpus: Arc<[VcpuMetrics]>,
    devices: DeviceMetrics,
}

impl VmMetrics {
    pub(crate) fn new(vcpus: Arc<[VcpuMetrics]>, devices: DeviceMetrics) -> VmMetrics {
        VmMetrics { vcpus, devices }
    }

    /// Every group's counts since the previous call, in the order they are written: each item
    /// of a kind (`vcpu_<index>`, a Kestrel extension; `block_<key>`; `net_<key>`), then the
    /// kind's total under Firecracker's group name (`vcpu`, `block`, `net`, `vsock`, `entropy`,
    /// `balloon`).
    pub fn take(&self) -> Vec<(String, Counts)> {
        let mut groups = Vec::new();
        let vcpus = self.vcpus.iter().enumerate().map(|(index, vcpu)| (index.to_string(), vcpu.take()));
        push_kind(&mut groups, "vcpu", VcpuMetrics::default().take(), vcpus, true);
        let disks = self.devices.block.iter().map(|(key, disk)| (key.clone(), disk.take()));
        push_kind(&mut groups, "block", BlockMetrics::default().take(), disks, true);
        let cards = self.devices.net.iter().map(|(key, card)| (key.clone(), card.take()));
        push_kind(&mut groups, "net", NetMetrics::default().take(), cards, true);
        let vsock = self.devices.vsock.iter().map(|m| (String::new(), m.take()));
        push_kind(&mut groups, "vsock", VsockMetrics::default().take(), vsock, false);
        let entropy = self.devices.entropy.iter().map(|m| (String::new(), m.take()));
        push_kind(&mut groups, "entropy", EntropyMetrics::default().take(), entropy, false);
        let balloon = self.devices.balloon.iter().map(|m| (String::new(), m.take()));
        push_kind(&mut groups, "balloon", BalloonMetrics::default().take(), balloon, false);
        groups
    }
}

/// Appends a kind's items as `<kind>_<key>` (when `each` is set), then their sum as `<kind>`.
/// `zero` is the kind's group with every count zero, which the sum starts from.
fn push_kind(
    groups: &mut Vec<(String, Counts)>,
    kind: &str,
    zero: Counts,
    items: impl Iterator<Item = (String, Counts)>,
    each: bool,
) {
    let mut total = zero;
    for (key, counts) in items {
        total.add(&counts);
        if each {
            groups.push((format!("{kind}_{key}"), counts));
        }
    }
    groups.push((kind.to_owned(), total));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(groups: &[(String, Counts)]) -> Vec<&str> {
        groups.iter().map(|(name, _)| name.as_str()).collect()
    }

    fn group<'a>(groups: &'a [(String, Counts)], name: &str) -> &'a Counts {
        &groups.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no group {name}")).1
    }

    #[test]
    fn without_a_vm_every_group_is_there_with_zeros() {
        let groups = VmMetrics::default().take();
        assert_eq!(names(&groups), ["vcpu", "block", "net", "vsock", "entropy", "balloon"]);
        assert_eq!(group(&groups, "vcpu").get("exit_io_in"), Some(0));
        assert_eq!(group(&groups, "block").get("read_bytes"), Some(0));
    }

    #[test]
    fn each_vcpu_and_disk_is_written_then_their_total() {
        let vcpus: Arc<[VcpuMetrics]> = (0..2).map(|_| VcpuMetrics::default()).collect();
        let mut data = [0u8; 1];
        vcpus[0].count_exit(&VcpuExit::IoIn(0x3f8, &mut data));
        vcpus[1].count_exit(&VcpuExit::IoIn(0x3f8, &mut data));
        vcpus[1].count_exit(&VcpuExit::MmioWrite(0xd000_0000, &data));
        vcpus[1].count_exit(&VcpuExit::Hlt);
        vcpus[1].count_end(&VmOutcome::TripleFault { vcpu: 1, rip: 0 });
        vcpus[0].count_end(&VmOutcome::PowerOff);
        let mut devices = DeviceMetrics::default();
        let (root, data_disk) = (Arc::new(BlockMetrics::default()), Arc::new(BlockMetrics::default()));
        devices.add_block("rootfs", root.clone());
        devices.add_block("data", data_disk.clone());
        devices.add_block("rootfs", Arc::default());
        devices.add_entropy(Arc::default());
        root.read_bytes.add(4096);
        data_disk.read_bytes.add(512);
        let metrics = VmMetrics::new(vcpus, devices);

        let groups = metrics.take();
        assert_eq!(
            names(&groups),
            [
                "vcpu_0",
                "vcpu_1",
                "vcpu",
                "block_rootfs",
                "block_data",
                "block_rootfs_2",
                "block",
                "net",
                "vsock",
                "entropy",
                "balloon"
            ]
        );
        assert_eq!(group(&groups, "vcpu_1").get("exit_mmio_write"), Some(1));
        assert_eq!(group(&groups, "vcpu").get("exit_io_in"), Some(2));
        assert_eq!(group(&groups, "vcpu").get("failures"), Some(1));
        assert_eq!(group(&groups, "block_rootfs").get("read_bytes"), Some(4096));
        assert_eq!(group(&groups, "block").get("read_bytes"), Some(4608));

        let again = metrics.take();
        assert_eq!(group(&again, "block").get("read_bytes"), Some(0), "deltas since the last take");
        assert_eq!(group(&again, "vcpu").get("exit_io_in"), Some(0));
    }

    #[test]
    fn keys_are_made_unique() {
        let keys = ["a", "a_2", "b"];
        assert_eq!(unique_key(keys.iter().copied(), "c"), "c");
        assert_eq!(unique_key(keys.iter().copied(), "a"), "a_3");
        assert_eq!(unique_key(keys.iter().copied(), "b"), "b_2");
    }
}
