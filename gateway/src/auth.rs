//! Bearer tokens: HS256 JWTs with claims `sub`, `projects` and `exp`, checked
//! by two axum extractors. [`Claims`] reads only the `Authorization` header;
//! [`QueryClaims`] also takes the WebSocket subprotocol offer
//! `devgate.bearer.<token>` and `?token=`, and is used only where a browser
//! cannot set headers (WebSocket upgrades, SSE, the preview cookie flow, the
//! archive download). Tokens never reach the log: see [`redact_uri`].

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::state::AppState;

/// What a token grants.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Project ids the bearer may use, or `["*"]` for all.
    #[serde(default)]
    pub projects: Vec<String>,
    /// Expiry, unix seconds.
    pub exp: u64,
}

impl Claims {
    /// Whether the token lists this project (or `*`).
    pub fn allows(&self, project: &str) -> bool {
        self.projects.iter().any(|p| p == "*" || p == project)
    }

    /// 403 unless the token lists this project.
    pub fn require(&self, project: &str) -> Result<(), Error> {
        if self.allows(project) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "the token does not grant project {project}"
            )))
        }
    }

    /// Whether the token grants every project.
    pub fn is_admin(&self) -> bool {
        self.projects.iter().any(|p| p == "*")
    }
}

/// The gateway's signing and checking keys.
#[derive(Clone)]
pub struct Keys(Arc<KeysInner>);

struct KeysInner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Keys {
    pub fn new(secret: &[u8]) -> Keys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp"]);
        Keys(Arc::new(KeysInner {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }))
    }

    /// Signs a token for `sub` valid for `ttl_secs`.
    pub fn sign(&self, sub: &str, projects: &[&str], ttl_secs: u64) -> Result<String, Error> {
        let claims = Claims {
            sub: sub.to_owned(),
            projects: projects.iter().map(|s| s.to_string()).collect(),
            exp: now_secs() + ttl_secs,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.0.encoding)
            .map_err(Error::internal)
    }

    /// Checks signature and expiry; any failure is 401.
    pub fn verify(&self, token: &str) -> Result<Claims, Error> {
        jsonwebtoken::decode::<Claims>(token, &self.0.decoding, &self.0.validation)
            .map(|d| d.claims)
            .map_err(|e| {
                let why = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => "the token has expired",
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                        "the token's signature is wrong"
                    }
                    _ => "the token is malformed",
                };
                Error::Unauthorized(why.into())
            })
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The bearer token of the `Authorization` header, if any.
pub fn header_token(parts: &Parts) -> Option<&str> {
    let v = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The subprotocol a browser offers to say "my token follows in the offer".
pub const WS_PROTOCOL: &str = "devgate";
const WS_BEARER_PREFIX: &str = "devgate.bearer.";

/// The token a browser put in its WebSocket subprotocol offer
/// (`Sec-WebSocket-Protocol: devgate, devgate.bearer.<token>`), if any. A
/// browser cannot set `Authorization` on a WebSocket, and a token in the URL
/// shows wherever the URL does (Chromium prints the URL of a failed socket
/// in the console). A JWT is made of token characters (RFC 9110 section
/// 5.6.2), so it fits in a protocol name.
pub fn protocol_token(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(WS_BEARER_PREFIX))
}

/// The `token` query parameter, if any (percent-decoded).
pub fn query_token(query: Option<&str>) -> Option<String> {
    let q = query?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "token").then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

impl FromRequestParts<AppState> for Claims {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = header_token(parts)
            .ok_or_else(|| Error::Unauthorized("missing bearer token".into()))?;
        state.keys.verify(token)
    }
}

/// Claims from the `Authorization` header or, failing that, the WebSocket
/// subprotocol offer or `?token=`.
#[derive(Debug, Clone)]
pub struct QueryClaims(pub Claims);

impl FromRequestParts<AppState> for QueryClaims {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(token) = header_token(parts).or_else(|| protocol_token(parts)) {
            return state.keys.verify(token).map(QueryClaims);
        }
        let token = query_token(parts.uri.query())
            .ok_or_else(|| Error::Unauthorized("missing bearer token".into()))?;
        state.keys.verify(&token).map(QueryClaims)
    }
}

/// The URI as it may be logged: the value of any `token` parameter replaced.
pub fn redact_uri(uri: &axum::http::Uri) -> String {
    let path = uri.path();
    match uri.query() {
        None => path.to_owned(),
        Some(q) => {
            let q: Vec<String> = q
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("token") => format!("{k}=REDACTED"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", q.join("&"))
        }
    }
}

/// Loads the secret: the configured one, else the one kept in the data dir,
/// else a new random one written there (mode 0600).
pub fn load_or_create_secret(
    configured: Option<&str>,
    data_dir: &std::path::Path,
) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(s) = configured {
        return Ok(s.as_bytes().to_vec());
    }
    let path = data_dir.join("secret");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().as_bytes().to_vec()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let tmp = data_dir.join(".secret.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(secret.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(secret.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_reject() {
        let keys = Keys::new(b"0123456789abcdef0123");
        let t = keys.sign("u", &["p1"], 60).unwrap();
        let c = keys.verify(&t).unwrap();
        assert!(c.allows("p1") && !c.allows("p2"));
        let other = Keys::new(b"another-secret-0000");
        assert!(matches!(other.verify(&t), Err(Error::Unauthorized(_))));
        assert!(matches!(
            keys.verify("garbage"),
            Err(Error::Unauthorized(_))
        ));
    }

    #[test]
    fn secret_is_made_once_and_kept() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_secret(None, dir.path()).unwrap();
        assert_eq!(a.len(), 64);
        let mode = std::fs::metadata(dir.path().join("secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_secret(None, dir.path()).unwrap(), a);
        assert_eq!(
            load_or_create_secret(Some("given"), dir.path()).unwrap(),
            b"given"
        );
    }

    #[test]
    fn redacts_tokens() {
        let uri: axum::http::Uri = "/api/x?a=1&token=secret&b=2".parse().unwrap();
        assert_eq!(redact_uri(&uri), "/api/x?a=1&token=REDACTED&b=2");
        assert_eq!(
            query_token(Some("a=1&token=ab%2Ec")).as_deref(),
            Some("ab.c")
        );
    }
}
