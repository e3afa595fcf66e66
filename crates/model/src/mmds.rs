//! The microVM metadata service's shared state: the data store (`PUT`/`PATCH`/`GET /mmds`) and the
//! session tokens MMDS V2 hands to the guest. One [`MmdsStore`] per VMM, shared by the control
//! thread (the API's requests) and the worker of every network card that answers for MMDS; each
//! holds the lock for one short operation (a JSON merge, a lookup), never across I/O.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::api::MmdsVersion;

/// Firecracker's MMDS address.
pub const DEFAULT_MMDS_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The shortest session token lifetime a guest may ask for, in seconds (Firecracker's).
pub const MIN_TOKEN_TTL_SECONDS: u32 = 1;
/// The longest, in seconds (six hours, Firecracker's and EC2's).
pub const MAX_TOKEN_TTL_SECONDS: u32 = 21_600;
/// The most live tokens kept: a guest asking for more makes the ones closest to expiry go first,
/// so its requests cannot grow the VMM's memory.
pub const MAX_TOKENS: usize = 1024;
/// Firecracker's default `--mmds-size-limit`, in bytes of JSON.
pub const DEFAULT_SIZE_LIMIT: usize = 51_200;
/// Random bytes in a token (shown as twice as many hex digits).
const TOKEN_BYTES: usize = 32;

/// Why a data store request is refused (Firecracker's texts).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MmdsError {
    /// The contents would be larger than `--mmds-size-limit` as JSON.
    #[error("The MMDS patch request doesn't fit.")]
    TooLarge,
    /// `PATCH /mmds` before any `PUT /mmds`.
    #[error("The MMDS data store is not initialized.")]
    NotInitialized,
}

/// Why a guest's `PUT /latest/api/token` gets no token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(
        "Invalid time to live value provided for token: {0}. Please provide a value between \
         {MIN_TOKEN_TTL_SECONDS} and {MAX_TOKEN_TTL_SECONDS}."
    )]
    InvalidTtl(u32),
    #[error("Failed to generate a key")]
    Random,
}

/// How one network card serves MMDS: the address it answers at, the protocol version, and the
/// store (shared by every card of the VM). Saved (and compared) without the store: that is the
/// running VMM's, not the card's configuration.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NetMmds {
    pub address: Ipv4Addr,
    pub version: MmdsVersion,
    /// Plain-text (EC2 IMDS) answers whatever the guest's `Accept` header asks for.
    pub imds_compat: bool,
    #[serde(skip)]
    pub store: MmdsStore,
}

impl PartialEq for NetMmds {
    fn eq(&self, other: &Self) -> bool {
        (self.address, self.version, self.imds_compat) == (other.address, other.version, other.imds_compat)
    }
}
impl Eq for NetMmds {}

/// The data store and the live tokens, behind one lock. Clones share it.
#[derive(Clone, Debug)]
pub struct MmdsStore(Arc<Mutex<Inner>>);

#[derive(Debug)]
struct Inner {
    data: Value,
    initialized: bool,
    limit: usize,
    /// Token → when it expires.
    tokens: HashMap<String, Instant>,
}

/// An empty store with Firecracker's default limit (a restored card's until the VMM gives it its
/// own).
impl Default for MmdsStore {
    fn default() -> MmdsStore {
        MmdsStore::new(DEFAULT_SIZE_LIMIT)
    }
}

