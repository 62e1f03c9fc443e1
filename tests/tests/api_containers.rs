//! Containers (dev servers) on the local runtime: created from a bundled git
//! template (files in `/{name}/`, `install` run and logged), started on their
//! declared port or another when it is taken, exec inside them, logs (with
//! follow), stop, delete with files, and one port per project.

use std::time::Duration;

use futures::StreamExt as _;
use serde_json::{Value, json};
use tests::Fetch as _;
use tests::gateway::Gateway;
use tests::{eventually, free_port};

async fn gateway_with_template() -> (Gateway, tempfile::TempDir) {
    let templates = tempfile::tempdir().unwrap();
    let web = templates.path().join("web");
    std::fs::create_dir_all(&web).unwrap();
    std::fs::write(web.join("index.html"), "<h1>template</h1>").unwrap();
    let gw = Gateway::builder()
        .arg("--templates-dir")
        .arg(templates.path().to_str().unwrap())
        .start()
        .await
        .unwrap();
    (gw, templates)
}

async fn get_local(port: u16, path: &str) -> Option<String> {
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .ok()?
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .ok()?;
    r.status().is_success().then_some(())?;
    r.text().await.ok()
}

#[tokio::test]
async fn container_from_template_start_exec_logs_stop_delete() {
    let (gw, _t) = gateway_with_template().await;
    gw.open_project("app").await.unwrap();
    let templates: Vec<Value> = gw.get("/api/templates").fetch().await.json().await.unwrap();
    let git = templates[0]["git"].as_str().unwrap().to_owned();
    let port = free_port();

    let r = gw
        .post("/api/projects/app/containers")
        .json(&json!({
            "name": "web",
            "template": {"git": git},
            "port": port,
            "start": "exec python3 -u -m http.server $PORT --bind $HOST",
            "install": "echo installed > installed.txt",
            "env": {"FOO": "bar"},
        }))
        .fetch()
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["name"], "web");
    assert_eq!(c["status"], "stopped");
    assert_eq!(c["port"], port);
    // Files are there now, not at start; the template's .git is not.
    let dir = gw.project_dir("app").join("web");
    assert_eq!(
        std::fs::read_to_string(dir.join("index.html")).unwrap(),
        "<h1>template</h1>"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("installed.txt")).unwrap(),
        "installed\n"
    );
    assert!(!dir.join(".git").exists());
    let logs: Vec<Value> = gw
        .get("/api/projects/app/logs")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    let labels: Vec<&str> = logs.iter().map(|l| l["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["web: clone", "web: install"]);
    assert_eq!(logs[1]["command"], "echo installed > installed.txt");

    // Same name or same port: 409.
    let r = gw
        .post("/api/projects/app/containers")
        .json(&json!({"name": "web", "port": port + 1, "start": "true"}))
        .fetch()
        .await;
    assert_eq!(r.status(), 409);
    let r = gw
        .post("/api/projects/app/containers")
        .json(&json!({"name": "api", "port": port, "start": "true"}))
        .fetch()
        .await;
    assert_eq!(r.status(), 409);
    let r = gw
        .post("/api/projects/app/containers")
        .json(&json!({"name": "Bad_Name", "port": 1234, "start": "true"}))
        .fetch()
        .await;
    assert_eq!(r.status(), 400);

    // Start: running with a preview URL, serving on the declared port.
    let r = gw
        .post("/api/projects/app/containers/web/start")
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["status"], "running");
    let url = c["preview_url"].as_str().unwrap();
    assert!(url.starts_with("http://web.app.localhost:"), "{url}");
    let body = eventually(Duration::from_secs(20), "the dev server", || {
        get_local(port, "/index.html")
    })
    .await
    .unwrap();
    assert_eq!(body, "<h1>template</h1>");
    let list: Vec<Value> = gw
        .get("/api/projects/app/containers")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["status"], "running");

    // Exec inside the container: cwd /web, its env, its PORT.
    let r = gw
        .post("/api/projects/app/exec")
        .json(&json!({"argv": ["sh", "-c", "pwd; echo $FOO $PORT"], "container": "web"}))
        .fetch()
        .await;
    let v: Value = r.json().await.unwrap();
    let out = v["stdout"].as_str().unwrap();
    assert!(out.ends_with(&format!("/web\nbar {port}\n")), "{out}");
    let r = gw
        .post("/api/projects/app/exec")
        .json(&json!({"argv": ["true"], "container": "nope"}))
        .fetch()
        .await;
    assert_eq!(r.status(), 404);

    // Logs, then following them while a new request comes in.
    let text = eventually(
        Duration::from_secs(10),
        "the request in the logs",
        || async {
            let t = gw
                .get("/api/projects/app/containers/web/logs")
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            t.contains("GET /index.html").then_some(t)
        },
    )
    .await
    .unwrap();
    assert!(text.contains("Serving HTTP"), "{text}");
    let r = gw
        .get("/api/projects/app/containers/web/logs?follow=true")
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let mut s = r.bytes_stream();
    get_local(port, "/followed-path").await;
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(Ok(chunk)) = s.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("/followed-path") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "{seen}");
    drop(s);

    // Stop: stopped, the port closes, the files stay.
    let r = gw
        .post("/api/projects/app/containers/web/stop")
        .fetch()
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "stopped");
    eventually(Duration::from_secs(10), "the port to close", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
            .then_some(())
    })
    .await
    .unwrap();
    assert!(dir.join("index.html").exists());

    // Delete without files, then a second one with files.
    let r = gw.delete("/api/projects/app/containers/web").fetch().await;
    assert_eq!(r.status(), 204);
    assert!(dir.exists());
    let r = gw
        .post("/api/projects/app/containers")
        .json(&json!({"name": "api", "port": port, "start": "sleep 60"}))
        .fetch()
        .await;
    assert_eq!(r.status(), 201, "the port is free again once web is gone");
    assert!(gw.project_dir("app").join("api").is_dir());
    let r = gw
        .delete("/api/projects/app/containers/api?delete_files=true")
        .fetch()
        .await;
    assert_eq!(r.status(), 204);
    assert!(!gw.project_dir("app").join("api").exists());
    assert_eq!(
        gw.get("/api/projects/app/containers")
            .fetch()
            .await
            .json::<Vec<Value>>()
            .await
            .unwrap(),
        Vec::<Value>::new()
    );
}

