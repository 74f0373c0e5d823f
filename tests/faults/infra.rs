//! The suite's own infrastructure: a PostgreSQL cluster, a RabbitMQ node, a Redis server and an
//! SMTP server, each private to one scenario (its own directory and free ports), so a scenario
//! may kill and restart them without touching the machine's shared instances.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use orderflow_testkit::eventually;
use tokio::process::{Child, Command};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a free port")
        .port()
}

/// Waits until something accepts connections on `port`.
pub async fn listening(what: &str, port: u16, within: Duration) -> anyhow::Result<()> {
    eventually(within, &format!("{what} to listen on {port}"), || async {
        Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ()))
    })
    .await
}

/// Runs a command to completion; fails with its output when it fails.
async fn run(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {what}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{what} failed ({}): {text}", out.status);
    }
    Ok(text)
}

/// A log file for a child's stdout and stderr.
pub fn log_file(dir: &Path, name: &str) -> anyhow::Result<(Stdio, Stdio)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))?;
    Ok((file.try_clone()?.into(), file.into()))
}

/// The running user is root on CI machines, and Postgres refuses to run as root: then its
/// commands run as the `postgres` system user.
fn as_postgres_user(program: &Path) -> Command {
    let root = std::env::var("USER").is_ok_and(|u| u == "root")
        || std::fs::metadata("/proc/self").is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt as _;
            m.uid() == 0
        });
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The directory of the Postgres server programs (`initdb`, `pg_ctl`).
fn pg_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("FAULTS_PG_BIN") {
        return dir.into();
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .unwrap_or_else(|| "/usr/lib/postgresql/15/bin".into())
}

/// A private PostgreSQL cluster with `fsync` on, so an immediate stop is a real crash whose
/// committed transactions must survive.
#[derive(Debug)]
pub struct Postgres {
    data: PathBuf,
    log: PathBuf,
    pub port: u16,
}

impl Postgres {
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let root = dir.join("postgres");
        std::fs::create_dir_all(&root)?;
        run(
            Command::new("chown").args(["-R", "postgres"]).arg(&root),
            "chown",
        )
        .await
        .ok();
        let pg = Self {
            data: root.join("data"),
            log: root.join("server.log"),
            port: free_port(),
        };
        run(
            as_postgres_user(&pg_bin().join("initdb"))
                .arg("-D")
                .arg(&pg.data)
                .args(["-U", "postgres", "--auth=trust", "--no-sync"]),
            "initdb",
        )
        .await?;
        pg.start_server().await?;
        Ok(pg)
    }

    async fn start_server(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=on \
             -c max_connections=300 -c shared_buffers=64MB",
            self.port
        );
        run(
            as_postgres_user(&pg_bin().join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log)
                .args(["-w", "-t", "60", "-o", &options, "start"]),
            "pg_ctl start",
        )
        .await?;
        Ok(())
    }

    /// `postgres://postgres@127.0.0.1:PORT` (no database).
    pub fn server_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    pub fn url(&self, database: &str) -> String {
        format!("{}/{database}", self.server_url())
    }

    /// Stops the server the way a crash would (`-m immediate`: no checkpoint, every connection
    /// cut), waits `down`, and starts it again; it recovers from its WAL.
    pub async fn crash_restart(&self, down: Duration) -> anyhow::Result<()> {
        self.stop().await?;
        tokio::time::sleep(down).await;
        self.start_server().await
    }

    async fn stop(&self) -> anyhow::Result<()> {
        run(
            as_postgres_user(&pg_bin().join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"]),
            "pg_ctl stop",
        )
        .await?;
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin().join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A private RabbitMQ node (`faults-<port>@localhost`) with its own Mnesia directory, logs,
/// configuration and Erlang cookie, and no plugins.
#[derive(Debug)]
pub struct RabbitMq {
    dir: PathBuf,
    pub node: String,
    pub port: u16,
    dist_port: u16,
    server: Option<Child>,
}

const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

impl RabbitMq {
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let dir = dir.join("rabbitmq");
        std::fs::create_dir_all(&dir)?;
        let port = free_port();
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        // An empty env file, so the machine's rabbitmq-env.conf (node name, ports) is not read.
        std::fs::write(dir.join("rabbitmq-env.conf"), "")?;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("loopback_users = none\nlisteners.tcp.default = 127.0.0.1:{port}\n"),
        )?;
        let mut mq = Self {
            node: format!("faults-{port}@localhost"),
            dir,
            port,
            dist_port: free_port(),
            server: None,
        };
        mq.boot().await?;
        Ok(mq)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(Path::new(RABBITMQ_BIN).join(program));
        let d = |p: &str| self.dir.join(p);
        c.env("HOME", &self.dir)
            .env("RABBITMQ_CONF_ENV_FILE", d("rabbitmq-env.conf"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
            .env("RABBITMQ_LOG_BASE", d("log"))
            .env("RABBITMQ_CONFIG_FILE", d("rabbitmq"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d("pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1");
        c
    }

    async fn boot(&mut self) -> anyhow::Result<()> {
        let (out, err) = log_file(&self.dir, "server")?;
        let child = self
            .command("rabbitmq-server")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .context("starting rabbitmq-server")?;
        self.server = Some(child);
        // The CLI only waits for a node that epmd already knows, so ask until it does.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(Ok(Some(status))) = self.server.as_mut().map(|c| c.try_wait()) {
                bail!(
                    "rabbitmq-server exited with {status}; see {}",
                    self.dir.display()
                );
            }
            if self
                .ctl(&["await_startup", "--timeout", "60"])
                .await
                .is_ok()
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the RabbitMQ node did not boot; see {}", self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        listening("RabbitMQ", self.port, Duration::from_secs(30)).await
    }

    /// `rabbitmqctl -n NODE ARGS...`.
    pub async fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        run(
            self.command("rabbitmqctl")
                .arg("-n")
                .arg(&self.node)
                .args(args),
            &format!("rabbitmqctl {}", args.join(" ")),
        )
        .await
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Kills the node with SIGKILL (the Erlang VM, not a clean stop), waits `down`, and boots
    /// it again on the same data: durable queues and confirmed persistent messages must be back.
    pub async fn crash_restart(&mut self, down: Duration) -> anyhow::Result<()> {
        self.kill().await;
        tokio::time::sleep(down).await;
        self.boot().await
    }

    async fn kill(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = Command::new("kill")
                .args(["-KILL", pid.trim()])
                .status()
                .await;
        }
        if let Some(mut c) = self.server.take() {
            let _ = c.kill().await;
        }
        // The VM is gone once its port is free.
        let port = self.port;
        let _ = eventually(Duration::from_secs(10), "RabbitMQ to die", || async move {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
                .then_some(()))
        })
        .await;
    }

    /// Closes every client connection, as a network blip or a broker-side policy would.
    pub async fn close_all_connections(&self) -> anyhow::Result<usize> {
        let out = self
            .ctl(&["close_all_connections", "fault injected by the test"])
            .await?;
        Ok(out
            .lines()
            .find_map(|l| l.strip_prefix("Closed ")?.split(' ').next()?.parse().ok())
            .unwrap_or(0))
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", pid.trim()])
                .status();
        }
    }
}

