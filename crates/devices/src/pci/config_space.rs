//! The configuration space of one PCI function with a type-0 header: a 256-byte register file
//! with a write mask per byte, memory BARs, and a capability list.
//!
//! BAR sizing needs no special case: a BAR's write mask keeps only the address bits its size
//! allows, so after the guest writes all ones it reads back the size mask (PCI 3.0, 6.2.5.1),
//! with the read-only type bits below.

use super::PciError;
use crate::RestoreError;

/// Conventional configuration space: what the 0xCF8/0xCFC mechanism reaches.
pub const CONFIG_SPACE_SIZE: usize = 256;
/// Configuration space per function through ECAM; the extended part (past 256 bytes) reads as
/// zero, so guests see conventional PCI functions without extended capabilities.
pub const EXTENDED_CONFIG_SPACE_SIZE: usize = 4096;
/// BAR registers of a type-0 header.
pub const NUM_BARS: usize = 6;

// Type-0 header offsets.
pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION_ID: usize = 0x08;
pub const CLASS_CODE: usize = 0x09;
pub const CACHE_LINE_SIZE: usize = 0x0c;
pub const LATENCY_TIMER: usize = 0x0d;
pub const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const SUBSYSTEM_ID: usize = 0x2e;
pub const CAPABILITIES_POINTER: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;
pub const INTERRUPT_PIN: usize = 0x3d;

/// Command register bits a guest may set: I/O and memory decode, bus master, parity and SERR
/// reporting, INTx disable. The others are hardwired to zero.
const COMMAND_WRITABLE: u16 = 0x0547;
/// Command register: the function answers memory accesses to its BARs.
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
/// Status register: the capability list at [`CAPABILITIES_POINTER`] is valid.
const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;
/// Capabilities start after the header and are dword aligned.
const FIRST_CAPABILITY: usize = 0x40;
/// The two bytes every capability starts with: its ID and the pointer to the next one.
const CAPABILITY_HEADER_SIZE: usize = 2;

/// The identity fields of a type-0 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIds {
    pub vendor_id: u16,
    pub device_id: u16,
    pub revision_id: u8,
    /// Base class, subclass and programming interface, as in the 24-bit class code register.
    pub class_code: u32,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
}

/// Where a memory BAR currently points, when the guest lets the function decode it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarMapping {
    pub address: u64,
    pub size: u64,
}

/// One function's configuration space.
pub struct ConfigSpace {
    registers: [u8; CONFIG_SPACE_SIZE],
    writable: [u8; CONFIG_SPACE_SIZE],
    /// Size of each implemented (32-bit memory) BAR.
    bar_sizes: [Option<u32>; NUM_BARS],
    /// Offset of the last capability added, whose next pointer the next one fills in.
    last_capability: Option<usize>,
    next_capability: usize,
}

