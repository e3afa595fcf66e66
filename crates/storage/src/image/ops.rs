//! `resize`, `commit` and `rebase`.

use super::{open_disk, open_locked, parse_size, probe, Format, ImageError, Progress};
use crate::qcow2::{self, header, metaio, Qcow2Disk};
use crate::{DiskBackend, DiskBackendExt};
use std::path::{Path, PathBuf};

/// Copies go in pieces of this many bytes.
const CHUNK: u64 = 1 << 20;

/// Resizes the image at `path` (of `format`) to `spec`: a size, or `+SIZE`/`-SIZE` relative to
/// the current one. Shrinking (which drops data) needs `shrink`.
pub fn resize(path: &Path, format: Format, spec: &str, shrink: bool) -> Result<u64, ImageError> {
    let disk = open_disk(path, format, true, false)?;
    let current = disk.backend().size();
    let new_size = if let Some(delta) = spec.strip_prefix('+') {
        current
            .checked_add(parse_size(delta)?)
            .ok_or_else(|| ImageError::Usage(format!("{spec}: the new size is too large")))?
    } else if let Some(delta) = spec.strip_prefix('-') {
        current
            .checked_sub(parse_size(delta)?)
            .ok_or_else(|| ImageError::Usage(format!("{spec}: the image is only {current} bytes")))?
    } else {
        parse_size(spec)?
    };
    if new_size < current && !shrink {
        return Err(ImageError::Usage(format!(
            "shrinking from {current} to {new_size} bytes drops data: use --shrink if you mean it"
        )));
    }
    disk.resize(new_size).map_err(ImageError::io(path))?;
    disk.backend().flush().map_err(ImageError::io(path))?;
    Ok(new_size)
}

/// The backing file a qcow2 header names, resolved against the image's directory, and its
/// format (named, or probed as QEMU probes backing files).
fn backing_of(path: &Path, h: &header::Header) -> Result<Option<(PathBuf, Format)>, ImageError> {
    let Some(name) = &h.backing_file else { return Ok(None) };
    let full = path.parent().unwrap_or(Path::new("")).join(name);
    let format = match &h.backing_format {
        Some(format) => format.parse()?,
        None => probe(&full)?,
    };
    Ok(Some((full, format)))
}

fn read_header(path: &Path, file: &std::fs::File) -> Result<header::Header, ImageError> {
    header::read(file).map_err(ImageError::qcow2(path))
}

fn open_layer(path: &Path, file: std::fs::File) -> Result<Qcow2Disk, ImageError> {
    qcow2::open_layer(file, path, true).map_err(ImageError::qcow2(path))
}

/// The ranges of `layer` it holds data of its own for, in order.
fn own_ranges(layer: &Qcow2Disk) -> Result<Vec<(u64, u64)>, std::io::Error> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let size = layer.size();
    let mut offset = 0;
    while offset < size {
        let (own, len) = layer.allocated(offset, size - offset)?;
        if own {
            match ranges.last_mut() {
                Some((start, length)) if *start + *length == offset => *length += len,
                _ => ranges.push((offset, len)),
            }
        }
        offset += len;
    }
    Ok(ranges)
}

/// Writes the data of the qcow2 overlay at `path` into its backing file (growing it if it is
/// smaller), then empties the overlay, so that it reads the same through its backing file.
pub fn commit(path: &Path, progress: &Progress) -> Result<(), ImageError> {
    let file = open_locked(path, true, false)?;
    let h = read_header(path, &file)?;
    let Some((backing_path, backing_format)) = backing_of(path, &h)? else {
        return Err(ImageError::Usage(format!("{}: the image has no backing file", path.display())));
    };
    let layer = open_layer(path, file)?;
    let backing = open_disk(&backing_path, backing_format, true, false)?;
    if backing.backend().size() < layer.size() {
        backing.resize(layer.size()).map_err(ImageError::io(&backing_path))?;
    }
    let ranges = own_ranges(&layer).map_err(ImageError::io(path))?;
    let total: u64 = ranges.iter().map(|(_, len)| len).sum();
    let mut done = 0;
    let mut buffer = vec![0u8; CHUNK as usize];
    for (start, length) in &ranges {
        let mut offset = *start;
        while offset < start + length {
            let len = (start + length - offset).min(CHUNK) as usize;
            layer.read_at(&mut buffer[..len], offset).map_err(ImageError::io(path))?;
            backing.backend().write_at(&buffer[..len], offset).map_err(ImageError::io(&backing_path))?;
            offset += len as u64;
            done += len as u64;
            progress.set(done * 100 / total.max(1));
        }
    }
    backing.backend().flush().map_err(ImageError::io(&backing_path))?;
    // Only once the data is durable in the backing file does the overlay let go of it.
    for (start, length) in &ranges {
        layer.discard_to_backing(*start, *length).map_err(ImageError::io(path))?;
    }
    layer.flush().map_err(ImageError::io(path))?;
    progress.finish();
    Ok(())
}

