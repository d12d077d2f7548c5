//! A Laravel app's own sessions: `tests/laravel/session.php` (Laravel 8.83's session,
//! auth, cookie and encryption classes from Debian's php-laravel-framework) run with the
//! settings given as environment variables (the script's header lists them: APP_KEY,
//! SESSION_DRIVER, DB_URL, REDIS_URL, SESSION_CIPHER, …).

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Every variable the script reads: cleared first, so that only the test's settings count.
const SETTINGS: &[&str] = &[
    "APP_KEY",
    "APP_PREVIOUS_KEYS",
    "SESSION_CIPHER",
    "SESSION_COOKIE",
    "SESSION_DRIVER",
    "SESSION_TABLE",
    "SESSION_SERIALIZATION",
    "SESSION_ENCRYPT",
    "SESSION_LIFETIME",
    "DB_URL",
    "REDIS_URL",
    "REDIS_PREFIX",
    "CACHE_PREFIX",
];

/// Runs `session.php args…` with `env` and returns its output, whatever its exit status.
pub fn laravel_session_output(env: &[(&str, &str)], args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/laravel/session.php");
    let mut command = Command::new("php");
    command.arg(&script).args(args).stdin(Stdio::null());
    for name in SETTINGS {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command.output().unwrap_or_else(|e| {
        panic!("cannot run php {script:?} ({e}); scripts/test.sh installs php-cli")
    })
}

/// Runs `session.php args…` with `env` and returns the JSON it prints; panics with its
/// output if it fails.
pub fn laravel_session(env: &[(&str, &str)], args: &[&str]) -> serde_json::Value {
    let output = laravel_session_output(env, args);
    assert!(
        output.status.success(),
        "session.php {} failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "session.php {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// A new `base64:` APP_KEY for `cipher` (`php artisan key:generate`).
pub fn laravel_key(cipher: &str) -> String {
    laravel_session(&[("SESSION_CIPHER", cipher)], &["key"])["key"]
        .as_str()
        .expect("key")
        .to_owned()
}

/// The session payload key SessionGuard stores the user id under, for guard `web`:
/// `login_web_` and the sha1 of `Illuminate\Auth\SessionGuard`.
pub const LOGIN_WEB_KEY: &str = "login_web_59ba36addc2b2f9401580f014c7f58ea4e30989d";
