//! Crash safety: many clients send without pause, several sends in flight
//! each, while the `chatd` process is killed with SIGKILL at random moments
//! and restarted. Afterwards:
//!
//! - every acknowledged message is stored exactly once, at the seq of its
//!   ack, and nothing else is stored (every send was retried by client-lib
//!   until acknowledged, so "stored" and "acked" must be the same set);
//! - every conversation's seqs are gap-free (1..=n);
//! - every client, readers and senders alike, reconnected and resumed on its
//!   own and its event stream holds every message of its conversations
//!   once, in seq order, with nothing missing and nothing repeated.
//!
//! Run for each durability mode. Size (environment): `CRASH_KILLS` (default
//! 3) kills, `CRASH_PAIRS` (default 3) direct chats with one sender each,
//! `CRASH_GROUPS` (default 1) groups with `CRASH_GROUP_SENDERS` (default 3)
//! concurrent senders each, `CRASH_WINDOW` (default 4) sends in flight per
//! sender. The larger documented run is in the README ("Durability").

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_client::{Client, ClientOptions, ConversationId, Event, Events, UserId};
use common::process::Chatd;
use rand::Rng;

/// The message each conversation ends with once sending stopped; a client
/// that has seen it has seen everything before it.
const FIN: &str = "fin";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn options() -> ClientOptions {
    ClientOptions {
        send_retry_timeout: Duration::from_secs(120),
        request_timeout: Duration::from_secs(20),
        reconnect_max_delay: Duration::from_millis(500),
        ..ClientOptions::default()
    }
}

/// Every message event a client's stream produced, by conversation.
type Seen = Arc<Mutex<HashMap<ConversationId, Vec<(u64, String)>>>>;

/// A client whose event stream is read continuously by a task of its own
/// (as an app does), recording every message it yields.
struct Observed {
    client: Client,
    seen: Seen,
    user: UserId,
    reader: tokio::task::JoinHandle<()>,
}

impl Observed {
    async fn register(addr: SocketAddr, name: &str) -> Self {
        let (client, events) = Client::connect(&format!("tcp://{addr}"), options())
            .await
            .expect("connect");
        let user = UserId(
            client
                .register(name, "password123", "")
                .await
                .expect("register")
                .user_id,
        );
        let seen = Seen::default();
        let reader = tokio::spawn(record(events, seen.clone()));
        Self {
            client,
            seen,
            user,
            reader,
        }
    }

    fn seen_in(&self, conv: ConversationId) -> Vec<(u64, String)> {
        self.seen
            .lock()
            .expect("seen")
            .get(&conv)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until the stream yielded FIN in `conv`, then returns what it
    /// yielded there.
    async fn seen_until_fin(&self, conv: ConversationId) -> Vec<(u64, String)> {
        let done = common::poll_for(Duration::from_secs(60), async || {
            let seen = self.seen_in(conv);
            seen.iter().any(|(_, t)| t == FIN).then_some(seen)
        })
        .await;
        if let Some(seen) = done {
            return seen;
        }
        let seen = self.seen_in(conv);
        panic!(
            "{:?} never saw the end of {conv:?}; stopped after {} messages, last {:?}",
            self.user,
            seen.len(),
            seen.last()
        );
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn record(mut events: Events, seen: Seen) {
    while let Some(event) = events.next().await {
        if let Event::Message(m) = event {
            seen.lock()
                .expect("seen")
                .entry(ConversationId(m.conversation_id))
                .or_default()
                .push((m.seq, m.text));
        }
    }
}

/// One conversation under test: who sends into it, who only reads.
struct Conversation {
    id: ConversationId,
    senders: Vec<Observed>,
    reader: Observed,
}

/// Sends from `client` into `conv` until `stop`, `window` sends in flight;
/// returns every `(seq, text)` acknowledged.
async fn send_until(
    client: Client,
    conv: ConversationId,
    tag: String,
    window: usize,
    stop: Arc<AtomicBool>,
) -> Vec<(u64, String)> {
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..window {
        let (client, tag, stop) = (client.clone(), tag.clone(), stop.clone());
        lanes.spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let text = format!("{tag}-l{lane}-m{i}");
                match client.send_text(conv, &text).await {
                    Ok(ack) => acked.push((ack.seq, text)),
                    Err(e) => panic!("send {text} never acknowledged: {e}"),
                }
                i += 1;
            }
            acked
        });
    }
    let mut all = Vec::new();
    while let Some(lane) = lanes.join_next().await {
        all.extend(lane.expect("send lane"));
    }
    all
}

