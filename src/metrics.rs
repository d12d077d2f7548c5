//! Prometheus metrics: the only module that imports `prometheus`. An owned `Registry`
//! (never the global one), rendered at `/metrics` on the admin listener.
//!
//! Labels are bounded: the route label is the route's pattern from the config (`unmatched`
//! when none matched, `_tokengate` for tokengate's own pages), never the raw path; methods
//! outside the common ones count as `other`.
//!
//! Requests are recorded per worker (`WorkerMetrics`): local counters and histograms behind
//! a lock only that worker takes (and a scrape, briefly), so two cores never fight over a
//! cache line per request. A scrape first adds every worker's local values to the shared
//! registry, so it always sees every answered request. Recording allocates nothing once
//! its series exists.

use crate::routes::RouteTable;
use foldhash::fast::RandomState;
use http::{Method, StatusCode};
use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// What tokengate decided about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Unauthenticated,
    Forbidden,
    NoRoute,
    Csrf,
    BadRequest,
}

impl Decision {
    const ALL: [Decision; 6] = [
        Decision::Allowed,
        Decision::Unauthenticated,
        Decision::Forbidden,
        Decision::NoRoute,
        Decision::Csrf,
        Decision::BadRequest,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Unauthenticated => "unauthenticated",
            Decision::Forbidden => "forbidden",
            Decision::NoRoute => "no_route",
            Decision::Csrf => "csrf",
            Decision::BadRequest => "bad_request",
        }
    }
}

/// Which credential decided: a token, a session, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    None,
    Token,
    Session,
}

impl CredentialKind {
    const ALL: [CredentialKind; 3] = [
        CredentialKind::None,
        CredentialKind::Token,
        CredentialKind::Session,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CredentialKind::None => "none",
            CredentialKind::Token => "token",
            CredentialKind::Session => "session",
        }
    }
}

/// Why the upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Protocol,
}

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// Why tokengate closed a connection or tunnel that made no progress (`watchdog`, `tunnel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// No request in progress (an idle keep-alive connection, a slow request head).
    Idle,
    /// The client took nothing of its response (`timeouts.client_send_seconds`).
    ClientSend,
    /// The upstream sent nothing of its response body (`timeouts.upstream_body_idle_seconds`).
    UpstreamBody,
    /// A tunnel with no byte either way (`timeouts.tunnel_idle_seconds`).
    TunnelIdle,
    /// A WebSocket tunnel or event stream whose token or session ended (`streams`).
    Credential,
}

impl Closed {
    const ALL: [Closed; 5] = [
        Closed::Idle,
        Closed::ClientSend,
        Closed::UpstreamBody,
        Closed::TunnelIdle,
        Closed::Credential,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Closed::Idle => "idle",
            Closed::ClientSend => "client_send",
            Closed::UpstreamBody => "upstream_body",
            Closed::TunnelIdle => "tunnel_idle",
            Closed::Credential => "credential",
        }
    }
}

fn count_closed(counters: &[IntCounter; 5], reason: Closed) {
    counters[Closed::ALL.iter().position(|r| *r == reason).unwrap_or(0)].inc();
}

/// Where a request went, for its labels: a route's index, or one of the fixed values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteLabel {
    Route(usize),
    Unmatched,
    Reserved,
}

pub struct Metrics {
    registry: Registry,
    /// The process's CPU, memory and descriptors, unprefixed (`process_*`) as every
    /// Prometheus client library names them, so that stock dashboards find them.
    process: Registry,
    route_names: Names,
    duration_vec: HistogramVec,
    requests_vec: IntCounterVec,
    workers: Mutex<Vec<Registered>>,
    durations: RwLock<Vec<Histogram>>,
    duration_unmatched: Histogram,
    duration_reserved: Histogram,
    decisions: Vec<IntCounter>,
    upstream_duration: Histogram,
    upstream_errors: [IntCounter; 3],
    in_flight: IntGauge,
    tokens: IntGauge,
    sessions_active: IntGauge,
    reloads_ok: IntCounter,
    reloads_error: IntCounter,
    last_reload_success: Gauge,
    /// Rare events, counted straight into the shared series.
    closed: [IntCounter; 5],
    tunnels: IntGauge,
    token_store_reads: IntCounter,
    store_reachable: IntGauge,
    store_sync_failures: IntCounter,
}

