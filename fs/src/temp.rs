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
            if old() && dir.remove_dir_all(&name).is_ok() {
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
}
