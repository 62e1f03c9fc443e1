//! Watch against the real agent: events for writes through the agent and by
//! another process (this test process), renames, removals, new directories,
//! ignored trees, subdirectory scope, keep-alives and errors.

use std::time::Duration;

use proto::v1::filesystem_client::FilesystemClient;
use proto::v1::{self as pb, EventKind};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

struct Fixture {
    agent: tests::Agent,
    fs: FilesystemClient<Channel>,
    root: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn start(args: &[&str]) -> anyhow::Result<Fixture> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    std::fs::create_dir(&root)?;
    let agent = tests::Agent::start_with_args(&root, &[], args).await?;
    let fs = FilesystemClient::new(agent.channel().await?);
    Ok(Fixture {
        agent,
        fs,
        root,
        _dir: dir,
    })
}

impl Fixture {
    async fn watch(
        &mut self,
        req: pb::WatchRequest,
    ) -> anyhow::Result<Streaming<pb::WatchResponse>> {
        let mut s = self.fs.watch(self.agent.req(req)).await?.into_inner();
        let first = s.message().await?.expect("start");
        assert!(
            matches!(first.event, Some(pb::watch_response::Event::Start(_))),
            "{first:?}"
        );
        Ok(s)
    }

    async fn write(&mut self, path: &str, data: &[u8]) -> anyhow::Result<()> {
        let start = pb::WriteStart {
            path: path.into(),
            make_parents: true,
            ..Default::default()
        };
        let msgs = vec![
            pb::WriteRequest {
                msg: Some(pb::write_request::Msg::Start(start)),
            },
            pb::WriteRequest {
                msg: Some(pb::write_request::Msg::Data(data.to_vec())),
            },
        ];
        self.fs
            .write(self.agent.req(tokio_stream::iter(msgs)))
            .await?;
        Ok(())
    }
}

type Ev = (EventKind, String, String);

/// Reads changes until `pred` matches one; returns everything read so far.
async fn until(
    s: &mut Streaming<pb::WatchResponse>,
    what: &str,
    pred: impl Fn(&Ev) -> bool,
) -> anyhow::Result<Vec<Ev>> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout_at(deadline, s.message())
            .await
            .map_err(|_| anyhow::anyhow!("timed out waiting for {what}; saw {seen:?}"))??
            .ok_or_else(|| anyhow::anyhow!("stream ended waiting for {what}; saw {seen:?}"))?;
        if let Some(pb::watch_response::Event::Change(c)) = msg.event {
            let ev = (EventKind::try_from(c.kind)?, c.path, c.to);
            let hit = pred(&ev);
            seen.push(ev);
            if hit {
                return Ok(seen);
            }
        }
    }
}

fn is(kind: EventKind, path: &'static str) -> impl Fn(&Ev) -> bool {
    move |e| e.0 == kind && e.1 == path
}

#[tokio::test]
async fn writes_through_the_agent_and_by_other_processes() -> anyhow::Result<()> {
    let mut f = start(&[]).await?;
    let mut s = f.watch(pb::WatchRequest::default()).await?;

    // Through the agent: a new file is created, then modified; the write's
    // temporary file never shows.
    f.write("a.txt", b"1").await?;
    let seen = until(&mut s, "created a.txt", is(EventKind::Created, "a.txt")).await?;
    assert!(
        seen.iter().all(|e| !e.1.contains(".agent-tmp-")),
        "{seen:?}"
    );
    f.write("a.txt", b"2").await?;
    let seen = until(&mut s, "modified a.txt", is(EventKind::Modified, "a.txt")).await?;
    assert!(
        seen.iter().all(|e| !e.1.contains(".agent-tmp-")),
        "{seen:?}"
    );

    // By another process.
    std::fs::write(f.root.join("b.txt"), b"other")?;
    until(&mut s, "created b.txt", is(EventKind::Created, "b.txt")).await?;
    std::fs::write(f.root.join("b.txt"), b"other again")?;
    until(&mut s, "modified b.txt", is(EventKind::Modified, "b.txt")).await?;
    std::fs::rename(f.root.join("b.txt"), f.root.join("c.txt"))?;
    until(&mut s, "renamed b.txt", |e| {
        e.0 == EventKind::Renamed && e.1 == "b.txt" && e.2 == "c.txt"
    })
    .await?;
    std::fs::remove_file(f.root.join("c.txt"))?;
    until(&mut s, "removed c.txt", is(EventKind::Removed, "c.txt")).await?;

    // A new directory is watched from its creation: files in it report too,
    // even those created before its watch could be set.
    std::fs::create_dir_all(f.root.join("new/deep"))?;
    std::fs::write(f.root.join("new/deep/x.txt"), b"x")?;
    until(&mut s, "created new/deep/x.txt", |e| {
        e.1 == "new/deep/x.txt"
    })
    .await?;
    std::fs::write(f.root.join("new/deep/x.txt"), b"xx")?;
    until(
        &mut s,
        "modified new/deep/x.txt",
        is(EventKind::Modified, "new/deep/x.txt"),
    )
    .await?;

    // A renamed directory keeps reporting under its new name.
    std::fs::rename(f.root.join("new"), f.root.join("moved"))?;
    until(&mut s, "renamed new", |e| {
        e.0 == EventKind::Renamed && e.1 == "new" && e.2 == "moved"
    })
    .await?;
    std::fs::write(f.root.join("moved/deep/y.txt"), b"y")?;
    until(
        &mut s,
        "created moved/deep/y.txt",
        is(EventKind::Created, "moved/deep/y.txt"),
    )
    .await?;

    // Removals through the agent.
    f.fs.remove(f.agent.req(pb::RemoveRequest {
        path: "a.txt".into(),
        recursive: false,
    }))
    .await?;
    until(&mut s, "removed a.txt", is(EventKind::Removed, "a.txt")).await?;
    Ok(())
}

