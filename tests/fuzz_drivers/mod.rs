//! One driver per fuzz target: arbitrary bytes in, through a parser of untrusted input, panicking
//! when an invariant breaks. Shared, as a `#[path]` module, by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/<target>.rs`) and by the corpus replay test (`tests/fuzz_corpus.rs`), so
//! that CI replays every corpus file through exactly the code the fuzzer ran. It lives under
//! `tests/` because both can reach it there without a crate of its own (the fuzz project is not
//! part of the root workspace, and the root `Cargo.toml` stays as it is); `tests/<dir>/mod.rs` is
//! not a test target of its own. See docs/fuzzing.md.
//!
//! Only loglet's dependencies are used (`reqwest`, `serde_json`, `serde-saphyr`),
//! so the integration test needs no new dev-dependency.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use loglet::config::{ByteSize, Config, Dur, SinkConfig};
use loglet::decode::{FileFormat, harness};
use loglet::metrics::Metrics;
use loglet::sink::encode::{Field, NamedField, Template};
use loglet::sink::format::{Format, Outcome};
use loglet::tail::checkpoint::{Checkpoints, Position};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};

/// A fuzz target's body: it panics on a violated invariant.
pub type Driver = fn(&[u8]);

/// Every target, by the name of its fuzz target and corpus directory.
pub const TARGETS: &[(&str, Driver)] = &[
    ("decode", decode),
    ("config", config),
    ("checkpoint", checkpoint),
    ("sink_answer", sink_answer),
    ("parsers", parsers),
];

// ---- decode ----

/// The first byte picks the format (`0` CRI, `1` Docker json-file, `2` plain, by its value
/// modulo 3, so corpus files start with an ASCII digit); the rest is the file's content, cut
/// into physical lines and pushed through the decoder by [`harness::run`], which checks the
/// decoder's invariants with options small enough to reach the line cap, the tailer's cut and
/// the partial-line timeout.
pub fn decode(data: &[u8]) {
    let Some((&selector, content)) = data.split_first() else {
        return;
    };
    let format = match selector % 3 {
        0 => FileFormat::Cri,
        1 => FileFormat::Docker,
        _ => FileFormat::Plain,
    };
    harness::run(
        content,
        format,
        harness::FUZZ_OPTIONS,
        harness::FUZZ_TAILER_CAP,
    );
}

// ---- config ----

/// The bytes as a config file: `Config::load` reads text, so bytes that are not UTF-8 stop
/// there. A config either fails to parse, or has problems, or is valid; a valid one has no
/// problems when asked again, prints (`check-config`), and every sink's wire format builds from
/// it (a sink whose secret is in a file is skipped: the file may not exist here).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::parse_str(text, Path::new("fuzz.yaml")) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let problems = config.problems();
    assert!(
        problems.is_empty(),
        "a valid config has problems: {problems:?}"
    );
    let _ = serde_saphyr::to_string(&config);
    let _ = loglet::decode::DecodeOptions::from_config(&config.logs);
    let metrics = Metrics::new();
    for (name, sink) in &config.sinks {
        if reads_a_secret_file(sink) {
            continue;
        }
        // An error is a message at startup, not a panic; both are fine here.
        let _ = build_format(name, sink, Some("fuzz-node"), &metrics);
    }
}

fn reads_a_secret_file(sink: &SinkConfig) -> bool {
    use loglet::config::AuthConfig;
    let auth = match &sink.auth {
        Some(AuthConfig::Basic { password_file, .. }) => password_file.is_some(),
        Some(AuthConfig::Bearer { token_file, .. }) => token_file.is_some(),
        None => false,
    };
    auth || sink
        .elasticsearch
        .as_ref()
        .is_some_and(|e| e.api_key_file.is_some())
        || sink
            .splunk_hec
            .as_ref()
            .is_some_and(|s| s.token_file.is_some())
}

