//! test harness: fake Loki, Elasticsearch/OpenSearch, OTLP/HTTP, Splunk HEC and plain NDJSON
//! (the `http` sink) servers on 127.0.0.1:0. Each decompresses (gzip, zstd, snappy block) and
//! decodes its backend's real wire format (Loki's `logproto.PushRequest` or JSON, `_bulk` NDJSON,
//! `ExportLogsServiceRequest` in protobuf or JSON, HEC concatenated events, one JSON object per
//! line), records what it stored, with which headers and when each request arrived, and answers
//! like the real one, including the failures a test scripts: 503 for a while, 429 with
//! `Retry-After` (seconds or an HTTP-date), bulk items refused, Loki entries too old, OTLP partial
//! success, HEC codes.
//!
//! A backend can serve HTTPS with a certificate from a test CA ([`TestPki`]), and require a
//! client certificate from it.
//!
//! Include with `#[path = "common/backends.rs"] mod backends;`.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response};
use loglet::sink::loki::proto as lokipb;
use loglet::sink::otlp::proto as otlppb;
use prost::Message;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Loki,
    Elasticsearch,
    Otlp,
    SplunkHec,
    /// NDJSON POSTed to any path, as the `http` sink sends it; 200 when every line is a JSON
    /// object.
    Http,
}

/// How a fake backend answers one request.
#[derive(Clone, Debug)]
pub enum Answer {
    /// As the healthy backend does.
    Accept,
    /// A plain error status with a body and, optionally, `Retry-After` seconds.
    Status {
        status: u16,
        retry_after: Option<u64>,
        body: String,
    },
    /// Elasticsearch: the items at these positions fail with `(status, error type)`; the
    /// others are stored. The HTTP status is 200, as Elasticsearch answers.
    BulkItems(Vec<(usize, u16, String)>),
    /// Loki: the last `ignored` entries of the request are too old and refused (400); the others
    /// are stored, as Loki stores them.
    LokiTooOld { ignored: usize },
    /// OTLP: the last `rejected` records are refused in a 200 partial success.
    OtlpPartial { rejected: usize, message: String },
    /// Splunk HEC: an error code, with the HTTP status HEC gives it.
    HecCode(u32),
    /// A slow backend: it waits this long, then stores and accepts (a client that gave up
    /// meanwhile sends the batch again: a duplicate, as with a real one).
    Slow(Duration),
    /// The connection is closed without an answer, nothing stored (a reset, a crashed proxy).
    Reset,
    /// The inner answer, with a `Retry-After` header (whatever its status: Elasticsearch's 200
    /// with refused items may carry one too).
    RetryAfter(RetryAfter, Box<Answer>),
}

/// A `Retry-After` value, in either form RFC 9110 allows.
#[derive(Clone, Copy, Debug)]
pub enum RetryAfter {
    /// `Retry-After: 3`
    Seconds(u64),
    /// `Retry-After: Wed, 21 Oct 2015 07:28:00 GMT` (whole seconds: the format has no fraction).
    Date(SystemTime),
}

impl RetryAfter {
    fn header_value(self) -> String {
        match self {
            RetryAfter::Seconds(s) => s.to_string(),
            RetryAfter::Date(t) => httpdate::fmt_http_date(t),
        }
    }
}

impl Answer {
    pub fn unavailable() -> Answer {
        Answer::Status {
            status: 503,
            retry_after: None,
            body: "service unavailable".into(),
        }
    }

    pub fn too_many(retry_after: Option<u64>) -> Answer {
        Answer::Status {
            status: 429,
            retry_after,
            body: "rate limit exceeded".into(),
        }
    }

    /// This answer with a `Retry-After` header.
    pub fn retry_after(self, after: RetryAfter) -> Answer {
        Answer::RetryAfter(after, Box::new(self))
    }
}

/// One request as the backend saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    /// `X-Scope-OrgID`
    pub tenant: Option<String>,
    pub authorization: Option<String>,
    /// `X-Splunk-Request-Channel`
    pub channel: Option<String>,
    /// The body's size after decompression.
    pub body_bytes: usize,
    /// The status the backend answered.
    pub status: u16,
    /// When the request's head arrived, on the monotonic clock and on the wall clock.
    pub arrived: Instant,
    pub arrived_wall: SystemTime,
}

