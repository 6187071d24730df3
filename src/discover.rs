//! discover: finding the container log files on the node, by a scan of the kubelet's layout and
//! inotify, with the scan repeated as the safety net and a polling-only mode.
//!
//! Layout (kubelet, <https://github.com/kubernetes/kubernetes/blob/master/pkg/kubelet/kuberuntime/kuberuntime_container.go>):
//! `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log`, rotated to
//! `<restart>.log.<YYYYMMDD-HHMMSS>` and then gzipped to `….gz`; symlinks
//! `/var/log/containers/<pod>_<namespace>_<container>-<container id>.log` point at the current file.
//! Reading under /var/log/pods finds every file, including a previous restart's and rotated ones,
//! whatever the symlink names (which the kubelet cuts at 255 bytes).

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crossbeam_channel::Sender;

use crate::record::PodMeta;
use crate::route::VolumeFile;
use inotify::{Inotify, WatchDescriptor, WatchMask, Watches};

/// What a log file's name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `<restart>.log`: the file the runtime writes.
    Current,
    /// `<restart>.log.<timestamp>`: renamed by the kubelet's rotation, no longer written.
    Rotated,
    /// `<restart>.log.<timestamp>.gz`: compressed by the kubelet's rotation.
    Gz,
}

/// Parses `0.log`, `0.log.20240101-120000` and `0.log.20240101-120000.gz` into the restart count
/// and the kind. Anything else (the kubelet's `.tmp` files among them) is not a log file.
pub fn parse_log_name(name: &str) -> Option<(u32, FileKind)> {
    let (restart, rest) = name.split_once(".log")?;
    let restart: u32 = restart.parse().ok()?;
    if rest.is_empty() {
        return Some((restart, FileKind::Current));
    }
    let rest = rest.strip_prefix('.')?;
    let (stamp, kind) = match rest.strip_suffix(".gz") {
        Some(stamp) => (stamp, FileKind::Gz),
        None => (rest, FileKind::Rotated),
    };
    let b = stamp.as_bytes();
    let ok = b.len() == 15
        && b[8] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 8 || c.is_ascii_digit());
    ok.then_some((restart, kind))
}

/// Splits a Pod log directory name `<namespace>_<pod>_<uid>`. Namespaces (DNS labels) and Pod
/// names (DNS subdomains) cannot contain `_`, so the first two underscores split it.
pub fn parse_pod_dir(name: &str) -> Option<(&str, &str, &str)> {
    let mut it = name.splitn(3, '_');
    let (ns, pod, uid) = (it.next()?, it.next()?, it.next()?);
    (!ns.is_empty() && !pod.is_empty() && !uid.is_empty()).then_some((ns, pod, uid))
}

/// The container ID in a `/var/log/containers` link name `<pod>_<ns>_<container>-<64 hex>.log`,
/// if the kubelet did not cut the name.
pub fn container_id_from_link(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".log")?;
    let id = stem.get(stem.len().checked_sub(64)?..)?;
    let dash = stem.as_bytes().get(stem.len().checked_sub(65)?)?;
    (*dash == b'-' && id.bytes().all(|c| c.is_ascii_hexdigit())).then_some(id)
}

/// A log file found on disk.
#[derive(Debug, Clone)]
pub struct Found {
    /// Where loglet opens it (under `root`; a symlink already resolved under `root`).
    pub path: PathBuf,
    /// The path as the host knows it (without `root`), reported in records.
    pub host_path: String,
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    pub restart: u32,
    pub kind: FileKind,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub modified: SystemTime,
    pub origin: Origin,
}

/// What kind of log a found file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A container's stdout and stderr, in the runtime's format, under the Pod log directory.
    Container,
    /// An application's own file in one of its Pod's emptyDir volumes: plain lines.
    Volume,
}

/// Names of compressed files, never read as plain lines.
const COMPRESSED: [&str; 5] = [".gz", ".zst", ".xz", ".bz2", ".zip"];

