//! `kestrel net …` against a real daemon: bridges, Kestrel's nftables table, dnsmasq, DHCP,
//! the watchdog that puts back what others remove, and refusals of bad definitions.
//!
//! Each test moves its own thread into a fresh network namespace before starting its daemon, so
//! the daemon (and its bridges, table and dnsmasq) live there and the host is never touched;
//! the namespace goes away with the test's processes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use serde_json::Value;

/// How long the watchdog (a pass every second) may take to repair something.
const REPAIR_LIMIT: Duration = Duration::from_secs(15);

/// A daemon in a network namespace of this test's own.
struct NetDaemon {
    daemon: Daemon,
}

impl NetDaemon {
    /// `None` when the test must skip (not root, or a tool missing; on CI both fail).
    fn start() -> Option<NetDaemon> {
        if !common::is_root() {
            return None;
        }
        for tool in ["ip", "nft", "dnsmasq"] {
            common::host_tool(tool)?;
        }
        // SAFETY: unshare with CLONE_NEWNET moves only this thread into a new network namespace;
        // the processes it starts from now on (the daemon, ip, nft) are born there.
        let result = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(result, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        run_ok("ip", &["link", "set", "lo", "up"]);
        Some(NetDaemon { daemon: Daemon::start() })
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        self.daemon.cli_ok(args)
    }

    /// The CLI's one-line error for a command that must fail.
    fn cli_err(&self, args: &[&str]) -> String {
        let output = self.daemon.cli(args);
        assert!(!output.status.success(), "kestrel {args:?} succeeded:\n{}", common::stdout(&output));
        let stderr = common::stderr(&output);
        assert_eq!(stderr.trim().lines().count(), 1, "one line of error: {stderr}");
        stderr
    }

    fn info(&self, name: &str) -> Value {
        serde_json::from_str(&self.cli_ok(&["net", "info", name, "--json"])).expect("net info --json")
    }

    fn dnsmasq_pid(&self, network: &str) -> Option<i32> {
        let path = self.daemon.state().join("networks").join(network).join("dnsmasq.pid");
        let pid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let ours = String::from_utf8_lossy(&cmdline).contains(&*self.daemon.state().to_string_lossy());
        let running = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'));
        (ours && running).then_some(pid)
    }
}

impl Drop for NetDaemon {
    fn drop(&mut self) {
        // dnsmasq outlives its daemon on purpose; the test's own end it must not.
        self.daemon.kill();
        let Ok(dirs) = std::fs::read_dir(self.daemon.state().join("networks")) else { return };
        for dir in dirs.flatten() {
            if let Some(pid) = self.dnsmasq_pid(&dir.file_name().to_string_lossy()) {
                // SAFETY: kill on a PID just checked to be this test's dnsmasq.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn run(program: &str, args: &[&str]) -> Output {
    let mut command = Command::new(common::host_tool(program).unwrap_or_else(|| PathBuf::from(program)));
    command.args(args);
    common::run_to_end(command, b"")
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        common::stdout(&output),
        common::stderr(&output)
    );
    common::stdout(&output)
}

/// The name of the daemon's table, `kestrel_<8 hex digits>` (named after its state dir, so two
/// daemons never share one), or `None` when there is none. The test's namespace holds one daemon,
/// so at most one.
fn kestrel_table_name() -> Option<String> {
    let tables = run_ok("nft", &["list", "tables"]);
    let mut names = tables.lines().filter_map(|line| line.strip_prefix("table inet kestrel_"));
    let suffix = names.next()?;
    assert!(names.next().is_none(), "one table per daemon: {tables}");
    assert!(suffix.len() == 8 && suffix.bytes().all(|b| b.is_ascii_hexdigit()), "{tables}");
    Some(format!("kestrel_{suffix}"))
}

/// The daemon's table as nft prints it, or `None` when there is none.
fn kestrel_table() -> Option<String> {
    let output = run("nft", &["list", "table", "inet", &kestrel_table_name()?]);
    output.status.success().then(|| common::stdout(&output))
}

/// The link's JSON from `ip -json addr show`, or `None` when it does not exist.
fn link(name: &str) -> Option<Value> {
    let output = run("ip", &["-json", "addr", "show", "dev", name]);
    if !output.status.success() {
        return None;
    }
    let links: Value = serde_json::from_str(&common::stdout(&output)).expect("ip -json");
    links.get(0).cloned()
}

fn has_address(link: &Value, address: &str, prefix: u64) -> bool {
    link["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a["local"] == address && a["prefixlen"] == prefix)
}

/// Waits until `condition` holds, failing the test after `limit`.
fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_nat_network_gets_its_bridge_rules_and_dhcp_server_and_stop_removes_them() {
    let Some(net) = NetDaemon::start() else { return };
    net.cli_ok(&["net", "define", "lab", "--address", "10.77.0.1/24"]);
    assert!(link("kb-lab").is_none(), "defining does not start");
    net.cli_ok(&["net", "start", "lab"]);

    let bridge = link("kb-lab").expect("the bridge exists");
    assert!(has_address(&bridge, "10.77.0.1", 24), "{bridge}");
    let table = kestrel_table().expect("the table exists");
    assert!(table.contains("ip saddr 10.77.0.0/24") && table.contains("masquerade"), "{table}");
    assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap().trim(), "1");
    assert!(net.dnsmasq_pid("lab").is_some(), "dnsmasq runs");
    let info = net.info("lab");
    assert_eq!(info["active"], true);
    assert_eq!(info["bridge"], "kb-lab");
    assert_eq!(info["dhcp_range"], serde_json::json!(["10.77.0.128", "10.77.0.254"]));
    let list: Value = serde_json::from_str(&net.cli_ok(&["net", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert!(net.cli_ok(&["net", "list"]).contains("lab   active"), "the table names it active");
    // The files it keeps are the owner's only.
    let dir = net.daemon.state().join("networks/lab");
    for file in ["dnsmasq.conf", "dnsmasq.pid", "leases"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join(file)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o077, 0, "{file} is {mode:o}");
    }

    let pid = net.dnsmasq_pid("lab").unwrap();
    net.cli_ok(&["net", "stop", "lab"]);
    assert!(link("kb-lab").is_none(), "the bridge is gone");
    assert!(kestrel_table().is_none(), "no active network, no table");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || net.dnsmasq_pid("lab").is_none(),
        "dnsmasq is gone"
    );
    assert_eq!(net.info("lab")["active"], false);
    net.cli_ok(&["net", "undefine", "lab"]);
    assert!(net.cli_err(&["net", "info", "lab"]).contains("no network named 'lab'"));
}

#[test]
fn an_isolated_network_forwards_and_masquerades_nothing() {
    let Some(net) = NetDaemon::start() else { return };
    net.cli_ok(&[
        "net",
        "define",
        "quiet",
        "--address",
        "10.78.0.1/24",
        "--isolated",
        "--domain",
        "quiet.internal",
    ]);
    net.cli_ok(&["net", "start", "quiet"]);
    let table = kestrel_table().expect("the table exists");
    assert!(!table.contains("masquerade"), "{table}");
    assert!(!table.contains("ip saddr 10.78.0.0/24 accept"), "{table}");
    assert!(
        table.contains("iifname \"kb-quiet\" reject") && table.contains("oifname \"kb-quiet\" reject"),
        "{table}"
    );
    let conf = std::fs::read_to_string(net.daemon.state().join("networks/quiet/dnsmasq.conf")).unwrap();
    assert!(conf.contains("no-resolv") && conf.contains("local=/quiet.internal/"), "{conf}");
}

/// A second namespace joined to a bridge by a veth pair: a DHCP client's machine.
struct Client {
    namespace: String,
}

impl Client {
    fn join(bridge: &str, mac: &str) -> Client {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let namespace = format!("kestrel-dhcp-{}-{n}", std::process::id());
        run_ok("ip", &["netns", "add", &namespace]);
        let client = Client { namespace };
        let host_end = format!("kv{}h{n}", std::process::id() % 100_000);
        run_ok(
            "ip",
            &["link", "add", &host_end, "type", "veth", "peer", "name", "dhcp0", "netns", &client.namespace],
        );
        run_ok("ip", &["link", "set", &host_end, "master", bridge, "up"]);
        run_ok("ip", &["-n", &client.namespace, "link", "set", "dhcp0", "address", mac, "up"]);
        client
    }

    /// Gives the client a fixed address and a default route through the bridge's host address.
    fn configure(&self, cidr: &str, gateway: &str) {
        run_ok("ip", &["-n", &self.namespace, "addr", "add", cidr, "dev", "dhcp0"]);
        run_ok("ip", &["-n", &self.namespace, "route", "add", "default", "via", gateway]);
    }

    /// Whether one ping from the client to `target` is answered within 2 s.
    fn ping(&self, target: &str) -> bool {
        let busybox = common::host_tool("busybox").expect("busybox");
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.namespace,
                busybox.to_str().unwrap(),
                "ping",
                "-c",
                "1",
                "-W",
                "2",
                target,
            ],
        )
        .status
        .success()
    }

    /// Asks for a lease (busybox udhcpc) giving `hostname`; the address offered.
    fn lease(&self, hostname: &str) -> String {
        let busybox = common::host_tool("busybox").expect("busybox");
        let hostname = format!("hostname:{hostname}");
        let output = run(
            "ip",
            &[
                "netns",
                "exec",
                &self.namespace,
                busybox.to_str().unwrap(),
                "udhcpc",
                "-x",
                &hostname,
                "-i",
                "dhcp0",
                "-q",
                "-n",
                "-t",
                "10",
                "-T",
                "1",
                "-s",
                "/bin/true",
            ],
        );
        let text = format!("{}{}", common::stdout(&output), common::stderr(&output));
        let address = text
            .lines()
            .find_map(|line| line.split("lease of ").nth(1)?.split(' ').next().map(str::to_owned));
        address.unwrap_or_else(|| panic!("no lease: {text}"))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.namespace]);
    }
}

