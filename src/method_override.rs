//! Which methods an upstream may run a request as. Laravel and Symfony run the method a
//! POST names in `X-HTTP-Method-Override` or a `_method` field (query string, form,
//! multipart, and with Laravel a JSON body); Rails' Rack and Express's `method-override` do
//! the same with the header and form fields. tokengate authorizes a request under its own
//! method and under every method it names this way (`decision`). Pure.
//!
//! Read generously, so that nothing an upstream takes as an override is missed: header
//! values (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`) on any method,
//! every comma-separated element of every line; `_method` in the query string, in an
//! urlencoded or multipart form and anywhere in a JSON body of a POST, with the field name
//! read as PHP, Rack and Express's `qs` read it (`is_method_field`), in any case. A part of
//! a multipart form is named by any `name=` in its head (as Rack's pattern finds it), and by
//! its `Content-ID`. A value that is not a method token (letters only, at most 20) is
//! refused with 400, as Symfony refuses it. What cannot be read the way the upstream reads
//! it is refused too: a compressed body, a charset other than UTF-8 or ASCII (Express
//! decodes UTF-16 JSON), two `Content-Type`s, a missing, repeated or padded boundary.
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
/// Blanks allowed between a JSON `_method` key's colon and its value.
const MAX_GAP: usize = 64;

/// Why a request's method cannot be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub enum OverrideError {
    InvalidMethod,
    TooMany,
    LongName,
    NoBoundary,
    LongPartHead,
    /// Reading it as the upstream does needs a decoding tokengate does not do: 415.
    Unreadable,
}

