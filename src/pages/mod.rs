//! tokengate's own endpoints under `/_tokengate/`, never forwarded upstream:
//!
//! - `GET  /_tokengate/login`       the login form (CSRF-protected by a double-submit cookie);
//! - `POST /_tokengate/login`       checks the password (throttled), starts a session, and
//!   redirects to `next` when it is a same-site path (else to `/`);
//! - `POST /_tokengate/logout`      ends the session (CSRF rules apply) and clears its cookies;
//! - `GET  /_tokengate/csrf-cookie` 204 with the session's `XSRF-TOKEN` cookie, for SPAs;
//! - `/_tokengate/api-tokens`        the self-service API token page (`api_tokens`).
//!
//! Pages are server-rendered HTML (maud) with inline CSS and no external assets.

mod api_tokens;

use crate::app::App;
use crate::auth::csrf;
use crate::cookies::{self, LOGIN_CSRF_COOKIE, XSRF_COOKIE};
use crate::credential::{random_bytes, session::CookieValue};
use crate::error::{csrf_status, Rejection};
use crate::headers::{self, ConnInfo};
use crate::reserved::{wants_html, CSRF_COOKIE_PATH, LOGIN_PATH, LOGOUT_PATH, PREFIX};
use crate::session_cache::Session;
use crate::throttle::LoginThrottle;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use cookie::{Cookie, SameSite};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER, SET_COOKIE};
use http::{request, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use maud::{html, Markup, DOCTYPE};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Largest form body read (a login form is a few hundred bytes).
const MAX_FORM_BYTES: usize = 16 * 1024;

const FAILED_LOGIN: &str = "These credentials do not match our records.";
const EXPIRED_FORM: &str = "This form has expired. Please try again.";

/// Answers a request for a path under `/_tokengate/`.
pub async fn handle(
    app: &App,
    request: Request<Incoming>,
    conn: &ConnInfo,
) -> Response<Full<Bytes>> {
    match route(app, request, conn).await {
        Ok(response) => response,
        Err(rejection) => rejection.response(),
    }
}

async fn route(
    app: &App,
    request: Request<Incoming>,
    conn: &ConnInfo,
) -> Result<Response<Full<Bytes>>, Rejection> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    match (path.as_str(), &parts.method) {
        (LOGIN_PATH, &Method::GET) | (LOGIN_PATH, &Method::HEAD) => {
            let next = query_next(&parts);
            Ok(login_page(app, StatusCode::OK, &next, "", None))
        }
        (LOGIN_PATH, &Method::POST) => login(app, &parts, body, conn).await,
        (LOGOUT_PATH, &Method::POST) => logout(app, &parts, body, conn).await,
        (CSRF_COOKIE_PATH, &Method::GET) => csrf_cookie(app, &parts).await,
        (p, _) if api_tokens::owns(p) => api_tokens::handle(app, &parts, body, conn).await,
        (LOGIN_PATH | LOGOUT_PATH | CSRF_COOKIE_PATH, _) => Err(Rejection::MethodNotAllowed),
        _ => Err(Rejection::NotFound),
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct LoginForm {
    username: String,
    password: String,
    #[serde(rename = "_token")]
    token: String,
    next: String,
}

async fn login(
    app: &App,
    parts: &request::Parts,
    body: Incoming,
    conn: &ConnInfo,
) -> Result<Response<Full<Bytes>>, Rejection> {
    let form: LoginForm = read_form(body).await?;
    let next = safe_next(&form.next).to_owned();
    let expected = cookies::values(&parts.headers, LOGIN_CSRF_COOKIE);
    let token_ok = !form.token.is_empty()
        && expected
            .iter()
            .any(|v| bool::from(v.as_bytes().ct_eq(form.token.as_bytes())));
    if !token_ok {
        return Ok(login_page(
            app,
            csrf_status(),
            &next,
            &form.username,
            Some(EXPIRED_FORM),
        ));
    }

    let now = app.clock.now();
    let client = headers::client_ip(&parts.headers, conn, &app.config().trusted_proxies);
    let keys = LoginThrottle::keys(&form.username, client);
    // The attempt takes its place before the password is checked (`throttle`).
    let attempt = match app.login_throttle.attempt(keys, now) {
        Ok(attempt) => attempt,
        Err(wait) => {
            let message = format!("Too many login attempts. Please try again in {wait} seconds.");
            let mut response = login_page(
                app,
                StatusCode::TOO_MANY_REQUESTS,
                &next,
                &form.username,
                Some(&message),
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(wait.max(1)));
            return Ok(response);
        }
    };

    let user = app
        .users
        .verify(&form.username, &form.password)
        .await
        .map_err(store_failed)?;
    let Some(user) = user else {
        attempt.failed();
        tracing::info!(%client, "failed login");
        return Ok(login_page(
            app,
            StatusCode::UNPROCESSABLE_ENTITY,
            &next,
            &form.username,
            Some(FAILED_LOGIN),
        ));
    };
    let created = app
        .sessions
        .create(&user.name)
        .await
        .map_err(store_failed)?;
    tracing::info!(user = %user.name, "login");
    let mut response = redirect(StatusCode::SEE_OTHER, &next);
    let headers = response.headers_mut();
    set_session_cookies(app, headers, &created.cookie_value, &created.session);
    headers.append(
        SET_COOKIE,
        removal_cookie(LOGIN_CSRF_COOKIE, PREFIX, app.config().sessions.secure),
    );
    Ok(response)
}

async fn logout(
    app: &App,
    parts: &request::Parts,
    body: Incoming,
    conn: &ConnInfo,
) -> Result<Response<Full<Bytes>>, Rejection> {
    let (session, cookie) = match current_session(app, &parts.headers).await? {
        Some(found) => found,
        None => return Ok(logged_out(app, &parts.headers)),
    };
    let (scheme, host) = headers::own_origin(parts, conn);
    if !csrf::passes(&parts.method, &parts.headers, scheme, host, cookie) {
        // A plain HTML form cannot set headers: it sends the XSRF-TOKEN as `_token`.
        let form: LogoutForm = read_form(body).await?;
        if !cookie.xsrf_matches(form.token.as_bytes()) {
            return Err(Rejection::CsrfMismatch);
        }
    }
    app.sessions
        .revoke(session.hash)
        .await
        .map_err(store_failed)?;
    tracing::info!(user = %session.user(), "logout");
    Ok(logged_out(app, &parts.headers))
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct LogoutForm {
    #[serde(rename = "_token")]
    token: String,
}

/// After a logout: the cookies cleared; a browser goes to the login page, an API client
/// gets 204.
fn logged_out(app: &App, request_headers: &HeaderMap) -> Response<Full<Bytes>> {
    let mut response = if wants_html(request_headers) {
        redirect(StatusCode::SEE_OTHER, LOGIN_PATH)
    } else {
        empty(StatusCode::NO_CONTENT)
    };
    let secure = app.config().sessions.secure;
    let headers = response.headers_mut();
    headers.append(
        SET_COOKIE,
        removal_cookie(&app.config().sessions.cookie, "/", secure),
    );
    headers.append(SET_COOKIE, removal_cookie(XSRF_COOKIE, "/", secure));
    response
}

async fn csrf_cookie(
    app: &App,
    parts: &request::Parts,
) -> Result<Response<Full<Bytes>>, Rejection> {
    let Some((session, cookie)) = current_session(app, &parts.headers).await? else {
        return Err(Rejection::Unauthenticated);
    };
    let mut response = empty(StatusCode::NO_CONTENT);
    set_session_cookies(app, response.headers_mut(), cookie.as_str(), &session);
    Ok(response)
}

/// The valid session a request carries, with its cookie value.
async fn current_session<'h>(
    app: &App,
    request_headers: &'h HeaderMap,
) -> Result<Option<(Arc<Session>, CookieValue<'h>)>, Rejection> {
    let values = cookies::values(request_headers, &app.config().sessions.cookie);
    app.sessions
        .from_cookies(values)
        .await
        .map_err(store_failed)
}

/// Sets the session cookie (HttpOnly) and its `XSRF-TOKEN` (readable by scripts), both for
/// the rest of the session's lifetime.
fn set_session_cookies(app: &App, headers: &mut HeaderMap, cookie_value: &str, session: &Session) {
    let config = &app.config().sessions;
    let max_age = session.expires_at - app.clock.now();
    if let Some(cookie) = CookieValue::parse(cookie_value) {
        headers.append(
            SET_COOKIE,
            build_cookie(
                &config.cookie,
                cookie_value,
                "/",
                true,
                config.secure,
                max_age,
            ),
        );
        headers.append(
            SET_COOKIE,
            build_cookie(
                XSRF_COOKIE,
                &cookie.xsrf_token(),
                "/",
                false,
                config.secure,
                max_age,
            ),
        );
    }
}

fn build_cookie(
    name: &str,
    value: &str,
    path: &str,
    http_only: bool,
    secure: bool,
    max_age: i64,
) -> HeaderValue {
    let cookie = Cookie::build((name, value))
        .path(path)
        .http_only(http_only)
        .secure(secure)
        .same_site(SameSite::Lax)
        .max_age(cookie::time::Duration::seconds(max_age.max(0)))
        .build();
    HeaderValue::from_str(&cookie.to_string()).unwrap_or(HeaderValue::from_static(""))
}

fn removal_cookie(name: &str, path: &str, secure: bool) -> HeaderValue {
    build_cookie(name, "", path, true, secure, 0)
}

async fn read_form<T: serde::de::DeserializeOwned>(body: Incoming) -> Result<T, Rejection> {
    let bytes = read_body(body).await?;
    serde_urlencoded::from_bytes(&bytes).map_err(|_| Rejection::BadRequest("Malformed form."))
}

/// A form's fields in order, repeated names included (checkbox lists).
async fn read_form_pairs(body: Incoming) -> Result<Vec<(String, String)>, Rejection> {
    read_form(body).await
}

async fn read_body(body: Incoming) -> Result<Bytes, Rejection> {
    let bytes = Limited::new(body, MAX_FORM_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Rejection::TooLarge
            } else {
                Rejection::BadRequest("The request body could not be read.")
            }
        })?
        .to_bytes();
    Ok(bytes)
}

