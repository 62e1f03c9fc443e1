//! Hibernation to real S3-compatible servers (each S3 test runs against moto
//! and against s3s-fs, which checks every signature) and back: identical
//! bytes and modes after open, nothing left out; a hibernation that cannot
//! reach S3 leaves the project active with every file in place; projects
//! hibernated as zips by earlier versions still open.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use serde_json::{Value, json};
use tests::Fetch as _;
use tests::S3Server;
use tests::gateway::Gateway;

/// path → (kind, mode, content) of every entry under `root`.
fn snapshot(root: &Path) -> BTreeMap<String, (String, u32, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (String, u32, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                let target = std::fs::read_link(&p)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
                    .into_bytes();
                out.insert(rel, ("symlink".into(), 0, target));
            } else if m.is_dir() {
                out.insert(rel, ("dir".into(), mode, Vec::new()));
                walk(root, &p, out);
            } else {
                out.insert(rel, ("file".into(), mode, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The keys of a bucket under `prefix`, listed with a signed request.
async fn list(s3: &S3Server, bucket: &str, prefix: &str) -> Vec<String> {
    s3.keys(bucket, prefix).await.unwrap()
}

tests::on_both_s3_servers!(
    hibernate_to_s3_and_open_with_identical_bytes_and_modes,
    a_missing_bucket_is_created,
    a_zip_of_an_earlier_version_opens_from_s3,
);

async fn hibernate_to_s3_and_open_with_identical_bytes_and_modes(s3: &S3Server) {
    s3.create_bucket("archives").await.unwrap();
    let gw = Gateway::builder()
        .envs(&s3.env())
        .archive("s3://archives/envs")
        .start()
        .await
        .unwrap();
    gw.open_project("s3p").await.unwrap();

    gw.put_file("s3p", "src/app/main.js", "console.log('hi')\n")
        .await
        .unwrap();
    gw.put_file("s3p", "bin/run.sh", "#!/bin/sh\necho run\n")
        .await
        .unwrap();
    gw.put_file("s3p", "secret.env", "TOKEN=x\n").await.unwrap();
    gw.put_file("s3p", "empty.txt", Vec::<u8>::new())
        .await
        .unwrap();
    let binary: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    gw.put_file("s3p", "assets/blob.bin", binary).await.unwrap();
    gw.exec_ok("s3p", "chmod 755 bin/run.sh && chmod 600 secret.env && mkdir -p empty/dir && chmod 700 empty && ln -s src/app/main.js link.js").await.unwrap();
    // Files keep their modification times.
    gw.exec_ok(
        "s3p",
        "touch -d @1600000000 src/app/main.js assets/blob.bin",
    )
    .await
    .unwrap();
    // Kept too: nothing is left out of a hibernation.
    gw.exec_ok(
        "s3p",
        "mkdir -p node_modules/dep && echo x > node_modules/dep/i.js",
    )
    .await
    .unwrap();
    let before = snapshot(&gw.project_dir("s3p"));
    assert!(before.len() >= 10, "{before:?}");

    let r = gw.post("/api/projects/s3p/hibernate").fetch().await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["status"], "hibernated");
    let key = p["archive"]["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("envs/s3p/snapshots/"), "{key}");
    assert!(!gw.project_dir("s3p").exists());
    // The manifest is in the bucket, named by its blake3.
    assert!(key.ends_with(p["snapshot"]["id"].as_str().unwrap()));
    assert!(list(s3, "archives", "envs/s3p/").await.contains(&key));

    let r = gw.post("/api/projects/s3p/open").fetch().await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "active");
    let after = snapshot(&gw.project_dir("s3p"));
    assert_eq!(before, after);
    assert!(gw.project_dir("s3p").join("node_modules/dep/i.js").exists());
    for path in ["src/app/main.js", "assets/blob.bin"] {
        let mtime = std::fs::metadata(gw.project_dir("s3p").join(path))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(
            mtime,
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000),
            "{path}"
        );
    }

    // Through the API as well: an executable stays executable.
    let e: Value = gw
        .get("/api/projects/s3p/stat/bin/run.sh")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(e["mode"], "0755");
    let r = gw
        .post("/api/projects/s3p/exec")
        .json(&json!({"argv": ["./bin/run.sh"]}))
        .fetch()
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["stdout"], "run\n");

    // A second hibernation writes a new version; the log shows both.
    let r = gw.post("/api/projects/s3p/hibernate").fetch().await;
    let p: Value = r.json().await.unwrap();
    assert_ne!(p["archive"]["key"].as_str().unwrap(), key);
    let logs: Vec<Value> = gw
        .get("/api/projects/s3p/logs")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        logs.iter()
            .filter(|l| l["label"] == "hibernate" && l["exit_code"] == 0)
            .count(),
        2
    );
    assert_eq!(
        logs.iter()
            .filter(|l| l["label"] == "restore" && l["exit_code"] == 0)
            .count(),
        1
    );

    // Delete removes the snapshots from the bucket.
    let second = p["archive"]["key"].as_str().unwrap().to_owned();
    assert_eq!(gw.delete("/api/projects/s3p").fetch().await.status(), 204);
    let left = list(s3, "archives", "envs/s3p/").await;
    for k in [&key, &second] {
        assert!(!left.contains(k), "{k} still in the bucket");
    }
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn hibernate_with_s3_unreachable_leaves_the_project_active_and_intact() {
    // Nothing listens on this port.
    let dead = tests::free_port();
    let env = vec![
        (
            "AWS_ENDPOINT_URL".to_owned(),
            format!("http://127.0.0.1:{dead}"),
        ),
        ("AWS_ACCESS_KEY_ID".to_owned(), "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY".to_owned(), "test".to_owned()),
        ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
        ("AWS_MAX_ATTEMPTS".to_owned(), "2".to_owned()),
    ];
    let gw = Gateway::builder()
        .envs(&env)
        .archive("s3://archives/x")
        .start()
        .await
        .unwrap();
    gw.open_project("keep").await.unwrap();
    gw.put_file("keep", "a/b.txt", "precious").await.unwrap();
    gw.exec_ok("keep", "printf '#!/bin/sh\\n' > x.sh && chmod 755 x.sh")
        .await
        .unwrap();
    let before = snapshot(&gw.project_dir("keep"));

    let r = gw.post("/api/projects/keep/hibernate").fetch().await;
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (503, Some("unavailable")),
        "{v}"
    );
    let m = gw.metrics().await.unwrap();
    assert!(
        m.contains(
            "gateway_agent_rpc_errors_total{op=\"/api/projects/{p}/hibernate\",code=\"unavailable\"} 1"
        ),
        "{m}"
    );

    let p = gw.project("keep").await.unwrap();
    assert_eq!(p["status"], "active");
    assert!(p.get("archive").is_none());
    assert_eq!(snapshot(&gw.project_dir("keep")), before);
    // Still usable.
    assert_eq!(
        gw.get("/api/projects/keep/files/a/b.txt")
            .fetch()
            .await
            .text()
            .await
            .unwrap(),
        "precious"
    );
    gw.put_file("keep", "a/c.txt", "more").await.unwrap();
    let logs: Vec<Value> = gw
        .get("/api/projects/keep/logs")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    let h = logs.iter().find(|l| l["label"] == "hibernate").unwrap();
    assert_ne!(h["exit_code"], 0);
}

