//! Process.Run against the real agent: exit codes, stdin, env, cwd, the
//! timeout (which kills the whole process group) and the output cap.

use std::collections::HashMap;
use std::time::Duration;

use proto::v1::RunRequest;
use proto::v1::process_client::ProcessClient;
use tonic::transport::Channel;

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

fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn sh(script: &str) -> RunRequest {
    RunRequest {
        argv: argv(&["sh", "-c", script]),
        ..Default::default()
    }
}

impl Fixture {
    async fn run(&mut self, r: RunRequest) -> Result<proto::v1::RunResponse, tonic::Status> {
        self.client
            .run(self.agent.req(r))
            .await
            .map(|r| r.into_inner())
    }
}

#[tokio::test]
async fn run_success_and_nonzero_exit() -> anyhow::Result<()> {
    let mut f = fixture().await?;
    let r = f.run(sh("echo out; echo err >&2")).await?;
    assert_eq!(r.exit_code, 0);
    assert_eq!(r.stdout, b"out\n");
    assert_eq!(r.stderr, b"err\n");
    assert!(!r.timed_out && !r.stdout_truncated && !r.stderr_truncated);
    assert_eq!(r.signal, 0);

    let r = f.run(sh("echo partial; exit 3")).await?;
    assert_eq!(r.exit_code, 3);
    assert_eq!(r.stdout, b"partial\n");

    // Killed by a signal: -1 and the signal number.
    let r = f.run(sh("kill -9 $$")).await?;
    assert_eq!(r.exit_code, -1);
    assert_eq!(r.signal, 9);
    Ok(())
}

#[tokio::test]
async fn run_stdin_env_and_cwd() -> anyhow::Result<()> {
    let mut f = fixture().await?;
    let r = f
        .run(RunRequest {
            argv: argv(&["cat"]),
            stdin: b"from stdin\n".to_vec(),
            ..Default::default()
        })
        .await?;
    assert_eq!(r.stdout, b"from stdin\n");

    let mut req = sh("echo $GREETING; echo ${AGENT_TOKEN:-no-token}");
    req.env = HashMap::from([("GREETING".to_owned(), "hello".to_owned())]);
    let r = f.run(req).await?;
    assert_eq!(
        r.stdout, b"hello\nno-token\n",
        "request env set, the agent's token withheld"
    );

    std::fs::create_dir_all(f.root.path().join("sub/dir"))?;
    let mut req = RunRequest {
        argv: argv(&["pwd"]),
        ..Default::default()
    };
    req.cwd = "sub/dir".into();
    let r = f.run(req).await?;
    let pwd = String::from_utf8(r.stdout)?;
    let want = f.root.path().canonicalize()?.join("sub/dir");
    assert_eq!(pwd.trim_end(), want.to_str().unwrap());

    let r = f
        .run(RunRequest {
            argv: argv(&["pwd"]),
            ..Default::default()
        })
        .await?;
    assert_eq!(
        String::from_utf8(r.stdout)?.trim_end(),
        f.root.path().canonicalize()?.to_str().unwrap()
    );
    Ok(())
}

#[tokio::test]
async fn run_refuses_bad_cwd_and_argv() -> anyhow::Result<()> {
    let mut f = fixture().await?;
    std::os::unix::fs::symlink("/etc", f.root.path().join("etc-link"))?;
    std::fs::write(f.root.path().join("file"), b"x")?;
    for cwd in ["..", "../", "/", "/etc", "a/../../b", "etc-link", "sub\0x"] {
        let mut req = RunRequest {
            argv: argv(&["pwd"]),
            ..Default::default()
        };
        req.cwd = cwd.into();
        let err = f.run(req).await.expect_err(cwd);
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "cwd {cwd:?}: {err:?}"
        );
        assert_eq!(
            err.metadata()
                .get(proto::ERROR_CODE_METADATA_KEY)
                .and_then(|v| v.to_str().ok()),
            Some(proto::PATH_OUTSIDE_ROOT),
            "cwd {cwd:?}"
        );
    }
    let mut req = RunRequest {
        argv: argv(&["pwd"]),
        ..Default::default()
    };
    req.cwd = "missing".into();
    assert_eq!(
        f.run(req).await.expect_err("missing").code(),
        tonic::Code::NotFound
    );
    let mut req = RunRequest {
        argv: argv(&["pwd"]),
        ..Default::default()
    };
    req.cwd = "file".into();
    assert_eq!(
        f.run(req).await.expect_err("file").code(),
        tonic::Code::InvalidArgument
    );

    let err = f.run(RunRequest::default()).await.expect_err("empty argv");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = f
        .run(RunRequest {
            argv: argv(&["no-such-program-x"]),
            ..Default::default()
        })
        .await
        .expect_err("missing program");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let mut req = sh("true");
    req.env = HashMap::from([("A=B".to_owned(), "x".to_owned())]);
    assert_eq!(
        f.run(req).await.expect_err("bad env").code(),
        tonic::Code::InvalidArgument
    );
    Ok(())
}

#[tokio::test]
async fn a_run_its_client_abandons_kills_the_whole_group() -> anyhow::Result<()> {
    let mut f = fixture().await?;
    let req = sh("sleep 30 & echo $! > child.pid; wait");
    // The client gives up (its future is dropped, the call reset) while the
    // command still runs.
    let gave_up = tokio::time::timeout(Duration::from_millis(800), f.run(req)).await;
    assert!(gave_up.is_err(), "the run ended by itself: {gave_up:?}");
    let pid: u32 = std::fs::read_to_string(f.root.path().join("child.pid"))?
        .trim()
        .parse()?;
    tests::eventually(
        Duration::from_secs(5),
        "the abandoned run's background child to die",
        || async move { gone(pid).then_some(()) },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn run_timeout_kills_the_whole_group() -> anyhow::Result<()> {
    let mut f = fixture().await?;
    let mut req = sh("sleep 30 & echo $! > child.pid; echo started; wait");
    req.timeout_ms = 2000;
    let started = std::time::Instant::now();
    let r = f.run(req).await?;
    assert!(r.timed_out);
    assert_eq!(r.exit_code, -1);
    assert_eq!(r.signal, 9);
    assert_eq!(r.stdout, b"started\n", "output before the timeout is kept");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(r.duration_ms >= 2000);

    let pid: u32 = std::fs::read_to_string(f.root.path().join("child.pid"))?
        .trim()
        .parse()?;
    tests::eventually(
        Duration::from_secs(5),
        "the background child to die",
        || async move { gone(pid).then_some(()) },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn run_caps_output() -> anyhow::Result<()> {
    let mut f = fixture().await?;
    let mut req = sh("head -c 300000 /dev/zero; head -c 10 /dev/zero >&2");
    req.max_output_bytes = 1000;
    let r = f.run(req).await?;
    assert_eq!(r.exit_code, 0, "the process is not blocked by the cap");
    assert_eq!(r.stdout.len(), 1000);
    assert!(r.stdout_truncated);
    assert_eq!(r.stderr.len(), 10);
    assert!(!r.stderr_truncated);

    let mut req = sh("true");
    req.max_output_bytes = 1 << 40;
    assert_eq!(
        f.run(req).await.expect_err("huge cap").code(),
        tonic::Code::InvalidArgument
    );
    Ok(())
}

/// A process is gone once it no longer exists or is a zombie waiting for
/// whatever reaps orphans on this machine.
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}
