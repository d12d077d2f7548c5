//! The protected app: the connections to it and the request rewrite that points a request
//! at it. Bodies stream both ways, frame by frame and trailers included; nothing is buffered.
//!
//! Each server worker owns one `Upstream`, so its connections live on that worker's
//! runtime and a request never hops threads. Towards an `https://` upstream every
//! connection is TLS (`config.upstream_tls`, server name the upstream's host).
//!
//! - HTTP/1.1 (the default): keep-alive connections, each dedicated to the client
//!   connection it served (`pool`). A connection is kept when the response body has been
//!   fully read (see `UpstreamBody`) and its framing leaves nothing in doubt (`framing`), so
//!   a kept connection is always free for that client's next request.
//! - HTTP/2 with prior knowledge (`upstream_http2`; h2c, or h2 over TLS), for gRPC: one
//!   shared, multiplexed connection per worker, opened on first use and again after it
//!   closed.
//!
//! Upgrades (WebSocket) always go over an HTTP/1.1 connection of their own.
//!
//! Over plain HTTP/1.1, a request without a body (most API calls) takes the `lean` path:
//! written and read on the request's task, with a pool of its own; the rest goes through
//! hyper's client.

mod chunked;
#[cfg(test)]
mod differential;
mod framing;
mod lean;
mod pool;

pub use pool::Dedicated;

use crate::body::Outbound;
use crate::config::{Config, UpstreamTarget};
use crate::error::Rejection;
use crate::headers::Added;
use crate::streams::Watch;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, TE};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderMap, HeaderValue, Request, Response, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

type Sender = http1::SendRequest<Outbound>;
type Http2Sender = http2::SendRequest<Outbound>;

/// An HTTP/1.1 connection of hyper's client: its sender, and the task that drives it,
/// which is aborted (closing the connection) when this is dropped instead of kept. A
/// connection left in the middle of a request (a body that failed, timed out or was cut)
/// would otherwise wait on the upstream for ever.
struct Client1 {
    sender: Sender,
    task: tokio::task::AbortHandle,
}

impl Drop for Client1 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Upstream {
    dialer: Arc<Dialer>,
    /// `Host` for requests that came without one (HTTP/1.0).
    host_value: HeaderValue,
    /// What this upstream's idle connections, kept by client connections, count against.
    owner: Arc<pool::Owner>,
    response_timeout: Duration,
    /// The shared HTTP/2 connection, when the upstream speaks HTTP/2.
    http2: Option<Arc<Mutex<Shared>>>,
}

/// Opens connections to the upstream: TCP, then TLS for an `https://` upstream, then the
/// HTTP handshake.
struct Dialer {
    target: UpstreamTarget,
    host: String,
    port: u16,
    connect_timeout: Duration,
    tls: Option<Tls>,
}

struct Tls {
    /// ALPN as configured: `h2` for an HTTP/2 upstream, else `http/1.1`.
    connector: TlsConnector,
    /// ALPN `http/1.1`, for upgrades (the same config when the upstream speaks HTTP/1.1).
    upgrade: TlsConnector,
    /// The upstream's host, as the certificate must name it; `None` if it cannot be one.
    server_name: Option<ServerName<'static>>,
}

/// The state of the shared HTTP/2 connection.
struct Shared {
    state: State,
    /// Numbers the connections, so a failed one is dropped only if it is still the current.
    generation: u64,
}

/// What a request waiting for a connection being opened gets: the sender and its
/// generation, or why there is none.
type Opened = Option<Result<(Http2Sender, u64), UpstreamError>>;

