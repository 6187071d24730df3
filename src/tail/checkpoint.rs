//! tail: checkpoints: for each file identity, the offset up to which every line was acknowledged by
//! every sink, written atomically (temp file, fsync, rename, fsync of the directory).
//!
//! The tailer registers every batch with the positions its records reach; sinks acknowledge
//! batches in any order; a position becomes durable only when its batch and every batch before it
//! are acknowledged (a watermark over sequence numbers). So a crash re-sends at most what was in
//! flight, and never skips what was not delivered.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;

/// A file's identity on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
}

/// One file's durable position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub dev: u64,
    pub ino: u64,
    /// Hash of the file's first line (up to 256 bytes), against inode reuse and to find the file
    /// again once the kubelet has gzipped it.
    #[serde(with = "hex_u64")]
    pub fingerprint: u64,
    /// Where the file was last seen, for people reading the file.
    pub path: String,
    /// Everything before this offset was delivered.
    pub offset: u64,
    /// The file was read to its end and is gone (the kubelet compressed or deleted it). Kept so
    /// that its `.gz` copy is known as shipped and not read again; dropped when no `.gz` of it
    /// is left. Absent (false) in files written before it existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub finished: bool,
    /// For a streaming sidecar's log: what its stage had made of the lines before `offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarState>,
}

/// A streaming sidecar's state at a checkpoint (src/sidecar.rs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SidecarState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<crate::sidecar::TailState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump: Option<crate::sidecar::DumpState>,
}

impl Position {
    pub fn key(&self) -> FileKey {
        FileKey {
            dev: self.dev,
            ino: self.ino,
        }
    }
}

/// A change a batch makes to the checkpoints once it is acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    Set(Position),
    /// The file is finished (drained and gone): drop its entry.
    Forget(FileKey),
}

#[derive(Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    files: Vec<Position>,
}