/// A stored Loki entry.
#[derive(Clone, Debug, PartialEq)]
pub struct LokiEntry {
    pub tenant: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub time_ns: i64,
    pub line: String,
    /// Structured metadata, sorted by name (Loki keeps it as a label set).
    pub metadata: Vec<(String, String)>,
}

/// A stored Elasticsearch document.
#[derive(Clone, Debug, PartialEq)]
pub struct EsDoc {
    /// `create` or `index`
    pub action: String,
    pub index: String,
    pub pipeline: Option<String>,
    pub doc: serde_json::Value,
}

/// A stored OTLP log record, with its resource; values as strings (`int` and `bool` printed).
#[derive(Clone, Debug, PartialEq)]
pub struct OtlpRecord {
    pub resource: BTreeMap<String, String>,
    pub time_ns: u64,
    pub observed_ns: u64,
    pub severity: i32,
    pub body: String,
    pub attributes: BTreeMap<String, String>,
}

/// Everything a backend received and stored.
#[derive(Clone, Debug, Default)]
pub struct Received {
    pub requests: Vec<Seen>,
    pub loki: Vec<LokiEntry>,
    pub es: Vec<EsDoc>,
    pub otlp: Vec<OtlpRecord>,
    /// Splunk HEC events as sent.
    pub hec: Vec<serde_json::Value>,
    /// The `http` sink's NDJSON objects.
    pub http: Vec<serde_json::Value>,
    /// TLS handshakes that failed (an untrusted server certificate, a missing client one).
    pub tls_failures: usize,
}

impl Received {
    /// Records stored, whatever the backend.
    pub fn stored(&self) -> usize {
        self.loki.len() + self.es.len() + self.otlp.len() + self.hec.len() + self.http.len()
    }
}

struct State {
    kind: Kind,
    /// Splunk HEC: the token it accepts.
    token: Option<String>,
    script: Mutex<VecDeque<Answer>>,
    received: Mutex<Received>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fake backend serving on 127.0.0.1 until dropped.
pub struct Backend {
    pub kind: Kind,
    /// `http://127.0.0.1:<port>`
    pub url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// Starts a backend of `kind` (a Splunk HEC one accepts the token `test-token`).
    pub async fn start(kind: Kind) -> Backend {
        let token = (kind == Kind::SplunkHec).then(|| "test-token".to_string());
        Backend::start_with(kind, token).await
    }

    pub async fn start_with(kind: Kind, token: Option<String>) -> Backend {
        Backend::listen(kind, token, None).await
    }

    /// Starts a backend serving HTTPS with a certificate of `pki`'s CA for `127.0.0.1` and
    /// `localhost`; with `client_auth`, it also demands a client certificate of that CA.
    pub async fn start_tls(kind: Kind, pki: &TestPki, client_auth: bool) -> Backend {
        let token = (kind == Kind::SplunkHec).then(|| "test-token".to_string());
        Backend::listen(kind, token, Some(pki.acceptor(client_auth))).await
    }

    async fn listen(
        kind: Kind,
        token: Option<String>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(State {
            kind,
            token,
            script: Mutex::new(VecDeque::new()),
            received: Mutex::new(Received::default()),
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(serve(listener, state.clone(), tls));
        Backend {
            kind,
            url: format!("{scheme}://{addr}"),
            state,
            task,
        }
    }

    /// The next requests get these answers, in order; after them, `Accept`.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        lock(&self.state.script).extend(answers);
    }

    /// Forgets the answers not given yet: from now on, `Accept` (the end of an outage).
    pub fn clear_script(&self) {
        lock(&self.state.script).clear();
    }

    /// A copy of what was received so far.
    pub fn received(&self) -> Received {
        lock(&self.state.received).clone()
    }

    /// Waits until `done` holds for what was received, at most `within`; whether it held.
    pub async fn wait_until(&self, within: Duration, done: impl Fn(&Received) -> bool) -> bool {
        let step = Duration::from_millis(10);
        let rounds = (within.as_millis() / step.as_millis()).max(1);
        for _ in 0..rounds {
            if done(&lock(&self.state.received)) {
                return true;
            }
            tokio::time::sleep(step).await;
        }
        done(&lock(&self.state.received))
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(hyper_util::rt::TokioIo::new(stream), state).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => serve_connection(hyper_util::rt::TokioIo::new(s), state).await,
                    Err(_) => lock(&state.received).tls_failures += 1,
                },
            }
        });
    }
}

