//! sink formats against the fake backends: bodies built by each backend's encoder, compressed as
//! the sink machinery does, POSTed over HTTP to a fake that decodes the real wire format; the
//! fake's answer is then read by the format. Checks every stored field, and the retry/drop
//! decisions for the failures the real backends produce.
//!
//! Then whole sinks, started from their config as loglet's pipeline starts them
//! (`loglet::sink::start`): their own transport (TLS, auth), batching, retries and waits.

#[path = "common/backends.rs"]
mod backends;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use backends::{Answer, Backend, Kind, RetryAfter, TestPki};
use bytes::Bytes;
use loglet::config::{Compression, Config, SinkConfig};
use loglet::metrics::Metrics;
use loglet::record::{Batch, ContainerMeta, PodMeta, Record, Source, Stream, flags};
use loglet::route::Routes;
use loglet::sink::format::{Format, Outcome};
use loglet::sink::transport::TransportError;
use loglet::sink::{StartError, elasticsearch, loki, otlp, splunk_hec};
use loglet::tail::checkpoint::Checkpoints;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderValue};

const T0: i64 = 1_714_568_400_123_456_789; // 2024-05-01T13:00:00.123456789Z

fn web_source(pod: &str, uid: &str) -> Arc<Source> {
    annotated_web_source(pod, uid, &[], &[])
}

/// A Pod of the `web` Deployment whose Pod and Namespace carry these `loglet.io/` annotations.
fn annotated_web_source(
    pod: &str,
    uid: &str,
    pod_annotations: &[(&str, &str)],
    namespace_annotations: &[(&str, &str)],
) -> Arc<Source> {
    let pairs = |l: &[(&str, &str)]| -> Vec<(String, String)> {
        l.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let meta = PodMeta {
        namespace: "shop".into(),
        name: pod.into(),
        uid: uid.into(),
        node_name: Some("node-a".into()),
        labels: vec![
            ("app.kubernetes.io/name".into(), "web".into()),
            ("team".into(), "payments".into()),
        ],
        annotations: vec![],
        namespace_labels: vec![],
        owner: Some(("ReplicaSet".into(), "web-5d8f".into())),
        workload: Some(("Deployment".into(), "web".into())),
        loglet_annotations: pairs(pod_annotations),
        namespace_loglet_annotations: pairs(namespace_annotations),
        containers: vec![ContainerMeta {
            name: "nginx".into(),
            image: Some("nginx:1.27".into()),
            container_id: Some(format!("id-{uid}")),
        }],
    };
    Arc::new(Source {
        id: Source::next_id(),
        path: format!("/var/log/pods/shop_{pod}_{uid}/nginx/0.log"),
        namespace: "shop".into(),
        pod: pod.into(),
        pod_uid: uid.into(),
        container: "nginx".into(),
        container_id: None,
        restart_count: Some(1),
        pod_meta: Some(Arc::new(meta)),
        routing: Default::default(),
        sidecar: None,
    })
}

fn bare_source() -> Arc<Source> {
    Arc::new(Source {
        id: Source::next_id(),
        path: "/var/log/pods/kube-system_etcd-n1_hash/etcd/0.log".into(),
        namespace: "kube-system".into(),
        pod: "etcd-n1".into(),
        pod_uid: "hash".into(),
        container: "etcd".into(),
        container_id: None,
        restart_count: Some(0),
        pod_meta: None,
        routing: Default::default(),
        sidecar: None,
    })
}

fn rec(source: &Arc<Source>, line: &str, time_ns: i64, stream: Stream) -> Record {
    Record {
        line: Bytes::copy_from_slice(line.as_bytes()),
        time_ns,
        stream,
        flags: 0,
        fields: None,
        source: source.clone(),
    }
}

/// Five records: two Pods of one Deployment and a Pod known only by its path, both streams,
/// times out of order, one line cut.
fn records() -> Vec<Record> {
    let (a, b, c) = (
        web_source("web-1", "uid-1"),
        web_source("web-2", "uid-2"),
        bare_source(),
    );
    let mut cut = rec(&a, "cut here", T0 + 40, Stream::Stdout);
    cut.flags = flags::TRUNCATED;
    vec![
        rec(&a, "GET /cart \"200\"", T0 + 30, Stream::Stdout),
        rec(&b, "warn: slow", T0 + 10, Stream::Stderr),
        rec(&c, "etcd: compacted", T0 + 20, Stream::Stdout),
        cut,
        rec(&b, "tab\there é", T0 + 50, Stream::Stdout),
    ]
}

fn sink(url: &str, body: &str) -> SinkConfig {
    let text = format!("sinks:\n  out:\n    url: {url}\n{body}");
    let mut c = Config::parse_str(&text, Path::new("test.yaml")).unwrap_or_else(|e| panic!("{e}"));
    c.sinks.remove("out").expect("sink out")
}

thread_local! {
    /// One client per test (each test runs on its own thread and runtime): building one reads
    /// the system's CA certificates.
    static CLIENT: reqwest::Client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
}

/// Sends `records` as the sink machinery would and reads the answer with the format.
async fn send(
    base: &str,
    format: &dyn Format,
    records: &[&Record],
    compression: Compression,
) -> Outcome {
    let client = CLIENT.with(Clone::clone);
    let mut body = Vec::new();
    format.encoder().encode(records, &mut body);
    let mut headers = HeaderMap::new();
    format.headers(&mut headers);
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    let body = match compression {
        Compression::None => body,
        // Loki reads snappy protobuf whatever the header says; Promtail sends none.
        Compression::Snappy => snap::raw::Encoder::new()
            .compress_vec(&body)
            .expect("snappy"),
        Compression::Gzip => {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&body).expect("gzip");
            gz.finish().expect("gzip")
        }
        Compression::Zstd => {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("zstd"));
            zstd::encode_all(body.as_slice(), 1).expect("zstd")
        }
    };
    let url = format!("{base}{}", format.path().unwrap_or(""));
    let resp = client
        .post(url)
        .headers(headers)
        .body(body)
        .send()
        .await
        .expect("the fake backend answers");
    let status = resp.status();
    let h = resp.headers().clone();
    let b = resp.bytes().await.expect("the fake backend's body");
    format.outcome(status, &h, &b, records.len())
}

