//! The management operations, once: the admin API serves them over HTTP, and the CLI runs
//! them either on the store directly (`App`) or through a running server (`AdminClient`).
//! Both sides speak the views of `views`, so their answers are the same.

use super::views::*;
use crate::app::App;
use crate::credential::token::TokenId;
use crate::error::ApiError;
use crate::store::TokenQuery;
use crate::token_cache::CreateToken;
use async_trait::async_trait;

/// Page size when none is asked for, and the largest allowed.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

#[async_trait]
pub trait Management: Send + Sync {
    async fn create_user(&self, user: NewUser) -> Result<UserView, ApiError>;
    async fn list_users(&self, after: Option<String>, limit: usize) -> Result<UserPage, ApiError>;
    async fn get_user(&self, name: &str) -> Result<UserView, ApiError>;
    async fn set_password(&self, name: &str, body: PasswordBody) -> Result<(), ApiError>;
    async fn delete_user(&self, name: &str) -> Result<RemovedUserView, ApiError>;
    async fn create_token(&self, body: NewTokenBody) -> Result<CreatedTokenView, ApiError>;
    async fn list_tokens(
        &self,
        user: Option<String>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<TokenPage, ApiError>;
    async fn get_token(&self, id: u64) -> Result<TokenView, ApiError>;
    async fn update_token(&self, id: u64, body: TokenUpdate) -> Result<UpdatedTokenView, ApiError>;
    async fn revoke_token(&self, id: u64) -> Result<(), ApiError>;
    async fn create_session(&self, body: NewSessionBody) -> Result<CreatedSessionView, ApiError>;
    async fn list_sessions(&self, user: &str) -> Result<SessionList, ApiError>;
    async fn revoke_session(&self, id: &str) -> Result<(), ApiError>;
    async fn revoke_sessions(&self, user: &str) -> Result<Revoked, ApiError>;
}

fn no_token(id: u64) -> ApiError {
    ApiError::not_found(format!("no token with id {id}"))
}

fn no_user(name: &str) -> ApiError {
    ApiError::not_found(format!("no user {name}"))
}

fn check_limit(limit: usize) -> Result<usize, ApiError> {
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_LIMIT}"
        )))
    }
}

#[async_trait]
impl Management for App {
    async fn create_user(&self, user: NewUser) -> Result<UserView, ApiError> {
        let record = self.users.add(&user.name, user.password).await?;
        Ok(UserView::from(&record))
    }

    async fn list_users(&self, after: Option<String>, limit: usize) -> Result<UserPage, ApiError> {
        let limit = check_limit(limit)?;
        let users = self.users.list(after, limit).await?;
        let next = (users.len() == limit)
            .then(|| users.last().map(|u| u.name.clone()))
            .flatten();
        Ok(UserPage {
            data: users.iter().map(UserView::from).collect(),
            next,
        })
    }

    async fn get_user(&self, name: &str) -> Result<UserView, ApiError> {
        match self.users.get(name).await? {
            Some(user) => Ok(UserView::from(&user)),
            None => Err(no_user(name)),
        }
    }

    async fn set_password(&self, name: &str, body: PasswordBody) -> Result<(), ApiError> {
        Ok(self.users.set_password(name, body.password).await?)
    }

    async fn delete_user(&self, name: &str) -> Result<RemovedUserView, ApiError> {
        match self.remove_user(name).await? {
            Some(removed) => Ok(RemovedUserView {
                removed_tokens: removed.tokens.len(),
                removed_sessions: removed.sessions.len(),
            }),
            None => Err(no_user(name)),
        }
    }

    async fn create_token(&self, body: NewTokenBody) -> Result<CreatedTokenView, ApiError> {
        let expires_at = body
            .expires_at
            .as_deref()
            .map(|at| {
                time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                    .map(|t| t.unix_timestamp())
                    .map_err(|_| ApiError::invalid("expires_at must be an RFC 3339 date-time"))
            })
            .transpose()?;
        let created = self
            .tokens
            .create(CreateToken {
                user: body.user,
                name: body.name,
                abilities: body.abilities,
                expires_at,
            })
            .await?;
        Ok(CreatedTokenView {
            token: TokenView::from(&created.record),
            plaintext: created.plaintext,
            dropped_abilities: created.dropped,
        })
    }

    async fn list_tokens(
        &self,
        user: Option<String>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<TokenPage, ApiError> {
        let limit = check_limit(limit)?;
        let tokens = self
            .tokens
            .list(TokenQuery {
                user,
                after: after.map(TokenId),
                limit,
            })
            .await?;
        let next = (tokens.len() == limit)
            .then(|| tokens.last().map(|t| t.id.0))
            .flatten();
        Ok(TokenPage {
            data: tokens.iter().map(TokenView::from).collect(),
            next,
        })
    }

    async fn get_token(&self, id: u64) -> Result<TokenView, ApiError> {
        match self.tokens.get(TokenId(id)).await? {
            Some(token) => Ok(TokenView::from(&token)),
            None => Err(no_token(id)),
        }
    }

    async fn update_token(&self, id: u64, body: TokenUpdate) -> Result<UpdatedTokenView, ApiError> {
        match self
            .tokens
            .set_abilities(TokenId(id), &body.abilities)
            .await?
        {
            Some((record, dropped)) => Ok(UpdatedTokenView {
                token: TokenView::from(&record),
                dropped_abilities: dropped,
            }),
            None => Err(no_token(id)),
        }
    }

    async fn revoke_token(&self, id: u64) -> Result<(), ApiError> {
        if self.tokens.revoke(TokenId(id)).await? {
            Ok(())
        } else {
            Err(no_token(id))
        }
    }

    async fn create_session(&self, body: NewSessionBody) -> Result<CreatedSessionView, ApiError> {
        let created = self.sessions.create(&body.user).await?;
        let s = &created.session;
        Ok(CreatedSessionView {
            session: SessionView::new(&s.hash, s.user(), s.created_at, s.last_seen(), s.expires_at),
            cookie: CookieView {
                name: self.config().sessions.cookie.clone(),
                value: created.cookie_value,
            },
        })
    }

    async fn list_sessions(&self, user: &str) -> Result<SessionList, ApiError> {
        self.get_user(user).await?;
        let sessions = self.sessions.list(user).await?;
        Ok(SessionList {
            data: sessions.iter().map(SessionView::from).collect(),
        })
    }

    async fn revoke_session(&self, id: &str) -> Result<(), ApiError> {
        let all = self.tokens.store().list_sessions(None).await?;
        let Some(session) = all.iter().find(|s| session_id(&s.hash) == id) else {
            return Err(ApiError::not_found("no such session"));
        };
        self.sessions.revoke(session.hash).await?;
        Ok(())
    }

    async fn revoke_sessions(&self, user: &str) -> Result<Revoked, ApiError> {
        self.get_user(user).await?;
        let revoked = self.sessions.revoke_user(user).await?;
        Ok(Revoked { revoked })
    }
}
