//! The config file as written: serde structs that mirror the YAML, every one
//! `deny_unknown_fields` (a typo in an auth config is a hole). A section left out reads as
//! its empty struct; defaults and checks are `validate`'s.

use serde::{Deserialize, Deserializer};
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: Option<String>,
    pub(super) workers: Option<usize>,
    pub(super) upstream: Option<String>,
    pub(super) tls: Option<RawTls>,
    pub(super) upstream_ca: Option<PathBuf>,
    pub(super) upstream_http2: Option<bool>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(super) store: RawStore,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(super) admin: RawAdmin,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(super) tokens: RawTokens,
    #[serde(default)]
    pub(super) abilities: Vec<String>,
    #[serde(default)]
    pub(super) default_abilities: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(super) sessions: RawSessions,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(super) headers: RawHeaders,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<String>,
    #[serde(default)]
    pub(super) routes: Vec<RawRoute>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(super) access_log: RawAccessLog,
    pub(super) shutdown_grace_seconds: Option<u64>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(super) timeouts: RawTimeouts,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(super) limits: RawLimits,
    /// `None` (the default, WebSocket) differs from `[]` (no upgrade at all).
    pub(super) upgrades: Option<Vec<String>>,
}

/// A section written with nothing under it (`sessions:` with every key commented out) is
/// YAML null; it has always meant the same as leaving the section out.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) kind: Option<String>,
    pub(super) path: Option<PathBuf>,
    pub(super) cache_mb: Option<u64>,
    pub(super) url_env: Option<String>,
    pub(super) tokens_table: Option<String>,
    pub(super) tokenable_type: Option<String>,
    pub(super) read_only: Option<bool>,
    pub(super) sync_interval_ms: Option<u64>,
    pub(super) max_stale_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<String>,
    pub(super) key_env: Option<String>,
    pub(super) key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokens {
    pub(super) prefix: Option<String>,
    pub(super) expiration_minutes: Option<i64>,
    pub(super) cache_capacity: Option<usize>,
    pub(super) forward_authorization: Option<bool>,
    pub(super) max_per_user: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSessions {
    pub(super) cookie: Option<String>,
    pub(super) idle_minutes: Option<i64>,
    pub(super) lifetime_minutes: Option<i64>,
    pub(super) secure: Option<bool>,
    pub(super) forward_cookie: Option<bool>,
    pub(super) laravel: Option<RawLaravel>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLaravel {
    pub(super) app_key_env: Option<String>,
    pub(super) previous_keys_env: Option<String>,
    pub(super) cookie: Option<String>,
    pub(super) cipher: Option<String>,
    pub(super) driver: Option<String>,
    pub(super) table: Option<String>,
    pub(super) redis_url_env: Option<String>,
    pub(super) redis_prefix: Option<String>,
    pub(super) lifetime_minutes: Option<i64>,
    pub(super) serialization: Option<String>,
    pub(super) encrypt: Option<bool>,
    pub(super) login_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaders {
    pub(super) abilities: Option<String>,
    pub(super) user: Option<String>,
    pub(super) token_id: Option<String>,
    pub(super) method: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) path: String,
    pub(super) methods: Option<Vec<String>>,
    pub(super) auth: Option<String>,
    #[serde(default)]
    pub(super) abilities: Vec<String>,
    #[serde(default)]
    pub(super) any_ability: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccessLog {
    pub(super) enabled: Option<bool>,
    pub(super) format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub(super) upstream_connect_seconds: Option<f64>,
    pub(super) upstream_response_seconds: Option<f64>,
    pub(super) client_header_seconds: Option<f64>,
    pub(super) idle_seconds: Option<f64>,
    pub(super) client_body_seconds: Option<f64>,
    pub(super) client_send_seconds: Option<f64>,
    pub(super) upstream_body_idle_seconds: Option<f64>,
    pub(super) tunnel_idle_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_header_bytes: Option<usize>,
    pub(super) max_connections: Option<usize>,
    pub(super) body_scan_bytes: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::super::problems;

    #[test]
    fn unknown_fields_are_refused_with_a_line() {
        let got = problems(
            "upstream: http://127.0.0.1:1\nroutes:\n  - path: /**\n    abilites: [read]\n",
        );
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("line 4 column"), "{got:?}");
        assert!(got[0].contains("unknown field `abilites`"), "{got:?}");
    }

    #[test]
    fn unknown_fields_in_a_defaulted_section_are_refused() {
        let got = problems(
            "upstream: http://127.0.0.1:1\nroutes:\n  - path: /**\nsessions:\n  secrue: false\n",
        );
        assert_eq!(got.len(), 1);
        assert!(got[0].contains("unknown field `secrue`"), "{got:?}");
    }
}
