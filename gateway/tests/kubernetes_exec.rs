//! Exec into dev-server pods over the Kubernetes WebSocket protocol. The
//! mock service of the other Kubernetes tests cannot upgrade a connection,
//! so here kube-rs's real client talks to a small API server on loopback
//! that speaks the channel protocol like the kubelet does: stdin 0, stdout
//! 1, stderr 2, status 3, resize 4, and (v5) the close signal 255. It
//! checks the request (path, command, tty, container) and answers as a
//! shell would.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use clap::Parser;
use gateway::runtime::kubernetes::{KubernetesArgs, KubernetesRuntime, Settings};
use gateway::runtime::{ExecSpec, Runtime, ShellTarget};
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    k: KubernetesArgs,
}

/// What the fake API server saw.
#[derive(Default)]
struct Seen {
    queries: Vec<String>,
    protocol: Option<String>,
    sizes: Vec<(u16, u16)>,
    stdin: Vec<u8>,
    stdin_closed: bool,
}

#[derive(Clone)]
struct Server {
    seen: Arc<Mutex<Seen>>,
    /// The subprotocols this server speaks.
    protocols: &'static [&'static str],
}

async fn start(protocols: &'static [&'static str]) -> (Arc<KubernetesRuntime>, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let server = Server {
        seen: seen.clone(),
        protocols,
    };
    let app = Router::new()
        .route("/api/v1/namespaces/{ns}/pods", get(list_pods))
        .route("/api/v1/namespaces/{ns}/pods/{pod}/exec", get(exec))
        .with_state(server);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    gateway::tls::install_provider();
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let args = Args::parse_from(["test"]);
    let settings = Settings::new(
        &args.k,
        "proj-",
        "devgate/agent:test",
        b"a secret of enough length",
    )
    .unwrap();
    (Arc::new(KubernetesRuntime::new(client, settings)), seen)
}

async fn list_pods(Path(ns): Path<String>, RawQuery(q): RawQuery) -> impl IntoResponse {
    assert_eq!(ns, "proj-demo");
    let q = q.unwrap_or_default();
    assert!(q.contains("devgate.dev%2Fcontainer%3Dweb"), "{q}");
    axum::Json(
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
            {"metadata": {"name": "dev-web-old", "deletionTimestamp": "2026-01-01T00:00:00Z"},
             "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}},
            {"metadata": {"name": "dev-web-abc"},
             "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
        ]}),
    )
}

async fn exec(
    State(server): State<Server>,
    Path((ns, pod)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    ws: WebSocketUpgrade,
) -> impl IntoResponse {
    assert_eq!((ns.as_str(), pod.as_str()), ("proj-demo", "dev-web-abc"));
    server
        .seen
        .lock()
        .unwrap()
        .queries
        .push(q.unwrap_or_default());
    let offered = ws.protocols(server.protocols.iter().copied());
    offered.on_upgrade(move |socket| shell(socket, server))
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = vec![channel];
    v.extend_from_slice(data);
    Message::Binary(Bytes::from(v))
}

/// A pretend shell: echoes stdin, reports resizes, and on `exit N\r` (or,
/// with v5, when stdin is closed) writes a last line and ends with exit N.
async fn shell(mut socket: WebSocket, server: Server) {
    let protocol = socket
        .protocol()
        .and_then(|p| p.to_str().ok())
        .map(str::to_owned);
    let query = {
        let mut seen = server.seen.lock().unwrap();
        seen.protocol = protocol;
        seen.queries.last().cloned().unwrap_or_default()
    };
    // `sleep` never ends on its own: the client gives up and closes.
    if query.contains("command=sleep") {
        while let Some(Ok(_)) = socket.recv().await {}
        return;
    }
    // Without stdin a command runs to its end on its own.
    if !query.contains("stdin=true") {
        let argv: Vec<String> = query_pairs(&query)
            .into_iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v)
            .collect();
        let _ = socket.send(frame(2, b"to stderr\n")).await;
        end(
            &mut socket,
            0,
            format!("ran {}\n", argv.join(" ")).as_bytes(),
        )
        .await;
        return;
    }
    let mut line = Vec::new();
    while let Some(Ok(msg)) = socket.recv().await {
        let Message::Binary(b) = msg else { continue };
        let (channel, data) = (b[0], &b[1..]);
        match channel {
            0 => {
                server.seen.lock().unwrap().stdin.extend_from_slice(data);
                let _ = socket.send(frame(1, data)).await;
                line.extend_from_slice(data);
                if let Some(code) = line
                    .strip_prefix(b"exit ")
                    .and_then(|r| r.strip_suffix(b"\r"))
                {
                    let code: i32 = std::str::from_utf8(code).unwrap().parse().unwrap();
                    end(&mut socket, code, b"bye\r\n").await;
                    return;
                }
                if data.contains(&b'\r') {
                    line.clear();
                }
            }
            4 => {
                let size: serde_json::Value = serde_json::from_slice(data).unwrap();
                let (w, h) = (
                    size["Width"].as_u64().unwrap() as u16,
                    size["Height"].as_u64().unwrap() as u16,
                );
                server.seen.lock().unwrap().sizes.push((w, h));
                let _ = socket
                    .send(frame(1, format!("size {w}x{h}\r\n").as_bytes()))
                    .await;
            }
            255 if data == [0] => {
                server.seen.lock().unwrap().stdin_closed = true;
                // Output after stdin closed must still reach the client.
                let _ = socket.send(frame(2, b"warning: stdin closed\n")).await;
                end(&mut socket, 3, b"output after stdin closed\r\n").await;
                return;
            }
            _ => {}
        }
    }
}

