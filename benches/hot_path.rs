//! Micro-benchmarks of the per-request hot path: token verification (cache hit, unknown,
//! malformed; 10 vs 1,000,000 cached tokens), route matching (1 to 10,000 routes), the path
//! check, the header rewrite and recording a request's metrics. Run with `cargo bench`; `TG_BENCH_TOKENS` sets the large
//! token count (default 1,000,000). The token cache is warmed as `serve` warms it, so an
//! unknown token is refused without a store read.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::StatusCode;
use http::{Method, Request};
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokengate::ability::Ability;
use tokengate::clock::SystemClock;
use tokengate::config::Config;
use tokengate::credential::token::{generate_secret, TokenHash};
use tokengate::headers::{self, ConnInfo};
use tokengate::metrics::{CredentialKind, Decision, Metrics, RouteLabel};
use tokengate::path;
use tokengate::routes::{AuthMode, Route, RouteTable};
use tokengate::store::SledStore;
use tokengate::token_cache::{CreateToken, TokenPolicy, Tokens};

/// Polls a future once: a verification served from the cache completes without waiting,
/// so this measures it without an executor's overhead. Anything else falls back to `rt`.
fn now_or_block<F: Future>(rt: &tokio::runtime::Runtime, f: F) -> F::Output {
    let mut f = pin!(f);
    let poll = {
        let _context = rt.enter();
        f.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    };
    match poll {
        Poll::Ready(v) => v,
        Poll::Pending => rt.block_on(f),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A token service over a fresh sled store holding `n` tokens, every one of them cached.
fn tokens_with(rt: &tokio::runtime::Runtime, n: usize) -> (Tokens, Vec<String>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("store")).unwrap();
    let policy = TokenPolicy {
        prefix: "tg_".into(),
        lifetime: None,
        abilities: abilities(&["read", "write"]),
        default_abilities: abilities(&["read"]),
        cache_capacity: n + 16,
        max_per_user: usize::MAX,
    };
    let tokens = Tokens::new(Arc::new(store), Arc::new(SystemClock), policy);
    let plaintexts = rt.block_on(async {
        let mut plaintexts = Vec::with_capacity(n);
        for chunk in (0..n).collect::<Vec<_>>().chunks(100_000) {
            let requests = chunk
                .iter()
                .map(|i| CreateToken {
                    user: format!("user{i}"),
                    name: "bench".into(),
                    abilities: Some(vec!["read".into()]),
                    expires_at: None,
                })
                .collect();
            plaintexts.extend(
                tokens
                    .import(requests)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|c| c.plaintext),
            );
        }
        // As `serve` does at startup: load every token, making the cache authoritative.
        tokens.warm().await.unwrap();
        assert!(tokens.is_complete());
        for p in &plaintexts {
            assert!(tokens.authenticate(p).await.unwrap().is_some());
        }
        plaintexts
    });
    (tokens, plaintexts, dir)
}

fn verify(c: &mut Criterion) {
    let rt = runtime();
    let large: usize = std::env::var("TG_BENCH_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut group = c.benchmark_group("verify");
    for n in [10, large] {
        let (tokens, plaintexts, _dir) = tokens_with(&rt, n);
        // Random tokens, not one hot one, so the cache size can show.
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new("cache_hit", n), &n, |b, _| {
            b.iter(|| {
                i = (i
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407))
                    % plaintexts.len();
                now_or_block(&rt, tokens.authenticate(black_box(&plaintexts[i]))).unwrap()
            })
        });
        if n == 10 {
            let unknown = format!("999999999|{}", generate_secret("tg_"));
            group.bench_function("unknown_id", |b| {
                b.iter(|| now_or_block(&rt, tokens.authenticate(black_box(&unknown))).unwrap())
            });
            let wrong = format!("{}x", plaintexts[0]);
            group.bench_function("known_id_wrong_secret", |b| {
                b.iter(|| now_or_block(&rt, tokens.authenticate(black_box(&wrong))).unwrap())
            });
            group.bench_function("malformed", |b| {
                b.iter(|| now_or_block(&rt, tokens.authenticate(black_box("12ab|"))).unwrap())
            });
        }
    }
    group.finish();
    c.bench_function("sha256_of_secret", |b| {
        let secret = generate_secret("tg_");
        b.iter(|| TokenHash::of(black_box(&secret)))
    });
}

