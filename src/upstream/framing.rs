//! The framing rules of an upstream's answer, the one set both upstream paths apply: the
//! lean path reads its answers with them (`lean`, `chunked`), and hyper's client, which
//! reads its own, has its verdict checked by them (`check`). RFC 9112 §6.3, as hyper's
//! client reads it, and stricter where hyper would pass on something ambiguous. The
//! differential test (`upstream::differential`) holds the two paths to the same verdict.
//!
//! - No body: an answer to `HEAD`, a 1xx, 204 or 304, whatever it announces (and its
//!   connection is not reused if it announces one, `invites_stray_bytes`).
//! - `Transfer-Encoding` ending in `chunked`: chunked, and a `Content-Length` beside it is
//!   removed (the connection then not reused). Another final coding: the body runs to the
//!   end of the connection. Refused (502): `chunked` before another coding, a coding in an
//!   HTTP/1.0 answer (RFC 9112 §6.1), a value that is not visible ASCII.
//! - Else `Content-Length`: every value, and every element of a list, the same number of
//!   plain digits; anything else is refused.
//! - Else the body runs to the end of the connection.
//! - Kept alive: HTTP/1.1 unless a `Connection` line says `close` (which no later line
//!   undoes); HTTP/1.0 only with `Connection: keep-alive`.
//! - A `101` is refused: tokengate asks for upgrades on connections of their own only.

use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{response, HeaderMap, HeaderValue, Method, StatusCode, Version};

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Length {
    /// Exactly this many bytes.
    Known(u64),
    Chunked,
    /// At the end of the connection.
    UntilClose,
}

/// How a response body ends, and whether its connection may serve another request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Framing {
    pub(super) length: Length,
    pub(super) keep_alive: bool,
}

/// The framing of a final answer (not a 1xx other than 101) to a request with `method`.
/// A `Content-Length` beside a transfer coding is removed from `headers`, as a proxy must
/// before forwarding.
pub(super) fn framing(
    headers: &mut HeaderMap,
    status: StatusCode,
    method: &Method,
    http10: bool,
) -> Result<Framing, &'static str> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err("upgrade nobody asked for");
    }
    let found = Found::scan(headers, http10);
    let mut keep_alive = found.keep_alive;
    let bodiless = *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let length = if bodiless {
        if invites_stray_bytes(method, status, headers) {
            keep_alive = false;
        }
        Length::Known(0)
    } else if found.coding {
        if http10 {
            return Err("transfer coding in an HTTP/1.0 answer");
        }
        let chunked = chunked_last(headers)?;
        // A length beside a transfer coding is ignored, and the connection not trusted again.
        if headers.remove(CONTENT_LENGTH).is_some() {
            keep_alive = false;
        }
        if chunked {
            Length::Chunked
        } else {
            keep_alive = false;
            Length::UntilClose
        }
    } else if let Some(length) = found.length {
        Length::Known(length.ok_or("bad or conflicting content-length")?)
    } else {
        keep_alive = false;
        Length::UntilClose
    };
    Ok(Framing { length, keep_alive })
}

/// What the framing headers of an answer say, read in one pass over its headers (cheaper
/// than a lookup of each name in the map, for the handful of headers an answer has).
struct Found {
    /// Whether the connection stays open after this answer, as hyper's client decides it:
    /// HTTP/1.1 unless a `Connection` line says `close` (which no later line undoes),
    /// HTTP/1.0 only with `keep-alive`.
    keep_alive: bool,
    /// A `Transfer-Encoding` is there.
    coding: bool,
    /// The `Content-Length`, if there is one, as hyper reads it: every element of every
    /// line plain digits (so visible ASCII), all the same number; else `Some(None)`.
    length: Option<Option<u64>>,
}

impl Found {
    fn scan(headers: &HeaderMap, http10: bool) -> Self {
        let mut found = Found {
            keep_alive: !http10,
            coding: false,
            length: None,
        };
        let mut closed = false;
        for (name, value) in headers {
            if *name == CONNECTION {
                if closed || has_token(value, "close") {
                    closed = true;
                    found.keep_alive = false;
                } else if !found.keep_alive {
                    found.keep_alive = has_token(value, "keep-alive");
                }
            } else if *name == TRANSFER_ENCODING {
                found.coding = true;
            } else if *name == CONTENT_LENGTH {
                let first = found.length.is_none();
                found.length = Some(lengths(value, found.length.flatten(), first));
            }
        }
        found
    }
}

