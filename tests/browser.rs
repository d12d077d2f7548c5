//! The self-service API token page in a real browser: a tokengate on 127.0.0.1:0 in front of
//! the echo upstream, driven by headless Chromium through `e2e/token-page.mjs` (Node and
//! playwright-core). The script logs in, creates a token, uses it against the proxy, changes
//! its abilities, deletes it, and leaves screenshots in `target/e2e-screenshots/`.
//!
//! Needs Node, `e2e/node_modules` (`npm install` in `e2e/`) and Debian's chromium at
//! /usr/bin/chromium; `scripts/test.sh` installs them. Without them this test fails.

mod common;

use common::drain;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokengate::app::App;
use tokengate::clock::SystemClock;
use tokengate::config::Config;
use tokengate::echo::Echo;
use tokengate::store::SledStore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const USER: &str = "alice";
const PASSWORD: &str = "e2e correct horse battery staple";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The script bounds itself to 85 s; this is the backstop.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

const CONFIG: &str = r#"
sessions:
  secure: false
tokens:
  prefix: "tg_"
abilities: [read, create]
default_abilities: [read]
routes:
  - path: /api/posts/**
    methods: [GET, HEAD]
    abilities: [read]
  - path: /api/posts
    methods: [POST]
    abilities: [create]
  - path: /api/posts/**
    methods: [POST]
    abilities: [create]
"#;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fails (never skips) when the browser tooling is missing.
fn require_tools(e2e: &Path) {
    const HOW: &str = "scripts/test.sh installs them (Node and npm, Debian's chromium, and \
                       `npm install` in e2e/)";
    let node = Command::new("node").arg("--version").output();
    match node {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("`node --version` failed ({}); {HOW}", out.status),
        Err(e) => panic!("node is not installed ({e}); {HOW}"),
    }
    let playwright = e2e.join("node_modules/playwright-core/package.json");
    assert!(
        playwright.is_file(),
        "{} is missing; {HOW}",
        playwright.display()
    );
    assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing; {HOW}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_token_page_in_a_real_browser() -> anyhow::Result<()> {
    let root = manifest_dir();
    let e2e = root.join("e2e");
    require_tools(&e2e);

    let echo = Echo::start(TcpListener::bind("127.0.0.1:0").await?);
    let dir = tempfile::tempdir()?;
    let yaml = format!(
        "upstream: http://{}\nstore:\n  path: {}\n{CONFIG}",
        echo.addr,
        dir.path().join("store").display()
    );
    let config = Config::parse(&yaml).map_err(|e| anyhow::anyhow!("config: {e}\n{yaml}"))?;
    let store = SledStore::open(config.store.sled_path().expect("a sled store"))?;
    let app = App::new(config, Arc::new(store), Arc::new(SystemClock));
    app.warm().await?;
    app.users.add(USER, Some(PASSWORD.into())).await?;
    let flusher = app.spawn_flusher(tokengate::app::FLUSH_INTERVAL);

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(tokengate::accept::run(listener, app.clone(), async {
        let _ = stopped.await;
    }));

    let shots = root.join("target/e2e-screenshots");
    if shots.exists() {
        std::fs::remove_dir_all(&shots)?;
    }
    std::fs::create_dir_all(&shots)?;

    let mut child = Command::new("node")
        .arg(e2e.join("token-page.mjs"))
        .args(["--base", &format!("http://{addr}")])
        .args(["--user", USER, "--password", PASSWORD])
        .arg("--shots")
        .arg(&shots)
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));

    // Poll so the proxy keeps serving on this runtime while the script runs.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();

    flusher.abort();
    let _ = stop.send(());
    server.await?;

    let output = format!("--- stdout\n{stdout}--- stderr\n{stderr}---");
    match status {
        None => panic!(
            "e2e/token-page.mjs took more than {} s and was killed\n{output}",
            SCRIPT_TIMEOUT.as_secs()
        ),
        Some(status) if !status.success() => panic!(
            "e2e/token-page.mjs failed ({status}); screenshots in {}\n{output}",
            shots.display()
        ),
        Some(_) => println!("{output}"),
    }
    for shot in [
        "01-empty.png",
        "02-token-shown.png",
        "03-list.png",
        "04-list-375px.png",
    ] {
        let path = shots.join(shot);
        assert!(path.is_file(), "screenshot {} missing", path.display());
    }
    Ok(())
}
