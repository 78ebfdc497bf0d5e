//! Graceful shutdown and slow consumers.

mod common;

use chat_protocol::ErrorCode;
use chat_protocol::pb::server_frame::Body as S;
use common::{Raw, TestServer};
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn shutdown_tells_every_client_to_go_away() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut idle = Raw::connect(server.addr).await;
    let stop = tokio::spawn(server.stop());
    for c in [&mut alice, &mut idle] {
        let mut goaway = None;
        while let Some(f) = c.read_frame().await {
            if let Some(S::GoAway(g)) = f.body {
                goaway = Some(g);
            }
        }
        let g = goaway.expect("GoAway before the close");
        assert_eq!(g.code, ErrorCode::ShuttingDown as i32);
        assert!(g.reconnect_after_ms > 0);
    }
    stop.await.expect("stopped");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_and_others_continue() {
    slow_consumer(|c| c.session_queue_frames = 16).await;
}

#[tokio::test]
async fn the_byte_bound_of_a_session_queue_also_disconnects() {
    slow_consumer(|c| {
        c.session_queue_frames = 100_000;
        c.session_queue_bytes = 1 << 20;
    })
    .await;
}

async fn slow_consumer(edit: impl FnOnce(&mut chatd::Config)) {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = chatd::Config::for_tests(dir.path());
    edit(&mut config);
    let server = TestServer::start_with(dir, config);
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut lazy = Raw::register(server.addr, "lazy").await;
    let mut carol = Raw::register(server.addr, "carol").await;
    let ids = [lazy.user_id, carol.user_id];
    let conv = alice.create_group("g", &ids).await;
    let body = "x".repeat(60 * 1024);
    // ~18 MiB towards a client that reads nothing: more than the socket
    // buffers and the 16-frame queue hold.
    for i in 0..300 {
        alice.send_text(conv, &i.to_string(), &body).await;
        let m = carol.next_message().await;
        assert_eq!(m.seq, i + 1);
    }
    // The lazy client's connection was closed by the server.
    let mut sink = vec![0u8; 1 << 20];
    let closed = tokio::time::timeout(common::WAIT, async {
        loop {
            match lazy.wire.stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "slow consumer was not disconnected");
    server.stop().await;
}

/// A listener address someone already holds is refused at start, whether
/// the holder is another server or another listener of the same
/// configuration: SO_REUSEPORT would otherwise let both accept on it and
/// split the connections between them.
#[tokio::test]
async fn a_listener_address_already_held_is_refused_at_start() {
    let running = TestServer::start();
    let expect_in_use = |config: chatd::Config| match chatd::ServerHandle::start(config) {
        Err(e @ chatd::StartError::Io { .. }) => {
            assert!(e.to_string().contains("already in use"), "{e}")
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("started on an address that is already held"),
    };

    let dir = tempfile::tempdir().expect("dir");
    let mut second = chatd::Config::for_tests(dir.path());
    second.tcp_listen = running.addr;
    expect_in_use(second);

    let dir = tempfile::tempdir().expect("dir");
    let mut twice = chatd::Config::for_tests(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    twice.tls_listen = Some(port);
    twice.wss_listen = Some(port);
    expect_in_use(twice);

    // The running server was not disturbed.
    let _alice = Raw::register(running.addr, "alice").await;
    running.stop().await;
}
