//! The one place where a refusal becomes an HTTP response. Clients get the status and a
//! short JSON message of DESIGN.md's table; causes go to the log, never to the client.

use crate::auth::Denial;
use crate::path::PathError;
use crate::proxy::Body;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

/// Why a request is answered by tokengate instead of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("bad request path: {0}")]
    BadPath(#[from] PathError),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("unauthenticated")]
    Unauthenticated,
    #[error("credential lacks the route's abilities")]
    Forbidden,
    #[error("no route matches")]
    NoRoute,
    #[error("reserved path")]
    NotFound,
    #[error("upstream unreachable")]
    UpstreamUnavailable,
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("credential store unavailable")]
    StoreUnavailable,
}

impl From<Denial> for Rejection {
    fn from(denial: Denial) -> Self {
        match denial {
            Denial::Unauthenticated => Rejection::Unauthenticated,
            Denial::Forbidden => Rejection::Forbidden,
        }
    }
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::BadPath(_) | Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
            Rejection::Unauthenticated => StatusCode::UNAUTHORIZED,
            Rejection::Forbidden | Rejection::NoRoute => StatusCode::FORBIDDEN,
            Rejection::NotFound => StatusCode::NOT_FOUND,
            Rejection::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Rejection::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Rejection::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn message(&self) -> Bytes {
        let text: &'static str = match self {
            Rejection::BadPath(e) => return json_message(&e.to_string()),
            Rejection::BadRequest(m) => m,
            Rejection::Unauthenticated => "Unauthenticated.",
            Rejection::Forbidden => "Invalid ability provided.",
            Rejection::NoRoute => "No route allows this request.",
            Rejection::NotFound => "Not found.",
            Rejection::UpstreamUnavailable => "The upstream service is unavailable.",
            Rejection::UpstreamTimeout => "The upstream service did not answer in time.",
            Rejection::StoreUnavailable => "The credential store is unavailable.",
        };
        json_message(text)
    }

    /// The response a client gets for this refusal.
    pub fn response(&self) -> Response<Body> {
        let mut response = Response::new(Either::Right(Full::new(self.message())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if *self == Rejection::Unauthenticated {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

fn json_message(text: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "message": text }).to_string())
}