const FORMAT_VERSION: u32 = 1;
const FILE_NAME: &str = "checkpoints.json";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("failed to write checkpoint file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read checkpoint file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

struct Pending {
    acked: bool,
    updates: Vec<Update>,
    records: usize,
    created: Instant,
}

#[derive(Default)]
struct Inner {
    committed: HashMap<FileKey, Position>,
    pending: BTreeMap<u64, Pending>,
    next_seq: u64,
    unacked_records: usize,
    dirty: bool,
}

/// The checkpoint store of one state directory.
pub struct Checkpoints {
    path: PathBuf,
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
}

impl Checkpoints {
    /// Opens the store in `state_dir` and reads what an earlier run left. A corrupt file is moved
    /// aside (`checkpoints.json.corrupt`) and reported: its files are then read again from their
    /// start (duplicates, not losses).
    pub fn open(
        state_dir: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<(Arc<Checkpoints>, Vec<Position>), CheckpointError> {
        std::fs::create_dir_all(state_dir).map_err(|source| CheckpointError::Write {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join(FILE_NAME);
        let restored = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<FileFormat>(&bytes) {
                Ok(f) if f.version == FORMAT_VERSION => f.files,
                Ok(f) => {
                    tracing::error!(path = %path.display(), version = f.version, "checkpoint file has an unknown version; starting without checkpoints");
                    Vec::new()
                }
                Err(e) => {
                    let aside = path.with_extension("json.corrupt");
                    tracing::error!(path = %path.display(), error = %e, aside = %aside.display(), "checkpoint file is corrupt; moved aside, files are read again from their start");
                    let _ = std::fs::rename(&path, &aside);
                    metrics.checkpoint_errors.inc();
                    Vec::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(CheckpointError::Read { path, source }),
        };
        let inner = Inner {
            committed: restored.iter().map(|p| (p.key(), p.clone())).collect(),
            ..Inner::default()
        };
        metrics.checkpoint_files.set(inner.committed.len() as i64);
        let store = Arc::new(Checkpoints {
            path,
            inner: Mutex::new(inner),
            metrics,
        });
        Ok((store, restored))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a batch of `records` records whose acknowledgement applies `updates`, to be
    /// acknowledged by `sinks` sinks. Returns the batch's acknowledgement handle.
    pub fn register(
        self: &Arc<Self>,
        updates: Vec<Update>,
        records: usize,
        sinks: usize,
    ) -> Arc<Ack> {
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.unacked_records += records;
        inner.pending.insert(
            seq,
            Pending {
                acked: false,
                updates,
                records,
                created: Instant::now(),
            },
        );
        drop(inner);
        let ack = Arc::new(Ack {
            seq,
            remaining: AtomicUsize::new(sinks),
            store: self.clone(),
        });
        if records == 0 || sinks == 0 {
            // Nothing to deliver: the positions hold as soon as what came before is delivered.
            ack.remaining.store(1, Ordering::Relaxed);
            ack.done();
        }
        ack
    }

    fn acked(&self, seq: u64) {
        let mut inner = self.lock();
        if let Some(p) = inner.pending.get_mut(&seq) {
            p.acked = true;
        }
        // Apply every acknowledged batch at the head, in order.
        while let Some(entry) = inner.pending.first_entry() {
            if !entry.get().acked {
                break;
            }
            let p = entry.remove();
            inner.unacked_records -= p.records;
            for u in p.updates {
                match u {
                    Update::Set(pos) => {
                        inner.committed.insert(pos.key(), pos);
                    }
                    Update::Forget(key) => {
                        inner.committed.remove(&key);
                    }
                }
            }
            inner.dirty = true;
        }
        self.metrics
            .unacked_records
            .set(inner.unacked_records as i64);
        self.metrics
            .checkpoint_files
            .set(inner.committed.len() as i64);
    }

    /// Batches whose positions are not committed yet (not acknowledged, or behind one that
    /// is not).
    pub fn pending_batches(&self) -> usize {
        self.lock().pending.len()
    }

    /// Age of the oldest batch not yet acknowledged, in seconds (0 when none).
    pub fn oldest_unacked_seconds(&self) -> f64 {
        let inner = self.lock();
        inner
            .pending
            .first_key_value()
            .map(|(_, p)| p.created.elapsed().as_secs_f64())
            .unwrap_or(0.0)
    }

    /// The committed position of a file.
    pub fn committed(&self, key: FileKey) -> Option<Position> {
        self.lock().committed.get(&key).cloned()
    }

    /// Writes the committed positions if they changed since the last write.
    pub fn persist(&self) -> Result<(), CheckpointError> {
        let (files, was_dirty) = {
            let mut inner = self.lock();
            if !inner.dirty {
                return Ok(());
            }
            inner.dirty = false;
            let mut files: Vec<Position> = inner.committed.values().cloned().collect();
            files.sort_by_key(|p| p.key());
            (files, true)
        };
        let body = serde_json::to_vec(&FileFormat {
            version: FORMAT_VERSION,
            files,
        })
        .expect("positions serialize");
        let result = write_atomically(&self.path, &body);
        self.metrics
            .oldest_unacked_seconds
            .set(self.oldest_unacked_seconds());
        match result {
            Ok(()) => {
                self.metrics.checkpoint_writes.inc();
                self.metrics.readiness.pass("checkpoints");
                Ok(())
            }
            Err(source) => {
                if was_dirty {
                    self.lock().dirty = true;
                }
                self.metrics.checkpoint_errors.inc();
                self.metrics.readiness.fail(
                    "checkpoints",
                    format!("cannot write {}: {source}", self.path.display()),
                );
                Err(CheckpointError::Write {
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }
}

/// Writes `body` to `path` so that a crash leaves either the old file or the new one, whole.
fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The acknowledgement of one batch by the sinks it went to.
pub struct Ack {
    seq: u64,
    remaining: AtomicUsize,
    store: Arc<Checkpoints>,
}

impl Ack {
    /// One sink is done with the batch (delivered, or dropped for good and counted). Call once per
    /// sink; the batch's positions hold when every sink has called it.
    pub fn done(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.store.acked(self.seq);
        }
    }
}

mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(ino: u64, offset: u64) -> Update {
        Update::Set(Position {
            dev: 1,
            ino,
            fingerprint: 0xabc,
            path: format!("/f{ino}"),
            offset,
            finished: false,
            sidecar: None,
        })
    }

    fn key(ino: u64) -> FileKey {
        FileKey { dev: 1, ino }
    }

    #[test]
    fn positions_hold_only_when_every_earlier_batch_is_acknowledged() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, restored) = Checkpoints::open(tmp.path(), Metrics::new()).unwrap();
        assert!(restored.is_empty());
        let a = store.register(vec![pos(1, 100)], 10, 1);
        let b = store.register(vec![pos(1, 200), pos(2, 50)], 10, 1);
        b.done();
        assert_eq!(store.committed(key(1)), None, "b waits for a");
        a.done();
        assert_eq!(store.committed(key(1)).unwrap().offset, 200);
        assert_eq!(store.committed(key(2)).unwrap().offset, 50);
    }

    #[test]
    fn a_batch_sent_to_two_sinks_needs_both() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = Checkpoints::open(tmp.path(), Metrics::new()).unwrap();
        let a = store.register(vec![pos(1, 100)], 5, 2);
        a.done();
        assert_eq!(store.committed(key(1)), None);
        a.done();
        assert_eq!(store.committed(key(1)).unwrap().offset, 100);
    }

    #[test]
    fn empty_batches_commit_behind_the_ones_before_them() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = Checkpoints::open(tmp.path(), Metrics::new()).unwrap();
        let a = store.register(vec![pos(1, 100)], 5, 1);
        let _forget = store.register(vec![Update::Forget(key(1))], 0, 1);
        assert_eq!(store.committed(key(1)), None);
        a.done();
        assert_eq!(store.committed(key(1)), None, "forgotten after a");
    }

    #[test]
    fn persisted_positions_are_restored_and_corrupt_files_set_aside() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let (store, _) = Checkpoints::open(tmp.path(), Metrics::new()).unwrap();
            store.register(vec![pos(7, 4242)], 1, 1).done();
            store.persist().unwrap();
        }
        let (_, restored) = Checkpoints::open(tmp.path(), Metrics::new()).unwrap();
        assert_eq!(restored.len(), 1);
        assert_eq!(restored[0].offset, 4242);
        assert_eq!(restored[0].fingerprint, 0xabc);

        std::fs::write(tmp.path().join(FILE_NAME), b"{not json").unwrap();
        let metrics = Metrics::new();
        let (_, restored) = Checkpoints::open(tmp.path(), metrics.clone()).unwrap();
        assert!(restored.is_empty());
        assert!(tmp.path().join("checkpoints.json.corrupt").exists());
        assert_eq!(metrics.checkpoint_errors.get(), 1);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_retries_later() {
        let tmp = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let (store, _) = Checkpoints::open(tmp.path(), metrics.clone()).unwrap();
        store.register(vec![pos(1, 10)], 1, 1).done();
        store.persist().unwrap();
        store.register(vec![pos(1, 20)], 1, 1).done();
        // A directory where the temp file must go makes the write fail.
        std::fs::create_dir(tmp.path().join("checkpoints.json.tmp")).unwrap();
        assert!(store.persist().is_err());
        assert_eq!(metrics.checkpoint_errors.get(), 1);
        let on_disk: FileFormat =
            serde_json::from_slice(&std::fs::read(tmp.path().join(FILE_NAME)).unwrap()).unwrap();
        assert_eq!(on_disk.files[0].offset, 10, "old file intact");
        std::fs::remove_dir(tmp.path().join("checkpoints.json.tmp")).unwrap();
        store.persist().unwrap();
        let on_disk: FileFormat =
            serde_json::from_slice(&std::fs::read(tmp.path().join(FILE_NAME)).unwrap()).unwrap();
        assert_eq!(on_disk.files[0].offset, 20);
    }
}
