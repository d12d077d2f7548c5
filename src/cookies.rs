//! The request's `Cookie` headers, read one way for both of their uses: finding the value
//! of one of tokengate's cookies, and keeping tokengate's cookies from the upstream.
//!
//! One reader over the header's bytes rather than the `cookie` crate's `split_parse`: that
//! takes only UTF-8 and skips pieces it cannot parse, so a header it refuses would be one
//! tokengate neither reads nor cleans while an upstream still reads it. The pairs found
//! agree with the crate's wherever the crate parses (a property test below checks it).
//!
//! Stripping matches names loosely: an upstream may percent-decode a name, trim it, fold
//! its case or, as PHP does, turn `.`, ` ` and `[` into `_`; a cookie any of them would
//! read under one of tokengate's names goes too. The other cookies pass byte for byte.

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};

/// The cookie holding a session's `XSRF-TOKEN` (readable by the page's scripts).
pub const XSRF_COOKIE: &str = "XSRF-TOKEN";
/// The cookie that protects the login form (double submit: cookie and form field).
pub const LOGIN_CSRF_COOKIE: &str = "tokengate_login_csrf";

/// The `name=value` pairs of one `Cookie` header value, names and values trimmed of
/// spaces and tabs; a piece without `=` is a name with an empty value.
fn pairs(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    header
        .split(|&b| b == b';')
        .map(|piece| match piece.iter().position(|&b| b == b'=') {
            Some(eq) => (trim(&piece[..eq]), trim(&piece[eq + 1..])),
            None => (trim(piece), &b""[..]),
        })
        .filter(|(name, _)| !name.is_empty())
}

fn trim(bytes: &[u8]) -> &[u8] {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !blank(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// The values of every cookie named exactly `name` (a client may send a name more than
/// once), in the order sent. Values that are not UTF-8 are skipped: none of tokengate's is.
pub fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|header| pairs(header.as_bytes()))
        .filter(|(n, _)| *n == name.as_bytes())
        .filter_map(|(_, value)| std::str::from_utf8(value).ok())
        .collect()
}

/// The value of the cookie named exactly `name`, when it is the only one an upstream could
/// read under that name (see `strip`): with two or more (`laravel_session` and
/// `laravel.session`, or the name twice), which one an app reads depends on the app (PHP
/// keeps the first), so none is taken.
pub fn value_read_as<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    let mut candidates = headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|header| pairs(header.as_bytes()))
        .filter(|(n, _)| read_as_one_of(n, &[name]));
    let (found, value) = candidates.next()?;
    (found == name.as_bytes() && candidates.next().is_none()).then_some(value)
}

/// Whether any cookie an upstream could read under `name` is sent.
pub fn carries(headers: &HeaderMap, name: &str) -> bool {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|header| pairs(header.as_bytes()))
        .any(|(n, _)| read_as_one_of(n, &[name]))
}

/// Would an upstream read a cookie named `raw` under one of `names`?
fn read_as_one_of(raw: &[u8], names: &[&str]) -> bool {
    // Decoded only when there is something to decode: no allocation for the usual name.
    let decoded: std::borrow::Cow<'_, [u8]> = percent_encoding::percent_decode(raw).into();
    let read = |b: u8| match b {
        b'.' | b' ' | b'[' => b'_',
        b => b.to_ascii_lowercase(),
    };
    let name_read = trim(&decoded);
    names.iter().any(|name| {
        name.len() == name_read.len()
            && name
                .bytes()
                .zip(name_read)
                .all(|(a, &b)| a.to_ascii_lowercase() == read(b))
    })
}

