//! Session resume through client-lib against a real server, with the
//! network in between played by a TCP proxy the test controls: dropped
//! connections, lost acks, half-open connections, graceful restarts. The
//! app does nothing but send and read its event stream, and sees every
//! message once. (Restarts after SIGKILL are `crash.rs`.)

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_client::{Client, ClientOptions, ConversationId, Event, Events, UserId};
use common::TestServer;

/// How long the client library gets to reconnect and catch up.
const RESUME_WAIT: Duration = Duration::from_secs(30);
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One proxied connection's switches.
#[derive(Default)]
struct Link {
    /// Drop bytes from the server instead of forwarding them.
    drop_down: AtomicBool,
    /// Drop bytes in both directions (a half-open path).
    blackhole: AtomicBool,
    /// Close both sides.
    cut: tokio::sync::Notify,
}

/// A TCP proxy from a local port to the server.
struct Proxy {
    addr: SocketAddr,
    links: Arc<Mutex<Vec<Arc<Link>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let links: Arc<Mutex<Vec<Arc<Link>>>> = Arc::default();
        let accept = {
            let links = links.clone();
            tokio::spawn(async move {
                while let Ok((down, _)) = listener.accept().await {
                    let Ok(up) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let link = Arc::new(Link::default());
                    links.lock().expect("links").push(link.clone());
                    tokio::spawn(relay(down, up, link));
                }
            })
        };
        Self {
            addr,
            links,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// The connections open now.
    fn current(&self) -> Vec<Arc<Link>> {
        std::mem::take(&mut *self.links.lock().expect("links"))
    }

    /// Closes every connection open now.
    fn cut_all(&self) -> usize {
        let links = self.current();
        for l in &links {
            l.cut.notify_one();
        }
        links.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(down: TcpStream, up: TcpStream, link: Arc<Link>) {
    let (mut dr, mut dw) = down.into_split();
    let (mut ur, mut uw) = up.into_split();
    let upward = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match dr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if link.blackhole.load(Ordering::SeqCst) {
                continue;
            }
            if uw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let downward = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match ur.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if link.blackhole.load(Ordering::SeqCst) || link.drop_down.load(Ordering::SeqCst) {
                continue;
            }
            if dw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = upward => {}
        _ = downward => {}
        _ = link.cut.notified() => {}
    }
}

fn options() -> ClientOptions {
    ClientOptions {
        reconnect_min_delay: Duration::from_millis(20),
        reconnect_max_delay: Duration::from_millis(200),
        send_retry_timeout: Duration::from_secs(60),
        ..ClientOptions::default()
    }
}

/// What an app sees: every event, in order, read by a task of its own.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Event>>>);

impl Log {
    fn spawn(mut events: Events) -> Self {
        let log = Self::default();
        let out = log.clone();
        tokio::spawn(async move {
            while let Some(e) = events.next().await {
                out.0.lock().expect("log").push(e);
            }
        });
        log
    }

    fn messages(&self, conv: ConversationId) -> Vec<(u64, String)> {
        self.0
            .lock()
            .expect("log")
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) if m.conversation_id == conv.0 => Some((m.seq, m.text.clone())),
                _ => None,
            })
            .collect()
    }

    fn count(&self, f: impl Fn(&Event) -> bool) -> usize {
        self.0.lock().expect("log").iter().filter(|e| f(e)).count()
    }

    /// Waits until the log holds `n` messages of `conv` and returns them.
    async fn wait_messages(&self, conv: ConversationId, n: usize) -> Vec<(u64, String)> {
        let got = common::poll_for(RESUME_WAIT, async || {
            let got = self.messages(conv);
            (got.len() >= n).then_some(got)
        })
        .await;
        got.unwrap_or_else(|| panic!("only {} of {n} messages arrived", self.messages(conv).len()))
    }

    async fn wait_for(&self, what: &str, f: impl Fn(&Event) -> bool) {
        let seen = common::poll_for(RESUME_WAIT, async || (self.count(&f) > 0).then_some(())).await;
        assert!(seen.is_some(), "no {what} event");
    }
}

async fn user(url: &str, name: &str) -> (Client, Log, UserId) {
    let (c, events) = Client::connect(url, options()).await.expect("connect");
    let id = c
        .register(name, "password123", "")
        .await
        .expect("register")
        .user_id;
    (c, Log::spawn(events), UserId(id))
}

