//! Ability names (Jetstream's "permissions"), shared by the route table, tokens and the
//! authorization decision.

/// An ability name: `[A-Za-z0-9:._-]+`, or `*` on a token.
pub type Ability = String;
