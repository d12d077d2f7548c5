//! The admin API against its OpenAPI description (`docs/admin-openapi.json`), checked by
//! `tests/openapi/check.py` against a real admin listener, plus what the description says
//! about the listener itself: it is never reachable through the proxy port, it answers 503
//! without a key while the health endpoints keep working, and a token created or revoked
//! through it takes effect on the proxy at once.

mod common;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::path::Path;
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

/// How long check.py may run.
const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

/// The env var the config names for the admin key (never set: the key is passed to
/// `admin::run` directly, as `tokengate serve` does after reading the variable).
const KEY_ENV: &str = "TOKENGATE_TEST_ADMIN_KEY";

const CONFIG: &str = r#"
admin:
  key_env: TOKENGATE_TEST_ADMIN_KEY
tokens:
  prefix: "tg_"
abilities: [read, create]
default_abilities: [read]
sessions:
  secure: false
routes:
  - path: /healthz
    auth: none
  - path: /api/posts/{id}
    methods: [GET, HEAD]
    abilities: [read]
  - path: /api/posts
    methods: [POST]
    abilities: [create]
  - path: /app/**
    auth: session
"#;

/// A proxy and an admin listener over one App, in front of an echo upstream.
struct Gate {
    proxy: SocketAddr,
    admin: SocketAddr,
    key: Option<String>,
    _echo: Echo,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Gate {
    async fn start(key: Option<String>) -> Gate {
        let echo = Echo::start(TcpListener::bind("127.0.0.1:0").await.expect("bind echo"));
        let dir = tempfile::tempdir().expect("temp dir");
        let yaml = format!(
            "upstream: http://{}\nstore:\n  path: {}\n{CONFIG}",
            echo.addr,
            dir.path().join("store").display()
        );
        let config = Config::parse(&yaml)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{yaml}"));
        assert_eq!(config.admin.key_env, KEY_ENV);
        let store =
            SledStore::open(config.store.sled_path().expect("a sled store")).expect("open store");
        let app = App::new(config, Arc::new(store), Arc::new(SystemClock));
        // POST /admin/reload re-reads this file.
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, &yaml).expect("write config");
        app.set_config_path(&file);
        app.warm().await.expect("warm");

        let proxy_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let proxy = proxy_listener.local_addr().expect("proxy addr");
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let admin = admin_listener.local_addr().expect("admin addr");

        let (proxy_stop, proxy_stopped) = oneshot::channel::<()>();
        let (admin_stop, admin_stopped) = oneshot::channel::<()>();
        let proxy_task = tokio::spawn(tokengate::accept::run(proxy_listener, app.clone(), async {
            let _ = proxy_stopped.await;
        }));
        let admin_task = tokio::spawn(tokengate::admin::run(
            admin_listener,
            app,
            key.clone(),
            async {
                let _ = admin_stopped.await;
            },
        ));
        Gate {
            proxy,
            admin,
            key,
            _echo: echo,
            stops: vec![proxy_stop, admin_stop],
            tasks: vec![proxy_task, admin_task],
            _dir: dir,
        }
    }

    fn proxy_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    async fn stop(mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for task in self.tasks.drain(..) {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("a listener did not stop within 10 s")
                .expect("a listener task panicked");
        }
    }
}

/// A random admin key: 32 hex digits.
fn random_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}

struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

async fn send(
    method: Method,
    url: &str,
    bearer: Option<&str>,
    body: Option<serde_json::Value>,
) -> Answer {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut builder = Request::builder().method(method).uri(url);
    if let Some(token) = bearer {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let payload = match body {
        Some(value) => {
            builder = builder.header("content-type", "application/json");
            Bytes::from(value.to_string())
        }
        None => Bytes::new(),
    };
    let request = builder.body(Full::new(payload)).expect("request");
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .unwrap_or_else(|_| panic!("{url}: no answer within 30 s"))
        .unwrap_or_else(|e| panic!("request to {url} failed: {e:?}"));
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        body: body.collect().await.expect("response body").to_bytes(),
    }
}

/// Fails (never skips) when the checker cannot run here.
fn require_python_jsonschema() {
    let probe = Command::new("python3")
        .args(["-c", "import jsonschema, referencing"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "python3 cannot import jsonschema (needed by tests/openapi/check.py): run \
             scripts/test.sh, which installs it (or `pip install jsonschema`).\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "cannot run python3 ({e}), needed by tests/openapi/check.py: run scripts/test.sh, \
             which installs what the tests need"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_matches_its_openapi_description() {
    require_python_jsonschema();
    let gate = Gate::start(Some(random_key())).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let key = gate.key.clone().expect("a key");

    let mut child = Command::new("python3")
        .arg(root.join("tests/openapi/check.py"))
        .arg("--base")
        .arg(gate.admin_url(""))
        .arg("--key")
        .arg(&key)
        .arg("--spec")
        .arg(root.join("docs/admin-openapi.json"))
        .current_dir(root)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3 tests/openapi/check.py");
    let stdout = common::drain(child.stdout.take().expect("piped stdout"));
    let stderr = common::drain(child.stderr.take().expect("piped stderr"));

    // Poll rather than block: the servers under test run on this runtime.
    let deadline = Instant::now() + CHECK_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for check.py") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    gate.stop().await;

    match status {
        Some(status) if status.success() => {
            // Keep the summary in the test output (shown with --nocapture).
            println!("{}", stdout.lines().last().unwrap_or_default());
        }
        Some(status) => panic!(
            "tests/openapi/check.py failed ({status}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        ),
        None => panic!(
            "tests/openapi/check.py did not finish within {CHECK_TIMEOUT:?}:\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_not_reachable_through_the_proxy_port() {
    let gate = Gate::start(Some(random_key())).await;
    let key = gate.key.clone().expect("a key");

    // The admin listener answers with the key…
    let admin = send(
        Method::GET,
        &gate.admin_url("/admin/users"),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(admin.status, StatusCode::OK, "{}", admin.text());
    assert!(admin.json()["data"].is_array(), "{}", admin.text());

    // …the proxy port never does: no route there allows /admin/ (403), or the key is no
    // token (401). Either way no user list, and nothing reaches the upstream.
    for path in ["/admin/users", "/admin/openapi.json", "/admin/tokens"] {
        let answer = send(Method::GET, &gate.proxy_url(path), Some(&key), None).await;
        assert!(
            answer.status == StatusCode::FORBIDDEN || answer.status == StatusCode::UNAUTHORIZED,
            "GET {path} on the proxy port: {} {}",
            answer.status,
            answer.text()
        );
        let body = answer.json();
        assert!(
            body.get("data").is_none() && body.get("openapi").is_none(),
            "GET {path} on the proxy port answered like the admin API: {}",
            answer.text()
        );
        if answer.status == StatusCode::FORBIDDEN {
            assert_eq!(
                body,
                serde_json::json!({"message": "No route allows this request."})
            );
        }
    }
    let answer = send(
        Method::POST,
        &gate.proxy_url("/admin/users"),
        Some(&key),
        Some(serde_json::json!({"name": "mallory"})),
    )
    .await;
    assert!(
        answer.status == StatusCode::FORBIDDEN || answer.status == StatusCode::UNAUTHORIZED,
        "POST /admin/users on the proxy port: {} {}",
        answer.status,
        answer.text()
    );
    let user = send(
        Method::GET,
        &gate.admin_url("/admin/users/mallory"),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(user.status, StatusCode::NOT_FOUND, "{}", user.text());
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_the_api_answers_503_and_health_still_works() {
    let gate = Gate::start(None).await;

    for (path, bearer) in [
        ("/admin/users", None),
        ("/admin/users", Some("anything")),
        ("/admin/openapi.json", Some("")),
        ("/admin/tokens", Some("anything")),
    ] {
        let answer = send(Method::GET, &gate.admin_url(path), bearer, None).await;
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "GET {path}: {}",
            answer.text()
        );
        let message = answer.json()["message"]
            .as_str()
            .unwrap_or_else(|| panic!("GET {path}: no message: {}", answer.text()))
            .to_owned();
        assert!(
            message.contains(KEY_ENV),
            "GET {path}: the 503 message should name {KEY_ENV}: {message:?}"
        );
    }
    let answer = send(
        Method::POST,
        &gate.admin_url("/admin/users"),
        Some("anything"),
        Some(serde_json::json!({"name": "alice"})),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.text()
    );

    for path in ["/healthz", "/readyz"] {
        let answer = send(Method::GET, &gate.admin_url(path), None, None).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "GET {path}: {}",
            answer.text()
        );
        assert!(
            answer.json()["status"].is_string(),
            "GET {path}: {}",
            answer.text()
        );
    }
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_created_and_revoked_through_the_api_take_effect_on_the_proxy_at_once() {
    let gate = Gate::start(Some(random_key())).await;
    let key = gate.key.clone().expect("a key");

    let created = send(
        Method::POST,
        &gate.admin_url("/admin/tokens"),
        Some(&key),
        Some(serde_json::json!({"user": "app-user-42", "name": "ci", "abilities": ["read"]})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let created = created.json();
    let plaintext = created["plaintext"].as_str().expect("plaintext").to_owned();
    let id = created["token"]["id"].as_u64().expect("token id");

    // At once: no restart, no wait.
    let allowed = send(
        Method::GET,
        &gate.proxy_url("/api/posts/1"),
        Some(&plaintext),
        None,
    )
    .await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", allowed.text());
    assert_eq!(
        allowed.json()["headers"]["x-auth-user"],
        "app-user-42",
        "{}",
        allowed.text()
    );
    // Its abilities are the ones the API gave it: `read`, not `create`.
    let refused = send(
        Method::POST,
        &gate.proxy_url("/api/posts"),
        Some(&plaintext),
        None,
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text());

    let revoked = send(
        Method::DELETE,
        &gate.admin_url(&format!("/admin/tokens/{id}")),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{}", revoked.text());

    let after = send(
        Method::GET,
        &gate.proxy_url("/api/posts/1"),
        Some(&plaintext),
        None,
    )
    .await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED, "{}", after.text());
    assert_eq!(
        after.json(),
        serde_json::json!({"message": "Unauthenticated."})
    );
    gate.stop().await;
}
