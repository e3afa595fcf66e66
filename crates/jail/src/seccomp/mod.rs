//! Per-thread seccomp filters.
//!
//! Each thread role ([`ThreadRole`]) has an allow-list in `crates/jail/seccomp/x86_64.json`
//! (Firecracker's JSON format), compiled into BPF by build.rs; run time only installs it. The
//! binary sets the process-wide [`Mode`] once ([`set_mode`]); the library default is
//! [`Mode::Off`], so nothing is filtered in unit tests. Then threads are started with [`spawn`]
//! (which confines them to their role as they start) and the main thread calls [`enter`] once the
//! VM is built. A forbidden system call stops the process with status [`EXIT_STATUS`] and one line
//! on stderr naming the thread and the call.

mod filters;
mod role;
mod sigsys;
mod spawner;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

pub use filters::{syscall_count, syscall_name};
pub use role::ThreadRole;
pub use sigsys::EXIT_STATUS;

/// Whether Kestrel's threads are confined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No filters (the library default; `--seccomp off`).
    Off,
    /// Every thread runs under its role's filter.
    Enforce,
}

/// Why the filters could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot install the seccomp filter of the {role} thread: {source}")]
    Install { role: &'static str, source: seccompiler::Error },
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(io::Error),
    #[error("cannot start the seccomp spawner thread: {0}")]
    Spawner(io::Error),
}

static ENFORCING: AtomicBool = AtomicBool::new(false);

/// Sets the process-wide mode; call once, early, from the main thread. `Enforce` installs the
/// SIGSYS handler and starts the thread [`spawn`] starts threads from.
pub fn set_mode(mode: Mode) -> Result<(), Error> {
    if mode == Mode::Enforce {
        sigsys::install().map_err(Error::Handler)?;
        #[cfg(debug_assertions)]
        test_hook::read_env();
        spawner::start()?;
    }
    ENFORCING.store(mode == Mode::Enforce, Ordering::SeqCst);
    Ok(())
}

/// The mode [`set_mode`] set.
pub fn mode() -> Mode {
    if ENFORCING.load(Ordering::SeqCst) {
        Mode::Enforce
    } else {
        Mode::Off
    }
}

/// Confines the calling thread to `role`: sets NO_NEW_PRIVS and installs the role's filter (on top
/// of any it already has). Does nothing when the mode is [`Mode::Off`].
pub fn enter(role: ThreadRole) -> Result<(), Error> {
    if role != ThreadRole::Spawner && mode() == Mode::Off {
        return Ok(());
    }
    sigsys::remember_thread(role);
    seccompiler::apply_filter(&filters::program(role))
        .map_err(|source| Error::Install { role: role.name(), source })?;
    CONFINED.with(|confined| confined.set(true));
    #[cfg(debug_assertions)]
    test_hook::maybe_violate(role);
    Ok(())
}

/// [`enter`] for a thread that has nobody to report to: a thread that cannot be confined must not
/// run, so the process ends (status 1) with the reason on stderr.
fn enter_or_exit(role: ThreadRole) {
    if let Err(e) = enter(role) {
        eprintln!("kestrel: error: {e}");
        std::process::exit(1);
    }
}

thread_local! {
    /// Whether this thread has entered a role (its filters are installed).
    static CONFINED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Starts `f` on a thread made by `builder`, confined to `role` before `f` runs. With
/// [`Mode::Off`] this is `builder.spawn(f)`. A thread not yet confined — the main thread while it
/// builds the VM, which starts the vCPUs and the API thread — starts its threads itself, so they
/// carry their own filter alone (a vCPU then runs one filter on each KVM_RUN, not two); a confined
/// thread hands the start to the spawner thread (see `spawner`).
pub fn spawn<F, T>(role: ThreadRole, builder: std::thread::Builder, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match mode() {
        Mode::Off => builder.spawn(move || spawner::begin(role, f)),
        Mode::Enforce if CONFINED.with(std::cell::Cell::get) => spawner::spawn(role, builder, f),
        Mode::Enforce => spawner::spawn_from_here(role, builder, f),
    }
}

/// Runs `f` where every thread [`spawn`] starts from now on inherits its effects: on the spawner
/// thread with [`Mode::Enforce`], else on the calling thread. For process-wide confinement that
/// is per thread in Linux, such as Landlock's `landlock_restrict_self` (allowed on the spawner;
/// make the ruleset on the calling thread, descriptors are shared). Threads already running are
/// not affected.
pub fn run_where_threads_start<R, F>(f: F) -> io::Result<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    match mode() {
        Mode::Off => Ok(f()),
        Mode::Enforce => spawner::run_here(f),
    }
}

/// Debug builds only: `KESTREL_SECCOMP_TEST_VIOLATE=<role>` makes the first thread of that role
/// make one forbidden system call (getpgrp) right after its filter is installed, so tests can see
/// the violation path work for every role.
#[cfg(debug_assertions)]
mod test_hook {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;

    use super::ThreadRole;

    static TARGET: OnceLock<Option<ThreadRole>> = OnceLock::new();
    static FIRED: AtomicU32 = AtomicU32::new(0);

    pub(super) fn read_env() {
        let target =
            std::env::var("KESTREL_SECCOMP_TEST_VIOLATE").ok().and_then(|name| ThreadRole::from_name(&name));
        let _ = TARGET.set(target);
    }

    pub(super) fn maybe_violate(role: ThreadRole) {
        let bit = 1u32 << role.index();
        if TARGET.get().copied().flatten() == Some(role) && FIRED.fetch_or(bit, Ordering::SeqCst) & bit == 0 {
            // SAFETY: getpgrp has no arguments and no effect; the filter traps it.
            unsafe { libc::syscall(libc::SYS_getpgrp) };
        }
    }
}

#[cfg(test)]
mod tests;
