//! The Filesystem service through a real gRPC client against the real agent:
//! every RPC, its success and its error paths.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use proto::v1::filesystem_client::FilesystemClient;
use proto::v1::{self as pb, EntryKind};
use tonic::Code;
use tonic::transport::Channel;

type Client = FilesystemClient<Channel>;

struct Fixture {
    agent: tests::Agent,
    fs: Client,
    root: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn start() -> anyhow::Result<Fixture> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    std::fs::create_dir(&root)?;
    let agent = tests::Agent::start(&root, &[]).await?;
    let fs = FilesystemClient::new(agent.channel().await?);
    Ok(Fixture {
        agent,
        fs,
        root,
        _dir: dir,
    })
}

fn code_of(s: &tonic::Status) -> &str {
    s.metadata()
        .get(proto::ERROR_CODE_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn start_msg(path: &str) -> pb::WriteStart {
    pb::WriteStart {
        path: path.into(),
        ..Default::default()
    }
}

async fn write(
    f: &mut Fixture,
    start: pb::WriteStart,
    chunks: Vec<Vec<u8>>,
) -> Result<pb::Entry, tonic::Status> {
    let mut msgs = vec![pb::WriteRequest {
        msg: Some(pb::write_request::Msg::Start(start)),
    }];
    msgs.extend(chunks.into_iter().map(|c| pb::WriteRequest {
        msg: Some(pb::write_request::Msg::Data(c)),
    }));
    let req = f.agent.req(tokio_stream::iter(msgs));
    Ok(f.fs.write(req).await?.into_inner().entry.expect("entry"))
}

async fn read(
    f: &mut Fixture,
    path: &str,
    offset: u64,
    length: u64,
) -> Result<(pb::Entry, Vec<u8>, usize), tonic::Status> {
    let mut stream =
        f.fs.read(f.agent.req(pb::ReadRequest {
            path: path.into(),
            offset,
            length,
        }))
        .await?
        .into_inner();
    let first = stream.message().await?.expect("start message");
    let Some(pb::read_response::Event::Start(start)) = first.event else {
        panic!("first message is not start")
    };
    let mut data = Vec::new();
    let mut chunks = 0;
    while let Some(msg) = stream.message().await? {
        match msg.event {
            Some(pb::read_response::Event::Data(d)) => {
                assert!(d.len() <= 256 * 1024, "chunk of {} bytes", d.len());
                data.extend_from_slice(&d);
                chunks += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    Ok((start.entry.expect("entry"), data, chunks))
}

async fn stat(f: &mut Fixture, path: &str) -> Result<pb::Entry, tonic::Status> {
    Ok(f.fs
        .stat(f.agent.req(pb::StatRequest { path: path.into() }))
        .await?
        .into_inner()
        .entry
        .expect("entry"))
}

fn tmp_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".agent-tmp-"))
        .collect()
}

#[tokio::test]
async fn stat_and_list() -> anyhow::Result<()> {
    let mut f = start().await?;
    std::fs::create_dir_all(f.root.join("src/deep"))?;
    std::fs::write(f.root.join("src/main.rs"), b"fn main() {}")?;
    std::fs::write(f.root.join("src/deep/x.txt"), b"x")?;
    std::fs::write(f.root.join("README"), b"hello")?;
    std::fs::set_permissions(
        f.root.join("README"),
        std::fs::Permissions::from_mode(0o640),
    )?;
    std::os::unix::fs::symlink("src/main.rs", f.root.join("link"))?;

    let e = stat(&mut f, "README").await?;
    assert_eq!(e.path, "README");
    assert_eq!(e.kind, EntryKind::File as i32);
    assert_eq!(e.size, 5);
    assert_eq!(e.mode, 0o640);
    assert!(!e.etag.is_empty());
    assert!(e.mtime_unix_nanos > 0);

    let e = stat(&mut f, "./src//").await?;
    assert_eq!((e.path.as_str(), e.kind), ("src", EntryKind::Dir as i32));
    assert!(e.etag.is_empty(), "directories have no etag");
    let e = stat(&mut f, "").await?;
    assert_eq!((e.path.as_str(), e.kind), ("", EntryKind::Dir as i32));
    let e = stat(&mut f, "link").await?;
    assert_eq!(e.kind, EntryKind::Symlink as i32);
    assert_eq!(e.symlink_target, "src/main.rs");

    let err = stat(&mut f, "missing").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = stat(&mut f, "README/x").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(code_of(&err), proto::NOT_A_DIRECTORY);

    let list = |depth| pb::ListRequest {
        path: String::new(),
        depth,
    };
    let names = |r: pb::ListResponse| r.entries.into_iter().map(|e| e.path).collect::<Vec<_>>();
    let one = names(f.fs.list(f.agent.req(list(0))).await?.into_inner());
    assert_eq!(one, ["README", "link", "src"]);
    let two = names(f.fs.list(f.agent.req(list(2))).await?.into_inner());
    assert_eq!(two, ["README", "link", "src", "src/deep", "src/main.rs"]);
    let all = names(f.fs.list(f.agent.req(list(10))).await?.into_inner());
    assert_eq!(
        all,
        [
            "README",
            "link",
            "src",
            "src/deep",
            "src/deep/x.txt",
            "src/main.rs"
        ]
    );
    let sub =
        f.fs.list(f.agent.req(pb::ListRequest {
            path: "src".into(),
            depth: 1,
        }))
        .await?
        .into_inner();
    assert_eq!(names(sub), ["src/deep", "src/main.rs"]);

    let err =
        f.fs.list(f.agent.req(pb::ListRequest {
            path: "README".into(),
            depth: 1,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(code_of(&err), proto::NOT_A_DIRECTORY);
    let err =
        f.fs.list(f.agent.req(pb::ListRequest {
            path: "nope".into(),
            depth: 1,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn read_whole_ranges_and_big_files() -> anyhow::Result<()> {
    let mut f = start().await?;
    std::fs::write(f.root.join("small.txt"), b"0123456789")?;
    let big: Vec<u8> = (0..(1024 * 1024 + 12345))
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(f.root.join("big.bin"), &big)?;
    std::fs::create_dir(f.root.join("dir"))?;
    std::fs::write(f.root.join("empty"), b"")?;

    let (entry, data, _) = read(&mut f, "small.txt", 0, 0).await?;
    assert_eq!(data, b"0123456789");
    assert_eq!(entry.size, 10);
    assert_eq!(entry.path, "small.txt");
    assert_eq!(entry.etag, stat(&mut f, "small.txt").await?.etag);

    assert_eq!(read(&mut f, "small.txt", 3, 4).await?.1, b"3456");
    assert_eq!(read(&mut f, "small.txt", 8, 100).await?.1, b"89");
    assert_eq!(read(&mut f, "small.txt", 100, 0).await?.1, b"");
    assert_eq!(read(&mut f, "empty", 0, 0).await?.1, b"");

    let (entry, data, chunks) = read(&mut f, "big.bin", 0, 0).await?;
    assert_eq!(entry.size, big.len() as u64);
    assert!(chunks >= 4, "{chunks} chunks");
    assert!(data == big, "big file content differs");
    let (_, data, _) = read(&mut f, "big.bin", 300_000, 500_000).await?;
    assert!(data == big[300_000..800_000], "range content differs");

    let err = read(&mut f, "dir", 0, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(code_of(&err), proto::IS_DIRECTORY);
    let err = read(&mut f, "", 0, 0).await.unwrap_err();
    assert_eq!(code_of(&err), proto::IS_DIRECTORY);
    let err = read(&mut f, "missing", 0, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A FIFO would block a plain open forever; it is refused instead.
    let status = std::process::Command::new("mkfifo")
        .arg(f.root.join("fifo"))
        .status()?;
    assert!(status.success());
    let err = tokio::time::timeout(Duration::from_secs(5), read(&mut f, "fifo", 0, 0))
        .await?
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    Ok(())
}

#[tokio::test]
async fn write_new_replace_and_modes() -> anyhow::Result<()> {
    let mut f = start().await?;
    let e = write(
        &mut f,
        start_msg("a.txt"),
        vec![b"hello ".to_vec(), b"world".to_vec()],
    )
    .await?;
    assert_eq!(std::fs::read(f.root.join("a.txt"))?, b"hello world");
    assert_eq!(e.size, 11);
    assert_eq!(e.mode, 0o644);
    assert_eq!(e.path, "a.txt");
    assert_eq!(
        e.etag,
        stat(&mut f, "a.txt").await?.etag,
        "the write answers the new etag"
    );
    let meta = std::fs::metadata(f.root.join("a.txt"))?;
    assert_eq!(meta.permissions().mode() & 0o7777, 0o644);

    // A replaced file keeps its mode (an executable script stays executable).
    std::fs::set_permissions(f.root.join("a.txt"), std::fs::Permissions::from_mode(0o755))?;
    let e2 = write(&mut f, start_msg("a.txt"), vec![b"#!/bin/sh\n".to_vec()]).await?;
    assert_eq!(e2.mode, 0o755);
    assert_eq!(
        std::fs::metadata(f.root.join("a.txt"))?
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
    assert_ne!(e2.etag, e.etag);

    // The mode of a new file can be chosen.
    let s = pb::WriteStart {
        mode: Some(0o600),
        ..start_msg("secret")
    };
    assert_eq!(write(&mut f, s, vec![b"s".to_vec()]).await?.mode, 0o600);
    assert_eq!(
        std::fs::metadata(f.root.join("secret"))?
            .permissions()
            .mode()
            & 0o7777,
        0o600
    );

    // Empty file, and no temporary files left behind.
    write(&mut f, start_msg("empty"), vec![]).await?;
    assert_eq!(std::fs::read(f.root.join("empty"))?, b"");
    assert!(tmp_files(&f.root).is_empty());

    // A big streamed write.
    let big: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    let e = write(
        &mut f,
        start_msg("big.bin"),
        big.chunks(64 * 1024).map(<[u8]>::to_vec).collect(),
    )
    .await?;
    assert_eq!(e.size, big.len() as u64);
    assert!(std::fs::read(f.root.join("big.bin"))? == big);

    // Through a symlink that stays inside the root: the target changes, the link stays.
    std::os::unix::fs::symlink("a.txt", f.root.join("alias"))?;
    let e = write(&mut f, start_msg("alias"), vec![b"via link".to_vec()]).await?;
    assert_eq!(e.path, "a.txt");
    assert!(
        std::fs::symlink_metadata(f.root.join("alias"))?
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(f.root.join("a.txt"))?, b"via link");
    Ok(())
}

#[tokio::test]
async fn must_exist_is_checked_at_the_start_and_again_at_the_commit() -> anyhow::Result<()> {
    let mut f = start().await?;
    let must = |path: &str| pb::WriteStart {
        must_exist: true,
        ..start_msg(path)
    };
    // Missing: refused, nothing made.
    let err = write(&mut f, must("gone"), vec![b"x".to_vec()])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(!f.root.join("gone").exists());
    // Present: replaced.
    std::fs::write(f.root.join("doc"), b"v1")?;
    write(&mut f, must("doc"), vec![b"v2".to_vec()]).await?;
    assert_eq!(std::fs::read(f.root.join("doc"))?, b"v2");
    // Removed while the data streams in: refused at the commit, not made
    // again (the stat-then-write the gateway did before could not see this).
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::WriteRequest {
        msg: Some(pb::write_request::Msg::Start(must("doc"))),
    })
    .await?;
    tx.send(pb::WriteRequest {
        msg: Some(pb::write_request::Msg::Data(b"half".to_vec())),
    })
    .await?;
    let mut fs = f.fs.clone();
    let call = tokio::spawn({
        let req = f.agent.req(tokio_stream::wrappers::ReceiverStream::new(rx));
        async move { fs.write(req).await }
    });
    // Wait until the agent has begun (its temporary file is there).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tmp_files(&f.root).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the write never began"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    std::fs::remove_file(f.root.join("doc"))?;
    tx.send(pb::WriteRequest {
        msg: Some(pb::write_request::Msg::Data(b" and the rest".to_vec())),
    })
    .await?;
    drop(tx);
    let err = call.await?.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        !f.root.join("doc").exists(),
        "the removed file was made again"
    );
    assert!(tmp_files(&f.root).is_empty());
    Ok(())
}

#[tokio::test]
async fn write_preconditions_change_nothing() -> anyhow::Result<()> {
    let mut f = start().await?;
    let e = write(&mut f, start_msg("doc"), vec![b"v1".to_vec()]).await?;

    // Matching etag: accepted.
    let s = pb::WriteStart {
        expected_etag: Some(e.etag.clone()),
        ..start_msg("doc")
    };
    let e2 = write(&mut f, s, vec![b"v2".to_vec()]).await?;
    assert_eq!(std::fs::read(f.root.join("doc"))?, b"v2");

    // Stale etag: FAILED_PRECONDITION, content unchanged.
    let s = pb::WriteStart {
        expected_etag: Some(e.etag.clone()),
        ..start_msg("doc")
    };
    let err = write(&mut f, s, vec![b"v3".to_vec()]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(std::fs::read(f.root.join("doc"))?, b"v2");
    assert_eq!(stat(&mut f, "doc").await?.etag, e2.etag);

    // A change by another process in place changes the etag too.
    std::fs::write(f.root.join("doc"), b"v2-other")?;
    let s = pb::WriteStart {
        expected_etag: Some(e2.etag.clone()),
        ..start_msg("doc")
    };
    let err = write(&mut f, s, vec![b"v3".to_vec()]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(std::fs::read(f.root.join("doc"))?, b"v2-other");

    // An etag for a file that does not exist: FAILED_PRECONDITION, nothing created.
    let s = pb::WriteStart {
        expected_etag: Some(e.etag.clone()),
        ..start_msg("new")
    };
    assert_eq!(
        write(&mut f, s, vec![b"x".to_vec()])
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    assert!(!f.root.join("new").exists());
    // The empty etag means "must not exist".
    let s = pb::WriteStart {
        expected_etag: Some(String::new()),
        ..start_msg("doc")
    };
    assert_eq!(
        write(&mut f, s, vec![b"x".to_vec()])
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    let s = pb::WriteStart {
        expected_etag: Some(String::new()),
        ..start_msg("new")
    };
    write(&mut f, s, vec![b"x".to_vec()]).await?;
    assert_eq!(std::fs::read(f.root.join("new"))?, b"x");

    // create_only.
    let s = pb::WriteStart {
        create_only: true,
        ..start_msg("doc")
    };
    assert_eq!(
        write(&mut f, s, vec![b"x".to_vec()])
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    assert_eq!(std::fs::read(f.root.join("doc"))?, b"v2-other");
    let s = pb::WriteStart {
        create_only: true,
        ..start_msg("fresh")
    };
    write(&mut f, s, vec![b"f".to_vec()]).await?;
    assert_eq!(std::fs::read(f.root.join("fresh"))?, b"f");

    // Parents: missing without make_parents, created with it.
    let err = write(&mut f, start_msg("x/y/z.txt"), vec![b"z".to_vec()])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(!f.root.join("x").exists());
    let s = pb::WriteStart {
        make_parents: true,
        ..start_msg("x/y/z.txt")
    };
    write(&mut f, s, vec![b"z".to_vec()]).await?;
    assert_eq!(std::fs::read(f.root.join("x/y/z.txt"))?, b"z");

    // A directory cannot be written over; the root cannot be written.
    let err = write(&mut f, start_msg("x"), vec![b"z".to_vec()])
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), code_of(&err)),
        (Code::InvalidArgument, proto::IS_DIRECTORY)
    );
    let err = write(&mut f, start_msg(""), vec![b"z".to_vec()])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A file used as a directory.
    let err = write(&mut f, start_msg("doc/inner"), vec![b"z".to_vec()])
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), code_of(&err)),
        (Code::InvalidArgument, proto::NOT_A_DIRECTORY)
    );
    assert!(tmp_files(&f.root).is_empty());
    assert!(tmp_files(&f.root.join("x/y")).is_empty());
    Ok(())
}

#[tokio::test]
async fn malformed_and_cancelled_writes_leave_nothing() -> anyhow::Result<()> {
    let mut f = start().await?;
    // No `start` first.
    let msgs = vec![pb::WriteRequest {
        msg: Some(pb::write_request::Msg::Data(b"x".to_vec())),
    }];
    let err =
        f.fs.write(f.agent.req(tokio_stream::iter(msgs)))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // An empty stream.
    let err =
        f.fs.write(
            f.agent
                .req(tokio_stream::iter(Vec::<pb::WriteRequest>::new())),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // `start` twice.
    let st = || pb::WriteRequest {
        msg: Some(pb::write_request::Msg::Start(start_msg("twice"))),
    };
    let err =
        f.fs.write(f.agent.req(tokio_stream::iter(vec![st(), st()])))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(!f.root.join("twice").exists());
    assert!(tmp_files(&f.root).is_empty());

    // A client whose deadline passes half-way (tonic reports its RST_STREAM
    // to the server as a clean end of stream), and a client whose connection
    // breaks half-way (a crash): neither the target nor a temporary file remains.
    std::fs::write(f.root.join("kept"), b"original")?;
    for how in ["deadline", "broken connection"] {
        let (channel, socket) = breakable_channel(&f.agent.socket).await?;
        let mut fs = FilesystemClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::WriteRequest {
            msg: Some(pb::write_request::Msg::Start(start_msg("kept"))),
        })
        .await?;
        tx.send(pb::WriteRequest {
            msg: Some(pb::write_request::Msg::Data(vec![b'x'; 100_000])),
        })
        .await?;
        let mut req = f.agent.req(tokio_stream::wrappers::ReceiverStream::new(rx));
        if how == "deadline" {
            req.set_timeout(Duration::from_secs(2));
        }
        let call = tokio::spawn(async move { fs.write(req).await });
        let root = f.root.clone();
        tests::eventually(Duration::from_secs(10), "the temporary file", || {
            let root = root.clone();
            async move { (!tmp_files(&root).is_empty()).then_some(()) }
        })
        .await?;
        if how == "broken connection" {
            socket
                .lock()
                .unwrap()
                .take()
                .expect("connected")
                .shutdown(std::net::Shutdown::Both)?;
        }
        let res = tokio::time::timeout(Duration::from_secs(10), call).await??;
        assert!(res.is_err(), "{how}: the write must fail");
        tests::eventually(Duration::from_secs(10), "the temporary file to go", || {
            let root = root.clone();
            async move { tmp_files(&root).is_empty().then_some(()) }
        })
        .await?;
        let now = std::fs::read(f.root.join("kept"))?;
        assert!(
            now == b"original",
            "{how}: the cancelled write committed early ({} bytes, {:?})",
            now.len(),
            &now[..now.len().min(20)]
        );
        // The client may still end its stream now: the server has dropped the write.
        drop(tx);
        assert!(
            std::fs::read(f.root.join("kept"))? == b"original",
            "{how}: the cancelled write committed"
        );
    }
    Ok(())
}

/// A channel over one Unix connection, with a handle to break that
/// connection as a crashing client would.
async fn breakable_channel(
    socket: &std::path::Path,
) -> anyhow::Result<(
    Channel,
    std::sync::Arc<std::sync::Mutex<Option<std::os::unix::net::UnixStream>>>,
)> {
    let handle = std::sync::Arc::new(std::sync::Mutex::new(None));
    let (path, h) = (socket.to_path_buf(), handle.clone());
    let channel = tonic::transport::Endpoint::try_from("http://agent.local")?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let (path, h) = (path.clone(), h.clone());
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                let std_stream = stream.into_std()?;
                *h.lock().unwrap() = Some(std_stream.try_clone()?);
                let stream = tokio::net::UnixStream::from_std(std_stream)?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    Ok((channel, handle))
}

#[tokio::test]
async fn make_dir() -> anyhow::Result<()> {
    let mut f = start().await?;
    let mk = |path: &str, parents| pb::MakeDirRequest {
        path: path.into(),
        parents,
    };
    let e =
        f.fs.make_dir(f.agent.req(mk("a", false)))
            .await?
            .into_inner()
            .entry
            .unwrap();
    assert_eq!((e.path.as_str(), e.kind), ("a", EntryKind::Dir as i32));
    assert!(f.root.join("a").is_dir());

    let err =
        f.fs.make_dir(f.agent.req(mk("a", false)))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    f.fs.make_dir(f.agent.req(mk("a", true))).await?;

    let err =
        f.fs.make_dir(f.agent.req(mk("b/c/d", false)))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(!f.root.join("b").exists());
    f.fs.make_dir(f.agent.req(mk("b/c/d", true))).await?;
    assert!(f.root.join("b/c/d").is_dir());

    std::fs::write(f.root.join("file"), b"x")?;
    let err =
        f.fs.make_dir(f.agent.req(mk("file", true)))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err =
        f.fs.make_dir(f.agent.req(mk("file", false)))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err =
        f.fs.make_dir(f.agent.req(mk("file/sub", true)))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(std::fs::read(f.root.join("file"))?, b"x");
    Ok(())
}

#[tokio::test]
async fn remove() -> anyhow::Result<()> {
    let mut f = start().await?;
    std::fs::create_dir_all(f.root.join("full/inner"))?;
    std::fs::write(f.root.join("full/inner/x"), b"x")?;
    std::fs::create_dir(f.root.join("empty"))?;
    std::fs::write(f.root.join("file"), b"x")?;
    std::os::unix::fs::symlink("full", f.root.join("link"))?;
    let rm = |path: &str, recursive| pb::RemoveRequest {
        path: path.into(),
        recursive,
    };

    f.fs.remove(f.agent.req(rm("file", false))).await?;
    assert!(!f.root.join("file").exists());
    f.fs.remove(f.agent.req(rm("empty", false))).await?;
    assert!(!f.root.join("empty").exists());

    let err =
        f.fs.remove(f.agent.req(rm("full", false)))
            .await
            .unwrap_err();
    assert_eq!(
        (err.code(), code_of(&err)),
        (Code::FailedPrecondition, proto::DIRECTORY_NOT_EMPTY)
    );
    assert!(f.root.join("full/inner/x").exists());

    // Removing a symlink removes the link, not what it points to.
    f.fs.remove(f.agent.req(rm("link", true))).await?;
    assert!(std::fs::symlink_metadata(f.root.join("link")).is_err());
    assert!(f.root.join("full/inner/x").exists());

    f.fs.remove(f.agent.req(rm("full", true))).await?;
    assert!(!f.root.join("full").exists());

    let err =
        f.fs.remove(f.agent.req(rm("missing", false)))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = f.fs.remove(f.agent.req(rm("", true))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(f.root.is_dir());
    Ok(())
}

#[tokio::test]
async fn move_entries() -> anyhow::Result<()> {
    let mut f = start().await?;
    std::fs::write(f.root.join("a"), b"A")?;
    std::fs::write(f.root.join("b"), b"B")?;
    std::fs::create_dir_all(f.root.join("d/sub"))?;
    std::fs::write(f.root.join("d/sub/f"), b"F")?;
    let mv = |from: &str, to: &str, overwrite| pb::MoveRequest {
        from: from.into(),
        to: to.into(),
        overwrite,
    };

    let e =
        f.fs.r#move(f.agent.req(mv("a", "c", false)))
            .await?
            .into_inner()
            .entry
            .unwrap();
    assert_eq!((e.path.as_str(), e.size), ("c", 1));
    assert!(!f.root.join("a").exists());
    assert_eq!(std::fs::read(f.root.join("c"))?, b"A");

    // No overwrite: ALREADY_EXISTS, both unchanged.
    let err =
        f.fs.r#move(f.agent.req(mv("c", "b", false)))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(std::fs::read(f.root.join("c"))?, b"A");
    assert_eq!(std::fs::read(f.root.join("b"))?, b"B");
    f.fs.r#move(f.agent.req(mv("c", "b", true))).await?;
    assert_eq!(std::fs::read(f.root.join("b"))?, b"A");
    assert!(!f.root.join("c").exists());

    // Directories move with their content.
    f.fs.r#move(f.agent.req(mv("d", "d2", false))).await?;
    assert_eq!(std::fs::read(f.root.join("d2/sub/f"))?, b"F");

    let err =
        f.fs.r#move(f.agent.req(mv("missing", "x", false)))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err =
        f.fs.r#move(f.agent.req(mv("d2", "d2/sub/inside", false)))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err =
        f.fs.r#move(f.agent.req(mv("b", "nodir/b", false)))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err =
        f.fs.r#move(f.agent.req(mv("", "x", false)))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Overwriting a non-empty directory is refused even with overwrite.
    std::fs::create_dir(f.root.join("e"))?;
    let err =
        f.fs.r#move(f.agent.req(mv("e", "d2", true)))
            .await
            .unwrap_err();
    assert_eq!(
        (err.code(), code_of(&err)),
        (Code::FailedPrecondition, proto::DIRECTORY_NOT_EMPTY)
    );
    assert!(f.root.join("d2/sub/f").exists());
    Ok(())
}

#[tokio::test]
async fn every_rpc_needs_the_token() -> anyhow::Result<()> {
    let f = start().await?;
    let mut fs = f.fs.clone();
    let codes = [
        fs.stat(pb::StatRequest::default())
            .await
            .map(|_| ())
            .unwrap_err()
            .code(),
        fs.list(pb::ListRequest::default())
            .await
            .map(|_| ())
            .unwrap_err()
            .code(),
        fs.read(pb::ReadRequest::default())
            .await
            .map(|_| ())
            .unwrap_err()
            .code(),
        fs.write(tokio_stream::iter(vec![pb::WriteRequest {
            msg: Some(pb::write_request::Msg::Start(start_msg("t"))),
        }]))
        .await
        .map(|_| ())
        .unwrap_err()
        .code(),
        fs.make_dir(pb::MakeDirRequest {
            path: "t".into(),
            parents: false,
        })
        .await
        .map(|_| ())
        .unwrap_err()
        .code(),
        fs.remove(pb::RemoveRequest::default())
            .await
            .map(|_| ())
            .unwrap_err()
            .code(),
        fs.r#move(pb::MoveRequest::default())
            .await
            .map(|_| ())
            .unwrap_err()
            .code(),
        fs.watch(pb::WatchRequest::default())
            .await
            .map(|_| ())
            .unwrap_err()
            .code(),
    ];
    assert!(
        codes.iter().all(|c| *c == Code::Unauthenticated),
        "{codes:?}"
    );
    assert!(!f.root.join("t").exists());
    Ok(())
}

#[tokio::test]
async fn bad_names_are_invalid_arguments() -> anyhow::Result<()> {
    let mut f = start().await?;
    let long = "n".repeat(300);
    let err = stat(&mut f, &long).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = write(&mut f, start_msg(&long), vec![b"x".to_vec()])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    std::os::unix::fs::symlink("loop2", f.root.join("loop1"))?;
    std::os::unix::fs::symlink("loop1", f.root.join("loop2"))?;
    let err = read(&mut f, "loop1", 0, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        std::fs::read_dir(&f.root)?.count() == 2,
        "nothing was created"
    );
    Ok(())
}

#[tokio::test]
async fn concurrent_writes_with_one_etag_have_one_winner() -> anyhow::Result<()> {
    let mut f = start().await?;
    let e = write(&mut f, start_msg("shared"), vec![b"v0".to_vec()]).await?;
    let mut calls = Vec::new();
    for i in 0..8 {
        let mut fs = f.fs.clone();
        let s = pb::WriteStart {
            expected_etag: Some(e.etag.clone()),
            ..start_msg("shared")
        };
        let msgs = vec![
            pb::WriteRequest {
                msg: Some(pb::write_request::Msg::Start(s)),
            },
            pb::WriteRequest {
                msg: Some(pb::write_request::Msg::Data(
                    format!("v{}", i + 1).into_bytes(),
                )),
            },
        ];
        let req = f.agent.req(tokio_stream::iter(msgs));
        calls.push(tokio::spawn(async move { fs.write(req).await }));
    }
    let mut won = 0;
    for c in calls {
        match c.await? {
            Ok(_) => won += 1,
            Err(s) => assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}"),
        }
    }
    assert_eq!(won, 1, "exactly one write may win");
    assert!(tmp_files(&f.root).is_empty());
    Ok(())
}

#[tokio::test]
async fn a_replaced_file_keeps_its_owner_when_the_agent_may() -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let mut f = start().await?;
    std::fs::write(f.root.join("owned"), b"v1")?;
    let root_user = rustix::process::geteuid().is_root();
    if root_user {
        std::os::unix::fs::chown(f.root.join("owned"), Some(1234), Some(2345))?;
    }
    write(&mut f, start_msg("owned"), vec![b"v2".to_vec()]).await?;
    let meta = std::fs::metadata(f.root.join("owned"))?;
    assert_eq!(std::fs::read(f.root.join("owned"))?, b"v2");
    if root_user {
        assert_eq!((meta.uid(), meta.gid()), (1234, 2345));
    } else {
        // Without the privilege the file is the agent's, like any atomic save.
        assert_eq!(meta.uid(), rustix::process::geteuid().as_raw());
    }
    Ok(())
}

/// The temporary file of a write cut short by a kill (left in the tree) is
/// never listed, and the next agent removes it at start; a name that only
/// starts alike stays.
#[tokio::test]
async fn temporaries_of_killed_writes_are_hidden_and_swept() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("src"))?;
    std::fs::write(root.join("src/main.rs"), "fn main() {}")?;
    std::fs::write(root.join("src/.agent-tmp-00000000000000ab"), "half a wri")?;
    std::fs::write(root.join(".agent-tmp-00000000000000cd"), "half")?;
    std::fs::write(root.join("src/.agent-tmpnot"), "kept")?;
    let agent = tests::Agent::start(&root, &[]).await?;
    let mut fs = FilesystemClient::new(agent.channel().await?);
    let listed: Vec<String> = fs
        .list(agent.req(pb::ListRequest {
            path: String::new(),
            depth: 10,
        }))
        .await?
        .into_inner()
        .entries
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(listed, ["src", "src/.agent-tmpnot", "src/main.rs"]);
    tests::eventually(Duration::from_secs(10), "the sweep", || {
        let root = root.clone();
        async move {
            (!root.join("src/.agent-tmp-00000000000000ab").exists()
                && !root.join(".agent-tmp-00000000000000cd").exists())
            .then_some(())
        }
    })
    .await?;
    assert_eq!(
        std::fs::read_to_string(root.join("src/.agent-tmpnot"))?,
        "kept"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("src/main.rs"))?,
        "fn main() {}"
    );
    Ok(())
}