async fn serve_connection<I>(io: I, state: Arc<State>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move {
            // An error from the service makes hyper drop the connection unanswered.
            handle(&state, req)
                .await
                .ok_or_else(|| std::io::Error::other("scripted reset"))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .await;
}

/// A certificate authority for tests, with a server certificate for `127.0.0.1` and
/// `localhost` and a client certificate, all made at run time.
pub struct TestPki {
    /// The CA certificate, PEM: what a sink's `tls.ca_file` holds.
    pub ca_pem: String,
    /// The client certificate and its key, PEM: a sink's `tls.cert_file` and `tls.key_file`.
    pub client_cert_pem: String,
    pub client_key_pem: String,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    server_der: rustls::pki_types::CertificateDer<'static>,
    server_key_der: Vec<u8>,
}

impl TestPki {
    pub fn new() -> TestPki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "loglet test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).expect("ca certificate");
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(names).expect("params");
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca, &ca_key).expect("certificate");
            (cert, key)
        };
        let (server, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = leaf(vec!["loglet".into()], ExtendedKeyUsagePurpose::ClientAuth);
        TestPki {
            ca_pem: ca.pem(),
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
            ca_der: ca.der().clone(),
            server_der: server.der().clone(),
            server_key_der: server_key.serialize_der(),
        }
    }

    /// Writes `ca.pem`, `client.pem` and `client-key.pem` into `dir`; returns their paths.
    pub fn write(&self, dir: &std::path::Path) -> [std::path::PathBuf; 3] {
        let files = [
            ("ca.pem", &self.ca_pem),
            ("client.pem", &self.client_cert_pem),
            ("client-key.pem", &self.client_key_pem),
        ];
        files.map(|(name, pem)| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write PEM file");
            path
        })
    }

    fn acceptor(&self, client_auth: bool) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca_der.clone()).expect("CA certificate");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone()));
        let mut config = builder
            .with_single_cert(vec![self.server_der.clone()], key)
            .expect("server certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}

/// An answer before it becomes a response.
struct Reply {
    status: u16,
    content_type: &'static str,
    /// The `Retry-After` header's value.
    retry_after: Option<String>,
    body: Vec<u8>,
}

impl Reply {
    fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type,
            retry_after: None,
            body: body.into(),
        }
    }

    fn text(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply::new(status, "text/plain; charset=utf-8", body)
    }
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn handle(state: &State, req: Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let (arrived, arrived_wall) = (Instant::now(), SystemTime::now());
    let (parts, body) = req.into_parts();
    let raw = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let h = &parts.headers;
    let mut seen = Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        content_type: header(h, "content-type"),
        content_encoding: header(h, "content-encoding"),
        tenant: header(h, "x-scope-orgid"),
        authorization: header(h, "authorization"),
        channel: header(h, "x-splunk-request-channel"),
        body_bytes: 0,
        status: 0,
        arrived,
        arrived_wall,
    };
    let reply = match decompress(seen.content_encoding.as_deref(), &raw) {
        Err(e) => Reply::text(400, e),
        Ok(body) => {
            seen.body_bytes = body.len();
            let mut answer = lock(&state.script).pop_front().unwrap_or(Answer::Accept);
            let mut retry_after = None;
            if let Answer::RetryAfter(after, inner) = answer {
                retry_after = Some(after.header_value());
                answer = *inner;
            }
            match answer {
                Answer::Reset => return None,
                Answer::Slow(d) => {
                    tokio::time::sleep(d).await;
                    answer = Answer::Accept;
                }
                _ => {}
            }
            let mut reply = match state.kind {
                Kind::Loki => loki(state, &seen, &body, answer),
                Kind::Elasticsearch => elasticsearch(state, &seen, &body, answer),
                Kind::Otlp => otlp(state, &seen, &body, answer),
                Kind::SplunkHec => splunk_hec(state, &seen, &body, answer),
                Kind::Http => http(state, &body, answer),
            };
            if retry_after.is_some() {
                reply.retry_after = retry_after;
            }
            reply
        }
    };
    seen.status = reply.status;
    lock(&state.received).requests.push(seen);
    let mut b = Response::builder()
        .status(reply.status)
        .header("content-type", reply.content_type);
    if let Some(v) = reply.retry_after {
        b = b.header("retry-after", v);
    }
    Some(
        b.body(Full::new(Bytes::from(reply.body)))
            .expect("a valid response"),
    )
}

