//! `store export` and `store import`: every user, token and session of a store as JSON
//! lines, and back into any store, sled or a database, with token ids and hashes kept so
//! that the tokens already issued keep working.
//!
//! The dump is one JSON object per line: a header, then users, tokens and sessions, each
//! tagged by `type`. Times are RFC 3339 in UTC. It holds hashes, never a plaintext token
//! or cookie value, but those hashes and the password hashes are still secrets to keep.
//!
//! Import also takes rows of Sanctum's `personal_access_tokens` as a database prints them
//! as JSON (PostgreSQL's `row_to_json`, MySQL's `JSON_OBJECT`), so the tokens of a Laravel
//! app can move into sled without the app's database being reachable from tokengate.

use crate::clock::Timestamp;
use crate::credential::session::SessionHash;
use crate::credential::token::{TokenHash, TokenId};
use crate::store::{
    ImportBatch, ImportCounts, SessionRecord, Store, StoreError, TokenQuery, TokenRecord,
    UserRecord,
};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

/// The header's `format`.
pub const FORMAT: &str = "tokengate-store";
/// The header's `version`: what this build writes and reads.
pub const VERSION: u32 = 1;

/// Records read per page on export, and written per transaction on import.
const BATCH: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("lines {first} to {last}: {source}")]
    Batch {
        first: usize,
        last: usize,
        source: StoreError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot {0}")]
    Io(String),
}

/// How many of each were exported.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    pub users: usize,
    pub tokens: usize,
    pub sessions: usize,
}

/// Writes every user, token and session of `store` to `out`.
pub async fn export(store: &dyn Store, out: &mut dyn Write) -> Result<Exported, TransferError> {
    let mut counts = Exported::default();
    write_line(
        out,
        &Line::Header(Header {
            format: FORMAT.into(),
            version: VERSION,
        }),
    )?;
    let mut after = None;
    loop {
        let page = store.list_users(after.take(), BATCH).await?;
        for user in &page {
            write_line(out, &Line::User(UserLine::from(user)))?;
        }
        counts.users += page.len();
        match page.last() {
            Some(last) if page.len() == BATCH => after = Some(last.name.clone()),
            _ => break,
        }
    }
    let mut after = None;
    loop {
        let page = store
            .list_tokens(TokenQuery {
                user: None,
                after,
                limit: BATCH,
            })
            .await?;
        for token in &page {
            write_line(out, &Line::Token(TokenLine::from(token)))?;
        }
        counts.tokens += page.len();
        match page.last() {
            Some(last) if page.len() == BATCH => after = Some(last.id),
            _ => break,
        }
    }
    for session in store.list_sessions(None).await? {
        write_line(out, &Line::Session(SessionLine::from(&session)))?;
        counts.sessions += 1;
    }
    out.flush()
        .map_err(|e| TransferError::Io(format!("write the dump: {e}")))?;
    Ok(counts)
}

/// Reads a dump (or Sanctum rows) from `input` into `store`, `BATCH` records per
/// transaction. A record already stored the same is counted, not written again, so an
/// interrupted import can simply be run again. A Sanctum row must be of `tokenable_type`.
pub async fn import(
    store: &dyn Store,
    input: &mut dyn BufRead,
    tokenable_type: &str,
) -> Result<ImportCounts, TransferError> {
    let mut counts = ImportCounts::default();
    let mut batch = ImportBatch::default();
    let mut first = 1;
    let mut number = 0;
    let mut line = String::new();
    loop {
        line.clear();
        let read = input
            .read_line(&mut line)
            .map_err(|e| TransferError::Io(format!("read line {}: {e}", number + 1)))?;
        if read == 0 {
            break;
        }
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let at_line = |message: String| TransferError::Line {
            line: number,
            message,
        };
        match parse(&line, tokenable_type).map_err(at_line)? {
            Record::Header => {}
            Record::User(user) => batch.users.push(user),
            Record::Token(token) => batch.tokens.push(token),
            Record::Session(session) => batch.sessions.push(session),
        }
        if batch.len() >= BATCH {
            counts.add(write_batch(store, std::mem::take(&mut batch), first, number).await?);
            first = number + 1;
        }
    }
    if !batch.is_empty() {
        counts.add(write_batch(store, batch, first, number).await?);
    }
    Ok(counts)
}

