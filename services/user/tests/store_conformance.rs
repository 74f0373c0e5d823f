//! The user store and the session store keep the same promises on both backends: each scenario
//! runs once on a fresh Postgres database with sessions in the local Redis (`orderflow up`) and
//! once on a SQLite file holding the sessions too (`orderflow dev`), as `<scenario>::postgres`
//! and `<scenario>::sqlite`. A file rather than memory, so that concurrent calls really run on
//! several connections. Every assertion names the backend it failed on.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use orderflow_service_kit::{
    auth::Role,
    db::{self, Db},
    kv,
};
use orderflow_user::{
    seed,
    sessions::{MAX_FAILURES, Sessions},
    store::{self, Changes, StoreError},
};
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(3600);

/// One backend's stores, and the file a SQLite backend lives in.
struct Backend {
    name: &'static str,
    db: Db,
    sessions: Sessions,
    _file: Option<TempFile>,
}

/// A database file under the temp directory, removed with its WAL when the test ends.
struct TempFile(PathBuf);

impl TempFile {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("orderflow-user-{}.db", Uuid::new_v4().simple())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            std::fs::remove_file(p).ok();
        }
    }
}

async fn postgres() -> anyhow::Result<Backend> {
    orderflow_testkit::init_tracing();
    let tag = Uuid::new_v4().simple().to_string();
    let url = db::with_database(
        &orderflow_testkit::pg_server(),
        &format!("orderflow_user_test_{tag}"),
    )?;
    let db = Db::connect(&url, &orderflow_user::migrations()).await?;
    let redis = kv::connect("redis://127.0.0.1:6379").await?;
    Ok(Backend {
        name: "postgres+redis",
        db,
        sessions: Sessions::new(redis, &format!("t{}.", &tag[..12])),
        _file: None,
    })
}

/// Opens (and migrates) the user database in `file` with its sessions.
async fn open_sqlite(file: &Path) -> anyhow::Result<(Db, Sessions)> {
    let db = Db::sqlite(Some(file), &orderflow_user::migrations()).await?;
    let Db::Sqlite(pool) = &db else {
        unreachable!("Db::sqlite opens SQLite")
    };
    let sessions = Sessions::in_database(pool.clone());
    Ok((db, sessions))
}

async fn sqlite() -> anyhow::Result<Backend> {
    orderflow_testkit::init_tracing();
    let file = TempFile::new();
    let (db, sessions) = open_sqlite(&file.0).await?;
    Ok(Backend {
        name: "sqlite",
        db,
        sessions,
        _file: Some(file),
    })
}

/// Runs each scenario once per backend: `<scenario>::postgres` and `<scenario>::sqlite`.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test]
            async fn postgres() -> anyhow::Result<()> {
                super::$scenario(&super::postgres().await?).await
            }

            #[tokio::test]
            async fn sqlite() -> anyhow::Result<()> {
                super::$scenario(&super::sqlite().await?).await
            }
        }
    )*};
}

on_both_backends!(
    users_read_back_as_written,
    emails_are_unique_in_any_case,
    concurrent_registrations_of_one_email_make_one_account,
    seeding_the_admin_twice_makes_one_admin,
    a_refresh_token_is_spent_by_its_first_use,
    of_concurrent_refreshes_with_one_token_one_wins,
    revoking_a_user_ends_only_their_sessions,
    failed_logins_lock_an_email_out_until_cleared,
);

async fn customer(b: &Backend, email: &str) -> Result<store::User, StoreError> {
    store::insert(&b.db, email, "$argon2id$stub", "Ann", Role::Customer).await
}

async fn users_read_back_as_written(b: &Backend) -> anyhow::Result<()> {
    let n = b.name;
    let ann = customer(b, "Ann@Example.com").await?;
    assert_eq!(
        ann.email, "Ann@Example.com",
        "{n}: the email is kept as given"
    );
    assert_eq!(ann.role, Role::Customer, "{n}");

    let got = store::get(&b.db, ann.id)
        .await?
        .expect("the user reads back");
    assert_eq!(
        (got.id, &got.email, &got.name, got.role),
        (ann.id, &ann.email, &ann.name, ann.role),
        "{n}"
    );
    assert_eq!(
        got.created_at, ann.created_at,
        "{n}: times read back exactly"
    );

    let creds = store::credentials_by_email(&b.db, "aNN@eXAMPLE.cOM")
        .await?
        .expect("found in any case");
    assert_eq!((creds.id, creds.role), (ann.id, Role::Customer), "{n}");
    assert_eq!(creds.password_hash, "$argon2id$stub", "{n}");
    assert_eq!(
        store::credentials(&b.db, ann.id).await?.map(|c| c.id),
        Some(ann.id),
        "{n}"
    );

    let renamed = store::update(
        &b.db,
        ann.id,
        &Changes {
            name: Some("Ann B"),
            password_hash: Some("$argon2id$new"),
            ..Changes::default()
        },
    )
    .await?
    .expect("the user exists");
    assert_eq!(renamed.name, "Ann B", "{n}");
    assert_eq!(
        renamed.email, ann.email,
        "{n}: an unset change leaves the column"
    );
    assert_eq!(renamed.created_at, ann.created_at, "{n}");
    assert!(
        renamed.updated_at >= ann.updated_at,
        "{n}: updated_at moves on"
    );
    let creds = store::credentials(&b.db, ann.id).await?.expect("exists");
    assert_eq!(creds.password_hash, "$argon2id$new", "{n}");

    let admin = store::set_role(&b.db, ann.id, Role::Admin)
        .await?
        .expect("exists");
    assert_eq!(admin.role, Role::Admin, "{n}");
    assert_eq!(
        store::get(&b.db, ann.id).await?.map(|u| u.role),
        Some(Role::Admin),
        "{n}"
    );

    let nobody = Uuid::now_v7();
    assert!(store::get(&b.db, nobody).await?.is_none(), "{n}");
    assert!(store::credentials(&b.db, nobody).await?.is_none(), "{n}");
    assert!(
        store::credentials_by_email(&b.db, "nobody@example.com")
            .await?
            .is_none(),
        "{n}"
    );
    assert!(
        store::update(&b.db, nobody, &Changes::default())
            .await?
            .is_none(),
        "{n}"
    );
    assert!(
        store::set_role(&b.db, nobody, Role::Admin).await?.is_none(),
        "{n}"
    );
    Ok(())
}

