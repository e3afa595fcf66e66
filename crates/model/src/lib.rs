//! Kestrel's control-plane vocabulary, free of KVM: what a VM is ([`config::VmConfig`] and its one
//! [`config::VmConfig::validate`]), the API's request and response bodies ([`api`]), the
//! configuration those requests build up ([`resources`]), and the typed requests, answers and
//! errors that travel between the API and the VMM's control thread ([`control`]).
//!
//! The CLI's flag parser, the VMM's API, a future manager daemon and its client all speak it; it
//! depends on serde and thiserror only, so none of them has to link the engine.

pub mod api;
pub mod config;
pub mod control;
pub mod disk;
pub mod error;
pub mod host;
mod mac;
pub mod manager;
pub mod mmds;
pub mod rate_limiter;
pub mod resources;

/// Firecracker's message for a pre-boot-only request made after `InstanceStart`.
pub const NOT_SUPPORTED_AFTER_START: &str =
    "The requested operation is not supported after starting the microVM.";
/// Firecracker's message for a post-boot-only request made before `InstanceStart`.
pub const NOT_SUPPORTED_BEFORE_START: &str =
    "The requested operation is not supported before starting the microVM.";
