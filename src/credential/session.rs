//! Cookie sessions: the cookie value, its stored hash, and the `XSRF-TOKEN` bound to it.
//! Pure: no I/O.
//!
//! The cookie value is 32 random bytes, base64url without padding (43 characters); the store
//! keeps only its SHA-256. The `XSRF-TOKEN` of a session is derived from the cookie value
//! with SHA-256 under a fixed label, so it is bound to that session, needs no storage, and
//! reveals nothing about the cookie (which JavaScript cannot read: it is `HttpOnly`).

use super::random_bytes;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// Length of a cookie value: 32 bytes in base64url without padding.
pub const COOKIE_VALUE_LEN: usize = 43;

/// SHA-256 of a session's cookie value: the only form in which a session is kept.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionHash(pub [u8; 32]);

impl fmt::Debug for SessionHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionHash({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// A cookie value presented by a client, checked for shape only.
#[derive(Clone, Copy)]
pub struct CookieValue<'a>(&'a str);

impl<'a> CookieValue<'a> {
    /// `None` for anything that is not 43 base64url characters (forged, truncated, …):
    /// such a value is refused without a lookup.
    pub fn parse(value: &'a str) -> Option<Self> {
        let well_formed = value.len() == COOKIE_VALUE_LEN
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        well_formed.then_some(Self(value))
    }

    pub fn hash(&self) -> SessionHash {
        SessionHash(Sha256::digest(self.0.as_bytes()).into())
    }

    /// The `XSRF-TOKEN` value bound to this session.
    pub fn xsrf_token(&self) -> String {
        let mut digest = Sha256::new();
        digest.update(b"tokengate XSRF-TOKEN\0");
        digest.update(self.0.as_bytes());
        URL_SAFE_NO_PAD.encode(digest.finalize())
    }

    /// Does `presented` equal this session's `XSRF-TOKEN`? Constant time.
    pub fn xsrf_matches(&self, presented: &[u8]) -> bool {
        self.xsrf_token().as_bytes().ct_eq(presented).into()
    }

    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

/// A new cookie value from the OS CSPRNG.
pub fn generate_cookie_value() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_values_parse_and_differ() {
        let a = generate_cookie_value();
        let b = generate_cookie_value();
        assert_eq!(a.len(), COOKIE_VALUE_LEN);
        assert_ne!(a, b);
        let parsed = CookieValue::parse(&a).unwrap();
        assert_ne!(parsed.hash(), CookieValue::parse(&b).unwrap().hash());
    }

    #[test]
    fn malformed_values_are_refused() {
        let good = generate_cookie_value();
        for bad in [
            "",
            &good[..42],
            &format!("{good}A"),
            &format!("{}=", &good[..42]),
            &format!("{}+", &good[..42]),
            &format!("{}/", &good[..42]),
            &format!("{}é", &good[..41]),
        ] {
            assert!(CookieValue::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_xsrf_token_is_bound_to_its_session() {
        let a = generate_cookie_value();
        let b = generate_cookie_value();
        let a = CookieValue::parse(&a).unwrap();
        let b = CookieValue::parse(&b).unwrap();
        assert!(a.xsrf_matches(a.xsrf_token().as_bytes()));
        assert!(!a.xsrf_matches(b.xsrf_token().as_bytes()));
        assert!(!a.xsrf_matches(b""));
        assert!(!a.xsrf_token().contains(a.as_str()));
    }
}
