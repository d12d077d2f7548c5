//! A real Redis server for the tests: Debian's `redis-server`, started by the test on
//! 127.0.0.1 in its own temporary directory, killed and removed on drop; and a minimal RESP
//! client to look at what is stored.
//!
//! Like the database servers of `db.rs`, Redis cannot bind port 0 and report the port it
//! got, so the harness picks a port below Linux's ephemeral range, starts the server, and
//! tries another port when the server exits saying the address is in use. The server is
//! ready when it answers PING. A missing `redis-server` or one that does not start fails the
//! test, with its log: never a skip.
//!
//! It runs as the current user, without a password (protected mode lets loopback clients
//! in), and cannot write outside its directory: no RDB snapshots (`save ""`), no AOF, the
//! log on stdout into the directory, `dir` set to the directory, and `dir`/`dbfilename` not
//! changeable at run time (`enable-protected-configs no`, Redis 7's default, set
//! explicitly), nor DEBUG or MODULE commands.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to start or stop.
const DEADLINE: Duration = Duration::from_secs(30);
/// How many ports are tried when the chosen one is taken.
const PORT_ATTEMPTS: usize = 10;
/// Below Linux's default ephemeral range (32768–60999), as in `db.rs`.
const PORTS: std::ops::Range<u16> = 20_000..32_768;
const SERVER: &str = "redis-server";

/// A running `redis-server` (Debian's, 7.0 on bookworm).
pub struct Redis {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

/// One RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Nil,
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Array(Vec<Reply>),
}

impl Reply {
    /// A bulk or status reply as text; `None` for nil. Panics on anything else.
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Nil => None,
            Reply::Bulk(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            Reply::Status(s) => Some(s.clone()),
            other => panic!("redis: expected a string reply, got {other:?}"),
        }
    }

    pub fn int(&self) -> i64 {
        match self {
            Reply::Int(n) => *n,
            other => panic!("redis: expected an integer reply, got {other:?}"),
        }
    }
}

