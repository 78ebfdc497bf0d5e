//! QUIC (`quic://`): ALPN `chat/1`, one bidirectional stream per session,
//! datagrams for ephemeral pushes.
//!
//! Every shard runs its own quinn endpoint on a UDP socket bound with
//! SO_REUSEPORT to the shared `quic_listen` port. The kernel picks the
//! socket for each datagram by hashing its 4-tuple, so all packets of one
//! client address and port reach the same shard, which holds the QUIC
//! connection and the session. The endpoints tell clients not to migrate
//! (`disable_active_migration`); a NAT rebinding that changes the client's
//! port lands on another shard's endpoint, which does not know the
//! connection: the client times out, reconnects and resumes
//! (`spec/README.md`, "Transports").
//!
//! The session is the first bidirectional stream the client opens; it
//! carries length-prefixed frames exactly like TCP
//! ([`super::stream`]). Further streams are not allowed (the stream limit
//! is 1). When the connection negotiated datagrams and the client's Hello
//! lists `datagrams`, TypingEvent and PresenceEvent go out as datagrams
//! (one frame body each, falling back to the stream when too large); a
//! client may send `Typing` as a datagram. Other datagrams from the client,
//! and undecodable ones, are dropped: datagrams are unreliable by design.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use chat_protocol::pb::{self, client_frame::Body as C};
use prost::Message as _;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::Instrument;

use super::stream::{StreamSink, StreamSource};
use super::{Capabilities, FrameSink, FrameSource, Incoming};
use crate::session_table::{CloseReason, Outbound};
use crate::shard::Shard;

/// Datagrams buffered per connection in each direction, in bytes; beyond,
/// quinn drops the oldest (incoming) or refuses (outgoing, which then falls
/// back to the stream).
const DATAGRAM_BUFFER: usize = 64 * 1024;

/// Unread bytes a client may have in flight towards the server on its
/// stream (and on the connection). Reading stops while the session's
/// in-flight requests are at their limit, so this bounds what a client can
/// make the server buffer.
const RECEIVE_WINDOW: u32 = 1 << 20;

/// Bytes quinn holds for a client that does not read (sent, not yet
/// acknowledged, or waiting for flow-control credit). quinn's default is
/// 10 MB; a slow consumer should hit the session queue bound instead.
const SEND_WINDOW: u64 = 2 << 20;

/// Receive and send buffer asked for on each shard's UDP socket, in bytes.
/// With the kernel's default (about 200 KiB) a burst of handshakes (1,200
/// byte Initial packets) from a few hundred clients overflows it, and each
/// dropped packet costs its client a retransmission timeout.
const SOCKET_BUFFER: usize = 4 << 20;

/// Binds a UDP socket with SO_REUSEPORT, so that every shard's endpoint
/// can share the port.
pub fn reuseport_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Every QUIC connection of the shard shares this socket: room for
    // bursts from many clients at once (the kernel caps the request at
    // net.core.rmem_max / wmem_max).
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The quinn server configuration: the shared certificate, one
/// bidirectional stream per connection, the idle timeout of the session.
pub fn server_config(
    crypto: Arc<quinn::crypto::rustls::QuicServerConfig>,
    config: &crate::Config,
) -> quinn::ServerConfig {
    let mut server = quinn::ServerConfig::with_crypto(crypto);
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_BUFFER)
        .stream_receive_window(VarInt::from_u32(RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(RECEIVE_WINDOW))
        .send_window(SEND_WINDOW);
    // The session's own idle timeout (3 heartbeats) decides; QUIC's is a
    // backstop for peers that vanish without a word.
    if let Ok(idle) = quinn::IdleTimeout::try_from(config.idle_timeout() + Duration::from_secs(5)) {
        transport.max_idle_timeout(Some(idle));
    }
    server.transport_config(Arc::new(transport));
    server.migration(false);
    server
}

/// Accepts QUIC connections on this shard's endpoint until it is closed.
pub async fn accept_loop(shard: Rc<Shard>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let Some(slot) = crate::ingress::ConnectionSlot::take(&shard) else {
            incoming.refuse();
            continue;
        };
        let peer = incoming.remote_address();
        let span = tracing::debug_span!("session", shard = shard.id, %peer, transport = "quic");
        let session = handshake(shard.clone(), Box::new(incoming)).instrument(span);
        tokio::task::spawn_local(async move {
            session.await;
            drop(slot);
        });
    }
}

