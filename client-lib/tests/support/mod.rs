//! A scripted chat server for client tests: each test accepts connections
//! and plays the server's side frame by frame.
#![allow(dead_code)]

use std::time::Duration;

use chat_client::pb::{self, client_frame::Body as C, server_frame::Body as S};
use chat_client::{Client, ClientOptions, Event, Events};
use chat_protocol::{DEFAULT_MAX_FRAME_BYTES, FrameDecoder, codec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a test waits for anything.
pub const WAIT: Duration = Duration::from_secs(5);

pub struct MockServer {
    listener: TcpListener,
    pub url: String,
}

impl MockServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("tcp://{}", listener.local_addr().expect("addr"));
        Self { listener, url }
    }

    /// The next connection, not yet greeted.
    pub async fn accept(&self) -> Peer {
        let (stream, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("client connects in time")
            .expect("accept");
        Peer {
            stream,
            decoder: FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES),
        }
    }

    /// The next connection, after Hello/Welcome with the given heartbeat.
    pub async fn accept_greeted(&self, heartbeat_ms: u32) -> Peer {
        let mut peer = self.accept().await;
        peer.handshake(heartbeat_ms).await;
        peer
    }
}

/// Options for tests: fast reconnects, short timeouts.
pub fn options() -> ClientOptions {
    ClientOptions {
        device_id: "dev-1".into(),
        request_timeout: Duration::from_secs(3),
        reconnect_min_delay: Duration::from_millis(10),
        reconnect_max_delay: Duration::from_millis(50),
        ..ClientOptions::default()
    }
}

/// Connects a client to `server`, answering its Hello.
pub async fn connect(server: &MockServer, options: ClientOptions) -> (Client, Events, Peer) {
    let url = server.url.clone();
    let client = tokio::spawn(async move { Client::connect(&url, options).await });
    let peer = server.accept_greeted(60_000).await;
    let (client, events) = client.await.expect("join").expect("connect");
    (client, events, peer)
}

/// Connects and logs in as user 1 with token "tok".
pub async fn logged_in(server: &MockServer) -> (Client, Events, Peer) {
    let (client, events, mut peer) = connect(server, options()).await;
    let login = {
        let client = client.clone();
        tokio::spawn(async move { client.login("alice", "pw").await })
    };
    let (rid, body) = peer.recv_request().await;
    assert!(matches!(body, C::Login(_)), "{body:?}");
    peer.send(rid, S::AuthOk(auth_ok())).await;
    login.await.expect("join").expect("login");
    (client, events, peer)
}

pub fn auth_ok() -> pb::AuthOk {
    pb::AuthOk {
        user_id: 1,
        session_token: "tok".into(),
        token_expires_at_ms: u64::MAX,
        profile: None,
    }
}

pub fn message(conversation: u64, seq: u64) -> pb::Message {
    pb::Message {
        conversation_id: conversation,
        seq,
        text: format!("m{seq}"),
        kind: pb::MessageKind::User as i32,
        ..Default::default()
    }
}

pub fn push(conversation: u64, seq: u64) -> S {
    S::MessagePush(pb::MessagePush {
        message: Some(message(conversation, seq)),
    })
}

pub fn page(conversation: u64, seqs: impl IntoIterator<Item = u64>, has_more: bool) -> S {
    let messages: Vec<_> = seqs.into_iter().map(|s| message(conversation, s)).collect();
    S::MessagePage(pb::MessagePage {
        conversation_id: conversation,
        last_seq: messages.last().map_or(0, |m| m.seq),
        messages,
        has_more,
    })
}

pub fn error(code: pb::ErrorCode, retry_after_ms: u32) -> S {
    S::Error(pb::Error {
        code: code as i32,
        message: format!("{code:?}"),
        retry_after_ms,
    })
}

/// The next event, failing the test after `WAIT`.
pub async fn next_event(events: &mut Events) -> Event {
    tokio::time::timeout(WAIT, events.next())
        .await
        .expect("event in time")
        .expect("stream open")
}

/// The next `n` message events' (conversation, seq), skipping nothing:
/// any other event fails the test.
pub async fn next_messages(events: &mut Events, n: usize) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    while out.len() < n {
        match next_event(events).await {
            Event::Message(m) => out.push((m.conversation_id, m.seq)),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    out
}

/// No event arrives within a short wait.
pub async fn quiet(events: &mut Events) {
    if let Ok(event) = tokio::time::timeout(Duration::from_millis(200), events.next()).await {
        panic!("unexpected {event:?}");
    }
}

pub struct Peer {
    stream: TcpStream,
    decoder: FrameDecoder,
}

impl Peer {
    /// The next frame, or `None` at EOF.
    pub async fn try_recv(&mut self) -> Option<pb::ClientFrame> {
        loop {
            if let Some(frame) = self
                .decoder
                .next_frame::<pb::ClientFrame>()
                .expect("valid frame")
            {
                return Some(frame);
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(self.decoder.buffer_mut()))
                .await
                .expect("client sends in time")
                .expect("read");
            if n == 0 {
                return None;
            }
        }
    }

    pub async fn recv(&mut self) -> pb::ClientFrame {
        self.try_recv().await.expect("client frame, not EOF")
    }

    /// The next request (non-zero request_id), skipping Pings.
    pub async fn recv_request(&mut self) -> (u64, C) {
        loop {
            let frame = self.recv().await;
            let body = frame.body.expect("body");
            if matches!(body, C::Ping(_)) {
                continue;
            }
            assert_ne!(frame.request_id, 0, "requests carry a request_id: {body:?}");
            return (frame.request_id, body);
        }
    }

    pub async fn send(&mut self, request_id: u64, body: S) {
        let frame = pb::ServerFrame {
            request_id,
            body: Some(body),
        };
        let bytes = codec::encode_to_vec(&frame, DEFAULT_MAX_FRAME_BYTES).expect("encode");
        self.stream.write_all(&bytes).await.expect("write");
    }

    pub async fn push(&mut self, body: S) {
        self.send(0, body).await;
    }

    /// Expects Hello and answers Welcome.
    pub async fn handshake(&mut self, heartbeat_ms: u32) {
        let frame = self.recv().await;
        match frame.body {
            Some(C::Hello(h)) => assert_eq!(h.protocol_version, chat_protocol::PROTOCOL_VERSION),
            other => panic!("expected Hello, got {other:?}"),
        }
        assert_ne!(frame.request_id, 0);
        self.send(
            frame.request_id,
            S::Welcome(pb::Welcome {
                protocol_version: 1,
                server_name: "mock".into(),
                max_frame_bytes: DEFAULT_MAX_FRAME_BYTES as u32,
                max_message_bytes: 64 * 1024,
                heartbeat_interval_ms: heartbeat_ms,
                capabilities: vec![],
            }),
        )
        .await;
    }

    /// Reads until the client closes the connection.
    pub async fn expect_eof(&mut self) {
        while let Some(frame) = self.try_recv().await {
            assert!(
                matches!(frame.body, Some(C::Ping(_)) | Some(C::Pong(_))),
                "{frame:?}"
            );
        }
    }
}
