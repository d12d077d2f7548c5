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
//! Every refusal is a `Rejection`, turned into a response in `error` alone. Every answer is
//! counted (`metrics`) and, when configured, logged (`access_log`).

use crate::access_log;
use crate::app::App;
use crate::auth::{csrf, Principal};
use crate::body::Outbound;
use crate::config::{AccessLogFormat, Config};
use crate::cookies;
use crate::credential::token;
use crate::decision;
use crate::error::Rejection;
use crate::headers::{self, ConnInfo};
use crate::method_override;
use crate::metrics::{CredentialKind, Decision, RouteLabel, UpstreamErrorKind, WorkerMetrics};
use crate::pages;
use crate::reserved;
use crate::streams::{Grant, Watch};
use crate::tunnel;
use crate::upstream::{Dedicated, Upstream, UpstreamBody, UpstreamError};
use crate::watchdog::{InFlight, Watched};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE};
use http::{request, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

/// The body of every response: the upstream's, streamed, or tokengate's own.
pub type Body = Either<UpstreamBody, Full<Bytes>>;

/// What the pipeline learnt about a request, for its metrics and access log line.
struct Trace {
    route: RouteLabel,
    kind: CredentialKind,
    decision: Option<Decision>,
    /// Kept only when the access log is on.
    principal: Option<Principal>,
    /// Why tokengate answered itself; kept only when the access log is on.
    reason: Option<std::borrow::Cow<'static, str>>,
}

/// What a request runs with: the app, the worker's snapshot of the config, its upstream and
/// metrics, and the connection the request came on (with the upstream connections
/// dedicated to it), on which it is now in progress.
pub struct Context {
    pub app: Arc<App>,
    pub config: Arc<Config>,
    pub upstream: Arc<Upstream>,
    pub metrics: Arc<WorkerMetrics>,
    pub conn: Arc<ConnInfo>,
    pub dedicated: Arc<Dedicated>,
    pub in_flight: InFlight,
}

/// Handles one request: forwards it, or answers with the refusal. The request stays in
/// progress on its connection until the response body is done (`Watched`). The future is
/// hyper's service future as is (never an error): wrapping it in another `async` block
/// would make the compiler lay it out twice, and hyper moves it once per request.
pub async fn handle(
    context: Context,
    request: Request<Incoming>,
) -> Result<Response<Watched<Body>>, Infallible> {
    let Context {
        app,
        config,
        upstream,
        metrics,
        conn,
        dedicated,
        in_flight,
    } = context;
    let (app, config, upstream, metrics, conn) = (&app, &config, &upstream, &metrics, &conn);
    let started = Instant::now();
    let _in_flight = metrics.in_flight();
    // `config` is this request's snapshot: a reload meanwhile does not change its rules.
    let method = request.method().clone();
    let logged_path = config.access_log.map(|_| request.uri().path().to_owned());
    let mut trace = Trace {
        route: RouteLabel::Unmatched,
        kind: CredentialKind::None,
        decision: None,
        principal: None,
        reason: None,
    };
    let response = if reserved::is_reserved(request.uri().path()) {
        trace.route = RouteLabel::Reserved;
        // Boxed, as the other cold paths: kept out of the request future's size.
        Box::pin(pages::handle(app, request, conn))
            .await
            .map(Either::Right)
    } else {
        let link = Link {
            upstream,
            dedicated: &dedicated,
            metrics,
        };
        match forward(app, config, link, request, conn, &mut trace).await {
            Ok(response) => response,
            Err(rejection) => {
                // A refusal after the decision (a body naming a method too late) overrides it.
                trace.decision = decision_of(&rejection).or(trace.decision);
                if config.access_log.is_some() {
                    trace.reason = Some(rejection.text());
                }
                rejection.response().map(Either::Right)
            }
        }
    };
    let took = started.elapsed();
    metrics.request(trace.route, &method, response.status(), took);
    if let Some(decision) = trace.decision {
        metrics.decision(decision, trace.kind);
    }
    if let (Some(format), Some(path)) = (config.access_log, logged_path) {
        log_access(
            config,
            format,
            &method,
            &path,
            &trace,
            response.status(),
            took,
        );
    }
    Ok(response.map(|body| Watched::new(body, in_flight)))
}

/// An upstream failure as the client gets it; the upstream's own failures are counted by
/// kind (a refused request body is the client's, not the upstream's).
fn upstream_failed(metrics: &WorkerMetrics, error: UpstreamError) -> Rejection {
    let (kind, rejection) = match error {
        UpstreamError::Connect => (
            Some(UpstreamErrorKind::Connect),
            Rejection::UpstreamUnavailable,
        ),
        UpstreamError::Timeout => (Some(UpstreamErrorKind::Timeout), Rejection::UpstreamTimeout),
        UpstreamError::Protocol => (Some(UpstreamErrorKind::Protocol), Rejection::UpstreamBroken),
        UpstreamError::Uri => (
            None,
            Rejection::BadRequest("The request URI cannot be forwarded."),
        ),
        UpstreamError::Body(rejection) => (None, rejection),
    };
    if let Some(kind) = kind {
        metrics.upstream_error(kind);
    }
    rejection
}

/// The decision a refusal stands for, if it is one.
fn decision_of(rejection: &Rejection) -> Option<Decision> {
    match rejection {
        Rejection::BadPath(_)
        | Rejection::BadRequest(_)
        | Rejection::Unsupported(_)
        | Rejection::TooLarge => Some(Decision::BadRequest),
        Rejection::Unauthenticated | Rejection::LoginRequired { .. } => {
            Some(Decision::Unauthenticated)
        }
        Rejection::Forbidden => Some(Decision::Forbidden),
        Rejection::NoRoute => Some(Decision::NoRoute),
        Rejection::CsrfMismatch => Some(Decision::Csrf),
        _ => None,
    }
}

fn log_access(
    config: &Config,
    format: AccessLogFormat,
    method: &http::Method,
    path: &str,
    trace: &Trace,
    status: http::StatusCode,
    took: std::time::Duration,
) {
    let route = match trace.route {
        RouteLabel::Route(i) => config
            .routes
            .routes()
            .get(i)
            .map_or("unmatched", |r| &*r.pattern),
        RouteLabel::Unmatched => "unmatched",
        RouteLabel::Reserved => "_tokengate",
    };
    let token_id = match &trace.principal {
        Some(Principal::Token(token)) => Some(token.id.0),
        _ => None,
    };
    access_log::write(
        format,
        &access_log::Entry {
            method: method.as_str(),
            path,
            route,
            decision: trace.decision.map_or("-", Decision::label),
            status: status.as_u16(),
            latency_ms: took.as_secs_f64() * 1000.0,
            auth: trace.kind.label(),
            user: trace.principal.as_ref().map(Principal::user),
            token_id,
            reason: trace.reason.as_deref(),
        },
    );
}

/// The way to the upstream for one request: the worker's upstream, the upstream
/// connections dedicated to the request's client connection, and the metrics to count in.
#[derive(Clone, Copy)]
struct Link<'a> {
    upstream: &'a Upstream,
    dedicated: &'a Arc<Dedicated>,
    metrics: &'a Arc<WorkerMetrics>,
}

