//! The preview proxy: requests whose `Host` names a container of a project
//! (see [`host`]) go to that dev server, on hyper with a keep-alive pool,
//! bodies streamed both ways, WebSocket upgrades passed through (Vite and
//! Next.js HMR), `X-Forwarded-Host/Proto/For` added.
//!
//! Private previews need the cookie that `/__preview/auth?token=` sets: a
//! short-lived token the gateway mints for that project and host, never the
//! bearer's own token. A stopped container answers 503, an unknown one 404,
//! and a hibernated project is woken (restored, the container started).

pub mod host;
mod pool;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;

use crate::auth::{Claims, query_token};
use crate::error::{Error, Result};
use crate::metrics::DirectionLabels;
use crate::runtime::ContainerRoute;
use crate::state::AppState;
use crate::store::{ContainerStatus, ProjectStatus};
use host::PreviewHost;

/// The cookie that lets a browser into a private preview.
pub const COOKIE: &str = "devgate_preview";

/// Path of the cookie flow on every preview host.
pub const AUTH_PATH: &str = "/__preview/auth";

/// Lifetime of a preview cookie (never beyond the token it came from).
const COOKIE_TTL: Duration = Duration::from_secs(3600);

/// How long a container's store record (exists, public) is reused between
/// requests. Routing itself is asked of the runtime on every request, so a
/// stopped container is noticed at once; this only saves a store read.
const RECORD_TTL: Duration = Duration::from_secs(1);

/// How long a woken container may take to accept connections.
const WAKE_DEADLINE: Duration = Duration::from_secs(60);

/// Makes sure a project is active, restoring it first when it is
/// hibernated (terminals and previews wake their project). Other states
/// answer 409 `project_not_active`; an unknown project 404.
pub async fn ensure_active(state: &AppState, project: &str) -> Result<()> {
    let p = state.project(project).await?;
    match p.status {
        ProjectStatus::Active => Ok(()),
        ProjectStatus::Hibernated => {
            tracing::info!(project, "waking a hibernated project");
            crate::lifecycle::open(state, project).await?;
            Ok(())
        }
        _ => Err(Error::ProjectNotActive(project.to_owned())),
    }
}

/// Puts preview dispatch in front of `app`: a request whose `Host` names a
/// preview host goes straight to the proxy, before the API's router and its
/// middleware (tracing span, metrics, JSON errors), which it never needs and
/// which cost a proxied request more than the proxying itself; every other
/// request goes to `app` unchanged.
pub fn in_front(state: AppState, app: axum::Router) -> axum::Router {
    use tower::Service as _;
    // One reference count per request rather than a clone of every handle
    // the state holds: this runs for every request the gateway serves.
    let state = Arc::new(state);
    let svc = tower::service_fn(move |req: Request| {
        let target = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .and_then(|h| host::parse(h, &state.config.preview_domain));
        let routed = match target {
            Some(target) => Ok((state.clone(), target)),
            None => Err(app.clone()),
        };
        async move {
            match routed {
                Ok((state, target)) => Ok(handle(&state, target, req).await),
                Err(mut app) => app.call(req).await,
            }
        }
    });
    axum::Router::new().fallback_service(svc)
}

