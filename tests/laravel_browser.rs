//! tokengate in front of an unchanged Laravel app, in a real browser: a small app of
//! Laravel 8.83's own classes (`tests/laravel/spa/index.php`: Router, EncryptCookies,
//! StartSession, VerifyCsrfToken, SessionGuard, DatabaseSessionHandler) served by `php -S`
//! with its sessions in a real PostgreSQL, behind a real `tokengate serve` that accepts the
//! app's session cookie (`sessions.laravel`), driven by headless Chromium through
//! `e2e/laravel-spa.mjs` (Node and playwright-core).
//!
//! The flow: a browser without a session is sent to the app's login page by tokengate; it
//! logs in through Laravel's form; the dashboard's script POSTs to `/api/notes` as Axios
//! does (Laravel's `XSRF-TOKEN` cookie, decoded, in `X-XSRF-TOKEN`), passing tokengate's
//! CSRF rules and Laravel's, and the app gets `X-Auth-User: 42`, `X-Auth-Method: session`;
//! the `X-XSRF-TOKEN` path alone (no `Sec-Fetch-Site`, no `Origin`) passes with the token and
//! gets tokengate's 419 without it or with a tampered one; Laravel still refuses a request
//! with no token that tokengate let through by its `Origin`; after the logout the browser is
//! sent to the login page again and the old cookie is refused. Screenshots are left in
//! `target/e2e-screenshots/laravel-*.png`.
//!
//! Needs PHP with Debian's php-laravel-framework and php-pgsql, PostgreSQL, Node,
//! `e2e/node_modules` (`npm install` in `e2e/`) and Debian's chromium at /usr/bin/chromium;
//! `scripts/test.sh` installs them. Without them this test fails, it never skips.

mod common;

use common::db::{Database, Postgres};
use common::laravel::{laravel_key, laravel_session};
use common::process::{bin, Server, URL_ENV};
use common::{drain, listening};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN_KEY: &str = "laravel-browser-admin-key";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The script bounds itself to 50 s; this is the backstop.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `php -S` may take to listen.
const PHP_START: Duration = Duration::from_secs(15);
/// How many ports are tried when the one found free is taken before `php -S` binds it.
const PHP_ATTEMPTS: usize = 10;
const SCREENSHOTS: [&str; 4] = [
    "laravel-01-login.png",
    "laravel-02-dashboard.png",
    "laravel-03-note.png",
    "laravel-04-logged-out.png",
];

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fails (never skips) when a tool is missing.
fn require_tools(root: &Path) {
    const HOW: &str = "scripts/test.sh installs them (php-cli, php-pgsql, Debian's \
                       php-laravel-framework, Node and npm, Debian's chromium, and `npm install` \
                       in e2e/)";
    for (tool, args) in [("php", &["--version"][..]), ("node", &["--version"])] {
        match Command::new(tool).args(args).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!("`{tool} {}` failed ({}); {HOW}", args.join(" "), out.status),
            Err(e) => panic!("{tool} is not installed ({e}); {HOW}"),
        }
    }
    let modules = Command::new("php").arg("-m").output().expect("php -m");
    let modules = String::from_utf8_lossy(&modules.stdout);
    assert!(
        modules.lines().any(|m| m.trim() == "pdo_pgsql"),
        "PHP has no pdo_pgsql; {HOW}"
    );
    for path in [
        PathBuf::from("/usr/share/php/Illuminate/autoload.php"),
        root.join("e2e/node_modules/playwright-core/package.json"),
        PathBuf::from(CHROMIUM),
    ] {
        assert!(path.exists(), "{} is missing; {HOW}", path.display());
    }
}

/// `php -S 127.0.0.1:PORT tests/laravel/spa/index.php` with the app's settings; killed on
/// drop.
struct PhpServer {
    child: Child,
    addr: SocketAddr,
    /// Its output (a line per request, and the app's errors).
    log: tempfile::NamedTempFile,
}

