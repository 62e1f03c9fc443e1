//! The API server of the Kubernetes runtime's tests: kube-rs's client over a
//! `tower-test` mock service. A test drives the exchange from its side: it
//! takes each request the runtime sends, asserts its method, path and body
//! (and checks every object sent against the schema), then answers it.

// Each test binary uses part of these helpers.
#![allow(dead_code)]

use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

use super::schema;

/// One request the runtime sent, as the API server's authorizer sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Sent {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) content_type: String,
}

/// Every request any mock API server of this test binary received.
static SENT: std::sync::Mutex<Vec<Sent>> = std::sync::Mutex::new(Vec::new());

/// What the runtime sent so far, across the binary's tests.
pub(crate) fn sent() -> Vec<Sent> {
    SENT.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn record(parts: &http::request::Parts) {
    SENT.lock().unwrap_or_else(|p| p.into_inner()).push(Sent {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    });
}

/// The test's side of the mock API server.
pub(crate) struct ApiServer {
    handle: Handle<Request<Body>, Response<Body>>,
}

/// A client whose every request reaches the returned [`ApiServer`].
pub(crate) fn pair() -> (kube::Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), ApiServer { handle })
}

/// One request taken from the runtime, waiting for its answer.
pub(crate) struct Exchange {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) content_type: String,
    pub(crate) body: Option<Value>,
    send: SendResponse<Response<Body>>,
}

impl ApiServer {
    /// The next request, which must be `method` on `path` (the query is
    /// checked by the caller when it matters); its body, if any, is JSON and
    /// checked against the schema when it is an object with a kind.
    pub(crate) async fn expect(&mut self, method: &str, path: &str) -> Exchange {
        let (req, send) = tokio::time::timeout(Duration::from_secs(10), self.handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
            .unwrap_or_else(|| panic!("client gone; expected {method} {path}"));
        let (parts, body) = req.into_parts();
        record(&parts);
        let bytes = body.collect().await.expect("request body").to_bytes();
        let body = if bytes.is_empty() {
            None
        } else {
            Some(serde_json::from_slice::<Value>(&bytes).expect("request body is JSON"))
        };
        let ex = Exchange {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            body,
            send,
        };
        assert_eq!(
            (ex.method.as_str(), ex.path.as_str()),
            (method, path),
            "unexpected request (query {:?})",
            ex.query
        );
        if let Some(b) = ex.body.as_ref().filter(|b| b.get("kind").is_some()) {
            schema::check(b)
                .unwrap_or_else(|e| panic!("{method} {path} sent an invalid object: {e}"));
        }
        ex
    }

    /// The next request, whatever it is.
    pub(crate) async fn expect_any(&mut self) -> Exchange {
        let (req, send) = tokio::time::timeout(Duration::from_secs(10), self.handle.next_request())
            .await
            .expect("no request came")
            .expect("client gone");
        let (parts, body) = req.into_parts();
        record(&parts);
        let bytes = body.collect().await.expect("request body").to_bytes();
        Exchange {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            content_type: String::new(),
            body: (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).expect("json body")),
            send,
        }
    }

    /// The next request must be a server-side apply of `path` by the
    /// runtime's one field manager; answers with the object as sent.
    pub(crate) async fn expect_apply(&mut self, path: &str) -> Value {
        let ex = self.expect("PATCH", path).await;
        ex.assert_apply();
        let body = ex.body.clone().expect("apply has a body");
        ex.respond(200, body.clone());
        body
    }

    /// The next request must be a watcher's list of the object `name` (a
    /// GET on the collection `path`, selected by name, not a watch).
    pub(crate) async fn expect_list(&mut self, path: &str, name: &str) -> Exchange {
        let ex = self.expect("GET", path).await;
        assert!(ex.is_list_of(name), "not a list of {name}: {:?}", ex.query);
        ex
    }