/// Every stored `(seq, text)` of `conv`, oldest first.
async fn stored(c: &Client, conv: ConversationId) -> Vec<(u64, String)> {
    let page = c.history_after(conv, 0, 200).await.expect("history");
    assert!(!page.has_more);
    page.messages
        .iter()
        .map(|m| (m.seq, m.text.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_are_resumed_without_loss_or_duplicates() {
    let server = TestServer::start();
    let proxy = Proxy::start(server.addr).await;
    let (alice, alice_log, _) = user(&proxy.url(), "alice").await;
    let (_bob, bob_log, bob_id) = user(&proxy.url(), "bob").await;
    let conv = ConversationId(
        alice
            .create_direct(bob_id)
            .await
            .expect("direct")
            .conversation_id,
    );
    const N: usize = 150;
    let sender = {
        let alice = alice.clone();
        tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..N {
                let ack = alice.send_text(conv, &format!("m{i}")).await.expect("ack");
                acks.push((ack.seq, format!("m{i}")));
            }
            acks
        })
    };
    // Cut every connection, both clients', several times while sending.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        proxy.cut_all();
    }
    let acks = sender.await.expect("sender");
    let expected: Vec<(u64, String)> = (0..N).map(|i| (i as u64 + 1, format!("m{i}"))).collect();
    assert_eq!(acks, expected, "every send acked once, in order");
    assert_eq!(stored(&alice, conv).await, expected, "stored once each");
    assert_eq!(bob_log.wait_messages(conv, N).await, expected);
    assert_eq!(alice_log.wait_messages(conv, N).await, expected);
    assert!(bob_log.count(|e| matches!(e, Event::Reconnected)) >= 1);
    assert!(alice_log.count(|e| matches!(e, Event::Reconnected)) >= 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_ack_was_lost_is_retried_and_stored_once() {
    let server = TestServer::start();
    let proxy = Proxy::start(server.addr).await;
    let (alice, alice_log, _) = user(&proxy.url(), "alice").await;
    let (bob, bob_log, bob_id) = user(&format!("tcp://{}", server.addr), "bob").await;
    let conv = ConversationId(
        alice
            .create_direct(bob_id)
            .await
            .expect("direct")
            .conversation_id,
    );
    // From now on nothing the server says reaches alice.
    for link in proxy.current() {
        link.drop_down.store(true, Ordering::SeqCst);
        proxy.links.lock().expect("links").push(link);
    }
    let send = {
        let alice = alice.clone();
        tokio::spawn(async move { alice.send_text(conv, "only once").await })
    };
    // The server stored it (bob has it); alice never saw the ack.
    assert_eq!(
        bob_log.wait_messages(conv, 1).await,
        vec![(1, "only once".to_string())]
    );
    assert!(!send.is_finished());
    proxy.cut_all();
    let ack = send.await.expect("task").expect("acked after reconnecting");
    assert_eq!(ack.seq, 1);
    assert!(
        ack.duplicate,
        "the retry was recognised as the same message"
    );
    alice.send_text(conv, "next").await.expect("ack");
    let expected = vec![(1, "only once".to_string()), (2, "next".to_string())];
    assert_eq!(stored(&bob, conv).await, expected);
    assert_eq!(alice_log.wait_messages(conv, 2).await, expected);
    assert_eq!(bob_log.wait_messages(conv, 2).await, expected);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_connection_is_noticed_by_heartbeat_and_replaced() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = chatd::Config::for_tests(dir.path());
    config.heartbeat_interval_ms = 300;
    let server = TestServer::start_with(dir, config);
    let proxy = Proxy::start(server.addr).await;
    let (alice, alice_log, _) = user(&proxy.url(), "alice").await;
    let (bob, bob_log, bob_id) = user(&format!("tcp://{}", server.addr), "bob").await;
    let conv = ConversationId(
        alice
            .create_direct(bob_id)
            .await
            .expect("direct")
            .conversation_id,
    );
    // The path goes silent without closing: no FIN, no RST.
    for link in proxy.current() {
        link.blackhole.store(true, Ordering::SeqCst);
    }
    bob.send_text(conv, "while you were away")
        .await
        .expect("ack");
    // client-lib misses its Pongs, reconnects and resumes; the server
    // reaped the silent session (3 intervals).
    alice_log
        .wait_for("Reconnected", |e| matches!(e, Event::Reconnected))
        .await;
    assert_eq!(
        alice_log.wait_messages(conv, 1).await,
        vec![(1, "while you were away".to_string())]
    );
    alice.send_text(conv, "back").await.expect("ack");
    assert_eq!(bob_log.wait_messages(conv, 2).await.len(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_says_goaway_and_clients_come_back_by_themselves() {
    let server = TestServer::start();
    let url = format!("tcp://{}", server.addr);
    let (alice, alice_log, _) = user(&url, "alice").await;
    let (_bob, bob_log, bob_id) = user(&url, "bob").await;
    let conv = ConversationId(
        alice
            .create_direct(bob_id)
            .await
            .expect("direct")
            .conversation_id,
    );
    const N: usize = 300;
    let sender = {
        let alice = alice.clone();
        tokio::spawn(async move {
            let mut acks = HashMap::new();
            for i in 0..N {
                let ack = alice.send_text(conv, &format!("g{i}")).await.expect("ack");
                acks.insert(ack.seq, format!("g{i}"));
            }
            acks
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let server = server.restart().await;
    let acks = sender.await.expect("sender");
    assert_eq!(acks.len(), N);
    let expected: Vec<(u64, String)> = (0..N).map(|i| (i as u64 + 1, format!("g{i}"))).collect();
    for (seq, text) in &expected {
        assert_eq!(acks.get(seq), Some(text));
    }
    for log in [&alice_log, &bob_log] {
        log.wait_for("Reconnected", |e| matches!(e, Event::Reconnected))
            .await;
        assert_eq!(log.wait_messages(conv, N).await, expected);
        // GoAway, then the drop, then back without the app doing anything.
        let kinds: Vec<&'static str> = log
            .0
            .lock()
            .expect("log")
            .iter()
            .filter_map(|e| match e {
                Event::GoAway(g) => {
                    assert_eq!(g.code, chat_client::ErrorCode::ShuttingDown as i32);
                    Some("goaway")
                }
                Event::Disconnected { .. } => Some("disconnected"),
                Event::Reconnected => Some("reconnected"),
                _ => None,
            })
            .collect();
        // client-lib reports GoAway (push task) and Disconnected
        // (supervisor) from different tasks, in either order.
        let mut sorted = kinds.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            ["disconnected", "goaway", "reconnected"],
            "{kinds:?}"
        );
        assert_eq!(kinds.last(), Some(&"reconnected"));
    }
    server.stop().await;
}
