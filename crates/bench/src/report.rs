//! The results as a Markdown table (also what the terminal shows).

use std::fmt::Write;

use crate::measure::Summary;

/// One metric for Kestrel and the floor.
pub struct Row {
    pub metric: &'static str,
    pub kestrel: Summary,
    pub floor: Summary,
}

impl Row {
    pub fn new(metric: &'static str, kestrel: &[f64], floor: &[f64]) -> Row {
        Row::from_summaries(metric, Summary::of(kestrel), Summary::of(floor))
    }

    pub fn from_summaries(metric: &'static str, kestrel: Summary, floor: Summary) -> Row {
        Row { metric, kestrel, floor }
    }
}

/// Create and teardown times of one interrupt-controller option, in ms.
pub struct IrqchipRow {
    pub label: &'static str,
    pub create: Summary,
    pub teardown: Summary,
}

fn cell(s: Summary, decimals: usize) -> String {
    format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max, d = decimals)
}

fn ratio(kestrel: f64, floor: f64) -> String {
    if floor > 0.0 {
        format!("{:.2}×", kestrel / floor)
    } else {
        "–".into()
    }
}

/// Renders the tables; `runs` is the sample count behind each figure.
pub fn render(runs: u32, rows: &[Row], note: &str, irqchip: Option<&[IrqchipRow]>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Median (min–max) of {runs} runs each; Kestrel and floor runs interleaved.\n");
    let _ = writeln!(out, "| metric | Kestrel | floor (bare KVM) | Kestrel / floor |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            row.metric,
            cell(row.kestrel, 2),
            cell(row.floor, 2),
            ratio(row.kestrel.median, row.floor.median)
        );
    }
    let _ = writeln!(out, "\n{note}");
    if let Some(irqchip) = irqchip {
        let _ = writeln!(
            out,
            "\nInterrupt-controller options: KVM_CREATE_VM + option + one KVM_CREATE_VCPU (create), \
             then closing both fds (teardown); ms, median (min–max) of {runs}.\n"
        );
        let _ = writeln!(out, "| option | create (ms) | teardown (ms) | total (median, ms) |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for row in irqchip {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.2} |",
                row.label,
                cell(row.create, 2),
                cell(row.teardown, 2),
                row.create.median + row.teardown.median
            );
        }
    }
    out
}

/// The `--virtio` table: guest figures, the host's fio figures, exits per request.
pub fn render_virtio(runs: u32, report: &crate::virtio::VirtioReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nvirtio devices, driven by the CPL3 test guest (timed with its TSC, {} kHz); median (min–max) \
         of {runs} runs; fio runs interleaved with the guest's. Exits: (count with N requests − count \
         with none) / N, median of 3 pairs.\n",
        report.tsc_khz
    );
    let _ = writeln!(
        out,
        "| workload | Kestrel guest | host fio, same file | guest / host | exits to userspace | MMIO + PIO exits (incl. ioeventfd) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for row in &report.rows {
        let (host, ratio_cell) = match row.host {
            Some(h) => (cell(h, 1), ratio(row.kestrel.median, h.median)),
            None => ("–".to_owned(), "–".to_owned()),
        };
        let (user, all) = match row.exits {
            Some(e) => (format!("{:.3} / {}", e.userspace, row.per), format!("{:.3} / {}", e.io, row.per)),
            None => ("–".to_owned(), "–".to_owned()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {host} | {ratio_cell} | {user} | {all} |",
            row.label,
            cell(row.kestrel, 1)
        );
    }
    for note in &report.notes {
        let _ = writeln!(out, "\n{note}");
    }
    out += &render_formats(runs, &report.formats);
    out
}

