//! Response isolation between client connections: with an honest but sloppy upstream, no
//! byte of one request's answer ever reaches a request that came on another client
//! connection.
//!
//! Why it can go wrong: if an upstream sends bytes after the framed end of a response (a
//! body on a `HEAD`, 204 or 304 answer, or bytes beyond `Content-Length`) in a write of its
//! own, they can arrive after tokengate judged the connection clean and reused it, and are
//! then read as the answer to the next request on it. Were upstream connections shared by
//! client connections (as they were), that request could be anyone's. Here the late bytes
//! are a forged complete response, the worst case: read as an answer, it is served whole.
//!
//! Each scenario pairs one misbehaviour with one delay before the late write, on one of
//! tokengate's two ways to the upstream: the lean path (requests without a body) or hyper's
//! client (requests with one). Two client connections take turns, A (alice, a bearer
//! token, an authenticated route) and B (no credential, a public route): a response of one
//! naming a request of the other is an unauthenticated client reading an authenticated
//! user's answer, or the reverse. Every answer of the upstream, honest or late, names the
//! request it answers (in an `x-answers` header and in its body), so each client checks
//! that every response it gets names only its own requests.

mod common;

use bytes::Bytes;
use common::{Echo, Gate};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, IF_NONE_MATCH};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Requests per client and scenario; A and B alternate, so twice this many in all.
const REQUESTS: usize = 1_000;

/// How long after an answer the upstream sends its late bytes: at once (a second write
/// right after the first), and late enough that tokengate has moved on to other requests.
const DELAYS_MS: [u64; 3] = [0, 50, 400];

/// Every step (a connect, a request, a body) is bounded by this: a missing answer fails.
const LIMIT: Duration = Duration::from_secs(10);

const CONFIG: &str = r#"
tokens:
  prefix: "tg_"
