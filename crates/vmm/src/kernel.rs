//! Puts the kernel, its initrd and its command line into guest memory, and describes how to enter it.

use std::fs::File;
use std::path::Path;

use arch::BootEntry;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::bzimage::{self, BzImage};
use linux_loader::loader::elf::{self, Elf, PvhBootCapability};
use linux_loader::loader::{self, KernelLoader, KernelLoaderResult};
use virtio::GuestRam;
use vm_memory::{Bytes, GuestAddress};

use crate::config::VmConfig;
use crate::{memory, Error, Result};

/// Offset of the 64-bit entry point from the start of a bzImage's protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// The first boot protocol version (2.10) whose setup header has `init_size`.
const BOOT_PROTOCOL_INIT_SIZE: u16 = 0x020A;
/// The first boot protocol version (2.12) whose setup header has `xloadflags`.
const BOOT_PROTOCOL_XLOADFLAGS: u16 = 0x020C;
/// `xloadflags`: the kernel has the 64-bit entry point at `code32_start + 0x200`.
const XLF_KERNEL_64: u16 = 1 << 0;

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

/// Opens a kernel or initrd: without blocking (a FIFO would stall the VMM thread, and with it the
/// API), and only if the open file is a regular file.
fn open_regular(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(file)
}

impl BootFiles {
    pub fn open(config: &VmConfig) -> Result<BootFiles> {
        let kernel_error = |source| Error::KernelRead { path: config.kernel.clone(), source };
        let kernel = open_regular(&config.kernel).map_err(kernel_error)?;
        let initrd = match &config.initrd {
            Some(path) => {
                let initrd_error = |source| Error::InitrdRead { path: path.clone(), source };
                let file = open_regular(path).map_err(initrd_error)?;
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
/// entry protocol expects (Linux zero page, or PVH start info), the MP table and the ACPI tables
/// (always: a guest without ACPI, or booted with `acpi=off`, finds its CPUs in the MP table).
///
/// `device_cmdline` is appended to the user's command line: it declares the devices the guest
/// cannot discover by itself (virtio-mmio).
pub fn load_boot_image(
    config: &VmConfig,
    files: BootFiles,
    mem: &GuestRam,
    device_cmdline: &str,
) -> Result<BootEntry> {
    let BootFiles { kernel: mut kernel_file, initrd: initrd_file } = files;
    let kernel = load_kernel(&config.kernel, &mut kernel_file, mem)?;
    let full_cmdline = with_kernel_params(&config.cmdline, device_cmdline);
    let cmdline = load_cmdline(&full_cmdline, kernel.setup_header.as_ref(), mem)?;
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
    let acpi = arch::acpi::AcpiConfig { num_cpus: config.vcpus };
    let rsdp = arch::acpi::setup_acpi(mem, &acpi)?;
    arch::acpi::announce_rsdp(mem, kernel.entry, rsdp)?;
    Ok(kernel.entry)
}

/// Adds `params` to the kernel's part of `cmdline`: before a `--`, after which Linux passes
/// everything to init.
fn with_kernel_params(cmdline: &str, params: &str) -> String {
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    let split = words.iter().position(|&w| w == "--").unwrap_or(words.len());
    let (kernel, init) = words.split_at(split);
    kernel
        .iter()
        .copied()
        .chain(params.split_whitespace())
        .chain(init.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Loads an ELF vmlinux (preferring its PVH entry when it has one) or, failing that, a bzImage.
fn load_kernel(path: &Path, file: &mut File, mem: &GuestRam) -> Result<LoadedKernel> {
    let himem = Some(GuestAddress(arch::layout::HIMEM_START));
    let load_error = |e: loader::Error| Error::KernelLoad { path: path.to_owned(), reason: e.to_string() };

    match Elf::load(mem, None, file, himem) {
        Ok(result) => return Ok(elf_kernel(result)),
        Err(loader::Error::Elf(elf::Error::InvalidElfMagicNumber | elf::Error::ReadElfHeader)) => {}
        Err(e) => return Err(load_error(e)),
    }
    match BzImage::load(mem, None, file, himem) {
        Ok(result) if !has_64bit_entry(&result) => Err(Error::KernelLoad {
            path: path.to_owned(),
            reason: "the bzImage has no 64-bit entry point (XLF_KERNEL_64 is clear)".to_owned(),
        }),
        Ok(result) => Ok(LoadedKernel {
            entry: BootEntry::Linux64(GuestAddress(result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET)),
            setup_header: result.setup_header,
            end: bzimage_end(&result),
        }),
        Err(loader::Error::Bzimage(bzimage::Error::InvalidBzImage | bzimage::Error::ReadBzImageHeader)) => {
            Err(Error::KernelNotRecognised { path: path.to_owned() })
        }
        Err(e) => Err(load_error(e)),
    }
}

/// Whether a bzImage can be entered at `code32_start + 0x200` in long mode. Protocol 2.12+ says
/// so in `xloadflags` (a 32-bit kernel has no such entry); older x86_64 kernels always have it.
fn has_64bit_entry(result: &KernelLoaderResult) -> bool {
    result.setup_header.is_none_or(|header| {
        header.version < BOOT_PROTOCOL_XLOADFLAGS || header.xloadflags & XLF_KERNEL_64 != 0
    })
}

/// Where a loaded bzImage ends. linux-loader's `kernel_end` stops at the last byte of the file,
/// but the kernel uses memory past that (.bss, its early page tables, the decompressor's buffer)
/// before it reads the memory map: `init_size` (protocol 2.10+) bytes from its load address.
fn bzimage_end(result: &KernelLoaderResult) -> u64 {
    let init_end = result
        .setup_header
        .filter(|header| header.version >= BOOT_PROTOCOL_INIT_SIZE)
        .map_or(0, |header| result.kernel_load.0 + u64::from(header.init_size));
    result.kernel_end.max(init_end)
}

fn elf_kernel(result: KernelLoaderResult) -> LoadedKernel {
    let entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(address) => BootEntry::Pvh(address),
        _ => BootEntry::Linux64(result.kernel_load),
    };
    LoadedKernel { entry, setup_header: None, end: result.kernel_end }
}

/// Writes the NUL-terminated command line; a bzImage may allow less than the default maximum.
fn load_cmdline(text: &str, header: Option<&setup_header>, mem: &GuestRam) -> Result<arch::CmdlineLocation> {
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
    mem: &GuestRam,
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

#[cfg(test)]
mod tests {
    //! Loading the test guests from `guests/` (and broken kernels) into plain guest memory: no KVM.

    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::SerialConfig;

    const MIB: u64 = 1 << 20;
    const LOAD_ADDRESS: u64 = 0x20_0000;

    #[test]
    fn device_params_go_before_the_init_arguments() {
        assert_eq!(with_kernel_params("console=ttyS0 quiet", "a=1 b=2"), "console=ttyS0 quiet a=1 b=2");
        assert_eq!(with_kernel_params("quiet -- sh -c x", "a=1"), "quiet a=1 -- sh -c x");
        assert_eq!(with_kernel_params("-- init", "a=1"), "a=1 -- init");
        assert_eq!(with_kernel_params("quiet", ""), "quiet");
        assert_eq!(with_kernel_params("", "a=1"), "a=1");
    }

    fn guest_memory(size: u64) -> GuestRam {
        GuestRam::from_ranges(&arch::ram_regions(size)).unwrap()
    }

    /// A file in the temporary directory, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(contents: &[u8]) -> TempFile {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "kestrel-kernel-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(name);
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn load(path: &Path, mem: &GuestRam) -> Result<LoadedKernel> {
        load_kernel(path, &mut File::open(path).unwrap(), mem)
    }

    fn load_bytes(contents: &[u8], mem: &GuestRam) -> Result<LoadedKernel> {
        let file = TempFile::new(contents);
        load(&file.0, mem)
    }

    fn read_guest(mem: &GuestRam, addr: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
        bytes
    }

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    /// hello.bzimage, and the size of its real-mode part (boot sector + setup sectors).
    fn bzimage() -> (Vec<u8>, usize) {
        let bytes = std::fs::read(guests::HELLO_BZIMAGE).unwrap();
        let setup_len = (usize::from(bytes[0x1f1]) + 1) * 512;
        (bytes, setup_len)
    }

    #[test]
    fn a_plain_elf_is_entered_at_e_entry_in_long_mode() {
        let mem = guest_memory(64 * MIB);
        let elf = std::fs::read(guests::HELLO).unwrap();
        let e_entry = u64::from_le_bytes(elf[0x18..0x20].try_into().unwrap());
        let kernel = load(Path::new(guests::HELLO), &mem).unwrap();
        assert_eq!(kernel.entry, BootEntry::Linux64(GuestAddress(e_entry)));
        assert!(kernel.setup_header.is_none());
        // The guests put _start64 0x200 bytes into an image linked at 2 MiB.
        assert_eq!(e_entry, LOAD_ADDRESS + BZIMAGE_64BIT_ENTRY_OFFSET);
        assert!(kernel.end > e_entry && kernel.end < 4 * MIB, "end {:#x}", kernel.end);
        // The code at the entry point is the file's.
        let hello_code = read_guest(&mem, e_entry, 16);
        let bz = std::fs::read(guests::HELLO_BZIMAGE).unwrap();
        let (_, setup_len) = bzimage();
        let at = setup_len + 0x200;
        assert_eq!(hello_code, bz[at..at + 16]);
    }

    #[test]
    fn an_elf_with_a_pvh_note_is_entered_through_it() {
        let mem = guest_memory(64 * MIB);
        let kernel = load(Path::new(guests::HELLO_PVH), &mem).unwrap();
        // pvh_start is the first thing in the guests' image (guests/c/entry.S, link.ld.in).
        assert_eq!(kernel.entry, BootEntry::Pvh(GuestAddress(LOAD_ADDRESS)));
        assert!(kernel.setup_header.is_none());
        assert!(kernel.end > LOAD_ADDRESS);
    }

    #[test]
    fn a_bzimage_is_entered_0x200_past_code32_start_with_its_setup_header() {
        let mem = guest_memory(64 * MIB);
        let (bytes, setup_len) = bzimage();
        let kernel = load(Path::new(guests::HELLO_BZIMAGE), &mem).unwrap();
        assert_eq!(kernel.entry, BootEntry::Linux64(GuestAddress(LOAD_ADDRESS + 0x200)));
        let header = kernel.setup_header.expect("setup header");
        let (magic, version, code32_start, cmdline_size, init_size) =
            (header.header, header.version, header.code32_start, header.cmdline_size, header.init_size);
        assert_eq!(magic, u32::from_le_bytes(*b"HdrS"));
        assert_eq!(version, 0x020F);
        assert_eq!(u64::from(code32_start), LOAD_ADDRESS);
        assert_eq!(cmdline_size, 2047);
        // The protected-mode part is in memory at code32_start ...
        let kernel_bytes = &bytes[setup_len..];
        assert_eq!(read_guest(&mem, LOAD_ADDRESS, kernel_bytes.len()), kernel_bytes);
        // ... and the kernel reaches to init_size, past the end of the file (its .bss).
        assert!(u64::from(init_size) > kernel_bytes.len() as u64);
        assert_eq!(kernel.end, LOAD_ADDRESS + u64::from(init_size));
    }

    #[test]
    fn files_that_are_not_kernels_are_not_recognised() {
        let mem = guest_memory(16 * MIB);
        let text = b"This is not a kernel, just some text that is long enough to fill an ELF header.\n";
        for contents in [&text[..], b"", b"\x7fEL", b"\x7fELF", &text.repeat(20)] {
            match load_bytes(contents, &mem) {
                Err(Error::KernelNotRecognised { .. }) => {}
                other => panic!("{:?}: {:?}", String::from_utf8_lossy(contents), other.map(|k| k.entry)),
            }
        }
    }

    #[test]
    fn a_truncated_elf_fails_to_load() {
        let mem = guest_memory(16 * MIB);
        let elf = std::fs::read(guests::HELLO).unwrap();
        for len in [elf.len() / 2, 0x100] {
            match load_bytes(&elf[..len], &mem) {
                Err(Error::KernelLoad { reason, .. }) => assert!(!reason.is_empty()),
                other => panic!("{len} bytes: {:?}", other.map(|k| k.entry)),
            }
        }
    }

    #[test]
    fn a_truncated_bzimage_fails_to_load() {
        let mem = guest_memory(16 * MIB);
        let (bytes, setup_len) = bzimage();
        // Header intact, but the file ends inside the setup sectors.
        match load_bytes(&bytes[..setup_len - 1], &mem) {
            Err(Error::KernelLoad { .. }) => {}
            other => panic!("{:?}", other.map(|k| k.entry)),
        }
    }

    #[test]
    fn a_bzimage_without_a_64bit_entry_is_refused() {
        let mem = guest_memory(16 * MIB);
        let (mut bytes, _) = bzimage();
        bytes[0x236] &= !1; // xloadflags: clear XLF_KERNEL_64
        match load_bytes(&bytes, &mem) {
            Err(Error::KernelLoad { reason, .. }) => assert!(reason.contains("64-bit entry"), "{reason}"),
            other => panic!("{:?}", other.map(|k| k.entry)),
        }
        // Before protocol 2.12 there are no xloadflags: an x86_64 kernel always has the entry.
        bytes[0x206..0x208].copy_from_slice(&0x020Bu16.to_le_bytes());
        assert!(load_bytes(&bytes, &mem).is_ok());
    }

    #[test]
    fn the_command_line_is_written_nul_terminated_up_to_2047_bytes() {
        let mem = guest_memory(16 * MIB);
        let longest = "x".repeat(2047);
        let location = load_cmdline(&longest, None, &mem).unwrap();
        assert_eq!(location.addr, GuestAddress(arch::layout::CMDLINE_START));
        assert_eq!(location.size_with_nul, 2048);
        let written = read_guest(&mem, arch::layout::CMDLINE_START, 2048);
        assert_eq!(&written[..2047], longest.as_bytes());
        assert_eq!(written[2047], 0);

        match load_cmdline(&"x".repeat(2048), None, &mem) {
            Err(Error::CmdlineTooLong { len: 2048, max: 2047 }) => {}
            other => panic!("{other:?}"),
        }
        // Surrounding white space does not count.
        let location = load_cmdline("  console=ttyS0  ", None, &mem).unwrap();
        assert_eq!(location.size_with_nul, "console=ttyS0".len() + 1);
        assert_eq!(read_guest(&mem, arch::layout::CMDLINE_START, 14), b"console=ttyS0\0");
    }

    #[test]
    fn a_bzimage_with_a_smaller_cmdline_size_limits_the_command_line() {
        let mem = guest_memory(16 * MIB);
        let (mut bytes, _) = bzimage();
        bytes[0x238..0x23c].copy_from_slice(&100u32.to_le_bytes());
        let kernel = load_bytes(&bytes, &mem).unwrap();
        let header = kernel.setup_header.as_ref();
        assert_eq!(load_cmdline(&"y".repeat(100), header, &mem).unwrap().size_with_nul, 101);
        match load_cmdline(&"y".repeat(101), header, &mem) {
            Err(Error::CmdlineTooLong { len: 101, max: 100 }) => {}
            other => panic!("{other:?}"),
        }
        // A larger cmdline_size than Kestrel's buffer is capped at the buffer.
        bytes[0x238..0x23c].copy_from_slice(&100_000u32.to_le_bytes());
        let kernel = load_bytes(&bytes, &mem).unwrap();
        match load_cmdline(&"y".repeat(2048), kernel.setup_header.as_ref(), &mem) {
            Err(Error::CmdlineTooLong { len: 2048, max: 2047 }) => {}
            other => panic!("{other:?}"),
        }
    }

    fn initrd_contents(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3]).collect()
    }

    fn load_initrd_bytes(
        contents: &[u8],
        mem: &GuestRam,
        memory_bytes: u64,
        kernel_end: u64,
    ) -> Result<(GuestAddress, usize)> {
        let file = TempFile::new(contents);
        let handle = File::open(&file.0).unwrap();
        load_initrd(&file.0, handle, contents.len() as u64, mem, memory_bytes, kernel_end)
    }

    #[test]
    fn the_initrd_goes_page_aligned_to_the_top_of_low_memory() {
        for memory in [32 * MIB, 3584 * MIB] {
            let mem = guest_memory(memory);
            let kernel = load(Path::new(guests::HELLO), &mem).unwrap();
            let contents = initrd_contents(300_001);
            let (address, size) = load_initrd_bytes(&contents, &mem, memory, kernel.end).unwrap();
            let top = memory.min(arch::layout::MMIO_GAP_START);
            assert_eq!(size, contents.len());
            assert_eq!(address.0 % 4096, 0, "{address:?}");
            assert!(address.0 >= kernel.end);
            assert!(address.0 + size as u64 <= top && address.0 + size as u64 + 4096 > top, "{address:?}");
            assert_eq!(read_guest(&mem, address.0, size), contents);
        }
    }

    #[test]
    fn an_initrd_that_does_not_fit_above_the_kernel_is_too_large() {
        let memory = 16 * MIB;
        let mem = guest_memory(memory);
        let kernel = load(Path::new(guests::HELLO), &mem).unwrap();
        let room = usize::try_from(memory - kernel.end).unwrap();
        for size in [room + 1, usize::try_from(memory).unwrap()] {
            match load_initrd_bytes(&vec![0xA5; size], &mem, memory, kernel.end) {
                Err(Error::InitrdTooLarge { size: reported, memory: m, .. }) => {
                    assert_eq!((reported, m), (size as u64, memory));
                }
                other => panic!("{size} bytes: {other:?}"),
            }
        }
        // Exactly the room there is (page-aligned end of kernel) fits.
        let room = usize::try_from(memory - kernel.end.next_multiple_of(4096)).unwrap();
        assert!(load_initrd_bytes(&vec![0x5A; room], &mem, memory, kernel.end).is_ok());
    }

    #[test]
    fn an_initrd_may_not_overlap_the_bss_of_a_bzimage() {
        // The initrd would start between the end of the file's bytes and code32_start + init_size.
        let memory = 16 * MIB;
        let mem = guest_memory(memory);
        let (bytes, setup_len) = bzimage();
        let kernel = load(Path::new(guests::HELLO_BZIMAGE), &mem).unwrap();
        let file_end = LOAD_ADDRESS + (bytes.len() - setup_len) as u64;
        assert!(kernel.end > file_end.next_multiple_of(4096), "this guest's .bss is too small for the test");
        let size = usize::try_from(memory - file_end.next_multiple_of(4096)).unwrap();
        match load_initrd_bytes(&vec![0; size], &mem, memory, kernel.end) {
            Err(Error::InitrdTooLarge { .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn booting_a_bzimage_hands_its_setup_header_to_the_zero_page() {
        let memory = 64 * MIB;
        let mem = guest_memory(memory);
        let initrd = TempFile::new(&initrd_contents(5000));
        let config = VmConfig {
            kernel: PathBuf::from(guests::HELLO_BZIMAGE),
            initrd: Some(initrd.0.clone()),
            cmdline: "exit=reset bz=1".to_owned(),
            vcpus: 1,
            memory_bytes: memory,
            serial: SerialConfig::None,
            virtio: Vec::new(),
            transport: Default::default(),
            track_dirty_pages: false,
            host: Default::default(),
            cpu_template: None,
        };
        let files = BootFiles::open(&config).unwrap();
        let entry = load_boot_image(&config, files, &mem, "").unwrap();
        assert_eq!(entry, BootEntry::Linux64(GuestAddress(LOAD_ADDRESS + 0x200)));

        let zero_page = read_guest(&mem, arch::layout::ZERO_PAGE_START, 4096);
        let (bytes, _) = bzimage();
        assert_eq!(&zero_page[0x202..0x206], b"HdrS");
        assert_eq!(zero_page[0x1f1], bytes[0x1f1], "setup_sects");
        assert_eq!(zero_page[0x206..0x208], bytes[0x206..0x208], "version");
        assert_eq!(u64::from(u32_at(&zero_page, 0x214)), LOAD_ADDRESS, "code32_start");
        assert_eq!(u32_at(&zero_page, 0x260), u32_at(&bytes, 0x260), "init_size");
        assert_eq!(u64::from(u32_at(&zero_page, 0x228)), arch::layout::CMDLINE_START, "cmd_line_ptr");
        assert_eq!(u32_at(&zero_page, 0x21c), 5000, "ramdisk_size");
        let ramdisk = u64::from(u32_at(&zero_page, 0x218));
        assert_eq!(read_guest(&mem, ramdisk, 5000), initrd_contents(5000));
        assert_eq!(read_guest(&mem, arch::layout::CMDLINE_START, 16), b"exit=reset bz=1\0");
    }
}
