//! The path resolver: any string as a client path, against a real root
//! folder that holds symlinks pointing out of it (to `/`, to `..`, to an
//! absolute path inside). Nothing may panic; `clean` never answers a path
//! that leaves the root; and whatever `host_path` or `metadata` resolves
//! lies inside the root.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use devgate_fs::Root;
use libfuzzer_sys::fuzz_target;

/// The root, made once per process: `a/b/file`, `out -> /`,
/// `up -> ..`, `a/abs -> <root>/a` (absolute, inside), `a/loop -> loop`.
fn root() -> &'static (tempfile::TempDir, Root, PathBuf) {
    static ROOT: OnceLock<(tempfile::TempDir, Root, PathBuf)> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("root");
        std::fs::create_dir_all(base.join("a/b")).expect("mkdir");
        std::fs::write(base.join("a/b/file"), b"x").expect("write");
        std::os::unix::fs::symlink("/", base.join("out")).expect("symlink");
        std::os::unix::fs::symlink("..", base.join("up")).expect("symlink");
        std::os::unix::fs::symlink(base.join("a"), base.join("a/abs")).expect("symlink");
        std::os::unix::fs::symlink("loop", base.join("a/loop")).expect("symlink");
        let root = Root::open(&base).expect("open root");
        let canonical = base.canonicalize().expect("canonical");
        (dir, root, canonical)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let (_, root, canonical) = root();
    if let Ok(clean) = Root::clean(path) {
        assert!(!clean.starts_with('/'), "{clean:?}");
        assert!(!clean.split('/').any(|c| c == ".." || c == "."), "{clean:?}");
        assert!(!clean.contains('\0'), "{clean:?}");
        assert_eq!(Root::clean(&clean).ok().as_deref(), Some(clean.as_str()), "clean is stable");
    }
    if let Ok(host) = root.host_path(path) {
        let real = host.canonicalize().unwrap_or(host.clone());
        assert!(real.starts_with(canonical), "{path:?} resolved to {}", real.display());
    }
    let _ = root.metadata(path);
    let _ = root.symlink_metadata(path);
    if let Ok(mut f) = root.open_read(path) {
        use std::io::Read as _;
        let mut buf = [0u8; 16];
        let _ = f.read(&mut buf);
    }
});
