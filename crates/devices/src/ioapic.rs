//! The userspace IOAPIC of KVM's split irqchip: 24 interrupt pins whose
//! redirection entries turn pin activity into MSIs for the in-kernel local
//! APICs.
//!
//! # Guest interface
//! MMIO at `0xFEC00000` ([`IOAPIC_BASE`], length [`IOAPIC_SIZE`]), 32-bit
//! accesses only: IOREGSEL at offset 0x00, IOWIN at 0x10 and, because this
//! IOAPIC reports version 0x20, the EOI register at 0x40 (writing a vector
//! there has the same effect as a local APIC EOI broadcast). Accesses of
//! other sizes or at other offsets read as 0 and are otherwise ignored.
//!
//! Registers: ID (0x00, bits 24-27 writable), VER (0x01: version 0x20, 24
//! redirection entries), ARB (0x02, mirrors the ID) and the redirection table
//! at 0x10-0x3F, two dwords per pin. Entries reset masked.
//!
//! # Delivery
//! * Edge pins deliver on each rising edge. An edge raised through
//!   [`Ioapic::service_pin`] on a masked pin is remembered and delivered once
//!   when the guest unmasks the pin, so a device interrupt raised while the
//!   guest briefly masked the line is not lost (at worst the guest sees one
//!   spurious interrupt). Devices that raise a pin through a KVM irqfd bypass
//!   this model: KVM drops their signal while the pin has no route, and the
//!   VMM resends it on unmask (see `redirection_changed`).
//! * Level pins deliver while asserted, unmasked and with remote IRR clear;
//!   delivery sets remote IRR, and the guest's EOI for the vector
//!   ([`Ioapic::end_of_interrupt`]) clears it and delivers again if the pin
//!   is still asserted.
//! * Pin polarity is not modelled: `asserted` is the logical state.
//! * Destinations are the 8-bit APIC IDs of bits 56-63 of an entry.
//!
//! # What the VMM must wire up
//! KVM only exits with `KVM_EXIT_IOAPIC_EOI` for vectors it knows a
//! level-triggered IOAPIC route uses, and it learns those from the GSI routing
//! table (`KVM_SET_GSI_ROUTING`), not from `KVM_SIGNAL_MSI`. The VMM should
//! therefore enable the split irqchip with 24 IOAPIC pins and mirror every
//! entry it is told about through [`MsiSink::redirection_changed`] as the MSI
//! route of GSI `pin`; otherwise level-triggered pins stay blocked on remote
//! IRR after their first interrupt.
//!
//! # Locking
//! The IOAPIC is shared as `Arc<Mutex<Ioapic>>`. It never calls back into a
//! device, only into its [`MsiSink`], so devices may raise pins while holding
//! their own lock (device first, IOAPIC second).

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::{BusDevice, GuestErrorLog, InterruptLine, RestoreError};

/// Routes and MSIs that KVM refuses: the guest writes the redirection entries they come from,
/// and can make one fail per interrupt, so the lines are limited.
static DELIVERY_ERRORS: GuestErrorLog = GuestErrorLog::site("ioapic deliveries");

/// Guest-physical address of the IOAPIC's registers.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// Length of the IOAPIC's MMIO window.
pub const IOAPIC_SIZE: u64 = 0x1000;
/// Number of interrupt pins (and redirection entries).
pub const NUM_PINS: usize = 24;

// MMIO offsets.
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const EOI: u64 = 0x40;

// Indirect registers selected through IOREGSEL.
const REG_ID: u8 = 0x00;
const REG_VERSION: u8 = 0x01;
const REG_ARBITRATION: u8 = 0x02;
const REG_REDIRECTION_TABLE: u8 = 0x10;

/// Version 0x20 has the EOI register; Linux uses it instead of briefly
/// switching a pin to edge mode to clear a stuck remote IRR.
const VERSION: u32 = 0x20;
const VERSION_REGISTER: u32 = ((NUM_PINS as u32 - 1) << 16) | VERSION;
/// The 4-bit IOAPIC ID lives in bits 24-27 of the ID register.
const ID_MASK: u32 = 0x0f00_0000;

