//! Differential test of the two upstream paths: the same answer bytes, split at random
//! points, are read by the lean path's parser and decoder (`lean`, `chunked`) and by hyper's
//! HTTP/1.1 client (over `tokio::io::duplex`, with tokengate's settings, its verdict held to
//! `framing::check` as the hyper path does). Both must give the same verdict: refused, or
//! the same status, headers, body bytes, trailers and decision to reuse the connection.
//!
//! `cargo test --lib upstream::differential` runs a few hundred generated answers;
//! `scripts/fuzz-upstream.sh` runs a million (`PROPTEST_CASES`). Every divergence found is
//! kept below as a regression case.

use super::framing;
use super::lean::{self, Decoder, Head, Step};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a client of tokengate would get from an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// No response head passed on (a 502).
    Refused,
    Answered {
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
        trailers: Option<Vec<(String, Vec<u8>)>>,
        ending: Ending,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The body ended as framed; the connection serves another request or not.
    Complete { reuse: bool },
    /// The body broke off (malformed, or the connection ended early).
    Cut,
}

fn fields(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// The lean path's verdict: its head loop and body loop over the pieces as they would
/// arrive, the connection ending after the last. A connection is reused when its body ended
/// as framed before the end of the connection, the framing allows it, and nothing came
/// after the body.
fn lean_verdict(method: &Method, pieces: &[Vec<u8>]) -> Verdict {
    let mut read = BytesMut::new();
    let mut pieces = pieces.iter();
    let (response, framing) = loop {
        match lean::parse_head(&mut read, method) {
            Ok(Some(Head::Final(response, framing))) => break (response, framing),
            Ok(Some(Head::Informational)) => continue,
            Ok(None) => {}
            Err(_) => return Verdict::Refused,
        }
        if read.len() >= lean::MAX_HEAD {
            return Verdict::Refused;
        }
        match pieces.next() {
            Some(piece) => read.extend_from_slice(piece),
            None => return Verdict::Refused,
        }
    };
    let mut decoder = Decoder::new(framing.length);
    let (mut body, mut trailers) = (Vec::new(), None);
    let ending = loop {
        match lean::step(&mut decoder, &mut read) {
            Ok(Step::Frame(frame)) => match frame.into_data() {
                Ok(data) => body.extend_from_slice(&data),
                Err(frame) => trailers = frame.into_trailers().ok().map(|t| fields(&t)),
            },
            Ok(Step::Done) => {
                let rest = pieces.any(|p| !p.is_empty());
                break Ending::Complete {
                    reuse: framing.keep_alive && read.is_empty() && !rest,
                };
            }
            Ok(Step::NeedMore) => match pieces.next() {
                Some(piece) => read.extend_from_slice(piece),
                None if matches!(decoder, Decoder::UntilClose) => {
                    break Ending::Complete { reuse: false }
                }
                None => break Ending::Cut,
            },
            Err(_) => break Ending::Cut,
        }
    };
    Verdict::Answered {
        status: response.status().as_u16(),
        headers: fields(response.headers()),
        body,
        trailers,
        ending,
    }
}

/// hyper's verdict, with tokengate's client settings, over a connection whose reads
/// return the pieces one by one; once the client waits for more than there is, the
/// connection ends. The reuse decision is read off the connection once everything is quiet,
/// before it ends.
async fn hyper_verdict(method: &Method, pieces: &[Vec<u8>]) -> Verdict {
    let (io, end) = Scripted::new(pieces);
    let Ok((mut sender, connection)) = super::http1_builder()
        .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await
    else {
        panic!("a handshake needs no I/O");
    };
    tokio::spawn(connection);
    let mut end = Some(end);
    let request = Request::builder()
        .method(method.clone())
        .uri("/")
        .header(http::header::HOST, "upstream")
        .body(Empty::new())
        .expect("a valid request");
    let response = match settle(sender.send_request(request), &mut end).await {
        Ok(response) => response,
        Err(_) => return Verdict::Refused,
    };
    let (mut parts, mut body) = response.into_parts();
    let Ok(keep) = framing::check(method, &mut parts) else {
        return Verdict::Refused;
    };
    let (mut data, mut trailers) = (Vec::new(), None);
    let ending = loop {
        match settle(body.frame(), &mut end).await {
            None => {
                let reuse = end.is_some() && {
                    quiet().await;
                    keep && !sender.is_closed() && sender.is_ready()
                };
                break Ending::Complete { reuse };
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(chunk) => data.extend_from_slice(&chunk),
                Err(frame) => trailers = frame.into_trailers().ok().map(|t| fields(&t)),
            },
            Some(Err(_)) => break Ending::Cut,
        }
    };
    Verdict::Answered {
        status: parts.status.as_u16(),
        headers: fields(&parts.headers),
        body: data,
        trailers,
        ending,
    }
}

/// `step`'s output, or, if it waits for more than the pieces hold, the connection's end
/// first (once, through `end`).
async fn settle<F: Future>(step: F, end: &mut Option<End>) -> F::Output {
    let mut step = pin!(step);
    if let Ok(out) = tokio::time::timeout(Duration::from_millis(1), &mut step).await {
        return out;
    }
    if let Some(end) = end.take() {
        end.now();
    }
    step.await
}

/// Lets every task run until none can: the runtime's clock is paused, so a sleep ends only
/// once everything else is idle (no other timer runs here).
async fn quiet() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// A connection whose reads, once the request was written, return the given pieces one at
/// a time (or as much of one as fits), then wait until it is ended, then report its end.
/// Writes are taken and dropped.
struct Scripted {
    pieces: VecDeque<Bytes>,
    /// The request was written: the answer may come.
    asked: bool,
    /// A read waiting for the request to be written.
    reader: Option<Waker>,
    ended: Arc<Mutex<(bool, Option<Waker>)>>,
}

/// Ends a `Scripted` connection.
struct End(Arc<Mutex<(bool, Option<Waker>)>>);

impl End {
    fn now(self) {
        let mut ended = self.0.lock().unwrap();
        ended.0 = true;
        if let Some(waker) = ended.1.take() {
            waker.wake();
        }
    }
}

impl Scripted {
    fn new(pieces: &[Vec<u8>]) -> (Self, End) {
        let ended = Arc::new(Mutex::new((false, None)));
        let pieces = pieces.iter().map(|p| Bytes::copy_from_slice(p)).collect();
        (
            Self {
                pieces,
                asked: false,
                reader: None,
                ended: Arc::clone(&ended),
            },
            End(ended),
        )
    }
}

impl AsyncRead for Scripted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.asked {
            self.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if let Some(piece) = self.pieces.front_mut() {
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece.split_to(n));
            if piece.is_empty() {
                self.pieces.pop_front();
            }
            return Poll::Ready(Ok(()));
        }
        let mut ended = self.ended.lock().unwrap();
        if ended.0 {
            return Poll::Ready(Ok(()));
        }
        ended.1 = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.asked = true;
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

/// Both verdicts for one answer, split into `pieces`.
fn verdicts(
    rt: &tokio::runtime::Runtime,
    method: &Method,
    pieces: &[Vec<u8>],
) -> (Verdict, Verdict) {
    let lean = lean_verdict(method, pieces);
    let hyper = rt.block_on(hyper_verdict(method, pieces));
    (lean, hyper)
}

fn split(wire: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|&c| c % (wire.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut pieces = Vec::new();
    let mut start = 0;
    for p in points.into_iter().chain([wire.len()]) {
        if p > start {
            pieces.push(wire[start..p].to_vec());
            start = p;
        }
    }
    pieces
}

/// Answers that once gave different verdicts, or mark a rule both paths must keep.
#[test]
fn known_answers_get_one_verdict() {
    let rt = runtime();
    let cases: &[(&str, &[u8])] = &[
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nA: b\r\n\r\n"),
        ("GET", b"HTTP/1.1 200 OK\r\n\r\nuntil the end"),
        // hyper relays an unasked-for 101; tokengate refuses it on both paths.
        ("GET", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"),
        // hyper reads `chunked` before another coding as raw bytes to the end.
        ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n0\r\n\r\n"),
        // The lean path decoded this as chunked; hyper refuses it (RFC 9112 §6.1).
        ("GET", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        // A later `keep-alive` does not undo a `close`.
        ("GET", b"HTTP/1.0 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx"),
        // The lean path skipped an empty list element.
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5,\r\n\r\nhello"),
        // Chunk size lines httparse took and hyper does not.
        ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n"),
        ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000000005\r\nhello\r\n0\r\n\r\n"),
        ("GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n"),
        // More trailer fields than the lean path's small table held.
        ("GET", &many_trailers(30)),
        ("GET", &many_trailers(101)),
        // A custom reason phrase: the client gets the status's own on both paths.
        ("GET", b"HTTP/1.1 200 Fine\r\nContent-Length: 0\r\n\r\n"),
    ];
    for (method, wire) in cases {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        for cuts in [&[][..], &[1, 17, 40], &[5, 6, 7, 8, 9, 30, 31, 32, 33]] {
            let pieces = split(wire, cuts);
            let (lean, hyper) = verdicts(&rt, &method, &pieces);
            assert_eq!(
                lean,
                hyper,
                "{method} {:?} split at {cuts:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }
}

fn many_trailers(n: usize) -> Vec<u8> {
    let mut wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n".to_vec();
    for i in 0..n {
        wire.extend_from_slice(format!("T-{i}: {i}\r\n").as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
    wire
}

// ---- generated answers ----

/// `parts` joined.
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn status_line() -> impl Strategy<Value = Vec<u8>> {
    let version = prop_oneof![
        12 => Just(&b"HTTP/1.1"[..]),
        3 => Just(&b"HTTP/1.0"[..]),
        1 => prop::sample::select(vec![&b"http/1.1"[..], b"HTTP/1.2", b"HTTP/1.1 "]),
    ];
    let status = prop_oneof![
        10 => Just(&b"200"[..]),
        6 => prop::sample::select(vec![&b"201"[..], b"204", b"206", b"304", b"404", b"500"]),
        1 => prop::sample::select(vec![&b"101"[..], b"100", b"103", b"199", b"099", b"999", b"20"]),
    ];
    let reason = prop_oneof![
        10 => Just(&b" OK"[..]),
        1 => prop::sample::select(vec![&b""[..], b" ", b" Fine\x80", b"  OK", b" O\rK"]),
    ];
    (version, status, reason).prop_map(|(v, s, r)| cat(&[v, b" ", s, r, b"\r\n"]))
}

fn header() -> impl Strategy<Value = Vec<u8>> {
    let length = prop::sample::select(vec![
        &b"0"[..],
        b"1",
        b"5",
        b"5",
        b"7",
        b"05",
        b"+5",
        b"5, 5",
        b"5,5",
        b"5,",
        b",5",
        b"5, 6",
        b" 5 ",
        b"",
        b"x",
        b"18446744073709551616",
        b"9",
    ]);
    let coding = prop::sample::select(vec![
        &b"chunked"[..],
        b"chunked",
        b"Chunked",
        b" chunked ",
        b"gzip, chunked",
        b"chunked, gzip",
        b"identity",
        b"chunked, identity",
        b"chunked,",
        b",chunked",
        b"",
        b"gzip",
        b"chunked\x80",
    ]);
    let connection = prop::sample::select(vec![
        &b"close"[..],
        b"keep-alive",
        b"Keep-Alive",
        b"close, keep-alive",
        b"keep-alive, close",
        b"upgrade",
        b"x",
        b"",
        b"clos\x80",
    ]);
    let other = prop::sample::select(vec![
        &b"X-A: 1"[..],
        b"x-a: 2",
        b"Trailer: T-1",
        b"Content-Type: text/plain",
        b"Upgrade: websocket",
        b"Keep-Alive: timeout=5",
        b" folded",
        b"X-B : 1",
        b"X-C:\t1\t",
        b"X-D: a\x7fb",
        b"X-E: \xff",
        b"X-F:",
        b"Bad Name: 1",
        b": empty",
        b"X-G: a\rb",
    ]);
    let benign = prop::sample::select(vec![
        &b"X-A: 1"[..],
        b"Content-Type: text/plain",
        b"Trailer: T-1",
        b"Connection: close",
        b"Connection: keep-alive",
    ]);
    prop_oneof![
        2 => length.prop_map(|v| cat(&[b"Content-Length: ", v])),
        2 => coding.prop_map(|v| cat(&[b"Transfer-Encoding: ", v])),
        2 => connection.prop_map(|v| cat(&[b"Connection: ", v])),
        4 => benign.prop_map(<[u8]>::to_vec),
        1 => other.prop_map(<[u8]>::to_vec),
    ]
    .prop_map(|line| cat(&[&line, b"\r\n"]))
}

fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    let ext = prop::sample::select(vec![
        "",
        "",
        "",
        ";a=b",
        ";a=\"x;y\"",
        "; ",
        "\t;x",
        ";\n",
        " ",
        "  ;",
        "x",
        ";a\r",
    ]);
    let chunk = (0usize..12, ext, any::<bool>(), any::<bool>());
    let trailer = prop::sample::select(vec![
        "T-1: a",
        "t-2: b",
        "Bad Name: c",
        " folded",
        "T-3:",
        "T-4: a\nT-5: b",
    ]);
    (
        proptest::collection::vec(chunk, 0..4),
        proptest::collection::vec(trailer, 0..3),
        prop_oneof![6 => Just(true), 1 => Just(false)],
    )
        .prop_map(|(chunks, trailers, finished)| {
            let mut wire = Vec::new();
            for (size, ext, upper, padded) in chunks {
                let mut line = format!("{size:x}");
                if upper {
                    line = line.to_uppercase();
                }
                if padded {
                    line.insert_str(0, "00");
                }
                wire.extend_from_slice(line.as_bytes());
                wire.extend_from_slice(ext.as_bytes());
                wire.extend_from_slice(b"\r\n");
                wire.extend(std::iter::repeat_n(b'd', size));
                wire.extend_from_slice(b"\r\n");
            }
            if finished {
                wire.extend_from_slice(b"0\r\n");
                for trailer in trailers {
                    wire.extend_from_slice(trailer.as_bytes());
                    wire.extend_from_slice(b"\r\n");
                }
                wire.extend_from_slice(b"\r\n");
            }
            wire
        })
}

fn answer() -> impl Strategy<Value = Vec<u8>> {
    let interim = prop_oneof![
        8 => Just(&b""[..]),
        1 => Just(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]),
        1 => Just(&b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"[..]),
    ];
    let bytes = || {
        proptest::collection::vec(
            prop::sample::select(vec![b'b', b'\r', b'\n', b'0', b'H']),
            0..12,
        )
    };
    // Mostly a framing and a body that agree (the paths must agree on what passes), else
    // anything.
    let framed = prop_oneof![
        4 => (0usize..16, 0usize..4).prop_map(|(n, off)| {
            let body = vec![b'b'; (n + off).saturating_sub(1)];
            (format!("Content-Length: {n}\r\n").into_bytes(), body)
        }),
        4 => chunked_body().prop_map(|body| (b"Transfer-Encoding: chunked\r\n".to_vec(), body)),
        1 => bytes().prop_map(|body| (Vec::new(), body)),
        2 => (header(), prop_oneof![chunked_body(), bytes()]),
    ];
    let extra = prop_oneof![
        6 => Just(&b""[..]),
        1 => prop::sample::select(vec![&b"X"[..], b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]),
    ];
    (
        interim,
        status_line(),
        framed,
        proptest::collection::vec(header(), 0..3),
        extra,
    )
        .prop_map(|(interim, status, (framing, body), headers, extra)| {
            let mut wire = interim.to_vec();
            wire.extend_from_slice(&status);
            wire.extend_from_slice(&framing);
            for h in headers {
                wire.extend_from_slice(&h);
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(&body);
            wire.extend_from_slice(extra);
            wire
        })
}

/// A byte changed, inserted or removed somewhere, or nothing.
fn mutated(wire: Vec<u8>, at: usize, how: u8, byte: u8) -> Vec<u8> {
    let mut wire = wire;
    if wire.is_empty() {
        return wire;
    }
    let at = at % wire.len();
    match how % 12 {
        0 => wire[at] = byte,
        1 => wire.insert(at, byte),
        2 => {
            wire.remove(at);
        }
        _ => {}
    }
    wire
}

proptest! {
    #[test]
    fn both_paths_give_one_verdict(
        wire in answer(),
        method in prop::sample::select(vec!["GET", "GET", "HEAD", "POST"]),
        mutation in (any::<usize>(), any::<u8>(), prop::sample::select(vec![b'\r', b'\n', b' ', b';', b'0', b'a', b'\x00', b'\x80', b','])),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let wire = mutated(wire, mutation.0, mutation.1, mutation.2);
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let pieces = split(&wire, &cuts);
        thread_local! { static RUNTIME: tokio::runtime::Runtime = runtime(); }
        let (lean, hyper) = RUNTIME.with(|rt| verdicts(rt, &method, &pieces));
        prop_assert_eq!(lean, hyper, "{} {:?} in {:?}", method, String::from_utf8_lossy(&wire), pieces.iter().map(|p| p.len()).collect::<Vec<_>>());
    }
}
