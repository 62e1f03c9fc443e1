//! The fast path's side of a dev server's answer: its head read and edited
//! for the client, its framing, and its body passed on as framed.

use bytes::Buf as _;
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

/// Sends `request` on `up` and reads the answer's head. `Ok(None)`: the
/// connection closed before a byte of the answer came. `Err(())`: no
/// usable answer (broken, not HTTP/1, framed in a way this path does not
/// take, an upgrade nobody asked for). Else the framing, whether the
/// connection can serve another request, and the head for the client.
pub(super) async fn exchange_once(
    up: &mut Upstream,
    request: &[u8],
    head_only: bool,
) -> Result<Option<(Framing, bool, Vec<u8>)>, ()> {
    if up.tcp.write_all(request).await.is_err() {
        return Ok(None);
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
                    return Err(());
                }
                if code < 200 {
                    // Informational: dropped, the final answer follows.
                    up.buf.advance(n);
                    continue;
                }
                let answer = edit_answer(&resp, head_only)?;
                up.buf.advance(n);
                return Ok(Some(answer));
            }
            Ok(httparse::Status::Partial) if up.buf.len() < MAX_HEAD => {}
            _ => return Err(()),
        }
        up.buf.reserve(16 * 1024);
        match up.tcp.read_buf(&mut up.buf).await {
            Ok(n) if n > 0 => received = true,
            _ if !received => return Ok(None),
            _ => return Err(()),
        }
    }
}

/// The answer's framing, whether its connection may be kept, and its head
/// for the client: hop-by-hop headers dropped (and those its `Connection`
/// lists), `Transfer-Encoding: chunked` kept for a chunked body, which is
/// passed on as it came.
pub(super) fn edit_answer(
    resp: &httparse::Response<'_, '_>,
    head_only: bool,
) -> Result<(Framing, bool, Vec<u8>), ()> {
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
    let mut head = Vec::with_capacity(1024);
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
        push_header(&mut head, name.as_bytes(), h.value);
    }
    if framing == Framing::Chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let keep = !close && framing != Framing::Close;
    Ok((framing, keep, head))
}

/// Passes a body of `n` bytes after the head in `out`.
pub(super) async fn pass_length(
    io: &mut Counted,
    up: &mut Upstream,
    out: &mut Vec<u8>,
    n: u64,
    down: &prometheus_client::metrics::counter::Counter,
) -> bool {
    let mut left = n;
    let first = up
        .buf
        .len()
        .min(usize::try_from(left).unwrap_or(usize::MAX));
    out.extend_from_slice(&up.buf[..first]);
    up.buf.advance(first);
    left -= first as u64;
    if io.write_all(out).await.is_err() {
        return false;
    }
    while left > 0 {
        up.buf.reserve(64 * 1024);
        match up.tcp.read_buf(&mut up.buf).await {
            Ok(r) if r > 0 => {}
            _ => return false,
        }
        let take = up
            .buf
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        if io.write_all(&up.buf[..take]).await.is_err() {
            return false;
        }
        up.buf.advance(take);
        left -= take as u64;
    }
    down.inc_by(n);
    true
}

/// Passes a chunked body after the head in `out`, chunk by chunk as it
/// came (extensions too), its trailers dropped.
pub(super) async fn pass_chunked(
    io: &mut Counted,
    up: &mut Upstream,
    out: &mut Vec<u8>,
    down: &prometheus_client::metrics::counter::Counter,
) -> bool {
    let mut total = 0u64;
    loop {
        // The size line.
        let (used, size) = loop {
            match httparse::parse_chunk_size(&up.buf) {
                Ok(httparse::Status::Complete(found)) => break found,
                Ok(httparse::Status::Partial) if up.buf.len() < MAX_CHUNK_LINE => {
                    if !fill(up).await {
                        return false;
                    }
                }
                _ => return false,
            }
        };
        if size == 0 {
            up.buf.advance(used);
            // The trailer section: lines up to an empty one, dropped.
            loop {
                match up.buf.windows(2).position(|w| w == b"\r\n") {
                    Some(0) => {
                        up.buf.advance(2);
                        break;
                    }
                    Some(i) => up.buf.advance(i + 2),
                    None if up.buf.len() < MAX_HEAD => {
                        if !fill(up).await {
                            return false;
                        }
                    }
                    None => return false,
                }
            }
            out.extend_from_slice(b"0\r\n\r\n");
            if io.write_all(out).await.is_err() {
                return false;
            }
            down.inc_by(total);
            return true;
        }
        out.extend_from_slice(&up.buf[..used]);
        up.buf.advance(used);
        total = total.saturating_add(size);
        let mut left = size;
        while left > 0 {
            if up.buf.is_empty() {
                if io.write_all(out).await.is_err() {
                    return false;
                }
                out.clear();
                if !fill(up).await {
                    return false;
                }
            }
            let take = up
                .buf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            out.extend_from_slice(&up.buf[..take]);
            up.buf.advance(take);
            left -= take as u64;
        }
        // The chunk's own line end.
        while up.buf.len() < 2 {
            if !fill(up).await {
                return false;
            }
        }
        if &up.buf[..2] != b"\r\n" {
            return false;
        }
        up.buf.advance(2);
        out.extend_from_slice(b"\r\n");
        if out.len() >= 64 * 1024 {
            if io.write_all(out).await.is_err() {
                return false;
            }
            out.clear();
        }
    }
}

/// Passes a body that ends when the dev server closes its connection.
pub(super) async fn pass_to_close(
    io: &mut Counted,
    up: &mut Upstream,
    out: &mut Vec<u8>,
    down: &prometheus_client::metrics::counter::Counter,
) -> bool {
    let mut total = up.buf.len() as u64;
    out.extend_from_slice(&up.buf);
    up.buf.clear();
    if io.write_all(out).await.is_err() {
        return false;
    }
    loop {
        up.buf.reserve(64 * 1024);
        match up.tcp.read_buf(&mut up.buf).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return false,
        }
        total += up.buf.len() as u64;
        if io.write_all(&up.buf).await.is_err() {
            return false;
        }
        up.buf.clear();
    }
    down.inc_by(total);
    true
}

/// Reads more from the dev server; false at its end or on an error.
async fn fill(up: &mut Upstream) -> bool {
    up.buf.reserve(16 * 1024);
    matches!(up.tcp.read_buf(&mut up.buf).await, Ok(n) if n > 0)
}
