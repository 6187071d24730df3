//! kube (enrich): the Pod metadata store against a fake API server, through the library API
//! (`loglet::kube::start`): what records will carry, and how the watcher behaves when the API
//! drops watches, answers `410 Gone`, fails or goes away (recovery, bounded requests, backoff).

#[path = "common/fake_api.rs"]
mod fake_api;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_api::{FakeApi, Resource, Verb, namespace, owned_by, pod, with_annotations, with_labels};
use loglet::config::{Dur, KubernetesConfig, KubernetesEnabled};
use loglet::kube::PodStore;
use loglet::metrics::Metrics;

const NODE: &str = "node-a";

struct Harness {
    api: FakeApi,
    store: PodStore,
    metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

fn config(api: &FakeApi, dir: &tempfile::TempDir) -> KubernetesConfig {
    KubernetesConfig {
        kubeconfig: Some(api.write_kubeconfig(dir.path())),
        ..KubernetesConfig::default()
    }
}

/// Starts the store against `api` and waits for its first list.
async fn start(api: FakeApi, tweak: impl FnOnce(&mut KubernetesConfig)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&api, &dir);
    tweak(&mut cfg);
    let metrics = Metrics::new();
    let store = loglet::kube::start(&cfg, Some(NODE.into()), metrics.clone()).await;
    assert!(store.is_enabled());
    tokio::time::timeout(Duration::from_secs(10), store.synced())
        .await
        .expect("the first list completes");
    Harness {
        api,
        store,
        metrics,
        _dir: dir,
    }
}

/// Polls `check` every 20 ms until it holds, for at most `limit`.
async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of one series, read from the Prometheus text exposition (0 when absent).
fn metric(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in metrics.render().lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = series.split_once('{').unwrap_or((series, ""));
        if n == name
            && labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        {
            return value.parse().unwrap_or(f64::NAN);
        }
    }
    0.0
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, n)| (k.to_string(), n.to_string()))
        .collect()
}

fn kind_name(k: &str, n: &str) -> Option<(String, String)> {
    Some((k.to_string(), n.to_string()))
}

