//! Test guests for Kestrel's integration tests (not shipped to users).
//!
//! `build.rs` compiles small freestanding C programs (sources in `guests/c/`) with the system C
//! compiler. Each constant below is the absolute path of one guest ELF, for `kestrel run --kernel`.
//! The plain builds are entered through the Linux 64-bit protocol (`e_entry`, `RSI` = boot_params);
//! the `_PVH` builds carry a PVH ELF note and are entered in 32-bit mode (`EBX` = hvm_start_info).
//! [`HELLO_BZIMAGE`] is not an ELF but a bzImage: the plain hello image behind a setup header.
//! Every image is linked at 2 MiB with `_start64` at 0x200200, 0x200 bytes in, where a bzImage's
//! 64-bit entry is.
//!
//! All guests switch to CPL3 (IOPL=3) within a few instructions and write their output to COM1.
//! Every line ends with `\n`.

/// Reports its boot information, then exits as `exit=` on the command line asks.
///
/// Output, in order:
/// - `Hello from the Kestrel test guest (entry: linux64)`; `bzimage` instead of `linux64` when
///   the zero page carries a setup header ("HdrS", version >= 2.00) whose `code32_start` + 0x200
///   is `_start64`, i.e. when it was booted as [`HELLO_BZIMAGE`]
/// - `cmdline: <command line>`
/// - `memory: <bytes of e820 usable RAM, decimal>`
/// - `initrd: <size> <FNV-1a 32 of the initrd, 8 lowercase hex digits>` or `initrd: none`
/// - `rtc: YYYY-MM-DD HH:MM:SS`
/// - with `loops=N`: N writes to port 0x3FF (COM1 scratch), then `loops: N`
/// - then, by `exit=` (default `reset`):
///   - `reset`: `exit: reset`, i8042 reset
///   - `poweroff`: `exit: poweroff`, write 0x34 to port 0x600
///   - `triple-fault`: `exit: triple-fault`, `ud2` with no IDT
///   - `unhandled-mmio`: `mmio read: 0x<8 hex digits>` (u32 read at 0xD0000000), a u32 write
///     there, `exit: reset`, reset
///   - `crash`: `exit: crash`, jump to 0xD0001000 (no memory there)
///   - `echo`: `echo: ready`, reads COM1 until `\n` or `\r`, `echo: <line>`, reset
///   - `ctrl-alt-del`: routes IOAPIC pin 1 (edge, vector 0x31) to its local APIC (software-enabled),
///     prints `keyboard: waiting`, then polls the i8042 status (port 0x64) until its output buffer
///     holds a byte (bounded: `keyboard: no key from the host`, reset). Then `keyboard: irq 1
///     pending` if vector 0x31 is pending in the local APIC's IRR (interrupts are off, so it stays
///     there), else `keyboard: no irq 1`; `keyboard: scan codes` followed by ` <2 hex digits>` for
///     each byte read from port 0x60 while the status says there is one (at most 16);
///     `keyboard: ctrl-alt-del, rebooting` if they were 14 11 e0 71 (Ctrl, Alt, Delete in scan code
///     set 2), else `keyboard: not ctrl-alt-del, resetting`; then a reset, as Linux reboots
///   - `hang`: `exit: hang`, spins forever
///   - anything else: `exit: unknown value, resetting`, reset
pub const HELLO: &str = env!("KESTREL_GUEST_HELLO");

/// [`HELLO`] with a PVH entry point; its first line ends in `(entry: pvh)`.
pub const HELLO_PVH: &str = env!("KESTREL_GUEST_HELLO_PVH");

