//! Background processes against the real agent: logs with offsets and
//! follow, stop (the whole process group, grandchildren too), duplicate
//! names, and the agent's shutdown ending sessions and process groups.

use std::time::Duration;

use proto::v1::process_client::ProcessClient;
use proto::v1::{
    AttachPtyRequest, AttachStart, BackgroundLogsRequest, Empty, StartBackgroundRequest,
    StartPtyRequest, StopBackgroundRequest, attach_pty_request, attach_pty_response,
    background_logs_response::Event,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(20);

struct Fixture {
    agent: tests::Agent,
    client: ProcessClient<Channel>,
    root: tempfile::TempDir,
}

async fn fixture() -> anyhow::Result<Fixture> {
    let root = tempfile::tempdir()?;
    let agent = tests::Agent::start(root.path(), &[]).await?;
    let client = ProcessClient::new(agent.channel().await?);
    Ok(Fixture {
        agent,
        client,
        root,
    })
}

impl Fixture {
    async fn start(
        &mut self,
        name: &str,
        command: &str,
    ) -> Result<proto::v1::BackgroundProcess, tonic::Status> {
        let req = StartBackgroundRequest {
            name: name.into(),
            command: command.into(),
            ..Default::default()
        };
        self.client
            .start_background(self.agent.req(req))
            .await
            .map(|r| r.into_inner())
    }

    async fn logs(
        &mut self,
        name: &str,
        offset: u64,
        follow: bool,
    ) -> Result<tonic::Streaming<proto::v1::BackgroundLogsResponse>, tonic::Status> {
        let req = BackgroundLogsRequest {
            name: name.into(),
            offset,
            follow,
        };
        self.client
            .background_logs(self.agent.req(req))
            .await
            .map(|r| r.into_inner())
    }

    async fn list(&mut self) -> anyhow::Result<Vec<proto::v1::BackgroundProcess>> {
        Ok(self
            .client
            .list_background(self.agent.req(Empty {}))
            .await?
            .into_inner()
            .processes)
    }

    async fn pid_file(&self, name: &str) -> anyhow::Result<u32> {
        let path = self.root.path().join(name);
        tests::eventually(WAIT, "the pid file", || {
            let path = path.clone();
            async move {
                std::fs::read_to_string(path)
                    .ok()?
                    .trim()
                    .parse::<u32>()
                    .ok()
            }
        })
        .await
    }
}

/// Reads a log stream: (bytes, exit code if the stream reported one),
/// checking that chunks are contiguous from `offset`; stops after `until`
/// appears, or at the stream's end.
async fn read_log(
    s: &mut tonic::Streaming<proto::v1::BackgroundLogsResponse>,
    mut offset: u64,
    until: Option<&str>,
) -> anyhow::Result<(Vec<u8>, Option<i32>)> {
    let mut out = Vec::new();
    loop {
        if let Some(u) = until
            && out.windows(u.len()).any(|w| w == u.as_bytes())
        {
            return Ok((out, None));
        }
        let msg = tokio::time::timeout(WAIT, s.message())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "log stream idle; so far {:?}",
                    String::from_utf8_lossy(&out)
                )
            })??;
        match msg.and_then(|m| m.event) {
            Some(Event::Output(o)) => {
                assert_eq!(o.offset, offset, "contiguous log chunks");
                offset += o.data.len() as u64;
                out.extend_from_slice(&o.data);
            }
            Some(Event::Exit(e)) => return Ok((out, Some(e.code))),
            Some(Event::Keepalive(_)) => {}
            None => return Ok((out, None)),
        }
    }
}

