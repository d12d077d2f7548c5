//! The API token page over real sockets (the browser flow is in tests/browser.rs): who may
//! see and touch what, CSRF on its forms, and what it accepts.

mod common;

use bytes::Bytes;
use common::{assert_forbidden, assert_unauthenticated, Gate, HttpClient, STANDARD};
use http::{Method, StatusCode};
use tokengate::credential::session::CookieValue;

struct Browser {
    client: HttpClient,
    cookie: String,
    xsrf: String,
}

async fn browser_for(gate: &Gate, user: &str) -> Browser {
    let _ = gate.app.users.add(user, None).await;
    let session = gate.app.sessions.create(user).await.unwrap();
    let xsrf = CookieValue::parse(&session.cookie_value)
        .unwrap()
        .xsrf_token();
    Browser {
        client: HttpClient::http1(),
        cookie: format!("tokengate_session={}", session.cookie_value),
        xsrf,
    }
}

impl Browser {
    async fn get(&self, gate: &Gate, path: &str) -> common::Answer {
        self.client
            .get(
                &gate.url(path),
                &[("cookie", &self.cookie), ("accept", "text/html")],
            )
            .await
    }

    /// A form post; `with_token` adds the session's `_token`.
    async fn post(
        &self,
        gate: &Gate,
        path: &str,
        fields: &[(&str, &str)],
        with_token: bool,
    ) -> common::Answer {
        let mut fields = fields.to_vec();
        if with_token {
            fields.push(("_token", &self.xsrf));
        }
        self.client
            .send(
                Method::POST,
                &gate.url(path),
                &[
                    ("cookie", self.cookie.as_bytes()),
                    ("content-type", b"application/x-www-form-urlencoded"),
                    ("accept", b"text/html"),
                ],
                Bytes::from(serde_urlencoded::to_string(&fields).unwrap()),
            )
            .await
    }
}

