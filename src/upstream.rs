//! The protected app: a keep-alive HTTP/1.1 connection pool and the request rewrite that
//! points a request at it. Bodies stream both ways; nothing is buffered.
//!
//! Each server worker owns one `Upstream`, so its connections live on that worker's
//! runtime and a request never hops threads. A connection returns to the pool when the
//! response body has been fully read (see `UpstreamBody`), so a pooled connection is always
//! free for the next request.

use crate::config::{Timeouts, UpstreamTarget};
use crate::error::Rejection;
use bytes::Bytes;
use http::header::HOST;
use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Request, Response, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// Idle connections kept per worker; more are closed when they come back.
const MAX_IDLE: usize = 1024;

type Sender = SendRequest<Incoming>;
type Idle = Arc<Mutex<Vec<Sender>>>;

pub struct Upstream {
    target: UpstreamTarget,
    host: String,
    port: u16,
    /// `Host` for requests that came without one (HTTP/1.0).
    host_value: HeaderValue,
    idle: Idle,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl Upstream {
    pub fn new(target: UpstreamTarget, timeouts: &Timeouts) -> Self {
        let host = target
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = target.authority.port_u16().unwrap_or(80);
        let host_value = HeaderValue::from_str(target.authority.as_str())
            .expect("an authority is a valid header value");
        Self {
            target,
            host,
            port,
            host_value,
            idle: Arc::new(Mutex::new(Vec::new())),
            connect_timeout: timeouts.upstream_connect,
            response_timeout: timeouts.upstream_response,
        }
    }

    /// Sends a request (headers already rewritten) to the upstream and waits for its
    /// response headers, at most `timeouts.upstream_response` (then 504). A request that a
    /// pooled connection could not take (it had just closed) is retried once on a new
    /// connection.
    pub async fn send(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<UpstreamBody>, Rejection> {
        match tokio::time::timeout(self.response_timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(upstream = %self.target, "upstream response timed out");
                Err(Rejection::UpstreamTimeout)
            }
        }
    }

    async fn exchange(
        &self,
        mut request: Request<Incoming>,
    ) -> Result<Response<UpstreamBody>, Rejection> {
        self.rewrite(&mut request)?;

        let (mut sender, pooled) = match self.checkout().await {
            Some(sender) => (sender, true),
            None => (self.connect().await?, false),
        };
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut e) => match e.take_message() {
                // Never written: the pooled connection had closed. Try a fresh one.
                Some(request) if pooled => {
                    sender = self.connect().await?;
                    sender
                        .send_request(request)
                        .await
                        .map_err(|e| self.failed(&e))?
                }
                _ => return Err(self.failed(e.error())),
            },
        };
        let (parts, body) = response.into_parts();
        let body = UpstreamBody {
            inner: body,
            sender: Some(sender),
            idle: Arc::clone(&self.idle),
        };
        Ok(Response::from_parts(parts, body))
    }

    /// Sends an upgrade request (WebSocket) on a connection of its own, which never returns
    /// to the pool: after a `101 Switching Protocols` it belongs to the upgraded stream.
    pub async fn send_upgrade(
        &self,
        mut request: Request<Incoming>,
    ) -> Result<Response<Incoming>, Rejection> {
        self.rewrite(&mut request)?;
        let exchange = async {
            let stream = self.dial().await?;
            let (mut sender, connection) = http1::Builder::new()
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| self.failed(&e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream upgraded connection ended with an error");
                }
            });
            sender
                .send_request(request)
                .await
                .map_err(|e| self.failed(&e))
        };
        match tokio::time::timeout(self.response_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Rejection::UpstreamTimeout),
        }
    }

    /// Points a request at the upstream: origin-form URI, HTTP/1.1, a `Host`.
    fn rewrite(&self, request: &mut Request<Incoming>) -> Result<(), Rejection> {
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::builder()
            .path_and_query(path)
            .build()
            .map_err(|_| Rejection::BadRequest("The request URI cannot be forwarded."))?;
        *request.version_mut() = Version::HTTP_11;
        if !request.headers().contains_key(HOST) {
            request.headers_mut().insert(HOST, self.host_value.clone());
        }
        Ok(())
    }

    /// A pooled connection ready for a request, if there is one.
    async fn checkout(&self) -> Option<Sender> {
        loop {
            let mut sender = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            if sender.is_closed() {
                continue;
            }
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self) -> Result<Sender, Rejection> {
        let stream = self.dial().await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.failed(&e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// A TCP connection to the upstream, within the connect timeout.
    async fn dial(&self) -> Result<TcpStream, Rejection> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| {
            tracing::warn!(upstream = %self.target, "upstream connect timed out");
            Rejection::UpstreamUnavailable
        })?
        .map_err(|e| {
            tracing::warn!(upstream = %self.target, error = %e, "upstream connect failed");
            Rejection::UpstreamUnavailable
        })?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    fn failed(&self, e: &hyper::Error) -> Rejection {
        tracing::warn!(upstream = %self.target, error = %e, "upstream request failed");
        Rejection::UpstreamBroken
    }
}

/// An upstream response body. When it has been read to the end, its connection goes back
/// to the pool; a body dropped half-read takes its connection with it.
pub struct UpstreamBody {
    inner: Incoming,
    sender: Option<Sender>,
    idle: Idle,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if !self.inner.is_end_stream() {
            return;
        }
        if let Some(sender) = self.sender.take() {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(sender);
            }
        }
    }
}
