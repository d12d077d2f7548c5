//! Sanctum 4 personal access tokens: generating, parsing and hashing them. Pure: no I/O.
//!
//! Plaintext: `{id}|{prefix}{40 × [A-Za-z0-9]}{crc32b of the 40, 8 lowercase hex}`.
//! At rest: the SHA-256 of everything after `{id}|`, as Sanctum stores it.

use rand::distr::{Alphanumeric, Distribution};
use rand::TryRngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// Length of the random part of a token, as in Sanctum 4.
pub const ENTROPY_LEN: usize = 40;

/// A token's id: an opaque integer allocated by the store (Sanctum's `id` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(pub u64);

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// SHA-256 of a token's secret part: the only form in which a token is kept.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Lowercase hex, the form Sanctum's `token` column holds.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
        }
        out
    }

    pub fn from_hex(hex: &str) -> Option<Self> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(Self(out))
    }

    /// The first 8 bytes, as a compact map key (the full hash is still compared).
    pub fn short(&self) -> u64 {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(first)
    }

    /// Constant-time equality: the hash is a secret's stand-in. Compared as four words with
    /// `subtle` (every word, whatever the first differing one): a quarter of the steps of a
    /// byte-wise comparison, on the path of every request.
    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        let words = |hash: &[u8; 32]| -> [u64; 4] {
            std::array::from_fn(|i| {
                let mut word = [0u8; 8];
                word.copy_from_slice(&hash[i * 8..i * 8 + 8]);
                u64::from_le_bytes(word)
            })
        };
        words(&self.0).ct_eq(&words(&other.0)).into()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a hash in full: it identifies a live credential.
        write!(f, "TokenHash({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// A freshly generated secret (`{prefix}{40}{crc}`), before it has an id.
pub fn generate_secret(prefix: &str) -> String {
    let mut rng = rand::rngs::OsRng.unwrap_err();
    let entropy: String = Alphanumeric
        .sample_iter(&mut rng)
        .take(ENTROPY_LEN)
        .map(char::from)
        .collect();
    format!(
        "{prefix}{entropy}{:08x}",
        crc32fast::hash(entropy.as_bytes())
    )
}

/// The plaintext handed to the user, once.
pub fn plaintext(id: TokenId, secret: &str) -> String {
    format!("{id}|{secret}")
}

/// A token as presented by a client, split as Sanctum's guard splits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    /// `id|secret`: looked up by id, compared in constant time.
    WithId { id: TokenId, secret: &'a str },
    /// A bare secret (Jetstream hands these out): looked up by its hash.
    Bare { secret: &'a str },
}

impl<'a> Presented<'a> {
    /// Sanctum's `isValidBearerToken`: an id must be all digits and the secret non-empty;
    /// anything else is refused before any store lookup.
    pub fn parse(token: &'a str) -> Option<Self> {
        match token.split_once('|') {
            None if token.is_empty() => None,
            None => Some(Self::Bare { secret: token }),
            Some((id, secret)) => {
                if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || secret.is_empty() {
                    return None;
                }
                let id = id.parse().ok()?;
                Some(Self::WithId {
                    id: TokenId(id),
                    secret,
                })
            }
        }
    }

    pub fn secret(&self) -> &'a str {
        match *self {
            Self::WithId { secret, .. } | Self::Bare { secret } => secret,
        }
    }
}

/// The credential of an `Authorization: Bearer …` value (scheme case-insensitive), if any.
pub fn bearer(authorization: &[u8]) -> Option<&str> {
    const SCHEME: &[u8] = b"bearer ";
    let (scheme, rest) = authorization.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ')?;
    let end = rest.iter().rposition(|&b| b != b' ')? + 1;
    let token = &rest[start..end];
    // A token is printable ASCII without spaces; anything else is not one of ours. On the
    // bytes, in one pass: printable ASCII is valid UTF-8.
    if !token.iter().all(u8::is_ascii_graphic) {
        return None;
    }
    std::str::from_utf8(token).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_well_formed(plain: &str, prefix: &str) -> bool {
        let Some((id, rest)) = plain.split_once('|') else {
            return false;
        };
        let Some(body) = rest.strip_prefix(prefix) else {
            return false;
        };
        !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_digit())
            && body.len() == ENTROPY_LEN + 8
            && body[..ENTROPY_LEN]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric())
            && body[ENTROPY_LEN..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    #[test]
    fn generated_tokens_have_the_sanctum_4_shape_and_crc() {
        for prefix in ["tg_", "", "acme_pat_"] {
            let secret = generate_secret(prefix);
            let plain = plaintext(TokenId(42), &secret);
            assert!(is_well_formed(&plain, prefix), "{plain}");
            let body = &secret[prefix.len()..];
            let (entropy, crc) = body.split_at(ENTROPY_LEN);
            assert_eq!(crc, format!("{:08x}", crc32fast::hash(entropy.as_bytes())));
        }
    }

    #[test]
    fn generated_secrets_differ() {
        assert_ne!(generate_secret("tg_"), generate_secret("tg_"));
    }

    #[test]
    fn hash_is_sha256_hex_of_the_part_after_the_bar() {
        // sha256("abc")
        assert_eq!(
            TokenHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let h = TokenHash::of("tg_secret");
        assert_eq!(TokenHash::from_hex(&h.to_hex()), Some(h));
        assert!(h.ct_eq(&TokenHash::of("tg_secret")));
        assert!(!h.ct_eq(&TokenHash::of("tg_secreT")));
        // A difference in any byte, first word to last, is seen.
        for i in 0..32 {
            let mut other = h.0;
            other[i] ^= 0x01;
            assert!(!h.ct_eq(&TokenHash(other)), "byte {i}");
        }
        assert_eq!(TokenHash::from_hex("zz"), None);
        assert_eq!(TokenHash::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn parse_follows_sanctum_guard_rules() {
        let cases: &[(&str, Option<Presented<'_>>)] = &[
            (
                "1|abc",
                Some(Presented::WithId {
                    id: TokenId(1),
                    secret: "abc",
                }),
            ),
            (
                "007|a|b",
                Some(Presented::WithId {
                    id: TokenId(7),
                    secret: "a|b",
                }),
            ),
            ("abc", Some(Presented::Bare { secret: "abc" })),
            ("", None),
            ("|x", None),
            ("1|", None),
            ("1ABC|x", None),
            ("-1|x", None),
            (" 1|x", None),
            ("99999999999999999999999|x", None),
        ];
        for (input, want) in cases {
            assert_eq!(Presented::parse(input), *want, "{input:?}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_strict() {
        assert_eq!(bearer(b"Bearer 1|abc"), Some("1|abc"));
        assert_eq!(bearer(b"bearer 1|abc"), Some("1|abc"));
        assert_eq!(bearer(b"BEARER   1|abc  "), Some("1|abc"));
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearer    "), None);
        assert_eq!(bearer(b"Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer(b"Bearer a b"), None);
        assert_eq!(bearer("Bearer ключ".as_bytes()), None);
        assert_eq!(bearer(b"Bearer \xff\xfe"), None);
        assert_eq!(bearer(b"Bearer\t1|abc"), None);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in ".*") {
            let _ = Presented::parse(&s);
            let _ = bearer(s.as_bytes());
        }

        #[test]
        fn parse_roundtrips_generated_tokens(id in 1u64..u64::MAX) {
            let secret = generate_secret("tg_");
            let plain = plaintext(TokenId(id), &secret);
            let parsed = Presented::parse(&plain);
            proptest::prop_assert_eq!(parsed, Some(Presented::WithId { id: TokenId(id), secret: &secret }));
        }
    }
}
