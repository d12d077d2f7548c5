//! `tokengate explain` gives the proxy's own verdict: for a table of requests covering
//! every kind of decision (reserved paths, credentials a route does not take, paths that
//! upstreams read as other routes, methods in lower case and overridden, two `Host`s, CSRF,
//! abilities), explain's verdict equals the status the running proxy returns. Both run in
//! this process on one `App`, so they see the same tokens and sessions.

mod common;

use common::{Gate, STANDARD};
use std::net::SocketAddr;
use tokengate::explain::{explain, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The routes of the table: the harness's standard ones, a method-dependent pair, and a
/// catch-all so that paths read another way land on a route with other requirements.
fn config() -> String {
    STANDARD.replace(
        "routes:\n",
        "routes:\n  - path: /reports/{id}\n    methods: [GET]\n    abilities: [admin]\n  - path: /items/{id}\n    methods: [GET]\n    abilities: [read]\n  - path: /items/{id}\n    methods: [POST]\n    abilities: [create]\n  - path: /items/{id}\n    methods: [DELETE]\n    abilities: [delete]\n",
    ) + "  - path: /**\n    auth: any\n"
}

/// Who sends a request.
#[derive(Clone, Copy, Debug)]
enum Who {
    Nobody,
    Reader,
    Creator,
    Admin,
    Session,
}

struct Case {
    method: &'static str,
    target: &'static str,
    who: Who,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
    /// The status the proxy answers; 200 is the echo upstream's (explain: allowed).
    status: u16,
}

const fn case(method: &'static str, target: &'static str, who: Who, status: u16) -> Case {
    Case {
        method,
        target,
        who,
        headers: &[],
        body: "",
        status,
    }
}

const fn with(
    method: &'static str,
    target: &'static str,
    who: Who,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
    status: u16,
) -> Case {
    Case {
        method,
        target,
        who,
        headers,
        body,
        status,
    }
}

const FORM: &[(&str, &str)] = &[("content-type", "application/x-www-form-urlencoded")];
const JSON: &[(&str, &str)] = &[("content-type", "application/json")];
const MULTIPART: &[(&str, &str)] = &[("content-type", "multipart/form-data; boundary=b")];
const SAME_ORIGIN: &[(&str, &str)] = &[("sec-fetch-site", "same-origin")];
const BROWSER: &[(&str, &str)] = &[("accept", "text/html")];

const CASES: &[Case] = &[
    // Routes and abilities.
    case("GET", "/healthz", Who::Nobody, 200),
    case("GET", "/api/posts/1", Who::Nobody, 401),
    case("GET", "/api/posts/1", Who::Reader, 200),
    case("HEAD", "/api/posts/1", Who::Reader, 200),
    case("POST", "/api/posts", Who::Reader, 403),
    case("POST", "/api/posts", Who::Creator, 200),
    case("GET", "/admin/x", Who::Reader, 403),
    case("GET", "/admin/x", Who::Admin, 200),
    case("GET", "/api/reports/q1", Who::Reader, 403),
    case("GET", "/api/reports/q1", Who::Admin, 200),
    case("GET", "/anything", Who::Nobody, 401),
    case("GET", "/anything", Who::Session, 200),
    // Reserved, whatever the spelling.
    case("GET", "/%5Ftokengate/x", Who::Reader, 404),
    case("GET", "/%5ftokengate/login", Who::Nobody, 404),
    // A credential the route does not take.
    case("GET", "/app/home", Who::Reader, 401),
    with("GET", "/app/home", Who::Reader, BROWSER, "", 302),
    case("GET", "/app/home", Who::Session, 200),
    // Paths refused outright.
    case("GET", "/a/../admin", Who::Admin, 400),
    case("GET", "/a/%2e%2e/admin", Who::Admin, 400),
    case("GET", "/a%2fb", Who::Reader, 400),
    case("GET", "/a//b", Who::Reader, 400),
    case("GET", "/%EF%BC%8E%EF%BC%8E/admin", Who::Reader, 400),
    // Paths upstreams read as another route.
    case("GET", "/ADMIN/x", Who::Reader, 400),
    case("GET", "/Admin/x", Who::Admin, 400),
    case("GET", "/admin;x/users", Who::Reader, 400),
    case("GET", "/admin./secret", Who::Reader, 400),
    case("GET", "/admin%20/secret", Who::Reader, 400),
    case("GET", "/admin%09/secret", Who::Reader, 400),
    case("GET", "/%EF%BD%81dmin/x", Who::Reader, 400),
    // … and read the same: allowed.
    case("GET", "/api/posts/AbC", Who::Reader, 200),
    case("GET", "/api/posts/7;v=2", Who::Reader, 200),
    case("GET", "/Other/Place", Who::Reader, 200),
    // Methods in lower case are their upper case.
    case("post", "/api/posts", Who::Reader, 403),
    case("post", "/api/posts", Who::Creator, 200),
    case("get", "/api/posts/1", Who::Reader, 200),
    // Overrides: the request must satisfy its own route and the overriding method's.
    with(
        "POST",
        "/items/1",
        Who::Creator,
        &[("x-http-method-override", "DELETE")],
        "",
        403,
    ),
    with(
        "POST",
        "/items/1",
        Who::Admin,
        &[("x-http-method-override", "DELETE")],
        "",
        403,
    ),
    case("POST", "/items/1?_method=DELETE", Who::Creator, 403),
    case("POST", "/items/1?_method=GET", Who::Creator, 403),
    with(
        "POST",
        "/items/1",
        Who::Creator,
        FORM,
        "a=1&_method=delete",
        403,
    ),
    with("POST", "/items/1", Who::Creator, FORM, "a=1&b=2", 200),
    with(
        "POST",
        "/items/1",
        Who::Creator,
        JSON,
        r#"{"_method":"DELETE"}"#,
        403,
    ),
    with(
        "POST",
        "/items/1",
        Who::Creator,
        JSON,
        r#"{"title":"x"}"#,
        200,
    ),
    with(
        "POST",
        "/items/1",
        Who::Creator,
        MULTIPART,
        "--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--\r\n",
        403,
    ),
    with(
        "POST",
        "/items/1",
        Who::Session,
        &[
            ("x-http-method-override", "DELETE"),
            ("sec-fetch-site", "same-origin"),
        ],
        "",
        200,
    ),
    with(
        "POST",
        "/items/1",
        Who::Creator,
        &[("x-http-method-override", "DEL ETE")],
        "",
        400,
    ),
    // Two Hosts; a Host that is not the target's.
    with(
        "GET",
        "/healthz",
        Who::Nobody,
        &[("host", "a.example"), ("host", "b.example")],
        "",
        400,
    ),
    // Sessions and CSRF.
    case("POST", "/open/x", Who::Session, 419),
    with("POST", "/open/x", Who::Session, SAME_ORIGIN, "", 200),
    case("DELETE", "/anything", Who::Session, 419),
    with(
        "GET",
        "/anything",
        Who::Session,
        &[("x-http-method-override", "DELETE")],
        "",
        419,
    ),
    // Ambiguous credentials.
    with(
        "GET",
        "/api/posts/1",
        Who::Nobody,
        &[
            ("authorization", "Bearer 1|x"),
            ("authorization", "Bearer 2|y"),
        ],
        "",
        400,
    ),
    case("GET", "/upload/x", Who::Reader, 200),
    // A HEAD is a GET to the frameworks: the GET route guards it too.
    case("HEAD", "/reports/7", Who::Reader, 403),
    case("HEAD", "/reports/7", Who::Admin, 200),
    // Readings found through another reading: `admin ` once `;x` is gone.
    case("GET", "/admin%20;x/users", Who::Reader, 400),
    // A body in an encoding tokengate cannot read for a `_method`.
    with(
        "POST",
        "/items/1",
        Who::Creator,
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-encoding", "gzip"),
        ],
        "",
        415,
    ),
];

