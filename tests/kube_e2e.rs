//! kube (enrich) end to end through the real binary: a kubelet tree on disk, the fake Kubernetes
//! API found through a kubeconfig, `NODE_NAME` from the environment as the downward API sets it,
//! records read from loglet's stdout sink, and the fake's request log for the load loglet puts
//! on the API server.

#[path = "common/fake_api.rs"]
mod fake_api;
#[path = "common/loglet.rs"]
mod loglet;
#[path = "common/node.rs"]
mod node;

use std::time::Duration;

use fake_api::{FakeApi, Resource, Verb, namespace, owned_by, pod, with_containers, with_labels};
use loglet::{Loglet, config, wait_until};
use node::Node;
use serde_json::Value;

const NODE: &str = "node-a";
const STDOUT_SINK: &str = "  out:\n    type: stdout\n";

fn start(node: &Node, work: &std::path::Path, api: &FakeApi, kube: &str) -> Loglet {
    let kubeconfig = api.write_kubeconfig(work);
    let extra = format!(
        "kubernetes:\n  kubeconfig: {}\n{kube}",
        kubeconfig.display()
    );
    Loglet::start_with_env(
        node.root(),
        work,
        &config(&extra, STDOUT_SINK),
        &[("NODE_NAME", NODE)],
    )
}

/// The first record whose message is `message`, waiting for it.
fn record(l: &Loglet, message: &str) -> Value {
    wait_until(Duration::from_secs(30), message, || {
        l.stdout_records()
            .into_iter()
            .find(|r| r["message"] == message)
    })
}

#[test]
fn records_carry_labels_owner_workload_and_namespace_labels_and_follow_pod_changes() {
    let api = FakeApi::start_background();
    api.apply_namespace(&namespace("shop", &[("team", "payments")]));
    api.apply_pod(&owned_by(
        with_labels(
            with_containers(
                pod("shop", "web-5d8f9c7b4-x2x9q", "uid-web", NODE),
                &[("nginx", "nginx:1.27")],
            ),
            &[("app", "web"), ("pod-template-hash", "5d8f9c7b4")],
        ),
        "ReplicaSet",
        "web-5d8f9c7b4",
    ));
    let node = Node::new();
    let mut web = node.container("shop", "web-5d8f9c7b4-x2x9q", "uid-web", "nginx");
    web.line("stdout", b"GET /cart 200");
    let work = tempfile::tempdir().unwrap();
    let l = start(
        &node,
        work.path(),
        &api,
        "  metadata_wait: 1s\n  deleted_pod_grace: 1m\n",
    );

    let r = record(&l, "GET /cart 200");
    let k = &r["kubernetes"];
    assert_eq!(k["namespace"], "shop", "{r}");
    assert_eq!(k["pod_uid"], "uid-web");
    assert_eq!(k["node"], NODE);
    assert_eq!(k["container_image"], "nginx:1.27");
    assert_eq!(
        k["container_id"].as_str().unwrap().len(),
        64,
        "the link's ID, before the API's"
    );
    assert_eq!(k["labels"]["app"], "web");
    assert_eq!(k["namespace_labels"]["team"], "payments");
    assert_eq!(k["owner"]["kind"], "ReplicaSet");
    assert_eq!(k["owner"]["name"], "web-5d8f9c7b4");
    assert_eq!(k["workload"]["kind"], "Deployment");
    assert_eq!(k["workload"]["name"], "web");

    // A Pod created after loglet started: its file and its watch event arrive in either order.
    let mut job = node.container("shop", "migrate-q7", "uid-job", "app");
    job.line("stdout", b"migration 1 applied");
    api.apply_pod(&owned_by(
        pod("shop", "migrate-q7", "uid-job", NODE),
        "Job",
        "migrate",
    ));
    let r = record(&l, "migration 1 applied");
    assert_eq!(r["kubernetes"]["workload"]["kind"], "Job", "{r}");

    // The Job's Pod is deleted right after its last line: the line is still labelled.
    job.line("stdout", b"migration done");
    assert!(api.delete_pod("shop", "migrate-q7"));
    let r = record(&l, "migration done");
    assert_eq!(r["kubernetes"]["owner"]["name"], "migrate", "{r}");

    // A Pod the API never reports: after metadata_wait its lines go out with the path's metadata.
    let mut ghost = node.container("shop", "ghost-1", "uid-ghost", "app");
    ghost.line("stdout", b"who am i");
    let r = record(&l, "who am i");
    assert_eq!(r["kubernetes"]["pod"], "ghost-1", "{r}");
    assert!(r["kubernetes"].get("labels").is_none(), "{r}");
    assert_eq!(l.metric("loglet_metadata_missing_total"), 1.0);
    assert_eq!(l.metric("loglet_kube_pods_cached"), 1.0, "web is live");

    // One list and one watch per resource, no polling.
    assert_eq!(api.count(Verb::List, Resource::Pods), 1);
    assert_eq!(api.count(Verb::List, Resource::Namespaces), 1);
    for r in api.requests() {
        if r.is(Verb::List, Resource::Pods) {
            assert_eq!(r.param("resourceVersion"), Some("0"), "{r:?}");
            assert_eq!(
                r.param("fieldSelector"),
                Some("spec.nodeName=node-a"),
                "{r:?}"
            );
        }
    }
    assert_eq!(l.stop(), 0);
}

