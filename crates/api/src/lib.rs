//! Kestrel's control API, following Firecracker's REST API (same paths, bodies, status codes and
//! `{"fault_message": "..."}` error body) so that Firecracker's clients can drive Kestrel.
//!
//! - [`models`]: the request and response bodies, as Firecracker defines them.
//! - [`resources`]: the pre-boot configuration the requests build up, validated into a
//!   [`vmm::config::VmConfig`]; also the `--config` file (Firecracker's `--config-file` shape).
//! - [`http`]: a strict, size-limited HTTP/1.1 request parser and response writer.
//! - [`server`]: the Unix socket (owner-only) and the routing of requests.
//! - [`listener`]: the socket's connections, one thread each, under a per-request deadline, an
//!   idle timeout and a connection cap idle clients cannot exhaust; requests go to a
//!   [`listener::Handler`]. [`log_limit`]: the rate limiter of its log lines.
//! - [`metrics`]: the metrics lines (`PUT /metrics`, `FlushMetrics`) and what the API counts;
//!   [`logger`]: `PUT /logger`, for the binary to apply; [`sink`]: the files both write to.

pub mod http;
pub mod listener;
pub mod log_limit;
pub mod logger;
pub mod metrics;
pub mod models;
pub mod resources;
pub mod server;
pub mod sink;

/// Firecracker's message for a pre-boot-only request made after `InstanceStart`.
pub const NOT_SUPPORTED_AFTER_START: &str =
    "The requested operation is not supported after starting the microVM.";
/// Firecracker's message for a post-boot-only request made before `InstanceStart`.
pub const NOT_SUPPORTED_BEFORE_START: &str =
    "The requested operation is not supported before starting the microVM.";
