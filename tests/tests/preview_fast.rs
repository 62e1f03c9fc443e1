//! The preview proxy's fast path on the real gateway, against a dev server
//! that writes its answers byte by byte as scripted (a stdlib Python socket
//! server run as the container's command): every framing of an answer
//! (length, chunked in pieces with extensions and trailers, to the close,
//! informational answers first, none for HEAD and 304; size lines of the
//! gateway's own, an event stream's chunk passed on at once), a client that
//! leaves while the dev server keeps it waiting, a 3 MiB body, what
//! the dev server receives, a connection mixing plain requests with one the
//! fast path hands to hyper (pipelined, answered in order, over the same
//! dev-server connection), a dev-server connection closed while idle, and an
//! answer framed ambiguously (hyper's 502); a dev server that sends no answer
//! within `--preview-answer-timeout` (504 on both paths, an event stream
//! under way not cut). The gateway's counter of fast-path answers shows
//! which path answered.

use std::time::Duration;

use serde_json::Value;
use tests::devserver::{browser, dev_server_with, url, wait_status};
use tests::gateway::Gateway;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A dev server answering by path with scripted bytes; `X-Conn` numbers
/// its connections, idle ones are closed after 0.6 s. After `/restart`, the
/// next request on that connection closes it unanswered and the server
/// stops listening, as a dev server restarting does.
const RAW_SERVER: &str = r#"
import os, socket, threading, time

conns = [0]
lock = threading.Lock()

def read_head(f):
    lines = []
    while True:
        line = f.readline(65537)
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            return lines
        lines.append(line.decode("latin-1").rstrip("\r\n"))

