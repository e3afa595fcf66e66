//! Storage pools and volumes (`kestrel pool …`, `kestrel vol …`): directories of raw and qcow2
//! images. (Owned by the pools work; the shapes here are the first draft.)

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::disk::ImageFormat;

/// `kestrel pool define` / `POST /v1/pools`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolDefinition {
    pub name: String,
    /// The directory that holds the volumes (created if missing).
    pub path: PathBuf,
}

/// `GET /v1/pools/{pool}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    pub definition: PoolDefinition,
    pub capacity_bytes: u64,
    pub available_bytes: u64,
    pub volumes: usize,
}

/// `GET /v1/pools/{pool}/volumes/{vol}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub pool: String,
    pub name: String,
    pub format: ImageFormat,
    /// The size the guest sees.
    pub size_bytes: u64,
    /// Bytes the image takes on the host.
    pub allocated_bytes: u64,
    /// The volume it is a thin clone of, if any.
    pub backing: Option<String>,
    /// The defined VMs whose definitions use it.
    pub used_by: Vec<String>,
}

/// `POST /v1/pools/{pool}/volumes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreate {
    pub name: String,
    #[serde(default)]
    pub format: ImageFormat,
    /// Bytes; with `clone_of`, at least the base's size (default: the base's size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// A volume of the same pool to thin-clone (a qcow2 overlay over it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_of: Option<String>,
}
