//! The hardened edge, one test per reproduction of the adversarial pass
//! (issue 9), through the public API of the real gateway: previews reach
//! only declared ports and never loop; credentials stay on their side;
//! one-time preview links and share links; connection limits and the
//! header-read timeout; malformed requests and tokens; bounded command log
//! and exec output; the data dir's modes; a user per local project.

use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tests::Fetch as _;
use tests::devserver::{SERVER, browser, dev_server, dev_server_with, url, wait_status};
use tests::error_of;
use tests::eventually;
use tests::gateway::Gateway;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;

/// Whether the tests run as root (then the gateway gives each project a user).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Reads what the server sends on `s` until it closes (or `limit` passes).
async fn read_until_closed(s: &mut tokio::net::TcpStream, limit: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn previews_reach_only_declared_ports_of_their_own_project_and_never_loop() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("a").await.unwrap();
    gw.open_project("b").await.unwrap();
    // Project b's private dev server, on a port of this machine.
    dev_server(&gw, "b", "priv", false).await.unwrap();
    let priv_host = "priv.b.localhost";
    let bb = browser(&gw, &[priv_host]);
    let r = eventually(Duration::from_secs(30), "b's dev server", || {
        let req = bb
            .get(url(&gw, priv_host, "/"))
            .bearer_auth(gw.admin_token());
        async move { req.send().await.ok().filter(|r| r.status() == 200) }
    })
    .await
    .unwrap();
    let b_port = r.json::<Value>().await.unwrap()["port"].as_u64().unwrap() as u16;

    // Project a's public container, with one other port declared.
    let extra = tests::free_port();
    dev_server_with(&gw, "a", "pub", true, SERVER, &[extra])
        .await
        .unwrap();
    let pub_host = "pub.a.localhost";
    let extra_host = format!("{extra}-pub.a.localhost");
    let b_via_a = format!("{b_port}-pub.a.localhost");
    let undeclared = format!("{}-pub.a.localhost", tests::free_port());
    let own = format!("{}-pub.a.localhost", gw.addr.port());
    let c = browser(&gw, &[pub_host, &extra_host, &b_via_a, &undeclared, &own]);
    wait_status(&c, &url(&gw, pub_host, "/"), None, 200).await;
    let r = wait_status(&c, &url(&gw, &extra_host, "/"), None, 200).await;
    assert_eq!(r.json::<Value>().await.unwrap()["port"], extra);

    // The reproduction: b's private page through a's public container, and
    // ports a never declared (the gateway's own among them): 404, no body
    // of b's.
    for host in [&b_via_a, &undeclared, &own] {
        let t0 = Instant::now();
        let r = c.get(url(&gw, host, "/")).fetch().await;
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "{host} took {:?}",
            t0.elapsed()
        );
        assert_eq!(error_of(r).await, (404, "not_found".to_owned()), "{host}");
    }

    // Declaring them changes nothing: b's running port stays b's, and the
    // gateway never dials itself.
    let r = gw
        .post("/api/projects/a/containers")
        .json(
            &json!({"name": "grab", "port": tests::free_port(), "ports": [b_port, gw.addr.port()],
                      "start": "sleep 600", "public": true}),
        )
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    let r = gw
        .post("/api/projects/a/containers/grab/start")
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 200);
    let grab_b = format!("{b_port}-grab.a.localhost");
    let grab_own = format!("{}-grab.a.localhost", gw.addr.port());
    let g = browser(&gw, &[&grab_b, &grab_own]);
    for host in [&grab_b, &grab_own] {
        let t0 = Instant::now();
        let r = g.get(url(&gw, host, "/")).fetch().await;
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "{host} took {:?}",
            t0.elapsed()
        );
        assert_eq!(error_of(r).await, (404, "not_found".to_owned()), "{host}");
    }
    if is_root() {
        // A port this test (another user) listens on, declared by a
        // container: with a user per project, not the project's, so 404.
        let outsider = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = outsider.local_addr().unwrap().port();
        let r = gw
            .post("/api/projects/a/containers")
            .json(
                &json!({"name": "peek", "port": tests::free_port(), "ports": [port],
                          "start": "sleep 600", "public": true}),
            )
            .fetch()
            .await;
        assert_eq!(r.status().as_u16(), 201);
        gw.post("/api/projects/a/containers/peek/start")
            .fetch()
            .await;
        let host = format!("{port}-peek.a.localhost");
        let p = browser(&gw, &[&host]);
        let r = p.get(url(&gw, &host, "/")).fetch().await;
        assert_eq!(error_of(r).await, (404, "not_found".to_owned()));
        let accepted = tokio::time::timeout(Duration::from_millis(300), outsider.accept()).await;
        assert!(accepted.is_err(), "the outsider's port was dialled");
    }

    // A request that went round through the gateway three times: 508, not a
    // hop more (a dev server proxying to another preview is one round).
    let r = c
        .get(url(&gw, pub_host, "/"))
        .header(
            "via",
            "1.1 devgate, 1.1 corp-proxy, 1.1 devgate, 1.1 devgate",
        )
        .fetch()
        .await;
    assert_eq!(error_of(r).await, (508, "loop_detected".to_owned()));
    let r = c
        .get(url(&gw, pub_host, "/"))
        .header("via", "1.1 devgate")
        .fetch()
        .await;
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["headers"]["via"], "1.1 devgate, 1.1 devgate");
    // What the dev server sees carries the gateway in `Via`.
    let r = c
        .get(url(&gw, pub_host, "/"))
        .header("via", "1.1 corp-proxy")
        .fetch()
        .await;
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["headers"]["via"], "1.1 corp-proxy, 1.1 devgate");

    // Ports are validated: two containers may not claim one port.
    let r = gw
        .post("/api/projects/a/containers")
        .json(
            &json!({"name": "dup", "port": tests::free_port(), "ports": [extra], "start": "true"}),
        )
        .fetch()
        .await;
    assert_eq!(error_of(r).await, (409, "conflict".to_owned()));
}

