//! kube (enrich): the watcher tasks that keep the Pod store in sync with the API, through kube's
//! runtime watcher (list, then watch from its resourceVersion, bookmarks, re-list on `410 Gone`),
//! with client-go's reflector backoff between failed attempts
//! (<https://github.com/kubernetes/client-go/blob/master/tools/cache/reflector.go>).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::WatchStreamExt;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, DefaultBackoff, Event};

use super::store::{Shared, State};
use crate::metrics::Metrics;

/// A resource the store caches.
pub(super) trait Watched:
    kube::Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// The `resource` label value.
    const NAME: &'static str;
    const IS_POD: bool;
    fn begin(s: &mut State);
    fn apply(s: &mut State, obj: &Self) -> Option<bool>;
    fn delete(s: &mut State, obj: &Self, now: Instant) -> Option<bool>;
    /// The end of a list: returns how many cached objects it showed gone.
    fn end(s: &mut State, now: Instant) -> usize;
}

impl Watched for Pod {
    const NAME: &'static str = "pods";
    const IS_POD: bool = true;
    fn begin(s: &mut State) {
        s.begin_pods_list();
    }
    fn apply(s: &mut State, obj: &Self) -> Option<bool> {
        s.apply_pod(obj)
    }
    fn delete(s: &mut State, obj: &Self, now: Instant) -> Option<bool> {
        s.delete_pod(obj, now)
    }
    fn end(s: &mut State, now: Instant) -> usize {
        s.end_pods_list(now)
    }
}

impl Watched for Namespace {
    const NAME: &'static str = "namespaces";
    const IS_POD: bool = false;
    fn begin(s: &mut State) {
        s.begin_namespaces_list();
    }
    fn apply(s: &mut State, obj: &Self) -> Option<bool> {
        s.apply_namespace(obj)
    }
    fn delete(s: &mut State, obj: &Self, _now: Instant) -> Option<bool> {
        s.delete_namespace(obj)
    }
    fn end(s: &mut State, _now: Instant) -> usize {
        s.end_namespaces_list()
    }
}

/// kube's default backoff (client-go's: 800 ms doubling to 30 s, each delay stretched by a random
/// 0–100 % so nodes do not retry in step), reset only after two quiet minutes. kube's
/// `StreamBackoff` resets on every `Ok` item, and the watcher yields `Ok(Init)` before each list
/// attempt, so with the reset honoured a failing list would be retried every second for as long
/// as an outage lasts, from every node.
struct QuietResetBackoff(DefaultBackoff);

impl Iterator for QuietResetBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        self.0.next()
    }
}

impl Backoff for QuietResetBackoff {
    fn reset(&mut self) {
        // DefaultBackoff resets itself after two minutes without an error.
    }
}

/// Runs one resource's list/watch until the task is aborted.
pub(super) async fn run<K: Watched>(
    api: kube::Api<K>,
    config: watcher::Config,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
) {
    let stream =
        watcher::watcher(api, config).backoff(QuietResetBackoff(DefaultBackoff::default()));
    let mut stream = std::pin::pin!(stream);
    let mut errors = ErrorLog::default();
    let up = metrics.kube_watch_up.with_label_values(&[K::NAME]);
    let last_sync = metrics.kube_last_sync.with_label_values(&[K::NAME]);
    let event = |t: &str| {
        metrics
            .kube_watch_events
            .with_label_values(&[K::NAME, t])
            .inc()
    };
    while let Some(item) = stream.next().await {
        let now = Instant::now();
        let ok = match item {
            Ok(Event::Init) => {
                metrics.kube_lists.with_label_values(&[K::NAME]).inc();
                shared.write(|s| {
                    K::begin(s);
                    ((), false)
                });
                // A list attempt proves nothing yet: the request may still fail.
                None
            }
            Ok(Event::InitApply(obj)) => {
                event("list");
                Some(apply::<K>(&shared, &metrics, &obj))
            }
            Ok(Event::InitDone) => {
                let gone = shared.write(|s| (K::end(s, now), false));
                if gone > 0 {
                    tracing::info!(
                        resource = K::NAME,
                        gone,
                        "re-list found objects deleted while the watch was down"
                    );
                }
                if shared.listed(K::IS_POD) {
                    tracing::info!("Pod metadata cache synced with the API");
                }
                Some(true)
            }
            Ok(Event::Apply(obj)) => {
                event("apply");
                Some(apply::<K>(&shared, &metrics, &obj))
            }
            Ok(Event::Delete(obj)) => {
                event("delete");
                let valid = shared.write(|s| match K::delete(s, &obj, now) {
                    Some(changed) => (true, changed),
                    None => (false, false),
                });
                if !valid {
                    invalid::<K>(&metrics, &obj);
                }
                Some(true)
            }
            Err(e) => {
                let kind = error_kind(&e);
                metrics
                    .kube_watch_errors
                    .with_label_values(&[K::NAME, kind])
                    .inc();
                errors.failed(K::NAME, kind, &e, now);
                Some(false)
            }
        };
        match ok {
            Some(true) => {
                up.set(1);
                last_sync.set(unix_now());
                errors.recovered(K::NAME);
            }
            Some(false) => up.set(0),
            None => {}
        }
        shared.set_gauges(&metrics);
    }
}

