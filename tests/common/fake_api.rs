//! Test harness (kube): a fake Kubernetes API server on 127.0.0.1 that speaks list and watch for
//! `/api/v1/pods` and `/api/v1/namespaces` the way the real one does
//! (<https://kubernetes.io/docs/reference/using-api/api-concepts/>): one global resourceVersion,
//! lists with `metadata.resourceVersion`, watches as newline-delimited JSON events since a
//! resourceVersion (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR), `410 Gone` for a compacted
//! resourceVersion, `timeoutSeconds`, field selectors (`spec.nodeName=…`) and simple label selectors.
//! Tests change objects, inject failures, drop watches, expire history, take the server down and
//! bring it back, and read the log of every request it got.
//!
//! Include it with `#[path = "common/fake_api.rs"] mod fake_api;`. Use [`FakeApi::start`] inside a
//! tokio test, or [`FakeApi::start_background`] from a plain `#[test]` (it runs its own runtime
//! thread), then point loglet at [`FakeApi::write_kubeconfig`].
//!
//! Like the watch cache of a real API server, lists ignore `limit` (no pagination) and a watch
//! from resourceVersion 0 (or none) starts with an ADDED event per existing object.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::SinkExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::{Value, json};

type Body = BoxBody<Bytes, std::io::Error>;

/// The resources the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Pods,
    Namespaces,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::Namespaces => "namespaces",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::Namespaces => "Namespace",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    List,
    Watch,
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub verb: Verb,
    /// `pods`, `namespaces`, or the path of anything else.
    pub resource: String,
    /// The `resourceVersion` parameter, when given.
    pub resource_version: Option<String>,
    /// The decoded query parameters.
    pub query: BTreeMap<String, String>,
    /// The status it was answered with (200 for a watch that streamed).
    pub status: u16,
    pub at: Instant,
}

impl Recorded {
    pub fn is(&self, verb: Verb, resource: Resource) -> bool {
        self.verb == verb && self.resource == resource.as_str()
    }
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

struct Change {
    rv: u64,
    resource: Resource,
    kind: ChangeKind,
    object: Value,
    /// The object before a modification, to tell an object that starts or stops matching a
    /// selector (the real watch cache sends ADDED / DELETED then).
    previous: Option<Value>,
}

struct World {
    rv: u64,
    /// Watches and exact lists from below this resourceVersion get `410 Gone`.
    min_rv: u64,
    objects: BTreeMap<(Resource, String), Value>,
    history: Vec<Change>,
    requests: Vec<Recorded>,
    failures: VecDeque<u16>,
    fail_all: Option<u16>,
    fail_lists: Option<u16>,
    latency: Duration,
    bookmark_every: Duration,
    down: bool,
    next_uid: u64,
}

struct Inner {
    world: Mutex<World>,
    /// Sends the resourceVersion on every change; open watches wake on it.
    changed: tokio::sync::watch::Sender<u64>,
    /// Bumped to cut every open watch mid-stream.
    drops: tokio::sync::watch::Sender<u64>,
    /// Bumped to close every connection and the listener (server down).
    kills: tokio::sync::watch::Sender<u64>,
    /// True while a listener is open (it closes asynchronously after a kill).
    listening: tokio::sync::watch::Sender<bool>,
    runtime: tokio::runtime::Handle,
    addr: SocketAddr,
}

/// A fake API server. Dropping it stops it.
pub struct FakeApi {
    inner: Arc<Inner>,
    _background: Option<Background>,
}

struct Background {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.inner.kills.send_modify(|k| *k += 1);
    }
}

/// Real bookmarks come about once a minute; a test wants them sooner.
const DEFAULT_BOOKMARK_EVERY: Duration = Duration::from_millis(500);

