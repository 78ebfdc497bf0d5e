//! Starting and stopping the whole server.

use hashbrown::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::accounts::Accounts;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::lifecycle::Lifecycle;
use crate::mesh::Mesh;
use crate::placement::Placement;
use crate::shard::Handles;
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
    push: crate::push::PushThread,
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
        let recovered = store.all_last_seqs()?;
        let last_user_id = store.max_user_id()?;
        let last_conversation_id = store.max_conversation_id()?;
        tracing::info!(
            conversations = recovered.len(),
            users = last_user_id,
            "store recovered"
        );
        let (writer, writer_thread) =
            Writer::start(store.clone(), config.durability, config.storage_queue)
                .map_err(io("starting the storage thread"))?;
        let nr_shards = config.nr_shards();

        let tcp_local = |l: &std::net::TcpListener| l.local_addr();
        let (tcp_addr, listeners) = per_shard(
            config.tcp_listen,
            Type::STREAM,
            nr_shards,
            reuseport_listener,
            tcp_local,
        )?;
        let (http_addr, http_listeners) = per_shard(
            config.http_listen,
            Type::STREAM,
            nr_shards,
            reuseport_listener,
            tcp_local,
        )?;
        let (tls_addr, tls_listeners) = optional_per_shard(
            config.tls_listen,
            Type::STREAM,
            nr_shards,
            reuseport_listener,
            tcp_local,
        )?;
        let (wss_addr, wss_listeners) = optional_per_shard(
            config.wss_listen,
            Type::STREAM,
            nr_shards,
            reuseport_listener,
            tcp_local,
        )?;
        let (quic_addr, quic_sockets) = optional_per_shard(
            config.quic_listen,
            Type::DGRAM,
            nr_shards,
            crate::transport::quic::reuseport_socket,
            |s: &std::net::UdpSocket| s.local_addr(),
        )?;
        let secure = tls_addr.is_some() || wss_addr.is_some() || quic_addr.is_some();
        let tls = if secure {
            Some(crate::transport::tls::setup(&config)?)
        } else {
            None
        };
        let cert_path = tls.as_ref().map(|t| t.cert_path.clone());
        let certificates = tls.as_ref().map(|t| t.certificates.clone());
        let base_url = config
            .public_http_url
            .clone()
            .unwrap_or_else(|| format!("http://{http_addr}"));
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

        let media = Arc::new(media);
        let handles = Handles {
            place: Placement::new(nr_shards),
            mesh: Arc::new(Mesh::new(nr_shards, config.mesh_ring_capacity)),
            directory: Arc::new(crate::directory::Directory::new(nr_shards)),
            accounts: Accounts::new(&config, store.clone(), writer.clone(), last_user_id),
            catalog: Catalog::new(
                &config,
                store.clone(),
                writer.clone(),
                media.clone(),
                last_conversation_id,
            ),
            store,
            writer,
            media,
            push,
            life: Lifecycle::new(),
            config: Arc::new(config),
        };
        let life = handles.life.clone();
        let mut per_shard: Vec<HashMap<u64, u64>> = vec![HashMap::new(); nr_shards];
        for (conversation, last_seq) in recovered {
            if let Some(map) = per_shard.get_mut(handles.place.owner_of(conversation)) {
                map.insert(conversation, last_seq);
            }
        }
        let mut shards = Vec::with_capacity(nr_shards);
        let sockets = listeners
            .into_iter()
            .zip(http_listeners)
            .zip(tls_listeners)
            .zip(wss_listeners)
            .zip(quic_sockets);
        for (id, (((((tcp, http), tls_l), wss), quic), recovered)) in
            sockets.zip(per_shard).enumerate()
        {
            let handles = handles.clone();
            let listeners = crate::ingress::Listeners {
                tcp,
                http,
                tls: tls_l,
                wss,
                quic,
                tls_setup: tls.clone(),
            };
            let handle = thread::Builder::new()
                .name(format!("chatd-shard-{id}"))
                .spawn(move || {
                    let life = handles.life.clone();
                    if let Err(e) = crate::shard::run(id, handles, listeners, recovered) {
                        tracing::error!(shard = id, cause = %e, "shard failed");
                        life.shut_down();
                    }
                })
                .map_err(io("starting a shard thread"))?;
            shards.push(handle);
        }
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
            push: push_thread,
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
        // The push and writer threads exit once their last handles are
        // gone, which they are once the shards have stopped.
        self.push.join();
        self.writer.join();
    }
}
