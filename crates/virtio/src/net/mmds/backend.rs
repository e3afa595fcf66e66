//! A [`FrameBackend`] in front of the tap that detours the guest's MMDS frames to the card's
//! [`MmdsStack`] and hands the stack's frames to the guest before the tap's.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::stack::MmdsStack;
use crate::net::handler::FrameBackend;
use crate::net::VNET_HDR_LEN;

/// The tap (`B`), with the metadata service in front of it.
pub struct MmdsBackend<B> {
    inner: B,
    stack: MmdsStack,
}

impl<B> MmdsBackend<B> {
    pub fn new(inner: B, stack: MmdsStack) -> MmdsBackend<B> {
        MmdsBackend { inner, stack }
    }
}

impl<B: AsRawFd> AsRawFd for MmdsBackend<B> {
    /// The tap's: the worker waits on it; the service's frames need no waiting (see
    /// [`FrameBackend::has_pending`]).
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl<B: FrameBackend> FrameBackend for MmdsBackend<B> {
    fn receive(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if let Some(frame) = self.stack.next_frame() {
            let len = VNET_HDR_LEN + frame.len();
            if let Some(out) = buffer.get_mut(..len) {
                // No offloads: flags 0, no GSO, checksums complete.
                out[..VNET_HDR_LEN].fill(0);
                out[VNET_HDR_LEN..].copy_from_slice(&frame);
                return Ok(len);
            }
        }
        self.inner.receive(buffer)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        match frame.get(VNET_HDR_LEN..) {
            Some(ethernet) if self.stack.wants(ethernet) => {
                self.stack.deliver(ethernet);
                Ok(frame.len())
            }
            _ => self.inner.send(frame),
        }
    }

    fn has_pending(&self) -> bool {
        self.stack.has_frames()
    }
}