/// An MSI as the local APICs receive it (`KVM_SIGNAL_MSI` layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    pub address_lo: u32,
    pub address_hi: u32,
    pub data: u32,
}

/// Where the IOAPIC sends its interrupts; implemented by the VMM.
pub trait MsiSink: Send + Sync {
    /// Delivers one interrupt (for the split irqchip: `KVM_SIGNAL_MSI`).
    fn send_msi(&self, msg: MsiMessage) -> io::Result<()>;

    /// Called whenever the guest writes redirection entry `pin`, with the MSI
    /// the pin now delivers, or None while it is masked. The VMM should install
    /// it as the MSI route of GSI `pin` (and remove the route while masked) so
    /// that KVM reports EOIs of level-triggered vectors and an irqfd bound to
    /// GSI `pin` delivers exactly as the pin would (see the module
    /// documentation). Does nothing by default.
    fn redirection_changed(&self, pin: usize, route: Option<MsiMessage>) -> io::Result<()> {
        let _ = (pin, route);
        Ok(())
    }
}

/// Errors of the IOAPIC's host-facing API.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IoapicError {
    #[error("IOAPIC pin {0} does not exist (the IOAPIC has {NUM_PINS} pins)")]
    InvalidPin(usize),
}

/// The IOAPIC's registers and pin states, as a snapshot keeps them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoapicSnapshot {
    pub(crate) id_register: u32,
    pub(crate) selected_register: u8,
    /// Per pin: the redirection entry, the line's level, an edge held while masked.
    pub(crate) pins: Vec<(u64, bool, bool)>,
}

/// One 64-bit redirection table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RedirectionEntry(u64);

impl RedirectionEntry {
    const VECTOR_MASK: u64 = 0xff;
    const DELIVERY_MODE_SHIFT: u32 = 8;
    const DELIVERY_MODE_MASK: u64 = 0b111;
    const DELIVERY_MODE_LOWEST_PRIORITY: u64 = 1;
    const DESTINATION_MODE_LOGICAL: u64 = 1 << 11;
    const DELIVERY_STATUS: u64 = 1 << 12;
    const REMOTE_IRR: u64 = 1 << 14;
    const TRIGGER_MODE_LEVEL: u64 = 1 << 15;
    const MASKED: u64 = 1 << 16;
    const DESTINATION_SHIFT: u32 = 56;
    /// Bits the guest cannot write: they report the IOAPIC's own state.
    const READ_ONLY: u64 = Self::DELIVERY_STATUS | Self::REMOTE_IRR;

    const RESET: Self = RedirectionEntry(Self::MASKED);

    fn vector(self) -> u8 {
        (self.0 & Self::VECTOR_MASK) as u8
    }

    fn delivery_mode(self) -> u64 {
        (self.0 >> Self::DELIVERY_MODE_SHIFT) & Self::DELIVERY_MODE_MASK
    }

    fn is_level_triggered(self) -> bool {
        self.0 & Self::TRIGGER_MODE_LEVEL != 0
    }

    fn is_masked(self) -> bool {
        self.0 & Self::MASKED != 0
    }

    fn remote_irr(self) -> bool {
        self.0 & Self::REMOTE_IRR != 0
    }

    fn set_remote_irr(&mut self, set: bool) {
        if set {
            self.0 |= Self::REMOTE_IRR;
        } else {
            self.0 &= !Self::REMOTE_IRR;
        }
    }

    fn dword(self, high: bool) -> u32 {
        if high {
            (self.0 >> 32) as u32
        } else {
            self.0 as u32
        }
    }

    /// Replaces the low or high dword as the guest wrote it, keeping the
    /// read-only bits.
    fn set_dword(&mut self, high: bool, value: u32) {
        let (shift, mask) =
            if high { (32, 0xffff_ffff_0000_0000) } else { (0, 0x0000_0000_ffff_ffff & !Self::READ_ONLY) };
        self.0 = (self.0 & !mask) | ((u64::from(value) << shift) & mask);
    }