/// Every stored message of `conv`, oldest first, read page by page.
async fn stored(client: &Client, conv: ConversationId) -> Vec<(u64, String)> {
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = client
            .history_after(conv, after, 200)
            .await
            .expect("history");
        stored.extend(page.messages.iter().map(|m| (m.seq, m.text.clone())));
        match page.messages.last() {
            Some(m) if page.has_more => after = m.seq,
            _ => break,
        }
    }
    stored
}

async fn crash_run(durability: &str) {
    let kills = env_or("CRASH_KILLS", 3);
    let pairs = env_or("CRASH_PAIRS", 3);
    let groups = env_or("CRASH_GROUPS", 1);
    let group_senders = env_or("CRASH_GROUP_SENDERS", 3).max(1);
    let window = env_or("CRASH_WINDOW", 4).max(1);
    let dir = tempfile::tempdir().expect("dir");
    let mut chatd = Chatd::start(dir.path(), &format!("durability = \"{durability}\""));
    chatd.wait_listening().await;
    let addr = chatd.addr;

    let mut conversations = Vec::new();
    for p in 0..pairs {
        let sender = Observed::register(addr, &format!("sender{p}")).await;
        let reader = Observed::register(addr, &format!("reader{p}")).await;
        let id = sender
            .client
            .create_direct(reader.user)
            .await
            .expect("direct")
            .conversation_id;
        conversations.push(Conversation {
            id: ConversationId(id),
            senders: vec![sender],
            reader,
        });
    }
    for g in 0..groups {
        let mut senders = Vec::new();
        for s in 0..group_senders {
            senders.push(Observed::register(addr, &format!("g{g}sender{s}")).await);
        }
        let reader = Observed::register(addr, &format!("g{g}reader")).await;
        let mut members: Vec<UserId> = senders.iter().skip(1).map(|s| s.user).collect();
        members.push(reader.user);
        let id = senders[0]
            .client
            .create_group(&format!("group{g}"), &members)
            .await
            .expect("group")
            .conversation_id;
        conversations.push(Conversation {
            id: ConversationId(id),
            senders,
            reader,
        });
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut sending = tokio::task::JoinSet::new();
    for c in &conversations {
        for (i, s) in c.senders.iter().enumerate() {
            let tag = format!("c{}-s{i}", c.id.0);
            let (client, conv) = (s.client.clone(), c.id);
            let task = send_until(client, conv, tag, window, stop.clone());
            sending.spawn(async move { (conv, task.await) });
        }
    }

    let mut rng = rand::rng();
    for round in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..900))).await;
        chatd.kill();
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        chatd.spawn();
        chatd.wait_listening().await;
        eprintln!("kill {} of {kills} done", round + 1);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut acked: HashMap<ConversationId, Vec<(u64, String)>> = HashMap::new();
    while let Some(r) = sending.join_next().await {
        let (conv, list) = r.expect("sender");
        acked.entry(conv).or_default().extend(list);
    }
    let total: usize = acked.values().map(Vec::len).sum();

    for c in &conversations {
        let mut sent = acked.remove(&c.id).unwrap_or_default();
        assert!(!sent.is_empty(), "nothing acknowledged in {:?}", c.id);
        sent.sort();
        // Acks name distinct, gap-free seqs; each text was acked once.
        let seqs: Vec<u64> = sent.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            (1..=sent.len() as u64).collect::<Vec<_>>(),
            "acked seqs of {:?}",
            c.id
        );
        let texts: HashSet<&String> = sent.iter().map(|(_, t)| t).collect();
        assert_eq!(texts.len(), sent.len(), "a message acked twice");
        // The store holds exactly the acked messages, each once, at its seq.
        assert_eq!(
            stored(&c.reader.client, c.id).await,
            sent,
            "stored messages of {:?}",
            c.id
        );
        // Every client's stream, after FIN, holds all of them once, in order.
        let fin = c.senders[0]
            .client
            .send_text(c.id, FIN)
            .await
            .expect("fin acked");
        assert_eq!(fin.seq, sent.len() as u64 + 1, "fin follows directly");
        let mut expected = sent.clone();
        expected.push((fin.seq, FIN.to_string()));
        for observer in c.senders.iter().chain([&c.reader]) {
            assert_eq!(
                observer.seen_until_fin(c.id).await,
                expected,
                "messages {:?} received in {:?}",
                observer.user,
                c.id
            );
        }
    }
    eprintln!(
        "{durability}: {total} acknowledged messages in {} conversations verified after {kills} kills",
        conversations.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_repeated_sigkill() {
    crash_run("sync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_repeated_sigkill_in_buffered_mode() {
    crash_run("buffered").await;
}
