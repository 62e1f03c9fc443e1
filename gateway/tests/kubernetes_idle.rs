//! Idle hibernation with the Kubernetes runtime over kube-rs's mock
//! service: which active projects count as idle (this gateway's own activity
//! first, then the activity time shared on the namespace by every replica),
//! and activity shared at most once a minute as a namespace annotation.

#[path = "support/mock.rs"]
mod mock;
#[path = "support/schema.rs"]
mod schema;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Parser;
use gateway::idle::{self, Activity};
use gateway::runtime::kubernetes::{KubernetesArgs, KubernetesRuntime, Settings};
use gateway::store::{Project, ProjectStatus};
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    k: KubernetesArgs,
}

async fn state_with_mock() -> (gateway::state::AppState, mock::ApiServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = gateway::Config::for_data_dir(dir.path());
    let mut state = gateway::build_state(&config).await.expect("state");
    let args = Args::parse_from(["test"]);
    let mut settings = Settings::new(
        &args.k,
        "proj-",
        "devgate/agent:test",
        b"a secret of enough length",
    )
    .unwrap();
    settings.api_timeout = Duration::from_millis(300);
    let (client, api) = mock::pair();
    state.runtime = Arc::new(KubernetesRuntime::new(client, settings));
    (state, api, dir)
}

async fn add_project(state: &gateway::state::AppState, id: &str, status: ProjectStatus) {
    let now = Utc::now();
    let p = Project {
        id: id.into(),
        name: id.into(),
        status,
        created_at: now,
        updated_at: now,
        hibernated_at: None,
    };
    state.store.create_project(&p).await.unwrap();
}

fn namespace(name: &str, last_activity: Option<chrono::DateTime<Utc>>) -> serde_json::Value {
    let mut ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    if let Some(t) = last_activity {
        ns["metadata"]["annotations"] = json!({"devgate.dev/last-activity": t.to_rfc3339()});
    }
    ns
}

#[tokio::test]
async fn idle_projects_are_those_quiet_here_and_on_every_replica() {
    let (mut state, mut api, _dir) = state_with_mock().await;
    // This gateway started two hours ago and saw no activity since, except
    // on `busy` (touched now) and `typing` (a connected terminal).
    state.activity = Arc::new(Activity::started_at(
        Instant::now() - Duration::from_secs(7200),
    ));
    for id in ["busy", "typing", "elsewhere", "idle", "fresh", "unknown"] {
        add_project(&state, id, ProjectStatus::Active).await;
    }
    add_project(&state, "asleep", ProjectStatus::Hibernated).await;
    state.activity.touch("busy");
    let _terminal = state.activity.hold("typing");

    let after = Duration::from_secs(30 * 60);
    let check = tokio::spawn({
        let state = state.clone();
        async move { idle::idle_projects(&state, after).await }
    });
    // Only the projects quiet here are asked about, in id order; `busy`,
    // `typing` and the hibernated one cost no API call.
    let ex = api.expect("GET", "/api/v1/namespaces/proj-elsewhere").await;
    ex.respond(
        200,
        namespace(
            "proj-elsewhere",
            Some(Utc::now() - chrono::Duration::minutes(5)),
        ),
    );
    let ex = api.expect("GET", "/api/v1/namespaces/proj-fresh").await;
    ex.fail(500, "InternalError", "etcd down");
    let ex = api.expect("GET", "/api/v1/namespaces/proj-idle").await;
    ex.respond(
        200,
        namespace("proj-idle", Some(Utc::now() - chrono::Duration::hours(3))),
    );
    let ex = api.expect("GET", "/api/v1/namespaces/proj-unknown").await;
    ex.respond(200, namespace("proj-unknown", None));
    let idle = check.await.unwrap();
    // `elsewhere` is used through another replica; `fresh` could not be
    // checked, so it is kept rather than risked.
    assert_eq!(idle, vec!["idle".to_owned(), "unknown".to_owned()]);
    assert!(api.try_next(Duration::from_millis(30)).await.is_none());
}

#[tokio::test]
async fn activity_is_shared_on_the_namespace_at_most_once_a_minute() {
    let (state, mut api, _dir) = state_with_mock().await;
    idle::touch(&state, "demo");
    let ex = api.expect("PATCH", "/api/v1/namespaces/proj-demo").await;
    assert_eq!(ex.content_type, "application/merge-patch+json");
    assert!(
        ex.query.contains("fieldManager=devgate-gateway-activity"),
        "{}",
        ex.query
    );
    let stamp = ex.body.as_ref().unwrap()["metadata"]["annotations"]["devgate.dev/last-activity"]
        .as_str()
        .expect("annotation")
        .to_owned();
    let t = chrono::DateTime::parse_from_rfc3339(&stamp).expect("rfc 3339");
    assert!((Utc::now() - t.with_timezone(&Utc)).num_seconds().abs() < 60);
    ex.respond(200, namespace("proj-demo", Some(t.with_timezone(&Utc))));
    // Further touches within the minute stay in memory.
    idle::touch(&state, "demo");
    idle::touch(&state, "demo");
    assert!(api.try_next(Duration::from_millis(50)).await.is_none());
    assert!(state.activity.idle_for("demo") < Duration::from_secs(5));
}

#[tokio::test]
async fn idle_hibernation_off_when_minutes_is_zero() {
    let (state, mut api, _dir) = state_with_mock().await;
    add_project(&state, "demo", ProjectStatus::Active).await;
    // Returns at once without a single check.
    tokio::time::timeout(
        Duration::from_secs(5),
        idle::run(state.clone(), Duration::ZERO, Duration::from_millis(1)),
    )
    .await
    .expect("returns at once");
    assert!(api.try_next(Duration::from_millis(30)).await.is_none());
}