fn refs(records: &[Record]) -> Vec<&Record> {
    records.iter().collect()
}

// ---- Loki ----

fn loki_format(url: &str, options: &str, metrics: &Metrics) -> loki::LokiFormat {
    let cfg = sink(url, &format!("    type: loki\n    loki: {options}\n"));
    loki::LokiFormat::new("out", &cfg, Some("self-node"), metrics).expect("loki format")
}

#[tokio::test]
async fn loki_protobuf_pushes_are_stored_per_stream_with_their_tenant() {
    let backend = Backend::start(Kind::Loki).await;
    let m = Metrics::new();
    let f = loki_format(&backend.url, "{tenant: team-a}", &m);
    let recs = records();
    let out = send(&backend.url, &f, &refs(&recs), f.default_compression()).await;
    assert_eq!(out, Outcome::Delivered);
    let got = backend.received();
    assert_eq!(got.requests.len(), 1);
    let req = &got.requests[0];
    assert_eq!(req.path, "/loki/api/v1/push");
    assert_eq!(req.tenant.as_deref(), Some("team-a"));
    assert_eq!(req.content_type.as_deref(), Some("application/x-protobuf"));
    assert_eq!(req.status, 204);
    assert_eq!(got.loki.len(), 5);
    let web: Vec<_> = got
        .loki
        .iter()
        .filter(|e| e.labels.contains_key("app"))
        .collect();
    let lines: Vec<&str> = web.iter().map(|e| e.line.as_str()).collect();
    assert_eq!(
        lines,
        ["warn: slow", "GET /cart \"200\"", "cut here", "tab\there é"],
        "one stream for both replicas, sorted by time"
    );
    let labels: Vec<(&str, &str)> = web[0]
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        labels,
        [
            ("app", "web"),
            ("container", "nginx"),
            ("namespace", "shop"),
            ("node", "node-a")
        ]
    );
    assert_eq!(web[0].time_ns, T0 + 10);
    assert_eq!(web[0].tenant.as_deref(), Some("team-a"));
    let md = |e: &backends::LokiEntry| -> Vec<String> {
        e.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect()
    };
    assert_eq!(
        md(web[0]),
        [
            "container_id=id-uid-2",
            "pod=web-2",
            "pod_uid=uid-2",
            "stream=stderr"
        ]
    );
    assert_eq!(
        md(web[2]),
        [
            "container_id=id-uid-1",
            "pod=web-1",
            "pod_uid=uid-1",
            "stream=stdout",
            "truncated=true"
        ]
    );
    let etcd = got
        .loki
        .iter()
        .find(|e| e.line == "etcd: compacted")
        .unwrap();
    assert_eq!(etcd.labels["node"], "self-node");
    assert_eq!(etcd.labels["namespace"], "kube-system");
    assert!(!etcd.labels.contains_key("app"));
}

#[tokio::test]
async fn loki_json_pushes_with_gzip_store_the_same_entries() {
    let backend = Backend::start(Kind::Loki).await;
    let m = Metrics::new();
    let proto = loki_format(&backend.url, "{}", &m);
    let json = loki_format(&backend.url, "{encoding: json}", &m);
    let recs = records();
    assert_eq!(
        send(&backend.url, &proto, &refs(&recs), Compression::Snappy).await,
        Outcome::Delivered
    );
    assert_eq!(
        send(&backend.url, &json, &refs(&recs), Compression::Gzip).await,
        Outcome::Delivered
    );
    let got = backend.received();
    assert_eq!(got.requests[1].content_encoding.as_deref(), Some("gzip"));
    assert_eq!(got.loki.len(), 10);
    assert_eq!(
        got.loki[..5],
        got.loki[5..],
        "JSON and protobuf carry the same entries"
    );
}

#[tokio::test]
async fn loki_rate_limits_are_retried_after_the_time_loki_asks() {
    let backend = Backend::start(Kind::Loki).await;
    backend.script([Answer::too_many(Some(3)), Answer::unavailable()]);
    let m = Metrics::new();
    let f = loki_format(&backend.url, "{}", &m);
    let recs = records();
    let r = refs(&recs);
    let first = send(&backend.url, &f, &r, Compression::Snappy).await;
    assert!(
        matches!(first, Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(3)),
        "{first:?}"
    );
    assert!(matches!(
        send(&backend.url, &f, &r, Compression::Snappy).await,
        Outcome::Retry { after: None, .. }
    ));
    assert_eq!(
        send(&backend.url, &f, &r, Compression::Snappy).await,
        Outcome::Delivered
    );
    assert_eq!(
        backend.received().loki.len(),
        5,
        "stored once, nothing lost"
    );
}

#[tokio::test]
async fn loki_refusing_old_entries_drops_only_those() {
    let backend = Backend::start(Kind::Loki).await;
    backend.script([Answer::LokiTooOld { ignored: 2 }]);
    let m = Metrics::new();
    let f = loki_format(&backend.url, "{}", &m);
    let recs = records();
    let out = send(&backend.url, &f, &refs(&recs), Compression::Snappy).await;
    assert!(
        matches!(&out, Outcome::Partial { retry, rejected: 2, reason, .. } if retry.is_empty() && reason.contains("too far behind")),
        "{out:?}"
    );
    assert_eq!(backend.received().loki.len(), 3);
}

// ---- Elasticsearch ----

fn es_format(url: &str, options: &str) -> elasticsearch::ElasticsearchFormat {
    let cfg = sink(
        url,
        &format!("    type: elasticsearch\n    elasticsearch: {options}\n"),
    );
    elasticsearch::ElasticsearchFormat::new("out", &cfg, Some("self-node")).expect("es format")
}

