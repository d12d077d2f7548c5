//! Metrics on the admin listener, checked by the real Prometheus tools: `promtool check
//! metrics` on the exposition, and a `prometheus` server that scrapes tokengate and answers
//! queries about traffic sent here.

mod common;

use common::{metric_value, Gate, HttpClient, STANDARD, T0};
use http::StatusCode;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HOW: &str = "scripts/test.sh installs Debian's prometheus package (prometheus, promtool)";

fn require(tool: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "{tool} is not installed; {HOW}");
}

/// Known traffic: 3 allowed token requests, 2 unauthenticated, 1 forbidden, 1 no route.
async fn send_known_traffic(gate: &Gate) {
    let client = HttpClient::http1();
    let reader = gate.token("u1", &["read"]).await;
    for id in [1, 22, 333] {
        let answer = client
            .get_bearer(&gate.url(&format!("/api/posts/{id}")), &reader)
            .await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    for _ in 0..2 {
        let answer = client.get(&gate.url("/api/posts/1"), &[]).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    }
    let answer = client.post_bearer(&gate.url("/api/posts"), &reader).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    let answer = client.get(&gate.url("/no/such/route"), &[]).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
}

async fn scrape(admin: SocketAddr) -> String {
    let answer = HttpClient::http1()
        .get(&format!("http://{admin}/metrics"), &[])
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    String::from_utf8(answer.body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exposition_passes_promtool_and_its_labels_are_bounded() {
    require("promtool");
    let gate = Gate::start(STANDARD).await;
    let admin = gate.start_admin(None).await;
    send_known_traffic(&gate).await;
    let text = scrape(admin).await;

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Each series as a whole line, `name{labels} value`, so that neither another name
    // that starts the same nor another count that does passes for it.
    for (series, value) in [
        (
            r#"tokengate_requests_total{method="GET",route="/api/posts/{id}",status="200"}"#,
            3.0,
        ),
        (
            r#"tokengate_requests_total{method="GET",route="unmatched",status="403"}"#,
            1.0,
        ),
        (
            r#"tokengate_auth_decisions_total{decision="allowed",method="token"}"#,
            3.0,
        ),
        (
            r#"tokengate_auth_decisions_total{decision="unauthenticated",method="none"}"#,
            2.0,
        ),
        (
            r#"tokengate_auth_decisions_total{decision="forbidden",method="token"}"#,
            1.0,
        ),
        (
            r#"tokengate_auth_decisions_total{decision="no_route",method="none"}"#,
            1.0,
        ),
        (
            r#"tokengate_request_duration_seconds_count{route="/api/posts/{id}"}"#,
            5.0,
        ),
        ("tokengate_upstream_duration_seconds_count", 3.0),
        ("tokengate_requests_in_flight", 0.0),
        ("tokengate_tokens", 1.0),
        ("tokengate_sessions_active", 0.0),
        (r#"tokengate_config_reloads_total{result="ok"}"#, 1.0),
        // The config loaded at start, by the harness's clock.
        (
            "tokengate_config_last_reload_success_timestamp_seconds",
            T0 as f64,
        ),
    ] {
        assert_eq!(
            metric_value(&text, series),
            Some(value),
            "{series} in:\n{text}"
        );
    }
    // Process metrics under the names every Prometheus client gives them, unprefixed.
    for series in ["process_resident_memory_bytes", "process_open_fds"] {
        assert!(
            metric_value(&text, series).is_some(),
            "missing {series:?} in:\n{text}"
        );
    }
    assert!(!text.contains("tokengate_process_"), "{text}");
    for raw in ["/api/posts/22", "/api/posts/333", "/no/such/route"] {
        assert!(!text.contains(raw), "a raw path became a label: {raw}");
    }
    gate.stop().await;
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of an instant query's first sample, if there is one.
async fn query(prometheus: SocketAddr, promql: &str) -> Option<f64> {
    let url = format!(
        "http://{prometheus}/api/v1/query?{}",
        serde_urlencoded::to_string([("query", promql)]).unwrap()
    );
    let answer = HttpClient::http1().get(&url, &[]).await;
    if answer.status != StatusCode::OK {
        return None;
    }
    let json = answer.json();
    json["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_counts() {
    require("prometheus");
    let gate = Gate::start(STANDARD).await;
    let admin = gate.start_admin(None).await;
    send_known_traffic(&gate).await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: tokengate\n    static_configs:\n      - targets: ['{admin}']\n"
        ),
    )
    .unwrap();
    // Any free port: the kernel's choice is read back once it listens.
    let prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let pid = prometheus.0.id();
    // Blocking, off the runtime that serves the gate.
    let addr = tokio::task::spawn_blocking(move || {
        common::wait_listening("prometheus", pid, [127, 0, 0, 1], || None)
    })
    .await
    .unwrap();

    let expectations = [
        (
            r#"tokengate_auth_decisions_total{decision="allowed",method="token"}"#,
            3.0,
        ),
        (
            r#"tokengate_auth_decisions_total{decision="unauthenticated",method="none"}"#,
            2.0,
        ),
        (
            r#"tokengate_auth_decisions_total{decision="forbidden",method="token"}"#,
            1.0,
        ),
        (
            r#"sum(tokengate_requests_total{route="/api/posts/{id}"})"#,
            5.0,
        ),
        (r#"up{job="tokengate"}"#, 1.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Vec::new();
    loop {
        last.clear();
        for (promql, want) in expectations {
            last.push((promql, want, query(addr, promql).await));
        }
        if last.iter().all(|(_, want, got)| *got == Some(*want)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never reported the traffic: {last:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // More traffic shows up in the next scrapes.
    let client = HttpClient::http1();
    client.get(&gate.url("/api/posts/1"), &[]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let promql = r#"tokengate_auth_decisions_total{decision="unauthenticated",method="none"}"#;
    while query(addr, promql).await != Some(3.0) {
        assert!(
            Instant::now() < deadline,
            "the new request was never scraped"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    gate.stop().await;
}
