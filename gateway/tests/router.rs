//! The fast tier: the gateway's router driven in process with
//! `tower::ServiceExt::oneshot`, on a real SQLite store in a temporary folder
//! and a fake runtime that records every call. No process, no socket: each
//! test takes milliseconds. It holds routing, authorization, status codes and
//! the error table; the end-to-end tests (`tests/tests/`) hold the behaviour
//! with real agents.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use gateway::error::{Error, Result};
use gateway::runtime::{
    AgentAddress, AgentEndpoint, ByteStream, ContainerRoute, ContainerSpec, ExecOutput, ExecSpec,
    Runtime, ShellTarget,
};
use gateway::state::AppState;
use gateway::store::{Container, ContainerStatus, ProjectStatus};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// What a test makes the fake runtime answer.
#[derive(Default)]
struct Script {
    /// `ensure` fails with `Unavailable` when set.
    ensure_fails: bool,
    /// `start_container` fails with `Unavailable` when set.
    start_fails: bool,
}

/// A runtime that starts nothing: it records each call as `"op project [arg]"`
/// and answers as the test scripted.
#[derive(Default)]
struct FakeRuntime {
    calls: Mutex<Vec<String>>,
    script: Mutex<Script>,
}

impl FakeRuntime {
    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn endpoint(project: &str) -> AgentEndpoint {
        AgentEndpoint {
            address: AgentAddress::Unix(format!("/nonexistent/{project}.sock").into()),
            token: "fake".into(),
        }
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn ensure(&self, project: &str) -> Result<AgentEndpoint> {
        self.record(format!("ensure {project}"));
        if self.script.lock().unwrap().ensure_fails {
            return Err(Error::Unavailable("the fake cluster is down".into()));
        }
        Ok(Self::endpoint(project))
    }

    async fn agent(&self, project: &str) -> Result<AgentEndpoint> {
        self.record(format!("agent {project}"));
        Ok(Self::endpoint(project))
    }

    async fn start_container(&self, project: &str, spec: &ContainerSpec) -> Result<ContainerRoute> {
        self.record(format!(
            "start_container {project} {} {}",
            spec.name, spec.port
        ));
        if self.script.lock().unwrap().start_fails {
            return Err(Error::Unavailable("no node has room".into()));
        }
        Ok(ContainerRoute {
            host: "127.0.0.1".into(),
            port: spec.port,
        })
    }

    async fn stop_container(&self, project: &str, name: &str) -> Result<()> {
        self.record(format!("stop_container {project} {name}"));
        Ok(())
    }

    async fn container_route(
        &self,
        project: &str,
        name: &str,
        _port: Option<u16>,
    ) -> Result<ContainerRoute> {
        self.record(format!("container_route {project} {name}"));
        Err(Error::Unavailable(format!(
            "container {name} is not running"
        )))
    }

    async fn container_shell(
        &self,
        project: &str,
        name: &str,
        _env: &BTreeMap<String, String>,
    ) -> Result<ShellTarget> {
        self.record(format!("container_shell {project} {name}"));
        Err(Error::Unavailable("no shells here".into()))
    }

    async fn container_exec(
        &self,
        project: &str,
        name: &str,
        _spec: ExecSpec,
    ) -> Result<ExecOutput> {
        self.record(format!("container_exec {project} {name}"));
        Err(Error::Unavailable("no exec here".into()))
    }

    async fn container_logs(&self, project: &str, name: &str, _follow: bool) -> Result<ByteStream> {
        self.record(format!("container_logs {project} {name}"));
        Err(Error::Unavailable("no logs here".into()))
    }

    async fn teardown(&self, project: &str) -> Result<()> {
        self.record(format!("teardown {project}"));
        Ok(())
    }

    async fn ready(&self) -> Result<()> {
        Ok(())
    }
}

struct Harness {
    state: AppState,
    runtime: Arc<FakeRuntime>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn new() -> Harness {
        use clap::Parser as _;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let templates = dir.path().join("templates");
        std::fs::create_dir(&templates).unwrap();
        let mut config = gateway::config::Config::parse_from([
            "gateway",
            "--data-dir",
            data.to_str().unwrap(),
            "--secret",
            "fast-tier-secret-fast-tier-secret",
        ]);
        config.templates_dir = Some(templates);
        let runtime = Arc::new(FakeRuntime::default());
        let state = gateway::build_state_with(&config, Some(runtime.clone()))
            .await
            .unwrap();
        Harness {
            state,
            runtime,
            _dir: dir,
        }
    }

