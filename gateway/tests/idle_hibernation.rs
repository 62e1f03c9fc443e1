//! Idle hibernation end to end on the local runtime, with a real agent: an
//! active project nobody touched is hibernated by the idle task (archive
//! written and verified, environment gone) and opens again with its files;
//! a project with a connected terminal stays active. The loop runs on the
//! replica elected through the store's lease.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::activity::Activity;
use gateway::idle;
use gateway::lifecycle;
use gateway::store::ProjectStatus;

/// The workspace's `agent` binary (built by `cargo build --workspace --bins`,
/// which the README's test command runs first).
fn agent_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("agent");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

async fn status(state: &gateway::state::AppState, id: &str) -> ProjectStatus {
    state.store.get_project(id).await.unwrap().unwrap().status
}

#[tokio::test]
async fn an_untouched_project_is_hibernated_and_opens_again_with_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = gateway::Config::for_data_dir(dir.path());
    config.agent_bin = Some(agent_bin());
    let mut state = gateway::build_state(&config).await.expect("state");
    // This gateway "started" an hour ago and saw nothing since.
    state.setup().unwrap().activity = Arc::new(Activity::started_at(
        Instant::now() - Duration::from_secs(3600),
    ));
    // Agents move snapshot packs of a folder store through the gateway's
    // listener (`/_objects`): serve the router on loopback, as `run` does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    state
        .archives
        .set_base_url(format!("http://{}", listener.local_addr().unwrap()));
    tokio::spawn(axum::serve(listener, gateway::api::router(state.clone())).into_future());

    for id in ["quiet", "typing"] {
        lifecycle::create(&state, id, None).await.unwrap();
        lifecycle::open(&state, id).await.expect("open");
    }
    let file = dir.path().join("projects/quiet/src/main.sh");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, b"#!/bin/sh\necho kept\n").unwrap();
    let _terminal = state.activity.hold("typing");

    // The idle loop runs on the elected replica: this one, alone on its store.
    tokio::spawn(idle::elect(state.clone()));
    let idle_task = tokio::spawn(idle::run(
        state.clone(),
        Duration::from_secs(2),
        Duration::from_millis(20),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&state, "quiet").await != ProjectStatus::Hibernated {
        assert!(
            Instant::now() < deadline,
            "not hibernated: {:?}",
            status(&state, "quiet").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert_eq!(
        status(&state, "typing").await,
        ProjectStatus::Active,
        "a connected terminal keeps it awake"
    );
    let archives = state.store.list_archives("quiet").await.unwrap();
    assert_eq!(archives.len(), 1);
    assert!(
        archives[0].size > 0 && archives[0].files >= 1,
        "{:?}",
        archives[0]
    );
    // The project is marked hibernated before its environment is torn
    // down; the folder goes a moment later.
    while file.exists() {
        assert!(
            Instant::now() < deadline,
            "the environment is still there: {:?}",
            std::fs::read_dir(dir.path().join("projects/quiet"))
                .map(|d| d.map(|e| e.unwrap().path()).collect::<Vec<_>>())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Only now: aborting the idle task earlier could cut the teardown short
    // (it runs in that task, after the status is written).
    idle_task.abort();

    lifecycle::open(&state, "quiet").await.expect("open again");
    assert_eq!(std::fs::read(&file).unwrap(), b"#!/bin/sh\necho kept\n");
    state.runtime.shutdown().await;
}