/// Latency buckets in seconds: 100 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

impl Metrics {
    pub fn new(routes: &RouteTable) -> Self {
        let registry = Registry::new_custom(Some("tokengate".into()), None)
            .expect("the prefix is a valid metric name");
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };

        let requests_vec = counter_vec(
            "requests_total",
            "Requests answered, by route pattern, method and status.",
            &["route", "method", "status"],
        );
        let duration = histogram_vec(
            "request_duration_seconds",
            "Time from request to response headers, by route pattern.",
            &["route"],
        );
        let route_names: Vec<String> = routes
            .routes()
            .iter()
            .map(|r| r.pattern.to_string())
            .collect();
        let durations = route_names
            .iter()
            .map(|name| duration.with_label_values(&[name]))
            .collect();
        let decisions_vec = counter_vec(
            "auth_decisions_total",
            "Authentication and authorization decisions, by decision and credential kind.",
            &["decision", "method"],
        );
        let mut decisions = Vec::new();
        for decision in Decision::ALL {
            for kind in CredentialKind::ALL {
                decisions.push(decisions_vec.with_label_values(&[decision.label(), kind.label()]));
            }
        }
        let upstream_duration = Histogram::with_opts(
            HistogramOpts::new(
                "upstream_duration_seconds",
                "Time from sending a request upstream to its response headers.",
            )
            .buckets(BUCKETS.to_vec()),
        )
        .expect("valid metric");
        registry
            .register(Box::new(upstream_duration.clone()))
            .expect("registered once");
        let errors = counter_vec(
            "upstream_errors_total",
            "Failed upstream requests, by kind: connect, timeout, protocol.",
            &["kind"],
        );
        let reloads = counter_vec(
            "config_reloads_total",
            "Config reloads, by result: ok or error.",
            &["result"],
        );
        let last_reload_success = Gauge::new(
            "config_last_reload_success_timestamp_seconds",
            "When the config was last loaded successfully (unix seconds).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(last_reload_success.clone()))
            .expect("registered once");
        let closed = counter_vec(
            "connections_closed_total",
            "Connections, tunnels and streams tokengate closed, by reason: idle, client_send, upstream_body, tunnel_idle (no progress); credential (a WebSocket or event stream whose token or session ended).",
            &["reason"],
        );
        let tunnels = gauge(
            "tunnels_open",
            "Upgraded connections (WebSocket) relaying now.",
        );
        let token_store_reads = IntCounter::new(
            "token_store_reads_total",
            "Presented tokens looked up in the store: not in the cache, and possibly stored.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(token_store_reads.clone()))
            .expect("registered once");
        let store_reachable = gauge(
            "store_reachable",
            "1 while the store answers (a shared store's last re-check of cached credentials succeeded), else 0.",
        );
        store_reachable.set(1);
        let store_sync_failures = IntCounter::new(
            "store_sync_failures_total",
            "Re-checks of cached credentials against a shared store that failed.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(store_sync_failures.clone()))
            .expect("registered once");
        let process = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let collector = prometheus::process_collector::ProcessCollector::for_self();
            let _ = process.register(Box::new(collector));
        }
        Self {
            requests_vec,
            workers: Mutex::new(Vec::new()),
            durations: RwLock::new(durations),
            duration_vec: duration.clone(),
            duration_unmatched: duration.with_label_values(&["unmatched"]),
            duration_reserved: duration.with_label_values(&["_tokengate"]),
            decisions,
            upstream_duration,
            upstream_errors: [
                errors.with_label_values(&["connect"]),
                errors.with_label_values(&["timeout"]),
                errors.with_label_values(&["protocol"]),
            ],
            in_flight: gauge("requests_in_flight", "Requests being handled now."),
            tokens: gauge(
                "tokens",
                "Tokens in the cache (all stored tokens when it is complete).",
            ),
            sessions_active: gauge("sessions_active", "Sessions that are valid now."),
            reloads_ok: reloads.with_label_values(&["ok"]),
            reloads_error: reloads.with_label_values(&["error"]),
            last_reload_success,
            route_names: Arc::new(RwLock::new(Arc::new(route_names))),
            closed: Closed::ALL.map(|reason| closed.with_label_values(&[reason.label()])),
            tunnels,
            token_store_reads,
            store_reachable,
            store_sync_failures,
            registry,
            process,
        }
    }

    /// A worker's own recorder, registered so that scrapes include what it records.
    pub fn worker(&self) -> WorkerMetrics {
        let local = Arc::new(Mutex::new(Local {
            requests: HashMap::default(),
            durations: self
                .durations
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(Histogram::local)
                .collect(),
            duration_unmatched: self.duration_unmatched.local(),
            duration_reserved: self.duration_reserved.local(),
            decisions: self.decisions.iter().map(IntCounter::local).collect(),
            upstream: self.upstream_duration.local(),
            upstream_errors: self.upstream_errors.iter().map(IntCounter::local).collect(),
        }));
        let in_flight = Arc::new(AtomicI64::new(0));
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((Arc::clone(&local), Arc::clone(&in_flight)));
        WorkerMetrics {
            requests_vec: self.requests_vec.clone(),
            route_names: Arc::clone(&self.route_names),
            local,
            in_flight,
            closed: self.closed.clone(),
            tunnels: self.tunnels.clone(),
        }
    }

    pub fn reload(&self, ok: bool, at_unix_seconds: i64) {
        if ok {
            self.reloads_ok.inc();
            self.last_reload_success.set(at_unix_seconds as f64);
        } else {
            self.reloads_error.inc();
        }
    }

    /// After a config reload: route labels follow the new route table. Each worker's
    /// recordings so far are added under the old labels first.
    pub fn set_routes(&self, routes: &RouteTable) {
        let names: Vec<String> = routes
            .routes()
            .iter()
            .map(|r| r.pattern.to_string())
            .collect();
        let durations: Vec<Histogram> = names
            .iter()
            .map(|name| self.duration_vec.with_label_values(&[name]))
            .collect();
        for (local, _) in self
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let mut local = local.lock().unwrap_or_else(|e| e.into_inner());
            local.flush();
            local.requests.clear();
            local.durations = durations.iter().map(Histogram::local).collect();
        }
        *self.durations.write().unwrap_or_else(|e| e.into_inner()) = durations;
        *self.route_names.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(names);
    }

