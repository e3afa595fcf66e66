//! Command-line syntax: every flag, its help and its examples.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tracing::level_filters::LevelFilter;
use vmm::config::{
    BalloonConfig, BlockConfig, HostResources, NetConfig, SerialConfig, VirtioConfig, VirtioTransport,
    VmConfig, VsockConfig, DEFAULT_CMDLINE,
};

use crate::device_options::{parse_balloon, parse_disk, parse_net, parse_vsock};
use crate::placement_options::{parse_cpus, parse_memory, CpusOption, MemoryOption, CPUS_FORM, MEMORY_FORM};

#[derive(Parser, Debug)]
#[command(
    name = "kestrel",
    version,
    about = "Kestrel runs Linux virtual machines on KVM.",
    after_help = "Examples:\n  \
        kestrel run --kernel vmlinux --initrd initramfs.cpio --memory 512M --cpus 2\n  \
        kestrel run --kernel bzImage --cmdline \"console=ttyS0 root=/dev/vda\" --serial file:console.log\n\n\
        Exit status: 0 guest powered off, 1 error, 2 usage error, 3 guest reset, 4 triple fault,\n\
        5 vCPU failure, 6 quit with Ctrl-A X, 128+N stopped by signal N (159: a thread made a system\n\
        call its seccomp filter forbids)."
)]
pub struct Cli {
    /// Log level for Kestrel's own messages on stderr: off, error, warn, info, debug or trace
    /// (the KESTREL_LOG environment variable overrides it). Example: --log-level debug
    #[arg(long, global = true, default_value = "warn", value_name = "LEVEL")]
    pub log_level: LevelFilter,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Boot one VM in the foreground; Kestrel exits when the guest powers off or resets.
    ///
    /// The guest's serial console (COM1) is on the terminal, which is in raw mode while the VM runs:
    /// keys such as Ctrl-C go to the guest. Press Ctrl-A then X to quit, Ctrl-A Ctrl-A to send Ctrl-A.
    #[command(after_help = "Examples:\n  \
        kestrel run --kernel vmlinux --initrd initramfs.cpio\n  \
        kestrel run --kernel vmlinux --cpus 4 --memory 1G --cmdline \"console=ttyS0 quiet\"\n  \
        kestrel run --kernel bzImage --serial file:/tmp/console.log\n  \
        kestrel run --kernel vmlinux --disk path=rootfs.ext4 --cmdline \"console=ttyS0 root=/dev/vda rw\"")]
    Run(RunArgs),

    /// Start an unconfigured VMM driven by a Firecracker-compatible REST API on a Unix socket.
    ///
    /// Configure the VM with PUT /boot-source, /machine-config, /drives/{id},
    /// /network-interfaces/{id}, /vsock, /balloon, then PUT /actions {"action_type":
    /// "InstanceStart"}, or give --config-file to start at once. The guest's serial console is on
    /// stdout; Kestrel exits when the guest powers off or resets, with the same exit statuses as
    /// `kestrel run`. docs/api.yaml lists what the API serves. It takes Firecracker's flags too;
    /// started under the name `firecracker` (a link), Kestrel takes them with no subcommand.
    #[command(after_help = "Examples:\n  \
        kestrel vmm --api-sock /tmp/kestrel.sock\n  \
        kestrel vmm --no-api --config-file vm.json --log-path /tmp/vm.log --level Debug\n  \
        curl --unix-socket /tmp/kestrel.sock -X PUT http://localhost/boot-source \\\n      \
        -d '{\"kernel_image_path\": \"vmlinux\", \"boot_args\": \"console=ttyS0\"}'")]
    Vmm(VmmArgs),

    /// Create, inspect, convert, resize, check, commit and rebase raw and qcow2 disk images.
    Image(crate::image_cli::ImageArgs),

    // --- jailer (H2) ---
    /// Jail a VMM as Firecracker's jailer does, with its flags: a chroot at
    /// <chroot-base-dir>/<exec-file name>/<id>/root, fresh mount (and optionally PID and network)
    /// namespaces, cgroups, rlimits, no inherited fds, the given uid/gid with no capabilities;
    /// then exec the VMM there with the flags after `--`.
    #[command(after_help = "Examples:\n  \
        kestrel jailer --id vm1 --exec-file $(which kestrel) --uid 1000 --gid 1000 \\\n      \
        --cgroup memory.limit_in_bytes=536870912 -- --api-sock /run/api.sock\n  \
        kestrel jailer --id vm2 --exec-file /usr/bin/kestrel --uid 1000 --gid 1000 --cgroup-version 2 \\\n      \
        --cgroup cpu.max=\"50000 100000\" --new-pid-ns --daemonize\n\n\
        The API socket is then <chroot-base-dir>/kestrel/<id>/root/run/firecracker.socket by default.")]
    Jailer(crate::jailer_cli::JailerArgs),
    // --- end jailer ---

    // --- manager: daemon (core) ---
    /// Run the manager daemon: it keeps VMs, networks and storage pools, and serves the API the
    /// `kestrel vm|net|pool|vol` commands use (a Unix socket; see `docs/manager-api.yaml`).
    ///
    /// Who may use it: the socket is 0660 and belongs to the group `kestrel` when that group exists
    /// (the daemon never creates it); everyone else is refused. Membership of that group is
    /// equivalent to root, as libvirt's `libvirt` group is: the daemon runs as root, and a client
    /// may name any host file or device as a VM's disk, kernel or initrd, any tap, and any
    /// directory as a storage pool. Add to it only users you would give root; serve other users
    /// through a front end of your own that checks their requests.
    #[command(after_help = "Examples:\n  \
        kestrel daemon --foreground\n  \
        kestrel daemon --foreground --state-dir ~/.local/share/kestrel --socket /tmp/kestrel.sock\n  \
        kestrel daemon --foreground --web 127.0.0.1:8443   # the browser console; kestrel daemon web-token logs in\n  \
        KESTREL_STATE_DIR=/tmp/k KESTREL_SOCKET=/tmp/k/sock kestrel daemon --foreground")]
    Daemon(crate::daemon_cli::DaemonArgs),
    // --- end manager: daemon ---

    // --- manager: vm commands (CLI) ---
    /// Define, start, stop and watch VMs kept by the daemon (`kestrel daemon`).
    Vm(crate::vm_cli::VmArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Examples:\n  \
        kestrel completions bash > /etc/bash_completion.d/kestrel\n  \
        kestrel completions zsh > ~/.zfunc/_kestrel")]
    Completions(crate::vm_cli::CompletionsArgs),
    // --- end manager: vm commands ---

    // --- manager: networks ---
    /// Define and run networks for the daemon's VMs: a bridge, NAT or isolated, DHCP and DNS.
    Net(crate::net_cli::NetArgs),
    // --- end manager: networks ---

    // --- manager: pools ---
    /// Define storage pools (directories of disk images) for the daemon's VMs.
    Pool(crate::pool_cli::PoolArgs),
    /// Create, clone, resize, import, upload, download and delete volumes in storage pools.
    Vol(crate::pool_cli::VolArgs),
    // --- end manager: pools ---
}

