//! `tokengate explain`: the proxy's verdict on a request, step by step, without sending
//! anything upstream. It runs the proxy's own steps (`decision::plan`, a body scan for a
//! `_method`, `proxy::authenticate`, `decision::authorize`), so its verdict is the status
//! the running proxy gives (`tests/explain.rs` holds the two to it).

use crate::app::App;
use crate::auth::Principal;
use crate::config::Config;
use crate::decision::{self, Plan};
use crate::error::Rejection;
use crate::headers::ConnInfo;
use crate::method_override;
use crate::proxy;
use crate::reserved;
use bytes::Bytes;
use http::{request, Method, StatusCode};

/// What the proxy does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// tokengate's own pages answer it (login, logout, csrf-cookie, the token page).
    Pages,
    /// Refused by tokengate, with this status.
    Refused(StatusCode),
    /// Forwarded upstream: the status is the upstream's.
    Allowed,
}

/// The steps of a decision, one line each, and the verdict.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub steps: Vec<String>,
    pub verdict: Verdict,
}

impl Explanation {
    fn refused(mut self, rejection: &Rejection) -> Self {
        self.steps.push(format!(
            "decision: {} {rejection}",
            rejection.status().as_u16()
        ));
        self.verdict = Verdict::Refused(rejection.status());
        self
    }
}

/// Explains `request` (its method, target, headers and whole body) as the proxy would
/// decide it for a client at `peer`. `app` is needed only when the request carries a
/// credential (to look it up).
pub async fn explain(
    config: &Config,
    app: Option<&App>,
    request: http::Request<Bytes>,
    peer: std::net::SocketAddr,
) -> Result<Explanation, &'static str> {
    let (mut parts, body) = request.into_parts();
    let mut explanation = Explanation {
        steps: Vec::new(),
        verdict: Verdict::Allowed,
    };
    if reserved::is_reserved(parts.uri.path()) {
        explanation.steps.push(
            "path: reserved for tokengate's own pages (login, logout, csrf-cookie, api-tokens)"
                .into(),
        );
        explanation
            .steps
            .push("decision: answered by tokengate, never forwarded".into());
        explanation.verdict = Verdict::Pages;
        return Ok(explanation);
    }
    let plan = match plan(config, &mut parts, &body) {
        Ok(plan) => plan,
        Err(rejection) => return Ok(explanation.refused(&rejection)),
    };
    describe(&plan, &parts, &mut explanation.steps);
    let conn = ConnInfo::new(peer, &config.trusted_proxies, false);
    let carries_credential = !plan.public()
        && (parts.headers.contains_key(http::header::AUTHORIZATION)
            || parts.headers.contains_key(http::header::COOKIE));
    let principal = match (app, carries_credential) {
        (_, false) => None,
        (None, true) => return Err("a request with a credential needs the store"),
        (Some(app), true) => match proxy::authenticate(app, config, &plan, &parts, &conn).await {
            Ok(principal) => principal,
            Err(rejection) => return Ok(explanation.refused(&rejection)),
        },
    };
    if carries_credential {
        explanation.steps.push(match &principal {
            Some(Principal::Token(token)) => format!(
                "token: id {} of user {}, abilities: {}",
                token.id,
                token.user(),
                token.abilities()
            ),
            Some(Principal::Session(session)) => format!("session: of user {}", session.user()),
            Some(Principal::Laravel(session)) => {
                format!("Laravel session: of user {}", session.user())
            }
            None => {
                "token: not valid (unknown, malformed, revoked or expired, or not accepted here)"
                    .into()
            }
        });
    }
    let login_page = config
        .sessions
        .laravel
        .as_ref()
        .map(|l| l.login_url.as_str());
    if let Err(rejection) = decision::authorize(&plan, principal.as_ref(), &parts, login_page) {
        return Ok(explanation.refused(&rejection));
    }
    explanation
        .steps
        .push("decision: allowed, forwarded upstream".into());
    Ok(explanation)
}

/// The proxy's plan, with the body (held whole here) read for a `_method` as the proxy
/// reads its prefix.
fn plan<'c>(
    config: &'c Config,
    parts: &mut request::Parts,
    body: &Bytes,
) -> Result<Plan<'c>, Rejection> {
    let plan = decision::plan(config, parts, decision::Body::Unread)?;
    if !plan.body_may_override {
        return Ok(plan);
    }
    let Some(mut scan) =
        method_override::body_scan(&parts.headers).map_err(decision::override_refusal)?
    else {
        return Ok(plan);
    };
    let mut named = method_override::Methods::new();
    scan.feed(body, &mut named)
        .and_then(|()| scan.finish(&mut named))
        .map_err(decision::override_refusal)?;
    decision::plan(config, parts, decision::Body::Read(&named))
}

fn describe(plan: &Plan<'_>, parts: &request::Parts, steps: &mut Vec<String>) {
    steps.push(format!("path: {} (as matched)", parts.uri.path()));
    if !plan.other_methods().is_empty() {
        let methods: Vec<&str> = std::iter::once(&parts.method)
            .chain(plan.other_methods())
            .map(Method::as_str)
            .collect();
        steps.push(format!(
            "methods: {} (every route below must be satisfied)",
            methods.join(", ")
        ));
    }
    for route in plan.routes() {
        let methods = route.methods.as_ref().map_or_else(
            || "any".to_owned(),
            |m| m.iter().map(Method::as_str).collect::<Vec<_>>().join(", "),
        );
        steps.push(format!(
            "route: routes[{}] {} (methods: {methods})",
            route.index, route.pattern
        ));
        steps.push(format!("auth: {:?}", route.auth));
        if !route.all_of.is_empty() {
            steps.push(format!("requires all of: {}", route.all_of.join(", ")));
        }
        if !route.any_of.is_empty() {
            steps.push(format!("requires one of: {}", route.any_of.join(", ")));
        }
    }
}
