//! Hostile paths against the real agent: `..` in every spelling, absolute
//! paths, NUL bytes, symlinks out of the root (to `/etc`, to a sibling
//! directory), symlinked parents for writes, and a directory swapped for a
//! symlink during a long streamed write. Each is refused, and a sibling
//! "outside" directory with a canary file is checked after every one: nothing
//! read, written, moved or removed outside the root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::v1::filesystem_client::FilesystemClient;
use proto::v1::{self as pb};
use tonic::Code;
use tonic::transport::Channel;

const CANARY: &[u8] = b"canary: must never be read, changed or removed";

struct Fixture {
    agent: tests::Agent,
    fs: FilesystemClient<Channel>,
    root: PathBuf,
    outside: PathBuf,
    _dir: tempfile::TempDir,
}

/// root/ and a sibling outside/ holding canary.txt; inside the root:
/// etc_link -> /etc, out_link -> ../outside, out_file -> ../outside/canary.txt,
/// sub/up_link -> ../../outside, ok_link -> sub (inside: allowed).
async fn start() -> anyhow::Result<Fixture> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(root.join("sub"))?;
    std::fs::create_dir(&outside)?;
    std::fs::write(outside.join("canary.txt"), CANARY)?;
    std::fs::write(root.join("sub/file.txt"), b"inside")?;
    std::os::unix::fs::symlink("/etc", root.join("etc_link"))?;
    std::os::unix::fs::symlink("../outside", root.join("out_link"))?;
    std::os::unix::fs::symlink("../outside/canary.txt", root.join("out_file"))?;
    std::os::unix::fs::symlink("../../outside", root.join("sub/up_link"))?;
    std::os::unix::fs::symlink("sub", root.join("ok_link"))?;
    let agent = tests::Agent::start(&root, &[]).await?;
    let fs = FilesystemClient::new(agent.channel().await?);
    Ok(Fixture {
        agent,
        fs,
        root,
        outside,
        _dir: dir,
    })
}

/// The outside directory holds exactly the untouched canary.
fn assert_outside_untouched(outside: &Path, case: &str) {
    let names: Vec<String> = std::fs::read_dir(outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["canary.txt"],
        "{case}: something appeared outside the root"
    );
    assert!(
        std::fs::read(outside.join("canary.txt")).unwrap() == CANARY,
        "{case}: canary changed"
    );
    assert!(!Path::new("/etc/evil").exists(), "{case}: wrote into /etc");
}

fn assert_outside_root(res: Result<(), tonic::Status>, case: &str) {
    let err = res.expect_err(case);
    assert_eq!(err.code(), Code::InvalidArgument, "{case}: {err:?}");
    let code = err
        .metadata()
        .get(proto::ERROR_CODE_METADATA_KEY)
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(
        code.as_deref(),
        Some(proto::PATH_OUTSIDE_ROOT),
        "{case}: {err:?}"
    );
}

impl Fixture {
    async fn read(&mut self, path: &str) -> Result<(), tonic::Status> {
        let mut s = self
            .fs
            .read(self.agent.req(pb::ReadRequest {
                path: path.into(),
                ..Default::default()
            }))
            .await?
            .into_inner();
        // A read that got through would stream data: fail loudly on any.
        while let Some(m) = s.message().await? {
            if let Some(pb::read_response::Event::Data(d)) = m.event {
                panic!("{path}: read {} bytes", d.len());
            }
        }
        Ok(())
    }
    async fn stat(&mut self, path: &str) -> Result<(), tonic::Status> {
        self.fs
            .stat(self.agent.req(pb::StatRequest { path: path.into() }))
            .await
            .map(|_| ())
    }
    async fn list(&mut self, path: &str) -> Result<(), tonic::Status> {
        let r = self
            .fs
            .list(self.agent.req(pb::ListRequest {
                path: path.into(),
                depth: 3,
            }))
            .await?;
        panic!("{path}: listed {:?}", r.into_inner().entries);
    }
    async fn write(&mut self, path: &str, make_parents: bool) -> Result<(), tonic::Status> {
        let start = pb::WriteStart {
            path: path.into(),
            make_parents,
            ..Default::default()
        };
        let msgs = vec![
            pb::WriteRequest {
                msg: Some(pb::write_request::Msg::Start(start)),
            },
            pb::WriteRequest {
                msg: Some(pb::write_request::Msg::Data(b"evil".to_vec())),
            },
        ];
        self.fs
            .write(self.agent.req(tokio_stream::iter(msgs)))
            .await
            .map(|_| ())
    }
    async fn mkdir(&mut self, path: &str) -> Result<(), tonic::Status> {
        self.fs
            .make_dir(self.agent.req(pb::MakeDirRequest {
                path: path.into(),
                parents: true,
            }))
            .await
            .map(|_| ())
    }
    async fn remove(&mut self, path: &str) -> Result<(), tonic::Status> {
        self.fs
            .remove(self.agent.req(pb::RemoveRequest {
                path: path.into(),
                recursive: true,
            }))
            .await
            .map(|_| ())
    }
    async fn mv(&mut self, from: &str, to: &str) -> Result<(), tonic::Status> {
        let req = pb::MoveRequest {
            from: from.into(),
            to: to.into(),
            overwrite: true,
        };
        self.fs.r#move(self.agent.req(req)).await.map(|_| ())
    }
    async fn watch(&mut self, path: &str) -> Result<(), tonic::Status> {
        self.fs
            .watch(self.agent.req(pb::WatchRequest {
                path: path.into(),
                ..Default::default()
            }))
            .await
            .map(|_| ())
    }
}

