//! Sending one request to a dev server and its answer back: hop-by-hop
//! headers dropped, the gateway's credentials removed (its cookie, every
//! `Authorization` token it signed, `devgate.bearer.*` subprotocol offers),
//! `X-Forwarded-*` and `Via` set, bodies streamed both ways and counted,
//! WebSocket upgrades joined and copied until either side (or, for a share
//! link, its revocation) ends them.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, Version, header};
use axum::response::Response;
use http_body_util::BodyExt as _;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::{COOKIE, Refusal};
use crate::auth::Keys;
use crate::runtime::ContainerRoute;
use crate::state::AppState;

/// The pseudonym, as a literal (for `VIA_OURS`'s `concat!`).
macro_rules! via_name {
    () => {
        "devgate"
    };
}

/// The pseudonym this gateway adds to `Via` (RFC 9110 section 7.6.3) on
/// requests it sends to dev servers; see `looped` for the loop guard.
pub(super) const VIA_NAME: &str = via_name!();

/// This gateway's own `Via` entry, when it is the first.
const VIA_OURS: &str = concat!("1.1 ", via_name!());

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

/// Whether header `name` (any case) describes one hop.
pub(super) fn hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether header `name` (any case) says where a request came from, which
/// only a trusted proxy may tell a dev server.
pub(super) fn spoofable(name: &str) -> bool {
    name.get(..12)
        .is_some_and(|p| p.eq_ignore_ascii_case("x-forwarded-"))
        || ["forwarded", "x-real-ip", "true-client-ip", "x-client-ip"]
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
}

/// A header value as text, when it is visible ASCII (as `HeaderValue::to_str`
/// reads it).
pub(super) fn visible(v: &[u8]) -> Option<&str> {
    v.iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        .then(|| std::str::from_utf8(v).ok())
        .flatten()
}

/// Whether an `Authorization` value is a bearer token this gateway signed
/// (valid or not).
pub(super) fn gateway_bearer(keys: &Keys, v: &[u8]) -> bool {
    visible(v)
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .is_some_and(|(_, t)| keys.is_ours(t.trim()))
}

/// Whether a `Cookie` value may carry the preview cookie.
pub(super) fn mentions_preview_cookie(v: &[u8]) -> bool {
    v.windows(COOKIE.len()).any(|w| w == COOKIE.as_bytes())
}

/// The cookie pairs of `Cookie` values other than the preview cookie, to be
/// sent as one header (values that are not visible ASCII are dropped).
pub(super) fn other_cookies<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<&'a str> {
    values
        .filter_map(visible)
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split_once('=').map(|(k, _)| k) != Some(COOKIE))
        .collect()
}

/// `X-Forwarded-For` for a request from `ip`: after the first value a
/// trusted proxy sent, if any.
pub(super) fn forwarded_for(prev: Option<&str>, ip: &str) -> String {
    match prev {
        Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
        _ => ip.to_owned(),
    }
}