impl MmdsStore {
    /// Whether both handles share one store.
    pub fn is_same(&self, other: &MmdsStore) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// An empty (uninitialized) store whose contents may take at most `limit` bytes as JSON.
    pub fn new(limit: usize) -> MmdsStore {
        MmdsStore(Arc::new(Mutex::new(Inner {
            data: Value::Null,
            initialized: false,
            limit,
            tokens: HashMap::new(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every operation leaves the store whole before it can panic, so a poisoned lock's
        // contents are still good.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `PUT /mmds`: the contents become `data`.
    pub fn put(&self, data: Value) -> Result<(), MmdsError> {
        let mut inner = self.lock();
        if json_len(&data) > inner.limit {
            return Err(MmdsError::TooLarge);
        }
        inner.data = data;
        inner.initialized = true;
        Ok(())
    }

    /// `PATCH /mmds`: `patch` merged into the contents (RFC 7396); nothing changes if the result
    /// would not fit.
    pub fn patch(&self, patch: &Value) -> Result<(), MmdsError> {
        let mut inner = self.lock();
        if !inner.initialized {
            return Err(MmdsError::NotInitialized);
        }
        let mut patched = inner.data.clone();
        merge_patch(&mut patched, patch);
        if json_len(&patched) > inner.limit {
            return Err(MmdsError::TooLarge);
        }
        inner.data = patched;
        Ok(())
    }

    /// `GET /mmds`: the contents (`null` before the first `PUT`; the API shows that as `{}`).
    pub fn get(&self) -> Value {
        self.lock().data.clone()
    }

    /// Runs `read` on the contents under the lock (for the guest's lookups, which take a part).
    pub fn read<R>(&self, read: impl FnOnce(&Value) -> R) -> R {
        read(&self.lock().data)
    }

    /// A new session token valid for `ttl_seconds`.
    pub fn issue_token(&self, ttl_seconds: u32) -> Result<String, TokenError> {
        if !(MIN_TOKEN_TTL_SECONDS..=MAX_TOKEN_TTL_SECONDS).contains(&ttl_seconds) {
            return Err(TokenError::InvalidTtl(ttl_seconds));
        }
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes).map_err(|_| TokenError::Random)?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.tokens.len() >= MAX_TOKENS {
            inner.tokens.retain(|_, expiry| *expiry > now);
        }
        if inner.tokens.len() >= MAX_TOKENS {
            let soonest = inner.tokens.iter().min_by_key(|(_, expiry)| **expiry).map(|(t, _)| t.clone());
            if let Some(soonest) = soonest {
                inner.tokens.remove(&soonest);
            }
        }
        inner.tokens.insert(token.clone(), now + Duration::from_secs(ttl_seconds.into()));
        Ok(token)
    }

    /// Whether `token` was issued and has not expired.
    pub fn token_valid(&self, token: &str) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.tokens.get(token) {
            Some(expiry) if *expiry > now => true,
            Some(_) => {
                inner.tokens.remove(token);
                false
            }
            None => false,
        }
    }

    #[cfg(test)]
    fn token_count(&self) -> usize {
        self.lock().tokens.len()
    }
}

/// The length of `value` as compact JSON, counted without building the text.
fn json_len(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // A Value always serializes (its keys are strings); the error branch counts as too large.
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// RFC 7396 JSON merge patch: an object patch merges key by key (`null` removes a key), anything
/// else replaces the target.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.as_str()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Whether guests can be given `address` for MMDS: link-local (169.254.0.0/16) without the
/// first and last /24, which RFC 3927 reserves (Firecracker's rule).
pub fn valid_mmds_address(address: Ipv4Addr) -> bool {
    matches!(address.octets(), [169, 254, third, _] if third != 0 && third != 255)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn put_replaces_patch_merges_and_get_returns_it() {
        let store = MmdsStore::new(1000);
        assert_eq!(store.get(), Value::Null);
        assert_eq!(store.patch(&json!({"a": 1})), Err(MmdsError::NotInitialized));
        store.put(json!({"a": {"b": "c", "d": [1]}, "e": "f"})).unwrap();
        store.patch(&json!({"a": {"b": null, "x": "y"}, "e": {"g": 1}})).unwrap();
        assert_eq!(store.get(), json!({"a": {"d": [1], "x": "y"}, "e": {"g": 1}}));
        store.put(json!({"z": 1})).unwrap();
        assert_eq!(store.get(), json!({"z": 1}));
    }

    #[test]
    fn merge_patch_follows_rfc_7396_examples() {
        for (target, patch, result) in [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "b"}), json!({"b": "c"}), json!({"a": "b", "b": "c"})),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (json!({"a": {"b": "c"}}), json!({"a": {"b": "d", "c": null}}), json!({"a": {"b": "d"}})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"e": null}), json!({"a": 1}), json!({"e": null, "a": 1})),
            (json!([1, 2]), json!({"a": "b", "c": null}), json!({"a": "b"})),
            (json!({}), json!({"a": {"bb": {"ccc": null}}}), json!({"a": {"bb": {}}})),
        ] {
            let mut merged = target.clone();
            merge_patch(&mut merged, &patch);
            assert_eq!(merged, result, "{target} + {patch}");
        }
    }

