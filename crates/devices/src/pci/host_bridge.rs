//! The host bridge at 00:00.0. Linux's type-1 probe looks for a function of class "host bridge"
//! on bus 0 before it trusts the mechanism (pci_sanity_check on machines without DMI).

use super::config_space::{ConfigSpace, PciIds};
use super::PciDevice;

const IDS: PciIds = PciIds {
    vendor_id: 0x8086,
    device_id: 0x0d57,
    revision_id: 0,
    class_code: 0x06_0000, // bridge, host bridge
    subsystem_vendor_id: 0,
    subsystem_id: 0,
};

/// A host bridge: a header and nothing else.
pub(super) struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    pub(super) fn new() -> HostBridge {
        HostBridge { config: ConfigSpace::new(IDS) }
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }

    // No BARs: the root never maps any, so these are never reached.
    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}