#[tokio::test]
async fn records_get_labels_owner_workload_and_namespace_labels_from_a_cached_list() {
    let api = FakeApi::start().await;
    api.apply_namespace(&namespace("shop", &[("team", "payments")]));
    api.apply_pod(&owned_by(
        with_labels(
            pod("shop", "web-5d8f9c7b4-x2x9q", "uid-web", NODE),
            &[("app", "web"), ("pod-template-hash", "5d8f9c7b4")],
        ),
        "ReplicaSet",
        "web-5d8f9c7b4",
    ));
    api.apply_pod(&owned_by(
        pod("shop", "db-0", "uid-db", NODE),
        "StatefulSet",
        "db",
    ));
    api.apply_pod(&owned_by(
        pod("shop", "agent-x1", "uid-ds", NODE),
        "DaemonSet",
        "agent",
    ));
    api.apply_pod(&owned_by(
        pod("shop", "report-29016480-abcde", "uid-cron", NODE),
        "Job",
        "report-29016480",
    ));
    api.apply_pod(&owned_by(
        pod("shop", "migrate-q7", "uid-job", NODE),
        "Job",
        "migrate",
    ));
    api.apply_pod(&pod("shop", "elsewhere", "uid-other-node", "node-b"));

    let h = start(api, |c| c.annotations = vec!["team.example.com/*".into()]).await;
    let web = h
        .store
        .get("uid-web")
        .expect("the Deployment's Pod is cached");
    assert_eq!(web.namespace, "shop");
    assert_eq!(web.name, "web-5d8f9c7b4-x2x9q");
    assert_eq!(web.node_name.as_deref(), Some(NODE));
    assert_eq!(
        web.labels,
        pairs(&[("app", "web"), ("pod-template-hash", "5d8f9c7b4")])
    );
    assert_eq!(
        web.namespace_labels,
        pairs(&[
            ("kubernetes.io/metadata.name", "shop"),
            ("team", "payments")
        ])
    );
    assert_eq!(web.owner, kind_name("ReplicaSet", "web-5d8f9c7b4"));
    assert_eq!(web.workload, kind_name("Deployment", "web"));
    let app = web.container("app").unwrap();
    assert_eq!(app.image.as_deref(), Some("example/app:1"));
    assert_eq!(app.container_id.as_deref(), Some("uid-web-app"));
    for (uid, workload) in [
        ("uid-db", kind_name("StatefulSet", "db")),
        ("uid-ds", kind_name("DaemonSet", "agent")),
        ("uid-cron", kind_name("CronJob", "report")),
        ("uid-job", kind_name("Job", "migrate")),
    ] {
        assert_eq!(h.store.get(uid).unwrap().workload, workload, "{uid}");
    }
    assert!(
        h.store.get("uid-other-node").is_none(),
        "only this node's Pods"
    );

    // One list and one watch per resource, lists from the watch cache, bookmarks on.
    let reqs = h.api.requests();
    let pod_lists: Vec<_> = reqs
        .iter()
        .filter(|r| r.is(Verb::List, Resource::Pods))
        .collect();
    assert_eq!(pod_lists.len(), 1, "{reqs:#?}");
    assert_eq!(pod_lists[0].resource_version.as_deref(), Some("0"));
    assert_eq!(
        pod_lists[0].param("fieldSelector"),
        Some("spec.nodeName=node-a")
    );
    assert_eq!(h.api.count(Verb::List, Resource::Namespaces), 1);
    eventually("both watches", Duration::from_secs(5), || {
        h.api.count(Verb::Watch, Resource::Pods) == 1
            && h.api.count(Verb::Watch, Resource::Namespaces) == 1
    })
    .await;
    let watch = h
        .api
        .requests()
        .into_iter()
        .find(|r| r.is(Verb::Watch, Resource::Pods))
        .unwrap();
    assert_eq!(watch.param("allowWatchBookmarks"), Some("true"));
    assert_eq!(watch.param("fieldSelector"), Some("spec.nodeName=node-a"));
    assert!(h.metrics.readiness.failing().is_empty());
    assert_eq!(metric(&h.metrics, "loglet_kube_pods_cached", &[]), 5.0);
    assert_eq!(
        metric(&h.metrics, "loglet_kube_namespaces_cached", &[]),
        1.0
    );
    assert_eq!(
        metric(
            &h.metrics,
            "loglet_kube_watch_events_total",
            &[("resource", "pods"), ("type", "list")]
        ),
        5.0
    );
}

#[tokio::test]
async fn a_pod_added_later_appears_and_namespace_label_changes_reach_its_pods() {
    let api = FakeApi::start().await;
    api.apply_namespace(&namespace("shop", &[("team", "a")]));
    let h = start(api, |_| {}).await;
    assert!(h.store.get("uid-late").is_none());
    let g0 = h.store.generation();
    h.api.apply_pod(&with_labels(
        pod("shop", "late", "uid-late", NODE),
        &[("app", "late")],
    ));
    let late = h
        .store
        .wait_for("uid-late", Duration::from_secs(5))
        .await
        .expect("a Pod added after the start is picked up");
    assert_eq!(late.labels, pairs(&[("app", "late")]));
    assert!(h.store.generation() > g0);

    let g1 = h.store.generation();
    h.api.apply_namespace(&namespace("shop", &[("team", "b")]));
    eventually("namespace labels rebuilt", Duration::from_secs(5), || {
        h.store
            .get("uid-late")
            .is_some_and(|m| m.namespace_labels.contains(&("team".into(), "b".into())))
    })
    .await;
    assert!(h.store.generation() > g1);

    // A status-only change (what most MODIFIED events are) keeps the same Arc.
    let before = h.store.get("uid-late").unwrap();
    let mut p = with_labels(pod("shop", "late", "uid-late", NODE), &[("app", "late")]);
    p.status.as_mut().unwrap().phase = Some("Succeeded".into());
    h.api.apply_pod(&p);
    eventually("the modification seen", Duration::from_secs(5), || {
        metric(
            &h.metrics,
            "loglet_kube_watch_events_total",
            &[("resource", "pods"), ("type", "apply")],
        ) >= 2.0
    })
    .await;
    assert!(Arc::ptr_eq(&before, &h.store.get("uid-late").unwrap()));
}