enum State {
    Down,
    /// A task is opening a connection; the receiver tells when it is done.
    Connecting(watch::Receiver<Opened>),
    Up(Http2Sender, u64),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Upstream {
    pub fn new(config: &Config) -> Self {
        let target = config.upstream.clone();
        let host = target
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let https = target.scheme == Scheme::HTTPS;
        let port = target
            .authority
            .port_u16()
            .unwrap_or(if https { 443 } else { 80 });
        let host_value = HeaderValue::from_str(target.authority.as_str())
            .expect("an authority is a valid header value");
        let tls = config
            .upstream_tls
            .as_ref()
            .filter(|_| https)
            .map(|client| {
                let server_name = ServerName::try_from(host.clone()).ok();
                if server_name.is_none() {
                    tracing::error!(upstream = %target, "the upstream host cannot be a TLS server name");
                }
                let upgrade = if client.alpn_protocols == [b"http/1.1".to_vec()] {
                    Arc::clone(client)
                } else {
                    let mut http1 = rustls::ClientConfig::clone(client);
                    http1.alpn_protocols = vec![b"http/1.1".to_vec()];
                    Arc::new(http1)
                };
                Tls {
                    connector: TlsConnector::from(Arc::clone(client)),
                    upgrade: TlsConnector::from(upgrade),
                    server_name,
                }
            });
        if https && tls.is_none() {
            tracing::error!(upstream = %target, "no TLS settings for an https:// upstream");
        }
        Self {
            dialer: Arc::new(Dialer {
                target,
                host,
                port,
                connect_timeout: config.timeouts.upstream_connect,
                tls,
            }),
            host_value,
            owner: Arc::default(),
            response_timeout: config.timeouts.upstream_response,
            http2: config.upstream_http2.then(|| {
                Arc::new(Mutex::new(Shared {
                    state: State::Down,
                    generation: 0,
                }))
            }),
        }
    }

    /// Sends a request (headers already rewritten) to the upstream and waits for its
    /// response headers, at most `timeouts.upstream_response` (then 504). A request that a
    /// connection could not take (it had just closed) is retried once on a new connection
    /// (on the lean path only an idempotent one: there it may have been written).
    /// HTTP/1.1 connections are taken from and returned to `dedicated`, the client
    /// connection's own.
    pub async fn send(
        &self,
        mut request: Request<Outbound>,
        added: &Added<'_>,
        dedicated: &Arc<Dedicated>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if !(self.http2.is_none() && self.dialer.tls.is_none() && lean::eligible(&request)) {
            added.insert_into(request.headers_mut());
            return self.send_hyper(request, dedicated).await;
        }
        // The lean exchange keeps the response timeout itself (a timer per connection).
        Box::pin(self.exchange_lean(request, added, dedicated)).await
    }

    /// `send` through hyper's client.
    async fn send_hyper(
        &self,
        request: Request<Outbound>,
        dedicated: &Arc<Dedicated>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match &self.http2 {
            // Boxed: an exchange's future is large, and this one is moved several times per
            // request as it is awaited through the layers above.
            None => {
                self.timed(Box::pin(self.exchange(request, dedicated)))
                    .await
            }
            Some(shared) => {
                self.timed(Box::pin(self.exchange_http2(shared, request)))
                    .await
            }
        }
    }

    async fn timed<T>(
        &self,
        exchange: impl Future<Output = Result<T, UpstreamError>>,
    ) -> Result<T, UpstreamError> {
        match tokio::time::timeout(self.response_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out()),
        }
    }

    fn timed_out(&self) -> UpstreamError {
        tracing::warn!(upstream = %self.dialer.target, "upstream response timed out");
        UpstreamError::Timeout
    }

