//! Builds the test guests (freestanding C + GNU assembler) with the system C compiler.
//!
//! Each program is linked twice (but those in `PLAIN_ONLY` once): as a plain 64-bit ELF (Linux
//! 64-bit entry at `e_entry`) and, with `-pvh` appended to its name, with a PVH ELF note
//! (`XEN_ELFNOTE_PHYS32_ENTRY`). The plain hello build is also packaged as a bzImage,
//! `hello.bzimage`: its image flattened with `objcopy -O binary` behind a real-mode setup area
//! (boot sector + one setup sector) holding a boot protocol 2.15 setup header. The paths of the
//! results are exported as `KESTREL_GUEST_<NAME>` environment variables for `src/lib.rs`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Sources linked into every guest.
const COMMON: &[&str] = &["entry.S", "lib.c"];
/// Headers and templates: not compiled on their own, but the guests depend on them.
const EXTRA_INPUTS: &[&str] = &["guest.h", "link.ld.in"];
/// (program name, its own source).
const PROGRAMS: &[(&str, &str)] = &[("hello", "hello.c"), ("smp", "smp.c"), ("virtio", "virtio_main.c")];

/// Programs built as plain ELFs only, without a `-pvh` variant: they test devices, not entry paths.
const PLAIN_ONLY: &[&str] = &["virtio"];
/// The virtio guest's driver library, linked into it with its device tests (see `extra_sources`).
const VIRTIO_LIBRARY: &[&str] = &["virtio.c", "virtio_mmio.c", "virtio_pci.c"];

/// Programs built with `-DCPL0_CPUID` (plain and `-pvh`): entry.S records CPUID at CPL0 for them,
/// since CPUID at CPL3 is not intercepted on some nested hosts (see `guests/c/smp.c`).
const CPL0_CPUID: &[&str] = &["smp"];

/// Plain builds also packaged as `<name>.bzimage` (exported as `KESTREL_GUEST_<NAME>_BZIMAGE`).
const BZIMAGES: &[&str] = &["hello"];

const CFLAGS: &[&str] = &[
    "-ffreestanding",
    "-nostdlib",
    "-static",
    "-no-pie",
    "-fno-pic",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fcf-protection=none",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wl,--build-id=none",
    "-Wl,-z,noexecstack",
    "-Wl,-z,max-page-size=0x1000",
];

const NOTE_PHDR: &str = "\tnote PT_NOTE FLAGS(4);";
const NOTE_SECTION: &str = "\t.note.Xen : {\n\t\tKEEP(*(.note.Xen))\n\t} :text :note";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let src = manifest_dir.join("c");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let cc = env::var_os("KESTREL_GUEST_CC").unwrap_or_else(|| "cc".into());
    println!("cargo:rerun-if-env-changed=KESTREL_GUEST_CC");
    let objcopy = env::var_os("KESTREL_GUEST_OBJCOPY").unwrap_or_else(|| "objcopy".into());
    println!("cargo:rerun-if-env-changed=KESTREL_GUEST_OBJCOPY");

    let inputs = COMMON.iter().chain(EXTRA_INPUTS).copied().chain(PROGRAMS.iter().map(|(_, s)| *s));
    for file in inputs {
        println!("cargo:rerun-if-changed={}", src.join(file).display());
    }
    // The whole directory as well (Cargo then watches every file in it): a new device test,
    // test_*.c, must rebuild the virtio guest without being listed here.
    println!("cargo:rerun-if-changed={}", src.display());

    let template = fs::read_to_string(src.join("link.ld.in"))
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", src.join("link.ld.in").display()));
    for pvh in [false, true] {
        let script = template
            .replace("@NOTE_PHDR@", if pvh { NOTE_PHDR } else { "" })
            .replace("@NOTE_SECTION@", if pvh { NOTE_SECTION } else { "" });
        let script_path = out.join(if pvh { "link-pvh.ld" } else { "link.ld" });
        fs::write(&script_path, script)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", script_path.display()));

        for (name, main_src) in PROGRAMS {
            if pvh && PLAIN_ONLY.contains(name) {
                continue;
            }
            let file_name = if pvh { format!("{name}-pvh") } else { (*name).to_owned() };
            let output = out.join(&file_name);
            let defines: Vec<&str> = [(pvh, "-DPVH_NOTE"), (CPL0_CPUID.contains(name), "-DCPL0_CPUID")]
                .into_iter()
                .filter_map(|(wanted, define)| wanted.then_some(define))
                .collect();
            compile(&cc, &src, &script_path, main_src, &extra_sources(&src, name), &defines, &output);
            let var = format!("KESTREL_GUEST_{}", file_name.to_uppercase().replace('-', "_"));
            println!("cargo:rustc-env={var}={}", output.display());
            if !pvh && BZIMAGES.contains(name) {
                let bzimage = out.join(format!("{name}.bzimage"));
                make_bzimage(&objcopy, &output, &bzimage);
                println!("cargo:rustc-env={var}_BZIMAGE={}", bzimage.display());
            }
        }
    }
}

