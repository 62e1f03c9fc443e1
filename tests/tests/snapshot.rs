//! Hibernation as snapshots, end to end with the real gateway and agent:
//! nothing is left out (every byte, mode, nanosecond mtime, symlink target
//! and empty directory comes back, `.git` and `node_modules` included), a
//! second hibernation uploads next to nothing, a tampered pack fails the
//! open and leaves the project hibernated, agents hold no storage
//! credentials, and a signed object URL reaches its own object only (the
//! folder store's HMAC URLs, and S3 presigned URLs against s3s-fs, which
//! checks them). The S3 tests run against moto and against s3s-fs.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use serde_json::{Value, json};
use tests::Fetch as _;
use tests::S3Server;
use tests::expect_error;
use tests::gateway::Gateway;

/// path → (kind, mode, mtime in ns, content or link target) of every entry
/// under `root`, nothing left out.
type Tree = BTreeMap<String, (&'static str, u32, i64, Vec<u8>)>;

fn tree(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mtime = m.mtime() * 1_000_000_000 + m.mtime_nsec();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                let target = target.to_string_lossy().into_owned().into_bytes();
                out.insert(rel, ("symlink", 0, mtime, target));
            } else if m.is_dir() {
                walk(root, &p, out);
                out.insert(rel, ("dir", mode, mtime, Vec::new()));
            } else {
                out.insert(rel, ("file", mode, mtime, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// A project with everything a zip used to lose.
const EVERYTHING: &str = r#"set -e
git init -q repo
cd repo
git config user.email dev@example.com
git config user.name dev
echo hello > README.md
git add README.md
git commit -qm first
cd ..
mkdir -p node_modules/dep __pycache__ .cache/x empty/deeper
echo 'module.exports = 1' > node_modules/dep/index.js
printf 'pyc' > __pycache__/m.pyc
printf '#!/bin/sh\necho ran\n' > run.sh
chmod 755 run.sh
printf 'secret' > private
chmod 600 private
: > zero
head -c 3000000 /dev/urandom > big.bin
ln -s /etc/hostname outside
ln -s repo/README.md inside
ln -s does/not/exist dangling
chmod 700 empty
touch -d '@1600000000.123456789' run.sh big.bin
touch -h -d '@1500000000.5' outside
touch -d '@1400000000.25' empty/deeper
touch -d '@1400000000.75' empty
latin="$(printf 'caf\351')"
mkdir "$latin"
printf 'latin-1' > "$latin/$(printf 'n\377.txt')"
ln -s "$(printf '../\376')" "$latin/$(printf 'l\375')"
"#;

#[tokio::test]
async fn hibernation_keeps_everything_and_the_second_one_uploads_next_to_nothing() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("full").await.unwrap();
    gw.exec_ok("full", EVERYTHING).await.unwrap();
    let dir = gw.project_dir("full");
    let before = tree(&dir);
    for p in [
        "repo/.git/HEAD",
        "node_modules/dep/index.js",
        "__pycache__/m.pyc",
        "empty/deeper",
        "outside",
        "dangling",
        "zero",
        // Names and a target that are not UTF-8 (format 2, `path_hex`).
        "caf\u{FFFD}/n\u{FFFD}.txt",
        "caf\u{FFFD}/l\u{FFFD}",
    ] {
        assert!(
            before.contains_key(p),
            "{p} missing from {:?}",
            before.keys()
        );
    }

    let p = gw.hibernate("full").await.unwrap();
    let snap = &p["snapshot"];
    let id = snap["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 64, "{snap}");
    assert_eq!(p["archive"], *snap, "archive is an alias of snapshot");
    let first_upload = snap["uploaded_bytes"].as_u64().unwrap();
    assert!(
        first_upload > 3_000_000,
        "random bytes do not shrink: {snap}"
    );
    assert!(snap["files"].as_u64().unwrap() >= 10, "{snap}");
    assert!(!dir.exists(), "the environment is torn down");

    let r = gw.open("full").await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(tree(&dir), before, "every path, byte, mode, mtime and link");

    // The repository works; the executable runs.
    let log = gw
        .exec_ok("full", "git -C repo log --oneline")
        .await
        .unwrap();
    assert!(log.contains("first"), "{log}");
    let status = gw
        .exec_ok("full", "git -C repo status --porcelain")
        .await
        .unwrap();
    assert_eq!(status, "", "a clean work tree");
    assert_eq!(gw.exec_ok("full", "./run.sh").await.unwrap(), "ran\n");
    let e: Value = gw
        .get("/api/projects/full/stat/run.sh")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(e["mode"], "0755");

    // Nothing changed: only a new manifest is stored.
    let before = tree(&dir);
    let p = gw.hibernate("full").await.unwrap();
    let again = p["snapshot"]["uploaded_bytes"].as_u64().unwrap();
    assert!(
        again < 64 * 1024,
        "uploaded {again} bytes for an unchanged project"
    );
    assert_ne!(p["snapshot"]["id"], json!(id));
    let r = gw.open("full").await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(tree(&dir), before);
}

/// A project of many files has a manifest of a few MB; it is stored in
/// pieces, so hibernating the project unchanged stores a small index and no
/// piece, and changing a few files stores only the pieces around them.
#[tokio::test]
async fn the_manifest_of_many_files_is_stored_again_only_where_it_changed() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("many").await.unwrap();
    gw.exec_ok(
        "many",
        "mkdir -p src && cd src && for i in $(seq 20000); do echo \"line $i\" > f$i.ts; done",
    )
    .await
    .unwrap();
    let dir = gw.project_dir("many");
    let first = gw.hibernate("many").await.unwrap();
    let first = first["snapshot"]["uploaded_bytes"].as_u64().unwrap();
    let manifest = std::fs::read_dir(gw.data_dir.join("archives/many/packs"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .min()
        .unwrap();
    assert!(
        manifest > 500_000,
        "the manifest's pack is {manifest} bytes"
    );
    let r = gw.open("many").await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let before = tree(&dir);

    let p = gw.hibernate("many").await.unwrap();
    let again = p["snapshot"]["uploaded_bytes"].as_u64().unwrap();
    assert!(
        again < 32 * 1024,
        "uploaded {again} bytes for an unchanged project (first: {first})"
    );
    opens_to(&gw, "many", &before).await;

    gw.exec_ok(
        "many",
        "for i in 5 500 5000 9000 15000; do echo edit >> src/f$i.ts; done",
    )
    .await
    .unwrap();
    let edited = tree(&dir);
    let p = gw.hibernate("many").await.unwrap();
    let up = p["snapshot"]["uploaded_bytes"].as_u64().unwrap();
    assert!(
        up < manifest / 2,
        "uploaded {up} bytes for 5 changed files (the manifest's pack: {manifest})"
    );
    opens_to(&gw, "many", &edited).await;
}

#[tokio::test]
async fn a_tampered_pack_fails_the_open_and_the_project_stays_hibernated() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("tamper").await.unwrap();
    gw.exec_ok(
        "tamper",
        "head -c 400000 /dev/urandom > data.bin && echo keep > a.txt",
    )
    .await
    .unwrap();
    let before = tree(&gw.project_dir("tamper"));
    let p = gw.hibernate("tamper").await.unwrap();
    let id = p["snapshot"]["id"].as_str().unwrap().to_owned();

    // Two packs: the files' chunks, and the manifest's pieces (smaller).
    let mut packs: Vec<_> = std::fs::read_dir(gw.data_dir.join("archives/tamper/packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(packs.len(), 2, "{packs:?}");
    packs.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).unwrap().len()));
    let original = std::fs::read(&packs[0]).unwrap();
    let mut bad = original.clone();
    bad[original.len() / 2] ^= 0x40;
    std::fs::write(&packs[0], &bad).unwrap();

    let dir = gw.project_dir("tamper");
    // The open is refused, naming the snapshot; nothing is written and the
    // project stays hibernated.
    let refused = || async {
        let r = gw.open("tamper").await.unwrap();
        assert_eq!(r.status(), 500);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "snapshot_unusable", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(&id) && msg.contains("pack"), "{msg}");
        let p = gw.project("tamper").await.unwrap();
        assert_eq!(p["status"], "hibernated");
        assert!(
            !dir.exists() || std::fs::read_dir(&dir).unwrap().next().is_none(),
            "nothing half-written"
        );
    };
    refused().await;

    // The same with the pack of the manifest's pieces tampered with.
    std::fs::write(&packs[0], &original).unwrap();
    let manifest_pack = std::fs::read(&packs[1]).unwrap();
    let mut bad = manifest_pack.clone();
    bad[12] ^= 0x40;
    std::fs::write(&packs[1], &bad).unwrap();
    refused().await;

    // The snapshot itself was never touched: with the packs repaired, it opens.
    std::fs::write(&packs[1], &manifest_pack).unwrap();
    opens_to(&gw, "tamper", &before).await;
}

/// Opens `project` and checks its folder is `want`.
async fn opens_to(gw: &Gateway, project: &str, want: &Tree) {
    let r = gw.open(project).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(&tree(&gw.project_dir(project)), want);
}

tests::on_both_s3_servers!(s3_snapshots_with_no_credentials_in_the_agent);

async fn s3_snapshots_with_no_credentials_in_the_agent(s3: &S3Server) {
    s3.create_bucket("snaps").await.unwrap();
    let gw = Gateway::builder()
        .envs(&s3.env())
        .archive("s3://snaps/pre")
        .start()
        .await
        .unwrap();
    gw.open_project("s3p").await.unwrap();
    gw.exec_ok("s3p", EVERYTHING).await.unwrap();

    // The agent and everything it runs see no storage credentials, and a
    // process of the project cannot read the agent's environment
    // (non-dumpable: /proc/<pid>/environ belongs to root).
    let pid = gw.agent_pid("s3p").await.unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("AWS_"), "{environ}");
    assert!(!environ.contains(tests::S3_SECRET_KEY), "{environ}");
    let env = gw.exec_ok("s3p", "env").await.unwrap();
    assert!(!env.contains("AWS_"), "{env}");
    let own = gw
        .exec_ok("s3p", "tr '\\0' '\\n' < /proc/self/environ")
        .await
        .unwrap();
    assert!(own.contains("PATH="), "{own}");
    assert!(!own.contains("AWS_"), "{own}");
    assert!(!own.contains(tests::S3_SECRET_KEY), "{own}");
    let v = gw.exec("s3p", "cat /proc/$PPID/environ").await.unwrap();
    assert_ne!(
        v["exit_code"], 0,
        "the agent's environment is readable: {v}"
    );

    let before = tree(&gw.project_dir("s3p"));
    let p = gw.hibernate("s3p").await.unwrap();
    let key = p["snapshot"]["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("pre/s3p/snapshots/"), "{key}");
    let listing = s3.keys("snaps", "pre/s3p/").await.unwrap();
    assert!(
        listing.iter().any(|k| k.starts_with("pre/s3p/packs/")),
        "{listing:?}"
    );
    assert!(listing.contains(&key), "{listing:?}");

    let r = gw.open("s3p").await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(tree(&gw.project_dir("s3p")), before);
    let p = gw.hibernate("s3p").await.unwrap();
    assert!(
        p["snapshot"]["uploaded_bytes"].as_u64().unwrap() < 64 * 1024,
        "{p}"
    );

    // Delete removes every object of the project.
    let r = gw.delete("/api/projects/s3p").fetch().await;
    assert_eq!(r.status(), 204);
    let listing = s3.keys("snaps", "pre/s3p/").await.unwrap();
    assert!(listing.is_empty(), "{listing:?}");
}

/// A presigned URL for project A's pack, made with the gateway's own S3
/// settings and presign code, against s3s-fs (which checks SigV4 signatures
/// and expiry; moto checks neither, so this runs on s3s-fs only): it writes
/// A's object and nothing else.
#[tokio::test]
async fn a_presigned_url_reaches_its_own_object_only() {
    use gateway::archive_store::{ArchiveStore, URL_TTL};
    use gateway::config::ArchiveLocation;

    let s3 = S3Server::s3s_fs().await.unwrap();
    s3.create_bucket("snaps").await.unwrap();
    let store = ArchiveStore::new(
        ArchiveLocation::S3 {
            bucket: "snaps".into(),
            prefix: "pre".into(),
        },
        b"secret",
    )
    .unwrap();
    let client = gateway::s3::configure(s3.sdk_config(), true);
    let presign = |put: Option<u64>, key: String, ttl: std::time::Duration| {
        let client = client.clone();
        async move {
            gateway::s3::presign_with(&client, put, "snaps", &key, ttl)
                .await
                .unwrap()
        }
    };
    let body = b"a pack's bytes".to_vec();
    let id = devgate_snapshot::Id::of(&body);
    let (key_a, key_b) = (store.pack_key("alpha", &id), store.pack_key("beta", &id));
    assert_eq!(key_a, format!("pre/alpha/packs/{id}"));
    let len = Some(body.len() as u64);
    let put_a = presign(len, key_a.clone(), URL_TTL).await;
    assert!(put_a.contains("X-Amz-Signature="), "{put_a}");
    assert!(
        put_a.contains("content-length"),
        "the length is not signed: {put_a}"
    );
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // Project B's object with project A's URL: refused, nothing written.
    let put_b = put_a.replace("/alpha/packs/", "/beta/packs/");
    assert_ne!(put_b, put_a);
    let r = http.put(&put_b).body(body.clone()).fetch().await;
    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap());
    assert_eq!(s3.get_object("snaps", &key_b).await.unwrap(), None);
    // Nor without a signature at all.
    let r = http
        .put(format!("{}/snaps/{key_b}", s3.endpoint))
        .body(body.clone())
        .fetch()
        .await;
    assert_eq!(r.status(), 403);
    // Another method, or a longer expiry than signed.
    let r = http.get(&put_a).fetch().await;
    assert_eq!(r.status(), 403);
    let longer = put_a.replace(
        &format!("X-Amz-Expires={}", URL_TTL.as_secs()),
        &format!("X-Amz-Expires={}", 10 * URL_TTL.as_secs()),
    );
    assert_ne!(longer, put_a);
    let r = http.put(&longer).body(body.clone()).fetch().await;
    assert_eq!(r.status(), 403);
    assert_eq!(s3.get_object("snaps", &key_a).await.unwrap(), None);

    // An expired URL for A's own object: refused.
    let short = presign(len, key_a.clone(), std::time::Duration::from_secs(1)).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = http.put(&short).body(body.clone()).fetch().await;
    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap());
    assert_eq!(s3.get_object("snaps", &key_a).await.unwrap(), None);

    // A body longer or shorter than signed: refused.
    let mut longer = body.clone();
    longer.extend_from_slice(b" and more");
    let r = http.put(&put_a).body(longer).fetch().await;
    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap());
    let r = http.put(&put_a).body(body[1..].to_vec()).fetch().await;
    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap());
    assert_eq!(s3.get_object("snaps", &key_a).await.unwrap(), None);

    // The URL itself works, for its object, and a GET URL reads it back.
    let r = http.put(&put_a).body(body.clone()).fetch().await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(
        s3.get_object("snaps", &key_a).await.unwrap(),
        Some(body.clone())
    );
    assert_eq!(s3.get_object("snaps", &key_b).await.unwrap(), None);
    let get_a = presign(None, key_a.clone(), URL_TTL).await;
    let r = http.get(&get_a).fetch().await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), body);
    // A's GET URL does not read B's object either (B's exists now).
    s3.put_object("snaps", &key_b, b"project b's pack".to_vec())
        .await
        .unwrap();
    let r = http
        .get(get_a.replace("/alpha/packs/", "/beta/packs/"))
        .fetch()
        .await;
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn a_signed_object_url_reaches_its_own_object_only() {
    use gateway::archive_store::{ArchiveStore, Op};
    use gateway::config::ArchiveLocation;

    let gw = Gateway::start().await.unwrap();
    // Signed with the gateway's own code and secret, as the gateway signs
    // the URLs it hands its agents.
    let store = ArchiveStore::new(
        ArchiveLocation::Folder(gw.data_dir.join("archives")),
        gw.secret.as_bytes(),
    )
    .unwrap();
    store.set_base_url(gw.base.clone());
    let body = b"a pack's bytes".to_vec();
    let id = devgate_snapshot::Id::of(&body);
    let len = body.len() as u64;
    let put_a = store
        .sign_url(Op::Put(len), &format!("alpha/packs/{id}"))
        .await
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // Project B's object with project A's signature: refused, nothing written.
    let put_b = put_a.replace("/alpha/packs/", "/beta/packs/");
    let r = http.put(&put_b).body(body.clone()).fetch().await;
    assert_eq!(r.status(), 403);
    assert!(
        !gw.data_dir
            .join(format!("archives/beta/packs/{id}"))
            .exists()
    );
    // Another method, a changed expiry, a body that is not the named pack.
    let r = http.get(&put_a).fetch().await;
    assert_eq!(r.status(), 403);
    let later = put_a.replace("exp=", "exp=1");
    let r = http.put(&later).body(body.clone()).fetch().await;
    assert_eq!(r.status(), 403);
    let r = http.put(&put_a).body("other bytes").fetch().await;
    assert_eq!(r.status(), 400);
    // The length is signed: another one in the URL is refused, and a body
    // of another length than signed too.
    let longer = put_a.replace(&format!("len={len}"), &format!("len={}", len + 1));
    assert_ne!(longer, put_a);
    let r = http.put(&longer).body(body.clone()).fetch().await;
    assert_eq!(r.status(), 403);
    let no_len = put_a.replace(&format!("&len={len}"), "");
    let r = http.put(&no_len).body(body.clone()).fetch().await;
    assert_eq!(r.status(), 403);
    let r = http.put(&put_a).body(body[1..].to_vec()).fetch().await;
    assert_eq!(r.status(), 400);
    assert!(
        !gw.data_dir
            .join(format!("archives/alpha/packs/{id}"))
            .exists()
    );
    // Only pack keys are served, whatever the signature.
    let manifest = store
        .sign_url(Op::Put(len), &format!("alpha/snapshots/{id}"))
        .await
        .unwrap();
    let r = http.put(&manifest).body(body.clone()).fetch().await;
    assert_eq!(r.status(), 404);

    // The URL itself works, for its object.
    let r = http.put(&put_a).body(body.clone()).fetch().await;
    assert_eq!(r.status(), 200);
    let get_a = store
        .sign_url(Op::Get, &format!("alpha/packs/{id}"))
        .await
        .unwrap();
    let r = http.get(&get_a).fetch().await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), body);
}