async fn forward(
    app: &App,
    config: &Arc<Config>,
    link: Link<'_>,
    request: Request<Incoming>,
    conn: &ConnInfo,
    trace: &mut Trace,
) -> Result<Response<Body>, Rejection> {
    let (mut parts, body) = request.into_parts();
    let mut body = Outbound::new(body, config, conn.trusted());
    let plan = decide(config, &mut parts, &mut body)
        .await
        .inspect_err(|rejection| {
            if *rejection == Rejection::NotFound {
                trace.route = RouteLabel::Reserved;
            }
        })?;
    trace.route = RouteLabel::Route(plan.route().index);
    let principal = authenticate(app, config, &plan, &parts, conn).await?;
    trace.kind = match &principal {
        Some(Principal::Token(_)) => CredentialKind::Token,
        Some(Principal::Session(_) | Principal::Laravel(_)) => CredentialKind::Session,
        None => CredentialKind::None,
    };
    if config.access_log.is_some() {
        trace.principal = principal.clone();
    }
    let login_page = config
        .sessions
        .laravel
        .as_ref()
        .map(|l| l.login_url.as_str());
    decision::authorize(&plan, principal.as_ref(), &parts, login_page)?;

    let upgrading = tunnel::requested(&parts, &config.upgrades)?;
    let added = headers::prepare_request(&mut parts, config, principal.as_ref(), conn);

    trace.decision = Some(Decision::Allowed);
    let Link {
        upstream,
        dedicated,
        metrics,
    } = link;
    // A tunnel or event stream ends with its credential (`streams`).
    let watch = || {
        principal
            .clone()
            .map(|principal| app.streams.watch(grant(config, &plan, principal)))
    };
    if let Some(protocol) = upgrading {
        // Boxed: an upgrade is rare, and its future large.
        let relay = Relay {
            idle: config.timeouts.tunnel_idle,
            conn,
            watch: watch(),
        };
        return Box::pin(upgrade(
            upstream, metrics, parts, &added, body, protocol, relay,
        ))
        .await;
    }
    let sent = Instant::now();
    let mut response = match upstream
        .send(Request::from_parts(parts, body), &added, dedicated)
        .await
    {
        Ok(response) => response,
        Err(error) => return Err(upstream_failed(metrics, error)),
    };
    metrics.upstream(sent.elapsed());
    headers::strip_hop_by_hop(response.headers_mut());
    if principal.is_some() && is_event_stream(response.headers()) {
        if let Some(watch) = watch() {
            return Ok(response.map(|body| Either::Left(body.ending(watch))));
        }
    }
    Ok(response.map(Either::Left))
}

