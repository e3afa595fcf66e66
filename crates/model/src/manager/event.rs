//! The daemon's event stream (`GET /v1/events`, `kestrel vm events`): one JSON object per line.

use serde::{Deserialize, Serialize};

/// One event. IDs increase; a client that reconnects with `?since=ID` misses nothing that is
/// still kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
    pub kind: EventKind,
    /// The VM, network or pool it concerns, by name.
    pub object: String,
    /// More, in words (an exit status, an error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Defined,
    Undefined,
    Edited,
    Started,
    Stopped,
    Crashed,
    Paused,
    Resumed,
    ShutdownRequested,
    Rebooted,
    Saved,
    Restored,
    Adopted,
    NetworkStarted,
    NetworkStopped,
    // --- networks: the watchdog's reports ---
    /// An active network could not be repaired (the watchdog keeps trying, with a back-off).
    NetworkBroken,
    /// A broken network is whole again.
    NetworkRepaired,
    /// A running VM's tap was deleted: the VM has no network until it is restarted.
    NicLost,
    // --- end networks ---
    VolumeCreated,
    VolumeDeleted,
}
