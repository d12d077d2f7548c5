//! Real database servers for the tests: a PostgreSQL and a MariaDB started by the test on
//! loopback, each in its own temporary directory, stopped and removed on drop; and the PHP
//! side (Laravel's schema builder and Sanctum's token code, `tests/laravel/sanctum.php`).
//!
//! Both servers run as an unprivileged system user (`tokengate-test`, created once if
//! missing): `initdb` and `postgres` refuse root, and MariaDB runs as the same user rather
//! than with `--user=root` so that neither server can write outside its directory (a server
//! running as root would, through `SELECT … INTO OUTFILE` or `COPY … TO`).
//!
//! Neither server can bind port 0 and report the port it got, and a port found free by
//! binding and dropping a socket may be taken again before the server binds it; so the
//! harness picks a port outside Linux's ephemeral range (where the tests' own client sockets
//! land), starts the server, and if the server exits saying the address is in use, tries
//! another port (a bounded number of times). A server is ready when a real connection
//! succeeds: the admin client over the Unix socket, then the app's role over TCP with its
//! password. A server that does not start fails the test with its log: never a skip.

use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The unprivileged user the servers run as.
pub const SERVER_USER: &str = "tokengate-test";
/// The database and role (user) tokengate connects as, on both servers.
pub const APP_DB: &str = "tokengate";
pub const APP_USER: &str = "tokengate";

/// How long a server may take to start or stop (generous: the machine runs other tests).
const DEADLINE: Duration = Duration::from_secs(60);
/// How many ports are tried when the chosen one is taken.
const PORT_ATTEMPTS: usize = 10;
/// Ports are chosen below Linux's default ephemeral range (32768–60999), so that client
/// sockets of other tests do not hold them.
const PORTS: std::ops::Range<u16> = 20_000..32_768;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The uid and gid of `SERVER_USER`, created (once per machine) if missing.
fn server_account() -> (u32, u32) {
    static ACCOUNT: OnceLock<(u32, u32)> = OnceLock::new();
    *ACCOUNT.get_or_init(|| {
        if let Some(account) = lookup_user() {
            return account;
        }
        let added = Command::new("useradd")
            .args(["--system", "--no-create-home", "--home-dir", "/nonexistent"])
            .args(["--shell", "/usr/sbin/nologin", SERVER_USER])
            .output();
        // Another test binary may have added it meanwhile (useradd then fails): the lookup
        // decides.
        lookup_user().unwrap_or_else(|| {
            panic!("no user {SERVER_USER}, and useradd (needs root) failed: {added:?}")
        })
    })
}

/// `SERVER_USER`'s uid and gid, from /etc/passwd.
fn lookup_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd
        .lines()
        .find(|line| line.split(':').next() == Some(SERVER_USER))?;
    let mut fields = line.split(':').skip(2);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// `program` run as `SERVER_USER` (no supplementary groups: std drops them with setuid).
fn as_server_user(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let (uid, gid) = server_account();
    let mut command = Command::new(program);
    command.uid(uid).gid(gid).env_remove("HOME");
    command
}

/// A random password of letters and digits (safe in URLs and SQL literals).
fn password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 24)
}

/// Runs a one-shot command to completion; panics with its output if it fails.
fn run(what: &str, command: &mut Command) -> Output {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The last part of a log, for failure messages.
fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(6000);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// What kind of server a [`Database`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Mariadb,
}

/// What the two servers have in common, so one test can run against both.
pub trait Database {
    fn kind(&self) -> Kind;
    /// The URL tokengate (and Laravel) connect with: the app role, over TCP on loopback.
    fn url(&self) -> String;
    fn port(&self) -> u16;
    /// Runs SQL as the server's superuser in the app database, over the Unix socket; the
    /// rows, one a line, fields separated by tabs. Panics if the SQL fails.
    fn sql(&self, sql: &str) -> String;
    /// Stops the server cleanly (its data and port are kept for `restart`).
    fn stop(&mut self);
    /// Starts a stopped server again, on the same data directory and port.
    fn restart(&mut self);
    /// How long the last start took, from the first command to the first connection
    /// (data directory creation included on the first start).
    fn startup_time(&self) -> Duration;
    /// Everything the server has logged.
    fn log(&self) -> String;
}

/// A server process and its directory: what both servers share.
struct Server {
    name: &'static str,
    dir: tempfile::TempDir,
    log: PathBuf,
    port: u16,
    child: Option<Child>,
    /// The signal that shuts the server down cleanly.
    stop_signal: &'static str,
    startup: Duration,
}

/// Why a launch did not come up.
enum Failed {
    PortInUse,
    Other(String),
}