/// The body as the backend reads it: `Content-Encoding` undone (snappy is left to Loki, which
/// always snappy-decodes protobuf, as the real one does).
fn decompress(encoding: Option<&str>, raw: &[u8]) -> Result<Vec<u8>, String> {
    match encoding {
        None | Some("") | Some("identity") | Some("snappy") => Ok(raw.to_vec()),
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(raw)
                .read_to_end(&mut out)
                .map_err(|e| format!("gzip: {e}"))?;
            Ok(out)
        }
        Some("zstd") => zstd::decode_all(raw).map_err(|e| format!("zstd: {e}")),
        Some(other) => Err(format!("Content-Encoding {other:?} not supported")),
    }
}

fn scripted_status(answer: &Answer) -> Option<Reply> {
    match answer {
        Answer::Status {
            status,
            retry_after,
            body,
        } => Some(Reply {
            status: *status,
            content_type: "text/plain; charset=utf-8",
            retry_after: retry_after.map(|s| s.to_string()),
            body: body.clone().into_bytes(),
        }),
        _ => None,
    }
}

// ---- Loki ----

/// Parses Prometheus' label text, `{a="x", b="y\"z"}`.
fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let inner = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(|| format!("error parsing labels {text:?}: not in braces"))?;
    let mut labels = BTreeMap::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if chars.next() != Some('=') || chars.next() != Some('"') {
            return Err(format!("error parsing labels {text:?}: expected =\""));
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some('r') => value.push('\r'),
                    Some('t') => value.push('\t'),
                    Some('u') => {
                        let hex: String = chars.by_ref().take(4).collect();
                        let c = u32::from_str_radix(&hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or_else(|| format!("bad escape \\u{hex}"))?;
                        value.push(c);
                    }
                    Some(c) => value.push(c),
                    None => return Err("unterminated escape".into()),
                },
                Some(c) => value.push(c),
                None => return Err(format!("error parsing labels {text:?}: unterminated value")),
            }
        }
        let name = name.trim().to_string();
        if name.is_empty() {
            return Err(format!("error parsing labels {text:?}: empty name"));
        }
        labels.insert(name, value);
    }
    if labels.is_empty() {
        return Err("error at least one label pair is required per stream".into());
    }
    Ok(labels)
}

fn loki_decode(seen: &Seen, body: &[u8]) -> Result<Vec<LokiEntry>, String> {
    let mut entries = Vec::new();
    if seen
        .content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/json"))
    {
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("loghttp.PushRequest: {e}"))?;
        for s in v["streams"].as_array().ok_or("no streams")? {
            let labels: BTreeMap<String, String> = s["stream"]
                .as_object()
                .ok_or("stream is not an object")?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            for value in s["values"].as_array().ok_or("no values")? {
                let time_ns = value[0]
                    .as_str()
                    .and_then(|t| t.parse().ok())
                    .ok_or("timestamp is not a string of nanoseconds")?;
                let line = value[1].as_str().ok_or("line is not a string")?.to_string();
                let metadata = match value.get(2) {
                    Some(m) => m
                        .as_object()
                        .ok_or("structured metadata is not an object")?
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect(),
                    None => Vec::new(),
                };
                entries.push(LokiEntry {
                    tenant: seen.tenant.clone(),
                    labels: labels.clone(),
                    time_ns,
                    line,
                    metadata,
                });
            }
        }
    } else {
        let proto = snap::raw::Decoder::new()
            .decompress_vec(body)
            .map_err(|e| format!("snappy: {e}"))?;
        let req = lokipb::PushRequest::decode(proto.as_slice()).map_err(|e| e.to_string())?;
        for s in req.streams {
            let labels = parse_labels(&s.labels)?;
            for e in s.entries {
                entries.push(LokiEntry {
                    tenant: seen.tenant.clone(),
                    labels: labels.clone(),
                    time_ns: e.timestamp.as_ref().map_or(0, |t| t.unix_nanos()),
                    line: e.line,
                    metadata: e
                        .structured_metadata
                        .into_iter()
                        .map(|p| (p.name, p.value))
                        .collect(),
                });
            }
        }
    }
    for e in &mut entries {
        e.metadata.sort();
    }
    Ok(entries)
}