#[tokio::test]
async fn logs_follow_and_offsets() -> anyhow::Result<()> {
    let mut f = fixture().await?;
    let p = f
        .start(
            "counter",
            "i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo line$i; sleep 0.02; done; exit 4",
        )
        .await?;
    assert!(p.running && p.pid > 0);

    let mut s = f.logs("counter", 0, true).await?;
    let (first, _) = read_log(&mut s, 0, Some("line5\n")).await?;
    assert!(first.starts_with(b"line1\nline2\n"));
    drop(s);

    // Follow from an offset: exactly the bytes after it, then the exit.
    let at = "line1\nline2\n".len() as u64;
    let mut s = f.logs("counter", at, true).await?;
    let (rest, exit) = read_log(&mut s, at, None).await?;
    assert_eq!(exit, Some(4));
    let want: String = (3..=40).map(|i| format!("line{i}\n")).collect();
    assert_eq!(String::from_utf8(rest)?, want);

    let listed = f
        .list()
        .await?
        .into_iter()
        .find(|x| x.name == "counter")
        .expect("listed");
    assert!(!listed.running);
    assert_eq!(listed.exit_code, 4);
    assert_eq!(listed.log_end, (want.len() + at as usize) as u64);

    // Without follow: what is there, then the end.
    let mut s = f.logs("counter", 0, false).await?;
    let (all, exit) = read_log(&mut s, 0, None).await?;
    assert_eq!(all.len() as u64, listed.log_end);
    assert_eq!(exit, Some(4));

    let err = f
        .logs("counter", listed.log_end + 1, false)
        .await
        .expect_err("offset past the end");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = f.logs("nope", 0, false).await.expect_err("unknown name");
    assert_eq!(err.code(), tonic::Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn stdout_and_stderr_interleave_in_order() -> anyhow::Result<()> {
    let mut f = fixture().await?;
    f.start("mixed", "echo 1; echo 2 >&2; echo 3; echo 4 >&2")
        .await?;
    let mut s = f.logs("mixed", 0, true).await?;
    let (out, exit) = read_log(&mut s, 0, None).await?;
    assert_eq!(out, b"1\n2\n3\n4\n");
    assert_eq!(exit, Some(0));
    Ok(())
}

#[tokio::test]
async fn stop_kills_the_whole_group() -> anyhow::Result<()> {
    let mut f = fixture().await?;
    // A grandchild that ignores SIGTERM: only the SIGKILL after the grace
    // period reaches it.
    f.start(
        "server",
        "(trap '' TERM; exec sleep 300) & echo $! > grandchild.pid; echo serving; wait",
    )
    .await?;
    let grandchild = f.pid_file("grandchild.pid").await?;
    assert!(!gone(grandchild));

    let err = f.start("server", "true").await.expect_err("duplicate name");
    assert_eq!(err.code(), tonic::Code::AlreadyExists);

    let req = StopBackgroundRequest {
        name: "server".into(),
        grace_ms: 300,
    };
    let stopped = f
        .client
        .stop_background(f.agent.req(req))
        .await?
        .into_inner();
    assert!(!stopped.running);
    assert!(
        tests::eventually(WAIT, "the grandchild to die", || async move {
            gone(grandchild).then_some(())
        })
        .await
        .is_ok()
    );
    let mut s = f.logs("server", 0, false).await?;
    let (out, _) = read_log(&mut s, 0, None).await?;
    assert_eq!(out, b"serving\n");

    // The name is free again once the process ended.
    let again = f.start("server", "echo again").await?;
    assert!(again.pid != stopped.pid);

    let err = f
        .client
        .stop_background(f.agent.req(StopBackgroundRequest {
            name: "nope".into(),
            grace_ms: 0,
        }))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn bad_starts_are_refused() -> anyhow::Result<()> {
    let mut f = fixture().await?;
    for name in ["", "a/b", "tab\tname"] {
        let err = f.start(name, "true").await.expect_err(name);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name:?}");
    }
    let x = || "x".to_owned();
    let refused = [
        (
            "no command",
            StartBackgroundRequest {
                name: x(),
                ..Default::default()
            },
        ),
        (
            "cwd outside",
            StartBackgroundRequest {
                name: x(),
                command: "true".into(),
                cwd: "..".into(),
                ..Default::default()
            },
        ),
        (
            "missing program",
            StartBackgroundRequest {
                name: x(),
                argv: vec!["/no/such".into()],
                ..Default::default()
            },
        ),
    ];
    for (why, req) in refused {
        let err = f
            .client
            .start_background(f.agent.req(req))
            .await
            .expect_err(why);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{why}");
    }
    assert!(f.list().await?.is_empty());

    // argv, env and cwd.
    std::fs::create_dir(f.root.path().join("web"))?;
    let req = StartBackgroundRequest {
        name: "env".into(),
        argv: vec!["sh".into(), "-c".into(), "echo $PORT; pwd".into()],
        cwd: "web".into(),
        env: [("PORT".to_owned(), "5173".to_owned())].into(),
        ..Default::default()
    };
    f.client.start_background(f.agent.req(req)).await?;
    let mut s = f.logs("env", 0, true).await?;
    let (out, _) = read_log(&mut s, 0, None).await?;
    let web = f.root.path().canonicalize()?.join("web");
    assert_eq!(
        String::from_utf8(out)?,
        format!("5173\n{}\n", web.display())
    );
    Ok(())
}

#[tokio::test]
async fn shutdown_ends_sessions_and_process_groups() -> anyhow::Result<()> {
    let mut f = fixture().await?;
    f.start("srv", "sleep 300 & echo $! > bg.pid; wait").await?;
    let bg_grandchild = f.pid_file("bg.pid").await?;

    let session = f
        .client
        .start_pty(f.agent.req(StartPtyRequest {
            argv: vec!["sh".into()],
            ..Default::default()
        }))
        .await?
        .into_inner();
    let (tx, rx) = mpsc::channel(4);
    tx.send(AttachPtyRequest {
        msg: Some(attach_pty_request::Msg::Start(AttachStart {
            session_id: session.id.clone(),
            offset: None,
        })),
    })
    .await?;
    let mut stream = f
        .client
        .attach_pty(f.agent.req(ReceiverStream::new(rx)))
        .await?
        .into_inner();

    let status = std::process::Command::new("kill")
        .args(["-TERM", &f.agent.pid().to_string()])
        .status()?;
    assert!(status.success());

    // The attached client gets the session's exit.
    let mut exit = None;
    while let Some(msg) = tokio::time::timeout(WAIT, stream.message()).await?? {
        if let Some(attach_pty_response::Event::Exit(e)) = msg.event {
            exit = Some(e.code);
        }
    }
    assert!(exit.is_some(), "exit before the stream closed");
    drop(tx);

    let agent = &mut f.agent;
    let code = tests::eventually(WAIT, "the agent to exit", || {
        let r = agent.proc.0.try_wait();
        async move { r.ok().flatten() }
    })
    .await?;
    assert_eq!(code.code(), Some(0));
    assert!(
        tests::eventually(WAIT, "the background group to be gone", || async move {
            (gone(bg_grandchild) && gone(session.pid)).then_some(())
        })
        .await
        .is_ok()
    );
    Ok(())
}

/// Gone = no longer exists, or a zombie left for whatever reaps orphans.
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// `--max-background`: a start beyond the running processes' limit is
/// refused (RESOURCE_EXHAUSTED, `limit_reached`) and runs nothing; an ended
/// process does not count.
#[tokio::test]
async fn running_processes_are_limited() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let agent = tests::Agent::start_with_args(root.path(), &[], &["--max-background", "1"]).await?;
    let mut f = Fixture {
        client: ProcessClient::new(agent.channel().await?),
        agent,
        root,
    };
    f.start("a", "sleep 300").await?;
    let err = f
        .start("b", "touch ran; sleep 300")
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        err.metadata().get(proto::ERROR_CODE_METADATA_KEY).unwrap(),
        proto::LIMIT_REACHED
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!f.root.path().join("ran").exists());
    let req = StopBackgroundRequest {
        name: "a".into(),
        grace_ms: 300,
    };
    f.client.stop_background(f.agent.req(req)).await?;
    f.start("b", "touch ran; sleep 300").await?;
    Ok(())
}

