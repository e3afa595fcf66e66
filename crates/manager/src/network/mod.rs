//! Networks: a bridge each, taps for the VMs' cards, NAT in an nftables table of Kestrel's own,
//! DHCP and DNS from dnsmasq.
//!
//! The store says which networks should be up (`active`); [`Networks`] makes the host match it
//! (`ensure`), and a watchdog pass every second puts back whatever someone else removed: the
//! bridge, its address, a tap's place on it, the nftables table (`nft flush ruleset`, a firewall
//! reload), or a dead dnsmasq. Everything lives on after the daemon stops, and the next daemon
//! takes it over.
//!
//! What the watchdog cannot repair: a running VM's tap that someone *deleted*. It makes the tap
//! again, but the VMM's descriptor stays on the deleted device, so the guest has no network until
//! the VM is restarted; the watchdog says so (a log line and a `nic_lost` event on the VM).
//! A repair that fails is retried with a back-off (1 s, doubling, up to 60 s), and only the
//! change between healthy and broken is logged and sent as an event (`network_broken`,
//! `network_repaired`).

pub mod dnsmasq;
pub mod host;
pub mod names;
pub mod nft;
mod records;
mod routes;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use model::manager::event::EventKind;
use model::manager::network::{
    NetworkDefinition, NetworkError, NetworkInfo, NetworkMode, NetworkPlan, NetworkPort,
};
use model::manager::vm::NicDefinition;
use model::manager::ErrorKind;

use crate::error::{ApiResult, ManagerError};
use crate::paths::Paths;
use crate::server::Shared;
use crate::store::Store;
use dnsmasq::{Dnsmasq, DnsmasqError, Files, Reservation};
use host::HostError;
use records::NetworkRecord;

pub use routes::routes;

/// The store's tables for networks.
pub const SCHEMA: &str = records::SCHEMA;

/// How often the watchdog checks the active networks.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// The longest wait between two repairs of a network that cannot be repaired.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A fixed address a defined VM's card holds on a network: the VM's UUID, its name, the address
/// (what [`Networks::check_nic`] asks of the VMs).
pub type FixedIp = (String, String, Ipv4Addr);

/// Something the watchdog saw that the daemon's event stream should carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub kind: EventKind,
    /// The network's name, or the VM's for [`EventKind::NicLost`].
    pub object: String,
    pub detail: Option<String>,
}

/// The networks the daemon keeps.
pub struct Networks {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    paths: Paths,
    /// What runs on the host; held across every change, so changes never interleave.
    host: tokio::sync::Mutex<HostState>,
    watching: AtomicBool,
    /// This daemon's nftables table (named after its state dir).
    table: String,
    /// The daemon, for the watchdog's events (set by [`Networks::start_autostart`]).
    shared: OnceLock<Weak<Shared>>,
}

/// What the daemon knows of the host's side.
#[derive(Default)]
struct HostState {
    /// Each active network's dnsmasq and the configuration it runs on.
    dnsmasq: HashMap<String, (Dnsmasq, String)>,
    /// The nftables table as last written.
    table: Option<String>,
    /// The active networks that could not be made whole, by name.
    broken: HashMap<String, Broken>,
}

/// A network whose last repair failed: when to try again.
struct Broken {
    next_try: Instant,
    delay: Duration,
}

/// A card plugged into its network for one run of a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluggedNic {
    /// The tap the VMM attaches to (`host_dev_name`).
    pub tap: String,
    /// The MAC the card must have (`guest_mac`): the definition's, else a stable one derived from
    /// the VM's UUID and the card's index (the DHCP reservation is for this MAC).
    pub mac: String,
}

impl From<NetworkError> for ManagerError {
    fn from(error: NetworkError) -> ManagerError {
        ManagerError::invalid(error)
    }
}