/// [`HELLO`] as a bzImage; its first line ends in `(entry: bzimage)`.
///
/// Two 512-byte sectors of real-mode setup (boot sector, one setup sector; `setup_sects` = 1)
/// with a boot protocol 2.15 header at 0x1F1: `LOADED_HIGH`, `XLF_KERNEL_64`,
/// `code32_start` = `pref_address` = `kernel_alignment` = 0x200000, `cmdline_size` = 2047,
/// `init_size` covering .bss, `kernel_info_offset` pointing at the image's `kernel_info`. Then the
/// [`HELLO`] image flattened with `objcopy -O binary` (from 0x200000 to the end of .data), whose
/// 64-bit entry is at `code32_start + 0x200`. The real-mode entry points just halt.
pub const HELLO_BZIMAGE: &str = env!("KESTREL_GUEST_HELLO_BZIMAGE");

/// Starts every application processor listed in the MP table with INIT-SIPI-SIPI.
///
/// Output: `mptable: <N> cpus`, then `cpu <bsp apic id> <check>` from the BSP, then
/// `cpu <apic id> online <check>` from each AP in MP-table order, then `smp: <N> cpus online` and
/// a reset. `<check>` compares the APIC IDs CPUID reports with the local APIC ID register: it is
/// `cpuid ok` when CPUID leaf 1 EBX[31:24] (initial APIC ID) and, if the maximum basic leaf is at
/// least 0xB, leaf 0xB subleaf 0 EDX (x2APIC ID) both equal it, else
/// `cpuid mismatch <leaf 1 id> <leaf 0xB id>` (decimal; `none` without leaf 0xB). If an AP does not report in time (a bounded spin, 7-15 s on
/// the nested test host): `smp: cpu <apic id> did not start`, then a reset. Other failures print
/// `mptable: ...` or `smp: too many cpus for this guest` (more than 255) and reset. The BSP
/// software-enables its local APIC (SVR = 0x1FF) first and starts the APs one at a time; the
/// real-mode trampoline is copied to guest-physical 0x8000 (SIPI vector 0x08). APs spin at CPL3
/// once they have reported.
pub const SMP: &str = env!("KESTREL_GUEST_SMP");

/// [`SMP`] with a PVH entry point.
pub const SMP_PVH: &str = env!("KESTREL_GUEST_SMP_PVH");

