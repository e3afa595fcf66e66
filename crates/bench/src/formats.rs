//! The storage comparison inside `--virtio`: the same block workloads on Kestrel's qcow2 backend
//! (a fully allocated image and a fresh thin overlay over the raw image), QEMU's qcow2 driver on
//! the same file (`qemu-img bench`, no guest) as the anchor, the floor of a request (GET_ID: the
//! notify → worker → used-ring round trip with no disk I/O), and the time to make 100 thin clones.
//!
//! The qcow2 support and `kestrel image` come in other changes: until a build has them, their cells
//! say "n/a" and the rest of the run goes on.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::measure::Summary;
use crate::virtio::BlkWorkload;
use crate::Error;

/// What the cells of a build without qcow2 say.
pub const NO_QCOW2: &str = "n/a (qcow2 not supported by this build)";
/// How many clones the clone timing makes.
pub const CLONES: usize = 100;
/// The stride of `qemu-img bench`'s "random" workloads, which only walks the image with a fixed
/// step: 7919 (a prime) blocks, wrapping at the image's end, scatters them over the whole image.
const STRIDE_BLOCKS: u64 = 7919;

/// The GET_ID workload of the floor: 20-byte requests at queue depth 1, counted like the random
/// workloads (thousands per second).
pub const FLOOR: BlkWorkload = BlkWorkload { mode: "getid", bs: 20, qd: 1, count: 4096, host_bytes: 0 };

/// Runs the guest's `bench_blk` on a disk (the `--disk` argument) and returns the figure.
pub type GuestRun<'a> = dyn Fn(&str, &BlkWorkload) -> Result<f64, Error> + 'a;

/// Whether a workload is in the comparison: 4 KiB random at qd1 and qd32, 128 KiB sequential at
/// qd32.
pub fn compared(w: &BlkWorkload) -> bool {
    if w.sequential() {
        w.qd == 32
    } else {
        w.bs == 4096
    }
}

/// Samples of the comparison, per workload of the virtio table (empty for those not compared).
pub struct Formats {
    kestrel: PathBuf,
    base: PathBuf,
    full: PathBuf,
    thin: PathBuf,
    clones_dir: PathBuf,
    /// Why Kestrel's qcow2 columns are empty, if they are.
    qcow2: Result<(), String>,
    /// Why `kestrel image create` is not timed, if it is not.
    image_tool: Result<(), String>,
    have_qemu_img: bool,
    full_samples: Vec<Vec<f64>>,
    thin_samples: Vec<Vec<f64>>,
    qemu_samples: Vec<Vec<f64>>,
    floor: Vec<f64>,
    clones_kestrel: Vec<f64>,
    clones_qemu: Vec<f64>,
    notes: Vec<String>,
}

/// One row of the comparison, medians (min–max) of every run.
pub struct FormatRow {
    pub label: String,
    pub host: Option<Summary>,
    pub raw: Summary,
    pub full: Option<Summary>,
    pub thin: Option<Summary>,
    pub qemu_img: Option<Summary>,
    /// For queue depth 1: the raw median as microseconds per request.
    pub raw_us_per_request: Option<f64>,
}

/// The comparison's results.
pub struct FormatsReport {
    pub rows: Vec<FormatRow>,
    /// GET_ID at qd1, microseconds per request.
    pub floor_us: Summary,
    /// Why the qcow2 columns say n/a, if they do.
    pub qcow2_missing: Option<String>,
    /// Seconds for `CLONES` clones with `kestrel image create`, or why there are none.
    pub clones_kestrel: Result<Summary, String>,
    /// The same with `qemu-img create`.
    pub clones_qemu: Option<Summary>,
    pub notes: Vec<String>,
}

