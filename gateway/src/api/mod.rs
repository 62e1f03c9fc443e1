//! The HTTP surface: the REST routes of the contract, the realtime routes
//! (terminal and watch WebSockets, in their own modules), operations
//! endpoints, the demo page, and the middleware stack (tracing with tokens
//! redacted, per-route metrics, preview-host dispatch ahead of everything).

pub mod containers;
pub mod events;
pub mod exec;
pub mod files;
pub mod objects;
pub mod previews;
pub mod projects;
pub mod terminal;
pub mod watch;
pub mod ws;

use std::time::Instant;

use axum::Router;
use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::auth::Claims;
use crate::error::{Error, Result};
use crate::metrics::{RequestLabels, RouteLabels};
use crate::state::AppState;

/// The whole application: every route and middleware, with state.
pub fn router(state: AppState) -> Router {
    let mut app = Router::new()
        .merge(projects::routes())
        .merge(files::routes())
        .merge(containers::routes())
        .merge(previews::routes())
        .merge(exec::routes())
        .merge(events::routes())
        .merge(terminal::routes())
        .merge(watch::routes())
        .merge(objects::routes())
        .route("/api/templates", get(templates))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest_service(
            "/templates",
            tower_http::services::ServeDir::new(state.config.data_dir.join("templates")),
        );
    app = match state.config.web_dir() {
        Some(dir) => app.fallback_service(
            tower_http::services::ServeDir::new(&dir)
                .append_index_html_on_directories(true)
                .fallback(tower::service_fn(|_req: Request| async {
                    Ok::<_, std::convert::Infallible>(
                        Error::NotFound("no such route".into()).into_response(),
                    )
                })),
        ),
        None => app.fallback(|| async { Error::NotFound("no such route".into()) }),
    };
    app.layer(axum::middleware::from_fn_with_state(state.clone(), edge))
        .with_state(state)
}

/// What every API request goes through, in one layer (each `from_fn` layer
/// costs a boxed future and a state clone per request): one span with the
/// URI's `token` redacted, the contract's JSON body on every error answer,
/// and the per-route metrics (by matched route, never the raw path).
async fn edge(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        uri = %crate::auth::redact_uri(req.uri()),
        project = tracing::field::Empty,
        container = tracing::field::Empty,
    );
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_owned();
    let t0 = Instant::now();
    let resp = tracing::Instrument::instrument(
        async move { json_errors(next.run(req).await).await },
        span.clone(),
    )
    .await;
    let elapsed = t0.elapsed();
    let m = &state.metrics;
    if let Some(f) = resp.extensions().get::<crate::error::FailedUpstream>() {
        m.agent_rpc_errors
            .get_or_create(&crate::metrics::RpcLabels {
                op: route.clone(),
                code: f.0.to_owned(),
            })
            .inc();
    }
    let status = resp.status().as_u16();
    m.request_seconds
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(elapsed.as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status,
        })
        .inc();
    let _e = span.enter();
    if status >= 500 {
        tracing::warn!(status, ms = elapsed.as_millis() as u64, "request failed");
    } else {
        tracing::debug!(status, ms = elapsed.as_millis() as u64, "request");
    }
    resp
}

/// Every error answer has the contract's JSON body, including axum's own
/// (405, extractor rejections such as a bad query string), which are plain text.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let code = crate::error::code_for_status(status);
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let mut out = (
        status,
        axum::Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response();
    // Keep headers like Allow and Content-Range.
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

/// Checks a project id and that the token grants it: 400, then 403.
pub fn authorize(claims: &Claims, project: &str) -> Result<()> {
    crate::ids::project_id(project)?;
    tracing::Span::current().record("project", project);
    claims.require(project)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store.ping().await;
    let runtime = state.runtime.ready().await;
    match (store, runtime) {
        (Ok(()), Ok(())) => "ready\n".into_response(),
        (s, r) => {
            if let Err(error) = &s {
                tracing::warn!(error = %crate::error::Chain(error), "state store not ready");
            }
            if let Err(error) = &r {
                tracing::warn!(error = %crate::error::Chain(error), "runtime not ready");
            }
            let body = serde_json::json!({"error": {"code": "unavailable", "message": format!(
                "state store: {}, runtime: {}",
                if s.is_ok() { "ok" } else { "unreachable" },
                if r.is_ok() { "ok" } else { "unreachable" },
            )}});
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let mut resp = state.metrics.encode().into_response();
    // The body is OpenMetrics text, which the classic Prometheus text parser
    // also reads (`# EOF` is a comment to it); say so to scrapers that ask.
    let wants_om = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let ct = if wants_om {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    resp
}

async fn templates(_claims: Claims, State(state): State<AppState>) -> Response {
    // Agents reach the gateway on its listening address (loopback in local mode).
    let ip = match state.config.listen.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let port = state.listen_port.load(std::sync::atomic::Ordering::Relaxed);
    let base = match &state.config.templates_base_url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => format!("http://{ip}:{port}"),
    };
    let list: Vec<serde_json::Value> = state
        .templates
        .iter()
        .map(|(name, _)| serde_json::json!({"name": name, "git": format!("{base}/templates/{name}.git")}))
        .collect();
    axum::Json(list).into_response()
}

/// A JSON request body, whatever its `Content-Type`. Parsing never rejects
/// the request by itself: the handler checks the token's grants first and only
/// then takes the parse result (`body?`), so 403 wins over 400.
pub struct JsonBody<T>(pub Result<T>);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        Ok(JsonBody(parse_json(req, state).await))
    }
}

async fn parse_json<T: serde::de::DeserializeOwned, S: Send + Sync>(
    req: Request,
    state: &S,
) -> Result<T> {
    {
        let bytes = bytes::Bytes::from_request(req, state)
            .await
            .map_err(|e| match e {
                axum::extract::rejection::BytesRejection::FailedToBufferBody(_) => {
                    Error::PayloadTooLarge(JSON_LIMIT as u64)
                }
                other => Error::BadRequest(other.body_text()),
            })?;
        if bytes.is_empty() {
            return Err(Error::BadRequest("expected a JSON body".into()));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::BadRequest(format!("invalid JSON body: {e}")))
    }
}

/// Largest JSON body (axum's default body limit).
const JSON_LIMIT: usize = 2 << 20;
