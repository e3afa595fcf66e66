//! The exec of the VMM: `/<exec name> --id ID --start-time-us T --start-time-cpu-us T
//! --parent-cpu-time-us T <extra args>`, as Firecracker's jailer runs Firecracker.

use std::os::unix::process::CommandExt;
use std::path::Path;

use super::{JailerConfig, StartTimes};

/// Replaces this process with the VMM; returns only the exec's error.
pub(super) fn exec(config: &JailerConfig, exec_name: &Path, times: &StartTimes) -> super::JailerError {
    let path = Path::new("/").join(exec_name);
    let mut command = std::process::Command::new(&path);
    // `vmm` (for a Kestrel binary) must come before the VMM's flags.
    let (subcommand, rest) = match config.extra_args.first() {
        Some(first) if first == "vmm" => (Some(first), &config.extra_args[1..]),
        _ => (None, &config.extra_args[..]),
    };
    command
        .args(subcommand)
        .arg("--id")
        .arg(&config.id)
        .arg("--start-time-us")
        .arg(times.start_time_us.to_string())
        .arg("--start-time-cpu-us")
        .arg(times.start_time_cpu_us.to_string())
        .arg("--parent-cpu-time-us")
        .arg(times.parent_cpu_time_us.to_string())
        .args(rest);
    let error = command.exec();
    super::JailerError::path("exec", path, error)
}

fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(clock, &mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000) + now.tv_nsec as u64 / 1000
}

/// CLOCK_MONOTONIC in µs (the jailer's and the VMM's start times).
pub fn monotonic_us() -> u64 {
    clock_us(libc::CLOCK_MONOTONIC)
}

/// This process's CPU time in µs.
pub fn cpu_time_us() -> u64 {
    clock_us(libc::CLOCK_PROCESS_CPUTIME_ID)
}
