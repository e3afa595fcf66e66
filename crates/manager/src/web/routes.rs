//! The console's router: the UI (no login), `/auth/{login,session,logout}`, and the daemon's
//! whole API under `/api` behind [`super::auth::require_session`]; every answer gets the
//! security headers.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use model::manager::ErrorKind;
use serde::{Deserialize, Serialize};

use super::auth::{self, Origin};
use super::listener::Peer;
use super::session::{Throttle, Verdict};
use crate::error::{ApiResult, ManagerError};
use crate::server::AppState;

/// The most a login body may be.
pub const LOGIN_BODY_LIMIT: usize = 4 << 10;
/// How long a login body may take to arrive (its headers have the listener's own timeout). A
/// client that announces a body and sends nothing would otherwise hold its connection slot
/// for good.
pub const LOGIN_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often sessions idle past [`super::session::IDLE`] are dropped (which ends their open
/// consoles and event streams even when nobody presents the session again).
const EXPIRE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The page may load its own scripts, styles and images and talk to its own origin, nothing else;
/// no other page may frame it. Styles allow 'unsafe-inline' because xterm.js injects <style>
/// elements; scripts do not.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

struct Web {
    shared: AppState,
    throttle: Throttle,
}

/// `POST /auth/login`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    token: String,
}

/// What a login or a session check answers: the token to send back in `X-Kestrel-CSRF`.
#[derive(Serialize)]
struct Csrf {
    csrf: String,
}

/// The console's whole router.
pub fn router(shared: AppState) -> Router {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(expire_sessions(Arc::downgrade(&shared)));
    }
    let web = Arc::new(Web { shared: shared.clone(), throttle: Throttle::new() });
    let login = Router::new()
        .route("/auth/login", post(login))
        .route("/auth/session", get(session))
        .route("/auth/logout", post(logout))
        .with_state(web);
    // The checks wrap the nested router itself, its fallback included: all of `/api` needs a
    // session (an unknown route too), while a path outside every router is a plain 404.
    // (A nested router without a fallback of its own would use the outer one, unguarded.)
    let guarded = crate::server::web_router(shared.clone())
        .fallback(|| async { ManagerError::not_found("no such API route") })
        .layer(axum::middleware::from_fn_with_state(shared, auth::require_session));
    let api = Router::new().nest("/api", guarded);
    Router::new()
        .merge(super::assets::router())
        .merge(login)
        .merge(api)
        .layer(axum::middleware::from_fn(security_headers))
}

/// Every [`EXPIRE_EVERY`], drops the sessions idle too long; stops when the daemon's state is
/// gone.
async fn expire_sessions(shared: std::sync::Weak<crate::server::Shared>) {
    let mut tick = tokio::time::interval(EXPIRE_EVERY);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        let expired = shared.web_sessions.expire();
        if expired > 0 {
            tracing::info!("web console: {expired} idle sessions ended");
        }
    }
}

/// The headers of every answer (see [`CSP`]); `/auth` and `/api` answers are never cached.
async fn security_headers(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let private = path.starts_with("/api/") || path == "/api" || path.starts_with("/auth/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if private {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn foreign_origin(headers: &HeaderMap) -> ApiResult<()> {
    if auth::origin(headers) == Origin::Foreign {
        return Err(ManagerError::new(ErrorKind::Forbidden, "the request's Origin is not this console's"));
    }
    Ok(())
}

/// The client's address, for the log ("unknown" off the TCP listener, e.g. in a test).
fn peer_of(peer: &Option<Extension<Peer>>) -> String {
    peer.as_ref().map_or_else(|| "unknown".to_owned(), |Extension(Peer(addr))| addr.to_string())
}

async fn login(
    State(web): State<Arc<Web>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let peer = peer_of(&peer);
    foreign_origin(&headers)?;
    let bytes = match tokio::time::timeout(LOGIN_BODY_TIMEOUT, axum::body::to_bytes(body, LOGIN_BODY_LIMIT))
        .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return Err(ManagerError::invalid(format!("a login body is at most {LOGIN_BODY_LIMIT} bytes")))
        }
        Err(_) => {
            return Err(ManagerError::new(
                ErrorKind::Timeout,
                format!("the login body did not arrive within {} s", LOGIN_BODY_TIMEOUT.as_secs()),
            ))
        }
    };
    let login: Login = serde_json::from_slice(&bytes)
        .map_err(|e| ManagerError::invalid(format!("a login body is {{\"token\": \"…\"}}: {e}")))?;
    let store = web.shared.store.clone();
    let valid = tokio::task::spawn_blocking(move || super::tokens::is_valid(&store, &login.token))
        .await
        .map_err(|e| ManagerError::internal(format!("checking a login token: {e}")))??;
    if !valid {
        // The throttle is asked only about wrong tokens: a right one always logs in.
        if let Verdict::Refused { retry_after_secs, log } = web.throttle.verdict() {
            if log {
                tracing::warn!("web console: more than 10 failed logins within a minute (this one from {peer}); wrong tokens refused for {retry_after_secs} s");
            }
            let mut response = ManagerError::new(
                ErrorKind::TooManyRequests,
                format!("too many failed logins; try again in {retry_after_secs} s"),
            )
            .into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            return Ok(response);
        }
        web.throttle.failed();
        tracing::info!("web console: a failed login from {peer}");
        return Err(ManagerError::new(
            ErrorKind::Unauthorized,
            "unknown or revoked token (kestrel daemon web-token makes one)",
        ));
    }
    // A session the browser still presents is replaced, not left behind: one login, one session.
    if let Some(old) = auth::session_cookie(&headers) {
        web.shared.web_sessions.remove(old);
    }
    let session = web.shared.web_sessions.create()?;
    tracing::info!("web console: a session began (login from {peer})");
    let mut response = Json(Csrf { csrf: session.csrf }).into_response();
    let cookie = HeaderValue::from_str(&auth::set_cookie(&session.cookie))
        .map_err(|e| ManagerError::internal(format!("the session cookie: {e}")))?;
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

async fn session(State(web): State<Arc<Web>>, headers: HeaderMap) -> ApiResult<Json<Csrf>> {
    // It answers the CSRF token: CORS already keeps another site from reading it, and refusing
    // a foreign Origin here too keeps every `/auth` route to the same rule.
    foreign_origin(&headers)?;
    let live = auth::session_cookie(&headers).and_then(|cookie| web.shared.web_sessions.check(cookie));
    match live {
        Some(live) => Ok(Json(Csrf { csrf: live.csrf })),
        None => Err(ManagerError::new(ErrorKind::Unauthorized, "no session, or it has ended")),
    }
}

async fn logout(State(web): State<Arc<Web>>, headers: HeaderMap) -> ApiResult<Response> {
    foreign_origin(&headers)?;
    if let Some(cookie) = auth::session_cookie(&headers) {
        if web.shared.web_sessions.remove(cookie) {
            tracing::info!("web console: a session ended (logout)");
        }
    }
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, auth::clear_cookie())]).into_response())
}
