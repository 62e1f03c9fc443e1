//! File routes: read (ETag, Range), atomic write (If-Match, If-None-Match),
//! delete, list, stat, mkdir, move, and the project's zip archive download and
//! upload. Every path is checked by `ids::file_path` here and resolved by the
//! agent's resolver: in the agent, or, for reads of a project whose folder is
//! on this machine (local runtime), in `local_files` with the same code.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt as _;
use serde::Deserialize;

use super::{JsonBody, authorize};
use crate::agent_client::{
    ArchiveChunk, ArchiveOptions, Entry, EntryKind, ExtractCaps, WriteOptions, quote_etag,
};
use crate::auth::{Claims, QueryClaims};
use crate::error::{Error, Result};
use crate::ids;
use crate::local_files;
use crate::state::AppState;
use crate::store::CommandLogEntry;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/projects/{p}/files/{*path}",
            get(read).put(write).delete(remove),
        )
        .route(
            "/api/projects/{p}/files",
            get(read_root).put(write_root).delete(remove_root),
        )
        .route(
            "/api/projects/{p}/files/",
            get(read_root).put(write_root).delete(remove_root),
        )
        .route("/api/projects/{p}/list", get(list_root))
        .route("/api/projects/{p}/list/", get(list_root))
        .route("/api/projects/{p}/list/{*path}", get(list))
        .route("/api/projects/{p}/stat", get(stat_root))
        .route("/api/projects/{p}/stat/", get(stat_root))
        .route("/api/projects/{p}/stat/{*path}", get(stat))
        .route("/api/projects/{p}/mkdir/{*path}", post(mkdir))
        .route("/api/projects/{p}/move", post(rename))
        .route("/api/projects/{p}/archive", get(download).post(upload))
}

/// An entity tag from a precondition header, without `W/` and quotes.
fn unquote(tag: &str) -> &str {
    let t = tag.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    t.trim_matches('"')
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// A single byte range of a `Range` header. Several ranges, other units or
/// nonsense are ignored (the whole file is sent), as RFC 9110 allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteRange {
    /// `a-b`, inclusive.
    FromTo(u64, u64),
    /// `a-`.
    From(u64),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

fn parse_range(h: &str) -> Option<ByteRange> {
    let spec = h.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        (true, false) => Some(ByteRange::Suffix(b.parse().ok()?)),
        (false, true) => Some(ByteRange::From(a.parse().ok()?)),
        (false, false) => {
            let (a, b) = (a.parse().ok()?, b.parse().ok()?);
            (a <= b).then_some(ByteRange::FromTo(a, b))
        }
        (true, true) => None,
    }
}

/// `(offset, length)` of a range within `size` bytes; `None` when unsatisfiable.
fn resolve_range(r: ByteRange, size: u64) -> Option<(u64, u64)> {
    match r {
        ByteRange::FromTo(a, b) if a < size => Some((a, b.min(size - 1) - a + 1)),
        ByteRange::From(a) if a < size => Some((a, size - a)),
        ByteRange::Suffix(n) if n > 0 && size > 0 => {
            let n = n.min(size);
            Some((size - n, n))
        }
        _ => None,
    }
}

fn entry_headers(resp: &mut Response, e: &Entry) {
    let h = resp.headers_mut();
    if let Some(tag) = &e.etag
        && let Ok(v) = HeaderValue::from_str(&quote_etag(tag))
    {
        h.insert(header::ETAG, v);
    }
    let mtime: std::time::SystemTime = e.mtime.into();
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(mtime)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
}

