//! A volume's bytes over the API: an upload is streamed into a temporary file of the pool
//! (never held in memory), made durable, checked, and only then given its name; a download
//! streams the image file out, read-locked so that no VM writes it meanwhile.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use model::disk::ImageFormat;
use model::manager::name::check_name;
use model::manager::pool::VolumeInfo;
use storage::lock::{self, Access};
use storage::qcow2::{self, header, Qcow2Options};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::dir::PoolDir;
use super::volumes::check_backing;
use super::{io_error, records, volume_io, Pools};
use crate::error::{ApiResult, ManagerError};
use crate::server::AppState;

/// Downloads are read in pieces of this size.
const CHUNK: usize = 256 << 10;

/// Runs file and store work off the runtime's threads.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ManagerError::internal(format!("a pool operation failed: {e}")))?
}

/// `PUT /v1/pools/{pool}/volumes/{vol}/data?format=F`: the body becomes the new volume.
pub(super) async fn upload(
    state: AppState,
    pool: String,
    name: String,
    format: ImageFormat,
    body: Body,
) -> ApiResult<VolumeInfo> {
    let prepared = {
        let (state, pool, name) = (state.clone(), pool.clone(), name.clone());
        blocking(move || {
            check_name(&name)?;
            let (_, dir) = state.pools.open_pool(&pool)?;
            if dir.exists(&name).map_err(|e| volume_io(&format!("{pool}/{name}"), e))? {
                return Err(ManagerError::conflict(format!(
                    "pool '{pool}' already has a file named '{name}'"
                )));
            }
            let (temp, file) = dir.create_temp().map_err(|e| io_error(&format!("pool '{pool}'"), e))?;
            Ok((dir, temp, file))
        })
        .await
    };
    let (dir, temp, file) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            drain(body).await;
            return Err(error);
        }
    };
    // Whatever ends this request (an error, or the client going away and the request being
    // dropped mid-stream), the temporary file goes; once published, its name is gone already.
    let dir = std::sync::Arc::new(dir);
    let _cleanup = TempCleanup { dir: dir.clone(), name: temp.clone() };
    let reference = format!("{pool}/{name}");
    let mut out = tokio::fs::File::from_std(file);
    let received = receive(&mut out, body, &reference).await;
    let file = out.into_std().await;
    blocking(move || {
        let pools = &state.pools;
        // The whole-image check runs before the pools' lock (nothing else can see the
        // temporary file); under the lock only the backing file is looked up again (it may
        // have been deleted meanwhile), then the file is published.
        let made = received.and_then(|()| {
            file.sync_all().map_err(|e| volume_io(&reference, e))?;
            match format {
                ImageFormat::Raw => Ok(()),
                ImageFormat::Qcow2 => pools.check_uploaded_qcow2(&dir, &pool, &temp, &file),
            }
        });
        let _changing = pools.changing();
        let made = made.and_then(|()| match format {
            ImageFormat::Raw => Ok(()),
            ImageFormat::Qcow2 => pools.check_uploaded_backing(&dir, &pool, &file),
        });
        drop(file);
        pools.publish(&dir, &pool, &temp, &name, format, made)?;
        drop(_changing);
        state.events.emit(
            model::manager::event::EventKind::VolumeCreated,
            &reference,
            Some("uploaded".into()),
        );
        pools.volume_info(&pool, &name, &|r| state.vms.users_of_volume(r).unwrap_or_default())
    })
    .await
}

/// Removes a temporary file when dropped (a no-op once it was renamed).
struct TempCleanup {
    dir: std::sync::Arc<PoolDir>,
    name: String,
}

impl Drop for TempCleanup {
    fn drop(&mut self) {
        match self.dir.remove(&self.name) {
            Ok(()) => tracing::info!("removed the unfinished upload {}", self.name),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove the unfinished upload {}: {e}", self.name),
        }
    }
}

/// Reads and drops a request body, so that a client still sending it gets the answer rather
/// than a connection closed under its feet.
pub(super) async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    while let Some(Ok(_)) = stream.next().await {}
}

/// Writes the request body into `out` (a new, empty file), piece by piece as it arrives.
/// Blocks of zeros are skipped, not written: the file keeps the holes of a sparse image.
async fn receive(out: &mut tokio::fs::File, body: Body, reference: &str) -> ApiResult<()> {
    let mut stream = body.into_data_stream();
    let mut sparse = SparseWriter::default();
    while let Some(piece) = stream.next().await {
        let piece = piece
            .map_err(|e| ManagerError::invalid(format!("volume {reference}: the upload broke off: {e}")))?;
        if let Err(e) = sparse.write(out, &piece).await {
            // The rest is read and dropped (see `drain`).
            while let Some(Ok(_)) = stream.next().await {}
            return Err(volume_io(reference, e));
        }
    }
    sparse.finish(out).await.map_err(|e| volume_io(reference, e))
}

/// The granularity at which zeros become holes (a filesystem block).
const HOLE_BLOCK: u64 = 4096;

/// Writes a stream of bytes into a fresh file, seeking over blocks of zeros.
#[derive(Default)]
struct SparseWriter {
    /// Bytes of the stream so far.
    length: u64,
    /// Where the file's position is.
    position: u64,
}

