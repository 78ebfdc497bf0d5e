//! Server settings. Only `main.rs` reads files, environment and flags; the
//! library takes a finished [`Config`]. Every field documents its meaning,
//! default and unit.

use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How hard the server works to make an acknowledged message survive a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Every batch is written and `fdatasync`ed before any message in it is
    /// acknowledged. Survives process crashes and power loss. The default.
    #[default]
    Sync,
    /// Batches are written to the journal (the OS page cache) before the
    /// ack, without fsync. Survives a process crash, not a power loss.
    Buffered,
}

/// Everything the server needs to start.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Plain TCP listener. Default `127.0.0.1:7400`; port 0 picks a free port.
    pub tcp_listen: SocketAddr,
    /// HTTP listener for `/health`, `/metrics` and the WebSocket bridge at
    /// `/ws`. Default `127.0.0.1:7480`; port 0 picks a free port.
    pub http_listen: SocketAddr,
    /// TLS over TCP listener (ALPN `chat/1`). Default `127.0.0.1:7401`;
    /// `"off"` in the file disables it.
    #[serde(
        deserialize_with = "listen_or_off",
        serialize_with = "listen_or_off_out"
    )]
    pub tls_listen: Option<SocketAddr>,
    /// QUIC listener, UDP (ALPN `chat/1`). Default `127.0.0.1:7402`;
    /// `"off"` disables it.
    #[serde(
        deserialize_with = "listen_or_off",
        serialize_with = "listen_or_off_out"
    )]
    pub quic_listen: Option<SocketAddr>,
    /// HTTPS listener: the HTTP routes over TLS, so WebSocket over TLS
    /// (`wss://`) at `/ws`. Default `127.0.0.1:7443`; `"off"` disables it.
    #[serde(
        deserialize_with = "listen_or_off",
        serialize_with = "listen_or_off_out"
    )]
    pub wss_listen: Option<SocketAddr>,
    /// Certificate chain (PEM) for TLS, HTTPS and QUIC. Default none: a
    /// self-signed certificate for localhost is generated into
    /// `data_dir/tls/cert.pem` on first start. Set with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM, PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Browser origins (`scheme://host[:port]`) allowed to open a WebSocket
    /// session besides pages of the server's own host; `"*"` allows any.
    /// Requests without an Origin header (non-browser clients) are always
    /// allowed. Default empty.
    pub ws_allowed_origins: Vec<String>,
    /// Connections one shard accepts at most; further ones get SERVER_BUSY
    /// and are closed. Default 65,536.
    pub max_connections_per_shard: usize,
    /// SendMessage requests per second per connection (0 = unlimited), and
    /// the burst allowed above that rate. Defaults 50 and 100.
    pub rate_connection_per_sec: u32,
    /// See `rate_connection_per_sec`.
    pub rate_connection_burst: u32,
    /// SendMessage requests per second per user on one shard (0 =
    /// unlimited), and the burst. Defaults 100 and 200. A user whose
    /// sessions are spread over several shards gets this on each.
    pub rate_user_per_sec: u32,
    /// See `rate_user_per_sec`.
    pub rate_user_burst: u32,
    /// Sessions one user may have open at once (0 = unlimited). Default 32.
    pub max_sessions_per_user: u32,
    /// Failed logins per username per minute before further attempts get
    /// TOO_MANY_LOGIN_ATTEMPTS (0 = unlimited). Default 10.
    pub login_failures_per_username: u32,
    /// Failed logins per client address per minute (0 = unlimited).
    /// Default 30.
    pub login_failures_per_address: u32,
    /// Directory for the store (`data_dir/store`). Default `./chatd-data`.
    pub data_dir: PathBuf,
    /// Shard threads. Default 0, meaning one per available core.
    pub shards: usize,
    /// Durability mode, see [`Durability`]. Default `sync`.
    pub durability: Durability,
    /// Largest frame body accepted, in bytes. Default 1 MiB.
    pub max_frame_bytes: usize,
    /// Largest message (text + ciphertext + media reference), in bytes.
    /// Default 64 KiB.
    pub max_message_bytes: usize,
    /// Largest group, in members. Default 500.
    pub max_group_members: usize,
    /// Frames queued towards one session before it is disconnected as a slow
    /// consumer. Default 1024. At most `max_frame_bytes` each, typically a
    /// few hundred bytes.
    pub session_queue_frames: usize,
    /// Bytes queued to one session before it is disconnected as a slow
    /// consumer. Default 4 MiB (raised to `max_frame_bytes` if smaller).
    /// With `session_queue_frames`, bounds the memory one session can pin.
    pub session_queue_bytes: usize,
    /// Requests of one connection being processed at once; further frames
    /// are not read from its socket until one completes. Default 256.
    pub session_inflight_requests: usize,
    /// Messages held per shard-to-shard ring. Default 8192.
    pub mesh_ring_capacity: usize,
    /// Write requests queued towards the storage writer. Default 16384.
    pub storage_queue: usize,
    /// Idempotency keys of recent sends kept in memory per loaded
    /// conversation (older ones are looked up in the store when a client
    /// retransmits). Default 256.
    pub recent_messages: usize,
    /// Heartbeat interval announced to clients, in milliseconds; sessions
    /// silent for 3 intervals are closed. Default 15,000.
    pub heartbeat_interval_ms: u32,
    /// Time a new connection has to complete Hello, in milliseconds.
    /// Default 10,000.
    pub handshake_timeout_ms: u64,
    /// Lifetime of a session token, in seconds. Default 30 days.
    pub token_ttl_secs: u64,
    /// Wait for in-flight writes and queued frames at shutdown, in
    /// milliseconds, before closing anyway. Default 5,000.
    pub shutdown_grace_ms: u64,
    /// argon2 memory cost in KiB (default 19,456: OWASP's minimum for
    /// argon2id) and iterations (default 2). Tests lower them.
    pub argon2_memory_kib: u32,
    /// See `argon2_memory_kib`.
    pub argon2_iterations: u32,
    /// Source of protocol-visible time (timestamps, expiries, rate-limit
    /// refills). Not read from files; default [`Clock::system`]. Tests
    /// install [`Clock::manual`] and advance it instead of sleeping.
    #[serde(skip)]
    pub clock: Clock,
    /// Base of the media URLs handed to clients, e.g.
    /// `https://chat.example.com`. Default: `http://` and the bound HTTP
    /// listener address.
    pub public_http_url: Option<String>,
    /// Largest media file accepted, in bytes. Default 64 MiB.
    pub max_media_bytes: u64,
    /// Lifetime of signed media URLs, in seconds. Default 3,600.
    pub media_url_ttl_secs: u64,
    /// Media uploads and downloads in progress at once, server-wide; each
    /// holds one 64 KiB chunk in memory. Default 64.
    pub media_transfers: usize,
    /// Push gateway that receives notifications for users with no connected
    /// device, as `https://host[:port]/path` or `http://host[:port]/path`
    /// (see `push.rs` for the request). Default none: no notifications.
    pub push_gateway_url: Option<String>,
    /// Certificates (PEM) an `https://` gateway's certificate may chain to,
    /// besides the webpki roots (Mozilla's list): a private CA, or the
    /// gateway's own self-signed certificate. Default none.
    pub push_gateway_ca: Option<PathBuf>,
    /// Secret sent with every gateway request as `Authorization: Bearer
    /// <token>`, so that the gateway can refuse requests that are not
    /// chatd's. Over `http://` it travels in clear text. Default none.
    #[serde(skip_serializing)]
    pub push_gateway_token: Option<Secret>,
    /// Notifications queued towards the gateway; beyond, new ones are
    /// dropped (the messages are stored either way). Default 4,096.
    pub push_queue: usize,
    /// Whether notifications carry the start of the message text. Default
    /// true; never for end-to-end encrypted messages.
    pub push_preview: bool,
    /// Cluster mode (README, "Cluster mode"): off unless
    /// `cluster.nats_urls` is set.
    pub cluster: ClusterConfig,
}

