//! The host side of the network: a tap device, whose every read and write is one Ethernet frame
//! behind a virtio-net header.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::handler::FrameBackend;
use super::VNET_HDR_LEN;

/// The longest interface name Linux accepts (IFNAMSIZ less the NUL).
pub const TAP_NAME_MAX_BYTES: usize = libc::IFNAMSIZ - 1;

/// The name Kestrel asks for when the user lets the kernel choose: the kernel replaces `%d` with
/// the first free number.
const AUTO_NAME_TEMPLATE: &str = "kestrel%d";

/// Why a tap cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(io::Error),
    #[error(
        "not permitted (creating a tap needs CAP_NET_ADMIN, and so does attaching to a tap \
         owned by another user or group): {0}"
    )]
    NotPermitted(io::Error),
    #[error("cannot create or attach to it: {0}")]
    Attach(io::Error),
    #[error("it does not take 12-byte virtio-net headers: {0}")]
    VnetHeader(io::Error),
    #[error("the name is longer than {TAP_NAME_MAX_BYTES} bytes")]
    NameTooLong,
}

/// An open tap device, non-blocking, with virtio-net headers on every frame. The kernel deletes
/// a tap Kestrel created when the last descriptor closes; a persistent one (`ip tuntap add`)
/// stays.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates the tap `name`, or attaches to it if it exists; with `None`, creates a tap with a
    /// free `kestrelN` name.
    pub fn open(name: Option<&str>) -> Result<Tap, TapError> {
        let requested = name.unwrap_or(AUTO_NAME_TEMPLATE);
        if requested.len() > TAP_NAME_MAX_BYTES {
            return Err(TapError::NameTooLong);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;

        // SAFETY: ifreq is plain data, for which all zeroes is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, &byte) in request.ifr_name.iter_mut().zip(requested.as_bytes()) {
            *slot = byte as libc::c_char;
        }
        request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which lives across the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) } < 0 {
            let error = io::Error::last_os_error();
            return Err(match error.raw_os_error() {
                Some(libc::EPERM) => TapError::NotPermitted(error),
                _ => TapError::Attach(error),
            });
        }

        let header_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which lives across the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &header_len) } < 0 {
            return Err(TapError::VnetHeader(io::Error::last_os_error()));
        }

        // SAFETY: the kernel wrote back a NUL-terminated name of at most IFNAMSIZ bytes.
        let name = unsafe { CStr::from_ptr(request.ifr_name.as_ptr()) }.to_string_lossy().into_owned();
        Ok(Tap { file, name })
    }

    /// The interface's name (the one the kernel picked, for an automatic name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the tap which offloads it may use in the frames it hands us (`TUN_F_*`): those the
    /// guest driver accepted, so that every frame it receives is one it can take.
    pub fn set_offloads(&self, offloads: libc::c_uint) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no memory of ours.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETOFFLOAD, offloads as libc::c_ulong) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Another descriptor for the same tap (for a worker thread; the device keeps its own).
    pub fn try_clone(&self) -> io::Result<Tap> {
        Ok(Tap { file: self.file.try_clone()?, name: self.name.clone() })
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl FrameBackend for Tap {
    fn receive(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut self.file, buffer)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        io::Write::write(&mut self.file, frame)
    }
}
