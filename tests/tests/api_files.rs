//! File routes through the real gateway and a real agent: read/write with
//! ETag, preconditions and ranges, list/stat/mkdir/move/delete, path escapes
//! (encoded `..`, absolute paths, symlinks out of the project) refused with
//! nothing read or written, and zip archive download and upload.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::Fetch as _;
use tests::gateway::Gateway;
use tests::{error_of, expect_error};

/// A gateway whose file reads go through the agent, as on Kubernetes (the
/// local runtime's default reads files itself).
async fn gateway_reading_through_the_agent() -> Gateway {
    Gateway::builder()
        .arg("--local-reads")
        .arg("false")
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn write_read_etag_range_and_preconditions() {
    etag_range_and_preconditions(Gateway::start().await.unwrap()).await;
}

#[tokio::test]
async fn write_read_etag_range_and_preconditions_through_the_agent() {
    etag_range_and_preconditions(gateway_reading_through_the_agent().await).await;
}

async fn etag_range_and_preconditions(gw: Gateway) {
    gw.open_project("p1").await.unwrap();

    // PUT creates parents and answers etag and size.
    let r = gw
        .put("/api/projects/p1/files/src/deep/a.txt")
        .body("hello world")
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    let etag_header = r.headers()["etag"].to_str().unwrap().to_owned();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["size"], 11);
    // One string, character for character, in the answer and the header: a
    // quoted entity tag, which a client sends back in If-Match as it got it.
    let etag = v["etag"].as_str().unwrap().to_owned();
    assert_eq!(etag, etag_header);
    assert!(etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'));
    // The same string again in stat and in the parent's listing.
    let e: Value = gw
        .get("/api/projects/p1/stat/src/deep/a.txt")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(e["etag"], etag.as_str());
    let l: Value = gw
        .get("/api/projects/p1/list/src/deep")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    let listed = l["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "src/deep/a.txt")
        .unwrap_or_else(|| panic!("a.txt not listed: {l}"));
    assert_eq!(listed["etag"], etag.as_str());
    assert_eq!(
        std::fs::read(gw.project_dir("p1").join("src/deep/a.txt")).unwrap(),
        b"hello world"
    );

    // GET: bytes with ETag, Content-Length, Last-Modified.
    let r = gw
        .get("/api/projects/p1/files/src/deep/a.txt")
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag_header);
    assert_eq!(r.headers()["content-length"], "11");
    assert!(r.headers().contains_key("last-modified"));
    assert_eq!(r.bytes().await.unwrap(), "hello world");

    // Range → 206 with Content-Range.
    let r = gw
        .get("/api/projects/p1/files/src/deep/a.txt")
        .header("range", "bytes=6-")
        .fetch()
        .await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 6-10/11");
    assert_eq!(r.bytes().await.unwrap(), "world");
    let r = gw
        .get("/api/projects/p1/files/src/deep/a.txt")
        .header("range", "bytes=0-4")
        .fetch()
        .await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), "hello");
    let r = gw
        .get("/api/projects/p1/files/src/deep/a.txt")
        .header("range", "bytes=-3")
        .fetch()
        .await;
    assert_eq!(r.bytes().await.unwrap(), "rld");
    let r = gw
        .get("/api/projects/p1/files/src/deep/a.txt")
        .header("range", "bytes=50-")
        .fetch()
        .await;
    assert_eq!(r.status(), 416);

    // If-None-Match on GET → 304.
    let r = gw
        .get("/api/projects/p1/files/src/deep/a.txt")
        .header("if-none-match", &etag_header)
        .fetch()
        .await;
    assert_eq!(r.status(), 304);

    // If-Match with the current etag, as the JSON answer gave it, succeeds;
    // the new etag is again one string in body, header, stat and listing.
    let r = gw
        .put("/api/projects/p1/files/src/deep/a.txt")
        .header("if-match", &etag)
        .body("v2")
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    let v2_header = r.headers()["etag"].to_str().unwrap().to_owned();
    let v2: Value = r.json().await.unwrap();
    assert_eq!(v2["etag"], v2_header.as_str());
    assert_ne!(v2_header, etag_header);
    let e: Value = gw
        .get("/api/projects/p1/stat/src/deep/a.txt")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(e["etag"], v2_header.as_str());
    let r = gw
        .get("/api/projects/p1/files/src/deep/a.txt")
        .fetch()
        .await;
    assert_eq!(r.headers()["etag"].to_str().unwrap(), v2_header);
    // A bare etag (what this gateway answered before) is still understood.
    let r = gw
        .put("/api/projects/p1/files/src/deep/a.txt")
        .header("if-match", v2_header.trim_matches('"'))
        .body("v2")
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    // `If-Match: *`: any current version; a missing file → 412, not made.
    let r = gw
        .put("/api/projects/p1/files/src/deep/a.txt")
        .header("if-match", "*")
        .body("v2")
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    let r = gw
        .put("/api/projects/p1/files/src/deep/missing.txt")
        .header("if-match", "*")
        .body("x")
        .fetch()
        .await;
    assert_eq!(error_of(r).await, (412, "precondition_failed".into()));
    assert!(!gw.project_dir("p1").join("src/deep/missing.txt").exists());
    // With an old one → 412, unchanged.
    let r = gw
        .put("/api/projects/p1/files/src/deep/a.txt")
        .header("if-match", &etag_header)
        .body("v3")
        .fetch()
        .await;
    assert_eq!(error_of(r).await, (412, "precondition_failed".into()));
    assert_eq!(
        std::fs::read(gw.project_dir("p1").join("src/deep/a.txt")).unwrap(),
        b"v2"
    );

    // If-None-Match: * → 412 when the file exists, 200 when it does not.
    let r = gw
        .put("/api/projects/p1/files/src/deep/a.txt")
        .header("if-none-match", "*")
        .body("v4")
        .fetch()
        .await;
    assert_eq!(error_of(r).await, (412, "precondition_failed".into()));
    assert_eq!(
        std::fs::read(gw.project_dir("p1").join("src/deep/a.txt")).unwrap(),
        b"v2"
    );
    let r = gw
        .put("/api/projects/p1/files/new.txt")
        .header("if-none-match", "*")
        .body("n")
        .fetch()
        .await;
    assert_eq!(r.status(), 200);

    // A directory → 400 is_directory; a missing file → 404.
    let r = gw.get("/api/projects/p1/files/src").fetch().await;
    assert_eq!(error_of(r).await, (400, "is_directory".into()));
    let r = gw.get("/api/projects/p1/files/missing.txt").fetch().await;
    assert_eq!(error_of(r).await, (404, "not_found".into()));
    let r = gw.get("/api/projects/p1/files/").fetch().await;
    assert_eq!(error_of(r).await, (400, "is_directory".into()));
    for root in ["/api/projects/p1/files", "/api/projects/p1/files/"] {
        let r = gw.put(root).body("x").fetch().await;
        assert_eq!(
            error_of(r).await,
            (400, "is_directory".into()),
            "PUT {root}"
        );
        let r = gw.delete(root).fetch().await;
        assert_eq!(
            error_of(r).await,
            (400, "bad_request".into()),
            "DELETE {root}"
        );
    }
    assert!(gw.project_dir("p1").is_dir(), "the root is still there");

    // A large body streams through intact.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let r = gw
        .put("/api/projects/p1/files/big.bin")
        .body(big.clone())
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    let got = gw
        .get("/api/projects/p1/files/big.bin")
        .fetch()
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.len(), big.len());
    assert!(got == big);
}

