//! Which methods an upstream may run a request as. Laravel and Symfony run the method a
//! POST names in `X-HTTP-Method-Override` or a `_method` field (query string, form,
//! multipart, and with Laravel a JSON body); Rails' Rack and Express's `method-override` do
//! the same with the header and form fields. tokengate authorizes a request under its own
//! method and under every method it names this way (`decision`). Pure.
//!
//! Read generously, so that nothing an upstream takes as an override is missed: header
//! values (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`) on any method,
//! every comma-separated element of every line; `_method` in the query string, in an
//! urlencoded or multipart form and anywhere in a JSON body of a POST, as PHP names fields
//! (leading spaces dropped, `.` and ` ` read as `_`), in any case. A value that is not a
//! method token (letters only, at most 20) is refused with 400, as Symfony refuses it.
//!
//! Bodies are scanned as they stream (`BodyScan`), a chunk at a time, so a field split
//! across chunks is still seen; the proxy reads a bounded prefix before deciding and checks
//! the rest as it goes upstream.

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, Method};
use smallvec::SmallVec;

/// Whether a header names a method: `X-HTTP-Method-Override` (Symfony, Rack, Express),
/// `X-HTTP-Method` (OData) or `X-Method-Override` (Google's APIs). One `match` on the name's
/// text: every header of every request passes here, and hashing three names into the map
/// would cost more than looking at the few headers a request has.
fn names_method(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "x-http-method-override" | "x-http-method" | "x-method-override"
    )
}

/// The longest value taken as a method.
const MAX_METHOD: usize = 20;
/// The longest field name or JSON key examined; a longer one cannot be `_method` unless
/// padded to hide it, and is refused.
const MAX_NAME: usize = 1024;
/// Methods a request may name besides its own.
const MAX_METHODS: usize = 4;

/// Why a request's method cannot be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub enum OverrideError {
    InvalidMethod,
    TooMany,
    LongName,
    NoBoundary,
    LongPartHead,
}

impl OverrideError {
    /// The client's 400 message.
    pub fn message(self) -> &'static str {
        match self {
            OverrideError::InvalidMethod => "The method override is not a valid method.",
            OverrideError::TooMany => "The request names too many methods.",
            OverrideError::LongName => "The request body's form field names are too long to check.",
            OverrideError::NoBoundary => {
                "The request body's form boundary is missing or malformed."
            }
            OverrideError::LongPartHead => {
                "The request body's form part headers are too large to check."
            }
        }
    }
}

/// The methods a request names besides its own.
pub type Methods = SmallVec<[Method; 2]>;

/// Adds `value` (a method name) to `methods`, unless it is there already.
fn add(methods: &mut Methods, value: &[u8]) -> Result<(), OverrideError> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > MAX_METHOD || !value.iter().all(u8::is_ascii_alphabetic) {
        return Err(OverrideError::InvalidMethod);
    }
    let method = Method::from_bytes(&value.to_ascii_uppercase())
        .map_err(|_| OverrideError::InvalidMethod)?;
    if !methods.contains(&method) {
        if methods.len() == MAX_METHODS {
            return Err(OverrideError::TooMany);
        }
        methods.push(method);
    }
    Ok(())
}

/// The methods named by override headers.
pub fn from_headers(headers: &HeaderMap, methods: &mut Methods) -> Result<(), OverrideError> {
    for (name, value) in headers {
        from_header(name, value, methods)?;
    }
    Ok(())
}

/// The methods one header names, if it is an override header (for a caller that goes
/// through the headers anyway).
pub fn from_header(
    name: &HeaderName,
    value: &http::HeaderValue,
    methods: &mut Methods,
) -> Result<(), OverrideError> {
    if !names_method(name) {
        return Ok(());
    }
    for element in value.as_bytes().split(|&b| b == b',') {
        if !element.trim_ascii().is_empty() {
            add(methods, element)?;
        }
    }
    Ok(())
}

