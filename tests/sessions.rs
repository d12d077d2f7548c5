//! First-party cookie sessions over real sockets: the built-in login, sessions minted by the
//! app, Sanctum's session-over-bearer order, CSRF, expiry, revocation and the throttle.

mod common;

use bytes::Bytes;
use common::{assert_unauthenticated, Answer, Gate, HttpClient, STANDARD};
use http::{Method, StatusCode};

const PASSWORD: &str = "correct horse battery staple";

/// STANDARD plus a route that takes any credential and accepts every method.
fn config() -> String {
    format!("{STANDARD}  - path: /**\n    auth: any\n")
}

async fn gate_with_alice(body: &str) -> Gate {
    let gate = Gate::start(body).await;
    gate.app
        .users
        .add("alice", Some(PASSWORD.into()))
        .await
        .unwrap();
    gate
}

/// A fresh login form: its hidden `_token` and the matching cookie.
async fn login_form(client: &HttpClient, gate: &Gate) -> (String, String) {
    let page = client.get(&gate.url("/_tokengate/login"), &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    let html = String::from_utf8_lossy(&page.body).into_owned();
    let marker = r#"name="_token" value=""#;
    let start = html.find(marker).expect("hidden _token field") + marker.len();
    let token = html[start..].split('"').next().unwrap().to_owned();
    let cookie = set_cookie(&page, "tokengate_login_csrf").expect("login CSRF cookie");
    (token, cookie_pair(&cookie))
}

/// The whole `Set-Cookie` value for `name`.
fn set_cookie(answer: &Answer, name: &str) -> Option<String> {
    answer
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with(&format!("{name}=")))
}

/// `name=value` of a `Set-Cookie` value.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

fn form(fields: &[(&str, &str)]) -> Bytes {
    Bytes::from(serde_urlencoded::to_string(fields).unwrap())
}

/// Posts the login form as a browser would, from `address` (sent as `X-Forwarded-For`;
/// only honoured when the config trusts 127.0.0.1).
async fn post_login(
    client: &HttpClient,
    gate: &Gate,
    username: &str,
    password: &str,
    next: &str,
    address: Option<&str>,
) -> Answer {
    let (token, cookie) = login_form(client, gate).await;
    let mut headers: Vec<(&str, &[u8])> = vec![
        ("content-type", b"application/x-www-form-urlencoded"),
        ("cookie", cookie.as_bytes()),
        ("accept", b"text/html"),
    ];
    if let Some(address) = address {
        headers.push(("x-forwarded-for", address.as_bytes()));
    }
    client
        .send(
            Method::POST,
            &gate.url("/_tokengate/login"),
            &headers,
            form(&[
                ("_token", &token),
                ("username", username),
                ("password", password),
                ("next", next),
            ]),
        )
        .await
}

async fn send_with_cookie(
    client: &HttpClient,
    gate: &Gate,
    method: Method,
    path: &str,
    cookie: &str,
    extra: &[(&str, &str)],
) -> Answer {
    let mut headers: Vec<(&str, &[u8])> = vec![("cookie", cookie.as_bytes())];
    headers.extend(extra.iter().map(|(k, v)| (*k, v.as_bytes())));
    client
        .send(method, &gate.url(path), &headers, Bytes::new())
        .await
}