abilities: [read]
default_abilities: [read]
routes:
  - path: /public/**
    auth: none
  - path: /**
    abilities: [read]
"#;

/// What the upstream does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sloppiness {
    /// A `HEAD` answered with `Content-Length: n` and then n body bytes, as an app does that
    /// runs its `GET` handler for `HEAD` (Python's `http.server` handlers often do). `GET`s
    /// between are answered properly.
    HeadWithBody,
    /// A 204 with `Content-Length: n`, then n body bytes.
    NoContentWithBody,
    /// A 304 to a conditional `GET`, with `Content-Length: n`, then n body bytes.
    NotModifiedWithBody,
    /// A body framed by `Content-Length`, then more bytes than it said.
    BeyondLength,
}

/// Which of tokengate's ways to the upstream the requests take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Requests without a body (`GET`, `HEAD`, `DELETE`, `POST` without a body).
    Lean,
    /// Requests with a body (`POST` with a few bytes), through hyper's client.
    Hyper,
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    sloppiness: Sloppiness,
    way: Way,
    delay: Duration,
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} via {:?}, late bytes after {} ms",
            self.sloppiness,
            self.way,
            self.delay.as_millis()
        )
    }
}

/// The two client connections. A's requests need alice's token; B's need nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    A,
    B,
}

impl Who {
    fn letter(self) -> char {
        match self {
            Who::A => 'a',
            Who::B => 'b',
        }
    }

    /// The path of request `seq`: unique, and naming the client (the upstream answers with
    /// `marker(letter, seq)` taken from it).
    fn path(self, seq: usize) -> String {
        match self {
            Who::A => format!("/private/a/{seq}"),
            Who::B => format!("/public/b/{seq}"),
        }
    }
}

/// How an answer names a request: `<a17>` is A's request 17.
fn marker(letter: char, seq: usize) -> String {
    format!("<{letter}{seq}>")
}

/// The requests named in `bytes`.
fn markers(bytes: &[u8]) -> Vec<(char, usize)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = bytes[from..].iter().position(|&b| b == b'<') {
        let start = from + at + 1;
        from = start;
        let Some(&letter @ (b'a' | b'b')) = bytes.get(start) else {
            continue;
        };
        let digits = &bytes[start + 1..];
        let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        if len == 0 || digits.get(len) != Some(&b'>') {
            continue;
        }
        let seq = std::str::from_utf8(&digits[..len])
            .ok()
            .and_then(|s| s.parse().ok())
            .expect("a run of ASCII digits of a small number");
        found.push((char::from(letter), seq));
    }
    found
}

impl Scenario {
    /// Request `seq` of client `who`. The methods vary where the misbehaviour allows, so
    /// that late bytes land on requests of every kind the way carries.
    fn request(
        &self,
        who: Who,
        seq: usize,
        host: &str,
        bearer: Option<&str>,
    ) -> Request<Full<Bytes>> {
        let even = seq.is_multiple_of(2);
        let method = match (self.way, self.sloppiness) {
            (Way::Hyper, _) => Method::POST,
            (Way::Lean, Sloppiness::HeadWithBody) if even => Method::HEAD,
            (Way::Lean, Sloppiness::NoContentWithBody) if even => Method::DELETE,
            (Way::Lean, Sloppiness::NoContentWithBody | Sloppiness::BeyondLength) if !even => {
                Method::POST
            }
            // HeadWithBody's odd requests, BeyondLength's even ones, and the conditional GETs.
            (Way::Lean, _) => Method::GET,
        };
        let body = match self.way {
            Way::Lean => Bytes::new(),
            Way::Hyper => Bytes::from(format!("payload of {}", marker(who.letter(), seq))),
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(who.path(seq))
            .header(HOST, host);
        if let Some(bearer) = bearer {
            builder = builder.header(AUTHORIZATION, bearer);
        }
        if self.way == Way::Hyper {
            builder = builder.header(CONTENT_TYPE, "text/plain");
        }
        if self.sloppiness == Sloppiness::NotModifiedWithBody {
            builder = builder.header(IF_NONE_MATCH, "\"v1\"");
        }
        builder.body(Full::new(body)).unwrap()
    }
}

/// A request as the upstream read it.
struct Asked {
    method: String,
    /// The marker of the request, from its path.
    marker: String,
}

/// What the upstream writes for `asked`: the answer at once, and the late bytes, if any,
/// in a write of their own after the scenario's delay.
fn answer(sloppiness: Sloppiness, asked: &Asked) -> (Vec<u8>, Option<Vec<u8>>) {
    let marker = &asked.marker;
    let forged = framed("200 OK", marker, format!("STRAY {marker}").as_bytes());
    let head_only = |status: &str, length: usize| {
        format!("HTTP/1.1 {status}\r\nContent-Length: {length}\r\nX-Answers: {marker}\r\n\r\n")
            .into_bytes()
    };
    match sloppiness {
        Sloppiness::HeadWithBody if asked.method == "HEAD" => {
            (head_only("200 OK", forged.len()), Some(forged))
        }
        Sloppiness::HeadWithBody => (honest(marker), None),
        Sloppiness::NoContentWithBody => (head_only("204 No Content", forged.len()), Some(forged)),
        Sloppiness::NotModifiedWithBody => {
            (head_only("304 Not Modified", forged.len()), Some(forged))
        }
        Sloppiness::BeyondLength => (honest(marker), Some(forged)),
    }
}

fn honest(marker: &str) -> Vec<u8> {
    framed("200 OK", marker, format!("ANSWER {marker}").as_bytes())
}

fn framed(status: &str, marker: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nX-Answers: {marker}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// An upstream on 127.0.0.1:0, keep-alive, that misbehaves as its scenario says. It
/// counts the connections it accepted.
struct Sloppy {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Sloppy {
    async fn start(scenario: Scenario) -> Sloppy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_sloppily(stream, scenario));
            }
        });
        Sloppy { addr, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Serves one connection. Late bytes must not hold up the next request (tokengate may send
/// one before they are due), so the reader only schedules writes, and a writer task makes
/// them in the order they fall due.
async fn serve_sloppily(stream: TcpStream, scenario: Scenario) {
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = stream.into_split();
    let (schedule, due) = mpsc::unbounded_channel();
    tokio::spawn(write_when_due(writer, due));
    let mut buf = Vec::new();
    while let Some(asked) = read_request(&mut reader, &mut buf).await {
        let (now, late) = answer(scenario.sloppiness, &asked);
        let at = Instant::now();
        if schedule.send((at, now)).is_err() {
            return;
        }
        if let Some(late) = late {
            let _ = schedule.send((at + scenario.delay, late));
        }
    }
}

/// Writes each scheduled piece when it falls due, each in a write (and flush) of its own.
async fn write_when_due(
    mut writer: OwnedWriteHalf,
    mut scheduled: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
) {
    let mut pending: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut open = true;
    loop {
        while pending
            .front()
            .is_some_and(|(due, _)| *due <= Instant::now())
        {
            let (_, bytes) = pending.pop_front().expect("a front was just seen");
            if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
                return;
            }
        }
        if !open && pending.is_empty() {
            return;
        }
        let wake = pending
            .front()
            .map_or_else(|| Instant::now() + LIMIT, |(due, _)| *due);
        tokio::select! {
            next = scheduled.recv(), if open => match next {
                // Late bytes due before an answer scheduled after them still go first.
                Some((due, bytes)) => {
                    let at = pending.partition_point(|(d, _)| *d <= due);
                    pending.insert(at, (due, bytes));
                }
                None => open = false,
            },
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Reads the next request (head, and a `Content-Length` body) from `reader`. `None` when
/// the connection ended, or the request is one this upstream cannot read.
async fn read_request(reader: &mut OwnedReadHalf, buf: &mut Vec<u8>) -> Option<Asked> {
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?;
    let mut segments = target.rsplit('/');
    let (seq, letter) = (segments.next()?, segments.next()?);
    let mut length = 0;
    for (name, value) in lines.filter_map(|line| line.split_once(':')) {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            // tokengate forwards the client's `Content-Length`; anything else is not
            // expected here, and closing makes it show as 502s.
            return None;
        }
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().ok()?;
        }
    }
    while buf.len() < end + length {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..end + length);
    Some(Asked {
        method,
        marker: format!("<{letter}{seq}>"),
    })
}

/// `future`, or a panic after `LIMIT`.
async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {LIMIT:?}"))
}

/// What one client got over a scenario.
#[derive(Debug, Default)]
struct Tally {
    /// Responses naming a request of the other client (the property broken).
    crossed: usize,
    /// Responses naming another request of this same client.
    confused: usize,
    /// Responses naming the request they answer, and nothing else.
    right: usize,
    /// Responses naming no request (tokengate's own answers).
    unnamed: usize,
    bad_gateway: usize,
    /// Requests that got no response, or a body cut short.
    failed: usize,
    /// New connections after the first (tokengate closed one, or it failed).
    reconnects: usize,
    /// A few of the crossed responses, as evidence.
    examples: Vec<String>,
}

/// A client: one keep-alive HTTP/1.1 connection at a time, replaced only when it ends.
struct Client {
    who: Who,
    gate: SocketAddr,
    host: String,
    bearer: Option<String>,
    sender: Option<SendRequest<Full<Bytes>>>,
    connected: bool,
    tally: Tally,
}

impl Client {
    fn new(who: Who, gate: SocketAddr, bearer: Option<String>) -> Self {
        Self {
            who,
            gate,
            host: gate.to_string(),
            bearer,
            sender: None,
            connected: false,
            tally: Tally::default(),
        }
    }

    /// The connection, opened anew if there is none or tokengate closed it.
    async fn connection(&mut self) -> &mut SendRequest<Full<Bytes>> {
        if let Some(sender) = self.sender.as_mut() {
            if bounded("a client connection's readiness", sender.ready())
                .await
                .is_ok()
            {
                return self.sender.as_mut().expect("just used");
            }
        }
        if self.connected {
            self.tally.reconnects += 1;
        }
        self.connected = true;
        let stream = bounded("connecting to tokengate", TcpStream::connect(self.gate))
            .await
            .expect("tokengate accepts connections");
        let _ = stream.set_nodelay(true);
        let (sender, connection) = bounded(
            "the client handshake",
            http1::handshake(TokioIo::new(stream)),
        )
        .await
        .expect("an HTTP/1.1 client connection");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        self.sender.insert(sender)
    }

    /// Sends request `seq` and checks whom its response names.
    async fn exchange(&mut self, scenario: &Scenario, seq: usize) {
        let request = scenario.request(self.who, seq, &self.host, self.bearer.as_deref());
        let what = format!("{scenario}: {:?}'s request {seq}", self.who);
        let sender = self.connection().await;
        let response = match bounded(&what, sender.send_request(request)).await {
            Ok(response) => response,
            Err(_) => {
                self.tally.failed += 1;
                self.sender = None;
                return;
            }
        };
        let (parts, body) = response.into_parts();
        let body = match bounded(&what, body.collect()).await {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                self.tally.failed += 1;
                self.sender = None;
                return;
            }
        };
        if parts.status == StatusCode::BAD_GATEWAY {
            self.tally.bad_gateway += 1;
        }
        let mut named = markers(&body);
        for value in parts.headers.get_all("x-answers") {
            named.extend(markers(value.as_bytes()));
        }
        let me = self.who.letter();
        if named.iter().any(|&(letter, _)| letter != me) {
            self.tally.crossed += 1;
            if self.tally.examples.len() < 3 {
                self.tally.examples.push(format!(
                    "{:?}'s request {seq} got {} with x-answers {:?} and body {:?}",
                    self.who,
                    parts.status,
                    parts
                        .headers
                        .get_all("x-answers")
                        .iter()
                        .collect::<Vec<_>>(),
                    String::from_utf8_lossy(&body),
                ));
            }
        } else if named.iter().any(|&(_, other)| other != seq) {
            self.tally.confused += 1;
        } else if named.is_empty() {
            self.tally.unnamed += 1;
        } else {
            self.tally.right += 1;
        }
    }
}

/// The result of one scenario.
struct Outcome {
    scenario: Scenario,
    a: Tally,
    b: Tally,
    upstream_connections: usize,
    took: Duration,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: A got B's: {}, B got A's: {} | own other request A/B: {}/{} | right A/B: {}/{} \
             | unnamed A/B: {}/{} | 502 A/B: {}/{} | failed A/B: {}/{} | reconnects A/B: {}/{} \
             | upstream connections: {} | {:.2?}",
            self.scenario,
            self.a.crossed,
            self.b.crossed,
            self.a.confused,
            self.b.confused,
            self.a.right,
            self.b.right,
            self.a.unnamed,
            self.b.unnamed,
            self.a.bad_gateway,
            self.b.bad_gateway,
            self.a.failed,
            self.b.failed,
            self.a.reconnects,
            self.b.reconnects,
            self.upstream_connections,
            self.took,
        )?;
        for example in self.a.examples.iter().chain(&self.b.examples) {
            write!(f, "\n    {example}")?;
        }
        Ok(())
    }
}

/// Runs one scenario on a tokengate and upstream of its own: A and B take turns, one
/// request each, `REQUESTS` times.
async fn run(scenario: Scenario) -> Outcome {
    let upstream = Sloppy::start(scenario).await;
    let echo = Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let gate = Gate::start_with_upstream(upstream.addr, echo, CONFIG).await;
    let token = gate.token("alice", &["read"]).await;
    let mut a = Client::new(Who::A, gate.addr, Some(format!("Bearer {token}")));
    let mut b = Client::new(Who::B, gate.addr, None);
    let started = Instant::now();
    for seq in 0..REQUESTS {
        a.exchange(&scenario, seq).await;
        b.exchange(&scenario, seq).await;
    }
    let outcome = Outcome {
        scenario,
        a: a.tally,
        b: b.tally,
        upstream_connections: upstream.accepted(),
        took: started.elapsed(),
    };
    // The client connections close first, so that tokengate has nothing left to drain.
    drop((a.sender, b.sender));
    bounded("stopping tokengate", gate.stop()).await;
    eprintln!("{outcome}");
    outcome
}

/// Runs `sloppiness` on each of `ways` with each delay, then asserts that no response
/// crossed between the clients (after all ran, so every scenario's numbers are printed).
async fn check(sloppiness: Sloppiness, ways: &[Way]) {
    let mut outcomes = Vec::new();
    for &way in ways {
        for delay in DELAYS_MS {
            let scenario = Scenario {
                sloppiness,
                way,
                delay: Duration::from_millis(delay),
            };
            outcomes.push(run(scenario).await);
        }
    }
    let crossed: Vec<String> = outcomes
        .iter()
        .filter(|o| o.a.crossed + o.b.crossed > 0)
        .map(Outcome::to_string)
        .collect();
    assert!(
        crossed.is_empty(),
        "responses reached a request of another client connection:\n{}",
        crossed.join("\n")
    );
    // Not vacuous: most requests were answered, each with its own answer.
    for outcome in &outcomes {
        for tally in [&outcome.a, &outcome.b] {
            assert!(
                tally.right >= REQUESTS / 2,
                "too few right answers: {outcome}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_after_a_head_answer_reaches_no_other_client() {
    check(Sloppiness::HeadWithBody, &[Way::Lean]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_after_a_204_reaches_no_other_client() {
    check(Sloppiness::NoContentWithBody, &[Way::Lean, Way::Hyper]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_after_a_304_reaches_no_other_client() {
    check(Sloppiness::NotModifiedWithBody, &[Way::Lean]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_beyond_the_content_length_reach_no_other_client() {
    check(Sloppiness::BeyondLength, &[Way::Lean, Way::Hyper]).await;
}
