//! Storage pools and volumes (`kestrel pool …`, `kestrel vol …`): directories of raw and qcow2
//! images kept by the daemon.
//!
//! A volume is a file directly in its pool's directory, named as the volume. Its format is
//! recorded by the daemon when it creates, clones or receives the volume (or, for a file put
//! there by hand, when `POST /v1/pools/{pool}/refresh` first sees it), and never guessed from the
//! file afterwards: a guest writing a qcow2 header onto its raw volume must not turn it into one.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::disk::ImageFormat;

/// `kestrel pool define` / `POST /v1/pools`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolDefinition {
    pub name: String,
    /// The directory that holds the volumes: absolute; created (0700) if missing, used as it is
    /// otherwise.
    pub path: PathBuf,
}

/// `GET /v1/pools/{pool}`, and each item of `GET /v1/pools`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    pub definition: PoolDefinition,
    /// The size of the filesystem under the pool's directory.
    pub capacity_bytes: u64,
    /// What is left of it for new data.
    pub available_bytes: u64,
    /// How many volumes the pool holds.
    pub volumes: usize,
}

/// `GET /v1/pools/{pool}/volumes/{vol}`, and each item of `GET /v1/pools/{pool}/volumes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub pool: String,
    pub name: String,
    pub format: ImageFormat,
    /// The size the guest sees.
    pub size_bytes: u64,
    /// Bytes the image takes on the host.
    pub allocated_bytes: u64,
    /// The volume of the same pool it is a thin clone of, if any.
    #[serde(default)]
    pub backing: Option<String>,
    /// The defined VMs whose definitions use it.
    #[serde(default)]
    pub used_by: Vec<String>,
}

/// `POST /v1/pools/{pool}/volumes`: a new empty volume, or a thin clone of another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreate {
    pub name: String,
    /// The new volume's format; a clone is always qcow2 (an overlay over its base).
    #[serde(default)]
    pub format: ImageFormat,
    /// Bytes (rounded up to a multiple of 512); with `clone_of`, at least the base's size
    /// (default: the base's size). Required without `clone_of`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// A volume of the same pool to thin-clone: the new volume is a qcow2 overlay whose backing
    /// file is the base, named relative to the pool. The base cannot be deleted while it has
    /// clones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_of: Option<String>,
}

/// `POST /v1/pools/{pool}/volumes/{vol}/resize`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeResize {
    /// The new size in bytes (rounded up to a multiple of 512).
    pub size_bytes: u64,
    /// Allow a smaller size (which drops the data past it); refused otherwise.
    #[serde(default)]
    pub shrink: bool,
}

/// The query of `PUT /v1/pools/{pool}/volumes/{vol}/data`: the request body is the image file,
/// byte for byte, and becomes the new volume `{vol}` once it is whole and checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeUpload {
    /// What the uploaded bytes are. A qcow2 image is checked before it becomes a volume, and its
    /// backing file, if it names one, must be another volume of the same pool.
    pub format: ImageFormat,
}

/// The answer of `POST /v1/pools/{pool}/refresh`: what changed between the store's list of
/// volumes and the pool's directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRefresh {
    /// Files found in the directory and now volumes (their format probed once, here).
    pub added: Vec<String>,
    /// Volumes whose files are gone, now forgotten.
    pub removed: Vec<String>,
    /// Files left out, and why (not a regular file, a name that is not a volume name, a qcow2
    /// image whose backing file is outside the pool, a damaged image).
    pub skipped: Vec<SkippedFile>,
}

/// A file of a pool's directory that is not a volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    pub name: String,
    pub reason: String,
}

/// A volume named in a VM definition: `POOL/VOLUME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeRef<'a> {
    pub pool: &'a str,
    pub volume: &'a str,
}

/// Why a `POOL/VOLUME` reference is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VolumeRefError {
    #[error("'{0}' is not a volume reference: write it POOL/VOLUME")]
    Shape(String),
    #[error("in the volume reference '{reference}': {source}")]
    Name {
        reference: String,
        #[source]
        source: crate::manager::name::NameError,
    },
}

impl<'a> VolumeRef<'a> {
    /// Splits `POOL/VOLUME`, both checked with [`check_name`](crate::manager::name::check_name)
    /// (so neither can be a path).
    pub fn parse(reference: &'a str) -> Result<VolumeRef<'a>, VolumeRefError> {
        let shape = || VolumeRefError::Shape(reference.chars().take(140).collect());
        let (pool, volume) = reference.split_once('/').ok_or_else(shape)?;
        for name in [pool, volume] {
            crate::manager::name::check_name(name).map_err(|source| VolumeRefError::Name {
                reference: reference.chars().take(140).collect(),
                source,
            })?;
        }
        Ok(VolumeRef { pool, volume })
    }
}

impl std::fmt::Display for VolumeRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pool, self.volume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn references_are_two_names() {
        assert_eq!(
            VolumeRef::parse("images/debian.qcow2"),
            Ok(VolumeRef { pool: "images", volume: "debian.qcow2" })
        );
        for bad in ["images", "/x", "x/", "a/b/c", "a/..", "../a", "a/.hidden", ""] {
            assert!(VolumeRef::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bodies_refuse_unknown_fields() {
        let create: VolumeCreate = serde_json::from_str(r#"{"name":"a","size_bytes":1024}"#).unwrap();
        assert_eq!(create.format, ImageFormat::Raw);
        assert!(serde_json::from_str::<VolumeCreate>(r#"{"name":"a","sise_bytes":1}"#).is_err());
        assert!(serde_json::from_str::<VolumeResize>(r#"{"size_bytes":1,"shrunk":true}"#).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        /// Whatever a definition says, a parsed reference is two plain path components.
        #[test]
        fn a_parsed_reference_never_escapes(text in "\\PC{0,80}") {
            if let Ok(reference) = VolumeRef::parse(&text) {
                for name in [reference.pool, reference.volume] {
                    let components: Vec<_> = std::path::Path::new(name).components().collect();
                    prop_assert_eq!(components.len(), 1);
                    prop_assert!(matches!(components[0], std::path::Component::Normal(_)));
                }
                prop_assert_eq!(reference.to_string(), text);
            }
        }
    }
}
