//! MSI-X (PCI 3.0, section 6.8.2): a table of vectors, each an MSI message with its own mask bit,
//! and a pending-bit array (PBA), both in a memory BAR; enable and function-mask bits in the
//! capability's message control register.
//!
//! A vector that fires while masked (by its own bit or the function mask) is not delivered: its
//! pending bit is set, and it is delivered when the guest unmasks it. Delivery goes through an
//! [`MsixDelivery`]: in the VMM, a KVM GSI route and an irqfd per vector, so a trigger is one
//! eventfd write and KVM injects the interrupt without a trip through userspace.

use std::io;
use std::sync::Arc;

use crate::ioapic::MsiMessage;
use crate::{GuestErrorLog, RestoreError};

/// Pending vectors that cannot be delivered when the guest unmasks them: the guest can toggle
/// masks as fast as it likes, so the lines are limited.
static PENDING_ERRORS: GuestErrorLog = GuestErrorLog::site("MSI-X pending deliveries");

/// Bytes per table entry: message address low and high, message data, vector control.
pub const TABLE_ENTRY_SIZE: u64 = 16;
/// The capability's ID in the capability list.
pub const CAPABILITY_ID: u8 = 0x11;
/// Most vectors a function can have (the table size field is 11 bits).
pub const MAX_VECTORS: u16 = 2048;
/// Message control: the function may use MSI-X.
const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: every vector is masked, whatever its own mask bit says.
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: this vector is masked.
const VECTOR_MASKED: u32 = 1;

/// Where MSI-X vectors go; implemented by the VMM.
pub trait MsixDelivery: Send + Sync {
    /// Vector `vector` sends `message` from now on (called before its first trigger, and again
    /// whenever the guest changed the message while the vector was masked).
    fn set_route(&self, vector: u16, message: MsiMessage) -> io::Result<()>;
    /// Sends one interrupt on `vector`.
    fn trigger(&self, vector: u16) -> io::Result<()>;
}

#[derive(Clone, Copy, Debug)]
struct Vector {
    message: MsiMessage,
    masked: bool,
    pending: bool,
    /// The message last given to [`MsixDelivery::set_route`].
    routed: Option<MsiMessage>,
}

impl Vector {
    /// Every vector is masked at reset (PCI 3.0, 6.8.2.9).
    const RESET: Vector = Vector {
        message: MsiMessage { address_lo: 0, address_hi: 0, data: 0 },
        masked: true,
        pending: false,
        routed: None,
    };
}

/// One function's MSI-X state as a snapshot keeps it: per vector its message (address low and
/// high, data), mask and pending bits; and the function's enable and mask bits.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsixSnapshot {
    pub(crate) vectors: Vec<(u32, u32, u32, bool, bool)>,
    pub(crate) enabled: bool,
    pub(crate) function_masked: bool,
}

/// The MSI-X state of one function.
pub struct Msix {
    vectors: Vec<Vector>,
    enabled: bool,
    function_masked: bool,
    delivery: Arc<dyn MsixDelivery>,
}

impl Msix {
    /// `count` vectors (at most [`MAX_VECTORS`]), all masked, MSI-X disabled.
    pub fn new(count: u16, delivery: Arc<dyn MsixDelivery>) -> Msix {
        let count = count.min(MAX_VECTORS);
        Msix {
            vectors: vec![Vector::RESET; usize::from(count)],
            enabled: false,
            function_masked: false,
            delivery,
        }
    }

    /// The table and control bits, for a snapshot.
    pub fn snapshot(&self) -> MsixSnapshot {
        MsixSnapshot {
            vectors: self
                .vectors
                .iter()
                .map(|v| (v.message.address_lo, v.message.address_hi, v.message.data, v.masked, v.pending))
                .collect(),
            enabled: self.enabled,
            function_masked: self.function_masked,
        }
    }

