//! Firecracker's `Uffd` memory backend: a restored guest's RAM is empty anonymous (or memfd,
//! hugetlb) memory registered with a userfaultfd, and another process — the page-fault handler
//! listening on a Unix socket — fills each page on its first touch (`UFFDIO_COPY`), typically
//! from the snapshot's memory file. The VMM connects to the socket and sends, as Firecracker
//! does, a JSON array of [`GuestRegionUffdMapping`] with the userfaultfd as `SCM_RIGHTS`.
//!
//! The handler's half ([`receive_from_vmm`], [`Uffd::read_event`], [`Uffd::copy`]) is here too,
//! for the tests and for tools that serve pages; `libc` has no userfaultfd structures, so the kernel's few are below.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_val};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;
use vmm_sys_util::{ioctl_io_nr, ioctl_iowr_nr};

use crate::snapshot::memory_file::SavedRegion;
use virtio::GuestRam;

/// The userfaultfd ioctls' type (`UFFDIO` in linux/userfaultfd.h).
const UFFDIO: u32 = 0xAA;
/// The API version `UFFDIO_API` must be given.
const UFFD_API: u64 = 0xAA;
/// Ballooned-out pages (`madvise(MADV_DONTNEED)`) are reported to the handler, which must then
/// serve them as zeroes, not from the file again; Firecracker asks for it too.
const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
/// `uffd_msg.event` of a page fault and of a removed range.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
pub const UFFD_EVENT_REMOVE: u8 = 0x15;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// The kernel's `struct uffd_msg` (32 bytes): the event and, for the two read here, two words.
#[repr(C)]
#[derive(Default)]
struct UffdMsg {
    event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    /// Page fault: flags; remove: start.
    arg0: u64,
    /// Page fault: address; remove: end.
    arg1: u64,
    arg2: u64,
}

ioctl_iowr_nr!(UFFDIO_API, UFFDIO, 0x3F, UffdioApi);
ioctl_iowr_nr!(UFFDIO_REGISTER, UFFDIO, 0x00, UffdioRegister);
ioctl_iowr_nr!(UFFDIO_COPY, UFFDIO, 0x03, UffdioCopy);
ioctl_io_nr!(USERFAULTFD_IOC_NEW, UFFDIO, 0x00);

/// One guest RAM region as Firecracker's handlers expect it: where it is mapped in the VMM,
/// how big, where its contents start in the memory file, its page size (`page_size_kib` is
/// Firecracker's deprecated name of the same value, in bytes despite the name, still sent).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestRegionUffdMapping {
    pub base_host_virt_addr: u64,
    pub size: usize,
    pub offset: u64,
    pub page_size: usize,
    pub page_size_kib: usize,
}

/// Why guest RAM could not be handed to a page-fault handler.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    #[error("cannot create a userfaultfd (it needs CAP_SYS_PTRACE, or access to /dev/userfaultfd): {0}")]
    Create(io::Error),
    #[error("the userfaultfd API handshake failed: {0}")]
    Api(io::Error),
    #[error("cannot register guest RAM with the userfaultfd: {0}")]
    Register(io::Error),
    #[error("cannot connect to the page-fault handler's socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("cannot send the guest memory mappings to the page-fault handler: {0}")]
    Send(io::Error),
    #[error("the snapshot memory layout does not match the guest RAM")]
    Layout,
    #[error("guest RAM locked in memory (mlock) cannot be served by a page-fault handler: locking fills it before the handler could")]
    Mlock,
}

/// A userfaultfd.
pub struct Uffd(OwnedFd);

