//! The lean HTTP/1.1 exchange: the common proxied request (no body, no upgrade, plain TCP)
//! written and read on the request's own task, with no connection task between.
//!
//! hyper's client drives each connection from a task of its own and hands requests,
//! responses and body chunks across channels, with the wake-ups that go with them; that
//! task ran a third of tokengate's user-space instructions per request (docs/performance.md,
//! item 19). Here the request task writes the head, `httparse` (hyper's own parser) reads
//! the response head, and `LeanBody` streams the body straight from the socket. Everything
//! else (request bodies, `Expect`, upgrades, TLS, HTTP/2) still goes through hyper.
//!
//! The answer is read by the rules of `framing` (the head) and `chunked` (the body), the
//! same as hyper's client applies, so either path gives the same verdict on the same bytes.
//! A connection is reused only when its body was read exactly to its end, nothing came
//! after it, and the framing allows it.

use super::chunked::{Chunked, Decoded};
use super::framing::{self, Framing, Length};
use super::pool::Home;
use crate::headers::Added;
use bytes::{Buf, Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{request, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use hyper::body::{Body, Frame};
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::pin::pin;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Response heads larger than this are refused (hyper's client allows ~400 KB; nginx 4–8 KB).
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Headers a response may carry (as hyper's client), and how many fit the first attempt.
const MAX_HEADERS: usize = 100;
const FEW_HEADERS: usize = 24;
/// Room made for each read: heads and small bodies fit the smallest; a long body is read
/// in larger pieces (fewer system calls), up to the largest.
const READ_SIZE: usize = 8 * 1024;
const MAX_READ_SIZE: usize = 256 * 1024;

/// Why an exchange failed. `Unsent`: nothing of the response arrived and the connection
/// was pooled, so an idempotent request may be retried on a fresh one.
#[derive(Debug, thiserror::Error)]
pub(super) enum ExchangeError {
    #[error("the pooled connection had closed")]
    Unsent,
    #[error("no response head within the response timeout")]
    TimedOut,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("invalid response: {0}")]
    Invalid(&'static str),
}

/// An upstream connection and what has been read from it but not yet used.
pub(super) struct Conn {
    stream: TcpStream,
    read: BytesMut,
    write: Vec<u8>,
    /// It has served a request before (set when taken from the pool): it may have been
    /// closed by the upstream while idle.
    pooled: bool,
    /// The response timeout, one timer per connection for all its requests: moving a
    /// registered deadline later is one atomic store in tokio, where a timer per request
    /// is registered in and removed from the timer wheel each time. Out of its place (`None`)
    /// only while an exchange polls it.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Conn {
    pub(super) fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            read: BytesMut::new(),
            write: Vec::with_capacity(512),
            pooled: false,
            deadline: None,
        }
    }

    /// Whether an idle connection is still usable: nothing arrived on it since its last
    /// response, neither bytes nor the end of the connection. A real read probe (a peek on
    /// the socket), not tokio's readiness flag, which lags until its driver next runs: bytes
    /// already in the kernel's buffer are always seen.
    pub(super) fn still_idle(&mut self) -> bool {
        let mut probe = [MaybeUninit::<u8>::uninit(); 1];
        let peeked = socket2::SockRef::from(&self.stream).peek(&mut probe);
        matches!(peeked, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Marks a connection taken from a client's slot: it served a request before, so the
    /// upstream may have closed it while it was idle.
    pub(super) fn reused(mut self) -> Self {
        self.pooled = true;
        self
    }
}

/// Whether `lean` can carry this request: no body to stream, nothing to negotiate.
pub(super) fn eligible<B: Body>(request: &http::Request<B>) -> bool {
    request.body().is_end_stream() && !request.headers().contains_key(http::header::EXPECT)
}

/// Writes the request head on `conn` and reads the response head, within `timeout`. The
/// response's body streams from the connection afterwards (`LeanBody`).
pub(super) async fn exchange(
    mut conn: Conn,
    parts: &request::Parts,
    added: &Added<'_>,
    timeout: Duration,
) -> Result<Response<(Conn, Framing)>, ExchangeError> {
    let until = Instant::now() + timeout;
    let mut deadline = match conn.deadline.take() {
        Some(mut deadline) => {
            deadline.as_mut().reset(until);
            deadline
        }
        None => Box::pin(tokio::time::sleep_until(until)),
    };
    let head = {
        let send = send(&mut conn, parts, added);
        let mut send = pin!(send);
        std::future::poll_fn(|cx| match send.as_mut().poll(cx) {
            Poll::Ready(head) => Poll::Ready(head),
            Poll::Pending => match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(ExchangeError::TimedOut)),
                Poll::Pending => Poll::Pending,
            },
        })
        .await
    };
    conn.deadline = Some(deadline);
    let (response, framing) = head?;
    Ok(response.map(|()| (conn, framing)))
}

/// Writes the request head and reads the response head.
async fn send(
    conn: &mut Conn,
    parts: &request::Parts,
    added: &Added<'_>,
) -> Result<(Response<()>, Framing), ExchangeError> {
    encode_head(parts, added, &mut conn.write);
    if let Err(e) = conn.stream.write_all(&conn.write).await {
        return Err(if conn.pooled {
            ExchangeError::Unsent
        } else {
            e.into()
        });
    }
    let mut answered = false;
    loop {
        match parse_head(&mut conn.read, &parts.method)? {
            Some(Head::Final(response, framing)) => return Ok((response, framing)),
            Some(Head::Informational) => continue,
            None => {}
        }
        if conn.read.len() >= MAX_HEAD {
            return Err(ExchangeError::Invalid("response head too large"));
        }
        let read = read_more(conn).await;
        // A pooled connection that ends (or is reset) before a byte of the answer most
        // likely closed while idle: the request may not have been processed.
        match read {
            Ok(0) | Err(_) if conn.pooled && !answered => return Err(ExchangeError::Unsent),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(_) => answered = true,
            Err(e) => return Err(e.into()),
        }
    }
}

async fn read_more(conn: &mut Conn) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_more(&mut conn.stream, &mut conn.read, READ_SIZE, cx)).await
}