/// A private Redis without persistence: a restart loses every key, as a cache's may.
#[derive(Debug)]
pub struct Redis {
    dir: PathBuf,
    pub port: u16,
    server: Option<Child>,
}

impl Redis {
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let mut r = Self {
            dir: dir.to_owned(),
            port: free_port(),
            server: None,
        };
        r.boot().await?;
        Ok(r)
    }

    async fn boot(&mut self) -> anyhow::Result<()> {
        let (out, err) = log_file(&self.dir, "redis")?;
        self.server = Some(
            Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .kill_on_drop(true)
                .spawn()
                .context("starting redis-server")?,
        );
        listening("Redis", self.port, Duration::from_secs(30)).await
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, `down`, start again (empty).
    pub async fn crash_restart(&mut self, down: Duration) -> anyhow::Result<()> {
        if let Some(mut c) = self.server.take() {
            c.kill().await?;
        }
        tokio::time::sleep(down).await;
        self.boot().await
    }
}

/// aiosmtpd (`scripts/test-servers.sh` installs it) keeping every message in a Maildir: the
/// notification service's real SMTP client delivers to it, and the books read its inbox.
#[derive(Debug)]
pub struct Smtp {
    _server: Child,
    pub port: u16,
    maildir: PathBuf,
}

impl Smtp {
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let port = free_port();
        let maildir = dir.join("mail");
        let python = std::env::var("ORDERFLOW_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let (out, err) = log_file(dir, "smtp")?;
        let mut server = Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()?;
        let up = listening("aiosmtpd", port, Duration::from_secs(20)).await;
        if let Ok(Some(status)) = server.try_wait() {
            bail!("aiosmtpd exited with {status}; is it installed (scripts/test-servers.sh)?");
        }
        up?;
        Ok(Self {
            _server: server,
            port,
            maildir,
        })
    }

    /// Every message received so far, as stored.
    pub fn messages(&self) -> anyhow::Result<Vec<String>> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Ok(Vec::new());
        };
        entries
            .map(|e| Ok(std::fs::read_to_string(e?.path())?))
            .collect()
    }
}
