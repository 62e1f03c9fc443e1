//! The zip reader of `POST /archive`: any bytes as an upload, extracted into
//! a fresh folder with the default caps. Nothing may panic; a refused zip
//! leaves the folder exactly as it was (empty); an accepted one writes
//! nothing outside it (the folder's parent holds only the folder).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("mkdir");
    let result = agent::fuzz_extract(&root, data.to_vec());
    if result.is_err() {
        let left: Vec<_> = std::fs::read_dir(&root)
            .expect("read root")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(left.is_empty(), "a refused zip left {left:?}");
    }
    let beside: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read parent")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(beside, vec![std::ffi::OsString::from("root")], "written outside the root");
});
