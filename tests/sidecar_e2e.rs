//! Streaming sidecars end to end through the real binary: the sidecar's container log in a
//! kubelet tree on disk, its Pod annotated (docs/annotations.md) in the fake Kubernetes API,
//! records read from loglet's stdout sink.

#[path = "common/fake_api.rs"]
mod fake_api;
#[path = "common/loglet.rs"]
mod loglet;
#[path = "common/node.rs"]
mod node;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use fake_api::{FakeApi, pod, with_annotations, with_containers};
use loglet::{Loglet, config, wait_until};
use node::Node;
use serde_json::Value;

const NODE: &str = "node-a";

fn start(node: &Node, work: &Path, api: &FakeApi) -> Loglet {
    std::fs::create_dir_all(work).unwrap();
    let kubeconfig = api.write_kubeconfig(work);
    let extra = format!(
        "kubernetes:\n  kubeconfig: {}\n  metadata_wait: 2s\n",
        kubeconfig.display()
    );
    Loglet::start_with_env(
        node.root(),
        work,
        &config(&extra, "  out:\n    type: stdout\n"),
        &[("NODE_NAME", NODE)],
    )
}

fn web_pod(api: &FakeApi, annotation: &str) {
    api.apply_pod(&with_annotations(
        with_containers(
            pod("shop", "web-1", "uid-web", NODE),
            &[("nginx", "nginx:1.27"), ("echo", "busybox:1.36")],
        ),
        &[("loglet.io/sidecar.echo", annotation)],
    ));
}

#[test]
fn a_tail_sidecar_over_two_files_is_attributed_to_the_app_per_file_without_headers() {
    let api = FakeApi::start_background();
    web_pod(&api, "container=nginx, mode=tail");
    let node = Node::new();
    let work = node.root().join("work");
    let mut echo = node.container("shop", "web-1", "uid-web", "echo");
    let access = "/var/log/nginx/access.log";
    let error = "/var/log/nginx/error.log";
    for line in [
        format!("==> {access} <=="),
        "GET /1 200".into(),
        "".into(),
        format!("==> {error} <=="),
        "worker 1 started".into(),
        "".into(),
        format!("==> {access} <=="),
        "GET /2 200".into(),
        "".into(),
        "GET /3 200".into(),
    ] {
        echo.line("stdout", line.as_bytes());
    }
    echo.line(
        "stderr",
        format!("tail: '{error}' has been replaced;  following new file").as_bytes(),
    );
    echo.line("stdout", b"");
    echo.line("stdout", format!("==> {error} <==").as_bytes());
    echo.line("stdout", b"worker 2 started");
    let l = start(&node, &work, &api);
    wait_until(Duration::from_secs(30), "six lines", || {
        (l.stdout_records().len() >= 6).then_some(())
    });
    // Nothing more comes: no header, separator or notice is shipped late.
    std::thread::sleep(Duration::from_secs(2));
    let records: Vec<Value> = l.stdout_records();
    let got: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r["file"].as_str().unwrap(), r["message"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            (access, "GET /1 200"),
            (error, "worker 1 started"),
            (access, "GET /2 200"),
            (access, ""),
            (access, "GET /3 200"),
            (error, "worker 2 started"),
        ],
        "an empty log line is kept; separators, headers and notices are not"
    );
    for r in &records {
        let k = &r["kubernetes"];
        assert_eq!(k["container"], "nginx", "{r}");
        assert_eq!(k["sidecar"], "echo", "{r}");
        assert_eq!(k["container_image"], "nginx:1.27", "{r}");
        assert_eq!(k["pod"], "web-1", "{r}");
    }
    assert_eq!(l.stop(), 0);
}

#[test]
fn a_cat_loop_ships_each_line_once_across_rounds_a_restart_and_a_truncation() {
    let api = FakeApi::start_background();
    let file = "/var/log/app/server.log";
    web_pod(&api, &format!("container=nginx, mode=dump, file={file}"));
    let node = Node::new();
    let work = node.root().join("work");
    let mut echo = node.container("shop", "web-1", "uid-web", "echo");
    // `while true; do cat server.log; sleep 30; done` over a file that grows, then is truncated.
    let mut round = |lines: &[String]| {
        for l in lines {
            echo.line("stdout", l.as_bytes());
        }
        echo.idle(30);
    };
    let upto = |n: usize| (1..=n).map(|i| format!("request {i}")).collect::<Vec<_>>();
    let count = |l: &Loglet| {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for r in l.stdout_records() {
            assert_eq!(r["kubernetes"]["container"], "nginx", "{r}");
            assert_eq!(r["file"], file, "{r}");
            *seen
                .entry(r["message"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        seen
    };
    round(&upto(3));
    round(&upto(5));
    let l = start(&node, &work, &api);
    wait_until(Duration::from_secs(30), "five lines", || {
        (count(&l).len() == 5).then_some(())
    });
    round(&upto(5));
    round(&upto(8));
    wait_until(Duration::from_secs(30), "eight lines", || {
        (count(&l).len() == 8).then_some(())
    });
    // Give the idle round end its time, so the state is checkpointed, then restart.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(l.stop(), 0);
    round(&upto(8));
    round(&upto(10));
    let l = start(&node, &work, &api);
    wait_until(Duration::from_secs(30), "ten lines", || {
        (count(&l).len() == 10).then_some(())
    });
    // The application's file is truncated: its new content is shipped from its start.
    let fresh = |n: usize| (1..=n).map(|i| format!("fresh {i}")).collect::<Vec<_>>();
    round(&fresh(2));
    round(&fresh(2));
    round(&fresh(3));
    wait_until(Duration::from_secs(30), "thirteen lines", || {
        (count(&l).len() == 13).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let seen = count(&l);
    for (line, n) in &seen {
        assert_eq!(*n, 1, "{line} shipped {n} times: {seen:?}");
    }
    assert_eq!(l.stop(), 0);
}