/// Settings of cluster mode: several chatd nodes sharing NATS JetStream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers to connect to (`nats://host:port`). Empty (the
    /// default): single-node mode, no external service.
    pub nats_urls: Vec<String>,
    /// This node's number, unique in the cluster, 1 to 1023. Ids this node
    /// gives out (users, conversations) are distinct from every other
    /// node's by it. Required in cluster mode.
    pub node_id: u16,
    /// JetStream stream holding every acknowledged write. Default `CHATD`.
    pub stream: String,
    /// Replicas of the stream (1, 3 or 5). Default 3.
    pub replicas: usize,
    /// Conversation partitions: each has one owner node at a time, which
    /// alone sequences its conversations. Default 64; the same on every
    /// node, and never changed once the stream exists.
    pub partitions: u32,
    /// How long a partition's owner lease lasts without renewal, ms
    /// (renewed every third of it). A dead node's partitions move after
    /// about this long. Default 5,000.
    pub lease_ms: u64,
    /// Bound on a write's wait for JetStream's acknowledgement and on a
    /// request forwarded to another node, ms. Default 10,000.
    pub request_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats_urls: Vec::new(),
            node_id: 0,
            stream: "CHATD".into(),
            replicas: 3,
            partitions: 64,
            lease_ms: 5000,
            request_timeout_ms: 10_000,
        }
    }
}

