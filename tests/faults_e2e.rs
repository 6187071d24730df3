//! Faults end to end through the real binary, each bounded in time: SIGKILL again and again
//! during rotation and compression, a backend flapping between 503, resets, timeouts and slow
//! answers, a checkpoint that cannot be written, the open-file limit, and log paths replaced by
//! a FIFO or a directory. The backend is the fake Elasticsearch of tests/common/backends.rs
//! (it survives loglet's restarts); the log files are a kubelet tree on disk.

#[path = "common/backends.rs"]
mod backends;
#[path = "common/loglet.rs"]
mod loglet;
#[path = "common/node.rs"]
mod node;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use backends::{Answer, Backend, Kind};
use loglet::{Loglet, config, wait_until};
use node::Node;

/// Retries soon, so that a test does not wait for the default backoff.
const QUICK_RETRIES: &str =
    "    request:\n      retry_initial_backoff: 20ms\n      retry_max_backoff: 200ms\n";

fn es_sink(es: &Backend, settings: &str) -> String {
    format!(
        "  es:\n    type: elasticsearch\n    url: {}\n{settings}",
        es.url
    )
}

/// The records a sink dropped, whatever the reason.
fn dropped(l: &Loglet) -> f64 {
    let (_, body) = l.get("/metrics");
    body.lines()
        .filter(|line| line.starts_with("loglet_sink_dropped_records_total{"))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// How many times each message was stored.
fn stored(es: &Backend) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for d in es.received().es {
        *n.entry(d.doc["message"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    n
}

fn wait_for_all(es: &Backend, want: &[String], within: Duration) -> HashMap<String, usize> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let got = stored(es);
        let missing: Vec<&String> = want.iter().filter(|w| !got.contains_key(*w)).collect();
        if missing.is_empty() {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {} lines never stored, the first: {:?}",
            missing.len(),
            want.len(),
            &missing[..missing.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigkill_again_and_again_during_rotation_and_compression_loses_no_line() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let es = rt.block_on(Backend::start(Kind::Elasticsearch));
    let node = Node::new();
    let work = node.root().join("work");
    let cfg = config("", &es_sink(&es, QUICK_RETRIES));
    let mut c = node.container("shop", "web-0", "uid-web", "nginx");
    let mut want = Vec::new();
    let mut rotated = Vec::new();
    let mut l = Loglet::start(node.root(), &work, &cfg);
    for round in 0..8 {
        for i in 0..2_500 {
            let m = format!("round {round} line {i} {}", "k".repeat(i % 200));
            c.line("stdout", m.as_bytes());
            want.push(m);
            if i % 1_000 == 999 {
                rotated.push(c.rotate());
            }
            // The kubelet compresses all rotated files but the newest.
            if i % 500 == 0 {
                while rotated.len() > 1 {
                    let old = rotated.remove(0);
                    c.gzip(&old);
                }
            }
        }
        // Killed at a different point of its work each round.
        std::thread::sleep(Duration::from_millis(50 + 120 * (round % 4)));
        l.kill();
        l = Loglet::start(node.root(), &work, &cfg);
    }
    let got = wait_for_all(&es, &want, Duration::from_secs(90));
    let copies: usize = got.values().sum();
    assert_eq!(got.len(), want.len(), "nothing but what was written");
    // Only what was in flight at a kill comes twice: far less than a round.
    assert!(
        copies - want.len() < 8 * 2_500,
        "{} duplicates for 8 kills",
        copies - want.len()
    );
    assert_eq!(l.stop(), 0);
}

#[test]
fn a_backend_flapping_between_503_resets_timeouts_and_slow_answers_loses_no_line() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let es = rt.block_on(Backend::start(Kind::Elasticsearch));
    let mut script = Vec::new();
    for i in 0..40 {
        script.push(match i % 5 {
            0 => Answer::unavailable(),
            1 => Answer::Reset,
            // Longer than the request timeout: abandoned and sent again.
            2 => Answer::Slow(Duration::from_millis(1_500)),
            3 => Answer::too_many(Some(0)),
            _ => Answer::Slow(Duration::from_millis(200)),
        });
    }
    es.script(script);
    let node = Node::new();
    let work = node.root().join("work");
    let mut c = node.container("shop", "web-0", "uid-web", "nginx");
    let mut want = Vec::new();
    for i in 0..20_000 {
        let m = format!("flap {i} {}", "f".repeat(i % 150));
        c.line(if i % 4 == 0 { "stderr" } else { "stdout" }, m.as_bytes());
        want.push(m);
    }
    let sinks = es_sink(
        &es,
        "    batch:\n      max_records: 500\n    request:\n      timeout: 500ms\n      retry_initial_backoff: 20ms\n      retry_max_backoff: 200ms\n",
    );
    let l = Loglet::start(node.root(), &work, &config("", &sinks));
    let got = wait_for_all(&es, &want, Duration::from_secs(90));
    assert_eq!(got.len(), want.len());
    assert!(l.metric("loglet_sink_retries_total{sink=\"es\"}") >= 20.0);
    assert_eq!(dropped(&l), 0.0, "a transient failure never drops");
    assert_eq!(l.stop(), 0);
}

#[test]
fn a_checkpoint_that_cannot_be_written_keeps_shipping_reports_not_ready_and_recovers() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let es = rt.block_on(Backend::start(Kind::Elasticsearch));
    let node = Node::new();
    let work = node.root().join("work");
    let state = node.root().join("var/lib/loglet");
    let mut c = node.container("shop", "web-0", "uid-web", "nginx");
    c.line("stdout", b"before");
    let l = Loglet::start(
        node.root(),
        &work,
        &config("", &es_sink(&es, QUICK_RETRIES)),
    );
    wait_for_all(&es, &["before".to_string()], Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let good = std::fs::read(state.join("checkpoints.json")).unwrap();
    // As a full or broken disk does: the write of the new checkpoint fails (also as root).
    std::fs::create_dir(state.join("checkpoints.json.tmp")).unwrap();
    let during: Vec<String> = (0..500).map(|i| format!("during {i}")).collect();
    for m in &during {
        c.line("stdout", m.as_bytes());
    }
    wait_for_all(&es, &during, Duration::from_secs(30));
    wait_until(Duration::from_secs(20), "the failure reported", || {
        (l.metric("loglet_checkpoint_errors_total") >= 1.0 && l.get("/readyz").0 == 503)
            .then_some(())
    });
    // The last good checkpoint is intact, never half written.
    let now = std::fs::read(state.join("checkpoints.json")).unwrap();
    serde_json::from_slice::<serde_json::Value>(&now).expect("the checkpoint is valid JSON");
    assert_eq!(
        now, good,
        "the checkpoint stays as it was while writes fail"
    );
    assert_eq!(l.get("/healthz").0, 200, "alive: shipping goes on");
    std::fs::remove_dir(state.join("checkpoints.json.tmp")).unwrap();
    wait_until(Duration::from_secs(20), "ready again", || {
        (l.get("/readyz").0 == 200).then_some(())
    });
    assert_ne!(
        std::fs::read(state.join("checkpoints.json")).unwrap(),
        good,
        "the checkpoint moved on"
    );
    assert_eq!(l.stop(), 0);
}

#[test]
fn under_an_open_file_limit_of_64_every_container_of_200_is_read() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let es = rt.block_on(Backend::start(Kind::Elasticsearch));
    let node = Node::new();
    let work = node.root().join("work");
    let mut want = Vec::new();
    let mut containers: Vec<_> = (0..200)
        .map(|p| node.container("busy", &format!("pod-{p}"), &format!("uid-{p}"), "app"))
        .collect();
    for (p, c) in containers.iter_mut().enumerate() {
        for i in 0..20 {
            let m = format!("pod {p} line {i}");
            c.line("stdout", m.as_bytes());
            want.push(m);
        }
    }
    let l = Loglet::start_under(
        &["prlimit", "--nofile=64", "--"],
        node.root(),
        &work,
        &config("", &es_sink(&es, QUICK_RETRIES)),
        &[],
    );
    let got = wait_for_all(&es, &want, Duration::from_secs(60));
    // And lines written later to files that were closed to make room arrive too.
    let mut later = Vec::new();
    for (p, c) in containers.iter_mut().enumerate() {
        let m = format!("pod {p} later");
        c.line("stdout", m.as_bytes());
        later.push(m);
    }
    let got_later = wait_for_all(&es, &later, Duration::from_secs(60));
    assert_eq!(got.len(), want.len());
    assert!(got_later.values().all(|n| *n == 1));
    assert_eq!(l.get("/healthz").0, 200);
    assert_eq!(l.stop(), 0);
}

#[test]
fn a_log_path_replaced_by_a_fifo_or_a_directory_is_skipped_and_the_rest_arrives() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let es = rt.block_on(Backend::start(Kind::Elasticsearch));
    let node = Node::new();
    let work = node.root().join("work");
    let mut good = node.container("shop", "web-0", "uid-web", "nginx");
    let fifo = node.container("shop", "odd-0", "uid-odd", "pipe");
    let dir = node.container("shop", "odd-1", "uid-dir", "dir");
    good.line("stdout", b"first");
    let l = Loglet::start(
        node.root(),
        &work,
        &config("", &es_sink(&es, QUICK_RETRIES)),
    );
    wait_for_all(&es, &["first".to_string()], Duration::from_secs(30));
    // A FIFO would block a reader that opened it; a directory cannot be read as lines.
    let fifo_path = fifo.path();
    let _ = std::fs::remove_file(&fifo_path);
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo_path)
        .status()
        .unwrap();
    assert!(made.success());
    let dir_path = dir.path();
    let _ = std::fs::remove_file(&dir_path);
    std::fs::create_dir(&dir_path).unwrap();
    let later: Vec<String> = (0..100).map(|i| format!("later {i}")).collect();
    for m in &later {
        good.line("stdout", m.as_bytes());
    }
    wait_for_all(&es, &later, Duration::from_secs(30));
    assert_eq!(l.get("/healthz").0, 200);
    assert_eq!(l.stop(), 0, "and it stops: nothing hangs on the FIFO");
    assert!(Path::new(&fifo_path).exists());
}