#[tokio::test]
async fn snapshots_are_listed_taken_while_active_and_opened_by_id() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("ver").await.unwrap();
    gw.exec_ok("ver", "echo one > a.txt").await.unwrap();

    // Taken now, without stopping anything: the project stays active.
    let r = gw.post("/api/projects/ver/snapshots").fetch().await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let manual: Value = r.json().await.unwrap();
    assert_eq!(manual["reason"], "manual");
    let first = manual["id"].as_str().unwrap().to_owned();
    assert_eq!(gw.exec_ok("ver", "cat a.txt").await.unwrap(), "one\n");

    gw.exec_ok("ver", "echo two > a.txt").await.unwrap();
    let p = gw.hibernate("ver").await.unwrap();
    let second = p["snapshot"]["id"].as_str().unwrap().to_owned();
    let list: Vec<Value> = gw
        .get("/api/projects/ver/snapshots")
        .fetch()
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [second.as_str(), first.as_str()], "newest first");
    assert_eq!(list[0]["reason"], "hibernate");
    for s in &list {
        for field in ["created_at", "files", "bytes", "uploaded_bytes"] {
            assert!(!s[field].is_null(), "{field} in {s}");
        }
    }

    // An unknown id: 404, and the project stays hibernated.
    let r = gw
        .post("/api/projects/ver/open")
        .json(&json!({"snapshot": "0".repeat(64)}))
        .fetch()
        .await;
    assert_eq!(r.status(), 404);
    // The older one, by id.
    let r = gw
        .post("/api/projects/ver/open")
        .json(&json!({"snapshot": first}))
        .fetch()
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(gw.exec_ok("ver", "cat a.txt").await.unwrap(), "one\n");
    // An active project does not jump to another snapshot.
    let r = gw
        .post("/api/projects/ver/open")
        .json(&json!({"snapshot": second}))
        .fetch()
        .await;
    assert_eq!(r.status(), 409);
    assert_eq!(gw.exec_ok("ver", "cat a.txt").await.unwrap(), "one\n");

    gw.hibernate("ver").await.unwrap();
    let r = gw.post("/api/projects/ver/snapshots").fetch().await;
    expect_error(r, 409, "project_not_active").await;
}

