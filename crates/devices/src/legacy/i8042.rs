//! The i8042 keyboard controller at ports 0x60-0x64, reduced to what a guest
//! without a keyboard needs: the "pulse reset line" command (0xFE on port
//! 0x64) that Linux uses to reboot when no ACPI reset register is available,
//! or with `reboot=k`.
//!
//! Every register reads as 0. For the status register (port 0x64) that means
//! "output buffer empty, input buffer empty": Linux's probe never waits on a
//! busy controller, it just times out reading command replies and concludes
//! there is no usable i8042.

use std::io;

use vm_superio::{I8042Device, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::{read_byte_registers, write_byte_registers};
use crate::BusDevice;

/// Signals the VMM's reset eventfd when `vm_superio` sees the reset command.
struct ResetRequest(EventFd);

impl Trigger for ResetRequest {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The i8042, placed on the I/O bus at 0x60 with length 5 (offset 0 is the
/// data port 0x60, offset 4 the status/command port 0x64).
pub struct I8042 {
    controller: I8042Device<ResetRequest>,
}

impl I8042 {
    /// Creates the controller; writing 0xFE to the command port signals `reset`.
    pub fn new(reset: EventFd) -> Self {
        I8042 { controller: I8042Device::new(ResetRequest(reset)) }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_byte_registers(offset, data, |register| self.controller.read(register));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_byte_registers(offset, data, |register, value| {
            if let Err(err) = self.controller.write(register, value) {
                tracing::error!("i8042: cannot signal the guest's reset request: {err}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMAND: u64 = 4;
    const RESET_CPU: u8 = 0xfe;

    fn i8042_with_reset() -> (I8042, EventFd) {
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (I8042::new(reset.try_clone().unwrap()), reset)
    }

    #[test]
    fn reset_command_signals_reset() {
        let (mut i8042, reset) = i8042_with_reset();
        i8042.write(COMMAND, &[RESET_CPU]);
        assert_eq!(reset.read().unwrap(), 1);
    }

    #[test]
    fn other_commands_and_ports_do_not_reset() {
        let (mut i8042, reset) = i8042_with_reset();
        for value in (0..=u8::MAX).filter(|&v| v != RESET_CPU) {
            i8042.write(COMMAND, &[value]);
        }
        for offset in 0..COMMAND {
            i8042.write(offset, &[RESET_CPU]);
        }
        assert!(reset.read().is_err(), "nothing was signalled");
    }

    #[test]
    fn status_reports_idle_controller() {
        let (mut i8042, _) = i8042_with_reset();
        let mut status = [0xff];
        i8042.read(COMMAND, &mut status);
        assert_eq!(status, [0], "no output data, input buffer not busy");
    }

    #[test]
    fn any_offset_and_size_is_harmless() {
        let (mut i8042, _) = i8042_with_reset();
        for offset in [0, 3, 4, 5, 255, 256, u64::MAX] {
            for len in [1, 2, 4, 8] {
                let mut data = vec![0; len];
                i8042.read(offset, &mut data);
                i8042.write(offset, &data);
            }
        }
    }
}
