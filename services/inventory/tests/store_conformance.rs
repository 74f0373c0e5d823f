//! The store's invariants on both backends: every scenario below is one `async fn(&Db)` and runs
//! on a fresh Postgres database and on embedded SQLite (in memory, and in a file where
//! connections really run at once), so `orderflow dev` keeps the promises `orderflow up` keeps.
//! A failing test is named `<scenario>::<backend>`.

mod common;

use common::{add_product, stock, stock_of};

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use orderflow_inventory::{
    model::{Price, ProductName, ReservationStatus, Sku},
    store::{
        products::{self, NewProduct, ProductChanges},
        reservations::{self, Released, Reservation, ReserveError, ReserveRequest, StepRef},
    },
    sweeper,
};
use orderflow_service_kit::db::Db;
use uuid::Uuid;

const HOLD: Duration = Duration::from_secs(600);

/// The databases a scenario runs on. Each keeps what it needs alive until the test ends.
mod backends {
    use super::*;

    pub struct TestDb {
        pub db: Db,
        _file: Option<TempFile>,
    }

    /// A SQLite file in the temp directory, removed (with its WAL) when dropped.
    pub struct TempFile(pub PathBuf);

    impl TempFile {
        pub fn new() -> Self {
            Self(std::env::temp_dir().join(format!(
                "orderflow-inventory-{}.db",
                Uuid::new_v4().simple()
            )))
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = self.0.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }

    pub async fn postgres() -> anyhow::Result<TestDb> {
        let pool =
            orderflow_service_testkit::fresh_db("inventory", &orderflow_inventory::migrator())
                .await?;
        Ok(TestDb {
            db: Db::from(pool),
            _file: None,
        })
    }

    /// One connection, as `orderflow dev` without a data directory runs.
    pub async fn sqlite_memory() -> anyhow::Result<TestDb> {
        Ok(TestDb {
            db: Db::sqlite(None, &orderflow_inventory::migrations()).await?,
            _file: None,
        })
    }

    /// A file with a pool of connections that contend for the one writer.
    pub async fn sqlite_file() -> anyhow::Result<TestDb> {
        let file = TempFile::new();
        Ok(TestDb {
            db: Db::sqlite(Some(&file.0), &orderflow_inventory::migrations()).await?,
            _file: Some(file),
        })
    }
}

/// Each scenario as one test per named backend: `scenario on [backend, ...];`.
macro_rules! conformance {
    ($($scenario:ident on [$($backend:ident),+];)+) => {
        $(mod $scenario {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $backend() -> anyhow::Result<()> {
                let test = super::backends::$backend().await?;
                let outcome = super::$scenario(&test.db).await;
                test.db.close().await;
                outcome.map_err(|e| e.context(concat!("on ", stringify!($backend))))
            })+
        })+
    };
}

conformance! {
    the_catalogue_reads_and_writes on [postgres, sqlite_memory];
    a_reservation_takes_every_item_or_none on [postgres, sqlite_memory];
    a_repeated_reserve_returns_the_first_reservation on [postgres, sqlite_memory, sqlite_file];
    release_is_idempotent_and_beats_a_late_reserve on [postgres, sqlite_memory];
    a_finished_saga_settles_once on [postgres, sqlite_memory];
    racing_settlements_settle_once on [postgres, sqlite_memory, sqlite_file];
    concurrent_reserves_never_oversell on [postgres, sqlite_memory, sqlite_file];
    the_sweep_releases_expired_reservations_only on [postgres, sqlite_memory];
}

fn step(workflow: Uuid) -> StepRef {
    StepRef {
        workflow_id: workflow,
        step: "reserve".into(),
    }
}

async fn reserve(
    db: &Db,
    workflow: Uuid,
    items: &[(&str, u32)],
    ttl: Duration,
) -> Result<Reservation, ReserveError> {
    let items: Vec<(String, u32)> = items.iter().map(|(p, q)| ((*p).to_owned(), *q)).collect();
    reservations::reserve(
        db,
        &ReserveRequest {
            step: &step(workflow),
            idempotency_key: &format!("{workflow}/reserve"),
            order_id: Some(Uuid::new_v4()),
            items: &items,
            ttl,
        },
    )
    .await
}

