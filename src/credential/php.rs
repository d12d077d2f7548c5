//! A reader for PHP's `serialize` format, limited to what a Laravel session payload holds:
//! null, booleans, integers, floats, strings, arrays, and objects and references read but
//! not interpreted. Pure; any input gives a value or `None`, never a panic (a property
//! test below feeds it arbitrary bytes), and nesting is bounded.

/// A PHP value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Vec<u8>),
    /// An array's entries in order (keys are integers or strings).
    Array(Vec<(Value, Value)>),
    /// An object, a reference or an enum case: present, not read.
    Opaque,
}

impl Value {
    /// The entry of an array under the string key `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Array(entries) => entries
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key.as_bytes()))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// A string, or an integer written out (as PHP's string cast does).
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Str(s) => String::from_utf8(s.clone()).ok(),
            Value::Int(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// Deeper than any session payload nests.
const MAX_DEPTH: usize = 64;

/// `unserialize($input)`: the value, if `input` is exactly one serialized value.
pub fn unserialize(input: &[u8]) -> Option<Value> {
    let mut reader = Reader { input, at: 0 };
    let value = reader.value(0)?;
    (reader.at == input.len()).then_some(value)
}

struct Reader<'a> {
    input: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.input.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        (self.byte()? == b).then_some(())
    }

    /// Bytes up to (not including) `end`, which is consumed.
    fn until(&mut self, end: u8) -> Option<&[u8]> {
        let rest = self.input.get(self.at..)?;
        let len = rest.iter().position(|&b| b == end)?;
        self.at += len + 1;
        Some(&rest[..len])
    }

    fn int_until(&mut self, end: u8) -> Option<i64> {
        std::str::from_utf8(self.until(end)?).ok()?.parse().ok()
    }

    fn len_until(&mut self, end: u8) -> Option<usize> {
        usize::try_from(self.int_until(end)?).ok()
    }

    /// `"…"` of exactly `len` bytes.
    fn quoted(&mut self, len: usize) -> Option<&[u8]> {
        self.expect(b'"')?;
        let end = self.at.checked_add(len)?;
        let bytes = self.input.get(self.at..end)?;
        self.at = end;
        self.expect(b'"')?;
        Some(bytes)
    }

    fn value(&mut self, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        let kind = self.byte()?;
        match kind {
            b'N' => {
                self.expect(b';')?;
                Some(Value::Null)
            }
            b'b' => {
                self.expect(b':')?;
                match self.until(b';')? {
                    b"0" => Some(Value::Bool(false)),
                    b"1" => Some(Value::Bool(true)),
                    _ => None,
                }
            }
            b'i' => {
                self.expect(b':')?;
                Some(Value::Int(self.int_until(b';')?))
            }
            b'd' => {
                self.expect(b':')?;
                let text = std::str::from_utf8(self.until(b';')?).ok()?;
                let float = match text {
                    "INF" => f64::INFINITY,
                    "-INF" => f64::NEG_INFINITY,
                    "NAN" => f64::NAN,
                    _ => text.parse().ok()?,
                };
                Some(Value::Float(float))
            }
            b's' => {
                self.expect(b':')?;
                let len = self.len_until(b':')?;
                let bytes = self.quoted(len)?.to_vec();
                self.expect(b';')?;
                Some(Value::Str(bytes))
            }
            b'a' => {
                self.expect(b':')?;
                let entries = self.entries(depth)?;
                Some(Value::Array(entries))
            }
            b'O' => {
                self.expect(b':')?;
                let len = self.len_until(b':')?;
                self.quoted(len)?;
                self.expect(b':')?;
                self.entries(depth)?;
                Some(Value::Opaque)
            }
            b'C' => {
                // `Serializable`: the class, then its own format, skipped.
                self.expect(b':')?;
                let len = self.len_until(b':')?;
                self.quoted(len)?;
                self.expect(b':')?;
                let data = self.len_until(b':')?;
                self.expect(b'{')?;
                let end = self.at.checked_add(data)?;
                self.input.get(self.at..end)?;
                self.at = end;
                self.expect(b'}')?;
                Some(Value::Opaque)
            }
            b'E' => {
                self.expect(b':')?;
                let len = self.len_until(b':')?;
                self.quoted(len)?;
                self.expect(b';')?;
                Some(Value::Opaque)
            }
            b'r' | b'R' => {
                self.expect(b':')?;
                self.int_until(b';')?;
                Some(Value::Opaque)
            }
            _ => None,
        }
    }

    /// `n:{key value …}` of an array or an object.
    fn entries(&mut self, depth: usize) -> Option<Vec<(Value, Value)>> {
        let count = self.len_until(b':')?;
        self.expect(b'{')?;
        // Each entry takes at least 4 bytes: no allocation beyond what the input can hold.
        let mut entries = Vec::with_capacity(count.min(self.input.len() / 4));
        for _ in 0..count {
            let key = self.value(depth + 1)?;
            if !matches!(key, Value::Int(_) | Value::Str(_)) {
                return None;
            }
            let value = self.value(depth + 1)?;
            entries.push((key, value));
        }
        self.expect(b'}')?;
        Some(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_laravel_session_payload() {
        let payload = br#"a:4:{s:6:"_token";s:40:"Qm9ZrLw1nNpKd0Yq7aXJ3dLhq5eB8sVt2cR6uWfA";s:9:"_previous";a:1:{s:3:"url";s:22:"http://localhost/login";}s:6:"_flash";a:2:{s:3:"old";a:0:{}s:3:"new";a:0:{}}s:50:"login_web_59ba36addc2b2f9401580f014c7f58ea4e30989d";i:42;}"#;
        let value = unserialize(payload).expect("a session payload");
        assert_eq!(
            value.get("_token").and_then(Value::as_text).as_deref(),
            Some("Qm9ZrLw1nNpKd0Yq7aXJ3dLhq5eB8sVt2cR6uWfA")
        );
        assert_eq!(
            value
                .get("login_web_59ba36addc2b2f9401580f014c7f58ea4e30989d")
                .and_then(Value::as_text)
                .as_deref(),
            Some("42")
        );
        let object = br#"a:2:{s:6:"errors";O:31:"Illuminate\Support\ViewErrorBag":1:{s:4:"bags";a:0:{}}s:1:"n";d:1.5;}"#;
        let value = unserialize(object).expect("objects are read past");
        assert_eq!(value.get("errors"), Some(&Value::Opaque));
        assert_eq!(value.get("n"), Some(&Value::Float(1.5)));
    }

    #[test]
    fn malformed_input_is_none() {
        for bad in [
            &b""[..],
            b"s:5:\"abc\";",
            b"s:-1:\"\";",
            b"a:1:{i:0;}",
            b"a:99999999999:{}",
            b"i:1;trailing",
            b"a:1:{a:0:{}i:1;}",
            b"b:2;",
        ] {
            assert_eq!(unserialize(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let deep = "a:1:{i:0;".repeat(100) + "N;" + &"}".repeat(100);
        assert_eq!(unserialize(deep.as_bytes()), None, "too deep");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = unserialize(&bytes);
        }

        #[test]
        fn near_valid_input_never_panics(cut in 0usize..200, flip in 0usize..200) {
            let mut payload = br#"a:3:{s:6:"_token";s:3:"abc";s:1:"o";O:1:"X":1:{s:1:"p";C:1:"Y":3:{xyz}}s:1:"r";a:1:{i:0;R:2;}}"#.to_vec();
            if let Some(b) = payload.get_mut(flip) { *b = b.wrapping_add(1); }
            payload.truncate(cut);
            let _ = unserialize(&payload);
        }
    }
}