#[tokio::test]
async fn elasticsearch_bulk_documents_land_in_their_index() {
    let backend = Backend::start(Kind::Elasticsearch).await;
    let f = es_format(&backend.url, "{pipeline: k8s, api_key: aWQ6a2V5}");
    let recs = records();
    assert_eq!(
        send(&backend.url, &f, &refs(&recs), Compression::Zstd).await,
        Outcome::Delivered
    );
    let got = backend.received();
    let req = &got.requests[0];
    assert_eq!(req.path, "/_bulk");
    assert_eq!(
        req.query.as_deref(),
        Some("filter_path=errors,items.*.error,items.*.status")
    );
    assert_eq!(req.content_type.as_deref(), Some("application/x-ndjson"));
    assert_eq!(req.authorization.as_deref(), Some("ApiKey aWQ6a2V5"));
    assert_eq!(got.es.len(), 5);
    let d = &got.es[0];
    assert_eq!(
        (d.action.as_str(), d.index.as_str()),
        ("create", "logs-shop-2024.05.01")
    );
    assert_eq!(d.pipeline.as_deref(), Some("k8s"));
    assert_eq!(d.doc["@timestamp"], "2024-05-01T13:00:00.123456819Z");
    assert_eq!(d.doc["message"], "GET /cart \"200\"");
    assert_eq!(d.doc["stream"], "stdout");
    assert_eq!(d.doc["file"], "/var/log/pods/shop_web-1_uid-1/nginx/0.log");
    assert_eq!(
        d.doc["kubernetes"],
        serde_json::json!({
            "namespace": "shop", "pod": "web-1", "pod_uid": "uid-1", "container": "nginx",
            "container_id": "id-uid-1", "container_image": "nginx:1.27", "restart_count": 1,
            "node": "node-a", "labels": {"app_kubernetes_io/name": "web", "team": "payments"},
            "owner": {"kind": "ReplicaSet", "name": "web-5d8f"},
            "workload": {"kind": "Deployment", "name": "web"}
        })
    );
    assert_eq!(got.es[2].index, "logs-kube-system-2024.05.01");
    assert_eq!(got.es[3].doc["truncated"], true);
    assert_eq!(got.es[4].doc["message"], "tab\there é");
}

#[tokio::test]
async fn elasticsearch_retries_only_refused_items_and_drops_mapping_errors() {
    let backend = Backend::start(Kind::Elasticsearch).await;
    backend.script([Answer::BulkItems(vec![
        (1, 429, "es_rejected_execution_exception".into()),
        (3, 400, "mapper_parsing_exception".into()),
        (4, 503, "unavailable_shards_exception".into()),
    ])]);
    let f = es_format(&backend.url, "{}");
    let recs = records();
    let out = send(&backend.url, &f, &refs(&recs), Compression::Gzip).await;
    let Outcome::Partial {
        retry,
        rejected,
        reason,
        ..
    } = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(retry, [1, 4]);
    assert_eq!(rejected, 1);
    assert!(reason.contains("mapper_parsing_exception"), "{reason}");
    let again: Vec<&Record> = retry.iter().map(|&i| &recs[i]).collect();
    assert_eq!(
        send(&backend.url, &f, &again, Compression::Gzip).await,
        Outcome::Delivered
    );
    let messages: Vec<String> = backend
        .received()
        .es
        .iter()
        .map(|d| d.doc["message"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        messages,
        [
            "GET /cart \"200\"",
            "etcd: compacted",
            "warn: slow",
            "tab\there é"
        ],
        "each accepted once; the mapping error is not retried"
    );
}

#[tokio::test]
async fn elasticsearch_down_for_a_while_loses_nothing() {
    let backend = Backend::start(Kind::Elasticsearch).await;
    backend.script([
        Answer::unavailable(),
        Answer::unavailable(),
        Answer::too_many(Some(1)),
    ]);
    let f = es_format(&backend.url, "{}");
    let recs = records();
    let r = refs(&recs);
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        let out = send(&backend.url, &f, &r, Compression::None).await;
        let done = out == Outcome::Delivered;
        outcomes.push(out);
        if done {
            break;
        }
    }
    assert_eq!(outcomes.len(), 4, "{outcomes:?}");
    assert!(
        outcomes[..3]
            .iter()
            .all(|o| matches!(o, Outcome::Retry { .. }))
    );
    assert_eq!(backend.received().es.len(), 5);
}

#[tokio::test]
async fn opensearch_style_type_names_are_refused_as_a_whole() {
    let backend = Backend::start(Kind::Elasticsearch).await;
    let f = es_format(&backend.url, "{suppress_type_name: false}");
    let recs = records();
    let out = send(&backend.url, &f, &refs(&recs), Compression::None).await;
    assert!(
        matches!(&out, Outcome::Rejected { reason } if reason.contains("unknown parameter [_type]")),
        "{out:?}"
    );
}

// ---- OTLP ----

fn otlp_format(url: &str, options: &str) -> otlp::OtlpFormat {
    let cfg = sink(url, &format!("    type: otlp\n    otlp: {options}\n"));
    otlp::OtlpFormat::new("out", &cfg, Some("self-node")).expect("otlp format")
}

