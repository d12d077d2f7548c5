//! Config validation reports every problem at once: a file with one problem in every
//! section gets each of them back (from the library and from `check-config`, exit 64), and
//! a valid file still gives the typed values it always did.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tokengate::config::{AccessLogFormat, Config, StoreConfig};
use tokengate::routes::AuthMode;

/// One problem in every section that has checks (`shutdown_grace_seconds` and
/// `upstream_http2` have none beyond their YAML type). The abilities section's problem
/// (`read` twice) must not make the routes and defaults that name `read` problems too, and
/// the broken `upstream` must not hide `upstream_ca`'s own problem.
const ONE_PROBLEM_PER_SECTION: &str = r#"
listen: nowhere
workers: 0
upstream: ftp://app.internal
upstream_ca: /nonexistent/ca.pem
upstream_http2: false
tls:
  cert: /nonexistent/cert.pem
  key: /nonexistent/key.pem
store:
  path: ./data/tokengate
  cache_mb: 0
admin:
  listen: 127.0.0.1:9090
  key_env: ""
tokens:
  prefix: "a|b"
abilities: [read, read]
default_abilities: [write]
sessions:
  cookie: "bad cookie"
headers:
  user: "bad header"
trusted_proxies: [nonsense]
routes:
  - path: /api/**/x
    abilities: [read]
  - path: /**
access_log:
  enabled: true
  format: xml
shutdown_grace_seconds: 30
timeouts:
  idle_seconds: 0
upgrades: [h2c]
limits:
  max_connections: 0
"#;

/// What each section's problem reads as (`place: message`; a message that quotes the OS
/// ends where the OS's words begin).
const EXPECTED: &[&str] = &[
    "listen: 'nowhere' is not an address like 127.0.0.1:8080 or [::1]:8080",
    "workers: must be between 1 and 1024 (default: half the CPUs, at least 1)",
    "upstream: 'ftp' upstreams are not supported; use http:// or https://",
    "upstream_ca: cannot read /nonexistent/ca.pem: ",
    "tls: cannot read /nonexistent/cert.pem: ",
    "store.cache_mb: must be at least 1",
    "admin.key_env: must name an environment variable",
    "abilities[1]: 'read' is declared twice",
    "default_abilities[0]: 'write' is not one of the declared abilities",
    "tokens.prefix: must be at most 64 printable ASCII characters, without '|'",
    "sessions.cookie: 'bad cookie' is not a cookie name ([A-Za-z0-9_.-]+)",
    "headers.user: 'bad header' is not a header name",
    "trusted_proxies[0]: 'nonsense' is not an IP address or CIDR range",
    "routes[0].path: '**' may only be the last segment",
    "access_log.format: 'xml' is not a format: text or json",
    "timeouts.idle_seconds: must be a number of seconds above 0, at most 86400",
    "upgrades[0]: h2c cannot be allowed: the upstream would take HTTP/2 requests through the tunnel that tokengate never checks",
    "limits.max_connections: must be at least 1",
];

/// The problems as `place: message` lines.
fn problems(yaml: &str) -> Vec<String> {
    match Config::parse(yaml) {
        Ok(_) => panic!("the config was accepted"),
        Err(e) => e
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.place, p.message))
            .collect(),
    }
}

/// Whether `line` is the expected problem: the same text, or the same start when the
/// expectation ends where the OS's words begin.
fn is(line: &str, expected: &str) -> bool {
    if expected.ends_with(": ") {
        line.starts_with(expected)
    } else {
        line == expected
    }
}

#[test]
fn every_section_reports_its_problem_at_once() {
    let got = problems(ONE_PROBLEM_PER_SECTION);
    for want in EXPECTED {
        assert!(
            got.iter().any(|line| is(line, want)),
            "missing {want:?} in {got:#?}"
        );
    }
    assert_eq!(got.len(), EXPECTED.len(), "{got:#?}");
}

#[test]
fn check_config_prints_every_section_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, ONE_PROBLEM_PER_SECTION).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .env("RUST_LOG", "warn")
        .args(["check-config", "--config", file.to_str().unwrap()])
        .output()
        .expect("tokengate runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .skip_while(|l| *l != "invalid config:")
        .skip(1)
        .collect();
    for want in EXPECTED {
        assert!(
            lines.iter().any(|line| is(line, want)),
            "missing {want:?} in {stderr}"
        );
    }
    assert_eq!(lines.len(), EXPECTED.len(), "{stderr}");
}

#[test]
fn sections_after_a_broken_one_are_still_checked() {
    // Each late section's problem beside an early one: none waits for the file above it
    // to be clean.
    for late in [
        "access_log:\n  enabled: true\n  format: xml\n",
        "timeouts:\n  idle_seconds: 0\n",
        "limits:\n  max_connections: 0\n",
        "upgrades: [h2c]\n",
    ] {
        let got = problems(&format!("listen: nowhere\nroutes:\n  - path: api\n{late}"));
        assert!(got[0].starts_with("listen: 'nowhere'"), "{got:#?}");
        assert!(got[1].starts_with("upstream: is required"), "{got:#?}");
        assert!(got[2].starts_with("routes[0].path: must start"), "{got:#?}");
        assert_eq!(got.len(), 4, "{late}: {got:#?}");
    }
}

/// Every key set to something other than its default.
const VALID: &str = r#"
listen: 127.0.0.1:8081
workers: 3
upstream: http://127.0.0.1:3001
upstream_http2: true
store:
  path: /tmp/tokengate-store
  cache_mb: 5
admin:
  listen: 127.0.0.1:9091
  key_env: MY_ADMIN_KEY
tokens:
  prefix: "tg_"
  expiration_minutes: 90
  cache_capacity: 500
  forward_authorization: true
  max_per_user: 7
abilities: [read, write, admin]
default_abilities: [read]
sessions:
  cookie: my_session
  idle_minutes: 10
  lifetime_minutes: 100
  secure: false
  forward_cookie: true
headers:
  abilities: X-Abilities
  user: X-User
  token_id: X-Token-Id
  method: X-Method
trusted_proxies: [10.0.0.0/8, 192.168.1.1]
routes:
  - path: /healthz
    auth: none
  - path: /api/posts/{id}
    methods: [GET, HEAD]
    abilities: [read]
  - path: /api/admin/**
    auth: token
    any_ability: [admin, write]
  - path: /app/**
    auth: session
  - path: /**
access_log:
  enabled: true
  format: json
shutdown_grace_seconds: 12
timeouts:
  upstream_connect_seconds: 1.5
  upstream_response_seconds: 2
  client_header_seconds: 3
  idle_seconds: 4
  client_body_seconds: 5
  client_send_seconds: 6
  upstream_body_idle_seconds: 7
  tunnel_idle_seconds: 8
upgrades: [WebSocket, my-proto]
limits:
  max_header_bytes: 16384
  max_connections: 50
  body_scan_bytes: 2048
"#;

#[test]
fn a_valid_config_gives_its_typed_values() {
    let c = Config::parse(VALID).unwrap_or_else(|e| panic!("{e}"));
    let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert_eq!(c.listen, addr("127.0.0.1:8081"));
    assert_eq!(c.workers, 3);
    assert_eq!(c.upstream.to_string(), "http://127.0.0.1:3001");
    assert!(c.upstream_http2);
    assert!(c.upstream_tls.is_none());
    assert!(c.tls.is_none());
    assert_eq!(
        c.store,
        StoreConfig::Sled {
            path: PathBuf::from("/tmp/tokengate-store"),
            cache_bytes: 5 * 1024 * 1024
        }
    );
    assert_eq!(c.admin.listen, addr("127.0.0.1:9091"));
    assert_eq!(c.admin.key_env, "MY_ADMIN_KEY");
    assert_eq!(c.tokens.prefix, "tg_");
    assert_eq!(c.tokens.lifetime, Some(90 * 60));
    assert_eq!(c.tokens.abilities, ["read", "write", "admin"]);
    assert_eq!(c.tokens.default_abilities, ["read"]);
    assert_eq!(c.tokens.cache_capacity, 500);
    assert_eq!(c.tokens.max_per_user, 7);
    assert!(c.forward_authorization);
    assert_eq!(c.sessions.cookie, "my_session");
    assert_eq!(c.sessions.idle_minutes, 10);
    assert_eq!(c.sessions.lifetime_minutes, 100);
    assert!(!c.sessions.secure);
    assert!(c.sessions.forward_cookie);
    assert_eq!(c.headers.abilities, "x-abilities");
    assert_eq!(c.headers.user, "x-user");
    assert_eq!(c.headers.token_id, "x-token-id");
    assert_eq!(c.headers.method, "x-method");
    assert_eq!(
        c.trusted_proxies,
        [
            "10.0.0.0/8".parse::<ipnet::IpNet>().unwrap(),
            "192.168.1.1/32".parse().unwrap()
        ]
    );
    let routes = c.routes.routes();
    assert_eq!(routes.len(), 5);
    let patterns: Vec<&str> = routes.iter().map(|r| &*r.pattern).collect();
    assert_eq!(
        patterns,
        [
            "/healthz",
            "/api/posts/{id}",
            "/api/admin/**",
            "/app/**",
            "/**"
        ]
    );
    let auths: Vec<AuthMode> = routes.iter().map(|r| r.auth).collect();
    assert_eq!(
        auths,
        [
            AuthMode::None,
            AuthMode::Any,
            AuthMode::Token,
            AuthMode::Session,
            AuthMode::Any
        ]
    );
    assert!(routes.iter().enumerate().all(|(i, r)| r.index == i));
    assert_eq!(
        routes[1].methods.as_deref(),
        Some(&[http::Method::GET, http::Method::HEAD][..])
    );
    assert_eq!(&*routes[1].all_of, ["read"]);
    assert_eq!(&*routes[2].any_of, ["admin", "write"]);
    assert!(routes[2].all_of.is_empty() && routes[4].methods.is_none());
    // The compiled table finds what the patterns say.
    let find = |method: http::Method, path: &str| {
        let path = tokengate::path::check(path).unwrap();
        c.routes.find(&method, &path).map(|r| r.index)
    };
    assert_eq!(find(http::Method::GET, "/healthz"), Some(0));
    assert_eq!(find(http::Method::GET, "/api/posts/7"), Some(1));
    assert_eq!(find(http::Method::POST, "/api/posts/7"), Some(4));
    assert_eq!(find(http::Method::GET, "/api/admin/users/1"), Some(2));
    assert_eq!(find(http::Method::GET, "/app"), Some(3));
    assert_eq!(c.access_log, Some(AccessLogFormat::Json));
    assert_eq!(c.shutdown_grace, Duration::from_secs(12));
    let t = c.timeouts;
    assert_eq!(t.upstream_connect, Duration::from_millis(1500));
    assert_eq!(
        [
            t.upstream_response,
            t.client_header,
            t.idle,
            t.client_body,
            t.client_send,
            t.upstream_body_idle,
            t.tunnel_idle
        ],
        [2, 3, 4, 5, 6, 7, 8].map(Duration::from_secs)
    );
    assert_eq!(c.limits.max_header_bytes, 16384);
    assert_eq!(c.limits.max_connections, 50);
    assert_eq!(c.limits.body_scan_bytes, 2048);
    assert_eq!(c.upgrades, ["websocket", "my-proto"]);
}

#[test]
fn an_absent_or_empty_section_takes_its_defaults() {
    // `sessions:` with every key commented out is YAML null: the same as leaving it out.
    let minimal = "upstream: http://127.0.0.1:3000\nroutes:\n  - path: /**\n";
    let empty = format!(
        "{minimal}store:\nadmin:\ntokens:\nsessions:\nheaders:\naccess_log:\ntimeouts:\nlimits:\n"
    );
    for yaml in [minimal, &empty] {
        let c = Config::parse(yaml).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(
            c.store.sled_path(),
            Some(PathBuf::from("./data/tokengate").as_path())
        );
        assert_eq!(c.admin.key_env, "TOKENGATE_ADMIN_KEY");
        assert_eq!(c.tokens.cache_capacity, 100_000);
        assert_eq!(c.tokens.max_per_user, 1000);
        assert_eq!(c.sessions.cookie, "tokengate_session");
        assert_eq!(c.sessions.idle_minutes, 120);
        assert_eq!(c.headers.user, "x-auth-user");
        assert_eq!(c.access_log, None);
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.timeouts.upstream_connect, Duration::from_secs(5));
        assert_eq!(c.timeouts.tunnel_idle, Duration::from_secs(300));
        assert_eq!(c.limits.max_header_bytes, 64 * 1024);
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(c.upgrades, ["websocket"]);
    }
}

/// `sessions.laravel` is checked with the rest, its keys read from the environment when the
/// config loads: every problem at once from `check-config`, and the key never printed.
#[test]
fn laravel_sessions_are_checked_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let check = |yaml: &str, env: &[(&str, &str)]| {
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(["check-config", "--config", path.to_str().unwrap()])
            .env_remove("TG_TEST_NO_SUCH_KEY")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = check(
        "upstream: http://127.0.0.1:1\nroutes:\n  - path: /**\n\
         sessions:\n  laravel:\n    app_key_env: TG_TEST_NO_SUCH_KEY\n    cookie: 'a b'\n\
         \x20   serialization: yaml\n    login_url: https://evil.example/\n",
        &[],
    );
    for expected in [
        "sessions.laravel.app_key_env: the environment variable TG_TEST_NO_SUCH_KEY is not set",
        "sessions.laravel.cookie: 'a b' is not a cookie name",
        "sessions.laravel.serialization: 'yaml' is not php or json",
        "sessions.laravel.login_url: 'https://evil.example/' is not a path on this site",
        "sessions.laravel: reads Laravel's sessions table: store.kind must be the app's database",
    ] {
        assert!(said.contains(expected), "{expected}\n{said}");
    }
    let short = "base64:c2l4dGVlbiBieXRlcyBrZXk=";
    let said = check(
        "upstream: http://127.0.0.1:1\nroutes:\n  - path: /**\n\
         sessions:\n  laravel:\n    app_key_env: TG_TEST_SHORT_KEY\n    driver: redis\n\
         \x20   redis_url_env: TG_TEST_NO_SUCH_KEY\n",
        &[("TG_TEST_SHORT_KEY", short)],
    );
    for expected in [
        "sessions.laravel.app_key_env: TG_TEST_SHORT_KEY and the previous keys: key 1 is 17 bytes; AES-256-CBC needs 32",
        "sessions.laravel.redis_url_env: the environment variable TG_TEST_NO_SUCH_KEY must hold the redis://",
    ] {
        assert!(said.contains(expected), "{expected}\n{said}");
    }
    assert!(
        !said.contains("c2l4dGVlbiBieXRlcyBrZXk"),
        "the key is never printed"
    );
}
