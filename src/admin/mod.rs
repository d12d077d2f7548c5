//! The admin listener (`admin.listen`, never the proxy port): `/healthz`, `/readyz`,
//! `/metrics` (Prometheus text format; like the health checks, no key needed), and the
//! JSON admin API under `/admin/`, described by `docs/admin-openapi.json` (served at
//! `/admin/openapi.json`). The API needs `Authorization: Bearer <key>`, the key being the
//! value of the env var `admin.key_env` names, compared in constant time; without that
//! variable the API answers 503 and says why, while the health endpoints keep working.

pub mod client;
mod ops;
pub mod views;

pub use ops::{Management, DEFAULT_LIMIT, MAX_LIMIT};

use crate::app::{App, StoreHealth};
use crate::error::ApiError;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

/// The OpenAPI description, as kept in the repository.
pub const OPENAPI: &str = include_str!("../../docs/admin-openapi.json");

/// Largest request body the API reads.
const MAX_BODY: usize = 64 * 1024;

type Reply = Response<Full<Bytes>>;

/// Serves the admin listener until `shutdown` completes. `key`: the admin API key, `None`
/// when the env var is unset.
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    key: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let key: Arc<Option<String>> = Arc::new(key.filter(|k| !k.is_empty()));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = Arc::clone(&app);
        let key = Arc::clone(&key);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let app = Arc::clone(&app);
                let key = Arc::clone(&key);
                async move {
                    let reply = match route(&app, key.as_deref(), request).await {
                        Ok(reply) => reply,
                        Err(e) => e.response(),
                    };
                    Ok::<_, Infallible>(reply)
                }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn route(
    app: &App,
    key: Option<&str>,
    request: Request<Incoming>,
) -> Result<Reply, ApiError> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let method = parts.method.clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => return json(StatusCode::OK, &status("ok")),
        (&Method::GET, "/metrics") => {
            let text = app.metrics.render(
                app.tokens.cached(),
                app.sessions.active(),
                app.tokens.store_reads(),
            );
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            return Ok(response);
        }
        (&Method::GET, "/readyz") => {
            return match app.store_health() {
                StoreHealth::Reachable => {
                    // A store read proves the store is open and answering.
                    app.users.list(None, 1).await?;
                    json(StatusCode::OK, &status("ready"))
                }
                // Still serving: taking every replica out of the load balancer in a
                // database outage would refuse the credentials they can still check.
                StoreHealth::Unreachable => json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "status": "degraded",
                        "store": "unreachable: cached credentials only, until store.max_stale_seconds",
                    }),
                ),
                StoreHealth::Stale => Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The store has been unreachable for longer than store.max_stale_seconds.",
                )),
            };
        }
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/admin/") else {
        return Err(ApiError::not_found("Not found."));
    };
    authorize(app, key, &parts.headers)?;
    let segments: Vec<&str> = rest.split('/').collect();
    let query = parts.uri.query().unwrap_or("");
    let api: &dyn Management = app;
    match (&method, segments.as_slice()) {
        (&Method::GET, ["openapi.json"]) => Ok(raw_json(StatusCode::OK, OPENAPI)),
        (&Method::POST, ["reload"]) => reload(app),

        (&Method::GET, ["users"]) => {
            let q: UserQuery = parse_query(query)?;
            json(StatusCode::OK, &api.list_users(q.after, q.limit).await?)
        }
        (&Method::POST, ["users"]) => json(
            StatusCode::CREATED,
            &api.create_user(read_json(body).await?).await?,
        ),
        (&Method::GET, ["users", name]) => {
            json(StatusCode::OK, &api.get_user(&decode(name)?).await?)
        }
        (&Method::DELETE, ["users", name]) => {
            json(StatusCode::OK, &api.delete_user(&decode(name)?).await?)
        }
        (&Method::PUT, ["users", name, "password"]) => {
            let name = decode(name)?;
            api.set_password(&name, read_json(body).await?).await?;
            Ok(no_content())
        }
        (&Method::GET, ["users", name, "sessions"]) => {
            json(StatusCode::OK, &api.list_sessions(&decode(name)?).await?)
        }
        (&Method::DELETE, ["users", name, "sessions"]) => {
            json(StatusCode::OK, &api.revoke_sessions(&decode(name)?).await?)
        }

        (&Method::GET, ["tokens"]) => {
            let q: TokenQueryParams = parse_query(query)?;
            json(
                StatusCode::OK,
                &api.list_tokens(q.user, q.after, q.limit).await?,
            )
        }
        (&Method::POST, ["tokens"]) => json(
            StatusCode::CREATED,
            &api.create_token(read_json(body).await?).await?,
        ),
        (&Method::GET, ["tokens", id]) => {
            json(StatusCode::OK, &api.get_token(token_id(id)?).await?)
        }
        (&Method::PATCH, ["tokens", id]) => {
            let id = token_id(id)?;
            json(
                StatusCode::OK,
                &api.update_token(id, read_json(body).await?).await?,
            )
        }
        (&Method::DELETE, ["tokens", id]) => {
            api.revoke_token(token_id(id)?).await?;
            Ok(no_content())
        }

        (&Method::POST, ["sessions"]) => json(
            StatusCode::CREATED,
            &api.create_session(read_json(body).await?).await?,
        ),
        (&Method::DELETE, ["sessions", id]) => {
            api.revoke_session(id).await?;
            Ok(no_content())
        }

        (_, ["openapi.json" | "reload" | "users" | "tokens" | "sessions", ..])
            if known_path(&segments) =>
        {
            Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed.",
            ))
        }
        _ => Err(ApiError::not_found("Not found.")),
    }
}

