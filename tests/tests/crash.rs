//! SIGKILL at every step of a hibernation and of a restore, end to end with
//! the real gateway and agent: the step is held with the test-only fault
//! hook (`DEVGATE_TEST_PAUSE_AT`, see `pause/src/lib.rs`), then the agent
//! is killed, then the gateway, and the gateway is started again on the same
//! data dir. Afterwards the project settles by itself (no status stays
//! `hibernating` or `restoring`), opens complete (every path's bytes, mode,
//! mtime and symlink target compared, `.git` included), the write
//! acknowledged just before the hibernation is there, and no temporary file
//! is left: no `.agent-tmp-*` in the project, no `.*.tmp` in the archive
//! folder. A hibernation and an open after that still round-trip the tree.
//! The steps run side by side, each on a gateway of its own; a few of them
//! again with the archive store in S3 (moto).

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use tests::gateway::Gateway;
use tests::{S3Server, eventually};

/// path → (kind, mode, mtime in ns, content or link target) of every entry.
type Tree = BTreeMap<String, (&'static str, u32, i64, Vec<u8>)>;

fn tree(root: &Path) -> Result<Tree> {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) -> Result<()> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            let rel = p.strip_prefix(root)?.to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p)?;
            let mtime = m.mtime() * 1_000_000_000 + m.mtime_nsec();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                let target = std::fs::read_link(&p)?;
                let target = target.to_string_lossy().into_owned().into_bytes();
                out.insert(rel, ("symlink", 0, mtime, target));
            } else if m.is_dir() {
                walk(root, &p, out)?;
                out.insert(rel, ("dir", mode, mtime, Vec::new()));
            } else {
                out.insert(rel, ("file", mode, mtime, std::fs::read(&p)?));
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

/// What differs between two trees, for a readable failure.
fn diff(want: &Tree, got: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => out.push(format!("missing {k}")),
            Some(g) if g != v => out.push(format!(
                "{k}: want {} {:o} {}, got {} {:o} {}",
                v.0, v.1, v.2, g.0, g.1, g.2
            )),
            Some(_) => {}
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        out.push(format!("unexpected {k}"));
    }
    out
}

/// A project worth keeping: a git repository, an executable, a symlink
/// inside and one outside, an empty directory, read-only directories, a file big enough for a few
/// chunks, several top-level entries (so a restore's moves can be cut
/// between two of them).
const TREE: &str = r#"set -e
if command -v git >/dev/null; then
  git init -q repo
  cd repo
  git config user.email dev@example.com
  git config user.name dev
  echo hello > README.md
  git add README.md
  git commit -qm first
  cd ..
else
  mkdir repo && echo hello > repo/README.md
fi
mkdir -p src/lib empty node_modules/dep
printf '#!/bin/sh\necho ran\n' > run.sh
chmod 755 run.sh
echo 'fn main() {}' > src/main.rs
echo 'pub fn f() {}' > src/lib/mod.rs
echo 'module.exports = 1' > node_modules/dep/index.js
head -c 2500000 /dev/urandom > big.bin
ln -s repo/README.md inside
ln -s /etc/hostname outside
mkdir -p tools/ro/sub
echo x > tools/ro/sub/f
chmod 555 tools/ro/sub tools/ro
touch -d '@1600000000.123456789' run.sh big.bin
"#;

/// The bucket of the S3 cases (one prefix per case).
const BUCKET: &str = "crash";

const PAUSE_AT: &str = "DEVGATE_TEST_PAUSE_AT";
const PAUSE_DIR: &str = "DEVGATE_TEST_PAUSE_DIR";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Op {
    Hibernate,
    Restore,
}

/// A process: its id and its start time (field 22 of `/proc/<pid>/stat`),
/// so that an id the system gave to another process since is never killed.
type Process = (i32, String);

/// The start time of `pid`, while it runs.
fn started(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(19).map(str::to_owned)
}

/// The agents the gateway started (children named `agent`).
fn agents_of(gateway: u32) -> Vec<Process> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces, not `)`.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok());
        if ppid == Some(gateway)
            && head.ends_with("(agent")
            && let Some(t) = started(pid)
        {
            out.push((pid, t));
        }
    }
    out
}

