//! Access tokens: short-lived JWTs signed with HS256 by the user service and verified by every
//! API with this same code ([`orderflow_auth::KeyRing`]): the algorithm is fixed on the server, so
//! `alg: none`, RS256 or any other algorithm is rejected, as are expired tokens and tokens signed
//! with a key outside the ring. Tokens name their key (`kid`), so the secret rotates without
//! downtime: every service accepts the current and the previous secret
//! (`ORDERFLOW_JWT_PREVIOUS_SECRET`) while the rotation lasts.

use std::time::Duration;

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{HeaderMap, header, request::Parts},
};
use chrono::Utc;
use orderflow_auth::engine::{self as engine_auth, EngineRole};
pub use orderflow_auth::{ALGORITHM, ISSUER, KeyRing, MIN_SECRET_LEN, TokenError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::problem::ApiError;

/// Access tokens live this long; the refresh token (a Redis session) lives much longer.
pub const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

/// A service's token for the engine API lives this long; a new one is signed well before.
pub const SERVICE_TOKEN_TTL: Duration = Duration::from_secs(5 * 60);

/// What a caller may do.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Role {
    /// Places and sees their own orders.
    Customer,
    /// Operates the shop: sees every order, writes products.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Admin => "admin",
        }
    }
}

/// The claims of an access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The issuer, always [`ISSUER`].
    pub iss: String,
    /// The user id.
    pub sub: Uuid,
    pub role: Role,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
}

/// The signing and verifying keys, shared by every service of one deployment.
#[derive(Clone, Debug)]
pub struct JwtKeys {
    ring: KeyRing,
}

impl JwtKeys {
    /// Keys from the shared secret (`ORDERFLOW_JWT_SECRET`).
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Self {
            ring: KeyRing::new(secret),
        }
    }

    /// Keys during a rotation: signs with `current`, still accepts tokens signed with
    /// `previous` (`ORDERFLOW_JWT_PREVIOUS_SECRET`).
    pub fn rotating(current: impl AsRef<[u8]>, previous: Option<impl AsRef<[u8]>>) -> Self {
        Self {
            ring: KeyRing::rotating(current, previous),
        }
    }

    /// The key ring itself (the engine API verifies with the same ring).
    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// Signs an access token for `user` valid for `ttl` from now.
    pub fn issue(&self, user: Uuid, role: Role, ttl: Duration) -> Result<String, TokenError> {
        let iat = Utc::now().timestamp();
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: user,
            role,
            iat,
            exp: iat + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
        };
        self.sign(&claims)
    }

    /// A token for service `name` to call the engine API with (role `service`).
    pub fn service_token(&self, name: &str) -> Result<String, TokenError> {
        engine_auth::issue(&self.ring, EngineRole::Service, name, SERVICE_TOKEN_TTL)
    }

    /// Signs exactly these claims (tests use it for expired tokens).
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        self.ring.sign(claims)
    }

    /// Verifies signature, algorithm, issuer and expiry, and returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.ring.verify(token)
    }
}

/// The bearer token of a request, if it has one.
pub fn bearer(parts: &Parts) -> Option<&str> {
    bearer_of(&parts.headers)
}

/// The bearer token in these headers, if there is one (to forward it to another service).
pub fn bearer_of(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// An authenticated caller (any role). Rejects with 401 problem+json.
#[derive(Clone, Debug)]
pub struct AuthUser(pub Claims);

impl AuthUser {
    pub fn id(&self) -> Uuid {
        self.0.sub
    }

    pub fn is_admin(&self) -> bool {
        self.0.role == Role::Admin
    }
}

impl<S> FromRequestParts<S> for AuthUser
where
    S: Send + Sync,
    JwtKeys: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        let keys = JwtKeys::from_ref(state);
        match keys.verify(token) {
            Ok(claims) => Ok(Self(claims)),
            Err(e) => {
                // Bad tokens are the caller's problem, answered and not worth more than debug.
                tracing::debug!(error = %e, "rejected bearer token");
                Err(ApiError::Unauthorized)
            }
        }
    }
}

/// An authenticated admin. Rejects with 401 without a valid token, 403 for other roles.
#[derive(Clone, Debug)]
pub struct AdminUser(pub Claims);

impl<S> FromRequestParts<S> for AdminUser
where
    S: Send + Sync,
    JwtKeys: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let AuthUser(claims) = AuthUser::from_request_parts(parts, state).await?;
        if claims.role == Role::Admin {
            Ok(Self(claims))
        } else {
            Err(ApiError::Forbidden)
        }
    }
}
