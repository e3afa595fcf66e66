//! The host side's Unix sockets, in Firecracker's convention: host processes connect to the
//! device's listening socket and ask for a guest port with `CONNECT <port>\n`; a guest connecting
//! to host port P reaches whoever listens on `<path>_P`.

use std::ffi::OsString;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// How many connections the listening socket queues before the device accepts them.
const BACKLOG: libc::c_int = 128;

/// The longest `CONNECT <port>\n` line a host process may send ("CONNECT 4294967295\n" is 19).
pub const MAX_CONNECT_LINE: usize = 32;

/// Why the device's listening socket cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("{0} is in use: something listens on it")]
    InUse(PathBuf),
    #[error("cannot remove the stale socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
}

/// Listens on `path`, non-blocking. A socket already there that nobody listens on is what a VMM
/// that did not exit cleanly leaves behind: it is replaced. Anything else at `path` (a live
/// socket, a file) is refused, so a second VMM cannot take over the first one's socket.
pub fn listen(path: &Path) -> Result<UnixListener, ListenError> {
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if !metadata.file_type().is_socket() {
            return Err(ListenError::NotASocket(path.to_owned()));
        }
        // A non-blocking connect: a live listener whose backlog is full would block a plain
        // one for ever (and with it the VMM thread building the device); it answers EAGAIN here,
        // which says just as well that something listens.
        match connect_nonblocking(path) {
            Ok(_) => return Err(ListenError::InUse(path.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(ListenError::InUse(path.to_owned()))
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path)
                    .map_err(|source| ListenError::RemoveStale { path: path.to_owned(), source })?;
            }
            Err(source) => return Err(ListenError::Bind { path: path.to_owned(), source }),
        }
    }
    listen_owner_only(path).map_err(|source| ListenError::Bind { path: path.to_owned(), source })
}

