//! Idle hibernation with the Kubernetes runtime over kube-rs's mock
//! service: which active projects count as idle (this gateway's own activity
//! and the activity every replica shares in the state store), activity
//! shared in the store at most once a minute, and none of it costing a
//! call to the API server.

#[path = "support/mock.rs"]
mod mock;
#[path = "support/schema.rs"]
mod schema;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Parser;
use gateway::activity::Activity;
use gateway::idle;
use gateway::runtime::kubernetes::{KubernetesArgs, KubernetesRuntime, Settings};
use gateway::store::{Project, ProjectStatus};

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
    state.setup().unwrap().runtime = Arc::new(KubernetesRuntime::new(client, settings));
    (state, api, dir)
}

async fn add_project(
    state: &gateway::state::AppState,
    id: &str,
    status: ProjectStatus,
    since: chrono::DateTime<Utc>,
) {
    let p = Project {
        id: id.into(),
        name: id.into(),
        status,
        created_at: since,
        updated_at: since,
        hibernated_at: None,
    };
    state.store.create_project(&p).await.unwrap();
}

#[tokio::test]
async fn idle_projects_are_those_quiet_here_and_in_the_store() {
    let (mut state, mut api, _dir) = state_with_mock().await;
    // This gateway started two hours ago and saw no activity since, except
    // on `busy` (touched now) and `typing` (a connected terminal).
    state.setup().unwrap().activity = Arc::new(Activity::started_at(
        Instant::now() - Duration::from_secs(7200),
    ));
    let long_ago = Utc::now() - chrono::Duration::hours(3);
    for id in ["busy", "typing", "elsewhere", "idle"] {
        add_project(&state, id, ProjectStatus::Active, long_ago).await;
    }
    // Opened a minute ago, no activity recorded since.
    add_project(&state, "fresh", ProjectStatus::Active, Utc::now()).await;
    add_project(&state, "asleep", ProjectStatus::Hibernated, long_ago).await;
    state.activity.touch("busy");
    let _terminal = state.activity.hold("typing");
    // Another replica shared activity on `elsewhere` five minutes ago.
    state
        .store
        .touch_project("elsewhere", Utc::now() - chrono::Duration::minutes(5))
        .await
        .unwrap();
    state.store.touch_project("idle", long_ago).await.unwrap();

    let after = Duration::from_secs(30 * 60);
    assert_eq!(idle::idle_projects(&state, after).await, ["idle"]);
    assert!(state.is_idle("idle", after).await.unwrap());
    assert!(!state.is_idle("elsewhere", after).await.unwrap());
    assert!(!state.is_idle("typing", after).await.unwrap());
    // Activity lives in the state store now: not one call to the API
    // server (the namespace annotation it replaced churned etcd).
    assert!(api.try_next(Duration::from_millis(30)).await.is_none());
}

#[tokio::test]
async fn activity_is_shared_in_the_store_at_most_once_a_minute() {
    let (state, mut api, _dir) = state_with_mock().await;
    add_project(&state, "demo", ProjectStatus::Active, Utc::now()).await;
    state.touch("demo");
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some(t) = state.store.last_activity("demo").await.unwrap() {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "the touch never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!((Utc::now() - first).num_seconds().abs() < 60);
    // Further touches within the minute stay in memory.
    tokio::time::sleep(Duration::from_millis(20)).await;
    state.touch("demo");
    state.touch("demo");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        state.store.last_activity("demo").await.unwrap(),
        Some(first)
    );
    assert!(state.activity.idle_for("demo") < Duration::from_secs(5));
    assert!(api.try_next(Duration::from_millis(30)).await.is_none());
}

#[tokio::test]
async fn idle_hibernation_off_when_minutes_is_zero() {
    let (state, mut api, _dir) = state_with_mock().await;
    add_project(&state, "demo", ProjectStatus::Active, Utc::now()).await;
    // Returns at once without a single check.
    tokio::time::timeout(
        Duration::from_secs(5),
        idle::run(state.clone(), Duration::ZERO, Duration::from_millis(1)),
    )
    .await
    .expect("returns at once");
    assert!(api.try_next(Duration::from_millis(30)).await.is_none());
}
