//! tail: the stage a streaming sidecar's lines go through (`loglet.io/sidecar.<container>`),
//! between the decoder and the records: `tail -F` output split by file, periodic dumps
//! deduplicated (the state machines are in `crate::sidecar`), and each line attributed to the
//! application container and its file.
//!
//! One stage per sidecar container directory, not per file, so that it carries on across the
//! kubelet's rotation of the sidecar's log and across the sidecar's restarts (a `cat` loop that
//! restarts prints the same files again). Its state goes into the checkpoint of the file it
//! last read, with that file's offset.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::decode::Decoded;
use crate::record::Source;
use crate::route::{SidecarMode, SidecarSpec};
use crate::sidecar::{DedupeOptions, DumpDedupe, Routed, TailDemux};
use crate::tail::checkpoint::SidecarState;

/// Sources per sidecar for files named in `tail` headers, at most (a sidecar follows a few).
const MAX_FILES: usize = 64;

pub(super) struct Stage {
    pub spec: Arc<SidecarSpec>,
    demux: Option<TailDemux>,
    dedupe: Option<DumpDedupe>,
    /// The sidecar's own source these were derived from (its `id`), and one source per file.
    base_id: u64,
    sources: HashMap<Option<Arc<str>>, Arc<Source>>,
    routed: Vec<Routed>,
    deduped: Vec<Decoded>,
    /// When the last line came: a dump round ends, a held separator goes, `idle` after it.
    last_line: Option<Instant>,
    idle: Duration,
}

impl Stage {
    pub fn new(spec: Arc<SidecarSpec>, restored: Option<&SidecarState>, idle: Duration) -> Stage {
        let restored = restored.cloned().unwrap_or_default();
        let (demux, dedupe) = match spec.mode {
            SidecarMode::Tail => {
                let d = TailDemux::new();
                (Some(d.resume(restored.tail.unwrap_or_default())), None)
            }
            SidecarMode::Dump => (
                None,
                Some(DumpDedupe::new(DedupeOptions::default(), restored.dump)),
            ),
        };
        Stage {
            spec,
            demux,
            dedupe,
            base_id: 0,
            sources: HashMap::new(),
            routed: Vec::new(),
            deduped: Vec::new(),
            last_line: None,
            idle: idle.max(DedupeOptions::default().round_gap),
        }
    }

    /// Takes the sidecar's decoded lines; appends what to ship, each with its source.
    pub fn process(
        &mut self,
        base: &Arc<Source>,
        input: &mut Vec<Decoded>,
        out: &mut Vec<(Decoded, Arc<Source>)>,
    ) {
        if input.is_empty() {
            return;
        }
        self.last_line = Some(Instant::now());
        for d in input.drain(..) {
            match (&mut self.demux, &mut self.dedupe) {
                (Some(demux), _) => demux.push(d, &mut self.routed),
                (None, Some(dedupe)) => dedupe.push(d, &mut self.deduped),
                (None, None) => self.routed.push((d, None)),
            }
        }
        self.drain(base, out);
    }

    /// No line came for a while, or the file is finished: what is held goes (a separator that
    /// had no header after it; a dump round that is over).
    pub fn flush(&mut self, base: &Arc<Source>, out: &mut Vec<(Decoded, Arc<Source>)>) {
        self.last_line = None;
        if let Some(d) = &mut self.demux {
            d.flush(&mut self.routed);
        }
        if let Some(d) = &mut self.dedupe {
            d.end_of_round(&mut self.deduped);
        }
        self.drain(base, out);
    }

    pub fn deadline(&self) -> Option<Instant> {
        let held = self.pending_from().is_some() || self.dedupe.is_some();
        self.last_line.filter(|_| held).map(|t| t + self.idle)
    }

    /// The offset of the oldest line held: the checkpoint must not pass it.
    pub fn pending_from(&self) -> Option<u64> {
        let a = self.demux.as_ref().and_then(TailDemux::pending_from);
        let b = self.dedupe.as_ref().and_then(DumpDedupe::pending_from);
        [a, b].into_iter().flatten().min()
    }

    pub fn state(&self) -> SidecarState {
        SidecarState {
            tail: self.demux.as_ref().map(TailDemux::state),
            dump: self.dedupe.as_ref().map(DumpDedupe::state),
        }
    }

    fn drain(&mut self, base: &Arc<Source>, out: &mut Vec<(Decoded, Arc<Source>)>) {
        if self.base_id != base.id {
            self.base_id = base.id;
            self.sources.clear();
        }
        let routed = std::mem::take(&mut self.routed);
        for (d, file) in routed
            .into_iter()
            .chain(self.deduped.drain(..).map(|d| (d, None)))
        {
            let file = file.or_else(|| self.spec.file.clone());
            if self.sources.len() >= MAX_FILES && !self.sources.contains_key(&file) {
                self.sources.clear();
            }
            let source = self
                .sources
                .entry(file.clone())
                .or_insert_with(|| Arc::new(app_source(base, &self.spec, file.as_deref())))
                .clone();
            out.push((d, source));
        }
    }
}

/// The sidecar's source as the application's: its container, image and ID, and its file.
fn app_source(base: &Source, spec: &SidecarSpec, file: Option<&str>) -> Source {
    let app = base
        .pod_meta
        .as_deref()
        .and_then(|m| m.container(&spec.app));
    Source {
        id: Source::next_id(),
        path: file.map_or_else(|| base.path.clone(), str::to_string),
        namespace: base.namespace.clone(),
        pod: base.pod.clone(),
        pod_uid: base.pod_uid.clone(),
        container: spec.app.clone(),
        container_id: app.and_then(|c| c.container_id.clone()),
        restart_count: None,
        pod_meta: base.pod_meta.clone(),
        routing: base.routing.clone(),
        sidecar: Some(base.container.clone()),
    }
}