#[tokio::test]
async fn taken_port_gets_another_and_failed_install_changes_nothing() {
    let (gw, _t) = gateway_with_template().await;
    gw.open_project("p").await.unwrap();
    // Something else on this machine holds the declared port.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port();
    let r = gw
        .post("/api/projects/p/containers")
        .json(&json!({"name": "srv", "port": taken, "start": "exec python3 -m http.server $PORT --bind $HOST"}))
        .fetch()
        .await;
    assert_eq!(r.status(), 201);
    std::fs::write(gw.project_dir("p").join("srv/hello.txt"), "moved port").unwrap();
    let r = gw
        .post("/api/projects/p/containers/srv/start")
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = gw
        .post("/api/projects/p/exec")
        .json(&json!({"argv": ["sh", "-c", "echo -n $PORT"], "container": "srv"}))
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    let actual: u16 = v["stdout"].as_str().unwrap().parse().unwrap();
    assert_ne!(actual, taken);
    let body = eventually(Duration::from_secs(20), "the moved dev server", || {
        get_local(actual, "/hello.txt")
    })
    .await
    .unwrap();
    assert_eq!(body, "moved port");
    drop(holder);

    // A failing install: 400, no container, no files.
    let r = gw
        .post("/api/projects/p/containers")
        .json(&json!({"name": "bad", "port": 4000, "start": "true", "install": "echo nope >&2; exit 7"}))
        .fetch()
        .await;
    assert_eq!(r.status(), 400);
    assert!(!gw.project_dir("p").join("bad").exists());
    let list: Vec<Value> = gw
        .get("/api/projects/p/containers")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    let logs: Vec<Value> = gw
        .get("/api/projects/p/logs")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    let last = logs.last().unwrap();
    assert_eq!(last["label"], "bad: install");
    assert_eq!(last["exit_code"], 7);
    assert_eq!(last["stderr"], "nope\n");

    // Hibernate and open: containers come back stopped.
    assert_eq!(
        gw.post("/api/projects/p/hibernate").fetch().await.status(),
        200
    );
    let p: Value = gw
        .post("/api/projects/p/open")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(p["containers"][0]["status"], "stopped");
    assert_eq!(
        std::fs::read_to_string(gw.project_dir("p").join("srv/hello.txt")).unwrap(),
        "moved port"
    );
    // Container routes on a hibernated project: 409.
    gw.post("/api/projects/p/hibernate").fetch().await;
    let r = gw
        .post("/api/projects/p/containers/srv/start")
        .fetch()
        .await;
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "project_not_active"
    );
}