/// `Via` with this gateway's entry after the first value sent, if any.
pub(super) fn via(prev: Option<&str>) -> std::borrow::Cow<'static, str> {
    match prev {
        Some(prev) if !prev.is_empty() => format!("{prev}, 1.1 {VIA_NAME}").into(),
        _ => VIA_OURS.into(),
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // The names `Connection` lists (usually none, or `keep-alive`).
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    // One pass over the names present, then a removal for each to go: most
    // messages carry none or one of them, and a lookup per name that might
    // be there costs every proxied request a dozen hash probes.
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| {
            hop_by_hop(n.as_str()) || (!keep_upgrade && *n == header::UPGRADE) || listed.contains(n)
        })
        .cloned()
        .collect();
    for n in doomed {
        headers.remove(n);
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
    if !headers
        .get_all(header::COOKIE)
        .iter()
        .any(|v| mentions_preview_cookie(v.as_bytes()))
    {
        return;
    }
    let rest: Vec<String> =
        other_cookies(headers.get_all(header::COOKIE).iter().map(|v| v.as_bytes()))
            .into_iter()
            .map(str::to_owned)
            .collect();
    headers.remove(header::COOKIE);
    if !rest.is_empty()
        && let Ok(v) = HeaderValue::from_str(&rest.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

/// Removes what of the gateway's credentials the request carries besides its
/// cookie: every `Authorization` value that is a token the gateway signed
/// (whoever sent it, valid or not), and `devgate.bearer.*` WebSocket
/// subprotocol offers. The app's own credentials pass.
fn strip_gateway_credentials(keys: &Keys, h: &mut HeaderMap) {
    let auth: Vec<HeaderValue> = h.get_all(header::AUTHORIZATION).iter().cloned().collect();
    if !auth.is_empty() {
        h.remove(header::AUTHORIZATION);
        for v in auth {
            if !gateway_bearer(keys, v.as_bytes()) {
                h.append(header::AUTHORIZATION, v);
            }
        }
    }
    let protocols: Vec<HeaderValue> = h
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .cloned()
        .collect();
    if protocols
        .iter()
        .any(|v| v.as_bytes().windows(15).any(|w| w == b"devgate.bearer."))
    {
        h.remove(header::SEC_WEBSOCKET_PROTOCOL);
        let kept: Vec<String> = protocols
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty() && !p.starts_with("devgate.bearer."))
            .map(str::to_owned)
            .collect();
        if !kept.is_empty()
            && let Ok(v) = HeaderValue::from_str(&kept.join(", "))
        {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
        }
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
    const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    if !trusted_peer {
        let doomed: Vec<HeaderName> = h
            .keys()
            .filter(|n| spoofable(n.as_str()))
            .cloned()
            .collect();
        for name in doomed {
            h.remove(name);
        }
    }
    if let Some(host) = host {
        if !h.contains_key(&X_FORWARDED_HOST) {
            h.insert(X_FORWARDED_HOST, host.clone());
        }
        h.insert(header::HOST, host);
    }
    if !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if let Some(peer) = peer {
        let prev = h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok());
        let xff = forwarded_for(prev, &peer.ip().to_string());
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert(X_FORWARDED_FOR, v);
        }
    }
    let via = match via(h.get(header::VIA).and_then(|v| v.to_str().ok())) {
        std::borrow::Cow::Borrowed(ours) => Some(HeaderValue::from_static(ours)),
        std::borrow::Cow::Owned(v) => HeaderValue::from_str(&v).ok(),
    };
    if let Some(v) = via {
        h.insert(header::VIA, v);
    }
}

/// The request headers a dev server gets (the fast path makes the same
/// edits on a head's bytes; a test of `fast` holds them equal).
pub(super) fn edit_request(
    keys: &Keys,
    h: &mut HeaderMap,
    host: Option<HeaderValue>,
    peer: Option<SocketAddr>,
    trusted_peer: bool,
    upgrade: bool,
) {
    strip_hop_by_hop(h, upgrade);
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    strip_cookie(h);
    strip_gateway_credentials(keys, h);
    set_forwarded(h, host, peer, trusted_peer);
}

