//! The proxy end to end over real sockets: decisions, headers the upstream saw, paths,
//! streaming, HTTP/2, upstream failures.

mod common;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_reaches_the_upstream_with_its_identity() {
    let gate = Gate::start(STANDARD).await;
    let token = gate.token("user-17", &["read", "create"]).await;
    let id = token.split('|').next().unwrap().to_string();
    let client = HttpClient::http1();

    let answer = client
        .get_bearer(&gate.url("/api/posts/5?x=1"), &token)
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = gate.echo.last().expect("the upstream saw the request");
    assert_eq!(seen.path, "/api/posts/5?x=1");
    assert_eq!(seen.headers["x-token-abilities"], "create,read");
    assert_eq!(seen.headers["x-auth-user"], "user-17");
    assert_eq!(seen.headers["x-auth-token-id"], id.as_str());
    assert_eq!(seen.headers["x-auth-method"], "token");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(
        seen.headers["x-forwarded-host"],
        gate.addr.to_string().as_str()
    );
    assert!(
        !seen.headers.contains_key("authorization"),
        "the secret is not forwarded by default"
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_identity_headers_never_reach_the_upstream() {
    let gate = Gate::start(STANDARD).await;
    let token = gate.token("alice", &["read"]).await;
    let client = HttpClient::http1();
    let bearer = format!("Bearer {token}");
    let forged: Vec<(&str, &str)> = vec![
        ("X-Token-Abilities", "*"),
        ("X-Auth-User", "admin"),
        ("X-Auth-Token-Id", "1"),
        ("X-Auth-Method", "session"),
        ("X-Token-Whatever", "x"),
    ];

    let mut protected = forged.clone();
    protected.push(("authorization", &bearer));
    let answer = client.get(&gate.url("/api/posts/1"), &protected).await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = gate.echo.last().unwrap();
    assert_eq!(seen.headers["x-token-abilities"], "read");
    assert_eq!(seen.headers["x-auth-user"], "alice");
    assert_eq!(seen.headers["x-auth-method"], "token");
    assert!(!seen.headers.contains_key("x-token-whatever"));
    assert_eq!(seen.headers.get_all("x-token-abilities").iter().count(), 1);

    let answer = client.get(&gate.url("/healthz"), &forged).await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = gate.echo.last().unwrap();
    assert_eq!(seen.path, "/healthz");
    for name in [
        "x-token-abilities",
        "x-auth-user",
        "x-auth-token-id",
        "x-auth-method",
        "x-token-whatever",
    ] {
        assert!(
            !seen.headers.contains_key(name),
            "{name} reached the upstream on a public route"
        );
    }
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_unknown_revoked_and_expired_tokens_are_401() {
    let gate = Gate::start(STANDARD).await;
    let client = HttpClient::http1();
    let url = gate.url("/api/posts/1");

    assert_unauthenticated(&client.get(&url, &[]).await, "no token");
    assert_unauthenticated(&client.get_bearer(&url, "999|tg_nope").await, "unknown id");
    let real = gate.token("u", &["read"]).await;
    let (id, _) = real.split_once('|').unwrap();
    assert_unauthenticated(
        &client
            .get_bearer(&url, &format!("{id}|tg_wrongsecret"))
            .await,
        "right id, wrong secret",
    );

    // revoked: works, then not, on the very next request
    assert_eq!(client.get_bearer(&url, &real).await.status, StatusCode::OK);
    assert!(gate
        .app
        .tokens
        .revoke(tokengate::credential::token::TokenId(id.parse().unwrap()))
        .await
        .unwrap());
    assert_unauthenticated(&client.get_bearer(&url, &real).await, "revoked");

    // per-token expiry
    let expiring = gate.token_expiring("u", &["read"], Some(T0 + 3600)).await;
    assert_eq!(
        client.get_bearer(&url, &expiring).await.status,
        StatusCode::OK
    );
    gate.clock.advance(3599);
    assert_eq!(
        client.get_bearer(&url, &expiring).await.status,
        StatusCode::OK
    );
    gate.clock.advance(1);
    assert_unauthenticated(
        &client.get_bearer(&url, &expiring).await,
        "per-token expiry",
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_expiration_applies_from_creation() {
    let body = STANDARD.replace(
        "  prefix: \"tg_\"",
        "  prefix: \"tg_\"\n  expiration_minutes: 60",
    );
    let gate = Gate::start(&body).await;
    let client = HttpClient::http1();
    let url = gate.url("/api/posts/1");
    let token = gate.token("u", &["read"]).await;
    gate.clock.advance(59 * 60);
    assert_eq!(client.get_bearer(&url, &token).await.status, StatusCode::OK);
    gate.clock.advance(60);
    assert_unauthenticated(&client.get_bearer(&url, &token).await, "global expiry");
    // a token made now is fresh
    let fresh = gate.token("u", &["read"]).await;
    assert_eq!(client.get_bearer(&url, &fresh).await.status, StatusCode::OK);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abilities_decide_403_and_no_route_is_403() {
    let gate = Gate::start(STANDARD).await;
    let client = HttpClient::http1();
    let reader = gate.token("u", &["read"]).await;
    let reporter = gate.token("u", &["reports"]).await;
    let star = gate.token("root", &["*"]).await;

    assert_forbidden(
        &client.post_bearer(&gate.url("/api/posts"), &reader).await,
        "read cannot create",
    );
    assert_forbidden(
        &client.get_bearer(&gate.url("/api/both"), &reader).await,
        "abilities: all are needed",
    );
    assert_eq!(
        client
            .get_bearer(&gate.url("/api/reports/q1"), &reporter)
            .await
            .status,
        StatusCode::OK,
        "any_ability: one suffices"
    );
    assert_forbidden(
        &client
            .get_bearer(&gate.url("/api/reports/q1"), &reader)
            .await,
        "any_ability: none held",
    );

    for (method, path) in [
        (Method::POST, "/api/posts"),
        (Method::GET, "/api/both"),
        (Method::GET, "/admin/x"),
        (Method::GET, "/api/reports/x"),
    ] {
        let value = format!("Bearer {star}");
        let answer = client
            .send(
                method.clone(),
                &gate.url(path),
                &[("authorization", value.as_bytes())],
                Bytes::new(),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "* token on {method} {path}");
    }
    assert_eq!(gate.echo.last().unwrap().headers["x-token-abilities"], "*");

    let answer = client.get_bearer(&gate.url("/nowhere"), &star).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(
        answer.json(),
        serde_json::json!({"message": "No route allows this request."})
    );
    // methods are part of the match: DELETE on a GET-only route matches nothing
    let value = format!("Bearer {star}");
    let answer = client
        .send(
            Method::DELETE,
            &gate.url("/api/posts/1"),
            &[("authorization", value.as_bytes())],
            Bytes::new(),
        )
        .await;
    assert_eq!(
        answer.json(),
        serde_json::json!({"message": "No route allows this request."})
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_route_refuses_bearer_tokens() {
    let gate = Gate::start(STANDARD).await;
    let star = gate.token("root", &["*"]).await;
    let answer = HttpClient::http1()
        .get_bearer(&gate.url("/app/home"), &star)
        .await;
    assert_unauthenticated(&answer, "auth: session with a bearer token");
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_its_id_is_found_by_hash() {
    let gate = Gate::start(STANDARD).await;
    let client = HttpClient::http1();
    let token = gate.token("jet", &["read"]).await;
    let (id, bare) = token.split_once('|').unwrap();
    let answer = client.get_bearer(&gate.url("/api/posts/1"), bare).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(gate.echo.last().unwrap().headers["x-auth-token-id"], id);
    // and again, now from the cache
    assert_eq!(
        client
            .get_bearer(&gate.url("/api/posts/1"), bare)
            .await
            .status,
        StatusCode::OK
    );
    assert_unauthenticated(
        &client
            .get_bearer(&gate.url("/api/posts/1"), &format!("{bare}x"))
            .await,
        "bare, wrong",
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bearer_values_are_401_never_500() {
    let gate = Gate::start(STANDARD).await;
    let client = HttpClient::http1();
    let url = gate.url("/api/posts/1");
    let real = gate.token("u", &["read"]).await;
    let huge = format!("Bearer 1|{}", "a".repeat(64 * 1024));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("scheme only", b"Bearer".to_vec()),
        ("scheme and space", b"Bearer ".to_vec()),
        ("empty id", b"Bearer |x".to_vec()),
        ("non-digit id", b"Bearer 1ABC|x".to_vec()),
        ("empty secret", b"Bearer 1|".to_vec()),
        ("non-ASCII", b"Bearer 1|\xc3\xa9\xff".to_vec()),
        ("basic", b"Basic dXNlcjpwYXNz".to_vec()),
        ("64 KiB", huge.into_bytes()),
    ];
    for (what, value) in cases {
        let answer = client
            .send(
                Method::GET,
                &url,
                &[("authorization", &value)],
                Bytes::new(),
            )
            .await;
        if answer.status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
            assert_eq!(what, "64 KiB");
        } else {
            assert_unauthenticated(&answer, what);
        }
    }
    // lowercase scheme is fine with a real token
    let answer = client
        .get(&url, &[("authorization", &format!("bearer {real}"))])
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    // two Authorization headers are ambiguous
    let a = format!("Bearer {real}");
    let answer = client
        .send(
            Method::GET,
            &url,
            &[
                ("authorization", a.as_bytes()),
                ("authorization", b"Bearer 2|x"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    // the server is still fine
    assert_eq!(client.get_bearer(&url, &real).await.status, StatusCode::OK);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_paths_are_400_and_encoded_paths_match_decoded() {
    let gate = Gate::start(STANDARD).await;
    let client = HttpClient::http1();
    let admin = gate.token("root", &["admin"]).await;
    let before = gate.echo.seen().len();
    for path in [
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/a%2fb",
        "/a%5cb",
        "/a%00b",
        "/open//x",
        "/open/%252e%252e/x",
        "/open/%ff",
    ] {
        let answer = client.get_bearer(&gate.url(path), &admin).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path}");
        assert!(
            answer.json()["message"]
                .as_str()
                .unwrap()
                .starts_with("The request path"),
            "{path}"
        );
    }
    assert_eq!(
        gate.echo.seen().len(),
        before,
        "nothing refused reached the upstream"
    );

    // /%61dmin is /admin: it needs the admin ability
    let reader = gate.token("u", &["read"]).await;
    assert_forbidden(
        &client.get_bearer(&gate.url("/%61dmin/x"), &reader).await,
        "/%61dmin is /admin",
    );
    let answer = client.get_bearer(&gate.url("/%61dmin/x"), &admin).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        gate.echo.last().unwrap().path,
        "/%61dmin/x",
        "the path matched is the path forwarded"
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reserved_prefix_never_reaches_the_upstream() {
    let gate = Gate::start(STANDARD).await;
    let star = gate.token("root", &["*"]).await;
    let client = HttpClient::http1();
    for (path, status) in [
        ("/_tokengate/login", StatusCode::OK),
        ("/_tokengate/x/y", StatusCode::NOT_FOUND),
        ("/_tokengate", StatusCode::NOT_FOUND),
        ("/%5Ftokengate/login", StatusCode::NOT_FOUND),
        ("/%5ftokengate/x", StatusCode::NOT_FOUND),
    ] {
        let answer = client.get_bearer(&gate.url(path), &star).await;
        assert_eq!(answer.status, status, "{path}");
    }
    assert!(gate.echo.seen().is_empty());
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_gets_the_same_decisions() {
    let gate = Gate::start(STANDARD).await;
    let h2 = HttpClient::http2();
    let reader = gate.token("h2user", &["read"]).await;
    let answer = h2.get_bearer(&gate.url("/api/posts/1"), &reader).await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = gate.echo.last().unwrap();
    assert_eq!(seen.headers["x-token-abilities"], "read");
    assert_eq!(seen.headers["x-auth-user"], "h2user");
    assert_eq!(seen.headers["host"], gate.addr.to_string().as_str());
    assert_unauthenticated(&h2.get(&gate.url("/api/posts/1"), &[]).await, "h2 no token");
    assert_forbidden(
        &h2.post_bearer(&gate.url("/api/posts"), &reader).await,
        "h2 lacking ability",
    );
    assert_eq!(
        h2.get_bearer(&gate.url("/a%2fb"), &reader).await.status,
        StatusCode::BAD_REQUEST
    );
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_json_without_internals() {
    // a port that was just free: nothing listens there
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let echo =
        tokengate::echo::Echo::start(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    let gate = Gate::start_with_upstream(dead, echo, STANDARD).await;
    let token = gate.token("u", &["read"]).await;
    let answer = HttpClient::http1()
        .get_bearer(&gate.url("/api/posts/1"), &token)
        .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        answer.json(),
        serde_json::json!({"message": "The upstream service is unavailable."})
    );
    assert!(!String::from_utf8_lossy(&answer.body).contains("127.0.0.1"));
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_used_is_written_in_one_batch_not_per_request() {
    let gate = Gate::start(STANDARD).await;
    let client = HttpClient::http1();
    let a = gate.token("a", &["read"]).await;
    let b = gate.token("b", &["read"]).await;
    for i in 0..50 {
        gate.clock.advance(1);
        let token = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            client
                .get_bearer(&gate.url("/api/posts/1"), token)
                .await
                .status,
            StatusCode::OK
        );
    }
    assert_eq!(
        gate.app.tokens.touch_writes(),
        0,
        "no store write while serving"
    );
    assert_eq!(gate.app.tokens.flush_last_used().await.unwrap(), 2);
    assert_eq!(
        gate.app.tokens.touch_writes(),
        1,
        "one batched write for 50 requests"
    );
    assert_eq!(
        gate.app.tokens.flush_last_used().await.unwrap(),
        0,
        "nothing new, nothing written"
    );
    assert_eq!(gate.app.tokens.touch_writes(), 1);
    let stored = gate
        .app
        .tokens
        .store()
        .list_tokens(tokengate::store::TokenQuery::all())
        .await
        .unwrap();
    let last: Vec<Option<i64>> = stored.iter().map(|t| t.last_used_at).collect();
    assert_eq!(last, vec![Some(T0 + 49), Some(T0 + 50)]);
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_racing_cache_fills_never_leaves_the_token_valid() {
    let gate = Gate::start(STANDARD).await;
    let client = HttpClient::http1();
    for _ in 0..20 {
        let token = gate.token("race", &["read"]).await;
        let id: u64 = token.split('|').next().unwrap().parse().unwrap();
        let url = gate.url("/api/posts/1");
        let hammer = {
            let client = client.clone();
            let (url, token) = (url.clone(), token.clone());
            tokio::spawn(async move {
                for _ in 0..5 {
                    client.get_bearer(&url, &token).await;
                }
            })
        };
        gate.app
            .tokens
            .revoke(tokengate::credential::token::TokenId(id))
            .await
            .unwrap();
        hammer.await.unwrap();
        assert_unauthenticated(&client.get_bearer(&url, &token).await, "after revocation");
    }
    gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_cleanly() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gate = Gate::start(STANDARD).await;
    let token = gate.token("u", &["read"]).await;
    assert_eq!(
        HttpClient::http1()
            .get_bearer(&gate.url("/api/posts/1"), &token)
            .await
            .status,
        StatusCode::OK
    );
    // A keep-alive connection left idle is closed at once, not held for the 30 s grace.
    let mut idle = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    tokio::time::timeout(Duration::from_secs(10), gate.stop())
        .await
        .expect("server stops before the grace period ends");
    let closed = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the idle connection is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_authoritative_until_it_overflows_and_then_reads_the_store() {
    let body = STANDARD.replace(
        "  prefix: \"tg_\"",
        "  prefix: \"tg_\"\n  cache_capacity: 2",
    );
    let gate = Gate::start(&body).await;
    let client = HttpClient::http1();
    let url = gate.url("/api/posts/1");
    assert!(gate.app.tokens.is_complete(), "an empty store fits");
    let first = gate.token("a", &["read"]).await;
    assert!(gate.app.tokens.is_complete());
    assert_unauthenticated(
        &client.get_bearer(&url, "4242|tg_unknown").await,
        "unknown while complete",
    );

    let mut tokens = vec![first];
    for user in ["b", "c", "d", "e"] {
        tokens.push(gate.token(user, &["read"]).await);
    }
    assert!(!gate.app.tokens.is_complete(), "5 tokens do not fit in 2");
    // Twice: once as kept since creation, once as read back from the store by `warm`.
    for round in ["kept", "rebuilt"] {
        for _ in 0..2 {
            for token in &tokens {
                assert_eq!(client.get_bearer(&url, token).await.status, StatusCode::OK);
            }
        }
        made_up_tokens_cost_no_store_read(&gate, &client, &url, &tokens, round).await;
        gate.app.tokens.warm().await.unwrap();
    }
    let id: u64 = tokens[0].split('|').next().unwrap().parse().unwrap();
    gate.app
        .tokens
        .revoke(tokengate::credential::token::TokenId(id))
        .await
        .unwrap();
    assert_unauthenticated(
        &client.get_bearer(&url, &tokens[0]).await,
        "revoked, not cached",
    );
    gate.stop().await;
}

/// Past the cache's capacity, tokens that are not stored are refused without a store read:
/// unknown ids, a stored id with a wrong secret, bare tokens whose hash is not stored.
async fn made_up_tokens_cost_no_store_read(
    gate: &Gate,
    client: &HttpClient,
    url: &str,
    tokens: &[String],
    round: &str,
) {
    let (id, secret) = tokens[1].split_once('|').unwrap();
    let wrong_secret = format!("{id}|{}x", &secret[..secret.len() - 1]);
    let made_up = [
        "4242|tg_unknown".to_string(),
        "0|tg_unknown".to_string(),
        format!("{}|{secret}", id.parse::<u64>().unwrap() + 1000),
        wrong_secret,
        "tg_bare_and_unknown".to_string(),
    ];
    let before = gate.app.tokens.store_reads();
    for token in &made_up {
        assert_unauthenticated(&client.get_bearer(url, token).await, token);
    }
    assert_eq!(
        gate.app.tokens.store_reads(),
        before,
        "{round}: made-up tokens read the store"
    );
    // A stored token the cache does not hold is still read from the store and accepted.
    let mut read = false;
    for token in tokens {
        let before = gate.app.tokens.store_reads();
        assert_eq!(client.get_bearer(url, token).await.status, StatusCode::OK);
        read |= gate.app.tokens.store_reads() > before;
    }
    assert!(read, "{round}: 5 tokens in a cache of 2, yet none read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updated_abilities_apply_on_the_next_request() {
    let gate = Gate::start(STANDARD).await;
    let client = HttpClient::http1();
    let token = gate.token("u", &["read"]).await;
    let id =
        tokengate::credential::token::TokenId(token.split('|').next().unwrap().parse().unwrap());
    assert_forbidden(
        &client.post_bearer(&gate.url("/api/posts"), &token).await,
        "before",
    );
    let (record, dropped) = gate
        .app
        .tokens
        .set_abilities(id, &["read".into(), "create".into(), "bogus".into()])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.abilities, vec!["create", "read"]);
    assert_eq!(dropped, vec!["bogus"]);
    assert_eq!(
        client
            .post_bearer(&gate.url("/api/posts"), &token)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        gate.echo.last().unwrap().headers["x-token-abilities"],
        "create,read"
    );
    gate.stop().await;
}

/// A POST whose body names another method: the `_method` within the part read before the
/// decision is authorized with the POST; one that comes later cuts the body before its
/// end (so no upstream can run it), and the client gets 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_named_in_the_body_is_authorized_or_the_body_is_cut() {
    let config = STANDARD.replace(
        "routes:\n",
        "routes:\n  - path: /items/{id}\n    methods: [POST]\n    abilities: [create]\n  - path: /items/{id}\n    methods: [DELETE]\n    abilities: [delete]\n",
    );
    let gate = Gate::start(&config).await;
    let creator = format!("Bearer {}", gate.token("alice", &["create"]).await);
    let both = format!(
        "Bearer {}",
        gate.token("alice", &["create", "delete"]).await
    );
    let padding = "x".repeat(100 * 1024);
    // Within the part read ahead (the client sends it all at once): authorized as POST and
    // DELETE.
    let early = [format!("_method=DELETE&pad={padding}")];
    assert_eq!(post_in_pieces(&gate, &creator, &early).await.0, 403);
    let (status, upstream) = post_in_pieces(&gate, &both, &early).await;
    assert_eq!(status, 200);
    assert_eq!(upstream["body_bytes"], early[0].len());
    // In a piece sent after the part read ahead: never a complete request upstream, 400 to
    // the client, even for a token that could have done it.
    for late in [
        [format!("pad={padding}"), "&_method=DELETE".to_owned()],
        [format!("pad={padding}&_meth"), "od=DEL".to_owned()],
    ] {
        for token in [&creator, &both] {
            let before = gate.echo.seen().len();
            let (status, answer) = post_in_pieces(&gate, token, &late).await;
            assert_eq!(status, 400, "{answer}");
            assert_eq!(
                answer,
                serde_json::json!({"message": "The request body names a method after the part checked before forwarding."})
            );
            let whole = (late[0].len() + late[1].len()) as u64;
            for seen in &gate.echo.seen()[before..] {
                assert!(seen.body_bytes < whole, "the upstream got the whole body");
            }
        }
    }
    // A long body naming no method streams through whole, in pieces.
    let plain = [format!("pad={padding}"), "&title=x".to_owned()];
    let (status, upstream) = post_in_pieces(&gate, &creator, &plain).await;
    assert_eq!(status, 200);
    assert_eq!(upstream["body_bytes"], plain[0].len() + plain[1].len());
    gate.stop().await;
}

/// POSTs a form to `/items/1` on a connection of its own, its body sent in `pieces` (50 ms
/// apart, so that tokengate reads them apart): the status and the JSON answer.
async fn post_in_pieces(
    gate: &Gate,
    authorization: &str,
    pieces: &[String],
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let length: usize = pieces.iter().map(String::len).sum();
    let mut stream = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let head = format!(
        "POST /items/1 HTTP/1.1\r\nhost: x\r\nauthorization: {authorization}\r\n\
         content-type: application/x-www-form-urlencoded\r\ncontent-length: {length}\r\n\
         connection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for piece in pieces {
        // A refused request may be answered, and its connection closed, before all is sent.
        if stream.write_all(piece.as_bytes()).await.is_err() {
            break;
        }
        // Real time is the point: pieces apart in time, read apart.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}