    /// Counts a connection, tunnel or stream closed (see `Closed`).
    pub fn closed(&self, reason: Closed) {
        count_closed(&self.closed, reason);
    }

    /// Records a shared store's re-check of cached credentials.
    pub fn store_synced(&self, ok: bool) {
        self.store_reachable.set(i64::from(ok));
        if !ok {
            self.store_sync_failures.inc();
        }
    }

    /// The text exposition format, with every worker's recordings added and the gauges
    /// read now.
    pub fn render(&self, tokens: usize, sessions_active: usize, token_store_reads: u64) -> String {
        let mut in_flight = 0;
        for (local, worker_in_flight) in self
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            local.lock().unwrap_or_else(|e| e.into_inner()).flush();
            in_flight += worker_in_flight.load(Ordering::Relaxed);
        }
        self.in_flight.set(in_flight);
        self.tokens.set(tokens as i64);
        self.sessions_active.set(sessions_active as i64);
        self.token_store_reads
            .inc_by(token_store_reads.saturating_sub(self.token_store_reads.get()));
        let mut out = Vec::new();
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The routes' label values, swapped by a reload.
type Names = Arc<RwLock<Arc<Vec<String>>>>;

/// A worker's recordings and its in-flight count, as the scraper reaches them.
type Registered = (Arc<Mutex<Local>>, Arc<AtomicI64>);

/// One worker's recordings since the last scrape.
struct Local {
    requests: HashMap<(RouteLabel, u8, u16), LocalIntCounter, RandomState>,
    durations: Vec<LocalHistogram>,
    duration_unmatched: LocalHistogram,
    duration_reserved: LocalHistogram,
    decisions: Vec<LocalIntCounter>,
    upstream: LocalHistogram,
    upstream_errors: Vec<LocalIntCounter>,
}

impl Local {
    fn flush(&self) {
        for counter in self.requests.values() {
            counter.flush();
        }
        for h in &self.durations {
            h.flush();
        }
        self.duration_unmatched.flush();
        self.duration_reserved.flush();
        for c in &self.decisions {
            c.flush();
        }
        self.upstream.flush();
        for c in &self.upstream_errors {
            c.flush();
        }
    }
}

/// What one worker records; see the module comment.
pub struct WorkerMetrics {
    requests_vec: IntCounterVec,
    route_names: Names,
    local: Arc<Mutex<Local>>,
    in_flight: Arc<AtomicI64>,
    closed: [IntCounter; 5],
    tunnels: IntGauge,
}

/// An open tunnel, counted in `tunnels_open` until dropped.
pub struct OpenTunnel(IntGauge);

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl WorkerMetrics {
    /// A connection or tunnel closed for making no progress.
    pub fn closed(&self, reason: Closed) {
        count_closed(&self.closed, reason);
    }

    /// A tunnel opens; it counts as open until the returned guard is dropped.
    pub fn tunnel(&self) -> OpenTunnel {
        self.tunnels.inc();
        OpenTunnel(self.tunnels.clone())
    }

    /// The local counter of a new series (made once per series and worker).
    fn request_counter(&self, key: (RouteLabel, u8, u16)) -> LocalIntCounter {
        let (route, m, status) = key;
        let names = Arc::clone(&self.route_names.read().unwrap_or_else(|e| e.into_inner()));
        let route = match route {
            RouteLabel::Route(i) => names.get(i).map_or("unmatched", String::as_str),
            RouteLabel::Unmatched => "unmatched",
            RouteLabel::Reserved => "_tokengate",
        };
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        self.requests_vec
            .with_label_values(&[route, METHODS[m as usize], status.as_str()])
            .local()
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one answered request.
    pub fn request(&self, route: RouteLabel, method: &Method, status: StatusCode, took: Duration) {
        let key = (route, method_index(method) as u8, status.as_u16());
        let mut local = self.local();
        match local.requests.get(&key) {
            Some(counter) => counter.inc(),
            None => {
                let counter = self.request_counter(key);
                counter.inc();
                local.requests.insert(key, counter);
            }
        }
        let seconds = took.as_secs_f64();
        match route {
            RouteLabel::Route(i) => match local.durations.get(i) {
                Some(h) => h.observe(seconds),
                None => local.duration_unmatched.observe(seconds),
            },
            RouteLabel::Unmatched => local.duration_unmatched.observe(seconds),
            RouteLabel::Reserved => local.duration_reserved.observe(seconds),
        }
    }

    pub fn decision(&self, decision: Decision, kind: CredentialKind) {
        let d = Decision::ALL
            .iter()
            .position(|x| *x == decision)
            .unwrap_or(0);
        let k = CredentialKind::ALL
            .iter()
            .position(|x| *x == kind)
            .unwrap_or(0);
        self.local().decisions[d * CredentialKind::ALL.len() + k].inc();
    }

    pub fn upstream(&self, took: Duration) {
        self.local().upstream.observe(took.as_secs_f64());
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        let i = match kind {
            UpstreamErrorKind::Connect => 0,
            UpstreamErrorKind::Timeout => 1,
            UpstreamErrorKind::Protocol => 2,
        };
        self.local().upstream_errors[i].inc();
    }

    /// A request in flight until the guard is dropped.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }
}

/// Decrements the worker's in-flight count when dropped.
pub struct InFlight<'a>(&'a AtomicI64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The content type of `render`'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::collections::HashMap;

    fn routes(paths: &[&str]) -> RouteTable {
        let mut yaml = String::from(
            "upstream: http://127.0.0.1:1\nstore:\n  path: /nonexistent\nabilities: [read]\nroutes:\n",
        );
        for path in paths {
            yaml.push_str(&format!("  - path: {path}\n    abilities: [read]\n"));
        }
        Config::parse(&yaml).expect("a valid config").routes
    }

    /// Every sample of an exposition: `name{labels}` as written there → its value.
    fn samples(text: &str) -> HashMap<String, f64> {
        text.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("not `series value`: {line}"));
                (series.to_owned(), value.parse().expect("a number"))
            })
            .collect()
    }

    /// Asserts each series is in `text` with exactly this value.
    fn assert_samples(text: &str, expected: &[(&str, f64)]) {
        let got = samples(text);
        for (series, value) in expected {
            assert_eq!(got.get(*series), Some(value), "{series} in:\n{text}");
        }
    }

    #[test]
    fn requests_are_counted_under_their_route_pattern_method_and_status() {
        let metrics = Metrics::new(&routes(&["/a/{id}", "/b/**"]));
        let (one, two) = (metrics.worker(), metrics.worker());
        let ms = Duration::from_millis(1);
        let propfind = Method::from_bytes(b"PROPFIND").unwrap();
        one.request(RouteLabel::Route(0), &Method::GET, StatusCode::OK, ms);
        two.request(RouteLabel::Route(0), &Method::GET, StatusCode::OK, ms);
        one.request(
            RouteLabel::Route(1),
            &Method::DELETE,
            StatusCode::FORBIDDEN,
            ms,
        );
        one.request(RouteLabel::Unmatched, &propfind, StatusCode::FORBIDDEN, ms);
        one.request(RouteLabel::Reserved, &Method::POST, StatusCode::FOUND, ms);
        // A route index the table no longer has (a reload raced the request).
        one.request(RouteLabel::Route(9), &Method::GET, StatusCode::OK, ms);
        let text = metrics.render(0, 0, 0);
        assert_samples(
            &text,
            &[
                (
                    r#"tokengate_requests_total{method="GET",route="/a/{id}",status="200"}"#,
                    2.0,
                ),
                (
                    r#"tokengate_requests_total{method="DELETE",route="/b/**",status="403"}"#,
                    1.0,
                ),
                (
                    r#"tokengate_requests_total{method="other",route="unmatched",status="403"}"#,
                    1.0,
                ),
                (
                    r#"tokengate_requests_total{method="POST",route="_tokengate",status="302"}"#,
                    1.0,
                ),
                (
                    r#"tokengate_requests_total{method="GET",route="unmatched",status="200"}"#,
                    1.0,
                ),
                (
                    r#"tokengate_request_duration_seconds_count{route="/a/{id}"}"#,
                    2.0,
                ),
                (
                    r#"tokengate_request_duration_seconds_count{route="unmatched"}"#,
                    2.0,
                ),
                (
                    r#"tokengate_request_duration_seconds_count{route="_tokengate"}"#,
                    1.0,
                ),
            ],
        );
        let requests = samples(&text)
            .into_iter()
            .filter(|(series, _)| series.starts_with("tokengate_requests_total{"))
            .count();
        assert_eq!(
            requests, 5,
            "one series per route, method and status:\n{text}"
        );
    }

    #[test]
    fn every_event_is_counted_under_its_exact_series() {
        // Each case: what happens, and the series with the value it must then have (all
        // cases recorded on one registry, so each also checks it does not count for the
        // others).
        type Record = fn(&Metrics, &WorkerMetrics);
        type Case<'a> = (&'a str, Record, &'a [(&'a str, f64)]);
        let cases: &[Case<'_>] = &[
            (
                "a forbidden session",
                |_, w| w.decision(Decision::Forbidden, CredentialKind::Session),
                &[
                    (
                        r#"tokengate_auth_decisions_total{decision="forbidden",method="session"}"#,
                        1.0,
                    ),
                    (
                        r#"tokengate_auth_decisions_total{decision="forbidden",method="token"}"#,
                        0.0,
                    ),
                ],
            ),
            (
                "two allowed tokens",
                |_, w| {
                    w.decision(Decision::Allowed, CredentialKind::Token);
                    w.decision(Decision::Allowed, CredentialKind::Token);
                },
                &[(
                    r#"tokengate_auth_decisions_total{decision="allowed",method="token"}"#,
                    2.0,
                )],
            ),
            (
                "a CSRF refusal",
                |_, w| w.decision(Decision::Csrf, CredentialKind::Session),
                &[(
                    r#"tokengate_auth_decisions_total{decision="csrf",method="session"}"#,
                    1.0,
                )],
            ),
            (
                "an upstream timeout",
                |_, w| w.upstream_error(UpstreamErrorKind::Timeout),
                &[
                    (r#"tokengate_upstream_errors_total{kind="timeout"}"#, 1.0),
                    (r#"tokengate_upstream_errors_total{kind="connect"}"#, 0.0),
                    (r#"tokengate_upstream_errors_total{kind="protocol"}"#, 0.0),
                ],
            ),
            (
                "an upstream answer",
                |_, w| w.upstream(Duration::from_millis(3)),
                &[("tokengate_upstream_duration_seconds_count", 1.0)],
            ),
            (
                "connections closed by a worker and by the app",
                |m, w| {
                    w.closed(Closed::Idle);
                    m.closed(Closed::Credential);
                },
                &[
                    (r#"tokengate_connections_closed_total{reason="idle"}"#, 1.0),
                    (
                        r#"tokengate_connections_closed_total{reason="credential"}"#,
                        1.0,
                    ),
                    (
                        r#"tokengate_connections_closed_total{reason="tunnel_idle"}"#,
                        0.0,
                    ),
                ],
            ),
            (
                "a good reload, then a bad one",
                |m, _| {
                    m.reload(true, 1_000);
                    m.reload(false, 2_000);
                },
                &[
                    (r#"tokengate_config_reloads_total{result="ok"}"#, 1.0),
                    (r#"tokengate_config_reloads_total{result="error"}"#, 1.0),
                    (
                        "tokengate_config_last_reload_success_timestamp_seconds",
                        1_000.0,
                    ),
                ],
            ),
        ];
        let metrics = Metrics::new(&routes(&["/a"]));
        let worker = metrics.worker();
        for (_, record, _) in cases {
            record(&metrics, &worker);
        }
        let text = metrics.render(0, 0, 0);
        for (what, _, expected) in cases {
            let got = samples(&text);
            for (series, value) in *expected {
                assert_eq!(
                    got.get(*series),
                    Some(value),
                    "{what}: {series} in:\n{text}"
                );
            }
        }
    }

    #[test]
    fn gauges_read_now_at_each_scrape() {
        let metrics = Metrics::new(&routes(&["/a"]));
        let worker = metrics.worker();
        let tunnel = worker.tunnel();
        let request = worker.in_flight();
        assert_samples(
            &metrics.render(5, 2, 7),
            &[
                ("tokengate_tunnels_open", 1.0),
                ("tokengate_requests_in_flight", 1.0),
                ("tokengate_tokens", 5.0),
                ("tokengate_sessions_active", 2.0),
                ("tokengate_token_store_reads_total", 7.0),
            ],
        );
        drop((tunnel, request));
        assert_samples(
            &metrics.render(4, 0, 9),
            &[
                ("tokengate_tunnels_open", 0.0),
                ("tokengate_requests_in_flight", 0.0),
                ("tokengate_tokens", 4.0),
                ("tokengate_sessions_active", 0.0),
                // A counter: the store's running total, not the reads since the last scrape.
                ("tokengate_token_store_reads_total", 9.0),
            ],
        );
    }

    #[test]
    fn after_a_reload_requests_count_under_the_new_routes_and_the_old_counts_stay() {
        let metrics = Metrics::new(&routes(&["/old"]));
        let worker = metrics.worker();
        let ms = Duration::from_millis(1);
        worker.request(RouteLabel::Route(0), &Method::GET, StatusCode::OK, ms);
        metrics.set_routes(&routes(&["/new"]));
        worker.request(RouteLabel::Route(0), &Method::GET, StatusCode::OK, ms);
        worker.request(RouteLabel::Route(0), &Method::GET, StatusCode::OK, ms);
        assert_samples(
            &metrics.render(0, 0, 0),
            &[
                (
                    r#"tokengate_requests_total{method="GET",route="/old",status="200"}"#,
                    1.0,
                ),
                (
                    r#"tokengate_requests_total{method="GET",route="/new",status="200"}"#,
                    2.0,
                ),
                (
                    r#"tokengate_request_duration_seconds_count{route="/old"}"#,
                    1.0,
                ),
                (
                    r#"tokengate_request_duration_seconds_count{route="/new"}"#,
                    2.0,
                ),
            ],
        );
    }
}
