//! The request path check: refuse any path whose meaning could differ between tokengate and
//! the upstream, and hand routing the percent-decoded segments. Pure.
//!
//! Refused (400): dot segments, raw or percent-encoded (also Tomcat's `..;x`); encoded `/`
//! or `\`, raw `\`; NUL; empty segments (`//`); malformed escapes; double encoding
//! (`%252e`); invalid UTF-8 after decoding; anything not starting with `/`. A single
//! trailing slash is ignored for matching, as most frameworks ignore it.
//!
//! Upstreams also read paths in ways of their own (`Reading`): without `;` parameters, in
//! any case, without trailing dots or spaces, after Unicode normalization. `read_as` gives a
//! path's segments under any set of them, for the proxy's decision to check that they all
//! lead to the same requirements; a reading that makes a dot segment or a separator is
//! refused outright.

use percent_encoding::percent_decode_str;
use std::borrow::Cow;
use unicode_normalization::UnicodeNormalization;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("The request path must start with '/'.")]
    NotAbsolute,
    #[error("The request path contains a dot segment.")]
    DotSegment,
    #[error("The request path contains an encoded slash or backslash.")]
    EncodedSeparator,
    #[error("The request path contains a NUL byte.")]
    Nul,
    #[error("The request path contains an empty segment.")]
    EmptySegment,
    #[error("The request path contains a malformed or double percent-encoding.")]
    BadEncoding,
    #[error("The request path is not valid UTF-8.")]
    InvalidUtf8,
    #[error("The request path has a segment that common servers read as a dot segment.")]
    ReadsAsDotSegment,
    #[error("The request path has a character that common servers read as a separator.")]
    ReadsAsSeparator,
}

/// A way common upstreams read a path other than by its plain decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Unicode compatibility normalization (NFKC): fullwidth `．．` is `..`, `Ａ` is `A`
    /// (Java's and .NET's normalizers, IIS).
    Compatibility,
    /// `;` parameters removed from each segment: `/admin;x/users` is `/admin/users` (Tomcat,
    /// Jetty, Spring, Undertow).
    Matrix,
    /// Spaces and control characters trimmed from both ends of a segment, dots from its end:
    /// `/admin./x`, `/admin%20/x` and `/admin%09/x` are `/admin/x` (IIS and Windows; Spring's
    /// path matcher trims whitespace).
    Trimmed,
    /// Letter case ignored: `/ADMIN` is `/admin` (Express by default, ASP.NET, IIS).
    CaseFolded,
}

impl Reading {
    pub const ALL: [Reading; 4] = [
        Reading::Compatibility,
        Reading::Matrix,
        Reading::Trimmed,
        Reading::CaseFolded,
    ];

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// Why a path is refused when this reading leads to other requirements.
    pub fn refusal(self) -> &'static str {
        match self {
            Reading::Compatibility => {
                "The request path matches another route after Unicode compatibility normalization."
            }
            Reading::Matrix => "The request path matches another route without its ';' parameters.",
            Reading::Trimmed => {
                "The request path matches another route without trailing dots or surrounding spaces."
            }
            Reading::CaseFolded => "The request path matches another route when letter case is ignored.",
        }
    }
}

/// A set of `Reading`s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readings(u8);

impl Readings {
    pub fn contains(self, reading: Reading) -> bool {
        self.0 & reading.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn with(self, reading: Reading) -> Self {
        Readings(self.0 | reading.bit())
    }

    /// Every non-empty subset, smallest first, so that the first one found to matter is
    /// the simplest explanation.
    pub fn subsets(self) -> impl Iterator<Item = Readings> {
        let mut all: Vec<Readings> = (1..=self.0)
            .filter(|s| s & !self.0 == 0)
            .map(Readings)
            .collect();
        all.sort_by_key(|s| s.0.count_ones());
        all.into_iter()
    }

    /// The first reading of the set, in the order of `Reading::ALL`.
    pub fn first(self) -> Option<Reading> {
        Reading::ALL.into_iter().find(|r| self.contains(*r))
    }
}

/// A checked path: its percent-decoded form, borrowed when nothing was encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPath<'a> {
    decoded: Cow<'a, str>,
}

