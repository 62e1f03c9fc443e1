//! The preview proxy: requests whose `Host` names a container of a project
//! (see [`host`]) go to that dev server, on hyper with a keep-alive pool,
//! bodies streamed both ways, WebSocket upgrades passed through (Vite and
//! Next.js HMR).
//!
//! What reaches the dev server is only what it should see: a request goes to
//! the container's declared port or one of its declared `ports` and nowhere
//! else (never the gateway itself, and a `Via` loop guard stops a request
//! that came back round); the gateway's credentials (its tokens in
//! `Authorization`, its preview cookie) are removed; `X-Forwarded-*` are set
//! by the gateway, believed from the client only when it is a trusted proxy.
//! Private previews need a preview cookie (see [`access`]). A stopped
//! container answers 503, an unknown one or an undeclared port 404, and a
//! hibernated project is woken (restored, the container started) when the
//! request may wake it: a user's always, a public or share-link request at
//! most once per `--public-wake-interval` per project.

pub mod access;
pub mod host;
mod pool;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::metrics::{DirectionLabels, Metrics};
use crate::runtime::ContainerRoute;
use crate::state::AppState;
use crate::store::{ContainerStatus, ProjectStatus};
use access::Access;
pub use access::{AUTH_PATH, COOKIE};
use host::PreviewHost;

/// How long a container's store record (exists, public, ports) is reused
/// between requests. Routing itself is asked of the runtime on every
/// request, so a stopped container is noticed at once; this only saves a
/// store read.
const RECORD_TTL: Duration = Duration::from_secs(1);

/// How long a woken container may take to accept connections.
const WAKE_DEADLINE: Duration = Duration::from_secs(60);

/// The pseudonym this gateway adds to `Via` (RFC 9110 section 7.6.3) on
/// requests it sends to dev servers; a request that arrives already
/// carrying it went round in a loop and is refused.
const VIA_NAME: &str = "devgate";

/// What the proxy keeps between requests: the dev-server connection pool,
/// container records, the last wake by a request without credentials per
/// project, share links in use, and the byte counters.
pub struct PreviewState {
    pool: Arc<pool::Pool>,
    records: RecordCache,
    public_wakes: Mutex<HashMap<String, Instant>>,
    /// Share links in use on this replica (see [`access::Shares`]).
    pub shares: access::Shares,
    up: Counter,
    down: Counter,
}

impl PreviewState {
    pub fn new(metrics: &Metrics) -> PreviewState {
        let counter = |d: &str| {
            metrics
                .proxied_bytes
                .get_or_create(&DirectionLabels {
                    direction: d.to_owned(),
                })
                .clone()
        };
        PreviewState {
            pool: Arc::default(),
            records: RecordCache::default(),
            public_wakes: Mutex::default(),
            shares: access::Shares::default(),
            up: counter("upstream"),
            down: counter("downstream"),
        }
    }

    /// Forgets what is kept about a deleted project.
    pub fn forget(&self, project: &str) {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(project);
        self.public_wakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(project);
    }

    /// Takes the project's one wake by a request without credentials for
    /// this interval: `Err(seconds to wait)` when it was taken already.
    fn take_public_wake(&self, project: &str, interval: Duration) -> std::result::Result<(), u64> {
        let mut wakes = self.public_wakes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = wakes.get(project)
            && at.elapsed() < interval
        {
            return Err((interval - at.elapsed()).as_secs().max(1));
        }
        if wakes.len() > 10_000 {
            wakes.retain(|_, at| at.elapsed() < interval);
        }
        wakes.insert(project.to_owned(), Instant::now());
        Ok(())
    }
}

/// `{scheme}://{preview host}[:port]` of a preview, as browsers reach it
/// (`--preview-scheme`, `--preview-port` or the listening port).
pub fn origin(state: &AppState, target: &PreviewHost) -> String {
    let cfg = &state.config;
    let port = cfg
        .preview_port
        .unwrap_or_else(|| state.listen_port.load(std::sync::atomic::Ordering::Relaxed));
    let default_port = if cfg.preview_scheme == "https" {
        443
    } else {
        80
    };
    let port = if port == default_port || port == 0 {
        String::new()
    } else {
        format!(":{port}")
    };
    format!(
        "{}://{}{port}",
        cfg.preview_scheme,
        target.to_host(&cfg.preview_domain, cfg.preview_host_style)
    )
}

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
            .and_then(|h| {
                host::parse(
                    h,
                    &state.config.preview_domain,
                    state.config.preview_host_style,
                )
            });
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
    let html = prefers_html(req.headers());
    match tracing::Instrument::instrument(serve(state, &target, req), span).await {
        Ok(resp) => resp,
        Err(refusal) => refusal.answer(html),
    }
}