/// The methods named by `_method` in a query string (or an urlencoded body held whole).
pub fn from_query(query: &str, methods: &mut Methods) -> Result<(), OverrideError> {
    let mut form = Urlencoded::default();
    form.feed(query.as_bytes(), methods)?;
    form.finish(methods)
}

/// Whether a field name is `_method` as PHP, Rack or Node would name it: percent-decoded
/// (with `+` as a space), leading spaces dropped, `.` and ` ` as `_`, in any case, with or
/// without a `[…]` suffix (PHP's array syntax).
fn is_method_field(decoded: &[u8]) -> bool {
    let start = decoded
        .iter()
        .position(|&b| b != b' ')
        .unwrap_or(decoded.len());
    let name = &decoded[start..];
    let name = match name.iter().position(|&b| b == b'[') {
        Some(at) => &name[..at],
        None => name,
    };
    name.len() == 7
        && matches!(name[0], b'_' | b'.' | b' ')
        && name[1..].eq_ignore_ascii_case(b"method")
}

/// The body scans a request's `Content-Type` calls for: a form (urlencoded, also without a
/// `Content-Type`, as Rack reads it), multipart (by its boundary), JSON (`/json` or `+json`
/// anywhere in the type, as Laravel's `isJson`). `None`: nothing in such a body is read as
/// a method.
pub fn body_scan(headers: &HeaderMap) -> Result<Option<BodyScan>, OverrideError> {
    let mut scan = BodyScan::default();
    let mut types = headers.get_all(CONTENT_TYPE).iter().peekable();
    if types.peek().is_none() {
        scan.form = Some(Urlencoded::default());
    }
    for value in types {
        let lower = value.as_bytes().to_ascii_lowercase();
        let has = |needle: &[u8]| lower.windows(needle.len()).any(|w| w == needle);
        if has(b"urlencoded") {
            scan.form = Some(Urlencoded::default());
        }
        if has(b"multipart/") {
            scan.multipart = Some(Multipart::new(boundary(value.as_bytes())?));
        }
        if has(b"/json") || has(b"+json") {
            scan.json = Some(Json::default());
        }
    }
    Ok((scan.form.is_some() || scan.multipart.is_some() || scan.json.is_some()).then_some(scan))
}

/// The `boundary` parameter of a multipart `Content-Type`, quoted or not.
fn boundary(content_type: &[u8]) -> Result<Vec<u8>, OverrideError> {
    let lower = content_type.to_ascii_lowercase();
    let at = lower
        .windows(9)
        .position(|w| w == b"boundary=")
        .ok_or(OverrideError::NoBoundary)?;
    let rest = &content_type[at + 9..];
    let value = match rest.strip_prefix(b"\"") {
        Some(quoted) => quoted.split(|&b| b == b'"').next().unwrap_or_default(),
        None => rest
            .split(|&b| b == b';' || b == b',')
            .next()
            .unwrap_or_default()
            .trim_ascii(),
    };
    if value.is_empty() || value.len() > 200 {
        return Err(OverrideError::NoBoundary);
    }
    Ok(value.to_vec())
}

/// Scans a request body, chunk by chunk, for the methods it names.
#[derive(Debug, Default)]
pub struct BodyScan {
    form: Option<Urlencoded>,
    multipart: Option<Multipart>,
    json: Option<Json>,
}

impl BodyScan {
    pub fn feed(&mut self, chunk: &[u8], methods: &mut Methods) -> Result<(), OverrideError> {
        if let Some(form) = &mut self.form {
            form.feed(chunk, methods)?;
        }
        if let Some(multipart) = &mut self.multipart {
            multipart.feed(chunk, methods)?;
        }
        if let Some(json) = &mut self.json {
            json.feed(chunk, methods)?;
        }
        Ok(())
    }