async fn a_missing_bucket_is_created(s3: &S3Server) {
    let gw = Gateway::builder()
        .envs(&s3.env())
        .archive("s3://fresh-bucket/p")
        .start()
        .await
        .unwrap();
    gw.open_project("nb").await.unwrap();
    gw.put_file("nb", "f.txt", "data").await.unwrap();
    let r = gw.post("/api/projects/nb/hibernate").fetch().await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let p: Value = r.json().await.unwrap();
    let key = p["archive"]["key"].as_str().unwrap();
    assert!(
        list(s3, "fresh-bucket", "p/")
            .await
            .iter()
            .any(|k| k == key)
    );
    gw.post("/api/projects/nb/open").fetch().await;
    assert_eq!(
        std::fs::read_to_string(gw.project_dir("nb").join("f.txt")).unwrap(),
        "data"
    );
}

#[tokio::test]
async fn a_write_in_flight_is_in_the_archive_or_refused() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("race").await.unwrap();
    // A slow upload: three chunks a few hundred milliseconds apart.
    let chunks = futures::stream::unfold(0u32, |i| async move {
        if i == 3 {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        Some((Ok::<_, std::io::Error>(format!("part{i};")), i + 1))
    });
    let put = gw
        .put("/api/projects/race/files/slow.txt")
        .body(reqwest::Body::wrap_stream(chunks))
        .send();
    let hibernate = async {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        gw.post("/api/projects/race/hibernate").fetch().await
    };
    let (put, hib) = tokio::join!(put, hibernate);
    // A refused upload may also show as a reset connection (`None`).
    let put_status = match put {
        Ok(r) => {
            let status = r.status().as_u16();
            if status != 200 {
                let v: Value = r.json().await.unwrap();
                assert_eq!(
                    (status, v["error"]["code"].as_str()),
                    (409, Some("project_not_active")),
                    "a write racing a hibernation is either kept or refused"
                );
            }
            Some(status)
        }
        Err(_) => None,
    };
    assert_eq!(hib.status(), 200);
    // Normally the write began first (200) and must then be in the archive;
    // on a starved machine the hibernation may have begun first (409).
    gw.post("/api/projects/race/open").fetch().await;
    let r = gw.get("/api/projects/race/files/slow.txt").fetch().await;
    if put_status == Some(200) {
        assert_eq!(
            r.text().await.unwrap(),
            "part0;part1;part2;",
            "an acknowledged write was lost"
        );
    } else {
        // Refused (409, checked above) or reset: nothing half-written.
        assert_eq!(r.status(), 404);
    }
    // And a write after the hibernation began is refused, not lost.
    let r = gw.post("/api/projects/race/hibernate").send();
    let late = async {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        gw.put("/api/projects/race/files/late.txt")
            .body("late")
            .fetch()
            .await
    };
    let (h, late) = tokio::join!(r, late);
    assert_eq!(h.unwrap().status(), 200);
    if late.status() == 200 {
        gw.post("/api/projects/race/open").fetch().await;
        let r = gw.get("/api/projects/race/files/late.txt").fetch().await;
        assert_eq!(
            r.text().await.unwrap(),
            "late",
            "an acknowledged write was lost"
        );
    } else {
        assert_eq!(late.status(), 409);
    }
}

