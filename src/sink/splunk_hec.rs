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
            }),
            path: path_unless_present(cfg.url.as_deref(), &opts.path),
            authorization,
            channel,
        })
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
    member(&mut tail, "host", &settings.host);
    member(&mut tail, "source", &settings.source);
    member(&mut tail, "sourcetype", &settings.sourcetype);
    if let Some(index) = &settings.index {
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

/// Appends Unix nanoseconds as epoch seconds with milliseconds: `1426279439.500`.
fn write_epoch_millis(out: &mut Vec<u8>, ns: i64) {
    let ms = ns.div_euclid(1_000_000);
    out.extend_from_slice(itoa::Buffer::new().format(ms.div_euclid(1000)).as_bytes());
    let frac = ms.rem_euclid(1000) as u32;
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
