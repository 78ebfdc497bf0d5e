//! Push notifications: users with no connected device get one through the
//! push gateway; connected users, senders and channel subscribers do not;
//! logging out and tokens the gateway rejects end a device's
//! notifications. The gateway is an HTTP server on 127.0.0.1 that records
//! what chatd POSTs to it.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use chat_protocol::pb::{self, PresenceStatus, client_frame::Body as C, server_frame::Body as S};
use common::process::Chatd;
use common::{Raw, TestServer, WAIT};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::mpsc;

/// A push gateway: every request's JSON (and its `Authorization` header)
/// goes to the channel; the answer rejects the tokens in `reject`.
struct Gateway {
    url: String,
    requests: mpsc::UnboundedReceiver<(Option<String>, Value)>,
    reject: Arc<Mutex<Vec<String>>>,
    /// While set, requests are recorded and never answered.
    hang: Arc<AtomicBool>,
    /// TLS handshakes that failed (HTTPS gateways only).
    failed_handshakes: Arc<AtomicUsize>,
}

/// What every connection of a gateway shares.
#[derive(Clone)]
struct Recorder {
    tx: mpsc::UnboundedSender<(Option<String>, Value)>,
    reject: Arc<Mutex<Vec<String>>>,
    hang: Arc<AtomicBool>,
}

impl Recorder {
    fn serve<S>(self, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let this = self.clone();
                async move {
                    let auth = req
                        .headers()
                        .get(hyper::header::AUTHORIZATION)
                        .map(|v| v.to_str().expect("ASCII").to_owned());
                    let body = req.into_body().collect().await.expect("body").to_bytes();
                    let json: Value = serde_json::from_slice(&body).expect("JSON");
                    let _ = this.tx.send((auth, json));
                    if this.hang.load(Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    let answer = serde_json::json!({ "rejected": *this.reject.lock() });
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        answer.to_string(),
                    ))))
                }
            });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
        );
    }
}

impl Gateway {
    /// A plain HTTP gateway.
    async fn start() -> Self {
        Self::serve(None).await
    }

    /// An HTTPS gateway with a self-signed certificate for 127.0.0.1; the
    /// certificate's PEM is returned for chatd to trust.
    async fn start_https() -> (Self, String) {
        let issued =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
        let key = rustls_pki_types::PrivateKeyDer::try_from(issued.signing_key.serialize_der())
            .expect("key");
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![issued.cert.der().clone()], key)
        .expect("TLS config");
        let gateway = Self::serve(Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))).await;
        (gateway, issued.cert.pem())
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}/push", listener.local_addr().expect("addr"));
        let (tx, requests) = mpsc::unbounded_channel();
        let recorder = Recorder {
            tx,
            reject: Arc::new(Mutex::new(Vec::new())),
            hang: Arc::new(AtomicBool::new(false)),
        };
        let (reject, hang) = (recorder.reject.clone(), recorder.hang.clone());
        let failed_handshakes = Arc::new(AtomicUsize::new(0));
        let failed = failed_handshakes.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let recorder = recorder.clone();
                match &tls {
                    None => recorder.serve(stream),
                    Some(acceptor) => {
                        let (acceptor, failed) = (acceptor.clone(), failed.clone());
                        tokio::spawn(async move {
                            match acceptor.accept(stream).await {
                                Ok(stream) => recorder.serve(stream),
                                Err(_) => {
                                    failed.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                        });
                    }
                }
            }
        });
        Self {
            url,
            requests,
            reject,
            hang,
            failed_handshakes,
        }
    }

    async fn next(&mut self) -> Value {
        self.next_with_auth().await.1
    }

    async fn next_with_auth(&mut self) -> (Option<String>, Value) {
        tokio::time::timeout(WAIT, self.requests.recv())
            .await
            .expect("a notification in time")
            .expect("gateway running")
    }
}

async fn register_push(c: &mut Raw, token: &str) {
    let r = c
        .request(C::RegisterPushToken(pb::RegisterPushToken {
            provider: "fcm".into(),
            token: token.into(),
        }))
        .await;
    assert!(matches!(r, S::Done(_)), "{r:?}");
}

