use std::collections::VecDeque;

use proptest::prelude::*;

use super::*;

/// A stdout line at `time_ns`, starting at file offset `start`.
fn line(text: &str, time_ns: i64, start: u64) -> Decoded {
    Decoded {
        line: Bytes::copy_from_slice(text.as_bytes()),
        time_ns,
        stream: Stream::Stdout,
        flags: 0,
        start,
    }
}

fn stderr(text: &str, time_ns: i64, start: u64) -> Decoded {
    Decoded {
        stream: Stream::Stderr,
        ..line(text, time_ns, start)
    }
}

/// Feeds `texts` as stdout lines 1 ms apart, with offsets as in a file of those lines.
fn feed_tail(demux: &mut TailDemux, texts: &[&str]) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, t) in texts.iter().enumerate() {
        demux.push(line(t, i as i64 * 1_000_000, start), &mut out);
        start += t.len() as u64 + 1;
    }
    routed(out)
}

fn routed(out: Vec<Routed>) -> Vec<(String, Option<String>)> {
    out.into_iter()
        .map(|(d, f)| {
            (
                String::from_utf8(d.line.to_vec()).unwrap(),
                f.map(|f| f.to_string()),
            )
        })
        .collect()
}

fn of(file: &str, lines: &[&str]) -> Vec<(String, Option<String>)> {
    lines
        .iter()
        .map(|l| (l.to_string(), Some(file.to_string())))
        .collect()
}