    async fn exchange(
        &self,
        mut request: Request<Outbound>,
        dedicated: &Arc<Dedicated>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        self.rewrite(&mut request)?;
        let method = request.method().clone();

        let (mut conn, pooled) = match self.checkout(dedicated).await {
            Some(conn) => (conn, true),
            None => (Box::pin(self.dialer.connect_http1()).await?, false),
        };
        let response = match conn.sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut e) => match e.take_message() {
                // Never written: the pooled connection had closed. Try a fresh one.
                Some(request) if pooled => {
                    conn = Box::pin(self.dialer.connect_http1()).await?;
                    conn.sender
                        .send_request(request)
                        .await
                        .map_err(|e| self.dialer.failed_hyper(&e))?
                }
                _ => return Err(self.dialer.failed_hyper(e.error())),
            },
        };
        let (mut parts, body) = response.into_parts();
        // hyper read the answer by its own rules: held to the lean path's (`framing`).
        let keep = framing::check(&method, &mut parts).map_err(|e| self.dialer.failed(&e))?;
        let body = UpstreamBody(Kind::Hyper {
            body,
            conn: Some((conn, self.home(dedicated))),
            keep,
        });
        Ok(Response::from_parts(parts, body))
    }

    /// The `lean` exchange. The request line goes as it came (origin form; an HTTP/2
    /// client's authority is its `Host`). A request an idle connection could not take (it
    /// had closed) is retried once on a new connection if it is idempotent.
    async fn exchange_lean(
        &self,
        request: Request<Outbound>,
        added: &Added<'_>,
        dedicated: &Arc<Dedicated>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let (mut parts, _) = request.into_parts();
        self.ensure_host(&mut parts.headers);
        let conn = match dedicated.lean.take(&self.owner, lean::Conn::still_idle) {
            Some(conn) => conn.reused(),
            None => lean::Conn::new(self.dialer.dial().await?),
        };
        let timeout = self.response_timeout;
        let sent = match lean::exchange(conn, &parts, added, timeout).await {
            Err(lean::ExchangeError::Unsent) if parts.method.is_idempotent() => {
                let conn = lean::Conn::new(self.dialer.dial().await?);
                lean::exchange(conn, &parts, added, timeout).await
            }
            sent => sent,
        };
        match sent {
            Ok(response) => Ok(response.map(|(conn, framing)| {
                UpstreamBody(Kind::Lean(lean::LeanBody::new(
                    conn,
                    framing,
                    self.home(dedicated),
                )))
            })),
            Err(lean::ExchangeError::TimedOut) => Err(self.timed_out()),
            Err(e) => Err(self.dialer.failed(&e)),
        }
    }

    async fn exchange_http2(
        &self,
        shared: &Arc<Mutex<Shared>>,
        mut request: Request<Outbound>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        self.rewrite_http2(&mut request)?;
        let (mut sender, generation) = self.http2_sender(shared).await?;
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut e) => match e.take_message() {
                // Never written: the connection had closed. Try a fresh one.
                Some(request) => {
                    drop_connection(shared, generation);
                    let (mut sender, _) = self.http2_sender(shared).await?;
                    sender
                        .send_request(request)
                        .await
                        .map_err(|e| self.dialer.failed_hyper(&e))?
                }
                None => return Err(self.dialer.failed_hyper(e.error())),
            },
        };
        let (mut parts, body) = response.into_parts();
        // The client may speak HTTP/1.1; its connection sets the version it writes.
        parts.version = Version::HTTP_11;
        let body = UpstreamBody(Kind::Hyper {
            body,
            conn: None,
            keep: false,
        });
        Ok(Response::from_parts(parts, body))
    }

    /// The shared HTTP/2 connection's sender, opening the connection if there is none (one
    /// task opens it; requests arriving meanwhile wait for it).
    async fn http2_sender(
        &self,
        shared: &Arc<Mutex<Shared>>,
    ) -> Result<(Http2Sender, u64), UpstreamError> {
        loop {
            let mut opening = {
                let mut guard = lock(shared);
                match &guard.state {
                    State::Up(sender, generation) if !sender.is_closed() => {
                        return Ok((sender.clone(), *generation));
                    }
                    // Still opening (a task that died, at shutdown, left a closed channel).
                    State::Connecting(opening) if opening.has_changed().is_ok() => opening.clone(),
                    _ => {
                        guard.generation += 1;
                        let (done, opening) = watch::channel(None);
                        guard.state = State::Connecting(opening.clone());
                        tokio::spawn(open_http2(
                            Arc::clone(&self.dialer),
                            Arc::clone(shared),
                            guard.generation,
                            done,
                        ));
                        opening
                    }
                }
            };
            let opened = match opening.wait_for(Option::is_some).await {
                Ok(opened) => opened.clone(),
                Err(_) => None,
            };
            if let Some(result) = opened {
                return result;
            }
        }
    }

    /// Sends an upgrade request (WebSocket) on an HTTP/1.1 connection of its own, which
    /// never returns to the pool: after a `101 Switching Protocols` it belongs to the
    /// upgraded stream.
    pub async fn send_upgrade(
        &self,
        mut request: Request<Outbound>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.rewrite(&mut request)?;
        let exchange = async {
            // The connection's task is not aborted with its sender: after a `101` it hands
            // the connection over to the tunnel.
            let (mut sender, _) = match &self.dialer.tls {
                None => {
                    let stream = self.dialer.dial().await?;
                    self.dialer.handshake_http1(stream, true).await?
                }
                Some(tls) => {
                    let stream = self.dialer.dial_tls(&tls.upgrade).await?;
                    self.dialer.handshake_http1(stream, true).await?
                }
            };
            sender
                .send_request(request)
                .await
                .map_err(|e| self.dialer.failed_hyper(&e))
        };
        match tokio::time::timeout(self.response_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout),
        }
    }

    /// Points a request at an HTTP/1.1 upstream: origin-form URI, HTTP/1.1, a `Host`.
    fn rewrite<B>(&self, request: &mut Request<B>) -> Result<(), UpstreamError> {
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::builder()
            .path_and_query(path)
            .build()
            .map_err(|_| UpstreamError::Uri)?;
        *request.version_mut() = Version::HTTP_11;
        self.ensure_host(request.headers_mut());
        Ok(())
    }

    /// HTTP/1.1 needs a `Host`: the upstream's, for a request that came without one
    /// (HTTP/1.0; an HTTP/2 request's authority became its `Host` in `headers`).
    fn ensure_host(&self, headers: &mut HeaderMap) {
        if !headers.contains_key(HOST) {
            headers.insert(HOST, self.host_value.clone());
        }
    }

    /// Points a request at an HTTP/2 upstream: an absolute URI whose authority is the
    /// request's `Host` (as an HTTP/1.1 upstream gets it), else the upstream's, and no
    /// `Host` header. gRPC's `te: trailers` is put back: it is hop-by-hop, so it was removed
    /// with the others, and gRPC servers look for it.
    fn rewrite_http2(&self, request: &mut Request<Outbound>) -> Result<(), UpstreamError> {
        let target = &self.dialer.target;
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let authority = request
            .headers_mut()
            .remove(HOST)
            .and_then(|host| Authority::try_from(host.as_bytes()).ok())
            .unwrap_or_else(|| target.authority.clone());
        *request.uri_mut() = Uri::builder()
            .scheme(target.scheme.clone())
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|_| UpstreamError::Uri)?;
        *request.version_mut() = Version::HTTP_2;
        let headers = request.headers_mut();
        if headers
            .get(CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"))
        {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        } else if headers.get(TE).is_some_and(|te| te != "trailers") {
            headers.remove(TE);
        }
        Ok(())
    }

    /// Where a connection used for a request of `dedicated`'s client connection goes back.
    fn home(&self, dedicated: &Arc<Dedicated>) -> pool::Home {
        pool::Home {
            dedicated: Arc::clone(dedicated),
            owner: Arc::clone(&self.owner),
        }
    }

    /// A connection of this client connection's ready for a request, if there is one.
    async fn checkout(&self, dedicated: &Dedicated) -> Option<Client1> {
        loop {
            let mut conn = dedicated
                .hyper
                .take(&self.owner, |c| !c.sender.is_closed())?;
            if conn.sender.ready().await.is_ok() {
                return Some(conn);
            }
        }
    }
}