#[tokio::test]
async fn a_deleted_pod_stays_for_the_grace_period_then_goes() {
    let api = FakeApi::start().await;
    api.apply_pod(&pod("batch", "job-1-xyz", "uid-job", NODE));
    let h = start(api, |c| {
        c.deleted_pod_grace = Dur(Duration::from_millis(600))
    })
    .await;
    assert!(h.store.get("uid-job").is_some());
    h.api.delete_pod("batch", "job-1-xyz");
    eventually("the delete event", Duration::from_secs(5), || {
        metric(
            &h.metrics,
            "loglet_kube_watch_events_total",
            &[("resource", "pods"), ("type", "delete")],
        ) == 1.0
    })
    .await;
    let deleted_at = Instant::now();
    assert_eq!(
        h.store.get("uid-job").unwrap().name,
        "job-1-xyz",
        "kept within the grace"
    );
    assert_eq!(metric(&h.metrics, "loglet_kube_pods_cached", &[]), 0.0);
    assert_eq!(
        metric(&h.metrics, "loglet_kube_deleted_pods_retained", &[]),
        1.0
    );
    eventually("the grace to end", Duration::from_secs(5), || {
        h.store.get("uid-job").is_none()
    })
    .await;
    assert!(
        deleted_at.elapsed() >= Duration::from_millis(500),
        "not before the grace"
    );
    eventually("the pruning", Duration::from_secs(5), || {
        metric(&h.metrics, "loglet_kube_deleted_pods_retained", &[]) == 0.0
    })
    .await;
}

#[tokio::test]
async fn a_statefulset_pod_recreated_under_the_same_name_never_mixes_with_the_old_one() {
    let api = FakeApi::start().await;
    api.apply_pod(&owned_by(
        with_labels(pod("db", "db-0", "uid-old", NODE), &[("rev", "1")]),
        "StatefulSet",
        "db",
    ));
    let h = start(api, |_| {}).await;
    h.api.delete_pod("db", "db-0");
    let recreated = fake_api::with_containers(
        with_labels(pod("db", "db-0", "uid-new", NODE), &[("rev", "2")]),
        &[("app", "example/app:2"), ("backup", "example/backup:1")],
    );
    h.api.apply_pod(&owned_by(recreated, "StatefulSet", "db"));
    let new = h
        .store
        .wait_for("uid-new", Duration::from_secs(5))
        .await
        .unwrap();
    let old = h
        .store
        .get("uid-old")
        .expect("the old Pod within its grace");
    assert_eq!(
        (old.uid.as_str(), old.labels[0].1.as_str()),
        ("uid-old", "1")
    );
    assert_eq!(
        (new.uid.as_str(), new.labels[0].1.as_str()),
        ("uid-new", "2")
    );
    assert_eq!(
        new.container("app").unwrap().container_id.as_deref(),
        Some("uid-new-app")
    );
}

#[tokio::test]
async fn a_static_pod_is_found_by_the_config_hash_in_its_mirror_annotation() {
    let api = FakeApi::start().await;
    api.apply_pod(&owned_by(
        with_annotations(
            with_labels(
                pod("kube-system", "etcd-node-a", "uid-mirror", NODE),
                &[("component", "etcd")],
            ),
            &[
                ("kubernetes.io/config.hash", "5a1b2c3d4e"),
                ("kubernetes.io/config.mirror", "5a1b2c3d4e"),
                ("kubernetes.io/config.source", "file"),
            ],
        ),
        "Node",
        NODE,
    ));
    let h = start(api, |_| {}).await;
    let m = h
        .store
        .get("5a1b2c3d4e")
        .expect("found by the hash in its log directory");
    assert_eq!(m.name, "etcd-node-a");
    assert_eq!(m.uid, "uid-mirror");
    assert_eq!(m.owner, kind_name("Node", NODE));
    assert_eq!(m.workload, None);
    assert!(
        m.annotations.is_empty(),
        "annotations are copied only when selected"
    );
}