    /// Whether the bytes so far end inside a `_method` value (or between its name and its
    /// value): its end, which may be the body's, will tell the method. The bytes that
    /// hold it must not go upstream before.
    pub fn holding(&self) -> bool {
        self.form.as_ref().is_some_and(|f| f.in_value && f.wanted)
            || self
                .multipart
                .as_ref()
                .is_some_and(|m| m.phase == PartPhase::Method)
            || self
                .json
                .as_ref()
                .is_some_and(|j| j.method_key || j.method_value)
    }

    /// The body has ended.
    pub fn finish(&mut self, methods: &mut Methods) -> Result<(), OverrideError> {
        if let Some(form) = &mut self.form {
            form.finish(methods)?;
        }
        if let Some(multipart) = &mut self.multipart {
            multipart.finish(methods)?;
        }
        Ok(())
    }
}

/// `application/x-www-form-urlencoded`, streamed: `name=value` pairs split at `&` (and `;`,
/// which some parsers also take).
#[derive(Debug, Default)]
struct Urlencoded {
    name: Vec<u8>,
    /// After the `=`: the value is kept only for a `_method` field.
    in_value: bool,
    wanted: bool,
    value: Vec<u8>,
}

impl Urlencoded {
    fn feed(&mut self, chunk: &[u8], methods: &mut Methods) -> Result<(), OverrideError> {
        for &byte in chunk {
            match byte {
                b'&' | b';' => self.end_pair(methods)?,
                b'=' if !self.in_value => {
                    self.in_value = true;
                    self.wanted = is_method_field(&form_decode(&self.name));
                }
                _ if self.in_value => {
                    if self.wanted {
                        self.value.push(byte);
                        if self.value.len() > 3 * MAX_METHOD {
                            return Err(OverrideError::InvalidMethod);
                        }
                    }
                }
                _ => {
                    self.name.push(byte);
                    if self.name.len() > MAX_NAME {
                        return Err(OverrideError::LongName);
                    }
                }
            }
        }
        Ok(())
    }

    fn end_pair(&mut self, methods: &mut Methods) -> Result<(), OverrideError> {
        if self.in_value && self.wanted {
            add(methods, &form_decode(&self.value))?;
        }
        self.name.clear();
        self.value.clear();
        self.in_value = false;
        self.wanted = false;
        Ok(())
    }

    fn finish(&mut self, methods: &mut Methods) -> Result<(), OverrideError> {
        self.end_pair(methods)
    }
}

/// Form decoding: `+` is a space, `%XX` a byte (a malformed escape stays as it is).
fn form_decode(raw: &[u8]) -> Vec<u8> {
    let spaced: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_encoding::percent_decode(&spaced).collect()
}

/// `multipart/form-data`, streamed: at each boundary line, the part's headers are read for
/// its field name, and a `_method` part's content is kept. Boundaries are found wherever
/// `--boundary` starts a line (after LF, as lenient parsers take it), so no part a server
/// reads is missed.
#[derive(Debug)]
struct Multipart {
    /// `\n--boundary`.
    delimiter: Vec<u8>,
    /// Bytes not yet placed: a possible start of the delimiter, or a part head in progress.
    pending: Vec<u8>,
    phase: PartPhase,
    value: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartPhase {
    /// Content, of a part that is not `_method` (or the preamble).
    Skip,
    /// After a delimiter: the rest of its line, then the part's headers.
    Head,
    /// The content of a `_method` part.
    Method,
}

/// The most a part's headers may take before they are refused.
const MAX_PART_HEAD: usize = 8 * 1024;

impl Multipart {
    fn new(boundary: Vec<u8>) -> Self {
        let mut delimiter = b"\n--".to_vec();
        delimiter.extend_from_slice(&boundary);
        Self {
            delimiter,
            // The body may start with the delimiter, without a line before it.
            pending: b"\n".to_vec(),
            phase: PartPhase::Skip,
            value: Vec::new(),
        }
    }

