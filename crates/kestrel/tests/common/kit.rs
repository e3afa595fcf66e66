//! The Linux guest kit (`kit/build.sh`) for tier-3 tests: where it is, how to boot it, and what its
//! `/init` prints. The kit lives in `$KESTREL_KIT_DIR` (default `$HOME/.cache/kestrel-kit`); without
//! it tests skip, except on CI (CI=true), where they fail.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::{kestrel, kvm_available, stderr, stdout};

/// A kit Linux boot takes ~15–30 s on the nested development host; past this it has hung.
pub const LINUX_LIMIT: Duration = Duration::from_secs(180);

/// One Linux boot at a time within a test binary: each keeps a host core busy emulating guest
/// kernel code, so boots in parallel on a small host only slow each other towards the hang limit.
static ONE_BOOT_AT_A_TIME: Mutex<()> = Mutex::new(());

pub fn one_boot_at_a_time() -> MutexGuard<'static, ()> {
    ONE_BOOT_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The kit's cache directory, as `kit/build.sh` chooses it.
pub fn kit_dir() -> PathBuf {
    match std::env::var_os("KESTREL_KIT_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME").expect("HOME is not set")).join(".cache/kestrel-kit"),
    }
}

/// The kit artefact `name`, or `None` (the test skips) when it has not been built; on CI a missing
/// artefact fails the test instead.
pub fn kit_path(name: &str) -> Option<PathBuf> {
    let path = kit_dir().join(name);
    if std::fs::metadata(&path).map(|m| m.is_file() && m.len() > 0).unwrap_or(false) {
        return Some(path);
    }
    let message =
        format!("the Linux guest kit is not built: {} is missing; run kit/build.sh", path.display());
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message} (scripts/test does so before cargo test)");
    }
    eprintln!("skipping: {message}");
    None
}

/// The kit's kernel and initramfs, when KVM and the kit are both there.
pub fn kit_available() -> Option<(PathBuf, PathBuf)> {
    if !kvm_available() {
        return None;
    }
    Some((kit_path("vmlinux")?, kit_path("initramfs.cpio")?))
}

/// `kit/cmdline.txt` without its comment lines: the command line the kit's kernel needs on this host.
pub fn kit_cmdline() -> String {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../../kit/cmdline.txt");
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("read {file}: {e}"));
    let words: Vec<&str> =
        text.lines().filter(|l| !l.trim_start().starts_with('#')).flat_map(str::split_whitespace).collect();
    assert!(!words.is_empty(), "{file} has no command line");
    let mut cmdline = words.join(" ");
    if let Some(khz) = tsc_khz_for_non_intel_host() {
        cmdline.push_str(&format!(" tsc_early_khz={khz}"));
    }
    cmdline
}

/// The guest TSC rate (KVM_GET_TSC_KHZ, the rate Kestrel also reports in CPUID 0x15) on a host whose
/// CPU is not Intel's, else `None`. Linux takes the TSC rate from CPUID 0x15 only on Intel CPUs,
/// and the kit's `nopv` turns kvmclock off, so on an AMD host the kit's kernel has no way to learn
/// it (no PIT, no HPET), marks the TSC unstable, gets no timer and hangs before init: the kit's
/// host workarounds then need `tsc_early_khz=`, as `scripts/demo` adds too.
fn tsc_khz_for_non_intel_host() -> Option<u32> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    if cpuinfo.lines().any(|line| line.starts_with("vendor_id") && line.ends_with("GenuineIntel")) {
        return None;
    }
    let kvm = kvm_ioctls::Kvm::new().ok()?;
    let vm = kvm.create_vm().ok()?;
    let vcpu = vm.create_vcpu(0).ok()?;
    vcpu.get_tsc_khz().ok().filter(|&khz| khz > 0)
}

/// `kestrel run` of the kit's Linux with `extra` appended to the kit command line.
pub fn linux_command(kit: &(PathBuf, PathBuf), cpus: u32, memory: &str, extra: &str) -> Command {
    let mut command = kestrel();
    command
        .arg("run")
        .arg("--kernel")
        .arg(&kit.0)
        .arg("--initrd")
        .arg(&kit.1)
        .args(["--cpus", &cpus.to_string(), "--memory", memory])
        .args(["--cmdline", &format!("{} {extra}", kit_cmdline())]);
    command
}

/// `kestrel run` of the kit's Linux (1 vCPU, 256M, quiet) running the shell `script` through
/// `kestrel.run=` (percent-encoded, so a script of any length and punctuation stays one word and
/// does not count against the kernel's limit on init arguments).
pub fn linux_script_command(kit: &(PathBuf, PathBuf), script: &str) -> Command {
    linux_command(kit, 1, "256M", &format!("quiet kestrel.run={}", percent_encode(script)))
}

/// `text` with every byte that is not plainly safe on the kernel command line as `%XX`, which
/// `/init` decodes (spaces, quotes, `%`, backslashes and newlines included).
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z'
            | b'A'..=b'Z'
            | b'0'..=b'9'
            | b'-'
            | b'.'
            | b'/'
            | b'_'
            | b':'
            | b','
            | b'='
            | b'+' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Lines of the guest's console after `/init` started, trimmed (the guest tty ends them with CR LF).
pub fn lines_after_init(output: &Output) -> Vec<String> {
    let out = stdout(output);
    let start =
        out.find("kestrel-kit: init started").unwrap_or_else(|| panic!("/init never started:\n{out}"));
    out[start..].lines().skip(1).map(|l| l.trim().to_owned()).collect()
}

/// Asserts that the kit's command exited with `status`.
#[track_caller]
pub fn assert_command_exited(output: &Output, status: i32) {
    let expected = format!("kestrel-kit: command exited {status}");
    assert!(
        lines_after_init(output).contains(&expected),
        "no {expected:?}\n--- stdout\n{}\n--- stderr\n{}",
        stdout(output),
        stderr(output)
    );
}
