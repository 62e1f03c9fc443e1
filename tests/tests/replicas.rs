//! Two gateway processes on one PostgreSQL store and one archive folder
//! (the local runtime, one data dir shared as replicas share a cluster):
//! hibernations on one race opens and file writes on the other, with
//! random interleavings, and no acknowledged write is ever lost nor any
//! archive the store references removed; idle hibernation leaves a project
//! alone while a terminal is attached to the other replica; a replica
//! killed while holding a project's lock frees it within its lease; a
//! client streaming a project's events from one replica sees what the
//! other does (PostgreSQL LISTEN/NOTIFY).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};
use tests::Fetch as _;
use tests::gateway::Gateway;
use tests::postgres::{Postgres, create_db};
use tests::sse::next_event;

struct Replicas {
    a: Gateway,
    b: Gateway,
    db: tokio_postgres::Client,
    data: tempfile::TempDir,
    _pg: Postgres,
}

/// Two replicas named `a` and `b` (their lease holders start with the name).
async fn replicas(extra: &[&str]) -> Replicas {
    let pg = Postgres::start();
    create_db(&pg, "devgate").await;
    let url = pg.url("devgate");
    let data = tempfile::tempdir().unwrap();
    let secret = format!("replica-secret-{:032x}", rand::random::<u128>());
    let start = |name: &str| {
        Gateway::builder()
            .data_dir(data.path())
            .secret(secret.clone())
            .env("HOSTNAME", name)
            .args(&[
                "--database-url",
                &url,
                "--require-shared-state",
                "true",
                "--isolate-projects",
                "off",
                "--lease-secs",
                "3",
            ])
            .args(extra)
            .start()
    };
    // Both up before any project exists: a local gateway clears the agent
    // sockets it finds at start.
    let a = start("a").await.expect("replica a");
    let b = start("b").await.expect("replica b");
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    Replicas {
        a,
        b,
        db,
        data,
        _pg: pg,
    }
}

impl Replicas {
    fn pick(&self, second: bool) -> &Gateway {
        if second { &self.b } else { &self.a }
    }

    async fn status(&self, p: &str) -> String {
        self.a.status(p).await.unwrap()
    }

    /// Every archive the store references exists: a zip of an earlier
    /// version with its recorded size, a snapshot's manifest (whose recorded
    /// size is the project's bytes, not the manifest's) non-empty.
    async fn archives_referenced_exist(&self) -> usize {
        let rows = self
            .db
            .query("SELECT key, size, snapshot FROM archives", &[])
            .await
            .unwrap();
        for r in &rows {
            let key: String = r.get(0);
            let size: i64 = r.get(1);
            let snapshot: Option<String> = r.get(2);
            let path = self.data.path().join("archives").join(&key);
            let meta = std::fs::metadata(&path)
                .unwrap_or_else(|e| panic!("archive {key} is referenced but gone: {e}"));
            if snapshot.is_some() {
                assert!(meta.len() > 0, "{key}: an empty manifest");
            } else {
                assert_eq!(meta.len() as i64, size, "{key}");
            }
        }
        rows.len()
    }

    /// The lease holder's replica name (`a` or `b`), if held.
    async fn holder(&self, lease: &str) -> Option<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        self.db
            .query_opt(
                "SELECT holder FROM leases WHERE name = $1 AND expires_at > $2",
                &[&lease, &now],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, String>(0))
            .and_then(|h| h.split('-').next().map(str::to_owned))
    }
}

