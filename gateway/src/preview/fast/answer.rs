//! The fast path's side of a dev server's answer: its head read and edited
//! for the client, its framing, and its body passed on as framed.

use bytes::{Buf as _, BytesMut};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{MAX_CHUNK_LINE, MAX_HEAD, MAX_HEADERS, Upstream, push_header};
use crate::conn::Counted;
use crate::preview::proxy;

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// At the close of the dev server's connection.
    Close,
}

/// The client's side while its answer is on the way: its socket, and what
/// it sends meanwhile (its next request, kept for later).
pub(super) struct Down<'a> {
    pub io: &'a mut Counted,
    pub buf: &'a mut BytesMut,
    /// The current request's head, at the front of `buf`: bytes past it are
    /// a pipelined request, whose client has not gone even when it has
    /// closed its side (it waits for both answers, which hyper gives too).
    pub head_len: usize,
}

/// What became of a request sent to the dev server.
pub(super) enum Sent {
    /// The answer's head, edited, is in the head buffer.
    Answer(Framing, bool),
    /// The connection closed before a byte of the answer came (a kept one
    /// the dev server timed out, usually).
    Closed,
    /// No usable answer: broken, not HTTP/1, framed in a way this path does
    /// not take, or an upgrade nobody asked for.
    Unusable,
    /// The client closed its connection meanwhile.
    ClientGone,
    /// The dev server could not be reached (nothing was sent).
    NoDevServer,
    /// Sent, and no answer's head within `--preview-answer-timeout`.
    Late,
}

/// Sends `request` on `up` and reads the answer's head into `head`.
pub(super) async fn exchange_once(
    up: &mut Upstream,
    down: &mut Down<'_>,
    request: &[u8],
    head_only: bool,
    head: &mut Vec<u8>,
) -> Sent {
    let written = tokio::select! {
        biased;
        written = up.tcp.write_all(request) => written.is_ok(),
        () = client_gone(down) => return Sent::ClientGone,
    };
    if !written {
        return Sent::Closed;
    }
    up.buf.clear();
    let mut received = false;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&up.buf) {
            Ok(httparse::Status::Complete(n)) => {
                let code = resp.code.unwrap_or(0);
                if code == 101 || !(100..=999).contains(&code) {
                    return Sent::Unusable;
                }
                if code < 200 {
                    // Informational: dropped, the final answer follows.
                    up.buf.advance(n);
                    continue;
                }
                let Ok((framing, keep)) = edit_answer(&resp, head_only, head) else {
                    return Sent::Unusable;
                };
                up.buf.advance(n);
                return Sent::Answer(framing, keep);
            }
            Ok(httparse::Status::Partial) if up.buf.len() < MAX_HEAD => {}
            _ => return Sent::Unusable,
        }
        match fill(up, down).await {
            Fill::More => received = true,
            Fill::End if !received => return Sent::Closed,
            Fill::End => return Sent::Unusable,
            Fill::ClientGone => return Sent::ClientGone,
        }
    }
}

/// The answer's framing, whether its connection may be kept, and its head
/// for the client: hop-by-hop headers dropped (and those its `Connection`
/// lists), `Transfer-Encoding: chunked` kept for a chunked body, which is
/// passed on chunk by chunk. The head goes into `head`.
pub(super) fn edit_answer(
    resp: &httparse::Response<'_, '_>,
    head_only: bool,
    head: &mut Vec<u8>,
) -> Result<(Framing, bool), ()> {
    let code = resp.code.ok_or(())?;
    let mut chunked = false;
    let mut length: Option<u64> = None;
    let mut close = resp.version != Some(1);
    let mut listed: Vec<&str> = Vec::new();
    for h in resp.headers.iter() {
        let is = |n: &str| h.name.eq_ignore_ascii_case(n);
        if is("transfer-encoding") {
            // Only a plain `chunked` (once) is taken.
            if chunked
                || !proxy::visible(h.value)
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"))
            {
                return Err(());
            }
            chunked = true;
        } else if is("content-length") {
            for v in proxy::visible(h.value).ok_or(())?.split(',') {
                let v = v.trim();
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(());
                }
                let n: u64 = v.parse().map_err(|_| ())?;
                if length.is_some_and(|l| l != n) {
                    return Err(());
                }
                length = Some(n);
            }
        } else if is("connection") {
            for option in proxy::visible(h.value).ok_or(())?.split(',').map(str::trim) {
                if option.eq_ignore_ascii_case("close") {
                    close = true;
                } else if option.eq_ignore_ascii_case("keep-alive") {
                    if resp.version == Some(0) {
                        close = false;
                    }
                } else if !option.is_empty() {
                    listed.push(option);
                }
            }
        }
    }
    let framing = if head_only || code == 204 || code == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    head.clear();
    head.extend_from_slice(format!("HTTP/1.1 {code} ").as_bytes());
    head.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name;
        if proxy::hop_by_hop(name)
            || name.eq_ignore_ascii_case("upgrade")
            || listed.iter().any(|l| l.eq_ignore_ascii_case(name))
            || (chunked && name.eq_ignore_ascii_case("content-length"))
        {
            continue;
        }
        push_header(head, name.as_bytes(), h.value);
    }
    if framing == Framing::Chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let keep = !close && framing != Framing::Close;
    Ok((framing, keep))
}

/// Passes a body of `n` bytes after the head in `out`.
pub(super) async fn pass_length(
    up: &mut Upstream,
    down: &mut Down<'_>,
    out: &mut Vec<u8>,
    n: u64,
    counted: &Counter,
) -> bool {
    let mut left = n - take(up, out, n);
    if down.io.write_all(out).await.is_err() {
        return false;
    }
    while left > 0 {
        if !matches!(fill(up, down).await, Fill::More) {
            return false;
        }
        // Straight from the dev server's buffer to the client.
        let part = up
            .buf
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        if down.io.write_all(&up.buf[..part]).await.is_err() {
            return false;
        }
        up.buf.advance(part);
        left -= part as u64;
    }
    counted.inc_by(n);
    true
}

