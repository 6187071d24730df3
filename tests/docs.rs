//! The docs are part of the contract: every metric and every config key is documented, and
//! every example config in the repository passes `loglet check-config`.

use std::collections::BTreeSet;
use std::path::Path;

use loglet::config::Config;

#[path = "common/metrics_doc.rs"]
mod metrics_doc;

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

/// The label names of every metric src/metrics.rs registers: the first `&[...]` after each
/// `"loglet_…"` name, up to the next name.
fn registered_labels() -> std::collections::BTreeMap<String, Vec<String>> {
    let code = read("src/metrics.rs");
    let mut out = std::collections::BTreeMap::new();
    let starts: Vec<usize> = code.match_indices("\"loglet_").map(|(i, _)| i).collect();
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(code.len());
        let span = &code[start + 1..end];
        let name = &span[..span.find('"').unwrap()];
        let labels = match span.find("&[") {
            Some(i) => {
                let list = &span[i + 2..i + 2 + span[i + 2..].find(']').unwrap()];
                list.split(',')
                    .map(|l| l.trim().trim_matches('"').to_string())
                    .filter(|l| !l.is_empty())
                    .collect()
            }
            None => Vec::new(),
        };
        out.insert(name.to_string(), labels);
    }
    assert!(
        out.len() > 20,
        "found only {} metrics in src/metrics.rs",
        out.len()
    );
    out
}

#[test]
fn every_label_the_code_sets_is_documented_and_on_its_metrics_row() {
    let registered = registered_labels();
    let code: BTreeSet<String> = registered.values().flatten().cloned().collect();
    for l in &code {
        assert!(
            l.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "src/metrics.rs: a label name that is not a plain literal: {l:?}"
        );
    }
    let documented = metrics_doc::labels();
    let docs: BTreeSet<String> = documented.iter().cloned().collect();
    assert_eq!(docs.len(), documented.len(), "a label is listed twice");
    let undocumented: Vec<_> = code.difference(&docs).collect();
    let stale: Vec<_> = docs.difference(&code).collect();
    assert!(
        undocumented.is_empty(),
        "labels missing from docs/metrics.md's label table: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "docs/metrics.md's label table names labels the code does not set: {stale:?}"
    );
    // And each metric's row says which labels it has.
    let rows = metrics_doc::metrics();
    for (name, labels) in &registered {
        let row = rows
            .get(name)
            .unwrap_or_else(|| panic!("{name} has no row in docs/metrics.md"));
        for l in labels {
            assert!(
                row.meaning.contains(&format!("`{l}`")),
                "docs/metrics.md: the row of {name} does not name its label `{l}`"
            );
        }
    }
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
fn the_compression_table_lists_what_each_sink_type_accepts() {
    let docs = read("docs/configuration.md");
    let table = docs
        .split("| sink type | compression accepted | unset |")
        .nth(1)
        .expect("docs/configuration.md: the compression table");
    let mut types = BTreeSet::new();
    for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (kind, accepted) = (cells[1], cells[2]);
        let sink_type = kind.split('`').nth(1).expect("a sink type in backquotes");
        let mut yaml = format!("sinks:\n  s:\n    type: {sink_type}\n");
        if sink_type != "stdout" {
            yaml.push_str("    url: http://127.0.0.1:1/\n");
        }
        if sink_type == "splunk_hec" {
            yaml.push_str("    splunk_hec: {token: t}\n");
        }
        if let Some(encoding) = kind.split("encoding: ").nth(1) {
            let encoding = encoding.trim_end_matches(['`', ')']);
            yaml.push_str(&format!("    loki: {{encoding: {encoding}}}\n"));
        }
        let parses = |yaml: &str| Config::parse_str(yaml, Path::new("test")).is_ok();
        assert!(parses(&yaml), "{kind} without compression: {yaml}");
        let works: Vec<&str> = ["none", "gzip", "zstd", "snappy"]
            .into_iter()
            .filter(|c| parses(&format!("{yaml}    compression: {c}\n")))
            .collect();
        let listed: Vec<&str> = accepted.split(", ").map(|c| c.trim_matches('`')).collect();
        assert_eq!(
            listed, works,
            "docs/configuration.md: the compression of {kind}"
        );
        types.insert(sink_type.to_string());
    }
    let every: BTreeSet<String> = [
        "stdout",
        "http",
        "loki",
        "elasticsearch",
        "otlp",
        "splunk_hec",
    ]
    .map(String::from)
    .into();
    assert_eq!(types, every, "a sink type without a row");
}

/// Runs the real binary's `loglet check-config` on a file; its stderr when it fails.
fn check_config(file: &Path) -> Result<(), String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loglet"))
        .arg("check-config")
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("failed to run loglet check-config: {e}"));
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Every `*.yaml` and `*.yml` file under `dir`, recursively, sorted.
fn yaml_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
    out.sort();
}

/// A fenced code block of a Markdown file.
struct Block {
    /// Where it starts, `file:line`.
    at: String,
    /// The fence's info string: `yaml`, `yaml fragment`.
    info: String,
    /// The text between the fences, with the fence's indentation removed (a block in a list item).
    text: String,
}

