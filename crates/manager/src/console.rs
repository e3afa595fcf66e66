//! Serial consoles: many viewers of one VM's console over WebSocket, fed from the console log
//! file (the scrollback, which outlives the daemon), input written to the VMM's FIFO.
//!
//! The daemon never holds the console's data path: the VMM appends the guest's output to
//! `console.log` (its stdout) and reads input from the `console.in` FIFO (its stdin). A viewer
//! gets the log's last bytes, then what is appended: one follower task per watched VM polls the
//! file and fans new bytes out to every viewer through a broadcast channel (so N viewers cost one
//! reader), and stops when the last viewer leaves or the VM stops. What viewers type goes to the
//! FIFO with every Ctrl-A doubled, so no viewer can type the VMM's Ctrl-A X quit sequence. A
//! restarted daemon finds the same files. The log is capped: past [`LOG_CAP`] bytes it keeps its
//! last [`LOG_KEEP`] (copy the tail to the front, truncate: the VMM appends with `O_APPEND`, so
//! its next write lands at the new end; a follower that finds the file shorter carries on from
//! the new end).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::Router;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::error::{ApiResult, ManagerError};
use crate::paths::Paths;
use crate::server::AppState;
use crate::web::session::{session_ended, SessionEnd};

/// How often a follower looks for new output (a console is for people: 50 ms is immediate).
const POLL: Duration = Duration::from_millis(50);
/// How often (in polls) a follower checks that its VM still runs.
const ALIVE_EVERY: u32 = 20;
/// The most a follower reads per poll (a guest flooding its console is read at 20 MiB/s).
const MAX_READ_PER_POLL: u64 = 1 << 20;
/// Output chunks a slow viewer may lag behind before it misses some (and is told so).
const VIEWER_BACKLOG: usize = 256;
/// Scrollback sent on attach unless `?scrollback=` says otherwise.
pub const DEFAULT_SCROLLBACK: u64 = 16 << 10;
/// `GET …/console/log` without `?bytes=`.
pub const DEFAULT_LOG_BYTES: u64 = 64 << 10;
/// The most scrollback or log tail one request gets.
pub const MAX_TAIL: u64 = 4 << 20;
/// A console log longer than this is cut to its last [`LOG_KEEP`] bytes.
pub const LOG_CAP: u64 = 4 << 20;
/// What a cut console log keeps.
pub const LOG_KEEP: u64 = 1 << 20;
/// How often the logs are checked against [`LOG_CAP`].
const CAP_PERIOD: Duration = Duration::from_secs(10);
/// The escape byte of the VMM's console (Ctrl-A).
const ESCAPE: u8 = 0x01;
/// The largest WebSocket frame or message a viewer may send (input is keystrokes and pastes;
/// `kestrel vm console` sends at most 4 KiB at a time). A bigger one closes the socket, so a
/// client cannot make the daemon buffer megabytes per connection.
pub const MAX_INPUT_MESSAGE: usize = 64 << 10;
/// Writes to a pipe of at most this many bytes are atomic, so two viewers' keystrokes never
/// interleave inside an escape pair.
const PIPE_BUF: usize = 4096;

/// The consoles being watched: one follower per VM (by UUID) while it has viewers.
pub struct Consoles {
    followers: Mutex<HashMap<String, mpsc::Sender<AttachRequest>>>,
}

/// A viewer's start: the scrollback, then everything after it.
pub struct Attached {
    pub scrollback: Bytes,
    pub output: broadcast::Receiver<Bytes>,
}

struct AttachRequest {
    scrollback: u64,
    reply: oneshot::Sender<Attached>,
}

/// Whether the VM a follower watches still runs.
pub type Alive = Arc<dyn Fn() -> bool + Send + Sync>;