impl From<HostError> for ManagerError {
    fn from(error: HostError) -> ManagerError {
        let kind = match &error {
            HostError::Missing(_) => ErrorKind::Unavailable,
            HostError::Failed { message, .. } if message.contains("Operation not permitted") => {
                return ManagerError::unavailable(format!("{error} (networks need root or CAP_NET_ADMIN)"))
            }
            _ => ErrorKind::Internal,
        };
        ManagerError::new(kind, error)
    }
}

impl From<DnsmasqError> for ManagerError {
    fn from(error: DnsmasqError) -> ManagerError {
        match error {
            DnsmasqError::Host(host) => host.into(),
            other => ManagerError::internal(other),
        }
    }
}

impl Networks {
    /// The networks of the store, kept under `<state dir>/networks/<name>/`; nothing runs on the
    /// host until [`Networks::start_autostart`] or a start.
    pub fn new(store: Arc<Store>, paths: &Paths) -> Networks {
        Networks {
            inner: Arc::new(Inner {
                store,
                paths: paths.clone(),
                host: tokio::sync::Mutex::new(HostState::default()),
                watching: AtomicBool::new(false),
                table: names::table(&paths.state_dir),
                shared: OnceLock::new(),
            }),
        }
    }

    /// Brings up the networks marked autostart (and re-creates the bridges, rules and DHCP
    /// servers of those that were active before the daemon or the host restarted), then starts
    /// the watchdog that keeps them up, which reports through `shared`'s events. Calling it
    /// again does no harm.
    pub async fn start_autostart(&self, shared: &Arc<Shared>) -> ApiResult<()> {
        let _ = self.inner.shared.set(Arc::downgrade(shared));
        let mut first_error = None;
        for record in records::all(&self.inner.store)? {
            if !record.active && !record.definition.autostart {
                continue;
            }
            let name = record.definition.name.clone();
            let mut host = self.inner.host.lock().await;
            let result = async {
                records::set_active(&self.inner.store, &name, true)?;
                self.inner.ensure(&mut host, &NetworkRecord { active: true, ..record }).await
            }
            .await;
            if let Err(e) = result {
                // The watchdog retries it, with its back-off.
                tracing::error!("network '{name}' could not be brought up: {e}");
                host.broken.insert(name.clone(), Broken::first());
                self.inner.notify(vec![Notice {
                    kind: EventKind::NetworkBroken,
                    object: name,
                    detail: Some(e.to_string()),
                }]);
                first_error.get_or_insert(e);
            }
        }
        if !self.inner.watching.swap(true, Ordering::SeqCst) {
            let inner = self.inner.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(WATCH_INTERVAL);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    let notices = inner.watch().await;
                    inner.notify(notices);
                }
            });
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Checks a card of a definition being defined or edited: a tap of the user's own is a
    /// valid interface name outside Kestrel's prefixes; else its network exists, its MAC is a
    /// unicast address, its fixed address is inside the network, outside its DHCP range, and
    /// neither held by another defined VM's card (`fixed_ips(network)` lists those, from the
    /// VMs' definitions) nor by a plugged card.
    pub fn check_nic(
        &self,
        vm_uuid: &str,
        nic: &NicDefinition,
        fixed_ips: impl FnOnce(&str) -> ApiResult<Vec<FixedIp>>,
    ) -> ApiResult<()> {
        let Some(network) = &nic.network else {
            return match &nic.tap {
                Some(tap) => check_user_tap(tap),
                None => Ok(()),
            };
        };
        let record = self.inner.record(network)?;
        if let Some(mac) = &nic.mac {
            model::manager::network::parse_mac(mac)?;
        }
        if let Some(ip) = nic.ip {
            plan(&record)?.check_guest_ip(ip)?;
            if let Some((_, vm, _)) =
                fixed_ips(network)?.into_iter().find(|(uuid, _, theirs)| *theirs == ip && uuid != vm_uuid)
            {
                return Err(ManagerError::conflict(format!(
                    "the address {ip} on the network '{network}' is the fixed address of VM '{vm}'"
                )));
            }
            self.inner.check_ip_free(network, ip, vm_uuid, None)?;
        }
        Ok(())
    }

    /// Makes the tap for card `index` of a VM about to start, plugs it into the card's network
    /// (which must be active) and registers its MAC (and fixed address) with the network's DHCP
    /// server. The tap's name depends only on the VM's UUID and `index`, so a restarted daemon
    /// finds it again. A card on a tap of the user's own is handed back as it is.
    pub async fn plug(
        &self,
        vm_uuid: &str,
        vm_name: &str,
        index: usize,
        nic: &NicDefinition,
    ) -> ApiResult<PluggedNic> {
        let mac = match &nic.mac {
            Some(mac) => model::manager::network::format_mac(model::manager::network::parse_mac(mac)?),
            None => names::mac(vm_uuid, index),
        };
        let Some(network) = &nic.network else {
            return match &nic.tap {
                Some(tap) => {
                    check_user_tap(tap)?;
                    Ok(PluggedNic { tap: tap.clone(), mac })
                }
                None => Err(ManagerError::invalid("a card needs a network or a tap")),
            };
        };
        if index > names::MAX_NIC_INDEX {
            return Err(ManagerError::invalid(format!(
                "a VM may have at most {} cards on networks",
                names::MAX_NIC_INDEX + 1
            )));
        }
        let inner = &self.inner;
        let mut host = inner.host.lock().await;
        let record = inner.record(network)?;
        if !record.active {
            return Err(ManagerError::conflict(format!(
                "the network '{network}' is not active (start it with `kestrel net start {network}`)"
            )));
        }
        let plan = plan(&record)?;
        if let Some(ip) = nic.ip {
            plan.check_guest_ip(ip)?;
            inner.check_ip_free(network, ip, vm_uuid, Some(index))?;
        }
        let tap = names::tap(vm_uuid, index);
        if let Some(other) = records::port_by_tap(&inner.store, &tap)? {
            if other.vm_uuid != vm_uuid || other.index != index {
                return Err(ManagerError::conflict(format!(
                    "the tap {tap} is already the card of VM '{}'",
                    other.vm
                )));
            }
        }
        if let Some(other) = records::ports_of_network(&inner.store, network)?
            .into_iter()
            .find(|port| port.mac == mac && (port.vm_uuid != vm_uuid || port.index != index))
        {
            return Err(ManagerError::conflict(format!(
                "the MAC {mac} is already on the network '{network}' (VM '{}')",
                other.vm
            )));
        }
        let port = NetworkPort {
            vm: vm_name.to_owned(),
            vm_uuid: vm_uuid.to_owned(),
            index,
            tap: tap.clone(),
            mac: mac.clone(),
            ip: nic.ip,
        };
        records::upsert_port(&inner.store, network, &port)?;
        let result = async {
            attach_tap(&tap, &record.bridge).await?;
            inner.ensure_dnsmasq(&mut host, &record, &plan).await
        }
        .await;
        if let Err(e) = result {
            let _ = host::delete_link(&tap).await;
            records::delete_port(&inner.store, vm_uuid, index)?;
            return Err(e);
        }
        Ok(PluggedNic { tap, mac })
    }

    /// Removes the taps made for a VM (after its VMM ended). Idempotent.
    pub async fn unplug_vm(&self, vm_uuid: &str) {
        let inner = &self.inner;
        let mut host = inner.host.lock().await;
        let ports = match records::ports_of_vm(&inner.store, vm_uuid) {
            Ok(ports) => ports,
            Err(e) => return tracing::error!("cannot read the cards of VM {vm_uuid}: {e}"),
        };
        let mut reserved_on = Vec::new();
        for (port, network) in ports {
            if let Err(e) = host::delete_link(&port.tap).await {
                tracing::warn!("cannot delete the tap {}: {e}", port.tap);
            }
            if let Err(e) = records::delete_port(&inner.store, vm_uuid, port.index) {
                tracing::error!("cannot forget the tap {}: {e}", port.tap);
            }
            if port.ip.is_some() {
                reserved_on.push(network);
            }
        }
        for network in reserved_on {
            // The reservation goes with the card: dnsmasq runs again without it.
            if let Ok(record) = inner.record(&network) {
                if let (true, Ok(plan)) = (record.active, plan(&record)) {
                    if let Err(e) = inner.ensure_dnsmasq(&mut host, &record, &plan).await {
                        tracing::warn!("network '{network}': {e}");
                    }
                }
            }
        }
    }

    /// Defines a network (not started): the name and bridge are free, the subnet overlaps no
    /// other network's nor a route of the host.
    pub async fn define(&self, definition: NetworkDefinition) -> ApiResult<NetworkInfo> {
        let inner = &self.inner;
        let plan = definition.validate()?;
        let _host = inner.host.lock().await;
        let existing = records::all(&inner.store)?;
        if existing.iter().any(|r| r.definition.name == definition.name) {
            return Err(ManagerError::conflict(format!(
                "a network named '{}' exists already",
                definition.name
            )));
        }
        let bridge = names::bridge(&definition.name);
        for other in &existing {
            if other.bridge == bridge {
                return Err(ManagerError::conflict(format!(
                    "the network '{}' has the bridge {bridge} already; choose another name",
                    other.definition.name
                )));
            }
            if let Ok(theirs) = plan_of(&other.definition) {
                if theirs.subnet.overlaps(plan.subnet) {
                    return Err(ManagerError::conflict(format!(
                        "the subnet {} overlaps the network '{}' ({})",
                        plan.subnet, other.definition.name, theirs.subnet
                    )));
                }
            }
        }
        let own_bridges: Vec<String> = existing.iter().map(|r| r.bridge.clone()).collect();
        check_host_routes(&plan, &own_bridges).await?;
        let record = NetworkRecord { definition, bridge, active: false };
        records::insert(&inner.store, &record)?;
        inner.info_of(record)
    }

    /// Starts a network: its bridge, rules and DHCP server.
    pub async fn start(&self, name: &str) -> ApiResult<NetworkInfo> {
        let inner = &self.inner;
        let mut host = inner.host.lock().await;
        let record = inner.record(name)?;
        if record.active {
            return Err(ManagerError::conflict(format!("the network '{name}' is already active")));
        }
        let plan = plan(&record)?;
        let own_bridges: Vec<String> = records::all(&inner.store)?.into_iter().map(|r| r.bridge).collect();
        check_host_routes(&plan, &own_bridges).await?;
        records::set_active(&inner.store, name, true)?;
        let record = NetworkRecord { active: true, ..record };
        if let Err(e) = inner.ensure(&mut host, &record).await {
            // Leave nothing half made.
            records::set_active(&inner.store, name, false)?;
            inner.tear_down(&mut host, &record).await;
            return Err(e);
        }
        host.broken.remove(name);
        inner.info_of(record)
    }

    /// Stops a network (refused while VMs' cards are plugged into it).
    pub async fn stop(&self, name: &str) -> ApiResult<NetworkInfo> {
        let inner = &self.inner;
        let mut host = inner.host.lock().await;
        let record = inner.record(name)?;
        if !record.active {
            return Err(ManagerError::conflict(format!("the network '{name}' is not active")));
        }
        inner.refuse_if_plugged(name, "stop")?;
        records::set_active(&inner.store, name, false)?;
        let record = NetworkRecord { active: false, ..record };
        inner.tear_down(&mut host, &record).await;
        inner.info_of(record)
    }

    /// Undefines a network (stopping it first), refused while `users` (the VMs whose definitions
    /// have a card on it) is not empty or cards are plugged in.
    pub async fn undefine(&self, name: &str, users: Vec<String>) -> ApiResult<()> {
        let inner = &self.inner;
        let mut host = inner.host.lock().await;
        let record = inner.record(name)?;
        if !users.is_empty() {
            return Err(ManagerError::conflict(format!(
                "the network '{name}' is used by the VMs {}; change their cards first",
                users.join(", ")
            )));
        }
        inner.refuse_if_plugged(name, "undefine")?;
        if record.active {
            records::set_active(&inner.store, name, false)?;
        }
        records::delete(&inner.store, name)?;
        inner.tear_down(&mut host, &NetworkRecord { active: false, ..record }).await;
        let _ = std::fs::remove_dir_all(inner.dir(name));
        Ok(())
    }

    /// One network.
    pub fn info(&self, name: &str) -> ApiResult<NetworkInfo> {
        self.inner.info_of(self.inner.record(name)?)
    }

    /// Every network, by name.
    pub fn list(&self) -> ApiResult<Vec<NetworkInfo>> {
        records::all(&self.inner.store)?.into_iter().map(|record| self.inner.info_of(record)).collect()
    }

    /// One pass of the watchdog (it runs every [`WATCH_INTERVAL`]; tests call it directly):
    /// what it reported.
    pub async fn watch_once(&self) -> Vec<Notice> {
        let notices = self.inner.watch().await;
        self.inner.notify(notices.clone());
        notices
    }
}

