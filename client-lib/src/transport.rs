//! Dialing the server over each transport, and moving frames over the
//! result: length-prefixed frames on a byte stream (`tcp://`, `tls://`, the
//! QUIC session stream of `quic://`), one binary message per frame body on
//! a WebSocket (`ws://`, `wss://`). See `spec/framing.md`.
//!
//! TLS (also under `wss://` and inside QUIC) verifies the server's
//! certificate against the webpki roots (Mozilla's list) plus
//! [`ClientOptions::trusted_certs_pem`], with the `ring` provider.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use chat_protocol::{FrameDecoder, codec, pb};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::error::{Error, Result};
use crate::options::ClientOptions;
use crate::url::{Endpoint, Transport};

/// Spare buffer room reserved before each socket read.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Largest WebSocket message accepted before decoding; the server's
/// announced frame limit is checked after. Bounds what one message can
/// make the client allocate.
const WS_MAX_MESSAGE: usize = 16 << 20;

/// A byte stream of any transport.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A QUIC connection and the endpoint it lives on (dropping the endpoint
/// handle last lets the connection close cleanly).
#[derive(Debug, Clone)]
pub(crate) struct Quic {
    pub(crate) conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

/// A connected transport, before the frame loops start.
pub(crate) struct Dialed {
    pub(crate) reader: Reader,
    pub(crate) writer: Writer,
    /// Set for `quic://`: the connection, for datagrams and closing.
    pub(crate) quic: Option<Quic>,
}

/// Receives server frames.
pub(crate) enum Reader {
    /// Length-prefixed frames on a byte stream.
    Stream(Box<dyn AsyncRead + Send + Unpin>, FrameDecoder),
    /// One frame body per binary message.
    Ws(SplitStream<WebSocketStream<Box<dyn Io>>>),
}

/// Sends client frames.
pub(crate) enum Writer {
    /// Length-prefixed frames on a byte stream; `Vec` is the write buffer.
    Stream(Box<dyn AsyncWrite + Send + Unpin>, Vec<u8>),
    /// One frame body per binary message.
    Ws(SplitSink<WebSocketStream<Box<dyn Io>>, Message>),
}

impl std::fmt::Debug for Dialed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialed")
            .field("quic", &self.quic.is_some())
            .finish_non_exhaustive()
    }
}

fn tls_error(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

/// The roots a TLS client trusts: webpki's plus the configured ones.
fn roots(options: &ClientOptions) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if !options.trusted_certs_pem.is_empty() {
        for cert in CertificateDer::pem_slice_iter(&options.trusted_certs_pem) {
            let cert = cert.map_err(|e| tls_error(format!("trusted_certs_pem: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| tls_error(format!("trusted_certs_pem: {e}")))?;
        }
    }
    Ok(roots)
}

fn tls_config(
    options: &ClientOptions,
    alpn: &[u8],
    tls13_only: bool,
) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider);
    let builder = if tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])
    } else {
        builder.with_safe_default_protocol_versions()
    }
    .map_err(tls_error)?;
    let mut config = builder
        .with_root_certificates(roots(options)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

fn server_name(endpoint: &Endpoint) -> Result<ServerName<'static>> {
    ServerName::try_from(endpoint.host.clone())
        .map_err(|_| Error::InvalidUrl(format!("{}: not a valid server name", endpoint.host)))
}

async fn tcp(endpoint: &Endpoint) -> Result<TcpStream> {
    let stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn tls(
    endpoint: &Endpoint,
    options: &ClientOptions,
    alpn: &[u8],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = tls_config(options, alpn, false)?;
    let stream = tcp(endpoint).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name(endpoint)?, stream)
        .await
        .map_err(tls_error)
}

fn stream(io: impl Io + 'static) -> Dialed {
    let (rd, wr) = tokio::io::split(io);
    Dialed {
        reader: Reader::Stream(
            Box::new(rd),
            FrameDecoder::new(chat_protocol::DEFAULT_MAX_FRAME_BYTES),
        ),
        writer: Writer::Stream(Box::new(wr), Vec::new()),
        quic: None,
    }
}