#[tokio::test]
async fn gateway_credentials_never_reach_the_dev_server_and_preview_cookies_are_not_api_tokens() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("a").await.unwrap();
    dev_server(&gw, "a", "web", false).await.unwrap();
    dev_server(&gw, "a", "pub", true).await.unwrap();
    let (web, public) = ("web.a.localhost", "pub.a.localhost");
    let b = browser(&gw, &[web, public]);
    wait_status(&b, &url(&gw, public, "/"), None, 200).await;

    // A one-time link: no token in it, good once, for its own host only.
    let r = gw
        .post("/api/projects/a/containers/web/preview-link")
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 200);
    let link: Value = r.json().await.unwrap();
    let link_url = link["url"].as_str().unwrap().to_owned();
    assert!(
        link_url.starts_with(&url(&gw, web, "/__preview/auth?code=")),
        "{link_url}"
    );
    assert!(!link_url.contains(&gw.admin_token()));
    let r = b.get(&link_url).fetch().await;
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.contains("HttpOnly"), "{set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    let value = cookie.split_once('=').unwrap().1.to_owned();
    let again = b.get(&link_url).fetch().await;
    assert_eq!(again.status().as_u16(), 401, "a code works once");
    // A code made for `web` is spent, and refused, on another host.
    let r = gw
        .post("/api/projects/a/containers/web/preview-link")
        .fetch()
        .await;
    let other = r.json::<Value>().await.unwrap()["url"]
        .as_str()
        .unwrap()
        .replace("web.a.localhost", "pub.a.localhost");
    assert_eq!(b.get(&other).fetch().await.status().as_u16(), 403);

    // The cookie opens the preview, not the API.
    let r = wait_status(&b, &url(&gw, web, "/"), Some(&cookie), 200).await;
    assert_eq!(r.json::<Value>().await.unwrap()["name"], "web");
    for (method, path) in [
        ("GET", "/api/projects/a/files/web/server.py"),
        ("POST", "/api/projects/a/exec"),
        ("GET", "/api/projects"),
    ] {
        let r = gw
            .http()
            .request(method.parse().unwrap(), gw.url(path))
            .bearer_auth(&value)
            .json(&json!({"argv": ["id"]}))
            .fetch()
            .await;
        assert_eq!(
            error_of(r).await,
            (401, "unauthorized".to_owned()),
            "{path}"
        );
    }

    // What the dev server sees: no gateway cookie and no gateway token
    // (valid, expired, for another project: all the gateway's), the app's
    // own cookies and credentials untouched, X-Forwarded-* the gateway's.
    let expired = gw.token_with("u", &["a"], 1);
    let elsewhere = gw.token(&["zzz"]);
    for token in [gw.admin_token(), expired, elsewhere] {
        let r = b
            .get(url(&gw, public, "/"))
            .bearer_auth(&token)
            .header("cookie", format!("app=1; {cookie}"))
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.example")
            .header("forwarded", "for=203.0.113.9")
            .fetch()
            .await;
        assert_eq!(r.status().as_u16(), 200);
        let seen: Value = r.json().await.unwrap();
        let h = &seen["headers"];
        assert!(h.get("authorization").is_none(), "{h}");
        assert_eq!(h["cookie"], "app=1");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(
            h["x-forwarded-host"],
            format!("{public}:{}", gw.addr.port())
        );
        assert!(h.get("forwarded").is_none());
    }
    let r = b
        .get(url(&gw, public, "/"))
        .header("authorization", "Basic YXBwOnNlY3JldA==")
        .header("authorization", format!("Bearer {}", gw.admin_token()))
        .header("x-forwarded-ssl", "on")
        .header("x-forwarded-scheme", "https")
        .header(
            "sec-websocket-protocol",
            format!("chat, devgate.bearer.{}", gw.admin_token()),
        )
        .fetch()
        .await;
    let seen: Value = r.json().await.unwrap();
    let h = &seen["headers"];
    // A second Authorization with a gateway token is dropped too; the
    // app's own credential passes.
    assert_eq!(h["authorization"], "Basic YXBwOnNlY3JldA==");
    assert!(
        h.get("x-forwarded-ssl").is_none() && h.get("x-forwarded-scheme").is_none(),
        "{h}"
    );
    assert_eq!(h["sec-websocket-protocol"], "chat");
}

