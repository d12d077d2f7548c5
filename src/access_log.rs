//! The access log: one line per request on stdout, as text (`key=value`) or JSON, when
//! `access_log.enabled`. It names the route, the decision, the status, the latency and who
//! asked (token id and user, or the session's user) — never a token, cookie or password,
//! and the path without its query string (which may carry secrets).

use crate::config::AccessLogFormat;
use std::io::Write;

/// What is known of a request once it is answered.
pub struct Entry<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub decision: &'a str,
    pub status: u16,
    pub latency_ms: f64,
    pub auth: &'a str,
    pub user: Option<&'a str>,
    pub token_id: Option<u64>,
    /// Why tokengate answered itself (its client message), if it did.
    pub reason: Option<&'a str>,
}

pub fn write(format: AccessLogFormat, entry: &Entry<'_>) {
    // One write per line, so lines from different workers never interleave.
    let _ = std::io::stdout()
        .lock()
        .write_all(line(format, entry).as_bytes());
}

/// The line for an entry, newline included.
fn line(format: AccessLogFormat, entry: &Entry<'_>) -> String {
    let mut line = match format {
        AccessLogFormat::Json => serde_json::json!({
            "method": entry.method,
            "path": entry.path,
            "route": entry.route,
            "decision": entry.decision,
            "status": entry.status,
            "latency_ms": (entry.latency_ms * 1000.0).round() / 1000.0,
            "auth": entry.auth,
            "user": entry.user,
            "token_id": entry.token_id,
            "reason": entry.reason,
        })
        .to_string(),
        AccessLogFormat::Text => format!(
            "method={} path={:?} route={:?} decision={} status={} latency_ms={:.3} auth={} user={} token_id={} reason={}",
            entry.method,
            entry.path,
            entry.route,
            entry.decision,
            entry.status,
            entry.latency_ms,
            entry.auth,
            entry.user.map_or_else(|| "-".to_owned(), |u| format!("{u:?}")),
            entry.token_id.map_or_else(|| "-".to_owned(), |id| id.to_string()),
            entry.reason.map_or_else(|| "-".to_owned(), |r| format!("{r:?}")),
        ),
    };
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            method: "GET",
            path: "/api/posts/1",
            route: "/api/posts/{id}",
            decision: "allowed",
            status: 200,
            latency_ms: 0.4123,
            auth: "token",
            user: Some("42"),
            token_id: Some(7),
            reason: None,
        }
    }

    #[test]
    fn text_lines_are_key_value_pairs() {
        let line = line(AccessLogFormat::Text, &entry());
        assert_eq!(
            line,
            "method=GET path=\"/api/posts/1\" route=\"/api/posts/{id}\" decision=allowed status=200 latency_ms=0.412 auth=token user=\"42\" token_id=7 reason=-\n"
        );
        let refused = Entry {
            user: None,
            token_id: None,
            decision: "bad_request",
            status: 400,
            reason: Some("More than one Host header."),
            ..entry()
        };
        assert!(line_of(&refused)
            .ends_with("user=- token_id=- reason=\"More than one Host header.\"\n"));
    }

    #[test]
    fn json_lines_parse() {
        let line = line(AccessLogFormat::Json, &entry());
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["route"], "/api/posts/{id}");
        assert_eq!(json["token_id"], 7);
        assert_eq!(json["latency_ms"], 0.412);
    }

    fn line_of(entry: &Entry<'_>) -> String {
        line(AccessLogFormat::Text, entry)
    }
}
