//! The API socket's connections, held to limits a hostile or broken client cannot get around:
//!
//! - **A per-request deadline** ([`Limits::request_deadline`], 5 s): once a request's first byte
//!   has arrived, the whole request (head and body) must be in by then, however it is paced; each
//!   read waits only for the time left. A client that misses it gets a 408 and is closed. A
//!   response must be taken by the client within the same time.
//! - **An idle timeout** ([`Limits::idle_timeout`], 60 s) between requests on a kept-alive
//!   connection, then the connection is closed.
//! - **A connection cap** ([`Limits::max_connections`], 64 threads, one per connection) that idle
//!   clients cannot exhaust: a connection arriving at the cap closes the one that has been idle
//!   (or stalled mid-request, or not taking its response) the longest. A connection whose request
//!   is being handled is never closed; only when every connection is, a new one gets a 503.
//! - Refusals, evictions and missed deadlines are logged through a [`LogLimiter`] each.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::http::{read_request_limited, HttpError, Request, Response, Transport};
use crate::log_limit::{limited_warn, LogLimiter};

/// Answers requests; called on the connection's own thread, so a slow answer (a snapshot) holds up
/// only its own client.
pub trait Handler: Send + Sync {
    /// The response to one request.
    fn handle(&self, request: &Request) -> Response;
}

impl Handler for crate::router::Router {
    fn handle(&self, request: &Request) -> Response {
        crate::router::Router::handle(self, request)
    }
}

/// The connection cap: at most this many connections (and threads) at once.
pub const MAX_CONNECTIONS: usize = 64;
/// The time a whole request has from its first byte, and a response has to be taken.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// The time a kept-alive connection may wait for its next request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the accept loop waits for an evicted connection's thread to let go of its slot before
/// admitting the new one anyway. Shutting the socket down wakes that thread at once, so this is
/// only a backstop.
const EVICTION_WAIT: Duration = Duration::from_secs(1);
/// Log lines per kind (refusals, evictions, missed deadlines) let through per interval.
const LOG_BURST: u32 = 5;
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The listener's limits; [`Limits::default`] gives the constants above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most connections served at once (at least 1).
    pub max_connections: usize,
    /// See [`REQUEST_DEADLINE`].
    pub request_deadline: Duration,
    /// See [`IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// The largest request body accepted (`--http-api-max-payload-size`; by default
    /// [`crate::http::MAX_BODY_BYTES`], Firecracker's 51,200): a larger one gets a 400.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: MAX_CONNECTIONS,
            request_deadline: REQUEST_DEADLINE,
            idle_timeout: IDLE_TIMEOUT,
            max_body_bytes: crate::http::MAX_BODY_BYTES,
        }
    }
}

/// Serves `handler` on `listener` with the default [`Limits`] until the process exits.
pub fn serve(listener: UnixListener, handler: Arc<dyn Handler>) {
    serve_with(listener, handler, Limits::default())
}

/// Serves `handler` on `listener` with `limits` until the process exits: one thread per connection,
/// each connection's requests answered in order.
pub fn serve_with(listener: UnixListener, handler: Arc<dyn Handler>, limits: Limits) {
    let table = Arc::new(Table::new(limits.max_connections.max(1)));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                limited_warn!(table.logs.accept, "API: cannot accept a connection: {e}");
                // Out of file descriptors or memory, accept fails at once for as long as the
                // connection waits in the backlog: back off rather than spin.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let id = match table.admit(&stream) {
            Ok(id) => id,
            Err(refusal) => {
                limited_warn!(table.logs.refusals, "API: refused a connection: {refusal}");
                refuse(stream, &refusal);
                continue;
            }
        };
        let (connection_table, handler) = (table.clone(), handler.clone());
        let builder = std::thread::Builder::new().name("kestrel-api-conn".into());
        let spawned = jail::seccomp::spawn(jail::seccomp::ThreadRole::Api, builder, move || {
            serve_connection(stream, id, &connection_table, handler.as_ref(), limits);
            connection_table.remove(id);
        });
        if let Err(e) = spawned {
            // The closure, and the stream in it, are dropped; free the slot too.
            table.remove(id);
            limited_warn!(table.logs.refusals, "API: cannot start a connection thread: {e}");
        }
    }
}

/// Tells a refused client why, if its socket takes the answer at once, and closes it.
fn refuse(stream: UnixStream, refusal: &Refusal) {
    if stream.set_nonblocking(true).is_ok() {
        let _ = (&stream).write(&Response::error(503, &refusal.to_string()).to_bytes(true));
    }
}