/// Starts loglet in a user namespace of its own (root in it maps to root outside,
/// so it reads the same files) whose inotify limit `/proc/sys/user/<limit>` is `value`: the
/// limit is per user namespace, so the test changes nothing outside.
fn start_with_inotify_limit(node: &Node, es: &Backend, limit: &str, value: u32) -> Loglet {
    let script = format!("echo {value} > /proc/sys/user/{limit} && exec \"$0\" \"$@\"");
    Loglet::start_under(
        &["unshare", "--user", "--map-root-user", "sh", "-c", &script],
        node.root(),
        &node.root().join("work"),
        &config(
            "logs:\n  rescan_interval: 1s\n",
            &es_sink(es, QUICK_RETRIES),
        ),
        &[],
    )
}

#[test]
fn past_the_inotify_watch_limit_it_polls_and_every_line_arrives() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let es = rt.block_on(Backend::start(Kind::Elasticsearch));
    let node = Node::new();
    let mut first = node.container("busy", "pod-0", "uid-0", "app");
    first.line("stdout", b"before the limit");
    let l = start_with_inotify_limit(&node, &es, "max_inotify_watches", 16);
    wait_for_all(
        &es,
        &["before the limit".to_string()],
        Duration::from_secs(30),
    );
    assert_eq!(l.metric("loglet_inotify_fallback"), 0.0, "{}", l.log());
    // 30 more Pods need more watches than the limit leaves.
    let mut want = vec!["before the limit".to_string()];
    let mut containers: Vec<_> = (1..=30)
        .map(|p| node.container("busy", &format!("pod-{p}"), &format!("uid-{p}"), "app"))
        .collect();
    for (p, c) in containers.iter_mut().enumerate() {
        for i in 0..5 {
            let m = format!("pod {p} line {i}");
            c.line("stdout", m.as_bytes());
            want.push(m);
        }
    }
    wait_for_all(&es, &want, Duration::from_secs(60));
    assert_eq!(l.metric("loglet_inotify_fallback"), 1.0);
    assert!(l.log().contains("inotify unusable"), "{}", l.log());
    // Polled from now on: later lines, to old and new files, arrive too.
    first.line("stdout", b"after the limit");
    want.push("after the limit".to_string());
    for (p, c) in containers.iter_mut().enumerate() {
        let m = format!("pod {p} later");
        c.line("stdout", m.as_bytes());
        want.push(m);
    }
    let got = wait_for_all(&es, &want, Duration::from_secs(60));
    assert!(got.values().all(|n| *n == 1), "a line was stored twice");
    assert_eq!(l.get("/readyz").0, 200);
    assert_eq!(l.stop(), 0);
}

