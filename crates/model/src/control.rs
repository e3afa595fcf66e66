//! The control plane's typed vocabulary: what the API asks of the VMM's control thread
//! ([`VmmRequest`], one variant per operation, carrying its parsed body), what it answers
//! ([`VmmResponse`]) and why it refuses ([`ControlError`]). Whatever carries them (a channel to the
//! VMM thread, a socket to a manager) implements [`Dispatch`].

use crate::api::{
    ActionType, Balloon, BalloonStats, BalloonStatsUpdate, BalloonUpdate, BootSource, Drive, EntropyDevice,
    FullVmConfiguration, InstanceInfo, Logger, MachineConfiguration, Metrics, MmdsConfig, NetworkInterface,
    Operation, PartialDrive, PartialNetworkInterface, SnapshotCreateParams, SnapshotLoadParams, VmStateValue,
    Vsock,
};
use crate::error::ConfigError;
use crate::{NOT_SUPPORTED_AFTER_START, NOT_SUPPORTED_BEFORE_START};

/// One API operation, its body parsed.
#[derive(Clone, Debug, PartialEq)]
pub enum VmmRequest {
    /// `GET /`.
    GetInstanceInfo,
    /// `PUT /boot-source`.
    PutBootSource(BootSource),
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfiguration),
    /// `PATCH /machine-config`: the fields to change, merged into the current configuration.
    PatchMachineConfig(serde_json::Map<String, serde_json::Value>),
    /// `PUT /drives/{id}`.
    PutDrive { id: String, drive: Box<Drive> },
    /// `PATCH /drives/{id}`.
    PatchDrive { id: String, update: PartialDrive },
    /// `PUT /network-interfaces/{id}`.
    PutNetworkInterface { id: String, interface: Box<NetworkInterface> },
    /// `PATCH /network-interfaces/{id}`.
    PatchNetworkInterface { id: String, update: Box<PartialNetworkInterface> },
    /// `PUT /vsock`.
    PutVsock(Vsock),
    /// `PUT /balloon`.
    PutBalloon(Balloon),
    /// `GET /balloon`.
    GetBalloon,
    /// `PATCH /balloon`.
    PatchBalloon(BalloonUpdate),
    /// `GET /balloon/statistics`.
    GetBalloonStats,
    /// `PATCH /balloon/statistics`.
    PatchBalloonStats(BalloonStatsUpdate),
    /// `PUT /entropy`.
    PutEntropy(EntropyDevice),
    /// `GET /vm/config`.
    GetVmConfig,
    /// `PUT /actions`.
    Action(ActionType),
    /// `PATCH /vm`.
    PatchVm(VmStateValue),
    /// `PUT /snapshot/create`.
    CreateSnapshot(SnapshotCreateParams),
    /// `PUT /snapshot/load`.
    LoadSnapshot(SnapshotLoadParams),
    /// `PUT /logger`.
    PutLogger(Logger),
    /// `PUT /metrics`.
    PutMetrics(Metrics),
    /// `PUT /mmds`: replaces the metadata store's contents (any JSON value; Firecracker's API
    /// takes an object).
    PutMmds(serde_json::Value),
    /// `PATCH /mmds`: a JSON merge patch (RFC 7396) applied to the store.
    PatchMmds(serde_json::Value),
    /// `GET /mmds`.
    GetMmds,
    /// `PUT /mmds/config`.
    PutMmdsConfig(MmdsConfig),
}

/// What a request that succeeded answers.
#[derive(Clone, Debug, PartialEq)]
pub enum VmmResponse {
    /// Done; nothing to return (HTTP 204).
    NoContent,
    /// `GET /`.
    InstanceInfo(InstanceInfo),
    /// `GET /machine-config`.
    MachineConfiguration(MachineConfiguration),
    /// `GET /vm/config`.
    FullConfig(Box<FullVmConfiguration>),
    /// `GET /balloon`.
    Balloon(Balloon),
    /// `GET /balloon/statistics`.
    BalloonStats(BalloonStats),
    /// `GET /mmds`: the store's contents.
    Mmds(serde_json::Value),
}

/// Why a request was refused. The message is the client's `fault_message`; where Firecracker
/// has a text for the case, it is Firecracker's.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A post-boot-only request before `InstanceStart` (or a snapshot load).
    #[error("{}", NOT_SUPPORTED_BEFORE_START)]
    NotSupportedBeforeStart,
    /// A pre-boot-only request after the VM started.
    #[error("{}", NOT_SUPPORTED_AFTER_START)]
    NotSupportedAfterStart,
    /// A request without the body it needs.
    #[error("The request needs a JSON body")]
    MissingBody,
    /// A body that is not the JSON object the request takes.
    #[error("Invalid request body: {0}")]
    InvalidBody(String),
    /// No operation has this method and path.
    #[error("Invalid request method and/or path: {method} {path}.")]
    InvalidPath { method: &'static str, path: String },
    /// The configuration the request asks for is refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An operation Kestrel does not implement yet.
    #[error("{0} is not supported by Kestrel yet.")]
    NotYet(&'static str),
    /// A long operation is under way and this request would conflict with it.
    #[error("The microVM is busy: {} is in progress; try again once it has finished.", .operation.request())]
    Busy { operation: Operation },
    /// A balloon request without a balloon.
    #[error("Invalid request: no balloon device is configured")]
    NoBalloon,
    /// `PUT /snapshot/create` on a running VM.
    #[error("Cannot create a snapshot: the microVM must be paused first.")]
    NotPaused,
    /// `PUT /snapshot/create` whose state and memory files are one path: the second written would
    /// replace the first, and the snapshot could never be loaded.
    #[error("Cannot create a snapshot: snapshot_path and mem_file_path must be different files.")]
    SamePaths,
    /// `PUT /snapshot/load` after a configuration request (Firecracker's rule).
    #[error("Loading a microVM snapshot is not allowed after configuring boot-specific resources.")]
    ConfiguredBeforeLoad,
    /// `PUT /snapshot/load` with both or neither memory source.
    #[error("Exactly one of mem_file_path and mem_backend must be given.")]
    MemorySource,
    /// The engine failed at what it was asked (`context` says what that was: "Cannot start the
    /// microVM", "Cannot update the drive", ...); its error reaches the client as text here, at
    /// the edge of the control plane, and nowhere before.
    #[error("{context}: {message}")]
    Vm { context: &'static str, message: String },
    /// `PUT /metrics` or `FlushMetrics` failed (the metrics writer's message, Firecracker's where it
    /// has one).
    #[error("{0}")]
    Metrics(String),
    /// `PUT /logger` failed (the logger's message).
    #[error("{0}")]
    Logger(String),
    /// `PUT`/`PATCH /mmds` refused by the data store.
    #[error(transparent)]
    Mmds(#[from] crate::mmds::MmdsError),
    /// The VMM's control thread is gone (the VM has ended and the process is exiting).
    #[error("The VMM is not running any more")]
    VmmGone,
}

/// Takes a request to the VMM and brings back its answer. Implemented by the VMM's channel
/// (`vmm::control::ControlSender`) and by test doubles; the API's router needs nothing else.
pub trait Dispatch: Send + Sync {
    /// Carries out `request` (waiting for the VMM's answer).
    fn dispatch(&self, request: VmmRequest) -> Result<VmmResponse, ControlError>;
}
