use super::*;

#[test]
fn every_role_has_a_compiled_filter_that_traps_by_default() {
    for role in ThreadRole::ALL {
        let program = filters::program(role);
        assert!(program.len() > 10, "{role:?}: {} instructions", program.len());
        // The last instruction is the mismatch action: SECCOMP_RET_TRAP.
        let last = program.last().map(|insn| insn.k);
        assert!(program.iter().any(|insn| insn.k == 0x0003_0000), "{role:?} never traps");
        assert!(last.is_some());
        assert!(syscall_count(role) > 0, "{role:?}");
    }
}

/// A thread started by the spawner keeps the spawner's filter too: whatever a role allows, the
/// spawner must (every call number, plain and with each role's ioctl requests).
#[test]
fn the_spawner_allows_at_least_what_every_role_does() {
    use bpf::{run, Call, ALLOW};
    let spawner = filters::program(ThreadRole::Spawner);
    let requests = [0, KVM_RUN, 0xAE01, 0x4004_AE6A, 0x4008_AE89, 0x8010_AE9B, 0xC008_AE91];
    for role in ThreadRole::ALL {
        let program = filters::program(role);
        for nr in 0..460 {
            for &request in &requests {
                let call = Call::new(nr, &[0, request, 0]);
                if run(&program, &call) == ALLOW {
                    assert_eq!(
                        run(&spawner, &call),
                        ALLOW,
                        "{role:?} allows {} ({request:#x})",
                        syscall_name(nr)
                    );
                }
            }
        }
    }
}

#[test]
fn the_table_of_names_matches_libc() {
    let known = [
        (libc::SYS_read, "read"),
        (libc::SYS_write, "write"),
        (libc::SYS_ioctl, "ioctl"),
        (libc::SYS_getpgrp, "getpgrp"),
        (libc::SYS_exit_group, "exit_group"),
        (libc::SYS_clone3, "clone3"),
        (libc::SYS_io_uring_setup, "io_uring_setup"),
        (libc::SYS_io_uring_enter, "io_uring_enter"),
        (libc::SYS_landlock_restrict_self, "landlock_restrict_self"),
        (libc::SYS_memfd_create, "memfd_create"),
        (libc::SYS_futex_waitv, "futex_waitv"),
        (libc::SYS_timerfd_settime, "timerfd_settime"),
    ];
    for (number, name) in known {
        assert_eq!(syscall_name(number), name, "{number}");
    }
    assert_eq!(syscall_name(462), "mseal");
    assert_eq!(syscall_name(-1), "?");
    assert_eq!(syscall_name(100_000), "?");
}

#[test]
fn off_runs_the_closure_on_the_calling_thread() {
    let caller = std::thread::current().id();
    let ran_on = run_where_threads_start(move || std::thread::current().id()).unwrap();
    assert_eq!(ran_on, caller);
}

#[test]
fn roles_are_named_both_ways() {
    for role in ThreadRole::ALL {
        assert_eq!(ThreadRole::from_name(role.name()), Some(role));
    }
    assert_eq!(ThreadRole::from_name("nobody"), None);
}

#[test]
fn off_spawns_plain_threads() {
    // The library default: no filter, so the child can do anything, and reports back.
    assert_eq!(mode(), Mode::Off);
    let handle = spawn(ThreadRole::Vcpu, std::thread::Builder::new().name("t".into()), || 7).unwrap();
    assert_eq!(handle.join().unwrap(), 7);
    enter(ThreadRole::Vcpu).unwrap();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// `KESTREL_SECCOMP_TEST_VIOLATE` takes any text: only a role's exact name names it.
    #[test]
    fn any_text_names_a_role_only_if_it_is_its_name(text in ".{0,24}") {
        let role = ThreadRole::from_name(&text);
        proptest::prop_assert_eq!(role.map(ThreadRole::name), ThreadRole::ALL.iter().map(|r| r.name()).find(|n| *n == text));
    }

    /// Any number the kernel could put in si_syscall gets a name or "?", never a panic.
    #[test]
    fn any_syscall_number_has_a_printable_name(number in proptest::prelude::any::<i64>()) {
        let name = syscall_name(number);
        proptest::prop_assert!(!name.is_empty());
    }
}

/// A classic-BPF interpreter for seccomp programs: just the instructions seccompiler and
/// build.rs's prefix use (absolute 32-bit loads, AND with a constant, JEQ/JGT/JGE/JSET with a
/// constant, JA, RET with a constant), so the tests can run a compiled filter on made-up calls.
mod bpf {
    use seccompiler::sock_filter;

    /// What the kernel hands a filter (`struct seccomp_data`).
    pub struct Call {
        pub nr: u32,
        pub arch: u32,
        pub args: [u64; 6],
    }

