//! The command line: clap definitions and what each command does. The management commands
//! open the store directly when no server holds it, and go through the running server's
//! admin API when one does (`Manager`).

use crate::admin::views::{NewSessionBody, NewTokenBody, NewUser, Page, PasswordBody, TokenUpdate};
use crate::admin::{self, client::AdminClient};
use crate::admin::{Management, MAX_LIMIT};
use crate::app::{App, FLUSH_INTERVAL};
use crate::clock::{rfc3339, Clock, SystemClock};
use crate::config::{Config, ConfigError};
use crate::error::ApiError;
use crate::server;
use crate::store::StoreError;
use crate::tokens::CreateToken;
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use http::Method;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(
    name = "tokengate",
    version,
    about = "A reverse-proxy authentication sidecar: Sanctum-style API tokens in front of any web app"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The YAML config file.
    #[arg(long, env = "TOKENGATE_CONFIG")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve(ConfigArg),
    /// Validate a config file: print every problem; exit 0, or 64 if invalid.
    CheckConfig(ConfigArg),
    /// A self-contained demo: built-in echo upstream, temporary store, two tokens.
    Demo {
        /// Where the demo proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Manage personal access tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage users (who log in with a password, or are given sessions by the app).
    #[command(subcommand)]
    User(UserCommand),
    /// Manage cookie sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Make the running server re-read its config file (as SIGHUP does), through its admin
    /// API; prints what needs a restart to apply.
    Reload(ConfigArg),
    /// Which route a request matches, what it requires, and the decision (nothing is sent).
    Explain {
        #[command(flatten)]
        config: ConfigArg,
        /// HTTP method, e.g. GET.
        method: String,
        /// Request path, e.g. /api/posts/1.
        path: String,
        /// A token to decide for (as sent after `Bearer `).
        #[arg(long)]
        token: Option<String>,
        /// A request header, `Name: value` (repeat for more).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// The request body (read for a `_method` field, as the proxy reads it).
        #[arg(long)]
        body: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; its plaintext is the last line of output, shown only once.
    Create {
        #[command(flatten)]
        config: ConfigArg,
        /// The owner: the app's user id.
        #[arg(long)]
        user: String,
        #[arg(long)]
        name: String,
        /// Comma-separated abilities (default: `default_abilities`); undeclared ones are dropped.
        #[arg(long, value_delimiter = ',')]
        abilities: Option<Vec<String>>,
        /// Lifetime, e.g. 30d or 12h.
        #[arg(long)]
        expires_in: Option<humantime::Duration>,
    },
    /// Create many tokens from JSON lines on stdin ({"user","name","abilities"?,"expires_in"?}),
    /// with one durable write; prints each new plaintext token on its own line.
    Import {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List tokens (never their secrets or hashes).
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Replace a token's abilities.
    Update {
        #[command(flatten)]
        config: ConfigArg,
        id: u64,
        #[arg(long, value_delimiter = ',', required = true)]
        abilities: Vec<String>,
    },
    /// Revoke (delete) a token.
    Revoke {
        #[command(flatten)]
        config: ConfigArg,
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user; without --password-stdin they cannot use the built-in login, but can own
    /// tokens and be given sessions by the app.
    Add {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a user's password, read from the first line of stdin.
    Passwd {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// List users (never their password hashes).
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Remove a user, revoking every token and session they have.
    Remove {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Start a session for a user the app has logged in itself; prints the cookie value as
    /// the last line (set it as the session cookie, see `sessions.cookie`).
    Create {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        user: String,
    },
}

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
        Command::Token(t) => token(t).await,
        Command::Reload(c) => reload(&c.config).await,
        Command::User(u) => user(u).await,
        Command::Session(s) => session(s).await,
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

fn load(path: &Path) -> Result<Config, Failure> {
    Config::load(path).map_err(Failure::InvalidConfig)
}

fn open(config: Config) -> Result<Arc<App>, Failure> {
    App::open(config)
        .context("cannot open the store")
        .map_err(Failure::Runtime)
}

async fn serve(config_path: &Path) -> Result<(), Failure> {
    let app = open(load(config_path)?)?;
    app.set_config_path(config_path);
    tracing::info!(
        listen = %app.config().listen,
        upstream = %app.config().upstream,
        routes = app.config().routes.routes().len(),
        workers = app.config().workers,
        "tokengate serving"
    );
    serve_until_shutdown(app).await
}

/// Serves until Ctrl-C/SIGTERM, then flushes batched writes and the store.
pub(crate) async fn serve_until_shutdown(app: Arc<App>) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    let (cached, sessions) = app
        .warm()
        .await
        .context("cannot load tokens and sessions")?;
    tracing::info!(
        tokens = cached,
        sessions,
        authoritative = app.tokens.is_complete(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "token cache loaded"
    );
    let admin_listener = tokio::net::TcpListener::bind(app.config().admin.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on admin.listen {}",
                app.config().admin.listen
            )
        })?;
    let key = std::env::var(&app.config().admin.key_env)
        .ok()
        .filter(|k| !k.is_empty());
    match (&key, admin_listener.local_addr()) {
        (Some(_), Ok(addr)) => tracing::info!(%addr, "admin listener (API enabled)"),
        (None, Ok(addr)) => tracing::warn!(
            %addr,
            "admin listener: health checks only; the admin API is disabled until {} is set",
            app.config().admin.key_env
        ),
        (_, Err(_)) => {}
    }
    let admin = tokio::spawn(admin::run(
        admin_listener,
        Arc::clone(&app),
        key,
        std::future::pending(),
    ));
    let flusher = app.spawn_flusher(FLUSH_INTERVAL);
    let reloader = tokio::spawn(reload_on_sighup(Arc::clone(&app)));
    let served = server::serve(
        Arc::clone(&app),
        app.config().workers,
        server::shutdown_signal(),
    )
    .await;
    flusher.abort();
    admin.abort();
    reloader.abort();
    app.flush().await.context("final flush of the store")?;
    served.context("serving failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// Re-reads the config file on every SIGHUP.
async fn reload_on_sighup(app: Arc<App>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload through the admin API instead");
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config");
            app.reload_from_file();
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await;
}

async fn reload(config_path: &Path) -> Result<(), Failure> {
    let config = load(config_path)?;
    let addr = reachable(config.admin.listen);
    let key = std::env::var(&config.admin.key_env).unwrap_or_default();
    if key.is_empty() {
        return Err(anyhow::anyhow!(
            "reload goes through the running server's admin API at {addr}: set {} to its key (or send the server SIGHUP)",
            config.admin.key_env
        )
        .into());
    }
    let answer = AdminClient::new(addr, &key)
        .reload()
        .await
        .map_err(|e| anyhow::anyhow!("reload through the admin API at {addr} failed: {e}"))?;
    let restart: Vec<String> = answer["restart_required"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if restart.is_empty() {
        println!("Config reloaded.");
    } else {
        println!(
            "Config reloaded; these need a restart and keep their old values until then: {}",
            restart.join(", ")
        );
    }
    Ok(())
}

/// Where the management commands go: the store itself when no server holds it, else the
/// running server's admin API (address from the config, key from its env var).
enum Manager {
    Local(Arc<App>),
    Remote(Box<AdminClient>, String),
}

impl Manager {
    async fn connect(config_path: &Path) -> Result<Manager, Failure> {
        let config = load(config_path)?;
        let admin = config.admin.clone();
        match App::open(config) {
            Ok(app) => Ok(Manager::Local(app)),
            Err(StoreError::Locked { path }) => {
                let addr = reachable(admin.listen);
                let key = std::env::var(&admin.key_env).unwrap_or_default();
                if key.is_empty() {
                    return Err(anyhow::anyhow!(
                        "the store at {path} is held by a running tokengate, and {} is not set, so its admin API at {addr} cannot be used: set {} to the server's admin key, or stop the server",
                        admin.key_env,
                        admin.key_env
                    )
                    .into());
                }
                Ok(Manager::Remote(
                    Box::new(AdminClient::new(addr, &key)),
                    format!("the store at {path} is held by a running tokengate, and its admin API at {addr}"),
                ))
            }
            Err(e) => Err(anyhow::Error::new(e)
                .context("cannot open the store")
                .into()),
        }
    }

    fn api(&self) -> &dyn Management {
        match self {
            Manager::Local(app) => app.as_ref(),
            Manager::Remote(client, _) => client.as_ref(),
        }
    }

    /// An API error, with where the call went when it went to a server.
    fn fail(&self, what: &str, e: ApiError) -> Failure {
        match self {
            Manager::Local(_) => anyhow::anyhow!("{what}: {e}").into(),
            Manager::Remote(_, via) => anyhow::anyhow!("{what}: {e} ({via} answered)").into(),
        }
    }
}

/// Every item of a paginated listing: `page(after)` asked page after page until the last.
async fn every_page<T, K, F, Fut>(mut page: F) -> Result<Vec<T>, ApiError>
where
    F: FnMut(Option<K>) -> Fut,
    Fut: std::future::Future<Output = Result<Page<T, K>, ApiError>>,
{
    let mut items = Vec::new();
    let mut after = None;
    loop {
        let next = page(after).await?;
        items.extend(next.data);
        match next.next {
            Some(key) => after = Some(key),
            None => return Ok(items),
        }
    }
}

/// An address a client can connect to: a wildcard listen address means this host.
fn reachable(listen: std::net::SocketAddr) -> std::net::SocketAddr {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

async fn token(command: TokenCommand) -> Result<(), Failure> {
    match command {
        TokenCommand::Create {
            config,
            user,
            name,
            abilities,
            expires_in,
        } => {
            let manager = Manager::connect(&config.config).await?;
            let expires_at = expires_in.map(|d| {
                let at = SystemClock.now().saturating_add(d.as_secs() as i64);
                rfc3339(Some(at))
            });
            let created = manager
                .api()
                .create_token(NewTokenBody {
                    user,
                    name,
                    abilities,
                    expires_at,
                })
                .await
                .map_err(|e| manager.fail("cannot create the token", e))?;
            if !created.dropped_abilities.is_empty() {
                eprintln!(
                    "warning: dropped abilities not declared in the config: {}",
                    created.dropped_abilities.join(", ")
                );
            }
            let t = &created.token;
            println!(
                "Created token {} '{}' for user {} with abilities [{}], expires {}.",
                t.id,
                t.name,
                t.user,
                t.abilities.join(", "),
                t.expires_at.as_deref().unwrap_or("never")
            );
            println!("Copy it now: it will not be shown again.");
            println!("{}", created.plaintext);
            Ok(())
        }
        TokenCommand::Import { config } => {
            let app = open(load(&config.config)?)?;
            let now = app.clock.now();
            let mut requests = Vec::new();
            for (n, line) in std::io::stdin().lines().enumerate() {
                let line = line.context("cannot read stdin")?;
                if line.trim().is_empty() {
                    continue;
                }
                let entry: ImportLine = serde_json::from_str(&line)
                    .with_context(|| format!("line {}: not a token entry", n + 1))?;
                requests.push(CreateToken {
                    user: entry.user,
                    name: entry.name,
                    abilities: entry.abilities,
                    expires_at: entry
                        .expires_in
                        .map(|d| now.saturating_add(d.as_secs() as i64)),
                });
            }
            let created = app.tokens.import(requests).await.context("import failed")?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for c in &created {
                std::io::Write::write_all(&mut out, c.plaintext.as_bytes()).context("stdout")?;
                std::io::Write::write_all(&mut out, b"\n").context("stdout")?;
            }
            std::io::Write::flush(&mut out).context("stdout")?;
            eprintln!("imported {} tokens", created.len());
            Ok(())
        }
        TokenCommand::List { config, user, json } => {
            let manager = Manager::connect(&config.config).await?;
            let tokens =
                every_page(|after| manager.api().list_tokens(user.clone(), after, MAX_LIMIT))
                    .await
                    .map_err(|e| manager.fail("cannot list tokens", e))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&tokens).unwrap_or_default()
                );
            } else {
                println!(
                    "{:<6} {:<16} {:<20} {:<24} {:<20} {:<20} LAST USED",
                    "ID", "USER", "NAME", "ABILITIES", "CREATED", "EXPIRES"
                );
                for t in &tokens {
                    println!(
                        "{:<6} {:<16} {:<20} {:<24} {:<20} {:<20} {}",
                        t.id,
                        t.user,
                        t.name,
                        t.abilities.join(","),
                        t.created_at,
                        t.expires_at.as_deref().unwrap_or("never"),
                        t.last_used_at.as_deref().unwrap_or("never")
                    );
                }
            }
            Ok(())
        }
        TokenCommand::Update {
            config,
            id,
            abilities,
        } => {
            let manager = Manager::connect(&config.config).await?;
            let updated = manager
                .api()
                .update_token(id, TokenUpdate { abilities })
                .await
                .map_err(|e| manager.fail("cannot update the token", e))?;
            if !updated.dropped_abilities.is_empty() {
                eprintln!(
                    "warning: dropped abilities not declared in the config: {}",
                    updated.dropped_abilities.join(", ")
                );
            }
            println!(
                "Token {} now has abilities [{}].",
                updated.token.id,
                updated.token.abilities.join(", ")
            );
            Ok(())
        }
        TokenCommand::Revoke { config, id } => {
            let manager = Manager::connect(&config.config).await?;
            manager
                .api()
                .revoke_token(id)
                .await
                .map_err(|e| manager.fail("cannot revoke the token", e))?;
            println!("Token {id} revoked.");
            Ok(())
        }
    }
}

async fn user(command: UserCommand) -> Result<(), Failure> {
    match command {
        UserCommand::Add {
            config,
            name,
            password_stdin,
        } => {
            let password = password_stdin.then(read_password).transpose()?;
            let manager = Manager::connect(&config.config).await?;
            let user = manager
                .api()
                .create_user(NewUser { name, password })
                .await
                .map_err(|e| manager.fail("cannot add the user", e))?;
            if user.has_password {
                println!("User {} added.", user.name);
            } else {
                println!("User {} added without a password (no built-in login; the app can give them sessions).", user.name);
            }
            Ok(())
        }
        UserCommand::Passwd { config, name, .. } => {
            let password = read_password()?;
            let manager = Manager::connect(&config.config).await?;
            manager
                .api()
                .set_password(
                    &name,
                    PasswordBody {
                        password: Some(password),
                    },
                )
                .await
                .map_err(|e| manager.fail("cannot set the password", e))?;
            println!("Password of {name} changed.");
            Ok(())
        }
        UserCommand::List { config, json } => {
            let manager = Manager::connect(&config.config).await?;
            let users = every_page(|after| manager.api().list_users(after, MAX_LIMIT))
                .await
                .map_err(|e| manager.fail("cannot list users", e))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&users).unwrap_or_default()
                );
            } else {
                println!("{:<32} {:<9} CREATED", "NAME", "PASSWORD");
                for u in &users {
                    let password = if u.has_password { "yes" } else { "no" };
                    println!("{:<32} {:<9} {}", u.name, password, u.created_at);
                }
            }
            Ok(())
        }
        UserCommand::Remove { config, name } => {
            let manager = Manager::connect(&config.config).await?;
            let removed = manager
                .api()
                .delete_user(&name)
                .await
                .map_err(|e| manager.fail("cannot remove the user", e))?;
            println!(
                "User {name} removed with {} token(s) and {} session(s).",
                removed.removed_tokens, removed.removed_sessions
            );
            Ok(())
        }
    }
}

async fn session(command: SessionCommand) -> Result<(), Failure> {
    match command {
        SessionCommand::Create { config, user } => {
            let manager = Manager::connect(&config.config).await?;
            let created = manager
                .api()
                .create_session(NewSessionBody { user: user.clone() })
                .await
                .map_err(|e| manager.fail("cannot create the session", e))?;
            println!(
                "Session for {user} until {}; set this as the {} cookie:",
                created.session.expires_at, created.cookie.name
            );
            println!("{}", created.cookie.value);
            Ok(())
        }
    }
}

/// The first line of stdin, without its line ending.
fn read_password() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        return Err(anyhow::anyhow!("the password read from stdin is empty").into());
    }
    Ok(password)
}

/// One line of `token import`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportLine {
    user: String,
    name: String,
    abilities: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde_opt")]
    expires_in: Option<std::time::Duration>,
}

/// `expires_in` as a humantime string ("30d").
mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<std::time::Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
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
        Some(open(config.clone())?)
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
