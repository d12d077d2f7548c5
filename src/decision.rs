//! The proxy's decision on a request, the same for the proxy and for `tokengate explain`:
//! two pure steps around the credential lookup.
//!
//! 1. `plan`: what the request means, to tokengate and to every common upstream. Its `Host`
//!    (one, agreeing with an absolute target), its method (in any case; and every method a
//!    header or a `_method` field names, `method_override`), its path (checked by `path`, and
//!    matched under every way upstreams read paths, `path::Reading`). The result is the set
//!    of routes the request must satisfy — its own and those of each method it may be run
//!    as — and the credentials all of them accept. A path that some reading sends to a route
//!    with other requirements is refused (400): tokengate cannot tell which the upstream
//!    will run.
//! 2. `authorize`: the principal must satisfy every one of those routes (the strictest
//!    reading wins): 401, a redirect to the login page for a browser, or 403.

use crate::auth::{self, Denial, Principal};
use crate::config::Config;
use crate::error::Rejection;
use crate::method_override::{self, Methods, OverrideError};
use crate::path::{self, Readings};
use crate::reserved;
use crate::routes::{AuthMode, Route};
use http::header::HOST;
use http::{request, Method};
use smallvec::SmallVec;

/// What a request must satisfy. Compact for the common request, which means one method and
/// one route; a request that may be run as other methods carries them in `more`.
#[derive(Debug, Clone)]
pub struct Plan<'c> {
    /// The route the request's own method and path match.
    route: &'c Route,
    more: Option<Box<More<'c>>>,
    /// Which credentials every route that needs one accepts.
    pub sessions: bool,
    pub tokens: bool,
    /// Its body may name another method and has not been read for it (`body`).
    pub body_may_override: bool,
}

/// The methods beyond its own that a request may be run as, and the routes they add.
#[derive(Debug, Clone)]
struct More<'c> {
    methods: Methods,
    routes: SmallVec<[&'c Route; 2]>,
}

impl<'c> Plan<'c> {
    /// The route the request's own method and path match.
    pub fn route(&self) -> &'c Route {
        self.route
    }

    /// Every route the request must satisfy, its own first, each once.
    pub fn routes(&self) -> impl Iterator<Item = &'c Route> + '_ {
        std::iter::once(self.route).chain(self.more.iter().flat_map(|m| m.routes.iter().copied()))
    }

    /// The methods beyond its own that the request may be run as.
    pub fn other_methods(&self) -> &[Method] {
        self.more.as_ref().map_or(&[], |m| &m.methods)
    }

    /// No route asks for a credential.
    pub fn public(&self) -> bool {
        self.routes().all(|r| r.auth == AuthMode::None)
    }

    /// The method the CSRF rules judge for a request whose own is `own`: an unsafe one if
    /// the request may be run as one.
    pub fn csrf_method<'m>(&'m self, own: &'m Method) -> &'m Method {
        if auth::csrf::is_unsafe(own) {
            return own;
        }
        self.other_methods()
            .iter()
            .find(|m| auth::csrf::is_unsafe(m))
            .unwrap_or(own)
    }
}

/// How much of a request's body was read for the methods it names: none (not read, or
/// nothing to read), or the methods found.
#[derive(Debug, Clone, Copy)]
pub enum Body<'m> {
    Unread,
    Read(&'m [Method]),
}

