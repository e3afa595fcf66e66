//! Landlock for unprivileged VMMs: once applied, the calling thread and every thread it starts
//! afterwards may open only the paths of a [`Rules`] list, and (ABI ≥ 4) may neither bind nor
//! connect TCP sockets. A VMM needs no TCP and few files; a bug in a device model then cannot
//! read the host's files even when uid and DAC would allow it.
//!
//! Landlock rights are checked when a file is opened (or created, renamed, removed): descriptors
//! opened before [`apply`] keep working, and threads started before it are not confined.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use landlock::{
    Access as _, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, ABI,
};

/// The Landlock ABI the rights are written against (and tested on): ABI 7 (Linux 6.15). An older
/// kernel enforces what it knows (best effort); a newer one changes nothing, since rights a later
/// ABI adds are neither handled nor granted.
const TARGET_ABI: ABI = ABI::V7;

/// What a rule lets the VMM do with its path (and, for a directory, with everything beneath it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Open for reading; for a directory, list it and read the files beneath it.
    ReadOnly,
    /// Also open for writing and truncate (a writable disk, an output file).
    ReadWrite,
    /// A directory in which files and Unix sockets are created, written, renamed and removed
    /// (snapshot files, the vsock sockets, an output file that does not exist yet).
    CreateInDirectory,
}

impl Access {
    /// The Landlock rights of the access, for a directory or (`is_dir` false) a single file.
    ///
    /// `IoctlDev` is granted with every access: the rules name device files (`/dev/kvm`,
    /// `/dev/net/tun`, a block-device disk) whose ioctls the VMM needs, and a device's driver
    /// still checks each ioctl against the descriptor's open mode.
    fn rights(self, is_dir: bool) -> BitFlags<AccessFs> {
        let read = AccessFs::ReadFile | AccessFs::ReadDir | AccessFs::IoctlDev;
        let write = AccessFs::WriteFile | AccessFs::Truncate;
        let create = AccessFs::MakeReg | AccessFs::MakeSock | AccessFs::RemoveFile;
        let rights = match self {
            Access::ReadOnly => read,
            Access::ReadWrite => read | write,
            Access::CreateInDirectory => read | write | create,
        };
        if is_dir {
            rights
        } else {
            // Landlock refuses directory rights on a file.
            rights & AccessFs::from_file(TARGET_ABI)
        }
    }
}

/// One path the VMM may reach, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub path: PathBuf,
    pub access: Access,
}

impl Rule {
    /// A rule for `path` with `access`.
    pub fn new(path: impl Into<PathBuf>, access: Access) -> Rule {
        Rule { path: path.into(), access }
    }
}

/// The list of paths a confined VMM may reach. The same path named twice keeps the widest access.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    /// An empty list: nothing may be opened.
    pub fn new() -> Rules {
        Rules::default()
    }

    /// Adds `path` with `access` (widening an existing rule for the same path).
    pub fn allow(&mut self, path: impl Into<PathBuf>, access: Access) {
        let path = path.into();
        match self.rules.iter_mut().find(|rule| rule.path == path) {
            Some(rule) => rule.access = rule.access.max(access),
            None => self.rules.push(Rule { path, access }),
        }
    }

    /// A file the VMM creates or appends to (the serial output, the metrics file). Landlock rules
    /// name existing inodes, so a missing file is created now, empty and 0600 as the VMM would
    /// create it, and the rule names the file alone; only if that fails (the VMM's own open will
    /// then report why) does the rule fall back to its directory.
    pub fn allow_output_file(&mut self, path: &Path) {
        use std::os::unix::fs::OpenOptionsExt;
        // An existing file (or named pipe, a metrics reader's) is named as it is, never opened.
        if path.exists() {
            return self.allow(path, Access::ReadWrite);
        }
        let created = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            // A FIFO put there meanwhile must not block the VMM.
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path);
        match created {
            Ok(_) => self.allow(path, Access::ReadWrite),
            Err(_) => self.allow(parent_dir(path), Access::CreateInDirectory),
        }
    }

    /// A file created in a directory (a Unix socket): its directory.
    pub fn allow_created_in_parent(&mut self, path: &Path) {
        self.allow(parent_dir(path), Access::CreateInDirectory);
    }

    /// The rules, in the order they were first added.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether `path` (which need not exist) lies within a rule that grants at least `access`,
    /// judged on resolved paths. Used to name Landlock when an open is refused, not to enforce.
    pub fn covers(&self, path: &Path, access: Access) -> bool {
        let Some(path) = resolve_existing_prefix(path) else { return false };
        // A rule on a directory grants its access to everything beneath it.
        self.rules.iter().any(|rule| {
            rule.access >= access
                && rule.path.canonicalize().is_ok_and(|rule_path| path.starts_with(rule_path))
        })
    }
}