#[tokio::test]
async fn a_dropped_watch_resumes_from_the_last_bookmark_without_a_list() {
    let api = FakeApi::start().await;
    api.set_bookmark_interval(Duration::from_millis(100));
    api.apply_pod(&pod("shop", "a", "uid-a", NODE));
    let h = start(api, |c| c.watch_namespaces = false).await;
    eventually("the pods watch", Duration::from_secs(5), || {
        h.api.count(Verb::Watch, Resource::Pods) == 1
    })
    .await;
    // Changes elsewhere in the store move the resourceVersion; bookmarks carry it to the watcher.
    for i in 0..3 {
        h.api.apply_namespace(&namespace(&format!("ns-{i}"), &[]));
    }
    let rv = h.api.resource_version();
    tokio::time::sleep(Duration::from_millis(400)).await;
    h.api.drop_watches();
    h.api.apply_pod(&pod("shop", "b", "uid-b", NODE));
    h.store
        .wait_for("uid-b", Duration::from_secs(10))
        .await
        .expect("the Pod added around the cut arrives");
    let reqs = h.api.requests();
    assert_eq!(
        h.api.count(Verb::List, Resource::Pods),
        1,
        "no re-list: {reqs:#?}"
    );
    assert_eq!(
        h.api.count(Verb::List, Resource::Namespaces),
        0,
        "namespaces not watched"
    );
    let watches: Vec<_> = reqs
        .iter()
        .filter(|r| r.is(Verb::Watch, Resource::Pods))
        .collect();
    assert_eq!(watches.len(), 2, "{reqs:#?}");
    let resumed: u64 = watches[1]
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        resumed >= rv,
        "resumed from the bookmark's {rv}, not the list's: {resumed}"
    );
    assert!(h.store.get("uid-a").is_some());
}

#[tokio::test]
async fn an_expired_resource_version_gives_one_relist_that_retires_pods_deleted_meanwhile() {
    let api = FakeApi::start().await;
    api.apply_pod(&pod("shop", "a", "uid-a", NODE));
    api.apply_pod(&pod("shop", "b", "uid-b", NODE));
    let h = start(api, |c| c.watch_namespaces = false).await;
    eventually("the pods watch", Duration::from_secs(5), || {
        h.api.count(Verb::Watch, Resource::Pods) == 1
    })
    .await;
    // Deleted while the watch is down and the history compacted: only a list can tell.
    h.api.go_down();
    h.api.delete_pod("shop", "a");
    h.api.apply_pod(&pod("shop", "c", "uid-c", NODE));
    h.api.expire_history();
    h.api.come_back();
    h.store
        .wait_for("uid-c", Duration::from_secs(20))
        .await
        .expect("the re-list brings the new Pod");
    eventually("the retirement", Duration::from_secs(5), || {
        metric(&h.metrics, "loglet_kube_deleted_pods_retained", &[]) == 1.0
    })
    .await;
    assert!(
        h.store.get("uid-a").is_some(),
        "retired, still within its grace"
    );
    assert!(h.store.get("uid-b").is_some());
    assert_eq!(
        h.api.count(Verb::List, Resource::Pods),
        2,
        "{:#?}",
        h.api.requests()
    );
    let relist = h
        .api
        .requests()
        .into_iter()
        .filter(|r| r.is(Verb::List, Resource::Pods))
        .nth(1)
        .unwrap();
    assert_eq!(
        relist.resource_version.as_deref(),
        Some("0"),
        "re-lists use the watch cache too"
    );
    assert_eq!(
        metric(
            &h.metrics,
            "loglet_kube_watch_errors_total",
            &[("resource", "pods"), ("kind", "gone")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &h.metrics,
            "loglet_kube_lists_total",
            &[("resource", "pods")]
        ),
        2.0
    );
    assert_eq!(
        metric(&h.metrics, "loglet_kube_watch_up", &[("resource", "pods")]),
        1.0
    );
}

/// Seconds between successive requests of one kind.
fn gaps(api: &FakeApi, verb: Verb, resource: Resource, status: u16) -> Vec<f64> {
    let times: Vec<Instant> = api
        .requests()
        .into_iter()
        .filter(|r| r.is(verb, resource) && r.status == status)
        .map(|r| r.at)
        .collect();
    times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_secs_f64())
        .collect()
}