    /// The MSI an x86 IOAPIC sends for this entry: the destination, its mode
    /// and (for lowest priority) the redirection hint go in the address; the
    /// vector, delivery mode, trigger mode and an asserted level in the data.
    fn msi(self) -> MsiMessage {
        const MSI_ADDRESS_BASE: u32 = 0xfee0_0000;
        const MSI_ADDRESS_DESTINATION_SHIFT: u32 = 12;
        const MSI_ADDRESS_REDIRECTION_HINT: u32 = 1 << 3;
        const MSI_ADDRESS_DESTINATION_LOGICAL: u32 = 1 << 2;
        const MSI_DATA_DELIVERY_MODE_SHIFT: u32 = 8;
        const MSI_DATA_LEVEL_ASSERT: u32 = 1 << 14;
        const MSI_DATA_TRIGGER_LEVEL: u32 = 1 << 15;

        let destination = (self.0 >> Self::DESTINATION_SHIFT) as u32;
        let mut address_lo = MSI_ADDRESS_BASE | (destination << MSI_ADDRESS_DESTINATION_SHIFT);
        if self.delivery_mode() == Self::DELIVERY_MODE_LOWEST_PRIORITY {
            address_lo |= MSI_ADDRESS_REDIRECTION_HINT;
        }
        if self.0 & Self::DESTINATION_MODE_LOGICAL != 0 {
            address_lo |= MSI_ADDRESS_DESTINATION_LOGICAL;
        }

        let mut data = u32::from(self.vector())
            | ((self.delivery_mode() as u32) << MSI_DATA_DELIVERY_MODE_SHIFT)
            | MSI_DATA_LEVEL_ASSERT;
        if self.is_level_triggered() {
            data |= MSI_DATA_TRIGGER_LEVEL;
        }
        MsiMessage { address_lo, address_hi: 0, data }
    }
}

#[derive(Debug, Clone, Copy)]
struct Pin {
    entry: RedirectionEntry,
    /// The logical level of the input line.
    asserted: bool,
    /// An edge arrived while the pin was masked; delivered on unmask.
    pending_edge: bool,
}

impl Pin {
    const RESET: Self = Pin { entry: RedirectionEntry::RESET, asserted: false, pending_edge: false };
}

/// The IOAPIC. Put it on the MMIO bus at [`IOAPIC_BASE`] with length
/// [`IOAPIC_SIZE`], shared as `Arc<Mutex<Ioapic>>` with the [`IoapicPin`]s of
/// the devices wired to it.
pub struct Ioapic {
    id_register: u32,
    selected_register: u8,
    pins: [Pin; NUM_PINS],
    msi: Arc<dyn MsiSink>,
}

impl Ioapic {
    /// Creates an IOAPIC in its reset state (ID 0, every pin masked) that
    /// delivers its interrupts to `msi`.
    pub fn new(msi: Arc<dyn MsiSink>) -> Self {
        Ioapic { id_register: 0, selected_register: 0, pins: [Pin::RESET; NUM_PINS], msi }
    }

    /// The registers and pin states, for a snapshot.
    pub fn snapshot(&self) -> IoapicSnapshot {
        IoapicSnapshot {
            id_register: self.id_register,
            selected_register: self.selected_register,
            pins: self.pins.iter().map(|pin| (pin.entry.0, pin.asserted, pin.pending_edge)).collect(),
        }
    }

    /// Takes the registers and pin states a snapshot saved, once checked against what the model
    /// ever holds, and tells the sink every pin's route again (KVM's GSI routes are not part of the
    /// snapshot: they follow from the entries). Any IOREGSEL value is one the guest can write.
    pub fn restore(&mut self, snapshot: &IoapicSnapshot) -> Result<(), RestoreError> {
        validate(snapshot)?;
        self.id_register = snapshot.id_register;
        self.selected_register = snapshot.selected_register;
        for (pin, &(entry, asserted, pending_edge)) in snapshot.pins.iter().enumerate() {
            self.pins[pin] = Pin { entry: RedirectionEntry(entry), asserted, pending_edge };
            let route = (!self.pins[pin].entry.is_masked()).then(|| self.pins[pin].entry.msi());
            if let Err(err) = self.msi.redirection_changed(pin, route) {
                tracing::warn!("ioapic: cannot restore the route of pin {pin}: {err}");
            }
        }
        Ok(())
    }

