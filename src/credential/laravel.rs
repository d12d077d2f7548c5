//! Laravel's `Encrypter` and `CookieValuePrefix`, read side only: opening what a Laravel app
//! encrypted with its `APP_KEY` (cookies, the `X-XSRF-TOKEN` header, encrypted session
//! payloads). Pure: no I/O. The only module that imports the ciphers.
//!
//! A payload is base64 of JSON `{iv, value, mac, tag}`. AES-CBC: `mac` is the hex
//! HMAC-SHA256 of the base64 `iv` and `value` under the key, checked in constant time
//! before anything is decrypted. AES-GCM: `mac` is empty and the 16-byte `tag` authenticates.
//! Each key is tried in order (the current, then the previous ones), as Laravel does.

use aes::cipher::{BlockDecryptMut, KeyIvInit};
use aes_gcm::aead::{Aead, KeyInit};
use base64::Engine;
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

/// `APP_CIPHER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    Aes128Cbc,
    Aes256Cbc,
    Aes128Gcm,
    Aes256Gcm,
}

impl Cipher {
    /// Laravel's name, in any case (`AES-256-CBC`).
    pub fn parse(name: &str) -> Option<Cipher> {
        Some(match name.to_ascii_lowercase().as_str() {
            "aes-128-cbc" => Cipher::Aes128Cbc,
            "aes-256-cbc" => Cipher::Aes256Cbc,
            "aes-128-gcm" => Cipher::Aes128Gcm,
            "aes-256-gcm" => Cipher::Aes256Gcm,
            _ => return None,
        })
    }

    /// Laravel's name.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes128Cbc => "AES-128-CBC",
            Cipher::Aes256Cbc => "AES-256-CBC",
            Cipher::Aes128Gcm => "AES-128-GCM",
            Cipher::Aes256Gcm => "AES-256-GCM",
        }
    }

    pub fn key_len(self) -> usize {
        match self {
            Cipher::Aes128Cbc | Cipher::Aes128Gcm => 16,
            Cipher::Aes256Cbc | Cipher::Aes256Gcm => 32,
        }
    }

    fn iv_len(self) -> usize {
        if self.aead() {
            12
        } else {
            16
        }
    }

    fn aead(self) -> bool {
        matches!(self, Cipher::Aes128Gcm | Cipher::Aes256Gcm)
    }
}

/// The app's keys: the current one first, then the previous ones. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    cipher: Cipher,
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Keys({:?}, {} keys, redacted)",
            self.cipher,
            self.keys.len()
        )
    }
}

/// The JSON inside a payload.
#[derive(serde::Deserialize)]
struct Payload {
    iv: String,
    value: String,
    mac: String,
    #[serde(default)]
    tag: Option<String>,
}

const STANDARD: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

impl Keys {
    /// Keys as `.env` writes them (`base64:…`, or the raw key), each of the cipher's length.
    pub fn new(cipher: Cipher, written: &[&str]) -> Result<Keys, String> {
        let mut keys = Vec::with_capacity(written.len());
        for (n, text) in written.iter().enumerate() {
            let text = text.trim();
            let key = match text.strip_prefix("base64:") {
                Some(b64) => STANDARD
                    .decode(b64)
                    .map_err(|_| format!("key {} is not valid base64 after 'base64:'", n + 1))?,
                None => text.as_bytes().to_vec(),
            };
            if key.len() != cipher.key_len() {
                return Err(format!(
                    "key {} is {} bytes; {} needs {}",
                    n + 1,
                    key.len(),
                    cipher.name(),
                    cipher.key_len()
                ));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("no key".into());
        }
        Ok(Keys { cipher, keys })
    }

    /// `Encrypter::decrypt($payload, false)`: the plaintext and the key that opened it, or
    /// `None` for anything that is not a payload of one of these keys.
    pub fn decrypt(&self, payload: &[u8]) -> Option<(Vec<u8>, &[u8])> {
        let json = php_base64_decode(payload);
        let payload: Payload = serde_json::from_slice(&json).ok()?;
        let iv = STANDARD.decode(&payload.iv).ok()?;
        if iv.len() != self.cipher.iv_len() {
            return None;
        }
        let value = STANDARD.decode(&payload.value).ok()?;
        if self.cipher.aead() {
            let tag = STANDARD.decode(payload.tag.as_deref()?).ok()?;
            if tag.len() != 16 {
                return None;
            }
            let mut sealed = value;
            sealed.extend_from_slice(&tag);
            return self
                .keys
                .iter()
                .find_map(|key| Some((self.open_gcm(key, &iv, &sealed)?, key.as_slice())));
        }
        let key = self.keys.iter().find(|key| {
            let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("any key length");
            mac.update(payload.iv.as_bytes());
            mac.update(payload.value.as_bytes());
            hex(&mac.finalize().into_bytes())
                .as_bytes()
                .ct_eq(payload.mac.as_bytes())
                .into()
        })?;
        let plain = match self.cipher {
            Cipher::Aes128Cbc => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, &iv)
                .ok()?
                .decrypt_padded_vec_mut::<aes::cipher::block_padding::Pkcs7>(&value)
                .ok()?,
            _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, &iv)
                .ok()?
                .decrypt_padded_vec_mut::<aes::cipher::block_padding::Pkcs7>(&value)
                .ok()?,
        };
        Some((plain, key.as_slice()))
    }

    fn open_gcm(&self, key: &[u8], iv: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let nonce = aes_gcm::Nonce::from_slice(iv);
        match self.cipher {
            Cipher::Aes128Gcm => aes_gcm::Aes128Gcm::new_from_slice(key)
                .ok()?
                .decrypt(nonce, sealed)
                .ok(),
            _ => aes_gcm::Aes256Gcm::new_from_slice(key)
                .ok()?
                .decrypt(nonce, sealed)
                .ok(),
        }
    }

    /// A cookie as `EncryptCookies` reads it: decrypted (not unserialized), and its value
    /// only if it starts with `CookieValuePrefix::create($name, $key)` for the key that
    /// opened it (a cookie moved to another name does not).
    pub fn open_cookie(&self, name: &str, value: &[u8]) -> Option<Vec<u8>> {
        let (plain, key) = self.decrypt(value)?;
        let prefix = cookie_prefix(name, key);
        let rest = plain.strip_prefix(prefix.as_bytes())?;
        Some(rest.to_vec())
    }

    /// The `X-XSRF-TOKEN` header as `VerifyCsrfToken` reads it: decrypted, and the first 41
    /// bytes (the prefix) removed unchecked, as `CookieValuePrefix::remove` does.
    pub fn open_xsrf_header(&self, value: &[u8]) -> Option<Vec<u8>> {
        let (plain, _) = self.decrypt(value)?;
        Some(plain.get(41..).unwrap_or_default().to_vec())
    }
}

