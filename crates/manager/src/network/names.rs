//! The host names of Kestrel's devices: stable (a restarted daemon finds them again), at most
//! 15 bytes (IFNAMSIZ - 1), and in prefixes of their own (`kb-` bridges, `kt` taps).

/// The longest interface name Linux takes.
pub const IFNAME_MAX: usize = 15;
/// The most cards one VM may have on networks (the tap name keeps two digits for the index).
pub const MAX_NIC_INDEX: usize = 99;

/// `kb-<name>` for names of up to 11 bytes, else `kb-` and 12 hex digits of a hash of the name
/// (15 bytes: never the length of a short one, so the two forms cannot meet).
pub fn bridge(network: &str) -> String {
    if network.len() <= 11 {
        format!("kb-{network}")
    } else {
        format!("kb-{:012x}", fnv1a(network.as_bytes()) & 0xffff_ffff_ffff)
    }
}

/// `kt<10 hex digits of the VM's UUID>n<index>`, e.g. `kt1b4e28ba2fn0`.
pub fn tap(vm_uuid: &str, index: usize) -> String {
    let hex: String = vm_uuid.chars().filter(char::is_ascii_hexdigit).take(10).collect();
    // A UUID always has 32 hex digits; anything else is hashed so the name stays well-formed.
    let hex = if hex.len() == 10 {
        hex.to_ascii_lowercase()
    } else {
        format!("{:010x}", fnv1a(vm_uuid.as_bytes()) & 0xff_ffff_ffff)
    };
    format!("kt{hex}n{index}")
}

/// A stable, locally administered unicast MAC for a card the definition gave none
/// (`52:54:00` is QEMU's and libvirt's prefix; Kestrel uses `02:4b` = local + 'K').
pub fn mac(vm_uuid: &str, index: usize) -> String {
    let hash = fnv1a(format!("{vm_uuid}/{index}").as_bytes()).to_be_bytes();
    model::manager::network::format_mac([0x02, 0x4b, hash[0], hash[1], hash[2], hash[3]])
}

/// The name of the nftables table of the daemon whose state dir is `state_dir`:
/// `kestrel_` and 8 hex digits of a hash of the path, so two daemons (two state dirs) in one
/// network namespace have a table each.
pub fn table(state_dir: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    format!("kestrel_{:08x}", fnv1a(state_dir.as_os_str().as_bytes()) & 0xffff_ffff)
}

/// Why a tap the user names on a card (one Kestrel does not make) is refused, if it is: it must
/// be a valid interface name (1 to 15 bytes of letters, digits, `-`, `_` and `.`, not `.` or
/// `..`), and not one Kestrel makes: a bridge's (`kb-…`) or a managed tap's (`kt`, 10 hex
/// digits, `n`, the card's index), which Kestrel deletes when its VM stops. Other names that
/// start with `kt` (`ktap0`) are the user's.
pub fn user_tap_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > IFNAME_MAX {
        return Some("a tap's name has 1 to 15 bytes");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        || name == "."
        || name == ".."
    {
        return Some("a tap's name may only hold letters, digits, '-', '_' and '.'");
    }
    if name.starts_with("kb-") || is_managed_tap(name) {
        return Some("names of the forms 'kb-…' and 'kt<10 hex digits>n<index>' are Kestrel's own devices'");
    }
    None
}

/// Whether `name` has the form of [`tap`]'s names.
fn is_managed_tap(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("kt") else { return false };
    let (Some(hex), Some(index)) = (rest.get(..10), rest.get(10..)) else { return false };
    let Some(index) = index.strip_prefix('n') else { return false };
    hex.bytes().all(|b| b.is_ascii_hexdigit())
        && (1..=2).contains(&index.len())
        && index.bytes().all(|b| b.is_ascii_digit())
}

/// FNV-1a, 64 bits: stable across builds and hosts (unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_short_and_stable() {
        assert_eq!(bridge("default"), "kb-default");
        assert_eq!(bridge("a-very-long-network-name"), bridge("a-very-long-network-name"));
        assert_eq!(bridge("a-very-long-network-name").len(), IFNAME_MAX);
        assert_eq!(tap("1b4e28ba-2fa1-11d2-883f-0016d3cca427", 3), "kt1b4e28ba2fn3");
        assert_eq!(mac("u", 0), mac("u", 0));
        assert_ne!(mac("u", 0), mac("u", 1));
    }

    #[test]
    fn tables_differ_per_state_dir() {
        let a = table(std::path::Path::new("/var/lib/kestrel"));
        assert_eq!(a, table(std::path::Path::new("/var/lib/kestrel")));
        assert_ne!(a, table(std::path::Path::new("/tmp/other/state")));
        assert!(a.starts_with("kestrel_") && a.len() == 16, "{a}");
    }

    #[test]
    fn user_taps_are_interface_names_outside_kestrels_prefixes() {
        for good in ["tap0", "vm-web.1", "my_tap", "k0", "kb0", "ktap0", "kt1b4e28ba2fx0"] {
            assert_eq!(user_tap_problem(good), None, "{good}");
        }
        for bad in [
            "",
            "a-name-of-16-byt",
            "a/b",
            "tap 0",
            "..",
            "kt1b4e28ba2fn0",
            "kt1B4E28BA2Fn99",
            "kb-lab",
            "tåp",
        ] {
            assert!(user_tap_problem(bad).is_some(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn accepted_user_taps_are_safe_names(name in "\\PC{0,24}") {
            if user_tap_problem(&name).is_none() {
                prop_assert!((1..=IFNAME_MAX).contains(&name.len()));
                prop_assert!(!name.contains('/') && !name.contains(char::is_whitespace) && name.is_ascii());
                prop_assert!(!name.starts_with("kb-"));
            }
        }

        #[test]
        fn every_name_fits_an_interface(network in "[a-zA-Z0-9._-]{1,64}", uuid in "\\PC{0,40}", index in 0usize..=MAX_NIC_INDEX) {
            prop_assert!(bridge(&network).len() <= IFNAME_MAX);
            let tap = tap(&uuid, index);
            prop_assert!(tap.len() <= IFNAME_MAX && tap.is_ascii() && !tap.contains('/'));
            // A user's card can never take a tap Kestrel makes (and later deletes).
            prop_assert!(user_tap_problem(&tap).is_some());
            prop_assert!(model::manager::network::parse_mac(&mac(&uuid, index)).is_ok());
        }
    }
}