impl Inner {
    fn dir(&self, name: &str) -> std::path::PathBuf {
        self.paths.state_dir.join("networks").join(name)
    }

    fn files(&self, name: &str) -> Files {
        Files { dir: self.dir(name) }
    }

    fn record(&self, name: &str) -> ApiResult<NetworkRecord> {
        records::load(&self.store, name)?
            .ok_or_else(|| ManagerError::not_found(format!("no network named '{name}'")))
    }

    fn info_of(&self, record: NetworkRecord) -> ApiResult<NetworkInfo> {
        let plan = plan_of(&record.definition).ok();
        let name = &record.definition.name;
        Ok(NetworkInfo {
            ports: records::ports_of_network(&self.store, name)?,
            leases: if record.active { dnsmasq::leases(&self.files(name)) } else { Vec::new() },
            subnet: plan.map(|p| p.subnet.to_string()).unwrap_or_default(),
            dhcp_range: plan.map(|p| p.dhcp_range),
            active: record.active,
            bridge: record.bridge,
            definition: record.definition,
        })
    }

    fn refuse_if_plugged(&self, name: &str, what: &str) -> ApiResult<()> {
        let ports = records::ports_of_network(&self.store, name)?;
        if ports.is_empty() {
            return Ok(());
        }
        let mut vms: Vec<&str> = ports.iter().map(|p| p.vm.as_str()).collect();
        vms.dedup();
        Err(ManagerError::conflict(format!(
            "cannot {what} the network '{name}': the running VMs {} are plugged into it",
            vms.join(", ")
        )))
    }

