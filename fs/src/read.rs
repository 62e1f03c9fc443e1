//! Reading a window of a regular file: the agent's streamed reads and the
//! gateway's local reads cut and chunk a file the same way.

use std::os::unix::fs::FileExt as _;

/// Size of the data chunks of a streamed read (256 KiB).
pub const READ_CHUNK: usize = 256 * 1024;

/// The bytes `start..end` a read of `length` bytes (0: to the end) from
/// `offset` gets of a file of `size` bytes.
pub fn read_window(size: u64, offset: u64, length: u64) -> (u64, u64) {
    let start = offset.min(size);
    let end = match length {
        0 => size,
        n => size.min(start.saturating_add(n)),
    };
    (start, end)
}

/// Reads `file` from `start` to `end` in chunks of at most [`READ_CHUNK`]
/// bytes, handing each to `each`, which answers whether to go on; an error
/// is handed over and ends it. Blocking.
pub fn read_range(
    file: &std::fs::File,
    start: u64,
    end: u64,
    mut each: impl FnMut(std::io::Result<Vec<u8>>) -> bool,
) {
    let mut pos = start;
    while pos < end {
        let mut buf = vec![0u8; (end - pos).min(READ_CHUNK as u64) as usize];
        match read_full_at(file, &mut buf, pos) {
            Ok(0) => break,
            Ok(n) => {
                buf.truncate(n);
                pos += n as u64;
                if !each(Ok(buf)) {
                    break;
                }
            }
            Err(e) => {
                each(Err(e));
                break;
            }
        }
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
pub fn read_full_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        assert_eq!(read_window(10, 0, 0), (0, 10));
        assert_eq!(read_window(10, 4, 3), (4, 7));
        assert_eq!(read_window(10, 8, 5), (8, 10));
        assert_eq!(read_window(10, 20, 5), (10, 10));
        assert_eq!(read_window(10, 2, u64::MAX), (2, 10));
    }

    #[test]
    fn ranges_come_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..READ_CHUNK * 2 + 10).map(|i| i as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        read_range(&f, 5, data.len() as u64, |c| {
            let c = c.unwrap();
            sizes.push(c.len());
            got.extend_from_slice(&c);
            true
        });
        assert_eq!(got, data[5..]);
        assert_eq!(sizes, [READ_CHUNK, READ_CHUNK, 5]);
        let mut calls = 0;
        read_range(&f, 0, data.len() as u64, |_| {
            calls += 1;
            false
        });
        assert_eq!(calls, 1, "`false` stops the read");
    }
}