impl Consoles {
    /// The daemon's consoles. Inside a Tokio runtime this also starts the task that caps every
    /// VM's console log under `paths` (VMs nobody watches included).
    pub fn new(paths: &Paths) -> Consoles {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(cap_logs_forever(paths.state_dir.join("vms")));
        }
        Consoles { followers: Mutex::new(HashMap::new()) }
    }

    /// Attaches a viewer to the console whose log is `log` (VM `uuid`): the last `scrollback`
    /// bytes of the log and a receiver of what follows, with no byte lost or repeated between the
    /// two. The receiver closes when the VM stops (`alive` says so) or the follower ends.
    pub async fn attach(&self, uuid: &str, log: &Path, scrollback: u64, alive: Alive) -> ApiResult<Attached> {
        // A follower that ended (its last viewer left) between the lookup and the request is
        // replaced once.
        for _ in 0..2 {
            let sender = {
                let mut followers = self.followers.lock().unwrap_or_else(|e| e.into_inner());
                followers.retain(|_, sender| !sender.is_closed());
                followers
                    .entry(uuid.to_owned())
                    .or_insert_with(|| spawn_follower(log.to_owned(), alive.clone()))
                    .clone()
            };
            let (reply, answer) = oneshot::channel();
            if sender.send(AttachRequest { scrollback: scrollback.min(MAX_TAIL), reply }).await.is_err() {
                continue;
            }
            if let Ok(attached) = answer.await {
                return Ok(attached);
            }
        }
        Err(ManagerError::internal("the console follower ended while attaching"))
    }

    /// How many VMs have a follower now (for tests and the daemon's metrics).
    pub fn followed(&self) -> usize {
        let followers = self.followers.lock().unwrap_or_else(|e| e.into_inner());
        followers.values().filter(|sender| !sender.is_closed()).count()
    }
}

fn spawn_follower(log: PathBuf, alive: Alive) -> mpsc::Sender<AttachRequest> {
    let (sender, requests) = mpsc::channel(16);
    tokio::spawn(follow(log, alive, requests));
    sender
}

/// One VM's follower: answers attach requests and sends every byte appended to `log` to the
/// viewers, until none is left or the VM stops.
async fn follow(log: PathBuf, alive: Alive, mut requests: mpsc::Receiver<AttachRequest>) {
    let (output, _) = broadcast::channel::<Bytes>(VIEWER_BACKLOG);
    let mut offset = file_len(&log);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut polls: u32 = 0;
    loop {
        tokio::select! {
            // Attach requests first: one queued before the first poll must not find the
            // follower leaving for want of viewers.
            biased;
            request = requests.recv() => {
                let Some(request) = request else { return };
                let scrollback = Bytes::from(read_range(&log, offset.saturating_sub(request.scrollback), offset));
                let _ = request.reply.send(Attached { scrollback, output: output.subscribe() });
            }
            _ = tick.tick() => {
                offset = pump(&log, offset, &output);
                if output.receiver_count() == 0 {
                    return;
                }
                polls = polls.wrapping_add(1);
                if polls.is_multiple_of(ALIVE_EVERY) && !alive() {
                    // The last words of the guest, then the viewers' channels close.
                    pump(&log, offset, &output);
                    return;
                }
            }
        }
    }
}

/// Sends what was appended to `log` after `offset`; the new offset.
fn pump(log: &Path, offset: u64, output: &broadcast::Sender<Bytes>) -> u64 {
    let len = file_len(log);
    if len < offset {
        // Cut (capped) or replaced: carry on from its new end.
        return len;
    }
    let end = len.min(offset + MAX_READ_PER_POLL);
    if end == offset {
        return offset;
    }
    let bytes = read_range(log, offset, end);
    let read = bytes.len() as u64;
    if read > 0 {
        let _ = output.send(Bytes::from(bytes));
    }
    offset + read
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The bytes of `path` in `[start, end)` (fewer if it is shorter now; none if it is missing).
fn read_range(path: &Path, start: u64, end: u64) -> Vec<u8> {
    let Ok(mut file) = std::fs::File::open(path) else { return Vec::new() };
    if end <= start || file.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::with_capacity((end - start).min(MAX_TAIL) as usize);
    let _ = file.take(end - start).read_to_end(&mut bytes);
    bytes
}

/// The last `bytes` bytes of a console log.
pub fn tail(path: &Path, bytes: u64) -> Vec<u8> {
    let len = file_len(path);
    read_range(path, len.saturating_sub(bytes.min(MAX_TAIL)), len)
}

/// Input for the VMM: every Ctrl-A doubled (the VMM reads Ctrl-A Ctrl-A as one Ctrl-A to the
/// guest, so nothing a viewer types is an escape), in pieces of at most [`PIPE_BUF`] bytes that
/// never split a doubled pair.
pub fn escape_input(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut pieces = Vec::new();
    let mut piece = Vec::with_capacity(PIPE_BUF.min(bytes.len() * 2));
    for &byte in bytes {
        let width = if byte == ESCAPE { 2 } else { 1 };
        if piece.len() + width > PIPE_BUF {
            pieces.push(std::mem::take(&mut piece));
        }
        piece.push(byte);
        if byte == ESCAPE {
            piece.push(ESCAPE);
        }
    }
    if !piece.is_empty() {
        pieces.push(piece);
    }
    pieces
}

/// Writes a viewer's input to the console FIFO without ever blocking: a VM not running (no
/// reader: ENXIO) or a full pipe (the guest does not read) drops it. The number of input bytes
/// that went in.
pub fn write_input(fifo: &Path, bytes: &[u8]) -> std::io::Result<usize> {
    let mut pipe = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(fifo)?;
    let mut written = 0;
    for piece in escape_input(bytes) {
        pipe.write_all(&piece)?;
        written += piece.iter().filter(|&&b| b != ESCAPE).count()
            + piece.iter().filter(|&&b| b == ESCAPE).count() / 2;
    }
    Ok(written)
}

/// Cuts a console log longer than `cap` to its last `keep` bytes. Whether it cut.
///
/// Accepted loss: bytes the VMM appends between the read of the tail and the truncation are
/// lost (or, landing past `keep`, cut off). The window is a few microseconds once per
/// [`CAP_PERIOD`] for a log past [`LOG_CAP`]; closing it would need the VMM to reopen its log
/// (rename, then signal) or `FALLOC_FL_COLLAPSE_RANGE`, which not every file system has.
pub fn cap_log(path: &Path, cap: u64, keep: u64) -> std::io::Result<bool> {
    let file =
        match std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOFOLLOW).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
    let len = file.metadata()?.len();
    if len <= cap || !file.metadata()?.is_file() {
        return Ok(false);
    }
    let mut tail = vec![0u8; keep as usize];
    file.read_exact_at(&mut tail, len - keep)?;
    file.write_all_at(&tail, 0)?;
    file.set_len(keep)?;
    Ok(true)
}

