//! The WebSocket bridge on the HTTP port (`/ws`), driven by a stock
//! WebSocket client (tokio-tungstenite): one binary message per frame body,
//! pings answered, the spec's errors and close codes for bad input, origin
//! checking, and messages crossing between WebSocket and TCP sessions.

mod common;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use common::wire::WebSocket;
use common::{Raw, TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};

#[tokio::test]
async fn messages_cross_between_websocket_and_tcp() {
    let server = TestServer::start();
    let mut ws = Raw::register_ws(server.http_addr, "wendy").await;
    let mut tcp = Raw::register(server.addr, "tom").await;
    let conv = match ws
        .request(C::CreateConversation(pb::CreateConversation {
            kind: pb::ConversationKind::Direct as i32,
            member_ids: vec![tcp.user_id],
            title: String::new(),
        }))
        .await
    {
        S::Conversation(c) => c.conversation_id,
        other => panic!("{other:?}"),
    };
    let ack = match ws.request(common::send_body(conv, "w1", "from ws")).await {
        S::SendAck(a) => a,
        other => panic!("{other:?}"),
    };
    let m = tcp.next_message().await;
    assert_eq!((m.seq, m.text.as_str()), (ack.seq, "from ws"));
    let ack = tcp.send_text(conv, "t1", "from tcp").await;
    // The sender's own devices get its message pushed too.
    let mut m = ws.next_message().await;
    while m.seq < ack.seq {
        m = ws.next_message().await;
    }
    assert_eq!((m.seq, m.text.as_str()), (ack.seq, "from tcp"));
    assert_eq!(m.sender_id, tcp.user_id);

    // A WebSocket ping is answered with a pong carrying the same payload.
    ws.wire
        .ws
        .send(Message::Ping(Bytes::from_static(b"hi")))
        .await
        .expect("ping");
    loop {
        match tokio::time::timeout(WAIT, ws.wire.ws.next())
            .await
            .expect("pong")
        {
            Some(Ok(Message::Pong(p))) => {
                assert_eq!(&p[..], b"hi");
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
    // chat/1 Ping works as on every transport.
    assert!(matches!(
        ws.request(C::Ping(pb::Ping { nonce: 5 })).await,
        S::Pong(pb::Pong { nonce: 5 })
    ));
    server.stop().await;
}

#[tokio::test]
async fn bad_messages_get_the_spec_error_and_close_code() {
    let server = TestServer::start();
    let mut a = Raw::register(server.addr, "alice").await;
    let mut b = Raw::register_ws(server.http_addr, "bob").await;
    let conv = a.create_direct(b.user_id).await;

    // Text message: MALFORMED_FRAME, close 1003.
    let mut text = Raw::connect_ws(server.http_addr).await;
    text.wire
        .ws
        .send(Message::text("{\"hello\":1}"))
        .await
        .expect("send");
    assert_eq!(
        text.closed_with().await,
        (
            Some(ErrorCode::MalformedFrame),
            Some(CloseCode::Unsupported)
        )
    );

    // Undecodable body: MALFORMED_FRAME, close 1002.
    let mut garbage = Raw::connect_ws(server.http_addr).await;
    garbage
        .wire
        .ws
        .send(Message::Binary(Bytes::from_static(&[0x92, 0x03, 0x05])))
        .await
        .expect("send");
    assert_eq!(
        garbage.closed_with().await,
        (Some(ErrorCode::MalformedFrame), Some(CloseCode::Protocol))
    );

    // Over max_frame_bytes: FRAME_TOO_LARGE, close 1009.
    let mut huge = Raw::connect_ws(server.http_addr).await;
    let big = vec![0u8; server.config.max_frame_bytes + 1];
    // The server may close before the whole message is written.
    let _ = huge.wire.ws.send(Message::Binary(big.into())).await;
    assert_eq!(
        huge.closed_with().await,
        (Some(ErrorCode::FrameTooLarge), Some(CloseCode::Size))
    );

    // A frame with no body: UNKNOWN_MESSAGE, and the session goes on.
    let mut empty = Raw::connect_ws(server.http_addr).await;
    empty
        .wire
        .ws
        .send(Message::Binary(Bytes::from_static(&[0x08, 0x07])))
        .await
        .expect("send");
    let f = empty.read_frame().await.expect("still open");
    assert_eq!(f.request_id, 7);
    assert!(matches!(f.body, Some(S::Error(e)) if e.code == ErrorCode::UnknownMessage as i32));
    assert!(matches!(
        empty.request(C::Ping(pb::Ping { nonce: 1 })).await,
        S::Pong(_)
    ));

    // Everyone else carries on.
    let ack = a.send_text(conv, "after", "still here").await;
    let m = b.next_message().await;
    assert_eq!((m.seq, m.text.as_str()), (ack.seq, "still here"));
    server.stop().await;
}

#[tokio::test]
async fn foreign_origins_are_refused() {
    let server = TestServer::start();
    let addr = server.http_addr;
    let same = format!("http://{addr}");
    assert!(WebSocket::open(addr, Some(&same)).await.is_ok());
    assert!(WebSocket::open(addr, None).await.is_ok());
    let refused = WebSocket::open(addr, Some("http://evil.example")).await;
    let Err(err) = refused else {
        panic!("a foreign origin was let in")
    };
    assert!(err.contains("403"), "{err}");

    let dir = tempfile::tempdir().expect("dir");
    let mut config = chatd::Config::for_tests(dir.path());
    config.ws_allowed_origins = vec!["https://app.example".into()];
    let server2 = TestServer::start_with(dir, config);
    assert!(
        WebSocket::open(server2.http_addr, Some("https://app.example"))
            .await
            .is_ok()
    );
    assert!(
        WebSocket::open(server2.http_addr, Some("https://other.example"))
            .await
            .is_err()
    );
    server.stop().await;
    server2.stop().await;
}

#[tokio::test]
async fn plain_http_on_the_bridge_path_is_a_bad_request() {
    let server = TestServer::start();
    let mut s = TcpStream::connect(server.http_addr).await.expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    server.stop().await;
}

/// Reads one unmasked server frame: (opcode, payload).
async fn raw_ws_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 2];
    tokio::time::timeout(WAIT, s.read_exact(&mut head))
        .await
        .expect("timed out")
        .ok()?;
    let len = match head[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await.ok()?;
            u16::from_be_bytes(l) as usize
        }
        127 => panic!("unexpectedly long server frame"),
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.ok()?;
    Some((head[0] & 0x0f, payload))
}

#[tokio::test]
async fn websocket_protocol_violations_get_malformed_frame_and_1002() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start();
    let mut s = TcpStream::connect(server.http_addr).await.expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.expect("response");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // RFC 6455's example key and its accept value.
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    // A client frame without a mask is a protocol violation.
    s.write_all(&[0x82, 0x02, 0x08, 0x01]).await.expect("write");
    let (op, payload) = raw_ws_frame(&mut s).await.expect("error frame");
    assert_eq!(op, 0x2, "binary");
    let f = pb::ServerFrame::decode(&payload[..]).expect("frame");
    assert!(
        matches!(f.body, Some(S::Error(ref e)) if e.code == ErrorCode::MalformedFrame as i32),
        "{f:?}"
    );
    let (op, payload) = raw_ws_frame(&mut s).await.expect("close frame");
    assert_eq!(op, 0x8, "close");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1002);
    server.stop().await;
}

