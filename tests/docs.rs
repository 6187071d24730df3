//! The docs are part of the contract: every metric and every config key is documented, and
//! every example config in the repository passes `loglet check-config`.

use std::collections::BTreeSet;
use std::path::Path;

use loglet::config::Config;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `loglet_…` names in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("loglet_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        // Histogram series suffixes are not metric names of their own.
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        if name.len() > "loglet_".len() {
            names.insert(name.to_string());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_metric_is_documented_and_every_documented_metric_exists() {
    // Every metric is registered in one place.
    let code = metric_names(&read("src/metrics.rs"));
    let docs = metric_names(&read("docs/metrics.md"));
    let undocumented: Vec<_> = code.difference(&docs).collect();
    let stale: Vec<_> = docs.difference(&code).collect();
    assert!(
        undocumented.is_empty(),
        "metrics missing from docs/metrics.md: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "docs/metrics.md names metrics the code lacks: {stale:?}"
    );
}

/// Every leaf key path of a config value, with map keys under `sinks` written `<name>`.
fn key_paths(v: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let serde_json::Value::Object(m) = v {
        for (k, child) in m {
            let key = if prefix == "sinks" {
                "<name>"
            } else {
                k.as_str()
            };
            let path = if prefix.is_empty() {
                key.to_string()
            } else {
                format!("{prefix}.{key}")
            };
            match child {
                serde_json::Value::Object(inner) if !inner.is_empty() && !is_free_map(&path) => {
                    key_paths(child, &path, out)
                }
                _ => {
                    out.insert(path);
                }
            }
        }
    }
}

/// Maps whose keys are the user's (header names), not config keys.
fn is_free_map(path: &str) -> bool {
    path.ends_with(".headers")
}

#[test]
fn every_config_key_is_in_the_configuration_reference() {
    let config = Config::parse_str(
        "sinks:\n  example:\n    type: http\n    url: http://127.0.0.1:1/\n    auth: {bearer: {token_file: /t}}\n    tls: {ca_file: /ca.pem, cert_file: /c.pem, key_file: /k.pem}\n",
        Path::new("test"),
    )
    .unwrap();
    let value = serde_json::to_value(&config).unwrap();
    let mut keys = BTreeSet::new();
    key_paths(&value, "", &mut keys);
    let docs = read("docs/configuration.md");
    let missing: Vec<_> = keys
        .iter()
        .filter(|k| !docs.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from docs/configuration.md: {missing:#?}"
    );
}

#[test]
fn every_example_config_in_the_repository_passes_check_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for dir in ["examples", "docs/examples"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_loglet"))
                    .arg("check-config")
                    .arg(&p)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}: {}",
                    p.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no example configs found");
}
