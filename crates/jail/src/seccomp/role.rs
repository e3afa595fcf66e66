//! The roles a Kestrel thread plays, each with its own allow-list.

/// What a thread does, which decides the system calls it may make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadRole {
    /// The main thread once the VM is built or restored (the VM's event loop and the controller),
    /// and the transient operation threads it starts (snapshot, drive update, pauser).
    Vmm,
    /// `kestrel-api` (accepts) and `kestrel-api-conn` (serves one connection).
    Api,
    /// A vCPU thread (`KVM_RUN` and the device emulation its exits reach).
    Vcpu,
    /// A virtio-blk worker, its `disk-io-N` pool threads and its io_uring.
    Block,
    /// A virtio-net worker (tap).
    Net,
    /// A virtio-vsock worker (Unix sockets on the host side).
    Vsock,
    /// A virtio-rng worker.
    Rng,
    /// A virtio-balloon worker.
    Balloon,
    /// The metrics flusher.
    Metrics,
    /// The thread that starts every confined thread (see `spawner.rs`); its list is the union of
    /// all the others.
    Spawner,
}

impl ThreadRole {
    /// Every role, in a fixed order (the SIGSYS handler names a role by its index here).
    pub const ALL: [ThreadRole; 10] = [
        ThreadRole::Vmm,
        ThreadRole::Api,
        ThreadRole::Vcpu,
        ThreadRole::Block,
        ThreadRole::Net,
        ThreadRole::Vsock,
        ThreadRole::Rng,
        ThreadRole::Balloon,
        ThreadRole::Metrics,
        ThreadRole::Spawner,
    ];

    /// The role's name, as in the policy file and in `KESTREL_SECCOMP_TEST_VIOLATE`.
    pub const fn name(self) -> &'static str {
        match self {
            ThreadRole::Vmm => "vmm",
            ThreadRole::Api => "api",
            ThreadRole::Vcpu => "vcpu",
            ThreadRole::Block => "block",
            ThreadRole::Net => "net",
            ThreadRole::Vsock => "vsock",
            ThreadRole::Rng => "rng",
            ThreadRole::Balloon => "balloon",
            ThreadRole::Metrics => "metrics",
            ThreadRole::Spawner => "spawner",
        }
    }

    /// The role called `name`, if any.
    pub fn from_name(name: &str) -> Option<ThreadRole> {
        ThreadRole::ALL.into_iter().find(|role| role.name() == name)
    }

    pub(crate) fn index(self) -> usize {
        ThreadRole::ALL.iter().position(|role| *role == self).unwrap_or(0)
    }
}
