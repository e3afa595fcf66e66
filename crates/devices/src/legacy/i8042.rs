//! The i8042 PS/2 controller at ports 0x60 (data) and 0x64 (status and command), with a keyboard
//! whose only keys are the ones the host types for the guest: Ctrl+Alt+Del.
//!
//! A guest uses it to:
//! - reset the machine: command 0xFE pulses the CPU reset line (Linux with `reboot=k`, or
//!   without ACPI);
//! - receive the host's Ctrl+Alt+Del ([`I8042::send_ctrl_alt_del`], for Firecracker's
//!   `SendCtrlAltDel` action): the keys' scan codes go into the output buffer and IRQ 1 is
//!   raised, so the guest's keyboard driver reads them as typed keys (Linux's i8042 and atkbd
//!   drivers then reboot).
//!
//! The model, as much as Linux's i8042 and atkbd drivers use:
//! - the output buffer, a FIFO of [`OUTPUT_BUFFER_BYTES`] read through port 0x60; status bit 0
//!   (output buffer full) says whether it holds a byte. Reading it empty gives 0.
//! - the command byte (configuration byte), read with command 0x20 and written with 0x60
//!   followed by the value on port 0x60. Bit 0 enables IRQ 1. Scan code translation (bit 6) is
//!   neither set nor modelled: the keyboard speaks scan code set 2, which atkbd reads as is.
//! - the output port, read with 0xD0 and written with 0xD1 + value; stored only (its reset bit
//!   is not wired: 0xFE is the reset).
//! - keyboard commands (bytes written to port 0x60 with no controller command waiting for a
//!   value) are acknowledged with 0xFA; reset (0xFF) also reports a passed self-test (0xAA) and
//!   identify (0xF2) an MF2 keyboard (0xAB 0x83), so a driver's probe gets its answers at once.
//! - the input buffer is never busy (status bit 1 is always 0): a write takes effect at once.
//!   Other commands are ignored.
//!
//! Interrupts: IRQ 1 is raised, when the command byte enables it, each time a keyboard byte
//! becomes the next byte of port 0x60: when bytes arrive in an empty buffer, and after a read
//! that leaves more. Replies to controller commands raise nothing (drivers poll for them) and
//! replace whatever the buffer held, so the next read of port 0x60 is the reply.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::{read_byte_registers, write_byte_registers};
use crate::{BusDevice, GuestErrorLog, InterruptLine, RestoreError};

/// Interrupts and signals that cannot be raised, once per byte the guest reads or writes: limited.
static SIGNAL_ERRORS: GuestErrorLog = GuestErrorLog::site("i8042 signals");

/// Port offsets from 0x60.
const DATA: u8 = 0;
const STATUS_COMMAND: u8 = 4;

/// Status register bits.
const STATUS_OUTPUT_FULL: u8 = 1 << 0;
/// Set by a successful power-on self-test, which the firmware ran before the guest.
const STATUS_SYSTEM_FLAG: u8 = 1 << 2;
/// The keyboard is not inhibited by the (absent) keylock.
const STATUS_UNLOCKED: u8 = 1 << 4;

/// Command byte bits.
const COMMAND_BYTE_KEYBOARD_IRQ: u8 = 1 << 0;
const COMMAND_BYTE_SYSTEM_FLAG: u8 = 1 << 2;

/// Controller commands (written to port 0x64).
const CMD_READ_COMMAND_BYTE: u8 = 0x20;
const CMD_WRITE_COMMAND_BYTE: u8 = 0x60;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_PULSE_RESET: u8 = 0xfe;

/// Keyboard commands (written to port 0x60) and the keyboard's replies.
const KBD_IDENTIFY: u8 = 0xf2;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_PASSED: u8 = 0xaa;
const KBD_MF2_ID: [u8; 2] = [0xab, 0x83];

/// What the firmware leaves in the command byte: keyboard interrupt on, self-test passed.
const INITIAL_COMMAND_BYTE: u8 = COMMAND_BYTE_KEYBOARD_IRQ | COMMAND_BYTE_SYSTEM_FLAG;
/// The output port as the firmware leaves it: reset line inactive (bit 0), A20 enabled (bit 1).
const INITIAL_OUTPUT_PORT: u8 = 0x03;