impl OverrideError {
    /// The client's message.
    pub fn message(self) -> &'static str {
        match self {
            OverrideError::InvalidMethod => "The method override is not a valid method.",
            OverrideError::TooMany => "The request names too many methods.",
            OverrideError::LongName => "The request body's form field names are too long to check.",
            OverrideError::NoBoundary => {
                "The request body's form boundary is missing, repeated or malformed."
            }
            OverrideError::LongPartHead => {
                "The request body's form part headers are too large to check."
            }
            OverrideError::Unreadable => {
                "The request body's type, encoding or charset does not let tokengate check it for a method override."
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

/// Whether a (percent-decoded) field name is `_method` as some upstream reads it: PHP cuts
/// a name at NUL, drops leading spaces and reads `.` and ` ` as `_`; Rack drops leading
/// brackets (`\A[\[\]]*([^\[\]]+)`); PHP, Rack and `qs` read `_method[…]` and
/// `[_method]` as `_method`. In any case.
fn is_method_field(decoded: &[u8]) -> bool {
    let name = decoded.split(|&b| b == 0).next().unwrap_or_default();
    let start = name
        .iter()
        .position(|&b| !matches!(b, b' ' | b'[' | b']'))
        .unwrap_or(name.len());
    let name = &name[start..];
    let end = name
        .iter()
        .position(|&b| b == b'[' || b == b']')
        .unwrap_or(name.len());
    let name = &name[..end];
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
    let mut types = headers.get_all(CONTENT_TYPE).iter();
    let (value, more) = (types.next(), types.next());
    let Some(value) = value else {
        scan.form = Some(Urlencoded::default());
        return Ok(Some(scan));
    };
    // Servers differ on which of two types counts (php -S takes the first).
    if more.is_some() {
        return Err(OverrideError::Unreadable);
    }
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
    if scan.form.is_none() && scan.multipart.is_none() && scan.json.is_none() {
        return Ok(None);
    }
    // A body read after a decoding tokengate does not do cannot be checked.
    let encoded = headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"identity"));
    if encoded || !plain_charset(&lower) {
        return Err(OverrideError::Unreadable);
    }
    Ok(Some(scan))
}

/// Whether a (lower case) `Content-Type`'s charset, if it names one, reads bytes as ASCII
/// does: `_method` is then the same bytes whatever reads it.
fn plain_charset(content_type: &[u8]) -> bool {
    let Some(at) = content_type.windows(8).position(|w| w == b"charset=") else {
        return true;
    };
    let charset = content_type[at + 8..]
        .split(|&b| b == b';' || b == b',')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let charset = charset.strip_prefix(b"\"").unwrap_or(charset);
    let charset = charset.strip_suffix(b"\"").unwrap_or(charset);
    matches!(
        charset,
        b"utf-8" | b"utf8" | b"us-ascii" | b"ascii" | b"iso-8859-1" | b"latin1"
    )
}

/// The `boundary` parameter of a multipart `Content-Type`, quoted or not. Refused when it is
/// missing, given twice (in any case), not the first `boundary` in the value (PHP takes the
/// first it finds), or padded with blanks, which servers read apart.
fn boundary(content_type: &[u8]) -> Result<Vec<u8>, OverrideError> {
    let lower = content_type.to_ascii_lowercase();
    // Where each parameter's key starts, for keys that are `boundary`.
    let mut keys = Vec::new();
    let mut start = 0;
    for piece in lower.split(|&b| b == b';') {
        let key_at = start + (piece.len() - piece.trim_ascii_start().len());
        let key = piece
            .split(|&b| b == b'=')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        if key == b"boundary" {
            keys.push(key_at);
        }
        start += piece.len() + 1;
    }
    let first = lower.windows(8).position(|w| w == b"boundary");
    let ([at], Some(first)) = (keys.as_slice(), first) else {
        return Err(OverrideError::NoBoundary);
    };
    if first != *at {
        return Err(OverrideError::NoBoundary);
    }
    let rest = content_type[at + 8..]
        .trim_ascii_start()
        .strip_prefix(b"=")
        .ok_or(OverrideError::NoBoundary)?;
    let value = match rest.strip_prefix(b"\"") {
        Some(quoted) => quoted.split(|&b| b == b'"').next().unwrap_or_default(),
        None => rest
            .split(|&b| b == b';' || b == b',')
            .next()
            .unwrap_or_default(),
    };
    if value.is_empty() || value.len() > 200 || value.trim_ascii().len() != value.len() {
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

/// Where a part's head ends and how long the line that ends it is: the first line that is
/// empty once one trailing CR is dropped (as PHP reads it): `\n\n` or `\n\r\n`.
fn head_end(bytes: &[u8]) -> Option<(usize, usize)> {
    let lf = memchr::memmem::find(bytes, b"\n\n").map(|at| (at, 2));
    let crlf = memchr::memmem::find(bytes, b"\n\r\n").map(|at| (at, 3));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Whether a part's head names the `_method` field. Read more widely than any one server:
/// every `name=` or `name*=` anywhere in the head (Rack's pattern matches across header
/// lines; PHP joins continuation lines), the value quoted (up to its closing quote, escaped
/// or not) or bare (up to a blank, `;` or `,`), and the `Content-ID` (Rack's name for a part
/// without one).
fn part_is_method(head: &[u8]) -> bool {
    let lower = head.to_ascii_lowercase();
    for (at, _) in lower.windows(4).enumerate().filter(|(_, w)| *w == b"name") {
        let mut rest = &head[at + 4..];
        let extended = rest.first() == Some(&b'*');
        if extended {
            rest = &rest[1..];
        }
        let Some(rest) = rest.trim_ascii_start().strip_prefix(b"=") else {
            continue;
        };
        let rest = rest.trim_ascii_start();
        let candidates: Vec<Vec<u8>> = match rest.first() {
            Some(&quote @ (b'"' | b'\'')) => {
                let inner = &rest[1..];
                let until = |bytes: &[u8]| {
                    bytes
                        .split(|&b| b == quote)
                        .next()
                        .unwrap_or_default()
                        .to_vec()
                };
                vec![until(inner), until(&unescape(inner))]
            }
            _ => {
                let bare = rest
                    .split(|&b| b.is_ascii_whitespace() || b == b';' || b == b',')
                    .next()
                    .unwrap_or_default();
                // RFC 5987: charset'language'percent-encoded.
                let encoded = bare.rsplit(|&b| b == b'\'').next().unwrap_or(bare);
                vec![
                    bare.to_vec(),
                    percent_encoding::percent_decode(encoded).collect(),
                ]
            }
        };
        if candidates.iter().any(|c| is_method_field(c)) {
            return true;
        }
    }
    head.split(|&b| b == b'\n').any(|line| {
        let line = line.trim_ascii();
        line.len() > 11
            && line[..11].eq_ignore_ascii_case(b"content-id:")
            && is_method_field(
                line[11..]
                    .trim_ascii()
                    .trim_ascii_start()
                    .strip_prefix(b"<")
                    .map_or(line[11..].trim_ascii(), |l| {
                        l.strip_suffix(b">").unwrap_or(l)
                    }),
            )
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
    /// Blanks after a `_method` key's colon, before its value (bounded: the bytes that hold
    /// a `_method` are held back from the upstream until it ends).
    gap: usize,
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
                            self.gap = 0;
                        }
                        self.after_string = false;
                    }
                    b' ' | b'\t' | b'\r' | b'\n' => {
                        if self.method_key {
                            self.gap += 1;
                            if self.gap > MAX_GAP {
                                return Err(OverrideError::InvalidMethod);
                            }
                        }
                    }
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
                    _ => {
                        self.push(byte);
                        if self.method_value && self.string.len() > 3 * MAX_METHOD {
                            return Err(OverrideError::InvalidMethod);
                        }
                    }
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
        // As PHP and Rack read part heads (bypasses an attack review found).
        for head in [
            "Content-Disposition: form-data; name=_method x",
            "Content-Disposition: form-data; name=\"_method\"x",
            "Content-Disposition: form-data\r\n; name=\"_method\"",
            "Content-Disposition: form-data;\r\n name=\"_method\"",
            "Content-Disposition: form-data\r\nContent-ID: _method",
            "X-Foo: Content-Disposition:;name=_method",
            "Content-Disposition: form-data; name=\"[_method]\"",
            "Content-Disposition: form-data; name=\"_method\u{0}x\"",
            // `filename=` holds `name=`: read as a name too (stricter, never weaker).
            "Content-Disposition: form-data; filename=\"_method\"",
        ] {
            let body = format!("--b\r\n{head}\r\n\r\nPUT\r\n--b--\r\n");
            assert_eq!(
                scan_body("multipart/form-data; boundary=b", &[body.as_bytes()]).unwrap(),
                ["PUT"],
                "{head:?}"
            );
        }
        // A head ended by a line holding only CR (PHP).
        let body = b"--b\r\nContent-Disposition: form-data; name=\"_method\"\n\r\nPUT\r\n--b--\r\n";
        assert_eq!(
            scan_body("multipart/form-data; boundary=b", &[body]).unwrap(),
            ["PUT"]
        );
        // Not the field: another name that only contains it.
        for disposition in [
            "form-data; name=\"payment_method\"",
            "form-data; name=method",
        ] {
            let body =
                format!("--b\r\nContent-Disposition: {disposition}\r\n\r\nCARD\r\n--b--\r\n");
            assert!(
                scan_body("multipart/form-data; boundary=b", &[body.as_bytes()])
                    .unwrap()
                    .is_empty()
            );
        }
        // A boundary whose value holds the word is still one boundary.
        let body = b"--my-boundary\r\nContent-Disposition: form-data; name=_method\r\n\r\nPUT\r\n--my-boundary--\r\n";
        assert_eq!(
            scan_body("multipart/form-data; boundary=my-boundary", &[body]).unwrap(),
            ["PUT"]
        );
        for content_type in [
            "multipart/form-data",
            "multipart/form-data; boundary= b",
            "multipart/form-data; Boundary=a; boundary=b",
            "multipart/form-data; x=boundary=a; boundary=b",
        ] {
            assert_eq!(
                scan_body(content_type, &[b""]),
                Err(OverrideError::NoBoundary),
                "{content_type}"
            );
        }
    }

    #[test]
    fn bodies_read_otherwise_by_the_upstream_are_refused() {
        let scan = |pairs: &[(&str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            body_scan(&headers).map(|s| s.is_some())
        };
        let form = ("content-type", "application/x-www-form-urlencoded");
        assert_eq!(scan(&[form]), Ok(true));
        assert_eq!(scan(&[form, ("content-encoding", "identity")]), Ok(true));
        assert_eq!(
            scan(&[("content-type", "application/json; charset=UTF-8")]),
            Ok(true)
        );
        assert_eq!(scan(&[("content-type", "image/png")]), Ok(false));
        for refused in [
            &[form, ("content-encoding", "gzip")][..],
            &[form, ("content-encoding", "identity, deflate")],
            &[("content-type", "application/json; charset=utf-16le")],
            &[form, ("content-type", "multipart/form-data; boundary=zzz")],
        ] {
            assert_eq!(scan(refused), Err(OverrideError::Unreadable), "{refused:?}");
        }
    }

    #[test]
    fn field_names_as_php_rack_and_qs_read_them() {
        for name in [
            &b"_method"[..],
            b"_METHOD",
            b".method",
            b" _method",
            b"_method[]",
            b"_method[x]",
            b"[_method]",
            b"]_method",
            b"_method]",
            b"_method\0junk",
        ] {
            assert!(is_method_field(name), "{:?}", String::from_utf8_lossy(name));
        }
        for name in [
            &b"method"[..],
            b" method",
            b"x_method",
            b"_methods",
            b"_meth\0od",
            b"",
        ] {
            assert!(
                !is_method_field(name),
                "{:?}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn a_method_value_left_open_is_refused_not_held() {
        for body in [
            format!("{{\"_method\":\"{}", "A".repeat(100)),
            format!("{{\"_method\":{}", " ".repeat(100)),
        ] {
            assert_eq!(
                scan_body("application/json", &[body.as_bytes()]),
                Err(OverrideError::InvalidMethod)
            );
        }
        let form = format!("_method={}", "A".repeat(100));
        assert_eq!(
            scan_body("application/x-www-form-urlencoded", &[form.as_bytes()]),
            Err(OverrideError::InvalidMethod)
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
