//! House rules, checked on the source tree the way rust-analyzer's `tidy`
//! test does it: plain text scans, no compilation, milliseconds.
//!
//! - every Rust file opens with a `//!` comment saying what it is for;
//! - product code (each crate's `src/`, unit-test modules and files aside)
//!   has no `unwrap()`/`expect(`: errors are handled or carried;
//! - `allow(deprecated)` states its reason (`reason = "..."`);
//! - no product source file is longer than 800 lines;
//! - the gateway keeps no state in process-wide statics (`AppState` holds it);
//! - the gateway's modules import each other along the layering that
//!   ARCHITECTURE.md states ("Layering"): no import against it, and no
//!   cycle; files over the cap are listed below as debt, which may only
//!   shrink.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 800;

/// Crates whose `src/` is product code (shipped in a binary or a library).
const PRODUCT_CRATES: &[&str] = &["agent", "gateway", "fs", "pause", "proto", "snapshot"];

/// Folders holding Rust files of the workspace (product, tests, benches).
const ALL_RUST: &[&str] = &[
    "agent", "gateway", "fs", "pause", "proto", "snapshot", "tests", "bench", "fuzz",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("readable directory").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if path.is_dir() {
            // Build output, npm trees and fuzzing corpora are not ours.
            if !matches!(&*name, "target" | "node_modules" | "corpus" | "artifacts") {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

fn files_under(dirs: &[&str], sub: &str) -> Vec<PathBuf> {
    let root = workspace();
    let mut out = Vec::new();
    for d in dirs {
        rust_files(&root.join(d).join(sub), &mut out);
    }
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(workspace())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The file's code before its unit-test module (`#[cfg(test)]` starts the
/// tests at the end of a file, the house convention), comments dropped.
fn product_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push((i + 1, line));
    }
    out
}

/// A unit-test module in a file of its own: `x/tests.rs`, declared as
/// `#[cfg(test)] mod tests;` by `x.rs` or `x/mod.rs`.
fn is_test_module(path: &Path) -> bool {
    let (Some(name), Some(dir)) = (path.file_name(), path.parent()) else {
        return false;
    };
    name == "tests.rs"
        && [dir.with_extension("rs"), dir.join("mod.rs")]
            .iter()
            .any(|parent| {
                std::fs::read_to_string(parent)
                    .is_ok_and(|text| text.contains("#[cfg(test)]\nmod tests;"))
            })
}

#[test]
fn every_file_opens_with_a_module_comment() {
    let mut bad = Vec::new();
    for dir in ALL_RUST {
        for path in files_under(&[dir], "") {
            if !read(&path).starts_with("//!") {
                bad.push(rel(&path));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "files without a leading //! comment: {bad:#?}"
    );
}

#[test]
fn no_unwrap_or_expect_in_product_code() {
    let mut bad = Vec::new();
    for path in files_under(PRODUCT_CRATES, "src") {
        if is_test_module(&path) {
            continue;
        }
        let text = read(&path);
        for (n, line) in product_lines(&text) {
            if line.contains(".unwrap()") || line.contains(".expect(") {
                bad.push(format!("{}:{n}: {}", rel(&path), line.trim()));
            }
        }
    }
    assert!(bad.is_empty(), "unwrap/expect outside tests: {bad:#?}");
}

#[test]
fn allow_deprecated_states_a_reason() {
    let mut bad = Vec::new();
    for dir in ALL_RUST {
        for path in files_under(&[dir], "") {
            for (i, line) in read(&path).lines().enumerate() {
                if line.contains(concat!("allow(", "deprecated")) && !line.contains("reason =") {
                    bad.push(format!("{}:{}", rel(&path), i + 1));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "allow of deprecated items without a reason: {bad:#?}"
    );
}

/// The gateway keeps its state in `AppState` (built per gateway, so tests
/// and replicas in one process never share it), not in process-wide
/// statics. The statics it has, each with the reason it may stay.
const GATEWAY_STATICS: &[(&str, &str)] = &[
    // The global allocator is process-wide by nature.
    ("gateway/src/main.rs", "ALLOC"),
    // One S3 client (its connection pool) per process; it holds no project state.
    ("gateway/src/s3.rs", "CLIENT"),
    // Which shard of a preview pool a thread uses: a thread's number, no
    // state (the idle connections are in each `Pool`, held by `AppState`).
    ("gateway/src/preview_state/pool.rs", "NEXT_THREAD"),
    ("gateway/src/preview_state/pool.rs", "SHARD"),
    // Per thread: whether it is one of a gateway's serving threads, and that
    // gateway's runtime; set by each gateway's listener on its own threads.
    ("gateway/src/conn.rs", "SERVING"),
];

#[test]
fn the_gateway_keeps_no_state_in_statics() {
    let mut found = Vec::new();
    for path in files_under(&["gateway"], "src") {
        if is_test_module(&path) {
            continue;
        }
        let text = read(&path);
        for (_, line) in product_lines(&text) {
            let t = line.trim_start();
            let t = t.strip_prefix("pub ").unwrap_or(t);
            if let Some(rest) = t.strip_prefix("static ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                found.push((rel(&path), name));
            }
        }
    }
    let allowed: Vec<(String, String)> = GATEWAY_STATICS
        .iter()
        .map(|(f, n)| (f.to_string(), n.to_string()))
        .collect();
    let extra: Vec<_> = found.iter().filter(|s| !allowed.contains(s)).collect();
    assert!(
        extra.is_empty(),
        "statics in the gateway (keep state in AppState): {extra:#?}"
    );
    let gone: Vec<_> = allowed.iter().filter(|s| !found.contains(s)).collect();
    assert!(gone.is_empty(), "listed statics that are gone: {gone:#?}");
}

/// Files over the cap today, each with the length it may not pass, to be
/// split (issue 13): a file on this list may shrink, never grow, and one
/// that fits the cap must leave the list.
const TOO_LONG: &[(&str, usize)] = &[];

#[test]
fn no_product_file_over_800_lines() {
    let mut bad = Vec::new();
    for path in files_under(PRODUCT_CRATES, "src") {
        let n = read(&path).lines().count();
        let name = rel(&path);
        let allowed = TOO_LONG
            .iter()
            .find(|(f, _)| *f == name)
            .map(|(_, max)| *max);
        match allowed {
            Some(max) if n <= MAX_LINES => bad.push(format!(
                "{name}: {n} lines, fits now: drop it from TOO_LONG ({max})"
            )),
            Some(max) if n > max => bad.push(format!("{name}: {n} lines, grew past {max}")),
            Some(_) => {}
            None if n > MAX_LINES => bad.push(format!("{name}: {n} lines")),
            None => {}
        }
    }
    assert!(
        bad.is_empty(),
        "split these (at most {MAX_LINES} lines): {bad:#?}"
    );
}

/// The gateway's top-level modules and the `crate::` modules each one uses
/// in code (comments and doc links aside).
fn gateway_imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = workspace().join("gateway/src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in files_under(&["gateway"], "src") {
        let relative = path.strip_prefix(&src).expect("under gateway/src");
        let first = relative
            .components()
            .next()
            .expect("a file")
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        let text = read(&path);
        let deps = graph.entry(first.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or_default();
            for (at, _) in code.match_indices("crate::") {
                let name: String = code[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != first {
                    deps.insert(name);
                }
            }
            // `use crate::{a, b::c}` groups.
            if let Some(rest) = code.trim_start().strip_prefix("use crate::{") {
                for part in rest.split(',') {
                    let name: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != first {
                        deps.insert(name);
                    }
                }
            }
        }
    }
    graph
}

/// What each gateway module must not import: the layering of
/// ARCHITECTURE.md. Leaves know nothing of the layers above them; the
/// runtime and the stores know nothing of HTTP, orchestration or previews;
/// only the entry points import the router and the listener.
const FORBIDDEN: &[(&str, &[&str])] = &[
    ("error", &["*"]),
    ("ids", &["*except error"]),
    ("tls", &["*"]),
    ("agent_types", &["*"]),
    ("activity", &["*"]),
    (
        "preview_state",
        &[
            "runtime",
            "state",
            "lifecycle",
            "idle",
            "preview",
            "api",
            "auth",
            "agent_client",
            "server",
        ],
    ),
    (
        "events",
        &[
            "runtime",
            "state",
            "lifecycle",
            "idle",
            "preview",
            "api",
            "auth",
            "agent_client",
            "server",
        ],
    ),
    ("metrics", &["*except error"]),
    (
        "store",
        &[
            "runtime",
            "state",
            "lifecycle",
            "idle",
            "preview",
            "api",
            "auth",
            "agent_client",
        ],
    ),
    (
        "archive_store",
        &[
            "runtime",
            "state",
            "lifecycle",
            "idle",
            "preview",
            "api",
            "auth",
        ],
    ),
    (
        "agent_client",
        &[
            "runtime",
            "state",
            "lifecycle",
            "idle",
            "preview",
            "api",
            "auth",
            "store",
        ],
    ),
    (
        "runtime",
        &[
            "state",
            "lifecycle",
            "idle",
            "preview",
            "api",
            "auth",
            "store",
        ],
    ),
    (
        "local_files",
        &["state", "lifecycle", "idle", "preview", "api"],
    ),
    (
        "templates",
        &["state", "lifecycle", "idle", "preview", "api", "runtime"],
    ),
    (
        "config",
        &[
            "state",
            "lifecycle",
            "idle",
            "preview",
            "api",
            "auth",
            "server",
            "store",
            "archive_store",
            "agent_client",
        ],
    ),
    (
        "auth",
        &["state", "lifecycle", "idle", "preview", "api", "server"],
    ),
    ("lifecycle", &["api", "preview", "server", "idle"]),
    ("idle", &["api", "preview", "server"]),
    ("state", &["api", "server", "lifecycle", "idle", "preview"]),
    ("preview", &["api", "server"]),
    ("api", &["server"]),
];

#[test]
fn gateway_modules_follow_the_layering() {
    let graph = gateway_imports();
    let mut bad = Vec::new();
    for (module, rules) in FORBIDDEN {
        let Some(deps) = graph.get(*module) else {
            bad.push(format!("{module}: no such module (update the rule)"));
            continue;
        };
        for dep in deps {
            let forbidden = rules.iter().any(|r| {
                *r == dep
                    || *r == "*"
                    || r.strip_prefix("*except ")
                        .is_some_and(|allowed| allowed.split(' ').all(|a| a != dep))
            });
            if forbidden {
                bad.push(format!("{module} imports {dep}"));
            }
        }
    }
    assert!(bad.is_empty(), "imports against the layering: {bad:#?}");
}

/// Strongly connected components of more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct Tarjan<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<BTreeSet<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.graph.contains_key(w) {
                    continue;
                }
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low[v];
                    self.low.insert(v, lv.min(lw));
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low[v];
                    self.low.insert(v, lv.min(iw));
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = BTreeSet::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    scc.insert(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    self.out.push(scc);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

/// No two gateway modules import each other, directly or through others:
/// the state the preview proxy keeps lives in `preview_state`, below
/// `state`, and `lifecycle` owns waking a project (`ensure_active`).
#[test]
fn gateway_has_no_import_cycle() {
    let found = cycles(&gateway_imports());
    assert!(found.is_empty(), "import cycles: {found:#?}");
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let edge = |g: &mut BTreeMap<String, BTreeSet<String>>, a: &str, b: &str| {
        g.entry(a.into()).or_default().insert(b.into());
        g.entry(b.into()).or_default();
    };
    edge(&mut g, "a", "b");
    edge(&mut g, "b", "c");
    edge(&mut g, "c", "a");
    edge(&mut g, "c", "d");
    edge(&mut g, "d", "e");
    let found = cycles(&g);
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0],
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    );
}
