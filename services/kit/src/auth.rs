//! Access tokens: short-lived JWTs signed with HS256 by the user service and verified by every
//! API with this same code. The algorithm is fixed here, on the server: a token's own `alg`
//! header is never trusted, so `alg: none`, RS256 or any other algorithm is rejected, as are
//! expired tokens and tokens signed with another key.

use std::time::Duration;

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{HeaderMap, header, request::Parts},
};
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::problem::ApiError;

/// The only algorithm accepted. Symmetric because issuer and verifiers are one deployment.
pub const ALGORITHM: Algorithm = Algorithm::HS256;

/// Access tokens live this long; the refresh token (a Redis session) lives much longer.
pub const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

/// The `iss` of every access token: the user service issues them, every API and Kong's JWT
/// plugin (which finds the verifying key by this claim, `deploy/kong/kong.yaml`) require it.
pub const ISSUER: &str = "orderflow-user";

/// Shortest secret accepted: HS256 with fewer than 256 bits of key is brute-forceable.
pub const MIN_SECRET_LEN: usize = 32;

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

/// Why a token was refused. Callers answer every case with the same 401; the variant is for logs
/// and tests.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is invalid: {0}")]
    Invalid(jsonwebtoken::errors::Error),
    #[error("cannot sign a token: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

/// The signing and verifying key, shared by every service of one deployment.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(<redacted>)")
    }
}

impl JwtKeys {
    /// Keys from the shared secret (`ORDERFLOW_JWT_SECRET`).
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        let secret = secret.as_ref();
        let mut validation = Validation::new(ALGORITHM);
        // Only HS256, whatever the token's header claims.
        validation.algorithms = vec![ALGORITHM];
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        validation.set_issuer(&[ISSUER]);
        // Clocks of one deployment agree to within seconds; a minute of grace would stretch a
        // 15-minute token by 7%.
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
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

    /// Signs exactly these claims (tests use it for expired tokens).
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        jsonwebtoken::encode(&Header::new(ALGORITHM), claims, &self.encoding)
            .map_err(TokenError::Sign)
    }

    /// Verifies signature, algorithm, issuer and expiry, and returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e),
            })
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
