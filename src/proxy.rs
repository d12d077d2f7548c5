//! The per-request pipeline, the one place that knows the order of the steps:
//!
//! 1. reserved `/_tokengate/` paths go to tokengate's own `pages`, never upstream;
//! 2. the path is checked (`path`) and matched (`routes`), first match wins;
//! 3. the credential the route accepts is authenticated, in Sanctum's order: a valid
//!    session cookie first (`sessions`, then the CSRF rules for unsafe methods), else the
//!    bearer token (`tokens`);
//! 4. the principal is authorized against the route (`auth`); a browser without a session
//!    on a session route is sent to the login page;
//! 5. headers are rewritten (`headers`) and the request streams to the upstream.
//!
//! Every refusal is a `Rejection`, turned into a response in `error` alone.

use crate::app::App;
use crate::auth::session::CookieValue;
use crate::auth::{self, csrf, token, Denial, Principal};
use crate::error::Rejection;
use crate::headers::{self, ConnInfo};
use crate::pages;
use crate::path;
use crate::routes::{AuthMode, Route};
use crate::upstream::{Upstream, UpstreamBody};
use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE};
use http::{request, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// The body of every response: the upstream's, streamed, or tokengate's own.
pub type Body = Either<UpstreamBody, Full<Bytes>>;

/// Handles one request: forwards it, or answers with the refusal.
pub async fn handle(
    app: &App,
    upstream: &Upstream,
    request: Request<Incoming>,
    conn: &ConnInfo,
) -> Response<Body> {
    if pages::is_reserved(request.uri().path()) {
        return pages::handle(app, request, conn).await;
    }
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
    let path = path::check(parts.uri.path())?;
    if path.segments().next() == Some("_tokengate") {
        // `/%5Ftokengate/…`: reserved too, whatever the routes say.
        return Err(Rejection::NotFound);
    }
    let route = app
        .config
        .routes
        .find(&parts.method, &path)
        .ok_or(Rejection::NoRoute)?;
    let principal = authenticate(app, route, &parts, conn).await?;
    if let Err(denial) = auth::authorize(route, principal.as_ref()) {
        if denial == Denial::Unauthenticated
            && route.auth == AuthMode::Session
            && pages::wants_html(&parts.headers)
        {
            let next = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            return Err(Rejection::LoginRequired {
                next: next.to_owned(),
            });
        }
        return Err(denial.into());
    }

    // A credential tokengate checked (or, beside a session, did not need) is not the
    // upstream's business unless the config says so.
    let strip_authorization = principal.is_some() && !app.config.forward_authorization;
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

/// The principal behind the credential this route accepts, if any: a valid session cookie
/// first (`auth: any` and `session`), else the bearer token (`auth: any` and `token`). A
/// missing or invalid credential is `None` (the route decides whether that matters); a
/// session failing the CSRF rules, ambiguity and store failures are errors.
async fn authenticate(
    app: &App,
    route: &Route,
    parts: &request::Parts,
    conn: &ConnInfo,
) -> Result<Option<Principal>, Rejection> {
    let (sessions, tokens) = match route.auth {
        AuthMode::None => return Ok(None),
        AuthMode::Any => (true, true),
        AuthMode::Session => (true, false),
        AuthMode::Token => (false, true),
    };
    if sessions && parts.headers.contains_key(COOKIE) {
        if let Some(principal) = session(app, parts, conn).await? {
            return Ok(Some(principal));
        }
    }
    if !tokens {
        return Ok(None);
    }
    let headers = &parts.headers;
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

/// The session a request's cookie names, if valid, once it passes the CSRF rules.
async fn session(
    app: &App,
    parts: &request::Parts,
    conn: &ConnInfo,
) -> Result<Option<Principal>, Rejection> {
    for value in headers::cookie_values(&parts.headers, &app.config.sessions.cookie) {
        let Some(cookie) = CookieValue::parse(value) else {
            continue;
        };
        let session = match app.sessions.authenticate(cookie).await {
            Ok(Some(session)) => session,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(error = %e, "session store lookup failed");
                return Err(Rejection::StoreUnavailable);
            }
        };
        let (scheme, host) = headers::own_origin(parts, conn);
        if !csrf::passes(&parts.method, &parts.headers, scheme, host, cookie) {
            return Err(Rejection::CsrfMismatch);
        }
        return Ok(Some(Principal::Session(session)));
    }
    Ok(None)
}
