//! The terminal WebSocket on the real gateway and agent: echo, resize
//! (`stty size`), the exit frame, reattach with replay and with `?offset=`
//! (nothing duplicated, nothing lost), a shell inside a container, unknown
//! sessions, and a terminal waking a hibernated project.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tests::Fetch as _;
use tests::gateway::Gateway;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const T: Duration = Duration::from_secs(20);

/// Opens the terminal WebSocket with `query` (the token is added).
async fn connect(gw: &Gateway, project: &str, query: &str) -> Result<Ws> {
    let url = format!(
        "ws://{}/api/projects/{project}/terminal?token={}&{query}",
        gw.addr,
        gw.token(&[project])
    );
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .context("terminal upgrade")?;
    Ok(ws)
}

/// Reads the first frame, which must be the session frame.
async fn session(ws: &mut Ws) -> Result<Value> {
    match tokio::time::timeout(T, ws.next()).await? {
        Some(Ok(Message::Text(t))) => {
            let v: Value = serde_json::from_str(&t)?;
            anyhow::ensure!(v["type"] == "session", "first frame {v}");
            Ok(v)
        }
        other => bail!("expected the session frame, got {other:?}"),
    }
}

/// What came over a terminal socket.
#[derive(Default, Debug)]
struct Seen {
    bytes: Vec<u8>,
    exit: Option<i64>,
    closed: bool,
}

impl Seen {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Reads frames until `done` says so (or the socket ends), within the timeout.
async fn read_until(ws: &mut Ws, seen: &mut Seen, done: impl Fn(&Seen) -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + T;
    while !done(seen) {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(m) => m,
            Err(_) => bail!("timed out; seen so far: {:?}", seen.text()),
        };
        match msg {
            Some(Ok(Message::Binary(b))) => seen.bytes.extend_from_slice(&b),
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t)?;
                if v["type"] == "exit" {
                    seen.exit = v["code"].as_i64();
                }
            }
            Some(Ok(Message::Close(_))) | None => {
                seen.closed = true;
                return Ok(());
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                seen.closed = true;
                return Err(e.into());
            }
        }
    }
    Ok(())
}

async fn keys(ws: &mut Ws, s: &str) -> Result<()> {
    ws.send(Message::binary(s.as_bytes().to_vec())).await?;
    Ok(())
}

#[tokio::test]
async fn echo_resize_and_exit_code() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("term").await.unwrap();
    let mut ws = connect(&gw, "term", "cols=80&rows=24").await.unwrap();
    let hello = session(&mut ws).await.unwrap();
    assert!(
        !hello["id"].as_str().unwrap_or_default().is_empty(),
        "{hello}"
    );
    assert_eq!(hello["offset"], 0);

    let mut seen = Seen::default();
    // The shell computes the answer, so the match cannot be the echo of the input.
    keys(&mut ws, "echo hi-$((40+2))\n").await.unwrap();
    read_until(&mut ws, &mut seen, |s| s.text().contains("hi-42"))
        .await
        .unwrap();

    // The working directory is the project root.
    keys(&mut ws, "pwd\n").await.unwrap();
    let root = gw.project_dir("term").canonicalize().unwrap();
    let root = root.to_string_lossy().into_owned();
    read_until(&mut ws, &mut seen, |s| {
        s.text().contains(&format!("{root}\r\n"))
    })
    .await
    .unwrap();

    ws.send(Message::text(
        json!({"type": "resize", "cols": 100, "rows": 30}).to_string(),
    ))
    .await
    .unwrap();
    keys(&mut ws, "stty size\n").await.unwrap();
    read_until(&mut ws, &mut seen, |s| s.text().contains("30 100"))
        .await
        .unwrap();

    keys(&mut ws, "exit 7\n").await.unwrap();
    read_until(&mut ws, &mut seen, |s| s.closed).await.unwrap();
    assert_eq!(
        seen.exit,
        Some(7),
        "exit frame before the close; output {:?}",
        seen.text()
    );
}

