//! The PostgreSQL state store against a real PostgreSQL from Debian's
//! packages (`scripts/install-test-deps.sh` installs it), started by the test
//! in a temporary directory on a free loopback port: migrations (once, even
//! with two replicas starting together), the same answers as the SQLite
//! store for the same calls, and reconnection after a server restart.

#[path = "support/postgres.rs"]
mod postgres;

use std::time::{Duration, Instant};

use chrono::{TimeZone as _, Utc};
use gateway::error::Error;
use gateway::store::postgres::PostgresStore;
use gateway::store::sqlite::SqliteStore;
use gateway::store::{
    ArchiveVersion, CommandLogEntry, Container, ContainerStatus, Project, ProjectStatus, Store,
    Template,
};
use postgres::{Postgres, create_db, free_port};

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
    let mut a = s.get_project("a").await.unwrap().unwrap();
    out.push(format!("{a:?}"));
    a.status = ProjectStatus::Hibernated;
    a.hibernated_at = Some(t(1_700_000_100_000));
    s.update_project(&a).await.unwrap();
    out.push(format!("{:?}", s.list_projects().await.unwrap()));
    out.push(format!("missing: {:?}", s.get_project("zz").await.unwrap()));
    let mut ghost = project("ghost");
    ghost.status = ProjectStatus::Active;
    out.push(format!(
        "update missing: {:?}",
        s.update_project(&ghost).await.map_err(|e| kind(&e))
    ));

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
        })
        .await
        .unwrap();
    }
    s.delete_archive("a", 1).await.unwrap();
    out.push(format!("{:?}", s.list_archives("a").await.unwrap()));

    for (i, days) in [(0, 6), (1, 1)] {
        s.append_log(&CommandLogEntry {
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
            .map(|e| (e.label, e.exit_code))
            .collect::<Vec<_>>()
    };
    out.push(format!("{:?}", labels(s.list_logs("a").await.unwrap())));
    out.push(format!(
        "pruned {}",
        s.prune_logs(Utc::now() - chrono::Duration::days(5))
            .await
            .unwrap()
    ));
    out.push(format!("{:?}", labels(s.list_logs("a").await.unwrap())));

    s.delete_project("a").await.unwrap();
    out.push(format!(
        "after delete: {:?} {:?} {:?} {:?}",
        s.get_project("a").await.unwrap(),
        s.list_containers("a").await.unwrap(),
        s.list_archives("a").await.unwrap(),
        s.list_logs("a").await.unwrap().len()
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
    assert_eq!(one.schema_version().await.unwrap(), 1);
    drop(two);
    // Connecting again finds the schema current and changes nothing.
    let again = PostgresStore::connect(&url).await.expect("again");
    assert_eq!(again.schema_version().await.unwrap(), 1);

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
    let port = free_port();
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
