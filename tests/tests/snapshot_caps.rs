//! What one snapshot may make the gateway sign and store, end to end with
//! the real gateway and agent: with a tiny `--snapshot-max-bytes`, the
//! hibernation (and a snapshot taken now) of a project bigger than the cap
//! fails with the contract's 413 `payload_too_large`, the project stays
//! active with every file as it was, and no version is recorded; a project
//! under the cap hibernates as usual. The folder store's `PUT /_objects`
//! reads no more than a pack's largest size.

use std::collections::BTreeMap;
use std::path::Path;

use tests::Fetch as _;
use tests::expect_error;
use tests::gateway::Gateway;

const CAP: u64 = 1 << 20;

/// path → content of every file under `root`.
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if m.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Asserts a 413 with the contract's JSON error naming the cap.
async fn assert_over_cap(r: reqwest::Response) {
    let msg = expect_error(r, 413, "payload_too_large").await;
    assert!(msg.contains("--snapshot-max-bytes"), "{msg}");
}

#[tokio::test]
async fn a_snapshot_over_the_cap_fails_and_changes_nothing() {
    let gw = Gateway::builder()
        .args(&["--snapshot-max-bytes", &CAP.to_string()])
        .start()
        .await
        .unwrap();
    gw.open_project("big").await.unwrap();
    // Random bytes do not compress: several packs of about 4 MiB.
    gw.exec_ok(
        "big",
        "head -c 20000000 /dev/urandom > big.bin && mkdir -p src && echo keep > src/a.txt",
    )
    .await
    .unwrap();
    let dir = gw.project_dir("big");
    let before = files(&dir);
    let sum = gw.exec_ok("big", "sha256sum big.bin").await.unwrap();

    let r = gw.post("/api/projects/big/hibernate").fetch().await;
    assert_over_cap(r).await;
    let p = gw.project("big").await.unwrap();
    assert_eq!(p["status"], "active", "{p}");
    assert_eq!(files(&dir), before);
    assert_eq!(gw.exec_ok("big", "sha256sum big.bin").await.unwrap(), sum);
    assert!(gw.snapshots("big").await.unwrap().is_empty());
    let manifests = gw.data_dir.join("archives/big/snapshots");
    let none = std::fs::read_dir(&manifests).map_or(0, |d| d.count());
    assert_eq!(none, 0, "no manifest is stored");
    // The gateway stopped signing early: fewer than the five packs the
    // file needs were stored (at most the first batch's: the agent batches
    // a pack and the two its cutter may have queued).
    let packs = std::fs::read_dir(gw.data_dir.join("archives/big/packs"))
        .map_or(0, |d| d.filter(|e| e.is_ok()).count());
    assert!(packs <= 3, "{packs} packs stored");

    // A snapshot taken now: the same refusal, the project as it was.
    let r = gw.post("/api/projects/big/snapshots").fetch().await;
    assert_over_cap(r).await;
    assert!(gw.snapshots("big").await.unwrap().is_empty());
    assert_eq!(files(&dir), before);

    // A project under the cap hibernates and opens as usual.
    gw.open_project("small").await.unwrap();
    gw.exec_ok("small", "head -c 100000 /dev/urandom > s.bin")
        .await
        .unwrap();
    let small = files(&gw.project_dir("small"));
    let r = gw.post("/api/projects/small/hibernate").fetch().await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = gw.post("/api/projects/small/open").fetch().await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(files(&gw.project_dir("small")), small);
}

/// A signed PUT URL takes no body larger than a pack may be: 413 with the
/// contract's JSON error, nothing written.
#[tokio::test]
async fn an_object_put_reads_no_more_than_a_pack() {
    use gateway::archive_store::{ArchiveStore, Op};
    use gateway::config::ArchiveLocation;

    let gw = Gateway::start().await.unwrap();
    let store = ArchiveStore::new(
        ArchiveLocation::Folder(gw.data_dir.join("archives")),
        gw.secret.as_bytes(),
    )
    .unwrap();
    store.set_base_url(gw.base.clone());
    let body = vec![7u8; devgate_snapshot::PACK_MAX as usize + 1];
    let id = devgate_snapshot::Id::of(&body);
    let url = store
        .sign_url(Op::Put(body.len() as u64), &format!("alpha/packs/{id}"))
        .await
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = http.put(&url).body(body).fetch().await;
    expect_error(r, 413, "payload_too_large").await;
    assert!(
        !gw.data_dir
            .join(format!("archives/alpha/packs/{id}"))
            .exists()
    );
}