/// Decides what a request must satisfy (see the module doc). Puts the request's method in
/// upper case (as Werkzeug and others read it) so that it goes upstream as authorized.
pub fn plan<'c>(
    config: &'c Config,
    parts: &mut request::Parts,
    body: Body<'_>,
) -> Result<Plan<'c>, Rejection> {
    // One pass over the headers: the `Host`s, and the methods override headers name.
    let mut methods = Methods::new();
    let mut host = None;
    for (name, value) in &parts.headers {
        if name == HOST {
            if host.replace(value).is_some() {
                return Err(Rejection::BadRequest("More than one Host header."));
            }
        } else {
            method_override::from_header(name, value, &mut methods).map_err(override_refusal)?;
        }
    }
    check_host(host, parts)?;
    if parts
        .method
        .as_str()
        .bytes()
        .any(|b| b.is_ascii_lowercase())
    {
        let upper = parts.method.as_str().to_ascii_uppercase();
        parts.method = Method::from_bytes(upper.as_bytes())
            .map_err(|_| Rejection::BadRequest("The request method is invalid."))?;
    }
    let checked = path::check(parts.uri.path())?;
    if checked.segments().next() == Some("_tokengate") {
        // `/%5Ftokengate/…`: reserved too, whatever the routes say.
        return Err(Rejection::NotFound);
    }

    // The methods the request names besides its own: in headers (above), the query and
    // the body.
    let overrides = override_refusal;
    let post = parts.method == Method::POST;
    if post {
        if let Some(query) = parts.uri.query() {
            method_override::from_query(query, &mut methods).map_err(overrides)?;
        }
    }
    if let Body::Read(named) = body {
        for method in named {
            if !methods.contains(method) {
                methods.push(method.clone());
            }
        }
    }
    // Servers run a GET handler for a HEAD (Flask, Express, Laravel, Rails).
    if parts.method == Method::HEAD && !methods.contains(&Method::GET) {
        methods.push(Method::GET);
    }
    methods.retain(|m| *m != parts.method);

    let mut readings = checked.sensitive();
    if config.routes.has_upper_case() {
        readings = readings.with(path::Reading::CaseFolded);
    }
    // A reading that makes a dot segment or a separator is refused whatever the routes.
    let read: SmallVec<[(Readings, Vec<String>); 1]> = readings
        .subsets()
        .map(|subset| Ok((subset, path::read_as(&checked, subset)?)))
        .collect::<Result<_, Rejection>>()?;
    let route_of = |method: &Method| -> Result<&'c Route, Rejection> {
        let route = config
            .routes
            .find(method, &checked)
            .ok_or(Rejection::NoRoute)?;
        same_under_readings(config, method, &read, route)?;
        Ok(route)
    };
    let route = route_of(&parts.method)?;
    let more = if methods.is_empty() {
        None
    } else {
        let mut routes = SmallVec::new();
        for method in &methods {
            let other = route_of(method)?;
            if other.index != route.index && !routes.iter().any(|r: &&Route| r.index == other.index)
            {
                routes.push(other);
            }
        }
        Some(Box::new(More { methods, routes }))
    };
    let mut plan = Plan {
        route,
        more,
        sessions: true,
        tokens: true,
        body_may_override: post
            && matches!(body, Body::Unread)
            && (config.routes.depends_on_method(&checked)
                || read.iter().any(|(subset, segments)| {
                    let folded = subset.contains(path::Reading::CaseFolded);
                    config.routes.depends_on_method_read(segments, folded)
                })),
    };
    let (sessions, tokens) = plan.routes().filter(|r| r.auth != AuthMode::None).fold(
        (true, true),
        |(sessions, tokens), route| {
            (
                sessions && matches!(route.auth, AuthMode::Any | AuthMode::Session),
                tokens && matches!(route.auth, AuthMode::Any | AuthMode::Token),
            )
        },
    );
    plan.sessions = sessions;
    plan.tokens = tokens;
    Ok(plan)
}

/// The one `Host` is the same as the authority of an absolute target (HTTP/2, or an
/// HTTP/1.1 absolute-form request): the upstream reads the `Host` tokengate forwards, and
/// the CSRF rules and `X-Forwarded-Host` must mean the same one.
fn check_host(host: Option<&http::HeaderValue>, parts: &request::Parts) -> Result<(), Rejection> {
    if let (Some(host), Some(authority)) = (host, parts.uri.authority()) {
        if !host
            .as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes())
        {
            return Err(Rejection::BadRequest(
                "The Host header does not match the request target.",
            ));
        }
    }
    Ok(())
}

/// Refuses a path that any combination of the readings it is sensitive to (`read`: each
/// with the segments it gives) sends to a route with other requirements than `route`, or
/// to none.
fn same_under_readings(
    config: &Config,
    method: &Method,
    read: &[(Readings, Vec<String>)],
    route: &Route,
) -> Result<(), Rejection> {
    for (subset, segments) in read {
        let folded = subset.contains(path::Reading::CaseFolded);
        let other = config.routes.find_read(method, segments, folded);
        if !other.is_some_and(|other| other.same_requirements(route)) {
            let reading = subset.first().expect("a non-empty subset");
            return Err(Rejection::BadRequest(reading.refusal()));
        }
    }
    Ok(())
}

/// The rejection for a request whose method cannot be told (`method_override`).
pub fn override_refusal(e: OverrideError) -> Rejection {
    match e {
        OverrideError::Unreadable => Rejection::Unsupported(e.message()),
        _ => Rejection::BadRequest(e.message()),
    }
}

