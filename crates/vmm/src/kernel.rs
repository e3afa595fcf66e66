//! Puts the kernel, its initrd and its command line into guest memory, and describes how to enter it.

use std::fs::File;
use std::path::Path;

use arch::BootEntry;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::bzimage::{self, BzImage};
use linux_loader::loader::elf::{self, Elf, PvhBootCapability};
use linux_loader::loader::{self, KernelLoader, KernelLoaderResult};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::config::VmConfig;
use crate::{memory, Error, Result};

/// Offset of the 64-bit entry point from the start of a bzImage's protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// A kernel in guest memory, ready for its boot information to be written.
pub struct LoadedKernel {
    pub entry: BootEntry,
    /// The bzImage setup header, which the zero page must start from; None for ELF kernels.
    pub setup_header: Option<setup_header>,
    /// First guest address after the kernel image (the initrd must not overlap it).
    pub end: u64,
}

/// The kernel and initrd files, opened before anything else so that a wrong path is reported
/// before any KVM work is done.
pub struct BootFiles {
    kernel: File,
    initrd: Option<(File, u64)>,
}

impl BootFiles {
    pub fn open(config: &VmConfig) -> Result<BootFiles> {
        let kernel_error = |source| Error::KernelRead { path: config.kernel.clone(), source };
        let kernel = File::open(&config.kernel).map_err(kernel_error)?;
        if kernel.metadata().map_err(kernel_error)?.is_dir() {
            return Err(Error::KernelNotRecognised { path: config.kernel.clone() });
        }
        let initrd = match &config.initrd {
            Some(path) => {
                let initrd_error = |source| Error::InitrdRead { path: path.clone(), source };
                let file = File::open(path).map_err(initrd_error)?;
                let size = file.metadata().map_err(initrd_error)?.len();
                if size >= config.memory_bytes {
                    return Err(Error::InitrdTooLarge {
                        path: path.clone(),
                        size,
                        memory: config.memory_bytes,
                    });
                }
                Some((file, size))
            }
            None => None,
        };
        Ok(BootFiles { kernel, initrd })
    }
}

/// Loads the kernel, the initrd and the command line, then writes the boot information the chosen
/// entry protocol expects (Linux zero page, or PVH start info) and the MP table.
pub fn load_boot_image(config: &VmConfig, files: BootFiles, mem: &GuestMemoryMmap) -> Result<BootEntry> {
    let BootFiles { kernel: mut kernel_file, initrd: initrd_file } = files;
    let kernel = load_kernel(&config.kernel, &mut kernel_file, mem)?;
    let cmdline = load_cmdline(&config.cmdline, kernel.setup_header.as_ref(), mem)?;
    let initrd = match (initrd_file, &config.initrd) {
        (Some((file, size)), Some(path)) => {
            Some(load_initrd(path, file, size, mem, config.memory_bytes, kernel.end)?)
        }
        _ => None,
    };
    match kernel.entry {
        BootEntry::Pvh(_) => arch::configure_pvh_boot(mem, config.memory_bytes, cmdline, initrd)?,
        BootEntry::Linux64(_) => {
            arch::configure_linux_boot(mem, config.memory_bytes, cmdline, initrd, kernel.setup_header)?
        }
    }
    arch::setup_mptable(mem, config.vcpus)?;
    Ok(kernel.entry)
}

/// Loads an ELF vmlinux (preferring its PVH entry when it has one) or, failing that, a bzImage.
fn load_kernel(path: &Path, file: &mut File, mem: &GuestMemoryMmap) -> Result<LoadedKernel> {
    let himem = Some(GuestAddress(arch::layout::HIMEM_START));
    let load_error = |e: loader::Error| Error::KernelLoad { path: path.to_owned(), reason: e.to_string() };

    match Elf::load(mem, None, file, himem) {
        Ok(result) => return Ok(elf_kernel(result)),
        Err(loader::Error::Elf(elf::Error::InvalidElfMagicNumber | elf::Error::ReadElfHeader)) => {}
        Err(e) => return Err(load_error(e)),
    }
    match BzImage::load(mem, None, file, himem) {
        Ok(result) => Ok(LoadedKernel {
            entry: BootEntry::Linux64(GuestAddress(result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET)),
            setup_header: result.setup_header,
            end: result.kernel_end,
        }),
        Err(loader::Error::Bzimage(bzimage::Error::InvalidBzImage | bzimage::Error::ReadBzImageHeader)) => {
            Err(Error::KernelNotRecognised { path: path.to_owned() })
        }
        Err(e) => Err(load_error(e)),
    }
}

fn elf_kernel(result: KernelLoaderResult) -> LoadedKernel {
    let entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(address) => BootEntry::Pvh(address),
        _ => BootEntry::Linux64(result.kernel_load),
    };
    LoadedKernel { entry, setup_header: None, end: result.kernel_end }
}

/// Writes the NUL-terminated command line; a bzImage may allow less than the default maximum.
fn load_cmdline(
    text: &str,
    header: Option<&setup_header>,
    mem: &GuestMemoryMmap,
) -> Result<arch::CmdlineLocation> {
    let max = header
        .map(|h| h.cmdline_size as usize + 1)
        .filter(|&size| size > 1)
        .map_or(arch::layout::CMDLINE_MAX_SIZE, |size| size.min(arch::layout::CMDLINE_MAX_SIZE));
    let text = text.trim();
    if text.len() + 1 > max {
        return Err(Error::CmdlineTooLong { len: text.len(), max: max - 1 });
    }
    let mut cmdline = Cmdline::new(max).map_err(Error::CmdlineInvalid)?;
    if !text.is_empty() {
        cmdline.insert_str(text).map_err(Error::CmdlineInvalid)?;
    }
    let address = GuestAddress(arch::layout::CMDLINE_START);
    loader::load_cmdline(mem, address, &cmdline)
        .map_err(|e| Error::GuestMemory { what: "the kernel command line", reason: e.to_string() })?;
    Ok(arch::CmdlineLocation { addr: address, size_with_nul: text.len() + 1 })
}

/// Reads the initrd into the top of low memory, above the kernel.
fn load_initrd(
    path: &Path,
    mut file: File,
    size: u64,
    mem: &GuestMemoryMmap,
    memory_bytes: u64,
    kernel_end: u64,
) -> Result<(GuestAddress, usize)> {
    let read_error = |source| Error::InitrdRead { path: path.to_owned(), source };
    let too_large = || Error::InitrdTooLarge { path: path.to_owned(), size, memory: memory_bytes };
    if size >= memory::low_memory_end(mem).0 {
        return Err(too_large());
    }
    let size = usize::try_from(size).map_err(|_| too_large())?;
    let address = match arch::initrd_load_address(mem, memory_bytes, size, kernel_end) {
        Ok(address) => address,
        Err(arch::Error::InitrdTooLarge { .. }) => return Err(too_large()),
        Err(e) => return Err(e.into()),
    };
    mem.read_exact_volatile_from(address, &mut file, size)
        .map_err(|e| read_error(std::io::Error::other(e.to_string())))?;
    Ok((address, size))
}
