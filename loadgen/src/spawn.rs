//! Starting the server under test as a child process: chatd with a fresh
//! data directory, or a comparison server ([`crate::peers`]), each in its
//! own temporary directory, on free loopback ports, optionally pinned to
//! CPUs with `taskset`, and killed when the run ends. Its process id is
//! what CPU and memory are read from.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::cli::{Common, Target, Transport};

/// A running server that this process started; killed on drop.
pub struct Spawned {
    child: Child,
    /// Its process id (for CPU and memory readings).
    pub pid: u32,
    /// Where clients connect (chatd: its plain TCP listener).
    pub addr: SocketAddr,
    /// chatd: the listener of the transport the run uses (`addr` for TCP).
    pub transport_addr: SocketAddr,
    /// chatd: the certificate it generated for TLS, QUIC and wss.
    pub cert: Option<PathBuf>,
    /// chatd's HTTP listener (`/metrics`).
    pub http: Option<SocketAddr>,
    /// The command line, for the report.
    pub command: String,
    /// ejabberd: how to run `ejabberdctl` against it.
    pub ejabberd: Option<crate::peers::EjabberdCtl>,
    /// The server's version (the comparison servers).
    pub version: Option<String>,
    logs: Vec<PathBuf>,
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
        let mut out = Vec::new();
        for path in std::iter::once(self.dir.path().join("server.log")).chain(self.logs.clone()) {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push(lines[lines.len().saturating_sub(20)..].join("\n"));
        }
        out.retain(|t| !t.is_empty());
        out.join("\n")
    }
}