fn text(answer: &Answer) -> String {
    String::from_utf8_lossy(&answer.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_through_the_form_gives_a_session_that_can_do_everything() {
    let gate = gate_with_alice(STANDARD).await;
    let client = HttpClient::http1();

    let answer = post_login(&client, &gate, "alice", PASSWORD, "/app/home?tab=2", None).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", text(&answer));
    assert_eq!(answer.headers["location"], "/app/home?tab=2");
    let set = set_cookie(&answer, "tokengate_session").expect("session cookie");
    for attribute in [
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
        "Secure",
        "Max-Age=86400",
    ] {
        assert!(set.contains(attribute), "{attribute} missing: {set}");
    }
    let value = cookie_pair(&set)["tokengate_session=".len()..].to_owned();
    assert_eq!(value.len(), 43, "32 bytes, base64url");
    let xsrf = set_cookie(&answer, "XSRF-TOKEN").expect("XSRF-TOKEN cookie");
    assert!(!xsrf.contains("HttpOnly"), "scripts must read it: {xsrf}");
    let cleared = set_cookie(&answer, "tokengate_login_csrf").unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");

    let cookie = cookie_pair(&set);
    let answer = send_with_cookie(&client, &gate, Method::GET, "/app/home", &cookie, &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", text(&answer));
    assert_eq!(answer.upstream_header("x-token-abilities").unwrap(), "*");
    assert_eq!(answer.upstream_header("x-auth-method").unwrap(), "session");
    assert_eq!(answer.upstream_header("x-auth-user").unwrap(), "alice");
    assert_eq!(answer.upstream_header("x-auth-token-id"), None);

    // A session can do everything, even what only an admin token may.
    let answer = send_with_cookie(&client, &gate, Method::GET, "/admin/x", &cookie, &[]).await;
    assert_eq!(answer.status, StatusCode::OK);

    // Session and bearer together: the session is used (Sanctum's order).
    let reader = gate.token("bob", &["read"]).await;
    let bearer = format!("Bearer {reader}");
    let answer = send_with_cookie(
        &client,
        &gate,
        Method::GET,
        "/admin/x",
        &cookie,
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.upstream_header("x-auth-user").unwrap(), "alice");
    assert_eq!(answer.upstream_header("x-auth-method").unwrap(), "session");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_user_look_the_same() {
    let gate = gate_with_alice(STANDARD).await;
    gate.app.users.add("nopass", None).await.unwrap();
    let client = HttpClient::http1();
    let wrong = post_login(&client, &gate, "alice", "wrong", "/", None).await;
    let unknown = post_login(&client, &gate, "mallory", PASSWORD, "/", None).await;
    let no_password = post_login(&client, &gate, "nopass", "", "/", None).await;
    for answer in [&wrong, &unknown, &no_password] {
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(text(answer).contains("These credentials do not match our records."));
        assert!(set_cookie(answer, "tokengate_session").is_none());
    }
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_form_is_csrf_protected() {
    let gate = gate_with_alice(STANDARD).await;
    let client = HttpClient::http1();
    let (token, cookie) = login_form(&client, &gate).await;
    let (other_token, _) = login_form(&client, &gate).await;
    for (what, cookie, token) in [
        ("no cookie", "", token.as_str()),
        (
            "another form's token",
            cookie.as_str(),
            other_token.as_str(),
        ),
        ("no token", cookie.as_str(), ""),
    ] {
        let answer = client
            .send(
                Method::POST,
                &gate.url("/_tokengate/login"),
                &[
                    ("content-type", b"application/x-www-form-urlencoded"),
                    ("cookie", cookie.as_bytes()),
                ],
                form(&[
                    ("_token", token),
                    ("username", "alice"),
                    ("password", PASSWORD),
                ]),
            )
            .await;
        assert_eq!(answer.status.as_u16(), 419, "{what}");
        assert!(set_cookie(&answer, "tokengate_session").is_none(), "{what}");
    }
    gate.stop().await;
}

/// A burst of attempts at once from one address: at most five passwords are checked,
/// however many arrive together (the right one, if not among them, is refused too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_logins_gets_at_most_the_limit_checked() {
    let gate = gate_with_alice(STANDARD).await;
    let client = HttpClient::http1();
    let mut forms = Vec::new();
    for _ in 0..100 {
        forms.push(login_form(&client, &gate).await);
    }
    let attempts = forms.into_iter().enumerate().map(|(i, (token, cookie))| {
        let client = client.clone();
        let url = gate.url("/_tokengate/login");
        // The right password last: the burst has used up the attempts by then.
        let password = if i == 99 { PASSWORD } else { "wrong" };
        async move {
            let headers: Vec<(&str, &[u8])> = vec![
                ("content-type", b"application/x-www-form-urlencoded"),
                ("cookie", cookie.as_bytes()),
            ];
            let body = form(&[
                ("_token", &token),
                ("username", "alice"),
                ("password", password),
                ("next", "/"),
            ]);
            client.send(Method::POST, &url, &headers, body).await.status
        }
    });
    let started = std::time::Instant::now();
    let statuses = futures_util::future::join_all(attempts).await;
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNPROCESSABLE_ENTITY || **s == StatusCode::SEE_OTHER)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(checked <= 5, "{checked} passwords checked: {statuses:?}");
    assert_eq!(checked + refused, 100, "{statuses:?}");
    eprintln!(
        "100 attempts at once: {checked} checked, {refused} refused in {:?}",
        started.elapsed()
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_by_name_and_by_address() {
    let body = format!("{STANDARD}trusted_proxies: [127.0.0.1/32]\n");
    let gate = gate_with_alice(&body).await;
    gate.app
        .users
        .add("bob", Some(PASSWORD.into()))
        .await
        .unwrap();
    let client = HttpClient::http1();

    // By name: five failures for alice, from five addresses.
    for i in 0..5 {
        let address = format!("10.0.0.{i}");
        let answer = post_login(&client, &gate, "alice", "wrong", "/", Some(&address)).await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let answer = post_login(&client, &gate, "alice", PASSWORD, "/", Some("10.0.1.1")).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    let wait: i64 = answer.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert!(set_cookie(&answer, "tokengate_session").is_none());
    // Others' failures on another name do not throttle bob.
    let answer = post_login(&client, &gate, "bob", PASSWORD, "/", Some("10.0.1.2")).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);

    // By address: five failures from one address on five names.
    for i in 0..5 {
        let name = format!("guess{i}");
        let answer = post_login(&client, &gate, &name, "x", "/", Some("10.9.9.9")).await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let answer = post_login(&client, &gate, "bob", PASSWORD, "/", Some("10.9.9.9")).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(answer.headers.contains_key("retry-after"));

    // When the window has passed, alice may try again.
    gate.clock.advance(61);
    let answer = post_login(&client, &gate, "alice", PASSWORD, "/", Some("10.0.1.1")).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_redirect_attempts_stay_on_site() {
    let gate = gate_with_alice(STANDARD).await;
    let client = HttpClient::http1();
    for next in [
        "//evil.example",
        "https://evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "http:evil.example",
        "",
    ] {
        let answer = post_login(&client, &gate, "alice", PASSWORD, next, None).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{next}");
        assert_eq!(answer.headers["location"], "/", "{next}");
    }
    // The login page carries a safe `next` only.
    let page = client
        .get(&gate.url("/_tokengate/login?next=%2F%2Fevil.example"), &[])
        .await;
    assert!(!text(&page).contains("evil.example"));
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_without_a_session_go_to_the_login_page() {
    let gate = Gate::start(STANDARD).await;
    let client = HttpClient::http1();
    let answer = client
        .get(
            &gate.url("/app/reports?year=2026"),
            &[("accept", "text/html,application/xhtml+xml")],
        )
        .await;
    assert_eq!(answer.status, StatusCode::FOUND);
    assert_eq!(
        answer.headers["location"],
        "/_tokengate/login?next=/app/reports%3Fyear%3D2026"
    );
    // An API client keeps the JSON 401.
    let answer = client.get(&gate.url("/app/reports"), &[]).await;
    assert_unauthenticated(&answer, "API client on a session route");
    // A bearer token is not a session.
    let star = gate.token("root", &["*"]).await;
    let answer = client.get_bearer(&gate.url("/app/reports"), &star).await;
    assert_unauthenticated(&answer, "bearer on auth: session");
    assert!(gate.echo.seen().is_empty());
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_routes_ignore_cookies() {
    let body = STANDARD.replace(
        "routes:\n",
        "routes:\n  - path: /tokens-only/**\n    auth: token\n",
    );
    let gate = gate_with_alice(&body).await;
    let client = HttpClient::http1();
    let session = gate.app.sessions.create("alice").await.unwrap();
    let cookie = format!("tokengate_session={}", session.cookie_value);
    let answer =
        send_with_cookie(&client, &gate, Method::GET, "/tokens-only/x", &cookie, &[]).await;
    assert_unauthenticated(&answer, "session on auth: token");
    let reader = gate.token("bob", &["read"]).await;
    let bearer = format!("Bearer {reader}");
    let answer = send_with_cookie(
        &client,
        &gate,
        Method::GET,
        "/tokens-only/x",
        &cookie,
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.upstream_header("x-auth-method").unwrap(), "token");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csrf_matrix() {
    let gate = gate_with_alice(&config()).await;
    gate.app.users.add("carol", None).await.unwrap();
    let client = HttpClient::http1();
    let alice = gate.app.sessions.create("alice").await.unwrap();
    let carol = gate.app.sessions.create("carol").await.unwrap();
    let cookie = format!("tokengate_session={}", alice.cookie_value);

    // The XSRF-TOKEN of each session, as an SPA gets it.
    let xsrf_of = |session_cookie: String| {
        let client = client.clone();
        let url = gate.url("/_tokengate/csrf-cookie");
        async move {
            let answer = client.get(&url, &[("cookie", &session_cookie)]).await;
            assert_eq!(answer.status, StatusCode::NO_CONTENT);
            let set = set_cookie(&answer, "XSRF-TOKEN").unwrap();
            cookie_pair(&set)["XSRF-TOKEN=".len()..].to_owned()
        }
    };
    let xsrf = xsrf_of(cookie.clone()).await;
    let carols_xsrf = xsrf_of(format!("tokengate_session={}", carol.cookie_value)).await;
    let own_origin = format!("http://{}", gate.addr);

    type Case<'a> = (&'a str, Method, Vec<(&'a str, &'a str)>, u16);
    let cases: Vec<Case<'_>> = vec![
        ("no proof", Method::POST, vec![], 419),
        (
            "same-origin fetch",
            Method::POST,
            vec![("sec-fetch-site", "same-origin")],
            200,
        ),
        (
            "cross-site fetch",
            Method::POST,
            vec![("sec-fetch-site", "cross-site")],
            419,
        ),
        (
            "own Origin",
            Method::PUT,
            vec![("origin", &own_origin)],
            200,
        ),
        (
            "evil Origin",
            Method::POST,
            vec![("origin", "https://evil.example")],
            419,
        ),
        (
            "matching X-XSRF-TOKEN",
            Method::PATCH,
            vec![("x-xsrf-token", &xsrf)],
            200,
        ),
        (
            "another session's token",
            Method::DELETE,
            vec![("x-xsrf-token", &carols_xsrf)],
            419,
        ),
        (
            "GET needs nothing",
            Method::GET,
            vec![("origin", "https://evil.example")],
            200,
        ),
    ];
    for (what, method, headers, status) in cases {
        let answer = send_with_cookie(&client, &gate, method, "/open/x", &cookie, &headers).await;
        assert_eq!(answer.status.as_u16(), status, "{what}: {}", text(&answer));
        if status == 419 {
            assert_eq!(
                answer.json(),
                serde_json::json!({"message": "CSRF token mismatch."}),
                "{what}"
            );
        }
    }

    // A bearer POST needs no CSRF proof.
    let writer = gate.token("bob", &["create"]).await;
    let answer = client.post_bearer(&gate.url("/api/posts"), &writer).await;
    assert_eq!(answer.status, StatusCode::OK);

    // Without a session there is no XSRF-TOKEN to get.
    let answer = client.get(&gate.url("/_tokengate/csrf-cookie"), &[]).await;
    assert_unauthenticated(&answer, "csrf-cookie without a session");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_when_idle_and_at_their_lifetime() {
    let body = format!("{STANDARD}sessions:\n  idle_minutes: 10\n  lifetime_minutes: 30\n");
    let gate = gate_with_alice(&body).await;
    let client = HttpClient::http1();
    let get = |cookie: String| {
        let client = client.clone();
        let url = gate.url("/app/x");
        async move { client.get(&url, &[("cookie", &cookie)]).await.status }
    };

    // Idle: 10 minutes without a request ends it.
    let idle = gate.app.sessions.create("alice").await.unwrap();
    let idle_cookie = format!("tokengate_session={}", idle.cookie_value);
    gate.clock.advance(9 * 60);
    assert_eq!(get(idle_cookie.clone()).await, StatusCode::OK);
    gate.clock.advance(9 * 60); // 9 minutes after the last request: still alive (sliding)
    assert_eq!(get(idle_cookie.clone()).await, StatusCode::OK);
    gate.clock.advance(10 * 60);
    assert_eq!(get(idle_cookie).await, StatusCode::UNAUTHORIZED);

    // Absolute: used every 5 minutes, it still ends 30 minutes after it began.
    let busy = gate.app.sessions.create("alice").await.unwrap();
    let busy_cookie = format!("tokengate_session={}", busy.cookie_value);
    for _ in 0..5 {
        gate.clock.advance(5 * 60);
        assert_eq!(get(busy_cookie.clone()).await, StatusCode::OK);
    }
    gate.clock.advance(5 * 60);
    assert_eq!(get(busy_cookie).await, StatusCode::UNAUTHORIZED);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_session() {
    let gate = gate_with_alice(&config()).await;
    let client = HttpClient::http1();
    let login = post_login(&client, &gate, "alice", PASSWORD, "/", None).await;
    let cookie = cookie_pair(&set_cookie(&login, "tokengate_session").unwrap());
    let xsrf =
        cookie_pair(&set_cookie(&login, "XSRF-TOKEN").unwrap())["XSRF-TOKEN=".len()..].to_owned();
    let both = format!("{cookie}; XSRF-TOKEN={xsrf}");

    // Logout is CSRF-protected like any unsafe session request.
    let answer = send_with_cookie(
        &client,
        &gate,
        Method::POST,
        "/_tokengate/logout",
        &both,
        &[],
    )
    .await;
    assert_eq!(answer.status.as_u16(), 419);
    assert_eq!(
        send_with_cookie(&client, &gate, Method::GET, "/app/x", &cookie, &[])
            .await
            .status,
        StatusCode::OK
    );

    // A form posts the XSRF token as `_token`.
    let answer = client
        .send(
            Method::POST,
            &gate.url("/_tokengate/logout"),
            &[
                ("cookie", both.as_bytes()),
                ("content-type", b"application/x-www-form-urlencoded"),
                ("accept", b"text/html"),
            ],
            form(&[("_token", &xsrf)]),
        )
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(answer.headers["location"], "/_tokengate/login");
    let cleared = set_cookie(&answer, "tokengate_session").unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_unauthenticated(
        &send_with_cookie(&client, &gate, Method::GET, "/app/x", &cookie, &[]).await,
        "after logout",
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_user_revokes_their_tokens_and_sessions() {
    let gate = gate_with_alice(&config()).await;
    let client = HttpClient::http1();
    let session = gate.app.sessions.create("alice").await.unwrap();
    let cookie = format!("tokengate_session={}", session.cookie_value);
    let token = gate.token("alice", &["read"]).await;
    let others = gate.token("bob", &["read"]).await;
    assert_eq!(
        send_with_cookie(&client, &gate, Method::GET, "/open/x", &cookie, &[])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        client
            .get_bearer(&gate.url("/api/posts/1"), &token)
            .await
            .status,
        StatusCode::OK
    );

    let removed = gate.app.remove_user("alice").await.unwrap().unwrap();
    assert_eq!((removed.tokens.len(), removed.sessions.len()), (1, 1));

    assert_unauthenticated(
        &send_with_cookie(&client, &gate, Method::GET, "/open/x", &cookie, &[]).await,
        "removed user's session",
    );
    assert_unauthenticated(
        &client.get_bearer(&gate.url("/api/posts/1"), &token).await,
        "removed user's token",
    );
    assert_eq!(
        client
            .get_bearer(&gate.url("/api/posts/1"), &others)
            .await
            .status,
        StatusCode::OK
    );
    assert!(
        gate.app.sessions.create("alice").await.is_err(),
        "no user, no session"
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_truncated_cookies_are_401_never_500() {
    let gate = gate_with_alice(STANDARD).await;
    let client = HttpClient::http1();
    let real = gate
        .app
        .sessions
        .create("alice")
        .await
        .unwrap()
        .cookie_value;
    let forged = "A".repeat(43);
    let wrong_alphabet = format!("{}+", &real[..42]);
    for value in [
        &real[..42],
        &real[..1],
        "",
        forged.as_str(),
        wrong_alphabet.as_str(),
        "%00%01",
        "\"quoted\"",
    ] {
        let cookie = format!("tokengate_session={value}");
        let answer = send_with_cookie(&client, &gate, Method::GET, "/app/x", &cookie, &[]).await;
        assert_unauthenticated(&answer, &format!("cookie {value:?}"));
    }
    // Garbage in the header itself.
    let answer = client
        .send(
            Method::GET,
            &gate.url("/app/x"),
            &[("cookie", b"tokengate_session=\xff\xfe; ;;=; x")],
            Bytes::new(),
        )
        .await;
    assert_unauthenticated(&answer, "non-UTF-8 cookie header");
    // The real one still works, even after a forged duplicate.
    let cookie = format!("tokengate_session={forged}; tokengate_session={real}");
    let answer = send_with_cookie(&client, &gate, Method::GET, "/app/x", &cookie, &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(gate.echo.seen().len() == 1);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_cookies_stay_out_of_the_upstream_by_default() {
    let gate = gate_with_alice(STANDARD).await;
    let client = HttpClient::http1();
    let session = gate.app.sessions.create("alice").await.unwrap();
    let cookie = format!(
        "theme=dark; tokengate_session={}; XSRF-TOKEN=abc; lang=en",
        session.cookie_value
    );
    let answer = send_with_cookie(&client, &gate, Method::GET, "/app/x", &cookie, &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = gate.echo.last().unwrap();
    let forwarded: Vec<&str> = seen
        .headers
        .get_all("cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(forwarded, ["theme=dark; lang=en"]);
    // Only tokengate's cookies: no Cookie header at all.
    let cookie = format!("tokengate_session={}", session.cookie_value);
    send_with_cookie(&client, &gate, Method::GET, "/app/x", &cookie, &[]).await;
    assert!(!gate.echo.last().unwrap().headers.contains_key("cookie"));
    gate.stop().await;

    let body = format!("{STANDARD}sessions:\n  forward_cookie: true\n");
    let gate = gate_with_alice(&body).await;
    let session = gate.app.sessions.create("alice").await.unwrap();
    let cookie = format!("tokengate_session={}", session.cookie_value);
    send_with_cookie(&client, &gate, Method::GET, "/app/x", &cookie, &[]).await;
    assert_eq!(gate.echo.last().unwrap().headers["cookie"], cookie.as_str());
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_seen_is_batched_and_sessions_survive_a_restart_of_the_cache() {
    let gate = gate_with_alice(STANDARD).await;
    let client = HttpClient::http1();
    let session = gate.app.sessions.create("alice").await.unwrap();
    let cookie = format!("tokengate_session={}", session.cookie_value);
    gate.clock.advance(120);
    for _ in 0..20 {
        send_with_cookie(&client, &gate, Method::GET, "/app/x", &cookie, &[]).await;
    }
    let stored = gate.app.sessions.list("alice").await.unwrap();
    assert_eq!(stored[0].last_seen, common::T0, "not written per request");
    assert_eq!(gate.app.sessions.flush_last_seen().await.unwrap(), 1);
    let stored = gate.app.sessions.list("alice").await.unwrap();
    assert_eq!(stored[0].last_seen, common::T0 + 120);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reserved_prefix_never_reaches_the_upstream_even_under_a_public_catch_all() {
    let body = STANDARD.replace("routes:\n", "routes:\n  - path: /**\n    auth: none\n");
    let gate = gate_with_alice(&body).await;
    let client = HttpClient::http1();
    let session = gate.app.sessions.create("alice").await.unwrap();
    let cookie = format!("tokengate_session={}", session.cookie_value);
    // tokengate answers every one itself: its pages with their methods (a POST without the
    // CSRF token is 419, as Laravel answers), other methods 405, anything else under the
    // prefix (spelled either way) 404.
    let paths = [
        "/_tokengate/login",
        "/_tokengate/logout",
        "/_tokengate/csrf-cookie",
        "/_tokengate/anything",
        "/_tokengate",
        "/%5Ftokengate/login",
    ];
    let expected: [(Method, [u16; 6]); 4] = [
        (Method::GET, [200, 405, 204, 404, 404, 404]),
        (Method::POST, [419, 419, 405, 404, 404, 404]),
        (Method::PUT, [405, 405, 405, 404, 404, 404]),
        (Method::DELETE, [405, 405, 405, 404, 404, 404]),
    ];
    for (method, statuses) in expected {
        for (path, status) in paths.iter().zip(statuses) {
            let answer = send_with_cookie(&client, &gate, method.clone(), path, &cookie, &[]).await;
            assert_eq!(answer.status.as_u16(), status, "{method} {path}");
        }
    }
    assert!(gate.echo.seen().is_empty(), "nothing reached the upstream");
    // The catch-all still forwards everything else.
    assert_eq!(
        client.get(&gate.url("/x"), &[]).await.status,
        StatusCode::OK
    );
    gate.stop().await;
}