async fn release(db: &Db, workflow: Uuid) -> Result<Released, sqlx::Error> {
    reservations::release(
        db,
        &step(workflow),
        &format!("{workflow}/reserve/compensate"),
        "compensated",
    )
    .await
}

async fn the_catalogue_reads_and_writes(db: &Db) -> anyhow::Result<()> {
    assert_eq!(products::count(db).await?, 0);
    for id in ["c", "a", "b"] {
        add_product(db, id, 3).await?;
    }
    let again = NewProduct {
        id: Sku::parse("a")?,
        name: ProductName::parse("Another")?,
        description: String::new(),
        price: Price::new(1, "USD")?,
        on_hand: 1,
    };
    assert!(
        products::create(db, &again).await?.is_none(),
        "a taken id is refused"
    );
    assert_eq!(products::count(db).await?, 3);

    let ids = |ps: Vec<orderflow_inventory::model::Product>| -> Vec<String> {
        ps.into_iter().map(|p| p.id).collect()
    };
    assert_eq!(ids(products::list(db, None, 2).await?), ["a", "b"]);
    assert_eq!(ids(products::list(db, Some("b"), 2).await?), ["c"]);
    assert_eq!(
        ids(products::get_many(db, &["c".into(), "nope".into(), "a".into()]).await?),
        ["a", "c"]
    );
    assert!(products::get_many(db, &[]).await?.is_empty());

    let before = products::get(db, "b").await?.expect("b exists");
    assert_eq!(before.price.amount_minor, 1000);
    assert_eq!(before.price.currency, "EUR");
    let changed = products::update(
        db,
        "b",
        &ProductChanges {
            price: Some(Price::new(1250, "EUR")?),
            on_hand: Some(9),
            ..Default::default()
        },
    )
    .await?
    .expect("b exists");
    assert_eq!(changed.price.amount_minor, 1250);
    assert_eq!(changed.stock, stock_of(9, 0, 0));
    assert_eq!(changed.name, "b", "fields not given are kept");
    assert_eq!(changed.created_at, before.created_at);
    assert!(changed.updated_at >= before.updated_at);
    assert!(
        products::update(db, "none", &ProductChanges::default())
            .await?
            .is_none()
    );
    // The table's checks hold whatever the code asks.
    let negative = ProductChanges {
        on_hand: Some(-1),
        ..Default::default()
    };
    assert!(
        products::update(db, "b", &negative).await.is_err(),
        "negative stock is refused by the database"
    );
    assert_eq!(stock(db, "b").await?, stock_of(9, 0, 0));
    Ok(())
}

