//! `kestrel pool …` and `kestrel vol …`: the daemon's storage pools from the command line.
//! Every command talks to the daemon (`KESTREL_SOCKET` or `--socket`); errors are one line,
//! `kestrel pool: error: <message>`, with exit status 1. `--json` prints the daemon's answer.
//!
//! `vol import` and `vol download` read and write the user's file with the user's own rights
//! (the daemon, running as root, never opens a path a client names): the bytes go through the
//! socket, streamed, with a progress bar on a terminal.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};
use hyper::Method;
use model::disk::ImageFormat;
use model::manager::name::check_name;
use model::manager::pool::{PoolDefinition, PoolInfo, PoolRefresh, VolumeCreate, VolumeInfo, VolumeResize};
use model::manager::ErrorBody;
use serde::Serialize;
use storage::image::Progress;

use crate::manager_client::{Client, ClientError};
use crate::table::{self, Table};
use crate::{exit_status, report};

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    kestrel pool define images --path /var/lib/kestrel/pools/images\n  \
    kestrel pool list\n  \
    kestrel pool refresh images\n  \
    kestrel pool undefine images")]
pub struct PoolArgs {
    #[command(subcommand)]
    command: PoolCommand,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct Common {
    /// Print the daemon's answer as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// The daemon's socket (default: KESTREL_SOCKET, else /run/kestrel/kestrel.sock).
    /// Example: --socket /tmp/kestrel.sock
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum PoolCommand {
    /// Define a pool: a directory of volumes (created 0700 if missing; images already there
    /// become volumes).
    #[command(after_help = "Example:\n  kestrel pool define images --path /var/lib/kestrel/pools/images")]
    Define {
        name: String,
        /// The pool's directory (an absolute path, or relative to the current directory).
        #[arg(long, value_name = "DIR")]
        path: PathBuf,
    },
    /// List the pools, with their space.
    #[command(after_help = "Example:\n  kestrel pool list --json")]
    List,
    /// Show one pool.
    #[command(after_help = "Example:\n  kestrel pool info images")]
    Info { name: String },
    /// Forget a pool (its directory and files stay; define it again to get them back).
    /// Refused while a defined VM uses one of its volumes.
    #[command(after_help = "Example:\n  kestrel pool undefine images")]
    Undefine { name: String },
    /// Take in the images copied into the pool's directory by hand, and forget those removed.
    #[command(
        after_help = "Example:\n  cp debian.qcow2 /var/lib/kestrel/pools/images/ && kestrel pool refresh images"
    )]
    Refresh { name: String },
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    kestrel vol create images data --size 10G --format qcow2\n  \
    kestrel vol import images ./debian-12.qcow2 --name debian\n  \
    kestrel vol clone images debian web1\n  \
    kestrel vol resize images web1 20G\n  \
    kestrel vol download images web1 ./web1.qcow2\n  \
    kestrel vol delete images web1")]
pub struct VolArgs {
    #[command(subcommand)]
    command: VolCommand,
    #[command(flatten)]
    common: Common,
}

/// A volume's format on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum FormatArg {
    Raw,
    Qcow2,
}

impl From<FormatArg> for ImageFormat {
    fn from(format: FormatArg) -> ImageFormat {
        match format {
            FormatArg::Raw => ImageFormat::Raw,
            FormatArg::Qcow2 => ImageFormat::Qcow2,
        }
    }
}

fn size(text: &str) -> Result<u64, String> {
    storage::image::parse_size(text).map_err(|e| e.to_string())
}

