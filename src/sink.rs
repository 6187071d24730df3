//! sink: batching, encoding, compression, sending, retrying and acknowledging, one mechanism for
//! every backend; the backends' wire formats live beside it.
//!
//! A sink task collects the tailer's batches into requests (by record count, bytes and time),
//! encodes them with its backend's [`format::Format`], compresses, and sends with bounded
//! concurrency. A request is retried with exponential backoff and jitter (honouring
//! `Retry-After`) for as long as the backend asks for it; the files on disk hold what waits. A
//! batch is acknowledged, and its files' checkpoints move, only once the backend accepted its
//! records or rejected them for good (counted in `loglet_sink_dropped_records_total`).

pub mod elasticsearch;
pub mod encode;
pub mod format;
pub mod json;
pub mod loki;
pub mod otlp;
pub mod splunk_hec;
pub mod transport;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::header::HeaderMap;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::config::{Compression, SinkConfig, SinkType};
use crate::metrics::{Metrics, RateLimited};
use crate::pool::BufferPool;
use crate::record::{Batch, Record};
use format::{Encoder, Format, Outcome};
use transport::{Answer, Transport, TransportError};

/// A request body grown past this (a huge batch) is freed after its request, not kept.
const MAX_POOLED_BODY: usize = 16 * 1024 * 1024;

/// A sink that had no batch for this long frees the request bodies its pool keeps: on a quiet
/// node they would hold a MiB or more each for nothing (3.5 MiB of a 20 MiB idle RSS in the
/// idle benchmark, docs/performance.md). Long against the batch timeout, so a steady trickle
/// keeps its buffers.
const IDLE_RELEASE: Duration = Duration::from_secs(10);

/// The longest wait loglet honours from a `Retry-After`.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Why a sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Format(#[from] encode::FormatError),
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// The wire format of a sink type, for sink number `index` of the config.
fn format_for(
    name: &str,
    index: usize,
    cfg: &SinkConfig,
    node_name: Option<&str>,
    metrics: &Metrics,
) -> Result<Arc<dyn Format>, encode::FormatError> {
    Ok(match cfg.kind {
        SinkType::Stdout | SinkType::Http => Arc::new(json::NdjsonFormat),
        SinkType::Loki => Arc::new(loki::LokiFormat::new(name, cfg, node_name, metrics)?),
        SinkType::Elasticsearch => {
            Arc::new(elasticsearch::ElasticsearchFormat::new(name, cfg, node_name)?.for_sink(index))
        }
        SinkType::Otlp => Arc::new(otlp::OtlpFormat::new(name, cfg, node_name)?),
        SinkType::SplunkHec => {
            Arc::new(splunk_hec::SplunkHecFormat::new(name, cfg, node_name)?.for_sink(index))
        }
    })
}

/// A running sink: the queue the tailer feeds, and its task.
pub struct Sink {
    pub name: String,
    pub queue: mpsc::Sender<Arc<Batch>>,
    pub task: JoinHandle<()>,
}

/// Starts a sink on the current tokio runtime.
pub fn start(
    name: &str,
    index: usize,
    cfg: &SinkConfig,
    node_name: Option<&str>,
    queue_batches: usize,
    metrics: Arc<Metrics>,
) -> Result<Sink, StartError> {
    let format = format_for(name, index, cfg, node_name, &metrics)?;
    let mut headers = HeaderMap::new();
    format.headers(&mut headers);
    let transport = Transport::new(cfg, headers, format.path())?;
    let compression = match (cfg.compression, format.default_compression()) {
        // Loki decodes a protobuf push as snappy whatever it is told: it is always snappy.
        (_, Compression::Snappy) => Compression::Snappy,
        (Some(chosen), _) => chosen,
        (None, default) => default,
    };
    let (tx, rx) = mpsc::channel(queue_batches);
    let shared = Arc::new(Shared {
        name: name.to_string(),
        index,
        tenant_header: format.tenant_header(),
        encoder: Mutex::new(format.encoder()),
        format,
        transport,
        // Each request in flight holds a body; one more is being encoded, with its copy.
        bodies: BufferPool::new(cfg.request.concurrency + 2, MAX_POOLED_BODY),
        compression,
        max_records: cfg.batch.max_records,
        max_bytes: cfg.batch.max_bytes.0,
        initial_backoff: cfg.request.retry_initial_backoff.0,
        max_backoff: cfg.request.retry_max_backoff.0,
        metrics,
        warn: RateLimited::new(Duration::from_secs(10)),
    });
    let task = tokio::spawn(collect(shared, rx, cfg.clone()));
    Ok(Sink {
        name: name.to_string(),
        queue: tx,
        task,
    })
}

