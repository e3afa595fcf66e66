//! `Networks` driven directly (the way the VM supervisor calls it: `check_nic`, `plug`,
//! `unplug_vm`), as root, in a network namespace of the test's own so the host is untouched.

use std::process::Command;
use std::sync::Arc;

use model::manager::network::{NetworkDefinition, NetworkMode};
use model::manager::vm::NicDefinition;
use model::manager::ErrorKind;

use super::Networks;
use crate::paths::Paths;
use crate::store::Store;

/// A Networks of its own in a fresh network namespace; `None` when not root (on CI a failure).
struct Bench {
    networks: Networks,
    runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Option<Bench> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "this test needs root on CI");
            eprintln!("skipping: networks need root");
            return None;
        }
        // SAFETY: moves only this thread into a new network namespace; the runtime below is a
        // current-thread one, so every tool it starts is born in it too.
        let result = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(result, 0, "unshare: {}", std::io::Error::last_os_error());
        sh("ip", &["link", "set", "lo", "up"]);
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths { state_dir: dir.path().join("state"), socket: dir.path().join("sock") };
        let store = Arc::new(Store::in_memory(&[super::SCHEMA]).unwrap());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Some(Bench { networks: Networks::new(store, &paths), runtime, dir })
    }

    fn define(&self, name: &str, address: &str) {
        let definition = NetworkDefinition {
            name: name.into(),
            address: address.into(),
            mode: NetworkMode::Nat,
            dhcp_range: None,
            autostart: false,
            domain: None,
        };
        self.runtime.block_on(self.networks.define(definition)).unwrap();
        self.runtime.block_on(self.networks.start(name)).unwrap();
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let Ok(dirs) = std::fs::read_dir(self.dir.path().join("state/networks")) else { return };
        for dir in dirs.flatten() {
            let files = super::dnsmasq::Files { dir: dir.path() };
            if let Some(running) = super::dnsmasq::adopt(&files) {
                self.runtime.block_on(running.stop());
            }
        }
    }
}

