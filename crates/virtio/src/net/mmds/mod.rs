//! The microVM metadata service (MMDS) as a card's guest reaches it: frames the guest sends to
//! the service's address never reach the tap; a user-space TCP/IP stack (smoltcp) answers them,
//! and its frames are delivered to the guest's receive queue ahead of the tap's.
//!
//! `backend.rs` wraps the card's tap ([`MmdsBackend`]) and sorts the frames, `stack.rs` is the
//! smoltcp interface and its HTTP connections, `http.rs` the answers (Firecracker's behaviour:
//! V1/V2, session tokens, IMDS text). The data store and the tokens are the VMM's
//! ([`model::mmds::MmdsStore`], shared by every card that serves MMDS and the API).

mod backend;
mod http;
mod stack;
#[cfg(test)]
mod tests;

pub use backend::MmdsBackend;
pub use stack::MmdsStack;
