//! Confinement of a Kestrel VMM process and its threads.
//!
//! This crate knows nothing of KVM or the VMM's internals (it must not depend on `vmm`): the
//! VMM and the device crates tell it which role a thread plays, and it applies the policy for
//! that role.
//!
//! - `seccomp`: an allow-list per thread role, compiled at build time, installed as each
//!   thread starts (the process-wide switch is set once by the binary).
//! - `landlock`: a filesystem allow-list for unprivileged VMMs.
//! - `jailer`: `kestrel jailer`, Firecracker's jailer flags: chroot, namespaces, uid/gid,
//!   rlimits, closed fds, cgroups (`cgroup`).
pub mod cgroup;
pub mod jailer;
pub mod landlock;
pub mod seccomp;
pub mod threads;
