//! COM1: a 16550A UART at ports 0x3F8-0x3FF, emulated by `vm_superio`.
//!
//! Guest output goes to a host writer (usually stdout). Host input is pushed
//! with [`Serial::enqueue_input`] into the UART's bounded receive FIFO; when
//! the FIFO is full the VMM stops reading its input and waits for
//! [`Serial::input_drained`], which fires once the guest has emptied the FIFO.

use std::io::{self, Write};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{Error as UartError, SerialEvents, SerialState};
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use super::{read_byte_registers, write_byte_registers};
use crate::{BusDevice, GuestErrorLog, InterruptLine, RestoreError};

/// UART register accesses that fail (an interrupt or event that cannot be signalled): once per
/// byte the guest reads or writes, so limited.
static REGISTER_ERRORS: GuestErrorLog = GuestErrorLog::site("serial registers");

/// Adapts an [`InterruptLine`] to the trigger type `vm_superio` raises.
struct UartInterrupt(Arc<dyn InterruptLine>);

impl Trigger for UartInterrupt {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

/// Tells the VMM when the guest has emptied the receive FIFO, so it can
/// resume feeding input it paused because the FIFO was full.
struct InputDrainedNotifier(EventFd);

impl SerialEvents for InputDrainedNotifier {
    fn buffer_read(&self) {}

    fn out_byte(&self) {}

    fn tx_lost_byte(&self) {}

    fn in_buffer_empty(&self) {
        if let Err(err) = self.0.write(1) {
            REGISTER_ERRORS.log(format_args!("serial: cannot signal that the input FIFO drained: {err}"));
        }
    }
}

/// The UART's registers and receive FIFO, as a snapshot keeps them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot(#[serde(with = "SavedUart")] pub(crate) SerialState);

/// vm_superio's `SerialState`, field for field, for serde.
#[derive(Serialize, Deserialize)]
#[serde(remote = "SerialState")]
struct SavedUart {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}

/// Bytes of the receive FIFO (vm-superio's 16550A).
const FIFO_BYTES: usize = 64;
/// IER bits a 16550A has (the guest's writes are masked to them).
const IER_VALID: u8 = 0x0f;
/// IIR bits the model sets: "no interrupt", THR empty, received data.
const IIR_VALID: u8 = 0x07;
/// LSR: received data is ready.
const LSR_DATA_READY: u8 = 0x01;
/// LSR: the transmitter is empty and idle, always so in this model (output never waits).
const LSR_TRANSMITTER_EMPTY: u8 = 0x60;

/// Why the UART could not be created from a saved state.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error(transparent)]
    State(#[from] RestoreError),
    #[error("cannot create the serial input-drained event: {0}")]
    Event(io::Error),
    #[error("the saved UART state is invalid: {0}")]
    Uart(String),
}

/// Checks a saved UART against what the 16550A model ever holds.
fn validate(state: &SerialState) -> Result<(), RestoreError> {
    const COMPONENT: &str = "serial (COM1)";
    if state.in_buffer.len() > FIFO_BYTES {
        return Err(RestoreError::TooLong {
            component: COMPONENT,
            field: "receive FIFO",
            saved: state.in_buffer.len(),
            max: FIFO_BYTES,
        });
    }
    if state.interrupt_enable & !IER_VALID != 0 {
        return Err(RestoreError::value(COMPONENT, "IER", state.interrupt_enable, "has bits a 16550A lacks"));
    }
    if state.interrupt_identification & !IIR_VALID != 0 {
        return Err(RestoreError::value(
            COMPONENT,
            "IIR",
            state.interrupt_identification,
            "has bits the model never sets",
        ));
    }
    let data_ready = state.line_status & LSR_DATA_READY != 0;
    if state.line_status & LSR_TRANSMITTER_EMPTY != LSR_TRANSMITTER_EMPTY
        || data_ready == state.in_buffer.is_empty()
    {
        return Err(RestoreError::value(
            COMPONENT,
            "LSR",
            state.line_status,
            "disagrees with the FIFO or an always-empty transmitter",
        ));
    }
    Ok(())
}

type Uart = vm_superio::Serial<UartInterrupt, InputDrainedNotifier, Box<dyn Write + Send>>;

/// The COM1 UART, placed on the I/O bus at 0x3F8 with length 8.
pub struct Serial {
    uart: Uart,
    /// Set after the first failed output write, so a closed pipe is reported
    /// once instead of once per byte the guest prints.
    output_failure_reported: bool,
}

impl Serial {
    /// Creates the UART. `interrupt` is raised for every UART interrupt
    /// (edge: IRQ 4 through the IOAPIC); guest output is written to `output`.
    ///
    /// Fails only if the `input_drained` eventfd cannot be created.
    pub fn new(interrupt: Arc<dyn InterruptLine>, output: Box<dyn Write + Send>) -> io::Result<Self> {
        Self::restore(interrupt, output, &SerialSnapshot::default()).map_err(|e| match e {
            SerialError::Event(e) => e,
            other => io::Error::other(other),
        })
    }

