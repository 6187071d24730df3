//! emptyDir collection end to end through the real binary: a Pod names files in its emptyDir
//! volume (`loglet.io/files.<container>`, docs/annotations.md) in the fake Kubernetes API; the
//! files are written, rotated as logrotate and nginx do (rename, then copy-truncate) and
//! appended to while loglet is down, in a kubelet tree on disk; records are read from loglet's
//! stdout sink.

#[path = "common/fake_api.rs"]
mod fake_api;
#[path = "common/loglet.rs"]
mod loglet;
#[path = "common/node.rs"]
mod node;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fake_api::{FakeApi, pod, with_annotations, with_containers, with_labels};
use loglet::{Loglet, config, wait_until};
use node::Node;
use serde_json::Value;

const NODE: &str = "node-a";
const VOLUME_DIR: &str = "/var/lib/kubelet/pods/uid-web/volumes/kubernetes.io~empty-dir/logs";

fn start(node: &Node, work: &Path, api: &FakeApi) -> Loglet {
    std::fs::create_dir_all(work).unwrap();
    let kubeconfig = api.write_kubeconfig(work);
    let extra = format!(
        "kubernetes:\n  kubeconfig: {}\n  metadata_wait: 2s\nlogs:\n  rescan_interval: 1s\n",
        kubeconfig.display()
    );
    Loglet::start_with_env(
        node.root(),
        work,
        &config(&extra, "  out:\n    type: stdout\n"),
        &[("NODE_NAME", NODE)],
    )
}

/// An application's own log file, as it appends to it.
struct AppFile {
    path: PathBuf,
    file: File,
}

impl AppFile {
    fn open(path: PathBuf) -> AppFile {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        AppFile { path, file }
    }

    fn lines(&mut self, prefix: &str, range: std::ops::Range<usize>) {
        for i in range {
            writeln!(self.file, "{prefix} {i}").unwrap();
        }
    }

    /// logrotate's default: the file is renamed; the application (told by a signal) opens a new
    /// one at the same name. Until then it writes on into the renamed file.
    fn rename_to(&self, to: &str) -> AppFile {
        let old = self.path.with_file_name(to);
        std::fs::rename(&self.path, &old).unwrap();
        AppFile {
            path: old,
            file: self.file.try_clone().unwrap(),
        }
    }

    /// logrotate's `copytruncate`: copied aside, then emptied in place.
    fn copy_truncate(&mut self, to: &str) {
        std::fs::copy(&self.path, self.path.with_file_name(to)).unwrap();
        self.file.set_len(0).unwrap();
    }
}

/// Messages per file, in arrival order, checking every record's metadata on the way.
fn by_file(records: &[Value]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for r in records {
        let k = &r["kubernetes"];
        assert_eq!(k["namespace"], "shop", "{r}");
        assert_eq!(k["pod"], "web-1", "{r}");
        assert_eq!(k["pod_uid"], "uid-web", "{r}");
        assert_eq!(k["container"], "nginx", "{r}");
        assert_eq!(k["container_image"], "nginx:1.27", "{r}");
        assert_eq!(k["labels"]["app"], "web", "{r}");
        out.entry(r["file"].as_str().unwrap().to_string())
            .or_default()
            .push(r["message"].as_str().unwrap().to_string());
    }
    out
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix} {i}")).collect()
}