/// kube's backoff starts at 0.8 s and doubles, each delay stretched by a random 0–100 %: so each
/// gap is at least the previous one (2·d ≥ d·(1+j)) and the first is at least 0.8 s. The 20 %
/// allowance absorbs scheduling delays on a loaded test machine.
fn assert_backing_off(gaps: &[f64]) {
    assert!(gaps.len() >= 2, "{gaps:?}");
    assert!(gaps[0] >= 0.75, "first retry too soon: {gaps:?}");
    for w in gaps.windows(2) {
        assert!(w[1] >= w[0] * 0.8, "retries must slow down: {gaps:?}");
    }
}

#[tokio::test]
async fn failing_watches_are_retried_with_growing_jittered_backoff_and_records_keep_their_cache() {
    let api = FakeApi::start().await;
    api.apply_pod(&pod("shop", "a", "uid-a", NODE));
    let h = start(api, |c| c.watch_namespaces = false).await;
    eventually("the pods watch", Duration::from_secs(5), || {
        h.api.count(Verb::Watch, Resource::Pods) == 1
    })
    .await;
    h.api.fail_all(500);
    h.api.drop_watches();
    let outage = Duration::from_secs(7);
    tokio::time::sleep(outage).await;
    assert!(
        h.store.get("uid-a").is_some(),
        "the cache serves through the outage"
    );
    assert_eq!(
        metric(&h.metrics, "loglet_kube_watch_up", &[("resource", "pods")]),
        0.0
    );
    let failed = gaps(&h.api, Verb::Watch, Resource::Pods, 500);
    // 7 s of backoff from 0.8 s doubling: at most 4 retries (0.8 + 1.6 + 3.2 = 5.6 s minimum).
    let attempts = failed.len() + 1;
    assert!(
        attempts <= 4,
        "request storm: {attempts} watches, gaps {failed:?}"
    );
    assert_backing_off(&failed);
    h.api.heal();
    h.api.apply_pod(&pod("shop", "b", "uid-b", NODE));
    h.store
        .wait_for("uid-b", Duration::from_secs(30))
        .await
        .expect("recovers after the outage");
    assert_eq!(
        h.api.count(Verb::List, Resource::Pods),
        1,
        "history kept: no re-list"
    );
}