/// Why a new connection was closed at once.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("all {0} connections are busy with requests")]
    AllBusy(usize),
    #[error("cannot keep a handle on the connection: {0}")]
    Clone(std::io::Error),
}

/// What a connection is doing, for choosing which one to close at the cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the next request.
    Idle,
    /// A request's first byte has arrived; the rest is due by the deadline.
    Reading,
    /// The handler has the request: never evicted.
    Handling,
    /// Writing the response.
    Writing,
}

impl Phase {
    fn describe(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Reading => "stalled mid-request",
            Phase::Handling => "handling a request",
            Phase::Writing => "not taking its response",
        }
    }
}

struct Slot {
    /// A second handle on the connection's socket, to shut it down (which wakes the connection's
    /// thread from any read or write) when it is evicted.
    control: UnixStream,
    phase: Phase,
    /// When `phase` began.
    since: Instant,
    /// Shut down to make room; its thread is on its way out.
    evicted: bool,
}

/// The rate limiters of the listener's log lines, one per kind so that a flood of one kind does
/// not hide the others.
struct Logs {
    accept: LogLimiter,
    refusals: LogLimiter,
    evictions: LogLimiter,
    deadlines: LogLimiter,
}

/// The open connections, shared by the accept loop and the connection threads.
struct Table {
    cap: usize,
    slots: Mutex<Slots>,
    /// Signalled when a slot is freed.
    freed: Condvar,
    logs: Logs,
}

#[derive(Default)]
struct Slots {
    next_id: u64,
    open: HashMap<u64, Slot>,
}

