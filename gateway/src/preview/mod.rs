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
//! container answers 503, an unknown one or an undeclared port 404, a dev
//! server that sends no answer within `--preview-answer-timeout` 504, and a
//! hibernated project is woken (restored, the container started) when the
//! request may wake it: a user's always, a public or share-link request at
//! most once per `--public-wake-interval` per project.

pub mod access;
mod fast;
pub mod host;
mod proxy;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::Error;
pub use crate::preview_state::PreviewState;
use crate::preview_state::Record;
use crate::runtime::ContainerRoute;
use crate::state::AppState;
use crate::store::{ContainerStatus, ProjectStatus};
use access::Access;
pub use access::{AUTH_PATH, COOKIE};
pub use fast::fast;
use host::PreviewHost;

/// How long a container's store record (exists, public, ports) is reused
/// between requests. Routing itself is asked of the runtime on every
/// request, so a stopped container is noticed at once; this only saves a
/// store read.
const RECORD_TTL: Duration = Duration::from_secs(1);

/// How long a woken container may take to accept connections.
const WAKE_DEADLINE: Duration = Duration::from_secs(60);

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

/// The preview dispatch that the listener runs in front of the API's
/// router: a request whose `Host` names a preview host is taken and sent
/// straight to the proxy, before the router and its middleware (tracing
/// span, metrics, JSON errors), which it never needs and which cost a
/// proxied request more than the proxying itself; every other request is
/// given back, unchanged, for the router. The listener has checked the
/// request's `Host` headers (at most one) and set its `ConnectInfo`.
// The request is given back by value (a `Request` is a few hundred bytes
// of head): boxing it would cost every API request an allocation.
#[allow(clippy::type_complexity, clippy::result_large_err)]
pub fn front(
    state: AppState,
) -> impl Fn(
    Request,
) -> Result<
    std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, std::convert::Infallible>> + Send>,
    >,
    Request,
