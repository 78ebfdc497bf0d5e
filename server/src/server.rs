//! Starting and stopping the whole server.

use hashbrown::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use chat_protocol::{ConversationId, ErrorCode, pb};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::config::Config;
use crate::lifecycle::Lifecycle;
use crate::mesh::ShardId;
use crate::reply;
use crate::shard::{Handles, Shard};
use crate::storage::writer::{Writer, WriterThread};
use crate::storage::{StorageError, Store};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The data directory or a socket could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The store could not be opened or recovered.
    #[error("opening the store: {0}")]
    Storage(#[from] StorageError),
    /// Cluster mode: the cluster could not be joined.
    #[error("{0}")]
    Cluster(#[from] crate::cluster::LinkError),
    /// The certificate could not be loaded or generated.
    #[error("setting up TLS: {0}")]
    Tls(#[from] crate::transport::tls::TlsError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
    let what = what.into();
    move |source| StartError::Io { what, source }
}

/// A running server. Dropping it without [`ServerHandle::shutdown`] leaves
/// the threads running until the process exits.
#[derive(Debug)]
pub struct ServerHandle {
    life: Lifecycle,
    shards: Vec<thread::JoinHandle<()>>,
    writer: WriterThread,
    link: Option<crate::cluster::LinkRuntime>,
    push: crate::push::PushThread,
    control: Option<crate::control::Control>,
    tcp_addr: SocketAddr,
    http_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    quic_addr: Option<SocketAddr>,
    wss_addr: Option<SocketAddr>,
    cert_path: Option<std::path::PathBuf>,
    certificates: Option<Arc<crate::transport::tls::Certificates>>,
}

/// Fails if any socket already holds `addr`: another of this server's
/// listeners or another process. SO_REUSEPORT, which lets every shard bind
/// the same address, would otherwise let a second listener of the same user
/// join the first silently and receive part of its connections. The probe
/// is never listened on, so it leaves nothing behind; a TCP probe sets
/// SO_REUSEADDR so that connections of an earlier run still in TIME_WAIT do
/// not count as a holder (a listening socket still does).
fn ensure_unclaimed(addr: SocketAddr, kind: Type) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), kind, None)?;
    if kind == Type::STREAM {
        probe.set_reuse_address(true)?;
    }
    probe.bind(&addr.into()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            std::io::Error::new(
                e.kind(),
                "address already in use (by another listener of this configuration or another process)",
            )
        } else {
            e
        }
    })
}

/// One socket per shard on the same address: the first binds `addr` (port
/// 0 picks a port), the others bind the address the first got. `kind` is
/// the socket type, for the check that nothing else holds `addr`.
fn per_shard<T>(
    addr: SocketAddr,
    kind: Type,
    nr_shards: usize,
    bind: impl Fn(SocketAddr) -> std::io::Result<T>,
    local: impl Fn(&T) -> std::io::Result<SocketAddr>,
) -> Result<(SocketAddr, Vec<T>), StartError> {
    ensure_unclaimed(addr, kind).map_err(io(format!("binding {addr}")))?;
    let first = bind(addr).map_err(io(format!("binding {addr}")))?;
    let bound = local(&first).map_err(io("reading the bound address"))?;
    let mut all = vec![first];
    for _ in 1..nr_shards {
        all.push(bind(bound).map_err(io(format!("binding {bound}")))?);
    }
    Ok((bound, all))
}

/// Per-shard sockets of an optional listener.
fn optional_per_shard<T>(
    addr: Option<SocketAddr>,
    kind: Type,
    nr_shards: usize,
    bind: impl Fn(SocketAddr) -> std::io::Result<T>,
    local: impl Fn(&T) -> std::io::Result<SocketAddr>,
) -> Result<(Option<SocketAddr>, Vec<Option<T>>), StartError> {
    match addr {
        None => Ok((None, (0..nr_shards).map(|_| None).collect())),
        Some(addr) => {
            let (bound, all) = per_shard(addr, kind, nr_shards, bind, local)?;
            Ok((Some(bound), all.into_iter().map(Some).collect()))
        }
    }
}