/// A cut does not read again a file whose inode, ctime, size and mtime are
/// those the agent recorded; a write that keeps the size and puts the mtime
/// back still moves ctime, so it is read and kept.
#[tokio::test]
async fn a_file_rewritten_with_its_size_and_mtime_kept_is_read_again() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("stamps").await.unwrap();
    gw.exec_ok("stamps",
        "printf AAAAAAAA > same.txt && printf keep > other.txt && touch -d '@1600000000.5' same.txt",
    )
    .await.unwrap();
    // The agent keeps a file's stamp once its ctime is 100 ms old.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = gw.post("/api/projects/stamps/snapshots").fetch().await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    gw.exec_ok(
        "stamps",
        "printf BBBBBBBB > same.txt && touch -d '@1600000000.5' same.txt",
    )
    .await
    .unwrap();
    gw.hibernate("stamps").await.unwrap();
    let r = gw.open("stamps").await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let dir = gw.project_dir("stamps");
    assert_eq!(std::fs::read(dir.join("same.txt")).unwrap(), b"BBBBBBBB");
    assert_eq!(std::fs::read(dir.join("other.txt")).unwrap(), b"keep");
    let m = std::fs::metadata(dir.join("same.txt")).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 500_000_000));

    // Right after a restore (whose stamps do not wait for ctime to settle),
    // the same rewrite is seen too.
    gw.exec_ok(
        "stamps",
        "printf CCCCCCCC > same.txt && touch -d '@1600000000.5' same.txt",
    )
    .await
    .unwrap();
    gw.hibernate("stamps").await.unwrap();
    let r = gw.open("stamps").await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(std::fs::read(dir.join("same.txt")).unwrap(), b"CCCCCCCC");
}
