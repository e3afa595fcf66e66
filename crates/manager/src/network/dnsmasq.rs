//! One dnsmasq per active network: DHCP (with the cards' reservations) and DNS on its bridge,
//! as libvirt runs it. dnsmasq daemonizes itself (its own session, parented to init), so it
//! outlives the daemon; a restarted daemon adopts it through its pid file, checked against
//! `/proc/PID/cmdline` and held by a pidfd (so a reused PID is never signalled).
//!
//! Reservations are `dhcp-host` lines of the configuration file, which dnsmasq reads as root
//! before it drops to `nobody`; it could not re-read a hosts file in the daemon's 0700 state
//! directory on SIGHUP, so a change of reservations restarts it (the lease file keeps the leases).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use model::manager::network::{Lease, NetworkMode, NetworkPlan};

use super::host::{run, HostError};

/// How long dnsmasq may take to leave after SIGTERM before SIGKILL.
const STOP_LIMIT: Duration = Duration::from_secs(5);
/// The biggest lease file read (dnsmasq's own cap of leases keeps it far below).
const LEASES_LIMIT: u64 = 4 << 20;

/// The files of one network's dnsmasq, in `networks/<name>/`.
#[derive(Clone, Debug)]
pub struct Files {
    pub dir: PathBuf,
}

impl Files {
    /// dnsmasq's configuration file (written by the daemon).
    pub fn conf(&self) -> PathBuf {
        self.dir.join("dnsmasq.conf")
    }
    /// dnsmasq's pid file (how a restarted daemon finds it).
    pub fn pid(&self) -> PathBuf {
        self.dir.join("dnsmasq.pid")
    }
    /// dnsmasq's lease file.
    pub fn leases(&self) -> PathBuf {
        self.dir.join("leases")
    }
}

/// A reservation: this MAC gets this address (and, when it is a DNS label, this name).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reservation {
    pub mac: String,
    pub ip: Ipv4Addr,
    pub name: String,
}

/// The configuration file for a network.
pub fn config(
    files: &Files,
    bridge: &str,
    plan: &NetworkPlan,
    mode: NetworkMode,
    domain: Option<&str>,
    reservations: &[Reservation],
) -> String {
    let (start, end) = plan.dhcp_range;
    let lease_max = u32::from(end) - u32::from(start) + 1 + reservations.len() as u32;
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line("strict-order".into());
    line(format!("pid-file={}", files.pid().display()));
    line("except-interface=lo".into());
    // bind-dynamic follows the bridge's address if the watchdog has to put it back.
    line("bind-dynamic".into());
    line(format!("interface={bridge}"));
    line("no-hosts".into());
    line(format!("dhcp-range={start},{end},{},1h", plan.subnet.netmask()));
    line("dhcp-no-override".into());
    line("dhcp-authoritative".into());
    line(format!("dhcp-lease-max={lease_max}"));
    line(format!("dhcp-leasefile={}", files.leases().display()));
    if mode == NetworkMode::Isolated {
        // No upstream servers: the guests resolve each other's names only.
        line("no-resolv".into());
        // No default route for the guests: there is nowhere to go.
        line("dhcp-option=option:router".into());
    }
    if let Some(domain) = domain {
        line(format!("domain={domain}"));
        line(format!("local=/{domain}/"));
    }
    for reservation in reservations {
        let label = &reservation.name;
        let is_label = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-');
        if is_label {
            line(format!("dhcp-host={},{},{label}", reservation.mac, reservation.ip));
        } else {
            line(format!("dhcp-host={},{}", reservation.mac, reservation.ip));
        }
    }
    out
}

/// A running dnsmasq, held by a pidfd.
#[derive(Debug)]
pub struct Dnsmasq {
    /// Its process ID (for logs; signals go through the pidfd).
    pub pid: i32,
    pidfd: OwnedFd,
}

/// Why dnsmasq is not running.
#[derive(Debug, thiserror::Error)]
pub enum DnsmasqError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("dnsmasq started but left no usable pid file at {0}")]
    NoPid(String),
}

/// Writes the configuration (0600) and starts dnsmasq with it, or adopts the one already
/// running on exactly this file.
pub async fn start(files: &Files, conf: &str) -> Result<Dnsmasq, DnsmasqError> {
    if let Some(running) = adopt(files) {
        // One left by an earlier daemon: kept if it runs on what this one would write.
        if std::fs::read_to_string(files.conf()).is_ok_and(|old| old == conf) {
            return Ok(running);
        }
        running.stop().await;
    }
    write_private(&files.conf(), conf.as_bytes())?;
    // dnsmasq sets its own umask (022) and would make these world-readable; it keeps the mode
    // of files that exist.
    for path in [files.leases(), files.pid()] {
        create_private(&path)?;
    }
    let conf_arg = format!("--conf-file={}", files.conf().display());
    // dnsmasq forks into the background once its sockets are open; its exit status and stderr
    // tell whether that worked, and the pid file is written before the parent exits.
    run("dnsmasq", &[&conf_arg], None).await?;
    // It replaced the pid file with one of its umask's mode.
    create_private(&files.pid())?;
    adopt(files).ok_or_else(|| DnsmasqError::NoPid(files.pid().display().to_string()))
}

/// The dnsmasq running on this network's configuration file, if one is.
pub fn adopt(files: &Files) -> Option<Dnsmasq> {
    let text = std::fs::read_to_string(files.pid()).ok()?;
    let pid: i32 = text.trim().parse().ok().filter(|pid| *pid > 0)?;
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the descriptor was just returned to us and is owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // Checked after the pidfd is held: if this PID is our dnsmasq now, the pidfd is its.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let wanted = format!("--conf-file={}", files.conf().display());
    let ours = cmdline.split(|b| *b == 0).any(|arg| arg == wanted.as_bytes());
    let running = Dnsmasq { pid, pidfd };
    (ours && running.is_alive()).then_some(running)
}

