//! tokengate: a reverse-proxy authentication sidecar. It lets a request through to the app
//! it guards only when the request carries a valid credential with the abilities its route
//! requires, and tells the app who is asking in headers (`X-Token-Abilities`, …).
//!
//! How a request flows through the modules:
//!
//! ```text
//! server    start-up (caches, admin listener, flusher, reloads), serve, drain, flush
//! accept    the workers' accept loops, one task per connection, HTTP/1.1 + HTTP/2
//!           (hyper-util auto); `watchdog` closes a connection with no request in progress
//!           for too long
//!   proxy   the pipeline, the one place that knows the order of the steps:
//!     decision  what the request means to tokengate and to every common upstream, and
//!               so which routes it must satisfy (pure; `explain` runs it too):
//!       path             check the path, decode it, read it as upstreams may (400)
//!       method_override  the methods a header or a `_method` field names
//!       routes           match the compiled route table, first match wins (403)
//!     body      the request body on its way: a prefix read for `_method`, the rest
//!               checked as it streams, forged trailers dropped
//!     session_cache  verify the session cookie (Sanctum's order: first) against the
//!                    cache in front of the `store`; `auth::csrf` rules
//!     token_cache    verify the bearer token the same way (formats: `credential`)
//!     auth      does the principal satisfy each route's `ability` names? (401 / 403)
//!     headers   strip hop-by-hop, underscored, forged identity and forwarding headers,
//!               inject ours
//!     upstream  stream the request to the app and its answer back, on connections
//!               dedicated to the client connection (`upstream::pool`); `upstream::lean`
//!               for bodiless HTTP/1.1 requests, hyper's client for the rest, one set of
//!               framing rules for both (`upstream::framing`, `upstream::chunked`)
//!   pages   tokengate's own endpoints under `/_tokengate/` (login, logout, csrf-cookie),
//!           whose paths are in `reserved`
//!   error   the single mapping of a refusal to a status and JSON body (an upstream's
//!           failure reaches it as `upstream::UpstreamError`, mapped and counted by `proxy`)
//! ```
//!
//! Around it: `config` (YAML → validated `Config`), `app` (the shared state), `store` (the
//! `Store` trait, the sled and the SQL implementation), `transfer` (`store export` and
//! `store import`), `users` (argon2id passwords), `throttle` (the login throttle), `clock`
//! (injectable time), `cli`, `explain` and `demo` (the command line), `echo` (a small
//! upstream for the demo and tests).

pub mod ability;
pub mod accept;
pub mod access_log;
pub mod admin;
pub mod app;
pub mod auth;
pub mod body;
pub mod cli;
pub mod clock;
pub mod config;
pub mod cookies;
pub mod credential;
pub mod decision;
pub mod demo;
pub mod echo;
pub mod error;
pub mod explain;
pub mod headers;
pub mod laravel_sessions;
pub mod method_override;
pub mod metrics;
pub mod pages;
pub mod path;
pub mod proxy;
pub mod reserved;
pub mod routes;
pub mod server;
pub mod session_cache;
pub mod store;
pub mod streams;
pub mod throttle;
pub mod tls;
pub mod token_cache;
pub mod transfer;
pub mod tunnel;
pub mod upstream;
pub mod users;
pub mod watchdog;
