//! Replays the fuzz corpora: every file of `fuzz/corpus/<target>/` goes through the driver the
//! fuzz target `<target>` runs (`tests/fuzz_drivers/mod.rs`), so CI checks every input the
//! fuzzers found interesting (and every crash once fixed) on stable, in seconds, without
//! cargo-fuzz. A driver that panics on a file fails the test, naming the file.
//!
//! `fuzz/regressions/<target>/` holds inputs that made a fuzzer crash and whose fix is not in
//! yet: they are kept out of the corpus (libFuzzer stops at a crashing corpus file) and listed in
//! [`KNOWN_FAILURES`], which this test checks both ways: a listed input must still panic, so
//! that a fix is noticed and the input moved into the corpus; an unlisted one must not.
//! See docs/fuzzing.md.

#[path = "fuzz_drivers/mod.rs"]
mod drivers;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// `<target>/<file>` under fuzz/regressions/ that still crash, each with why.
const KNOWN_FAILURES: &[(&str, &str)] = &[];

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Runs `driver` on `data`; the panic message if it panicked.
fn replay(driver: fn(&[u8]), data: &[u8]) -> Option<String> {
    catch_unwind(AssertUnwindSafe(|| driver(data)))
        .err()
        .map(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".into())
        })
}

#[test]
fn every_corpus_file_passes_its_driver() {
    let mut failures = Vec::new();
    let mut total = 0;
    for (target, driver) in drivers::TARGETS {
        let dir = fuzz_dir().join("corpus").join(target);
        let files = files(&dir);
        assert!(
            !files.is_empty(),
            "no seed corpus for fuzz target {target} in {}",
            dir.display()
        );
        for file in files {
            let data = std::fs::read(&file).unwrap();
            total += 1;
            if let Some(msg) = replay(*driver, &data) {
                failures.push(format!("{}: {msg}", file.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} corpus files fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_fuzz_target_has_a_driver_and_a_corpus() {
    let targets = fuzz_dir().join("fuzz_targets");
    for file in files(&targets) {
        let name = file.file_stem().unwrap().to_str().unwrap();
        assert!(
            drivers::TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz target {name} has no entry in tests/fuzz_drivers/mod.rs TARGETS"
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains(&format!("drivers::{name}(data)")),
            "{} does not call drivers::{name}",
            file.display()
        );
    }
    assert_eq!(files(&targets).len(), drivers::TARGETS.len());
}

#[test]
fn regressions_fail_only_while_listed_as_known() {
    let mut wrong = Vec::new();
    for (target, driver) in drivers::TARGETS {
        for file in files(&fuzz_dir().join("regressions").join(target)) {
            let name = format!("{target}/{}", file.file_name().unwrap().to_str().unwrap());
            let known = KNOWN_FAILURES.iter().any(|(k, _)| *k == name);
            let panicked = replay(*driver, &std::fs::read(&file).unwrap());
            match (known, panicked) {
                (true, None) => wrong.push(format!(
                    "{name} passes now: move it to fuzz/corpus/{target}/ and out of KNOWN_FAILURES"
                )),
                (false, Some(msg)) => wrong.push(format!("{name}: {msg}")),
                _ => {}
            }
        }
    }
    for (k, _) in KNOWN_FAILURES {
        assert!(
            fuzz_dir().join("regressions").join(k).is_file(),
            "KNOWN_FAILURES lists {k}, which is not in fuzz/regressions/"
        );
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