/// Binds a listener with SO_REUSEPORT so that every shard can bind the same
/// address and the kernel spreads connections among them.
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Every listener of every shard, bound, with the addresses they took and
/// the TLS setup the secure ones share.
struct Bound {
    tcp_addr: SocketAddr,
    http_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    quic_addr: Option<SocketAddr>,
    wss_addr: Option<SocketAddr>,
    cert_path: Option<std::path::PathBuf>,
    certificates: Option<Arc<crate::transport::tls::Certificates>>,
    /// One set per shard.
    listeners: Vec<crate::ingress::Listeners>,
}

/// Binds each configured listener once per shard (SO_REUSEPORT) and, if
/// any is secure, loads or generates the certificate.
fn bind(config: &Config, nr_shards: usize) -> Result<Bound, StartError> {
    let tcp_local = |l: &std::net::TcpListener| l.local_addr();
    let stream = |addr| per_shard(addr, Type::STREAM, nr_shards, reuseport_listener, tcp_local);
    let optional_stream =
        |addr| optional_per_shard(addr, Type::STREAM, nr_shards, reuseport_listener, tcp_local);
    let (tcp_addr, tcp) = stream(config.tcp_listen)?;
    let (http_addr, http) = stream(config.http_listen)?;
    let (tls_addr, tls) = optional_stream(config.tls_listen)?;
    let (wss_addr, wss) = optional_stream(config.wss_listen)?;
    let (quic_addr, quic) = optional_per_shard(
        config.quic_listen,
        Type::DGRAM,
        nr_shards,
        crate::transport::quic::reuseport_socket,
        |s: &std::net::UdpSocket| s.local_addr(),
    )?;
    let secure = tls_addr.is_some() || wss_addr.is_some() || quic_addr.is_some();
    let tls_setup = if secure {
        Some(crate::transport::tls::setup(config)?)
    } else {
        None
    };
    let cert_path = tls_setup.as_ref().map(|t| t.cert_path.clone());
    let certificates = tls_setup.as_ref().map(|t| t.certificates.clone());
    let listeners = tcp
        .into_iter()
        .zip(http)
        .zip(tls)
        .zip(wss)
        .zip(quic)
        .map(
            |((((tcp, http), tls), wss), quic)| crate::ingress::Listeners {
                tcp,
                http,
                tls,
                wss,
                quic,
                tls_setup: tls_setup.clone(),
            },
        )
        .collect();
    Ok(Bound {
        tcp_addr,
        http_addr,
        tls_addr,
        quic_addr,
        wss_addr,
        cert_path,
        certificates,
        listeners,
    })
}

/// Starts one thread per shard, each with its listeners and the recovered
/// last seqs of the conversations it owns.
fn spawn_shards(
    handles: &Handles,
    listeners: Vec<crate::ingress::Listeners>,
    recovered: Vec<(u64, u64)>,
) -> Result<Vec<thread::JoinHandle<()>>, StartError> {
    let place = handles.place;
    let mut per_shard: Vec<HashMap<u64, u64>> = vec![HashMap::new(); place.nr_shards()];
    for (conversation, last_seq) in recovered {
        if let Some(map) = per_shard.get_mut(place.owner_of(ConversationId(conversation))) {
            map.insert(conversation, last_seq);
        }
    }
    let mut shards = Vec::with_capacity(place.nr_shards());
    for (id, (listeners, recovered)) in listeners.into_iter().zip(per_shard).enumerate() {
        let handles = handles.clone();
        let handle = thread::Builder::new()
            .name(format!("chatd-shard-{id}"))
            .spawn(move || {
                let life = handles.life.clone();
                if let Err(e) = run_shard(id, handles, listeners, recovered) {
                    tracing::error!(shard = id, cause = %e, "shard failed");
                    life.shut_down();
                }
            })
            .map_err(io("starting a shard thread"))?;
        shards.push(handle);
    }
    Ok(shards)
}