impl Dnsmasq {
    /// Whether the process still runs (its pidfd is not yet readable).
    pub fn is_alive(&self) -> bool {
        let mut poll = libc::pollfd { fd: self.pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd that lives across the call; a zero timeout never blocks.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready == 0
    }

    /// SIGTERM, then SIGKILL if it has not left within 5 s; returns once it is gone.
    pub async fn stop(self) {
        self.signal(libc::SIGTERM);
        if !self.wait_gone(STOP_LIMIT).await {
            tracing::warn!("dnsmasq {} ignored SIGTERM; killing it", self.pid);
            self.signal(libc::SIGKILL);
            self.wait_gone(STOP_LIMIT).await;
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: pidfd_send_signal on a pidfd we own, with no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<u8>(),
                0,
            )
        };
    }

    async fn wait_gone(&self, limit: Duration) -> bool {
        let Ok(fd) = self.pidfd.try_clone() else { return !self.is_alive() };
        // Only readability is asked for; a pidfd turns readable when its process ends.
        // SAFETY: `fd` is an OwnedFd the AsyncFd owns: it stays open and the same until dropped.
        let registered =
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
        let Ok(watched) = registered else { return !self.is_alive() };
        tokio::time::timeout(limit, watched.readable()).await.is_ok()
    }
}

/// Writes `data` to `path` through a temporary file and a rename, 0600.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), DnsmasqError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let error = |source| DnsmasqError::Write { path: path.display().to_string(), source };
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(error)?;
    file.write_all(data).map_err(error)?;
    file.sync_all().map_err(error)?;
    std::fs::rename(&temporary, path).map_err(error)
}

/// Creates `path` empty and 0600 unless it exists (and makes it 0600 if it does).
fn create_private(path: &Path) -> Result<(), DnsmasqError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let error = |source| DnsmasqError::Write { path: path.display().to_string(), source };
    let file = std::fs::OpenOptions::new().append(true).create(true).mode(0o600).open(path).map_err(error)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(error)
}

/// The leases dnsmasq recorded (a missing file is none).
pub fn leases(files: &Files) -> Vec<Lease> {
    use std::io::Read;
    let Ok(file) = std::fs::File::open(files.leases()) else { return Vec::new() };
    let mut text = String::new();
    if file.take(LEASES_LIMIT).read_to_string(&mut text).is_err() {
        return Vec::new();
    }
    parse_leases(&text)
}

/// dnsmasq's lease file: `EXPIRY MAC IP HOSTNAME CLIENT-ID` per line (`*` for none); lines that
/// are not that (DHCPv6's `duid` line, damage) are skipped.
pub fn parse_leases(text: &str) -> Vec<Lease> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let expires = fields.next()?.parse().ok()?;
            let mac = fields.next()?;
            model::manager::network::parse_mac(mac).ok()?;
            let ip = fields.next()?.parse().ok()?;
            let hostname = fields.next().filter(|name| *name != "*" && name.len() <= 255).map(str::to_owned);
            Some(Lease { expires, mac: mac.to_ascii_lowercase(), ip, hostname })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lease_lines_read_back() {
        let text = "1796332198 52:54:00:00:00:03 10.99.0.11 web 01:52:54:00:00:00:03\n\
                    duid 00:01:00:01\n\
                    1796332195 52:54:00:00:00:02 10.99.0.230 * *\n";
        let leases = parse_leases(text);
        assert_eq!(leases.len(), 2);
        assert_eq!(leases[0].hostname.as_deref(), Some("web"));
        assert_eq!(leases[1].ip, "10.99.0.230".parse::<Ipv4Addr>().unwrap());
        assert_eq!(leases[1].hostname, None);
    }

    #[test]
    fn the_config_holds_the_range_and_the_reservations() {
        let definition = model::manager::network::NetworkDefinition {
            name: "n".into(),
            address: "10.5.0.1/24".into(),
            mode: NetworkMode::Isolated,
            dhcp_range: None,
            autostart: false,
            domain: Some("lab".into()),
        };
        let plan = definition.validate().unwrap();
        let files = Files { dir: "/state/networks/n".into() };
        let reservations = [
            Reservation {
                mac: "52:54:00:00:00:01".into(),
                ip: "10.5.0.9".parse().unwrap(),
                name: "web".into(),
            },
            Reservation {
                mac: "52:54:00:00:00:02".into(),
                ip: "10.5.0.10".parse().unwrap(),
                name: "a_b".into(),
            },
        ];
        let text = config(&files, "kb-n", &plan, NetworkMode::Isolated, Some("lab"), &reservations);
        assert!(text.contains("dhcp-range=10.5.0.128,10.5.0.254,255.255.255.0,1h\n"), "{text}");
        assert!(text.contains("dhcp-host=52:54:00:00:00:01,10.5.0.9,web\n"), "{text}");
        assert!(text.contains("dhcp-host=52:54:00:00:00:02,10.5.0.10\n"), "{text}");
        assert!(text.contains("no-resolv\n") && text.contains("interface=kb-n\n"), "{text}");
    }

    proptest! {
        #[test]
        fn any_lease_file_parses_without_panicking(text in "\\PC{0,400}") {
            for lease in parse_leases(&text) {
                prop_assert!(model::manager::network::parse_mac(&lease.mac).is_ok());
            }
        }
    }
}
