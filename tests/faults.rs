//! Fault injection on the real system (issue 7): each scenario starts its own PostgreSQL,
//! RabbitMQ, Redis and SMTP server and the Stripe sandbox, runs the engine and the five services
//! as child processes of this build's `orderflow` binary, has customers place a few hundred
//! orders through the order service's REST API, injects its faults while those sagas run, and
//! then checks the books (`faults/books.rs`): every order ended as its saga did, Stripe kept
//! exactly the totals of the confirmed orders, every compensated charge was refunded once,
//! stock is conserved with nothing held, and each confirmed order got one email.
//!
//! The machine's shared Postgres, RabbitMQ and Redis are never touched. Scenarios run one at a
//! time (the `faults` test group in `.config/nextest.toml`). `FAULTS_SOAK=1` runs ten times the
//! orders and five times the fault rounds; `FAULTS_ORDERS=N` sets the orders.
//!
//! Modules: `infra` (the private servers), `system` (the processes), `shop` (the customers),
//! `relay` (a duplicating, reordering relay between the engine's queues and the workers'),
//! `books` (the checks), `scenario` (one run from start to books).

#[path = "faults/books.rs"]
mod books;
#[path = "faults/infra.rs"]
mod infra;
#[path = "faults/relay.rs"]
mod relay;
#[path = "faults/scenario.rs"]
mod scenario;
#[path = "faults/shop.rs"]
mod shop;
#[path = "faults/system.rs"]
mod system;

use std::time::Duration;

use orderflow_stripe_sandbox::Faults;
use scenario::run;
use system::{Options, Process, Service};