/// `POST /admin/reload`: re-reads the config file (as SIGHUP does).
fn reload(app: &App) -> Result<Reply, ApiError> {
    match app.reload_from_file() {
        Some(Ok(restart)) => json(
            StatusCode::OK,
            &serde_json::json!({ "result": "ok", "restart_required": restart }),
        ),
        Some(Err(problems)) => Err(ApiError::invalid(format!(
            "the new config is invalid; the old one stays in force:\n{problems}"
        ))),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "this server was not started from a config file",
        )),
    }
}

/// Is this one of the API's paths (with another method)?
fn known_path(segments: &[&str]) -> bool {
    matches!(
        segments,
        ["openapi.json"]
            | ["reload"]
            | ["users"]
            | ["users", _]
            | ["users", _, "password" | "sessions"]
            | ["tokens"]
            | ["tokens", _]
            | ["sessions"]
            | ["sessions", _]
    )
}

fn authorize(app: &App, key: Option<&str>, headers: &http::HeaderMap) -> Result<(), ApiError> {
    // A key file is read with the config, so a reload takes a rotated Secret's new key.
    let config = app.config();
    let from_file = config.admin.key_file.as_ref().and(config.admin.key());
    let key = match &config.admin.key_file {
        Some(_) => from_file.as_deref(),
        None => key,
    };
    let Some(key) = key else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "The admin API is disabled: {} must hold its key.",
                config.admin.key_source()
            ),
        ));
    };
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| crate::credential::token::bearer(v.as_bytes()));
    match presented {
        Some(presented) if bool::from(presented.as_bytes().ct_eq(key.as_bytes())) => Ok(()),
        _ => Err(ApiError::unauthorized()),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UserQuery {
    after: Option<String>,
    #[serde(default = "default_limit")]
    limit: usize,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenQueryParams {
    user: Option<String>,
    after: Option<u64>,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    DEFAULT_LIMIT
}

fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::bad_request(format!("Malformed query: {e}")))
}

async fn read_json<T: DeserializeOwned>(body: Incoming) -> Result<T, ApiError> {
    let bytes = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|_| ApiError::bad_request("The request body is too large or unreadable."))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("Malformed JSON body: {e}")))
}

fn decode(segment: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_request("Malformed path."))
}

fn token_id(segment: &str) -> Result<u64, ApiError> {
    segment
        .parse()
        .map_err(|_| ApiError::bad_request("A token id is a positive integer."))
}

fn status(value: &str) -> serde_json::Value {
    serde_json::json!({ "status": value })
}

fn json(status: StatusCode, body: &impl Serialize) -> Result<Reply, ApiError> {
    let text = serde_json::to_string(body)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(raw_json(status, &text))
}

fn raw_json(status: StatusCode, text: &str) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn no_content() -> Reply {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}