#[derive(Subcommand, Debug)]
enum VolCommand {
    /// Create an empty volume (raw volumes are sparse).
    #[command(after_help = "Examples:\n  \
        kestrel vol create images data --size 10G\n  \
        kestrel vol create images root --size 20G --format qcow2")]
    Create {
        pool: String,
        name: String,
        /// The size the guest sees (K/M/G/T suffixes).
        #[arg(long, value_name = "SIZE", value_parser = size)]
        size: u64,
        #[arg(long, value_enum, default_value = "raw")]
        format: FormatArg,
    },
    /// Make a thin clone of a volume: a qcow2 overlay over it (the base cannot be deleted while
    /// it has clones).
    #[command(after_help = "Example:\n  kestrel vol clone images debian web1 --size 40G")]
    Clone {
        pool: String,
        base: String,
        name: String,
        /// A larger size than the base's.
        #[arg(long, value_name = "SIZE", value_parser = size)]
        size: Option<u64>,
    },
    /// Grow a volume (or shrink it, with --shrink); refused while a VM runs on it.
    #[command(after_help = "Example:\n  kestrel vol resize images web1 40G")]
    Resize {
        pool: String,
        name: String,
        #[arg(value_parser = size)]
        size: u64,
        /// Allow a smaller size (the data past it is lost).
        #[arg(long)]
        shrink: bool,
    },
    /// Delete a volume; refused while a defined VM uses it or a clone is based on it.
    #[command(after_help = "Example:\n  kestrel vol delete images web1")]
    Delete { pool: String, name: String },
    /// List a pool's volumes.
    #[command(after_help = "Example:\n  kestrel vol list images --json")]
    List { pool: String },
    /// Show one volume.
    #[command(after_help = "Example:\n  kestrel vol info images web1")]
    Info { pool: String, name: String },
    /// Upload an image file as a new volume (qcow2 images are checked by the daemon, and may
    /// only have another volume of the pool as their backing file).
    #[command(after_help = "Examples:\n  \
        kestrel vol import images ./debian-12.qcow2\n  \
        kestrel vol import images ./disk.img --name data --format raw")]
    #[command(visible_alias = "upload")]
    Import {
        /// The pool that gets the new volume.
        pool: String,
        /// The image file to upload (read with your own rights).
        file: PathBuf,
        /// The volume's name (default: the file's name).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// The file's format (default: qcow2 if it starts like one, else raw).
        #[arg(long, value_enum)]
        format: Option<FormatArg>,
    },
    /// Download a volume's image file (an existing FILE is not replaced).
    #[command(after_help = "Example:\n  kestrel vol download images web1 ./web1.qcow2")]
    Download {
        pool: String,
        /// The volume.
        name: String,
        /// Where to write it (created 0600).
        file: PathBuf,
    },
}

/// A command's failure, as one line.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    File { path: String, source: std::io::Error },
}

pub fn run_pool(args: PoolArgs) -> ExitCode {
    finish("kestrel pool", pool(args))
}

pub fn run_vol(args: VolArgs) -> ExitCode {
    finish("kestrel vol", vol(args))
}

fn finish(command: &str, result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(format_args!("{command}: error: {e}"));
            ExitCode::from(exit_status::ERROR)
        }
    }
}

fn name(text: &str) -> Result<&str, CliError> {
    check_name(text).map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(text)
}

const NO_BODY: Option<&()> = None;

fn pool(args: PoolArgs) -> Result<(), CliError> {
    let client = Client::new(args.common.socket)?;
    let json = args.common.json;
    match args.command {
        PoolCommand::Define { name: pool, path } => {
            let path = std::path::absolute(&path)
                .map_err(|source| CliError::File { path: path.display().to_string(), source })?;
            let definition = PoolDefinition { name: name(&pool)?.to_owned(), path };
            let info: PoolInfo = client.request(Method::POST, "/v1/pools", Some(&definition))?;
            print(json, &info, || {
                format!(
                    "pool '{}' defined at {} ({} volumes)",
                    pool,
                    info.definition.path.display(),
                    info.volumes
                )
            })
        }
        PoolCommand::List => {
            let pools: Vec<PoolInfo> = client.request(Method::GET, "/v1/pools", NO_BODY)?;
            print(json, &pools, || pool_table(&pools))
        }
        PoolCommand::Info { name: pool } => {
            let info: PoolInfo =
                client.request(Method::GET, &format!("/v1/pools/{}", name(&pool)?), NO_BODY)?;
            print(json, &info, || pool_table(std::slice::from_ref(&info)))
        }
        PoolCommand::Undefine { name: pool } => {
            let () = client.request(Method::DELETE, &format!("/v1/pools/{}", name(&pool)?), NO_BODY)?;
            print(json, &serde_json::json!({}), || format!("pool '{pool}' undefined (its files stay)"))
        }
        PoolCommand::Refresh { name: pool } => {
            let uri = format!("/v1/pools/{}/refresh", name(&pool)?);
            let report: PoolRefresh = client.request(Method::POST, &uri, NO_BODY)?;
            print(json, &report, || refresh_text(&pool, &report))
        }
    }
}

