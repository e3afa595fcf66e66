//! The root bus: which function answers a configuration access, and where each BAR sits on the
//! MMIO bus.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use super::config_space::{BarMapping, NUM_BARS};
use super::host_bridge::HostBridge;
use super::{PciDevice, PciError};
use crate::{Bus, BusDevice, GuestErrorLog};

/// Device numbers on a bus.
const SLOTS: usize = 32;

/// A device on the root bus and where its BARs are.
struct Slot {
    device: Arc<Mutex<dyn PciDevice>>,
    /// Each BAR as its registers said at the last check.
    programmed: [Option<BarMapping>; NUM_BARS],
    /// Whether that BAR is on the MMIO bus (it is not when it would overlap another device).
    on_bus: [bool; NUM_BARS],
}

/// PCI bus 0: the host bridge in slot 0 and up to 31 devices, function 0 each.
pub struct PciRoot {
    slots: Vec<Option<Slot>>,
    /// Weak: the bus holds the ECAM window, which holds this root; a strong reference back would
    /// keep every device (and its worker thread and file descriptors) alive after the VM is gone.
    mmio_bus: Weak<Bus>,
    /// The guest places the BARs, so a BAR it moves over another device's is its doing.
    guest_errors: GuestErrorLog,
}

impl PciRoot {
    /// A bus with only the host bridge; BARs are mapped on `mmio_bus`.
    pub fn new(mmio_bus: &Arc<Bus>) -> PciRoot {
        let mut root = PciRoot {
            slots: (0..SLOTS).map(|_| None).collect(),
            mmio_bus: Arc::downgrade(mmio_bus),
            guest_errors: GuestErrorLog::new("PCI root"),
        };
        root.slots[0] = Some(Slot::new(Arc::new(Mutex::new(HostBridge::new()))));
        root
    }

    /// Puts `device` in the lowest free slot and returns the slot's device number.
    pub fn add_device(&mut self, device: Arc<Mutex<dyn PciDevice>>) -> Result<u8, PciError> {
        let index = self.slots.iter().position(Option::is_none).ok_or(PciError::NoFreeSlot)?;
        self.slots[index] = Some(Slot::new(device));
        self.sync_bars(index);
        Ok(index as u8)
    }

    /// Reads function `bus:device.function`'s configuration space at `offset`; functions that do
    /// not exist read as all ones (a master abort).
    pub fn read_config(&self, bus: u8, device: u8, function: u8, offset: usize, data: &mut [u8]) {
        match self.slot(bus, device, function) {
            Some(slot) => lock(&slot.device).read_config(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Writes function `bus:device.function`'s configuration space at `offset`, then moves its
    /// BARs if the write changed where they are.
    pub fn write_config(&mut self, bus: u8, device: u8, function: u8, offset: usize, data: &[u8]) {
        let Some(slot) = self.slot(bus, device, function) else { return };
        lock(&slot.device).write_config(offset, data);
        self.sync_bars(usize::from(device));
    }

    /// Makes the MMIO bus match every device's BARs, after their configuration spaces were
    /// restored from a snapshot.
    pub fn sync_all_bars(&mut self) {
        for index in 0..self.slots.len() {
            self.sync_bars(index);
        }
    }

    fn slot(&self, bus: u8, device: u8, function: u8) -> Option<&Slot> {
        if bus != 0 || function != 0 {
            return None;
        }
        self.slots.get(usize::from(device))?.as_ref()
    }

    /// Makes the MMIO bus match the BARs of the device in slot `index`.
    fn sync_bars(&mut self, index: usize) {
        // No bus: the VM is being torn down, and there is nothing left to map BARs on.
        let Some(mmio_bus) = self.mmio_bus.upgrade() else { return };
        let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else { return };
        let wanted: [Option<BarMapping>; NUM_BARS] = {
            let device = lock(&slot.device);
            std::array::from_fn(|bar| device.config().bar_mapping(bar))
        };
        for (bar, wanted) in wanted.into_iter().enumerate() {
            if wanted == slot.programmed[bar] {
                continue;
            }
            if let (Some(old), true) = (slot.programmed[bar], slot.on_bus[bar]) {
                mmio_bus.remove(old.address);
            }
            slot.on_bus[bar] = false;
            if let Some(new) = wanted {
                let window = Arc::new(Mutex::new(BarWindow { device: slot.device.clone(), bar }));
                match mmio_bus.insert(window, new.address, new.size) {
                    Ok(()) => slot.on_bus[bar] = true,
                    Err(e) => self
                        .guest_errors
                        .log(format_args!("00:{index:02x}.0 BAR {bar}: {e}; the BAR stays unmapped")),
                }
            }
            slot.programmed[bar] = wanted;
            let address = wanted.filter(|_| slot.on_bus[bar]).map(|m| m.address);
            lock(&slot.device).bar_moved(bar, address);
        }
    }
}

impl Slot {
    fn new(device: Arc<Mutex<dyn PciDevice>>) -> Slot {
        Slot { device, programmed: [None; NUM_BARS], on_bus: [false; NUM_BARS] }
    }
}

/// One BAR of a device, as it appears on the MMIO bus.
struct BarWindow {
    device: Arc<Mutex<dyn PciDevice>>,
    bar: usize,
}

impl BusDevice for BarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.device).read_bar(self.bar, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.device).write_bar(self.bar, offset, data);
    }
}

