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
use std::sync::OnceLock;

use landlock::{
    Access as _, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, ABI,
};

/// The Landlock ABI the rights are written against (and tested on): ABI 7 (Linux 6.15). An older
/// kernel enforces what it knows (best effort); a newer one changes nothing, since rights a later
/// ABI adds are neither handled nor granted.
const TARGET_ABI: ABI = ABI::V7;

/// What a rule lets the VMM do with its path (and, for a directory, with everything beneath it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Open for reading; for a directory, list it and read the files beneath it.
    ReadOnly,
    /// Also open for writing and truncate (a writable disk, an output file).
    ReadWrite,
    /// A directory in which files and Unix sockets are created, written, renamed and removed
    /// (snapshot files, a `--landlock-allow` directory).
    CreateInDirectory,
    /// A directory in which the VMM binds a Unix socket and removes a stale one (the vsock
    /// device's socket): nothing in it can be opened, read or written.
    SocketDirectory,
}

impl Access {
    /// Whether a rule with this access grants everything `other` does.
    pub fn includes(self, other: Access) -> bool {
        matches!(
            (self, other),
            (Access::CreateInDirectory, _)
                | (Access::ReadWrite, Access::ReadOnly | Access::ReadWrite)
                | (Access::ReadOnly, Access::ReadOnly)
                | (Access::SocketDirectory, Access::SocketDirectory)
        )
    }

    /// The Landlock rights of the access, for a directory or (`is_dir` false) a single file.
    ///
    /// `IoctlDev` is granted with every access that opens files: the rules name device files
    /// (`/dev/kvm`, `/dev/net/tun`, a block-device disk) whose ioctls the VMM needs, and a
    /// device's driver still checks each ioctl against the descriptor's open mode.
    fn rights(self, is_dir: bool) -> BitFlags<AccessFs> {
        let read = AccessFs::ReadFile | AccessFs::ReadDir | AccessFs::IoctlDev;
        let write = AccessFs::WriteFile | AccessFs::Truncate;
        let create = AccessFs::MakeReg | AccessFs::MakeSock | AccessFs::RemoveFile;
        let rights = match self {
            Access::ReadOnly => read,
            Access::ReadWrite => read | write,
            Access::CreateInDirectory => read | write | create,
            // Binding a socket makes its file; a stale one (a VMM killed before it could remove
            // it) is removed first. Connecting to a socket is not a Landlock right (ABI 7).
            Access::SocketDirectory => AccessFs::MakeSock | AccessFs::RemoveFile,
        };
        if is_dir {
            rights
        } else {
            // Landlock refuses directory rights on a file.
            rights & AccessFs::from_file(TARGET_ABI)
        }
    }
}

/// What a rule's path must be when the rules are applied, checked on the inode the rule names
/// (so a path swapped meanwhile cannot turn a file's rule into a grant on a whole tree).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Anything but a directory (a regular file, a device, a FIFO): a disk, a kernel, an output
    /// file. A directory there is refused with an error.
    File,
    /// A directory, whose rights reach everything beneath it.
    Directory,
    /// Whichever it is (a `--landlock-allow` path).
    Either,
}

/// One path the VMM may reach, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub path: PathBuf,
    pub access: Access,
    pub target: Target,
}

impl Rule {
    /// A rule for `path` with `access`, whatever kind of file `path` turns out to be.
    pub fn new(path: impl Into<PathBuf>, access: Access) -> Rule {
        Rule { path: path.into(), access, target: Target::Either }
    }
}