/// Reads what the socket has into `read`, with room for at least `room` bytes.
fn poll_read_more(
    stream: &mut TcpStream,
    read: &mut BytesMut,
    room: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    read.reserve(room);
    tokio_util::io::poll_read_buf(Pin::new(stream), cx, read)
}

/// The request line and headers (the client's, then tokengate's), as HTTP/1.1. The
/// request has no body, and its head says so itself rather than passing on the client's
/// `Content-Length`: a method that may carry a body gets `content-length: 0`, as from
/// hyper's client (some servers refuse a `POST` without a length), the others none.
fn encode_head(parts: &request::Parts, added: &Added<'_>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in parts.headers.iter().chain(added.iter()) {
        if name == CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless_method = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
    );
    if !bodiless_method {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A parsed response head.
pub(super) enum Head {
    /// The response, and how its body is framed.
    Final(Response<()>, Framing),
    /// A 1xx before the response (`100 Continue`, `103 Early Hints`): skipped.
    Informational,
}

/// Where the body decoder stands.
#[derive(Debug)]
pub(super) enum Decoder {
    /// This many bytes of a `Content-Length` body are still to come.
    Length(u64),
    Chunked(Chunked),
    /// The body ends when the upstream closes the connection.
    UntilClose,
    Done,
}

impl Decoder {
    pub(super) fn new(length: Length) -> Self {
        match length {
            Length::Known(n) => Decoder::Length(n),
            Length::Chunked => Decoder::Chunked(Chunked::new()),
            Length::UntilClose => Decoder::UntilClose,
        }
    }
}

/// Parses a response head from the front of `read`, removing it. `None`: incomplete.
pub(super) fn parse_head(
    read: &mut BytesMut,
    method: &Method,
) -> Result<Option<Head>, ExchangeError> {
    let Some(scan) = scan(read)? else {
        return Ok(None);
    };
    if scan.status.is_informational() && scan.status != StatusCode::SWITCHING_PROTOCOLS {
        read.advance(scan.len);
        return Ok(Some(Head::Informational));
    }
    // The header values share the head's bytes (as in hyper: no copy of a value).
    let head = read.split_to(scan.len).freeze();
    let mut headers = HeaderMap::with_capacity(scan.spans.len());
    for (name, value) in scan.spans {
        let name = HeaderName::from_bytes(&head[name])
            .map_err(|_| ExchangeError::Invalid("bad header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value))
            .map_err(|_| ExchangeError::Invalid("bad header value"))?;
        headers.append(name, value);
    }
    let framing = framing::framing(&mut headers, scan.status, method, scan.http10)
        .map_err(ExchangeError::Invalid)?;
    let mut response = Response::new(());
    *response.status_mut() = scan.status;
    *response.version_mut() = Version::HTTP_11;
    *response.headers_mut() = headers;
    Ok(Some(Head::Final(response, framing)))
}

/// A complete response head as `httparse` found it: its length, status, version, and
/// where each header's name and value lie.
struct Scan {
    len: usize,
    status: StatusCode,
    http10: bool,
    spans: Vec<(Range<usize>, Range<usize>)>,
}

const TOO_MANY: &str = "too many headers";

fn scan(buf: &[u8]) -> Result<Option<Scan>, ExchangeError> {
    // Most heads fit the small table, kept small as it is initialised on every parse.
    let mut slots = [httparse::EMPTY_HEADER; FEW_HEADERS];
    match scan_with(buf, &mut slots) {
        Err(ExchangeError::Invalid(TOO_MANY)) => {
            let mut slots = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
            scan_with(buf, &mut slots)
        }
        scanned => scanned,
    }
}

fn scan_with<'b>(
    buf: &'b [u8],
    slots: &mut [httparse::Header<'b>],
) -> Result<Option<Scan>, ExchangeError> {
    let mut response = httparse::Response::new(slots);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ExchangeError::Invalid(TOO_MANY)),
        Err(_) => return Err(ExchangeError::Invalid("malformed head")),
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(ExchangeError::Invalid("bad status"))?;
    let base = buf.as_ptr() as usize;
    let span = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        start..start + part.len()
    };
    let spans = response
        .headers
        .iter()
        .map(|h| (span(h.name.as_bytes()), span(h.value)))
        .collect();
    Ok(Some(Scan {
        len,
        status,
        http10: response.version == Some(0),
        spans,
    }))
}

/// What decoding found in the bytes read so far.
#[derive(Debug)]
pub(super) enum Step {
    Frame(Frame<Bytes>),
    NeedMore,
    Done,
}

/// Decodes the next frame of a body from `read`, consuming what it uses. Pure: the body
/// reads from the socket only when this asks for more.
pub(super) fn step(decoder: &mut Decoder, read: &mut BytesMut) -> Result<Step, ExchangeError> {
    match decoder {
        Decoder::Length(0) | Decoder::Done => {
            *decoder = Decoder::Done;
            Ok(Step::Done)
        }
        Decoder::Length(left) => {
            if read.is_empty() {
                return Ok(Step::NeedMore);
            }
            let n = usize::try_from(*left).map_or(read.len(), |left| left.min(read.len()));
            *left -= n as u64;
            Ok(Step::Frame(Frame::data(read.split_to(n).freeze())))
        }
        Decoder::UntilClose => {
            if read.is_empty() {
                return Ok(Step::NeedMore);
            }
            Ok(Step::Frame(Frame::data(read.split().freeze())))
        }
        Decoder::Chunked(chunked) => match chunked.decode(read).map_err(ExchangeError::Invalid)? {
            Decoded::Data(data) => Ok(Step::Frame(Frame::data(data))),
            Decoded::Trailers(trailers) => {
                // The trailers end the body: a client that has them may not ask for more.
                *decoder = Decoder::Done;
                Ok(Step::Frame(Frame::trailers(trailers)))
            }
            Decoded::NeedMore => Ok(Step::NeedMore),
            Decoded::Done => {
                *decoder = Decoder::Done;
                Ok(Step::Done)
            }
        },
    }
}

/// A response body read straight from its upstream connection. The connection goes back
/// to its client connection's slot when the body has been read to its end (or had none); a
/// body dropped half-read closes it.
pub(super) struct LeanBody {
    conn: Option<Conn>,
    decoder: Decoder,
    keep_alive: bool,
    home: Option<Home>,
}

impl LeanBody {
    pub(super) fn new(conn: Conn, framing: Framing, home: Home) -> Self {
        Self {
            conn: Some(conn),
            decoder: Decoder::new(framing.length),
            keep_alive: framing.keep_alive,
            home: Some(home),
        }
    }

    /// The body has ended: its connection is kept for the client's next request if it may
    /// serve again and nothing arrived beyond the body.
    fn finish(&mut self) {
        let (Some(mut conn), Some(home)) = (self.conn.take(), self.home.take()) else {
            return;
        };
        if self.keep_alive && conn.read.is_empty() {
            // An idle connection keeps no more than a small buffer, whatever the last
            // request head or body needed.
            if conn.read.capacity() > 2 * READ_SIZE {
                conn.read = BytesMut::new();
            }
            conn.write.shrink_to(READ_SIZE);
            home.put(conn, |dedicated| &dedicated.lean);
        }
    }
}

impl Body for LeanBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match step(&mut this.decoder, &mut conn.read) {
                Ok(Step::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(Step::Done) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let room = match this.decoder {
                Decoder::Length(left) => usize::try_from(left).unwrap_or(MAX_READ_SIZE),
                _ => MAX_READ_SIZE / 4,
            };
            let room = room.clamp(READ_SIZE, MAX_READ_SIZE);
            match poll_read_more(&mut conn.stream, &mut conn.read, room, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if matches!(this.decoder, Decoder::UntilClose) => {
                    this.decoder = Decoder::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    this.conn = None;
                    let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
                    return Poll::Ready(Some(Err(eof.into())));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decoder, Decoder::Length(0) | Decoder::Done)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.decoder {
            Decoder::Length(left) => hyper::body::SizeHint::with_exact(left),
            Decoder::Done => hyper::body::SizeHint::with_exact(0),
            _ => hyper::body::SizeHint::default(),
        }
    }
}

impl Drop for LeanBody {
    fn drop(&mut self) {
        // A body with nothing left (a 204, a HEAD, or one read to its last byte) is not
        // always polled to its end.
        if self.is_end_stream() {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head_of(response: &str, method: Method) -> Result<Option<Head>, ExchangeError> {
        parse_head(&mut BytesMut::from(response), &method)
    }

    fn framing_of(response: &str, method: Method) -> Result<Framing, ExchangeError> {
        match head_of(response, method)? {
            Some(Head::Final(_, framing)) => Ok(framing),
            _ => panic!("not a final response: {response:?}"),
        }
    }

    fn framed(length: Length, keep_alive: bool) -> Framing {
        Framing { length, keep_alive }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases: &[(&str, Method, Framing)] = &[
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Method::GET,
                framed(Length::Known(5), true),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n",
                Method::GET,
                framed(Length::Known(5), true),
            ),
            // Bodiless answers that announce a body: no body, and the connection is not
            // reused (a sloppy upstream sends that body after all).
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                Method::HEAD,
                framed(Length::Known(0), false),
            ),
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                Method::GET,
                framed(Length::Known(0), false),
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
                Method::GET,
                framed(Length::Known(0), false),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                Method::HEAD,
                framed(Length::Known(0), true),
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                Method::GET,
                framed(Length::Known(0), true),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Method::GET,
                framed(Length::Chunked, true),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
                Method::GET,
                framed(Length::Chunked, true),
            ),
            // A length beside a transfer coding: the coding wins, the connection is not reused.
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                Method::GET,
                framed(Length::Chunked, false),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                Method::GET,
                framed(Length::UntilClose, false),
            ),
            (
                "HTTP/1.1 200 OK\r\n\r\n",
                Method::GET,
                framed(Length::UntilClose, false),
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                Method::GET,
                framed(Length::Known(1), false),
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                Method::GET,
                framed(Length::Known(1), false),
            ),
            (
                "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n",
                Method::GET,
                framed(Length::Known(1), true),
            ),
            // A `close` is not undone by a later `keep-alive` (as in hyper's client).
            (
                "HTTP/1.0 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
                Method::GET,
                framed(Length::Known(1), false),
            ),
        ];
        for (response, method, expected) in cases {
            assert_eq!(
                framing_of(response, method.clone()).unwrap(),
                *expected,
                "{response:?}"
            );
        }
    }

    #[test]
    fn ambiguous_or_malformed_heads_are_refused() {
        for response in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5,\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(
                matches!(
                    head_of(response, Method::GET),
                    Err(ExchangeError::Invalid(_))
                ),
                "{response:?} was accepted"
            );
        }
    }

    #[test]
    fn heads_parse_whole_and_incomplete() {
        assert!(head_of("HTTP/1.1 200 OK\r\nContent-Le", Method::GET)
            .unwrap()
            .is_none());
        assert!(matches!(
            head_of(
                "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
                Method::GET
            ),
            Ok(Some(Head::Informational))
        ));
        let mut read = BytesMut::from(
            "HTTP/1.1 404 Not Found\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 2\r\n\r\nhi",
        );
        let Ok(Some(Head::Final(response, framing))) = parse_head(&mut read, &Method::GET) else {
            panic!("no response");
        };
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let values: Vec<_> = response.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(framing.length, Length::Known(2));
        assert_eq!(&read[..], b"hi", "the body stays in the buffer");
        // More headers than the small table holds: parsed with the large one.
        let many: String = (0..60).map(|i| format!("X-{i}: {i}\r\n")).collect();
        let response = format!("HTTP/1.1 200 OK\r\n{many}Content-Length: 0\r\n\r\n");
        let Ok(Some(Head::Final(response, _))) = head_of(&response, Method::GET) else {
            panic!("60 headers refused");
        };
        assert_eq!(response.headers().len(), 61);
        let too_many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: {i}\r\n"))
            .collect();
        let response = format!("HTTP/1.1 200 OK\r\n{too_many}\r\n");
        assert!(head_of(&response, Method::GET).is_err());
    }

    #[test]
    fn request_heads_are_http_1_1() {
        let request = http::Request::builder()
            .method(Method::POST)
            .uri("/a/b?c=d")
            .header("host", "app")
            .header("x-token-abilities", "read")
            .body(())
            .unwrap();
        let config =
            crate::config::Config::parse("upstream: http://127.0.0.1:1\nroutes:\n  - path: /**\n")
                .unwrap();
        let conn = crate::headers::ConnInfo::new("10.1.2.3:5555".parse().unwrap(), &[], false);
        let mut parts = request.into_parts().0;
        // The client's identity header is stripped, tokengate's own follow the client's.
        let added = crate::headers::prepare_request(&mut parts, &config, None, &conn);
        let mut out = Vec::new();
        encode_head(&parts, &added, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a/b?c=d HTTP/1.1\r\nhost: app\r\nx-forwarded-for: 10.1.2.3\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: app\r\ncontent-length: 0\r\n\r\n"
        );
        let get = http::Request::get("/").body(()).unwrap();
        let mut out = Vec::new();
        encode_head(&get.into_parts().0, &Added::default(), &mut out);
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
    }

    /// Decodes a whole body given in pieces, as the socket would deliver them.
    fn decode(
        length: Length,
        pieces: &[&[u8]],
    ) -> Result<(Vec<u8>, Option<HeaderMap>, BytesMut), ExchangeError> {
        let mut state = Decoder::new(length);
        let mut read = BytesMut::new();
        let (mut body, mut trailers) = (Vec::new(), None);
        let mut pieces = pieces.iter();
        loop {
            match step(&mut state, &mut read)? {
                Step::Frame(frame) => match frame.into_data() {
                    Ok(data) => {
                        assert!(!data.is_empty(), "empty data frame");
                        body.extend_from_slice(&data);
                    }
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
                Step::Done => return Ok((body, trailers, read)),
                Step::NeedMore => match pieces.next() {
                    Some(piece) => read.extend_from_slice(piece),
                    None => return Err(ExchangeError::Invalid("ran out")),
                },
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\nNEXT";
        let (body, trailers, rest) = decode(Length::Chunked, &[wire]).unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(trailers.unwrap()["x-sum"], "42");
        assert_eq!(
            &rest[..],
            b"NEXT",
            "bytes after the body are left for the caller"
        );
        let (body, trailers, _) = decode(Length::Chunked, &[b"0\r\n\r\n"]).unwrap();
        assert!(body.is_empty() && trailers.is_none());
        for bad in [
            &b"5\r\nhelloXX0\r\n\r\n"[..],
            b"zz\r\n",
            b"ffffffffffffffffff\r\n",
        ] {
            assert!(decode(Length::Chunked, &[bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let (body, _, rest) = decode(Length::Known(5), &[b"hel", b"loEXTRA"]).unwrap();
        assert_eq!(body, b"hello");
        assert_eq!(&rest[..], b"EXTRA");
        let (body, _, _) = decode(Length::Known(0), &[]).unwrap();
        assert!(body.is_empty());
    }

    fn chunked(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut wire = Vec::new();
        for chunk in chunks.iter().filter(|c| !c.is_empty()) {
            wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        wire
    }

    proptest! {
        /// Whatever an upstream sends, reading it never panics: a head is parsed, refused
        /// or waited for, and a body decoder (of any framing) consumes, refuses or waits.
        #[test]
        fn arbitrary_answers_never_panic(
            prefix in prop::sample::select(vec![
                "", "HTTP/1.1 200 OK\r\n", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                "HTTP/1.0 204 X\r\nContent-Length: 3\r\n\r\n",
            ]),
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut wire = prefix.as_bytes().to_vec();
            wire.extend_from_slice(&bytes);
            let mut read = BytesMut::from(&wire[..]);
            let _ = parse_head(&mut read, &Method::GET);
            for state in [Length::Chunked, Length::Chunked, Length::Known(7), Length::UntilClose] {
                let mut read = BytesMut::from(&bytes[..]);
                let mut state = Decoder::new(state);
                for _ in 0..64 {
                    match step(&mut state, &mut read) {
                        Ok(Step::Frame(_)) => continue,
                        _ => break,
                    }
                }
            }
        }

        /// However the bytes are split across reads, the decoded body is what was encoded,
        /// and nothing after the body is consumed.
        #[test]
        fn chunked_decoding_is_independent_of_read_boundaries(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut wire = chunked(&chunks);
            wire.extend_from_slice(b"HTTP/1.1");
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len())).collect();
            points.sort_unstable();
            points.dedup();
            let mut pieces = Vec::new();
            let mut start = 0;
            for p in points.into_iter().chain([wire.len()]) {
                pieces.push(&wire[start..p]);
                start = p;
            }
            let (body, _, rest) = decode(Length::Chunked, &pieces).unwrap();
            prop_assert_eq!(body, chunks.concat());
            // What was not yet read stays unread, so the leftover is a prefix of "HTTP/1.1".
            prop_assert!(b"HTTP/1.1".starts_with(&rest));
        }
    }
}