impl SparseWriter {
    async fn write(&mut self, out: &mut tokio::fs::File, piece: &[u8]) -> std::io::Result<()> {
        // Runs of data are written whole; a block is skipped only if all of it is in `piece`
        // or it ends there (a partial zero block at a piece's edge is a hole all the same: the
        // file is new, and holes read as zeros).
        let mut run_start = 0usize;
        let mut index = 0usize;
        while index < piece.len() {
            let at = self.length + index as u64;
            let len = ((HOLE_BLOCK - at % HOLE_BLOCK) as usize).min(piece.len() - index);
            if piece[index..index + len].iter().all(|&b| b == 0) {
                self.put(out, &piece[run_start..index], run_start).await?;
                run_start = index + len;
            }
            index += len;
        }
        self.put(out, &piece[run_start..], run_start).await?;
        self.length += piece.len() as u64;
        Ok(())
    }

    /// Writes `data`, found at `offset` in the current piece.
    async fn put(&mut self, out: &mut tokio::fs::File, data: &[u8], offset: usize) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let at = self.length + offset as u64;
        if at != self.position {
            out.seek(std::io::SeekFrom::Start(at)).await?;
        }
        out.write_all(data).await?;
        self.position = at + data.len() as u64;
        Ok(())
    }

    /// Flushes and gives the file its length (trailing zeros are a hole too).
    async fn finish(&mut self, out: &mut tokio::fs::File) -> std::io::Result<()> {
        out.flush().await?;
        out.set_len(self.length).await
    }
}

impl Pools {
    /// An uploaded qcow2 image becomes a volume only if it is whole and consistent, and its
    /// backing file (if it names one) is another volume of the pool, with its format named: a
    /// hostile image must not make a VMM open a host file.
    fn check_uploaded_qcow2(
        &self,
        dir: &PoolDir,
        pool: &str,
        temp: &str,
        file: &std::fs::File,
    ) -> ApiResult<()> {
        let refuse =
            |why: String| ManagerError::invalid(format!("the upload is not a usable qcow2 image: {why}"));
        let h = header::read(file).map_err(|e| refuse(e.to_string()))?;
        if h.dirty() || h.corrupt() {
            return Err(refuse(
                "it is marked dirty or corrupt (run `kestrel image check --repair` on it first)".into(),
            ));
        }
        self.check_uploaded_backing(dir, pool, file)?;
        let report = qcow2::check::check(file).map_err(|e| refuse(e.to_string()))?;
        if report.corruptions > 0 || report.check_errors > 0 {
            return Err(refuse(format!(
                "its check found {} corruptions and {} errors",
                report.corruptions, report.check_errors
            )));
        }
        // Last, imago opens it (and its backing file, next to it in the pool) as a VMM would.
        let copy = file.try_clone().map_err(|e| io_error("the upload", e))?;
        let options = Qcow2Options { writable: false, direct: false, allow_backing: true };
        qcow2::open(copy, &dir.through_fd(temp), &options).map_err(|e| refuse(e.to_string()))?;
        Ok(())
    }
}

impl Pools {
    /// An uploaded qcow2 image's backing file, if it names one, must be a volume of the pool
    /// with its format named (cheap: the header only; run again under the pools' lock).
    fn check_uploaded_backing(&self, dir: &PoolDir, pool: &str, file: &std::fs::File) -> ApiResult<()> {
        let refuse =
            |why: String| ManagerError::invalid(format!("the upload is not a usable qcow2 image: {why}"));
        let h = header::read(file).map_err(|e| refuse(e.to_string()))?;
        if let Some(backing) = &h.backing_file {
            let lookup = |base: &str| {
                let format = records::volume_format(&self.store, pool, base).ok().flatten()?;
                let is_file = dir.kind(base).ok() == Some(super::dir::EntryKind::File);
                is_file.then_some(Some(format))
            };
            check_backing(backing, h.backing_format.as_deref(), lookup).map_err(refuse)?;
        }
        Ok(())
    }
}

/// `GET /v1/pools/{pool}/volumes/{vol}/data`: the image file's bytes.
pub(super) async fn download(state: AppState, pool: String, name: String) -> ApiResult<Response> {
    let (file, length) = blocking(move || {
        let (_, dir) = state.pools.open_pool(&pool)?;
        state.pools.volume_format(&pool, &name)?;
        let reference = format!("{pool}/{name}");
        let file = dir.open_file(&name, false).map_err(|e| volume_io(&reference, e))?;
        // Kept by the open file (and so by the stream) until the download ends.
        lock::lock(&file, Access::Read).map_err(|e| {
            ManagerError::conflict(format!(
                "volume {reference} cannot be downloaded while it is written: {e}"
            ))
        })?;
        let length = file.metadata().map_err(|e| volume_io(&reference, e))?.len();
        Ok((file, length))
    })
    .await?;
    let file = tokio::fs::File::from_std(file);
    let stream = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buffer = vec![0u8; CHUNK];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok::<Bytes, std::io::Error>(Bytes::from(buffer)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (axum::http::header::CONTENT_LENGTH, length.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
