//! The fast path's unit tests: its request edits against the proxy's, and
//! the framing it reads from answer heads.

use super::answer::{Framing, edit_answer};
use super::*;
use axum::http::HeaderName;

type Pairs = Vec<(String, String)>;

/// The headers a dev server gets, as sorted (lower-case name, value)
/// pairs, from the fast path's edit of `pairs` and from the proxy's.
fn both_edits(keys: &Keys, pairs: &[(&str, &str)], trusted: bool) -> (Pairs, Pairs) {
    let peer: SocketAddr = "192.0.2.7:50000".parse().unwrap();
    let mut raw = b"GET /p?q=1 HTTP/1.1\r\n".to_vec();
    for (k, v) in pairs {
        push_header(&mut raw, k.as_bytes(), v.as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    assert!(req.parse(&raw).unwrap().is_complete());
    let mut out = Vec::new();
    edit_request(keys, &req, trusted, &peer.ip().to_string(), &mut out);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut sent = httparse::Request::new(&mut headers);
    assert!(sent.parse(&out).unwrap().is_complete(), "{out:?}");
    assert_eq!((sent.method, sent.path), (Some("GET"), Some("/p?q=1")));
    let mut fast: Pairs = sent
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    fast.sort();

    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_bytes(v.as_bytes()).unwrap(),
        );
    }
    let host = map.get(header::HOST).cloned();
    proxy::edit_request(keys, &mut map, host, Some(peer), trusted, false);
    let mut slow: Pairs = map
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    slow.sort();
    (fast, slow)
}

#[test]
fn the_fast_path_edits_request_headers_as_the_proxy_does() {
    let keys = Keys::new(b"0123456789abcdef0123", None);
    let ours = keys.sign("u", &["demo"], 3600).unwrap();
    let bearer = format!("Bearer {ours}");
    let cookie = format!("a=1; devgate_preview={ours}; b=2");
    let cases: Vec<Vec<(&str, &str)>> = vec![
        // A browser's navigation.
        vec![
            ("Host", "web.demo.localhost:8080"),
            ("User-Agent", "Mozilla/5.0"),
            ("Accept", "text/html"),
            ("Connection", "keep-alive"),
            ("Accept-Encoding", "gzip, br"),
        ],
        // The preview cookie among the app's, in two headers.
        vec![
            ("host", "web.demo.localhost"),
            ("Cookie", &cookie),
            ("cookie", "c=3"),
        ],
        // Only the preview cookie.
        vec![
            ("host", "web.demo.localhost"),
            ("cookie", "devgate_preview=x"),
        ],
        // The gateway's token goes, the app's own stays.
        vec![("host", "web.demo.localhost"), ("authorization", &bearer)],
        vec![
            ("host", "web.demo.localhost"),
            ("Authorization", "Bearer the-apps-own"),
        ],
        vec![
            ("host", "web.demo.localhost"),
            ("authorization", "Basic dTpw"),
            ("authorization", &bearer),
        ],
        // What a client says of where it came from, and hop-by-hop ones.
        vec![
            ("host", "web.demo.localhost"),
            ("X-Forwarded-For", "10.9.9.9"),
            ("x-forwarded-for", "10.8.8.8"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Port", "443"),
            ("X-Real-IP", "10.9.9.9"),
            ("Forwarded", "for=10.9.9.9"),
            ("True-Client-IP", "10.9.9.9"),
            ("X-Client-IP", "10.9.9.9"),
            ("Via", "1.1 corp"),
            ("via", "1.0 other"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Proxy-Authorization", "Basic eDp5"),
            ("Proxy-Connection", "keep-alive"),
            ("Trailer", "x"),
        ],
        // Empty and odd values.
        vec![
            ("host", "web.demo.localhost"),
            ("x-forwarded-for", ""),
            ("via", ""),
            ("cookie", ""),
            ("x-empty", ""),
        ],
        vec![
            ("host", "web.demo.localhost"),
            ("x-forwarded-for", "caf\u{e9}"),
            ("via", "1.1 caf\u{e9}"),
        ],
    ];
    for pairs in &cases {
        for trusted in [false, true] {
            let (fast, slow) = both_edits(&keys, pairs, trusted);
            assert_eq!(fast, slow, "{pairs:?}, trusted {trusted}");
        }
    }
    // The edits did something in these cases (the comparison is not of
    // two copies of the input).
    let (fast, _) = both_edits(&keys, &cases[1], false);
    assert!(
        fast.contains(&("cookie".into(), "a=1; b=2; c=3".into())),
        "{fast:?}"
    );
    let (fast, _) = both_edits(&keys, &cases[6], true);
    assert!(
        fast.contains(&("x-forwarded-for".into(), "10.9.9.9, 192.0.2.7".into())),
        "{fast:?}"
    );
    assert!(fast.contains(&("via".into(), "1.1 corp, 1.1 devgate".into())));
    let (fast, _) = both_edits(&keys, &cases[6], false);
    assert!(fast.contains(&("x-forwarded-for".into(), "192.0.2.7".into())));
    assert!(!fast.iter().any(|(k, _)| k == "x-real-ip" || k == "te"));
}

/// Answer heads: the framing read and the head passed on.
fn answer(raw: &str, head_only: bool) -> Result<(Framing, bool, String), ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    assert!(resp.parse(raw.as_bytes()).unwrap().is_complete());
    let mut head = Vec::new();
    edit_answer(&resp, head_only, &mut head)
        .map(|(f, keep)| (f, keep, String::from_utf8(head).unwrap()))
}

#[test]
fn answers_are_framed_as_the_dev_server_framed_them() {
    let (f, keep, head) = answer(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nX-App: 2\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!((f, keep), (Framing::Length(5), true));
    assert_eq!(
        head,
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-App: 2\r\n\r\n"
    );
    // Chunked wins over a length, which is dropped.
    let (f, keep, head) = answer(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nTrailer: x\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!((f, keep), (Framing::Chunked, true));
    assert_eq!(
        head,
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    // Neither: to the close, never kept; HTTP/1.0 is not kept either.
    let (f, keep, _) = answer("HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
    assert_eq!((f, keep), (Framing::Close, false));
    let (f, keep, _) = answer("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false).unwrap();
    assert_eq!((f, keep), (Framing::Length(1), false));
    let (_, keep, _) = answer(
        "HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n",
        false,
    )
    .unwrap();
    assert!(keep);
    let (_, keep, _) = answer(
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n",
        false,
    )
    .unwrap();
    assert!(!keep);
    // No body: HEAD, 204, 304, whatever the headers say.
    for (raw, head_only) in [
        ("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true),
        (
            "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        ),
        (
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
        ),
    ] {
        let (f, keep, _) = answer(raw, head_only).unwrap();
        assert_eq!((f, keep), (Framing::Empty, true), "{raw}");
    }
    // Framings this path does not take (hyper's, then).
    for raw in [
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
    ] {
        assert!(answer(raw, false).is_err(), "{raw}");
    }
    let (f, _, _) = answer("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", false).unwrap();
    assert_eq!(f, Framing::Length(5));
}

#[test]
fn a_head_is_found_by_its_blank_line() {
    assert!(head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(head_complete(b"GET / HTTP/1.1\nHost: a\n\n"));
    assert!(head_complete(b"GET / HTTP/1.1\r\n\r\nGET /next"));
    assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n"));
    assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r"));
    assert!(!head_complete(b""));
}
