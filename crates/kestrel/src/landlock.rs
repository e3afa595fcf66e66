//! Where the VMM meets Landlock (`jail::landlock`): the rules a VM's configuration needs, applied
//! on the main thread just before the VM is built or restored, so that every thread the VM starts
//! (vCPUs, device workers, disk I/O, snapshot and drive-update operations) inherits them.
//!
//! Not covered: threads started before that point. In `kestrel vmm` those are the API threads
//! (`kestrel-api`, `kestrel-api-conn`); their seccomp filter gives them no syscall that opens a
//! path, so they cannot reach the files Landlock would refuse. In `kestrel run` no thread exists
//! yet when the rules are applied.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use jail::landlock::{self, Access, AllowSpec, Applied, Decision, LandlockError, Mode, Rules};
use model::config::{ImageFormat, SerialConfig, VirtioConfig, VmConfig};
use vmm::control::{DriveUpdate, EngineError, Launch, Launcher, PathUse, VmControl};

/// The rules for `config`: the system's few paths, the VM's files as configured, the qcow2
/// backing chains (read-only), the output files, `extra_outputs` (the metrics file) and the
/// `--landlock-allow` paths.
pub fn rules_for(config: &VmConfig, extra_outputs: &[&Path], allow: &[AllowSpec]) -> Rules {
    let mut rules = landlock::system_rules();
    rules.allow(&config.kernel, Access::ReadOnly);
    if let Some(initrd) = &config.initrd {
        rules.allow(initrd, Access::ReadOnly);
    }
    if let SerialConfig::File(path) = &config.serial {
        rules.allow_output_file(path);
    }
    for device in &config.virtio {
        match device {
            VirtioConfig::Block(disk) => {
                let access = if disk.read_only { Access::ReadOnly } else { Access::ReadWrite };
                rules.allow(&disk.path, access);
                if disk.format == ImageFormat::Qcow2 && disk.allow_backing {
                    allow_backing_chain(&mut rules, &disk.path);
                }
            }
            // The device binds its socket there and connects to `PATH_PORT` beside it.
            VirtioConfig::Vsock(vsock) => rules.allow_created_in_parent(&vsock.uds_path),
            // Taps come through /dev/net/tun (a system rule); the others open nothing.
            VirtioConfig::Net(_) | VirtioConfig::Rng | VirtioConfig::Balloon(_) => {}
        }
    }
    for path in extra_outputs {
        rules.allow_output_file(path);
    }
    for spec in allow {
        let rule = spec.to_rule();
        rules.allow(rule.path, rule.access);
    }
    rules
}

/// Every file below a qcow2 disk, read-only. A chain that cannot be read adds nothing: opening
/// the disk then fails with the real reason.
fn allow_backing_chain(rules: &mut Rules, path: &Path) {
    match storage::image::backing_files(path) {
        Ok(files) => files.into_iter().for_each(|file| rules.allow(file, Access::ReadOnly)),
        Err(e) => tracing::debug!("Landlock: no backing chain for {}: {e}", path.display()),
    }
}

/// The process's Landlock state: what `--landlock` and `--landlock-allow` asked, and the rules
/// once applied (shared with the running VM's control, which names Landlock in its errors).
#[derive(Clone)]
pub struct Confinement {
    decision: Decision,
    allow: Vec<AllowSpec>,
    extra_outputs: Vec<PathBuf>,
    applied: Arc<OnceLock<Rules>>,
}

impl Confinement {
    /// `--landlock MODE --landlock-allow ...`, decided for this process's effective uid.
    pub fn new(mode: Mode, allow: Vec<AllowSpec>) -> Confinement {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        Confinement { decision: mode.decide(euid), allow, extra_outputs: Vec::new(), applied: Arc::default() }
    }

    /// An output file opened later than the rules are applied (`kestrel run --metrics-path`).
    pub fn with_output(mut self, path: Option<&Path>) -> Confinement {
        self.extra_outputs.extend(path.map(Path::to_owned));
        self
    }

