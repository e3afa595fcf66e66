//! Bounds-checked writes of boot structures into guest memory.

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

use crate::{Error, Result};

/// Fails unless `[addr, addr + len)` is entirely backed by guest memory.
///
/// Checking first means a structure is either written whole or not at all: a bare
/// `write_slice` would stop at the end of a region after writing part of it.
pub(crate) fn check_room(
    mem: &impl GuestMemoryBackend,
    what: &'static str,
    addr: GuestAddress,
    len: usize,
) -> Result<()> {
    let fits = addr.0.checked_add(len as u64).is_some() && mem.check_range(addr, len);
    if fits {
        Ok(())
    } else {
        Err(Error::GuestMemoryTooSmall { what, addr: addr.0, len })
    }
}

/// Writes `bytes` at `addr`, or fails without writing if they do not fit.
pub(crate) fn write_bytes(
    mem: &impl GuestMemoryBackend,
    what: &'static str,
    addr: GuestAddress,
    bytes: &[u8],
) -> Result<()> {
    check_room(mem, what, addr, bytes.len())?;
    mem.write_slice(bytes, addr).map_err(|source| Error::WriteGuestMemory { what, source })
}

/// Writes a plain-data object at `addr`, or fails without writing if it does not fit.
pub(crate) fn write_obj<T: ByteValued>(
    mem: &impl GuestMemoryBackend,
    what: &'static str,
    addr: GuestAddress,
    obj: &T,
) -> Result<()> {
    write_bytes(mem, what, addr, obj.as_slice())
}
