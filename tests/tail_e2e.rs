//! End to end through the real binary: kubelet-style files on disk, loglet's stdout sink, its
//! checkpoints and its metrics.

#[path = "common/loglet.rs"]
mod loglet;
#[path = "common/node.rs"]
mod node;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use loglet::{Loglet, config, read_ndjson, wait_until};
use node::Node;
use serde_json::Value;

const STDOUT_SINK: &str = "  out:\n    type: stdout\n";

/// Messages per `namespace/pod/container`, in arrival order.
fn by_container(records: &[Value]) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in records {
        let k = &r["kubernetes"];
        let key = format!(
            "{}/{}/{}",
            k["namespace"].as_str().unwrap(),
            k["pod"].as_str().unwrap(),
            k["container"].as_str().unwrap()
        );
        m.entry(key)
            .or_default()
            .push(r["message"].as_str().unwrap().to_string());
    }
    m
}

fn wait_for_records(l: &Loglet, n: usize) -> Vec<Value> {
    wait_until(Duration::from_secs(30), &format!("{n} records"), || {
        let r = l.stdout_records();
        (r.len() >= n).then_some(r)
    })
}

#[test]
fn every_line_of_a_multi_pod_tree_arrives_once_with_stream_time_and_pod() {
    let node = Node::new();
    let mut web = node.container("shop", "web-7d9f-abcde", "uid-web", "nginx");
    let mut side = node.container("shop", "web-7d9f-abcde", "uid-web", "sidecar");
    let mut dns = node.container("kube-system", "coredns-1", "uid-dns", "coredns");
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut times = HashMap::new();
    let long: String = (0..100 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    for i in 0..200 {
        let msg = format!("{{\"level\":\"info\",\"msg\":\"request {i}\",\"path\":\"/cart\"}}");
        let t = web.line("stdout", msg.as_bytes());
        times.insert(msg.clone(), t);
        expected
            .entry("shop/web-7d9f-abcde/nginx".into())
            .or_default()
            .push(msg);
        let err = format!("warning {i}: disk almost full");
        side.line("stderr", err.as_bytes());
        expected
            .entry("shop/web-7d9f-abcde/sidecar".into())
            .or_default()
            .push(err);
        if i % 50 == 0 {
            let big = format!("{i}:{long}");
            web.line("stdout", big.as_bytes());
            expected
                .entry("shop/web-7d9f-abcde/nginx".into())
                .or_default()
                .push(big);
        }
    }
    // A Docker json-file container (dockershim / cri-dockerd), with a 16 KiB split line.
    let docker_dir = node.pods_dir().join("legacy_app-0_uid-app/app");
    std::fs::create_dir_all(&docker_dir).unwrap();
    let chunk = "x".repeat(16 * 1024);
    let docker = format!(
        "{{\"log\":\"hello from docker\\n\",\"stream\":\"stdout\",\"time\":\"2026-11-22T10:00:00.123456789Z\"}}\n\
         {{\"log\":\"{chunk}\",\"stream\":\"stderr\",\"time\":\"2026-11-22T10:00:01Z\"}}\n\
         {{\"log\":\"tail \\\"quoted\\\" \\u00e9\\n\",\"stream\":\"stderr\",\"time\":\"2026-11-22T10:00:01.5Z\"}}\n"
    );
    std::fs::write(docker_dir.join("0.log"), docker).unwrap();
    expected.insert(
        "legacy/app-0/app".into(),
        vec![
            "hello from docker".into(),
            format!("{chunk}tail \"quoted\" é"),
        ],
    );
    for i in 0..20 {
        let m = format!("[INFO] plugin/reload: Running configuration {i}");
        dns.line("stdout", m.as_bytes());
        expected
            .entry("kube-system/coredns-1/coredns".into())
            .or_default()
            .push(m);
    }
    let total: usize = expected.values().map(Vec::len).sum();

    let work = node.root().join("work");
    let l = Loglet::start(node.root(), &work, &config("", STDOUT_SINK));
    let records = wait_for_records(&l, total);
    std::thread::sleep(Duration::from_millis(300));
    let records_after = l.stdout_records();
    assert_eq!(records_after.len(), total, "no extra records");
    assert_eq!(by_container(&records), expected);

    // Stream, time and metadata from the path and the /var/log/containers link.
    let r = records
        .iter()
        .find(|r| {
            r["message"]
                .as_str()
                .unwrap()
                .starts_with("{\"level\":\"info\",\"msg\":\"request 7\"")
        })
        .unwrap();
    assert_eq!(r["stream"], "stdout");
    let k = &r["kubernetes"];
    assert_eq!(k["pod_uid"], "uid-web");
    assert_eq!(k["container_id"], web.id.as_str());
    assert_eq!(k["restart_count"], 0);
    assert_eq!(r["file"], web.host_path(node.root()));
    let msg = r["message"].as_str().unwrap();
    let want_ns = times[msg];
    let got = r["time"].as_str().unwrap();
    assert!(
        got.ends_with('Z') && got.starts_with("2026-11-18T"),
        "{got}"
    );
    let sidecar = records
        .iter()
        .find(|r| r["kubernetes"]["container"] == "sidecar")
        .unwrap();
    assert_eq!(sidecar["stream"], "stderr");
    let docker_rec = records
        .iter()
        .find(|r| r["message"] == "hello from docker")
        .unwrap();
    assert_eq!(docker_rec["time"], "2026-11-22T10:00:00.123456789Z");
    let _ = want_ns;

    assert!(l.metric("loglet_partial_lines_merged_total") >= 5.0);
    assert_eq!(
        l.metric("loglet_lines_malformed_total{format=\"cri\"}"),
        0.0
    );
    assert_eq!(l.get("/healthz").0, 200);
    assert_eq!(l.get("/readyz").0, 200);
    assert_eq!(l.stop(), 0);
}

#[test]
fn rotation_while_writing_loses_and_duplicates_nothing() {
    let node = Node::new();
    let work = node.root().join("work");
    let mut c = node.container("ns", "busy-0", "uid-busy", "app");
    c.line("stdout", b"first");
    let l = Loglet::start(node.root(), &work, &config("", STDOUT_SINK));
    let mut want = vec!["first".to_string()];
    let mut rotated = Vec::new();
    for i in 0..3000 {
        let m = format!("line {i}");
        c.line("stdout", m.as_bytes());
        want.push(m);
        if i % 400 == 399 {
            rotated.push(c.rotate());
        }
        // The kubelet compresses the previous rotated file at its next pass.
        if rotated.len() >= 2 && i % 400 == 200 {
            let old = rotated.remove(0);
            c.gzip(&old);
        }
    }
    let records = wait_for_records(&l, want.len());
    std::thread::sleep(Duration::from_millis(500));
    let got = by_container(&l.stdout_records());
    assert_eq!(got["ns/busy-0/app"], want);
    assert!(l.metric("loglet_rotations_total{kind=\"rename\"}") >= 1.0);
    assert_eq!(records.len(), want.len());
    assert_eq!(l.stop(), 0);
}

/// A rotation counts once, whether loglet saw the renamed file or only found it gone (renamed
/// and compressed between two of its scans, as a fast kubelet pass or a busy node does).
#[test]
fn a_rotation_compressed_at_once_is_counted_once() {
    let node = Node::new();
    let work = node.root().join("work");
    let mut c = node.container("ns", "quick-0", "uid-quick", "app");
    c.line("stdout", b"before");
    let l = Loglet::start(node.root(), &work, &config("", STDOUT_SINK));
    wait_for_records(&l, 1);
    let rotated = c.rotate();
    c.gzip(&rotated);
    c.line("stdout", b"after");
    wait_for_records(&l, 2);
    let got = by_container(&l.stdout_records());
    assert_eq!(got["ns/quick-0/app"], ["before", "after"]);
    wait_until(Duration::from_secs(10), "the rotation counted", || {
        (l.metric("loglet_rotations_total{kind=\"rename\"}") >= 1.0).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(l.metric("loglet_rotations_total{kind=\"rename\"}"), 1.0);
    assert_eq!(l.stop(), 0);
}

#[test]
fn lines_of_a_deleted_pod_directory_still_arrive() {
    let node = Node::new();
    let work = node.root().join("work");
    let mut job = node.container("batch", "job-x", "uid-job", "worker");
    job.line("stdout", b"starting");
    let l = Loglet::start(node.root(), &work, &config("", STDOUT_SINK));
    wait_for_records(&l, 1);
    for i in 0..500 {
        job.line("stdout", format!("result {i}").as_bytes());
    }
    job.line("stdout", b"done");
    std::fs::remove_dir_all(node.pods_dir().join("batch_job-x_uid-job")).unwrap();
    let records = wait_for_records(&l, 502);
    let got = by_container(&records);
    assert_eq!(got["batch/job-x/worker"].last().unwrap(), "done");
    assert_eq!(got["batch/job-x/worker"].len(), 502);
    assert_eq!(
        l.metric("loglet_lost_bytes_total{reason=\"deleted_unread\"}"),
        0.0
    );
    // The file is let go once drained.
    wait_until(
        Duration::from_secs(20),
        "the deleted file to be released",
        || (l.metric("loglet_deleted_files_held") == 0.0).then_some(()),
    );
    assert_eq!(l.stop(), 0);
}

#[test]
fn a_hard_kill_loses_nothing_and_duplicates_only_what_was_in_flight() {
    let node = Node::new();
    let work = node.root().join("work");
    let mut c = node.container("ns", "api-0", "uid-api", "api");
    let mut want = Vec::new();
    for i in 0..20_000 {
        let m = format!("event {i} {}", "p".repeat(i % 300));
        c.line(if i % 7 == 0 { "stderr" } else { "stdout" }, m.as_bytes());
        want.push(m);
    }
    let cfg = config("", STDOUT_SINK);
    let l = Loglet::start(node.root(), &work, &cfg);
    wait_until(Duration::from_secs(30), "some records", || {
        (l.stdout_records().len() > 2000).then_some(())
    });
    l.kill();
    // What the first run printed, and the offset its last durable checkpoint reached.
    let first_run = by_container(&read_ndjson(&work.join("stdout.ndjson")))["ns/api-0/api"].clone();
    let state = std::fs::read_to_string(node.root().join("var/lib/loglet/checkpoints.json"))
        .unwrap_or_else(|_| r#"{"files":[]}"#.to_string());
    let state: serde_json::Value = serde_json::from_str(&state).expect("checkpoint file is JSON");
    let committed = state["files"]
        .as_array()
        .and_then(|f| f.first())
        .and_then(|f| f["offset"].as_u64())
        .unwrap_or(0);
    // The lines wholly before that offset were delivered and must not come again.
    let durable = {
        let file = std::fs::read(c.path()).expect("log file");
        file[..committed as usize]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    };
    for i in 20_000..21_000 {
        let m = format!("event {i}");
        c.line("stdout", m.as_bytes());
        want.push(m);
    }
    let l = Loglet::start(node.root(), &work, &cfg);
    wait_until(Duration::from_secs(30), "every line", || {
        let got = by_container(&l.stdout_records());
        let lines = got.get("ns/api-0/api")?;
        want.iter().all(|w| lines.contains(w)).then_some(())
    });
    let got = by_container(&l.stdout_records())["ns/api-0/api"].clone();
    let dups = got.len() - want.len();
    // Only what the first run delivered past its durable checkpoint comes again: at-least-once,
    // never a re-read of what the checkpoint covers.
    let past_checkpoint = first_run.len().saturating_sub(durable);
    assert!(
        dups <= past_checkpoint,
        "{dups} duplicates, but only {past_checkpoint} lines were delivered past the checkpoint ({durable} lines)"
    );
    let mut times: HashMap<&str, usize> = HashMap::new();
    for g in &got {
        *times.entry(g.as_str()).or_default() += 1;
    }
    assert!(
        want[..durable]
            .iter()
            .all(|w| times.get(w.as_str()) == Some(&1)),
        "a line covered by the checkpoint came twice"
    );
    // Per stream, order is kept apart from the re-sent stretch.
    assert_eq!(l.stop(), 0);
}

#[test]
fn a_file_rotated_and_compressed_while_loglet_was_down_is_read_from_its_gz() {
    let node = Node::new();
    let work = node.root().join("work");
    let mut c = node.container("ns", "web-0", "uid-web", "web");
    let mut want = Vec::new();
    for i in 0..100 {
        let m = format!("before {i}");
        c.line("stdout", m.as_bytes());
        want.push(m);
    }
    let cfg = config("", STDOUT_SINK);
    let l = Loglet::start(node.root(), &work, &cfg);
    wait_for_records(&l, 100);
    assert_eq!(l.stop(), 0);
    // While loglet is down: more lines, rotation, compression, more lines.
    for i in 0..100 {
        let m = format!("unread {i}");
        c.line("stdout", m.as_bytes());
        want.push(m);
    }
    let rotated = c.rotate();
    c.gzip(&rotated);
    for i in 0..50 {
        let m = format!("after {i}");
        c.line("stdout", m.as_bytes());
        want.push(m);
    }
    let l = Loglet::start(node.root(), &work, &cfg);
    let records = wait_for_records(&l, want.len());
    std::thread::sleep(Duration::from_millis(300));
    let got = by_container(&l.stdout_records());
    assert_eq!(got["ns/web-0/web"], want, "nothing lost, nothing repeated");
    assert_eq!(records.len(), want.len());
    assert_eq!(l.stop(), 0);
}

/// A `.gz` found while it is still being written (by a rotator that does not write under a
/// temporary name first) is looked at again once it has grown, not taken for empty for good.
#[test]
fn a_gz_found_half_written_is_read_once_complete() {
    use std::io::Write;
    let node = Node::new();
    let work = node.root().join("work");
    let c = node.container("ns", "web-0", "uid-web", "web");
    let extra = "logs:\n  rescan_interval: 200ms\n";
    let l = Loglet::start(node.root(), &work, &config(extra, STDOUT_SINK));
    let mut plain = Vec::new();
    let mut want = Vec::new();
    for i in 0..200 {
        let m = format!("compressed {i}");
        writeln!(plain, "2026-11-22T10:00:00.{i:09}Z stdout F {m}").unwrap();
        want.push(m);
    }
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&plain).unwrap();
    let gz = enc.finish().unwrap();
    let path = c.dir.join("0.log.20261122-100000.gz");
    let mut f = std::fs::File::create(&path).unwrap();
    // The header only, then a few scans later the rest.
    f.write_all(&gz[..10]).unwrap();
    f.sync_all().unwrap();
    std::thread::sleep(Duration::from_millis(600));
    f.write_all(&gz[10..]).unwrap();
    drop(f);
    let records = wait_for_records(&l, want.len());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(by_container(&l.stdout_records())["ns/web-0/web"], want);
    assert_eq!(records.len(), want.len());
    assert_eq!(l.stop(), 0);
}

#[test]
fn malformed_content_is_counted_and_passed_through_without_a_crash() {
    let node = Node::new();
    let work = node.root().join("work");
    let mut c = node.container("ns", "bad-0", "uid-bad", "app");
    c.line("stdout", b"good one");
    c.raw(b"this is not a CRI line\n");
    c.raw(b"2026-13-45T99:00:00Z stdout F bad timestamp\n");
    c.raw(b"\x00\xff\xfe binary \x01\n");
    c.line("stdout", b"bad utf8 \xff\xfe inside");
    c.line("stdout", b"good two");
    let l = Loglet::start(node.root(), &work, &config("", STDOUT_SINK));
    let records = wait_for_records(&l, 6);
    let msgs: Vec<&str> = records
        .iter()
        .map(|r| r["message"].as_str().unwrap())
        .collect();
    assert_eq!(msgs[0], "good one");
    assert_eq!(msgs[1], "this is not a CRI line");
    assert_eq!(msgs[4], "bad utf8 \u{fffd}\u{fffd} inside");
    assert_eq!(msgs[5], "good two");
    assert_eq!(
        l.metric("loglet_lines_malformed_total{format=\"cri\"}"),
        3.0
    );
    assert_eq!(l.stop(), 0);
}

#[test]
fn an_over_long_line_is_truncated_and_counted_and_memory_stays_bounded() {
    let node = Node::new();
    let work = node.root().join("work");
    let mut c = node.container("ns", "big-0", "uid-big", "app");
    // 100 MiB without a newline, then a normal line.
    let huge = vec![b'z'; 100 << 20];
    c.raw(b"2026-11-22T10:00:00Z stdout F ");
    c.raw(&huge);
    c.raw(b"\n");
    c.line("stdout", b"after the big one");
    let l = Loglet::start(
        node.root(),
        &work,
        &config("logs:\n  max_line_bytes: 64KiB\n", STDOUT_SINK),
    );
    let records = wait_for_records(&l, 2);
    let big = &records[0];
    assert_eq!(big["truncated"], true);
    assert!(big["message"].as_str().unwrap().len() <= 64 * 1024);
    assert_eq!(records[1]["message"], "after the big one");
    assert_eq!(l.metric("loglet_lines_truncated_total"), 1.0);
    // The line was never held whole: loglet's peak memory stays far below its size.
    let peak_kib = l.memory_kib("VmHWM");
    assert!(
        peak_kib < 64 << 10,
        "peak RSS {peak_kib} KiB for a 100 MiB line"
    );
    assert_eq!(l.stop(), 0);
}

#[test]
fn check_config_names_the_file_the_key_and_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "logs:\n  rescan_interval: 10\nsinks:\n  out:\n    type: http\n    url: ftp://x/\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loglet"))
        .args(["check-config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(
        err.contains("rescan_interval") || err.contains("no unit"),
        "{err}"
    );

    let typo = dir.path().join("typo.yaml");
    std::fs::write(
        &typo,
        "sinks:\n  out:\n    type: stdout\n    compresion: gzip\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loglet"))
        .args(["check-config", typo.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("compresion"), "{err}");

    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "sinks:\n  out:\n    type: http\n    url: https://logs.example/ingest\n    auth: {bearer: {token: hunter2}}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loglet"))
        .args(["check-config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("https://logs.example/ingest"));
    assert!(!printed.contains("hunter2"), "secrets never printed");
}

/// The README's first command runs loglet on `examples/node/`; this keeps that tree and what it
/// shows true: every line of every file once, partial and split lines joined, container IDs from
/// the `/var/log/containers` links.
#[test]
fn the_example_node_tree_arrives_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("node");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/node");
    let status = std::process::Command::new("cp")
        .args(["-a", example])
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success());
    // A checkpoint left by a local run of the README command must not hide lines here.
    let _ = std::fs::remove_dir_all(root.join("var/lib/loglet"));
    let l = Loglet::start(&root, &tmp.path().join("work"), &config("", STDOUT_SINK));
    let records = wait_for_records(&l, 40);
    std::thread::sleep(Duration::from_millis(500));
    let records_after = l.stdout_records();
    assert_eq!(records_after.len(), 40, "no more than the tree holds");
    let got = by_container(&records);
    let count = |k: &str| got.get(k).map_or(0, Vec::len);
    assert_eq!(
        count("shop/web-7d9f8b6c5-x2k4p/nginx"),
        23,
        "rotated and current file"
    );
    assert_eq!(
        count("kube-system/coredns-5d78c9869d-8wq7z/coredns"),
        6,
        "both restarts"
    );
    assert_eq!(count("payments/api-0/api"), 7, "CRI-O with local offsets");
    assert_eq!(
        count("legacy/old-app-6c9f7d-qq2mz/app"),
        4,
        "Docker json-file"
    );
    let lens = |k: &str| -> Vec<usize> { got[k].iter().map(String::len).collect() };
    assert!(
        lens("legacy/old-app-6c9f7d-qq2mz/app").contains(&20000),
        "16 KiB split joined"
    );
    assert!(
        lens("shop/web-7d9f8b6c5-x2k4p/nginx").contains(&20388),
        "P + F joined"
    );
    assert!(
        lens("payments/api-0/api").contains(&8292),
        "CRI-O 8 KiB P + F joined"
    );
    let current = records
        .iter()
        .find(|r| r["file"].as_str().unwrap().ends_with("coredns/1.log"))
        .unwrap();
    assert_eq!(
        current["kubernetes"]["container_id"]
            .as_str()
            .unwrap()
            .len(),
        64,
        "{current}"
    );
    assert_eq!(l.stop(), 0);
}

