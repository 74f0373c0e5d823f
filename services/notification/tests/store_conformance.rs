//! The notification store, the `notification.send` activity and the REST API on both backends:
//! each scenario below runs on Postgres (a fresh database), on SQLite in memory and on an SQLite
//! file (`orderflow dev`), opened the way `run()` opens them ([`Db::connect`] with the service's
//! URL). A backend that breaks an invariant fails its own test, named after it:
//! `<scenario>::postgres`, `<scenario>::sqlite_memory`, `<scenario>::sqlite_file`.

mod common;

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use axum::http::{Method, StatusCode};
use chrono::Utc;
use orderflow_activities::{Activity, TaskContext};
use orderflow_notification::{
    AppState, Providers, Send,
    model::Channel,
    providers::{
        Delivery, DeliveryError, Email, EmailProvider, Push, PushProvider, Sms, SmsProvider,
        outbox::Outbox,
    },
    store::{self, AttemptOutcome, Claimed, Contact, ListFilter, NewNotification},
};
use orderflow_service_kit::{
    auth::{JwtKeys, Role},
    db::{self, Db},
    http::Readiness,
};
use orderflow_service_testkit::{Answer, raw};

use crate::common::{ctx, order};
use serde_json::json;
use uuid::Uuid;

const SECRET: &str = "notification-conformance-secret-of-32-bytes-or-more";
const FROM: &str = "Shop <orders@shop.test>";

/// Which database a scenario runs on.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Postgres,
    SqliteMemory,
    SqliteFile,
}

/// A migrated database of one backend, and how to open it again (a restart).
struct Fixture {
    backend: Backend,
    url: String,
    db: Db,
    /// The SQLite file, removed with the fixture.
    file: Option<PathBuf>,
}

impl Fixture {
    async fn open(backend: Backend) -> anyhow::Result<Self> {
        orderflow_testkit::init_tracing();
        let (url, file) = match backend {
            Backend::Postgres => {
                let name = format!("orderflow_notification_test_{}", Uuid::new_v4().simple());
                (
                    db::with_database(&orderflow_testkit::pg_server(), &name)?,
                    None,
                )
            }
            Backend::SqliteMemory => ("sqlite::memory:".to_owned(), None),
            Backend::SqliteFile => {
                let path = std::env::temp_dir().join(format!(
                    "orderflow-notification-{}.db",
                    Uuid::new_v4().simple()
                ));
                (format!("sqlite://{}", path.display()), Some(path))
            }
        };
        let db = Db::connect(&url, &orderflow_notification::migrations()).await?;
        Ok(Self {
            backend,
            url,
            db,
            file,
        })
    }

    /// The same database opened (and migrated) anew, as after a restart of the process.
    async fn reopen(&self) -> anyhow::Result<Db> {
        anyhow::ensure!(
            !matches!(self.backend, Backend::SqliteMemory),
            "memory does not outlive its pool"
        );
        self.db.close().await;
        Db::connect(&self.url, &orderflow_notification::migrations()).await
    }

    fn name(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "postgres",
            Backend::SqliteMemory => "sqlite in memory",
            Backend::SqliteFile => "sqlite file",
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(path) = &self.file {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.clone().into_os_string();
                p.push(suffix);
                std::fs::remove_file(p).ok();
            }
        }
    }
}

/// Each scenario as one test per backend.
macro_rules! on_every_backend {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::{Backend, Fixture};

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() -> anyhow::Result<()> {
                super::$scenario(&Fixture::open(Backend::Postgres).await?).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_memory() -> anyhow::Result<()> {
                super::$scenario(&Fixture::open(Backend::SqliteMemory).await?).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_file() -> anyhow::Result<()> {
                super::$scenario(&Fixture::open(Backend::SqliteFile).await?).await
            }
        }
    )*};
}

on_every_backend!(
    one_message_per_key_and_channel,
    a_redelivered_task_sends_each_message_once,
    a_transient_failure_is_logged_and_retried,
    a_refusal_is_final,
    a_duplicate_waits_for_the_delivery_holding_the_message,
    a_dropped_claim_lets_go_of_the_message,
    the_log_lists_newest_first_by_filter_and_cursor,
    the_outbox_records_each_message_once,
    contacts_are_replaced_and_checked,
    admins_read_the_outbox_and_the_log_over_rest,
    users_set_their_contact_over_rest,
);