pub(super) async fn proxy(
    state: &AppState,
    route: ContainerRoute,
    mut req: Request,
    trusted_peer: bool,
    share: Option<String>,
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

    edit_request(
        &state.keys,
        &mut parts.headers,
        original_host,
        peer,
        trusted_peer,
        upgrade,
    );

    let (up, down) = (state.preview.up.clone(), state.preview.down.clone());
    // Nothing to count in an empty body (most GETs): pass it as it is. A
    // body says when it has all been passed on (see below).
    let (body, body_sent) = if upgrade || axum::body::HttpBody::is_end_stream(&body) {
        (body, None)
    } else {
        let up = up.clone();
        let (sent, body_sent) = tokio::sync::oneshot::channel();
        let counted = body.map_frame(move |f| {
            if let Some(d) = f.data_ref() {
                up.inc_by(d.len() as u64);
            }
            f
        });
        (
            Body::new(Passed {
                body: counted,
                sent: Some(sent),
            }),
            Some(body_sent),
        )
    };
    let upstream_req = axum::http::Request::from_parts(parts, body);
    let authority = route.authority();
    let (connected_tx, connected) = tokio::sync::oneshot::channel();
    let sent = state.preview.pool.send(
        &authority,
        upstream_req,
        upgrade,
        down.clone(),
        connected_tx,
    );
    // The answer's head within `--preview-answer-timeout` of the request
    // sent: not counting the wait for a dev server just starting, and for a
    // request with a body, counted from its end (an upload takes as long as
    // it takes). Dropping the request closes its dev-server connection.
    let limit = state.config.preview_answer_timeout;
    let late = async {
        // Each also ends when its sender is dropped (the exchange failed,
        // which `sent` then says first).
        match body_sent {
            // Its end passed on, or the body dropped (sent or failed).
            Some(body_sent) => {
                let _ = body_sent.await;
            }
            None => {
                let _ = connected.await;
            }
        }
        tokio::time::sleep(limit).await;
    };
    let answered = if limit.is_zero() {
        Some(sent.await)
    } else {
        tokio::select! {
            biased;
            answered = sent => Some(answered),
            () = late => None,
        }
    };
    let mut resp = match answered {
        Some(Ok(r)) => r,
        Some(Err(error)) => {
            tracing::debug!(error = %crate::error::Chain(&error), "dev server did not answer");
            return Err(Refusal::BadGateway);
        }
        None => return Err(answer_timeout(state, limit)),
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(Refusal::BadGateway);
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let state = state.clone();
        // Only an upgraded connection opened through a share link is
        // tracked (a plain request is checked against the share on each
        // request); its entry goes when the connection ends.
        let share = share.map(|id| state.preview.shares.track(&id));
        tokio::spawn(async move {
            let _tracked = share.as_ref().map(|t| t.clone().drop_guard());
            let _open = crate::metrics::WsGauge::new(&state.metrics, "preview");
            let (client_io, upstream_io) = match tokio::try_join!(client_upgrade, upstream_upgrade)
            {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::debug!(error = %crate::error::Chain(&error), "preview upgrade failed");
                    return;
                }
            };
            let (mut client_io, from_client) = take_socket::<crate::conn::Counted>(client_io);
            let (mut upstream_io, from_upstream) = take_socket::<TcpStream>(upstream_io);
            let copied = async {
                // What hyper read past the upgrade on either side goes first
                // (one direction after the other: at most what came in the
                // same reads as the upgrade's head, which the kernel's socket
                // buffers take without the other side reading).
                upstream_io.write_all(&from_client).await?;
                client_io.write_all(&from_upstream).await?;
                let (up_n, down_n) =
                    tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io).await?;
                Ok::<_, std::io::Error>((
                    up_n + from_client.len() as u64,
                    down_n + from_upstream.len() as u64,
                ))
            };
            // A connection opened through a share link ends when the link is
            // revoked or expires; the others when either side closes.
            let revoked = async {
                match &share {
                    Some(token) => token.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                copied = copied => match copied {
                    Ok((to_upstream, to_client)) => {
                        up.inc_by(to_upstream);
                        down.inc_by(to_client);
                    }
                    Err(error) => tracing::debug!(error = %crate::error::Chain(&error), "preview upgraded connection ended"),
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

/// A dev server that sent no answer's head within `limit`: counted (metric
/// `gateway_refused_total{reason="preview_answer_timeout"}`), answered 504.
pub(super) fn answer_timeout(state: &AppState, limit: std::time::Duration) -> Refusal {
    tracing::debug!(?limit, "dev server sent no answer in time");
    state.metrics.refuse("preview_answer_timeout");
    Refusal::Timeout(limit)
}

/// A request body that says (once) when it has all been passed on: its
/// last frame taken, or the body dropped (hyper drops it once sent, or when
/// the exchange fails).
struct Passed<B> {
    body: B,
    sent: Option<tokio::sync::oneshot::Sender<()>>,
}

impl<B> hyper::body::Body for Passed<B>
where
    B: hyper::body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        let ended = match &polled {
            std::task::Poll::Ready(None) => true,
            std::task::Poll::Ready(Some(_)) => self.body.is_end_stream(),
            std::task::Poll::Pending => false,
        };
        if ended && let Some(sent) = self.sent.take() {
            let _ = sent.send(());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// An upgraded connection's socket taken back out of hyper's `Upgraded`
/// when it is of the gateway's own kind (`I` under hyper-util's `TokioIo`):
/// a long-lived WebSocket then skips a boxed, rewinding layer on every read
/// and write. With the bytes hyper had already read past the upgrade, which
/// must be passed on first. Any other kind stays as it is.
fn take_socket<I>(upgraded: Upgraded) -> (Either<I, TokioIo<Upgraded>>, bytes::Bytes)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    match upgraded.downcast::<TokioIo<I>>() {
        Ok(parts) => (Either::Left(parts.io.into_inner()), parts.read_buf),
        Err(upgraded) => {
            tracing::debug!(
                kind = std::any::type_name::<I>(),
                "an upgraded connection of another kind: copied through hyper's Upgraded"
            );
            (Either::Right(TokioIo::new(upgraded)), bytes::Bytes::new())
        }
    }
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
        // The first hop's `Via` is this gateway's own entry alone.
        let mut h = headers(&[("accept", "*/*")]);
        set_forwarded(&mut h, None, None, false);
        assert_eq!(h["via"], format!("1.1 {VIA_NAME}").as_str());
    }
}
