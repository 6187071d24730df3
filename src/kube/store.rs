//! kube (enrich): the compact Pod metadata cache, keyed by Pod UID, that the watcher fills and the
//! tailer reads. Keyed by UID, never by name: a Pod re-created under the same name (a StatefulSet's)
//! is another Pod. Static Pods, whose log directory carries their manifest's hash, are found
//! through their mirror Pod's `kubernetes.io/config.mirror` annotation. Deleted Pods stay for a
//! grace period in a bounded LRU, so files found after the deletion are still enriched.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use lru::LruCache;

use super::meta::{AnnotationFilter, NamespaceMeta, PodKey, pod_meta};
use crate::metrics::Metrics;
use crate::record::PodMeta;

/// The Pod metadata cache. Cheap to clone (one `Arc`); `Send + Sync`; readers never wait on the
/// API, only (briefly) on the watcher applying an event.
#[derive(Clone, Default)]
pub struct PodStore {
    shared: Option<Arc<Shared>>,
    /// Stops the watcher tasks when the last clone goes.
    _tasks: Option<Arc<TaskGuard>>,
}

impl std::fmt::Debug for PodStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodStore")
            .field("enabled", &self.is_enabled())
            .field("generation", &self.generation())
            .field("synced", &self.is_synced())
            .finish()
    }
}

impl PodStore {
    /// No API: records carry the file-name metadata only.
    pub fn disabled() -> PodStore {
        PodStore::default()
    }

    pub fn is_enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Metadata of the Pod whose log directory carries `uid`: the API UID, or for a static Pod the
    /// config hash its mirror Pod's annotation carries. Deleted Pods are found within their grace.
    pub fn get(&self, uid: &str) -> Option<Arc<PodMeta>> {
        self.shared.as_ref()?.read().get(uid, Instant::now())
    }

    /// Bumped on every change that `get` could tell; compare it once per read round.
    pub fn generation(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| s.generation.load(Ordering::Acquire))
    }

    /// True once the first list is done (or the bounded wait for it is over). Always true when
    /// disabled.
    pub fn is_synced(&self) -> bool {
        self.shared
            .as_ref()
            .is_none_or(|s| s.synced.load(Ordering::Acquire))
    }

    /// Waits until [`is_synced`](Self::is_synced).
    pub async fn synced(&self) {
        let Some(shared) = &self.shared else { return };
        let mut rx = shared.changed.subscribe();
        // The value is the generation; readiness changes send too, so re-check on every change.
        while !self.is_synced() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits up to `timeout` for the Pod to be known; for tests and for callers on the runtime.
    pub async fn wait_for(&self, uid: &str, timeout: Duration) -> Option<Arc<PodMeta>> {
        let shared = self.shared.as_ref()?;
        let mut rx = shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(m) = self.get(uid) {
                return Some(m);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.get(uid),
            }
        }
    }

    pub(super) fn enabled(shared: Arc<Shared>, tasks: TaskGuard) -> PodStore {
        PodStore {
            shared: Some(shared),
            _tasks: Some(Arc::new(tasks)),
        }
    }
}