/// Serves one request for a preview host.
pub async fn handle(state: &AppState, target: PreviewHost, req: Request) -> Response {
    let span =
        tracing::debug_span!("preview", project = %target.project, container = %target.container);
    match tracing::Instrument::instrument(serve(state, &target, req), span).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

/// What a preview request can end in besides a proxied answer: short HTML
/// pages, since a person in a browser reads them.
enum Refusal {
    NotFound(String),
    Unauthorized,
    Forbidden,
    Stopped(String),
    BadGateway,
    Internal(Error),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, title, text) = match self {
            Refusal::NotFound(what) => (
                StatusCode::NOT_FOUND,
                "Preview not found",
                format!("There is no {what}."),
            ),
            Refusal::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "Sign-in needed",
                format!(
                    "This preview is private. Open {AUTH_PATH}?token=&lt;token&gt; on this host to get in."
                ),
            ),
            Refusal::Forbidden => (
                StatusCode::FORBIDDEN,
                "Not allowed",
                "Your token does not grant this project.".to_owned(),
            ),
            Refusal::Stopped(name) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Dev server stopped",
                format!("The container {name} is not running. Start it, then reload this page."),
            ),
            Refusal::BadGateway => (
                StatusCode::BAD_GATEWAY,
                "Dev server not answering",
                "The container is running but its dev server does not answer on its port yet."
                    .to_owned(),
            ),
            Refusal::Internal(error) => {
                let status = error.status_and_code().0;
                if status.is_server_error() {
                    tracing::warn!(%error, "preview failed");
                }
                let text = if status.is_server_error() {
                    "Something went wrong; see the gateway's log.".to_owned()
                } else {
                    escape(&error.to_string())
                };
                (status, "Preview unavailable", text)
            }
        };
        let body = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
             <body style=\"font-family:system-ui,sans-serif;margin:3em\"><h1>{title}</h1><p>{text}</p></body></html>\n"
        );
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response();
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        resp
    }
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Refusal {
        Refusal::Internal(e)
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

async fn serve(
    state: &AppState,
    target: &PreviewHost,
    req: Request,
) -> std::result::Result<Response, Refusal> {
    let record = record(state, target).await?;
    if req.uri().path() == AUTH_PATH {
        return auth_flow(
            state,
            target,
            &target.to_host(&state.config.preview_domain),
            &req,
        );
    }
    let authorized_by_header = if record.public {
        false
    } else {
        let host_name = target.to_host(&state.config.preview_domain);
        match authorize(state, target, &host_name, req.headers()) {
            Some(by_header) => by_header,
            None => return Err(Refusal::Unauthorized),
        }
    };
    // Only an allowed request to a known container is activity: a stranger
    // spraying made-up hosts must neither grow the tracker nor reach the
    // API server.
    crate::idle::touch(state, &target.project);
    let route = match state
        .runtime
        .container_route(&target.project, &target.container, target.port)
        .await
    {
        Ok(route) => route,
        Err(_) => wake_or_refuse(state, target).await?,
    };
    proxy(state, route, req, authorized_by_header).await
}

/// The parts of a container's record the proxy needs, cached briefly.
#[derive(Clone, Copy)]
struct Record {
    public: bool,
}

/// project → container → the record and when it was read (nested so a
/// lookup needs no owned key).
type RecordCache = Mutex<HashMap<String, HashMap<String, (Record, Instant)>>>;

fn record_cache() -> &'static RecordCache {
    // One gateway per process; the cache only saves store reads, so sharing it
    // between gateways of one process (never done) would still be correct.
    static CACHE: OnceLock<RecordCache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

async fn record(state: &AppState, target: &PreviewHost) -> std::result::Result<Record, Refusal> {
    if let Some((r, at)) = record_cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&target.project)
        .and_then(|m| m.get(&target.container))
        && at.elapsed() < RECORD_TTL
    {
        return Ok(*r);
    }
    let c = match state
        .store
        .get_container(&target.project, &target.container)
        .await?
    {
        Some(c) => c,
        None => {
            return Err(Refusal::NotFound(format!(
                "container {} in project {}",
                target.container, target.project
            )));
        }
    };
    let r = Record { public: c.public };
    let mut cache = record_cache().lock().unwrap_or_else(|p| p.into_inner());
    if cache.values().map(HashMap::len).sum::<usize>() > 10_000 {
        cache.retain(|_, m| {
            m.retain(|_, (_, at)| at.elapsed() < RECORD_TTL);
            !m.is_empty()
        });
    }
    cache
        .entry(target.project.clone())
        .or_default()
        .insert(target.container.clone(), (r, Instant::now()));
    Ok(r)
}

/// The runtime has no route: wake a hibernated project (and start the
/// container asked for), or say why there is nothing to show.
async fn wake_or_refuse(
    state: &AppState,
    target: &PreviewHost,
) -> std::result::Result<ContainerRoute, Refusal> {
    let (p, c) = (target.project.as_str(), target.container.as_str());
    let project = state.project(p).await?;
    match project.status {
        ProjectStatus::Hibernated => {
            ensure_active(state, p).await?;
            {
                let _guard = state.locks.lock(p).await;
                crate::lifecycle::start_container(state, p, c).await?;
            }
            let route = state
                .runtime
                .container_route(p, c, target.port)
                .await
                .map_err(|_| Refusal::Stopped(c.to_owned()))?;
            wait_until_listening(&route).await;
            Ok(route)
        }
        ProjectStatus::Active => {
            let container = state.container(p, c).await?;
            match container.status {
                ContainerStatus::Running | ContainerStatus::Starting => {
                    // The store says running but the runtime lost it (a
                    // crashed dev server, a gateway restart in progress).
                    Err(Refusal::Stopped(c.to_owned()))
                }
                _ => Err(Refusal::Stopped(c.to_owned())),
            }
        }
        other => Err(Refusal::Internal(Error::Unavailable(format!(
            "project {p} is {}",
            other.as_str()
        )))),
    }
}

