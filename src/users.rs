//! Users who log in with a password (argon2id) or are given sessions by the app.
//!
//! Checking a password takes the same time whether the user exists, has no password, or
//! has one that does not match: the unknown cases verify against a dummy hash with the
//! same parameters.

use crate::clock::Clock;
use crate::credential::random_bytes;
use crate::store::{Store, StoreError, UserRecord};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use std::sync::Arc;

/// An argon2id hash string with the default parameters (19 MiB, 2 passes, 1 lane) whose
/// digest is random bytes, so no password is known to match it: verified against when
/// there is no real hash to check.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRmb3J0b2tlbmdhdGU$2ArlWq0q5ODX2hYxkF5cbW9nyBzqdCRxQ1XPr7rw0E8";

/// Longest password accepted (argon2 takes any length; this bounds the work per attempt).
pub const MAX_PASSWORD_LEN: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("invalid user name: {0}")]
    InvalidName(String),
    #[error("the password must not be empty or longer than {MAX_PASSWORD_LEN} bytes")]
    InvalidPassword,
    #[error("no user {0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Users {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl Users {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// Adds a user, with a password or without one (then only the app can give them a
    /// session). `StoreError::UserExists` if the name is taken.
    pub async fn add(&self, name: &str, password: Option<String>) -> Result<UserRecord, UserError> {
        check_name(name)?;
        let password_hash = match password {
            Some(password) => Some(hash_password(password).await?),
            None => None,
        };
        let record = UserRecord {
            name: name.to_owned(),
            password_hash,
            created_at: self.clock.now(),
        };
        self.store.create_user(record.clone()).await?;
        Ok(record)
    }

    /// Sets (or, with `None`, removes) a user's password.
    pub async fn set_password(
        &self,
        name: &str,
        password: Option<String>,
    ) -> Result<(), UserError> {
        let hash = match password {
            Some(password) => Some(hash_password(password).await?),
            None => None,
        };
        if self.store.set_password(name, hash).await? {
            Ok(())
        } else {
            Err(UserError::NotFound(name.to_owned()))
        }
    }

    pub async fn get(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        self.store.user(name).await
    }

    pub async fn list(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        self.store.list_users(after, limit).await
    }

    /// The user if `password` is theirs; `None` for a wrong password, an unknown user or a
    /// user without a password, after the same amount of work.
    pub async fn verify(
        &self,
        name: &str,
        password: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        let user = if check_name(name).is_ok() {
            self.store.user(name).await?
        } else {
            None
        };
        let stored = user.as_ref().and_then(|u| u.password_hash.clone());
        let password = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || {
            let hash = stored.as_deref().unwrap_or(DUMMY_HASH);
            let matches = verify_password(&password, hash);
            matches && stored.is_some()
        })
        .await
        .map_err(|e| StoreError::Io(format!("password check failed: {e}")))?;
        Ok(user.filter(|_| matches))
    }
}

/// A user name: 1 to 255 visible ASCII characters (it travels in `X-Auth-User`).
pub fn check_name(name: &str) -> Result<(), UserError> {
    if name.is_empty() || name.len() > 255 || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(UserError::InvalidName(
            "1 to 255 visible ASCII characters, no spaces".into(),
        ));
    }
    Ok(())
}

/// A stored password hash tokengate can check a password against: an argon2 PHC string
/// (`$argon2id$v=19$…`), as `user add` writes.
pub fn check_password_hash(hash: &str) -> Result<(), String> {
    match PasswordHash::new(hash) {
        Ok(parsed) if parsed.algorithm.as_str().starts_with("argon2") => Ok(()),
        _ => Err("the password hash is not an argon2 password hash (PHC string)".into()),
    }
}

async fn hash_password(password: String) -> Result<String, UserError> {
    if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
        return Err(UserError::InvalidPassword);
    }
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::encode_b64(&random_bytes()[..16])
            .map_err(|e| StoreError::Io(format!("salt: {e}")))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| StoreError::Io(format!("password hash: {e}")))
    })
    .await
    .map_err(|e| StoreError::Io(format!("password hash failed: {e}")))?
    .map_err(UserError::Store)
}

fn verify_password(password: &str, hash: &str) -> bool {
    let password = &password.as_bytes()[..password.len().min(MAX_PASSWORD_LEN)];
    PasswordHash::new(hash)
        .map(|parsed| Argon2::default().verify_password(password, &parsed).is_ok())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dummy_hash_is_a_valid_hash_with_the_default_parameters() {
        let parsed = PasswordHash::new(DUMMY_HASH).unwrap();
        let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
        let real = Argon2::default().hash_password(b"x", &salt).unwrap();
        assert_eq!(parsed.algorithm, real.algorithm);
        assert_eq!(parsed.params, real.params);
        assert!(!verify_password("", DUMMY_HASH));
    }

    #[test]
    fn names_are_header_safe() {
        assert!(check_name("alice@example.com").is_ok());
        for bad in ["", "a b", "é", "a\nb", &"x".repeat(256)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