#[tokio::test]
async fn forwarded_proto_is_believed_only_from_trusted_proxies() {
    for (trusted, secure) in [(false, false), (true, true)] {
        let mut builder = Gateway::builder()
            .arg("--preview-domain")
            .arg("preview.test");
        if trusted {
            builder = builder.arg("--trusted-proxies").arg("127.0.0.0/8");
        }
        let gw = builder.start().await.unwrap();
        gw.open_project("a").await.unwrap();
        dev_server(&gw, "a", "web", false).await.unwrap();
        let host = "web.a.preview.test";
        let b = browser(&gw, &[host]);
        let r = b
            .get(url(
                &gw,
                host,
                &format!("/__preview/auth?token={}", gw.admin_token()),
            ))
            .header("x-forwarded-proto", "https")
            .fetch()
            .await;
        assert_eq!(r.status().as_u16(), 303);
        let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert_eq!(set.contains("; Secure"), secure, "trusted={trusted}: {set}");
        assert_eq!(set.contains("SameSite=Lax"), !secure, "{set}");
    }
}

#[tokio::test]
async fn share_links_expire_are_revoked_everywhere_and_wake_only_when_made_to() {
    let pg = tests::postgres::Postgres::start();
    tests::postgres::create_db(&pg, "devgate").await;
    let db = pg.url("devgate");
    // Two replicas on one store: `b` starts first, so it never brings up
    // the projects `a` makes.
    let b = Gateway::builder()
        .arg("--database-url")
        .arg(&db)
        .start()
        .await
        .unwrap();
    let a = Gateway::builder()
        .arg("--database-url")
        .arg(&db)
        .start()
        .await
        .unwrap();
    a.open_project("s").await.unwrap();
    dev_server(&a, "s", "web", false).await.unwrap();
    let host = "web.s.localhost";
    let c = browser(&a, &[host]);
    wait_status(&c, &url(&a, host, "/"), None, 401).await;

    let share = |expires: u64, wake: bool| {
        let req = a
            .post("/api/projects/s/containers/web/shares")
            .json(&json!({"expires_in_s": expires, "label": "for Bob", "wake": wake}));
        async move {
            let r = req.fetch().await;
            assert_eq!(r.status().as_u16(), 201);
            r.json::<Value>().await.unwrap()
        }
    };
    // A stranger (no account, no token) opens the link.
    let open = |link: &Value| {
        let link = link["url"].as_str().unwrap().to_owned();
        let c = c.clone();
        async move {
            let r = c.get(&link).fetch().await;
            assert_eq!(r.status().as_u16(), 303, "{link}");
            let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
            set.split(';').next().unwrap().to_owned()
        }
    };
    let ws = |cookie: String| async move {
        let stream = tokio::net::TcpStream::connect(a.addr).await.unwrap();
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{host}:{}/hmr", a.addr.port()),
            )
            .unwrap();
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
        ws.send(Message::text("hi")).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), "echo:hi"),
            other => panic!("no echo through the share link: {other:?}"),
        }
        ws
    };
    // The socket ends (closed or reset), within `within`.
    async fn closes_within(
        ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
        within: Duration,
    ) -> Duration {
        let t0 = Instant::now();
        let ended = tokio::time::timeout(within, async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the WebSocket stayed open past {within:?}");
        t0.elapsed()
    }

    // Revoked on the other replica: the page and the open WebSocket stop
    // within 5 s.
    let link = share(3600, false).await;
    let listed: Value = b
        .get("/api/projects/s/containers/web/shares")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["id"], link["id"]);
    assert_eq!(listed[0]["label"], "for Bob");
    assert!(
        listed[0].get("url").is_none(),
        "the secret URL is answered once"
    );
    let cookie = open(&link).await;
    wait_status(&c, &url(&a, host, "/"), Some(&cookie), 200).await;
    let mut sock = ws(cookie.clone()).await;
    let r = b
        .delete(&format!(
            "/api/projects/s/containers/web/shares/{}",
            link["id"].as_str().unwrap()
        ))
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 204);
    let took = closes_within(&mut sock, Duration::from_secs(5)).await;
    eprintln!("revoked on the other replica: WebSocket closed after {took:?}");
    let r = c
        .get(url(&a, host, "/"))
        .header("cookie", &cookie)
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        c.get(link["url"].as_str().unwrap())
            .fetch()
            .await
            .status()
            .as_u16(),
        401
    );

    // Expired: the same.
    let short = share(5, false).await;
    let cookie = open(&short).await;
    let mut sock = ws(cookie.clone()).await;
    let took = closes_within(&mut sock, Duration::from_secs(12)).await;
    eprintln!("expired: WebSocket closed after {took:?}");
    let r = c
        .get(url(&a, host, "/"))
        .header("cookie", &cookie)
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 401);

    // Bad input changes nothing.
    for body in [
        json!({"expires_in_s": 1}),
        json!({"expires_in_s": 99_999_999}),
        json!({}),
    ] {
        let r = a
            .post("/api/projects/s/containers/web/shares")
            .json(&body)
            .fetch()
            .await;
        assert_eq!(r.status().as_u16(), 400, "{body}");
    }

    // Waking: a link made without `wake` never wakes the project; one made
    // with it does.
    let sleepy = share(3600, false).await;
    let wakes = share(3600, true).await;
    let (sleepy, wakes) = (open(&sleepy).await, open(&wakes).await);
    let r = a.post("/api/projects/s/hibernate").fetch().await;
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let r = c
        .get(url(&a, host, "/"))
        .header("cookie", &sleepy)
        .fetch()
        .await;
    assert_eq!(error_of(r).await, (503, "unavailable".to_owned()));
    let p = a.project("s").await.unwrap();
    assert_eq!(p["status"], "hibernated");
    let r = c
        .get(url(&a, host, "/"))
        .header("cookie", &wakes)
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 200);
    let p = a.project("s").await.unwrap();
    assert_eq!(p["status"], "active");
}