impl ClusterConfig {
    /// Whether cluster mode is on.
    pub fn enabled(&self) -> bool {
        !self.nats_urls.is_empty()
    }
}

/// A configured secret: read from the file like any string, never printed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// A listen address, or `"off"` (or an empty string) for none.
fn listen_or_off<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    match text.trim() {
        "" | "off" => Ok(None),
        addr => addr.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// Writes a listen address, or `"off"` for none.
fn listen_or_off_out<S: serde::Serializer>(
    addr: &Option<SocketAddr>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match addr {
        Some(addr) => s.collect_str(addr),
        None => s.serialize_str("off"),
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tcp_listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 7480)),
            tls_listen: Some(SocketAddr::from(([127, 0, 0, 1], 7401))),
            quic_listen: Some(SocketAddr::from(([127, 0, 0, 1], 7402))),
            wss_listen: Some(SocketAddr::from(([127, 0, 0, 1], 7443))),
            tls_cert: None,
            tls_key: None,
            ws_allowed_origins: Vec::new(),
            max_connections_per_shard: 65_536,
            rate_connection_per_sec: 50,
            rate_connection_burst: 100,
            rate_user_per_sec: 100,
            rate_user_burst: 200,
            max_sessions_per_user: 32,
            login_failures_per_username: 10,
            login_failures_per_address: 30,
            data_dir: PathBuf::from("chatd-data"),
            shards: 0,
            durability: Durability::Sync,
            max_frame_bytes: chat_protocol::DEFAULT_MAX_FRAME_BYTES,
            max_message_bytes: 64 * 1024,
            max_group_members: 500,
            session_queue_frames: 1024,
            session_queue_bytes: 4 << 20,
            session_inflight_requests: 256,
            mesh_ring_capacity: 8192,
            storage_queue: 16_384,
            recent_messages: 256,
            heartbeat_interval_ms: 15_000,
            handshake_timeout_ms: 10_000,
            token_ttl_secs: 30 * 24 * 3600,
            shutdown_grace_ms: 5_000,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            clock: Clock::system(),
            public_http_url: None,
            max_media_bytes: 64 << 20,
            media_url_ttl_secs: 3600,
            media_transfers: 64,
            push_gateway_url: None,
            push_gateway_ca: None,
            push_gateway_token: None,
            push_queue: 4096,
            push_preview: true,
            cluster: ClusterConfig::default(),
        }
    }
}

