//! `orderflow bench`: the saga benchmark on the real stack (DESIGN.md §4, issue 5).
//!
//! One run creates its own database and queue prefix, starts the engine and the bench workers as
//! child processes of this binary (or in this process with `--in-process`), drives N order sagas
//! closed-loop with C in flight after a warm-up, checks that every saga ended as it should with
//! each effect done exactly once, measures the raw floor (the same four INSERTs with no engine)
//! against the same database, prints the figures and ends with one JSON line of them.
//!
//! - [`activities`]: the bench workers' activities, one single-row write per step.
//! - [`stack`]: the bench database, the engine and worker processes, and cleaning up after.
//! - [`driver`]: the closed loop: starts sagas over the REST API and sees them finish through
//!   the engine's `workflow.finished` events.
//! - [`raw`]: the floor: the same writes from the same client, no engine.
//! - [`measure`]: CPU and memory from `/proc`, Postgres commits, the engine's counters.
//! - [`check`]: what must be true of the database after a run.
//! - [`report`]: percentiles, the human summary and the JSON line.

mod activities;
mod broker_floor;
mod check;
mod driver;
mod measure;
mod raw;
mod report;
mod services;
mod stack;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use crate::cli::Connections;

/// Sagas in flight of the low-load runs that follow the measured one.
const LOW_LOAD_IN_FLIGHT: [usize; 2] = [1, 8];

/// Flags of `orderflow bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub conn: Connections,
    /// Sagas measured (after the warm-up).
    #[arg(long, default_value_t = 2000)]
    pub sagas: usize,
    /// Sagas in flight at once (closed loop: a new one starts when one finishes).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Sagas run first and not measured (connections, caches, JIT-free but cold pages).
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Sagas run after the measured ones at 1 and then at 8 in flight, each reported beside the
    /// main run (a shop's ordinary day is a few sagas in flight); 0: skip both.
    #[arg(long, default_value_t = 200)]
    pub low_load_sagas: usize,
    /// Every N-th saga's charge is declined (non-retryable), so it compensates; 0: none.
    #[arg(long, default_value_t = 0)]
    pub fail_every: usize,
    /// Engine, workers and driver in this one process instead of separate processes.
    #[arg(long)]
    pub in_process: bool,
    /// Only the floor: the same four INSERTs per saga from this client, no engine.
    #[arg(long)]
    pub raw: bool,
    /// The real order saga through the five services instead of the bench activities.
    #[arg(long)]
    pub services: bool,
    /// Only the broker's floor: RabbitMQ's CPU per persistent, confirmed, acked message
    /// (`--sagas` × 4 messages per pattern), no engine and no database.
    #[arg(long)]
    pub broker_floor: bool,
    /// Skip the raw floor that follows every engine run.
    #[arg(long)]
    pub no_floor: bool,
    /// SIGKILL the engine once this many measured sagas are started and unfinished, restart it,
    /// and report how long until every saga in flight has moved again (child-process mode only).
    #[arg(long)]
    pub crash_at: Option<usize>,
    /// The `orderflow` binary that runs the engine (default: this one), to compare two engine
    /// builds under the same driver and workers.
    #[arg(long)]
    pub engine_bin: Option<std::path::PathBuf>,
    /// Concurrent tasks per activity in the workers.
    #[arg(long, default_value_t = 64)]
    pub worker_concurrency: usize,
    /// Postgres connections of the workers (and of the raw floor's client).
    #[arg(long, default_value_t = 16)]
    pub worker_pool: u32,
    /// Start requests in flight at once (HTTP connections to the engine).
    #[arg(long, default_value_t = 32)]
    pub http_connections: usize,
    /// Give up on a run (and fail) after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Keep the bench database and queues after the run, to look at them.
    #[arg(long)]
    pub keep: bool,
    /// Internal: run as the bench's worker process.
    #[arg(long, hide = true)]
    pub worker: bool,
}

