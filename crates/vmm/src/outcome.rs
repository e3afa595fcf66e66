//! How a VM run ended, as the user sees it.

use std::fmt;

/// How a VM run ended. Everything but [`VmOutcome::PowerOff`] is a reason a script may want to tell
/// apart, so each maps to its own process exit status in the CLI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest powered the machine off.
    PowerOff,
    /// The guest reset the machine (i8042 reset line, or KVM's reset system event).
    Reset,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault { vcpu: u8, rip: u64 },
    /// A vCPU stopped in a way the guest cannot cause on purpose: KVM could not emulate an instruction,
    /// could not enter the guest, or reported an exit Kestrel does not handle.
    VcpuFailure { vcpu: u8, rip: u64, reason: String },
    /// The user asked to quit through the console escape (Ctrl-A X).
    UserQuit,
    /// The VMM received a termination signal (SIGINT, SIGTERM or SIGHUP).
    Signal(i32),
}

impl fmt::Display for VmOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmOutcome::PowerOff => write!(f, "guest powered off"),
            VmOutcome::Reset => write!(f, "guest reset"),
            VmOutcome::TripleFault { vcpu, rip } => {
                write!(f, "vCPU {vcpu} triple-faulted at RIP {rip:#x}")
            }
            VmOutcome::VcpuFailure { vcpu, rip, reason } => {
                write!(f, "vCPU {vcpu} failed at RIP {rip:#x}: {reason}")
            }
            VmOutcome::UserQuit => write!(f, "stopped by the user (Ctrl-A X)"),
            VmOutcome::Signal(signo) => write!(f, "stopped by signal {signo}"),
        }
    }
}
