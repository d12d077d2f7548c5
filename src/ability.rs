//! Ability names (Jetstream's "permissions"), shared by the route table, the token policy
//! and the authorization decision. The config checks each name once, when it declares it.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

/// A declared ability name: `[A-Za-z0-9:._-]+` (a token's `*`, every ability, is not one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ability(Box<str>);

impl Ability {
    /// The name as an ability, if it is one.
    pub fn new(name: &str) -> Option<Ability> {
        Self::is_name(name).then(|| Ability(name.into()))
    }

    /// Whether `name` is an ability name (`new` without the allocation).
    pub fn is_name(name: &str) -> bool {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-'))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Ability {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Ability {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Ability {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Ability {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Ability {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for (name, valid) in [
            ("read", true),
            ("posts:create", true),
            ("a.b_c-D9", true),
            ("", false),
            ("*", false),
            ("read write", false),
            ("read,write", false),
            ("lesen\u{e4}", false),
            ("a|b", false),
        ] {
            assert_eq!(Ability::new(name).is_some(), valid, "{name:?}");
        }
        assert_eq!(Ability::new("read").unwrap(), "read");
    }
}
