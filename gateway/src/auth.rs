//! Bearer tokens: HS256 JWTs with claims `sub`, `projects`, `exp` and
//! optionally `nbf` and `iat`, checked by two axum extractors. [`Claims`]
//! reads only the `Authorization` header; [`QueryClaims`] also takes the
//! WebSocket subprotocol offer `devgate.bearer.<token>` and `?token=`, and is
//! used only where a browser
//! cannot set headers (WebSocket upgrades, SSE, the preview cookie flow, the
//! archive download). Tokens never reach the log: see [`redact_uri`].

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::Error;

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
    /// Not before, unix seconds (honoured when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, unix seconds; with `--max-token-ttl` the lifetime is
    /// `exp - iat` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
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
}

/// The gateway's signing and checking keys: one key for bearer tokens (the
/// platform's, signed with the secret) and one derived from it for the
/// credentials the gateway mints for previews (cookies, one-time codes,
/// share links). A preview credential therefore never verifies as a bearer
/// token: every `/api` route refuses it, whatever its claims say.
#[derive(Clone)]
pub struct Keys(Arc<KeysInner>);

struct KeysInner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Signature only: whether a token is ours at all, expired or not.
    signature_only: Validation,
    preview_encoding: EncodingKey,
    preview_decoding: DecodingKey,
    max_ttl: Option<u64>,
    /// Bearer tokens already checked, with their claims: a client sends the
    /// same token with every request, and its base64, JSON and HMAC took
    /// about 3 % of a small file read's CPU in a profile. Only the expiry
    /// moves with time (a token past its `nbf` and within `--max-token-ttl`
    /// stays so), and it is checked again on every use. Only tokens with a
    /// valid signature get in; the map starts over when full.
    verified: std::sync::Mutex<std::collections::HashMap<String, Arc<Claims>>>,
}

/// Seconds of clock skew allowed on `exp` and `nbf`.
const LEEWAY: u64 = 5;

/// Checked tokens kept at most ([`KeysInner::verified`]).
const VERIFIED_KEPT: usize = 4096;

/// What a preview credential grants: previews of one project, on one host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PreviewClaims {
    /// Who it was minted for: the bearer's `sub`, or `share:{id}`.
    pub sub: String,
    /// The one project it opens.
    pub project: String,
    /// The preview host name it is bound to (no port).
    pub host: String,
    /// The share link it came from; checked on every request, so that a
    /// revoked link stops working at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<String>,
    /// Expiry, unix seconds.
    pub exp: u64,
}