#[derive(Args, Debug)]
pub struct VmmArgs {
    /// The Unix socket the API listens on, created owner-only (0600). A stale socket is
    /// replaced; a live one, or any other file, is an error. The default is Firecracker's (which
    /// `kestrel jailer` creates /run for). Example: --api-sock /tmp/kestrel.sock
    #[arg(long, value_name = "PATH", default_value = "/run/firecracker.socket")]
    pub api_sock: PathBuf,

    /// The instance ID `GET /` reports and log lines carry. Started as `firecracker`, Kestrel
    /// checks it as Firecracker does (1 to 64 letters, digits and '-'). Example: --id vm1
    #[arg(long, value_name = "ID", default_value = "anonymous-instance")]
    pub id: String,

    /// Where the serial console goes: stdio, file:PATH or none (as for `kestrel run`).
    #[arg(long, value_name = "WHERE", default_value = "stdio", value_parser = parse_serial)]
    pub serial: SerialConfig,

    /// How virtio devices reach the guest: mmio or pci (as for `kestrel run`).
    #[arg(long, value_name = "mmio|pci", default_value = "mmio", value_parser = parse_transport)]
    pub transport: VirtioTransport,

    // --- jailer (H2): the start times `kestrel jailer` passes, as Firecracker's jailer does ---
    /// Set by the jailer: CLOCK_MONOTONIC at its start, in µs (logged at debug level as the
    /// jailer-to-VMM startup time). Example: --start-time-us 123456
    #[arg(long, value_name = "US")]
    pub start_time_us: Option<u64>,

