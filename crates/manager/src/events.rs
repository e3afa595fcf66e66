//! The event log: every change to a VM, network or pool is stored (with an increasing ID) and
//! broadcast to `GET /v1/events` followers.
//!
//! The store keeps the newest [`KEEP`] events, so a client that reconnects with `?since=ID`
//! misses nothing recent. Followers get new events through a broadcast channel: a follower that
//! does not read falls behind, is told so in a last line, and is dropped — it never slows the
//! daemon.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::Router;
use futures_util::StreamExt;
use model::manager::event::{Event, EventKind};
use model::manager::{ErrorBody, ErrorKind};
use rusqlite::{params, OptionalExtension};
use serde::Deserialize;
use tokio::sync::broadcast;

use crate::error::ApiResult;
use crate::server::AppState;
use crate::store::{Store, StoreError};
use crate::web::session::{session_ended, SessionEnd};

/// The store's tables for events.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    object TEXT NOT NULL,
    detail TEXT
);";

/// How many events the store keeps.
pub const KEEP: i64 = 10_000;
/// How many new events a follower may be behind before it is dropped.
const FOLLOWER_BACKLOG: usize = 1024;

/// The event log and its followers.
pub struct Events {
    store: Arc<Store>,
    sender: broadcast::Sender<Event>,
}

impl Events {
    /// The log kept in `store` (whose tables include [`SCHEMA`]).
    pub fn new(store: Arc<Store>) -> Events {
        Events { store, sender: broadcast::channel(FOLLOWER_BACKLOG).0 }
    }

    /// Records an event about `object` (a VM, network or pool name) and tells the followers.
    /// Never fails the caller's request: an event that cannot be stored is logged.
    pub fn emit(&self, kind: EventKind, object: &str, detail: Option<String>) {
        let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let kind_text = kind_name(kind);
        let event =
            |id: i64| Event { id: id as u64, at_ms, kind, object: object.to_owned(), detail: detail.clone() };
        // The send happens under the store's lock, after the commit: events reach the channel in
        // the order of their IDs, so a follower (which drops IDs it has passed) misses none when
        // two threads emit at once.
        let mut connection = self.store.lock();
        let stored = (|| -> Result<i64, StoreError> {
            let tx = connection.transaction()?;
            tx.execute(
                "INSERT INTO events (at_ms, kind, object, detail) VALUES (?1, ?2, ?3, ?4)",
                params![at_ms as i64, kind_text, object, detail],
            )?;
            let id = tx.last_insert_rowid();
            // The primary key grows by one per event, so this keeps the newest KEEP.
            tx.execute("DELETE FROM events WHERE id <= ?1", params![id - KEEP])?;
            tx.commit()?;
            // No follower is not an error.
            let _ = self.sender.send(event(id));
            Ok(id)
        })();
        drop(connection);
        match stored {
            Ok(id) => tracing::info!("event {id}: {kind_text} {object}{}", detail_suffix(&detail)),
            Err(e) => tracing::warn!("event {kind_text} {object} not stored: {e}"),
        }
    }

    /// The stored events after `since`, oldest first.
    pub fn since(&self, since: u64) -> Result<Vec<Event>, StoreError> {
        let connection = self.store.lock();
        let mut statement = connection
            .prepare_cached("SELECT id, at_ms, kind, object, detail FROM events WHERE id > ?1 ORDER BY id")?;
        let rows = statement.query_map(params![since.min(i64::MAX as u64) as i64], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, Option<String>>(4)?,
            ))
        })?;
        let mut events = Vec::new();
        for row in rows {
            let (id, at_ms, kind, object, detail) = row?;
            let kind =
                parse_kind(&kind).ok_or_else(|| StoreError::Corrupt(format!("event kind '{kind}'")))?;
            events.push(Event { id: id as u64, at_ms: at_ms as u64, kind, object, detail });
        }
        Ok(events)
    }

    /// The newest event's ID (0 when there is none).
    pub fn last_id(&self) -> Result<u64, StoreError> {
        let connection = self.store.lock();
        let id: Option<i64> =
            connection.query_row("SELECT MAX(id) FROM events", [], |row| row.get(0)).optional()?.flatten();
        Ok(id.unwrap_or(0) as u64)
    }

    /// A receiver of the events emitted from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}

fn detail_suffix(detail: &Option<String>) -> String {
    detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
}

/// The kind's name in the store and on the wire (serde's snake_case name).
fn kind_name(kind: EventKind) -> String {
    serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn parse_kind(text: &str) -> Option<EventKind> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).ok()
}

/// `GET /v1/events`'s query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events with a larger ID (default: every stored one).
    #[serde(default)]
    pub since: Option<u64>,
    /// Keep the answer open and stream new events as they happen.
    #[serde(default)]
    pub follow: bool,
}

