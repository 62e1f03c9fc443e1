//! The preview proxy on the real gateway, with real dev servers (a small
//! stdlib-only Python server started as the container's command): the
//! private cookie flow (401 → /__preview/auth → cookie → 200), public
//! previews, `X-Forwarded-*`, bodies both ways, WebSocket through a preview,
//! the `{port}-` form, stopped 503, unknown 404, the wake of a hibernated
//! project on a preview request, bytes sent along with a WebSocket upgrade
//! on either side, and the keep-alive pool to dev servers
//! (connections reused, answers without a body handing theirs back, a
//! connection the dev server closed while idle replaced without an error).

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tests::Fetch as _;
use tests::devserver::{SERVER, browser, dev_server, dev_server_with, url, wait_status};
use tests::expect_error;
use tests::gateway::Gateway;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

#[tokio::test]
async fn private_preview_cookie_flow_and_forwarded_headers() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("demo").await.unwrap();
    gw.open_project("other").await.unwrap();
    dev_server(&gw, "demo", "web", false).await.unwrap();
    let host = "web.demo.localhost";
    let b = browser(&gw, &[host]);

    // Without the cookie: 401, whatever the path.
    for path in ["/", "/some/page?x=1"] {
        let r = b.get(url(&gw, host, path)).fetch().await;
        assert_eq!(r.status().as_u16(), 401, "{path}");
        assert!(r.text().await.unwrap().contains("private"));
    }
    // Bad tokens on the auth path: 401; another project's token: 403; no cookie set.
    for (token, status) in [("garbage", 401), (gw.token(&["other"]).as_str(), 403)] {
        let r = b
            .get(url(&gw, host, &format!("/__preview/auth?token={token}")))
            .fetch()
            .await;
        assert_eq!(r.status().as_u16(), status);
        assert!(r.headers().get("set-cookie").is_none());
    }
    // The API token itself is no cookie.
    let raw = format!("devgate_preview={}", gw.token(&["demo"]));
    assert_eq!(
        b.get(url(&gw, host, "/"))
            .header("cookie", &raw)
            .fetch()
            .await
            .status()
            .as_u16(),
        401
    );

    // The cookie flow.
    let token = gw.token(&["demo"]);
    let r = b
        .get(url(&gw, host, &format!("/__preview/auth?token={token}")))
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.starts_with("devgate_preview="), "{set}");
    for attr in [
        "HttpOnly",
        "Path=/",
        "Secure",
        "SameSite=None",
        "Partitioned",
        "Max-Age=",
    ] {
        assert!(set.contains(attr), "{attr} missing in {set}");
    }
    let value = set.split(';').next().unwrap().to_owned();
    assert!(
        !value.contains(&token),
        "the cookie is a minted token, not the bearer's"
    );

    let r = wait_status(
        &b,
        &url(&gw, host, "/some/page?x=1"),
        Some(&format!("theirs=1; {value}")),
        200,
    )
    .await;
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["name"], "web");
    assert_eq!(seen["path"], "/some/page?x=1");
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-host"], format!("{host}:{}", gw.addr.port()));
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["host"], format!("{host}:{}", gw.addr.port()));
    // The dev server keeps its own cookies and never sees the gateway's.
    assert_eq!(h["cookie"], "theirs=1", "{h}");

    // The cookie is bound to its host: another container of the project
    // needs its own.
    dev_server(&gw, "demo", "api", false).await.unwrap();
    let b2 = browser(&gw, &["api.demo.localhost"]);
    let r = b2
        .get(url(&gw, "api.demo.localhost", "/"))
        .header("cookie", &value)
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 401);

    // Product backends may use a bearer token instead; it is not forwarded.
    let r = b.get(url(&gw, host, "/")).bearer_auth(&token).fetch().await;
    assert_eq!(r.status().as_u16(), 200);
    let seen: Value = r.json().await.unwrap();
    assert!(seen["headers"].get("authorization").is_none());

    // Bodies go both ways, streamed: a 3 MiB POST comes back intact.
    let body: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let r = b
        .post(url(&gw, host, "/echo"))
        .header("cookie", &value)
        .body(body.clone())
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.bytes().await.unwrap() == body);

    // The proxied bytes are counted.
    let metrics = gw.metrics().await.unwrap();
    assert!(
        metrics.contains("gateway_preview_proxied_bytes_total{direction=\"downstream\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn public_preview_websocket_port_form_stopped_and_unknown() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("demo").await.unwrap();
    // Another port the container declares, where its server listens too.
    let other_port = tests::free_port();
    dev_server_with(&gw, "demo", "pub", true, SERVER, &[other_port])
        .await
        .unwrap();
    let host = "pub.demo.localhost";
    let b = browser(
        &gw,
        &[
            host,
            "nope.demo.localhost",
            "pub.nope.localhost",
            "x.y.z.localhost",
        ],
    );

    // Public: no cookie needed; host names are case-insensitive.
    let r = wait_status(&b, &url(&gw, host, "/"), None, 200).await;
    assert_eq!(r.json::<Value>().await.unwrap()["name"], "pub");
    let r = b
        .get(url(&gw, host, "/"))
        .header("host", format!("PUB.Demo.LOCALHOST:{}", gw.addr.port()))
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 200);

    // A WebSocket through the preview (what Vite's HMR does).
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut ws, resp) =
        tokio_tungstenite::client_async(format!("ws://{host}:{}/hmr", gw.addr.port()), stream)
            .await
            .unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    for i in 0..3 {
        ws.send(Message::text(format!("hello-{i}"))).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), format!("echo:hello-{i}")),
            other => panic!("expected the echo, got {other:?}"),
        }
    }
    let big = vec![7u8; 200_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
    {
        Some(Ok(Message::Binary(d))) => assert!(d.len() == big.len() + 5 && d[5..] == big[..]),
        other => panic!("expected the binary echo, got {other:?}"),
    }
    ws.close(None).await.unwrap();

    // `{port}-{container}` reaches another port the container declared.
    let port_host = format!("{other_port}-pub.demo.localhost");
    let b3 = browser(&gw, &[port_host.as_str()]);
    let r = wait_status(&b3, &url(&gw, &port_host, "/"), None, 200).await;
    assert_eq!(r.json::<Value>().await.unwrap()["port"], other_port);

    // Unknown container, unknown project: 404.
    for h in ["nope.demo.localhost", "pub.nope.localhost"] {
        let r = b.get(url(&gw, h, "/")).fetch().await;
        assert_eq!(r.status().as_u16(), 404, "{h}");
    }
    // Not a preview host (three labels before the domain): the API's 404.
    let r = b
        .get(url(&gw, "x.y.z.localhost", "/api/nothing"))
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 404);
    // The API answers JSON; the preview's own 404 is an HTML page.
    let v: Value = r.json().await.expect("a JSON error, not the preview page");
    assert_eq!(v["error"]["code"], "not_found");

    // Stopped: 503, a short page saying so for a browser, the contract's
    // JSON error for anything else.
    let r = gw
        .post("/api/projects/demo/containers/pub/stop")
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 200);
    let r = b
        .get(url(&gw, host, "/"))
        .header("accept", "text/html,application/xhtml+xml")
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 503);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(r.text().await.unwrap().contains("not running"));
    let r = b.get(url(&gw, host, "/")).fetch().await;
    expect_error(r, 503, "unavailable").await;
}