/// Drives virtio devices with its own small virtio 1.x driver (`c/virtio.c`: split queues polled
/// for completion, interrupts off) and runs device tests on them. Plain ELF only (no PVH build).
///
/// Devices come from the `virtio_mmio.device=<size>@<base>:<irq>` words on the command line (a
/// window without the virtio magic value or with a version other than 2 prints
/// `virtio: mmio 0x<base>: magic value 0x<value>, skipped` or `...: version 0x<value>, skipped`;
/// an unparsable word `virtio: cannot parse <word>`). Output, in order:
/// - `virtio: <N> devices`
/// - for each device, in command-line order: `virtio: device <index> type <virtio device ID> at mmio
///   0x<base, 8 hex digits>`, then the output of each test for that device type that `test=` asks
///   for
/// - `<name>: FAILED no device of type <id>` for each requested test that found no device, and
///   `virtio: no test named <name>` for a name that is no test
/// - `virtio: done`, then a reset.
///
/// `devices=<index>[,<index>...]` limits the tests to the devices of those indices (default: all).
///
/// `test=<name>[,<name>...]` picks the tests (see `c/virtio_tests.h`, one `c/test_<name>.c` each).
/// A test prints lines starting with `<name>: ` and ends with `<name>: ok` or
/// `<name>: FAILED <reason>`; the device is reset after it. A wait for the device gives up after a
/// bounded spin (7-15 s on the nested test host) with the reason
/// `timeout waiting for the device to use a buffer`. The tests:
/// - `rng` (device type 4): two separate 64-byte requests on queue 0; each must be used with
///   length 64, and the buffers must differ and not be all zero. Prints `rng: 2 x 64 bytes`.
/// - `blk` (device type 2): prints `blk: capacity <N> sectors`. On a writable disk it writes
///   sectors 2-5 (the byte at disk offset o is `((o / 512) * 31 + (o % 512) * 7 + 3) mod 256`),
///   reads them back and prints `blk: wrote and read back sectors 2-5`; on a read-only one
///   (VIRTIO_BLK_F_RO) the same write must fail with IOERR: `blk: read-only, a write fails with
///   IOERR`. Then `blk: flush ok` (when VIRTIO_BLK_F_FLUSH is offered), `blk: id <GET_ID string>`,
///   and `blk: past the end IOERR, unknown type UNSUPP` (a read at sector = capacity and request
///   type 99).
/// - `blk_swap` (device type 2): follows a host that gives the running disk a new backing file:
///   `blk_swap: capacity <N> sectors, sector 0 says <text>` (the printable bytes sector 0 starts
///   with, at most 32), `blk_swap: waiting for a new disk`, then waits (bounded) for a
///   configuration change (generation), prints the same line for the new disk, reads its last
///   sector and the one after (IOERR expected): `blk_swap: last sector <N - 1> read, the one after
///   IOERR`. An empty disk (0 bytes, such as Kata's placeholder drives) is described as
///   `blk_swap: capacity 0 sectors, empty` (there is no sector 0 to read).
/// - `balloon` (device type 5): reads the target, `balloon: target <N> pages`; writes every one
///   of those 4 KiB pages from guest-physical 16 MiB up (so the guest needs 16 MiB + the target of
///   RAM; more than 128 MiB fails), `balloon: touched <N> pages`; inflates with their PFNs (256
///   per buffer) and sets `actual` to N, `balloon: inflated <N> pages`; checks they read as zero,
///   `balloon: inflated pages read as zero`; deflates them and sets `actual` to 0,
///   `balloon: deflated <N> pages`. After the `touched` and `inflated` lines it waits for one
///   byte on COM1 (bounded: `no byte from the host on the console`), so the host can measure
///   its memory use at those points.
/// - `balloon_update` (device type 5): follows a host that changes the running balloon through
///   the API, one step per line, each waited for with a bound: negotiates the stats queue,
///   `balloon_update: target <N> pages`; sends a stats buffer with swap_in = 1 and free memory =
///   1 MiB, `balloon_update: statistics round 1 sent`; waits for the device to give it back (the
///   host asked for fresh figures) and sends swap_in = 2, free memory = 2 MiB,
///   `balloon_update: statistics round 2 sent`; waits for a configuration change (generation),
///   writes the new target to `actual` (without inflating), `balloon_update: target <N> pages,
///   actual set`; waits for one more change, `balloon_update: target <N> pages, done`.
/// - `vsock` (device type 19): prints `vsock: guest cid <CID>` (config space), then speaks the
///   packet protocol by hand with 4 rx buffers of 300 bytes. Guest port 1000 connects to host
///   port 1234 (REQUEST, RESPONSE), sends RW `ping from the guest`, expects the same bytes back
///   (credit updates skipped), shuts down both ways and expects the RST: `vsock: echo from host
///   port 1234`. Then `vsock: listening on 5678`, waits for a REQUEST to port 5678, answers
///   RESPONSE, sends back the payload of the first RW it gets, shuts down, expects the RST:
///   `vsock: echoed <N> bytes to host port <P>`.
/// - `net` (device type 1): accepts VIRTIO_NET_F_MAC only (no offloads) and prints
///   `net: mac <config-space MAC>`. It is 10.231.0.2 on a tap whose host side is 10.231.0.1/24:
///   it sends a hand-built ARP request for 10.231.0.1 and waits for the reply,
///   `net: arp reply from 10.231.0.1 is <MAC>`, then an ICMP echo request with a 32-byte payload
///   and waits for the matching reply, `net: echo reply from 10.231.0.1, 32 bytes of payload`.
///   8 receive buffers of 12 + 1514 bytes; other frames are skipped, at most 64 of them.
///
/// Benchmark tests, for `kestrel-bench --virtio` (parameters in `c/test_bench_*.c`; they read the
/// command line through the zero page at 0x7000, time themselves with `rdtsc` and keep their bulk
/// buffers in RAM from 64 MiB up, so they need `--memory` of at least 96M):
/// - `bench_blk` (type 2): `blk.mode=seqread|seqwrite|randread|randwrite|getid blk.bs=<bytes>
///   blk.qd=<1-64> blk.count=<requests>` (getid: GET_ID requests, no disk I/O, blk.bs ignored),
///   polled, qd requests in flight; prints
///   `bench_blk: <mode> bs <bs> qd <qd> requests <n> bytes <n> cycles <TSC cycles>`.
/// - `bench_vsock` (type 19): `vsock.dir=rx|tx vsock.bytes=<n>`; rx prints
///   `bench_vsock: listening on 5679` and takes a host process's `CONNECT 5679`, tx connects to
///   host port 1235; prints `bench_vsock: <host-to-guest|guest-to-host> bytes <n> packets <n>
///   cycles <n>`.
/// - `bench_net` (type 1): `net.frames=<n> net.len=<60-1514> net.qd=<n>` broadcast frames of
///   EtherType 0x88B5 onto the tap; prints `bench_net: tx frames <n> bytes <n> cycles <n>`.
pub const VIRTIO: &str = env!("KESTREL_GUEST_VIRTIO");

