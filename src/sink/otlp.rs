//! sink: OTLP/HTTP logs, `POST /v1/logs` with an `ExportLogsServiceRequest` in protobuf or in
//! OTLP's JSON mapping (https://opentelemetry.io/docs/specs/otlp/#otlphttp).
//!
//! Records are grouped per resource: one `ResourceLogs` per `Source`, whose attributes follow the
//! OpenTelemetry semantic conventions for Kubernetes (`k8s.namespace.name`, `k8s.pod.name`,
//! `k8s.deployment.name` …, https://opentelemetry.io/docs/specs/semconv/resource/k8s/) and are
//! encoded once per `Source`. Each `LogRecord` carries the runtime's timestamp, the time loglet
//! encoded it as observed time, the line as a string body, and `log.iostream` and
//! `log.file.path` as the filelog receiver's `container` parser sets them. Like that parser,
//! loglet sets no severity: stderr is where many programs write everything, so it says nothing
//! of a line's severity.
//!
//! Answers: a partial success is final (the spec forbids re-sending it), reported as
//! `Outcome::Partial { retry: [], rejected }`; only 429, 502, 503 and 504 are retried.

pub mod proto;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap};

use super::encode::{FormatError, SourceCache, path_unless_present, pb};
use super::format::{Encoder, Format, Outcome, body_sample, retry_after};
use super::json::write_str;
use crate::config::{Compression, OtlpEncoding, SinkConfig};
use crate::record::{Record, Source, Stream, flags};

pub const LOGS_PATH: &str = "/v1/logs";

/// Annotations under this prefix become resource attributes (semantic conventions, "Specify
/// resource attributes using Kubernetes annotations").
const RESOURCE_ANNOTATION_PREFIX: &str = "resource.opentelemetry.io/";

/// The `otlp` sink's wire format.
pub struct OtlpFormat {
    settings: Arc<Settings>,
    path: Option<String>,
}

struct Settings {
    encoding: OtlpEncoding,
    service_name_from_labels: bool,
    node: Option<String>,
}

impl OtlpFormat {
    pub fn new(
        _sink: &str,
        cfg: &SinkConfig,
        node_name: Option<&str>,
    ) -> Result<OtlpFormat, FormatError> {
        let opts = cfg.otlp.clone().unwrap_or_default();
        Ok(OtlpFormat {
            settings: Arc::new(Settings {
                encoding: opts.encoding,
                service_name_from_labels: opts.service_name_from_labels,
                node: node_name.map(str::to_string),
            }),
            path: path_unless_present(cfg.url.as_deref(), LOGS_PATH),
        })
    }
}

impl Format for OtlpFormat {
    fn content_type(&self) -> &'static str {
        match self.settings.encoding {
            OtlpEncoding::Protobuf => "application/x-protobuf",
            OtlpEncoding::Json => "application/json",
        }
    }

    fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// The OpenTelemetry Collector's `otlphttp` exporter compresses with gzip by default.
    fn default_compression(&self) -> Compression {
        Compression::Gzip
    }

    fn encoder(&self) -> Box<dyn Encoder> {
        Box::new(OtlpEncoder::new(self.settings.clone()))
    }

    fn outcome(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        records: usize,
    ) -> Outcome {
        let json = match headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
            Some(ct) => ct.contains("json"),
            None => self.settings.encoding == OtlpEncoding::Json,
        };
        outcome(status, headers, body, json, records)
    }
}

/// Reads an OTLP/HTTP answer (https://opentelemetry.io/docs/specs/otlp/#otlphttp-response).
fn outcome(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    json: bool,
    records: usize,
) -> Outcome {
    if status.is_success() {
        return match partial_success(body, json) {
            Some((rejected, message)) if rejected > 0 => Outcome::Partial {
                retry: Vec::new(),
                // A server cannot reject more than it was sent.
                rejected: usize::try_from(rejected).unwrap_or(usize::MAX).min(records),
                after: None,
                reason: format!("otlp partial success, {rejected} rejected: {message}"),
            },
            _ => Outcome::Delivered,
        };
    }
    let message = status_message(body, json).unwrap_or_else(|| body_sample(body));
    let reason = format!("otlp answered {status}: {message}");
    match status.as_u16() {
        429 | 502 | 503 | 504 => Outcome::Retry {
            after: retry_after(headers),
            reason,
        },
        _ => Outcome::Rejected { reason },
    }
}

