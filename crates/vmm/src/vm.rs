//! A built VM and its event loop: the main thread waits for the guest or the user to end the run,
//! and feeds the serial console and serves the VMM's controller ([`LoopClient`]) meanwhile.

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use kvm_ioctls::VcpuFd;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::builder::DeviceHandles;
use crate::console::{ConsoleInput, EscapeParser, RawTerminal};
use crate::controls::DeviceControls;
use crate::metrics::VmMetrics;
use crate::outcome::VmOutcome;
use crate::snapshot::{self, SnapshotReport, SnapshotRequest, SnapshotSources};
use crate::vcpu::{self, VcpuShared, VcpuThread};
use crate::{Error, Result};

/// Signals that end the VM gracefully (terminal restored, vCPUs stopped) instead of killing it.
const TERMINATION_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Event-loop tokens.
const TOKEN_STDIN: u64 = 0;
const TOKEN_SERIAL_DRAINED: u64 = 1;
const TOKEN_RESET: u64 = 2;
const TOKEN_POWER_OFF: u64 = 3;
const TOKEN_VCPU_ENDED: u64 = 4;
const TOKEN_SIGNAL: u64 = 5;
const TOKEN_CONTROL: u64 = 6;

/// Something else the VM's event loop serves on the main thread (the control thread's requests):
/// its fd becomes readable when it has work.
pub trait LoopClient {
    /// The fd the loop watches for readability.
    fn fd(&self) -> RawFd;
    /// The fd is readable: do the work (without blocking: the loop serves the VM meanwhile).
    fn ready(&mut self);
}

/// How long [`VmHandle::pause`] waits for every vCPU to park.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pauses, resumes and snapshots the VM from another thread (the controller's snapshot thread,
/// or any other) while [`Vm::run`] runs it, and reaches its devices.
///
/// A pause stops the vCPUs; device worker threads (virtio queues, the console) keep serving what
/// the guest queued before. A snapshot holds the workers too while it reads the devices' state.
#[derive(Clone)]
pub struct VmHandle {
    shared: Arc<VcpuShared>,
    pub(crate) sources: Arc<SnapshotSources>,
    devices: DeviceControls,
}

impl VmHandle {
    /// Returns once every vCPU has left the guest at a consistent point (in-flight port and MMIO
    /// accesses completed) and parked, or fails after [`PAUSE_TIMEOUT`] (the VM then goes on
    /// running). Pausing a paused VM succeeds. Stopping the VM (a signal, the console escape)
    /// works while it is paused.
    pub fn pause(&self) -> Result<()> {
        self.shared.pause(PAUSE_TIMEOUT)
    }

    /// Lets the vCPUs go back into the guest. Resuming a running VM does nothing.
    pub fn resume(&self) {
        self.shared.resume();
    }

    pub fn is_paused(&self) -> bool {
        self.shared.is_paused()
    }

    /// Writes a snapshot of the paused VM (see [`crate::snapshot`]); the VM stays paused.
    pub fn snapshot(&self, request: &SnapshotRequest) -> Result<SnapshotReport> {
        Ok(snapshot::create(&self.sources, &self.shared, request)?)
    }

    /// Writes a snapshot of the paused VM to streams instead of files (a socket to another host,
    /// a pipe): the state, then guest RAM, for `builder::restore_from_streams`. The VM stays
    /// paused.
    pub fn snapshot_to_streams(
        &self,
        kind: snapshot::SnapshotKind,
        state: &mut dyn std::io::Write,
        memory: &mut dyn std::io::Write,
    ) -> Result<SnapshotReport> {
        let target = snapshot::SnapshotTarget::Streams { state, memory };
        Ok(snapshot::create_into(&self.sources, &self.shared, kind, target)?)
    }

    /// The devices the API changes while the guest runs (or is paused).
    pub fn devices(&self) -> &DeviceControls {
        &self.devices
    }
}

/// A VM that is built and ready to run.
pub struct Vm {
    // Field order is drop order: vCPU fds and KVM state go before the memory they map.
    vcpus: Vec<VcpuFd>,
    shared: Arc<VcpuShared>,
    ended: Receiver<VmOutcome>,
    ended_event: EventFd,
    devices: DeviceHandles,
    metrics: Arc<VmMetrics>,
    /// Holds the VM fd and guest RAM too, so they outlive the vCPU fds above.
    sources: Arc<SnapshotSources>,
}