/// Threads of a shard's blocking pool, which runs its store reads, password
/// hashes (bounded per shard, see `Home::hashing`) and other blocking
/// calls. Reads are bounded per session; beyond this many at once they
/// queue. Each thread that has run holds its stack and its allocator cache
/// until it has been idle for 10 s.
const BLOCKING_THREADS: usize = 16;

/// Runs shard `id` on the current thread until shutdown completes: its
/// runtime, the shard, its ingress, and the drain at shutdown.
fn run_shard(
    id: ShardId,
    handles: Handles,
    listeners: crate::ingress::Listeners,
    recovered: HashMap<u64, u64>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name(format!("chatd-shard-{id}-blocking"))
        .build()?;
    let local = tokio::task::LocalSet::new();
    let grace = Duration::from_millis(handles.config.shutdown_grace_ms);
    let result = local.block_on(&runtime, async move {
        let shard = Shard::start(id, handles, recovered);
        let ingress = crate::ingress::start(&shard, listeners)?;
        let mut shutdown = shard.shared.life.subscribe();
        let _ = shutdown.wait_for(|&s| s).await;
        ingress.stop_accepting();
        let goaway = reply::push(pb::server_frame::Body::GoAway(pb::GoAway {
            code: ErrorCode::ShuttingDown as i32,
            message: "server shutting down".into(),
            reconnect_after_ms: 1000,
        }));
        if tokio::time::timeout(grace, shard.drain(goaway))
            .await
            .is_err()
        {
            tracing::warn!(shard = id, "shutdown grace period elapsed");
        }
        ingress.close().await;
        Ok::<(), std::io::Error>(())
    });
    runtime.shutdown_timeout(grace);
    result
}

impl ServerHandle {
    /// Opens the store, recovers every conversation's last seq, binds the
    /// listeners and starts the shards. Returns once connections are
    /// accepted.
    pub fn start(config: Config) -> Result<Self, StartError> {
        // First, so that opening the store (replaying its log) is counted.
        crate::metrics::install();
        std::fs::create_dir_all(&config.data_dir)
            .map_err(io(format!("creating {}", config.data_dir.display())))?;
        let store = Store::open(&config.data_dir.join("store"), &config.data_dir.join("log"))?;
        // In cluster mode the stream is what makes a write durable; the
        // local store is a view of it that a crash rolls back to its last
        // applied record, and catches up from there.
        let local_durability = if config.cluster.enabled() {
            crate::config::Durability::Buffered
        } else {
            config.durability
        };
        let (writer, writer_thread) =
            Writer::start(store.clone(), local_durability, config.storage_queue)
                .map_err(io("starting the storage thread"))?;
        let (writer, link_runtime) = if config.cluster.enabled() {
            let (link, runtime) = crate::cluster::Link::start(&config, &store, writer.clone())?;
            (writer.replicated(link), Some(runtime))
        } else {
            (writer, None)
        };
        // In cluster mode other nodes write too: owners read each
        // conversation's last seq from the store when they load it.
        let recovered = if config.cluster.enabled() {
            Vec::new()
        } else {
            store.all_last_seqs()?
        };
        let last_user_id = store.max_user_id()?;
        let last_conversation_id = store.max_conversation_id()?;
        tracing::info!(
            conversations = recovered.len(),
            users = last_user_id,
            "store recovered"
        );
        let control_store = store.clone();
        let nr_shards = config.nr_shards();
        let bound = bind(&config, nr_shards)?;
        let base_url = config
            .public_http_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", bound.http_addr));
        let media = crate::media::Media::open(
            &config.data_dir,
            base_url,
            config.media_url_ttl_secs,
            config.max_media_bytes,
            config.media_transfers,
        )
        .map_err(io("opening the media directory"))?
        .with_clock(config.clock.clone());
        let (push, push_thread) = crate::push::start(&config, store.clone(), writer.clone())
            .map_err(io("starting the push thread"))?;

        let ids = (last_user_id, last_conversation_id);
        let handles = Handles::new(config, store, writer, Arc::new(media), push, ids);
        let life = handles.life.clone();
        let Bound {
            tcp_addr,
            http_addr,
            tls_addr,
            quic_addr,
            wss_addr,
            cert_path,
            certificates,
            listeners,
        } = bound;
        let data_dir = handles.config.data_dir.clone();
        let shards = spawn_shards(&handles, listeners, recovered)?;
        // Last, so that a start that fails leaves no thread holding the
        // store. Without it the server runs on; only `chatd backup` needs it.
        let control = crate::control::Control::start(control_store, handles.mesh.clone(), &data_dir)
            .inspect_err(|e| {
                tracing::warn!(cause = %e, "no control socket; chatd backup will not reach this server")
            })
            .ok();
        tracing::info!(
            %tcp_addr,
            %http_addr,
            tls = ?tls_addr,
            quic = ?quic_addr,
            wss = ?wss_addr,
            nr_shards,
            "listening"
        );
        // The writer and push threads exit once the last handle to them is
        // gone: the shards' (when they stop) and these, dropped here.
        drop(handles);
        Ok(Self {
            life,
            shards,
            writer: writer_thread,
            link: link_runtime,
            push: push_thread,
            control,
            tcp_addr,
            http_addr,
            tls_addr,
            quic_addr,
            wss_addr,
            cert_path,
            certificates,
        })
    }