/// `(rejected_log_records, error_message)` of a success body, if it has a partial success.
fn partial_success(body: &[u8], json: bool) -> Option<(i64, String)> {
    if body.is_empty() {
        return None;
    }
    if json {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let p = v.get("partialSuccess")?;
        let rejected = match p.get("rejectedLogRecords") {
            Some(serde_json::Value::String(s)) => s.parse().ok()?,
            Some(n) => n.as_i64()?,
            None => 0,
        };
        let message = p.get("errorMessage").and_then(|m| m.as_str()).unwrap_or("");
        Some((rejected, message.to_string()))
    } else {
        let r = proto::ExportLogsServiceResponse::decode(body).ok()?;
        let p = r.partial_success?;
        Some((p.rejected_log_records, p.error_message))
    }
}

/// The message of a `google.rpc.Status` failure body.
fn status_message(body: &[u8], json: bool) -> Option<String> {
    let message = if json {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        v.get("message")?.as_str()?.to_string()
    } else {
        proto::Status::decode(body).ok()?.message
    };
    (!message.is_empty()).then_some(message)
}

/// An attribute value.
enum Value<'a> {
    Str(&'a str),
    Int(i64),
}

/// The resource attributes of a source, in the order they are sent.
fn resource_attributes<'a>(
    source: &'a Source,
    settings: &'a Settings,
) -> Vec<(std::borrow::Cow<'a, str>, Value<'a>)> {
    use std::borrow::Cow::{Borrowed, Owned};
    let meta = source.pod_meta.as_deref();
    let container = meta.and_then(|m| m.container(&source.container));
    let mut a: Vec<(std::borrow::Cow<'a, str>, Value<'a>)> = Vec::with_capacity(24);
    let mut put = |k: &'static str, v: Value<'a>| a.push((Borrowed(k), v));
    put("k8s.namespace.name", Value::Str(&source.namespace));
    put("k8s.pod.name", Value::Str(&source.pod));
    put(
        "k8s.pod.uid",
        Value::Str(meta.map_or(source.pod_uid.as_str(), |m| m.uid.as_str())),
    );
    put("k8s.container.name", Value::Str(&source.container));
    if let Some(n) = source.restart_count {
        put("k8s.container.restart_count", Value::Int(i64::from(n)));
    }
    if let Some(node) = meta
        .and_then(|m| m.node_name.as_deref())
        .or(settings.node.as_deref())
    {
        put("k8s.node.name", Value::Str(node));
    }
    let mut workload_names: Vec<&'a str> = Vec::new();
    if let Some(m) = meta {
        for (kind, name) in [&m.workload, &m.owner].into_iter().flatten() {
            let key = match kind.as_str() {
                "Deployment" => "k8s.deployment.name",
                "ReplicaSet" => "k8s.replicaset.name",
                "StatefulSet" => "k8s.statefulset.name",
                "DaemonSet" => "k8s.daemonset.name",
                "Job" => "k8s.job.name",
                "CronJob" => "k8s.cronjob.name",
                _ => continue,
            };
            if !workload_names.contains(&name.as_str()) {
                put(key, Value::Str(name));
                workload_names.push(name);
            }
        }
    }
    let container_id = source
        .container_id
        .as_deref()
        .or_else(|| container.and_then(|c| c.container_id.as_deref()));
    if let Some(id) = container_id {
        put("container.id", Value::Str(id));
    }
    if let Some(image) = container.and_then(|c| c.image.as_deref()) {
        let (name, tag) = split_image(image);
        put("container.image.name", Value::Str(name));
        if let Some(tag) = tag {
            put("container.image.tag", Value::Str(tag));
        }
    }
    // service.name, per the semantic conventions for Kubernetes: the annotation (below), the
    // well-known labels (opt-in), the workload, the Pod.
    let label = |k: &str| {
        meta.and_then(|m| m.labels.iter().find(|(lk, _)| lk == k))
            .map(|(_, v)| v.as_str())
    };
    let service = settings
        .service_name_from_labels
        .then(|| label("app.kubernetes.io/instance").or_else(|| label("app.kubernetes.io/name")))
        .flatten()
        .or_else(|| workload_names.first().copied())
        .unwrap_or(&source.pod);
    put("service.name", Value::Str(service));
    put("service.namespace", Value::Str(&source.namespace));
    if let Some(m) = meta {
        for (prefix, pairs) in [
            ("k8s.pod.label.", &m.labels),
            ("k8s.pod.annotation.", &m.annotations),
            ("k8s.namespace.label.", &m.namespace_labels),
        ] {
            for (k, v) in pairs {
                a.push((Owned(format!("{prefix}{k}")), Value::Str(v)));
            }
        }
        for (k, v) in &m.annotations {
            if let Some(attr) = k.strip_prefix(RESOURCE_ANNOTATION_PREFIX) {
                match a.iter_mut().find(|(key, _)| key == attr) {
                    Some(slot) => slot.1 = Value::Str(v),
                    None => a.push((Owned(attr.to_string()), Value::Str(v))),
                }
            }
        }
    }
    a
}