async fn a_reservation_takes_every_item_or_none(db: &Db) -> anyhow::Result<()> {
    add_product(db, "mug", 5).await?;
    add_product(db, "pot", 1).await?;

    let short = Uuid::now_v7();
    match reserve(db, short, &[("mug", 2), ("pot", 2)], HOLD).await {
        Err(ReserveError::OutOfStock(s)) => {
            assert_eq!(s.len(), 1, "{s:?}");
            assert_eq!(
                (s[0].product_id.as_str(), s[0].requested, s[0].on_hand),
                ("pot", 2, 1)
            );
        }
        other => anyhow::bail!("two pots are more than one: {other:?}"),
    }
    let unknown = Uuid::now_v7();
    match reserve(db, unknown, &[("mug", 1), ("nope", 1)], HOLD).await {
        Err(ReserveError::UnknownProducts(p)) => assert_eq!(p, ["nope"]),
        other => anyhow::bail!("there is no such product: {other:?}"),
    }
    assert!(matches!(
        reserve(db, Uuid::now_v7(), &[("mug", 0)], HOLD).await,
        Err(ReserveError::ZeroQuantity { index: 0 })
    ));

    // Nothing moved, and no refused attempt left a reservation behind.
    assert_eq!(stock(db, "mug").await?, stock_of(5, 0, 0));
    assert_eq!(stock(db, "pot").await?, stock_of(1, 0, 0));
    for wf in [short, unknown] {
        assert_eq!(reservations::find(db, &step(wf)).await?, None);
    }

    // Two lines of one product add up; the reservation holds every item.
    let wf = Uuid::now_v7();
    let r = reserve(db, wf, &[("pot", 1), ("mug", 2), ("mug", 1)], HOLD).await?;
    assert_eq!(r.status, ReservationStatus::Reserved);
    assert_eq!(r.items, [("mug".to_owned(), 3), ("pot".to_owned(), 1)]);
    assert_eq!((r.workflow_id, r.step.as_str()), (wf, "reserve"));
    assert!(r.expires_at > chrono::Utc::now() + chrono::Duration::seconds(500));
    assert_eq!(stock(db, "mug").await?, stock_of(2, 3, 0));
    assert_eq!(stock(db, "pot").await?, stock_of(0, 1, 0));
    assert_eq!(reservations::find(db, &step(wf)).await?, Some(r.clone()));
    assert_eq!(reservations::for_workflow(db, wf).await?, [r]);
    Ok(())
}

async fn a_repeated_reserve_returns_the_first_reservation(db: &Db) -> anyhow::Result<()> {
    add_product(db, "mug", 10).await?;
    let wf = Uuid::now_v7();
    // Eight deliveries of the same task at once (redelivery, a retry racing a slow attempt).
    let runs =
        futures::future::join_all((0..8).map(|_| reserve(db, wf, &[("mug", 3)], HOLD))).await;
    let ids: Vec<Uuid> = runs
        .into_iter()
        .map(|r| r.map(|r| r.id))
        .collect::<Result<_, _>>()?;
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(stock(db, "mug").await?, stock_of(7, 3, 0));

    // A later repeat, even one asking for something else, still gets the first.
    let again = reserve(db, wf, &[("mug", 9)], HOLD).await?;
    assert_eq!((again.id, again.items), (ids[0], vec![("mug".into(), 3)]));
    assert_eq!(stock(db, "mug").await?, stock_of(7, 3, 0));
    assert_eq!(reservations::for_workflow(db, wf).await?.len(), 1);
    Ok(())
}

async fn release_is_idempotent_and_beats_a_late_reserve(db: &Db) -> anyhow::Result<()> {
    add_product(db, "mug", 10).await?;
    let wf = Uuid::now_v7();
    reserve(db, wf, &[("mug", 4)], HOLD).await?;
    assert_eq!(stock(db, "mug").await?, stock_of(6, 4, 0));
    assert_eq!(release(db, wf).await?, Released::Now);
    assert_eq!(
        release(db, wf).await?,
        Released::AlreadySettled(ReservationStatus::Released)
    );
    assert_eq!(stock(db, "mug").await?, stock_of(10, 0, 0));
    let r = reservations::find(db, &step(wf)).await?.expect("kept");
    assert_eq!(
        (r.status, r.settle_reason.as_deref()),
        (ReservationStatus::Released, Some("compensated"))
    );

    // The engine compensates a step whose attempt timed out; its reserve may arrive afterwards
    // and must then hold nothing.
    let late = Uuid::now_v7();
    assert_eq!(release(db, late).await?, Released::NeverReserved);
    let r = reserve(db, late, &[("mug", 4)], HOLD).await?;
    assert_eq!(r.status, ReservationStatus::Released);
    assert!(r.items.is_empty(), "{r:?}");
    assert_eq!(stock(db, "mug").await?, stock_of(10, 0, 0));
    Ok(())
}

