//! End to end through the real binary: a known set of lines on a kubelet tree, shipped to the fake
//! Elasticsearch of tests/common/backends.rs, then `/metrics` scraped and parsed whole with a
//! Prometheus text-format parser (`openmetrics-parser`, which rejects what a Prometheus server
//! would not ingest). The exposition must be well formed (every family with `# HELP` and
//! `# TYPE`, types as the names say and as docs/metrics.md says), its counters must equal what the
//! test sent and what the backend saw, and no label value may carry log content.

#[path = "common/backends.rs"]
mod backends;
#[path = "common/loglet.rs"]
mod loglet;
#[path = "common/metrics_doc.rs"]
mod metrics_doc;
#[path = "common/node.rs"]
mod node;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use backends::{Answer, Backend, Kind};
use loglet::{Loglet, config, wait_until};
use node::Node;
use openmetrics_parser::{MetricsExposition, PrometheusType, PrometheusValue};

/// In every line the test writes, so that `/metrics` can be searched for log content.
const MARKER: &str = "zq7-marker-5e1f";

/// Documented metrics this run does not exercise. Client libraries expose a labelled family only
/// once it has a series, so these are absent here; each is covered where its cause is set up.
const NOT_EXERCISED: &[(&str, &str)] = &[
    (
        "loglet_lost_bytes_total",
        "files deleted unread: tests/tail_e2e.rs",
    ),
    ("loglet_rotations_total", "rotations: tests/tail_e2e.rs"),
    (
        "loglet_read_errors_total",
        "unreadable files: tests/faults_e2e.rs",
    ),
    (
        "loglet_sink_dropped_records_total",
        "records refused: tests/sink_formats.rs",
    ),
    (
        "loglet_annotation_errors_total",
        "Pod annotations: tests/route_e2e.rs",
    ),
    (
        "loglet_records_discarded_total",
        "exclusions, rate limits: tests/route_e2e.rs",
    ),
    (
        "loglet_rate_limited_records_total",
        "rate limits: tests/route_e2e.rs",
    ),
    ("loglet_parsed_lines_total", "parsers: tests/route_e2e.rs"),
    (
        "loglet_loki_label_sets",
        "a Loki sink: tests/sink_formats.rs",
    ),
    (
        "loglet_loki_labels_folded_total",
        "a Loki sink: tests/sink_formats.rs",
    ),
    (
        "loglet_kube_watch_events_total",
        "the watcher: tests/kube_e2e.rs",
    ),
    ("loglet_kube_lists_total", "the watcher: tests/kube_e2e.rs"),
    (
        "loglet_kube_watch_errors_total",
        "the watcher: tests/kube_e2e.rs",
    ),
    ("loglet_kube_watch_up", "the watcher: tests/kube_e2e.rs"),
    (
        "loglet_kube_last_sync_timestamp_seconds",
        "the watcher: tests/kube_e2e.rs",
    ),
];

type Exposition = MetricsExposition<PrometheusType, PrometheusValue>;

fn scrape(l: &Loglet) -> (String, Exposition) {
    let (status, body) = l.get("/metrics");
    assert_eq!(status, 200, "GET /metrics");
    let parsed = openmetrics_parser::prometheus::parse_prometheus(&body)
        .unwrap_or_else(|e| panic!("/metrics is not valid Prometheus text: {e:?}\n{body}"));
    (body, parsed)
}

/// Every series of the exposition: `(family, labels, value)`; a histogram's value is its count.
fn series(exp: &Exposition) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for (name, family) in &exp.families {
        for s in family.iter_samples() {
            let labels: BTreeMap<String, String> = s
                .get_labelset()
                .expect("a sample's labels")
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let value = match &s.value {
                PrometheusValue::Counter(c) => c.value.as_f64(),
                PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
                PrometheusValue::Histogram(h) => h.count.map_or(f64::NAN, |c| c as f64),
                PrometheusValue::Summary(s) => s.count.map_or(f64::NAN, |c| c as f64),
            };
            out.push((name.clone(), labels, value));
        }
    }
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

