//! The SQLite store's own tests, on an in-memory database.

use super::*;
use crate::store::ContainerStatus;

fn project(id: &str) -> Project {
    let now = Utc::now();
    Project {
        id: id.into(),
        name: id.into(),
        status: ProjectStatus::Created,
        created_at: now,
        updated_at: now,
        hibernated_at: None,
    }
}

#[tokio::test]
async fn projects_containers_logs() {
    let s = SqliteStore::in_memory().unwrap();
    s.create_project(&project("a")).await.unwrap();
    assert!(matches!(
        s.create_project(&project("a")).await,
        Err(Error::Conflict(_))
    ));
    s.transition(
        "a",
        &[ProjectStatus::Created],
        ProjectStatus::Active,
        Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_project("a").await.unwrap().unwrap().status,
        ProjectStatus::Active
    );
    let k = Container {
        project: "a".into(),
        name: "web".into(),
        status: ContainerStatus::Stopped,
        port: 5173,
        start: "npm run dev".into(),
        install: None,
        env: [("K".to_owned(), "V".to_owned())].into(),
        public: true,
        template: None,
        created_at: Utc::now(),
        ports: vec![24678],
        running_at_hibernation: false,
    };
    s.create_container(&k).await.unwrap();
    assert_eq!(s.list_containers("a").await.unwrap()[0].ports, [24678]);
    assert_eq!(s.list_containers("a").await.unwrap()[0].env["K"], "V");
    let mut k2 = k.clone();
    k2.running_at_hibernation = true;
    s.update_container(&k2).await.unwrap();
    let got = s.get_container("a", "web").await.unwrap().unwrap();
    assert!(got.running_at_hibernation, "{got:?}");
    let e = CommandLogEntry {
        id: 0,
        truncated: false,
        project: "a".into(),
        ts: Utc::now() - chrono::Duration::days(6),
        label: "exec".into(),
        command: "ls".into(),
        exit_code: Some(0),
        duration_ms: 3,
        stdout: "x".into(),
        stderr: "".into(),
    };
    s.append_log(&e).await.unwrap();
    let all = LogPage {
        limit: 100,
        before: None,
    };
    assert_eq!(s.list_logs("a", all).await.unwrap().len(), 1);
    assert_eq!(
        s.prune_logs(Utc::now() - chrono::Duration::days(5))
            .await
            .unwrap(),
        1
    );
    s.delete_project("a").await.unwrap();
    assert!(s.get_project("a").await.unwrap().is_none());
    assert!(s.list_containers("a").await.unwrap().is_empty());
}