/// Removes the cookies an upstream would read under one of `names` from every `Cookie`
/// header (HTTP/2 may send several), and a header left empty. The other pieces pass byte
/// for byte (trimmed), joined by `; `; empty ones go.
pub fn strip(headers: &mut HeaderMap, names: &[&str]) {
    let carries_ours = headers
        .get_all(COOKIE)
        .iter()
        .any(|v| pairs(v.as_bytes()).any(|(name, _)| read_as_one_of(name, names)));
    if !carries_ours {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|header| {
            let mut rest = Vec::with_capacity(header.len());
            for piece in header.as_bytes().split(|&b| b == b';') {
                let piece = trim(piece);
                let name = piece.split(|&b| b == b'=').next().unwrap_or_default();
                if piece.is_empty() || read_as_one_of(trim(name), names) {
                    continue;
                }
                if !rest.is_empty() {
                    rest.extend_from_slice(b"; ");
                }
                rest.extend_from_slice(piece);
            }
            HeaderValue::from_bytes(&rest)
                .ok()
                .filter(|v| !v.is_empty())
        })
        .collect();
    headers.remove(COOKIE);
    for value in kept {
        headers.append(COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(COOKIE, HeaderValue::from_bytes(v).unwrap());
        }
        headers
    }

    fn cookie_lines(headers: &HeaderMap) -> Vec<&[u8]> {
        headers
            .get_all(COOKIE)
            .iter()
            .map(|v| v.as_bytes())
            .collect()
    }

    #[test]
    fn one_value_an_app_reads_under_a_name() {
        let read =
            |lines: &[&[u8]]| value_read_as(&headers(lines), "laravel_session").map(<[u8]>::to_vec);
        assert_eq!(read(&[b"a=1; laravel_session=abc"]), Some(b"abc".to_vec()));
        assert_eq!(read(&[b"a=1"]), None);
        for ambiguous in [
            &[&b"laravel_session=abc; laravel_session=def"[..]][..],
            &[b"laravel.session=evil; laravel_session=abc"],
            &[b"laravel_session=abc", b"Laravel_Session=evil"],
            &[b"laravel%5Fsession=evil; laravel_session=abc"],
        ] {
            assert_eq!(read(ambiguous), None, "{ambiguous:?}");
        }
        assert_eq!(read(&[b"laravel.session=abc"]), None, "only the exact name");
    }

    #[test]
    fn values_of_a_name_in_every_header() {
        let h = headers(&[b"a=1; tg=x;b=2", b"tg = y ; c", b"TG=z; tg"]);
        assert_eq!(values(&h, "tg"), ["x", "y", ""]);
        assert_eq!(values(&h, "TG"), ["z"]);
        assert_eq!(values(&h, "c"), [""]);
        assert!(values(&h, "missing").is_empty());
        // A value that is not UTF-8 is skipped, the header's other pairs are not.
        let h = headers(&[b"tg=\xff; tg=ok"]);
        assert_eq!(values(&h, "tg"), ["ok"]);
    }

    #[test]
    fn strip_removes_what_an_upstream_would_read_as_ours() {
        let ours = ["tokengate_session", XSRF_COOKIE];
        for (sent, kept) in [
            (
                &b"a=1; tokengate_session=s; b=2"[..],
                Some(&b"a=1; b=2"[..]),
            ),
            (b"tokengate_session=s", None),
            // PHP reads `.`, ` ` and `[` in a name as `_`, and percent-decodes names.
            (b"tokengate.session=s; a=1", Some(b"a=1")),
            (b"tokengate session=s; a=1", Some(b"a=1")),
            (b"tokengate[session=s; a=1", Some(b"a=1")),
            (b"tokengate%5Fsession=s; a=1", Some(b"a=1")),
            (b"%20tokengate_session=s; a=1", Some(b"a=1")),
            (b"Tokengate_Session=s; xsrf-token=t; a=1", Some(b"a=1")),
            // Other bytes of other cookies pass as they came.
            (
                b"a=\xff\"q\";tokengate_session=s;  b = 2 ",
                Some(b"a=\xff\"q\"; b = 2"),
            ),
            (b"tokengate_sessions=s", Some(b"tokengate_sessions=s")),
        ] {
            let mut h = headers(&[sent]);
            strip(&mut h, &ours);
            assert_eq!(
                cookie_lines(&h),
                kept.into_iter().collect::<Vec<_>>(),
                "{sent:?}"
            );
        }
    }

    #[test]
    fn strip_leaves_headers_without_ours_untouched() {
        let sent: [&[u8]; 2] = [b" a=1;;b", b"c=3"];
        let mut h = headers(&sent);
        strip(&mut h, &["tg"]);
        assert_eq!(cookie_lines(&h), sent);
    }

    proptest! {
        /// Where the `cookie` crate parses a header, it finds the pairs `values` finds.
        #[test]
        fn values_agree_with_the_cookie_crate(
            pieces in prop::collection::vec(("[ ]{0,2}[a-zA-Z_]{1,4}[ ]{0,2}", "[ ]{0,2}[a-zA-Z0-9\"%+=]{0,5}[ ]{0,2}"), 0..6),
            separator in "; ?",
        ) {
            let header = pieces.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join(&separator);
            let h = headers(&[header.as_bytes()]);
            for (name, _) in &pieces {
                let name = name.trim();
                let crate_values: Vec<&str> = cookie::Cookie::split_parse(header.as_str())
                    .flatten()
                    .filter(|c| c.name() == name)
                    .filter_map(|c| c.value_raw())
                    .collect();
                prop_assert_eq!(values(&h, name), crate_values);
            }
        }

        /// After `strip`, nothing is left that reads as ours, and every other pair is kept
        /// byte for byte, in order.
        #[test]
        fn strip_keeps_exactly_the_others(
            pieces in prop::collection::vec(prop::sample::select(vec![
                "tg=1", "TG=2", "t%67=3", " tg =4", "a=5", "b", "tgx=6", "a=\"7\"", "=8", "t.g=9",
            ]), 0..8),
        ) {
            let header = pieces.join(";");
            let mut h = headers(&[header.as_bytes()]);
            strip(&mut h, &["tg"]);
            let ours = |p: &str| ["tg=1", "TG=2", "t%67=3", "tg =4"].contains(&p.trim());
            // A header without ours is not rewritten at all.
            let expected = if pieces.iter().any(|p| ours(p)) {
                pieces
                    .iter()
                    .map(|p| p.trim())
                    .filter(|p| !p.is_empty() && !ours(p))
                    .collect::<Vec<_>>()
                    .join("; ")
            } else {
                header.clone()
            };
            let left = cookie_lines(&h).first().map(|v| v.to_vec()).unwrap_or_default();
            prop_assert_eq!(String::from_utf8(left).unwrap(), expected);
        }
    }
}