/// The value of the series of `family` with exactly `labels`, or 0 when it is absent (a labelled
/// series that never counted).
fn value(exp: &Exposition, family: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    series(exp)
        .into_iter()
        .find(|(n, l, _)| n == family && *l == want)
        .map_or(0.0, |(_, _, v)| v)
}

fn type_name(t: &PrometheusType) -> &'static str {
    match t {
        PrometheusType::Counter => "counter",
        PrometheusType::Gauge => "gauge",
        PrometheusType::Histogram => "histogram",
        PrometheusType::Summary => "summary",
        PrometheusType::Unknown => "untyped",
    }
}

/// The exposition's structure: HELP and TYPE for every family, in the text and in the parse;
/// types as the naming conventions say; histograms whole.
fn check_structure(body: &str, exp: &Exposition) {
    let mut help = BTreeMap::new();
    let mut types = BTreeMap::new();
    for line in body.lines() {
        for (prefix, map) in [("# HELP ", &mut help), ("# TYPE ", &mut types)] {
            if let Some(rest) = line.strip_prefix(prefix) {
                let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let old = map.insert(name.to_string(), text.to_string());
                assert!(old.is_none(), "{prefix}{name} twice");
            }
        }
    }
    assert!(!exp.families.is_empty(), "no metric families");
    for (name, family) in &exp.families {
        assert!(name.starts_with("loglet_"), "{name}: not a loglet_ name");
        assert!(
            help.get(name).is_some_and(|h| !h.trim().is_empty()) && !family.help.is_empty(),
            "{name}: no # HELP"
        );
        let t = type_name(&family.family_type);
        assert_eq!(
            types.get(name).map(String::as_str),
            Some(t),
            "{name}: # TYPE"
        );
        assert_ne!(t, "untyped", "{name}: untyped");
        if name.ends_with("_total") {
            assert_eq!(t, "counter", "{name}: a _total name is a counter");
        }
        if t == "counter" {
            assert!(name.ends_with("_total"), "{name}: a counter ends in _total");
        }
        if name.ends_with("_seconds") {
            assert!(
                matches!(t, "histogram" | "gauge"),
                "{name}: a _seconds name is a histogram (durations) or a gauge (timestamps, ages)"
            );
        }
        if name.ends_with("_bytes") {
            assert_eq!(
                t, "gauge",
                "{name}: a _bytes name without _total is a gauge"
            );
        }
        if t == "histogram" {
            for s in family.iter_samples() {
                let PrometheusValue::Histogram(h) = &s.value else {
                    panic!("{name}: a histogram sample of another type");
                };
                assert!(h.sum.is_some() && h.count.is_some(), "{name}: _sum, _count");
                let inf = h.buckets.iter().find(|b| b.upper_bound.is_infinite());
                let inf = inf.unwrap_or_else(|| panic!("{name}: no +Inf bucket"));
                assert_eq!(
                    inf.count.as_f64(),
                    h.count.unwrap() as f64,
                    "{name}: +Inf bucket = _count"
                );
                let counts: Vec<f64> = h.buckets.iter().map(|b| b.count.as_f64()).collect();
                let mut sorted = h.buckets.clone();
                sorted.sort_by(|a, b| a.upper_bound.total_cmp(&b.upper_bound));
                let sorted: Vec<f64> = sorted.iter().map(|b| b.count.as_f64()).collect();
                assert!(
                    sorted.windows(2).all(|w| w[0] <= w[1]),
                    "{name}: buckets are cumulative: {counts:?}"
                );
            }
        }
    }
    // The text has no family the parse lost.
    let text_families: BTreeSet<&String> = types.keys().collect();
    let parsed: BTreeSet<&String> = exp.families.keys().collect();
    assert_eq!(
        text_families, parsed,
        "families in the text and in the parse"
    );
}

