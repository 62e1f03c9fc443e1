//! Project routes on the real gateway: create/list/get/open/hibernate/delete
//! with their error answers, the SSE event stream, operations endpoints,
//! bundled templates, and a gateway restart that keeps every project.

use std::time::Duration;

use serde_json::{Value, json};
use tests::Fetch as _;
use tests::gateway::Gateway;
use tests::sse::next_event;

#[tokio::test]
async fn project_lifecycle_and_errors() {
    let gw = Gateway::start().await.unwrap();

    let r = gw
        .post("/api/projects")
        .json(&json!({"id": "demo", "name": "Demo"}))
        .fetch()
        .await;
    assert_eq!(r.status(), 201);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["id"], "demo");
    assert_eq!(p["name"], "Demo");
    assert_eq!(p["status"], "created");
    assert_eq!(p["containers"], json!([]));

    // Exists → 409; bad ids → 400; bad body → 400.
    let r = gw
        .post("/api/projects")
        .json(&json!({"id": "demo"}))
        .fetch()
        .await;
    assert_eq!(r.status(), 409);
    for bad in ["Demo", "1abc", "a_b", "-a", "a-", &"a".repeat(41), ""] {
        let r = gw
            .post("/api/projects")
            .json(&json!({"id": bad}))
            .fetch()
            .await;
        assert_eq!(r.status(), 400, "id {bad:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "bad_request");
        assert!(v["error"]["message"].is_string());
    }
    let r = gw.post("/api/projects").body("not json").fetch().await;
    assert_eq!(r.status(), 400);
    assert_eq!(gw.get("/api/projects/Bad").fetch().await.status(), 400);
    assert_eq!(gw.get("/api/projects/nope").fetch().await.status(), 404);
    assert_eq!(
        gw.post("/api/projects/nope/open").fetch().await.status(),
        404
    );

    // Open: active, idempotent; the folder exists.
    let r = gw.post("/api/projects/demo/open").fetch().await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "active");
    let r = gw.post("/api/projects/demo/open").fetch().await;
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "active");
    assert!(gw.project_dir("demo").is_dir());

    let list: Vec<Value> = gw.get("/api/projects").fetch().await.json().await.unwrap();
    assert_eq!(list.len(), 1);

    // Hibernate (to the default archive folder) and open again.
    gw.put("/api/projects/demo/files/keep.txt")
        .body("kept")
        .fetch()
        .await;
    let r = gw.post("/api/projects/demo/hibernate").fetch().await;
    assert_eq!(r.status(), 200);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["status"], "hibernated");
    assert!(p["snapshot"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(p["snapshot"]["id"].as_str().unwrap().len(), 64);
    assert_eq!(p["archive"], p["snapshot"], "the old name, for one release");
    assert!(p["hibernated_at"].is_string());
    assert!(!gw.project_dir("demo").exists(), "the environment is gone");
    let archives = gw.data_dir.join("archives/demo");
    assert!(
        std::fs::read_dir(&archives).unwrap().next().is_some(),
        "the archive is in {}",
        archives.display()
    );
    let r = gw.get("/api/projects/demo/files/keep.txt").fetch().await;
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "project_not_active"
    );
    let r = gw.post("/api/projects/demo/open").fetch().await;
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "active");
    let r = gw.get("/api/projects/demo/files/keep.txt").fetch().await;
    assert_eq!(r.text().await.unwrap(), "kept");

    // Delete: 204, then 404; folder and archives gone.
    let r = gw.delete("/api/projects/demo").fetch().await;
    assert_eq!(r.status(), 204);
    assert_eq!(gw.get("/api/projects/demo").fetch().await.status(), 404);
    assert!(!gw.project_dir("demo").exists());
    assert!(!archives.exists() || std::fs::read_dir(&archives).unwrap().next().is_none());
}

