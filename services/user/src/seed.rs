//! The first admin. Without one nobody could write products or see every order, and there is no
//! safe way to promote oneself through the API, so the operator names one in the environment.

use orderflow_service_kit::{auth::Role, db::Db};

use crate::{
    model::{Email, Password},
    passwords, store,
};

/// Creates the admin if the email is unknown, or promotes the existing account. An existing
/// password is left alone: the environment seeds an account, it does not reset one.
pub async fn ensure_admin(db: &Db, email: &str, password: &str) -> anyhow::Result<()> {
    let email = Email::parse(email).map_err(|e| anyhow::anyhow!("ORDERFLOW_ADMIN_EMAIL {e}"))?;
    let password =
        Password::parse(password).map_err(|e| anyhow::anyhow!("ORDERFLOW_ADMIN_PASSWORD {e}"))?;
    if let Some(existing) = store::credentials_by_email(db, email.as_str()).await? {
        if existing.role != Role::Admin {
            store::set_role(db, existing.id, Role::Admin).await?;
            tracing::info!(email = %email, "promoted the configured admin");
        }
        return Ok(());
    }
    let hash = passwords::hash(password.expose().to_owned()).await?;
    match store::insert(db, email.as_str(), &hash, "Administrator", Role::Admin).await {
        Ok(_) => tracing::info!(email = %email, "created the configured admin"),
        // Another replica seeded it at the same moment.
        Err(store::StoreError::EmailTaken) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