/// What `sink::format_for` (private) builds for a sink.
fn build_format(
    name: &str,
    sink: &SinkConfig,
    node: Option<&str>,
    metrics: &Metrics,
) -> Option<Box<dyn Format>> {
    use loglet::config::SinkType;
    use loglet::sink::{elasticsearch, json, loki, otlp, splunk_hec};
    Some(match sink.kind {
        SinkType::Stdout | SinkType::Http => Box::new(json::NdjsonFormat),
        SinkType::Loki => Box::new(loki::LokiFormat::new(name, sink, node, metrics).ok()?),
        SinkType::Elasticsearch => {
            Box::new(elasticsearch::ElasticsearchFormat::new(name, sink, node).ok()?)
        }
        SinkType::Otlp => Box::new(otlp::OtlpFormat::new(name, sink, node).ok()?),
        SinkType::SplunkHec => Box::new(splunk_hec::SplunkHecFormat::new(name, sink, node).ok()?),
    })
}

// ---- checkpoint ----

static CHECKPOINT_RUNS: AtomicU64 = AtomicU64::new(0);

/// The bytes as the `checkpoints.json` an earlier run left (a crash mid-write, a full disk, a
/// hand edit): `Checkpoints::open` must load it or move it aside, never fail or panic. What it
/// restores must survive being written back and read again unchanged. Each call works in a
/// fresh directory under the system's temp dir, removed at the end.
pub fn checkpoint(data: &[u8]) {
    let dir = scratch_dir();
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let file = dir.join("checkpoints.json");
    std::fs::write(&file, data).expect("write checkpoints.json");
    let metrics = Metrics::new();
    let (store, restored) = Checkpoints::open(&dir, metrics.clone())
        .unwrap_or_else(|e| panic!("a readable checkpoint file failed to open: {e}"));
    let corrupt = dir.join("checkpoints.json.corrupt");
    if metrics.checkpoint_errors.get() > 0 {
        assert!(restored.is_empty(), "a corrupt file restored positions");
        assert!(corrupt.exists(), "a corrupt file was not moved aside");
        assert!(!file.exists(), "a corrupt file was left in place");
    } else {
        assert!(file.exists(), "a readable file was moved");
        for p in &restored {
            let kept = store
                .committed(p.key())
                .expect("a restored position is committed");
            // Duplicated keys: the last one wins, as a map insert does.
            let last = restored.iter().rev().find(|q| q.key() == p.key()).unwrap();
            assert_eq!(&kept, last, "committed differs from the file");
        }
        drop(store);
        // Written back as `persist` would (version 1, same fields), read again: unchanged.
        let body = serde_json::json!({ "version": 1, "files": restored });
        std::fs::write(&file, serde_json::to_vec(&body).unwrap()).unwrap();
        let metrics = Metrics::new();
        let (_, again) = Checkpoints::open(&dir, metrics.clone()).unwrap();
        assert_eq!(
            metrics.checkpoint_errors.get(),
            0,
            "written back, unreadable"
        );
        assert_eq!(again, restored, "positions changed on a round trip");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn scratch_dir() -> PathBuf {
    let n = CHECKPOINT_RUNS.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir()
        .join(format!(
            "loglet-fuzz-checkpoint-{}-{:?}-{n}",
            std::process::id(),
            std::thread::current().id()
        ))
        .to_path_buf()
}

fn _position_is_public(p: &Position) -> u64 {
    p.offset
}

// ---- sink answers ----

/// The sinks whose answers are read, built once from a config as a user would write it.
struct Answerers {
    formats: Vec<Box<dyn Format>>,
}

const ANSWER_CONFIG: &str = "\
sinks:
  loki:
    type: loki
    url: http://loki:3100
  loki_json:
    type: loki
    url: http://loki:3100
    loki: {encoding: json}
  es:
    type: elasticsearch
    url: http://es:9200
  otlp_proto:
    type: otlp
    url: http://otel:4318
  otlp_json:
    type: otlp
    url: http://otel:4318
    otlp: {encoding: json}
  hec:
    type: splunk_hec
    url: https://splunk:8088
    splunk_hec: {token: t}
  http:
    type: http
    url: http://x/
";

fn answerers() -> &'static Answerers {
    static A: OnceLock<Answerers> = OnceLock::new();
    A.get_or_init(|| {
        let config = Config::parse_str(ANSWER_CONFIG, Path::new("answers.yaml")).unwrap();
        let metrics = Metrics::new();
        let formats = config
            .sinks
            .iter()
            .map(|(name, sink)| build_format(name, sink, Some("n"), &metrics).unwrap())
            .collect();
        Answerers { formats }
    })
}

/// A backend's answer to a request of `records` records. Layout: byte 0 picks the sink's format
/// (by value modulo the number of formats; in `config` order: es, hec, http, loki, loki_json,
/// otlp_json, otlp_proto), bytes 1-2 the status (100 + big-endian value modulo 500), byte 3
/// the number of records sent, byte 4 the headers (bit 0: `Content-Type: application/json`,
/// bit 1: `Content-Type: application/x-protobuf`, bit 2: `Retry-After: 7`), the rest the body.
/// Whatever the body, the outcome stays within the records sent: retried indices are distinct
/// and below `records`, and retried plus rejected are at most `records`; sink.rs relies on both.
pub fn sink_answer(data: &[u8]) {
    let Some((head, body)) = data.split_first_chunk::<5>() else {
        return;
    };
    let formats = &answerers().formats;
    let format = &formats[usize::from(head[0]) % formats.len()];
    let code = 100 + u16::from_be_bytes([head[1], head[2]]) % 500;
    let status = StatusCode::from_u16(code).expect("100..=599 is a status");
    let records = usize::from(head[3]);
    let mut headers = HeaderMap::new();
    if head[4] & 1 != 0 {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if head[4] & 2 != 0 {
        headers.append(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
    }
    if head[4] & 4 != 0 {
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
    }
    match format.outcome(status, &headers, body, records) {
        Outcome::Delivered | Outcome::Rejected { .. } | Outcome::Retry { .. } => {}
        Outcome::Partial {
            retry,
            rejected,
            reason,
            ..
        } => {
            let mut seen = vec![false; records];
            for &i in &retry {
                assert!(
                    i < records,
                    "retry index {i} of {records} records ({reason})"
                );
                assert!(!seen[i], "record {i} retried twice ({reason})");
                seen[i] = true;
            }
            assert!(
                retry
                    .len()
                    .checked_add(rejected)
                    .is_some_and(|n| n <= records),
                "{} retried and {rejected} rejected of {records} records ({reason})",
                retry.len()
            );
        }
    }
}

// ---- small parsers ----

/// The small parsers of names and values that come from outside: log file and directory names
/// the kubelet and runtimes write, runtime timestamps, and the field, template, duration and
/// size syntaxes of the config. The bytes as text (lossy), each parser given all of it; where a
/// parser has an inverse, its output must read back the same.
pub fn parsers(data: &[u8]) {
    use loglet::decode::parse_rfc3339_nanos;
    use loglet::discover::{container_id_from_link, parse_log_name, parse_pod_dir};
    use loglet::sink::json::write_rfc3339;

    if let Some(ns) = parse_rfc3339_nanos(data) {
        let mut text = Vec::new();
        write_rfc3339(&mut text, ns);
        assert_eq!(
            parse_rfc3339_nanos(&text),
            Some(ns),
            "{} does not read back",
            String::from_utf8_lossy(&text)
        );
        // A record's time picks its index by date (elasticsearch.index): the span over which
        // the name holds contains the time.
        for template in ["logs-%Y.%m.%d", "logs-%Y.%m.%d.%H"] {
            let (start, end) = Template::parse(template).unwrap().valid_span(ns);
            assert!(
                start <= ns && (ns < end || end == i64::MAX),
                "{ns} outside its span {start}..{end} for {template}"
            );
        }
    }
    let s = String::from_utf8_lossy(data);
    let s = s.as_ref();
    let _ = parse_log_name(s);
    if let Some((ns, pod, uid)) = parse_pod_dir(s) {
        assert_eq!(format!("{ns}_{pod}_{uid}"), s);
    }
    if let Some(id) = container_id_from_link(s) {
        assert_eq!(id.len(), 64);
    }
    if let Ok(d) = Dur::parse(s) {
        assert_eq!(
            Dur::parse(&d.to_string()).ok().map(|x| x.0.as_millis()),
            Some(d.0.as_millis()),
            "{d} does not read back"
        );
    }
    if let Ok(b) = ByteSize::parse(s) {
        assert_eq!(
            ByteSize::parse(&b.to_string()),
            Ok(b),
            "{b} does not read back"
        );
    }
    let _ = Field::parse(s);
    let _ = NamedField::parse(s);
    if let Ok(t) = Template::parse(s) {
        let _ = t.has_date();
        for ns in [0, 1_700_000_000_123_456_789] {
            let _ = t.valid_span(ns);
        }
    }
}
