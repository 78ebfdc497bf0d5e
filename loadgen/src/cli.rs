//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

/// Load generator for chatd, with Redis and NATS pub/sub, Redis streams,
/// NATS JetStream and ejabberd as comparison targets for the same
/// workloads.
#[derive(Debug, Parser)]
#[command(version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// N users in pairs, each sending to its partner.
    Direct {
        /// Users (rounded down to an even number).
        #[arg(long, default_value_t = 100)]
        users: usize,
        #[command(flatten)]
        common: Common,
    },
    /// Groups of G members, all online; `senders` members of each send.
    Group {
        /// Members per group.
        #[arg(long, default_value_t = 500)]
        group_size: usize,
        /// Number of groups.
        #[arg(long, default_value_t = 1)]
        groups: usize,
        /// Members of each group that send.
        #[arg(long, default_value_t = 1)]
        senders: usize,
        #[command(flatten)]
        common: Common,
    },
    /// One poster and S subscribers of a broadcast channel.
    Channel {
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[command(flatten)]
        common: Common,
    },
    /// Holds C idle authenticated sessions with heartbeats and reports the
    /// server's memory per session.
    Connections {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Sessions being opened at once.
        #[arg(long, default_value_t = 128)]
        concurrency: usize,
        #[command(flatten)]
        common: Common,
    },
    /// Pairs where one side disconnects, misses M messages, then resumes and
    /// catches up; repeated for `rounds`.
    Sync {
        #[arg(long, default_value_t = 100)]
        users: usize,
        /// Messages missed per round.
        #[arg(long, default_value_t = 1000)]
        missed: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[command(flatten)]
        common: Common,
    },
    /// How long a small write and its `fdatasync` take on the disk, and the
    /// CPU they cost: in a file laid out like fjall's journal (alone and
    /// beside bulk writes like a store flush), a growing file, and a file
    /// written in full beforehand (as chatd's commit log segments are).
    Disk {
        /// Directory on the disk to measure (a temporary directory is
        /// made in it and removed). Default: the system's temporary
        /// directory, where loadgen puts the chatd it starts.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seconds per phase.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Bytes per write.
        #[arg(long, default_value_t = 4096)]
        block: usize,
        /// Bytes the bulk writer writes and fsyncs each second in the
        /// second phase (16 MiB: one flushed memtable).
        #[arg(long, default_value_t = 16 << 20)]
        bulk: usize,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Writes BENCHMARKS.md (tables and SVG plots) from JSON reports.
    Report {
        /// Directory of `*.json` reports written with `--json`.
        #[arg(long)]
        input: PathBuf,
        /// Markdown file to write; plots go beside it.
        #[arg(long)]
        output: PathBuf,
        /// Markdown inserted before the tables (machine, commands).
        #[arg(long)]
        notes: Option<PathBuf>,
        /// Markdown appended after the tables (analysis, profiles).
        #[arg(long)]
        appendix: Option<PathBuf>,
        /// The run's `loadgen disk --json` report: the disk's latency floor
        /// the `direct` latency target is measured against.
        #[arg(long)]
        disk: Option<PathBuf>,
    },
}

/// The server being measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// chatd over chat/1: every message stored before it is acknowledged.
    Chatd,
    /// Redis pub/sub: nothing stored.
    Redis,
    /// NATS core pub/sub: nothing stored.
    Nats,
    /// Redis streams: `XADD` per message into an append-only file synced
    /// on every write (`appendfsync always`); recipients `XREAD BLOCK`.
    RedisStreams,
    /// NATS JetStream: a file-storage stream synced on every write
    /// (`sync_interval: always`); publishes acknowledged by the server,
    /// push consumers deliver. Needs nats-server 2.10 or newer.
    NatsJetstream,
    /// ejabberd over XMPP client-to-server: one-to-one `<message>`
    /// stanzas, archived (mod_mam) in SQLite; stream management acks.
    /// `direct` only.
    Ejabberd,
}

impl Target {
    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Target::Chatd => "chatd",
            Target::Redis => "redis",
            Target::Nats => "nats",
            Target::RedisStreams => "redis-streams",
            Target::NatsJetstream => "nats-jetstream",
            Target::Ejabberd => "ejabberd",
        }
    }

    /// Whether the server answers each send (NATS core publishes get no
    /// reply).
    pub fn acks(self) -> bool {
        self != Target::Nats
    }
}

/// How loadgen reaches chatd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// chat/1 over plain TCP.
    Tcp,
    /// chat/1 over TLS (ALPN `chat/1`).
    Tls,
    /// chat/1 over QUIC: one bidirectional stream per session; many
    /// sessions share each UDP socket.
    Quic,
    /// WebSocket at `/ws` on the HTTP listener: one binary message per
    /// frame.
    Ws,
    /// WebSocket over TLS at `/ws` on the HTTPS listener.
    Wss,
}

/// Options every scenario takes.
#[derive(Debug, Clone, Args, Serialize)]
pub struct Common {
    #[arg(long, value_enum, default_value_t = Target::Chatd)]
    pub target: Target,
    /// chatd transport (the other targets: `tcp` only). A started chatd gets
    /// the listener it needs on a free port.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,
    /// Use a server that is already running at this address instead of
    /// starting one (no server CPU or memory readings then): the address
    /// of the `--transport` listener. Several, comma-separated, over tcp:
    /// the nodes of a chatd cluster, each connection to the next in turn.
    #[arg(long, value_delimiter = ',')]
    pub server: Vec<SocketAddr>,
    /// With `--server` over tls, quic or wss: the certificate (PEM) to
    /// trust, e.g. chatd's generated `data_dir/tls/cert.pem`.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// The name the server's certificate must be valid for.
    #[arg(long, default_value = "localhost")]
    pub tls_name: String,
    /// QUIC: UDP sockets loadgen spreads its connections over (the server
    /// picks a shard per client address and port).
    #[arg(long, default_value_t = crate::transport::QUIC_ENDPOINTS)]
    pub quic_endpoints: usize,
    /// The chatd binary to start (default: `chatd` beside loadgen, else on
    /// PATH).
    #[arg(long)]
    pub chatd_bin: Option<PathBuf>,
    /// The nats-server binary for `nats` and `nats-jetstream` (default:
    /// the first `nats-server` on `PATH` or in the system directories;
    /// for `nats-jetstream` the first of those, or of the one pip
    /// installs, new enough for `sync_interval`).
    #[arg(long, env = "LOADGEN_NATS_BIN")]
    pub nats_bin: Option<PathBuf>,
    /// chatd shard threads when loadgen starts it (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub shards: usize,
    /// chatd durability when loadgen starts it: `sync` or `buffered`.
    #[arg(long, default_value = "sync")]
    pub durability: String,
    /// Pin the started server to these CPUs (`taskset -c` list, e.g. `1`).
    #[arg(long)]
    pub server_cpus: Option<String>,
    /// Pin loadgen to this CPU.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Bytes per message payload.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Total messages per second over all senders; 0 sends as fast as the
    /// window allows.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Messages per sender sent but not yet delivered to every recipient.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Seconds to wait after the load for the last deliveries.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Spread connections over this many source addresses 127.0.0.1..N.
    #[arg(long, default_value_t = 1)]
    pub source_addrs: usize,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A name for this run in reports.
    #[arg(long)]
    pub label: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}
