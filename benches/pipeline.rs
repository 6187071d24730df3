//! bench: the whole pipeline, end to end, through the real `loglet` binary.
//!
//! A kubelet tree of CRI files (40 Pods x 2 containers, ~238-byte lines mixing JSON and plain
//! text, one line in 2000 over 16 KiB and split into `P` chunks), Pod metadata from a fake
//! Kubernetes API (list/watch), NDJSON over HTTP to a receiver on 127.0.0.1 that only scans for
//! the sequence number of each line, so it is not the bottleneck. Two scenarios:
//!
//! - **catch-up**: the tree is written before loglet starts; loglet ships all of it. Reports
//!   time, lines/s, MiB/s, CPU seconds (user + system of the loglet process) per GiB, peak RSS
//!   (VmHWM), lost and duplicated lines.
//! - **steady**: a writer appends at a fixed rate; reports loglet's CPU as a share of one core,
//!   its RSS, and the lag from write to receipt (p50, p99).
//! - **idle**: `--idle-pods` Pods (2 containers each, same metadata) in a fake API of their own
//!   and on disk, with a few small lines per file that loglet ships first; then nothing is
//!   written for `--idle-secs`. Reports loglet's RSS (`VmRSS`, split into anonymous and file
//!   pages, and `VmHWM`) at the end, and its CPU over the idle time.
//!
//! - **soak** (only when asked for): a writer appends at a fixed rate for a long time, with
//!   kubelet-style rotation (rename, gzip, the oldest deleted), and the receiver answers 503 for
//!   a while in the middle. Every 30 s it prints loglet's RSS, open descriptors and what arrived;
//!   at the end, whether memory and descriptors stayed flat and whether every line arrived.
//!
//! Run: `cargo bench --bench pipeline -- [--mib 300] [--steady-rate 20000] [--steady-secs 30]
//! [--idle-pods 100] [--idle-secs 20] [--queue-batches N] [--sink-max-bytes N]`
//! (`--mib 0`, `--steady-secs 0` or `--idle-pods 0` skips a scenario). The soak:
//! `cargo bench --bench pipeline -- --mib 0 --steady-secs 0 --idle-pods 0 --soak-secs 3600
//! [--soak-rate 2000] [--outage-secs 600] [--rotate-kib 2048]`. Never run in CI; figures go to
//! docs/performance.md and docs/operations.md. `LOGLET_BENCH_WRAPPER` runs loglet under a
//! profiler (see `start_loglet`).

#[path = "../tests/common/fake_api.rs"]
mod fake_api;
#[path = "../tests/common/node.rs"]
mod node;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fake_api::{FakeApi, namespace, owned_by, pod, with_containers, with_labels};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};

const NODE: &str = "bench-node";
const PODS: usize = 40;
const CONTAINERS: [&str; 2] = ["app", "proxy"];
/// containerd's split size.
const CRI_SPLIT: usize = 16 * 1024;
/// Lines written to each file of the idle scenario before loglet starts.
const IDLE_LINES_PER_FILE: u64 = 20;
/// A bound on every wait, so the bench always ends.
const WAIT_LIMIT: Duration = Duration::from_secs(600);

struct Args {
    mib: u64,
    steady_rate: u64,
    steady_secs: u64,
    idle_pods: usize,
    idle_secs: u64,
    /// Overrides of `pipeline.queue_batches` and the sink's `batch.max_bytes`, to measure defaults.
    queue_batches: Option<u64>,
    sink_max_bytes: Option<u64>,
    soak_secs: u64,
    soak_rate: u64,
    outage_secs: u64,
    rotate_kib: u64,
}

