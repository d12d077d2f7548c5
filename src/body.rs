//! A request body on its way to the upstream (`Outbound`). It streams the client's body
//! frame by frame, and on the way:
//!
//! - replays first what the proxy read ahead of its decision (`read_prefix`: a bounded
//!   prefix of a POST whose body may name a method, `method_override`);
//! - checks the rest as it streams: a `_method` naming a method the request was not
//!   authorized for ends the body with an error before its end, so the upstream never gets
//!   a complete request, and the client gets 400 (`Refused`);
//! - drops forged fields from the trailers (`headers::is_forged`), which an HTTP/2 upstream
//!   would otherwise receive.

use crate::config::Config;
use crate::error::Rejection;
use crate::headers;
use crate::method_override::{BodyScan, Methods, OverrideError};
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Why a request body was cut short on its way upstream; the client gets the rejection.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The body named a method after the part read before the decision.
    #[error("{}", .0.message())]
    Override(OverrideError),
    #[error("the client's request body failed: {0}")]
    Client(#[from] hyper::Error),
    /// The client sent nothing of its body for `timeouts.client_body_seconds`.
    #[error("the client's request body timed out")]
    TimedOut,
}

impl Refused {
    pub fn rejection(&self) -> Rejection {
        match self {
            Refused::Override(OverrideError::InvalidMethod | OverrideError::TooMany) => {
                Rejection::BadRequest(
                    "The request body names a method after the part checked before forwarding.",
                )
            }
            Refused::Override(e) => Rejection::BadRequest(e.message()),
            Refused::Client(_) => Rejection::BadRequest("The request body could not be read."),
            Refused::TimedOut => Rejection::RequestTimeout,
        }
    }
}

/// The body's rest is checked for methods beyond `allowed`.
struct Check {
    scan: BodyScan,
    allowed: Methods,
}

/// A client's request body, as it goes upstream.
pub struct Outbound {
    rest: Option<Incoming>,
    /// All but the plain streaming of a body; `None` for a request without one (most), so
    /// that it costs nothing there.
    inspect: Option<Box<Inspect>>,
}

struct Inspect {
    /// Frames to send before reading more: those read ahead, then those let go.
    prefix: VecDeque<Frame<Bytes>>,
    check: Option<Check>,
    /// Frames that end inside a `_method` value: held back until the value ends, so that
    /// a method found there can still keep the body from being complete upstream.
    held: Vec<Frame<Bytes>>,
    /// To tell forged trailer fields.
    config: Arc<Config>,
    trusted: bool,
    /// When the client must have sent more (`timeouts.client_body_seconds`): armed while
    /// the body waits for the client, pushed back by each frame.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Outbound {
    /// The client's body as it is. `trusted`: the client is a trusted proxy.
    pub fn new(body: Incoming, config: &Arc<Config>, trusted: bool) -> Self {
        let inspect = (!body.is_end_stream()).then(|| {
            Box::new(Inspect {
                prefix: VecDeque::new(),
                check: None,
                held: Vec::new(),
                config: Arc::clone(config),
                trusted,
                deadline: None,
            })
        });
        Self {
            rest: Some(body),
            inspect,
        }
    }

    /// Reads up to `limit` bytes of the body ahead (and on, to the end of a `_method` value
    /// begun within them), feeding `scan`, which collects the methods the body names into
    /// `methods`; the frames read are replayed to the upstream. If the body goes on past
    /// them, the rest is checked for other methods as it streams.
    pub async fn read_prefix(
        &mut self,
        mut scan: BodyScan,
        methods: &mut Methods,
        limit: usize,
    ) -> Result<(), Rejection> {
        let (Some(body), Some(inspect)) = (self.rest.as_mut(), self.inspect.as_mut()) else {
            return scan
                .finish(methods)
                .map_err(crate::decision::override_refusal);
        };
        let mut read = 0;
        let timeout = inspect.config.timeouts.client_body;
        while read < limit || scan.holding() {
            // A `_method` value is short: one still open well past the limit is not.
            if read > limit + 4096 {
                return Err(crate::decision::override_refusal(
                    OverrideError::InvalidMethod,
                ));
            }
            let frame = tokio::time::timeout(timeout, body.frame())
                .await
                .map_err(|_| Rejection::RequestTimeout)?;
            match frame {
                None => {
                    self.rest = None;
                    return scan
                        .finish(methods)
                        .map_err(crate::decision::override_refusal);
                }
                Some(Err(e)) => return Err(Refused::Client(e).rejection()),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        read += data.len();
                        scan.feed(data, methods)
                            .map_err(crate::decision::override_refusal)?;
                    }
                    inspect.prefix.push_back(frame);
                }
            }
        }
        inspect.check = Some(Check {
            scan,
            allowed: methods.clone(),
        });
        Ok(())
    }

    /// The methods the request was authorized for: the rest of a body read ahead may name
    /// these, and no other.
    pub fn allow(&mut self, own: &http::Method, others: &[http::Method]) {
        if let Some(check) = self.inspect.as_mut().and_then(|i| i.check.as_mut()) {
            check.allowed = std::iter::once(own).chain(others).cloned().collect();
        }
    }
}

