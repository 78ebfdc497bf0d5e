//! QUIC specifics, driven by a raw quinn client: the session stream,
//! datagrams for typing in both directions, and garbage (on the stream and
//! as stray UDP packets) getting the spec's error without disturbing
//! anyone else.

mod common;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use common::wire::Quic;
use common::{Raw, TestServer, WAIT};
use prost::Message as _;

#[tokio::test]
async fn garbage_on_the_session_stream_gets_the_spec_error() {
    let server = TestServer::start();
    let mut a = Raw::register(server.addr, "alice").await;
    let mut b = Raw::register_quic(&server, "bob", &[]).await;
    let conv = a.create_direct(b.user_id).await;

    // Undecodable body: MALFORMED_FRAME, then the connection closes with
    // that code as QUIC application error.
    let (mut garbage, _) = Raw::connect_quic(&server, &[]).await;
    garbage.write_bytes(&[0x03, 0x92, 0x03, 0x05]).await;
    assert_eq!(
        garbage.closed_with().await,
        (
            Some(ErrorCode::MalformedFrame),
            Some(ErrorCode::MalformedFrame as u64)
        )
    );

    // A length prefix over the limit: FRAME_TOO_LARGE before any body.
    let mut huge = Raw::over(Quic::open(&server).await);
    huge.write_bytes(&[0x81, 0x80, 0x40]).await;
    assert_eq!(
        huge.closed_with().await,
        (
            Some(ErrorCode::FrameTooLarge),
            Some(ErrorCode::FrameTooLarge as u64)
        )
    );

    // Stray UDP packets on the QUIC port are dropped by the endpoint.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp");
    let port = server.quic_addr.expect("quic");
    for len in [1usize, 20, 1200, 1500] {
        let junk: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        udp.send_to(&junk, port).await.expect("send");
    }

    // Everyone else carries on, on both transports.
    let ack = a.send_text(conv, "after", "still here").await;
    loop {
        let f = b.read_frame().await.expect("open");
        if let Some(S::MessagePush(p)) = f.body {
            let m = p.message.expect("message");
            if m.seq == ack.seq {
                assert_eq!(m.text, "still here");
                break;
            }
        }
    }
    let (mut fresh, _) = Raw::connect_quic(&server, &[]).await;
    assert!(matches!(
        fresh.request(C::Ping(pb::Ping { nonce: 3 })).await,
        S::Pong(pb::Pong { nonce: 3 })
    ));
    server.stop().await;
}

#[tokio::test]
async fn typing_travels_as_datagrams_when_both_sides_support_them() {
    let server = TestServer::start();
    // The server announces the capability on QUIC...
    let (_probe, caps) = Raw::connect_quic(&server, &["datagrams"]).await;
    assert_eq!(caps, vec!["datagrams".to_owned()]);
    let mut with = Raw::register_quic(&server, "dora", &["datagrams"]).await;
    let mut without = Raw::register_quic(&server, "steve", &[]).await;
    let mut typist = Raw::register(server.addr, "tina").await;
    let conv = typist
        .create_group("g", &[with.user_id, without.user_id])
        .await;

    typist
        .send(C::Typing(pb::Typing {
            conversation_id: conv,
            active: true,
        }))
        .await;
    // ...and sends TypingEvent as a datagram to the client that asked...
    let f = with.wire.datagram().await;
    match f.body {
        Some(S::TypingEvent(t)) => {
            assert_eq!(
                (t.conversation_id, t.user_id, t.active),
                (conv, typist.user_id, true)
            );
        }
        other => panic!("{other:?}"),
    }
    // ...and on the stream to the one that did not.
    loop {
        let f = without.read_frame().await.expect("open");
        if let Some(S::TypingEvent(t)) = f.body {
            assert_eq!((t.conversation_id, t.active), (conv, true));
            break;
        }
    }

    // A client may send Typing as a datagram: one frame body, no prefix.
    let typing = pb::ClientFrame {
        request_id: 0,
        body: Some(C::Typing(pb::Typing {
            conversation_id: conv,
            active: true,
        })),
    };
    with.wire
        .conn
        .send_datagram(typing.encode_to_vec().into())
        .expect("datagram");
    loop {
        let f = typist.read_frame().await.expect("open");
        if let Some(S::TypingEvent(t)) = f.body {
            if t.user_id == with.user_id {
                assert!(t.active);
                break;
            }
        }
    }
    // Garbage datagrams are dropped; the session goes on.
    with.wire
        .conn
        .send_datagram(vec![0xff, 0x00, 0x13].into())
        .expect("datagram");
    assert!(matches!(
        with.request(C::Ping(pb::Ping { nonce: 9 })).await,
        S::Pong(pb::Pong { nonce: 9 })
    ));
    server.stop().await;
}

#[tokio::test]
async fn other_transports_do_not_announce_datagrams() {
    let server = TestServer::start();
    let mut tcp = Raw::connect_bare(server.addr).await;
    let welcome = tcp
        .request(C::Hello(pb::Hello {
            protocol_version: 1,
            capabilities: vec!["datagrams".into()],
            ..Default::default()
        }))
        .await;
    let S::Welcome(w) = welcome else {
        panic!("{welcome:?}")
    };
    assert!(w.capabilities.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn a_silent_quic_client_is_closed_with_idle_timeout() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = chatd::Config::for_tests(dir.path());
    config.handshake_timeout_ms = 300;
    let server = TestServer::start_with(dir, config);
    // The stream exists once its first byte is sent; Hello never follows.
    let mut silent = Raw::over(Quic::open(&server).await);
    silent.write_bytes(&[0x07]).await;
    assert_eq!(
        silent.closed_with().await,
        (
            Some(ErrorCode::IdleTimeout),
            Some(ErrorCode::IdleTimeout as u64)
        )
    );
    server.stop().await;
}

#[tokio::test]
async fn a_quic_client_that_stops_reading_is_disconnected() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = chatd::Config::for_tests(dir.path());
    config.session_queue_frames = 16;
    config.shutdown_grace_ms = 500;
    let server = TestServer::start_with(dir, config);
    let mut alice = Raw::register(server.addr, "alice").await;
    let lazy = Raw::register_quic(&server, "lazy", &[]).await;
    let mut carol = Raw::register(server.addr, "carol").await;
    let conv = alice
        .create_group("g", &[lazy.user_id, carol.user_id])
        .await;
    let body = "x".repeat(60 * 1024);
    // ~18 MiB towards a client that reads nothing: more than QUIC's flow
    // control windows and the 16-frame queue hold.
    for i in 0..300 {
        alice.send_text(conv, &i.to_string(), &body).await;
        assert_eq!(carol.next_message().await.seq, i + 1);
    }
    let reason = tokio::time::timeout(WAIT, lazy.wire.conn.closed())
        .await
        .expect("the slow client was not disconnected");
    match reason {
        quinn::ConnectionError::ApplicationClosed(a) => {
            assert_eq!(a.error_code.into_inner(), ErrorCode::SlowConsumer as u64);
        }
        other => panic!("{other:?}"),
    }
    server.stop().await;
}
