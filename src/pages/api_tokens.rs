//! The self-service API token page (Jetstream's "API" screen) at `/_tokengate/api-tokens`,
//! for a logged-in session user, who sees and touches only their own tokens:
//!
//! - `GET  /_tokengate/api-tokens`                 the create form and the list;
//! - `POST /_tokengate/api-tokens`                 create; the page then shows the token once;
//! - `POST /_tokengate/api-tokens/{id}/abilities`  replace a token's abilities;
//! - `GET  /_tokengate/api-tokens/{id}/delete`     the confirmation step;
//! - `POST /_tokengate/api-tokens/{id}/delete`     delete.
//!
//! Every POST is CSRF-checked: the browser's `Sec-Fetch-Site`/`Origin`, or the form's
//! `_token` (the session's `XSRF-TOKEN`).

use super::{current_session, html_response, layout, read_form_pairs, redirect, store_failed};
use crate::app::App;
use crate::auth::csrf;
use crate::clock::{rfc3339, Timestamp};
use crate::credential::session::CookieValue;
use crate::credential::token::TokenId;
use crate::error::Rejection;
use crate::headers::{self, ConnInfo};
use crate::reserved::{wants_html, LOGIN_PATH, LOGOUT_PATH};
use crate::session_cache::Session;
use crate::store::{TokenQuery, TokenRecord};
use crate::token_cache::{CreateToken, TokenError};
use bytes::Bytes;
use http::{request, Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use maud::{html, PreEscaped};
use std::sync::Arc;

pub(super) const PATH: &str = "/_tokengate/api-tokens";

/// Copies the new token; allowed by its hash in the page's Content-Security-Policy.
const COPY_SCRIPT: &str = "document.getElementById('copy-token').addEventListener('click',function(){var b=this;navigator.clipboard.writeText(document.getElementById('new-token').textContent).then(function(){b.textContent='Copied';});});";

/// Is this path the token page's?
pub(super) fn owns(path: &str) -> bool {
    path == PATH || path.starts_with("/_tokengate/api-tokens/")
}

pub(super) async fn handle(
    app: &App,
    parts: &request::Parts,
    body: Incoming,
    conn: &ConnInfo,
) -> Result<Response<Full<Bytes>>, Rejection> {
    let Some((session, cookie)) = current_session(app, &parts.headers).await? else {
        if wants_html(&parts.headers) {
            return Ok(redirect(
                StatusCode::FOUND,
                &format!("{}?next={PATH}", LOGIN_PATH),
            ));
        }
        return Err(Rejection::Unauthenticated);
    };
    let page = Page {
        app,
        session: &session,
        xsrf: cookie.xsrf_token(),
    };
    let rest = parts.uri.path()[PATH.len()..].trim_start_matches('/');
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (&parts.method, segments.as_slice()) {
        (&Method::GET | &Method::HEAD, []) => page.index(StatusCode::OK, None, None).await,
        (&Method::POST, []) => {
            let form = checked_form(parts, body, conn, cookie).await?;
            page.create(form).await
        }
        (&Method::POST, [id, "abilities"]) => {
            let form = checked_form(parts, body, conn, cookie).await?;
            let token = page.own_token(id).await?;
            let abilities = grantable(values(&form, "abilities"));
            app.tokens
                .set_abilities(token.id, &abilities)
                .await
                .map_err(store_failed)?;
            Ok(redirect(StatusCode::SEE_OTHER, PATH))
        }
        (&Method::GET | &Method::HEAD, [id, "delete"]) => {
            let token = page.own_token(id).await?;
            Ok(page.confirm_delete(&token))
        }
        (&Method::POST, [id, "delete"]) => {
            checked_form(parts, body, conn, cookie).await?;
            let token = page.own_token(id).await?;
            app.tokens.revoke(token.id).await.map_err(store_failed)?;
            tracing::info!(user = %session.user(), token_id = %token.id, "token deleted on the token page");
            Ok(redirect(StatusCode::SEE_OTHER, PATH))
        }
        (_, [] | [_, "abilities" | "delete"]) => Err(Rejection::MethodNotAllowed),
        _ => Err(Rejection::NotFound),
    }
}

/// What a user may grant their own token on the page: the declared abilities only, as
/// Jetstream's `validPermissions` (undeclared ones are dropped by `Tokens`). `*` is never
/// offered as a checkbox, and a form that posts it anyway does not get it: an all-powerful
/// token comes only from the admin API or the CLI.
fn grantable(mut abilities: Vec<String>) -> Vec<String> {
    abilities.retain(|a| a != "*");
    abilities
}

/// The form of a POST, once it has passed the CSRF rules.
async fn checked_form(
    parts: &request::Parts,
    body: Incoming,
    conn: &ConnInfo,
    cookie: CookieValue<'_>,
) -> Result<Vec<(String, String)>, Rejection> {
    let form = read_form_pairs(body).await?;
    let (scheme, host) = headers::own_origin(parts, conn);
    let by_browser = csrf::passes(&parts.method, &parts.headers, scheme, host, cookie);
    let by_field = values(&form, "_token")
        .first()
        .is_some_and(|t| cookie.xsrf_matches(t.as_bytes()));
    if by_browser || by_field {
        Ok(form)
    } else {
        Err(Rejection::CsrfMismatch)
    }
}

fn values(form: &[(String, String)], name: &str) -> Vec<String> {
    form.iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .collect()
}

struct Page<'a> {
    app: &'a App,
    session: &'a Arc<Session>,
    xsrf: String,
}

