//! `Mode::Enforce` in a process of its own (the mode is process-wide): threads started with
//! `spawn` run under a filter with NO_NEW_PRIVS, started from the spawner thread, which
//! `run_where_threads_start` reaches.

use std::sync::mpsc;

use jail::seccomp::{self, Mode, ThreadRole};

/// `Seccomp:` and `NoNewPrivs:` of thread `tid` of this process, read from the (unfiltered) test
/// thread.
fn confinement(tid: i64) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim().to_owned();
    (field("Seccomp:"), field("NoNewPrivs:"))
}

fn gettid() -> i64 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

#[test]
fn spawned_threads_and_the_spawner_are_filtered() {
    seccomp::set_mode(Mode::Enforce).unwrap();
    assert_eq!(seccomp::mode(), Mode::Enforce);
    // The test thread itself stays unfiltered: only `enter` or `spawn` confine.
    assert_eq!(confinement(gettid()), ("0".into(), "0".into()));

    let (tids, tid) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let builder = std::thread::Builder::new().name("confined".into());
    let thread = seccomp::spawn(ThreadRole::Rng, builder, move || {
        tids.send(gettid()).unwrap();
        // Stay alive (a futex wait, which the rng role allows) until the status is read.
        let _ = released.recv();
        7
    })
    .unwrap();
    let child = tid.recv().unwrap();
    assert_eq!(confinement(child), ("2".into(), "1".into()));
    release.send(()).unwrap();
    assert_eq!(thread.join().unwrap(), 7);

    let spawner = seccomp::run_where_threads_start(gettid).unwrap();
    assert_ne!(spawner, gettid());
    assert_eq!(confinement(spawner), ("2".into(), "1".into()));
}