fn vol(args: VolArgs) -> Result<(), CliError> {
    let client = Client::new(args.common.socket)?;
    let json = args.common.json;
    let one = |info: &VolumeInfo| print(json, info, || volume_table(std::slice::from_ref(info)));
    match args.command {
        VolCommand::Create { pool, name: volume, size, format } => {
            let request = VolumeCreate {
                name: name(&volume)?.to_owned(),
                format: format.into(),
                size_bytes: Some(size),
                clone_of: None,
            };
            let uri = format!("/v1/pools/{}/volumes", name(&pool)?);
            one(&client.request(Method::POST, &uri, Some(&request))?)
        }
        VolCommand::Clone { pool, base, name: volume, size } => {
            let request = VolumeCreate {
                name: name(&volume)?.to_owned(),
                format: ImageFormat::Qcow2,
                size_bytes: size,
                clone_of: Some(name(&base)?.to_owned()),
            };
            let uri = format!("/v1/pools/{}/volumes", name(&pool)?);
            one(&client.request(Method::POST, &uri, Some(&request))?)
        }
        VolCommand::Resize { pool, name: volume, size, shrink } => {
            let uri = format!("/v1/pools/{}/volumes/{}/resize", name(&pool)?, name(&volume)?);
            one(&client.request(Method::POST, &uri, Some(&VolumeResize { size_bytes: size, shrink }))?)
        }
        VolCommand::Delete { pool, name: volume } => {
            let uri = format!("/v1/pools/{}/volumes/{}", name(&pool)?, name(&volume)?);
            let () = client.request(Method::DELETE, &uri, NO_BODY)?;
            print(json, &serde_json::json!({}), || format!("volume {pool}/{volume} deleted"))
        }
        VolCommand::List { pool } => {
            let uri = format!("/v1/pools/{}/volumes", name(&pool)?);
            let volumes: Vec<VolumeInfo> = client.request(Method::GET, &uri, NO_BODY)?;
            print(json, &volumes, || volume_table(&volumes))
        }
        VolCommand::Info { pool, name: volume } => {
            let uri = format!("/v1/pools/{}/volumes/{}", name(&pool)?, name(&volume)?);
            one(&client.request(Method::GET, &uri, NO_BODY)?)
        }
        VolCommand::Import { pool, file, name: volume, format } => {
            let info = import(&client, &pool, &file, volume, format)?;
            one(&info)
        }
        VolCommand::Download { pool, name: volume, file } => {
            let bytes = download(&client, &pool, &volume, &file)?;
            let answer = serde_json::json!({ "file": file, "bytes": bytes });
            print(json, &answer, || {
                format!("volume {pool}/{volume}: {bytes} bytes written to {}", file.display())
            })
        }
    }
}

/// Prints the answer through the CLI's common output (`crate::table`): JSON with `--json`,
/// else `text`, one line or a table.
fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) -> Result<(), CliError> {
    table::emit(json, value, |_| {
        let mut text = text().trim_end().to_owned();
        text.push('\n');
        text
    });
    Ok(())
}

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |source| CliError::File { path: path.display().to_string(), source }
}

/// The daemon's error answer (or its status) as the command's error.
fn refused(answer: &manager::unix_http::Answer) -> CliError {
    let message = match serde_json::from_slice::<ErrorBody>(&answer.body) {
        Ok(error) => error.error,
        Err(_) => format!("the daemon answered {}", answer.status),
    };
    CliError::Client(ClientError::Daemon(message))
}

fn unreachable(client: &Client, error: manager::pool::transfer::TransferError) -> CliError {
    match error {
        manager::pool::transfer::TransferError::Http(source) => CliError::Client(ClientError::Unreachable {
            socket: client.socket().display().to_string(),
            source,
        }),
        manager::pool::transfer::TransferError::Local(source) => {
            CliError::File { path: "the download".into(), source }
        }
    }
}