/// `registry/app:1.2` → (`registry/app`, `1.2`); a digest reference has no tag.
fn split_image(image: &str) -> (&str, Option<&str>) {
    if let Some((name, _digest)) = image.split_once('@') {
        return (name, None);
    }
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(colon) => (&image[..slash + colon], Some(&image[slash + colon + 1..])),
        None => (image, None),
    }
}

/// A `KeyValue` message's content.
fn kv_proto(out: &mut Vec<u8>, key: &str, value: &Value<'_>) {
    let any_len = match value {
        Value::Str(s) => pb::len_field_size(1, s.len()),
        Value::Int(v) => 1 + pb::encoded_len_varint(*v as u64),
    };
    pb::bytes_field(out, 1, key.as_bytes());
    pb::len_prefix(out, 2, any_len);
    match value {
        Value::Str(s) => pb::bytes_field(out, 1, s.as_bytes()),
        Value::Int(v) => {
            // AnyValue.int_value = 3, wire type 0; written even when zero (it is a oneof).
            out.push(3 << 3);
            pb::encode_varint(*v as u64, out);
        }
    }
}

/// A repeated `KeyValue` field (`tag`) holding one attribute.
fn attribute_proto(out: &mut Vec<u8>, tag: u32, key: &str, value: &Value<'_>) {
    let mut kv = Vec::with_capacity(key.len() + 16);
    kv_proto(&mut kv, key, value);
    pb::bytes_field(out, tag, &kv);
}

/// `{"key":…,"value":{"stringValue":…}}`
fn attribute_json(out: &mut Vec<u8>, key: &str, value: &Value<'_>) {
    out.extend_from_slice(b"{\"key\":");
    write_str(out, key.as_bytes());
    match value {
        Value::Str(s) => {
            out.extend_from_slice(b",\"value\":{\"stringValue\":");
            write_str(out, s.as_bytes());
        }
        Value::Int(v) => {
            out.extend_from_slice(b",\"value\":{\"intValue\":\"");
            out.extend_from_slice(itoa::Buffer::new().format(*v).as_bytes());
            out.push(b'"');
        }
    }
    out.extend_from_slice(b"}}");
}

/// What a source contributes to a request, built once.
struct SourceEntry {
    /// Protobuf: `ResourceLogs.resource` (field 1) with key and length.
    resource_proto: Vec<u8>,
    /// Protobuf: the `log.file.path` attribute, as `LogRecord.attributes` (field 6).
    path_proto: Vec<u8>,
    /// JSON: `"resource":{"attributes":[…]}`.
    resource_json: Vec<u8>,
    /// JSON: the `log.file.path` attribute object.
    path_json: Vec<u8>,
}