/// Bytes the output buffer holds; a guest that reads nothing cannot make the VMM hold more.
const OUTPUT_BUFFER_BYTES: usize = 16;

/// Left Ctrl, left Alt and Delete pressed, in scan code set 2 (Delete is an extended key).
const CTRL_ALT_DEL_SCAN_CODES: [u8; 4] = [0x14, 0x11, 0xe0, 0x71];

/// Why the host's keys could not be typed.
#[derive(Debug, thiserror::Error)]
pub enum I8042Error {
    #[error("the keyboard buffer has room for {free} bytes, {needed} are needed: the guest is not reading its keyboard")]
    BufferFull { free: usize, needed: usize },
    #[error("cannot raise the keyboard interrupt: {0}")]
    Interrupt(io::Error),
}

/// The i8042, placed on the I/O bus at 0x60 with length 5 (offset 0 is the data port 0x60,
/// offset 4 the status and command port 0x64).
/// The controller's registers and unread keyboard bytes, as a snapshot keeps them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042Snapshot {
    pub(crate) output: Vec<u8>,
    pub(crate) command_byte: u8,
    pub(crate) output_port: u8,
    pub(crate) awaiting_value: Option<u8>,
}

pub struct I8042 {
    reset: EventFd,
    /// IRQ 1.
    keyboard_irq: Arc<dyn InterruptLine>,
    output: VecDeque<u8>,
    command_byte: u8,
    output_port: u8,
    /// A controller command waiting for its value on port 0x60.
    awaiting_value: Option<u8>,
}

impl I8042 {
    /// Creates the controller: command 0xFE signals `reset`, keyboard bytes raise `keyboard_irq`.
    pub fn new(reset: EventFd, keyboard_irq: Arc<dyn InterruptLine>) -> Self {
        I8042 {
            reset,
            keyboard_irq,
            output: VecDeque::with_capacity(OUTPUT_BUFFER_BYTES),
            command_byte: INITIAL_COMMAND_BYTE,
            output_port: INITIAL_OUTPUT_PORT,
            awaiting_value: None,
        }
    }

    /// The registers and unread bytes, for a snapshot.
    pub fn snapshot(&self) -> I8042Snapshot {
        I8042Snapshot {
            output: self.output.iter().copied().collect(),
            command_byte: self.command_byte,
            output_port: self.output_port,
            awaiting_value: self.awaiting_value,
        }
    }

    /// Takes saved registers and unread bytes: at most the buffer's size, and a command waiting
    /// for its value only if it is one of the two that take one.
    pub fn restore(&mut self, saved: &I8042Snapshot) -> Result<(), RestoreError> {
        if saved.output.len() > OUTPUT_BUFFER_BYTES {
            return Err(RestoreError::TooLong {
                component: "i8042",
                field: "output buffer",
                saved: saved.output.len(),
                max: OUTPUT_BUFFER_BYTES,
            });
        }
        if let Some(command) = saved.awaiting_value {
            if !matches!(command, CMD_WRITE_COMMAND_BYTE | CMD_WRITE_OUTPUT_PORT) {
                return Err(RestoreError::value(
                    "i8042",
                    "command awaiting a value",
                    command,
                    "is not a command that takes a value",
                ));
            }
        }
        self.output = saved.output.iter().copied().collect();
        self.command_byte = saved.command_byte;
        self.output_port = saved.output_port;
        self.awaiting_value = saved.awaiting_value;
        Ok(())
    }

