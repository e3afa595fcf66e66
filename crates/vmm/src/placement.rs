//! Where the VM's threads run: each vCPU thread pins itself to its host CPUs (and takes its
//! real-time priority) as it starts, and the VMM's other threads are moved to their own CPUs
//! before the vCPUs start (threads started later inherit that from their creator).

use std::io;

use model::host::{CpuSet, HostResources};

/// Why the host cannot place the VM's threads as asked.
#[derive(Debug, thiserror::Error)]
pub enum HostPlacementError {
    #[error(
        "CPU {cpus} named in the CPU placement is not available to this VMM (online and allowed by \
         its cpuset: {online})"
    )]
    CpuNotOnHost { cpus: String, online: String },
    #[error("cannot read the CPUs this VMM may run on: {0}")]
    Allowed(io::Error),
    #[error(
        "vCPU real-time priority {priority} is not allowed: SCHED_FIFO needs CAP_SYS_NICE (or an \
         RLIMIT_RTPRIO of at least {priority}, and real-time time in this cgroup): {source}"
    )]
    RealtimeNotPermitted { priority: u8, source: io::Error },
    #[error("cannot read {path}: {source}")]
    ReadHost { path: String, source: io::Error },
    #[error("{path}: {source}")]
    BadHostList { path: String, source: model::host::CpuListError },
    #[error("cannot set the CPU affinity of {thread} to {cpus}: {source}")]
    Affinity { thread: String, cpus: String, source: io::Error },
    #[error("cannot start the real-time priority check: {0}")]
    Probe(io::Error),
}

/// The placement of one VM's threads, resolved against the host.
#[derive(Clone, Debug, Default)]
pub struct ThreadPlacement {
    /// The CPUs of each vCPU, by index (None: the vCPU keeps what it inherits).
    vcpus: Vec<Option<CpuSet>>,
    /// The CPUs of every other thread.
    others: Option<CpuSet>,
    /// SCHED_FIFO priority of the vCPU threads.
    realtime: Option<u8>,
}

impl ThreadPlacement {
    /// Checks `host` against this host (its CPUs are ones this process may run on, its NUMA node's
    /// CPUs exist, a real-time priority is allowed) and resolves each vCPU's CPUs: its pinned set,
    /// else the NUMA node's CPUs, else (when the other threads are kept apart) every CPU this
    /// process may use, so that a vCPU does not inherit the other threads' CPUs from the thread
    /// that starts it.
    pub fn resolve(host: &HostResources, vcpus: u8) -> Result<ThreadPlacement, HostPlacementError> {
        let cpus = &host.cpus;
        let nothing_asked = cpus.is_default() && host.memory.numa_node.is_none();
        if nothing_asked {
            return Ok(ThreadPlacement::default());
        }
        // The kernel's own answer for this process — online CPUs within its cpuset cgroup and
        // inherited affinity — rather than /sys, which a jail (kestrel jailer) does not have.
        let online = allowed_cpus().map_err(HostPlacementError::Allowed)?;
        let missing = cpus.named_cpus().missing_from(&online);
        if !missing.is_empty() {
            let cpus = CpuSet::from_cpus(missing).map(|s| s.to_string()).unwrap_or_default();
            return Err(HostPlacementError::CpuNotOnHost { cpus, online: online.to_string() });
        }
        let node_cpus = match host.memory.numa_node {
            Some(node) => Some(read_cpu_list(&format!("/sys/devices/system/node/node{node}/cpulist"))?),
            None => None,
        };
        let fallback = node_cpus.or_else(|| cpus.vmm_affinity.as_ref().map(|_| online.clone()));
        let vcpu_sets = (0..usize::from(vcpus))
            .map(|index| cpus.vcpu_set(index).cloned().or_else(|| fallback.clone()))
            .collect();
        if let Some(priority) = cpus.vcpu_realtime_priority {
            probe_realtime(priority)?;
        }
        Ok(ThreadPlacement {
            vcpus: vcpu_sets,
            others: cpus.vmm_affinity.clone(),
            realtime: cpus.vcpu_realtime_priority,
        })
    }