/// What every request of a sink shares.
struct Shared {
    name: String,
    /// This sink's place in the config (its bit in a record's routing).
    index: usize,
    /// The header that carries a route's tenant, for formats that have one.
    tenant_header: Option<reqwest::header::HeaderName>,
    format: Arc<dyn Format>,
    encoder: Mutex<Box<dyn Encoder>>,
    transport: Transport,
    /// Request bodies, raw and compressed, reused across requests.
    bodies: Arc<BufferPool>,
    compression: Compression,
    /// What one request may carry: records, and bytes of log lines.
    max_records: usize,
    max_bytes: u64,
    initial_backoff: Duration,
    max_backoff: Duration,
    metrics: Arc<Metrics>,
    warn: RateLimited,
}

/// Gathers batches into requests and sends them, at most `concurrency` at once, until the
/// tailer closes the queue; then sends what is left and waits for every request to finish.
async fn collect(shared: Arc<Shared>, mut rx: mpsc::Receiver<Arc<Batch>>, cfg: SinkConfig) {
    let concurrency = cfg.request.concurrency;
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut pending: Vec<Arc<Batch>> = Vec::new();
    let (mut records, mut bytes) = (0usize, 0usize);
    let mut deadline: Option<tokio::time::Instant> = None;
    // Whether the pool's bodies were released since the last batch.
    let mut released = false;
    loop {
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let full = tokio::select! {
            batch = rx.recv() => match batch {
                Some(b) => {
                    released = false;
                    if pending.is_empty() {
                        deadline = Some(tokio::time::Instant::now() + cfg.batch.timeout.0);
                    }
                    records += b.records.len();
                    bytes += b.records.iter().map(|r| r.line.len()).sum::<usize>();
                    pending.push(b);
                    records >= cfg.batch.max_records || bytes as u64 >= cfg.batch.max_bytes.0
                }
                None => break,
            },
            () = timer => true,
            () = tokio::time::sleep(IDLE_RELEASE), if pending.is_empty() && !released => {
                // Requests still in flight give their bodies back later; the next quiet spell
                // after a batch releases them.
                shared.bodies.release_free();
                released = true;
                false
            }
        };
        if full && !pending.is_empty() {
            let permit = slots.clone().acquire_owned().await.expect("never closed");
            let batches = std::mem::take(&mut pending);
            (records, bytes, deadline) = (0, 0, None);
            let shared = shared.clone();
            tokio::spawn(async move {
                deliver(&shared, batches).await;
                drop(permit);
            });
        }
    }
    if !pending.is_empty() {
        deliver(&shared, pending).await;
    }
    // Every request in flight is done when every slot is free again.
    let _ = slots.acquire_many(concurrency as u32).await;
}

