//! The `tokengate` binary: exit codes, check-config messages, token management, explain,
//! and `serve` with the contract the benchmark harness relies on.

mod common;

use common::{eventually_blocking, wait_listening};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tokengate"));
    c.env("RUST_LOG", "warn");
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("tokengate runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The echo upstream, served by `runtime`.
fn start_echo(runtime: &tokio::runtime::Runtime) -> tokengate::echo::Echo {
    runtime.block_on(async {
        tokengate::echo::Echo::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
    })
}

/// Adds `extra` (top-level YAML keys) to a config file.
fn append_config(cfg: &Path, extra: &str) {
    let mut yaml = std::fs::read_to_string(cfg).unwrap();
    yaml.push_str(extra);
    std::fs::write(cfg, yaml).unwrap();
}

/// A config whose listeners take any free port (port 0: the proxy on 127.0.0.1, the admin
/// listener on 127.0.0.2, as two port-0 addresses on one IP would fail validation), with one
/// worker (each worker binds its own listener, so with port 0 each would get its own port).
/// `Server::start` finds the ports the kernel gave them.
fn write_config(dir: &Path, upstream_port: u16) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:0\nworkers: 1\nupstream: http://127.0.0.1:{upstream_port}\nstore:\n  path: {}\nadmin:\n  listen: {ADMIN_ANY_PORT}\ntokens:\n  prefix: tg_\nabilities: [read, write]\ndefault_abilities: [read]\nroutes:\n  - path: /healthz\n    auth: none\n  - path: /bench/**\n    abilities: [read]\n  - path: /w/**\n    abilities: [write]\n",
            dir.join("store").display(),
        ),
    )
    .unwrap();
    path
}

const ADMIN_ANY_PORT: &str = "127.0.0.2:0";

/// Names the admin port a server got in its config file, for the CLI, which finds the
/// admin API there. The server keeps the `admin.listen` it started with, so a reload of
/// this file lists `admin.listen` as needing a restart.
fn name_admin_port(cfg: &Path, admin_port: u16) {
    let yaml = std::fs::read_to_string(cfg).unwrap();
    let named = yaml.replace(
        &format!("  listen: {ADMIN_ANY_PORT}\n"),
        &format!("  listen: 127.0.0.2:{admin_port}\n"),
    );
    assert_ne!(
        named,
        yaml,
        "no admin listen address to name in {}",
        cfg.display()
    );
    std::fs::write(cfg, named).unwrap();
}

