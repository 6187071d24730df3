//! metrics: every metric loglet exports, registered in one place, and the HTTP server for
//! `/metrics` (Prometheus text format), `/healthz` and `/readyz`.
//!
//! Labels are bounded (config names, fixed sets of values, the node's Namespaces): no series
//! carries a Pod name, UID, file path or log content. docs/metrics.md lists every metric and every
//! label; tests/docs.rs checks that the lists and this file agree (label names are read from the
//! `&["…"]` literals here, so keep them literal), and tests/metrics_e2e.rs checks the exposition.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric, registered once.
pub struct Metrics {
    pub registry: Registry,

    // discover and tail
    pub files_watched: IntGauge,
    pub files_open: IntGauge,
    pub files_discovered: IntCounter,
    pub read_bytes: IntCounter,
    pub read_lines: IntCounter,
    /// Bytes behind the end of the files loglet follows (sum over files, bounded labels).
    pub unread_bytes: IntGauge,
    /// Bytes of files deleted or rotated away before loglet read them, by reason.
    pub lost_bytes: IntCounterVec,
    pub deleted_files_held: IntGauge,
    pub deleted_bytes_held: IntGauge,
    pub rotations: IntCounterVec,
    pub inotify_fallback: IntGauge,
    pub read_errors: IntCounterVec,

    // decode
    pub lines_malformed: IntCounterVec,
    pub lines_truncated: IntCounter,
    pub partial_merged: IntCounter,
    pub partial_flushed: IntCounter,

    // pipeline and checkpoints
    pub batches_queued: IntGauge,
    pub checkpoint_writes: IntCounter,
    pub checkpoint_errors: IntCounter,
    pub checkpoint_files: IntGauge,
    /// Records read but not yet acknowledged by every sink.
    pub unacked_records: IntGauge,
    /// Age of the oldest batch not yet acknowledged.
    pub oldest_unacked_seconds: prometheus::Gauge,

    // sinks
    pub sink_records: IntCounterVec,
    pub sink_bytes: IntCounterVec,
    pub sink_bytes_compressed: IntCounterVec,
    pub sink_requests: IntCounterVec,
    pub sink_retries: IntCounterVec,
    pub sink_dropped: IntCounterVec,
    pub sink_errors: IntCounterVec,
    pub sink_in_flight: IntGaugeVec,
    pub sink_latency: HistogramVec,

    // enrich
    /// Files whose lines went out with file-name metadata only, after waiting for the watcher.
    pub metadata_missing: IntCounter,

    // route
    /// Bad `loglet.io/` annotations, reported once per Pod (or Namespace) and value.
    pub annotation_errors: IntCounterVec,
    /// Records handed to the sinks, by route.
    pub route_records: IntCounterVec,
    /// Records not shipped on purpose, by `reason` (excluded, rate_limited).
    pub records_discarded: IntCounterVec,
    /// Records dropped by a namespace's rate limit, by namespace (bounded by the namespaces on
    /// the node).
    pub rate_limited_records: IntCounterVec,
    /// Lines a parser was applied to, by `parser` and `result` (lifted, unparsed).
    pub parsed_lines: IntCounterVec,
    /// Config file changes, by `result` (applied, invalid).
    pub config_reloads: IntCounterVec,

    pub build_info: IntGaugeVec,
    pub up_since: prometheus::Gauge,

    ready: AtomicBool,
    started: std::time::Instant,
    /// Readiness conditions beyond start-up, each with a reason when false.
    pub readiness: Readiness,

    // sink backends
    /// Distinct Loki label sets (streams) each Loki sink has sent recently.
    pub loki_label_sets: IntGaugeVec,
    /// Sources whose Loki labels were cut to the first one to stay within `max_label_sets`.
    pub loki_labels_folded: IntCounterVec,
    // kube
    pub kube_pods_cached: IntGauge,
    pub kube_namespaces_cached: IntGauge,
    pub kube_deleted_pods_retained: IntGauge,
    /// Watch events by `resource` (pods, namespaces) and `type` (list, apply, delete).
    pub kube_watch_events: IntCounterVec,
    /// Full lists started, first and re-lists, by `resource`.
    pub kube_lists: IntCounterVec,
    pub kube_watch_errors: IntCounterVec,
    pub kube_watch_up: IntGaugeVec,
    pub kube_last_sync: prometheus::GaugeVec,
}

/// Named readiness conditions; `/readyz` is ready when none is failing.
#[derive(Default)]
pub struct Readiness(Mutex<BTreeMap<&'static str, String>>);

impl Readiness {
    pub fn fail(&self, name: &'static str, why: String) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, why);
    }
    pub fn pass(&self, name: &'static str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }
    pub fn failing(&self) -> Vec<String> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(k, v)| format!("{k}: {v}")).collect()
    }
}