impl Page<'_> {
    /// A token of this user's; anyone else's (or none) is a 404.
    async fn own_token(&self, id: &str) -> Result<TokenRecord, Rejection> {
        let id: u64 = id.parse().map_err(|_| Rejection::NotFound)?;
        match self
            .app
            .tokens
            .get(TokenId(id))
            .await
            .map_err(store_failed)?
        {
            Some(token) if token.user == self.session.user() => Ok(token),
            _ => Err(Rejection::NotFound),
        }
    }

    async fn create(
        &self,
        form: Vec<(String, String)>,
    ) -> Result<Response<Full<Bytes>>, Rejection> {
        let name = values(&form, "name").pop().unwrap_or_default();
        let abilities = grantable(values(&form, "abilities"));
        let expires_at = match values(&form, "expires_on").pop().filter(|d| !d.is_empty()) {
            Some(date) => match parse_date(&date) {
                Some(at) => Some(at),
                None => {
                    return self
                        .index(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            None,
                            Some("The expiry must be a date (YYYY-MM-DD)."),
                        )
                        .await
                }
            },
            None => None,
        };
        let created = self
            .app
            .tokens
            .create(CreateToken {
                user: self.session.user().to_owned(),
                name,
                abilities: Some(abilities),
                expires_at,
            })
            .await;
        match created {
            Ok(created) => {
                tracing::info!(user = %self.session.user(), token_id = %created.record.id, "token created on the token page");
                self.index(StatusCode::CREATED, Some(&created.plaintext), None)
                    .await
            }
            Err(TokenError::Invalid(message)) => {
                self.index(StatusCode::UNPROCESSABLE_ENTITY, None, Some(&message))
                    .await
            }
            Err(TokenError::Store(e)) => Err(store_failed(e)),
        }
    }

    async fn index(
        &self,
        status: StatusCode,
        new_token: Option<&str>,
        error: Option<&str>,
    ) -> Result<Response<Full<Bytes>>, Rejection> {
        let tokens = self
            .app
            .tokens
            .list(TokenQuery {
                user: Some(self.session.user().to_owned()),
                ..TokenQuery::all()
            })
            .await
            .map_err(store_failed)?;
        let now = self.app.clock.now();
        let policy = &self.app.config().tokens;
        let markup = html! {
            header.bar {
                span { "Signed in as " strong { (self.session.user()) } }
                form method="post" action=(LOGOUT_PATH) {
                    input type="hidden" name="_token" value=(self.xsrf);
                    button.link type="submit" { "Log out" }
                }
            }
            h1 { "API Tokens" }
            @if let Some(token) = new_token {
                section.notice role="status" {
                    p { "Please copy your new API token. For your security, it will not be shown again." }
                    code #new-token { (token) }
                    button #copy-token type="button" { "Copy" }
                    script { (PreEscaped(COPY_SCRIPT)) }
                }
            }
            @if let Some(error) = error {
                p.error role="alert" { (error) }
            }
            section {
                h2 { "Create API Token" }
                p.hint { "API tokens allow third-party services to authenticate with this application on your behalf." }
                form #create-token method="post" action=(PATH) {
                    input type="hidden" name="_token" value=(self.xsrf);
                    label for="token-name" { "Name" }
                    input #token-name type="text" name="name" required maxlength="255";
                    @if !policy.abilities.is_empty() {
                        fieldset {
                            legend { "Permissions" }
                            @for ability in &policy.abilities {
                                @let id = format!("create-ability-{ability}");
                                div.check {
                                    input type="checkbox" id=(id) name="abilities" value=(ability)
                                        checked[policy.default_abilities.contains(ability)];
                                    label for=(id) { (ability) }
                                }
                            }
                        }
                    }
                    label for="token-expires" { "Expires on (optional)" }
                    input #token-expires type="date" name="expires_on";
                    button #create-token-submit type="submit" { "Create" }
                }
            }
            section {
                h2 { "Manage API Tokens" }
                @if tokens.is_empty() {
                    p.hint { "You have no API tokens yet." }
                }
                @for token in &tokens {
                    div.token data-token-id=(token.id) {
                        div.token-head {
                            strong.token-name { (token.name) }
                            a.delete-token href=(format!("{PATH}/{}/delete", token.id)) { "Delete" }
                        }
                        dl {
                            dt { "Permissions" }
                            dd.token-abilities {
                                @if token.abilities.is_empty() { "none" } @else { (token.abilities.join(", ")) }
                            }
                            dt { "Last used" }
                            dd.token-last-used { (ago(token.last_used_at, now)) }
                            dt { "Created" }
                            dd { (day(Some(token.created_at))) }
                            dt { "Expires" }
                            dd { (day(token.expires_at)) }
                        }
                        form.token-abilities-form method="post" action=(format!("{PATH}/{}/abilities", token.id)) {
                            input type="hidden" name="_token" value=(self.xsrf);
                            @for ability in &policy.abilities {
                                @let id = format!("ability-{}-{ability}", token.id);
                                span.check {
                                    input type="checkbox" id=(id) name="abilities" value=(ability)
                                        checked[token.abilities.iter().any(|a| ability == a || a == "*")];
                                    label for=(id) { (ability) }
                                }
                            }
                            button.save-abilities type="submit" { "Save permissions" }
                        }
                    }
                }
            }
        };
        let csp = format!(
            "default-src 'none'; style-src 'unsafe-inline'; script-src '{}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            super::script_hash(COPY_SCRIPT)
        );
        let mut response = html_response(status, layout("API Tokens", markup));
        if let Ok(csp) = http::HeaderValue::from_str(&csp) {
            response
                .headers_mut()
                .insert("content-security-policy", csp);
        }
        Ok(response)
    }

    fn confirm_delete(&self, token: &TokenRecord) -> Response<Full<Bytes>> {
        let markup = html! {
            h1 { "Delete API Token" }
            p { "Are you sure you would like to delete the token " strong { (token.name) } "? Anything using it is refused from the next request on." }
            form method="post" action=(format!("{PATH}/{}/delete", token.id)) {
                input type="hidden" name="_token" value=(self.xsrf);
                button #confirm-delete.danger type="submit" { "Delete" }
            }
            p { a href=(PATH) { "Cancel" } }
        };
        html_response(StatusCode::OK, layout("Delete API Token", markup))
    }
}

