//! `kestrel-bench`: how far Kestrel is from the least any KVM VMM must pay.
//!
//! Each metric is measured over N runs for two VMM processes booting the same test guest
//! (`guests::HELLO`, 128 MiB): Kestrel, and the floor, a bare KVM runner built into this binary
//! (hidden subcommand `floor`) that does only what the guest needs. Kestrel and floor runs are
//! interleaved so that machine noise hits both alike. Optional parts: virtio device throughput
//! (`--virtio`, `virtio.rs`) and snapshot and restore latencies (`--snapshot`, `snapshot.rs`).
//! `kestrel-bench api` times control API requests instead (`api.rs`). See `docs/benchmarks.md`.

mod api;
mod floor;
mod formats;
mod http;
mod irqchip;
mod measure;
mod report;
mod snapshot;
mod virtio;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use measure::{launch, Launch, Summary};
use report::{IrqchipRow, Row};

/// Guest RAM for every run.
const MEMORY: &str = "128M";
const MEMORY_BYTES: u64 = 128 << 20;
/// Port writes in the per-exit run.
const LOOPS: u64 = 100_000;
/// Kestrel's exit status when the guest resets; the floor exits 0.
const KESTREL_RESET_STATUS: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Arch(#[from] arch::Error),
    #[error("{0}")]
    Bench(String),
    #[error("{0}")]
    Floor(String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("{0} failed: {1}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
}

#[derive(Parser, Debug)]
#[command(
    name = "kestrel-bench",
    about = "Times Kestrel against a bare-KVM floor: launch to first serial byte, launch to exit, \
             cost of one port-I/O exit, peak RSS; optionally virtio throughput and snapshot latencies.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Runs per metric and VMM (at least 10).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(10..))]
    runs: u32,
    /// The kestrel binary [default: `kestrel` next to this binary, i.e. target/release/kestrel].
    #[arg(long, value_name = "PATH")]
    kestrel: Option<PathBuf>,
    /// Also write the results as Markdown to FILE.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Also time creating and tearing down each interrupt-controller option (in this process).
    #[arg(long)]
    irqchip_costs: bool,
    /// Also measure virtio-blk, -vsock and -net throughput and exits per request from the virtio
    /// test guest, beside fio on the host (takes a few minutes; virtio-net needs root).
    #[arg(long)]
    virtio: bool,
    /// Only the virtio part (implies --virtio): skip the boot and exit-cost runs.
    #[arg(long)]
    virtio_only: bool,
    /// Also time full and diff snapshots and restores into a fresh `kestrel vmm`, driven through
    /// the API socket.
    #[arg(long)]
    snapshot: bool,
    /// Only the snapshot part (implies --snapshot): skip the boot and exit-cost runs.
    #[arg(long)]
    snapshot_only: bool,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// The bare KVM runner the benchmark compares against (internal).
    #[command(hide = true)]
    Floor {
        #[arg(long, value_name = "PATH")]
        kernel: PathBuf,
        #[arg(long, value_name = "TEXT", default_value = "")]
        cmdline: String,
        /// Only 128M is accepted, like the runs that use it.
        #[arg(long, value_name = "SIZE", default_value = MEMORY)]
        memory: String,
    },
    /// Times control API requests to `kestrel vmm` (and to Firecracker, given its binary):
    /// median and 99th percentile round trips over the Unix socket.
    Api(api::ApiArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Sub::Floor { kernel, cmdline, memory }) => {
            if memory != MEMORY {
                eprintln!("kestrel-bench floor: only --memory {MEMORY} is supported");
                return ExitCode::from(2);
            }
            floor::run(&kernel, &cmdline, MEMORY_BYTES)
        }
        Some(Sub::Api(args)) => api::bench(&args),
        None => bench(&cli.bench),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kestrel-bench: {e}");
            ExitCode::from(1)
        }
    }
}

/// The two VMMs under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vmm {
    Kestrel,
    Floor,
}

struct Target<'a> {
    vmm: Vmm,
    program: &'a Path,
}