#[test]
fn without_any_inotify_instance_left_it_polls_from_the_start() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let es = rt.block_on(Backend::start(Kind::Elasticsearch));
    let node = Node::new();
    let mut c = node.container("busy", "pod-0", "uid-0", "app");
    c.line("stdout", b"at start");
    let l = start_with_inotify_limit(&node, &es, "max_inotify_instances", 0);
    wait_for_all(&es, &["at start".to_string()], Duration::from_secs(30));
    assert_eq!(l.metric("loglet_inotify_fallback"), 1.0);
    let mut late = node.container("busy", "pod-1", "uid-1", "app");
    c.line("stdout", b"appended");
    late.line("stdout", b"in a new Pod");
    let got = wait_for_all(
        &es,
        &["appended".to_string(), "in a new Pod".to_string()],
        Duration::from_secs(30),
    );
    assert!(got.values().all(|n| *n == 1));
    assert_eq!(l.stop(), 0);
}

/// libfaketime, which `.ci/run` installs (Debian's `faketime`).
fn libfaketime() -> String {
    glob::glob("/usr/lib/*/faketime/libfaketimeMT.so.1")
        .unwrap()
        .filter_map(Result::ok)
        .next()
        .expect("libfaketime is not installed: apt-get install faketime (.ci/run does)")
        .display()
        .to_string()
}