/// `YYYY-MM-DD` → that day's 00:00 UTC.
fn parse_date(date: &str) -> Option<Timestamp> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let day = time::Date::parse(date, format).ok()?;
    Some(day.midnight().assume_utc().unix_timestamp())
}

fn day(at: Option<Timestamp>) -> String {
    match at {
        Some(_) => rfc3339(at).chars().take(10).collect(),
        None => "never".to_owned(),
    }
}

/// "never", "just now", "3 minutes ago", "2 hours ago", "5 days ago" (Jetstream's wording).
fn ago(at: Option<Timestamp>, now: Timestamp) -> String {
    let Some(at) = at else {
        return "never".to_owned();
    };
    let secs = (now - at).max(0);
    let (n, unit) = match secs {
        0..=59 => return "just now".to_owned(),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_used_reads_like_jetstream() {
        assert_eq!(ago(None, 1000), "never");
        assert_eq!(ago(Some(1000), 1030), "just now");
        assert_eq!(ago(Some(1000), 1000 + 180), "3 minutes ago");
        assert_eq!(ago(Some(1000), 1000 + 60), "1 minute ago");
        assert_eq!(ago(Some(0), 7200), "2 hours ago");
        assert_eq!(ago(Some(0), 86_400 * 5), "5 days ago");
    }

    #[test]
    fn expiry_dates_parse() {
        assert_eq!(parse_date("2026-01-02"), Some(1_767_312_000));
        assert_eq!(parse_date("2026-13-01"), None);
        assert_eq!(parse_date("tomorrow"), None);
    }
}