/// Binds a non-blocking listening socket at `path` that only its owner may connect to (mode
/// 0600, whatever the umask: the guest's services are behind it). Linux creates the socket file
/// with the socket's own mode less the umask, so the socket is made 0600 before bind: the file
/// is never wider than that, and no path is looked up again (a path-based chmod after bind
/// would follow a symlink swapped in meanwhile). Only a umask that takes the owner's bits away
/// leaves a chmod by path to do, before listen, while nobody can connect yet. The process-wide
/// umask is not touched: that would race other threads creating files.
pub fn listen_owner_only(path: &Path) -> io::Result<UnixListener> {
    let address = socket_address(path)?;
    let socket = new_stream_socket()?;
    // SAFETY: fchmod takes no pointers; the descriptor is our socket.
    if unsafe { libc::fchmod(socket.as_raw_fd(), OWNER_ONLY) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let length = mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `address` is a valid, initialised sockaddr_un of `length` bytes that outlives the call.
    if unsafe { libc::bind(socket.as_raw_fd(), (&address as *const libc::sockaddr_un).cast(), length) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let listening = owner_can_connect(path).and_then(|()| {
        // SAFETY: listen() takes no pointers; the descriptor is our bound socket.
        match unsafe { libc::listen(socket.as_raw_fd(), BACKLOG) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    });
    if let Err(e) = listening {
        // The file bind made would be a stale socket in the way of the next attempt.
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(UnixListener::from(socket))
}

/// The mode of the sockets Kestrel listens on.
const OWNER_ONLY: libc::mode_t = 0o600;

/// Gives the freshly bound socket at `path` its full 0600 if the umask took owner bits away.
fn owner_can_connect(path: &Path) -> io::Result<()> {
    let metadata = std::fs::symlink_metadata(path)?;
    if metadata.file_type().is_socket() && metadata.permissions().mode() & 0o777 == OWNER_ONLY {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(OWNER_ONLY))
}

/// `path` as a Unix socket address.
fn socket_address(path: &Path) -> io::Result<libc::sockaddr_un> {
    // SAFETY: sockaddr_un is plain old data, for which all zeroes is a valid value.
    let mut address: libc::sockaddr_un = unsafe { mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    // One byte stays zero: the path must be NUL-terminated.
    if bytes.len() >= address.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "path too long for a Unix socket"));
    }
    for (slot, &byte) in address.sun_path.iter_mut().zip(bytes) {
        *slot = byte as libc::c_char;
    }
    Ok(address)
}

/// Where a guest connection to host port `port` goes: `<path>_<port>`.
pub fn port_path(path: &Path, port: u32) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(format!("_{port}"));
    PathBuf::from(name)
}

/// A new non-blocking, close-on-exec Unix stream socket.
fn new_stream_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers; the result is checked before use.
    let fd = unsafe {
        libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we just created and own; OwnedFd closes it when dropped.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Connects to `path` without ever blocking: a listener whose backlog is full refuses (EAGAIN)
/// instead of stalling the device's worker, as std's blocking connect would.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let address = socket_address(path)?;
    let socket = new_stream_socket()?;
    let length = mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `address` is a valid, initialised sockaddr_un of `length` bytes that outlives the call.
    let result =
        unsafe { libc::connect(socket.as_raw_fd(), (&address as *const libc::sockaddr_un).cast(), length) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(socket))
}

/// The guest port of a complete `CONNECT <port>` line (its `\n` removed), if it is one.
pub fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let port = text.strip_prefix("CONNECT ")?;
    // u32::from_str accepts a leading '+'; the convention is plain digits.
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// The line the host process gets once the guest accepted: `OK <host port>\n`.
pub fn ok_line(host_port: u32) -> Vec<u8> {
    format!("OK {host_port}\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295"), Some(u32::MAX));
        for bad in [
            &b"CONNECT 4294967296"[..],
            b"CONNECT",
            b"CONNECT ",
            b"CONNECT +5",
            b"CONNECT 5 ",
            b"connect 5",
            b"\xff",
        ] {
            assert_eq!(parse_connect_line(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(ok_line(1073741824), b"OK 1073741824\n");
    }

    #[test]
    fn port_paths_append_the_port() {
        assert_eq!(port_path(Path::new("/run/v.sock"), 52), PathBuf::from("/run/v.sock_52"));
    }

    /// A live listener whose backlog is full (it never accepts) would block a plain connect for
    /// ever, and with it the VMM thread building the device: it is refused as in use at once.
    #[test]
    fn a_listener_with_a_full_backlog_is_in_use_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let address = socket_address(&path).unwrap();
        let socket = new_stream_socket().unwrap();
        let length = mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        let address_ptr = (&address as *const libc::sockaddr_un).cast();
        // SAFETY: a valid sockaddr_un of `length` bytes that outlives the call; our socket.
        let bound = unsafe { libc::bind(socket.as_raw_fd(), address_ptr, length) };
        assert_eq!(bound, 0);
        // SAFETY: listen() takes no pointers. A backlog of 0 holds one pending connection.
        assert_eq!(unsafe { libc::listen(socket.as_raw_fd(), 0) }, 0);
        let mut pending = Vec::new();
        while let Ok(stream) = connect_nonblocking(&path) {
            pending.push(stream);
            assert!(pending.len() < 1000, "the backlog never filled");
        }
        assert!(matches!(listen(&path), Err(ListenError::InUse(_))));
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_or_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let live = listen(&path).unwrap();
        assert!(matches!(listen(&path), Err(ListenError::InUse(_))));
        drop(live); // the file stays behind: stale
        let _replaced = listen(&path).unwrap();

        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(listen(&file), Err(ListenError::NotASocket(_))));
        assert!(matches!(listen(&dir.path().join("no/such/dir")), Err(ListenError::Bind { .. })));
    }

    #[test]
    fn nonblocking_connects_reach_a_listener_or_fail_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock_52");
        assert_eq!(connect_nonblocking(&path).unwrap_err().kind(), io::ErrorKind::NotFound);
        let listener = UnixListener::bind(&path).unwrap();
        let _stream = connect_nonblocking(&path).unwrap();
        listener.accept().unwrap();
        let long = dir.path().join("x".repeat(200));
        assert_eq!(connect_nonblocking(&long).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn the_listening_socket_is_the_owners_alone_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        // SAFETY: umask only swaps the process's file mode mask; restored below. 022 is the
        // usual default, under which bind alone gives 0755.
        let old = unsafe { libc::umask(0o022) };
        let listener = listen(&path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = listener.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        // It listens, non-blocking.
        let _client = UnixStream::connect(&path).unwrap();
        listener.accept().unwrap();
        assert_eq!(listener.accept().unwrap_err().kind(), io::ErrorKind::WouldBlock);

        // A socket whose mode the umask cut (here: one bound as std does, the umask's mode) is
        // set right by path. (Setting a umask that strips the owner's bits would break the
        // other tests running in this process.)
        let path = dir.path().join("w.sock");
        let _other = UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        owner_can_connect(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
}
