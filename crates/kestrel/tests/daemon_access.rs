//! Who may use the daemon's socket (root only): it is 0660 and belongs to group `kestrel` when
//! that group exists; a process outside the group is refused at `connect` (EACCES) and a member
//! gets in. Membership of that group is root-equivalent (README, "Who may use the daemon").

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::Daemon;

/// The group the daemon hands its socket to (manager::daemon::SOCKET_GROUP).
const GROUP: &str = "kestrel";
/// `nobody` / `nogroup`: an unprivileged user in no other group.
const NOBODY: libc::uid_t = 65534;
const NOGROUP: libc::gid_t = 65534;
/// How long a connecting child may take.
const CHILD_LIMIT: Duration = Duration::from_secs(10);

/// Group `kestrel` for the test: the host's when it has one (kept), else one made here and
/// removed when the guard drops (also when the test fails).
struct GroupGuard {
    gid: libc::gid_t,
    created: bool,
}

impl GroupGuard {
    fn get() -> GroupGuard {
        if let Some(gid) = gid_of(GROUP) {
            return GroupGuard { gid, created: false };
        }
        let status = Command::new("groupadd").args(["--system", GROUP]).status().expect("run groupadd");
        assert!(status.success(), "groupadd {GROUP}: {status}");
        let gid = gid_of(GROUP).expect("the group groupadd made");
        GroupGuard { gid, created: true }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.created {
            let _ = Command::new("groupdel").arg(GROUP).status();
        }
    }
}

fn gid_of(name: &str) -> Option<libc::gid_t> {
    let name = CString::new(name).unwrap();
    // SAFETY: getgrnam reads a NUL-terminated name; the record it returns is read at once,
    // before any other getgr* call of this thread.
    let group = unsafe { libc::getgrnam(name.as_ptr()) };
    if group.is_null() {
        return None;
    }
    // SAFETY: non-null: a valid group record.
    Some(unsafe { (*group).gr_gid })
}

/// Forks a child that becomes `uid`/`gid` with exactly the supplementary `groups` and connects
/// to `socket`. `Ok(())` if it connected, else the child's `connect` errno.
fn connect_as(socket: &Path, uid: libc::uid_t, gid: libc::gid_t, groups: &[libc::gid_t]) -> Result<(), i32> {
    // Everything the child needs is made before the fork: it only makes system calls.
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid (empty) address.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = socket.as_os_str().as_bytes();
    assert!(path.len() < address.sun_path.len(), "socket path too long: {}", socket.display());
    for (slot, byte) in address.sun_path.iter_mut().zip(path) {
        *slot = *byte as libc::c_char;
    }
    let length = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: the child calls only async-signal-safe functions (set*id, socket, connect, _exit)
    // on memory prepared before the fork, then exits without returning.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: see above; the exit codes 200+ say which step failed (errno values are lower).
        unsafe {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                libc::_exit(200);
            }
            if libc::setgid(gid) != 0 {
                libc::_exit(201);
            }
            if libc::setuid(uid) != 0 {
                libc::_exit(202);
            }
            if libc::geteuid() != uid || libc::getegid() != gid {
                libc::_exit(203);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                libc::_exit(204);
            }
            let connected = libc::connect(fd, std::ptr::addr_of!(address).cast(), length);
            libc::_exit(if connected == 0 { 0 } else { *libc::__errno_location() });
        }
    }
    let deadline = Instant::now() + CHILD_LIMIT;
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if waited == pid {
            break;
        }
        assert!(waited == 0, "waitpid: {}", std::io::Error::last_os_error());
        if Instant::now() > deadline {
            // SAFETY: our own child, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("the connecting child did not finish within {CHILD_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(libc::WIFEXITED(status), "the child ended with wait status {status:#x}");
    match libc::WEXITSTATUS(status) {
        0 => Ok(()),
        code @ 200.. => panic!("the child could not set up its credentials (step {code})"),
        errno => Err(errno),
    }
}

#[test]
fn the_socket_admits_its_group_and_refuses_everyone_else() {
    if !common::is_root() {
        eprintln!("skipped: needs root (to start the daemon as root and to change credentials)");
        return;
    }
    let group = GroupGuard::get();
    let daemon = Daemon::start();
    // The test's temporary directory is 0700; open it for traversal so that only the socket's
    // own mode and group decide (as in /run/kestrel, which the daemon makes 0755).
    std::fs::set_permissions(daemon.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();

    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "the socket's mode");
    assert_eq!(meta.gid(), group.gid, "the socket's group should be '{GROUP}'");

    assert_eq!(
        connect_as(&daemon.socket, NOBODY, NOGROUP, &[]),
        Err(libc::EACCES),
        "a user outside the group must be refused"
    );
    assert_eq!(
        connect_as(&daemon.socket, NOBODY, NOGROUP, &[group.gid]),
        Ok(()),
        "a member of group '{GROUP}' must get in"
    );
    // Root still does: the CLI answers (cli_ok fails the test otherwise).
    daemon.cli_ok(&["vm", "list"]);
}
