//! Lines and sources shared by the micro-benchmarks: lines of about 238 bytes, half JSON
//! application logs and half access logs, with varying times, paths, IPs and trace IDs (so that
//! compression ratios are not flattered by repetition), and the sources of the pipeline bench's
//! node (40 Pods x 2 containers with realistic metadata).
#![allow(dead_code)]

use std::sync::Arc;

use loglet::record::{ContainerMeta, PodMeta, Source};

/// Files on the node of `benches/pipeline.rs`: 40 Pods x 2 containers.
pub const SOURCES: usize = 80;
pub const BASE_NS: i64 = 1_795_000_000_000_000_000;

/// A small deterministic generator (xorshift64*), so every run sees the same lines.
pub struct Gen(pub u64);

impl Gen {
    pub fn new() -> Gen {
        Gen(0x9E37_79B9_7F4A_7C15)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The text of line `i`: a JSON application log (even `i`) or an access log (odd `i`).
pub fn message(i: usize, g: &mut Gen) -> String {
    const PATHS: [&str; 6] = [
        "/api/v1/cart",
        "/api/v1/checkout",
        "/product",
        "/static/app.js",
        "/api/v2/search",
        "/healthz",
    ];
    let path = PATHS[g.below(PATHS.len() as u64) as usize];
    let id = g.below(100_000);
    if i % 2 == 0 {
        let level = ["info", "info", "info", "debug", "warn", "error"][g.below(6) as usize];
        format!(
            "{{\"level\":\"{level}\",\"ts\":\"2026-11-18T09:{:02}:{:02}.{:03}Z\",\"msg\":\"request served\",\"method\":\"GET\",\"path\":\"{path}/{id}\",\"status\":{},\"duration_ms\":{}.{},\"trace_id\":\"{:016x}{:016x}\"}}",
            g.below(60),
            g.below(60),
            g.below(1000),
            [200, 200, 200, 201, 304, 404, 500][g.below(7) as usize],
            g.below(400),
            g.below(10),
            g.next(),
            g.next(),
        )
    } else {
        format!(
            "10.{}.{}.{} - - [18/Nov/2026:09:{:02}:{:02} +0000] \"GET {path}/{id} HTTP/1.1\" {} {} \"-\" \"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0\" rt={}.{:03}",
            g.below(4),
            g.below(256),
            g.below(256),
            g.below(60),
            g.below(60),
            [200, 200, 200, 304, 404][g.below(5) as usize],
            g.below(60_000),
            g.below(2),
            g.below(1000),
        )
    }
}

/// A time for line `i`, one millisecond apart, with the sub-millisecond part varied.
pub fn time_ns(i: usize, g: &mut Gen) -> i64 {
    BASE_NS + i as i64 * 1_000_000 + g.below(1_000_000) as i64
}

pub fn pod_name(p: usize) -> String {
    format!("checkout-7d9f8b6c5-{p:05}")
}

pub fn pod_uid(p: usize) -> String {
    format!("3f1c2a9e-6b1d-4f8e-9c3a-{p:012}")
}

fn container_id(uid: &str, container: &str) -> String {
    let mut g = Gen(uid
        .bytes()
        .chain(container.bytes())
        .fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
        }));
    (0..4).map(|_| format!("{:016x}", g.next())).collect()
}

/// The sources of the pipeline bench's node: 40 Pods with five labels, an owner, a workload and
/// two containers with images and IDs, in a namespace with two labels.
pub fn sources() -> Vec<Arc<Source>> {
    (0..SOURCES)
        .map(|i| {
            let (p, container) = (i / 2, ["app", "proxy"][i % 2]);
            let (pod, uid) = (pod_name(p), pod_uid(p));
            let containers = [
                ("app", "registry.example.com/shop/checkout:2.14.1"),
                ("proxy", "envoyproxy/envoy:v1.31.0"),
            ]
            .iter()
            .map(|(name, image)| ContainerMeta {
                name: name.to_string(),
                image: Some(image.to_string()),
                container_id: Some(container_id(&uid, name)),
            })
            .collect();
            let meta = PodMeta {
                namespace: "bench".into(),
                name: pod.clone(),
                uid: uid.clone(),
                node_name: Some("ip-10-0-12-34.eu-west-1.compute.internal".into()),
                labels: [
                    ("app.kubernetes.io/instance", "checkout-prod"),
                    ("app.kubernetes.io/name", "checkout"),
                    ("app.kubernetes.io/version", "2.14.1"),
                    ("pod-template-hash", "7d9f8b6c5"),
                    ("team", "payments"),
                ]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
                namespace_labels: vec![
                    ("env".into(), "prod".into()),
                    ("team".into(), "perf".into()),
                ],
                owner: Some(("ReplicaSet".into(), "checkout-7d9f8b6c5".into())),
                workload: Some(("Deployment".into(), "checkout".into())),
                containers,
                ..PodMeta::default()
            };
            Arc::new(Source {
                id: Source::next_id(),
                path: format!("/var/log/pods/bench_{pod}_{uid}/{container}/0.log"),
                namespace: "bench".into(),
                pod,
                pod_uid: uid.clone(),
                container: container.into(),
                container_id: Some(container_id(&uid, container)),
                restart_count: Some(0),
                pod_meta: Some(Arc::new(meta)),
                routing: Default::default(),
                sidecar: None,
            })
        })
        .collect()
}
