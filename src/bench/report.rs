//! The figures of a run: a few lines for people, then one JSON object on the last line for
//! scripts (`orderflow bench | tail -1 | jq .sagas_per_s`).

use std::time::Duration;

use serde_json::{Value, json};

use super::{BenchArgs, check::Check, driver::Phase, measure::Snapshot, raw::Floor};

/// p50, p90, p99 and max, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(latencies: &[Duration]) -> Self {
        let mut ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        // Nearest rank: the smallest value with at least q of the samples at or below it.
        let at = |q: f64| {
            if ms.is_empty() {
                return 0.0;
            }
            let rank = ((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len());
            ms[rank - 1]
        };
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: ms.last().copied().unwrap_or(0.0),
        }
    }

    fn json(&self) -> Value {
        json!({ "p50": r1(self.p50), "p90": r1(self.p90), "p99": r1(self.p99), "max": r1(self.max) })
    }
}

/// A run at low load after the measured one.
#[derive(Debug)]
pub struct LowLoad {
    pub in_flight: usize,
    pub elapsed: Duration,
    /// CPU seconds of every process, the Postgres backends included.
    pub cpu: f64,
    pub phase: Phase,
}

impl LowLoad {
    fn json(&self) -> Value {
        let n = self.phase.latencies.len().max(1) as f64;
        json!({
            "in_flight": self.in_flight,
            "sagas": self.phase.latencies.len(),
            "sagas_per_s": r1(n / self.elapsed.as_secs_f64()),
            "latency_ms": Percentiles::of(&self.phase.latencies).json(),
            "cpu_s_per_saga": r6(self.cpu / n),
        })
    }

    fn line(&self) -> String {
        let n = self.phase.latencies.len().max(1) as f64;
        let lat = Percentiles::of(&self.phase.latencies);
        format!(
            "at {} in flight: {:.1} sagas/s, p50 {:.1} ms, p99 {:.1} ms, CPU {:.2} ms/saga (all processes)",
            self.in_flight,
            n / self.elapsed.as_secs_f64(),
            lat.p50,
            lat.p99,
            self.cpu / n * 1e3
        )
    }
}

/// Everything an engine run produced.
#[derive(Debug)]
pub struct EngineRun<'a> {
    pub args: &'a BenchArgs,
    pub warmup_sagas: usize,
    pub measured: Phase,
    pub elapsed: Duration,
    pub before: Snapshot,
    pub after: Snapshot,
    /// Commits of the whole run, warm-up included.
    pub commits: u64,
    pub engine_rss: Option<u64>,
    pub checked: Check,
    pub floor: Option<Floor>,
    pub low_load: Vec<LowLoad>,
}

/// A finished run, ready to print.
#[derive(Debug)]
pub struct Report {
    pub check: Check,
    pub json: Value,
    lines: Vec<String>,
}

