//! tail: one reader per file identity (device + inode, guarded by a fingerprint of the first
//! line), following the kubelet's rotation, draining renamed and deleted files through their open
//! descriptor, recovering from `.gz` what rotation compressed while loglet was down, and stopping
//! when the sinks are full, so the files on disk are the buffer.
//!
//! Kubelet rotation: <https://github.com/kubernetes/kubernetes/blob/master/pkg/kubelet/logs/container_log_manager.go>.
//! One thread runs the whole stage: discovery, reading, decoding and batching. It reads each file
//! in turn, one block at a time, so one chatty container cannot starve the others.

pub mod checkpoint;
mod streaming;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::Receiver;
use tokio::sync::mpsc;

use crate::config::{Config, ReadFrom, WatchMode};
use crate::decode::multiline::{DEFAULT_MAX_LINES, Joiner, MultilineOptions};
use crate::decode::{Clock, DecodeOptions, Decoded, Decoder, FileFormat};
use crate::discover::{FileKind, Filter, Found, Layout, Notice, Notifier, NotifyError, Origin};
use crate::kube::PodStore;
use crate::metrics::{Metrics, RateLimited};
use crate::record::{Batch, Record, Source};
use crate::route::{MAX_SINKS, Rate, Routes, annotation};
use checkpoint::{Checkpoints, FileKey, Position, SidecarState, Update};
use streaming::Stage;

/// The first line (at most this many bytes) identifies a file's content.
const FINGERPRINT_BYTES: usize = 256;
/// Room for the CRI or Docker framing around a line of `max_line_bytes`.
const FRAMING_BYTES: usize = 4096;
/// How often the file gauges (files watched and open, unread bytes) are published.
const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// How often batches waiting for room in a full sink queue are offered again.
const WAITING_POLL: Duration = Duration::from_millis(20);
/// Positions are committed in batch order, so while one sink holds a batch back the others'
/// acknowledged batches wait behind it: past this many, reading pauses for every file, which
/// bounds that memory (a few MiB) during a long outage of one sink.
const MAX_UNCOMMITTED_BATCHES: usize = 4096;

/// FNV-1a, 64 bit: stable across Rust versions and platforms, since it is persisted.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The fingerprint of a file whose first bytes are `head`: the hash of its first line (with its
/// newline), or of its first 256 bytes when the line is longer; `None` while the file is too
/// short to tell.
fn fingerprint(head: &[u8]) -> Option<u64> {
    match memchr::memchr(b'\n', head) {
        Some(nl) if nl < FINGERPRINT_BYTES => Some(fnv1a(&head[..=nl])),
        _ if head.len() >= FINGERPRINT_BYTES => Some(fnv1a(&head[..FINGERPRINT_BYTES])),
        _ => None,
    }
}

/// Where the file is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    /// At its path (current or rotated): followed.
    Present,
    /// Deleted or moved away while open: drained through the descriptor, then let go.
    Gone { since: Instant },
}

enum Handle {
    Plain(File),
    /// A `.gz` left by rotation while loglet was down, read from the checkpoint on; `pos` is the
    /// decompressed offset the decoder stands at.
    Gz(Box<flate2::read::GzDecoder<File>>),
}

struct TailFile {
    key: FileKey,
    fingerprint: Option<u64>,
    found: Found,
    source: Arc<Source>,
    meta_generation: u64,
    meta_known: bool,
    first_seen: Instant,
    handle: Option<Handle>,
    life: Life,
    /// The next byte to read.
    offset: u64,
    /// An incomplete line, starting at `carry_start`.
    carry: Vec<u8>,
    carry_start: u64,
    /// The line being read is over the cap: bytes are dropped until its newline.
    discarding: bool,
    decoder: Option<Decoder>,
    /// Size at the last look (for lag and for what is lost if the file goes unread).
    size: u64,
    last_growth: Instant,
    /// The position last handed to the checkpoints.
    acked_to: u64,
    /// This file's `Gz` copy is being read under the original's key.
    from_gz: bool,
    /// Joins multi-line records (`loglet.io/multiline`), when the file's container has a rule.
    joiner: Option<Joiner>,
}

impl TailFile {
    fn unread(&self) -> u64 {
        self.size.saturating_sub(self.offset)
    }

    /// The offset up to which every line was turned into records: complete lines only, and
    /// never past a partial line still being assembled.
    fn safe_offset(&self) -> u64 {
        let consumed = self.carry_start;
        let held = self.joiner.as_ref().and_then(Joiner::pending_from);
        [self.decoder.as_ref().and_then(Decoder::pending_from), held]
            .into_iter()
            .flatten()
            .fold(consumed, u64::min)
    }
}

/// A stack trace is written in one go: a second without a line ends the record (Fluent Bit's
/// multiline default is 2 s; a shorter wait ships the last record of a burst sooner).
pub const MULTILINE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings the tailer takes from the config, checked once.
pub struct TailSettings {
    pub layout: Layout,
    pub filter: Filter,
    pub read_from: ReadFrom,
    pub ignore_older_than: Duration,
    pub watch: WatchMode,
    pub rescan_interval: Duration,
    pub poll_interval: Duration,
    pub read_chunk: usize,
    pub max_open_files: usize,
    pub max_deleted_bytes_held: u64,
    pub decode: DecodeOptions,
    pub batch_max_records: usize,
    pub batch_max_bytes: usize,
    /// How long the lines of a Pod the watcher has not reported yet wait for its metadata.
    pub metadata_wait: Duration,
    /// Where each container's lines go.
    pub routes: Arc<Routes>,
    pub multiline: MultilineOptions,
}

impl TailSettings {
    pub fn from_config(
        config: &Config,
        self_pod_uid: Option<String>,
        metadata_wait: Duration,
        routes: Arc<Routes>,
    ) -> Self {
        let logs = &config.logs;
        TailSettings {
            layout: Layout {
                root: config.root.clone(),
                pods_dir: config.host_path(&logs.pods_dir),
                containers_dir: config.host_path(&logs.containers_dir),
                kubelet_pods_dir: config.host_path(&logs.kubelet_root).join("pods"),
            },
            filter: Filter::new(&logs.include, &logs.exclude, self_pod_uid),
            read_from: logs.read_from,
            ignore_older_than: logs.ignore_older_than.0,
            watch: logs.watch,
            rescan_interval: logs.rescan_interval.0,
            poll_interval: logs.poll_interval.0,
            read_chunk: logs.read_chunk_bytes.as_usize(),
            max_open_files: open_file_budget(logs.max_open_files),
            max_deleted_bytes_held: logs.max_deleted_bytes_held.0,
            decode: DecodeOptions::from_config(logs),
            batch_max_records: config.pipeline.batch_max_records,
            batch_max_bytes: config.pipeline.batch_max_bytes.as_usize(),
            metadata_wait,
            routes,
            multiline: MultilineOptions {
                flush_timeout: MULTILINE_FLUSH_TIMEOUT,
                max_bytes: logs.max_line_bytes.as_usize(),
                max_lines: DEFAULT_MAX_LINES,
            },
        }
    }
}

/// Where batches go: one queue per sink, and the signal to stop.
pub struct Outputs {
    pub sinks: Vec<mpsc::Sender<Arc<Batch>>>,
    pub stop: tokio::sync::watch::Receiver<bool>,
    pub runtime: tokio::runtime::Handle,
}

/// Records and checkpoint updates gathered for the next batch.
#[derive(Default)]
struct Pending {
    records: Vec<Record>,
    bytes: usize,
    updates: Vec<Update>,
    index: HashMap<FileKey, usize>,
}

