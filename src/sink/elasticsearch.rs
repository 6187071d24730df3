//! sink: Elasticsearch and OpenSearch `_bulk` API, NDJSON action and document pairs
//! (https://www.elastic.co/guide/en/elasticsearch/reference/current/docs-bulk.html).
//!
//! Each record is a `create` (data streams and indices) or `index` action naming its index,
//! rendered from a template per record but cached per `Source` for as long as the record's date
//! keeps the same name, and a document `{"@timestamp":…,"message":…,"stream":…,
//! "kubernetes":{…},"file":…}` whose Pod part is encoded once per `Source`. The answer is read
//! item by item: items refused with 429 or 5xx are retried alone, items refused for good (a
//! mapping error) are dropped and counted with a sample of the error, never retried.

use std::sync::Arc;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde::Deserialize;

use super::encode::{
    FormatError, SourceCache, Template, parse_template, path_unless_present, read_secret,
};
use super::format::{Encoder, Format, Outcome, body_sample, retry_after};
use super::json::{source_members, write_fields, write_rfc3339, write_str};
use crate::config::{EsAction, SinkConfig};
use crate::record::{PodMeta, Record, Source, flags};

pub const BULK_PATH: &str = "/_bulk";
/// Only what `outcome` reads: the response of a big bulk request otherwise repeats every item's
/// index, id, version and shards.
pub const FILTER_PATH: &str = "filter_path=errors,items.*.error,items.*.status";

/// Elasticsearch's limit on index names, in bytes.
const MAX_INDEX_BYTES: usize = 255;

struct Settings {
    index: Template,
    action: EsAction,
    pipeline: Option<String>,
    type_name: bool,
    replace_dots: bool,
    node: Option<String>,
    /// This sink's place in the config, to find its route's index in a record's routing.
    sink: usize,
}

/// The `elasticsearch` sink's wire format.
pub struct ElasticsearchFormat {
    settings: Arc<Settings>,
    path: Option<String>,
    api_key: Option<HeaderValue>,
}