    #[test]
    fn the_size_limit_counts_json_bytes_and_a_refused_change_changes_nothing() {
        // {"k":"vvvv"} is 12 bytes.
        let store = MmdsStore::new(12);
        store.put(json!({"k": "vvvv"})).unwrap();
        assert_eq!(store.put(json!({"k": "vvvvv"})), Err(MmdsError::TooLarge));
        assert_eq!(store.patch(&json!({"k": "vvvvv"})), Err(MmdsError::TooLarge));
        assert_eq!(store.get(), json!({"k": "vvvv"}));
        assert_eq!(MmdsError::TooLarge.to_string(), "The MMDS patch request doesn't fit.");
    }

    #[test]
    fn tokens_are_random_checked_and_bounded_in_number() {
        let store = MmdsStore::new(100);
        assert_eq!(store.issue_token(0), Err(TokenError::InvalidTtl(0)));
        assert_eq!(store.issue_token(21_601), Err(TokenError::InvalidTtl(21_601)));
        let a = store.issue_token(60).unwrap();
        let b = store.issue_token(MAX_TOKEN_TTL_SECONDS).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(store.token_valid(&a) && store.token_valid(&b));
        assert!(!store.token_valid("not a token"));
        assert!(!store.token_valid(""));
        for _ in 0..MAX_TOKENS + 10 {
            store.issue_token(60).unwrap();
        }
        assert_eq!(store.token_count(), MAX_TOKENS);
        assert!(store.token_valid(&b), "the longest-lived token outlasts a flood of short ones");
    }

    #[test]
    fn an_expired_token_is_refused() {
        let store = MmdsStore::new(100);
        let token = store.issue_token(1).unwrap();
        // Expire it without waiting: move its expiry into the past.
        store.lock().tokens.insert(token.clone(), Instant::now() - Duration::from_millis(1));
        assert!(!store.token_valid(&token));
        assert_eq!(store.token_count(), 0, "an expired token is dropped when seen");
    }

    #[test]
    fn mmds_addresses_are_link_local_outside_the_reserved_ends() {
        assert!(valid_mmds_address(DEFAULT_MMDS_ADDRESS));
        assert!(valid_mmds_address(Ipv4Addr::new(169, 254, 1, 1)));
        assert!(!valid_mmds_address(Ipv4Addr::new(169, 254, 0, 1)));
        assert!(!valid_mmds_address(Ipv4Addr::new(169, 254, 255, 1)));
        assert!(!valid_mmds_address(Ipv4Addr::new(10, 0, 0, 1)));
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            "[a-c]{0,3}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-c]{1,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any PUT and PATCH: the store never holds more than its limit, and what it holds is
        /// the merge when that fits.
        #[test]
        fn the_store_never_exceeds_its_limit(base in json_value(), patch in json_value(), limit in 0usize..200) {
            let store = MmdsStore::new(limit);
            if store.put(base.clone()).is_ok() {
                let mut expected = base.clone();
                merge_patch(&mut expected, &patch);
                match store.patch(&patch) {
                    Ok(()) => prop_assert_eq!(store.get(), expected),
                    Err(_) => prop_assert_eq!(store.get(), base),
                }
            }
            prop_assert!(serde_json::to_vec(&store.get()).unwrap().len() <= limit.max(4));
        }

        /// Patching with a value twice is the same as once (merge patches are idempotent).
        #[test]
        fn merge_patch_is_idempotent(base in json_value(), patch in json_value()) {
            let mut once = base.clone();
            merge_patch(&mut once, &patch);
            let mut twice = once.clone();
            merge_patch(&mut twice, &patch);
            prop_assert_eq!(once, twice);
        }
    }
}