/// Every [`CAP_PERIOD`], caps the console log of every VM directory under `vms_dir`.
async fn cap_logs_forever(vms_dir: PathBuf) {
    let mut tick = tokio::time::interval(CAP_PERIOD);
    loop {
        tick.tick().await;
        let dir = vms_dir.clone();
        let _ = tokio::task::spawn_blocking(move || cap_all(&dir)).await;
    }
}

fn cap_all(vms_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(vms_dir) else { return };
    for entry in entries.flatten() {
        let metrics = entry.path().join("metrics.json");
        match crate::metrics::cap_metrics(&metrics) {
            Ok(true) => tracing::info!("{}: cut to what was not read yet", metrics.display()),
            Ok(false) => {}
            Err(e) => tracing::warn!("cannot cap {}: {e}", metrics.display()),
        }
        let log = entry.path().join("console.log");
        match cap_log(&log, LOG_CAP, LOG_KEEP) {
            Ok(true) => tracing::info!("{}: cut to its last {LOG_KEEP} bytes", log.display()),
            Ok(false) => {}
            Err(e) => tracing::warn!("cannot cap {}: {e}", log.display()),
        }
    }
}

/// `?scrollback=BYTES`.
#[derive(Debug, Deserialize)]
struct ConsoleQuery {
    scrollback: Option<u64>,
}

/// `?bytes=N`.
#[derive(Debug, Deserialize)]
struct LogQuery {
    bytes: Option<u64>,
}

/// `GET /v1/vms/{vm}/console`, `GET /v1/vms/{vm}/console/log`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/vms/{vm}/console", get(console))
        .route("/v1/vms/{vm}/console/log", get(console_log))
}

