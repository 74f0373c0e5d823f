//! `orderflow history export` and `orderflow replay` as an operator runs them on sagas the stack
//! ran: the engine is this crate's binary (`orderflow engine`) on a fresh Postgres database and
//! RabbitMQ queue prefix, running the production definitions; recording activities do the steps.
//! A completed and a compensated saga are exported and replay against this build; a history
//! whose recorded commands were tampered with fails replay with a message naming the event.

use std::{path::Path, process::Stdio, sync::Arc, time::Duration};

use anyhow::Context;
use orderflow_activities::worker::Worker;
use orderflow_core::{Command, History};
use orderflow_testkit::{TestEnv, amqp_url, recording, recording::Fault, settled, start_order};
use orderflow_workflows::order::contracts::PAYMENT_CHARGE;
use tokio::process::{Child, Command as Process};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(60);

fn spawn_engine(env: &TestEnv) -> Child {
    Process::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(["engine", "--bind", "127.0.0.1:0"])
        .env("DATABASE_URL", &env.database_url)
        .env("AMQP_URL", amqp_url())
        .env("ORDERFLOW_QUEUE_PREFIX", &env.topology.prefix)
        .env("ORDERFLOW_JWT_SECRET", orderflow_testkit::API_SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the orderflow binary starts")
}

fn spawn_workers(env: &TestEnv) -> CancellationToken {
    let worker = Worker::builder(env.queue())
        .handlers(recording::order_saga_handlers(env.pool.clone()), 8)
        .build();
    let stop = CancellationToken::new();
    tokio::spawn(worker.run(stop.clone().cancelled_owned()));
    stop
}

/// What one run of the binary printed and how it ended.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `orderflow ARGS` with no database in its environment: what it reads is on its flags.
async fn orderflow(args: &[&str]) -> anyhow::Result<Run> {
    let out = Process::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await
        .context("running the orderflow binary")?;
    Ok(Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

async fn export(env: &TestEnv, id: Uuid) -> anyhow::Result<String> {
    let id = id.to_string();
    let run = orderflow(&[
        "history",
        "export",
        &id,
        "--database-url",
        &env.database_url,
    ])
    .await?;
    anyhow::ensure!(run.ok, "history export failed: {}", run.stderr);
    Ok(run.stdout)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_histories_replay_and_a_tampered_one_fails_naming_the_event() -> anyhow::Result<()>
{
    let env = TestEnv::new().await?;
    let registry = Arc::new(orderflow_workflows::registry());
    let applier = env.applier(registry);
    let completed = start_order(&env, &applier).await?;
    let declined = start_order(&env, &applier).await?;
    recording::inject(
        &env.pool,
        &Fault::permanent(PAYMENT_CHARGE, "card_declined").for_workflow(declined),
    )
    .await?;
    // The engine starts after the fault is in place; it picks up the sagas' first tasks from
    // the outbox as a restarted engine does.
    let _engine = spawn_engine(&env);
    let _workers = spawn_workers(&env).drop_guard();
    assert_eq!(settled(&env, completed, WITHIN).await?, "completed");
    assert_eq!(settled(&env, declined, WITHIN).await?, "compensated");

    let dir = std::env::temp_dir().join(format!("orderflow-history-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let mut files = Vec::new();
    for id in [completed, declined] {
        let text = export(&env, id).await?;
        let history: History = serde_json::from_str(&text).context("the replay format")?;
        assert_eq!(history.workflow_id.0, id);
        assert_eq!(
            (history.workflow_type.as_str(), history.version),
            ("order", 3),
            "new orders start on the production registry's pinned version"
        );
        let (stored,): (i64,) =
            sqlx::query_as("select count(*) from history where workflow_id = $1")
                .bind(id)
                .fetch_one(&env.pool)
                .await?;
        assert_eq!(history.events.len() as i64, stored, "every recorded event");
        assert_eq!(history.events[0].event.kind(), "workflow_started");
        let file = dir.join(format!("{id}.json"));
        std::fs::write(&file, text)?;
        files.push(file);
    }

    let replayed = orderflow(&["replay", path(&files[0]), path(&files[1])]).await?;
    assert!(replayed.ok, "{}{}", replayed.stdout, replayed.stderr);
    assert!(
        replayed
            .stdout
            .contains(&format!("ok    {} (completed)", path(&files[0]))),
        "{}",
        replayed.stdout
    );
    assert!(
        replayed
            .stdout
            .contains(&format!("ok    {} (compensated)", path(&files[1]))),
        "{}",
        replayed.stdout
    );

    // The recorded commands say the completed reservation scheduled another activity than
    // today's definition does: the history is not what this build would have decided.
    let mut tampered: History = serde_json::from_str(&std::fs::read_to_string(&files[0])?)?;
    let event = tampered
        .events
        .iter_mut()
        .find(|e| {
            e.commands
                .iter()
                .any(|c| matches!(c, Command::ScheduleActivity(t) if t.activity == PAYMENT_CHARGE))
        })
        .context("an event that scheduled the charge")?;
    let (seq, kind) = (event.seq, event.event.kind());
    for c in &mut event.commands {
        if let Command::ScheduleActivity(t) = c {
            t.activity = "payment.charge_v0".into();
        }
    }
    let bad = dir.join("tampered.json");
    std::fs::write(&bad, serde_json::to_string_pretty(&tampered)?)?;
    let failed = orderflow(&["replay", path(&files[1]), path(&bad)]).await?;
    assert!(
        !failed.ok,
        "a tampered history must not replay: {}",
        failed.stdout
    );
    assert!(
        failed
            .stdout
            .contains(&format!("ok    {} (compensated)", path(&files[1]))),
        "the good one still replays: {}",
        failed.stdout
    );
    let line = failed
        .stdout
        .lines()
        .find(|l| l.starts_with("FAIL"))
        .with_context(|| format!("a FAIL line: {}", failed.stdout))?;
    assert!(line.contains(path(&bad)), "{line}");
    assert!(
        line.contains(&format!("at event {seq} ({kind})")),
        "the message names the event: {line}"
    );
    assert!(
        line.contains("payment.charge_v0"),
        "and what was recorded: {line}"
    );
    assert!(
        failed.stderr.contains("1 of 2 histories do not replay"),
        "{}",
        failed.stderr
    );

    // Mistakes are refused naming what is wrong.
    let url = env.database_url.as_str();
    let not_an_id = orderflow(&["history", "export", "42", "--database-url", url]).await?;
    assert!(!not_an_id.ok);
    assert!(
        not_an_id.stderr.contains("ID: `42` is not a workflow id"),
        "{}",
        not_an_id.stderr
    );
    let unknown = Uuid::now_v7().to_string();
    let missing = orderflow(&["history", "export", &unknown, "--database-url", url]).await?;
    assert!(!missing.ok);
    assert!(
        missing
            .stderr
            .contains(&format!("ID: no workflow {unknown}")),
        "{}",
        missing.stderr
    );
    let not_json = dir.join("not-a-history.json");
    std::fs::write(&not_json, "{\"hello\": 1}")?;
    let unreadable = orderflow(&["replay", path(&not_json)]).await?;
    assert!(!unreadable.ok);
    assert!(
        unreadable
            .stdout
            .contains("not a history in the replay format"),
        "{}",
        unreadable.stdout
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