impl CheckedPath<'_> {
    /// The decoded segments, without the leading `/` and one trailing `/`. `/` has none.
    pub fn segments(&self) -> impl Iterator<Item = &str> + Clone {
        let trimmed = self.decoded.strip_prefix('/').unwrap_or(&self.decoded);
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        trimmed.split('/').filter(move |_| !trimmed.is_empty())
    }

    pub fn as_str(&self) -> &str {
        &self.decoded
    }

    /// The readings that would change this path. One pass over its bytes; a path in lower
    /// case ASCII without `;` or trailing dots (most API paths) is sensitive to none. What
    /// one reading makes may expose another (`admin%20;x` is `admin ` without its parameters,
    /// then `admin` trimmed): the path read every way found so far is checked again, until
    /// nothing new turns up.
    pub fn sensitive(&self) -> Readings {
        let mut found = sensitive(&self.decoded);
        while !found.is_empty() {
            let Ok(read) = read_as(self, found) else {
                // Read so, it is refused anyway.
                break;
            };
            let more = Readings(found.0 | sensitive(&format!("/{}", read.join("/"))).0);
            if more == found {
                break;
            }
            found = more;
        }
        found
    }
}

/// The readings that would change `path` (`/`-separated, decoded), in one pass.
fn sensitive(path: &str) -> Readings {
    let mut found = Readings::default();
    let mut before = b'/';
    let mut ascii = true;
    for &byte in path.as_bytes() {
        match byte {
            b';' => found = found.with(Reading::Matrix),
            b'A'..=b'Z' => found = found.with(Reading::CaseFolded),
            // A segment ends in a dot or a space, or starts with a space.
            b'/' if before <= b' ' || before == b'.' => found = found.with(Reading::Trimmed),
            0..=b' ' if before == b'/' => found = found.with(Reading::Trimmed),
            0x80.. => ascii = false,
            _ => {}
        }
        before = byte;
    }
    if before <= b' ' || before == b'.' {
        found = found.with(Reading::Trimmed);
    }
    if !ascii {
        if !unicode_normalization::is_nfkc(path) {
            found = found.with(Reading::Compatibility);
        }
        if path
            .chars()
            .any(|c| c.to_lowercase().ne(std::iter::once(c)))
        {
            found = found.with(Reading::CaseFolded);
        }
    }
    found
}

/// A path's segments as an upstream applying `readings` sees them (each applied to each
/// segment in the order of `Reading::ALL`), empty ones dropped as servers merge `//`.
/// Refused when a reading makes a dot segment or a separator of what was neither.
pub fn read_as(path: &CheckedPath<'_>, readings: Readings) -> Result<Vec<String>, PathError> {
    let mut read = Vec::new();
    for segment in path.segments() {
        let mut segment = Cow::Borrowed(segment);
        if readings.contains(Reading::Compatibility) {
            let normalized: String = segment.nfkc().collect();
            if normalized.contains(['/', '\\', '\0']) {
                return Err(PathError::ReadsAsSeparator);
            }
            segment = Cow::Owned(normalized);
        }
        if readings.contains(Reading::Matrix) {
            if let Some(at) = segment.find(';') {
                segment = Cow::Owned(segment[..at].to_owned());
            }
        }
        if readings.contains(Reading::Trimmed) {
            let mut trimmed: &str = segment.trim_matches(|c: char| c <= ' ');
            // `.. ` is `..` to Windows: refused, not trimmed away.
            if trimmed == "." || trimmed == ".." {
                return Err(PathError::ReadsAsDotSegment);
            }
            loop {
                let next = trimmed
                    .trim_matches(|c: char| c <= ' ')
                    .trim_end_matches('.');
                if next == trimmed {
                    break;
                }
                trimmed = next;
            }
            segment = Cow::Owned(trimmed.to_owned());
        }
        if readings.contains(Reading::CaseFolded) {
            segment = Cow::Owned(segment.to_lowercase());
        }
        match &*segment {
            "" => {}
            "." | ".." => return Err(PathError::ReadsAsDotSegment),
            _ => read.push(segment.into_owned()),
        }
    }
    Ok(read)
}