#[tokio::test]
async fn hibernate_races_open_and_writes_on_another_replica_and_loses_nothing() {
    let r = replicas(&["--idle-hibernate-minutes", "0"]).await;
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let p = "race";
    r.a.open_project(p).await.unwrap();
    // Acknowledged writes: path → content.
    let mut acknowledged: BTreeMap<String, String> = BTreeMap::new();
    let (mut refused, mut hibernated, mut opened) = (0, 0, 0);
    const ROUNDS: usize = 50;
    for round in 0..ROUNDS {
        let hib_on_b = rng.random_bool(0.5);
        let hib_delay = rng.random_range(0..40u64);
        let open_delay = rng.random_range(0..80u64);
        let gaps: Vec<u64> = (0..6).map(|_| rng.random_range(0..15u64)).collect();
        let hib = r.pick(hib_on_b);
        // Writes and the open go to the other replica.
        let other = r.pick(!hib_on_b);
        let hibernate = async {
            tokio::time::sleep(Duration::from_millis(hib_delay)).await;
            let resp = hib.action(p, "hibernate").await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        };
        let open = async {
            tokio::time::sleep(Duration::from_millis(open_delay)).await;
            let resp = other.open(p).await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        };
        let writes = async {
            let mut out = Vec::new();
            for (i, gap) in gaps.iter().enumerate() {
                tokio::time::sleep(Duration::from_millis(*gap)).await;
                let path = format!("r{round:02}/w{i}.txt");
                let content = format!("round {round} write {i} {:016x}", rand::random::<u64>());
                let resp = other
                    .put(&format!("/api/projects/{p}/files/{path}"))
                    .body(content.clone())
                    .fetch()
                    .await;
                let status = resp.status().as_u16();
                out.push((path, content, status, resp.text().await.unwrap()));
            }
            out
        };
        let ((hs, hbody), (os, obody), ws) = tokio::join!(hibernate, open, writes);
        assert!(
            hs == 200 || hs == 409,
            "round {round} (seed {seed}): hibernate {hs} {hbody}"
        );
        assert!(
            os == 200 || os == 409,
            "round {round} (seed {seed}): open {os} {obody}"
        );
        hibernated += usize::from(hs == 200);
        opened += usize::from(os == 200);
        for (path, content, status, body) in ws {
            match status {
                200 => {
                    acknowledged.insert(path, content);
                }
                409 => refused += 1,
                other => panic!("round {round} (seed {seed}): write {path}: {other} {body}"),
            }
        }
        r.archives_referenced_exist().await;
        // The next round starts from an active project.
        r.pick(rng.random_bool(0.5))
            .call(p, "open", &Value::Null)
            .await
            .unwrap_or_else(|e| panic!("round {round} (seed {seed}): {e}"));
    }
    // Everything acknowledged survives a last hibernation and restore,
    // read through either replica.
    r.b.hibernate(p).await.unwrap();
    assert_eq!(r.status(p).await, "hibernated");
    let archives = r.archives_referenced_exist().await;
    r.a.call(p, "open", &Value::Null).await.unwrap();
    for (i, (path, content)) in acknowledged.iter().enumerate() {
        let gw = r.pick(i % 2 == 1);
        let resp = gw
            .get(&format!("/api/projects/{p}/files/{path}"))
            .fetch()
            .await;
        assert_eq!(
            resp.status().as_u16(),
            200,
            "acknowledged {path} lost (seed {seed})"
        );
        assert_eq!(&resp.text().await.unwrap(), content, "{path} (seed {seed})");
    }
    println!(
        "{ROUNDS} rounds: {} writes acknowledged, {refused} refused, {hibernated} hibernations, {opened} racing opens, {archives} archives referenced",
        acknowledged.len()
    );
    // The race was a race: both outcomes happened.
    assert!(
        !acknowledged.is_empty() && refused > 0 && hibernated > 0,
        "seed {seed}"
    );
}

