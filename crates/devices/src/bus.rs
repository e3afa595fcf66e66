//! Routes guest port I/O or MMIO accesses to the device that owns the address.
//!
//! One [`Bus`] is used for the I/O port space and another for MMIO. vCPU
//! threads use a bus concurrently: lookups take a shared read lock only long
//! enough to clone the device handle, so two vCPUs touching different devices
//! never wait for each other.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

/// A device reached through a [`Bus`].
///
/// `offset` is relative to the base the device was inserted at. The bus only
/// forwards accesses that lie entirely inside the device's range, but the
/// device must still treat every offset, length and value as untrusted.
pub trait BusDevice: Send {
    /// Fills `data` with the bytes read at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles the guest writing `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Why a device could not be inserted into a [`Bus`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range intersects a range already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    /// A device must own at least one address.
    #[error("bus range at {base:#x} has zero length")]
    ZeroLength { base: u64 },
    /// `base + len` does not fit in a 64-bit address.
    #[error("bus range {base:#x}+{len:#x} runs past the end of the address space")]
    AddressOverflow { base: u64, len: u64 },
}

/// A half-open address range `[base, end)` owned by one device.
///
/// Ranges on a bus never overlap, so ordering them by `base` alone is a total
/// order that lets the map find "the last range starting at or before addr".
#[derive(Debug, Clone, Copy)]
struct BusRange {
    base: u64,
    end: u64,
}

impl PartialEq for BusRange {
    fn eq(&self, other: &Self) -> bool {
        self.base == other.base
    }
}

impl Eq for BusRange {}

impl PartialOrd for BusRange {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BusRange {
    fn cmp(&self, other: &Self) -> Ordering {
        self.base.cmp(&other.base)
    }
}

impl BusRange {
    fn overlaps(&self, other: &BusRange) -> bool {
        self.base < other.end && other.base < self.end
    }

    /// A probe key: only `base` takes part in comparisons.
    fn starting_at(base: u64) -> Self {
        BusRange { base, end: base }
    }
}

type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// An address space populated with devices, safe to share between vCPU threads.
#[derive(Default)]
pub struct Bus {
    devices: RwLock<BTreeMap<BusRange, SharedDevice>>,
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `device` own the addresses `[base, base + len)`.
    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { base });
        }
        let end = base.checked_add(len).ok_or(BusError::AddressOverflow { base, len })?;
        let range = BusRange { base, end };

        let mut devices = self.devices.write().unwrap_or_else(PoisonError::into_inner);
        // Only the nearest neighbours can overlap, because existing ranges are disjoint.
        let previous = devices.range(..=range).next_back();
        let next = devices.range(range..).next();
        if previous.into_iter().chain(next).any(|(existing, _)| existing.overlaps(&range)) {
            return Err(BusError::Overlap { base, len });
        }
        devices.insert(range, device);
        Ok(())
    }

    /// Takes the device whose range starts at `base` off the bus (a PCI BAR the guest moves).
    /// An access already resolved keeps its handle and completes on the removed device.
    pub fn remove(&self, base: u64) -> Option<SharedDevice> {
        let mut devices = self.devices.write().unwrap_or_else(PoisonError::into_inner);
        devices.remove(&BusRange::starting_at(base))
    }

    /// Reads `data.len()` bytes at `addr`. Returns `false`, leaving `data`
    /// untouched, when no single device owns the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                lock_device(&device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes `data` at `addr`. Returns `false` when no single device owns the
    /// whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                lock_device(&device).write(offset, data);
                true
            }
            None => false,
        }
    }

    /// Finds the device owning `[addr, addr + len)` and the offset of `addr`
    /// within it. An access that starts inside a device but runs past its end
    /// is refused rather than truncated, so a device never sees bytes that
    /// belong to a neighbour.
    fn resolve(&self, addr: u64, len: usize) -> Option<(SharedDevice, u64)> {
        let devices = self.devices.read().unwrap_or_else(PoisonError::into_inner);
        let (range, device) = devices.range(..=BusRange::starting_at(addr)).next_back()?;
        let access_end = addr.checked_add(u64::try_from(len).ok()?)?;
        if addr >= range.end || access_end > range.end {
            return None;
        }
        // Clone the handle so the bus lock is released before the device lock
        // is taken: a slow device must not block lookups by other vCPUs.
        Some((Arc::clone(device), addr - range.base))
    }
}

