//! Signed tokens shared by the engine and the services: one HS256 key ring, so every API verifies
//! tokens with the same code and the signing secret can be rotated without downtime.
//!
//! - [`KeyRing`]: the current signing key and, during a rotation, the previous one. Tokens are
//!   signed with the current key and carry its key id (`kid`) in their header; a token is checked
//!   against the key its `kid` names, so tokens signed before the rotation keep working until the
//!   previous key is removed (one token lifetime later). A key's id is derived from the secret
//!   (a fingerprint), so operators configure secrets only, never ids that could disagree.
//! - [`engine`]: the claims of the engine API's callers (operators and services).
//!
//! The algorithm is fixed here, on the server: a token's own `alg` header is never trusted, so
//! `alg: none`, RS256 or any other algorithm is refused, as are expired tokens, tokens of another
//! issuer and tokens signed with a key that is not in the ring.

pub mod engine;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

/// The only algorithm accepted. Symmetric because issuer and verifiers are one deployment.
pub const ALGORITHM: Algorithm = Algorithm::HS256;

/// The `iss` of every token: the user service's key signs them, every API requires it.
pub const ISSUER: &str = "orderflow-user";

/// Shortest secret accepted: HS256 with fewer than 256 bits of key is brute-forceable.
pub const MIN_SECRET_LEN: usize = 32;

/// Why a token was refused or could not be signed. Callers answer every refusal with the same
/// 401; the variant is for logs and tests.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is invalid: {0}")]
    Invalid(jsonwebtoken::errors::Error),
    #[error("cannot sign a token: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

/// One secret with its id.
#[derive(Clone)]
struct Key {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Key {
    fn new(secret: &[u8]) -> Self {
        Self {
            kid: key_id(secret),
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }
}

/// The id of the key made from `secret`: the first 8 bytes of its SHA-256, hex. It names the
/// key without revealing it (the secret has at least 256 bits).
pub fn key_id(secret: &[u8]) -> String {
    Sha256::digest(secret)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The keys one process signs and verifies with.
#[derive(Clone)]
pub struct KeyRing {
    current: Key,
    previous: Option<Key>,
    validation: Validation,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("current", &self.current.kid)
            .field("previous", &self.previous.as_ref().map(|k| &k.kid))
            .finish()
    }
}

impl KeyRing {
    /// A ring with one key (no rotation under way).
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Self::rotating(secret, None::<&[u8]>)
    }

    /// A ring that signs with `current` and still accepts tokens signed with `previous`.
    pub fn rotating(current: impl AsRef<[u8]>, previous: Option<impl AsRef<[u8]>>) -> Self {
        let mut validation = Validation::new(ALGORITHM);
        // Only HS256, whatever the token's header claims.
        validation.algorithms = vec![ALGORITHM];
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        validation.set_issuer(&[ISSUER]);
        // Clocks of one deployment agree to within seconds; a minute of grace would stretch a
        // 15-minute token by 7%.
        validation.leeway = 5;
        let current = Key::new(current.as_ref());
        // The same secret twice is one key.
        let previous = previous
            .map(|p| Key::new(p.as_ref()))
            .filter(|p| p.kid != current.kid);
        Self {
            current,
            previous,
            validation,
        }
    }

    /// The id of the key new tokens are signed with.
    pub fn current_kid(&self) -> &str {
        &self.current.kid
    }

    /// Signs `claims` with the current key; the header names it (`kid`).
    pub fn sign<C: Serialize>(&self, claims: &C) -> Result<String, TokenError> {
        let mut header = Header::new(ALGORITHM);
        header.kid = Some(self.current.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.current.encoding).map_err(TokenError::Sign)
    }

    /// Verifies signature, algorithm, issuer and expiry with the key the token's `kid` names
    /// (the current key when it names none: tokens from before key ids), and returns the claims.
    pub fn verify<C: DeserializeOwned>(&self, token: &str) -> Result<C, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(TokenError::Invalid)?;
        let key = match header.kid.as_deref() {
            None => &self.current,
            Some(kid) if kid == self.current.kid => &self.current,
            Some(kid) => match &self.previous {
                Some(p) if p.kid == kid => p,
                _ => {
                    return Err(TokenError::Invalid(
                        jsonwebtoken::errors::ErrorKind::InvalidSignature.into(),
                    ));
                }
            },
        };
        jsonwebtoken::decode::<C>(token, &key.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e),
            })
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct C {
        iss: String,
        sub: String,
        exp: u64,
    }

    const OLD: &str = "old-secret-old-secret-old-secret-0123";
    const NEW: &str = "new-secret-new-secret-new-secret-4567";

    fn claims() -> C {
        C {
            iss: ISSUER.into(),
            sub: "x".into(),
            exp: 4_000_000_000,
        }
    }

    #[test]
    fn a_rotation_accepts_both_keys_then_only_the_new_one() {
        let before = KeyRing::new(OLD);
        let during = KeyRing::rotating(NEW, Some(OLD));
        let after = KeyRing::new(NEW);
        let old_token = before.sign(&claims()).unwrap();
        let new_token = during.sign(&claims()).unwrap();
        assert_eq!(during.verify::<C>(&old_token).unwrap(), claims());
        assert_eq!(during.verify::<C>(&new_token).unwrap(), claims());
        assert_eq!(after.verify::<C>(&new_token).unwrap(), claims());
        assert!(matches!(
            after.verify::<C>(&old_token),
            Err(TokenError::Invalid(_))
        ));
        // A service not yet rotated still accepts what a rotated one signs only once it has
        // the new key as its previous or current one: the order of a rotation (docs).
        assert!(before.verify::<C>(&new_token).is_err());
    }

    #[test]
    fn tokens_name_their_key() {
        let ring = KeyRing::rotating(NEW, Some(OLD));
        let token = ring.sign(&claims()).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(key_id(NEW.as_bytes()).as_str()));
        assert_eq!(ring.current_kid(), key_id(NEW.as_bytes()));
        assert_ne!(key_id(NEW.as_bytes()), key_id(OLD.as_bytes()));
    }

    #[test]
    fn a_kid_naming_the_previous_key_is_not_checked_with_the_current_one() {
        // A token signed with an unknown secret but claiming the current kid fails the signature.
        let forged = KeyRing::new("forged-forged-forged-forged-forged-0000");
        let mut header = Header::new(ALGORITHM);
        header.kid = Some(key_id(NEW.as_bytes()));
        let token = jsonwebtoken::encode(
            &header,
            &claims(),
            &EncodingKey::from_secret(b"forged-forged-forged-forged-forged-0000"),
        )
        .unwrap();
        drop(forged);
        assert!(KeyRing::new(NEW).verify::<C>(&token).is_err());
    }
}