def serve(sock):
    with lock:
        conns[0] += 1
        n = conns[0]
    sock.settimeout(0.6)
    f = sock.makefile("rb")
    restarting = False
    try:
        while True:
            lines = read_head(f)
            if not lines:
                return
            if restarting:
                s.shutdown(socket.SHUT_RDWR)
                return
            method, path, _ = lines[0].split(" ", 2)
            headers = [l.split(":", 1) for l in lines[1:]]
            length = sum(int(v) for k, v in headers if k.lower() == "content-length")
            body = f.read(length) if length else b""
            c = ("X-Conn: %d\r\n" % n).encode()
            def send(*parts):
                for p in parts:
                    sock.sendall(p)
                    time.sleep(0.02)
            if path == "/cl":
                send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n" + c + b"\r\nhello")
            elif path == "/head-echo":
                seen = "\n".join(lines).encode()
                send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(seen) + c + b"\r\n" + seen)
            elif path == "/chunked":
                send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n" + c + b"\r\n5;ext=1\r",
                     b"\nhel", b"lo\r\n6\r\n world\r", b"\n0\r\nX-T: t\r\n", b"\r\n")
            elif path == "/close":
                send(b"HTTP/1.1 200 OK\r\n" + c + b"\r\nuntil ", b"the close")
                return
            elif path == "/early":
                send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
                     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + c + b"\r\nok")
            elif path == "/304":
                send(b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\n" + c + b"\r\n")
            elif path == "/big":
                size = 3 * 1024 * 1024
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % size + c + b"\r\n")
                block = bytes(i % 251 for i in range(65536))
                for _ in range(size // 65536):
                    sock.sendall(block)
            elif path == "/sse":
                send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n" + c + b"\r\n",
                     b"e\r\ndata: first\n\n\r\n")
                time.sleep(8)
                send(b"0\r\n\r\n")
            elif path == "/restart":
                send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n" + c + b"\r\nfirst")
                restarting = True
            elif path == "/hang":
                time.sleep(30)
                return
            elif path == "/ambiguous":
                send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n" + c + b"\r\nhello!")
                return
            elif method == "HEAD":
                send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n" + c + b"\r\n")
            else:
                send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(body) + c + b"\r\n" + body)
    except (socket.timeout, ConnectionError):
        pass
    finally:
        sock.close()

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(64)
while True:
    try:
        c, _ = s.accept()
    except OSError:
        time.sleep(3600)
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// The value of the gateway's metric line starting with `name` (0 when
/// absent: a counter not yet incremented).
async fn metric(gw: &Gateway, name: &str) -> u64 {
    let metrics = gw.metrics().await.unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Answers counted by the gateway's fast path.
async fn fast_answers(gw: &Gateway) -> u64 {
    metric(gw, "gateway_preview_fast_path_requests_total").await
}

/// A gateway (from `builder`) with project `demo` running [`RAW_SERVER`] as
/// the public container `raw` (and `ports` declared), answering: the
/// gateway, a client that resolves the preview host, and the host's
/// authority (`raw.demo.localhost:PORT`).
async fn raw_dev_server(
    builder: tests::gateway::GatewayBuilder,
    ports: &[u16],
) -> (Gateway, reqwest::Client, String) {
    let gw = builder.start().await.unwrap();
    gw.open_project("demo").await.unwrap();
    dev_server_with(&gw, "demo", "raw", true, RAW_SERVER, ports)
        .await
        .unwrap();
    let host = "raw.demo.localhost";
    let b = browser(&gw, &[host]);
    wait_status(&b, &url(&gw, host, "/cl"), None, 200).await;
    let authority = format!("{host}:{}", gw.addr.port());
    (gw, b, authority)
}

/// Reads `s` until what was read holds `seek` (within 4 s): all of it.
async fn read_until(s: &mut tokio::net::TcpStream, seek: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let seen = tokio::time::timeout(Duration::from_secs(4), async {
        while !got.windows(seek.len()).any(|w| w == seek) {
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(
        seen.is_ok(),
        "{:?} held back: {}",
        String::from_utf8_lossy(seek),
        String::from_utf8_lossy(&got)
    );
    got
}

/// Opens `/sse` on a new connection and reads until its first event has
/// come (within 4 s): the connection, and what it read.
async fn first_event(gw: &Gateway, authority: &str) -> (tokio::net::TcpStream, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(format!("GET /sse HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let got = read_until(&mut s, b"data: first").await;
    (s, got)
}

/// The dev-server connections (`X-Conn`) that raw answers came over.
fn x_conns(answers: &[&str]) -> std::collections::BTreeSet<String> {
    answers
        .iter()
        .map(|a| {
            a.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("x-conn")
                        .then(|| v.trim().to_owned())
                })
                .unwrap_or_else(|| panic!("no X-Conn in {a}"))
        })
        .collect()
}

/// The answers in raw bytes read off one connection (none of these bodies
/// holds "HTTP/1.1 ").
fn answers(out: &str) -> Vec<&str> {
    out.split("HTTP/1.1 ").skip(1).collect()
}

/// Whether a raw answer has `status` and ends with `tail`.
fn is(answer: &str, status: &str, tail: &str) -> bool {
    answer.starts_with(status) && answer.ends_with(tail)
}

/// Sends `raw` on a new connection to the gateway and reads until it closes.
async fn exchange(gw: &Gateway, raw: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("the gateway closes the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn plain_requests_take_the_fast_path_with_every_framing_and_the_rest_hyper() {
    // A second declared port, where nothing listens.
    let silent = tests::free_port();
    let (gw, b, authority) = raw_dev_server(Gateway::builder(), &[silent]).await;
    let host = "raw.demo.localhost";
    let before = fast_answers(&gw).await;

    // Every framing, through a client.
    let r = b.get(url(&gw, host, "/cl")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "hello");
    let r = b.get(url(&gw, host, "/chunked")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["transfer-encoding"], "chunked");
    assert!(r.headers().get("trailer").is_none());
    assert_eq!(r.text().await.unwrap(), "hello world");
    let r = b.get(url(&gw, host, "/early")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "the 103 is dropped");
    assert_eq!(r.text().await.unwrap(), "ok");
    let r = b.head(url(&gw, host, "/x")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-length"], "100");
    let r = b.get(url(&gw, host, "/304")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 304);
    assert_eq!(r.headers()["etag"], "\"e\"");
    let r = b.get(url(&gw, host, "/big")).send().await.unwrap();
    let big = r.bytes().await.unwrap();
    assert_eq!(big.len(), 3 * 1024 * 1024);
    assert!(
        big.iter()
            .enumerate()
            .all(|(i, &b)| b == ((i % 65536) % 251) as u8)
    );
    // To the close: the dev server's connection and the client's end.
    let r = b.get(url(&gw, host, "/close")).send().await.unwrap();
    assert_eq!(r.headers()["connection"], "close");
    assert_eq!(r.text().await.unwrap(), "until the close");
    assert_eq!(fast_answers(&gw).await - before, 7);

    // One client connection, its requests pipelined: answered in order,
    // all over the one dev-server connection it keeps.
    let before = fast_answers(&gw).await;
    let get = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n{extra}\r\n")
    };
    let out = exchange(
        &gw,
        &[
            get("/cl", ""),
            get("/chunked", ""),
            format!("HEAD /x HTTP/1.1\r\nHost: {authority}\r\n\r\n"),
            get("/early", ""),
            get("/304", ""),
            get("/cl", "Connection: close\r\n"),
        ]
        .concat(),
    )
    .await;
    let got = answers(&out);
    let statuses: Vec<&str> = got.iter().map(|a| &a[..3]).collect();
    assert_eq!(
        statuses,
        ["200", "200", "200", "200", "304", "200"],
        "{out}"
    );
    assert!(got[0].ends_with("\r\n\r\nhello") && got[5].ends_with("\r\n\r\nhello"));
    assert!(got[3].ends_with("\r\n\r\nok"), "{out}");
    assert_eq!(x_conns(&got).len(), 1, "{out}");
    assert_eq!(fast_answers(&gw).await - before, 6);

    // Chunks are passed on with size lines of the gateway's own (the dev
    // server's extension dropped), trailers dropped.
    let out = exchange(
        &gw,
        &format!("GET /chunked HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(
        out.ends_with("\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
        "{out:?}"
    );
    assert!(!out.contains("ext") && !out.contains("X-T: t"), "{out:?}");

    // A chunk is passed on as soon as it is complete: an event stream's
    // first event arrives while the dev server holds the rest.
    drop(first_event(&gw, &authority).await);

    // A client that leaves while the dev server keeps it waiting leaves
    // nothing behind: its connection's place in the caps is given back.
    let open = "gateway_open_connections";
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle = metric(&gw, open).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(format!("GET /hang HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(metric(&gw, open).await, idle + 1);
    drop(s);
    tests::eventually(
        Duration::from_secs(5),
        "the left connection to be let go",
        || async { (metric(&gw, open).await == idle).then_some(()) },
    )
    .await
    .unwrap();

    // What the dev server received: the proxy's edits.
    let r = b
        .get(url(&gw, host, "/head-echo"))
        .header("cookie", "theirs=1; devgate_preview=not-a-token")
        .header("x-forwarded-for", "10.9.9.9")
        .header("x-real-ip", "10.9.9.9")
        .header("te", "trailers")
        .send()
        .await
        .unwrap();
    let seen = r.text().await.unwrap().to_ascii_lowercase();
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[0], "get /head-echo http/1.1");
    for want in [
        format!("host: {authority}"),
        format!("x-forwarded-host: {authority}"),
        "x-forwarded-for: 127.0.0.1".to_owned(),
        "x-forwarded-proto: http".to_owned(),
        "via: 1.1 devgate".to_owned(),
        "cookie: theirs=1".to_owned(),
    ] {
        assert!(lines.contains(&want.as_str()), "{want:?} not in {lines:?}");
    }
    for gone in [
        "x-real-ip",
        "te:",
        "connection",
        "10.9.9.9",
        "devgate_preview",
    ] {
        assert!(
            !seen.contains(gone),
            "{gone:?} reached the dev server: {seen}"
        );
    }

    // One connection, pipelined: a plain GET (fast), a POST with a body
    // (handed to hyper, with the bytes after it), a GET (hyper's now). All
    // answered in order, over the dev-server connection the fast path
    // dialed (given to the pool).
    let before = fast_answers(&gw).await;
    let out = exchange(
        &gw,
        &format!(
            "GET /cl HTTP/1.1\r\nHost: {authority}\r\n\r\n\
             POST /echo HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 4\r\n\r\nbody\
             GET /cl HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    let got = answers(&out);
    assert_eq!(got.len(), 3, "{out}");
    assert!(
        is(got[0], "200", "hello") && is(got[1], "200", "body") && is(got[2], "200", "hello"),
        "{out}"
    );
    assert_eq!(x_conns(&got).len(), 1, "{out}");
    assert_eq!(fast_answers(&gw).await - before, 1, "only the first");

    // The dev server closes an idle connection after 0.6 s: the next plain
    // request on the client's connection goes over a new one, no error.
    let r = b.get(url(&gw, host, "/cl")).send().await.unwrap();
    let first = r.headers()["x-conn"].to_str().unwrap().to_owned();
    r.text().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = fast_answers(&gw).await;
    let r = b.get(url(&gw, host, "/cl")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_ne!(r.headers()["x-conn"].to_str().unwrap(), first);
    assert_eq!(r.text().await.unwrap(), "hello");
    assert_eq!(fast_answers(&gw).await - before, 1);

    // A declared port where nothing listens: after the wait for a dev
    // server starting, the proxy's 502, its page for a browser; a HEAD's
    // without a body (what follows on the connection stays in step).
    let silent_host = format!("{silent}-{authority}");
    let get = format!(
        "GET / HTTP/1.1\r\nHost: {silent_host}\r\nAccept: text/html\r\nConnection: close\r\n\r\n"
    );
    let head = format!(
        "HEAD / HTTP/1.1\r\nHost: {silent_host}\r\n\r\n\
         GET /cl HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    );
    let (get, head) = tokio::join!(exchange(&gw, &get), exchange(&gw, &head));
    assert!(get.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{get}");
    assert!(
        get.contains("text/html") && get.ends_with("</html>\n"),
        "{get}"
    );
    let got = answers(&head);
    assert_eq!(got.len(), 2, "{head}");
    assert!(
        is(got[0], "502", "\r\n\r\n") && is(got[1], "200", "hello"),
        "{head}"
    );

    // An answer with two lengths: not taken; hyper's answer is a 502.
    let r = b.get(url(&gw, host, "/ambiguous")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "bad_gateway");

    // Not plain: HTTP/1.0, absolute form, two Hosts. Each is
    // answered as before (by hyper), none counted by the fast path.
    let before = fast_answers(&gw).await;
    let out = exchange(
        &gw,
        &format!("GET /cl HTTP/1.0\r\nHost: {authority}\r\n\r\n"),
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.") && out.contains(" 200 ") && out.ends_with("hello"),
        "{out}"
    );
    let out = exchange(
        &gw,
        &format!(
            "GET http://{authority}/cl HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("hello"),
        "{out}"
    );
    let out = exchange(
        &gw,
        &format!("GET /cl HTTP/1.1\r\nHost: {authority}\r\nHost: {authority}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(fast_answers(&gw).await - before, 0);
}

#[tokio::test]
async fn without_the_fast_path_hyper_answers_the_same() {
    let builder = Gateway::builder().env("GATEWAY_PREVIEW_FAST_PATH", "false");
    let (gw, b, _) = raw_dev_server(builder, &[]).await;
    let host = "raw.demo.localhost";
    for (path, body) in [
        ("/cl", "hello"),
        ("/chunked", "hello world"),
        ("/early", "ok"),
    ] {
        let r = b.get(url(&gw, host, path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.text().await.unwrap(), body);
    }
    assert_eq!(fast_answers(&gw).await, 0);
}

/// A dev server that takes a request and sends no answer gets
/// `--preview-answer-timeout` (1 s here): the client then gets 504 (a page
/// for a browser, else the JSON error), on the fast path and on hyper's,
/// and its connection goes on; an answer whose head came in time streams
/// on past it.
#[tokio::test]
async fn a_dev_server_that_does_not_answer_in_time_gets_504_on_both_paths() {
    let builder = Gateway::builder().args(&["--preview-answer-timeout", "1s"]);
    // Two ports held (bound, not listening: a dial is refused) for dev
    // servers that start late, at the end.
    let late = [held_port(), held_port()];
    let ports = late.each_ref().map(|(_, port)| *port);
    let (gw, b, authority) = raw_dev_server(builder, &ports).await;
    let host = "raw.demo.localhost";
    let timeouts = r#"gateway_refused_total{reason="preview_answer_timeout"}"#;
    assert_eq!(metric(&gw, timeouts).await, 0);

    // The fast path: 504 after the limit, then the next request on the
    // same connection answered.
    let before = fast_answers(&gw).await;
    let started = std::time::Instant::now();
    let out = exchange(
        &gw,
        &format!(
            "GET /hang HTTP/1.1\r\nHost: {authority}\r\n\r\n\
             GET /cl HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    let got = answers(&out);
    assert_eq!(got.len(), 2, "{out}");
    assert!(got[0].starts_with("504 "), "{out}");
    assert!(got[0].contains("\"code\":\"timeout\""), "{out}");
    assert!(is(got[1], "200", "hello"), "{out}");
    assert_eq!(fast_answers(&gw).await - before, 1, "the /cl");

    // A browser gets the page.
    let out = exchange(
        &gw,
        &format!(
            "GET /hang HTTP/1.1\r\nHost: {authority}\r\nAccept: text/html\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 504 "), "{out}");
    assert!(
        out.contains("text/html") && out.contains("Dev server not answering"),
        "{out}"
    );

    // Hyper's path (a request with a body is not plain): the same 504.
    let r = b
        .post(url(&gw, host, "/hang"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 504);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "timeout");
    assert_eq!(metric(&gw, timeouts).await, 3);

    // An upload that takes longer than the limit is not cut: the clock
    // starts once the body has been passed on (here the dev server answers
    // as soon as it has it). A byte every 0.4 s, 2 s in all (the dev server
    // gives up on a connection quiet for 0.6 s).
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        format!(
            "POST /echo HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 6\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    for byte in b"abcdef" {
        s.write_all(&[*byte]).await.unwrap();
        if *byte != b'f' {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
    assert!(started.elapsed() > Duration::from_millis(1500));
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(is(&out[9..], "200", "abcdef"), "{out}");

    // An event stream whose head came in time is not cut at the limit.
    let (mut s, got) = first_event(&gw, &authority).await;
    let mut more = [0u8; 1024];
    let quiet = tokio::time::timeout(Duration::from_millis(2500), s.read(&mut more)).await;
    assert!(
        quiet.is_err(),
        "the stream was cut or answered again past the limit: {:?}",
        quiet.map(|n| String::from_utf8_lossy(&more[..n.unwrap_or(0)]).into_owned())
    );
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    assert_eq!(metric(&gw, timeouts).await, 3);

    // A dev server that starts listening 2 s after the request (just
    // started): the wait for it does not count, on either path (a DELETE
    // goes to hyper's).
    for ((socket, port), (method, fast)) in late.into_iter().zip([("GET", 1), ("DELETE", 0)]) {
        let before = fast_answers(&gw).await;
        let listener = listen_late(socket, Duration::from_secs(2));
        let started = std::time::Instant::now();
        let out = exchange(
            &gw,
            &format!(
                "{method} / HTTP/1.1\r\nHost: {port}-{authority}\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        let waited = started.elapsed();
        assert!(
            is(out.get(9..).unwrap_or(&out), "200", "late"),
            "{method}: {out}"
        );
        assert!(
            waited >= Duration::from_millis(1900),
            "{method}: {waited:?}"
        );
        assert_eq!(fast_answers(&gw).await - before, fast, "{method}");
        listener.abort();
    }
    assert_eq!(metric(&gw, timeouts).await, 3);

    // A second dial is on the clock: a dev server that closes its kept
    // connection on the next request and stops listening (restarting) gets
    // that request a 504 at the limit, not a 502 after the dial's 15 s.
    let mut c = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(format!("GET /restart HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_until(&mut c, b"first").await;
    let started = std::time::Instant::now();
    c.write_all(
        format!("GET /again HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let waited = started.elapsed();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 504 "), "{out}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(metric(&gw, timeouts).await, 4);
}

/// Reads one request head off `s` (byte by byte: nothing past it).
async fn read_head(s: &mut tokio::net::TcpStream) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if s.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
}

/// A loopback port held by a socket bound to it and not listening: a dial
/// to it is refused, and no other socket can take the port meanwhile.
fn held_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

/// After `after`, listens on `socket` and answers every request `200 late`
/// at once.
fn listen_late(socket: tokio::net::TcpSocket, after: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let listener = socket.listen(64).unwrap();
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                read_head(&mut s).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
                    .await;
            });
        }
    })
}