async fn write_batch(
    store: &dyn Store,
    batch: ImportBatch,
    first: usize,
    last: usize,
) -> Result<ImportCounts, TransferError> {
    store
        .import(batch)
        .await
        .map_err(|source| TransferError::Batch {
            first,
            last,
            source,
        })
}

fn write_line(out: &mut dyn Write, line: &Line) -> Result<(), TransferError> {
    serde_json::to_writer(&mut *out, line)
        .map_err(|e| TransferError::Io(format!("write the dump: {e}")))?;
    out.write_all(b"\n")
        .map_err(|e| TransferError::Io(format!("write the dump: {e}")))
}

/// A line of the dump as written.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Line {
    Header(Header),
    User(UserLine),
    Token(TokenLine),
    Session(SessionLine),
}

/// A line as read.
#[derive(Debug)]
enum Record {
    Header,
    User(UserRecord),
    Token(TokenRecord),
    Session(SessionRecord),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserLine {
    name: String,
    /// argon2id, PHC string; `null`: no built-in login.
    password_hash: Option<String>,
    created_at: Time,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenLine {
    id: u64,
    user: String,
    name: String,
    /// SHA-256 of the secret, lowercase hex (Sanctum's `token` column).
    hash: String,
    abilities: Vec<String>,
    created_at: Time,
    expires_at: Option<Time>,
    last_used_at: Option<Time>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionLine {
    /// SHA-256 of the cookie value, lowercase hex.
    hash: String,
    user: String,
    created_at: Time,
    expires_at: Time,
    last_seen: Time,
}

/// A row of Sanctum's table as a database prints it as JSON. Other columns are ignored.
#[derive(Deserialize)]
struct SanctumRow {
    id: Number,
    tokenable_type: Option<String>,
    tokenable_id: Number,
    name: String,
    token: String,
    /// The JSON text Laravel writes (`["read"]`), or already a list.
    abilities: Option<Abilities>,
    created_at: Option<Time>,
    expires_at: Option<Time>,
    last_used_at: Option<Time>,
}

/// A number, or a number in a string (some clients print `bigint` so).
#[derive(Deserialize)]
#[serde(untagged)]
enum Number {
    Int(u64),
    Text(String),
}

impl Number {
    fn get(&self, what: &str) -> Result<u64, String> {
        match self {
            Number::Int(n) => Ok(*n),
            Number::Text(s) => s
                .parse()
                .map_err(|_| format!("{what} {s:?} is not a whole number")),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Abilities {
    List(Vec<String>),
    Json(String),
}

/// A time in the dump: RFC 3339 when written; when read, also a database's rendering of a
/// `timestamp` column (`2026-11-30 07:00:00`, `2026-11-30T07:00:00.000000`, taken as UTC
/// as Laravel writes them) or unix seconds.
#[derive(Debug, Clone, Copy)]
struct Time(Timestamp);

impl Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let at = OffsetDateTime::from_unix_timestamp(self.0)
            .map_err(|e| serde::ser::Error::custom(format!("time {}: {e}", self.0)))?;
        let text = at.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(i64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Seconds(n) => Ok(Time(n)),
            Raw::Text(text) => parse_time(&text).map(Time).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{text:?} is not a time (RFC 3339, YYYY-MM-DD HH:MM:SS in UTC, or unix seconds)"
                ))
            }),
        }
    }
}

fn parse_time(text: &str) -> Option<Timestamp> {
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(at.unix_timestamp());
    }
    let wall = format_description!(
        "[year]-[month]-[day][first [ ][T]][hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    PrimitiveDateTime::parse(text, wall)
        .ok()
        .map(|at| at.assume_utc().unix_timestamp())
}

impl From<&UserRecord> for UserLine {
    fn from(user: &UserRecord) -> Self {
        Self {
            name: user.name.clone(),
            password_hash: user.password_hash.clone(),
            created_at: Time(user.created_at),
        }
    }
}

impl From<&TokenRecord> for TokenLine {
    fn from(token: &TokenRecord) -> Self {
        Self {
            id: token.id.0,
            user: token.user.clone(),
            name: token.name.clone(),
            hash: token.hash.to_hex(),
            abilities: token.abilities.clone(),
            created_at: Time(token.created_at),
            expires_at: token.expires_at.map(Time),
            last_used_at: token.last_used_at.map(Time),
        }
    }
}

