//! bench: the read side of the pipeline, in input bytes per second and elements per second
//! (`1e9 / elements per second` is ns per record): decoding CRI and Docker json-file lines, CRI
//! partial-line merging, and enrichment (what each record pays to carry its Pod's metadata).
//!
//! Everything runs loglet's own code: blocks are split on `\n` with `memchr` and each physical
//! line is pushed through [`Decoder::push`], as the tailer does; enrichment is the sinks'
//! [`FragmentCache`] over [`json::source_members`]. Lines and sources: `common/corpus.rs`.
//! Run: `cargo bench --bench decode`.

#[path = "common/corpus.rs"]
mod corpus;
#[path = "../tests/common/node.rs"]
mod node;

use std::sync::Arc;

use bytes::Bytes;
use corpus::{Gen, message, sources, time_ns};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use loglet::config::LogsConfig;
use loglet::decode::{Clock, DecodeOptions, Decoded, Decoder, FileFormat};
use loglet::record::{Record, Source};
use loglet::sink::json::{self, FragmentCache};

/// Lines per block in the decode benches, and records per batch in the enrichment ones: about
/// what one 256 KiB read of the tailer holds.
const LINES: usize = 1000;
/// containerd's split size.
const CRI_SPLIT: usize = 16 * 1024;
/// moby's split size for json-file.
const DOCKER_SPLIT: usize = 16 * 1024;

/// `lines` CRI lines, each a complete (`F`) line.
fn cri_block(lines: usize) -> Bytes {
    let mut g = Gen::new();
    let mut out = Vec::new();
    for i in 0..lines {
        let stream = if i % 7 == 0 { "stderr" } else { "stdout" };
        let ts = node::rfc3339_nano(time_ns(i, &mut g));
        out.extend_from_slice(format!("{ts} {stream} F {}\n", message(i, &mut g)).as_bytes());
    }
    Bytes::from(out)
}

/// `lines` json-file lines; with `escapes` false, only the access-log lines with their quotes
/// replaced, so that no `log` needs unescaping (the decoder's no-copy path).
fn docker_block(lines: usize, escapes: bool) -> Bytes {
    let mut g = Gen::new();
    let mut out = Vec::new();
    for i in 0..lines {
        let stream = if i % 7 == 0 { "stderr" } else { "stdout" };
        let ts = node::rfc3339_nano(time_ns(i, &mut g));
        let mut msg = message(if escapes { i } else { 1 }, &mut g);
        if !escapes {
            msg = msg.replace('"', "'");
        }
        msg.push('\n');
        let log = serde_json::to_string(&msg).expect("a string");
        out.extend_from_slice(
            format!("{{\"log\":{log},\"stream\":\"{stream}\",\"time\":\"{ts}\"}}\n").as_bytes(),
        );
    }
    Bytes::from(out)
}

/// `lines` lines of 20 to 38 KiB, written as the runtime splits them: 16 KiB chunks, every one
/// but the last marked partial (CRI `P`; json-file `log` without its `\n`).
fn split_block(format: FileFormat, lines: usize) -> Bytes {
    let mut g = Gen(0x2545_F491_4F6C_DD1D);
    let mut out = Vec::new();
    for i in 0..lines {
        let mut msg = message(i, &mut g);
        let len = 20_000 + (i % 7) * 3000;
        while msg.len() < len {
            msg.push_str(" payload=");
            msg.push_str(&format!("{:016x}", g.next()));
        }
        msg.truncate(len);
        let ts = node::rfc3339_nano(time_ns(i, &mut g));
        match format {
            FileFormat::Cri => {
                let mut chunks = msg.as_bytes().chunks(CRI_SPLIT).peekable();
                while let Some(chunk) = chunks.next() {
                    let tag = if chunks.peek().is_some() { "P" } else { "F" };
                    out.extend_from_slice(format!("{ts} stdout {tag} ").as_bytes());
                    out.extend_from_slice(chunk);
                    out.push(b'\n');
                }
            }
            FileFormat::Docker => {
                msg.push('\n');
                for chunk in msg.as_bytes().chunks(DOCKER_SPLIT) {
                    let text = std::str::from_utf8(chunk).expect("ASCII");
                    let log = serde_json::to_string(text).expect("a string");
                    out.extend_from_slice(
                        format!("{{\"log\":{log},\"stream\":\"stdout\",\"time\":\"{ts}\"}}\n")
                            .as_bytes(),
                    );
                }
            }
            FileFormat::Plain => unreachable!("no partial lines in plain files"),
        }
    }
    Bytes::from(out)
}

fn options() -> DecodeOptions {
    DecodeOptions::from_config(&LogsConfig::default())
}