async fn end(socket: &mut WebSocket, code: i32, last: &[u8]) {
    let _ = socket.send(frame(1, last)).await;
    let status = if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
               "message": format!("command terminated with non-zero exit code: {code}"),
               "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
    };
    let _ = socket
        .send(frame(3, &serde_json::to_vec(&status).unwrap()))
        .await;
    let _ = socket.send(Message::Close(None)).await;
}

fn target() -> ShellTarget {
    ShellTarget::PodExec {
        namespace: "proj-demo".into(),
        pod: "dev-web-abc".into(),
        container: "dev".into(),
    }
}

async fn read_until(output: &mut tokio::sync::mpsc::Receiver<Bytes>, want: &str, got: &mut String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !got.contains(want) {
        let chunk = tokio::time::timeout_at(deadline, output.recv())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} in {got:?}"))
            .unwrap_or_else(|| panic!("output ended before {want:?}: {got:?}"));
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            let v = percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned();
            (k.to_owned(), v)
        })
        .collect()
}

#[tokio::test]
async fn terminal_over_v5_resizes_and_reads_output_after_stdin_closes() {
    let (rt, seen) = start(&["v5.channel.k8s.io"]).await;
    let mut shell = rt
        .open_shell(&target(), vec![], 100, 30)
        .await
        .expect("open shell");
    let mut got = String::new();
    // The first size goes out before any keystroke.
    read_until(&mut shell.output, "size 100x30", &mut got).await;
    shell
        .input
        .send(Bytes::from_static(b"echo hi\r"))
        .await
        .unwrap();
    read_until(&mut shell.output, "echo hi", &mut got).await;
    shell.resize.send((120, 40)).await.unwrap();
    read_until(&mut shell.output, "size 120x40", &mut got).await;
    // The browser is gone for good: stdin closes; what the process writes
    // afterwards still arrives, then its exit code.
    drop(shell.input);
    read_until(&mut shell.output, "output after stdin closed", &mut got).await;
    assert_eq!(shell.exit.await.unwrap(), Some(3));

    let seen = seen.lock().unwrap();
    assert_eq!(seen.protocol.as_deref(), Some("v5.channel.k8s.io"));
    assert_eq!(seen.sizes, vec![(100, 30), (120, 40)]);
    assert_eq!(seen.stdin, b"echo hi\r");
    assert!(seen.stdin_closed);
    let q = query_pairs(&seen.queries[0]);
    for want in [
        ("container", "dev"),
        ("tty", "true"),
        ("stdin", "true"),
        ("stdout", "true"),
    ] {
        assert!(
            q.contains(&(want.0.into(), want.1.into())),
            "{want:?} not in {q:?}"
        );
    }
    assert!(
        !q.iter().any(|(k, v)| k == "stderr" && v == "true"),
        "a tty merges stderr: {q:?}"
    );
    let command: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(command[..2], ["sh", "-c"]);
    assert!(command[2].contains("bash -l"), "{command:?}");
}