/// The list of paths a confined VMM may reach. The same path named twice for the same target
/// keeps the wider access (or both, when neither includes the other: Landlock grants the union).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    /// An empty list: nothing may be opened.
    pub fn new() -> Rules {
        Rules::default()
    }

    /// Adds `path` with `access`, whether it is a file or a directory (a directory's access then
    /// reaches everything beneath it).
    pub fn allow(&mut self, path: impl Into<PathBuf>, access: Access) {
        self.add(Rule { path: path.into(), access, target: Target::Either });
    }

    /// Adds the file `path` with `access`; [`apply`] refuses it if `path` is a directory.
    pub fn allow_file(&mut self, path: impl Into<PathBuf>, access: Access) {
        self.add(Rule { path: path.into(), access, target: Target::File });
    }

    /// Adds the directory `path` with `access`; [`apply`] refuses it if `path` is not one.
    pub fn allow_dir(&mut self, path: impl Into<PathBuf>, access: Access) {
        self.add(Rule { path: path.into(), access, target: Target::Directory });
    }

    fn add(&mut self, new: Rule) {
        let same = |rule: &&mut Rule| rule.path == new.path && rule.target == new.target;
        for rule in self.rules.iter_mut().filter(same) {
            if rule.access.includes(new.access) {
                return;
            }
            if new.access.includes(rule.access) {
                rule.access = new.access;
                return;
            }
        }
        self.rules.push(new);
    }

    /// A file the VMM creates or appends to (the serial output, the metrics file). Landlock rules
    /// name existing inodes, so a missing file is created now, empty and 0600 as the VMM would
    /// create it. The rule names the file alone (never its directory): if it cannot be created
    /// now, the VMM's own open fails later whatever the rules, and says why.
    pub fn allow_output_file(&mut self, path: &Path) {
        use std::os::unix::fs::OpenOptionsExt;
        // Whatever is there (a file, a metrics reader's named pipe, a link to either) is named
        // as a file and not opened here; `apply` refuses it if it is, or leads to, a directory.
        if std::fs::symlink_metadata(path).is_err() {
            // O_EXCL: a dangling link is not followed to create its target.
            let _ = std::fs::OpenOptions::new()
                .append(true)
                .create_new(true)
                .mode(0o600)
                // A FIFO put there meanwhile must not block the VMM.
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(path);
        }
        self.allow_file(path, Access::ReadWrite);
    }

    /// A Unix socket the VMM binds at `path`: its directory, for the socket alone
    /// ([`Access::SocketDirectory`]).
    pub fn allow_socket(&mut self, path: &Path) {
        self.allow_dir(parent_dir(path), Access::SocketDirectory);
    }

    /// The process's own threads in `/proc/self/task`, read-only: to list them and read their
    /// names (placement moves the VMM's other threads to their CPUs after the rules apply).
    ///
    /// Landlock tags an inode, and procfs makes a new inode for a directory whose dentry the
    /// kernel dropped from its cache: the directory is kept open for the process's life so that
    /// the inode the rule names is the one later lookups find.
    pub fn allow_own_threads(&mut self) {
        static PINNED: OnceLock<Option<std::fs::File>> = OnceLock::new();
        let path = Path::new("/proc/self/task");
        if PINNED.get_or_init(|| std::fs::File::open(path).ok()).is_some() {
            self.allow_dir(path, Access::ReadOnly);
        }
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
            rule.access.includes(access)
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
    /// The rule: `ro` is [`Access::ReadOnly`], `rw` [`Access::CreateInDirectory`] (which for a
    /// file, as [`apply`] finds it, is [`Access::ReadWrite`]).
    pub fn to_rule(&self) -> Rule {
        let access = if self.writable { Access::CreateInDirectory } else { Access::ReadOnly };
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
    #[error("Landlock rule for {path}: cannot tell what it is: {source}")]
    Stat { path: PathBuf, source: std::io::Error },
    #[error(
        "{0} is a directory; a file was expected there (a disk, kernel, initrd, backing or output file)"
    )]
    NotAFile(PathBuf),
    #[error("{0} is not a directory; the VMM was to create a socket in it")]
    NotADirectory(PathBuf),
    #[error("Landlock ruleset: cannot share it with the thread that starts the VMM's threads: {0}")]
    Spawner(std::io::Error),
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

/// Which threads [`apply`] confines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The calling thread and every thread started after it (also through the seccomp spawner).
    Process,
    /// The calling thread and the threads it starts itself.
    Thread,
}

