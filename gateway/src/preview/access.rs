//! Who may see a preview, and the flow that lets a browser in.
//!
//! A browser gets into a private preview with a cookie that the gateway
//! mints on `/__preview/auth`, from one of: a one-time code
//! (`?code=`, made by `POST .../preview-link`, single use, 60 s), a share
//! link (`?share=`), or a bearer token (`?token=` or `Authorization`, for
//! scripts). The cookie is a preview credential (`auth::PreviewClaims`,
//! signed with the preview key): it names one project and one host and is
//! refused by every `/api` route. A cookie minted from a share link names
//! the share, which is looked up (cached for a second) on every request, so
//! that a revoked link stops working at once.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use sha2::Digest as _;

use super::Refusal;
use super::host::PreviewHost;
use crate::auth::{PreviewClaims, now_secs, query_token};
use crate::error::Error;
pub use crate::preview_state::Shares;
use crate::state::AppState;

/// The cookie that lets a browser into a private preview.
pub const COOKIE: &str = "devgate_preview";

/// Path of the cookie flow on every preview host.
pub const AUTH_PATH: &str = "/__preview/auth";

/// Lifetime of a preview cookie minted from a token or a code (never beyond
/// the token's own expiry).
const COOKIE_TTL: u64 = 3600;

/// How long a share's validity is reused between requests.
const SHARE_TTL: Duration = Duration::from_secs(1);

/// What a request may do on a preview host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// A user of the project: by the preview cookie (`by_header: false`) or by
    /// a bearer token in `Authorization` (`by_header: true`).
    User { by_header: bool },
    /// Someone holding a live share link.
    Share { id: String, wake: bool },
    /// No credential (enough for a public container only).
    Anonymous,
}

impl Access {
    /// Whether the request came with credentials of the project's users.
    pub fn is_user(&self) -> bool {
        matches!(self, Access::User { .. })
    }
}

/// What the request's credentials allow on this preview.
pub async fn check(
    state: &AppState,
    target: &PreviewHost,
    host_name: &str,
    headers: &HeaderMap,
) -> Access {
    // Every value counts: a dev server may set a cookie of the same name
    // (for its whole domain, or another path) to shadow the gateway's.
    let mut share = None;
    for value in cookies(headers, COOKIE) {
        if let Some(claims) = state.keys.verify_preview(value)
            && claims.project == target.project
            && claims.host == host_name
        {
            match claims.share {
                None => return Access::User { by_header: false },
                Some(id) => share = share.or(Some(id)),
            }
        }
    }
    if let Some(id) = share
        && let Some(wake) = state.preview.shares.valid(state, &id, target).await
    {
        return Access::Share { id, wake };
    }
    if let Some(token) = bearer(headers)
        && let Ok(claims) = state.keys.verify(token)
        && claims.allows(&target.project)
    {
        return Access::User { by_header: true };
    }
    Access::Anonymous
}

/// The bearer token of an `Authorization` header, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Every value of cookie `name` in the request's `Cookie` headers.
pub fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v.trim())
        })
}

/// The value of query parameter `name` (percent-decoded).
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// SHA-256, hex: how codes and share secrets are stored and looked up.
pub fn digest(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// A new random secret (256 bits), URL-safe.
pub fn new_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// `GET /__preview/auth`: turns a one-time code, a share link or a bearer
/// token into this host's cookie, then sends the browser to `/`. Nothing of
/// this request goes upstream.
pub async fn auth_flow(
    state: &AppState,
    target: &PreviewHost,
    host_name: &str,
    headers: &HeaderMap,
    query: Option<&str>,
    trusted_peer: bool,
) -> Result<Response, Refusal> {
    let now = now_secs();
    let claims = if let Some(code) = query_param(query, "code").filter(|c| !c.is_empty()) {
        let code = state
            .store
            .take_preview_code(&digest(&code), chrono::Utc::now())
            .await?
            .ok_or(Refusal::Unauthorized)?;
        if code.project != target.project || code.container != target.container {
            // Spent anyway: a code is good for one try on its own host.
            return Err(Refusal::Forbidden);
        }
        PreviewClaims {
            sub: code.sub,
            project: target.project.clone(),
            host: host_name.to_owned(),
            share: None,
            exp: now + code.token_exp.saturating_sub(now).min(COOKIE_TTL),
        }
    } else if let Some(link) = query_param(query, "share").filter(|s| !s.is_empty()) {
        let (id, secret) = link.split_once('.').ok_or(Refusal::Unauthorized)?;
        let share = state
            .store
            .get_share(id)
            .await?
            .ok_or(Refusal::Unauthorized)?;
        let expires = u64::try_from(share.expires_at.timestamp()).unwrap_or_default();
        // Compared as digests: equal length, and a timing difference
        // reveals nothing about the secret.
        if digest(secret) != share.secret_sha256 || expires <= now {
            return Err(Refusal::Unauthorized);
        }
        if share.project != target.project || share.container != target.container {
            return Err(Refusal::Forbidden);
        }
        PreviewClaims {
            sub: format!("share:{}", share.id),
            project: target.project.clone(),
            host: host_name.to_owned(),
            share: Some(share.id),
            exp: expires,
        }
    } else {
        let token = query_token(query)
            .or_else(|| bearer(headers).map(str::to_owned))
            .filter(|t| !t.is_empty())
            .ok_or(Refusal::Unauthorized)?;
        let claims = state
            .keys
            .verify(&token)
            .map_err(|_| Refusal::Unauthorized)?;
        if !claims.allows(&target.project) {
            return Err(Refusal::Forbidden);
        }
        PreviewClaims {
            sub: claims.sub,
            project: target.project.clone(),
            host: host_name.to_owned(),
            share: None,
            exp: now + claims.exp.saturating_sub(now).min(COOKIE_TTL),
        }
    };
    let ttl = claims.exp.saturating_sub(now);
    if ttl == 0 {
        return Err(Refusal::Unauthorized);
    }
    let minted = state.keys.sign_preview(&claims)?;
    let attrs = if secure_context(host_name, headers, trusted_peer) {
        // The demo page embeds the preview in an iframe of another site
        // (localhost vs web.demo.localhost): Chromium sends a cookie there only
        // when it is `SameSite=None; Secure`, and, with third-party cookies
        // blocked (its default now), only when it is also `Partitioned`.
        // `Secure` works on http://*.localhost (a potentially trustworthy
        // origin) and on https.
        "; Secure; SameSite=None; Partitioned"
    } else {
        // Plain http on a real domain: browsers refuse `Secure` there, so the
        // cookie can only work first-party (the preview opened in its own tab).
        "; SameSite=Lax"
    };
    let cookie = format!("{COOKIE}={minted}; Path=/; Max-Age={ttl}; HttpOnly{attrs}");
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SEE_OTHER;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The URL held a credential: keep it out of the next page's Referer.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(Error::internal)?,
    );
    tracing::info!(project = %target.project, container = %target.container, sub = %claims.sub, "preview cookie set");
    Ok(resp)
}