/// The credentials of the table's principals.
struct Credentials {
    reader: String,
    creator: String,
    admin: String,
    session: String,
}

impl Credentials {
    fn headers(&self, who: Who) -> Vec<(String, String)> {
        let bearer = |t: &str| vec![("authorization".to_owned(), format!("Bearer {t}"))];
        match who {
            Who::Nobody => Vec::new(),
            Who::Reader => bearer(&self.reader),
            Who::Creator => bearer(&self.creator),
            Who::Admin => bearer(&self.admin),
            Who::Session => vec![(
                "cookie".to_owned(),
                format!("tokengate_session={}", self.session),
            )],
        }
    }
}

/// The request head and body as raw bytes, with the case's headers (its own `Host`s, if
/// any, else one).
fn raw_request(case: &Case, credentials: &[(String, String)], addr: SocketAddr) -> Vec<u8> {
    let mut head = format!("{} {} HTTP/1.1\r\n", case.method, case.target);
    if !case.headers.iter().any(|(n, _)| *n == "host") {
        head.push_str(&format!("host: {addr}\r\n"));
    }
    for (name, value) in case
        .headers
        .iter()
        .map(|(n, v)| (*n, *v))
        .chain(credentials.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n{}",
        case.body.len(),
        case.body
    ));
    head.into_bytes()
}