impl ElasticsearchFormat {
    pub fn new(
        sink: &str,
        cfg: &SinkConfig,
        node_name: Option<&str>,
    ) -> Result<ElasticsearchFormat, FormatError> {
        let opts = cfg.elasticsearch.clone().unwrap_or_default();
        let key = match (&opts.api_key, &opts.api_key_file) {
            (Some(k), _) => Some(k.0.clone()),
            (None, Some(path)) => Some(read_secret(sink, path)?),
            (None, None) => None,
        };
        let api_key = match key {
            Some(k) => {
                let mut v = HeaderValue::from_str(&format!("ApiKey {k}")).map_err(|_| {
                    FormatError::Invalid {
                        sink: sink.to_string(),
                        message: "elasticsearch.api_key: not a valid header value".into(),
                    }
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let bulk = if opts.filter_path {
            format!("{BULK_PATH}?{FILTER_PATH}")
        } else {
            BULK_PATH.to_string()
        };
        Ok(ElasticsearchFormat {
            settings: Arc::new(Settings {
                index: parse_template(sink, &opts.index)?,
                action: opts.action,
                pipeline: opts.pipeline.clone(),
                type_name: !opts.suppress_type_name,
                replace_dots: opts.replace_dots,
                node: node_name.map(str::to_string),
                sink: 0,
            }),
            path: path_unless_present(cfg.url.as_deref(), &bulk),
            api_key,
        })
    }
}

impl ElasticsearchFormat {
    /// The format as sink number `sink` of the config, whose routes may set the index.
    pub fn for_sink(mut self, sink: usize) -> Self {
        if let Some(s) = Arc::get_mut(&mut self.settings) {
            s.sink = sink;
        }
        self
    }
}

impl Format for ElasticsearchFormat {
    fn content_type(&self) -> &'static str {
        "application/x-ndjson"
    }

    fn headers(&self, headers: &mut HeaderMap) {
        if let Some(k) = &self.api_key {
            headers.insert(AUTHORIZATION, k.clone());
        }
    }

    fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    fn encoder(&self) -> Box<dyn Encoder> {
        Box::new(EsEncoder {
            settings: self.settings.clone(),
            sources: SourceCache::new(),
            index: String::new(),
        })
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

#[derive(Deserialize)]
struct BulkHead {
    #[serde(default)]
    errors: bool,
}

#[derive(Deserialize)]
struct BulkResponse {
    #[serde(default)]
    items: Vec<std::collections::BTreeMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// `type: reason` of a bulk or item error (an object, or a plain string in old versions).
fn error_text(e: &serde_json::Value) -> String {
    match e {
        serde_json::Value::Object(o) => {
            let kind = o.get("type").and_then(|v| v.as_str()).unwrap_or("error");
            let reason = o.get("reason").and_then(|v| v.as_str()).unwrap_or("");
            let mut s = format!("{kind}: {reason}");
            if s.len() > 300 {
                let mut end = 300;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                s.truncate(end);
                s.push('…');
            }
            s
        }
        other => body_sample(other.to_string().as_bytes()),
    }
}

fn outcome(status: StatusCode, headers: &HeaderMap, body: &[u8], records: usize) -> Outcome {
    if !status.is_success() {
        let detail = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error").map(error_text))
            .unwrap_or_else(|| body_sample(body));
        let reason = format!("elasticsearch answered {status}: {detail}");
        return if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            Outcome::Retry {
                after: retry_after(headers),
                reason,
            }
        } else if status == StatusCode::PAYLOAD_TOO_LARGE {
            Outcome::Rejected {
                reason: format!("{reason} (lower the sink's batch.max_bytes)"),
            }
        } else {
            Outcome::Rejected { reason }
        };
    }
    // The common case, no item failed: `{"errors":false}` with filter_path.
    match serde_json::from_slice::<BulkHead>(body) {
        Ok(head) if !head.errors => return Outcome::Delivered,
        Ok(_) => {}
        Err(e) => {
            return Outcome::Rejected {
                reason: format!(
                    "elasticsearch answered {status} with a body that is not a bulk response ({e}): {}",
                    body_sample(body)
                ),
            };
        }
    }
    let items = match serde_json::from_slice::<BulkResponse>(body) {
        Ok(r) if r.items.len() == records => r.items,
        Ok(r) => {
            return Outcome::Rejected {
                reason: format!(
                    "elasticsearch answered {} items for {records} documents",
                    r.items.len()
                ),
            };
        }
        Err(e) => {
            return Outcome::Rejected {
                reason: format!("elasticsearch bulk response unreadable: {e}"),
            };
        }
    };
    let mut retry = Vec::new();
    let mut rejected = 0;
    let mut retry_sample = None;
    let mut rejected_sample = None;
    for (i, item) in items.iter().enumerate() {
        let Some(result) = item.values().next() else {
            continue;
        };
        let sample = || {
            let text = result.error.as_ref().map(error_text).unwrap_or_default();
            format!("{} {text}", result.status)
        };
        match result.status {
            200..=299 => {}
            // `create` of a document that exists: an earlier attempt stored it.
            409 => {}
            429 | 500..=599 => {
                retry.push(i);
                retry_sample.get_or_insert_with(sample);
            }
            _ => {
                rejected += 1;
                rejected_sample.get_or_insert_with(sample);
            }
        }
    }
    if retry.is_empty() && rejected == 0 {
        return Outcome::Delivered;
    }
    let mut reason = String::new();
    if let Some(s) = &rejected_sample {
        reason.push_str(&format!("{rejected} documents rejected, e.g. {s}"));
    }
    if let Some(s) = &retry_sample {
        if !reason.is_empty() {
            reason.push_str("; ");
        }
        reason.push_str(&format!("{} documents to retry, e.g. {s}", retry.len()));
    }
    if rejected == 0 && retry.len() == records {
        return Outcome::Retry {
            after: retry_after(headers),
            reason,
        };
    }
    Outcome::Partial {
        retry,
        rejected,
        after: retry_after(headers),
        reason,
    }
}

/// An index name as Elasticsearch accepts it: lower case, no `\ / * ? " < > | , # :` or space,
/// not starting with `-`, `_` or `+`, at most 255 bytes.
fn sanitize_index(name: &mut String) {
    let mut s: String = name
        .chars()
        .map(|c| match c {
            '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ',' | '#' | ':' | ' ' => '_',
            c => c,
        })
        .collect::<String>()
        .to_lowercase();
    let trimmed = s.trim_start_matches(['-', '_', '+']).len();
    s.drain(..s.len() - trimmed);
    if s.len() > MAX_INDEX_BYTES {
        let mut end = MAX_INDEX_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    if s.is_empty() || s == "." || s == ".." {
        s = "loglet".to_string();
    }
    *name = s;
}

/// What a source contributes to each of its documents.
struct SourceEntry {
    /// `,"kubernetes":{…},"file":"…"}\n`: the document after its per-record members.
    doc_tail: Vec<u8>,
    /// The action line for records in `[from, until)`.
    action: Vec<u8>,
    from: i64,
    until: i64,
}

/// `app.kubernetes.io/name` → `app_kubernetes_io/name`: with dots, Elasticsearch maps a Pod's
/// `app` label and another Pod's `app.kubernetes.io/name` to a text field and an object at the
/// same path and rejects one of them.
fn dedot(pairs: &[(String, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.replace('.', "_"), v.clone()))
        .collect()
}

fn doc_tail(source: &Source, replace_dots: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.push(b',');
    let dotted = source.pod_meta.as_deref().filter(|m| {
        replace_dots
            && [&m.labels, &m.annotations, &m.namespace_labels]
                .iter()
                .any(|pairs| pairs.iter().any(|(k, _)| k.contains('.')))
    });
    match dotted {
        Some(m) => {
            let meta = PodMeta {
                labels: dedot(&m.labels),
                annotations: dedot(&m.annotations),
                namespace_labels: dedot(&m.namespace_labels),
                ..m.clone()
            };
            let copy = Source {
                id: source.id,
                path: source.path.clone(),
                namespace: source.namespace.clone(),
                pod: source.pod.clone(),
                pod_uid: source.pod_uid.clone(),
                container: source.container.clone(),
                container_id: source.container_id.clone(),
                restart_count: source.restart_count,
                pod_meta: Some(Arc::new(meta)),
                routing: source.routing.clone(),
                sidecar: source.sidecar.clone(),
            };
            source_members(&copy, &mut out);
        }
        None => source_members(source, &mut out),
    }
    out.extend_from_slice(b"}\n");
    out
}

struct EsEncoder {
    settings: Arc<Settings>,
    sources: SourceCache<SourceEntry>,
    /// Scratch for rendering index names.
    index: String,
}

impl EsEncoder {
    fn action_line(settings: &Settings, index: &str, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(match settings.action {
            EsAction::Create => b"{\"create\":{\"_index\":",
            EsAction::Index => b"{\"index\":{\"_index\":",
        });
        write_str(out, index.as_bytes());
        if settings.type_name {
            out.extend_from_slice(b",\"_type\":\"_doc\"");
        }
        if let Some(p) = &settings.pipeline {
            out.extend_from_slice(b",\"pipeline\":");
            write_str(out, p.as_bytes());
        }
        out.extend_from_slice(b"}}\n");
    }
}

impl Encoder for EsEncoder {
    fn encode(&mut self, records: &[&Record], out: &mut Vec<u8>) {
        let settings = &*self.settings;
        for r in records {
            let entry = self.sources.get_or_insert_with(&r.source, || SourceEntry {
                doc_tail: doc_tail(&r.source, settings.replace_dots),
                action: Vec::new(),
                from: 0,
                until: 0,
            });
            if r.time_ns < entry.from || r.time_ns >= entry.until || entry.action.is_empty() {
                self.index.clear();
                let index = r
                    .source
                    .routing
                    .target(settings.sink)
                    .and_then(|t| t.index.as_deref())
                    .unwrap_or(&settings.index);
                index.render(
                    &r.source,
                    settings.node.as_deref(),
                    r.time_ns,
                    &mut self.index,
                );
                sanitize_index(&mut self.index);
                Self::action_line(settings, &self.index, &mut entry.action);
                (entry.from, entry.until) = index.valid_span(r.time_ns);
            }
            out.extend_from_slice(&entry.action);
            out.extend_from_slice(b"{\"@timestamp\":\"");
            write_rfc3339(out, r.time_ns);
            out.extend_from_slice(b"\",\"message\":");
            write_str(out, &r.line);
            out.extend_from_slice(b",\"stream\":\"");
            out.extend_from_slice(r.stream.as_str().as_bytes());
            out.push(b'"');
            if r.flags & flags::TRUNCATED != 0 {
                out.extend_from_slice(b",\"truncated\":true");
            }
            write_fields(out, r);
            out.extend_from_slice(&entry.doc_tail);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::record::Stream;
    use crate::sink::encode::tests::{bare_source, record, rich_source, sink_config};

    /// 2024-05-01T23:59:59.5Z
    const LATE: i64 = 1_714_607_999_500_000_000;

    fn format(options: &str) -> ElasticsearchFormat {
        let cfg = sink_config(&format!(
            "    type: elasticsearch\n    url: http://es:9200\n    elasticsearch: {options}\n"
        ));
        ElasticsearchFormat::new("out", &cfg, Some("self-node")).unwrap()
    }

    fn lines(f: &ElasticsearchFormat, records: &[Record]) -> Vec<serde_json::Value> {
        let refs: Vec<&Record> = records.iter().collect();
        let mut out = Vec::new();
        f.encoder().encode(&refs, &mut out);
        assert_eq!(out.last(), Some(&b'\n'), "the body ends with a newline");
        out.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn bulk_bodies_pair_an_action_with_each_document() {
        let f = format("{pipeline: k8s-logs}");
        let (rich, bare) = (rich_source(), bare_source());
        let mut cut = record(&bare, b"etcd", LATE, Stream::Stderr);
        cut.flags = flags::TRUNCATED;
        let l = lines(
            &f,
            &[record(&rich, b"GET / \"200\"", LATE, Stream::Stdout), cut],
        );
        assert_eq!(l.len(), 4);
        assert_eq!(
            l[0],
            serde_json::json!({"create":{"_index":"logs-shop-2024.05.01","pipeline":"k8s-logs"}})
        );
        assert_eq!(l[1]["@timestamp"], "2024-05-01T23:59:59.5Z");
        assert_eq!(l[1]["message"], "GET / \"200\"");
        assert_eq!(l[1]["stream"], "stdout");
        assert_eq!(l[1]["file"], rich.path.as_str());
        let k = &l[1]["kubernetes"];
        assert_eq!(k["namespace"], "shop");
        assert_eq!(k["pod"], "web-5d8f-x2x");
        assert_eq!(k["container_id"], "c0ffee");
        assert_eq!(k["workload"]["name"], "web");
        assert_eq!(
            k["labels"],
            serde_json::json!({"app_kubernetes_io/name":"web","team":"Payments"}),
            "dots in label keys are replaced"
        );
        assert!(l[1].get("truncated").is_none());
        assert_eq!(l[2]["create"]["_index"], "logs-kube-system-2024.05.01");
        assert_eq!(l[3]["stream"], "stderr");
        assert_eq!(l[3]["truncated"], true);
    }

    #[test]
    fn the_index_follows_each_records_date_across_midnight() {
        let f = format(
            "{index: 'logs-{label:team|none}-%Y.%m.%d', action: index, suppress_type_name: false, replace_dots: false}",
        );
        let rich = rich_source();
        let l = lines(
            &f,
            &[
                record(&rich, b"a", LATE, Stream::Stdout),
                record(&rich, b"b", LATE + 1_000_000_000, Stream::Stdout),
                record(&rich, b"c", LATE - 86_400_000_000_000, Stream::Stdout),
                record(&bare_source(), b"d", LATE, Stream::Stdout),
            ],
        );
        let index: Vec<&str> = l
            .iter()
            .step_by(2)
            .map(|a| a["index"]["_index"].as_str().unwrap())
            .collect();
        assert_eq!(
            index,
            [
                "logs-payments-2024.05.01",
                "logs-payments-2024.05.02",
                "logs-payments-2024.04.30",
                "logs-none-2024.05.01"
            ]
        );
        assert_eq!(l[0]["index"]["_type"], "_doc");
        assert_eq!(
            l[1]["kubernetes"]["labels"]["app.kubernetes.io/name"],
            "web"
        );
    }

    #[test]
    fn index_names_are_made_acceptable() {
        let cases = [
            ("Logs-Shop", "logs-shop"),
            ("_a b,c#d:e", "a_b_c_d_e"),
            ("-+x", "x"),
            ("", "loglet"),
            ("..", "loglet"),
        ];
        for (input, want) in cases {
            let mut s = input.to_string();
            sanitize_index(&mut s);
            assert_eq!(s, want, "{input}");
        }
        let mut long = "a".repeat(300);
        sanitize_index(&mut long);
        assert_eq!(long.len(), MAX_INDEX_BYTES);
    }

    fn answer(status: u16, body: &str, records: usize) -> Outcome {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("4"));
        outcome(
            StatusCode::from_u16(status).unwrap(),
            &h,
            body.as_bytes(),
            records,
        )
    }

    #[test]
    fn bulk_answers_retry_only_the_failed_items_and_drop_mapping_errors() {
        let mixed = r#"{"errors":true,"items":[
            {"create":{"status":201}},
            {"create":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation"}}},
            {"create":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [kubernetes.labels.app] of type [text]"}}},
            {"create":{"status":503,"error":{"type":"unavailable_shards_exception","reason":"primary shard is not active"}}},
            {"create":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"document already exists"}}},
            {"index":{"status":200}}
        ]}"#;
        assert_eq!(
            answer(200, mixed, 6),
            Outcome::Partial {
                retry: vec![1, 3],
                rejected: 1,
                // The items to retry wait for the answer's Retry-After too.
                after: Some(Duration::from_secs(4)),
                reason: "1 documents rejected, e.g. 400 mapper_parsing_exception: failed to parse field [kubernetes.labels.app] of type [text]; 2 documents to retry, e.g. 429 es_rejected_execution_exception: rejected execution of coordinating operation".into(),
            }
        );
        assert_eq!(answer(200, r#"{"errors":false}"#, 6), Outcome::Delivered);
        assert_eq!(
            answer(
                200,
                r#"{"took":3,"errors":false,"items":[{"create":{"status":201}}]}"#,
                1
            ),
            Outcome::Delivered
        );
        let all_busy =
            r#"{"errors":true,"items":[{"create":{"status":429}},{"create":{"status":429}}]}"#;
        assert!(matches!(
            answer(200, all_busy, 2),
            Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(4)
        ));
        assert!(
            matches!(answer(200, mixed, 5), Outcome::Rejected { reason } if reason.contains("6 items for 5"))
        );
        assert!(matches!(answer(200, "<html>", 1), Outcome::Rejected { .. }));
    }

    #[test]
    fn request_failures_map_to_outcomes() {
        assert!(matches!(
            answer(429, "{}", 3),
            Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(4)
        ));
        assert!(matches!(answer(502, "", 3), Outcome::Retry { .. }));
        assert_eq!(
            answer(400, r#"{"error":{"type":"illegal_argument_exception","reason":"Malformed action/metadata line [1]"},"status":400}"#, 3),
            Outcome::Rejected {
                reason: "elasticsearch answered 400 Bad Request: illegal_argument_exception: Malformed action/metadata line [1]".into()
            }
        );
        assert!(
            matches!(answer(413, "", 3), Outcome::Rejected { reason } if reason.contains("batch.max_bytes"))
        );
        assert!(matches!(answer(401, "", 3), Outcome::Rejected { .. }));
    }

    #[test]
    fn requests_carry_the_api_key_and_ask_for_a_small_answer() {
        let f = format("{api_key: 'aWQ6a2V5'}");
        let mut h = HeaderMap::new();
        f.headers(&mut h);
        assert_eq!(h[AUTHORIZATION], "ApiKey aWQ6a2V5");
        assert!(h[AUTHORIZATION].is_sensitive());
        assert_eq!(
            f.path(),
            Some("/_bulk?filter_path=errors,items.*.error,items.*.status")
        );
        assert_eq!(f.content_type(), "application/x-ndjson");
        let plain = format("{filter_path: false}");
        assert_eq!(plain.path(), Some("/_bulk"));
        let cfg = sink_config("    type: elasticsearch\n    url: https://es:9200/_bulk\n");
        let at_bulk = ElasticsearchFormat::new("out", &cfg, None).unwrap();
        assert_eq!(
            at_bulk.path(),
            Some("?filter_path=errors,items.*.error,items.*.status")
        );
        let mut h = HeaderMap::new();
        at_bulk.headers(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn the_api_key_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "c2VjcmV0\n").unwrap();
        let f = format(&format!("{{api_key_file: {}}}", path.display()));
        let mut h = HeaderMap::new();
        f.headers(&mut h);
        assert_eq!(h[AUTHORIZATION], "ApiKey c2VjcmV0");
        let cfg = sink_config(&format!(
            "    type: elasticsearch\n    url: http://es:9200\n    elasticsearch: {{api_key_file: {}}}\n",
            dir.path().join("missing").display()
        ));
        let e = ElasticsearchFormat::new("out", &cfg, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("failed to read") && e.contains("missing"), "{e}");
    }
}