    /// Address of the plain TCP listener.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// Address of the HTTP listener (`/health`, `/metrics`).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Address of the TLS listener, if enabled.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Address of the QUIC endpoints (UDP), if enabled.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic_addr
    }

    /// Address of the HTTPS listener (`wss://…/ws`), if enabled.
    pub fn wss_addr(&self) -> Option<SocketAddr> {
        self.wss_addr
    }

    /// The certificate file TLS, HTTPS and QUIC present (generated or
    /// configured), if any of them is enabled. Clients that should trust a
    /// generated certificate add this file to their trusted roots.
    pub fn cert_path(&self) -> Option<&std::path::Path> {
        self.cert_path.as_deref()
    }

    /// Reads the TLS certificate and key files again (`tls_cert` and
    /// `tls_key`, or the generated pair): TLS, WebSocket-over-TLS and QUIC
    /// handshakes from now on present them, and established sessions go on.
    /// On error the certificate in use stays. Returns whether a TLS-based
    /// listener is running (without one there is nothing to reload).
    pub fn reload_tls(&self) -> Result<bool, crate::transport::tls::TlsError> {
        let Some(certificates) = &self.certificates else {
            return Ok(false);
        };
        match certificates.reload() {
            Ok(()) => {
                tracing::info!("TLS certificate reloaded");
                Ok(true)
            }
            Err(e) => {
                tracing::error!(cause = %e, "reloading the TLS certificate failed; the previous one stays in use");
                Err(e)
            }
        }
    }

    /// Resolves once a shutdown has begun, whoever began it (a storage
    /// failure stops the server by itself).
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.life.subscribe()
    }

    /// Whether the server stopped (or is stopping) because storage failed:
    /// acknowledged data is safe, but nothing more could be written.
    pub fn storage_failed(&self) -> bool {
        self.life.failed()
    }

    /// Begins a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        self.life.shut_down();
    }

    /// Stops accepting, sends GoAway to every session, waits (bounded by
    /// `shutdown_grace_ms`) for in-flight writes and queued frames, and
    /// makes the store durable. Blocks the calling thread.
    pub fn shutdown(self) {
        self.begin_shutdown();
        self.wait();
    }

    /// Waits until the server has stopped (after a shutdown began, by
    /// [`ServerHandle::begin_shutdown`] or a storage failure).
    pub fn wait(self) {
        for shard in self.shards {
            let _ = shard.join();
        }
        // A backup in progress gives up; the control thread lets the store go.
        if let Some(control) = self.control {
            control.stop();
        }
        // The push and writer threads exit once their last handles are
        // gone, which they are once the shards have stopped.
        self.push.join();
        // The link's consumer holds a handle to the local writer.
        if let Some(link) = self.link {
            link.stop();
        }
        self.writer.join();
    }
}
