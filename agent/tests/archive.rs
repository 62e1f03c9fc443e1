//! The Archive service through a real agent: zip round trips keep bytes,
//! modes and symlinks; exclusions; hostile archives (`../`, absolute paths,
//! escaping symlinks, entries under a symlink) are refused with nothing
//! written.

mod archive_tree;

use std::io::{Cursor, Write as _};
use std::path::Path;

use archive_tree::{Node, file_count, make_project, snapshot};
use proto::v1::archive_client::ArchiveClient;
use proto::v1::{
    ArchiveOptions, ArchiveSummary, CreateArchiveRequest, ExtractRequest, ExtractStart,
    ExtractSummary, create_archive_response, extract_request,
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
    let mut msgs = vec![ExtractRequest {
        msg: Some(extract_request::Msg::Start(ExtractStart {
            path: path.into(),
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