/// `name` on `PATH`, else in the system directories Debian installs
/// servers to (`nats-server` lives in `/usr/sbin`, which not every `PATH`
/// holds).
pub fn program(name: &str) -> PathBuf {
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

/// Free loopback ports for a child server, all different: each stays bound
/// until the set is dropped (just before the child starts), so the kernel
/// cannot hand the same port out twice.
#[derive(Default)]
pub struct FreePorts {
    held: Vec<socket2::Socket>,
}

impl FreePorts {
    pub fn tcp(&mut self) -> anyhow::Result<u16> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        self.held.push(l.into());
        Ok(port)
    }

    fn udp(&mut self) -> anyhow::Result<u16> {
        let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let port = s.local_addr()?.port();
        self.held.push(s.into());
        Ok(port)
    }

    /// The port the spawned chatd's `transport` listener gets (the TCP
    /// listener's `port` for TCP, the HTTP listener's for ws).
    fn transport(&mut self, transport: Transport, port: u16, http: u16) -> anyhow::Result<u16> {
        Ok(match transport {
            Transport::Tcp => port,
            Transport::Ws => http,
            Transport::Quic => self.udp()?,
            Transport::Tls | Transport::Wss => self.tcp()?,
        })
    }
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
/// otherwise. Of the TLS, QUIC and wss listeners only the one the run's
/// transport needs is on, at `transport_port`.
pub fn chatd_config(
    common: &Common,
    port: u16,
    http: u16,
    transport_port: u16,
    dir: &std::path::Path,
) -> String {
    let listen = |t: Transport| {
        if common.transport == t {
            format!("\"127.0.0.1:{transport_port}\"")
        } else {
            "\"off\"".to_owned()
        }
    };
    format!(
        "tcp_listen = \"127.0.0.1:{port}\"\n\
         http_listen = \"127.0.0.1:{http}\"\n\
         tls_listen = {}\n\
         quic_listen = {}\n\
         wss_listen = {}\n\
         data_dir = \"{}\"\n\
         shards = {}\n\
         durability = \"{}\"\n\
         argon2_memory_kib = 64\n\
         argon2_iterations = 1\n\
         rate_connection_per_sec = 0\n\
         rate_user_per_sec = 0\n\
         max_sessions_per_user = 100000\n\
         login_failures_per_address = 1000000\n",
        listen(Transport::Tls),
        listen(Transport::Quic),
        listen(Transport::Wss),
        dir.join("data").display(),
        common.shards,
        common.durability,
    )
}

/// Starts the target given by `common` and waits until it accepts
/// connections. The ports are picked here and handed to the child, so
/// another process may take one in between; chatd then refuses to start
/// ("already in use") and is started again on new ports, up to 3 times.
pub fn start(common: &Common) -> anyhow::Result<Spawned> {
    let mut attempt = 1;
    loop {
        match start_once(common) {
            Err(e) if attempt < 3 && e.is::<PortTaken>() => {
                eprintln!("attempt {attempt}: {e:#}; starting again on other ports");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The child found one of the picked ports held by someone else.
#[derive(Debug)]
struct PortTaken(String);

impl std::fmt::Display for PortTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a picked port was taken:\n{}", self.0)
    }
}

impl std::error::Error for PortTaken {}

/// How to start one target: the program, its arguments and environment,
/// and what the run needs to know about it afterwards. Built per target
/// (chatd here, the comparison servers in [`crate::peers`]) inside the
/// run's temporary directory, with ports from [`FreePorts`].
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Where clients connect; the server is ready when it accepts here.
    pub port: u16,
    pub transport_addr: Option<SocketAddr>,
    pub cert: Option<PathBuf>,
    pub http: Option<SocketAddr>,
    /// ejabberd: how to run `ejabberdctl` against it.
    pub ejabberd: Option<crate::peers::EjabberdCtl>,
    /// Log files the server writes itself, besides its stdout and stderr.
    pub logs: Vec<PathBuf>,
    /// The server's version, for the report.
    pub version: Option<String>,
}

impl Launch {
    /// `program args`, listening for clients on `port`.
    pub fn new(program: PathBuf, args: Vec<String>, port: u16) -> Self {
        Self {
            program,
            args,
            env: Vec::new(),
            port,
            transport_addr: None,
            cert: None,
            http: None,
            ejabberd: None,
            logs: Vec::new(),
            version: None,
        }
    }
}

fn chatd_launch(
    common: &Common,
    ports: &mut FreePorts,
    dir: &std::path::Path,
) -> anyhow::Result<Launch> {
    let port = ports.tcp()?;
    let h = ports.tcp()?;
    let config = dir.join("chatd.toml");
    let t = ports.transport(common.transport, port, h)?;
    std::fs::write(&config, chatd_config(common, port, h, t, dir))?;
    let mut launch = Launch::new(
        chatd_bin(common),
        vec!["--config".into(), config.display().to_string()],
        port,
    );
    launch.http = Some(SocketAddr::from(([127, 0, 0, 1], h)));
    launch.transport_addr = Some(SocketAddr::from(([127, 0, 0, 1], t)));
    if common.transport != Transport::Tcp && common.transport != Transport::Ws {
        launch.cert = Some(dir.join("data").join("tls").join("cert.pem"));
    }
    launch.env.push(("CHATD_LOG".into(), "warn".into()));
    Ok(launch)
}

fn start_once(common: &Common) -> anyhow::Result<Spawned> {
    let dir = tempfile::Builder::new().prefix("loadgen-").tempdir()?;
    let mut ports = FreePorts::default();
    let launch = match common.target {
        Target::Chatd => chatd_launch(common, &mut ports, dir.path())?,
        Target::Redis => crate::peers::redis(&mut ports, dir.path(), false)?,
        Target::RedisStreams => crate::peers::redis(&mut ports, dir.path(), true)?,
        Target::Nats => crate::peers::nats(common, &mut ports)?,
        Target::NatsJetstream => crate::peers::nats_jetstream(common, &mut ports, dir.path())?,
        Target::Ejabberd => crate::peers::ejabberd(&mut ports, dir.path())?,
    };
    let Launch {
        program,
        args,
        env,
        port,
        transport_addr,
        cert,
        http,
        ejabberd,
        logs,
        version,
    } = launch;
    let transport_addr = transport_addr.unwrap_or(SocketAddr::from(([127, 0, 0, 1], port)));
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
    drop(ports);
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .envs(env);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let mut spawned = Spawned {
        pid: child.id(),
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        transport_addr,
        cert,
        http,
        command,
        ejabberd,
        logs,
        version,
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The certificate is written after the listeners are bound: wait
        // for all of it too.
        let cert_ready = spawned.cert.as_ref().is_none_or(|c| {
            std::fs::read_to_string(c).is_ok_and(|t| t.contains("-----END CERTIFICATE-----"))
        });
        if cert_ready && std::net::TcpStream::connect(spawned.addr).is_ok() {
            break;
        }
        if let Some(status) = spawned.child.try_wait()? {
            let log = spawned.log_tail();
            let lower = log.to_lowercase();
            if lower.contains("already in use") || lower.contains("eaddrinuse") {
                return Err(PortTaken(log).into());
            }
            bail!(
                "{} exited with {status} before listening:\n{log}",
                program.display(),
            );
        }
        if Instant::now() > deadline {
            bail!("{} did not listen within 30 s", program.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(spawned)
}