impl Vm {
    pub(crate) fn new(
        vcpus: Vec<VcpuFd>,
        shared: Arc<VcpuShared>,
        ended: Receiver<VmOutcome>,
        ended_event: EventFd,
        mut devices: DeviceHandles,
        sources: Arc<SnapshotSources>,
    ) -> Vm {
        let device_metrics = std::mem::take(&mut devices.virtio.metrics);
        let metrics = Arc::new(VmMetrics::new(shared.metrics(), device_metrics));
        Vm { vcpus, shared, ended, ended_event, devices, metrics, sources }
    }

    /// The balloon's host-side handle, if the VM has a balloon: take it before [`Vm::run`] to set
    /// the target and read the guest's reports from another thread while the guest runs.
    pub fn balloon(&self) -> Option<virtio::balloon::BalloonControl> {
        self.devices.virtio.balloon.clone()
    }

    /// What the VM's vCPUs and devices count: take it before [`Vm::run`] to write metrics from
    /// another thread while the guest runs (and after, the counters outlive the VM).
    pub fn metrics(&self) -> Arc<VmMetrics> {
        self.metrics.clone()
    }

    /// The pause/resume handle: take it before [`Vm::run`] to pause and resume the guest, and change
    /// its devices, from another thread. A pause that comes before `run` starts the vCPUs holds
    /// them before they first enter the guest.
    pub fn handle(&self) -> VmHandle {
        VmHandle {
            shared: self.shared.clone(),
            sources: self.sources.clone(),
            devices: DeviceControls::new(&self.devices, self.sources.config.clone()),
        }
    }

    /// Runs the guest in the foreground until it powers off, resets or fails, or the user stops it.
    pub fn run(self) -> Result<VmOutcome> {
        self.run_with(None)
    }

    /// [`Vm::run`], with the event loop also serving `client` (the VMM's controller) between the
    /// VM's own events.
    pub fn run_with(mut self, client: Option<&mut dyn LoopClient>) -> Result<VmOutcome> {
        let signals = TerminationSignals::block()?;
        let _raw_terminal = if self.devices.serial_input {
            Some(RawTerminal::enter().map_err(Error::EventLoop)?)
        } else {
            None
        };
        // The other threads go to their CPUs before the vCPU threads start (which then set
        // their own): threads started later inherit from the thread that starts them.
        self.shared.placement().apply_to_other_threads()?;
        // The vCPU threads are started before the main thread is confined, so each carries its
        // own filter alone (one filter on every KVM_RUN, not the spawner's too); they wait, already
        // confined, until the main thread is too, before any of them runs guest code.
        let mut threads = Vec::with_capacity(self.vcpus.len());
        for (index, vcpu) in self.vcpus.drain(..).enumerate() {
            let index = u8::try_from(index)
                .map_err(|_| Error::VcpusOutOfRange { requested: u8::MAX, max: arch::layout::MAX_VCPUS })?;
            match VcpuThread::spawn(index, vcpu, self.shared.clone()) {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    vcpu::stop_all(&self.shared, threads);
                    return Err(e);
                }
            }
        }
        if let Err(e) = jail::seccomp::enter(jail::seccomp::ThreadRole::Vmm) {
            vcpu::stop_all(&self.shared, threads);
            return Err(e.into());
        }
        self.shared.open_start();
        let client_fd = client.as_ref().map(|c| c.fd());
        let outcome = EventLoop::new(&self, &signals, client_fd)
            .and_then(|mut event_loop| event_loop.run(&self, client));
        vcpu::stop_all(&self.shared, threads);
        outcome
    }
}

/// The main thread's wait for something to happen.
struct EventLoop {
    epoll: Epoll,
    escape: EscapeParser,
    /// Console input the guest's receive FIFO had no room for yet.
    pending_input: VecDeque<u8>,
    stdin: StdinState,
}

/// Whether the event loop reads the user's keystrokes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StdinState {
    /// Read when readable.
    Watched,
    /// Not read for now: the guest's receive FIFO is full.
    Paused,
    /// A regular file (which epoll cannot watch): read whenever the guest's FIFO has room.
    File,
    /// Never read again: end of input, or a stdin that cannot be read (such as /dev/null).
    Closed,
}