    /// Places the calling thread as vCPU `index`: its CPUs, then its scheduling policy. Called by
    /// the vCPU thread itself, first thing (before its seccomp filter, which does not allow these
    /// calls).
    pub fn apply_to_vcpu(&self, index: u8) -> Result<(), HostPlacementError> {
        if let Some(cpus) = self.vcpus.get(usize::from(index)).and_then(Option::as_ref) {
            set_affinity(0, cpus).map_err(|source| HostPlacementError::Affinity {
                thread: format!("fc_vcpu {index}"),
                cpus: cpus.to_string(),
                source,
            })?;
        }
        if let Some(priority) = self.realtime {
            set_fifo(priority)
                .map_err(|source| HostPlacementError::RealtimeNotPermitted { priority, source })?;
        }
        Ok(())
    }

    /// Moves every thread of this process to the other threads' CPUs, if they are kept apart.
    /// Called on the main thread before the vCPU threads start; threads started later inherit
    /// the CPUs of the thread that starts them (vCPU threads then set their own).
    pub fn apply_to_other_threads(&self) -> Result<(), HostPlacementError> {
        let Some(cpus) = &self.others else { return Ok(()) };
        for tid in threads_of_this_process()? {
            match set_affinity(tid, cpus) {
                Ok(()) => {}
                // The thread ended since the directory was read.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                // A thread the kernel does not let user space place (PF_NO_SETAFFINITY: kernel
                // workers in the process, such as KVM's), or one whose cpuset has none of these
                // CPUs: the kernel's or the administrator's choice, not a reason to stop the VM.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::info!("thread {tid} keeps its CPUs: the kernel refuses to move it to {cpus}");
                }
                Err(source) => {
                    return Err(HostPlacementError::Affinity {
                        thread: format!("thread {tid}"),
                        cpus: cpus.to_string(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }
}

fn read_cpu_list(path: &str) -> Result<CpuSet, HostPlacementError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| HostPlacementError::ReadHost { path: path.into(), source })?;
    CpuSet::parse(text.trim()).map_err(|source| HostPlacementError::BadHostList { path: path.into(), source })
}

/// Every thread of this process, from `/proc/self/task`; where there is no `/proc` (a jail made by
/// `kestrel jailer`), the threads Kestrel started and the calling one.
fn threads_of_this_process() -> Result<Vec<libc::pid_t>, HostPlacementError> {
    let tasks = "/proc/self/task";
    match std::fs::read_dir(tasks) {
        Ok(entries) => Ok(entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str().and_then(|t| t.parse::<libc::pid_t>().ok()))
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut threads = jail::threads::started();
            // SAFETY: gettid has no arguments and cannot fail.
            threads.push(unsafe { libc::gettid() });
            Ok(threads)
        }
        Err(source) => Err(HostPlacementError::ReadHost { path: tasks.into(), source }),
    }
}

/// The CPUs the calling thread may run on (`sched_getaffinity`).
fn allowed_cpus() -> io::Result<CpuSet> {
    // SAFETY: cpu_set_t is plain bits; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a writable cpu_set_t of the size passed; pid 0 is the calling thread.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let capacity = std::mem::size_of::<libc::cpu_set_t>() * 8;
    // SAFETY: every index is below the set's capacity.
    let cpus = (0..capacity).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).map(|cpu| cpu as u32);
    CpuSet::from_cpus(cpus).map_err(io::Error::other)
}

fn set_affinity(tid: libc::pid_t, cpus: &CpuSet) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain bits; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let capacity = std::mem::size_of::<libc::cpu_set_t>() * 8;
    for cpu in cpus.iter() {
        let cpu = cpu as usize;
        if cpu >= capacity {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: `cpu` is below the set's capacity, checked above.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed; the call only changes scheduling.
    if unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_fifo(priority: u8) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: i32::from(priority) };
    // SAFETY: `param` is a valid sched_param; pid 0 is the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this process may run threads SCHED_FIFO at `priority`, asked of the kernel on a
/// short-lived thread (capabilities, RLIMIT_RTPRIO and a cgroup's real-time budget all decide;
/// only trying says what they add up to), so the build fails with a clear error rather than a
/// vCPU after the guest started.
fn probe_realtime(priority: u8) -> Result<(), HostPlacementError> {
    let probe = std::thread::Builder::new()
        .name("kestrel-rt-probe".into())
        .spawn(move || set_fifo(priority))
        .map_err(HostPlacementError::Probe)?;
    let result = probe.join().unwrap_or_else(|_| Err(io::Error::other("the probe thread panicked")));
    result.map_err(|source| HostPlacementError::RealtimeNotPermitted { priority, source })
}

#[cfg(test)]
mod tests {
    use model::host::CpuPlacement;

    use super::*;

    /// The tests that move threads take turns: one moves every thread of the test process.
    static MOVING_THREADS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn affinity_of_this_thread() -> String {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")).unwrap();
        line.split_whitespace().nth(1).unwrap().to_owned()
    }

    #[test]
    fn a_vcpu_thread_pins_itself_to_its_set() {
        let _turn = MOVING_THREADS.lock().unwrap_or_else(|e| e.into_inner());
        let host = HostResources {
            cpus: CpuPlacement {
                vcpu_affinity: vec![CpuSet::parse("0").unwrap(), CpuSet::parse("1").unwrap()],
                ..Default::default()
            },
            ..Default::default()
        };
        let online = allowed_cpus().unwrap();
        if !online.contains(1) {
            // A one-CPU host cannot place two vCPUs apart; the refusal is the test then.
            assert!(matches!(
                ThreadPlacement::resolve(&host, 2),
                Err(HostPlacementError::CpuNotOnHost { .. })
            ));
            return;
        }
        let placement = ThreadPlacement::resolve(&host, 2).unwrap();
        let seen = std::thread::spawn(move || {
            placement.apply_to_vcpu(1).unwrap();
            affinity_of_this_thread()
        })
        .join()
        .unwrap();
        assert_eq!(seen, "1");
    }

    /// CPUs outside what the VMM may run on (its affinity, as a cpuset cgroup or a jail's
    /// parent would restrict it) are refused when the VM is built, not found by a vCPU later.
    #[test]
    fn cpus_outside_the_processs_affinity_are_refused() {
        let _turn = MOVING_THREADS.lock().unwrap_or_else(|e| e.into_inner());
        let host = |pin: &str| HostResources {
            cpus: CpuPlacement { vcpu_affinity: vec![CpuSet::parse(pin).unwrap()], ..Default::default() },
            ..Default::default()
        };
        let refused = std::thread::spawn(move || {
            set_affinity(0, &CpuSet::parse("0").unwrap()).unwrap();
            let inside = ThreadPlacement::resolve(&host("0"), 1).map(|_| ());
            let outside = ThreadPlacement::resolve(&host("1"), 1).map(|_| ());
            (inside.is_ok(), matches!(outside, Err(HostPlacementError::CpuNotOnHost { .. })))
        })
        .join()
        .unwrap();
        assert_eq!(refused, (true, true));
    }

    /// A cgroup v1 cpuset of its own (removed when dropped), holding one thread.
    struct Cpuset(std::path::PathBuf);

    impl Cpuset {
        fn create(cpus: &str) -> Cpuset {
            let root = std::path::Path::new("/sys/fs/cgroup/cpuset");
            assert!(
                root.join("tasks").exists(),
                "this test needs the cgroup v1 cpuset controller (and root)"
            );
            let dir = root.join(format!("kestrel-placement-test-{}", std::process::id()));
            std::fs::create_dir(&dir).unwrap();
            let cpuset = Cpuset(dir);
            std::fs::write(cpuset.0.join("cpuset.cpus"), cpus).unwrap();
            let mems = std::fs::read_to_string(root.join("cpuset.mems")).unwrap();
            std::fs::write(cpuset.0.join("cpuset.mems"), mems.trim()).unwrap();
            cpuset
        }

        fn take(&self, tid: libc::pid_t) {
            std::fs::write(self.0.join("tasks"), tid.to_string()).unwrap();
        }
    }

    impl Drop for Cpuset {
        fn drop(&mut self) {
            if let Ok(tasks) = std::fs::read_to_string(self.0.join("tasks")) {
                for tid in tasks.lines() {
                    let _ = std::fs::write("/sys/fs/cgroup/cpuset/tasks", tid);
                }
            }
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    /// A thread the kernel will not move to the other threads' CPUs (EINVAL: here one whose
    /// cpuset lacks them; KVM's worker threads answer the same) keeps its CPUs, and the others
    /// are still moved.
    #[test]
    fn threads_the_kernel_will_not_move_are_left_where_they_are() {
        let _turn = MOVING_THREADS.lock().unwrap_or_else(|e| e.into_inner());
        let online = allowed_cpus().unwrap();
        let cpus: Vec<u32> = online.iter().collect();
        let [first, second, ..] = cpus[..] else { panic!("this test needs two online CPUs, not {online}") };
        let cpuset = Cpuset::create(&first.to_string());
        let (tid_sender, tid) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let confined = std::thread::spawn(move || {
            // SAFETY: gettid has no arguments and cannot fail.
            tid_sender.send(unsafe { libc::gettid() }).unwrap();
            released.recv().unwrap();
            affinity_of_this_thread()
        });
        cpuset.take(tid.recv().unwrap());
        let host = HostResources {
            cpus: CpuPlacement {
                vmm_affinity: Some(CpuSet::from_cpus([second]).unwrap()),
                ..Default::default()
            },
            ..Default::default()
        };
        let placement = ThreadPlacement::resolve(&host, 1).unwrap();
        let result = placement.apply_to_other_threads();
        // Put this test process's threads back on every CPU before anything can fail (not through
        // `resolve`, which now sees only this thread's new CPU).
        let moved = affinity_of_this_thread();
        let everywhere = ThreadPlacement { others: Some(online.clone()), ..Default::default() };
        everywhere.apply_to_other_threads().unwrap();
        result.unwrap();
        release.send(()).unwrap();
        assert_eq!(confined.join().unwrap(), first.to_string(), "the confined thread keeps its cpuset's CPU");
        assert_eq!(moved, second.to_string(), "the other threads moved");
        drop(cpuset);
    }

    /// A host CPU list that does not parse is a typed error carrying the parser's.
    #[test]
    fn a_bad_host_cpu_list_keeps_the_parsers_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("online");
        std::fs::write(&path, "0-x\n").unwrap();
        let error = read_cpu_list(path.to_str().unwrap()).unwrap_err();
        let source =
            std::error::Error::source(&error).and_then(|s| s.downcast_ref::<model::host::CpuListError>());
        assert!(matches!(source, Some(model::host::CpuListError::Syntax(_))), "{error:?}");
        assert!(error.to_string().contains("'0-x' is not a CPU number"), "{error}");
    }

    #[test]
    fn cpus_the_host_lacks_are_refused_by_name() {
        let host = HostResources {
            cpus: CpuPlacement { vmm_affinity: Some(CpuSet::parse("0,8000").unwrap()), ..Default::default() },
            ..Default::default()
        };
        let message = ThreadPlacement::resolve(&host, 1).unwrap_err().to_string();
        assert!(
            message.contains("CPU 8000 named in the CPU placement is not available to this VMM"),
            "{message}"
        );
    }
}
