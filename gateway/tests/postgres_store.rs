//! The PostgreSQL state store against a real PostgreSQL from Debian's
//! packages (`scripts/install-test-deps.sh` installs it), started by the test
//! in a temporary directory on a free loopback port: migrations (once, even
//! with two replicas starting together), the same answers as the SQLite
//! store for the same calls, and reconnection after a server restart.

use std::time::{Duration, Instant};

use chrono::{TimeZone as _, Utc};
use gateway::error::Error;
use gateway::store::postgres::{PostgresStore, SCHEMA_VERSION};
use gateway::store::sqlite::SqliteStore;
use gateway::store::{
    ArchiveVersion, CommandLogEntry, Container, ContainerStatus, LogPage, PreviewCode, Project,
    ProjectStatus, Share, Store, Template,
};
use tests::postgres::{Postgres, create_db};

fn t(ms: i64) -> chrono::DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap()
}

/// The same calls on any store, and a transcript of what it answered.
async fn exercise(s: &dyn Store) -> Vec<String> {
    let mut out = Vec::new();
    let project = |id: &str| Project {
        id: id.into(),
        name: format!("Project {id}"),
        status: ProjectStatus::Created,
        created_at: t(1_700_000_000_123),
        updated_at: t(1_700_000_000_456),
        hibernated_at: None,
    };
    s.create_project(&project("b")).await.unwrap();
    s.create_project(&project("a")).await.unwrap();
    out.push(format!(
        "dup project: {:?}",
        s.create_project(&project("a")).await.map_err(|e| kind(&e))
    ));
    let a = s.get_project("a").await.unwrap().unwrap();
    out.push(format!("{a:?}"));
    // Compare-and-set: from an expected status only; `hibernated_at` comes
    // with `hibernated`.
    use ProjectStatus::*;
    for (from, to, at) in [
        (&[Created][..], Active, 1_700_000_050_000),
        (&[Created][..], Starting, 1_700_000_060_000),
        (&[Active, Starting][..], Hibernating, 1_700_000_070_000),
        (&[Hibernating][..], Hibernated, 1_700_000_100_000),
        (&[Active][..], Hibernating, 1_700_000_110_000),
    ] {
        out.push(format!(
            "transition {from:?} -> {to:?}: {:?}",
            s.transition("a", from, to, t(at)).await
        ));
    }
    out.push(format!("{:?}", s.list_projects().await.unwrap()));
    out.push(format!("missing: {:?}", s.get_project("zz").await.unwrap()));
    out.push(format!(
        "transition missing: {:?}",
        s.transition("ghost", &[Created], Active, t(1))
            .await
            .map_err(|e| kind(&e))
    ));

    // Leases: free, held, renewed by its holder, taken once expired,
    // released only by its holder.
    let lease = |holder: &'static str, until: i64, now: i64| {
        s.acquire_lease("project:a", holder, t(until), t(now))
    };
    out.push(format!(
        "lease r1 {:?}, r2 {:?}, r1 renews {:?}, holder {:?}",
        lease("r1", 1_000, 0).await.unwrap(),
        lease("r2", 1_500, 500).await.unwrap(),
        lease("r1", 2_000, 900).await.unwrap(),
        s.lease_holder("project:a", t(1_000)).await.unwrap()
    ));
    out.push(format!(
        "at expiry r2 {:?}, holder {:?}, r1 renews {:?}",
        lease("r2", 3_000, 2_000).await.unwrap(),
        s.lease_holder("project:a", t(2_500)).await.unwrap(),
        lease("r1", 4_000, 2_500).await.unwrap()
    ));
    s.release_lease("project:a", "r1").await.unwrap();
    out.push(format!(
        "r1 cannot release r2's: {:?}",
        s.lease_holder("project:a", t(2_500)).await.unwrap()
    ));
    s.release_lease("project:a", "r2").await.unwrap();
    out.push(format!(
        "released: {:?}, expired holder: {:?}, r3 {:?}",
        s.lease_holder("project:a", t(2_500)).await.unwrap(),
        s.lease_holder("other", t(0)).await.unwrap(),
        lease("r3", 5_000, 2_600).await.unwrap()
    ));

    // Activity: the newest time is kept; idle = active and quiet since.
    s.transition("b", &[Created], Active, t(1_700_000_000_000))
        .await
        .unwrap();
    out.push(format!(
        "idle before any activity: {:?}",
        s.idle_projects(t(1_700_000_000_001)).await.unwrap()
    ));
    s.touch_project("b", t(1_700_000_500_000)).await.unwrap();
    s.touch_project("b", t(1_700_000_400_000)).await.unwrap();
    s.touch_project("ghost", t(1)).await.unwrap();
    out.push(format!(
        "last {:?}, idle at 450: {:?}, at 600: {:?}, none: {:?}",
        s.last_activity("b").await.unwrap(),
        s.idle_projects(t(1_700_000_450_000)).await.unwrap(),
        s.idle_projects(t(1_700_000_600_000)).await.unwrap(),
        s.last_activity("a").await.unwrap()
    ));

    // The write gate's store side: allowed only while active.
    let w = s.enter_write("b").await.unwrap();
    out.push(format!(
        "enter b {:?} {:?}, a {:?}, ghost {:?}",
        w.allowed,
        w.status,
        s.enter_write("a").await.map(|e| (e.allowed, e.status)),
        s.enter_write("ghost").await.map(|e| (e.allowed, e.status))
    ));
    out.push(format!(
        "leave {:?}",
        s.leave_write("b", w.session).await.unwrap()
    ));
    let closed = s.close_writes("b").await.unwrap();
    out.push(format!(
        "closed {:?}, still {:?}",
        closed.is_some(),
        s.writes_still_closed("b", closed.unwrap_or_default())
            .await
            .unwrap()
    ));
    s.open_writes("b", closed.unwrap_or_default())
        .await
        .unwrap();

    let container = |name: &str, port: u16| Container {
        project: "a".into(),
        name: name.into(),
        status: ContainerStatus::Stopped,
        port,
        start: "npm run dev".into(),
        install: Some("npm ci".into()),
        env: [("K".to_owned(), "V é".to_owned())].into(),
        public: false,
        template: Some(Template {
            git: "https://example.com/x.git".into(),
            git_ref: Some("main".into()),
        }),
        created_at: t(1_700_000_000_000 + i64::from(port)),
        ports: vec![port + 1, 24678],
        running_at_hibernation: port == 3000,
    };
    s.create_container(&container("web", 5173)).await.unwrap();
    s.create_container(&container("api", 3000)).await.unwrap();
    out.push(format!(
        "dup container: {:?}",
        s.create_container(&container("web", 1))
            .await
            .map_err(|e| kind(&e))
    ));
    let mut web = s.get_container("a", "web").await.unwrap().unwrap();
    web.status = ContainerStatus::Running;
    web.public = true;
    web.template = None;
    web.running_at_hibernation = true;
    s.update_container(&web).await.unwrap();
    out.push(format!("{:?}", s.list_containers("a").await.unwrap()));
    s.delete_container("a", "api").await.unwrap();
    out.push(format!("{:?}", s.list_containers("a").await.unwrap()));

    for v in 1..=3 {
        s.add_archive(&ArchiveVersion {
            project: "a".into(),
            version: v,
            key: format!("a/v{v}.zip"),
            size: 1 << 33,
            sha256: "ab".repeat(32),
            files: 12,
            created_at: t(1_700_000_200_000 + v),
            snapshot: (v % 2 == 0).then(|| "cd".repeat(32)),
            reason: "hibernate".into(),
            uploaded_bytes: 7 * v as u64,
        })
        .await
        .unwrap();
    }
    s.delete_archive("a", 1).await.unwrap();
    out.push(format!("{:?}", s.list_archives("a").await.unwrap()));

    for (i, days) in [(0, 6), (1, 1), (2, 1), (3, 1)] {
        s.append_log(&CommandLogEntry {
            id: 0,
            truncated: i == 3,
            project: "a".into(),
            ts: Utc::now() - chrono::Duration::days(days),
            label: format!("exec {i}"),
            command: "ls -la".into(),
            exit_code: if i == 0 { Some(0) } else { None },
            duration_ms: 42,
            stdout: "out\n".into(),
            stderr: String::new(),
        })
        .await
        .unwrap();
    }
    let labels = |v: Vec<CommandLogEntry>| {
        v.into_iter()
            .map(|e| (e.label, e.exit_code, e.truncated))
            .collect::<Vec<_>>()
    };
    let all = LogPage {
        limit: 100,
        before: None,
    };
    out.push(format!(
        "{:?}",
        labels(s.list_logs("a", all).await.unwrap())
    ));
    // Pages: the newest two, then the two before the first of them.
    let page = s
        .list_logs(
            "a",
            LogPage {
                limit: 2,
                before: None,
            },
        )
        .await
        .unwrap();
    let first = page[0].id;
    out.push(format!("page {:?}", labels(page)));
    let older = s
        .list_logs(
            "a",
            LogPage {
                limit: 2,
                before: Some(first),
            },
        )
        .await
        .unwrap();
    out.push(format!("older {:?}", labels(older)));
    out.push(format!(
        "pruned {}",
        s.prune_logs(Utc::now() - chrono::Duration::days(5))
            .await
            .unwrap()
    ));
    out.push(format!(
        "{:?}",
        labels(s.list_logs("a", all).await.unwrap())
    ));

    // Share links and one-time preview codes.
    let share = |id: &str, expires: i64| Share {
        id: id.into(),
        project: "a".into(),
        container: "web".into(),
        label: Some("for Bob".into()),
        secret_sha256: "cd".repeat(32),
        created_by: "alice".into(),
        created_at: t(1_700_000_300_000),
        expires_at: t(expires),
        wake: id == "s1",
    };
    s.create_share(&share("s1", 1_700_000_900_000))
        .await
        .unwrap();
    s.create_share(&share("s2", 1_700_000_400_000))
        .await
        .unwrap();
    out.push(format!(
        "dup share: {:?}",
        s.create_share(&share("s1", 1)).await.map_err(|e| kind(&e))
    ));
    out.push(format!("{:?}", s.get_share("s1").await.unwrap()));
    out.push(format!(
        "live at 500: {:?}",
        s.list_shares("a", "web", t(1_700_000_500_000))
            .await
            .unwrap()
            .iter()
            .map(|x| x.id.clone())
            .collect::<Vec<_>>()
    ));
    out.push(format!(
        "revoke {:?} {:?} {:?}",
        s.delete_share("a", "api", "s1").await.unwrap(),
        s.delete_share("a", "web", "s1").await.unwrap(),
        s.delete_share("a", "web", "s1").await.unwrap()
    ));
    let code = |hash: &str, expires: i64| PreviewCode {
        code_sha256: hash.into(),
        project: "a".into(),
        container: "web".into(),
        sub: "alice".into(),
        expires_at: t(expires),
        token_exp: 1_700_003_600,
    };
    s.add_preview_code(&code("c1", 1_700_000_060_000))
        .await
        .unwrap();
    s.add_preview_code(&code("c2", 1_700_000_060_000))
        .await
        .unwrap();
    out.push(format!(
        "take {:?} {:?} {:?}",
        s.take_preview_code("c1", t(1_700_000_010_000))
            .await
            .unwrap(),
        s.take_preview_code("c1", t(1_700_000_010_000))
            .await
            .unwrap(),
        // Expired: gone, and not answered.
        s.take_preview_code("c2", t(1_700_000_070_000))
            .await
            .unwrap()
    ));
    s.add_preview_code(&code("c3", 1_700_000_060_000))
        .await
        .unwrap();
    out.push(format!(
        "pruned previews {}",
        s.prune_previews(t(1_700_000_450_000)).await.unwrap()
    ));

    s.delete_project("a").await.unwrap();
    out.push(format!(
        "after delete: {:?} {:?} {:?} {:?}",
        s.get_project("a").await.unwrap(),
        s.list_containers("a").await.unwrap(),
        s.list_archives("a").await.unwrap(),
        s.list_logs("a", all).await.unwrap().len()
    ));
    s.ping().await.unwrap();
    out
}

