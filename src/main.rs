//! loglet: the command line. `run`, `check-config` and `--version`.
#![forbid(unsafe_code)]

fn main() {}
