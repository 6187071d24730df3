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

#[test]
fn a_backend_answering_503_for_a_while_loses_nothing_and_memory_stays_flat() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let es = rt.block_on(Backend::start(Kind::Elasticsearch));
    // Down from the first request until the test says otherwise.
    es.script(std::iter::repeat_n(Answer::unavailable(), 1_000_000));

    let node = Node::new();
    let work = node.root().join("work");
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
    let sinks = format!(
        "  es:\n    type: elasticsearch\n    url: {}\n    compression: gzip\n    request:\n      retry_initial_backoff: 20ms\n      retry_max_backoff: 200ms\n",
        es.url
    );
    let l = Loglet::start(node.root(), &work, &config("", &sinks));
    wait_until(Duration::from_secs(30), "retries", || {
        (l.metric("loglet_sink_retries_total{sink=\"es\"}") >= 5.0).then_some(())
    });
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

    es.clear_script();
    let stored = wait_until(Duration::from_secs(120), "every line stored", || {
        let got = es.received();
        (got.es.len() >= want.len()).then_some(got.es)
    });
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
    assert_eq!(l.stop(), 0);
}