/// What `rebase` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebaseOptions {
    /// The new backing file, as written into the header (relative to the image's directory);
    /// `None` or empty: no backing file.
    pub backing: Option<String>,
    /// Its format; probed when `None`.
    pub backing_format: Option<Format>,
    /// Only rewrite the header (qemu-img's -u), for when the data is already the same.
    pub unsafe_header_only: bool,
}

/// Changes the backing file of the qcow2 image at `path`. In safe mode, every cluster the image
/// does not hold itself and that reads differently through the old and the new backing file is
/// first copied into the image, so that its content does not change.
pub fn rebase(path: &Path, options: &RebaseOptions, progress: &Progress) -> Result<(), ImageError> {
    let file = open_locked(path, true, false)?;
    let h = read_header(path, &file)?;
    let new_name = options.backing.as_deref().filter(|n| !n.is_empty());
    let new_backing = match new_name {
        Some(name) => {
            let full = path.parent().unwrap_or(Path::new("")).join(name);
            let format = match options.backing_format {
                Some(format) => format,
                None => probe(&full)?,
            };
            Some((full, format))
        }
        None => None,
    };
    let first = metaio::read_at(&file, 0, h.header_length as usize).map_err(ImageError::io(path))?;
    let new_header = h
        .with_backing(&first, new_name, new_backing.as_ref().map(|(_, f)| f.name()))
        .map_err(ImageError::qcow2(path))?;
    if !options.unsafe_header_only {
        let old = match backing_of(path, &h)? {
            Some((p, f)) => Some(open_disk(&p, f, false, false)?),
            None => None,
        };
        let new = match &new_backing {
            Some((p, f)) => Some(open_disk(p, *f, false, false)?),
            None => None,
        };
        let layer = open_layer(path, file.try_clone().map_err(ImageError::io(path))?)?;
        let size = layer.size();
        let mut old_data = vec![0u8; CHUNK as usize];
        let mut new_data = vec![0u8; CHUNK as usize];
        let mut offset = 0;
        while offset < size {
            let (own, len) =
                layer.allocated(offset, (size - offset).min(CHUNK)).map_err(ImageError::io(path))?;
            if !own {
                let len = len as usize;
                read_or_zero(old.as_ref().map(|d| d.backend()), &mut old_data[..len], offset)
                    .map_err(ImageError::io(path))?;
                read_or_zero(new.as_ref().map(|d| d.backend()), &mut new_data[..len], offset)
                    .map_err(ImageError::io(path))?;
                if old_data[..len] != new_data[..len] {
                    layer.write_at(&old_data[..len], offset).map_err(ImageError::io(path))?;
                }
            }
            offset += len;
            progress.set(offset * 100 / size.max(1));
        }
        layer.flush().map_err(ImageError::io(path))?;
    }
    metaio::write_at(&file, 0, &new_header).map_err(ImageError::io(path))?;
    file.sync_all().map_err(ImageError::io(path))?;
    progress.finish();
    Ok(())
}

/// Reads `buffer` at `offset` from `disk`; what is past its end (or with no disk) is zeroes.
fn read_or_zero(disk: Option<&dyn DiskBackend>, buffer: &mut [u8], offset: u64) -> std::io::Result<()> {
    buffer.fill(0);
    let Some(disk) = disk else { return Ok(()) };
    let size = disk.size();
    if offset >= size {
        return Ok(());
    }
    let len = (size - offset).min(buffer.len() as u64) as usize;
    disk.read_at(&mut buffer[..len], offset)
}