/// The settings of hyper's HTTP/1.1 client connections (the differential test uses them).
fn http1_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        // One `write` of head and body copied together, rather than `writev` of the
        // pieces: cheaper for the small messages most APIs exchange (docs/performance.md).
        .writev(false)
        // The lean path's limit on a response head, so both refuse the same heads.
        .max_buf_size(lean::MAX_HEAD);
    builder
}

/// Opens the shared HTTP/2 connection (generation `generation`) and tells the requests
/// waiting for it. A task of its own, so a waiting request that gives up does not cancel it.
async fn open_http2(
    dialer: Arc<Dialer>,
    shared: Arc<Mutex<Shared>>,
    generation: u64,
    done: watch::Sender<Opened>,
) {
    let result = dialer.connect_http2().await;
    lock(&shared).state = match &result {
        Ok(sender) => State::Up(sender.clone(), generation),
        Err(_) => State::Down,
    };
    done.send_replace(Some(result.map(|sender| (sender, generation))));
}

/// Forgets the shared HTTP/2 connection `generation` (it could not take a request), unless
/// another has replaced it already.
fn drop_connection(shared: &Mutex<Shared>, generation: u64) {
    let mut guard = lock(shared);
    if matches!(guard.state, State::Up(_, current) if current == generation) {
        guard.state = State::Down;
    }
}