impl SourceEntry {
    fn build(source: &Source, settings: &Settings) -> SourceEntry {
        let attrs = resource_attributes(source, settings);
        let mut e = SourceEntry {
            resource_proto: Vec::new(),
            path_proto: Vec::new(),
            resource_json: Vec::new(),
            path_json: Vec::new(),
        };
        let path = Value::Str(&source.path);
        match settings.encoding {
            OtlpEncoding::Protobuf => {
                let mut resource = Vec::with_capacity(512);
                for (k, v) in &attrs {
                    attribute_proto(&mut resource, 1, k, v);
                }
                pb::bytes_field(&mut e.resource_proto, 1, &resource);
                attribute_proto(&mut e.path_proto, 6, "log.file.path", &path);
            }
            OtlpEncoding::Json => {
                e.resource_json
                    .extend_from_slice(b"\"resource\":{\"attributes\":[");
                for (i, (k, v)) in attrs.iter().enumerate() {
                    if i > 0 {
                        e.resource_json.push(b',');
                    }
                    attribute_json(&mut e.resource_json, k, v);
                }
                e.resource_json.extend_from_slice(b"]}");
                attribute_json(&mut e.path_json, "log.file.path", &path);
            }
        }
        e
    }
}

/// Record attributes that do not depend on the source, pre-encoded.
struct Constants {
    iostream_proto: [Vec<u8>; 2],
    iostream_json: [Vec<u8>; 2],
    truncated_proto: Vec<u8>,
    truncated_json: Vec<u8>,
}

#[derive(Clone, Copy)]
struct Item {
    source: u64,
    index: u32,
    /// Protobuf: the `LogRecord`'s encoded size.
    len: u32,
    lossy: bool,
}

struct Run {
    start: usize,
    end: usize,
    entry: Arc<SourceEntry>,
    /// Protobuf: the `ScopeLogs`' encoded size.
    scope_len: usize,
}

struct OtlpEncoder {
    settings: Arc<Settings>,
    sources: SourceCache<Arc<SourceEntry>>,
    constants: Constants,
    items: Vec<Item>,
    runs: Vec<Run>,
}

