//! Where the figures come from: CPU time and peak memory of each process from `/proc`, Postgres
//! commits from `pg_stat_database`, broker messages from the engine's own counters.

use std::collections::HashMap;

use anyhow::Context;
use sqlx::Connection;

use super::stack::{BenchDb, Stack};

/// Kernel clock ticks per second, the unit of `/proc/<pid>/stat` times.
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User plus system CPU seconds a process has used so far.
pub fn cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; every later field follows its closing paren.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// Peak resident set size (`VmHWM`) in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The RabbitMQ server (the Erlang VM), found by its command name. Test suites may run private
/// brokers beside the shared one; the shared one is the one started first (the earliest start
/// time, field 22 of `/proc/<pid>/stat`).
fn broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "beam.smp")
        })
        .filter_map(|pid| Some((start_time(pid)?, pid)))
        .min()
        .map(|(_, pid)| pid)
}

/// When a process started, in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name start at field 3, so field 22 is the 20th.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// CPU seconds RabbitMQ has used so far (0 if it is not found on this machine).
pub fn broker_cpu(ticks: f64) -> f64 {
    broker_pid()
        .and_then(|pid| cpu_seconds(pid, ticks))
        .unwrap_or(0.0)
}

/// Commits counted for the bench database (and with `--services` the services' databases,
/// named after it) so far. Backends report their counts lazily (at most
/// once a second while busy, and when they exit), so the bench calls this only after closing
/// every other connection to the database, and this waits for those backends to be gone.
pub async fn xact_commits(db: &BenchDb) -> anyhow::Result<u64> {
    let mut conn = sqlx::PgConnection::connect(&db.url).await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (others,): (i64,) = sqlx::query_as(
            "select count(*) from pg_stat_activity where (datname = $1 or datname like $1 || '\\_%') and pid <> pg_backend_pid()",
        )
        .bind(&db.name)
        .fetch_one(&mut conn)
        .await?;
        if others == 0 || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (n,): (i64,) =
        sqlx::query_as("select sum(xact_commit)::int8 from pg_stat_database where datname = $1 or datname like $1 || '\\_%'")
            .bind(&db.name)
            .fetch_one(&mut conn)
            .await?;
    conn.close().await?;
    Ok(n as u64)
}

/// CPU seconds of each Postgres backend connected to the bench database (or a service's
/// database of the run), by pid.
pub async fn backend_cpu(db: &BenchDb, ticks: f64) -> anyhow::Result<HashMap<u32, f64>> {
    let mut conn = sqlx::PgConnection::connect(&db.url).await?;
    let pids: Vec<(i32,)> = sqlx::query_as(
        "select pid from pg_stat_activity where (datname = $1 or datname like $1 || '\\_%') and pid <> pg_backend_pid()",
    )
    .bind(&db.name)
    .fetch_all(&mut conn)
    .await?;
    conn.close().await?;
    Ok(pids
        .into_iter()
        .filter_map(|(pid,)| {
            let pid = pid as u32;
            Some((pid, cpu_seconds(pid, ticks)?))
        })
        .collect())
}

/// CPU used by the backends between two readings; backends that connected in between count
/// from zero.
pub fn backend_delta(before: &HashMap<u32, f64>, after: &HashMap<u32, f64>) -> f64 {
    after
        .iter()
        .map(|(pid, s)| s - before.get(pid).copied().unwrap_or(0.0))
        .sum()
}

/// Everything read at the start and at the end of the measured phase.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub engine_cpu: f64,
    pub workers_cpu: f64,
    pub driver_cpu: f64,
    pub broker_cpu: f64,
    /// The engine, workers, driver and broker together, each process once (in-process runs
    /// are one process).
    pub processes_cpu: f64,
    pub backends: HashMap<u32, f64>,
    pub tasks_published: f64,
    pub results_applied: f64,
}

impl Snapshot {
    pub async fn take(db: &BenchDb, stack: &Stack, ticks: f64) -> anyhow::Result<Self> {
        let (engine, workers) = stack.pids();
        let cpu = |pid: Option<u32>| pid.and_then(|p| cpu_seconds(p, ticks)).unwrap_or(0.0);
        let metrics = reqwest::get(format!("{}/metrics", stack.api_base()))
            .await?
            .text()
            .await
            .context("reading the engine's /metrics")?;
        let mut pids = vec![engine, workers, Some(std::process::id()), broker_pid()];
        pids.sort();
        pids.dedup();
        Ok(Self {
            processes_cpu: pids.into_iter().map(cpu).sum(),
            engine_cpu: cpu(engine),
            workers_cpu: cpu(workers),
            driver_cpu: cpu(Some(std::process::id())),
            broker_cpu: cpu(broker_pid()),
            backends: backend_cpu(db, ticks).await?,
            tasks_published: counter(&metrics, "orderflow_tasks_published_total"),
            results_applied: counter(&metrics, "orderflow_results_applied_total"),
        })
    }
}

impl Snapshot {
    /// CPU seconds every process of the run used since `before`: engine, workers, driver (and
    /// with `--services` the services), RabbitMQ and the Postgres backends.
    pub fn cpu_since(&self, before: &Snapshot) -> f64 {
        (self.processes_cpu - before.processes_cpu)
            + backend_delta(&before.backends, &self.backends)
    }
}

/// The value of an unlabelled counter in Prometheus text format (0 if absent).
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let ticks = clock_ticks();
        assert!(ticks > 0.0);
        assert!(cpu_seconds(std::process::id(), ticks).is_some());
        assert!(peak_rss(std::process::id()).is_some_and(|b| b > 0));
    }

    #[test]
    fn parses_counters() {
        let text = "# HELP x\norderflow_tasks_published_total 42\norderflow_tasks_published_total_other 1\n";
        assert_eq!(counter(text, "orderflow_tasks_published_total"), 42.0);
        assert_eq!(counter(text, "missing"), 0.0);
    }
}