impl Dialer {
    async fn connect_http1(&self) -> Result<Client1, UpstreamError> {
        let (sender, task) = match &self.tls {
            None => self.handshake_http1(self.dial().await?, false).await?,
            Some(tls) => {
                let stream = self.dial_tls(&tls.connector).await?;
                self.handshake_http1(stream, false).await?
            }
        };
        Ok(Client1 { sender, task })
    }

    async fn connect_http2(&self) -> Result<Http2Sender, UpstreamError> {
        match &self.tls {
            None => self.handshake_http2(self.dial().await?).await,
            Some(tls) => {
                let stream = self.dial_tls(&tls.connector).await?;
                self.handshake_http2(stream).await
            }
        }
    }

    /// An HTTP/1.1 client connection over `io`, driven by its own task. `upgrades`: the
    /// connection may switch protocols (WebSocket) after a 101 and never returns to a pool.
    async fn handshake_http1<T>(
        &self,
        io: T,
        upgrades: bool,
    ) -> Result<(Sender, tokio::task::AbortHandle), UpstreamError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) = http1_builder()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.failed(&e))?;
        let task = tokio::spawn(async move {
            let ended = if upgrades {
                connection.with_upgrades().await
            } else {
                connection.await
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok((sender, task.abort_handle()))
    }

    async fn handshake_http2<T>(&self, io: T) -> Result<Http2Sender, UpstreamError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.failed(&e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// A TCP connection to the upstream, within the connect timeout.
    async fn dial(&self) -> Result<TcpStream, UpstreamError> {
        if self.tls.is_none() && self.target.scheme == Scheme::HTTPS {
            // Never plaintext to an https:// upstream (no TLS settings: see `Upstream::new`).
            return Err(UpstreamError::Connect);
        }
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| {
            tracing::warn!(upstream = %self.target, "upstream connect timed out");
            UpstreamError::Connect
        })?
        .map_err(|e| {
            tracing::warn!(upstream = %self.target, error = %e, "upstream connect failed");
            UpstreamError::Connect
        })?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// A TLS connection to the upstream, TCP and TLS handshake within the connect timeout.
    /// A certificate the upstream cannot prove is a connect failure (502).
    async fn dial_tls(
        &self,
        connector: &TlsConnector,
    ) -> Result<TlsStream<TcpStream>, UpstreamError> {
        let started = tokio::time::Instant::now();
        let Some(server_name) = self.tls.as_ref().and_then(|t| t.server_name.clone()) else {
            tracing::warn!(upstream = %self.target, "the upstream host is not a TLS server name");
            return Err(UpstreamError::Connect);
        };
        let stream = self.dial().await?;
        tokio::time::timeout_at(
            started + self.connect_timeout,
            connector.connect(server_name, stream),
        )
        .await
        .map_err(|_| {
            tracing::warn!(upstream = %self.target, "upstream TLS handshake timed out");
            UpstreamError::Connect
        })?
        .map_err(|e| {
            tracing::warn!(upstream = %self.target, error = %e, "upstream TLS handshake failed");
            UpstreamError::Connect
        })
    }

    fn failed(&self, e: &dyn std::fmt::Display) -> UpstreamError {
        tracing::warn!(upstream = %self.target, error = %e, "upstream request failed");
        UpstreamError::Protocol
    }

    /// A failed exchange of hyper's client: the request body's own refusal (`body`), or
    /// the upstream's failure.
    fn failed_hyper(&self, e: &hyper::Error) -> UpstreamError {
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            if let Some(refused) = cause.downcast_ref::<crate::body::Refused>() {
                tracing::debug!(error = %refused, "request body refused on its way upstream");
                return UpstreamError::Body(refused.rejection());
            }
            source = cause.source();
        }
        self.failed(e)
    }
}

/// Why an exchange with the upstream failed. `proxy` counts the upstream's failures by kind
/// and answers the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// No connection (refused, timed out, TLS handshake failed).
    #[error("upstream unreachable")]
    Connect,
    /// No answer within `timeouts.upstream_response`.
    #[error("upstream timed out")]
    Timeout,
    /// The upstream broke the exchange (closed mid-way, spoke no HTTP).
    #[error("upstream failed")]
    Protocol,
    /// The request's URI cannot be written in the form the upstream needs.
    #[error("the request URI cannot be forwarded")]
    Uri,
    /// The client's request body was refused on its way upstream: the client's fault.
    #[error("request body refused: {0}")]
    Body(Rejection),
}