/// The proxy takes its sockets back out of the upgraded connections: what
/// either side sent in the same write as its upgrade half (read by the
/// proxy along with the headers) must still arrive, first and in order.
#[tokio::test]
async fn bytes_sent_along_with_a_websocket_upgrade_arrive_on_both_sides() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("demo").await.unwrap();
    dev_server(&gw, "demo", "pub", true).await.unwrap();
    let host = "pub.demo.localhost";
    let b = browser(&gw, &[host]);
    wait_status(&b, &url(&gw, host, "/"), None, 200).await;

    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut out = format!(
        "GET /hmr?greet HTTP/1.1\r\nHost: {host}:{}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        gw.addr.port()
    )
    .into_bytes();
    // A masked text frame `early`, in the same write as the request.
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    out.extend([0x81, 0x80 | 5]);
    out.extend(mask);
    out.extend(b"early".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&out).await.unwrap();

    let mut head = Vec::new();
    let end = loop {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed before the 101: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    let mut ws = tokio_tungstenite::WebSocketStream::from_partially_read(
        s,
        head[end..].to_vec(),
        Role::Client,
        None,
    )
    .await;
    // The greeting, the early frame's echo, then a frame sent now.
    for (send, want) in [
        (None, "hello"),
        (None, "echo:early"),
        (Some("later"), "echo:later"),
    ] {
        if let Some(text) = send {
            ws.send(Message::text(text)).await.unwrap();
        }
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), want),
            other => panic!("expected {want}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_preview_request_wakes_a_hibernated_project() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("nap").await.unwrap();
    dev_server(&gw, "nap", "web", false).await.unwrap();
    let host = "web.nap.localhost";
    let b = browser(&gw, &[host]);
    let r = b
        .get(url(
            &gw,
            host,
            &format!("/__preview/auth?token={}", gw.token(&["nap"])),
        ))
        .fetch()
        .await;
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    wait_status(&b, &url(&gw, host, "/"), Some(&cookie), 200).await;

    let r = gw.post("/api/projects/nap/hibernate").fetch().await;
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let p = gw.project("nap").await.unwrap();
    assert_eq!(p["status"], "hibernated");

    // Unauthenticated requests do not wake anything.
    let r = b.get(url(&gw, host, "/")).fetch().await;
    assert_eq!(r.status().as_u16(), 401);
    let p = gw.project("nap").await.unwrap();
    assert_eq!(p["status"], "hibernated");

    // One request with the cookie: restored, dev server started, page served.
    let r = b
        .get(url(&gw, host, "/woken"))
        .header("cookie", &cookie)
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["path"], "/woken");
    let p = gw.project("nap").await.unwrap();
    assert_eq!(p["status"], "active");
    let c = &p["containers"].as_array().unwrap()[0];
    assert_eq!(c["status"], "running", "{p}");
}