pub fn check(raw: &str) -> Result<CheckedPath<'_>, PathError> {
    let rest = raw.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if !raw.bytes().any(|b| b == b'%' || b == b'\\') {
        // The common case: nothing encoded, so only empty and dot segments can be wrong,
        // and the path is its own decoding.
        if !rest.is_empty() {
            for segment in rest.split('/') {
                if segment.is_empty() {
                    return Err(PathError::EmptySegment);
                }
                if segment.starts_with('.') {
                    check_decoded(segment.as_bytes())?;
                }
            }
        }
        return Ok(CheckedPath {
            decoded: Cow::Borrowed(raw),
        });
    }
    if !rest.is_empty() {
        for segment in rest.split('/') {
            check_segment(segment)?;
        }
    }
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| PathError::InvalidUtf8)?;
    Ok(CheckedPath { decoded })
}

fn check_segment(raw: &str) -> Result<(), PathError> {
    if raw.is_empty() {
        return Err(PathError::EmptySegment);
    }
    if raw.contains('\\') {
        return Err(PathError::EncodedSeparator);
    }
    if !raw.contains('%') {
        return check_decoded(raw.as_bytes());
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEncoding)?;
            let hi = char::from(hex[0])
                .to_digit(16)
                .ok_or(PathError::BadEncoding)?;
            let lo = char::from(hex[1])
                .to_digit(16)
                .ok_or(PathError::BadEncoding)?;
            decoded.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    check_decoded(&decoded)
}

