//! What credentials look like: the formats of API tokens (`token`) and session cookies
//! (`session`), their stored hashes, and the randomness they are made of; a Laravel app's
//! encrypted cookies (`laravel`) and its PHP-serialized session payloads (`php`). Pure: no
//! I/O and no state; `token_cache`, `session_cache` and `laravel_sessions` verify them at
//! run time.

pub mod laravel;
pub mod php;
pub mod session;
pub mod token;

use rand::{RngCore, TryRngCore};

/// 32 bytes from the OS CSPRNG.
pub fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.unwrap_err().fill_bytes(&mut bytes);
    bytes
}