fn fenced_blocks(file: &str, markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, usize, String, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim_start();
        match &mut open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some((i + 1, indent, info.trim().to_string(), String::new()));
                }
            }
            Some((start, fence_indent, info, text)) => {
                if trimmed == "```" {
                    blocks.push(Block {
                        at: format!("{file}:{start}"),
                        info: std::mem::take(info),
                        text: std::mem::take(text),
                    });
                    open = None;
                } else {
                    let cut = indent.min(*fence_indent);
                    text.push_str(&line[cut..]);
                    text.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "{file}: a code fence is not closed");
    blocks
}

/// What a ```yaml block of the docs is, by its shape.
#[derive(Debug, PartialEq)]
enum YamlBlock {
    /// A mapping with `sinks`: a whole loglet config, which `check-config` must accept.
    Config,
    /// Marked ```yaml fragment: part of a config or of an object (a `routes:` list, Pod
    /// annotations, a side-by-side comparison), not meant to stand alone.
    Fragment,
    /// Every document has `apiVersion` and `kind`: Kubernetes or kustomize objects, not a config.
    Objects,
}

fn classify(b: &Block) -> YamlBlock {
    let mut words = b.info.split_whitespace().skip(1);
    if words.any(|w| w == "fragment") {
        return YamlBlock::Fragment;
    }
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&b.text)
        .unwrap_or_else(|e| panic!("{}: a ```yaml block that is not YAML: {e}", b.at));
    let docs: Vec<_> = docs.into_iter().filter(|d| !d.is_null()).collect();
    if !docs.is_empty()
        && docs
            .iter()
            .all(|d| d.get("apiVersion").is_some() && d.get("kind").is_some())
    {
        return YamlBlock::Objects;
    }
    if let [doc] = docs.as_slice()
        && doc.get("sinks").is_some()
    {
        return YamlBlock::Config;
    }
    panic!(
        "{}: a ```yaml block that is neither a whole loglet config (a mapping with `sinks:`) nor \
         Kubernetes objects (`apiVersion` and `kind`); if it is part of something, mark its fence \
         ```yaml fragment",
        b.at
    )
}

#[test]
fn every_example_config_in_the_repository_passes_check_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut failures = Vec::new();

    // Example files, at any depth.
    let mut files = Vec::new();
    for dir in ["examples", "docs/examples"] {
        yaml_files(&root.join(dir), &mut files);
    }
    assert!(!files.is_empty(), "no example configs found");
    for f in &files {
        if let Err(e) = check_config(f) {
            failures.push(format!("{}: {e}", f.display()));
        }
    }

    // The configs in the docs. Each ```yaml block is classified by its shape (see `classify`):
    // whole configs are written to a file and checked; fragments must say so in their fence.
    // The ConfigMaps' configs (base and overlays, rendered by kustomize) are checked with the
    // binary in tests/manifests.rs, where they are rendered. fuzz/corpus/config/ is left out on
    // purpose: those are fuzz seeds, some invalid by design (bad_values.yaml, not_utf8.yaml,
    // problems.yaml), and tests/fuzz_corpus.rs replays them all.
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut markdown: Vec<_> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    markdown.push(root.join("README.md"));
    markdown.sort();
    let mut configs = 0;
    for md in &markdown {
        let rel = md
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(md).unwrap();
        for b in fenced_blocks(&rel, &text) {
            if !matches!(b.info.split_whitespace().next(), Some("yaml" | "yml")) {
                continue;
            }
            if classify(&b) != YamlBlock::Config {
                continue;
            }
            let file = tmp.path().join(b.at.replace(['/', ':'], "_") + ".yaml");
            std::fs::write(&file, &b.text).unwrap();
            if let Err(e) = check_config(&file) {
                failures.push(format!("{} (a config in the docs): {e}", b.at));
            }
            configs += 1;
        }
    }
    assert!(configs > 0, "no configs found in the docs");
    assert!(
        failures.is_empty(),
        "`loglet check-config` refuses:\n{}",
        failures.join("\n")
    );
}

#[test]
fn yaml_blocks_are_classified_by_shape() {
    let block = |info: &str, text: &str| Block {
        at: "test".into(),
        info: info.into(),
        text: text.into(),
    };
    assert_eq!(
        classify(&block("yaml", "sinks:\n  out: {type: stdout}\n")),
        YamlBlock::Config
    );
    assert_eq!(
        classify(&block(
            "yaml",
            "apiVersion: v1\nkind: Pod\n---\napiVersion: v1\nkind: Service\n"
        )),
        YamlBlock::Objects
    );
    assert_eq!(
        classify(&block("yaml fragment", "routes:\n  - sinks: [a]\n")),
        YamlBlock::Fragment
    );
    let unmarked = std::panic::catch_unwind(|| classify(&block("yaml", "routes: []\n")));
    assert!(unmarked.is_err(), "an unmarked fragment is an error");
    let blocks = fenced_blocks(
        "t.md",
        "a\n\n  ```yaml\n  sinks: {}\n  ```\n```sh\nls\n```\n",
    );
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].text, "sinks: {}\n");
    assert_eq!(blocks[0].at, "t.md:3");
    assert_eq!(blocks[1].info, "sh");
}
