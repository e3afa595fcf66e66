//! The web console's login tokens (`kestrel daemon web-token`), minted only over the Unix socket.

use serde::{Deserialize, Serialize};

/// `POST /v1/web/tokens`: a new login token for the browser console. The daemon keeps only its
/// SHA-256, so this answer is the one time the token is shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebToken {
    /// `kst_` and 43 base64url characters (32 random bytes).
    pub token: String,
}

/// `DELETE /v1/web/tokens`: what was revoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebTokensRevoked {
    /// How many tokens the store held.
    pub tokens: u64,
    /// How many web sessions ended with them.
    pub sessions: u64,
}