#[test]
fn dhcp_leases_an_address_of_the_range_to_a_machine_on_the_bridge() {
    let Some(net) = NetDaemon::start() else { return };
    if common::host_tool("busybox").is_none() {
        return;
    }
    net.cli_ok(&[
        "net",
        "define",
        "dhcp",
        "--address",
        "10.79.0.1/24",
        "--dhcp-range",
        "10.79.0.50-10.79.0.60",
        "--domain",
        "lab.internal",
    ]);
    net.cli_ok(&["net", "start", "dhcp"]);
    let client = Client::join("kb-dhcp", "52:54:00:79:00:01");
    let address: std::net::Ipv4Addr = client.lease("guest1").parse().unwrap();
    assert!((50..=60).contains(&address.octets()[3]) && address.octets()[..3] == [10, 79, 0], "{address}");
    let info = net.info("dhcp");
    let leases = info["leases"].as_array().expect("leases");
    assert!(
        leases.iter().any(|l| l["mac"] == "52:54:00:79:00:01" && l["ip"] == address.to_string()),
        "{info}"
    );
    // The network's DNS server knows the guest by the name it gave, in the network's domain.
    client.configure(&format!("{address}/24"), "10.79.0.1");
    let busybox = common::host_tool("busybox").unwrap();
    let lookup = run(
        "ip",
        &[
            "netns",
            "exec",
            &client.namespace,
            busybox.to_str().unwrap(),
            "nslookup",
            "guest1.lab.internal",
            "10.79.0.1",
        ],
    );
    let answer = common::stdout(&lookup);
    assert!(answer.contains(&format!("Address: {address}")), "{answer}{}", common::stderr(&lookup));
}