/// Scenarios that need the database to outlive its pool.
mod after_a_restart {
    use super::{Backend, Fixture};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() -> anyhow::Result<()> {
        super::a_sent_message_stays_sent_after_a_restart(&Fixture::open(Backend::Postgres).await?)
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_file() -> anyhow::Result<()> {
        super::a_sent_message_stays_sent_after_a_restart(&Fixture::open(Backend::SqliteFile).await?)
            .await
    }

    /// SQLite only: on Postgres a killed delivery's hold is a row lock that dies with its
    /// connection, which a test cannot kill without killing the pool it runs on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_delivery_lets_go_at_the_next_start() -> anyhow::Result<()> {
        super::a_hold_of_a_killed_process_is_released_at_start(
            &Fixture::open(Backend::SqliteFile).await?,
        )
        .await
    }
}

// ---- helpers ------------------------------------------------------------------------------

fn message<'a>(key: &'a str, channel: Channel, recipient: &'a str) -> NewNotification<'a> {
    NewNotification {
        idempotency_key: key,
        workflow_id: Some(Uuid::now_v7()),
        channel,
        template: "order_confirmation",
        recipient,
        subject: "Your order",
        body: "Thank you",
        body_html: None,
        provider: "outbox",
    }
}

async fn held(db: &Db, new: &NewNotification<'_>) -> anyhow::Result<store::Claim> {
    match store::claim(db, new).await? {
        Claimed::Held(c) => Ok(c),
        other => anyhow::bail!("expected to hold {}: {other:?}", new.idempotency_key),
    }
}

async fn settled(db: &Db, new: &NewNotification<'_>) -> anyhow::Result<store::Notification> {
    match store::claim(db, new).await? {
        Claimed::Settled(n) => Ok(n),
        other => anyhow::bail!("expected {} settled: {other:?}", new.idempotency_key),
    }
}

async fn all(db: &Db) -> anyhow::Result<Vec<store::Notification>> {
    Ok(store::list(
        db,
        &ListFilter {
            limit: 100,
            ..Default::default()
        },
    )
    .await?)
}

/// The outbox behind every channel, counting the calls and answering from a script first: what
/// the provider saw is what decides whether a message went out twice.
#[derive(Debug)]
struct Counted {
    outbox: Outbox,
    calls: AtomicUsize,
    script: Mutex<VecDeque<DeliveryError>>,
}

impl Counted {
    fn new(db: &Db, script: impl IntoIterator<Item = DeliveryError>) -> Arc<Self> {
        Arc::new(Self {
            outbox: Outbox::new(db.clone(), FROM).expect("a valid sender"),
            calls: AtomicUsize::new(0),
            script: Mutex::new(script.into_iter().collect()),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Counts the call and gives the scripted failure, if any is left. The pause widens the
    /// window in which duplicates of a task run into each other.
    async fn answer(&self) -> Result<(), DeliveryError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        match self.script.lock().unwrap().pop_front() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn providers(self: &Arc<Self>) -> Providers {
        Providers {
            email: self.clone(),
            sms: self.clone(),
            push: self.clone(),
        }
    }
}

#[async_trait]
impl EmailProvider for Counted {
    fn name(&self) -> &'static str {
        "outbox"
    }

    async fn send(&self, email: &Email) -> Result<Delivery, DeliveryError> {
        self.answer().await?;
        EmailProvider::send(&self.outbox, email).await
    }
}

#[async_trait]
impl SmsProvider for Counted {
    fn name(&self) -> &'static str {
        "outbox"
    }

    async fn send(&self, sms: &Sms) -> Result<Delivery, DeliveryError> {
        self.answer().await?;
        SmsProvider::send(&self.outbox, sms).await
    }
}

#[async_trait]
impl PushProvider for Counted {
    fn name(&self) -> &'static str {
        "outbox"
    }

    async fn send(&self, push: &Push) -> Result<Delivery, DeliveryError> {
        self.answer().await?;
        PushProvider::send(&self.outbox, push).await
    }
}

fn send(db: &Db, providers: Providers) -> Send {
    Send {
        db: db.clone(),
        providers,
    }
}