/// One configuration key as the reference describes it.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// Name in the TOML file.
    pub key: &'static str,
    /// Default, as the reference writes it (Markdown).
    pub default: &'static str,
    /// What it does (Markdown).
    pub meaning: &'static str,
}

/// Every key of [`Config`] the file accepts, in the reference's order: the
/// one source of README's configuration table and of `chatd
/// --print-config`. A unit test checks it against [`Config`]'s fields.
pub const REFERENCE: &[Key] = &[
    Key {
        key: "tcp_listen",
        default: "`127.0.0.1:7400`",
        meaning: "plain TCP listener (port 0 picks one)",
    },
    Key {
        key: "http_listen",
        default: "`127.0.0.1:7480`",
        meaning: "HTTP listener: `GET /health`, `GET /metrics`, WebSocket `GET /ws`",
    },
    Key {
        key: "tls_listen",
        default: "`127.0.0.1:7401`",
        meaning: "TLS listener, ALPN `chat/1` (`\"off\"` disables)",
    },
    Key {
        key: "quic_listen",
        default: "`127.0.0.1:7402`",
        meaning: "QUIC endpoint, UDP, ALPN `chat/1` (`\"off\"` disables)",
    },
    Key {
        key: "wss_listen",
        default: "`127.0.0.1:7443`",
        meaning: "HTTPS listener: the HTTP routes over TLS, so `wss://…/ws` (`\"off\"` disables)",
    },
    Key {
        key: "tls_cert",
        default: "none",
        meaning: "certificate chain (PEM) for TLS, QUIC and HTTPS; without it and `tls_key` a self-signed one is generated into `data_dir/tls/`",
    },
    Key {
        key: "tls_key",
        default: "none",
        meaning: "private key (PEM: PKCS#8, PKCS#1 or SEC1) of `tls_cert`",
    },
    Key {
        key: "ws_allowed_origins",
        default: "`[]`",
        meaning: "browser origins allowed on `/ws` besides the server's own host; `\"*\"` allows any; requests without `Origin` are always allowed",
    },
    Key {
        key: "max_connections_per_shard",
        default: "65536",
        meaning: "connections beyond get `SERVER_BUSY` and are closed",
    },
    Key {
        key: "rate_connection_per_sec",
        default: "50",
        meaning: "SendMessage requests per second per connection (0 = unlimited)",
    },
    Key {
        key: "rate_connection_burst",
        default: "100",
        meaning: "SendMessage burst per connection above its rate",
    },
    Key {
        key: "rate_user_per_sec",
        default: "100",
        meaning: "SendMessage requests per second per user on one shard (0 = unlimited)",
    },
    Key {
        key: "rate_user_burst",
        default: "200",
        meaning: "SendMessage burst per user above its rate",
    },
    Key {
        key: "max_sessions_per_user",
        default: "32",
        meaning: "sessions one user may have open; further logins get `TOO_MANY_SESSIONS` (0 = unlimited)",
    },
    Key {
        key: "login_failures_per_username",
        default: "10",
        meaning: "failed logins per username per minute before `TOO_MANY_LOGIN_ATTEMPTS` (0 = unlimited)",
    },
    Key {
        key: "login_failures_per_address",
        default: "30",
        meaning: "failed logins per client address per minute before `TOO_MANY_LOGIN_ATTEMPTS` (0 = unlimited)",
    },
    Key {
        key: "data_dir",
        default: "`chatd-data`",
        meaning: "data directory: the store (`data_dir/store`), the commit log (`data_dir/log`), media, TLS files, the control socket (`data_dir/control.sock`)",
    },
    Key {
        key: "shards",
        default: "0 (= cores)",
        meaning: "shard threads",
    },
    Key {
        key: "durability",
        default: "`sync`",
        meaning: "`sync` or `buffered`, see \"Durability\"",
    },
    Key {
        key: "max_frame_bytes",
        default: "1048576",
        meaning: "largest frame body accepted",
    },
    Key {
        key: "max_message_bytes",
        default: "65536",
        meaning: "largest text + ciphertext + media reference",
    },
    Key {
        key: "max_group_members",
        default: "500",
        meaning: "group size limit",
    },
    Key {
        key: "session_queue_frames",
        default: "1024",
        meaning: "frames queued to one session before it is closed as a slow consumer",
    },
    Key {
        key: "session_queue_bytes",
        default: "4194304",
        meaning: "bytes queued to one session before it is closed as a slow consumer",
    },
    Key {
        key: "session_inflight_requests",
        default: "256",
        meaning: "requests of one connection processed at once; beyond, the server stops reading it",
    },
    Key {
        key: "mesh_ring_capacity",
        default: "8192",
        meaning: "messages per shard-to-shard ring",
    },
    Key {
        key: "storage_queue",
        default: "16384",
        meaning: "write jobs queued to the storage writer",
    },
    Key {
        key: "recent_messages",
        default: "256",
        meaning: "idempotency keys kept in memory per loaded conversation (older ones are looked up in the store)",
    },
    Key {
        key: "heartbeat_interval_ms",
        default: "15000",
        meaning: "announced in Welcome; sessions that send no complete frame for 3 intervals are closed",
    },
    Key {
        key: "handshake_timeout_ms",
        default: "10000",
        meaning: "time to send Hello",
    },
    Key {
        key: "token_ttl_secs",
        default: "2592000",
        meaning: "session token lifetime (30 days)",
    },
    Key {
        key: "shutdown_grace_ms",
        default: "5000",
        meaning: "bound on draining at shutdown",
    },
    Key {
        key: "argon2_memory_kib",
        default: "19456",
        meaning: "password hashing memory cost (argon2id), KiB",
    },
    Key {
        key: "argon2_iterations",
        default: "2",
        meaning: "password hashing iterations (argon2id)",
    },
    Key {
        key: "public_http_url",
        default: "`http://` + HTTP listener",
        meaning: "base of the signed media URLs handed to clients",
    },
    Key {
        key: "max_media_bytes",
        default: "67108864",
        meaning: "largest media upload (64 MiB)",
    },
    Key {
        key: "media_url_ttl_secs",
        default: "3600",
        meaning: "lifetime of signed media URLs",
    },
    Key {
        key: "media_transfers",
        default: "64",
        meaning: "media uploads and downloads in progress at once (each holds one 64 KiB chunk)",
    },
    Key {
        key: "push_gateway_url",
        default: "none",
        meaning: "`https://` or `http://` push gateway for notifications to offline users (none: no notifications)",
    },
    Key {
        key: "push_gateway_ca",
        default: "none",
        meaning: "PEM file of certificates an `https://` gateway may chain to, besides the webpki roots (a private CA, or the gateway's self-signed certificate)",
    },
    Key {
        key: "push_gateway_token",
        default: "none",
        meaning: "sent with every gateway request as `Authorization: Bearer <token>`; never logged or printed",
    },
    Key {
        key: "push_queue",
        default: "4096",
        meaning: "notifications queued towards the gateway; beyond, new ones are dropped and counted",
    },
    Key {
        key: "push_preview",
        default: "true",
        meaning: "notifications carry the first 100 characters of the text (never for encrypted messages)",
    },
    Key {
        key: "cluster.nats_urls",
        default: "`[]`",
        meaning: "NATS servers (`nats://host:port`) of a JetStream cluster: cluster mode (README, \"Cluster mode\"); empty: one node, no external service",
    },
    Key {
        key: "cluster.node_id",
        default: "none",
        meaning: "this node's number, 1–1023, unique in the cluster (required in cluster mode)",
    },
    Key {
        key: "cluster.stream",
        default: "`CHATD`",
        meaning: "JetStream stream holding every acknowledged write",
    },
    Key {
        key: "cluster.replicas",
        default: "3",
        meaning: "replicas of the stream (1, 3 or 5)",
    },
    Key {
        key: "cluster.partitions",
        default: "64",
        meaning: "conversation partitions, each sequenced by one owner node at a time; fixed when the stream is made (a node configured otherwise is refused at start)",
    },
    Key {
        key: "cluster.lease_ms",
        default: "5000",
        meaning: "a partition owner's lease without renewal; a dead node's partitions move after about this long",
    },
    Key {
        key: "cluster.request_timeout_ms",
        default: "10000",
        meaning: "bound on waiting for JetStream's acknowledgement and for a request forwarded to another node",
    },
];

