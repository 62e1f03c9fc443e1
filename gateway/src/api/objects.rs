//! `GET`/`PUT /_objects/{key}`: the pack objects of a folder archive store,
//! for agents, on URLs the gateway signed (`ArchiveStore::sign_url`). No
//! token: the HMAC in `sig` binds the method, the key and the expiry `exp`,
//! so a URL handed out for one pack of one project reaches nothing else.
//! Only pack keys (`{project}/packs/{64 hex}`) are served; a PUT body must
//! hash to the key's id and be at most a pack's size, or nothing is written.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use devgate_snapshot::{Id, PACK_MAX};
use http_body_util::BodyExt as _;
use serde::Deserialize;

use crate::archive_store::Method;
use crate::error::{Error, Result};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/_objects/{*key}", get(get_object).put(put_object))
}

#[derive(Deserialize)]
struct Signature {
    exp: u64,
    sig: String,
}

/// Checks the key's shape and the signature; answers the pack's id.
fn check(state: &AppState, method: Method, key: &str, s: &Signature) -> Result<Id> {
    if !state.archives.is_folder() {
        return Err(Error::NotFound("no such route".into()));
    }
    let parts: Vec<&str> = key.split('/').collect();
    let id = match parts.as_slice() {
        [project, "packs", id] if crate::ids::project_id(project).is_ok() => Id::parse(id).ok(),
        _ => None,
    };
    let Some(id) = id else {
        return Err(Error::NotFound("no such object".into()));
    };
    if !state.archives.check_url(method, key, s.exp, &s.sig) {
        return Err(Error::Forbidden(
            "the object URL's signature is invalid or expired".into(),
        ));
    }
    Ok(id)
}

async fn get_object(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Query(s): Query<Signature>,
) -> Result<Response> {
    check(&state, Method::Get, &key, &s)?;
    let bytes = state.archives.get(&key, PACK_MAX).await?;
    Ok((StatusCode::OK, bytes).into_response())
}

async fn put_object(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Query(s): Query<Signature>,
    body: Body,
) -> Result<Response> {
    let id = check(&state, Method::Put, &key, &s)?;
    let bytes = http_body_util::Limited::new(body, PACK_MAX as usize)
        .collect()
        .await
        .map_err(|_| Error::PayloadTooLarge(PACK_MAX))?
        .to_bytes();
    let got = Id::of(&bytes);
    if got != id {
        return Err(Error::BadRequest(format!(
            "the body hashes to {got}, not to the key's {id}"
        )));
    }
    state.archives.put(&key, bytes).await?;
    Ok(StatusCode::OK.into_response())
}