#[tokio::test]
async fn strangers_wake_a_public_preview_at_most_once_per_interval() {
    let gw = Gateway::builder()
        .arg("--public-wake-interval")
        .arg("10m")
        .start()
        .await
        .unwrap();
    gw.open_project("w").await.unwrap();
    dev_server(&gw, "w", "pub", true).await.unwrap();
    let host = "pub.w.localhost";
    let c = browser(&gw, &[host]);
    wait_status(&c, &url(&gw, host, "/"), None, 200).await;
    let hibernate = || async {
        let r = gw.post("/api/projects/w/hibernate").fetch().await;
        assert_eq!(r.status().as_u16(), 200);
    };
    hibernate().await;
    assert_eq!(
        c.get(url(&gw, host, "/")).fetch().await.status().as_u16(),
        200
    );
    hibernate().await;
    let r = c.get(url(&gw, host, "/")).fetch().await;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 500 && retry <= 600, "{retry}");
    assert_eq!(error_of(r).await, (429, "too_many_requests".to_owned()));
    let p = gw.project("w").await.unwrap();
    assert_eq!(p["status"], "hibernated");
    // The project's own users are never limited.
    let r = c
        .get(url(&gw, host, "/"))
        .bearer_auth(gw.admin_token())
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        gw.metrics()
            .await
            .unwrap()
            .contains("gateway_refused_total{reason=\"public_wake\"} 1")
    );
}

