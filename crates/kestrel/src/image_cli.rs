//! `kestrel image …`: the command line of the image tool; the work is in `storage::image`.
//! Errors are one line, `kestrel image: <message>`, with exit status 1; `check` exits as
//! `qemu-img check` does (0 clean, 1 not checked, 2 corruptions, 3 leaks only).

use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use storage::image::{self, Format, ImageError, Progress};

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    kestrel image create -f qcow2 disk.qcow2 20G\n  \
    kestrel image create -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2\n  \
    kestrel image info --output json disk.qcow2\n  \
    kestrel image convert -O qcow2 -c disk.raw disk.qcow2\n  \
    kestrel image check --repair disk.qcow2")]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Create a raw or qcow2 image (0600), empty or over a backing file.
    #[command(after_help = "Examples:\n  \
        kestrel image create -f raw disk.img 4G\n  \
        kestrel image create -f qcow2 -o cluster_size=2M,preallocation=metadata disk.qcow2 100G\n  \
        kestrel image create -f qcow2 -b base.raw -F raw overlay.qcow2")]
    Create {
        /// The new image's format: raw or qcow2.
        #[arg(short = 'f', value_name = "FORMAT")]
        format: String,
        /// A backing file (qcow2 only), relative to the new image's directory.
        #[arg(short = 'b', value_name = "BACKING")]
        backing: Option<String>,
        /// The backing file's format: raw or qcow2 (needed with -b).
        #[arg(short = 'F', value_name = "FORMAT")]
        backing_format: Option<String>,
        /// Options: cluster_size=SIZE, preallocation=off|metadata|falloc|full.
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Option<String>,
        path: PathBuf,
        /// The virtual size (K/M/G/T suffixes); the backing file's when omitted.
        size: Option<String>,
    },
    /// Show an image's format (probed), sizes, cluster size, backing file and state.
    Info {
        /// The image's format, instead of probing it.
        #[arg(short = 'f', value_name = "FORMAT")]
        format: Option<String>,
        /// human or json.
        #[arg(long, value_name = "FORMAT", default_value = "human")]
        output: String,
        /// Read the image even if a VM has it open (no lock).
        #[arg(short = 'U', long)]
        force_share: bool,
        /// Show every image of the backing chain.
        #[arg(long)]
        backing_chain: bool,
        path: PathBuf,
    },
    /// Copy an image into a new raw or qcow2 image (qcow2 optionally zlib-compressed).
    Convert {
        /// The source's format (probed when omitted).
        #[arg(short = 'f', value_name = "FORMAT")]
        format: Option<String>,
        /// The new image's format: raw or qcow2.
        #[arg(short = 'O', value_name = "FORMAT")]
        output_format: String,
        /// Compress the new qcow2 image's clusters.
        #[arg(short = 'c')]
        compress: bool,
        /// Options for the new image: cluster_size=SIZE.
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Option<String>,
        /// Read the source even if a VM has it open (no lock).
        #[arg(short = 'U', long)]
        force_share: bool,
        /// Show progress even when stderr is not a terminal.
        #[arg(short = 'p')]
        progress: bool,
        source: PathBuf,
        target: PathBuf,
    },
    /// Change an image's virtual size: SIZE, +SIZE or -SIZE.
    Resize {
        /// The image's format: raw or qcow2.
        #[arg(short = 'f', value_name = "FORMAT")]
        format: String,
        /// Allow making the image smaller (the data past the new end is lost).
        #[arg(long)]
        shrink: bool,
        path: PathBuf,
        #[arg(allow_hyphen_values = true)]
        size: String,
    },
    /// Check a qcow2 image's metadata (and with --repair, fix it).
    Check {
        /// Rebuild the refcounts, dropping leaks and fixing corruptions where possible.
        #[arg(short = 'r', long)]
        repair: bool,
        /// human or json.
        #[arg(long, value_name = "FORMAT", default_value = "human")]
        output: String,
        /// Check the image even if a VM has it open (no lock; the result may be stale).
        #[arg(short = 'U', long)]
        force_share: bool,
        /// Show progress even when stderr is not a terminal.
        #[arg(short = 'p')]
        progress: bool,
        path: PathBuf,
    },
    /// Write a qcow2 overlay's data into its backing file and empty the overlay.
    Commit {
        /// Show progress even when stderr is not a terminal.
        #[arg(short = 'p')]
        progress: bool,
        path: PathBuf,
    },
    /// Change a qcow2 image's backing file, keeping its content (or with -u, the header only).
    Rebase {
        /// The new backing file ("" for none), relative to the image's directory.
        #[arg(short = 'b', value_name = "BACKING")]
        backing: String,
        /// The new backing file's format (probed when omitted).
        #[arg(short = 'F', value_name = "FORMAT")]
        backing_format: Option<String>,
        /// Only rewrite the header: the old and new backing files must read the same.
        #[arg(short = 'u')]
        unsafe_header_only: bool,
        /// Show progress even when stderr is not a terminal.
        #[arg(short = 'p')]
        progress: bool,
        path: PathBuf,
    },
}