impl EventLoop {
    fn new(vm: &Vm, signals: &TerminationSignals, client_fd: Option<RawFd>) -> Result<EventLoop> {
        let epoll = Epoll::new().map_err(Error::EventLoop)?;
        let mut event_loop = EventLoop {
            epoll,
            escape: EscapeParser::default(),
            pending_input: VecDeque::new(),
            stdin: StdinState::Closed,
        };
        event_loop.watch(vm.devices.reset.as_raw_fd(), TOKEN_RESET)?;
        event_loop.watch(vm.devices.power_off.as_raw_fd(), TOKEN_POWER_OFF)?;
        event_loop.watch(vm.ended_event.as_raw_fd(), TOKEN_VCPU_ENDED)?;
        event_loop.watch(signals.fd.as_raw_fd(), TOKEN_SIGNAL)?;
        if let Some(fd) = client_fd {
            event_loop.watch(fd, TOKEN_CONTROL)?;
        }
        if vm.devices.serial_input {
            let drained = vm.devices.serial.lock().map_err(poisoned)?.input_drained().as_raw_fd();
            event_loop.watch(drained, TOKEN_SERIAL_DRAINED)?;
            match event_loop.watch(libc::STDIN_FILENO, TOKEN_STDIN) {
                Ok(()) => event_loop.stdin = StdinState::Watched,
                // epoll refuses regular files (always readable) and /dev/null (always at its end).
                Err(Error::EventLoop(e)) if e.raw_os_error() == Some(libc::EPERM) => {
                    if stdin_is_regular_file() {
                        event_loop.stdin = StdinState::File;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(event_loop)
    }

    fn watch(&self, fd: RawFd, token: u64) -> Result<()> {
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token))
            .map_err(Error::EventLoop)
    }

    /// Moves stdin to `state`, adding it to or removing it from the epoll set. Closed is final.
    fn set_stdin(&mut self, state: StdinState) -> Result<()> {
        let operation = match (self.stdin, state) {
            (StdinState::Closed, _) => return Ok(()),
            (StdinState::Watched, StdinState::Paused | StdinState::Closed) => Some(ControlOperation::Delete),
            (StdinState::Paused, StdinState::Watched) => Some(ControlOperation::Add),
            _ => None,
        };
        if let Some(operation) = operation {
            self.epoll
                .ctl(operation, libc::STDIN_FILENO, EpollEvent::new(EventSet::IN, TOKEN_STDIN))
                .map_err(Error::EventLoop)?;
        }
        self.stdin = state;
        Ok(())
    }

    fn run(&mut self, vm: &Vm, mut client: Option<&mut dyn LoopClient>) -> Result<VmOutcome> {
        if let Some(outcome) = self.flush_input(vm)? {
            return Ok(outcome);
        }
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            let count = match self.epoll.wait(-1, &mut events) {
                Ok(count) => count,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::EventLoop(e)),
            };
            for event in &events[..count] {
                if event.data() == TOKEN_CONTROL {
                    if let Some(client) = client.as_deref_mut() {
                        client.ready();
                    }
                    continue;
                }
                if let Some(outcome) = self.handle(event.data(), vm)? {
                    return Ok(outcome);
                }
            }
        }
    }

    fn handle(&mut self, token: u64, vm: &Vm) -> Result<Option<VmOutcome>> {
        Ok(match token {
            TOKEN_RESET => Some(VmOutcome::Reset),
            TOKEN_POWER_OFF => Some(VmOutcome::PowerOff),
            TOKEN_VCPU_ENDED => {
                // The event fd is only a wake-up; the channel holds the reports in order.
                let _ = vm.ended_event.read();
                vm.ended.try_recv().ok()
            }
            TOKEN_SIGNAL => Some(VmOutcome::Signal(TerminationSignals::read_pending()?)),
            TOKEN_STDIN => match self.read_stdin()? {
                Some(outcome) => Some(outcome),
                None => self.flush_input(vm)?,
            },
            TOKEN_SERIAL_DRAINED => {
                let _ = vm.devices.serial.lock().map_err(poisoned)?.input_drained().read();
                self.flush_input(vm)?
            }
            _ => None,
        })
    }

    /// Reads one chunk of stdin into the pending input, unless it holds the quit escape.
    fn read_stdin(&mut self) -> Result<Option<VmOutcome>> {
        let mut buffer = [0u8; 256];
        let read = match std::io::stdin().lock().read(&mut buffer) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(None),
            Err(e) => return Err(Error::EventLoop(e)),
        };
        if read == 0 {
            // End of input: the guest keeps running without a keyboard.
            self.set_stdin(StdinState::Closed)?;
            return Ok(None);
        }
        Ok(match self.escape.feed(&buffer[..read]) {
            ConsoleInput::Quit => Some(VmOutcome::UserQuit),
            ConsoleInput::Guest(bytes) => {
                self.pending_input.extend(bytes);
                None
            }
        })
    }

    /// Moves pending input into the guest's FIFO, reading more from a stdin file while there is
    /// room. Stops watching stdin while input is waiting, so a fast writer cannot make the VMM
    /// buffer without bound.
    fn flush_input(&mut self, vm: &Vm) -> Result<Option<VmOutcome>> {
        loop {
            if !self.pending_input.is_empty() {
                let bytes = self.pending_input.make_contiguous();
                let accepted = vm.devices.serial.lock().map_err(poisoned)?.enqueue_input(bytes);
                self.pending_input.drain(..accepted);
            }
            if !self.pending_input.is_empty() {
                if self.stdin == StdinState::Watched {
                    self.set_stdin(StdinState::Paused)?;
                }
                return Ok(None);
            }
            match self.stdin {
                StdinState::File => {
                    if let Some(outcome) = self.read_stdin()? {
                        return Ok(Some(outcome));
                    }
                }
                StdinState::Paused => {
                    self.set_stdin(StdinState::Watched)?;
                    return Ok(None);
                }
                StdinState::Watched | StdinState::Closed => return Ok(None),
            }
        }
    }
}