fn import(
    client: &Client,
    pool: &str,
    file: &Path,
    volume: Option<String>,
    format: Option<FormatArg>,
) -> Result<VolumeInfo, CliError> {
    let volume = match volume {
        Some(volume) => volume,
        None => file
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| CliError::Usage(format!("{}: give the volume a --name", file.display())))?,
    };
    let format = match format {
        Some(format) => ImageFormat::from(format),
        // The user's own file, read with the user's rights: the daemon checks a qcow2 anyway.
        None => match storage::image::probe(file).map_err(|e| CliError::Usage(e.to_string()))? {
            storage::image::Format::Raw => ImageFormat::Raw,
            storage::image::Format::Qcow2 => ImageFormat::Qcow2,
        },
    };
    let format_name = match format {
        ImageFormat::Raw => "raw",
        ImageFormat::Qcow2 => "qcow2",
    };
    if let Err(e) = check_name(&volume) {
        return Err(CliError::Usage(format!("{e} (name the volume with --name)")));
    }
    let uri = format!("/v1/pools/{}/volumes/{volume}/data?format={format_name}", name(pool)?);
    let source = std::fs::File::open(file).map_err(file_error(file))?;
    let length = source.metadata().map_err(file_error(file))?.len();
    let progress = Arc::new(Progress::new(length, false));
    let bar = progress.clone();
    let answer = client
        .runtime()
        .block_on(manager::pool::transfer::upload(
            client.socket(),
            &uri,
            tokio::fs::File::from_std(source),
            length,
            move |sent| bar.set(sent),
        ))
        .map_err(|e| unreachable(client, e));
    progress.finish();
    let answer = answer?;
    if !answer.status.is_success() {
        return Err(refused(&answer));
    }
    serde_json::from_slice(&answer.body).map_err(|e| CliError::Client(ClientError::BadAnswer(e.to_string())))
}

fn download(client: &Client, pool: &str, volume: &str, file: &Path) -> Result<u64, CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let uri = format!("/v1/pools/{}/volumes/{}/data", name(pool)?, name(volume)?);
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(file_error(file))?;
    let mut out = tokio::fs::File::from_std(out);
    let progress = Progress::new(0, false);
    let received = std::cell::Cell::new(0u64);
    let answer = client.runtime().block_on(manager::pool::transfer::download(
        client.socket(),
        &uri,
        &mut out,
        |done, total| {
            if let Some(total) = total {
                progress.set_length(total);
            }
            progress.set(done);
            received.set(done);
        },
    ));
    progress.finish();
    drop(out);
    let result = match answer {
        Ok(answer) if answer.status.is_success() => Ok(received.get()),
        Ok(answer) => Err(refused(&answer)),
        Err(manager::pool::transfer::TransferError::Local(source)) => Err(file_error(file)(source)),
        Err(e) => Err(unreachable(client, e)),
    };
    if result.is_err() {
        // Not a partial image left looking like a whole one.
        let _ = std::fs::remove_file(file);
    }
    result
}

/// Bytes as a person reads them: `10 GiB`, `1.5 MiB`, `512 B` (as `kestrel image info`).
fn human(bytes: u64) -> String {
    storage::image::human_size(bytes)
}

fn pool_table(pools: &[PoolInfo]) -> String {
    let mut out = Table::new(["NAME", "VOLUMES", "CAPACITY", "AVAILABLE", "PATH"]);
    for p in pools {
        out.row([
            p.definition.name.clone(),
            p.volumes.to_string(),
            human(p.capacity_bytes),
            human(p.available_bytes),
            p.definition.path.display().to_string(),
        ]);
    }
    out.render()
}

fn volume_table(volumes: &[VolumeInfo]) -> String {
    let mut out = Table::new(["NAME", "FORMAT", "SIZE", "ALLOCATED", "BACKING", "USED BY"]);
    for v in volumes {
        let format = match v.format {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        };
        let used_by = if v.used_by.is_empty() { "-".to_owned() } else { v.used_by.join(",") };
        out.row([
            v.name.clone(),
            format.to_owned(),
            human(v.size_bytes),
            human(v.allocated_bytes),
            table::or_dash(v.backing.as_deref()),
            used_by,
        ]);
    }
    out.render()
}

fn refresh_text(pool: &str, report: &PoolRefresh) -> String {
    let mut out = format!(
        "pool '{pool}': {} added, {} removed, {} skipped\n",
        report.added.len(),
        report.removed.len(),
        report.skipped.len()
    );
    for name in &report.added {
        out += &format!("  added    {name}\n");
    }
    for name in &report.removed {
        out += &format!("  removed  {name}\n");
    }
    for skipped in &report.skipped {
        out += &format!("  skipped  {}: {}\n", skipped.name, skipped.reason);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_tables_read_well() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(10 << 30), "10 GiB");
        assert_eq!(human(3 << 19), "1.5 MiB");
        let volume = VolumeInfo {
            pool: "p".into(),
            name: "disk".into(),
            format: ImageFormat::Qcow2,
            size_bytes: 1 << 30,
            allocated_bytes: 0,
            backing: None,
            used_by: vec!["web".into()],
        };
        let text = volume_table(&[volume]);
        assert_eq!(text.lines().nth(1), Some("disk  qcow2   1 GiB  0 B        -        web"), "{text}");
    }
}
