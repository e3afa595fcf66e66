//! Login tokens for the web console. `kestrel daemon web-token` mints one over the Unix socket
//! (`POST /v1/web/tokens`: only the socket's users, who are root-equivalent anyway, may make
//! them); the store keeps only each token's SHA-256, so the token is shown once and a copy of
//! the store logs nobody in. `DELETE /v1/web/tokens` forgets every token and ends every session.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use model::manager::web::{WebToken, WebTokensRevoked};
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::error::ApiResult;
use crate::server::AppState;
use crate::store::{Store, StoreError};

/// The store's table of token hashes.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS web_tokens (
    hash BLOB PRIMARY KEY NOT NULL,
    created_at_ms INTEGER NOT NULL
);";

/// Every token starts so (a secret scanner can spot one pasted where it should not be).
pub const PREFIX: &str = "kst_";
/// `kst_` + 43 base64url characters (32 bytes).
pub const TOKEN_LEN: usize = PREFIX.len() + 43;
/// The most tokens kept: minting more forgets the oldest.
pub const KEEP: i64 = 1000;

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Makes a token and stores its hash.
pub fn mint(store: &Store) -> ApiResult<String> {
    let token = format!("{PREFIX}{}", super::session::random_b64(32)?);
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    store.transaction(|tx| -> Result<(), StoreError> {
        tx.execute("INSERT INTO web_tokens (hash, created_at_ms) VALUES (?1, ?2)", params![&hash(&token)[..], at_ms])?;
        tx.execute(
            "DELETE FROM web_tokens WHERE rowid NOT IN (SELECT rowid FROM web_tokens ORDER BY created_at_ms DESC, rowid DESC LIMIT ?1)",
            params![KEEP],
        )?;
        Ok(())
    })?;
    Ok(token)
}

/// Whether `token` is one the daemon minted and still keeps. The lookup is by SHA-256, so
/// what a timing difference could reveal is about a hash, not about the token.
pub fn is_valid(store: &Store, token: &str) -> Result<bool, StoreError> {
    if token.len() != TOKEN_LEN || !token.starts_with(PREFIX) {
        return Ok(false);
    }
    let connection = store.lock();
    let found: Option<i64> = connection
        .query_row("SELECT 1 FROM web_tokens WHERE hash = ?1", params![&hash(token)[..]], |row| row.get(0))
        .optional()?;
    Ok(found.is_some())
}

/// Forgets every token; how many there were.
pub fn revoke_all(store: &Store) -> Result<u64, StoreError> {
    let connection = store.lock();
    Ok(connection.execute("DELETE FROM web_tokens", [])? as u64)
}

/// `POST|DELETE /v1/web/tokens` (on the Unix socket; the web console refuses `/api/v1/web/*`).
pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/web/tokens", post(create).delete(revoke))
}

async fn create(State(state): State<AppState>) -> ApiResult<(StatusCode, Json<WebToken>)> {
    let token = mint(&state.store)?;
    tracing::info!("web console: a login token was made");
    Ok((StatusCode::CREATED, Json(WebToken { token })))
}

async fn revoke(State(state): State<AppState>) -> ApiResult<Json<WebTokensRevoked>> {
    let tokens = revoke_all(&state.store)?;
    let sessions = state.web_sessions.clear() as u64;
    tracing::info!("web console: {tokens} login tokens revoked, {sessions} sessions ended");
    Ok(Json(WebTokensRevoked { tokens, sessions }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_is_valid_and_only_its_hash_is_stored() {
        let store = Store::in_memory(&[SCHEMA]).unwrap();
        let token = mint(&store).unwrap();
        assert_eq!(token.len(), TOKEN_LEN);
        assert!(token.starts_with(PREFIX));
        assert!(token[PREFIX.len()..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert!(is_valid(&store, &token).unwrap());
        let mut wrong = token.clone().into_bytes();
        let last = wrong.len() - 1;
        wrong[last] = if wrong[last] == b'A' { b'B' } else { b'A' };
        assert!(!is_valid(&store, std::str::from_utf8(&wrong).unwrap()).unwrap());
        assert!(!is_valid(&store, "kst_").unwrap());
        let stored: Vec<u8> =
            store.lock().query_row("SELECT hash FROM web_tokens", [], |row| row.get(0)).unwrap();
        assert_eq!(stored, hash(&token).to_vec());
        assert!(!stored.windows(8).any(|w| token.as_bytes().windows(8).any(|t| t == w)));
        let second = mint(&store).unwrap();
        assert_ne!(token, second);
        assert_eq!(revoke_all(&store).unwrap(), 2);
        assert!(!is_valid(&store, &token).unwrap());
    }
}