#[test]
fn what_others_remove_comes_back_by_itself() {
    let Some(net) = NetDaemon::start() else { return };
    net.cli_ok(&["net", "define", "sturdy", "--address", "10.80.0.1/24"]);
    net.cli_ok(&["net", "start", "sturdy"]);
    let original = kestrel_table().expect("the table exists");

    // A firewall manager's reload, libvirt's bane.
    run_ok("nft", &["flush", "ruleset"]);
    wait_until(REPAIR_LIMIT, "the table's return after `nft flush ruleset`", || {
        kestrel_table().as_ref() == Some(&original)
    });

    // Someone edits Kestrel's table.
    let table = kestrel_table_name().expect("the table exists");
    run_ok("nft", &["flush", "chain", "inet", &table, "postrouting"]);
    wait_until(REPAIR_LIMIT, "the table's repair after a flushed chain", || {
        kestrel_table().as_ref() == Some(&original)
    });

    // The bridge deleted.
    run_ok("ip", &["link", "del", "kb-sturdy"]);
    wait_until(REPAIR_LIMIT, "the bridge's return", || {
        link("kb-sturdy").is_some_and(|l| has_address(&l, "10.80.0.1", 24))
    });

    // dnsmasq killed.
    let pid = net.dnsmasq_pid("sturdy").expect("dnsmasq runs");
    // SAFETY: kill on this test's own dnsmasq.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until(REPAIR_LIMIT, "a new dnsmasq", || net.dnsmasq_pid("sturdy").is_some_and(|new| new != pid));
}