fn compile(
    cc: &std::ffi::OsStr,
    src: &Path,
    script: &Path,
    main_src: &str,
    extra_sources: &[PathBuf],
    defines: &[&str],
    output: &Path,
) {
    let mut cmd = Command::new(cc);
    cmd.args(CFLAGS).arg(format!("-Wl,-T,{}", script.display())).arg("-I").arg(src).arg("-o").arg(output);
    cmd.args(defines);
    for file in COMMON.iter().chain([&main_src]) {
        cmd.arg(src.join(file));
    }
    cmd.args(extra_sources);
    let cannot_run = format!(
        "cannot run the C compiler {cc:?} to build the test guests (install gcc, or set KESTREL_GUEST_CC)"
    );
    run(&mut cmd, output, &cannot_run);
}

/// Sources of `program` beyond COMMON and its main file. For the virtio guest: the driver library
/// and every device test, `test_*.c`, found by listing the directory, so that adding a device test
/// takes its file and its line in `virtio_tests.h`, and no change here.
fn extra_sources(src: &Path, program: &str) -> Vec<PathBuf> {
    if program != "virtio" {
        return Vec::new();
    }
    let listing = fs::read_dir(src).unwrap_or_else(|e| panic!("cannot list {}: {e}", src.display()));
    let mut tests: Vec<PathBuf> = listing
        .map(|entry| entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", src.display())).path())
        .filter(|path| {
            let name = path.file_name().and_then(|name| name.to_str()).unwrap_or("");
            name.starts_with("test_") && name.ends_with(".c")
        })
        .collect();
    tests.sort(); // the same link order on every host
    VIRTIO_LIBRARY.iter().map(|file| src.join(file)).chain(tests).collect()
}

/// Runs a build step for `output`, panicking with its output if it fails.
fn run(cmd: &mut Command, output: &Path, cannot_run: &str) {
    let result = cmd.output().unwrap_or_else(|e| panic!("{cannot_run}: {e}"));
    if !result.status.success() {
        panic!(
            "building test guest {} failed ({}):\n{:?}\n{}{}",
            output.display(),
            result.status,
            cmd,
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
    }
}

/// Where the guests are linked, and where a bzImage's protected-mode part goes (`code32_start`).
const LOAD_ADDRESS: u64 = 0x20_0000;
/// The 64-bit entry of a bzImage: this far into its protected-mode part.
const ENTRY_64_OFFSET: u64 = 0x200;
/// Sectors of real-mode setup code after the boot sector (the header lives in the first).
const SETUP_SECTS: u8 = 1;
/// Where, inside the setup area, the real-mode entry jumps to (it only halts) and where the
/// version string sits; both after the header (which ends at 0x26C).
const REAL_MODE_CODE: usize = 0x270;
const VERSION_STRING: usize = 0x280;
/// `kernel_info` as entry.S lays it out: "LToP", size 16, size_total 16, setup_type_max 0.
const KERNEL_INFO: [u8; 16] = *b"LToP\x10\0\0\0\x10\0\0\0\0\0\0\0";

/// The load layout of a linked guest, from its ELF header and PT_LOAD program headers.
struct Layout {
    entry: u64,
    /// Lowest PT_LOAD address.
    start: u64,
    /// End of the file-backed part (what `objcopy -O binary` writes).
    file_end: u64,
    /// End of the image in memory, .bss included.
    mem_end: u64,
}

fn elf_layout(elf: &[u8], path: &Path) -> Layout {
    let u16_at = |off: usize| u16::from_le_bytes(elf[off..off + 2].try_into().unwrap());
    let u32_at = |off: usize| u32::from_le_bytes(elf[off..off + 4].try_into().unwrap());
    let u64_at = |off: usize| u64::from_le_bytes(elf[off..off + 8].try_into().unwrap());
    assert!(
        elf.len() >= 64 && elf[..4] == *b"\x7fELF" && elf[4] == 2,
        "{}: not an ELF64 file",
        path.display()
    );
    let phoff = usize::try_from(u64_at(0x20)).unwrap();
    let (phentsize, phnum) = (usize::from(u16_at(0x36)), usize::from(u16_at(0x38)));
    let mut layout = Layout { entry: u64_at(0x18), start: u64::MAX, file_end: 0, mem_end: 0 };
    for p in (0..phnum).map(|i| phoff + i * phentsize).filter(|&p| u32_at(p) == 1) {
        let (paddr, filesz, memsz) = (u64_at(p + 24), u64_at(p + 32), u64_at(p + 40));
        layout.start = layout.start.min(paddr);
        if filesz > 0 {
            layout.file_end = layout.file_end.max(paddr + filesz);
        }
        layout.mem_end = layout.mem_end.max(paddr + memsz);
    }
    layout
}

/// Packages a linked guest as a bzImage: setup area + the image flattened by objcopy.
fn make_bzimage(objcopy: &std::ffi::OsStr, elf_path: &Path, output: &Path) {
    let elf = fs::read(elf_path).unwrap_or_else(|e| panic!("cannot read {}: {e}", elf_path.display()));
    let layout = elf_layout(&elf, elf_path);
    assert_eq!(layout.start, LOAD_ADDRESS, "{}: not linked at {LOAD_ADDRESS:#x}", elf_path.display());
    assert_eq!(
        layout.entry,
        LOAD_ADDRESS + ENTRY_64_OFFSET,
        "{}: _start64 is not {ENTRY_64_OFFSET:#x} bytes into the image",
        elf_path.display()
    );

    let flat_path = output.with_extension("bin");
    let mut cmd = Command::new(objcopy);
    cmd.args(["-O", "binary"]).arg(elf_path).arg(&flat_path);
    run(
        &mut cmd,
        &flat_path,
        &format!("cannot run {objcopy:?} (install binutils, or set KESTREL_GUEST_OBJCOPY)"),
    );
    let flat = fs::read(&flat_path).unwrap_or_else(|e| panic!("cannot read {}: {e}", flat_path.display()));
    assert_eq!(
        flat.len() as u64,
        layout.file_end - layout.start,
        "{}: objcopy output does not cover the loadable image exactly",
        flat_path.display()
    );

    let found: Vec<usize> =
        (0..flat.len().saturating_sub(15)).step_by(4).filter(|&i| flat[i..i + 16] == KERNEL_INFO).collect();
    assert_eq!(found.len(), 1, "{}: expected one kernel_info, found {found:?}", elf_path.display());

    // init_size: everything from the load address the image needs before it can look at the
    // memory map, i.e. through the end of .bss.
    let init_size = (layout.mem_end - layout.start).next_multiple_of(4096);
    let mut image = setup_area(flat.len(), init_size, found[0]);
    image.extend_from_slice(&flat);
    fs::write(output, image).unwrap_or_else(|e| panic!("cannot write {}: {e}", output.display()));
}

/// The real-mode part of a bzImage: boot sector and setup sectors, with the setup header at 0x1F1
/// as Documentation/arch/x86/boot.rst (protocol 2.15) lays it out. There is no real-mode kernel:
/// the boot sector and the real-mode entry just halt, so only the 64-bit entry is usable.
fn setup_area(kernel_len: usize, init_size: u64, kernel_info_offset: usize) -> Vec<u8> {
    let mut s = vec![0u8; (1 + usize::from(SETUP_SECTS)) * 512];
    let mut put = |offset: usize, bytes: &[u8]| s[offset..offset + bytes.len()].copy_from_slice(bytes);
    let halt = [0xFA, 0xF4, 0xEB, 0xFD]; // cli; 1: hlt; jmp 1b
    let u32_of = |v: u64| u32::try_from(v).expect("setup header field overflows 32 bits");

    put(0, &halt); // boot sector: not bootable from a BIOS
    put(0x1F1, &[SETUP_SECTS]); // setup_sects
    put(0x1F2, &0u16.to_le_bytes()); // root_flags
    put(0x1F4, &u32_of(kernel_len.div_ceil(16) as u64).to_le_bytes()); // syssize (16-byte units)
    put(0x1FA, &0xFFFFu16.to_le_bytes()); // vid_mode: normal
    put(0x1FC, &0u16.to_le_bytes()); // root_dev
    put(0x1FE, &0xAA55u16.to_le_bytes()); // boot_flag
    put(0x200, &[0xEB, (REAL_MODE_CODE - 0x202) as u8]); // jump: short jmp over the header
    put(0x202, b"HdrS"); // header
    put(0x206, &0x020Fu16.to_le_bytes()); // version: 2.15
    put(0x20C, &0x1000u16.to_le_bytes()); // start_sys_seg (obsolete)
    put(0x20E, &((VERSION_STRING - 0x200) as u16).to_le_bytes()); // kernel_version
    put(0x211, &[0x01]); // loadflags: LOADED_HIGH
    put(0x212, &0x8000u16.to_le_bytes()); // setup_move_size
    put(0x214, &u32_of(LOAD_ADDRESS).to_le_bytes()); // code32_start
    put(0x22C, &0x7FFF_FFFFu32.to_le_bytes()); // initrd_addr_max
    put(0x230, &u32_of(LOAD_ADDRESS).to_le_bytes()); // kernel_alignment: 2 MiB
    put(0x234, &[0]); // relocatable_kernel: no, it runs where it is linked
    put(0x235, &[21]); // min_alignment: 2 MiB (log2)
    put(0x236, &1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64 (64-bit entry at +0x200)
    put(0x238, &2047u32.to_le_bytes()); // cmdline_size (without the NUL)
    put(0x258, &LOAD_ADDRESS.to_le_bytes()); // pref_address
    put(0x260, &u32_of(init_size).to_le_bytes()); // init_size
    put(0x268, &u32_of(kernel_info_offset as u64).to_le_bytes()); // kernel_info_offset
    put(REAL_MODE_CODE, &halt);
    put(VERSION_STRING, b"Kestrel test guest (hello)\0");
    s
}