#[tokio::test]
async fn idle_hibernation_waits_for_a_terminal_on_the_other_replica() {
    let r = replicas(&[
        "--idle-hibernate-minutes",
        "3s",
        "--activity-interval",
        "500ms",
    ])
    .await;
    let p = "typing";
    r.a.open_project(p).await.unwrap();
    // Whichever replica is elected runs the idle loop; the terminal goes to
    // the other one.
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        if let Some(h) = r.holder("leader").await {
            break h;
        }
        assert!(Instant::now() < deadline, "nobody elected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let terminal_on = r.pick(leader == "a");
    let url = format!(
        "ws://{}/api/projects/{p}/terminal?token={}",
        terminal_on.addr,
        terminal_on.token(&[p])
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    // Three idle periods and more with nothing but an attached terminal.
    let held_since = Instant::now();
    while held_since.elapsed() < Duration::from_secs(10) {
        assert_eq!(
            r.status(p).await,
            "active",
            "hibernated by replica {leader} while a terminal was attached to the other"
        );
        // Drain output; answer nothing.
        let _ = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
    }
    drop(ws);
    // Detached: idle now, hibernated by the elected replica.
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.status(p).await != "hibernated" {
        assert!(Instant::now() < deadline, "never hibernated once detached");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_killed_lock_holder_frees_the_lock_within_its_lease() {
    let mut r = replicas(&["--idle-hibernate-minutes", "0"]).await;
    let p = "held";
    r.a.open_project(p).await.unwrap();
    // Replica a holds the project's lock for the whole install.
    let create = r
        .a
        .post(&format!("/api/projects/{p}/containers"))
        .json(&json!({"name": "web", "port": 5173, "start": "sleep 600", "install": "sleep 600"}))
        .send();
    let create = tokio::spawn(create);
    let deadline = Instant::now() + Duration::from_secs(20);
    while r.holder(&format!("project:{p}")).await.as_deref() != Some("a") {
        assert!(Instant::now() < deadline, "replica a never took the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Replica b's hibernation waits for it...
    let hibernate = tokio::spawn(r.b.post(&format!("/api/projects/{p}/hibernate")).send());
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!hibernate.is_finished(), "b did not wait for a's lock");
    // ...until a dies without releasing it: within the lease (3 s) and a
    // renewal's slack, b has it.
    r.a.kill();
    let killed = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(60), hibernate)
        .await
        .expect("b still waits")
        .unwrap()
        .unwrap();
    let waited = killed.elapsed();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "{}",
        resp.text().await.unwrap()
    );
    assert!(waited < Duration::from_secs(3 + 3), "took {waited:?}");
    assert_eq!(r.status_b(p).await, "hibernated");
    let _ = create.await;
}

#[tokio::test]
async fn events_reach_clients_of_every_replica() {
    let r = replicas(&["--idle-hibernate-minutes", "0"]).await;
    let p = "news";
    r.a.open_project(p).await.unwrap();
    // A client of replica b...
    let resp = r.b.get(&format!("/api/projects/{p}/events")).fetch().await;
    assert_eq!(resp.status(), 200);
    let mut s = resp.bytes_stream();
    let mut buf = String::new();
    next_event(&mut s, &mut buf, |e, _| e == "project").await;
    // ...sees a command replica a runs, output and all...
    let exec =
        r.a.post(&format!("/api/projects/{p}/exec"))
            .json(&json!({"argv": ["echo", "ran-on-a"], "label": "on-a"}))
            .fetch()
            .await;
    assert_eq!(exec.status(), 200);
    let (_, v) = next_event(&mut s, &mut buf, |e, v| e == "log" && v["label"] == "on-a").await;
    assert_eq!(v["stdout"], "ran-on-a\n");
    // ...a large output cut to its head and tail (GET /logs has it whole)...
    let exec = r
        .a
        .post(&format!("/api/projects/{p}/exec"))
        .json(&json!({"argv": ["sh", "-c", "echo FIRST; head -c 60000 /dev/zero | tr '\\0' x; echo; echo LAST"], "label": "big"}))
        .fetch()
        .await;
    assert_eq!(exec.status(), 200);
    let (_, v) = next_event(&mut s, &mut buf, |e, v| e == "log" && v["label"] == "big").await;
    let out = v["stdout"].as_str().unwrap();
    assert!(
        out.starts_with("FIRST\n") && out.ends_with("LAST\n"),
        "{}",
        out.len()
    );
    assert!(out.len() < 8000, "{}", out.len());
    assert_eq!(v["truncated"], true);
    // ...and the hibernation replica a does, step by step, each once.
    let hib =
        r.a.post(&format!("/api/projects/{p}/hibernate"))
            .fetch()
            .await;
    assert_eq!(hib.status(), 200);
    next_event(&mut s, &mut buf, |e, v| {
        e == "status" && v["status"] == "hibernated"
    })
    .await;
    // Replica a's own client gets each event once, not again from the relay.
    let resp = r.a.get(&format!("/api/projects/{p}/events")).fetch().await;
    let mut own = resp.bytes_stream();
    let mut own_buf = String::new();
    next_event(&mut own, &mut own_buf, |e, _| e == "project").await;
    let open = r.a.post(&format!("/api/projects/{p}/open")).fetch().await;
    assert_eq!(open.status(), 200);
    r.a.exec_ok(p, "true").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, own.next()).await {
        own_buf.push_str(&String::from_utf8_lossy(&chunk));
    }
    let frames: Vec<&str> = own_buf
        .split("\n\n")
        .filter(|f| f.contains("data:"))
        .collect();
    let execs = frames
        .iter()
        .filter(|f| f.contains("\"label\":\"exec\""))
        .count();
    assert_eq!(execs, 1, "{own_buf}");
    let distinct: std::collections::BTreeSet<&&str> = frames.iter().collect();
    assert_eq!(
        distinct.len(),
        frames.len(),
        "an event came twice: {own_buf}"
    );
}

impl Replicas {
    async fn status_b(&self, p: &str) -> String {
        self.b.status(p).await.unwrap()
    }
}