#[tokio::test]
async fn archive_versions_are_kept_up_to_the_limit() {
    let gw = Gateway::builder()
        .arg("--archive-keep")
        .arg("2")
        // Unreferenced packs go once older than the grace period.
        .arg("--snapshot-gc-grace")
        .arg("0s")
        .start()
        .await
        .unwrap();
    gw.open_project("v").await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        gw.put("/api/projects/v/files/n.txt")
            .body(format!("{i}"))
            .fetch()
            .await;
        let r = gw.post("/api/projects/v/hibernate").fetch().await;
        assert_eq!(r.status(), 200);
        let p: Value = r.json().await.unwrap();
        ids.push(p["snapshot"]["id"].as_str().unwrap().to_owned());
        let r = gw.post("/api/projects/v/open").fetch().await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            gw.get("/api/projects/v/files/n.txt")
                .fetch()
                .await
                .text()
                .await
                .unwrap(),
            format!("{i}")
        );
    }
    let names = |dir: &str| {
        let mut v: Vec<String> = std::fs::read_dir(gw.data_dir.join("archives/v").join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let mut kept = ids[1..].to_vec();
    kept.sort();
    assert_eq!(names("snapshots"), kept);
    // Each version added two packs (n.txt changed, and so did the one piece
    // of its small manifest); the first one's are used by no kept snapshot,
    // so they went with its manifest.
    assert_eq!(names("packs").len(), 4, "{:?}", names("packs"));
}

#[tokio::test]
async fn events_stream_lifecycle_and_command_log() {
    let gw = Gateway::start().await.unwrap();
    gw.post("/api/projects")
        .json(&json!({"id": "ev"}))
        .fetch()
        .await;
    let r = gw.get("/api/projects/ev/events").fetch().await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut s = r.bytes_stream();
    let mut buf = String::new();
    let (_, v) = next_event(&mut s, &mut buf, |e, _| e == "project").await;
    assert_eq!(v["status"], "created");

    gw.post("/api/projects/ev/open").fetch().await;
    next_event(&mut s, &mut buf, |e, v| {
        e == "status" && v["status"] == "active"
    })
    .await;

    let r = gw
        .post("/api/projects/ev/exec")
        .json(&json!({"argv": ["echo", "from-exec"], "label": "greet"}))
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    let (_, v) = next_event(&mut s, &mut buf, |e, _| e == "log").await;
    assert_eq!(v["label"], "greet");
    assert_eq!(v["stdout"], "from-exec\n");

    gw.post("/api/projects/ev/hibernate").fetch().await;
    next_event(&mut s, &mut buf, |e, v| {
        e == "progress" && v["step"] == "verify"
    })
    .await;
    next_event(&mut s, &mut buf, |e, v| {
        e == "status" && v["status"] == "hibernated"
    })
    .await;
}

#[tokio::test]
async fn exec_and_command_log() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("x").await.unwrap();
    gw.post("/api/projects/x/mkdir/sub").fetch().await;
    let r = gw
        .post("/api/projects/x/exec")
        .json(&json!({"argv": ["sh", "-c", "pwd; echo $GREETING; cat; echo err >&2; exit 3"], "cwd": "sub", "env": {"GREETING": "hi"}, "stdin": "in\n"}))
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["exit_code"], 3);
    let out = v["stdout"].as_str().unwrap();
    assert!(out.ends_with("/sub\nhi\nin\n"), "{out}");
    assert_eq!(v["stderr"], "err\n");
    assert!(v["duration_ms"].is_u64());

    let r = gw
        .post("/api/projects/x/exec")
        .json(&json!({"argv": ["sleep", "5"], "timeout_s": 1}))
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["exit_code"], -1);

    for bad in [
        json!({"argv": []}),
        json!({"argv": ["ls"], "cwd": "../.."}),
        json!({"nope": 1}),
    ] {
        let r = gw.post("/api/projects/x/exec").json(&bad).fetch().await;
        assert_eq!(r.status(), 400, "{bad}");
    }

    let logs: Vec<Value> = gw
        .get("/api/projects/x/logs")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[0]["exit_code"], 3);
    assert_eq!(
        logs[0]["command"],
        "sh -c 'pwd; echo $GREETING; cat; echo err >&2; exit 3'"
    );
    assert_eq!(logs[0]["stderr"], "err\n");
    for k in [
        "ts",
        "label",
        "command",
        "exit_code",
        "duration_ms",
        "stdout",
        "stderr",
    ] {
        assert!(logs[0].get(k).is_some(), "{k}");
    }
    assert!(logs[0]["ts"].as_str().unwrap() <= logs[1]["ts"].as_str().unwrap());
}