    /// Takes a saved table and control bits: exactly as many vectors as this table has (none past
    /// it); their messages are any the guest could have written. Routes are set again lazily, on
    /// each vector's next delivery; vectors pending and deliverable now are delivered.
    pub fn restore(&mut self, saved: &MsixSnapshot) -> Result<(), RestoreError> {
        if saved.vectors.len() != self.vectors.len() {
            return Err(RestoreError::Length {
                component: "MSI-X",
                field: "vector table",
                saved: saved.vectors.len(),
                expected: self.vectors.len(),
            });
        }
        for (vector, &(address_lo, address_hi, data, masked, pending)) in
            self.vectors.iter_mut().zip(&saved.vectors)
        {
            *vector = Vector {
                message: MsiMessage { address_lo, address_hi, data },
                masked,
                pending,
                routed: None,
            };
        }
        self.enabled = saved.enabled;
        self.function_masked = saved.function_masked;
        self.deliver_pending();
        Ok(())
    }

    /// Number of vectors in the table.
    pub fn count(&self) -> u16 {
        self.vectors.len() as u16
    }

    /// The capability's message control register at reset: the table size (N - 1).
    pub fn control_at_reset(&self) -> u16 {
        self.count().saturating_sub(1)
    }

    /// The message control bits the guest may write.
    pub const CONTROL_WRITABLE: u16 = CONTROL_ENABLE | CONTROL_FUNCTION_MASK;

    /// Whether the guest enabled MSI-X.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the guest masked every vector with the function mask.
    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    /// The guest wrote the capability's message control register.
    pub fn set_control(&mut self, control: u16) {
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        self.deliver_pending();
    }

    /// Reads the vector table at `offset`: dword or aligned qword accesses; others read zero.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !access_is_valid(offset, data.len()) {
            return;
        }
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            if let Some(value) = offset.checked_add(4 * i as u64).and_then(|at| self.table_dword(at)) {
                chunk.copy_from_slice(&value.to_le_bytes());
            }
        }
    }

    /// Writes the vector table at `offset`: dword or aligned qword accesses; others are ignored.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        if !access_is_valid(offset, data.len()) {
            return;
        }
        for (i, chunk) in data.chunks(4).enumerate() {
            let (Some(at), Ok(bytes)) = (offset.checked_add(4 * i as u64), <[u8; 4]>::try_from(chunk)) else {
                return;
            };
            self.write_table_dword(at, u32::from_le_bytes(bytes));
        }
    }

    /// Reads the pending-bit array at `offset` (dword or aligned qword); writes to it are ignored.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !access_is_valid(offset, data.len()) {
            return;
        }
        for (i, byte) in data.iter_mut().enumerate() {
            for bit in 0..8 {
                let vector = offset
                    .checked_add(i as u64)
                    .and_then(|byte_offset| byte_offset.checked_mul(8))
                    .and_then(|first| usize::try_from(first + bit).ok())
                    .and_then(|v| self.vectors.get(v));
                *byte |= u8::from(vector.is_some_and(|v| v.pending)) << bit;
            }
        }
    }

    /// Fires `vector`: delivered now if MSI-X is enabled and the vector unmasked, else remembered
    /// as pending. A disabled function or a vector past the table sends nothing (Kestrel has no
    /// INTx to fall back on).
    pub fn trigger(&mut self, vector: u16) -> io::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let function_masked = self.function_masked;
        let Some(entry) = self.vectors.get_mut(usize::from(vector)) else { return Ok(()) };
        if function_masked || entry.masked {
            entry.pending = true;
            return Ok(());
        }
        deliver(self.delivery.as_ref(), vector, entry)
    }

    fn table_dword(&self, at: u64) -> Option<u32> {
        let vector = self.vectors.get(usize::try_from(at / TABLE_ENTRY_SIZE).ok()?)?;
        Some(match at % TABLE_ENTRY_SIZE {
            0 => vector.message.address_lo,
            4 => vector.message.address_hi,
            8 => vector.message.data,
            _ => u32::from(vector.masked) * VECTOR_MASKED,
        })
    }

    fn write_table_dword(&mut self, at: u64, value: u32) {
        let Some(index) = usize::try_from(at / TABLE_ENTRY_SIZE).ok().filter(|&i| i < self.vectors.len())
        else {
            return;
        };
        let vector = &mut self.vectors[index];
        match at % TABLE_ENTRY_SIZE {
            0 => vector.message.address_lo = value,
            4 => vector.message.address_hi = value,
            8 => vector.message.data = value,
            _ => {
                vector.masked = value & VECTOR_MASKED != 0;
                self.deliver_pending();
            }
        }
    }

    /// Delivers every pending vector that is no longer masked.
    fn deliver_pending(&mut self) {
        if !self.enabled || self.function_masked {
            return;
        }
        for (index, vector) in self.vectors.iter_mut().enumerate() {
            if vector.pending && !vector.masked {
                vector.pending = false;
                if let Err(e) = deliver(self.delivery.as_ref(), index as u16, vector) {
                    PENDING_ERRORS.log(format_args!("MSI-X: cannot deliver pending vector {index}: {e}"));
                }
            }
        }
    }
}