/// Whether the client reads HTML (a browser navigating), from `Accept`.
fn prefers_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"))
}

/// What a preview request can end in besides a proxied answer: a short HTML
/// page for a person in a browser, else the contract's JSON error.
pub enum Refusal {
    NotFound(String),
    Unauthorized,
    Forbidden,
    Stopped(String),
    /// A hibernated project this request may not wake.
    Hibernated,
    /// Woken by a request without credentials too recently.
    WakeLimited(u64),
    /// The request came back round through this gateway.
    Loop,
    BadGateway,
    Internal(Error),
}

impl Refusal {
    fn answer(self, html: bool) -> Response {
        let retry = match &self {
            Refusal::WakeLimited(secs) => Some(*secs),
            Refusal::Stopped(_) | Refusal::Hibernated => Some(5),
            _ => None,
        };
        let (status, code, title, text) = match self {
            Refusal::NotFound(what) => (
                StatusCode::NOT_FOUND,
                "not_found",
                "Preview not found",
                format!("There is no {what}."),
            ),
            Refusal::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Sign-in needed",
                "This preview is private. Open it from its project (a preview link) or a share link."
                    .to_owned(),
            ),
            Refusal::Forbidden => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "Not allowed",
                "Your credentials do not grant this preview.".to_owned(),
            ),
            Refusal::Stopped(name) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Dev server stopped",
                format!("The container {name} is not running. Start it, then reload this page."),
            ),
            Refusal::Hibernated => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Project asleep",
                "This project is hibernated. Its owner can open it again.".to_owned(),
            ),
            Refusal::WakeLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "Project asleep",
                "This project was woken a moment ago and went back to sleep; try again later."
                    .to_owned(),
            ),
            Refusal::Loop => (
                StatusCode::LOOP_DETECTED,
                "loop_detected",
                "Loop detected",
                "This request already passed through this gateway.".to_owned(),
            ),
            Refusal::BadGateway => (
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "Dev server not answering",
                "The container is running but its dev server does not answer on its port yet."
                    .to_owned(),
            ),
            Refusal::Internal(error) => {
                let (status, code) = error.status_and_code();
                if status.is_server_error() {
                    tracing::warn!(%error, "preview failed");
                }
                let text = if status.is_server_error() {
                    "Something went wrong; see the gateway's log.".to_owned()
                } else {
                    error.to_string()
                };
                (status, code, "Preview unavailable", text)
            }
        };
        let mut resp = if html {
            let body = format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
                 <body style=\"font-family:system-ui,sans-serif;margin:3em\"><h1>{title}</h1><p>{}</p></body></html>\n",
                escape(&text)
            );
            (
                status,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                body,
            )
                .into_response()
        } else {
            let body = serde_json::json!({"error": {"code": code, "message": text}});
            (status, axum::Json(body)).into_response()
        };
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = retry
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
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

/// Whether `headers` carry this gateway's pseudonym in `Via`.
fn looped(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|hop| hop.split_whitespace().nth(1) == Some(VIA_NAME))
}

/// Whether the peer is a configured trusted proxy.
fn trusted(state: &AppState, peer: Option<SocketAddr>) -> bool {
    peer.is_some_and(|p| {
        state
            .config
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&p.ip()))
    })
}

