//! The names of the agent's own temporary entries inside a project, and the
//! sweep that removes those a killed agent left behind. Listings, archives
//! and watch events never show a temporary file.

/// Prefix of the temporary files of in-progress writes.
pub const TMP_PREFIX: &str = ".agent-tmp-";

/// Prefix of the staging directory of a git clone in progress.
pub const CLONE_PREFIX: &str = ".agent-clone-";

/// The temporary file name of write number `id`.
pub fn tmp_name(id: u64) -> String {
    format!("{TMP_PREFIX}{id:016x}")
}

/// The staging directory of a snapshot restore in progress: a temporary
/// name, so listings, archives, snapshots and watch events leave it out.
pub fn restore_dir_name(id: u64) -> String {
    format!("{TMP_PREFIX}restore-{id:016x}")
}

/// The staging directory of extract number `id`: a temporary name, so
/// listings, archives and watch events never show it, and the start-up sweep
/// removes it (with everything inside) when a killed agent left it.
pub fn staging_name(id: u64) -> String {
    format!("{TMP_PREFIX}extract-{id:016x}")
}

/// Whether `name` is one of the agent's own entries (a write's temporary
/// file, a restore's, an extract's or a clone's staging directory), which
/// snapshots leave out.
pub fn is_agent_entry(name: &str) -> bool {
    is_temporary(name) || name.starts_with(CLONE_PREFIX)
}

/// Whether `name` (one path component) is a temporary entry (a write's
/// temporary file, a restore's or an extract's staging directory), which
/// listings, archives and watch events leave out.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with(TMP_PREFIX)
}

/// Removes the directory `name` in `dir` with everything in it, like
/// `remove_dir_all`, also when a directory inside is read-only: without
/// root, the entries of a directory without write permission cannot be
/// removed, and a restore's staging directory carries the snapshot's modes
/// (a project may hold a `0555` folder, such as Go's module cache). On such
/// a refusal every directory under `name` is made writable by its owner and
/// the removal tried again. Symlinks are never followed.
pub fn remove_tree(dir: &cap_std::fs::Dir, name: &str) -> std::io::Result<()> {
    match dir.remove_dir_all(name) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            make_writable(dir, std::path::Path::new(name))?;
            dir.remove_dir_all(name)
        }
        other => other,
    }
}

/// [`remove_tree`] of a folder named by its path.
pub fn remove_tree_at(path: &std::path::Path) -> std::io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} has no parent", path.display()),
        ));
    };
    let dir = cap_std::fs::Dir::open_ambient_dir(parent, cap_std::ambient_authority())?;
    remove_tree(&dir, &name.to_string_lossy())
}

/// Gives the owner full access to directory `name` and every directory
/// under it (not following symlinks).
fn make_writable(dir: &cap_std::fs::Dir, name: &std::path::Path) -> std::io::Result<()> {
    use cap_std::fs::PermissionsExt as _;
    let m = dir.symlink_metadata(name)?;
    if !m.is_dir() {
        return Ok(());
    }
    let mode = m.permissions().mode();
    if mode & 0o700 != 0o700 {
        dir.set_permissions(name, cap_std::fs::Permissions::from_mode(mode | 0o700))?;
    }
    let sub = dir.open_dir(name)?;
    for e in sub.entries()? {
        let e = e?;
        if e.file_type()?.is_dir() {
            make_writable(&sub, std::path::Path::new(&e.file_name()))?;
        }
    }
    Ok(())
}

