//! Requests that an attack review of tokengate's request rules found authorized under
//! weaker requirements than a common upstream runs them with (each was run end to end
//! against the framework its doc names, which ran a method the token was not allowed), kept
//! as regression tests.
//!
//! Each test sends exact bytes through a real tokengate (in front of the in-process echo
//! upstream) with a low-privilege token and asserts the secure outcome: tokengate does not
//! forward the request (any non-2xx), or does not forward a header an upstream folds into an
//! identity header.

mod common;

use common::Gate;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONFIG: &str = r#"
abilities: [read, create, delete, admin]
routes:
  - path: /public/**
    auth: none
  - path: /api/posts/{id}
    methods: [GET, HEAD]
    abilities: [read]
  - path: /api/posts/{id}
    methods: [DELETE]
    abilities: [delete]
  - path: /api/posts/{id}
    methods: [POST]
    abilities: [create]
  - path: /api/comments/{id}
    methods: [DELETE]
    abilities: [delete]
  - path: /reports/{id}
    methods: [GET]
    abilities: [admin]
  - path: /admin/**
    abilities: [admin]
  - path: /**
    auth: any
"#;

/// A case: what it is, its extra headers, its body.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [u8]);
/// The same, built at run time.
type OwnedCase = (&'static str, Vec<(&'static str, &'static str)>, Vec<u8>);

/// Sends `head` (request line and headers, without the blank line; `Host`, `Connection:
/// close` and `Content-Length` are added) and `body`; the status and the whole answer.
async fn send(gate: &Gate, head: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    let mut request = format!(
        "{head}\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    (status, answer)
}

/// POSTs each body to `path` with a token of `ability` and collects those tokengate
/// forwarded (2xx).
async fn forwarded(ability: &str, path: &str, cases: &[Case<'_>]) -> Vec<String> {
    let gate = Gate::start(CONFIG).await;
    let token = gate.token("42", &[ability]).await;
    let mut through = Vec::new();
    for (what, headers, body) in cases {
        let mut head = format!("POST {path} HTTP/1.1\r\nAuthorization: Bearer {token}");
        for (name, value) in *headers {
            head += &format!("\r\n{name}: {value}");
        }
        let (status, _) = send(&gate, &head, body).await;
        if (200..300).contains(&status) {
            through.push(format!("{what} -> {status}"));
        }
    }
    through
}

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");
const MP: (&str, &str) = ("Content-Type", "multipart/form-data; boundary=b");

fn part(head: &str) -> Vec<u8> {
    format!("--b\r\n{head}\r\n\r\nDELETE\r\n--b--\r\n").into_bytes()
}

/// The baseline holds: a `create` token cannot DELETE through the spellings tokengate knows.
#[tokio::test]
async fn baseline_overrides_are_refused() {
    let mp = part("Content-Disposition: form-data; name=\"_method\"");
    let through = forwarded(
        "create",
        "/api/posts/1",
        &[
            ("form", &[FORM], b"_method=DELETE"),
            ("multipart", &[MP], &mp),
            ("header", &[("X-HTTP-Method-Override", "DELETE")], b""),
        ],
    )
    .await;
    assert!(through.is_empty(), "{through:#?}");
}

/// PHP cuts a variable name at NUL (`php_register_variable_ex` works on C strings):
/// `_method%00…` is `$_GET['_method']` / `$_POST['_method']`, and a multipart name with a
/// raw NUL is `_method` too. Laravel 8.83 on php -S ran DELETE for each.
#[tokio::test]
async fn php_nul_in_field_name() {
    let mut through = forwarded(
        "create",
        "/api/posts/1",
        &[
            ("form _method%00", &[FORM], b"_method%00=DELETE"),
            ("form _method%00junk", &[FORM], b"_method%00junk=DELETE"),
            (
                "multipart name with NUL",
                &[MP],
                &part("Content-Disposition: form-data; name=\"_method\0x\""),
            ),
        ],
    )
    .await;
    through.extend(
        forwarded(
            "create",
            "/api/posts/1?_method%00=DELETE",
            &[("query _method%00", &[], b"")],
        )
        .await,
    );
    assert!(through.is_empty(), "forwarded: {through:#?}");
}

/// PHP's multipart parser (main/rfc1867.c): unquoted `name` ends at whitespace, quoted at
/// its closing quote whatever follows; a header line without ':' (or starting with a
/// blank) continues the previous header; a line holding only CR ends the part head; the
/// boundary is the first case-sensitive `boundary`'s value, untrimmed; of two Content-Type
/// headers php -S uses the first. Laravel 8.83 ran DELETE for each.
#[tokio::test]
async fn php_multipart_spellings() {
    let cases: Vec<OwnedCase> = vec![
        (
            "name=_method x",
            vec![MP],
            part("Content-Disposition: form-data; name=_method x"),
        ),
        (
            "name=_method<TAB>x",
            vec![MP],
            part("Content-Disposition: form-data; name=_method\tx"),
        ),
        (
            "name=\"_method\"x",
            vec![MP],
            part("Content-Disposition: form-data; name=\"_method\"x"),
        ),
        (
            "folded CD, line without ':'",
            vec![MP],
            part("Content-Disposition: form-data\r\n; name=\"_method\""),
        ),
        (
            "folded CD, line starting with a space",
            vec![MP],
            part("Content-Disposition: form-data;\r\n name=\"_method\""),
        ),
        (
            "part head ended by LF CR LF",
            vec![MP],
            b"--b\r\nContent-Disposition: form-data; name=\"_method\"\n\r\nDELETE\r\n--b--\r\n"
                .to_vec(),
        ),
        (
            "boundary= b (leading space)",
            vec![("Content-Type", "multipart/form-data; boundary= b")],
            b"-- b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n-- b--\r\n"
                .to_vec(),
        ),
        (
            "Boundary=a; boundary=b",
            vec![(
                "Content-Type",
                "multipart/form-data; Boundary=a; boundary=b",
            )],
            part("Content-Disposition: form-data; name=\"_method\""),
        ),
        (
            "two Content-Type headers (php -S takes the first)",
            vec![
                ("Content-Type", "multipart/form-data; boundary=b"),
                ("Content-Type", "multipart/form-data; boundary=zzz"),
            ],
            part("Content-Disposition: form-data; name=\"_method\""),
        ),
    ];
    let cases: Vec<Case<'_>> = cases
        .iter()
        .map(|(w, h, b)| (*w, h.as_slice(), b.as_slice()))
        .collect();
    let through = forwarded("create", "/api/posts/1", &cases).await;
    assert!(through.is_empty(), "forwarded: {through:#?}");
}

/// Rack 2.2 (`Rack::MethodOverride`, Rails, Sinatra): `normalize_params` reads a name as
/// `\A[\[\]]*([^\[\]]+)\]*`, so `[_method]`, `_method]`, `]_method` are `_method` (so does
/// Express's `qs` for `[_method]`); a multipart part without a `Content-Disposition` name is
/// named by `Content-ID`; `Content-Disposition:[^:]*;\s*name=` is matched over the whole part
/// head (inside another header, across lines). Rack 2.2.22 ran DELETE for each.
#[tokio::test]
async fn rack_and_qs_field_names() {
    let cases: Vec<OwnedCase> = vec![
        ("form [_method]", vec![FORM], b"[_method]=DELETE".to_vec()),
        ("form _method]", vec![FORM], b"_method]=DELETE".to_vec()),
        ("form ]_method", vec![FORM], b"]_method=DELETE".to_vec()),
        (
            "no Content-Type, _method]",
            vec![],
            b"_method]=DELETE".to_vec(),
        ),
        (
            "multipart name=\"[_method]\"",
            vec![MP],
            part("Content-Disposition: form-data; name=\"[_method]\""),
        ),
        (
            "multipart Content-ID",
            vec![MP],
            part("Content-Disposition: form-data\r\nContent-ID: _method"),
        ),
        (
            "multipart CD in another header",
            vec![MP],
            part("X-Foo: Content-Disposition:;name=_method"),
        ),
        (
            "multipart CD across lines",
            vec![MP],
            part("Content-Disposition: form-data\r\nX-Foo; name=_method"),
        ),
    ];
    let cases: Vec<Case<'_>> = cases
        .iter()
        .map(|(w, h, b)| (*w, h.as_slice(), b.as_slice()))
        .collect();
    let through = forwarded("create", "/api/posts/1", &cases).await;
    assert!(through.is_empty(), "forwarded: {through:#?}");
}

/// Express's body-parser inflates `Content-Encoding: gzip`/`deflate` and decodes JSON in any
/// `utf-*` charset; tokengate scans the raw bytes. Express 4.22 + method-override (body
/// getter) ran DELETE for each.
#[tokio::test]
async fn express_encoded_bodies() {
    let gzip = hex("1f8b08000000000002038bcf4d2dc9c84fb17571f5710d71050065fc26b00e000000");
    let deflate = hex("789c8bcf4d2dc9c84fb17571f5710d710500272004d1");
    let utf16: Vec<u8> = "{\"_method\":\"DELETE\"}"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let through = forwarded(
        "create",
        "/api/posts/1",
        &[
            ("gzip form", &[FORM, ("Content-Encoding", "gzip")], &gzip),
            (
                "deflate form",
                &[FORM, ("Content-Encoding", "deflate")],
                &deflate,
            ),
            (
                "utf-16le JSON",
                &[("Content-Type", "application/json; charset=utf-16le")],
                &utf16,
            ),
        ],
    )
    .await;
    assert!(through.is_empty(), "forwarded: {through:#?}");
}

/// The body is read for `_method` only when the path's routes depend on the method as the
/// path is spelled (`RouteTable::depends_on_method` on the plain path), not under its
/// readings. `/API/comments/1` matches `/**` for every method, so a POST's body is never
/// read; Express (case-insensitive routing) runs `app.delete('/api/comments/:id')`, which
/// needs `delete`. Ran with a `read` token against Express 4.22.
#[tokio::test]
async fn body_override_on_a_case_folded_path() {
    let through = forwarded(
        "read",
        "/API/comments/1",
        &[
            ("form", &[FORM], b"_method=DELETE"),
            (
                "json",
                &[("Content-Type", "application/json")],
                b"{\"_method\":\"DELETE\"}",
            ),
        ],
    )
    .await;
    assert!(through.is_empty(), "forwarded: {through:#?}");
}

/// PHP registers `$_SERVER` names through `php_register_variable`, which turns '.' (and ' ')
/// into '_': a header `X.HTTP.Method.Override` is `HTTP_X_HTTP_METHOD_OVERRIDE` (Laravel
/// ran DELETE), `X.Auth.User` is `HTTP_X_AUTH_USER`. tokengate drops names with '_' only.
#[tokio::test]
async fn php_dotted_header_names() {
    // Dropped, not refused: the POST the token may make goes on, without the header.
    let gate = Gate::start(CONFIG).await;
    let token = gate.token("42", &["create"]).await;
    let (status, _) = send(
        &gate,
        &format!(
            "POST /api/posts/1 HTTP/1.1\r\nAuthorization: Bearer {token}\r\nX.HTTP.Method.Override: DELETE\r\nX-HTTP-Method.Override: DELETE"
        ),
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let seen = gate.echo.last().expect("the POST went upstream");
    assert_eq!(seen.method, http::Method::POST);
    for name in seen.headers.keys() {
        assert!(!name.as_str().contains('.'), "{name} reached the upstream");
    }
    gate.stop().await;
}

/// The same for identity claims, on a public route (where tokengate sends none of its own):
/// php -S gave the app `X-Token-Abilities: *`, `X-Auth-User: 1`, `Remote-User: admin`, and
/// `X-Forwarded-Prefix: /admin` from an anonymous client. On authenticated routes the
/// headers tokengate adds come later and win in PHP; `Remote.User`, `X.Forwarded.User`,
/// `X.Original.URL`, `X.Real.IP`, … still reach the app.
#[tokio::test]
async fn php_dotted_identity_headers() {
    let gate = Gate::start(CONFIG).await;
    let (status, answer) = send(
        &gate,
        "GET /public/x HTTP/1.1\r\nX.Token.Abilities: *\r\nX.Auth.User: 1\r\nRemote.User: admin\r\nX.Forwarded.Prefix: /admin",
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let folded: Vec<String> = gate
        .echo
        .last()
        .expect("the echo ran")
        .headers
        .keys()
        .map(|n| n.as_str().replace('.', "-"))
        .filter(|n| {
            n.starts_with("x-token-")
                || n.starts_with("x-auth-")
                || n == "remote-user"
                || n.starts_with("x-forwarded-prefix")
        })
        .collect();
    assert!(
        folded.is_empty(),
        "headers PHP reads as identity: {folded:?}\n{answer}"
    );
}

/// `BodyScan::holding` stays true after `"_method":` (whitespace) or inside a `_method` string
/// value without bound, and `read_prefix` reads on while it holds, buffering every frame:
/// an anonymous client makes tokengate hold the whole body in memory (measured: 256 MiB sent,
/// RSS 11 MB -> 291 MB). tokengate should refuse as soon as the value cannot be a method.
#[tokio::test]
async fn unbounded_buffering_before_the_decision() {
    let gate = Gate::start(CONFIG).await;
    let mut stream = TcpStream::connect(gate.addr).await.unwrap();
    let total = 64 << 20;
    stream
        .write_all(
            format!(
                "POST /api/posts/1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {total}\r\n\r\n{{\"_method\":\""
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // 2 MiB of a string that can never be a method (at most 20 letters).
    let block = vec![b'A'; 64 * 1024];
    for _ in 0..32 {
        stream.write_all(&block).await.unwrap();
    }
    let mut answer = [0u8; 12];
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut answer)).await;
    assert!(
        matches!(read, Ok(Ok(n)) if n > 0),
        "no answer after 2 MiB of a _method value: tokengate is still buffering ({read:?})"
    );
}

/// Flask/Werkzeug, Express, Laravel and Rails run a HEAD with the GET handler. A route
/// `methods: [GET]` (no HEAD) lets any token run it through HEAD (the `/**` fallback), with its
/// side effects and response headers. (A config pitfall rather than a parser gap: tokengate
/// could authorize a HEAD under the GET route too, as it does for overrides.)
#[tokio::test]
async fn head_runs_the_get_handler() {
    let gate = Gate::start(CONFIG).await;
    let token = gate.token("42", &["read"]).await;
    let (status, _) = send(
        &gate,
        &format!("HEAD /reports/7 HTTP/1.1\r\nAuthorization: Bearer {token}"),
        b"",
    )
    .await;
    assert!(
        !(200..300).contains(&status),
        "HEAD /reports/7 forwarded ({status})"
    );
}

/// By tokengate's own model (README "Paths that are refused": readings are tried "alone and
/// combined"; Spring removes `;` parameters and its matcher trims whitespace), `/admin%20;x/x`
/// is `/admin/x`. `CheckedPath::sensitive` looks at the path as sent only: a segment that ends
/// in a dot or a blank only once its `;` parameters are gone is never tried Trimmed, so these
/// reach the `/**` route with a `read` token. (tokengate side only: no upstream on this
/// machine applies both readings.)
#[tokio::test]
async fn readings_exposed_by_another_reading() {
    let gate = Gate::start(CONFIG).await;
    let token = gate.token("42", &["read"]).await;
    let mut through = Vec::new();
    for path in ["/admin%20;x/x", "/admin.;x/x", "/admin..;/x", "/ADMIN.;/x"] {
        let (status, _) = send(
            &gate,
            &format!("GET {path} HTTP/1.1\r\nAuthorization: Bearer {token}"),
            b"",
        )
        .await;
        if (200..300).contains(&status) {
            through.push(format!("{path} -> {status}"));
        }
    }
    assert!(through.is_empty(), "forwarded: {through:#?}");
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
