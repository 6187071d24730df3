//! sink: Grafana Loki's push API, `POST /loki/api/v1/push` with a snappy-compressed
//! `logproto.PushRequest` or its JSON form
//! (https://grafana.com/docs/loki/latest/reference/loki-http-api/#ingest-logs).
//!
//! A stream's labels come from the Pod (never from the line), chosen by `loki.labels`; what is
//! not a label (pod, pod UID, container ID, stream …) goes to structured metadata. A guard keeps
//! the number of label sets bounded: beyond `max_label_sets`, a Pod with a new label set keeps
//! the longest prefix of its labels that is already a stream (at least the first label) and the
//! rest fold into structured metadata. Entries are sorted by time within each stream. Labels and metadata are encoded once per `Source`; per line the encoder writes the
//! timestamp, the line and copies bytes.

pub mod proto;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::encode::{
    Field, FormatError, NamedField, SourceCache, parse_fields, path_unless_present, pb,
};
use super::format::{Encoder, Format, Outcome, body_sample, retry_after};
use super::json::write_str;
use crate::config::{Compression, LokiEncoding, SinkConfig};
use crate::metrics::Metrics;
use crate::record::{Record, Source, Stream, flags};

pub const PUSH_PATH: &str = "/loki/api/v1/push";

/// Loki's default `max_label_value_length`.
const MAX_LABEL_VALUE_BYTES: usize = 2048;
/// A label set unused this long stops counting against `max_label_sets`; Loki itself closes a
/// stream's chunk after 30 minutes idle (`chunk_idle_period`).
const LABEL_SET_IDLE: Duration = Duration::from_secs(3600);
/// The stream of Pods whose labels all came out empty, named as Loki names a stream without a
/// service.
const FALLBACK_LABEL: (&str, &str) = ("service_name", "unknown_service");

/// Fields sent as structured metadata when they are not labels.
const METADATA_FIELDS: &[Field] = &[
    Field::Namespace,
    Field::Pod,
    Field::PodUid,
    Field::Container,
    Field::ContainerId,
    Field::Node,
];

/// Whether `name` is a Prometheus label name Loki accepts from clients.
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// A Pod label key as a label name: `app.kubernetes.io/name` → `app_kubernetes_io_name`.
fn sanitize_label_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    while s.starts_with("__") {
        s.remove(0);
    }
    s
}

/// What the encoders of one sink share.
struct Settings {
    labels: Vec<NamedField>,
    /// `stream` is a label: a source has a label set per stream.
    stream_label: bool,
    /// Fields that go to structured metadata (empty when it is off).
    metadata_fields: Vec<NamedField>,
    metadata: bool,
    encoding: LokiEncoding,
    node: Option<String>,
    /// The guard's limit; an encoder holding four times as many label sets (of Pods long gone)
    /// drops its caches.
    max_label_sets: usize,
}

/// The `loki` sink's wire format.
pub struct LokiFormat {
    settings: Arc<Settings>,
    guard: Arc<LabelGuard>,
    tenant: Option<HeaderValue>,
    path: Option<String>,
}

