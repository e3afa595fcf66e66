//! `info`: what an image is (its format is probed here), as qemu-img shows it.

use super::{open_locked, probe, Format, ImageError};
use crate::qcow2::{self, header};
use serde::Serialize;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One image's description; serialised with qemu-img's JSON keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    pub filename: String,
    pub format: String,
    pub virtual_size: u64,
    /// Bytes the file occupies on its filesystem.
    pub actual_size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_filename: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_backing_filename: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing_filename_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty_flag: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format_specific: Option<FormatSpecific>,
}

/// qemu-img's "format-specific" object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FormatSpecific {
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Qcow2Specific,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Qcow2Specific {
    pub compat: String,
    pub compression_type: String,
    pub lazy_refcounts: bool,
    pub refcount_bits: u64,
    pub corrupt: bool,
    pub extended_l2: bool,
}

/// Describes the image at `path` (in `format`, probed when `None`) and, with `backing_chain`,
/// every image below it (their formats as their headers name them, probed otherwise).
pub fn info(
    path: &Path,
    format: Option<Format>,
    force_share: bool,
    backing_chain: bool,
) -> Result<Vec<ImageInfo>, ImageError> {
    let mut infos = Vec::new();
    let mut seen = HashSet::new();
    let mut next = Some((path.to_owned(), format));
    while let Some((path, format)) = next.take() {
        if infos.len() > qcow2::MAX_DEPTH {
            return Err(ImageError::Unsupported(format!(
                "the backing chain is deeper than {}",
                qcow2::MAX_DEPTH
            )));
        }
        let format = match format {
            Some(format) => format,
            None => probe(&path)?,
        };
        let file = open_locked(&path, false, force_share)?;
        let metadata = file.metadata().map_err(ImageError::io(&path))?;
        if !seen.insert((metadata.dev(), metadata.ino())) {
            return Err(ImageError::Unsupported(format!("{}: the backing chain is a cycle", path.display())));
        }
        let mut info = ImageInfo {
            filename: path.display().to_string(),
            format: format.name().into(),
            virtual_size: 0,
            actual_size: metadata.blocks() * 512,
            cluster_size: None,
            backing_filename: None,
            full_backing_filename: None,
            backing_filename_format: None,
            dirty_flag: None,
            format_specific: None,
        };
        match format {
            Format::Raw => {
                info.virtual_size = crate::qcow2::metaio::file_len(&file).map_err(ImageError::io(&path))?
            }
            Format::Qcow2 => {
                let h = header::read(&file).map_err(ImageError::qcow2(&path))?;
                info.virtual_size = h.size;
                info.cluster_size = Some(h.cluster_size());
                info.dirty_flag = Some(h.dirty());
                info.format_specific = Some(FormatSpecific {
                    kind: "qcow2".into(),
                    data: Qcow2Specific {
                        compat: if h.version == 2 { "0.10" } else { "1.1" }.into(),
                        compression_type: if h.compression_type == 0 { "zlib" } else { "zstd" }.into(),
                        lazy_refcounts: h.compatible_features & header::COMPAT_LAZY_REFCOUNTS != 0,
                        refcount_bits: 1 << h.refcount_order,
                        corrupt: h.corrupt(),
                        extended_l2: h.incompatible_features & header::INCOMPAT_EXTL2 != 0,
                    },
                });
                if let Some(name) = &h.backing_file {
                    let full = if Path::new(name).is_absolute() {
                        PathBuf::from(name)
                    } else {
                        path.parent().unwrap_or(Path::new("")).join(name)
                    };
                    info.backing_filename = Some(name.clone());
                    info.full_backing_filename = Some(full.display().to_string());
                    info.backing_filename_format = h.backing_format.clone();
                    let format = h.backing_format.as_deref().map(str::parse).transpose()?;
                    if backing_chain {
                        next = Some((full, format));
                    }
                }
            }
        }
        infos.push(info);
    }
    Ok(infos)
}

/// The files below the qcow2 image at `path`, top-most first, as the VMM resolves them (next to
/// the image that names each). For callers that must know every file a disk will open before it
/// is opened (the VMM's Landlock rules); reads headers only, takes no locks, and refuses cycles
/// and chains deeper than [`qcow2::MAX_DEPTH`] as [`info`] does.
pub fn backing_files(path: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let chain = info(path, Some(Format::Qcow2), true, true)?;
    Ok(chain.into_iter().skip(1).map(|image| PathBuf::from(image.filename)).collect())
}

impl ImageInfo {
    /// qemu-img's text form.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "image: {}\nfile format: {}\nvirtual size: {} ({} bytes)\ndisk size: {}\n",
            self.filename,
            self.format,
            human_size(self.virtual_size),
            self.virtual_size,
            human_size(self.actual_size)
        );
        if let Some(cluster_size) = self.cluster_size {
            out += &format!("cluster_size: {cluster_size}\n");
        }
        if let (Some(name), Some(full)) = (&self.backing_filename, &self.full_backing_filename) {
            if name == full {
                out += &format!("backing file: {name}\n");
            } else {
                out += &format!("backing file: {name} (actual path: {full})\n");
            }
        }
        if let Some(format) = &self.backing_filename_format {
            out += &format!("backing file format: {format}\n");
        }
        if let Some(specific) = &self.format_specific {
            let d = &specific.data;
            out += &format!(
                "Format specific information:\n    compat: {}\n    compression type: {}\n    lazy refcounts: {}\n    refcount bits: {}\n    corrupt: {}\n    extended l2: {}\n",
                d.compat, d.compression_type, d.lazy_refcounts, d.refcount_bits, d.corrupt, d.extended_l2
            );
        }
        if self.dirty_flag == Some(true) {
            out += "dirty flag: true (not closed cleanly; `kestrel image check --repair` fixes it)\n";
        }
        out
    }
}

/// A size as qemu-img prints it: "64 KiB", "1.5 GiB", "512 B" (also the manager's CLI's sizes).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    // Three significant digits, as qemu-img's "%0.3g".
    let decimals = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    let text = format!("{value:.decimals$}");
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
    format!("{text} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::super::{create, CreateOptions, Format, Preallocation};

    #[test]
    fn backing_files_lists_the_chain_below_an_image() {
        let dir = std::env::temp_dir().join(format!("kestrel-backing-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let options = |backing: Option<(&str, Format)>| CreateOptions {
            format: Format::Qcow2,
            size: Some(1 << 20),
            backing: backing.map(|(name, format)| (name.to_owned(), format)),
            cluster_size: None,
            preallocation: Preallocation::Off,
        };
        std::fs::write(dir.join("base.raw"), vec![0; 1 << 20]).unwrap();
        create(&dir.join("mid.qcow2"), &options(Some(("base.raw", Format::Raw)))).unwrap();
        create(&dir.join("top.qcow2"), &options(Some(("mid.qcow2", Format::Qcow2)))).unwrap();
        create(&dir.join("alone.qcow2"), &options(None)).unwrap();
        assert_eq!(
            super::backing_files(&dir.join("top.qcow2")).unwrap(),
            [dir.join("mid.qcow2"), dir.join("base.raw")]
        );
        assert!(super::backing_files(&dir.join("alone.qcow2")).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sizes_read_like_qemu_img() {
        assert_eq!(super::human_size(512), "512 B");
        assert_eq!(super::human_size(65536), "64 KiB");
        assert_eq!(super::human_size(3 << 29), "1.5 GiB");
        assert_eq!(super::human_size(1221), "1.19 KiB");
        assert_eq!(super::human_size(200_704), "196 KiB");
    }
}