/// The path with its existing part resolved (symlinks, `..`) and the rest appended as given.
fn resolve_existing_prefix(path: &Path) -> Option<PathBuf> {
    let absolute =
        if path.is_absolute() { path.to_owned() } else { std::env::current_dir().ok()?.join(path) };
    let mut rest = Vec::new();
    let mut head = absolute.as_path();
    loop {
        if let Ok(resolved) = head.canonicalize() {
            return Some(rest.iter().rev().fold(resolved, |acc: PathBuf, part| acc.join(part)));
        }
        rest.push(head.file_name()?.to_owned());
        head = head.parent()?;
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// `--landlock auto|on|off`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// On for an unprivileged VMM (euid ≠ 0), off for root (whom `kestrel jailer` confines); a
    /// kernel without Landlock is a warning.
    #[default]
    Auto,
    /// On whoever runs the VMM; a kernel without Landlock is an error.
    On,
    /// Off.
    Off,
}

impl Mode {
    /// What the mode asks of a process whose effective uid is `euid`.
    pub fn decide(self, euid: u32) -> Decision {
        match self {
            Mode::Off => Decision::Off,
            Mode::Auto if euid == 0 => Decision::Off,
            Mode::Auto => Decision::BestEffort,
            Mode::On => Decision::Required,
        }
    }
}

/// Whether and how strictly Landlock is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Off,
    /// Applied if the kernel has Landlock; without it the VMM runs unconfined (with a warning).
    BestEffort,
    /// A kernel that cannot enforce it is an error.
    Required,
}

/// Not auto, on or off.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not auto, on or off")]
pub struct ModeParseError(String);

impl FromStr for Mode {
    type Err = ModeParseError;
    fn from_str(text: &str) -> Result<Mode, ModeParseError> {
        match text {
            "auto" => Ok(Mode::Auto),
            "on" => Ok(Mode::On),
            "off" => Ok(Mode::Off),
            _ => Err(ModeParseError(text.to_owned())),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::On => "on",
            Mode::Off => "off",
        })
    }
}

/// `--landlock-allow PATH[:ro|rw]`: a path the VMM may reach beyond its configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowSpec {
    pub path: PathBuf,
    /// `rw` (the default): a file is read and written, a directory also gets files created in it.
    pub writable: bool,
}

impl AllowSpec {
    /// The rule: `ro` is [`Access::ReadOnly`]; `rw` is [`Access::CreateInDirectory`] for a
    /// directory, [`Access::ReadWrite`] for anything else.
    pub fn to_rule(&self) -> Rule {
        let access = match (self.writable, self.path.is_dir()) {
            (false, _) => Access::ReadOnly,
            (true, true) => Access::CreateInDirectory,
            (true, false) => Access::ReadWrite,
        };
        Rule::new(&self.path, access)
    }
}

/// What is wrong with a `--landlock-allow` value.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllowParseError {
    #[error("needs a path, like /srv/vm1 or /srv/vm1/disk2.img:ro")]
    EmptyPath,
    #[error("a path cannot contain a NUL byte")]
    Nul,
}

impl FromStr for AllowSpec {
    type Err = AllowParseError;
    /// `PATH`, `PATH:rw` or `PATH:ro`; any other colon belongs to the path.
    fn from_str(text: &str) -> Result<AllowSpec, AllowParseError> {
        let (path, writable) = match text.rsplit_once(':') {
            Some((path, "ro")) => (path, false),
            Some((path, "rw")) => (path, true),
            _ => (text, true),
        };
        if path.is_empty() {
            return Err(AllowParseError::EmptyPath);
        }
        if path.contains('\0') {
            return Err(AllowParseError::Nul);
        }
        Ok(AllowSpec { path: PathBuf::from(path), writable })
    }
}

/// Why Landlock could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("Landlock ruleset: {0}")]
    Ruleset(#[from] landlock::RulesetError),
    #[error("Landlock rule for {path}: {source}")]
    Path { path: PathBuf, source: landlock::PathFdError },
    #[error("Landlock was asked for (--landlock on) but this kernel does not enforce it (Linux 5.13 or later with landlock in the lsm= boot list)")]
    Unsupported,
}

