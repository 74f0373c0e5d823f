//! argon2id password hashes (PHC strings). Hashing costs tens of milliseconds of CPU by design,
//! so it runs on the blocking pool, never on the async worker threads.

use std::sync::LazyLock;

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("hashing failed: {0}")]
    Hash(argon2::password_hash::Error),
    #[error("the hashing task died: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// argon2id, version 0x13, m = 19 MiB, t = 2, p = 1: OWASP's recommended minimum, and the
/// crate's default.
fn hasher() -> Argon2<'static> {
    Argon2::default()
}

/// Hashes `password` with a fresh random salt.
pub async fn hash(password: String) -> Result<String, HashError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        hasher()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(HashError::Hash)
    })
    .await?
}

/// Whether `password` matches `stored`. A malformed stored hash never matches.
pub async fn verify(password: String, stored: String) -> Result<bool, HashError> {
    Ok(tokio::task::spawn_blocking(move || {
        PasswordHash::new(&stored)
            .is_ok_and(|h| hasher().verify_password(password.as_bytes(), &h).is_ok())
    })
    .await?)
}

/// A hash of nothing anyone knows, verified against when the email is unknown so that a login
/// for a missing account takes as long as one with a wrong password (no account probing by
/// timing).
pub static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    let salt = SaltString::generate(&mut OsRng);
    hasher()
        .hash_password(b"no account has this password", &salt)
        .map(|h| h.to_string())
        .unwrap_or_default()
});
