//! The management commands (`token`, `user`, `session`, `reload`). They open the store
//! directly when no server holds it, and go through the running server's admin API when one
//! does (`Manager`).

use super::args::{SessionCommand, TokenCommand, UserCommand};
use super::{load, open, Failure};
use crate::admin::client::AdminClient;
use crate::admin::views::{NewSessionBody, NewTokenBody, NewUser, Page, PasswordBody, TokenUpdate};
use crate::admin::{Management, MAX_LIMIT};
use crate::app::App;
use crate::clock::{rfc3339, Clock, SystemClock};
use crate::error::ApiError;
use crate::store::StoreError;
use crate::token_cache::CreateToken;
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;

pub(super) async fn reload(config_path: &Path) -> Result<(), Failure> {
    let config = load(config_path)?;
    let addr = reachable(config.admin.listen);
    let Some(key) = config.admin.key() else {
        return Err(anyhow::anyhow!(
            "reload goes through the running server's admin API at {addr}: {} must hold its key (or send the server SIGHUP)",
            config.admin.key_source()
        )
        .into());
    };
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
        match App::open(config).await {
            Ok(app) => Ok(Manager::Local(app)),
            Err(StoreError::Locked { path }) => {
                let addr = reachable(admin.listen);
                let Some(key) = admin.key() else {
                    return Err(anyhow::anyhow!(
                        "the store at {path} is held by a running tokengate, and {} holds no key, so its admin API at {addr} cannot be used: put the server's admin key there, or stop the server",
                        admin.key_source()
                    )
                    .into());
                };
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

pub(super) async fn token(command: TokenCommand) -> Result<(), Failure> {
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
            let app = open(load(&config.config)?).await?;
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

pub(super) async fn user(command: UserCommand) -> Result<(), Failure> {
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

pub(super) async fn session(command: SessionCommand) -> Result<(), Failure> {
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
