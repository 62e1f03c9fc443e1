//! `GET`/`PUT /_objects/{key}`: the pack objects of a folder archive store,
//! for agents, on URLs the gateway signed (`ArchiveStore::sign_url`). No
//! token: the HMAC in `sig` binds the method, the key, the expiry `exp` and,
//! for a PUT, the body's length `len`, so a URL handed out for one pack of
//! one project reaches nothing else. Only pack keys
//! (`{project}/packs/{64 hex}`) are served; a PUT body must be `len` bytes
//! (at most a pack's size) and hash to the key's id, or nothing is written.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use devgate_snapshot::{Id, PACK_MAX};
use http_body_util::BodyExt as _;
use serde::Deserialize;

use crate::archive_store::Op;
use crate::error::{Error, Result};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/_objects/{*key}", get(get_object).put(put_object))
}

#[derive(Deserialize)]
struct Signature {
    exp: u64,
    sig: String,
    /// A PUT's body length.
    #[serde(default)]
    len: Option<u64>,
}

/// Checks the key's shape and the signature; answers the pack's id.
fn check(state: &AppState, op: Op, key: &str, s: &Signature) -> Result<Id> {
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
    if !state.archives.check_url(op, key, s.exp, &s.sig) {
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
    check(&state, Op::Get, &key, &s)?;
    let bytes = state.archives.get(&key, PACK_MAX).await?;
    Ok((StatusCode::OK, bytes).into_response())
}

async fn put_object(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Query(s): Query<Signature>,
    body: Body,
) -> Result<Response> {
    let Some(len) = s.len else {
        return Err(Error::Forbidden(
            "the object URL's signature is invalid or expired".into(),
        ));
    };
    let id = check(&state, Op::Put(len), &key, &s)?;
    let bytes = http_body_util::Limited::new(body, PACK_MAX as usize)
        .collect()
        .await
        .map_err(|_| Error::PayloadTooLarge(PACK_MAX))?
        .to_bytes();
    if bytes.len() as u64 != len {
        return Err(Error::BadRequest(format!(
            "the body is {} bytes, the URL was signed for {len}",
            bytes.len()
        )));
    }
    let got = Id::of(&bytes);
    if got != id {
        return Err(Error::BadRequest(format!(
            "the body hashes to {got}, not to the key's {id}"
        )));
    }
    state.archives.put(&key, bytes).await?;
    Ok(StatusCode::OK.into_response())
}