async fn websocket(endpoint: &Endpoint, io: Box<dyn Io>, secure: bool) -> Result<Dialed> {
    let host = if endpoint.host.contains(':') {
        format!("[{}]", endpoint.host)
    } else {
        endpoint.host.clone()
    };
    let scheme = if secure { "wss" } else { "ws" };
    let url = format!("{scheme}://{host}:{}{}", endpoint.port, endpoint.path);
    let request = url
        .into_client_request()
        .map_err(|e| Error::Transport(format!("WebSocket request: {e}")))?;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_CHUNK_BYTES)
        .max_message_size(Some(WS_MAX_MESSAGE))
        .max_frame_size(Some(WS_MAX_MESSAGE));
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, io, Some(config))
        .await
        .map_err(|e| Error::Transport(format!("WebSocket upgrade: {e}")))?;
    let (sink, stream) = ws.split();
    Ok(Dialed {
        reader: Reader::Ws(stream),
        writer: Writer::Ws(sink),
        quic: None,
    })
}

/// Connects over QUIC. A name with several addresses (`localhost` as
/// `::1` and `127.0.0.1`) is tried on all of them at once; the first
/// handshake to succeed wins (a UDP attempt at a dead address only fails by
/// timing out), and a refused certificate ends the attempt at once.
async fn quic(endpoint: &Endpoint, options: &ClientOptions) -> Result<Dialed> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
        .await?
        .collect();
    if addrs.is_empty() {
        return Err(Error::InvalidUrl(format!("{}: no address", endpoint.host)));
    }
    let mut attempts: futures_util::stream::FuturesUnordered<_> = addrs
        .into_iter()
        .map(|addr| quic_at(endpoint, options, addr))
        .collect();
    let mut last = None;
    while let Some(result) = attempts.next().await {
        match result {
            Ok(dialed) => return Ok(dialed),
            // A server answered and its certificate was refused: no other
            // address will do better.
            Err(e @ Error::Tls(_)) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::Transport("QUIC: no address answered".into())))
}

async fn quic_at(endpoint: &Endpoint, options: &ClientOptions, addr: SocketAddr) -> Result<Dialed> {
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let quic_endpoint = quinn::Endpoint::client(local)?;
    let crypto = tls_config(options, chat_protocol::ALPN, true)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(tls_error)?;
    let config = quinn::ClientConfig::new(Arc::new(crypto));
    let connecting = quic_endpoint
        .connect_with(config, addr, &endpoint.host)
        .map_err(|e| Error::Transport(format!("QUIC: {e}")))?;
    let conn = connecting.await.map_err(|e| match e {
        // TLS alerts travel as QUIC crypto errors, 0x100 + alert.
        quinn::ConnectionError::TransportError(t)
            if (0x100..0x200).contains(&u64::from(t.code)) =>
        {
            tls_error(t)
        }
        other => Error::Transport(format!("QUIC: {other}")),
    })?;
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| Error::Transport(format!("QUIC stream: {e}")))?;
    Ok(Dialed {
        reader: Reader::Stream(
            Box::new(recv),
            FrameDecoder::new(chat_protocol::DEFAULT_MAX_FRAME_BYTES),
        ),
        writer: Writer::Stream(Box::new(send), Vec::new()),
        quic: Some(Quic {
            conn,
            _endpoint: quic_endpoint,
        }),
    })
}

/// Connects over the endpoint's transport (no chat/1 frames yet).
pub(crate) async fn dial(endpoint: &Endpoint, options: &ClientOptions) -> Result<Dialed> {
    Ok(match endpoint.transport {
        Transport::Tcp => stream(tcp(endpoint).await?),
        Transport::Tls => stream(tls(endpoint, options, chat_protocol::ALPN).await?),
        Transport::Quic => quic(endpoint, options).await?,
        Transport::Ws => websocket(endpoint, Box::new(tcp(endpoint).await?), false).await?,
        Transport::Wss => {
            let io = tls(endpoint, options, b"http/1.1").await?;
            websocket(endpoint, Box::new(io), true).await?
        }
    })
}