fn args() -> Args {
    let mut a = Args {
        mib: 300,
        steady_rate: 20_000,
        steady_secs: 30,
        idle_pods: 100,
        idle_secs: 20,
        queue_batches: None,
        sink_max_bytes: None,
        soak_secs: 0,
        soak_rate: 2_000,
        outage_secs: 600,
        rotate_kib: 2048,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut num = || {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{k} takes a number"))
        };
        match k.as_str() {
            "--mib" => a.mib = num(),
            "--steady-rate" => a.steady_rate = num(),
            "--steady-secs" => a.steady_secs = num(),
            "--idle-pods" => a.idle_pods = num() as usize,
            "--idle-secs" => a.idle_secs = num(),
            "--queue-batches" => a.queue_batches = Some(num()),
            "--sink-max-bytes" => a.sink_max_bytes = Some(num()),
            "--soak-secs" => a.soak_secs = num(),
            "--soak-rate" => a.soak_rate = num(),
            "--outage-secs" => a.outage_secs = num(),
            "--rotate-kib" => a.rotate_kib = num(),
            _ => {} // `--bench` from cargo, and anything else
        }
    }
    a
}

fn main() {
    let a = args();
    if a.mib > 0 || (a.steady_secs > 0 && a.steady_rate > 0) {
        let api = bench_api(PODS);
        if a.mib > 0 {
            catch_up(&api, &a);
        }
        if a.steady_secs > 0 && a.steady_rate > 0 {
            steady(&api, &a);
        }
    }
    if a.idle_pods > 0 {
        idle(&bench_api(a.idle_pods), &a);
    }
    if a.soak_secs > 0 && a.soak_rate > 0 {
        soak(&bench_api(PODS), &a);
    }
}

/// A fake API with the `bench` namespace and `pods` Pods on the bench node.
fn bench_api(pods: usize) -> FakeApi {
    let api = FakeApi::start_background();
    api.apply_namespace(&namespace("bench", &[("team", "perf"), ("env", "prod")]));
    for p in 0..pods {
        api.apply_pod(&owned_by(
            with_labels(
                with_containers(
                    pod("bench", &pod_name(p), &pod_uid(p), NODE),
                    &[
                        ("app", "registry.example.com/shop/checkout:2.14.1"),
                        ("proxy", "envoyproxy/envoy:v1.31.0"),
                    ],
                ),
                &[
                    ("app.kubernetes.io/name", "checkout"),
                    ("app.kubernetes.io/instance", "checkout-prod"),
                    ("app.kubernetes.io/version", "2.14.1"),
                    ("pod-template-hash", "7d9f8b6c5"),
                    ("team", "payments"),
                ],
            ),
            "ReplicaSet",
            "checkout-7d9f8b6c5",
        ));
    }
    api
}

fn pod_name(p: usize) -> String {
    format!("checkout-7d9f8b6c5-{p:05}")
}

fn pod_uid(p: usize) -> String {
    format!("3f1c2a9e-6b1d-4f8e-9c3a-{p:012}")
}

