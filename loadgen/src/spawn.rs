//! Starting the server under test as a child process: chatd with a fresh
//! data directory, or Redis / NATS from Debian's packages, each on free
//! loopback ports and optionally pinned to CPUs with `taskset`.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::cli::{Common, Target};

/// A running server that this process started; killed on drop.
pub struct Spawned {
    child: Child,
    /// Its process id (for CPU and memory readings).
    pub pid: u32,
    /// Where clients connect.
    pub addr: SocketAddr,
    /// chatd's HTTP listener (`/metrics`).
    pub http: Option<SocketAddr>,
    /// The command line, for the report.
    pub command: String,
    dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Spawned {
    /// The last lines the server logged.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// `name` on `PATH`, else in the system directories Debian installs
/// servers to (`nats-server` lives in `/usr/sbin`, which not every `PATH`
/// holds).
fn program(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    if !on_path {
        for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
            let candidate = PathBuf::from(dir).join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from(name)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The chatd binary: `--chatd-bin`, else `chatd` beside this executable,
/// else `chatd` on `PATH`.
fn chatd_bin(common: &Common) -> PathBuf {
    if let Some(p) = &common.chatd_bin {
        return p.clone();
    }
    if let Ok(me) = std::env::current_exe() {
        let sibling = me.with_file_name("chatd");
        if sibling.exists() {
            return sibling;
        }
    }
    PathBuf::from("chatd")
}

/// The settings a spawned chatd runs with (`--config`). Load runs create
/// thousands of accounts, so password hashing is cheap, and the send rate
/// limits, which exist to stop abusive clients, are off; durability is the
/// default (`sync`: fsync before every ack) unless `--durability` says
/// otherwise.
pub fn chatd_config(common: &Common, port: u16, http: u16, dir: &std::path::Path) -> String {
    format!(
        "tcp_listen = \"127.0.0.1:{port}\"\n\
         http_listen = \"127.0.0.1:{http}\"\n\
         data_dir = \"{}\"\n\
         shards = {}\n\
         durability = \"{}\"\n\
         argon2_memory_kib = 64\n\
         argon2_iterations = 1\n\
         rate_connection_per_sec = 0\n\
         rate_user_per_sec = 0\n\
         max_sessions_per_user = 100000\n\
         login_failures_per_address = 1000000\n",
        dir.join("data").display(),
        common.shards,
        common.durability,
    )
}

/// Starts the target given by `common` and waits until it accepts
/// connections.
pub fn start(common: &Common) -> anyhow::Result<Spawned> {
    let dir = tempfile::Builder::new().prefix("loadgen-").tempdir()?;
    let port = free_port()?;
    let mut http = None;
    let (program, args): (PathBuf, Vec<String>) = match common.target {
        Target::Chatd => {
            let h = free_port()?;
            http = Some(SocketAddr::from(([127, 0, 0, 1], h)));
            let config = dir.path().join("chatd.toml");
            std::fs::write(&config, chatd_config(common, port, h, dir.path()))?;
            (
                chatd_bin(common),
                vec!["--config".into(), config.display().to_string()],
            )
        }
        Target::Redis => (
            program("redis-server"),
            [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir.path().display().to_string(),
                "--loglevel",
                "warning",
                "--maxclients",
                "100000",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ),
        Target::Nats => (
            program("nats-server"),
            vec![
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ],
        ),
    };
    let mut cmd = match &common.server_cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg(&program);
            c
        }
        None => Command::new(&program),
    };
    cmd.args(&args);
    let command = format!("{:?}", cmd);
    let log = std::fs::File::create(dir.path().join("server.log"))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env("CHATD_LOG", "warn");
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let mut spawned = Spawned {
        pid: child.id(),
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        http,
        command,
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(spawned.addr).is_ok() {
            break;
        }
        if let Some(status) = spawned.child.try_wait()? {
            bail!(
                "{} exited with {status} before listening:\n{}",
                program.display(),
                spawned.log_tail()
            );
        }
        if Instant::now() > deadline {
            bail!("{} did not listen within 30 s", program.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(spawned)
}