    /// Refuses `ip` on `network` when another card (not `vm_uuid`'s card `index`, or none of
    /// `vm_uuid`'s when `index` is `None`) has it.
    fn check_ip_free(
        &self,
        network: &str,
        ip: Ipv4Addr,
        vm_uuid: &str,
        index: Option<usize>,
    ) -> ApiResult<()> {
        let taken = records::ports_of_network(&self.store, network)?.into_iter().find(|port| {
            port.ip == Some(ip) && (port.vm_uuid != vm_uuid || index.is_some_and(|i| i != port.index))
        });
        match taken {
            Some(port) => Err(ManagerError::conflict(format!(
                "the address {ip} on the network '{network}' is reserved for VM '{}'",
                port.vm
            ))),
            None => Ok(()),
        }
    }

    /// Makes the host hold an active network: bridge (with address, up), its taps, forwarding,
    /// the nftables table, dnsmasq. Each step is done only when missing, so it repairs as well.
    async fn ensure(&self, host: &mut HostState, record: &NetworkRecord) -> ApiResult<()> {
        let plan = plan(record)?;
        create_private_dir(&self.dir(&record.definition.name))?;
        let bridge = &record.bridge;
        let link = match host::link(bridge).await? {
            Some(link) if link.kind() != Some("bridge") => {
                return Err(ManagerError::conflict(format!(
                    "the host has a device {bridge} that is not a bridge; remove it or rename the network"
                )))
            }
            Some(link) => link,
            None => {
                host::ip(&["link", "add", "name", bridge, "type", "bridge"]).await?;
                host::Link::default()
            }
        };
        if !link.has_address(plan.host, plan.subnet.prefix) {
            let address = format!("{}/{}", plan.host, plan.subnet.prefix);
            host::ip(&["addr", "add", &address, "broadcast", "+", "dev", bridge]).await?;
        }
        if !link.is_up() {
            host::ip(&["link", "set", "dev", bridge, "up"]).await?;
        }
        for port in records::ports_of_network(&self.store, &record.definition.name)? {
            attach_tap(&port.tap, bridge).await?;
        }
        if record.definition.mode == NetworkMode::Nat {
            host::enable_forwarding()
                .map_err(|e| ManagerError::internal(format!("cannot turn on IPv4 forwarding: {e}")))?;
        }
        self.apply_table(host).await?;
        self.ensure_dnsmasq(host, record, &plan).await
    }