    /// Applies the rules for `config` to the calling thread (and the threads it starts from now
    /// on). Once per process: a second VM (a launch retried after a failure) keeps the first rules.
    pub fn confine(&self, config: &VmConfig) -> Result<(), LandlockError> {
        if self.applied.get().is_some() {
            return Ok(());
        }
        self.apply_once(config)?;
        #[cfg(debug_assertions)]
        landlock::test_probe();
        Ok(())
    }

    fn apply_once(&self, config: &VmConfig) -> Result<(), LandlockError> {
        if self.decision == Decision::Off {
            return Ok(());
        }
        let extra: Vec<&Path> = self.extra_outputs.iter().map(PathBuf::as_path).collect();
        let rules = rules_for(config, &extra, &self.allow);
        match landlock::apply(&rules, self.decision)? {
            Applied::Full => tracing::info!("Landlock: {} rules applied", rules.rules().len()),
            Applied::Partial => {
                tracing::warn!("Landlock: this kernel enforces only part of the rules (an ABI older than 7)")
            }
            Applied::NotEnforced => {
                tracing::warn!("Landlock: this kernel does not enforce Landlock; the VMM runs without it");
                return Ok(());
            }
        }
        let _ = self.applied.set(rules);
        Ok(())
    }

    /// A launcher that confines the process before the VM is built or restored, and whose VM
    /// controls name Landlock when it refuses a path.
    pub fn launcher(&self) -> ConfinedLauncher {
        let confinement = self.clone();
        let hook = move |config: &VmConfig| -> Result<(), EngineError> { Ok(confinement.confine(config)?) };
        ConfinedLauncher {
            inner: vmm::control::KvmLauncher::with_before_build(Box::new(hook)),
            applied: Arc::clone(&self.applied),
        }
    }
}

/// [`vmm::control::KvmLauncher`] under Landlock.
pub struct ConfinedLauncher {
    inner: vmm::control::KvmLauncher,
    applied: Arc<OnceLock<Rules>>,
}

impl ConfinedLauncher {
    /// The VM the last successful launch built, once.
    pub fn take_built(&mut self) -> Option<vmm::vm::Vm> {
        self.inner.take_built()
    }
}

impl Launcher for ConfinedLauncher {
    fn launch(&mut self, launch: Launch) -> Result<Arc<dyn VmControl>, EngineError> {
        let inner = self.inner.launch(launch)?;
        Ok(Arc::new(ConfinedControl { inner, applied: Arc::clone(&self.applied) }))
    }
}

/// A path Landlock keeps the VMM from, named as such (the kernel only says EACCES).
#[derive(Debug, thiserror::Error)]
#[error("{refusal}: {source}")]
pub struct OutsideRules {
    refusal: String,
    source: EngineError,
}

/// The running VM's control, whose path-taking operations explain a Landlock refusal.
struct ConfinedControl {
    inner: Arc<dyn VmControl>,
    applied: Arc<OnceLock<Rules>>,
}

impl ConfinedControl {
    /// `error` as it is, unless Landlock refuses `path` for `usage`: then the error says so.
    fn explain(&self, error: EngineError, path: &Path, usage: PathUse) -> EngineError {
        match self.confinement_refusal(path, usage) {
            Some(refusal) => Box::new(OutsideRules { refusal, source: error }),
            None => error,
        }
    }
}

impl VmControl for ConfinedControl {
    fn pause(&self) -> Result<(), EngineError> {
        self.inner.pause()
    }

    fn resume(&self) -> Result<(), EngineError> {
        self.inner.resume()
    }

    fn snapshot(&self, request: &vmm::snapshot::SnapshotRequest) -> Result<(), EngineError> {
        self.inner.snapshot(request).map_err(|error| {
            // Both files are written as a temporary file beside them, then renamed into place.
            let refused = [&request.state_path, &request.memory_path]
                .into_iter()
                .find(|path| self.confinement_refusal(path, PathUse::Create).is_some());
            match refused {
                Some(path) => self.explain(error, path, PathUse::Create),
                None => error,
            }
        })
    }