> + Send
+ Sync
+ 'static {
    // One reference count per request rather than a clone of every handle
    // the state holds: this runs for every request the gateway serves.
    let state = Arc::new(state);
    move |req: Request| {
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
        match target {
            Some(target) => {
                let state = state.clone();
                Ok(Box::pin(
                    async move { Ok(handle(&state, target, req).await) },
                ))
            }
            None => Err(req),
        }
    }
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
    /// The dev server sent no answer within `--preview-answer-timeout`.
    Timeout(Duration),
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
            Refusal::Timeout(limit) => (
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "Dev server not answering",
                format!(
                    "The dev server took the request but sent no answer within {}. \
                     Its log may say why.",
                    humantime::format_duration(limit)
                ),
            ),
            Refusal::Internal(error) => {
                let (status, code) = error.status_and_code();
                if status.is_server_error() {
                    tracing::warn!(error = %crate::error::Chain(&error), "preview failed");
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

/// How many times a request may have passed through a devgate gateway
/// already: a dev server may proxy to another preview (Vite's
/// `server.proxy`), but a request going round and round is a loop.
const MAX_HOPS: usize = 3;

/// Whether `headers` show the request went through a devgate gateway
/// [`MAX_HOPS`] times already (`Via` pseudonyms).
fn looped(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter(|hop| hop.split_whitespace().nth(1) == Some(proxy::VIA_NAME))
        .count()
        >= MAX_HOPS
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
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let trusted_peer = trusted(state, peer);
    if req.uri().path() == AUTH_PATH {
        refuse_loops(state, req.headers())?;
        record(state, target).await?;
        let host_name = target.to_host(
            &state.config.preview_domain,
            state.config.preview_host_style,
        );
        let (headers, query) = (req.headers(), req.uri().query());
        return access::auth_flow(state, target, &host_name, headers, query, trusted_peer).await;
    }
    refuse_loops(state, req.headers())?;
    let admitted = admit(state, target, req.headers()).await?;
    let route = match live_route(state, target, admitted.port).await? {
        Some(route) => route,
        None => {
            let route = wake_or_refuse(state, target, admitted.port, &admitted.access).await?;
            not_own(state, target, route)?
        }
    };
    let share = match admitted.access {
        Access::Share { id, .. } => Some(id),
        _ => None,
    };
    proxy::proxy(state, route, req, trusted_peer, share).await
}

/// 508 for a request that came back round through this gateway.
fn refuse_loops(state: &AppState, headers: &HeaderMap) -> std::result::Result<(), Refusal> {
    if looped(headers) {
        state.metrics.refuse("preview_loop");
        return Err(Refusal::Loop);
    }
    Ok(())
}

/// What a request for a preview host may reach.
struct Admitted {
    /// A port of `ports` asked for by the `{port}-` form; `None` for the
    /// container's main port.
    port: Option<u16>,
    access: Access,
}

/// The checks every proxied request passes before a dev server is asked,
/// on both paths (the proxy's and the fast path's): the container exists,
/// the port asked for is one it declared, and the credentials allow it. A
/// request of the project's users keeps the project awake.
async fn admit(
    state: &AppState,
    target: &PreviewHost,
    headers: &HeaderMap,
) -> std::result::Result<Admitted, Refusal> {
    let record = record(state, target).await?;
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
    let host_name = target.to_host(
        &state.config.preview_domain,
        state.config.preview_host_style,
    );
    let access = access::check(state, target, &host_name, headers).await;
    if !record.public && access == Access::Anonymous {
        return Err(Refusal::Unauthorized);
    }
    // Only the project's users keep it awake: strangers (public previews,
    // share links) may wake a project, but not keep it from sleeping; and
    // made-up hosts never reach the tracker.
    if access.is_user() {
        state.touch(&target.project);
    }
    Ok(Admitted { port, access })
}

/// The dev server's address now (never this gateway's own), or `None` when
/// the container has no route (stopped, its project hibernated): whether to
/// wake it is the caller's choice.
async fn live_route(
    state: &AppState,
    target: &PreviewHost,
    port: Option<u16>,
) -> std::result::Result<Option<ContainerRoute>, Refusal> {
    match state
        .runtime
        .container_route(&target.project, &target.container, port)
        .await
    {
        Ok(route) => not_own(state, target, route).map(Some),
        // A port this container may not use (another project's).
        Err(Error::NotFound(why)) => Err(Refusal::NotFound(why)),
        Err(_) => Ok(None),
    }
}

/// `route`, unless it would dial this gateway's own listener.
fn not_own(
    state: &AppState,
    target: &PreviewHost,
    route: ContainerRoute,
) -> std::result::Result<ContainerRoute, Refusal> {
    if is_own_address(state, &route) {
        return Err(Refusal::NotFound(format!(
            "port {} declared by container {}",
            route.port, target.container
        )));
    }
    Ok(route)
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

async fn record(state: &AppState, target: &PreviewHost) -> std::result::Result<Record, Refusal> {
    let records = &state.preview.records;
    let missing = || {
        Refusal::NotFound(format!(
            "container {} in project {}",
            target.container, target.project
        ))
    };
    if let Some((r, at)) = records
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&target.project)
        .and_then(|m| m.get(&target.container))
        && at.elapsed() < RECORD_TTL
    {
        return r.clone().ok_or_else(missing);
    }
    let r = state
        .store
        .get_container(&target.project, &target.container)
        .await?
        .map(|c| Record {
            public: c.public,
            port: c.port,
            ports: c.ports,
        });
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
    r.ok_or_else(missing)
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
            crate::lifecycle::ensure_active(state, p).await?;
            crate::lifecycle::containers::start(state, p, c).await?;
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
    fn loops_are_seen_in_via() {
        let thrice = "1.1 devgate, 1.0 corp, 1.1 devgate (x), 1.1 devgate";
        assert!(looped(&headers(&[("via", thrice)])));
        assert!(looped(&headers(&[
            ("via", "1.1 devgate"),
            ("via", "1.1 devgate, 1.1 devgate")
        ])));
        assert!(!looped(&headers(&[("via", "1.1 devgate, 1.1 devgate")])));
        assert!(!looped(&headers(&[(
            "via",
            "1.1 devgate-like, 1.1 devgate-like, 1.1 devgate-like"
        )])));
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