/// `--start`: the agent runs a dev server from its own start as the managed
/// background process `--start-name`, in `--start-cwd`, with the agent's
/// environment (in a dev pod, the container's: `AWS_*` included) minus its
/// `AGENT_*` (the token stays the agent's); its log
/// reads by name; a stop ends the whole process group; and SIGTERM to the
/// agent (a pod's stop) ends the group of the restarted server too.
#[tokio::test]
async fn the_start_flag_runs_a_dev_server_as_a_managed_process() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    std::fs::create_dir(root.path().join("web"))?;
    // A grandchild that ignores SIGTERM: only a group kill reaches it.
    let start = "(trap '' TERM; exec sleep 300) & echo $! > grandchild.pid; \
                 echo \"port=$PORT token=${AGENT_TOKEN:-none} aws=${AWS_REGION:-none} in=$(basename \"$PWD\")\"; wait";
    let agent = tests::Agent::start_with_args(
        root.path(),
        &[
            ("PORT".into(), "5173".into()),
            ("AWS_REGION".into(), "eu-test-1".into()),
        ],
        &[
            "--start",
            start,
            "--start-name",
            "web",
            "--start-cwd",
            "web",
        ],
    )
    .await?;
    let mut f = Fixture {
        client: ProcessClient::new(agent.channel().await?),
        agent,
        root,
    };
    let listed = f.list().await?;
    let [web] = listed.as_slice() else {
        panic!("one managed process: {listed:?}")
    };
    assert_eq!(web.name, "web");
    assert!(web.running && web.pid > 0, "{web:?}");
    let mut s = f.logs("web", 0, true).await?;
    let (out, _) = read_log(&mut s, 0, Some("\n")).await?;
    assert_eq!(
        String::from_utf8(out)?,
        "port=5173 token=none aws=eu-test-1 in=web\n",
        "the agent's env (the container's, AWS_* included) without its own AGENT_* variables, in --start-cwd"
    );
    drop(s);
    let grandchild = f.pid_file("web/grandchild.pid").await?;

    // A stop ends the whole group (the grandchild ignores SIGTERM).
    let stopped = f
        .client
        .stop_background(f.agent.req(StopBackgroundRequest {
            name: "web".into(),
            grace_ms: 300,
        }))
        .await?
        .into_inner();
    assert!(!stopped.running);
    tests::eventually(WAIT, "the grandchild to die on stop", || async move {
        gone(grandchild).then_some(())
    })
    .await?;

    // Started again (as the gateway restarts a container), then SIGTERM to
    // the agent: its shutdown ends the group before it exits.
    std::fs::remove_file(f.root.path().join("web/grandchild.pid"))?;
    f.start("web", &format!("cd web; {start}")).await?;
    let grandchild = f.pid_file("web/grandchild.pid").await?;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &f.agent.pid().to_string()])
        .status()?;
    assert!(status.success());
    let agent = &mut f.agent;
    let code = tests::eventually(WAIT, "the agent to exit", || {
        let r = agent.proc.0.try_wait();
        async move { r.ok().flatten() }
    })
    .await?;
    assert_eq!(code.code(), Some(0));
    tests::eventually(
        WAIT,
        "the grandchild to die with the agent",
        || async move { gone(grandchild).then_some(()) },
    )
    .await?;
    Ok(())
}

