//! Who is asking, and may they: credentials (token parsing lives in `token`) and the pure
//! decision of whether a principal satisfies a route. Nothing here builds a response.

pub mod csrf;
pub mod session;
pub mod token;

use crate::routes::{AuthMode, Route};
use crate::sessions::Session;
use crate::tokens::AccessToken;
use std::sync::Arc;

/// An ability name (Jetstream's "permission"): `[A-Za-z0-9:._-]+`, or `*` on a token.
pub type Ability = String;

/// The authenticated party of a request.
#[derive(Debug, Clone)]
pub enum Principal {
    Token(Arc<AccessToken>),
    /// A first-party browser session: like Sanctum's `TransientToken`, it can do everything.
    Session(Arc<Session>),
}

impl Principal {
    /// Sanctum's `tokenCan`.
    pub fn can(&self, ability: &str) -> bool {
        match self {
            Principal::Token(token) => token.can(ability),
            Principal::Session(_) => true,
        }
    }

    pub fn user(&self) -> &str {
        match self {
            Principal::Token(token) => token.user(),
            Principal::Session(session) => session.user(),
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
