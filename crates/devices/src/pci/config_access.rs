//! The guest's two ways into configuration space: the type-1 mechanism on ports 0xCF8 (address)
//! and 0xCFC–0xCFF (data), which Linux uses without ACPI, and ECAM, a memory window with 4 KiB
//! per function, which needs ACPI (MCFG) to be declared.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::root::PciRoot;
use crate::BusDevice;

/// First port of the type-1 mechanism: CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC.
pub const CONFIG_IO_PORT: u64 = 0xcf8;
/// Ports the mechanism occupies.
pub const CONFIG_IO_PORT_COUNT: u64 = 8;
/// Offset of CONFIG_DATA from [`CONFIG_IO_PORT`].
const DATA_PORT_OFFSET: u64 = 4;
/// CONFIG_ADDRESS: configuration cycles are generated only while this bit is set.
const ADDRESS_ENABLE: u32 = 1 << 31;
/// CONFIG_ADDRESS bits 1:0 are read-only zero; bits 27:24 carry register bits 11:8 (AMD's
/// extension for extended configuration space, which Linux uses on AMD hosts).
const ADDRESS_WRITABLE: u32 = 0x8fff_fffc;

/// CONFIG_ADDRESS and CONFIG_DATA.
pub struct PciConfigIo {
    root: Arc<Mutex<PciRoot>>,
    address: u32,
}

impl PciConfigIo {
    pub fn new(root: Arc<Mutex<PciRoot>>) -> PciConfigIo {
        PciConfigIo { root, address: 0 }
    }

    /// The function and register CONFIG_ADDRESS selects, plus `byte` (0–3) into the data port;
    /// None while configuration cycles are disabled.
    fn target(&self, byte: u64) -> Option<(u8, u8, u8, usize)> {
        if self.address & ADDRESS_ENABLE == 0 {
            return None;
        }
        let bus = (self.address >> 16) as u8;
        let device = ((self.address >> 11) & 0x1f) as u8;
        let function = ((self.address >> 8) & 0x7) as u8;
        let register = ((self.address >> 16) & 0xf00) | (self.address & 0xfc);
        Some((bus, device, function, register as usize + byte as usize))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.address.to_le_bytes());
        } else if let Some((bus, device, function, register)) =
            offset.checked_sub(DATA_PORT_OFFSET).and_then(|byte| self.target(byte))
        {
            lock(&self.root).read_config(bus, device, function, register, data);
        } else {
            // Narrow reads of CONFIG_ADDRESS (the type-2 probe) and disabled cycles.
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            // Only a dword write reaches CONFIG_ADDRESS; Linux's probe writes a byte to 0xCFB,
            // which on real chipsets selects the mechanism and must not disturb the address.
            if let Ok(bytes) = <[u8; 4]>::try_from(data) {
                self.address = u32::from_le_bytes(bytes) & ADDRESS_WRITABLE;
            }
        } else if let Some((bus, device, function, register)) =
            offset.checked_sub(DATA_PORT_OFFSET).and_then(|byte| self.target(byte))
        {
            lock(&self.root).write_config(bus, device, function, register, data);
        }
    }
}

/// The ECAM window of bus 0: 32 devices × 8 functions × 4 KiB.
pub struct PciConfigMmio {
    root: Arc<Mutex<PciRoot>>,
}

impl PciConfigMmio {
    pub fn new(root: Arc<Mutex<PciRoot>>) -> PciConfigMmio {
        PciConfigMmio { root }
    }
}

/// Splits an ECAM offset into bus, device, function and register.
fn ecam_target(offset: u64) -> (u8, u8, u8, usize) {
    let bus = (offset >> 20).min(0xff) as u8;
    let device = ((offset >> 15) & 0x1f) as u8;
    let function = ((offset >> 12) & 0x7) as u8;
    (bus, device, function, (offset & 0xfff) as usize)
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (bus, device, function, register) = ecam_target(offset);
        lock(&self.root).read_config(bus, device, function, register, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (bus, device, function, register) = ecam_target(offset);
        lock(&self.root).write_config(bus, device, function, register, data);
    }
}

