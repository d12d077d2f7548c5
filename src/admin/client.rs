//! The admin API from the outside: what the CLI uses when a running server holds the store.

use super::ops::Management;
use super::views::*;
use crate::error::ApiError;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;

/// How long one API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct AdminClient {
    base: String,
    authorization: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    pub fn new(addr: SocketAddr, key: &str) -> Self {
        Self {
            base: format!("http://{addr}"),
            authorization: format!("Bearer {key}"),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Calls the API; `Ok(None)` for a 204.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(dyn erased::Json + Sync)>,
    ) -> Result<Option<T>, ApiError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot reach the admin API at {}: {e}", self.base),
            )
        };
        let bytes = match body {
            Some(body) => Bytes::from(body.to_json()),
            None => Bytes::new(),
        };
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(AUTHORIZATION, &self.authorization)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let response = tokio::time::timeout(CALL_TIMEOUT, self.client.request(request))
            .await
            .map_err(|e| unreachable(&e))?
            .map_err(|e| unreachable(&e))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        if !status.is_success() {
            #[derive(serde::Deserialize)]
            struct Message {
                message: String,
            }
            let message = serde_json::from_slice::<Message>(&body)
                .map(|m| m.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(ApiError::new(status, message));
        }
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        serde_json::from_slice(&body).map(Some).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("unexpected answer from the admin API: {e}"),
            )
        })
    }

    async fn value<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(dyn erased::Json + Sync)>,
    ) -> Result<T, ApiError> {
        self.call(method, path, body).await?.ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "the admin API answered without a body",
            )
        })
    }
}

impl AdminClient {
    /// `POST /admin/reload`: the server re-reads its config file.
    pub async fn reload(&self) -> Result<serde_json::Value, ApiError> {
        self.value(Method::POST, "/admin/reload", None).await
    }
}

/// Serialization behind a trait object, so `call` needs no generic body type.
mod erased {
    pub(super) trait Json {
        fn to_json(&self) -> Vec<u8>;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).unwrap_or_default()
        }
    }
}

fn segment(value: &str) -> String {
    utf8_percent_encode(value, NON_ALPHANUMERIC).to_string()
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let present: Vec<(&str, String)> = pairs
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (*k, v)))
        .collect();
    serde_urlencoded::to_string(present).unwrap_or_default()
}

fn body<T: Serialize + Sync>(value: &T) -> Option<&(dyn erased::Json + Sync)> {
    Some(value)
}

#[async_trait]
impl Management for AdminClient {
    async fn create_user(&self, user: NewUser) -> Result<UserView, ApiError> {
        self.value(Method::POST, "/admin/users", body(&user)).await
    }

    async fn list_users(&self, after: Option<String>, limit: usize) -> Result<UserPage, ApiError> {
        let q = query(&[("after", after), ("limit", Some(limit.to_string()))]);
        self.value(Method::GET, &format!("/admin/users?{q}"), None)
            .await
    }

    async fn get_user(&self, name: &str) -> Result<UserView, ApiError> {
        let path = format!("/admin/users/{}", segment(name));
        self.value(Method::GET, &path, None).await
    }

    async fn set_password(&self, name: &str, password: PasswordBody) -> Result<(), ApiError> {
        let path = format!("/admin/users/{}/password", segment(name));
        self.call::<serde_json::Value>(Method::PUT, &path, body(&password))
            .await
            .map(|_| ())
    }

    async fn delete_user(&self, name: &str) -> Result<RemovedUserView, ApiError> {
        let path = format!("/admin/users/{}", segment(name));
        self.value(Method::DELETE, &path, None).await
    }

    async fn create_token(&self, token: NewTokenBody) -> Result<CreatedTokenView, ApiError> {
        self.value(Method::POST, "/admin/tokens", body(&token))
            .await
    }

    async fn list_tokens(
        &self,
        user: Option<String>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<TokenPage, ApiError> {
        let q = query(&[
            ("user", user),
            ("after", after.map(|a| a.to_string())),
            ("limit", Some(limit.to_string())),
        ]);
        self.value(Method::GET, &format!("/admin/tokens?{q}"), None)
            .await
    }

    async fn get_token(&self, id: u64) -> Result<TokenView, ApiError> {
        self.value(Method::GET, &format!("/admin/tokens/{id}"), None)
            .await
    }

    async fn update_token(
        &self,
        id: u64,
        update: TokenUpdate,
    ) -> Result<UpdatedTokenView, ApiError> {
        self.value(Method::PATCH, &format!("/admin/tokens/{id}"), body(&update))
            .await
    }

    async fn revoke_token(&self, id: u64) -> Result<(), ApiError> {
        self.call::<serde_json::Value>(Method::DELETE, &format!("/admin/tokens/{id}"), None)
            .await
            .map(|_| ())
    }

    async fn create_session(
        &self,
        session: NewSessionBody,
    ) -> Result<CreatedSessionView, ApiError> {
        self.value(Method::POST, "/admin/sessions", body(&session))
            .await
    }

    async fn list_sessions(&self, user: &str) -> Result<SessionList, ApiError> {
        let path = format!("/admin/users/{}/sessions", segment(user));
        self.value(Method::GET, &path, None).await
    }

    async fn revoke_session(&self, id: &str) -> Result<(), ApiError> {
        let path = format!("/admin/sessions/{}", segment(id));
        self.call::<serde_json::Value>(Method::DELETE, &path, None)
            .await
            .map(|_| ())
    }

    async fn revoke_sessions(&self, user: &str) -> Result<Revoked, ApiError> {
        let path = format!("/admin/users/{}/sessions", segment(user));
        self.value(Method::DELETE, &path, None).await
    }
}