#[test]
fn an_api_outage_with_dropped_watches_and_410_loses_no_line_and_causes_no_request_storm() {
    let api = FakeApi::start_background();
    api.apply_pod(&with_labels(
        pod("shop", "web-1", "uid-web", NODE),
        &[("app", "web")],
    ));
    let node = Node::new();
    let mut web = node.container("shop", "web-1", "uid-web", "app");
    let work = tempfile::tempdir().unwrap();
    let l = start(&node, work.path(), &api, "");
    let mut sent = 0;
    let mut write = |n: usize| {
        for _ in 0..n {
            web.line("stdout", format!("line {sent}").as_bytes());
            sent += 1;
        }
    };
    write(50);
    record(&l, "line 49");

    api.drop_watches();
    write(50);
    api.expire_history();
    write(50);
    api.go_down();
    let down_at = std::time::Instant::now();
    write(50);
    // Records keep flowing from the cache while the API is away.
    let r = record(&l, "line 199");
    assert_eq!(r["kubernetes"]["labels"]["app"], "web", "{r}");
    std::thread::sleep(Duration::from_secs(3).saturating_sub(down_at.elapsed()));
    // A Pod created during the outage is picked up after it.
    api.apply_pod(&with_labels(
        pod("shop", "late-1", "uid-late", NODE),
        &[("app", "late")],
    ));
    api.come_back();
    // The cache recovers: the watcher re-lists after its backoff and finds the new Pod.
    wait_until(Duration::from_secs(60), "the cache to recover", || {
        (l.metric("loglet_kube_pods_cached") == 2.0).then_some(())
    });
    let mut late = node.container("shop", "late-1", "uid-late", "app");
    late.line("stdout", b"born in the outage");
    write(50);
    let r = record(&l, "born in the outage");
    assert_eq!(r["kubernetes"]["labels"]["app"], "late", "{r}");
    record(&l, "line 249");

    let messages: Vec<String> = l
        .stdout_records()
        .iter()
        .filter(|r| r["kubernetes"]["pod"] == "web-1")
        .map(|r| r["message"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = (0..250).map(|i| format!("line {i}")).collect();
    assert_eq!(messages, want, "every line once, in order");
    // The 410 costs one re-list and the outage a few backed-off attempts, not one a second.
    let lists = api.count(Verb::List, Resource::Pods);
    assert!((2..=6).contains(&lists), "{lists} pod lists");
    let watches = api.count(Verb::Watch, Resource::Pods);
    assert!(watches <= 10, "{watches} pod watches");
    assert_eq!(l.stop(), 0);
}