    /// Stops what runs for a network (dnsmasq, bridge) and rewrites the table without it.
    /// Failures are logged: what is left is removed at the next stop or by hand.
    async fn tear_down(&self, host: &mut HostState, record: &NetworkRecord) {
        let name = &record.definition.name;
        host.broken.remove(name);
        match host.dnsmasq.remove(name) {
            Some((running, _)) => running.stop().await,
            None => {
                if let Some(running) = dnsmasq::adopt(&self.files(name)) {
                    running.stop().await;
                }
            }
        }
        if let Err(e) = host::delete_link(&record.bridge).await {
            tracing::warn!("network '{name}': cannot delete the bridge {}: {e}", record.bridge);
        }
        if let Err(e) = self.apply_table(host).await {
            tracing::warn!("network '{name}': cannot rewrite the nftables table: {e}");
        }
    }

    /// Writes the nftables table for the networks now active.
    async fn apply_table(&self, host: &mut HostState) -> ApiResult<()> {
        let rules: Vec<nft::NetworkRules> = records::all(&self.store)?
            .into_iter()
            .filter(|record| record.active)
            .filter_map(|record| {
                let plan = plan_of(&record.definition).ok()?;
                Some(nft::NetworkRules {
                    bridge: record.bridge,
                    subnet: plan.subnet,
                    mode: record.definition.mode,
                })
            })
            .collect();
        host.table = nft::apply(&self.table, &rules).await?;
        Ok(())
    }

