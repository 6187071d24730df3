//! The record: one log line and where it came from, as it flows from the tailer to the sinks.
//!
//! A record owns its bytes through `Bytes` (a slice of the block the tailer read, so no copy per
//! line) and shares everything about its file and Pod through one `Arc<Source>`, so a record costs
//! about 64 bytes however rich the Pod's metadata is.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::tail::checkpoint::Ack;

/// The stream a line was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Flags set by the decoder on a record.
pub mod flags {
    /// The line was longer than the configured maximum and was cut.
    pub const TRUNCATED: u8 = 1;
    /// The line did not parse in its file's format and is passed through as raw text.
    pub const MALFORMED: u8 = 2;
    /// The line was joined from several partial (`P`) chunks.
    pub const MERGED: u8 = 4;
    /// The line ended without its final chunk (a `P` never followed by `F`, or a file that ended
    /// mid-line) and was flushed after a timeout or at the end of the file.
    pub const UNTERMINATED: u8 = 8;
    /// The record was joined from several lines by a multiline rule (a stack trace).
    pub const MULTILINE: u8 = 16;
}

/// One log line.
#[derive(Debug, Clone)]
pub struct Record {
    /// The content, without the trailing newline (and without the CRI or Docker framing).
    pub line: Bytes,
    /// When the runtime wrote the line, Unix nanoseconds.
    pub time_ns: i64,
    pub stream: Stream,
    /// Bits from [`flags`].
    pub flags: u8,
    /// Fields lifted from the line by its container's parser (`loglet.io/parser`): the members
    /// of a JSON object without braces, for JSON sinks to splice in. Boxed: most records have
    /// none, and this keeps a record at 64 bytes.
    pub fields: Option<Box<Bytes>>,
    /// The file and Pod the line came from.
    pub source: Arc<Source>,
}

/// The file a record came from and what is known of its Pod and container.
///
/// Built once per file (and again when the Pod's metadata changes); every record of the file
/// shares it. `id` is unique for the life of the process, so encoders can cache what they derive
/// from a source (a pre-encoded JSON fragment, a Loki label set) under it.
#[derive(Debug)]
pub struct Source {
    pub id: u64,
    /// The path the file was found at (for rotated files, the path at discovery).
    pub path: String,
    pub namespace: String,
    pub pod: String,
    /// The UID from the log directory name (for static Pods, the config hash).
    pub pod_uid: String,
    pub container: String,
    /// The container ID without the runtime prefix, when the `/var/log/containers` symlink or the
    /// API told it.
    pub container_id: Option<String>,
    /// The container's restart count, from the file name `<restartCount>.log`.
    pub restart_count: Option<u32>,
    /// What the Kubernetes API told about the Pod; `None` when only the path is known.
    pub pod_meta: Option<Arc<PodMeta>>,
    /// Where the container's lines go, decided from the routes and annotations.
    pub routing: Arc<crate::route::Decision>,
    /// For lines a streaming sidecar echoed: the sidecar's container name (`container` is then
    /// the application's and `path` the application's file).
    pub sidecar: Option<String>,
}

static NEXT_SOURCE_ID: AtomicU64 = AtomicU64::new(1);

impl Source {
    /// A fresh, process-unique source ID.
    pub fn next_id() -> u64 {
        NEXT_SOURCE_ID.fetch_add(1, Ordering::Relaxed)
    }
}

/// Pod metadata from the API, compact: only what enrichment needs.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node_name: Option<String>,
    pub labels: Vec<(String, String)>,
    /// The Pod annotations the config selects (none by default).
    pub annotations: Vec<(String, String)>,
    pub namespace_labels: Vec<(String, String)>,
    /// The Pod's `loglet.io/` annotations (keys keep the prefix), for routing and processing.
    pub loglet_annotations: Vec<(String, String)>,
    /// Its Namespace's `loglet.io/` annotations (keys keep the prefix).
    pub namespace_loglet_annotations: Vec<(String, String)>,
    /// The first controller owner reference, `(kind, name)`.
    pub owner: Option<(String, String)>,
    /// The workload behind the owner, `(kind, name)`: a ReplicaSet owned by a Deployment gives
    /// `("Deployment", name)`, a Job made by a CronJob gives `("CronJob", name)`.
    pub workload: Option<(String, String)>,
    pub containers: Vec<ContainerMeta>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct ContainerMeta {
    pub name: String,
    pub image: Option<String>,
    /// Without the `containerd://` style prefix.
    pub container_id: Option<String>,
}

impl PodMeta {
    pub fn container(&self, name: &str) -> Option<&ContainerMeta> {
        self.containers.iter().find(|c| c.name == name)
    }
}

/// What the tailer hands to the sinks: records in file order, and the acknowledgement that moves
/// their files' checkpoints once every sink is done with them.
pub struct Batch {
    pub records: Vec<Record>,
    pub ack: Arc<Ack>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_record_stays_at_64_bytes() {
        // Records are made per line and batched by the thousand: their size is memory.
        assert_eq!(std::mem::size_of::<super::Record>(), 64);
    }
}