/// A dev server that names the connection each answer went out on (its
/// client port, in `X-Conn`) and closes a keep-alive connection after 0.5 s
/// without a request, as dev servers with short idle timeouts do. HEAD and
/// DELETE (204) answer without a body.
const CONN_SERVER: &str = r#"
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 0.5
    def log_message(self, *a):
        pass
    def reply(self, code, body=b""):
        self.send_response(code)
        self.send_header("X-Conn", str(self.client_address[1]))
        if code != 204:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
    def do_GET(self):
        self.reply(200, b"hello " + self.path.encode())
    def do_HEAD(self):
        self.reply(200, b"hello")
    def do_DELETE(self):
        self.reply(204)
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.reply(200, self.rfile.read(n))

ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])), H).serve_forever()
"#;

#[tokio::test]
async fn the_keep_alive_pool_reuses_connections_and_replaces_closed_ones() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("pool").await.unwrap();
    dev_server_with(&gw, "pool", "ka", true, CONN_SERVER, &[])
        .await
        .unwrap();
    let host = "ka.pool.localhost";
    let b = browser(&gw, &[host]);
    wait_status(&b, &url(&gw, host, "/"), None, 200).await;

    let get = |path: &'static str| {
        let req = b.get(url(&gw, host, path));
        async move {
            let r = req.fetch().await;
            let status = r.status().as_u16();
            let conn = r.headers()["x-conn"].to_str().unwrap().to_owned();
            (status, conn, r.text().await.unwrap())
        }
    };

    // One request at a time: every answer comes over the same upstream
    // connection.
    let (_, first, _) = get("/a").await;
    for i in 0..5 {
        let (status, conn, body) = get("/b").await;
        assert_eq!((status, body.as_str()), (200, "hello /b"), "request {i}");
        assert_eq!(
            conn, first,
            "request {i} went over a new upstream connection"
        );
    }

    // Answers without a body (HEAD, 204) give their connection back too.
    let r = b.head(url(&gw, host, "/h")).fetch().await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-conn"], first.as_str());
    let r = b.delete(url(&gw, host, "/d")).fetch().await;
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(r.headers()["x-conn"], first.as_str());
    let (status, conn, _) = get("/after-bodyless").await;
    assert_eq!((status, conn.as_str()), (200, first.as_str()));

    // A 256 KiB body both ways on the pooled connection.
    let big: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    let r = b
        .post(url(&gw, host, "/echo"))
        .body(big.clone())
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), big.as_slice());

    // The dev server closes idle connections after 0.5 s: the next request
    // must not see that (no 502), and goes over a new connection.
    let mut seen = first.clone();
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (status, conn, body) = get("/later").await;
        assert_eq!(
            (status, body.as_str()),
            (200, "hello /later"),
            "round {round} after the dev server closed the idle connection"
        );
        assert_ne!(conn, seen, "round {round} reused a closed connection");
        seen = conn;
    }
}