#[tokio::test]
async fn a_dev_server_that_ends_by_itself_is_shown_failed_or_stopped() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("d").await.unwrap();
    for (name, start) in [
        ("crash", "echo boom >&2; exit 3"),
        ("done", "echo finished"),
    ] {
        let port = free_port();
        let r = gw
            .post("/api/projects/d/containers")
            .json(&json!({"name": name, "port": port, "start": start}))
            .fetch()
            .await;
        assert_eq!(r.status(), 201);
        let r = gw
            .post(&format!("/api/projects/d/containers/{name}/start"))
            .fetch()
            .await;
        assert_eq!(r.status(), 200);
    }
    let statuses = eventually(
        Duration::from_secs(15),
        "both dev servers to end",
        || async {
            let list: Vec<Value> = gw
                .get("/api/projects/d/containers")
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let st = |n: &str| {
                list.iter()
                    .find(|c| c["name"] == n)
                    .map(|c| c["status"].as_str().unwrap_or_default().to_owned())
            };
            let (a, b) = (st("crash")?, st("done")?);
            (a != "running" && b != "running").then_some((a, b))
        },
    )
    .await
    .unwrap();
    assert_eq!(statuses, ("failed".to_owned(), "stopped".to_owned()));
    // A failed container says how its dev server ended.
    let list: Vec<Value> = gw
        .get("/api/projects/d/containers")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    let crash = list.iter().find(|c| c["name"] == "crash").unwrap();
    assert_eq!(crash["exit_code"], 3, "{crash}");
    let done = list.iter().find(|c| c["name"] == "done").unwrap();
    assert!(done.get("exit_code").is_none(), "{done}");
    let one: Value = gw
        .get("/api/projects/d/containers/crash")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["exit_code"], 3, "{one}");
    let logs = gw
        .get("/api/projects/d/containers/crash/logs")
        .fetch()
        .await
        .text()
        .await
        .unwrap();
    assert!(logs.contains("boom"), "{logs}");
    // Unknown containers: 404 on every route.
    for (m, path) in [
        (
            reqwest::Method::POST,
            "/api/projects/d/containers/nope/start",
        ),
        (
            reqwest::Method::POST,
            "/api/projects/d/containers/nope/stop",
        ),
        (reqwest::Method::GET, "/api/projects/d/containers/nope/logs"),
        (reqwest::Method::DELETE, "/api/projects/d/containers/nope"),
    ] {
        let r = gw.req(m.clone(), path).fetch().await;
        assert_eq!(r.status(), 404, "{m} {path}");
    }
    // It can be started again.
    let r = gw
        .post("/api/projects/d/containers/crash/start")
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn running_dev_servers_come_back_after_a_gateway_restart() {
    let mut gw = Gateway::start().await.unwrap();
    gw.open_project("r").await.unwrap();
    let port = free_port();
    let r = gw
        .post("/api/projects/r/containers")
        .json(&json!({"name": "srv", "port": port, "start": "exec python3 -m http.server $PORT --bind $HOST"}))
        .fetch()
        .await;
    assert_eq!(r.status(), 201);
    std::fs::write(gw.project_dir("r").join("srv/ok.txt"), "back").unwrap();
    assert_eq!(
        gw.post("/api/projects/r/containers/srv/start")
            .fetch()
            .await
            .status(),
        200
    );
    eventually(Duration::from_secs(20), "the dev server", || {
        get_local(port, "/ok.txt")
    })
    .await
    .unwrap();

    gw.restart().await.unwrap();

    // Its agent died with the old gateway, so the new one starts it again.
    let body = eventually(
        Duration::from_secs(30),
        "the dev server after the restart",
        || async {
            let v: Value = gw
                .post("/api/projects/r/exec")
                .json(&json!({"argv": ["sh", "-c", "echo -n $PORT"], "container": "srv"}))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let port: u16 = v["stdout"].as_str()?.parse().ok()?;
            get_local(port, "/ok.txt").await
        },
    )
    .await
    .unwrap();
    assert_eq!(body, "back");
    let list: Vec<Value> = gw
        .get("/api/projects/r/containers")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["status"], "running");
}

