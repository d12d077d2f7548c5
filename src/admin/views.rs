//! The JSON shapes of the admin API (`docs/admin-openapi.json`), shared by the server side
//! and the CLI's client, so both read and print the same things.

use crate::clock::{rfc3339, Timestamp};
use crate::credential::session::SessionHash;
use crate::store::{SessionRecord, TokenRecord, UserRecord};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserView {
    pub name: String,
    pub has_password: bool,
    pub created_at: String,
}

impl From<&UserRecord> for UserView {
    fn from(u: &UserRecord) -> Self {
        Self {
            name: u.name.clone(),
            has_password: u.password_hash.is_some(),
            created_at: rfc3339(Some(u.created_at)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    pub password: Option<String>,
}

/// One page of a listing: its items, and the key to ask for the next page with (`after`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<T, K> {
    pub data: Vec<T>,
    pub next: Option<K>,
}

/// Users, by name.
pub type UserPage = Page<UserView, String>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemovedUserView {
    pub removed_tokens: usize,
    pub removed_sessions: usize,
}

/// A token as anyone but its creator sees it: never its secret or hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenView {
    pub id: u64,
    pub user: String,
    pub name: String,
    pub abilities: Vec<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
}

impl From<&TokenRecord> for TokenView {
    fn from(t: &TokenRecord) -> Self {
        Self {
            id: t.id.0,
            user: t.user.clone(),
            name: t.name.clone(),
            abilities: t.abilities.clone(),
            created_at: rfc3339(Some(t.created_at)),
            expires_at: t.expires_at.map(|at| rfc3339(Some(at))),
            last_used_at: t.last_used_at.map(|at| rfc3339(Some(at))),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTokenBody {
    pub user: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abilities: Option<Vec<String>>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedTokenView {
    pub token: TokenView,
    pub plaintext: String,
    pub dropped_abilities: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenUpdate {
    pub abilities: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdatedTokenView {
    pub token: TokenView,
    pub dropped_abilities: Vec<String>,
}

/// Tokens, by id.
pub type TokenPage = Page<TokenView, u64>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionView {
    /// Names the session for revocation; neither the cookie value nor the stored hash.
    pub id: String,
    pub user: String,
    pub created_at: String,
    pub last_seen: String,
    pub expires_at: String,
}

impl SessionView {
    pub fn new(
        hash: &SessionHash,
        user: &str,
        created_at: Timestamp,
        last_seen: Timestamp,
        expires_at: Timestamp,
    ) -> Self {
        Self {
            id: session_id(hash),
            user: user.to_owned(),
            created_at: rfc3339(Some(created_at)),
            last_seen: rfc3339(Some(last_seen)),
            expires_at: rfc3339(Some(expires_at)),
        }
    }
}

impl From<&SessionRecord> for SessionView {
    fn from(s: &SessionRecord) -> Self {
        Self::new(&s.hash, &s.user, s.created_at, s.last_seen, s.expires_at)
    }
}

/// A session's public id: the SHA-256 of its stored hash, in hex.
pub fn session_id(hash: &SessionHash) -> String {
    Sha256::digest(hash.0)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionList {
    pub data: Vec<SessionView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSessionBody {
    pub user: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CookieView {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedSessionView {
    pub session: SessionView,
    pub cookie: CookieView,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Revoked {
    pub revoked: usize,
}