/// Waits (bounded) for a just-started dev server to accept connections, so
/// the request that woke it gets the page rather than an error.
async fn wait_until_listening(route: &ContainerRoute) {
    let deadline = Instant::now() + WAKE_DEADLINE;
    let addr = route.authority();
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `Some(by_header)` when the request may see a private preview: by the
/// preview cookie of this host, or by a bearer token granting the project
/// (product backends); `None` otherwise.
fn authorize(
    state: &AppState,
    target: &PreviewHost,
    host_name: &str,
    headers: &HeaderMap,
) -> Option<bool> {
    if let Some(token) = cookie(headers, COOKIE)
        && let Ok(claims) = state.keys.verify(token)
        && claims.allows(&target.project)
        && claims.sub == cookie_subject(host_name)
    {
        return Some(false);
    }
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let claims = state.keys.verify(token.trim()).ok()?;
    claims.allows(&target.project).then_some(true)
}

/// The subject of a preview cookie's token: it binds the token to one host.
fn cookie_subject(host_name: &str) -> String {
    format!("preview:{host_name}")
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v.trim())
        })
}

/// `GET /__preview/auth?token=`: checks the token grants the project, sets
/// this host's cookie and sends the browser to `/`.
fn auth_flow(
    state: &AppState,
    target: &PreviewHost,
    host_name: &str,
    req: &Request,
) -> std::result::Result<Response, Refusal> {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_owned());
    let token = query_token(req.uri().query())
        .or(bearer)
        .filter(|t| !t.is_empty())
        .ok_or(Refusal::Unauthorized)?;
    let claims: Claims = state
        .keys
        .verify(&token)
        .map_err(|_| Refusal::Unauthorized)?;
    if !claims.allows(&target.project) {
        return Err(Refusal::Forbidden);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let ttl = claims.exp.saturating_sub(now).min(COOKIE_TTL.as_secs());
    if ttl == 0 {
        return Err(Refusal::Unauthorized);
    }
    let minted = state
        .keys
        .sign(&cookie_subject(host_name), &[target.project.as_str()], ttl)?;
    let attrs = if secure_context(host_name, req.headers()) {
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
    h.insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(Error::internal)?,
    );
    tracing::info!(project = %target.project, container = %target.container, sub = %claims.sub, "preview cookie set");
    Ok(resp)
}

/// Whether the browser treats this origin as secure: https (as told by a
/// proxy in front), or a `localhost` name, which browsers trust on http too.
fn secure_context(host_name: &str, headers: &HeaderMap) -> bool {
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    https || host_name == "localhost" || host_name.ends_with(".localhost")
}

/// The keep-alive pool of connections to dev servers.
fn pool() -> &'static Arc<pool::Pool> {
    // A connection pool is process-wide by nature (like a resolver); one
    // gateway runs per process.
    static POOL: OnceLock<Arc<pool::Pool>> = OnceLock::new();
    POOL.get_or_init(Default::default)
}

/// Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes the preview cookie from the `Cookie` headers: the dev server
/// (user code) must never see the gateway's token.
fn strip_cookie(headers: &mut HeaderMap) {
    if !headers.get_all(header::COOKIE).iter().any(|v| {
        v.as_bytes()
            .windows(COOKIE.len())
            .any(|w| w == COOKIE.as_bytes())
    }) {
        return;
    }
    let rest: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split_once('=').map(|(k, _)| k) != Some(COOKIE))
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !rest.is_empty()
        && let Ok(v) = HeaderValue::from_str(&rest.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

/// The proxied-bytes counters (upstream, downstream), looked up once: a
/// family lookup hashes and allocates its labels, too much for every request.
fn counters(state: &AppState) -> (Counter, Counter) {
    // One gateway (one metrics registry) per process; a second one in the
    // same process would count into the first's counters, never panic.
    static COUNTERS: OnceLock<(Counter, Counter)> = OnceLock::new();
    COUNTERS
        .get_or_init(|| {
            let get = |d: &str| {
                state
                    .metrics
                    .proxied_bytes
                    .get_or_create(&DirectionLabels {
                        direction: d.to_owned(),
                    })
                    .clone()
            };
            (get("upstream"), get("downstream"))
        })
        .clone()
}

async fn proxy(
    state: &AppState,
    route: ContainerRoute,
    mut req: Request,
    authorized_by_header: bool,
) -> std::result::Result<Response, Refusal> {
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let (mut parts, body) = req.into_parts();

    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    // Upstream requests are origin-form (`/path?query`); the authority goes
    // in `Host`.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        parts.uri = parts
            .uri
            .path_and_query()
            .map(|p| Uri::from(p.clone()))
            .unwrap_or_else(|| Uri::from_static("/"));
    }
    parts.version = Version::HTTP_11;

    let h = &mut parts.headers;
    strip_hop_by_hop(h, upgrade);
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    strip_cookie(h);
    if authorized_by_header {
        h.remove(header::AUTHORIZATION);
    }
    if let Some(host) = original_host {
        h.insert("x-forwarded-host", host.clone());
        h.insert(header::HOST, host);
    }
    if !h.contains_key("x-forwarded-proto") {
        h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    if let Some(peer) = peer {
        let ip = peer.ip().to_string();
        let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
            _ => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert("x-forwarded-for", v);
        }
    }

    let (up, down) = counters(state);
    // Nothing to count in an empty body (most GETs): pass it as it is.
    let body = if upgrade || axum::body::HttpBody::is_end_stream(&body) {
        body
    } else {
        let up = up.clone();
        Body::new(body.map_frame(move |f| {
            if let Some(d) = f.data_ref() {
                up.inc_by(d.len() as u64);
            }
            f
        }))
    };
    let upstream_req = axum::http::Request::from_parts(parts, body);
    let mut resp = match pool()
        .send(&route.authority(), upstream_req, upgrade, down.clone())
        .await
    {
        Ok(r) => r,
        Err(error) => {
            tracing::debug!(%error, "dev server did not answer");
            return Err(Refusal::BadGateway);
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(Refusal::BadGateway);
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let state = state.clone();
        tokio::spawn(async move {
            let _open = crate::api::watch::WsGauge::new(&state, "preview");
            let (client_io, upstream_io) = match tokio::try_join!(client_upgrade, upstream_upgrade)
            {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::debug!(%error, "preview upgrade failed");
                    return;
                }
            };
            let mut client_io = TokioIo::new(client_io);
            let mut upstream_io = TokioIo::new(upstream_io);
            match tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io).await {
                Ok((to_upstream, to_client)) => {
                    up.inc_by(to_upstream);
                    down.inc_by(to_client);
                }
                Err(error) => tracing::debug!(%error, "preview upgraded connection ended"),
            }
        });
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(parts, Body::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn cookie_lookup_and_strip() {
        let mut h = headers(&[
            ("cookie", "a=1; devgate_preview=tok; b=2"),
            ("cookie", "c=3"),
        ]);
        assert_eq!(cookie(&h, COOKIE), Some("tok"));
        assert_eq!(cookie(&h, "c"), Some("3"));
        strip_cookie(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h.get(header::COOKIE).unwrap(), "a=1; b=2; c=3");
        let mut only = headers(&[("cookie", "devgate_preview=tok")]);
        strip_cookie(&mut only);
        assert!(only.get(header::COOKIE).is_none());
        let mut other = headers(&[("cookie", "x=devgate_preview")]);
        strip_cookie(&mut other);
        assert_eq!(other.get(header::COOKIE).unwrap(), "x=devgate_preview");
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-custom"),
            ("x-custom", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        assert!(!is_upgrade(&h));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));

        let mut ws = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(is_upgrade(&ws));
        strip_hop_by_hop(&mut ws, true);
        assert!(ws.contains_key(header::UPGRADE) && ws.contains_key("sec-websocket-key"));
    }

    #[test]
    fn secure_contexts() {
        assert!(secure_context("web.demo.localhost", &HeaderMap::new()));
        assert!(!secure_context("web.demo.example.com", &HeaderMap::new()));
        assert!(secure_context(
            "web.demo.example.com",
            &headers(&[("x-forwarded-proto", "https")])
        ));
    }
}