impl Keys {
    /// Keys from the secret; `max_ttl` refuses bearer tokens that live longer.
    pub fn new(secret: &[u8], max_ttl: Option<std::time::Duration>) -> Keys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        let mut signature_only = Validation::new(Algorithm::HS256);
        signature_only.validate_exp = false;
        signature_only.validate_nbf = false;
        signature_only.validate_aud = false;
        signature_only.required_spec_claims.clear();
        let preview_key = preview_key(secret);
        Keys(Arc::new(KeysInner {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            signature_only,
            preview_encoding: EncodingKey::from_secret(&preview_key),
            preview_decoding: DecodingKey::from_secret(&preview_key),
            max_ttl: max_ttl.map(|d| d.as_secs()),
            verified: Default::default(),
        }))
    }

    /// Signs a token for `sub` valid for `ttl_secs`.
    pub fn sign(&self, sub: &str, projects: &[&str], ttl_secs: u64) -> Result<String, Error> {
        let now = now_secs();
        let claims = Claims {
            sub: sub.to_owned(),
            projects: projects.iter().map(|s| s.to_string()).collect(),
            exp: now + ttl_secs,
            nbf: None,
            iat: Some(now),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.0.encoding)
            .map_err(Error::internal)
    }

    /// Checks signature, expiry, not-before and the longest lifetime; any
    /// failure is 401.
    pub fn verify(&self, token: &str) -> Result<Claims, Error> {
        let kept = self
            .0
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned();
        // As jsonwebtoken's check: expired once `exp < now - leeway`.
        if let Some(claims) = kept
            && claims.exp >= now_secs().saturating_sub(LEEWAY)
        {
            return Ok(Claims::clone(&claims));
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.0.decoding, &self.0.validation)
            .map(|d| d.claims)
            .map_err(|e| {
                let why = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => "the token has expired",
                    jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                        "the token is not valid yet (nbf)"
                    }
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                        "the token's signature is wrong"
                    }
                    _ => "the token is malformed",
                };
                Error::Unauthorized(why.into())
            })?;
        if let Some(max) = self.0.max_ttl {
            // An `iat` in the future would shorten the lifetime at will.
            let issued = claims.iat.unwrap_or(u64::MAX).min(now_secs());
            let lifetime = claims.exp.saturating_sub(issued);
            if lifetime > max {
                return Err(Error::Unauthorized(format!(
                    "the token lives {lifetime} s, longer than the {max} s this gateway accepts"
                )));
            }
        }
        let mut verified = self.0.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= VERIFIED_KEPT {
            verified.clear();
        }
        verified.insert(token.to_owned(), Arc::new(claims.clone()));
        Ok(claims)
    }

    /// Whether `token` was signed by this gateway (a bearer token or a
    /// preview credential), valid or not: such a token is never passed on
    /// to user code.
    pub fn is_ours(&self, token: &str) -> bool {
        let signed_by = |key: &DecodingKey| {
            jsonwebtoken::decode::<serde_json::Value>(token, key, &self.0.signature_only).is_ok()
        };
        signed_by(&self.0.decoding) || signed_by(&self.0.preview_decoding)
    }

    /// Signs a preview credential.
    pub fn sign_preview(&self, claims: &PreviewClaims) -> Result<String, Error> {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &self.0.preview_encoding,
        )
        .map_err(Error::internal)
    }

    /// Checks a preview credential's signature and expiry.
    pub fn verify_preview(&self, token: &str) -> Option<PreviewClaims> {
        jsonwebtoken::decode::<PreviewClaims>(token, &self.0.preview_decoding, &self.0.validation)
            .ok()
            .map(|d| d.claims)
    }
}

/// The key of preview credentials, derived from the secret with a label of
/// its own, so the two kinds of token can never stand in for each other.
fn preview_key(secret: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"devgate preview credentials v1\0");
    h.update(secret);
    h.finalize().into()
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
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

impl<S> FromRequestParts<S> for Claims
where
    S: Send + Sync,
    Keys: FromRef<S>,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = header_token(parts)
            .ok_or_else(|| Error::Unauthorized("missing bearer token".into()))?;
        Keys::from_ref(state).verify(token)
    }
}

/// Claims from the `Authorization` header or, failing that, the WebSocket
/// subprotocol offer or `?token=`.
#[derive(Debug, Clone)]
pub struct QueryClaims(pub Claims);

impl<S> FromRequestParts<S> for QueryClaims
where
    S: Send + Sync,
    Keys: FromRef<S>,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let keys = Keys::from_ref(state);
        if let Some(token) = header_token(parts).or_else(|| protocol_token(parts)) {
            return keys.verify(token).map(QueryClaims);
        }
        let token = query_token(parts.uri.query())
            .ok_or_else(|| Error::Unauthorized("missing bearer token".into()))?;
        keys.verify(&token).map(QueryClaims)
    }
}

/// The URI as it may be logged: the value of any `token`, `code` or
/// `share` parameter replaced.
pub fn redact_uri(uri: &axum::http::Uri) -> String {
    let path = uri.path();
    match uri.query() {
        None => path.to_owned(),
        Some(q) => {
            let q: Vec<String> = q
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _))
                        if ["token", "code", "share"]
                            .iter()
                            .any(|n| k.eq_ignore_ascii_case(n)) =>
                    {
                        format!("{k}=REDACTED")
                    }
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", q.join("&"))
        }
    }
}