impl Redis {
    /// Starts a server on a free port of `PORTS`.
    pub fn start() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("tokengate-redis-")
            .tempdir()
            .unwrap_or_else(|e| panic!("redis: temp dir: {e}"));
        let mut redis = Redis {
            dir,
            port: 0,
            child: None,
        };
        for _ in 0..PORT_ATTEMPTS {
            let port = rand::random_range(PORTS);
            match redis.launch(port) {
                Ok(()) => return redis,
                Err(None) => continue,
                Err(Some(why)) => panic!("{why}"),
            }
        }
        panic!(
            "redis: every one of {PORT_ATTEMPTS} ports tried was in use; its log:\n{}",
            redis.log()
        );
    }

    /// `redis://127.0.0.1:PORT` (database 0, no password), as Laravel's REDIS_URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Everything the server has logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Starts the server on `port` and waits until it answers PING. `Err(None)`: the port
    /// was taken.
    fn launch(&mut self, port: u16) -> Result<(), Option<String>> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("redis: {}: {e}", self.log_path().display()));
        let logged_before = log.metadata().map(|m| m.len()).unwrap_or(0) as usize;
        let mut command = self.command_line(port, log);
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "redis: cannot run {SERVER} ({e}); scripts/test.sh installs it \
                 (Debian package redis-server)"
            )
        });
        self.child = Some(child);
        self.port = port;
        let deadline = Instant::now() + DEADLINE;
        loop {
            if self.ping() {
                return Ok(());
            }
            let child = self.child.as_mut().expect("launched");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                let log = self.log();
                let this_launch = log.get(logged_before..).unwrap_or(&log);
                if this_launch.contains("Address already in use") {
                    return Err(None);
                }
                return Err(Some(format!(
                    "redis exited ({status}) before answering on port {port}; its log:\n{log}"
                )));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(Some(format!(
                    "redis did not answer on port {port} within {DEADLINE:?}; its log:\n{}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn command_line(&self, port: u16, log: File) -> Command {
        let mut command = Command::new(SERVER);
        command
            .current_dir(self.dir.path())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--protected-mode", "yes", "--daemonize", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--logfile", ""])
            .args(["--enable-protected-configs", "no"])
            .args(["--enable-debug-command", "no"])
            .args(["--enable-module-command", "no"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        command
    }

    fn ping(&self) -> bool {
        self.try_command(&["PING"])
            .is_ok_and(|r| r == Reply::Status("PONG".into()))
    }

    /// Runs one command in database 0 on a new connection; panics if Redis cannot be reached.
    pub fn command(&self, args: &[&str]) -> Reply {
        self.try_command(args)
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}; its log:\n{}", self.log()))
    }

    /// Runs one command in database `db`.
    pub fn command_in(&self, db: u32, args: &[&str]) -> Reply {
        let db = db.to_string();
        let replies = self
            .try_pipeline(&[&["SELECT", &db], args])
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}; its log:\n{}", self.log()));
        assert_eq!(replies[0], Reply::Status("OK".into()), "SELECT {db}");
        replies[1].clone()
    }

    fn try_command(&self, args: &[&str]) -> std::io::Result<Reply> {
        Ok(self.try_pipeline(&[args])?.remove(0))
    }

    fn try_pipeline(&self, commands: &[&[&str]]) -> std::io::Result<Vec<Reply>> {
        let stream = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        let mut request = Vec::new();
        for args in commands {
            request.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for arg in *args {
                request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                request.extend_from_slice(arg.as_bytes());
                request.extend_from_slice(b"\r\n");
            }
        }
        (&stream).write_all(&request)?;
        let mut reader = BufReader::new(&stream);
        commands.iter().map(|_| read_reply(&mut reader)).collect()
    }

    /// GET in database 0.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self.command(&["GET", key]) {
            Reply::Nil => None,
            Reply::Bulk(bytes) => Some(bytes),
            other => panic!("redis GET {key}: {other:?}"),
        }
    }

    /// TTL in database 0: seconds, -1 without expiry, -2 when the key does not exist.
    pub fn ttl(&self, key: &str) -> i64 {
        self.command(&["TTL", key]).int()
    }

    pub fn exists(&self, key: &str) -> bool {
        self.command(&["EXISTS", key]).int() == 1
    }

    /// The keys of database `db` matching `pattern`, sorted.
    pub fn keys_in(&self, db: u32, pattern: &str) -> Vec<String> {
        let Reply::Array(keys) = self.command_in(db, &["KEYS", pattern]) else {
            panic!("redis KEYS: not an array");
        };
        let mut keys: Vec<String> = keys.iter().filter_map(Reply::text).collect();
        keys.sort();
        keys
    }

    /// The keys of database 0 matching `pattern`, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.keys_in(0, pattern)
    }

    /// Stops the server (SIGTERM; nothing is saved). `restart` starts it again on the same
    /// port, empty.
    pub fn stop(&mut self) {
        assert!(self.child.is_some(), "redis: stop while stopped");
        let pid = self.child.as_ref().expect("running").id();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.as_mut().expect("running").try_wait() {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        panic!(
            "redis did not stop within {DEADLINE:?} of SIGTERM; its log:\n{}",
            self.log()
        );
    }

    /// Starts a stopped server again on the same port (its data is gone: nothing was saved).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis: restart while running");
        match self.launch(self.port) {
            Ok(()) => {}
            Err(None) => panic!(
                "redis: port {} was taken while the server was stopped",
                self.port
            ),
            Err(Some(why)) => panic!("{why}"),
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_line(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if !line.ends_with("\r\n") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("truncated RESP line {line:?}"),
        ));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Reply> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let line = read_line(reader)?;
    let (kind, rest) = line.split_at(1.min(line.len()));
    Ok(match kind {
        "+" => Reply::Status(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Int(rest.parse().map_err(|_| bad(&line))?),
        "$" => {
            let len: i64 = rest.parse().map_err(|_| bad(&line))?;
            if len < 0 {
                Reply::Nil
            } else {
                let mut bytes = vec![0; len as usize + 2];
                reader.read_exact(&mut bytes)?;
                bytes.truncate(len as usize);
                Reply::Bulk(bytes)
            }
        }
        "*" => {
            let len: i64 = rest.parse().map_err(|_| bad(&line))?;
            if len < 0 {
                Reply::Nil
            } else {
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(read_reply(reader)?);
                }
                Reply::Array(items)
            }
        }
        _ => return Err(bad(&line)),
    })
}