#[tokio::test]
async fn operations_endpoints_and_templates() {
    let templates = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(templates.path().join("hello/src")).unwrap();
    std::fs::write(templates.path().join("hello/src/index.txt"), "hi").unwrap();
    let gw = Gateway::builder()
        .arg("--templates-dir")
        .arg(templates.path().to_str().unwrap())
        .start()
        .await
        .unwrap();
    // `gw.http()` sends no token: operations endpoints need none.
    assert_eq!(
        gw.http().get(gw.url("/healthz")).fetch().await.status(),
        200
    );
    assert_eq!(gw.http().get(gw.url("/readyz")).fetch().await.status(), 200);
    gw.get("/api/projects").fetch().await;
    let m = gw.metrics().await.unwrap();
    assert!(
        m.contains(
            "gateway_http_requests_total{method=\"GET\",route=\"/api/projects\",status=\"200\"}"
        ),
        "{m}"
    );
    assert!(m.contains("gateway_http_request_duration_seconds"));
    assert!(m.contains("gateway_open_terminals"));

    let t: Vec<Value> = gw.get("/api/templates").fetch().await.json().await.unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0]["name"], "hello");
    assert!(
        t[0]["git"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
    assert_eq!(
        gw.http()
            .get(gw.url("/api/templates"))
            .fetch()
            .await
            .status(),
        401
    );

    // The demo URL with an admin token is printed in local mode.
    assert!(
        gw.stdout_lines().iter().any(|l| l.contains("/?token=")),
        "{:?}",
        gw.stdout_lines()
    );
}

#[tokio::test]
async fn restart_keeps_projects() {
    let mut gw = Gateway::start().await.unwrap();
    gw.open_project("alive").await.unwrap();
    gw.put("/api/projects/alive/files/a.txt")
        .body("A")
        .fetch()
        .await;
    gw.open_project("sleepy").await.unwrap();
    gw.put("/api/projects/sleepy/files/s.txt")
        .body("S")
        .fetch()
        .await;
    assert_eq!(
        gw.post("/api/projects/sleepy/hibernate")
            .fetch()
            .await
            .status(),
        200
    );
    gw.post("/api/projects")
        .json(&json!({"id": "fresh"}))
        .fetch()
        .await;

    gw.restart().await.unwrap();

    let list: Vec<Value> = gw.get("/api/projects").fetch().await.json().await.unwrap();
    let status = |id: &str| list.iter().find(|p| p["id"] == id).unwrap()["status"].clone();
    assert_eq!(status("alive"), "active");
    assert_eq!(status("sleepy"), "hibernated");
    assert_eq!(status("fresh"), "created");
    // The active one has an agent again, with its files.
    let r = gw.get("/api/projects/alive/files/a.txt").fetch().await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "A");
    let r = gw
        .post("/api/projects/alive/exec")
        .json(&json!({"argv": ["cat", "a.txt"]}))
        .fetch()
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["stdout"], "A");
    // The hibernated one restores from its archive.
    gw.post("/api/projects/sleepy/open").fetch().await;
    assert_eq!(
        gw.get("/api/projects/sleepy/files/s.txt")
            .fetch()
            .await
            .text()
            .await
            .unwrap(),
        "S"
    );
}

