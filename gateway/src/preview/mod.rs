//! The preview proxy: requests whose `Host` names a container of a project
//! go to that dev server. Stub: the realtime engineer owns this module.

pub mod host;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

/// Serves one request for a preview host.
pub async fn handle(state: AppState, target: host::PreviewHost, req: Request) -> Response {
    let _ = (state, req);
    crate::error::Error::NotFound(format!(
        "no preview for {}.{}",
        target.container, target.project
    ))
    .into_response()
}