    /// Types Ctrl+Alt+Del: the keys' scan codes go into the output buffer, whole or not at all.
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), I8042Error> {
        self.send_keyboard_bytes(&CTRL_ALT_DEL_SCAN_CODES)
    }

    /// Queues bytes from the keyboard, raising IRQ 1 if the guest had none waiting.
    fn send_keyboard_bytes(&mut self, bytes: &[u8]) -> Result<(), I8042Error> {
        let free = OUTPUT_BUFFER_BYTES - self.output.len();
        if bytes.len() > free {
            return Err(I8042Error::BufferFull { free, needed: bytes.len() });
        }
        let was_empty = self.output.is_empty();
        self.output.extend(bytes);
        if was_empty {
            self.raise_keyboard_irq().map_err(I8042Error::Interrupt)?;
        }
        Ok(())
    }

    fn raise_keyboard_irq(&self) -> io::Result<()> {
        if self.command_byte & COMMAND_BYTE_KEYBOARD_IRQ == 0 {
            return Ok(());
        }
        self.keyboard_irq.trigger()
    }

    /// A controller command's reply: the only byte the guest reads next.
    fn reply(&mut self, byte: u8) {
        self.output.clear();
        self.output.push_back(byte);
    }

    fn status(&self) -> u8 {
        let full = if self.output.is_empty() { 0 } else { STATUS_OUTPUT_FULL };
        full | STATUS_SYSTEM_FLAG | STATUS_UNLOCKED
    }

    fn read_data(&mut self) -> u8 {
        let byte = self.output.pop_front().unwrap_or(0);
        if !self.output.is_empty() {
            if let Err(e) = self.raise_keyboard_irq() {
                SIGNAL_ERRORS.log(format_args!("i8042: cannot raise the keyboard interrupt: {e}"));
            }
        }
        byte
    }

    fn write_command(&mut self, command: u8) {
        self.awaiting_value = None;
        match command {
            CMD_READ_COMMAND_BYTE => self.reply(self.command_byte),
            CMD_READ_OUTPUT_PORT => self.reply(self.output_port),
            CMD_WRITE_COMMAND_BYTE | CMD_WRITE_OUTPUT_PORT => self.awaiting_value = Some(command),
            CMD_PULSE_RESET => {
                if let Err(e) = self.reset.write(1) {
                    SIGNAL_ERRORS.log(format_args!("i8042: cannot signal the guest's reset request: {e}"));
                }
            }
            other => tracing::debug!("i8042: ignoring controller command {other:#04x}"),
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.awaiting_value.take() {
            Some(CMD_WRITE_COMMAND_BYTE) => self.command_byte = value,
            Some(_) => self.output_port = value,
            None => self.keyboard_command(value),
        }
    }

    /// A byte for the keyboard: a command it acknowledges, with the replies a driver's probe
    /// waits for. Pending keystrokes are dropped, as the driver expects the reply next.
    fn keyboard_command(&mut self, command: u8) {
        self.output.clear();
        let result = match command {
            KBD_RESET => self.send_keyboard_bytes(&[KBD_ACK, KBD_SELF_TEST_PASSED]),
            KBD_IDENTIFY => self.send_keyboard_bytes(&[KBD_ACK, KBD_MF2_ID[0], KBD_MF2_ID[1]]),
            _ => self.send_keyboard_bytes(&[KBD_ACK]),
        };
        if let Err(e) = result {
            SIGNAL_ERRORS.log(format_args!("i8042: cannot answer a keyboard command: {e}"));
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_byte_registers(offset, data, |port| match port {
            DATA => self.read_data(),
            STATUS_COMMAND => self.status(),
            _ => 0,
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_byte_registers(offset, data, |port, value| match port {
            DATA => self.write_data(value),
            STATUS_COMMAND => self.write_command(value),
            _ => {}
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const PORT_DATA: u64 = DATA as u64;
    const PORT_COMMAND: u64 = STATUS_COMMAND as u64;

    /// Counts the interrupts raised.
    #[derive(Default)]
    struct CountingLine(AtomicUsize);

    impl InterruptLine for CountingLine {
        fn trigger(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    struct Bench {
        i8042: I8042,
        reset: EventFd,
        irq: Arc<CountingLine>,
    }

    impl Bench {
        fn new() -> Bench {
            let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let irq = Arc::new(CountingLine::default());
            Bench { i8042: I8042::new(reset.try_clone().unwrap(), irq.clone()), reset, irq }
        }

        fn status(&mut self) -> u8 {
            let mut status = [0];
            self.i8042.read(PORT_COMMAND, &mut status);
            status[0]
        }

        fn read_data(&mut self) -> u8 {
            let mut data = [0];
            self.i8042.read(PORT_DATA, &mut data);
            data[0]
        }

        /// Reads port 0x60 while the status says it holds a byte, as a polling driver does.
        fn drain(&mut self) -> Vec<u8> {
            let mut bytes = Vec::new();
            while self.status() & STATUS_OUTPUT_FULL != 0 {
                bytes.push(self.read_data());
                assert!(bytes.len() <= OUTPUT_BUFFER_BYTES, "the buffer never empties");
            }
            bytes
        }

        fn interrupts(&self) -> usize {
            self.irq.0.swap(0, Ordering::SeqCst)
        }
    }

    #[test]
    fn a_snapshot_keeps_unread_keys_and_registers() {
        let mut original = Bench::new();
        original.i8042.send_ctrl_alt_del().unwrap();
        let saved = original.i8042.snapshot();
        let mut restored = Bench::new();
        restored.i8042.restore(&saved).unwrap();
        assert_eq!(restored.drain(), [0x14, 0x11, 0xe0, 0x71], "the keys the guest had not read yet");
        let mut overfull = saved;
        overfull.output = vec![0; OUTPUT_BUFFER_BYTES + 1];
        assert!(matches!(
            Bench::new().i8042.restore(&overfull),
            Err(RestoreError::TooLong { field: "output buffer", saved: 17, .. })
        ));
        let mut awaiting_reset = overfull;
        awaiting_reset.output.clear();
        awaiting_reset.awaiting_value = Some(CMD_PULSE_RESET);
        assert!(matches!(
            Bench::new().i8042.restore(&awaiting_reset),
            Err(RestoreError::Value { value: 0xfe, .. })
        ));
    }

    #[test]
    fn reset_command_signals_reset() {
        let mut bench = Bench::new();
        bench.i8042.write(PORT_COMMAND, &[CMD_PULSE_RESET]);
        assert_eq!(bench.reset.read().unwrap(), 1);
    }

    #[test]
    fn other_commands_and_ports_do_not_reset() {
        let mut bench = Bench::new();
        for value in (0..=u8::MAX).filter(|&v| v != CMD_PULSE_RESET) {
            bench.i8042.write(PORT_COMMAND, &[value]);
        }
        for offset in 0..PORT_COMMAND {
            bench.i8042.write(offset, &[CMD_PULSE_RESET]);
        }
        assert!(bench.reset.read().is_err(), "nothing was signalled");
    }

    #[test]
    fn an_idle_controller_has_no_output_and_is_never_busy() {
        let mut bench = Bench::new();
        assert_eq!(bench.status(), STATUS_SYSTEM_FLAG | STATUS_UNLOCKED);
        assert_eq!(bench.read_data(), 0, "an empty buffer reads as 0");
        assert_eq!(bench.interrupts(), 0);
    }

    #[test]
    fn ctrl_alt_del_is_typed_with_one_interrupt_per_byte() {
        let mut bench = Bench::new();
        bench.i8042.send_ctrl_alt_del().unwrap();
        assert_eq!(bench.interrupts(), 1, "the first byte");
        assert_ne!(bench.status() & STATUS_OUTPUT_FULL, 0);
        let mut received = Vec::new();
        for remaining in (0..CTRL_ALT_DEL_SCAN_CODES.len()).rev() {
            received.push(bench.read_data());
            let expected = usize::from(remaining > 0);
            assert_eq!(bench.interrupts(), expected, "one more for each byte left after a read");
        }
        assert_eq!(received, CTRL_ALT_DEL_SCAN_CODES);
        assert_eq!(bench.status() & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn keys_queue_behind_unread_ones_until_the_buffer_is_full() {
        let mut bench = Bench::new();
        let fits = OUTPUT_BUFFER_BYTES / CTRL_ALT_DEL_SCAN_CODES.len();
        for _ in 0..fits {
            bench.i8042.send_ctrl_alt_del().unwrap();
        }
        assert_eq!(bench.interrupts(), 1, "bytes behind unread ones raise nothing yet");
        let error = bench.i8042.send_ctrl_alt_del().unwrap_err();
        assert!(matches!(error, I8042Error::BufferFull { free: 0, needed: 4 }), "{error}");
        assert_eq!(bench.drain(), CTRL_ALT_DEL_SCAN_CODES.repeat(fits), "the refused keys left nothing");
        bench.i8042.send_ctrl_alt_del().unwrap();
    }

    #[test]
    fn the_command_byte_gates_the_keyboard_interrupt() {
        let mut bench = Bench::new();
        bench.i8042.write(PORT_COMMAND, &[CMD_READ_COMMAND_BYTE]);
        assert_eq!(bench.drain(), [INITIAL_COMMAND_BYTE]);
        bench.i8042.write(PORT_COMMAND, &[CMD_WRITE_COMMAND_BYTE]);
        bench.i8042.write(PORT_DATA, &[INITIAL_COMMAND_BYTE & !COMMAND_BYTE_KEYBOARD_IRQ]);
        assert!(bench.drain().is_empty(), "a written value is no keyboard command");
        bench.i8042.send_ctrl_alt_del().unwrap();
        assert_eq!(bench.drain(), CTRL_ALT_DEL_SCAN_CODES, "typed, for a driver that polls");
        assert_eq!(bench.interrupts(), 0);
        bench.i8042.write(PORT_COMMAND, &[CMD_READ_COMMAND_BYTE]);
        assert_eq!(bench.drain(), [INITIAL_COMMAND_BYTE & !COMMAND_BYTE_KEYBOARD_IRQ]);
    }

    #[test]
    fn the_output_port_is_stored() {
        let mut bench = Bench::new();
        bench.i8042.write(PORT_COMMAND, &[CMD_READ_OUTPUT_PORT]);
        assert_eq!(bench.drain(), [INITIAL_OUTPUT_PORT]);
        bench.i8042.write(PORT_COMMAND, &[CMD_WRITE_OUTPUT_PORT]);
        bench.i8042.write(PORT_DATA, &[0x02]);
        bench.i8042.write(PORT_COMMAND, &[CMD_READ_OUTPUT_PORT]);
        assert_eq!(bench.drain(), [0x02]);
        assert!(bench.reset.read().is_err(), "the output port's reset bit is not wired");
    }

    #[test]
    fn a_command_reply_replaces_unread_keys_and_raises_nothing() {
        let mut bench = Bench::new();
        bench.i8042.send_ctrl_alt_del().unwrap();
        bench.interrupts();
        bench.i8042.write(PORT_COMMAND, &[CMD_READ_COMMAND_BYTE]);
        assert_eq!(bench.drain(), [INITIAL_COMMAND_BYTE]);
        assert_eq!(bench.interrupts(), 0);
    }

    #[test]
    fn the_keyboard_answers_its_commands() {
        let mut bench = Bench::new();
        for (command, reply) in [
            (0xed, vec![KBD_ACK]), // set LEDs
            (0x00, vec![KBD_ACK]), // its value
            (KBD_IDENTIFY, vec![KBD_ACK, 0xab, 0x83]),
            (KBD_RESET, vec![KBD_ACK, KBD_SELF_TEST_PASSED]),
        ] {
            bench.i8042.write(PORT_DATA, &[command]);
            assert_eq!(bench.interrupts(), 1, "command {command:#x}");
            let mut received = vec![bench.read_data()];
            received.extend(bench.drain());
            assert_eq!(received, reply, "command {command:#x}");
            bench.interrupts();
        }
        // A command drops keys the driver has not read: its reply comes next.
        bench.i8042.send_ctrl_alt_del().unwrap();
        bench.i8042.write(PORT_DATA, &[0xf4]);
        assert_eq!(bench.drain(), [KBD_ACK]);
    }

    #[test]
    fn any_offset_size_and_value_is_harmless() {
        let mut bench = Bench::new();
        for offset in [0, 1, 3, 4, 5, 255, 256, u64::MAX] {
            for len in [1, 2, 4, 8] {
                let mut data = vec![0; len];
                bench.i8042.read(offset, &mut data);
                bench.i8042.write(offset, &data);
            }
        }
        for value in 0..=u8::MAX {
            bench.i8042.write(PORT_COMMAND, &[value]);
            bench.i8042.write(PORT_DATA, &[value]);
            bench.drain();
        }
    }
}