const ENGINE: Process = Process::Engine(0);
/// How soon every saga in flight moves again after the broker restarted: well under the
/// attempts' start-to-close timeout (30 s), which would otherwise be what moves them.
const MOVE_AGAIN_WITHIN: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_sigkill_at_random_moments() -> anyhow::Result<()> {
    run("engine_sigkill", Options::default(), async |ctx| {
        for _ in 0..ctx.rounds(4) {
            ctx.busy(20).await?;
            ctx.pause(0, 400).await;
            let in_flight = ctx.sys.sagas_in_flight().await?;
            ctx.sys.kill(ENGINE).await?;
            ctx.fault(format!("SIGKILL engine ({in_flight} sagas in flight)"));
            ctx.pause(100, 1000).await;
            ctx.sys.spawn(ENGINE).await?;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_sigkill_mid_activity() -> anyhow::Result<()> {
    run("worker_sigkill", Options::default(), async |ctx| {
        let victims = [
            Service::Payment,
            Service::Inventory,
            Service::Payment,
            Service::Notification,
            Service::Payment,
        ];
        for round in 0..ctx.rounds(victims.len()) {
            let victim = victims[round % victims.len()];
            ctx.busy(20).await?;
            if victim == Service::Payment {
                // Stripe takes the next charges but answers them late: the kill lands after
                // the money moved and before the worker could report it.
                let sandbox = ctx.sys.sandbox.sandbox.clone();
                let seen = sandbox.requests();
                sandbox.set_faults(Faults {
                    hang_requests: 4,
                    hang_ms: 3_000,
                    ..Faults::default()
                });
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                while sandbox.requests() < seen + 2 && std::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let charging = sandbox.requests() - seen;
                ctx.sys.kill(Process::Service(victim)).await?;
                sandbox.set_faults(Faults::default());
                ctx.fault(format!(
                    "SIGKILL payment with {charging} Stripe calls unanswered"
                ));
            } else {
                ctx.pause(0, 300).await;
                ctx.sys.kill(Process::Service(victim)).await?;
                ctx.fault(format!("SIGKILL {}", victim.name()));
            }
            ctx.pause(200, 800).await;
            ctx.sys.spawn(Process::Service(victim)).await?;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_one_killed() -> anyhow::Result<()> {
    let options = Options {
        engines: 2,
        ..Options::default()
    };
    run("two_engines", options, async |ctx| {
        ctx.busy(40).await?;
        ctx.pause(0, 500).await;
        let in_flight = ctx.sys.sagas_in_flight().await?;
        ctx.sys.kill(Process::Engine(1)).await?;
        ctx.fault(format!(
            "SIGKILL the second of two engines ({in_flight} sagas in flight); not restarted"
        ));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restarted_mid_run() -> anyhow::Result<()> {
    run("rabbitmq_restart", Options::default(), async |ctx| {
        for _ in 0..ctx.rounds(2) {
            ctx.busy(30).await?;
            ctx.pause(0, 500).await;
            let in_flight = ctx.sys.sagas_in_flight().await?;
            ctx.sys.mq.crash_restart(Duration::from_secs(1)).await?;
            ctx.fault(format!(
                "RabbitMQ SIGKILLed and booted again ({in_flight} sagas in flight)"
            ));
            // Task messages are transient: those the broker dropped are sent again as soon as
            // the engine is connected again, not when their attempts time out (30 s).
            let waiting = ctx.sys.positions().await?;
            let unmoved = ctx.sys.unmoved_after(&waiting, MOVE_AGAIN_WITHIN).await?;
            anyhow::ensure!(
                unmoved == 0,
                "{unmoved} of {} sagas did not move within {MOVE_AGAIN_WITHIN:?} of RabbitMQ \
                 coming back",
                waiting.len()
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_connections_dropped() -> anyhow::Result<()> {
    run("amqp_dropped", Options::default(), async |ctx| {
        for _ in 0..ctx.rounds(4) {
            ctx.busy(20).await?;
            ctx.pause(200, 1500).await;
            let n = ctx.sys.mq.close_all_connections().await?;
            ctx.fault(format!("closed all {n} AMQP connections"));
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_run() -> anyhow::Result<()> {
    run("postgres_restart", Options::default(), async |ctx| {
        for _ in 0..ctx.rounds(2) {
            ctx.busy(30).await?;
            ctx.pause(0, 500).await;
            let in_flight = ctx.sys.sagas_in_flight().await?;
            ctx.sys.pg.crash_restart(Duration::from_secs(1)).await?;
            ctx.fault(format!(
                "Postgres stopped -m immediate and started ({in_flight} sagas in flight)"
            ));
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted() -> anyhow::Result<()> {
    run("redis_restart", Options::default(), async |ctx| {
        for _ in 0..ctx.rounds(2) {
            ctx.busy(30).await?;
            ctx.pause(0, 500).await;
            ctx.sys
                .redis
                .crash_restart(Duration::from_millis(500))
                .await?;
            ctx.fault("Redis SIGKILLed and started empty");
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_answers_500s_and_hangs() -> anyhow::Result<()> {
    run("stripe_faults", Options::default(), async |ctx| {
        let sandbox = ctx.sys.sandbox.sandbox.clone();
        for _ in 0..ctx.rounds(1) {
            ctx.busy(30).await?;
            sandbox.set_faults(Faults {
                fail_requests: 40,
                ..Faults::default()
            });
            ctx.fault("Stripe answers the next 40 requests with 500");
            ctx.pause(2000, 4000).await;
            sandbox.set_faults(Faults {
                hang_requests: 8,
                hang_ms: 12_000,
                ..Faults::default()
            });
            ctx.fault("Stripe answers the next 8 requests after 12 s (past the client's 10 s)");
            ctx.pause(2000, 4000).await;
            // The outage ends here. Left counted in requests, it would last as long as the
            // breaker takes to spend them on its half-open trials, one every 30 s or more.
            sandbox.set_faults(Faults::default());
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_twice_and_out_of_order() -> anyhow::Result<()> {
    let options = Options {
        engine_queue_prefix: relay::UPSTREAM.to_owned(),
        ..Options::default()
    };
    run("duplicated_messages", options, async |ctx| {
        let counts = relay::start(&ctx.sys.mq.url(), &mut ctx.guards).await?;
        ctx.fault("every task delivered twice, every result twice and out of order (relay)");
        ctx.notes.push(Box::new(move || counts.summary()));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered() -> anyhow::Result<()> {
    run("poison", Options::default(), async |ctx| {
        ctx.busy(20).await?;
        let poisoned = relay::poison(&ctx.sys.mq.url()).await?;
        ctx.fault(format!(
            "{poisoned} undecodable tasks published to the task queues"
        ));
        let dead = relay::dead_letters(&ctx.sys.mq.url(), poisoned).await?;
        ctx.fault(format!("{dead} of them in the dead-letter queue"));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_due_while_no_engine_runs() -> anyhow::Result<()> {
    run("timer_without_engine", Options::default(), async |ctx| {
        for _ in 0..ctx.rounds(1) {
            ctx.busy(30).await?;
            // Failed charges wait on durable backoff timers.
            ctx.sys.sandbox.sandbox.set_faults(Faults {
                fail_requests: 30,
                ..Faults::default()
            });
            let timers = ctx.sys.engine_db.clone();
            orderflow_testkit::eventually(Duration::from_secs(30), "backoff timers", || async {
                let n: i64 = sqlx::query_scalar(
                    "select count(*) from timers where purpose::text like '%retry%'
                                                    or purpose::text like '%backoff%'",
                )
                .fetch_one(&timers)
                .await?;
                Ok((n > 0).then_some(()))
            })
            .await
            .ok();
            ctx.sys.kill(ENGINE).await?;
            // Stripe is back: an outage counted in requests would last as long as the breaker
            // takes to spend them, one half-open trial every 30 s.
            ctx.sys.sandbox.sandbox.set_faults(Faults::default());
            tokio::time::sleep(Duration::from_secs(3)).await;
            let overdue: i64 =
                sqlx::query_scalar("select count(*) from timers where fire_at < now()")
                    .fetch_one(&ctx.sys.engine_db)
                    .await?;
            anyhow::ensure!(overdue > 0, "no timer came due while the engine was down");
            ctx.fault(format!(
                "engine SIGKILLed; {overdue} timers came due while no engine ran"
            ));
            ctx.sys.spawn(ENGINE).await?;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_clock_ahead() -> anyhow::Result<()> {
    let options = Options {
        clock_ahead: Some((ENGINE, "+20s".into())),
        ..Options::default()
    };
    run("clock_ahead", options, async |ctx| {
        ctx.fault("the engine's wall clock runs 20 s ahead of every other process (libfaketime)");
        ctx.busy(20).await?;
        ctx.sys.kill(ENGINE).await?;
        ctx.sys.spawn(ENGINE).await?;
        ctx.fault("SIGKILL of the engine that is ahead, restarted");
        Ok(())
    })
    .await
}