#[tokio::test]
async fn otlp_exports_carry_k8s_resources_in_both_encodings() {
    let backend = Backend::start(Kind::Otlp).await;
    let recs = records();
    for options in ["{}", "{encoding: json}"] {
        let f = otlp_format(&backend.url, options);
        assert_eq!(
            send(&backend.url, &f, &refs(&recs), f.default_compression()).await,
            Outcome::Delivered
        );
    }
    let got = backend.received();
    assert_eq!(got.requests.len(), 2);
    assert!(
        got.requests
            .iter()
            .all(|r| r.path == "/v1/logs" && r.content_encoding.as_deref() == Some("gzip"))
    );
    assert_eq!(got.otlp.len(), 10);
    let (proto, json) = got.otlp.split_at(5);
    for (p, j) in proto.iter().zip(json) {
        assert_eq!(p.resource, j.resource);
        assert_eq!(
            (p.time_ns, &p.body, &p.attributes),
            (j.time_ns, &j.body, &j.attributes)
        );
    }
    let first = &proto[0];
    assert_eq!(first.body, "GET /cart \"200\"");
    assert_eq!(first.time_ns, (T0 + 30) as u64);
    assert!(first.observed_ns > first.time_ns);
    assert_eq!(
        first.severity, 0,
        "no severity, like the filelog container parser"
    );
    assert_eq!(first.attributes["log.iostream"], "stdout");
    assert_eq!(
        first.attributes["log.file.path"],
        "/var/log/pods/shop_web-1_uid-1/nginx/0.log"
    );
    let r = &first.resource;
    for (k, v) in [
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "web-1"),
        ("k8s.pod.uid", "uid-1"),
        ("k8s.container.name", "nginx"),
        ("k8s.container.restart_count", "1"),
        ("k8s.node.name", "node-a"),
        ("k8s.deployment.name", "web"),
        ("k8s.replicaset.name", "web-5d8f"),
        ("container.id", "id-uid-1"),
        ("container.image.name", "nginx"),
        ("container.image.tag", "1.27"),
        ("service.name", "web"),
        ("k8s.pod.label.team", "payments"),
    ] {
        assert_eq!(r.get(k).map(String::as_str), Some(v), "{k}");
    }
    let cut = proto.iter().find(|p| p.body == "cut here").unwrap();
    assert_eq!(cut.attributes["loglet.truncated"], "true");
    let etcd = proto.iter().find(|p| p.body == "etcd: compacted").unwrap();
    assert_eq!(etcd.resource["k8s.node.name"], "self-node");
}

#[tokio::test]
async fn otlp_partial_success_is_final_and_counted() {
    let backend = Backend::start(Kind::Otlp).await;
    for options in ["{}", "{encoding: json}"] {
        backend.script([Answer::OtlpPartial {
            rejected: 2,
            message: "timestamp too old".into(),
        }]);
        let f = otlp_format(&backend.url, options);
        let recs = records();
        let out = send(&backend.url, &f, &refs(&recs), Compression::Gzip).await;
        assert_eq!(
            out,
            Outcome::Partial {
                retry: vec![],
                rejected: 2,
                after: None,
                reason: "otlp partial success, 2 rejected: timestamp too old".into()
            },
            "{options}"
        );
    }
    assert_eq!(backend.received().otlp.len(), 6);
}

#[tokio::test]
async fn otlp_retries_only_what_the_spec_calls_retryable() {
    let backend = Backend::start(Kind::Otlp).await;
    let status = |status: u16| Answer::Status {
        status,
        retry_after: Some(2),
        body: format!("answer {status}"),
    };
    backend.script([status(429), status(503), status(500), status(400)]);
    let f = otlp_format(&backend.url, "{}");
    let recs = records();
    let r = refs(&recs);
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(send(&backend.url, &f, &r, Compression::Gzip).await);
    }
    assert!(
        matches!(&got[0], Outcome::Retry { after: Some(d), .. } if *d == Duration::from_secs(2))
    );
    assert!(matches!(&got[1], Outcome::Retry { .. }));
    assert_eq!(
        got[2],
        Outcome::Rejected {
            reason: "otlp answered 500 Internal Server Error: answer 500".into()
        }
    );
    assert_eq!(
        got[3],
        Outcome::Rejected {
            reason: "otlp answered 400 Bad Request: answer 400".into()
        }
    );
}

// ---- Splunk HEC ----

fn hec_format(url: &str, options: &str) -> splunk_hec::SplunkHecFormat {
    let cfg = sink(
        url,
        &format!("    type: splunk_hec\n    splunk_hec: {options}\n"),
    );
    splunk_hec::SplunkHecFormat::new("out", &cfg, Some("self-node")).expect("hec format")
}

#[tokio::test]
async fn hec_events_are_indexed_with_their_fields() {
    let backend = Backend::start(Kind::SplunkHec).await;
    let f = hec_format(&backend.url, "{token: test-token, index: k8s}");
    let mut recs = records();
    recs.push(rec(&bare_source(), "   ", T0, Stream::Stdout));
    assert_eq!(
        send(&backend.url, &f, &refs(&recs), Compression::Gzip).await,
        Outcome::Delivered
    );
    let got = backend.received();
    let req = &got.requests[0];
    assert_eq!(req.path, "/services/collector/event");
    assert_eq!(req.authorization.as_deref(), Some("Splunk test-token"));
    assert_eq!(req.channel.as_deref().map(str::len), Some(36));
    assert_eq!(got.hec.len(), 5, "the blank line is not sent");
    assert_eq!(
        got.hec[1],
        serde_json::json!({
            "time": 1714568400.123,
            "event": "warn: slow",
            "host": "node-a",
            "source": "/var/log/pods/shop_web-2_uid-2/nginx/0.log",
            "sourcetype": "kube:container:nginx",
            "index": "k8s",
            "fields": {"namespace":"shop","pod":"web-2","pod_uid":"uid-2","container":"nginx",
                       "container_id":"id-uid-2","node":"node-a","stream":"stderr"}
        })
    );
    assert_eq!(got.hec[2]["host"], "self-node");
}