#[tokio::test]
async fn terminal_falls_back_to_v4_and_carries_the_exit_code() {
    let (rt, seen) = start(&["v4.channel.k8s.io"]).await;
    let mut shell = rt
        .open_shell(&target(), vec!["bash".into()], 80, 24)
        .await
        .expect("open shell");
    let mut got = String::new();
    read_until(&mut shell.output, "size 80x24", &mut got).await;
    shell
        .input
        .send(Bytes::from_static(b"exit 7\r"))
        .await
        .unwrap();
    read_until(&mut shell.output, "bye", &mut got).await;
    assert_eq!(shell.exit.await.unwrap(), Some(7));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.protocol.as_deref(), Some("v4.channel.k8s.io"));
    let q = query_pairs(&seen.queries[0]);
    assert!(q.contains(&("command".into(), "bash".into())), "{q:?}");
}

#[tokio::test]
async fn container_shell_picks_a_ready_pod_that_is_not_terminating() {
    let (rt, _seen) = start(&["v5.channel.k8s.io"]).await;
    let target = rt
        .container_shell("demo", "web", &BTreeMap::new())
        .await
        .expect("shell target");
    assert_eq!(
        target,
        ShellTarget::PodExec {
            namespace: "proj-demo".into(),
            pod: "dev-web-abc".into(),
            container: "dev".into()
        }
    );
}

#[tokio::test]
async fn one_shot_exec_in_a_container_sends_cwd_and_env() {
    let (rt, seen) = start(&["v5.channel.k8s.io"]).await;
    let spec = ExecSpec {
        argv: vec!["cat".into(), "-".into()],
        cwd: "src".into(),
        env: BTreeMap::from([("MODE".to_owned(), "test".to_owned())]),
        stdin: Vec::new(),
        timeout_ms: 10_000,
        max_output_bytes: 0,
    };
    let out = rt.container_exec("demo", "web", spec).await.expect("exec");
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ran sh -c cd -- \"$0\" && exec \"$@\" /app/web/src env MODE=test cat -\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to stderr\n");
    assert!(!out.timed_out);
    let seen = seen.lock().unwrap();
    let q = query_pairs(&seen.queries[0]);
    let command: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        command,
        [
            "sh",
            "-c",
            "cd -- \"$0\" && exec \"$@\"",
            "/app/web/src",
            "env",
            "MODE=test",
            "cat",
            "-"
        ]
    );
    assert!(
        q.contains(&("tty".into(), "false".into())) || !q.iter().any(|(k, _)| k == "tty"),
        "{q:?}"
    );
    assert!(q.contains(&("stderr".into(), "true".into())), "{q:?}");
    assert!(
        !q.contains(&("stdin".into(), "true".into())),
        "no input, no stdin: {q:?}"
    );
}

#[tokio::test]
async fn one_shot_exec_with_stdin_reads_output_written_after_stdin_closes() {
    let (rt, _seen) = start(&["v5.channel.k8s.io"]).await;
    // stdin without `exit`: the pretend shell ends only on the close
    // signal, after writing to stderr and stdout.
    let spec = ExecSpec {
        argv: vec!["sh".into()],
        stdin: b"true\r".to_vec(),
        timeout_ms: 10_000,
        ..ExecSpec::default()
    };
    let out = rt.container_exec("demo", "web", spec).await.expect("exec");
    assert_eq!(out.exit_code, 3);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "warning: stdin closed\n"
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("output after stdin closed\r\n"));
}

#[tokio::test]
async fn one_shot_exec_past_its_timeout_is_reported_as_timed_out() {
    let (rt, _seen) = start(&["v5.channel.k8s.io"]).await;
    let spec = ExecSpec {
        argv: vec!["sleep".into(), "1000".into()],
        timeout_ms: 200,
        ..ExecSpec::default()
    };
    let started = std::time::Instant::now();
    let out = rt.container_exec("demo", "web", spec).await.expect("exec");
    assert!(out.timed_out, "{out:?}");
    assert_eq!(out.exit_code, -1);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "gave up near the deadline"
    );
}
