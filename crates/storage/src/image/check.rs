//! `check`: the qcow2 consistency check and repair, reported as qemu-img reports them.

use super::{open_locked, ImageError, Progress};
use crate::qcow2::check::{self, CheckReport};
use crate::qcow2::{header, Qcow2Error};
use std::path::Path;

/// Checks (or with `repair`, repairs) the qcow2 image at `path`. A raw image has nothing to
/// check (an error, as qemu-img's).
pub fn check(
    path: &Path,
    repair: bool,
    force_share: bool,
    progress: &Progress,
) -> Result<CheckReport, ImageError> {
    let file = open_locked(path, repair, force_share && !repair)?;
    match header::read(&file) {
        Err(Qcow2Error::BadMagic) => {
            return Err(ImageError::Unsupported(format!(
                "{}: not a qcow2 image; raw images have nothing to check",
                path.display()
            )))
        }
        Err(e) => return Err(ImageError::Qcow2 { path: path.to_owned(), source: e }),
        Ok(_) => {}
    }
    let mut report = |done: u64, total: u64| {
        progress.set_length(total);
        progress.set(done);
    };
    let result = if repair {
        check::repair_with_progress(&file, &mut report)
    } else {
        check::check_with_progress(&file, &mut report)
    };
    progress.finish();
    result.map_err(|source| ImageError::Check { path: path.to_owned(), source })
}

/// qemu-img check's text report (the per-problem lines are in `report.messages`).
pub fn check_report_text(report: &CheckReport) -> String {
    let mut out = String::new();
    if let Some(repaired) = report.repaired {
        if repaired.corruptions > 0 || repaired.leaks > 0 {
            out += &format!(
                "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...\n",
                repaired.leaks, repaired.corruptions
            );
        }
    }
    if report.corruptions == 0 && report.leaks == 0 && report.check_errors == 0 {
        out += "No errors were found on the image.\n";
    }
    if report.corruptions > 0 {
        out += &format!(
            "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
            report.corruptions
        );
    }
    if report.leaks > 0 {
        out += &format!(
            "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
            report.leaks
        );
    }
    if report.check_errors > 0 {
        out += &format!("\n{} internal errors have occurred during the check.\n", report.check_errors);
    }
    if report.total_clusters > 0 {
        let percent = |n: u64| n as f64 * 100.0 / report.total_clusters as f64;
        let allocated = report.allocated_clusters.max(1) as f64;
        out += &format!(
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\n",
            report.allocated_clusters,
            report.total_clusters,
            percent(report.allocated_clusters),
            report.fragmented_clusters as f64 * 100.0 / allocated,
            report.compressed_clusters as f64 * 100.0 / allocated,
        );
    }
    out += &format!("Image end offset: {}\n", report.image_end_offset);
    out
}

/// qemu-img check's JSON report.
pub fn check_report_json(report: &CheckReport, filename: &str) -> serde_json::Value {
    let mut json = serde_json::json!({
        "image-end-offset": report.image_end_offset,
        "total-clusters": report.total_clusters,
        "check-errors": report.check_errors,
        "allocated-clusters": report.allocated_clusters,
        "filename": filename,
        "format": "qcow2",
    });
    let object = json.as_object_mut().expect("a JSON object");
    for (key, value) in [
        ("corruptions", report.corruptions),
        ("leaks", report.leaks),
        ("fragmented-clusters", report.fragmented_clusters),
        ("compressed-clusters", report.compressed_clusters),
    ] {
        if value > 0 {
            object.insert(key.into(), value.into());
        }
    }
    if let Some(repaired) = report.repaired {
        object.insert("corruptions-fixed".into(), repaired.corruptions.into());
        object.insert("leaks-fixed".into(), repaired.leaks.into());
    }
    json
}