/// Every guest, with a short name, for tests that iterate over them.
pub const ALL: &[(&str, &str)] = &[
    ("hello", HELLO),
    ("hello-pvh", HELLO_PVH),
    ("hello-bzimage", HELLO_BZIMAGE),
    ("smp", SMP),
    ("smp-pvh", SMP_PVH),
    ("virtio", VIRTIO),
];

#[cfg(test)]
mod tests {
    //! Static checks of the built guests: ELF layout, entry points, PVH note, boot tables.

    use super::*;

    const PT_LOAD: u32 = 1;
    const PT_NOTE: u32 = 4;
    const PF_X: u32 = 1;
    const SHT_SYMTAB: u32 = 2;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

    struct Phdr {
        kind: u32,
        flags: u32,
        offset: u64,
        paddr: u64,
        vaddr: u64,
        filesz: u64,
        memsz: u64,
    }

    struct Elf {
        data: Vec<u8>,
        entry: u64,
        phdrs: Vec<Phdr>,
    }

    fn u16_at(d: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(d[off..off + 2].try_into().unwrap())
    }
    fn u32_at(d: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(d[off..off + 4].try_into().unwrap())
    }
    fn u64_at(d: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(d[off..off + 8].try_into().unwrap())
    }
    fn usize_of(v: u64) -> usize {
        usize::try_from(v).unwrap()
    }

    impl Elf {
        fn open(path: &str) -> Elf {
            let data = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(&data[..4], b"\x7fELF", "{path}: not an ELF file");
            assert_eq!(data[4], 2, "{path}: not ELFCLASS64");
            assert_eq!(data[5], 1, "{path}: not little-endian");
            assert_eq!(u16_at(&data, 0x12), 62, "{path}: not x86-64");
            let entry = u64_at(&data, 0x18);
            let phoff = usize_of(u64_at(&data, 0x20));
            let phentsize = usize::from(u16_at(&data, 0x36));
            let phnum = usize::from(u16_at(&data, 0x38));
            assert_eq!(phentsize, 56);
            let phdrs = (0..phnum)
                .map(|i| {
                    let p = phoff + i * phentsize;
                    Phdr {
                        kind: u32_at(&data, p),
                        flags: u32_at(&data, p + 4),
                        offset: u64_at(&data, p + 8),
                        vaddr: u64_at(&data, p + 16),
                        paddr: u64_at(&data, p + 24),
                        filesz: u64_at(&data, p + 32),
                        memsz: u64_at(&data, p + 40),
                    }
                })
                .collect();
            Elf { data, entry, phdrs }
        }

        fn loads(&self) -> impl Iterator<Item = &Phdr> {
            self.phdrs.iter().filter(|p| p.kind == PT_LOAD)
        }