#[test]
fn a_wall_clock_jump_back_and_forward_loses_and_repeats_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let es = rt.block_on(Backend::start(Kind::Elasticsearch));
    let node = Node::new();
    let work = node.root().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // The wall clock loglet sees, changed while it runs (an NTP step); the monotonic clock,
    // as on a real node, does not jump.
    let clock = work.join("clock");
    std::fs::write(&clock, "+0").unwrap();
    let lib = libfaketime();
    let clock_path = clock.display().to_string();
    let env = [
        ("LD_PRELOAD", lib.as_str()),
        ("FAKETIME_TIMESTAMP_FILE", clock_path.as_str()),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let cfg = config("", &es_sink(&es, QUICK_RETRIES));
    let mut c = node.container("shop", "web-0", "uid-web", "nginx");
    let mut want = Vec::new();
    let write = |c: &mut node::Container, tag: &str, want: &mut Vec<String>| {
        for i in 0..50 {
            let m = format!("{tag} {i}");
            c.line("stdout", m.as_bytes());
            want.push(m);
        }
    };
    write(&mut c, "on time", &mut want);
    let l = Loglet::start_with_env(node.root(), &work, &cfg, &env);
    wait_for_all(&es, &want, Duration::from_secs(30));
    std::fs::write(&clock, "-2d").unwrap();
    write(&mut c, "two days back", &mut want);
    let rotated = c.rotate();
    write(&mut c, "rotated two days back", &mut want);
    c.gzip(&rotated);
    wait_for_all(&es, &want, Duration::from_secs(30));
    std::fs::write(&clock, "+30d").unwrap();
    write(&mut c, "a month ahead", &mut want);
    wait_for_all(&es, &want, Duration::from_secs(30));
    assert_eq!(l.get("/readyz").0, 200);
    assert_eq!(l.stop(), 0);
    // A restart under the jumped clock resumes from its checkpoints.
    write(&mut c, "while stopped", &mut want);
    let l = Loglet::start_with_env(node.root(), &work, &cfg, &env);
    let real_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        l.metric("loglet_start_time_seconds") > real_now + 29.0 * 86_400.0,
        "loglet did not run under the jumped clock"
    );
    std::fs::write(&clock, "+0").unwrap();
    write(&mut c, "back on time", &mut want);
    let got = wait_for_all(&es, &want, Duration::from_secs(30));
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    assert_eq!(got.len(), want.len());
    assert!(
        l.metric("loglet_oldest_unacknowledged_seconds") >= 0.0,
        "an age went negative"
    );
    assert_eq!(l.stop(), 0);
}