#[tokio::test]
async fn a_silent_websocket_client_is_closed_with_idle_timeout() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = chatd::Config::for_tests(dir.path());
    config.handshake_timeout_ms = 200;
    let server = TestServer::start_with(dir, config);
    let ws = WebSocket::open(server.http_addr, None)
        .await
        .expect("upgrade");
    let mut silent = Raw::over(ws);
    assert_eq!(
        silent.closed_with().await,
        (Some(ErrorCode::IdleTimeout), Some(CloseCode::Policy))
    );
    server.stop().await;
}

#[tokio::test]
async fn a_websocket_client_that_stops_reading_is_disconnected() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = chatd::Config::for_tests(dir.path());
    config.session_queue_frames = 16;
    config.shutdown_grace_ms = 500;
    let server = TestServer::start_with(dir, config);
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut lazy = Raw::register_ws(server.http_addr, "lazy").await;
    let mut carol = Raw::register(server.addr, "carol").await;
    let conv = alice
        .create_group("g", &[lazy.user_id, carol.user_id])
        .await;
    let body = "x".repeat(60 * 1024);
    // ~18 MiB towards a client that reads nothing.
    for i in 0..300 {
        alice.send_text(conv, &i.to_string(), &body).await;
        assert_eq!(carol.next_message().await.seq, i + 1);
    }
    // Reading now finds the end of the connection after what was sent.
    let mut frames = 0;
    while lazy.read_frame().await.is_some() {
        frames += 1;
    }
    assert!(frames < 300, "the slow client was not disconnected");
    server.stop().await;
}