fn loki(state: &State, seen: &Seen, body: &[u8], answer: Answer) -> Reply {
    if let Some(r) = scripted_status(&answer) {
        return r;
    }
    if seen.path != "/loki/api/v1/push" {
        return Reply::text(404, "404 page not found\n");
    }
    let mut entries = match loki_decode(seen, body) {
        Ok(e) => e,
        Err(e) => return Reply::text(400, e),
    };
    let reply = match answer {
        Answer::LokiTooOld { ignored } => {
            let ignored = ignored.min(entries.len());
            let total = entries.len();
            let labels = entries
                .last()
                .map(|e| format!("{:?}", e.labels))
                .unwrap_or_default();
            entries.truncate(total - ignored);
            Reply::text(
                400,
                format!(
                    "entry with timestamp 1970-01-01 00:00:00 +0000 UTC ignored, reason: 'entry too far behind, entry timestamp is: 1970-01-01T00:00:00Z, oldest acceptable timestamp is: 2024-05-01T12:00:00Z',\nuser 'fake', total ignored: {ignored} out of {total} for stream: {labels}\n"
                ),
            )
        }
        _ => Reply::text(204, ""),
    };
    lock(&state.received).loki.extend(entries);
    reply
}

// ---- Elasticsearch ----

fn elasticsearch(state: &State, seen: &Seen, body: &[u8], answer: Answer) -> Reply {
    if let Some(r) = scripted_status(&answer) {
        return r;
    }
    let json = "application/json";
    let error = |status: u16, kind: &str, reason: &str| {
        Reply::new(
            status,
            json,
            serde_json::json!({"error":{"type":kind,"reason":reason},"status":status}).to_string(),
        )
    };
    if !seen.path.ends_with("/_bulk") {
        return error(405, "illegal_argument_exception", "not a bulk request");
    }
    if !body.is_empty() && body.last() != Some(&b'\n') {
        return error(
            400,
            "illegal_argument_exception",
            "The bulk request must be terminated by a newline [\\n]",
        );
    }
    let lines: Vec<&[u8]> = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    if lines.len() % 2 != 0 {
        return error(
            400,
            "illegal_argument_exception",
            "Malformed action/metadata line: a document is missing",
        );
    }
    let failures = match &answer {
        Answer::BulkItems(f) => f.clone(),
        _ => Vec::new(),
    };
    let mut items = Vec::new();
    let mut stored = Vec::new();
    for (i, pair) in lines.chunks(2).enumerate() {
        let action: serde_json::Value = match serde_json::from_slice(pair[0]) {
            Ok(v) => v,
            Err(e) => return error(400, "x_content_parse_exception", &e.to_string()),
        };
        let Some((name, meta)) = action.as_object().and_then(|o| o.iter().next()) else {
            return error(
                400,
                "illegal_argument_exception",
                "Malformed action/metadata line",
            );
        };
        if name != "create" && name != "index" {
            return error(400, "illegal_argument_exception", "unexpected action");
        }
        if meta.get("_type").is_some() {
            return error(
                400,
                "illegal_argument_exception",
                "Action/metadata line [1] contains an unknown parameter [_type]",
            );
        }
        let doc: serde_json::Value = match serde_json::from_slice(pair[1]) {
            Ok(v) => v,
            Err(e) => {
                items.push(serde_json::json!({name: {"status":400,"error":{"type":"document_parsing_exception","reason":e.to_string()}}}));
                continue;
            }
        };
        let index = meta["_index"].as_str().unwrap_or_default().to_string();
        if let Some((_, status, kind)) = failures.iter().find(|(at, _, _)| *at == i) {
            items.push(serde_json::json!({name: {"_index":index,"status":status,"error":{"type":kind,"reason":format!("item {i} refused by the test")}}}));
            continue;
        }
        items.push(serde_json::json!({name: {"_index":index,"_id":format!("id-{i}"),"result":"created","status":201}}));
        stored.push(EsDoc {
            action: name.clone(),
            index,
            pipeline: meta["pipeline"].as_str().map(str::to_string),
            doc,
        });
    }
    lock(&state.received).es.extend(stored);
    let errors = items.iter().any(|i| {
        i.as_object()
            .and_then(|o| o.values().next())
            .is_some_and(|r| r.get("error").is_some())
    });
    let filtered = seen
        .query
        .as_deref()
        .is_some_and(|q| q.contains("filter_path"));
    let response = if filtered && !errors {
        serde_json::json!({"errors":false})
    } else {
        serde_json::json!({"took":3,"errors":errors,"items":items})
    };
    Reply::new(200, json, response.to_string())
}

