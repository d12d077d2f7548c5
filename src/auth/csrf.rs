//! CSRF for cookie sessions, as Sanctum's SPA guard and browsers allow it. Pure: no I/O.
//!
//! A request with an unsafe method (anything but GET, HEAD, OPTIONS, TRACE) authenticated
//! by a session passes when one of these holds:
//! - `Sec-Fetch-Site: same-origin` (set by the browser, not by page scripts);
//! - `Origin` equals the request's own origin (scheme, host and port as tokengate sees them);
//! - `X-XSRF-TOKEN` equals the session's `XSRF-TOKEN`.
//!
//! Bearer-token requests never come here: a browser does not attach them by itself.

use crate::credential::session::CookieValue;
use http::{HeaderMap, Method};

pub use crate::reserved::XSRF_HEADER;

/// Does a method change state (and so need CSRF protection)?
pub fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Does a session request pass the CSRF rules? `scheme` and `host` are the request's own
/// origin as tokengate sees it (`X-Forwarded-Proto` honoured only from trusted proxies).
pub fn passes(
    method: &Method,
    headers: &HeaderMap,
    scheme: &str,
    host: Option<&str>,
    session: CookieValue<'_>,
) -> bool {
    passes_with(method, headers, scheme, host, || {
        headers
            .get(XSRF_HEADER)
            .is_some_and(|v| session.xsrf_matches(v.as_bytes()))
    })
}

/// `passes`, with the session's own token check (`token_matches`: do the request's
/// headers carry this session's CSRF token?) for a session of another kind (Laravel's).
pub fn passes_with(
    method: &Method,
    headers: &HeaderMap,
    scheme: &str,
    host: Option<&str>,
    token_matches: impl FnOnce() -> bool,
) -> bool {
    if !is_unsafe(method) {
        return true;
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"same-origin"))
    {
        return true;
    }
    if let (Some(origin), Some(host)) = (headers.get(http::header::ORIGIN), host) {
        if origin
            .to_str()
            .is_ok_and(|origin| same_origin(origin, scheme, host))
        {
            return true;
        }
    }
    token_matches()
}

/// `origin` (`scheme://host[:port]`) against the request's scheme and `Host`, with default
/// ports made explicit on both sides and hosts compared case-insensitively.
fn same_origin(origin: &str, scheme: &str, host: &str) -> bool {
    let Some((origin_scheme, origin_host)) = origin.split_once("://") else {
        return false;
    };
    origin_scheme.eq_ignore_ascii_case(scheme)
        && with_port(origin_host, scheme).eq_ignore_ascii_case(&with_port(host, scheme))
}

fn with_port(host: &str, scheme: &str) -> String {
    let has_port = match host.rfind(':') {
        Some(i) => !host[i..].contains(']'),
        None => false,
    };
    if has_port {
        host.to_owned()
    } else {
        let port = if scheme.eq_ignore_ascii_case("https") {
            443
        } else {
            80
        };
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::session::generate_cookie_value;
    use http::HeaderValue;

    fn check(method: Method, headers: &[(&str, &str)], session: &str) -> bool {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let session = CookieValue::parse(session).unwrap();
        passes(&method, &map, "http", Some("app.example:8080"), session)
    }

    #[test]
    fn the_matrix() {
        let cookie = generate_cookie_value();
        let other = generate_cookie_value();
        let xsrf = CookieValue::parse(&cookie).unwrap().xsrf_token();
        let others = CookieValue::parse(&other).unwrap().xsrf_token();
        assert!(check(Method::GET, &[], &cookie));
        assert!(check(
            Method::HEAD,
            &[("origin", "https://evil.example")],
            &cookie
        ));
        assert!(!check(Method::POST, &[], &cookie));
        assert!(check(
            Method::POST,
            &[("sec-fetch-site", "same-origin")],
            &cookie
        ));
        assert!(!check(
            Method::POST,
            &[("sec-fetch-site", "same-site")],
            &cookie
        ));
        assert!(!check(
            Method::POST,
            &[("sec-fetch-site", "cross-site")],
            &cookie
        ));
        assert!(check(
            Method::PUT,
            &[("origin", "http://app.example:8080")],
            &cookie
        ));
        assert!(check(
            Method::PUT,
            &[("origin", "http://APP.example:8080")],
            &cookie
        ));
        assert!(!check(
            Method::PUT,
            &[("origin", "https://app.example:8080")],
            &cookie
        ));
        assert!(!check(
            Method::PUT,
            &[("origin", "http://app.example")],
            &cookie
        ));
        assert!(!check(
            Method::DELETE,
            &[("origin", "https://evil.example")],
            &cookie
        ));
        assert!(!check(Method::DELETE, &[("origin", "null")], &cookie));
        assert!(check(Method::PATCH, &[("x-xsrf-token", &xsrf)], &cookie));
        assert!(!check(Method::PATCH, &[("x-xsrf-token", &others)], &cookie));
        assert!(!check(Method::PATCH, &[("x-xsrf-token", "")], &cookie));
        assert!(!check(Method::from_bytes(b"PURGE").unwrap(), &[], &cookie));
    }

    #[test]
    fn default_ports_are_the_same_origin() {
        assert!(same_origin("http://a.example", "http", "a.example:80"));
        assert!(same_origin("https://a.example:443", "https", "a.example"));
        assert!(same_origin("http://[::1]:8080", "http", "[::1]:8080"));
        assert!(same_origin("http://[::1]", "http", "[::1]:80"));
        assert!(!same_origin("http://a.example:81", "http", "a.example"));
        assert!(!same_origin("a.example", "http", "a.example"));
    }
}