/// docs/metrics.md's table against the exposition: each documented metric is there with its
/// documented type (or is one this run does not exercise), and nothing undocumented is.
fn check_against_docs(exp: &Exposition) {
    let documented = metrics_doc::metrics();
    let exempt: BTreeMap<&str, &str> = NOT_EXERCISED.iter().copied().collect();
    for name in exempt.keys() {
        assert!(
            documented.contains_key(*name),
            "NOT_EXERCISED names {name}, which docs/metrics.md does not list"
        );
    }
    let mut missing = Vec::new();
    for (name, doc) in &documented {
        match exp.families.get(name) {
            Some(family) => assert_eq!(
                type_name(&family.family_type),
                doc.kind,
                "{name}: the type docs/metrics.md gives"
            ),
            None if exempt.contains_key(name.as_str()) => {}
            None => missing.push(name.clone()),
        }
    }
    assert!(
        missing.is_empty(),
        "documented metrics absent from /metrics: {missing:?}"
    );
    let undocumented: Vec<_> = exp
        .families
        .keys()
        .filter(|n| !documented.contains_key(*n))
        .collect();
    assert!(
        undocumented.is_empty(),
        "metrics not in docs/metrics.md: {undocumented:?}"
    );
}

#[test]
fn metrics_are_well_formed_documented_and_count_exactly_what_was_sent() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let es = rt.block_on(Backend::start(Kind::Elasticsearch));
    // The first request fails: one retry, one 503, then delivery.
    es.script([Answer::unavailable()]);

    let node = Node::new();
    let work = node.root().join("work");
    let mut web = node.container("shop", "web-0", "uid-web", "nginx");
    let mut api = node.container("pay", "api-0", "uid-api", "api");
    let mut job = node.container("batch", "job-0", "uid-job", "worker");
    let mut lines = 0u64;
    for i in 0..120 {
        web.line("stdout", format!("GET /cart {i} {MARKER}").as_bytes());
        lines += 1;
        if i % 3 == 0 {
            api.line(
                "stderr",
                format!("warn: slow query {i} {MARKER}").as_bytes(),
            );
            lines += 1;
        }
    }
    for i in 0..15 {
        job.line("stdout", format!("step {i} {MARKER}").as_bytes());
        lines += 1;
    }
    // One line that is not CRI: passed on as raw text, counted as malformed.
    api.raw(format!("this is not a CRI line {MARKER}\n").as_bytes());
    lines += 1;
    // One line over logs.max_line_bytes (1 KiB here), in one CRI record: cut and counted.
    job.line(
        "stderr",
        format!("{MARKER} {}", "y".repeat(3000)).as_bytes(),
    );
    lines += 1;

    let sinks = format!(
        "  es:\n    type: elasticsearch\n    url: {}\n    request:\n      retry_initial_backoff: 20ms\n      retry_max_backoff: 100ms\n",
        es.url
    );
    let extra = "logs:\n  max_line_bytes: 1KiB\n";
    let l = Loglet::start(node.root(), &work, &config(extra, &sinks));

    let want = lines as usize;
    assert!(
        rt.block_on(es.wait_until(Duration::from_secs(60), |r| r.es.len() >= want)),
        "the backend stored {} of {want} records",
        es.received().es.len()
    );
    // The counters move when the sink acknowledges, just after the backend's answer.
    wait_until(Duration::from_secs(20), "the acknowledgement", || {
        (l.metric("loglet_sink_records_total{sink=\"es\"}") >= want as f64).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));

    let (body, exp) = scrape(&l);
    check_structure(&body, &exp);

    // No log content in /metrics: not the marker, not a line, not a file path.
    assert!(
        !body.contains(MARKER),
        "/metrics carries log content:\n{body}"
    );
    for (name, labels, v) in series(&exp) {
        for (k, val) in &labels {
            assert!(
                !val.contains(MARKER)
                    && !val.starts_with('/')
                    && !val.contains("/var/")
                    && !["web-0", "api-0", "job-0", "uid-web", "nginx"].contains(&val.as_str()),
                "{name}{{{k}={val:?}}}: a label value that is not bounded"
            );
        }
        assert!(v.is_finite(), "{name}{labels:?} = {v}");
        if exp.families[&name].family_type == PrometheusType::Gauge {
            assert!(v >= 0.0, "{name}{labels:?} is negative: {v}");
        }
    }

    // The counters, exactly.
    let received = es.received();
    let bulk: Vec<_> = received
        .requests
        .iter()
        .filter(|r| r.path.ends_with("/_bulk"))
        .collect();
    let delivered = bulk.iter().filter(|r| r.status == 200).count() as f64;
    let failed = bulk.iter().filter(|r| r.status == 503).count() as f64;
    assert_eq!(failed, 1.0, "the script's one 503");
    assert!(delivered >= 1.0, "no request delivered");
    assert_eq!(received.es.len(), want, "stored once each");
    let got = |family: &str, labels: &[(&str, &str)]| value(&exp, family, labels);
    assert_eq!(got("loglet_read_lines_total", &[]), lines as f64);
    assert_eq!(got("loglet_files_discovered_total", &[]), 3.0);
    assert_eq!(
        got("loglet_lines_malformed_total", &[("format", "cri")]),
        1.0
    );
    assert_eq!(
        got("loglet_lines_malformed_total", &[("format", "docker")]),
        0.0
    );
    assert_eq!(got("loglet_lines_truncated_total", &[]), 1.0);
    assert_eq!(
        got("loglet_sink_records_total", &[("sink", "es")]),
        want as f64
    );
    assert_eq!(
        got("loglet_route_records_total", &[("route", "default")]),
        want as f64
    );
    let requests = |outcome: &str| {
        got(
            "loglet_sink_requests_total",
            &[("sink", "es"), ("outcome", outcome)],
        )
    };
    assert_eq!(requests("delivered"), delivered, "delivered requests");
    assert_eq!(requests("retry"), failed, "retried requests");
    assert_eq!(requests("rejected"), 0.0);
    assert_eq!(requests("partial"), 0.0);
    assert_eq!(got("loglet_sink_retries_total", &[("sink", "es")]), failed);
    assert_eq!(
        got(
            "loglet_sink_errors_total",
            &[("sink", "es"), ("status", "503")]
        ),
        failed
    );
    assert_eq!(
        got("loglet_sink_request_duration_seconds", &[("sink", "es")]),
        delivered + failed,
        "one latency observation per answered request"
    );
    let read_bytes: u64 = [&web, &api, &job]
        .iter()
        .map(|c| std::fs::metadata(c.path()).unwrap().len())
        .sum();
    assert_eq!(got("loglet_read_bytes_total", &[]), read_bytes as f64);
    assert_eq!(got("loglet_unread_bytes", &[]), 0.0);
    assert_eq!(got("loglet_files_watched", &[]), 3.0);
    assert_eq!(got("loglet_unacknowledged_records", &[]), 0.0);
    assert_eq!(
        got("loglet_sink_requests_in_flight", &[("sink", "es")]),
        0.0
    );
    assert_eq!(
        got(
            "loglet_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // A config change that is refused shows in loglet_config_reloads_total, and the running
    // config stays.
    std::fs::write(work.join("config.yaml"), "sinks: {es: {type: nope}}\n").unwrap();
    wait_until(Duration::from_secs(20), "the refused reload", || {
        (l.metric("loglet_config_reloads_total{result=\"invalid\"}") == 1.0).then_some(())
    });

    let (body, exp) = scrape(&l);
    check_structure(&body, &exp);
    check_against_docs(&exp);
    assert!(!body.contains(MARKER), "/metrics carries log content");
    assert_eq!(l.stop(), 0);
}

#[test]
fn the_parser_refuses_what_a_prometheus_server_would_not_ingest() {
    let parse = openmetrics_parser::prometheus::parse_prometheus;
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n";
    let exp = parse(good).expect("a valid exposition");
    assert_eq!(exp.families["a_total"].family_type, PrometheusType::Counter);
    for bad in [
        "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\" 2\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"}\n",
        "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} two\n",
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
}