/// Does `principal` satisfy every route of the plan? A browser (`Accept: text/html`)
/// without a session where a route takes only sessions is sent to the login page: the
/// app's (`login_page`, a Laravel app's), or tokengate's, to come back to the path and
/// query it asked for.
pub fn authorize(
    plan: &Plan<'_>,
    principal: Option<&Principal>,
    parts: &request::Parts,
    login_page: Option<&str>,
) -> Result<(), Rejection> {
    for route in plan.routes() {
        if let Err(denial) = auth::authorize(route, principal) {
            if denial == Denial::Unauthenticated
                && route.auth == AuthMode::Session
                && reserved::wants_html(&parts.headers)
            {
                let next = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                let location = match login_page {
                    Some(page) => page.to_owned(),
                    None => reserved::login_location(next),
                };
                return Err(Rejection::LoginRequired { location });
            }
            return Err(denial.into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    const CONFIG: &str = r#"
upstream: http://127.0.0.1:1
abilities: [read, create, delete, admin]
routes:
  - path: /public/**
    auth: none
  - path: /admin/**
    abilities: [admin]
  - path: /Mixed/Case
    abilities: [admin]
  - path: /api/posts/{id}
    methods: [GET, HEAD]
    abilities: [read]
  - path: /api/posts/{id}
    methods: [DELETE]
    abilities: [delete]
  - path: /api/posts/{id}
    methods: [POST]
    abilities: [create]
  - path: /app/**
    auth: session
  - path: /**
    auth: any
"#;

    fn outcome(
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<Vec<String>, Rejection> {
        let config = Config::parse(CONFIG).unwrap();
        let mut builder = Request::builder().method(method).uri(target);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let mut parts = builder.body(()).unwrap().into_parts().0;
        let plan = plan(&config, &mut parts, Body::Unread)?;
        Ok(plan.routes().map(|r| r.pattern.to_string()).collect())
    }

    fn refused(method: &str, target: &str, headers: &[(&str, &str)]) -> String {
        match outcome(method, target, headers) {
            Err(Rejection::BadRequest(message)) => message.to_owned(),
            Err(Rejection::BadPath(e)) => e.to_string(),
            other => panic!("{method} {target}: {other:?}"),
        }
    }

    #[test]
    fn paths_that_upstreams_route_elsewhere_are_refused() {
        for (target, reason) in [
            ("/ADMIN/users", "letter case"),
            ("/Admin/users", "letter case"),
            ("/admin;x/users", "';' parameters"),
            ("/admin;/users", "';' parameters"),
            ("/admin./secret", "trailing dots"),
            ("/admin%20/secret", "trailing dots"),
            ("/admin%09/secret", "trailing dots"),
            ("/%20admin/secret", "trailing dots"),
            ("/%EF%BD%81dmin/x", "Unicode"),
            ("/%EF%BC%8E%EF%BC%8E/admin", "dot segment"),
            ("/x/..%20/admin", "dot segment"),
            ("/a%EF%BC%8Fb", "separator"),
            ("/mixed/case", "letter case"),
        ] {
            let message = refused("GET", target, &[]);
            assert!(message.contains(reason), "{target}: {message}");
        }
    }

    #[test]
    fn readings_that_lead_to_the_same_requirements_pass() {
        for (target, route) in [
            ("/api/posts/AbC", "/api/posts/{id}"),
            ("/api/posts/x;v=1", "/api/posts/{id}"),
            ("/anything/ELSE", "/**"),
            ("/public/Read%20Me.", "/public/**"),
            ("/Mixed/Case", "/Mixed/Case"),
            ("/caf%C3%A9", "/**"),
        ] {
            assert_eq!(outcome("GET", target, &[]).unwrap(), [route], "{target}");
        }
    }

    #[test]
    fn methods_in_any_case_and_every_override_are_authorized() {
        assert_eq!(
            outcome("post", "/api/posts/1", &[]).unwrap(),
            ["/api/posts/{id}"]
        );
        let both = outcome(
            "POST",
            "/api/posts/1",
            &[("x-http-method-override", "DELETE")],
        )
        .unwrap();
        assert_eq!(
            both.len(),
            2,
            "the POST route and the DELETE route: {both:?}"
        );
        assert_eq!(
            outcome("POST", "/api/posts/1?_method=delete", &[])
                .unwrap()
                .len(),
            2
        );
        // `_method` in the query only counts on a POST (as in Laravel, Rails, Express).
        assert_eq!(
            outcome("GET", "/api/posts/1?_method=delete", &[])
                .unwrap()
                .len(),
            1
        );
        assert!(
            refused("POST", "/x", &[("x-http-method-override", "DEL ETE")])
                .contains("not a valid method")
        );
        let config = Config::parse(CONFIG).unwrap();
        let mut parts = Request::post("/api/posts/1")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let plan = plan(&config, &mut parts, Body::Unread).unwrap();
        assert!(
            plan.body_may_override,
            "the routes of this path depend on the method"
        );
        let mut parts = Request::post("/public/x").body(()).unwrap().into_parts().0;
        let plan = super::plan(&config, &mut parts, Body::Unread).unwrap();
        assert!(
            !plan.body_may_override,
            "one route for every method: no need to read the body"
        );
    }

    #[test]
    fn one_host_agreeing_with_the_target() {
        assert!(
            refused("GET", "/x", &[("host", "a"), ("host", "b")]).contains("More than one Host")
        );
        assert!(
            refused("GET", "http://a.example/x", &[("host", "b.example")])
                .contains("does not match")
        );
        assert!(outcome("GET", "http://a.example/x", &[("host", "A.example")]).is_ok());
    }

    #[test]
    fn every_route_must_be_satisfied() {
        let config = Config::parse(CONFIG).unwrap();
        let mut parts = Request::post("/api/posts/1")
            .header("x-http-method-override", "DELETE")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let plan = plan(&config, &mut parts, Body::Unread).unwrap();
        assert!(plan.tokens && plan.sessions);
        assert_eq!(
            authorize(&plan, None, &parts, None),
            Err(Rejection::Unauthenticated)
        );
    }
}
