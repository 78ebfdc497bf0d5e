//! The `chatd` binary: reads configuration from a file, the environment and
//! flags (flags win), starts the server and shuts it down gracefully on
//! SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use chatd::{Config, Durability, ServerHandle};
use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Thread-per-core chat server. With no arguments it listens on
/// 127.0.0.1 (TCP 7400, TLS 7401, QUIC 7402/udp, HTTP and ws:// 7480,
/// HTTPS and wss:// 7443) and stores data in ./chatd-data.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file; keys are the field names of the README's
    /// configuration table.
    #[arg(long, env = "CHATD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Plain TCP listen address.
    #[arg(long, env = "CHATD_TCP_LISTEN")]
    tcp_listen: Option<SocketAddr>,
    /// TLS listen address, or `off`.
    #[arg(long, env = "CHATD_TLS_LISTEN", value_parser = parse_listen)]
    tls_listen: Option<Listen>,
    /// QUIC (UDP) listen address, or `off`.
    #[arg(long, env = "CHATD_QUIC_LISTEN", value_parser = parse_listen)]
    quic_listen: Option<Listen>,
    /// HTTPS listen address (`wss://`), or `off`.
    #[arg(long, env = "CHATD_WSS_LISTEN", value_parser = parse_listen)]
    wss_listen: Option<Listen>,
    /// Certificate chain (PEM) for TLS, HTTPS and QUIC; with `--tls-key`.
    #[arg(long, env = "CHATD_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `--tls-cert`.
    #[arg(long, env = "CHATD_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Data directory.
    #[arg(long, env = "CHATD_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Shard threads (0 = one per core).
    #[arg(long, env = "CHATD_SHARDS")]
    shards: Option<usize>,
    /// `sync` (fsync before ack) or `buffered` (survives a process crash only).
    #[arg(long, env = "CHATD_DURABILITY", value_parser = parse_durability)]
    durability: Option<Durability>,
    /// Without a command, chatd runs the server.
    /// Print the effective configuration (file, environment and flags
    /// applied) as TOML, with every key's meaning and default, and exit.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Operator commands, on the server's configuration.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Sets a user's password, read as one line from standard input, and
    /// signs the user out on every device (e.g. `printf '%s\n' "$PASSWORD"
    /// | chatd set-password alice --config chatd.toml`).
    SetPassword {
        /// The user's username.
        username: String,
    },
    /// Lists the users of a stopped server's data, one a line: id,
    /// username, display name, creation time (Unix ms), and `disabled` or
    /// `active`, separated by tabs.
    ListUsers,
    /// Lists the conversations of a stopped server's data, one a line: id,
    /// kind, members, last seq and title, separated by tabs.
    ListConversations,
    /// Disables an account: its logins are refused (ACCOUNT_DISABLED) and
    /// its session tokens revoked. A server running on this data_dir does
    /// it through its control socket and closes the account's sessions at
    /// once (on every node); otherwise it is done on the stopped server's
    /// data.
    DisableUser {
        /// The user's username.
        username: String,
    },
    /// Deletes an account on a stopped server's data, as DeleteAccount
    /// does: its profile erased (the username stays taken), its tokens,
    /// push registrations and media removed; its messages stay.
    DeleteUser {
        /// The user's username.
        username: String,
    },
    /// Enables an account disabled with `disable-user`, on the running
    /// server or on a stopped server's data, like `disable-user`.
    EnableUser {
        /// The user's username.
        username: String,
    },
    /// Copies the data of the server running on this configuration's
    /// data_dir into DEST, a new directory, without stopping it (the
    /// server writes the copy, so its user must be able to create DEST).
    /// chatd started with `--data-dir DEST` serves the copy.
    Backup {
        /// The new directory.
        dest: PathBuf,
    },
}

/// A listen address or `off`.
#[derive(Debug, Clone, Copy)]
struct Listen(Option<SocketAddr>);

fn parse_listen(s: &str) -> Result<Listen, String> {
    match s.trim() {
        "" | "off" => Ok(Listen(None)),
        addr => addr
            .parse()
            .map(|a| Listen(Some(a)))
            .map_err(|e| format!("{addr:?}: {e}; use host:port or off")),
    }
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "sync" => Ok(Durability::Sync),
        "buffered" => Ok(Durability::Buffered),
        other => Err(format!(
            "unknown durability {other:?}; use sync or buffered"
        )),
    }
}

/// Every connection is a file descriptor: raise the soft open-files limit
/// to the hard limit, as far as the operator allows.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(cause = %e, "could not raise the open-files limit");
        }
    }
    tracing::debug!(limit = ?getrlimit(Resource::Nofile).current, "open-files limit");
}

