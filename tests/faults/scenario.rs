//! One scenario from start to books: a fresh private system, the shop's orders placed through
//! the REST API while the scenario's faults are injected, then the books checked and the
//! figures printed (and written to `target/faults/<name>.txt` for `docs/reliability.md`).

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use rand::Rng;
use tokio_util::sync::DropGuard;

use crate::{
    books::{self, Figures},
    shop::Shop,
    system::{Options, Process, Service, System},
};

/// Scenarios own the machine's two cores and their ports while they run: one at a time even
/// under `cargo test` (nextest runs them in the `faults` test group, one at a time as well).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `FAULTS_SOAK=1`: ten times the orders and five times the fault rounds.
pub fn soak() -> bool {
    std::env::var("FAULTS_SOAK").is_ok_and(|v| v == "1")
}

/// What the fault schedule of a scenario works with.
pub struct Ctx {
    pub sys: System,
    pub faults: Vec<String>,
    /// Orders the customers have placed so far.
    pub placed: Arc<AtomicUsize>,
    pub orders: usize,
    /// Kept alive until the books are checked (a relay, say).
    pub guards: Vec<DropGuard>,
    /// Figures only known at the end (what a relay did), added to the faults.
    pub notes: Vec<Box<dyn Fn() -> String + Send + Sync>>,
    started: Instant,
}

impl Ctx {
    /// Records (and prints) one injected fault.
    pub fn fault(&mut self, what: impl Into<String>) {
        let what = what.into();
        println!(
            "[{:>6.1}s] fault: {what}",
            self.started.elapsed().as_secs_f64()
        );
        self.faults.push(what);
    }

    /// `n` rounds, or five times as many in a soak.
    pub fn rounds(&self, n: usize) -> usize {
        if soak() { n * 5 } else { n }
    }

    /// A random pause up to `max_ms`.
    pub async fn pause(&self, min_ms: u64, max_ms: u64) {
        let ms = rand::rng().random_range(min_ms..=max_ms);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Waits until at least `n` sagas are in flight, or every order is placed.
    pub async fn busy(&self, n: i64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.placed.load(Ordering::Relaxed) >= self.orders
                || self.sys.sagas_in_flight().await.unwrap_or(0) >= n
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!("never {n} sagas in flight")
    }

    /// Restarts whatever the schedule left dead (the first engine and every service).
    async fn revive(&mut self) -> anyhow::Result<()> {
        let mut all = vec![Process::Engine(0)];
        all.extend(Service::ALL.map(Process::Service));
        for p in all {
            if !self.sys.is_running(p) {
                self.sys.spawn(p).await?;
            }
        }
        Ok(())
    }
}

fn orders() -> usize {
    std::env::var("FAULTS_ORDERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if soak() { 2000 } else { 200 })
}

/// Runs scenario `name`: the system with `options`, the orders, and `faults` at the same time.
pub async fn run(
    name: &str,
    options: Options,
    faults: impl AsyncFnOnce(&mut Ctx) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let _one_at_a_time = SERIAL.lock().await;
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!(
        "orderflow-faults-{name}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    println!("scenario {name}: everything under {}", dir.display());
    let sys = System::start(dir.clone(), options).await?;
    let shop = Shop::open(&sys).await?;
    let mut ctx = Ctx {
        sys,
        faults: Vec::new(),
        placed: shop.placed_so_far.clone(),
        orders: orders(),
        guards: Vec::new(),
        notes: Vec::new(),
        started,
    };
    let seed = rand::rng().random();
    let n = ctx.orders;
    println!("scenario {name}: {n} orders (seed {seed})");
    let (placed, injected) = tokio::join!(shop.place_orders(n, seed), faults(&mut ctx));
    injected?;
    let placed = placed?;
    ctx.revive().await?;
    let mut figures = Figures {
        faults: std::mem::take(&mut ctx.faults),
        ..Figures::default()
    };
    books::check(&ctx.sys, &placed, &mut figures).await?;
    figures.faults.extend(ctx.notes.iter().map(|note| note()));
    let report = format!(
        "scenario {name} ({:.0} s): {figures}",
        started.elapsed().as_secs_f64()
    );
    println!("{report}");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("faults");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join(format!("{name}.txt")), format!("{report}\n"));
    if !figures.problems.is_empty() || figures.lost > 0 || figures.duplicated > 0 {
        anyhow::bail!(
            "scenario {name}: the books do not balance; logs are under {}",
            dir.display()
        );
    }
    drop(ctx);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