/// Which containers to read.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Vec<glob::Pattern>,
    exclude: Vec<glob::Pattern>,
    /// loglet's own Pod (from the downward API), never read: its output would loop.
    self_pod_uid: Option<String>,
}

impl Filter {
    /// Patterns were validated with the config.
    pub fn new(include: &[String], exclude: &[String], self_pod_uid: Option<String>) -> Filter {
        let compile = |v: &[String]| {
            v.iter()
                .filter_map(|g| glob::Pattern::new(g).ok())
                .collect::<Vec<_>>()
        };
        Filter {
            include: compile(include),
            exclude: compile(exclude),
            self_pod_uid: self_pod_uid.filter(|s| !s.is_empty()),
        }
    }

    /// Whether `<namespace>/<pod>/<container>` of this Pod is read.
    pub fn wants(&self, namespace: &str, pod: &str, uid: &str, container: &str) -> bool {
        if self.self_pod_uid.as_deref() == Some(uid) {
            return false;
        }
        if self.include.is_empty() && self.exclude.is_empty() {
            return true;
        }
        let key = format!("{namespace}/{pod}/{container}");
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(&key)))
            && !self.exclude.iter().any(|p| p.matches(&key))
    }
}

/// The layout under one root.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    /// `<root>/var/log/pods`.
    pub pods_dir: PathBuf,
    /// `<root>/var/log/containers`.
    pub containers_dir: PathBuf,
    /// `<root>/var/lib/kubelet/pods`: the Pods' volumes.
    pub kubelet_pods_dir: PathBuf,
}

impl Layout {
    /// `host` (absolute on the host) as a path under `root`.
    pub fn under_root(&self, host: &Path) -> PathBuf {
        self.root.join(host.strip_prefix("/").unwrap_or(host))
    }

    /// `path` (under `root`) as the host knows it.
    pub fn host_path(&self, path: &Path) -> String {
        match path.strip_prefix(&self.root) {
            Ok(rel) => Path::new("/").join(rel).to_string_lossy().into_owned(),
            Err(_) => path.to_string_lossy().into_owned(),
        }
    }

    /// Resolves a directory entry that may be a symlink (Docker's `0.log` points into
    /// /var/lib/docker) with absolute targets taken under `root`, and stats it.
    fn stat_entry(&self, path: &Path) -> io::Result<(PathBuf, std::fs::Metadata)> {
        let mut path = path.to_path_buf();
        for _ in 0..8 {
            let meta = std::fs::symlink_metadata(&path)?;
            if !meta.file_type().is_symlink() {
                return Ok((path, meta));
            }
            let target = std::fs::read_link(&path)?;
            path = if target.is_absolute() {
                self.under_root(&target)
            } else {
                path.parent().unwrap_or(Path::new("/")).join(target)
            };
        }
        Err(io::Error::other("too many levels of symbolic links"))
    }

