//! Extracting a zip into the root, all or nothing: the whole archive is
//! spooled first (its central directory is at the end); the caps (entries,
//! expanded bytes, ratio) and every entry are checked before anything is
//! written; files are inflated in parallel into a staging directory inside
//! the root (a temporary name: hidden, swept at start), each checked against
//! its declared size and CRC; only then is everything renamed into place,
//! and any failure up to the last rename moves back what was moved and
//! removes the staging directory.

mod commit;
mod plan;
mod spool;

use std::io::{self, Read, Seek, Write as _};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use cap_fs_ext::{DirExt as _, FollowSymlinks, OpenOptionsFollowExt as _};
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt as _, Permissions, PermissionsExt as _};
use zip::ZipArchive;

use super::create::zip_error;
use crate::error::{Error, Result};
use commit::commit;
pub(crate) use plan::link_escapes;
use plan::{FilePlan, Plan, check_caps, check_space, check_tree, declared_entries, plan, too_many};
#[cfg(test)]
pub(crate) use spool::SpoolAt;
use spool::SpoolReader;
pub(crate) use spool::{Spool, SpoolWriter};

/// Archives up to this size are spooled in memory; larger ones go to a
/// temporary file outside the root.
pub(crate) const MEMORY_SPOOL: u64 = 128 * 1024 * 1024;

/// Longest symlink target accepted.
const MAX_LINK: u64 = 4096;

/// Expanded bytes below which the ratio cap does not apply: a tiny zip of a
/// zero-filled file is harmless, and the cap is about amplification.
const RATIO_FLOOR: u64 = 16 * 1024 * 1024;

/// Caps on an archive from outside (an upload); 0 = no cap. The platform's
/// own archives (restores) are extracted without them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Limits {
    /// Entries in the central directory.
    pub(crate) max_entries: u64,
    /// Bytes of file content once expanded.
    pub(crate) max_bytes: u64,
    /// Expanded bytes per byte of archive, once past [`RATIO_FLOOR`].
    pub(crate) max_ratio: u64,
}

/// What an extract wrote.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Summary {
    pub(crate) files: u64,
    pub(crate) bytes: u64,
}

/// Checks `spool` against `limits` and every entry against the tree under
/// `base_rel` (the extract directory, relative to the root), stages them all,
/// then moves them into place. Blocking. The tree changes only if everything
/// passed.
pub(crate) fn extract(root: &Dir, base_rel: &str, spool: Spool, limits: Limits) -> Result<Summary> {
    let archive_len = spool.len();
    // From the end record alone, before the central directory is parsed
    // (which costs memory per entry).
    if limits.max_entries > 0
        && let Some(n) = declared_entries(&spool)?
        && n > limits.max_entries
    {
        return Err(too_many(n, limits.max_entries));
    }
    let reader = SpoolReader { spool, pos: 0 };
    let mut archive = ZipArchive::new(reader).map_err(|e| match e {
        zip::result::ZipError::Io(io) => Error::Io(io),
        other => Error::InvalidArgument(format!("not a zip archive: {other}")),
    })?;
    // The reader may have trusted another end record than ours.
    if limits.max_entries > 0 && archive.len() as u64 > limits.max_entries {
        return Err(too_many(archive.len() as u64, limits.max_entries));
    }
    let mut plan = plan(&mut archive, base_rel)?;
    check_caps(&plan, archive_len, limits)?;
    check_tree(root, base_rel, &mut plan)?;
    check_space(root, &plan)?;
    write(root, base_rel, &archive, &plan)
}

/// The staging directory of one extract, at the root under a temporary
/// name. Dropping it removes it with whatever it still holds: everything on
/// failure, the entries that were replaced after a commit.
struct Staging<'a> {
    root: &'a Dir,
    name: String,
    dir: Dir,
}

impl<'a> Staging<'a> {
    fn new(root: &'a Dir) -> Result<Staging<'a>> {
        let name = devgate_fs::temp::staging_name(rand::random());
        root.create_dir(&name)?;
        let dir = match root.open_dir_nofollow(&name) {
            Ok(d) => d,
            Err(e) => {
                let _ = devgate_fs::temp::remove_tree(root, &name);
                return Err(e.into());
            }
        };
        Ok(Staging { root, name, dir })
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        if let Err(error) = devgate_fs::temp::remove_tree(self.root, &self.name) {
            tracing::warn!(%error, name = %self.name, "cannot remove an extract's staging directory; the next start sweeps it");
        }
    }
}

fn write<R: Read + Seek + Clone + Send + Sync>(
    root: &Dir,
    base_rel: &str,
    archive: &ZipArchive<R>,
    plan: &Plan,
) -> Result<Summary> {
    let staging = Staging::new(root)?;
    let stage = &staging.dir;
    // Parents first (a BTreeMap orders "a" before "a/b").
    for dir in plan.dirs.keys() {
        stage.create_dir(dir)?;
    }

    let next = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    // File creation blocks in the kernel as much as it computes: more
    // threads than cores keep the cores busy.
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get() * 2)
        .clamp(4, 16);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    let mut archive = archive.clone();
                    let mut buf = vec![0u8; 256 * 1024];
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(f) = plan.files.get(i) else {
                            return Ok(());
                        };
                        let n = write_file(stage, &mut archive, f, &mut buf)?;
                        bytes.fetch_add(n, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let mut first = Ok(());
        for h in handles {
            let res = h
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("extract thread panicked".into())));
            if first.is_ok() {
                first = res;
            }
        }
        first
    })?;
    for (path, target) in &plan.links {
        // The target was checked in `plan` not to leave the root.
        stage.symlink_contents(target, path)?;
    }
    commit(root, base_rel, stage, plan)?;
    Ok(Summary {
        files: (plan.files.len() + plan.links.len()) as u64,
        bytes: bytes.load(Ordering::Relaxed),
    })
}