impl Pending {
    fn update(&mut self, key: FileKey, update: Update) {
        match self.index.get(&key) {
            Some(&i) => self.updates[i] = update,
            None => {
                self.index.insert(key, self.updates.len());
                self.updates.push(update);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.updates.is_empty()
    }
}

/// The tail stage.
pub struct Tailer {
    s: TailSettings,
    files: HashMap<FileKey, TailFile>,
    /// Round-robin order of the files.
    order: Vec<FileKey>,
    /// Files with something to read.
    ready: HashSet<FileKey>,
    /// Positions from the checkpoint file not matched to a file yet.
    restored: HashMap<FileKey, Position>,
    /// `.gz` files already looked at, with their first line's fingerprint.
    gz_seen: HashMap<FileKey, (Option<u64>, Found)>,
    /// Files read to their end and gone, by fingerprint: their `.gz` copies are not read again.
    shipped: HashMap<u64, FileKey>,
    container_ids: HashMap<String, String>,
    checkpoints: Arc<Checkpoints>,
    store: PodStore,
    metrics: Arc<Metrics>,
    notifier: Option<Notifier>,
    notices: Receiver<Vec<Notice>>,
    notices_tx: crossbeam_channel::Sender<Vec<Notice>>,
    /// Container directories inotify said changed.
    dirty_dirs: HashSet<PathBuf>,
    /// Lookups over the files; rebuilt when files come, go or move (`None`).
    index: Option<FileIndex>,
    pending: Pending,
    decoded: Vec<Decoded>,
    started: bool,
    malformed_warn: RateLimited,
    /// Token buckets of the namespaces with a rate limit.
    buckets: HashMap<String, Bucket>,
    rate_warn: RateLimited,
    /// Streaming sidecars' stages by container directory, with the file each last read.
    stages: HashMap<String, (Stage, FileKey)>,
    /// Sidecar states from the checkpoints, by container directory, until their stage starts.
    stage_states: HashMap<String, SidecarState>,
    staged: Vec<(Decoded, Arc<Source>)>,
    /// The store generation the emptyDir volumes were last scanned at; `None` until the Pods'
    /// annotations could be known (the watcher's first lists).
    volumes_seen: Option<u64>,
    volume_warn: RateLimited,
    /// Files whose inode a new file took during a scan, kept until the scan's `.gz` files are
    /// looked at: what they had unread may be in one.
    displaced: Vec<TailFile>,
    /// Per sink, batches that found its queue full (a slow or failing backend). While a sink
    /// has one, the files routed to it are not read; the others go on.
    waiting: Vec<VecDeque<Arc<Batch>>>,
}

impl Tailer {
    pub fn new(
        s: TailSettings,
        restored: Vec<Position>,
        checkpoints: Arc<Checkpoints>,
        store: PodStore,
        metrics: Arc<Metrics>,
    ) -> Tailer {
        let (notices_tx, notices) = crossbeam_channel::unbounded();
        // Each sidecar's newest state: the one of its current file, else of its latest rotated.
        let mut newest: HashMap<String, (&Position, SidecarState)> = HashMap::new();
        for p in &restored {
            let (Some(state), Some(dir)) = (&p.sidecar, container_dir(&p.path)) else {
                continue;
            };
            let newer = newest
                .get(dir)
                .is_none_or(|(q, _)| rotation_age(&q.path) < rotation_age(&p.path));
            if newer {
                newest.insert(dir.to_string(), (p, state.clone()));
            }
        }
        let stage_states = newest.into_iter().map(|(d, (_, s))| (d, s)).collect();
        Tailer {
            s,
            files: HashMap::new(),
            order: Vec::new(),
            ready: HashSet::new(),
            shipped: restored
                .iter()
                .filter(|p| p.finished)
                .map(|p| (p.fingerprint, p.key()))
                .collect(),
            restored: restored
                .into_iter()
                .filter(|p| !p.finished)
                .map(|p| (p.key(), p))
                .collect(),
            gz_seen: HashMap::new(),
            container_ids: HashMap::new(),
            checkpoints,
            store,
            metrics,
            notifier: None,
            notices,
            notices_tx,
            dirty_dirs: HashSet::new(),
            index: None,
            pending: Pending::default(),
            decoded: Vec::new(),
            started: false,
            malformed_warn: RateLimited::new(Duration::from_secs(10)),
            buckets: HashMap::new(),
            rate_warn: RateLimited::new(Duration::from_secs(10)),
            stages: HashMap::new(),
            stage_states,
            staged: Vec::new(),
            volumes_seen: None,
            volume_warn: RateLimited::new(Duration::from_secs(60)),
            displaced: Vec::new(),
            waiting: Vec::new(),
        }
    }

    /// Runs until `out.stop` turns true; then sends what it holds and returns.
    pub fn run(mut self, mut out: Outputs) {
        if self.s.watch == WatchMode::Inotify {
            match Notifier::start(self.notices_tx.clone()) {
                Ok(n) => self.notifier = Some(n),
                Err(e) => self.fall_back_to_polling(&e),
            }
        }
        self.scan_all();
        self.prune_restored(self.volumes_seen.is_none());
        self.started = true;
        // Ready once every file present at start is known (the watcher adds its own condition).
        self.metrics.set_ready();
        let mut next_rescan = Instant::now() + self.s.rescan_interval;
        let mut next_poll = Instant::now();
        let mut next_stats = Instant::now();
        loop {
            if *out.stop.borrow() {
                break;
            }
            self.take_notices();
            if !self.offer_waiting(&out) {
                break;
            }
            let now = Instant::now();
            if now >= next_rescan {
                self.scan_all();
                next_rescan = now + self.s.rescan_interval;
            } else if !self.dirty_dirs.is_empty() {
                let dirs: Vec<PathBuf> = self.dirty_dirs.drain().collect();
                for d in dirs {
                    self.scan_dir(&d);
                }
            } else if self.volumes_seen != Some(self.store.generation()) {
                // A Pod came, went or changed its annotations: its volume files may too.
                let first = self.volumes_seen.is_none();
                let mut found = Vec::new();
                if self.scan_volumes(&mut found) {
                    self.apply_scan(found, |f| f.found.origin == Origin::Volume);
                    if first {
                        self.prune_restored(false);
                    }
                }
            }
            if now >= next_poll {
                self.ready.extend(self.order.iter().copied());
                next_poll = now + self.s.poll_interval;
            }
            let progressed = self.read_round(&mut out);
            self.expire(&mut out);
            if now >= next_stats {
                if self.blocked_sinks() != 0 {
                    // Files not read while a sink is full still grow: the lag metrics show it.
                    self.refresh_sizes();
                }
                self.publish_stats();
                next_stats = now + STATS_INTERVAL;
            }
            if !progressed {
                if !self.pending.is_empty() && !self.send(&mut out) {
                    break;
                }
                let waiting = (self.blocked_sinks() != 0).then(|| Instant::now() + WAITING_POLL);
                let deadline = [
                    Some(next_rescan),
                    Some(next_poll),
                    self.next_deadline(),
                    waiting,
                ]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(next_poll);
                let wait = deadline.saturating_duration_since(Instant::now());
                if waiting.is_some() {
                    // The files of a full sink get written to thousands of times a second:
                    // waking on each notice would spin. Their notices are taken all at once,
                    // and reading goes on as soon as a full sink takes a batch.
                    self.wait_for_room(&out, wait);
                } else if let Ok(notices) = self.notices.recv_timeout(wait) {
                    notices.into_iter().for_each(|n| self.on_notice(n));
                }
            }
        }
        // Whatever was read goes out if there is room; the rest is read again after a restart.
        if !self.pending.is_empty() {
            self.send(&mut out);
        }
        self.publish_stats();
    }

    fn fall_back_to_polling(&mut self, e: &NotifyError) {
        tracing::warn!(error = %e, poll_interval = ?self.s.poll_interval, "inotify unusable; polling the log directories instead");
        self.metrics.inotify_fallback.set(1);
        self.notifier = None;
    }

    fn take_notices(&mut self) {
        while let Ok(notices) = self.notices.try_recv() {
            notices.into_iter().for_each(|n| self.on_notice(n));
        }
    }

    fn on_notice(&mut self, n: Notice) {
        let Some(notifier) = &self.notifier else {
            return;
        };
        match n {
            Notice::Overflow => {
                // Events were lost: rescan everything now.
                let dirs: Vec<PathBuf> = std::iter::once(self.s.layout.pods_dir.clone()).collect();
                self.dirty_dirs.extend(dirs);
            }
            Notice::Modified(wd) => {
                if let Some(dir) = notifier.dir(wd) {
                    let dir = dir.to_path_buf();
                    self.mark_dir_ready(&dir);
                }
            }
            Notice::Changed(wd) => {
                if let Some(dir) = notifier.dir(wd) {
                    self.dirty_dirs.insert(dir.to_path_buf());
                }
            }
        }
    }

    fn mark_dir_ready(&mut self, dir: &Path) {
        let index = self
            .index
            .get_or_insert_with(|| FileIndex::build(&self.files, &self.s.layout));
        if let Some(keys) = index.by_dir.get(dir) {
            self.ready.extend(keys.iter().copied());
        }
    }

    /// Starts following a file.
    fn adopt(&mut self, key: FileKey, f: TailFile) {
        self.files.insert(key, f);
        self.index = None;
        self.order.push(key);
        self.ready.insert(key);
    }

    /// Stops following a file.
    fn forget(&mut self, key: FileKey) -> Option<TailFile> {
        let f = self.files.remove(&key)?;
        self.index = None;
        self.order.retain(|k| *k != key);
        self.ready.remove(&key);
        Some(f)
    }

    fn watch(&mut self, dir: &Path) {
        if let Some(n) = &mut self.notifier
            && let Err(e) = n.watch(dir)
        {
            match e {
                NotifyError::Limit => self.fall_back_to_polling(&e),
                // The directory went away between the scan and the watch.
                NotifyError::Watch { ref source, .. }
                    if source.kind() == io::ErrorKind::NotFound => {}
                other => {
                    tracing::warn!(error = %other, "failed to watch a log directory; the rescan covers it")
                }
            }
        }
    }

    /// Scans every Pod and container directory.
    fn scan_all(&mut self) {
        self.dirty_dirs.clear();
        self.container_ids = self.s.layout.container_ids();
        let pods_dir = self.s.layout.pods_dir.clone();
        self.watch(&pods_dir);
        let pod_dirs = match self.s.layout.pod_dirs() {
            Ok(d) => d,
            Err(e) => {
                self.metrics.read_errors.with_label_values(&["scan"]).inc();
                tracing::warn!(dir = %pods_dir.display(), error = %e, "failed to list the pod log directory");
                return;
            }
        };
        let mut found = Vec::new();
        for pod in pod_dirs {
            self.watch(&pod);
            for c in self.s.layout.container_dirs(&pod).unwrap_or_default() {
                self.watch(&c);
                if let Err(e) = self
                    .s
                    .layout
                    .scan_container_dir(&c, &self.s.filter, &mut found)
                {
                    if e.kind() != io::ErrorKind::NotFound {
                        self.metrics.read_errors.with_label_values(&["scan"]).inc();
                        tracing::warn!(dir = %c.display(), error = %e, "failed to scan a container log directory");
                    }
                }
            }
        }
        let volumes_known = self.scan_volumes(&mut found);
        if let Some(n) = &mut self.notifier {
            n.forget_missing();
        }
        let gz_present: HashSet<FileKey> = found
            .iter()
            .filter(|f| f.kind == FileKind::Gz)
            .map(|f| FileKey {
                dev: f.dev,
                ino: f.ino,
            })
            .collect();
        self.apply_scan(found, |f| volumes_known || f.found.origin != Origin::Volume);
        self.prune_shipped(&gz_present);
    }

    /// The files Pods name in their emptyDir volumes (`loglet.io/files.<container>`), added to
    /// `found`. Returns false while the Pods' annotations cannot be known yet (the watcher's
    /// first lists), when what was found says nothing about volume files that went away.
    fn scan_volumes(&mut self, found: &mut Vec<Found>) -> bool {
        let generation = self.store.generation();
        if !self.store.is_enabled() {
            self.volumes_seen = Some(generation);
            return true;
        }
        if !self.store.is_synced() {
            return false;
        }
        let uids = match self.s.layout.volume_pod_uids() {
            Ok(u) => u,
            Err(e) => {
                self.metrics.read_errors.with_label_values(&["scan"]).inc();
                let dir = self.s.layout.kubelet_pods_dir.display();
                self.volume_warn.warn(|suppressed| {
                    tracing::warn!(dir = %dir, error = %e, suppressed, "failed to list the kubelet's Pod directory")
                });
                return false;
            }
        };
        let mut complete = true;
        for uid in uids {
            let Some(meta) = self.store.get(&uid) else {
                continue;
            };
            let named = |(k, _): &(String, String)| k.starts_with(annotation::FILES);
            if !meta.loglet_annotations.iter().any(named)
                && !meta.namespace_loglet_annotations.iter().any(named)
            {
                continue;
            }
            let source = Source {
                id: 0,
                path: String::new(),
                namespace: meta.namespace.clone(),
                pod: meta.name.clone(),
                pod_uid: uid.clone(),
                container: String::new(),
                container_id: None,
                restart_count: None,
                pod_meta: Some(meta.clone()),
                routing: Arc::default(),
                sidecar: None,
            };
            for spec in self.s.routes.volume_files(&source) {
                match self
                    .s
                    .layout
                    .scan_volume_files(&meta, &uid, &spec, &self.s.filter, found)
                {
                    Ok(Some(dir)) => self.watch(&dir),
                    Ok(None) => {}
                    Err(e) => {
                        // A path that leaves its volume stays refused; other errors leave the
                        // volume's files as they were until the next scan.
                        complete &= e.kind() == io::ErrorKind::PermissionDenied;
                        self.metrics.read_errors.with_label_values(&["scan"]).inc();
                        let (ns, pod) = (&meta.namespace, &meta.name);
                        self.volume_warn.warn(|suppressed| {
                            tracing::warn!(namespace = %ns, pod = %pod, volume = %spec.volume, error = %e, suppressed, "failed to list the files a Pod names in its volume")
                        });
                    }
                }
            }
        }
        // Retried at the next change of a Pod or the next rescan, not at every turn.
        self.volumes_seen = Some(generation);
        complete
    }

    /// Applies what a scan found: new and moved files, then files that went away (drained
    /// through their descriptor), then `.gz` files (which may hold the rest of one that went
    /// away unread), and last the loss of what nothing holds any more.
    fn apply_scan(&mut self, mut found: Vec<Found>, in_scope: impl Fn(&TailFile) -> bool) {
        let key_of = |f: &Found| FileKey {
            dev: f.dev,
            ino: f.ino,
        };
        let mut seen: HashSet<FileKey> = found.iter().map(key_of).collect();
        // A rename during the listing (readdir saw the old name, the stat found the new file
        // there) hides the renamed file from this scan: list its directory again before taking
        // it for deleted, or its lines would be read after the new file's.
        let missing: HashSet<PathBuf> = self
            .files
            .iter()
            .filter(|(k, f)| {
                !seen.contains(k)
                    && f.life == Life::Present
                    && !f.from_gz
                    && f.found.origin == Origin::Container
                    && in_scope(f)
            })
            .filter_map(|(_, f)| f.found.path.parent().map(Path::to_path_buf))
            .collect();
        for dir in missing {
            let mut again = Vec::new();
            if self
                .s
                .layout
                .scan_container_dir(&dir, &self.s.filter, &mut again)
                .is_ok()
            {
                for f in again {
                    if seen.insert(key_of(&f)) {
                        found.push(f);
                    }
                }
            }
        }
        let (gz, plain): (Vec<Found>, Vec<Found>) =
            found.into_iter().partition(|f| f.kind == FileKind::Gz);
        // Where this scan found an `N.log`: a file known there before and gone now was rotated
        // away (renamed, then compressed or deleted) between two scans.
        let current: HashSet<PathBuf> = plain
            .iter()
            .filter(|f| f.kind == FileKind::Current)
            .map(|f| f.path.clone())
            .collect();
        for f in plain {
            self.on_found(f);
        }
        let gone: Vec<FileKey> = self
            .files
            .iter()
            .filter(|(k, f)| {
                !seen.contains(k) && f.life == Life::Present && !f.from_gz && in_scope(f)
            })
            .map(|(k, _)| *k)
            .collect();
        for &k in &gone {
            if let Some(f) = self.files.get_mut(&k) {
                if f.found.kind == FileKind::Current && current.contains(&f.found.path) {
                    self.metrics.rotations.with_label_values(&["rename"]).inc();
                }
                f.life = Life::Gone {
                    since: Instant::now(),
                };
                self.ready.insert(k);
            }
        }
        for f in gz {
            let key = FileKey {
                dev: f.dev,
                ino: f.ino,
            };
            self.on_found_gz(f, key);
        }
        for k in gone {
            // Still here and never opened (or closed): what it had unread is in its `.gz`, if
            // the kubelet compressed it (seen in an earlier scan), else lost.
            if let Some(f) = self.files.get(&k)
                && f.handle.is_none()
                && !f.from_gz
            {
                let (fp, offset, unread) = (f.fingerprint, f.safe_offset(), f.unread());
                if !self.read_rest_from_gz(fp, Some(k), offset) {
                    self.finish(k, unread, "deleted_unread");
                }
            }
        }
        // Files whose inode another file took: the same, under their copy's own key.
        for f in std::mem::take(&mut self.displaced) {
            let read = self.read_rest_from_gz(f.fingerprint, None, f.safe_offset());
            if !read {
                let lost = f.unread();
                if lost > 0 {
                    self.metrics
                        .lost_bytes
                        .with_label_values(&["deleted_unread"])
                        .inc_by(lost);
                    tracing::warn!(path = %f.found.host_path, bytes = lost, "log bytes lost: the file went away before loglet read them");
                }
                if let Some(fp) = f.fingerprint {
                    self.shipped.insert(fp, f.key);
                }
            }
        }
    }

    /// Scans one directory inotify said changed (a Pod directory or the pods directory means
    /// new containers: scan all).
    fn scan_dir(&mut self, dir: &Path) {
        let is_container_dir =
            dir.parent().and_then(Path::parent) == Some(self.s.layout.pods_dir.as_path());
        if !is_container_dir {
            self.scan_all();
            return;
        }
        self.container_ids = self.s.layout.container_ids();
        let mut found = Vec::new();
        match self
            .s
            .layout
            .scan_container_dir(dir, &self.s.filter, &mut found)
        {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                self.metrics.read_errors.with_label_values(&["scan"]).inc();
                tracing::warn!(dir = %dir.display(), error = %e, "failed to scan a container log directory");
                return;
            }
        }
        let host_dir = PathBuf::from(self.s.layout.host_path(dir));
        self.apply_scan(found, |f| {
            Path::new(&f.found.host_path).parent() == Some(host_dir.as_path())
        });
    }

    fn link_container_id(&self, found: &Found) -> Option<String> {
        let current = match found.kind {
            FileKind::Current => found.host_path.clone(),
            _ => {
                let dir = Path::new(&found.host_path).parent()?;
                format!("{}/{}.log", dir.display(), found.restart)
            }
        };
        self.container_ids.get(&current).cloned()
    }

    /// A file's source from what its path tells, before the watcher reports its Pod.
    fn path_source(&self, found: &Found) -> Arc<Source> {
        let mut source = Source {
            id: Source::next_id(),
            path: found.host_path.clone(),
            namespace: found.namespace.clone(),
            pod: found.pod.clone(),
            pod_uid: found.pod_uid.clone(),
            container: found.container.clone(),
            container_id: self.link_container_id(found),
            restart_count: (found.origin == Origin::Container).then_some(found.restart),
            pod_meta: None,
            routing: Arc::default(),
            sidecar: None,
        };
        source.routing = Arc::new(self.s.routes.decide(&source));
        Arc::new(source)
    }

    fn on_found(&mut self, found: Found) {
        let key = FileKey {
            dev: found.dev,
            ino: found.ino,
        };
        if found.kind == FileKind::Gz {
            self.on_found_gz(found, key);
            return;
        }
        if let Some(f) = self.files.get(&key)
            && f.handle.is_none()
            && f.fingerprint.is_some()
            && read_head(&found.path, key).is_some_and(|h| fingerprint(&h) != f.fingerprint)
        {
            // A closed file's inode now holds another file: the old one went away, maybe into
            // a `.gz` this scan has yet to see (see `apply_scan`).
            if let Some(old) = self.forget(key) {
                if old.found.kind == FileKind::Current && old.found.path == found.path {
                    self.metrics.rotations.with_label_values(&["rename"]).inc();
                }
                self.displaced.push(old);
            }
        }
        if let Some(f) = self.files.get_mut(&key) {
            if f.found.kind != found.kind && found.kind == FileKind::Rotated {
                self.metrics.rotations.with_label_values(&["rename"]).inc();
            }
            if f.source.container_id.is_none() {
                let id = {
                    let current = match found.kind {
                        FileKind::Current => found.host_path.clone(),
                        _ => Path::new(&found.host_path)
                            .parent()
                            .map(|d| format!("{}/{}.log", d.display(), found.restart))
                            .unwrap_or_default(),
                    };
                    self.container_ids.get(&current).cloned()
                };
                if id.is_some() {
                    let mut src = clone_source(&f.source);
                    src.container_id = id;
                    f.source = Arc::new(src);
                }
            }
            if f.found.path != found.path || f.found.host_path != found.host_path {
                self.index = None;
            }
            // A file found empty (as each new `0.log` is) gets its fingerprint once it has a
            // first line, even when it is not read yet (its sink full, an older file of its
            // container first): without one, its `.gz` would not be known for its copy.
            if f.fingerprint.is_none() && found.size > 0 {
                f.fingerprint = match &f.handle {
                    Some(Handle::Plain(file)) => head_fingerprint(file),
                    _ => read_head(&found.path, key).as_deref().and_then(fingerprint),
                };
            }
            f.found.path = found.path;
            f.found.host_path = found.host_path;
            f.found.kind = found.kind;
            if found.size != f.size {
                f.size = found.size;
                self.ready.insert(key);
            }
            return;
        }
        self.add_file(found, key);
    }

    fn add_file(&mut self, found: Found, key: FileKey) {
        let now = Instant::now();
        let head = read_head(&found.path, key);
        let fp = head.as_deref().and_then(fingerprint);
        // Where to start: the checkpoint if it is this file's, else per config.
        let mut offset = 0;
        if let Some(pos) = self
            .restored
            .remove(&key)
            .or_else(|| self.checkpoints.committed(key))
        {
            if Some(pos.fingerprint) == fp {
                offset = pos.offset.min(found.size);
            } else {
                tracing::debug!(path = %found.host_path, "inode reused by a new file; reading it from the start");
            }
        } else if !self.started {
            let old = self.s.ignore_older_than > Duration::ZERO
                && SystemTime::now()
                    .duration_since(found.modified)
                    .is_ok_and(|age| age > self.s.ignore_older_than);
            if self.s.read_from == ReadFrom::End || old {
                offset = line_start_before(&found.path, found.size);
            }
        }
        self.metrics.files_discovered.inc();
        let source = self.path_source(&found);
        let f = TailFile {
            key,
            fingerprint: fp,
            size: found.size,
            found,
            source,
            meta_generation: u64::MAX,
            meta_known: false,
            first_seen: now,
            handle: None,
            life: Life::Present,
            offset,
            carry: Vec::new(),
            carry_start: offset,
            discarding: false,
            decoder: None,
            last_growth: now,
            acked_to: offset,
            from_gz: false,
            joiner: None,
        };
        tracing::debug!(path = %f.found.host_path, offset, "following a new log file");
        self.adopt(key, f);
    }

    /// A `.gz` is read unless what it holds was shipped from the file it was made of: from
    /// where a checkpoint or a file that went away unread left off, from its start when loglet
    /// never saw that file (rotated and compressed while loglet was down, before it was
    /// checkpointed), and not at all when the file was read to its end or is still being read.
    fn on_found_gz(&mut self, found: Found, gz_key: FileKey) {
        // A `.gz` too short to tell its first line (still being written, by a rotator that does
        // not write to a temporary name first) is looked at again once it has grown.
        if let Some((fp, seen)) = self.gz_seen.get(&gz_key)
            && (fp.is_some() || seen.size == found.size)
        {
            return;
        }
        let fp = read_gz_head(&found.path).as_deref().and_then(fingerprint);
        self.gz_seen.insert(gz_key, (fp, found.clone()));
        let Some(fp) = fp else {
            return;
        };
        // The compressed copy of a file still being read from its descriptor, renamed and
        // compressed between two scans: its name now tells its place in the rotation order
        // (the current name it was last seen under would put it after newer rotated files).
        if let Some(f) = self.files.values_mut().find(|f| {
            f.fingerprint == Some(fp) && !f.from_gz && matches!(f.life, Life::Gone { .. })
        }) {
            f.found.host_path.clone_from(&found.host_path);
            self.index = None;
        }
        if self.shipped.contains_key(&fp) {
            return;
        }
        // The checkpoints of this file: the original's, and its copy's if loglet was reading the
        // copy when it stopped; the furthest wins.
        let restored: Vec<(FileKey, u64)> = self
            .restored
            .iter()
            .filter(|(_, p)| p.fingerprint == fp)
            .map(|(k, p)| (*k, p.offset))
            .collect();
        for (k, _) in &restored {
            self.restored.remove(k);
        }
        let restored = restored.iter().map(|(_, o)| *o).max().map(|o| (None, o));
        // A closed file whose inode a new file took in this same scan: its copy is read from
        // where that file was left.
        let displaced = self
            .displaced
            .iter()
            .position(|f| f.fingerprint == Some(fp))
            .map(|i| (None, self.displaced.remove(i).safe_offset()));
        let unfinished = self
            .files
            .iter()
            .find(|(_, f)| {
                f.fingerprint == Some(fp)
                    && f.handle.is_none()
                    && matches!(f.life, Life::Gone { .. })
            })
            .map(|(k, f)| (Some(*k), f.safe_offset()));
        let never_seen = || {
            let tracked = self.files.values().any(|f| f.fingerprint == Some(fp));
            let wanted = self.started || self.s.read_from == ReadFrom::Beginning;
            (!tracked && wanted).then_some((None, 0))
        };
        let Some((original, offset)) = restored.or(displaced).or(unfinished).or_else(never_seen)
        else {
            return;
        };
        self.read_gz(found, original, offset, fp);
    }

    /// Reads the rest of a file that went away unread (still tracked as `original`, if it is)
    /// from its compressed copy, from `offset`, unless that copy was shipped already. Returns
    /// whether it does.
    fn read_rest_from_gz(
        &mut self,
        fp: Option<u64>,
        original: Option<FileKey>,
        offset: u64,
    ) -> bool {
        match (fp, self.gz_copy(fp)) {
            (Some(fp), Some(gz)) if !self.shipped.contains_key(&fp) => {
                self.read_gz(gz, original, offset, fp)
            }
            _ => false,
        }
    }

    /// The compressed copy (already seen) of the file with fingerprint `fp`, if it is on disk.
    fn gz_copy(&self, fp: Option<u64>) -> Option<Found> {
        let fp = fp?;
        self.gz_seen
            .values()
            .find(|(g, _)| *g == Some(fp))
            .map(|(_, found)| found.clone())
    }

    /// Reads what is left of a file (its lines before `offset` were shipped) from its compressed
    /// copy `found`, which takes the place of the file's entry (`original`) and checkpoint.
    /// The copy is followed under its own key: the original's inode, freed, may be any new
    /// file's by now. Returns false when the copy cannot be read.
    fn read_gz(&mut self, found: Found, original: Option<FileKey>, offset: u64, fp: u64) -> bool {
        let key = FileKey {
            dev: found.dev,
            ino: found.ino,
        };
        if self.files.contains_key(&key) {
            // Being read already.
            return true;
        }
        let file = match open_log(&found.path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %found.host_path, error = %e, "failed to open a rotated .gz file");
                return false;
            }
        };
        let mut gz = flate2::read::GzDecoder::new(file);
        if let Err(e) = io::copy(&mut (&mut gz).take(offset), &mut io::sink()) {
            tracing::warn!(path = %found.host_path, error = %e, "failed to skip to the checkpoint in a .gz file");
            return false;
        }
        tracing::info!(path = %found.host_path, offset, "reading the rest of a file rotated and compressed while it was unread");
        if let Some(old) = original {
            self.forget(old);
        }
        // The copy's checkpoint replaces the original's in one commit, so that a restart finds
        // one or the other.
        let moved = original.filter(|old| *old != key);
        if let Some(old) = moved {
            self.pending.update(old, Update::Forget(old));
        }
        self.pending.update(
            key,
            Update::Set(Position {
                dev: key.dev,
                ino: key.ino,
                fingerprint: fp,
                path: found.host_path.clone(),
                offset,
                finished: false,
                sidecar: None,
            }),
        );
        let now = Instant::now();
        let source = self.path_source(&found);
        let f = TailFile {
            key,
            fingerprint: Some(fp),
            size: u64::MAX,
            found,
            source,
            meta_generation: u64::MAX,
            meta_known: false,
            first_seen: now,
            handle: Some(Handle::Gz(Box::new(gz))),
            life: Life::Gone { since: now },
            offset,
            carry: Vec::new(),
            carry_start: offset,
            discarding: false,
            decoder: None,
            last_growth: now,
            acked_to: offset,
            from_gz: true,
            joiner: None,
        };
        self.adopt(key, f);
        true
    }

    /// Checkpoints whose files are gone (and not compressed under another name) are dropped.
    /// With `keep_volumes`, those of files in Pod volumes stay until the volumes are scanned.
    fn prune_restored(&mut self, keep_volumes: bool) {
        let volumes = self.s.layout.host_path(&self.s.layout.kubelet_pods_dir);
        let gone: Vec<FileKey> = self
            .restored
            .iter()
            .filter(|(_, p)| !(keep_volumes && Path::new(&p.path).starts_with(&volumes)))
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            if let Some(pos) = self.restored.remove(&key) {
                tracing::debug!(path = %pos.path, "dropping the checkpoint of a file that is gone");
                self.pending.update(key, Update::Forget(key));
            }
        }
    }

    /// One turn for each file with something to read. Returns whether anything was read.
    fn read_round(&mut self, out: &mut Outputs) -> bool {
        if self.ready.is_empty() || self.checkpoints.pending_batches() >= MAX_UNCOMMITTED_BATCHES {
            return false;
        }
        let mut progressed = false;
        let index = self
            .index
            .get_or_insert_with(|| FileIndex::build(&self.files, &self.s.layout));
        let mut blocked: Vec<FileKey> = Vec::new();
        for group in &index.siblings {
            // Where a container instance has several files (around a rotation), an older one's
            // size may predate its last writes (made just before the rename, not read yet): look
            // again, or the newer file would be read ahead of lines the older one still has.
            for key in group {
                if let Some(f) = self.files.get_mut(key)
                    && f.unread() == 0
                    && let Some(Handle::Plain(file)) = &f.handle
                    && let Ok(meta) = file.metadata()
                    && meta.len() > f.size
                {
                    f.size = meta.len();
                    self.ready.insert(*key);
                }
            }
            // Of its files only the oldest with lines left is read: order is kept across
            // rotation, also when several rotated (or compressed) files wait, as after loglet
            // was down through rotations.
            let files = || group.iter().filter_map(|k| self.files.get(k));
            if let Some(oldest) = files().filter(|f| f.unread() > 0).map(age).min() {
                blocked.extend(files().filter(|f| oldest < age(f)).map(|f| f.key));
            }
        }
        let order = self.order.clone();
        for key in order {
            if !self.ready.contains(&key) || blocked.contains(&key) {
                continue;
            }
            // Asked for each file: a batch sent in this round may have filled a sink's queue,
            // and every block read for it from then on would wait in memory.
            let full_sinks = self.blocked_sinks();
            if full_sinks != 0
                && self
                    .files
                    .get(&key)
                    .is_some_and(|f| f.source.routing.sinks & full_sinks != 0)
            {
                continue;
            }
            let more = self.read_file(key);
            progressed |= more;
            if !more {
                self.ready.remove(&key);
            }
            let full = self.pending.records.len() >= self.s.batch_max_records
                || self.pending.bytes >= self.s.batch_max_bytes;
            if full && !self.send(out) {
                return false;
            }
        }
        self.enforce_deleted_cap();
        progressed
    }

    /// Refreshes a file's Pod metadata from the store. Returns false while the file should wait
    /// for the watcher to report its Pod.
    fn refresh_meta(&mut self, key: FileKey) -> bool {
        let generation = self.store.generation();
        let Some(f) = self.files.get_mut(&key) else {
            return false;
        };
        if f.meta_generation == generation {
            return true;
        }
        if !self.store.is_enabled() {
            f.meta_generation = generation;
            return true;
        }
        match self.store.get(&f.found.pod_uid) {
            // Until the first lists are done the Pod may be known before its Namespace: wait
            // for that too (within the same bound), so the first lines carry its labels.
            Some(_) if !self.store.is_synced() && f.first_seen.elapsed() < self.s.metadata_wait => {
                false
            }
            Some(meta) => {
                f.meta_generation = generation;
                f.meta_known = true;
                if f.source
                    .pod_meta
                    .as_ref()
                    .is_none_or(|m| !Arc::ptr_eq(m, &meta))
                {
                    let mut src = clone_source(&f.source);
                    if src.container_id.is_none() {
                        src.container_id = meta
                            .container(&src.container)
                            .and_then(|c| c.container_id.clone());
                    }
                    src.pod_meta = Some(meta);
                    let routing = self.s.routes.decide(&src);
                    if routing != *src.routing {
                        src.routing = Arc::new(routing);
                    }
                    f.source = Arc::new(src);
                }
                true
            }
            None if f.meta_known => {
                // The Pod left the store (deleted, grace over): keep what the file had.
                f.meta_generation = generation;
                true
            }
            None => {
                if f.first_seen.elapsed() < self.s.metadata_wait {
                    return false;
                }
                f.meta_generation = generation;
                f.meta_known = true;
                self.metrics.metadata_missing.inc();
                tracing::debug!(path = %f.found.host_path, "no metadata for this Pod yet; sending with what the path tells");
                true
            }
        }
    }

    /// Reads one block of a file. Returns whether more may be waiting.
    fn read_file(&mut self, key: FileKey) -> bool {
        if !self.refresh_meta(key) {
            return false;
        }
        if !self.ensure_open(key) {
            return false;
        }
        let clock = Clock::now();
        let chunk = self.s.read_chunk;
        let Some(f) = self.files.get_mut(&key) else {
            return false;
        };
        let want = match f.handle.as_mut() {
            Some(Handle::Plain(file)) => match file.metadata() {
                Ok(meta) => {
                    let size = meta.len();
                    if size < f.offset {
                        // Copy-truncate: the file was emptied in place; its new content starts at 0.
                        self.metrics
                            .rotations
                            .with_label_values(&["truncate"])
                            .inc();
                        tracing::debug!(path = %f.found.host_path, "file truncated; reading it from the start");
                        let lost = f.size.saturating_sub(f.offset);
                        if lost > 0 {
                            self.metrics
                                .lost_bytes
                                .with_label_values(&["truncated"])
                                .inc_by(lost);
                        }
                        f.offset = 0;
                        f.carry.clear();
                        f.carry_start = 0;
                        f.discarding = false;
                        if let Some(d) = f.decoder.as_mut() {
                            d.flush_all(&mut self.decoded);
                        }
                        f.fingerprint = None;
                    }
                    if size != f.size {
                        f.last_growth = clock.now;
                    }
                    f.size = size;
                    if f.fingerprint.is_none() {
                        f.fingerprint = head_fingerprint(file);
                    }
                    (size - f.offset).min(chunk as u64) as usize
                }
                Err(e) => {
                    self.metrics.read_errors.with_label_values(&["stat"]).inc();
                    tracing::warn!(path = %f.found.host_path, error = %e, "failed to stat an open log file");
                    0
                }
            },
            Some(Handle::Gz(_)) => chunk,
            None => 0,
        };
        let mut got = 0;
        if want > 0 {
            let carry_len = f.carry.len();
            let mut buf = BytesMut::with_capacity(carry_len + want);
            buf.extend_from_slice(&f.carry);
            buf.resize(carry_len + want, 0);
            let res = match f.handle.as_mut() {
                Some(Handle::Plain(file)) => read_at_full(file, &mut buf[carry_len..], f.offset),
                Some(Handle::Gz(gz)) => read_full(gz.as_mut(), &mut buf[carry_len..]),
                None => Ok(0),
            };
            match res {
                Ok(n) => got = n,
                Err(e) => {
                    self.metrics.read_errors.with_label_values(&["read"]).inc();
                    tracing::warn!(path = %f.found.host_path, error = %e, "failed to read a log file");
                }
            }
            buf.truncate(carry_len + got);
            if got > 0 {
                f.offset += got as u64;
                if f.from_gz {
                    f.last_growth = clock.now;
                }
                self.metrics.read_bytes.inc_by(got as u64);
                let lines = split_lines(
                    f,
                    buf.freeze(),
                    carry_len,
                    &self.s.decode,
                    &clock,
                    &mut self.decoded,
                );
                self.metrics.read_lines.inc_by(lines);
            } else if f.from_gz {
                // The end of a `.gz`: what it held is read.
                f.size = f.offset;
            }
        }
        self.emit(key);
        want > 0 && got == want
    }

    /// Moves decoded lines into the pending batch and records the file's new safe position.
    fn emit(&mut self, key: FileKey) {
        self.emit_with(key, false);
    }

    /// [`Tailer::emit`]; with `flush`, a sidecar stage also lets go of what it holds.
    fn emit_with(&mut self, key: FileKey, flush: bool) {
        let Some(f) = self.files.get_mut(&key) else {
            return;
        };
        if let Some(d) = f.decoder.as_mut() {
            let st = d.take_stats();
            if st.malformed > 0 {
                self.metrics
                    .lines_malformed
                    .with_label_values(&[d.format().as_str()])
                    .inc_by(st.malformed);
            }
            if let Some(sample) = st.malformed_sample {
                let path = &f.found.host_path;
                self.malformed_warn.warn(|suppressed| {
                    tracing::warn!(path = %path, reason = ?sample.reason, line = %String::from_utf8_lossy(&sample.line), suppressed, "malformed log line passed on as raw text")
                });
            }
            self.metrics.lines_truncated.inc_by(st.truncated);
            self.metrics.partial_merged.inc_by(st.merged);
            self.metrics.partial_flushed.inc_by(st.flushed);
        }
        let source = f.source.clone();
        // Multi-line records are joined first (a held record keeps the checkpoint back).
        let rule = source.routing.multiline.as_ref();
        if f.joiner.as_ref().map(Joiner::rule) != rule {
            let mut held = Vec::new();
            if let Some(mut old) = f.joiner.take() {
                old.flush_all(&mut held);
            }
            f.joiner = rule.map(|r| Joiner::new(r.clone(), self.s.multiline));
            held.append(&mut self.decoded);
            self.decoded = held;
        }
        if let Some(j) = f.joiner.as_mut() {
            let now = Instant::now();
            let mut joined = Vec::with_capacity(self.decoded.len());
            for d in self.decoded.drain(..) {
                j.push(d, now, &mut joined);
            }
            if flush {
                j.flush_all(&mut joined);
            } else {
                j.flush_expired(now, &mut joined);
            }
            self.decoded = joined;
        }
        // A streaming sidecar's lines pass through its stage, which may hold some back.
        let mut stage_state = None;
        let mut stage_from = None;
        if let Some(spec) = source
            .routing
            .sidecar
            .as_ref()
            .filter(|_| f.found.origin == Origin::Container)
        {
            let dir = container_dir(&f.found.host_path).unwrap_or_default();
            let (stage, last) = match self.stages.get_mut(dir) {
                Some(e) if e.0.spec == *spec => e,
                _ => {
                    let restored = self.stage_states.remove(dir);
                    let stage = Stage::new(
                        spec.clone(),
                        restored.as_ref(),
                        self.s.decode.partial_flush_timeout,
                    );
                    self.stages.insert(dir.to_string(), (stage, key));
                    self.stages.get_mut(dir).expect("just inserted")
                }
            };
            *last = key;
            stage.process(&source, &mut self.decoded, &mut self.staged);
            if flush {
                stage.flush(&source, &mut self.staged);
            }
            stage_from = stage.pending_from();
            stage_state = Some(stage.state());
        } else {
            self.staged
                .extend(self.decoded.drain(..).map(|d| (d, source.clone())));
        }
        let routing = &source.routing;
        if routing.excluded {
            if !self.staged.is_empty() {
                self.metrics
                    .records_discarded
                    .with_label_values(&["excluded"])
                    .inc_by(self.staged.len() as u64);
                self.staged.clear();
            }
        } else if !self.staged.is_empty() {
            let mut bucket = routing.rate.map(|rate| {
                let ns = source.namespace.as_str();
                if !self.buckets.contains_key(ns) {
                    self.buckets.insert(ns.to_string(), Bucket::new(rate));
                }
                let b = self.buckets.get_mut(ns).expect("just inserted");
                b.set_rate(rate);
                b
            });
            let now = Instant::now();
            let (mut shipped, mut limited) = (0u64, 0u64);
            let (mut lifted, mut unparsed) = (0u64, 0u64);
            for (d, source) in self.staged.drain(..) {
                if let Some(b) = bucket.as_mut()
                    && !b.take(d.line.len(), now)
                {
                    limited += 1;
                    continue;
                }
                shipped += 1;
                self.pending.bytes += d.line.len();
                let fields = routing
                    .parser
                    .and_then(|p| crate::parse::lift(p, &d.line, crate::parse::RESERVED))
                    .map(Box::new);
                if fields.is_some() {
                    lifted += 1;
                } else if routing.parser.is_some() {
                    unparsed += 1;
                }
                self.pending.records.push(Record {
                    line: d.line,
                    time_ns: d.time_ns,
                    stream: d.stream,
                    flags: d.flags,
                    fields,
                    source,
                });
            }
            self.metrics
                .route_records
                .with_label_values(&[&routing.route])
                .inc_by(shipped);
            if let Some(p) = routing.parser {
                let name = p.as_str();
                let m = &self.metrics.parsed_lines;
                m.with_label_values(&[name, "lifted"]).inc_by(lifted);
                m.with_label_values(&[name, "unparsed"]).inc_by(unparsed);
            }
            if limited > 0 {
                let m = &self.metrics;
                m.records_discarded
                    .with_label_values(&["rate_limited"])
                    .inc_by(limited);
                m.rate_limited_records
                    .with_label_values(&[&source.namespace])
                    .inc_by(limited);
                let ns = &source.namespace;
                self.rate_warn.warn(|suppressed| {
                    tracing::warn!(namespace = %ns, dropped = limited, suppressed, "namespace over its rate limit; lines dropped")
                });
            }
        }
        let f = self.files.get_mut(&key).expect("file present");
        let safe = stage_from.map_or(f.safe_offset(), |p| p.min(f.safe_offset()));
        if safe != f.acked_to {
            f.acked_to = safe;
            if let Some(fp) = f.fingerprint {
                let pos = Position {
                    dev: key.dev,
                    ino: key.ino,
                    fingerprint: fp,
                    path: f.found.host_path.clone(),
                    offset: safe,
                    finished: false,
                    sidecar: stage_state,
                };
                self.pending.update(key, Update::Set(pos));
            }
        }
    }

    fn ensure_open(&mut self, key: FileKey) -> bool {
        let Some(f) = self.files.get(&key) else {
            return false;
        };
        if f.handle.is_some() {
            return true;
        }
        if matches!(f.life, Life::Gone { .. }) {
            return false;
        }
        if self.open_files() >= self.s.max_open_files && !self.close_idle() {
            return false;
        }
        let f = self.files.get_mut(&key).expect("file present");
        match open_log(&f.found.path) {
            Ok(file) => {
                // The path may now be another file (rotated between scan and open).
                match file.metadata() {
                    Ok(m) if m.dev() == key.dev && m.ino() == key.ino => {
                        f.handle = Some(Handle::Plain(file));
                        true
                    }
                    _ => {
                        self.dirty_dirs.insert(
                            f.found
                                .path
                                .parent()
                                .map(Path::to_path_buf)
                                .unwrap_or_default(),
                        );
                        false
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(dir) = f.found.path.parent() {
                    self.dirty_dirs.insert(dir.to_path_buf());
                }
                false
            }
            Err(e) => {
                self.metrics.read_errors.with_label_values(&["open"]).inc();
                tracing::warn!(path = %f.found.host_path, error = %e, "failed to open a log file");
                false
            }
        }
    }

    /// Log files held open (counted, not tracked, so that no way a file leaves can skew it).
    fn open_files(&self) -> usize {
        self.files.values().filter(|f| f.handle.is_some()).count()
    }

    /// Closes the least recently grown file that is read to its end, to make room under the
    /// open-file limit. Returns whether one was closed.
    fn close_idle(&mut self) -> bool {
        let victim = self
            .files
            .values()
            .filter(|f| {
                matches!(f.handle, Some(Handle::Plain(_)))
                    && f.life == Life::Present
                    && f.unread() == 0
            })
            .min_by_key(|f| f.last_growth)
            .map(|f| f.key);
        match victim.and_then(|k| self.files.get_mut(&k)) {
            Some(f) => {
                f.handle = None;
                true
            }
            None => false,
        }
    }

    /// Flushes partial lines past their timeout, and lets go of files that are finished: gone and
    /// drained, or rotated and idle.
    fn expire(&mut self, out: &mut Outputs) {
        let clock = Clock::now();
        let now = clock.now;
        let linger = self.s.decode.partial_flush_timeout;
        let mut finished = Vec::new();
        let mut rotated_idle = Vec::new();
        let keys: Vec<FileKey> = self.files.keys().copied().collect();
        for key in keys {
            let f = self.files.get_mut(&key).expect("file present");
            if let Some(d) = f.decoder.as_mut()
                && d.next_deadline().is_some_and(|t| t <= now)
            {
                d.flush_expired(&clock, &mut self.decoded);
                self.emit(key);
            }
            let f = self.files.get(&key).expect("file present");
            if f.joiner
                .as_ref()
                .and_then(Joiner::next_deadline)
                .is_some_and(|t| t <= now)
            {
                self.emit(key);
            }
            let f = self.files.get(&key).expect("file present");
            let drained = f.handle.is_some() && f.unread() == 0 && !self.ready.contains(&key);
            let idle = now.duration_since(f.last_growth) >= linger;
            match f.life {
                Life::Gone { .. } if drained && idle => finished.push(key),
                // A rotated file is no longer written: close it (a later write reopens it).
                Life::Present if drained && idle && f.found.kind == FileKind::Rotated => {
                    rotated_idle.push(key)
                }
                _ => {}
            }
        }
        let due: Vec<FileKey> = self
            .stages
            .values()
            .filter(|(stage, _)| stage.deadline().is_some_and(|t| t <= now))
            .map(|(_, key)| *key)
            .collect();
        for key in due {
            if self.files.contains_key(&key) {
                self.emit_with(key, true);
            } else {
                // Its file is finished (and flushed then): the stage waits, with its state, for
                // the sidecar's next file.
                self.stages.retain(|dir, (stage, k)| {
                    if *k == key {
                        self.stage_states.insert(dir.clone(), stage.state());
                    }
                    *k != key
                });
            }
        }
        for key in rotated_idle {
            self.flush_file_end(key, &clock);
            if let Some(f) = self.files.get_mut(&key) {
                f.handle = None;
            }
        }
        for key in finished {
            self.flush_file_end(key, &clock);
            self.finish(key, 0, "");
        }
        if self.pending.records.len() >= self.s.batch_max_records {
            self.send(out);
        }
    }

    /// At the end of a file that will not grow: the incomplete last line and partial lines go
    /// out as they are.
    fn flush_file_end(&mut self, key: FileKey, clock: &Clock) {
        let Some(f) = self.files.get_mut(&key) else {
            return;
        };
        if !f.carry.is_empty() {
            let line = Bytes::from(std::mem::take(&mut f.carry));
            let start = f.carry_start;
            let end = start + line.len() as u64;
            let truncated = f.discarding;
            f.discarding = false;
            f.carry_start = f.offset;
            let dec = decoder_for(f, &line, &self.s.decode);
            dec.push(line, start, end, truncated, clock, &mut self.decoded);
            self.metrics.read_lines.inc();
        }
        if let Some(d) = f.decoder.as_mut() {
            d.flush_all(&mut self.decoded);
        }
        self.emit_with(key, true);
    }

    /// Lets a file go: closes it and forgets its checkpoint once what came before is delivered.
    fn finish(&mut self, key: FileKey, lost: u64, reason: &'static str) {
        let Some(f) = self.forget(key) else {
            return;
        };
        if lost > 0 {
            self.metrics
                .lost_bytes
                .with_label_values(&[reason])
                .inc_by(lost);
            tracing::warn!(path = %f.found.host_path, bytes = lost, reason, "log bytes lost: the file went away before loglet read them");
        }
        let update = match f.fingerprint {
            Some(fp) => {
                self.shipped.insert(fp, key);
                Update::Set(Position {
                    dev: key.dev,
                    ino: key.ino,
                    fingerprint: fp,
                    path: f.found.host_path.clone(),
                    offset: f.offset,
                    finished: true,
                    sidecar: self
                        .stages
                        .values()
                        .find(|(_, k)| *k == key)
                        .map(|(stage, _)| stage.state()),
                })
            }
            None => Update::Forget(key),
        };
        self.pending.update(key, update);
    }

    /// After a full scan: the marks of shipped files and the `.gz` files looked at are kept
    /// only while such a `.gz` is still on disk, so both stay as small as the kubelet's
    /// rotation keeps the directories.
    fn prune_shipped(&mut self, gz_present: &HashSet<FileKey>) {
        self.gz_seen.retain(|k, _| gz_present.contains(k));
        let live: HashSet<u64> = self.gz_seen.values().filter_map(|(fp, _)| *fp).collect();
        let gone: Vec<(u64, FileKey)> = self
            .shipped
            .iter()
            .filter(|(fp, _)| !live.contains(fp))
            .map(|(fp, k)| (*fp, *k))
            .collect();
        for (fp, key) in gone {
            self.shipped.remove(&fp);
            if !self.files.contains_key(&key) {
                self.pending.update(key, Update::Forget(key));
            }
        }
    }

    /// Deleted files held open cost disk; past the cap, the oldest are let go and counted.
    fn enforce_deleted_cap(&mut self) {
        loop {
            let held: u64 = self
                .files
                .values()
                .filter(|f| {
                    matches!(f.life, Life::Gone { .. })
                        && matches!(f.handle, Some(Handle::Plain(_)))
                })
                .map(|f| f.size)
                .sum();
            if held <= self.s.max_deleted_bytes_held {
                return;
            }
            let oldest = self
                .files
                .values()
                .filter(|f| matches!(f.handle, Some(Handle::Plain(_))))
                .filter_map(|f| match f.life {
                    Life::Gone { since } => Some((since, f.key, f.unread())),
                    Life::Present => None,
                })
                .min();
            match oldest {
                Some((_, key, unread)) => self.finish(key, unread, "deleted_held_cap"),
                None => return,
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let linger = self.s.decode.partial_flush_timeout;
        self.files
            .iter()
            .filter_map(|(key, f)| {
                let partial = [
                    f.decoder.as_ref().and_then(Decoder::next_deadline),
                    f.joiner.as_ref().and_then(Joiner::next_deadline),
                ]
                .into_iter()
                .flatten()
                .min();
                // As `expire` closes it: drained, and idle since.
                let drained = f.handle.is_some() && f.unread() == 0 && !self.ready.contains(key);
                let close = (drained
                    && (f.found.kind == FileKind::Rotated || matches!(f.life, Life::Gone { .. })))
                .then(|| f.last_growth + linger);
                [partial, close].into_iter().flatten().min()
            })
            .chain(self.stages.values().filter_map(|(s, _)| s.deadline()))
            .min()
    }

    /// Hands the pending batch to every sink, waiting while their queues are full (so reading
    /// pauses). Returns false when loglet is stopping and the batch could not be handed over.
    fn send(&mut self, out: &mut Outputs) -> bool {
        let pending = std::mem::take(&mut self.pending);
        let records = pending.records.len();
        let groups = fan_out(pending.records, out.sinks.len());
        let receivers = groups.iter().map(|(sinks, _)| sinks.len()).sum();
        let ack = self
            .checkpoints
            .register(pending.updates, records, receivers);
        for (sinks, records) in groups {
            let batch = Arc::new(Batch {
                records,
                ack: ack.clone(),
            });
            for &sink in &sinks {
                if !self.hand_over(out, sink, batch.clone()) {
                    return false;
                }
            }
        }
        self.metrics.batches_queued.set(
            out.sinks
                .iter()
                .map(|tx| (tx.max_capacity() - tx.capacity()) as i64)
                .max()
                .unwrap_or(0),
        );
        true
    }

    /// Puts a batch in its sink's queue, or, when the queue is full, keeps it until there is
    /// room (reading of that sink's files pauses meanwhile). False when the sink is gone.
    fn hand_over(&mut self, out: &Outputs, sink: usize, batch: Arc<Batch>) -> bool {
        if self.waiting.len() < out.sinks.len() {
            self.waiting.resize_with(out.sinks.len(), VecDeque::new);
        }
        if !self.waiting[sink].is_empty() {
            self.waiting[sink].push_back(batch);
            return true;
        }
        match out.sinks[sink].try_reserve() {
            Ok(permit) => {
                permit.send(batch);
                true
            }
            Err(mpsc::error::TrySendError::Full(())) => {
                self.waiting[sink].push_back(batch);
                true
            }
            // The sink is gone (stopping): this batch is never acknowledged, so its lines are
            // read again after a restart.
            Err(mpsc::error::TrySendError::Closed(())) => false,
        }
    }

    /// Offers the waiting batches to their sinks again, oldest first. False when a sink is gone.
    fn offer_waiting(&mut self, out: &Outputs) -> bool {
        for (sink, waiting) in self.waiting.iter_mut().enumerate() {
            while let Some(batch) = waiting.front() {
                match out.sinks[sink].try_reserve() {
                    Ok(permit) => {
                        permit.send(batch.clone());
                        waiting.pop_front();
                    }
                    Err(mpsc::error::TrySendError::Full(())) => break,
                    Err(mpsc::error::TrySendError::Closed(())) => return false,
                }
            }
        }
        true
    }

    /// Waits at most `wait` for one of the full sinks to take its oldest waiting batch.
    fn wait_for_room(&mut self, out: &Outputs, wait: Duration) {
        let room = self
            .waiting
            .iter()
            .enumerate()
            .filter(|(_, w)| !w.is_empty())
            .map(|(sink, _)| Box::pin(async move { (sink, out.sinks[sink].reserve().await) }))
            .collect::<Vec<_>>();
        if room.is_empty() {
            return;
        }
        let room = futures::future::select_all(room);
        // A closed sink is seen by `offer_waiting` next.
        if let Ok(((sink, Ok(permit)), _, _)) = out
            .runtime
            .block_on(async { tokio::time::timeout(wait, room).await })
            && let Some(batch) = self.waiting[sink].pop_front()
        {
            permit.send(batch);
        }
    }

    /// The sinks (as a routing mask) with batches waiting for room.
    fn blocked_sinks(&self) -> u64 {
        self.waiting
            .iter()
            .enumerate()
            .filter(|(i, w)| *i < MAX_SINKS && !w.is_empty())
            .fold(0, |mask, (i, _)| mask | (1 << i))
    }

    /// While reading is paused for a full sink: the files that wait are opened (within the
    /// open-file budget), so that what the kubelet rotates and deletes meanwhile stays readable
    /// through the descriptor, and their sizes and fingerprints are kept current, for the lag
    /// metrics and to know a file again in its `.gz`.
    fn refresh_sizes(&mut self) {
        let waiting: Vec<FileKey> = self
            .files
            .values()
            .filter(|f| {
                f.handle.is_none()
                    && f.life == Life::Present
                    && (f.found.kind == FileKind::Current
                        || f.unread() > 0
                        || f.fingerprint.is_none())
            })
            .map(|f| f.key)
            .collect();
        let mut room = self.s.max_open_files.saturating_sub(self.open_files());
        for key in waiting {
            if room == 0 {
                break;
            }
            if self.ensure_open(key) {
                room -= 1;
            }
        }
        for f in self.files.values_mut() {
            if let Some(Handle::Plain(file)) = &f.handle
                && let Ok(meta) = file.metadata()
            {
                f.size = meta.len();
                if f.fingerprint.is_none() {
                    f.fingerprint = head_fingerprint(file);
                }
            }
        }
    }

    fn publish_stats(&self) {
        let m = &self.metrics;
        m.files_watched.set(self.files.len() as i64);
        m.files_open.set(self.open_files() as i64);
        m.unread_bytes.set(
            self.files
                .values()
                .filter(|f| !f.from_gz)
                .map(TailFile::unread)
                .sum::<u64>() as i64,
        );
        let gone = self
            .files
            .values()
            .filter(|f| matches!(f.life, Life::Gone { .. }) && f.handle.is_some());
        m.deleted_files_held.set(gone.clone().count() as i64);
        m.deleted_bytes_held.set(
            gone.map(|f| if f.from_gz { 0 } else { f.size })
                .sum::<u64>() as i64,
        );
    }
}

/// Splits a batch by sink into groups of `(sinks, records)`, each sent once to each of its
/// sinks. When every record goes to the same sinks (one route, the usual case) there is one
/// group and nothing is copied.
fn fan_out(records: Vec<Record>, sinks: usize) -> Vec<(Vec<usize>, Vec<Record>)> {
    if records.is_empty() {
        return Vec::new();
    }
    let (any, all) = records.iter().fold((0u64, u64::MAX), |(any, all), r| {
        (any | r.source.routing.sinks, all & r.source.routing.sinks)
    });
    let receiving = (0..sinks.min(MAX_SINKS)).filter(|&i| any & (1 << i) != 0);
    if any == all {
        return vec![(receiving.collect(), records)];
    }
    receiving
        .map(|i| {
            let part: Vec<Record> = records
                .iter()
                .filter(|r| r.source.routing.sends_to(i))
                .cloned()
                .collect();
            (vec![i], part)
        })
        .collect()
}

/// A namespace's token bucket: lines and bytes per second, up to `burst` seconds' worth saved.
struct Bucket {
    rate: Rate,
    lines: f64,
    bytes: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: Rate) -> Bucket {
        let burst = rate.burst.as_secs_f64();
        Bucket {
            rate,
            lines: rate.lines_per_second.map_or(0.0, |l| l as f64 * burst),
            bytes: rate.bytes_per_second.map_or(0.0, |b| b as f64 * burst),
            last: Instant::now(),
        }
    }

    fn set_rate(&mut self, rate: Rate) {
        if rate != self.rate {
            *self = Bucket::new(rate);
        }
    }

    /// Takes one line of `len` bytes if both buckets hold enough.
    fn take(&mut self, len: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let burst = self.rate.burst.as_secs_f64();
        let refill = |tokens: &mut f64, per_second: Option<u64>| {
            if let Some(r) = per_second {
                *tokens = (*tokens + elapsed * r as f64).min(r as f64 * burst);
            }
        };
        refill(&mut self.lines, self.rate.lines_per_second);
        refill(&mut self.bytes, self.rate.bytes_per_second);
        let lines = self.rate.lines_per_second.is_some();
        let bytes = self.rate.bytes_per_second.is_some();
        if (lines && self.lines < 1.0) || (bytes && self.bytes < len as f64) {
            return false;
        }
        if lines {
            self.lines -= 1.0;
        }
        if bytes {
            self.bytes -= len as f64;
        }
        true
    }
}

/// Orders a container instance's files oldest first: the rotated ones by the kubelet's
/// timestamp suffix (`0.log.20261122-101500`, with or without `.gz`), the current `0.log` last.
fn rotation_age(host_path: &str) -> (bool, &str) {
    let name = host_path.rsplit_once('/').map_or(host_path, |(_, n)| n);
    let suffix = name.split_once(".log").map_or("", |(_, rest)| rest);
    (suffix.is_empty(), suffix)
}

/// How many log files may be open at once: the configured number, within the process's
/// open-file limit less what the sinks' connections, the API watch, inotify and the runtime need.
/// The soft limit is raised to the hard one first, as a node agent should.
fn open_file_budget(configured: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (lim.current, lim.maximum)
        && cur < max
    {
        lim.current = Some(max);
        if setrlimit(Resource::Nofile, lim).is_err() {
            lim.current = Some(cur);
        }
    }
    // None: unlimited.
    let Some(soft) = lim.current else {
        return configured;
    };
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    let budget = (soft / 2).max(soft.saturating_sub(OPEN_FILE_RESERVE));
    if budget < configured {
        tracing::info!(
            configured,
            budget,
            nofile = soft,
            "fewer log files are held open than logs.max_open_files says, to stay within the open-file limit"
        );
    }
    configured.min(budget).max(1)
}

/// Descriptors kept for everything but log files: sinks' connections, the API, inotify,
/// checkpoints, the metrics server, the runtime.
const OPEN_FILE_RESERVE: usize = 64;

/// The files that follow one another through rotation: a container instance's (its directory
/// and restart count), or the successive files at one name in a Pod volume.
/// Where a file stands in its container instance's rotation: the current file last; between
/// two files at the same name (a rename not seen yet), the one known longer is the older.
fn age(f: &TailFile) -> ((bool, &str), Instant) {
    (rotation_age(&f.found.host_path), f.first_seen)
}

/// Lookups over the set of files, built when first needed after files came, went or moved.
struct FileIndex {
    /// The files of each directory, for inotify's "modified" (thousands a second on a busy node).
    by_dir: HashMap<PathBuf, Vec<FileKey>>,
    /// The files of each container instance with more than one (around a rotation).
    siblings: Vec<Vec<FileKey>>,
}

impl FileIndex {
    fn build(files: &HashMap<FileKey, TailFile>, layout: &Layout) -> FileIndex {
        let mut by_dir: HashMap<PathBuf, Vec<FileKey>> = HashMap::new();
        let mut lineages: HashMap<(&str, u32), Vec<FileKey>> = HashMap::new();
        for (key, f) in files {
            // Where the file is (a Docker log: its target) and where the kubelet lists it.
            let read_at = f.found.path.parent().map(Path::to_path_buf);
            let listed = Path::new(&f.found.host_path)
                .parent()
                .map(|p| layout.under_root(p));
            let listed = listed.filter(|l| Some(l) != read_at.as_ref());
            for d in [read_at, listed].into_iter().flatten() {
                by_dir.entry(d).or_default().push(*key);
            }
            if let Some(l) = lineage(f) {
                lineages.entry(l).or_default().push(*key);
            }
        }
        let siblings = lineages.into_values().filter(|g| g.len() > 1).collect();
        FileIndex { by_dir, siblings }
    }
}

fn lineage(f: &TailFile) -> Option<(&str, u32)> {
    match f.found.origin {
        Origin::Container => container_dir(&f.found.host_path).map(|d| (d, f.found.restart)),
        Origin::Volume => Some((f.found.host_path.as_str(), u32::MAX)),
    }
}

/// The container directory part of a log file's host path.
fn container_dir(host_path: &str) -> Option<&str> {
    host_path.rsplit_once('/').map(|(dir, _)| dir)
}

fn clone_source(s: &Source) -> Source {
    Source {
        id: Source::next_id(),
        path: s.path.clone(),
        namespace: s.namespace.clone(),
        pod: s.pod.clone(),
        pod_uid: s.pod_uid.clone(),
        container: s.container.clone(),
        container_id: s.container_id.clone(),
        restart_count: s.restart_count,
        pod_meta: s.pod_meta.clone(),
        routing: s.routing.clone(),
        sidecar: s.sidecar.clone(),
    }
}

fn decoder_for<'a>(f: &'a mut TailFile, line: &[u8], opts: &DecodeOptions) -> &'a mut Decoder {
    let format = match f.found.origin {
        Origin::Container => FileFormat::detect(line),
        Origin::Volume => FileFormat::Plain,
    };
    f.decoder.get_or_insert_with(|| Decoder::new(format, *opts))
}

