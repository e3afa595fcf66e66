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