#[tokio::test]
async fn hec_codes_decide_retry_or_drop() {
    let backend = Backend::start(Kind::SplunkHec).await;
    backend.script([Answer::HecCode(9), Answer::HecCode(18), Answer::HecCode(7)]);
    let f = hec_format(&backend.url, "{token: test-token}");
    let recs = records();
    let r = refs(&recs);
    assert!(matches!(
        send(&backend.url, &f, &r, Compression::None).await,
        Outcome::Retry { .. }
    ));
    assert!(matches!(
        send(&backend.url, &f, &r, Compression::None).await,
        Outcome::Retry { .. }
    ));
    let out = send(&backend.url, &f, &r, Compression::None).await;
    assert!(
        matches!(&out, Outcome::Rejected { reason } if reason.contains("code 7 (Incorrect index)")),
        "{out:?}"
    );
    let wrong = hec_format(&backend.url, "{token: wrong}");
    let out = send(&backend.url, &wrong, &r, Compression::None).await;
    assert!(
        matches!(&out, Outcome::Rejected { reason } if reason.contains("403") && reason.contains("code 4")),
        "{out:?}"
    );
    assert_eq!(
        send(&backend.url, &f, &r, Compression::None).await,
        Outcome::Delivered
    );
    assert_eq!(backend.received().hec.len(), 5);
}

// ---- Whole sinks ----

/// A sink started from its config as loglet's pipeline starts it (`sink::start`: its format, its
/// transport with TLS and auth, batching, retries and metrics), fed batches whose
/// acknowledgements a checkpoint store keeps.
struct Running {
    sink: loglet::sink::Sink,
    metrics: Arc<Metrics>,
    checkpoints: Arc<Checkpoints>,
    _state: tempfile::TempDir,
}

impl Running {
    fn start(cfg: &SinkConfig) -> Result<Running, StartError> {
        let metrics = Metrics::new();
        let state = tempfile::tempdir().expect("temp dir");
        let (checkpoints, _) =
            Checkpoints::open(state.path(), metrics.clone()).expect("checkpoint store");
        let sink = loglet::sink::start("out", 0, cfg, Some("self-node"), 2, metrics.clone())?;
        Ok(Running {
            sink,
            metrics,
            checkpoints,
            _state: state,
        })
    }

    async fn send(&self, records: Vec<Record>) {
        let ack = self.checkpoints.register(Vec::new(), records.len(), 1);
        self.sink
            .queue
            .send(Arc::new(Batch { records, ack }))
            .await
            .expect("the sink runs");
    }

    /// Every batch sent was acknowledged: delivered, or dropped for good.
    fn all_acked(&self) -> bool {
        self.checkpoints.pending_batches() == 0
    }

    /// Attempts that failed without an answer (`loglet_sink_errors_total` of the transport's
    /// labels).
    fn failed_attempts(&self) -> u64 {
        ["connect", "request", "timeout"]
            .iter()
            .map(|l| {
                self.metrics
                    .sink_errors
                    .with_label_values(&["out", l])
                    .get()
            })
            .sum()
    }

    fn requests(&self, result: &str) -> u64 {
        self.metrics
            .sink_requests
            .with_label_values(&["out", result])
            .get()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.sink.task.abort();
    }
}

/// Polls `done` every 10 ms for at most `within`; whether it came true.
async fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..within.as_millis() / 10 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

const WITHIN: Duration = Duration::from_secs(30);

/// Options that make a sink send at once and retry fast unless the backend asks for a wait: a
/// test of `Retry-After` fails when the wait is not honoured.
const QUICK: &str = "    batch: {timeout: 10ms}\n    request: {retry_initial_backoff: 10ms, retry_max_backoff: 20ms}\n";

// ---- Compression ----

#[tokio::test]
async fn compression_is_the_formats_own_unless_the_config_chooses() {
    let cases = [
        // OTLP gzips by default, as the Collector's exporter does, and `none` turns it off.
        (Kind::Otlp, "otlp", "", Some("gzip")),
        (Kind::Otlp, "otlp", "none", None),
        (Kind::Otlp, "otlp", "zstd", Some("zstd")),
        (Kind::Elasticsearch, "elasticsearch", "", None),
        (Kind::Elasticsearch, "elasticsearch", "gzip", Some("gzip")),
        (Kind::Http, "http", "zstd", Some("zstd")),
        // Loki's protobuf is snappy whatever is said (without Content-Encoding, as Loki expects);
        // the fake refuses a push that is not.
        (Kind::Loki, "loki", "none", None),
    ];
    for (kind, sink_type, compression, want) in cases {
        let backend = Backend::start(kind).await;
        let mut options = format!("    type: {sink_type}\n{QUICK}");
        if !compression.is_empty() {
            options.push_str(&format!("    compression: {compression}\n"));
        }
        let s = Running::start(&sink(&backend.url, &options)).unwrap();
        s.send(records()).await;
        let case = format!("{sink_type} {compression:?}");
        assert!(eventually(WITHIN, || s.all_acked()).await, "{case}");
        let got = backend.received();
        assert_eq!(got.stored(), 5, "{case}");
        assert_eq!(got.requests[0].content_encoding.as_deref(), want, "{case}");
    }
}

// ---- Request size ----

#[tokio::test]
async fn batches_gathered_past_the_limits_go_in_requests_within_them() {
    let backend = Backend::start(Kind::Http).await;
    // Two batches of 5 records of 100-byte lines, to a sink that takes at most 300 bytes of
    // lines per request: each batch is past the limit, and goes as requests of 3 and 2.
    let options = "    type: http\n    batch: {max_bytes: 300, timeout: 200ms}\n";
    let s = Running::start(&sink(&backend.url, options)).unwrap();
    let source = web_source("web-1", "uid-1");
    let line = |i: usize| format!("{i:0100}");
    for b in 0..2 {
        let batch = (0..5)
            .map(|i| rec(&source, &line(b * 5 + i), T0 + i as i64, Stream::Stdout))
            .collect();
        s.send(batch).await;
    }
    assert!(eventually(WITHIN, || s.all_acked()).await);
    let got = backend.received();
    let sizes: Vec<usize> = got.requests.iter().map(|r| r.body_bytes).collect();
    assert_eq!(got.stored(), 10, "{sizes:?}");
    assert_eq!(got.requests.len(), 4, "{sizes:?}");
    let mut messages: Vec<String> = got
        .http
        .iter()
        .map(|v| v["message"].as_str().unwrap().to_string())
        .collect();
    messages.sort();
    assert_eq!(messages, (0..10).map(line).collect::<Vec<_>>());
    assert_eq!(s.requests("delivered"), 4);
}