/// Splits a block into lines and decodes them. `block` starts with the file's carried
/// incomplete line (`carry_len` bytes, already searched for newlines). Returns the line count.
fn split_lines(
    f: &mut TailFile,
    block: Bytes,
    carry_len: usize,
    opts: &DecodeOptions,
    clock: &Clock,
    out: &mut Vec<Decoded>,
) -> u64 {
    let cap = opts.max_line_bytes + FRAMING_BYTES;
    let base = f.carry_start;
    let mut start = 0usize;
    let mut lines = 0;
    for nl in memchr::memchr_iter(b'\n', &block[carry_len..]) {
        let end = carry_len + nl;
        let truncated = f.discarding || end - start > cap;
        let line_end = if truncated {
            (start + cap).min(end)
        } else {
            end
        };
        let line = block.slice(start..line_end);
        let dec = decoder_for(f, &line, opts);
        dec.push(
            line,
            base + start as u64,
            base + end as u64 + 1,
            truncated,
            clock,
            out,
        );
        f.discarding = false;
        lines += 1;
        start = end + 1;
    }
    // The rest is an incomplete line: keep it (up to the cap) for the next block.
    let rest = &block[start..];
    f.carry_start = base + start as u64;
    f.carry.clear();
    if rest.len() > cap {
        f.carry.extend_from_slice(&rest[..cap]);
        f.discarding = true;
    } else {
        f.carry.extend_from_slice(rest);
    }
    lines
}

