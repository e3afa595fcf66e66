//! Where the virtio-pci structures sit: all in BAR 0 (32-bit memory, 16 KiB), each found by the
//! driver through a capability in configuration space (virtio 1.2, 4.1.4).
//!
//! | BAR 0 offset | structure |
//! |---|---|
//! | `0x0000` | common configuration (`0x38` bytes) |
//! | `0x0400` | ISR status (1 byte) |
//! | `0x0800` | device-specific configuration (up to 2 KiB) |
//! | `0x1000` | queue notifications: queue n at `0x1000 + 4 n` (notify_off_multiplier 4) |
//! | `0x2000` | MSI-X table (up to 256 vectors) |
//! | `0x3000` | MSI-X pending-bit array |
//!
//! Each queue has its own notification address, so the VMM binds one ioeventfd per queue without
//! a datamatch.

use devices::pci::msix::{self, Msix};
use devices::pci::{ConfigSpace, PciError};

/// The BAR holding every structure.
pub const BAR_INDEX: usize = 0;
/// Its size.
pub const BAR_SIZE: u32 = 0x4000;

pub(crate) const COMMON_CONFIG: u64 = 0x0000;
/// `struct virtio_pci_common_cfg` up to `queue_device` (what Linux maps).
pub(crate) const COMMON_CONFIG_SIZE: u64 = 0x38;
pub(crate) const ISR: u64 = 0x0400;
pub(crate) const DEVICE_CONFIG: u64 = 0x0800;
pub(crate) const DEVICE_CONFIG_SIZE: u64 = 0x0800;
pub(crate) const NOTIFY: u64 = 0x1000;
const NOTIFY_SIZE: u64 = 0x1000;
/// Bytes between two queues' notification addresses.
pub(crate) const NOTIFY_OFF_MULTIPLIER: u64 = 4;
pub(crate) const MSIX_TABLE: u64 = 0x2000;
pub(crate) const MSIX_PBA: u64 = 0x3000;
/// Vectors that fit the table's 4 KiB.
pub(crate) const MAX_MSIX_VECTORS: u16 = 0x1000 / msix::TABLE_ENTRY_SIZE as u16;
/// Queues that have a notification address.
pub(crate) const MAX_QUEUES: usize = (NOTIFY_SIZE / NOTIFY_OFF_MULTIPLIER) as usize;

/// Vendor-specific capability ID, which virtio's structure capabilities use.
const VENDOR_CAPABILITY_ID: u8 = 0x09;
// cfg_type of each structure capability.
const COMMON_CFG: u8 = 1;
const NOTIFY_CFG: u8 = 2;
const ISR_CFG: u8 = 3;
const DEVICE_CFG: u8 = 4;

/// `struct virtio_pci_cap` without its first two bytes (ID and next pointer, which the
/// configuration space fills in).
fn structure_capability(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let cap_len = 16 + extra.len() as u8;
    let mut body = vec![cap_len, cfg_type, BAR_INDEX as u8, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body.extend_from_slice(extra);
    body
}

/// Adds BAR 0 and the capabilities to `config`; returns the offset of the MSI-X capability.
pub(crate) fn add_capabilities(config: &mut ConfigSpace, msix: &Msix) -> Result<usize, PciError> {
    config.add_memory_bar(BAR_INDEX, BAR_SIZE)?;
    let mut msix_body = msix.control_at_reset().to_le_bytes().to_vec();
    msix_body.extend_from_slice(&(MSIX_TABLE as u32 | BAR_INDEX as u32).to_le_bytes());
    msix_body.extend_from_slice(&(MSIX_PBA as u32 | BAR_INDEX as u32).to_le_bytes());
    let msix_offset =
        config.add_capability(msix::CAPABILITY_ID, &msix_body, &Msix::CONTROL_WRITABLE.to_le_bytes())?;
    let multiplier = (NOTIFY_OFF_MULTIPLIER as u32).to_le_bytes();
    for body in [
        structure_capability(COMMON_CFG, COMMON_CONFIG, COMMON_CONFIG_SIZE, &[]),
        structure_capability(NOTIFY_CFG, NOTIFY, NOTIFY_SIZE, &multiplier),
        structure_capability(ISR_CFG, ISR, 1, &[]),
        structure_capability(DEVICE_CFG, DEVICE_CONFIG, DEVICE_CONFIG_SIZE, &[]),
    ] {
        config.add_capability(VENDOR_CAPABILITY_ID, &body, &[])?;
    }
    Ok(msix_offset)
}
