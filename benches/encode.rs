//! bench: the backends' encoders, in ns per record and input bytes per second, on 238-byte lines
//! from Pods with realistic metadata (labels, owner, image), ten Pods interleaved per batch.
//! Run: `cargo bench --bench encode`.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use loglet::config::{Config, SinkConfig};
use loglet::metrics::Metrics;
use loglet::record::{ContainerMeta, PodMeta, Record, Source, Stream};
use loglet::sink::format::Format;

const LINE_BYTES: usize = 238;
const BATCH: usize = 1000;
const PODS: usize = 10;

fn source(i: usize) -> Arc<Source> {
    let pod = format!("checkout-7d9f8b6c5-{i:05}");
    let uid = format!("3f1c2a9e-6b1d-4f8e-9c3a-{i:012}");
    let meta = PodMeta {
        namespace: "shop".into(),
        name: pod.clone(),
        uid: uid.clone(),
        node_name: Some("ip-10-0-12-34.eu-west-1.compute.internal".into()),
        labels: vec![
            ("app.kubernetes.io/name".into(), "checkout".into()),
            ("app.kubernetes.io/instance".into(), "checkout-prod".into()),
            ("app.kubernetes.io/version".into(), "2.14.1".into()),
            ("pod-template-hash".into(), "7d9f8b6c5".into()),
            ("team".into(), "payments".into()),
        ],
        annotations: vec![],
        namespace_labels: vec![("env".into(), "prod".into())],
        owner: Some(("ReplicaSet".into(), "checkout-7d9f8b6c5".into())),
        workload: Some(("Deployment".into(), "checkout".into())),
        containers: vec![ContainerMeta {
            name: "app".into(),
            image: Some("registry.example.com/shop/checkout:2.14.1".into()),
            container_id: Some(format!("{:064x}", i + 1)),
        }],
        ..PodMeta::default()
    };
    Arc::new(Source {
        id: Source::next_id(),
        path: format!("/var/log/pods/shop_{pod}_{uid}/app/0.log"),
        namespace: "shop".into(),
        pod,
        pod_uid: uid,
        container: "app".into(),
        container_id: Some(format!("{:064x}", i + 1)),
        restart_count: Some(0),
        pod_meta: Some(Arc::new(meta)),
        routing: Default::default(),
        sidecar: None,
    })
}

/// A JSON access-log style line of exactly `LINE_BYTES` bytes, with quotes to escape.
fn line(i: usize) -> Bytes {
    let mut s = format!(
        "{{\"level\":\"info\",\"ts\":\"2024-05-01T13:00:{:02}.123Z\",\"msg\":\"request served\",\"method\":\"GET\",\"path\":\"/api/v1/cart/{i}\",\"status\":200,\"duration_ms\":12.5,\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\",\"user_agent\":\"Mozilla/5.0\"",
        i % 60
    );
    while s.len() < LINE_BYTES - 1 {
        s.push('x');
    }
    s.truncate(LINE_BYTES - 1);
    s.push('}');
    Bytes::from(s)
}

fn records() -> Vec<Record> {
    let sources: Vec<_> = (0..PODS).map(source).collect();
    let base = 1_714_568_400_000_000_000i64;
    (0..BATCH)
        .map(|i| Record {
            line: line(i),
            time_ns: base + (i as i64) * 1_000_123,
            stream: if i % 7 == 0 {
                Stream::Stderr
            } else {
                Stream::Stdout
            },
            flags: 0,
            fields: None,
            source: sources[i % PODS].clone(),
        })
        .collect()
}

fn sink(yaml: &str) -> SinkConfig {
    let text = format!("sinks:\n  out:\n{yaml}");
    let mut c = Config::parse_str(&text, std::path::Path::new("bench.yaml")).expect("valid");
    c.sinks.remove("out").expect("sink")
}

fn formats(metrics: &Metrics) -> Vec<(&'static str, Box<dyn Format>)> {
    use loglet::sink::{elasticsearch, loki, otlp, splunk_hec};
    let node = Some("ip-10-0-12-34");
    let loki = |enc: &str| {
        sink(&format!(
            "    type: loki\n    url: http://loki:3100\n    loki: {{encoding: {enc}}}\n"
        ))
    };
    let otlp = |enc: &str| {
        sink(&format!(
            "    type: otlp\n    url: http://otel:4318\n    otlp: {{encoding: {enc}}}\n"
        ))
    };
    let es = sink("    type: elasticsearch\n    url: http://es:9200\n");
    let hec =
        sink("    type: splunk_hec\n    url: http://splunk:8088\n    splunk_hec: {token: abc}\n");
    vec![
        (
            "loki_protobuf",
            Box::new(loki::LokiFormat::new("b", &loki("protobuf"), node, metrics).expect("loki")),
        ),
        (
            "loki_json",
            Box::new(loki::LokiFormat::new("b", &loki("json"), node, metrics).expect("loki")),
        ),
        (
            "elasticsearch",
            Box::new(elasticsearch::ElasticsearchFormat::new("b", &es, node).expect("es")),
        ),
        (
            "otlp_protobuf",
            Box::new(otlp::OtlpFormat::new("b", &otlp("protobuf"), node).expect("otlp")),
        ),
        (
            "otlp_json",
            Box::new(otlp::OtlpFormat::new("b", &otlp("json"), node).expect("otlp")),
        ),
        (
            "splunk_hec",
            Box::new(splunk_hec::SplunkHecFormat::new("b", &hec, node).expect("hec")),
        ),
        ("ndjson", Box::new(NdjsonFormat)),
    ]
}

/// The `http` sink's encoder, as the baseline.
struct NdjsonFormat;

impl Format for NdjsonFormat {
    fn content_type(&self) -> &'static str {
        "application/x-ndjson"
    }
    fn encoder(&self) -> Box<dyn loglet::sink::format::Encoder> {
        Box::new(loglet::sink::json::NdjsonEncoder::new())
    }
    fn outcome(
        &self,
        _: reqwest::StatusCode,
        _: &reqwest::header::HeaderMap,
        _: &[u8],
        _: usize,
    ) -> loglet::sink::format::Outcome {
        loglet::sink::format::Outcome::Delivered
    }
}

fn encode(c: &mut Criterion) {
    let metrics = Metrics::new();
    let recs = records();
    let refs: Vec<&Record> = recs.iter().collect();
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Bytes((BATCH * LINE_BYTES) as u64));
    for (name, format) in formats(&metrics) {
        let mut encoder = format.encoder();
        let mut out = Vec::with_capacity(2 << 20);
        encoder.encode(&refs, &mut out);
        eprintln!(
            "{name}: {} bytes for {BATCH} records of {LINE_BYTES} bytes",
            out.len()
        );
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                encoder.encode(&refs, &mut out);
                out.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
