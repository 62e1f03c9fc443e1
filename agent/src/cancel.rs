//! Tells a client-streamed request that ended from one the client cancelled.
//!
//! tonic's `Streaming` reports a request stream reset by the client
//! (`RST_STREAM CANCEL`: a deadline, a dropped call) as a clean end of the
//! stream, exactly like a half-close. For an atomic write that would commit a
//! truncated file. A layer in front of every service wraps each request body
//! and records in the request's extensions whether it ended with an error;
//! handlers ask [`cancelled`] before they commit anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::BodyExt as _;

/// Set when the request body ended with an error (reset, broken connection).
#[derive(Clone, Default, Debug)]
pub(crate) struct BodyState(Arc<AtomicBool>);

impl BodyState {
    /// Whether the body ended with an error rather than a clean half-close.
    pub(crate) fn cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The body state of a tonic request (never cancelled when the layer is absent).
pub(crate) fn body_state<T>(req: &tonic::Request<T>) -> BodyState {
    req.extensions()
        .get::<BodyState>()
        .cloned()
        .unwrap_or_default()
}

/// The layer for `Server::builder().layer(..)`.
pub(crate) fn layer() -> tower::util::MapRequestLayer<fn(HttpRequest) -> HttpRequest> {
    tower::util::MapRequestLayer::new(watch_body as fn(HttpRequest) -> HttpRequest)
}

type HttpRequest = http::Request<tonic::body::Body>;

fn watch_body(req: HttpRequest) -> HttpRequest {
    let state = BodyState::default();
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(state.clone());
    let body = body.map_err(move |e| {
        state.0.store(true, Ordering::Release);
        e
    });
    http::Request::from_parts(parts, tonic::body::Body::new(body))
}