// ---- the store and the activity -----------------------------------------------------------

async fn one_message_per_key_and_channel(f: &Fixture) -> anyhow::Result<()> {
    let (db, b) = (&f.db, f.name());
    let email = held(db, &message("k1", Channel::Email, "a@example.com")).await?;
    let id = email.notification().id;
    email
        .record_attempt(
            "outbox",
            AttemptOutcome::Sent,
            Some("m-1"),
            None,
            &json!({}),
        )
        .await?;
    let sms = held(db, &message("k1", Channel::Sms, "+4915112345678")).await?;
    assert_ne!(sms.notification().id, id, "{b}: one message per channel");
    drop(sms);
    // A repeat with another rendering finds the stored message, not a new one.
    let again = settled(db, &message("k1", Channel::Email, "b@example.com")).await?;
    assert_eq!(again.id, id, "{b}");
    assert_eq!(
        again.recipient, "a@example.com",
        "{b}: the first message stands"
    );
    assert_eq!(again.provider_message_id.as_deref(), Some("m-1"), "{b}");
    let rows = all(db).await?;
    assert_eq!(rows.len(), 2, "{b}: {rows:?}");
    Ok(())
}

async fn a_redelivered_task_sends_each_message_once(f: &Fixture) -> anyhow::Result<()> {
    let (db, b) = (&f.db, f.name());
    let provider = Counted::new(db, []);
    let send = send(db, provider.providers());
    let input = order("buyer@example.com");
    store::set_contact(
        db,
        input.user_id,
        &Contact {
            phone: Some("+4915112345678".into()),
            push_token: Some("device-1".into()),
        },
    )
    .await?;
    let wf = Uuid::now_v7();
    // Four deliveries of the same task at once, then a late fifth.
    let ctxs: Vec<TaskContext> = (0..4).map(|_| ctx(wf)).collect();
    let runs = futures::future::join_all(ctxs.iter().map(|c| send.run(c, input.clone()))).await;
    let ids: Vec<String> = runs
        .into_iter()
        .map(|r| r.map(|n| n.notification_id))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{b}: {e:?}"))?;
    let late = send.run(&ctx(wf), input.clone()).await?;
    assert!(
        ids.iter().all(|id| *id == late.notification_id),
        "{b}: {ids:?}"
    );
    assert_eq!(provider.calls(), 3, "{b}: one call per channel");

    let rows = all(db).await?;
    assert_eq!(rows.len(), 3, "{b}: {rows:?}");
    for n in &rows {
        assert_eq!((n.status.as_str(), n.attempts), ("sent", 1), "{b}: {n:?}");
        assert!(n.sent_at.is_some(), "{b}: {n:?}");
        let log = store::attempts(db, n.id).await?;
        assert_eq!(log.len(), 1, "{b}: {log:?}");
        assert_eq!(log[0].outcome, "sent", "{b}");
        assert_eq!(log[0].detail["recorded_in"], "outbox_messages", "{b}");
    }
    let outbox = store::outbox(db, None, 10).await?;
    assert_eq!(outbox.len(), 3, "{b}: {outbox:?}");
    let email = outbox
        .iter()
        .find(|m| m.channel == "email")
        .expect("the email");
    assert_eq!(email.notification_id.to_string(), late.notification_id);
    assert!(
        email
            .content
            .contains(&format!("Message-ID: <{}@shop.test>", late.notification_id)),
        "{b}: {}",
        email.content
    );
    Ok(())
}