/// What [`apply`] achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Every right Kestrel asks for is enforced (the TCP ban included).
    Full,
    /// The kernel's older ABI enforces a subset (e.g. no TCP ban before ABI 4).
    Partial,
    /// The kernel has no Landlock: the VMM runs unconfined (only with [`Decision::BestEffort`]).
    NotEnforced,
}

/// Confines the calling thread, and the threads it starts from now on, to `rules` (paths that do
/// not exist are left out: nothing there can be opened) with TCP bind and connect banned.
///
/// Call it on the thread that goes on to start the VM's threads, before it starts them: threads
/// that already exist stay unconfined. It also sets `PR_SET_NO_NEW_PRIVS` (Landlock needs it
/// without `CAP_SYS_ADMIN`).
pub fn apply(rules: &Rules, decision: Decision) -> Result<Applied, LandlockError> {
    if decision == Decision::Off {
        return Ok(Applied::NotEnforced);
    }
    let mut created = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(TARGET_ABI))?
        .handle_access(AccessNet::from_all(TARGET_ABI))?
        .create()?;
    for rule in rules.rules() {
        let fd = match PathFd::new(&rule.path) {
            Ok(fd) => fd,
            // A missing path grants nothing; the VMM's own open then reports it as missing.
            Err(_) if !rule.path.exists() => continue,
            Err(source) => return Err(LandlockError::Path { path: rule.path.clone(), source }),
        };
        let rights = rule.access.rights(rule.path.is_dir());
        created = created.add_rule(PathBeneath::new(fd, rights))?;
    }
    let status = created.restrict_self()?;
    let applied = match status.ruleset {
        RulesetStatus::FullyEnforced => Applied::Full,
        RulesetStatus::PartiallyEnforced => Applied::Partial,
        RulesetStatus::NotEnforced => Applied::NotEnforced,
    };
    if applied == Applied::NotEnforced && decision == Decision::Required {
        return Err(LandlockError::Unsupported);
    }
    Ok(applied)
}

/// The paths every VMM reaches whatever its configuration: the devices it opens and the few
/// `/proc` and `/sys` files it (and the Rust runtime) reads.
pub fn system_rules() -> Rules {
    let mut rules = Rules::new();
    for device in ["/dev/kvm", "/dev/net/tun", "/dev/userfaultfd"] {
        rules.allow(device, Access::ReadWrite);
    }
    for path in [
        "/dev/urandom",
        // The host's RAM, to refuse a VM larger than it (vmm::memory).
        "/proc/meminfo",
        // The host's CPUs, NUMA nodes and THP/KSM/hugepage settings (vCPU placement, memory
        // backends).
        "/sys/devices/system/cpu",
        "/sys/devices/system/node",
        "/sys/kernel/mm",
    ] {
        rules.allow(path, Access::ReadOnly);
    }
    rules
}

