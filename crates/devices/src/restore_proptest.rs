//! Property tests: arbitrary saved states (as a hostile state file could decode to) restored into
//! fresh device models, which are then driven through their registers. Whatever is refused, what
//! is taken must never make a later access panic, and a state taken as is must save back the same.

use std::io;
use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;
use vm_superio::serial::SerialState;
use vmm_sys_util::eventfd::EventFd;

use crate::ioapic::{Ioapic, IoapicSnapshot, MsiMessage, MsiSink, NUM_PINS};
use crate::legacy::{Cmos, CmosSnapshot, I8042Snapshot, Serial, SerialSnapshot, I8042};
use crate::pci::config_space::{ConfigSpace, PciIds};
use crate::pci::msix::{Msix, MsixDelivery, MsixSnapshot};
use crate::{BusDevice, InterruptLine};

/// A few hundred cases keep each property within a second or two.
const CASES: u32 = 300;

struct Line;

impl InterruptLine for Line {
    fn trigger(&self) -> io::Result<()> {
        Ok(())
    }
}

struct Sink;

impl MsiSink for Sink {
    fn send_msi(&self, _: MsiMessage) -> io::Result<()> {
        Ok(())
    }
}

impl MsixDelivery for Sink {
    fn set_route(&self, _: u16, _: MsiMessage) -> io::Result<()> {
        Ok(())
    }

    fn trigger(&self, _: u16) -> io::Result<()> {
        Ok(())
    }
}

/// One guest access: a read or a write of `data` at `offset`.
#[derive(Clone, Debug)]
struct Access {
    write: bool,
    offset: u64,
    data: Vec<u8>,
}

fn accesses(max_offset: u64) -> impl Strategy<Value = Vec<Access>> {
    let access = (any::<bool>(), 0..max_offset, vec(any::<u8>(), 1..=8))
        .prop_map(|(write, offset, data)| Access { write, offset, data });
    vec(access, 0..24)
}

fn drive(device: &mut dyn BusDevice, accesses: &[Access]) {
    for access in accesses {
        let mut data = access.data.clone();
        if access.write {
            device.write(access.offset, &data);
        } else {
            device.read(access.offset, &mut data);
        }
    }
}

/// A length that is mostly the model's own, sometimes one off or empty.
fn length(model: usize) -> impl Strategy<Value = usize> {
    prop_oneof![4 => Just(model), 1 => Just(model + 1), 1 => Just(model.saturating_sub(1)), 1 => Just(0)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn cmos(index: u8, ram in length(128).prop_flat_map(|n| vec(any::<u8>(), n)), ops in accesses(4)) {
        let saved = CmosSnapshot { index, ram };
        let mut cmos = Cmos::new(1 << 30, 0);
        if cmos.restore(&saved).is_ok() {
            let again = cmos.snapshot();
            prop_assert!(again.index < 0x80);
            prop_assert_eq!(again.ram, saved.ram);
            drive(&mut cmos, &ops);
        }
    }

    #[test]
    fn i8042(
        output in vec(any::<u8>(), 0..20),
        command_byte: u8,
        output_port: u8,
        awaiting_value: Option<u8>,
        ops in accesses(8),
    ) {
        let saved = I8042Snapshot { output, command_byte, output_port, awaiting_value };
        let mut i8042 = I8042::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), Arc::new(Line));
        if i8042.restore(&saved).is_ok() {
            prop_assert_eq!(i8042.snapshot(), saved);
            drive(&mut i8042, &ops);
            let _ = i8042.send_ctrl_alt_del();
        }
    }

    #[test]
    fn serial(
        registers: [u8; 9],
        in_buffer in vec(any::<u8>(), 0..70),
        ops in accesses(10),
    ) {
        let [baud_divisor_low, baud_divisor_high, interrupt_enable, interrupt_identification,
            line_control, line_status, modem_control, modem_status, scratch] = registers;
        let state = SerialState {
            baud_divisor_low, baud_divisor_high, interrupt_enable, interrupt_identification,
            line_control, line_status, modem_control, modem_status, scratch, in_buffer,
        };
        let saved = SerialSnapshot(state);
        if let Ok(mut serial) = Serial::restore(Arc::new(Line), Box::new(io::sink()), &saved) {
            prop_assert_eq!(serial.snapshot(), saved);
            drive(&mut serial, &ops);
            serial.enqueue_input(b"more input");
        }
    }

    #[test]
    fn ioapic(
        id_register: u32,
        selected_register: u8,
        pins in length(NUM_PINS).prop_flat_map(|n| vec(any::<(u64, bool, bool)>(), n)),
        ops in vec((any::<u8>(), any::<u32>(), 0usize..NUM_PINS + 2, any::<bool>()), 0..24),
    ) {
        let saved = IoapicSnapshot { id_register, selected_register, pins };
        let mut ioapic = Ioapic::new(Arc::new(Sink));
        if ioapic.restore(&saved).is_ok() {
            prop_assert_eq!(ioapic.snapshot(), saved);
            for (register, value, pin, level) in ops {
                ioapic.write(0x00, &u32::from(register).to_le_bytes());
                let mut data = [0; 4];
                ioapic.read(0x10, &mut data);
                ioapic.write(0x10, &value.to_le_bytes());
                ioapic.service_pin(pin, level);
                ioapic.end_of_interrupt(value as u8);
            }
        }
    }

    #[test]
    fn msix(
        vectors in length(4).prop_flat_map(|n| vec(any::<(u32, u32, u32, bool, bool)>(), n)),
        enabled: bool,
        function_masked: bool,
        ops in vec((0u64..0x50, any::<u32>(), any::<u16>()), 0..24),
    ) {
        let saved = MsixSnapshot { vectors, enabled, function_masked };
        let mut msix = Msix::new(4, Arc::new(Sink));
        if msix.restore(&saved).is_ok() {
            for (offset, value, vector) in ops {
                msix.write_table(offset & !3, &value.to_le_bytes());
                let mut data = [0; 8];
                msix.read_table(offset & !7, &mut data);
                msix.read_pba(offset & !7, &mut data);
                let _ = msix.trigger(vector % 6);
                msix.set_control(vector);
            }
        }
    }

    #[test]
    fn pci_config_space(
        flips in vec((0usize..256, any::<u8>()), 0..4),
        length in length(256),
        ops in accesses(0x110),
    ) {
        let built = || {
            let mut space = ConfigSpace::new(PciIds {
                vendor_id: 0x1af4, device_id: 0x1041, revision_id: 1, class_code: 0x02_0000,
                subsystem_vendor_id: 0x1af4, subsystem_id: 0x1041,
            });
            space.add_memory_bar(0, 0x4000).unwrap();
            space.add_capability(0x11, &[0; 10], &[0xff, 0xc0]).unwrap();
            space
        };
        let mut saved = built().snapshot();
        for (offset, xor) in flips {
            saved[offset] ^= xor;
        }
        saved.resize(length, 0);
        let mut space = built();
        if space.restore(&saved).is_ok() {
            prop_assert_eq!(space.snapshot(), saved);
            for access in ops {
                let mut data = access.data.clone();
                if access.write {
                    space.write(access.offset as usize, &data);
                } else {
                    space.read(access.offset as usize, &mut data);
                }
                for bar in 0..7 {
                    let _ = space.bar_mapping(bar);
                }
            }
        }
    }
}