/// Aborts the watcher tasks when dropped.
pub(super) struct TaskGuard(pub(super) Vec<tokio::task::AbortHandle>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// What the watcher tasks and the readers share.
pub(super) struct Shared {
    state: RwLock<State>,
    generation: AtomicU64,
    synced: AtomicBool,
    pods_listed: AtomicBool,
    namespaces_listed: AtomicBool,
    /// Sends the generation on every change (and on readiness changes) to async waiters.
    changed: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    pub(super) fn new(
        filter: AnnotationFilter,
        grace: Duration,
        max_deleted: usize,
        watch_namespaces: bool,
    ) -> Shared {
        Shared {
            state: RwLock::new(State::new(filter, grace, max_deleted)),
            generation: AtomicU64::new(0),
            synced: AtomicBool::new(false),
            pods_listed: AtomicBool::new(false),
            namespaces_listed: AtomicBool::new(!watch_namespaces),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while applying one event must not take enrichment down with it.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one change under the write lock, bumping the generation inside the lock when it
    /// changed what readers see (so a reader that sees the new generation sees the new state).
    pub(super) fn write<R>(&self, f: impl FnOnce(&mut State) -> (R, bool)) -> R {
        let mut guard: RwLockWriteGuard<'_, State> =
            self.state.write().unwrap_or_else(|e| e.into_inner());
        let (r, changed) = f(&mut guard);
        if changed {
            let g = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
            drop(guard);
            self.changed.send_replace(g);
        }
        r
    }

    pub(super) fn set_gauges(&self, metrics: &Metrics) {
        let s = self.read();
        metrics.kube_pods_cached.set(gauge(s.pods.len()));
        metrics
            .kube_namespaces_cached
            .set(gauge(s.namespaces.len()));
        metrics
            .kube_deleted_pods_retained
            .set(gauge(s.deleted.len()));
    }

    /// Records that a first list is complete; returns true when this made the store synced.
    pub(super) fn listed(&self, pods: bool) -> bool {
        let flag = if pods {
            &self.pods_listed
        } else {
            &self.namespaces_listed
        };
        flag.store(true, Ordering::Release);
        if self.pods_listed.load(Ordering::Acquire)
            && self.namespaces_listed.load(Ordering::Acquire)
        {
            return self.mark_synced();
        }
        false
    }

    /// Marks the store synced (first list done, or the wait for it over); true if it was not.
    pub(super) fn mark_synced(&self) -> bool {
        let was = self.synced.swap(true, Ordering::AcqRel);
        if !was {
            self.changed
                .send_replace(self.generation.load(Ordering::Acquire));
        }
        !was
    }

    pub(super) fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub(super) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

struct LivePod {
    meta: Arc<PodMeta>,
    config_hash: Option<String>,
}

struct DeletedPod {
    meta: Arc<PodMeta>,
    config_hash: Option<String>,
    until: Instant,
}

/// The cache proper. Methods return whether readers can see a difference.
pub(super) struct State {
    filter: AnnotationFilter,
    grace: Duration,
    pods: HashMap<String, LivePod>,
    /// Static Pods: config hash → the mirror Pod's UID.
    by_hash: HashMap<String, String>,
    deleted: LruCache<String, DeletedPod>,
    deleted_by_hash: HashMap<String, String>,
    namespaces: HashMap<String, NamespaceMeta>,
    /// During a (re-)list, the UIDs and names seen so far; what was not seen is gone.
    pods_relist: Option<HashSet<String>>,
    namespaces_relist: Option<HashSet<String>>,
}

impl State {
    pub(super) fn new(filter: AnnotationFilter, grace: Duration, max_deleted: usize) -> State {
        State {
            filter,
            grace,
            pods: HashMap::new(),
            by_hash: HashMap::new(),
            deleted: LruCache::new(NonZeroUsize::new(max_deleted).unwrap_or(NonZeroUsize::MIN)),
            deleted_by_hash: HashMap::new(),
            namespaces: HashMap::new(),
            pods_relist: None,
            namespaces_relist: None,
        }
    }

    pub(super) fn get(&self, uid: &str, now: Instant) -> Option<Arc<PodMeta>> {
        let live = self
            .pods
            .get(uid)
            .or_else(|| self.by_hash.get(uid).and_then(|u| self.pods.get(u)));
        if let Some(p) = live {
            return Some(p.meta.clone());
        }
        let deleted = self.deleted.peek(uid).or_else(|| {
            self.deleted_by_hash
                .get(uid)
                .and_then(|u| self.deleted.peek(u))
        });
        deleted.filter(|d| d.until > now).map(|d| d.meta.clone())
    }

    /// An added or modified Pod (or one seen in a list). `None` when the object is unusable.
    pub(super) fn apply_pod(&mut self, pod: &Pod) -> Option<bool> {
        let ns = pod
            .metadata
            .namespace
            .as_deref()
            .and_then(|n| self.namespaces.get(n));
        let (PodKey { uid, config_hash }, meta) = pod_meta(pod, &self.filter, ns)?;
        if let Some(seen) = &mut self.pods_relist {
            seen.insert(uid.clone());
        }
        let revived = self.forget_deleted(&uid);
        if let Some(hash) = &config_hash {
            self.by_hash.insert(hash.clone(), uid.clone());
        }
        match self.pods.get_mut(&uid) {
            Some(live) if *live.meta == meta && live.config_hash == config_hash => Some(false),
            Some(live) => {
                if live.config_hash != config_hash
                    && let Some(old) = live.config_hash.take()
                    && self.by_hash.get(&old) == Some(&uid)
                {
                    self.by_hash.remove(&old);
                }
                live.meta = Arc::new(meta);
                live.config_hash = config_hash;
                Some(true)
            }
            None => {
                // A Pod back from the deleted set keeps its Arc when nothing changed.
                let meta = match revived {
                    Some(d) if *d.meta == meta => d.meta,
                    _ => Arc::new(meta),
                };
                self.pods.insert(uid, LivePod { meta, config_hash });
                Some(true)
            }
        }
    }

    /// A deleted Pod: its metadata moves to the deleted set for the grace period.
    pub(super) fn delete_pod(&mut self, pod: &Pod, now: Instant) -> Option<bool> {
        let ns = pod
            .metadata
            .namespace
            .as_deref()
            .and_then(|n| self.namespaces.get(n));
        let (key, meta) = pod_meta(pod, &self.filter, ns)?;
        let live = self.pods.remove(&key.uid).unwrap_or_else(|| LivePod {
            meta: Arc::new(meta),
            config_hash: key.config_hash,
        });
        Some(self.retire(key.uid, live, now))
    }

    fn retire(&mut self, uid: String, live: LivePod, now: Instant) -> bool {
        if let Some(hash) = &live.config_hash {
            if self.by_hash.get(hash) == Some(&uid) {
                self.by_hash.remove(hash);
            }
            self.deleted_by_hash.insert(hash.clone(), uid.clone());
        }
        let entry = DeletedPod {
            meta: live.meta,
            config_hash: live.config_hash,
            until: now + self.grace,
        };
        if let Some((evicted_uid, evicted)) = self.deleted.push(uid.clone(), entry)
            && evicted_uid != uid
        {
            self.unlink_deleted_hash(&evicted_uid, evicted.config_hash.as_deref());
        }
        // A static Pod whose mirror was re-created is found under its hash again: no change.
        false
    }

    fn forget_deleted(&mut self, uid: &str) -> Option<DeletedPod> {
        let d = self.deleted.pop(uid)?;
        self.unlink_deleted_hash(uid, d.config_hash.as_deref());
        Some(d)
    }

    fn unlink_deleted_hash(&mut self, uid: &str, hash: Option<&str>) {
        if let Some(h) = hash
            && self.deleted_by_hash.get(h).is_some_and(|u| u == uid)
        {
            self.deleted_by_hash.remove(h);
        }
    }

    /// Drops deleted Pods whose grace is over. Entries expire in deletion order (one grace for
    /// all, and `peek` never reorders), so the least recent end is where they are.
    pub(super) fn prune(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some((_, d)) = self.deleted.peek_lru() {
            if d.until > now {
                break;
            }
            if let Some((uid, d)) = self.deleted.pop_lru() {
                self.unlink_deleted_hash(&uid, d.config_hash.as_deref());
                n += 1;
            }
        }
        n
    }

    pub(super) fn begin_pods_list(&mut self) {
        self.pods_relist = Some(HashSet::new());
    }

    /// The end of a (re-)list: Pods not in it were deleted while we were not watching.
    pub(super) fn end_pods_list(&mut self, now: Instant) -> usize {
        let Some(seen) = self.pods_relist.take() else {
            return 0;
        };
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|uid| !seen.contains(*uid))
            .cloned()
            .collect();
        for uid in &gone {
            if let Some(live) = self.pods.remove(uid) {
                self.retire(uid.clone(), live, now);
            }
        }
        gone.len()
    }

    /// An added or modified Namespace: its Pods' metadata is rebuilt when its labels or
    /// `loglet.io/` annotations changed. Returns whether any Pod changed.
    pub(super) fn apply_namespace(&mut self, ns: &Namespace) -> Option<bool> {
        let name = ns.metadata.name.clone()?;
        if let Some(seen) = &mut self.namespaces_relist {
            seen.insert(name.clone());
        }
        let meta = NamespaceMeta::from_namespace(ns);
        if self.namespaces.get(&name) == Some(&meta) {
            return Some(false);
        }
        let mut changed = false;
        for live in self.pods.values_mut() {
            if live.meta.namespace != name {
                continue;
            }
            if live.meta.namespace_labels == meta.labels
                && live.meta.namespace_loglet_annotations == meta.loglet_annotations
            {
                continue;
            }
            let mut m = PodMeta::clone(&live.meta);
            m.namespace_labels = meta.labels.clone();
            m.namespace_loglet_annotations = meta.loglet_annotations.clone();
            live.meta = Arc::new(m);
            changed = true;
        }
        self.namespaces.insert(name, meta);
        Some(changed)
    }

    /// A deleted Namespace. Its Pods (being deleted too) keep the labels they had.
    pub(super) fn delete_namespace(&mut self, ns: &Namespace) -> Option<bool> {
        let name = ns.metadata.name.as_deref()?;
        self.namespaces.remove(name);
        Some(false)
    }

    pub(super) fn begin_namespaces_list(&mut self) {
        self.namespaces_relist = Some(HashSet::new());
    }

    pub(super) fn end_namespaces_list(&mut self) -> usize {
        let Some(seen) = self.namespaces_relist.take() else {
            return 0;
        };
        let before = self.namespaces.len();
        self.namespaces.retain(|name, _| seen.contains(name));
        before - self.namespaces.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    const GRACE: Duration = Duration::from_secs(60);

    fn map(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn pod(ns: &str, name: &str, uid: &str, labels: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                uid: Some(uid.into()),
                labels: map(labels),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: map(labels),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }
    }

    fn state(max_deleted: usize) -> State {
        State::new(AnnotationFilter::default(), GRACE, max_deleted)
    }

    #[test]
    fn pods_are_found_by_uid_and_an_unchanged_pod_keeps_its_arc() {
        let mut s = state(8);
        let now = Instant::now();
        assert_eq!(
            s.apply_pod(&pod("a", "web", "u1", &[("app", "web")])),
            Some(true)
        );
        let first = s.get("u1", now).unwrap();
        assert_eq!(first.name, "web");
        assert_eq!(
            s.apply_pod(&pod("a", "web", "u1", &[("app", "web")])),
            Some(false)
        );
        assert!(Arc::ptr_eq(&first, &s.get("u1", now).unwrap()));
        assert_eq!(
            s.apply_pod(&pod("a", "web", "u1", &[("app", "v2")])),
            Some(true)
        );
        assert_eq!(s.get("u1", now).unwrap().labels[0].1, "v2");
        assert!(s.get("web", now).is_none(), "never by name");
    }

    #[test]
    fn a_pod_recreated_under_the_same_name_never_takes_the_old_ones_metadata() {
        let mut s = state(8);
        let now = Instant::now();
        s.apply_pod(&pod("db", "db-0", "old", &[("rev", "1")]));
        s.delete_pod(&pod("db", "db-0", "old", &[("rev", "1")]), now);
        s.apply_pod(&pod("db", "db-0", "new", &[("rev", "2")]));
        assert_eq!(s.get("old", now).unwrap().labels[0].1, "1");
        assert_eq!(s.get("new", now).unwrap().labels[0].1, "2");
        assert_eq!(s.get("new", now).unwrap().uid, "new");
    }

    #[test]
    fn deleted_pods_stay_for_the_grace_period_then_go() {
        let mut s = state(8);
        let t0 = Instant::now();
        s.apply_pod(&pod("a", "job-x", "u1", &[]));
        assert_eq!(s.delete_pod(&pod("a", "job-x", "u1", &[]), t0), Some(false));
        assert!(s.get("u1", t0 + GRACE - Duration::from_millis(1)).is_some());
        assert!(
            s.get("u1", t0 + GRACE).is_none(),
            "expired entries are hidden before pruning"
        );
        assert_eq!(s.prune(t0 + GRACE / 2), 0);
        assert_eq!(s.prune(t0 + GRACE), 1);
        assert_eq!(s.deleted.len(), 0);
    }

    #[test]
    fn the_deleted_set_is_bounded_by_its_lru() {
        let mut s = state(2);
        let now = Instant::now();
        for uid in ["u1", "u2", "u3"] {
            s.apply_pod(&pod("a", uid, uid, &[]));
            s.delete_pod(&pod("a", uid, uid, &[]), now);
        }
        assert!(
            s.get("u1", now).is_none(),
            "the oldest deletion was evicted"
        );
        assert!(s.get("u2", now).is_some() && s.get("u3", now).is_some());
    }

    #[test]
    fn a_relist_retires_pods_it_no_longer_contains() {
        let mut s = state(8);
        let now = Instant::now();
        s.apply_pod(&pod("a", "p1", "u1", &[]));
        s.apply_pod(&pod("a", "p2", "u2", &[]));
        s.begin_pods_list();
        s.apply_pod(&pod("a", "p2", "u2", &[]));
        s.apply_pod(&pod("a", "p3", "u3", &[]));
        assert_eq!(s.end_pods_list(now), 1);
        assert!(!s.pods.contains_key("u1"));
        assert!(s.get("u1", now).is_some(), "retired, within its grace");
        assert!(s.pods.contains_key("u2") && s.pods.contains_key("u3"));
    }

    #[test]
    fn a_deleted_pod_seen_again_comes_back_with_the_same_arc() {
        let mut s = state(8);
        let now = Instant::now();
        s.apply_pod(&pod("a", "p1", "u1", &[]));
        let before = s.get("u1", now).unwrap();
        s.delete_pod(&pod("a", "p1", "u1", &[]), now);
        s.apply_pod(&pod("a", "p1", "u1", &[]));
        assert!(Arc::ptr_eq(&before, &s.get("u1", now).unwrap()));
        assert_eq!(s.deleted.len(), 0);
    }

    #[test]
    fn static_pods_are_found_by_config_hash_alive_and_deleted() {
        let mut s = state(8);
        let now = Instant::now();
        let mut mirror = pod("kube-system", "etcd-node-a", "mirror-uid", &[]);
        mirror.metadata.annotations = map(&[("kubernetes.io/config.mirror", "abc123")]);
        s.apply_pod(&mirror);
        assert_eq!(s.get("abc123", now).unwrap().uid, "mirror-uid");
        s.delete_pod(&mirror, now);
        assert_eq!(s.get("abc123", now).unwrap().uid, "mirror-uid");
        // The kubelet re-creates a deleted mirror Pod under a new UID.
        let mut again = mirror.clone();
        again.metadata.uid = Some("mirror-uid-2".into());
        s.apply_pod(&again);
        assert_eq!(s.get("abc123", now).unwrap().uid, "mirror-uid-2");
        s.prune(now + GRACE);
        assert_eq!(s.get("abc123", now).unwrap().uid, "mirror-uid-2");
    }

    #[test]
    fn namespace_labels_are_folded_into_its_pods_and_rebuilt_on_change() {
        let mut s = state(8);
        let now = Instant::now();
        s.apply_pod(&pod("shop", "web", "u1", &[]));
        s.apply_pod(&pod("other", "x", "u2", &[]));
        let other = s.get("u2", now).unwrap();
        assert_eq!(
            s.apply_namespace(&namespace("shop", &[("team", "a")])),
            Some(true)
        );
        assert_eq!(s.get("u1", now).unwrap().namespace_labels[0].1, "a");
        assert_eq!(
            s.apply_namespace(&namespace("shop", &[("team", "a")])),
            Some(false)
        );
        assert_eq!(
            s.apply_namespace(&namespace("shop", &[("team", "b")])),
            Some(true)
        );
        assert_eq!(s.get("u1", now).unwrap().namespace_labels[0].1, "b");
        assert!(
            Arc::ptr_eq(&other, &s.get("u2", now).unwrap()),
            "other namespaces untouched"
        );
        // A Pod that arrives after its Namespace gets the labels at once.
        s.apply_pod(&pod("shop", "api", "u3", &[]));
        assert_eq!(s.get("u3", now).unwrap().namespace_labels[0].1, "b");
        s.begin_namespaces_list();
        assert_eq!(s.end_namespaces_list(), 1);
        assert!(s.namespaces.is_empty());
    }
}