impl LokiFormat {
    /// The format of sink `sink` (its config validated), for a loglet on node `node_name`.
    pub fn new(
        sink: &str,
        cfg: &SinkConfig,
        node_name: Option<&str>,
        metrics: &Metrics,
    ) -> Result<LokiFormat, FormatError> {
        let opts = cfg.loki.clone().unwrap_or_default();
        let mut labels = parse_fields(sink, &opts.labels)?;
        for l in &mut labels {
            l.name = sanitize_label_name(&l.name);
        }
        let stream_label = labels.iter().any(|l| l.field == Field::Stream);
        let metadata_fields = if opts.structured_metadata {
            METADATA_FIELDS
                .iter()
                .filter(|f| !labels.iter().any(|l| &l.field == *f))
                .map(|f| NamedField {
                    name: f.default_name().to_string(),
                    field: f.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let tenant = match &opts.tenant {
            Some(t) => Some(HeaderValue::from_str(t).map_err(|_| FormatError::Invalid {
                sink: sink.to_string(),
                message: format!("loki.tenant: `{t}` is not a valid header value"),
            })?),
            None => None,
        };
        Ok(LokiFormat {
            settings: Arc::new(Settings {
                labels,
                stream_label,
                metadata_fields,
                metadata: opts.structured_metadata,
                encoding: opts.encoding,
                node: node_name.map(str::to_string),
                max_label_sets: opts.max_label_sets,
            }),
            guard: Arc::new(LabelGuard {
                limit: opts.max_label_sets,
                sets: Mutex::new(HashMap::new()),
                gauge: metrics.loki_label_sets.with_label_values(&[sink]),
                folded: metrics.loki_labels_folded.with_label_values(&[sink]),
            }),
            tenant,
            path: path_unless_present(cfg.url.as_deref(), PUSH_PATH),
        })
    }
}

impl Format for LokiFormat {
    fn content_type(&self) -> &'static str {
        match self.settings.encoding {
            LokiEncoding::Protobuf => "application/x-protobuf",
            LokiEncoding::Json => "application/json",
        }
    }

    fn headers(&self, headers: &mut HeaderMap) {
        if let Some(t) = &self.tenant {
            headers.insert(HeaderName::from_static("x-scope-orgid"), t.clone());
        }
    }

    fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    fn tenant_header(&self) -> Option<HeaderName> {
        Some(HeaderName::from_static("x-scope-orgid"))
    }

    fn default_compression(&self) -> Compression {
        match self.settings.encoding {
            LokiEncoding::Protobuf => Compression::Snappy,
            LokiEncoding::Json => Compression::None,
        }
    }

    fn encoder(&self) -> Box<dyn Encoder> {
        Box::new(LokiEncoder::new(self.settings.clone(), self.guard.clone()))
    }

    fn outcome(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        records: usize,
    ) -> Outcome {
        outcome(status, headers, body, records)
    }
}

/// Loki answers 204 to a push. 429 (rate limit) and 5xx are retried. A 400 is final, and Loki has
/// stored the entries of the request that were valid: when the body counts the ignored entries
/// (`total ignored: 3 out of 10`), only those are dropped.
fn outcome(status: StatusCode, headers: &HeaderMap, body: &[u8], records: usize) -> Outcome {
    if status.is_success() {
        return Outcome::Delivered;
    }
    let reason = format!("loki answered {status}: {}", body_sample(body));
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Outcome::Retry {
            after: retry_after(headers),
            reason,
        };
    }
    if status == StatusCode::BAD_REQUEST {
        if let Some(ignored) = total_ignored(body) {
            return Outcome::Partial {
                retry: Vec::new(),
                rejected: ignored.min(records),
                after: None,
                reason,
            };
        }
    }
    Outcome::Rejected { reason }
}

/// The sum of Loki's `total ignored: N out of M` counts in an error body, if it has any.
fn total_ignored(body: &[u8]) -> Option<usize> {
    const NEEDLE: &[u8] = b"total ignored: ";
    let mut sum = None;
    let mut rest = body;
    while let Some(at) = memchr::memmem::find(rest, NEEDLE) {
        rest = &rest[at + NEEDLE.len()..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let n: usize = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
        sum = Some(sum.unwrap_or(0usize).saturating_add(n));
    }
    sum
}

/// Bounds the label sets one sink sends: shared by the sink's encoders, consulted once per new
/// `Source`, touched once per request.
struct LabelGuard {
    limit: usize,
    /// Label sets by hash of their text, with when they were last sent.
    sets: Mutex<HashMap<u64, Instant>>,
    gauge: IntGauge,
    folded: IntCounter,
}

impl LabelGuard {
    /// How many of a source's labels it keeps, given the hashes of its label sets cut to the
    /// first 1, 2, … n labels: all of them when the full set is known or there is room; else the
    /// longest cut already known; else only the first label.
    fn admit(&self, prefix_hashes: &[u64], now: Instant) -> usize {
        let n = prefix_hashes.len();
        let Some(&full) = prefix_hashes.last() else {
            return 0;
        };
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(seen) = sets.get_mut(&full) {
            *seen = now;
            return n;
        }
        if sets.len() >= self.limit {
            sets.retain(|_, seen| now.duration_since(*seen) < LABEL_SET_IDLE);
        }
        let kept = if sets.len() < self.limit || n == 1 {
            n
        } else {
            self.folded.inc();
            (1..n)
                .rev()
                .find(|&k| sets.contains_key(&prefix_hashes[k - 1]))
                .unwrap_or(1)
        };
        sets.insert(prefix_hashes[kept - 1], now);
        self.gauge.set(sets.len() as i64);
        kept
    }

    /// Marks label sets as sent now.
    fn touch(&self, hashes: impl Iterator<Item = u64>, now: Instant) {
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        for h in hashes {
            sets.insert(h, now);
        }
        self.gauge.set(sets.len() as i64);
    }
}

/// Bytes in both encodings, built once.
#[derive(Default, Clone)]
struct Piece {
    /// Protobuf: `structuredMetadata` fields (tag 3) of an `EntryAdapter`.
    proto: Vec<u8>,
    /// JSON: `"name":"value"` members, comma-separated, without braces.
    json: Vec<u8>,
}

impl Piece {
    fn pair(&mut self, name: &str, value: &str) {
        let inner = pb::len_field_size(1, name.len()) + pb::len_field_size(2, value.len());
        pb::len_prefix(&mut self.proto, 3, inner);
        pb::bytes_field(&mut self.proto, 1, name.as_bytes());
        pb::bytes_field(&mut self.proto, 2, value.as_bytes());
        if !self.json.is_empty() {
            self.json.push(b',');
        }
        write_str(&mut self.json, name.as_bytes());
        self.json.push(b':');
        write_str(&mut self.json, value.as_bytes());
    }
}

/// What the encoder derived from one `Source`, per stream (index 0 stdout, 1 stderr; the same
/// twice unless `stream` is a label).
struct SourceEntry {
    sets: [u32; 2],
    metadata: [Piece; 2],
}

struct LabelSet {
    /// `{app="web", namespace="shop"}`
    text: String,
    /// `{"app":"web","namespace":"shop"}`
    json: Vec<u8>,
    hash: u64,
}

/// One record's place in the request being built.
#[derive(Clone, Copy)]
struct Item {
    set: u32,
    time_ns: i64,
    index: u32,
    /// Into `batch_sources`.
    source: u32,
    /// Protobuf: the `EntryAdapter`'s encoded size.
    len: u32,
    /// The line is not valid UTF-8 and is sent with U+FFFD replacements.
    lossy: bool,
}

struct LokiEncoder {
    settings: Arc<Settings>,
    guard: Arc<LabelGuard>,
    sources: SourceCache<Arc<SourceEntry>>,
    sets: Vec<LabelSet>,
    set_ids: HashMap<u64, u32>,
    items: Vec<Item>,
    batch_sources: Vec<Arc<SourceEntry>>,
    /// `stream` as structured metadata, per stream (empty when it is a label or metadata is off).
    stream_metadata: [Piece; 2],
    truncated_metadata: Piece,
}

fn stream_index(s: Stream) -> usize {
    match s {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

/// A label value as Loki takes it: at most 2048 bytes, cut at a character boundary.
fn clamp_label_value(v: &str) -> &str {
    if v.len() <= MAX_LABEL_VALUE_BYTES {
        return v;
    }
    let mut end = MAX_LABEL_VALUE_BYTES;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    &v[..end]
}

/// Appends a label value in Prometheus' text form (Go string escapes).
fn write_label_value(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The label set text of `pairs`, sorted by name as Loki canonicalises it.
fn label_text(pairs: &[(&str, &str)]) -> String {
    let mut sorted: Vec<&(&str, &str)> = pairs.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut s = String::from("{");
    for (i, (name, value)) in sorted.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(name);
        s.push('=');
        write_label_value(&mut s, value);
    }
    s.push('}');
    s
}

fn hash_of(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

impl LokiEncoder {
    fn new(settings: Arc<Settings>, guard: Arc<LabelGuard>) -> LokiEncoder {
        let mut stream_metadata: [Piece; 2] = Default::default();
        if settings.metadata && !settings.stream_label {
            for s in [Stream::Stdout, Stream::Stderr] {
                stream_metadata[stream_index(s)].pair("stream", s.as_str());
            }
        }
        let mut truncated_metadata = Piece::default();
        if settings.metadata {
            truncated_metadata.pair("truncated", "true");
        }
        LokiEncoder {
            settings,
            guard,
            sources: SourceCache::new(),
            sets: Vec::new(),
            set_ids: HashMap::new(),
            items: Vec::new(),
            batch_sources: Vec::new(),
            stream_metadata,
            truncated_metadata,
        }
    }

    fn entry(&mut self, source: &Source, now: Instant) -> Arc<SourceEntry> {
        if let Some(e) = self.sources.get(source) {
            return e.clone();
        }
        let e = Arc::new(self.build_entry(source, now));
        self.sources.insert(source, e.clone());
        e
    }

    fn build_entry(&mut self, source: &Source, now: Instant) -> SourceEntry {
        let settings = self.settings.clone();
        let node = settings.node.as_deref();
        let variants: &[Stream] = if settings.stream_label {
            &[Stream::Stdout, Stream::Stderr]
        } else {
            &[Stream::Stdout]
        };
        let mut sets = [0u32; 2];
        let mut metadata: [Piece; 2] = Default::default();
        for &stream in variants {
            let mut pairs: Vec<(&str, &str)> = settings
                .labels
                .iter()
                .filter_map(|l| {
                    let v = l.field.value_for(source, stream, node)?;
                    Some((l.name.as_str(), clamp_label_value(v)))
                })
                .collect();
            // The route's extra labels (names checked by the config), after the sink's own.
            for (k, v) in source.routing.labels.iter() {
                if !pairs.iter().any(|(n, _)| n == k) {
                    pairs.push((k.as_str(), clamp_label_value(v)));
                }
            }
            if pairs.is_empty() {
                pairs.push(FALLBACK_LABEL);
            }
            let texts: Vec<String> = (1..=pairs.len()).map(|k| label_text(&pairs[..k])).collect();
            let hashes: Vec<u64> = texts.iter().map(|t| hash_of(t)).collect();
            let kept = self.guard.admit(&hashes, now).max(1);
            let set = self.intern(&texts[kept - 1], hashes[kept - 1], &pairs[..kept]);
            let mut piece = Piece::default();
            if settings.metadata {
                for f in &settings.metadata_fields {
                    if let Some(v) = f.field.value(source, node) {
                        piece.pair(&f.name, v);
                    }
                }
                for (name, value) in &pairs[kept..] {
                    piece.pair(name, value);
                }
            }
            let i = stream_index(stream);
            sets[i] = set;
            metadata[i] = piece;
            if !settings.stream_label {
                sets[1] = set;
                metadata[1] = metadata[0].clone();
            }
        }
        SourceEntry { sets, metadata }
    }

    fn intern(&mut self, text: &str, hash: u64, pairs: &[(&str, &str)]) -> u32 {
        if let Some(&id) = self.set_ids.get(&hash) {
            return id;
        }
        let mut sorted: Vec<&(&str, &str)> = pairs.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let mut json = vec![b'{'];
        for (i, (name, value)) in sorted.iter().enumerate() {
            if i > 0 {
                json.push(b',');
            }
            write_str(&mut json, name.as_bytes());
            json.push(b':');
            write_str(&mut json, value.as_bytes());
        }
        json.push(b'}');
        let id = self.sets.len() as u32;
        self.sets.push(LabelSet {
            text: text.to_string(),
            json,
            hash,
        });
        self.set_ids.insert(hash, id);
        id
    }

    /// Fills `items` with the records' places, sorted by stream then time.
    fn plan(&mut self, records: &[&Record], now: Instant) {
        // Label sets of sources long gone would pile up: start afresh now and then.
        if self.sets.len() > 4 * self.settings.max_label_sets + 1024 {
            self.sets.clear();
            self.set_ids.clear();
            self.sources = SourceCache::new();
        }
        self.items.clear();
        self.batch_sources.clear();
        let mut last = None;
        for (i, r) in records.iter().enumerate() {
            if last != Some(r.source.id) {
                let e = self.entry(&r.source, now);
                self.batch_sources.push(e);
                last = Some(r.source.id);
            }
            let slot = self.batch_sources.len() - 1;
            let set = self.batch_sources[slot].sets[stream_index(r.stream)];
            self.items.push(Item {
                set,
                time_ns: r.time_ns,
                index: i as u32,
                source: slot as u32,
                len: 0,
                lossy: std::str::from_utf8(&r.line).is_err(),
            });
        }
        self.items
            .sort_unstable_by_key(|it| (it.set, it.time_ns, it.index));
    }

    fn metadata_of(&self, it: &Item, r: &Record) -> [&Piece; 3] {
        let src = &self.batch_sources[it.source as usize].metadata[stream_index(r.stream)];
        let stream = &self.stream_metadata[stream_index(r.stream)];
        let truncated = if r.flags & flags::TRUNCATED != 0 {
            &self.truncated_metadata
        } else {
            &EMPTY_PIECE
        };
        [src, stream, truncated]
    }

    fn write_protobuf(&mut self, records: &[&Record], out: &mut Vec<u8>) {
        // Pass 1: every entry's size, then every stream's, so each length prefix is known before
        // its content is written.
        let mut total = 0;
        for k in 0..self.items.len() {
            let it = self.items[k];
            let r = records[it.index as usize];
            let line_len = if it.lossy {
                String::from_utf8_lossy(&r.line).len()
            } else {
                r.line.len()
            };
            let (secs, nanos) = split_time(r.time_ns);
            let ts = pb::varint_field_size(1, secs as u64) + pb::varint_field_size(2, nanos);
            let meta: usize = self.metadata_of(&it, r).iter().map(|p| p.proto.len()).sum();
            let len = pb::len_field_size(1, ts) + pb::len_field_size(2, line_len) + meta;
            self.items[k].len = len as u32;
            total += pb::len_field_size(2, len);
        }
        out.reserve(total + self.sets.len().min(64) * 64);
        // Pass 2: stream by stream.
        let mut start = 0;
        while start < self.items.len() {
            let set = self.items[start].set;
            let end = start
                + self.items[start..]
                    .iter()
                    .take_while(|it| it.set == set)
                    .count();
            let labels = &self.sets[set as usize].text;
            let stream_len = pb::len_field_size(1, labels.len())
                + self.items[start..end]
                    .iter()
                    .map(|it| pb::len_field_size(2, it.len as usize))
                    .sum::<usize>();
            pb::len_prefix(out, 1, stream_len);
            pb::bytes_field(out, 1, labels.as_bytes());
            for it in &self.items[start..end] {
                let r = records[it.index as usize];
                pb::len_prefix(out, 2, it.len as usize);
                let (secs, nanos) = split_time(r.time_ns);
                let ts = pb::varint_field_size(1, secs as u64) + pb::varint_field_size(2, nanos);
                pb::len_prefix(out, 1, ts);
                pb::varint_field(out, 1, secs as u64);
                pb::varint_field(out, 2, nanos);
                if it.lossy {
                    pb::bytes_field(out, 2, String::from_utf8_lossy(&r.line).as_bytes());
                } else {
                    pb::bytes_field(out, 2, &r.line);
                }
                for p in self.metadata_of(it, r) {
                    out.extend_from_slice(&p.proto);
                }
            }
            start = end;
        }
    }

    fn write_json(&self, records: &[&Record], out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"streams\":[");
        let mut start = 0;
        while start < self.items.len() {
            let set = self.items[start].set;
            if start > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"stream\":");
            out.extend_from_slice(&self.sets[set as usize].json);
            out.extend_from_slice(b",\"values\":[");
            let mut first = true;
            let mut end = start;
            while end < self.items.len() && self.items[end].set == set {
                let it = &self.items[end];
                let r = records[it.index as usize];
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(b"[\"");
                out.extend_from_slice(itoa::Buffer::new().format(r.time_ns).as_bytes());
                out.extend_from_slice(b"\",");
                write_str(out, &r.line);
                let pieces = self.metadata_of(it, r);
                if pieces.iter().any(|p| !p.json.is_empty()) {
                    out.extend_from_slice(b",{");
                    let mut first_member = true;
                    for p in pieces.iter().filter(|p| !p.json.is_empty()) {
                        if !first_member {
                            out.push(b',');
                        }
                        first_member = false;
                        out.extend_from_slice(&p.json);
                    }
                    out.push(b'}');
                }
                out.push(b']');
                end += 1;
            }
            out.extend_from_slice(b"]}");
            start = end;
        }
        out.extend_from_slice(b"]}");
    }
}

static EMPTY_PIECE: Piece = Piece {
    proto: Vec::new(),
    json: Vec::new(),
};

/// Unix nanoseconds as `google.protobuf.Timestamp` seconds and nanos (nanos never negative).
fn split_time(ns: i64) -> (i64, u64) {
    (
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u64,
    )
}

impl Encoder for LokiEncoder {
    fn encode(&mut self, records: &[&Record], out: &mut Vec<u8>) {
        let now = Instant::now();
        self.plan(records, now);
        match self.settings.encoding {
            LokiEncoding::Protobuf => self.write_protobuf(records, out),
            LokiEncoding::Json => self.write_json(records, out),
        }
        let mut prev = None;
        let sets = &self.sets;
        self.guard.touch(
            self.items.iter().filter_map(|it| {
                let new = prev != Some(it.set);
                prev = Some(it.set);
                new.then(|| sets[it.set as usize].hash)
            }),
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prost::Message;

    use super::proto::{LabelPairAdapter, PushRequest};
    use super::*;
    use crate::sink::encode::tests::{
        bare_source, record, replica_source, rich_source, sink_config,
    };

    const T0: i64 = 1_714_568_400_000_000_000;

    fn format(options: &str, metrics: &Metrics) -> LokiFormat {
        let cfg = sink_config(&format!(
            "    type: loki\n    url: http://loki:3100\n    loki: {options}\n"
        ));
        LokiFormat::new("out", &cfg, Some("self-node"), metrics).unwrap()
    }

    fn encode(f: &LokiFormat, records: &[Record]) -> Vec<u8> {
        let refs: Vec<&Record> = records.iter().collect();
        let mut out = Vec::new();
        f.encoder().encode(&refs, &mut out);
        out
    }

    fn pairs(p: &[LabelPairAdapter]) -> Vec<(&str, &str)> {
        p.iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect()
    }

    #[test]
    fn protobuf_push_groups_replicas_into_one_stream_sorted_by_time() {
        let m = Metrics::new();
        let f = format("{}", &m);
        let (a, b, bare) = (rich_source(), replica_source(), bare_source());
        let mut truncated = record(&a, b"cut", T0 + 5, Stream::Stdout);
        truncated.flags = flags::TRUNCATED;
        let recs = [
            record(&a, b"third", T0 + 3_000_000_001, Stream::Stdout),
            record(&b, b"first \"quoted\"", T0 + 1, Stream::Stderr),
            record(&bare, b"etcd says hi", T0 + 2, Stream::Stdout),
            truncated,
        ];
        let req = PushRequest::decode(encode(&f, &recs).as_slice()).unwrap();
        assert_eq!(req.streams.len(), 2);
        let web = req
            .streams
            .iter()
            .find(|s| s.labels.contains("web"))
            .unwrap();
        assert_eq!(
            web.labels,
            r#"{app="web", container="nginx", namespace="shop", node="node-a"}"#
        );
        let lines: Vec<&str> = web.entries.iter().map(|e| e.line.as_str()).collect();
        assert_eq!(lines, ["first \"quoted\"", "cut", "third"]);
        let ts: Vec<i64> = web
            .entries
            .iter()
            .map(|e| e.timestamp.as_ref().unwrap().unix_nanos())
            .collect();
        assert_eq!(ts, [T0 + 1, T0 + 5, T0 + 3_000_000_001]);
        assert_eq!(
            pairs(&web.entries[0].structured_metadata),
            [
                ("pod", "web-5d8f-q7q"),
                ("pod_uid", "uid-2"),
                ("container_id", "beef"),
                ("stream", "stderr")
            ]
        );
        assert_eq!(
            pairs(&web.entries[1].structured_metadata),
            [
                ("pod", "web-5d8f-x2x"),
                ("pod_uid", "uid-1"),
                ("container_id", "c0ffee"),
                ("stream", "stdout"),
                ("truncated", "true")
            ]
        );
        let etcd = req
            .streams
            .iter()
            .find(|s| s.labels.contains("etcd"))
            .unwrap();
        // Without API metadata: no app, and the node is loglet's own.
        assert_eq!(
            etcd.labels,
            r#"{container="etcd", namespace="kube-system", node="self-node"}"#
        );
        assert_eq!(etcd.entries.len(), 1);
        assert_eq!(etcd.hash, 0);
    }

    #[test]
    fn json_push_carries_the_same_streams_and_metadata() {
        let m = Metrics::new();
        let f = format("{encoding: json}", &m);
        let (a, bare) = (rich_source(), bare_source());
        let recs = [
            record(&a, b"b", T0 + 9, Stream::Stdout),
            record(&bare, b"x", T0, Stream::Stderr),
            record(&a, b"a\n\"", T0 + 1, Stream::Stdout),
        ];
        let v: serde_json::Value = serde_json::from_slice(&encode(&f, &recs)).unwrap();
        let streams = v["streams"].as_array().unwrap();
        assert_eq!(streams.len(), 2);
        let web = streams
            .iter()
            .find(|s| s["stream"]["app"] == "web")
            .unwrap();
        assert_eq!(
            web["stream"],
            serde_json::json!({"app":"web","container":"nginx","namespace":"shop","node":"node-a"})
        );
        assert_eq!(
            web["values"],
            serde_json::json!([
                [(T0 + 1).to_string(), "a\n\"", {"pod":"web-5d8f-x2x","pod_uid":"uid-1","container_id":"c0ffee","stream":"stdout"}],
                [(T0 + 9).to_string(), "b", {"pod":"web-5d8f-x2x","pod_uid":"uid-1","container_id":"c0ffee","stream":"stdout"}],
            ])
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_in_both_encodings() {
        let m = Metrics::new();
        let src = rich_source();
        let recs = [record(&src, b"bad \xff byte", T0, Stream::Stdout)];
        let req = PushRequest::decode(encode(&format("{}", &m), &recs).as_slice()).unwrap();
        assert_eq!(req.streams[0].entries[0].line, "bad \u{fffd} byte");
        let v: serde_json::Value =
            serde_json::from_slice(&encode(&format("{encoding: json}", &m), &recs)).unwrap();
        assert_eq!(v["streams"][0]["values"][0][1], "bad \u{fffd} byte");
    }

    #[test]
    fn label_sources_names_and_values_follow_the_config() {
        let m = Metrics::new();
        let f = format(
            "{labels: [namespace, 'label:app.kubernetes.io/name', 'cluster=static:eu-1', stream, 'team=label:missing'], structured_metadata: false}",
            &m,
        );
        let src = rich_source();
        let recs = [
            record(&src, b"o", T0, Stream::Stdout),
            record(&src, b"e", T0, Stream::Stderr),
        ];
        let req = PushRequest::decode(encode(&f, &recs).as_slice()).unwrap();
        let mut labels: Vec<&str> = req.streams.iter().map(|s| s.labels.as_str()).collect();
        labels.sort();
        assert_eq!(
            labels,
            [
                r#"{app_kubernetes_io_name="web", cluster="eu-1", namespace="shop", stream="stderr"}"#,
                r#"{app_kubernetes_io_name="web", cluster="eu-1", namespace="shop", stream="stdout"}"#,
            ]
        );
        assert!(
            req.streams
                .iter()
                .all(|s| s.entries[0].structured_metadata.is_empty())
        );
    }

    #[test]
    fn label_values_are_escaped_and_empty_label_sets_get_a_fallback() {
        let m = Metrics::new();
        let f = format(r#"{labels: ["x=static:a\"b\\c\nd", 'label:none']}"#, &m);
        let src = rich_source();
        let req =
            PushRequest::decode(encode(&f, &[record(&src, b"l", T0, Stream::Stdout)]).as_slice())
                .unwrap();
        assert_eq!(req.streams[0].labels, r#"{x="a\"b\\c\nd"}"#);
        let f = format("{labels: ['label:none']}", &m);
        let req =
            PushRequest::decode(encode(&f, &[record(&src, b"l", T0, Stream::Stdout)]).as_slice())
                .unwrap();
        assert_eq!(req.streams[0].labels, r#"{service_name="unknown_service"}"#);
    }

    #[test]
    fn beyond_max_label_sets_new_pods_fold_their_labels_into_metadata() {
        let m = Metrics::new();
        let f = format("{labels: [namespace, pod], max_label_sets: 2}", &m);
        let (a, b, c) = (rich_source(), replica_source(), bare_source());
        let mut enc = f.encoder();
        let mut push = |src: &Arc<Source>| {
            let r = record(src, b"l", T0, Stream::Stdout);
            let mut out = Vec::new();
            enc.encode(&[&r], &mut out);
            PushRequest::decode(out.as_slice()).unwrap()
        };
        assert_eq!(
            push(&a).streams[0].labels,
            r#"{namespace="shop", pod="web-5d8f-x2x"}"#
        );
        assert_eq!(
            push(&b).streams[0].labels,
            r#"{namespace="shop", pod="web-5d8f-q7q"}"#
        );
        // The third Pod's set would be the third: it keeps the namespace only.
        let third = push(&c);
        assert_eq!(third.streams[0].labels, r#"{namespace="kube-system"}"#);
        assert!(
            pairs(&third.streams[0].entries[0].structured_metadata).contains(&("pod", "etcd-n1"))
        );
        // Known sets stay whole.
        assert_eq!(
            push(&a).streams[0].labels,
            r#"{namespace="shop", pod="web-5d8f-x2x"}"#
        );
        assert_eq!(m.loki_labels_folded.with_label_values(&["out"]).get(), 1);
        assert_eq!(m.loki_label_sets.with_label_values(&["out"]).get(), 3);
    }

    #[test]
    fn idle_label_sets_stop_counting_against_the_limit() {
        let m = Metrics::new();
        let guard = LabelGuard {
            limit: 1,
            sets: Mutex::new(HashMap::new()),
            gauge: m.loki_label_sets.with_label_values(&["g"]),
            folded: m.loki_labels_folded.with_label_values(&["g"]),
        };
        let t0 = Instant::now();
        assert_eq!(guard.admit(&[1, 2], t0), 2);
        assert_eq!(
            guard.admit(&[1, 3], t0),
            1,
            "full: folds to the known first label"
        );
        let later = t0 + LABEL_SET_IDLE + Duration::from_secs(1);
        assert_eq!(
            guard.admit(&[4, 5], later),
            2,
            "the idle sets were forgotten"
        );
    }

    #[test]
    fn answers_map_to_outcomes() {
        let retry_after_7 = {
            let mut h = HeaderMap::new();
            h.insert("retry-after", HeaderValue::from_static("7"));
            h
        };
        let none = HeaderMap::new();
        let cases: Vec<(u16, &HeaderMap, &str, Outcome)> = vec![
            (204, &none, "", Outcome::Delivered),
            (
                429,
                &retry_after_7,
                "Ingestion rate limit exceeded",
                Outcome::Retry {
                    after: Some(Duration::from_secs(7)),
                    reason: "loki answered 429 Too Many Requests: Ingestion rate limit exceeded".into(),
                },
            ),
            (
                503,
                &none,
                "",
                Outcome::Retry {
                    after: None,
                    reason: "loki answered 503 Service Unavailable: ".into(),
                },
            ),
            (
                400,
                &none,
                "entry with timestamp 2024-05-01 ignored, reason: 'entry too far behind, oldest acceptable timestamp is: 2024-05-01T12:00:00Z',\nuser 'fake', total ignored: 2 out of 5 for stream: {namespace=\"shop\"}",
                Outcome::Partial {
                    retry: vec![],
                    rejected: 2,
                    after: None,
                    reason: "loki answered 400 Bad Request: entry with timestamp 2024-05-01 ignored, reason: 'entry too far behind, oldest acceptable timestamp is: 2024-05-01T12:00:00Z', user 'fake', total ignored: 2 out of 5 for stream: {namespace=\"shop\"}".into(),
                },
            ),
            (
                400,
                &none,
                "Max entry size '262144' bytes exceeded for stream '{namespace=\"shop\"}' while adding an entry with length '300000' bytes",
                Outcome::Rejected {
                    reason: "loki answered 400 Bad Request: Max entry size '262144' bytes exceeded for stream '{namespace=\"shop\"}' while adding an entry with length '300000' bytes".into(),
                },
            ),
            (
                401,
                &none,
                "no org id",
                Outcome::Rejected {
                    reason: "loki answered 401 Unauthorized: no org id".into(),
                },
            ),
        ];
        for (status, headers, body, want) in cases {
            let got = outcome(
                StatusCode::from_u16(status).unwrap(),
                headers,
                body.as_bytes(),
                5,
            );
            assert_eq!(got, want, "{status} {body}");
        }
    }

    #[test]
    fn requests_name_the_tenant_path_type_and_compression() {
        let m = Metrics::new();
        let f = format("{tenant: team-a}", &m);
        let mut h = HeaderMap::new();
        f.headers(&mut h);
        assert_eq!(h["x-scope-orgid"], "team-a");
        assert_eq!(f.path(), Some(PUSH_PATH));
        assert_eq!(f.content_type(), "application/x-protobuf");
        assert_eq!(f.default_compression(), Compression::Snappy);
        let j = format("{encoding: json}", &m);
        assert_eq!(j.content_type(), "application/json");
        assert_eq!(j.default_compression(), Compression::None);
        let mut h = HeaderMap::new();
        j.headers(&mut h);
        assert!(h.is_empty());
        let cfg = sink_config("    type: loki\n    url: http://loki:3100/loki/api/v1/push\n");
        let full = LokiFormat::new("out", &cfg, None, &m).unwrap();
        assert_eq!(full.path(), None);
    }

    #[test]
    fn label_names_are_checked_and_keys_sanitized() {
        for (name, ok) in [
            ("app", true),
            ("_x1", true),
            ("1x", false),
            ("__name__", false),
            ("a-b", false),
            ("", false),
        ] {
            assert_eq!(valid_label_name(name), ok, "{name}");
        }
        assert_eq!(
            sanitize_label_name("app.kubernetes.io/name"),
            "app_kubernetes_io_name"
        );
        assert_eq!(sanitize_label_name("9lives"), "_9lives");
    }
}
