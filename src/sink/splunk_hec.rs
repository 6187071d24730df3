//! sink: Splunk HTTP Event Collector, `POST /services/collector/event` with concatenated JSON
//! events and `Authorization: Splunk <token>`
//! (https://docs.splunk.com/Documentation/Splunk/latest/Data/FormateventsforHTTPEventCollector).
//!
//! An event is `{"time":<epoch s.ms>,"event":<line>,"host":…,"source":…,"sourcetype":…,
//! "index":…,"fields":{…}}`; everything after the line is rendered once per `Source`. Empty and
//! whitespace-only lines are not sent: HEC refuses them (code 13) and would refuse the batch.
//! Answers are read by HEC's status code: 8, 9 and 18–20 (busy, unhealthy) are retried, the
//! others (bad token, bad index, bad data) are final.

use std::sync::Arc;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use super::encode::{
    Field, FormatError, NamedField, SourceCache, Template, parse_fields, parse_template,
    path_unless_present, read_secret,
};
use super::format::{Encoder, Format, Outcome, body_sample, retry_after};
use super::json::write_str;
use crate::config::SinkConfig;
use crate::record::{Record, Source, Stream};

struct Settings {
    index: Option<Template>,
    source: Template,
    sourcetype: Template,
    host: Template,
    /// Per-source indexed fields.
    fields: Vec<NamedField>,
    /// The name of the `stream` indexed field, if one is configured.
    stream_field: Option<String>,
    node: Option<String>,
    /// This sink's place in the config, to find its route's index, source and sourcetype in a
    /// record's routing.
    sink: usize,
}

/// The `splunk_hec` sink's wire format.
pub struct SplunkHecFormat {
    settings: Arc<Settings>,
    path: Option<String>,
    authorization: HeaderValue,
    channel: HeaderValue,
}

/// A random channel ID (a UUID v4): tokens with indexer acknowledgment enabled refuse requests
/// without one; tokens without ignore it.
fn channel_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

impl SplunkHecFormat {
    pub fn new(
        sink: &str,
        cfg: &SinkConfig,
        node_name: Option<&str>,
    ) -> Result<SplunkHecFormat, FormatError> {
        let opts = cfg.splunk_hec.clone().unwrap_or_default();
        let token = match (&opts.token, &opts.token_file) {
            (Some(t), _) => t.0.clone(),
            (None, Some(path)) => read_secret(sink, path)?,
            (None, None) => {
                return Err(FormatError::Invalid {
                    sink: sink.to_string(),
                    message: "splunk_hec.token: required".into(),
                });
            }
        };
        let mut authorization =
            HeaderValue::from_str(&format!("Splunk {token}")).map_err(|_| {
                FormatError::Invalid {
                    sink: sink.to_string(),
                    message: "splunk_hec.token: not a valid header value".into(),
                }
            })?;
        authorization.set_sensitive(true);
        let all_fields = parse_fields(sink, &opts.fields)?;
        let stream_field = all_fields
            .iter()
            .find(|f| f.field == Field::Stream)
            .map(|f| f.name.clone());
        let channel = HeaderValue::from_str(&channel_id()).map_err(|_| FormatError::Invalid {
            sink: sink.to_string(),
            message: "channel id is not a header value".into(),
        })?;
        Ok(SplunkHecFormat {
            settings: Arc::new(Settings {
                index: opts
                    .index
                    .as_deref()
                    .map(|t| parse_template(sink, t))
                    .transpose()?,
                source: parse_template(sink, &opts.source)?,
                sourcetype: parse_template(sink, &opts.sourcetype)?,
                host: parse_template(sink, &opts.host)?,
                fields: all_fields
                    .into_iter()
                    .filter(|f| f.field != Field::Stream)
                    .collect(),
                stream_field,
                node: node_name.map(str::to_string),
                sink: 0,
            }),
            path: path_unless_present(cfg.url.as_deref(), &opts.path),
            authorization,
            channel,
        })
    }
}

impl SplunkHecFormat {
    /// The format as sink number `sink` of the config, whose routes may set the index, source
    /// and sourcetype.
    pub fn for_sink(mut self, sink: usize) -> Self {
        if let Some(s) = Arc::get_mut(&mut self.settings) {
            s.sink = sink;
        }
        self
    }
}

impl Format for SplunkHecFormat {
    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn headers(&self, headers: &mut HeaderMap) {
        headers.insert(AUTHORIZATION, self.authorization.clone());
        headers.insert(
            HeaderName::from_static("x-splunk-request-channel"),
            self.channel.clone(),
        );
    }

    fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    fn encoder(&self) -> Box<dyn Encoder> {
        let mut stream_members: [Vec<u8>; 2] = Default::default();
        if let Some(name) = &self.settings.stream_field {
            for s in [Stream::Stdout, Stream::Stderr] {
                let m = &mut stream_members[stream_index(s)];
                write_str(m, name.as_bytes());
                m.push(b':');
                write_str(m, s.as_str().as_bytes());
            }
        }
        Box::new(HecEncoder {
            settings: self.settings.clone(),
            sources: SourceCache::new(),
            stream_members,
        })
    }

    fn outcome(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        _records: usize,
    ) -> Outcome {
        outcome(status, headers, body)
    }
}

#[derive(Deserialize)]
struct HecAnswer {
    #[serde(default)]
    text: String,
    code: i64,
    #[serde(default, rename = "invalid-event-number")]
    invalid_event: Option<i64>,
}

/// Reads HEC's answer by its status code
/// (https://docs.splunk.com/Documentation/Splunk/latest/Data/TroubleshootHTTPEventCollector).
fn outcome(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Outcome {
    let answer = serde_json::from_slice::<HecAnswer>(body).ok();
    if status.is_success() && answer.as_ref().is_none_or(|a| a.code == 0) {
        return Outcome::Delivered;
    }
    let reason = match &answer {
        Some(a) => {
            let mut r = format!("splunk hec answered {status}, code {} ({})", a.code, a.text);
            if let Some(n) = a.invalid_event {
                r.push_str(&format!(", at event {n}"));
            }
            match a.code {
                1..=4 => r.push_str(": check splunk_hec.token"),
                7 => r.push_str(": the token may not write to this index"),
                10 | 11 => r.push_str(": the token requires indexer acknowledgment channels"),
                _ => {}
            }
            r
        }
        None => format!("splunk hec answered {status}: {}", body_sample(body)),
    };
    let retry = match answer.as_ref().map(|a| a.code) {
        // 8 internal error, 9 server busy, 18–20 unhealthy (queues full, ack unavailable).
        Some(8 | 9 | 18..=20) => true,
        // Token, data and index errors never heal by themselves.
        Some(1..=7 | 10..=16) => false,
        _ => status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error(),
    };
    if retry {
        Outcome::Retry {
            after: retry_after(headers),
            reason,
        }
    } else {
        Outcome::Rejected { reason }
    }
}

fn stream_index(s: Stream) -> usize {
    match s {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

/// What a source contributes to each of its events.
struct SourceEntry {
    /// `,"host":…,"source":…,"sourcetype":…,"index":…` then, when there are indexed fields,
    /// `,"fields":{` and the per-source members.
    tail: Vec<u8>,
    /// There are per-source members in `tail`.
    has_members: bool,
}

fn source_entry(settings: &Settings, source: &Source) -> SourceEntry {
    let node = settings.node.as_deref();
    let mut tail = Vec::with_capacity(256);
    let mut scratch = String::new();
    let mut member = |out: &mut Vec<u8>, key: &str, t: &Template| {
        scratch.clear();
        // HEC metadata does not depend on the record's date (dates are refused by the config).
        t.render(source, node, 0, &mut scratch);
        if !scratch.is_empty() {
            out.push(b',');
            write_str(out, key.as_bytes());
            out.push(b':');
            write_str(out, scratch.as_bytes());
        }
    };
    // The route's settings win over the sink's.
    let routed = source.routing.target(settings.sink);
    let source_t = routed.and_then(|t| t.source.as_deref());
    let sourcetype = routed.and_then(|t| t.sourcetype.as_deref());
    let index = routed.and_then(|t| t.index.as_deref());
    member(&mut tail, "host", &settings.host);
    member(&mut tail, "source", source_t.unwrap_or(&settings.source));
    member(
        &mut tail,
        "sourcetype",
        sourcetype.unwrap_or(&settings.sourcetype),
    );
    if let Some(index) = index.or(settings.index.as_ref()) {
        member(&mut tail, "index", index);
    }
    let mut has_members = false;
    if !settings.fields.is_empty() || settings.stream_field.is_some() {
        tail.extend_from_slice(b",\"fields\":{");
        for f in &settings.fields {
            if let Some(v) = f.field.value(source, node) {
                if has_members {
                    tail.push(b',');
                }
                has_members = true;
                write_str(&mut tail, f.name.as_bytes());
                tail.push(b':');
                write_str(&mut tail, v.as_bytes());
            }
        }
    }
    SourceEntry { tail, has_members }
}

struct HecEncoder {
    settings: Arc<Settings>,
    sources: SourceCache<SourceEntry>,
    /// `"stream":"stdout"` and `"stream":"stderr"`, when `stream` is an indexed field.
    stream_members: [Vec<u8>; 2],
}

/// Appends Unix nanoseconds as epoch seconds with milliseconds: `1426279439.500` (times before
/// 1970 are bogus and sent as 0).
fn write_epoch_millis(out: &mut Vec<u8>, ns: i64) {
    let ms = ns.max(0) / 1_000_000;
    out.extend_from_slice(itoa::Buffer::new().format(ms / 1000).as_bytes());
    let frac = (ms % 1000) as u32;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

impl Encoder for HecEncoder {
    fn encode(&mut self, records: &[&Record], out: &mut Vec<u8>) {
        let settings = &*self.settings;
        let any_fields = !settings.fields.is_empty() || settings.stream_field.is_some();
        for r in records {
            if r.line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let entry = self
                .sources
                .get_or_insert_with(&r.source, || source_entry(settings, &r.source));
            out.extend_from_slice(b"{\"time\":");
            write_epoch_millis(out, r.time_ns);
            out.extend_from_slice(b",\"event\":");
            write_str(out, &r.line);
            out.extend_from_slice(&entry.tail);
            if any_fields {
                let stream = &self.stream_members[stream_index(r.stream)];
                if !stream.is_empty() {
                    if entry.has_members {
                        out.push(b',');
                    }
                    out.extend_from_slice(stream);
                }
                out.push(b'}');
            }
            out.push(b'}');
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::record::flags;
    use crate::sink::encode::tests::{bare_source, record, rich_source, sink_config};

    /// 2015-03-13T20:37:19.5Z
    const T: i64 = 1_426_279_439_500_999_999;

    fn format(options: &str) -> SplunkHecFormat {
        let cfg = sink_config(&format!(
            "    type: splunk_hec\n    url: https://splunk:8088\n    splunk_hec: {options}\n"
        ));
        SplunkHecFormat::new("out", &cfg, Some("self-node")).unwrap()
    }

    fn encode(f: &SplunkHecFormat, records: &[Record]) -> Vec<u8> {
        let refs: Vec<&Record> = records.iter().collect();
        let mut out = Vec::new();
        f.encoder().encode(&refs, &mut out);
        out
    }

    fn events(body: &[u8]) -> Vec<serde_json::Value> {
        serde_json::Deserializer::from_slice(body)
            .into_iter::<serde_json::Value>()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn events_are_concatenated_json_with_metadata_and_indexed_fields() {
        let f = format("{token: t0k3n, index: 'k8s-{namespace}'}");
        let (rich, bare) = (rich_source(), bare_source());
        let mut cut = record(&rich, b"cut", T, Stream::Stderr);
        cut.flags = flags::TRUNCATED;
        let body = encode(
            &f,
            &[
                record(&rich, b"GET / \"200\"", T, Stream::Stdout),
                record(&bare, b"etcd", 0, Stream::Stderr),
                cut,
            ],
        );
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(
            text.starts_with("{\"time\":1426279439.500,\"event\":"),
            "{text}"
        );
        assert!(
            !text.contains("}\n{") && text.contains("}{"),
            "no separators: {text}"
        );
        let e = events(&body);
        assert_eq!(e.len(), 3);
        assert_eq!(
            e[0],
            serde_json::json!({
                "time": 1426279439.5,
                "event": "GET / \"200\"",
                "host": "node-a",
                "source": rich.path,
                "sourcetype": "kube:container:nginx",
                "index": "k8s-shop",
                "fields": {
                    "namespace": "shop",
                    "pod": "web-5d8f-x2x",
                    "pod_uid": "uid-1",
                    "container": "nginx",
                    "container_id": "c0ffee",
                    "node": "node-a",
                    "stream": "stdout"
                }
            })
        );
        assert_eq!(e[1]["time"], 0.0);
        assert_eq!(e[1]["host"], "self-node");
        assert_eq!(e[1]["index"], "k8s-kube-system");
        assert!(e[1]["fields"].get("container_id").is_none());
        assert_eq!(e[1]["fields"]["stream"], "stderr");
        assert_eq!(e[2]["fields"]["stream"], "stderr");
    }

    #[test]
    fn blank_lines_are_not_sent() {
        let f = format("{token: t}");
        let src = rich_source();
        let body = encode(
            &f,
            &[
                record(&src, b"", T, Stream::Stdout),
                record(&src, b" \t\r", T, Stream::Stdout),
                record(&src, b" x ", T, Stream::Stdout),
            ],
        );
        let e = events(&body);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0]["event"], " x ");
    }

    #[test]
    fn configured_fields_source_and_sourcetype_replace_the_defaults() {
        let f = format(
            "{token: t, fields: ['ns=namespace', 'cluster=static:eu-1'], source: 'k8s:{namespace}/{pod}', sourcetype: _json, host: 'static-host'}",
        );
        let e = events(&encode(
            &f,
            &[record(&rich_source(), b"x", T, Stream::Stdout)],
        ));
        assert_eq!(e[0]["source"], "k8s:shop/web-5d8f-x2x");
        assert_eq!(e[0]["sourcetype"], "_json");
        assert_eq!(e[0]["host"], "static-host");
        assert!(e[0].get("index").is_none());
        assert_eq!(
            e[0]["fields"],
            serde_json::json!({"ns":"shop","cluster":"eu-1"})
        );
        let only_stream = format("{token: t, fields: [stream]}");
        let e = events(&encode(
            &only_stream,
            &[record(&rich_source(), b"x", T, Stream::Stderr)],
        ));
        assert_eq!(e[0]["fields"], serde_json::json!({"stream":"stderr"}));
        let none = format("{token: t, fields: []}");
        let e = events(&encode(
            &none,
            &[record(&rich_source(), b"x", T, Stream::Stderr)],
        ));
        assert!(e[0].get("fields").is_none());
    }

    #[test]
    fn times_have_milliseconds_as_a_fraction() {
        let cases = [
            (T, "1426279439.500"),
            (0, "0.000"),
            (1_000_000, "0.001"),
            (-1, "0.000"),
            (1_700_000_000_123_456_789, "1700000000.123"),
        ];
        for (ns, want) in cases {
            let mut out = Vec::new();
            write_epoch_millis(&mut out, ns);
            assert_eq!(String::from_utf8(out).unwrap(), want, "{ns}");
        }
    }

    #[test]
    fn hec_codes_decide_between_retry_and_reject() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        let cases: &[(u16, &str, &str)] = &[
            (200, r#"{"text":"Success","code":0}"#, "delivered"),
            (200, "", "delivered"),
            (200, r#"{"text":"Success","code":0,"ackId":7}"#, "delivered"),
            (503, r#"{"text":"Server is busy","code":9}"#, "retry"),
            (
                503,
                r#"{"text":"HEC is unhealthy, queues are full","code":18}"#,
                "retry",
            ),
            (500, r#"{"text":"Internal server error","code":8}"#, "retry"),
            (502, "<html>bad gateway</html>", "retry"),
            (429, "", "retry"),
            (403, r#"{"text":"Invalid token","code":4}"#, "reject"),
            (401, r#"{"text":"Token is required","code":2}"#, "reject"),
            (
                400,
                r#"{"text":"Incorrect index","code":7,"invalid-event-number":0}"#,
                "reject",
            ),
            (
                400,
                r#"{"text":"Invalid data format","code":6,"invalid-event-number":3}"#,
                "reject",
            ),
            (
                400,
                r#"{"text":"Data channel is missing","code":10}"#,
                "reject",
            ),
            (400, "", "reject"),
        ];
        for (status, body, want) in cases {
            let got = outcome(StatusCode::from_u16(*status).unwrap(), &h, body.as_bytes());
            let kind = match &got {
                Outcome::Delivered => "delivered",
                Outcome::Retry { after, .. } => {
                    assert_eq!(*after, Some(Duration::from_secs(2)));
                    "retry"
                }
                Outcome::Rejected { .. } => "reject",
                Outcome::Partial { .. } => "partial",
            };
            assert_eq!(kind, *want, "{status} {body}: {got:?}");
        }
        let Outcome::Rejected { reason } = outcome(
            StatusCode::BAD_REQUEST,
            &h,
            br#"{"text":"Incorrect index","code":7,"invalid-event-number":1}"#,
        ) else {
            panic!("rejected")
        };
        assert_eq!(
            reason,
            "splunk hec answered 400 Bad Request, code 7 (Incorrect index), at event 1: the token may not write to this index"
        );
    }

    #[test]
    fn requests_carry_the_token_and_a_channel() {
        let f = format("{token: s3cr3t}");
        let mut h = HeaderMap::new();
        f.headers(&mut h);
        assert_eq!(h[AUTHORIZATION], "Splunk s3cr3t");
        assert!(h[AUTHORIZATION].is_sensitive());
        let channel = h["x-splunk-request-channel"].to_str().unwrap();
        let groups: Vec<usize> = channel.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{channel}");
        assert_eq!(&channel[14..15], "4", "a version 4 UUID");
        assert_eq!(f.path(), Some("/services/collector/event"));
        let logscale = format("{token: t, path: /api/v1/ingest/hec}");
        assert_eq!(logscale.path(), Some("/api/v1/ingest/hec"));
    }

    #[test]
    fn the_token_can_come_from_a_file_and_never_prints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "from-file\n").unwrap();
        let f = format(&format!("{{token_file: {}}}", path.display()));
        let mut h = HeaderMap::new();
        f.headers(&mut h);
        assert_eq!(h[AUTHORIZATION], "Splunk from-file");
        let cfg = sink_config(
            "    type: splunk_hec\n    url: https://splunk:8088\n    splunk_hec: {token: hidden-token}\n",
        );
        assert!(!format!("{cfg:?}").contains("hidden-token"));
        assert!(
            !serde_saphyr::to_string(&cfg)
                .unwrap()
                .contains("hidden-token")
        );
    }
}
