//! chatd's transports as loadgen uses them (`spec/framing.md`): plain TCP,
//! TLS, QUIC (one bidirectional stream per session) and WebSocket (`ws`,
//! `wss`: one binary message per frame body).
//!
//! Everything above this module deals in length-prefixed frames on a byte
//! stream. A [`Link`] is a connection of any transport split into a
//! [`Reader`] and a [`Writer`]: the byte-stream transports (TCP, TLS, the
//! QUIC session stream) pass bytes through unchanged; the WebSocket ones
//! add the length prefix to every received message and send every frame of
//! the bytes they are given as its own message.
//!
//! A [`Dialer`] is made once per run. It holds the TLS configuration
//! (trusting the server's certificate) and, for QUIC, a few quinn
//! endpoints that every connection shares: one UDP socket each, however
//! many sessions, so QUIC sessions are not bounded by open files. Several
//! endpoints (several source ports) let the server's per-shard sockets,
//! chosen by a hash of the client's address and port, share the sessions.

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use chat_protocol::codec;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::cli::Transport;
use crate::conn;

/// Largest WebSocket message loadgen accepts (the server's frames are at
/// most its `max_frame_bytes`, 1 MiB by default).
const WS_MAX_MESSAGE: usize = 16 << 20;

/// Read buffer of a WebSocket connection.
const WS_READ_BUFFER: usize = 16 * 1024;

/// QUIC endpoints (UDP sockets) a dialer spreads its connections over.
pub const QUIC_ENDPOINTS: usize = 8;

/// Socket buffer asked for on each QUIC endpoint's UDP socket, each way.
const QUIC_SOCKET_BUFFER: usize = 4 << 20;

/// A byte stream of any transport.
pub trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

type Ws = WebSocketStream<Box<dyn Io>>;

/// The receiving half of a connection.
pub enum Reader {
    /// Length-prefixed frames on a byte stream.
    Stream(Box<dyn AsyncRead + Unpin>),
    /// One frame body per binary message.
    Ws(SplitStream<Ws>),
    /// A JetStream client's deliveries and publish acks
    /// ([`crate::jetstream`]).
    Js(Box<crate::jetstream::JsReader>),
}

/// The sending half of a connection.
pub enum Writer {
    /// Length-prefixed frames on a byte stream.
    Stream(Box<dyn AsyncWrite + Unpin>),
    /// One frame body per binary message.
    Ws(SplitSink<Ws, Message>),
    /// Publishes through a JetStream client ([`crate::jetstream`]).
    Js(Box<crate::jetstream::JsWriter>),
}

/// An open connection of any transport.
pub struct Link {
    pub reader: Reader,
    pub writer: Writer,
}

impl Link {
    fn stream(io: impl Io + 'static) -> Self {
        let (r, w) = tokio::io::split(io);
        Self {
            reader: Reader::Stream(Box::new(r)),
            writer: Writer::Stream(Box::new(w)),
        }
    }
}

impl Reader {
    /// Appends received length-prefixed frame bytes to `buf`; 0 when the
    /// peer closed.
    pub async fn read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            Reader::Stream(r) => r.read_buf(buf).await,
            Reader::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(body))) => {
                        let before = buf.len();
                        prost::encoding::encode_varint(body.len() as u64, buf);
                        buf.extend_from_slice(&body);
                        return Ok(buf.len() - before);
                    }
                    Some(Ok(Message::Text(_))) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "text message from the server",
                        ));
                    }
                    Some(Ok(Message::Close(_))) | None => return Ok(0),
                    Some(Ok(_)) => {}
                    Some(Err(WsError::ConnectionClosed)) => return Ok(0),
                    Some(Err(e)) => return Err(std::io::Error::other(e)),
                }
            },
            Reader::Js(js) => js.read_buf(buf).await,
        }
    }
}

