//! The eventfd an engine signals completions through.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

/// A non-blocking eventfd: io_uring (registered with it) and the pool's threads add to its count
/// when an operation completes; the engine's owner waits for it to be readable.
#[derive(Debug)]
pub struct EventFd {
    file: File,
}

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes two integers and returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor was just created and nothing else owns it.
        Ok(EventFd { file: unsafe { File::from_raw_fd(fd) } })
    }

    pub fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Adds one to the count, waking a waiter.
    pub fn signal(&self) {
        // Fails only when the count would overflow (2^64 - 2 signals unread), which leaves it
        // readable anyway.
        let _ = (&self.file).write(&1u64.to_ne_bytes());
    }

    /// Resets the count (does nothing when it is zero).
    pub fn clear(&self) {
        let mut count = [0u8; 8];
        let _ = (&self.file).read(&mut count);
    }

    /// Blocks until the count is not zero.
    pub fn wait(&self) -> io::Result<()> {
        let mut poll = libc::pollfd { fd: self.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        loop {
            // SAFETY: poll reads and writes the one pollfd, which lives across the call.
            let result = unsafe { libc::poll(&mut poll, 1, -1) };
            if result >= 0 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
}