#[tokio::test]
async fn a_failing_relist_backs_off_instead_of_retrying_every_second() {
    let api = FakeApi::start().await;
    api.apply_pod(&pod("shop", "a", "uid-a", NODE));
    let h = start(api, |c| c.watch_namespaces = false).await;
    eventually("the pods watch", Duration::from_secs(5), || {
        h.api.count(Verb::Watch, Resource::Pods) == 1
    })
    .await;
    h.api.fail_lists(503);
    h.api.expire_history();
    tokio::time::sleep(Duration::from_secs(7)).await;
    // The 410 costs the first backoff step (0.8–1.6 s), each failed list the next ones:
    // lists at ~1.2 s, ~3.6 s, ~8.4 s. kube's StreamBackoff alone resets on the watcher's
    // Ok(Init) before every list, which would make this a list every 0.8–1.6 s.
    let lists = h
        .api
        .requests()
        .into_iter()
        .filter(|r| r.is(Verb::List, Resource::Pods) && r.status == 503)
        .count();
    let failed = gaps(&h.api, Verb::List, Resource::Pods, 503);
    assert!(
        (2..=3).contains(&lists),
        "re-list storm: {lists} lists, gaps {failed:?}"
    );
    assert!(
        failed.iter().all(|g| *g >= 1.55),
        "re-lists must back off: {failed:?}"
    );
    assert!(
        h.store.get("uid-a").is_some(),
        "the cache serves while re-lists fail"
    );
    h.api.heal();
    h.api.apply_pod(&pod("shop", "b", "uid-b", NODE));
    h.store
        .wait_for("uid-b", Duration::from_secs(30))
        .await
        .expect("recovers once lists work");
}

#[tokio::test]
async fn readiness_waits_for_the_first_list_but_only_for_the_ready_timeout() {
    let api = FakeApi::start().await;
    api.fail_all(500);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&api, &dir);
    cfg.ready_timeout = Dur(Duration::from_millis(800));
    let metrics = Metrics::new();
    let store = loglet::kube::start(&cfg, Some(NODE.into()), metrics.clone()).await;
    assert!(!store.is_synced());
    assert_eq!(
        metrics.readiness.failing().len(),
        1,
        "{:?}",
        metrics.readiness.failing()
    );
    tokio::time::timeout(Duration::from_secs(5), store.synced())
        .await
        .expect("synced after the bounded wait");
    assert!(metrics.readiness.failing().is_empty());
    assert!(store.get("anything").is_none());

    // And a slow but working API server: ready once the list is in.
    let api = FakeApi::start().await;
    api.apply_pod(&pod("shop", "a", "uid-a", NODE));
    api.set_latency(Duration::from_millis(700));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&api, &dir);
    let metrics = Metrics::new();
    let started = Instant::now();
    let store = loglet::kube::start(&cfg, Some(NODE.into()), metrics.clone()).await;
    assert!(!metrics.readiness.failing().is_empty());
    tokio::time::timeout(Duration::from_secs(10), store.synced())
        .await
        .expect("synced");
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert!(store.get("uid-a").is_some());
    assert!(metrics.readiness.failing().is_empty());
}

#[tokio::test]
async fn without_a_node_name_or_when_disabled_the_store_runs_on_file_name_metadata() {
    let api = FakeApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&api, &dir);
    let metrics = Metrics::new();
    let store = loglet::kube::start(&cfg, None, metrics.clone()).await;
    assert!(!store.is_enabled() && store.is_synced());
    assert!(metrics.readiness.failing().is_empty(), "auto: still ready");

    let required = KubernetesConfig {
        enabled: KubernetesEnabled::True,
        ..config(&api, &dir)
    };
    let metrics = Metrics::new();
    let store = loglet::kube::start(&required, Some(String::new()), metrics.clone()).await;
    assert!(!store.is_enabled());
    assert_eq!(
        metrics.readiness.failing().len(),
        1,
        "true: not ready without the API"
    );

    let off = KubernetesConfig {
        enabled: KubernetesEnabled::False,
        ..config(&api, &dir)
    };
    let store = loglet::kube::start(&off, Some(NODE.into()), Metrics::new()).await;
    assert!(!store.is_enabled());
    assert!(api.requests().is_empty(), "no request when disabled");
}

#[test]
fn the_fake_runs_on_its_own_thread_for_tests_that_are_not_async() {
    let api = FakeApi::start_background();
    api.apply_pod(&pod("shop", "a", "uid-a", NODE));
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(api.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&resourceVersion=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"kind\":\"PodList\""), "{answer}");
    assert!(answer.contains("uid-a"), "{answer}");
    assert_eq!(api.count(Verb::List, Resource::Pods), 1);
}