#[test]
fn emptydir_files_written_rotated_and_truncated_arrive_exactly_once_with_pod_metadata() {
    let api = FakeApi::start_background();
    api.apply_pod(&with_annotations(
        with_labels(
            with_containers(
                pod("shop", "web-1", "uid-web", NODE),
                &[("nginx", "nginx:1.27")],
            ),
            &[("app", "web")],
        ),
        &[(
            "loglet.io/files.nginx",
            "logs:/nginx/access.log, logs:/nginx/error.log, logs:/secret.log",
        )],
    ));
    let node = Node::new();
    let work = node.root().join("work");
    let dir = node.root().join(VOLUME_DIR.trim_start_matches('/'));
    let mut access = AppFile::open(dir.join("nginx/access.log"));
    let mut error = AppFile::open(dir.join("nginx/error.log"));
    // A Pod cannot make loglet read what is not in its volume: a symlink out of it is skipped.
    std::fs::write(node.root().join("host-secret"), "root:x:0:0\n").unwrap();
    std::os::unix::fs::symlink(node.root().join("host-secret"), dir.join("secret.log")).unwrap();
    access.lines("GET /a", 0..100);
    error.lines("worker", 0..10);

    let l = start(&node, &work, &api);
    wait_until(Duration::from_secs(30), "the first lines", || {
        (l.stdout_records().len() >= 110).then_some(())
    });
    // Rename rotation: lines written to the renamed file before the application reopens
    // arrive, then the new file's, in order.
    access.lines("GET /a", 100..120);
    let rotated = access.rename_to("access.log.1");
    let mut rotated_writer = rotated;
    rotated_writer.lines("GET /a", 120..125);
    let mut access = AppFile::open(dir.join("nginx/access.log"));
    access.lines("GET /a", 125..160);
    // Copy-truncate once what was written is read.
    wait_until(Duration::from_secs(30), "the rotated lines", || {
        (l.stdout_records().len() >= 170).then_some(())
    });
    error.copy_truncate("error.log.1");
    error.lines("worker", 10..15);
    wait_until(
        Duration::from_secs(30),
        "the truncated file's new lines",
        || (l.stdout_records().len() >= 175).then_some(()),
    );
    assert!(
        l.metric("loglet_rotations_total{kind=\"truncate\"}") >= 1.0,
        "the copy-truncate was seen"
    );
    // Written while loglet is down: read from its checkpoint, nothing twice.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(l.stop(), 0);
    access.lines("GET /a", 160..200);
    error.lines("worker", 15..20);
    let l = start(&node, &work, &api);
    wait_until(
        Duration::from_secs(30),
        "the lines written while down",
        || (l.stdout_records().len() >= 220).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(2));
    let got = by_file(&l.stdout_records());
    let access_path = format!("{VOLUME_DIR}/nginx/access.log");
    let error_path = format!("{VOLUME_DIR}/nginx/error.log");
    assert_eq!(got[&access_path], numbered("GET /a", 0..200));
    assert_eq!(got[&error_path], numbered("worker", 0..20));
    assert_eq!(got.len(), 2, "only the named files: {:?}", got.keys());
    assert_eq!(l.stop(), 0);
}

#[test]
fn a_bad_files_annotation_is_reported_and_the_pods_good_files_still_arrive() {
    let api = FakeApi::start_background();
    api.apply_pod(&with_annotations(
        with_containers(
            pod("shop", "web-1", "uid-web", NODE),
            &[("nginx", "nginx:1.27"), ("worker", "busybox:1.36")],
        ),
        &[
            ("loglet.io/files.nginx", "logs:/app/*.log"),
            // Leaves the volume: refused.
            ("loglet.io/files.worker", "logs:/../../other-pod/secret.log"),
        ],
    ));
    let node = Node::new();
    let work = node.root().join("work");
    let dir = node.root().join(VOLUME_DIR.trim_start_matches('/'));
    let mut a = AppFile::open(dir.join("app/one.log"));
    let mut b = AppFile::open(dir.join("app/two.log"));
    // Compressed by a logrotate `compress`: never read as lines.
    std::fs::write(dir.join("app/one.log.1.gz"), b"\x1f\x8b\x08binary").unwrap();
    a.lines("one", 0..3);
    b.lines("two", 0..4);
    let l = start(&node, &work, &api);
    wait_until(Duration::from_secs(30), "the globbed files' lines", || {
        (l.stdout_records().len() >= 7).then_some(())
    });
    wait_until(
        Duration::from_secs(10),
        "the bad annotation reported",
        || {
            (l.metric("loglet_annotation_errors_total{annotation=\"loglet.io/files\"}") >= 1.0)
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    let records = l.stdout_records();
    let mut got: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            let file = r["file"].as_str().unwrap();
            let name = file.rsplit('/').next().unwrap().to_string();
            (name, r["message"].as_str().unwrap().to_string())
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = numbered("one", 0..3)
        .into_iter()
        .map(|m| ("one.log".to_string(), m))
        .chain(
            numbered("two", 0..4)
                .into_iter()
                .map(|m| ("two.log".to_string(), m)),
        )
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert!(
        l.log().contains("loglet.io/files.worker"),
        "the log names the bad annotation"
    );
    assert_eq!(l.stop(), 0);
}
