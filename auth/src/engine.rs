//! The engine API's callers. Two kinds, each with its own role in its token: operators (people,
//! scripts, the `orderflow workflows` CLI) may do everything; services (the order service
//! starting and cancelling sagas) may do only what a service does. Tokens are signed by the same
//! key ring as the shop's access tokens (the user service's key), with a name (`sub`) instead of a
//! user id; a shop token (customer or admin) is a valid token of the wrong role, answered 403.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{ISSUER, KeyRing, TokenError};

/// What an engine caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineRole {
    /// A person or a script operating workflows: every route.
    Operator,
    /// A service starting, reading and cancelling the sagas it owns.
    Service,
}

impl EngineRole {
    /// The `role` claim.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Service => "service",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "operator" => Some(Self::Operator),
            "service" => Some(Self::Service),
            _ => None,
        }
    }
}

/// The claims of a token. `role` is kept as text so that a token of another role (a shop
/// customer's) is recognised as authentic and refused with 403, not mistaken for a forgery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineClaims {
    pub iss: String,
    /// Who: an operator's name or a service's name. Anything a shop token carries (a user id).
    pub sub: String,
    pub role: String,
    pub iat: i64,
    pub exp: i64,
}

/// An authenticated engine caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub role: EngineRole,
    pub name: String,
}

impl Caller {
    /// How the history records this caller as the actor of what it did: `operator:<name>` or
    /// `service:<name>`.
    pub fn actor(&self) -> String {
        format!("{}:{}", self.role.as_str(), self.name)
    }
}

/// Why a request was not let in.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// 401: no token, or one that is forged, expired or malformed.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: an authentic token whose role may not use the engine API.
    #[error("a `{0}` token may not use the engine API")]
    WrongRole(String),
}

/// Longest accepted caller name, so an actor fits the history's audit columns.
pub const MAX_NAME_LEN: usize = 100;

/// Signs a token for `name` in `role`, valid for `ttl`.
pub fn issue(
    ring: &KeyRing,
    role: EngineRole,
    name: &str,
    ttl: Duration,
) -> Result<String, TokenError> {
    let iat = now();
    let claims = EngineClaims {
        iss: ISSUER.to_owned(),
        sub: name.to_owned(),
        role: role.as_str().to_owned(),
        iat,
        exp: iat.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2)),
    };
    ring.sign(&claims)
}

/// The caller a bearer token names, or why it is refused.
pub fn authenticate(ring: &KeyRing, token: &str) -> Result<Caller, Refusal> {
    let claims: EngineClaims = ring
        .verify(token)
        .map_err(|e| Refusal::Unauthenticated(e.to_string()))?;
    let role =
        EngineRole::parse(&claims.role).ok_or_else(|| Refusal::WrongRole(claims.role.clone()))?;
    let name = claims.sub.trim();
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(Refusal::Unauthenticated(
            "the token's `sub` is not a caller name".into(),
        ));
    }
    Ok(Caller {
        role,
        name: name.to_owned(),
    })
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "engine-secret-engine-secret-engine-0001";

    #[test]
    fn operators_and_services_are_let_in_with_their_role() {
        let ring = KeyRing::new(SECRET);
        let t = issue(&ring, EngineRole::Operator, "ann", Duration::from_secs(60)).unwrap();
        let c = authenticate(&ring, &t).unwrap();
        assert_eq!(c.actor(), "operator:ann");
        let t = issue(&ring, EngineRole::Service, "order", Duration::from_secs(60)).unwrap();
        assert_eq!(authenticate(&ring, &t).unwrap().actor(), "service:order");
    }

    #[test]
    fn other_roles_are_authentic_but_refused() {
        let ring = KeyRing::new(SECRET);
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": "5b0a3c9e-0000-4000-8000-000000000000",
            "role": "customer", "iat": now(), "exp": now() + 60,
        });
        let t = ring.sign(&claims).unwrap();
        assert!(matches!(authenticate(&ring, &t), Err(Refusal::WrongRole(r)) if r == "customer"));
        let other = KeyRing::new("other-secret-other-secret-other-0002");
        let t = issue(&other, EngineRole::Operator, "eve", Duration::from_secs(60)).unwrap();
        assert!(matches!(
            authenticate(&ring, &t),
            Err(Refusal::Unauthenticated(_))
        ));
    }
}
