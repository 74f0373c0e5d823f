//! Schemathesis against each API's OpenAPI document, on the real stack: the engine and the five
//! services run as `orderflow engine` and `orderflow service NAME` processes of this build, on
//! their own databases and queue prefix, with the real Redis and RabbitMQ. The test logs in as
//! the seeded admin through the user API and runs `schemathesis run` on each document with that
//! token, a fixed seed and a bounded number of examples per operation. The checks: no 5xx
//! (`not_a_server_error`), every response matches the schema documented for its status
//! (`response_schema_conformance`, with problem+json documented for every error) and its
//! content type (`content_type_conformance`). Any failure fails the test with Schemathesis's
//! report.
//!
//! Schemathesis comes from PyPI into `target/security-venv` (`scripts/security-tools.sh`, which
//! `scripts/test.sh` runs); `ORDERFLOW_SCHEMATHESIS` points elsewhere. `SCHEMATHESIS_EXAMPLES`
//! raises the examples per operation for a longer manual run.

use std::{net::TcpListener, path::PathBuf, process::Stdio, time::Duration};

use anyhow::Context as _;
use orderflow_testkit::{TestEnv, amqp_url, eventually, pg_server};
use tokio::process::{Child, Command};
use uuid::Uuid;

const JWT_SECRET: &str = "schemathesis-suite-token-key-0123456789abcdef";
const ADMIN_EMAIL: &str = "admin@schemathesis.test";
const ADMIN_PASSWORD: &str = "schemathesis admin password";
/// Examples per operation in the fuzzing phase in CI (the coverage phase adds its own boundary
/// and negative cases): few enough for the whole run to stay within about three minutes on two
/// busy cores.
const EXAMPLES: u32 = 10;
/// One seed, so a failure found in CI is the same failure on a developer's machine.
const SEED: u64 = 20_261_125;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn schemathesis() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("ORDERFLOW_SCHEMATHESIS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/security-venv/bin/schemathesis"),
        PathBuf::from,
    );
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run scripts/security-tools.sh (scripts/test.sh does)",
        path.display()
    );
    Ok(path)
}

/// The stack's processes; killed when dropped.
struct Stack {
    apis: Vec<(&'static str, String)>,
    _children: Vec<Child>,
    log_dir: PathBuf,
}

impl Stack {
    async fn start(env: &TestEnv) -> anyhow::Result<Self> {
        let log_dir = std::env::temp_dir().join(format!(
            "orderflow-schemathesis-{}",
            Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&log_dir)?;
        let engine_port = free_port();
        let services: Vec<(&'static str, u16)> =
            ["user", "inventory", "payment", "notification", "order"]
                .into_iter()
                .map(|s| (s, free_port()))
                .collect();
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let port_of = |name: &str| {
            services
                .iter()
                .find(|(s, _)| *s == name)
                .map(|(_, p)| *p)
                .unwrap_or(0)
        };
        let common = |cmd: &mut Command, name: &str| -> anyhow::Result<()> {
            let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
            cmd.env("DATABASE_URL", &env.database_url)
                .env("AMQP_URL", amqp_url())
                .env("ORDERFLOW_QUEUE_PREFIX", &env.topology.prefix)
                .env("ORDERFLOW_JWT_SECRET", JWT_SECRET)
                .env("ORDERFLOW_ENGINE_URL", url(engine_port))
                .env("ORDERFLOW_INVENTORY_URL", url(port_of("inventory")))
                .env("ORDERFLOW_USER_URL", url(port_of("user")))
                .env("ORDERFLOW_ADMIN_EMAIL", ADMIN_EMAIL)
                .env("ORDERFLOW_ADMIN_PASSWORD", ADMIN_PASSWORD)
                .env("ORDERFLOW_WORKER_CONCURRENCY", "4")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true);
            Ok(())
        };
        let mut children = Vec::new();
        let mut engine = Command::new(env!("CARGO_BIN_EXE_orderflow"));
        engine.args(["engine", "--bind", &format!("127.0.0.1:{engine_port}")]);
        common(&mut engine, "engine")?;
        children.push(engine.spawn().context("starting orderflow engine")?);
        for (name, port) in &services {
            let db = orderflow_service_kit::db::with_database(
                &pg_server(),
                &format!("orderflow_{name}_test_{}", Uuid::new_v4().simple()),
            )?;
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_orderflow"));
            cmd.args(["service", name, "--bind", &format!("127.0.0.1:{port}")])
                .args(["--service-database-url", &db]);
            common(&mut cmd, name)?;
            children.push(
                cmd.spawn()
                    .with_context(|| format!("starting orderflow service {name}"))?,
            );
        }
        let mut apis = vec![("engine", url(engine_port))];
        apis.extend(services.iter().map(|(n, p)| (*n, url(*p))));
        let http = reqwest::Client::new();
        for (name, base) in &apis {
            eventually(
                Duration::from_secs(90),
                &format!("{name} to be ready"),
                || {
                    let ready = http.get(format!("{base}/ready")).send();
                    async move {
                        Ok(ready
                            .await
                            .ok()
                            .filter(|r| r.status().is_success())
                            .map(|_| ()))
                    }
                },
            )
            .await
            .with_context(|| {
                format!(
                    "{name}'s log: {}",
                    log_dir.join(format!("{name}.log")).display()
                )
            })?;
        }
        Ok(Self {
            apis,
            _children: children,
            log_dir,
        })
    }

    fn url(&self, name: &str) -> &str {
        self.apis
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, u)| u.as_str())
            .unwrap_or_default()
    }
}