impl Table {
    fn new(cap: usize) -> Table {
        let limiter = || LogLimiter::new(LOG_BURST, LOG_INTERVAL);
        Table {
            cap,
            slots: Mutex::default(),
            freed: Condvar::new(),
            logs: Logs { accept: limiter(), refusals: limiter(), evictions: limiter(), deadlines: limiter() },
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        // Nothing panics while holding the lock; if something did, the table is still whole.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes room for `stream` (evicting the connection idle the longest if the table is full)
    /// and registers it, idle; returns its id.
    fn admit(&self, stream: &UnixStream) -> Result<u64, Refusal> {
        let mut slots = self.lock();
        if slots.open.len() >= self.cap {
            // One eviction already under way frees a slot; otherwise start one.
            if !slots.open.values().any(|slot| slot.evicted) {
                self.evict_one(&mut slots)?;
            }
            slots = self
                .freed
                .wait_timeout_while(slots, EVICTION_WAIT, |slots| slots.open.len() >= self.cap)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let control = stream.try_clone().map_err(Refusal::Clone)?;
        let id = slots.next_id;
        slots.next_id += 1;
        slots.open.insert(id, Slot { control, phase: Phase::Idle, since: Instant::now(), evicted: false });
        Ok(id)
    }

    /// Shuts down the connection that has been waiting on its client the longest.
    fn evict_one(&self, slots: &mut Slots) -> Result<(), Refusal> {
        let victim = slots
            .open
            .values_mut()
            .filter(|slot| slot.phase != Phase::Handling && !slot.evicted)
            .min_by_key(|slot| slot.since)
            .ok_or(Refusal::AllBusy(self.cap))?;
        victim.evicted = true;
        let _ = victim.control.shutdown(Shutdown::Both);
        limited_warn!(
            self.logs.evictions,
            "API: {} connections open (the limit); closed one {} for {:.1} s to make room",
            self.cap,
            victim.phase.describe(),
            victim.since.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Moves connection `id` to `phase`; false if it has been evicted (its thread should stop).
    fn enter(&self, id: u64, phase: Phase) -> bool {
        match self.lock().open.get_mut(&id) {
            Some(slot) if !slot.evicted => {
                // A connection is idle from the moment its response starts out (or it was
                // accepted), before its client can see the answer and make the next move: the
                // order of idle connections is then the order their clients were answered in.
                if !(phase == Phase::Idle && matches!(slot.phase, Phase::Idle | Phase::Writing)) {
                    slot.since = Instant::now();
                }
                slot.phase = phase;
                true
            }
            _ => false,
        }
    }

    fn remove(&self, id: u64) {
        if self.lock().open.remove(&id).is_some() {
            self.freed.notify_all();
        }
    }
}

/// A connection's socket, read and written against deadlines: between requests the idle timeout,
/// within one the request deadline. Each read or write waits only for the time left, so trickled
/// bytes do not extend either.
struct Connection<'a> {
    stream: UnixStream,
    id: u64,
    table: &'a Table,
    limits: Limits,
    /// When the current request (or response) must be complete; `None` while idle.
    deadline: Option<Instant>,
    /// When an idle connection is closed.
    idle_until: Instant,
}

impl Connection<'_> {
    /// The time left before the current deadline, or a timeout error once it has passed.
    fn time_left(&self) -> std::io::Result<Duration> {
        let left = self.deadline.unwrap_or(self.idle_until).saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        Ok(left)
    }

    /// Waits for the next request: idle, with the idle timeout from now. False if evicted.
    fn await_request(&mut self) -> bool {
        self.deadline = None;
        self.idle_until = Instant::now() + self.limits.idle_timeout;
        self.table.enter(self.id, Phase::Idle)
    }
}

impl Read for Connection<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.set_read_timeout(Some(self.time_left()?))?;
        self.stream.read(buf)
    }
}

impl Write for Connection<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.set_write_timeout(Some(self.time_left()?))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

impl Transport for Connection<'_> {
    fn request_started(&mut self) {
        self.deadline = Some(Instant::now() + self.limits.request_deadline);
        // An evicted connection's reads fail from here on; nothing to do about it now.
        let _ = self.table.enter(self.id, Phase::Reading);
    }
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

/// Answers the requests on one connection until it closes, times out or is evicted.
fn serve_connection(stream: UnixStream, id: u64, table: &Table, handler: &dyn Handler, limits: Limits) {
    let mut connection = Connection {
        stream,
        id,
        table,
        limits,
        deadline: None,
        idle_until: Instant::now() + limits.idle_timeout,
    };
    let mut buffer = Vec::new();
    while connection.await_request() {
        let (response, close) =
            match read_request_limited(&mut connection, &mut buffer, limits.max_body_bytes) {
                Ok(request) => {
                    // Evicted while the last bytes came in: the client is gone as far as it knows.
                    if !table.enter(id, Phase::Handling) {
                        return;
                    }
                    tracing::debug!("API: {} {}", request.method.as_str(), request.path);
                    (handler.handle(&request), request.close)
                }
                Err(HttpError::Io(e)) if is_timeout(&e) && connection.deadline.is_some() => {
                    limited_warn!(
                        table.logs.deadlines,
                        "API: a request did not arrive within {} s; closing its connection",
                        limits.request_deadline.as_secs_f64()
                    );
                    let message = format!(
                        "The request did not arrive within {} s",
                        limits.request_deadline.as_secs_f64()
                    );
                    (Response::error(408, &message), true)
                }
                Err(HttpError::Io(e)) if is_timeout(&e) => {
                    tracing::debug!(
                        "API: closing a connection idle for {} s",
                        limits.idle_timeout.as_secs_f64()
                    );
                    return;
                }
                Err(HttpError::Closed | HttpError::Io(_)) => return,
                Err(e) => (Response::bad_request(&e.to_string()), true),
            };
        if !table.enter(id, Phase::Writing) {
            return;
        }
        connection.deadline = Some(Instant::now() + limits.request_deadline);
        if connection.write_all(&response.to_bytes(close)).is_err() || close {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Answers 200 with the path; `/block` first says it has the request, then waits to be let go.
    struct FakeHandler {
        entered: Mutex<mpsc::Sender<()>>,
        release: Mutex<mpsc::Receiver<()>>,
    }

    impl Handler for FakeHandler {
        fn handle(&self, request: &Request) -> Response {
            if request.path == "/block" {
                let _ = self.entered.lock().unwrap().send(());
                let _ = self.release.lock().unwrap().recv();
            }
            Response::json(200, &request.path)
        }
    }

    struct Server {
        socket: std::path::PathBuf,
        entered: mpsc::Receiver<()>,
        release: mpsc::Sender<()>,
        _dir: tempfile::TempDir,
    }

    impl Server {
        /// A listener with `limits` on a fresh socket; its accept thread outlives the test.
        fn start(limits: Limits) -> Server {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("api.sock");
            let listener = UnixListener::bind(&socket).unwrap();
            let (entered_tx, entered) = mpsc::channel();
            let (release, release_rx) = mpsc::channel();
            let handler =
                Arc::new(FakeHandler { entered: Mutex::new(entered_tx), release: Mutex::new(release_rx) });
            std::thread::spawn(move || serve_with(listener, handler, limits));
            Server { socket, entered, release, _dir: dir }
        }

        fn connect(&self) -> UnixStream {
            let stream = UnixStream::connect(&self.socket).unwrap();
            // Bounds every read in these tests: a server that never answers fails them.
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            stream
        }
    }

    fn limits(max_connections: usize, request_deadline_ms: u64, idle_timeout_ms: u64) -> Limits {
        Limits {
            max_connections,
            request_deadline: Duration::from_millis(request_deadline_ms),
            idle_timeout: Duration::from_millis(idle_timeout_ms),
            ..Limits::default()
        }
    }

    /// The status and body of the response at the start of `bytes`, once it is all there.
    fn parse_response(bytes: &[u8]) -> Option<(u16, String)> {
        let text = String::from_utf8_lossy(bytes);
        let head_end = text.find("\r\n\r\n")?;
        let length = text[..head_end]
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: ").map(|v| v.parse::<usize>().unwrap()))
            .unwrap_or(0);
        let body = text.get(head_end + 4..head_end + 4 + length)?;
        Some((text[9..12].parse().unwrap(), body.to_owned()))
    }

    /// Reads one response after the `bytes` already read: its status and body; `None` if the
    /// connection closed first.
    fn read_response_after(stream: &mut UnixStream, mut bytes: Vec<u8>) -> Option<(u16, String)> {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(response) = parse_response(&bytes) {
                return Some(response);
            }
            match stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("no response: {e}"),
            }
        }
    }

    fn read_response(stream: &mut UnixStream) -> Option<(u16, String)> {
        read_response_after(stream, Vec::new())
    }

    fn get(stream: &mut UnixStream, path: &str) -> Option<(u16, String)> {
        stream.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes()).ok()?;
        read_response(stream)
    }

