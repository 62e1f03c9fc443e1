//! The Archive service through a real agent: zip round trips keep bytes,
//! modes and symlinks; exclusions; hostile archives (`../`, absolute paths,
//! escaping symlinks, entries under a symlink, sizes or CRCs that lie) are
//! refused with nothing written; the upload caps refuse before writing.

mod archive_tree;

use std::io::{Cursor, Write as _};
use std::path::Path;

use archive_tree::{Node, file_count, make_project, snapshot};
use proto::v1::archive_client::ArchiveClient;
use proto::v1::{
    ArchiveOptions, ArchiveSummary, CreateArchiveRequest, ExtractLimits, ExtractRequest,
    ExtractStart, ExtractSummary, create_archive_response, extract_request,
};
use sha2::Digest as _;
use tonic::transport::Channel;
use zip::write::SimpleFileOptions;

async fn create(
    agent: &tests::Agent,
    client: &mut ArchiveClient<Channel>,
    options: ArchiveOptions,
) -> Result<(Vec<u8>, ArchiveSummary), tonic::Status> {
    let mut stream = client
        .create(agent.req(CreateArchiveRequest {
            options: Some(options),
        }))
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    let mut summary = None;
    while let Some(msg) = stream.message().await? {
        match msg.event {
            Some(create_archive_response::Event::Data(d)) => {
                assert!(summary.is_none(), "data after the summary");
                bytes.extend_from_slice(&d);
            }
            Some(create_archive_response::Event::Summary(s)) => summary = Some(s),
            None => {}
        }
    }
    Ok((bytes, summary.expect("a summary at the end")))
}

async fn extract(
    agent: &tests::Agent,
    client: &mut ArchiveClient<Channel>,
    path: &str,
    zip: Vec<u8>,
) -> Result<ExtractSummary, tonic::Status> {
    extract_with(agent, client, path, zip, None).await
}

async fn extract_with(
    agent: &tests::Agent,
    client: &mut ArchiveClient<Channel>,
    path: &str,
    zip: Vec<u8>,
    limits: Option<ExtractLimits>,
) -> Result<ExtractSummary, tonic::Status> {
    let mut msgs = vec![ExtractRequest {
        msg: Some(extract_request::Msg::Start(ExtractStart {
            path: path.into(),
            limits,
        })),
    }];
    for chunk in zip.chunks(100_000) {
        msgs.push(ExtractRequest {
            msg: Some(extract_request::Msg::Data(chunk.to_vec())),
        });
    }
    Ok(client
        .extract(agent.req(futures::stream::iter(msgs)))
        .await?
        .into_inner())
}

fn names(zip: &[u8]) -> Vec<String> {
    let archive = zip::ZipArchive::new(Cursor::new(zip)).unwrap();
    archive.file_names().map(str::to_owned).collect()
}

/// A zip built by hand: (name, content, Some(target) for a symlink).
fn hostile_zip(entries: &[(&str, &[u8], Option<&str>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, content, link) in entries {
        match link {
            Some(target) => w
                .add_symlink(*name, *target, SimpleFileOptions::default())
                .unwrap(),
            None => {
                w.start_file(*name, SimpleFileOptions::default()).unwrap();
                w.write_all(content).unwrap();
            }
        }
    }
    w.finish().unwrap().into_inner()
}

async fn start() -> anyhow::Result<(tempfile::TempDir, tests::Agent, ArchiveClient<Channel>)> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("root");
    std::fs::create_dir(&root)?;
    let agent = tests::Agent::start(&root, &[]).await?;
    let client = ArchiveClient::new(agent.channel().await?);
    Ok((tmp, agent, client))
}

fn path_exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