        /// The file bytes backing `len` bytes at guest address `addr`.
        fn bytes_at(&self, addr: u64, len: u64) -> &[u8] {
            let p = self
                .loads()
                .find(|p| addr >= p.paddr && addr + len <= p.paddr + p.filesz)
                .unwrap_or_else(|| panic!("{addr:#x} is not in the file-backed image"));
            let start = usize_of(p.offset + addr - p.paddr);
            &self.data[start..start + usize_of(len)]
        }

        fn in_executable_load(&self, addr: u64) -> bool {
            self.loads().any(|p| p.flags & PF_X != 0 && addr >= p.paddr && addr < p.paddr + p.filesz)
        }

        /// The value of a symbol from .symtab.
        fn symbol(&self, name: &str) -> Option<u64> {
            let d = &self.data;
            let shoff = usize_of(u64_at(d, 0x28));
            let shentsize = usize::from(u16_at(d, 0x3a));
            let shnum = usize::from(u16_at(d, 0x3c));
            let section = |i: usize| shoff + i * shentsize;
            let symtab = (0..shnum).map(section).find(|&s| u32_at(d, s + 4) == SHT_SYMTAB)?;
            let strtab = section(usize_of(u64::from(u32_at(d, symtab + 40))));
            let str_off = usize_of(u64_at(d, strtab + 24));
            let (off, size) = (usize_of(u64_at(d, symtab + 24)), usize_of(u64_at(d, symtab + 32)));
            (off..off + size).step_by(24).find_map(|sym| {
                let name_off = str_off + usize_of(u64::from(u32_at(d, sym)));
                let end = name_off + d[name_off..].iter().position(|&b| b == 0)?;
                (&d[name_off..end] == name.as_bytes()).then(|| u64_at(d, sym + 8))
            })
        }

        /// PVH entry addresses from every Xen PHYS32_ENTRY note in PT_NOTE segments.
        fn pvh_entries(&self) -> Vec<u64> {
            let mut found = Vec::new();
            for p in self.phdrs.iter().filter(|p| p.kind == PT_NOTE) {
                let notes = &self.data[usize_of(p.offset)..usize_of(p.offset + p.filesz)];
                let mut at = 0;
                while at + 12 <= notes.len() {
                    let namesz = usize_of(u64::from(u32_at(notes, at)));
                    let descsz = usize_of(u64::from(u32_at(notes, at + 4)));
                    let kind = u32_at(notes, at + 8);
                    let name = &notes[at + 12..at + 12 + namesz];
                    let desc_at = at + 12 + namesz.next_multiple_of(4);
                    if kind == XEN_ELFNOTE_PHYS32_ENTRY && name == b"Xen\0" {
                        assert!(descsz >= 4);
                        found.push(u64::from(u32_at(notes, desc_at)));
                    }
                    at = desc_at + descsz.next_multiple_of(4);
                }
            }
            found
        }
    }

