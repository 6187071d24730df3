//! A kubelet-style node in a temp dir for end-to-end tests: Pod log directories, CRI files written
//! the way containerd writes them (16 KiB `P` chunks, then `F`), `/var/log/containers` links,
//! kubelet rotation (rename to `N.log.<YYYYMMDD-HHMMSS>`, then gzip), container restarts.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// containerd's `max_container_log_line_size`.
pub const CONTAINERD_SPLIT: usize = 16 * 1024;

pub struct Node {
    pub dir: tempfile::TempDir,
}

impl Node {
    /// With `LOGLET_TEST_KEEP` set, the tree (and loglet's log in it) stays after the test,
    /// to look into a failure.
    pub fn new() -> Node {
        let mut dir = tempfile::tempdir().expect("temp dir");
        if std::env::var_os("LOGLET_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping the test tree at {}", dir.path().display());
        }
        Node { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn pods_dir(&self) -> PathBuf {
        self.root().join("var/log/pods")
    }

    /// A container of a Pod, writing `0.log`.
    pub fn container(&self, namespace: &str, pod: &str, uid: &str, name: &str) -> Container {
        let dir = self
            .pods_dir()
            .join(format!("{namespace}_{pod}_{uid}"))
            .join(name);
        std::fs::create_dir_all(&dir).expect("container dir");
        let links = self.root().join("var/log/containers");
        std::fs::create_dir_all(&links).expect("links dir");
        let mut c = Container {
            dir,
            links,
            namespace: namespace.into(),
            pod: pod.into(),
            name: name.into(),
            restart: 0,
            file: None,
            clock: 0,
            rotations: 0,
            id: String::new(),
        };
        c.open_current();
        c
    }
}

pub struct Container {
    pub dir: PathBuf,
    links: PathBuf,
    pub namespace: String,
    pub pod: String,
    pub name: String,
    pub restart: u32,
    file: Option<File>,
    clock: u64,
    rotations: u32,
    /// The current container ID (64 hex characters).
    pub id: String,
}

impl Container {
    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.restart))
    }

    /// The host path records carry for the current file.
    pub fn host_path(&self, root: &Path) -> String {
        Path::new("/")
            .join(self.path().strip_prefix(root).expect("under root"))
            .to_string_lossy()
            .into_owned()
    }

    fn open_current(&mut self) {
        self.file = Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path())
                .expect("open log"),
        );
        let seed = format!(
            "{}/{}/{}/{}",
            self.namespace, self.pod, self.name, self.restart
        );
        self.id = hex64(&seed);
        let link = self.links.join(format!(
            "{}_{}_{}-{}.log",
            self.pod, self.namespace, self.name, self.id
        ));
        let host_target = Path::new("/var/log/pods")
            .join(self.dir.parent().unwrap().file_name().unwrap())
            .join(&self.name)
            .join(format!("{}.log", self.restart));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(host_target, link).expect("symlink");
    }

    /// The next timestamp: strictly increasing, with the fraction trimmed as Go's RFC3339Nano does.
    pub fn next_time(&mut self) -> (String, i64) {
        self.clock += 1;
        let base: i64 = 1_795_000_000; // 2026-11-18
        let ns = base * 1_000_000_000 + (self.clock as i64) * 1_000_100;
        (rfc3339_nano(ns), ns)
    }

    /// Moves the runtime's clock on by `secs` seconds without writing (a sidecar's `sleep`).
    pub fn idle(&mut self, secs: u64) {
        self.clock += secs * 1000;
    }

    /// Writes raw bytes to the current file.
    pub fn raw(&mut self, bytes: &[u8]) {
        let f = self.file.as_mut().expect("open");
        f.write_all(bytes).expect("write");
    }

    /// Writes one CRI record as is.
    pub fn cri(&mut self, stream: &str, tag: &str, content: &[u8]) -> i64 {
        let (t, ns) = self.next_time();
        let mut line = Vec::with_capacity(content.len() + 48);
        line.extend_from_slice(t.as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.as_bytes());
        line.push(b' ');
        line.extend_from_slice(tag.as_bytes());
        line.push(b' ');
        line.extend_from_slice(content);
        line.push(b'\n');
        self.raw(&line);
        ns
    }

    /// Writes one log line as containerd does: split into 16 KiB `P` chunks and a final `F`.
    /// Returns the timestamp of its first chunk.
    pub fn line(&mut self, stream: &str, content: &[u8]) -> i64 {
        let mut chunks = content.chunks(CONTAINERD_SPLIT).peekable();
        if content.is_empty() {
            return self.cri(stream, "F", b"");
        }
        let mut first = None;
        while let Some(c) = chunks.next() {
            let tag = if chunks.peek().is_some() { "P" } else { "F" };
            let ns = self.cri(stream, tag, c);
            first.get_or_insert(ns);
        }
        first.expect("one chunk at least")
    }

    /// kubelet rotation: rename `N.log` to `N.log.<YYYYMMDD-HHMMSS>` and let the runtime reopen a
    /// new `N.log`. Returns the rotated path.
    pub fn rotate(&mut self) -> PathBuf {
        self.rotations += 1;
        let stamp = format!("20261122-10{:04}", self.rotations);
        let rotated = self.dir.join(format!("{}.log.{stamp}", self.restart));
        self.file = None;
        std::fs::rename(self.path(), &rotated).expect("rename");
        self.open_current();
        rotated
    }

    /// kubelet's compression of rotated files: `f` -> `f.gz`, `f` removed.
    pub fn gzip(&self, rotated: &Path) -> PathBuf {
        let data = std::fs::read(rotated).expect("read rotated");
        let gz_path = PathBuf::from(format!("{}.gz", rotated.display()));
        let tmp = PathBuf::from(format!("{}.tmp", rotated.display()));
        let mut enc = flate2::write::GzEncoder::new(
            File::create(&tmp).expect("tmp"),
            flate2::Compression::default(),
        );
        enc.write_all(&data).expect("gzip");
        enc.finish().expect("gzip finish");
        std::fs::rename(&tmp, &gz_path).expect("rename gz");
        std::fs::remove_file(rotated).expect("remove rotated");
        gz_path
    }

    /// Copy-truncate, as logrotate does: the file is emptied in place.
    pub fn truncate(&mut self) {
        self.file
            .as_mut()
            .expect("open")
            .set_len(0)
            .expect("truncate");
    }

    /// A container restart: `N+1.log` with a new container ID; `N.log` stays.
    pub fn restart(&mut self) {
        self.restart += 1;
        self.open_current();
    }
}

/// A deterministic 64-hex container ID.
pub fn hex64(seed: &str) -> String {
    let mut out = String::with_capacity(64);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    while out.len() < 64 {
        for b in seed.bytes().chain(out.len().to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        out.push_str(&format!("{h:016x}"));
    }
    out.truncate(64);
    out
}

/// Go's RFC3339Nano in UTC, as containerd writes it: the fraction's trailing zeros trimmed.
pub fn rfc3339_nano(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let frac = ns.rem_euclid(1_000_000_000);
    let mut t = format_utc(secs);
    if frac != 0 {
        let f = format!("{frac:09}");
        t.push('.');
        t.push_str(f.trim_end_matches('0'));
    }
    t.push('Z');
    t
}

fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}