fn read_at_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return if got > 0 { Ok(got) } else { Err(e) },
        }
    }
    Ok(got)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return if got > 0 { Ok(got) } else { Err(e) },
        }
    }
    Ok(got)
}

/// The fingerprint of an open file, `None` while it is too short to tell.
fn head_fingerprint(file: &File) -> Option<u64> {
    read_head_file(file).as_deref().and_then(fingerprint)
}

fn read_head_file(file: &File) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; FINGERPRINT_BYTES];
    let n = read_at_full(file, &mut buf, 0).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// Opens a log file for reading without blocking: a FIFO put where a log file was (between a
/// scan and the open) would otherwise hang the tail thread until someone writes to it.
fn open_log(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// The first bytes of the file at `path` if it still is file `key` (not renamed away since).
fn read_head(path: &Path, key: FileKey) -> Option<Vec<u8>> {
    let file = open_log(path).ok()?;
    let meta = file.metadata().ok()?;
    (meta.dev() == key.dev && meta.ino() == key.ino).then(|| read_head_file(&file))?
}

fn read_gz_head(path: &Path) -> Option<Vec<u8>> {
    let mut gz = flate2::read::GzDecoder::new(open_log(path).ok()?);
    let mut buf = vec![0u8; FINGERPRINT_BYTES];
    let n = read_full(&mut gz, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// The start of the line that `size` falls in or after (for starting at the end of a file
/// without cutting a line in two).
fn line_start_before(path: &Path, size: u64) -> u64 {
    const BACK: u64 = 64 * 1024;
    let Ok(file) = open_log(path) else {
        return size;
    };
    let from = size.saturating_sub(BACK);
    let mut buf = vec![0u8; (size - from) as usize];
    let Ok(n) = read_at_full(&file, &mut buf, from) else {
        return size;
    };
    match memchr::memrchr(b'\n', &buf[..n]) {
        Some(i) => from + i as u64 + 1,
        None => size,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_use_the_first_line_and_wait_for_it() {
        assert_eq!(fingerprint(b"abc"), None);
        assert_eq!(fingerprint(b"abc\ndef"), fingerprint(b"abc\nxyz"));
        assert_ne!(fingerprint(b"abc\n"), fingerprint(b"abd\n"));
        let long = vec![b'x'; 300];
        assert_eq!(fingerprint(&long), fingerprint(&long[..256]));
        // Known value: the hash is persisted, so it must never change.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn starting_at_the_end_does_not_cut_a_line() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        std::fs::write(&p, b"one\ntwo\nthr").unwrap();
        assert_eq!(line_start_before(&p, 11), 8);
        std::fs::write(&p, b"one\ntwo\n").unwrap();
        assert_eq!(line_start_before(&p, 8), 8);
    }
}
