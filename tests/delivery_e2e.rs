//! End to end through the real binary: delivery to a real wire format (the fake Elasticsearch
//! of tests/common/backends.rs) through a backend outage.

#[path = "common/backends.rs"]
mod backends;
#[path = "common/loglet.rs"]
mod loglet;
#[path = "common/node.rs"]
mod node;

use std::collections::HashMap;
use std::time::Duration;

use backends::{Answer, Backend, Kind};
use loglet::{Loglet, config, wait_until};
use node::Node;

/// An Elasticsearch backend down (503) from the first request until `back_up`.
fn es_down() -> (tokio::runtime::Runtime, Backend) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let es = rt.block_on(Backend::start(Kind::Elasticsearch));
    es.script(std::iter::repeat_n(Answer::unavailable(), 1_000_000));
    (rt, es)
}

/// Starts loglet with the `es` sink (fast retries; `sink` and `request` add lines of YAML to
/// the sink and to its `request`) and waits until it has retried `retries` times.
fn start_against_down(
    node: &Node,
    es: &Backend,
    sink: &str,
    request: &str,
    retries: f64,
) -> Loglet {
    let sinks = format!(
        "  es:\n    type: elasticsearch\n    url: {}\n{sink}    request:\n{request}      retry_initial_backoff: 20ms\n      retry_max_backoff: 200ms\n",
        es.url
    );
    let l = Loglet::start(node.root(), &node.root().join("work"), &config("", &sinks));
    wait_until(Duration::from_secs(30), "retries", || {
        (l.metric("loglet_sink_retries_total{sink=\"es\"}") >= retries).then_some(())
    });
    l
}

/// Brings the backend back and waits until it has stored `n` documents.
fn back_up(es: &Backend, n: usize, timeout: Duration) -> Vec<backends::EsDoc> {
    es.clear_script();
    wait_until(timeout, "every line stored", || {
        let got = es.received();
        (got.es.len() >= n).then_some(got.es)
    })
}

#[test]
fn a_backend_answering_503_for_a_while_loses_nothing_and_memory_stays_flat() {
    let (_rt, es) = es_down();

    let node = Node::new();
    let mut web = node.container("shop", "web-0", "uid-web", "nginx");
    let mut api = node.container("pay", "api-0", "uid-api", "api");
    let mut want: Vec<String> = Vec::new();
    let mut write = |from: usize, to: usize, want: &mut Vec<String>| {
        for i in from..to {
            let m = format!("line {i} {}", "x".repeat(150 + i % 100));
            let c = if i % 3 == 0 { &mut api } else { &mut web };
            c.line(if i % 5 == 0 { "stderr" } else { "stdout" }, m.as_bytes());
            want.push(m);
        }
    };
    write(0, 10_000, &mut want);
    let l = start_against_down(&node, &es, "    compression: gzip\n", "", 5.0);
    let before = l.memory_kib("VmRSS");
    // 40 MiB more while the backend is down: the files hold it, not loglet's memory.
    write(10_000, 200_000, &mut want);
    wait_until(
        Duration::from_secs(30),
        "reading to pause on a full queue",
        || (l.metric("loglet_unread_bytes") > 30.0 * 1024.0 * 1024.0).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(1));
    let during = l.memory_kib("VmRSS");
    eprintln!("rss before {before} KiB, during {during} KiB");
    assert!(
        during <= before + 16 * 1024,
        "memory grew from {before} KiB to {during} KiB during the outage"
    );
    assert!(l.metric("loglet_batches_queued") <= 2.0);
    assert_eq!(es.received().es.len(), 0, "nothing is stored while down");

    let stored = back_up(&es, want.len(), Duration::from_secs(120));
    let mut times: HashMap<&str, usize> = HashMap::new();
    for d in &stored {
        *times
            .entry(d.doc["message"].as_str().expect("message"))
            .or_default() += 1;
    }
    let missing = want
        .iter()
        .filter(|w| !times.contains_key(w.as_str()))
        .count();
    let repeated = times.values().filter(|&&n| n > 1).count();
    assert_eq!((missing, repeated), (0, 0), "lost or duplicated lines");
    assert_eq!(
        l.metric("loglet_sink_dropped_records_total{reason=\"rejected\",sink=\"es\"}"),
        0.0
    );
    // Nothing the catch-up used is kept: no step is left behind in RSS. (At this scale glibc's
    // heap passes too; the soak, docs/performance.md, shows the allocator's part.)
    let limit = before + 4 * 1024;
    let after = wait_until(
        Duration::from_secs(20),
        &format!("RSS back under {limit} KiB after the catch-up (before the outage: {before} KiB)"),
        || {
            let now = l.memory_kib("VmRSS");
            (now <= limit).then_some(now)
        },
    );
    eprintln!("rss after the catch-up {after} KiB");
    assert_eq!(l.stop(), 0);
}

/// Files the kubelet creates, fills, rotates and compresses while the backend is down are read
/// from their `.gz` once it is back: a file found empty (as every new `0.log` is at first) is
/// recognised in its compressed copy all the same.
#[test]
fn files_rotated_and_compressed_during_an_outage_arrive_in_order() {
    let (_rt, es) = es_down();
    let node = Node::new();
    let mut web = node.container("shop", "web-0", "uid-web", "nginx");
    let mut want: Vec<String> = Vec::new();
    let mut n = 0;
    let mut write = |c: &mut node::Container, lines: usize, want: &mut Vec<String>| {
        for _ in 0..lines {
            let m = format!("line {n} {}", "y".repeat(100 + n % 50));
            c.line("stdout", m.as_bytes());
            want.push(m);
            n += 1;
        }
    };
    write(&mut web, 3_000, &mut want);
    // One request at a time, so that order across the files is kept.
    let l = start_against_down(&node, &es, "", "      concurrency: 1\n", 3.0);
    // Three generations, each created empty while reading is paused, then filled, rotated and
    // compressed as the kubelet does (the rotated file before the last one goes to `.gz`).
    let mut rotated = Vec::new();
    for _ in 0..3 {
        rotated.push(web.rotate());
        std::thread::sleep(Duration::from_millis(700));
        write(&mut web, 2_000, &mut want);
        if rotated.len() >= 2 {
            web.gzip(&rotated[rotated.len() - 2]);
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    assert_eq!(es.received().es.len(), 0, "nothing is stored while down");
    let stored = back_up(&es, want.len(), Duration::from_secs(60));
    let got: Vec<&str> = stored
        .iter()
        .map(|d| d.doc["message"].as_str().expect("message"))
        .collect();
    assert_eq!(got.len(), want.len(), "lost or repeated lines");
    assert!(
        got.iter().zip(&want).all(|(g, w)| g == w),
        "out of order: the first difference at {:?}",
        got.iter().zip(&want).position(|(g, w)| g != w)
    );
    assert_eq!(l.metric("loglet_lost_bytes_total"), 0.0);
    assert_eq!(l.stop(), 0);
}
