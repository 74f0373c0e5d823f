//! `orderflow worker` refuses what it cannot run before it connects to anything. (A worker
//! running the payment service's handlers, with its `/health`, `/ready` and `/metrics`, is
//! `payment_crash.rs`.)

use std::process::Output;

async fn worker(args: &[&str]) -> anyhow::Result<Output> {
    Ok(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .arg("worker")
            .args(args)
            // Nothing to reach: it must fail on the flags alone.
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("AMQP_URL", "amqp://nobody:nothing@127.0.0.1:1/%2f")
            .env("ORDERFLOW_HEALTH_BIND", "127.0.0.1:0")
            .kill_on_drop(true)
            .output()
            .await?,
    )
}

#[tokio::test]
async fn an_unknown_queue_is_refused_naming_it() -> anyhow::Result<()> {
    let out = worker(&["--queues", "payment.charge,payment.chrage"]).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("`payment.chrage` is not an activity this build knows"),
        "{stderr}"
    );
    Ok(())
}

/// Order saga v2's fraud screen is an activity of a deployed definition, but no service of this
/// build implements it: a worker outside the build serves it, and the flag says so.
#[tokio::test]
async fn an_activity_no_service_implements_is_refused_saying_so() -> anyhow::Result<()> {
    let out = worker(&["--queues", "fraud.check"]).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "--queues: `fraud.check` is an activity of a deployed workflow, but no \
             service of this build implements it"
        ),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn one_service_database_for_two_services_is_refused() -> anyhow::Result<()> {
    let out = worker(&[
        "--queues",
        "inventory.reserve,order.create",
        "--service-database-url",
        "postgres://nobody@127.0.0.1:1/orderflow_inventory",
    ])
    .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--service-database-url"), "{stderr}");
    Ok(())
}