    /// Set by the jailer: its CPU time at its start, in µs. Example: --start-time-cpu-us 100
    #[arg(long, value_name = "US")]
    pub start_time_cpu_us: Option<u64>,

    /// Set by the jailer: the CPU time it spent before the exec, in µs. Example: --parent-cpu-time-us 900
    #[arg(long, value_name = "US")]
    pub parent_cpu_time_us: Option<u64>,
    // --- end jailer ---

    // --- Landlock (H5) ---
    #[command(flatten)]
    pub landlock: LandlockArgs,

    #[command(flatten)]
    pub seccomp: SeccompArgs,

    // --- manager: exit status (core) ---
    /// Write the exit status (0 power-off, 1 error, 3 reset, 4 triple fault, 5 vCPU failure,
    /// 128+N signal N) to PATH as the VMM exits, so a manager that is not its parent still
    /// learns how it ended. Opened (created 0600, truncated) at the start, before confinement.
    /// Example: --exit-status-file /var/lib/kestrel/vms/ID/exit-status
    #[arg(long, value_name = "PATH")]
    pub exit_status_file: Option<PathBuf>,
    // --- end manager: exit status ---

    // --- Firecracker's command line (issue 14) ---
    #[command(flatten)]
    pub fc: crate::firecracker_cli::FirecrackerArgs,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub seccomp: SeccompArgs,

    /// Kernel to boot: an ELF vmlinux (entered through its PVH note when it has one, else its 64-bit
    /// entry) or a bzImage. Example: --kernel /boot/vmlinux
    #[arg(long, value_name = "PATH", required_unless_present = "config")]
    pub kernel: Option<PathBuf>,