/// Applies an added, modified or listed object; false only for an unusable object.
fn apply<K: Watched>(shared: &Shared, metrics: &Metrics, obj: &K) -> bool {
    let valid = shared.write(|s| match K::apply(s, obj) {
        Some(changed) => (true, changed),
        None => (false, false),
    });
    if !valid {
        invalid::<K>(metrics, obj);
    }
    // The API answered: an unusable object is its problem, not the watch's.
    true
}

fn invalid<K: Watched>(metrics: &Metrics, obj: &K) {
    metrics
        .kube_watch_errors
        .with_label_values(&[K::NAME, "invalid_object"])
        .inc();
    let md = obj.meta();
    tracing::debug!(
        resource = K::NAME,
        name = md.name.as_deref().unwrap_or(""),
        namespace = md.namespace.as_deref().unwrap_or(""),
        "object without uid, name or namespace skipped"
    );
}

fn error_kind(e: &watcher::Error) -> &'static str {
    match e {
        watcher::Error::InitialListFailed(_) => "list",
        watcher::Error::WatchStartFailed(_) => "watch_start",
        watcher::Error::WatchError(s) if s.code == 410 => "gone",
        watcher::Error::WatchError(_) => "watch_status",
        watcher::Error::WatchFailed(_) => "stream",
        watcher::Error::NoResourceVersion => "no_resource_version",
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// At most one warning a minute per resource while its list/watch keeps failing, and one line
/// when it recovers. `410 Gone` is routine (history compacted): info, not warning.
#[derive(Default)]
struct ErrorLog {
    failing_since: Option<Instant>,
    last_warn: Option<Instant>,
    errors: u64,
    suppressed: u64,
}

const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

impl ErrorLog {
    fn failed(&mut self, resource: &str, kind: &str, e: &watcher::Error, now: Instant) {
        self.failing_since.get_or_insert(now);
        self.errors += 1;
        // kube's watcher errors print their source in their message already.
        let error = e.to_string();
        if kind == "gone" && self.errors == 1 {
            tracing::info!(resource, "watch history expired (410 Gone): re-listing");
            return;
        }
        if self
            .last_warn
            .is_some_and(|t| now.duration_since(t) < ERROR_LOG_INTERVAL)
        {
            self.suppressed += 1;
            tracing::debug!(resource, kind, %error, "list/watch failed");
            return;
        }
        tracing::warn!(
            resource,
            kind,
            %error,
            suppressed = self.suppressed,
            "list/watch of the Kubernetes API failed; retrying with backoff, cached metadata stays in use"
        );
        self.last_warn = Some(now);
        self.suppressed = 0;
    }

    fn recovered(&mut self, resource: &str) {
        if let Some(since) = self.failing_since.take() {
            if self.errors > 1 || self.last_warn.is_some() {
                tracing::info!(
                    resource,
                    errors = self.errors,
                    after_secs = since.elapsed().as_secs(),
                    "list/watch of the Kubernetes API recovered"
                );
            }
            *self = ErrorLog::default();
        }
    }
}

/// Passes the readiness condition once the first lists are done, or after `timeout` (then
/// lines of unknown Pods go out with file-name metadata after the metadata wait).
pub(super) async fn readiness(shared: Arc<Shared>, timeout: Duration, metrics: Arc<Metrics>) {
    let mut rx = shared.subscribe();
    let synced = async {
        while !shared.is_synced() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    };
    if tokio::time::timeout(timeout, synced).await.is_err() && shared.mark_synced() {
        tracing::warn!(
            waited_secs = timeout.as_secs_f64(),
            "the first list of Pods is not done yet; going ready without it (lines of Pods not yet known carry file-name metadata after the metadata wait)"
        );
    }
    metrics.readiness.pass(super::READINESS);
}

/// Drops deleted Pods whose grace is over, a few times per grace period.
pub(super) async fn prune(shared: Arc<Shared>, grace: Duration, metrics: Arc<Metrics>) {
    let every = (grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let pruned = shared.write(|s| (s.prune(Instant::now()), false));
        if pruned > 0 {
            shared.set_gauges(&metrics);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_grows_through_an_outage_even_when_reset_is_asked() {
        let mut b = QuietResetBackoff(DefaultBackoff::default());
        let mut delays = Vec::new();
        for _ in 0..6 {
            delays.push(b.next().unwrap());
            // What StreamBackoff does on the watcher's Ok(Init) before each list attempt.
            b.reset();
        }
        // 800 ms doubling, each stretched by up to 100 % jitter, capped at 30 s (+ jitter).
        for (i, d) in delays.iter().enumerate() {
            let base = Duration::from_millis(800) * 2u32.pow(i as u32);
            let base = base.min(Duration::from_secs(30));
            assert!(
                *d >= base && *d <= base * 2,
                "attempt {i}: {d:?} vs base {base:?}"
            );
        }
    }

    #[test]
    fn errors_are_named_by_kind() {
        let gone =
            kube::core::Status::failure("too old resource version", "Expired").with_code(410);
        assert_eq!(
            error_kind(&watcher::Error::WatchError(Box::new(gone))),
            "gone"
        );
        let other = kube::core::Status::failure("boom", "InternalError").with_code(500);
        assert_eq!(
            error_kind(&watcher::Error::WatchError(Box::new(other))),
            "watch_status"
        );
        assert_eq!(
            error_kind(&watcher::Error::NoResourceVersion),
            "no_resource_version"
        );
    }
}