/// The storage comparison: raw against qcow2 and QEMU's driver, the floor, the clones.
fn render_formats(runs: u32, report: &crate::formats::FormatsReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nStorage formats, same runs (median (min–max) of {runs}): Kestrel on the raw image, on a qcow2 copy \
         of it (`qemu-img convert`, every cluster allocated) and on a fresh thin qcow2 overlay over it (made \
         again before every run); `qemu-img bench -t writeback` on the same qcow2 copy (QEMU's qcow2 driver, \
         no guest; its random workloads walk the image with a stride of 7919 blocks).\n"
    );
    let _ = writeln!(
        out,
        "| workload | host fio | Kestrel raw | Kestrel qcow2 full | Kestrel qcow2 thin | qemu-img bench, qcow2 full \
         | raw / host | full / raw | thin / raw | full / qemu-img |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let missing = report.qcow2_missing.as_deref().unwrap_or("–");
    let or_missing = |s: Option<Summary>| s.map_or_else(|| missing.to_owned(), |s| cell(s, 1));
    let versus = |a: Option<Summary>, b: Option<Summary>| match (a, b) {
        (Some(a), Some(b)) => ratio(a.median, b.median),
        _ => "–".to_owned(),
    };
    for row in &report.rows {
        let raw = Some(row.raw);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.label,
            row.host.map_or_else(|| "–".to_owned(), |s| cell(s, 1)),
            cell(row.raw, 1),
            or_missing(row.full),
            or_missing(row.thin),
            row.qemu_img.map_or_else(|| "–".to_owned(), |s| cell(s, 1)),
            versus(raw, row.host),
            versus(row.full, raw),
            versus(row.thin, raw),
            versus(row.full, row.qemu_img),
        );
    }
    let floor = report.floor_us;
    let _ = writeln!(
        out,
        "\nFloor: a GET_ID request at qd1 (the device answers from memory, no disk I/O: the guest's notify → \
         worker wake-up → used ring → guest) costs {} µs.",
        cell(floor, 2)
    );
    for row in &report.rows {
        if let Some(us) = row.raw_us_per_request {
            let _ = writeln!(
                out,
                "- {}: raw {us:.2} µs per request, {} the floor.",
                row.label,
                ratio(us, floor.median)
            );
        }
    }
    let clones = match &report.clones_kestrel {
        Ok(s) => format!("{} s", cell(*s, 3)),
        Err(reason) => reason.clone(),
    };
    let qemu = report.clones_qemu.map_or_else(|| "–".to_owned(), |s| format!("{} s", cell(s, 3)));
    let _ = writeln!(
        out,
        "\n{} thin qcow2 clones of one raw base (`image create -f qcow2 -b base -F raw`, one process each): \
         `kestrel image` {clones}; `qemu-img` {qemu}.",
        crate::formats::CLONES
    );
    for note in &report.notes {
        let _ = writeln!(out, "\n{note}");
    }
    out
}

/// The `--snapshot` table: one column per guest size.
pub fn render_snapshot(runs: u32, report: &crate::snapshot::SnapshotReport) -> String {
    use crate::measure::percentile;
    use crate::snapshot::SizeSamples;

    /// A row: its label, its samples, and whether they are file sizes (bytes) or times (ms).
    type Metric = (&'static str, fn(&SizeSamples) -> &[f64], bool);
    const METRICS: [Metric; 8] = [
        ("full create: PUT /snapshot/create, request → response", |s| &s.full_create_ms, false),
        ("full memory file, allocated", |s| &s.full_bytes, true),
        ("restore: spawn → API socket accepts", |s| &s.socket_ms, false),
        ("restore: PUT /snapshot/load with resume_vm, request → response", |s| &s.load_ms, false),
        ("restore: spawn → load answered (vCPU resumes)", |s| &s.loaded_ms, false),
        ("restore: spawn → first new count line (upper bound)", |s| &s.first_line_ms, false),
        ("diff create after the guest wrote touch_mib: request → response", |s| &s.diff_create_ms, false),
        ("diff memory file, allocated", |s| &s.diff_bytes, true),
    ];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nSnapshots through the API of `kestrel vmm`, counting guest (hello `exit=count touch_mib=N`, \
         1 vCPU); times in ms, median / p90 of {runs} runs; files: blocks allocated (median) and their \
         share of guest RAM.\n"
    );
    let mut header = "| metric |".to_owned();
    for s in &report.sizes {
        let size = if s.mib % 1024 == 0 { format!("{} GiB", s.mib / 1024) } else { format!("{} MiB", s.mib) };
        let _ = write!(header, " {size} guest, touch_mib={} |", s.touch_mib);
    }
    let _ = writeln!(out, "{header}\n|---|{}", "---:|".repeat(report.sizes.len()));
    for (label, samples, is_size) in METRICS {
        let _ = write!(out, "| {label} |");
        for s in &report.sizes {
            let values = samples(s);
            if is_size {
                let bytes = Summary::of(values).median;
                let share = bytes / (s.mib << 20) as f64 * 100.0;
                let _ = write!(out, " {:.0} KiB ({share:.2} %) |", bytes / 1024.0);
            } else {
                let _ = write!(out, " {:.2} / {:.2} |", Summary::of(values).median, percentile(values, 90.0));
            }
        }
        let _ = writeln!(out);
    }
    out
}
