//! Process exit statuses: each way a run can end has its own, so scripts can tell them apart.
//! The README's table lists them; keep the two in step.

use vmm::outcome::VmOutcome;

/// The guest powered off.
pub const POWER_OFF: u8 = 0;
/// Kestrel could not build or run the VM (bad kernel, no KVM, …).
pub const ERROR: u8 = 1;
// 2 is the usage error status, set by the argument parser.
/// The guest reset (rebooted) the machine.
pub const RESET: u8 = 3;
/// A vCPU triple-faulted.
pub const TRIPLE_FAULT: u8 = 4;
/// A vCPU failed: KVM internal error, failed entry, or an exit Kestrel does not handle.
pub const VCPU_FAILURE: u8 = 5;
/// The user quit with Ctrl-A X.
pub const USER_QUIT: u8 = 6;
/// A thread made a system call its seccomp filter forbids (128 + SIGSYS; the SIGSYS handler exits
/// with it, naming the call on stderr).
#[allow(dead_code)] // jail's SIGSYS handler exits with it; listed beside the others
pub const SECCOMP_VIOLATION: u8 = jail::seccomp::EXIT_STATUS;
/// Stopped by a signal: 128 + its number, as shells report it.
const SIGNAL_BASE: u8 = 128;

pub fn for_outcome(outcome: &VmOutcome) -> u8 {
    match outcome {
        VmOutcome::PowerOff => POWER_OFF,
        VmOutcome::Reset => RESET,
        VmOutcome::TripleFault { .. } => TRIPLE_FAULT,
        VmOutcome::VcpuFailure { .. } => VCPU_FAILURE,
        VmOutcome::UserQuit => USER_QUIT,
        VmOutcome::Signal(signo) => SIGNAL_BASE.saturating_add(u8::try_from(*signo).unwrap_or(u8::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_status() {
        let outcomes = [
            VmOutcome::PowerOff,
            VmOutcome::Reset,
            VmOutcome::TripleFault { vcpu: 0, rip: 0 },
            VmOutcome::VcpuFailure { vcpu: 0, rip: 0, reason: String::new() },
            VmOutcome::UserQuit,
            VmOutcome::Signal(15),
        ];
        let mut statuses: Vec<u8> = outcomes.iter().map(for_outcome).collect();
        statuses.extend([ERROR, 2, SECCOMP_VIOLATION]);
        let count = statuses.len();
        statuses.sort_unstable();
        statuses.dedup();
        assert_eq!(statuses.len(), count);
        assert_eq!(for_outcome(&VmOutcome::Signal(15)), 143);
        // "128+N stopped by signal N" holds for SIGSYS too.
        assert_eq!(SECCOMP_VIOLATION, 128 + libc::SIGSYS as u8);
    }
}
