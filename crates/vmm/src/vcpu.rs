//! vCPU threads: each runs KVM_RUN in a loop and dispatches port I/O and MMIO exits to the buses.
//!
//! A vCPU thread stops when its guest ends the VM (a triple fault, a failure KVM reports, a reset or
//! power-off system event) or when the VMM kicks it: [`VcpuThread::kick`] sets the shared stop flag,
//! then signals the thread. The signal handler sets `immediate_exit` in the thread's `kvm_run`, so a
//! kick that lands just before KVM_RUN is entered is not lost: KVM_RUN returns EINTR at once.
//!
//! Pausing uses the same kick. [`VcpuShared::pause`] sets the pause request, then kicks every vCPU
//! thread. Each one leaves KVM_RUN at a consistent point: when its last KVM_RUN returned an exit
//! (a port or MMIO access, say), the access is complete only once KVM_RUN is entered again, so the
//! thread first re-enters it with `immediate_exit` set; KVM finishes the pending operation (a read's
//! data reaches the guest's register) and returns EINTR without running guest code. Then the thread
//! parks on a condvar until [`VcpuShared::resume`] or a stop. The requester waits, bounded, until
//! every live vCPU thread has parked. Device worker threads keep running while the vCPUs are
//! paused; a snapshot holds them as well (each worker stops between two requests, see
//! `snapshot::create`) while it reads the devices' state and guest RAM.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::ioapic::Ioapic;
use devices::{Bus, GuestErrorLog};
use kvm_bindings::{kvm_run, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::metrics::VcpuMetrics;
use crate::outcome::VmOutcome;
use crate::snapshot::vcpu_state::{self, VcpuState};
use crate::snapshot::SnapshotError;
use crate::{Error, Result};

/// What every vCPU thread of a VM shares.
pub struct VcpuShared {
    pub pio_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub ioapic: Arc<Mutex<Ioapic>>,
    /// Set by the VMM before kicking the vCPUs: leave the run loop.
    stop: AtomicBool,
    /// Unhandled MMIO accesses, rate-limited: a guest probing an empty range must not flood
    /// the log.
    unhandled_mmio: GuestErrorLog,
    /// Mirrors `PauseState::requested`, so the run loop checks it without taking the lock.
    pause_requested: AtomicBool,
    pause: Mutex<PauseState>,
    /// Signalled when the pause request is withdrawn or the VMM stops the vCPUs: parked threads
    /// re-check whether to go on.
    unparked: Condvar,
    /// Signalled when a vCPU thread parks or ends: the pause requester re-counts.
    parked_changed: Condvar,
    /// Where a vCPU reports that its guest ended the VM.
    ended: Mutex<Sender<VmOutcome>>,
    /// How many vCPUs the VM has (threads register as they start).
    vcpu_count: usize,
    ended_event: EventFd,
    /// Each vCPU's counters, by index (none until [`VcpuShared::with_metrics`]).
    metrics: Arc<[VcpuMetrics]>,
    /// Where each vCPU thread runs, and where the VMM's other threads go before they start.
    placement: crate::placement::ThreadPlacement,
}

impl VcpuShared {
    /// `ended_event` is signalled after each report sent on `ended`, for the VMM's event loop.
    pub fn new(
        pio_bus: Arc<Bus>,
        mmio_bus: Arc<Bus>,
        ioapic: Arc<Mutex<Ioapic>>,
        ended: Sender<VmOutcome>,
        ended_event: EventFd,
        vcpu_count: usize,
    ) -> Self {
        VcpuShared {
            pio_bus,
            mmio_bus,
            ioapic,
            stop: AtomicBool::new(false),
            unhandled_mmio: GuestErrorLog::new("vCPUs"),
            pause_requested: AtomicBool::new(false),
            pause: Mutex::new(PauseState::default()),
            unparked: Condvar::new(),
            parked_changed: Condvar::new(),
            ended: Mutex::new(ended),
            vcpu_count,
            ended_event,
            metrics: Arc::default(),
            placement: Default::default(),
        }
    }

    /// Gives vCPU N the counters `metrics[N]`.
    pub fn with_metrics(self, metrics: Arc<[VcpuMetrics]>) -> Self {
        VcpuShared { metrics, ..self }
    }

    /// Gives the vCPU threads (and the VMM's other threads) their host CPUs and priority.
    pub fn with_placement(self, placement: crate::placement::ThreadPlacement) -> Self {
        VcpuShared { placement, ..self }
    }

    /// Where the vCPU threads and the VMM's other threads run.
    pub fn placement(&self) -> &crate::placement::ThreadPlacement {
        &self.placement
    }

    pub fn metrics(&self) -> Arc<[VcpuMetrics]> {
        self.metrics.clone()
    }

    fn lock_pause(&self) -> MutexGuard<'_, PauseState> {
        // The state stays consistent under panics (plain counters), so a poisoned lock is usable.
        self.pause.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Parks every vCPU: returns once each live vCPU thread has parked, or `timeout` has passed (then
    /// the request is withdrawn, the vCPUs go on, and the error says so). Pausing a paused VM
    /// succeeds at once. A vCPU thread that has not started yet parks before it first enters the
    /// guest, so it is not waited for.
    pub fn pause(&self, timeout: Duration) -> Result<()> {
        let mut state = self.lock_pause();
        if state.requested && state.parked >= state.threads.len() {
            return Ok(());
        }
        state.requested = true;
        self.pause_requested.store(true, Ordering::SeqCst);
        for &(index, thread) in &state.threads {
            // SAFETY: `thread` is registered, so it has not yet run its end-of-thread cleanup (which
            // unregisters it under this lock, held here): the pthread_t names a live thread.
            let ret = unsafe { libc::pthread_kill(thread, kick_signal()) };
            if ret != 0 {
                tracing::warn!("cannot kick vCPU {index}: {}", std::io::Error::from_raw_os_error(ret));
            }
        }
        let deadline = Instant::now() + timeout;
        while state.parked < state.threads.len() {
            let now = Instant::now();
            if now >= deadline {
                let (parked, live) = (state.parked, state.threads.len());
                drop(state);
                self.resume();
                return Err(Error::PauseTimeout { timeout, parked, live });
            }
            state = self
                .parked_changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(())
    }

    /// Withdraws the pause request: parked vCPUs go back into the guest. Resuming a running VM does
    /// nothing.
    pub fn resume(&self) {
        let mut state = self.lock_pause();
        state.requested = false;
        self.pause_requested.store(false, Ordering::SeqCst);
        drop(state);
        self.unparked.notify_all();
    }

    /// Whether a pause is in force (requested and not withdrawn).
    pub fn is_paused(&self) -> bool {
        self.lock_pause().requested
    }

    /// Waits until every vCPU thread has started and parked, so their KVM state holds still (a VM
    /// paused before it ran parks its threads as they start). Fails at once if no pause is in
    /// force, and after `timeout`.
    pub fn wait_fully_paused(&self, timeout: Duration) -> std::result::Result<(), SnapshotError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock_pause();
        loop {
            if !state.requested || self.stop.load(Ordering::SeqCst) {
                return Err(SnapshotError::NotPaused);
            }
            if state.parked == state.threads.len() && state.threads.len() == self.vcpu_count {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(SnapshotError::NotParked(timeout));
            }
            state = self
                .parked_changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Has every parked vCPU read its own KVM state (the vCPU fds belong to their threads) and
    /// returns the states in vCPU order. The VM must be fully paused.
    pub fn save_states(
        &self,
        msr_indices: &[u32],
        timeout: Duration,
    ) -> std::result::Result<Vec<VcpuState>, SnapshotError> {
        let mut state = self.lock_pause();
        state.save = Some(SaveRequest { msr_indices: msr_indices.to_vec(), results: Vec::new() });
        self.unparked.notify_all();
        let deadline = Instant::now() + timeout;
        loop {
            let request = state.save.as_ref().expect("the save request stays until taken here");
            if request.results.len() >= self.vcpu_count {
                break;
            }
            let now = Instant::now();
            if now >= deadline || !state.requested || self.stop.load(Ordering::SeqCst) {
                let missing = (0..self.vcpu_count as u8)
                    .find(|i| !request.results.iter().any(|(index, _)| index == i))
                    .unwrap_or(0);
                state.save = None;
                return Err(SnapshotError::VcpuTimeout(missing, timeout));
            }
            state = self
                .parked_changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let mut results = state.save.take().expect("checked above").results;
        results.sort_by_key(|(index, _)| *index);
        results.into_iter().map(|(_, result)| result).collect()
    }

    /// Sets the stop flag and wakes parked vCPUs, which then see it and end.
    /// Lets the vCPU threads enter the guest (see `PauseState::started`).
    pub fn open_start(&self) {
        self.lock_pause().started = true;
        self.unparked.notify_all();
    }

    /// Waits until [`VcpuShared::open_start`] or a stop.
    fn wait_for_start(&self) {
        let mut state = self.lock_pause();
        while !state.started && !self.stop.load(Ordering::SeqCst) {
            state = self.unparked.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Taking the lock after the store orders it against a parking thread's check of the flag:
        // that thread either sees the flag or is already waiting and gets the notification.
        drop(self.lock_pause());
        self.unparked.notify_all();
    }

    /// Called by a vCPU thread before its run loop, so that [`VcpuShared::pause`] can kick it.
    fn register_thread(&self, index: u8) {
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        self.lock_pause().threads.push((index, thread));
    }

    /// Called by a vCPU thread as it ends (also when unwinding).
    fn unregister_thread(&self, index: u8) {
        let mut state = self.lock_pause();
        state.threads.retain(|&(i, _)| i != index);
        drop(state);
        self.parked_changed.notify_all();
    }

    /// Parks the calling vCPU thread while a pause is requested and no stop is; while parked, it
    /// saves its state when a snapshot asks.
    fn park(&self, index: u8, vcpu: &VcpuFd) {
        let mut state = self.lock_pause();
        if !state.requested || self.stop.load(Ordering::SeqCst) {
            return;
        }
        state.parked += 1;
        self.parked_changed.notify_all();
        while state.requested && !self.stop.load(Ordering::SeqCst) {
            if let Some(request) = &mut state.save {
                if !request.results.iter().any(|(i, _)| *i == index) {
                    let saved = vcpu_state::save(vcpu, &request.msr_indices);
                    request.results.push((index, saved));
                    self.parked_changed.notify_all();
                    continue;
                }
            }
            state = self.unparked.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        state.parked -= 1;
    }

    fn report(&self, outcome: VmOutcome) {
        // A send fails only when the VMM has already stopped listening; nothing is left to tell.
        if let Ok(sender) = self.ended.lock() {
            let _ = sender.send(outcome);
        }
        if let Err(e) = self.ended_event.write(1) {
            tracing::error!("cannot wake the VMM event loop: {e}");
        }
    }
}

/// The pause state machine's shared part, under one lock.
#[derive(Default)]
struct PauseState {
    /// The VMM wants the vCPUs parked.
    requested: bool,
    /// How many vCPU threads are parked now.
    parked: usize,
    /// The vCPU threads that have started and not ended: their index and pthread, for the kick.
    threads: Vec<(u8, libc::pthread_t)>,
    /// A snapshot's request that the parked vCPUs save their state.
    save: Option<SaveRequest>,
    /// Set by the main thread once it is confined (its seccomp filter installed): until then the
    /// vCPU threads, already confined themselves, wait before entering the guest.
    started: bool,
}

/// What each parked vCPU adds its saved state (or why it could not) to.
struct SaveRequest {
    msr_indices: Vec<u32>,
    results: Vec<(u8, std::result::Result<VcpuState, SnapshotError>)>,
}

thread_local! {
    /// This thread's `kvm_run`, for the kick signal handler. Const-initialised and without a
    /// destructor, so reading it from a signal handler is a plain TLS load.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(ptr::null_mut()) };
}

extern "C" fn handle_kick(_: c_int, _: *mut siginfo_t, _: *mut c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer was set by this very thread from its VcpuFd's live kvm_run mapping and is
        // cleared before that VcpuFd is dropped; writing one byte is async-signal-safe.
        unsafe { ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

fn kick_signal() -> c_int {
    SIGRTMIN()
}

/// Installs the kick handler once per process.
fn install_kick_handler() -> Result<()> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = register_signal_handler(kick_signal(), handle_kick)
            .map_err(|e| Error::VcpuSpawn { index: 0, source: std::io::Error::from_raw_os_error(e.errno()) });
    });
    result
}

/// A running vCPU thread.
pub struct VcpuThread {
    index: u8,
    handle: JoinHandle<()>,
}

impl VcpuThread {
    /// Starts vCPU `index` on its own thread.
    pub fn spawn(index: u8, vcpu: VcpuFd, shared: Arc<VcpuShared>) -> Result<VcpuThread> {
        install_kick_handler()?;
        let builder = std::thread::Builder::new().name(format!("fc_vcpu {index}"));
        let handle = jail::seccomp::spawn(jail::seccomp::ThreadRole::Vcpu, builder, move || {
            run_vcpu(index, vcpu, &shared)
        })
        .map_err(|source| Error::VcpuSpawn { index, source })?;
        Ok(VcpuThread { index, handle })
    }

    /// Makes the thread leave KVM_RUN (the caller has set the stop flag first).
    pub fn kick(&self) {
        if self.handle.is_finished() {
            return;
        }
        if let Err(e) = self.handle.kill(kick_signal()) {
            tracing::warn!("cannot kick vCPU {}: {e}", self.index);
        }
    }

    pub fn join(self) {
        if self.handle.join().is_err() {
            tracing::error!("vCPU {} thread panicked", self.index);
        }
    }
}

/// Stops every vCPU and waits for their threads to end.
pub fn stop_all(shared: &VcpuShared, threads: Vec<VcpuThread>) {
    shared.request_stop();
    for thread in &threads {
        thread.kick();
    }
    for thread in threads {
        thread.join();
    }
}

/// Unregisters the vCPU thread as it ends, so a pause does not wait for it; and reports a vCPU thread
/// that unwinds (a bug): without the report the VMM would wait forever for a vCPU that is gone.
/// (Release builds abort on panic instead, which ends the process too.)
struct ReportIfUnwinding<'a> {
    index: u8,
    shared: &'a VcpuShared,
}

impl Drop for ReportIfUnwinding<'_> {
    fn drop(&mut self) {
        self.shared.unregister_thread(self.index);
        if std::thread::panicking() {
            let reason = "the vCPU thread panicked".to_owned();
            self.shared.report(VmOutcome::VcpuFailure { vcpu: self.index, rip: 0, reason });
        }
    }
}

/// The thread body: run until the guest ends the VM or the VMM stops us.
fn run_vcpu(index: u8, mut vcpu: VcpuFd, shared: &VcpuShared) {
    shared.register_thread(index);
    let _report_if_unwinding = ReportIfUnwinding { index, shared };
    // Placement first: the thread's seccomp filter, installed next, does not allow these calls.
    if let Err(e) = shared.placement.apply_to_vcpu(index) {
        shared.report(VmOutcome::VcpuFailure { vcpu: index, rip: 0, reason: e.to_string() });
        return;
    }
    KVM_RUN.with(|cell| cell.set(vcpu.get_kvm_run()));
    shared.wait_for_start();
    let metrics = shared.metrics.get(usize::from(index));
    // Whether the last KVM_RUN returned an exit, whose operation KVM completes only on the next
    // entry: the vCPU must not park (nor its state be read) before that.
    let mut exit_pending = false;
    while !shared.stop.load(Ordering::SeqCst) {
        if shared.pause_requested.load(Ordering::SeqCst) {
            if exit_pending {
                // KVM finishes the pending operation, then returns EINTR before running guest code.
                vcpu.set_kvm_immediate_exit(1);
            } else {
                shared.park(index, &vcpu);
                continue;
            }
        }
        let step = match vcpu.run() {
            Ok(exit) => {
                exit_pending = true;
                if let Some(metrics) = metrics {
                    metrics.count_exit(&exit);
                }
                handle_exit(exit, shared)
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                exit_pending = false;
                Step::Continue
            }
            Err(e) => Step::Fail(format!("KVM_RUN failed: {e}")),
        };
        let outcome = match step {
            Step::Continue => continue,
            Step::End(outcome) => outcome,
            Step::TripleFault => VmOutcome::TripleFault { vcpu: index, rip: rip(&vcpu) },
            Step::InternalError => {
                let reason = internal_error_reason(&mut vcpu);
                VmOutcome::VcpuFailure { vcpu: index, rip: rip(&vcpu), reason }
            }
            Step::Fail(reason) => VmOutcome::VcpuFailure { vcpu: index, rip: rip(&vcpu), reason },
        };
        if let Some(metrics) = metrics {
            metrics.count_end(&outcome);
        }
        shared.report(outcome);
        break;
    }
    KVM_RUN.with(|cell| cell.set(ptr::null_mut()));
}

/// What the run loop does after one exit.
enum Step {
    Continue,
    End(VmOutcome),
    TripleFault,
    InternalError,
    Fail(String),
}

fn handle_exit(exit: VcpuExit<'_>, shared: &VcpuShared) -> Step {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !shared.pio_bus.read(u64::from(port), data) {
                data.fill(0xff);
                tracing::trace!("unhandled port read {port:#x}");
            }
        }
        VcpuExit::IoOut(port, data) => {
            if !shared.pio_bus.write(u64::from(port), data) {
                tracing::trace!("unhandled port write {port:#x}");
            }
        }
        VcpuExit::MmioRead(address, data) => {
            if !shared.mmio_bus.read(address, data) {
                // Like a PCI master abort: reads of nothing return all ones.
                data.fill(0xff);
                log_unhandled_mmio(shared, "read", address, data.len());
            }
        }
        VcpuExit::MmioWrite(address, data) => {
            if !shared.mmio_bus.write(address, data) {
                log_unhandled_mmio(shared, "write", address, data.len());
            }
        }
        VcpuExit::IoapicEoi(vector) => match shared.ioapic.lock() {
            Ok(mut ioapic) => ioapic.end_of_interrupt(vector),
            Err(_) => return Step::Fail("the IOAPIC lock is poisoned".into()),
        },
        // With the local APIC in KVM, HLT is handled in the kernel; an HLT exit is harmless.
        VcpuExit::Hlt => {}
        VcpuExit::Shutdown => return Step::TripleFault,
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => return Step::End(VmOutcome::PowerOff),
            KVM_SYSTEM_EVENT_RESET => return Step::End(VmOutcome::Reset),
            other => return Step::Fail(format!("unexpected system event {other}")),
        },
        VcpuExit::InternalError => return Step::InternalError,
        VcpuExit::FailEntry(reason, cpu) => {
            return Step::Fail(format!(
                "KVM could not enter the guest (hardware reason {reason:#x}, host CPU {cpu})"
            ))
        }
        other => return Step::Fail(format!("unhandled KVM exit {other:?}")),
    }
    Step::Continue
}

fn log_unhandled_mmio(shared: &VcpuShared, access: &str, address: u64, len: usize) {
    shared
        .unhandled_mmio
        .log(format_args!("unhandled MMIO {access} of {len} bytes at {address:#x}: no device there"));
}

fn rip(vcpu: &VcpuFd) -> u64 {
    vcpu.get_regs().map(|regs| regs.rip).unwrap_or(0)
}

/// Describes a KVM_EXIT_INTERNAL_ERROR from its suberror code.
fn internal_error_reason(vcpu: &mut VcpuFd) -> String {
    // SAFETY: called right after KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, so `internal` is the union
    // member KVM filled in.
    let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
    let what = match suberror {
        kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => "KVM could not emulate an instruction",
        kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
        kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => "KVM could not deliver an event",
        _ => "KVM internal error",
    };
    format!("{what} (KVM_EXIT_INTERNAL_ERROR, suberror {suberror})")
}
