//! Policy snapshots in a key-value store, and the per-isolate cache that serves them.
//!
//! The store holds:
//! - `policy/versions/<version>`: a document's canonical JSON, immutable, named by its content hash;
//! - `policy/active`: an [`ActivePointer`] naming the version everyone is served;
//! - `policy/canary` (optional): a [`CanaryPointer`] naming a version for some tenants;
//! - `policy/history`: the admin operations, newest first (see [`crate::admin`]).
//!
//! Versions are written before pointers move, so a reader never finds a pointer to nothing it
//! could not also have found a moment earlier. [`SnapshotCache`] re-reads the pointers at most
//! once per refresh interval, swaps in a new [`Snapshot`] only once every part of it has loaded,
//! compiled and matched its hash, and keeps serving the last good one when the store fails.

use std::cell::RefCell;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind};
use crate::policy::Policy;
use crate::ports::PolicyStore;

/// Key of the active pointer.
pub const ACTIVE: &str = "policy/active";
/// Key of the canary pointer.
pub const CANARY: &str = "policy/canary";
/// Key of the admin history.
pub const HISTORY: &str = "policy/history";

/// Key of the immutable snapshot `version`.
pub fn version_key(version: &str) -> String {
    format!("policy/versions/{version}")
}

/// The version every tenant outside a canary is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivePointer {
    /// The served version.
    pub version: String,
    /// Earlier active versions, newest first: where a rollback goes.
    #[serde(default)]
    pub previous: Vec<String>,
    /// When, by whom and why the pointer was moved.
    #[serde(flatten)]
    pub stamp: Stamp,
}

/// When, by whom and why a pointer was moved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Epoch milliseconds.
    #[serde(default)]
    pub published_at_ms: u64,
    /// An admin key id, token subject or CLI user.
    #[serde(default)]
    pub published_by: String,
    /// The change note.
    #[serde(default)]
    pub note: String,
}

/// A version served to some tenants before everyone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryPointer {
    /// The canary version.
    pub version: String,
    /// Tenants that always get the canary.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Canary groups (the tenants' `canary_group`) that always get the canary.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Share of all other tenants (0–100) that get it, chosen by [`bucket`].
    #[serde(default)]
    pub percent: u8,
    /// When, by whom and why the canary was published.
    #[serde(flatten)]
    pub stamp: Stamp,
}

impl CanaryPointer {
    /// Whether `tenant` (of canary group `group`) is served the canary: listed, in a listed
    /// group, or in the first `percent` buckets.
    pub fn selects(&self, tenant: &str, group: Option<&str>) -> bool {
        self.tenants.iter().any(|t| t == tenant)
            || group.is_some_and(|g| self.groups.iter().any(|x| x == g))
            || bucket(tenant) < self.percent
    }
}

/// A tenant's canary bucket, 0–99: a hash of its id, so the same tenants are chosen in every
/// location and a 5 % canary's tenants are among a later 20 % canary's.
pub fn bucket(tenant: &str) -> u8 {
    let digest = Sha256::digest(tenant.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    // The remainder is below 100, so the cast cannot truncate.
    (u64::from_be_bytes(head) % 100) as u8
}

/// What an isolate serves: the active policy and, during a canary, the canary policy.
#[derive(Debug)]
pub struct Snapshot {
    /// The active policy.
    pub active: Rc<Policy>,
    /// The canary pointer and its policy, if a canary is running.
    pub canary: Option<(CanaryPointer, Rc<Policy>)>,
}

impl Snapshot {
    /// The policy that decides requests of `tenant` (its canary group is the active policy's).
    pub fn for_tenant(&self, tenant: &str) -> &Rc<Policy> {
        match &self.canary {
            Some((pointer, canary)) => {
                let group = self.active.tenant(tenant).and_then(|t| t.canary_group.as_deref());
                if pointer.selects(tenant, group) { canary } else { &self.active }
            }
            None => &self.active,
        }
    }

    fn find(&self, version: &str) -> Option<&Rc<Policy>> {
        std::iter::once(&self.active).chain(self.canary.as_ref().map(|(_, p)| p)).find(|p| p.version == version)
    }
}

/// The snapshot an isolate is serving.
#[derive(Debug, Default)]
pub struct SnapshotCache {
    state: RefCell<Option<(Rc<Snapshot>, u64)>>,
}

impl SnapshotCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The snapshot to serve at `now_ms`, re-reading the pointers if the active policy's refresh
    /// interval has passed. The second value is a refresh failure hidden by serving the last good
    /// snapshot (for telemetry); with no good snapshot to fall back on, the failure is the error.
    pub async fn current<S: PolicyStore>(&self, store: &S, now_ms: u64) -> Result<(Rc<Snapshot>, Option<Error>), Error> {
        let last = self.state.borrow().clone();
        if let Some((snapshot, checked)) = &last
            && now_ms < checked.saturating_add(snapshot.active.refresh_ms())
        {
            return Ok((Rc::clone(snapshot), None));
        }
        let previous = last.as_ref().map(|(s, _)| &**s);
        match load(store, previous).await {
            Ok((snapshot, fault)) => {
                let snapshot = Rc::new(snapshot);
                *self.state.borrow_mut() = Some((Rc::clone(&snapshot), now_ms));
                Ok((snapshot, fault))
            }
            Err(e) => match last {
                Some((snapshot, _)) => {
                    // Try again after another interval rather than on every request.
                    *self.state.borrow_mut() = Some((Rc::clone(&snapshot), now_ms));
                    Ok((snapshot, Some(e)))
                }
                None => Err(e),
            },
        }
    }
}