/// Passes a chunked body after the head in `out`, chunk by chunk: each
/// size line written anew (`{size:x}\r\n`, extensions dropped: a line
/// passed on as it came could end, for a parser in front, somewhere else
/// than where it ended here), trailers dropped. What is complete goes to
/// the client before waiting for more (server-sent events arrive as sent).
pub(super) async fn pass_chunked(
    up: &mut Upstream,
    down: &mut Down<'_>,
    out: &mut Vec<u8>,
    counted: &Counter,
) -> bool {
    let mut total = 0u64;
    loop {
        // The size line.
        let (used, size) = loop {
            match httparse::parse_chunk_size(&up.buf) {
                Ok(httparse::Status::Complete(found)) => break found,
                Ok(httparse::Status::Partial) if up.buf.len() < MAX_CHUNK_LINE => {
                    if !flush_then_fill(up, down, out).await {
                        return false;
                    }
                }
                _ => return false,
            }
        };
        up.buf.advance(used);
        if size == 0 {
            // The trailer section: lines up to an empty one, dropped.
            loop {
                match up.buf.windows(2).position(|w| w == b"\r\n") {
                    Some(0) => {
                        up.buf.advance(2);
                        break;
                    }
                    Some(i) => up.buf.advance(i + 2),
                    None if up.buf.len() < MAX_HEAD => {
                        if !flush_then_fill(up, down, out).await {
                            return false;
                        }
                    }
                    None => return false,
                }
            }
            out.extend_from_slice(b"0\r\n\r\n");
            if down.io.write_all(out).await.is_err() {
                return false;
            }
            counted.inc_by(total);
            return true;
        }
        out.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        total = total.saturating_add(size);
        let mut left = size;
        while left > 0 {
            if up.buf.is_empty() && !flush_then_fill(up, down, out).await {
                return false;
            }
            left -= take(up, out, left);
        }
        // The chunk's own line end.
        while up.buf.len() < 2 {
            if !flush_then_fill(up, down, out).await {
                return false;
            }
        }
        if &up.buf[..2] != b"\r\n" {
            return false;
        }
        up.buf.advance(2);
        out.extend_from_slice(b"\r\n");
        if out.len() >= 64 * 1024 && !flush(down, out).await {
            return false;
        }
    }
}

/// Passes a body that ends when the dev server closes its connection.
pub(super) async fn pass_to_close(
    up: &mut Upstream,
    down: &mut Down<'_>,
    out: &mut Vec<u8>,
    counted: &Counter,
) -> bool {
    let mut total = up.buf.len() as u64;
    out.extend_from_slice(&up.buf);
    up.buf.clear();
    if down.io.write_all(out).await.is_err() {
        return false;
    }
    loop {
        match fill(up, down).await {
            Fill::More => {}
            Fill::End => break,
            Fill::ClientGone => return false,
        }
        total += up.buf.len() as u64;
        if down.io.write_all(&up.buf).await.is_err() {
            return false;
        }
        up.buf.clear();
    }
    counted.inc_by(total);
    true
}

/// Moves up to `left` bytes of what the dev server sent to `out`; how many.
fn take(up: &mut Upstream, out: &mut Vec<u8>, left: u64) -> u64 {
    let n = up
        .buf
        .len()
        .min(usize::try_from(left).unwrap_or(usize::MAX));
    out.extend_from_slice(&up.buf[..n]);
    up.buf.advance(n);
    n as u64
}

/// Writes what `out` holds to the client.
async fn flush(down: &mut Down<'_>, out: &mut Vec<u8>) -> bool {
    if out.is_empty() {
        return true;
    }
    let written = down.io.write_all(out).await.is_ok();
    out.clear();
    written
}

/// [`flush`], then [`fill`]: false unless more came.
async fn flush_then_fill(up: &mut Upstream, down: &mut Down<'_>, out: &mut Vec<u8>) -> bool {
    flush(down, out).await && matches!(fill(up, down).await, Fill::More)
}

/// What waiting for the dev server ended with.
pub(super) enum Fill {
    More,
    /// Its end (or an error).
    End,
    ClientGone,
}

/// Reads more from the dev server, watching the client meanwhile: a client
/// that closes its connection (as hyper notices mid-request) ends the wait,
/// so a dev server that never answers holds nothing of a gone client.
pub(super) async fn fill(up: &mut Upstream, down: &mut Down<'_>) -> Fill {
    up.buf.reserve(16 * 1024);
    tokio::select! {
        biased;
        read = up.tcp.read_buf(&mut up.buf) => match read {
            Ok(n) if n > 0 => Fill::More,
            _ => Fill::End,
        },
        () = client_gone(down) => Fill::ClientGone,
    }
}

/// Resolves when the client has closed its side or its connection broke;
/// what it sends meanwhile (a pipelined request) is kept in its buffer, up
/// to [`MAX_HEAD`] (past that, nothing more is read until the answer ends).
pub(super) async fn client_gone(down: &mut Down<'_>) {
    loop {
        if down.buf.len() >= MAX_HEAD {
            return std::future::pending().await;
        }
        down.buf.reserve(4 * 1024);
        match down.io.read_buf(down.buf).await {
            Ok(n) if n > 0 => {}
            // Its side closed after a pipelined request: it still waits.
            Ok(_) if down.buf.len() > down.head_len => return std::future::pending().await,
            _ => return,
        }
    }
}
