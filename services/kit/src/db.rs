//! Each service owns one database: Postgres in production, or an embedded SQLite file under
//! `orderflow dev`. [`connect_and_migrate`] creates a Postgres database when missing (so
//! `orderflow up` works on an empty server) and applies the service's migrations; [`Db`] is
//! either backend, chosen by the URL's scheme ([`Db::connect`]), and each service's store matches
//! on it to run its queries in the backend's dialect.

use std::{path::Path, str::FromStr};

use anyhow::Context as _;
use sqlx::{
    Connection as _, Executor as _, PgPool, SqlitePool,
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

/// A service's database: one of the two real backends. Cloning is cheap (a pool handle).
#[derive(Debug, Clone)]
pub enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// A service's migrations, one set per dialect (`migrations/<service>` and
/// `migrations/sqlite/<service>`), so both backends hold the same tables.
#[derive(Debug)]
pub struct Migrations {
    pub postgres: Migrator,
    pub sqlite: Migrator,
}

impl Db {
    /// Connects and migrates by the URL's scheme: `postgres://…` (the database is created if
    /// missing), `sqlite://<file>` (created if missing, WAL) or `sqlite::memory:`.
    pub async fn connect(url: &str, migrations: &Migrations) -> anyhow::Result<Self> {
        if url == "sqlite::memory:" {
            Self::sqlite(None, migrations).await
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            Self::sqlite(Some(Path::new(path)), migrations).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(
                connect_and_migrate(url, &migrations.postgres).await?,
            ))
        } else {
            anyhow::bail!(
                "database URL `{url}`: expected postgres://…, sqlite://<file> or sqlite::memory:"
            )
        }
    }

    /// An embedded database: `file`, or memory with `None`, migrated.
    pub async fn sqlite(file: Option<&Path>, migrations: &Migrations) -> anyhow::Result<Self> {
        let pool = orderflow_queue::sqlite_pool(file)
            .await
            .with_context(|| match file {
                Some(f) => format!("opening {}", f.display()),
                None => "opening an in-memory database".to_owned(),
            })?;
        migrations
            .sqlite
            .run(&pool)
            .await
            .context("migrating the embedded database")?;
        Ok(Self::Sqlite(pool))
    }

    /// Whether the database answers `select 1` (the readiness probe).
    pub async fn ping(&self) -> bool {
        match self {
            Self::Postgres(p) => sqlx::query("select 1").execute(p).await.is_ok(),
            Self::Sqlite(p) => sqlx::query("select 1").execute(p).await.is_ok(),
        }
    }

    /// The Postgres pool, if that is the backend.
    pub fn as_postgres(&self) -> Option<&PgPool> {
        match self {
            Self::Postgres(p) => Some(p),
            Self::Sqlite(_) => None,
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match self {
            Self::Postgres(p) => p.close().await,
            Self::Sqlite(p) => p.close().await,
        }
    }
}

impl From<PgPool> for Db {
    fn from(pool: PgPool) -> Self {
        Self::Postgres(pool)
    }
}

impl From<SqlitePool> for Db {
    fn from(pool: SqlitePool) -> Self {
        Self::Sqlite(pool)
    }
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