fn unavailable(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::PolicyUnavailable, message)
}

/// Reads and parses the JSON value under `key`.
pub async fn read_json<S: PolicyStore, T: serde::de::DeserializeOwned>(store: &S, key: &str) -> Result<Option<T>, Error> {
    match store.get(key).await? {
        None => Ok(None),
        Some(raw) => serde_json::from_slice(&raw).map(Some).map_err(|e| unavailable(format!("`{key}` is not valid: {e}"))),
    }
}

/// Loads a whole snapshot, reusing policies `previous` already compiled.
async fn load<S: PolicyStore>(store: &S, previous: Option<&Snapshot>) -> Result<(Snapshot, Option<Error>), Error> {
    // Both pointers at once: one round trip to the store, not two.
    let (active, canary) = futures::join!(read_json::<S, ActivePointer>(store, ACTIVE), read_json::<S, CanaryPointer>(store, CANARY));
    let active = active?.ok_or_else(|| unavailable("no policy has been published"))?;
    let active = fetch_version(store, &active.version, previous).await?;
    let canary = async {
        let Some(pointer) = canary? else { return Ok(None) };
        if pointer.version == active.version {
            return Ok(None);
        }
        let policy = fetch_version(store, &pointer.version, previous).await?;
        Ok::<_, Error>(Some((pointer, policy)))
    };
    match canary.await {
        Ok(canary) => Ok((Snapshot { active, canary }, None)),
        // Keep the previous snapshot whole rather than drop a running canary half way...
        Err(e) if previous.is_some() => Err(e),
        // ...but with nothing to fall back on, serve the active policy alone.
        Err(e) => Ok((Snapshot { active, canary: None }, Some(e))),
    }
}