/// `CookieValuePrefix::create`: hex HMAC-SHA1 of the name and `v2`, then `|`.
fn cookie_prefix(name: &str, key: &[u8]) -> String {
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(name.as_bytes());
    mac.update(b"v2");
    let mut prefix = hex(&mac.finalize().into_bytes());
    prefix.push('|');
    prefix
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// PHP's `base64_decode` without `strict`: characters outside the alphabet are skipped,
/// padding is optional.
fn php_base64_decode(input: &[u8]) -> Vec<u8> {
    let kept: Vec<u8> = input
        .iter()
        .copied()
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        .collect();
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(&kept)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A payload as Laravel's `Encrypter::encrypt($value, false)` makes it (AES-256-CBC),
    /// with the key `base64:` + 32 bytes of 7: computed here the way Laravel does.
    fn laravel_cbc(key: &[u8], iv: &[u8; 16], plain: &[u8]) -> String {
        use aes::cipher::BlockEncryptMut;
        let value = cbc::Encryptor::<aes::Aes256>::new_from_slices(key, iv)
            .unwrap()
            .encrypt_padded_vec_mut::<aes::cipher::block_padding::Pkcs7>(plain);
        let (iv, value) = (STANDARD.encode(iv), STANDARD.encode(value));
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).unwrap();
        mac.update(iv.as_bytes());
        mac.update(value.as_bytes());
        let mac = hex(&mac.finalize().into_bytes());
        let json = format!(r#"{{"iv":"{iv}","value":"{value}","mac":"{mac}","tag":""}}"#);
        STANDARD.encode(json)
    }

    #[test]
    fn cbc_payloads_open_only_with_their_key_and_mac() {
        let key = [7u8; 32];
        let written = format!("base64:{}", STANDARD.encode(key));
        let other = format!("base64:{}", STANDARD.encode([8u8; 32]));
        let keys = Keys::new(Cipher::Aes256Cbc, &[&written]).unwrap();
        let prefix = cookie_prefix("laravel_session", &key);
        let id = "a".repeat(40);
        let cookie = laravel_cbc(&key, &[1; 16], format!("{prefix}{id}").as_bytes());
        assert_eq!(
            keys.open_cookie("laravel_session", cookie.as_bytes()),
            Some(id.clone().into_bytes())
        );
        assert_eq!(keys.open_cookie("other_cookie", cookie.as_bytes()), None);
        let wrong = Keys::new(Cipher::Aes256Cbc, &[&other]).unwrap();
        assert_eq!(
            wrong.open_cookie("laravel_session", cookie.as_bytes()),
            None
        );
        let rotated = Keys::new(Cipher::Aes256Cbc, &[&other, &written]).unwrap();
        assert_eq!(
            rotated.open_cookie("laravel_session", cookie.as_bytes()),
            Some(id.into_bytes()),
            "a previous key still opens it"
        );
        // A flipped bit anywhere in the payload: the MAC or the JSON fails.
        let mut bytes = cookie.into_bytes();
        for i in [0, bytes.len() / 2, bytes.len() - 3] {
            bytes[i] ^= 1;
            assert_eq!(keys.open_cookie("laravel_session", &bytes), None);
            bytes[i] ^= 1;
        }
        assert!(Keys::new(Cipher::Aes256Cbc, &["base64:AAAA"]).is_err());
        assert!(Keys::new(Cipher::Aes128Gcm, &[&written]).is_err());
    }
}
