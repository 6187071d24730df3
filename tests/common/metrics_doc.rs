//! docs/metrics.md as data: its metric tables (`| metric | type | meaning |`) and its label table
//! (`| label | values | bounded by |`), read the way a person reads them.
//!
//! Include with `#[path = "common/metrics_doc.rs"] mod metrics_doc;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

/// One documented metric.
pub struct DocMetric {
    /// `counter`, `gauge` or `histogram`.
    pub kind: String,
    /// The row's meaning column.
    pub meaning: String,
}

pub fn text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rows of every Markdown table whose header's first cell is `first`, as trimmed cells
/// (the header and the `|---|` line left out).
pub fn table_rows(markdown: &str, first: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in markdown.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        let cells: Vec<String> = line
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect();
        if cells
            .iter()
            .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
        {
            continue;
        }
        if !in_table {
            // A header row opens a table.
            in_table = cells.first().map(String::as_str) == Some(first);
            continue;
        }
        rows.push(cells);
    }
    rows
}

/// The one `name` in backticks of a cell.
fn code(cell: &str) -> String {
    let inner = cell
        .strip_prefix('`')
        .and_then(|c| c.strip_suffix('`'))
        .unwrap_or_else(|| panic!("docs/metrics.md: expected `name`, found {cell:?}"));
    assert!(
        !inner.contains('`'),
        "docs/metrics.md: one name per cell: {cell:?}"
    );
    inner.to_string()
}

/// Every metric of the metric tables, by name.
pub fn metrics() -> BTreeMap<String, DocMetric> {
    let mut out = BTreeMap::new();
    for row in table_rows(&text(), "metric") {
        let [name, kind, meaning] = row.as_slice() else {
            panic!(
                "docs/metrics.md: a metric row of {} cells: {row:?}",
                row.len()
            );
        };
        let name = code(name);
        assert!(
            matches!(kind.as_str(), "counter" | "gauge" | "histogram" | "summary"),
            "docs/metrics.md: {name}: type {kind:?}"
        );
        let old = out.insert(
            name.clone(),
            DocMetric {
                kind: kind.clone(),
                meaning: meaning.clone(),
            },
        );
        assert!(old.is_none(), "docs/metrics.md: {name} is listed twice");
    }
    assert!(!out.is_empty(), "docs/metrics.md: no metric tables found");
    out
}

/// Every label of the label table.
pub fn labels() -> Vec<String> {
    let rows = table_rows(&text(), "label");
    assert!(!rows.is_empty(), "docs/metrics.md: no label table found");
    rows.iter().map(|r| code(&r[0])).collect()
}
