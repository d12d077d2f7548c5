//! A real `tokengate` process: the binary with a database URL in its environment, and
//! `serve` on port 0 (its addresses found through /proc), answering plain HTTP/1.1.

use super::{eventually_blocking, wait_listening};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use tokengate::echo::Echo;

/// The environment variable the test configs name in `store.url_env`.
pub const URL_ENV: &str = "TOKENGATE_DATABASE_URL";

/// The tokengate binary, with `db_url` in `URL_ENV`.
pub fn bin(db_url: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tokengate"));
    c.env("RUST_LOG", "warn").env(URL_ENV, db_url);
    c
}

/// Runs tokengate to the end.
pub fn run(db_url: &str, args: &[&str]) -> Output {
    bin(db_url).args(args).output().expect("tokengate runs")
}

/// `tokengate serve`, its proxy on 127.0.0.1 and its admin listener on 127.0.0.2 (the
/// config must say so, each on port 0); killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// Its stderr (the log, `RUST_LOG=warn`), shown when it fails.
    log: tempfile::NamedTempFile,
}

impl Server {
    pub fn start(db_url: &str, cfg: &Path, admin_key: &str) -> Server {
        Self::start_with(db_url, cfg, admin_key, &[])
    }

    /// `start`, with more environment variables (an app's `APP_KEY`, …).
    pub fn start_with(db_url: &str, cfg: &Path, admin_key: &str, env: &[(&str, &str)]) -> Server {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = bin(db_url)
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .env("TOKENGATE_ADMIN_KEY", admin_key)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("tokengate starts");
        let pid = child.id();
        let mut exited = || child.try_wait().unwrap().map(|status| status.to_string());
        let addr = wait_listening("tokengate's proxy", pid, [127, 0, 0, 1], &mut exited);
        let admin = wait_listening("tokengate's admin", pid, [127, 0, 0, 2], &mut exited);
        Server {
            child,
            addr,
            admin,
            log,
        }
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        super::signal(self.child.id(), "-TERM");
        let mut code = None;
        eventually_blocking("tokengate exits after SIGTERM", || {
            match self.child.try_wait().unwrap() {
                Some(status) => {
                    code = Some(status.code());
                    true
                }
                None => false,
            }
        });
        assert_eq!(
            code,
            Some(Some(0)),
            "serve exits 0 after SIGTERM; its log:\n{}",
            self.log()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Waited for, so that the store it held is free when drop returns.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw HTTP/1.1 request; the status and the body.
pub fn request(
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
    let body = rest.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    (status, body.unwrap_or_default())
}

/// The identity headers the upstream saw on the last request: (user, abilities).
pub fn seen_identity(echo: &Echo) -> (String, String) {
    let seen = echo.last().expect("the upstream saw a request");
    let header = |name: &str| {
        seen.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    (header("x-auth-user"), header("x-token-abilities"))
}