/// Counts `\n` in a file without holding it.
fn count_lines(path: &Path) -> usize {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0;
    loop {
        let got = f.read(&mut buf).unwrap();
        if got == 0 {
            return n;
        }
        n += buf[..got].iter().filter(|b| **b == b'\n').count();
    }
}

/// `LOGLET_GARBAGE_MIB` (default 32) of random bytes where a CRI log should be, between two good
/// lines: each garbage line is counted as malformed and shipped as it is (nothing is lost), the
/// line after it arrives whole, and memory stays bounded. Run the gigabyte with
/// `LOGLET_GARBAGE_MIB=1024 cargo test --release --test faults_e2e garbage`.
#[test]
fn binary_garbage_in_a_log_is_counted_shipped_and_the_line_after_it_arrives() {
    let mib: usize = std::env::var("LOGLET_GARBAGE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let node = Node::new();
    let work = node.root().join("work");
    let mut c = node.container("ns", "junk-0", "uid-junk", "app");
    c.line("stdout", b"before the garbage");
    // xorshift: reproducible, and every byte value, newlines about one in 256.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut lines = 0usize;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for b in block.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 24) as u8;
        }
        lines += block.iter().filter(|b| **b == b'\n').count();
        c.raw(&block);
    }
    c.raw(b"\n");
    lines += 1;
    c.line("stdout", b"after the garbage");
    let l = Loglet::start(
        node.root(),
        &work,
        &config("", "  out:\n    type: stdout\n"),
    );
    let out = work.join("stdout.ndjson");
    wait_until(
        Duration::from_secs(600),
        "the line after the garbage",
        || {
            let malformed = l.metric("loglet_lines_malformed_total{format=\"cri\"}");
            (malformed as usize >= lines && count_lines(&out) >= lines + 2).then_some(())
        },
    );
    assert_eq!(
        l.metric("loglet_lines_malformed_total{format=\"cri\"}") as usize,
        lines
    );
    let peak_kib = l.memory_kib("VmHWM");
    assert_eq!(l.get("/healthz").0, 200);
    assert_eq!(l.stop(), 0);
    assert_eq!(count_lines(&out), lines + 2, "one record per line");
    let text = std::fs::read(&out).unwrap();
    let tail = &text[text.len().saturating_sub(4096)..];
    assert!(
        String::from_utf8_lossy(tail).contains("\"message\":\"after the garbage\""),
        "the last record is the good line"
    );
    assert!(peak_kib < 96 << 10, "peak RSS {peak_kib} KiB");
}