fn stdin_is_regular_file() -> bool {
    // SAFETY: fstat on a valid fd number with a zeroed stat buffer to fill; failure is checked.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        libc::fstat(libc::STDIN_FILENO, &mut stat) == 0 && (stat.st_mode & libc::S_IFMT) == libc::S_IFREG
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::Device { name: "serial (COM1)", reason: "lock poisoned by a panicked thread".into() }
}

/// Termination signals turned into events, so the event loop ends the VM in order.
struct TerminationSignals {
    fd: OwnedFd,
}

impl TerminationSignals {
    /// Blocks the signals in this thread (vCPU threads spawned after inherit the mask) and opens a
    /// signalfd for them.
    fn block() -> Result<TerminationSignals> {
        let set = signal_set();
        // SAFETY: `set` is an initialised sigset; a null old-set pointer is allowed.
        let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if ret != 0 {
            return Err(Error::EventLoop(std::io::Error::from_raw_os_error(ret)));
        }
        // SAFETY: -1 asks for a new signalfd for an initialised sigset.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(Error::EventLoop(std::io::Error::last_os_error()));
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        Ok(TerminationSignals { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    fn read_pending() -> Result<i32> {
        let set = signal_set();
        let mut signo: libc::c_int = 0;
        // SAFETY: the signals in `set` are blocked and pending (the signalfd said so); sigwait takes
        // one of them off and writes its number into `signo`.
        let ret = unsafe { libc::sigwait(&set, &mut signo) };
        if ret != 0 {
            return Err(Error::EventLoop(std::io::Error::from_raw_os_error(ret)));
        }
        Ok(signo)
    }
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t and the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for signal in TERMINATION_SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SerialConfig, VirtioTransport, VmConfig};

    /// Pause/resume cycles while two vCPUs exit to the VMM on every port write: each pause waits
    /// for both to park, nothing is lost, and the guest runs to its normal end once resumed.
    #[test]
    fn pause_and_resume_while_the_guest_does_port_io() {
        if !crate::testing::kvm_available() {
            return;
        }
        let log = std::env::temp_dir().join(format!("kestrel-vmm-pause-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let config = VmConfig {
            kernel: guests::HELLO.into(),
            initrd: None,
            cmdline: "exit=reset loops=100000".into(),
            vcpus: 2,
            memory_bytes: 64 << 20,
            serial: SerialConfig::File(log.clone()),
            virtio: Vec::new(),
            transport: VirtioTransport::Mmio,
            track_dirty_pages: false,
            host: Default::default(),
            cpu_template: None,
        };
        let vm = crate::builder::build(&config).unwrap();
        let handle = vm.handle();
        let metrics = vm.metrics();
        // A pause before run holds the vCPUs before they first enter the guest.
        handle.pause().unwrap();
        assert!(handle.is_paused());
        let pauser = std::thread::spawn(move || {
            for _ in 0..200 {
                handle.resume();
                assert!(!handle.is_paused());
                handle.pause().unwrap();
                // Pausing a paused VM succeeds at once.
                handle.pause().unwrap();
                assert!(handle.is_paused());
            }
            handle.resume();
        });
        let outcome = vm.run().unwrap();
        pauser.join().unwrap();
        let output = std::fs::read_to_string(&log).unwrap();
        let _ = std::fs::remove_file(&log);
        assert_eq!(outcome, VmOutcome::Reset, "{output}");
        assert!(output.contains("loops: 100000\n") && output.contains("exit: reset"), "{output}");
        // Every one of the loop's port writes was counted, none lost to the pauses.
        let groups = metrics.take();
        let exits = |group: &str| groups.iter().find(|(name, _)| name == group).unwrap().1.get("exit_io_out");
        assert!(exits("vcpu_0").unwrap() > 100_000, "{groups:?}");
        assert_eq!(exits("vcpu"), Some(exits("vcpu_0").unwrap() + exits("vcpu_1").unwrap()));
    }
}