    /// Scans one container directory `<pods_dir>/<pod dir>/<container>`.
    pub fn scan_container_dir(
        &self,
        dir: &Path,
        filter: &Filter,
        out: &mut Vec<Found>,
    ) -> io::Result<()> {
        let Some(container) = dir.file_name().and_then(|n| n.to_str()) else {
            return Ok(());
        };
        let Some(pod_dir) = dir
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
        else {
            return Ok(());
        };
        let Some((ns, pod, uid)) = parse_pod_dir(pod_dir) else {
            return Ok(());
        };
        if !filter.wants(ns, pod, uid, container) {
            return Ok(());
        }
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some((restart, kind)) = name.to_str().and_then(parse_log_name) else {
                continue;
            };
            let (path, meta) = match self.stat_entry(&entry.path()) {
                Ok(x) => x,
                // Gone between readdir and stat (rotation, deletion): the next scan sees the rest.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if !meta.is_file() {
                continue;
            }
            out.push(Found {
                host_path: self.host_path(&entry.path()),
                path,
                namespace: ns.to_string(),
                pod: pod.to_string(),
                pod_uid: uid.to_string(),
                container: container.to_string(),
                restart,
                kind,
                dev: meta.dev(),
                ino: meta.ino(),
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                origin: Origin::Container,
            });
        }
        Ok(())
    }

    /// The container directories under one Pod directory.
    pub fn container_dirs(&self, pod_dir: &Path) -> io::Result<Vec<PathBuf>> {
        subdirs(pod_dir)
    }

    /// The UIDs of the Pods the kubelet keeps volumes for.
    pub fn volume_pod_uids(&self) -> io::Result<Vec<String>> {
        let dirs = match subdirs(&self.kubelet_pods_dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other?,
        };
        Ok(dirs
            .iter()
            .filter_map(|d| d.file_name()?.to_str().map(String::from))
            .collect())
    }

    /// The files `spec` names in the emptyDir volume of Pod `uid`. Only regular files inside
    /// the volume count: a symlink (or a directory that resolves outside the volume) is
    /// skipped, so a Pod can never make loglet read a file that is not its own. Compressed
    /// names (a logrotate `compress`) are skipped too: loglet follows the rotation itself.
    /// Returns the directory it listed, for a watch.
    pub fn scan_volume_files(
        &self,
        meta: &PodMeta,
        uid: &str,
        spec: &VolumeFile,
        filter: &Filter,
        out: &mut Vec<Found>,
    ) -> io::Result<Option<PathBuf>> {
        if !filter.wants(&meta.namespace, &meta.name, uid, &spec.container) {
            return Ok(None);
        }
        let volume = self
            .kubelet_pods_dir
            .join(uid)
            .join("volumes/kubernetes.io~empty-dir")
            .join(&spec.volume);
        let mut dir = volume.clone();
        dir.extend(&spec.dirs);
        let (volume_real, dir_real) = match (volume.canonicalize(), dir.canonicalize()) {
            (Ok(v), Ok(d)) => (v, d),
            (Err(e), _) | (_, Err(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        if !dir_real.starts_with(&volume_real) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} resolves outside its volume", dir.display()),
            ));
        }
        let entries = match std::fs::read_dir(&dir_real) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            other => other?,
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !spec.name.matches(name) || COMPRESSED.iter().any(|s| name.ends_with(s)) {
                continue;
            }
            let meta_fs = match entry.path().symlink_metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if !meta_fs.file_type().is_file() {
                continue;
            }
            // Opened by the listed name; the tailer checks it opens this very inode.
            let path = dir.join(name);
            out.push(Found {
                host_path: self.host_path(&path),
                path,
                namespace: meta.namespace.clone(),
                pod: meta.name.clone(),
                pod_uid: uid.to_string(),
                container: spec.container.clone(),
                restart: 0,
                kind: FileKind::Current,
                dev: meta_fs.dev(),
                ino: meta_fs.ino(),
                size: meta_fs.len(),
                modified: meta_fs.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                origin: Origin::Volume,
            });
        }
        Ok(Some(dir))
    }

    /// The Pod directories.
    pub fn pod_dirs(&self) -> io::Result<Vec<PathBuf>> {
        match subdirs(&self.pods_dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            other => other,
        }
    }

    /// Container IDs from the `/var/log/containers` links, by the host path they point at.
    pub fn container_ids(&self) -> HashMap<String, String> {
        let mut ids = HashMap::new();
        let Ok(entries) = std::fs::read_dir(&self.containers_dir) else {
            return ids;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(container_id_from_link) else {
                continue;
            };
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let host_target = if target.is_absolute() {
                target
            } else {
                Path::new("/var/log/containers").join(target)
            };
            ids.insert(normalize(&host_target), id.to_string());
        }
        ids
    }
}