    /// Runs the network's dnsmasq on the configuration its reservations make now.
    async fn ensure_dnsmasq(
        &self,
        host: &mut HostState,
        record: &NetworkRecord,
        plan: &NetworkPlan,
    ) -> ApiResult<()> {
        let name = &record.definition.name;
        let files = self.files(name);
        let mut reservations: Vec<Reservation> = records::ports_of_network(&self.store, name)?
            .into_iter()
            .filter_map(|port| Some(Reservation { mac: port.mac, ip: port.ip?, name: port.vm }))
            .collect();
        reservations.sort();
        let conf = dnsmasq::config(
            &files,
            &record.bridge,
            plan,
            record.definition.mode,
            record.definition.domain.as_deref(),
            &reservations,
        );
        if let Some((running, running_conf)) = host.dnsmasq.get(name) {
            if running.is_alive() && *running_conf == conf {
                return Ok(());
            }
        }
        if let Some((running, _)) = host.dnsmasq.remove(name) {
            running.stop().await;
        }
        let running = dnsmasq::start(&files, &conf).await?;
        host.dnsmasq.insert(name.clone(), (running, conf));
        Ok(())
    }

    /// The watchdog's pass: every active network is checked against the host and repaired
    /// (a broken one only when its back-off allows). What the event stream should hear of it.
    async fn watch(&self) -> Vec<Notice> {
        let mut notices = Vec::new();
        let mut host = self.host.lock().await;
        let active: Vec<NetworkRecord> = match records::all(&self.store) {
            Ok(all) => all.into_iter().filter(|r| r.active).collect(),
            Err(e) => {
                tracing::error!("network watchdog: {e}");
                return notices;
            }
        };
        if active.is_empty() {
            return notices;
        }
        let links = match host::links().await {
            Ok(links) => links,
            Err(e) => {
                tracing::warn!("network watchdog: {e}");
                return notices;
            }
        };
        let table = nft::fingerprint(&self.table).await;
        let now = Instant::now();
        for record in &active {
            let name = &record.definition.name;
            if host.broken.get(name).is_some_and(|broken| broken.next_try > now) {
                continue;
            }
            for port in records::ports_of_network(&self.store, name).unwrap_or_default() {
                if !links.iter().any(|l| l.ifname == port.tap) {
                    // The VMM's descriptor is on the deleted device: a new tap of the same name
                    // (made below) never reaches it.
                    tracing::warn!(
                        "VM '{}': its tap {} was deleted; restart the VM to give it back its network",
                        port.vm,
                        port.tap
                    );
                    notices.push(Notice {
                        kind: EventKind::NicLost,
                        object: port.vm.clone(),
                        detail: Some(format!(
                            "the tap {} on the network '{name}' was deleted; restart the VM to get its network back",
                            port.tap
                        )),
                    });
                }
            }
            let problem = self.find_problem(&host, record, &links, &table);
            let was_broken = host.broken.contains_key(name);
            let Some(problem) = problem else {
                if was_broken {
                    // Someone mended it by hand.
                    host.broken.remove(name);
                    tracing::info!("network '{name}' is whole again");
                    notices.push(Notice {
                        kind: EventKind::NetworkRepaired,
                        object: name.clone(),
                        detail: None,
                    });
                }
                continue;
            };
            if !was_broken {
                tracing::warn!("network '{name}': {problem}; putting it back");
            }
            match self.ensure(&mut host, record).await {
                Ok(()) if was_broken => {
                    host.broken.remove(name);
                    tracing::info!("network '{name}' is repaired");
                    notices.push(Notice {
                        kind: EventKind::NetworkRepaired,
                        object: name.clone(),
                        detail: None,
                    });
                }
                Ok(()) => {}
                Err(e) => match host.broken.get_mut(name) {
                    Some(broken) => {
                        broken.delay = (broken.delay * 2).min(MAX_BACKOFF);
                        broken.next_try = Instant::now() + broken.delay;
                        tracing::debug!("network '{name}' still cannot be repaired: {e}");
                    }
                    None => {
                        tracing::error!(
                            "network '{name}' could not be repaired: {e} (retrying with a back-off of up to {} s)",
                            MAX_BACKOFF.as_secs()
                        );
                        host.broken.insert(name.clone(), Broken::first());
                        notices.push(Notice {
                            kind: EventKind::NetworkBroken,
                            object: name.clone(),
                            detail: Some(format!("{problem}: {e}")),
                        });
                    }
                },
            }
        }
        notices
    }