/// The compiled policy `version`, from `previous` or from the store. The stored document must
/// compile and hash to its own name.
pub async fn fetch_version<S: PolicyStore>(store: &S, version: &str, previous: Option<&Snapshot>) -> Result<Rc<Policy>, Error> {
    if let Some(p) = previous.and_then(|s| s.find(version)) {
        return Ok(Rc::clone(p));
    }
    let raw = store.get(&version_key(version)).await?.ok_or_else(|| unavailable(format!("policy version {version} is missing")))?;
    let policy = Policy::compile(&raw).map_err(|errors| {
        let first = errors.first().map(|e| format!("{}: {}", e.path, e.message)).unwrap_or_default();
        unavailable(format!("policy version {version} does not compile ({first})"))
    })?;
    if policy.version != version {
        return Err(unavailable(format!("policy version {version} does not match its content (hash {})", policy.version)));
    }
    Ok(Rc::new(policy))
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use futures::executor::block_on;

    use super::*;
    use crate::policy::canonical_json;

    #[derive(Default)]
    struct Store {
        map: RefCell<BTreeMap<String, Bytes>>,
        down: Cell<bool>,
        reads: Cell<usize>,
    }

    impl PolicyStore for Store {
        async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
            self.reads.set(self.reads.get() + 1);
            if self.down.get() {
                return Err(Error::new(ErrorKind::StoreUnavailable, "kv down"));
            }
            Ok(self.map.borrow().get(key).cloned())
        }
        async fn put(&self, key: &str, value: Bytes) -> Result<(), Error> {
            self.map.borrow_mut().insert(key.into(), value);
            Ok(())
        }
        async fn delete(&self, key: &str) -> Result<(), Error> {
            self.map.borrow_mut().remove(key);
            Ok(())
        }
    }

    impl Store {
        /// Stores a document with `rpm` as tenant t's limit; returns its version.
        fn version(&self, rpm: u64, refresh: u32) -> String {
            let doc = serde_json::json!({"tenants": [{"id": "t", "limits": {"requests_per_minute": rpm}}],
                                         "settings": {"policy_refresh_seconds": refresh}});
            let version = crate::policy::version_of(&doc);
            self.map.borrow_mut().insert(version_key(&version), Bytes::from(canonical_json(&doc)));
            version
        }
        fn point(&self, key: &str, value: serde_json::Value) {
            self.map.borrow_mut().insert(key.into(), Bytes::from(value.to_string()));
        }
    }

    fn served(cache: &SnapshotCache, store: &Store, now: u64) -> Result<(String, Option<String>, Option<&'static str>), &'static str> {
        block_on(cache.current(store, now))
            .map(|(s, fault)| {
                (s.active.version.clone(), s.canary.as_ref().map(|(_, p)| p.version.clone()), fault.map(|e| e.metric_label()))
            })
            .map_err(|e| e.metric_label())
    }

    #[test]
    fn pointers_select_versions_and_refresh_on_the_interval() {
        let store = Store::default();
        let cache = SnapshotCache::new();
        assert_eq!(served(&cache, &store, 0), Err("policy_unavailable"));
        let v1 = store.version(1, 10);
        store.point(ACTIVE, serde_json::json!({"version": v1}));
        assert_eq!(served(&cache, &store, 0), Ok((v1.clone(), None, None)));

        let v2 = store.version(2, 10);
        store.point(ACTIVE, serde_json::json!({"version": v2, "previous": [v1]}));
        assert_eq!(served(&cache, &store, 9_999), Ok((v1.clone(), None, None)), "within the interval the pointer is not re-read");
        let reads = store.reads.get();
        assert_eq!(served(&cache, &store, 10_000), Ok((v2.clone(), None, None)));
        assert_eq!(store.reads.get() - reads, 3, "pointer, canary pointer, new version");

        store.point(CANARY, serde_json::json!({"version": v1, "tenants": ["t"]}));
        assert_eq!(served(&cache, &store, 20_000), Ok((v2.clone(), Some(v1.clone()), None)));
        let reads = store.reads.get();
        assert_eq!(served(&cache, &store, 30_000), Ok((v2, Some(v1), None)));
        assert_eq!(store.reads.get() - reads, 2, "known versions are not fetched or compiled again");
    }

    #[test]
    fn store_failures_and_bad_snapshots_keep_the_last_good_one() {
        let store = Store::default();
        let cache = SnapshotCache::new();
        let v1 = store.version(1, 0);
        store.point(ACTIVE, serde_json::json!({"version": v1}));
        assert_eq!(served(&cache, &store, 0), Ok((v1.clone(), None, None)));

        store.down.set(true);
        assert_eq!(served(&cache, &store, 1), Ok((v1.clone(), None, Some("store_unavailable"))));
        store.down.set(false);

        store.point(ACTIVE, serde_json::json!({"version": "0123456789abcdef"}));
        assert_eq!(served(&cache, &store, 2), Ok((v1.clone(), None, Some("policy_unavailable"))), "missing version");

        store.map.borrow_mut().insert(version_key("0123456789abcdef"), Bytes::from_static(br#"{"tenants":[]}"#));
        assert_eq!(served(&cache, &store, 3), Ok((v1.clone(), None, Some("policy_unavailable"))), "content does not match its name");

        store.map.borrow_mut().insert(version_key("0123456789abcdef"), Bytes::from_static(b"{broken"));
        assert_eq!(served(&cache, &store, 4), Ok((v1.clone(), None, Some("policy_unavailable"))), "does not compile");

        store.point(ACTIVE, serde_json::json!({"version": v1}));
        store.point(CANARY, serde_json::json!({"version": "0123456789abcdef", "percent": 100}));
        assert_eq!(
            served(&cache, &store, 5),
            Ok((v1.clone(), None, Some("policy_unavailable"))),
            "a broken canary keeps the old snapshot whole"
        );
        let cold = SnapshotCache::new();
        assert_eq!(served(&cold, &store, 5), Ok((v1, None, Some("policy_unavailable"))), "with nothing to keep, active alone is served");
    }

    #[test]
    fn canary_selection_is_by_list_or_stable_bucket() {
        let pointer = |tenants: &[&str], percent| CanaryPointer {
            version: "v".into(),
            tenants: tenants.iter().map(|t| (*t).to_owned()).collect(),
            groups: vec!["beta-testers".into()],
            percent,
            stamp: Stamp::default(),
        };
        let tenants: Vec<String> = (0..1000).map(|i| format!("tenant-{i}")).collect();
        let share = |p: &CanaryPointer| tenants.iter().filter(|t| p.selects(t, None)).count();
        assert_eq!(share(&pointer(&[], 0)), 0);
        assert_eq!(share(&pointer(&[], 100)), 1000);
        let ten = share(&pointer(&[], 10));
        assert!((60..=140).contains(&ten), "about 10% of 1000 tenants, got {ten}");
        assert!(
            tenants.iter().all(|t| !pointer(&[], 5).selects(t, None) || pointer(&[], 20).selects(t, None)),
            "a wider canary keeps its tenants"
        );
        assert!(pointer(&["tenant-1"], 0).selects("tenant-1", None));
        assert!(!pointer(&["tenant-1"], 0).selects("tenant-2", None));
        assert!(pointer(&[], 0).selects("tenant-2", Some("beta-testers")));
        assert!(!pointer(&[], 0).selects("tenant-2", Some("everyone-else")));
        assert_eq!(bucket("acme"), bucket("acme"));
        expect_test::expect!["[72, 99, 63]"].assert_eq(&format!("{:?}", [bucket("acme"), bucket("globex"), bucket("initech")]));
    }
}