impl PhpServer {
    /// Starts the app on a port found free, trying another when `php -S` finds it taken.
    fn start(root: &Path, env: &[(&str, &str)]) -> PhpServer {
        let router = root.join("tests/laravel/spa/index.php");
        for _ in 0..PHP_ATTEMPTS {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let log = tempfile::NamedTempFile::new().unwrap();
            // Only the settings given: none of the Laravel .env names from the test's own
            // environment.
            let mut child = Command::new("php")
                .arg("-S")
                .arg(addr.to_string())
                .arg(&router)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .envs(env.iter().copied())
                .current_dir(root)
                .stdin(Stdio::null())
                .stdout(log.reopen().unwrap())
                .stderr(log.reopen().unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run php -S ({e})"));
            let started = Instant::now();
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    let said = std::fs::read_to_string(log.path()).unwrap_or_default();
                    if said.contains("Address already in use") {
                        break;
                    }
                    panic!("php -S {addr} exited ({status}) before listening:\n{said}");
                }
                if listening(child.id()).contains(&addr) {
                    return PhpServer { child, addr, log };
                }
                if started.elapsed() > PHP_START {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "php -S {addr} did not listen within {PHP_START:?}:\n{}",
                        std::fs::read_to_string(log.path()).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("php -S found each of {PHP_ATTEMPTS} free ports taken");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for PhpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tokengate in front of the app: Laravel's session cookie is a session; the login page is
/// public, the dashboard and the API need a session, the rest any credential.
fn write_config(dir: &Path, upstream: SocketAddr) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:0\nworkers: 1\nupstream: http://{upstream}\n\
             store:\n  kind: postgres\n  url_env: {URL_ENV}\n  sync_interval_ms: 500\n\
             admin:\n  listen: 127.0.0.2:0\n  key_env: TOKENGATE_ADMIN_KEY\n\
             sessions:\n  laravel:\n    app_key_env: APP_KEY\n    cookie: laravel_session\n\
             \x20   lifetime_minutes: 120\n    login_url: /login\n\
             routes:\n\
             \x20 - path: /login\n    auth: none\n\
             \x20 - path: /api/**\n    auth: session\n\
             \x20 - path: /dashboard\n    auth: session\n\
             \x20 - path: /**\n    auth: any\n"
        ),
    )
    .unwrap();
    path
}

/// Runs `node e2e/laravel-spa.mjs BASE --shots DIR` to its end (killed past
/// `SCRIPT_TIMEOUT`): its exit status (`None`: killed) and its output.
fn run_script(root: &Path, base: &str, shots: &Path) -> (Option<std::process::ExitStatus>, String) {
    let mut child = Command::new("node")
        .arg(root.join("e2e/laravel-spa.mjs"))
        .arg(base)
        .arg("--shots")
        .arg(shots)
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = format!(
        "--- stdout\n{}--- stderr\n{}---",
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default()
    );
    (status, output)
}

#[test]
fn laravel_spa_in_a_real_browser() {
    let root = manifest_dir();
    require_tools(&root);

    let db = Postgres::start();
    let url = db.url();
    let key = laravel_key("AES-256-CBC");
    let env = [("APP_KEY", key.as_str()), ("DB_URL", url.as_str())];
    // The app's sessions table, as `php artisan session:table` makes it.
    laravel_session(&env, &["migrate"]);
    let php = PhpServer::start(&root, &env);

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), php.addr);
    let migrated = bin(&url)
        .args(["migrate", "--config", cfg.to_str().unwrap()])
        .env("APP_KEY", &key)
        .output()
        .unwrap();
    assert!(migrated.status.success(), "tokengate migrate: {migrated:?}");
    let server = Server::start_with(&url, &cfg, ADMIN_KEY, &[("APP_KEY", &key)]);

    let shots = root.join("target/e2e-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    for entry in std::fs::read_dir(&shots).unwrap() {
        let path = entry.unwrap().path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("laravel-") && name.ends_with(".png") {
            std::fs::remove_file(&path).unwrap();
        }
    }

    let started = Instant::now();
    let (status, output) = run_script(&root, &format!("http://{}", server.addr), &shots);
    let took = started.elapsed();
    match status {
        None => panic!(
            "e2e/laravel-spa.mjs took more than {} s and was killed\n{output}\n--- php -S\n{}",
            SCRIPT_TIMEOUT.as_secs(),
            php.log()
        ),
        Some(status) if !status.success() => panic!(
            "e2e/laravel-spa.mjs failed ({status}); screenshots in {}\n{output}\n--- php -S\n{}",
            shots.display(),
            php.log()
        ),
        Some(_) => println!("{output}\nthe browser flow took {took:?}"),
    }
    for shot in SCREENSHOTS {
        let path = shots.join(shot);
        assert!(path.is_file(), "screenshot {} missing", path.display());
    }
    drop(server);
}