/// A --start that cannot start (its working directory is not under the
/// root) stops the agent with a clear error, as a bad flag does: the pod
/// then shows the failure instead of serving without its dev server.
#[tokio::test]
async fn a_start_that_cannot_start_fails_the_agent() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let run = tempfile::tempdir()?;
    let out = tokio::process::Command::new(tests::bin("agent"))
        .arg("--root")
        .arg(root.path())
        .arg("--socket")
        .arg(run.path().join("agent.sock"))
        .args(["--start", "true", "--start-cwd", "../elsewhere"])
        .env("AGENT_TOKEN", "t")
        .output()
        .await?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot start --start"), "{err}");
    Ok(())
}

/// `--copy-to`: the init-container step copies the running binary (mode
/// 0755, whole) and exits without serving; the copy is the same agent.
#[tokio::test]
async fn copy_to_installs_the_agent_binary() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir()?;
    let to = dir.path().join("agent");
    let status = tokio::process::Command::new(tests::bin("agent"))
        .arg("--copy-to")
        .arg(&to)
        .status()
        .await?;
    assert!(status.success());
    assert_eq!(std::fs::read(&to)?, std::fs::read(tests::bin("agent"))?);
    assert_eq!(std::fs::metadata(&to)?.permissions().mode() & 0o777, 0o755);
    let names: Vec<_> = std::fs::read_dir(dir.path())?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    assert_eq!(names, ["agent"], "no temporary file left");
    let version = tokio::process::Command::new(&to)
        .arg("--version")
        .output()
        .await?;
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("agent "));

    let status = tokio::process::Command::new(tests::bin("agent"))
        .arg("--copy-to")
        .arg(dir.path().join("missing/agent"))
        .status()
        .await?;
    assert!(!status.success(), "a missing directory is an error");
    Ok(())
}

/// `--start` begins only once the agent's listener is bound: the server can
/// never take the agent's address first (and be sent the gateway's token).
#[tokio::test]
async fn the_start_flag_waits_for_the_listener() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let run = tempfile::tempdir()?;
    let socket = run.path().join("agent.sock");
    let mut agent = tokio::process::Command::new(tests::bin("agent"))
        .arg("--root")
        .arg(root.path())
        .arg("--socket")
        .arg(&socket)
        .args([
            "--start",
            "if [ -S \"$CHECK_SOCKET\" ]; then echo bound; else echo unbound; fi > seen.txt; exec sleep 300",
        ])
        .env("AGENT_TOKEN", "t")
        .env("CHECK_SOCKET", &socket)
        .kill_on_drop(true)
        .spawn()?;
    let seen = root.path().join("seen.txt");
    let got = tests::eventually(WAIT, "the server's check", || {
        let seen = seen.clone();
        async move {
            std::fs::read_to_string(seen)
                .ok()
                .filter(|s| s.ends_with('\n'))
        }
    })
    .await?;
    assert_eq!(got, "bound\n");
    // SIGTERM: the agent stops the server's group before it exits.
    let pid = agent.id().expect("running").to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()?
            .success()
    );
    let code = tokio::time::timeout(WAIT, agent.wait()).await??;
    assert_eq!(code.code(), Some(0));
    Ok(())
}
