//! Crash safety: clients send without pause while the server is killed with
//! SIGKILL at random moments and restarted. Afterwards every acknowledged
//! message is stored exactly once, every conversation's seqs are gap-free,
//! and receivers that reconnected on their own got everything, in order,
//! once.
//!
//! Size: `CRASH_KILLS` (default 3) kills, `CRASH_PAIRS` (default 4) sending
//! pairs. The larger documented run is in the README ("Durability").

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chat_client::{Client, ClientOptions, ConversationId, Event, Events, UserId};
use rand::Rng;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Chatd {
    child: Option<Child>,
    config: std::path::PathBuf,
    addr: SocketAddr,
}

impl Chatd {
    fn start(dir: &std::path::Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let config = dir.join("chatd.toml");
        std::fs::write(
            &config,
            format!(
                "tcp_listen = \"{addr}\"\nhttp_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\
                 argon2_memory_kib = 64\nargon2_iterations = 1\nrate_connection_per_sec = 0\n\
                 rate_user_per_sec = 0\n",
                dir.join("data").display()
            ),
        )
        .expect("config");
        let mut chatd = Self {
            child: None,
            config,
            addr,
        };
        chatd.spawn();
        chatd
    }

    fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_chatd"))
            .arg("--config")
            .arg(&self.config)
            .env("CHATD_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .expect("start chatd");
        self.child = Some(child);
    }

    async fn wait_listening(&self) {
        for _ in 0..400 {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("chatd did not come back");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGKILL: no shutdown, no flush, no goodbye.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Chatd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn options() -> ClientOptions {
    ClientOptions {
        send_retry_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(20),
        reconnect_max_delay: Duration::from_millis(500),
        ..ClientOptions::default()
    }
}

async fn client(addr: SocketAddr, name: &str) -> (Client, Events, u64) {
    let (c, events) = Client::connect(&format!("tcp://{addr}"), options())
        .await
        .expect("connect");
    let id = c
        .register(name, "password123", "")
        .await
        .expect("register")
        .user_id;
    (c, events, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_repeated_sigkill() {
    let kills = env_or("CRASH_KILLS", 3);
    let pairs = env_or("CRASH_PAIRS", 4);
    let dir = tempfile::tempdir().expect("dir");
    let mut chatd = Chatd::start(dir.path());
    chatd.wait_listening().await;
    let addr = chatd.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = tokio::task::JoinSet::new();
    let mut receivers = Vec::new();
    for p in 0..pairs {
        let (alice, _alice_events, _) = client(addr, &format!("sender{p}")).await;
        let (bob, bob_events, bob_id) = client(addr, &format!("receiver{p}")).await;
        let conv = ConversationId(
            alice
                .create_direct(UserId(bob_id))
                .await
                .expect("direct")
                .conversation_id,
        );
        receivers.push((conv, bob, bob_events));
        let stop = stop.clone();
        senders.spawn(async move {
            let _keep = _alice_events;
            let mut acked: Vec<(u64, String)> = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let text = format!("p{p}-m{i}");
                match alice.send_text(conv, &text).await {
                    Ok(ack) => acked.push((ack.seq, text)),
                    Err(e) => panic!("send {text} never acknowledged: {e}"),
                }
                i += 1;
            }
            (conv, acked)
        });
    }

    let mut rng = rand::rng();
    for round in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..900))).await;
        chatd.kill();
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        chatd.spawn();
        chatd.wait_listening().await;
        eprintln!("kill {} done", round + 1);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut acked: HashMap<ConversationId, Vec<(u64, String)>> = HashMap::new();
    while let Some(r) = senders.join_next().await {
        let (conv, list) = r.expect("sender");
        acked.insert(conv, list);
    }
    let total: usize = acked.values().map(Vec::len).sum();
    assert!(total > 0, "nothing was sent");

    for (conv, bob, mut events) in receivers {
        let sent = &acked[&conv];
        // Acks are gap-free and increasing per conversation.
        let seqs: Vec<u64> = sent.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            (1..=sent.len() as u64).collect::<Vec<_>>(),
            "acked seqs of {conv:?}"
        );
        // The store holds each acked message exactly once, at its seq.
        let mut stored = Vec::new();
        let mut after = 0;
        loop {
            let page = bob.history_after(conv, after, 200).await.expect("history");
            stored.extend(page.messages.iter().map(|m| (m.seq, m.text.clone())));
            match page.messages.last() {
                Some(m) if page.has_more => after = m.seq,
                _ => break,
            }
        }
        assert_eq!(&stored, sent, "stored messages of {conv:?}");
        let texts: HashSet<&String> = stored.iter().map(|(_, t)| t).collect();
        assert_eq!(texts.len(), stored.len(), "no message stored twice");
        // The receiver reconnected by itself and saw everything once, in order.
        bob.sync().await.expect("sync");
        let mut got = Vec::new();
        while got.len() < sent.len() {
            match tokio::time::timeout(Duration::from_secs(30), events.next()).await {
                Ok(Some(Event::Message(m))) => got.push((m.seq, m.text)),
                Ok(Some(_)) => {}
                other => panic!(
                    "receiver of {conv:?} stalled at {} of {}: {other:?}",
                    got.len(),
                    sent.len()
                ),
            }
        }
        assert_eq!(&got, sent, "received messages of {conv:?}");
    }
    eprintln!("{total} acknowledged messages verified after {kills} kills");
}