/// The Content-Security-Policy source that allows one inline script.
fn script_hash(script: &str) -> String {
    use sha2::Digest;
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script.as_bytes()))
    )
}

pub(super) fn store_failed(e: impl std::fmt::Display) -> Rejection {
    tracing::error!(error = %e, "credential store failed");
    Rejection::StoreUnavailable
}

/// `next` from the query string, made safe.
fn query_next(parts: &request::Parts) -> String {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Query {
        next: String,
    }
    let query: Query = parts
        .uri
        .query()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    safe_next(&query.next).to_owned()
}

/// Where a login may send the browser: a path on this site (`/…`), else `/`. Anything a
/// browser could read as another host (`//host`, `/\host`, `https://host`, a backslash
/// anywhere) or that is not plain visible ASCII lands on `/`.
pub fn safe_next(next: &str) -> &str {
    let same_site = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && next.bytes().all(|b| b.is_ascii_graphic());
    if same_site {
        next
    } else {
        "/"
    }
}

fn redirect(status: StatusCode, location: &str) -> Response<Full<Bytes>> {
    let mut response = empty(status);
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An HTML page with the headers every tokengate page gets.
pub fn html_response(status: StatusCode, markup: Markup) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(markup.into_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    response
}

/// The login form, with a fresh double-submit CSRF token in a cookie and a hidden field.
fn login_page(
    app: &App,
    status: StatusCode,
    next: &str,
    username: &str,
    error: Option<&str>,
) -> Response<Full<Bytes>> {
    let token = URL_SAFE_NO_PAD.encode(random_bytes());
    let markup = layout(
        "Log in",
        html! {
            h1 { "Log in" }
            @if let Some(error) = error {
                p.error role="alert" { (error) }
            }
            form method="post" action=(LOGIN_PATH) {
                input type="hidden" name="_token" value=(token);
                input type="hidden" name="next" value=(next);
                label for="username" { "User name" }
                input #username type="text" name="username" value=(username)
                    autocomplete="username" required autofocus;
                label for="password" { "Password" }
                input #password type="password" name="password"
                    autocomplete="current-password" required;
                button type="submit" { "Log in" }
            }
        },
    );
    let mut response = html_response(status, markup);
    response.headers_mut().append(
        SET_COOKIE,
        build_cookie(
            LOGIN_CSRF_COOKIE,
            &token,
            PREFIX,
            true,
            app.config().sessions.secure,
            3600,
        ),
    );
    response
}

/// The frame of every tokengate page: one column, readable from 375 px up, inline CSS.
pub fn layout(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · tokengate" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                main { (content) }
            }
        }
    }
}

