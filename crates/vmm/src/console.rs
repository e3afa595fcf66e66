//! The host side of the serial console: the terminal's raw mode and the Ctrl-A escape.

use std::io::IsTerminal;
use std::sync::Mutex;

/// Ctrl-A, the escape byte (as in QEMU and screen).
pub const ESCAPE: u8 = 0x01;

/// What the user's keystrokes mean once the escape sequences are taken out.
#[derive(Debug, PartialEq, Eq)]
pub enum ConsoleInput {
    /// Bytes for the guest.
    Guest(Vec<u8>),
    /// Ctrl-A X: stop the VM.
    Quit,
}

/// Splits a byte stream into guest input and escape commands. Ctrl-A X quits, Ctrl-A Ctrl-A sends
/// one Ctrl-A to the guest, Ctrl-A followed by anything else sends both bytes. The state carries over
/// between reads, so an escape split across two reads still works.
#[derive(Debug, Default)]
pub struct EscapeParser {
    after_escape: bool,
}

impl EscapeParser {
    pub fn feed(&mut self, bytes: &[u8]) -> ConsoleInput {
        let mut guest = Vec::with_capacity(bytes.len());
        for &byte in bytes {
            if self.after_escape {
                self.after_escape = false;
                match byte {
                    b'x' | b'X' => return ConsoleInput::Quit,
                    ESCAPE => guest.push(ESCAPE),
                    other => guest.extend_from_slice(&[ESCAPE, other]),
                }
            } else if byte == ESCAPE {
                self.after_escape = true;
            } else {
                guest.push(byte);
            }
        }
        ConsoleInput::Guest(guest)
    }
}

/// The terminal settings to put back, shared with the panic hook so that no exit path leaves the
/// user's terminal raw.
static SAVED_TERMIOS: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Puts stdin's terminal in raw mode (keys go to the guest as typed, Ctrl-C included) and restores
/// the saved settings when dropped. Output processing is left on, so a guest's bare "\n" still starts
/// a new line. Does nothing when stdin is not a terminal.
pub struct RawTerminal {
    active: bool,
}

impl RawTerminal {
    pub fn enter() -> std::io::Result<RawTerminal> {
        if !std::io::stdin().is_terminal() {
            return Ok(RawTerminal { active: false });
        }
        // SAFETY: termios is plain old data; an all-zero value is valid and tcgetattr overwrites it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: STDIN_FILENO is open (it is a terminal) and `saved` is a valid termios to fill.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN);
        raw.c_iflag &= !(libc::IXON | libc::ICRNL | libc::INLCR | libc::IGNCR | libc::BRKINT);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        *SAVED_TERMIOS.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        // SAFETY: STDIN_FILENO is a terminal and `raw` is a valid termios derived from its settings.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RawTerminal { active: true })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if self.active {
            restore_terminal();
        }
    }
}

/// Puts back the terminal settings saved by [`RawTerminal::enter`], if any. Safe to call from a
/// panic hook and more than once.
pub fn restore_terminal() {
    let saved = SAVED_TERMIOS.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(saved) = saved {
        // SAFETY: `saved` came from tcgetattr on this same fd.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_bytes_go_to_the_guest() {
        let mut parser = EscapeParser::default();
        assert_eq!(parser.feed(b"ls\r"), ConsoleInput::Guest(b"ls\r".to_vec()));
    }

    #[test]
    fn ctrl_a_x_quits_even_across_reads() {
        let mut parser = EscapeParser::default();
        assert_eq!(parser.feed(b"ab\x01"), ConsoleInput::Guest(b"ab".to_vec()));
        assert_eq!(parser.feed(b"x"), ConsoleInput::Quit);
        let mut parser = EscapeParser::default();
        assert_eq!(parser.feed(b"\x01X"), ConsoleInput::Quit);
    }

    #[test]
    fn doubled_escape_sends_one_and_others_pass_through() {
        let mut parser = EscapeParser::default();
        assert_eq!(parser.feed(b"\x01\x01a"), ConsoleInput::Guest(b"\x01a".to_vec()));
        assert_eq!(parser.feed(b"\x01c"), ConsoleInput::Guest(b"\x01c".to_vec()));
    }
}