// ---- OTLP ----

fn any_text(v: &Option<otlppb::AnyValue>) -> String {
    use otlppb::any_value::Value;
    match v.as_ref().and_then(|a| a.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn kv_map(kvs: &[otlppb::KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), any_text(&kv.value)))
        .collect()
}

fn json_any_text(v: &serde_json::Value) -> Result<String, String> {
    let o = v.as_object().ok_or("value is not an object")?;
    if let Some(s) = o.get("stringValue") {
        return Ok(s.as_str().ok_or("stringValue is not a string")?.to_string());
    }
    if let Some(i) = o.get("intValue") {
        // proto3 JSON: int64 as a decimal string (numbers are accepted too).
        return match i {
            serde_json::Value::String(s) => s
                .parse::<i64>()
                .map(|i| i.to_string())
                .map_err(|e| e.to_string()),
            n => n
                .as_i64()
                .map(|i| i.to_string())
                .ok_or("bad intValue".into()),
        };
    }
    if let Some(b) = o.get("boolValue") {
        return Ok(b.as_bool().ok_or("boolValue is not a bool")?.to_string());
    }
    Err(format!("unsupported value {v}"))
}

fn json_kv_map(v: &serde_json::Value) -> Result<BTreeMap<String, String>, String> {
    let mut m = BTreeMap::new();
    for kv in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        let key = kv["key"].as_str().ok_or("attribute without key")?;
        m.insert(key.to_string(), json_any_text(&kv["value"])?);
    }
    Ok(m)
}

fn json_u64(v: &serde_json::Value) -> Result<u64, String> {
    match v {
        serde_json::Value::String(s) => s.parse().map_err(|e| format!("{s:?}: {e}")),
        serde_json::Value::Null => Ok(0),
        n => n.as_u64().ok_or_else(|| format!("{n} is not a u64")),
    }
}

fn otlp_decode(json: bool, body: &[u8]) -> Result<Vec<OtlpRecord>, String> {
    let mut out = Vec::new();
    if json {
        let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        for rl in v["resourceLogs"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let resource = json_kv_map(&rl["resource"]["attributes"])?;
            for sl in rl["scopeLogs"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                for lr in sl["logRecords"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    out.push(OtlpRecord {
                        resource: resource.clone(),
                        time_ns: json_u64(&lr["timeUnixNano"])?,
                        observed_ns: json_u64(&lr["observedTimeUnixNano"])?,
                        severity: lr["severityNumber"].as_i64().unwrap_or(0) as i32,
                        body: json_any_text(&lr["body"])?,
                        attributes: json_kv_map(&lr["attributes"])?,
                    });
                }
            }
        }
    } else {
        let req = otlppb::ExportLogsServiceRequest::decode(body).map_err(|e| e.to_string())?;
        for rl in req.resource_logs {
            let resource = kv_map(&rl.resource.map(|r| r.attributes).unwrap_or_default());
            for sl in rl.scope_logs {
                for lr in sl.log_records {
                    out.push(OtlpRecord {
                        resource: resource.clone(),
                        time_ns: lr.time_unix_nano,
                        observed_ns: lr.observed_time_unix_nano,
                        severity: lr.severity_number,
                        body: any_text(&lr.body),
                        attributes: kv_map(&lr.attributes),
                    });
                }
            }
        }
    }
    Ok(out)
}