/// Confines the calling thread, and the threads it starts from now on, to `rules` (paths that do
/// not exist are left out: nothing there can be opened) with TCP bind and connect banned.
///
/// Call it on the thread that goes on to start the VM's threads, before it starts them: threads
/// that already exist stay unconfined. It also sets `PR_SET_NO_NEW_PRIVS` (Landlock needs it
/// without `CAP_SYS_ADMIN`).
pub fn apply(rules: &Rules, decision: Decision, scope: Scope) -> Result<Applied, LandlockError> {
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
            Err(landlock::PathFdError::OpenCall { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound
                    || source.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                continue
            }
            Err(source) => return Err(LandlockError::Path { path: rule.path.clone(), source }),
        };
        // The inode the rule will name, not a second lookup of its path.
        let is_dir =
            is_directory(&fd).map_err(|source| LandlockError::Stat { path: rule.path.clone(), source })?;
        match (rule.target, is_dir) {
            (Target::File, true) => return Err(LandlockError::NotAFile(rule.path.clone())),
            (Target::Directory, false) => return Err(LandlockError::NotADirectory(rule.path.clone())),
            _ => {}
        }
        created = created.add_rule(PathBeneath::new(fd, rule.access.rights(is_dir)))?;
    }
    // Threads are started by the seccomp spawner thread when filters are on (see
    // `seccomp::spawner`), not by this one: it joins the same domain, so that every thread
    // started from now on inherits it. The API thread's empty domain is its own alone.
    if scope == Scope::Process && crate::seccomp::mode() == crate::seccomp::Mode::Enforce {
        let spawner_copy = created.try_clone().map_err(LandlockError::Spawner)?;
        crate::seccomp::run_where_threads_start(move || spawner_copy.restrict_self())
            .map_err(LandlockError::Spawner)??;
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

/// Whether the descriptor names a directory (`fstat`, which an `O_PATH` descriptor allows).
fn is_directory(fd: &PathFd) -> std::io::Result<bool> {
    use std::os::fd::{AsFd, AsRawFd};
    // SAFETY: all zeroes is a valid `stat` (plain integers), which fstat overwrites.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open for the duration of the call and `stat` is a valid,
    // writable `struct stat` owned by this frame.
    if unsafe { libc::fstat(fd.as_fd().as_raw_fd(), &mut stat) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// The paths every VMM reaches whatever its configuration: the devices it opens and the few
/// `/proc` and `/sys` files it (and the Rust runtime) reads.
pub fn system_rules() -> Rules {
    let mut rules = Rules::new();
    for device in ["/dev/kvm", "/dev/net/tun", "/dev/userfaultfd"] {
        rules.allow_file(device, Access::ReadWrite);
    }
    for file in [
        "/dev/urandom",
        // The host's RAM, to refuse a VM larger than it (vmm::memory).
        "/proc/meminfo",
    ] {
        rules.allow_file(file, Access::ReadOnly);
    }
    // The host's CPUs, NUMA nodes and THP/KSM/hugepage settings (vCPU placement, memory
    // backends).
    for directory in ["/sys/devices/system/cpu", "/sys/devices/system/node", "/sys/kernel/mm"] {
        rules.allow_dir(directory, Access::ReadOnly);
    }
    rules
}

/// Debug builds only: with `variable` (`KESTREL_LANDLOCK_TEST_PROBE` for the VM's threads,
/// `KESTREL_LANDLOCK_TEST_PROBE_API` for the API thread) set to `PATH[,PATH...]`, tries to open
/// each path for reading and says on stderr whether it was allowed or denied. Tests call the VMM
/// with it to see the rules at work from inside.
#[cfg(debug_assertions)]
pub fn test_probe(variable: &str) {
    probe(variable, "");
}

/// [`test_probe`] for a thread as it starts (`KESTREL_LANDLOCK_TEST_PROBE_THREADS`, asked by
/// `seccomp::spawn` of every thread it starts): the lines name the thread's role,
/// `kestrel: landlock probe (ROLE) PATH: VERDICT`, so tests see that the VMM's threads are in the
/// domain the main thread entered.
#[cfg(debug_assertions)]
pub fn test_probe_as(variable: &str, role: &str) {
    probe(variable, &format!("({role}) "));
}

#[cfg(debug_assertions)]
fn probe(variable: &str, label: &str) {
    use std::io::Write;
    let Some(paths) = std::env::var_os(variable) else { return };
    for path in paths.to_string_lossy().split(',').filter(|path| !path.is_empty()) {
        let verdict = match std::fs::File::open(path) {
            Ok(_) => "allowed".to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => "denied".to_owned(),
            Err(e) => format!("error ({e})"),
        };
        let _ = writeln!(std::io::stderr(), "kestrel: landlock probe {label}{path}: {verdict}");
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
        // Neither includes the other: both are kept (Landlock grants the union).
        let mut rules = Rules::new();
        rules.allow_dir("/run", Access::SocketDirectory);
        rules.allow_dir("/run", Access::ReadOnly);
        rules.allow_dir("/run", Access::SocketDirectory);
        assert_eq!(rules.rules().len(), 2);
        // A file's rule and a directory's for one path stay apart: each is checked on its own.
        rules.allow_file("/run", Access::ReadOnly);
        assert_eq!(rules.rules().len(), 3);
    }

    #[test]
    fn files_get_no_directory_rights_and_a_socket_directory_only_sockets() {
        let file = Access::CreateInDirectory.rights(false);
        assert!(!file.contains(AccessFs::MakeReg));
        assert!(!file.contains(AccessFs::ReadDir));
        assert!(file.contains(AccessFs::WriteFile));
        assert!(!Access::ReadOnly.rights(true).contains(AccessFs::WriteFile));
        assert!(Access::CreateInDirectory.rights(true).contains(AccessFs::MakeSock));
        assert_eq!(Access::SocketDirectory.rights(true), AccessFs::MakeSock | AccessFs::RemoveFile);
        assert!(!Access::SocketDirectory.includes(Access::ReadOnly));
        assert!(!Access::ReadWrite.includes(Access::SocketDirectory));
        assert!(Access::CreateInDirectory.includes(Access::SocketDirectory));
    }

    #[test]
    fn a_rw_allow_spec_is_judged_on_what_the_path_is_when_applied() {
        let spec: AllowSpec = "/srv/x".parse().unwrap();
        assert_eq!(spec.to_rule(), Rule::new("/srv/x", Access::CreateInDirectory));
        // On a file the same rule is the file's read and write rights.
        assert_eq!(Access::CreateInDirectory.rights(false), Access::ReadWrite.rights(false));
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

    /// The running kernel's Landlock ABI, 0 without Landlock.
    fn kernel_abi() -> i64 {
        const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
        // SAFETY: with a null attribute pointer, size 0 and the VERSION flag the call reads and
        // writes no memory; it returns the ABI version or fails.
        let abi = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<libc::c_void>(),
                0usize,
                LANDLOCK_CREATE_RULESET_VERSION,
            )
        };
        abi.max(0)
    }

    /// Whether a test that needs Landlock runs: always under CI (a kernel without it fails the
    /// test there), elsewhere only on a kernel that has it.
    fn landlock_testable() -> bool {
        kernel_abi() > 0 || std::env::var_os("CI").is_some()
    }

    /// A fresh directory for one test.
    fn test_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kestrel-landlock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Runs `body` on a thread of its own confined to `rules` (Landlock binds that thread and the
    /// threads it starts, not the test process).
    fn confined<T: Send + 'static>(rules: Rules, body: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            apply(&rules, Decision::Required, Scope::Thread).unwrap();
            body()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn an_applied_thread_opens_only_what_the_rules_allow() {
        if !landlock_testable() {
            eprintln!("skipped: this kernel has no Landlock (and CI is not set)");
            return;
        }
        let abi = kernel_abi();
        let dir = test_dir("apply");
        let allowed = dir.join("allowed");
        std::fs::write(&allowed, b"x").unwrap();
        std::fs::write(dir.join("other"), b"x").unwrap();
        let (applied, allowed_ok, other, created, tcp) = std::thread::spawn({
            let (allowed, dir) = (allowed.clone(), dir.clone());
            move || {
                let mut rules = Rules::new();
                rules.allow_file(&allowed, Access::ReadOnly);
                let applied = apply(&rules, Decision::Required, Scope::Thread).unwrap();
                let tcp = std::net::TcpListener::bind("127.0.0.1:0").map(drop);
                (
                    applied,
                    std::fs::read(&allowed).is_ok(),
                    std::fs::read(dir.join("other")).map(drop),
                    std::fs::write(dir.join("new"), b"x"),
                    tcp,
                )
            }
        })
        .join()
        .unwrap();
        // Everything is enforced from ABI 7; an older kernel enforces what it knows.
        assert_eq!(applied, if abi >= 7 { Applied::Full } else { Applied::Partial });
        assert!(allowed_ok);
        assert_eq!(other.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
        assert_eq!(created.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
        // TCP is Landlock's from ABI 4.
        if abi >= 4 {
            assert_eq!(tcp.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
        }
        // The rest of the process is not confined.
        assert!(std::fs::read(dir.join("other")).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_rule_on_a_directory_or_a_link_to_one_is_refused() {
        if !landlock_testable() {
            return;
        }
        let dir = test_dir("notafile");
        let link = dir.join("disk.img");
        std::os::unix::fs::symlink("/", &link).unwrap();
        for path in [dir.clone(), link.clone()] {
            let mut rules = Rules::new();
            rules.allow_file(&path, Access::ReadWrite);
            let error = apply(&rules, Decision::Required, Scope::Thread).unwrap_err();
            assert!(matches!(&error, LandlockError::NotAFile(p) if *p == path), "{error}");
            assert!(error.to_string().contains("is a directory; a file was expected"), "{error}");
        }
        // An output file that is a directory: named as a file, so refused too.
        let mut rules = Rules::new();
        rules.allow_output_file(&dir);
        assert!(matches!(apply(&rules, Decision::Required, Scope::Thread), Err(LandlockError::NotAFile(_))));
        // A socket's directory that is a file.
        std::fs::write(dir.join("file"), b"").unwrap();
        let mut rules = Rules::new();
        rules.allow_socket(&dir.join("file/v.sock"));
        assert!(matches!(
            apply(&rules, Decision::Required, Scope::Thread),
            Err(LandlockError::NotADirectory(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_output_file_is_created_0600_and_a_dangling_link_is_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = test_dir("output");
        let mut rules = Rules::new();
        rules.allow_output_file(&dir.join("console.log"));
        let mode = std::fs::metadata(dir.join("console.log")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::os::unix::fs::symlink(dir.join("elsewhere"), dir.join("metrics")).unwrap();
        rules.allow_output_file(&dir.join("metrics"));
        assert!(!dir.join("elsewhere").exists());
        // Nothing but the files is named; the directory gets no rule.
        assert!(rules.rules().iter().all(|rule| rule.target == Target::File && rule.path != dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_socket_directory_lets_a_socket_be_bound_and_nothing_else() {
        if !landlock_testable() {
            return;
        }
        use std::os::unix::net::UnixListener;
        let dir = test_dir("socket");
        let socket = dir.join("v.sock");
        // A stale socket, as a VMM killed before it cleaned up leaves.
        drop(UnixListener::bind(&socket).unwrap());
        std::fs::write(dir.join("neighbour"), b"x").unwrap();
        let mut rules = Rules::new();
        rules.allow_socket(&socket);
        let (removed, bound, read, written, created) = confined(rules, {
            let dir = dir.clone();
            move || {
                (
                    std::fs::remove_file(dir.join("v.sock")).is_ok(),
                    UnixListener::bind(dir.join("v.sock")).map(drop),
                    std::fs::read(dir.join("neighbour")).map(drop),
                    std::fs::OpenOptions::new().append(true).open(dir.join("neighbour")).map(drop),
                    std::fs::write(dir.join("new"), b"x"),
                )
            }
        });
        assert!(removed);
        bound.unwrap();
        assert_eq!(read.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
        assert_eq!(written.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
        assert_eq!(created.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_own_threads_rule_lists_this_processs_threads_and_nothing_else_in_proc() {
        if !landlock_testable() {
            return;
        }
        let mut rules = Rules::new();
        rules.allow_own_threads();
        let (names, status, other) = confined(rules, || {
            // Other tests' threads may end between the listing and the read: those are skipped;
            // any other error (a refusal) fails the test.
            let names: Vec<String> = std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|entry| match std::fs::read_to_string(entry.unwrap().path().join("comm")) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    read => Some(read.unwrap()),
                })
                .collect();
            (names, std::fs::read("/proc/self/status").map(drop), std::fs::read("/proc/1/comm").map(drop))
        });
        assert!(!names.is_empty());
        assert_eq!(status.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
        assert_eq!(other.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
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