/// `text` with tabs and line breaks as spaces, for one tab-separated line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `disable-user` / `enable-user`: through the control socket of a server
/// running on the data_dir, or else on the stopped server's data. Returns
/// how many session tokens were revoked.
fn set_disabled(config: &Config, username: &str, disabled: bool) -> anyhow::Result<usize> {
    let command = if disabled {
        "disable-user"
    } else {
        "enable-user"
    };
    if username.contains(char::is_whitespace) {
        anyhow::bail!("no user named {username:?}");
    }
    match chatd::control::request(&config.data_dir, &format!("{command} {username}")) {
        Ok(answer) => Ok(answer
            .split(' ')
            .find_map(|field| field.strip_prefix("tokens_revoked="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)),
        // No server listens: its data is changed directly.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(chatd::admin::set_disabled(config, username, disabled)?)
        }
        Err(e) => Err(anyhow::anyhow!("the running server answered: {e}")),
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHATD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    raise_open_files_limit();
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<Config>(&text)
                .with_context(|| format!("parsing {}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(v) = args.tcp_listen {
        config.tcp_listen = v;
    }
    if let Some(Listen(v)) = args.tls_listen {
        config.tls_listen = v;
    }
    if let Some(Listen(v)) = args.quic_listen {
        config.quic_listen = v;
    }
    if let Some(Listen(v)) = args.wss_listen {
        config.wss_listen = v;
    }
    if let Some(v) = args.tls_cert {
        config.tls_cert = Some(v);
    }
    if let Some(v) = args.tls_key {
        config.tls_key = Some(v);
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.shards {
        config.shards = v;
    }
    if let Some(v) = args.durability {
        config.durability = v;
    }

    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }

    if let Some(Command::Backup { dest }) = &args.command {
        let dest = std::path::absolute(dest).context("resolving the destination")?;
        let dest = dest
            .to_str()
            .filter(|d| !d.contains('\n'))
            .context("the destination must be UTF-8 without line breaks")?;
        let done = chatd::control::request(&config.data_dir, &format!("backup {dest}"))
            .with_context(|| format!("backing up into {dest}"))?;
        println!("backed up into {dest}: {done}");
        return Ok(());
    }

    match &args.command {
        Some(Command::ListUsers) => {
            let rows = chatd::admin::list_users(&config).context("listing the users")?;
            println!("id\tusername\tdisplay_name\tcreated_at_ms\tstate");
            for r in rows {
                let state = if r.disabled { "disabled" } else { "active" };
                println!(
                    "{}\t{}\t{}\t{}\t{state}",
                    r.id,
                    r.username,
                    one_line(&r.display_name),
                    r.created_at_ms
                );
            }
            return Ok(());
        }
        Some(Command::ListConversations) => {
            let rows =
                chatd::admin::list_conversations(&config).context("listing the conversations")?;
            println!("id\tkind\tmembers\tlast_seq\ttitle");
            for r in rows {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    r.id,
                    r.kind,
                    r.members,
                    r.last_seq,
                    one_line(&r.title)
                );
            }
            return Ok(());
        }
        Some(Command::DisableUser { username }) => {
            let revoked = set_disabled(&config, username, true)
                .with_context(|| format!("disabling {username:?}"))?;
            println!("{username:?} disabled; {revoked} session token(s) revoked");
            return Ok(());
        }
        Some(Command::DeleteUser { username }) => {
            let media = chatd::admin::delete_user(&config, username)
                .with_context(|| format!("deleting {username:?}"))?;
            println!("{username:?} deleted; {media} media file(s) removed");
            return Ok(());
        }
        Some(Command::EnableUser { username }) => {
            set_disabled(&config, username, false)
                .with_context(|| format!("enabling {username:?}"))?;
            println!("{username:?} enabled");
            return Ok(());
        }
        _ => {}
    }

    if let Some(Command::SetPassword { username }) = &args.command {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the new password from standard input")?;
        let password = line.strip_suffix('\n').unwrap_or(&line);
        let password = password.strip_suffix('\r').unwrap_or(password);
        let revoked = chatd::admin::set_password(&config, username, password)
            .with_context(|| format!("setting the password of {username:?}"))?;
        println!("password of {username:?} set; {revoked} session token(s) revoked");
        return Ok(());
    }

    let server = ServerHandle::start(config).context("starting chatd")?;
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("signal runtime")?;
    let mut stopping = server.shutdown_signal();
    signals.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = stopping.wait_for(|&s| s) => break,
                // SIGHUP: a renewed certificate; the outcome is logged.
                _ = hangup.recv() => {
                    if let Ok(false) = server.reload_tls() {
                        tracing::info!("SIGHUP: no TLS listener, nothing to reload");
                    }
                }
            }
        }
        Ok::<(), std::io::Error>(())
    })?;
    tracing::info!("shutting down");
    let failed = server.storage_failed();
    server.shutdown();
    if failed {
        // A service manager restarts a unit that exits with a failure.
        anyhow::bail!("stopped after a storage failure (see the log above)");
    }
    Ok(())
}
