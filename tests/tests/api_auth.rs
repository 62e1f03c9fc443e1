//! The 401/403 matrix of the contract on the real gateway: no token, a
//! malformed one, a bad signature, an expired one, another project's token,
//! and `?token=` accepted only where a browser cannot send headers.

use serde_json::{Value, json};
use tests::Fetch as _;
use tests::error_of;
use tests::gateway::{Gateway, sign};

#[tokio::test]
async fn unauthorized_and_forbidden_matrix() {
    let gw = Gateway::start().await.unwrap();
    gw.open_project("p1").await.unwrap();
    gw.open_project("p2").await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    let routes: Vec<(reqwest::Method, &str)> = vec![
        (reqwest::Method::GET, "/api/projects/p1"),
        (reqwest::Method::GET, "/api/projects/p1/files/a.txt"),
        (reqwest::Method::PUT, "/api/projects/p1/files/a.txt"),
        (reqwest::Method::GET, "/api/projects/p1/list"),
        (reqwest::Method::POST, "/api/projects/p1/exec"),
        (reqwest::Method::GET, "/api/projects/p1/logs"),
        (reqwest::Method::GET, "/api/projects/p1/containers"),
        (reqwest::Method::POST, "/api/projects/p1/hibernate"),
        (reqwest::Method::DELETE, "/api/projects/p1"),
    ];
    let bad_tokens = [
        ("none", None),
        ("malformed", Some("not-a-jwt".to_owned())),
        (
            "bad signature",
            Some(sign("another-secret-entirely", "u", &["*"], now + 3600)),
        ),
        ("expired", Some(gw.token_with("u", &["*"], now - 3600))),
        ("unsigned (alg none)", Some(unsigned(now + 3600))),
        ("no exp", Some(no_exp(&gw.secret))),
    ];
    for (method, path) in &routes {
        for (what, token) in &bad_tokens {
            let mut req = gw.http().request(method.clone(), gw.url(path));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req.body("{}").fetch().await;
            assert_eq!(
                error_of(r).await,
                (401, "unauthorized".into()),
                "{what}: {method} {path}"
            );
        }
        // Another project's token: 403.
        let r = gw
            .http()
            .request(method.clone(), gw.url(path))
            .bearer_auth(gw.token(&["p2"]))
            .body("{}")
            .fetch()
            .await;
        assert_eq!(
            error_of(r).await,
            (403, "forbidden".into()),
            "p2 token: {method} {path}"
        );
    }
    // Nothing happened to p1.
    let r = gw.get("/api/projects/p1").fetch().await;
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "active");

    // The right project's token works; the list shows only what it may see.
    let r = gw
        .http()
        .get(gw.url("/api/projects"))
        .bearer_auth(gw.token(&["p1"]))
        .fetch()
        .await;
    let list: Vec<Value> = r.json().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], "p1");
    let r = gw
        .http()
        .get(gw.url("/api/projects"))
        .bearer_auth(gw.admin_token())
        .fetch()
        .await;
    assert_eq!(r.json::<Vec<Value>>().await.unwrap().len(), 2);

    // A token for p1 may not create p3; an admin token may.
    let r = gw
        .http()
        .post(gw.url("/api/projects"))
        .bearer_auth(gw.token(&["p1"]))
        .json(&json!({"id": "p3"}))
        .fetch()
        .await;
    assert_eq!(r.status(), 403);

    // ?token= works for the event stream (a browser's EventSource sends no headers) ...
    let r = gw
        .http()
        .get(gw.url(&format!(
            "/api/projects/p1/events?token={}",
            gw.token(&["p1"])
        )))
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    drop(r);
    // ... but not for JSON routes.
    let r = gw
        .http()
        .get(gw.url(&format!("/api/projects/p1?token={}", gw.token(&["p1"]))))
        .fetch()
        .await;
    assert_eq!(r.status(), 401);

    // Operations endpoints need no token: api_projects.rs
    // (`operations_endpoints_and_templates`) calls them without one.
}

#[tokio::test]
async fn tokens_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gateway.log");
    let gw = Gateway::builder()
        .env("RUST_LOG", "debug")
        .stderr_to(&log)
        .start()
        .await
        .unwrap();
    gw.open_project("p1").await.unwrap();
    let token = gw.token(&["p1"]);
    let r = gw
        .http()
        .get(gw.url(&format!("/api/projects/p1/archive?token={token}")))
        .fetch()
        .await;
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await.unwrap();
    let r = gw
        .http()
        .get(gw.url("/api/projects/p1/files/x"))
        .bearer_auth(&token)
        .fetch()
        .await;
    assert_eq!(r.status(), 404);
    let text = tests::eventually(
        std::time::Duration::from_secs(10),
        "the request in the log",
        || {
            let log = log.clone();
            async move {
                std::fs::read_to_string(&log)
                    .ok()
                    .filter(|t| t.contains("token=REDACTED"))
            }
        },
    )
    .await
    .unwrap();
    assert!(!text.contains(&token), "the token was logged");
    assert!(
        !text.contains(&gw.admin_token()),
        "the admin token was logged"
    );
    assert!(gw.stdout_lines().iter().all(|l| !l.contains(&token)));
}

/// A token with `"alg": "none"` and no signature.
fn unsigned(exp: i64) -> String {
    use base64_like::encode;
    format!(
        "{}.{}.",
        encode(br#"{"alg":"none","typ":"JWT"}"#),
        encode(format!(r#"{{"sub":"u","projects":["*"],"exp":{exp}}}"#).as_bytes())
    )
}

/// A correctly signed token without `exp`.
fn no_exp(secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "u", "projects": ["*"]}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Unpadded base64url, enough for a forged token.
mod base64_like {
    pub(super) fn encode(data: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}
