//! Each service owns one Postgres database. [`connect_and_migrate`] creates it when missing (so
//! `orderflow up` works on an empty server) and applies the service's migrations.

use std::str::FromStr;

use anyhow::Context as _;
use sqlx::{
    Connection as _, Executor as _, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgConnection, PgPoolOptions},
};

/// Connections per service pool. Services do short transactions; the engine is the heavy user
/// of Postgres, and five services in one `orderflow up` must fit under `max_connections`.
pub const POOL_SIZE: u32 = 10;

/// Creates the database named in `url` if it does not exist, connects a pool and applies
/// `migrator`. Safe to call from several processes at once.
pub async fn connect_and_migrate(url: &str, migrator: &Migrator) -> anyhow::Result<PgPool> {
    let opts = PgConnectOptions::from_str(url).with_context(|| format!("database URL {url}"))?;
    ensure_database(&opts).await?;
    let pool = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .connect_with(opts.clone())
        .await
        .with_context(|| format!("connecting to {}", database_name(&opts)))?;
    migrator
        .run(&pool)
        .await
        .with_context(|| format!("migrating {}", database_name(&opts)))?;
    Ok(pool)
}

fn database_name(opts: &PgConnectOptions) -> String {
    opts.get_database().unwrap_or("postgres").to_owned()
}

async fn ensure_database(opts: &PgConnectOptions) -> anyhow::Result<()> {
    let name = database_name(opts);
    let mut admin = PgConnection::connect_with(&opts.clone().database("postgres"))
        .await
        .context("connecting to the `postgres` maintenance database")?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        // CREATE DATABASE takes no bind parameters; the name is quoted as an identifier.
        let ident = format!("\"{}\"", name.replace('"', "\"\""));
        match admin
            .execute(format!("create database {ident}").as_str())
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it between our check and our create.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {}
            Err(e) => return Err(e).with_context(|| format!("creating database {name}")),
        }
    }
    admin.close().await.ok();
    Ok(())
}

/// `base` with its database name replaced by `database`: how `orderflow up` derives each
/// service's database from one server URL.
pub fn with_database(base: &str, database: &str) -> anyhow::Result<String> {
    let scheme_end = base
        .find("://")
        .map(|i| i + 3)
        .with_context(|| format!("`{base}` is not a URL"))?;
    let (head, rest) = base.split_at(scheme_end);
    let (rest, query) = rest.split_at(rest.find('?').unwrap_or(rest.len()));
    let authority = rest.split('/').next().unwrap_or(rest);
    Ok(format!("{head}{authority}/{database}{query}"))
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn with_database_replaces_only_the_name() {
        assert_eq!(
            with_database("postgres://u@h:5432/orderflow", "orderflow_user").unwrap(),
            "postgres://u@h:5432/orderflow_user"
        );
        assert_eq!(
            with_database("postgres://u@h?sslmode=disable", "x").unwrap(),
            "postgres://u@h/x?sslmode=disable"
        );
        assert!(with_database("nonsense", "x").is_err());
    }
}