// ---- Retry-After ----

#[tokio::test]
async fn a_retry_after_in_seconds_holds_the_retry_back_that_long() {
    let backend = Backend::start(Kind::Loki).await;
    backend.script([Answer::too_many(Some(2))]);
    let s = Running::start(&sink(&backend.url, &format!("    type: loki\n{QUICK}"))).unwrap();
    s.send(records()).await;
    assert!(eventually(WITHIN, || s.all_acked()).await);
    let got = backend.received();
    let statuses: Vec<u16> = got.requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 204]);
    let waited = got.requests[1].arrived - got.requests[0].arrived;
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    assert_eq!(got.loki.len(), 5);
}

#[tokio::test]
async fn a_retry_after_date_holds_the_retry_back_until_that_date() {
    let backend = Backend::start(Kind::Otlp).await;
    let date = std::time::SystemTime::now() + Duration::from_secs(3);
    // What the header carries: the date to the second.
    let sent = httpdate::parse_http_date(&httpdate::fmt_http_date(date)).unwrap();
    backend.script([Answer::unavailable().retry_after(RetryAfter::Date(date))]);
    let s = Running::start(&sink(&backend.url, &format!("    type: otlp\n{QUICK}"))).unwrap();
    s.send(records()).await;
    assert!(eventually(WITHIN, || s.all_acked()).await);
    let got = backend.received();
    let statuses: Vec<u16> = got.requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 200]);
    let retried = got.requests[1].arrived_wall;
    assert!(
        retried >= sent,
        "retried {:?} before the date asked",
        sent.duration_since(retried).unwrap_or_default()
    );
    assert_eq!(got.otlp.len(), 5);
}

#[tokio::test]
async fn elasticsearch_items_refused_with_a_retry_after_are_retried_no_sooner() {
    let backend = Backend::start(Kind::Elasticsearch).await;
    backend.script([
        Answer::BulkItems(vec![(1, 429, "es_rejected_execution_exception".into())])
            .retry_after(RetryAfter::Seconds(2)),
    ]);
    let s = Running::start(&sink(
        &backend.url,
        &format!("    type: elasticsearch\n{QUICK}"),
    ))
    .unwrap();
    s.send(records()).await;
    assert!(eventually(WITHIN, || s.all_acked()).await);
    let got = backend.received();
    assert_eq!(got.requests.len(), 2);
    assert_eq!(s.requests("partial"), 1);
    let waited = got.requests[1].arrived - got.requests[0].arrived;
    assert!(
        waited >= Duration::from_secs(2),
        "items retried after {waited:?}"
    );
    let mut messages: Vec<&str> = got
        .es
        .iter()
        .map(|d| d.doc["message"].as_str().unwrap_or_default())
        .collect();
    messages.sort();
    assert_eq!(
        messages,
        [
            "GET /cart \"200\"",
            "cut here",
            "etcd: compacted",
            "tab\there é",
            "warn: slow"
        ],
        "each stored once"
    );
}

// ---- Routes ----

/// `source` with its routing decided by `routes`, as the tailer hands it on.
fn routed(mut source: Arc<Source>, routes: &Routes) -> Arc<Source> {
    let decision = routes.decide(&source);
    Arc::get_mut(&mut source).expect("not shared yet").routing = Arc::new(decision);
    source
}

