//! Header rewriting between client and upstream: strip hop-by-hop headers, every
//! client-sent identity header and the forwarding headers of untrusted peers, set
//! `X-Forwarded-*`, inject the identity of the principal. What tokengate adds is kept beside
//! the request (`Added`) until the request is written.
//!
//! Names are compared as upstreams read them. CGI, PHP, WSGI, Rack and Apache turn `-` and
//! `_` alike into `_` (`HTTP_X_TOKEN_ABILITIES`), and PHP `.` too, so `X_Token_Abilities` or
//! `X.Token.Abilities` would reach them as the identity header, and `Transfer_Encoding` as a
//! framing header (Werkzeug reads it): every header whose name holds anything but letters,
//! digits and `-` is dropped, as nginx does by default.

use crate::auth::Principal;
use crate::config::Config;
use crate::cookies::{self, LOGIN_CSRF_COOKIE, XSRF_COOKIE};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request;
use ipnet::IpNet;
use smallvec::SmallVec;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

// Statics rather than consts: `Added` borrows them for as long as it needs.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

const METHOD_TOKEN: HeaderValue = HeaderValue::from_static("token");
const METHOD_SESSION: HeaderValue = HeaderValue::from_static("session");
const ALL_ABILITIES: HeaderValue = HeaderValue::from_static("*");

/// Hop-by-hop headers (RFC 9110 §7.6.1 and the usual extras), never forwarded.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// What the proxy knows of the client connection, computed once per connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    peer_ip: HeaderValue,
    /// The peer is a trusted proxy: its `X-Forwarded-*` headers are kept.
    trusted: bool,
    proto: HeaderValue,
    /// The connection's place under `limits.max_connections`: held for as long as anything
    /// holds this (a tunnel outlives its connection's task).
    slot: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, trusted_proxies: &[IpNet], tls: bool) -> Self {
        Self {
            peer,
            peer_ip: HeaderValue::from_str(&peer.ip().to_string())
                .expect("an IP address is a valid header value"),
            trusted: trusted_proxies.iter().any(|n| n.contains(&peer.ip())),
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
            slot: None,
        }
    }

    /// The connection holds `permit` (its place under `limits.max_connections`).
    pub fn holding(mut self, permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        self.slot = Some(Arc::new(permit));
        self
    }

    /// The connection's place under `limits.max_connections`, for what outlives it.
    pub fn slot(&self) -> Option<Arc<tokio::sync::OwnedSemaphorePermit>> {
        self.slot.clone()
    }

    /// The peer is one of `trusted_proxies`.
    pub fn trusted(&self) -> bool {
        self.trusted
    }
}

/// Where `name` is in `HOP_BY_HOP`, if it is there. One `match` on the name's text rather
/// than nine `HeaderName` comparisons: every header of every request and response passes
/// here.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "te" => 3,
        "trailer" => 4,
        "transfer-encoding" => 5,
        "upgrade" => 6,
        "proxy-authenticate" => 7,
        "proxy-authorization" => 8,
        _ => return None,
    })
}

/// Removes hop-by-hop headers and those the `Connection` header names. The headers are
/// scanned once; only those present are removed, and the common `Connection: keep-alive`
/// or `close` costs no allocation.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = [false; 9];
    let mut any = false;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    // `Connection: keep-alive` (or `close`) names nothing beyond the hop-by-hop list.
    let only_keep_alive = headers.get_all(header::CONNECTION).iter().all(|v| {
        v.as_bytes().eq_ignore_ascii_case(b"keep-alive")
            || v.as_bytes().eq_ignore_ascii_case(b"close")
    });
    if present[0] && !only_keep_alive {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| !n.eq_ignore_ascii_case("close") && !n.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            // `TE: trailers` says the client accepts trailers (gRPC needs it end to end).
            let trailers_only = *name == header::TE
                && headers
                    .get_all(header::TE)
                    .iter()
                    .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
            if !trailers_only {
                headers.remove(name);
            }
        }
    }
}

