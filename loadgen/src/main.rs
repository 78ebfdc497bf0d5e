//! `loadgen`: drives chatd (or, for comparison, Redis and NATS pub/sub and
//! the durable peers Redis streams, NATS JetStream and ejabberd) with
//! the scenarios of `cli::Command`, checks every delivered message, and
//! prints a human summary and optionally a JSON report. `loadgen report`
//! turns a directory of JSON reports into BENCHMARKS.md.
//!
//! It runs on one thread (a current-thread tokio runtime), so it can be
//! pinned to one core next to the server on another (`--cpu`,
//! `--server-cpus`). Modules:
//!
//! - [`cli`]: the command line; [`scenario`]: starting the target and
//!   building reports; [`spawn`]: the server as a child process;
//!   [`peers`]: how each comparison server is configured;
//! - [`setup`]: accounts, conversations and subscriptions per target;
//!   [`fanout`]: the `direct`, `group` and `channel` load and its checks;
//!   [`connections`], [`sync`]: the other two scenarios;
//! - [`jetstream`]: the JetStream target through async-nats; [`xmpp`]:
//!   XMPP sessions with ejabberd;
//! - [`wire`]: chat/1, RESP, NATS, JetStream and XMPP encoders and
//!   decoders; [`conn`]:
//!   sockets, batching writer, reader loop; [`transport`]: TCP, TLS,
//!   QUIC and WebSocket connections; [`session`]: request/reply
//!   chat/1 sessions; [`payload`]: the header every message carries;
//! - [`stats`]: HDR histograms and the report; [`procstat`]: CPU and memory
//!   from `/proc`, limits and pinning; [`markdown`]: BENCHMARKS.md;
//!   [`progress`]: the progress bar; [`disk`]: `loadgen disk`, what a
//!   synced write costs on this machine.

mod cli;
mod conn;
mod connections;
mod disk;
mod fanout;
mod jetstream;
mod markdown;
mod pace;
mod payload;
mod peers;
mod procstat;
mod progress;
mod scenario;
mod session;
mod setup;
mod spawn;
mod stats;
mod sync;
mod transport;
mod wire;
mod xmpp;

use anyhow::Context as _;
use clap::Parser as _;

use cli::{Cli, Command};
use setup::Plan;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Report {
        input,
        output,
        notes,
        appendix,
        disk,
    } = &cli.command
    {
        return markdown::write(
            input,
            output,
            notes.as_deref(),
            appendix.as_deref(),
            disk.as_deref(),
        );
    }
    if let Command::Disk {
        dir,
        duration,
        block,
        bulk,
        json,
    } = &cli.command
    {
        let dir = dir.clone().unwrap_or_else(std::env::temp_dir);
        let duration = std::time::Duration::try_from_secs_f64(*duration)
            .context("--duration must be a non-negative number of seconds")?;
        if *block == 0 || *block as u64 > disk::FILE_BYTES {
            anyhow::bail!("--block must be 1 to {} bytes", disk::FILE_BYTES);
        }
        let report = disk::probe(&dir, duration, *block, *bulk)?;
        disk::print(&report);
        if let Some(path) = json {
            let text = serde_json::to_string_pretty(&report)?;
            std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
        }
        return Ok(());
    }
    procstat::raise_nofile_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    // Entered for as long as the LocalSet lives: tasks still in it are
    // dropped with it, and async-nats clients spawn a task when dropped.
    let _context = runtime.enter();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    let (report, common) = match command {
        Command::Direct { users, common } => (
            scenario::messaging("direct", Plan::direct(users.max(2)), &common).await?,
            common,
        ),
        Command::Group {
            group_size,
            groups,
            senders,
            common,
        } => {
            let plan = Plan::group(groups.max(1), group_size.max(2), senders);
            (scenario::messaging("group", plan, &common).await?, common)
        }
        Command::Channel {
            subscribers,
            common,
        } => {
            let plan = Plan::channel(subscribers.max(1));
            (scenario::messaging("channel", plan, &common).await?, common)
        }
        Command::Connections {
            connections,
            concurrency,
            common,
        } => (
            connections::run(connections, concurrency, &common).await?,
            common,
        ),
        Command::Sync {
            users,
            missed,
            rounds,
            common,
        } => (
            sync::run(users.max(2), missed, rounds.max(1), &common).await?,
            common,
        ),
        Command::Report { .. } | Command::Disk { .. } => return Ok(()),
    };
    scenario::finish(&report, &common)?;
    if !report.verification.ok {
        anyhow::bail!("verification failed");
    }
    Ok(())
}