fn check_decoded(segment: &[u8]) -> Result<(), PathError> {
    match segment.iter().find(|&&b| matches!(b, b'/' | b'\\' | 0)) {
        Some(0) => return Err(PathError::Nul),
        Some(_) => return Err(PathError::EncodedSeparator),
        None => {}
    }
    // `..;jsessionid` is a dot segment to Tomcat and friends.
    let before_params = segment.split(|&b| b == b';').next().unwrap_or(&[]);
    if before_params == b"." || before_params == b".." {
        return Err(PathError::DotSegment);
    }
    // A decoded `%XX` would decode again in an upstream that decodes twice.
    if segment
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
    {
        return Err(PathError::BadEncoding);
    }
    std::str::from_utf8(segment).map_err(|_| PathError::InvalidUtf8)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(raw: &str) -> Result<Vec<String>, PathError> {
        check(raw).map(|p| p.segments().map(str::to_owned).collect())
    }

    #[test]
    fn accepted_paths_and_their_segments() {
        let cases: &[(&str, &[&str])] = &[
            ("/", &[]),
            ("/api", &["api"]),
            ("/api/", &["api"]),
            ("/api/posts/7", &["api", "posts", "7"]),
            ("/%61dmin", &["admin"]),
            ("/caf%C3%A9/x", &["café", "x"]),
            ("/a%20b", &["a b"]),
            ("/a.b/.c/..d/...", &["a.b", ".c", "..d", "..."]),
            ("/a%25b", &["a%b"]),
            ("/a;b=c", &["a;b=c"]),
        ];
        for (raw, want) in cases {
            assert_eq!(
                segments(raw).as_deref(),
                Ok(&want.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..]),
                "{raw}"
            );
        }
    }

    #[test]
    fn refused_paths() {
        let cases: &[(&str, PathError)] = &[
            ("", PathError::NotAbsolute),
            ("api", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/public/../admin", PathError::DotSegment),
            ("/public/./admin", PathError::DotSegment),
            ("/public/..", PathError::DotSegment),
            ("/public/%2e%2e/admin", PathError::DotSegment),
            ("/public/%2E%2e/admin", PathError::DotSegment),
            ("/public/.%2e/admin", PathError::DotSegment),
            ("/public/%2e/admin", PathError::DotSegment),
            ("/public/..;x=y/admin", PathError::DotSegment),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%2Fb", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/a\\b", PathError::EncodedSeparator),
            ("/a%00b", PathError::Nul),
            ("/a//b", PathError::EmptySegment),
            ("//admin", PathError::EmptySegment),
            ("/a%zz", PathError::BadEncoding),
            ("/a%4", PathError::BadEncoding),
            ("/a%", PathError::BadEncoding),
            ("/a%252e%252e", PathError::BadEncoding),
            ("/a%252fb", PathError::BadEncoding),
            ("/a%ff", PathError::InvalidUtf8),
            ("/a%c3", PathError::InvalidUtf8),
        ];
        for (raw, want) in cases {
            assert_eq!(check(raw).map(|_| ()), Err(*want), "{raw}");
        }
    }

    #[test]
    fn readings_of_a_path() {
        let read = |raw: &str, readings: &[Reading]| {
            let set = readings.iter().fold(Readings::default(), |s, r| s.with(*r));
            read_as(&check(raw).unwrap(), set)
        };
        let ok = |v: &[&str]| Ok(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            read("/Admin;x/Users", &[Reading::Matrix]),
            ok(&["Admin", "Users"])
        );
        assert_eq!(
            read("/Admin;x/Users", &[Reading::CaseFolded]),
            ok(&["admin;x", "users"])
        );
        assert_eq!(
            read("/admin.%20./x%09", &[Reading::Trimmed]),
            ok(&["admin", "x"])
        );
        assert_eq!(
            read("/%EF%BD%81dmin", &[Reading::Compatibility]),
            ok(&["admin"])
        );
        // Empty once read: merged, as servers merge `//`.
        assert_eq!(read("/a/;x/b", &[Reading::Matrix]), ok(&["a", "b"]));
        assert_eq!(
            read("/x/%EF%BC%8E%EF%BC%8E/y", &[Reading::Compatibility]),
            Err(PathError::ReadsAsDotSegment)
        );
        assert_eq!(
            read("/x/..%20/y", &[Reading::Trimmed]),
            Err(PathError::ReadsAsDotSegment)
        );
        assert_eq!(
            read("/x/%EF%BC%8F", &[Reading::Compatibility]),
            Err(PathError::ReadsAsSeparator)
        );
        let sensitive = |raw: &str| check(raw).unwrap().sensitive();
        assert!(sensitive("/api/posts/7").is_empty());
        assert!(sensitive("/api/x-y_z/1.2").is_empty());
        assert_eq!(
            sensitive("/A"),
            Readings::default().with(Reading::CaseFolded)
        );
        assert_eq!(sensitive("/a;b"), Readings::default().with(Reading::Matrix));
        assert_eq!(
            sensitive("/a./b"),
            Readings::default().with(Reading::Trimmed)
        );
        assert_eq!(
            sensitive("/a/%20b"),
            Readings::default().with(Reading::Trimmed)
        );
    }

    proptest::proptest! {
        /// The one-pass `sensitive` never misses a reading that would change the path: the
        /// oracle applies each reading and compares.
        #[test]
        fn sensitivity_never_misses_a_reading(raw in "/[aA;. \t\u{ff41}\u{ff21}\u{212a}%]{0,6}(/[aA;. \u{ff41}]{1,4}){0,2}") {
            let Ok(path) = check(&raw) else { return Ok(()); };
            let plain: Vec<String> = path.segments().map(str::to_owned).collect();
            let found = path.sensitive();
            for reading in Reading::ALL {
                let alone = Readings::default().with(reading);
                if read_as(&path, alone).as_ref() != Ok(&plain) {
                    proptest::prop_assert!(found.contains(reading), "{raw:?}: {reading:?} changes it");
                }
            }
        }

        /// Whatever comes in, an accepted path has no segment an upstream could read as a
        /// traversal or a separator.
        #[test]
        fn accepted_segments_are_plain(raw in "/[a-zA-Z0-9%./\\\\;]{0,24}") {
            if let Ok(path) = check(&raw) {
                for s in path.segments() {
                    proptest::prop_assert!(s != "." && s != ".." && !s.is_empty());
                    proptest::prop_assert!(!s.contains('/') && !s.contains('\\') && !s.contains('\0'));
                }
            }
        }
    }
}
