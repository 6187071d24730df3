//! bench: the backends' encoders, in ns per record and input bytes per second, on 238-byte lines
//! from Pods with realistic metadata (labels, owner, image), ten Pods interleaved per batch; and
//! the sinks' compression of a request body, per codec, in body bytes per second, with the
//! compression ratio and CPU seconds per GiB (the bench thread's own CPU time) printed first.
//! Run: `cargo bench --bench encode` (`-- compress` for compression only).

#[path = "common/corpus.rs"]
mod corpus;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use loglet::config::{Compression, Config, SinkConfig};
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

/// Records as a sink's request gathers them: `sink.batch.max_bytes` (256 KiB) of lines from the
/// 80 files of the pipeline bench's node, in runs of `run` lines of one file (the tailer hands
/// over each file's read in turn: a few lines per file at a steady 20 000 lines/s, a whole
/// 256 KiB block per file in a catch-up).
fn request_records(run: usize) -> Vec<Record> {
    let sources = corpus::sources();
    let mut g = corpus::Gen::new();
    let (mut recs, mut bytes) = (Vec::new(), 0u64);
    while bytes < loglet::config::DEFAULT_SINK_MAX_BYTES {
        let i = recs.len();
        let line = Bytes::from(corpus::message(i, &mut g));
        bytes += line.len() as u64;
        recs.push(Record {
            line,
            time_ns: corpus::time_ns(i, &mut g),
            stream: if i % 7 == 0 {
                Stream::Stderr
            } else {
                Stream::Stdout
            },
            flags: 0,
            fields: None,
            source: sources[(i / run) % sources.len()].clone(),
        });
    }
    recs
}

fn body(format: &dyn Format, recs: &[Record]) -> Vec<u8> {
    let refs: Vec<&Record> = recs.iter().collect();
    let mut out = Vec::new();
    format.encoder().encode(&refs, &mut out);
    out
}

/// CPU time of the calling thread, from the scheduler's own accounting (nanosecond resolution,
/// unlike the clock ticks of `/proc/<pid>/stat`).
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// Compression of request bodies through the sinks' own `transport::compress` (gzip level 6,
/// zstd level 3, snappy raw blocks), buffers from a pool as the sinks use them.
fn compress(c: &mut Criterion) {
    use loglet::sink::transport;
    let metrics = Metrics::new();
    let loki = sink("    type: loki\n    url: http://loki:3100\n");
    let loki = loglet::sink::loki::LokiFormat::new("b", &loki, Some("ip-10-0-12-34"), &metrics)
        .expect("loki");
    let steady = request_records(4);
    let catch_up = request_records(1000);
    let bodies = [
        ("ndjson", body(&NdjsonFormat, &steady)),
        ("ndjson_runs_of_1000", body(&NdjsonFormat, &catch_up)),
        ("loki_protobuf", body(&loki, &steady)),
    ];
    let cases = [
        ("gzip", "ndjson", Compression::Gzip),
        ("zstd", "ndjson", Compression::Zstd),
        ("snappy", "ndjson", Compression::Snappy),
        ("gzip", "ndjson_runs_of_1000", Compression::Gzip),
        ("zstd", "ndjson_runs_of_1000", Compression::Zstd),
        ("snappy", "ndjson_runs_of_1000", Compression::Snappy),
        ("snappy", "loki_protobuf", Compression::Snappy),
    ];
    let pool = loglet::pool::BufferPool::new(4, 16 << 20);
    let fresh = |body: &[u8]| {
        let mut b = pool.take(body.len());
        b.extend_from_slice(body);
        b
    };
    let mut group = c.benchmark_group("compress");
    for (codec, input, compression) in cases {
        let body = &bodies.iter().find(|(n, _)| *n == input).expect("body").1;
        let (out, _) = transport::compress(compression, fresh(body), &pool);
        let ratio = body.len() as f64 / out.len() as f64;
        pool.give(out);
        // CPU seconds per GiB, on this thread's clock, over at least a second of compressing.
        let (mut cpu, mut n) = (Duration::ZERO, 0u64);
        while cpu < Duration::from_secs(1) || n < 5 {
            let input = fresh(body);
            let t0 = thread_cpu();
            let (out, _) = transport::compress(compression, input, &pool);
            cpu += thread_cpu() - t0;
            pool.give(out);
            n += 1;
        }
        let gib = (n * body.len() as u64) as f64 / (1u64 << 30) as f64;
        eprintln!(
            "{codec}/{input}: {} bytes -> ratio {ratio:.2} | {:.2} CPU-s per GiB of body ({n} runs)",
            body.len(),
            cpu.as_secs_f64() / gib,
        );
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{codec}/{input}"), |b| {
            b.iter_batched(
                || fresh(body),
                |input| {
                    let (out, _) = transport::compress(compression, input, &pool);
                    let n = out.len();
                    pool.give(out);
                    n
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, encode, compress);
criterion_main!(benches);