/// What one run reported, from its summary: the operations line and the test-case counts.
#[derive(Debug, Default)]
struct Figures {
    operations: String,
    test_cases: String,
}

fn figures(out: &str) -> Figures {
    let mut f = Figures::default();
    let mut lines = out.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if let Some(ops) = line.strip_prefix("Operations:") {
            f.operations = ops.trim().to_owned();
        } else if line == "Test cases:" {
            f.test_cases = lines.next().unwrap_or_default().to_owned();
        }
    }
    f
}

#[tokio::test]
async fn every_api_conforms_to_its_openapi_document() -> anyhow::Result<()> {
    let schemathesis = schemathesis()?;
    let env = TestEnv::new().await?;
    let stack = Stack::start(&env).await?;

    let login = reqwest::Client::new()
        .post(format!("{}/api/v1/auth/login", stack.url("user")))
        .json(&serde_json::json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await?;
    anyhow::ensure!(
        login.status().is_success(),
        "admin login: {}",
        login.text().await?
    );
    let token = login.json::<serde_json::Value>().await?["access_token"]
        .as_str()
        .context("no access token")?
        .to_owned();

    let examples: u32 = std::env::var("SCHEMATHESIS_EXAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(EXAMPLES);
    // The engine API is called as an operator; the services as the shop's admin.
    let operator = orderflow_auth::engine::issue(
        &orderflow_auth::KeyRing::new(JWT_SECRET),
        orderflow_auth::engine::EngineRole::Operator,
        "schemathesis",
        Duration::from_secs(3600),
    )?;
    let bearer = |name: &str| if name == "engine" { &operator } else { &token };
    let mut failed = Vec::new();
    for (name, base) in &stack.apis {
        let started = std::time::Instant::now();
        let out = Command::new(&schemathesis)
            .arg("run")
            .arg(format!("{base}/api/v1/openapi.json"))
            .args(["--url", base])
            .args([
                "--checks",
                "not_a_server_error,response_schema_conformance,content_type_conformance",
            ])
            .args(["--max-examples", &examples.to_string()])
            .args(["--seed", &SEED.to_string()])
            .args(["--phases", "examples,coverage,fuzzing"])
            // One worker: with two, schemathesis runs its generators in threads and CPython
            // 3.11's `ast` module, which Hypothesis calls to describe a lambda, can fail with
            // "AST constructor recursion depth mismatch" (a data race in CPython, not in the
            // API), as it did once in CI.
            .args(["--workers", "1"])
            // Password hashing (argon2) in a debug build on a loaded machine takes seconds.
            .args(["--request-timeout", "60"])
            .args([
                "--header",
                &format!("Authorization: Bearer {}", bearer(name)),
            ])
            .arg("--no-color")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("SCHEMATHESIS_HOOKS", "")
            .current_dir(&stack.log_dir)
            .output()
            .await
            .context("running schemathesis")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let f = figures(&text);
        println!(
            "schemathesis {name}: operations {}; test cases {}; {:.0} s; {}",
            f.operations,
            f.test_cases,
            started.elapsed().as_secs_f64(),
            out.status
        );
        if !out.status.success() {
            println!("---- schemathesis {name} ----\n{text}");
            failed.push(*name);
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "schemathesis found failures in {failed:?} (reports above; service logs in {})",
        stack.log_dir.display()
    );
    Ok(())
}
