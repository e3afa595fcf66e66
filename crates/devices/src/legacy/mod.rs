//! The legacy PC devices a guest finds on the I/O port bus.

mod cmos;
mod i8042;
mod power;
mod serial;

pub use cmos::{Cmos, CmosSnapshot};
pub use i8042::{I8042Error, I8042Snapshot, I8042};
pub use power::PowerManagement;
pub use serial::{Serial, SerialError, SerialSnapshot};

/// ISA devices have byte-wide registers; a wider port access (`inw`, `inl`)
/// reaches consecutive ports, so it is served one byte per port. Offsets that
/// cannot be a byte register (past 255) read as 0, like an empty port.
pub(crate) fn read_byte_registers(offset: u64, data: &mut [u8], mut read_register: impl FnMut(u8) -> u8) {
    for (byte, port) in data.iter_mut().zip(byte_ports(offset)) {
        *byte = port.map_or(0, &mut read_register);
    }
}

/// The write counterpart of [`read_byte_registers`]: writes to offsets past
/// 255 are dropped.
pub(crate) fn write_byte_registers(offset: u64, data: &[u8], mut write_register: impl FnMut(u8, u8)) {
    for (&value, port) in data.iter().zip(byte_ports(offset)) {
        if let Some(port) = port {
            write_register(port, value);
        }
    }
}

/// The port offsets `offset`, `offset + 1`, ... as byte-register indices.
fn byte_ports(offset: u64) -> impl Iterator<Item = Option<u8>> {
    (0u64..).map(move |i| offset.checked_add(i).and_then(|port| u8::try_from(port).ok()))
}
