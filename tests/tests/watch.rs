//! The watch WebSocket on the real gateway and agent: events for writes made
//! through the API and by processes in the project, in the contract's shape,
//! and the HTTP errors before the upgrade.

use std::time::Duration;

use anyhow::{Result, bail};
use futures::StreamExt as _;
use serde_json::{Value, json};
use tests::Fetch as _;
use tests::gateway::Gateway;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(gw: &Gateway, project: &str) -> Result<Ws> {
    let url = format!(
        "ws://{}/api/projects/{project}/watch?token={}",
        gw.addr,
        gw.token(&[project])
    );
    Ok(tokio_tungstenite::connect_async(url).await?.0)
}

/// Reads events until one matches, within 10 s; answers it.
async fn wait_for(ws: &mut Ws, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(m) => m,
            Err(_) => bail!("no event for {what}; saw {seen:?}"),
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t)?;
                // Every frame has the contract's shape.
                let kind = v["kind"].as_str().unwrap_or_default();
                assert!(
                    ["created", "modified", "removed", "renamed"].contains(&kind),
                    "{v}"
                );
                assert!(v["path"].is_string(), "{v}");
                assert_eq!(v.get("to").is_some(), kind == "renamed", "{v}");
                if pred(&v) {
                    return Ok(v);
                }
                seen.push(v);
            }
            Some(Ok(_)) => {}
            other => bail!("watch ended while waiting for {what}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn events_from_the_api_and_from_processes() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("w").await.unwrap();
    let mut ws = connect(&gw, "w").await.unwrap();

    // A write through the API.
    let r = gw
        .put("/api/projects/w/files/src/app.js")
        .body("console.log(1)")
        .fetch()
        .await;
    assert!(r.status().is_success());
    wait_for(&mut ws, "the API write", |v| {
        v["path"] == "src/app.js" && (v["kind"] == "created" || v["kind"] == "modified")
    })
    .await
    .unwrap();

    // A process in the project writes, renames and removes files.
    let run = |argv: Value| {
        gw.post("/api/projects/w/exec")
            .json(&json!({ "argv": argv }))
            .send()
    };
    let r = run(json!(["sh", "-c", "echo hi > from-proc.txt"]))
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["exit_code"], 0);
    wait_for(&mut ws, "the process's write", |v| {
        v["path"] == "from-proc.txt"
    })
    .await
    .unwrap();

    let r = run(json!(["mv", "from-proc.txt", "moved.txt"]))
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["exit_code"], 0);
    // A rename inside the project is one `renamed` event, path → to.
    wait_for(&mut ws, "the rename", |v| {
        v["kind"] == "renamed" && v["path"] == "from-proc.txt" && v["to"] == "moved.txt"
    })
    .await
    .unwrap();

    let r = run(json!(["rm", "moved.txt"])).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["exit_code"], 0);
    wait_for(&mut ws, "the removal", |v| {
        v["path"] == "moved.txt" && v["kind"] == "removed"
    })
    .await
    .unwrap();

    // A deletion through the API.
    let r = gw.delete("/api/projects/w/files/src/app.js").fetch().await;
    assert_eq!(r.status().as_u16(), 204);
    wait_for(&mut ws, "the API delete", |v| {
        v["path"] == "src/app.js" && v["kind"] == "removed"
    })
    .await
    .unwrap();

    // A second watcher sees the same changes independently.
    let mut other = connect(&gw, "w").await.unwrap();
    let r = gw
        .put("/api/projects/w/files/second.txt")
        .body("2")
        .fetch()
        .await;
    assert!(r.status().is_success());
    wait_for(&mut other, "the write, second watcher", |v| {
        v["path"] == "second.txt"
    })
    .await
    .unwrap();
    wait_for(&mut ws, "the write, first watcher", |v| {
        v["path"] == "second.txt"
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn errors_come_before_the_upgrade() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("w2").await.unwrap();
    let cases = [
        (format!("ws://{}/api/projects/w2/watch", gw.addr), 401),
        (
            format!(
                "ws://{}/api/projects/w2/watch?token={}",
                gw.addr,
                gw.token(&["other"])
            ),
            403,
        ),
        (
            format!(
                "ws://{}/api/projects/nope/watch?token={}",
                gw.addr,
                gw.admin_token()
            ),
            404,
        ),
    ];
    for (url, status) in cases {
        match tokio_tungstenite::connect_async(url.clone()).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), status, "{url}")
            }
            other => panic!("{url}: expected {status}, got {:?}", other.map(|_| ())),
        }
    }
}

/// A browser cannot set `Authorization` on a WebSocket; the demo page offers
/// the subprotocols `devgate, devgate.bearer.<token>` instead of putting the
/// token in the URL. The gateway takes the token from the offer and picks
/// `devgate` (a browser fails a socket whose answer picks none it offered).
#[tokio::test]
async fn token_in_the_subprotocol_offer() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let gw = Gateway::start().await.unwrap();
    gw.open_project("w3").await.unwrap();
    let request = |token: String| {
        let mut req = format!("ws://{}/api/projects/w3/watch", gw.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            format!("devgate, devgate.bearer.{token}").parse().unwrap(),
        );
        req
    };
    let (mut ws, resp) = tokio_tungstenite::connect_async(request(gw.token(&["w3"])))
        .await
        .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "devgate");
    let r = gw
        .put("/api/projects/w3/files/seen.txt")
        .body("x")
        .fetch()
        .await;
    assert!(r.status().is_success());
    wait_for(&mut ws, "the write", |v| v["path"] == "seen.txt")
        .await
        .unwrap();

    // A bad token, or one for another project, in the offer: the same
    // answers as anywhere else, before the upgrade.
    for (token, status) in [
        ("not-a-jwt".to_owned(), 401),
        (gw.token_with("u", &["w3"], 1), 401),
        (gw.token(&["other"]), 403),
    ] {
        match tokio_tungstenite::connect_async(request(token)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), status)
            }
            other => panic!("expected {status}, got {:?}", other.map(|_| ())),
        }
    }
}