/// A project hibernated as a zip by an earlier version (a version record
/// without a snapshot id, the zip in the archive store) opens, and its next
/// hibernation writes a snapshot.
async fn a_zip_of_an_earlier_version_opens(s3: Option<&S3Server>) {
    let mut b = Gateway::builder();
    if let Some(s3) = s3 {
        s3.create_bucket("archives").await.unwrap();
        b = b.envs(&s3.env()).archive("s3://archives/envs");
    }
    let mut gw = b.start().await.unwrap();
    gw.open_project("old").await.unwrap();
    gw.put_file("old", "src/a.txt", "from the zip era\n")
        .await
        .unwrap();
    gw.exec_ok(
        "old",
        "mkdir -p bin && printf '#!/bin/sh\\n' > bin/x.sh && chmod 755 bin/x.sh",
    )
    .await
    .unwrap();
    let before = snapshot(&gw.project_dir("old"));
    // A zip of the project, as hibernation wrote them before snapshots.
    let zip = gw
        .get("/api/projects/old/archive")
        .fetch()
        .await
        .bytes()
        .await
        .unwrap();
    gw.kill();
    std::fs::remove_dir_all(gw.project_dir("old")).unwrap();
    let key = match s3 {
        Some(s3) => {
            let key = "envs/old/00000001.zip";
            s3.put_object("archives", key, zip.to_vec()).await.unwrap();
            key
        }
        None => {
            let key = "old/00000001.zip";
            let path = gw.data_dir.join("archives").join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &zip).unwrap();
            key
        }
    };
    let sql = format!(
        "UPDATE projects SET status = 'hibernated' WHERE id = 'old'; \
         INSERT INTO archives (project, version, key, size, sha256, files, created_at) \
         VALUES ('old', 1, '{key}', {}, '', 2, 0);",
        zip.len()
    );
    let db = gw.data_dir.join("state.sqlite3");
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()",
        ])
        .arg(&db)
        .arg(&sql)
        .status()
        .unwrap();
    assert!(status.success());
    gw.restart().await.unwrap();

    let p = gw.project("old").await.unwrap();
    assert_eq!(p["status"], "hibernated");
    assert_eq!(p["snapshot"]["id"], Value::Null, "{p}");
    let r = gw.post("/api/projects/old/open").fetch().await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(snapshot(&gw.project_dir("old")), before);

    // From now on, snapshots.
    let r = gw.post("/api/projects/old/hibernate").fetch().await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["snapshot"]["id"].as_str().unwrap().len(), 64, "{p}");
    let r = gw.post("/api/projects/old/open").fetch().await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(snapshot(&gw.project_dir("old")), before);
}

#[tokio::test]
async fn a_zip_of_an_earlier_version_opens_from_a_folder() {
    a_zip_of_an_earlier_version_opens(None).await;
}

async fn a_zip_of_an_earlier_version_opens_from_s3(s3: &S3Server) {
    a_zip_of_an_earlier_version_opens(Some(s3)).await;
}