    /// Sets the input line of `pin` to `asserted`. Edge-triggered pins deliver
    /// on a rising edge; level-triggered pins deliver while asserted (once per
    /// EOI). Out-of-range pins are ignored.
    pub fn service_pin(&mut self, pin: usize, asserted: bool) {
        let Some(state) = self.pins.get_mut(pin) else {
            tracing::warn!("ioapic: ignoring activity on nonexistent pin {pin}");
            return;
        };
        let rising_edge = asserted && !state.asserted;
        state.asserted = asserted;
        if state.entry.is_level_triggered() {
            self.deliver_level(pin);
        } else if rising_edge {
            if state.entry.is_masked() {
                state.pending_edge = true;
            } else {
                self.deliver(pin);
            }
        }
    }

    /// Handles an EOI for `vector` (from `KVM_EXIT_IOAPIC_EOI` or the EOI
    /// register): level-triggered pins waiting on that vector accept new
    /// interrupts again, and deliver at once if their line is still asserted.
    pub fn end_of_interrupt(&mut self, vector: u8) {
        for pin in 0..NUM_PINS {
            let entry = &mut self.pins[pin].entry;
            if entry.is_level_triggered() && entry.remote_irr() && entry.vector() == vector {
                entry.set_remote_irr(false);
                self.deliver_level(pin);
            }
        }
    }

    /// Delivers a level-triggered pin if its state calls for it.
    fn deliver_level(&mut self, pin: usize) {
        let state = self.pins[pin];
        if state.asserted && !state.entry.is_masked() && !state.entry.remote_irr() {
            // Remote IRR records an interrupt the local APIC accepted; if the
            // MSI was never sent, leave it clear so the next event retries.
            let delivered = self.deliver(pin);
            self.pins[pin].entry.set_remote_irr(delivered);
        }
    }

    fn deliver(&self, pin: usize) -> bool {
        match self.msi.send_msi(self.pins[pin].entry.msi()) {
            Ok(()) => true,
            Err(err) => {
                DELIVERY_ERRORS.log(format_args!("ioapic: cannot deliver pin {pin}: {err}"));
                false
            }
        }
    }

    fn read_register(&self) -> u32 {
        match self.selected_register {
            REG_ID | REG_ARBITRATION => self.id_register,
            REG_VERSION => VERSION_REGISTER,
            register => match redirection_dword(register) {
                Some((pin, high)) => self.pins[pin].entry.dword(high),
                None => 0,
            },
        }
    }

    fn write_register(&mut self, value: u32) {
        match self.selected_register {
            REG_ID => self.id_register = value & ID_MASK,
            register => {
                if let Some((pin, high)) = redirection_dword(register) {
                    self.write_redirection(pin, high, value);
                }
            }
        }
    }

    fn write_redirection(&mut self, pin: usize, high: bool, value: u32) {
        let state = &mut self.pins[pin];
        state.entry.set_dword(high, value);
        if state.entry.is_level_triggered() {
            state.pending_edge = false;
        } else {
            // Remote IRR only has meaning for level-triggered pins; clearing
            // it here is the pre-0x20 way for a guest to unstick a pin.
            state.entry.set_remote_irr(false);
        }

        if !state.entry.is_masked() {
            if state.entry.is_level_triggered() {
                self.deliver_level(pin);
            } else if std::mem::take(&mut state.pending_edge) {
                self.deliver(pin);
            }
        }

        let entry = self.pins[pin].entry;
        let route = (!entry.is_masked()).then(|| entry.msi());
        if let Err(err) = self.msi.redirection_changed(pin, route) {
            DELIVERY_ERRORS.log(format_args!("ioapic: cannot update the route of pin {pin}: {err}"));
        }
    }
}