    /// True once the server has closed `stream`, false if it still answers.
    fn is_closed(stream: &mut UnixStream) -> bool {
        get(stream, "/").is_none()
    }

    /// Sends `head`, then one byte of `trickle` every `pace`, until the server answers or closes.
    /// Returns what it answered and how long after the first byte it closed the connection.
    fn trickle(
        stream: &mut UnixStream,
        head: &[u8],
        trickle: u8,
        pace: Duration,
        started: Option<mpsc::Sender<()>>,
    ) -> (Option<(u16, String)>, Duration) {
        let start = Instant::now();
        stream.write_all(head).unwrap();
        let mut sent = 0;
        let mut received = Vec::new();
        loop {
            // The pacing: wait `pace` for the server to answer or close before the next byte.
            stream.set_read_timeout(Some(pace)).unwrap();
            let mut chunk = [0u8; 1024];
            match stream.read(&mut chunk) {
                Ok(n) => {
                    received.extend_from_slice(&chunk[..n]);
                    break;
                }
                Err(e) if is_timeout(&e) => {}
                Err(_) => break,
            }
            if stream.write_all(&[trickle]).is_err() {
                break;
            }
            sent += 1;
            if sent == 3 {
                if let Some(started) = &started {
                    started.send(()).unwrap();
                }
            }
            assert!(start.elapsed() < Duration::from_secs(10), "the server never closed the slow client");
        }
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let response = read_response_after(stream, received);
        (response, start.elapsed())
    }

    #[test]
    fn a_slowloris_client_is_dropped_at_the_deadline_while_another_client_is_served() {
        let deadline = Duration::from_millis(1000);
        let server = Server::start(limits(8, 1000, 30_000));
        let mut slow = server.connect();
        let (started_tx, started) = mpsc::channel();
        let slowloris = std::thread::spawn(move || {
            trickle(
                &mut slow,
                b"GET / HTTP/1.1\r\nX-Slow: ",
                b'a',
                Duration::from_millis(50),
                Some(started_tx),
            )
        });
        started.recv().unwrap();
        assert_eq!(get(&mut server.connect(), "/machine-config").unwrap().0, 200);
        assert!(!slowloris.is_finished(), "the other client was served only once the slow one was gone");

        let (response, closed_after) = slowloris.join().unwrap();
        let (status, body) = response.expect("a 408 before the close");
        assert_eq!(status, 408, "{body}");
        assert!(body.contains("did not arrive within 1 s"), "{body}");
        assert!(closed_after >= deadline, "closed after {closed_after:?}, before the deadline");
        assert!(closed_after < deadline + Duration::from_millis(1500), "closed only after {closed_after:?}");
    }