impl Target<'_> {
    fn command(&self, cmdline: &str) -> Command {
        let mut command = Command::new(self.program);
        match self.vmm {
            Vmm::Kestrel => {
                command.args(["run", "--kernel", guests::HELLO, "--memory", MEMORY, "--serial", "stdio"]);
            }
            Vmm::Floor => {
                command.args(["floor", "--kernel", guests::HELLO, "--memory", MEMORY]);
            }
        }
        command.args(["--cmdline", cmdline]);
        command
    }

    /// Launches the hello guest with `cmdline` and checks that it ran to its reset.
    fn launch(&self, cmdline: &str, expect: &str) -> Result<Launch, Error> {
        let run = launch(self.command(cmdline))?;
        let want_status = match self.vmm {
            Vmm::Kestrel => KESTREL_RESET_STATUS,
            Vmm::Floor => 0,
        };
        let out = String::from_utf8_lossy(&run.stdout);
        if run.status != want_status || !out.contains(expect) || !out.contains("exit: reset") {
            return Err(Error::Bench(format!(
                "{:?} with {cmdline:?}: status {} (want {want_status}), stdout:\n{out}\nstderr:\n{}",
                self.vmm,
                run.status,
                String::from_utf8_lossy(&run.stderr)
            )));
        }
        Ok(run)
    }
}

/// Every sample of one VMM, in milliseconds / KiB.
#[derive(Default)]
struct Samples {
    first_byte_ms: Vec<f64>,
    exit_ms: Vec<f64>,
    rss_mib: Vec<f64>,
    loops0_ms: Vec<f64>,
    loops_n_ms: Vec<f64>,
}