/// Puts back the two hop-by-hop headers an upgrade needs on its next hop.
pub fn keep_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// The headers tokengate adds to a request for the upstream: `X-Forwarded-*` and the
/// principal's identity. They travel beside the request instead of in its header map: the
/// lean exchange writes them straight after the client's headers, which saves hashing each
/// into the map and growing it on every request; the other paths insert them
/// (`insert_into`). Every name here is gone from the client's headers first, so the upstream
/// never sees a client's value beside tokengate's.
#[derive(Debug, Default)]
pub struct Added<'a> {
    fields: SmallVec<[(&'a HeaderName, HeaderValue); 8]>,
}

impl<'a> Added<'a> {
    fn push(&mut self, name: &'a HeaderName, value: HeaderValue) {
        self.fields.push((name, value));
    }

    /// The headers, in the order they are sent.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.fields.iter().map(|(name, value)| (*name, value))
    }

    /// Puts the headers into a request's map, for the paths that send the map itself.
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.iter() {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// A header a client may not send on: one whose name holds anything but letters, digits and
/// `-` (`plain_name`); an
/// identity claim, which only tokengate makes (the configured names, any `X-Token-*`,
/// `X-Auth-*` or `X-Remote-*`, and the user headers of other auth proxies and of Apache,
/// `IDENTITY`); a rewrite of the path the upstream runs (`X-Original-URL`, …); and, unless
/// a trusted proxy sent it, a statement about the connection (`X-Forwarded-*`, `Forwarded`,
/// `X-Real-IP`, …, `FORWARDING`).
pub fn is_forged(name: &HeaderName, config: &Config, trusted: bool) -> bool {
    let n = name.as_str();
    let known = match n.as_bytes().first() {
        Some(b'x') => {
            n.starts_with("x-token-")
                || n.starts_with("x-auth-")
                || n.starts_with("x-remote-")
                || IDENTITY.contains(&n)
                || (!trusted && (n.starts_with("x-forwarded-") || FORWARDING.contains(&n)))
        }
        Some(b'r') => IDENTITY.contains(&n),
        Some(b'c' | b'f' | b't') => !trusted && FORWARDING.contains(&n),
        _ => false,
    };
    known || !plain_name(n) || config.headers.all().contains(&name)
}

/// A name of letters, digits and `-` only. Any other byte a server may read as `-` (CGI,
/// PHP, WSGI and Rack turn `_` into it, PHP `.` too: `X.Token.Abilities` is
/// `HTTP_X_TOKEN_ABILITIES`) or otherwise differently: such headers are dropped, as nginx
/// does by default (`ignore_invalid_headers`).
fn plain_name(name: &str) -> bool {
    name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Who the user is, as other auth proxies, Apache and Kubernetes' front proxy say it, and
/// the path the upstream should run: only tokengate speaks for the user, and only the
/// request line says the path. Removed from everyone (`X-Token-*`, `X-Auth-*` (oauth2-proxy's
/// `X-Auth-Request-*`) and `X-Remote-*` go by prefix).
const IDENTITY: [&str; 13] = [
    "remote-user",
    "x-user",
    "x-email",
    "x-groups",
    "x-preferred-username",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
];

/// What a proxy in front says about the connection: kept from `trusted_proxies`, removed
/// from anyone else (`X-Forwarded-*` goes by prefix).
const FORWARDING: [&str; 10] = [
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-forwarded-for",
    "x-original-host",
    "x-host",
];

/// Removes every header a client may not send on (`is_forged`). Allocates only when the
/// client sent one.
pub fn strip_forged(headers: &mut HeaderMap, config: &Config, trusted: bool) {
    if !headers.keys().any(|name| is_forged(name, config, trusted)) {
        return;
    }
    let forged: SmallVec<[HeaderName; 4]> = headers
        .keys()
        .filter(|name| is_forged(name, config, trusted))
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
}

/// Rewrites a request's headers for the upstream, and returns what tokengate adds to them.
/// The `Authorization` header is not passed on (unless `tokens.forward_authorization`)
/// when tokengate acted on a credential, or when it carries a bearer token, on any route.
pub fn prepare_request<'a>(
    parts: &mut request::Parts,
    config: &'a Config,
    principal: Option<&Principal>,
    conn: &ConnInfo,
) -> Added<'a> {
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    strip_forged(headers, config, conn.trusted);
    if !config.forward_authorization
        && (principal.is_some() || headers.get_all(header::AUTHORIZATION).iter().any(is_bearer))
    {
        headers.remove(header::AUTHORIZATION);
    }

    // HTTP/2 carries the host in the URI; the upstream speaks HTTP/1.1 and needs `Host`.
    let host = match headers.get(header::HOST) {
        Some(host) => Some(host.clone()),
        None => {
            let host = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
            if let Some(host) = &host {
                headers.insert(header::HOST, host.clone());
            }
            host
        }
    };
    let mut added = Added::default();
    forwarded(headers, conn, host, &mut added);

    if !config.sessions.forward_cookie && headers.contains_key(header::COOKIE) {
        cookies::strip(headers, &tokengate_cookies(config));
    }

    let names = &config.headers;
    match principal {
        Some(Principal::Token(token)) => {
            let values = token.identity_values();
            added.push(&names.abilities, values.abilities);
            added.push(&names.user, values.user);
            added.push(&names.token_id, values.token_id);
            added.push(&names.method, METHOD_TOKEN);
        }
        Some(Principal::Session(session)) => {
            added.push(&names.abilities, ALL_ABILITIES);
            added.push(&names.user, session.user_value());
            added.push(&names.method, METHOD_SESSION);
        }
        Some(Principal::Laravel(session)) => {
            added.push(&names.abilities, ALL_ABILITIES);
            added.push(&names.user, session.user_value());
            added.push(&names.method, METHOD_SESSION);
        }
        None => {}
    }
    added
}

/// Whether an `Authorization` value carries a bearer token (the scheme in any case).
fn is_bearer(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
}

/// The cookies tokengate sets, which the upstream does not get unless
/// `sessions.forward_cookie` says so.
fn tokengate_cookies(config: &Config) -> [&str; 3] {
    [
        config.sessions.cookie.as_str(),
        XSRF_COOKIE,
        LOGIN_CSRF_COOKIE,
    ]
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the nearest
/// untrusted address in `X-Forwarded-For` (read from the right, as each proxy appends).
pub fn client_ip(headers: &HeaderMap, conn: &ConnInfo, trusted: &[IpNet]) -> IpAddr {
    if !conn.trusted {
        return conn.peer.ip();
    }
    let mut nearest = conn.peer.ip();
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(text) = value.to_str() else { break };
        for hop in text.rsplit(',') {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                return nearest;
            };
            nearest = ip;
            if !trusted.iter().any(|n| n.contains(&ip)) {
                return ip;
            }
        }
    }
    nearest
}

