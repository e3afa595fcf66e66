//! What a VMM process costs the host, from `/proc/PID/stat` and `/proc/PID/statm`: its CPU time
//! (user + system over all its threads) and its resident memory (which includes the guest
//! memory the guest has touched). For `GET /v1/vms/{vm}/stats` and the console's live graphs.

/// A process's CPU time and resident memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_time_us: Option<u64>,
    pub memory_rss_bytes: Option<u64>,
}

/// The usage of process `pid` now (fields `None` where `/proc` could not be read, e.g. the
/// process just ended).
pub fn of_process(pid: u32) -> Usage {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok();
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok();
    Usage {
        cpu_time_us: stat.as_deref().and_then(cpu_ticks).and_then(|ticks| ticks_to_us(ticks, clock_ticks())),
        memory_rss_bytes: statm
            .as_deref()
            .and_then(resident_pages)
            .and_then(|pages| pages.checked_mul(page_size())),
    }
}

/// utime + stime (clock ticks) from the text of `/proc/PID/stat`. The second field, the command
/// name in parentheses, may hold spaces and parentheses itself, so the fields are counted from
/// the last `)`: after it come state (field 3), …, utime (14), stime (15).
pub fn cpu_ticks(stat: &[u8]) -> Option<u64> {
    let end = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[end + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    // Fields 3..=13 are skipped: 11 of them; utime is the 12th after the name.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// The resident page count: the second field of `/proc/PID/statm`.
pub fn resident_pages(statm: &str) -> Option<u64> {
    statm.split_ascii_whitespace().nth(1)?.parse().ok()
}

fn ticks_to_us(ticks: u64, per_second: u64) -> Option<u64> {
    if per_second == 0 {
        return None;
    }
    u64::try_from(u128::from(ticks) * 1_000_000 / u128::from(per_second)).ok()
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).unwrap_or(100)
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stat_line(comm: &str, utime: u64, stime: u64) -> String {
        format!("1234 ({comm}) S 1 1234 1234 0 -1 4194560 100 0 0 0 {utime} {stime} 0 0 20 0 3 0 555 1000 200 18446744073709551615")
    }

    #[test]
    fn cpu_time_survives_odd_command_names() {
        assert_eq!(cpu_ticks(stat_line("kestrel", 150, 50).as_bytes()), Some(200));
        assert_eq!(cpu_ticks(stat_line("a) R 9 9 (b", 7, 3).as_bytes()), Some(10));
        assert_eq!(cpu_ticks(stat_line("with spaces ) )", 1, 2).as_bytes()), Some(3));
        assert_eq!(cpu_ticks(b"1234 (short) S 1 2"), None);
        assert_eq!(cpu_ticks(b"no parenthesis"), None);
        assert_eq!(resident_pages("2000 345 100 1 0 300 0\n"), Some(345));
        assert_eq!(resident_pages("2000"), None);
        assert_eq!(ticks_to_us(250, 100), Some(2_500_000));
        assert_eq!(ticks_to_us(1, 0), None);
    }

    #[test]
    fn this_process_has_usage() {
        let usage = of_process(std::process::id());
        assert!(usage.memory_rss_bytes.unwrap() > 0);
        assert!(usage.cpu_time_us.is_some());
        assert_eq!(of_process(u32::MAX), Usage::default(), "no such process");
    }

    proptest! {
        #[test]
        fn any_command_name_parses(comm in "[ -~]{0,16}", utime in 0u64..1 << 40, stime in 0u64..1 << 40) {
            prop_assert_eq!(cpu_ticks(stat_line(&comm, utime, stime).as_bytes()), Some(utime + stime));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = cpu_ticks(&bytes);
            let _ = resident_pages(&String::from_utf8_lossy(&bytes));
        }
    }
}