async fn a_transient_failure_is_logged_and_retried(f: &Fixture) -> anyhow::Result<()> {
    let (db, b) = (&f.db, f.name());
    let provider = Counted::new(db, [DeliveryError::Transient("421 try later".into())]);
    let send = send(db, provider.providers());
    let (wf, input) = (Uuid::now_v7(), order("buyer@example.com"));

    let e = send
        .run(&ctx(wf), input.clone())
        .await
        .expect_err("the provider is busy");
    assert_eq!(
        (e.code.as_str(), e.retryable),
        ("delivery_delayed", true),
        "{b}"
    );
    let rows = all(db).await?;
    assert_eq!(
        (rows[0].status.as_str(), rows[0].attempts),
        ("pending", 1),
        "{b}"
    );
    assert!(
        rows[0].last_error.as_deref().unwrap_or("").contains("421"),
        "{b}: {rows:?}"
    );
    assert!(rows[0].sent_at.is_none(), "{b}");

    send.run(&ctx(wf), input.clone()).await?;
    send.run(&ctx(wf), input).await?;
    assert_eq!(provider.calls(), 2, "{b}: nothing after it was sent");
    let rows = all(db).await?;
    assert_eq!(
        (rows[0].status.as_str(), rows[0].attempts),
        ("sent", 2),
        "{b}"
    );
    assert!(rows[0].sent_at.is_some(), "{b}");
    assert!(rows[0].updated_at >= rows[0].created_at, "{b}");
    let log: Vec<(i32, String)> = store::attempts(db, rows[0].id)
        .await?
        .into_iter()
        .map(|a| (a.attempt, a.outcome))
        .collect();
    assert_eq!(
        log,
        [(1, "transient_failure".into()), (2, "sent".into())],
        "{b}"
    );
    assert_eq!(store::outbox(db, None, 10).await?.len(), 1, "{b}");
    Ok(())
}

async fn a_refusal_is_final(f: &Fixture) -> anyhow::Result<()> {
    let (db, b) = (&f.db, f.name());
    let provider = Counted::new(db, [DeliveryError::Permanent("550 no such user".into())]);
    let send = send(db, provider.providers());
    let (wf, input) = (Uuid::now_v7(), order("nobody@example.com"));
    for _ in 0..2 {
        let e = send
            .run(&ctx(wf), input.clone())
            .await
            .expect_err("undeliverable");
        assert_eq!(
            (e.code.as_str(), e.retryable),
            ("undeliverable", false),
            "{b}"
        );
        assert!(e.message.contains("550"), "{b}: {e:?}");
    }
    assert_eq!(provider.calls(), 1, "{b}: a refusal is not retried");
    let rows = all(db).await?;
    assert_eq!(
        (rows[0].status.as_str(), rows[0].attempts),
        ("failed", 1),
        "{b}"
    );
    assert!(store::outbox(db, None, 10).await?.is_empty(), "{b}");
    Ok(())
}