fn sh(program: &str, args: &[&str]) -> String {
    let output = Command::new(super::host::find_tool_path(program)).args(args).output().unwrap();
    assert!(output.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn master_of(link: &str) -> Option<String> {
    let out = Command::new(super::host::find_tool_path("ip"))
        .args(["-json", "link", "show", "dev", link])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Some(links[0]["master"].as_str().unwrap_or("").to_owned())
}

fn nic(network: &str, mac: Option<&str>, ip: Option<&str>) -> NicDefinition {
    NicDefinition {
        network: Some(network.into()),
        mac: mac.map(str::to_owned),
        ip: ip.map(|ip| ip.parse().unwrap()),
        ..NicDefinition::default()
    }
}

/// No defined VM holds a fixed address.
fn none_fixed(_: &str) -> crate::error::ApiResult<Vec<super::FixedIp>> {
    Ok(Vec::new())
}

const WEB: &str = "6f1c2a3b-0000-4000-8000-000000000001";
const DB: &str = "7a2d3c4e-0000-4000-8000-000000000002";

#[test]
fn a_plugged_card_gets_its_tap_and_its_reserved_address() {
    let Some(bench) = Bench::new() else { return };
    let networks = &bench.networks;
    bench.define("res", "10.90.0.1/24");

    assert!(networks.check_nic(WEB, &nic("res", None, Some("10.90.0.7")), none_fixed).is_ok());
    assert_eq!(
        networks.check_nic(WEB, &nic("res", None, Some("10.91.0.7")), none_fixed).unwrap_err().kind,
        ErrorKind::Invalid
    );
    assert_eq!(
        networks.check_nic(WEB, &nic("res", None, Some("10.90.0.1")), none_fixed).unwrap_err().kind,
        ErrorKind::Invalid
    );
    assert_eq!(
        networks.check_nic(WEB, &nic("res", Some("01:00:5e:00:00:01"), None), none_fixed).unwrap_err().kind,
        ErrorKind::Invalid
    );
    assert_eq!(
        networks.check_nic(WEB, &nic("nowhere", None, None), none_fixed).unwrap_err().kind,
        ErrorKind::NotFound
    );

    let card = nic("res", Some("52:54:00:90:00:07"), Some("10.90.0.7"));
    let plugged = bench.runtime.block_on(networks.plug(WEB, "web", 0, &card)).unwrap();
    assert_eq!(plugged.tap, "kt6f1c2a3b00n0");
    assert_eq!(plugged.mac, "52:54:00:90:00:07");
    assert_eq!(master_of(&plugged.tap).as_deref(), Some("kb-res"));
    // Plugging the same card again (a restart) is fine.
    assert_eq!(bench.runtime.block_on(networks.plug(WEB, "web", 0, &card)).unwrap(), plugged);
    // A card without a MAC gets a stable one.
    let second = bench.runtime.block_on(networks.plug(WEB, "web", 1, &nic("res", None, None))).unwrap();
    assert_eq!(second.mac, super::names::mac(WEB, 1));

    // The address is the web VM's: not another VM's, at definition or at start.
    let taken = nic("res", None, Some("10.90.0.7"));
    assert_eq!(networks.check_nic(DB, &taken, none_fixed).unwrap_err().kind, ErrorKind::Conflict);
    assert_eq!(
        bench.runtime.block_on(networks.plug(DB, "db", 0, &taken)).unwrap_err().kind,
        ErrorKind::Conflict
    );
    assert_eq!(master_of("kt7a2d3c4e00n0"), None, "no tap is left of the refused card");

    // While plugged, the network stays.
    assert_eq!(bench.runtime.block_on(networks.stop("res")).unwrap_err().kind, ErrorKind::Conflict);
    let info = networks.info("res").unwrap();
    assert_eq!(info.ports.len(), 2);
    let conf = std::fs::read_to_string(bench.dir.path().join("state/networks/res/dnsmasq.conf")).unwrap();
    assert!(conf.contains("dhcp-host=52:54:00:90:00:07,10.90.0.7,web"), "{conf}");

    // DHCP gives the reserved address to that MAC.
    if let Some(lease) = dhcp_lease("kb-res", "52:54:00:90:00:07") {
        assert_eq!(lease, "10.90.0.7");
    }

    bench.runtime.block_on(networks.unplug_vm(WEB));
    bench.runtime.block_on(networks.unplug_vm(WEB));
    assert_eq!(master_of(&plugged.tap), None, "the taps are deleted");
    assert!(networks.info("res").unwrap().ports.is_empty());
    let conf = std::fs::read_to_string(bench.dir.path().join("state/networks/res/dnsmasq.conf")).unwrap();
    assert!(!conf.contains("dhcp-host"), "the reservation went with the card: {conf}");

    assert_eq!(
        bench.runtime.block_on(networks.undefine("res", vec!["web".into()])).unwrap_err().kind,
        ErrorKind::Conflict
    );
    bench.runtime.block_on(networks.undefine("res", Vec::new())).unwrap();
    assert_eq!(master_of("kb-res"), None, "undefine stopped it");
}

#[test]
fn the_watchdog_puts_a_detached_tap_back_on_its_bridge() {
    let Some(bench) = Bench::new() else { return };
    bench.define("w", "10.92.0.1/24");
    let plugged = bench.runtime.block_on(bench.networks.plug(WEB, "web", 0, &nic("w", None, None))).unwrap();
    sh("ip", &["link", "set", "dev", &plugged.tap, "nomaster"]);
    assert_eq!(master_of(&plugged.tap).as_deref(), Some(""));
    bench.runtime.block_on(bench.networks.watch_once());
    assert_eq!(master_of(&plugged.tap).as_deref(), Some("kb-w"));
    bench.runtime.block_on(bench.networks.unplug_vm(WEB));
}

#[test]
fn fixed_addresses_stay_out_of_the_dhcp_range_and_off_other_defined_vms() {
    let Some(bench) = Bench::new() else { return };
    let networks = &bench.networks;
    bench.define("fix", "10.93.0.1/24");
    // The DHCP range is .128-.254: dnsmasq may lease any of it to a guest while a VM with a
    // fixed address in it is stopped.
    let in_range = networks.check_nic(WEB, &nic("fix", None, Some("10.93.0.150")), none_fixed).unwrap_err();
    assert_eq!(in_range.kind, ErrorKind::Invalid);
    assert!(in_range.message.contains("DHCP range"), "{}", in_range.message);
    // A stopped VM (nothing plugged) that holds .20 in its definition.
    let db_holds = |network: &str| -> crate::error::ApiResult<Vec<super::FixedIp>> {
        assert_eq!(network, "fix");
        Ok(vec![(DB.into(), "db".into(), "10.93.0.20".parse().unwrap())])
    };
    let taken = networks.check_nic(WEB, &nic("fix", None, Some("10.93.0.20")), db_holds).unwrap_err();
    assert_eq!(taken.kind, ErrorKind::Conflict);
    assert!(taken.message.contains("VM 'db'"), "{}", taken.message);
    // The VM's own definition (an edit) does not conflict with itself; another address is free.
    assert!(networks.check_nic(DB, &nic("fix", None, Some("10.93.0.20")), db_holds).is_ok());
    assert!(networks.check_nic(WEB, &nic("fix", None, Some("10.93.0.21")), db_holds).is_ok());
    // The lookup's failure refuses the card rather than letting the address be taken twice.
    let broken = |_: &str| -> crate::error::ApiResult<Vec<super::FixedIp>> {
        Err(crate::error::ManagerError::unavailable("the store is busy"))
    };
    assert_eq!(
        networks.check_nic(WEB, &nic("fix", None, Some("10.93.0.22")), broken).unwrap_err().kind,
        ErrorKind::Unavailable
    );
}

#[test]
fn a_users_own_tap_is_checked() {
    // No root needed: a card without a network touches nothing.
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths { state_dir: dir.path().join("state"), socket: dir.path().join("sock") };
    let store = Arc::new(Store::in_memory(&[super::SCHEMA]).unwrap());
    let networks = Networks::new(store, &paths);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let card = |tap: &str| NicDefinition { tap: Some(tap.into()), ..NicDefinition::default() };
    assert!(networks.check_nic(WEB, &card("tap0"), none_fixed).is_ok());
    assert!(networks.check_nic(WEB, &card("ktap0"), none_fixed).is_ok());
    for bad in ["a-name-of-16-byt", "../x", "kt6f1c2a3b00n0", "kb-lab", ""] {
        assert_eq!(
            networks.check_nic(WEB, &card(bad), none_fixed).unwrap_err().kind,
            ErrorKind::Invalid,
            "{bad}"
        );
        // A definition stored before the check is refused at start as well.
        assert_eq!(
            runtime.block_on(networks.plug(WEB, "web", 0, &card(bad))).unwrap_err().kind,
            ErrorKind::Invalid,
            "{bad}"
        );
    }
    assert_eq!(runtime.block_on(networks.plug(WEB, "web", 0, &card("tap0"))).unwrap().tap, "tap0");
}

#[test]
fn a_deleted_tap_of_a_running_vm_is_reported() {
    let Some(bench) = Bench::new() else { return };
    bench.define("gone", "10.94.0.1/24");
    let plugged =
        bench.runtime.block_on(bench.networks.plug(WEB, "web", 0, &nic("gone", None, None))).unwrap();
    assert!(bench.runtime.block_on(bench.networks.watch_once()).is_empty(), "nothing to report");
    sh("ip", &["link", "del", "dev", &plugged.tap]);
    let notices = bench.runtime.block_on(bench.networks.watch_once());
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].kind, model::manager::event::EventKind::NicLost);
    assert_eq!(notices[0].object, "web");
    assert!(notices[0].detail.as_deref().is_some_and(|d| d.contains("restart")), "{notices:?}");
    // The tap is made again (so the bridge is whole), and reported once only.
    assert_eq!(master_of(&plugged.tap).as_deref(), Some("kb-gone"));
    assert!(bench.runtime.block_on(bench.networks.watch_once()).is_empty());
    bench.runtime.block_on(bench.networks.unplug_vm(WEB));
}