/// Inflates one entry into the staging directory, checking its size against
/// the declared one (the CRC is checked by the zip reader at the end of the
/// entry). Returns the bytes written.
fn write_file<R: Read + Seek>(
    stage: &Dir,
    archive: &mut ZipArchive<R>,
    f: &FilePlan,
    buf: &mut [u8],
) -> Result<u64> {
    let mut opts = OpenOptions::new();
    opts.write(true)
        .create_new(true)
        .follow(FollowSymlinks::No)
        .mode(f.mode);
    let mut out = stage.open_with(&f.path, &opts)?;
    let mut entry = archive.by_index(f.index).map_err(zip_error)?;
    let mut n = 0u64;
    loop {
        let got = match entry.read(buf) {
            Ok(0) => break,
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::InvalidArgument(format!(
                    "archive entry {:?}: {e}",
                    f.path
                )));
            }
        };
        n += got as u64;
        // The declared sizes were checked against the caps and the free
        // space: an entry that inflates past its own is a zip bomb, not a
        // file, and is refused before the excess is written.
        if n > f.size {
            return Err(Error::InvalidArgument(format!(
                "archive entry {:?} is larger than it declares ({} bytes)",
                f.path, f.size
            )));
        }
        out.write_all(&buf[..got])?;
    }
    if n != f.size {
        return Err(Error::InvalidArgument(format!(
            "archive entry {:?} is {n} bytes, not the {} it declares",
            f.path, f.size
        )));
    }
    // The umask may have cut bits off the mode given at creation: set it
    // explicitly.
    out.set_permissions(Permissions::from_mode(f.mode))?;
    if let Some(at) = f.mtime.and_then(system_time) {
        out.into_std().set_modified(at)?;
    }
    Ok(n)
}

/// Unix seconds as a time (before 1970: the epoch).
fn system_time(secs: i64) -> Option<std::time::SystemTime> {
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs.max(0) as u64))
}

#[cfg(test)]
mod unit {
    use super::plan::clean_name;
    use super::*;

    #[test]
    fn names_that_leave_are_refused() {
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a\0b",
            "a\\..\\b",
            "a/..",
        ] {
            assert!(clean_name(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(clean_name(b"./a//b/").unwrap().as_deref(), Some("a/b"));
        assert_eq!(clean_name(b"./").unwrap(), None);
    }

    fn sample_zip() -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        w.start_file("d/run.sh", opts).unwrap();
        w.write_all(&b"#!/bin/sh\n".repeat(1000)).unwrap();
        w.add_symlink("d/link", "run.sh", opts).unwrap();
        w.finish().unwrap().into_inner()
    }

    /// Archives too big for memory go through a temporary file, streamed or
    /// placed part by part; both extract the same.
    #[test]
    fn file_spools_extract_like_memory_ones() {
        let zip = sample_zip();
        let mut streamed = SpoolWriter::with_limit(100);
        for chunk in zip.chunks(77) {
            streamed.push(chunk).unwrap();
        }
        let mut placed = SpoolAt::with_limit(zip.len() as u64, 100).unwrap();
        for (i, chunk) in zip.chunks(1000).enumerate().rev() {
            placed.put(i as u64 * 1000, chunk).unwrap();
        }
        for spool in [streamed.finish(), placed.finish()] {
            assert!(matches!(spool, Spool::File(..)));
            let tmp = tempfile::tempdir().unwrap();
            let root = Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap();
            let s = extract(&root, "out", spool, Limits::default()).unwrap();
            assert_eq!((s.files, s.bytes), (2, 10_000));
            let meta = std::fs::metadata(tmp.path().join("out/d/run.sh")).unwrap();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
                0o755
            );
            assert_eq!(
                std::fs::read_link(tmp.path().join("out/d/link"))
                    .unwrap()
                    .to_str(),
                Some("run.sh")
            );
        }
    }

    #[test]
    fn link_targets_are_judged_from_their_directory() {
        assert!(!link_escapes("a/b", "../c"));
        assert!(!link_escapes("a", "../c"));
        assert!(link_escapes("a", "../../c"));
        assert!(link_escapes("", "../c"));
        assert!(link_escapes("a", "/etc"));
        assert!(!link_escapes("", "x/./y"));
    }
}
