//! SIGTERM and PID 1 duty, against the real agent binary: in-flight writes
//! finish, long streams end, the process exits 0; the grace period bounds the
//! wait; `--init` reaps orphans and passes signals and exit codes through.

use std::time::Duration;

use proto::v1::filesystem_client::FilesystemClient;
use proto::v1::{self as pb};
use rustix::process::{Pid, Signal};

fn sigterm(pid: u32) {
    let pid = Pid::from_raw(pid as i32).expect("a real pid");
    rustix::process::kill_process(pid, Signal::TERM).expect("kill");
}

/// Waits for the agent process to exit; returns its exit code.
async fn exit_code(agent: &mut tests::Agent, within: Duration) -> anyhow::Result<i32> {
    let child = &mut agent.proc.0;
    let status = tests::eventually(within, "the agent to exit", || {
        let st = child.try_wait().ok().flatten();
        async move { st }
    })
    .await?;
    status
        .code()
        .ok_or_else(|| anyhow::anyhow!("killed by a signal: {status:?}"))
}

fn data(chunk: Vec<u8>) -> pb::WriteRequest {
    pb::WriteRequest {
        msg: Some(pb::write_request::Msg::Data(chunk)),
    }
}

async fn setup(args: &[&str]) -> anyhow::Result<(tests::Agent, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let agent = tests::Agent::start_with_args(dir.path(), &[], args).await?;
    Ok((agent, dir))
}

#[tokio::test]
async fn sigterm_lets_a_slow_write_finish_then_exits_0() -> anyhow::Result<()> {
    let (mut agent, dir) = setup(&[]).await?;
    let mut fs = FilesystemClient::new(agent.channel().await?);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let start = pb::WriteStart {
        path: "slow.bin".into(),
        ..Default::default()
    };
    tx.send(pb::WriteRequest {
        msg: Some(pb::write_request::Msg::Start(start)),
    })
    .await?;
    tx.send(data(vec![1; 256 * 1024])).await?;
    let req = agent.req(tokio_stream::wrappers::ReceiverStream::new(rx));
    let call = tokio::spawn(async move { fs.write(req).await });
    let root = dir.path().to_path_buf();
    tests::eventually(Duration::from_secs(10), "the write to begin", || {
        let root = root.clone();
        async move { std::fs::read_dir(&root).ok()?.next().map(|_| ()) }
    })
    .await?;

    sigterm(agent.pid());
    // It stops accepting new connections...
    let socket = agent.socket.clone();
    tests::eventually(Duration::from_secs(10), "the listener to close", || {
        let socket = socket.clone();
        async move {
            tokio::net::UnixStream::connect(&socket)
                .await
                .is_err()
                .then_some(())
        }
    })
    .await?;
    // ...while the write in flight goes on and completes.
    for _ in 0..8 {
        tx.send(data(vec![2; 256 * 1024])).await?;
    }
    drop(tx);
    let entry = call.await??.into_inner().entry.expect("entry");
    assert_eq!(entry.size, 9 * 256 * 1024);
    let written = std::fs::read(dir.path().join("slow.bin"))?;
    assert_eq!(written.len(), 9 * 256 * 1024);
    assert!(written[256 * 1024..].iter().all(|b| *b == 2));
    assert_eq!(exit_code(&mut agent, Duration::from_secs(10)).await?, 0);
    Ok(())
}

#[tokio::test]
async fn sigterm_ends_watch_streams_and_exits_0() -> anyhow::Result<()> {
    let (mut agent, _dir) = setup(&[]).await?;
    let mut fs = FilesystemClient::new(agent.channel().await?);
    let mut watch = fs
        .watch(agent.req(pb::WatchRequest::default()))
        .await?
        .into_inner();
    watch.message().await?.expect("start");
    sigterm(agent.pid());
    // The stream ends (cleanly or with an error), so the server can stop.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the watch stream did not end");
    assert_eq!(exit_code(&mut agent, Duration::from_secs(10)).await?, 0);
    Ok(())
}