/// Seconds, for request latencies from a local receiver (1 ms) to a struggling backend (30 s).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let r = Registry::new();
        let m = Metrics {
            files_watched: gauge(&r, "loglet_files_watched", "Log files loglet follows"),
            files_open: gauge(&r, "loglet_files_open", "Log files held open"),
            files_discovered: counter(
                &r,
                "loglet_files_discovered_total",
                "Log files found (new file identities)",
            ),
            read_bytes: counter(&r, "loglet_read_bytes_total", "Bytes read from log files"),
            read_lines: counter(&r, "loglet_read_lines_total", "Lines read from log files"),
            unread_bytes: gauge(
                &r,
                "loglet_unread_bytes",
                "Bytes behind the end of the followed log files (the read lag)",
            ),
            lost_bytes: counter_vec(
                &r,
                "loglet_lost_bytes_total",
                "Bytes of log files released or removed before they were read, by reason",
                &["reason"],
            ),
            deleted_files_held: gauge(
                &r,
                "loglet_deleted_files_held",
                "Deleted log files held open until they are drained",
            ),
            deleted_bytes_held: gauge(
                &r,
                "loglet_deleted_bytes_held",
                "Disk space held by deleted log files kept open until drained",
            ),
            rotations: counter_vec(
                &r,
                "loglet_rotations_total",
                "Rotations seen, by kind (rename, truncate, restart)",
                &["kind"],
            ),
            inotify_fallback: gauge(
                &r,
                "loglet_inotify_fallback",
                "1 when inotify is unavailable or its limits were hit and loglet polls instead",
            ),
            read_errors: counter_vec(
                &r,
                "loglet_read_errors_total",
                "Errors reading log files or directories, by kind",
                &["kind"],
            ),
            lines_malformed: counter_vec(
                &r,
                "loglet_lines_malformed_total",
                "Lines that did not parse in their file's format, passed on as raw text",
                &["format"],
            ),
            lines_truncated: counter(
                &r,
                "loglet_lines_truncated_total",
                "Lines cut to logs.max_line_bytes",
            ),
            partial_merged: counter(
                &r,
                "loglet_partial_lines_merged_total",
                "Lines joined from partial chunks",
            ),
            partial_flushed: counter(
                &r,
                "loglet_partial_lines_flushed_total",
                "Partial lines sent without their final chunk after a timeout or end of file",
            ),
            batches_queued: gauge(
                &r,
                "loglet_batches_queued",
                "Batches waiting between the tailer and the sinks",
            ),
            checkpoint_writes: counter(
                &r,
                "loglet_checkpoint_writes_total",
                "Checkpoint files written",
            ),
            checkpoint_errors: counter(
                &r,
                "loglet_checkpoint_errors_total",
                "Failed checkpoint writes (retried at the next interval)",
            ),
            checkpoint_files: gauge(
                &r,
                "loglet_checkpoint_files",
                "Files with a position in the checkpoint",
            ),
            unacked_records: gauge(
                &r,
                "loglet_unacknowledged_records",
                "Records read but not yet acknowledged by every sink",
            ),
            oldest_unacked_seconds: float_gauge(
                &r,
                "loglet_oldest_unacknowledged_seconds",
                "Age of the oldest batch not yet acknowledged by every sink",
            ),
            sink_records: counter_vec(
                &r,
                "loglet_sink_records_total",
                "Records delivered by each sink",
                &["sink"],
            ),
            sink_bytes: counter_vec(
                &r,
                "loglet_sink_bytes_total",
                "Encoded bytes delivered by each sink, before compression",
                &["sink"],
            ),
            sink_bytes_compressed: counter_vec(
                &r,
                "loglet_sink_compressed_bytes_total",
                "Bytes sent by each sink, after compression",
                &["sink"],
            ),
            sink_requests: counter_vec(
                &r,
                "loglet_sink_requests_total",
                "Requests sent by each sink, by outcome",
                &["sink", "outcome"],
            ),
            sink_retries: counter_vec(
                &r,
                "loglet_sink_retries_total",
                "Requests retried by each sink",
                &["sink"],
            ),
            sink_dropped: counter_vec(
                &r,
                "loglet_sink_dropped_records_total",
                "Records dropped because the backend rejected them for good, by reason",
                &["sink", "reason"],
            ),
            sink_errors: counter_vec(
                &r,
                "loglet_sink_errors_total",
                "Failed requests by HTTP status (or `connect`, `timeout`)",
                &["sink", "status"],
            ),
            sink_in_flight: gauge_vec(
                &r,
                "loglet_sink_requests_in_flight",
                "Requests in flight per sink",
                &["sink"],
            ),
            sink_latency: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "loglet_sink_request_duration_seconds",
                        "Time from sending a request to its answer",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["sink"],
                )
                .expect("valid metric");
                r.register(Box::new(h.clone())).expect("registered once");
                h
            },
            metadata_missing: counter(
                &r,
                "loglet_metadata_missing_total",
                "Files whose Pod was not known after the metadata wait: their lines carry only what the path tells",
            ),
            annotation_errors: counter_vec(
                &r,
                "loglet_annotation_errors_total",
                "Bad loglet.io/ annotation values, counted once per Pod or Namespace and value; the Pod falls back",
                &["annotation"],
            ),
            route_records: counter_vec(
                &r,
                "loglet_route_records_total",
                "Records handed to the sinks, by route",
                &["route"],
            ),
            records_discarded: counter_vec(
                &r,
                "loglet_records_discarded_total",
                "Records read but not shipped on purpose: excluded by annotation, or over a namespace's rate limit",
                &["reason"],
            ),
            rate_limited_records: counter_vec(
                &r,
                "loglet_rate_limited_records_total",
                "Records dropped by a namespace's rate limit, by namespace",
                &["namespace"],
            ),
            parsed_lines: counter_vec(
                &r,
                "loglet_parsed_lines_total",
                "Lines a parser (loglet.io/parser) was applied to: fields lifted, or the line did not parse and went out as it was",
                &["parser", "result"],
            ),
            config_reloads: counter_vec(
                &r,
                "loglet_config_reloads_total",
                "Changes of the config file: applied, or invalid and ignored (the running config stays)",
                &["result"],
            ),
            build_info: gauge_vec(
                &r,
                "loglet_build_info",
                "Always 1; the labels tell the version",
                &["version"],
            ),
            up_since: float_gauge(
                &r,
                "loglet_start_time_seconds",
                "Start time of the process, Unix seconds",
            ),
            // sink backends
            loki_label_sets: gauge_vec(
                &r,
                "loglet_loki_label_sets",
                "Distinct stream label sets a Loki sink sent in the last hour",
                &["sink"],
            ),
            loki_labels_folded: counter_vec(
                &r,
                "loglet_loki_labels_folded_total",
                "Sources whose extra Loki labels went to structured metadata because max_label_sets was reached",
                &["sink"],
            ),
            // kube
            kube_pods_cached: gauge(
                &r,
                "loglet_kube_pods_cached",
                "Pods of this node in the metadata cache",
            ),
            kube_namespaces_cached: gauge(
                &r,
                "loglet_kube_namespaces_cached",
                "Namespaces in the metadata cache",
            ),
            kube_deleted_pods_retained: gauge(
                &r,
                "loglet_kube_deleted_pods_retained",
                "Deleted Pods whose metadata is kept for files found late",
            ),
            kube_watch_events: counter_vec(
                &r,
                "loglet_kube_watch_events_total",
                "Objects received from the API by resource and type (list, apply, delete)",
                &["resource", "type"],
            ),
            kube_lists: counter_vec(
                &r,
                "loglet_kube_lists_total",
                "Full lists started (the first one and every re-list), by resource",
                &["resource"],
            ),
            kube_watch_errors: counter_vec(
                &r,
                "loglet_kube_watch_errors_total",
                "List and watch errors by resource and kind (list, watch_start, gone, watch_status, stream, invalid_object)",
                &["resource", "kind"],
            ),
            kube_watch_up: gauge_vec(
                &r,
                "loglet_kube_watch_up",
                "1 while the list/watch of a resource works, 0 after an error until it recovers",
                &["resource"],
            ),
            kube_last_sync: {
                let g = prometheus::GaugeVec::new(
                    Opts::new(
                        "loglet_kube_last_sync_timestamp_seconds",
                        "When the cache was last confirmed in sync with the API (a list completed or an event arrived), Unix seconds",
                    ),
                    &["resource"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("registered once");
                g
            },
            registry: r,
            ready: AtomicBool::new(false),
            started: std::time::Instant::now(),
            readiness: Readiness::default(),
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        m.up_since.set(now);
        Arc::new(m)
    }

    /// Marks start-up done (the first scan and, where configured, the first Pod list).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics does not fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }

    fn readyz(&self) -> (StatusCode, String) {
        if !self.ready.load(Ordering::Acquire) {
            return (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into());
        }
        let failing = self.readiness.failing();
        if failing.is_empty() {
            (StatusCode::OK, "ok\n".into())
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, failing.join("\n") + "\n")
        }
    }
}

/// A warning logged at most once per interval, with the count of those it suppressed.
pub struct RateLimited {
    interval: std::time::Duration,
    state: Mutex<(Option<std::time::Instant>, u64)>,
}

impl RateLimited {
    pub fn new(interval: std::time::Duration) -> RateLimited {
        RateLimited {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// Calls `log` with the number of warnings suppressed since the last one, or counts this one
    /// as suppressed.
    pub fn warn(&self, log: impl FnOnce(u64)) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match st.0 {
            Some(last) if now.duration_since(last) < self.interval => st.1 += 1,
            _ => {
                let suppressed = st.1;
                *st = (Some(now), 0);
                drop(st);
                log(suppressed);
            }
        }
    }
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn float_gauge(r: &Registry, name: &str, help: &str) -> prometheus::Gauge {
    let g = prometheus::Gauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics server failed to accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(answer(&metrics, &req)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            // A scraper that hangs up mid-answer is not worth a log line.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// Binds the metrics address, with an error that names it.
pub async fn bind(addr: &str) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to listen on {addr} for /metrics"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

fn answer(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        (&Method::GET, "/readyz") => {
            let (status, body) = metrics.readyz();
            (status, "text/plain", body)
        }
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        ),
    };
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a response with valid parts")
}