#[test]
fn networks_come_back_after_the_daemon_and_the_host_lose_them() {
    let Some(mut net) = NetDaemon::start() else { return };
    net.cli_ok(&["net", "define", "boot", "--address", "10.81.0.1/24", "--autostart"]);
    net.cli_ok(&["net", "define", "kept", "--address", "10.82.0.1/24"]);
    net.cli_ok(&["net", "start", "kept"]);
    let dnsmasq = net.dnsmasq_pid("kept").expect("dnsmasq runs");

    // The daemon dies: the network keeps running, and the next daemon adopts its dnsmasq.
    net.daemon.kill();
    assert!(link("kb-kept").is_some());
    net.daemon.restart();
    net.cli_ok(&["net", "list"]);
    assert_eq!(net.dnsmasq_pid("kept"), Some(dnsmasq), "the same dnsmasq, adopted");
    assert_eq!(net.info("boot")["active"], true, "autostart started it");
    assert!(link("kb-boot").is_some_and(|l| has_address(&l, "10.81.0.1", 24)));

    // A host reboot: everything on the host is gone, the store is not.
    net.daemon.kill();
    for network in ["boot", "kept"] {
        if let Some(pid) = net.dnsmasq_pid(network) {
            // SAFETY: kill on this test's own dnsmasq.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        run_ok("ip", &["link", "del", &format!("kb-{network}")]);
    }
    run_ok("nft", &["flush", "ruleset"]);
    net.daemon.restart();
    // The daemon answers once it has brought its networks back.
    net.cli_ok(&["net", "list"]);
    for (network, address) in [("boot", "10.81.0.1"), ("kept", "10.82.0.1")] {
        let bridge = link(&format!("kb-{network}"));
        assert!(
            bridge.as_ref().is_some_and(|l| has_address(l, address, 24)),
            "{network}: {bridge:?}\n{}",
            net.daemon.log()
        );
        assert!(net.dnsmasq_pid(network).is_some(), "{network}'s dnsmasq; daemon log:\n{}", net.daemon.log());
    }
    let table = kestrel_table().expect("the table is back");
    assert!(table.contains("10.81.0.0/24") && table.contains("10.82.0.0/24"), "{table}");
}

#[test]
fn bad_definitions_are_refused_with_one_clear_line() {
    let Some(net) = NetDaemon::start() else { return };
    assert!(net
        .cli_err(&["net", "define", "x", "--address", "10.83.0.1"])
        .contains("is not an IPv4 address with a prefix"));
    assert!(net.cli_err(&["net", "define", "x", "--address", "10.83.0.1/31"]).contains("prefix /31"));
    assert!(net.cli_err(&["net", "define", "x", "--address", "10.83.0.0/24"]).contains("first address"));
    let range = net.cli_err(&[
        "net",
        "define",
        "x",
        "--address",
        "10.83.0.1/24",
        "--dhcp-range",
        "10.84.0.2-10.84.0.9",
    ]);
    assert!(range.contains("not inside the subnet"), "{range}");
    assert!(net.cli_err(&["net", "define", "../x", "--address", "10.83.0.1/24"]).contains("may only hold"));

    net.cli_ok(&["net", "define", "first", "--address", "10.83.0.1/24"]);
    assert!(net.cli_err(&["net", "define", "first", "--address", "10.85.0.1/24"]).contains("exists already"));
    let overlap = net.cli_err(&["net", "define", "second", "--address", "10.83.0.129/25"]);
    assert!(overlap.contains("overlaps the network 'first'"), "{overlap}");

    // A subnet the host already routes elsewhere.
    run_ok("ip", &["link", "add", "uplink0", "type", "bridge"]);
    run_ok("ip", &["addr", "add", "10.86.0.5/16", "dev", "uplink0"]);
    run_ok("ip", &["link", "set", "uplink0", "up"]);
    let routed = net.cli_err(&["net", "define", "third", "--address", "10.86.3.1/24"]);
    assert!(routed.contains("overlaps the host's route to 10.86.0.0/16 (on uplink0)"), "{routed}");

    // The API itself refuses what the CLI checks first, with the error body's kind.
    let socket = &net.daemon.socket;
    let kind = |(status, body): (u16, String)| -> (u16, String) {
        let body: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("an error body: {body}"));
        (status, body["kind"].as_str().unwrap_or("").to_owned())
    };
    let bad = r#"{"name":"api","address":"10.83.0.1/40"}"#;
    assert_eq!(kind(common::api::request(socket, "POST", "/v1/networks", bad)), (400, "invalid".into()));
    let unknown = r#"{"name":"api","address":"10.83.0.1/24","bogus":true}"#;
    assert_eq!(kind(common::api::request(socket, "POST", "/v1/networks", unknown)), (400, "invalid".into()));
    let again = r#"{"name":"first","address":"10.89.0.1/24"}"#;
    assert_eq!(kind(common::api::request(socket, "POST", "/v1/networks", again)), (409, "conflict".into()));
    assert_eq!(
        kind(common::api::request(socket, "GET", "/v1/networks/nowhere", "")),
        (404, "not_found".into())
    );

    // Nothing refused was stored; the lifecycle refuses what does not fit the state.
    let list: Value = serde_json::from_str(&net.cli_ok(&["net", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "nothing else was stored: {list}");
    assert!(net.cli_err(&["net", "start", "nowhere"]).contains("no network named 'nowhere'"));
    net.cli_ok(&["net", "start", "first"]);
    assert!(net.cli_err(&["net", "start", "first"]).contains("already active"));
    assert!(net.cli_err(&["net", "stop", "nowhere"]).contains("no network named"));
}

/// A namespace standing for the world beyond the host's uplink: it has no route back to the NAT
/// network's subnet, so only masqueraded traffic from there gets an answer.
struct World {
    namespace: String,
}

impl World {
    fn attach() -> World {
        let namespace = format!("kestrel-world-{}", std::process::id());
        run_ok("ip", &["netns", "add", &namespace]);
        let world = World { namespace };
        run_ok(
            "ip",
            &["link", "add", "uplink0", "type", "veth", "peer", "name", "w0", "netns", &world.namespace],
        );
        run_ok("ip", &["addr", "add", "192.0.2.2/24", "dev", "uplink0"]);
        run_ok("ip", &["link", "set", "uplink0", "up"]);
        run_ok("ip", &["-n", &world.namespace, "addr", "add", "192.0.2.1/24", "dev", "w0"]);
        run_ok("ip", &["-n", &world.namespace, "link", "set", "w0", "up"]);
        // The way back to the isolated network's subnet (only): its guests' packets would be
        // answered if the host forwarded them.
        run_ok("ip", &["-n", &world.namespace, "route", "add", "10.88.0.0/24", "via", "192.0.2.2"]);
        world
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.namespace]);
    }
}

