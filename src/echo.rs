//! A small echo upstream, for the demo and for tests: it answers every request with JSON
//! describing what it received (method, path, headers, body size) and keeps a log of the
//! requests it saw. Bodies are counted as they stream in, never buffered. `?delay_ms=N`
//! makes it wait before answering (a request is in `seen` once answered, and counted in
//! `arrived` as soon as it arrives).

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// One request as the echo upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body_bytes: u64,
}

/// A running echo upstream.
#[derive(Clone)]
pub struct Echo {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Seen>>>,
    arrived: Arc<AtomicUsize>,
}

impl Echo {
    /// Serves on `listener` in the background.
    pub fn start(listener: TcpListener) -> Self {
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let log = Arc::new(Mutex::new(Vec::new()));
        let echo = Self {
            addr,
            log,
            arrived: Arc::default(),
        };
        let server = echo.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.answer(request).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        echo
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        self.arrived.fetch_add(1, Ordering::Relaxed);
        let (parts, mut body) = request.into_parts();
        // `?delay_ms=N`: a slow app (for timeout and shutdown tests).
        let delay = parts
            .uri
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("delay_ms=")))
            .and_then(|ms| ms.parse::<u64>().ok());
        if let Some(ms) = delay {
            tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
        }
        let mut body_bytes = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    body_bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
                }
                Err(_) => break,
            }
        }
        let seen = Seen {
            method: parts.method,
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.to_string()),
            headers: parts.headers,
            body_bytes,
        };
        let headers: serde_json::Map<String, serde_json::Value> = seen
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        let json = serde_json::json!({
            "method": seen.method.as_str(),
            "path": seen.path,
            "headers": headers,
            "body_bytes": body_bytes,
        });
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(seen);
        let mut response = Response::new(Full::new(Bytes::from(
            serde_json::to_vec_pretty(&json).unwrap_or_default(),
        )));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    }

    /// Every request seen so far, oldest first.
    /// How many requests have arrived, answered or not.
    pub fn arrived(&self) -> usize {
        self.arrived.load(Ordering::Relaxed)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The most recent request, if any.
    pub fn last(&self) -> Option<Seen> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .cloned()
    }
}