/// SIGKILL, when `p` is still the process it was.
fn sigkill(p: &Process) -> Result<()> {
    if started(p.0).as_ref() != Some(&p.1) {
        bail!("process {} is gone", p.0);
    }
    let st = std::process::Command::new("kill")
        .args(["-KILL", &p.0.to_string()])
        .stderr(std::process::Stdio::null())
        .status()?;
    ensure!(st.success(), "kill -KILL {}: {st}", p.0);
    Ok(())
}

/// `.tmp` files (temporary puts) anywhere in the archive folder.
fn archive_temporaries(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if e.file_name().to_string_lossy().ends_with(".tmp") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

/// Which processes a case kills at the held step.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kill {
    /// The agent, then (half a second later) the gateway.
    AgentThenGateway,
    /// The gateway alone: the agent, held in its step, gets its
    /// parent-death SIGTERM and may go on for its grace period.
    Gateway,
}

/// One step: set up, hold the step, SIGKILL as `kill` says, start the
/// gateway again, check.
async fn kill_at(op: Op, step: &str, kill: Kill, s3: Option<&S3Server>) -> Result<()> {
    let pauses = tempfile::tempdir()?;
    // The agent runs as the project's user and writes its marker there too.
    std::fs::set_permissions(pauses.path(), std::fs::Permissions::from_mode(0o777))?;
    let mut builder = Gateway::builder()
        .args(&["--lease-secs", "2"])
        .env(PAUSE_AT, step)
        .env(PAUSE_DIR, pauses.path().to_string_lossy());
    if let Some(s3) = s3 {
        builder = builder
            .envs(&s3.env())
            .archive(format!("s3://{BUCKET}/{step}-{kill:?}"));
    }
    let mut gw = builder.start().await?;
    let p = "keep";
    gw.open_project(p).await?;
    gw.exec_ok(p, TREE).await?;
    // The acknowledged write, just before the hibernation.
    let r = gw
        .put(&format!("/api/projects/{p}/files/notes/ack.txt"))
        .body("acknowledged")
        .send()
        .await?;
    ensure!(r.status() == 200, "write: {}", r.status());
    let dir = gw.project_dir(p);
    let mut want = tree(&dir)?;
    ensure!(want.contains_key("notes/ack.txt") && want.contains_key("inside"));
    if op == Op::Restore {
        gw.call(p, "hibernate", &Value::Null).await?;
    }

    // The step in flight, held.
    let what = match op {
        Op::Hibernate => "hibernate",
        Op::Restore => "open",
    };
    let request = gw
        .post(&format!("/api/projects/{p}/{what}"))
        .timeout(Duration::from_secs(120))
        .send();
    let in_flight = tokio::spawn(request);
    let marker = pauses.path().join(step);
    eventually(
        Duration::from_secs(60),
        "the step to be reached",
        || async { marker.exists().then_some(()) },
    )
    .await?;
    if step == "hibernate-teardown" {
        // A teardown cut halfway: part of the folder is gone already.
        std::fs::remove_file(dir.join("big.bin"))?;
        std::fs::remove_dir_all(dir.join("repo"))?;
    }
    let gateway = gw.pid().context("gateway pid")?;
    let agents = agents_of(gateway);
    ensure!(!agents.is_empty(), "no agent runs at {step}");
    if kill == Kill::AgentThenGateway {
        for agent in &agents {
            sigkill(agent)?;
        }
        // The gateway may see the agent go (a step it was waiting for fails).
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    gw.kill();
    in_flight.abort();
    let archives = gw.data_dir.join("archives");
    if step == "archive-rename" {
        // What the sweep is for: a put cut short left its temporary file.
        ensure!(
            !archive_temporaries(&archives).is_empty(),
            "no temporary file at {step}"
        );
    }
    gw.set_env(PAUSE_AT, None);
    gw.restart().await?;

    // It settles without being asked.
    let settled = eventually(Duration::from_secs(30), "a settled status", || async {
        let s = gw.status(p).await.ok()?;
        matches!(s.as_str(), "active" | "hibernated").then_some(s)
    })
    .await?;
    eventually(Duration::from_secs(10), "no temporary put left", || async {
        archive_temporaries(&archives).is_empty().then_some(())
    })
    .await
    .with_context(|| format!("{:?}", archive_temporaries(&archives)))?;
    if settled == "active" {
        ensure!(
            op == Op::Hibernate,
            "a restore cut short came back active (status {settled})"
        );
    }

    // Opens complete, with the acknowledged write.
    let v = gw.call(p, "open", &Value::Null).await?;
    ensure!(v["status"] == "active", "open: {v}");
    let check = |want: &Tree, when: &str| -> Result<()> {
        let got = tree(&dir)?;
        let d = diff(want, &got);
        if !d.is_empty() {
            bail!("{when} (settled {settled}): {d:#?}");
        }
        Ok(())
    };
    check(&want, "after the kill")?;
    if want.contains_key("repo/.git") {
        let log = gw
            .exec_ok(p, "cd repo && git log --oneline && git status --short")
            .await?;
        ensure!(log.trim().ends_with("first"), "git log and status: {log}");
        // git status refreshes its index: that is the tree from now on.
        want = tree(&dir)?;
    }
    // Still a project like any other: a full round trip.
    gw.call(p, "hibernate", &Value::Null).await?;
    ensure!(
        !dir.exists(),
        "the folder of a hibernated project is torn down"
    );
    gw.call(p, "open", &Value::Null).await?;
    check(&want, "after one more hibernation")?;
    // An agent of the killed gateway may still be in its grace period.
    for agent in &agents {
        let _ = sigkill(agent);
    }
    Ok(())
}

/// Every step with both kills where the agent holds it (the gateway alone
/// dying is then a case of its own), the agent then the gateway elsewhere.
async fn all(op: Op, steps: &[(&'static str, bool)], s3: Option<&S3Server>) {
    let mut cases = Vec::new();
    for &(step, agent_step) in steps {
        cases.push((step, Kill::AgentThenGateway));
        if agent_step {
            cases.push((step, Kill::Gateway));
        }
    }
    let runs = cases.iter().map(|&(s, k)| async move {
        let r = kill_at(op, s, k, s3).await;
        (s, k, r)
    });
    let mut failed = Vec::new();
    for (step, kill, r) in futures::future::join_all(runs).await {
        match r {
            Ok(()) => eprintln!(
                "{op:?}, {kill:?} killed at {step} (s3: {}): ok",
                s3.is_some()
            ),
            Err(e) => failed.push(format!("{op:?}, {kill:?} killed at {step}: {e:#}")),
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_every_step_of_a_hibernation() {
    all(
        Op::Hibernate,
        &[
            // gateway: processes being stopped
            ("hibernate-quiesce", false),
            // agent: a batch of packs uploaded, more to come
            ("snapshot-upload", true),
            // gateway: a pack's temporary file written, not renamed
            ("archive-rename", false),
            // gateway: packs uploaded, manifest not stored
            ("hibernate-verify", false),
            // gateway: manifest stored, not recorded
            ("hibernate-manifest", false),
            // gateway: recorded, not marked hibernated
            ("hibernate-record", false),
            // gateway: marked hibernated, folder half removed
            ("hibernate-teardown", false),
        ],
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_every_step_of_a_restore() {
    all(
        Op::Restore,
        &[
            // agent: a batch of packs fetched into the staging folder
            ("restore-download", true),
            // agent: the first entry moved into place, the others not
            ("restore-commit", true),
            // gateway: every file in place, not marked active
            ("restore-files", false),
        ],
        None,
    )
    .await;
}

/// The same with the archive store in S3 (moto): packs go up and down on
/// presigned URLs, the manifest through the gateway's client.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_with_an_s3_archive_store() {
    let s3 = S3Server::moto().await.unwrap();
    s3.create_bucket(BUCKET).await.unwrap();
    let hibernate = all(
        Op::Hibernate,
        &[
            ("snapshot-upload", true),
            ("hibernate-manifest", false),
            ("hibernate-record", false),
        ],
        Some(&s3),
    );
    let restore = all(
        Op::Restore,
        &[("restore-download", true), ("restore-files", false)],
        Some(&s3),
    );
    futures::future::join(hibernate, restore).await;
}
