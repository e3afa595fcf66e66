//! Command-line syntax: every flag, its help and its examples.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tracing::level_filters::LevelFilter;
use vmm::config::{SerialConfig, VirtioConfig, VmConfig, DEFAULT_CMDLINE};

use crate::size::parse_size;

#[derive(Parser, Debug)]
#[command(
    name = "kestrel",
    version,
    about = "Kestrel runs Linux virtual machines on KVM.",
    after_help = "Examples:\n  \
        kestrel run --kernel vmlinux --initrd initramfs.cpio --memory 512M --cpus 2\n  \
        kestrel run --kernel bzImage --cmdline \"console=ttyS0 root=/dev/vda\" --serial file:console.log\n\n\
        Exit status: 0 guest powered off, 1 error, 2 usage error, 3 guest reset, 4 triple fault,\n\
        5 vCPU failure, 6 quit with Ctrl-A X, 128+N stopped by signal N."
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
        kestrel run --kernel bzImage --serial file:/tmp/console.log")]
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Kernel to boot: an ELF vmlinux (entered through its PVH note when it has one, else its 64-bit
    /// entry) or a bzImage. Example: --kernel /boot/vmlinux
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,

    /// Initial ramdisk (cpio archive, optionally compressed), placed at the top of low memory.
    /// Example: --initrd initramfs.cpio
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line, at most 2047 bytes (less if a bzImage says so).
    /// Example: --cmdline "console=ttyS0 reboot=k panic=1"
    #[arg(long, value_name = "TEXT", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,

    /// Number of vCPUs, 1 to 254. Example: --cpus 4
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub cpus: u8,

    /// Guest RAM, at least 16M, with a K/M/G/T suffix (binary units). Example: --memory 1G
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    pub memory: u64,

    /// Where the serial console goes: stdio (the terminal; its input feeds the guest),
    /// file:PATH (appended to PATH; no input) or none. Example: --serial file:/tmp/console.log
    #[arg(long, value_name = "WHERE", default_value = "stdio", value_parser = parse_serial)]
    pub serial: SerialConfig,

    /// Give the guest a virtio-rng device fed from the host's getrandom (Linux: /dev/hwrng).
    /// Example: --rng
    #[arg(long)]
    pub rng: bool,
}

impl RunArgs {
    pub fn into_config(self) -> VmConfig {
        VmConfig {
            kernel: self.kernel,
            initrd: self.initrd,
            cmdline: self.cmdline,
            vcpus: self.cpus,
            memory_bytes: self.memory,
            serial: self.serial,
            virtio: self.rng.then_some(VirtioConfig::Rng).into_iter().collect(),
        }
    }
}

fn parse_serial(text: &str) -> Result<SerialConfig, String> {
    match text {
        "stdio" => Ok(SerialConfig::Stdio),
        "none" => Ok(SerialConfig::None),
        _ => match text.strip_prefix("file:") {
            Some("") => Err("file: needs a path, like file:/tmp/console.log".into()),
            Some(path) => Ok(SerialConfig::File(PathBuf::from(path))),
            None => Err(format!("'{text}' is not stdio, none or file:PATH")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
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
