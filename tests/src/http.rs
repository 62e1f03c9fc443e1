//! Answers of the gateway's HTTP API as the end-to-end tests check them:
//! the contract's JSON error (`{"error": {"code", "message"}}`, API.md).

/// A response's status and the code of its JSON error (empty when the body
/// is not one).
pub async fn error_of(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Asserts that `r` is the contract's JSON error `code` with `status`, and
/// answers its message.
pub async fn expect_error(r: reqwest::Response, status: u16, code: &str) -> String {
    let got = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(got, status, "want {status} {code}, got {got}: {text}");
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("a {status} without a JSON error body ({e}): {text}"));
    assert_eq!(v["error"]["code"], code, "{text}");
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Sends a test's request: `gw.get(path).fetch().await` is the response,
/// and a request that could not be sent panics with reqwest's error, which
/// names the URL (what `.send().await.unwrap()` spelled out every time).
pub trait Fetch {
    fn fetch(self) -> impl std::future::Future<Output = reqwest::Response> + Send;
}

impl Fetch for reqwest::RequestBuilder {
    async fn fetch(self) -> reqwest::Response {
        match self.send().await {
            Ok(r) => r,
            Err(e) => panic!("request not sent: {e:?}"),
        }
    }
}