    /// Sends `notices` to the daemon's event stream (once it is known).
    fn notify(&self, notices: Vec<Notice>) {
        let Some(shared) = self.shared.get().and_then(Weak::upgrade) else { return };
        for notice in notices {
            shared.events.emit(notice.kind, &notice.object, notice.detail);
        }
    }

    /// What is wrong with an active network on the host, if anything.
    fn find_problem(
        &self,
        host: &HostState,
        record: &NetworkRecord,
        links: &[host::Link],
        table: &Result<Option<String>, HostError>,
    ) -> Option<String> {
        let bridge = &record.bridge;
        let Some(link) = links.iter().find(|l| l.ifname == *bridge) else {
            return Some(format!("the bridge {bridge} is gone"));
        };
        let plan = plan_of(&record.definition).ok()?;
        if !link.is_up() || !link.has_address(plan.host, plan.subnet.prefix) {
            return Some(format!("the bridge {bridge} is down or lost its address"));
        }
        for port in records::ports_of_network(&self.store, &record.definition.name).ok()? {
            let on_bridge =
                links.iter().any(|l| l.ifname == port.tap && l.master.as_deref() == Some(bridge.as_str()));
            if !on_bridge {
                return Some(format!("the tap {} is gone or off the bridge", port.tap));
            }
        }
        match table {
            Ok(table) if *table != host.table => {
                return Some(format!(
                    "the nftables table {} {} was changed or deleted",
                    nft::FAMILY,
                    self.table
                ))
            }
            _ => {}
        }
        match host.dnsmasq.get(&record.definition.name) {
            Some((running, _)) if running.is_alive() => None,
            _ => Some("its dnsmasq is not running".into()),
        }
    }
}