async fn a_finished_saga_settles_once(db: &Db) -> anyhow::Result<()> {
    add_product(db, "mug", 10).await?;
    add_product(db, "pot", 10).await?;
    let (done, failed, open) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for wf in [done, failed, open] {
        reserve(db, wf, &[("mug", 2), ("pot", 1)], HOLD).await?;
    }
    assert_eq!(stock(db, "mug").await?, stock_of(4, 6, 0));

    // Events are delivered at least once: a repeat settles nothing.
    for expected in [1, 0] {
        let n =
            reservations::settle_workflow(db, done, ReservationStatus::Committed, "saga_completed")
                .await?;
        assert_eq!(n, expected);
        let n = reservations::settle_workflow(
            db,
            failed,
            ReservationStatus::Released,
            "saga_terminated",
        )
        .await?;
        assert_eq!(n, expected);
    }
    assert_eq!(stock(db, "mug").await?, stock_of(6, 2, 2));
    assert_eq!(stock(db, "pot").await?, stock_of(8, 1, 1));
    let committed = reservations::find(db, &step(done)).await?.expect("kept");
    assert_eq!(
        (committed.status, committed.settle_reason.as_deref()),
        (ReservationStatus::Committed, Some("saga_completed"))
    );

    // A release after the commit changes nothing.
    assert_eq!(
        release(db, done).await?,
        Released::AlreadySettled(ReservationStatus::Committed)
    );
    assert_eq!(stock(db, "mug").await?, stock_of(6, 2, 2));
    Ok(())
}

/// Commits and releases of the same sagas at once: each saga settles exactly once, one way.
async fn racing_settlements_settle_once(db: &Db) -> anyhow::Result<()> {
    const SAGAS: i32 = 12;
    add_product(db, "mug", SAGAS * 2).await?;
    let wfs: Vec<Uuid> = (0..SAGAS).map(|_| Uuid::now_v7()).collect();
    for wf in &wfs {
        reserve(db, *wf, &[("mug", 2)], HOLD).await?;
    }
    let races = wfs.iter().map(|wf| async move {
        let commits = futures::future::join_all((0..3).map(|_| {
            reservations::settle_workflow(db, *wf, ReservationStatus::Committed, "saga_completed")
        }));
        let releases = futures::future::join_all((0..3).map(|_| release(db, *wf)));
        let (commits, releases) = futures::join!(commits, releases);
        let committed: usize = commits
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?
            .iter()
            .sum();
        let released = releases
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|r| *r == Released::Now)
            .count();
        anyhow::ensure!(
            committed + released == 1,
            "saga {wf}: committed {committed} times and released {released} times"
        );
        Ok::<bool, anyhow::Error>(committed == 1)
    });
    let outcomes = futures::future::join_all(races)
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<bool>>>()?;
    let sold = 2 * outcomes.iter().filter(|c| **c).count() as i32;
    assert_eq!(stock(db, "mug").await?, stock_of(SAGAS * 2 - sold, 0, sold));
    Ok(())
}