/// Completes the handshake, then serves the session. The handshake's state
/// (the client's first packets, the TLS exchange, the timer) is about 2 KiB
/// and lives in a separate allocation freed once it is done, so an
/// established session keeps only what serving it needs.
async fn handshake(shard: Rc<Shard>, incoming: Box<quinn::Incoming>) {
    let peer = incoming.remote_address();
    let timeout = Duration::from_millis(shard.shared.config.handshake_timeout_ms);
    let accepted = Box::pin(tokio::time::timeout(timeout, async move {
        let conn = incoming.accept()?.await?;
        let (send, recv) = conn.accept_bi().await?;
        Ok::<_, quinn::ConnectionError>((conn, send, recv))
    }))
    .await;
    let (conn, send, recv) = match accepted {
        Ok(Ok(parts)) => parts,
        Ok(Err(e)) => {
            tracing::debug!(cause = %e, "QUIC handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("QUIC client opened no stream in time");
            return;
        }
    };
    let caps = Capabilities {
        datagrams: conn.max_datagram_size().is_some(),
        ..Capabilities::default()
    };
    let max = shard.shared.config.max_frame_bytes;
    let source = QuicSource {
        stream: StreamSource::new(recv, max),
        conn: conn.clone(),
        datagrams_on: caps.datagrams_on.clone(),
    };
    let sink = QuicSink {
        stream: StreamSink::new(send),
        conn,
        datagrams_on: caps.datagrams_on.clone(),
        close_code: 0,
    };
    crate::connection::serve(shard, source, sink, Some(peer.ip()), caps, "quic").await;
}

/// Client frames from the session stream, and `Typing` from datagrams.
struct QuicSource {
    stream: StreamSource<RecvStream>,
    conn: Connection,
    datagrams_on: Rc<std::cell::Cell<bool>>,
}

impl FrameSource for QuicSource {
    async fn next(&mut self) -> Incoming {
        if !self.datagrams_on.get() {
            return self.stream.next().await;
        }
        tokio::select! {
            incoming = self.stream.next() => incoming,
            datagram = self.conn.read_datagram() => match datagram {
                Err(_) => Incoming::Closed,
                Ok(body) => match pb::ClientFrame::decode(body) {
                    Ok(frame) if matches!(frame.body, Some(C::Typing(_))) => {
                        metrics::counter!("chatd_datagrams_received_total").increment(1);
                        Incoming::Frame(frame)
                    }
                    _ => {
                        metrics::counter!("chatd_datagrams_dropped_total").increment(1);
                        Incoming::Activity
                    }
                },
            },
        }
    }
}

/// Server frames on the session stream, ephemeral ones as datagrams when
/// both sides support them.
struct QuicSink {
    stream: StreamSink<SendStream>,
    conn: Connection,
    datagrams_on: Rc<std::cell::Cell<bool>>,
    /// The application error code the connection closes with when the
    /// sink is dropped (`spec/framing.md`, "QUIC").
    close_code: u32,
}

impl FrameSink for QuicSink {
    async fn send(&mut self, batch: &[Outbound]) -> std::io::Result<()> {
        if !self.datagrams_on.get() || !batch.iter().any(|f| f.ephemeral) {
            return self.stream.send(batch).await;
        }
        let room = self.conn.max_datagram_size().unwrap_or(0);
        let mut reliable = Vec::with_capacity(batch.len());
        for f in batch {
            if f.ephemeral {
                let body = super::frame_body(&f.frame);
                if body.len() <= room && self.conn.send_datagram(body).is_ok() {
                    metrics::counter!("chatd_datagrams_sent_total").increment(1);
                    continue;
                }
            }
            reliable.push(f.clone());
        }
        if reliable.is_empty() {
            return Ok(());
        }
        self.stream.send(&reliable).await
    }

    async fn finish(&mut self, reason: CloseReason) {
        self.close_code = match reason {
            CloseReason::Error(code) => code as u32,
            CloseReason::GoingAway => chat_protocol::ErrorCode::ShuttingDown as u32,
            CloseReason::UnsupportedData => chat_protocol::ErrorCode::MalformedFrame as u32,
            CloseReason::Normal => 0,
        };
        let send = self.stream.get_mut();
        if send.finish().is_ok() {
            // Let the client read the last frames before the connection
            // closes; the caller bounds this wait, and dropping the sink
            // closes the connection either way.
            let _ = send.stopped().await;
        }
    }
}

impl Drop for QuicSink {
    fn drop(&mut self) {
        self.conn.close(VarInt::from_u32(self.close_code), b"");
    }
}