fn kind(e: &Error) -> &'static str {
    e.status_and_code().1
}

#[tokio::test]
async fn postgres_store_migrates_once_matches_sqlite_and_reconnects() {
    let mut pg = Postgres::start();
    create_db(&pg, "devgate").await;
    let url = pg.url("devgate");

    // Two replicas starting at once: both come up, the schema is made once.
    let (one, two) = tokio::join!(PostgresStore::connect(&url), PostgresStore::connect(&url));
    let (one, two) = (one.expect("first replica"), two.expect("second replica"));
    assert_eq!(one.schema_version().await.unwrap(), SCHEMA_VERSION);
    drop(two);
    // Connecting again finds the schema current and changes nothing.
    let again = PostgresStore::connect(&url).await.expect("again");
    assert_eq!(again.schema_version().await.unwrap(), SCHEMA_VERSION);

    // The same calls give the same answers as the SQLite store.
    let sqlite = SqliteStore::in_memory().unwrap();
    let want = exercise(&sqlite).await;
    let got = exercise(&one).await;
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w, g);
    }
    assert_eq!(want.len(), got.len());
    assert!(want[0].contains("conflict"), "{}", want[0]);

    // A server restart costs at most the calls made while it was down.
    pg.stop();
    assert!(one.ping().await.is_err(), "server is down");
    pg.spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if one.ping().await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "store did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        one.get_project("b").await.unwrap().is_some(),
        "data survived the restart"
    );

    // `sslmode=require` against a server without TLS: refused, not silently plain.
    let err = PostgresStore::connect(&format!("{url} sslmode=require"))
        .await
        .err()
        .expect("no tls");
    assert!(
        err.to_string().starts_with("cannot connect to postgresql"),
        "{err}"
    );
}