/// Debug builds only: with `KESTREL_LANDLOCK_TEST_PROBE=PATH[,PATH...]`, tries to open each path
/// for reading and says on stderr whether it was allowed or denied. Tests call the VMM with it to
/// see the rules at work from inside.
#[cfg(debug_assertions)]
pub fn test_probe() {
    use std::io::Write;
    let Some(paths) = std::env::var_os("KESTREL_LANDLOCK_TEST_PROBE") else { return };
    for path in paths.to_string_lossy().split(',').filter(|path| !path.is_empty()) {
        let verdict = match std::fs::File::open(path) {
            Ok(_) => "allowed".to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => "denied".to_owned(),
            Err(e) => format!("error ({e})"),
        };
        let _ = writeln!(std::io::stderr(), "kestrel: landlock probe {path}: {verdict}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn allow_forms() {
        let spec: AllowSpec = "/srv/vm".parse().unwrap();
        assert_eq!(spec, AllowSpec { path: "/srv/vm".into(), writable: true });
        let spec: AllowSpec = "/srv/vm/disk.img:ro".parse().unwrap();
        assert_eq!(spec, AllowSpec { path: "/srv/vm/disk.img".into(), writable: false });
        let spec: AllowSpec = "/srv/a:b:rw".parse().unwrap();
        assert_eq!(spec, AllowSpec { path: "/srv/a:b".into(), writable: true });
        let spec: AllowSpec = "/srv/a:x".parse().unwrap();
        assert_eq!(spec.path, PathBuf::from("/srv/a:x"));
        assert_eq!("".parse::<AllowSpec>(), Err(AllowParseError::EmptyPath));
        assert_eq!(":ro".parse::<AllowSpec>(), Err(AllowParseError::EmptyPath));
    }

    #[test]
    fn mode_forms_and_decisions() {
        assert_eq!("auto".parse(), Ok(Mode::Auto));
        assert_eq!("on".parse(), Ok(Mode::On));
        assert_eq!("off".parse(), Ok(Mode::Off));
        assert!("yes".parse::<Mode>().is_err());
        assert_eq!(Mode::Auto.decide(0), Decision::Off);
        assert_eq!(Mode::Auto.decide(1000), Decision::BestEffort);
        assert_eq!(Mode::On.decide(0), Decision::Required);
        assert_eq!(Mode::Off.decide(1000), Decision::Off);
    }

    #[test]
    fn a_path_named_twice_keeps_the_widest_access() {
        let mut rules = Rules::new();
        rules.allow("/a", Access::ReadWrite);
        rules.allow("/a", Access::ReadOnly);
        rules.allow("/b", Access::ReadOnly);
        rules.allow("/b", Access::CreateInDirectory);
        assert_eq!(
            rules.rules(),
            [Rule::new("/a", Access::ReadWrite), Rule::new("/b", Access::CreateInDirectory)]
        );
    }

    #[test]
    fn files_get_no_directory_rights() {
        let file = Access::CreateInDirectory.rights(false);
        assert!(!file.contains(AccessFs::MakeReg));
        assert!(!file.contains(AccessFs::ReadDir));
        assert!(file.contains(AccessFs::WriteFile));
        assert!(!Access::ReadOnly.rights(true).contains(AccessFs::WriteFile));
        assert!(Access::CreateInDirectory.rights(true).contains(AccessFs::MakeSock));
    }

    #[test]
    fn coverage_follows_the_rules() {
        let dir = std::env::temp_dir().join(format!("kestrel-landlock-covers-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("ro")).unwrap();
        std::fs::write(dir.join("disk.img"), b"").unwrap();
        let mut rules = Rules::new();
        rules.allow(dir.join("disk.img"), Access::ReadWrite);
        rules.allow(dir.join("ro"), Access::ReadOnly);
        assert!(rules.covers(&dir.join("disk.img"), Access::ReadWrite));
        assert!(!rules.covers(&dir.join("other.img"), Access::ReadOnly));
        assert!(rules.covers(&dir.join("ro/x"), Access::ReadOnly));
        assert!(!rules.covers(&dir.join("ro/x"), Access::ReadWrite));
        assert!(!rules.covers(&dir.join("ro/../disk.img.new"), Access::ReadWrite));
        rules.allow(&dir, Access::CreateInDirectory);
        assert!(rules.covers(&dir.join("new/state"), Access::CreateInDirectory));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_applied_thread_opens_only_what_the_rules_allow() {
        let dir = std::env::temp_dir().join(format!("kestrel-landlock-apply-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let allowed = dir.join("allowed");
        std::fs::write(&allowed, b"x").unwrap();
        std::fs::write(dir.join("other"), b"x").unwrap();
        let (allowed_ok, other, created, tcp) = std::thread::spawn({
            let (allowed, dir) = (allowed.clone(), dir.clone());
            move || {
                // Landlock binds this thread (and its children) alone, not the test process.
                let mut rules = Rules::new();
                rules.allow(&allowed, Access::ReadOnly);
                assert_eq!(apply(&rules, Decision::Required).unwrap(), Applied::Full);
                let tcp = std::net::TcpListener::bind("127.0.0.1:0").map(drop);
                (
                    std::fs::read(&allowed).is_ok(),
                    std::fs::read(dir.join("other")).map(drop),
                    std::fs::write(dir.join("new"), b"x"),
                    tcp,
                )
            }
        })
        .join()
        .unwrap();
        assert!(allowed_ok);
        assert_eq!(other.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
        assert_eq!(created.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
        assert_eq!(tcp.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
        // The rest of the process is not confined.
        assert!(std::fs::read(dir.join("other")).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest! {
        #[test]
        fn allow_parsing_never_panics_and_round_trips(text in "\\PC{0,64}") {
            if let Ok(spec) = text.parse::<AllowSpec>() {
                let shown = format!("{}:{}", spec.path.display(), if spec.writable { "rw" } else { "ro" });
                prop_assert_eq!(shown.parse::<AllowSpec>(), Ok(spec));
            }
        }
    }
}