async fn a_duplicate_waits_for_the_delivery_holding_the_message(f: &Fixture) -> anyhow::Result<()> {
    let (db, b) = (&f.db, f.name());
    let new = message("k-wait", Channel::Email, "a@example.com");
    let first = held(db, &new).await?;
    let id = first.notification().id;
    // The duplicate runs as its own task, polled all along as a redelivered task would be: a
    // future left unpolled inside one of its short transactions would hold SQLite's write lock.
    let duplicate = tokio::spawn({
        let (db, new) = (db.clone(), new.clone());
        async move { store::claim(&db, &new).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !duplicate.is_finished(),
        "{b}: the duplicate must wait while the message is held"
    );
    first
        .record_attempt("outbox", AttemptOutcome::Sent, None, None, &json!({}))
        .await?;
    match duplicate.await?? {
        Claimed::Settled(n) => {
            assert_eq!((n.id, n.status.as_str()), (id, "sent"), "{b}");
        }
        other => anyhow::bail!("{b}: the duplicate found {other:?}"),
    }
    Ok(())
}

async fn a_dropped_claim_lets_go_of_the_message(f: &Fixture) -> anyhow::Result<()> {
    let (db, b) = (&f.db, f.name());
    let new = message("k-drop", Channel::Push, "device-1");
    let first = held(db, &new).await?;
    let id = first.notification().id;
    // The delivery died before it recorded anything.
    drop(first);
    let retry = tokio::time::timeout(Duration::from_secs(10), held(db, &new))
        .await
        .map_err(|_| anyhow::anyhow!("{b}: the retry still waits"))??;
    assert_eq!(retry.notification().id, id, "{b}: the same message");
    assert_eq!(retry.notification().attempts, 0, "{b}");
    Ok(())
}

async fn a_hold_of_a_killed_process_is_released_at_start(f: &Fixture) -> anyhow::Result<()> {
    let new = message("k-killed", Channel::Push, "device-2");
    let first = held(&f.db, &new).await?;
    let id = first.notification().id;
    // The process died mid-delivery: the hold was neither recorded nor let go.
    std::mem::forget(first);
    let db = f.reopen().await?;
    let waited = tokio::time::timeout(Duration::from_secs(1), held(&db, &new)).await;
    assert!(
        waited.is_err(),
        "the dead delivery's lease still holds the message"
    );
    assert_eq!(store::release_holds(&db).await?, 1, "one hold released");
    let retry = tokio::time::timeout(Duration::from_secs(5), held(&db, &new))
        .await
        .map_err(|_| anyhow::anyhow!("the retry still waits after the release"))??;
    assert_eq!(retry.notification().id, id, "the same message");
    Ok(())
}

async fn the_log_lists_newest_first_by_filter_and_cursor(f: &Fixture) -> anyhow::Result<()> {
    let (db, b) = (&f.db, f.name());
    let mut ids = Vec::new();
    let mut workflows = Vec::new();
    for (i, channel) in [Channel::Email, Channel::Sms, Channel::Email]
        .into_iter()
        .enumerate()
    {
        let (key, to) = (format!("k-list-{i}"), format!("r{i}@example.com"));
        let new = message(&key, channel, &to);
        workflows.push(new.workflow_id.unwrap());
        let c = held(db, &new).await?;
        ids.push(c.notification().id);
        let outcome = match i {
            1 => AttemptOutcome::PermanentFailure,
            _ => AttemptOutcome::Sent,
        };
        c.record_attempt("outbox", outcome, None, None, &json!({ "i": i }))
            .await?;
    }
    let page = |filter: ListFilter| async move { store::list(db, &filter).await };
    let newest: Vec<_> = page(ListFilter {
        limit: 2,
        ..Default::default()
    })
    .await?
    .into_iter()
    .map(|n| n.id)
    .collect();
    assert_eq!(newest, [ids[2], ids[1]], "{b}: newest first");
    let older: Vec<_> = page(ListFilter {
        before: Some(ids[1]),
        limit: 10,
        ..Default::default()
    })
    .await?
    .into_iter()
    .map(|n| n.id)
    .collect();
    assert_eq!(older, [ids[0]], "{b}: before the cursor");

    let count = |filter: ListFilter| async move {
        store::list(
            db,
            &ListFilter {
                limit: 10,
                ..filter
            },
        )
        .await
        .map(|rows| rows.iter().map(|n| n.id).collect::<Vec<_>>())
    };
    use orderflow_notification::model::NotificationStatus;
    assert_eq!(
        count(ListFilter {
            status: Some(NotificationStatus::Failed),
            ..Default::default()
        })
        .await?,
        [ids[1]],
        "{b}: by status"
    );
    assert_eq!(
        count(ListFilter {
            channel: Some(Channel::Email),
            ..Default::default()
        })
        .await?,
        [ids[2], ids[0]],
        "{b}: by channel"
    );
    assert_eq!(
        count(ListFilter {
            recipient: Some("r2@example.com".into()),
            ..Default::default()
        })
        .await?,
        [ids[2]],
        "{b}: by recipient"
    );
    assert_eq!(
        count(ListFilter {
            workflow_id: Some(workflows[0]),
            ..Default::default()
        })
        .await?,
        [ids[0]],
        "{b}: by workflow"
    );

    let one = store::get(db, ids[1]).await?.expect("stored");
    assert_eq!(one.status, "failed", "{b}");
    assert_eq!(one.workflow_id, Some(workflows[1]), "{b}");
    assert_eq!(one.body_html, None, "{b}");
    let listed = all(db).await?;
    assert_eq!(listed.iter().find(|n| n.id == ids[1]), Some(&one), "{b}");
    assert_eq!(store::get(db, Uuid::now_v7()).await?, None, "{b}");
    let log = store::attempts(db, ids[1]).await?;
    assert_eq!(log[0].detail, json!({ "i": 1 }), "{b}: the detail as given");
    assert!(
        (Utc::now() - log[0].at).num_seconds().abs() < 60,
        "{b}: {log:?}"
    );
    Ok(())
}

async fn the_outbox_records_each_message_once(f: &Fixture) -> anyhow::Result<()> {
    let (db, b) = (&f.db, f.name());
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    for (i, id) in ids.iter().enumerate() {
        store::record_outbox(
            db,
            *id,
            Channel::Sms,
            "+4915112345678",
            &format!("text {i}"),
        )
        .await?;
    }
    store::record_outbox(db, ids[0], Channel::Sms, "+4915112345678", "again").await?;
    let first = store::outbox(db, None, 2).await?;
    assert_eq!(
        first.iter().map(|m| m.notification_id).collect::<Vec<_>>(),
        [ids[2], ids[1]],
        "{b}: newest first"
    );
    let rest = store::outbox(db, Some(ids[1]), 10).await?;
    assert_eq!(rest.len(), 1, "{b}: {rest:?}");
    assert_eq!(rest[0].content, "text 0", "{b}: a repeat records nothing");
    assert_eq!(rest[0].channel, "sms", "{b}");
    assert!(
        (Utc::now() - rest[0].created_at).num_seconds().abs() < 60,
        "{b}"
    );
    Ok(())
}

async fn contacts_are_replaced_and_checked(f: &Fixture) -> anyhow::Result<()> {
    let (db, b) = (&f.db, f.name());
    let user = Uuid::new_v4();
    assert_eq!(store::contact(db, user).await?, Contact::default(), "{b}");
    let both = Contact {
        phone: Some("+4915112345678".into()),
        push_token: Some("tok-1".into()),
    };
    store::set_contact(db, user, &both).await?;
    assert_eq!(store::contact(db, user).await?, both, "{b}");
    let push_only = Contact {
        phone: None,
        push_token: Some("tok-2".into()),
    };
    store::set_contact(db, user, &push_only).await?;
    assert_eq!(store::contact(db, user).await?, push_only, "{b}");
    // The table checks the number too, whoever writes it.
    for phone in [
        "0151 123",
        "+0151123456",
        "+49",
        "+4915112345678901234",
        "+49151a2345678",
    ] {
        let bad = Contact {
            phone: Some(phone.into()),
            push_token: None,
        };
        assert!(
            store::set_contact(db, user, &bad).await.is_err(),
            "{b}: `{phone}` was stored"
        );
    }
    let empty_token = Contact {
        phone: None,
        push_token: Some(String::new()),
    };
    assert!(
        store::set_contact(db, user, &empty_token).await.is_err(),
        "{b}"
    );
    assert_eq!(store::contact(db, user).await?, push_only, "{b}");
    Ok(())
}

async fn a_sent_message_stays_sent_after_a_restart(f: &Fixture) -> anyhow::Result<()> {
    let b = f.name();
    let provider = Counted::new(&f.db, []);
    let (wf, input) = (Uuid::now_v7(), order("buyer@example.com"));
    let first = send(&f.db, provider.providers())
        .run(&ctx(wf), input.clone())
        .await?;

    let db = f.reopen().await?;
    let provider = Counted::new(&db, []);
    let again = send(&db, provider.providers()).run(&ctx(wf), input).await?;
    assert_eq!(again.notification_id, first.notification_id, "{b}");
    assert_eq!(provider.calls(), 0, "{b}: sent before the restart");
    assert_eq!(store::outbox(&db, None, 10).await?.len(), 1, "{b}");
    db.close().await;
    Ok(())
}

// ---- the REST API -------------------------------------------------------------------------

/// The service's whole router on the fixture's database.
fn app(db: &Db) -> axum::Router {
    orderflow_notification::router(
        AppState {
            db: db.clone(),
            keys: JwtKeys::new(SECRET),
        },
        Readiness::new().database(db.clone()),
    )
}

fn token(role: Role) -> (Uuid, String) {
    let user = Uuid::new_v4();
    let t = JwtKeys::new(SECRET)
        .issue(user, role, Duration::from_secs(300))
        .expect("signs");
    (user, t)
}

async fn get(app: &axum::Router, path: &str, token: Option<&str>) -> Answer {
    raw(app, Method::GET, path, token, &[], None).await
}

async fn admins_read_the_outbox_and_the_log_over_rest(f: &Fixture) -> anyhow::Result<()> {
    let (db, b) = (&f.db, f.name());
    let app = app(db);
    let outbox = Arc::new(Outbox::new(db.clone(), FROM)?);
    let send = send(
        db,
        Providers {
            email: outbox.clone(),
            sms: outbox.clone(),
            push: outbox,
        },
    );
    for i in 0..3 {
        send.run(
            &ctx(Uuid::now_v7()),
            order(&format!("buyer{i}@example.com")),
        )
        .await?;
    }
    let (_, admin) = token(Role::Admin);
    let admin = Some(admin.as_str());

    let page = get(&app, "/api/v1/outbox?limit=2", admin).await;
    assert_eq!(page.status, StatusCode::OK, "{b}: {}", page.body);
    let items = page.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{b}");
    assert_eq!(
        items[0]["recipient"], "buyer2@example.com",
        "{b}: newest first"
    );
    assert_eq!(items[0]["channel"], "email", "{b}");
    let raw_email = items[0]["content"].as_str().unwrap();
    assert!(
        raw_email.contains("Subject: Your order") && raw_email.contains("25.99 EUR"),
        "{b}: the email as it would have gone out: {raw_email}"
    );
    let cursor = page.body["next_cursor"].as_str().unwrap();
    let rest = get(&app, &format!("/api/v1/outbox?cursor={cursor}"), admin).await;
    assert_eq!(
        rest.body["items"][0]["recipient"], "buyer0@example.com",
        "{b}"
    );
    assert_eq!(rest.body["next_cursor"], serde_json::Value::Null, "{b}");

    let log = get(
        &app,
        "/api/v1/notifications?status=sent&channel=email",
        admin,
    )
    .await;
    assert_eq!(log.status, StatusCode::OK, "{b}: {}", log.body);
    assert_eq!(log.body["items"].as_array().unwrap().len(), 3, "{b}");
    let id = log.body["items"][0]["id"].as_str().unwrap();
    let one = get(&app, &format!("/api/v1/notifications/{id}"), admin).await;
    assert_eq!(one.status, StatusCode::OK, "{b}: {}", one.body);
    assert_eq!(one.body["provider"], "outbox", "{b}");
    assert_eq!(one.body["attempt_log"][0]["outcome"], "sent", "{b}");
    let missing = get(
        &app,
        &format!("/api/v1/notifications/{}", Uuid::now_v7()),
        admin,
    )
    .await;
    missing.problem(StatusCode::NOT_FOUND, None);

    for (path, field) in [
        ("/api/v1/outbox?cursor=x", "cursor"),
        ("/api/v1/outbox?limit=0", "limit"),
        ("/api/v1/outbox?colour=red", "colour"),
        ("/api/v1/notifications?status=lost", "status"),
        ("/api/v1/notifications?workflow_id=1", "workflow_id"),
    ] {
        get(&app, path, admin)
            .await
            .problem(StatusCode::BAD_REQUEST, Some(field));
    }
    let (_, customer) = token(Role::Customer);
    for path in ["/api/v1/outbox", "/api/v1/notifications"] {
        get(&app, path, Some(&customer))
            .await
            .problem(StatusCode::FORBIDDEN, None);
        assert_eq!(
            get(&app, path, None).await.status,
            StatusCode::UNAUTHORIZED,
            "{b}"
        );
    }
    assert_eq!(
        get(&app, "/ready", None).await.status,
        StatusCode::OK,
        "{b}"
    );
    Ok(())
}

async fn users_set_their_contact_over_rest(f: &Fixture) -> anyhow::Result<()> {
    let (db, b) = (&f.db, f.name());
    let app = app(db);
    let (user, t) = token(Role::Customer);
    let saved = raw(
        &app,
        Method::PUT,
        "/api/v1/contacts/me",
        Some(&t),
        &[],
        Some(r#"{"phone":"+4915112345678","push_token":"tok-1"}"#.into()),
    )
    .await;
    assert_eq!(saved.status, StatusCode::OK, "{b}: {}", saved.body);
    let got = get(&app, "/api/v1/contacts/me", Some(&t)).await;
    assert_eq!(got.body, saved.body, "{b}");
    assert_eq!(
        store::contact(db, user).await?.phone.as_deref(),
        Some("+4915112345678"),
        "{b}"
    );
    raw(
        &app,
        Method::PUT,
        "/api/v1/contacts/me",
        Some(&t),
        &[],
        Some(r#"{"phone":"0151 123"}"#.into()),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY, Some("phone"));
    Ok(())
}