/// Waits until `watcher` hears that `user` is offline, so that the server
/// knows it has no connected session.
async fn await_offline(watcher: &mut Raw, user: u64) {
    let r = watcher
        .request(C::SubscribePresence(pb::SubscribePresence {
            user_ids: vec![user],
        }))
        .await;
    assert!(matches!(r, S::Done(_)));
    loop {
        let frame = match watcher.pushes.pop_front() {
            Some(f) => f,
            None => watcher.read_frame().await.expect("connection open"),
        };
        if let Some(S::PresenceEvent(e)) = frame.body {
            if e.user_id == user && e.status == PresenceStatus::Offline as i32 {
                return;
            }
        }
    }
}

fn tokens(request: &Value) -> Vec<String> {
    let mut t: Vec<String> = request["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["token"].as_str().expect("token").to_string())
        .collect();
    t.sort();
    t
}

#[tokio::test]
async fn offline_members_are_notified_through_the_gateway() {
    let mut gateway = Gateway::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let mut config = chatd::Config::for_tests(dir.path());
    config.push_gateway_url = Some(gateway.url.clone());
    // One shard: a message's presence check runs right after its ack, before
    // the shard sees a connection close, so "connected when the message was
    // stored" is exact. The other test covers checks that cross shards.
    config.shards = 1;
    let server = TestServer::start_with(dir, config);

    let mut alice = Raw::register(server.addr, "alice").await;
    let mut bob_phone = Raw::register(server.addr, "bob").await;
    let mut bob_tablet = Raw::login(server.addr, "bob").await;
    let bob = bob_phone.user_id;
    register_push(&mut bob_phone, "bob-phone").await;
    register_push(&mut bob_tablet, "bob-tablet").await;
    let mut carol = Raw::register(server.addr, "carol").await;
    register_push(&mut carol, "carol-phone").await;
    let carol_id = carol.user_id;
    let direct = alice.create_direct(bob).await;
    let group = alice.create_group("trip", &[bob, carol_id]).await;

    // Bob is connected: nothing is pushed for seq 1.
    alice.send_text(direct, "d1", "you are online").await;
    drop(bob_phone);
    drop(bob_tablet);
    await_offline(&mut alice, bob).await;

    // Offline now: both of Bob's devices in one request, with a preview.
    let ack = alice.send_text(direct, "d2", "are you there?").await;
    let first = gateway.next().await;
    assert_eq!(first["user_id"], bob);
    let n = &first["notification"];
    assert_eq!(n["conversation_id"], direct);
    assert_eq!(
        n["seq"], ack.seq,
        "the message sent while Bob was online was not pushed"
    );
    assert_eq!(n["sender_id"], alice.user_id);
    assert_eq!(n["conversation_kind"], "direct");
    assert_eq!(n["preview"], "are you there?");
    assert_eq!(tokens(&first), ["bob-phone", "bob-tablet"]);

    // In the group, offline Carol and Bob are notified, the sender is not.
    drop(carol);
    await_offline(&mut alice, carol_id).await;
    // The gateway rejects Bob's phone token from now on.
    gateway.reject.lock().push("bob-phone".into());
    alice.send_text(group, "g1", "dinner at 8").await;
    let mut notified = Vec::new();
    for _ in 0..2 {
        let r = gateway.next().await;
        assert_eq!(r["notification"]["conversation_kind"], "group");
        assert_eq!(r["notification"]["title"], "trip");
        notified.push((r["user_id"].as_u64().expect("user"), tokens(&r)));
    }
    notified.sort();
    assert_eq!(
        notified,
        [
            (bob, vec!["bob-phone".to_string(), "bob-tablet".to_string()]),
            (carol_id, vec!["carol-phone".to_string()])
        ]
    );

    // Channels never notify.
    let channel = match alice
        .request(C::CreateConversation(pb::CreateConversation {
            kind: pb::ConversationKind::Channel as i32,
            member_ids: vec![],
            title: "news".into(),
        }))
        .await
    {
        S::Conversation(c) => c.conversation_id,
        other => panic!("{other:?}"),
    };
    let mut bob_again = Raw::login(server.addr, "bob").await;
    let r = bob_again
        .request(C::SubscribeChannel(pb::SubscribeChannel {
            conversation_id: channel,
        }))
        .await;
    assert!(matches!(r, S::Done(_)));
    // A laptop registers and logs out: its session, and so its push
    // address, is gone.
    register_push(&mut bob_again, "bob-laptop").await;
    let r = bob_again
        .request(C::Logout(pb::Logout { all_devices: false }))
        .await;
    assert!(matches!(r, S::Done(_)));
    drop(bob_again);
    alice.send_text(channel, "c1", "breaking").await;
    // A direct message afterwards reaches the gateway; the channel post
    // before it did not. The rejected phone token and the logged-out laptop
    // are gone: only the tablet is left.
    let ack = alice.send_text(direct, "d3", "still there?").await;
    let r = gateway.next().await;
    assert_eq!(r["notification"]["conversation_id"], direct);
    assert_eq!(r["notification"]["seq"], ack.seq);
    assert_eq!(tokens(&r), ["bob-tablet"]);
    server.stop().await;
}

#[tokio::test]
async fn push_tokens_are_validated_and_previews_can_be_turned_off() {
    let mut gateway = Gateway::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let mut config = chatd::Config::for_tests(dir.path());
    config.push_gateway_url = Some(gateway.url.clone());
    config.push_preview = false;
    let server = TestServer::start_with(dir, config);
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let bad = bob
        .request(C::RegisterPushToken(pb::RegisterPushToken {
            provider: "pager".into(),
            token: "t".into(),
        }))
        .await;
    assert_eq!(
        common::error_code(&bad),
        chat_protocol::ErrorCode::InvalidArgument
    );
    register_push(&mut bob, "bob-phone").await;
    let bob_id = bob.user_id;
    let direct = alice.create_direct(bob_id).await;
    drop(bob);
    await_offline(&mut alice, bob_id).await;
    alice.send_text(direct, "d1", "secret plans").await;
    let r = gateway.next().await;
    assert_eq!(r["notification"]["preview"], "");
    server.stop().await;
}

/// A notification under way when the server is killed is sent after the
/// restart (from the outbox written with the message); one the gateway has
/// taken is not sent again.
#[tokio::test]
async fn notifications_unfinished_at_a_crash_are_sent_after_the_restart() {
    let mut gateway = Gateway::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let mut chatd = Chatd::start(
        dir.path(),
        &format!("shards = 1\npush_gateway_url = \"{}\"", gateway.url),
    );
    let mut alice = Raw::register(chatd.addr, "alice").await;
    let mut bob_phone = Raw::register(chatd.addr, "bob").await;
    let bob = bob_phone.user_id;
    register_push(&mut bob_phone, "bob-phone").await;
    let direct = alice.create_direct(bob).await;
    drop(bob_phone);
    await_offline(&mut alice, bob).await;

    // Taken by the gateway: its outbox entry goes.
    let taken = alice.send_text(direct, "m1", "first").await;
    assert_eq!(gateway.next().await["notification"]["seq"], taken.seq);
    common::wait_until("the outbox entry cleared", async || {
        chatd.metric("chatd_push_outbox_cleared_total").await >= 1.0
    })
    .await;
    assert_eq!(chatd.metric("chatd_push_outbox_cleared_total").await, 1.0);

    // The gateway hangs: the notification is under way when the server dies.
    gateway.hang.store(true, Ordering::SeqCst);
    let pending = alice.send_text(direct, "m2", "second").await;
    assert_eq!(gateway.next().await["notification"]["seq"], pending.seq);
    chatd.kill();
    gateway.hang.store(false, Ordering::SeqCst);
    chatd.spawn();
    chatd.wait_listening().await;

    let again = gateway.next().await;
    assert_eq!(again["user_id"], bob);
    assert_eq!(again["notification"]["seq"], pending.seq);
    assert_eq!(again["notification"]["preview"], "second");
    assert_eq!(tokens(&again), ["bob-phone"]);

    // Nothing else was left over: the next notification is a new message's.
    let mut alice = Raw::login(chatd.addr, "alice").await;
    let next = alice.send_text(direct, "m3", "third").await;
    assert_eq!(gateway.next().await["notification"]["seq"], next.seq);
    chatd.kill();
}

/// Registers Alice and Bob, whose phone registers for push and goes
/// offline; returns Alice's connection and their direct chat.
async fn alice_and_offline_bob(addr: std::net::SocketAddr) -> (Raw, u64) {
    let mut alice = Raw::register(addr, "alice").await;
    let mut bob = Raw::register(addr, "bob").await;
    register_push(&mut bob, "bob-phone").await;
    let bob_id = bob.user_id;
    let direct = alice.create_direct(bob_id).await;
    drop(bob);
    await_offline(&mut alice, bob_id).await;
    (alice, direct)
}

/// An `https://` gateway is verified against the configured certificate
/// and gets the configured token; one chatd does not trust gets nothing,
/// and the failure is counted.
#[tokio::test]
async fn https_gateways_are_verified_and_given_the_token() {
    let (mut gateway, cert) = Gateway::start_https().await;
    let dir = tempfile::tempdir().expect("dir");
    let ca = dir.path().join("gateway.pem");
    std::fs::write(&ca, &cert).expect("write");
    let mut config = chatd::Config::for_tests(dir.path().join("data"));
    config.push_gateway_url = Some(gateway.url.clone());
    config.push_gateway_ca = Some(ca);
    config.push_gateway_token = Some(chatd::Secret::from("s3cret".to_owned()));
    let server = TestServer::start_with(dir, config);
    let (mut alice, direct) = alice_and_offline_bob(server.addr).await;
    let ack = alice.send_text(direct, "d1", "over TLS").await;
    let (auth, request) = gateway.next_with_auth().await;
    assert_eq!(auth.as_deref(), Some("Bearer s3cret"));
    assert_eq!(request["notification"]["seq"], ack.seq);
    assert_eq!(tokens(&request), ["bob-phone"]);
    assert_eq!(gateway.failed_handshakes.load(Ordering::SeqCst), 0);
    server.stop().await;

    // Without the certificate configured, chatd refuses the gateway's.
    let (mut gateway, _) = Gateway::start_https().await;
    let dir = tempfile::tempdir().expect("dir");
    let mut chatd = Chatd::start(
        dir.path(),
        &format!("shards = 1\npush_gateway_url = \"{}\"", gateway.url),
    );
    let (mut alice, direct) = alice_and_offline_bob(chatd.addr).await;
    alice.send_text(direct, "d1", "not for strangers").await;
    common::wait_until("a push failure counted", async || {
        chatd.metric("chatd_push_failed_total").await >= 1.0
    })
    .await;
    assert_eq!(chatd.metric("chatd_push_sent_total").await, 0.0);
    assert!(gateway.requests.try_recv().is_err(), "nothing was sent");
    // The gateway may see the last refusal a moment after chatd counts it.
    let tries = chatd::push::ATTEMPTS as usize;
    common::wait_until("every handshake at the gateway", async || {
        gateway.failed_handshakes.load(Ordering::SeqCst) >= tries
    })
    .await;
    assert_eq!(
        gateway.failed_handshakes.load(Ordering::SeqCst),
        tries,
        "one refused handshake per try"
    );
    chatd.kill();
}

#[test]
fn gateway_settings_are_checked_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = chatd::Config::for_tests(dir.path());
    config.push_gateway_url = Some("ftp://127.0.0.1/push".into());
    let err = chatd::ServerHandle::start(config.clone()).expect_err("bad scheme");
    assert!(err.to_string().contains("https:// or http://"), "{err}");
    config.push_gateway_url = Some("https://127.0.0.1/push".into());
    config.push_gateway_ca = Some(dir.path().join("missing.pem"));
    let err = chatd::ServerHandle::start(config.clone()).expect_err("missing CA file");
    assert!(err.to_string().contains("push_gateway_ca"), "{err}");
    config.push_gateway_ca = None;
    config.push_gateway_token = Some(chatd::Secret::from("line\nbreak".to_owned()));
    let err = chatd::ServerHandle::start(config).expect_err("bad token");
    assert!(err.to_string().contains("push_gateway_token"), "{err}");
}