impl ConfigSpace {
    /// A type-0 header with `ids`, no BARs, no capabilities and no interrupt pin.
    pub fn new(ids: PciIds) -> ConfigSpace {
        let mut space = ConfigSpace {
            registers: [0; CONFIG_SPACE_SIZE],
            writable: [0; CONFIG_SPACE_SIZE],
            bar_sizes: [None; NUM_BARS],
            last_capability: None,
            next_capability: FIRST_CAPABILITY,
        };
        space.set_u16(VENDOR_ID, ids.vendor_id);
        space.set_u16(DEVICE_ID, ids.device_id);
        space.registers[REVISION_ID] = ids.revision_id;
        space.registers[CLASS_CODE..CLASS_CODE + 3].copy_from_slice(&ids.class_code.to_le_bytes()[..3]);
        space.set_u16(SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor_id);
        space.set_u16(SUBSYSTEM_ID, ids.subsystem_id);
        space.writable[COMMAND..COMMAND + 2].copy_from_slice(&COMMAND_WRITABLE.to_le_bytes());
        for offset in [CACHE_LINE_SIZE, LATENCY_TIMER, INTERRUPT_LINE] {
            space.writable[offset] = 0xff;
        }
        space
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the conventional space read as zero.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset.checked_add(i).and_then(|at| self.registers.get(at)).copied().unwrap_or(0);
        }
    }

    /// Writes `data` at `offset`, bit by bit through the write mask: read-only bits keep their
    /// value, and bytes past the conventional space are ignored.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            let Some(at) = offset.checked_add(i).filter(|&at| at < CONFIG_SPACE_SIZE) else { return };
            let mask = self.writable[at];
            self.registers[at] = (self.registers[at] & !mask) | (value & mask);
        }
    }

    /// The registers as they stand, for a snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        self.registers.to_vec()
    }

    /// Takes the writable bits of registers a snapshot saved from a function built the same way;
    /// the read-only ones (IDs, BAR types, capabilities) must be what this function has.
    /// BAR addresses are whatever the guest could have written (the write mask keeps the size's
    /// alignment); the PCI root places them.
    pub fn restore(&mut self, registers: &[u8]) -> Result<(), RestoreError> {
        const COMPONENT: &str = "PCI configuration space";
        let saved: &[u8; CONFIG_SPACE_SIZE] = registers.try_into().map_err(|_| RestoreError::Length {
            component: COMPONENT,
            field: "registers",
            saved: registers.len(),
            expected: CONFIG_SPACE_SIZE,
        })?;
        let differs =
            (0..CONFIG_SPACE_SIZE).find(|&at| (saved[at] ^ self.registers[at]) & !self.writable[at] != 0);
        if let Some(offset) = differs {
            return Err(RestoreError::ReadOnly { component: COMPONENT, offset });
        }
        for (at, &byte) in saved.iter().enumerate() {
            let mask = self.writable[at];
            self.registers[at] = (self.registers[at] & !mask) | (byte & mask);
        }
        Ok(())
    }

    /// The 16-bit register at `offset` (within the conventional space).
    pub fn u16_at(&self, offset: usize) -> u16 {
        let mut bytes = [0u8; 2];
        self.read(offset, &mut bytes);
        u16::from_le_bytes(bytes)
    }

    /// The 32-bit register at `offset` (within the conventional space).
    pub fn u32_at(&self, offset: usize) -> u32 {
        let mut bytes = [0u8; 4];
        self.read(offset, &mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn set_u16(&mut self, offset: usize, value: u16) {
        self.registers[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
    }

    /// Implements BAR `index` as a 32-bit, non-prefetchable memory BAR of `size` bytes (a power of
    /// two of at least 4 KiB, so that a BAR never shares a page with another).
    pub fn add_memory_bar(&mut self, index: usize, size: u32) -> Result<(), PciError> {
        if index >= NUM_BARS || self.bar_sizes[index].is_some() {
            return Err(PciError::BarIndex(index));
        }
        if !size.is_power_of_two() || size < 0x1000 {
            return Err(PciError::BarSize(u64::from(size)));
        }
        self.bar_sizes[index] = Some(size);
        let offset = BAR0 + 4 * index;
        // Bits 3:0 stay zero and read-only: memory space, 32-bit, not prefetchable.
        self.writable[offset..offset + 4].copy_from_slice(&(!(size - 1)).to_le_bytes());
        Ok(())
    }

    /// Places BAR `index` at `address`, as firmware does before the guest runs; the low bits an
    /// address of that size cannot have are dropped.
    pub fn set_bar_address(&mut self, index: usize, address: u32) {
        if index < NUM_BARS {
            self.write(BAR0 + 4 * index, &address.to_le_bytes());
        }
    }

    /// Where BAR `index` is mapped: None while it is not implemented, memory decoding is off, or
    /// the guest has not given it an address.
    pub fn bar_mapping(&self, index: usize) -> Option<BarMapping> {
        let size = (*self.bar_sizes.get(index)?)?;
        if self.u16_at(COMMAND) & COMMAND_MEMORY_SPACE == 0 {
            return None;
        }
        let address = self.u32_at(BAR0 + 4 * index) & !(size - 1);
        (address != 0).then_some(BarMapping { address: u64::from(address), size: u64::from(size) })
    }

    /// Appends a capability with ID `id` and `body` (everything after the ID and next pointer),
    /// whose bytes the guest may change where `writable_body` has bits set. Returns its offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable_body: &[u8]) -> Result<usize, PciError> {
        let offset = self.next_capability;
        let size = CAPABILITY_HEADER_SIZE + body.len();
        let end = offset + size;
        if end > CONFIG_SPACE_SIZE || writable_body.len() > body.len() {
            return Err(PciError::CapabilitySpace { id, size });
        }
        self.registers[offset] = id;
        self.registers[offset + 1] = 0;
        self.registers[offset + CAPABILITY_HEADER_SIZE..end].copy_from_slice(body);
        let writable_start = offset + CAPABILITY_HEADER_SIZE;
        self.writable[writable_start..writable_start + writable_body.len()].copy_from_slice(writable_body);
        match self.last_capability {
            Some(previous) => self.registers[previous + 1] = offset as u8,
            None => {
                self.registers[CAPABILITIES_POINTER] = offset as u8;
                let status = self.u16_at(STATUS) | STATUS_CAPABILITIES_LIST;
                self.set_u16(STATUS, status);
            }
        }
        self.last_capability = Some(offset);
        self.next_capability = end.next_multiple_of(4);
        Ok(offset)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const IDS: PciIds = PciIds {
        vendor_id: 0x1af4,
        device_id: 0x1044,
        revision_id: 1,
        class_code: 0xff_0000,
        subsystem_vendor_id: 0x1af4,
        subsystem_id: 4,
    };

    fn read32(space: &ConfigSpace, offset: usize) -> u32 {
        space.u32_at(offset)
    }

    fn write32(space: &mut ConfigSpace, offset: usize, value: u32) {
        space.write(offset, &value.to_le_bytes());
    }

    /// The capability IDs in list order, following next pointers from the header (bounded, so a
    /// loop would fail the test instead of hanging it).
    pub(crate) fn capability_ids(read8: impl Fn(usize) -> u8) -> Vec<(usize, u8)> {
        let mut found = Vec::new();
        let mut at = usize::from(read8(CAPABILITIES_POINTER));
        while at != 0 {
            assert!(found.len() < 48, "capability list loops");
            assert!(at >= FIRST_CAPABILITY && at % 4 == 0, "capability at {at:#x}");
            found.push((at, read8(at)));
            at = usize::from(read8(at + 1));
        }
        found
    }

    #[test]
    fn header_fields() {
        let space = ConfigSpace::new(IDS);
        assert_eq!(read32(&space, VENDOR_ID), 0x1044_1af4);
        assert_eq!(read32(&space, REVISION_ID), 0xff00_0001, "revision and class code");
        assert_eq!(space.u16_at(SUBSYSTEM_VENDOR_ID), 0x1af4);
        assert_eq!(space.u16_at(SUBSYSTEM_ID), 4);
        assert_eq!(space.u16_at(STATUS), 0, "no capability list yet");
        let mut byte = [0xffu8];
        space.read(HEADER_TYPE, &mut byte);
        assert_eq!(byte, [0], "type 0, single function");
        space.read(INTERRUPT_PIN, &mut byte);
        assert_eq!(byte, [0], "no INTx");
    }

    #[test]
    fn read_only_fields_ignore_writes() {
        let mut space = ConfigSpace::new(IDS);
        write32(&mut space, VENDOR_ID, 0xdead_beef);
        write32(&mut space, REVISION_ID, 0xdead_beef);
        write32(&mut space, COMMAND, 0xffff_ffff);
        assert_eq!(read32(&space, VENDOR_ID), 0x1044_1af4);
        assert_eq!(read32(&space, REVISION_ID), 0xff00_0001);
        assert_eq!(read32(&space, COMMAND), u32::from(COMMAND_WRITABLE), "status unchanged");
        space.write(INTERRUPT_LINE, &[11]);
        assert_eq!(space.u16_at(INTERRUPT_LINE), 11);
    }

    #[test]
    fn bar_sizing_and_mapping() {
        let mut space = ConfigSpace::new(IDS);
        space.add_memory_bar(0, 0x4000).unwrap();
        space.set_bar_address(0, 0xe000_0000);
        assert_eq!(space.bar_mapping(0), None, "memory decoding is off at reset");
        space.write(COMMAND, &COMMAND_MEMORY_SPACE.to_le_bytes());
        assert_eq!(space.bar_mapping(0), Some(BarMapping { address: 0xe000_0000, size: 0x4000 }));

        write32(&mut space, BAR0, 0xffff_ffff);
        assert_eq!(read32(&space, BAR0), 0xffff_c000, "size mask, memory type bits zero");
        write32(&mut space, BAR0, 0xe000_8123);
        assert_eq!(read32(&space, BAR0), 0xe000_8000, "address bits below the size are zero");
        assert_eq!(space.bar_mapping(0).unwrap().address, 0xe000_8000);

        for unimplemented in 1..NUM_BARS {
            write32(&mut space, BAR0 + 4 * unimplemented, 0xffff_ffff);
            assert_eq!(read32(&space, BAR0 + 4 * unimplemented), 0);
            assert_eq!(space.bar_mapping(unimplemented), None);
        }
        write32(&mut space, 0x30, 0xffff_ffff);
        assert_eq!(read32(&space, 0x30), 0, "no expansion ROM");
        write32(&mut space, BAR0, 0);
        assert_eq!(space.bar_mapping(0), None, "address zero is unassigned");
    }

    #[test]
    fn a_snapshot_restores_the_writable_bits_and_refuses_other_read_only_ones() {
        let built = || {
            let mut space = ConfigSpace::new(IDS);
            space.add_memory_bar(0, 0x4000).unwrap();
            space
        };
        let mut original = built();
        original.set_bar_address(0, 0xe000_8000);
        original.write(COMMAND, &COMMAND_MEMORY_SPACE.to_le_bytes());
        let saved = original.snapshot();
        let mut restored = built();
        restored.restore(&saved).unwrap();
        assert_eq!(restored.bar_mapping(0), Some(BarMapping { address: 0xe000_8000, size: 0x4000 }));

        let mut foreign = saved.clone();
        foreign[DEVICE_ID] ^= 1;
        assert!(matches!(built().restore(&foreign), Err(RestoreError::ReadOnly { offset: DEVICE_ID, .. })));
        assert!(matches!(built().restore(&saved[..64]), Err(RestoreError::Length { saved: 64, .. })));
        let mut moved_capabilities = saved.clone();
        moved_capabilities[CAPABILITIES_POINTER] = 0xfc;
        assert!(matches!(
            built().restore(&moved_capabilities),
            Err(RestoreError::ReadOnly { offset: CAPABILITIES_POINTER, .. })
        ));
    }

    #[test]
    fn bar_errors() {
        let mut space = ConfigSpace::new(IDS);
        assert_eq!(space.add_memory_bar(6, 0x1000), Err(PciError::BarIndex(6)));
        assert_eq!(space.add_memory_bar(0, 0x1800), Err(PciError::BarSize(0x1800)));
        assert_eq!(space.add_memory_bar(0, 0x800), Err(PciError::BarSize(0x800)));
        space.add_memory_bar(0, 0x1000).unwrap();
        assert_eq!(space.add_memory_bar(0, 0x1000), Err(PciError::BarIndex(0)));
    }

    #[test]
    fn capability_chain() {
        let mut space = ConfigSpace::new(IDS);
        assert_eq!(space.add_capability(0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], &[0, 0xc0]), Ok(0x40));
        assert_eq!(space.add_capability(0x09, &[14, 1, 0], &[]), Ok(0x4c));
        assert_eq!(space.add_capability(0x09, &[14, 2], &[]), Ok(0x54));
        assert_ne!(space.u16_at(STATUS) & STATUS_CAPABILITIES_LIST, 0);
        let read8 = |at| {
            let mut b = [0u8];
            space.read(at, &mut b);
            b[0]
        };
        assert_eq!(capability_ids(read8), [(0x40, 0x11), (0x4c, 0x09), (0x54, 0x09)]);

        // Only the writable body bits change; the header stays.
        space.write(0x40, &[0xff; 4]);
        assert_eq!(read32(&space, 0x40), 0xc201_4c11);
        let too_big = [0u8; 200];
        assert_eq!(
            space.add_capability(0x10, &too_big, &[]),
            Err(PciError::CapabilitySpace { id: 0x10, size: 202 })
        );
    }

    #[test]
    fn any_offset_and_size_is_harmless() {
        let mut space = ConfigSpace::new(IDS);
        space.add_memory_bar(0, 0x1000).unwrap();
        for offset in (0..EXTENDED_CONFIG_SPACE_SIZE + 8).step_by(3).chain([usize::MAX - 1, usize::MAX]) {
            for len in [0usize, 1, 2, 3, 4, 8] {
                let mut data = vec![0xa5u8; len];
                space.read(offset, &mut data);
                if offset >= CONFIG_SPACE_SIZE {
                    assert!(data.iter().all(|&b| b == 0), "{offset:#x}+{len}");
                }
                space.write(offset, &vec![0xffu8; len]);
            }
        }
        assert_eq!(space.u16_at(VENDOR_ID), 0x1af4);
    }
}