/// Removes the temporary files of writes and the staging directories of
/// extracts that never finished (the agent was killed) anywhere under `dir`;
/// only entries older than `before`, so those of work begun since are left
/// alone. Returns how many were removed.
pub fn sweep_temporaries(dir: &cap_std::fs::Dir, before: std::time::SystemTime) -> usize {
    let mut removed = 0;
    let Ok(entries) = dir.entries() else {
        return 0;
    };
    for ent in entries.flatten() {
        let name = ent.file_name();
        let Ok(ft) = ent.file_type() else { continue };
        let old = || {
            ent.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.into_std() < before)
        };
        if ft.is_dir() && name.to_str().is_some_and(is_temporary) {
            // A staging directory: never descended into; removed whole, as
            // its content was never part of the tree. Its modes are still
            // the writable ones it was made with (modes are set only once
            // its entries are in place).
            if old() && name.to_str().is_some_and(|n| remove_tree(dir, n).is_ok()) {
                removed += 1;
            }
        } else if ft.is_dir() {
            if let Ok(sub) = ent.open_dir() {
                removed += sweep_temporaries(&sub, before);
            }
        } else if ft.is_file()
            && name.to_str().is_some_and(is_temporary)
            && old()
            && dir.remove_file(&name).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_temporary(&tmp_name(7)));
        assert_eq!(tmp_name(255), ".agent-tmp-00000000000000ff");
        assert!(!is_temporary("agent-tmp-1"));
        assert!(!is_temporary(".agent-clone-x"));
        assert!(is_temporary(&restore_dir_name(1)));
        assert!(is_agent_entry(".agent-clone-x") && !is_agent_entry("agent-clone"));
        assert!(is_temporary(&staging_name(3)));
    }

    #[test]
    fn sweep_removes_only_old_temporaries() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::fs::write(tmp.path().join("d").join(tmp_name(1)), "x").unwrap();
        std::fs::write(tmp.path().join("keep.txt"), "x").unwrap();
        let staging = tmp.path().join("d").join(staging_name(2));
        std::fs::create_dir_all(staging.join("a/b")).unwrap();
        std::fs::write(staging.join("a/b/f.txt"), "x").unwrap();
        let dir =
            cap_std::fs::Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap();
        let long_ago = std::time::SystemTime::UNIX_EPOCH;
        assert_eq!(sweep_temporaries(&dir, long_ago), 0, "newer than `before`");
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        assert_eq!(sweep_temporaries(&dir, later), 2);
        assert!(!staging.exists());
        assert!(tmp.path().join("keep.txt").exists());
        assert!(!tmp.path().join("d").join(tmp_name(1)).exists());
    }

    /// As a user other than root (the test runs itself again as `nobody`
    /// when it runs as root, whom permissions do not stop).
    #[test]
    fn remove_tree_takes_read_only_directories() {
        const INNER: &str = "DEVGATE_FS_TEST_AS_USER";
        if rustix::process::geteuid().is_root() && std::env::var_os(INNER).is_none() {
            use std::os::unix::process::CommandExt as _;
            let st = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "temp::tests::remove_tree_takes_read_only_directories",
                ])
                .env(INNER, "1")
                .env("TMPDIR", "/tmp")
                .uid(65534)
                .gid(65534)
                .status()
                .unwrap();
            assert!(st.success(), "as nobody: {st}");
            return;
        }
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let ro = tmp.path().join("a/ro");
        std::fs::create_dir_all(ro.join("sub")).unwrap();
        std::fs::write(ro.join("f"), "x").unwrap();
        std::fs::write(ro.join("sub/g"), "x").unwrap();
        std::os::unix::fs::symlink("/", ro.join("up")).unwrap();
        for d in [ro.join("sub"), ro.clone()] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        let dir =
            cap_std::fs::Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap();
        let plain = dir.remove_dir_all("a").unwrap_err();
        assert_eq!(
            plain.kind(),
            std::io::ErrorKind::PermissionDenied,
            "{plain}"
        );
        remove_tree(&dir, "a").unwrap();
        assert!(!tmp.path().join("a").exists());
        // By path, as the gateway's teardown does.
        std::fs::create_dir_all(tmp.path().join("b/ro")).unwrap();
        std::fs::set_permissions(
            tmp.path().join("b/ro"),
            std::fs::Permissions::from_mode(0o500),
        )
        .unwrap();
        std::fs::write(tmp.path().join("b/f"), "x").unwrap();
        std::fs::set_permissions(tmp.path().join("b"), std::fs::Permissions::from_mode(0o555))
            .unwrap();
        remove_tree_at(&tmp.path().join("b")).unwrap();
        assert!(!tmp.path().join("b").exists());
    }
}
