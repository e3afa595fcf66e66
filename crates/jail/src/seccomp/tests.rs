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

#[test]
fn the_spawner_allows_at_least_what_every_role_does() {
    let most = ThreadRole::ALL.iter().map(|role| syscall_count(*role)).max();
    assert_eq!(most, Some(syscall_count(ThreadRole::Spawner)));
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