impl Writer {
    /// Writes `bytes`, whole length-prefixed frames, and flushes.
    pub async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Writer::Stream(w) => {
                w.write_all(bytes).await?;
                w.flush().await
            }
            Writer::Ws(sink) => {
                let mut rest = bytes;
                while !rest.is_empty() {
                    let header = match codec::check(rest, usize::MAX) {
                        Ok(Some(h)) => h,
                        _ => {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::InvalidInput,
                                "incomplete frame for a WebSocket message",
                            ));
                        }
                    };
                    let body = Bytes::copy_from_slice(&rest[header.prefix_len..header.total_len()]);
                    rest = &rest[header.total_len()..];
                    sink.feed(Message::Binary(body))
                        .await
                        .map_err(std::io::Error::other)?;
                }
                sink.flush().await.map_err(std::io::Error::other)
            }
            Writer::Js(js) => js.write_all(bytes).await,
        }
    }

    /// Closes the sending side (WebSocket: a Close message).
    pub async fn shutdown(&mut self) {
        match self {
            Writer::Stream(w) => {
                let _ = w.shutdown().await;
            }
            Writer::Ws(sink) => {
                let _ = sink.close().await;
            }
            Writer::Js(_) => {}
        }
    }
}

/// Opens connections to the server over one transport.
pub struct Dialer {
    transport: Transport,
    addr: SocketAddr,
    /// Plain TCP to several servers (the nodes of a chatd cluster): each
    /// connection goes to the next, in turn; `addr` is the first.
    more: Vec<SocketAddr>,
    next_addr: Cell<usize>,
    /// Name the server's certificate is checked against.
    name: ServerName<'static>,
    /// TLS for `tls` (ALPN `chat/1`) or `wss` (ALPN `http/1.1`).
    tls: Option<tokio_rustls::TlsConnector>,
    quic: Vec<quinn::Endpoint>,
    quic_config: Option<quinn::ClientConfig>,
    next_endpoint: Cell<usize>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("transport", &self.transport)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// A rustls client trusting the certificates in `ca_pem`.
fn tls_config(
    ca_pem: Option<&[u8]>,
    alpn: &[u8],
    tls13_only: bool,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let Some(pem) = ca_pem else {
        bail!("TLS needs the server's certificate (--ca-cert)");
    };
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots
            .add(cert.context("reading the server certificate")?)
            .context("trusting the server certificate")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider);
    let builder = if tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])?
    } else {
        builder.with_safe_default_protocol_versions()?
    };
    let mut config = builder.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// A client endpoint on its own UDP socket, with room for