async fn emails_are_unique_in_any_case(b: &Backend) -> anyhow::Result<()> {
    let n = b.name;
    customer(b, "Ann@Example.com").await?;
    let again = customer(b, "ann@EXAMPLE.com").await;
    assert!(
        matches!(again, Err(StoreError::EmailTaken)),
        "{n}: a second account for the same email: {again:?}"
    );

    let bob = customer(b, "bob@example.com").await?;
    let taken = store::update(
        &b.db,
        bob.id,
        &Changes {
            email: Some("ANN@example.com"),
            ..Changes::default()
        },
    )
    .await;
    assert!(
        matches!(taken, Err(StoreError::EmailTaken)),
        "{n}: bob took ann's email: {taken:?}"
    );
    // Changing the case of one's own email is no conflict.
    let recased = store::update(
        &b.db,
        bob.id,
        &Changes {
            email: Some("Bob@Example.com"),
            ..Changes::default()
        },
    )
    .await?
    .expect("exists");
    assert_eq!(recased.email, "Bob@Example.com", "{n}");
    Ok(())
}

async fn concurrent_registrations_of_one_email_make_one_account(b: &Backend) -> anyhow::Result<()> {
    let n = b.name;
    let attempts = [
        "cy@example.com",
        "CY@example.com",
        "Cy@Example.com",
        "cy@EXAMPLE.COM",
    ]
    .into_iter()
    .cycle()
    .take(8)
    .map(|email| {
        let db = b.db.clone();
        tokio::spawn(async move {
            store::insert(&db, email, "$argon2id$stub", "", Role::Customer).await
        })
    })
    .collect::<Vec<_>>();
    let (mut created, mut taken) = (0, 0);
    for a in attempts {
        match a.await? {
            Ok(_) => created += 1,
            Err(StoreError::EmailTaken) => taken += 1,
            Err(e) => panic!("{n}: a registration failed otherwise: {e}"),
        }
    }
    assert_eq!((created, taken), (1, 7), "{n}: (created, refused)");
    Ok(())
}

async fn seeding_the_admin_twice_makes_one_admin(b: &Backend) -> anyhow::Result<()> {
    let n = b.name;
    seed::ensure_admin(&b.db, "root@example.com", "admin password").await?;
    let first = store::credentials_by_email(&b.db, "root@example.com")
        .await?
        .expect("seeded");
    assert_eq!(first.role, Role::Admin, "{n}");
    // A restart seeds again: same account, password untouched.
    seed::ensure_admin(&b.db, "ROOT@example.com", "another password").await?;
    let second = store::credentials_by_email(&b.db, "root@example.com")
        .await?
        .expect("seeded");
    assert_eq!(
        (second.id, &second.password_hash),
        (first.id, &first.password_hash),
        "{n}"
    );

    // An existing customer named as the admin is promoted.
    let dee = customer(b, "dee@example.com").await?;
    seed::ensure_admin(&b.db, "dee@example.com", "admin password").await?;
    assert_eq!(
        store::get(&b.db, dee.id).await?.map(|u| u.role),
        Some(Role::Admin),
        "{n}"
    );
    Ok(())
}

async fn a_refresh_token_is_spent_by_its_first_use(b: &Backend) -> anyhow::Result<()> {
    let n = b.name;
    let user = Uuid::now_v7();
    let first = b.sessions.create(user, TTL).await?.refresh_token;
    let second = b.sessions.create(user, TTL).await?.refresh_token;
    assert_ne!(first, second, "{n}: tokens are random");
    assert_eq!(first.len(), 64, "{n}: 32 bytes in hex");

    assert_eq!(b.sessions.take(&first).await?, Some(user), "{n}");
    assert_eq!(
        b.sessions.take(&first).await?,
        None,
        "{n}: a replayed refresh token still worked"
    );
    // Spending one session leaves the user's others alone.
    assert_eq!(b.sessions.take(&second).await?, Some(user), "{n}");
    assert_eq!(b.sessions.take(&"0".repeat(64)).await?, None, "{n}");
    Ok(())
}