/// Checks a saved IOAPIC against what the model ever holds: 24 pins, an ID in bits 24-27 only,
/// no delivery status (never set here), remote IRR only on level-triggered pins and a held edge
/// only on edge-triggered ones (a guest write clears the other).
fn validate(snapshot: &IoapicSnapshot) -> Result<(), RestoreError> {
    const COMPONENT: &str = "IOAPIC";
    if snapshot.pins.len() != NUM_PINS {
        return Err(RestoreError::Length {
            component: COMPONENT,
            field: "pins",
            saved: snapshot.pins.len(),
            expected: NUM_PINS,
        });
    }
    if snapshot.id_register & !ID_MASK != 0 {
        return Err(RestoreError::value(
            COMPONENT,
            "ID register",
            snapshot.id_register,
            "has bits outside 24-27",
        ));
    }
    for (pin, &(entry, _, pending_edge)) in snapshot.pins.iter().enumerate() {
        let entry = RedirectionEntry(entry);
        let field = || format!("redirection entry {pin}");
        if entry.0 & RedirectionEntry::DELIVERY_STATUS != 0 {
            return Err(RestoreError::value(COMPONENT, field(), entry.0, "has delivery status set"));
        }
        if entry.remote_irr() && !entry.is_level_triggered() {
            return Err(RestoreError::value(COMPONENT, field(), entry.0, "has remote IRR on an edge pin"));
        }
        if pending_edge && entry.is_level_triggered() {
            return Err(RestoreError::value(COMPONENT, field(), entry.0, "holds an edge on a level pin"));
        }
    }
    Ok(())
}

/// Maps an IOREGSEL value to the pin and dword (high or low) of the
/// redirection table it selects, if any.
fn redirection_dword(register: u8) -> Option<(usize, bool)> {
    let index = usize::from(register.checked_sub(REG_REDIRECTION_TABLE)?);
    let pin = index / 2;
    (pin < NUM_PINS).then_some((pin, index % 2 == 1))
}

impl BusDevice for Ioapic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Ok(dword) = <&mut [u8; 4]>::try_from(&mut *data) else {
            tracing::debug!("ioapic: ignoring {}-byte read at {offset:#x}", data.len());
            data.fill(0);
            return;
        };
        let value = match offset {
            IOREGSEL => u32::from(self.selected_register),
            IOWIN => self.read_register(),
            _ => 0,
        };
        *dword = value.to_le_bytes();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(dword) = <[u8; 4]>::try_from(data) else {
            tracing::debug!("ioapic: ignoring {}-byte write at {offset:#x}", data.len());
            return;
        };
        let value = u32::from_le_bytes(dword);
        match offset {
            // Only the low byte of IOREGSEL is implemented on real IOAPICs.
            IOREGSEL => self.selected_register = value as u8,
            IOWIN => self.write_register(value),
            EOI => self.end_of_interrupt(value as u8),
            _ => {}
        }
    }
}

/// One IOAPIC input pin as an edge-triggered [`InterruptLine`]: each trigger
/// pulses the line (assert, deassert), which delivers one interrupt if the
/// guest programmed the pin edge-triggered.
pub struct IoapicPin {
    ioapic: Arc<Mutex<Ioapic>>,
    pin: usize,
}

impl IoapicPin {
    /// Connects to `pin` (0-23) of `ioapic`.
    pub fn new(ioapic: Arc<Mutex<Ioapic>>, pin: usize) -> Result<Self, IoapicError> {
        if pin >= NUM_PINS {
            return Err(IoapicError::InvalidPin(pin));
        }
        Ok(IoapicPin { ioapic, pin })
    }
}