#[tokio::test]
async fn list_stat_mkdir_move_delete() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("p1").await.unwrap();
    for f in ["a/b/c.txt", "a/d.txt", "e.txt"] {
        assert_eq!(
            gw.put(&format!("/api/projects/p1/files/{f}"))
                .body("x")
                .fetch()
                .await
                .status(),
            200
        );
    }

    let v: Value = gw
        .get("/api/projects/p1/list")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    let mut paths: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    paths.sort();
    assert_eq!(paths, ["a", "e.txt"]);
    let v: Value = gw
        .get("/api/projects/p1/list/?depth=3")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 5);
    let v: Value = gw
        .get("/api/projects/p1/list/a")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 2);
    let r = gw.get("/api/projects/p1/list/e.txt").fetch().await;
    assert_eq!(error_of(r).await, (400, "not_a_directory".into()));

    let r = gw.get("/api/projects/p1/stat/nope.txt").fetch().await;
    assert_eq!(error_of(r).await, (404, "not_found".into()));
    let root: Value = gw
        .get("/api/projects/p1/stat/")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(root["kind"], "dir");
    let e: Value = gw
        .get("/api/projects/p1/stat/a/d.txt")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(e["kind"], "file");
    assert_eq!(e["size"], 1);
    assert_eq!(e["mode"], "0644");
    assert!(e["etag"].is_string());
    assert!(chrono_like(e["mtime"].as_str().unwrap()));

    let r = gw.post("/api/projects/p1/mkdir/x/y/z").fetch().await;
    assert_eq!(r.status(), 201);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["kind"], "dir");
    assert!(gw.project_dir("p1").join("x/y/z").is_dir());

    // move: 409 when the target exists, 200 with overwrite.
    let r = gw
        .post("/api/projects/p1/move")
        .json(&json!({"from": "e.txt", "to": "a/d.txt"}))
        .fetch()
        .await;
    assert_eq!(error_of(r).await, (409, "conflict".into()));
    let r = gw
        .post("/api/projects/p1/move")
        .json(&json!({"from": "e.txt", "to": "moved.txt"}))
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["path"], "moved.txt");
    let r = gw
        .post("/api/projects/p1/move")
        .json(&json!({"from": "moved.txt", "to": "a/d.txt", "overwrite": true}))
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    assert!(!gw.project_dir("p1").join("moved.txt").exists());

    // delete: non-empty dir needs recursive.
    let r = gw.delete("/api/projects/p1/files/a").fetch().await;
    assert_eq!(error_of(r).await, (409, "directory_not_empty".into()));
    assert!(gw.project_dir("p1").join("a/b/c.txt").exists());
    let r = gw
        .delete("/api/projects/p1/files/a?recursive=true")
        .fetch()
        .await;
    assert_eq!(r.status(), 204);
    assert!(!gw.project_dir("p1").join("a").exists());
    let r = gw.delete("/api/projects/p1/files/a").fetch().await;
    assert_eq!(r.status(), 404);
}