/// Sends one request's batches until the backend has taken or refused every record, then
/// acknowledges them. Records of different tenants (routes may set Loki's `X-Scope-OrgID`)
/// go in separate requests, one tenant after the other.
async fn deliver(shared: &Shared, batches: Vec<Arc<Batch>>) {
    let records = batches.iter().flat_map(|b| b.records.iter());
    let tenant = |r: &Record| -> Option<Arc<str>> {
        shared.tenant_header.as_ref()?;
        r.source.routing.target(shared.index)?.tenant.clone()
    };
    let mut groups: Vec<(Option<Arc<str>>, Vec<&Record>)> = Vec::new();
    for r in records {
        let t = tenant(r);
        match groups.iter_mut().find(|(g, _)| *g == t) {
            Some((_, list)) => list.push(r),
            None => groups.push((t, vec![r])),
        }
    }
    // Batches are gathered until they reach the limits, so together they pass them: each
    // request takes what fits, one after the other, and a body stays the size the limits say.
    for (tenant, todo) in groups {
        let mut rest = todo.as_slice();
        while !rest.is_empty() {
            let n = request_len(rest, shared.max_records, shared.max_bytes);
            let (now, later) = rest.split_at(n);
            deliver_group(shared, now.to_vec(), tenant.as_deref()).await;
            rest = later;
        }
    }
    for b in &batches {
        b.ack.done();
    }
}

/// How many of `records` (at least one) go in the next request: at most `max_records`, and no
/// more than `max_bytes` of lines unless the first alone is longer.
fn request_len(records: &[&Record], max_records: usize, max_bytes: u64) -> usize {
    let mut bytes = 0u64;
    let fit = records
        .iter()
        .take(max_records.max(1))
        .take_while(|r| {
            bytes += r.line.len() as u64;
            bytes <= max_bytes
        })
        .count();
    fit.max(1)
}