    /// Creates the UART with the registers and pending input a snapshot saved, once they are
    /// checked against what the model ever holds. vm-superio raises the interrupt the saved
    /// registers imply; on a restore it reaches a fresh IOAPIC whose saved state then replaces it
    /// (the saved IOAPIC and local APICs hold what was delivered).
    pub fn restore(
        interrupt: Arc<dyn InterruptLine>,
        output: Box<dyn Write + Send>,
        snapshot: &SerialSnapshot,
    ) -> Result<Self, SerialError> {
        validate(&snapshot.0)?;
        let input_drained = EventFd::new(libc::EFD_NONBLOCK).map_err(SerialError::Event)?;
        let uart = Uart::from_state(
            &snapshot.0,
            UartInterrupt(interrupt),
            InputDrainedNotifier(input_drained),
            output,
        )
        .map_err(|e| SerialError::Uart(format!("{e:?}")))?;
        Ok(Serial { uart, output_failure_reported: false })
    }

    /// The registers and pending input, for a snapshot.
    pub fn snapshot(&self) -> SerialSnapshot {
        SerialSnapshot(self.uart.state())
    }

    /// Queues host input for the guest and returns how many bytes of `bytes`
    /// were accepted: the receive FIFO is bounded, so the rest must be offered
    /// again after [`input_drained`](Self::input_drained) fires.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room_before = self.input_room();
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(_) | Err(UartError::FullFifo) => {}
            // The bytes are queued even if the interrupt could not be raised;
            // the guest will still find them when it next polls the UART.
            Err(err) => tracing::warn!("serial: input queued but interrupt failed: {err:?}"),
        }
        room_before - self.input_room()
    }

    /// How many bytes [`enqueue_input`](Self::enqueue_input) would accept now.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Signalled (non-blocking eventfd) whenever the guest reads the receive
    /// FIFO empty. Register it with the VMM's poller; read it to clear it.
    pub fn input_drained(&self) -> &EventFd {
        &self.uart.events().0
    }

    fn write_register(&mut self, offset: u8, value: u8) {
        match self.uart.write(offset, value) {
            Ok(()) => {}
            Err(UartError::IOError(err)) => {
                // Guest output is best effort: a closed stdout must not stop the guest.
                if !self.output_failure_reported {
                    tracing::warn!("serial: dropping guest output: {err}");
                    self.output_failure_reported = true;
                }
            }
            Err(err) => REGISTER_ERRORS.log(format_args!("serial: register write failed: {err:?}")),
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_byte_registers(offset, data, |register| self.uart.read(register));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_byte_registers(offset, data, |register, value| self.write_register(register, value));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use super::*;

    const DATA: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LSR: u64 = 5;
    const IER_THR_EMPTY: u8 = 0x02;
    const LSR_DATA_READY: u8 = 0x01;

    #[derive(Default)]
    struct CountingInterrupt(AtomicUsize);

    impl InterruptLine for CountingInterrupt {
        fn trigger(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// A writer the test can inspect after handing it to the UART.
    #[derive(Clone, Default)]
    struct SharedOutput(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedOutput {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }

        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    fn serial_with_output() -> (Serial, Arc<CountingInterrupt>, SharedOutput) {
        let interrupt = Arc::new(CountingInterrupt::default());
        let output = SharedOutput::default();
        let serial = Serial::new(interrupt.clone(), Box::new(output.clone())).unwrap();
        (serial, interrupt, output)
    }

    fn read_port(serial: &mut Serial, offset: u64) -> u8 {
        let mut byte = [0];
        serial.read(offset, &mut byte);
        byte[0]
    }

    #[test]
    fn transmitted_bytes_reach_the_output() {
        let (mut serial, _, output) = serial_with_output();
        serial.write(DATA, b"h");
        serial.write(DATA, b"i");
        assert_eq!(output.0.lock().unwrap().as_slice(), b"hi");
    }

    #[test]
    fn enabling_thr_empty_interrupt_raises_the_line() {
        let (mut serial, interrupt, _) = serial_with_output();
        assert_eq!(interrupt.0.load(Ordering::SeqCst), 0);
        serial.write(IER, &[IER_THR_EMPTY]);
        assert_eq!(interrupt.0.load(Ordering::SeqCst), 1);
        // Once the guest has read IIR, the next transmitted byte interrupts again.
        read_port(&mut serial, IIR);
        serial.write(DATA, b"x");
        assert_eq!(interrupt.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn input_is_bounded_by_the_fifo() {
        let (mut serial, _, _) = serial_with_output();
        let room = serial.input_room();
        assert!(room > 0);
        let input = vec![b'a'; room + 10];
        assert_eq!(serial.enqueue_input(&input), room);
        assert_eq!(serial.input_room(), 0);
        assert_eq!(serial.enqueue_input(b"more"), 0);
        assert_eq!(serial.enqueue_input(b""), 0);
    }

    #[test]
    fn reading_the_fifo_empty_signals_input_drained() {
        let (mut serial, _, _) = serial_with_output();
        let empty_fifo_room = serial.input_room();
        assert_eq!(serial.enqueue_input(b"ok"), 2);
        assert_ne!(read_port(&mut serial, LSR) & LSR_DATA_READY, 0);

        assert_eq!(read_port(&mut serial, DATA), b'o');
        assert!(
            serial.input_drained().read().is_err(),
            "not drained yet, so the nonblocking eventfd has nothing"
        );
        assert_eq!(read_port(&mut serial, DATA), b'k');
        assert_eq!(serial.input_drained().read().unwrap(), 1);
        assert_eq!(read_port(&mut serial, LSR) & LSR_DATA_READY, 0);
        assert_eq!(serial.input_room(), empty_fifo_room);
    }

    #[test]
    fn closed_output_does_not_panic() {
        let interrupt = Arc::new(CountingInterrupt::default());
        let mut serial = Serial::new(interrupt, Box::new(ClosedPipe)).unwrap();
        serial.write(DATA, b"lost");
        serial.write(DATA, b"lost again");
    }

    #[test]
    fn any_offset_and_size_is_harmless() {
        let (mut serial, _, _) = serial_with_output();
        for offset in [0, 1, 7, 8, 255, 256, u64::MAX - 1, u64::MAX] {
            for len in [1, 2, 4, 8] {
                let mut data = vec![0xa5; len];
                serial.read(offset, &mut data);
                serial.write(offset, &data);
            }
        }
    }

    #[test]
    fn a_saved_state_the_uart_never_holds_is_refused() {
        let (mut serial, _, _) = serial_with_output();
        serial.enqueue_input(b"hi");
        let saved = serial.snapshot();
        let restore = |state: SerialState| {
            let interrupt = Arc::new(CountingInterrupt::default());
            Serial::restore(interrupt, Box::new(io::sink()), &SerialSnapshot(state))
        };
        let mut restored = restore(saved.0.clone()).unwrap();
        assert_eq!(read_port(&mut restored, DATA), b'h');

        let mut overfull = saved.0.clone();
        overfull.in_buffer = vec![0; FIFO_BYTES + 1];
        assert!(matches!(
            restore(overfull),
            Err(SerialError::State(RestoreError::TooLong { saved: 65, .. }))
        ));
        let mut ier = saved.0.clone();
        ier.interrupt_enable = 0xf0;
        assert!(matches!(restore(ier), Err(SerialError::State(RestoreError::Value { value: 0xf0, .. }))));
        let mut iir = saved.0.clone();
        iir.interrupt_identification = 0x80;
        assert!(matches!(restore(iir), Err(SerialError::State(RestoreError::Value { value: 0x80, .. }))));
        let mut not_ready = saved.0;
        not_ready.line_status &= !LSR_DATA_READY;
        assert!(matches!(restore(not_ready), Err(SerialError::State(RestoreError::Value { .. }))));
    }
}