const STYLE: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f3f4f6;color:#111827}
main{max-width:40rem;margin:2rem auto;padding:1.5rem;background:#fff;border-radius:.5rem;box-shadow:0 1px 3px rgba(0,0,0,.1)}
h1{font-size:1.5rem;margin:0 0 1rem}
h2{font-size:1.125rem;margin:1.5rem 0 .5rem}
label{display:block;font-weight:600;margin:.75rem 0 .25rem}
input[type=text],input[type=password],input[type=date]{width:100%;padding:.5rem .75rem;border:1px solid #d1d5db;border-radius:.375rem;font:inherit}
input:focus,button:focus{outline:2px solid #4f46e5;outline-offset:2px}
button{margin-top:1rem;padding:.5rem 1rem;border:0;border-radius:.375rem;background:#1f2937;color:#fff;font:inherit;font-weight:600;cursor:pointer}
button.danger{background:#b91c1c}
button.link{background:none;color:#4f46e5;padding:0;margin:0}
.error{padding:.75rem;border-radius:.375rem;background:#fef2f2;color:#991b1b}
.hint{color:#6b7280;font-size:.875rem}
.bar{display:flex;justify-content:space-between;align-items:center;gap:1rem;font-size:.875rem;color:#4b5563;margin-bottom:1rem}
.bar form{margin:0}
fieldset{border:1px solid #e5e7eb;border-radius:.375rem;margin:.75rem 0 0;padding:.5rem .75rem}
legend{font-weight:600;padding:0 .25rem}
.check{display:inline-flex;align-items:center;gap:.375rem;margin:.25rem 1rem .25rem 0}
.check label{display:inline;font-weight:400;margin:0}
.token{border-top:1px solid #e5e7eb;padding:1rem 0}
.token-head{display:flex;justify-content:space-between;align-items:baseline;gap:1rem}
.token-name{word-break:break-word}
a{color:#4f46e5}
a.delete-token{color:#b91c1c}
dl{display:grid;grid-template-columns:auto 1fr;gap:.125rem 1rem;margin:.5rem 0;font-size:.875rem}
dt{color:#6b7280}
dd{margin:0}
code{display:block;padding:.5rem .75rem;margin:.5rem 0;background:#f9fafb;border:1px solid #e5e7eb;border-radius:.375rem;font:14px/1.4 ui-monospace,monospace;word-break:break-all}
.notice{padding:.75rem;border-radius:.375rem;background:#ecfdf5;color:#065f46}
@media (max-width:480px){main{margin:0;border-radius:0;min-height:100vh}}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_site() {
        for (next, expected) in [
            ("/app/dashboard?tab=1", "/app/dashboard?tab=1"),
            ("/", "/"),
            ("", "/"),
            ("//evil.example", "/"),
            ("https://evil.example", "/"),
            ("/\\evil.example", "/"),
            ("\\\\evil.example", "/"),
            ("/ok\\..\\x", "/"),
            ("javascript:alert(1)", "/"),
            ("/a b", "/"),
            ("/\tevil", "/"),
            ("/é", "/"),
            ("evil.example", "/"),
        ] {
            assert_eq!(safe_next(next), expected, "{next:?}");
        }
    }
}