/// [`QUIC_SOCKET_BUFFER`] bytes each way: a heartbeat sweep over tens of
/// thousands of sessions sends and receives that many datagrams in a burst.
fn quic_endpoint(local: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(local),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // The kernel caps these at net.core.{r,w}mem_max; best effort.
    let _ = socket.set_recv_buffer_size(QUIC_SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(QUIC_SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket
        .bind(&local.into())
        .context("binding a QUIC endpoint")?;
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket.into(),
        runtime,
    )
    .context("opening a QUIC endpoint")
}

impl Dialer {
    /// A dialer for `transport` at `addr`. `ca_pem` is the certificate to
    /// trust (TLS, QUIC, wss), `name` the name it must be valid for.
    /// `quic_endpoints` UDP sockets are opened for QUIC. Must run inside
    /// the tokio runtime.
    pub fn new(
        transport: Transport,
        addr: SocketAddr,
        ca_pem: Option<&[u8]>,
        name: &str,
        quic_endpoints: usize,
    ) -> anyhow::Result<Rc<Self>> {
        let name = ServerName::try_from(name.to_owned())
            .with_context(|| format!("{name}: not a server name"))?;
        let tls = match transport {
            Transport::Tls => Some(tls_config(ca_pem, chat_protocol::ALPN, false)?),
            Transport::Wss => Some(tls_config(ca_pem, b"http/1.1", false)?),
            _ => None,
        }
        .map(|c| tokio_rustls::TlsConnector::from(Arc::new(c)));
        let mut quic = Vec::new();
        let mut quic_config = None;
        if transport == Transport::Quic {
            let crypto = tls_config(ca_pem, chat_protocol::ALPN, true)?;
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)?;
            let mut config = quinn::ClientConfig::new(Arc::new(crypto));
            // The server's idle timeout (its session timeout plus a margin)
            // applies, not quinn's 30 s default: sessions stay up between
            // chat/1 heartbeats like on the other transports.
            let mut transport_config = quinn::TransportConfig::default();
            transport_config.max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(std::time::Duration::from_secs(300))
                    .context("QUIC idle timeout")?,
            ));
            config.transport_config(Arc::new(transport_config));
            quic_config = Some(config);
            let local: SocketAddr = if addr.is_ipv4() {
                ([127, 0, 0, 1], 0).into()
            } else {
                (std::net::Ipv6Addr::LOCALHOST, 0).into()
            };
            for _ in 0..quic_endpoints.max(1) {
                quic.push(quic_endpoint(local)?);
            }
        }
        Ok(Rc::new(Self {
            transport,
            addr,
            name,
            tls,
            quic,
            quic_config,
            next_endpoint: Cell::new(0),
            more: Vec::new(),
            next_addr: Cell::new(0),
        }))
    }

    /// This dialer with plain TCP connections spread over `addrs` besides
    /// its own address, in turn.
    pub fn spread_over(mut self, addrs: &[SocketAddr]) -> Self {
        self.more = addrs.to_vec();
        self
    }

    /// The address of the next plain TCP connection.
    fn next_tcp_addr(&self) -> SocketAddr {
        if self.more.is_empty() {
            return self.addr;
        }
        let i = self.next_addr.get();
        self.next_addr.set(i.wrapping_add(1));
        match i % (self.more.len() + 1) {
            0 => self.addr,
            n => self.more.get(n - 1).copied().unwrap_or(self.addr),
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Opens a connection, from `source` for the TCP-based transports
    /// (QUIC uses the dialer's endpoints).
    pub async fn connect(&self, source: Option<IpAddr>) -> anyhow::Result<Link> {
        match self.transport {
            Transport::Tcp => Ok(Link::stream(
                conn::connect(self.next_tcp_addr(), source).await?,
            )),
            Transport::Tls => Ok(Link::stream(self.tls(source).await?)),
            Transport::Ws => {
                let tcp = conn::connect(self.addr, source).await?;
                self.websocket(Box::new(tcp), "ws").await
            }
            Transport::Wss => {
                let tls = self.tls(source).await?;
                self.websocket(Box::new(tls), "wss").await
            }
            Transport::Quic => self.quic().await,
        }
    }

    async fn tls(
        &self,
        source: Option<IpAddr>,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let Some(connector) = &self.tls else {
            bail!("no TLS configuration");
        };
        let tcp = conn::connect(self.addr, source).await?;
        connector
            .connect(self.name.clone(), tcp)
            .await
            .context("TLS handshake")
    }

    async fn websocket(&self, io: Box<dyn Io>, scheme: &str) -> anyhow::Result<Link> {
        let url = format!("{scheme}://{}{}", self.addr, "/ws");
        let request = url.into_client_request()?;
        let config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER)
            .max_message_size(Some(WS_MAX_MESSAGE))
            .max_frame_size(Some(WS_MAX_MESSAGE));
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, io, Some(config))
            .await
            .context("WebSocket upgrade")?;
        let (sink, stream) = ws.split();
        Ok(Link {
            reader: Reader::Ws(stream),
            writer: Writer::Ws(sink),
        })
    }

    async fn quic(&self) -> anyhow::Result<Link> {
        let (Some(config), false) = (&self.quic_config, self.quic.is_empty()) else {
            bail!("no QUIC endpoint");
        };
        let i = self.next_endpoint.get();
        self.next_endpoint.set((i + 1) % self.quic.len());
        let name = match &self.name {
            ServerName::DnsName(n) => n.as_ref().to_owned(),
            ServerName::IpAddress(ip) => IpAddr::from(*ip).to_string(),
            _ => "localhost".to_owned(),
        };
        let conn = self.quic[i]
            .connect_with(config.clone(), self.addr, &name)?
            .await
            .context("QUIC handshake")?;
        let (send, recv) = conn.open_bi().await.context("opening the QUIC stream")?;
        // The streams keep the connection open; dropping both closes it.
        Ok(Link {
            reader: Reader::Stream(Box::new(recv)),
            writer: Writer::Stream(Box::new(send)),
        })
    }
}