impl From<&SessionRecord> for SessionLine {
    fn from(session: &SessionRecord) -> Self {
        Self {
            hash: TokenHash(session.hash.0).to_hex(),
            user: session.user.clone(),
            created_at: Time(session.created_at),
            expires_at: Time(session.expires_at),
            last_seen: Time(session.last_seen),
        }
    }
}

/// One line: a record of the dump, by its `type`, or a Sanctum row (no `type`, a
/// `tokenable_id`). Everything is checked as the commands that make records check it.
fn parse(line: &str, tokenable_type: &str) -> Result<Record, String> {
    let mut value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Some(object) = value.as_object_mut() else {
        return Err("not a JSON object".into());
    };
    let kind = match object.remove("type") {
        Some(serde_json::Value::String(kind)) => kind,
        Some(_) => return Err("\"type\" is not a string".into()),
        None if object.contains_key("tokenable_id") => {
            return sanctum_row(value, tokenable_type).map(Record::Token)
        }
        None => {
            return Err(
                "neither a line of `tokengate store export` (no \"type\") nor a row of Sanctum's tokens table (no \"tokenable_id\")"
                    .into(),
            )
        }
    };
    let fields = |e: serde_json::Error| format!("a {kind} line: {e}");
    match kind.as_str() {
        "header" => {
            let header: Header = serde_json::from_value(value).map_err(fields)?;
            if header.format != FORMAT || header.version != VERSION {
                return Err(format!(
                    "a dump of format {:?} version {}: this tokengate reads {FORMAT:?} version {VERSION}",
                    header.format, header.version
                ));
            }
            Ok(Record::Header)
        }
        "user" => user(serde_json::from_value(value).map_err(fields)?).map(Record::User),
        "token" => token(serde_json::from_value(value).map_err(fields)?).map(Record::Token),
        "session" => session(serde_json::from_value(value).map_err(fields)?).map(Record::Session),
        other => Err(format!(
            "unknown \"type\" {other:?} (header, user, token or session)"
        )),
    }
}

fn user(line: UserLine) -> Result<UserRecord, String> {
    crate::users::check_name(&line.name).map_err(|e| format!("user {:?}: {e}", line.name))?;
    if let Some(hash) = &line.password_hash {
        crate::users::check_password_hash(hash).map_err(|e| format!("user {}: {e}", line.name))?;
    }
    Ok(UserRecord {
        name: line.name,
        password_hash: line.password_hash,
        created_at: line.created_at.0,
    })
}

fn token(line: TokenLine) -> Result<TokenRecord, String> {
    let id = line.id;
    let fail = |message: String| format!("token {id}: {message}");
    if id == 0 || i64::try_from(id).is_err() {
        return Err(fail("an id is 1 to 2^63-1".into()));
    }
    crate::token_cache::check_user(&line.user).map_err(|e| fail(e.to_string()))?;
    if line.name.chars().count() > 255 {
        return Err(fail("a token name is at most 255 characters".into()));
    }
    let hash = TokenHash::from_hex(&line.hash)
        .ok_or_else(|| fail("the hash is not a SHA-256 in hex".into()))?;
    let mut abilities = line.abilities;
    abilities.sort();
    abilities.dedup();
    Ok(TokenRecord {
        id: TokenId(id),
        user: line.user,
        name: line.name,
        hash,
        abilities,
        created_at: line.created_at.0,
        expires_at: line.expires_at.map(|t| t.0),
        last_used_at: line.last_used_at.map(|t| t.0),
    })
}

fn session(line: SessionLine) -> Result<SessionRecord, String> {
    crate::users::check_name(&line.user).map_err(|e| format!("a session's user: {e}"))?;
    let hash = TokenHash::from_hex(&line.hash)
        .ok_or_else(|| "a session's hash is not a SHA-256 in hex".to_owned())?;
    Ok(SessionRecord {
        hash: SessionHash(hash.0),
        user: line.user,
        created_at: line.created_at.0,
        expires_at: line.expires_at.0,
        last_seen: line.last_seen.0,
    })
}

