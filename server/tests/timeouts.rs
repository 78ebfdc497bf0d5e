//! Connections that hold resources without doing their part: slowloris
//! handshakes, silent sessions, and a shutdown that must not wait forever
//! for a client that never reads.

mod common;

use std::time::Duration;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use common::{Raw, TestServer};

fn server_with(edit: impl FnOnce(&mut chatd::Config)) -> TestServer {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = chatd::Config::for_tests(dir.path());
    edit(&mut config);
    TestServer::start_with(dir, config)
}

/// Reads until the server closes, returning the last error code seen.
async fn closed_with(c: &mut Raw) -> Option<ErrorCode> {
    let mut code = None;
    while let Some(f) = c.read_frame().await {
        if let Some(S::Error(e)) = f.body {
            code = ErrorCode::try_from(e.code).ok();
        }
    }
    code
}

fn hello_bytes() -> Vec<u8> {
    let frame = pb::ClientFrame {
        request_id: 1,
        body: Some(C::Hello(pb::Hello {
            protocol_version: 1,
            client_name: "slow".repeat(25),
            ..Default::default()
        })),
    };
    chat_protocol::codec::encode_to_vec(&frame, 1 << 20).expect("encode")
}

#[tokio::test]
async fn a_hello_trickled_byte_by_byte_is_cut_off_at_the_handshake_timeout() {
    let server = server_with(|c| c.handshake_timeout_ms = 300);
    // Many of them at once, each sending part of a Hello and stalling, and
    // one that keeps trickling: the deadline does not move with traffic.
    let hello = hello_bytes();
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut c = Raw::connect_bare(server.addr).await;
        c.write_bytes(&hello[..hello.len() / 2]).await;
        stalled.push(c);
    }
    // 100+ bytes at one per 50 ms would take over 5 s; the server closes at
    // 300 ms, after which writes fail.
    let mut trickler = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let mut cut_off = false;
    for b in &hello[..hello.len() - 1] {
        if tokio::io::AsyncWriteExt::write_all(&mut trickler, &[*b])
            .await
            .is_err()
        {
            cut_off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cut_off, "a trickled Hello kept the connection open");
    for mut c in stalled {
        assert_eq!(closed_with(&mut c).await, Some(ErrorCode::IdleTimeout));
    }
    // Meanwhile and afterwards, others are served.
    let mut alice = Raw::register(server.addr, "alice").await;
    let pong = alice.request(C::Ping(pb::Ping { nonce: 7 })).await;
    assert!(matches!(pong, S::Pong(pb::Pong { nonce: 7 })));
    server.stop().await;
}

#[tokio::test]
async fn a_logged_in_session_that_goes_silent_is_reaped_by_the_heartbeat_timeout() {
    let server = server_with(|c| c.heartbeat_interval_ms = 200);
    let mut silent = Raw::register(server.addr, "silent").await;
    let mut chatty = Raw::register(server.addr, "chatty").await;
    // The chatty one pings within every interval and stays; the silent one
    // is closed after 3 intervals without a frame.
    let reaped = async { closed_with(&mut silent).await };
    let keep_alive = async {
        for i in 0..20 {
            let pong = chatty.request(C::Ping(pb::Ping { nonce: i })).await;
            assert!(matches!(pong, S::Pong(_)));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (code, ()) = tokio::join!(reaped, keep_alive);
    assert_eq!(code, Some(ErrorCode::IdleTimeout));
    let pong = chatty.request(C::Ping(pb::Ping { nonce: 99 })).await;
    assert!(matches!(pong, S::Pong(pb::Pong { nonce: 99 })));
    server.stop().await;
}

#[tokio::test]
async fn a_frame_trickled_after_login_does_not_keep_the_session_alive() {
    let server = server_with(|c| c.heartbeat_interval_ms = 100);
    let mut slow = Raw::register(server.addr, "slow").await;
    // A 60 KiB message, one byte per 20 ms, for 4 s: each byte arrives
    // well within the 300 ms idle timeout, the frame never completes, and
    // the session is closed.
    let frame = pb::ClientFrame {
        request_id: 9,
        body: Some(common::send_body(1, "x", &"t".repeat(60 * 1024))),
    };
    let bytes = chat_protocol::codec::encode_to_vec(&frame, 1 << 20).expect("encode");
    let mut cut_off = false;
    for b in bytes.iter().take(200) {
        if tokio::io::AsyncWriteExt::write_all(&mut slow.wire.stream, &[*b])
            .await
            .is_err()
        {
            cut_off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cut_off, "a trickled frame kept the session open");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_forever_for_a_client_that_never_reads() {
    let server = server_with(|c| {
        c.shutdown_grace_ms = 300;
        c.session_queue_bytes = 64 << 20;
        c.session_queue_frames = 100_000;
    });
    let mut alice = Raw::register(server.addr, "alice").await;
    let stuck = Raw::register(server.addr, "stuck").await;
    let conv = alice.create_direct(stuck.user_id).await;
    // Megabytes queued towards a client that reads nothing (below the
    // queue bound, so it is not closed as a slow consumer).
    let text = "s".repeat(60 * 1024);
    for i in 0..100 {
        alice.send_text(conv, &i.to_string(), &text).await;
    }
    // Shutdown: GoAway, drain for at most the grace period, then stop. The
    // outer limit only keeps a broken build from hanging the test run.
    let stopped = tokio::time::timeout(Duration::from_secs(60), server.stop()).await;
    assert!(
        stopped.is_ok(),
        "shutdown hung on a client that never reads"
    );
    drop(stuck);
}