    fn check_common(name: &str, elf: &Elf) {
        let loads: Vec<_> = elf.loads().collect();
        assert!(!loads.is_empty() && loads.len() <= 3, "{name}: {} PT_LOADs", loads.len());
        for p in &loads {
            assert!(p.paddr >= 0x10_0000, "{name}: PT_LOAD at {:#x} is below 1 MiB", p.paddr);
            assert_eq!(p.paddr, p.vaddr, "{name}: not identity linked");
            assert!(p.filesz > 0 && p.memsz >= p.filesz, "{name}: odd PT_LOAD");
        }
        assert_eq!(elf.symbol("_start64"), Some(elf.entry), "{name}: e_entry is not _start64");
        assert!(elf.in_executable_load(elf.entry), "{name}: e_entry {:#x} outside the code", elf.entry);

        // GDT: the TSS descriptor's base is the TSS, and its I/O bitmap allows every port.
        let gdt = elf.symbol("gdt").expect("gdt");
        let tss = elf.symbol("tss").expect("tss");
        let desc = elf.bytes_at(gdt + 0x28, 16);
        let base = u64::from(u16_at(desc, 2))
            | u64::from(desc[4]) << 16
            | u64::from(desc[7]) << 24
            | u64::from(u32_at(desc, 8)) << 32;
        assert_eq!(base, tss, "{name}: TSS descriptor base");
        assert_eq!(desc[5], 0x89, "{name}: TSS descriptor type");
        let limit = u64::from(u16_at(desc, 0));
        let tss_bytes = elf.bytes_at(tss, limit + 1);
        let iomap = usize::from(u16_at(tss_bytes, 102));
        assert_eq!(iomap, 104);
        assert!(tss_bytes[iomap..iomap + 8192].iter().all(|&b| b == 0), "{name}: I/O bitmap");
        assert_eq!(tss_bytes[iomap + 8192], 0xFF, "{name}: I/O bitmap terminator");

        // Page tables: 0..4 GiB identity, 2 MiB pages, User; 3..4 GiB uncached.
        let pml4 = elf.symbol("pml4").expect("pml4");
        assert_eq!(pml4 % 4096, 0);
        let pdpt = u64_at(elf.bytes_at(pml4, 8), 0);
        assert_eq!(pdpt & 0xFFF, 0x7, "{name}: PML4[0] flags");
        for gib in 0..4u64 {
            let pd = u64_at(elf.bytes_at((pdpt & !0xFFF) + gib * 8, 8), 0);
            assert_eq!(pd & 0xFFF, 0x7, "{name}: PDPT[{gib}] flags");
            let entries = elf.bytes_at(pd & !0xFFF, 4096);
            for i in 0..512u64 {
                let pde = u64_at(entries, usize_of(i * 8));
                let flags = if gib == 3 { 0x9F } else { 0x87 };
                assert_eq!(pde, (gib << 30) + (i << 21) + flags, "{name}: PD[{gib}][{i}]");
            }
        }
    }

    #[test]
    fn plain_guests_have_no_pvh_note() {
        for (name, path) in [("hello", HELLO), ("smp", SMP), ("virtio", VIRTIO)] {
            let elf = Elf::open(path);
            check_common(name, &elf);
            assert!(elf.pvh_entries().is_empty(), "{name}: unexpected PVH note");
        }
    }

    #[test]
    fn pvh_guests_have_one_pvh_note_pointing_at_pvh_start() {
        for (name, path) in [("hello-pvh", HELLO_PVH), ("smp-pvh", SMP_PVH)] {
            let elf = Elf::open(path);
            check_common(name, &elf);
            // linux-loader keeps the answer of the last PT_NOTE segment: there must be just one.
            assert_eq!(elf.phdrs.iter().filter(|p| p.kind == PT_NOTE).count(), 1, "{name}");
            let entries = elf.pvh_entries();
            assert_eq!(entries.len(), 1, "{name}: PVH notes");
            assert_eq!(Some(entries[0]), elf.symbol("pvh_start"), "{name}: note is not pvh_start");
            assert!(elf.in_executable_load(entries[0]), "{name}: PVH entry outside the code");
            assert!(entries[0] < 1 << 32);
        }
    }

    #[test]
    fn smp_trampoline_fits_below_the_boot_page_tables() {
        for path in [SMP, SMP_PVH] {
            let elf = Elf::open(path);
            let start = elf.symbol("tramp_start").expect("tramp_start");
            let end = elf.symbol("tramp_end").expect("tramp_end");
            // Copied to 0x8000; 0x9000 is where the VMM's boot page tables start.
            assert!(end > start && end - start <= 0x1000);
            // Its GDT pointer (the last 6 bytes) is the guest GDT, with a 32-bit code segment.
            let ptr = elf.bytes_at(end - 6, 6);
            let gdt = elf.symbol("gdt").expect("gdt");
            assert_eq!(u64::from(u32_at(ptr, 2)), gdt);
            assert_eq!(u64_at(elf.bytes_at(gdt + 0x38, 8), 0), 0x00CF_9A00_0000_FFFF);
        }
    }