fn chrono_like(s: &str) -> bool {
    s.len() >= 20 && s.as_bytes()[4] == b'-' && s.contains('T')
}

#[tokio::test]
async fn path_escapes_are_refused_and_touch_nothing() {
    path_escapes(Gateway::start().await.unwrap()).await;
}

#[tokio::test]
async fn path_escapes_are_refused_through_the_agent_too() {
    path_escapes(gateway_reading_through_the_agent().await).await;
}

async fn path_escapes(gw: Gateway) {
    gw.open_project("p1").await.unwrap();
    // A secret beside the project folder, and one far outside.
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    let beside = gw.data_dir.join("projects").join("secret.txt");
    std::fs::write(&beside, "beside").unwrap();

    let escapes = [
        "/api/projects/p1/files/%2e%2e/secret.txt",
        "/api/projects/p1/files/%2E%2E/secret.txt",
        "/api/projects/p1/files/a/%2e%2e/%2e%2e/secret.txt",
        "/api/projects/p1/files/..%2fsecret.txt",
        "/api/projects/p1/files/../secret.txt",
        "/api/projects/p1/files/%2fetc%2fpasswd",
        "/api/projects/p1/files//etc/passwd",
        "/api/projects/p1/files/a%00b",
    ];
    for path in escapes {
        let (status, body) = gw.raw(&gw.raw_request("GET", path, b"")).await.unwrap();
        assert_eq!(status, 400, "GET {path}: {body}");
        assert!(body.contains("path_outside_project"), "GET {path}: {body}");
        let (status, body) = gw
            .raw(&gw.raw_request("PUT", path, b"pwned"))
            .await
            .unwrap();
        assert_eq!(status, 400, "PUT {path}: {body}");
        assert!(body.contains("path_outside_project"), "PUT {path}: {body}");
    }
    assert_eq!(std::fs::read_to_string(&beside).unwrap(), "beside");

    // Symlinks whose target lies outside the root: a file and a directory.
    let ln = json!({"argv": ["sh", "-c", format!("ln -s {} out.txt && ln -s {} outdir", secret.display(), outside.path().display())]});
    let r = gw.post("/api/projects/p1/exec").json(&ln).fetch().await;
    assert_eq!(r.json::<Value>().await.unwrap()["exit_code"], 0);
    for path in ["out.txt", "outdir/secret.txt", "outdir/new.txt"] {
        let r = gw
            .get(&format!("/api/projects/p1/files/{path}"))
            .fetch()
            .await;
        assert_eq!(
            error_of(r).await,
            (400, "path_outside_project".into()),
            "GET {path}"
        );
        let r = gw
            .put(&format!("/api/projects/p1/files/{path}"))
            .body("pwned")
            .fetch()
            .await;
        assert_eq!(
            error_of(r).await,
            (400, "path_outside_project".into()),
            "PUT {path}"
        );
    }
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "top secret");
    assert!(!outside.path().join("new.txt").exists());

    // Move and mkdir check both paths too.
    let r = gw
        .post("/api/projects/p1/move")
        .json(&json!({"from": "../x", "to": "y"}))
        .fetch()
        .await;
    assert_eq!(error_of(r).await, (400, "path_outside_project".into()));
    let r = gw
        .post("/api/projects/p1/move")
        .json(&json!({"from": "out.txt", "to": "/tmp/stolen"}))
        .fetch()
        .await;
    assert_eq!(error_of(r).await, (400, "path_outside_project".into()));
    let (status, _) = gw
        .raw(&gw.raw_request("POST", "/api/projects/p1/mkdir/%2e%2e/evil", b""))
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(!gw.data_dir.join("projects/evil").exists());
}

