//! Kestrel's control API over HTTP, following Firecracker's REST API (same paths, bodies, status
//! codes and `{"fault_message": "..."}` error body) so that Firecracker's clients can drive
//! Kestrel. This crate is HTTP and routing only: requests become the `model` crate's typed
//! [`model::control::VmmRequest`]s, handed to a [`model::control::Dispatch`] (the VMM's control
//! thread); it does not link the engine.
//!
//! - [`http`]: a strict, size-limited HTTP/1.1 request parser and response writer.
//! - [`router`]: method and path to a typed request, by resource; [`fault`]: the one mapping of
//!   errors to status and `fault_message`.
//! - [`server`]: the Unix socket (owner-only).
//! - [`listener`]: the socket's connections, one thread each, under a per-request deadline, an
//!   idle timeout and a connection cap idle clients cannot exhaust; requests go to a
//!   [`listener::Handler`] (the [`router::Router`]). [`log_limit`]: the rate limiter of its log lines.
//! - [`logger`]: `PUT /logger`, for the binary to apply; [`sink`]: the files logs and metrics go to.

pub mod fault;
pub mod http;
pub mod listener;
pub mod log_limit;
pub mod logger;
pub mod router;
pub mod server;
pub mod sink;

pub use model::{NOT_SUPPORTED_AFTER_START, NOT_SUPPORTED_BEFORE_START};