impl Uffd {
    /// A userfaultfd that also takes faults from the kernel's accesses (KVM's, the devices'
    /// system calls), non-blocking, with remove events: the `userfaultfd` system call, else
    /// `/dev/userfaultfd` (whose file mode, not a capability, says who may use it).
    pub fn create() -> Result<Uffd, UffdError> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: the system call takes only flags and returns a new descriptor or -1.
        let raw = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        let fd = if raw >= 0 {
            // SAFETY: a fresh descriptor nothing else owns.
            unsafe { OwnedFd::from_raw_fd(raw as i32) }
        } else {
            let first = io::Error::last_os_error();
            let device = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open("/dev/userfaultfd")
                .map_err(|_| UffdError::Create(first))?;
            // SAFETY: USERFAULTFD_IOC_NEW takes the new descriptor's flags by value and returns it.
            let raw = unsafe { ioctl_with_val(&device, USERFAULTFD_IOC_NEW(), flags as libc::c_ulong) };
            if raw < 0 {
                return Err(UffdError::Create(io::Error::last_os_error()));
            }
            // SAFETY: a fresh descriptor nothing else owns.
            unsafe { OwnedFd::from_raw_fd(raw) }
        };
        let mut api = UffdioApi { api: UFFD_API, features: UFFD_FEATURE_EVENT_REMOVE, ioctls: 0 };
        // SAFETY: UFFDIO_API reads and writes the one struct, which lives across the call.
        if unsafe { ioctl_with_mut_ref(&fd, UFFDIO_API(), &mut api) } < 0 {
            return Err(UffdError::Api(io::Error::last_os_error()));
        }
        Ok(Uffd(fd))
    }

    /// Faults on missing pages of `[start, start + len)` of this process go to the handler.
    fn register(&self, start: u64, len: u64) -> Result<(), UffdError> {
        let mut register = UffdioRegister {
            range: UffdioRange { start, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes the one struct, which lives across the call;
        // the range is guest RAM this process mapped and keeps mapped.
        if unsafe { ioctl_with_mut_ref(&self.0, UFFDIO_REGISTER(), &mut register) } < 0 {
            return Err(UffdError::Register(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// The next event, if one is waiting: a page fault's address, or a removed range.
    pub fn read_event(&self) -> io::Result<Option<UffdEvent>> {
        let mut message = UffdMsg::default();
        let size = std::mem::size_of::<UffdMsg>();
        // SAFETY: reads at most `size` bytes into the message, which lives across the call.
        let read = unsafe { libc::read(self.0.as_raw_fd(), (&mut message as *mut UffdMsg).cast(), size) };
        if read < 0 {
            let error = io::Error::last_os_error();
            return if error.kind() == io::ErrorKind::WouldBlock { Ok(None) } else { Err(error) };
        }
        if read as usize != size {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a short userfaultfd message"));
        }
        Ok(Some(match message.event {
            UFFD_EVENT_PAGEFAULT => UffdEvent::PageFault { address: message.arg1 },
            UFFD_EVENT_REMOVE => UffdEvent::Remove { start: message.arg0, end: message.arg1 },
            other => UffdEvent::Other(other),
        }))
    }

    /// Fills the faulting process's pages at `destination` with `data` (whole pages) and wakes
    /// its waiting threads. A page already there (another fault raced this one) is not an error.
    pub fn copy(&self, destination: u64, data: &[u8]) -> io::Result<()> {
        let mut copy = UffdioCopy {
            dst: destination,
            src: data.as_ptr() as u64,
            len: data.len() as u64,
            mode: 0,
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads `len` bytes at `src` (the slice, alive across the call) into
        // the registered range of the process the userfaultfd belongs to, and writes `copy`.
        if unsafe { ioctl_with_mut_ref(&self.0, UFFDIO_COPY(), &mut copy) } < 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EEXIST) {
                return Err(error);
            }
        }
        Ok(())
    }
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// What a handler reads from the userfaultfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UffdEvent {
    /// A missing page at `address` (not page-aligned) was touched.
    PageFault {
        address: u64,
    },
    /// `[start, end)` was discarded (a balloon's pages): it reads as zeroes from now on.
    Remove {
        start: u64,
        end: u64,
    },
    Other(u8),
}

/// Registers `memory` (fresh, untouched guest RAM laid out as the snapshot's `layout`) with a new
/// userfaultfd and hands that to the handler listening on `socket`, with where each region's
/// contents are in the memory file. `page_size` is the backing's page size.
pub fn hand_to_handler(
    memory: &GuestRam,
    layout: &[SavedRegion],
    page_size: usize,
    socket: &Path,
) -> Result<(), UffdError> {
    if memory.num_regions() != layout.len() {
        return Err(UffdError::Layout);
    }
    let uffd = Uffd::create()?;
    let mut mappings = Vec::with_capacity(layout.len());
    for (region, saved) in memory.iter().zip(layout) {
        if region.start_addr().0 != saved.guest_address || region.len() != saved.size {
            return Err(UffdError::Layout);
        }
        let base = region.as_ptr() as u64;
        uffd.register(base, region.len())?;
        mappings.push(GuestRegionUffdMapping {
            base_host_virt_addr: base,
            size: region.len() as usize,
            offset: saved.file_offset,
            page_size,
            page_size_kib: page_size,
        });
    }
    let message = serde_json::to_vec(&mappings).map_err(|e| UffdError::Send(io::Error::other(e)))?;
    let stream = UnixStream::connect(socket)
        .map_err(|source| UffdError::Connect { path: socket.to_owned(), source })?;
    stream
        .send_with_fd(&message[..], uffd.as_raw_fd())
        .map_err(|e| UffdError::Send(io::Error::from_raw_os_error(e.errno())))?;
    // Both stay open for as long as the process (which serves this one VM) lives, as
    // Firecracker keeps them: closing the socket could overtake the message at the handler, and
    // with the VMM's copy of the userfaultfd a handler that dies leaves the guest waiting rather
    // than silently reading zeroes where its memory was.
    let _ = stream.into_raw_fd();
    let _ = uffd.0.into_raw_fd();
    Ok(())
}

/// The handler's side of the handshake: the VMM's region mappings and its userfaultfd, as
/// [`hand_to_handler`] (or Firecracker) sends them on `stream`.
pub fn receive_from_vmm(stream: &UnixStream) -> io::Result<(Vec<GuestRegionUffdMapping>, Uffd)> {
    let mut message = vec![0u8; 64 << 10];
    let (length, file) =
        stream.recv_with_fd(&mut message).map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    let file = file
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no userfaultfd came with the mappings"))?;
    let mappings = serde_json::from_slice(&message[..length])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((mappings, Uffd(OwnedFd::from(file))))
}
