//! The one place where a refusal becomes an HTTP response. Clients get the status and a
//! short JSON message of the README's table ("What a request gets"); causes go to the log,
//! never to the client.

use crate::auth::Denial;
use crate::path::PathError;
use crate::store::StoreError;
use crate::token_cache::TokenError;
use crate::users::UserError;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use std::borrow::Cow;

/// Why a request is answered by tokengate instead of the upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("bad request path: {0}")]
    BadPath(#[from] PathError),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A body tokengate cannot read as the upstream would (encoded, another charset): 415.
    #[error("unsupported body: {0}")]
    Unsupported(&'static str),
    #[error("request body too large")]
    TooLarge,
    /// The client sent nothing of its request body for `timeouts.client_body_seconds`.
    #[error("request body timed out")]
    RequestTimeout,
    #[error("unauthenticated")]
    Unauthenticated,
    /// A browser without a session on a session route: sent to the login page, which
    /// brings it back to `next` (the path and query it asked for).
    #[error("login required")]
    LoginRequired { location: String },
    #[error("CSRF check failed")]
    CsrfMismatch,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("credential lacks the route's abilities")]
    Forbidden,
    #[error("no route matches")]
    NoRoute,
    #[error("reserved path")]
    NotFound,
    #[error("upstream unreachable")]
    UpstreamUnavailable,
    /// The upstream broke the exchange (closed mid-way, spoke no HTTP).
    #[error("upstream failed")]
    UpstreamBroken,
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
    /// A credential the store could not look up: 503. An outage of a shared store is
    /// reported once, by its re-check; the requests it refuses meanwhile are not logged
    /// each again (at debug only), other failures are.
    pub fn store_failed(what: &str, e: &StoreError) -> Rejection {
        match e {
            StoreError::Stale | StoreError::Unreachable => {
                tracing::debug!(error = %e, "{what} lookup refused: the store is unreachable");
            }
            _ => tracing::error!(error = %e, "{what} lookup failed"),
        }
        Rejection::StoreUnavailable
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::BadPath(_) | Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
            Rejection::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Rejection::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::Unauthenticated => StatusCode::UNAUTHORIZED,
            Rejection::LoginRequired { .. } => StatusCode::FOUND,
            Rejection::CsrfMismatch => csrf_status(),
            Rejection::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::Forbidden | Rejection::NoRoute => StatusCode::FORBIDDEN,
            Rejection::NotFound => StatusCode::NOT_FOUND,
            Rejection::UpstreamUnavailable | Rejection::UpstreamBroken => StatusCode::BAD_GATEWAY,
            Rejection::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Rejection::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The client's message, as plain text (the access log names it too).
    pub fn text(&self) -> Cow<'static, str> {
        let text: &'static str = match self {
            Rejection::BadPath(e) => return Cow::Owned(e.to_string()),
            Rejection::BadRequest(m) | Rejection::Unsupported(m) => m,
            Rejection::TooLarge => "The request body is too large.",
            Rejection::RequestTimeout => "The request body did not arrive in time.",
            Rejection::Unauthenticated | Rejection::LoginRequired { .. } => "Unauthenticated.",
            Rejection::CsrfMismatch => "CSRF token mismatch.",
            Rejection::MethodNotAllowed => "Method not allowed.",
            Rejection::Forbidden => "Invalid ability provided.",
            Rejection::NoRoute => "No route allows this request.",
            Rejection::NotFound => "Not found.",
            Rejection::UpstreamUnavailable | Rejection::UpstreamBroken => {
                "The upstream service is unavailable."
            }
            Rejection::UpstreamTimeout => "The upstream service did not answer in time.",
            Rejection::StoreUnavailable => "The credential store is unavailable.",
        };
        Cow::Borrowed(text)
    }

    fn message(&self) -> Bytes {
        json_message(&self.text())
    }

    /// The response a client gets for this refusal.
    pub fn response(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.message()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self {
            Rejection::Unauthenticated => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Rejection::StoreUnavailable => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Rejection::LoginRequired { location } => {
                if let Ok(location) = HeaderValue::from_str(location) {
                    headers.insert(LOCATION, location);
                }
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            }
            _ => {}
        }
        response
    }
}

/// 419, Laravel's "page expired" for a CSRF mismatch.
pub fn csrf_status() -> StatusCode {
    StatusCode::from_u16(419).unwrap_or(StatusCode::FORBIDDEN)
}

fn json_message(text: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "message": text }).to_string())
}

/// A failed admin API call (or the same operation run locally by the CLI): a status and a
/// message that are safe to show. Store failures are logged and become a bare 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthenticated.")
    }

    /// The response of the admin listener.
    pub fn response(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(json_message(&self.message)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UserExists(name) => {
                Self::new(StatusCode::CONFLICT, format!("user {name} already exists"))
            }
            StoreError::NoSuchUser(name) => Self::not_found(format!("no user {name}")),
            StoreError::ReadOnly => Self::new(
                StatusCode::CONFLICT,
                "Tokens are read-only here (store.read_only): the app manages them.",
            ),
            StoreError::InvalidUser(_) => Self::invalid(e.to_string()),
            StoreError::Locked { .. }
            | StoreError::Setup(_)
            | StoreError::Io(_)
            | StoreError::Corrupt(_)
            | StoreError::Stale
            | StoreError::Unreachable => {
                tracing::error!(error = %e, "store failed");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "The store is unavailable.")
            }
            StoreError::DuplicateHash => Self::new(
                StatusCode::CONFLICT,
                "a token with this hash already exists",
            ),
            StoreError::Conflict(message) => Self::new(StatusCode::CONFLICT, message),
        }
    }
}

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::InvalidName(_) | UserError::InvalidPassword => Self::invalid(e.to_string()),
            UserError::NotFound(_) => Self::not_found(e.to_string()),
            UserError::Store(e) => e.into(),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Invalid(message) => Self::invalid(message),
            TokenError::Store(e) => e.into(),
        }
    }
}