/// The kubelet's whole rotation cycle on many containers at once (rename, compress the previous
/// rotated file, delete the oldest `.gz`, a new `0.log` that may take a freed inode), with the
/// rotated files read to their end and closed in between: every line arrives once and in order,
/// and the open-file gauge is the descriptors loglet really holds (a count that drifts would
/// end with no file opened at all).
#[test]
fn a_rotation_storm_with_compression_and_inode_reuse_loses_nothing() {
    const CONTAINERS: usize = 8;
    let node = Node::new();
    let work = node.root().join("work");
    let mut cs: Vec<_> = (0..CONTAINERS)
        .map(|i| node.container("storm", &format!("p-{i}"), &format!("uid-{i}"), "app"))
        .collect();
    let extra = "logs:\n  partial_flush_timeout: 50ms\n  max_open_files: 16\n";
    let l = Loglet::start(node.root(), &work, &config(extra, STDOUT_SINK));
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut rotated: Vec<Vec<std::path::PathBuf>> = vec![Vec::new(); CONTAINERS];
    let mut gzipped: Vec<Vec<std::path::PathBuf>> = vec![Vec::new(); CONTAINERS];
    for round in 0..25 {
        for (i, c) in cs.iter_mut().enumerate() {
            let lines = want.entry(format!("storm/p-{i}/app")).or_default();
            for j in 0..40 {
                let m = format!("round {round} line {j} of p-{i}");
                c.line("stdout", m.as_bytes());
                lines.push(m);
            }
            // In the kubelet's order: the oldest `.gz` deleted, the rotated file compressed
            // (and unlinked), then `0.log` renamed and a new one opened, often on the inode
            // just freed.
            if gzipped[i].len() >= 2 {
                std::fs::remove_file(gzipped[i].remove(0)).expect("remove the oldest .gz");
            }
            if let Some(old) = rotated[i].pop() {
                gzipped[i].push(c.gzip(&old));
            }
            rotated[i].push(c.rotate());
        }
        // Long enough for the rotated files to be read to their end and closed.
        std::thread::sleep(Duration::from_millis(150));
    }
    let total: usize = want.values().map(Vec::len).sum();
    wait_for_records(&l, total);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(by_container(&l.stdout_records()), want);
    let logs = node.root().join("var/log");
    let held = std::fs::read_dir(format!("/proc/{}/fd", l.pid()))
        .expect("fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.starts_with(&logs))
        .count();
    assert_eq!(l.metric("loglet_files_open"), held as f64);
    assert_eq!(l.metric("loglet_lost_bytes_total"), 0.0);
    assert_eq!(l.stop(), 0);
}
