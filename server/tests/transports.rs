//! The same session logic over every transport, through client-lib with
//! one URL per scheme: `tcp://`, `tls://`, `quic://`, `ws://`, `wss://`.
//!
//! For each: 1:1, group, sync after being offline, idempotent retry, and
//! sends that keep going across a server restart (reconnect and resume).
//! Then messages crossing between QUIC and WebSocket clients, and clients
//! that do not trust the certificate being refused.

mod common;

use std::time::Duration;

use chat_client::pb;
use chat_client::{Client, ClientOptions, ConversationId, Error, Event, Events, UserId};
use common::TestServer;

const WAIT: Duration = Duration::from_secs(30);

/// The server's URL for `scheme`.
fn url(server: &TestServer, scheme: &str) -> String {
    let some = |a: Option<std::net::SocketAddr>| a.expect("listener enabled");
    // TLS-based schemes connect by name: the generated certificate names
    // localhost (and 127.0.0.1).
    match scheme {
        "tcp" => format!("tcp://{}", server.addr),
        "tls" => format!("tls://localhost:{}", some(server.tls_addr).port()),
        "quic" => format!("quic://localhost:{}", some(server.quic_addr).port()),
        "ws" => format!("ws://{}/ws", server.http_addr),
        "wss" => format!("wss://localhost:{}/ws", some(server.wss_addr).port()),
        other => panic!("unknown scheme {other}"),
    }
}

/// Client options that trust the server's generated certificate.
fn trusting(server: &TestServer) -> ClientOptions {
    ClientOptions {
        reconnect_min_delay: Duration::from_millis(20),
        reconnect_max_delay: Duration::from_millis(200),
        ..ClientOptions::default()
    }
    .trust_cert_file(server.cert_path.as_ref().expect("certificate"))
    .expect("read the certificate")
}

async fn connect(server: &TestServer, scheme: &str) -> (Client, Events) {
    Client::connect(&url(server, scheme), trusting(server))
        .await
        .unwrap_or_else(|e| panic!("{scheme}: connect: {e}"))
}

async fn user(server: &TestServer, scheme: &str, name: &str) -> (Client, Events, UserId) {
    let (c, e) = connect(server, scheme).await;
    let id = c
        .register(name, "password123", name)
        .await
        .unwrap_or_else(|e| panic!("{scheme}: register {name}: {e}"))
        .user_id;
    (c, e, UserId(id))
}

/// Message events until `n` arrived in `conversation`.
async fn messages(events: &mut Events, conversation: u64, n: usize) -> Vec<pb::Message> {
    let mut out = Vec::new();
    while out.len() < n {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("timed out waiting for messages")
            .expect("event stream open");
        if let Event::Message(m) = event {
            if m.conversation_id == conversation {
                out.push(m);
            }
        }
    }
    out
}

fn seqs(ms: &[pb::Message]) -> Vec<u64> {
    ms.iter().map(|m| m.seq).collect()
}

