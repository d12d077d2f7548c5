//! The command line: what each command does. The grammar is in `args`, the management
//! commands in `manage`; serving is the library's (`server::run`).

mod args;
mod manage;

pub use args::{
    Cli, Command, ConfigArg, LogFormat, SessionCommand, StoreCommand, TokenCommand, UserCommand,
};

use crate::app::App;
use crate::config::{Config, ConfigError};
use crate::server;
use anyhow::Context;
use http::Method;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// How a command failed, which decides the exit code.
#[derive(Debug)]
pub enum Failure {
    InvalidConfig(ConfigError),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Threads for blocking work on the main runtime (the admin API's store writes, password
/// hashing). A burst of admin requests must not become a burst of threads: 100 concurrent
/// revocations started 150, each with its stack and allocator cache resident until it
/// exited, and RSS crept up over a soak. sled serializes writes anyway.
const MAIN_BLOCKING_THREADS: usize = 8;

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAIN_BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::InvalidConfig(e)) => {
            eprintln!("invalid config:\n{e}");
            ExitCode::from(64)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve(c) => serve(&c.config).await,
        Command::CheckConfig(c) => {
            load(&c.config)?;
            println!("{}: valid", c.config.display());
            Ok(())
        }
        Command::Demo { listen } => Ok(crate::demo::run(listen).await?),
        Command::Token(t) => manage::token(t).await,
        Command::Reload(c) => manage::reload(&c.config).await,
        Command::Migrate(c) => migrate(&c.config).await,
        Command::Store(s) => store(s).await,
        Command::User(u) => manage::user(u).await,
        Command::Session(s) => manage::session(s).await,
        Command::Explain {
            config,
            method,
            path,
            token,
            headers,
            body,
        } => {
            let request = ExplainRequest {
                method: &method,
                target: &path,
                token: token.as_deref(),
                headers: &headers,
                body: body.unwrap_or_default(),
            };
            explain(&config.config, request).await
        }
    }
}

pub(super) fn load(path: &Path) -> Result<Config, Failure> {
    Config::load(path).map_err(Failure::InvalidConfig)
}

pub(super) async fn open(config: Config) -> Result<Arc<App>, Failure> {
    App::open(config)
        .await
        .context("cannot open the store")
        .map_err(Failure::Runtime)
}

async fn serve(config_path: &Path) -> Result<(), Failure> {
    let app = open(load(config_path)?).await?;
    app.set_config_path(config_path);
    server::run(app, server::shutdown_signal())
        .await
        .map_err(|e| Failure::Runtime(e.into()))
}

/// `store export` / `store import`: the store itself, opened directly (a running server
/// must not hold a sled store; database replicas may keep running).
async fn store(command: StoreCommand) -> Result<(), Failure> {
    let (config, tokenable_type) = match &command {
        StoreCommand::Export { config } => (config, None),
        StoreCommand::Import {
            config,
            tokenable_type,
        } => (config, tokenable_type.clone()),
    };
    let config = load(&config.config)?;
    let store = crate::store::open(&config.store).await.map_err(|e| {
        let hint = match e {
            crate::store::StoreError::Locked { .. } => {
                ": stop the server that holds it first (export and import open the store itself)"
            }
            _ => "",
        };
        anyhow::anyhow!("cannot open the store: {e}{hint}")
    })?;
    match command {
        StoreCommand::Export { .. } => {
            let mut out = std::io::BufWriter::new(std::io::stdout());
            let counts = crate::transfer::export(store.as_ref(), &mut out)
                .await
                .context("export failed")?;
            eprintln!(
                "exported {} users, {} tokens, {} sessions",
                counts.users, counts.tokens, counts.sessions
            );
        }
        StoreCommand::Import { .. } => {
            let tokenable_type = tokenable_type.unwrap_or_else(|| match &config.store {
                crate::config::StoreConfig::Sql(sql) => sql.tokenable_type.clone(),
                crate::config::StoreConfig::Sled { .. } => "App\\Models\\User".to_owned(),
            });
            let mut input = std::io::stdin().lock();
            let counts = crate::transfer::import(store.as_ref(), &mut input, &tokenable_type)
                .await
                .context("import failed")?;
            store.flush().await.context("import failed")?;
            let said: Vec<String> = [
                ("users", counts.users),
                ("tokens", counts.tokens),
                ("sessions", counts.sessions),
            ]
            .iter()
            .map(|(kind, n)| format!("{} {kind} ({} already there)", n.added, n.present))
            .collect();
            eprintln!("imported {}", said.join(", "));
        }
    }
    Ok(())
}

/// Creates the database tables a SQL store needs (idempotent); a sled store needs none.
async fn migrate(config_path: &Path) -> Result<(), Failure> {
    let config = load(config_path)?;
    let crate::config::StoreConfig::Sql(sql) = &config.store else {
        println!("store.kind is sled: nothing to migrate.");
        return Ok(());
    };
    let created = crate::store::SqlStore::migrate(sql)
        .await
        .context("cannot migrate the database")?;
    if created.is_empty() {
        println!("The database already has every table tokengate needs.");
    } else {
        println!("Created: {}.", created.join(", "));
    }
    Ok(())
}

/// A request for `explain`, as given on the command line.
struct ExplainRequest<'a> {
    method: &'a str,
    target: &'a str,
    token: Option<&'a str>,
    headers: &'a [String],
    body: String,
}

async fn explain(config_path: &Path, given: ExplainRequest<'_>) -> Result<(), Failure> {
    let config = load(config_path)?;
    let method = Method::from_bytes(given.method.as_bytes())
        .map_err(|_| anyhow::anyhow!("'{}' is not an HTTP method", given.method))?;
    let mut request = http::Request::builder().method(method).uri(given.target);
    for header in given.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("'{header}' is not a header (Name: value)"))?;
        request = request.header(name.trim(), value.trim());
    }
    if let Some(token) = given.token {
        let token = token.strip_prefix("Bearer ").unwrap_or(token);
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(bytes::Bytes::from(given.body))
        .map_err(|e| anyhow::anyhow!("not a request: {e}"))?;
    let needs_store = request.headers().contains_key(http::header::AUTHORIZATION)
        || request.headers().contains_key(http::header::COOKIE);
    let app = if needs_store {
        Some(open(config.clone()).await?)
    } else {
        None
    };
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let explanation = crate::explain::explain(&config, app.as_deref(), request, peer)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    for step in explanation.steps {
        println!("{step}");
    }
    Ok(())
}