/// The status the proxy answers.
async fn proxy_status(addr: SocketAddr, request: &[u8]) -> u16 {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        answer
    };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
        .await
        .expect("the proxy answered in time");
    let line = String::from_utf8_lossy(&answer);
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"))
}

/// The same request for `explain`.
fn explain_request(
    case: &Case,
    credentials: &[(String, String)],
    addr: SocketAddr,
) -> http::Request<bytes::Bytes> {
    let mut builder = http::Request::builder()
        .method(case.method)
        .uri(case.target);
    if !case.headers.iter().any(|(n, _)| *n == "host") {
        builder = builder.header("host", addr.to_string());
    }
    for (name, value) in case.headers {
        builder = builder.header(*name, *value);
    }
    for (name, value) in credentials {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(bytes::Bytes::from_static(case.body.as_bytes()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_gives_the_status_the_proxy_returns() {
    assert!(CASES.len() >= 40, "the table holds at least 40 requests");
    let gate = Gate::start(&config()).await;
    gate.app.users.add("alice", None).await.unwrap();
    let credentials = Credentials {
        reader: gate.token("bob", &["read"]).await,
        creator: gate.token("bob", &["create"]).await,
        admin: gate.token("bob", &["admin", "create", "read"]).await,
        session: gate
            .app
            .sessions
            .create("alice")
            .await
            .unwrap()
            .cookie_value,
    };
    let config = gate.app.config();
    let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut wrong = Vec::new();
    for case in CASES {
        let headers = credentials.headers(case.who);
        let proxied = proxy_status(gate.addr, &raw_request(case, &headers, gate.addr)).await;
        let explained = explain(
            &config,
            Some(&gate.app),
            explain_request(case, &headers, gate.addr),
            peer,
        )
        .await
        .expect("explain runs");
        let explained_status = match &explained.verdict {
            Verdict::Allowed => 200,
            Verdict::Refused(status) => status.as_u16(),
            Verdict::Pages => 0,
        };
        if proxied != case.status || explained_status != proxied {
            wrong.push(format!(
                "{} {} as {:?}: proxy {proxied}, explain {explained_status}, table {}\n  {}",
                case.method,
                case.target,
                case.who,
                case.status,
                explained.steps.join("\n  ")
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {}:\n{}",
        wrong.len(),
        CASES.len(),
        wrong.join("\n")
    );
    gate.stop().await;
}
