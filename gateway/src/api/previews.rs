//! Ways into a private preview that are not the user's token: one-time
//! preview links (`POST .../preview-link`) and share links for people
//! without an account (`.../shares`). Both answer a URL on the preview host
//! whose `/__preview/auth` turns it into a cookie (see `preview::access`);
//! neither URL holds a bearer token, and the store keeps only digests of the
//! secrets in them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{JsonBody, authorize};
use crate::auth::Claims;
use crate::error::{Error, Result};
use crate::ids;
use crate::preview::access::{AUTH_PATH, digest, new_secret};
use crate::preview::host::PreviewHost;
use crate::state::AppState;
use crate::store::{PreviewCode, Share};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/projects/{p}/containers/{c}/preview-link",
            post(preview_link),
        )
        .route(
            "/api/projects/{p}/containers/{c}/shares",
            post(create_share).get(list_shares),
        )
        .route(
            "/api/projects/{p}/containers/{c}/shares/{id}",
            delete(delete_share),
        )
}

/// How long a one-time preview code is valid.
const CODE_TTL_SECS: i64 = 60;

/// Bounds of a share link's lifetime.
const MIN_SHARE_SECS: u64 = 5;
const MAX_SHARE_SECS: u64 = 30 * 24 * 3600;

/// Share links a container may have at once.
const MAX_SHARES: usize = 100;

/// Longest share label.
const MAX_LABEL: usize = 200;

/// `{scheme}://{host}[:port]/__preview/auth?{query}` for a container.
fn auth_url(state: &AppState, project: &str, container: &str, query: &str) -> String {
    let target = PreviewHost {
        project: project.to_owned(),
        container: container.to_owned(),
        port: None,
    };
    format!(
        "{}{AUTH_PATH}?{query}",
        crate::preview::origin(state, &target)
    )
}

/// 400 for bad ids, 403 without the grant, 404 for an unknown container.
async fn container_of(state: &AppState, claims: &Claims, p: &str, c: &str) -> Result<()> {
    authorize(claims, p)?;
    ids::container_name(c)?;
    state.container(p, c).await?;
    Ok(())
}

/// `POST .../preview-link`: a URL that lets one browser into the preview,
/// once, within 60 s, without the user's token in it.
async fn preview_link(
    claims: Claims,
    State(state): State<AppState>,
    Path((p, c)): Path<(String, String)>,
) -> Result<Json<Value>> {
    container_of(&state, &claims, &p, &c).await?;
    let code = new_secret();
    let expires_at = Utc::now() + chrono::Duration::seconds(CODE_TTL_SECS);
    state
        .store
        .add_preview_code(&PreviewCode {
            code_sha256: digest(&code),
            project: p.clone(),
            container: c.clone(),
            sub: claims.sub.clone(),
            expires_at,
            token_exp: claims.exp,
        })
        .await?;
    Ok(Json(json!({
        "url": auth_url(&state, &p, &c, &format!("code={code}")),
        "expires_at": expires_at,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShareBody {
    expires_in_s: u64,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    wake: bool,
}

fn share_json(s: &Share) -> Value {
    json!({
        "id": s.id,
        "label": s.label,
        "created_by": s.created_by,
        "created_at": s.created_at,
        "expires_at": s.expires_at,
        "wake": s.wake,
    })
}

/// `POST .../shares`: a link for people without an account, until it
/// expires or is revoked. The URL is answered once: only its digest is kept.
async fn create_share(
    claims: Claims,
    State(state): State<AppState>,
    Path((p, c)): Path<(String, String)>,
    JsonBody(body): JsonBody<ShareBody>,
) -> Result<Response> {
    container_of(&state, &claims, &p, &c).await?;
    let body = body?;
    if !(MIN_SHARE_SECS..=MAX_SHARE_SECS).contains(&body.expires_in_s) {
        return Err(Error::BadRequest(format!(
            "expires_in_s must be {MIN_SHARE_SECS}..{MAX_SHARE_SECS}"
        )));
    }
    if let Some(label) = &body.label
        && (label.len() > MAX_LABEL || label.chars().any(char::is_control))
    {
        return Err(Error::BadRequest(format!(
            "label must be at most {MAX_LABEL} bytes with no control characters"
        )));
    }
    let now = Utc::now();
    if state.store.list_shares(&p, &c, now).await?.len() >= MAX_SHARES {
        return Err(Error::Conflict(format!(
            "container {c} has {MAX_SHARES} share links; revoke one first"
        )));
    }
    let secret = new_secret();
    let share = Share {
        id: hex::encode(rand::random::<[u8; 8]>()),
        project: p.clone(),
        container: c.clone(),
        label: body.label,
        secret_sha256: digest(&secret),
        created_by: claims.sub.clone(),
        created_at: now,
        expires_at: expiry(now, body.expires_in_s),
        wake: body.wake,
    };
    state.store.create_share(&share).await?;
    tracing::info!(project = %p, container = %c, share = %share.id, sub = %claims.sub, "share link made");
    let mut v = share_json(&share);
    v["url"] = json!(auth_url(
        &state,
        &p,
        &c,
        &format!("share={}.{secret}", share.id)
    ));
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

fn expiry(now: DateTime<Utc>, secs: u64) -> DateTime<Utc> {
    now + chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000))
}

/// `GET .../shares`: the container's links that have not expired (without
/// their URLs, which only their creator got).
async fn list_shares(
    claims: Claims,
    State(state): State<AppState>,
    Path((p, c)): Path<(String, String)>,
) -> Result<Json<Vec<Value>>> {
    container_of(&state, &claims, &p, &c).await?;
    let shares = state.store.list_shares(&p, &c, Utc::now()).await?;
    Ok(Json(shares.iter().map(share_json).collect()))
}

/// `DELETE .../shares/{id}`: revokes a link at once; its open connections
/// close now on this replica and within seconds on the others.
async fn delete_share(
    claims: Claims,
    State(state): State<AppState>,
    Path((p, c, id)): Path<(String, String, String)>,
) -> Result<StatusCode> {
    container_of(&state, &claims, &p, &c).await?;
    if !state.store.delete_share(&p, &c, &id).await? {
        return Err(Error::NotFound(format!("share {id} not found")));
    }
    state.preview.shares.revoke(&id);
    tracing::info!(project = %p, container = %c, share = %id, sub = %claims.sub, "share link revoked");
    Ok(StatusCode::NO_CONTENT)
}