    #[test]
    fn every_entry_is_0x200_into_the_image() {
        for path in [HELLO, HELLO_PVH, SMP, SMP_PVH, VIRTIO] {
            let elf = Elf::open(path);
            let start = elf.loads().map(|p| p.paddr).min().unwrap();
            assert_eq!((start, elf.symbol("_start64")), (0x20_0000, Some(0x20_0200)), "{path}");
        }
    }

    #[test]
    fn the_bzimage_is_the_hello_image_behind_a_setup_header() {
        let bz = std::fs::read(HELLO_BZIMAGE).unwrap();
        let elf = Elf::open(HELLO);
        // What linux-loader checks: "HdrS", version >= 2.00, LOADED_HIGH, and code32_start.
        assert_eq!(&bz[0x202..0x206], b"HdrS");
        assert_eq!(u16_at(&bz, 0x1fe), 0xAA55, "boot_flag");
        assert_eq!(u16_at(&bz, 0x206), 0x020F, "version");
        assert_eq!(bz[0x211] & 0x01, 0x01, "loadflags");
        assert_eq!(u32_at(&bz, 0x214), 0x20_0000, "code32_start");
        assert_eq!(u64_at(&bz, 0x258), 0x20_0000, "pref_address");
        assert_eq!(u32_at(&bz, 0x230), 0x20_0000, "kernel_alignment");
        assert_eq!(u16_at(&bz, 0x236) & 1, 1, "xloadflags: XLF_KERNEL_64");
        assert_eq!(u32_at(&bz, 0x238), 2047, "cmdline_size");
        // The jump at 0x200 stays inside the setup area, and so does the version string.
        let setup_sects = usize::from(bz[0x1f1]);
        let setup_len = (setup_sects + 1) * 512;
        assert!(0x202 + usize::from(bz[0x201]) < setup_len);
        let version = 0x200 + usize::from(u16_at(&bz, 0x20e));
        assert!(version < setup_len && bz[version..].starts_with(b"Kestrel test guest"));

        // The protected-mode part is the ELF's file-backed image, from 0x200000 on.
        let kernel = &bz[setup_len..];
        let start = elf.loads().map(|p| p.paddr).min().unwrap();
        let file_end = elf.loads().map(|p| p.paddr + p.filesz).max().unwrap();
        assert_eq!(kernel.len() as u64, file_end - start);
        for p in elf.loads() {
            let at = usize_of(p.paddr - start);
            assert_eq!(
                &kernel[at..at + usize_of(p.filesz)],
                elf.bytes_at(p.paddr, p.filesz),
                "PT_LOAD {:#x}",
                p.paddr
            );
        }
        assert_eq!(u64::from(u32_at(&bz, 0x1f4)), (kernel.len() as u64).div_ceil(16), "syssize");
        // Entered at code32_start + 0x200: _start64.
        assert_eq!(elf.symbol("_start64"), Some(u64::from(u32_at(&bz, 0x214)) + 0x200));
        // init_size reaches over .bss; kernel_info_offset points at kernel_info ("LToP").
        let bss_end = elf.symbol("__bss_end").unwrap();
        assert!(u64::from(u32_at(&bz, 0x260)) >= bss_end - start, "init_size");
        let kernel_info = usize_of(u64::from(u32_at(&bz, 0x268)));
        assert_eq!(Some(start + kernel_info as u64), elf.symbol("kernel_info"));
        assert_eq!(&kernel[kernel_info..kernel_info + 4], b"LToP");
    }

    #[test]
    fn all_lists_every_guest() {
        assert_eq!(ALL.len(), 6);
        for (_, path) in ALL {
            assert!(std::path::Path::new(path).is_absolute());
        }
    }
}
