//! `cargo fuzz run parsers`: see docs/fuzzing.md. The driver is shared with tests/fuzz_corpus.rs.
#![no_main]

#[path = "../../tests/fuzz_drivers/mod.rs"]
mod drivers;

libfuzzer_sys::fuzz_target!(|data: &[u8]| drivers::parsers(data));