#[tokio::test]
async fn grace_period_bounds_the_wait_and_leaves_no_temp_file() -> anyhow::Result<()> {
    let (mut agent, dir) = setup(&["--grace-secs", "1"]).await?;
    let mut fs = FilesystemClient::new(agent.channel().await?);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let start = pb::WriteStart {
        path: "never.bin".into(),
        ..Default::default()
    };
    tx.send(pb::WriteRequest {
        msg: Some(pb::write_request::Msg::Start(start)),
    })
    .await?;
    tx.send(data(vec![1; 1024])).await?;
    let req = agent.req(tokio_stream::wrappers::ReceiverStream::new(rx));
    let _call = tokio::spawn(async move { fs.write(req).await });
    let root = dir.path().to_path_buf();
    tests::eventually(Duration::from_secs(10), "the write to begin", || {
        let root = root.clone();
        async move { std::fs::read_dir(&root).ok()?.next().map(|_| ()) }
    })
    .await?;
    let t0 = std::time::Instant::now();
    sigterm(agent.pid());
    // The client never finishes: the agent gives up after the grace period.
    assert_eq!(exit_code(&mut agent, Duration::from_secs(10)).await?, 0);
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "exited before the grace period: {:?}",
        t0.elapsed()
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())?
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    drop(tx);
    Ok(())
}

#[tokio::test]
async fn init_reaps_orphans_and_forwards_sigterm() -> anyhow::Result<()> {
    use proto::v1::process_client::ProcessClient;
    let (mut agent, _dir) = setup(&["--init"]).await?;
    let init_pid = agent.pid();
    let mut proc = ProcessClient::new(agent.channel().await?);
    // The shell backgrounds a sleep and exits at once: the sleep is orphaned
    // and re-parented to the init, which must reap it when it ends.
    let req = pb::RunRequest {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "sleep 1 </dev/null >/dev/null 2>&1 & echo $!".into(),
        ],
        ..Default::default()
    };
    let out = proc.run(agent.req(req)).await?.into_inner();
    assert_eq!(out.exit_code, 0, "{out:?}");
    let orphan: u32 = String::from_utf8(out.stdout)?.trim().parse()?;
    let status = format!("/proc/{orphan}/status");
    // Gone from /proc means reaped; a zombie nobody reaps would stay ("State: Z").
    let mut parent = None;
    tests::eventually(Duration::from_secs(15), "the orphan to be reaped", || {
        let s = std::fs::read_to_string(&status).ok();
        if let Some(ppid) = s
            .as_deref()
            .and_then(|s| s.lines().find(|l| l.starts_with("PPid:")))
        {
            parent = Some(ppid.trim_start_matches("PPid:").trim().to_owned());
        }
        async move { s.is_none().then_some(()) }
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}: orphan {orphan}, init {init_pid}, {:?}",
            std::fs::read_to_string(&status)
        )
    })?;
    // The last time it was seen alive (or as a zombie), its parent was the init.
    if let Some(parent) = parent {
        assert_eq!(parent, init_pid.to_string());
    }

    // SIGTERM to the init reaches the server, which drains and exits 0; the
    // init exits with its code.
    sigterm(init_pid);
    assert_eq!(exit_code(&mut agent, Duration::from_secs(15)).await?, 0);
    Ok(())
}

#[tokio::test]
async fn init_passes_the_server_exit_code_through() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = std::process::Command::new(tests::bin("agent"))
        .args(["--init", "--socket"])
        .arg(dir.path().join("s.sock"))
        .arg("--root")
        .arg(dir.path().join("missing"))
        .env("AGENT_TOKEN", "t")
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr)?;
    assert!(stderr.contains("cannot open root"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn server_follows_a_killed_init() -> anyhow::Result<()> {
    let (mut agent, _dir) = setup(&["--init"]).await?;
    let init_pid = agent.pid().to_string();
    let server = children_of(&init_pid);
    assert_eq!(server.len(), 1, "the init has one child: {server:?}");
    // SIGKILL (what dropping the handle does): the server gets SIGTERM from
    // the kernel (parent death signal) and exits instead of running on.
    agent.proc.0.kill()?;
    agent.proc.0.wait()?;
    let status = format!("/proc/{}/status", server[0]);
    tests::eventually(Duration::from_secs(15), "the server to exit", || {
        let alive = std::fs::read_to_string(&status).is_ok_and(|s| !s.contains("State:\tZ"));
        async move { (!alive).then_some(()) }
    })
    .await?;
    Ok(())
}

/// Pids whose parent is `pid`.
fn children_of(pid: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let ppid = status
                .lines()
                .find(|l| l.starts_with("PPid:"))?
                .trim_start_matches("PPid:")
                .trim()
                .to_owned();
            (ppid == pid).then_some(name)
        })
        .collect()
}