impl Broken {
    /// Just broken: the first retry after a second.
    fn first() -> Broken {
        let delay = WATCH_INTERVAL;
        Broken { next_try: Instant::now() + delay, delay }
    }
}

/// Refuses a tap of the user's own that is no interface name, or in Kestrel's own prefixes.
fn check_user_tap(tap: &str) -> ApiResult<()> {
    match names::user_tap_problem(tap) {
        Some(problem) => Err(ManagerError::invalid(format!(
            "the tap '{}': {problem}",
            tap.chars().take(32).collect::<String>().escape_debug()
        ))),
        None => Ok(()),
    }
}

/// Creates a tap (persistent, not multi-queue, as the VMM opens it) unless it exists, and puts
/// it on `bridge`, up.
async fn attach_tap(tap: &str, bridge: &str) -> ApiResult<()> {
    match host::link(tap).await? {
        Some(link) if link.kind() != Some("tun") => {
            return Err(ManagerError::conflict(format!("the host has a device {tap} that is not a tap")))
        }
        Some(link) if link.master.as_deref() == Some(bridge) && link.is_up() => return Ok(()),
        Some(_) => {}
        None => {
            host::ip(&["tuntap", "add", "dev", tap, "mode", "tap"]).await?;
        }
    }
    host::ip(&["link", "set", "dev", tap, "master", bridge, "up"]).await?;
    Ok(())
}

/// Refuses a subnet that a route of the host (other than one of Kestrel's bridges) reaches.
async fn check_host_routes(plan: &NetworkPlan, own_bridges: &[String]) -> ApiResult<()> {
    for route in host::routes().await? {
        if route.dev.as_ref().is_some_and(|dev| own_bridges.contains(dev)) {
            continue;
        }
        if let Some(subnet) = route.subnet().filter(|subnet| subnet.overlaps(plan.subnet)) {
            return Err(ManagerError::conflict(format!(
                "the subnet {} overlaps the host's route to {subnet}{}",
                plan.subnet,
                route.dev.map(|dev| format!(" (on {dev})")).unwrap_or_default()
            )));
        }
    }
    Ok(())
}

fn plan_of(definition: &NetworkDefinition) -> Result<NetworkPlan, NetworkError> {
    definition.validate()
}

/// A stored definition's plan; a definition that no longer validates is the store's damage.
fn plan(record: &NetworkRecord) -> ApiResult<NetworkPlan> {
    plan_of(&record.definition).map_err(|e| {
        ManagerError::internal(format!("the stored network '{}' is invalid: {e}", record.definition.name))
    })
}

fn create_private_dir(path: &std::path::Path) -> ApiResult<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| ManagerError::internal(format!("cannot create {}: {e}", path.display())))
}