fn lock(root: &Mutex<PciRoot>) -> MutexGuard<'_, PciRoot> {
    root.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config_space::{BAR0, COMMAND};
    use crate::pci::root::tests::TestDevice;
    use crate::Bus;

    fn setup() -> (PciConfigIo, PciConfigMmio) {
        let mut root = PciRoot::new(&Arc::new(Bus::new()));
        root.add_device(Arc::new(Mutex::new(TestDevice::new(0xe000_0000)))).unwrap();
        let root = Arc::new(Mutex::new(root));
        (PciConfigIo::new(root.clone()), PciConfigMmio::new(root))
    }

    fn io_read(io: &mut PciConfigIo, device: u8, register: u32, len: usize) -> Vec<u8> {
        io.write(0, &(ADDRESS_ENABLE | u32::from(device) << 11 | (register & 0xfc)).to_le_bytes());
        let mut data = vec![0u8; len];
        io.read(DATA_PORT_OFFSET + u64::from(register & 3), &mut data);
        data
    }

    fn ecam_read(ecam: &mut PciConfigMmio, device: u8, register: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        ecam.read(u64::from(device) << 15 | register, &mut data);
        data
    }

    #[test]
    fn the_linux_type1_probe_succeeds() {
        let (mut io, _) = setup();
        io.write(3, &[1]); // outb(0x01, 0xCFB)
        let mut saved = [0u8; 4];
        io.read(0, &mut saved);
        io.write(0, &0x8000_0000u32.to_le_bytes());
        let mut readback = [0u8; 4];
        io.read(0, &mut readback);
        assert_eq!(u32::from_le_bytes(readback), 0x8000_0000);
        // The sanity check then finds a host bridge on bus 0.
        assert_eq!(io_read(&mut io, 0, 0x0a, 2), 0x0600u16.to_le_bytes());
    }

    #[test]
    fn both_mechanisms_agree_at_every_size() {
        let (mut io, mut ecam) = setup();
        for device in [0u8, 1, 2] {
            for register in 0..0x40u32 {
                for len in [1usize, 2, 4] {
                    if register as usize & (len - 1) != 0 {
                        continue;
                    }
                    let through_io = io_read(&mut io, device, register, len);
                    let through_ecam = ecam_read(&mut ecam, device, u64::from(register), len);
                    assert_eq!(through_io, through_ecam, "device {device} register {register:#x} len {len}");
                }
            }
        }
        assert_eq!(ecam_read(&mut ecam, 1, 0, 4), 0x1044_1af4u32.to_le_bytes());
        assert_eq!(ecam_read(&mut ecam, 2, 0, 4), [0xff; 4], "absent device");
        assert_eq!(ecam_read(&mut ecam, 1, 0x100, 4), [0; 4], "extended space reads as zero");
    }

    #[test]
    fn writes_through_either_mechanism_land_in_the_same_register() {
        let (mut io, mut ecam) = setup();
        // A byte write to the interrupt line through 0xCFC.
        io.write(0, &(ADDRESS_ENABLE | 1 << 11 | 0x3c).to_le_bytes());
        io.write(DATA_PORT_OFFSET, &[9]);
        assert_eq!(ecam_read(&mut ecam, 1, 0x3c, 1), [9]);
        ecam.write(1 << 15 | BAR0 as u64, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(io_read(&mut io, 1, BAR0 as u32, 4), 0xffff_f000u32.to_le_bytes(), "BAR size mask");
        io.write(0, &(ADDRESS_ENABLE | 1 << 11 | COMMAND as u32).to_le_bytes());
        io.write(DATA_PORT_OFFSET + 2, &[0xff, 0xff]);
        assert_eq!(ecam_read(&mut ecam, 1, COMMAND as u64 + 2, 2), [0, 0], "status is read-only");
    }

    #[test]
    fn disabled_cycles_and_odd_accesses_are_harmless() {
        let (mut io, mut ecam) = setup();
        io.write(0, &(1u32 << 11).to_le_bytes()); // enable bit clear
        let mut data = [0u8; 4];
        io.read(DATA_PORT_OFFSET, &mut data);
        assert_eq!(data, [0xff; 4]);
        io.write(DATA_PORT_OFFSET, &[0; 4]);
        for offset in 0..CONFIG_IO_PORT_COUNT {
            for len in [1usize, 2, 3, 4, 8] {
                io.write(0, &u32::MAX.to_le_bytes());
                let mut data = vec![0u8; len];
                io.read(offset, &mut data);
                io.write(offset, &vec![0xffu8; len]);
            }
        }
        for offset in (0..0x10_0000u64).step_by(0x7ff).chain([0xfff, 0xffe, u64::MAX]) {
            for len in [1usize, 2, 4, 8] {
                let mut data = vec![0u8; len];
                ecam.read(offset, &mut data);
                ecam.write(offset, &vec![0u8; len]);
            }
        }
    }
}