/// The reference as a Markdown table (README, "Configuration").
pub fn reference_table() -> String {
    let mut out = String::from("| key | default | meaning |\n|---|---|---|\n");
    for k in REFERENCE {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            k.key, k.default, k.meaning
        ));
    }
    out
}

/// Markdown without its markup, for a TOML comment.
fn plain(markdown: &str) -> String {
    markdown.replace('`', "")
}

impl Config {
    /// The configuration as a TOML file: every key with its meaning and
    /// default in a comment, then its value here. Keys without a value
    /// are commented out; a secret is never printed. The output read back
    /// as a file gives the same configuration.
    pub fn to_toml(&self) -> String {
        let table = toml::Table::try_from(self).unwrap_or_default();
        let mut out = String::from(
            "# chatd configuration: every key, its meaning and default (README, \"Configuration\").\n",
        );
        for k in REFERENCE {
            out.push_str(&format!(
                "\n# {} (default: {})\n",
                plain(k.meaning),
                plain(k.default)
            ));
            let value = match k.key.split_once('.') {
                Some((section, key)) => table
                    .get(section)
                    .and_then(|t| t.as_table())
                    .and_then(|t| t.get(key)),
                None => table.get(k.key),
            };
            match value {
                // A dotted key: `section.key = value` is the key of the
                // section's table in TOML.
                Some(value) if k.key.contains('.') => {
                    out.push_str(&format!("{} = {value}\n", k.key));
                }
                Some(value) => {
                    let mut one = toml::Table::new();
                    one.insert(k.key.to_owned(), value.clone());
                    out.push_str(&toml::to_string(&one).unwrap_or_default());
                }
                None if k.key == "push_gateway_token" && self.push_gateway_token.is_some() => {
                    out.push_str("# push_gateway_token is set (not shown)\n");
                }
                None => out.push_str(&format!("# {} =\n", k.key)),
            }
        }
        out
    }
}