async fn core_scenarios(scheme: &str) {
    let server = TestServer::start();
    let (alice, mut alice_events, _) = user(&server, scheme, "alice").await;
    let (bob, mut bob_events, bob_id) = user(&server, scheme, "bob").await;
    let (carol, mut carol_events, carol_id) = user(&server, scheme, "carol").await;

    // 1:1.
    let direct = alice.create_direct(bob_id).await.expect("direct");
    let d = ConversationId(direct.conversation_id);
    for i in 0..20 {
        let ack = alice.send_text(d, &format!("d{i}")).await.expect("ack");
        assert_eq!(ack.seq, i + 1, "{scheme}");
    }
    let got = messages(&mut bob_events, d.0, 20).await;
    assert_eq!(seqs(&got), (1..=20).collect::<Vec<_>>(), "{scheme}");
    assert_eq!(got[19].text, "d19");

    // Group.
    let group = alice
        .create_group("trio", &[bob_id, carol_id])
        .await
        .expect("group");
    let g = group.conversation_id;
    let ack = bob
        .send_text(ConversationId(g), "hi all")
        .await
        .expect("ack");
    for events in [&mut alice_events, &mut carol_events] {
        let got = messages(events, g, ack.seq as usize).await;
        let last = got.last().expect("a message");
        assert_eq!((last.seq, last.text.as_str()), (ack.seq, "hi all"));
    }

    // Idempotent retry: the same client_msg_id twice is one message.
    let msg = pb::SendMessage {
        conversation_id: d.0,
        client_msg_id: format!("retry-{scheme}"),
        text: "once".into(),
        ..Default::default()
    };
    let first = alice.send(msg.clone()).await.expect("first");
    let again = alice.send(msg).await.expect("retry");
    assert_eq!((first.seq, first.message_id), (again.seq, again.message_id));
    assert_eq!(
        seqs(&messages(&mut bob_events, d.0, 1).await),
        vec![first.seq]
    );

    // Sync: carol goes offline, messages pile up, a new client of hers
    // logs in and gets exactly them.
    carol.close().await;
    drop(carol_events);
    for i in 0..5 {
        alice
            .send_text(ConversationId(g), &format!("while away {i}"))
            .await
            .expect("ack");
    }
    let (carol, mut carol_events) = connect(&server, scheme).await;
    carol.login("carol", "password123").await.expect("login");
    carol.sync().await.expect("sync");
    let got = messages(&mut carol_events, g, 6).await;
    assert_eq!(
        seqs(&got),
        (1..=6).collect::<Vec<_>>(),
        "{scheme}: everything in the group, once"
    );
    assert_eq!(got[5].text, "while away 4");

    // Sends keep going while the server restarts: the client reconnects
    // over the same transport, resumes and re-sends; nothing is lost or
    // doubled.
    let sender = {
        let alice = alice.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..60 {
                let ack = alice
                    .send_text(d, &format!("r{i}"))
                    .await
                    .expect("acked eventually");
                acked.push(ack.seq);
            }
            acked
        })
    };
    let base = first.seq;
    let wait_some = messages(&mut bob_events, d.0, 5).await;
    assert_eq!(wait_some[0].seq, base + 1);
    let server = server.restart().await;
    let acked = sender.await.expect("sender");
    assert_eq!(
        acked,
        (base + 1..=base + 60).collect::<Vec<_>>(),
        "{scheme}: each send acked once, in order"
    );
    let rest = messages(&mut bob_events, d.0, 55).await;
    assert_eq!(
        seqs(&rest),
        (base + 6..=base + 60).collect::<Vec<_>>(),
        "{scheme}: bob got every message once"
    );
    drop((alice, bob, carol));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_scenarios_over_tcp() {
    core_scenarios("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_scenarios_over_tls() {
    core_scenarios("tls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_scenarios_over_quic() {
    core_scenarios("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_scenarios_over_websocket() {
    core_scenarios("ws").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_scenarios_over_websocket_tls() {
    core_scenarios("wss").await;
}

#[tokio::test]
async fn quic_and_websocket_clients_talk_to_each_other() {
    let server = TestServer::start();
    let (q, mut q_events, _) = user(&server, "quic", "quinn").await;
    let (w, mut w_events, w_id) = user(&server, "ws", "wanda").await;
    let d = ConversationId(q.create_direct(w_id).await.expect("direct").conversation_id);

    let ack = q.send_text(d, "over quic").await.expect("ack");
    let got = messages(&mut w_events, d.0, 1).await;
    assert_eq!((got[0].seq, got[0].text.as_str()), (ack.seq, "over quic"));

    let ack = w.send_text(d, "over websocket").await.expect("ack");
    let got = messages(&mut q_events, d.0, 2).await;
    assert_eq!(
        (got[1].seq, got[1].text.as_str()),
        (ack.seq, "over websocket")
    );

    // Typing from the WebSocket side reaches the QUIC side (as a datagram
    // when both support it, see tests/quic.rs).
    w.typing(d, true).await.expect("typing");
    loop {
        let event = tokio::time::timeout(WAIT, q_events.next())
            .await
            .expect("typing event")
            .expect("open");
        if let Event::Typing(t) = event {
            assert_eq!((t.conversation_id, t.active), (d.0, true));
            break;
        }
    }
    // And from the QUIC side, which sends it as a datagram.
    q.typing(d, true).await.expect("typing");
    loop {
        let event = tokio::time::timeout(WAIT, w_events.next())
            .await
            .expect("typing event")
            .expect("open");
        if let Event::Typing(t) = event {
            assert_eq!((t.conversation_id, t.active), (d.0, true));
            break;
        }
    }
    // Both typing events travelled as datagrams on the QUIC leg.
    let metrics = http_get(server.http_addr, "/metrics").await;
    for name in [
        "chatd_datagrams_sent_total",
        "chatd_datagrams_received_total",
    ] {
        let value: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"));
        assert!(value >= 1.0, "{name} = {value}");
    }
    server.stop().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn clients_that_do_not_trust_the_certificate_are_refused() {
    let server = TestServer::start();
    let untrusting = ClientOptions {
        reconnect: false,
        request_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    for scheme in ["tls", "quic", "wss"] {
        match Client::connect(&url(&server, scheme), untrusting.clone()).await {
            Err(Error::Tls(reason)) => {
                assert!(reason.to_lowercase().contains("certificate"), "{reason}");
            }
            Err(other) => panic!("{scheme}: expected a TLS error, got {other}"),
            Ok(_) => panic!("{scheme}: an untrusted certificate was accepted"),
        }
    }
    // The server is fine and serves those that do trust it, by name or by
    // address (the generated certificate names 127.0.0.1 too).
    let (c, _events) = connect(&server, "tls").await;
    c.register("trusty", "password123", "")
        .await
        .expect("register");
    let by_ip = format!("quic://{}", server.quic_addr.expect("quic"));
    let (c, _events) = Client::connect(&by_ip, trusting(&server))
        .await
        .expect("connect by address");
    c.login("trusty", "password123").await.expect("login");
    server.stop().await;
}

#[tokio::test]
async fn a_configured_certificate_replaces_the_generated_one() {
    // The generated certificate is made once and kept across restarts.
    let server = TestServer::start();
    let generated = server.cert_path.clone().expect("generated");
    let pem = std::fs::read(&generated).expect("read");
    let server = server.restart().await;
    assert_eq!(std::fs::read(&generated).expect("read"), pem, "reused");
    let dir = server.stop_keeping_data().await;

    // A configured certificate and key are served instead.
    let own = tempfile::tempdir().expect("dir");
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let (cert, key) = (own.path().join("c.pem"), own.path().join("k.pem"));
    std::fs::write(&cert, issued.cert.pem()).expect("write");
    std::fs::write(&key, issued.signing_key.serialize_pem()).expect("write");
    let mut config = chatd::Config::for_tests(dir.path());
    config.tls_cert = Some(cert.clone());
    config.tls_key = Some(key.clone());
    let server = TestServer::start_with(dir, config.clone());
    assert_eq!(server.cert_path.as_deref(), Some(cert.as_path()));
    let tls = url(&server, "tls");
    let trusting_own = ClientOptions::default()
        .trust_cert_file(&cert)
        .expect("read");
    let (c, _events) = Client::connect(&tls, trusting_own).await.expect("trusted");
    c.close().await;
    let trusting_generated = ClientOptions {
        reconnect: false,
        ..ClientOptions::default()
    }
    .trust_cert_file(&generated)
    .expect("read");
    assert!(matches!(
        Client::connect(&tls, trusting_generated).await,
        Err(Error::Tls(_))
    ));
    server.stop().await;

    // A certificate without its key is a configuration error.
    let half = tempfile::tempdir().expect("dir");
    let mut config = chatd::Config::for_tests(half.path());
    config.tls_cert = Some(cert);
    match chatd::ServerHandle::start(config) {
        Err(chatd::StartError::Tls(e)) => assert!(e.to_string().contains("together"), "{e}"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("started with a certificate but no key"),
    }
}