impl Report {
    pub fn engine(run: EngineRun<'_>) -> Self {
        let args = run.args;
        let n = run.measured.latencies.len().max(1) as f64;
        let rate = n / run.elapsed.as_secs_f64();
        let lat = Percentiles::of(&run.measured.latencies);
        let (b, a) = (&run.before, &run.after);
        let per = |x: f64| x / n;
        let broker =
            per((a.tasks_published - b.tasks_published) + (a.results_applied - b.results_applied));
        let all_sagas = (run.warmup_sagas + run.measured.latencies.len()).max(1) as f64;
        let commits = run.commits as f64 / all_sagas;
        let postgres_cpu = per(super::measure::backend_delta(&b.backends, &a.backends));
        let mode = if args.in_process {
            "in-process"
        } else if args.services {
            "services"
        } else {
            "processes"
        };
        let mut cpu = serde_json::Map::new();
        if args.in_process {
            cpu.insert("orderflow".into(), r6(per(a.engine_cpu - b.engine_cpu)));
        } else if args.services {
            // The five services and their workers run in the driver's process.
            cpu.insert("engine".into(), r6(per(a.engine_cpu - b.engine_cpu)));
            cpu.insert(
                "services+driver".into(),
                r6(per(a.driver_cpu - b.driver_cpu)),
            );
        } else {
            cpu.insert("engine".into(), r6(per(a.engine_cpu - b.engine_cpu)));
            cpu.insert("workers".into(), r6(per(a.workers_cpu - b.workers_cpu)));
            cpu.insert("driver".into(), r6(per(a.driver_cpu - b.driver_cpu)));
        }
        cpu.insert("postgres".into(), r6(postgres_cpu));
        cpu.insert("rabbitmq".into(), r6(per(a.broker_cpu - b.broker_cpu)));
        let all_cpu = per(a.cpu_since(b));
        let mut check = run.checked;
        check.wrong_status = run.measured.wrong_status.len()
            + run
                .low_load
                .iter()
                .map(|l| l.phase.wrong_status.len())
                .sum::<usize>();
        let floor_ratio = run.floor.as_ref().map(|f| {
            let floor_rate = f.latencies.len() as f64 / f.elapsed.as_secs_f64();
            rate / floor_rate
        });
        let floor = run.floor.as_ref().map(floor_json);
        let mut json = json!({
            "mode": mode,
            "sagas": run.measured.latencies.len(),
            "concurrency": args.concurrency,
            "fail_every": args.fail_every,
            "elapsed_s": r3(run.elapsed.as_secs_f64()),
            "sagas_per_s": r1(rate),
            "latency_ms": lat.json(),
            "pg_commits_per_saga": r2(commits),
            "broker_messages_per_saga": r2(broker),
            "cpu_s_per_saga": Value::Object(cpu.clone()),
            "cpu_s_per_saga_all": r6(all_cpu),
            "floor_ratio": floor_ratio.map(r3),
            "low_load": run.low_load.iter().map(LowLoad::json).collect::<Vec<_>>(),
            "engine_peak_rss_mb": run.engine_rss.map(|b| r1(b as f64 / (1024.0 * 1024.0))),
            "check": check.failure().unwrap_or_else(|| "ok".into()),
            "raw_floor": floor,
        });
        let mut lines = vec![
            format!(
                "{} sagas ({mode}, {} in flight, fail every {}) in {:.2} s: {:.1} sagas/s",
                run.measured.latencies.len(),
                args.concurrency,
                args.fail_every,
                run.elapsed.as_secs_f64(),
                rate
            ),
            format!(
                "latency start->finish: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                lat.p50, lat.p90, lat.p99, lat.max
            ),
            format!(
                "per saga: {commits:.2} Postgres commits, {broker:.2} broker messages, CPU {:.2} ms \
                 ({})",
                all_cpu * 1e3,
                cpu.iter()
                    .map(|(k, v)| format!("{k} {:.2} ms", v.as_f64().unwrap_or(0.0) * 1e3))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ];
        if let Some(rss) = run.engine_rss {
            lines.push(format!(
                "engine peak RSS: {:.1} MB",
                rss as f64 / (1024.0 * 1024.0)
            ));
        }
        if let Some(crash) = run.measured.crash {
            let s = crash.moving_again_after.as_secs_f64();
            lines.push(format!(
                "engine SIGKILLed with {} sagas in flight: all moving again {s:.2} s after restart",
                crash.in_flight
            ));
            json["crash"] = json!({ "in_flight": crash.in_flight, "moving_again_s": r3(s) });
        }
        lines.extend(run.low_load.iter().map(LowLoad::line));
        if let Some(f) = &run.floor {
            lines.push(floor_line(f));
        }
        if let Some(ratio) = floor_ratio {
            lines.push(format!("engine / raw floor: {ratio:.3}"));
        }
        lines.push(match check.failure() {
            None => format!(
                "check ok: {} completed, {} compensated, each effect exactly once",
                check.completed, check.compensated
            ),
            Some(f) => format!("CHECK FAILED: {f}"),
        });
        Self { check, json, lines }
    }

    pub fn raw(args: &BenchArgs, floor: Floor, check: Check) -> Self {
        let mut json = floor_json(&floor);
        json["mode"] = json!("raw");
        json["concurrency"] = json!(args.concurrency);
        json["check"] = json!(check.failure().unwrap_or_else(|| "ok".into()));
        let lines = vec![floor_line(&floor)];
        Self { check, json, lines }
    }

    pub fn print(&self) {
        for l in &self.lines {
            println!("{l}");
        }
        println!("{}", self.json);
    }
}

fn floor_json(f: &Floor) -> Value {
    let n = f.latencies.len().max(1) as f64;
    json!({
        "sagas": f.latencies.len(),
        "elapsed_s": r3(f.elapsed.as_secs_f64()),
        "sagas_per_s": r1(n / f.elapsed.as_secs_f64()),
        "latency_ms": Percentiles::of(&f.latencies).json(),
        "pg_commits_per_saga": r2(f.commits as f64 / n),
        "cpu_s_per_saga": {
            "client": r6(f.client_cpu / n),
            "postgres": r6(f.postgres_cpu / n),
        },
    })
}

fn floor_line(f: &Floor) -> String {
    let n = f.latencies.len().max(1) as f64;
    let lat = Percentiles::of(&f.latencies);
    format!(
        "raw floor (same 4 INSERTs, no engine): {:.1} sagas/s, p50 {:.1} ms, p99 {:.1} ms, \
         {:.2} commits/saga",
        n / f.elapsed.as_secs_f64(),
        lat.p50,
        lat.p99,
        f.commits as f64 / n
    )
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
fn r6(x: f64) -> Value {
    json!((x * 1e6).round() / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let lat: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(&lat);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(&[]).max, 0.0);
    }
}