/// CPUs this process may run on (its affinity mask), at least 1.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Config {
    /// Number of shards to run: `shards`, or the available cores if 0.
    pub fn nr_shards(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            cores()
        }
    }

    /// Cluster mode: this node's number; 0 on a single node.
    pub fn node_number(&self) -> u16 {
        if self.cluster.enabled() {
            self.cluster.node_id
        } else {
            0
        }
    }

    /// Sessions silent this long are closed.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.heartbeat_interval_ms) * 3)
    }

    /// Settings for tests: cheap password hashing, a given data directory,
    /// free ports, no send rate limits (tests of other features send in
    /// bursts; the limits have their own tests), and a manual clock that
    /// tests advance through expiries instead of sleeping.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            tcp_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            quic_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            wss_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            data_dir: data_dir.into(),
            shards: 2,
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            rate_connection_per_sec: 0,
            rate_user_per_sec: 0,
            clock: Clock::manual(),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_can_be_switched_off() {
        let c: Config = toml::from_str(
            "tls_listen = \"off\"\nquic_listen = \"0.0.0.0:9000\"\nwss_listen = \"\"",
        )
        .unwrap();
        assert_eq!(c.tls_listen, None);
        assert_eq!(c.quic_listen, Some(SocketAddr::from(([0, 0, 0, 0], 9000))));
        assert_eq!(c.wss_listen, None);
        let d = Config::default();
        assert_eq!(d.tls_listen.map(|a| a.port()), Some(7401));
        assert!(toml::from_str::<Config>("tls_listen = \"nonsense\"").is_err());
    }

    #[test]
    fn secrets_are_read_but_never_printed() {
        let c: Config = toml::from_str("push_gateway_token = \"hunter2\"").unwrap();
        assert_eq!(
            c.push_gateway_token.as_ref().map(Secret::expose),
            Some("hunter2")
        );
        assert!(!format!("{c:?}").contains("hunter2"));
        let printed = c.to_toml();
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("# push_gateway_token is set (not shown)"));
    }

    /// A configuration with every optional key set, so that serializing
    /// it names every key but the secret.
    fn everything_set() -> Config {
        toml::from_str(
            "tls_cert = \"/etc/chatd/cert.pem\"\ntls_key = \"/etc/chatd/key.pem\"\n\
             public_http_url = \"https://chat.example.com\"\n\
             push_gateway_url = \"https://push.example.com/notify\"\n\
             push_gateway_ca = \"/etc/chatd/push-ca.pem\"\n\
             push_gateway_token = \"t\"\nws_allowed_origins = [\"https://app.example.com\"]\n\
             tls_listen = \"off\"",
        )
        .unwrap()
    }

    #[test]
    fn the_reference_names_every_key_once() {
        let table = toml::Table::try_from(everything_set()).unwrap();
        // A section's keys are `section.key`.
        let mut fields: Vec<String> = Vec::new();
        for (key, value) in &table {
            match value.as_table() {
                Some(section) => fields.extend(section.keys().map(|k| format!("{key}.{k}"))),
                None => fields.push(key.clone()),
            }
        }
        // Not serialized, so that it is never printed.
        fields.push("push_gateway_token".into());
        fields.sort_unstable();
        let mut listed: Vec<String> = REFERENCE.iter().map(|k| k.key.to_owned()).collect();
        listed.sort_unstable();
        assert_eq!(
            listed, fields,
            "config::REFERENCE and Config's fields differ"
        );
        for k in REFERENCE {
            assert!(!k.meaning.is_empty() && !k.default.is_empty(), "{}", k.key);
        }
    }

    #[test]
    fn printed_configuration_reads_back_the_same() {
        for config in [Config::default(), everything_set()] {
            let printed = config.to_toml();
            let back: Config =
                toml::from_str(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
            assert_eq!(
                toml::Table::try_from(&back).unwrap(),
                toml::Table::try_from(&config).unwrap()
            );
            for k in REFERENCE {
                assert!(
                    printed.contains(&format!("\n{} =", k.key))
                        || printed.contains(&format!("# {} ", k.key)),
                    "{} missing:\n{printed}",
                    k.key
                );
            }
        }
        let printed = Config::default().to_toml();
        assert!(
            printed.contains("\ntls_listen = \"127.0.0.1:7401\"\n"),
            "{printed}"
        );
        assert!(printed.contains("\n# tls_cert =\n"), "{printed}");
        assert!(
            everything_set()
                .to_toml()
                .contains("\ntls_listen = \"off\"\n")
        );
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let e = toml::from_str::<Config>("tcp_listen = \"127.0.0.1:1\"\nmax_group_membres = 10")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_group_membres"), "{e}");
    }

    /// README's configuration table is [`reference_table`]; with
    /// `UPDATE_README=1` this test writes it there.
    #[test]
    fn readme_table_is_the_reference() {
        const BEGIN: &str =
            "<!-- config reference: generated from server/src/config.rs REFERENCE -->\n";
        const END: &str = "<!-- end of config reference -->";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(&path).unwrap();
        let start = readme
            .find(BEGIN)
            .expect("README has the reference markers")
            + BEGIN.len();
        let end = start + readme[start..].find(END).expect("end marker");
        let table = reference_table();
        if readme[start..end] != table {
            if std::env::var_os("UPDATE_README").is_some() {
                let updated = format!("{}{table}{}", &readme[..start], &readme[end..]);
                std::fs::write(&path, updated).unwrap();
            } else {
                panic!(
                    "README's configuration table is not config::REFERENCE; run with UPDATE_README=1"
                );
            }
        }
    }
}
