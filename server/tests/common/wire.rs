//! The transports a [`Raw`] client speaks over: plain TCP (in `mod.rs`),
//! the WebSocket bridge and QUIC. Each carries chat/1 frames its own way;
//! [`Raw`] on top of them is the same client, so a test written against
//! one transport runs against another by changing how it connects.

use std::net::SocketAddr;
use std::sync::Arc;

use chat_protocol::pb::{self, server_frame::Body as S};
use chat_protocol::{ErrorCode, FrameDecoder, codec};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use super::{Raw, TestServer, WAIT};

/// How a [`Raw`] client's bytes reach the server and its frames come back.
#[allow(async_fn_in_trait)] // test code: no `Send` bounds are needed
pub trait Wire {
    /// Writes `bytes` as a client puts a length-prefixed frame (or garbage)
    /// on this transport.
    async fn write_bytes(&mut self, bytes: &[u8]);
    /// The next server frame; `None` once the server closed.
    async fn read_frame(&mut self) -> Option<pb::ServerFrame>;
}

/// The WebSocket bridge (`/ws` on the HTTP port): one binary message per
/// frame body, no length prefix.
pub struct WebSocket {
    pub ws: WebSocketStream<TcpStream>,
    /// The close frame's code, once the server sent one.
    pub close: Option<CloseCode>,
}

impl WebSocket {
    /// Upgrades a connection to `addr`, sending `origin` if given.
    pub async fn open(addr: SocketAddr, origin: Option<&str>) -> Result<Self, String> {
        let mut req = format!("ws://{addr}/ws")
            .into_client_request()
            .expect("request");
        if let Some(o) = origin {
            req.headers_mut()
                .insert("origin", o.parse().expect("header value"));
        }
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tokio_tungstenite::client_async(req, tcp)
            .await
            .map(|(ws, _)| Self { ws, close: None })
            .map_err(|e| e.to_string())
    }
}

impl Wire for WebSocket {
    async fn write_bytes(&mut self, bytes: &[u8]) {
        // A whole frame travels as its body; anything else as it is.
        let body = match codec::check(bytes, usize::MAX) {
            Ok(Some(h)) if h.total_len() == bytes.len() => &bytes[h.prefix_len..],
            _ => bytes,
        };
        self.ws
            .send(Message::Binary(Bytes::copy_from_slice(body)))
            .await
            .expect("send");
    }

    async fn read_frame(&mut self) -> Option<pb::ServerFrame> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a message");
            match msg {
                Some(Ok(Message::Binary(b))) => {
                    return Some(pb::ServerFrame::decode(b).expect("one frame per message"));
                }
                Some(Ok(Message::Close(c))) => {
                    self.close = c.map(|c| c.code);
                    return None;
                }
                Some(Ok(Message::Text(t))) => panic!("text message from the server: {t}"),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

/// QUIC: one bidirectional session stream of length-prefixed frames, and
/// datagrams.
pub struct Quic {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    decoder: FrameDecoder,
    _endpoint: quinn::Endpoint,
}

/// A QUIC client trusting the test server's certificate.
pub fn quic_client_config(server: &TestServer) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let path = server.cert_path.as_ref().expect("certificate");
    for cert in CertificateDer::pem_file_iter(path).expect("pem") {
        roots.add(cert.expect("cert")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"chat/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    quinn::ClientConfig::new(Arc::new(crypto))
}

impl Quic {
    /// Connects to the server's QUIC endpoint and opens the session stream.
    pub async fn open(server: &TestServer) -> Self {
        let addr = server.quic_addr.expect("quic enabled");
        let endpoint =
            quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).expect("endpoint");
        let conn = endpoint
            .connect_with(quic_client_config(server), addr, "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        let (send, recv) = conn.open_bi().await.expect("stream");
        Self {
            conn,
            send,
            recv,
            decoder: FrameDecoder::new(chat_protocol::DEFAULT_MAX_FRAME_BYTES),
            _endpoint: endpoint,
        }
    }

    /// The next datagram, decoded.
    pub async fn datagram(&mut self) -> pb::ServerFrame {
        let d = tokio::time::timeout(WAIT, self.conn.read_datagram())
            .await
            .expect("timed out waiting for a datagram")
            .expect("datagram");
        pb::ServerFrame::decode(d).expect("one frame body per datagram")
    }

    /// Waits for the connection to close; its application error code.
    pub async fn close_code(&self) -> Option<u64> {
        let reason = tokio::time::timeout(WAIT, self.conn.closed())
            .await
            .expect("connection closes");
        match reason {
            quinn::ConnectionError::ApplicationClosed(a) => Some(a.error_code.into_inner()),
            _ => None,
        }
    }
}

impl Wire for Quic {
    async fn write_bytes(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.expect("write");
    }

    async fn read_frame(&mut self) -> Option<pb::ServerFrame> {
        loop {
            if let Some(f) = self
                .decoder
                .next_frame::<pb::ServerFrame>()
                .expect("valid frame")
            {
                return Some(f);
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.recv.read(&mut buf))
                .await
                .expect("timed out waiting for a frame");
            match n {
                Ok(Some(n)) => self.decoder.extend(&buf[..n]),
                _ => return None,
            }
        }
    }
}

impl Raw<WebSocket> {
    /// Upgrades, and says Hello.
    pub async fn connect_ws(addr: SocketAddr) -> Self {
        let mut c = Self::over(WebSocket::open(addr, None).await.expect("upgrade"));
        c.hello(&[]).await;
        c
    }

    /// Upgrades, says Hello and registers `username`.
    pub async fn register_ws(addr: SocketAddr, username: &str) -> Self {
        let mut c = Self::connect_ws(addr).await;
        c.register_as(username).await;
        c
    }

    /// Reads to the close: the last Error code and the close frame's code.
    pub async fn closed_with(&mut self) -> (Option<ErrorCode>, Option<CloseCode>) {
        let code = self.last_error().await;
        (code, self.wire.close)
    }
}

impl Raw<Quic> {
    /// Connects and says Hello with `capabilities`; returns Welcome's.
    pub async fn connect_quic(server: &TestServer, capabilities: &[&str]) -> (Self, Vec<String>) {
        let mut c = Self::over(Quic::open(server).await);
        let welcome = c.hello(capabilities).await;
        (c, welcome.capabilities)
    }

    /// Connects, says Hello and registers `username`.
    pub async fn register_quic(server: &TestServer, username: &str, capabilities: &[&str]) -> Self {
        let (mut c, _) = Self::connect_quic(server, capabilities).await;
        c.register_as(username).await;
        c
    }

    /// Reads to the end of the stream: the last Error code, then the
    /// connection's application close code.
    pub async fn closed_with(&mut self) -> (Option<ErrorCode>, Option<u64>) {
        let code = self.last_error().await;
        (code, self.wire.close_code().await)
    }
}

impl<W: Wire> Raw<W> {
    /// Reads until the server closes; the code of the last Error frame.
    pub async fn last_error(&mut self) -> Option<ErrorCode> {
        let mut code = None;
        while let Some(f) = self.read_frame().await {
            if let Some(S::Error(e)) = f.body {
                code = ErrorCode::try_from(e.code).ok();
            }
        }
        code
    }
}