    fn feed(&mut self, chunk: &[u8], methods: &mut Methods) -> Result<(), OverrideError> {
        self.pending.extend_from_slice(chunk);
        loop {
            match self.phase {
                PartPhase::Skip | PartPhase::Method => {
                    let found = memchr::memmem::find(&self.pending, &self.delimiter);
                    let keep_from = match found {
                        Some(at) => at,
                        // Whatever could still be the start of a delimiter stays pending.
                        None => self.pending.len().saturating_sub(self.delimiter.len() - 1),
                    };
                    if self.phase == PartPhase::Method {
                        self.value.extend_from_slice(&self.pending[..keep_from]);
                        if self.value.len() > 3 * MAX_METHOD {
                            return Err(OverrideError::InvalidMethod);
                        }
                    }
                    let Some(at) = found else {
                        self.pending.drain(..keep_from);
                        return Ok(());
                    };
                    if self.phase == PartPhase::Method {
                        let value = std::mem::take(&mut self.value);
                        add(methods, part_value(&value))?;
                    }
                    self.pending.drain(..at + self.delimiter.len());
                    self.phase = PartPhase::Head;
                }
                PartPhase::Head => {
                    let Some((end, len)) = head_end(&self.pending) else {
                        if self.pending.len() > MAX_PART_HEAD {
                            return Err(OverrideError::LongPartHead);
                        }
                        return Ok(());
                    };
                    let wanted = part_is_method(&self.pending[..end]);
                    self.pending.drain(..end + len);
                    // A delimiter may follow at once: the LF it starts with was part of the
                    // blank line. (`part_value` drops it from a value again.)
                    self.pending.insert(0, b'\n');
                    self.value.clear();
                    self.phase = if wanted {
                        PartPhase::Method
                    } else {
                        PartPhase::Skip
                    };
                }
            }
        }
    }