impl Formats {
    /// Makes the qcow2 images from the raw `base` in `scratch` and finds out what this build of
    /// Kestrel can do. `run` is tried once on the full image: a refusal means no qcow2.
    pub fn prepare(
        kestrel: &Path,
        scratch: &Path,
        base: &Path,
        workloads: usize,
        run: &GuestRun,
    ) -> Result<Formats, Error> {
        let mut formats = Formats {
            kestrel: kestrel.to_owned(),
            base: base.to_owned(),
            full: scratch.join("full.qcow2"),
            thin: scratch.join("thin.qcow2"),
            clones_dir: scratch.join("clones"),
            qcow2: Ok(()),
            image_tool: Ok(()),
            have_qemu_img: crate::virtio::have("qemu-img"),
            full_samples: vec![Vec::new(); workloads],
            thin_samples: vec![Vec::new(); workloads],
            qemu_samples: vec![Vec::new(); workloads],
            floor: Vec::new(),
            clones_kestrel: Vec::new(),
            clones_qemu: Vec::new(),
            notes: Vec::new(),
        };
        if !formats.have_qemu_img {
            let reason = "qemu-img is not installed: no qcow2 images, no QEMU anchor".to_owned();
            formats.notes.push(reason.clone());
            formats.qcow2 = Err(reason);
        } else {
            // The raw image is pseudo-random, so every cluster of the copy is allocated.
            qemu_img(&["convert", "-f", "raw", "-O", "qcow2", &path(base), &path(&formats.full)])?;
            let probe = BlkWorkload { count: 0, ..FLOOR };
            if let Err(e) = run(&qcow2_disk(&formats.full), &probe) {
                formats.qcow2 = Err(NO_QCOW2.to_owned());
                formats
                    .notes
                    .push(format!("Kestrel refused a qcow2 disk: {}", first_error_line(&e.to_string())));
            }
        }
        std::fs::create_dir_all(&formats.clones_dir)
            .map_err(|e| Error::Io(formats.clones_dir.display().to_string(), e))?;
        Ok(formats)
    }

    /// One run of workload number `index`: Kestrel on the full image and on a fresh overlay, and
    /// `qemu-img bench` on the full image.
    pub fn sample(&mut self, index: usize, w: &BlkWorkload, run: &GuestRun) -> Result<(), Error> {
        if !compared(w) {
            return Ok(());
        }
        if self.qcow2.is_ok() {
            self.full_samples[index].push(run(&qcow2_disk(&self.full), w)?);
            self.fresh_overlay()?;
            self.thin_samples[index].push(run(&qcow2_disk(&self.thin), w)?);
        }
        if self.have_qemu_img {
            let figure = self.qemu_img_bench(w)?;
            self.qemu_samples[index].push(figure);
        }
        Ok(())
    }

    /// One run of the floor (on the raw disk: GET_ID touches no disk anyway) and of the clones.
    pub fn sample_floor_and_clones(&mut self, raw_disk: &str, run: &GuestRun) -> Result<(), Error> {
        let kiops = run(raw_disk, &FLOOR)?;
        self.floor.push(1e3 / kiops);
        if self.image_tool.is_ok() {
            match self.time_clones(|clone, base| {
                let mut command = Command::new(&self.kestrel);
                command.args(["image", "create", "-f", "qcow2", "-b", base, "-F", "raw", clone]);
                command
            }) {
                Ok(seconds) => self.clones_kestrel.push(seconds),
                Err(reason) => self.image_tool = Err(reason),
            }
        }
        if self.have_qemu_img {
            let seconds = self
                .time_clones(|clone, base| {
                    let mut command = Command::new("qemu-img");
                    command.args(["create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", clone]);
                    command
                })
                .map_err(Error::Bench)?;
            self.clones_qemu.push(seconds);
        }
        Ok(())
    }

    /// The table, given the raw guest's and fio's samples of every workload.
    pub fn report(self, workloads: &[BlkWorkload], raw: &[Vec<f64>], host: &[Vec<f64>]) -> FormatsReport {
        let summary = |samples: &Vec<f64>| (!samples.is_empty()).then(|| Summary::of(samples));
        let rows = workloads
            .iter()
            .enumerate()
            .filter(|(_, w)| compared(w))
            .map(|(i, w)| {
                let raw = Summary::of(&raw[i]);
                FormatRow {
                    label: w.label(),
                    host: host.get(i).and_then(summary),
                    raw,
                    full: summary(&self.full_samples[i]),
                    thin: summary(&self.thin_samples[i]),
                    qemu_img: summary(&self.qemu_samples[i]),
                    raw_us_per_request: (w.qd == 1 && !w.sequential()).then(|| 1e3 / raw.median),
                }
            })
            .collect();
        let clones_kestrel = match (&self.image_tool, self.clones_kestrel.is_empty()) {
            (Ok(()), false) => Ok(Summary::of(&self.clones_kestrel)),
            (Err(reason), _) => Err(reason.clone()),
            (Ok(()), true) => Err("n/a (not run)".to_owned()),
        };
        FormatsReport {
            rows,
            floor_us: Summary::of(&self.floor),
            qcow2_missing: self.qcow2.err(),
            clones_kestrel,
            clones_qemu: summary(&self.clones_qemu),
            notes: self.notes,
        }
    }

    /// A new, empty overlay over the raw image, so that every thin run allocates from scratch.
    fn fresh_overlay(&self) -> Result<(), Error> {
        let _ = std::fs::remove_file(&self.thin);
        qemu_img(&["create", "-q", "-f", "qcow2", "-b", &path(&self.base), "-F", "raw", &path(&self.thin)])
    }