#[tokio::test]
async fn slow_and_idle_connections_are_closed_by_the_header_read_timeout() {
    let gw = Gateway::builder()
        .arg("--header-read-timeout-secs")
        .arg("2")
        .start()
        .await
        .unwrap();
    // The reproduction: 200 sockets that each sent half a request line.
    let mut socks = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /heal").await.unwrap();
        socks.push(s);
    }
    // And one idle keep-alive connection after a whole request.
    let mut idle = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    for s in socks.iter_mut() {
        read_until_closed(s, Duration::from_secs(6))
            .await
            .expect("a half-sent request still open after 6 s");
    }
    let answer = read_until_closed(&mut idle, Duration::from_secs(6))
        .await
        .expect("an idle keep-alive connection still open after 6 s");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    // The gateway is fine.
    let r = gw.http().get(gw.url("/healthz")).fetch().await;
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn connections_above_the_caps_get_503_and_others_are_still_served() {
    let gw = Gateway::builder()
        // Held connections send nothing: a header-read timeout longer than
        // the test keeps them open however slow a loaded machine makes it
        // (with the default 10 s they were closed before the count).
        .args(&[
            "--max-connections-per-ip",
            "20",
            "--max-connections",
            "30",
            "--header-read-timeout-secs",
            "300",
        ])
        .start()
        .await
        .unwrap();
    let addr = gw.addr;
    let from = |ip: &'static str| async move {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        s.connect(addr).await.unwrap()
    };
    // Waits until the gateway counts `n` open connections besides the one
    // asking (from an address of its own, kept alive).
    let metrics = reqwest::Client::builder()
        .no_proxy()
        .local_address(std::net::IpAddr::from([127, 0, 0, 4]))
        .build()
        .unwrap();
    let metrics_url = gw.url("/metrics");
    // Connections open before the test's own (the harness's client may keep
    // one from 127.0.0.1 until its idle timeout): counted once, so the
    // waits below count only the test's.
    let open_total = || {
        let (metrics, metrics_url) = (metrics.clone(), metrics_url.clone());
        async move {
            let m = metrics
                .get(&metrics_url)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            m.lines()
                .find_map(|l| l.strip_prefix("gateway_open_connections "))?
                .parse::<u64>()
                .ok()
        }
    };
    let base = eventually(Duration::from_secs(10), "the metrics", open_total)
        .await
        .unwrap()
        - 1;
    let open_now = |n: u64| {
        let (metrics, metrics_url) = (metrics.clone(), metrics_url.clone());
        async move {
            eventually(
                Duration::from_secs(10),
                &format!("{n} open connections"),
                || async {
                    let m = metrics
                        .get(&metrics_url)
                        .send()
                        .await
                        .ok()?
                        .text()
                        .await
                        .ok()?;
                    let open: u64 = m
                        .lines()
                        .find_map(|l| l.strip_prefix("gateway_open_connections "))?
                        .parse()
                        .ok()?;
                    (open == n + 1 + base).then_some(())
                },
            )
            .await
            .unwrap()
        }
    };
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(from("127.0.0.5").await);
    }
    open_now(20).await;
    let refused = |mut s: tokio::net::TcpStream| async move {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        read_until_closed(&mut s, Duration::from_secs(10))
            .await
            .expect("the connection over the cap was not answered and closed")
    };
    let answer = refused(from("127.0.0.5").await).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    // Another client address is served.
    let mut other = from("127.0.0.6").await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut other, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The total: 20 + more from a second address up to the cap of 30 (with
    // the metrics connection and those open before), then a third is refused.
    // The served connection's slot is given back when its task ends, a
    // moment after the client saw it close: wait for that first.
    open_now(20).await;
    let more = 30 - 1 - base - 20;
    for _ in 0..more {
        held.push(from("127.0.0.6").await);
    }
    open_now(20 + more).await;
    let answer = refused(from("127.0.0.7").await).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    drop(held);
    let r = eventually(
        Duration::from_secs(5),
        "the gateway to serve again",
        || async {
            gw.http()
                .get(gw.url("/healthz"))
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
        },
    )
    .await;
    assert!(r.is_ok());
    // At least the two refusals above (a retry of the poll may add one).
    let metrics = gw.metrics().await.unwrap();
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gateway_refused_total{reason=\"connections\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(refused >= 2, "{metrics}");
}

#[tokio::test]
async fn malformed_requests_and_tokens_are_refused() {
    let gw = Gateway::builder()
        .arg("--max-token-ttl")
        .arg("1h")
        .start()
        .await
        .unwrap();
    // Two Host headers: 400, on the API and on a preview host alike.
    for hosts in [
        format!("Host: {}\r\nHost: web.a.localhost", gw.addr),
        format!("Host: web.a.localhost\r\nHost: {}", gw.addr),
    ] {
        let (status, body) = gw
            .raw(
                format!("GET /healthz HTTP/1.1\r\n{hosts}\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        assert_eq!(status, 400, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "bad_request");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sign = |claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(gw.secret.as_bytes()),
        )
        .unwrap()
    };
    let cases = [
        (
            json!({"sub": "u", "projects": ["*"], "exp": now + 600, "nbf": now + 300}),
            401,
        ),
        (
            json!({"sub": "u", "projects": ["*"], "exp": now + 600, "nbf": now - 60}),
            200,
        ),
        (
            json!({"sub": "u", "projects": ["*"], "exp": now + 7200}),
            401,
        ),
        (
            json!({"sub": "u", "projects": ["*"], "exp": now + 1800, "iat": now - 3600}),
            401,
        ),
        (
            json!({"sub": "u", "projects": ["*"], "exp": now + 1800}),
            200,
        ),
    ];
    for (claims, want) in cases {
        let r = gw
            .http()
            .get(gw.url("/api/projects"))
            .bearer_auth(sign(claims.clone()))
            .fetch()
            .await;
        assert_eq!(r.status().as_u16(), want, "{claims}");
    }
}

#[tokio::test]
async fn the_command_log_and_exec_answers_are_bounded() {
    let gw = Gateway::builder()
        .args(&["--max-exec-output", "100000"])
        .start()
        .await
        .unwrap();
    gw.open_project("l").await.unwrap();
    let db = || {
        ["state.sqlite3", "state.sqlite3-wal"]
            .iter()
            .map(|f| {
                std::fs::metadata(gw.data_dir.join(f))
                    .map(|m| m.len())
                    .unwrap_or(0)
            })
            .sum::<u64>()
    };
    let before = db();
    // The reproduction: 20 execs printing 1 MiB each.
    for i in 0..20 {
        let r = gw
            .post("/api/projects/l/exec")
            .json(&json!({"argv": ["sh", "-c", format!("head -c 1048576 /dev/zero | tr '\\0' {}; echo err >&2", (b'a' + i) as char)],
                          "label": format!("big {i}")}))
            .fetch()
            .await;
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["stdout"].as_str().unwrap().len(), 100_000);
        assert_eq!(v["truncated"], true);
        assert_eq!(v["stderr"], "err\n");
    }
    let grown = db() - before;
    assert!(grown < 8 << 20, "the state store grew by {grown} bytes");
    // Pages: the newest first page, then the one before it; each entry cut
    // to its head and tail.
    let page: Vec<Value> = gw
        .get("/api/projects/l/logs?limit=5")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page.len(), 5);
    let labels: Vec<&str> = page.iter().map(|e| e["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["big 15", "big 16", "big 17", "big 18", "big 19"]);
    for e in &page {
        let out = e["stdout"].as_str().unwrap();
        assert!(out.len() <= 64 * 1024 + 64, "{}", out.len());
        assert!(out.contains("bytes left out"));
        assert_eq!(e["truncated"], true);
    }
    let older: Vec<Value> = gw
        .get(&format!(
            "/api/projects/l/logs?limit=5&before={}",
            page[0]["id"]
        ))
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    let labels: Vec<&str> = older.iter().map(|e| e["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["big 10", "big 11", "big 12", "big 13", "big 14"]);
    let all: Vec<Value> = gw
        .get("/api/projects/l/logs")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 20);
    let r = gw.get("/api/projects/l/logs?limit=0").fetch().await;
    assert_eq!(error_of(r).await, (400, "bad_request".to_owned()));
}

#[tokio::test]
async fn the_data_dir_is_private_and_projects_cannot_reach_each_other() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    // The gateway makes its own secret, kept in the data dir.
    let gw = Gateway::builder().without_secret().start().await.unwrap();
    gw.open_project("one").await.unwrap();
    gw.open_project("two").await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&gw.data_dir.join("state.sqlite3")), 0o600);
    assert_eq!(mode(&gw.data_dir.join("secret")), 0o600);
    assert_eq!(mode(&gw.project_dir("one")), 0o700);
    let searchable = if is_root() { 0o711 } else { 0o700 };
    assert_eq!(mode(&gw.data_dir), searchable);
    assert_eq!(mode(&gw.data_dir.join("projects")), searchable);

    // Neither the gateway's nor the agent's command line or environment
    // holds the secret or the agent's token.
    let agent = gw.agent_pid("one").await.unwrap();
    for pid in [agent] {
        for f in ["cmdline", "environ"] {
            let text = std::fs::read(format!("/proc/{pid}/{f}")).unwrap();
            let text = String::from_utf8_lossy(&text);
            assert!(!text.contains(&gw.secret), "/proc/{pid}/{f}");
            assert!(!text.contains("AGENT_TOKEN"), "/proc/{pid}/{f}");
        }
    }
    let exec = |project: &'static str, script: String| {
        let req = gw
            .post(&format!("/api/projects/{project}/exec"))
            .json(&json!({"argv": ["sh", "-c", script]}));
        async move { req.fetch().await.json::<Value>().await.unwrap() }
    };
    let env = exec("one", "env".into()).await;
    let env = env["stdout"].as_str().unwrap();
    assert!(
        !env.contains("AGENT_") && !env.contains("GATEWAY_"),
        "{env}"
    );

    if !is_root() {
        return;
    }
    // A user per project: not root, not the other project's.
    let id_one = exec("one", "id -u".into()).await;
    let id_two = exec("two", "id -u".into()).await;
    let (u1, u2) = (
        id_one["stdout"].as_str().unwrap().trim().to_owned(),
        id_two["stdout"].as_str().unwrap().trim().to_owned(),
    );
    assert!(u1 != "0" && u2 != "0" && u1 != u2, "{u1} {u2}");
    assert_eq!(
        std::fs::metadata(gw.project_dir("one"))
            .unwrap()
            .uid()
            .to_string(),
        u1
    );
    // Reading another project, the gateway's secrets or any agent's memory fails.
    let two_agent = gw.agent_pid("two").await.unwrap();
    let data = gw.data_dir.display().to_string();
    // And another project's hibernation archive.
    gw.open_project("three").await.unwrap();
    let r = gw
        .put("/api/projects/three/files/secret.txt")
        .body("three's secret")
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 200);
    let r = gw.post("/api/projects/three/hibernate").fetch().await;
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let archives = gw.data_dir.join("archives");
    let mut archive_files = Vec::new();
    for e in walk(&archives) {
        if e.is_file() {
            archive_files.push(e.display().to_string());
        }
    }
    assert!(
        !archive_files.is_empty(),
        "no archive under {}",
        archives.display()
    );
    for f in &archive_files {
        let v = exec("one", format!("cat {f} | head -c 100 | wc -c")).await;
        assert_eq!(
            v["stdout"].as_str().unwrap().trim(),
            "0",
            "{f} is readable: {v}"
        );
    }
    for probe in [
        format!("ls {data}/archives"),
        format!("ls {data}/archives/three"),
        format!("ls {data}/projects/two"),
        format!("cat {data}/secret"),
        format!("cat {data}/state.sqlite3"),
        format!("ls {data}/projects"),
        format!("cat /proc/{two_agent}/environ"),
        // Its own agent too: the agent is not dumpable.
        "cat /proc/$PPID/environ".to_owned(),
    ] {
        let v = exec("one", probe.clone()).await;
        assert_ne!(v["exit_code"], 0, "{probe}: {v}");
        assert!(v["stdout"].as_str().unwrap().is_empty(), "{probe}: {v}");
    }
}

