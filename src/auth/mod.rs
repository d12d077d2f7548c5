//! Who is asking, and may they: the principal a credential stands for, and the pure decision
//! of whether it satisfies a route (and `csrf`, whether a session's request is its own).
//! The credentials' formats are in `credential`. Nothing here builds a response.

pub mod csrf;

use crate::laravel_sessions::LaravelSession;
use crate::routes::{AuthMode, Route};
use crate::session_cache::Session;
use crate::token_cache::AccessToken;
use std::sync::Arc;

/// The authenticated party of a request.
#[derive(Debug, Clone)]
pub enum Principal {
    Token(Arc<AccessToken>),
    /// A first-party browser session: like Sanctum's `TransientToken`, it can do everything.
    Session(Arc<Session>),
    /// The Laravel app's own session (`sessions.laravel`): a session like the others.
    Laravel(Arc<LaravelSession>),
}

impl Principal {
    /// Sanctum's `tokenCan`.
    pub fn can(&self, ability: &str) -> bool {
        match self {
            Principal::Token(token) => token.can(ability),
            Principal::Session(_) | Principal::Laravel(_) => true,
        }
    }

    pub fn user(&self) -> &str {
        match self {
            Principal::Token(token) => token.user(),
            Principal::Session(session) => session.user(),
            Principal::Laravel(session) => session.user(),
        }
    }
}

/// Why a request was not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No credential, or not one this route accepts: 401.
    Unauthenticated,
    /// A good credential without the route's abilities: 403.
    Forbidden,
}

/// Does `principal` satisfy `route`? Sanctum's `abilities` (all) and `ability` (any)
/// middleware, after the route's `auth` mode.
pub fn authorize(route: &Route, principal: Option<&Principal>) -> Result<(), Denial> {
    if route.auth == AuthMode::None {
        return Ok(());
    }
    let Some(principal) = principal else {
        return Err(Denial::Unauthenticated);
    };
    let has_all = route.all_of.iter().all(|a| principal.can(a));
    let has_any = route.any_of.is_empty() || route.any_of.iter().any(|a| principal.can(a));
    if has_all && has_any {
        Ok(())
    } else {
        Err(Denial::Forbidden)
    }
}