fn file_path(root: &Path, p: usize, c: &str) -> PathBuf {
    root.join(format!(
        "var/log/pods/bench_{}_{}/{c}/0.log",
        pod_name(p),
        pod_uid(p)
    ))
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// The content of line `seq` (what the receiver must see whole): `seq=<n>;` first, `;eol`
/// last, a JSON or plain-text body of about 238 bytes in all once framed, one in 2000 over
/// 16 KiB. `t` is the write time, for the steady scenario's lag.
fn content(seq: u64, t: i64, out: &mut Vec<u8>) {
    out.clear();
    write!(out, "seq={seq};t={t};").unwrap();
    if seq % 2000 == 1999 {
        let n = 20_000 + (seq % 7) as usize * 3000;
        out.extend(std::iter::repeat_n(b'L', n));
    } else if seq % 2 == 0 {
        write!(
            out,
            "{{\"level\":\"info\",\"msg\":\"request served\",\"method\":\"GET\",\"path\":\"/api/v1/cart/{}\",\"status\":200,\"duration_ms\":12.5,\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\"}}",
            seq % 10_000
        )
        .unwrap();
    } else {
        write!(
            out,
            "10.0.{}.{} - - \"GET /product/{} HTTP/1.1\" 200 5120 \"-\" \"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0\" upstream=10.1.2.3:8080",
            seq % 250,
            seq % 200,
            seq % 9999
        )
        .unwrap();
    }
    out.extend_from_slice(b";eol");
}

/// Appends one CRI line (split into `P` chunks past 16 KiB) to `w`; returns the bytes written.
/// Writes file `f`'s share of a tick's `per_tick` lines (of `files` files) in one write, as a
/// runtime flushes; returns the bytes written.
fn write_share(
    h: &mut File,
    f: usize,
    files: usize,
    per_tick: u64,
    seq: &mut u64,
    body: &mut Vec<u8>,
    buf: &mut Vec<u8>,
) -> u64 {
    buf.clear();
    let mine = per_tick / files as u64 + u64::from((f as u64) < per_tick % files as u64);
    for _ in 0..mine {
        let t = now_ns();
        content(*seq, t, body);
        write_cri(buf, t, body);
        *seq += 1;
    }
    h.write_all(buf).unwrap();
    buf.len() as u64
}

fn write_cri(w: &mut impl Write, t: i64, body: &[u8]) -> u64 {
    let ts = node::rfc3339_nano(t);
    let mut written = 0;
    let mut chunks = body.chunks(CRI_SPLIT).peekable();
    while let Some(chunk) = chunks.next() {
        let tag = if chunks.peek().is_some() { "P" } else { "F" };
        write!(w, "{ts} stdout {tag} ").unwrap();
        w.write_all(chunk).unwrap();
        w.write_all(b"\n").unwrap();
        written += (ts.len() + 10 + chunk.len()) as u64;
    }
    written
}

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    records: AtomicU64,
    /// Records whose message lost its `;eol` end (truncated) or its `seq=`.
    damaged: AtomicU64,
    /// A bit per sequence number; duplicates counted.
    bits: Mutex<Vec<u64>>,
    duplicates: AtomicU64,
    /// Lag samples in microseconds (steady scenario).
    lags_us: Mutex<Vec<u32>>,
    /// While set, the receiver answers 503 and keeps nothing (the soak's outage).
    down: std::sync::atomic::AtomicBool,
}

