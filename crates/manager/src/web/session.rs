//! Web console sessions, kept in memory only: a daemon restart logs everyone out (the browser's
//! page then asks for a token again). A session is the SHA-256 of its cookie (so a lookup's
//! timing says nothing about the cookie) with its CSRF token and its last use; it ends after
//! [`IDLE`] without a request, on logout, or on `kestrel daemon web-token --revoke-all`. At most
//! [`MAX_SESSIONS`] live at once: a new login pushes out the least recently used one.
//!
//! A session that ends also ends what it opened and is still open (a console WebSocket, an
//! events stream): each entry holds the sender of a watch channel, and each request gets a
//! receiver ([`SessionEnd`]). Whatever removes the entry drops the sender, which wakes every
//! receiver — so logout, revocation, expiry and eviction cannot forget to.
//!
//! Also here: the failed-login [`Throttle`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::error::ManagerError;

/// How long a session lives without a request.
pub const IDLE: Duration = Duration::from_secs(12 * 3600);
/// The most sessions at once.
pub const MAX_SESSIONS: usize = 1000;
/// Failed logins allowed per [`THROTTLE_WINDOW`]; the next ones are refused until it ends.
pub const MAX_FAILURES: u32 = 10;
/// The failed-login window.
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(60);

/// `n` random bytes from the kernel, base64url without padding.
pub fn random_b64(n: usize) -> Result<String, ManagerError> {
    use base64::Engine;
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|e| ManagerError::internal(format!("no random bytes: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn digest(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

struct Entry {
    csrf: String,
    last_used: Instant,
    /// Never sent on: dropped with the entry, which is what the receivers wait for.
    ended: watch::Sender<()>,
}

/// Resolves when its session has ended (see the module's doc). A request extension that
/// `require_session` adds for the handlers that keep a connection open; absent on the daemon's
/// Unix socket, which has no sessions.
#[derive(Clone, Debug)]
pub struct SessionEnd(watch::Receiver<()>);

impl SessionEnd {
    /// Waits until the session ends (at once if it already has).
    pub async fn ended(mut self) {
        // `changed` fails once the sender is dropped; nothing ever sends, so only that wakes it.
        while self.0.changed().await.is_ok() {}
    }
}

/// Waits until `end`'s session ends; forever when there is none (a request on the Unix socket).
pub async fn session_ended(end: Option<SessionEnd>) {
    match end {
        Some(end) => end.ended().await,
        None => std::future::pending().await,
    }
}

/// A live session, as [`Sessions::check`] finds it.
#[derive(Debug)]
pub struct Live {
    /// The token the page sends back in `X-Kestrel-CSRF`.
    pub csrf: String,
    pub end: SessionEnd,
}

/// The live sessions.
#[derive(Default)]
pub struct Sessions {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

/// A new session: the cookie's value and the CSRF token the page sends back.
#[derive(Debug)]
pub struct NewSession {
    pub cookie: String,
    pub csrf: String,
}

impl Sessions {
    pub fn new() -> Sessions {
        Sessions::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session (after a good token).
    pub fn create(&self) -> Result<NewSession, ManagerError> {
        let session = NewSession { cookie: random_b64(32)?, csrf: random_b64(32)? };
        self.insert_at(&session, Instant::now());
        Ok(session)
    }

    fn insert_at(&self, session: &NewSession, now: Instant) {
        let mut entries = self.lock();
        entries.retain(|_, e| now.saturating_duration_since(e.last_used) <= IDLE);
        while entries.len() >= MAX_SESSIONS {
            // A linear scan over at most MAX_SESSIONS, once per login: cheap enough.
            let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| *k) else {
                break;
            };
            entries.remove(&oldest);
        }
        let entry = Entry { csrf: session.csrf.clone(), last_used: now, ended: watch::channel(()).0 };
        entries.insert(digest(&session.cookie), entry);
    }

    /// The live session whose cookie is `cookie` (and marks it used), or `None` (an unknown or
    /// expired session; an expired one is dropped).
    pub fn check(&self, cookie: &str) -> Option<Live> {
        self.check_at(cookie, Instant::now())
    }

    fn check_at(&self, cookie: &str, now: Instant) -> Option<Live> {
        let key = digest(cookie);
        let mut entries = self.lock();
        let entry = entries.get_mut(&key)?;
        if now.saturating_duration_since(entry.last_used) > IDLE {
            entries.remove(&key);
            return None;
        }
        entry.last_used = entry.last_used.max(now);
        Some(Live { csrf: entry.csrf.clone(), end: SessionEnd(entry.ended.subscribe()) })
    }

    /// Drops every session idle for longer than [`IDLE`]; how many. A lookup drops an expired
    /// session too, but only when someone presents it: this ends the connections of one nobody
    /// uses any more.
    pub fn expire(&self) -> usize {
        self.expire_at(Instant::now())
    }

    fn expire_at(&self, now: Instant) -> usize {
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|_, e| now.saturating_duration_since(e.last_used) <= IDLE);
        before - entries.len()
    }

    /// Ends the session of `cookie`; whether there was one.
    pub fn remove(&self, cookie: &str) -> bool {
        self.lock().remove(&digest(cookie)).is_some()
    }

    /// Ends every session; how many there were.
    pub fn clear(&self) -> usize {
        let mut entries = self.lock();
        let count = entries.len();
        entries.clear();
        count
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Failed logins per minute, over all clients: the eleventh failure within a minute of the first
/// is refused (429), and so is every wrong token until that minute ends — a guesser gets 10
/// tries a minute, against 2^256 tokens. A right token always logs in: refusing it too would
/// let anyone who can reach the port lock everybody out with ten bogus tries a minute, and
/// checking it first tells a guesser nothing (a hash lookup).
#[derive(Default)]
pub struct Throttle {
    state: Mutex<ThrottleState>,
}

#[derive(Default)]
struct ThrottleState {
    window_start: Option<Instant>,
    failures: u32,
    /// Whether this window's refusal was logged (once per window, so a flood is one line).
    logged: bool,
}

/// What the throttle says of a login attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused for this many more seconds; `log` is true for the window's first refusal.
    Refused {
        retry_after_secs: u64,
        log: bool,
    },
}

impl Throttle {
    pub fn new() -> Throttle {
        Throttle::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ThrottleState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a wrong token is answered as such (401, and counted) or refused (429) now.
    pub fn verdict(&self) -> Verdict {
        self.verdict_at(Instant::now())
    }

    pub fn verdict_at(&self, now: Instant) -> Verdict {
        let mut state = self.lock();
        let Some(start) = state.window_start else { return Verdict::Allowed };
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= THROTTLE_WINDOW {
            *state = ThrottleState::default();
            return Verdict::Allowed;
        }
        if state.failures < MAX_FAILURES {
            return Verdict::Allowed;
        }
        let log = !std::mem::replace(&mut state.logged, true);
        Verdict::Refused { retry_after_secs: (THROTTLE_WINDOW - elapsed).as_secs().max(1), log }
    }

    /// Counts a failed login.
    pub fn failed(&self) {
        self.failed_at(Instant::now())
    }

    pub fn failed_at(&self, now: Instant) {
        let mut state = self.lock();
        match state.window_start {
            Some(start) if now.saturating_duration_since(start) < THROTTLE_WINDOW => {}
            _ => *state = ThrottleState { window_start: Some(now), ..ThrottleState::default() },
        }
        state.failures = state.failures.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(n: usize) -> NewSession {
        NewSession { cookie: format!("cookie-{n}"), csrf: format!("csrf-{n}") }
    }

    #[test]
    fn a_session_is_found_by_its_cookie_and_ends_when_removed() {
        let sessions = Sessions::new();
        let made = sessions.create().unwrap();
        assert_eq!(made.cookie.len(), 43, "32 bytes in base64url");
        assert_ne!(made.cookie, made.csrf);
        assert_eq!(sessions.check(&made.cookie).map(|live| live.csrf), Some(made.csrf.clone()));
        assert!(sessions.check("not-a-session").is_none());
        assert!(sessions.remove(&made.cookie));
        assert!(sessions.check(&made.cookie).is_none());
        assert!(!sessions.remove(&made.cookie));
    }

    #[test]
    fn an_idle_session_expires_and_use_keeps_it_alive() {
        let sessions = Sessions::new();
        let t0 = Instant::now();
        sessions.insert_at(&session(1), t0);
        sessions.insert_at(&session(2), t0);
        // Session 1 is used 11 h in; both are then checked 12 h 30 min in.
        let used = t0 + Duration::from_secs(11 * 3600);
        assert!(sessions.check_at("cookie-1", used).is_some());
        let later = t0 + IDLE + Duration::from_secs(1800);
        assert_eq!(
            sessions.check_at("cookie-1", later).map(|l| l.csrf),
            Some("csrf-1".into()),
            "used 1.5 h ago"
        );
        assert!(sessions.check_at("cookie-2", later).is_none(), "idle 12.5 h");
        assert_eq!(sessions.len(), 1, "the expired session is dropped");
    }

    /// Whether `end` has fired, without waiting.
    fn has_ended(end: &SessionEnd) -> bool {
        end.0.has_changed().is_err()
    }

    #[test]
    fn whatever_ends_a_session_ends_its_open_connections() {
        let sessions = Sessions::new();
        let t0 = Instant::now();
        for n in 0..4 {
            sessions.insert_at(&session(n), t0);
        }
        let ends: Vec<SessionEnd> =
            (0..4).map(|n| sessions.check_at(&format!("cookie-{n}"), t0).unwrap().end).collect();
        assert!(!ends.iter().any(has_ended));
        // Logout.
        assert!(sessions.remove("cookie-0"));
        assert!(has_ended(&ends[0]) && !has_ended(&ends[1]));
        // Expiry, noticed by the sweep: sessions 2 and 3 were used since, session 1 was not.
        assert!(sessions.check_at("cookie-2", t0 + IDLE).is_some());
        assert!(sessions.check_at("cookie-3", t0 + IDLE).is_some());
        assert_eq!(sessions.expire_at(t0 + IDLE + Duration::from_secs(1)), 1);
        assert!(has_ended(&ends[1]) && !has_ended(&ends[2]));
        // Revocation.
        assert_eq!(sessions.clear(), 2);
        assert!(ends.iter().all(has_ended));
    }

    #[test]
    fn an_evicted_session_ends_its_connections() {
        let sessions = Sessions::new();
        let t0 = Instant::now();
        sessions.insert_at(&session(0), t0);
        let end = sessions.check_at("cookie-0", t0).unwrap().end;
        for n in 1..=MAX_SESSIONS {
            sessions.insert_at(&session(n), t0 + Duration::from_secs(1));
        }
        assert!(sessions.check_at("cookie-0", t0).is_none());
        assert!(has_ended(&end));
    }

    #[tokio::test]
    async fn a_session_end_wakes_its_waiter() {
        let sessions = Sessions::new();
        let made = sessions.create().unwrap();
        let end = sessions.check(&made.cookie).unwrap().end;
        let waiter = tokio::spawn(session_ended(Some(end)));
        sessions.clear();
        tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("woken").unwrap();
    }

    #[test]
    fn past_the_limit_the_least_recently_used_session_goes() {
        let sessions = Sessions::new();
        let t0 = Instant::now();
        for n in 0..MAX_SESSIONS {
            sessions.insert_at(&session(n), t0 + Duration::from_secs(n as u64));
        }
        // Session 0 is the oldest but is used now: session 1 is the least recently used.
        let now = t0 + Duration::from_secs(MAX_SESSIONS as u64);
        assert!(sessions.check_at("cookie-0", now).is_some());
        sessions.insert_at(&session(MAX_SESSIONS), now);
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert!(sessions.check_at("cookie-1", now).is_none());
        assert!(sessions.check_at("cookie-0", now).is_some());
        assert!(sessions.check_at(&format!("cookie-{MAX_SESSIONS}"), now).is_some());
        assert_eq!(sessions.clear(), MAX_SESSIONS);
        assert!(sessions.is_empty());
    }

    #[test]
    fn the_throttle_refuses_the_eleventh_failure_until_the_minute_ends() {
        let throttle = Throttle::new();
        let t0 = Instant::now();
        for n in 0..MAX_FAILURES {
            assert_eq!(throttle.verdict_at(t0 + Duration::from_secs(n as u64)), Verdict::Allowed, "try {n}");
            throttle.failed_at(t0 + Duration::from_secs(n as u64));
        }
        let at = t0 + Duration::from_secs(20);
        assert_eq!(throttle.verdict_at(at), Verdict::Refused { retry_after_secs: 40, log: true });
        assert_eq!(
            throttle.verdict_at(at + Duration::from_secs(10)),
            Verdict::Refused { retry_after_secs: 30, log: false },
            "logged once per window"
        );
        // The window started at the first failure: a minute after it, logins are allowed again.
        assert_eq!(throttle.verdict_at(t0 + THROTTLE_WINDOW), Verdict::Allowed);
        throttle.failed_at(t0 + THROTTLE_WINDOW);
        assert_eq!(throttle.verdict_at(t0 + THROTTLE_WINDOW), Verdict::Allowed, "a fresh window");
    }
}