/// What a stream opened by this request was authorized with.
fn grant(config: &Arc<Config>, plan: &decision::Plan<'_>, principal: Principal) -> Grant {
    Grant {
        principal,
        config: Arc::clone(config),
        routes: plan.routes().map(|route| route.index).collect(),
    }
}

/// Whether an answer is a server-sent events stream (`text/event-stream`).
fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|value| {
        let essence = value
            .as_bytes()
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default();
        essence
            .trim_ascii()
            .eq_ignore_ascii_case(b"text/event-stream")
    })
}

/// The decision's plan for a request (`decision::plan`); a POST whose body may name
/// another method has a bounded prefix of its body read first (`Outbound::read_prefix`).
async fn decide<'c>(
    config: &'c Config,
    parts: &mut request::Parts,
    body: &mut Outbound,
) -> Result<decision::Plan<'c>, Rejection> {
    let plan = decision::plan(config, parts, decision::Body::Unread)?;
    if !plan.body_may_override {
        return Ok(plan);
    }
    let Some(scan) =
        method_override::body_scan(&parts.headers).map_err(decision::override_refusal)?
    else {
        return Ok(plan);
    };
    // Boxed: rare, and its future holds the frames read.
    let mut named = method_override::Methods::new();
    Box::pin(body.read_prefix(scan, &mut named, config.limits.body_scan_bytes)).await?;
    let plan = decision::plan(config, parts, decision::Body::Read(&named))?;
    body.allow(&parts.method, plan.other_methods());
    Ok(plan)
}

/// The principal behind a credential every route of the plan accepts, if any: a valid
/// session cookie first, else the bearer token (Sanctum's order). A missing or invalid
/// credential is `None` (the routes decide whether that matters); a session failing the
/// CSRF rules, ambiguity and store failures are errors. `tokengate explain` runs it too.
pub async fn authenticate(
    app: &App,
    config: &Config,
    plan: &decision::Plan<'_>,
    parts: &request::Parts,
    conn: &ConnInfo,
) -> Result<Option<Principal>, Rejection> {
    if plan.public() {
        return Ok(None);
    }
    if plan.sessions && parts.headers.contains_key(COOKIE) {
        if let Some(principal) = session(app, config, plan, parts, conn).await? {
            return Ok(Some(principal));
        }
    }
    if !plan.tokens {
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
        Err(e) => Err(Rejection::store_failed("token", &e)),
    }
}

/// The session a request's cookie names, if valid, once it passes the CSRF rules.
async fn session(
    app: &App,
    config: &Config,
    plan: &decision::Plan<'_>,
    parts: &request::Parts,
    conn: &ConnInfo,
) -> Result<Option<Principal>, Rejection> {
    let values = cookies::values(&parts.headers, &config.sessions.cookie);
    let found = app
        .sessions
        .from_cookies(values)
        .await
        .map_err(|e| Rejection::store_failed("session", &e))?;
    let Some((session, cookie)) = found else {
        return laravel_session(app, config, plan, parts, conn).await;
    };
    // With the app's own session cookie beside it, the app may act for another user than
    // tokengate's session names (a cookie planted from a sibling domain is enough): refused.
    if let Some(laravel) = &config.sessions.laravel {
        if cookies::carries(&parts.headers, &laravel.cookie) {
            return Err(Rejection::BadRequest(
                "Both tokengate's session cookie and the app's: which session is meant is ambiguous.",
            ));
        }
    }
    csrf_checked(plan, parts, conn, || {
        parts
            .headers
            .get(csrf::XSRF_HEADER)
            .is_some_and(|v| cookie.xsrf_matches(v.as_bytes()))
    })?;
    Ok(Some(Principal::Session(session)))
}