/// Splits `block` into physical lines and decodes them, as the tailer's `split_lines` does for a
/// block that starts at a line boundary. Returns the records out.
fn decode_block(decoder: &mut Decoder, block: &Bytes, clock: &Clock, out: &mut Vec<Decoded>) {
    let mut start = 0usize;
    for nl in memchr::memchr_iter(b'\n', block) {
        decoder.push(
            block.slice(start..nl),
            start as u64,
            nl as u64 + 1,
            false,
            clock,
            out,
        );
        start = nl + 1;
    }
}

fn decode(c: &mut Criterion) {
    let opts = options();
    let clock = Clock::now();
    let cases = [
        ("cri", FileFormat::Cri, cri_block(LINES)),
        ("docker", FileFormat::Docker, docker_block(LINES, true)),
        (
            "docker_no_escapes",
            FileFormat::Docker,
            docker_block(LINES, false),
        ),
    ];
    let mut group = c.benchmark_group("decode");
    for (name, format, block) in cases {
        bench_decoder(&mut group, name, format, &block, opts, &clock);
    }
    group.finish();

    // Merging: about 1.4 MiB of long lines per iteration, 50 lines of 2 or 3 chunks each.
    let mut group = c.benchmark_group("merge");
    for (name, format) in [
        ("cri_16k", FileFormat::Cri),
        ("docker_16k", FileFormat::Docker),
    ] {
        let block = split_block(format, 50);
        bench_decoder(&mut group, name, format, &block, opts, &clock);
    }
    group.finish();
}

fn bench_decoder(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    format: FileFormat,
    block: &Bytes,
    opts: DecodeOptions,
    clock: &Clock,
) {
    let mut decoder = Decoder::new(format, opts);
    let mut out = Vec::with_capacity(LINES);
    decode_block(&mut decoder, block, clock, &mut out);
    let stats = decoder.take_stats();
    assert_eq!(stats.malformed, 0, "{name}: the bench's lines parse");
    assert!(
        decoder.pending_from().is_none(),
        "{name}: no line left open"
    );
    let records = out.len();
    let content: usize = out.iter().map(|d| d.line.len()).sum();
    eprintln!(
        "{name}: {} bytes in, {records} records, {content} bytes of content, {} merged",
        block.len(),
        stats.merged
    );
    group.throughput(Throughput::ElementsAndBytes {
        elements: records as u64,
        bytes: block.len() as u64,
    });
    group.bench_function(name, |b| {
        b.iter(|| {
            out.clear();
            decode_block(&mut decoder, block, clock, &mut out);
            out.len()
        })
    });
}

/// `LINES` decoded CRI lines as records; `run` consecutive records share a source.
fn records(sources: &[Arc<Source>], run: usize) -> Vec<Record> {
    let block = cri_block(LINES);
    let mut decoder = Decoder::new(FileFormat::Cri, options());
    let mut out = Vec::new();
    decode_block(&mut decoder, &block, &Clock::now(), &mut out);
    out.into_iter()
        .enumerate()
        .map(|(i, d)| Record {
            line: d.line,
            time_ns: d.time_ns,
            stream: d.stream,
            flags: d.flags,
            fields: None,
            source: sources[(i / run) % sources.len()].clone(),
        })
        .collect()
}

fn enrich(c: &mut Criterion) {
    let sources = sources();
    let mut group = c.benchmark_group("enrich");
    // Per record: the Pod metadata fragment spliced into the body, as the NDJSON, Elasticsearch
    // and Splunk HEC encoders do. A sink's batch holds runs of one file's lines (the tailer
    // reads a block per file); interleaved, every record changes source (the cache's slow path).
    for (name, run) in [("splice_runs_of_100", 100), ("splice_interleaved", 1)] {
        let recs = records(&sources, run);
        let bytes: usize = recs.iter().map(|r| r.line.len()).sum();
        let mut cache = FragmentCache::new(json::source_members);
        let mut out = Vec::with_capacity(2 << 20);
        let mut splice = |out: &mut Vec<u8>| {
            for r in &recs {
                out.extend_from_slice(cache.get(&r.source));
            }
        };
        splice(&mut out);
        eprintln!(
            "{name}: {} bytes of metadata for {} records with {bytes} bytes of lines",
            out.len(),
            recs.len()
        );
        group.throughput(Throughput::ElementsAndBytes {
            elements: recs.len() as u64,
            bytes: bytes as u64,
        });
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                splice(&mut out);
                out.len()
            })
        });
    }
    // Per source, once per file and again when its Pod's metadata changes: the fragment built.
    let mut out = Vec::with_capacity(1 << 16);
    for s in &sources {
        json::source_members(s, &mut out);
    }
    eprintln!(
        "fragment_build: {} bytes for {} sources",
        out.len(),
        sources.len()
    );
    group.throughput(Throughput::Elements(sources.len() as u64));
    group.bench_function("fragment_build", |b| {
        b.iter(|| {
            out.clear();
            for s in &sources {
                json::source_members(s, &mut out);
            }
            out.len()
        })
    });
    group.finish();
}

criterion_group!(benches, decode, enrich);
criterion_main!(benches);