/// A `Content-Length` line read into the length so far (`None` after `first`: a line
/// before was not a length already).
fn lengths(value: &HeaderValue, mut length: Option<u64>, first: bool) -> Option<u64> {
    if !first && length.is_none() {
        return None;
    }
    for element in value.as_bytes().split(|&b| b == b',') {
        let n = digits(element.trim_ascii())?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// Checks an answer hyper's client read (to a request that asked for no upgrade) against
/// the same rules, and says whether its connection may be kept. hyper passes on a `101`,
/// a `chunked` before another coding (as raw bytes), a length beside a coding and a
/// custom reason phrase; the lean path does not.
pub(super) fn check(method: &Method, parts: &mut response::Parts) -> Result<bool, &'static str> {
    let http10 = parts.version == Version::HTTP_10;
    let framing = framing(&mut parts.headers, parts.status, method, http10)?;
    // The client gets the status's own reason phrase, as from the lean path.
    parts.extensions.remove::<hyper::ext::ReasonPhrase>();
    Ok(framing.keep_alive)
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    // Most values are the one token (`keep-alive`, `close`).
    value.as_bytes().eq_ignore_ascii_case(token.as_bytes())
        || value
            .to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Whether the last transfer coding is `chunked` (the last element of the last line, as
/// hyper reads it); refused when `chunked` comes before another coding or a value is not
/// visible ASCII (where hyper and the lean path could read it differently).
fn chunked_last(headers: &HeaderMap) -> Result<bool, &'static str> {
    let mut codings = Vec::new();
    for value in headers.get_all(TRANSFER_ENCODING) {
        let value = value
            .to_str()
            .map_err(|_| "transfer-encoding is not visible ASCII")?;
        codings.extend(value.split(',').map(str::trim));
    }
    let chunked = |c: &&str| c.eq_ignore_ascii_case("chunked");
    match codings.split_last() {
        Some((last, before)) if !before.iter().any(chunked) => Ok(chunked(last)),
        _ => Err("chunked before another coding"),
    }
}

/// A number of plain decimal digits (no sign, at least one), as hyper's `from_digits`.
fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        let digit = (b as char).to_digit(10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Whether an answer that cannot have a body (to `HEAD`; a 1xx, 204 or 304) announces one
/// anyway, with a `Transfer-Encoding` or a non-zero `Content-Length`. It is passed on
/// without a body, but its connection is not used again: a sloppy upstream (Python's
/// `http.server` answers `HEAD` like `GET`) sends that body after the head, where it would
/// be read as the next request's answer.
pub(super) fn invites_stray_bytes(
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
) -> bool {
    let bodiless = *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    bodiless
        && (headers.contains_key(TRANSFER_ENCODING)
            || headers.get_all(CONTENT_LENGTH).iter().any(|v| {
                v.as_bytes()
                    .split(|&b| b == b',')
                    .any(|n| n.trim_ascii() != b"0")
            }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodiless_answers_that_announce_a_body_invite_stray_bytes() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value.parse().unwrap(),
                );
            }
            map
        };
        type Case = (Method, u16, &'static [(&'static str, &'static str)], bool);
        let cases: &[Case] = &[
            (Method::HEAD, 200, &[("content-length", "12")], true),
            (Method::HEAD, 200, &[("content-length", "0")], false),
            (Method::HEAD, 200, &[], false),
            (Method::GET, 204, &[("content-length", "5")], true),
            (Method::GET, 204, &[("content-length", "0, 0")], false),
            (Method::GET, 304, &[("transfer-encoding", "chunked")], true),
            (Method::GET, 304, &[], false),
            (Method::GET, 200, &[("content-length", "12")], false),
            (
                Method::POST,
                200,
                &[("transfer-encoding", "chunked")],
                false,
            ),
        ];
        for (method, status, pairs, want) in cases {
            let status = StatusCode::from_u16(*status).unwrap();
            assert_eq!(
                invites_stray_bytes(method, status, &headers(pairs)),
                *want,
                "{method} {status} {pairs:?}"
            );
        }
    }
}