fn text(answer: &common::Answer) -> String {
    String::from_utf8_lossy(&answer.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_needs_a_session() {
    let gate = Gate::start(STANDARD).await;
    let client = HttpClient::http1();
    let answer = client
        .get(
            &gate.url("/_tokengate/api-tokens"),
            &[("accept", "text/html")],
        )
        .await;
    assert_eq!(answer.status, StatusCode::FOUND);
    assert_eq!(
        answer.headers["location"],
        "/_tokengate/login?next=/_tokengate/api-tokens"
    );
    assert_unauthenticated(
        &client.get(&gate.url("/_tokengate/api-tokens"), &[]).await,
        "API client",
    );
    // A bearer token is not a session, even a `*` one.
    let star = gate.token("root", &["*"]).await;
    assert_unauthenticated(
        &client
            .get_bearer(&gate.url("/_tokengate/api-tokens"), &star)
            .await,
        "bearer",
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_shows_the_token_once_with_defaults_and_drops_undeclared_abilities() {
    let gate = Gate::start(STANDARD).await;
    let alice = browser_for(&gate, "alice").await;

    let page = alice.get(&gate, "/_tokengate/api-tokens").await;
    assert_eq!(page.status, StatusCode::OK);
    let html = text(&page);
    assert!(
        html.contains(r#"id="create-ability-read" name="abilities" value="read" checked"#),
        "read is a default"
    );
    assert!(
        html.contains(r#"id="create-ability-create" name="abilities" value="create">"#),
        "create is not"
    );
    assert!(
        html.contains(r#"<label for="token-name">"#),
        "labelled inputs"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");

    let answer = alice
        .post(
            &gate,
            "/_tokengate/api-tokens",
            &[
                ("name", "deploy"),
                ("abilities", "read"),
                ("abilities", "bogus"),
                ("abilities", "create"),
            ],
            true,
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", text(&answer));
    let html = text(&answer);
    let start = html.find(r#"<code id="new-token">"#).unwrap() + r#"<code id="new-token">"#.len();
    let plaintext = html[start..].split('<').next().unwrap().to_owned();
    assert!(html.contains("will not be shown again"));
    let client = HttpClient::http1();
    let posted = client
        .post_bearer(&gate.url("/api/posts"), &plaintext)
        .await;
    assert_eq!(posted.status, StatusCode::OK);
    assert_eq!(
        posted.upstream_header("x-token-abilities").unwrap(),
        "create,read"
    );

    // Shown once: the page does not show it again.
    let page = text(&alice.get(&gate, "/_tokengate/api-tokens").await);
    assert!(!page.contains(&plaintext));
    assert!(page.contains("deploy"));

    // `*` is never offered, and a form that posts it does not get it.
    let answer = alice
        .post(
            &gate,
            "/_tokengate/api-tokens",
            &[
                ("name", "everything"),
                ("abilities", "*"),
                ("abilities", "read"),
            ],
            true,
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", text(&answer));
    let html = text(&answer);
    let start = html.find(r#"<code id="new-token">"#).unwrap() + r#"<code id="new-token">"#.len();
    let starred = html[start..].split('<').next().unwrap().to_owned();
    let seen = client.get_bearer(&gate.url("/api/posts/1"), &starred).await;
    assert_eq!(seen.upstream_header("x-token-abilities").unwrap(), "read");
    assert_forbidden(
        &client.get_bearer(&gate.url("/admin/x"), &starred).await,
        "a posted * is not granted",
    );

    // Name rules.
    let long = "x".repeat(256);
    for name in ["", long.as_str()] {
        let answer = alice
            .post(&gate, "/_tokengate/api-tokens", &[("name", name)], true)
            .await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "name {name:?}"
        );
    }
    let answer = alice
        .post(
            &gate,
            "/_tokengate/api-tokens",
            &[("name", "dated"), ("expires_on", "2999-01-01")],
            true,
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert!(text(&answer).contains("2999-01-01"));
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_are_csrf_protected() {
    let gate = Gate::start(STANDARD).await;
    let alice = browser_for(&gate, "alice").await;
    let answer = alice
        .post(&gate, "/_tokengate/api-tokens", &[("name", "x")], false)
        .await;
    assert_eq!(answer.status.as_u16(), 419);
    let other = browser_for(&gate, "bob").await;
    let answer = alice
        .post(
            &gate,
            "/_tokengate/api-tokens",
            &[("name", "x"), ("_token", &other.xsrf)],
            false,
        )
        .await;
    assert_eq!(answer.status.as_u16(), 419, "another session's token");
    assert!(gate
        .app
        .tokens
        .list(tokengate::store::TokenQuery::all())
        .await
        .unwrap()
        .is_empty());
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_sees_and_touches_only_their_own_tokens() {
    let gate = Gate::start(STANDARD).await;
    let alice = browser_for(&gate, "alice").await;
    let bob_token = gate.token("bob", &["read"]).await;
    let bob_id = bob_token.split('|').next().unwrap();
    let mine = gate.token("alice", &["read"]).await;
    let my_id = mine.split('|').next().unwrap();

    let page = text(&alice.get(&gate, "/_tokengate/api-tokens").await);
    assert!(page.contains(&format!(r#"data-token-id="{my_id}""#)));
    assert!(
        !page.contains(&format!(r#"data-token-id="{bob_id}""#)),
        "bob's token is not listed"
    );

    for (method, path) in [
        ("GET", format!("/_tokengate/api-tokens/{bob_id}/delete")),
        ("POST", format!("/_tokengate/api-tokens/{bob_id}/delete")),
        ("POST", format!("/_tokengate/api-tokens/{bob_id}/abilities")),
        ("GET", "/_tokengate/api-tokens/999/delete".to_owned()),
        ("GET", "/_tokengate/api-tokens/abc/delete".to_owned()),
    ] {
        let answer = if method == "GET" {
            alice.get(&gate, &path).await
        } else {
            alice
                .post(&gate, &path, &[("abilities", "create")], true)
                .await
        };
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{method} {path}");
    }
    let client = HttpClient::http1();
    assert_eq!(
        client
            .get_bearer(&gate.url("/api/posts/1"), &bob_token)
            .await
            .status,
        StatusCode::OK,
        "bob's token untouched"
    );

    // Her own: abilities change, then delete after the confirmation step.
    let answer = alice
        .post(
            &gate,
            &format!("/_tokengate/api-tokens/{my_id}/abilities"),
            &[("abilities", "create")],
            true,
        )
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(
        client
            .post_bearer(&gate.url("/api/posts"), &mine)
            .await
            .status,
        StatusCode::OK
    );
    let confirm = alice
        .get(&gate, &format!("/_tokengate/api-tokens/{my_id}/delete"))
        .await;
    assert!(text(&confirm).contains("confirm-delete"));
    let answer = alice
        .post(
            &gate,
            &format!("/_tokengate/api-tokens/{my_id}/delete"),
            &[],
            true,
        )
        .await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_unauthenticated(
        &client.get_bearer(&gate.url("/api/posts/1"), &mine).await,
        "deleted on the page",
    );
    gate.stop().await;
}

/// `tokens.max_per_user` holds however many creations race, on the page as anywhere, and
/// a revoked token frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_owns_at_most_max_per_user_tokens() {
    let config = STANDARD.replace("tokens:\n", "tokens:\n  max_per_user: 3\n");
    let gate = Gate::start(&config).await;
    let create = |name: String| {
        let tokens = &gate.app.tokens;
        async move {
            tokens
                .create(tokengate::token_cache::CreateToken {
                    user: "alice".into(),
                    name,
                    abilities: None,
                    expires_at: None,
                })
                .await
        }
    };
    let results =
        futures_util::future::join_all((0..20).map(|i| create(format!("burst {i}")))).await;
    let created: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(created.len(), 3, "20 at once, 3 allowed");
    let refused = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert!(
        refused.to_string().contains("tokens.max_per_user"),
        "{refused}"
    );
    // Another user is not affected.
    gate.token("bob", &["read"]).await;

    // The page says so with a 422.
    let alice = browser_for(&gate, "alice").await;
    let answer = alice
        .post(
            &gate,
            "/_tokengate/api-tokens",
            &[("name", "one more")],
            true,
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(text(&answer).contains("at most 3"), "{}", text(&answer));

    // A revoked token frees its place.
    assert!(gate.app.tokens.revoke(created[0].record.id).await.unwrap());
    assert!(create("after a revocation".into()).await.is_ok());
    assert!(create("again".into()).await.is_err());
    gate.stop().await;
}
