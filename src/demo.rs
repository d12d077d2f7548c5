//! `tokengate demo`: everything needed to see tokengate work, in one process: a built-in
//! echo upstream, a temporary store, a reader and a writer token, a user who can log in
//! with a browser, and curl commands to try.

use crate::app::App;
use crate::config::Config;
use crate::echo::Echo;
use crate::server;
use crate::token_cache::CreateToken;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;

/// The demo user's password (printed: this is a throwaway demo store).
const DEMO_PASSWORD: &str = "demo-password";

pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let echo = Echo::start(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
    let yaml = format!(
        r#"
listen: {listen}
upstream: http://{upstream}
store:
  path: {store}
admin:
  listen: 127.0.0.1:0      # any free port: the demo does not use the admin API
tokens:
  prefix: "tg_"
abilities: [read, create]
default_abilities: [read]
sessions:
  secure: false            # the demo is plain http on loopback
routes:
  - path: /healthz
    auth: none
  - path: /api/posts/**
    methods: [GET, HEAD]
    abilities: [read]
  - path: /api/posts/**
    methods: [POST]
    abilities: [create]
  - path: /app/**
    auth: session
  - path: /**
    auth: any
"#,
        upstream = echo.addr,
        store = dir.path().join("store").display(),
    );
    let config = Config::parse(&yaml).map_err(|e| anyhow::anyhow!("demo config: {e}"))?;
    let app = App::open(config).await?;
    let create = |name: &str, ability: &str| {
        let app = Arc::clone(&app);
        let (name, ability) = (name.to_owned(), ability.to_owned());
        async move {
            app.tokens
                .create(CreateToken {
                    user: "demo-user".into(),
                    name,
                    abilities: Some(vec![ability]),
                    expires_at: None,
                })
                .await
                .map(|c| c.plaintext)
        }
    };
    let reader = create("reader", "read").await?;
    let writer = create("writer", "create").await?;
    app.users
        .add("demo-user", Some(DEMO_PASSWORD.into()))
        .await
        .context("cannot add the demo user")?;
    let server = server::start(app).await?;
    let base = format!("http://{}", server.local_addr());
    println!(
        r#"tokengate demo: proxy on {base} -> echo upstream on http://{upstream} (store in a temporary directory)

Routes: /healthz public; GET /api/posts/** needs 'read'; POST /api/posts/** needs 'create';
        /app/** a browser session only; /** any token or session.
Tokens: reader = {reader} (read)
        writer = {writer} (create)

Try:
  # 200: the upstream echoes the identity headers it got (x-token-abilities: read)
  curl -i -H 'Authorization: Bearer {reader}' {base}/api/posts/1
  # 401: no token
  curl -i {base}/api/posts/1
  # 403: the reader token lacks 'create'
  curl -i -X POST -H 'Authorization: Bearer {reader}' {base}/api/posts
  # 200: the writer token has it
  curl -i -X POST -H 'Authorization: Bearer {writer}' {base}/api/posts
  # 200, public: no identity headers upstream, whatever the client sends
  curl -i -H 'X-Token-Abilities: *' {base}/healthz

Browser: open {base}/app/ and log in as demo-user, password {DEMO_PASSWORD}
  (the upstream then sees x-auth-method: session and x-token-abilities: *).

Press Ctrl-C to stop."#,
        upstream = echo.addr,
    );
    server.run_until(server::shutdown_signal()).await?;
    drop(dir);
    Ok(())
}