/// The CSRF rules for a session's request (`csrf::passes_with`); `token_matches`: does
/// it carry the session's own token?
fn csrf_checked(
    plan: &decision::Plan<'_>,
    parts: &request::Parts,
    conn: &ConnInfo,
    token_matches: impl FnOnce() -> bool,
) -> Result<(), Rejection> {
    let (scheme, host) = headers::own_origin(parts, conn);
    let method = plan.csrf_method(&parts.method);
    if csrf::passes_with(method, &parts.headers, scheme, host, token_matches) {
        Ok(())
    } else {
        Err(Rejection::CsrfMismatch)
    }
}

/// The Laravel app's own session (`sessions.laravel`), if its cookie names one with a user,
/// once it passes the CSRF rules (Laravel's `X-XSRF-TOKEN` and `X-CSRF-TOKEN` headers for
/// the token check).
async fn laravel_session(
    app: &App,
    config: &Config,
    plan: &decision::Plan<'_>,
    parts: &request::Parts,
    conn: &ConnInfo,
) -> Result<Option<Principal>, Rejection> {
    let Some(settings) = &config.sessions.laravel else {
        return Ok(None);
    };
    let found = app
        .laravel
        .authenticate(settings, config.store.sync_interval(), &parts.headers)
        .await
        .map_err(|e| Rejection::store_failed("Laravel session", &e))?;
    let Some(session) = found else {
        return Ok(None);
    };
    csrf_checked(plan, parts, conn, || {
        session.xsrf_matches(settings, &parts.headers)
    })?;
    Ok(Some(Principal::Laravel(session)))
}

/// What a tunnel's relay needs from the request's connection, and its credential's watch.
struct Relay<'a> {
    idle: std::time::Duration,
    conn: &'a ConnInfo,
    watch: Option<Watch>,
}

/// An upgrade (WebSocket): the request goes upstream on a connection of its own with its
/// `Connection: upgrade`/`Upgrade` headers; if the upstream switches protocols, the two
/// upgraded streams are joined (`tunnel::relay`); any other answer streams back as usual.
async fn upgrade(
    upstream: &Upstream,
    metrics: &Arc<WorkerMetrics>,
    mut parts: request::Parts,
    added: &headers::Added<'_>,
    body: Outbound,
    protocol: http::HeaderValue,
    relay: Relay<'_>,
) -> Result<Response<Body>, Rejection> {
    let client_upgrade = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or(Rejection::BadRequest("This connection cannot be upgraded."))?;
    added.insert_into(&mut parts.headers);
    let websocket = protocol.as_bytes().eq_ignore_ascii_case(b"websocket");
    headers::keep_upgrade(&mut parts.headers, protocol);
    let sent = Instant::now();
    let mut response = upstream
        .send_upgrade(Request::from_parts(parts, body))
        .await
        .map_err(|error| upstream_failed(metrics, error))?;
    metrics.upstream(sent.elapsed());
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        // Refused by the app: its answer streams back like any other.
        let (mut head, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut head.headers);
        return Ok(Response::from_parts(
            head,
            Either::Left(UpstreamBody::unpooled(body)),
        ));
    }
    let upstream_upgrade = hyper::upgrade::on(&mut response);
    let (slot, metrics) = (relay.conn.slot(), Arc::clone(metrics));
    let tunnel = tunnel::Tunnel {
        idle: relay.idle,
        websocket,
        ending: async move {
            match relay.watch {
                Some(watch) => watch.await,
                None => std::future::pending().await,
            }
        },
    };
    tokio::spawn(async move {
        match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok((client, upstream)) => {
                let client = hyper_util::rt::TokioIo::new(client);
                let upstream = hyper_util::rt::TokioIo::new(upstream);
                let _open = metrics.tunnel();
                // (Ended by a credential: counted by the checker that ended it.)
                if tunnel::relay(client, upstream, tunnel, slot).await == tunnel::Ended::Idle {
                    metrics.closed(crate::metrics::Closed::TunnelIdle);
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let (head, _) = response.into_parts();
    Ok(Response::from_parts(
        head,
        Either::Right(Full::new(Bytes::new())),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<F: std::future::Future>(
        _: impl FnOnce(Context, Request<Incoming>) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    /// hyper moves the service future at least once per request, and every nested `.await`
    /// lays a callee's future out in its caller's: unboxed, the cold paths (TLS dialling,
    /// upgrades, pages, HTTP/2) had made it 75 KB. Box whatever makes this grow.
    #[test]
    fn the_request_future_stays_small() {
        let size = future_size(handle);
        assert!(size <= 4096, "the request future is {size} bytes");
    }
}