#[tokio::test]
async fn escapes_are_refused_and_touch_nothing_outside() -> anyhow::Result<()> {
    let mut f = start().await?;
    let out = f.outside.clone();
    macro_rules! refused {
        ($case:expr, $op:expr) => {{
            let res = $op.await;
            assert_outside_root(res, $case);
            assert_outside_untouched(&out, $case);
        }};
    }
    // Reads: plain and hidden `..`, absolute, NUL, symlinks out.
    refused!("read ../", f.read("../outside/canary.txt"));
    refused!("read a/../../", f.read("sub/../../outside/canary.txt"));
    refused!("read ./../", f.read("./sub/./../../outside/canary.txt"));
    refused!("read bare ..", f.read(".."));
    refused!("read trailing ..", f.read("sub/.."));
    refused!("read absolute", f.read("/etc/passwd"));
    refused!(
        "read absolute outside",
        f.read(&out.join("canary.txt").to_string_lossy())
    );
    refused!("read NUL", f.read("sub/file.txt\0../../outside/canary.txt"));
    refused!("read via /etc link", f.read("etc_link/passwd"));
    refused!("read file link out", f.read("out_file"));
    refused!("read via dir link out", f.read("out_link/canary.txt"));
    refused!("read via nested link out", f.read("sub/up_link/canary.txt"));
    refused!(
        "read via inside link then out",
        f.read("ok_link/up_link/canary.txt")
    );
    // Stat, list, watch.
    refused!("stat via link out", f.stat("out_link/canary.txt"));
    refused!("stat ..", f.stat("../outside"));
    refused!("list link to /etc", f.list("etc_link"));
    refused!("list link out", f.list("out_link"));
    refused!("list ..", f.list("sub/../.."));
    refused!("watch link out", f.watch("out_link"));
    refused!("watch ..", f.watch(".."));
    // Writes: `..`, absolute, symlinked parent, symlinked target, make_parents through a link.
    refused!("write ../", f.write("../outside/new.txt", false));
    refused!(
        "write absolute",
        f.write("/tmp/agent-hostile-absolute", true)
    );
    refused!("write symlinked parent", f.write("out_link/new.txt", false));
    refused!(
        "write over canary via parent",
        f.write("out_link/canary.txt", false)
    );
    refused!("write through file link", f.write("out_file", false));
    refused!("write into /etc", f.write("etc_link/evil", false));
    refused!(
        "write make_parents via link",
        f.write("out_link/deep/er/x.txt", true)
    );
    refused!("write NUL", f.write("x\0y", false));
    // Directories, removal, moves.
    refused!("mkdir via link", f.mkdir("out_link/newdir"));
    refused!("mkdir ..", f.mkdir("../outside/newdir"));
    refused!("remove via link", f.remove("out_link/canary.txt"));
    refused!("remove ..", f.remove("../outside/canary.txt"));
    refused!(
        "remove absolute",
        f.remove(&out.join("canary.txt").to_string_lossy())
    );
    refused!(
        "move from outside",
        f.mv("out_link/canary.txt", "stolen.txt")
    );
    refused!(
        "move to outside",
        f.mv("sub/file.txt", "out_link/moved.txt")
    );
    refused!("move to ..", f.mv("sub/file.txt", "../outside/moved.txt"));
    assert!(!f.root.join("stolen.txt").exists());
    assert_eq!(std::fs::read(f.root.join("sub/file.txt"))?, b"inside");
    assert!(!Path::new("/tmp/agent-hostile-absolute").exists());
    Ok(())
}

#[tokio::test]
async fn encoded_dots_are_just_names() -> anyhow::Result<()> {
    let mut f = start().await?;
    // Nothing decodes percent-encoding or backslashes at this layer: these are
    // ordinary (missing) names inside the root.
    for path in [
        "..%2foutside%2fcanary.txt",
        "%2e%2e/outside/canary.txt",
        "..\\outside\\canary.txt",
        "....//outside",
    ] {
        let err = f.read(path).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{path}: {err:?}");
        assert_outside_untouched(&f.outside, path);
    }
    // And written as names, they stay inside the root.
    f.write("..%2f..%2fescaped", false).await?;
    assert!(f.root.join("..%2f..%2fescaped").is_file());
    assert_outside_untouched(&f.outside, "encoded write");
    Ok(())
}

