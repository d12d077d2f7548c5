//! Framing rules that both upstream paths (`lean` and hyper's client) apply to a response,
//! so that the same answer gets the same verdict whichever path carried it.

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode};

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
