//! Where the VMM put the kernel command line, as both boot protocols need to point at it.

use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::guest_write::check_room;
use crate::layout::CMDLINE_MAX_SIZE;
use crate::{Error, Result};

/// A NUL-terminated command line already written to guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmdlineLocation {
    /// Guest-physical address of its first byte (normally [`crate::layout::CMDLINE_START`]).
    pub addr: GuestAddress,
    /// Its length including the terminating NUL.
    pub size_with_nul: usize,
}

impl CmdlineLocation {
    /// Fails unless the command line has a sane size and lies in guest memory, so the boot
    /// structures never point the guest at something that is not there.
    pub(crate) fn check(&self, mem: &impl GuestMemoryBackend) -> Result<()> {
        if !(1..=CMDLINE_MAX_SIZE).contains(&self.size_with_nul) {
            return Err(Error::CmdlineSize(self.size_with_nul));
        }
        check_room(mem, "command line", self.addr, self.size_with_nul)
    }
}