#[tokio::test]
async fn ignored_trees_and_scope() -> anyhow::Result<()> {
    let mut f = start(&[]).await?;
    std::fs::create_dir_all(f.root.join("node_modules/pkg"))?;
    std::fs::create_dir_all(f.root.join(".git"))?;
    std::fs::create_dir_all(f.root.join("src"))?;
    let mut all = f.watch(pb::WatchRequest::default()).await?;
    let mut src = f
        .watch(pb::WatchRequest {
            path: "src".into(),
            ..Default::default()
        })
        .await?;

    std::fs::write(f.root.join("node_modules/pkg/index.js"), b"x")?;
    std::fs::write(f.root.join(".git/HEAD"), b"ref")?;
    std::fs::write(f.root.join("outside-src.txt"), b"x")?;
    std::fs::write(f.root.join("src/main.ts"), b"x")?;
    // Events arrive in order: by the time src/main.ts shows, the earlier
    // changes would have shown had they not been filtered.
    let seen = until(&mut all, "src/main.ts", |e| e.1 == "src/main.ts").await?;
    assert!(
        seen.iter()
            .all(|e| !e.1.starts_with("node_modules") && !e.1.starts_with(".git")),
        "{seen:?}"
    );
    assert!(seen.iter().any(|e| e.1 == "outside-src.txt"), "{seen:?}");
    let seen = until(&mut src, "src/main.ts", |e| e.1 == "src/main.ts").await?;
    assert!(seen.iter().all(|e| e.1.starts_with("src/")), "{seen:?}");

    // Without the default ignores, node_modules changes are reported, also
    // in directories that existed before the watch.
    let mut raw = f
        .watch(pb::WatchRequest {
            no_default_ignores: true,
            ..Default::default()
        })
        .await?;
    std::fs::write(f.root.join("node_modules/pkg/index.js"), b"changed")?;
    until(
        &mut raw,
        "node_modules change",
        is(EventKind::Modified, "node_modules/pkg/index.js"),
    )
    .await?;
    // Custom ignores apply on top.
    let mut custom = f
        .watch(pb::WatchRequest {
            ignore: vec!["dist".into()],
            ..Default::default()
        })
        .await?;
    std::fs::create_dir(f.root.join("dist"))?;
    std::fs::write(f.root.join("dist/out.js"), b"x")?;
    std::fs::write(f.root.join("marker"), b"x")?;
    let seen = until(&mut custom, "marker", |e| e.1 == "marker").await?;
    assert!(seen.iter().all(|e| !e.1.starts_with("dist")), "{seen:?}");
    Ok(())
}

#[tokio::test]
async fn debounce_coalesces_per_path() -> anyhow::Result<()> {
    let mut f = start(&[]).await?;
    let mut s = f
        .watch(pb::WatchRequest {
            debounce_ms: 300,
            ..Default::default()
        })
        .await?;
    // Many writes to one file within the window: one event for it.
    for i in 0..20 {
        std::fs::write(f.root.join("busy.txt"), format!("{i}"))?;
    }
    std::fs::write(f.root.join("after.txt"), b"x")?;
    let seen = until(&mut s, "after.txt", |e| e.1 == "after.txt").await?;
    let busy: Vec<_> = seen.iter().filter(|e| e.1 == "busy.txt").collect();
    assert_eq!(busy.len(), 1, "{seen:?}");
    assert_eq!(busy[0].0, EventKind::Created);
    Ok(())
}

#[tokio::test]
async fn keepalive_when_idle() -> anyhow::Result<()> {
    let mut f = start(&["--watch-keepalive-secs", "1"]).await?;
    let mut s = f.watch(pb::WatchRequest::default()).await?;
    let msg = tokio::time::timeout(Duration::from_secs(5), s.message())
        .await??
        .expect("message");
    assert!(
        matches!(msg.event, Some(pb::watch_response::Event::Keepalive(_))),
        "{msg:?}"
    );
    Ok(())
}

#[tokio::test]
async fn watch_errors() -> anyhow::Result<()> {
    let mut f = start(&[]).await?;
    std::fs::write(f.root.join("file"), b"x")?;
    let err =
        f.fs.watch(f.agent.req(pb::WatchRequest {
            path: "file".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err =
        f.fs.watch(f.agent.req(pb::WatchRequest {
            path: "missing".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    Ok(())
}