#[test]
fn nat_guests_reach_the_uplink_and_isolated_ones_reach_nothing_beyond_the_host() {
    let Some(net) = NetDaemon::start() else { return };
    if common::host_tool("busybox").is_none() {
        return;
    }
    let _world = World::attach();
    net.cli_ok(&["net", "define", "out", "--address", "10.87.0.1/24"]);
    net.cli_ok(&["net", "define", "in", "--address", "10.88.0.1/24", "--isolated"]);
    net.cli_ok(&["net", "start", "out"]);
    net.cli_ok(&["net", "start", "in"]);
    let nat = Client::join("kb-out", "52:54:00:87:00:32");
    nat.configure("10.87.0.50/24", "10.87.0.1");
    let isolated = Client::join("kb-in", "52:54:00:88:00:32");
    isolated.configure("10.88.0.50/24", "10.88.0.1");

    assert!(nat.ping("10.87.0.1"), "a NAT guest reaches the host");
    assert!(nat.ping("192.0.2.1"), "a NAT guest reaches the world, masqueraded");
    assert!(isolated.ping("10.88.0.1"), "an isolated guest reaches the host");
    assert!(!isolated.ping("192.0.2.1"), "an isolated guest does not reach the world");
    assert!(!nat.ping("10.88.0.50"), "a NAT guest does not reach into an isolated network");
}

#[test]
fn a_fixed_address_must_be_outside_the_dhcp_range_and_not_another_vms() {
    let Some(net) = NetDaemon::start() else { return };
    net.cli_ok(&["net", "define", "fixed", "--address", "10.96.0.1/24"]);
    let define = |vm: &str, ip: &str| {
        let net_spec = format!("network=fixed,ip={ip}");
        net.daemon.cli(&["vm", "define", vm, "--kernel", guests::HELLO, "--net", &net_spec])
    };
    // .128-.254 is DHCP's: a stopped VM's address there may be leased to another guest.
    let in_range = define("a", "10.96.0.150");
    assert!(!in_range.status.success(), "{}", common::stdout(&in_range));
    assert!(common::stderr(&in_range).contains("DHCP range"), "{}", common::stderr(&in_range));
    // Outside it, the address is the first VM's, even while it is stopped (nothing plugged).
    let first = define("a", "10.96.0.20");
    assert!(first.status.success(), "{}", common::stderr(&first));
    let second = define("b", "10.96.0.20");
    assert!(!second.status.success(), "{}", common::stdout(&second));
    assert!(common::stderr(&second).contains("VM 'a'"), "{}", common::stderr(&second));
    assert!(define("b", "10.96.0.21").status.success());
}