    fn token(&self, projects: &[&str]) -> String {
        self.state.keys.sign("alice", projects, 600).unwrap()
    }

    /// One request through the whole router; answers status and JSON body
    /// (`Value::Null` when the body is empty or not JSON).
    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = gateway::api::router(self.state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn create(&self, id: &str) {
        let t = self.token(&["*"]);
        let (s, body) = self
            .call(
                Method::POST,
                "/api/projects",
                Some(&t),
                Some(json!({"id": id})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
    }

    async fn add_container(&self, project: &str, name: &str, port: u16) {
        self.state
            .store
            .create_container(&Container {
                project: project.into(),
                name: name.into(),
                status: ContainerStatus::Stopped,
                port,
                ports: Vec::new(),
                start: "npm run dev".into(),
                install: None,
                env: BTreeMap::new(),
                public: false,
                template: None,
                created_at: chrono::Utc::now(),
                running_at_hibernation: false,
            })
            .await
            .unwrap();
    }

    async fn status(&self, project: &str) -> ProjectStatus {
        self.state.project(project).await.unwrap().status
    }
}

/// The contract's error body: `{"error": {"code", "message"}}`.
fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        got.1
    );
}

#[tokio::test]
async fn create_then_open_calls_the_runtime_once_and_answers_active() {
    let h = Harness::new().await;
    h.create("alpha").await;
    assert_eq!(h.status("alpha").await, ProjectStatus::Created);
    assert!(h.runtime.calls().is_empty(), "create starts nothing");

    let t = h.token(&["alpha"]);
    let (s, body) = h
        .call(Method::POST, "/api/projects/alpha/open", Some(&t), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "active");
    assert_eq!(h.runtime.calls(), ["ensure alpha"]);
    assert_eq!(h.status("alpha").await, ProjectStatus::Active);
}

#[tokio::test]
async fn credentials_are_checked_before_anything_runs() {
    let h = Harness::new().await;
    h.create("alpha").await;
    let open = "/api/projects/alpha/open";
    assert_error(
        &h.call(Method::POST, open, None, None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_error(
        &h.call(Method::POST, open, Some("not.a.token"), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let other = h.token(&["beta"]);
    assert_error(
        &h.call(Method::POST, open, Some(&other), None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    // A token signed with another secret is as bad as garbage.
    let foreign = gateway::auth::Keys::new(b"another-secret-another-secret!!", None)
        .sign("mallory", &["*"], 600)
        .unwrap();
    assert_error(
        &h.call(Method::POST, open, Some(&foreign), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert!(h.runtime.calls().is_empty(), "{:?}", h.runtime.calls());
    assert_eq!(h.status("alpha").await, ProjectStatus::Created);
}

#[tokio::test]
async fn bad_ids_and_duplicates_change_nothing() {
    let h = Harness::new().await;
    let t = h.token(&["*"]);
    for bad in ["", "UPPER", "-lead", "a/b", "x".repeat(100).as_str()] {
        let got = h
            .call(
                Method::POST,
                "/api/projects",
                Some(&t),
                Some(json!({"id": bad})),
            )
            .await;
        assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
    }
    let got = h
        .call(
            Method::POST,
            "/api/projects",
            Some(&t),
            Some(json!({"nope": 1})),
        )
        .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
    assert!(h.state.store.list_projects().await.unwrap().is_empty());

    h.create("alpha").await;
    let again = h
        .call(
            Method::POST,
            "/api/projects",
            Some(&t),
            Some(json!({"id": "alpha"})),
        )
        .await;
    assert_error(&again, StatusCode::CONFLICT, "conflict");
    assert_eq!(h.state.store.list_projects().await.unwrap().len(), 1);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_the_contract_json() {
    let h = Harness::new().await;
    let t = h.token(&["*"]);
    assert_error(
        &h.call(Method::GET, "/api/nothing-here", Some(&t), None)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &h.call(Method::PATCH, "/api/projects", Some(&t), None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    assert_error(
        &h.call(Method::GET, "/api/projects/ghost", Some(&t), None)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn a_runtime_failure_is_503_with_a_generic_message_and_the_status_unchanged() {
    let h = Harness::new().await;
    h.create("alpha").await;
    h.runtime.script.lock().unwrap().ensure_fails = true;
    let t = h.token(&["alpha"]);
    let got = h
        .call(Method::POST, "/api/projects/alpha/open", Some(&t), None)
        .await;
    assert_error(&got, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    // The cause is for the log, not for the caller.
    assert!(
        !got.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fake cluster"),
        "{}",
        got.1
    );
    assert_eq!(h.status("alpha").await, ProjectStatus::Created);
    assert_eq!(h.runtime.calls(), ["ensure alpha"]);
}

#[tokio::test]
async fn file_routes_of_an_inactive_project_are_409_without_touching_the_runtime() {
    let h = Harness::new().await;
    h.create("alpha").await;
    let t = h.token(&["alpha"]);
    let got = h
        .call(Method::GET, "/api/projects/alpha/list", Some(&t), None)
        .await;
    assert_error(&got, StatusCode::CONFLICT, "project_not_active");
    let got = h
        .call(
            Method::POST,
            "/api/projects/alpha/mkdir/src",
            Some(&t),
            None,
        )
        .await;
    assert_error(&got, StatusCode::CONFLICT, "project_not_active");
    assert!(h.runtime.calls().is_empty(), "{:?}", h.runtime.calls());
}

#[tokio::test]
async fn container_start_and_stop_reach_the_runtime_and_the_store() {
    let h = Harness::new().await;
    h.create("alpha").await;
    let t = h.token(&["alpha"]);
    let (s, _) = h
        .call(Method::POST, "/api/projects/alpha/open", Some(&t), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    h.add_container("alpha", "web", 5173).await;

    let (s, body) = h
        .call(
            Method::POST,
            "/api/projects/alpha/containers/web/start",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "web");
    assert!(
        h.runtime
            .calls()
            .contains(&"start_container alpha web 5173".to_owned()),
        "{:?}",
        h.runtime.calls()
    );
    let stored = h.state.container("alpha", "web").await.unwrap();
    assert_eq!(stored.status, ContainerStatus::Running);

    let (s, body) = h
        .call(
            Method::POST,
            "/api/projects/alpha/containers/web/stop",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "stopped");
    assert!(
        h.runtime
            .calls()
            .contains(&"stop_container alpha web".to_owned())
    );
    let stored = h.state.container("alpha", "web").await.unwrap();
    assert_eq!(stored.status, ContainerStatus::Stopped);

    // Unknown container: 404, and the runtime is not asked.
    let before = h.runtime.calls().len();
    let got = h
        .call(
            Method::POST,
            "/api/projects/alpha/containers/api/start",
            Some(&t),
            None,
        )
        .await;
    assert_error(&got, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(h.runtime.calls().len(), before);
}

#[tokio::test]
async fn a_container_that_cannot_start_is_recorded_failed() {
    let h = Harness::new().await;
    h.create("alpha").await;
    let t = h.token(&["alpha"]);
    h.call(Method::POST, "/api/projects/alpha/open", Some(&t), None)
        .await;
    h.add_container("alpha", "web", 5173).await;
    h.runtime.script.lock().unwrap().start_fails = true;
    let got = h
        .call(
            Method::POST,
            "/api/projects/alpha/containers/web/start",
            Some(&t),
            None,
        )
        .await;
    assert_error(&got, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let stored = h.state.container("alpha", "web").await.unwrap();
    assert_eq!(stored.status, ContainerStatus::Failed);
}