#[tokio::test]
async fn hec_events_take_the_index_source_and_sourcetype_of_their_route() {
    let backend = Backend::start(Kind::SplunkHec).await;
    let text = format!(
        "sinks:
  out:
    type: splunk_hec
    url: {}
    splunk_hec: {{token: test-token, index: main}}
{QUICK}routes:
  default: {{sinks: [out]}}
  teams:
    sinks: [out]
    index: 'k8s-{{namespace}}'
    source: 'k8s:{{namespace}}/{{pod}}'
    sourcetype: 'kube:{{app}}'
    allowed_sourcetypes: ['{{namespace}}:*']
",
        backend.url
    );
    let config = Config::parse_str(&text, Path::new("test.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let routes = Routes::new(&config, None, Metrics::new());
    let teams = [("loglet.io/route", "teams")];
    let chosen = routed(
        annotated_web_source(
            "web-1",
            "uid-1",
            &[("loglet.io/sourcetype", "shop:access")],
            &teams,
        ),
        &routes,
    );
    let plain = routed(annotated_web_source("web-2", "uid-2", &[], &teams), &routes);
    // Another namespace's sourcetype: refused, the route's own used.
    let refused = routed(
        annotated_web_source(
            "web-3",
            "uid-3",
            &[("loglet.io/sourcetype", "pay:access")],
            &teams,
        ),
        &routes,
    );
    let default = routed(bare_source(), &routes);
    let s = Running::start(&config.sinks["out"]).unwrap();
    s.send(vec![
        rec(&chosen, "one", T0, Stream::Stdout),
        rec(&plain, "two", T0, Stream::Stdout),
        rec(&refused, "three", T0, Stream::Stdout),
        rec(&default, "four", T0, Stream::Stdout),
    ])
    .await;
    assert!(eventually(WITHIN, || s.all_acked()).await);
    let got = backend.received();
    let meta: Vec<(&str, &str, &str, &str)> = got
        .hec
        .iter()
        .map(|e| {
            let f = |k: &str| e[k].as_str().unwrap_or_default();
            (f("event"), f("index"), f("source"), f("sourcetype"))
        })
        .collect();
    assert_eq!(
        meta,
        [
            ("one", "k8s-shop", "k8s:shop/web-1", "shop:access"),
            ("two", "k8s-shop", "k8s:shop/web-2", "kube:web"),
            ("three", "k8s-shop", "k8s:shop/web-3", "kube:web"),
            (
                "four",
                "main",
                "/var/log/pods/kube-system_etcd-n1_hash/etcd/0.log",
                "kube:container:etcd"
            ),
        ]
    );
}

// ---- TLS, through the sink's own transport ----

/// The test PKI's files, as a sink's `tls:` block names them.
struct PkiFiles {
    pki: TestPki,
    ca: String,
    cert: String,
    key: String,
    dir: tempfile::TempDir,
}

fn pki_files() -> PkiFiles {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let [ca, cert, key] = pki.write(dir.path()).map(|p| p.display().to_string());
    PkiFiles {
        pki,
        ca,
        cert,
        key,
        dir,
    }
}

#[tokio::test]
async fn tls_backends_are_trusted_through_the_configured_ca_file() {
    let f = pki_files();
    let backend = Backend::start_tls(Kind::Loki, &f.pki, false).await;
    assert!(backend.url.starts_with("https://127.0.0.1:"));
    let loki = |tls: &str| {
        sink(
            &backend.url,
            &format!("    type: loki\n{QUICK}    tls: {tls}\n"),
        )
    };

    let trusted = Running::start(&loki(&format!("{{ca_file: {}}}", f.ca))).unwrap();
    trusted.send(records()).await;
    assert!(eventually(WITHIN, || trusted.all_acked()).await);
    assert_eq!(backend.received().loki.len(), 5);
    assert_eq!(trusted.failed_attempts(), 0);
    drop(trusted);

    // The system's roots alone do not know the test CA: refused, counted, retried, nothing
    // delivered.
    let untrusted = Running::start(&loki("{}")).unwrap();
    untrusted.send(records()).await;
    assert!(eventually(WITHIN, || untrusted.failed_attempts() >= 2).await);
    assert!(
        untrusted
            .metrics
            .sink_errors
            .with_label_values(&["out", "connect"])
            .get()
            >= 2,
        "a failed handshake is a connection error"
    );
    assert!(!untrusted.all_acked());
    assert_eq!(untrusted.requests("delivered"), 0);
    drop(untrusted);
    // The server counts a failed handshake in its own task, maybe after the client gave up.
    assert!(backend.wait_until(WITHIN, |r| r.tls_failures >= 2).await);
    assert_eq!(backend.received().loki.len(), 5, "nothing more stored");

    // Verification off: delivered without the CA.
    let insecure = Running::start(&loki("{insecure_skip_verify: true}")).unwrap();
    insecure.send(records()).await;
    assert!(eventually(WITHIN, || insecure.all_acked()).await);
    assert_eq!(backend.received().loki.len(), 10);
}

#[tokio::test]
async fn mutual_tls_backends_take_the_configured_client_certificate() {
    let f = pki_files();
    let backend = Backend::start_tls(Kind::SplunkHec, &f.pki, true).await;
    let hec = |tls: &str| {
        sink(
            &backend.url,
            &format!(
                "    type: splunk_hec\n    splunk_hec: {{token: test-token}}\n{QUICK}    tls: {tls}\n"
            ),
        )
    };

    let without = Running::start(&hec(&format!("{{ca_file: {}}}", f.ca))).unwrap();
    without.send(records()).await;
    assert!(eventually(WITHIN, || without.failed_attempts() >= 2).await);
    assert!(!without.all_acked());
    drop(without);
    assert!(backend.wait_until(WITHIN, |r| r.tls_failures >= 1).await);
    assert!(backend.received().hec.is_empty());

    let with = Running::start(&hec(&format!(
        "{{ca_file: {}, cert_file: {}, key_file: {}}}",
        f.ca, f.cert, f.key
    )))
    .unwrap();
    with.send(records()).await;
    assert!(eventually(WITHIN, || with.all_acked()).await);
    assert_eq!(backend.received().hec.len(), 5);
    assert_eq!(with.requests("delivered"), 1);
}

#[tokio::test]
async fn unusable_tls_files_stop_the_sink_at_start_naming_the_file() {
    let f = pki_files();
    let write = |name: &str, text: &str| {
        let p = f.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let not_pem = write("not-pem.pem", "this is no certificate\n");
    let bad_base64 = write(
        "bad-base64.pem",
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    let bad_der = write(
        "bad-der.pem",
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    );
    let other_key = write(
        "other-key.pem",
        &rcgen::KeyPair::generate().unwrap().serialize_pem(),
    );
    let cases = [
        (
            format!("{{ca_file: {not_pem}}}"),
            &not_pem,
            "no certificate found",
        ),
        (format!("{{ca_file: {bad_base64}}}"), &bad_base64, ""),
        (format!("{{ca_file: {bad_der}}}"), &bad_der, "certificate 1"),
        (
            format!("{{cert_file: {bad_der}, key_file: {}}}", f.key),
            &bad_der,
            "certificate 1",
        ),
        (
            format!("{{cert_file: {}, key_file: {}}}", f.cert, f.ca),
            &f.ca,
            "",
        ),
        (
            format!("{{cert_file: {}, key_file: {other_key}}}", f.cert),
            &other_key,
            "is it the key of",
        ),
    ];
    for (tls, file, detail) in &cases {
        let cfg = sink(
            "https://127.0.0.1:1",
            &format!("    type: loki\n    tls: {tls}\n"),
        );
        match Running::start(&cfg) {
            Err(StartError::Transport(e @ TransportError::BadPem { .. })) => {
                let text = e.to_string();
                assert!(
                    text.contains(file.as_str()) && text.contains(detail),
                    "{tls}: {text}"
                );
            }
            Err(e) => panic!("{tls}: not a PEM error: {e}"),
            Ok(_) => panic!("{tls}: the sink started"),
        }
    }
    let missing = f.dir.path().join("missing.pem");
    let cfg = sink(
        "https://127.0.0.1:1",
        &format!(
            "    type: loki\n    tls: {{ca_file: {}}}\n",
            missing.display()
        ),
    );
    assert!(matches!(
        Running::start(&cfg),
        Err(StartError::Transport(TransportError::ReadFile { .. }))
    ));
}

// ---- Auth ----

#[tokio::test]
async fn a_changed_bearer_token_file_is_sent_from_the_next_request_on() {
    let backend = Backend::start(Kind::Http).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token\n").unwrap();
    let cfg = sink(
        &format!("{}/ingest", backend.url),
        &format!(
            "    type: http\n{QUICK}    auth: {{bearer: {{token_file: {}}}}}\n",
            token.display()
        ),
    );
    let s = Running::start(&cfg).unwrap();
    let mut first = records();
    let second = first.split_off(2);
    s.send(first).await;
    assert!(eventually(WITHIN, || s.all_acked()).await);

    // A projected token is replaced in place; make sure its modification time moves even on a
    // filesystem with coarse timestamps.
    std::fs::write(&token, "second-token\n").unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(10);
    std::fs::File::options()
        .write(true)
        .open(&token)
        .unwrap()
        .set_modified(later)
        .unwrap();
    s.send(second).await;
    assert!(eventually(WITHIN, || s.all_acked()).await);

    let got = backend.received();
    let auth: Vec<Option<&str>> = got
        .requests
        .iter()
        .map(|r| r.authorization.as_deref())
        .collect();
    assert_eq!(
        auth,
        [Some("Bearer first-token"), Some("Bearer second-token")]
    );
    assert!(got.requests.iter().all(|r| r.path == "/ingest"));
    assert_eq!(got.http.len(), 5);
}

// ---- docs/sinks.md ----

fn sinks_doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/sinks.md"))
        .expect("docs/sinks.md")
}

/// The section `## <name>` of docs/sinks.md, up to the next one.
fn section<'a>(doc: &'a str, name: &str) -> &'a str {
    let section = doc
        .split(&format!("\n## {name}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("docs/sinks.md has no section {name}"));
    section.split("\n## ").next().unwrap_or(section)
}

/// The ```yaml blocks of a text.
fn yaml_blocks(text: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("```yaml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").expect("closed code block");
        blocks.push(&body[..end]);
        rest = &body[end..];
    }
    blocks
}

#[test]
fn every_sink_type_has_a_section_with_a_valid_example_of_its_own() {
    let doc = sinks_doc();
    for kind in [
        "loki",
        "elasticsearch",
        "otlp",
        "splunk_hec",
        "http",
        "stdout",
    ] {
        let examples = yaml_blocks(section(&doc, kind));
        assert!(!examples.is_empty(), "## {kind} has no example");
        for (i, text) in examples.iter().enumerate() {
            let config = Config::parse_str(text, Path::new("docs/sinks.md"))
                .unwrap_or_else(|e| panic!("## {kind}, example {}: {e}", i + 1));
            assert!(
                config.sinks.values().any(|s| s.kind.as_str() == kind),
                "## {kind}, example {}: no {kind} sink",
                i + 1
            );
        }
    }
}

#[test]
fn every_backend_option_is_documented_with_its_default() {
    use loglet::config::{ElasticsearchOptions, LokiOptions, OtlpOptions, SplunkHecOptions};
    let doc = sinks_doc();
    let options = [
        ("loki", serde_json::to_value(LokiOptions::default())),
        (
            "elasticsearch",
            serde_json::to_value(ElasticsearchOptions::default()),
        ),
        ("otlp", serde_json::to_value(OtlpOptions::default())),
        (
            "splunk_hec",
            serde_json::to_value(SplunkHecOptions::default()),
        ),
    ];
    for (sink, value) in options {
        let section = section(&doc, sink);
        let value = value.expect("options serialize");
        for key in value.as_object().expect("an object").keys() {
            assert!(
                section.contains(&format!("| `{key}` |")),
                "{sink}.{key} is not in the options table of docs/sinks.md"
            );
        }
    }
}

/// Every leaf key of a sink's serialized config, dotted: `batch.max_records`, `auth.bearer.token`.
fn sink_keys(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    for (k, child) in v.as_object().expect("an object") {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match child {
            serde_json::Value::Object(m) if !m.is_empty() && k != "headers" => {
                sink_keys(child, &key, out)
            }
            _ => out.push(key),
        }
    }
}

#[test]
fn the_http_and_stdout_sections_document_every_option_they_take() {
    let doc = sinks_doc();
    let mut keys = Vec::new();
    for auth in ["{basic: {user: u, password: p}}", "{bearer: {token: t}}"] {
        let cfg = sink(
            "http://127.0.0.1:1/",
            &format!("    type: http\n    auth: {auth}\n    headers: {{X-A: b}}\n"),
        );
        sink_keys(&serde_json::to_value(&cfg).unwrap(), "", &mut keys);
    }
    // The other types' blocks, and what a stdout sink does not take (refused by the config).
    let others = ["loki", "elasticsearch", "otlp", "splunk_hec"];
    let not_stdout = ["url", "tls.", "auth.", "headers"];
    keys.retain(|k| k != "type" && !others.contains(&k.as_str()));
    keys.sort();
    keys.dedup();
    assert!(keys.len() > 15, "{keys:?}");
    for (kind, keys) in [
        ("http", keys.clone()),
        (
            "stdout",
            keys.iter()
                .filter(|k| !not_stdout.iter().any(|n| k.starts_with(n)))
                .cloned()
                .collect(),
        ),
    ] {
        let section = section(&doc, kind);
        for key in keys {
            assert!(
                section.contains(&format!("| `{key}` |")),
                "`{key}` is not in the options table of ## {kind} in docs/sinks.md"
            );
        }
    }
}
