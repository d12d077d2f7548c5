//! The per-request pipeline, the one place that knows the order of the steps:
//!
//! 1. reserved `/_tokengate/` paths are never forwarded;
//! 2. the path is checked (`path`) and matched (`routes`), first match wins;
//! 3. the credential the route accepts is authenticated (`tokens`): sessions will come
//!    first here, then the bearer token, as in Sanctum's guard;
//! 4. the principal is authorized against the route (`auth`);
//! 5. headers are rewritten (`headers`) and the request streams to the upstream.
//!
//! Every refusal is a `Rejection`, turned into a response in `error` alone.

use crate::app::App;
use crate::auth::{self, token, Principal};
use crate::error::Rejection;
use crate::headers::{self, ConnInfo};
use crate::path;
use crate::routes::{AuthMode, Route};
use crate::upstream::{Upstream, UpstreamBody};
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderMap, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// The body of every response: the upstream's, streamed, or tokengate's own.
pub type Body = Either<UpstreamBody, Full<Bytes>>;

/// tokengate's own pages live under this prefix; it never reaches the upstream.
pub const RESERVED_PREFIX: &str = "/_tokengate/";

/// Handles one request: forwards it, or answers with the refusal.
pub async fn handle(
    app: &App,
    upstream: &Upstream,
    request: Request<Incoming>,
    conn: &ConnInfo,
) -> Response<Body> {
    match forward(app, upstream, request, conn).await {
        Ok(response) => response,
        Err(rejection) => rejection.response(),
    }
}

async fn forward(
    app: &App,
    upstream: &Upstream,
    request: Request<Incoming>,
    conn: &ConnInfo,
) -> Result<Response<Body>, Rejection> {
    let (mut parts, body) = request.into_parts();
    let raw_path = parts.uri.path();
    if raw_path.starts_with(RESERVED_PREFIX) || raw_path == "/_tokengate" {
        return Err(Rejection::NotFound);
    }
    let path = path::check(raw_path)?;
    let route = app
        .config
        .routes
        .find(&parts.method, &path)
        .ok_or(Rejection::NoRoute)?;
    let principal = authenticate(app, route, &parts.headers).await?;
    auth::authorize(route, principal.as_ref())?;

    let used_bearer = matches!(principal, Some(Principal::Token(_)));
    let strip_authorization = used_bearer && !app.config.forward_authorization;
    headers::prepare_request(
        &mut parts,
        &app.config,
        principal.as_ref(),
        conn,
        strip_authorization,
    );

    let mut response = upstream.send(Request::from_parts(parts, body)).await?;
    headers::strip_hop_by_hop(response.headers_mut());
    Ok(response.map(Either::Left))
}

/// The principal behind the credential this route accepts, if any. A missing or invalid
/// credential is `None` (the route decides whether that matters); only ambiguity and store
/// failures are errors.
async fn authenticate(
    app: &App,
    route: &Route,
    headers: &HeaderMap,
) -> Result<Option<Principal>, Rejection> {
    match route.auth {
        AuthMode::None => return Ok(None),
        // Browser sessions are not part of this version: no session is ever valid.
        AuthMode::Session => return Ok(None),
        AuthMode::Any | AuthMode::Token => {}
    }
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Rejection::BadRequest("More than one Authorization header."));
    }
    let Some(presented) = token::bearer(value.as_bytes()) else {
        return Ok(None);
    };
    match app.tokens.authenticate(presented).await {
        Ok(token) => Ok(token.map(Principal::Token)),
        Err(e) => {
            tracing::error!(error = %e, "token store lookup failed");
            Err(Rejection::StoreUnavailable)
        }
    }
}