    fn finish(&mut self, methods: &mut Methods) -> Result<(), OverrideError> {
        // A `_method` part the body ended in (no closing boundary) still counts.
        if self.phase == PartPhase::Method {
            self.value.extend_from_slice(&self.pending);
            let value = std::mem::take(&mut self.value);
            add(methods, part_value(&value))?;
        }
        Ok(())
    }
}

/// A part's content as collected: without the LF put before it and the CR that belongs to
/// the delimiter line after it.
fn part_value(collected: &[u8]) -> &[u8] {
    let value = collected.strip_prefix(b"\n").unwrap_or(collected);
    value.strip_suffix(b"\r").unwrap_or(value)
}

/// Where a part's head ends (a blank line, CRLF or LF) and how long the blank line is.
fn head_end(bytes: &[u8]) -> Option<(usize, usize)> {
    let crlf = memchr::memmem::find(bytes, b"\r\n\r\n").map(|at| (at, 4));
    let lf = memchr::memmem::find(bytes, b"\n\n").map(|at| (at, 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Whether a part's head names the `_method` field: any `name` (or `name*`) parameter of
/// a `Content-Disposition` line, quoted with `"` or `'` or not, read both with and without
/// backslash escapes.
fn part_is_method(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').any(|line| {
        let line = line.trim_ascii();
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return false;
        };
        if !line[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(b"content-disposition")
        {
            return false;
        }
        parameters(&line[colon + 1..]).any(|(key, value)| {
            let key = key.trim_ascii();
            if key.eq_ignore_ascii_case(b"name") {
                let unescaped: Vec<u8> = unescape(value);
                is_method_field(value) || is_method_field(&unescaped)
            } else if key.eq_ignore_ascii_case(b"name*") {
                // RFC 5987: charset'language'percent-encoded.
                let encoded = value.rsplit(|&b| b == b'\'').next().unwrap_or(value);
                is_method_field(&percent_encoding::percent_decode(encoded).collect::<Vec<u8>>())
            } else {
                false
            }
        })
    })
}

/// The `key=value` parameters after a `;`, values unquoted (a `;` inside quotes does not
/// split).
fn parameters(rest: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut pieces = Vec::new();
    let (mut start, mut quote) = (0, None);
    for (i, &b) in rest.iter().enumerate() {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), _) if b == q && rest.get(i.wrapping_sub(1)) != Some(&b'\\') => quote = None,
            (None, b';') => {
                pieces.push(&rest[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&rest[start..]);
    pieces.into_iter().filter_map(|piece| {
        let eq = piece.iter().position(|&b| b == b'=')?;
        let value = piece[eq + 1..].trim_ascii();
        let value = match value {
            [q @ (b'"' | b'\''), inner @ .., last] if last == q => inner,
            [b'"' | b'\'', inner @ ..] => inner,
            _ => value,
        };
        Some((&piece[..eq], value))
    })
}

fn unescape(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.iter();
    while let Some(&b) = bytes.next() {
        if b == b'\\' {
            if let Some(&next) = bytes.next() {
                out.push(next);
            }
        } else {
            out.push(b);
        }
    }
    out
}

/// JSON, streamed: every string that is a key (followed by `:`) is compared, once
/// unescaped, with `_method`; the string value of such a key is a method. Keys at any depth
/// count (Laravel reads the top level only; reading more is stricter, never weaker).
#[derive(Debug, Default)]
struct Json {
    phase: JsonPhase,
    /// The current string, unescaped, while it is short enough to matter.
    string: Vec<u8>,
    long: bool,
    /// A `\u` escape being read: its hex digits so far.
    unicode: Option<(u16, u8)>,
    /// A high surrogate waiting for its low half.
    high: Option<u16>,
    /// The last string ended and might be a key.
    after_string: bool,
    /// The last key was `_method`: the next value is a method, if a string.
    method_key: bool,
    /// The string being read is the value of a `_method` key.
    method_value: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum JsonPhase {
    #[default]
    Outside,
    String,
    Escape,
}

impl Json {
    fn feed(&mut self, chunk: &[u8], methods: &mut Methods) -> Result<(), OverrideError> {
        for &byte in chunk {
            match self.phase {
                JsonPhase::Outside => match byte {
                    b'"' => {
                        self.method_value = self.method_key;
                        self.method_key = false;
                        self.after_string = false;
                        self.phase = JsonPhase::String;
                        self.string.clear();
                        self.long = false;
                    }
                    b':' => {
                        if self.after_string {
                            self.method_key = !self.long && is_method_key(&self.string);
                        }
                        self.after_string = false;
                    }
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    _ => {
                        // A value other than a string: a `_method` key's number, array or
                        // object is not a method (Laravel ignores it).
                        self.after_string = false;
                        self.method_key = false;
                    }
                },
                JsonPhase::String => match byte {
                    b'"' => {
                        self.phase = JsonPhase::Outside;
                        if self.method_value {
                            if self.long {
                                return Err(OverrideError::InvalidMethod);
                            }
                            add(methods, &self.string)?;
                            self.method_value = false;
                        } else {
                            self.after_string = true;
                        }
                    }
                    b'\\' => self.phase = JsonPhase::Escape,
                    _ => self.push(byte),
                },
                JsonPhase::Escape => {
                    if let Some((code, digits)) = self.unicode {
                        let digit = char::from(byte).to_digit(16).unwrap_or(0) as u16;
                        let code = code * 16 + digit;
                        if digits == 3 {
                            self.unicode = None;
                            self.phase = JsonPhase::String;
                            self.push_code(code);
                        } else {
                            self.unicode = Some((code, digits + 1));
                        }
                        continue;
                    }
                    self.phase = JsonPhase::String;
                    match byte {
                        b'u' => {
                            self.unicode = Some((0, 0));
                            self.phase = JsonPhase::Escape;
                        }
                        b'n' => self.push(b'\n'),
                        b't' => self.push(b'\t'),
                        b'r' => self.push(b'\r'),
                        b'b' => self.push(8),
                        b'f' => self.push(12),
                        other => self.push(other),
                    }
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, byte: u8) {
        if self.string.len() < MAX_NAME {
            self.string.push(byte);
        } else {
            self.long = true;
        }
    }

    fn push_code(&mut self, code: u16) {
        let c = match (self.high.take(), code) {
            (None, 0xD800..=0xDBFF) => {
                self.high = Some(code);
                return;
            }
            (Some(high), 0xDC00..=0xDFFF) => {
                let scalar =
                    0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(code) - 0xDC00);
                char::from_u32(scalar)
            }
            (_, code) => char::from_u32(u32::from(code)),
        };
        let mut buf = [0u8; 4];
        for &b in c.unwrap_or('\u{FFFD}').encode_utf8(&mut buf).as_bytes() {
            self.push(b);
        }
    }
}

/// A JSON key read as `_method` (exactly, in any case: JSON keys are not mangled).
fn is_method_key(key: &[u8]) -> bool {
    key.len() == 7 && key[0] == b'_' && key[1..].eq_ignore_ascii_case(b"method")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn names(methods: &Methods) -> Vec<&str> {
        methods.iter().map(Method::as_str).collect()
    }

    fn scan_body(content_type: &str, pieces: &[&[u8]]) -> Result<Vec<String>, OverrideError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        let mut scan = body_scan(&headers)?.expect("a scanned type");
        let mut methods = Methods::new();
        for piece in pieces {
            scan.feed(piece, &mut methods)?;
        }
        scan.finish(&mut methods)?;
        Ok(methods.iter().map(|m| m.to_string()).collect())
    }

    #[test]
    fn headers_name_methods_in_any_spelling_of_their_value() {
        let mut headers = HeaderMap::new();
        headers.append("x-http-method-override", HeaderValue::from_static("delete"));
        headers.append("x-http-method", HeaderValue::from_static("PUT, delete"));
        let mut methods = Methods::new();
        from_headers(&headers, &mut methods).unwrap();
        assert_eq!(names(&methods), ["DELETE", "PUT"]);
        for bad in ["DEL ETE", "GET/", "A1", "x".repeat(21).as_str()] {
            let mut headers = HeaderMap::new();
            headers.insert("x-method-override", HeaderValue::from_str(bad).unwrap());
            assert_eq!(
                from_headers(&headers, &mut Methods::new()),
                Err(OverrideError::InvalidMethod),
                "{bad}"
            );
        }
    }

    #[test]
    fn query_fields_are_named_as_php_names_them() {
        for query in [
            "_method=DELETE",
            "a=1&_method=delete&b=2",
            "%5Fmethod=DELETE",
            "%5fMETHOD=DELETE",
            ".method=DELETE",
            "+_method=DELETE",
            "%20%20_method=DELETE",
            "_method[]=DELETE",
            "_method=%44ELETE",
            "a=1;_method=DELETE",
        ] {
            let mut methods = Methods::new();
            from_query(query, &mut methods).unwrap();
            assert_eq!(names(&methods), ["DELETE"], "{query}");
        }
        // PHP drops leading spaces before it reads ` ` as `_`: ` method` is `method`.
        for query in [
            "method=DELETE",
            " method=DELETE",
            "x_method=DELETE",
            "_methods=DELETE",
            "a=_method",
            "",
        ] {
            let mut methods = Methods::new();
            from_query(query, &mut methods).unwrap();
            assert!(methods.is_empty(), "{query}");
        }
        assert_eq!(
            from_query("_method=DELETE%00", &mut Methods::new()),
            Err(OverrideError::InvalidMethod)
        );
    }

    #[test]
    fn multipart_parts_named_method_are_read() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhello\r\n\
                     --XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n\
                     --XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\
                     Content-Type: text/plain\r\n\r\n--XyZnot a delimiter\r\n--XyZ--\r\n";
        assert_eq!(
            scan_body("multipart/form-data; boundary=XyZ", &[body]).unwrap(),
            ["DELETE"]
        );
        // However the bytes are split.
        for cut in 1..body.len() {
            assert_eq!(
                scan_body(
                    "multipart/form-data; boundary=\"XyZ\"",
                    &[&body[..cut], &body[cut..]]
                )
                .unwrap(),
                ["DELETE"],
                "split at {cut}"
            );
        }
        for disposition in [
            "form-data; name=_method",
            "form-data; name='_method'",
            "form-data; filename=\"x\"; name=\"_method\"",
            "form-data; name*=utf-8''%5Fmethod",
            "form-data; name=\" _method\"",
            "form-data; name=\".method\"",
            "FORM-DATA; NAME=\"_METHOD\"",
        ] {
            let body = format!("--b\r\nContent-Disposition: {disposition}\r\n\r\nPUT\r\n--b--\r\n");
            assert_eq!(
                scan_body("multipart/form-data; boundary=b", &[body.as_bytes()]).unwrap(),
                ["PUT"],
                "{disposition}"
            );
        }
        // Not the field: another name, a name that only contains it.
        for disposition in [
            "form-data; name=\"payment_method\"",
            "form-data; filename=\"_method\"",
        ] {
            let body =
                format!("--b\r\nContent-Disposition: {disposition}\r\n\r\nCARD\r\n--b--\r\n");
            assert!(
                scan_body("multipart/form-data; boundary=b", &[body.as_bytes()])
                    .unwrap()
                    .is_empty()
            );
        }
        assert_eq!(
            scan_body("multipart/form-data", &[b""]),
            Err(OverrideError::NoBoundary)
        );
    }

    #[test]
    fn json_keys_named_method_are_read() {
        for body in [
            r#"{"_method":"DELETE"}"#,
            r#"{ "a": {"b": [1, "x"]}, "_method" : "delete" }"#,
            r#"{"\u005fmethod":"DELETE"}"#,
            r#"{"_method":"\u0044ELETE"}"#,
            r#"{"nested":{"_method":"DELETE"}}"#,
        ] {
            assert_eq!(
                scan_body("application/json", &[body.as_bytes()]).unwrap(),
                ["DELETE"],
                "{body}"
            );
        }
        for body in [
            r#"{"_method":1}"#,
            r#"{"_method":["DELETE"]}"#,
            r#"{"x":"_method"}"#,
            r#"["_method","DELETE"]"#,
            r#"{"a\"_method":"DELETE"}"#,
        ] {
            assert!(
                scan_body("application/vnd.api+json", &[body.as_bytes()])
                    .unwrap()
                    .is_empty(),
                "{body}"
            );
        }
    }

    proptest! {
        /// A form, however split, names exactly the `_method` values a whole parse
        /// (`serde_urlencoded`) finds.
        #[test]
        fn urlencoded_scanning_agrees_with_a_whole_parse(
            pairs in proptest::collection::vec(
                (prop::sample::select(vec!["_method", "a", "%5Fmethod", "b+c", "method"]),
                 prop::sample::select(vec!["PUT", "DELETE", "x%20y", ""])),
                0..5),
            cut in any::<prop::sample::Index>(),
        ) {
            let body = pairs.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("&");
            let parsed: Vec<(String, String)> = serde_urlencoded::from_str(&body).unwrap();
            let expected: Vec<String> = parsed
                .into_iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("_method"))
                .map(|(_, v)| v.to_uppercase())
                .collect();
            let at = cut.index(body.len() + 1);
            let got = scan_body("application/x-www-form-urlencoded", &[&body.as_bytes()[..at], &body.as_bytes()[at..]]);
            match got {
                Ok(mut got) => {
                    let mut expected = expected;
                    expected.dedup();
                    got.dedup();
                    let mut e = expected.clone();
                    e.sort();
                    e.dedup();
                    got.sort();
                    prop_assert_eq!(got, e);
                }
                Err(e) => prop_assert!(expected.iter().any(|v| v.is_empty() || v.contains(' ')), "{e:?}"),
            }
        }
    }
}