fn zip_of(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        for (name, data, mode) in entries {
            let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
            z.start_file(*name, opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
    }
    buf.into_inner()
}

#[tokio::test]
async fn archive_download_and_upload() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("p1").await.unwrap();

    let good = zip_of(&[
        ("src/main.rs", b"fn main() {}", 0o644),
        ("run.sh", b"#!/bin/sh\necho ok\n", 0o755),
    ]);
    let r = gw.post("/api/projects/p1/archive").body(good).fetch().await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["files"], 2);
    assert_eq!(v["bytes"], 12 + 18, "the entries' sizes");
    assert_eq!(
        std::fs::read(gw.project_dir("p1").join("src/main.rs")).unwrap(),
        b"fn main() {}"
    );
    let mode = std::fs::metadata(gw.project_dir("p1").join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);

    // An entry that would land outside: 400 and nothing written, not even the good entries.
    let bad = zip_of(&[
        ("fine.txt", b"fine", 0o644),
        ("../escaped.txt", b"evil", 0o644),
    ]);
    let r = gw.post("/api/projects/p1/archive").body(bad).fetch().await;
    assert_eq!(r.status(), 400);
    assert!(!gw.project_dir("p1").join("fine.txt").exists());
    assert!(!gw.data_dir.join("projects/escaped.txt").exists());

    // Download: a zip with the files (node_modules excluded), token in the query allowed.
    std::fs::create_dir_all(gw.project_dir("p1").join("node_modules/x")).unwrap();
    std::fs::write(gw.project_dir("p1").join("node_modules/x/i.js"), "x").unwrap();
    let r = gw
        .http()
        .get(gw.url(&format!(
            "/api/projects/p1/archive?token={}",
            gw.token(&["p1"])
        )))
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/zip");
    let bytes = r.bytes().await.unwrap();
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let names: Vec<String> = (0..z.len())
        .map(|i| z.by_index(i).unwrap().name().to_owned())
        .collect();
    assert!(names.iter().any(|n| n == "src/main.rs"), "{names:?}");
    assert!(names.iter().any(|n| n == "run.sh"), "{names:?}");
    assert!(
        !names.iter().any(|n| n.contains("node_modules")),
        "{names:?}"
    );
    let f = z.by_name("run.sh").unwrap();
    assert_eq!(f.unix_mode().unwrap() & 0o777, 0o755);

    // ?token= is not accepted on ordinary routes.
    let r = gw
        .http()
        .get(gw.url(&format!(
            "/api/projects/p1/files/run.sh?token={}",
            gw.token(&["p1"])
        )))
        .fetch()
        .await;
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn file_routes_need_an_active_project() {
    let gw = Gateway::start().await.unwrap();
    let r = gw
        .post("/api/projects")
        .json(&json!({"id": "idle"}))
        .fetch()
        .await;
    assert_eq!(r.status(), 201);
    let r = gw
        .put("/api/projects/idle/files/a.txt")
        .body("x")
        .fetch()
        .await;
    assert_eq!(error_of(r).await, (409, "project_not_active".into()));
    let r = gw.get("/api/projects/idle/list").fetch().await;
    assert_eq!(error_of(r).await, (409, "project_not_active".into()));
    // Every other file, exec, terminal and watch route of a project that was
    // created but never opened.
    let others = [
        gw.get("/api/projects/idle/files/a.txt"),
        gw.delete("/api/projects/idle/files/a.txt"),
        gw.get("/api/projects/idle/stat/a.txt"),
        gw.post("/api/projects/idle/mkdir/d"),
        gw.post("/api/projects/idle/move")
            .json(&json!({"from": "a.txt", "to": "b.txt"})),
        gw.get("/api/projects/idle/archive"),
        gw.post("/api/projects/idle/exec")
            .json(&json!({"argv": ["true"]})),
    ];
    for req in others {
        let r = req.fetch().await;
        let what = format!("{} {}", r.url().path(), r.status());
        assert_eq!(
            error_of(r).await,
            (409, "project_not_active".into()),
            "{what}"
        );
    }
    for route in ["terminal", "watch"] {
        let url = format!(
            "ws://{}/api/projects/idle/{route}?token={}",
            gw.addr,
            gw.admin_token()
        );
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 409, "{route}")
            }
            other => panic!("{route}: expected 409, got {:?}", other.map(|_| ())),
        }
    }
    let r = gw.get("/api/projects/nope/files/a.txt").fetch().await;
    assert_eq!(error_of(r).await, (404, "not_found".into()));
    let r = gw.get("/api/projects/Bad_Id/files/a.txt").fetch().await;
    assert_eq!(error_of(r).await, (400, "bad_request".into()));
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_write_nothing() {
    let gw = Gateway::builder()
        .arg("--max-body-bytes")
        .arg("1000")
        .start()
        .await
        .unwrap();
    gw.open_project("p1").await.unwrap();
    // Declared length over the limit.
    let r = gw
        .put("/api/projects/p1/files/big.txt")
        .body(vec![b'x'; 2000])
        .fetch()
        .await;
    assert_eq!(error_of(r).await, (413, "payload_too_large".into()));
    assert!(!gw.project_dir("p1").join("big.txt").exists());
    // Chunked, so only counting finds out: the write is cancelled, nothing lands.
    let r = reqwest::Client::new()
        .put(gw.url("/api/projects/p1/files/keep.txt"))
        .bearer_auth(gw.admin_token())
        .body("old")
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b'y'; 300])).collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    // The gateway answers before the body is done and drops the rest; the
    // client may see that as a reset instead of the 413, both are a refusal.
    let fresh = reqwest::Client::new();
    if let Ok(r) = fresh
        .put(gw.url("/api/projects/p1/files/keep.txt"))
        .bearer_auth(gw.admin_token())
        .body(body)
        .send()
        .await
    {
        assert_eq!(r.status(), 413);
    }
    assert_eq!(
        std::fs::read_to_string(gw.project_dir("p1").join("keep.txt")).unwrap(),
        "old"
    );
    // The cancelled write's temporary file goes away once the agent sees the cancel.
    let dir = gw.project_dir("p1");
    tests::eventually(std::time::Duration::from_secs(10), "no leftovers", || {
        let dir = dir.clone();
        async move {
            let n = std::fs::read_dir(&dir).ok()?.count();
            (n == 1).then_some(())
        }
    })
    .await
    .unwrap();
    // Under the limit is fine (a new connection: the last one was cut).
    let r = reqwest::Client::new()
        .put(gw.url("/api/projects/p1/files/small.txt"))
        .bearer_auth(gw.admin_token())
        .body(vec![b'z'; 999])
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
}