    /// Take the VM's description from a JSON file in the shape of Firecracker's --config-file
    /// (boot-source, machine-config, drives, network-interfaces, vsock, balloon, entropy) instead
    /// of the device flags; --serial and --transport still apply. Example: --config vm.json
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["kernel", "initrd", "cmdline", "cpus", "memory", "rng", "disks", "nets", "balloon", "vsock"]
    )]
    pub config: Option<PathBuf>,

    /// Initial ramdisk (cpio archive, optionally compressed), placed at the top of low memory.
    /// Example: --initrd initramfs.cpio
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line, at most 2047 bytes (less if a bzImage says so).
    /// Example: --cmdline "console=ttyS0 reboot=k panic=1"
    #[arg(long, value_name = "TEXT", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,

    // --- vCPU placement and memory backends (H3) ---
    /// Number of vCPUs, 1 to 254, and where their threads run. pin= puts every vCPU on one host
    /// CPU list (pin=0-1) or vCPU i on the i-th of a colon-separated list of one set per vCPU
    /// (pin=0:1, pin=0-1:2-3); lists are the kernel's syntax (0-3,8). others= keeps the VMM's
    /// other threads (main, API, device workers, I/O) on their own CPUs. rt=PRIO runs the vCPU
    /// threads SCHED_FIFO at priority 1 to 99 (needs CAP_SYS_NICE; give pin= and others= with it,
    /// so a spinning vCPU cannot starve the VMM's own threads). CPUs the host lacks are an error
    /// when the VM is built.
    /// Example: --cpus 2,pin=0:1,others=2-3,rt=10 (or plainly --cpus 4)
    #[arg(long, value_name = CPUS_FORM, default_value = "1", value_parser = parse_cpus)]
    pub cpus: CpusOption,

    /// Guest RAM, at least 16M, with a K/M/G/T suffix (binary units), and what backs it.
    /// backend=anon (default: private anonymous memory) or memfd (a shared memfd,
    /// /memfd:kestrel-guest-ram); hugepages=2M|1G backs it with hugetlb pages of that size (a
    /// memfd; the size must be a multiple; the pages are reserved at start, so too few free
    /// huge pages is an error then: see /proc/sys/vm/nr_hugepages); thp=on advises transparent
    /// huge pages; ksm=on lets KSM merge identical pages (anonymous memory only); mlock=on locks
    /// guest RAM in host memory as the guest touches it (not with --balloon); numa=N binds guest RAM, and the vCPUs
    /// not pinned otherwise, to host NUMA node N.
    /// Example: --memory 2G,hugepages=2M,numa=0 (or --memory 512M,thp=on,ksm=on, or plainly --memory 1G)
    #[arg(long, value_name = MEMORY_FORM, default_value = "256M", value_parser = parse_memory)]
    pub memory: MemoryOption,
    // --- end of H3's flags ---
    /// Where the serial console goes: stdio (the terminal; its input feeds the guest),
    /// file:PATH (appended to PATH; no input) or none. Example: --serial file:/tmp/console.log
    #[arg(long, value_name = "WHERE", default_value = "stdio", value_parser = parse_serial)]
    pub serial: SerialConfig,

    /// How virtio devices reach the guest: mmio (virtio-mmio, declared on the kernel command line;
    /// what microVM kernels use) or pci (virtio-pci with MSI-X on PCI bus 0; what stock distribution
    /// kernels use). Example: --transport pci
    #[arg(long, value_name = "mmio|pci", default_value = "mmio", value_parser = parse_transport)]
    pub transport: VirtioTransport,

    /// Give the guest a virtio-rng device fed from the host's getrandom (Linux: /dev/hwrng).
    /// Example: --rng
    #[arg(long)]
    pub rng: bool,

    /// Give the guest a virtio-blk disk over an image file or a host block device; repeat for more
    /// disks (Linux names them /dev/vda, /dev/vdb, ... in order). format= is raw (the default) or
    /// qcow2; it is never guessed from the file, so name qcow2 images as such. readonly=on opens
    /// the image read-only and the guest's writes fail; id= is the serial number the guest reads
    /// (at most 20 bytes, by default the file name). cache=writeback (default: a guest's flush is
    /// an fdatasync), none (O_DIRECT, around the host's page cache) or unsafe (the guest is offered
    /// no flush: for scratch disks). backing=off refuses a qcow2 image that has a backing file.
    /// queues=N gives 1 to 16 request queues; engine=async (default: many requests in flight,
    /// io_uring for raw images, a thread pool for qcow2) or sync (one at a time). bw= limits the bytes
    /// per second (256M, 1G), iops= the requests per second. poll=50us has the disk's worker poll
    /// for the guest's next request for up to that long (0 to 1000us, adapting; off by default):
    /// less latency at queue depth 1, for a host CPU's time. A path cannot contain a comma. The
    /// image is locked as QEMU locks it: one writer, or any number of readers.
    /// Example: --disk path=rootfs.ext4 --disk path=vm.qcow2,format=qcow2,cache=none,queues=2
    #[arg(long = "disk", value_name = "path=PATH[,format=raw|qcow2][,...]", value_parser = parse_disk)]
    pub disks: Vec<BlockConfig>,

    /// Give the guest a virtio-net card on a host tap device; repeat for more cards (Linux: eth0,
    /// eth1, ...). tap=NAME creates the tap NAME, or attaches to it if it exists (creating one
    /// needs CAP_NET_ADMIN; `ip tuntap add NAME mode tap user USER` makes one a user may attach
    /// to); tap=auto creates a tap named kestrelN (--log-level info shows N). mac= is the card's
    /// address, by default a random locally administered one.
    // --- H4 (net rate limiters): --net's rate-limit keys. ---
    /// rx_bw= and tx_bw= limit the bytes per second the guest receives and sends (10M, 1G;
    /// frames counted with their 12-byte virtio-net header), rx_ops= and tx_ops= the frames per
    /// second; a throttled card leaves further frames in the tap's queue or the guest's ring.
    /// Example: --net tap=tap0,mac=52:54:00:12:34:56 --net tap=tap1,rx_bw=10M,tx_bw=10M
    #[arg(long = "net", value_name = "tap=NAME|auto[,mac=MAC][,rx_bw=..]", value_parser = parse_net)]
    pub nets: Vec<NetConfig>,

    /// Give the guest a virtio-balloon device (Linux: CONFIG_VIRTIO_BALLOON) and ask it for size=
    /// MiB of its memory, which the host then frees. stats=SECONDS asks the guest for memory
    /// statistics that often (0: never, the default); reporting=on lets the guest report the
    /// pages it frees, which the host frees too; deflate_on_oom=on lets the guest take balloon
    /// pages back rather than run out of memory.
    /// Example: --balloon size=256,stats=5,reporting=on
    #[arg(
        long,
        value_name = "size=MIB[,stats=SECONDS][,reporting=on|off][,deflate_on_oom=on|off]",
        value_parser = parse_balloon
    )]
    pub balloon: Option<BalloonConfig>,

    /// Give the guest a virtio-vsock device (Linux: AF_VSOCK stream sockets) with context ID
    /// cid= (3 to 4294967294). Kestrel listens on the Unix socket uds=: a host process connects
    /// to it, sends "CONNECT <guest port>\n" and, once the guest accepts, reads
    /// "OK <host port>\n" before the connection's bytes. A guest connecting to host port P (CID
    /// 2) reaches the Unix socket uds=PATH_P. A stale socket left at PATH is replaced; a live
    /// one, or any other file, is an error. One per VM; the path cannot contain a comma.
    /// Example: --vsock cid=3,uds=/tmp/kestrel.vsock
    #[arg(long, value_name = "cid=N,uds=PATH", value_parser = parse_vsock)]
    pub vsock: Option<VsockConfig>,

    /// Append the VM's metrics to a file or named pipe, one JSON line in Firecracker's format
    /// every 60 seconds and when the VM ends (see docs/api.yaml, PUT /metrics). A missing file is
    /// created; an existing one is appended to. Example: --metrics-path /tmp/kestrel-metrics.json
    #[arg(long, value_name = "PATH")]
    pub metrics_path: Option<PathBuf>,

    // --- Landlock (H5) ---
    #[command(flatten)]
    pub landlock: LandlockArgs,
}