#[tokio::test]
async fn links_themselves_are_handled_inside() -> anyhow::Result<()> {
    let mut f = start().await?;
    // A symlink inside the root to inside the root works.
    let mut s =
        f.fs.read(f.agent.req(pb::ReadRequest {
            path: "ok_link/file.txt".into(),
            ..Default::default()
        }))
        .await?
        .into_inner();
    let mut data = Vec::new();
    while let Some(m) = s.message().await? {
        if let Some(pb::read_response::Event::Data(d)) = m.event {
            data.extend(d);
        }
    }
    assert_eq!(data, b"inside");

    // Stat of a link reports the link (its stored target), without following it.
    let e =
        f.fs.stat(f.agent.req(pb::StatRequest {
            path: "etc_link".into(),
        }))
        .await?
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(e.kind, pb::EntryKind::Symlink as i32);

    // A deep list shows links but does not descend through them.
    let entries =
        f.fs.list(f.agent.req(pb::ListRequest {
            path: String::new(),
            depth: 5,
        }))
        .await?
        .into_inner()
        .entries;
    assert!(entries.iter().any(|e| e.path == "out_link"));
    assert!(
        entries.iter().all(|e| !e.path.contains("canary")),
        "{entries:?}"
    );
    assert!(entries.iter().all(|e| !e.path.starts_with("etc_link/")));

    // Removing a link (or a tree holding one) removes the link, never its target.
    f.remove("out_link").await?;
    assert!(std::fs::symlink_metadata(f.root.join("out_link")).is_err());
    assert_outside_untouched(&f.outside, "remove link");
    f.remove("sub").await?;
    assert!(!f.root.join("sub").exists());
    assert_outside_untouched(&f.outside, "remove tree with link");
    // Moving a link moves the link.
    f.mv("etc_link", "etc_link2").await?;
    assert_eq!(
        std::fs::read_link(f.root.join("etc_link2"))?,
        Path::new("/etc")
    );
    assert!(Path::new("/etc/passwd").exists());
    Ok(())
}

/// A write to `d/f` starts; while its data streams, `d` is renamed away and
/// replaced by a symlink to the outside directory; then the write finishes.
/// The write lands in the directory it was checked against (now `d_old`),
/// never outside.
#[tokio::test]
async fn symlink_swapped_in_during_a_long_write() -> anyhow::Result<()> {
    let f = start().await?;
    std::fs::create_dir(f.root.join("d"))?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let start = pb::WriteStart {
        path: "d/f".into(),
        ..Default::default()
    };
    tx.send(pb::WriteRequest {
        msg: Some(pb::write_request::Msg::Start(start)),
    })
    .await?;
    tx.send(pb::WriteRequest {
        msg: Some(pb::write_request::Msg::Data(vec![b'a'; 64 * 1024])),
    })
    .await?;
    let mut fs = f.fs.clone();
    let req = f.agent.req(tokio_stream::wrappers::ReceiverStream::new(rx));
    let call = tokio::spawn(async move { fs.write(req).await });

    // Wait until the temporary file exists in d: the write has resolved d.
    let d = f.root.join("d");
    tests::eventually(
        Duration::from_secs(10),
        "the write's temporary file",
        || {
            let d = d.clone();
            async move { std::fs::read_dir(&d).ok()?.next().map(|_| ()) }
        },
    )
    .await?;
    std::fs::rename(f.root.join("d"), f.root.join("d_old"))?;
    std::os::unix::fs::symlink("../outside", f.root.join("d"))?;
    for _ in 0..8 {
        tx.send(pb::WriteRequest {
            msg: Some(pb::write_request::Msg::Data(vec![b'b'; 64 * 1024])),
        })
        .await?;
    }
    drop(tx);
    let res = tokio::time::timeout(Duration::from_secs(20), call).await??;

    assert_outside_untouched(&f.outside, "swapped symlink");
    assert!(!f.outside.join("f").exists());
    let entry = res?.into_inner().entry.unwrap();
    assert_eq!(entry.size, 9 * 64 * 1024);
    let landed = std::fs::read(f.root.join("d_old/f"))?;
    assert_eq!(landed.len(), 9 * 64 * 1024);
    // A new write through the swapped link is refused.
    let mut f = f;
    assert_outside_root(f.write("d/f", false).await, "write through swapped link");
    assert_outside_untouched(&f.outside, "after swap");
    Ok(())
}

/// A symlink to outside swapped in for a directory that a make_parents write
/// is about to create still cannot redirect it.
#[tokio::test]
async fn parents_through_a_symlink_are_refused() -> anyhow::Result<()> {
    let mut f = start().await?;
    std::os::unix::fs::symlink("../outside", f.root.join("p"))?;
    assert_outside_root(f.write("p/q/r.txt", true).await, "make_parents via link");
    assert_outside_root(f.mkdir("p/q").await, "mkdir parents via link");
    assert_outside_untouched(&f.outside, "parents via link");
    Ok(())
}
