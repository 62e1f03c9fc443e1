//! The agent starts, answers health checks, and refuses calls without its token.

use proto::v1::filesystem_client::FilesystemClient;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[tokio::test]
async fn health_and_token() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let agent = tests::Agent::start(root.path(), &[]).await?;
    let ch = agent.channel().await?;

    let resp = HealthClient::new(ch.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    assert_eq!(resp.into_inner().status, 1, "SERVING");

    let mut fs = FilesystemClient::new(ch);
    let err = fs
        .stat(proto::v1::StatRequest {
            path: String::new(),
        })
        .await
        .expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = fs
        .stat(tests::authed(
            proto::v1::StatRequest {
                path: String::new(),
            },
            "wrong",
        ))
        .await
        .expect_err("wrong token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    Ok(())
}

/// Runs the agent binary with `args` and no AGENT_* variables from outside.
fn agent_cli(args: &[&str], token: Option<&str>) -> std::process::Output {
    let mut cmd = std::process::Command::new(tests::bin("agent"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("AGENT_") {
            cmd.env_remove(k);
        }
    }
    if let Some(t) = token {
        cmd.env("AGENT_TOKEN", t);
    }
    cmd.output().expect("run agent")
}

#[test]
fn help_lists_the_flags() {
    let out = agent_cli(&["--help"], None);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--root",
        "--listen",
        "--socket",
        "--token",
        "--token-file",
        "--grace-secs",
        "--init",
        "AGENT_ROOT",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn bad_flags_and_config_give_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let sock = dir.path().join("s.sock");
    let sock = sock.to_str().unwrap();
    let cases: &[(&[&str], Option<&str>, &str)] = &[
        (&["--bogus"], Some("t"), "--bogus"),
        (&["--grace-secs", "soon", "--root", root], Some("t"), "soon"),
        (&["--log-format", "xml", "--root", root], Some("t"), "xml"),
        (&["--listen", "not-an-address"], Some("t"), "not-an-address"),
        (&["--root", root, "--socket", sock], None, "token"),
        (&["--root", root, "--socket", sock], Some(""), "token"),
        (
            &[
                "--root",
                root,
                "--socket",
                sock,
                "--token-file",
                "/nonexistent/token",
            ],
            None,
            "token file",
        ),
        (
            &["--root", "/nonexistent/root", "--socket", sock],
            Some("t"),
            "cannot open root",
        ),
        (
            &["--root", root, "--socket", "/nonexistent/dir/s.sock"],
            Some("t"),
            "cannot listen",
        ),
    ];
    for (args, token, needle) in cases {
        let out = agent_cli(args, *token);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.contains(" INFO ")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: not one line:\n{stderr}");
        assert!(lines[0].starts_with("agent: "), "{args:?}: {stderr}");
        assert!(
            lines[0].contains(needle),
            "{args:?}: {stderr} lacks {needle}"
        );
    }
}

#[tokio::test]
async fn token_from_a_file_and_tcp_listener() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("token"),
        "file-token\nignored second line\n",
    )?;
    let port = tests::free_port();
    let mut cmd = std::process::Command::new(tests::bin("agent"));
    cmd.arg("--root")
        .arg(dir.path())
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--token-file")
        .arg(dir.path().join("token"))
        .env_remove("AGENT_TOKEN")
        .env_remove("AGENT_SOCKET")
        .env("RUST_LOG", "warn");
    let _agent = tests::Proc(cmd.spawn()?);
    let endpoint = format!("http://127.0.0.1:{port}");
    let channel = tests::eventually(
        std::time::Duration::from_secs(20),
        "the agent on TCP",
        || {
            let endpoint = endpoint.clone();
            async move {
                tonic::transport::Endpoint::try_from(endpoint)
                    .ok()?
                    .connect()
                    .await
                    .ok()
            }
        },
    )
    .await?;
    let mut fs = FilesystemClient::new(channel);
    let entry = fs
        .stat(tests::authed(
            proto::v1::StatRequest {
                path: "token".into(),
            },
            "file-token",
        ))
        .await?
        .into_inner()
        .entry
        .expect("entry");
    assert_eq!(entry.path, "token");
    let err = fs
        .stat(tests::authed(
            proto::v1::StatRequest {
                path: "token".into(),
            },
            "ignored second line",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    Ok(())
}

/// Logs written to a pipe (a log file, `kubectl logs`) are plain text: no
/// colour escape codes around the time, the level or the fields.
#[test]
fn logs_to_a_pipe_carry_no_escape_codes() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(tests::bin("agent"));
    for (k, _) in std::env::vars() {
        if k.starts_with("AGENT_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("--root")
        .arg(dir.path())
        .arg("--socket")
        .arg(dir.path().join("agent.sock"))
        .env("AGENT_TOKEN", "t")
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let _agent = tests::Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if line.contains("agent listening") {
                let _ = tx.send(line);
                return;
            }
        }
    });
    let line = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the agent logs that it listens");
    assert!(line.contains("INFO"), "{line:?}");
    assert!(!line.contains('\x1b'), "escape codes in {line:?}");
}
