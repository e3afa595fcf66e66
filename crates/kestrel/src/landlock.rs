//! Where the VMM meets Landlock (`jail::landlock`): the rules a VM's configuration needs, applied
//! on the main thread just before the VM is built or restored, so that every thread the VM starts
//! (vCPUs, device workers, disk I/O, snapshot and drive-update operations) inherits them.
//!
//! Threads started before that point: in `kestrel vmm` the API threads (`fc_api`, and the
//! `kestrel-api-conn` threads it starts, which inherit its domain) confine themselves as they
//! start with an empty ruleset ([`Confinement::confine_api_thread`]): they open no path and use
//! no TCP. In `kestrel run` no thread exists yet when the rules are applied.
//!
//! A restore reads and checks the (untrusted) state file and maps the memory file before the
//! rules apply, since the rules come from the configuration inside it; that parsing is
//! unconfined by design and hardened as hostile input instead. The rules of a restore then take
//! from the state file only what the restore checked (its disks) and the vsock socket's
//! directory with socket rights alone; never its kernel or initrd, which a restore does not open.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use jail::landlock::{self, Access, AllowSpec, Applied, Decision, LandlockError, Mode, Rules, Scope};
use model::config::{ImageFormat, SerialConfig, VirtioConfig, VmConfig};
use vmm::control::{
    BuildOrigin, ConfinementRefusal, DriveUpdate, EngineError, Launch, Launcher, PathUse, VmControl,
};

