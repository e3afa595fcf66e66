//! `create`: a new raw or qcow2 image, empty or over a backing file.

use super::{create_file, open_disk, parse_size, refuse_overwriting, removed_on_error, Format, ImageError};
use imago::file::File as ImagoFile;
use imago::format::PreallocateMode;
use imago::qcow2::Qcow2;
use imago::{FormatCreateBuilder, StorageOpenOptions};
use std::path::Path;

/// How much of a new image is allocated up front (qemu-img's `preallocation=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Preallocation {
    #[default]
    Off,
    /// qcow2: every cluster mapped (raw: as off).
    Metadata,
    /// The file's blocks reserved with fallocate.
    Falloc,
    /// Every byte written.
    Full,
}

/// What `create` makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateOptions {
    pub format: Format,
    /// The virtual size; taken from the backing file when `None`.
    pub size: Option<u64>,
    /// The backing file's name as written into the header (relative to the new image's
    /// directory) and its format (qcow2 only).
    pub backing: Option<(String, Format)>,
    /// qcow2's cluster size in bytes (64 KiB when `None`).
    pub cluster_size: Option<u64>,
    pub preallocation: Preallocation,
}

/// Parses `-o key=value,...`: `cluster_size`, `preallocation`, `compat` (1.1 only).
pub fn parse_create_options(text: &str) -> Result<(Option<u64>, Preallocation), ImageError> {
    let mut cluster_size = None;
    let mut preallocation = Preallocation::Off;
    for item in text.split(',').filter(|i| !i.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| ImageError::Usage(format!("option '{item}' is not key=value")))?;
        match key {
            "cluster_size" => {
                let size = parse_size(value)?;
                if !size.is_power_of_two() || !(512..=2 << 20).contains(&size) {
                    return Err(ImageError::Usage(format!(
                        "cluster_size {value} must be a power of two from 512 to 2M"
                    )));
                }
                cluster_size = Some(size);
            }
            "preallocation" => {
                preallocation = match value {
                    "off" => Preallocation::Off,
                    "metadata" => Preallocation::Metadata,
                    "falloc" => Preallocation::Falloc,
                    "full" => Preallocation::Full,
                    _ => {
                        return Err(ImageError::Usage(format!(
                            "preallocation '{value}': use off, metadata, falloc or full"
                        )))
                    }
                }
            }
            "compat" if value == "1.1" || value == "v3" => {}
            "compat" => {
                return Err(ImageError::Unsupported(format!("creating compat={value} images (only 1.1)")))
            }
            _ => return Err(ImageError::Usage(format!("unknown option '{key}'"))),
        }
    }
    Ok((cluster_size, preallocation))
}

/// Creates the image at `path` (0600; an existing file is replaced, a new one removed again if
/// the image cannot be made).
pub fn create(path: &Path, options: &CreateOptions) -> Result<(), ImageError> {
    if let Some((name, _)) = &options.backing {
        refuse_overwriting(path, &backing_path(path, name), "backing file")?;
    }
    removed_on_error(path, || create_image(path, options))
}

fn create_image(path: &Path, options: &CreateOptions) -> Result<(), ImageError> {
    let size = match (options.size, &options.backing) {
        (Some(size), _) => size,
        (None, Some((name, format))) => backing_size(path, name, *format)?,
        (None, None) => {
            return Err(ImageError::Usage("give a size, or a backing file to take it from".into()))
        }
    };
    match options.format {
        Format::Raw => {
            if options.backing.is_some() {
                return Err(ImageError::Usage("raw images have no backing file".into()));
            }
            if options.cluster_size.is_some() {
                return Err(ImageError::Usage("raw images have no cluster size".into()));
            }
            let file = create_file(path)?;
            file.set_len(size).map_err(ImageError::io(path))?;
            match options.preallocation {
                Preallocation::Off | Preallocation::Metadata => {}
                Preallocation::Falloc => fallocate(&file, size).map_err(ImageError::io(path))?,
                Preallocation::Full => write_zeroes(&file, size).map_err(ImageError::io(path))?,
            }
            file.sync_all().map_err(ImageError::io(path))
        }
        Format::Qcow2 => {
            if options.backing.is_some() && options.preallocation != Preallocation::Off {
                return Err(ImageError::Unsupported("preallocation of an image with a backing file".into()));
            }
            let file = create_file(path)?;
            let storage =
                ImagoFile::from_open_file(file, StorageOpenOptions::new().filename(path).write(true))
                    .map_err(ImageError::io(path))?;
            let mut builder = Qcow2::<ImagoFile>::create_builder(storage)
                .size(size)
                .cluster_size(options.cluster_size.unwrap_or(65536) as usize)
                .preallocate(match options.preallocation {
                    Preallocation::Off => PreallocateMode::None,
                    Preallocation::Metadata => PreallocateMode::FormatAllocate,
                    Preallocation::Falloc => PreallocateMode::FullAllocate,
                    Preallocation::Full => PreallocateMode::WriteData,
                });
            if let Some((name, format)) = &options.backing {
                builder = builder.backing(name.clone(), format.name().to_owned());
            }
            builder.create().map_err(ImageError::io(path))
        }
    }
}

/// The virtual size of the backing file `name` (relative to `path`'s directory), which must
/// exist and open in `format`.
fn backing_size(path: &Path, name: &str, format: Format) -> Result<u64, ImageError> {
    Ok(open_disk(&backing_path(path, name), format, false, true)?.backend().size())
}

/// Where the backing file `name` of an image at `path` is: relative names are relative to the
/// image's directory.
fn backing_path(path: &Path, name: &str) -> std::path::PathBuf {
    path.parent().unwrap_or(Path::new("")).join(name)
}

fn fallocate(file: &std::fs::File, size: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if size == 0 {
        return Ok(());
    }
    // SAFETY: fallocate on an open descriptor reserves blocks; it touches no memory of ours.
    let result = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(result))
    }
}

fn write_zeroes(file: &std::fs::File, size: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let zeroes = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < size {
        let n = (size - done).min(zeroes.len() as u64) as usize;
        file.write_all_at(&zeroes[..n], done)?;
        done += n as u64;
    }
    Ok(())
}