/// `GET /v1/events`.
pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/events", get(list_events))
}

async fn list_events(
    State(state): State<AppState>,
    // The web console's session (none on the Unix socket): a follower ends with it.
    session: Option<Extension<SessionEnd>>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(query) = query.map_err(|e| crate::error::ManagerError::invalid(format!("bad query: {e}")))?;
    let since = query.since.unwrap_or(0);
    // Subscribe before reading the store, so nothing emitted in between is missed (an event
    // both stored and received is sent once: IDs only grow).
    let receiver = query.follow.then(|| state.events.subscribe());
    let stored = state.events.since(since)?;
    let last_sent = stored.last().map_or(since, |e| e.id);
    let lines: Vec<Chunk> = stored.iter().map(|event| Ok(line_of(event))).collect();
    let body = match receiver {
        None => Body::from_stream(futures_util::stream::iter(lines)),
        Some(receiver) => {
            let session = session.map(|Extension(end)| end);
            Body::from_stream(follow_stream(lines, receiver, last_sent).take_until(session_ended(session)))
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

fn line_of<T: serde::Serialize>(value: &T) -> bytes::Bytes {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    line.into()
}

type Chunk = Result<bytes::Bytes, std::convert::Infallible>;

/// Where a follower is: its receiver (gone once it fell behind) and the last ID it was sent.
struct Follower {
    receiver: Option<broadcast::Receiver<Event>>,
    last_sent: u64,
}

/// The stored lines, then each new event as it comes; a follower that falls behind gets one
/// error line and the end.
fn follow_stream(
    stored: Vec<Chunk>,
    receiver: broadcast::Receiver<Event>,
    last_sent: u64,
) -> impl futures_util::Stream<Item = Chunk> {
    let follower = Follower { receiver: Some(receiver), last_sent };
    let new = futures_util::stream::unfold(follower, |mut follower| async move {
        loop {
            let receiver = follower.receiver.as_mut()?;
            match receiver.recv().await {
                // Already sent from the store.
                Ok(event) if event.id <= follower.last_sent => continue,
                Ok(event) => {
                    follower.last_sent = event.id;
                    return Some((Ok(line_of(&event)), follower));
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    follower.receiver = None;
                    let error = ErrorBody {
                        error: format!(
                            "this follower fell {missed} events behind and is dropped; reconnect with ?since={}",
                            follower.last_sent
                        ),
                        kind: ErrorKind::Unavailable,
                    };
                    return Some((Ok(line_of(&error)), follower));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    futures_util::stream::iter(stored).chain(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events() -> Events {
        Events::new(Arc::new(Store::in_memory(&[SCHEMA]).unwrap()))
    }

    #[test]
    fn emitted_events_are_stored_in_order_and_read_back_after_an_id() {
        let events = events();
        events.emit(EventKind::Defined, "web", None);
        events.emit(EventKind::Crashed, "web", Some("status 4".into()));
        let all = events.since(0).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].kind, all[1].kind), (EventKind::Defined, EventKind::Crashed));
        assert_eq!(all[1].detail.as_deref(), Some("status 4"));
        assert_eq!(events.since(all[0].id).unwrap(), vec![all[1].clone()]);
        assert_eq!(events.last_id().unwrap(), all[1].id);
    }

    #[test]
    fn events_emitted_at_once_reach_followers_in_id_order() {
        let events = Arc::new(events());
        let mut receiver = events.subscribe();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let events = events.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        events.emit(EventKind::Started, &format!("vm{t}"), None);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let mut ids = Vec::new();
        while let Ok(event) = receiver.try_recv() {
            ids.push(event.id);
        }
        // A follower drops IDs at or below the last it sent, so any out-of-order pair is a loss.
        assert_eq!(ids, (1..=400).collect::<Vec<u64>>());
    }

    #[test]
    fn only_the_newest_are_kept() {
        let events = events();
        for _ in 0..(KEEP + 5) {
            events.emit(EventKind::Started, "vm", None);
        }
        let all = events.since(0).unwrap();
        assert_eq!(all.len() as i64, KEEP);
        assert_eq!(all[0].id as i64, 6);
    }

    #[tokio::test]
    async fn a_follower_that_falls_behind_is_told_and_dropped() {
        let events = events();
        let stream = follow_stream(Vec::new(), events.subscribe(), 0);
        for _ in 0..(FOLLOWER_BACKLOG + 10) {
            events.emit(EventKind::Started, "vm", None);
        }
        let lines: Vec<_> = stream.collect().await;
        assert_eq!(lines.len(), 1, "the lagging follower got one line, then the end");
        let body: ErrorBody = serde_json::from_slice(lines[0].as_ref().unwrap()).unwrap();
        assert!(body.error.contains("fell"), "{}", body.error);
    }
}