#[test]
fn check_config_prints_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "upstream: http://127.0.0.1:1\nabilities: [read]\nroutes:\n  - path: nope\n  - path: /x\n    abilities: [write]\n").unwrap();
    let out = run(&["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("routes[0].path: must start with '/'"), "{err}");
    assert!(
        err.contains("routes[1].abilities[0]: 'write' is not one of the declared abilities"),
        "{err}"
    );

    // serve refuses the same file with the same messages
    let out = run(&["serve", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("routes[0].path: must start with '/'"));

    let good = write_config(dir.path(), 1);
    let out = run(&["check-config", "--config", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml");
    assert_eq!(
        run(&["check-config", "--config", example]).status.code(),
        Some(0)
    );

    let out = run(&["check-config", "--config", "/nonexistent/tokengate.yaml"]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(run(&["token", "create"]).status.code(), Some(2));
    assert_eq!(run(&["no-such-command"]).status.code(), Some(2));
}

#[test]
fn token_lifecycle_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 1);
    let cfg = cfg.to_str().unwrap();

    let out = run(&[
        "token",
        "create",
        "--config",
        cfg,
        "--user",
        "42",
        "--name",
        "ci",
        "--abilities",
        "read,bogus",
        "--expires-in",
        "30d",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let plaintext = text.lines().last().unwrap().to_string();
    let (id, secret) = plaintext.split_once('|').unwrap();
    assert!(id.bytes().all(|b| b.is_ascii_digit()));
    assert!(
        secret.starts_with("tg_") && secret.len() == 3 + 40 + 8,
        "{plaintext}"
    );
    assert!(stderr(&out).contains("dropped abilities not declared in the config: bogus"));
    assert!(
        !stderr(&out).contains(secret),
        "the secret never goes to the log"
    );

    // default abilities when none are named
    let out = run(&[
        "token", "create", "--config", cfg, "--user", "7", "--name", "default",
    ]);
    assert!(out.status.success());

    let out = run(&["token", "list", "--config", cfg, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["user"], "42");
    assert_eq!(list[0]["abilities"], serde_json::json!(["read"]));
    assert_eq!(list[1]["abilities"], serde_json::json!(["read"]));
    assert!(list[0]["expires_at"].is_string());
    let listing = stdout(&out);
    assert!(
        !listing.contains(secret) && !listing.contains("hash"),
        "no secrets or hashes in listings"
    );

    let out = run(&["token", "list", "--config", cfg, "--user", "7"]);
    assert!(stdout(&out).lines().count() == 2, "{}", stdout(&out));

    let out = run(&[
        "token",
        "update",
        "--config",
        cfg,
        id,
        "--abilities",
        "read,write",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("[read, write]"));

    let out = run(&[
        "explain", "--config", cfg, "POST", "/w/x", "--token", &plaintext,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("decision: allowed"),
        "{}",
        stdout(&out)
    );

    let out = run(&["token", "revoke", "--config", cfg, id]);
    assert!(out.status.success());
    let out = run(&["token", "revoke", "--config", cfg, id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no token with id"));

    let out = run(&[
        "explain", "--config", cfg, "GET", "/bench/x", "--token", &plaintext,
    ]);
    let text = stdout(&out);
    assert!(
        text.contains("route: routes[1] /bench/** (methods: any)"),
        "{text}"
    );
    assert!(text.contains("requires all of: read"), "{text}");
    assert!(text.contains("token: not valid"), "{text}");
    assert!(text.contains("decision: 401"), "{text}");
}

#[test]
fn explain_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 1);
    let cfg = cfg.to_str().unwrap();
    let cases = [
        ("GET", "/healthz", "decision: allowed"),
        ("GET", "/bench/1", "decision: 401"),
        ("GET", "/nope", "decision: 403"),
        ("GET", "/a/../b", "decision: 400"),
        (
            "GET",
            "/_tokengate/login",
            "decision: answered by tokengate, never forwarded",
        ),
        // The proxy's own verdicts, which explain once got wrong.
        ("GET", "/%5Ftokengate/x", "decision: 404"),
        ("get", "/healthz", "decision: allowed"),
    ];
    for (method, path, want) in cases {
        let out = run(&["explain", "--config", cfg, method, path]);
        assert!(out.status.success());
        assert!(
            stdout(&out).contains(want),
            "{method} {path}: {}",
            stdout(&out)
        );
    }
    // Headers and a body, as the proxy reads them.
    let out = run(&[
        "explain", "--config", cfg, "GET", "/healthz", "-H", "Host: a", "-H", "Host: b",
    ]);
    assert!(
        stdout(&out).contains("decision: 400 bad request: More than one Host header."),
        "{}",
        stdout(&out)
    );
    let out = run(&[
        "explain", "--config", cfg, "GET", "/healthz", "-H", "no colon",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

/// A running `tokengate serve` (or `demo`) and the addresses it bound.
struct Server {
    child: Child,
    /// The proxy's.
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Server {
    /// Spawns `command`, a server on a `write_config` config, and waits until it listens:
    /// the proxy on 127.0.0.1, the admin listener on 127.0.0.2, on the ports the kernel gave.
    fn start(command: &mut Command) -> Server {
        let mut child = command.spawn().expect("tokengate starts");
        let pid = child.id();
        let mut exited = || child.try_wait().unwrap().map(|status| status.to_string());
        let addr = wait_listening("tokengate's proxy", pid, [127, 0, 0, 1], &mut exited);
        let admin = wait_listening(
            "tokengate's admin listener",
            pid,
            [127, 0, 0, 2],
            &mut exited,
        );
        Server { child, addr, admin }
    }

    /// Sends a signal (`-TERM`, `-INT`) and waits (bounded) for the exit code.
    fn signal(&mut self, signal: &str) -> Option<i32> {
        common::signal(self.child.id(), signal);
        let mut code = None;
        eventually_blocking(&format!("tokengate exits after {signal}"), || {
            match self.child.try_wait().unwrap() {
                Some(status) => {
                    code = Some(status.code());
                    true
                }
                None => false,
            }
        });
        code.expect("exited")
    }

    /// Stops the server as its supervisor does: SIGTERM, then exit 0.
    fn stop(&mut self) {
        assert_eq!(self.signal("-TERM"), Some(0), "serve exits 0 after SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// An echo upstream (served by its own runtime) and, in a temporary directory, a
/// `write_config` config for a server in front of it.
struct Setup {
    echo: tokengate::echo::Echo,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    cfg: PathBuf,
}

impl Setup {
    /// `extra`: more top-level config keys.
    fn new(extra: &str) -> Setup {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let echo = start_echo(&runtime);
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), echo.addr.port());
        append_config(&cfg, extra);
        Setup {
            echo,
            _runtime: runtime,
            _dir: dir,
            cfg,
        }
    }

    fn cfg(&self) -> &str {
        self.cfg.to_str().unwrap()
    }

    /// `tokengate serve` on this config, its stderr dropped.
    fn serve_command(&self) -> Command {
        let mut command = bin();
        command
            .args(["serve", "--config", self.cfg()])
            .stderr(Stdio::null());
        command
    }

    /// A token created through the CLI (with the store free): `id|secret`.
    fn token(&self, user: &str, abilities: &str) -> String {
        let out = run(&[
            "token",
            "create",
            "--config",
            self.cfg(),
            "--user",
            user,
            "--name",
            user,
            "--abilities",
            abilities,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).lines().last().unwrap().to_owned()
    }
}

/// A raw HTTP/1.1 GET; returns the status code.
fn get_status(gate: SocketAddr, path: &str, auth: Option<&str>) -> u16 {
    let auth = auth
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    get_with(gate, path, &auth)
}

/// A raw HTTP/1.1 GET with extra header lines (each ending in CRLF); returns the status.
fn get_with(gate: SocketAddr, path: &str, auth: &str) -> u16 {
    use std::io::Write;
    let mut s = TcpStream::connect(gate).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The benchmark harness's sequence (create a token, serve, request), and what a shutdown
/// leaves: the last use of a token written to the store, and no token in the log. (Every
/// served test stops the server with `Server::stop`, which checks the exit code.)
#[test]
fn serve_guards_an_upstream_and_flushes_on_sigterm() {
    let setup = Setup::new("");
    let cfg = setup.cfg();
    let token = setup.token("bench", "read");
    let mut server = Server::start(
        setup
            .serve_command()
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let log = common::drain(server.child.stderr.take().unwrap());
    let gate = server.addr;
    assert_eq!(get_status(gate, "/bench/item", Some(&token)), 200);
    assert_eq!(get_status(gate, "/bench/item", None), 401);
    assert_eq!(get_status(gate, "/healthz", None), 200);

    // while serving without an admin key, the CLI can use neither the store nor the API,
    // and says why
    let out = run(&["token", "list", "--config", cfg]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("held by a running tokengate")
            && stderr(&out).contains("the environment variable TOKENGATE_ADMIN_KEY holds no key"),
        "{}",
        stderr(&out)
    );

    server.stop();
    // last_used_at was flushed at shutdown
    let out = run(&["token", "list", "--config", cfg, "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list[0]["last_used_at"].is_string(), "{list}");
    let log = log.join().unwrap();
    assert!(
        !log.contains(token.split('|').nth(1).unwrap()),
        "no token in the log"
    );
}

#[test]
fn the_demo_serves_its_curl_examples_and_stops_on_ctrl_c() {
    // The demo's admin listener takes any port on 127.0.0.1, so the proxy goes on
    // 127.0.0.2, any port too.
    let mut child = bin()
        .args(["demo", "--listen", "127.0.0.2:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.starts_with("Press Ctrl-C");
        printed.push(line);
        if done {
            break;
        }
    }
    // The demo prints its examples once its proxy listens, with the port it got.
    let gate: std::net::SocketAddr = printed[0]
        .strip_prefix("tokengate demo: proxy on http://")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no proxy address in {:?}", printed[0]));
    assert_eq!(gate.ip(), std::net::Ipv4Addr::new(127, 0, 0, 2));
    assert_ne!(gate.port(), 0);
    let mut server = Server {
        child,
        addr: gate,
        admin: gate, // unused: the demo's admin API is off
    };
    let token_of = |label: &str| {
        printed
            .iter()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {label} in {printed:#?}"))
            .to_string()
    };
    let reader = token_of("Tokens: reader = ");
    let writer = token_of("writer = ");
    assert!(printed
        .iter()
        .any(|l| l.contains("curl -i -H 'Authorization: Bearer")));
    assert_eq!(get_status(gate, "/api/posts/1", Some(&reader)), 200);
    assert_eq!(get_status(gate, "/api/posts/1", None), 401);
    assert_eq!(get_status(gate, "/healthz", None), 200);
    assert_eq!(get_status(gate, "/api/posts/1", Some(&writer)), 403);

    assert_eq!(
        server.signal("-INT"),
        Some(0),
        "the demo stops cleanly on Ctrl-C"
    );
}

#[test]
fn token_import_creates_many_tokens_at_once() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 1);
    let cfg = cfg.to_str().unwrap();
    let mut child = bin()
        .args(["token", "import", "--config", cfg])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..500 {
        writeln!(
            stdin,
            r#"{{"user":"u{i}","name":"t{i}","abilities":["read","nope"]}}"#
        )
        .unwrap();
    }
    writeln!(stdin, r#"{{"user":"x","name":"exp","expires_in":"1h"}}"#).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let tokens: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(tokens.len(), 501);
    assert!(tokens.iter().all(|t| t.contains("|tg_")));
    let out = run(&[
        "explain",
        "--config",
        cfg,
        "GET",
        "/bench/1",
        "--token",
        &tokens[250],
    ]);
    assert!(
        stdout(&out).contains("decision: allowed"),
        "{}",
        stdout(&out)
    );
    let out = run(&["token", "list", "--config", cfg, "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 501);
    assert_eq!(list[0]["abilities"], serde_json::json!(["read"]));
    assert!(list[500]["expires_at"].is_string());

    // a bad line stores nothing
    let mut child = bin()
        .args(["token", "import", "--config", cfg])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, r#"{{"user":"ok","name":"fine"}}"#).unwrap();
    writeln!(stdin, r#"{{"user":"has space","name":"bad"}}"#).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("token 2: a user id must be"),
        "{}",
        stderr(&out)
    );
    let out = run(&["token", "list", "--config", cfg, "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 501);
}

/// Runs the binary with `input` on stdin.
fn run_with_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn users_and_app_minted_sessions_through_the_cli() {
    let setup = Setup::new("");
    let cfg = setup.cfg();

    let out = run_with_stdin(
        &["user", "add", "--config", cfg, "alice", "--password-stdin"],
        "s3cret pass\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["user", "add", "--config", cfg, "bob"]);
    assert!(
        stdout(&out).contains("without a password"),
        "{}",
        stdout(&out)
    );
    let out = run_with_stdin(&["user", "add", "--config", cfg, "alice"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    let out = run_with_stdin(
        &["user", "add", "--config", cfg, "carol", "--password-stdin"],
        "\n",
    );
    assert_eq!(out.status.code(), Some(1), "an empty password is refused");
    let out = run_with_stdin(
        &[
            "user",
            "passwd",
            "--config",
            cfg,
            "alice",
            "--password-stdin",
        ],
        "another one\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run_with_stdin(
        &[
            "user",
            "passwd",
            "--config",
            cfg,
            "nobody",
            "--password-stdin",
        ],
        "x\n",
    );
    assert_eq!(out.status.code(), Some(1));

    let out = run(&["user", "list", "--config", cfg, "--json"]);
    let users: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(users[0]["name"], "alice");
    assert_eq!(users[0]["has_password"], true);
    assert_eq!(users[1]["name"], "bob");
    assert_eq!(users[1]["has_password"], false);
    assert!(!stdout(&out).contains("argon2"), "no hashes listed");

    // The app hands bob, who has no password, a session.
    let out = run(&["session", "create", "--config", cfg, "--user", "bob"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cookie = stdout(&out).lines().last().unwrap().to_owned();
    assert_eq!(cookie.len(), 43);
    let out = run(&["session", "create", "--config", cfg, "--user", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no user nobody"), "{}", stderr(&out));

    // alice owns a token; removing her revokes it.
    let out = run(&[
        "token", "create", "--config", cfg, "--user", "alice", "--name", "n",
    ]);
    let alice_token = stdout(&out).lines().last().unwrap().to_owned();
    let out = run(&["user", "remove", "--config", cfg, "alice"]);
    assert!(
        stdout(&out).contains("removed with 1 token(s) and 0 session(s)"),
        "{}",
        stdout(&out)
    );
    let out = run(&["user", "remove", "--config", cfg, "alice"]);
    assert_eq!(out.status.code(), Some(1));

    let mut server = Server::start(&mut setup.serve_command());
    let gate = server.addr;
    let with_cookie = format!("Cookie: tokengate_session={cookie}\r\n");
    assert_eq!(get_with(gate, "/bench/item", &with_cookie), 200);
    assert_eq!(get_status(gate, "/bench/item", Some(&alice_token)), 401);
    assert_eq!(
        get_with(gate, "/bench/item", "Cookie: tokengate_session=forged\r\n"),
        401
    );
    let seen = setup.echo.last().unwrap();
    assert_eq!(seen.headers["x-auth-method"], "session");
    assert_eq!(seen.headers["x-auth-user"], "bob");
    server.stop();
}

/// Runs a management command with the admin key in its environment.
fn run_keyed(args: &[&str], key: &str) -> Output {
    bin()
        .args(args)
        .env("TOKENGATE_ADMIN_KEY", key)
        .output()
        .expect("tokengate runs")
}

#[test]
fn the_cli_goes_through_the_admin_api_while_a_server_holds_the_store() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let echo = start_echo(&runtime);
    // The same commands, offline and through a server; the answers must match.
    let script = |cfg: &str, key: &str| {
        let mut outputs = Vec::new();
        let mut go = |args: &[&str], stdin: Option<&str>| {
            let mut full = args.to_vec();
            full.extend(["--config", cfg]);
            let out = match stdin {
                Some(input) => {
                    use std::io::Write;
                    let mut child = bin()
                        .args(&full)
                        .env("TOKENGATE_ADMIN_KEY", key)
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap();
                    child
                        .stdin
                        .take()
                        .unwrap()
                        .write_all(input.as_bytes())
                        .unwrap();
                    child.wait_with_output().unwrap()
                }
                None => run_keyed(&full, key),
            };
            outputs.push((full.join(" "), out.status.code(), stdout(&out)));
            out
        };
        go(
            &["user", "add", "alice", "--password-stdin"],
            Some("pw one\n"),
        );
        go(&["user", "add", "alice"], None);
        go(
            &["user", "passwd", "alice", "--password-stdin"],
            Some("pw two\n"),
        );
        let created = go(
            &[
                "token",
                "create",
                "--user",
                "alice",
                "--name",
                "ci",
                "--abilities",
                "read,nope",
            ],
            None,
        );
        let token = stdout(&created).lines().last().unwrap().to_owned();
        go(&["token", "update", "1", "--abilities", "read,write"], None);
        go(&["token", "update", "99", "--abilities", "read"], None);
        go(&["session", "create", "--user", "nobody"], None);
        go(&["user", "list"], None);
        go(&["token", "revoke", "1"], None);
        go(&["token", "revoke", "1"], None);
        go(&["user", "remove", "alice"], None);
        (outputs, token)
    };
    // Lines that differ by nature: the plaintext token, timestamps.
    let normalize =
        |outputs: Vec<(String, Option<i32>, String)>| -> Vec<(String, Option<i32>, String)> {
            outputs
                .into_iter()
                .map(|(cmd, code, out)| {
                    let out: Vec<String> = out
                        .lines()
                        .filter(|l| !l.contains('|') && !l.contains("20"))
                        .map(str::to_owned)
                        .collect();
                    (
                        cmd.split(" --config").next().unwrap().to_owned(),
                        code,
                        out.join("\n"),
                    )
                })
                .collect()
        };

    let offline_dir = tempfile::tempdir().unwrap();
    let offline_cfg = write_config(offline_dir.path(), echo.addr.port());
    let (offline, _) = script(offline_cfg.to_str().unwrap(), "unused");

    let dir = tempfile::tempdir().unwrap();
    let cfg_path = write_config(dir.path(), echo.addr.port());
    let cfg = cfg_path.to_str().unwrap();
    let key = "test-admin-key-0123456789";
    let mut server = Server::start(
        bin()
            .args(["serve", "--config", cfg])
            .env("TOKENGATE_ADMIN_KEY", key)
            .stderr(Stdio::null()),
    );
    name_admin_port(&cfg_path, server.admin.port());
    let gate = server.addr;
    let (online, token) = script(cfg, key);
    assert_eq!(normalize(offline), normalize(online.clone()));
    // The commands really went to the server: its cache saw the token and its revocation.
    assert_eq!(get_status(gate, "/bench/item", Some(&token)), 401);
    let out = run_keyed(&["token", "list", "--config", cfg, "--json"], key);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "[]");
    // A wrong key is refused, and the error says where it went.
    let out = run_keyed(&["token", "list", "--config", cfg], "wrong");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Unauthenticated") && stderr(&out).contains("admin API"),
        "{}",
        stderr(&out)
    );
    // Created through the CLI while serving, usable at once.
    let out = run_keyed(
        &[
            "token", "create", "--config", cfg, "--user", "bob", "--name", "n",
        ],
        key,
    );
    let live = stdout(&out).lines().last().unwrap().to_owned();
    assert_eq!(get_status(gate, "/bench/item", Some(&live)), 200);
    for (cmd, code, _) in &online {
        assert!(code.is_some(), "{cmd}");
    }
    server.stop();
}

/// A raw HTTP/1.1 request on its own connection; returns the whole answer as text.
fn exchange(to: SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn sigterm_lets_in_flight_requests_finish_and_refuses_new_connections() {
    let setup = Setup::new("shutdown_grace_seconds: 20\n");
    let echo = &setup.echo;
    let mut server = Server::start(&mut setup.serve_command());
    let gate = server.addr;

    // A request to a slow upstream (1.5 s) is in flight when SIGTERM arrives.
    let slow = std::thread::spawn(move || {
        exchange(
            gate,
            "GET /healthz?delay_ms=1500 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    });
    // In flight: arrived upstream, not answered (the echo logs a request once answered).
    eventually_blocking("the slow request reached the upstream", || {
        echo.arrived() == 1
    });
    assert!(echo.seen().is_empty(), "answered already");
    common::signal(server.child.id(), "-TERM");
    // The listener closes (new connections are refused) while the slow request, which
    // takes 1.5 s upstream, is still running.
    eventually_blocking("new connections refused after SIGTERM", || {
        TcpStream::connect(gate).is_err()
    });
    assert!(
        !slow.is_finished(),
        "the slow request ended before the listener closed"
    );
    let answer = slow.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn the_access_log_has_one_line_per_request_and_no_secrets() {
    let setup = Setup::new("access_log:\n  enabled: true\n  format: json\n");
    let token = setup.token("42", "read");
    let mut server = Server::start(setup.serve_command().stdout(Stdio::piped()));
    let access_log = common::drain(server.child.stdout.take().unwrap());
    let gate = server.addr;
    assert_eq!(
        get_status(gate, "/bench/item?secret=abc", Some(&token)),
        200
    );
    assert_eq!(get_status(gate, "/bench/item", Some("1|wrong")), 401);
    assert_eq!(get_status(gate, "/w/x", Some(&token)), 403);
    assert_eq!(get_status(gate, "/nope", None), 403);
    assert_eq!(
        get_status(gate, "/%EF%BC%8E%EF%BC%8E/bench/item", Some(&token)),
        400
    );
    server.stop();
    let log = access_log.join().unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 5, "{log}");
    assert_eq!(lines[0]["path"], "/bench/item");
    assert_eq!(lines[0]["route"], "/bench/**");
    assert_eq!(lines[0]["decision"], "allowed");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["auth"], "token");
    assert_eq!(lines[0]["user"], "42");
    assert_eq!(lines[0]["token_id"], 1);
    assert!(lines[0]["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(lines[1]["decision"], "unauthenticated");
    assert_eq!(lines[1]["status"], 401);
    assert_eq!(lines[2]["decision"], "forbidden");
    assert_eq!(lines[3]["decision"], "no_route");
    assert_eq!(lines[3]["route"], "unmatched");
    assert_eq!(lines[3]["reason"], "No route allows this request.");
    assert_eq!(lines[0]["reason"], serde_json::Value::Null);
    // Fullwidth dots, which normalizing upstreams read as `..`: refused, and the log says
    // why.
    assert_eq!(lines[4]["decision"], "bad_request");
    assert_eq!(lines[4]["status"], 400);
    assert_eq!(
        lines[4]["reason"],
        "The request path has a segment that common servers read as a dot segment."
    );
    let secret = token.split('|').nth(1).unwrap();
    assert!(!log.contains(secret), "no token in the access log");
    assert!(
        !log.contains("wrong"),
        "no presented credential in the access log"
    );
    assert!(
        !log.contains("secret=abc"),
        "no query string in the access log"
    );
}

/// `GET /metrics` on the admin port, as text.
fn metrics_text(admin: SocketAddr) -> String {
    exchange(
        admin,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
}

#[test]
fn sighup_and_reload_apply_a_new_config_and_refuse_a_bad_one() {
    let setup = Setup::new("");
    let key = "reload-test-key";
    let token = setup.token("7", "read");
    let mut server = Server::start(setup.serve_command().env("TOKENGATE_ADMIN_KEY", key));
    let (gate, admin) = (server.addr, server.admin);
    let (cfg, cfg_path) = (setup.cfg(), &setup.cfg);
    name_admin_port(cfg_path, admin.port());
    let original = std::fs::read_to_string(cfg_path).unwrap();
    let reloads = |result: &str| {
        let series = format!(r#"tokengate_config_reloads_total{{result="{result}"}}"#);
        common::metric_value(&metrics_text(admin), &series)
    };
    assert_eq!(get_status(gate, "/bench/item", Some(&token)), 200);
    let pid = server.child.id();
    let hup = || common::signal(pid, "-HUP");

    // /bench/** now needs `write`: after SIGHUP the read token is refused.
    std::fs::write(
        cfg_path,
        original.replace(
            "  - path: /bench/**\n    abilities: [read]",
            "  - path: /bench/**\n    abilities: [write]",
        ),
    )
    .unwrap();
    hup();
    eventually_blocking("the new routes apply", || {
        get_status(gate, "/bench/item", Some(&token)) == 403
    });
    assert_eq!(reloads("ok"), Some(2.0), "the start and the SIGHUP");

    // An invalid file changes nothing, and is counted.
    std::fs::write(cfg_path, format!("{original}bogus_key: 1\n")).unwrap();
    hup();
    eventually_blocking("the bad reload is counted", || {
        reloads("error") == Some(1.0)
    });
    assert_eq!(
        reloads("ok"),
        Some(2.0),
        "a bad file is not counted as a reload"
    );
    assert_eq!(
        get_status(gate, "/bench/item", Some(&token)),
        403,
        "old config in force"
    );
    assert_eq!(get_status(gate, "/healthz", None), 200);

    // Through the CLI (admin API): back to `read`, and a new listen address that can only
    // apply after a restart.
    let moved = original.replace("listen: 127.0.0.1:0\n", "listen: 127.0.0.1:1\n");
    assert_ne!(moved, original);
    std::fs::write(cfg_path, moved).unwrap();
    let out = run_keyed(&["reload", "--config", cfg], key);
    assert!(out.status.success(), "{}", stderr(&out));
    // `admin.listen` too: the server started on port 0, the file names the port it got.
    assert_eq!(
        stdout(&out).trim_end(),
        "Config reloaded; these need a restart and keep their old values until then: listen, admin.listen"
    );
    assert_eq!(
        get_status(gate, "/bench/item", Some(&token)),
        200,
        "routes applied, still on the old port"
    );

    // A bad file through the CLI: the CLI validates it first and exits 64, as check-config.
    std::fs::write(cfg_path, "routes: []\n").unwrap();
    let out = run_keyed(&["reload", "--config", cfg], key);
    assert_eq!(
        out.status.code(),
        Some(64),
        "the CLI itself validates the file first"
    );
    server.stop();
}

/// With `ulimit -n` far below the clients it gets, tokengate keeps serving the connections
/// it has, does not spin while accepting fails, and serves new clients once descriptors
/// are free again.
#[test]
fn descriptor_exhaustion_neither_crashes_nor_spins() {
    use std::io::{Read, Write};
    let setup = Setup::new(""); // one worker, as `write_config` sets
    let cfg = setup.cfg();
    let mut server = Server::start(
        Command::new("sh")
            .args([
                "-c",
                &format!(
                    "ulimit -n 128 && exec {} serve --config {cfg}",
                    env!("CARGO_BIN_EXE_tokengate")
                ),
            ])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let gate = server.addr;
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let answered = |stream: &mut TcpStream| -> bool {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        if stream.write_all(request).is_err() {
            return false;
        }
        let mut buf = [0u8; 1024];
        matches!(stream.read(&mut buf), Ok(n) if n > 0 && buf[..n].starts_with(b"HTTP/1.1 200"))
    };
    // A client that came first, with its upstream connection made.
    let mut first = TcpStream::connect(gate).unwrap();
    assert!(answered(&mut first));
    // Many more clients than descriptors: the kernel queues them, tokengate cannot take
    // them all.
    let crowd: Vec<TcpStream> = (0..400)
        .filter_map(|_| TcpStream::connect(gate).ok())
        .collect();
    assert!(crowd.len() > 200, "{} connected", crowd.len());
    // Real time is the point from here: tokengate meets failing accepts for a while, and
    // its CPU over two seconds of that tells whether it spins.
    std::thread::sleep(Duration::from_millis(500));
    // Accepting fails again and again: tokengate waits between tries instead of spinning.
    let pid = server.child.id();
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<u64> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse().unwrap())
            .collect();
        fields[0] + fields[1]
    };
    let before = cpu();
    std::thread::sleep(Duration::from_secs(2));
    let ticks = cpu() - before;
    let hz = 100; // USER_HZ on Linux
    assert!(
        ticks * 1000 / hz < 400,
        "{ticks} ticks of CPU in 2 s while accepts fail: spinning"
    );
    // The client it has is still served.
    assert!(answered(&mut first), "the first client lost its service");
    // Descriptors come free: new clients are served again.
    drop(crowd);
    eventually_blocking("a new client is served once descriptors are free", || {
        TcpStream::connect(gate).is_ok_and(|mut late| answered(&mut late))
    });
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "tokengate exited under descriptor exhaustion"
    );
    server.stop();
}

/// `admin.key_file`: the admin key from a file (a mounted Secret), not the environment; the
/// CLI reads it from the same config; a rotated file takes effect at the next reload.
#[test]
fn the_admin_key_can_come_from_a_file_and_follows_a_reload() {
    let setup = Setup::new("");
    let dir = setup.cfg.parent().unwrap().to_path_buf();
    let key_file = dir.join("admin-key");
    std::fs::write(&key_file, "first-file-key\n").unwrap();
    let yaml = std::fs::read_to_string(&setup.cfg).unwrap();
    std::fs::write(
        &setup.cfg,
        yaml.replace(
            &format!("  listen: {ADMIN_ANY_PORT}\n"),
            &format!(
                "  listen: {ADMIN_ANY_PORT}\n  key_file: {}\n",
                key_file.display()
            ),
        ),
    )
    .unwrap();
    // The environment's key is not the key.
    let mut server = Server::start(
        setup
            .serve_command()
            .env("TOKENGATE_ADMIN_KEY", "environment-key"),
    );
    let admin = server.admin;
    name_admin_port(&setup.cfg, admin.port());
    let users = |key: &str| {
        get_with(
            admin,
            "/admin/users",
            &format!("Authorization: Bearer {key}\r\n"),
        )
    };
    assert_eq!(users("first-file-key"), 200);
    assert_eq!(users("environment-key"), 401);
    // The CLI goes through the admin API with the key from the file.
    let out = bin()
        .args(["user", "add", "--config", setup.cfg(), "alice"])
        .env_remove("TOKENGATE_ADMIN_KEY")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // A rotated Secret: the new key at the next reload, the old one refused.
    std::fs::write(&key_file, "second-file-key").unwrap();
    let pid = server.child.id();
    common::signal(pid, "-HUP");
    eventually_blocking("the new key applies", || users("second-file-key") == 200);
    assert_eq!(users("first-file-key"), 401);
    // A key file of two lines is a config problem (the reload is refused, the key stays);
    // an empty or missing one is no key, as an unset variable: the API is disabled.
    std::fs::write(&key_file, "one\ntwo\n").unwrap();
    let out = run(&["check-config", "--config", setup.cfg()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("admin.key_file:") && stderr(&out).contains("more than one line"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(&key_file).unwrap();
    assert!(run(&["check-config", "--config", setup.cfg()])
        .status
        .success());
    common::signal(pid, "-HUP");
    eventually_blocking("no key: the API is disabled", || {
        users("second-file-key") == 503
    });
    server.stop();
}