/// Runs the benchmark; `Err` (and a non-zero exit) if it could not run or its check failed.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.worker {
        return stack::run_worker_process(&args).await;
    }
    if args.services && (args.in_process || args.raw || args.crash_at.is_some()) {
        bail!(
            "--services runs the engine as a process and the services here; it takes no --in-process, --raw or --crash-at"
        );
    }
    if args.concurrency == 0 || args.sagas == 0 {
        bail!("--sagas and --concurrency must be at least 1");
    }
    if args.broker_floor {
        broker_floor::print(&broker_floor::run(&args).await?);
        return Ok(());
    }
    if args.crash_at.is_some() && (args.in_process || args.raw) {
        bail!("--crash-at needs the engine in its own process (no --in-process, no --raw)");
    }
    let db = stack::BenchDb::create(&args.conn.database_url)
        .await
        .context("creating the bench database")?;
    let outcome = run_in(&args, &db).await;
    if args.services
        && !args.keep
        && let Err(e) = services::drop_all(&db).await
    {
        eprintln!("cleaning up the services' databases: {e:#}");
    }
    if args.keep {
        eprintln!("kept database {} and queue prefix {}", db.name, db.prefix);
    } else if let Err(e) = db.drop_all(&args.conn.amqp_url).await {
        eprintln!("cleaning up the bench database and queues: {e:#}");
    }
    let report = outcome?;
    report.print();
    if let Some(failure) = report.check.failure() {
        bail!("the check failed: {failure}");
    }
    Ok(())
}

