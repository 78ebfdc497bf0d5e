//! Test harness: a real `chatd` on 127.0.0.1 port 0 in a temporary
//! directory, and a raw-frame client that speaks the protocol byte by byte.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use chat_protocol::{ErrorCode, FrameDecoder, codec};
use chatd::{Config, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub mod process;
pub mod wire;

pub use wire::Wire;

/// How long a test waits for any single frame, or for a condition.
pub const WAIT: Duration = Duration::from_secs(20);

/// How often [`wait_for`] asks again.
const POLL: Duration = Duration::from_millis(20);

/// Asks `probe` every [`POLL`] until it returns a value, for at most
/// [`WAIT`]; panics naming `what` if it never does. The one place tests
/// wait for something that happens in the background (a metric, a
/// presence change, a slot coming free).
pub async fn wait_for<T>(what: &str, probe: impl AsyncFnMut() -> Option<T>) -> T {
    match poll_for(WAIT, probe).await {
        Some(v) => v,
        None => panic!("waited {WAIT:?} for {what}"),
    }
}

/// Asks `probe` every [`POLL`] until it returns a value or `limit` has
/// passed (then `None`, for a caller with more to say than [`wait_for`]).
pub async fn poll_for<T>(limit: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_for`] a condition.
pub async fn wait_until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    wait_for(what, async || cond().await.then_some(())).await
}

/// A server and its data directory, restartable on the same data.
pub struct TestServer {
    handle: Option<ServerHandle>,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub quic_addr: Option<SocketAddr>,
    pub wss_addr: Option<SocketAddr>,
    /// The certificate TLS, HTTPS and QUIC present (generated).
    pub cert_path: Option<std::path::PathBuf>,
    pub config: Config,
}

impl TestServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config::for_tests(dir.path());
        Self::start_with(dir, config)
    }

    /// A server on [`Config::for_tests`] as changed by `edit`.
    pub fn start_configured(edit: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::for_tests(dir.path());
        edit(&mut config);
        Self::start_with(dir, config)
    }

    /// Moves the server's (manual) clock forward: expiries and timeouts
    /// due within `by` happen without the test sleeping through them.
    pub fn advance(&self, by: Duration) {
        self.config.clock.advance(by);
    }

    pub fn start_with(dir: tempfile::TempDir, config: Config) -> Self {
        let handle = ServerHandle::start(config.clone()).expect("server starts");
        let addr = handle.tcp_addr();
        let http_addr = handle.http_addr();
        Self {
            tls_addr: handle.tls_addr(),
            quic_addr: handle.quic_addr(),
            wss_addr: handle.wss_addr(),
            cert_path: handle.cert_path().map(|p| p.to_owned()),
            handle: Some(handle),
            dir,
            addr,
            http_addr,
            config,
        }
    }

    /// Graceful stop, then a fresh server on the same data directory and
    /// the same ports, so that clients can reconnect to the address they
    /// know.
    pub async fn restart(mut self) -> Self {
        if let Some(h) = self.handle.take() {
            tokio::task::spawn_blocking(move || h.shutdown())
                .await
                .expect("shutdown");
        }
        let mut config = self.config.clone();
        config.tcp_listen = self.addr;
        config.http_listen = self.http_addr;
        config.tls_listen = self.tls_addr;
        config.quic_listen = self.quic_addr;
        config.wss_listen = self.wss_addr;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        Self::start_with(dir, config)
    }

    /// Stops the server and hands over its data directory.
    pub async fn stop_keeping_data(mut self) -> tempfile::TempDir {
        if let Some(h) = self.handle.take() {
            tokio::task::spawn_blocking(move || h.shutdown())
                .await
                .expect("shutdown");
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"))
    }

    pub async fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            tokio::task::spawn_blocking(move || h.shutdown())
                .await
                .expect("shutdown");
        }
    }
}

/// A client that writes and reads raw frames over any transport
/// ([`Wire`]): TCP by default, [`wire::WebSocket`] or [`wire::Quic`].
pub struct Raw<W: Wire = Tcp> {
    pub wire: W,
    next_id: u64,
    /// Frames received while waiting for something else.
    pub pushes: VecDeque<pb::ServerFrame>,
    pub user_id: u64,
    pub token: String,
}

/// Plain TCP: length-prefixed frames on one byte stream.
pub struct Tcp {
    pub stream: TcpStream,
    decoder: FrameDecoder,
}

impl Wire for Tcp {
    async fn write_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    async fn read_frame(&mut self) -> Option<pb::ServerFrame> {
        loop {
            if let Some(f) = self
                .decoder
                .next_frame::<pb::ServerFrame>()
                .expect("valid server frame")
            {
                return Some(f);
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(self.decoder.buffer_mut()))
                .await
                .expect("timed out waiting for a frame")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }
}

impl Raw<Tcp> {
    /// Connects without saying Hello.
    pub async fn connect_bare(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self::from_stream(stream)
    }

    /// Wraps a connected stream, without saying Hello.
    pub fn from_stream(stream: TcpStream) -> Self {
        stream.set_nodelay(true).expect("nodelay");
        Self::over(Tcp {
            stream,
            decoder: FrameDecoder::new(chat_protocol::DEFAULT_MAX_FRAME_BYTES),
        })
    }

    /// Connects and completes Hello.
    pub async fn connect(addr: SocketAddr) -> Self {
        let mut c = Self::connect_bare(addr).await;
        c.hello(&[]).await;
        c
    }

    /// Connects, says Hello and registers `username`.
    pub async fn register(addr: SocketAddr, username: &str) -> Self {
        let mut c = Self::connect(addr).await;
        c.register_as(username).await;
        c
    }

    /// Connects, says Hello and logs in.
    pub async fn login(addr: SocketAddr, username: &str) -> Self {
        let mut c = Self::connect(addr).await;
        match c
            .request(C::Login(pb::Login {
                username: username.into(),
                password: "password123".into(),
                device: None,
            }))
            .await
        {
            S::AuthOk(ok) => {
                c.user_id = ok.user_id;
                c.token = ok.session_token;
            }
            other => panic!("login {username}: {other:?}"),
        }
        c
    }
}

impl<W: Wire> Raw<W> {
    /// A session on `wire` that has not said Hello.
    pub fn over(wire: W) -> Self {
        Self {
            wire,
            next_id: 0,
            pushes: VecDeque::new(),
            user_id: 0,
            token: String::new(),
        }
    }

    /// Says Hello with `capabilities`; returns the Welcome.
    pub async fn hello(&mut self, capabilities: &[&str]) -> pb::Welcome {
        let welcome = self
            .request(C::Hello(pb::Hello {
                protocol_version: 1,
                client_name: "test".into(),
                capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
                ..Default::default()
            }))
            .await;
        match welcome {
            S::Welcome(w) => w,
            other => panic!("hello: {other:?}"),
        }
    }

    /// Registers `username` (after Hello) and keeps its id and token.
    pub async fn register_as(&mut self, username: &str) {
        match self
            .request(C::Register(pb::Register {
                username: username.into(),
                password: "password123".into(),
                display_name: String::new(),
                device: None,
            }))
            .await
        {
            S::AuthOk(ok) => {
                self.user_id = ok.user_id;
                self.token = ok.session_token;
            }
            other => panic!("register {username}: {other:?}"),
        }
    }

    /// Writes raw bytes, as a client would put them on the transport.
    pub async fn write_bytes(&mut self, bytes: &[u8]) {
        self.wire.write_bytes(bytes).await;
    }

    /// Sends a frame and returns its request id.
    pub async fn send(&mut self, body: C) -> u64 {
        self.next_id += 1;
        let rid = self.next_id;
        self.send_with_id(rid, body).await;
        rid
    }

    /// Sends a frame with exactly this `request_id` (0 included).
    pub async fn send_with_id(&mut self, request_id: u64, body: C) {
        let frame = pb::ClientFrame {
            request_id,
            body: Some(body),
        };
        let bytes = codec::encode_to_vec(&frame, usize::MAX).expect("encode");
        self.wire.write_bytes(&bytes).await;
    }

    /// The next frame from the server; `None` once it closed.
    pub async fn read_frame(&mut self) -> Option<pb::ServerFrame> {
        self.wire.read_frame().await
    }

    /// Waits for the reply to `rid`, keeping other frames aside (replies may
    /// arrive out of order).
    pub async fn reply(&mut self, rid: u64) -> S {
        if let Some(i) = self
            .pushes
            .iter()
            .position(|f| rid != 0 && f.request_id == rid)
        {
            if let Some(body) = self.pushes.remove(i).and_then(|f| f.body) {
                return body;
            }
        }
        loop {
            let f = self
                .read_frame()
                .await
                .expect("connection closed before the reply");
            if f.request_id == rid && rid != 0 {
                return f.body.expect("reply has a body");
            }
            self.pushes.push_back(f);
        }
    }

    pub async fn request(&mut self, body: C) -> S {
        let rid = self.send(body).await;
        self.reply(rid).await
    }

    /// The next pushed message.
    pub async fn next_message(&mut self) -> pb::Message {
        loop {
            let f = match self.pushes.pop_front() {
                Some(f) => f,
                None => self.read_frame().await.expect("connection closed"),
            };
            if let Some(S::MessagePush(p)) = f.body {
                return p.message.expect("push has a message");
            }
        }
    }

    /// Sends a text message and returns its ack.
    pub async fn send_text(&mut self, conversation: u64, cmid: &str, text: &str) -> pb::SendAck {
        match self.request(send_body(conversation, cmid, text)).await {
            S::SendAck(a) => a,
            other => panic!("send: {other:?}"),
        }
    }

    pub async fn create_group(&mut self, title: &str, members: &[u64]) -> u64 {
        match self
            .request(C::CreateConversation(pb::CreateConversation {
                kind: pb::ConversationKind::Group as i32,
                member_ids: members.to_vec(),
                title: title.into(),
            }))
            .await
        {
            S::Conversation(c) => c.conversation_id,
            other => panic!("create group: {other:?}"),
        }
    }

    pub async fn create_direct(&mut self, other: u64) -> u64 {
        match self
            .request(C::CreateConversation(pb::CreateConversation {
                kind: pb::ConversationKind::Direct as i32,
                member_ids: vec![other],
                title: String::new(),
            }))
            .await
        {
            S::Conversation(c) => c.conversation_id,
            other => panic!("create direct: {other:?}"),
        }
    }

    pub async fn history(&mut self, conversation: u64, before: u64, after: u64, limit: u32) -> S {
        self.request(C::GetHistory(pb::GetHistory {
            conversation_id: conversation,
            before_seq: before,
            after_seq: (after != 0).then_some(after),
            limit,
        }))
        .await
    }
}

pub fn send_body(conversation: u64, cmid: &str, text: &str) -> C {
    C::SendMessage(pb::SendMessage {
        conversation_id: conversation,
        client_msg_id: cmid.into(),
        text: text.into(),
        ..Default::default()
    })
}

/// The error code of a reply, panicking if it is not an error.
pub fn error_code(reply: &S) -> ErrorCode {
    match reply {
        S::Error(e) => ErrorCode::try_from(e.code).expect("known code"),
        other => panic!("expected an error, got {other:?}"),
    }
}