// --- Landlock (H5): `kestrel run` and `kestrel vmm` ---

/// `--landlock` and `--landlock-allow`, the same on `kestrel run` and `kestrel vmm`.
#[derive(Args, Debug)]
pub struct LandlockArgs {
    /// Confine the VMM with Landlock to the files its VM was configured with (kernel, initrd,
    /// disks and their qcow2 backing files, serial and metrics files, the vsock socket's
    /// directory), /dev/kvm, /dev/net/tun and /dev/userfaultfd, with no TCP. auto (default): on
    /// when not run as root (root VMMs are confined by `kestrel jailer`), and only a warning on a
    /// kernel without Landlock; on: also as root, and an error without kernel support; off: not at
    /// all. Example: --landlock on
    #[arg(long = "landlock", value_name = "auto|on|off", default_value = "auto")]
    pub mode: jail::landlock::Mode,

    /// Also let the confined VMM reach PATH: rw (default) to read and write a file, or to create,
    /// write and remove files in a directory; ro to read. For paths the API names after the start
    /// (PATCH /drives to a new file, a snapshot's directory). Repeat for more paths.
    /// Example: --landlock-allow /srv/vm1/snapshots --landlock-allow /srv/images/spare.img:ro
    #[arg(long = "landlock-allow", value_name = "PATH[:ro|rw]")]
    pub allow: Vec<jail::landlock::AllowSpec>,
}