/// `1\r\n2\r\n...n\r\n`: what `seq 1 n` shows through a PTY.
fn seq_text(n: u32) -> Vec<u8> {
    (1..=n)
        .map(|i| format!("{i}\r\n"))
        .collect::<String>()
        .into_bytes()
}

#[tokio::test]
async fn reattach_with_offset_and_with_replay_loses_and_repeats_nothing() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("re").await.unwrap();
    // ~170 KB of output, then the shell waits for a line.
    let n = 30_000;
    let cmd = format!("stty -echo; seq 1 {n}; read x; echo end-$x");
    let q = format!("cmd={}", urlencode(&cmd));
    let expected = seq_text(n);

    // First client: reads part of the output, then drops mid-stream.
    let mut a = connect(&gw, "re", &q).await.unwrap();
    let id = session(&mut a).await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut first = Seen::default();
    read_until(&mut a, &mut first, |s| s.bytes.len() >= 50_000)
        .await
        .unwrap();
    drop(a);
    let had = first.bytes.len();
    assert!(
        had < expected.len(),
        "the first client should not have everything"
    );

    // Second client: names the bytes it has and gets exactly the rest.
    let mut b = connect(&gw, "re", &format!("session={id}&offset={had}"))
        .await
        .unwrap();
    let hello = session(&mut b).await.unwrap();
    assert_eq!(
        (
            hello["id"].as_str(),
            hello["offset"].as_u64(),
            hello["truncated"].as_bool()
        ),
        (Some(id.as_str()), Some(had as u64), Some(false))
    );
    let mut rest = Seen::default();
    let need = expected.len() - had;
    read_until(&mut b, &mut rest, |s| s.bytes.len() >= need)
        .await
        .unwrap();
    let mut joined = first.bytes.clone();
    joined.extend_from_slice(&rest.bytes);
    assert_eq!(joined.len(), expected.len(), "no byte twice, none missing");
    assert!(
        joined == expected,
        "the output joined across the reattach is the command's output"
    );
    drop(b);

    // Third client, no offset: the replay starts from the oldest byte held,
    // which here is the first one (the ring holds at least 64 KiB; this is 170 KB).
    let mut c = connect(&gw, "re", &format!("session={id}")).await.unwrap();
    let hello = session(&mut c).await.unwrap();
    assert_eq!(hello["offset"], 0);
    let mut replay = Seen::default();
    read_until(&mut c, &mut replay, |s| s.bytes.len() >= expected.len())
        .await
        .unwrap();
    assert!(
        replay.bytes[..expected.len()] == expected[..],
        "replay is the whole output, in order"
    );

    // The same shell is still there: it takes input and exits with code 0.
    keys(&mut c, "again\n").await.unwrap();
    read_until(&mut c, &mut replay, |s| s.closed).await.unwrap();
    assert!(
        replay.text().contains("end-again"),
        "{:?}",
        &replay.text()[expected.len()..]
    );
    assert_eq!(replay.exit, Some(0));
}