fn stream_index(s: Stream) -> usize {
    match s {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl OtlpEncoder {
    fn new(settings: Arc<Settings>) -> OtlpEncoder {
        let mut c = Constants {
            iostream_proto: Default::default(),
            iostream_json: Default::default(),
            truncated_proto: Vec::new(),
            truncated_json: Vec::new(),
        };
        for s in [Stream::Stdout, Stream::Stderr] {
            let i = stream_index(s);
            attribute_proto(
                &mut c.iostream_proto[i],
                6,
                "log.iostream",
                &Value::Str(s.as_str()),
            );
            attribute_json(
                &mut c.iostream_json[i],
                "log.iostream",
                &Value::Str(s.as_str()),
            );
        }
        // A boolean attribute: AnyValue.bool_value = 2.
        let mut kv = Vec::new();
        pb::bytes_field(&mut kv, 1, b"loglet.truncated");
        pb::bytes_field(&mut kv, 2, &[2 << 3, 1]);
        pb::bytes_field(&mut c.truncated_proto, 6, &kv);
        c.truncated_json
            .extend_from_slice(b"{\"key\":\"loglet.truncated\",\"value\":{\"boolValue\":true}}");
        OtlpEncoder {
            settings,
            sources: SourceCache::new(),
            constants: c,
            items: Vec::new(),
            runs: Vec::new(),
        }
    }

    fn entry(&mut self, source: &Source) -> Arc<SourceEntry> {
        let settings = &self.settings;
        self.sources
            .get_or_insert_with(source, || Arc::new(SourceEntry::build(source, settings)))
            .clone()
    }

    /// Groups the records per source, keeping their order within each.
    fn plan(&mut self, records: &[&Record]) {
        self.items.clear();
        self.runs.clear();
        self.items
            .extend(records.iter().enumerate().map(|(i, r)| Item {
                source: r.source.id,
                index: i as u32,
                len: 0,
                lossy: std::str::from_utf8(&r.line).is_err(),
            }));
        self.items.sort_unstable_by_key(|it| (it.source, it.index));
        let mut start = 0;
        while start < self.items.len() {
            let id = self.items[start].source;
            let end = start
                + self.items[start..]
                    .iter()
                    .take_while(|it| it.source == id)
                    .count();
            let entry = self.entry(&records[self.items[start].index as usize].source);
            self.runs.push(Run {
                start,
                end,
                entry,
                scope_len: 0,
            });
            start = end;
        }
    }

    fn write_protobuf(&mut self, records: &[&Record], observed: u64, out: &mut Vec<u8>) {
        let c = &self.constants;
        let mut total = 0;
        for run in &mut self.runs {
            let mut scope_len = 0;
            for it in &mut self.items[run.start..run.end] {
                let r = records[it.index as usize];
                let line_len = if it.lossy {
                    String::from_utf8_lossy(&r.line).len()
                } else {
                    r.line.len()
                };
                let mut len = pb::fixed64_field_size(1)
                    + pb::len_field_size(5, pb::len_field_size(1, line_len))
                    + c.iostream_proto[stream_index(r.stream)].len()
                    + run.entry.path_proto.len()
                    + pb::fixed64_field_size(11);
                if r.flags & flags::TRUNCATED != 0 {
                    len += c.truncated_proto.len();
                }
                it.len = len as u32;
                scope_len += pb::len_field_size(2, len);
            }
            run.scope_len = scope_len;
            total += pb::len_field_size(
                1,
                run.entry.resource_proto.len() + pb::len_field_size(2, scope_len),
            );
        }
        out.reserve(total);
        for run in &self.runs {
            let rl_len = run.entry.resource_proto.len() + pb::len_field_size(2, run.scope_len);
            pb::len_prefix(out, 1, rl_len);
            out.extend_from_slice(&run.entry.resource_proto);
            pb::len_prefix(out, 2, run.scope_len);
            for it in &self.items[run.start..run.end] {
                let r = records[it.index as usize];
                pb::len_prefix(out, 2, it.len as usize);
                pb::fixed64_field(out, 1, r.time_ns.max(0) as u64);
                if it.lossy {
                    let line = String::from_utf8_lossy(&r.line);
                    pb::len_prefix(out, 5, pb::len_field_size(1, line.len()));
                    pb::bytes_field(out, 1, line.as_bytes());
                } else {
                    pb::len_prefix(out, 5, pb::len_field_size(1, r.line.len()));
                    pb::bytes_field(out, 1, &r.line);
                }
                out.extend_from_slice(&c.iostream_proto[stream_index(r.stream)]);
                out.extend_from_slice(&run.entry.path_proto);
                if r.flags & flags::TRUNCATED != 0 {
                    out.extend_from_slice(&c.truncated_proto);
                }
                pb::fixed64_field(out, 11, observed);
            }
        }
    }

    fn write_json(&self, records: &[&Record], observed: u64, out: &mut Vec<u8>) {
        let c = &self.constants;
        let mut observed_buf = itoa::Buffer::new();
        let observed = observed_buf.format(observed);
        out.extend_from_slice(b"{\"resourceLogs\":[");
        for (ri, run) in self.runs.iter().enumerate() {
            if ri > 0 {
                out.push(b',');
            }
            out.push(b'{');
            out.extend_from_slice(&run.entry.resource_json);
            out.extend_from_slice(b",\"scopeLogs\":[{\"logRecords\":[");
            for (i, it) in self.items[run.start..run.end].iter().enumerate() {
                let r = records[it.index as usize];
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"timeUnixNano\":\"");
                out.extend_from_slice(itoa::Buffer::new().format(r.time_ns.max(0)).as_bytes());
                out.extend_from_slice(b"\",\"observedTimeUnixNano\":\"");
                out.extend_from_slice(observed.as_bytes());
                out.extend_from_slice(b"\",\"body\":{\"stringValue\":");
                write_str(out, &r.line);
                out.extend_from_slice(b"},\"attributes\":[");
                out.extend_from_slice(&c.iostream_json[stream_index(r.stream)]);
                out.push(b',');
                out.extend_from_slice(&run.entry.path_json);
                if r.flags & flags::TRUNCATED != 0 {
                    out.push(b',');
                    out.extend_from_slice(&c.truncated_json);
                }
                out.extend_from_slice(b"]}");
            }
            out.extend_from_slice(b"]}]}");
        }
        out.extend_from_slice(b"]}");
    }
}

impl Encoder for OtlpEncoder {
    fn encode(&mut self, records: &[&Record], out: &mut Vec<u8>) {
        let observed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.plan(records);
        match self.settings.encoding {
            OtlpEncoding::Protobuf => self.write_protobuf(records, observed, out),
            OtlpEncoding::Json => self.write_json(records, observed, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use reqwest::header::HeaderValue;

    use super::proto::{
        ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse, KeyValue,
        SeverityNumber,
    };
    use super::*;
    use crate::sink::encode::tests::{bare_source, record, rich_source, sink_config};

    const T0: i64 = 1_714_568_400_000_000_000;

    fn format(options: &str) -> OtlpFormat {
        let cfg = sink_config(&format!(
            "    type: otlp\n    url: http://otel:4318\n    otlp: {options}\n"
        ));
        OtlpFormat::new("out", &cfg, Some("self-node")).unwrap()
    }

    fn encode(f: &OtlpFormat, records: &[Record]) -> Vec<u8> {
        let refs: Vec<&Record> = records.iter().collect();
        let mut out = Vec::new();
        f.encoder().encode(&refs, &mut out);
        out
    }

    fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
        kvs.iter()
            .map(|kv| {
                let v = kv
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| kv.as_int().map(|i| format!("int:{i}")))
                    .unwrap_or_else(|| format!("{:?}", kv.value));
                (kv.key.clone(), v)
            })
            .collect()
    }

    fn now_ns() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    }

    #[test]
    fn protobuf_export_groups_records_per_resource_with_k8s_attributes() {
        let f = format("{}");
        let (rich, bare) = (rich_source(), bare_source());
        let mut cut = record(&rich, b"third", T0 + 2, Stream::Stdout);
        cut.flags = flags::TRUNCATED;
        let recs = [
            record(&rich, b"first", T0 + 9, Stream::Stderr),
            record(&bare, b"etcd", T0, Stream::Stdout),
            cut,
        ];
        let before = now_ns();
        let req = ExportLogsServiceRequest::decode(encode(&f, &recs).as_slice()).unwrap();
        let after = now_ns();
        assert_eq!(req.resource_logs.len(), 2);
        let web = &req.resource_logs[0];
        let want: BTreeMap<String, String> = [
            ("k8s.namespace.name", "shop"),
            ("k8s.pod.name", "web-5d8f-x2x"),
            ("k8s.pod.uid", "uid-1"),
            ("k8s.container.name", "nginx"),
            ("k8s.container.restart_count", "int:2"),
            ("k8s.node.name", "node-a"),
            ("k8s.deployment.name", "web"),
            ("k8s.replicaset.name", "web-5d8f"),
            ("container.id", "c0ffee"),
            ("container.image.name", "nginx"),
            ("container.image.tag", "1.27"),
            ("service.name", "web"),
            ("service.namespace", "shop"),
            ("k8s.pod.label.app.kubernetes.io/name", "web"),
            ("k8s.pod.label.team", "Payments"),
            ("k8s.pod.annotation.owner", "alice"),
            ("k8s.namespace.label.env", "prod"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(attrs(&web.resource.as_ref().unwrap().attributes), want);
        assert_eq!(web.scope_logs.len(), 1);
        assert!(web.scope_logs[0].scope.is_none());
        let logs = &web.scope_logs[0].log_records;
        let bodies: Vec<String> = logs
            .iter()
            .map(|l| match l.body.as_ref().unwrap().value.as_ref().unwrap() {
                proto::any_value::Value::StringValue(s) => s.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(bodies, ["first", "third"], "records keep their order");
        let first = &logs[0];
        assert_eq!(first.time_unix_nano, (T0 + 9) as u64);
        assert!((before..=after).contains(&first.observed_time_unix_nano));
        assert_eq!(first.severity_number, SeverityNumber::Unspecified as i32);
        assert_eq!(first.severity_text, "");
        assert_eq!(
            attrs(&first.attributes),
            BTreeMap::from([
                ("log.file.path".to_string(), rich.path.clone()),
                ("log.iostream".to_string(), "stderr".to_string()),
            ])
        );
        assert!(
            logs[1]
                .attributes
                .iter()
                .any(|kv| kv.key == "loglet.truncated")
        );
        let etcd = attrs(&req.resource_logs[1].resource.as_ref().unwrap().attributes);
        assert_eq!(etcd["k8s.node.name"], "self-node");
        assert_eq!(etcd["service.name"], "etcd-n1");
        assert!(!etcd.contains_key("container.id"));
    }

    #[test]
    fn json_export_uses_lower_camel_case_and_string_int64s() {
        let f = format("{encoding: json}");
        let rich = rich_source();
        let recs = [record(&rich, b"hello \"x\"", T0 + 1, Stream::Stdout)];
        let v: serde_json::Value = serde_json::from_slice(&encode(&f, &recs)).unwrap();
        let rl = &v["resourceLogs"][0];
        let resource = rl["resource"]["attributes"].as_array().unwrap();
        assert!(resource.contains(
            &serde_json::json!({"key":"k8s.container.restart_count","value":{"intValue":"2"}})
        ));
        assert!(resource.contains(
            &serde_json::json!({"key":"k8s.pod.name","value":{"stringValue":"web-5d8f-x2x"}})
        ));
        let log = &rl["scopeLogs"][0]["logRecords"][0];
        assert_eq!(log["timeUnixNano"], (T0 + 1).to_string());
        assert!(
            log["observedTimeUnixNano"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .is_ok()
        );
        assert_eq!(
            log["body"],
            serde_json::json!({"stringValue":"hello \"x\""})
        );
        assert_eq!(
            log["attributes"],
            serde_json::json!([
                {"key":"log.iostream","value":{"stringValue":"stdout"}},
                {"key":"log.file.path","value":{"stringValue":rich.path}},
            ])
        );
        assert!(log.get("severityNumber").is_none());
    }

    #[test]
    fn invalid_utf8_bodies_are_replaced() {
        let f = format("{}");
        let recs = [record(&rich_source(), b"\xc3\x28 x", T0, Stream::Stdout)];
        let req = ExportLogsServiceRequest::decode(encode(&f, &recs).as_slice()).unwrap();
        let body = &req.resource_logs[0].scope_logs[0].log_records[0].body;
        assert_eq!(
            body.as_ref().unwrap().value,
            Some(proto::any_value::Value::StringValue("\u{fffd}( x".into()))
        );
    }

    #[test]
    fn service_name_follows_annotations_labels_then_workload() {
        let rich = rich_source();
        let settings = |labels| Settings {
            encoding: OtlpEncoding::Protobuf,
            service_name_from_labels: labels,
            node: None,
        };
        let service = |s: &Source, set: &Settings| -> String {
            resource_attributes(s, set)
                .into_iter()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| match v {
                    Value::Str(s) => s.to_string(),
                    Value::Int(i) => i.to_string(),
                })
                .unwrap()
        };
        assert_eq!(service(&rich, &settings(false)), "web");
        let mut meta = rich.pod_meta.as_deref().cloned().unwrap();
        meta.labels
            .push(("app.kubernetes.io/instance".into(), "web-eu".into()));
        meta.workload = None;
        meta.owner = None;
        let with = |meta: crate::record::PodMeta| Source {
            id: Source::next_id(),
            path: rich.path.clone(),
            namespace: rich.namespace.clone(),
            pod: rich.pod.clone(),
            pod_uid: rich.pod_uid.clone(),
            container: rich.container.clone(),
            container_id: None,
            restart_count: None,
            pod_meta: Some(Arc::new(meta)),
            routing: Default::default(),
            sidecar: None,
        };
        assert_eq!(service(&with(meta.clone()), &settings(true)), "web-eu");
        assert_eq!(
            service(&with(meta.clone()), &settings(false)),
            "web-5d8f-x2x"
        );
        meta.annotations.push((
            "resource.opentelemetry.io/service.name".into(),
            "checkout".into(),
        ));
        assert_eq!(service(&with(meta), &settings(true)), "checkout");
    }

    #[test]
    fn images_split_into_name_and_tag() {
        let cases = [
            ("nginx:1.27", ("nginx", Some("1.27"))),
            ("nginx", ("nginx", None)),
            (
                "registry:5000/team/app:v2",
                ("registry:5000/team/app", Some("v2")),
            ),
            ("registry:5000/team/app", ("registry:5000/team/app", None)),
            ("app@sha256:abcd", ("app", None)),
        ];
        for (image, want) in cases {
            assert_eq!(split_image(image), want, "{image}");
        }
    }

    #[test]
    fn answers_map_to_outcomes_as_the_otlp_spec_says() {
        let partial = ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess {
                rejected_log_records: 3,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        let warning = ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess {
                rejected_log_records: 0,
                error_message: "slow down".into(),
            }),
        }
        .encode_to_vec();
        let status = proto::Status {
            code: 3,
            message: "bad attribute".into(),
            details: vec![],
        }
        .encode_to_vec();
        let mut retry_after = HeaderMap::new();
        retry_after.insert("retry-after", HeaderValue::from_static("30"));
        let none = HeaderMap::new();
        let partial_out = Outcome::Partial {
            retry: vec![],
            rejected: 3,
            after: None,
            reason: "otlp partial success, 3 rejected: too old".into(),
        };
        let cases: Vec<(u16, &HeaderMap, &[u8], bool, Outcome)> = vec![
            (200, &none, b"", false, Outcome::Delivered),
            (200, &none, &partial, false, partial_out.clone()),
            (200, &none, &warning, false, Outcome::Delivered),
            (
                200,
                &none,
                br#"{"partialSuccess":{"rejectedLogRecords":"3","errorMessage":"too old"}}"#,
                true,
                partial_out,
            ),
            (200, &none, b"{}", true, Outcome::Delivered),
            (
                429,
                &retry_after,
                b"",
                false,
                Outcome::Retry {
                    after: Some(Duration::from_secs(30)),
                    reason: "otlp answered 429 Too Many Requests: ".into(),
                },
            ),
            (
                502,
                &none,
                b"",
                false,
                Outcome::Retry {
                    after: None,
                    reason: "otlp answered 502 Bad Gateway: ".into(),
                },
            ),
            (
                500,
                &none,
                b"",
                false,
                Outcome::Rejected {
                    reason: "otlp answered 500 Internal Server Error: ".into(),
                },
            ),
            (
                400,
                &none,
                &status,
                false,
                Outcome::Rejected {
                    reason: "otlp answered 400 Bad Request: bad attribute".into(),
                },
            ),
            (
                400,
                &none,
                br#"{"code":3,"message":"bad json"}"#,
                true,
                Outcome::Rejected {
                    reason: "otlp answered 400 Bad Request: bad json".into(),
                },
            ),
        ];
        for (code, headers, body, json, want) in cases {
            let got = outcome(
                StatusCode::from_u16(code).unwrap(),
                headers,
                body,
                json,
                usize::MAX,
            );
            assert_eq!(got, want, "{code} json={json}");
        }
    }

    #[test]
    fn the_response_content_type_decides_how_it_is_read() {
        let f = format("{}");
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let got = f.outcome(
            StatusCode::OK,
            &h,
            br#"{"partialSuccess":{"rejectedLogRecords":2}}"#,
            5,
        );
        assert!(
            matches!(got, Outcome::Partial { rejected: 2, .. }),
            "{got:?}"
        );
        assert_eq!(f.path(), Some(LOGS_PATH));
        assert_eq!(f.default_compression(), Compression::Gzip);
        assert_eq!(f.content_type(), "application/x-protobuf");
        let cfg = sink_config("    type: otlp\n    url: http://otel:4318/v1/logs\n");
        assert_eq!(OtlpFormat::new("out", &cfg, None).unwrap().path(), None);
    }
}
