//! Tier 3: the manager end to end with the kit's Linux. A VM defined from a pool volume and a
//! NAT network gets its reserved address from the network's DHCP server, reaches the host over
//! the bridge, reads its disk, and powers off through ACPI when `kestrel vm shutdown` presses its
//! power button.
//!
//! The daemon runs in a network namespace of the test's own (the test thread moves there before
//! starting it), so its bridge, nftables table and dnsmasq never touch the host's network.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::kit::*;
use common::*;

/// The network's host address and the guest's reserved one.
const HOST_IP: &str = "10.79.0.1";
const GUEST_IP: &str = "10.79.0.50";
/// What the guest finds at the start of its disk.
const DISK_MARKER: &str = "kestrel-pool-volume-marker";
/// A hang limit, not a speed goal: a kit boot takes ~20 s on an idle host here, minutes under load.
const BOOT_LIMIT: Duration = Duration::from_secs(600);

#[test]
fn a_managed_linux_vm_gets_its_address_reaches_the_host_and_powers_off_with_acpi() {
    let Some(kit) = kit_available() else { return };
    if !is_root() {
        return;
    }
    for tool in ["ip", "nft", "dnsmasq"] {
        assert!(host_tool(tool).is_some() || std::env::var("CI").as_deref() != Ok("true"), "{tool}");
        if host_tool(tool).is_none() {
            return;
        }
    }
    let _serial = one_boot_at_a_time();
    eprintln!("tier 3: Linux (kit) under kestrel daemon: pool volume, NAT network, DHCP, ACPI shutdown");

    // SAFETY: unshare(CLONE_NEWNET) moves only this thread into a new network namespace; the
    // daemon and the tools it runs are born there.
    let result = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(result, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    let status = std::process::Command::new("ip").args(["link", "set", "lo", "up"]).status().unwrap();
    assert!(status.success());

    let daemon = Daemon::start();
    let _cleanup = Cleanup(&daemon);

    // A pool holding a raw volume imported from a file that starts with the marker.
    let pool_dir = daemon.dir.path().join("pool");
    daemon.cli_ok(&["pool", "define", "images", "--path", path_str(&pool_dir)]);
    let image = daemon.dir.path().join("data.raw");
    let mut file = std::fs::File::create(&image).unwrap();
    file.write_all(DISK_MARKER.as_bytes()).unwrap();
    file.set_len(1 << 20).unwrap();
    drop(file);
    daemon.cli_ok(&["vol", "import", "images", path_str(&image), "--name", "data", "--format", "raw"]);

    // A NAT network, and a VM on it with a fixed address (a DHCP reservation).
    daemon.cli_ok(&["net", "define", "lab", "--address", &format!("{HOST_IP}/24")]);
    daemon.cli_ok(&["net", "start", "lab"]);
    let script = format!(
        "printf '#!/bin/sh\\n[ \"$1\" = bound ] && ifconfig $interface $ip netmask $subnet\\n' > /tmp/dhcp.sh; \
         chmod +x /tmp/dhcp.sh; ip link set eth0 up; \
         udhcpc -i eth0 -n -q -t 20 -T 1 -s /tmp/dhcp.sh; \
         echo \"kestrel-dhcp: $(ip -4 -o addr show dev eth0 | tr -s ' ' | cut -d' ' -f4)\"; \
         ping -c 1 -W 10 {HOST_IP} >/dev/null && echo kestrel-ping: ok; \
         echo \"kestrel-disk: $(head -c {} /dev/vda)\"; \
         echo kestrel-ready; sleep 3600",
        DISK_MARKER.len()
    );
    let cmdline = format!("{} quiet kestrel.run={}", kit_cmdline(), percent_encode(&script));
    daemon.cli_ok(&[
        "vm",
        "define",
        "lin",
        "--kernel",
        path_str(&kit.0),
        "--initrd",
        path_str(&kit.1),
        "--memory",
        "256M",
        "--cmdline",
        &cmdline,
        "--disk",
        "volume=images/data",
        "--net",
        &format!("network=lab,ip={GUEST_IP}"),
    ]);
    daemon.cli_ok(&["vm", "start", "lin"]);

    let console = wait_for_console(&daemon, "kestrel-ready", BOOT_LIMIT);
    assert!(console.contains(&format!("kestrel-dhcp: {GUEST_IP}/24")), "no reserved lease:\n{console}");
    assert!(console.contains("kestrel-ping: ok"), "the guest did not reach the host:\n{console}");
    assert!(console.contains(&format!("kestrel-disk: {DISK_MARKER}")), "the volume:\n{console}");

    // The ACPI power button: the guest powers off (the VMM exits 0) and the VM is stopped.
    let info = daemon.cli_ok(&["vm", "shutdown", "lin", "--timeout", "120", "--json"]);
    let info: serde_json::Value = serde_json::from_str(&info).expect("shutdown --json");
    assert_eq!(info["state"], "stopped", "{info}");
    assert_eq!(info["last_exit"]["status"], 0, "powered off through ACPI: {info}");
    let console = console_log(&daemon);
    assert!(console.contains("kestrel-kit: power button pressed"), "{console}");
}

/// The VM's console log (through the daemon), once `needle` is in it.
fn wait_for_console(daemon: &Daemon, needle: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let console = console_log(daemon);
        if console.contains(needle) {
            return console;
        }
        assert!(Instant::now() < deadline, "no '{needle}' within {limit:?}; the console:\n{console}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn console_log(daemon: &Daemon) -> String {
    let output = daemon.cli(&["vm", "info", "lin", "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    let path = info["console_log"].as_str().unwrap_or_default().to_owned();
    std::fs::read_to_string(Path::new(&path)).unwrap_or_default()
}

/// Destroys the VM and stops the network even when the test fails, so no VMM or dnsmasq
/// outlives it.
struct Cleanup<'a>(&'a Daemon);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.0.cli(&["vm", "destroy", "lin"]);
        let _ = self.0.cli(&["net", "stop", "lab"]);
    }
}