impl Samples {
    fn per_exit_us(&self) -> Summary {
        // The specified figure: difference of the medians. The range comes from the per-run pairs.
        let median = (Summary::of(&self.loops_n_ms).median - Summary::of(&self.loops0_ms).median) * 1000.0
            / LOOPS as f64;
        let pairs: Vec<f64> = self
            .loops_n_ms
            .iter()
            .zip(&self.loops0_ms)
            .map(|(n, zero)| (n - zero) * 1000.0 / LOOPS as f64)
            .collect();
        let range = Summary::of(&pairs);
        Summary { median, min: range.min, max: range.max }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `--kestrel`, or else `kestrel` next to this binary; it must exist.
fn kestrel_binary(arg: Option<&Path>) -> Result<PathBuf, Error> {
    let kestrel = match arg {
        Some(path) => path.to_owned(),
        None => own_binary()?.with_file_name("kestrel"),
    };
    if !kestrel.is_file() {
        return Err(Error::Bench(format!(
            "no kestrel binary at {} (build it with `cargo build --release -p kestrel`, or pass --kestrel)",
            kestrel.display()
        )));
    }
    Ok(kestrel)
}

fn own_binary() -> Result<PathBuf, Error> {
    std::env::current_exe().map_err(|e| Error::Io("locating this binary".into(), e))
}

fn bench(args: &BenchArgs) -> Result<(), Error> {
    let own = own_binary()?;
    let kestrel = kestrel_binary(args.kestrel.as_deref())?;
    let mut text =
        if args.virtio_only || args.snapshot_only { String::new() } else { boot_part(args, &kestrel, &own)? };
    if args.virtio || args.virtio_only {
        let report = virtio::bench(&kestrel, args.runs as usize)?;
        text += &report::render_virtio(args.runs, &report);
    }
    if args.snapshot || args.snapshot_only {
        let report = snapshot::bench(&kestrel, args.runs as usize)?;
        text += &report::render_snapshot(args.runs, &report);
    }
    println!("{text}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &text).map_err(|e| Error::Io(path.display().to_string(), e))?;
    }
    Ok(())
}

/// The boot and exit-cost runs against the floor (and the irqchip costs), rendered.
fn boot_part(args: &BenchArgs, kestrel: &Path, own: &Path) -> Result<String, Error> {
    let targets = [Target { vmm: Vmm::Kestrel, program: kestrel }, Target { vmm: Vmm::Floor, program: own }];
    let runs = args.runs as usize;
    let cmd_plain = "exit=reset";
    let cmd_zero = "exit=reset loops=0";
    let cmd_n = format!("exit=reset loops={LOOPS}");
    let expect_n = format!("loops: {LOOPS}");

    eprintln!("kestrel: {}\nfloor:   {} floor\nguest:   {}", kestrel.display(), own.display(), guests::HELLO);
    // One untimed launch of each, so that binaries and the guest are in the page cache.
    for target in &targets {
        target.launch(cmd_plain, "exit: reset")?;
    }

    let mut samples = [Samples::default(), Samples::default()];
    for run in 0..runs {
        eprint!("\rrun {}/{runs}", run + 1);
        // Alternate which VMM goes first, so neither always follows the other.
        let order: [usize; 2] = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for index in order {
            let target = &targets[index];
            let s = &mut samples[index];
            let plain = target.launch(cmd_plain, "exit: reset")?;
            s.first_byte_ms.push(ms(plain.first_byte));
            s.exit_ms.push(ms(plain.exit));
            s.rss_mib.push(plain.max_rss_kib as f64 / 1024.0);
            s.loops0_ms.push(ms(target.launch(cmd_zero, "loops: 0")?.exit));
            s.loops_n_ms.push(ms(target.launch(&cmd_n, &expect_n)?.exit));
        }
    }
    eprintln!();

    let [k, f] = &samples;
    let rows = vec![
        Row::new("launch → first serial byte (ms)", &k.first_byte_ms, &f.first_byte_ms),
        Row::new("launch → exit, hello `exit=reset` (ms)", &k.exit_ms, &f.exit_ms),
        Row::from_summaries("per port-I/O exit (µs, loops=100000 vs 0)", k.per_exit_us(), f.per_exit_us()),
        Row::new("peak RSS, 128 MiB guest (MiB)", &k.rss_mib, &f.rss_mib),
    ];

    let irqchip_rows = if args.irqchip_costs { Some(irqchip_costs(runs)?) } else { None };

    // With fork + exec, a child's ru_maxrss is at least the anonymous memory it was forked with.
    let parent_anon = own_rss_anon_kib()
        .map_or_else(|| "unknown".to_owned(), |kib| format!("{:.2} MiB", kib as f64 / 1024.0));
    let note = format!(
        "Peak RSS is wait4's ru_maxrss of the VMM process; it cannot be below the anonymous memory \
         the benchmark process had when it forked the VMM ({parent_anon} here)."
    );
    Ok(report::render(args.runs, &rows, &note, irqchip_rows.as_deref()))
}

/// `RssAnon` of this process, in KiB.
fn own_rss_anon_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn irqchip_costs(runs: usize) -> Result<Vec<IrqchipRow>, Error> {
    let kvm = kvm_ioctls::Kvm::new().map_err(|e| Error::Kvm("open /dev/kvm", e))?;
    let variants = irqchip::Variant::ALL;
    let mut create = vec![Vec::with_capacity(runs); variants.len()];
    let mut teardown = vec![Vec::with_capacity(runs); variants.len()];
    // One untimed round first: KVM's first VM in a process sets up per-process state.
    for variant in variants {
        irqchip::sample(&kvm, variant)?;
    }
    for run in 0..runs {
        eprint!("\rirqchip costs {}/{runs}", run + 1);
        // Rotate the order each round, so no option always runs right after another.
        for offset in 0..variants.len() {
            let index = (run + offset) % variants.len();
            let sample = irqchip::sample(&kvm, variants[index])?;
            create[index].push(ms(sample.create));
            teardown[index].push(ms(sample.teardown));
        }
    }
    eprintln!();
    Ok(variants
        .iter()
        .enumerate()
        .map(|(i, v)| IrqchipRow {
            label: v.label(),
            create: Summary::of(&create[i]),
            teardown: Summary::of(&teardown[i]),
        })
        .collect())
}
