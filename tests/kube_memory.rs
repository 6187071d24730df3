//! kube (enrich): what the metadata cache costs in memory per cached Pod and per Namespace,
//! measured end to end (fake API server → kube watcher → store) with a counting allocator.
//! The figures in docs/kubernetes.md come from
//! `cargo test --test kube_memory -- --nocapture`.

#[path = "common/fake_api.rs"]
mod fake_api;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use fake_api::{FakeApi, namespace, owned_by, pod, with_annotations, with_labels};
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Namespace};
use loglet::config::KubernetesConfig;
use loglet::metrics::Metrics;

/// Bytes currently allocated on the heap by the whole test process, and the allocations.
static LIVE: AtomicIsize = AtomicIsize::new(0);
static BLOCKS: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
            BLOCKS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const NODE: &str = "node-a";

fn hex(seed: usize, len: usize) -> String {
    let mut x = seed as u64 ^ 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x % 16) as u32, 16).unwrap_or('0')
        })
        .collect()
}

/// A Deployment Pod as Helm charts make them: 8 labels, 5 annotations (one selected by the
/// config), an app container with an Istio sidecar and an init container, 64-hex container IDs.
fn realistic_pod(i: usize) -> k8s_openapi::api::core::v1::Pod {
    let ns = format!("team-{}", i % 20);
    let hash = &hex(i, 10);
    let name = format!("checkout-api-{hash}-{}", &hex(i + 7, 5));
    let uid = format!(
        "{}-{}-{}-{}-{}",
        hex(i, 8),
        hex(i + 1, 4),
        hex(i + 2, 4),
        hex(i + 3, 4),
        hex(i + 4, 12)
    );
    let mut p = pod(&ns, &name, &uid, NODE);
    p = with_labels(
        p,
        &[
            ("app.kubernetes.io/name", "checkout-api"),
            ("app.kubernetes.io/instance", "checkout-api-prod"),
            ("app.kubernetes.io/version", "4.12.3"),
            ("app.kubernetes.io/component", "backend"),
            ("app.kubernetes.io/part-of", "checkout"),
            ("app.kubernetes.io/managed-by", "Helm"),
            ("helm.sh/chart", "checkout-api-4.12.3"),
            ("pod-template-hash", hash),
        ],
    );
    p = with_annotations(
        p,
        &[
            ("checksum/config", &hex(i + 9, 64)),
            ("kubectl.kubernetes.io/restartedAt", "2026-03-01T10:00:00Z"),
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/port", "9090"),
            ("team.example.com/owner", "payments"),
        ],
    );
    p = owned_by(p, "ReplicaSet", &format!("checkout-api-{hash}"));
    let spec = p.spec.as_mut().unwrap();
    spec.containers[0].image = Some("registry.example.com/checkout/checkout-api:4.12.3".into());
    spec.containers.push(Container {
        name: "istio-proxy".into(),
        image: Some("docker.io/istio/proxyv2:1.24.2".into()),
        ..Container::default()
    });
    spec.init_containers = Some(vec![Container {
        name: "istio-init".into(),
        image: Some("docker.io/istio/proxyv2:1.24.2".into()),
        ..Container::default()
    }]);
    let status = p.status.as_mut().unwrap();
    let statuses = status.container_statuses.as_mut().unwrap();
    statuses[0].container_id = Some(format!("containerd://{}", hex(i + 11, 64)));
    statuses.push(ContainerStatus {
        name: "istio-proxy".into(),
        container_id: Some(format!("containerd://{}", hex(i + 12, 64))),
        ..ContainerStatus::default()
    });
    status.init_container_statuses = Some(vec![ContainerStatus {
        name: "istio-init".into(),
        container_id: Some(format!("containerd://{}", hex(i + 13, 64))),
        ..ContainerStatus::default()
    }]);
    p
}

fn realistic_namespace(i: usize) -> Namespace {
    let mut ns = namespace(
        &format!("team-{i}"),
        &[
            ("team", "payments"),
            ("environment", "production"),
            ("istio-injection", "enabled"),
            ("pod-security.kubernetes.io/enforce", "baseline"),
        ],
    );
    ns.metadata.annotations = Some(
        [
            ("loglet.io/route", "payments"),
            ("owner", "payments@example.com"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    ns
}

/// Heap bytes and allocations held by a synced store over `api`, after transient buffers are
/// gone.
async fn store_heap(api: &FakeApi, watch_namespaces: bool) -> (isize, isize) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = KubernetesConfig {
        kubeconfig: Some(api.write_kubeconfig(dir.path())),
        watch_namespaces,
        annotations: vec!["team.example.com/*".into()],
        ..KubernetesConfig::default()
    };
    let metrics = Metrics::new();
    // Measured against the same process with the store dropped, so the fake API's own copies
    // of the objects and the metrics registry cancel out.
    let store = loglet::kube::start(&cfg, Some(NODE.into()), metrics.clone()).await;
    tokio::time::timeout(Duration::from_secs(30), store.synced())
        .await
        .expect("synced");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let with_store = (LIVE.load(Ordering::Relaxed), BLOCKS.load(Ordering::Relaxed));
    drop(store);
    tokio::time::sleep(Duration::from_millis(300)).await;
    (
        with_store.0 - LIVE.load(Ordering::Relaxed),
        with_store.1 - BLOCKS.load(Ordering::Relaxed),
    )
}

#[tokio::test]
async fn the_cache_costs_a_few_kibibytes_per_pod_and_under_one_per_namespace() {
    const PODS: usize = 2000;
    const NAMESPACES: usize = 2000;
    let empty = FakeApi::start().await;
    let base = store_heap(&empty, true).await;

    let pods = FakeApi::start().await;
    for i in 0..20 {
        pods.apply_namespace(&realistic_namespace(i));
    }
    for i in 0..PODS {
        pods.apply_pod(&realistic_pod(i));
    }
    let with_pods = store_heap(&pods, true).await;
    let namespaces = FakeApi::start().await;
    for i in 0..NAMESPACES {
        namespaces.apply_namespace(&realistic_namespace(i));
    }
    let with_namespaces = store_heap(&namespaces, true).await;

    let per = |(bytes, blocks): (isize, isize), n: usize| {
        (
            (bytes - base.0) as f64 / n as f64,
            (blocks - base.1) as f64 / n as f64,
        )
    };
    let (per_pod, pod_blocks) = per(with_pods, PODS);
    let (per_namespace, ns_blocks) = per(with_namespaces, NAMESPACES);
    println!(
        "store: fixed {} B in {} allocations; per Pod {per_pod:.0} B in {pod_blocks:.1} allocations; per Namespace {per_namespace:.0} B in {ns_blocks:.1} allocations; size_of PodMeta {} B",
        base.0,
        base.1,
        std::mem::size_of::<loglet::record::PodMeta>()
    );
    assert!(per_pod > 200.0 && per_pod < 4096.0, "{per_pod}");
    assert!(
        per_namespace > 50.0 && per_namespace < 1024.0,
        "{per_namespace}"
    );
}