impl InterruptLine for IoapicPin {
    fn trigger(&self) -> io::Result<()> {
        let mut ioapic = self.ioapic.lock().unwrap_or_else(PoisonError::into_inner);
        ioapic.service_pin(self.pin, true);
        ioapic.service_pin(self.pin, false);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXED: u32 = 0; // delivery mode 0
    const LOWEST_PRIORITY: u32 = 1 << 8;
    const LOGICAL: u32 = 1 << 11;
    const REMOTE_IRR: u32 = 1 << 14;
    const LEVEL: u32 = 1 << 15;
    const MASKED: u32 = 1 << 16;

    #[derive(Default)]
    struct RecordingSink {
        sent: Mutex<Vec<MsiMessage>>,
        routes: Mutex<Vec<(usize, Option<MsiMessage>)>>,
    }

    impl RecordingSink {
        fn take_sent(&self) -> Vec<MsiMessage> {
            std::mem::take(&mut self.sent.lock().unwrap())
        }
    }

    impl MsiSink for RecordingSink {
        fn send_msi(&self, msg: MsiMessage) -> io::Result<()> {
            self.sent.lock().unwrap().push(msg);
            Ok(())
        }

        fn redirection_changed(&self, pin: usize, route: Option<MsiMessage>) -> io::Result<()> {
            self.routes.lock().unwrap().push((pin, route));
            Ok(())
        }
    }

    fn ioapic() -> (Ioapic, Arc<RecordingSink>) {
        let sink = Arc::new(RecordingSink::default());
        (Ioapic::new(sink.clone()), sink)
    }

    fn write_register(ioapic: &mut Ioapic, register: u8, value: u32) {
        ioapic.write(IOREGSEL, &u32::from(register).to_le_bytes());
        ioapic.write(IOWIN, &value.to_le_bytes());
    }

    fn read_register(ioapic: &mut Ioapic, register: u8) -> u32 {
        ioapic.write(IOREGSEL, &u32::from(register).to_le_bytes());
        let mut value = [0; 4];
        ioapic.read(IOWIN, &mut value);
        u32::from_le_bytes(value)
    }

    fn program(ioapic: &mut Ioapic, pin: u8, low: u32, destination: u8) {
        write_register(ioapic, 0x10 + 2 * pin + 1, u32::from(destination) << 24);
        write_register(ioapic, 0x10 + 2 * pin, low);
    }

    /// A sink KVM refuses everything of.
    struct RefusingSink;

    impl MsiSink for RefusingSink {
        fn send_msi(&self, _: MsiMessage) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        }

        fn redirection_changed(&self, _: usize, _: Option<MsiMessage>) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        }
    }

    #[test]
    fn refused_routes_and_deliveries_log_a_few_lines_and_a_count() {
        use crate::guest_log::{capture, LINES_PER_INTERVAL};

        let mut ioapic = Ioapic::new(Arc::new(RefusingSink));
        let ((), lines) = capture::lines(|| {
            for _ in 0..2500 {
                // Two route updates (one per dword), then an edge the sink refuses.
                program(&mut ioapic, 4, 0x30 | FIXED, 0);
                ioapic.service_pin(4, true);
                ioapic.service_pin(4, false);
            }
            DELIVERY_ERRORS.flush();
        });
        capture::assert_limited(
            &lines,
            "ioapic: cannot",
            "ioapic deliveries",
            3 * 2500 - u64::from(LINES_PER_INTERVAL),
        );
    }

    #[test]
    fn identification_registers() {
        let (mut ioapic, _) = ioapic();
        assert_eq!(read_register(&mut ioapic, 0x01), 0x0017_0020);
        assert_eq!(read_register(&mut ioapic, 0x00), 0);
        write_register(&mut ioapic, 0x00, 0xffff_ffff);
        assert_eq!(read_register(&mut ioapic, 0x00), 0x0f00_0000);
        assert_eq!(read_register(&mut ioapic, 0x02), 0x0f00_0000);
        write_register(&mut ioapic, 0x01, 0);
        assert_eq!(read_register(&mut ioapic, 0x01), 0x0017_0020, "read-only");

        let mut select = [0; 4];
        ioapic.read(IOREGSEL, &mut select);
        assert_eq!(select, [0x01, 0, 0, 0]);
    }

    #[test]
    fn redirection_entries_reset_masked_and_read_back() {
        let (mut ioapic, sink) = ioapic();
        for pin in 0..NUM_PINS as u8 {
            assert_eq!(read_register(&mut ioapic, 0x10 + 2 * pin), MASKED);
            assert_eq!(read_register(&mut ioapic, 0x11 + 2 * pin), 0);
        }
        program(&mut ioapic, 23, 0x31 | LEVEL | MASKED | REMOTE_IRR, 7);
        assert_eq!(read_register(&mut ioapic, 0x3e), 0x31 | LEVEL | MASKED, "remote IRR is read-only");
        assert_eq!(read_register(&mut ioapic, 0x3f), 7 << 24);
        {
            let routes = sink.routes.lock().unwrap();
            assert_eq!(routes.len(), 2, "one update per dword written");
            assert_eq!(routes[1], (23, None), "a masked pin has no route");
        }
        program(&mut ioapic, 23, 0x31 | LEVEL, 7);
        let routes = sink.routes.lock().unwrap();
        let (pin, route) = routes.last().copied().unwrap();
        assert_eq!(pin, 23);
        assert_eq!(route.map(|r| r.data), Some(0x31 | 1 << 14 | 1 << 15));
    }

    #[test]
    fn edge_pin_sends_the_exact_msi() {
        let (mut ioapic, sink) = ioapic();
        program(&mut ioapic, 4, 0x31 | FIXED, 3);
        ioapic.service_pin(4, true);
        assert_eq!(sink.take_sent(), [MsiMessage { address_lo: 0xfee0_3000, address_hi: 0, data: 0x4031 }]);
        ioapic.service_pin(4, true);
        assert!(sink.take_sent().is_empty(), "no new edge while held");
        ioapic.service_pin(4, false);
        ioapic.service_pin(4, true);
        assert_eq!(sink.take_sent().len(), 1);
    }

    #[test]
    fn lowest_priority_logical_level_msi() {
        let (mut ioapic, sink) = ioapic();
        program(&mut ioapic, 9, 0x41 | LOWEST_PRIORITY | LOGICAL | LEVEL, 0x0f);
        ioapic.service_pin(9, true);
        assert_eq!(sink.take_sent(), [MsiMessage { address_lo: 0xfee0_f00c, address_hi: 0, data: 0xc141 }]);
    }

    #[test]
    fn masked_edge_is_held_until_unmasked() {
        let (mut ioapic, sink) = ioapic();
        program(&mut ioapic, 4, 0x31 | MASKED, 0);
        ioapic.service_pin(4, true);
        ioapic.service_pin(4, false);
        assert!(sink.take_sent().is_empty());
        program(&mut ioapic, 4, 0x31, 0);
        assert_eq!(sink.take_sent().len(), 1, "the held edge arrives once");
        program(&mut ioapic, 4, 0x32, 0);
        assert!(sink.take_sent().is_empty());
    }

    #[test]
    fn level_pin_waits_for_eoi() {
        let (mut ioapic, sink) = ioapic();
        program(&mut ioapic, 10, 0x51 | LEVEL, 0);
        ioapic.service_pin(10, true);
        assert_eq!(sink.take_sent().len(), 1);
        assert_ne!(read_register(&mut ioapic, 0x10 + 20) & REMOTE_IRR, 0);

        ioapic.service_pin(10, true);
        assert!(sink.take_sent().is_empty(), "remote IRR blocks redelivery");
        ioapic.end_of_interrupt(0x52);
        assert!(sink.take_sent().is_empty(), "EOI for another vector");

        ioapic.end_of_interrupt(0x51);
        assert_eq!(sink.take_sent().len(), 1, "still asserted: delivered again");

        ioapic.service_pin(10, false);
        // The EOI register does what a local APIC EOI does.
        ioapic.write(EOI, &0x51u32.to_le_bytes());
        assert!(sink.take_sent().is_empty(), "deasserted: nothing more");
        assert_eq!(read_register(&mut ioapic, 0x10 + 20) & REMOTE_IRR, 0);
    }

    #[test]
    fn masked_level_pin_delivers_on_unmask() {
        let (mut ioapic, sink) = ioapic();
        program(&mut ioapic, 2, 0x61 | LEVEL | MASKED, 0);
        ioapic.service_pin(2, true);
        assert!(sink.take_sent().is_empty());
        program(&mut ioapic, 2, 0x61 | LEVEL, 0);
        assert_eq!(sink.take_sent().len(), 1);
    }

    #[test]
    fn ioapic_pin_pulses_its_line() {
        let (ioapic, sink) = ioapic();
        let ioapic = Arc::new(Mutex::new(ioapic));
        program(&mut ioapic.lock().unwrap(), 4, 0x24, 0);
        let pin = IoapicPin::new(ioapic.clone(), 4).unwrap();
        pin.trigger().unwrap();
        pin.trigger().unwrap();
        assert_eq!(sink.take_sent().len(), 2, "one interrupt per trigger");
        assert_eq!(IoapicPin::new(ioapic, NUM_PINS).err(), Some(IoapicError::InvalidPin(NUM_PINS)));
    }

    #[test]
    fn hostile_accesses_do_not_panic() {
        let (mut ioapic, sink) = ioapic();
        for register in 0..=u8::MAX {
            read_register(&mut ioapic, register);
            write_register(&mut ioapic, register, 0xffff_ffff);
            write_register(&mut ioapic, register, 0);
        }
        assert_eq!(read_register(&mut ioapic, 0x40), 0, "past the table");
        ioapic.write(IOREGSEL, &0xffff_ff10u32.to_le_bytes());
        let mut value = [0; 4];
        ioapic.read(IOREGSEL, &mut value);
        assert_eq!(value, [0x10, 0, 0, 0], "only the low byte selects");

        for offset in [0, 1, 3, 0x10, 0x14, 0x40, 0xfff, IOAPIC_SIZE, u64::MAX] {
            for len in [0, 1, 2, 3, 4, 8] {
                let mut data = vec![0xff; len];
                ioapic.read(offset, &mut data);
                if len != 4 {
                    assert!(data.iter().all(|&b| b == 0));
                }
                ioapic.write(offset, &data);
            }
        }
        for pin in [NUM_PINS, usize::MAX] {
            ioapic.service_pin(pin, true);
        }
        for vector in 0..=u8::MAX {
            ioapic.end_of_interrupt(vector);
        }
        sink.take_sent();
    }

    #[test]
    fn a_snapshot_round_trips_and_values_the_model_never_holds_are_refused() {
        let (mut original, _) = ioapic();
        program(&mut original, 3, 0x8000 | 0x41, 1);
        write_register(&mut original, REG_ID, 0x0500_0000);
        let saved = original.snapshot();
        let (mut restored, sink) = ioapic();
        restored.restore(&saved).unwrap();
        assert_eq!(read_register(&mut restored, REG_ID), 0x0500_0000);
        assert_eq!(read_register(&mut restored, REG_REDIRECTION_TABLE + 6), 0x8000 | 0x41);
        assert!(sink.routes.lock().unwrap().iter().any(|&(pin, route)| pin == 3 && route.is_some()));

        let refused = |change: &dyn Fn(&mut IoapicSnapshot)| {
            let mut bad = saved.clone();
            change(&mut bad);
            ioapic().0.restore(&bad).unwrap_err()
        };
        assert!(matches!(
            refused(&|s| s.pins.pop().map(drop).unwrap()),
            RestoreError::Length { saved: 23, .. }
        ));
        assert!(matches!(refused(&|s| s.id_register = 0xff), RestoreError::Value { value: 0xff, .. }));
        let delivery_status = RedirectionEntry::MASKED | RedirectionEntry::DELIVERY_STATUS;
        assert!(matches!(refused(&|s| s.pins[0].0 = delivery_status), RestoreError::Value { .. }));
        let edge_with_irr = RedirectionEntry::REMOTE_IRR;
        assert!(matches!(refused(&|s| s.pins[1].0 = edge_with_irr), RestoreError::Value { .. }));
        assert!(
            matches!(refused(&|s| s.pins[3].2 = true), RestoreError::Value { .. }),
            "edge held on a level pin"
        );
    }
}