impl FakeApi {
    /// Starts on the current tokio runtime, on 127.0.0.1 with a free port.
    pub async fn start() -> FakeApi {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for the fake API");
        let addr = std_listener.local_addr().expect("local address");
        let inner = Arc::new(Inner {
            world: Mutex::new(World {
                rv: 1,
                min_rv: 1,
                objects: BTreeMap::new(),
                history: Vec::new(),
                requests: Vec::new(),
                failures: VecDeque::new(),
                fail_all: None,
                fail_lists: None,
                latency: Duration::ZERO,
                bookmark_every: DEFAULT_BOOKMARK_EVERY,
                down: false,
                next_uid: 1,
            }),
            changed: tokio::sync::watch::Sender::new(1),
            drops: tokio::sync::watch::Sender::new(0),
            kills: tokio::sync::watch::Sender::new(0),
            listening: tokio::sync::watch::Sender::new(false),
            runtime: tokio::runtime::Handle::current(),
            addr,
        });
        spawn_listener(inner.clone(), std_listener);
        FakeApi {
            inner,
            _background: None,
        }
    }

    /// Starts on a runtime thread of its own, for tests that are not async.
    pub fn start_background() -> FakeApi {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fake-kube-api".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the fake API");
                rt.block_on(async move {
                    let api = FakeApi::start().await;
                    let inner = api.inner.clone();
                    // The caller's handle owns shutdown; this one must not kill on drop.
                    std::mem::forget(api);
                    let _ = tx.send(inner.clone());
                    let _ = stop_rx.await;
                    inner.kills.send_modify(|k| *k += 1);
                });
            })
            .expect("spawn the fake API thread");
        let inner = rx.recv().expect("the fake API started");
        FakeApi {
            inner,
            _background: Some(Background {
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// Writes a kubeconfig (plain http, no credentials) pointing at this server; returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig.yaml");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\nusers:\n- name: fake\n  user: {{}}\ncurrent-context: fake\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write the kubeconfig");
        path
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.inner.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- objects ----

    /// Creates or replaces a Pod (by namespace and name). A Pod without UID gets one.
    pub fn apply_pod(&self, pod: &Pod) -> Pod {
        let v = serde_json::to_value(pod).expect("a Pod serialises");
        serde_json::from_value(self.apply(Resource::Pods, v)).expect("a Pod deserialises")
    }

    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        self.delete(Resource::Pods, &format!("{namespace}/{name}"))
    }

    pub fn apply_namespace(&self, ns: &Namespace) -> Namespace {
        let v = serde_json::to_value(ns).expect("a Namespace serialises");
        serde_json::from_value(self.apply(Resource::Namespaces, v))
            .expect("a Namespace deserialises")
    }

    pub fn delete_namespace(&self, name: &str) -> bool {
        self.delete(Resource::Namespaces, name)
    }

    /// The current resourceVersion (of the whole store, as in etcd).
    pub fn resource_version(&self) -> u64 {
        self.world().rv
    }

    fn apply(&self, resource: Resource, mut object: Value) -> Value {
        let mut w = self.world();
        w.rv += 1;
        let rv = w.rv;
        let key = object_key(resource, &object);
        let md = object
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .expect("objects have metadata");
        if md
            .get("uid")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            let uid = format!("fake-uid-{:08}", w.next_uid);
            w.next_uid += 1;
            md.insert("uid".into(), Value::String(uid));
        }
        md.insert("resourceVersion".into(), Value::String(rv.to_string()));
        let previous = w.objects.insert((resource, key), object.clone());
        let kind = if previous.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        w.history.push(Change {
            rv,
            resource,
            kind,
            object: object.clone(),
            previous,
        });
        drop(w);
        self.inner.changed.send_replace(rv);
        object
    }

    fn delete(&self, resource: Resource, key: &str) -> bool {
        let mut w = self.world();
        let Some(mut object) = w.objects.remove(&(resource, key.to_string())) else {
            return false;
        };
        w.rv += 1;
        let rv = w.rv;
        if let Some(md) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            md.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        w.history.push(Change {
            rv,
            resource,
            kind: ChangeKind::Deleted,
            object,
            previous: None,
        });
        drop(w);
        self.inner.changed.send_replace(rv);
        true
    }

    // ---- faults ----

    /// The next `n` list or watch requests are answered with `status` (and a Status body).
    pub fn fail_next(&self, n: usize, status: u16) {
        self.world().failures.extend(std::iter::repeat_n(status, n));
    }

    /// Every list or watch request is answered with `status` until [`heal`](Self::heal).
    pub fn fail_all(&self, status: u16) {
        self.world().fail_all = Some(status);
    }

    /// Every list request (not watches) is answered with `status` until [`heal`](Self::heal).
    pub fn fail_lists(&self, status: u16) {
        self.world().fail_lists = Some(status);
    }

    /// Ends injected failures and latency.
    pub fn heal(&self) {
        let mut w = self.world();
        w.failures.clear();
        w.fail_all = None;
        w.fail_lists = None;
        w.latency = Duration::ZERO;
    }

    /// Every answer waits this long first (a slow API server).
    pub fn set_latency(&self, latency: Duration) {
        self.world().latency = latency;
    }

    /// How often open watches that asked for bookmarks get one.
    pub fn set_bookmark_interval(&self, every: Duration) {
        self.world().bookmark_every = every;
    }

    /// Cuts every open watch mid-stream (the connection ends without the final chunk).
    pub fn drop_watches(&self) {
        self.inner.drops.send_modify(|d| *d += 1);
    }

    /// Compacts the history: resourceVersions seen so far are too old to watch from, so the next
    /// watch resumes with `410 Gone` and the client must re-list. Open watches are cut.
    pub fn expire_history(&self) {
        let mut w = self.world();
        w.rv += 1;
        w.min_rv = w.rv;
        let rv = w.rv;
        drop(w);
        self.inner.changed.send_replace(rv);
        self.drop_watches();
    }

    /// Closes the listener and every connection: connections are refused until
    /// [`come_back`](Self::come_back).
    pub fn go_down(&self) {
        self.world().down = true;
        self.inner.kills.send_modify(|k| *k += 1);
    }

    /// Listens again on the same address, as soon as the old listener is closed.
    pub fn come_back(&self) {
        let mut w = self.world();
        if !w.down {
            return;
        }
        w.down = false;
        drop(w);
        let inner = self.inner.clone();
        self.inner.runtime.spawn(async move {
            let mut listening = inner.listening.subscribe();
            let _ = listening.wait_for(|up| !up).await;
            // std sets SO_REUSEADDR on Unix listeners: the port comes back despite TIME_WAIT.
            let mut tries = 0;
            let listener = loop {
                match std::net::TcpListener::bind(inner.addr) {
                    Ok(l) => break l,
                    Err(e) if tries < 50 => {
                        tries += 1;
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("re-bind the fake API's address {}: {e}", inner.addr),
                }
            };
            spawn_listener(inner, listener);
        });
    }

    // ---- the request log ----

    pub fn requests(&self) -> Vec<Recorded> {
        self.world().requests.clone()
    }

    pub fn count(&self, verb: Verb, resource: Resource) -> usize {
        self.world()
            .requests
            .iter()
            .filter(|r| r.is(verb, resource))
            .count()
    }

    pub fn clear_requests(&self) {
        self.world().requests.clear();
    }
}

fn object_key(resource: Resource, object: &Value) -> String {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .expect("objects have a name");
    match resource {
        Resource::Pods => {
            let ns = object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .expect("Pods have a namespace");
            format!("{ns}/{name}")
        }
        Resource::Namespaces => name.to_string(),
    }
}

fn spawn_listener(inner: Arc<Inner>, listener: std::net::TcpListener) {
    let runtime = inner.runtime.clone();
    // Subscribed before the task runs, so a kill sent right after this call is not missed.
    let mut kills = inner.kills.subscribe();
    inner.listening.send_replace(true);
    runtime.spawn(async move {
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(_) => continue,
                },
                _ = kills.changed() => break,
            };
            let mut conn_kills = inner.kills.subscribe();
            let conn_inner = inner.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let inner = conn_inner.clone();
                    async move { Ok::<_, Infallible>(answer(inner, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                tokio::select! {
                    _ = conn => {}
                    _ = conn_kills.changed() => {}
                }
            });
        }
        drop(listener);
        inner.listening.send_replace(false);
    });
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("a valid response")
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn reason_for(code: u16) -> &'static str {
    match code {
        410 => "Expired",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(percent_decode(k), percent_decode(v));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=b`, `a==b`, `a!=b` terms (field selectors); label selectors also take `k` and `!k`.
#[derive(Debug, Clone, Default)]
struct Selector {
    fields: Vec<(String, bool, String)>,
    labels: Vec<LabelTerm>,
}

#[derive(Debug, Clone)]
enum LabelTerm {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

impl Selector {
    fn parse(query: &BTreeMap<String, String>) -> Selector {
        let mut s = Selector::default();
        for term in query
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or("")
            .split(',')
            .filter(|t| !t.is_empty())
        {
            if let Some((k, v)) = term.split_once("!=") {
                s.fields.push((k.into(), false, v.into()));
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                s.fields.push((k.into(), true, v.into()));
            }
        }
        for term in query
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            s.labels.push(if let Some((k, v)) = term.split_once("!=") {
                LabelTerm::Ne(k.into(), v.into())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                LabelTerm::Eq(k.into(), v.into())
            } else if let Some(k) = term.strip_prefix('!') {
                LabelTerm::Absent(k.into())
            } else {
                LabelTerm::Exists(term.into())
            });
        }
        s
    }

    fn matches(&self, object: &Value) -> bool {
        let fields_ok = self.fields.iter().all(|(path, eq, want)| {
            let pointer = format!("/{}", path.replace('.', "/"));
            let got = object
                .pointer(&pointer)
                .and_then(Value::as_str)
                .unwrap_or("");
            (got == want) == *eq
        });
        let label = |k: &str| {
            object
                .pointer("/metadata/labels")
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
        };
        fields_ok
            && self.labels.iter().all(|t| match t {
                LabelTerm::Eq(k, v) => label(k) == Some(v.as_str()),
                LabelTerm::Ne(k, v) => label(k) != Some(v.as_str()),
                LabelTerm::Exists(k) => label(k).is_some(),
                LabelTerm::Absent(k) => label(k).is_none(),
            })
    }
}

async fn answer(inner: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query());
    let resource = match path.as_str() {
        "/api/v1/pods" => Some(Resource::Pods),
        "/api/v1/namespaces" => Some(Resource::Namespaces),
        _ => None,
    };
    let verb = if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        Verb::Watch
    } else {
        Verb::List
    };
    let (latency, failure) = {
        let mut w = inner.world.lock().unwrap_or_else(|e| e.into_inner());
        let failure = if resource.is_some() {
            w.fail_all
                .or(w.fail_lists.filter(|_| verb == Verb::List))
                .or_else(|| w.failures.pop_front())
        } else {
            None
        };
        (w.latency, failure)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (status, response) = match (resource, failure) {
        (None, _) => (
            404,
            full(
                StatusCode::NOT_FOUND,
                status_body(404, "NotFound", &format!("the fake serves no {path}")),
            ),
        ),
        (Some(_), Some(code)) => (
            code,
            full(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                status_body(code, reason_for(code), "injected by the test"),
            ),
        ),
        (Some(r), None) if verb == Verb::List => list(&inner, r, &query),
        (Some(r), None) => watch(&inner, r, &query),
    };
    let mut w = inner.world.lock().unwrap_or_else(|e| e.into_inner());
    w.requests.push(Recorded {
        verb,
        resource: resource.map_or(path, |r| r.as_str().to_string()),
        resource_version: query.get("resourceVersion").cloned(),
        query,
        status,
        at: Instant::now(),
    });
    response
}

fn without_type_meta(mut object: Value) -> Value {
    // List items carry no kind and apiVersion, as from the real API server.
    if let Some(o) = object.as_object_mut() {
        o.remove("kind");
        o.remove("apiVersion");
    }
    object
}

fn list(
    inner: &Inner,
    resource: Resource,
    query: &BTreeMap<String, String>,
) -> (u16, Response<Body>) {
    let w = inner.world.lock().unwrap_or_else(|e| e.into_inner());
    let rv: Option<u64> = query.get("resourceVersion").and_then(|v| v.parse().ok());
    let exact = query
        .get("resourceVersionMatch")
        .is_some_and(|m| m == "Exact");
    if let Some(rv) = rv
        && rv != 0
        && rv < w.min_rv
        && exact
    {
        let msg = format!("The resourceVersion for the provided list is too old: {rv}");
        return (
            410,
            full(StatusCode::GONE, status_body(410, "Expired", &msg)),
        );
    }
    let selector = Selector::parse(query);
    let items: Vec<Value> = w
        .objects
        .iter()
        .filter(|((r, _), o)| *r == resource && selector.matches(o))
        .map(|(_, o)| without_type_meta(o.clone()))
        .collect();
    let body = json!({
        "kind": format!("{}List", resource.kind()),
        "apiVersion": "v1",
        "metadata": {"resourceVersion": w.rv.to_string()},
        "items": items,
    });
    (200, full(StatusCode::OK, body))
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn bookmark(resource: Resource, rv: u64) -> Bytes {
    event_line(
        "BOOKMARK",
        &json!({
            "kind": resource.kind(),
            "apiVersion": "v1",
            "metadata": {"resourceVersion": rv.to_string()},
        }),
    )
}

/// The events a watcher with `selector` sees for one change.
fn visible(change: &Change, selector: &Selector) -> Option<&'static str> {
    let now = selector.matches(&change.object);
    match change.kind {
        ChangeKind::Added => now.then_some("ADDED"),
        ChangeKind::Deleted => now.then_some("DELETED"),
        ChangeKind::Modified => {
            let before = change
                .previous
                .as_ref()
                .is_some_and(|p| selector.matches(p));
            match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            }
        }
    }
}

type Tx = futures::channel::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

fn watch(
    inner: &Arc<Inner>,
    resource: Resource,
    query: &BTreeMap<String, String>,
) -> (u16, Response<Body>) {
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let selector = Selector::parse(query);
    let (tx, rx) = futures::channel::mpsc::channel(64);
    // Subscribe before answering, so a drop or change right after the answer is not missed.
    let changed = inner.changed.subscribe();
    let mut drops = inner.drops.subscribe();
    drops.borrow_and_update();
    let inner = inner.clone();
    inner.runtime.clone().spawn(async move {
        stream_events(
            inner, resource, selector, from, bookmarks, timeout, changed, drops, tx,
        )
        .await;
    });
    let response = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(rx)))
        .expect("a valid response");
    (200, response)
}

#[allow(clippy::too_many_arguments)]
async fn stream_events(
    inner: Arc<Inner>,
    resource: Resource,
    selector: Selector,
    from: u64,
    bookmarks: bool,
    timeout: Option<Duration>,
    mut changed: tokio::sync::watch::Receiver<u64>,
    mut drops: tokio::sync::watch::Receiver<u64>,
    mut tx: Tx,
) {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut sent_rv = from;
    let (first, expired): (Vec<Bytes>, bool) = {
        let w = inner.world.lock().unwrap_or_else(|e| e.into_inner());
        if from != 0 && from < w.min_rv {
            let msg = format!("too old resource version: {from} ({})", w.min_rv);
            (
                vec![event_line("ERROR", &status_body(410, "Expired", &msg))],
                true,
            )
        } else if from == 0 {
            // A watch from 0 starts with the current state, as synthetic ADDED events.
            sent_rv = w.rv;
            let lines = w
                .objects
                .iter()
                .filter(|((r, _), o)| *r == resource && selector.matches(o))
                .map(|(_, o)| event_line("ADDED", o))
                .collect();
            (lines, false)
        } else {
            (Vec::new(), false)
        }
    };
    for line in first {
        if tx.send(Ok(Frame::data(line))).await.is_err() {
            return;
        }
    }
    if expired {
        // The real API server ends the watch after the 410 event.
        return;
    }
    let bookmark_every = inner
        .world
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .bookmark_every;
    let mut tick = tokio::time::interval(bookmark_every);
    tick.tick().await;
    let mut bookmark_due = false;
    loop {
        let (lines, rv) = {
            let w = inner.world.lock().unwrap_or_else(|e| e.into_inner());
            let lines: Vec<Bytes> = w
                .history
                .iter()
                .filter(|c| c.resource == resource && c.rv > sent_rv)
                .filter_map(|c| visible(c, &selector).map(|t| event_line(t, &c.object)))
                .collect();
            (lines, w.rv)
        };
        for line in lines {
            if tx.send(Ok(Frame::data(line))).await.is_err() {
                return;
            }
        }
        sent_rv = sent_rv.max(rv);
        if bookmark_due && bookmarks {
            if tx
                .send(Ok(Frame::data(bookmark(resource, rv))))
                .await
                .is_err()
            {
                return;
            }
            bookmark_due = false;
        }
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = drops.changed() => {
                let _ = tx.send(Err(std::io::Error::other("watch cut by the test"))).await;
                return;
            }
            _ = until_deadline => {
                // timeoutSeconds is over: a clean end of the stream, as the real server does.
                return;
            }
            _ = tick.tick() => bookmark_due = true,
        }
    }
}

// ---- objects for tests ----

/// A running Pod on `node` with one container `app` (image `example/app:1`, container ID
/// `containerd://<uid>-app`).
pub fn pod(namespace: &str, name: &str, uid: &str, node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            uid: Some(uid.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            containers: vec![Container {
                name: "app".into(),
                image: Some("example/app:1".into()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            container_statuses: Some(vec![ContainerStatus {
                name: "app".into(),
                container_id: Some(format!("containerd://{uid}-app")),
                image: "docker.io/example/app:1".into(),
                image_id: "docker.io/example/app@sha256:0".into(),
                ready: true,
                restart_count: 0,
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

/// Replaces the containers with `(name, image)` pairs, each running with container ID
/// `containerd://<uid>-<name>`.
pub fn with_containers(mut pod: Pod, containers: &[(&str, &str)]) -> Pod {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers = containers
            .iter()
            .map(|(name, image)| Container {
                name: name.to_string(),
                image: Some(image.to_string()),
                ..Container::default()
            })
            .collect();
    }
    if let Some(status) = pod.status.as_mut() {
        status.container_statuses = Some(
            containers
                .iter()
                .map(|(name, image)| ContainerStatus {
                    name: name.to_string(),
                    container_id: Some(format!("containerd://{uid}-{name}")),
                    image: image.to_string(),
                    ready: true,
                    ..ContainerStatus::default()
                })
                .collect(),
        );
    }
    pod
}

pub fn with_labels(mut pod: Pod, labels: &[(&str, &str)]) -> Pod {
    pod.metadata
        .labels
        .get_or_insert_default()
        .extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    pod
}

pub fn with_annotations(mut pod: Pod, annotations: &[(&str, &str)]) -> Pod {
    pod.metadata.annotations.get_or_insert_default().extend(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    pod
}

/// Adds a controller owner reference.
pub fn owned_by(mut pod: Pod, kind: &str, name: &str) -> Pod {
    let api_version = match kind {
        "Job" | "CronJob" => "batch/v1",
        "Node" => "v1",
        _ => "apps/v1",
    };
    pod.metadata
        .owner_references
        .get_or_insert_default()
        .push(OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            uid: format!("{name}-owner-uid"),
            controller: Some(true),
            block_owner_deletion: Some(true),
        });
    pod
}

pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    let mut all: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.insert("kubernetes.io/metadata.name".into(), name.into());
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(all),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// Adds annotations to a Namespace.
pub fn namespace_with_annotations(mut ns: Namespace, annotations: &[(&str, &str)]) -> Namespace {
    ns.metadata.annotations.get_or_insert_default().extend(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    ns
}