    pub const X86_64: u32 = 0xC000_003E;
    pub const ALLOW: u32 = 0x7FFF_0000;
    pub const TRAP: u32 = 0x0003_0000;

    impl Call {
        pub fn new(nr: i64, args: &[u64]) -> Call {
            let mut all = [0; 6];
            all[..args.len()].copy_from_slice(args);
            Call { nr: nr as u32, arch: X86_64, args: all }
        }

        fn word(&self, offset: u32) -> u32 {
            match offset {
                0 => self.nr,
                4 => self.arch,
                16..=63 => {
                    let arg = self.args[(offset as usize - 16) / 8];
                    if offset % 8 == 0 {
                        arg as u32
                    } else {
                        (arg >> 32) as u32
                    }
                }
                _ => panic!("a load at offset {offset}"),
            }
        }
    }

    /// The action (the high 16 bits of the returned value) the program takes for `call`.
    pub fn run(program: &[sock_filter], call: &Call) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let insn = &program[pc];
            let jump = |taken: bool| pc + 1 + usize::from(if taken { insn.jt } else { insn.jf });
            pc = match insn.code {
                0x20 => {
                    a = call.word(insn.k);
                    pc + 1
                }
                0x54 => {
                    a &= insn.k;
                    pc + 1
                }
                0x15 => jump(a == insn.k),
                0x25 => jump(a > insn.k),
                0x35 => jump(a >= insn.k),
                0x45 => jump(a & insn.k != 0),
                0x05 => pc + 1 + insn.k as usize,
                0x06 => return insn.k & 0xFFFF_0000,
                code => panic!("instruction {code:#x} at {pc} is not interpreted here"),
            };
        }
    }
}

const KVM_RUN: u64 = 0xAE80;

/// The compiled filters, run on made-up calls: what the vCPU's fast path and the roles' argument
/// rules let through, and what they stop.
#[test]
fn the_compiled_filters_decide_as_the_policy_says() {
    use bpf::{run, Call, ALLOW, TRAP};
    let vcpu = filters::program(ThreadRole::Vcpu);
    let spawner = filters::program(ThreadRole::Spawner);
    let block = filters::program(ThreadRole::Block);
    // KVM_RUN through the prefix; the kernel reads the request as an unsigned int, so the high
    // bits of the register do not matter.
    for program in [&vcpu, &spawner] {
        assert_eq!(run(program, &Call::new(libc::SYS_ioctl, &[5, KVM_RUN])), ALLOW);
        assert_eq!(run(program, &Call::new(libc::SYS_ioctl, &[5, KVM_RUN | 0xFFFF_FFFF_0000_0000])), ALLOW);
    }
    // Another ioctl (TIOCSTI: typing into a terminal) is refused by the vCPU's argument rules.
    assert_eq!(run(&vcpu, &Call::new(libc::SYS_ioctl, &[0, 0x5412])), TRAP);
    // KVM_RUN's number in another argument is not KVM_RUN.
    assert_eq!(run(&vcpu, &Call::new(libc::SYS_ioctl, &[5, 0x5412, KVM_RUN])), TRAP);
    // Another architecture's calls are killed, not allowed through the prefix.
    let mut foreign = Call::new(libc::SYS_ioctl, &[5, KVM_RUN]);
    foreign.arch = 0x4000_0003; // AUDIT_ARCH_I386
    assert_ne!(run(&vcpu, &foreign), ALLOW);
    // Only the spawner makes io_uring rings: SQPOLL rings would run calls seccomp never sees.
    for program in [&vcpu, &block] {
        assert_eq!(run(program, &Call::new(libc::SYS_io_uring_setup, &[8, 0])), TRAP);
    }
    assert_eq!(run(&spawner, &Call::new(libc::SYS_io_uring_setup, &[8, 0])), ALLOW);
    // A vCPU places itself (pid 0) and nothing else.
    assert_eq!(run(&vcpu, &Call::new(libc::SYS_sched_setaffinity, &[0, 128, 0])), ALLOW);
    assert_eq!(run(&vcpu, &Call::new(libc::SYS_sched_setscheduler, &[1, 1, 0])), TRAP);
    // No role may map executable memory, and none may make a process group query.
    for role in ThreadRole::ALL {
        let program = filters::program(role);
        let exec =
            Call::new(libc::SYS_mprotect, &[0x1000, 0x1000, (libc::PROT_READ | libc::PROT_EXEC) as u64]);
        assert_eq!(run(&program, &exec), TRAP, "{role:?} mprotect PROT_EXEC");
        assert_eq!(run(&program, &Call::new(libc::SYS_getpgrp, &[])), TRAP, "{role:?} getpgrp");
    }
}
