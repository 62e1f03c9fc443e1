//! Modification times in zip entries. Each file and directory entry the agent
//! writes carries its mtime as the DOS date and time of its header, in UTC: whole seconds
//! rounded down to even ones (DOS time has 2-second steps), 1980..2107. The
//! extended-timestamp extra field (0x5455, whole seconds) would be finer, but
//! the archive's entries are copied raw from per-file zips and the zip crate's
//! raw copy keeps no extra fields. An extract restores the extended timestamp
//! when an entry has one (Info-ZIP's `zip` writes it), else the DOS time (read
//! as UTC), except the DOS epoch itself, which is what archives without times
//! hold.

use zip::write::FullFileOptions;

/// File options stamped with `mtime` (Unix seconds).
pub(crate) fn stamped(mtime: i64) -> FullFileOptions<'static> {
    let opts = FullFileOptions::default();
    match time::OffsetDateTime::from_unix_timestamp(mtime)
        .ok()
        .and_then(|t| zip::DateTime::try_from(t).ok())
    {
        Some(dos) => opts.last_modified_time(dos),
        None => opts,
    }
}

/// The modification time an entry carries, in Unix seconds.
pub(crate) fn of_entry<R: std::io::Read>(entry: &zip::read::ZipFile<'_, R>) -> Option<i64> {
    for field in entry.extra_data_fields() {
        let zip::extra_fields::ExtraField::ExtendedTimestamp(ts) = field else {
            continue;
        };
        if let Some(secs) = ts.mod_time() {
            return Some(i64::from(secs));
        }
    }
    let dos = entry.last_modified()?;
    if (
        dos.year(),
        dos.month(),
        dos.day(),
        dos.hour(),
        dos.minute(),
        dos.second(),
    ) == (1980, 1, 1, 0, 0, 0)
    {
        return None;
    }
    let t: time::PrimitiveDateTime = dos.try_into().ok()?;
    Some(t.assume_utc().unix_timestamp())
}

#[cfg(test)]
mod unit {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn a_stamped_entry_reads_back_its_time_to_two_seconds() {
        for mtime in [1_700_000_001_i64, 315_532_802, 4_000_000_000] {
            let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            w.start_file("a", stamped(mtime)).unwrap();
            w.write_all(b"x").unwrap();
            let mut r = zip::ZipArchive::new(w.finish().unwrap()).unwrap();
            let entry = r.by_index_raw(0).unwrap();
            assert_eq!(of_entry(&entry), Some(mtime & !1), "{mtime}");
        }
    }

    #[test]
    fn an_entry_without_a_time_gives_none() {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts =
            zip::write::SimpleFileOptions::default().last_modified_time(zip::DateTime::default());
        w.start_file("a", opts).unwrap();
        let mut r = zip::ZipArchive::new(w.finish().unwrap()).unwrap();
        let entry = r.by_index_raw(0).unwrap();
        assert_eq!(of_entry(&entry), None);
    }
}
