//! The generated project tree of the archive benchmarks: source-like text
//! files (they compress like real code, about 3-4x), some incompressible
//! binary assets, and a `node_modules` of many small files that archives
//! exclude.

use std::io::Write as _;
use std::path::Path;

use rand::rngs::SmallRng;
use rand::{Rng as _, RngCore as _, SeedableRng as _};

/// What was generated.
pub(crate) struct TreeStats {
    pub files: usize,
    pub bytes: u64,
    pub node_modules_files: usize,
}

const WORDS: &[&str] = &[
    "const",
    "let",
    "return",
    "function",
    "export",
    "import",
    "from",
    "async",
    "await",
    "if",
    "else",
    "for",
    "while",
    "new",
    "this",
    "props",
    "state",
    "value",
    "items",
    "user",
    "project",
    "file",
    "path",
    "config",
    "options",
    "result",
    "error",
    "data",
    "response",
    "request",
    "handler",
    "render",
    "component",
    "useEffect",
    "useState",
    "setValue",
    "onClick",
    "className",
    "children",
    "index",
    "length",
    "map",
    "filter",
    "reduce",
    "forEach",
    "push",
    "JSON",
    "parse",
    "stringify",
    "console",
    "log",
    "Promise",
    "resolve",
    "reject",
    "fetch",
    "headers",
    "status",
    "message",
    "title",
    "button",
    "input",
    "label",
    "style",
    "theme",
    "color",
    "width",
    "height",
    "margin",
    "padding",
    "display",
    "flex",
    "grid",
    "token",
    "session",
    "router",
    "query",
    "params",
    "body",
    "method",
    "GET",
    "POST",
    "true",
    "false",
    "null",
    "undefined",
    "number",
    "string",
    "boolean",
    "interface",
    "type",
    "class",
    "extends",
    "implements",
    "public",
    "private",
    "static",
    "readonly",
    "default",
    "case",
    "switch",
    "break",
    "continue",
    "try",
    "catch",
    "finally",
    "throw",
    "Error",
    "Date",
    "Math",
    "Object",
    "Array",
];
const PUNCT: &[&str] = &[
    "(", ")", " = ", ", ", ".", ";", " => ", "{", "}", "[", "]", ": ", " + ", " && ",
];
const TEXT_EXT: &[&str] = &[
    "ts", "tsx", "js", "jsx", "css", "json", "md", "py", "rs", "html",
];
const BIN_EXT: &[&str] = &["png", "jpg", "woff2", "ico", "webp"];
const DIRS: &[&str] = &[
    "components",
    "pages",
    "lib",
    "utils",
    "hooks",
    "styles",
    "api",
    "server",
    "tests",
    "assets",
];

/// Source-like text of about `size` bytes.
fn text(rng: &mut SmallRng, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 128);
    let mut indent = 0usize;
    while out.len() < size {
        out.resize(out.len() + indent * 2, b' ');
        let n = rng.random_range(3..12);
        for i in 0..n {
            out.extend_from_slice(WORDS[rng.random_range(0..WORDS.len())].as_bytes());
            if rng.random_bool(0.15) {
                write!(out, "{}", rng.random_range(0..10_000)).ok();
            }
            if i + 1 < n {
                let p = if rng.random_bool(0.5) {
                    " "
                } else {
                    PUNCT[rng.random_range(0..PUNCT.len())]
                };
                out.extend_from_slice(p.as_bytes());
            }
        }
        if rng.random_bool(0.2) {
            out.extend_from_slice(b" {");
            indent = (indent + 1).min(6);
        } else if indent > 0 && rng.random_bool(0.2) {
            indent -= 1;
            out.extend_from_slice(b";\n");
            out.resize(out.len() + indent * 2, b' ');
            out.push(b'}');
        } else {
            out.push(b';');
        }
        out.push(b'\n');
    }
    out.truncate(size);
    out
}

/// Writes `files` files totalling about `total` bytes under `root`, plus
/// `nm_files` small files under `root/node_modules`.
pub(crate) fn generate(
    root: &Path,
    files: usize,
    total: u64,
    nm_files: usize,
) -> std::io::Result<TreeStats> {
    let mut rng = SmallRng::seed_from_u64(42);
    // 94% text, 6% binary assets carrying 30% of the bytes.
    let bin_files = files * 6 / 100;
    let text_files = files - bin_files;
    let bin_mean = (total * 30 / 100) / bin_files.max(1) as u64;
    let text_mean = (total * 70 / 100) / text_files.max(1) as u64;
    let mut bytes = 0u64;
    for i in 0..files {
        let d1 = DIRS[i % DIRS.len()];
        let dir = root.join(format!("src/{d1}/m{}/s{}", (i / 10) % 25, i % 7));
        std::fs::create_dir_all(&dir)?;
        let (name, data) = if i % 100 < 6 {
            let size = rng.random_range(bin_mean / 4..bin_mean * 7 / 4) as usize;
            let mut data = vec![0u8; size];
            rng.fill_bytes(&mut data);
            (format!("asset{i}.{}", BIN_EXT[i % BIN_EXT.len()]), data)
        } else {
            let size = rng.random_range(text_mean / 4..text_mean * 7 / 4) as usize;
            (
                format!("file{i}.{}", TEXT_EXT[i % TEXT_EXT.len()]),
                text(&mut rng, size),
            )
        };
        bytes += data.len() as u64;
        std::fs::write(dir.join(name), data)?;
    }
    for i in 0..nm_files {
        let dir = root.join(format!(
            "node_modules/pkg{}/{}",
            i / 40,
            if i % 2 == 0 { "lib" } else { "dist" }
        ));
        std::fs::create_dir_all(&dir)?;
        let size = rng.random_range(500..4000);
        std::fs::write(dir.join(format!("index{i}.js")), text(&mut rng, size))?;
    }
    Ok(TreeStats {
        files,
        bytes,
        node_modules_files: nm_files,
    })
}