impl Seen {
    fn scan(&self, body: &[u8], lag: bool) {
        let now = now_ns();
        let mut bits = self.bits.lock().unwrap();
        let mut lags = Vec::new();
        let mut n = 0;
        for rec in body.split(|&b| b == b'\n').filter(|r| !r.is_empty()) {
            n += 1;
            let Some(i) = memchr::memmem::find(rec, b"seq=") else {
                self.damaged.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let (seq, rest) = number(&rec[i + 4..]);
            if memchr::memmem::find(rest, b";eol\"").is_none() {
                self.damaged.fetch_add(1, Ordering::Relaxed);
            }
            let (word, bit) = ((seq / 64) as usize, seq % 64);
            if bits.len() <= word {
                bits.resize(word + 1, 0);
            }
            if bits[word] & (1 << bit) != 0 {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            bits[word] |= 1 << bit;
            if lag && let Some(rest) = rest.strip_prefix(b";t=") {
                let (t, _) = number(rest);
                lags.push(((now - t as i64).max(0) / 1000).min(u32::MAX as i64) as u32);
            }
        }
        drop(bits);
        self.records.fetch_add(n, Ordering::Relaxed);
        if lag {
            self.lags_us.lock().unwrap().extend(lags);
        }
    }

    fn distinct(&self) -> u64 {
        let bits = self.bits.lock().unwrap();
        bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

fn number(s: &[u8]) -> (u64, &[u8]) {
    let end = s
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    let v = std::str::from_utf8(&s[..end])
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(u64::MAX / 2);
    (v, &s[end..])
}

/// An HTTP receiver on 127.0.0.1 on a thread of its own; returns its URL.
fn receiver(seen: Arc<Seen>, lag: bool) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            let mut answer = Response::new(Full::new(bytes::Bytes::new()));
                            if seen.down.load(Ordering::Relaxed) {
                                *answer.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                            } else {
                                seen.scan(&body, lag);
                            }
                            Ok::<_, hyper::Error>(answer)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    format!("http://{}/ingest", rx.recv().unwrap())
}

/// Starts loglet on `root`; returns it and the address of its /metrics.
fn start_loglet(root: &Path, api: &FakeApi, url: &str, a: &Args) -> (Child, SocketAddr) {
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let kubeconfig = api.write_kubeconfig(root);
    let config = root.join("loglet.yaml");
    let queue = a.queue_batches.map_or(String::new(), |n| {
        format!("pipeline:\n  queue_batches: {n}\n")
    });
    let batch = a.sink_max_bytes.map_or(String::new(), |n| {
        format!("    batch:\n      max_bytes: {n}\n")
    });
    std::fs::write(
        &config,
        format!(
            "state_dir: /state\nmetrics:\n  listen: {metrics}\nlog:\n  level: warn\nkubernetes:\n  kubeconfig: {}\n{queue}sinks:\n  bench:\n    type: http\n    url: {url}\n{batch}",
            kubeconfig.display()
        ),
    )
    .unwrap();
    // LOGLET_BENCH_WRAPPER="heaptrack -o /tmp/loglet" (or a `perf record` line) profiles the
    // run; the figures printed are then the wrapper's, not loglet's.
    let wrapper = std::env::var("LOGLET_BENCH_WRAPPER").unwrap_or_default();
    let mut argv: Vec<&str> = wrapper.split_whitespace().collect();
    argv.push(env!("CARGO_BIN_EXE_loglet"));
    let child = Command::new(argv[0])
        .args(&argv[1..])
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(root)
        .env("NODE_NAME", NODE)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start loglet (cargo bench builds it)");
    (child, metrics)
}

/// The sum of a metric's samples on loglet's /metrics (0 when absent or unreachable).
fn metric(addr: SocketAddr, name: &str) -> f64 {
    use std::io::Read;
    let mut body = String::new();
    if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let _ = s.read_to_string(&mut body);
    }
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// user + system CPU seconds of a live process.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based, of the whole line).
    let ticks = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(14) + ticks(15)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// `VmHWM` and `VmRSS` of a live process, MiB.
/// Fields of `/proc/<pid>/status`, in MiB.
fn status_mib<const N: usize>(pid: u32, keys: [&str; N]) -> [f64; N] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    keys.map(|key| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    })
}

/// Peak and current RSS.
fn rss_mib(pid: u32) -> (f64, f64) {
    let [hwm, rss] = status_mib(pid, ["VmHWM:", "VmRSS:"]);
    (hwm, rss)
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT_LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn catch_up(api: &FakeApi, a: &Args) {
    let mib = a.mib;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let files = PODS * CONTAINERS.len();
    let mut writers: Vec<BufWriter<File>> = (0..files)
        .map(|i| {
            let path = file_path(root, i / 2, CONTAINERS[i % 2]);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            BufWriter::with_capacity(1 << 20, File::create(path).unwrap())
        })
        .collect();
    let target = mib << 20;
    let (mut bytes, mut lines) = (0u64, 0u64);
    let mut body = Vec::new();
    let t0 = now_ns() - 3_600_000_000_000;
    while bytes < target {
        content(lines, 0, &mut body);
        bytes += write_cri(
            &mut writers[(lines % files as u64) as usize],
            t0 + lines as i64 * 1000,
            &body,
        );
        lines += 1;
    }
    for w in &mut writers {
        w.flush().unwrap();
    }
    drop(writers);
    // From page cache, as on a node where the files were just written.
    let seen = Arc::new(Seen::default());
    let url = receiver(seen.clone(), false);
    let started = Instant::now();
    let (child, _) = start_loglet(root, api, &url, a);
    let pid = child.id();
    wait_for("every line", || seen.distinct() >= lines);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid);
    let (hwm, _) = rss_mib(pid);
    stop(child);
    let gib = bytes as f64 / (1u64 << 30) as f64;
    println!("catch-up: {mib} MiB, {lines} lines in {files} files (one in 2000 over 16 KiB)");
    println!(
        "  time {elapsed:.2} s | {:.0} lines/s | {:.1} MiB/s | CPU {cpu:.2} s = {:.2} CPU-s/GiB | peak RSS {hwm:.1} MiB | lost {} | damaged {} | duplicates {}",
        lines as f64 / elapsed,
        bytes as f64 / (1 << 20) as f64 / elapsed,
        cpu / gib,
        lines - seen.distinct().min(lines),
        seen.damaged.load(Ordering::Relaxed),
        seen.duplicates.load(Ordering::Relaxed),
    );
}

fn steady(api: &FakeApi, a: &Args) {
    let (rate, secs) = (a.steady_rate, a.steady_secs);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let files = PODS * CONTAINERS.len();
    let mut handles: Vec<File> = (0..files)
        .map(|i| {
            let path = file_path(root, i / 2, CONTAINERS[i % 2]);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            File::create(path).unwrap()
        })
        .collect();
    let seen = Arc::new(Seen::default());
    let url = receiver(seen.clone(), true);
    let (child, _) = start_loglet(root, api, &url, a);
    let pid = child.id();
    std::thread::sleep(Duration::from_secs(2));
    let cpu0 = cpu_seconds(pid);
    let started = Instant::now();
    let tick = Duration::from_millis(10);
    let per_tick = rate / 100;
    let mut seq = 0u64;
    let mut body = Vec::new();
    let mut buf = Vec::new();
    for n in 0..secs * 100 {
        // Each file gets its share of the tick's lines in one write, as a runtime flushes.
        for (f, h) in handles.iter_mut().enumerate() {
            write_share(h, f, files, per_tick, &mut seq, &mut body, &mut buf);
        }
        let next = started + tick * (n as u32 + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    wait_for("every line", || seen.distinct() >= seq);
    let (hwm, rss) = rss_mib(pid);
    stop(child);
    let mut lags = std::mem::take(&mut *seen.lags_us.lock().unwrap());
    lags.sort_unstable();
    let pct =
        |p: f64| lags.get(((lags.len() as f64 * p) as usize).min(lags.len().saturating_sub(1)));
    let ms = |v: Option<&u32>| v.map_or(f64::NAN, |&us| f64::from(us) / 1000.0);
    println!("steady: {rate} lines/s for {secs} s into {files} files");
    println!(
        "  CPU {:.1} % of a core | RSS {rss:.1} MiB (peak {hwm:.1}) | lag p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms | lost {} | damaged {} | duplicates {}",
        cpu / wall * 100.0,
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(lags.last()),
        seq - seen.distinct().min(seq),
        seen.damaged.load(Ordering::Relaxed),
        seen.duplicates.load(Ordering::Relaxed),
    );
}

/// `RssAnon` and `RssFile` of a live process, MiB: its own memory, and pages of files it maps
/// (the binary, shared libraries).
fn idle(api: &FakeApi, a: &Args) {
    let (pods, secs) = (a.idle_pods, a.idle_secs);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let files = pods * CONTAINERS.len();
    let (mut lines, mut bytes) = (0u64, 0u64);
    let mut body = Vec::new();
    let t0 = now_ns() - 60_000_000_000;
    for i in 0..files {
        let path = file_path(root, i / 2, CONTAINERS[i % 2]);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut w = BufWriter::new(File::create(path).unwrap());
        for _ in 0..IDLE_LINES_PER_FILE {
            body.clear();
            write!(
                body,
                "seq={lines};t=0;level=info msg=\"cache refreshed\" file={i} entries={};eol",
                lines % 977
            )
            .unwrap();
            bytes += write_cri(&mut w, t0 + lines as i64 * 1000, &body);
            lines += 1;
        }
        w.flush().unwrap();
    }
    let seen = Arc::new(Seen::default());
    let url = receiver(seen.clone(), false);
    let (child, _) = start_loglet(root, api, &url, a);
    let pid = child.id();
    wait_for("every line", || seen.distinct() >= lines);
    let (hwm_shipped, rss_shipped) = rss_mib(pid);
    let records0 = seen.records.load(Ordering::Relaxed);
    let cpu0 = cpu_seconds(pid);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = cpu_seconds(pid) - cpu0;
    let wall = started.elapsed().as_secs_f64();
    let (hwm, rss) = rss_mib(pid);
    let [anon, file] = status_mib(pid, ["RssAnon:", "RssFile:"]);
    let during_idle = seen.records.load(Ordering::Relaxed) - records0;
    stop(child);
    println!(
        "idle: {pods} Pods x {} containers ({files} files), {lines} lines ({:.0} KiB) shipped, then {secs} s idle",
        CONTAINERS.len(),
        bytes as f64 / 1024.0
    );
    println!(
        "  RSS {rss:.1} MiB (anon {anon:.1}, file {file:.1}) | peak {hwm:.1} MiB | when shipped: RSS {rss_shipped:.1}, peak {hwm_shipped:.1} | CPU {:.2} % of a core idle | lost {} | damaged {} | duplicates {} | records while idle {during_idle}",
        cpu / wall * 100.0,
        lines - seen.distinct().min(lines),
        seen.damaged.load(Ordering::Relaxed),
        seen.duplicates.load(Ordering::Relaxed),
    );
}

/// Open descriptors of a live process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Rotates like the kubelet (containerLogMaxSize, containerLogMaxFiles 5): `0.log` is renamed
/// to `0.log.<time>`, the previous rotated file is gzipped, and past four rotated files the
/// oldest is deleted. Returns the new `0.log`.
fn kubelet_rotate(path: &Path, n: u64) -> File {
    let dir = path.parent().unwrap();
    let rotated = dir.join(format!("0.log.20261206-{n:06}"));
    std::fs::rename(path, &rotated).unwrap();
    let mut old: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p != &rotated && p.file_name().is_some_and(|n| n != "0.log"))
        .collect();
    old.sort();
    for p in &old {
        if p.extension().is_none_or(|e| e != "gz") {
            // As the kubelet: compressed under a temporary name, renamed, the original unlinked.
            let tmp = PathBuf::from(format!("{}.tmp", p.display()));
            let mut enc = flate2::write::GzEncoder::new(
                File::create(&tmp).unwrap(),
                flate2::Compression::default(),
            );
            std::io::copy(&mut File::open(p).unwrap(), &mut enc).unwrap();
            enc.finish().unwrap();
            std::fs::rename(&tmp, format!("{}.gz", p.display())).unwrap();
            std::fs::remove_file(p).unwrap();
        }
    }
    let mut rotated_files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n != "0.log"))
        .collect();
    rotated_files.sort();
    while rotated_files.len() > 4 {
        std::fs::remove_file(rotated_files.remove(0)).unwrap();
    }
    File::create(path).unwrap()
}