    fn send_ctrl_alt_del(&self) -> Result<(), EngineError> {
        self.inner.send_ctrl_alt_del()
    }

    fn update_balloon(&self, amount_mib: u32) -> Result<(), EngineError> {
        self.inner.update_balloon(amount_mib)
    }

    fn balloon_statistics(&self) -> Result<model::api::BalloonStats, EngineError> {
        self.inner.balloon_statistics()
    }

    fn update_balloon_stats_interval(&self, seconds: u16) -> Result<(), EngineError> {
        self.inner.update_balloon_stats_interval(seconds)
    }

    fn update_net(&self, update: &vmm::control::NetUpdate) -> Result<(), EngineError> {
        self.inner.update_net(update)
    }

    fn update_drive(&self, update: &DriveUpdate) -> Result<(), EngineError> {
        self.inner.update_drive(update).map_err(|error| match &update.path {
            Some(path) => {
                let usage = if update.disk.read_only { PathUse::Read } else { PathUse::ReadWrite };
                self.explain(error, path, usage)
            }
            None => error,
        })
    }

    fn confinement_refusal(&self, path: &Path, usage: PathUse) -> Option<String> {
        refusal(self.applied.get()?, path, usage)
    }
}

/// Whether the `rules` keep the VMM from `path` for `usage`, worded with the flag that allows it.
/// A path that does not exist (for `Create`: whose directory does not exist) is not Landlock's
/// doing: the open fails with ENOENT whatever the rules.
fn refusal(rules: &Rules, path: &Path, usage: PathUse) -> Option<String> {
    let directory = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (access, existing, suggest) = match usage {
        // A drive's file is first opened for reading, whatever the drive: `rw` serves both.
        PathUse::Read => (Access::ReadOnly, path, path.display().to_string()),
        PathUse::ReadWrite => (Access::ReadWrite, path, path.display().to_string()),
        PathUse::Create => (Access::CreateInDirectory, directory, directory.display().to_string()),
    };
    // stat is not subject to Landlock.
    if rules.covers(path, access) || !existing.exists() {
        return None;
    }
    Some(format!(
        "{} is outside the VMM's Landlock rules; start it with --landlock-allow {suggest} (or --landlock off)",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_options::parse_disk;
    use model::config::VsockConfig;

    fn config(virtio: Vec<VirtioConfig>, serial: SerialConfig) -> VmConfig {
        VmConfig {
            kernel: "/k/vmlinux".into(),
            initrd: Some("/k/initrd".into()),
            cmdline: String::new(),
            vcpus: 1,
            memory_bytes: 64 << 20,
            serial,
            virtio,
            transport: Default::default(),
            track_dirty_pages: false,
            host: Default::default(),
        }
    }

    fn access_of(rules: &Rules, path: &Path) -> Option<Access> {
        rules.rules().iter().find(|rule| rule.path == path).map(|rule| rule.access)
    }

    #[test]
    fn the_rules_name_every_file_of_the_configuration_as_configured() {
        let dir = std::env::temp_dir().join(format!("kestrel-landlock-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("base.raw");
        std::fs::write(&base, vec![0; 1 << 20]).unwrap();
        let overlay = dir.join("overlay.qcow2");
        let options = storage::image::CreateOptions {
            format: storage::image::Format::Qcow2,
            size: None,
            backing: Some(("base.raw".into(), storage::image::Format::Raw)),
            cluster_size: None,
            preallocation: storage::image::Preallocation::Off,
        };
        storage::image::create(&overlay, &options).unwrap();
        let serial = dir.join("console.log");
        let disk = |spec: &str| VirtioConfig::Block(parse_disk(spec).unwrap());
        let config = config(
            vec![
                disk("path=/d/rw.img"),
                disk("path=/d/ro.img,readonly=on"),
                disk(&format!("path={},format=qcow2", overlay.display())),
                VirtioConfig::Vsock(VsockConfig { cid: 3, uds_path: "/run/vm/v.sock".into() }),
            ],
            SerialConfig::File(serial.clone()),
        );
        let allow: Vec<AllowSpec> =
            vec!["/srv/snapshots".parse().unwrap(), "/srv/spare.img:ro".parse().unwrap()];
        let rules = rules_for(&config, &[Path::new("/var/metrics/m.json")], &allow);

        assert_eq!(access_of(&rules, Path::new("/k/vmlinux")), Some(Access::ReadOnly));
        assert_eq!(access_of(&rules, Path::new("/k/initrd")), Some(Access::ReadOnly));
        assert_eq!(access_of(&rules, Path::new("/d/rw.img")), Some(Access::ReadWrite));
        assert_eq!(access_of(&rules, Path::new("/d/ro.img")), Some(Access::ReadOnly));
        assert_eq!(access_of(&rules, &overlay), Some(Access::ReadWrite));
        assert_eq!(access_of(&rules, &base), Some(Access::ReadOnly), "the backing file, read-only");
        // The console file did not exist: it is created (0600), and the rule names it alone.
        assert_eq!(access_of(&rules, &serial), Some(Access::ReadWrite));
        assert_eq!(access_of(&rules, &dir), None);
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&serial).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        // A metrics file whose directory does not exist: the directory (which grants nothing).
        assert_eq!(access_of(&rules, Path::new("/run/vm")), Some(Access::CreateInDirectory));
        assert_eq!(access_of(&rules, Path::new("/var/metrics")), Some(Access::CreateInDirectory));
        // A --landlock-allow path that does not exist is a file to read and write.
        assert_eq!(access_of(&rules, Path::new("/srv/snapshots")), Some(Access::ReadWrite));
        assert_eq!(access_of(&rules, Path::new("/srv/spare.img")), Some(Access::ReadOnly));
        assert_eq!(access_of(&rules, Path::new("/dev/kvm")), Some(Access::ReadWrite));
        assert_eq!(access_of(&rules, Path::new("/etc")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_an_existing_path_outside_the_rules_is_blamed_on_landlock() {
        let dir = std::env::temp_dir().join(format!("kestrel-landlock-refusal-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("allowed")).unwrap();
        std::fs::write(dir.join("outside.img"), b"").unwrap();
        let mut rules = Rules::new();
        rules.allow(dir.join("allowed"), Access::CreateInDirectory);
        let outside = dir.join("outside.img");
        let message = refusal(&rules, &outside, PathUse::ReadWrite).unwrap();
        assert!(message.contains("is outside the VMM's Landlock rules"), "{message}");
        assert!(message.contains(&format!("--landlock-allow {} ", outside.display())), "{message}");
        // A snapshot file: the flag names its directory.
        let message = refusal(&rules, &dir.join("state"), PathUse::Create).unwrap();
        assert!(message.contains(&format!("--landlock-allow {} ", dir.display())), "{message}");
        // Inside the rules, or missing (ENOENT whatever the rules): not Landlock's doing.
        assert_eq!(refusal(&rules, &dir.join("allowed/state"), PathUse::Create), None);
        assert_eq!(refusal(&rules, &dir.join("missing.img"), PathUse::Read), None);
        assert_eq!(refusal(&rules, &dir.join("nodir/state"), PathUse::Create), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_qcow2_disk_without_backing_allowed_gets_no_backing_rules() {
        let dir = std::env::temp_dir().join(format!("kestrel-landlock-nobacking-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("base.raw"), vec![0; 1 << 20]).unwrap();
        let overlay = dir.join("overlay.qcow2");
        let options = storage::image::CreateOptions {
            format: storage::image::Format::Qcow2,
            size: None,
            backing: Some(("base.raw".into(), storage::image::Format::Raw)),
            cluster_size: None,
            preallocation: storage::image::Preallocation::Off,
        };
        storage::image::create(&overlay, &options).unwrap();
        let disk = parse_disk(&format!("path={},format=qcow2,backing=off", overlay.display())).unwrap();
        let rules = rules_for(&config(vec![VirtioConfig::Block(disk)], SerialConfig::None), &[], &[]);
        assert_eq!(access_of(&rules, &dir.join("base.raw")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