/// Locks a device, carrying on if a previous holder panicked: the device state
/// is still the best we have, and refusing all further guest I/O would only
/// turn one failure into a hung guest.
fn lock_device(device: &SharedDevice) -> MutexGuard<'_, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the last access and answers reads with its offset, so tests can
    /// check which device was reached and at which offset.
    #[derive(Default)]
    struct RecordingDevice {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for RecordingDevice {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }

        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn device() -> Arc<Mutex<RecordingDevice>> {
        Arc::new(Mutex::new(RecordingDevice::default()))
    }

    #[test]
    fn insert_rejects_zero_length_and_overflow() {
        let bus = Bus::new();
        assert_eq!(bus.insert(device(), 0x10, 0), Err(BusError::ZeroLength { base: 0x10 }));
        assert_eq!(
            bus.insert(device(), u64::MAX, 2),
            Err(BusError::AddressOverflow { base: u64::MAX, len: 2 })
        );
    }

    #[test]
    fn insert_rejects_every_kind_of_overlap() {
        let bus = Bus::new();
        bus.insert(device(), 0x100, 0x10).unwrap();
        for (base, len) in [
            (0x100, 0x10), // identical
            (0xf8, 0x10),  // covers the start
            (0x108, 0x10), // covers the end
            (0x104, 0x4),  // inside
            (0x0, 0x1000), // encloses
            (0x10f, 1),    // last byte
        ] {
            assert_eq!(
                bus.insert(device(), base, len),
                Err(BusError::Overlap { base, len }),
                "{base:#x}+{len:#x}"
            );
        }
        // Adjacent ranges on both sides are fine.
        bus.insert(device(), 0xf0, 0x10).unwrap();
        bus.insert(device(), 0x110, 0x10).unwrap();
    }

    #[test]
    fn lookup_at_the_edges_of_a_device() {
        let bus = Bus::new();
        let dev = device();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut byte = [0xaa];

        assert!(!bus.read(0x3f7, &mut byte));
        assert_eq!(byte, [0xaa], "a miss leaves the buffer alone");
        assert!(bus.read(0x3f8, &mut byte));
        assert_eq!(byte, [0]);
        assert!(bus.read(0x3ff, &mut byte));
        assert_eq!(byte, [7]);
        assert!(!bus.read(0x400, &mut byte));

        assert!(bus.write(0x3fb, &[0x80]));
        assert_eq!(dev.lock().unwrap().last_write, Some((3, vec![0x80])));
        assert!(!bus.write(0x400, &[1]));
    }

    #[test]
    fn access_running_past_the_end_is_not_handled() {
        let bus = Bus::new();
        let dev = device();
        bus.insert(dev.clone(), 0x70, 2).unwrap();
        bus.insert(device(), 0x72, 2).unwrap();

        let mut word = [0u8; 2];
        assert!(bus.read(0x70, &mut word), "exactly fits");
        let mut dword = [0u8; 4];
        assert!(!bus.read(0x71, &mut dword), "starts inside, ends in a neighbour");
        assert!(!bus.write(0x71, &[1, 2]));
        assert_eq!(dev.lock().unwrap().last_write, None);
        assert!(!bus.read(u64::MAX, &mut dword), "address arithmetic overflows");
    }

    #[test]
    fn a_removed_device_frees_its_range() {
        let bus = Bus::new();
        bus.insert(device(), 0x1000, 0x100).unwrap();
        assert!(bus.remove(0x1010).is_none(), "only the exact base removes");
        assert!(bus.remove(0x1000).is_some());
        assert!(!bus.read(0x1000, &mut [0u8; 4]));
        assert!(bus.remove(0x1000).is_none());
        bus.insert(device(), 0x1080, 0x100).unwrap();
    }

    #[test]
    fn empty_bus_handles_nothing() {
        let bus = Bus::new();
        assert!(!bus.read(0, &mut [0u8; 8]));
        assert!(!bus.write(u64::MAX, &[0]));
    }
}
