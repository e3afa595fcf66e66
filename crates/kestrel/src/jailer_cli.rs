//! `kestrel jailer`: Firecracker's jailer flags, checked by the `jail` crate, which then jails
//! this process and execs the VMM.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use jail::jailer::{JailerConfig, RawJailerArgs, StartTimes, DEFAULT_CHROOT_BASE};

use crate::{exit_status, report};

#[derive(Args, Debug)]
pub struct JailerArgs {
    /// The VM's ID: 1 to 64 letters, digits and hyphens. It names the jail directory and the
    /// cgroups, and is passed to the VMM as --id. Example: --id vm-1
    #[arg(long, value_name = "ID")]
    pub id: String,

    /// The VMM binary to copy into the jail and run there. A Kestrel binary gets the `vmm`
    /// subcommand. Example: --exec-file /usr/bin/kestrel
    #[arg(long, value_name = "PATH")]
    pub exec_file: PathBuf,

    /// The user the VMM runs as. Example: --uid 1000
    #[arg(long, value_name = "UID")]
    pub uid: u32,

    /// The group the VMM runs as (no supplementary groups). Example: --gid 1000
    #[arg(long, value_name = "GID")]
    pub gid: u32,

    /// Where jails are made: <DIR>/<exec-file name>/<id>/root. Example: --chroot-base-dir /srv/jailer
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CHROOT_BASE)]
    pub chroot_base_dir: PathBuf,

    /// A network namespace to join before the jail. Example: --netns /var/run/netns/vm1
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,

    /// Detach: a new session, stdin/stdout/stderr on /dev/null. Example: --daemonize
    #[arg(long)]
    pub daemonize: bool,

    /// Run the VMM as PID 1 of a new PID namespace; its host pid is written to
    /// <jail>/<exec-file name>.pid. Example: --new-pid-ns
    #[arg(long)]
    pub new_pid_ns: bool,

    /// Write VALUE to the cgroup file FILE of the VM's cgroup (the controller is FILE's prefix);
    /// repeatable. io.*/blkio.* values may name a disk by path instead of MAJ:MIN.
    /// Example: --cgroup memory.limit_in_bytes=536870912 --cgroup "io.max=/srv/vm.img rbps=1048576"
    #[arg(long = "cgroup", value_name = "FILE=VALUE")]
    pub cgroups: Vec<String>,

    /// The cgroup interface: 1 (a hierarchy per controller) or 2 (unified). Example: --cgroup-version 2
    #[arg(long, value_name = "1|2", default_value = "1")]
    pub cgroup_version: String,

    /// The cgroup the VM's cgroup <id> is made under, relative to each hierarchy's root (by
    /// default the exec file's name). Example: --parent-cgroup vms
    #[arg(long, value_name = "PATH")]
    pub parent_cgroup: Option<PathBuf>,

    /// An rlimit for the VMM: fsize=BYTES or no-file=N (default no-file=2048); repeatable.
    /// Example: --resource-limit no-file=1024 --resource-limit fsize=1073741824
    #[arg(long = "resource-limit", value_name = "fsize=N|no-file=N")]
    pub resource_limits: Vec<String>,

    /// After `--`: the VMM's own flags. Example: -- --api-sock /run/api.sock
    #[arg(last = true, value_name = "VMM FLAGS")]
    pub vmm_args: Vec<OsString>,
}

/// The command line, with `jailer` inserted when Kestrel was started under the name `jailer`
/// (a link `jailer -> kestrel`), so tools that run Firecracker's jailer binary by path (Kata
/// Containers' `jailer_path`, firecracker-go-sdk's `JailerBinary`) can run Kestrel's.
pub fn args_with_subcommand(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.collect();
    let called_jailer =
        args.first().is_some_and(|argv0| Path::new(argv0).file_name().is_some_and(|n| n == "jailer"));
    if called_jailer {
        args.insert(1, OsString::from("jailer"));
    }
    args
}

/// Runs the jailer; returns only on failure (status 1, one line on stderr).
pub fn run(args: JailerArgs) -> ExitCode {
    let start_times = StartTimes {
        start_time_us: jail::jailer::exec::monotonic_us(),
        start_time_cpu_us: jail::jailer::exec::cpu_time_us(),
        parent_cpu_time_us: 0,
    };
    let raw = RawJailerArgs {
        id: args.id,
        exec_file: args.exec_file,
        uid: args.uid,
        gid: args.gid,
        chroot_base_dir: args.chroot_base_dir,
        netns: args.netns,
        daemonize: args.daemonize,
        new_pid_ns: args.new_pid_ns,
        cgroups: args.cgroups,
        cgroup_version: args.cgroup_version,
        parent_cgroup: args.parent_cgroup,
        resource_limits: args.resource_limits,
        extra_args: args.vmm_args,
    };
    let failed = |e: &dyn std::fmt::Display| {
        report(format_args!("kestrel jailer: error: {e}"));
        ExitCode::from(exit_status::ERROR)
    };
    let config = match JailerConfig::new(raw, start_times, is_kestrel) {
        Ok(config) => config,
        Err(e) => return failed(&e),
    };
    let hierarchies = match jail::cgroup::Hierarchies::detect() {
        Ok(h) => h,
        Err(e) => return failed(&e),
    };
    match jail::jailer::run(&config, &hierarchies) {
        Ok(never) => match never {},
        Err(e) => failed(&e),
    }
}

/// A Kestrel binary: this very file, or one named `kestrel`.
fn is_kestrel(exec_file: &Path) -> bool {
    let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
    let this = std::fs::metadata("/proc/self/exe");
    let that = std::fs::metadata(exec_file);
    matches!((this, that), (Ok(a), Ok(b)) if same(&a, &b))
        || exec_file.file_name().is_some_and(|n| n == "kestrel")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_named_jailer_runs_the_jailer() {
        let args = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            args_with_subcommand(args(&["/usr/bin/jailer", "--id", "a"]).into_iter()),
            args(&["/usr/bin/jailer", "jailer", "--id", "a"])
        );
        assert_eq!(args_with_subcommand(args(&["kestrel", "run"]).into_iter()), args(&["kestrel", "run"]));
        assert!(args_with_subcommand(std::iter::empty()).is_empty());
    }
}
