//! The BPF programs build.rs compiled from `seccomp/x86_64.json`, and the table of system call
//! names.

use seccompiler::{sock_filter, BpfProgram};

use super::ThreadRole;

/// One BPF instruction as build.rs writes it: code, jump if true, jump if false, operand.
pub(crate) struct Insn(u16, u8, u8, u32);

include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));

fn instructions(role: ThreadRole) -> &'static [Insn] {
    match role {
        ThreadRole::Vmm => VMM,
        ThreadRole::Api => API,
        ThreadRole::Vcpu => VCPU,
        ThreadRole::Block => BLOCK,
        ThreadRole::Net => NET,
        ThreadRole::Vsock => VSOCK,
        ThreadRole::Rng => RNG,
        ThreadRole::Balloon => BALLOON,
        ThreadRole::Metrics => METRICS,
        ThreadRole::Spawner => SPAWNER,
    }
}

/// The role's filter, ready for `seccompiler::apply_filter`.
pub(crate) fn program(role: ThreadRole) -> BpfProgram {
    instructions(role)
        .iter()
        .map(|Insn(code, jt, jf, k)| sock_filter { code: *code, jt: *jt, jf: *jf, k: *k })
        .collect()
}

/// The name of x86_64 system call `number`, or "?" for a number Kestrel's table does not know.
pub fn syscall_name(number: i64) -> &'static str {
    match usize::try_from(number).ok().and_then(|n| SYSCALL_NAMES.get(n)) {
        Some(name) if !name.is_empty() => name,
        _ => "?",
    }
}

/// How many distinct system calls `role` may make.
pub fn syscall_count(role: ThreadRole) -> usize {
    SYSCALL_COUNTS.iter().find(|(name, _)| *name == role.name()).map_or(0, |(_, count)| *count)
}
