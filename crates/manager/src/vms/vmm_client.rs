//! Talking to one VMM over its Firecracker-compatible API: the requests that configure and
//! start a VM from its definition, restore a saved one, and act on a running one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Method;
use model::api;
use model::disk::ImageFormat;
use model::manager::vm::{Transport, VmDefinition};

use crate::error::ManagerError;
use crate::unix_http;

/// How long one configuration request may take.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);
/// How long a snapshot of a VM with `memory_mib` may take to write or load: two minutes, and a
/// second for every 16 MiB of guest memory (a slow disk, or this nested-KVM host, writes a few
/// tens of MiB a second).
pub fn snapshot_limit(memory_mib: u32) -> Duration {
    Duration::from_secs(120 + u64::from(memory_mib) / 16)
}

/// A disk resolved to its host file for this run.
#[derive(Clone, Debug)]
pub struct HostDisk {
    pub id: String,
    pub path: PathBuf,
    pub format: ImageFormat,
}

/// The VMM's socket and the VM's name, for messages.
pub struct Vmm<'a> {
    pub socket: &'a Path,
    pub vm: &'a str,
}

impl Vmm<'_> {
    /// Sends a request; a 2xx is success, anything else an error naming the VMM's fault message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        limit: Duration,
    ) -> Result<bytes::Bytes, ManagerError> {
        let body = body.map(|b| serde_json::to_vec(&b).unwrap_or_default());
        let answer =
            unix_http::request(self.socket, method.clone(), path, body, limit).await.map_err(|e| {
                ManagerError::internal(format!(
                    "VM '{}': the VMM did not answer {method} {path}: {e}",
                    self.vm
                ))
            })?;
        if answer.status.is_success() {
            return Ok(answer.body);
        }
        let fault =
            serde_json::from_slice::<api::Error>(&answer.body).map(|e| e.fault_message).unwrap_or_else(
                |_| String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)]).into_owned(),
            );
        let message = format!("VM '{}': {method} {path}: {fault}", self.vm);
        // The VMM's image lock: another VM (or qemu) has the disk open.
        if fault.contains("is in use") {
            return Err(ManagerError::conflict(message));
        }
        Err(if answer.status.is_client_error() {
            ManagerError::invalid(message)
        } else {
            ManagerError::internal(message)
        })
    }

    async fn put(&self, path: &str, body: serde_json::Value) -> Result<(), ManagerError> {
        self.call(Method::PUT, path, Some(body), REQUEST_LIMIT).await.map(drop)
    }

    /// `PUT /metrics`: the metrics file the daemon's stats read.
    pub async fn set_metrics(&self, metrics: &Path) -> Result<(), ManagerError> {
        self.put("/metrics", json(&api::Metrics { metrics_path: metrics.display().to_string() })).await
    }

    /// Configures every device of `definition` (disks as resolved, cards on `taps`), then
    /// `InstanceStart`.
    pub async fn configure_and_start(
        &self,
        definition: &VmDefinition,
        disks: &[HostDisk],
        taps: &[String],
        vsock_socket: &Path,
    ) -> Result<(), ManagerError> {
        self.put(
            "/boot-source",
            json(&api::BootSource {
                kernel_image_path: definition.kernel.display().to_string(),
                initrd_path: definition.initrd.as_ref().map(|p| p.display().to_string()),
                boot_args: definition.cmdline.clone(),
            }),
        )
        .await?;
        self.put(
            "/machine-config",
            json(&api::MachineConfiguration {
                vcpu_count: definition.cpus,
                mem_size_mib: u64::from(definition.memory_mib),
                smt: false,
                track_dirty_pages: false,
                cpu_template: None,
                huge_pages: None,
                kestrel: None,
            }),
        )
        .await?;
        for (disk, host) in definition.disks.iter().zip(disks) {
            let rate_limiter = (disk.bw.is_some() || disk.iops.is_some()).then(|| api::RateLimiterConfig {
                bandwidth: disk.bw.map(per_second),
                ops: disk.iops.map(per_second),
            });
            let drive = api::Drive {
                drive_id: host.id.clone(),
                is_root_device: false,
                partuuid: None,
                cache_type: None,
                is_read_only: Some(disk.readonly),
                path_on_host: Some(host.path.display().to_string()),
                rate_limiter,
                io_engine: None,
                socket: None,
                kestrel: Some(api::KestrelDrive {
                    format: Some(host.format),
                    cache: disk.cache,
                    allow_backing: Some(host.format == ImageFormat::Qcow2),
                    num_queues: disk.queues,
                    poll_us: None,
                }),
            };
            self.put(&format!("/drives/{}", host.id), json(&drive)).await?;
        }
        for (index, (nic, tap)) in definition.nics.iter().zip(taps).enumerate() {
            let limiter = |bw: Option<u64>| {
                bw.map(|bw| api::RateLimiterConfig { bandwidth: Some(per_second(bw)), ops: None })
            };
            let interface = api::NetworkInterface {
                iface_id: iface_id(index),
                host_dev_name: tap.clone(),
                guest_mac: nic.mac.clone(),
                mtu: None,
                rx_rate_limiter: limiter(nic.rx_bw),
                tx_rate_limiter: limiter(nic.tx_bw),
            };
            self.put(&format!("/network-interfaces/{}", iface_id(index)), json(&interface)).await?;
        }
        if let Some(vsock) = &definition.vsock {
            self.put(
                "/vsock",
                json(&api::Vsock {
                    guest_cid: vsock.cid,
                    uds_path: vsock_socket.display().to_string(),
                    vsock_id: None,
                }),
            )
            .await?;
        }
        if definition.rng {
            self.put("/entropy", serde_json::json!({})).await?;
        }
        if let Some(balloon) = &definition.balloon {
            self.put(
                "/balloon",
                json(&api::Balloon {
                    amount_mib: balloon.size_mib,
                    deflate_on_oom: balloon.deflate_on_oom,
                    stats_polling_interval_s: u16::try_from(balloon.stats_secs).unwrap_or(u16::MAX),
                    free_page_hinting: false,
                    free_page_reporting: balloon.free_page_reporting,
                }),
            )
            .await?;
        }
        self.action("InstanceStart").await
    }

    /// `PUT /snapshot/load` of the saved state, resumed, with the disks and taps of this run.
    pub async fn restore(
        &self,
        limit: Duration,
        saved: &Path,
        disks: &[HostDisk],
        taps: &[String],
        vsock_socket: Option<&Path>,
    ) -> Result<(), ManagerError> {
        let load = api::SnapshotLoadParams {
            snapshot_path: saved.join("state").display().to_string(),
            mem_file_path: None,
            mem_backend: Some(api::MemoryBackend {
                backend_type: api::MemoryBackendType::File,
                backend_path: saved.join("memory").display().to_string(),
            }),
            enable_diff_snapshots: false,
            track_dirty_pages: false,
            resume_vm: true,
            network_overrides: taps
                .iter()
                .enumerate()
                .map(|(index, tap)| api::NetworkOverride {
                    iface_id: iface_id(index),
                    host_dev_name: tap.clone(),
                })
                .collect(),
            vsock_override: vsock_socket.map(|p| api::VsockOverride { uds_path: p.display().to_string() }),
            clock_realtime: false,
            drive_overrides: disks
                .iter()
                .map(|d| api::DriveOverride {
                    drive_id: d.id.clone(),
                    path_on_host: d.path.display().to_string(),
                })
                .collect(),
            kestrel: None,
        };
        self.call(Method::PUT, "/snapshot/load", Some(json(&load)), limit).await.map(drop)
    }

    /// `PUT /snapshot/create` into `saved` (the VM must be paused), within `limit`.
    pub async fn snapshot(&self, saved: &Path, limit: Duration) -> Result<(), ManagerError> {
        let create = api::SnapshotCreateParams {
            mem_file_path: saved.join("memory").display().to_string(),
            snapshot_path: saved.join("state").display().to_string(),
            snapshot_type: api::SnapshotType::Full,
        };
        self.call(Method::PUT, "/snapshot/create", Some(json(&create)), limit).await.map(drop)
    }

    /// `PATCH /vm`: pause or resume.
    pub async fn set_paused(&self, paused: bool) -> Result<(), ManagerError> {
        let state = if paused { api::VmStateValue::Paused } else { api::VmStateValue::Resumed };
        self.call(Method::PATCH, "/vm", Some(json(&api::VmState { state })), REQUEST_LIMIT).await.map(drop)
    }

    /// `PUT /actions` with an action by name (`SendPowerButton` is newer than some VMMs).
    pub async fn action(&self, action_type: &str) -> Result<(), ManagerError> {
        self.put("/actions", serde_json::json!({ "action_type": action_type })).await
    }

    /// `GET /`, within the usual request limit.
    pub async fn instance(&self) -> Result<api::InstanceInfo, ManagerError> {
        self.instance_within(REQUEST_LIMIT).await
    }

    /// `GET /`: the instance's state, answered within `limit`.
    pub async fn instance_within(&self, limit: Duration) -> Result<api::InstanceInfo, ManagerError> {
        let body = self.call(Method::GET, "/", None, limit).await?;
        serde_json::from_slice(&body).map_err(|e| {
            ManagerError::internal(format!("VM '{}': the VMM's GET / is not understood: {e}", self.vm))
        })
    }
}

/// A card's interface ID in the VMM.
fn iface_id(index: usize) -> String {
    format!("net{index}")
}

/// A token bucket refilled once a second.
fn per_second(size: u64) -> api::TokenBucket {
    api::TokenBucket { size, one_time_burst: None, refill_time: 1000 }
}

fn json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// The VMM's `--transport` word.
pub fn transport_word(transport: Transport) -> &'static str {
    match transport {
        Transport::Mmio => "mmio",
        Transport::Pci => "pci",
    }
}
