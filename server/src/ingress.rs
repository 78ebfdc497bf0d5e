//! Ingress: the shard's listeners and what it does with each connection
//! they accept, up to the point where [`connection::serve`] takes over a
//! chat/1 session (or [`http::serve`] an HTTP connection).
//!
//! Every listener is bound with SO_REUSEPORT by each shard (`server.rs`),
//! so the kernel spreads connections over the shards; each shard accepts on
//! its own sockets. A connection holds one of the shard's
//! `max_connections_per_shard` slots ([`ConnectionSlot`]) for as long as it
//! lives; past the limit it gets SERVER_BUSY and is closed. TLS handshakes
//! run in the connection's own task, bounded by `handshake_timeout_ms`.
//!
//! [`connection::serve`]: crate::connection::serve
//! [`http::serve`]: crate::http::serve

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::shard::Shard;

/// One of the shard's `max_connections_per_shard` slots, given back when
/// the connection's task ends (however it ends).
#[derive(Debug)]
pub struct ConnectionSlot(Rc<Shard>);

impl ConnectionSlot {
    /// Takes a slot, or `None` when the shard is at its limit (counted in
    /// `chatd_connections_refused_total`; the caller refuses the connection).
    pub fn take(shard: &Rc<Shard>) -> Option<Self> {
        let c = &shard.connections;
        if c.get() >= shard.shared.config.max_connections_per_shard {
            metrics::counter!("chatd_connections_refused_total").increment(1);
            return None;
        }
        c.set(c.get() + 1);
        Some(Self(shard.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let c = &self.0.connections;
        c.set(c.get().saturating_sub(1));
    }
}

/// The sockets a shard accepts on, bound with SO_REUSEPORT.
#[derive(Debug)]
pub struct Listeners {
    /// Plain TCP sessions.
    pub tcp: std::net::TcpListener,
    /// HTTP (`/health`, `/metrics`, `/ws`).
    pub http: std::net::TcpListener,
    /// TLS sessions, if enabled.
    pub tls: Option<std::net::TcpListener>,
    /// HTTPS (`wss://`), if enabled.
    pub wss: Option<std::net::TcpListener>,
    /// QUIC (UDP), if enabled.
    pub quic: Option<std::net::UdpSocket>,
    /// Certificate configurations, when any secure listener is enabled.
    pub tls_setup: Option<crate::transport::tls::TlsSetup>,
}

/// What a TCP listener of the shard serves.
#[derive(Clone)]
enum Serves {
    /// chat/1 sessions over plain TCP.
    Tcp,
    /// chat/1 sessions over TLS.
    Tls(tokio_rustls::TlsAcceptor),
    /// HTTP.
    Http,
    /// HTTP over TLS.
    Https(tokio_rustls::TlsAcceptor),
}

/// Accepts on `listener` until the task is aborted at shutdown.
async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, serves: Serves) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                // HTTP connections take a slot only when they upgrade to a
                // WebSocket session.
                let slot = match serves {
                    Serves::Http | Serves::Https(_) => None,
                    _ => match ConnectionSlot::take(&shard) {
                        Some(slot) => Some(slot),
                        None => {
                            let (_, wr) = stream.into_split();
                            let sink = crate::transport::stream::StreamSink::new(wr);
                            tokio::task::spawn_local(crate::connection::refuse(sink));
                            continue;
                        }
                    },
                };
                spawn_session(shard.clone(), stream, peer, &serves, slot);
            }
            // Out of file descriptors and similar: back off briefly
            // rather than spin.
            Err(e) => {
                tracing::warn!(shard = shard.id, cause = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Spawns the task serving an accepted connection, holding `slot` until it
/// ends. Each kind of listener spawns its own future, so that a task is only
/// as large as its transport's session needs: a plain TCP session does not
/// carry the space of a TLS handshake or an HTTP connection while it idles.
fn spawn_session(
    shard: Rc<Shard>,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    serves: &Serves,
    slot: Option<ConnectionSlot>,
) {
    fn spawn(session: impl Future<Output = ()> + 'static, slot: Option<ConnectionSlot>) {
        tokio::task::spawn_local(async move {
            session.await;
            drop(slot);
        });
    }
    let handshake = Duration::from_millis(shard.shared.config.handshake_timeout_ms);
    match serves.clone() {
        Serves::Tcp => {
            let (rd, wr) = stream.into_split();
            spawn(serve_stream(shard, rd, wr, peer, "tcp"), slot);
        }
        Serves::Tls(acceptor) => spawn(
            async move {
                if let Some(tls) = tls_accept(&acceptor, stream, handshake, peer).await {
                    let (rd, wr) = tokio::io::split(tls);
                    serve_stream(shard, rd, wr, peer, "tls").await;
                }
            },
            slot,
        ),
        Serves::Http => {
            let p = crate::http::Peer {
                addr: Some(peer.ip()),
                ws_transport: "ws",
            };
            spawn(crate::http::serve(shard, stream, p), slot);
        }
        Serves::Https(acceptor) => spawn(
            async move {
                if let Some(tls) = tls_accept(&acceptor, stream, handshake, peer).await {
                    let p = crate::http::Peer {
                        addr: Some(peer.ip()),
                        ws_transport: "wss",
                    };
                    crate::http::serve(shard, tls, p).await;
                }
            },
            slot,
        ),
    }
}

/// A TLS handshake bounded by `handshake`; `None` if it failed or took too
/// long.
async fn tls_accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    handshake: Duration,
    peer: std::net::SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(%peer, cause = %e, "TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// A session over a length-prefixed byte stream (TCP or TLS).
fn serve_stream(
    shard: Rc<Shard>,
    rd: impl tokio::io::AsyncRead + Unpin + 'static,
    wr: impl tokio::io::AsyncWrite + Unpin + 'static,
    peer: std::net::SocketAddr,
    transport: &'static str,
) -> impl Future<Output = ()> {
    use crate::transport::stream::{StreamSink, StreamSource};
    let max = shard.shared.config.max_frame_bytes;
    let span = tracing::debug_span!("session", shard = shard.id, %peer, transport);
    crate::connection::serve(
        shard,
        StreamSource::new(rd, max),
        StreamSink::new(wr),
        Some(peer.ip()),
        crate::transport::Capabilities::default(),
        transport,
    )
    .instrument(span)
}

/// A shard's accept loops, running until [`stop_accepting`](Self::stop_accepting).
#[derive(Debug)]
pub struct Ingress {
    accepting: Vec<JoinHandle<()>>,
    quic: Option<quinn::Endpoint>,
}

/// Starts accepting on every listener of `listeners`.
pub fn start(shard: &Rc<Shard>, listeners: Listeners) -> std::io::Result<Ingress> {
    let mut accepting = Vec::new();
    let mut listen = |l: std::net::TcpListener, serves: Serves| -> std::io::Result<()> {
        let l = TcpListener::from_std(l)?;
        accepting.push(tokio::task::spawn_local(accept_loop(
            shard.clone(),
            l,
            serves,
        )));
        Ok(())
    };
    listen(listeners.tcp, Serves::Tcp)?;
    listen(listeners.http, Serves::Http)?;
    let setup = listeners.tls_setup;
    if let (Some(l), Some(t)) = (listeners.tls, &setup) {
        listen(l, Serves::Tls(t.chat.clone().into()))?;
    }
    if let (Some(l), Some(t)) = (listeners.wss, &setup) {
        listen(l, Serves::Https(t.https.clone().into()))?;
    }
    let quic = match (listeners.quic, &setup) {
        (Some(socket), Some(t)) => {
            let endpoint = quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                Some(crate::transport::quic::server_config(
                    t.quic.clone(),
                    &shard.shared.config,
                )),
                socket,
                Arc::new(quinn::TokioRuntime),
            )?;
            accepting.push(tokio::task::spawn_local(
                crate::transport::quic::accept_loop(shard.clone(), endpoint.clone()),
            ));
            Some(endpoint)
        }
        _ => None,
    };
    Ok(Ingress { accepting, quic })
}

impl Ingress {
    /// Stops taking new connections; those already accepted go on.
    pub fn stop_accepting(&self) {
        for task in &self.accepting {
            task.abort();
        }
        if let Some(endpoint) = &self.quic {
            endpoint.set_server_config(None);
        }
    }

    /// Closes the QUIC endpoint once the sessions are gone, letting the
    /// closing connections tell their peers (at most 500 ms).
    pub async fn close(self) {
        if let Some(endpoint) = self.quic {
            endpoint.close(quinn::VarInt::from_u32(0), b"");
            let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
        }
    }
}
