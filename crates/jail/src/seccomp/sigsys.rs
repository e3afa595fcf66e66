//! What happens on a violation: the filters' action is Trap, so the kernel sends SIGSYS to the
//! offending thread; this handler writes one line naming the thread, its role and the system call,
//! then ends the process with [`EXIT_STATUS`]. Only write(2) and exit_group(2) run in it (every
//! role's list has both), and nothing allocates or takes a lock.

use std::cell::Cell;
use std::io;

use libc::{c_int, c_void, siginfo_t};

use super::filters::syscall_name;
use super::ThreadRole;

/// The exit status of a process a filter stopped: 128 + SIGSYS, as for any "stopped by signal N".
pub const EXIT_STATUS: u8 = 128 + libc::SIGSYS as u8;

/// The thread name's room, as the kernel's (15 bytes and the NUL).
const NAME_LEN: usize = 16;

thread_local! {
    /// The calling thread's role (an index into `ThreadRole::ALL`), set before its filter is.
    static ROLE: Cell<usize> = const { Cell::new(usize::MAX) };
    /// The calling thread's name, copied while allocating is still fine.
    static NAME: Cell<[u8; NAME_LEN]> = const { Cell::new([0; NAME_LEN]) };
}

/// Records who the calling thread is, for the message.
pub(crate) fn remember_thread(role: ThreadRole) {
    let mut name = [0u8; NAME_LEN];
    if let Some(current) = std::thread::current().name() {
        let bytes = current.as_bytes();
        let len = bytes.len().min(NAME_LEN);
        name[..len].copy_from_slice(&bytes[..len]);
    }
    NAME.with(|cell| cell.set(name));
    ROLE.with(|cell| cell.set(role.index()));
}

/// Installs the handler for the whole process.
pub(crate) fn install() -> io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid value (empty mask, no flags) that we fill in below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(c_int, *mut siginfo_t, *mut c_void) = on_sigsys;
    action.sa_sigaction = handler as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `action` is a valid sigaction whose handler has the SA_SIGINFO signature and is
    // async-signal-safe; the old action is not asked for.
    let status = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    // The handler must run, so SIGSYS must not be blocked in the threads to come.
    // SAFETY: a zeroed sigset_t is filled in by sigemptyset before use; only this thread's mask
    // changes, and threads started from it inherit that.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGSYS);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    Ok(())
}

/// A fixed buffer the message is assembled in, without allocating.
struct Line {
    bytes: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, text: &[u8]) {
        for &byte in text {
            if byte == 0 || self.len == self.bytes.len() {
                return;
            }
            self.bytes[self.len] = byte;
            self.len += 1;
        }
    }

    fn push_hex(&mut self, number: u64) {
        let mut digits = [0u8; 16];
        let mut at = digits.len();
        let mut rest = number;
        loop {
            at -= 1;
            digits[at] = b"0123456789abcdef"[(rest % 16) as usize];
            rest /= 16;
            if rest == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }

    fn push_number(&mut self, number: i64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = number.unsigned_abs();
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if number < 0 {
            self.push(b"-");
        }
        self.push(&digits[at..]);
    }
}

/// The offset of `si_syscall` in the kernel's siginfo for SIGSYS (after si_signo, si_errno,
/// si_code, padding to 8, and `si_call_addr`), which libc does not expose.
const SI_SYSCALL_OFFSET: usize = 24;

/// The first three arguments of the call the thread made, from its registers as the signal found
/// them (rdi, rsi, rdx): enough to tell which ioctl, which socket family, which protection.
fn arguments(context: *mut c_void) -> [u64; 3] {
    if context.is_null() {
        return [0; 3];
    }
    // SAFETY: with SA_SIGINFO the third argument is the interrupted thread's ucontext_t, valid for
    // the handler's duration; only its saved registers are read.
    let registers = unsafe { &(*context.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
    [libc::REG_RDI, libc::REG_RSI, libc::REG_RDX].map(|register| registers[register as usize] as u64)
}

extern "C" fn on_sigsys(_signal: c_int, info: *mut siginfo_t, context: *mut c_void) {
    let number = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a full siginfo_t (128 bytes) for SIGSYS; si_syscall is an int at
        // this offset in it (see the kernel's `struct siginfo`'s `_sigsys`).
        i64::from(unsafe { info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<c_int>().read_unaligned() })
    };
    let role = ThreadRole::ALL.get(ROLE.with(Cell::get)).map_or("unconfined", |role| role.name());
    let name = NAME.with(Cell::get);
    let mut line = Line { bytes: [0; 256], len: 0 };
    line.push(b"kestrel: seccomp: thread '");
    line.push(&name);
    line.push(b"' (role ");
    line.push(role.as_bytes());
    line.push(b") made system call ");
    line.push(syscall_name(number).as_bytes());
    line.push(b" (");
    line.push_number(number);
    line.push(b", arguments");
    for argument in arguments(context) {
        line.push(b" 0x");
        line.push_hex(argument);
    }
    line.push(b"), which its filter forbids; exiting with status ");
    line.push_number(i64::from(EXIT_STATUS));
    line.push(b"\n");
    // SAFETY: write(2) on stderr from a valid buffer of `line.len` bytes, then exit_group(2): both
    // async-signal-safe; nothing after them runs.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.bytes.as_ptr().cast(), line.len);
        libc::syscall(libc::SYS_exit_group, c_int::from(EXIT_STATUS));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_decimal() {
        let mut line = Line { bytes: [0; 256], len: 0 };
        line.push_number(0);
        line.push(b" ");
        line.push_number(467);
        line.push(b" ");
        line.push_number(-12);
        line.push(b" ");
        line.push_hex(0xae80);
        line.push(b" ");
        line.push_hex(0);
        assert_eq!(&line.bytes[..line.len], b"0 467 -12 ae80 0");
    }

    #[test]
    fn a_long_line_is_cut_not_overrun() {
        let mut line = Line { bytes: [0; 256], len: 0 };
        for _ in 0..100 {
            line.push(b"abcdef");
        }
        assert_eq!(line.len, 256);
    }

    #[test]
    fn the_status_is_128_plus_sigsys() {
        assert_eq!(EXIT_STATUS, 159);
    }
}