    /// `qemu-img bench` of `w` on the full image, buffered (`-t writeback`, as Kestrel's default
    /// cache mode and fio), as many bytes as fio moves. Random workloads walk with a stride.
    fn qemu_img_bench(&self, w: &BlkWorkload) -> Result<f64, Error> {
        let count = (w.host_bytes / w.bs).to_string();
        let (depth, size) = (w.qd.to_string(), w.bs.to_string());
        let step = (STRIDE_BLOCKS * w.bs).to_string();
        let full = path(&self.full);
        let mut args =
            vec!["bench", "-f", "qcow2", "-t", "writeback", "-c", &count, "-d", &depth, "-s", &size];
        if w.mode.contains("write") {
            args.push("-w");
        }
        if !w.sequential() {
            args.extend(["-S", &step]);
        }
        args.push(&full);
        let output = Command::new("qemu-img")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::Io("running qemu-img bench".into(), e))?;
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(Error::Bench(format!(
                "qemu-img {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        let seconds = completed_seconds(&text)
            .ok_or_else(|| Error::Bench(format!("qemu-img bench said no run time: {text}")))?;
        Ok(w.figure(w.host_bytes / w.bs * w.bs, seconds))
    }

    /// Seconds to make `CLONES` overlays of the raw image with `command(clone, base)`, or why not.
    fn time_clones(&self, command: impl Fn(&str, &str) -> Command) -> Result<f64, String> {
        let base = path(&self.base);
        let clones: Vec<String> =
            (0..CLONES).map(|n| path(&self.clones_dir.join(format!("clone-{n}.qcow2")))).collect();
        let start = Instant::now();
        for clone in &clones {
            let output = command(clone, &base)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("n/a (cannot run it: {e})"))?;
            if !output.status.success() || !Path::new(clone).is_file() {
                let stderr = String::from_utf8_lossy(&output.stderr);
                return Err(format!("n/a ({})", first_error_line(&stderr)));
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        for clone in &clones {
            let _ = std::fs::remove_file(clone);
        }
        Ok(seconds)
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn qcow2_disk(image: &Path) -> String {
    format!("path={},format=qcow2", image.display())
}

fn qemu_img(args: &[&str]) -> Result<(), Error> {
    let output = Command::new("qemu-img")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Io("running qemu-img".into(), e))?;
    if !output.status.success() {
        return Err(Error::Bench(format!(
            "qemu-img {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

/// "Run completed in 0.109 seconds." → 0.109.
fn completed_seconds(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("Run completed in "))?;
    let seconds: f64 = line.strip_prefix("Run completed in ")?.split_whitespace().next()?.parse().ok()?;
    (seconds > 0.0).then_some(seconds)
}

/// The line of a failure's output that says what went wrong: the first with "error", else the
/// first that is not empty.
fn first_error_line(text: &str) -> String {
    let lines = || text.lines().map(str::trim).filter(|l| !l.is_empty());
    lines().find(|l| l.contains("error")).or_else(|| lines().next()).unwrap_or("no output").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_img_bench_output_is_read() {
        let text = "Sending 40000 read requests, 4096 bytes each, 32 in parallel (starting at offset 0, \
                    step size 32436224)\nRun completed in 0.109 seconds.\n";
        assert_eq!(completed_seconds(text), Some(0.109));
        assert_eq!(completed_seconds("Run completed in 0.000 seconds."), None, "too fast to time");
        assert_eq!(completed_seconds("nothing"), None);
    }

    #[test]
    fn the_compared_workloads_are_the_issues_six() {
        let labels: Vec<String> =
            crate::virtio::BLK.iter().filter(|w| compared(w)).map(BlkWorkload::label).collect();
        assert_eq!(
            labels,
            [
                "blk seqread 128 KiB qd32 (MB/s)",
                "blk seqwrite 128 KiB qd32 (MB/s)",
                "blk randread 4 KiB qd1 (kIOPS)",
                "blk randread 4 KiB qd32 (kIOPS)",
                "blk randwrite 4 KiB qd1 (kIOPS)",
                "blk randwrite 4 KiB qd32 (kIOPS)",
            ]
        );
    }

    #[test]
    fn the_reason_shown_is_the_error_line() {
        let clap =
            "error: invalid value 'path=x,format=qcow2' for '--disk': unknown key 'format'\n\nFor more \
                    information, try '--help'.\n";
        assert!(first_error_line(clap).starts_with("error: invalid value"));
        assert_eq!(first_error_line("\n  first\nsecond"), "first");
        assert_eq!(first_error_line(""), "no output");
    }
}