async fn console_log(
    State(state): State<AppState>,
    UrlPath(vm): UrlPath<String>,
    Query(query): Query<LogQuery>,
) -> ApiResult<Response> {
    let info = state.vms.info(&vm)?;
    let log = state.paths.console_log(&info.summary.uuid);
    let bytes = query.bytes.unwrap_or(DEFAULT_LOG_BYTES);
    let text = tokio::task::spawn_blocking(move || tail(&log, bytes))
        .await
        .map_err(|e| ManagerError::internal(format!("reading the console log: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

async fn console(
    State(state): State<AppState>,
    UrlPath(vm): UrlPath<String>,
    Query(query): Query<ConsoleQuery>,
    // The web console's session (none on the Unix socket): the viewer is let go when it ends.
    session: Option<Extension<SessionEnd>>,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    let session = session.map(|Extension(end)| end);
    let info = state.vms.info(&vm)?;
    let (name, uuid) = (info.summary.name.clone(), info.summary.uuid.clone());
    let log = state.paths.console_log(&uuid);
    let fifo = state.paths.console_input(&uuid);
    let scrollback = query.scrollback.unwrap_or(DEFAULT_SCROLLBACK);
    let attached = if info.summary.state.is_active() {
        let watcher = state.clone();
        let key = uuid.clone();
        // A VM between a reset and its restart is stopped for a moment: its viewers stay.
        let alive: Alive = Arc::new(move || {
            watcher.vms.info(&key).map(|i| i.summary.state.is_active()).unwrap_or(false)
                || watcher.vms.restart_pending(&key)
        });
        Some(state.consoles.attach(&uuid, &log, scrollback, alive).await?)
    } else {
        None
    };
    let upgrade = upgrade.max_frame_size(MAX_INPUT_MESSAGE).max_message_size(MAX_INPUT_MESSAGE);
    Ok(upgrade.on_upgrade(move |socket| async move {
        match attached {
            Some(attached) => view(socket, attached, fifo, &name, session).await,
            None => {
                let scrollback = tail(&log, scrollback);
                not_running(socket, scrollback, &name).await
            }
        }
    }))
}

/// A VM that does not run: its log's end, then the reason the viewer is let go.
async fn not_running(mut socket: WebSocket, scrollback: Vec<u8>, name: &str) {
    if !scrollback.is_empty() {
        let _ = socket.send(Message::Binary(scrollback.into())).await;
    }
    let _ = socket.send(close(format!("the VM '{name}' is not running"))).await;
}

fn close(reason: String) -> Message {
    Message::Close(Some(CloseFrame { code: axum::extract::ws::close_code::NORMAL, reason: reason.into() }))
}

/// The close code and reason of a viewer whose web session ended (logout, `web-token
/// --revoke-all`, expiry): 1008, policy violation — it may no longer see this console.
pub const SESSION_ENDED: &str = "your web session ended";

/// One viewer: the scrollback, then the console's output as it comes; its input to the FIFO.
/// A web viewer (`session`) is let go when its session ends.
async fn view(socket: WebSocket, attached: Attached, fifo: PathBuf, name: &str, session: Option<SessionEnd>) {
    let (mut sink, mut stream) = socket.split();
    let Attached { scrollback, mut output } = attached;
    let ended = session_ended(session);
    tokio::pin!(ended);
    if !scrollback.is_empty() && sink.send(Message::Binary(scrollback)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            () = &mut ended => {
                let frame = CloseFrame { code: axum::extract::ws::close_code::POLICY, reason: SESSION_ENDED.into() };
                let _ = sink.send(Message::Close(Some(frame))).await;
                return;
            }
            chunk = output.recv() => match chunk {
                Ok(bytes) => {
                    if sink.send(Message::Binary(bytes)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let note = format!("\r\n[kestrel: this viewer fell behind; {missed} pieces of output skipped]\r\n");
                    if sink.send(Message::Binary(note.into_bytes().into())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    let _ = sink.send(close(format!("the VM '{name}' stopped"))).await;
                    return;
                }
            },
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Binary(bytes))) => typed(&fifo, &bytes),
                Some(Ok(Message::Text(text))) => typed(&fifo, text.as_bytes()),
                Some(Err(_)) => {
                    // Most likely a message over the 64 KiB limit (the only error a working
                    // peer can cause): say so, as far as the socket still takes it.
                    let _ = sink.send(Message::Close(Some(CloseFrame {
                        code: axum::extract::ws::close_code::SIZE,
                        reason: "console input messages are at most 64 KiB".into(),
                    }))).await;
                    return;
                }
                Some(Ok(Message::Close(_))) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

fn typed(fifo: &Path, bytes: &[u8]) {
    match write_input(fifo, bytes) {
        Ok(_) => {}
        Err(e) => tracing::debug!("console input for {} dropped: {e}", fifo.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn append(path: &Path, bytes: &[u8]) {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        file.write_all(bytes).unwrap();
    }

    async fn next(output: &mut broadcast::Receiver<Bytes>) -> Bytes {
        tokio::time::timeout(Duration::from_secs(10), output.recv()).await.expect("output in time").unwrap()
    }

    #[tokio::test]
    async fn two_viewers_get_the_scrollback_and_then_the_same_output() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        append(&log, b"old line\nlast line\n");
        let consoles = Consoles { followers: Mutex::new(HashMap::new()) };
        let alive: Alive = Arc::new(|| true);
        let mut one = consoles.attach("vm", &log, 10, alive.clone()).await.unwrap();
        let mut two = consoles.attach("vm", &log, 1000, alive).await.unwrap();
        assert_eq!(consoles.followed(), 1, "one follower for both viewers");
        assert_eq!(&one.scrollback[..], b"last line\n");
        assert_eq!(&two.scrollback[..], b"old line\nlast line\n");
        append(&log, b"new output\n");
        assert_eq!(&next(&mut one.output).await[..], b"new output\n");
        assert_eq!(&next(&mut two.output).await[..], b"new output\n");
    }

    #[tokio::test]
    async fn the_viewers_are_let_go_when_the_vm_stops_and_the_follower_ends() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = running.clone();
        let alive: Alive = Arc::new(move || flag.load(std::sync::atomic::Ordering::SeqCst));
        let consoles = Consoles { followers: Mutex::new(HashMap::new()) };
        let mut viewer = consoles.attach("vm", &log, 0, alive).await.unwrap();
        append(&log, b"bye\n");
        running.store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(&next(&mut viewer.output).await[..], b"bye\n");
        let end = tokio::time::timeout(Duration::from_secs(10), viewer.output.recv()).await.unwrap();
        assert!(matches!(end, Err(broadcast::error::RecvError::Closed)));
        assert_eq!(consoles.followed(), 0);
    }

    #[test]
    fn a_cut_log_is_followed_from_its_new_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        append(&log, &vec![b'a'; 5000]);
        let (output, mut viewer) = broadcast::channel(4);
        assert_eq!(pump(&log, 0, &output), 5000);
        assert_eq!(viewer.try_recv().unwrap().len(), 5000);
        assert!(cap_log(&log, 4000, 1000).unwrap());
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 1000);
        assert_eq!(pump(&log, 5000, &output), 1000, "the shorter file is followed from its end");
        append(&log, b"after the cut\n");
        assert_eq!(pump(&log, 1000, &output), 1014);
        assert_eq!(&viewer.try_recv().unwrap()[..], b"after the cut\n");
        assert!(viewer.try_recv().is_err(), "nothing repeated");
    }

    #[test]
    fn capping_keeps_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let text: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
        std::fs::write(&log, &text).unwrap();
        assert!(!cap_log(&log, 40_000, 100).unwrap(), "at the cap: untouched");
        std::fs::write(&log, [&text[..], b"x"].concat()).unwrap();
        assert!(cap_log(&log, 40_000, 100).unwrap());
        let kept = std::fs::read(&log).unwrap();
        assert_eq!(kept.len(), 100);
        assert_eq!(&kept[..99], &text[text.len() - 99..]);
        assert_eq!(kept[99], b'x');
        assert!(!cap_log(&dir.path().join("missing"), 1, 1).unwrap());
    }

    #[test]
    fn input_reaches_the_fifo_with_ctrl_a_doubled_and_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("console.in");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No reader (no VMM): an error at once, not a hang.
        let error = write_input(&fifo, b"x").unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENXIO));
        let mut reader =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
        assert_eq!(write_input(&fifo, b"a\x01x\n").unwrap(), 4);
        let mut got = [0u8; 16];
        let n = reader.read(&mut got).unwrap();
        assert_eq!(&got[..n], b"a\x01\x01x\n");
        // A guest that does not read: the pipe fills and the rest is dropped with an error.
        let big = vec![b'y'; 200_000];
        assert!(write_input(&fifo, &big).is_err());
    }

    proptest! {
        // Long inputs (several pieces) are slow to check in a debug build: fewer cases.
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn escaped_input_has_no_lone_ctrl_a_and_no_piece_splits_a_pair(bytes in proptest::collection::vec(prop_oneof![Just(1u8), any::<u8>()], 0..10_000)) {
            let pieces = escape_input(&bytes);
            let mut undone = Vec::new();
            for piece in &pieces {
                prop_assert!(piece.len() <= PIPE_BUF && !piece.is_empty());
                let mut i = 0;
                while i < piece.len() {
                    if piece[i] == ESCAPE {
                        prop_assert_eq!(piece.get(i + 1), Some(&ESCAPE));
                        i += 1;
                    }
                    undone.push(piece[i]);
                    i += 1;
                }
            }
            prop_assert_eq!(undone, bytes);
        }
    }
}