async fn run_in(args: &BenchArgs, db: &stack::BenchDb) -> anyhow::Result<report::Report> {
    if args.raw {
        let floor = raw::run(db, args, true).await?;
        let checked = check::raw(db, args.warmup + args.sagas).await?;
        return Ok(report::Report::raw(args, floor, checked));
    }
    let ticks = measure::clock_ticks();
    let commits_before = measure::xact_commits(db).await?;
    let mut stack = stack::Stack::start(db, args).await?;
    let target = match stack.services() {
        Some(s) => driver::Target::Orders {
            base: s.order_url.clone(),
            token: s.customer_token.clone(),
        },
        None => driver::Target::Engine {
            base: stack.api_base(),
            // The bench starts sagas as a service would.
            token: orderflow_auth::engine::issue(
                &orderflow_auth::KeyRing::new(&db.jwt_secret),
                orderflow_auth::engine::EngineRole::Service,
                "bench",
                Duration::from_secs(args.timeout_secs.saturating_add(3600)),
            )?,
        },
    };
    let mut driver = driver::Driver::connect(db, args, target).await?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);

    let warmup = driver
        .run(args.warmup, 0, None, deadline, &mut stack)
        .await?;
    let before = measure::Snapshot::take(db, &stack, ticks).await?;
    let started = Instant::now();
    let measured = driver
        .run(args.sagas, args.warmup, args.crash_at, deadline, &mut stack)
        .await?;
    let elapsed = started.elapsed();
    let after = measure::Snapshot::take(db, &stack, ticks).await?;
    let mut low_load = Vec::new();
    let mut offset = args.warmup + args.sagas;
    for in_flight in LOW_LOAD_IN_FLIGHT {
        if args.low_load_sagas == 0 {
            break;
        }
        driver.set_concurrency(in_flight);
        let before = measure::Snapshot::take(db, &stack, ticks).await?;
        let started = Instant::now();
        let phase = driver
            .run(args.low_load_sagas, offset, None, deadline, &mut stack)
            .await?;
        let elapsed = started.elapsed();
        let after = measure::Snapshot::take(db, &stack, ticks).await?;
        offset += args.low_load_sagas;
        low_load.push(report::LowLoad {
            in_flight,
            elapsed,
            cpu: after.cpu_since(&before),
            phase,
        });
    }
    let engine_rss = stack.engine_peak_rss();
    driver.close().await;
    check::drained(db, Duration::from_secs(10)).await?;
    let services = stack.stop().await?;
    let commits_after = measure::xact_commits(db).await?;

    let sagas = offset;
    let checked = match services {
        Some(books) => {
            let declined = sagas.checked_div(args.fail_every).unwrap_or(0);
            books.check(db, sagas as i64, declined as i64).await?
        }
        None => check::engine(db, sagas, args.fail_every).await?,
    };
    let floor = if args.no_floor {
        None
    } else {
        Some(raw::run(db, args, false).await?)
    };
    Ok(report::Report::engine(report::EngineRun {
        args,
        warmup_sagas: warmup.latencies.len(),
        measured,
        elapsed,
        before,
        after,
        commits: commits_after.saturating_sub(commits_before),
        engine_rss,
        checked,
        floor,
        low_load,
    }))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn args(extra: &[&str]) -> BenchArgs {
        let db = format!("{}/postgres", orderflow_testkit::pg_server());
        let amqp = orderflow_testkit::amqp_url();
        let mut argv = vec![
            "bench",
            "--database-url",
            &db,
            "--amqp-url",
            &amqp,
            "--warmup",
            "5",
            "--concurrency",
            "8",
            "--worker-pool",
            "4",
        ];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).bench
    }

    /// A short in-process run with declined charges: every saga ends as its input asked, the
    /// check passes, and the figures are there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_in_process_run_checks_out() -> anyhow::Result<()> {
        let args = args(&[
            "--in-process",
            "--sagas",
            "40",
            "--fail-every",
            "10",
            "--low-load-sagas",
            "8",
        ]);
        let db = stack::BenchDb::create(&args.conn.database_url).await?;
        let report = run_in(&args, &db).await;
        db.drop_all(&args.conn.amqp_url).await?;
        let report = report?;
        assert_eq!(report.check.failure(), None);
        // 5 warm-up, 40 measured, 8 at 1 in flight and 8 at 8: every tenth is declined.
        assert_eq!((report.check.completed, report.check.compensated), (55, 6));
        let low_load = report.json["low_load"].as_array().expect("low-load runs");
        let in_flight: Vec<_> = low_load.iter().map(|l| l["in_flight"].clone()).collect();
        assert_eq!(in_flight, [1, 8]);
        for l in low_load {
            assert_eq!(l["sagas"], 8);
            assert!(l["cpu_s_per_saga"].as_f64().is_some_and(|c| c > 0.0), "{l}");
        }
        assert!(
            report.json["cpu_s_per_saga_all"]
                .as_f64()
                .is_some_and(|c| c > 0.0)
        );
        assert!(report.json["floor_ratio"].as_f64().is_some_and(|r| r > 0.0));
        assert!(report.json["sagas_per_s"].as_f64().is_some_and(|r| r > 0.0));
        assert!(
            report.json["pg_commits_per_saga"]
                .as_f64()
                .is_some_and(|c| c >= 4.0)
        );
        assert!(
            report.json["raw_floor"]["sagas_per_s"]
                .as_f64()
                .is_some_and(|r| r > 0.0)
        );
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_raw_floor_writes_four_rows_per_saga() -> anyhow::Result<()> {
        let args = args(&["--raw", "--sagas", "30"]);
        let db = stack::BenchDb::create(&args.conn.database_url).await?;
        let report = run_in(&args, &db).await;
        db.drop_all(&args.conn.amqp_url).await?;
        let report = report?;
        assert_eq!(report.check.failure(), None);
        assert!(
            report.json["pg_commits_per_saga"]
                .as_f64()
                .is_some_and(|c| c >= 4.0)
        );
        Ok(())
    }

    #[test]
    fn the_check_names_what_is_off() {
        let ok = check::Check {
            sagas: 20,
            completed: 18,
            compensated: 2,
            expected_compensated: 2,
            ..check::Check::default()
        };
        assert_eq!(ok.failure(), None);
        let lost = check::Check {
            completed: 17,
            other: 1,
            wrong_effects: 1,
            ..ok.clone()
        };
        let failure = lost.failure().expect("a failure");
        assert!(failure.contains("1 sagas not terminal"), "{failure}");
        assert!(failure.contains("1 sagas with wrong effects"), "{failure}");
    }
}