async fn of_concurrent_refreshes_with_one_token_one_wins(b: &Backend) -> anyhow::Result<()> {
    let n = b.name;
    for _ in 0..5 {
        let user = Uuid::now_v7();
        let token = b.sessions.create(user, TTL).await?.refresh_token;
        let racers = (0..8)
            .map(|_| {
                let (sessions, token) = (b.sessions.clone(), token.clone());
                tokio::spawn(async move { sessions.take(&token).await })
            })
            .collect::<Vec<_>>();
        let mut winners = Vec::new();
        for r in racers {
            winners.extend(r.await??);
        }
        assert_eq!(winners, vec![user], "{n}: the users the racers got");
    }
    Ok(())
}

async fn revoking_a_user_ends_only_their_sessions(b: &Backend) -> anyhow::Result<()> {
    let n = b.name;
    let (eve, fay) = (Uuid::now_v7(), Uuid::now_v7());
    let mut eves = Vec::new();
    for _ in 0..3 {
        eves.push(b.sessions.create(eve, TTL).await?.refresh_token);
    }
    let fays = b.sessions.create(fay, TTL).await?.refresh_token;

    b.sessions.revoke_all(eve).await?;
    for t in &eves {
        assert_eq!(
            b.sessions.take(t).await?,
            None,
            "{n}: a revoked session lived"
        );
    }
    assert_eq!(b.sessions.take(&fays).await?, Some(fay), "{n}");
    // Revoking a user with no sessions is no error, and new sessions work after a revoke.
    b.sessions.revoke_all(eve).await?;
    let fresh = b.sessions.create(eve, TTL).await?.refresh_token;
    assert_eq!(b.sessions.take(&fresh).await?, Some(eve), "{n}");
    Ok(())
}

async fn failed_logins_lock_an_email_out_until_cleared(b: &Backend) -> anyhow::Result<()> {
    let n = b.name;
    let s = &b.sessions;
    for _ in 0..MAX_FAILURES - 1 {
        s.record_failure("Gus@example.com").await?;
    }
    assert_eq!(
        s.locked_out("gus@example.com").await?,
        None,
        "{n}: one failure early"
    );
    s.record_failure("GUS@example.com").await?;
    let wait = s.locked_out("gus@EXAMPLE.com").await?;
    assert!(
        wait.is_some_and(|secs| (1..=900).contains(&secs)),
        "{n}: locked out for {wait:?} seconds"
    );
    assert_eq!(
        s.locked_out("hal@example.com").await?,
        None,
        "{n}: another email"
    );

    s.clear_failures("gus@example.com").await?;
    assert_eq!(s.locked_out("Gus@example.com").await?, None, "{n}: cleared");
    s.record_failure("gus@example.com").await?;
    assert_eq!(
        s.locked_out("gus@example.com").await?,
        None,
        "{n}: clearing restarts the count"
    );
    Ok(())
}

/// SQLite keeps what Redis would have expired, so a session's end is checked on read.
#[tokio::test]
async fn an_expired_session_cannot_be_taken_on_sqlite() -> anyhow::Result<()> {
    let b = sqlite().await?;
    let user = Uuid::now_v7();
    let expired = b.sessions.create(user, Duration::ZERO).await?.refresh_token;
    let live = b.sessions.create(user, TTL).await?.refresh_token;
    assert_eq!(b.sessions.take(&expired).await?, None);
    assert_eq!(b.sessions.take(&live).await?, Some(user));
    Ok(())
}

/// `orderflow dev --data-dir` keeps accounts and sessions across a restart.
#[tokio::test]
async fn users_and_sessions_survive_a_restart_on_a_sqlite_file() -> anyhow::Result<()> {
    orderflow_testkit::init_tracing();
    let file = TempFile::new();
    let (db, sessions) = open_sqlite(&file.0).await?;
    let ann = store::insert(&db, "ann@example.com", "$argon2id$stub", "Ann", Role::Admin).await?;
    let token = sessions.create(ann.id, TTL).await?.refresh_token;
    for _ in 0..MAX_FAILURES {
        sessions.record_failure("bob@example.com").await?;
    }
    db.close().await;

    // Opening again runs the migrations again: they must find their work done.
    let (db, sessions) = open_sqlite(&file.0).await?;
    let got = store::get(&db, ann.id).await?.expect("the user survived");
    assert_eq!(
        (got.email.as_str(), got.role),
        ("ann@example.com", Role::Admin)
    );
    assert!(sessions.locked_out("bob@example.com").await?.is_some());
    assert_eq!(
        sessions.take(&token).await?,
        Some(ann.id),
        "the session survived"
    );
    db.close().await;
    Ok(())
}