/// Waits until checkpoint writes fail and readiness says so, checks that the last good
/// checkpoint is intact, and that lines keep arriving meanwhile.
fn ships_while_checkpoints_fail(
    l: &Loglet,
    es: &Backend,
    c: &mut node::Container,
    checkpoint: &Path,
    tag: &str,
) -> Vec<u8> {
    let errors = l.metric("loglet_checkpoint_errors_total");
    let good = std::fs::read(checkpoint).unwrap();
    let during: Vec<String> = (0..200).map(|i| format!("{tag} {i}")).collect();
    for m in &during {
        c.line("stdout", m.as_bytes());
    }
    wait_for_all(es, &during, Duration::from_secs(30));
    wait_until(Duration::from_secs(20), "the failure reported", || {
        (l.metric("loglet_checkpoint_errors_total") > errors && l.get("/readyz").0 == 503)
            .then_some(())
    });
    let now = std::fs::read(checkpoint).unwrap();
    serde_json::from_slice::<serde_json::Value>(&now).expect("the checkpoint is valid JSON");
    assert_eq!(
        now, good,
        "the checkpoint stays as it was while writes fail"
    );
    assert_eq!(l.get("/healthz").0, 200, "alive: shipping goes on");
    good
}

#[test]
fn a_state_directory_full_then_read_only_keeps_shipping_and_recovers() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let es = rt.block_on(Backend::start(Kind::Elasticsearch));
    let node = Node::new();
    let work = node.root().join("work");
    let state = node.root().join("var/lib/loglet");
    std::fs::create_dir_all(&state).unwrap();
    let mut c = node.container("shop", "web-0", "uid-web", "nginx");
    c.line("stdout", b"before");
    // The state directory is a 1 MiB tmpfs in a mount namespace of loglet's own, so the test
    // can fill it and make it read-only without touching the host.
    let script = format!(
        "mount -t tmpfs -o size=1m loglet-state '{}' && exec \"$0\" \"$@\"",
        state.display()
    );
    let l = Loglet::start_under(
        &[
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            &script,
        ],
        node.root(),
        &work,
        &config("", &es_sink(&es, QUICK_RETRIES)),
        &[],
    );
    wait_for_all(&es, &["before".to_string()], Duration::from_secs(30));
    // loglet's view of its state directory.
    let inside = std::path::PathBuf::from(format!("/proc/{}/root{}", l.pid(), state.display()));
    let checkpoint = inside.join("checkpoints.json");
    wait_until(Duration::from_secs(20), "a first checkpoint", || {
        std::fs::metadata(&checkpoint).is_ok().then_some(())
    });

    // Full: ENOSPC on the next write.
    let filler = inside.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
    }
    let good = ships_while_checkpoints_fail(&l, &es, &mut c, &checkpoint, "disk full");
    std::fs::remove_file(&filler).unwrap();
    wait_until(Duration::from_secs(20), "ready again", || {
        (l.get("/readyz").0 == 200).then_some(())
    });
    assert_ne!(
        std::fs::read(&checkpoint).unwrap(),
        good,
        "the checkpoint moved on"
    );

    // Read-only: EROFS on the next write.
    let remount = |how: &str| {
        let pid = l.pid().to_string();
        let ok = std::process::Command::new("nsenter")
            .args([
                "-t",
                &pid,
                "-U",
                "-m",
                "--preserve-credentials",
                "mount",
                "-o",
            ])
            .arg(format!("remount,{how}"))
            .arg(&state)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {how}");
    };
    remount("ro");
    let good = ships_while_checkpoints_fail(&l, &es, &mut c, &checkpoint, "read-only");
    remount("rw");
    wait_until(Duration::from_secs(20), "ready again", || {
        (l.get("/readyz").0 == 200).then_some(())
    });
    assert_ne!(
        std::fs::read(&checkpoint).unwrap(),
        good,
        "the checkpoint moved on"
    );
    let stored = stored(&es);
    assert!(stored.values().all(|n| *n == 1), "a line was stored twice");
    assert_eq!(l.stop(), 0);
}