fn otlp(state: &State, seen: &Seen, body: &[u8], answer: Answer) -> Reply {
    let json = seen
        .content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/json"));
    let content_type = if json {
        "application/json"
    } else {
        "application/x-protobuf"
    };
    let status_body = |code: i32, message: &str| -> Vec<u8> {
        if json {
            serde_json::json!({"code":code,"message":message})
                .to_string()
                .into_bytes()
        } else {
            otlppb::Status {
                code,
                message: message.to_string(),
                details: vec![],
            }
            .encode_to_vec()
        }
    };
    if let Answer::Status {
        status,
        retry_after,
        body,
    } = &answer
    {
        // google.rpc.Status codes: 8 RESOURCE_EXHAUSTED, 14 UNAVAILABLE, 3 INVALID_ARGUMENT.
        let code = match status {
            429 => 8,
            502..=504 => 14,
            _ => 3,
        };
        return Reply {
            status: *status,
            content_type,
            retry_after: retry_after.map(|s| s.to_string()),
            body: status_body(code, body),
        };
    }
    if seen.path != "/v1/logs" {
        return Reply::new(404, content_type, status_body(5, "not found"));
    }
    let mut records = match otlp_decode(json, body) {
        Ok(r) => r,
        Err(e) => return Reply::new(400, content_type, status_body(3, &e)),
    };
    let response = match answer {
        Answer::OtlpPartial { rejected, message } => {
            let rejected = rejected.min(records.len());
            records.truncate(records.len() - rejected);
            if json {
                serde_json::json!({"partialSuccess":{"rejectedLogRecords":rejected.to_string(),"errorMessage":message}})
                    .to_string()
                    .into_bytes()
            } else {
                otlppb::ExportLogsServiceResponse {
                    partial_success: Some(otlppb::ExportLogsPartialSuccess {
                        rejected_log_records: rejected as i64,
                        error_message: message,
                    }),
                }
                .encode_to_vec()
            }
        }
        _ if json => b"{}".to_vec(),
        _ => otlppb::ExportLogsServiceResponse::default().encode_to_vec(),
    };
    lock(&state.received).otlp.extend(records);
    Reply::new(200, content_type, response)
}

// ---- Splunk HEC ----

fn hec_reply(code: u32, invalid_event: Option<usize>) -> Reply {
    let (status, text) = match code {
        0 => (200, "Success"),
        1 => (403, "Token disabled"),
        2 => (401, "Token is required"),
        3 => (401, "Invalid authorization"),
        4 => (403, "Invalid token"),
        5 => (400, "No data"),
        6 => (400, "Invalid data format"),
        7 => (400, "Incorrect index"),
        8 => (500, "Internal server error"),
        9 => (503, "Server is busy"),
        12 => (400, "Event field is required"),
        13 => (400, "Event field cannot be blank"),
        15 => (400, "Error in handling indexed fields"),
        18 => (503, "HEC is unhealthy, queues are full"),
        _ => (400, "Unknown error"),
    };
    let mut v = serde_json::json!({"text":text,"code":code});
    if let Some(n) = invalid_event {
        v["invalid-event-number"] = n.into();
    }
    Reply::new(status, "application/json; charset=UTF-8", v.to_string())
}

fn splunk_hec(state: &State, seen: &Seen, body: &[u8], answer: Answer) -> Reply {
    if let Some(r) = scripted_status(&answer) {
        return r;
    }
    match (&seen.authorization, &state.token) {
        (None, Some(_)) => return hec_reply(2, None),
        (Some(a), Some(t)) => match a.strip_prefix("Splunk ") {
            None => return hec_reply(3, None),
            Some(given) if given != t => return hec_reply(4, None),
            Some(_) => {}
        },
        _ => {}
    }
    if !seen.path.starts_with("/services/collector") {
        return Reply::text(404, "not found");
    }
    if let Answer::HecCode(code) = answer {
        return hec_reply(code, (code == 6 || code == 7).then_some(0));
    }
    let mut events = Vec::new();
    for (i, ev) in serde_json::Deserializer::from_slice(body)
        .into_iter::<serde_json::Value>()
        .enumerate()
    {
        let Ok(ev) = ev else {
            return hec_reply(6, Some(i));
        };
        match ev.get("event") {
            None => return hec_reply(12, Some(i)),
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => {
                return hec_reply(13, Some(i));
            }
            Some(_) => {}
        }
        if let Some(fields) = ev.get("fields") {
            let flat = fields
                .as_object()
                .is_some_and(|o| o.values().all(|v| v.is_string() || v.is_array()));
            if !flat {
                return hec_reply(15, Some(i));
            }
        }
        events.push(ev);
    }
    if events.is_empty() {
        return hec_reply(5, None);
    }
    lock(&state.received).hec.extend(events);
    hec_reply(0, None)
}

// ---- http (NDJSON) ----

fn http(state: &State, body: &[u8], answer: Answer) -> Reply {
    if let Some(r) = scripted_status(&answer) {
        return r;
    }
    let mut objects = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(v) if v.is_object() => objects.push(v),
            Ok(_) => return Reply::text(400, format!("line {}: not a JSON object", i + 1)),
            Err(e) => return Reply::text(400, format!("line {}: {e}", i + 1)),
        }
    }
    lock(&state.received).http.extend(objects);
    Reply::text(200, "")
}
