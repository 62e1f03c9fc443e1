//! Trees for the archive and S3 tests: a small project with every kind of
//! entry, a big one for the upload-interruption tests, and a snapshot of a
//! tree (content, mode, symlink target) to compare a restore with its source.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::Path;

use rand::RngCore as _;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Node {
    File { content: Vec<u8>, mode: u32 },
    Dir { mode: u32 },
    Link(String),
}

/// A project with text, binary, an executable, an empty directory, file and
/// directory symlinks, and the default-excluded directories.
pub(crate) fn make_project(dir: &Path) {
    let w = |p: &str, data: &[u8]| {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    };
    w(
        "src/main.rs",
        b"fn main() {\n    println!(\"hello\");\n}\n"
            .repeat(50)
            .as_slice(),
    );
    w("src/lib/util.ts", b"export const x = 1;\n");
    let mut bin = vec![0u8; 300_000];
    rand::rng().fill_bytes(&mut bin);
    w("assets/blob.dat", &bin);
    w("assets/empty.txt", b"");
    w("bin/run.sh", b"#!/bin/sh\necho run\n");
    std::fs::set_permissions(
        dir.join("bin/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    w("secret.txt", b"owner only\n");
    std::fs::set_permissions(
        dir.join("secret.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("empty/dir")).unwrap();
    symlink("src/main.rs", dir.join("main-link")).unwrap();
    symlink("../src", dir.join("bin/src-dir-link")).unwrap();
    w("node_modules/left-pad/index.js", b"module.exports = 1;\n");
    w(".git/HEAD", b"ref: refs/heads/main\n");
    w("src/__pycache__/x.pyc", b"\0\0");
    w("dist/bundle.js", b"bundle\n");
}

/// Every entry under `dir` (relative path → node), not following symlinks,
/// skipping names in `skip` anywhere.
pub(crate) fn snapshot(dir: &Path, skip: &[&str]) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    walk(dir, "", skip, &mut out);
    out
}

fn walk(dir: &Path, prefix: &str, skip: &[&str], out: &mut BTreeMap<String, Node>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if skip.contains(&name.as_str()) {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.file_type().is_symlink() {
            let t = std::fs::read_link(e.path()).unwrap();
            out.insert(rel, Node::Link(t.to_string_lossy().into_owned()));
        } else if meta.is_dir() {
            out.insert(rel.clone(), Node::Dir { mode });
            walk(&e.path(), &rel, skip, out);
        } else {
            out.insert(
                rel,
                Node::File {
                    content: std::fs::read(e.path()).unwrap(),
                    mode,
                },
            );
        }
    }
}

/// Files (not symlinks or directories) and symlinks in a snapshot.
pub(crate) fn file_count(snap: &BTreeMap<String, Node>) -> u64 {
    snap.values()
        .filter(|n| !matches!(n, Node::Dir { .. }))
        .count() as u64
}

/// `n` files of `size` random (incompressible) bytes: an archive that takes
/// a while to write and upload.
pub(crate) fn make_big(dir: &Path, n: usize, size: usize) {
    let mut rng = rand::rng();
    let mut buf = vec![0u8; size];
    for i in 0..n {
        let sub = dir.join(format!("d{}", i % 8));
        std::fs::create_dir_all(&sub).unwrap();
        rng.fill_bytes(&mut buf);
        std::fs::write(sub.join(format!("f{i}.bin")), &buf).unwrap();
    }
}
