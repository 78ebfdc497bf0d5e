//! `chatd` as a child process: for tests that SIGKILL it, or that measure
//! its memory and metrics apart from the test's own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `chatd` process and the configuration it restarts with.
pub struct Chatd {
    child: Option<Child>,
    config: PathBuf,
    pub addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The TLS listener, when `extra` turns it on.
    pub tls_addr: Option<SocketAddr>,
    /// The first run's log lines (`CHATD_LOG=error,chatd::server=info`).
    log: std::sync::mpsc::Receiver<String>,
}

/// The `127.0.0.1:PORT` following `key=` in a log line (which may hold
/// terminal colour codes).
fn logged_addr(line: &str, key: &str) -> Option<SocketAddr> {
    let at = line.find(key)?;
    let rest = line.get(at..)?;
    let ip = rest.find("127.0.0.1:")?;
    let port: String = rest
        .get(ip + "127.0.0.1:".len()..)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    format!("127.0.0.1:{port}").parse().ok()
}

impl Chatd {
    /// Starts `chatd` on ports of its choosing (plain TCP and HTTP; the
    /// other listeners are off unless `extra` sets them) with cheap
    /// password hashing, no send rate limits, data in `dir/data`, and the
    /// TOML lines `extra`.
    /// Restarts reuse the ports, so that clients reconnect to the address
    /// they know.
    pub fn start(dir: &Path, extra: &str) -> Self {
        let config = dir.join("chatd.toml");
        let off: String = ["tls_listen", "quic_listen", "wss_listen"]
            .iter()
            .filter(|key| !extra.contains(*key))
            .map(|key| format!("{key} = \"off\"\n"))
            .collect();
        let write_config = |tcp: &str, http: &str| {
            std::fs::write(
                &config,
                format!(
                    "tcp_listen = \"{tcp}\"\nhttp_listen = \"{http}\"\n{off}\
                     data_dir = \"{}\"\n\
                     argon2_memory_kib = 64\nargon2_iterations = 1\n\
                     rate_connection_per_sec = 0\nrate_user_per_sec = 0\n{extra}\n",
                    dir.join("data").display()
                ),
            )
            .expect("config");
        };
        write_config("127.0.0.1:0", "127.0.0.1:0");
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatd"))
            .arg("--config")
            .arg(&config)
            .env(
                "CHATD_LOG",
                std::env::var("CHATD_TEST_LOG")
                    .map(|l| format!("{l},chatd::server=info"))
                    .unwrap_or("error,chatd::server=info".into()),
            )
            .stdout(Stdio::piped())
            .spawn()
            .expect("start chatd");
        // The log line "listening tcp_addr=… http_addr=…" names the ports.
        let stdout = child.stdout.take().expect("stdout");
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if std::env::var_os("CHATD_TEST_LOG").is_some() {
                    eprintln!("{line}");
                }
                let _ = tx.send(line);
            }
        });
        let mut this = Self {
            child: Some(child),
            config: config.clone(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_addr: None,
            log,
        };
        let line = this.wait_log("listening");
        this.addr = logged_addr(&line, "tcp_addr").expect("tcp address logged");
        this.http_addr = logged_addr(&line, "http_addr").expect("http address logged");
        // The `tls=Some(…)` field alone: `tls=None` names no address.
        this.tls_addr = line
            .find("tls")
            .and_then(|at| line.get(at..))
            .and_then(|field| field.split(' ').next())
            .and_then(|field| logged_addr(field, "tls"));
        write_config(&this.addr.to_string(), &this.http_addr.to_string());
        this
    }

    /// The next line of the first run's log that contains `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .log
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line with {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Runs `chatd ARGS --config <this server's file>` to completion with
    /// `stdin` as its standard input.
    pub fn command(&self, args: &[&str], stdin: &str) -> std::process::Output {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatd"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("CHATD_LOG", "error")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run chatd");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("chatd output")
    }

    /// Sends SIGHUP.
    pub fn hangup(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("SIGHUP");
    }

    /// SIGSTOP: the process stops running (its sockets stay open) until
    /// [`Chatd::resume`].
    pub fn pause(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// SIGCONT after [`Chatd::pause`].
    pub fn resume(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = self.child.as_ref().expect("running").id();
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
        rustix::process::kill_process(pid, signal).expect("signal");
    }

    /// Starts the process again (after [`Chatd::kill`]) on the same data.
    pub fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_chatd"))
            .arg("--config")
            .arg(&self.config)
            .env(
                "CHATD_LOG",
                std::env::var("CHATD_TEST_LOG").unwrap_or("error".into()),
            )
            .stdout(if std::env::var_os("CHATD_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("start chatd");
        self.child = Some(child);
    }

    /// Waits until the TCP listener accepts again.
    pub async fn wait_listening(&self) {
        for _ in 0..800 {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("chatd did not come back");
    }

    /// SIGKILL: no shutdown, no flush, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process's resident memory in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// The sum of every sample of a Prometheus metric from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.http_addr)
            .await
            .expect("connect http");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out.lines()
            .filter(|l| {
                !l.starts_with('#')
                    && l.strip_prefix(name)
                        .is_some_and(|r| r.starts_with([' ', '{']))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Chatd {
    fn drop(&mut self) {
        self.kill();
    }
}