/// The secret in a file (`--secret-file`): its first line, which must not be empty.
pub fn read_secret_file(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the secret file {}", path.display()))?;
    let line = text.lines().next().unwrap_or_default().trim();
    if line.is_empty() {
        anyhow::bail!("the secret file {} is empty", path.display());
    }
    Ok(line.to_owned())
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
        let keys = Keys::new(b"0123456789abcdef0123", None);
        let t = keys.sign("u", &["p1"], 60).unwrap();
        let c = keys.verify(&t).unwrap();
        assert!(c.allows("p1") && !c.allows("p2"));
        let other = Keys::new(b"another-secret-0000", None);
        assert!(matches!(other.verify(&t), Err(Error::Unauthorized(_))));
        assert!(matches!(
            keys.verify("garbage"),
            Err(Error::Unauthorized(_))
        ));
    }

    #[test]
    fn a_checked_token_is_refused_once_it_expires() {
        let secret = b"0123456789abcdef0123";
        let keys = Keys::new(secret, None);
        // Valid for one more second (within the leeway), then expired.
        let exp = now_secs() - LEEWAY + 1;
        let t = encode(
            secret,
            &serde_json::json!({"sub": "u", "projects": ["p"], "exp": exp}),
        );
        assert_eq!(keys.verify(&t).unwrap().exp, exp);
        // From the kept claims this time.
        assert_eq!(keys.verify(&t).unwrap().sub, "u");
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let Err(Error::Unauthorized(why)) = keys.verify(&t) else {
            panic!("a kept token was accepted past its expiry");
        };
        assert!(why.contains("expired"), "{why}");
        // A token of another key is never taken from the kept ones.
        let other = Keys::new(b"another-secret-0000", None);
        let t2 = keys.sign("u", &["p"], 60).unwrap();
        assert!(keys.verify(&t2).is_ok());
        assert!(other.verify(&t2).is_err());
    }

    fn encode(secret: &[u8], claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn not_before_and_longest_lifetime() {
        let secret = b"0123456789abcdef0123";
        let now = now_secs();
        let keys = Keys::new(secret, Some(std::time::Duration::from_secs(3600)));
        let early = encode(
            secret,
            &serde_json::json!({"sub": "u", "projects": ["p"], "exp": now + 600, "nbf": now + 300}),
        );
        let Err(Error::Unauthorized(why)) = keys.verify(&early) else {
            panic!("a token before its nbf was accepted");
        };
        assert!(why.contains("nbf"), "{why}");
        let ok = encode(
            secret,
            &serde_json::json!({"sub": "u", "projects": ["p"], "exp": now + 600, "nbf": now - 10}),
        );
        assert!(keys.verify(&ok).is_ok());
        // Lifetime: exp - iat when iat is given, else exp - now.
        let long = encode(
            secret,
            &serde_json::json!({"sub": "u", "projects": ["p"], "exp": now + 600, "iat": now - 7200}),
        );
        assert!(matches!(keys.verify(&long), Err(Error::Unauthorized(_))));
        let far = encode(
            secret,
            &serde_json::json!({"sub": "u", "projects": ["p"], "exp": now + 7200}),
        );
        let issued_later = encode(
            secret,
            &serde_json::json!({"sub": "u", "projects": ["p"], "exp": now + 7200, "iat": now + 7000}),
        );
        assert!(matches!(
            keys.verify(&issued_later),
            Err(Error::Unauthorized(_))
        ));
        assert!(matches!(keys.verify(&far), Err(Error::Unauthorized(_))));
        assert!(Keys::new(secret, None).verify(&far).is_ok());
    }

    #[test]
    fn preview_credentials_are_not_bearer_tokens() {
        let keys = Keys::new(b"0123456789abcdef0123", None);
        let claims = PreviewClaims {
            sub: "u".into(),
            project: "p".into(),
            host: "web.p.localhost".into(),
            share: None,
            exp: now_secs() + 60,
        };
        let cookie = keys.sign_preview(&claims).unwrap();
        assert_eq!(keys.verify_preview(&cookie), Some(claims));
        assert!(matches!(keys.verify(&cookie), Err(Error::Unauthorized(_))));
        let bearer = keys.sign("u", &["*"], 60).unwrap();
        assert_eq!(keys.verify_preview(&bearer), None);
        // Both are the gateway's own, expired or not; anything else is not.
        assert!(keys.is_ours(&cookie) && keys.is_ours(&bearer));
        let expired = encode(
            b"0123456789abcdef0123",
            &serde_json::json!({"sub": "u", "exp": 1}),
        );
        assert!(keys.is_ours(&expired));
        assert!(!keys.is_ours(&encode(b"someone else's", &serde_json::json!({"exp": 1}))));
        assert!(!keys.is_ours("not-a-jwt"));
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