#[tokio::test]
async fn notifications_follow_each_members_level() {
    let mut gateway = Gateway::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let mut config = chatd::Config::for_tests(dir.path());
    config.push_gateway_url = Some(gateway.url.clone());
    config.shards = 1;
    let server = TestServer::start_with(dir, config);
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut offline = Vec::new();
    for name in ["bob", "carol", "dave", "erin"] {
        let mut c = Raw::register(server.addr, name).await;
        register_push(&mut c, &format!("{name}-phone")).await;
        offline.push(c);
    }
    let ids: Vec<u64> = offline.iter().map(|c| c.user_id).collect();
    let (bob, dave, erin) = (ids[0], ids[2], ids[3]);
    let group = alice.create_group("trip", &ids).await;
    let set = |level: pb::NotificationLevel, until: u64| {
        C::SetNotificationLevel(pb::SetNotificationLevel {
            conversation_id: group,
            level: level as i32,
            muted_until_ms: until,
        })
    };
    // Bob: mentions only; Carol: muted; Dave: muted until a time past;
    // Erin: all (the default).
    let levels = [
        set(pb::NotificationLevel::Mentions, 0),
        set(pb::NotificationLevel::Muted, 0),
        set(pb::NotificationLevel::Muted, 1),
    ];
    for (c, body) in offline.iter_mut().zip(levels) {
        assert!(matches!(c.request(body).await, S::Done(_)));
    }
    for c in offline.drain(..) {
        let user = c.user_id;
        drop(c);
        await_offline(&mut alice, user).await;
    }

    let plain = alice.send_text(group, "g1", "plain").await.seq;
    let to_bob = match alice
        .request(C::SendMessage(pb::SendMessage {
            conversation_id: group,
            client_msg_id: "g2".into(),
            text: "@bob look".into(),
            mention_ids: vec![bob],
            ..Default::default()
        }))
        .await
    {
        S::SendAck(a) => a.seq,
        other => panic!("send: {other:?}"),
    };
    let everyone = match alice
        .request(C::SendMessage(pb::SendMessage {
            conversation_id: group,
            client_msg_id: "g3".into(),
            text: "@everyone".into(),
            mention_everyone: true,
            ..Default::default()
        }))
        .await
    {
        S::SendAck(a) => a.seq,
        other => panic!("send: {other:?}"),
    };
    // A direct message to Erin marks the end.
    let direct = alice.create_direct(erin).await;
    let marker = alice.send_text(direct, "d1", "marker").await.seq;
    let mut want = vec![
        (dave, plain),
        (erin, plain),
        (bob, to_bob),
        (dave, to_bob),
        (erin, to_bob),
        (bob, everyone),
        (dave, everyone),
        (erin, everyone),
    ];
    want.sort_unstable();
    // The push thread has several notifications in flight at once, so the
    // marker may overtake the group's: everything is read until both the
    // marker and every expected one arrived. A notification the levels
    // should have held back (Carol's) was offered before the marker.
    let mut got = Vec::new();
    let mut marked = false;
    while !marked || !want.iter().all(|w| got.contains(w)) {
        let r = gateway.next().await;
        let n = &r["notification"];
        let (user, seq) = (
            r["user_id"].as_u64().expect("user"),
            n["seq"].as_u64().expect("seq"),
        );
        if n["conversation_id"] == direct && seq == marker {
            marked = true;
        } else {
            got.push((user, seq));
        }
    }
    got.sort_unstable();
    assert_eq!(got, want, "Carol is muted; Bob hears of mentions only");
    server.stop().await;
}