#[tokio::test]
async fn postgres_store_refuses_a_bad_url_with_one_clear_error() {
    let port = tests::free_port();
    let err = PostgresStore::connect(&format!(
        "host=127.0.0.1 port={port} user=postgres connect_timeout=2"
    ))
    .await
    .err()
    .expect("nothing listens");
    assert!(
        err.to_string().starts_with("cannot connect to postgresql"),
        "{err}"
    );
}

#[tokio::test]
async fn postgres_write_gate_and_leases_span_replicas() {
    let mut pg = Postgres::start();
    create_db(&pg, "devgate").await;
    let url = pg.url("devgate");
    let (a, b) = tokio::join!(PostgresStore::connect(&url), PostgresStore::connect(&url));
    let (a, b) = (a.unwrap(), b.unwrap());
    let now = Utc::now();
    a.create_project(&Project {
        id: "p".into(),
        name: "p".into(),
        status: ProjectStatus::Active,
        created_at: now,
        updated_at: now,
        hibernated_at: None,
    })
    .await
    .unwrap();

    // A change in flight on replica a: b's hibernation cannot close the gate.
    let w1 = a.enter_write("p").await.unwrap();
    let w2 = a.enter_write("p").await.unwrap();
    assert!(w1.allowed && w2.allowed);
    assert_eq!(b.close_writes("p").await.unwrap(), None);
    assert!(a.leave_write("p", w1.session).await.unwrap());
    assert_eq!(
        b.close_writes("p").await.unwrap(),
        None,
        "one of a's two changes is still in flight"
    );
    assert!(a.leave_write("p", w2.session).await.unwrap());
    let closed = b
        .close_writes("p")
        .await
        .unwrap()
        .expect("no change in flight");
    // Closed: a's next change is refused although the status says active.
    let refused = a.enter_write("p").await.unwrap();
    assert!(!refused.allowed);
    assert_eq!(refused.status, Some(ProjectStatus::Active));
    assert!(b.writes_still_closed("p", closed).await.unwrap());
    b.open_writes("p", closed).await.unwrap();
    assert!(a.enter_write("p").await.unwrap().allowed);

    // Only one of two replicas moves the project out of `active`.
    let (x, y) = tokio::join!(
        a.transition(
            "p",
            &[ProjectStatus::Active],
            ProjectStatus::Hibernating,
            Utc::now()
        ),
        b.transition(
            "p",
            &[ProjectStatus::Active],
            ProjectStatus::Starting,
            Utc::now()
        ),
    );
    let done = [&x, &y]
        .iter()
        .filter(|r| matches!(r, Ok(gateway::store::Transition::Done(_))))
        .count();
    assert_eq!(done, 1, "{x:?} {y:?}");

    // A lease of replica a stays a's until it expires.
    let t0 = Utc::now();
    let until = t0 + chrono::Duration::seconds(5);
    assert!(
        a.acquire_lease("project:p", "a/1", until, t0)
            .await
            .unwrap()
    );
    assert!(
        !b.acquire_lease("project:p", "b/1", until, t0)
            .await
            .unwrap()
    );
    assert!(
        b.acquire_lease("project:p", "b/1", until, until)
            .await
            .unwrap()
    );

    // A session lost (server restart) took a's shared hold with it: the
    // change must not be acknowledged.
    a.transition(
        "p",
        &[ProjectStatus::Hibernating, ProjectStatus::Starting],
        ProjectStatus::Active,
        Utc::now(),
    )
    .await
    .unwrap();
    let held = a.enter_write("p").await.unwrap();
    assert!(held.allowed);
    pg.stop();
    pg.spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.ping().await.is_err() {
        assert!(Instant::now() < deadline, "store did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!a.leave_write("p", held.session).await.unwrap());
}