/// Issue 10's reproduction: a detached terminal writes a counter into the
/// project every 5 ms while the project hibernates. The hibernation first
/// ends every terminal (an attached one gets `{"type":"exit","reason":
/// "hibernated"}`), and only then cuts the archive: after reopening, the
/// file holds exactly the last value the process wrote before it ended
/// (which it also wrote, from its SIGHUP trap, to a file outside the
/// project).
#[tokio::test]
async fn hibernation_stops_terminals_before_the_archive() {
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    let gw = Gateway::start().await.unwrap();
    gw.open_project("quiet").await.unwrap();
    let outside = tempfile::tempdir().unwrap();
    // The project's processes may run as a user of their own.
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let last_file = outside.path().join("last");
    let connect = |cmd: String| {
        let gw = &gw;
        async move {
            let url = reqwest::Url::parse_with_params(
                &format!("ws://{}/api/projects/quiet/terminal", gw.addr),
                &[("token", gw.token(&["quiet"])), ("cmd", cmd)],
            )
            .unwrap();
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .unwrap();
            match ws.next().await {
                Some(Ok(Message::Text(t))) => assert!(t.contains("\"session\""), "{t}"),
                other => panic!("no session frame: {other:?}"),
            }
            ws
        }
    };
    // One command per iteration increments and writes, so the trap (run
    // between commands) sees the value that is in the file.
    let counter = connect(format!(
        "i=0; trap 'echo $i > {}; exit 0' HUP; while :; do echo $((i=i+1)) > counter.txt; sleep 0.005; done",
        last_file.display()
    ))
    .await;
    drop(counter); // detached: the session lives on
    let mut attached = connect("sleep 987654".into()).await;
    let counter_path = gw.project_dir("quiet").join("counter.txt");
    tests::eventually(
        std::time::Duration::from_secs(20),
        "the counter runs",
        || async {
            let n: u64 = std::fs::read_to_string(&counter_path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            (n >= 20).then_some(())
        },
    )
    .await
    .unwrap();

    let r = gw.post("/api/projects/quiet/hibernate").fetch().await;
    assert_eq!(r.status(), 200);
    let mut exit = None;
    while let Ok(Some(msg)) =
        tokio::time::timeout(std::time::Duration::from_secs(10), attached.next()).await
    {
        match msg {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "exit" {
                    exit = Some(v);
                }
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let exit = exit.expect("an exit frame on the attached terminal");
    assert_eq!(exit["reason"], "hibernated", "{exit}");
    assert!(exit["code"].is_i64(), "{exit}");
    let last: u64 = std::fs::read_to_string(&last_file)
        .expect("the process's SIGHUP trap ran")
        .trim()
        .parse()
        .unwrap();
    assert!(last >= 20, "{last}");
    let sleeping = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .any(|c| c == b"sleep\0987654\0");
    assert!(!sleeping, "a terminal's process outlived the hibernation");

    gw.post("/api/projects/quiet/open").fetch().await;
    let r = gw
        .get("/api/projects/quiet/files/counter.txt")
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    let restored: u64 = r.text().await.unwrap().trim().parse().unwrap();
    assert_eq!(restored, last, "the archive holds the process's last value");
}

/// The local runtime's teardown moves the folder to the data dir's trash in
/// one rename and removes it in the background; a gateway killed before
/// that ends removes the leftovers when it starts again.
#[tokio::test]
async fn a_torn_down_folder_goes_to_the_trash_and_is_removed() {
    let mut gw = Gateway::start().await.unwrap();
    gw.open_project("bin").await.unwrap();
    gw.exec_ok(
        "bin",
        "mkdir -p a/b ro && for i in $(seq 200); do echo $i > a/b/f$i; done && echo x > ro/f && chmod 555 ro",
    )
    .await
    .unwrap();
    let dir = gw.project_dir("bin");
    let trash = gw.data_dir.join("trash");
    gw.hibernate("bin").await.unwrap();
    assert!(
        !dir.exists(),
        "the folder left the project with the hibernation"
    );
    let empty = |t: &Path| std::fs::read_dir(t).unwrap().next().is_none();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !empty(&trash) {
        assert!(
            std::time::Instant::now() < deadline,
            "the trash was not emptied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The project opens with its files, in a new folder.
    let r = gw.open("bin").await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(
        gw.exec_ok("bin", "cat a/b/f200 ro/f").await.unwrap(),
        "200\nx\n"
    );

    // A leftover of a gateway killed mid-removal (read-only folders in it).
    let left = trash.join("bin.00000000deadbeef");
    std::fs::create_dir_all(left.join("x/y")).unwrap();
    std::fs::write(left.join("x/y/z"), "z").unwrap();
    std::fs::set_permissions(left.join("x"), std::fs::Permissions::from_mode(0o555)).unwrap();
    gw.restart().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !empty(&trash) {
        assert!(
            std::time::Instant::now() < deadline,
            "the leftover stayed: {left:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