/// Many concurrent reads over one agent connection all answer 200 with the
/// whole body. (The benchmark once saw rare 500s here: each GET dropped its
/// agent call before the trailers, resetting an HTTP/2 stream, until h2 closed
/// the connection. The fix in `agent_client::read` reads to the end; this
/// bounded test did not reproduce that rare race before the fix, so it guards
/// the read path in general, not that race.)
#[tokio::test]
async fn many_reads_keep_the_agent_connection() {
    let gw = gateway_reading_through_the_agent().await;
    gw.open_project("p1").await.unwrap();
    let body = "x".repeat(4096);
    let r = gw
        .put("/api/projects/p1/files/f.txt")
        .body(body.clone())
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    // Bounded: 1,504 reads, 16 at a time.
    let gw = std::sync::Arc::new(gw);
    let mut failures = Vec::new();
    for round in 0..(1500 / 16) {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let gw = gw.clone();
            set.spawn(async move {
                let r = gw.get("/api/projects/p1/files/f.txt").fetch().await;
                let status = r.status();
                let len = r.bytes().await.map(|b| b.len()).unwrap_or(0);
                (status, len)
            });
        }
        while let Some(res) = set.join_next().await {
            let (status, len) = res.unwrap();
            if status != 200 || len != 4096 {
                failures.push((round, status, len));
            }
        }
    }
    assert!(failures.is_empty(), "failed reads: {failures:?}");
}