#[test]
fn a_network_that_cannot_be_repaired_is_retried_with_a_back_off_and_reported_once() {
    let Some(bench) = Bench::new() else { return };
    let kind = model::manager::event::EventKind::NetworkBroken;
    bench.define("bad", "10.95.0.1/24");
    // Someone deletes the bridge and takes its name for a device that is not one.
    sh("ip", &["link", "del", "dev", "kb-bad"]);
    sh("ip", &["link", "add", "kb-bad", "type", "veth", "peer", "name", "kmt-bad"]);
    let notices = bench.runtime.block_on(bench.networks.watch_once());
    assert_eq!(notices.iter().map(|n| n.kind).collect::<Vec<_>>(), vec![kind], "{notices:?}");
    // Straight away again: within the back-off, no retry and no second report.
    assert!(bench.runtime.block_on(bench.networks.watch_once()).is_empty());
    // Once the device is gone, the next retry (after the back-off) repairs it, and says so.
    sh("ip", &["link", "del", "dev", "kb-bad"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let repaired = loop {
        let notices = bench.runtime.block_on(bench.networks.watch_once());
        if !notices.is_empty() {
            break notices;
        }
        assert!(std::time::Instant::now() < deadline, "no repair within 10 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(repaired[0].kind, model::manager::event::EventKind::NetworkRepaired, "{repaired:?}");
    assert!(master_of("kb-bad").is_some(), "the bridge is back");
}

/// A lease for `mac` from a DHCP client in a second namespace joined to `bridge` by a veth
/// pair (`None` without busybox, except on CI).
fn dhcp_lease(bridge: &str, mac: &str) -> Option<String> {
    let Ok(busybox) = super::host::find_tool("busybox") else {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "busybox is missing on CI");
        return None;
    };
    let namespace = format!("kestrel-mt-{}", std::process::id());
    sh("ip", &["netns", "add", &namespace]);
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new(super::host::find_tool_path("ip")).args(["netns", "del", &self.0]).status();
        }
    }
    let _cleanup = Cleanup(namespace.clone());
    sh("ip", &["link", "add", "kmt-host", "type", "veth", "peer", "name", "c0", "netns", &namespace]);
    sh("ip", &["link", "set", "kmt-host", "master", bridge, "up"]);
    sh("ip", &["-n", &namespace, "link", "set", "c0", "address", mac, "up"]);
    let busybox = busybox.to_string_lossy().into_owned();
    let args = [
        "netns",
        "exec",
        &namespace,
        &busybox,
        "udhcpc",
        "-i",
        "c0",
        "-q",
        "-n",
        "-t",
        "10",
        "-T",
        "1",
        "-s",
        "/bin/true",
    ];
    let output = Command::new(super::host::find_tool_path("ip")).args(args).output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let lease =
        text.lines().find_map(|line| line.split("lease of ").nth(1)?.split(' ').next().map(str::to_owned));
    Some(lease.unwrap_or_else(|| panic!("no lease: {text}")))
}