impl LandlockArgs {
    /// The process's Landlock state from these flags.
    pub fn confinement(&self) -> crate::landlock::Confinement {
        crate::landlock::Confinement::new(self.mode, self.allow.clone())
    }
}

impl RunArgs {
    pub fn into_config(self) -> VmConfig {
        VmConfig {
            // clap requires --kernel unless --config is given, which main handles first.
            kernel: self.kernel.unwrap_or_default(),
            initrd: self.initrd,
            cmdline: self.cmdline,
            vcpus: self.cpus.count,
            memory_bytes: self.memory.bytes,
            serial: self.serial,
            transport: self.transport,
            virtio: (self.rng.then_some(VirtioConfig::Rng).into_iter())
                .chain(self.disks.into_iter().map(VirtioConfig::Block))
                .chain(self.nets.into_iter().map(VirtioConfig::Net))
                .chain(self.balloon.map(VirtioConfig::Balloon))
                .chain(self.vsock.map(VirtioConfig::Vsock))
                .collect(),
            track_dirty_pages: false,
            host: HostResources { cpus: *self.cpus.placement, memory: self.memory.options },
        }
    }
}

/// What is wrong with a `--serial` or `--transport` value (clap prints it after the flag).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChoiceError {
    #[error("file: needs a path, like file:/tmp/console.log")]
    SerialFileWithoutPath,
    #[error("'{0}' is not stdio, none or file:PATH")]
    Serial(String),
    #[error("'{0}' is not mmio or pci")]
    Transport(String),
}

fn parse_serial(text: &str) -> Result<SerialConfig, ChoiceError> {
    match text {
        "stdio" => Ok(SerialConfig::Stdio),
        "none" => Ok(SerialConfig::None),
        _ => match text.strip_prefix("file:") {
            Some("") => Err(ChoiceError::SerialFileWithoutPath),
            Some(path) => Ok(SerialConfig::File(PathBuf::from(path))),
            None => Err(ChoiceError::Serial(text.to_owned())),
        },
    }
}

fn parse_transport(text: &str) -> Result<VirtioTransport, ChoiceError> {
    match text {
        "mmio" => Ok(VirtioTransport::Mmio),
        "pci" => Ok(VirtioTransport::Pci),
        _ => Err(ChoiceError::Transport(text.to_owned())),
    }
}

// ---- Seccomp (H1): `--seccomp`, shared by `kestrel run` and `kestrel vmm` ----

/// Whether the VMM's threads run under their seccomp filters.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeccompSetting {
    On,
    Off,
}

#[derive(Args, Debug, Clone, Copy)]
pub struct SeccompArgs {
    /// Per-thread seccomp filters: on (the default) confines each thread of the VMM to the system
    /// calls its role needs (a forbidden call stops Kestrel with status 159 and names the call);
    /// off runs unfiltered, for debugging only, and says so loudly. Example: --seccomp off
    #[arg(long = "seccomp", value_name = "on|off", default_value = "on", value_enum)]
    pub setting: SeccompSetting,
}

// ---- end of Seccomp (H1) ----

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn transport_forms() {
        assert_eq!(parse_transport("mmio"), Ok(VirtioTransport::Mmio));
        assert_eq!(parse_transport("pci"), Ok(VirtioTransport::Pci));
        assert!(parse_transport("PCI").is_err());
    }

    #[test]
    fn serial_forms() {
        assert_eq!(parse_serial("stdio"), Ok(SerialConfig::Stdio));
        assert_eq!(parse_serial("none"), Ok(SerialConfig::None));
        assert_eq!(parse_serial("file:/tmp/x"), Ok(SerialConfig::File("/tmp/x".into())));
        assert!(parse_serial("file:").is_err());
        assert!(parse_serial("tcp:1234").is_err());
    }
}