/// Every path under `dir`, depth first (as root).
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn a_project_never_serves_another_projects_port_as_its_own() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("a").await.unwrap();
    gw.open_project("b").await.unwrap();
    // a's public container claims a port but nothing listens there yet (a
    // slow install, a crash).
    let port = tests::free_port();
    let r = gw
        .post("/api/projects/a/containers")
        .json(&json!({"name": "web", "port": port, "start": "sleep 600", "public": true}))
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(
        gw.post("/api/projects/a/containers/web/start")
            .fetch()
            .await
            .status()
            .as_u16(),
        200
    );
    // b's private dev server declares the same port: it gets another one,
    // and a's preview never shows b's page.
    let r = gw
        .put("/api/projects/b/files/web/server.py")
        .body(SERVER)
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 200);
    let r = gw
        .post("/api/projects/b/containers")
        .json(
            &json!({"name": "web", "port": port, "start": "exec python3 server.py",
                      "env": {"NAME": "b-private"}}),
        )
        .fetch()
        .await;
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(
        gw.post("/api/projects/b/containers/web/start")
            .fetch()
            .await
            .status()
            .as_u16(),
        200
    );
    let c = browser(&gw, &["web.a.localhost", "web.b.localhost"]);
    let r = eventually(Duration::from_secs(30), "b's dev server", || {
        let req = c
            .get(url(&gw, "web.b.localhost", "/"))
            .bearer_auth(gw.admin_token());
        async move { req.send().await.ok().filter(|r| r.status() == 200) }
    })
    .await
    .unwrap();
    let b_port = r.json::<Value>().await.unwrap()["port"].as_u64().unwrap();
    assert_ne!(b_port, u64::from(port), "b was given a's port");
    let r = c.get(url(&gw, "web.a.localhost", "/")).fetch().await;
    assert_eq!(r.status().as_u16(), 502, "a's preview showed something");
    if is_root() {
        // Another user's server on a's port (here this test's own, as
        // root): not a's, so not served.
        let squatter = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let r = c.get(url(&gw, "web.a.localhost", "/")).fetch().await;
        assert_eq!(error_of(r).await, (404, "not_found".to_owned()));
        let dialled = tokio::time::timeout(Duration::from_millis(300), squatter.accept()).await;
        assert!(dialled.is_err(), "the squatter was dialled");
    }
}

