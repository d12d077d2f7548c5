//! The upstream runs only what tokengate authorized, for the principal tokengate named, under
//! every spelling real frameworks read. tokengate runs in front of real frameworks that the
//! test starts on loopback ports (programs in `tests/frameworks/`):
//!
//! - Flask on Werkzeug's server (Debian's `python3-flask`, run by `/usr/bin/python3`);
//! - PHP's built-in server (`php -S`, Debian's `php-cli`), which also asks Laravel 8.83
//!   (Debian's `php-laravel-framework`) which method it would run and which headers it reads;
//! - Express 4 with `method-override` (npm, in `tests/frameworks/node/`).
//!
//! Each case sends raw bytes (a request line and headers exactly as written, a second `Host`)
//! and checks tokengate's status and what the framework saw: identity headers in any spelling
//! the framework folds to the same name (`X_Token_Abilities` is `HTTP_X_TOKEN_ABILITIES` to
//! Werkzeug and PHP), proxy and identity headers from an untrusted client, paths that a
//! framework reads differently (letter case, trailing dot or blank, fullwidth dots, matrix
//! parameters), a method in lower case, and method overrides (header, query, form, multipart
//! and JSON `_method`). Each framework counts the requests it ran, asked directly, so a
//! refusal is also checked to have run nothing. `scripts/test.sh` installs the frameworks; a
//! missing one fails the test.

mod common;

use common::{Echo, Gate};
use serde_json::Value;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every exchange with tokengate or a framework is bounded by this.
const LIMIT: Duration = Duration::from_secs(10);
/// A framework has this long to answer its first request.
const START_LIMIT: Duration = Duration::from_secs(30);

const CONFIG: &str = r#"
tokens:
  prefix: "tg_"
