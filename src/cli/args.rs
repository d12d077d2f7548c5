//! The command line's grammar: every command and option, as clap reads them.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

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
    /// Move users, tokens and sessions between stores (sled, PostgreSQL, MySQL/MariaDB).
    #[command(subcommand)]
    Store(StoreCommand),
    /// Make the running server re-read its config file (as SIGHUP does), through its admin
    /// API; prints what needs a restart to apply.
    Reload(ConfigArg),
    /// Create what a database store (store.kind postgres or mysql) needs and lacks:
    /// tokengate's tables and, if absent, Sanctum's tokens table. Safe to run again.
    Migrate(ConfigArg),
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
pub enum StoreCommand {
    /// Write every user, token and session of the store to stdout as JSON lines (token
    /// hashes, never plaintexts). A sled store must not be held by a running server.
    Export {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Read `store export`'s lines (or rows of Sanctum's personal_access_tokens as JSON)
    /// from stdin into the store: token ids and hashes are kept, so issued tokens keep
    /// working. Records already there, the same, are skipped, so it can be run again.
    Import {
        #[command(flatten)]
        config: ConfigArg,
        /// The model a Sanctum row must belong to (default: store.tokenable_type, or
        /// App\Models\User for sled); rows of another are refused.
        #[arg(long)]
        tokenable_type: Option<String>,
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
