//! Where the daemon keeps things: the state directory (the store, per-VM directories with the
//! console log and saved states) and the API socket. Flags override the environment
//! (`KESTREL_STATE_DIR`, `KESTREL_SOCKET`), which overrides the defaults; the CLI reads the same
//! variables to find the daemon.

use std::path::{Path, PathBuf};

/// The state directory when nothing else is said.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/kestrel";
/// The API socket when nothing else is said.
pub const DEFAULT_SOCKET: &str = "/run/kestrel/kestrel.sock";
/// Environment variable naming the state directory.
pub const STATE_DIR_ENV: &str = "KESTREL_STATE_DIR";
/// Environment variable naming the API socket.
pub const SOCKET_ENV: &str = "KESTREL_SOCKET";

/// The daemon's directories and files.
#[derive(Clone, Debug)]
pub struct Paths {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
}

impl Paths {
    /// From flags (if given), else the environment, else the defaults.
    pub fn resolve(state_dir: Option<PathBuf>, socket: Option<PathBuf>) -> Paths {
        let from_env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        Paths {
            state_dir: state_dir
                .or_else(|| from_env(STATE_DIR_ENV))
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            socket: socket.or_else(|| from_env(SOCKET_ENV)).unwrap_or_else(|| DEFAULT_SOCKET.into()),
        }
    }

    /// The SQLite store.
    pub fn store(&self) -> PathBuf {
        self.state_dir.join("kestrel.db")
    }

    /// A VM's own directory (console log, VMM socket, saved state), by UUID so that a rename
    /// never moves it.
    pub fn vm_dir(&self, uuid: &str) -> PathBuf {
        self.state_dir.join("vms").join(uuid)
    }

    /// The state directory itself.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

/// The files of one VM, all in [`Paths::vm_dir`]. The daemon, the VMM and the console all find
/// them here, so a restarted daemon finds a running VM's files again.
impl Paths {
    /// The VMM's API socket.
    pub fn vmm_socket(&self, uuid: &str) -> PathBuf {
        self.vm_dir(uuid).join("vmm.sock")
    }
    /// The serial console's output (the VMM's stdout, appended): the on-disk scrollback.
    pub fn console_log(&self, uuid: &str) -> PathBuf {
        self.vm_dir(uuid).join("console.log")
    }
    /// The FIFO the VMM reads console input from (its stdin).
    pub fn console_input(&self, uuid: &str) -> PathBuf {
        self.vm_dir(uuid).join("console.in")
    }
    /// The VMM's own log (its stderr).
    pub fn vmm_log(&self, uuid: &str) -> PathBuf {
        self.vm_dir(uuid).join("vmm.log")
    }
    /// The VMM's metrics, one JSON line per flush (`PUT /metrics`).
    pub fn vmm_metrics(&self, uuid: &str) -> PathBuf {
        self.vm_dir(uuid).join("metrics.json")
    }
    /// Where `save` writes the VM's state and memory.
    pub fn saved_state(&self, uuid: &str) -> PathBuf {
        self.vm_dir(uuid).join("saved")
    }
}