abilities: [read, create, delete, admin]
routes:
  - path: /public/**
    auth: none
  - path: /admin/**
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
  - path: /**
    auth: any
"#;

/// The user every token belongs to: tokengate's `X-Auth-User`.
const USER: &str = "42";

// ---------------------------------------------------------------------------------------
// The cases

/// Who sends a case: no credential, or a bearer token with these abilities.
#[derive(Clone, Copy, Debug)]
enum Who {
    Anonymous,
    /// `[read]`
    Read,
    /// `[create]`
    Create,
    /// `[create, delete]`
    Both,
}

#[derive(Clone, Copy)]
enum Body {
    Empty,
    /// `application/x-www-form-urlencoded`
    Form(&'static str),
    /// `multipart/form-data` with these fields.
    Multipart(&'static [(&'static str, &'static str)]),
    /// `application/json`
    Json(&'static str),
}

const BOUNDARY: &str = "tokengate-frameworks-boundary";

impl Body {
    /// The `Content-Type` and the bytes.
    fn encode(self) -> (Option<String>, Vec<u8>) {
        match self {
            Body::Empty => (None, Vec::new()),
            Body::Form(form) => (
                Some("application/x-www-form-urlencoded".into()),
                form.as_bytes().to_vec(),
            ),
            Body::Json(json) => (Some("application/json".into()), json.as_bytes().to_vec()),
            Body::Multipart(fields) => {
                let mut body = String::new();
                for (name, value) in fields {
                    body += &format!(
                        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                    );
                }
                body += &format!("--{BOUNDARY}--\r\n");
                (
                    Some(format!("multipart/form-data; boundary={BOUNDARY}")),
                    body.into_bytes(),
                )
            }
        }
    }
}

/// What the framework saw of a request it ran.
enum Saw {
    /// A header, read every way this framework reads it (`Framework::reads`); `None`: absent.
    Header(&'static str, Option<&'static str>),
    /// None of these headers, read every way this framework reads them.
    NoneOf(&'static [(&'static str, &'static str)]),
    /// A field of the framework's JSON answer (a JSON pointer); `None`: absent or null.
    Field(&'static str, Option<&'static str>),
}

enum Expect {
    /// tokengate answers this status with its own `{"message": …}`; the framework runs nothing.
    Refused(u16),
    /// The framework runs the request once, answers 2xx, and saw this.
    Ran(&'static [Saw]),
}

struct Case {
    what: &'static str,
    /// Written as is in the request line.
    method: &'static str,
    /// Written as is in the request line.
    path: &'static str,
    who: Who,
    /// Written as is after `Host`, `Connection: close` and the bearer token.
    headers: &'static [(&'static str, &'static str)],
    body: Body,
    expect: Expect,
}

/// A GET with no body: the usual shape of a case.
const fn get(
    what: &'static str,
    path: &'static str,
    who: Who,
    headers: &'static [(&'static str, &'static str)],
    expect: Expect,
) -> Case {
    Case {
        what,
        method: "GET",
        path,
        who,
        headers,
        body: Body::Empty,
        expect,
    }
}

/// A POST (on `/api/posts/{id}` it needs `create`; a DELETE there needs `delete`).
const fn post(
    what: &'static str,
    path: &'static str,
    who: Who,
    headers: &'static [(&'static str, &'static str)],
    body: Body,
    expect: Expect,
) -> Case {
    Case {
        what,
        method: "POST",
        path,
        who,
        headers,
        body,
        expect,
    }
}

/// Proxy and identity headers only a trusted proxy may send (none is configured).
const UNTRUSTED: &[(&str, &str)] = &[
    ("Forwarded", "for=10.0.0.1;host=admin.internal;proto=https"),
    ("X-Real-IP", "10.0.0.1"),
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Prefix", "/admin"),
    ("X-Forwarded-Server", "admin.internal"),
    ("X-Original-URL", "/admin/users"),
    ("X-Rewrite-URL", "/admin/users"),
    ("Remote-User", "admin"),
    ("X-Remote-User", "admin"),
    ("X-Forwarded-User", "admin"),
    ("X-Forwarded-Email", "admin@example.com"),
    ("X-Forwarded-Groups", "admins"),
    ("X-Auth-Request-User", "admin"),
];

/// The same claims in the underscore spellings Werkzeug and PHP fold to the same variable.
const UNTRUSTED_UNDERSCORED: &[(&str, &str)] = &[
    ("Remote_User", "admin"),
    ("X_Remote_User", "admin"),
    ("X_Forwarded_User", "admin"),
    ("X_Real_IP", "10.0.0.1"),
    ("X_Original_URL", "/admin/users"),
    ("X_Auth_Request_User", "admin"),
];

/// Which identity headers reach the framework, in every spelling it reads (all frameworks).
const IDENTITY: &[Case] = &[
    get(
        "control: a read token's GET carries tokengate's identity",
        "/api/posts/1",
        Who::Read,
        &[],
        Expect::Ran(&[
            Saw::Header("X-Token-Abilities", Some("read")),
            Saw::Header("X-Auth-User", Some(USER)),
            Saw::Header("X-Auth-Method", Some("token")),
        ]),
    ),
    get(
        "X_Token_Abilities: admin on a public route",
        "/public/x",
        Who::Anonymous,
        &[("X_Token_Abilities", "admin")],
        Expect::Ran(&[Saw::Header("X-Token-Abilities", None)]),
    ),
    get(
        "X_Token_Abilities: admin beside a read token",
        "/api/posts/1",
        Who::Read,
        &[("X_Token_Abilities", "admin")],
        Expect::Ran(&[Saw::Header("X-Token-Abilities", Some("read"))]),
    ),
    get(
        "x_auth_user: 1 on a public route",
        "/public/x",
        Who::Anonymous,
        &[("x_auth_user", "1")],
        Expect::Ran(&[Saw::Header("X-Auth-User", None)]),
    ),
    get(
        "x_auth_user: 1 beside a read token",
        "/api/posts/1",
        Who::Read,
        &[("x_auth_user", "1")],
        Expect::Ran(&[
            Saw::Header("X-Auth-User", Some(USER)),
            Saw::Header("X-Token-Abilities", Some("read")),
        ]),
    ),
    get(
        "proxy and identity headers from an untrusted client, public route",
        "/public/x",
        Who::Anonymous,
        UNTRUSTED,
        Expect::Ran(&[Saw::NoneOf(UNTRUSTED)]),
    ),
    get(
        "proxy and identity headers from an untrusted client, beside a read token",
        "/api/posts/1",
        Who::Read,
        UNTRUSTED,
        Expect::Ran(&[
            Saw::NoneOf(UNTRUSTED),
            Saw::Header("X-Token-Abilities", Some("read")),
        ]),
    ),
    get(
        "underscore spellings (Remote_User, X_Real_IP, …) from an untrusted client",
        "/public/x",
        Who::Anonymous,
        UNTRUSTED_UNDERSCORED,
        Expect::Ran(&[Saw::NoneOf(UNTRUSTED_UNDERSCORED)]),
    ),
    get(
        "a bearer token sent to a public route is not forwarded",
        "/public/x",
        Who::Read,
        &[],
        Expect::Ran(&[Saw::Header("Authorization", None)]),
    ),
    get(
        "tokengate's cookies under names the framework reads as theirs do not reach it",
        "/public/x",
        Who::Anonymous,
        &[(
            "Cookie",
            "tokengate.session=forged; tokengate%5Fsession=forged; Tokengate_Session=forged; \
             tokengate[session=forged; XSRF-TOKEN=forged; keep=1",
        )],
        Expect::Ran(&[
            Saw::Field("/cookies/tokengate_session", None),
            Saw::Field("/cookies/Tokengate_Session", None),
            Saw::Field("/cookies/tokengate.session", None),
            Saw::Field("/cookies/XSRF-TOKEN", None),
            Saw::Field("/cookies/keep", Some("1")),
        ]),
    ),
    get(
        "two Host headers",
        "/api/posts/1",
        Who::Read,
        &[("Host", "admin.internal")],
        Expect::Refused(400),
    ),
];

/// Paths a framework may read as another route than tokengate matched (all frameworks).
const PATHS: &[Case] = &[
    get(
        "control: /admin/users with a read token",
        "/admin/users",
        Who::Read,
        &[],
        Expect::Refused(403),
    ),
    get(
        "/ADMIN/users (letter case: Express routes case-insensitively)",
        "/ADMIN/users",
        Who::Read,
        &[],
        Expect::Refused(400),
    ),
    get(
        "/admin./secret (trailing dot)",
        "/admin./secret",
        Who::Read,
        &[],
        Expect::Refused(400),
    ),
    get(
        "/admin%20/secret (trailing blank)",
        "/admin%20/secret",
        Who::Read,
        &[],
        Expect::Refused(400),
    ),
    get(
        "/admin%09/secret (trailing tab)",
        "/admin%09/secret",
        Who::Read,
        &[],
        Expect::Refused(400),
    ),
    get(
        "/%EF%BC%8E%EF%BC%8E/admin (fullwidth dots)",
        "/%EF%BC%8E%EF%BC%8E/admin",
        Who::Read,
        &[],
        Expect::Refused(400),
    ),
    get(
        "/admin;x/users (matrix parameter)",
        "/admin;x/users",
        Who::Read,
        &[],
        Expect::Refused(400),
    ),
];

/// Werkzeug upper-cases the method it runs.
const LOWER_CASE_METHOD: &[Case] = &[
    post(
        "control: POST with a read token",
        "/api/posts/1",
        Who::Read,
        &[],
        Body::Empty,
        Expect::Refused(403),
    ),
    Case {
        method: "post",
        ..post(
            "`post` with a read token",
            "/api/posts/1",
            Who::Read,
            &[],
            Body::Empty,
            Expect::Refused(403),
        )
    },
    Case {
        method: "post",
        ..post(
            "`post` with a create token runs as POST",
            "/api/posts/1",
            Who::Create,
            &[],
            Body::Empty,
            Expect::Ran(&[
                Saw::Field("/method", Some("POST")),
                Saw::Header("X-Token-Abilities", Some("create")),
            ]),
        )
    },
];

const OVERRIDE_HEADER: &[(&str, &str)] = &[("X-HTTP-Method-Override", "DELETE")];
const OVERRIDE_HEADER_UNDERSCORED: &[(&str, &str)] = &[("X_HTTP_Method_Override", "DELETE")];
const OVERRIDE_QUERY: &str = "/api/posts/1?_method=DELETE";
const OVERRIDE_FORM: Body = Body::Form("_method=DELETE");
const OVERRIDE_MULTIPART: Body = Body::Multipart(&[("_method", "DELETE")]);
const OVERRIDE_JSON: Body = Body::Json(r#"{"_method":"DELETE"}"#);

const RAN_DELETE: Expect = Expect::Ran(&[Saw::Field("/laravel_method", Some("DELETE"))]);
const RAN_POST: Expect = Expect::Ran(&[Saw::Field("/laravel_method", Some("POST"))]);

/// Every way Laravel's `Request::capture()->getMethod()` turns a POST into another method.
const LARAVEL_OVERRIDE: &[Case] = &[
    post(
        "control: a plain POST with a create token",
        "/api/posts/1",
        Who::Create,
        &[],
        Body::Empty,
        Expect::Ran(&[
            Saw::Field("/laravel_method", Some("POST")),
            Saw::Field("/laravel_abilities", Some("create")),
        ]),
    ),
    post(
        "X-HTTP-Method-Override: DELETE with a create token",
        "/api/posts/1",
        Who::Create,
        OVERRIDE_HEADER,
        Body::Empty,
        Expect::Refused(403),
    ),
    post(
        // Symfony reads `_` as `-` in header names, so this spelling would override too:
        // tokengate drops every header whose name holds `_`, and Laravel runs the POST the
        // token may make.
        "X_HTTP_Method_Override: DELETE with a create token",
        "/api/posts/1",
        Who::Create,
        OVERRIDE_HEADER_UNDERSCORED,
        Body::Empty,
        RAN_POST,
    ),
    post(
        "?_method=DELETE with a create token",
        OVERRIDE_QUERY,
        Who::Create,
        &[],
        Body::Empty,
        Expect::Refused(403),
    ),
    post(
        "form _method=DELETE with a create token",
        "/api/posts/1",
        Who::Create,
        &[],
        OVERRIDE_FORM,
        Expect::Refused(403),
    ),
    post(
        "multipart _method=DELETE with a create token",
        "/api/posts/1",
        Who::Create,
        &[],
        OVERRIDE_MULTIPART,
        Expect::Refused(403),
    ),
    post(
        r#"JSON {"_method":"DELETE"} with a create token"#,
        "/api/posts/1",
        Who::Create,
        &[],
        OVERRIDE_JSON,
        Expect::Refused(403),
    ),
    post(
        "X-HTTP-Method-Override: DELETE with a create+delete token",
        "/api/posts/1",
        Who::Both,
        OVERRIDE_HEADER,
        Body::Empty,
        RAN_DELETE,
    ),
    post(
        "X_HTTP_Method_Override: DELETE with a create+delete token",
        "/api/posts/1",
        Who::Both,
        OVERRIDE_HEADER_UNDERSCORED,
        Body::Empty,
        RAN_POST,
    ),
    post(
        "?_method=DELETE with a create+delete token",
        OVERRIDE_QUERY,
        Who::Both,
        &[],
        Body::Empty,
        RAN_DELETE,
    ),
    post(
        "form _method=DELETE with a create+delete token",
        "/api/posts/1",
        Who::Both,
        &[],
        OVERRIDE_FORM,
        RAN_DELETE,
    ),
    post(
        "multipart _method=DELETE with a create+delete token",
        "/api/posts/1",
        Who::Both,
        &[],
        OVERRIDE_MULTIPART,
        RAN_DELETE,
    ),
    post(
        r#"JSON {"_method":"DELETE"} with a create+delete token"#,
        "/api/posts/1",
        Who::Both,
        &[],
        OVERRIDE_JSON,
        RAN_DELETE,
    ),
];

/// Express's `methodOverride('X-HTTP-Method-Override')`.
const EXPRESS_OVERRIDE: &[Case] = &[
    get(
        "control: a read token's GET runs the fallback handler",
        "/api/posts/1",
        Who::Read,
        &[],
        Expect::Ran(&[
            Saw::Field("/handler", Some("fallback")),
            Saw::Field("/method", Some("GET")),
            Saw::Field("/abilities", Some("read")),
        ]),
    ),
    post(
        "control: a plain POST with a create token",
        "/api/posts/1",
        Who::Create,
        &[],
        Body::Empty,
        Expect::Ran(&[Saw::Field("/method", Some("POST"))]),
    ),
    post(
        "X-HTTP-Method-Override: DELETE with a create token",
        "/api/posts/1",
        Who::Create,
        OVERRIDE_HEADER,
        Body::Empty,
        Expect::Refused(403),
    ),
    post(
        "X-HTTP-Method-Override: DELETE with a create+delete token",
        "/api/posts/1",
        Who::Both,
        OVERRIDE_HEADER,
        Body::Empty,
        Expect::Ran(&[
            Saw::Field("/method", Some("DELETE")),
            Saw::Field("/abilities", Some("create,delete")),
        ]),
    ),
];

// ---------------------------------------------------------------------------------------
// The tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flask_sees_only_tokengates_identity() {
    run(Framework::Flask, IDENTITY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_and_laravel_see_only_tokengates_identity() {
    run(Framework::Php, IDENTITY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_sees_only_tokengates_identity() {
    run(Framework::Express, IDENTITY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flask_gets_no_ambiguous_path() {
    run(Framework::Flask, PATHS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_gets_no_ambiguous_path() {
    run(Framework::Php, PATHS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_gets_no_ambiguous_path() {
    run(Framework::Express, PATHS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn werkzeug_runs_a_lower_case_method_only_as_authorized() {
    run(Framework::Flask, LOWER_CASE_METHOD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn laravel_runs_an_overridden_method_only_as_authorized() {
    run(Framework::Php, LARAVEL_OVERRIDE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_runs_an_overridden_method_only_as_authorized() {
    run(Framework::Express, EXPRESS_OVERRIDE).await;
}

/// Starts `framework` and tokengate in front of it, runs every case, and fails listing each
/// case that did not behave (after running them all).
async fn run(framework: Framework, cases: &[Case]) {
    let mut upstream = framework.start();
    upstream.wait_ready().await;
    let echo = Echo::start(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let gate = Gate::start_with_upstream(upstream.addr, echo, CONFIG).await;
    let tokens = Tokens {
        read: gate.token(USER, &["read"]).await,
        create: gate.token(USER, &["create"]).await,
        both: gate.token(USER, &["create", "delete"]).await,
    };
    let mut failures = Vec::new();
    for case in cases {
        let request = case.request(gate.addr, tokens.of(case.who));
        let before = upstream.ran().await;
        let verdict = match exchange(gate.addr, &request).await {
            Ok(reply) => {
                let ran = upstream.ran().await - before;
                judge(framework, case, &reply, ran)
            }
            Err(e) => Err(e),
        };
        match verdict {
            Ok(()) => println!("{framework}: ok   {}", case.what),
            Err(why) => {
                println!("{framework}: FAIL {}: {why}", case.what);
                failures.push(format!("- {}: {why}", case.what));
            }
        }
    }
    gate.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {} cases failed against {framework}:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

struct Tokens {
    read: String,
    create: String,
    both: String,
}

impl Tokens {
    fn of(&self, who: Who) -> Option<&str> {
        match who {
            Who::Anonymous => None,
            Who::Read => Some(&self.read),
            Who::Create => Some(&self.create),
            Who::Both => Some(&self.both),
        }
    }
}

impl Case {
    /// The request's bytes: the request line and headers exactly as the case writes them.
    fn request(&self, host: SocketAddr, token: Option<&str>) -> Vec<u8> {
        let (content_type, body) = self.body.encode();
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n",
            self.method, self.path
        );
        if let Some(token) = token {
            head += &format!("Authorization: Bearer {token}\r\n");
        }
        for (name, value) in self.headers {
            head += &format!("{name}: {value}\r\n");
        }
        if let Some(content_type) = content_type {
            head += &format!("Content-Type: {content_type}\r\n");
        }
        if !body.is_empty() || self.method.eq_ignore_ascii_case("POST") {
            head += &format!("Content-Length: {}\r\n", body.len());
        }
        head += "\r\n";
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    }
}

/// Whether `reply` (and `ran`, the requests the framework ran meanwhile) is what the case
/// expects; every difference, when not.
fn judge(framework: Framework, case: &Case, reply: &Reply, ran: u64) -> Result<(), String> {
    let shown = format!("{} {}", reply.status, String::from_utf8_lossy(&reply.body));
    let json: Option<Value> = serde_json::from_slice(&reply.body).ok();
    let mut wrong = Vec::new();
    match &case.expect {
        Expect::Refused(status) => {
            if ran != 0 {
                wrong.push(format!("the framework ran it ({ran} request(s))"));
            }
            if reply.status != *status {
                wrong.push(format!("status {} (wanted {status})", reply.status));
            }
            let message = json.as_ref().and_then(|j| j.get("message")?.as_str());
            if message.is_none() || json.as_ref().is_some_and(|j| j.get("framework").is_some()) {
                wrong.push("not tokengate's {\"message\": …}".into());
            }
        }
        Expect::Ran(saw) => {
            if ran != 1 {
                wrong.push(format!("the framework ran {ran} request(s), not 1"));
            }
            if !(200..300).contains(&reply.status) {
                wrong.push(format!("status {} (wanted 2xx)", reply.status));
            }
            match &json {
                Some(json) if json.get("framework").is_some() => {
                    for saw in *saw {
                        framework.check(json, saw, &mut wrong);
                    }
                }
                _ => wrong.push("not the framework's JSON".into()),
            }
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("{}; got {shown}", wrong.join("; ")))
    }
}

// ---------------------------------------------------------------------------------------
// The frameworks

#[derive(Clone, Copy)]
enum Framework {
    Flask,
    Php,
    Express,
}

impl fmt::Display for Framework {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Framework::Flask => "Flask",
            Framework::Php => "PHP+Laravel",
            Framework::Express => "Express",
        })
    }
}

fn frameworks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/frameworks")
}

/// Fails the test when `path` is missing, saying what installs it.
fn require(path: &Path, what: &str, install: &str) {
    assert!(
        path.exists(),
        "{what} is missing ({} not found): {install}, or run scripts/test.sh",
        path.display()
    );
}

const LARAVEL_AUTOLOAD: &str = "/usr/share/php/Illuminate/autoload.php";

impl Framework {
    /// Starts the framework on any free loopback port (port 0), and waits until it listens
    /// (not yet ready: `Upstream::wait_ready`).
    fn start(self) -> Upstream {
        let dir = frameworks_dir();
        let port = 0;
        let listen = format!("127.0.0.1:{port}");
        let state = tempfile::tempdir().unwrap();
        let (mut command, install) = match self {
            Framework::Flask => {
                let install = "apt-get install -y python3-flask";
                require(Path::new("/usr/bin/python3"), "Debian's python3", install);
                let mut command = Command::new("/usr/bin/python3");
                command.arg(dir.join("flask_app.py")).arg(port.to_string());
                (command, install)
            }
            Framework::Php => {
                let install = "apt-get install -y php-cli php-laravel-framework";
                require(Path::new(LARAVEL_AUTOLOAD), "Laravel", install);
                let mut command = Command::new("php");
                command
                    .args(["-S", &listen, "-t"])
                    .arg(&dir)
                    .arg(dir.join("router.php"))
                    .env("TG_COUNT_FILE", state.path().join("count"));
                (command, install)
            }
            Framework::Express => {
                let install = "(cd tests/frameworks/node && npm install)";
                let node = dir.join("node");
                for package in ["express", "method-override"] {
                    require(&node.join("node_modules").join(package), package, install);
                }
                let mut command = Command::new("node");
                command
                    .arg(node.join("app.js"))
                    .arg(port.to_string())
                    .current_dir(&node);
                (command, install)
            }
        };
        let log = state.path().join("log");
        let out = std::fs::File::create(&log).unwrap();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{self}: cannot start {:?} ({e}): {install}, or run scripts/test.sh",
                    command.get_program()
                )
            });
        let pid = child.id();
        let addr = common::wait_listening(&self.to_string(), pid, [127, 0, 0, 1], || {
            let status = child.try_wait().unwrap()?;
            Some(format!(
                "{status}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ))
        });
        Upstream {
            framework: self,
            addr,
            child,
            log,
            _state: state,
        }
    }

    /// The JSON pointers where this framework's answer shows how it reads header `name`.
    fn reads(self, name: &str) -> Vec<String> {
        let cgi = format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_"));
        let lower = name.to_ascii_lowercase();
        match self {
            Framework::Flask => vec![format!("/environ/{cgi}")],
            Framework::Php => vec![
                format!("/server/{cgi}"),
                // Symfony's HeaderBag: lower case, `_` folded to `-`.
                format!("/laravel_headers/{}/0", lower.replace('_', "-")),
            ],
            Framework::Express => vec![format!("/headers/{lower}")],
        }
    }

    /// Adds to `wrong` how `json` (the framework's answer) differs from `saw`.
    fn check(self, json: &Value, saw: &Saw, wrong: &mut Vec<String>) {
        let mut expect = |pointer: &str, want: Option<&str>| {
            let got = match json.pointer(pointer) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => Some(other.to_string()),
            };
            if got.as_deref() != want {
                wrong.push(format!("{pointer} is {got:?}, wanted {want:?}"));
            }
        };
        match saw {
            Saw::Header(name, want) => {
                for pointer in self.reads(name) {
                    expect(&pointer, *want);
                }
            }
            Saw::NoneOf(headers) => {
                for (name, _) in *headers {
                    for pointer in self.reads(name) {
                        expect(&pointer, None);
                    }
                }
            }
            Saw::Field(pointer, want) => expect(pointer, *want),
        }
    }
}

/// A running framework; killed when dropped.
struct Upstream {
    framework: Framework,
    addr: SocketAddr,
    child: Child,
    /// Its stdout and stderr.
    log: PathBuf,
    _state: tempfile::TempDir,
}

impl Upstream {
    /// Waits until the framework answers `GET /__seen`; fails with its log if it exits or
    /// does not answer within `START_LIMIT`.
    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before answering:\n{}",
                    self.framework,
                    self.log()
                );
            }
            if let Ok(reply) = exchange(self.addr, &self.seen_request()).await {
                if reply.status == 200 {
                    return;
                }
            }
            assert!(
                started.elapsed() < START_LIMIT,
                "{} did not answer GET /__seen on {} within {START_LIMIT:?}:\n{}",
                self.framework,
                self.addr,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn seen_request(&self) -> Vec<u8> {
        format!(
            "GET /__seen HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .into_bytes()
    }

    /// How many requests the framework has run (asked directly, not through tokengate).
    async fn ran(&self) -> u64 {
        let reply = exchange(self.addr, &self.seen_request())
            .await
            .unwrap_or_else(|e| panic!("{}: GET /__seen: {e}\n{}", self.framework, self.log()));
        let json: Value = serde_json::from_slice(&reply.body).unwrap_or_else(|e| {
            panic!(
                "{}: GET /__seen is not JSON ({e}): {}",
                self.framework,
                String::from_utf8_lossy(&reply.body)
            )
        });
        json["count"].as_u64().expect("GET /__seen answers a count")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Raw HTTP/1.1

/// A response as read off the wire, its body unframed.
struct Reply {
    status: u16,
    body: Vec<u8>,
}

/// Writes `request` (which says `Connection: close`) to `addr` and reads the response until
/// the server closes the connection.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Result<Reply, String> {
    let bytes = tokio::time::timeout(LIMIT, async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request).await?;
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await?;
        Ok::<_, std::io::Error>(bytes)
    })
    .await
    .map_err(|_| format!("no answer from {addr} within {LIMIT:?}"))?
    .map_err(|e| format!("exchange with {addr}: {e}"))?;
    parse_reply(&bytes)
}

fn parse_reply(bytes: &[u8]) -> Result<Reply, String> {
    let shown = || String::from_utf8_lossy(bytes).into_owned();
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let end = match response.parse(bytes) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) => return Err(format!("incomplete response: {:?}", shown())),
        Err(e) => return Err(format!("malformed response ({e}): {:?}", shown())),
    };
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let rest = &bytes[end..];
    let body = if header("transfer-encoding").is_some_and(|te| te.ends_with("chunked")) {
        unchunk(rest).ok_or_else(|| format!("malformed chunked body: {:?}", shown()))?
    } else if let Some(length) = header("content-length") {
        let length: usize = length.parse().map_err(|_| shown())?;
        rest.get(..length)
            .ok_or_else(|| format!("short body: {:?}", shown()))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Reply {
        status: response.code.unwrap_or_default(),
        body,
    })
}

/// A chunked body's data (extensions and trailers ignored).
fn unchunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}