#[test]
fn tail_lines_are_classified_by_content() {
    let cases: &[(&str, TailLine<'_>)] = &[
        (
            "==> /var/log/a.log <==",
            TailLine::Header(b"/var/log/a.log"),
        ),
        (
            "==> standard input <==",
            TailLine::Header(b"standard input"),
        ),
        ("", TailLine::Empty),
        // GNU coreutils 9.x
        (
            "tail: '/var/log/a.log' has been replaced;  following new file",
            TailLine::Notice,
        ),
        (
            "tail: '/var/log/a.log' has appeared;  following new file",
            TailLine::Notice,
        ),
        (
            "tail: '/var/log/a.log' has become inaccessible: No such file or directory",
            TailLine::Notice,
        ),
        (
            "tail: '/var/log/a.log' has become accessible",
            TailLine::Notice,
        ),
        ("tail: /var/log/a.log: file truncated", TailLine::Notice),
        (
            "tail: cannot open '/var/log/a.log' for reading: No such file or directory",
            TailLine::Notice,
        ),
        (
            "tail: /var/log/a.log: No such file or directory",
            TailLine::Notice,
        ),
        (
            "tail: '/var/log/a.log' has been replaced with an untailable file; giving up on this name",
            TailLine::Notice,
        ),
        (
            "tail: inotify cannot be used, reverting to polling",
            TailLine::Notice,
        ),
        ("tail: no files remaining", TailLine::Notice),
        (
            "/usr/bin/tail: '/var/log/a.log' has been replaced;  following new file",
            TailLine::Notice,
        ),
        // older GNU quoting
        (
            "tail: `/var/log/a.log' has been replaced;  following end of new file",
            TailLine::Notice,
        ),
        (
            "tail: ‘/var/log/a.log’ has become inaccessible: No such file or directory",
            TailLine::Notice,
        ),
        // busybox
        (
            "tail: /var/log/a.log has appeared; following end of new file",
            TailLine::Notice,
        ),
        (
            "tail: /var/log/a.log has been replaced; following end of new file",
            TailLine::Notice,
        ),
        (
            "tail: /var/log/a.log has been renamed or deleted: No such file or directory",
            TailLine::Notice,
        ),
        (
            "tail: can't open '/var/log/a.log': No such file or directory",
            TailLine::Notice,
        ),
        // log lines that only look alike
        ("==>  <==", TailLine::Text),
        ("==> <==", TailLine::Text),
        ("==> a.log", TailLine::Text),
        ("tail: the end of the queue", TailLine::Text),
        ("my tail: '/x' has been replaced", TailLine::Text),
        ("retail: '/x' has been replaced", TailLine::Text),
        ("2024-01-01 INFO file truncated", TailLine::Text),
        (" ", TailLine::Text),
    ];
    for (text, want) in cases {
        assert_eq!(classify(text.as_bytes()), *want, "{text:?}");
    }
}

#[test]
fn tail_of_two_files_routes_lines_by_header_and_drops_framing_and_notices() {
    let mut demux = TailDemux::new();
    let got = feed_tail(
        &mut demux,
        &[
            "==> /var/log/a.log <==",
            "a1",
            "a2",
            "",
            "==> /var/log/b.log <==",
            "b1",
            "",
            "==> /var/log/a.log <==",
            "a3",
            "tail: '/var/log/a.log' has been replaced;  following new file",
            "",
            "==> /var/log/a.log <==",
            "a-new-1",
            "",
            "==> /var/log/b.log <==",
            "b2",
        ],
    );
    let mut want = of("/var/log/a.log", &["a1", "a2"]);
    want.extend(of("/var/log/b.log", &["b1"]));
    want.extend(of("/var/log/a.log", &["a3", "a-new-1"]));
    want.extend(of("/var/log/b.log", &["b2"]));
    assert_eq!(got, want);
    let stats = demux.stats();
    assert_eq!((stats.headers, stats.separators, stats.notices), (5, 4, 1));
    assert!(
        stats
            .notice_sample
            .unwrap()
            .starts_with(b"tail: '/var/log/a.log' has been")
    );
    assert_eq!(demux.stats(), TailStats::default(), "take and reset");
}

#[test]
fn real_empty_log_lines_are_kept_even_right_before_a_header() {
    let mut demux = TailDemux::new();
    // a.log holds "a1", "", "a2", "" and "" (two empty lines at its end); then b.log.
    let got = feed_tail(
        &mut demux,
        &[
            "==> a.log <==",
            "a1",
            "",
            "a2",
            "",
            "",
            "",
            "==> b.log <==",
            "",
            "b1",
        ],
    );
    let mut want = of("a.log", &["a1", "", "a2", "", ""]);
    want.extend(of("b.log", &["", "b1"]));
    assert_eq!(got, want);
}

#[test]
fn a_held_empty_line_blocks_the_checkpoint_until_it_is_flushed() {
    let mut demux = TailDemux::new();
    let mut out = Vec::new();
    demux.push(line("x", 0, 0), &mut out);
    demux.push(line("", 1, 2), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(demux.pending_from(), Some(2));
    demux.flush(&mut out);
    assert_eq!(demux.pending_from(), None);
    assert_eq!(routed(out), vec![("x".into(), None), ("".into(), None)]);
}

#[test]
fn single_file_tail_has_no_file_and_drops_its_notices() {
    let mut demux = TailDemux::new();
    let got = feed_tail(
        &mut demux,
        &["l1", "tail: /var/log/app.log: file truncated", "l2", ""],
    );
    assert_eq!(got, vec![("l1".into(), None), ("l2".into(), None)]);
    let mut out = Vec::new();
    demux.flush(&mut out);
    assert_eq!(routed(out), vec![("".into(), None)]);
}

#[test]
fn notices_on_stderr_do_not_release_a_held_separator() {
    let mut demux = TailDemux::new();
    let mut out = Vec::new();
    demux.push(line("==> a <==", 0, 0), &mut out);
    demux.push(line("a1", 1, 10), &mut out);
    demux.push(line("", 2, 13), &mut out);
    demux.push(
        stderr(
            "tail: 'a' has become inaccessible: No such file or directory",
            3,
            14,
        ),
        &mut out,
    );
    demux.push(stderr("sh: oops", 4, 80), &mut out);
    demux.push(line("==> b <==", 5, 90), &mut out);
    demux.push(line("b1", 6, 100), &mut out);
    assert_eq!(
        routed(out),
        vec![
            ("a1".into(), Some("a".into())),
            ("sh: oops".into(), Some("a".into())),
            ("b1".into(), Some("b".into())),
        ]
    );
    assert_eq!(demux.stats().separators, 1);
}

#[test]
fn with_known_files_other_header_lookalikes_are_log_lines() {
    let mut demux = TailDemux::with_files([Arc::from("/var/log/a.log")]);
    let got = feed_tail(
        &mut demux,
        &[
            "==> /var/log/a.log <==",
            "==> not a file <==",
            "",
            "==> /var/log/a.log <==",
        ],
    );
    assert_eq!(got, of("/var/log/a.log", &["==> not a file <=="]));
    assert_eq!(demux.current_file().map(|f| &**f), Some("/var/log/a.log"));
}

#[test]
fn a_restart_resumes_in_the_file_of_the_checkpoint() {
    let texts = [
        "==> a <==",
        "a1",
        "",
        "==> b <==",
        "b1",
        "b2",
        "",
        "",
        "b3",
        "",
        "==> a <==",
        "a2",
    ];
    let stream: Vec<Decoded> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| line(t, i as i64, i as u64 * 100))
        .collect();
    let mut whole = TailDemux::new();
    let want = feed_tail(&mut whole, &texts);
    for at in 0..stream.len() {
        let mut demux = TailDemux::new();
        let mut out = Vec::new();
        for d in &stream[..at] {
            demux.push(d.clone(), &mut out);
        }
        let offset = demux.pending_from().unwrap_or(stream[at].start);
        let json = serde_json::to_string(&demux.state()).unwrap();
        let mut demux = TailDemux::new().resume(serde_json::from_str(&json).unwrap());
        for d in stream.iter().filter(|d| d.start >= offset) {
            demux.push(d.clone(), &mut out);
        }
        assert_eq!(routed(out), want, "restart at {at}");
    }
}

// ---------------------------------------------------------------------------------------------

const GAP: i64 = 30_000_000_000;

/// The sidecar's log, as a dump loop writes it: one round per `rounds` entry, lines 1 ms apart,
/// rounds 30 s apart, offsets as in the CRI file.
fn dump_stream(rounds: &[Vec<String>]) -> Vec<Decoded> {
    let mut stream = Vec::new();
    let mut start = 0;
    for (r, lines) in rounds.iter().enumerate() {
        for (i, l) in lines.iter().enumerate() {
            stream.push(line(l, r as i64 * GAP + i as i64 * 1_000_000, start));
            start += l.len() as u64 + 40;
        }
    }
    stream
}

fn texts(out: &[Decoded]) -> Vec<String> {
    out.iter()
        .map(|d| String::from_utf8(d.line.to_vec()).unwrap())
        .collect()
}

fn lines_of(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

/// Runs the stream through a deduplicator, restarting at each index in `restarts` from the
/// state and offset a checkpoint taken there holds (through JSON, as the caller stores it).
fn run(
    stream: &[Decoded],
    opts: DedupeOptions,
    restarts: &[usize],
    timeouts: bool,
) -> Vec<Decoded> {
    let mut restarts: VecDeque<usize> = restarts.iter().copied().collect();
    let mut dedupe = DumpDedupe::new(opts, None);
    let mut out = Vec::new();
    let mut i = 0;
    while i < stream.len() {
        if restarts.front() == Some(&i) {
            restarts.pop_front();
            let offset = dedupe.pending_from().unwrap_or(stream[i].start);
            let json = serde_json::to_string(&dedupe.state()).unwrap();
            dedupe = DumpDedupe::new(opts, Some(serde_json::from_str(&json).unwrap()));
            i = stream.iter().position(|d| d.start >= offset).unwrap();
            continue;
        }
        if timeouts && i > 0 && stream[i].time_ns - stream[i - 1].time_ns > GAP / 2 {
            dedupe.end_of_round(&mut out);
        }
        dedupe.push(stream[i].clone(), &mut out);
        i += 1;
    }
    dedupe.end_of_round(&mut out);
    assert_eq!(dedupe.pending_from(), None, "nothing held after the end");
    out
}

#[test]
fn a_growing_file_dumped_five_times_ships_each_line_once() {
    let rounds: Vec<Vec<String>> = (1..=5).map(|r| lines_of("line ", 0..r * 3)).collect();
    for timeouts in [false, true] {
        let out = run(
            &dump_stream(&rounds),
            DedupeOptions::default(),
            &[],
            timeouts,
        );
        assert_eq!(
            texts(&out),
            lines_of("line ", 0..15),
            "timeouts: {timeouts}"
        );
    }
    let mut dedupe = DumpDedupe::new(DedupeOptions::default(), None);
    let mut out = Vec::new();
    for d in dump_stream(&rounds) {
        dedupe.push(d, &mut out);
    }
    dedupe.end_of_round(&mut out);
    let stats = dedupe.stats();
    assert_eq!(
        (stats.shipped, stats.skipped, stats.rounds, stats.resets),
        (15, 3 + 6 + 9 + 12, 5, 0)
    );
}

#[test]
fn repeats_are_held_until_proven_and_new_lines_ship_at_once() {
    let rounds = vec![lines_of("l", 0..3), lines_of("l", 0..5)];
    let stream = dump_stream(&rounds);
    let mut dedupe = DumpDedupe::new(DedupeOptions::default(), None);
    let mut out = Vec::new();
    for d in &stream[..5] {
        dedupe.push(d.clone(), &mut out);
    }
    // Round 2 lines l0, l1 are held: they may yet turn out to be a new file's.
    assert_eq!(texts(&out), lines_of("l", 0..3));
    assert_eq!(dedupe.pending_from(), Some(stream[3].start));
    dedupe.push(stream[5].clone(), &mut out);
    assert_eq!(dedupe.pending_from(), None, "l0..l2 proven repeats");
    dedupe.push(stream[6].clone(), &mut out);
    assert_eq!(texts(&out), lines_of("l", 0..4), "l3 ships when it comes");
}

#[test]
fn a_truncated_file_ships_its_new_content_from_its_start() {
    let rounds = vec![
        lines_of("old ", 0..10),
        // Truncated, then rewritten shorter: first lines equal by chance, then new ones.
        vec!["old 0".into(), "old 1".into(), "new 2".into()],
        vec![
            "old 0".into(),
            "old 1".into(),
            "new 2".into(),
            "new 3".into(),
        ],
        // Truncated to a prefix of the content: shorter, so new.
        vec!["old 0".into()],
        // Replaced by a file longer than what was shipped.
        lines_of("other ", 0..12),
    ];
    let mut want = lines_of("old ", 0..10);
    want.extend(["old 0", "old 1", "new 2", "new 3", "old 0"].map(String::from));
    want.extend(lines_of("other ", 0..12));
    for timeouts in [false, true] {
        let out = run(
            &dump_stream(&rounds),
            DedupeOptions::default(),
            &[],
            timeouts,
        );
        assert_eq!(texts(&out), want, "timeouts: {timeouts}");
    }
}

#[test]
fn a_replaced_file_is_told_at_its_first_line() {
    let stream = dump_stream(&[lines_of("a", 0..100), lines_of("b", 0..100)]);
    let mut dedupe = DumpDedupe::new(DedupeOptions::default(), None);
    let mut out = Vec::new();
    for d in &stream[..101] {
        dedupe.push(d.clone(), &mut out);
    }
    assert_eq!(dedupe.pending_from(), None);
    assert_eq!(texts(&out).last().unwrap(), "b0");
    assert_eq!(dedupe.stats().resets, 1);
}

#[test]
fn a_diverging_round_is_told_at_the_next_power_of_two_or_when_it_outgrows_the_prefix() {
    let old = lines_of("", 0..8);
    let at_mark = vec!["0".into(), "1".into(), "x".into(), "y".into(), "z".into()];
    let longer = vec!["0".into(), "1".into(), "a much longer line".into()];
    for (new, held_until) in [(at_mark, 4), (longer, 3)] {
        let stream = dump_stream(&[old.clone(), new]);
        let mut dedupe = DumpDedupe::new(DedupeOptions::default(), None);
        let mut out = Vec::new();
        for (i, d) in stream.iter().enumerate() {
            dedupe.push(d.clone(), &mut out);
            let k = (i + 1).saturating_sub(old.len());
            let held = dedupe.pending_from().is_some();
            assert_eq!(
                held,
                k > 0 && k < held_until,
                "line {k} of the second round"
            );
        }
    }
}

#[test]
fn a_restart_in_the_middle_of_a_round_neither_loses_nor_repeats() {
    let rounds: Vec<Vec<String>> = vec![
        lines_of("l", 0..4),
        lines_of("l", 0..7),
        lines_of("l", 0..9),
    ];
    let stream = dump_stream(&rounds);
    let want = lines_of("l", 0..9);
    // Every restart point: inside the held part of a round, at its verdict, past it, between.
    for at in 0..stream.len() {
        let out = run(&stream, DedupeOptions::default(), &[at], false);
        assert_eq!(texts(&out), want, "restart at {at}");
    }
    let out = run(&stream, DedupeOptions::default(), &[2, 6, 9, 13, 18], true);
    assert_eq!(texts(&out), want);
}

#[test]
fn the_state_is_small_and_readable() {
    let mut dedupe = DumpDedupe::new(DedupeOptions::default(), None);
    let mut out = Vec::new();
    for d in dump_stream(&[lines_of("line ", 0..100_000)]) {
        dedupe.push(d, &mut out);
    }
    let state = dedupe.state();
    assert_eq!(state.shipped_lines(), 100_000);
    let json = serde_json::to_string(&state).unwrap();
    assert!(json.len() < 800, "{} bytes: {json}", json.len());
    assert!(json.contains(r#""phase":"extending""#), "{json}");
    assert_eq!(serde_json::from_str::<DumpState>(&json).unwrap(), state);
}

#[test]
fn a_damaged_state_is_dropped_and_the_round_shipped_whole() {
    let mut dedupe = DumpDedupe::new(DedupeOptions::default(), None);
    let mut out = Vec::new();
    for d in dump_stream(&[lines_of("l", 0..5)]) {
        dedupe.push(d, &mut out);
    }
    let mut json: serde_json::Value = serde_json::to_value(dedupe.state()).unwrap();
    json["shipped"]["marks"] = serde_json::json!([]);
    let damaged: DumpState = serde_json::from_value(json).unwrap();
    let mut dedupe = DumpDedupe::new(DedupeOptions::default(), Some(damaged));
    let mut out = Vec::new();
    for d in dump_stream(&[lines_of("l", 0..5)]) {
        dedupe.push(d, &mut out);
    }
    assert_eq!(texts(&out), lines_of("l", 0..5));
}

#[test]
fn past_the_held_bytes_cap_lines_ship_again_but_none_is_lost() {
    let opts = DedupeOptions {
        max_held_bytes: 3 * (std::mem::size_of::<Decoded>() + 2),
        ..DedupeOptions::default()
    };
    let rounds = vec![
        lines_of("l", 0..10),
        lines_of("l", 0..12),
        lines_of("l", 0..12),
    ];
    let mut dedupe = DumpDedupe::new(opts, None);
    let mut out = Vec::new();
    for d in dump_stream(&rounds) {
        dedupe.push(d, &mut out);
    }
    dedupe.end_of_round(&mut out);
    // Round 2: l0..l2 held, l3 overflows: l0..l8 shipped again, l9 proves the prefix (dropped),
    // l10 and l11 are new. Round 3 the same way: l0..l10 again, l11 dropped.
    let mut want = lines_of("l", 0..10);
    want.extend(lines_of("l", 0..9));
    want.extend(lines_of("l", 10..12));
    want.extend(lines_of("l", 0..11));
    assert_eq!(texts(&out), want);
    let stats = dedupe.stats();
    assert_eq!(
        (stats.overflows, stats.unverified, stats.resets),
        (2, 9 + 11, 0)
    );
    assert_eq!(dedupe.state().shipped_lines(), 12, "the prefix still grew");
}

#[test]
fn stderr_lines_pass_through_and_do_not_cut_rounds() {
    let mut stream = dump_stream(&[lines_of("l", 0..3), lines_of("l", 0..3)]);
    stream.insert(
        4,
        stderr(
            "cat: /var/log/b.log: No such file or directory",
            GAP + 500_000,
            999,
        ),
    );
    let out = run(&stream, DedupeOptions::default(), &[], false);
    assert_eq!(
        texts(&out),
        [
            "l0",
            "l1",
            "l2",
            "cat: /var/log/b.log: No such file or directory"
        ]
    );
}

#[test]
fn lines_closer_than_the_round_gap_are_one_round() {
    let opts = DedupeOptions {
        round_gap: Duration::from_millis(100),
        ..DedupeOptions::default()
    };
    let mut dedupe = DumpDedupe::new(opts, None);
    let mut out = Vec::new();
    let mut start = 0;
    // Two dumps 50 ms apart: one round, the second copy taken for growth (a documented limit).
    for (i, t) in [0, 1, 50, 51].into_iter().enumerate() {
        dedupe.push(line(["a", "b"][i % 2], t * 1_000_000, start), &mut out);
        start += 10;
    }
    assert_eq!(texts(&out), ["a", "b", "a", "b"]);
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// The application appends lines.
    Append(Vec<String>),
    /// The file is truncated (or replaced) to its first `keep` lines, then gets `lines`.
    Rewrite { keep: usize, lines: Vec<String> },
    /// The sidecar prints the whole file.
    Dump,
}

fn text() -> impl Strategy<Value = String> {
    // A small alphabet, so that rewrites often start like the old content.
    prop_oneof![
        Just(String::new()),
        Just("a".to_string()),
        Just("b".to_string()),
        "[a-c]{2,6}",
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => proptest::collection::vec(text(), 0..6).prop_map(Op::Append),
        1 => (0usize..8, proptest::collection::vec(text(), 0..6))
            .prop_map(|(keep, lines)| Op::Rewrite { keep, lines }),
        3 => Just(Op::Dump),
    ]
}

/// The rounds the sidecar prints, and what must be shipped: each dump is compared with the
/// content of the last (non-empty) dump; if that is a prefix of it, only the rest is new,
/// otherwise all of it is (the contract in the module doc). Also the "true" content: every
/// version of the file (a new one at each real truncation), as far as a dump showed it; `None`
/// when a new version started with all of the shipped content, which is indistinguishable from
/// growth (the documented limit).
fn model(ops: &[Op]) -> (Vec<Vec<String>>, Vec<String>, Option<Vec<String>>) {
    let mut file: Vec<String> = Vec::new();
    let mut last: Vec<String> = Vec::new();
    let mut rounds = Vec::new();
    let mut want = Vec::new();
    let mut truth = Vec::new();
    let mut distinguishable = true;
    // Lines of the current version shown by a dump, and whether the last dump was of it.
    let mut version_shown = 0;
    let mut last_is_this_version = false;
    for op in ops {
        match op {
            Op::Append(lines) => file.extend(lines.iter().cloned()),
            Op::Rewrite { keep, lines } => {
                if *keep < file.len() {
                    truth.extend(file[..version_shown].iter().cloned());
                    file.truncate(*keep);
                    version_shown = 0;
                    last_is_this_version = false;
                }
                file.extend(lines.iter().cloned());
            }
            Op::Dump if file.is_empty() => {}
            Op::Dump => {
                if file.starts_with(&last) {
                    want.extend(file[last.len()..].iter().cloned());
                    distinguishable &= last_is_this_version || last.is_empty();
                } else {
                    want.extend(file.iter().cloned());
                }
                last = file.clone();
                version_shown = file.len();
                last_is_this_version = true;
                rounds.push(file.clone());
            }
        }
    }
    truth.extend(file[..version_shown].iter().cloned());
    (rounds, want, distinguishable.then_some(truth))
}

fn multiset(lines: &[String]) -> std::collections::BTreeMap<&str, usize> {
    let mut m = std::collections::BTreeMap::new();
    for l in lines {
        *m.entry(l.as_str()).or_insert(0) += 1;
    }
    m
}

proptest! {
    #[test]
    fn dumps_ship_exactly_what_is_new_across_restarts(
        ops in proptest::collection::vec(op(), 0..30),
        restarts in proptest::collection::btree_set(0usize..120, 0..4),
        timeouts: bool,
    ) {
        let (rounds, want, _) = model(&ops);
        let stream = dump_stream(&rounds);
        let restarts: Vec<usize> = restarts.into_iter().collect();
        let out = run(&stream, DedupeOptions::default(), &restarts, timeouts);
        prop_assert_eq!(texts(&out), want);
    }

    #[test]
    fn with_a_tiny_hold_cap_nothing_is_lost(
        ops in proptest::collection::vec(op(), 0..30),
        restarts in proptest::collection::btree_set(0usize..120, 0..4),
        cap_lines in 0usize..4,
    ) {
        let (rounds, want, _) = model(&ops);
        let stream = dump_stream(&rounds);
        let restarts: Vec<usize> = restarts.into_iter().collect();
        let opts = DedupeOptions {
            max_held_bytes: cap_lines * (std::mem::size_of::<Decoded>() + 3),
            ..DedupeOptions::default()
        };
        let out = texts(&run(&stream, opts, &restarts, false));
        let (got, want) = (multiset(&out), multiset(&want));
        for (l, n) in &want {
            prop_assert!(got.get(l).copied().unwrap_or(0) >= *n, "{:?} shipped fewer than {} times", l, n);
        }
    }

    #[test]
    fn every_line_of_every_version_of_the_file_is_shipped_once(
        ops in proptest::collection::vec(op(), 0..30),
        restarts in proptest::collection::btree_set(0usize..120, 0..3),
    ) {
        let (rounds, _, truth) = model(&ops);
        prop_assume!(truth.is_some());
        let restarts: Vec<usize> = restarts.into_iter().collect();
        let out = texts(&run(&dump_stream(&rounds), DedupeOptions::default(), &restarts, false));
        prop_assert_eq!(out, truth.unwrap());
    }
}