/// Whether the browser treats this origin as secure: https (as told by a
/// trusted proxy in front), or a `localhost` name, which browsers trust on
/// http too.
pub fn secure_context(host_name: &str, headers: &HeaderMap, trusted_peer: bool) -> bool {
    let https = trusted_peer
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    https || host_name == "localhost" || host_name.ends_with(".localhost")
}

impl Shares {
    /// `Some(wake)` when share `id` exists, has not expired and is for this
    /// container.
    async fn valid(&self, state: &AppState, id: &str, target: &PreviewHost) -> Option<bool> {
        let cached = {
            let map = self.valid.lock().unwrap_or_else(|p| p.into_inner());
            map.get(id)
                .filter(|(_, at)| at.elapsed() < SHARE_TTL)
                .map(|(share, _)| share.clone())
        };
        let share = match cached {
            Some(share) => share,
            None => {
                // A store failure counts as "not valid": fail closed.
                let share = state.store.get_share(id).await.ok().flatten();
                let mut map = self.valid.lock().unwrap_or_else(|p| p.into_inner());
                if map.len() > 10_000 {
                    map.retain(|_, (_, at)| at.elapsed() < SHARE_TTL);
                }
                map.insert(id.to_owned(), (share.clone(), Instant::now()));
                share
            }
        }?;
        (share.project == target.project
            && share.container == target.container
            && share.expires_at > chrono::Utc::now())
        .then_some(share.wake)
    }
}

/// How often the shares with open connections are checked against the store.
pub const WATCH_PERIOD: Duration = Duration::from_secs(2);

/// Closes connections opened through share links that were revoked (on any
/// replica: the store says) or expired, every [`WATCH_PERIOD`].
pub async fn watch(state: AppState) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WATCH_PERIOD) => {}
            _ = state.shutdown.cancelled() => return,
        }
        for id in state.preview.shares.live_ids() {
            match state.store.get_share(&id).await {
                Ok(Some(share)) if share.expires_at > chrono::Utc::now() => {}
                Ok(_) => {
                    tracing::info!(share = %id, "share link revoked or expired; closing its connections");
                    state.preview.shares.revoke(&id);
                }
                // Unknown: keep the connections until the store answers.
                Err(error) => {
                    tracing::warn!(error = %crate::error::Chain(&error), share = %id, "cannot check a share link")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderName;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn cookie_and_query_lookup() {
        let h = headers(&[
            ("cookie", "a=1; devgate_preview=tok; b=2"),
            ("cookie", "c=3"),
        ]);
        assert_eq!(cookies(&h, COOKIE).collect::<Vec<_>>(), ["tok"]);
        assert_eq!(cookies(&h, "c").collect::<Vec<_>>(), ["3"]);
        let tossed = headers(&[("cookie", "devgate_preview=junk; devgate_preview=real")]);
        assert_eq!(
            cookies(&tossed, COOKIE).collect::<Vec<_>>(),
            ["junk", "real"]
        );
        assert_eq!(
            query_param(Some("x=1&code=ab%2Ec"), "code").as_deref(),
            Some("ab.c")
        );
        assert_eq!(query_param(Some("codex=1"), "code"), None);
    }

    #[test]
    fn secure_contexts() {
        let https = headers(&[("x-forwarded-proto", "https")]);
        assert!(secure_context(
            "web.demo.localhost",
            &HeaderMap::new(),
            false
        ));
        assert!(!secure_context(
            "web.demo.example.com",
            &HeaderMap::new(),
            true
        ));
        assert!(secure_context("web.demo.example.com", &https, true));
        // A client's own X-Forwarded-Proto is not believed.
        assert!(!secure_context("web.demo.example.com", &https, false));
    }
}
