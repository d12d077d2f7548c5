//! tokengate's own paths under `/_tokengate/` (answered by `pages`, never forwarded), and
//! how a refusal links to them.

use http::HeaderMap;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

pub const PREFIX: &str = "/_tokengate/";
pub const LOGIN_PATH: &str = "/_tokengate/login";
pub const LOGOUT_PATH: &str = "/_tokengate/logout";
pub const CSRF_COOKIE_PATH: &str = "/_tokengate/csrf-cookie";

/// The header an SPA copies the `XSRF-TOKEN` cookie into (Axios does it by itself).
pub const XSRF_HEADER: &str = "x-xsrf-token";

/// Is this raw request path one of tokengate's own (never forwarded)?
pub fn is_reserved(raw_path: &str) -> bool {
    raw_path.starts_with(PREFIX) || raw_path == "/_tokengate"
}

/// The login page, bringing the browser back to `next` (a path and query) once logged in.
pub fn login_location(next: &str) -> String {
    format!("{LOGIN_PATH}?next={}", encode_query(next))
}

/// Percent-encodes a path and query for use as a query value.
pub fn encode_query(value: &str) -> String {
    const SET: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    utf8_percent_encode(value, SET).to_string()
}

/// Does the client want a page rather than JSON?
pub fn wants_html(request_headers: &HeaderMap) -> bool {
    request_headers
        .get_all(http::header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("text/html")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_encoded_as_one_query_value() {
        assert_eq!(encode_query("/app/x?a=1&b=2"), "/app/x%3Fa%3D1%26b%3D2");
        assert_eq!(
            login_location("/app/x?a=1&b=2"),
            "/_tokengate/login?next=/app/x%3Fa%3D1%26b%3D2"
        );
    }

    #[test]
    fn only_the_prefix_is_reserved() {
        for (path, reserved) in [
            ("/_tokengate", true),
            ("/_tokengate/", true),
            ("/_tokengate/login", true),
            ("/_tokengatex", false),
            ("/_TOKENGATE/login", false),
            ("/api/_tokengate/login", false),
        ] {
            assert_eq!(is_reserved(path), reserved, "{path}");
        }
    }
}
