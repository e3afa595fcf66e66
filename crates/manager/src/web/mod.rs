//! The browser console: `kestrel daemon --web ADDR:PORT` serves a single-page UI (embedded in the
//! binary) and, behind a login, the daemon's own API under `/api` over HTTPS.

// --- web: ui (the embedded single-page app) ---
pub mod assets;
// --- end web: ui ---

// --- web: server (TLS, login, sessions, CSRF and Origin checks) ---
// --- end web: server ---