/// Locks a device, carrying on after a panic elsewhere (as the bus does).
fn lock(device: &Mutex<dyn PciDevice>) -> MutexGuard<'_, dyn PciDevice + 'static> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pci::config_space::tests::IDS;
    use crate::pci::config_space::{ConfigSpace, BAR0, COMMAND, COMMAND_MEMORY_SPACE};

    /// A device with one 4 KiB BAR that remembers every access and every move.
    pub(crate) struct TestDevice {
        pub(crate) config: ConfigSpace,
        pub(crate) moves: Vec<(usize, Option<u64>)>,
        pub(crate) last_write: Option<(usize, u64, Vec<u8>)>,
    }

    impl TestDevice {
        pub(crate) fn new(bar_address: u32) -> TestDevice {
            let mut config = ConfigSpace::new(IDS);
            config.add_memory_bar(0, 0x1000).unwrap();
            config.set_bar_address(0, bar_address);
            TestDevice { config, moves: Vec::new(), last_write: None }
        }
    }

    impl PciDevice for TestDevice {
        fn config(&self) -> &ConfigSpace {
            &self.config
        }

        fn write_config(&mut self, offset: usize, data: &[u8]) {
            self.config.write(offset, data);
        }

        fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            data.fill(bar as u8 + offset as u8);
        }

        fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.last_write = Some((bar, offset, data.to_vec()));
        }

        fn bar_moved(&mut self, bar: usize, address: Option<u64>) {
            self.moves.push((bar, address));
        }
    }

    fn read32(root: &PciRoot, device: u8, offset: usize) -> u32 {
        let mut data = [0u8; 4];
        root.read_config(0, device, 0, offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write32(root: &mut PciRoot, device: u8, offset: usize, value: u32) {
        root.write_config(0, device, 0, offset, &value.to_le_bytes());
    }

    #[test]
    fn host_bridge_and_absent_functions() {
        let root = PciRoot::new(&Arc::new(Bus::new()));
        assert_eq!(read32(&root, 0, 0), 0x0d57_8086);
        assert_eq!(read32(&root, 0, 8) >> 8, 0x06_0000, "class: host bridge");
        assert_eq!(read32(&root, 1, 0), 0xffff_ffff);
        let mut data = [0u8; 4];
        root.read_config(0, 0, 1, 0, &mut data);
        assert_eq!(data, [0xff; 4], "function 1");
        root.read_config(1, 0, 0, 0, &mut data);
        assert_eq!(data, [0xff; 4], "bus 1");
        root.read_config(0, 200, 0, 0, &mut data);
        assert_eq!(data, [0xff; 4], "device number past the bus");
    }

    #[test]
    fn a_bar_is_on_the_bus_while_decoded_and_follows_the_guest() {
        let bus = Arc::new(Bus::new());
        let mut root = PciRoot::new(&bus);
        let device = Arc::new(Mutex::new(TestDevice::new(0xe000_0000)));
        assert_eq!(root.add_device(device.clone()), Ok(1));
        let mut byte = [0u8];
        assert!(!bus.read(0xe000_0010, &mut byte), "memory decoding is off at reset");

        write32(&mut root, 1, COMMAND, u32::from(COMMAND_MEMORY_SPACE));
        assert!(bus.read(0xe000_0010, &mut byte));
        assert_eq!(byte, [0x10]);
        assert!(bus.write(0xe000_0ffc, &[1, 2, 3, 4]));
        assert_eq!(device.lock().unwrap().last_write, Some((0, 0xffc, vec![1, 2, 3, 4])));

        // The guest moves the BAR: the old window is gone, the new one answers.
        write32(&mut root, 1, BAR0, 0xe010_0000);
        assert!(!bus.read(0xe000_0010, &mut byte));
        assert!(bus.read(0xe010_0010, &mut byte));

        // Sizing with decoding off moves nothing onto the bus.
        write32(&mut root, 1, COMMAND, 0);
        write32(&mut root, 1, BAR0, 0xffff_ffff);
        assert_eq!(read32(&root, 1, BAR0), 0xffff_f000);
        write32(&mut root, 1, BAR0, 0xe010_0000);
        assert!(!bus.read(0xe010_0010, &mut byte));
        write32(&mut root, 1, COMMAND, u32::from(COMMAND_MEMORY_SPACE));
        assert!(bus.read(0xe010_0010, &mut byte));

        assert_eq!(
            device.lock().unwrap().moves,
            [(0, Some(0xe000_0000)), (0, Some(0xe010_0000)), (0, None), (0, Some(0xe010_0000))]
        );
    }

    #[test]
    fn a_bar_over_another_device_stays_unmapped() {
        let bus = Arc::new(Bus::new());
        let mut root = PciRoot::new(&bus);
        let first = Arc::new(Mutex::new(TestDevice::new(0xe000_0000)));
        let second = Arc::new(Mutex::new(TestDevice::new(0xe000_1000)));
        root.add_device(first.clone()).unwrap();
        root.add_device(second.clone()).unwrap();
        write32(&mut root, 1, COMMAND, u32::from(COMMAND_MEMORY_SPACE));
        write32(&mut root, 2, BAR0, 0xe000_0000);
        write32(&mut root, 2, COMMAND, u32::from(COMMAND_MEMORY_SPACE));
        assert_eq!(second.lock().unwrap().moves, [(0, None)]);
        // Moving it somewhere free maps it.
        write32(&mut root, 2, BAR0, 0xe000_2000);
        assert!(bus.read(0xe000_2000, &mut [0u8]));
        assert!(bus.read(0xe000_0000, &mut [0u8]), "the first device kept its window");
    }

    #[test]
    fn a_guest_that_keeps_overlapping_bars_gets_a_few_lines_and_a_count() {
        use crate::guest_log::{capture, LINES_PER_INTERVAL};

        let bus = Arc::new(Bus::new());
        let mut root = PciRoot::new(&bus);
        root.add_device(Arc::new(Mutex::new(TestDevice::new(0xe000_0000)))).unwrap();
        root.add_device(Arc::new(Mutex::new(TestDevice::new(0xe000_0000)))).unwrap();
        write32(&mut root, 1, COMMAND, u32::from(COMMAND_MEMORY_SPACE));
        let ((), lines) = capture::lines(|| {
            // Each enable maps the second BAR over the first again.
            for _ in 0..5000 {
                write32(&mut root, 2, COMMAND, u32::from(COMMAND_MEMORY_SPACE));
                write32(&mut root, 2, COMMAND, 0);
            }
            root.guest_errors.flush();
        });
        let warned = capture::warnings(&lines);
        assert_eq!(warned.len(), LINES_PER_INTERVAL as usize + 1, "{warned:?}");
        assert!(warned[0].starts_with("PCI root: 00:02.0 BAR 0"), "{warned:?}");
        assert!(warned.last().unwrap().contains("4990 more problems"), "{warned:?}");
    }

    #[test]
    fn devices_are_freed_with_the_bus() {
        // The bus holds the ECAM window, the window holds the root, the root holds the devices:
        // dropping the bus must free them all.
        let bus = Arc::new(Bus::new());
        let device = Arc::new(Mutex::new(TestDevice::new(0xe000_0000)));
        let device_alive = Arc::downgrade(&device);
        let mut root = PciRoot::new(&bus);
        root.add_device(device).unwrap();
        write32(&mut root, 1, COMMAND, u32::from(COMMAND_MEMORY_SPACE));
        let root = Arc::new(Mutex::new(root));
        bus.insert(Arc::new(Mutex::new(crate::pci::PciConfigMmio::new(root))), 0xc800_0000, 0x10_0000)
            .unwrap();
        assert!(device_alive.upgrade().is_some());
        drop(bus);
        assert!(device_alive.upgrade().is_none(), "a reference cycle keeps the device alive");
    }

    #[test]
    fn slots_run_out() {
        let mut root = PciRoot::new(&Arc::new(Bus::new()));
        for slot in 1..32 {
            assert_eq!(root.add_device(Arc::new(Mutex::new(TestDevice::new(0)))), Ok(slot));
        }
        assert_eq!(root.add_device(Arc::new(Mutex::new(TestDevice::new(0)))), Err(PciError::NoFreeSlot));
    }
}