/// The rules for `config`: the system's few paths, the VM's files as configured (for a boot,
/// its kernel and initrd too), the qcow2 backing chains (read-only), the vsock socket's
/// directory (sockets only), the output files, `extra_outputs` (the metrics file) and the
/// `--landlock-allow` paths. Every file of the configuration is named as a file: if it is a
/// directory when the rules are applied, they are refused rather than widened to its tree.
pub fn rules_for(
    config: &VmConfig,
    origin: BuildOrigin,
    extra_outputs: &[&Path],
    allow: &[AllowSpec],
) -> Rules {
    let mut rules = landlock::system_rules();
    // A restored VM never opens them, and a state file may name anything there.
    if origin == BuildOrigin::Boot {
        rules.allow_file(&config.kernel, Access::ReadOnly);
        if let Some(initrd) = &config.initrd {
            rules.allow_file(initrd, Access::ReadOnly);
        }
    }
    if let SerialConfig::File(path) = &config.serial {
        rules.allow_output_file(path);
    }
    // Placement moves the VMM's other threads to their CPUs once the rules apply.
    if config.host.cpus.vmm_affinity.is_some() {
        rules.allow_own_threads();
    }
    for device in &config.virtio {
        match device {
            VirtioConfig::Block(disk) => {
                let access = if disk.read_only { Access::ReadOnly } else { Access::ReadWrite };
                rules.allow_file(&disk.path, access);
                if disk.format == ImageFormat::Qcow2 && disk.allow_backing {
                    allow_backing_chain(&mut rules, &disk.path);
                }
            }
            // The device binds its socket there (replacing a stale one); connecting to the
            // `PATH_PORT` sockets beside it is not a Landlock right.
            VirtioConfig::Vsock(vsock) => rules.allow_socket(&vsock.uds_path),
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
        Ok(files) => files.into_iter().for_each(|file| rules.allow_file(file, Access::ReadOnly)),
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

    /// Applies the rules for `config` (built or restored as `origin` says) to the calling thread
    /// and the threads it starts from now on. Once per process: a second VM (a launch retried
    /// after a failure) keeps the first rules; rules refused (a file that is a directory) are
    /// not applied, and the retry's configuration is judged afresh.
    pub fn confine(&self, config: &VmConfig, origin: BuildOrigin) -> Result<(), LandlockError> {
        if self.applied.get().is_some() {
            return Ok(());
        }
        self.apply_once(config, origin)?;
        #[cfg(debug_assertions)]
        landlock::test_probe("KESTREL_LANDLOCK_TEST_PROBE");
        Ok(())
    }

    /// Confines the calling API thread (and the connection threads it starts) to nothing: no
    /// path and no TCP, since it only talks to its socket and the control channel. Called first
    /// thing on the `fc_api` thread; a no-op with Landlock off.
    pub fn confine_api_thread(&self) -> Result<(), LandlockError> {
        // Under seccomp the API role has no call that opens a path or a TCP socket at all
        // (crates/jail/seccomp/x86_64.json), so a Landlock domain would add nothing there but
        // the calls that make it.
        if jail::seccomp::mode() == jail::seccomp::Mode::Enforce {
            return Ok(());
        }
        landlock::apply(&Rules::new(), self.decision, Scope::Thread)?;
        #[cfg(debug_assertions)]
        landlock::test_probe("KESTREL_LANDLOCK_TEST_PROBE_API");
        Ok(())
    }

    fn apply_once(&self, config: &VmConfig, origin: BuildOrigin) -> Result<(), LandlockError> {
        if self.decision == Decision::Off {
            return Ok(());
        }
        let extra: Vec<&Path> = self.extra_outputs.iter().map(PathBuf::as_path).collect();
        let rules = rules_for(config, origin, &extra, &self.allow);
        match landlock::apply(&rules, self.decision, Scope::Process)? {
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
        let hook = move |config: &VmConfig, origin: BuildOrigin| -> Result<(), EngineError> {
            Ok(confinement.confine(config, origin)?)
        };
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
    /// Boots build their VMs with `options` (`--boot-timer`).
    pub fn with_build_options(self, options: vmm::builder::BuildOptions) -> ConfinedLauncher {
        ConfinedLauncher { inner: self.inner.with_build_options(options), ..self }
    }

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
    refusal: ConfinementRefusal,
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

    fn send_power_button(&self) -> Result<(), EngineError> {
        self.inner.send_power_button()
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

    fn confinement_refusal(&self, path: &Path, usage: PathUse) -> Option<ConfinementRefusal> {
        refusal(self.applied.get()?, path, usage)
    }
}

/// Whether the `rules` keep the VMM from `path` for `usage`, with the flag that allows it.
/// A path that does not exist (for `Create`: whose directory does not exist) is not Landlock's
/// doing: the open fails with ENOENT whatever the rules.
fn refusal(rules: &Rules, path: &Path, usage: PathUse) -> Option<ConfinementRefusal> {
    let directory = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let (access, existing) = match usage {
        // A drive's file is first opened for reading, whatever the drive: `rw` serves both.
        PathUse::Read => (Access::ReadOnly, path),
        PathUse::ReadWrite => (Access::ReadWrite, path),
        PathUse::Create => (Access::CreateInDirectory, directory),
    };
    // stat is not subject to Landlock.
    if rules.covers(path, access) || !existing.exists() {
        return None;
    }
    Some(ConfinementRefusal { path: path.to_owned(), allow: existing.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_options::parse_disk;
    use jail::landlock::Target;
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

    /// A qcow2 image `overlay.qcow2` in `dir` over the raw file `base` beside it.
    fn overlay_over(dir: &Path, base: &str) -> PathBuf {
        let overlay = dir.join("overlay.qcow2");
        let options = storage::image::CreateOptions {
            format: storage::image::Format::Qcow2,
            size: None,
            backing: Some((base.into(), storage::image::Format::Raw)),
            cluster_size: None,
            preallocation: storage::image::Preallocation::Off,
        };
        storage::image::create(&overlay, &options).unwrap();
        overlay
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
        let overlay = overlay_over(&dir, "base.raw");
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
        let rules = rules_for(&config, BuildOrigin::Boot, &[Path::new("/var/metrics/m.json")], &allow);

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
        // The vsock socket's directory, for the socket alone.
        assert_eq!(access_of(&rules, Path::new("/run/vm")), Some(Access::SocketDirectory));
        // A metrics file whose directory does not exist: the file (which grants nothing), never
        // its directory.
        assert_eq!(access_of(&rules, Path::new("/var/metrics/m.json")), Some(Access::ReadWrite));
        assert_eq!(access_of(&rules, Path::new("/var/metrics")), None);
        // A rw --landlock-allow path: its rights are judged on what it is when applied.
        assert_eq!(access_of(&rules, Path::new("/srv/snapshots")), Some(Access::CreateInDirectory));
        assert_eq!(access_of(&rules, Path::new("/srv/spare.img")), Some(Access::ReadOnly));
        assert_eq!(access_of(&rules, Path::new("/dev/kvm")), Some(Access::ReadWrite));
        assert_eq!(access_of(&rules, Path::new("/etc")), None);
        // Every file of the configuration is a file's rule: a directory there is refused.
        for path in ["/k/vmlinux", "/k/initrd", "/d/rw.img", "/d/ro.img"] {
            let rule = rules.rules().iter().find(|rule| rule.path == Path::new(path)).unwrap();
            assert_eq!(rule.target, Target::File, "{path}");
        }
        // No placement of the other threads asked for: nothing in /proc but meminfo.
        assert!(rules.rules().iter().all(|rule| !rule.path.starts_with("/proc/self")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A restore's configuration comes from a state file, which may name anything: its kernel
    /// and initrd (never opened by a restore) widen nothing, and its vsock path gets socket
    /// rights on the directory, not read or write.
    #[test]
    fn a_state_file_naming_the_root_as_kernel_does_not_widen_the_rules() {
        let mut config = config(
            vec![VirtioConfig::Vsock(VsockConfig { cid: 3, uds_path: "/home/u/x".into() })],
            SerialConfig::None,
        );
        config.kernel = "/".into();
        config.initrd = Some("/home".into());
        let rules = rules_for(&config, BuildOrigin::Restore, &[], &[]);
        assert!(rules
            .rules()
            .iter()
            .all(|rule| rule.path != Path::new("/") && rule.path != Path::new("/home")));
        assert_eq!(rules.rules().iter().filter(|rule| rule.path == Path::new("/home/u")).count(), 1);
        assert_eq!(access_of(&rules, Path::new("/home/u")), Some(Access::SocketDirectory));
        assert!(!rules.covers(Path::new("/home/u/.ssh/id_ed25519"), Access::ReadOnly));
        // The same configuration booted does name its kernel, as a file (so applying the rules
        // refuses "/", a directory).
        let rules = rules_for(&config, BuildOrigin::Boot, &[], &[]);
        let kernel = rules.rules().iter().find(|rule| rule.path == Path::new("/")).unwrap();
        assert_eq!((kernel.access, kernel.target), (Access::ReadOnly, Target::File));
    }

    #[test]
    fn keeping_the_other_threads_apart_lets_the_vmm_list_its_own_threads() {
        let mut config = config(Vec::new(), SerialConfig::None);
        config.host.cpus.vmm_affinity = Some(model::host::CpuSet::parse("0").unwrap());
        let rules = rules_for(&config, BuildOrigin::Boot, &[], &[]);
        assert_eq!(access_of(&rules, Path::new("/proc/self/task")), Some(Access::ReadOnly));
    }

    #[test]
    fn only_an_existing_path_outside_the_rules_is_blamed_on_landlock() {
        let dir = std::env::temp_dir().join(format!("kestrel-landlock-refusal-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("allowed")).unwrap();
        std::fs::write(dir.join("outside.img"), b"").unwrap();
        let mut rules = Rules::new();
        rules.allow(dir.join("allowed"), Access::CreateInDirectory);
        let outside = dir.join("outside.img");
        let message = refusal(&rules, &outside, PathUse::ReadWrite).unwrap().to_string();
        assert!(message.contains("is outside the VMM's Landlock rules"), "{message}");
        assert!(message.contains(&format!("--landlock-allow {} ", outside.display())), "{message}");
        // A snapshot file: the flag names its directory.
        let refused = refusal(&rules, &dir.join("state"), PathUse::Create).unwrap();
        assert_eq!(refused.allow, dir);
        let message = refused.to_string();
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
        let overlay = overlay_over(&dir, "base.raw");
        let disk = parse_disk(&format!("path={},format=qcow2,backing=off", overlay.display())).unwrap();
        let rules = rules_for(
            &config(vec![VirtioConfig::Block(disk)], SerialConfig::None),
            BuildOrigin::Boot,
            &[],
            &[],
        );
        assert_eq!(access_of(&rules, &dir.join("base.raw")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