/// A Sanctum row as a token: `tokenable_id` is its user; a row of another model than
/// `tokenable_type` is refused rather than given to a user of the same number.
fn sanctum_row(value: serde_json::Value, tokenable_type: &str) -> Result<TokenRecord, String> {
    let row: SanctumRow =
        serde_json::from_value(value).map_err(|e| format!("a Sanctum row: {e}"))?;
    if let Some(kind) = row
        .tokenable_type
        .as_deref()
        .filter(|k| *k != tokenable_type)
    {
        return Err(format!(
            "a token of tokenable_type {kind}, not {tokenable_type}: export only that model's rows \
             (WHERE tokenable_type = ...), or name it with --tokenable-type"
        ));
    }
    let abilities = match row.abilities {
        None => Vec::new(),
        Some(Abilities::List(list)) => list,
        Some(Abilities::Json(text)) if text.trim().is_empty() => Vec::new(),
        Some(Abilities::Json(text)) => serde_json::from_str(&text)
            .map_err(|e| format!("abilities {text:?} are not a JSON list of strings: {e}"))?,
    };
    token(TokenLine {
        id: row.id.get("id")?,
        user: row.tokenable_id.get("tokenable_id")?.to_string(),
        name: row.name,
        hash: row.token,
        abilities,
        // Laravel leaves `created_at` NULL only when timestamps are turned off.
        created_at: row.created_at.unwrap_or(Time(0)),
        expires_at: row.expires_at,
        last_used_at: row.last_used_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn times_read_as_databases_print_them() {
        for text in [
            "\"2026-11-30T07:00:00Z\"",
            "\"2026-11-30T08:00:00+01:00\"",
            "\"2026-11-30 07:00:00\"",
            "\"2026-11-30T07:00:00\"",
            "\"2026-11-30 07:00:00.000000\"",
            "1796022000",
        ] {
            let time: Time = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(time.0, 1_796_022_000, "{text}");
        }
        for bad in [
            "\"yesterday\"",
            "\"2026-11-30\"",
            "\"2026-13-01 00:00:00\"",
            "1.5",
        ] {
            assert!(serde_json::from_str::<Time>(bad).is_err(), "{bad}");
        }
        assert_eq!(
            serde_json::to_string(&Time(1_796_022_000)).unwrap(),
            "\"2026-11-30T07:00:00Z\""
        );
    }

    #[test]
    fn lines_are_checked() {
        let parsed = |line: &str| parse(line, "App\\Models\\User");
        let token = format!(
            r#"{{"type":"token","id":7,"user":"42","name":"ci","hash":"{HASH}","abilities":["read","create","read"],"created_at":"2026-11-30T07:00:00Z","expires_at":null,"last_used_at":null}}"#
        );
        let Ok(Record::Token(record)) = parsed(&token) else {
            panic!("{token}")
        };
        assert_eq!(record.id, TokenId(7));
        assert_eq!(record.abilities, ["create", "read"]);
        for (bad, says) in [
            (token.replace("\"id\":7", "\"id\":0"), "an id is"),
            (token.replace(HASH, "abc"), "not a SHA-256"),
            (token.replace("\"42\"", "\"4 2\""), "user id"),
            (
                token.replace("\"ci\"", "\"ci\",\"extra\":1"),
                "unknown field",
            ),
            (token.replace("\"token\"", "\"tokens\""), "unknown \"type\""),
            ("[1]".to_owned(), "not a JSON object"),
            ("{}".to_owned(), "neither"),
            (
                r#"{"type":"header","format":"tokengate-store","version":2}"#.to_owned(),
                "version 2",
            ),
            (
                r#"{"type":"user","name":"alice","password_hash":"hunter2","created_at":0}"#
                    .to_owned(),
                "password hash",
            ),
        ] {
            let e = parsed(&bad).expect_err(&bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn sanctum_rows_are_tokens_of_their_tokenable_id() {
        let row = format!(
            r#"{{"id":12,"tokenable_type":"App\\Models\\User","tokenable_id":42,"name":"from laravel","token":"{HASH}","abilities":"[\"read\"]","last_used_at":null,"expires_at":null,"created_at":"2026-11-30T07:00:00","updated_at":"2026-11-30T07:00:00"}}"#
        );
        let Ok(Record::Token(record)) = parse(&row, "App\\Models\\User") else {
            panic!("{row}")
        };
        assert_eq!((record.id, record.user.as_str()), (TokenId(12), "42"));
        assert_eq!(record.abilities, ["read"]);
        assert_eq!(record.created_at, 1_796_022_000);
        let team = parse(&row, "App\\Models\\Team").unwrap_err();
        assert!(team.contains("tokenable_type"), "{team}");
    }
}