/// The port a container's dev server got (its declared one, or another when
/// that was taken), from inside it.
async fn port_of(gw: &Gateway, p: &str, c: &str) -> Option<u16> {
    let v: Value = gw
        .post(&format!("/api/projects/{p}/exec"))
        .json(&json!({"argv": ["sh", "-c", "echo -n $PORT"], "container": c}))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["stdout"].as_str()?.parse().ok()
}

async fn containers_of(gw: &Gateway, p: &str) -> Vec<Value> {
    gw.get(&format!("/api/projects/{p}/containers"))
        .fetch()
        .await
        .json()
        .await
        .unwrap()
}

fn find<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {list:?}"))
}

/// Hibernation remembers which dev servers ran; `POST /open` with
/// `{"start_containers": true}` starts those again (and only those), and an
/// open without it leaves them stopped, still marked.
#[tokio::test]
async fn open_with_start_containers_restarts_what_ran_at_hibernation() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("h").await.unwrap();
    for (name, start) in [
        ("srv", "exec python3 -m http.server $PORT --bind $HOST"),
        ("idle", "exec python3 -m http.server $PORT --bind $HOST"),
    ] {
        let r = gw
            .post("/api/projects/h/containers")
            .json(&json!({"name": name, "port": free_port(), "start": start}))
            .fetch()
            .await;
        assert_eq!(r.status(), 201);
    }
    std::fs::write(gw.project_dir("h").join("srv/ok.txt"), "kept").unwrap();
    let r = gw
        .post("/api/projects/h/containers/srv/start")
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    eventually(Duration::from_secs(20), "the dev server", || async {
        get_local(port_of(&gw, "h", "srv").await?, "/ok.txt").await
    })
    .await
    .unwrap();

    let hibernate = |gw: &Gateway| {
        let r = gw.post("/api/projects/h/hibernate").send();
        async move {
            let r = r.await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let v = hibernate(&gw).await;
    assert_eq!(v["status"], "hibernated");
    let cs = v["containers"].as_array().unwrap();
    assert_eq!(find(cs, "srv")["status"], "stopped");
    assert_eq!(find(cs, "srv")["running_at_hibernation"], true);
    assert!(find(cs, "idle").get("running_at_hibernation").is_none());

    // A body that is not JSON: 400, and the project stays hibernated.
    let r = gw
        .post("/api/projects/h/open")
        .body("{start_containers")
        .fetch()
        .await;
    assert_eq!(r.status(), 400);
    let v = gw.project("h").await.unwrap();
    assert_eq!(v["status"], "hibernated");

    let r = gw
        .post("/api/projects/h/open")
        .json(&json!({"start_containers": true}))
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "active");
    let cs = v["containers"].as_array().unwrap();
    assert_eq!(find(cs, "srv")["status"], "running", "{v}");
    assert!(find(cs, "srv").get("running_at_hibernation").is_none());
    assert_eq!(find(cs, "idle")["status"], "stopped");
    // It serves the restored files again.
    let body = eventually(
        Duration::from_secs(20),
        "the restarted dev server",
        || async { get_local(port_of(&gw, "h", "srv").await?, "/ok.txt").await },
    )
    .await
    .unwrap();
    assert_eq!(body, "kept");
    assert_eq!(
        find(&containers_of(&gw, "h").await, "srv")["status"],
        "running"
    );

    // Without the option the open leaves it stopped, and the mark stays...
    let v = hibernate(&gw).await;
    assert_eq!(
        find(v["containers"].as_array().unwrap(), "srv")["running_at_hibernation"],
        true
    );
    let r = gw.post("/api/projects/h/open").fetch().await;
    assert_eq!(r.status(), 200);
    let cs = containers_of(&gw, "h").await;
    assert_eq!(find(&cs, "srv")["status"], "stopped");
    assert_eq!(find(&cs, "srv")["running_at_hibernation"], true);
    // ...so asking later, on the active project, still starts it.
    let r = gw
        .post("/api/projects/h/open")
        .json(&json!({"start_containers": true}))
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        find(v["containers"].as_array().unwrap(), "srv")["status"],
        "running"
    );
    let cs = containers_of(&gw, "h").await;
    assert!(find(&cs, "srv").get("running_at_hibernation").is_none());
    assert_eq!(find(&cs, "idle")["status"], "stopped");
}