/// What [`Reader::next`] got.
// Frames are by far the most frequent; boxing them would cost an
// allocation each.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Read {
    /// A server frame.
    Frame(pb::ServerFrame),
    /// The server closed the connection (the reason is given).
    Closed(String),
    /// The server sent something undecodable.
    Invalid(String),
}

impl Reader {
    /// The next server frame, refusing frames over `max` bytes.
    pub(crate) async fn next(&mut self, max: usize) -> Read {
        match self {
            Reader::Stream(rd, decoder) => {
                if max != decoder.max_frame_bytes() {
                    let mut bigger = FrameDecoder::new(max);
                    bigger.extend(decoder.buffer_mut());
                    *decoder = bigger;
                }
                loop {
                    match decoder.next_frame::<pb::ServerFrame>() {
                        Ok(Some(frame)) => return Read::Frame(frame),
                        Ok(None) => {}
                        Err(e) => return Read::Invalid(e.to_string()),
                    }
                    decoder.buffer_mut().reserve(READ_CHUNK_BYTES);
                    match rd.read_buf(decoder.buffer_mut()).await {
                        Ok(0) => return Read::Closed("server closed the connection".into()),
                        Ok(_) => {}
                        Err(e) => return Read::Closed(format!("read failed: {e}")),
                    }
                }
            }
            Reader::Ws(stream) => loop {
                match stream.next().await {
                    Some(Ok(Message::Binary(body))) => {
                        if body.len() > max {
                            return Read::Invalid(format!(
                                "message of {} bytes exceeds the limit of {max}",
                                body.len()
                            ));
                        }
                        return match pb::ServerFrame::decode(body) {
                            Ok(frame) => Read::Frame(frame),
                            Err(e) => Read::Invalid(format!("malformed frame body: {e}")),
                        };
                    }
                    Some(Ok(Message::Text(_))) => {
                        return Read::Invalid("text message from the server".into());
                    }
                    Some(Ok(Message::Close(close))) => {
                        let why = close.map_or_else(String::new, |c| {
                            format!(" ({} {})", u16::from(c.code), c.reason)
                        });
                        return Read::Closed(format!("server closed the WebSocket{why}"));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(WsError::ConnectionClosed)) | None => {
                        return Read::Closed("server closed the connection".into());
                    }
                    Some(Err(e)) => return Read::Closed(format!("read failed: {e}")),
                }
            },
        }
    }
}

/// The body of an encoded frame, without its length prefix.
fn body_of(frame: &[u8]) -> &[u8] {
    match codec::check(frame, usize::MAX) {
        Ok(Some(h)) => frame.get(h.prefix_len..h.total_len()).unwrap_or(frame),
        _ => frame,
    }
}

impl Writer {
    /// Writes encoded, length-prefixed frames in order.
    pub(crate) async fn write(&mut self, frames: &[Vec<u8>]) -> std::io::Result<()> {
        match self {
            Writer::Stream(wr, buf) => {
                buf.clear();
                for f in frames {
                    buf.extend_from_slice(f);
                }
                wr.write_all(buf).await?;
                wr.flush().await
            }
            Writer::Ws(sink) => {
                for f in frames {
                    let body = Bytes::copy_from_slice(body_of(f));
                    sink.feed(Message::Binary(body))
                        .await
                        .map_err(std::io::Error::other)?;
                }
                sink.flush().await.map_err(std::io::Error::other)
            }
        }
    }

    /// Ends the connection from the client's side.
    pub(crate) async fn shutdown(&mut self) {
        match self {
            Writer::Stream(wr, _) => {
                let _ = wr.shutdown().await;
            }
            Writer::Ws(sink) => {
                let _ = sink.close().await;
            }
        }
    }
}