/// The request's own origin as tokengate sees it: scheme (from `X-Forwarded-Proto` only
/// when a trusted proxy sent it) and host (`Host`, or the authority of an HTTP/2 URI).
pub fn own_origin<'a>(parts: &'a request::Parts, conn: &'a ConnInfo) -> (&'a str, Option<&'a str>) {
    let forwarded = conn
        .trusted
        .then(|| parts.headers.get(&X_FORWARDED_PROTO))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim);
    let scheme = forwarded.unwrap_or_else(|| conn.proto.to_str().unwrap_or("http"));
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()));
    (scheme, host)
}

/// `X-Forwarded-For/Proto/Host`: from a trusted proxy extended or kept; otherwise set from
/// what tokengate itself sees (`strip_claims` removed the client's), so a client cannot
/// forge them.
fn forwarded(
    headers: &mut HeaderMap,
    conn: &ConnInfo,
    host: Option<HeaderValue>,
    added: &mut Added<'_>,
) {
    // A trusted proxy's chain, every line of it in order (a client may send several, and
    // `client_ip` reads them all), extended with the peer.
    let chain = if conn.trusted && headers.contains_key(&X_FORWARDED_FOR) {
        let mut chain = String::new();
        let mut readable = true;
        for line in headers.get_all(&X_FORWARDED_FOR) {
            match line.to_str() {
                Ok(line) => {
                    chain.push_str(line);
                    chain.push_str(", ");
                }
                Err(_) => readable = false,
            }
        }
        headers.remove(&X_FORWARDED_FOR);
        chain.push_str(&conn.peer.ip().to_string());
        readable
            .then(|| HeaderValue::from_str(&chain).ok())
            .flatten()
    } else {
        None
    };
    added.push(
        &X_FORWARDED_FOR,
        chain.unwrap_or_else(|| conn.peer_ip.clone()),
    );
    if !(conn.trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        added.push(&X_FORWARDED_PROTO, conn.proto.clone());
    }
    if !(conn.trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        // A trusted proxy's `X-Forwarded-Host` stands; otherwise the one `Host` names.
        if let Some(host) = host {
            added.push(&X_FORWARDED_HOST, host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn config() -> Config {
        Config::parse("upstream: http://127.0.0.1:1\nheaders:\n  user: X-Remote-User\nroutes:\n  - path: /**\n").unwrap()
    }

    fn parts(headers: &[(&str, &str)]) -> request::Parts {
        let mut b = Request::builder().uri("/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn strips_hop_by_hop_identity_and_connection_named_headers() {
        let cfg = config();
        let conn = ConnInfo::new("10.1.2.3:5555".parse().unwrap(), &[], false);
        let mut p = parts(&[
            ("host", "app.example"),
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers, deflate"),
            ("upgrade", "h2c"),
            ("x-token-abilities", "*"),
            ("X-Auth-User", "admin"),
            ("x-auth-anything", "1"),
            ("x-remote-user", "root"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
            ("authorization", "Bearer 1|x"),
            ("accept", "*/*"),
        ]);
        let added = prepare_request(&mut p, &cfg, None, &conn);
        added.insert_into(&mut p.headers);
        let h = &p.headers;
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "upgrade",
            "x-token-abilities",
            "x-auth-user",
            "x-auth-anything",
            "x-remote-user",
            "authorization",
        ] {
            assert!(!h.contains_key(gone), "{gone} survived");
        }
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-host"], "app.example");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["accept"], "*/*");
        // `TE: trailers` alone is kept: gRPC needs it end to end.
        let mut only_trailers = HeaderMap::new();
        only_trailers.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut only_trailers);
        assert_eq!(only_trailers[header::TE], "trailers");
        assert_eq!(h["host"], "app.example");
    }

    #[test]
    fn the_hop_by_hop_match_agrees_with_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        for name in [
            header::HOST,
            header::ACCEPT,
            X_FORWARDED_FOR.clone(),
            header::TRAILER,
        ] {
            assert_eq!(
                hop_by_hop_index(&name).is_some(),
                HOP_BY_HOP.contains(&name)
            );
        }
    }

    /// Headers a client sends with each spelling an upstream reads as one of ours, or as
    /// a statement about the user, the path or the connection.
    #[test]
    fn forged_headers_are_removed_in_every_spelling() {
        let cfg = config();
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let untrusted = ConnInfo::new("192.0.2.7:5555".parse().unwrap(), &nets, false);
        let trusted = ConnInfo::new("10.1.2.3:5555".parse().unwrap(), &nets, false);
        let always = [
            "X_Token_Abilities",
            "x_auth_user",
            "Transfer_Encoding",
            "X_Forwarded_For",
            "X_HTTP_Method_Override",
            "remote-user",
            "Remote_User",
            "x-remote-user",
            "x-remote-group",
            "x-forwarded-user",
            "x-forwarded-email",
            "x-forwarded-groups",
            "x-forwarded-preferred-username",
            "x-forwarded-access-token",
            "x-auth-request-user",
            "x-user",
            "x-email",
            "x-original-url",
            "x-rewrite-url",
            "x-original-uri",
        ];
        let from_proxies = [
            "forwarded",
            "x-real-ip",
            "x-client-ip",
            "true-client-ip",
            "cf-connecting-ip",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-forwarded-server",
            "x-forwarded-ssl",
            "x-original-host",
        ];
        for (conn, kept_from_proxies) in [(&untrusted, false), (&trusted, true)] {
            let pairs: Vec<(&str, &str)> = always
                .iter()
                .chain(&from_proxies)
                .map(|name| (*name, "forged"))
                .chain([("x-request-id", "r1"), ("accept", "*/*")])
                .collect();
            let mut p = parts(&pairs);
            prepare_request(&mut p, &cfg, None, conn).insert_into(&mut p.headers);
            for name in always {
                assert!(!p.headers.contains_key(name), "{name} reached the upstream");
            }
            for name in from_proxies {
                assert_eq!(
                    p.headers.contains_key(name),
                    kept_from_proxies,
                    "{name} from {}",
                    conn.peer
                );
            }
            assert_eq!(p.headers["x-request-id"], "r1");
            assert_eq!(p.headers["accept"], "*/*");
        }
    }

    #[test]
    fn a_bearer_token_never_leaves_unless_configured() {
        let cfg = config();
        let conn = ConnInfo::new("10.1.2.3:5555".parse().unwrap(), &[], false);
        // A public route (no principal): a bearer token is removed, another scheme is the
        // app's business.
        for (value, kept) in [
            ("Bearer 1|secret", false),
            ("bearer 1|secret", false),
            ("BEARER x", false),
            ("Basic YTpi", true),
        ] {
            let mut p = parts(&[("authorization", value)]);
            prepare_request(&mut p, &cfg, None, &conn);
            assert_eq!(p.headers.contains_key("authorization"), kept, "{value}");
        }
        let forwarding = Config::parse(
            "upstream: http://127.0.0.1:1\ntokens:\n  forward_authorization: true\nroutes:\n  - path: /**\n",
        )
        .unwrap();
        let mut p = parts(&[("authorization", "Bearer 1|secret")]);
        prepare_request(&mut p, &forwarding, None, &conn);
        assert_eq!(p.headers["authorization"], "Bearer 1|secret");
    }

    #[test]
    fn every_forwarded_for_line_of_a_trusted_proxy_is_kept_in_order() {
        let cfg = config();
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let conn = ConnInfo::new("10.1.2.3:5555".parse().unwrap(), &nets, false);
        let mut p = parts(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "198.51.100.4, 10.9.9.9"),
        ]);
        // The throttle reads the same lines, so both see the same client.
        assert_eq!(
            client_ip(&p.headers, &conn, &nets).to_string(),
            "198.51.100.4"
        );
        prepare_request(&mut p, &cfg, None, &conn).insert_into(&mut p.headers);
        let lines: Vec<_> = p.headers.get_all("x-forwarded-for").iter().collect();
        assert_eq!(lines, ["203.0.113.9, 198.51.100.4, 10.9.9.9, 10.1.2.3"]);
    }

    #[test]
    fn trusted_proxies_extend_forwarded_headers() {
        let cfg = config();
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let conn = ConnInfo::new("10.1.2.3:5555".parse().unwrap(), &nets, false);
        let mut p = parts(&[
            ("host", "internal"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-host", "app.example"),
            ("x-forwarded-proto", "https"),
        ]);
        let added = prepare_request(&mut p, &cfg, None, &conn);
        // The trusted proxy's own `X-Forwarded-Host/Proto` stand; the chain is extended.
        let names: Vec<&str> = added.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-forwarded-for"]);
        added.insert_into(&mut p.headers);
        assert_eq!(p.headers["x-forwarded-for"], "203.0.113.9, 10.1.2.3");
        assert_eq!(p.headers["x-forwarded-host"], "app.example");
        assert_eq!(p.headers["x-forwarded-proto"], "https");
    }
}