/// MSI-X structures take aligned dword and qword accesses only (PCI 3.0, 6.8.2).
fn access_is_valid(offset: u64, len: usize) -> bool {
    // Both lengths are powers of two: aligned means the low bits are clear.
    matches!(len, 4 | 8) && offset & (len as u64 - 1) == 0
}

/// Routes the vector's current message if it changed, then sends it.
fn deliver(delivery: &dyn MsixDelivery, index: u16, vector: &mut Vector) -> io::Result<()> {
    if vector.routed != Some(vector.message) {
        delivery.set_route(index, vector.message)?;
        vector.routed = Some(vector.message);
    }
    vector.pending = false;
    delivery.trigger(index)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use super::*;

    /// What reached the VMM: routes set and vectors triggered, in order.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) enum Delivered {
        Route(u16, MsiMessage),
        Trigger(u16),
    }

    #[derive(Default)]
    pub(crate) struct RecordingDelivery(pub(crate) Mutex<Vec<Delivered>>);

    impl RecordingDelivery {
        pub(crate) fn take(&self) -> Vec<Delivered> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    impl MsixDelivery for RecordingDelivery {
        fn set_route(&self, vector: u16, message: MsiMessage) -> io::Result<()> {
            self.0.lock().unwrap().push(Delivered::Route(vector, message));
            Ok(())
        }

        fn trigger(&self, vector: u16) -> io::Result<()> {
            self.0.lock().unwrap().push(Delivered::Trigger(vector));
            Ok(())
        }
    }

    fn msix(count: u16) -> (Msix, Arc<RecordingDelivery>) {
        let delivery = Arc::new(RecordingDelivery::default());
        (Msix::new(count, delivery.clone()), delivery)
    }

    fn write32(msix: &mut Msix, offset: u64, value: u32) {
        msix.write_table(offset, &value.to_le_bytes());
    }

    fn read32(msix: &Msix, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        msix.read_table(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn pba(msix: &Msix) -> u64 {
        let mut data = [0u8; 8];
        msix.read_pba(0, &mut data);
        u64::from_le_bytes(data)
    }

    const MESSAGE: MsiMessage = MsiMessage { address_lo: 0xfee0_1000, address_hi: 0, data: 0x41 };

    /// Programs vector `v` with MESSAGE, leaving it masked.
    fn program(msix: &mut Msix, v: u64) {
        write32(msix, v * 16, MESSAGE.address_lo);
        write32(msix, v * 16 + 4, MESSAGE.address_hi);
        write32(msix, v * 16 + 8, MESSAGE.data);
    }

    #[test]
    fn table_reads_back_and_vectors_reset_masked() {
        let (mut msix, _) = msix(3);
        assert_eq!(msix.control_at_reset(), 2);
        for v in 0..3 {
            assert_eq!(read32(&msix, v * 16 + 12), 1, "vector {v} masked at reset");
        }
        program(&mut msix, 1);
        assert_eq!(read32(&msix, 16), 0xfee0_1000);
        assert_eq!(read32(&msix, 24), 0x41);
        let mut qword = [0u8; 8];
        msix.read_table(16, &mut qword);
        assert_eq!(u64::from_le_bytes(qword), 0xfee0_1000);
        msix.write_table(32, &0x0000_0001_fee0_2000u64.to_le_bytes());
        assert_eq!(read32(&msix, 32), 0xfee0_2000);
        assert_eq!(read32(&msix, 36), 1);
    }

    #[test]
    fn unmasked_vector_is_routed_then_triggered() {
        let (mut msix, delivery) = msix(2);
        msix.set_control(CONTROL_ENABLE);
        program(&mut msix, 1);
        write32(&mut msix, 16 + 12, 0);
        msix.trigger(1).unwrap();
        msix.trigger(1).unwrap();
        assert_eq!(
            delivery.take(),
            [Delivered::Route(1, MESSAGE), Delivered::Trigger(1), Delivered::Trigger(1)]
        );
    }

    #[test]
    fn a_masked_vector_stays_pending_until_unmasked() {
        let (mut msix, delivery) = msix(2);
        msix.set_control(CONTROL_ENABLE);
        program(&mut msix, 0);
        msix.trigger(0).unwrap();
        msix.trigger(0).unwrap();
        assert_eq!(delivery.take(), []);
        assert_eq!(pba(&msix), 1, "pending bit of vector 0");
        write32(&mut msix, 12, 0);
        assert_eq!(delivery.take(), [Delivered::Route(0, MESSAGE), Delivered::Trigger(0)], "once");
        assert_eq!(pba(&msix), 0);
    }

    #[test]
    fn the_function_mask_holds_every_vector() {
        let (mut msix, delivery) = msix(2);
        msix.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        program(&mut msix, 0);
        program(&mut msix, 1);
        write32(&mut msix, 12, 0);
        write32(&mut msix, 28, 0);
        msix.trigger(1).unwrap();
        assert_eq!(delivery.take(), []);
        assert_eq!(pba(&msix), 0b10);
        msix.set_control(CONTROL_ENABLE);
        assert_eq!(delivery.take(), [Delivered::Route(1, MESSAGE), Delivered::Trigger(1)]);
    }

    #[test]
    fn a_message_changed_while_masked_is_routed_again() {
        let (mut msix, delivery) = msix(1);
        msix.set_control(CONTROL_ENABLE);
        program(&mut msix, 0);
        write32(&mut msix, 12, 0);
        msix.trigger(0).unwrap();
        write32(&mut msix, 12, 1);
        write32(&mut msix, 8, 0x42);
        write32(&mut msix, 12, 0);
        msix.trigger(0).unwrap();
        let moved = MsiMessage { data: 0x42, ..MESSAGE };
        assert_eq!(
            delivery.take(),
            [
                Delivered::Route(0, MESSAGE),
                Delivered::Trigger(0),
                Delivered::Route(0, moved),
                Delivered::Trigger(0)
            ]
        );
    }

    #[test]
    fn disabled_or_missing_vectors_send_nothing() {
        let (mut msix, delivery) = msix(1);
        program(&mut msix, 0);
        write32(&mut msix, 12, 0);
        msix.trigger(0).unwrap();
        msix.set_control(CONTROL_ENABLE);
        msix.trigger(5).unwrap();
        msix.trigger(0xffff).unwrap();
        assert_eq!(delivery.take(), []);
        assert_eq!(pba(&msix), 0);
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let (mut msix, _) = msix(2);
        for offset in (0..0x40).chain([u64::MAX - 7, u64::MAX]) {
            for len in [0usize, 1, 2, 3, 4, 8, 16] {
                let mut data = vec![0xa5u8; len];
                msix.read_table(offset, &mut data);
                if !access_is_valid(offset, len) {
                    assert!(data.iter().all(|&b| b == 0), "{offset:#x}+{len}");
                }
                msix.read_pba(offset, &mut data);
                msix.write_table(offset, &vec![0u8; len]);
            }
        }
    }

    #[test]
    fn a_saved_table_of_another_size_is_refused() {
        let (mut original, _) = msix(2);
        program(&mut original, 1);
        original.set_control(CONTROL_ENABLE);
        let saved = original.snapshot();
        let (mut restored, _) = msix(2);
        restored.restore(&saved).unwrap();
        assert_eq!(read32(&restored, 16), MESSAGE.address_lo);
        assert!(restored.enabled());

        let mut beyond = saved.clone();
        beyond.vectors.push((MESSAGE.address_lo, 0, MESSAGE.data, false, true));
        let error = msix(2).0.restore(&beyond).unwrap_err();
        assert_eq!(
            error,
            RestoreError::Length { component: "MSI-X", field: "vector table", saved: 3, expected: 2 }
        );
        assert!(matches!(msix(3).0.restore(&saved), Err(RestoreError::Length { saved: 2, expected: 3, .. })));
    }
}