/// Many sagas race for few units, some asking for two products: exactly the units there are
/// are reserved, every reservation whole, and no counter goes below zero.
async fn concurrent_reserves_never_oversell(db: &Db) -> anyhow::Result<()> {
    const SAGAS: usize = 300;
    add_product(db, "limited", 100).await?;
    add_product(db, "rare", 20).await?;
    let items = |i: usize| -> Vec<(&'static str, u32)> {
        if i.is_multiple_of(3) {
            vec![("limited", 1), ("rare", 1)]
        } else {
            vec![("limited", 1)]
        }
    };
    let wfs: Vec<Uuid> = (0..SAGAS).map(|_| Uuid::now_v7()).collect();
    let runs = futures::future::join_all(
        wfs.iter()
            .enumerate()
            .map(|(i, wf)| async move { reserve(db, *wf, &items(i), HOLD).await }),
    )
    .await;
    let mut held: BTreeMap<&str, i32> = BTreeMap::new();
    let mut refused = 0;
    for (i, run) in runs.into_iter().enumerate() {
        match run {
            Ok(r) => {
                assert_eq!(r.items.len(), items(i).len(), "a whole order or nothing");
                for (p, q) in items(i) {
                    *held.entry(p).or_default() += q as i32;
                }
            }
            Err(ReserveError::OutOfStock(_)) => refused += 1,
            Err(e) => return Err(e.into()),
        }
    }
    assert_eq!(
        held.get("limited"),
        Some(&100),
        "{held:?}, {refused} refused"
    );
    assert_eq!(refused, SAGAS - 100);
    assert_eq!(stock(db, "limited").await?, stock_of(0, 100, 0));
    let rare = stock(db, "rare").await?;
    assert_eq!(rare.reserved, held["rare"]);
    assert_eq!(rare.on_hand + rare.reserved, 20);

    // Settling them all at once sells every held unit exactly once.
    let settled = futures::future::join_all(wfs.iter().map(|wf| {
        reservations::settle_workflow(db, *wf, ReservationStatus::Committed, "saga_completed")
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    assert_eq!(settled.iter().sum::<usize>(), 100);
    assert_eq!(stock(db, "limited").await?, stock_of(0, 0, 100));
    assert_eq!(stock(db, "rare").await?.sold, held["rare"]);
    Ok(())
}

async fn the_sweep_releases_expired_reservations_only(db: &Db) -> anyhow::Result<()> {
    add_product(db, "mug", 10).await?;
    assert_eq!(reservations::next_expiry(db).await?, None);
    let (gone, also_gone, kept) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    reserve(db, gone, &[("mug", 3)], Duration::ZERO).await?;
    reserve(db, also_gone, &[("mug", 1)], Duration::ZERO).await?;
    let held = reserve(db, kept, &[("mug", 2)], HOLD).await?;
    assert_eq!(stock(db, "mug").await?, stock_of(4, 6, 0));

    assert_eq!(sweeper::sweep_once(db).await?, 2);
    assert_eq!(sweeper::sweep_once(db).await?, 0);
    assert_eq!(stock(db, "mug").await?, stock_of(8, 2, 0));
    let swept = reservations::find(db, &step(gone)).await?.expect("kept");
    assert_eq!(
        (swept.status, swept.settle_reason.as_deref()),
        (ReservationStatus::Released, Some("expired"))
    );
    // The next expiry is the live one's; a batch smaller than the backlog leaves the rest.
    let next = reservations::next_expiry(db).await?.expect("one is live");
    assert_eq!(next, held.expires_at);
    for _ in 0..3 {
        reserve(db, Uuid::now_v7(), &[("mug", 1)], Duration::ZERO).await?;
    }
    assert_eq!(reservations::sweep_expired(db, 2).await?, 2);
    assert_eq!(reservations::sweep_expired(db, 2).await?, 1);
    assert_eq!(stock(db, "mug").await?, stock_of(8, 2, 0));
    Ok(())
}

/// A file database keeps its reservations across a restart: what was held is still held and can
/// be released after reopening, through the URL `orderflow dev` gives the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_file_keeps_reservations_across_a_restart() -> anyhow::Result<()> {
    let file = backends::TempFile::new();
    let url = format!("sqlite://{}", file.0.display());
    let wf = Uuid::now_v7();
    {
        let db = Db::connect(&url, &orderflow_inventory::migrations()).await?;
        add_product(&db, "mug", 5).await?;
        reserve(&db, wf, &[("mug", 2)], HOLD).await?;
        db.close().await;
    }
    // Migrating again on start is a no-op.
    let db = Db::connect(&url, &orderflow_inventory::migrations()).await?;
    assert!(matches!(db, Db::Sqlite(_)));
    assert_eq!(stock(&db, "mug").await?, stock_of(3, 2, 0));
    let r = reservations::find(&db, &step(wf)).await?.expect("kept");
    assert_eq!(r.status, ReservationStatus::Reserved);
    assert_eq!(release(&db, wf).await?, Released::Now);
    assert_eq!(stock(&db, "mug").await?, stock_of(5, 0, 0));
    db.close().await;
    Ok(())
}