fn soak(api: &FakeApi, a: &Args) {
    const SAMPLE: Duration = Duration::from_secs(30);
    let (rate, secs, rotate_bytes) = (a.soak_rate, a.soak_secs, a.rotate_kib << 10);
    let outage = a.outage_secs.min(secs);
    let outage_from = Duration::from_secs((secs - outage) / 2);
    let outage_to = outage_from + Duration::from_secs(outage);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let files = PODS * CONTAINERS.len();
    let paths: Vec<PathBuf> = (0..files)
        .map(|i| file_path(root, i / 2, CONTAINERS[i % 2]))
        .collect();
    let mut handles: Vec<(File, u64)> = paths
        .iter()
        .map(|path| {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            (File::create(path).unwrap(), 0)
        })
        .collect();
    let seen = Arc::new(Seen::default());
    let url = receiver(seen.clone(), false);
    let (child, metrics) = start_loglet(root, api, &url, a);
    let pid = child.id();
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "soak: {rate} lines/s for {secs} s into {files} files, rotated at {} KiB; receiver down from {} s to {} s",
        a.rotate_kib,
        outage_from.as_secs(),
        outage_to.as_secs()
    );
    println!(
        "  time s | RSS MiB | peak MiB | fds | lines written | lines received | unread MiB | CPU s"
    );
    let started = Instant::now();
    let tick = Duration::from_millis(10);
    let per_tick = rate / 100;
    let (mut seq, mut rotations) = (0u64, 0u64);
    let mut samples: Vec<(u64, f64, usize)> = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut body = Vec::new();
    let mut buf = Vec::new();
    for n in 0..secs * 100 {
        let at = started.elapsed();
        seen.down
            .store(at >= outage_from && at < outage_to, Ordering::Relaxed);
        for (f, (h, size)) in handles.iter_mut().enumerate() {
            *size += write_share(h, f, files, per_tick, &mut seq, &mut body, &mut buf);
            if *size >= rotate_bytes {
                rotations += 1;
                *h = kubelet_rotate(&paths[f], rotations);
                *size = 0;
            }
        }
        if at >= next_sample {
            let (hwm, rss) = rss_mib(pid);
            let fds = open_fds(pid);
            println!(
                "  {:6} | {rss:7.1} | {hwm:8.1} | {fds:3} | {seq:13} | {:14} | {:10.1} | {:.1}",
                at.as_secs(),
                seen.distinct(),
                metric(metrics, "loglet_unread_bytes") / f64::from(1 << 20),
                cpu_seconds(pid)
            );
            samples.push((at.as_secs(), rss, fds));
            next_sample += SAMPLE;
        }
        let next = started + tick * (n as u32 + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    seen.down.store(false, Ordering::Relaxed);
    // Every line, or until the count stops moving for a minute (then the rest is lost).
    let (mut last, mut still) = (0, Instant::now());
    while seen.distinct() < seq && still.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
        if seen.distinct() != last {
            (last, still) = (seen.distinct(), Instant::now());
        }
    }
    let (hwm, rss) = rss_mib(pid);
    let fds = open_fds(pid);
    println!(
        "  loglet: lost bytes {} | rotations seen {} | files discovered {} | read errors {} | malformed lines {} | records dropped {}",
        metric(metrics, "loglet_lost_bytes_total"),
        metric(metrics, "loglet_rotations_total"),
        metric(metrics, "loglet_files_discovered_total"),
        metric(metrics, "loglet_read_errors_total"),
        metric(metrics, "loglet_lines_malformed_total"),
        metric(metrics, "loglet_sink_dropped_records_total"),
    );
    stop(child);
    // Flat: the last quarter's RSS against the first quarter's (after a warm-up).
    let warm = 60.min(secs / 8);
    let quarter = |from: f64, to: f64| {
        let span: Vec<&(u64, f64, usize)> = samples
            .iter()
            .filter(|s| {
                s.0 >= warm && (s.0 as f64) >= from * secs as f64 && (s.0 as f64) < to * secs as f64
            })
            .collect();
        let max_rss = span.iter().map(|s| s.1).fold(f64::NAN, f64::max);
        let max_fds = span.iter().map(|s| s.2).max().unwrap_or(0);
        (max_rss, max_fds)
    };
    let (first_rss, first_fds) = quarter(0.0, 0.25);
    let (last_rss, last_fds) = quarter(0.75, 1.0);
    println!(
        "  end: RSS {rss:.1} MiB (peak {hwm:.1}) | fds {fds} | max RSS first quarter {first_rss:.1} MiB, last quarter {last_rss:.1} MiB | max fds first quarter {first_fds}, last quarter {last_fds} | rotations {rotations} | lost {} | damaged {} | duplicates {}",
        seq - seen.distinct().min(seq),
        seen.damaged.load(Ordering::Relaxed),
        seen.duplicates.load(Ordering::Relaxed),
    );
}