fn route_table(n: usize) -> RouteTable {
    let mut routes: Vec<Route> = (0..n.saturating_sub(1))
        .map(|i| Route {
            index: i,
            pattern: format!("/other{i}/**").into(),
            methods: None,
            auth: AuthMode::Any,
            all_of: abilities(&["write"]).into(),
            any_of: Box::new([]),
        })
        .collect();
    routes.push(Route {
        index: routes.len(),
        pattern: "/bench/**".into(),
        methods: Some(vec![Method::GET].into()),
        auth: AuthMode::Any,
        all_of: abilities(&["read"]).into(),
        any_of: Box::new([]),
    });
    RouteTable::new(routes).unwrap()
}

fn routes(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    for n in [1, 100, 1_000, 10_000] {
        let table = route_table(n);
        let path = path::check("/bench/item").unwrap();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                table
                    .find(black_box(&Method::GET), black_box(&path))
                    .map(|r| r.index)
            })
        });
    }
    group.finish();
}

fn paths(c: &mut Criterion) {
    let mut group = c.benchmark_group("path_check");
    for (name, raw) in [
        ("plain", "/api/v1/posts/12345/comments"),
        ("encoded", "/api/v1/caf%C3%A9/%61dmin/x"),
        ("refused_dot", "/api/../admin"),
    ] {
        group.bench_function(name, |b| b.iter(|| path::check(black_box(raw)).is_ok()));
    }
    group.finish();
}

fn header_rewrite(c: &mut Criterion) {
    let rt = runtime();
    let (tokens, plaintexts, _dir) = tokens_with(&rt, 1);
    let token = now_or_block(&rt, tokens.authenticate(&plaintexts[0]))
        .unwrap()
        .unwrap();
    let principal = tokengate::auth::Principal::Token(token);
    let config =
        Config::parse("upstream: http://127.0.0.1:3000\nroutes:\n  - path: /**\n").unwrap();
    let conn = ConnInfo::new("127.0.0.1:50000".parse().unwrap(), &[], false);
    let request = || {
        Request::get("/api/posts/1")
            .header("host", "app.example")
            .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) bench")
            .header("accept", "application/json")
            .header("accept-encoding", "gzip, deflate, br")
            .header("accept-language", "en-US,en;q=0.9")
            .header("authorization", format!("Bearer {}", plaintexts[0]))
            .header("connection", "keep-alive")
            .header("x-token-abilities", "*")
            .body(())
            .unwrap()
            .into_parts()
            .0
    };
    c.bench_function("header_rewrite/request", |b| {
        b.iter_batched(
            request,
            |mut parts| {
                headers::prepare_request(&mut parts, &config, Some(&principal), &conn);
                parts
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let response_headers = || {
        let mut h = http::HeaderMap::new();
        h.insert("content-type", "text/plain".parse().unwrap());
        h.insert("content-length", "512".parse().unwrap());
        h.insert("connection", "keep-alive".parse().unwrap());
        h.insert("date", "Sun, 29 Nov 2026 08:00:00 GMT".parse().unwrap());
        h
    };
    c.bench_function("header_rewrite/response", |b| {
        b.iter_batched(
            response_headers,
            |mut h| {
                headers::strip_hop_by_hop(&mut h);
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

/// Recording one request (counter by route/method/status, duration histogram, decision).
fn metrics(c: &mut Criterion) {
    let table = route_table(100);
    let shared = Metrics::new(&table);
    let metrics = shared.worker();
    let route = RouteLabel::Route(100);
    c.bench_function("metrics/record_request", |b| {
        b.iter(|| {
            let _in_flight = metrics.in_flight();
            metrics.request(
                black_box(route),
                black_box(&Method::GET),
                black_box(StatusCode::OK),
                black_box(Duration::from_micros(180)),
            );
            metrics.decision(Decision::Allowed, CredentialKind::Token);
        })
    });
}

criterion_group!(benches, verify, routes, paths, header_rewrite, metrics);
criterion_main!(benches);

fn abilities(names: &[&str]) -> Vec<Ability> {
    names.iter().map(|n| Ability::new(n).unwrap()).collect()
}