impl Inspect {
    /// Waits for the client-body deadline, arming it on the first wait.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let timeout = self.config.timeouts.client_body;
        self.deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)))
            .as_mut()
            .poll(cx)
    }

    /// A frame came: the client has another full period.
    fn progressed(&mut self) {
        if let Some(deadline) = self.deadline.as_mut() {
            let timeout = self.config.timeouts.client_body;
            deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + timeout);
        }
    }

    /// Checks a chunk of the rest against the methods the request was authorized for;
    /// `Ok(true)`: it ends inside a `_method` value, to be held back.
    fn check(&mut self, data: Option<&Bytes>) -> Result<bool, Refused> {
        let Some(check) = self.check.as_mut() else {
            return Ok(false);
        };
        let mut found = check.allowed.clone();
        match data {
            Some(data) => check.scan.feed(data, &mut found),
            None => check.scan.finish(&mut found),
        }
        .map_err(Refused::Override)?;
        if found.len() > check.allowed.len() {
            return Err(Refused::Override(OverrideError::InvalidMethod));
        }
        Ok(check.scan.holding())
    }

    fn filter(&self, mut frame: Frame<Bytes>) -> Frame<Bytes> {
        if let Some(trailers) = frame.trailers_mut() {
            strip_trailers(trailers, &self.config, self.trusted);
        }
        frame
    }
}

/// Removes from request trailers what may not go upstream as a header either.
fn strip_trailers(trailers: &mut HeaderMap, config: &Config, trusted: bool) {
    headers::strip_hop_by_hop(trailers);
    headers::strip_forged(trailers, config, trusted);
    for name in [
        http::header::AUTHORIZATION,
        http::header::HOST,
        http::header::COOKIE,
    ] {
        trailers.remove(name);
    }
}

impl Body for Outbound {
    type Data = Bytes;
    type Error = Refused;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Refused>>> {
        let this = self.get_mut();
        let Some(inspect) = this.inspect.as_mut() else {
            // No body to inspect: stream it as it is.
            return match this.rest.as_mut() {
                Some(body) => Pin::new(body).poll_frame(cx).map_err(Refused::Client),
                None => Poll::Ready(None),
            };
        };
        loop {
            if let Some(frame) = inspect.prefix.pop_front() {
                return Poll::Ready(Some(Ok(inspect.filter(frame))));
            }
            let Some(body) = this.rest.as_mut() else {
                return Poll::Ready(None);
            };
            let frame = match Pin::new(body).poll_frame(cx) {
                Poll::Pending => {
                    return match inspect.poll_deadline(cx) {
                        Poll::Ready(()) => {
                            this.rest = None;
                            Poll::Ready(Some(Err(Refused::TimedOut)))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Refused::Client(e)))),
                Poll::Ready(Some(Ok(frame))) => {
                    inspect.progressed();
                    Some(frame)
                }
                Poll::Ready(None) => None,
            };
            let checked = inspect.check(frame.as_ref().and_then(Frame::data_ref));
            match (checked, frame) {
                // Cut here: the upstream never sees the end of this body.
                (Err(e), _) => {
                    this.rest = None;
                    inspect.held.clear();
                    return Poll::Ready(Some(Err(e)));
                }
                (Ok(true), Some(frame)) => inspect.held.push(frame),
                (Ok(_), frame) => {
                    if frame.is_none() {
                        this.rest = None;
                    }
                    let held = std::mem::take(&mut inspect.held);
                    inspect.prefix.extend(held.into_iter().chain(frame));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inspect
            .as_ref()
            .is_none_or(|i| i.prefix.is_empty() && i.held.is_empty())
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self.inspect.as_ref().map_or(0, |i| {
            i.prefix
                .iter()
                .chain(&i.held)
                .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
                .sum()
        });
        match &self.rest {
            None => SizeHint::with_exact(buffered),
            Some(rest) => {
                let hint = rest.size_hint();
                let mut sum = SizeHint::new();
                sum.set_lower(hint.lower() + buffered);
                if let Some(upper) = hint.upper() {
                    sum.set_upper(upper + buffered);
                }
                sum
            }
        }
    }
}
