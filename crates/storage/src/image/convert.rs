//! `convert`: copies an image into a new raw or qcow2 image (qcow2 optionally compressed).

use super::{
    create_file, open_disk, probe, refuse_overwriting, removed_on_error, Disk, Format, ImageError, Progress,
};
use crate::qcow2::writer::{self, WriterOptions};
use crate::DiskBackendExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// What `convert` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvertOptions {
    /// The source's format; probed when `None`.
    pub source_format: Option<Format>,
    pub target_format: Format,
    /// zlib-compressed clusters (qcow2 only).
    pub compress: bool,
    /// The qcow2 cluster size (64 KiB when `None`).
    pub cluster_size: Option<u64>,
    /// Read the source without taking its lock (qemu-img's -U).
    pub force_share: bool,
}

/// Converts `source` into a new image at `target` (0600, replacing what is there).
pub fn convert(
    source: &Path,
    target: &Path,
    options: &ConvertOptions,
    progress: &Progress,
) -> Result<(), ImageError> {
    if options.compress && options.target_format != Format::Qcow2 {
        return Err(ImageError::Usage("compression (-c) needs -O qcow2".into()));
    }
    if options.cluster_size.is_some() && options.target_format != Format::Qcow2 {
        return Err(ImageError::Usage("raw images have no cluster size".into()));
    }
    let format = match options.source_format {
        Some(format) => format,
        None => probe(source)?,
    };
    let opened = open_disk(source, format, false, options.force_share)?;
    refuse_overwriting(target, source, "source")?;
    if let Disk::Qcow2(qcow2) = &opened {
        for backing in qcow2.backing_chain() {
            refuse_overwriting(target, backing, "source's backing file")?;
        }
    }
    removed_on_error(target, || write_target(opened.backend(), source, target, options, progress))
}

/// Writes the new image at `target` from `disk` (the opened `source`).
fn write_target(
    disk: &dyn crate::DiskBackend,
    source: &Path,
    target: &Path,
    options: &ConvertOptions,
    progress: &Progress,
) -> Result<(), ImageError> {
    let file = create_file(target)?;
    let size = disk.size();
    progress.set_length(size);
    match options.target_format {
        Format::Qcow2 => {
            let cluster_bits = options.cluster_size.unwrap_or(65536).trailing_zeros();
            let writer_options = WriterOptions { cluster_bits, compress: options.compress };
            writer::write_image(disk, &file, writer_options, &mut |done| progress.set(done))
                .map_err(ImageError::io(target))?;
        }
        Format::Raw => {
            file.set_len(size).map_err(ImageError::io(target))?;
            // Zero pieces are left as holes.
            let mut buffer = vec![0u8; 1 << 20];
            let mut offset = 0;
            while offset < size {
                let len = (size - offset).min(buffer.len() as u64) as usize;
                disk.read_at(&mut buffer[..len], offset).map_err(ImageError::io(source))?;
                if buffer[..len].iter().any(|b| *b != 0) {
                    file.write_all_at(&buffer[..len], offset).map_err(ImageError::io(target))?;
                }
                offset += len as u64;
                progress.set(offset);
            }
            file.sync_all().map_err(ImageError::io(target))?;
        }
    }
    progress.finish();
    Ok(())
}