/// Runs one `kestrel image` command.
pub fn run(args: ImageArgs) -> ExitCode {
    match execute(args.command) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("kestrel image: {error}");
            ExitCode::from(1)
        }
    }
}

fn format(text: &str) -> Result<Format, ImageError> {
    text.parse()
}

fn optional_format(text: Option<&str>) -> Result<Option<Format>, ImageError> {
    text.map(format).transpose()
}

fn json_output(output: &str) -> Result<bool, ImageError> {
    match output {
        "human" => Ok(false),
        "json" => Ok(true),
        other => Err(ImageError::Usage(format!("--output {other}: use human or json"))),
    }
}

/// Runs `command`; the exit status on success (check's findings are not errors).
fn execute(command: ImageCommand) -> Result<u8, ImageError> {
    match command {
        ImageCommand::Create { format: f, backing, backing_format, options, path, size } => {
            let (cluster_size, preallocation) =
                image::parse_create_options(options.as_deref().unwrap_or(""))?;
            let backing = match (backing, backing_format) {
                (Some(name), Some(f)) => Some((name, format(&f)?)),
                (Some(_), None) => {
                    return Err(ImageError::Usage("give the backing file's format with -F raw|qcow2".into()))
                }
                (None, Some(_)) => return Err(ImageError::Usage("-F needs a backing file (-b)".into())),
                (None, None) => None,
            };
            let size = size.as_deref().map(image::parse_size).transpose()?;
            let options =
                image::CreateOptions { format: format(&f)?, size, backing, cluster_size, preallocation };
            image::create(&path, &options)?;
            Ok(0)
        }
        ImageCommand::Info { format: f, output, force_share, backing_chain, path } => {
            let json = json_output(&output)?;
            let infos = image::info(&path, optional_format(f.as_deref())?, force_share, backing_chain)?;
            if json {
                let value = if backing_chain {
                    serde_json::to_value(&infos)
                } else {
                    serde_json::to_value(&infos[0])
                };
                let text = value
                    .and_then(|v| serde_json::to_string_pretty(&v))
                    .map_err(|e| ImageError::Unsupported(format!("cannot write the JSON: {e}")))?;
                println!("{text}");
            } else {
                let texts: Vec<String> = infos.iter().map(|i| i.to_text()).collect();
                print!("{}", texts.join("\n"));
            }
            Ok(0)
        }
        ImageCommand::Convert {
            format: f,
            output_format,
            compress,
            options,
            force_share,
            progress,
            source,
            target,
        } => {
            let (cluster_size, preallocation) =
                image::parse_create_options(options.as_deref().unwrap_or(""))?;
            if preallocation != image::Preallocation::Off {
                return Err(ImageError::Unsupported("preallocation in convert".into()));
            }
            let options = image::ConvertOptions {
                source_format: optional_format(f.as_deref())?,
                target_format: format(&output_format)?,
                compress,
                cluster_size,
                force_share,
            };
            let bar = Progress::new(0, progress);
            image::convert(&source, &target, &options, &bar)?;
            Ok(0)
        }
        ImageCommand::Resize { format: f, shrink, path, size } => {
            image::resize(&path, format(&f)?, &size, shrink)?;
            println!("Image resized.");
            Ok(0)
        }
        ImageCommand::Check { repair, output, force_share, progress, path } => {
            let json = json_output(&output)?;
            let bar = Progress::new(0, progress);
            let report = match image::check(&path, repair, force_share, &bar) {
                Ok(report) => report,
                Err(error) => {
                    eprintln!("kestrel image: {error}");
                    return Ok(1);
                }
            };
            for message in &report.messages {
                eprintln!("{message}");
            }
            if json {
                let value = image::check_report_json(&report, &path.display().to_string());
                println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
            } else {
                print!("{}", image::check_report_text(&report));
            }
            Ok(report.exit_code() as u8)
        }
        ImageCommand::Commit { progress, path } => {
            let bar = Progress::new(100, progress);
            image::commit(&path, &bar)?;
            println!("Image committed.");
            Ok(0)
        }
        ImageCommand::Rebase { backing, backing_format, unsafe_header_only, progress, path } => {
            let options = image::RebaseOptions {
                backing: Some(backing),
                backing_format: optional_format(backing_format.as_deref())?,
                unsafe_header_only,
            };
            let bar = Progress::new(100, progress);
            image::rebase(&path, &options, &bar)?;
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use std::os::unix::fs::FileExt;

    fn command(args: &[&str]) -> ImageCommand {
        let mut argv = vec!["kestrel", "image"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Image(image) => image.command,
            other => panic!("parsed as {other:?}"),
        }
    }

    fn path(dir: &tempfile::TempDir, name: &str) -> String {
        dir.path().join(name).to_str().unwrap().to_owned()
    }

    #[test]
    fn create_check_resize_and_their_exit_statuses() {
        let dir = tempfile::tempdir().unwrap();
        let image = path(&dir, "disk.qcow2");
        assert_eq!(
            execute(command(&["create", "-f", "qcow2", "-o", "cluster_size=4K", &image, "1M"])).unwrap(),
            0
        );
        assert_eq!(execute(command(&["check", &image])).unwrap(), 0);
        assert_eq!(execute(command(&["resize", "-f", "qcow2", &image, "+1M"])).unwrap(), 0);
        assert_eq!(
            image::info(std::path::Path::new(&image), None, false, false).unwrap()[0].virtual_size,
            2 << 20
        );
        // A leaked cluster: its refcount set past the end of the file → status 3, as qemu-img.
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&image).unwrap();
        let mut header = [0u8; 64];
        file.read_exact_at(&mut header, 0).unwrap();
        let reftable = u64::from_be_bytes(header[48..56].try_into().unwrap());
        let mut entry = [0u8; 8];
        file.read_exact_at(&mut entry, reftable).unwrap();
        let refblock = u64::from_be_bytes(entry);
        let len = file.metadata().unwrap().len();
        file.write_all_at(&[0, 1], refblock + (len / 4096 + 2) * 2).unwrap();
        drop(file);
        assert_eq!(execute(command(&["check", "--output", "json", &image])).unwrap(), 3);
        assert_eq!(execute(command(&["check", "-r", &image])).unwrap(), 0);
        assert_eq!(execute(command(&["check", &image])).unwrap(), 0);
    }

    #[test]
    fn errors_are_errors_not_statuses() {
        let dir = tempfile::tempdir().unwrap();
        let missing = path(&dir, "missing.qcow2");
        assert!(execute(command(&["info", &missing])).is_err());
        let raw = path(&dir, "disk.raw");
        assert_eq!(execute(command(&["create", "-f", "raw", &raw, "64K"])).unwrap(), 0);
        // A raw image cannot be checked: status 1, as qemu-img's "not completed".
        assert_eq!(execute(command(&["check", &raw])).unwrap(), 1);
        let error = execute(command(&["create", "-f", "qcow2", "-b", "disk.raw", &path(&dir, "o.qcow2")]))
            .unwrap_err();
        assert!(error.to_string().contains("-F"), "{error}");
        let error = execute(command(&["create", "-f", "vmdk", &raw, "1M"])).unwrap_err();
        assert!(error.to_string().contains("unknown image format"), "{error}");
        let error = execute(command(&["resize", "-f", "raw", &raw, "-1K"])).unwrap_err();
        assert!(error.to_string().contains("--shrink"), "{error}");
        let error = execute(command(&["convert", "-O", "raw", "-c", &raw, &path(&dir, "x")])).unwrap_err();
        assert!(error.to_string().contains("-O qcow2"), "{error}");
    }
}
