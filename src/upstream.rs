//! The protected app: a pooled keep-alive HTTP/1.1 client and the request rewrite that
//! points a request at it. Bodies stream both ways; nothing is buffered.

use crate::config::UpstreamTarget;
use crate::error::Rejection;
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

/// How long a connection attempt to the upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

pub struct Upstream {
    client: Client<HttpConnector, Incoming>,
    target: UpstreamTarget,
}

impl Upstream {
    pub fn new(target: UpstreamTarget) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(usize::MAX)
            .build(connector);
        Self { client, target }
    }

    pub fn target(&self) -> &UpstreamTarget {
        &self.target
    }

    /// Sends a request (headers already rewritten) to the upstream.
    pub async fn send(
        &self,
        mut request: Request<Incoming>,
    ) -> Result<Response<Incoming>, Rejection> {
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::builder()
            .scheme(self.target.scheme.clone())
            .authority(self.target.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|_| Rejection::BadRequest("The request URI cannot be forwarded."))?;
        *request.version_mut() = Version::HTTP_11;
        self.client.request(request).await.map_err(|e| {
            tracing::warn!(upstream = %self.target, error = %e, source = ?std::error::Error::source(&e), "upstream request failed");
            Rejection::UpstreamUnavailable
        })
    }
}