/// Sends records of one tenant until the backend has taken or refused every one.
async fn deliver_group(shared: &Shared, mut todo: Vec<&Record>, tenant: Option<&str>) {
    let sink = shared.name.as_str();
    let m = &shared.metrics;
    let tenant = tenant.and_then(|t| {
        let name = shared.tenant_header.clone()?;
        match reqwest::header::HeaderValue::from_str(t) {
            Ok(v) => Some((name, v)),
            Err(_) => {
                shared.warn.warn(|suppressed| {
                    tracing::warn!(
                        sink,
                        tenant = t,
                        suppressed,
                        "tenant is not a valid header value; sending with the sink's own tenant"
                    )
                });
                None
            }
        }
    });
    let mut attempt: u32 = 0;
    let in_flight = m.sink_in_flight.with_label_values(&[sink]);
    while !todo.is_empty() {
        let mut body = shared
            .bodies
            .take(todo.iter().map(|r| r.line.len() + 256).sum());
        shared
            .encoder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .encode(&todo, &mut body);
        let raw_len = body.len();
        let (body, encoding) = transport::compress(shared.compression, body, &shared.bodies);
        let sent_len = body.len();
        in_flight.inc();
        let started = Instant::now();
        let answer = shared
            .transport
            .send(
                shared.format.content_type(),
                encoding,
                tenant.as_ref(),
                shared.bodies.freeze(body),
            )
            .await;
        in_flight.dec();
        m.sink_latency
            .with_label_values(&[sink])
            .observe(started.elapsed().as_secs_f64());
        let outcome = match answer {
            Ok(Answer {
                status,
                headers,
                body,
            }) => {
                if !status.is_success() {
                    m.sink_errors
                        .with_label_values(&[sink, status.as_str()])
                        .inc();
                }
                shared.format.outcome(status, &headers, &body, todo.len())
            }
            Err(e) => {
                m.sink_errors.with_label_values(&[sink, e.label()]).inc();
                Outcome::Retry {
                    after: None,
                    reason: e.to_string(),
                }
            }
        };
        let delivered = |n: usize| {
            m.sink_records.with_label_values(&[sink]).inc_by(n as u64);
            m.sink_bytes
                .with_label_values(&[sink])
                .inc_by(raw_len as u64);
            m.sink_bytes_compressed
                .with_label_values(&[sink])
                .inc_by(sent_len as u64);
        };
        match outcome {
            Outcome::Delivered => {
                m.sink_requests
                    .with_label_values(&[sink, "delivered"])
                    .inc();
                delivered(todo.len());
                todo.clear();
            }
            Outcome::Rejected { reason } => {
                m.sink_requests.with_label_values(&[sink, "rejected"]).inc();
                m.sink_dropped
                    .with_label_values(&[sink, "rejected"])
                    .inc_by(todo.len() as u64);
                shared.warn.warn(|suppressed| {
                    tracing::warn!(sink, records = todo.len(), reason = %reason, suppressed, "backend rejected a request for good; its records are dropped")
                });
                todo.clear();
            }
            Outcome::Partial {
                retry,
                rejected,
                after,
                reason,
            } => {
                m.sink_requests.with_label_values(&[sink, "partial"]).inc();
                let accepted = todo.len().saturating_sub(retry.len() + rejected);
                delivered(accepted);
                if rejected > 0 {
                    m.sink_dropped
                        .with_label_values(&[sink, "item_rejected"])
                        .inc_by(rejected as u64);
                    shared.warn.warn(|suppressed| {
                        tracing::warn!(sink, rejected, reason = %reason, suppressed, "backend rejected some records for good; they are dropped")
                    });
                }
                todo = retry
                    .into_iter()
                    .filter_map(|i| todo.get(i).copied())
                    .collect();
                if !todo.is_empty() {
                    m.sink_retries.with_label_values(&[sink]).inc();
                    tokio::time::sleep(shared.backoff(attempt, after)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
            Outcome::Retry { after, reason } => {
                m.sink_requests.with_label_values(&[sink, "retry"]).inc();
                m.sink_retries.with_label_values(&[sink]).inc();
                let wait = shared.backoff(attempt, after);
                shared.warn.warn(|suppressed| {
                    tracing::warn!(sink, records = todo.len(), reason = %reason, retry_in = ?wait, attempt, suppressed, "request failed; retrying")
                });
                tokio::time::sleep(wait).await;
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

impl Shared {
    /// Exponential backoff with equal jitter: between half and all of `initial * 2^attempt`,
    /// capped; a `Retry-After` from the backend wins when it asks for longer.
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max_backoff);
        let half = exp / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
        let wait = half + Duration::from_millis(jitter);
        match retry_after {
            Some(after) => wait.max(after.min(MAX_RETRY_AFTER)),
            None => wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_takes_what_fits_and_at_least_one_record() {
        let source = encode::tests::rich_source();
        let rec = |n: usize| {
            encode::tests::record(&source, &vec![b'x'; n], 0, crate::record::Stream::Stdout)
        };
        let records: Vec<Record> = [10, 20, 30, 40].into_iter().map(rec).collect();
        let refs: Vec<&Record> = records.iter().collect();
        assert_eq!(request_len(&refs, 10, 1000), 4);
        assert_eq!(request_len(&refs, 3, 1000), 3);
        assert_eq!(request_len(&refs, 10, 30), 2, "10 + 20 fit in 30 bytes");
        assert_eq!(request_len(&refs, 10, 29), 1);
        assert_eq!(
            request_len(&refs[3..], 10, 5),
            1,
            "a line longer than the limit goes alone"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_honours_retry_after() {
        let shared = Shared {
            name: "t".into(),
            index: 0,
            tenant_header: None,
            format: Arc::new(json::NdjsonFormat),
            encoder: Mutex::new(json::NdjsonFormat.encoder()),
            transport: Transport::Stdout,
            bodies: BufferPool::new(1, MAX_POOLED_BODY),
            compression: Compression::None,
            max_records: 1,
            max_bytes: 1,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            metrics: Metrics::new(),
            warn: RateLimited::new(Duration::from_secs(1)),
        };
        for attempt in 0..10 {
            let full = Duration::from_millis(100 * (1 << attempt)).min(Duration::from_secs(2));
            let d = shared.backoff(attempt, None);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        assert_eq!(
            shared.backoff(0, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            shared.backoff(0, Some(Duration::from_secs(3600))),
            MAX_RETRY_AFTER
        );
    }
}