fn io_error(e: Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

// `/files` and `/files/` name the project root: the same handlers with an
// empty path (a read or write answers 400 `is_directory`, a delete 400).

async fn read_root(
    claims: Claims,
    state: State<AppState>,
    Path(p): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    read(claims, state, Path((p, String::new())), headers).await
}

async fn write_root(
    claims: Claims,
    state: State<AppState>,
    Path(p): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    write(claims, state, Path((p, String::new())), headers, body).await
}

async fn remove_root(
    claims: Claims,
    state: State<AppState>,
    Path(p): Path<String>,
    query: Query<RemoveQuery>,
) -> Result<StatusCode> {
    remove(claims, state, Path((p, String::new())), query).await
}

/// Where a read gets its bytes: the project's folder on this machine, or
/// its agent.
enum Source {
    Local(local_files::LocalFile),
    Agent(crate::agent_client::AgentClient),
}

async fn read(
    claims: Claims,
    State(state): State<AppState>,
    Path((p, raw)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    authorize(&claims, &p)?;
    let path = ids::file_path(&raw)?;
    // Active first, then the folder: a handle taken before a wait on the
    // store could be of a folder torn down meanwhile.
    state.require_active(&p).await?;
    let source = match state.runtime.local_files(&p) {
        Some(folder) => Source::Local(local_files::open(&*folder?, &path)?),
        None => Source::Agent(state.agent_of_active(&p).await?),
    };
    let range = header_str(&headers, header::RANGE).and_then(parse_range);
    let if_none_match = header_str(&headers, header::IF_NONE_MATCH);
    let mut window = None;
    if range.is_some() || if_none_match.is_some() {
        let e = match &source {
            Source::Local(f) => f.entry.clone(),
            Source::Agent(client) => client.stat(&path).await?,
        };
        if e.kind == EntryKind::Dir {
            return Err(Error::IsDirectory(format!("{path} is a directory")));
        }
        if let (Some(inm), Some(tag)) = (if_none_match, &e.etag)
            && (inm == "*" || inm.split(',').any(|t| unquote(t) == tag))
        {
            let mut resp = StatusCode::NOT_MODIFIED.into_response();
            entry_headers(&mut resp, &e);
            return Ok(resp);
        }
        if let Some(r) = range {
            window =
                Some(resolve_range(r, e.size).ok_or(Error::RangeNotSatisfiable { size: e.size })?);
        }
    }
    let (offset, length) = window.unwrap_or((0, 0));
    let (e, data) = match source {
        Source::Local(f) => (f.entry.clone(), f.read(offset, length)?),
        Source::Agent(client) => client.read(&path, offset, length).await?,
    };
    if e.kind == EntryKind::Dir {
        return Err(Error::IsDirectory(format!("{path} is a directory")));
    }
    let (status, len) = match window {
        Some((_, len)) => (StatusCode::PARTIAL_CONTENT, len),
        None => (StatusCode::OK, e.size),
    };
    let mut resp = Response::new(Body::from_stream(data.map(|r| r.map_err(io_error))));
    *resp.status_mut() = status;
    entry_headers(&mut resp, &e);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some((start, len)) = window
        && let Ok(v) =
            HeaderValue::from_str(&format!("bytes {start}-{}/{}", start + len - 1, e.size))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

async fn write(
    claims: Claims,
    State(state): State<AppState>,
    Path((p, raw)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    authorize(&claims, &p)?;
    let path = ids::file_path(&raw)?;
    if path.is_empty() {
        return Err(Error::IsDirectory("the project root is a directory".into()));
    }
    let max = state.config.max_body_bytes;
    if let Some(len) =
        header_str(&headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok())
        && len > max
    {
        return Err(Error::PayloadTooLarge(max));
    }
    let writing = state.write_gates.enter(&p).await?;
    let client = state.active_agent(&p).await?;
    let if_match = header_str(&headers, header::IF_MATCH);
    let create_only = header_str(&headers, header::IF_NONE_MATCH) == Some("*");
    let mut opts = WriteOptions {
        create_only,
        make_parents: true,
        ..Default::default()
    };
    match if_match {
        // "Any current version": the file must exist, which the agent checks
        // in the same call (at the start and again at the commit).
        Some("*") => opts.must_exist = true,
        Some(tag) => opts.expected_etag = Some(unquote(tag).to_owned()),
        None => {}
    }
    let has_etag = opts.expected_etag.is_some() || opts.must_exist;
    let data = body
        .into_data_stream()
        .map(|r| r.map_err(|e| Error::BadRequest(format!("cannot read the request body: {e}"))))
        .boxed();
    let e = match client.write(&path, opts, data, max).await {
        Ok(e) => e,
        Err(Error::Conflict(_)) if create_only => {
            return Err(Error::PreconditionFailed(format!("{path} exists")));
        }
        Err(Error::NotFound(_)) if has_etag => {
            return Err(Error::PreconditionFailed(format!("{path} does not exist")));
        }
        Err(e) => return Err(e),
    };
    writing.finish().await?;
    // The same quoted string as the `ETag` header and the entries' `etag`.
    let etag = e.etag.as_deref().map(quote_etag).unwrap_or_default();
    let mut resp = Json(serde_json::json!({"etag": etag, "size": e.size})).into_response();
    entry_headers(&mut resp, &e);
    Ok(resp)
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    recursive: Option<String>,
}

async fn remove(
    claims: Claims,
    State(state): State<AppState>,
    Path((p, raw)): Path<(String, String)>,
    Query(q): Query<RemoveQuery>,
) -> Result<StatusCode> {
    authorize(&claims, &p)?;
    let path = ids::file_path(&raw)?;
    if path.is_empty() {
        return Err(Error::BadRequest(
            "the project root cannot be deleted".into(),
        ));
    }
    let writing = state.write_gates.enter(&p).await?;
    let client = state.active_agent(&p).await?;
    let recursive = matches!(q.recursive.as_deref(), Some("true" | "1" | ""));
    client.remove(&path, recursive).await?;
    writing.finish().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    depth: Option<u32>,
}

async fn list_root(
    claims: Claims,
    state: State<AppState>,
    Path(p): Path<String>,
    q: Query<ListQuery>,
) -> Result<Json<serde_json::Value>> {
    list(claims, state, Path((p, String::new())), q).await
}

async fn list(
    claims: Claims,
    State(state): State<AppState>,
    Path((p, raw)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>> {
    authorize(&claims, &p)?;
    let path = ids::file_path(&raw)?;
    let depth = q.depth.unwrap_or(1).clamp(1, 64);
    let client = state.active_agent(&p).await?;
    let entries = client.list(&path, depth).await?;
    Ok(Json(serde_json::json!({"entries": entries})))
}

async fn stat_root(
    claims: Claims,
    state: State<AppState>,
    Path(p): Path<String>,
) -> Result<Json<Entry>> {
    stat(claims, state, Path((p, String::new()))).await
}

async fn stat(
    claims: Claims,
    State(state): State<AppState>,
    Path((p, raw)): Path<(String, String)>,
) -> Result<Json<Entry>> {
    authorize(&claims, &p)?;
    let path = ids::file_path(&raw)?;
    let client = state.active_agent(&p).await?;
    Ok(Json(client.stat(&path).await?))
}

async fn mkdir(
    claims: Claims,
    State(state): State<AppState>,
    Path((p, raw)): Path<(String, String)>,
) -> Result<Response> {
    authorize(&claims, &p)?;
    let path = ids::file_path(&raw)?;
    if path.is_empty() {
        return Err(Error::Conflict("the project root exists".into()));
    }
    let writing = state.write_gates.enter(&p).await?;
    let client = state.active_agent(&p).await?;
    let e = client.mkdir(&path, true).await?;
    writing.finish().await?;
    Ok((StatusCode::CREATED, Json(e)).into_response())
}

#[derive(Deserialize)]
struct MoveBody {
    from: String,
    to: String,
    #[serde(default)]
    overwrite: bool,
}

async fn rename(
    claims: Claims,
    State(state): State<AppState>,
    Path(p): Path<String>,
    JsonBody(body): JsonBody<MoveBody>,
) -> Result<Json<Entry>> {
    authorize(&claims, &p)?;
    let body = body?;
    let from = ids::file_path(&body.from)?;
    let to = ids::file_path(&body.to)?;
    if from.is_empty() || to.is_empty() {
        return Err(Error::BadRequest(
            "the project root cannot be moved or replaced".into(),
        ));
    }
    let writing = state.write_gates.enter(&p).await?;
    let client = state.active_agent(&p).await?;
    let e = client.rename(&from, &to, body.overwrite).await?;
    writing.finish().await?;
    Ok(Json(e))
}

#[derive(Deserialize)]
struct DownloadQuery {
    /// Everything: `.git`, `node_modules`, `__pycache__` and symlinks that
    /// point outside the project (as symlinks) included.
    #[serde(default)]
    all: Option<String>,
}

async fn download(
    QueryClaims(claims): QueryClaims,
    State(state): State<AppState>,
    Path(p): Path<String>,
    Query(q): Query<DownloadQuery>,
) -> Result<Response> {
    authorize(&claims, &p)?;
    let all = match q.all.as_deref() {
        None | Some("false" | "0") => false,
        Some("true" | "1" | "") => true,
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "all must be true or false, not {other:?}"
            )));
        }
    };
    let client = state.active_agent(&p).await?;
    let t0 = Instant::now();
    let opts = ArchiveOptions {
        all,
        ..ArchiveOptions::default()
    };
    let chunks = client.create_archive(opts).await?;
    let st = state.clone();
    let project = p.clone();
    let data = chunks.filter_map(move |c| {
        let st = st.clone();
        let project = project.clone();
        async move {
            match c {
                Ok(ArchiveChunk::Data(d)) => Some(Ok(d)),
                Ok(ArchiveChunk::Summary(s)) => {
                    tokio::spawn(async move {
                        let command = if all {
                            "download zip of the whole project"
                        } else {
                            "download zip of the project"
                        };
                        st.log_command(
                            CommandLogEntry::new(&project, "archive", command)
                                .took(t0.elapsed())
                                .succeeded(format!("{} files, {} bytes", s.files, s.size)),
                        )
                        .await
                    });
                    None
                }
                Err(e) => Some(Err(io_error(e))),
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(data));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{p}.zip\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

async fn upload(
    claims: Claims,
    State(state): State<AppState>,
    Path(p): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>> {
    authorize(&claims, &p)?;
    let max = state.config.max_body_bytes;
    if let Some(len) =
        header_str(&headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok())
        && len > max
    {
        return Err(Error::PayloadTooLarge(max));
    }
    let writing = state.write_gates.enter(&p).await?;
    let client = state.active_agent(&p).await?;
    let t0 = Instant::now();
    let data = body
        .into_data_stream()
        .map(|r| r.map_err(|e| Error::BadRequest(format!("cannot read the request body: {e}"))))
        .boxed();
    let caps = ExtractCaps {
        max_entries: state.config.max_upload_entries,
        max_bytes: state.config.max_upload_expanded_bytes,
        max_ratio: state.config.max_upload_ratio,
    };
    let result = client.extract("", data, max, Some(caps)).await;
    state
        .log_command(
            CommandLogEntry::new(&p, "archive", "extract uploaded zip")
                .took(t0.elapsed())
                .outcome(&result, |s| format!("{} files, {} bytes", s.files, s.bytes)),
        )
        .await;
    let s = result?;
    writing.finish().await?;
    Ok(Json(
        serde_json::json!({"files": s.files, "bytes": s.bytes}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9"), Some(ByteRange::FromTo(0, 9)));
        assert_eq!(parse_range("bytes=5-"), Some(ByteRange::From(5)));
        assert_eq!(parse_range("bytes=-3"), Some(ByteRange::Suffix(3)));
        assert_eq!(parse_range("bytes=0-1,3-4"), None);
        assert_eq!(parse_range("items=0-1"), None);
        assert_eq!(parse_range("bytes=9-2"), None);
        assert_eq!(resolve_range(ByteRange::FromTo(0, 9), 5), Some((0, 5)));
        assert_eq!(resolve_range(ByteRange::From(5), 5), None);
        assert_eq!(resolve_range(ByteRange::Suffix(3), 10), Some((7, 3)));
        assert_eq!(resolve_range(ByteRange::Suffix(30), 10), Some((0, 10)));
        assert_eq!(unquote("W/\"abc\""), "abc");
    }
}