/// `/a/b/../c` to `/a/c`, lexically (the link targets we read are written by the kubelet).
fn normalize(p: &Path) -> String {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(s) => parts.push(s),
            _ => {}
        }
    }
    let mut s = String::new();
    for part in parts {
        s.push('/');
        s.push_str(&part.to_string_lossy());
    }
    s
}

fn subdirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// How long inotify events gather in the kernel's queue after a read before the next one: the
/// most a write waits to be noticed once another was noticed just before it.
const NOTICE_COALESCE: Duration = Duration::from_millis(25);

/// What inotify told, reduced to what the tailer acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Notice {
    /// Something was written in this watched directory.
    Modified(i32),
    /// Entries were created, moved or deleted in this watched directory: scan it.
    Changed(i32),
    /// The kernel's queue overflowed: events were lost, scan everything.
    Overflow,
}

/// inotify on the log directories: a thread reads events and forwards [`Notice`]s; the tailer
/// adds and removes watches through [`Notifier`].
pub struct Notifier {
    watches: Watches,
    by_path: HashMap<PathBuf, WatchDescriptor>,
    by_wd: HashMap<i32, PathBuf>,
}

/// Why inotify could not be used (the tailer then falls back to polling).
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("inotify is not available")]
    Init(#[source] io::Error),
    #[error("inotify watch limit reached (fs.inotify.max_user_watches)")]
    Limit,
    #[error("failed to watch {path}")]
    Watch {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Notifier {
    /// Starts the event thread; notices go to `tx`, which the tailer waits on.
    pub fn start(tx: Sender<Vec<Notice>>) -> Result<Notifier, NotifyError> {
        let mut inotify = Inotify::init().map_err(NotifyError::Init)?;
        let watches = inotify.watches();
        std::thread::Builder::new()
            .name("loglet-inotify".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let events = match inotify.read_events_blocking(&mut buf) {
                        Ok(ev) => ev,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "inotify read failed; polling takes over");
                            let _ = tx.send(vec![Notice::Overflow]);
                            return;
                        }
                    };
                    // Writes come in runs: each distinct notice goes once per read, all of a
                    // read's in one message, so the tailer reads once for the whole run.
                    let mut notices: Vec<Notice> = Vec::new();
                    let mut count = 0;
                    for ev in events {
                        count += 1;
                        let notice = if ev.mask.contains(inotify::EventMask::Q_OVERFLOW) {
                            Notice::Overflow
                        } else if ev.mask.intersects(
                            inotify::EventMask::CREATE
                                | inotify::EventMask::DELETE
                                | inotify::EventMask::MOVED_FROM
                                | inotify::EventMask::MOVED_TO
                                | inotify::EventMask::DELETE_SELF
                                | inotify::EventMask::MOVE_SELF,
                        ) {
                            Notice::Changed(ev.wd.get_watch_descriptor_id())
                        } else if ev.mask.contains(inotify::EventMask::IGNORED) {
                            continue;
                        } else {
                            Notice::Modified(ev.wd.get_watch_descriptor_id())
                        };
                        notices.push(notice);
                    }
                    notices.sort_unstable();
                    notices.dedup();
                    if !notices.is_empty() && tx.send(notices).is_err() {
                        return;
                    }
                    // The events of the next few milliseconds wait in the kernel's queue and
                    // come in one read: busy files cost a wake-up per interval, not per write.
                    // A read that came near filling the buffer is followed at once, lest the
                    // queue overflow.
                    if count < buf.len() / 64 {
                        std::thread::sleep(NOTICE_COALESCE);
                    }
                }
            })
            .map_err(NotifyError::Init)?;
        Ok(Notifier {
            watches,
            by_path: HashMap::new(),
            by_wd: HashMap::new(),
        })
    }

    /// Watches a directory (idempotent).
    pub fn watch(&mut self, dir: &Path) -> Result<(), NotifyError> {
        if self.by_path.contains_key(dir) {
            return Ok(());
        }
        let mask = WatchMask::CREATE
            | WatchMask::MODIFY
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF
            | WatchMask::ONLYDIR;
        match self.watches.add(dir, mask) {
            Ok(wd) => {
                self.by_wd
                    .insert(wd.get_watch_descriptor_id(), dir.to_path_buf());
                self.by_path.insert(dir.to_path_buf(), wd);
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => Err(NotifyError::Limit),
            Err(e) => Err(NotifyError::Watch {
                path: dir.to_path_buf(),
                source: e,
            }),
        }
    }

    /// Forgets directories that no longer exist (their watches went with them).
    pub fn forget_missing(&mut self) {
        let gone: Vec<PathBuf> = self
            .by_path
            .keys()
            .filter(|p| !p.exists())
            .cloned()
            .collect();
        for p in gone {
            if let Some(wd) = self.by_path.remove(&p) {
                self.by_wd.remove(&wd.get_watch_descriptor_id());
                let _ = self.watches.remove(wd);
            }
        }
    }

    /// The directory a watch descriptor stands for.
    pub fn dir(&self, wd: i32) -> Option<&Path> {
        self.by_wd.get(&wd).map(PathBuf::as_path)
    }

    pub fn watched(&self) -> usize {
        self.by_path.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_file_names_are_parsed_like_the_kubelet_writes_them() {
        let cases = [
            ("0.log", Some((0, FileKind::Current))),
            ("12.log", Some((12, FileKind::Current))),
            ("0.log.20240101-120000", Some((0, FileKind::Rotated))),
            ("3.log.20261122-101500.gz", Some((3, FileKind::Gz))),
            ("0.log.20240101-120000.tmp", None),
            ("0.log.2024-01-01", None),
            ("x.log", None),
            ("0.txt", None),
            ("0.logx", None),
        ];
        for (name, want) in cases {
            assert_eq!(parse_log_name(name), want, "{name}");
        }
    }

    #[test]
    fn pod_directories_split_at_the_first_two_underscores() {
        assert_eq!(
            parse_pod_dir(
                "kube-system_coredns-5d78c9869d-abcde_0b7d3c6e-1111-2222-3333-444455556666"
            ),
            Some((
                "kube-system",
                "coredns-5d78c9869d-abcde",
                "0b7d3c6e-1111-2222-3333-444455556666"
            ))
        );
        assert_eq!(parse_pod_dir("ns_pod"), None);
        assert_eq!(parse_pod_dir("ns__uid"), None);
    }

    #[test]
    fn container_ids_come_from_uncut_link_names_only() {
        let id = "a".repeat(64);
        assert_eq!(
            container_id_from_link(&format!("web-1_shop_nginx-{id}.log")),
            Some(id.as_str())
        );
        // Cut at 255 bytes: the ID is incomplete and must not be guessed.
        let cut = format!("web-1_shop_nginx-{}.log", &id[..20]);
        assert_eq!(container_id_from_link(&cut), None);
        assert_eq!(container_id_from_link("short.log"), None);
    }

    #[test]
    fn filters_match_namespace_pod_container_and_skip_our_own_pod() {
        let f = Filter::new(
            &["shop/*".to_string(), "kube-system/*/coredns".to_string()],
            &["shop/*/istio-proxy".to_string()],
            Some("self-uid".into()),
        );
        assert!(f.wants("shop", "web-1", "u", "nginx"));
        assert!(!f.wants("shop", "web-1", "u", "istio-proxy"));
        assert!(f.wants("kube-system", "coredns-1", "u", "coredns"));
        assert!(!f.wants("kube-system", "etcd", "u", "etcd"));
        assert!(!Filter::new(&[], &[], Some("me".into())).wants("a", "b", "me", "c"));
        assert!(Filter::new(&[], &[], None).wants("a", "b", "u", "c"));
    }

    #[test]
    fn scans_resolve_symlinks_under_the_root_and_read_link_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let cdir = root.join("var/log/pods/shop_web-1_uid-1/nginx");
        std::fs::create_dir_all(&cdir).unwrap();
        std::fs::write(cdir.join("0.log"), b"x\n").unwrap();
        std::fs::write(cdir.join("0.log.20240101-120000"), b"y\n").unwrap();
        std::fs::write(cdir.join("0.log.20240101-120000.tmp"), b"z").unwrap();
        // A Docker-style link pointing outside the pods dir, absolute as on the host.
        let ddir = root.join("var/lib/docker/containers/abc");
        std::fs::create_dir_all(&ddir).unwrap();
        std::fs::write(ddir.join("abc-json.log"), b"{}\n").unwrap();
        let side = root.join("var/log/pods/shop_web-1_uid-1/side");
        std::fs::create_dir_all(&side).unwrap();
        std::os::unix::fs::symlink(
            "/var/lib/docker/containers/abc/abc-json.log",
            side.join("0.log"),
        )
        .unwrap();
        let links = root.join("var/log/containers");
        std::fs::create_dir_all(&links).unwrap();
        let id = "b".repeat(64);
        std::os::unix::fs::symlink(
            "/var/log/pods/shop_web-1_uid-1/nginx/0.log",
            links.join(format!("web-1_shop_nginx-{id}.log")),
        )
        .unwrap();

        let layout = Layout {
            root: root.to_path_buf(),
            pods_dir: root.join("var/log/pods"),
            containers_dir: links,
            kubelet_pods_dir: root.join("var/lib/kubelet/pods"),
        };
        let mut found = Vec::new();
        for pod in layout.pod_dirs().unwrap() {
            for c in layout.container_dirs(&pod).unwrap() {
                layout
                    .scan_container_dir(&c, &Filter::default(), &mut found)
                    .unwrap();
            }
        }
        found.sort_by(|a, b| a.host_path.cmp(&b.host_path));
        let names: Vec<_> = found
            .iter()
            .map(|f| (f.host_path.as_str(), f.kind))
            .collect();
        assert_eq!(
            names,
            [
                (
                    "/var/log/pods/shop_web-1_uid-1/nginx/0.log",
                    FileKind::Current
                ),
                (
                    "/var/log/pods/shop_web-1_uid-1/nginx/0.log.20240101-120000",
                    FileKind::Rotated
                ),
                (
                    "/var/log/pods/shop_web-1_uid-1/side/0.log",
                    FileKind::Current
                ),
            ]
        );
        assert_eq!(found[2].path, ddir.join("abc-json.log"));
        let ids = layout.container_ids();
        assert_eq!(
            ids.get("/var/log/pods/shop_web-1_uid-1/nginx/0.log"),
            Some(&id)
        );
    }

    #[test]
    fn a_run_of_writes_comes_as_few_notices_each_told_once() {
        let tmp = tempfile::tempdir().unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut notifier = Notifier::start(tx).unwrap();
        notifier.watch(tmp.path()).unwrap();
        let wd = notifier.by_path[tmp.path()].get_watch_descriptor_id();
        let mut file = std::fs::File::create(tmp.path().join("0.log")).unwrap();
        let created = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(created.contains(&Notice::Changed(wd)), "{created:?}");
        // Drain what the creation left, then write as a busy container does.
        while rx.recv_timeout(NOTICE_COALESCE * 4).is_ok() {}
        let writes = 500;
        for i in 0..writes {
            use std::io::Write;
            writeln!(file, "line {i}").unwrap();
        }
        let mut messages = Vec::new();
        while let Ok(m) = rx.recv_timeout(NOTICE_COALESCE * 4) {
            messages.push(m);
        }
        assert!(!messages.is_empty());
        for m in &messages {
            assert_eq!(
                m,
                &vec![Notice::Modified(wd)],
                "each notice once per message"
            );
        }
        // Without the pause between reads, about one message per write or two.
        assert!(
            messages.len() < writes / 10,
            "{} messages for {writes} writes",
            messages.len()
        );
    }
}
