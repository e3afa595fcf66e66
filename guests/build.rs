//! Builds the test guests (freestanding C + GNU assembler) with the system C compiler.
//!
//! Each program is linked twice: as a plain 64-bit ELF (Linux 64-bit entry at `e_entry`) and,
//! with `-pvh` appended to its name, with a PVH ELF note (`XEN_ELFNOTE_PHYS32_ENTRY`). The paths
//! of the results are exported as `KESTREL_GUEST_<NAME>` environment variables for `src/lib.rs`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Sources linked into every guest.
const COMMON: &[&str] = &["entry.S", "lib.c"];
/// Headers and templates: not compiled on their own, but the guests depend on them.
const EXTRA_INPUTS: &[&str] = &["guest.h", "link.ld.in"];
/// (program name, its own source).
const PROGRAMS: &[(&str, &str)] = &[("hello", "hello.c"), ("smp", "smp.c")];

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

    let inputs = COMMON.iter().chain(EXTRA_INPUTS).copied().chain(PROGRAMS.iter().map(|(_, s)| *s));
    for file in inputs {
        println!("cargo:rerun-if-changed={}", src.join(file).display());
    }

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
            let file_name = if pvh { format!("{name}-pvh") } else { (*name).to_owned() };
            let output = out.join(&file_name);
            compile(&cc, &src, &script_path, main_src, pvh, &output);
            let var = format!("KESTREL_GUEST_{}", file_name.to_uppercase().replace('-', "_"));
            println!("cargo:rustc-env={var}={}", output.display());
        }
    }
}

fn compile(cc: &std::ffi::OsStr, src: &Path, script: &Path, main_src: &str, pvh: bool, output: &Path) {
    let mut cmd = Command::new(cc);
    cmd.args(CFLAGS).arg(format!("-Wl,-T,{}", script.display())).arg("-I").arg(src).arg("-o").arg(output);
    if pvh {
        cmd.arg("-DPVH_NOTE");
    }
    for file in COMMON.iter().chain([&main_src]) {
        cmd.arg(src.join(file));
    }
    let result = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run the C compiler {cc:?} to build the test guests: {e} (install gcc, or set KESTREL_GUEST_CC)")
    });
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