#[tokio::test]
async fn agents_end_with_the_gateway() {
    let mut gw = Gateway::start().await.unwrap();
    gw.open_project("orphan").await.unwrap();
    let agent_pid = gw.agent_pid("orphan").await.unwrap();
    gw.kill();
    tests::eventually(
        Duration::from_secs(30),
        "the agent to exit",
        || async move {
            // Gone, or a zombie nobody reaped yet.
            match std::fs::read_to_string(format!("/proc/{agent_pid}/stat")) {
                Err(_) => Some(()),
                Ok(stat) => stat
                    .split(") ")
                    .nth(1)
                    .filter(|rest| rest.starts_with('Z'))
                    .map(|_| ()),
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn bad_config_is_one_line_and_a_non_zero_exit() {
    let data = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let cases: Vec<Vec<String>> = vec![
        vec!["--archive".into(), "ftp://nope".into()],
        vec!["--runtime".into(), "docker".into()],
        vec!["--listen".into(), "not-an-address".into()],
        vec!["--preview-domain".into(), "bad domain".into()],
        vec!["--listen".into(), busy_addr],
    ];
    for args in cases {
        let out = std::process::Command::new(tests::bin("gateway"))
            .arg("--data-dir")
            .arg(data.path())
            .args(&args)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("gateway: "), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[tokio::test]
async fn a_made_secret_is_kept_across_restarts() {
    let mut gw = Gateway::builder().without_secret().start().await.unwrap();
    let token = gw.admin_token();
    assert_eq!(
        gw.http()
            .get(gw.url("/api/projects"))
            .bearer_auth(&token)
            .fetch()
            .await
            .status(),
        200
    );
    gw.restart().await.unwrap();
    // The same secret: an old token still works.
    assert_eq!(
        gw.http()
            .get(gw.url("/api/projects"))
            .bearer_auth(&token)
            .fetch()
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn restore_starts_from_a_clean_folder() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("clean").await.unwrap();
    gw.put("/api/projects/clean/files/src/a.txt")
        .body("archived")
        .fetch()
        .await;
    assert_eq!(
        gw.post("/api/projects/clean/hibernate")
            .fetch()
            .await
            .status(),
        200
    );
    // What a teardown cut short by a crash would leave behind.
    std::fs::create_dir_all(gw.project_dir("clean").join("src")).unwrap();
    std::fs::write(gw.project_dir("clean").join("src/a.txt"), "half-removed").unwrap();
    std::fs::write(gw.project_dir("clean").join("junk.txt"), "junk").unwrap();
    assert_eq!(
        gw.post("/api/projects/clean/open").fetch().await.status(),
        200
    );
    assert_eq!(
        std::fs::read_to_string(gw.project_dir("clean").join("src/a.txt")).unwrap(),
        "archived"
    );
    assert!(!gw.project_dir("clean").join("junk.txt").exists());
}

#[tokio::test]
async fn every_error_has_the_json_body() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("j").await.unwrap();
    let cases = [
        gw.req(reqwest::Method::PATCH, "/api/projects/j"),
        gw.get("/api/projects/j/list?depth=lots"),
        gw.get("/api/nothing-here"),
        gw.post("/api/projects/j/containers/web/logs"),
    ];
    for req in cases {
        let r = req.fetch().await;
        let status = r.status();
        assert!(status.is_client_error(), "{status}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["code"].is_string(), "{v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
}

/// The in-cluster shape of `k8s/e2e.sh` points the tests at a gateway that
/// is not theirs (`E2E_GATEWAY_URL`), and each test deletes every project on
/// it first: only when `E2E_GATEWAY_WIPE=yes` says they may go. Without it a
/// gateway holding projects fails the test, naming them, and keeps them.
#[tokio::test]
async fn a_gateway_that_is_not_the_tests_keeps_its_projects_unless_told() {
    // A gateway of this test's own, always (a secret of its own: with
    // E2E_GATEWAY_URL set this test fails saying so, never touching that
    // gateway's projects).
    let gw = Gateway::builder()
        .secret("the-harness-test-secret-of-forty-chars-!")
        .start()
        .await
        .unwrap();
    for id in ["keep-me", "mine-too"] {
        let r = gw
            .post("/api/projects")
            .json(&json!({"id": id}))
            .fetch()
            .await;
        assert_eq!(r.status(), 201);
    }

    let refused = Gateway::builder()
        .external(&gw.base, gw.secret.clone(), false)
        .await
        .err()
        .expect("a gateway with projects is refused without E2E_GATEWAY_WIPE");
    let why = format!("{refused:#}");
    assert!(
        why.contains("2 project(s)") && why.contains("keep-me") && why.contains("mine-too"),
        "{why}"
    );
    assert!(why.contains("E2E_GATEWAY_WIPE=yes"), "{why}");
    let mut kept = gw.project_ids().await.unwrap();
    kept.sort();
    assert_eq!(kept, ["keep-me", "mine-too"]);

    // Told: every project goes, and the tests' gateway is the one there.
    let external = Gateway::builder()
        .external(&gw.base, gw.secret.clone(), true)
        .await
        .unwrap();
    assert!(external.project_ids().await.unwrap().is_empty());
}