    /// The next request must be a watch of the object `name` on the
    /// collection `path`.
    pub(crate) async fn expect_watch(&mut self, path: &str, name: &str) -> Exchange {
        let ex = self.expect("GET", path).await;
        assert!(
            ex.is_watch_of(name),
            "not a watch of {name}: {:?}",
            ex.query
        );
        ex
    }

    /// Takes the next request if one comes within `wait`.
    pub(crate) async fn try_next(&mut self, wait: Duration) -> Option<(String, String)> {
        match tokio::time::timeout(wait, self.handle.next_request()).await {
            Ok(Some((req, _send))) => {
                let (parts, _) = req.into_parts();
                record(&parts);
                Some((parts.method.to_string(), parts.uri.path().to_owned()))
            }
            _ => None,
        }
    }
}

impl Exchange {
    /// A server-side apply, forced, by the one field manager.
    pub(crate) fn assert_apply(&self) {
        assert_eq!(
            self.content_type, "application/apply-patch+yaml",
            "{} is not an apply",
            self.path
        );
        let pairs: Vec<(String, String)> = form_urlencoded(&self.query);
        assert!(
            pairs.contains(&("fieldManager".into(), "devgate-gateway".into())),
            "{}: field manager missing in {:?}",
            self.path,
            self.query
        );
        assert!(
            pairs.contains(&("force".into(), "true".into())),
            "{}: not forced: {:?}",
            self.path,
            self.query
        );
    }

    /// A list by name (kube-rs's watcher starts with one).
    pub(crate) fn is_list_of(&self, name: &str) -> bool {
        let pairs = form_urlencoded(&self.query);
        pairs.contains(&("fieldSelector".into(), format!("metadata.name%3D{name}")))
            && !pairs.iter().any(|(k, _)| k == "watch")
    }

    /// A watch by name.
    pub(crate) fn is_watch_of(&self, name: &str) -> bool {
        let pairs = form_urlencoded(&self.query);
        pairs.contains(&("fieldSelector".into(), format!("metadata.name%3D{name}")))
            && pairs.contains(&("watch".into(), "true".into()))
    }

    /// Answers a list with `items`, at resourceVersion 1.
    pub(crate) fn list(self, api_version: &str, kind: &str, items: Vec<Value>) {
        self.respond(
            200,
            json!({"apiVersion": api_version, "kind": kind,
                "metadata": {"resourceVersion": "1"}, "items": items}),
        );
    }

    /// Answers a watch with these events (`{"type", "object"}`), one JSON
    /// document a line, then ends the stream (the watcher watches again).
    pub(crate) fn events(self, events: &[Value]) {
        let mut body = Vec::new();
        for (i, e) in events.iter().enumerate() {
            // Each event's object carries the resourceVersion the watcher
            // goes on from.
            let mut e = e.clone();
            e["object"]["metadata"]["resourceVersion"] = json!((i + 2).to_string());
            body.extend(serde_json::to_vec(&e).expect("json"));
            body.push(b'\n');
        }
        let resp = Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .expect("response");
        self.send.send_response(resp);
    }

    /// Answers with a status and a JSON body.
    pub(crate) fn respond(self, status: u16, body: Value) {
        let resp = Response::builder()
            .status(StatusCode::from_u16(status).expect("status"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&body).expect("json")))
            .expect("response");
        self.send.send_response(resp);
    }

    /// Answers with a Kubernetes `Status` error.
    pub(crate) fn fail(self, code: u16, reason: &str, message: &str) {
        self.respond(code, status_body(code, reason, message));
    }

    /// Never answers (the client sees no reply until its deadline).
    pub(crate) fn ignore(self) -> SendResponse<Response<Body>> {
        self.send
    }
}

/// A `metav1.Status` failure body.
pub(crate) fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

fn form_urlencoded(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// A Deployment status: ready (one updated, ready pod of the current spec) or not.
pub(crate) fn deployment(ns: &str, name: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "generation": 1},
        "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "x", "ports": [{"containerPort": 5173}]}]}}},
        "status": if ready {
            json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1})
        } else {
            json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "unavailableReplicas": 1})
        }
    })
}