#[tokio::test]
async fn websockets_count_against_the_connection_caps() {
    let gw = Gateway::builder()
        .args(&["--max-connections-per-ip", "4"])
        .start()
        .await
        .unwrap();
    gw.open_project("w").await.unwrap();
    dev_server(&gw, "w", "pub", true).await.unwrap();
    let host = "pub.w.localhost";
    let c = browser(&gw, &[host]);
    wait_status(&c, &url(&gw, host, "/"), None, 200).await;
    drop(c);
    // From an address of their own: the test's other clients keep pooled
    // connections from 127.0.0.1.
    let from = || async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.9:0".parse().unwrap()).unwrap();
        s.connect(gw.addr).await.unwrap()
    };
    let mut sockets = Vec::new();
    for _ in 0..4 {
        let stream = from().await;
        let (ws, _) =
            tokio_tungstenite::client_async(format!("ws://{host}:{}/hmr", gw.addr.port()), stream)
                .await
                .unwrap();
        sockets.push(ws);
    }
    // The four upgraded connections still count: a fifth is refused.
    let mut s = from().await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // Closing one frees its place.
    sockets.pop().unwrap().close(None).await.unwrap();
    let r = eventually(Duration::from_secs(10), "a place to free up", || async {
        let mut s = from().await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        read_until_closed(&mut s, Duration::from_secs(5))
            .await
            .filter(|a| a.starts_with("HTTP/1.1 200"))
    })
    .await;
    assert!(r.is_ok());
}