impl Server {
    fn new(name: &'static str, stop_signal: &'static str) -> Server {
        let dir = tempfile::Builder::new()
            .prefix(&format!("tokengate-{name}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("{name}: temp dir: {e}"));
        let (uid, gid) = server_account();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("{name}: chown {}: {e}", dir.path().display()));
        let log = dir.path().join("server.log");
        Server {
            name,
            dir,
            log,
            port: 0,
            child: None,
            stop_signal,
            startup: Duration::ZERO,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts the server on a port of `PORTS`, trying others while the chosen one is taken.
    fn start_on_some_port(
        &mut self,
        launch: impl Fn(u16, File) -> Command,
        ready: impl Fn(u16) -> bool,
    ) {
        for _ in 0..PORT_ATTEMPTS {
            let port = rand::random_range(PORTS);
            match self.launch(port, &launch, &ready) {
                Ok(()) => return,
                Err(Failed::PortInUse) => continue,
                Err(Failed::Other(why)) => panic!("{why}"),
            }
        }
        panic!(
            "{}: every one of {PORT_ATTEMPTS} ports tried was in use; its log:\n{}",
            self.name,
            tail(&self.log_text())
        );
    }

    /// Starts the server on `port` and waits until `ready`.
    fn launch(
        &mut self,
        port: u16,
        launch: &impl Fn(u16, File) -> Command,
        ready: &impl Fn(u16) -> bool,
    ) -> Result<(), Failed> {
        let name = self.name;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("{name}: {}: {e}", self.log.display()));
        let logged_before = log.metadata().map(|m| m.len()).unwrap_or(0) as usize;
        let mut command = launch(port, log);
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot run {command:?}: {e}"));
        self.child = Some(child);
        self.port = port;
        let deadline = Instant::now() + DEADLINE;
        loop {
            if ready(port) {
                return Ok(());
            }
            let child = self.child.as_mut().expect("launched");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                let log = self.log_text();
                let this_launch = log.get(logged_before..).unwrap_or(&log);
                if this_launch.contains("Address already in use") {
                    return Err(Failed::PortInUse);
                }
                return Err(Failed::Other(format!(
                    "{name} exited ({status}) before accepting connections on port {port}; its log:\n{}",
                    tail(&log)
                )));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(Failed::Other(format!(
                    "{name} did not accept connections on port {port} within {DEADLINE:?}; its log:\n{}",
                    tail(&self.log_text())
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` and waits for the server to exit; false if it did not in time.
    fn signal_and_wait(&mut self, signal: &str) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status();
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn stop(&mut self) {
        assert!(self.child.is_some(), "{}: stop while stopped", self.name);
        let signal = self.stop_signal;
        if !self.signal_and_wait(signal) {
            self.kill();
            panic!(
                "{}: did not stop within {DEADLINE:?} of SIG{signal}; its log:\n{}",
                self.name,
                tail(&self.log_text())
            );
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn relaunch(&mut self, launch: impl Fn(u16, File) -> Command, ready: impl Fn(u16) -> bool) {
        assert!(self.child.is_none(), "{}: restart while running", self.name);
        let started = Instant::now();
        match self.launch(self.port, &launch, &ready) {
            Ok(()) => self.startup = started.elapsed(),
            Err(Failed::PortInUse) => panic!(
                "{}: port {} was taken while the server was stopped; its log:\n{}",
                self.name,
                self.port,
                tail(&self.log_text())
            ),
            Err(Failed::Other(why)) => panic!("{why}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // PostgreSQL's immediate shutdown (SIGQUIT) ends its backends too, where SIGKILL
        // would orphan them; for MariaDB (one process) this is its clean shutdown.
        let signal = if self.stop_signal == "INT" {
            "QUIT"
        } else {
            self.stop_signal
        };
        if !self.signal_and_wait(signal) {
            self.kill();
        }
    }
}

/// Succeeds when the command does (a readiness probe).
fn probe(command: &mut Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A PostgreSQL 15 server: superuser `postgres` (trusted on the Unix socket), role
/// `tokengate` owning database `tokengate`, SCRAM passwords over TCP on 127.0.0.1.
pub struct Postgres {
    server: Server,
    password: String,
}

impl Postgres {
    pub fn start() -> Postgres {
        let started = Instant::now();
        let server = Server::new("postgres", "INT");
        let admin_password = password();
        let pwfile = server.path("superuser-password");
        std::fs::write(&pwfile, format!("{admin_password}\n")).expect("password file");
        let (uid, gid) = server_account();
        std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).expect("chown password file");
        run(
            "initdb",
            as_server_user(format!("{PG_BIN}/initdb"))
                .arg("--pgdata")
                .arg(server.path("data"))
                .args(["--username=postgres", "--encoding=UTF8", "--locale=C.UTF-8"])
                .args([
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--no-sync",
                ])
                .arg(format!("--pwfile={}", pwfile.display())),
        );
        let mut db = Postgres {
            server,
            password: password(),
        };
        let launch = db.launcher();
        let ready = db.ready_probe();
        db.server.start_on_some_port(launch, ready);
        // Two commands: psql runs one `-c` as one transaction, and CREATE DATABASE cannot.
        db.sql_in(
            "postgres",
            &format!("CREATE ROLE {APP_USER} LOGIN PASSWORD '{}'", db.password),
        );
        db.sql_in(
            "postgres",
            &format!("CREATE DATABASE {APP_DB} OWNER {APP_USER}"),
        );
        db.check_app_login();
        db.server.startup = started.elapsed();
        db
    }

    /// The command that runs the server on `port`, logging to `log`.
    fn launcher(&self) -> impl Fn(u16, File) -> Command {
        let data = self.server.path("data");
        let socket_dir = self.server.dir.path().to_owned();
        move |port, log| {
            let mut command = as_server_user(format!("{PG_BIN}/postgres"));
            command
                .arg("-D")
                .arg(&data)
                .arg("-p")
                .arg(port.to_string())
                .arg("-k")
                .arg(&socket_dir)
                .args(["-c", "listen_addresses=127.0.0.1"])
                // Test data need not survive a crash of the machine.
                .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .stdout(log.try_clone().expect("log"))
                .stderr(log);
            command
        }
    }

    fn ready_probe(&self) -> impl Fn(u16) -> bool {
        let socket_dir = self.server.dir.path().to_owned();
        move |port| {
            probe(
                Command::new("psql")
                    .args(["-X", "-q", "-h"])
                    .arg(&socket_dir)
                    .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
                    .args(["-c", "SELECT 1"]),
            )
        }
    }

    /// Logs in over TCP as the app role with its password, as tokengate will.
    fn check_app_login(&self) {
        run(
            "postgres: app role login over TCP",
            Command::new("psql")
                .args([
                    "-X",
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port().to_string(),
                ])
                .args(["-U", APP_USER, "-d", APP_DB, "-c", "SELECT 1"])
                .env("PGPASSWORD", &self.password),
        );
    }

    /// Runs SQL as the superuser in `database`.
    pub fn sql_in(&self, database: &str, sql: &str) -> String {
        let output = run(
            "psql",
            Command::new("psql")
                .args([
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-F",
                    "\t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                ])
                .arg(self.server.dir.path())
                .args([
                    "-p",
                    &self.port().to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    database,
                ])
                .args(["-c", sql]),
        );
        String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_owned()
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.server.path("data")
    }
}

impl Database for Postgres {
    fn kind(&self) -> Kind {
        Kind::Postgres
    }

    fn url(&self) -> String {
        format!(
            "postgres://{APP_USER}:{}@127.0.0.1:{}/{APP_DB}",
            self.password, self.server.port
        )
    }

    fn port(&self) -> u16 {
        self.server.port
    }

    fn sql(&self, sql: &str) -> String {
        self.sql_in(APP_DB, sql)
    }

    fn stop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown (clients disconnected, a checkpoint written).
        self.server.stop();
    }

    fn restart(&mut self) {
        let launch = self.launcher();
        let ready = self.ready_probe();
        self.server.relaunch(launch, ready);
        self.check_app_login();
    }

    fn startup_time(&self) -> Duration {
        self.server.startup
    }

    fn log(&self) -> String {
        self.server.log_text()
    }
}

/// A MariaDB server (Debian's 10.11): `root` without a password on the Unix socket, user
/// `tokengate`@`127.0.0.1` with all rights on database `tokengate`, TCP on 127.0.0.1.
pub struct Mariadb {
    server: Server,
    password: String,
}

impl Mariadb {
    pub fn start() -> Mariadb {
        let started = Instant::now();
        let server = Server::new("mariadb", "TERM");
        // Its own temporary directory: in a shared /tmp, concurrent bootstraps delete each
        // other's `#sql-temptable-…` files and fail ("Error on delete of '/tmp/#sql-…'").
        let tmp = server.path("tmp");
        std::fs::create_dir(&tmp).expect("mariadb tmpdir");
        let (uid, gid) = server_account();
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).expect("chown mariadb tmpdir");
        run(
            "mariadb-install-db",
            as_server_user("mariadb-install-db")
                .current_dir(server.dir.path())
                .arg("--no-defaults")
                .arg(format!("--datadir={}", server.path("data").display()))
                .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
                .args(["--skip-name-resolve", "--innodb-log-file-size=8M"])
                .arg(format!("--tmpdir={}", tmp.display())),
        );
        let mut db = Mariadb {
            server,
            password: password(),
        };
        let launch = db.launcher();
        let ready = db.ready_probe();
        db.server.start_on_some_port(launch, ready);
        db.sql_in(
            "mysql",
            &format!(
                "CREATE DATABASE {APP_DB}; \
                 CREATE USER '{APP_USER}'@'127.0.0.1' IDENTIFIED BY '{}'; \
                 GRANT ALL ON {APP_DB}.* TO '{APP_USER}'@'127.0.0.1';",
                db.password
            ),
        );
        db.check_app_login();
        db.server.startup = started.elapsed();
        db
    }

    fn socket(&self) -> PathBuf {
        self.server.path("mariadb.sock")
    }

    fn launcher(&self) -> impl Fn(u16, File) -> Command {
        let data = self.server.path("data");
        let socket = self.socket();
        let pid_file = self.server.path("mariadbd.pid");
        let tmp = self.server.path("tmp");
        move |port, log| {
            let mut command = as_server_user("/usr/sbin/mariadbd");
            command
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--pid-file={}", pid_file.display()))
                .arg(format!("--tmpdir={}", tmp.display()))
                .arg(format!("--port={port}"))
                .args(["--bind-address=127.0.0.1", "--skip-name-resolve"])
                .args(["--skip-log-bin", "--innodb-log-file-size=8M"])
                // Test data need not survive a crash of the machine.
                .arg("--innodb-flush-log-at-trx-commit=0")
                .stdout(log.try_clone().expect("log"))
                .stderr(log);
            command
        }
    }

    fn ready_probe(&self) -> impl Fn(u16) -> bool {
        let socket = self.socket();
        move |_port| {
            probe(
                Command::new("mariadb")
                    .arg("--no-defaults")
                    .arg(format!("--socket={}", socket.display()))
                    .args(["-u", "root", "-e", "SELECT 1"]),
            )
        }
    }

    fn check_app_login(&self) {
        run(
            "mariadb: app user login over TCP",
            Command::new("mariadb")
                .args(["--no-defaults", "--protocol=tcp", "-h", "127.0.0.1"])
                .arg(format!("--port={}", self.port()))
                .args(["-u", APP_USER, "-e", "SELECT 1", APP_DB])
                .env("MYSQL_PWD", &self.password),
        );
    }

    /// Runs SQL as root in `database`.
    pub fn sql_in(&self, database: &str, sql: &str) -> String {
        let output = run(
            "mariadb",
            Command::new("mariadb")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket().display()))
                .args([
                    "-u",
                    "root",
                    "--batch",
                    "--raw",
                    "--skip-column-names",
                    "-e",
                    sql,
                ])
                .arg(database),
        );
        String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_owned()
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.server.path("data")
    }
}

impl Database for Mariadb {
    fn kind(&self) -> Kind {
        Kind::Mariadb
    }

    fn url(&self) -> String {
        format!(
            "mysql://{APP_USER}:{}@127.0.0.1:{}/{APP_DB}",
            self.password, self.server.port
        )
    }

    fn port(&self) -> u16 {
        self.server.port
    }

    fn sql(&self, sql: &str) -> String {
        self.sql_in(APP_DB, sql)
    }

    fn stop(&mut self) {
        // SIGTERM: MariaDB's clean shutdown.
        self.server.stop();
    }

    fn restart(&mut self) {
        let launch = self.launcher();
        let ready = self.ready_probe();
        self.server.relaunch(launch, ready);
        self.check_app_login();
    }

    fn startup_time(&self) -> Duration {
        self.server.startup
    }

    fn log(&self) -> String {
        self.server.log_text()
    }
}

/// Runs `tests/laravel/sanctum.php` (Laravel 8.83 + Sanctum 4's token code) against
/// `db_url` on Sanctum's table, and returns the JSON it prints; panics if it fails.
pub fn sanctum(db_url: &str, args: &[&str]) -> serde_json::Value {
    sanctum_on_table(db_url, "personal_access_tokens", args)
}

/// [`sanctum`] on another table (tokengate's `tokens_table`).
pub fn sanctum_on_table(db_url: &str, table: &str, args: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/laravel/sanctum.php");
    let output = run(
        &format!("sanctum.php {}", args.join(" ")),
        Command::new("php")
            .arg(&script)
            .args(args)
            .env("DB_URL", db_url)
            .env("SANCTUM_TABLE", table),
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "sanctum.php {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}