async fn serve(
    state: &AppState,
    target: &PreviewHost,
    req: Request,
) -> std::result::Result<Response, Refusal> {
    if looped(req.headers()) {
        state.metrics.refuse("preview_loop");
        return Err(Refusal::Loop);
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let trusted_peer = trusted(state, peer);
    let host_name = target.to_host(
        &state.config.preview_domain,
        state.config.preview_host_style,
    );
    let record = record(state, target).await?;
    if req.uri().path() == AUTH_PATH {
        let (headers, query) = (req.headers(), req.uri().query());
        return access::auth_flow(state, target, &host_name, headers, query, trusted_peer).await;
    }
    // Only a port the container declared: its main one, or one of `ports`.
    let port = match target.port {
        None => None,
        Some(p) if p == record.port => None,
        Some(p) if record.ports.contains(&p) => Some(p),
        Some(p) => {
            return Err(Refusal::NotFound(format!(
                "port {p} declared by container {} in project {}",
                target.container, target.project
            )));
        }
    };
    let access = access::check(state, target, &host_name, req.headers()).await;
    if !record.public && access == Access::Anonymous {
        return Err(Refusal::Unauthorized);
    }
    // Only an allowed request to a known container is activity: a stranger
    // spraying made-up hosts must neither grow the tracker nor reach the
    // API server.
    crate::idle::touch(state, &target.project);
    let route = match state
        .runtime
        .container_route(&target.project, &target.container, port)
        .await
    {
        Ok(route) => route,
        // A port this container may not use (another project's).
        Err(Error::NotFound(why)) => return Err(Refusal::NotFound(why)),
        Err(_) => wake_or_refuse(state, target, port, &access).await?,
    };
    if is_own_address(state, &route) {
        return Err(Refusal::NotFound(format!(
            "port {} declared by container {}",
            route.port, target.container
        )));
    }
    let share = match &access {
        Access::Share { id, .. } => Some(state.preview.shares.track(id)),
        _ => None,
    };
    proxy(state, route, req, trusted_peer, share).await
}

/// Whether `route` would dial this gateway's own listener.
fn is_own_address(state: &AppState, route: &ContainerRoute) -> bool {
    let own_port = state.listen_port.load(std::sync::atomic::Ordering::Relaxed);
    if route.port != own_port {
        return false;
    }
    let listen = state.config.listen.ip();
    match route.host.parse::<IpAddr>() {
        Ok(ip) => {
            ip.is_loopback() || ip.is_unspecified() || ip == listen || listen.is_unspecified()
        }
        Err(_) => route.host.eq_ignore_ascii_case("localhost"),
    }
}

/// The parts of a container's record the proxy needs, cached briefly.
#[derive(Clone)]
struct Record {
    public: bool,
    port: u16,
    ports: Vec<u16>,
}

/// project → container → the record and when it was read (nested so a
/// lookup needs no owned key).
type RecordCache = Mutex<HashMap<String, HashMap<String, (Record, Instant)>>>;

async fn record(state: &AppState, target: &PreviewHost) -> std::result::Result<Record, Refusal> {
    let records = &state.preview.records;
    if let Some((r, at)) = records
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&target.project)
        .and_then(|m| m.get(&target.container))
        && at.elapsed() < RECORD_TTL
    {
        return Ok(r.clone());
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
    let r = Record {
        public: c.public,
        port: c.port,
        ports: c.ports,
    };
    let mut cache = records.lock().unwrap_or_else(|p| p.into_inner());
    if cache.values().map(HashMap::len).sum::<usize>() > 10_000 {
        cache.retain(|_, m| {
            m.retain(|_, (_, at)| at.elapsed() < RECORD_TTL);
            !m.is_empty()
        });
    }
    cache
        .entry(target.project.clone())
        .or_default()
        .insert(target.container.clone(), (r.clone(), Instant::now()));
    Ok(r)
}

/// The runtime has no route: wake a hibernated project (and start the
/// container asked for) when this request may, or say why there is nothing
/// to show.
async fn wake_or_refuse(
    state: &AppState,
    target: &PreviewHost,
    port: Option<u16>,
    access: &Access,
) -> std::result::Result<ContainerRoute, Refusal> {
    let (p, c) = (target.project.as_str(), target.container.as_str());
    let project = state.project(p).await?;
    match project.status {
        ProjectStatus::Hibernated => {
            match access {
                Access::User { .. } => {}
                Access::Share { wake: false, .. } => return Err(Refusal::Hibernated),
                // A public preview or a share link made to wake: strangers
                // may wake a project, but not keep it from sleeping.
                Access::Share { wake: true, .. } | Access::Anonymous => {
                    if let Err(secs) = state
                        .preview
                        .take_public_wake(p, state.config.public_wake_interval)
                    {
                        state.metrics.refuse("public_wake");
                        return Err(Refusal::WakeLimited(secs));
                    }
                }
            }
            ensure_active(state, p).await?;
            {
                let _guard = state.locks.lock(p).await;
                crate::lifecycle::start_container(state, p, c).await?;
            }
            let route = state
                .runtime
                .container_route(p, c, port)
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
/// (user code) must never see the gateway's credentials.
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

/// Sets the headers that say where the request came from. From a trusted
/// proxy, what it says is kept and extended; from anyone else, the client's
/// own `X-Forwarded-*`, `Forwarded` and `X-Real-IP` are replaced by what the
/// gateway saw, so a dev server cannot be lied to about the client's address
/// or scheme.
fn set_forwarded(
    h: &mut HeaderMap,
    host: Option<HeaderValue>,
    peer: Option<SocketAddr>,
    trusted_peer: bool,
) {
    if !trusted_peer {
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-port",
            "x-real-ip",
            "forwarded",
        ] {
            h.remove(name);
        }
    }
    if let Some(host) = host {
        if !h.contains_key("x-forwarded-host") {
            h.insert("x-forwarded-host", host.clone());
        }
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
    let via = match h.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => format!("{prev}, 1.1 {VIA_NAME}"),
        _ => format!("1.1 {VIA_NAME}"),
    };
    if let Ok(v) = HeaderValue::from_str(&via) {
        h.insert(header::VIA, v);
    }
}

async fn proxy(
    state: &AppState,
    route: ContainerRoute,
    mut req: Request,
    trusted_peer: bool,
    share: Option<CancellationToken>,
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
    // A token of this gateway never reaches user code, whoever sent it;
    // any other `Authorization` (the app's own) passes.
    if access::bearer(h).is_some_and(|t| state.keys.is_ours(t)) {
        h.remove(header::AUTHORIZATION);
    }
    set_forwarded(h, original_host, peer, trusted_peer);

    let (up, down) = (state.preview.up.clone(), state.preview.down.clone());
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
    let mut resp = match state
        .preview
        .pool
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
            // A connection opened through a share link ends when the link is
            // revoked or expires; the others when either side closes.
            let revoked = async {
                match &share {
                    Some(token) => token.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io) => match copied {
                    Ok((to_upstream, to_client)) => {
                        up.inc_by(to_upstream);
                        down.inc_by(to_client);
                    }
                    Err(error) => tracing::debug!(%error, "preview upgraded connection ended"),
                },
                _ = revoked => tracing::debug!("share link revoked: upgraded connection closed"),
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
    fn preview_cookie_is_stripped() {
        let mut h = headers(&[
            ("cookie", "a=1; devgate_preview=tok; b=2"),
            ("cookie", "c=3"),
        ]);
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
    fn forwarded_headers_from_strangers_are_replaced() {
        let peer: SocketAddr = "192.0.2.5:40000".parse().unwrap();
        let host = HeaderValue::from_static("web.demo.localhost:8080");
        let sent = [
            ("x-forwarded-for", "10.9.9.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-real-ip", "10.9.9.9"),
            ("forwarded", "for=10.9.9.9;proto=https"),
            ("via", "1.1 corp-proxy"),
        ];
        let mut h = headers(&sent);
        set_forwarded(&mut h, Some(host.clone()), Some(peer), false);
        assert_eq!(h["x-forwarded-for"], "192.0.2.5");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "web.demo.localhost:8080");
        assert!(!h.contains_key("x-real-ip") && !h.contains_key("forwarded"));
        assert_eq!(h["via"], "1.1 corp-proxy, 1.1 devgate");
        // A trusted proxy's word is kept and extended.
        let mut h = headers(&sent);
        set_forwarded(&mut h, Some(host), Some(peer), true);
        assert_eq!(h["x-forwarded-for"], "10.9.9.9, 192.0.2.5");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "evil.example");
    }

    #[test]
    fn loops_are_seen_in_via() {
        assert!(looped(&headers(&[("via", "1.1 devgate")])));
        assert!(looped(&headers(&[("via", "1.0 corp, 1.1 devgate (x)")])));
        assert!(!looped(&headers(&[("via", "1.1 devgate-like")])));
        assert!(!looped(&headers(&[("via", "1.1 corp")])));
        assert!(!looped(&HeaderMap::new()));
    }

    #[test]
    fn accept_decides_the_error_format() {
        assert!(prefers_html(&headers(&[(
            "accept",
            "text/html,application/xhtml+xml"
        )])));
        assert!(!prefers_html(&headers(&[("accept", "application/json")])));
        assert!(!prefers_html(&HeaderMap::new()));
    }
}