#[tokio::test]
async fn shell_inside_a_container_and_unknown_sessions() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("ct").await.unwrap();
    let r = gw
        .post("/api/projects/ct/containers")
        .json(&json!({"name": "web", "port": tests::free_port(), "start": "sleep 600", "env": {"GREETING": "from-web"}}))
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());

    // A stopped container has no shell.
    let url = format!(
        "ws://{}/api/projects/ct/terminal?token={}&container=web",
        gw.addr,
        gw.admin_token()
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 409)
        }
        other => panic!("expected 409, got {:?}", other.map(|_| ())),
    }

    let r = gw
        .post("/api/projects/ct/containers/web/start")
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let mut ws = connect(&gw, "ct", "container=web").await.unwrap();
    let id = session(&mut ws).await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A container session's id names its container, so a reattach finds
    // the agent that runs it (on Kubernetes, the dev pod's) from the id.
    assert!(id.starts_with("web_"), "{id}");
    keys(
        &mut ws,
        "echo \"[$(basename \"$PWD\")|$GREETING|${PORT:+port}]\"\n",
    )
    .await
    .unwrap();
    let mut seen = Seen::default();
    read_until(&mut ws, &mut seen, |s| {
        s.text().contains("[web|from-web|port]")
    })
    .await
    .unwrap();
    drop(ws);
    // Reattached by id alone (no `container`), from the bytes it had: the
    // same shell, nothing replayed.
    let had = seen.bytes.len();
    let mut ws = connect(&gw, "ct", &format!("session={id}&offset={had}"))
        .await
        .unwrap();
    let hello = session(&mut ws).await.unwrap();
    assert_eq!(
        (hello["id"].as_str(), hello["offset"].as_u64()),
        (Some(id.as_str()), Some(had as u64))
    );
    keys(&mut ws, "echo again-$((6*7))\n").await.unwrap();
    let mut more = Seen::default();
    read_until(&mut ws, &mut more, |s| s.text().contains("again-42\r\n"))
        .await
        .unwrap();
    assert!(
        !more.text().contains("[web|from-web|port]"),
        "nothing before the offset again: {:?}",
        more.text()
    );
    drop(ws);

    // Unknown sessions and bad parameters are HTTP errors, before any upgrade.
    for (query, status) in [
        ("session=nosuchsession", 404),
        ("session=web_nosuchsession", 404),
        ("session=nosuch_session", 404),
        ("session=Bad-_x", 400),
        ("cols=0", 400),
        ("container=Bad_Name", 400),
    ] {
        let url = format!(
            "ws://{}/api/projects/ct/terminal?token={}&{query}",
            gw.addr,
            gw.admin_token()
        );
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), status, "{query}")
            }
            other => panic!("{query}: expected {status}, got {:?}", other.map(|_| ())),
        }
    }
    // Without a token: 401; with a valid token for another project: 403.
    for (token, status) in [(String::new(), 401), (gw.token(&["other"]), 403)] {
        let url = format!("ws://{}/api/projects/ct/terminal?token={token}", gw.addr);
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), status)
            }
            other => panic!("expected {status}, got {:?}", other.map(|_| ())),
        }
    }
}

#[tokio::test]
async fn a_terminal_wakes_a_hibernated_project() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("sleepy").await.unwrap();
    let r = gw
        .put("/api/projects/sleepy/files/note.txt")
        .body("kept across hibernation")
        .fetch()
        .await;
    assert!(r.status().is_success());
    let r = gw.post("/api/projects/sleepy/hibernate").fetch().await;
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let p = gw.project("sleepy").await.unwrap();
    assert_eq!(p["status"], "hibernated");

    let mut ws = connect(&gw, "sleepy", "").await.unwrap();
    session(&mut ws).await.unwrap();
    keys(&mut ws, "cat note.txt; echo\n").await.unwrap();
    let mut seen = Seen::default();
    read_until(&mut ws, &mut seen, |s| {
        s.text().contains("kept across hibernation")
    })
    .await
    .unwrap();
    let p = gw.project("sleepy").await.unwrap();
    assert_eq!(p["status"], "active");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The agent's limit on running terminal sessions (here 1, through the
/// environment the local runtime's agents inherit) answers 409 before any
/// upgrade.
#[tokio::test]
async fn a_terminal_beyond_the_agents_limit_is_409() {
    let gw = Gateway::builder()
        .env("AGENT_MAX_PTY_SESSIONS", "1")
        .start()
        .await
        .unwrap();
    gw.open_project("lim").await.unwrap();
    let mut ws = connect(&gw, "lim", "").await.unwrap();
    session(&mut ws).await.unwrap();
    let url = format!(
        "ws://{}/api/projects/lim/terminal?token={}",
        gw.addr,
        gw.token(&["lim"])
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 409);
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("\"conflict\""), "{body}");
        }
        other => panic!("expected 409, got {:?}", other.map(|_| ())),
    }
}