/// An upstream response body, streamed frame by frame (trailers included). Over HTTP/1.1,
/// when it has been read to the end its connection goes back to its client connection's
/// slot; a body dropped half-read takes its connection with it.
pub struct UpstreamBody(Kind);

enum Kind {
    /// From hyper's client; over HTTP/1.1 with its connection, kept for the client
    /// connection's next request if `keep` and the body ended, else closed.
    Hyper {
        body: Incoming,
        conn: Option<(Client1, pool::Home)>,
        keep: bool,
    },
    Lean(lean::LeanBody),
    /// An event stream tied to a credential: ends, as if the upstream had ended it, once
    /// the credential does (`streams`). Its connection is then closed.
    Ending(Box<(UpstreamBody, Watch)>),
}

impl UpstreamBody {
    /// This body, ended early when `watch` resolves.
    pub fn ending(self, watch: Watch) -> Self {
        UpstreamBody(Kind::Ending(Box::new((self, watch))))
    }

    /// An answer's body on a connection that is not kept (an upgrade that was refused).
    pub fn unpooled(body: Incoming) -> Self {
        UpstreamBody(Kind::Hyper {
            body,
            conn: None,
            keep: false,
        })
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.get_mut().0 {
            Kind::Hyper { body, .. } => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::Lean(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::Ending(ending) => {
                let (body, watch) = &mut **ending;
                if Pin::new(watch).poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                Pin::new(body).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Hyper { body, .. } => body.is_end_stream(),
            Kind::Lean(body) => body.is_end_stream(),
            Kind::Ending(ending) => ending.0.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Hyper { body, .. } => body.size_hint(),
            Kind::Lean(body) => body.size_hint(),
            Kind::Ending(ending) => ending.0.size_hint(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        let Kind::Hyper { body, conn, keep } = &mut self.0 else {
            return;
        };
        // Kept only when its answer ended as framed; otherwise dropped, which closes it.
        if let (true, true, Some((conn, home))) = (*keep, body.is_end_stream(), conn.take()) {
            home.put(conn, |dedicated| &dedicated.hyper);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(upstream: &str, extra: &str) -> Config {
        let yaml = format!(
            "upstream: {upstream}\n{extra}store:\n  path: /nonexistent\nabilities: [read]\nroutes:\n  - path: /a\n    abilities: [read]\n"
        );
        Config::parse(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    #[test]
    fn the_upstream_url_gives_where_to_connect_and_the_default_host() {
        // URL → host to dial, port, `Host` for a request without one, TLS or not.
        let cases = [
            (
                "http://127.0.0.1:3000",
                "127.0.0.1",
                3000,
                "127.0.0.1:3000",
                false,
            ),
            (
                "http://app.internal",
                "app.internal",
                80,
                "app.internal",
                false,
            ),
            (
                "https://app.internal",
                "app.internal",
                443,
                "app.internal",
                true,
            ),
            (
                "https://app.internal:8443",
                "app.internal",
                8443,
                "app.internal:8443",
                true,
            ),
            ("http://[::1]:8080", "::1", 8080, "[::1]:8080", false),
        ];
        for (url, host, port, host_value, tls) in cases {
            let upstream = Upstream::new(&config(url, ""));
            assert_eq!(upstream.dialer.host, host, "{url}");
            assert_eq!(upstream.dialer.port, port, "{url}");
            assert_eq!(upstream.host_value, host_value, "{url}");
            assert_eq!(upstream.dialer.tls.is_some(), tls, "{url}");
            assert!(upstream.http2.is_none(), "{url}: HTTP/1.1 unless asked");
        }
        let h2 = Upstream::new(&config("http://127.0.0.1:1", "upstream_http2: true\n"));
        assert!(h2.http2.is_some());
    }

    #[test]
    fn a_request_is_pointed_at_an_http1_upstream_in_origin_form() {
        let upstream = Upstream::new(&config("http://10.0.0.1:3000", ""));
        // URI and `Host` as they came → the URI and `Host` the upstream gets.
        let cases: [(&str, Option<&str>, &str, &str); 4] = [
            ("/a/b?x=1", Some("app.example"), "/a/b?x=1", "app.example"),
            // An HTTP/2 client's absolute form: its path goes; the authority is already
            // the `Host` (`headers`).
            (
                "https://app.example/a?y",
                Some("app.example"),
                "/a?y",
                "app.example",
            ),
            // HTTP/1.0 without a `Host`: the upstream's.
            ("/a", None, "/a", "10.0.0.1:3000"),
            ("http://app.example", None, "/", "10.0.0.1:3000"),
        ];
        for (uri, host, want_uri, want_host) in cases {
            let mut request = Request::builder().uri(uri).version(Version::HTTP_10);
            if let Some(host) = host {
                request = request.header(HOST, host);
            }
            let mut request = request.body(()).unwrap();
            upstream.rewrite(&mut request).unwrap();
            assert_eq!(request.uri(), want_uri, "{uri}");
            assert_eq!(request.version(), Version::HTTP_11, "{uri}");
            assert_eq!(request.headers()[HOST], want_host, "{uri}");
            assert_eq!(request.headers().get_all(HOST).iter().count(), 1, "{uri}");
        }
    }

    #[tokio::test]
    async fn an_https_upstream_is_never_dialled_in_plaintext() {
        // Without TLS settings (as `Upstream::new` logs), no connection is attempted.
        let mut config = config("https://127.0.0.1:1", "");
        config.upstream_tls = None;
        let upstream = Upstream::new(&config);
        assert!(upstream.dialer.tls.is_none());
        assert_eq!(
            upstream.dialer.dial().await.unwrap_err(),
            UpstreamError::Connect
        );
    }

    #[tokio::test]
    async fn an_upstream_that_refuses_the_connection_is_unavailable() {
        // A port held by a socket that does not listen: connections to it are refused.
        let held = tokio::net::TcpSocket::new_v4().unwrap();
        held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = held.local_addr().unwrap();
        let upstream = Upstream::new(&config(&format!("http://{addr}"), ""));
        assert_eq!(
            upstream.dialer.dial().await.unwrap_err(),
            UpstreamError::Connect
        );
    }

    #[tokio::test]
    async fn hyper_failing_on_a_reply_that_is_not_http_is_a_broken_upstream() {
        // hyper's own failure, not a refused request body: the upstream's fault, 502.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(b"SSH-2.0-not-http\r\n\r\n").await;
        });
        let (mut sender, connection) = http1::handshake::<_, http_body_util::Empty<Bytes>>(
            TokioIo::new(TcpStream::connect(addr).await.unwrap()),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        let request = Request::builder()
            .uri("/")
            .header(HOST, "x")
            .body(http_body_util::Empty::new())
            .unwrap();
        let error = sender.send_request(request).await.unwrap_err();
        let upstream = Upstream::new(&config(&format!("http://{addr}"), ""));
        assert_eq!(
            upstream.dialer.failed_hyper(&error),
            UpstreamError::Protocol
        );
    }
}