/// The local runtime's reads do not wait on the agent: with the project's
/// agent stopped (SIGSTOP), a GET still answers the file's bytes and etag,
/// while a write (always through the agent) waits until it runs again.
#[tokio::test]
async fn local_reads_skip_the_agent() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("p1").await.unwrap();
    let r = gw
        .put("/api/projects/p1/files/a/b.txt")
        .body("local bytes")
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let agent_pid = gw.agent_pid("p1").await.unwrap().to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &agent_pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {agent_pid}");
    };
    signal("-STOP");
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        gw.get("/api/projects/p1/files/a/b.txt").send(),
    )
    .await;
    let write = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        gw.put("/api/projects/p1/files/c.txt").body("x").send(),
    )
    .await;
    signal("-CONT");
    let r = read.expect("a read waited on the stopped agent").unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(r.text().await.unwrap(), "local bytes");
    assert!(write.is_err(), "a write answered without the agent");
    // Ranges, 304 and errors keep the agent's answers.
    let r = gw
        .get("/api/projects/p1/files/a/b.txt")
        .header("range", "bytes=6-")
        .fetch()
        .await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.text().await.unwrap(), "bytes");
    let r = gw
        .get("/api/projects/p1/files/a/b.txt")
        .header("if-none-match", &etag)
        .fetch()
        .await;
    assert_eq!(r.status(), 304);
    let r = gw.get("/api/projects/p1/files/a").fetch().await;
    expect_error(r, 400, "is_directory").await;
    let r = gw.get("/api/projects/p1/files/nope").fetch().await;
    expect_error(r, 404, "not_found").await;
}

/// Rewrites the declared uncompressed size of entry `name` in both its
/// central directory record and its local header.
fn lie_about_size(zip: &mut [u8], name: &str, size: u32) {
    let mut patched = 0;
    for at in 0..zip.len().saturating_sub(46) {
        let (name_len_at, name_at, size_at) = match zip[at..at + 4] {
            [0x50, 0x4b, 0x01, 0x02] => (at + 28, at + 46, at + 24),
            [0x50, 0x4b, 0x03, 0x04] => (at + 26, at + 30, at + 22),
            _ => continue,
        };
        let len = u16::from_le_bytes([zip[name_len_at], zip[name_len_at + 1]]) as usize;
        if zip.get(name_at..name_at + len) == Some(name.as_bytes()) {
            zip[size_at..size_at + 4].copy_from_slice(&size.to_le_bytes());
            patched += 1;
        }
    }
    assert_eq!(patched, 2);
}