    #[test]
    fn trickled_body_bytes_do_not_restart_the_deadline() {
        // Each byte comes well within the deadline of the last: a timeout restarted by every byte
        // would never fire.
        let deadline = Duration::from_millis(400);
        let server = Server::start(limits(8, 400, 30_000));
        let mut stream = server.connect();
        let head = b"PUT /x HTTP/1.1\r\nContent-Length: 1000\r\n\r\n";
        let (response, closed_after) = trickle(&mut stream, head, b'x', Duration::from_millis(40), None);
        assert_eq!(response.expect("a 408").0, 408);
        assert!(
            closed_after >= deadline && closed_after < deadline + Duration::from_millis(1500),
            "{closed_after:?}"
        );
        assert!(is_closed(&mut stream));
    }

    #[test]
    fn at_the_cap_the_connection_idle_the_longest_makes_room() {
        let server = Server::start(limits(3, 5_000, 30_000));
        // Each answered once, so all three are registered, idle, oldest first.
        let mut idle: Vec<UnixStream> = (0..3).map(|_| server.connect()).collect();
        for stream in &mut idle {
            assert_eq!(get(stream, "/").unwrap().0, 200);
        }
        let mut newcomer = server.connect();
        assert_eq!(get(&mut newcomer, "/").unwrap().0, 200);
        assert!(is_closed(&mut idle[0]), "the oldest idle connection is still open");
        assert_eq!(get(&mut idle[1], "/").unwrap().0, 200);
        assert_eq!(get(&mut idle[2], "/").unwrap().0, 200);
        assert_eq!(get(&mut newcomer, "/").unwrap().0, 200);
    }

    #[test]
    fn a_connection_whose_request_is_being_handled_is_never_evicted() {
        let server = Server::start(limits(2, 5_000, 30_000));
        let mut busy = server.connect();
        busy.write_all(b"GET /block HTTP/1.1\r\n\r\n").unwrap();
        server.entered.recv().unwrap();
        // `busy` is the oldest, but it is being handled: the idle one goes instead.
        let mut idle = server.connect();
        assert_eq!(get(&mut idle, "/").unwrap().0, 200);
        let mut newcomer = server.connect();
        assert_eq!(get(&mut newcomer, "/").unwrap().0, 200);
        assert!(is_closed(&mut idle));
        server.release.send(()).unwrap();
        assert_eq!(read_response(&mut busy).unwrap(), (200, "\"/block\"".into()));
    }

    #[test]
    fn when_every_connection_is_being_handled_a_new_one_gets_503() {
        let server = Server::start(limits(1, 5_000, 30_000));
        let mut busy = server.connect();
        busy.write_all(b"GET /block HTTP/1.1\r\n\r\n").unwrap();
        server.entered.recv().unwrap();
        let (status, body) = read_response(&mut server.connect()).expect("a 503");
        assert_eq!(status, 503);
        assert!(body.contains("all 1 connections are busy"), "{body}");
        server.release.send(()).unwrap();
        assert_eq!(read_response(&mut busy).unwrap().0, 200);
        // The slot is free again once that request is answered.
        assert_eq!(get(&mut busy, "/").unwrap().0, 200);
    }

    #[test]
    fn an_idle_connection_is_closed_after_the_idle_timeout() {
        let idle_timeout = Duration::from_millis(300);
        let server = Server::start(limits(4, 5_000, 300));
        let mut stream = server.connect();
        assert_eq!(get(&mut stream, "/").unwrap().0, 200);
        let answered = Instant::now();
        // The server's close ends this read (bounded by the 10 s read timeout).
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).unwrap(), 0);
        let closed_after = answered.elapsed();
        assert!(closed_after >= idle_timeout * 9 / 10, "closed after {closed_after:?}");
        assert!(closed_after < idle_timeout + Duration::from_secs(2), "closed only after {closed_after:?}");
    }

    #[test]
    fn malformed_requests_get_400_and_the_connection_closes() {
        let server = Server::start(Limits::default());
        let mut stream = server.connect();
        stream.write_all(b"BREW / HTTP/1.1\r\n\r\n").unwrap();
        let (status, body) = read_response(&mut stream).unwrap();
        assert_eq!(status, 400);
        assert!(body.contains("Unsupported HTTP method BREW"), "{body}");
        assert!(is_closed(&mut stream));
    }
}