#[tokio::test]
async fn round_trip_keeps_bytes_modes_and_symlinks() -> anyhow::Result<()> {
    let (tmp, agent, mut client) = start().await?;
    let proj = agent.root.join("proj");
    make_project(&proj);
    // Modification times come back too, to 2 seconds (an entry's DOS time;
    // an odd second comes back one lower).
    // Directories as well (`src` holds files, `empty/dir` nothing).
    let mtimes = [
        ("bin/run.sh", 1_600_000_001_u64),
        ("src/main.rs", 1_700_000_000),
        ("src", 1_500_000_000),
        ("empty/dir", 1_400_000_000),
    ];
    for (path, secs) in mtimes {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let p = proj.join(path);
        if p.is_dir() {
            std::fs::File::open(p)?.set_modified(at)?;
        } else {
            std::fs::File::options()
                .write(true)
                .open(p)?
                .set_modified(at)?;
        }
    }
    let mtime_of = |p: &Path| -> u64 {
        std::fs::metadata(p)
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };

    let (zip, summary) = create(
        &agent,
        &mut client,
        ArchiveOptions {
            path: "proj".into(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(summary.size, zip.len() as u64);
    assert_eq!(summary.sha256, hex::encode(sha2::Sha256::digest(&zip)));
    let expected = snapshot(&proj, &["node_modules", ".git", "__pycache__"]);
    assert_eq!(summary.files, file_count(&expected));
    // Any unzip reads it: Info-ZIP's checks every CRC.
    assert!(names(&zip).contains(&"bin/run.sh".to_owned()));
    let file = tmp.path().join("out.zip");
    std::fs::write(&file, &zip)?;
    let out = std::process::Command::new("unzip")
        .arg("-tq")
        .arg(&file)
        .output()?;
    assert!(
        out.status.success(),
        "unzip -t: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Info-ZIP's unzip restores the same times.
    let by_unzip = tmp.path().join("by-unzip");
    let out = std::process::Command::new("unzip")
        .env("TZ", "UTC")
        .arg("-q")
        .arg(&file)
        .arg("-d")
        .arg(&by_unzip)
        .output()?;
    assert!(
        out.status.success(),
        "unzip: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (path, secs) in mtimes {
        assert_eq!(mtime_of(&by_unzip.join(path)), secs & !1, "unzip: {path}");
    }

    let out = extract(&agent, &mut client, "restored/here", zip).await?;
    assert_eq!(out.files, file_count(&expected));
    let restored = snapshot(&agent.root.join("restored/here"), &[]);
    assert_eq!(restored, expected);
    assert_eq!(
        restored["bin/run.sh"],
        Node::File {
            content: b"#!/bin/sh\necho run\n".to_vec(),
            mode: 0o755
        }
    );
    assert_eq!(restored["main-link"], Node::Link("src/main.rs".into()));
    for (path, secs) in mtimes {
        let at = agent.root.join("restored/here").join(path);
        assert_eq!(mtime_of(&at), secs & !1, "{path}");
    }
    assert!(matches!(restored["empty/dir"], Node::Dir { .. }));
    let content_bytes: u64 = expected
        .values()
        .map(|n| {
            if let Node::File { content, .. } = n {
                content.len() as u64
            } else {
                0
            }
        })
        .sum();
    assert_eq!(out.bytes, content_bytes);

    // Extracting again over the same place replaces files and links.
    let (zip, _) = create(
        &agent,
        &mut client,
        ArchiveOptions {
            path: "proj".into(),
            ..Default::default()
        },
    )
    .await?;
    extract(&agent, &mut client, "restored/here", zip).await?;
    assert_eq!(snapshot(&agent.root.join("restored/here"), &[]), expected);
    Ok(())
}

#[tokio::test]
async fn exclusions_are_by_name_and_configurable() -> anyhow::Result<()> {
    let (_tmp, agent, mut client) = start().await?;
    make_project(&agent.root);
    // A write's temporary file (made after the agent started, so not swept)
    // is never archived, whatever the exclusions.
    std::fs::write(
        agent.root.join("src/.agent-tmp-0000000000000001"),
        "partial",
    )?;

    let (zip, _) = create(&agent, &mut client, ArchiveOptions::default()).await?;
    let n = names(&zip);
    assert!(n.iter().all(|p| !p.contains(".agent-tmp-")), "{n:?}");
    assert!(
        n.iter().all(|p| !p.contains("node_modules")
            && !p.contains(".git")
            && !p.contains("__pycache__")),
        "{n:?}"
    );
    assert!(n.contains(&"dist/bundle.js".to_owned()));

    let opts = ArchiveOptions {
        exclude: vec!["dist".into(), "blob.dat".into()],
        ..Default::default()
    };
    let (zip, _) = create(&agent, &mut client, opts).await?;
    let n = names(&zip);
    assert!(
        n.contains(&"node_modules/left-pad/index.js".to_owned()),
        "explicit list replaces the defaults"
    );
    assert!(
        !n.iter()
            .any(|p| p.starts_with("dist") || p.ends_with("blob.dat")),
        "{n:?}"
    );

    let opts = ArchiveOptions {
        no_default_excludes: true,
        ..Default::default()
    };
    let (zip, _) = create(&agent, &mut client, opts).await?;
    assert!(names(&zip).contains(&".git/HEAD".to_owned()));
    assert!(names(&zip).iter().all(|p| !p.contains(".agent-tmp-")));
    Ok(())
}

#[tokio::test]
async fn create_error_paths() -> anyhow::Result<()> {
    let (_tmp, agent, mut client) = start().await?;
    let err = create(
        &agent,
        &mut client,
        ArchiveOptions {
            path: "missing".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("missing dir");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = create(
        &agent,
        &mut client,
        ArchiveOptions {
            path: "../".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("outside");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    std::os::unix::fs::symlink("/etc", agent.root.join("etc-link"))?;
    let err = create(
        &agent,
        &mut client,
        ArchiveOptions {
            path: "etc-link".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("symlink out");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    Ok(())
}

/// Each hostile archive is refused and nothing at all is written, not even
/// the good entries before the bad one or the extract directory itself.
#[tokio::test]
async fn hostile_archives_are_refused_whole() -> anyhow::Result<()> {
    let (tmp, agent, mut client) = start().await?;
    let outside = tmp.path().join("evil.txt");
    let abs = tmp.path().join("abs.txt");
    let abs_name = abs.to_str().unwrap().to_owned();
    std::fs::create_dir(agent.root.join("real"))?;
    std::os::unix::fs::symlink("real", agent.root.join("in-link"))?;
    std::os::unix::fs::symlink("/tmp", agent.root.join("out-link"))?;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dot-dot",
            hostile_zip(&[("ok.txt", b"ok", None), ("../evil.txt", b"evil", None)]),
            "x",
        ),
        (
            "deep dot-dot",
            hostile_zip(&[
                ("ok.txt", b"ok", None),
                ("a/../../../evil.txt", b"evil", None),
            ]),
            "x",
        ),
        (
            "absolute",
            hostile_zip(&[("ok.txt", b"ok", None), (&abs_name, b"evil", None)]),
            "x",
        ),
        (
            "nul",
            hostile_zip(&[("ok.txt", b"ok", None), ("a\0b", b"evil", None)]),
            "x",
        ),
        (
            "absolute link",
            hostile_zip(&[("ok.txt", b"ok", None), ("l", b"", Some("/etc"))]),
            "x",
        ),
        (
            "escaping link",
            hostile_zip(&[("ok.txt", b"ok", None), ("l", b"", Some("../../evil"))]),
            "x",
        ),
        (
            "under a link",
            hostile_zip(&[
                ("l", b"", Some("sub")),
                ("sub/.keep", b"", None),
                ("l/x", b"evil", None),
            ]),
            "x",
        ),
        (
            "under an existing link",
            hostile_zip(&[("ok.txt", b"ok", None), ("in-link/x", b"evil", None)]),
            "",
        ),
        (
            "into an outside link",
            hostile_zip(&[("ok.txt", b"ok", None)]),
            "out-link/sub",
        ),
        (
            "duplicate",
            hostile_zip(&[("ok.txt", b"ok", None), ("./ok.txt", b"two", None)]),
            "x",
        ),
    ];
    for (what, zip, dest) in cases {
        let before = snapshot(&agent.root, &[]);
        let err = extract(&agent, &mut client, dest, zip)
            .await
            .expect_err(what);
        assert!(
            matches!(
                err.code(),
                tonic::Code::InvalidArgument | tonic::Code::AlreadyExists
            ),
            "{what}: {err:?}"
        );
        assert_eq!(
            snapshot(&agent.root, &[]),
            before,
            "{what}: the tree changed"
        );
        assert!(
            !path_exists(&outside) && !path_exists(&abs),
            "{what}: wrote outside"
        );
        assert!(!path_exists(&tmp.path().join("evil")), "{what}");
    }
    assert!(std::fs::read_dir("/tmp/sub").is_err() || !path_exists(Path::new("/tmp/sub/ok.txt")));

    let err = extract(&agent, &mut client, "x", b"not a zip at all".to_vec())
        .await
        .expect_err("garbage");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(!path_exists(&agent.root.join("x")));
    Ok(())
}

#[tokio::test]
async fn extract_needs_start_first() -> anyhow::Result<()> {
    let (_tmp, agent, mut client) = start().await?;
    let msgs = vec![ExtractRequest {
        msg: Some(extract_request::Msg::Data(b"PK".to_vec())),
    }];
    let err = client
        .extract(agent.req(futures::stream::iter(msgs)))
        .await
        .expect_err("no start");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = extract(
        &agent,
        &mut client,
        "../up",
        hostile_zip(&[("a", b"a", None)]),
    )
    .await
    .expect_err("dest outside");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    Ok(())
}

/// An archive from Info-ZIP's `zip` carries exact seconds in its
/// extended-timestamp fields: an extract restores them, odd seconds included.
#[tokio::test]
async fn extract_restores_extended_timestamps() -> anyhow::Result<()> {
    let (tmp, agent, mut client) = start().await?;
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d"))?;
    std::fs::write(src.join("d/f.txt"), "f")?;
    let secs = 1_650_000_003_u64;
    std::fs::File::options()
        .write(true)
        .open(src.join("d/f.txt"))?
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))?;
    let file = tmp.path().join("by-zip.zip");
    let out = std::process::Command::new("zip")
        .env("TZ", "UTC")
        .current_dir(&src)
        .arg("-qr")
        .arg(&file)
        .arg(".")
        .output()?;
    assert!(
        out.status.success(),
        "zip: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    extract(&agent, &mut client, "x", std::fs::read(&file)?).await?;
    let got = std::fs::metadata(agent.root.join("x/d/f.txt"))?
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    assert_eq!(got, secs);
    Ok(())
}

/// Rewrites, in the central directory and the local header of entry `name`,
/// the CRC (`crc`) or the uncompressed size (`size`).
fn patch_entry(zip: &mut [u8], name: &str, crc: Option<u32>, size: Option<u32>) {
    let mut patched = 0;
    for at in 0..zip.len().saturating_sub(46) {
        let (sig, name_len_at, name_at, crc_at, size_at) = match zip[at..at + 4] {
            [0x50, 0x4b, 0x01, 0x02] => ("cd", at + 28, at + 46, at + 16, at + 24),
            [0x50, 0x4b, 0x03, 0x04] => ("local", at + 26, at + 30, at + 14, at + 22),
            _ => continue,
        };
        let len = u16::from_le_bytes([zip[name_len_at], zip[name_len_at + 1]]) as usize;
        if zip.get(name_at..name_at + len) != Some(name.as_bytes()) {
            continue;
        }
        if let Some(c) = crc {
            zip[crc_at..crc_at + 4].copy_from_slice(&c.to_le_bytes());
        }
        if let Some(sz) = size {
            zip[size_at..size_at + 4].copy_from_slice(&sz.to_le_bytes());
        }
        patched += 1;
        let _ = sig;
    }
    assert_eq!(patched, 2, "{name}: one central and one local header");
}

/// The reproduction of the snapshot issue: an entry whose declared size lies
/// used to truncate an existing file in place and then fail ("PRECIOUS" went
/// to 0 bytes). Every lie (longer, shorter, a bad CRC) now fails the whole
/// extract with the tree exactly as it was: the other entries' replacements
/// of existing files included, and no staging directory left.
#[tokio::test]
async fn lying_entries_change_nothing() -> anyhow::Result<()> {
    let (_tmp, agent, mut client) = start().await?;
    std::fs::write(agent.root.join("keep.txt"), "PRECIOUS")?;
    std::fs::create_dir(agent.root.join("d"))?;
    std::fs::write(agent.root.join("d/old.txt"), "old")?;
    let before = snapshot(&agent.root, &[]);
    let body = b"this entry inflates to more bytes than it declares ".repeat(100);
    let honest = hostile_zip(&[
        ("keep.txt", b"replaced", None),
        ("d/old.txt", b"replaced too", None),
        ("d/new/deep.txt", b"new", None),
        ("fresh/a.txt", b"new dir", None),
        ("liar.txt", &body, None),
    ]);
    let cases: [(&str, Option<u32>, Option<u32>); 3] = [
        ("declares fewer bytes", None, Some(10)),
        ("declares more bytes", None, Some(body.len() as u32 + 10)),
        ("bad crc", Some(0xdead_beef), None),
    ];
    for (what, crc, size) in cases {
        let mut zip = honest.clone();
        patch_entry(&mut zip, "liar.txt", crc, size);
        let err = extract(&agent, &mut client, "", zip).await.expect_err(what);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
        assert_eq!(
            snapshot(&agent.root, &[]),
            before,
            "{what}: the tree changed"
        );
        assert_eq!(std::fs::read(agent.root.join("keep.txt"))?, b"PRECIOUS");
    }
    // The honest archive replaces, adds, and leaves nothing behind.
    let s = extract(&agent, &mut client, "", honest).await?;
    assert_eq!(s.files, 5);
    assert_eq!(std::fs::read(agent.root.join("keep.txt"))?, b"replaced");
    assert_eq!(
        std::fs::read(agent.root.join("d/old.txt"))?,
        b"replaced too"
    );
    assert_eq!(std::fs::read(agent.root.join("d/new/deep.txt"))?, b"new");
    assert_eq!(std::fs::read(agent.root.join("liar.txt"))?, body);
    let names: Vec<String> = std::fs::read_dir(&agent.root)?
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with(".agent-tmp-")),
        "staging left: {names:?}"
    );
    Ok(())
}

/// A zip of `copies` entries of `each` zero bytes, compressed once and
/// raw-copied (cheap to make, honest sizes).
fn zeros_zip(copies: usize, each: usize) -> Vec<u8> {
    let mut one = zip::ZipWriter::new(Cursor::new(Vec::new()));
    one.start_file("z0", SimpleFileOptions::default()).unwrap();
    one.write_all(&vec![0u8; each]).unwrap();
    let one = one.finish().unwrap().into_inner();
    let mut src = zip::ZipArchive::new(Cursor::new(one)).unwrap();
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for i in 0..copies {
        let f = src.by_index_raw(0).unwrap();
        w.raw_copy_file_rename(f, format!("z{i}")).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// The caps, from the request: too many entries (read from the end record),
/// too many expanded bytes, too high a ratio: RESOURCE_EXHAUSTED with the
/// `payload_too_large` code and nothing written; without caps (a restore)
/// the same archives extract.
#[tokio::test]
async fn caps_refuse_before_writing() -> anyhow::Result<()> {
    let (_tmp, agent, mut client) = start().await?;
    std::fs::write(agent.root.join("keep.txt"), "PRECIOUS")?;
    let before = snapshot(&agent.root, &[]);
    let caps = |entries, bytes, ratio| {
        Some(ExtractLimits {
            max_entries: entries,
            max_bytes: bytes,
            max_ratio: ratio,
        })
    };
    // 64 MiB of zeros in about 70 KiB: a ratio near 1,000.
    let bomb = zeros_zip(64, 1 << 20);
    assert!(bomb.len() < 100_000, "{}", bomb.len());
    let many = hostile_zip(&[("a", b"a", None), ("b", b"b", None), ("c", b"c", None)]);
    let cases = [
        ("entries", many.clone(), caps(2, 0, 0), "3 entries"),
        (
            "bytes",
            bomb.clone(),
            caps(0, 32 << 20, 0),
            "expands to 67108864 bytes",
        ),
        (
            "ratio",
            bomb.clone(),
            caps(0, 0, 100),
            "more than 100 times",
        ),
    ];
    for (what, zip, limits, says) in cases {
        let err = extract_with(&agent, &mut client, "", zip, limits)
            .await
            .expect_err(what);
        assert_eq!(
            err.code(),
            tonic::Code::ResourceExhausted,
            "{what}: {err:?}"
        );
        assert_eq!(
            err.metadata()
                .get(proto::ERROR_CODE_METADATA_KEY)
                .and_then(|v| v.to_str().ok()),
            Some(proto::TOO_LARGE),
            "{what}"
        );
        assert!(err.message().contains(says), "{what}: {}", err.message());
        assert_eq!(
            snapshot(&agent.root, &[]),
            before,
            "{what}: the tree changed"
        );
    }
    // Within the caps, and without any, they extract.
    extract_with(&agent, &mut client, "m", many, caps(3, 3, 100)).await?;
    let s = extract_with(&agent, &mut client, "b", bomb, None).await?;
    assert_eq!((s.files, s.bytes), (64, 64 << 20));
    Ok(())
}
