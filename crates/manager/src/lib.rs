//! Kestrel's manager: the `kestrel daemon` process. It keeps VMs, networks, storage pools and
//! events in a SQLite store under its state directory, serves its REST API (bodies from
//! `model::manager`) on a Unix socket, and runs each VM as a `kestrel vmm` child process that it
//! drives through that VMM's own API socket. It is not in the data path: a VM keeps running when
//! the daemon dies, and the next daemon adopts it.
//!
//! This crate does not link the VMM or KVM (`crates/api/tests/dependencies.rs` checks it).

pub mod daemon;
pub mod error;
pub mod paths;
pub mod server;
pub mod store;
pub mod unix_http;

// --- VMs, supervision, events (core) ---
pub mod events;
pub mod vms;
// --- end core ---

// --- console and metrics ---
pub mod console;
pub mod metrics;
// --- end console and metrics ---

// --- networks ---
pub mod network;
// --- end networks ---

// --- pools ---
pub mod pool;
// --- end pools ---

// --- web console (`kestrel daemon --web`) ---
pub mod web;
// --- end web console ---
