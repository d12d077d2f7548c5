//! HTTPS on the proxy listener, with a certificate made by rcgen at test time: HTTP/1.1 and
//! HTTP/2 over TLS (ALPN) get the same decisions as plain HTTP, and a bad handshake does
//! not disturb other connections.

mod common;

use bytes::Bytes;
use common::{Gate, STANDARD};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Tls {
    gate: Gate,
    client: Arc<rustls::ClientConfig>,
    _dir: tempfile::TempDir,
}

async fn start() -> Tls {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let body = format!(
        "tls:\n  cert: {}\n  key: {}\n{STANDARD}",
        cert.display(),
        key.display()
    );
    let gate = Gate::start(&body).await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(certified.cert.der().to_vec()))
        .unwrap();
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Tls {
        gate,
        client: Arc::new(client),
        _dir: dir,
    }
}

/// One request over TLS with the given ALPN protocol; returns the status, the upstream's
/// view of `X-Forwarded-Proto`, and the protocol the server chose.
async fn send(
    tls: &Tls,
    alpn: &[u8],
    path: &str,
    token: Option<&str>,
) -> (StatusCode, Option<String>, Vec<u8>) {
    let mut config = (*tls.client).clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(tls.gate.addr).await.unwrap();
    let stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let chosen = stream
        .get_ref()
        .1
        .alpn_protocol()
        .unwrap_or_default()
        .to_vec();
    let mut request = Request::get(format!("https://localhost{path}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(Empty::<Bytes>::new()).unwrap();
    let response = if alpn == b"h2" {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let (mut parts, body) = request.into_parts();
        parts.uri = path.parse().unwrap();
        parts.headers.insert("host", "localhost".parse().unwrap());
        sender
            .send_request(Request::from_parts(parts, body))
            .await
            .unwrap()
    };
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let proto = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|j| {
            j["headers"]["x-forwarded-proto"]
                .as_str()
                .map(str::to_owned)
        });
    (status, proto, chosen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_1_1_and_http_2_over_tls_get_the_same_decisions() {
    let tls = start().await;
    let reader = tls.gate.token("u", &["read"]).await;
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let (status, proto, chosen) = send(&tls, alpn, "/api/posts/1", Some(&reader)).await;
        assert_eq!(chosen, alpn, "ALPN");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            proto.as_deref(),
            Some("https"),
            "the upstream learns it was HTTPS"
        );
        let (status, _, _) = send(&tls, alpn, "/api/posts/1", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _, _) = send(&tls, alpn, "/admin/x", Some(&reader)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _, _) = send(&tls, alpn, "/api/../admin/x", Some(&reader)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    assert_eq!(tls.gate.echo.seen().len(), 2);
    tls.gate.stop().await;
}

async fn closed_soon(mut stream: TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_handshake_does_not_disturb_other_connections() {
    let tls = start().await;
    let reader = tls.gate.token("u", &["read"]).await;
    let addr: SocketAddr = tls.gate.addr;

    // Plain HTTP on the TLS port: refused, the connection closed.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /api/posts/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // A client that opens a connection and stalls in the handshake.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();

    // Meanwhile others are served, over both protocols.
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let (status, _, _) = send(&tls, alpn, "/api/posts/1", Some(&reader)).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert!(
        closed_soon(plain).await,
        "plain HTTP on the TLS port is dropped"
    );
    drop(stalled);
    assert!(tls.gate.echo.seen().len() == 2);
    tls.gate.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_cut_off() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("c.pem");
    let key = dir.path().join("k.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let body = format!(
        "tls:\n  cert: {}\n  key: {}\ntimeouts:\n  client_header_seconds: 0.5\n{STANDARD}",
        cert.display(),
        key.display()
    );
    let gate = Gate::start(&body).await;
    let mut stalled = TcpStream::connect(gate.addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    assert!(closed_soon(stalled).await, "a stalled handshake is closed");
    gate.stop().await;
}
