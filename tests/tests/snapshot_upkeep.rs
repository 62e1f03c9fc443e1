//! Snapshot versions over time, with the real gateway and agent: scheduled
//! snapshots of an open project (nothing stopped, a terminal keeps running,
//! an unchanged project is not snapshotted again), retention by age and
//! count, and garbage collection of unreferenced packs: an orphan older
//! than the grace period goes, a young one and every referenced one stay,
//! in a folder and in S3 (moto); and collection on one replica racing
//! hibernations of a large tree on another (one PostgreSQL store, one
//! archive folder) deletes nothing a snapshot references.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tests::Fetch as _;
use tests::S3Server;
use tests::gateway::Gateway;
use tests::postgres::{Postgres, create_db};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(60);

/// Waits until `f` holds, polling.
async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + T;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls the project's versions until `pred` holds; answers them.
async fn versions_until(
    gw: &Gateway,
    p: &str,
    what: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + T;
    loop {
        let list = gw.snapshots(p).await.unwrap();
        if pred(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn scheduled(list: &[Value]) -> usize {
    list.iter().filter(|v| v["reason"] == "scheduled").count()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Types `line` into the terminal and reads until `want` shows.
async fn terminal_says(ws: &mut Ws, line: &str, want: &str) {
    ws.send(Message::binary(format!("{line}\n").into_bytes()))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&seen).contains(want) {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.extend_from_slice(&b),
            Ok(Some(Ok(Message::Text(t)))) => {
                assert!(!t.contains("\"exit\""), "the terminal ended: {t}")
            }
            Ok(Some(Ok(_))) => {}
            other => panic!(
                "terminal gone or silent ({other:?}); seen {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
}

#[tokio::test]
async fn an_open_project_is_snapshotted_on_schedule_without_stopping_anything() {
    let gw = Gateway::builder()
        .args(&[
            "--snapshot-interval",
            "2s",
            "--activity-interval",
            "1s",
            "--idle-hibernate-minutes",
            "0",
        ])
        .start()
        .await
        .unwrap();
    gw.open_project("sched").await.unwrap();
    gw.exec_ok("sched", "echo v1 > a.txt").await.unwrap();
    let url = format!(
        "ws://{}/api/projects/sched/terminal?token={}&cols=80&rows=24",
        gw.addr,
        gw.token(&["sched"])
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    terminal_says(&mut ws, "echo up-$((1+1))", "up-2").await;

    // Taken by the schedule, with reason `scheduled`; the project stays
    // open and the terminal keeps running.
    // One may have been taken before a.txt was written: the one wanted
    // holds its 3 bytes.
    let with_a = |v: &Value| v["reason"] == "scheduled" && v["bytes"].as_u64() >= Some(3);
    let list = versions_until(&gw, "sched", "a scheduled snapshot", |l| {
        l.iter().any(with_a)
    })
    .await;
    let first = list.iter().find(|v| with_a(v)).unwrap().clone();
    assert_eq!(gw.status("sched").await.unwrap(), "active");
    terminal_says(&mut ws, "echo v2 > a.txt; echo still-$((2+2))", "still-4").await;
    let first_id = first["id"].as_str().unwrap().to_owned();
    assert!(first["files"].as_u64().unwrap() >= 1, "{first}");

    // The terminal holds the project busy: snapshots keep coming.
    let n = scheduled(&list);
    versions_until(&gw, "sched", "another scheduled snapshot", |l| {
        scheduled(l) > n
    })
    .await;
    terminal_says(&mut ws, "echo alive-$((3+3))", "alive-6").await;
    drop(ws);

    // The scheduled version restores what the project held then.
    gw.hibernate("sched").await.unwrap();
    gw.call("sched", "open", &json!({"snapshot": first_id}))
        .await
        .unwrap();
    assert_eq!(gw.exec_ok("sched", "cat a.txt").await.unwrap(), "v1\n");
}

#[tokio::test]
async fn an_unchanged_project_is_not_snapshotted_again() {
    let gw = Gateway::builder()
        .args(&[
            "--snapshot-interval",
            "1s",
            "--activity-interval",
            "1s",
            "--idle-hibernate-minutes",
            "0",
        ])
        .start()
        .await
        .unwrap();
    gw.open_project("calm").await.unwrap();
    let r = gw
        .put("/api/projects/calm/files/a.txt")
        .body("one")
        .fetch()
        .await;
    assert!(r.status().is_success());
    // One may come before the write (a project with no version is due at
    // once); then one with it.
    versions_until(&gw, "calm", "a scheduled snapshot of a.txt", |l| {
        l.first()
            .is_some_and(|v| v["reason"] == "scheduled" && v["bytes"] == 3)
    })
    .await;
    // (A cut that began just before the write's activity was recorded is
    // followed by one more.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = scheduled(&gw.snapshots("calm").await.unwrap());
    // Several intervals with nothing done: no new version.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let list = gw.snapshots("calm").await.unwrap();
    assert_eq!(scheduled(&list), n, "{list:?}");
    // A change: the next one comes.
    let r = gw
        .put("/api/projects/calm/files/a.txt")
        .body("two!")
        .fetch()
        .await;
    assert!(r.status().is_success());
    versions_until(&gw, "calm", "a snapshot after the change", |l| {
        scheduled(l) > n && l[0]["reason"] == "scheduled" && l[0]["bytes"] == 4
    })
    .await;
}

#[tokio::test]
async fn retention_removes_versions_older_than_the_days_beyond_the_newest_kept() {
    let gw = Gateway::builder()
        .args(&[
            "--snapshot-keep",
            "2",
            "--snapshot-retention-days",
            "4s",
            "--snapshot-gc-grace",
            "0s",
            "--snapshot-gc-interval",
            "1s",
            "--activity-interval",
            "1s",
            "--snapshot-interval",
            "off",
        ])
        .start()
        .await
        .unwrap();
    gw.open_project("ret").await.unwrap();
    let mut ids = Vec::new();
    for i in 0..4 {
        gw.exec_ok("ret", &format!("echo {i} > a.txt"))
            .await
            .unwrap();
        let r = gw.post("/api/projects/ret/snapshots").fetch().await;
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    // All younger than the retention: all kept, beyond the newest two.
    assert_eq!(gw.snapshots("ret").await.unwrap().len(), 4);
    let dir = gw.data_dir.join("archives/ret");
    let count = |sub: &str| std::fs::read_dir(dir.join(sub)).unwrap().count();
    assert_eq!(count("snapshots"), 4);
    assert_eq!(
        count("packs"),
        8,
        "each version added two packs (a.txt's chunk, its manifest's piece)"
    );

    // Once older, the leader's loop removes all but the newest two, with
    // the packs only those used.
    let kept: Vec<String> = versions_until(&gw, "ret", "retention", |l| l.len() == 2)
        .await
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kept, [ids[3].clone(), ids[2].clone()]);
    let count = &count;
    until("the packs of removed versions", || async move {
        count("packs") == 4
    })
    .await;
    assert_eq!(count("snapshots"), 2);
    // A new version (the hibernation's) pushes the older one out at once
    // (it is past the retention); what stays is whole.
    gw.hibernate("ret").await.unwrap();
    let list = gw.snapshots("ret").await.unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[1]["id"], ids[3].as_str());
    gw.call("ret", "open", &json!({"snapshot": ids[3]}))
        .await
        .unwrap();
    assert_eq!(gw.exec_ok("ret", "cat a.txt").await.unwrap(), "3\n");
}

/// Sets a file's mtime `ago` in the past.
fn age(path: &Path, ago: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - ago).unwrap();
}

fn fake_id(n: u8) -> String {
    format!("{:02x}", n).repeat(32)
}

#[tokio::test]
async fn collection_removes_old_orphans_only() {
    let gw = Gateway::builder()
        .args(&[
            "--snapshot-gc-grace",
            "10m",
            "--snapshot-gc-interval",
            "1s",
            "--activity-interval",
            "1s",
            "--snapshot-interval",
            "off",
        ])
        .start()
        .await
        .unwrap();
    gw.open_project("gc").await.unwrap();
    gw.exec_ok("gc", "head -c 300000 /dev/urandom > r.bin; echo x > x.txt")
        .await
        .unwrap();
    let p = gw.hibernate("gc").await.unwrap();
    let sid = p["snapshot"]["id"].as_str().unwrap().to_owned();
    let dir = gw.data_dir.join("archives/gc");
    let referenced: Vec<_> = std::fs::read_dir(dir.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!referenced.is_empty());
    // Every referenced object is older than the grace: age alone never
    // removes one.
    for p in &referenced {
        age(p, Duration::from_secs(3600));
    }
    age(
        &dir.join(format!("snapshots/{sid}")),
        Duration::from_secs(3600),
    );
    // Orphans, as a killed hibernation leaves them: old and young packs, an
    // old manifest no version records, an old temporary file.
    let old_pack = dir.join(format!("packs/{}", fake_id(1)));
    let young_pack = dir.join(format!("packs/{}", fake_id(2)));
    let old_manifest = dir.join(format!("snapshots/{}", fake_id(3)));
    let old_temp = dir.join("packs/.0123.tmp");
    for f in [&old_pack, &young_pack, &old_manifest, &old_temp] {
        std::fs::write(f, b"orphan").unwrap();
    }
    // An old temporary file a writer still holds (its lock, as a slow put
    // on another replica sharing the folder would) stays.
    let held_temp = dir.join("packs/.4567.tmp");
    std::fs::write(&held_temp, b"being written").unwrap();
    let writer = std::fs::File::open(&held_temp).unwrap();
    writer.lock().unwrap();
    for f in [&old_pack, &old_manifest, &old_temp, &held_temp] {
        age(f, Duration::from_secs(3600));
    }
    let gone = [&old_pack, &old_manifest, &old_temp];
    until("the old orphans to go", || async move {
        gone.iter().all(|f| !f.exists())
    })
    .await;
    assert!(young_pack.exists(), "a pack younger than the grace stays");
    assert!(
        held_temp.exists(),
        "a temporary file its writer holds stays"
    );
    drop(writer);
    for p in &referenced {
        assert!(p.exists(), "{} is referenced", p.display());
    }
    assert!(dir.join(format!("snapshots/{sid}")).exists());
    gw.call("gc", "open", &json!({})).await.unwrap();
    assert_eq!(gw.exec_ok("gc", "cat x.txt").await.unwrap(), "x\n");
}

#[tokio::test]
async fn collection_in_s3_removes_an_orphan_once_past_the_grace() {
    let s3 = S3Server::moto().await.unwrap();
    s3.create_bucket("gcb").await.unwrap();
    let gw = Gateway::builder()
        .envs(&s3.env())
        .archive("s3://gcb/pre")
        .args(&[
            "--snapshot-gc-grace",
            "6s",
            "--snapshot-gc-interval",
            "1s",
            "--activity-interval",
            "1s",
            "--snapshot-interval",
            "off",
        ])
        .start()
        .await
        .unwrap();
    gw.open_project("s3gc").await.unwrap();
    gw.exec_ok("s3gc", "head -c 300000 /dev/urandom > r.bin")
        .await
        .unwrap();
    gw.hibernate("s3gc").await.unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let (http, endpoint) = (&http, &s3.endpoint);
    let listing = || async move {
        http.get(format!("{endpoint}/gcb?list-type=2&prefix=pre/s3gc/"))
            .fetch()
            .await
            .text()
            .await
            .unwrap()
    };
    let before = listing().await;
    let packs_before = before.matches("pre/s3gc/packs/").count();
    assert!(packs_before >= 1, "{before}");
    // moto takes an unsigned PUT.
    let orphan = format!("pre/s3gc/packs/{}", fake_id(7));
    let put = http
        .put(format!("{}/gcb/{orphan}", s3.endpoint))
        .body("orphan")
        .fetch()
        .await;
    assert!(put.status().is_success(), "{}", put.status());
    // Young: still there a few collections later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        listing().await.contains(&orphan),
        "removed within the grace"
    );
    let orphan_key = &orphan;
    until("the orphan to go", || async move {
        !listing().await.contains(orphan_key)
    })
    .await;
    // The referenced packs stay past the grace (the hibernation's packs
    // are older than 6 s by now).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = listing().await;
    assert_eq!(
        after.matches("pre/s3gc/packs/").count(),
        packs_before,
        "{after}"
    );
    gw.call("s3gc", "open", &json!({})).await.unwrap();
}

/// sha256 of every file, by path, as the project sees it.
async fn digests(gw: &Gateway, p: &str) -> BTreeMap<String, String> {
    gw.exec_ok(p, "find . -type f -print0 | sort -z | xargs -0 sha256sum")
        .await
        .unwrap()
        .lines()
        .map(|l| {
            let (sum, path) = l.split_once("  ").unwrap();
            (path.to_owned(), sum.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn collection_racing_hibernations_on_another_replica_deletes_nothing_referenced() {
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
                "--idle-hibernate-minutes",
                "0",
                "--snapshot-interval",
                "off",
                // Collect all the time, with no grace at all.
                "--snapshot-gc-grace",
                "0s",
                "--snapshot-gc-interval",
                "1s",
                "--activity-interval",
                "1s",
            ])
            .start()
    };
    let a = start("a").await.expect("replica a");
    let b = start("b").await.expect("replica b");
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let deadline = Instant::now() + T;
    let leader = loop {
        let row = db
            .query_opt("SELECT holder FROM leases WHERE name = 'leader'", &[])
            .await
            .unwrap();
        if let Some(r) = row {
            break r.get::<_, String>(0);
        }
        assert!(Instant::now() < deadline, "nobody elected");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Hibernations on the replica that does not collect.
    let (worker, collector) = if leader.starts_with("a-") {
        (&b, &a)
    } else {
        (&a, &b)
    };
    let p = "big";
    worker.open_project(p).await.unwrap();
    worker
        .exec_ok(
            p,
            "mkdir -p src node_modules/m && \
         for i in $(seq 1 1500); do echo \"file $i $RANDOM\" > src/f$i.txt; done && \
         for i in $(seq 1 300); do head -c 20000 /dev/urandom > node_modules/m/b$i; done && \
         head -c 8000000 /dev/urandom > big.bin",
        )
        .await
        .unwrap();
    let mut ids = Vec::new();
    for round in 0..3 {
        let want = digests(worker, p).await;
        let v = worker.hibernate(p).await.unwrap();
        ids.push((
            v["snapshot"]["id"].as_str().unwrap().to_owned(),
            want.clone(),
        ));
        // Opened on either replica: every byte comes back.
        let opener = if round % 2 == 0 { collector } else { worker };
        opener.call(p, "open", &json!({})).await.unwrap();
        assert_eq!(digests(worker, p).await, want, "round {round}");
        worker
            .exec_ok(
                p,
                &format!(
                    "for i in $(seq 1 50); do echo r{round} >> src/f$i.txt; done; \
                 head -c 1000000 /dev/urandom > r{round}.bin"
                ),
            )
            .await
            .unwrap();
    }
    // Every version still restores whole: nothing they reference went.
    for (sid, want) in &ids {
        worker.hibernate(p).await.unwrap();
        worker
            .call(p, "open", &json!({"snapshot": sid}))
            .await
            .unwrap();
        assert_eq!(&digests(worker, p).await, want, "snapshot {sid}");
    }
    // And the collector did run all along: an orphan goes at once, with
    // no grace.
    let orphan = data
        .path()
        .join(format!("archives/{p}/packs/{}", fake_id(9)));
    std::fs::write(&orphan, b"orphan").unwrap();
    let orphan = &orphan;
    until("the collector to sweep an orphan", || async move {
        !orphan.exists()
    })
    .await;
    assert_eq!(collector.status(p).await.unwrap(), "active");
}