/// `copies` entries of `each` zero bytes, compressed once and raw-copied:
/// honest sizes, cheap to make.
fn zeros_zip(copies: usize, each: usize) -> Vec<u8> {
    let mut one = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    one.start_file("z", zip::write::SimpleFileOptions::default())
        .unwrap();
    one.write_all(&vec![0u8; each]).unwrap();
    let one = one.finish().unwrap().into_inner();
    let mut src = zip::ZipArchive::new(std::io::Cursor::new(one)).unwrap();
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..copies {
        let f = src.by_index_raw(0).unwrap();
        w.raw_copy_file_rename(f, format!("{i:06}")).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Issue 10's and issue 9's reproductions through the API: a zip entry whose
/// declared size lies no longer truncates an existing file (400, "PRECIOUS"
/// intact, no staging left); a 1 MB zip of 1 GiB and a 9 MB zip of 100,000
/// entries get 413 `payload_too_large` with nothing written, and the agent's
/// peak memory stays far below the 85 MB the entries used to cost.
#[tokio::test]
async fn archive_upload_is_all_or_nothing_and_capped() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("up").await.unwrap();
    let dir = gw.project_dir("up");
    std::fs::write(dir.join("keep.txt"), "PRECIOUS").unwrap();
    let listing = |dir: &std::path::Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let before = listing(&dir);

    let big = b"more than declared ".repeat(1000);
    let mut liar = zip_of(&[
        ("keep.txt", b"overwritten", 0o644),
        ("new/file.txt", b"new", 0o644),
        ("liar.bin", &big, 0o644),
    ]);
    lie_about_size(&mut liar, "liar.bin", 3);
    let r = gw.post("/api/projects/up/archive").body(liar).fetch().await;
    assert_eq!(error_of(r).await, (400, "bad_request".into()));
    assert_eq!(std::fs::read(dir.join("keep.txt")).unwrap(), b"PRECIOUS");
    assert_eq!(listing(&dir), before, "nothing added, no staging left");

    let agent = gw.agent_pid("up").await.unwrap();
    let rss_before = proc_status_kib(agent, "VmRSS:");

    // 1,024 entries of 1 MiB of zeros: 1 GiB from about a megabyte.
    let bomb = zeros_zip(1024, 1 << 20);
    assert!(bomb.len() < 1_500_000, "{}", bomb.len());
    let r = gw.post("/api/projects/up/archive").body(bomb).fetch().await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error"]["code"], "payload_too_large");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than 100 times"),
        "{v}"
    );
    assert_eq!(listing(&dir), before);

    // 100,000 empty entries, about 9 MB.
    let many = zeros_zip(100_000, 0);
    assert!(
        many.len() > 8_000_000 && many.len() < 10_000_000,
        "{}",
        many.len()
    );
    let r = gw.post("/api/projects/up/archive").body(many).fetch().await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("100000 entries; at most 50000"),
        "{v}"
    );
    assert_eq!(listing(&dir), before);
    let peak = proc_status_kib(agent, "VmHWM:");
    eprintln!("agent RSS before {rss_before} KiB, peak after both refusals {peak} KiB");
    assert!(
        peak < rss_before + 40 * 1024,
        "agent peak {peak} KiB vs {rss_before} KiB before"
    );

    // Within the caps the same kind of archive extracts.
    let r = gw
        .post("/api/projects/up/archive")
        .body(zeros_zip(3, 1000))
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(std::fs::read(dir.join("000002")).unwrap(), vec![0u8; 1000]);
}

/// `GET /archive` leaves out `.git`, `node_modules`, `__pycache__` and links
/// out of the project; `?all=true` has everything, links as links.
#[tokio::test]
async fn archive_download_of_everything() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("all").await.unwrap();
    let dir = gw.project_dir("all");
    for (path, data) in [
        (".git/HEAD", "ref: refs/heads/main\n"),
        ("node_modules/x/i.js", "x"),
        ("__pycache__/m.pyc", "pyc"),
        ("src/a.txt", "a"),
    ] {
        std::fs::create_dir_all(dir.join(path).parent().unwrap()).unwrap();
        std::fs::write(dir.join(path), data).unwrap();
    }
    std::os::unix::fs::symlink("/etc/hostname", dir.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("src/a.txt", dir.join("in-link")).unwrap();
    let entries = |q: &'static str| {
        let gw = &gw;
        async move {
            let r = gw
                .get(&format!("/api/projects/all/archive{q}"))
                .fetch()
                .await;
            assert_eq!(r.status(), 200, "{q}");
            let bytes = r.bytes().await.unwrap();
            let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
            let mut out = std::collections::BTreeMap::new();
            for i in 0..z.len() {
                let mut f = z.by_index(i).unwrap();
                let mut body = String::new();
                if !f.is_dir() {
                    std::io::Read::read_to_string(&mut f, &mut body).unwrap();
                }
                out.insert(f.name().to_owned(), (f.is_symlink(), body));
            }
            out
        }
    };
    let default = entries("").await;
    assert!(default.contains_key("src/a.txt"), "{default:?}");
    assert_eq!(default["in-link"], (true, "src/a.txt".to_owned()));
    for left_out in [
        ".git/HEAD",
        "node_modules/x/i.js",
        "__pycache__/m.pyc",
        "abs-link",
    ] {
        assert!(!default.contains_key(left_out), "{left_out}: {default:?}");
    }
    let all = entries("?all=true").await;
    assert_eq!(
        all[".git/HEAD"],
        (false, "ref: refs/heads/main\n".to_owned())
    );
    assert_eq!(all["node_modules/x/i.js"], (false, "x".to_owned()));
    assert_eq!(all["__pycache__/m.pyc"], (false, "pyc".to_owned()));
    assert_eq!(all["abs-link"], (true, "/etc/hostname".to_owned()));
    assert_eq!(all["in-link"], (true, "src/a.txt".to_owned()));
    let r = gw.get("/api/projects/all/archive?all=maybe").fetch().await;
    assert_eq!(error_of(r).await, (400, "bad_request".into()));
}
