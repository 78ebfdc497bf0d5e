//! Backpressure with clients that stop reading, against a `chatd` process
//! (so that its memory and metrics are its own):
//!
//! - a session whose outbound queue overflows (`session_queue_frames` /
//!   `session_queue_bytes`, 1024 frames and 4 MiB by default) is closed
//!   with SLOW_CONSUMER, while the server's resident memory stays far below
//!   what was sent towards it, and everyone else keeps being served;
//! - typing events are shed for a session whose queue is more than half
//!   full, while every message still reaches it.

mod common;

use std::net::SocketAddr;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use common::Raw;
use common::process::Chatd;

/// Registers `name` over a socket whose receive buffer is small, so that
/// a client that stops reading fills the server's queue soon.
async fn register_small_window(addr: SocketAddr, name: &str) -> Raw {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(addr).await.expect("connect");
    let mut c = Raw::from_stream(stream);
    let welcome = c
        .request(C::Hello(pb::Hello {
            protocol_version: 1,
            client_name: "test".into(),
            ..Default::default()
        }))
        .await;
    assert!(matches!(welcome, S::Welcome(_)), "{welcome:?}");
    match c
        .request(C::Register(pb::Register {
            username: name.into(),
            password: "password123".into(),
            ..Default::default()
        }))
        .await
    {
        S::AuthOk(ok) => c.user_id = ok.user_id,
        other => panic!("register {name}: {other:?}"),
    }
    c
}

/// Sends `n` messages of `text` from `sender` with up to `window` in
/// flight, discarding the sender's own pushes; calls `between` after each
/// window.
async fn send_many(sender: &mut Raw, conv: u64, tag: &str, text: &str, n: usize, window: usize) {
    let mut sent = 0;
    while sent < n {
        let batch = window.min(n - sent);
        let mut rids = std::collections::HashSet::new();
        for i in 0..batch {
            let cmid = format!("{tag}{}", sent + i);
            rids.insert(sender.send(common::send_body(conv, &cmid, text)).await);
        }
        while !rids.is_empty() {
            let f = sender.read_frame().await.expect("sender connected");
            if rids.remove(&f.request_id) {
                assert!(matches!(f.body, Some(S::SendAck(_))), "{f:?}");
            }
        }
        sent += batch;
    }
}

/// Reads every frame until the server closes the connection.
async fn read_to_end(c: &mut Raw) -> Vec<pb::ServerFrame> {
    let mut frames = Vec::new();
    while let Some(f) = c.read_frame().await {
        frames.push(f);
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_with_slow_consumer_and_others_continue() {
    let dir = tempfile::tempdir().expect("dir");
    // The long grace gives the stalled client time to come back and read
    // its error after the frame being written.
    let chatd = Chatd::start(dir.path(), "shutdown_grace_ms = 60000");
    let mut alice = Raw::register(chatd.addr, "alice").await;
    let carol = Raw::register(chatd.addr, "carol").await;
    let mut lazy = register_small_window(chatd.addr, "lazy").await;
    let conv = alice
        .create_group("flood", &[carol.user_id, lazy.user_id])
        .await;
    let text = "x".repeat(60 * 1024);
    // 30 MiB towards a client that reads nothing: more than the kernel's
    // socket buffers and the 4 MiB queue bound hold.
    const FLOOD: usize = 512;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let received = received.clone();
        tokio::spawn(async move {
            let mut carol = carol;
            let mut seqs = Vec::new();
            while seqs.len() < FLOOD {
                seqs.push(carol.next_message().await.seq);
                received.store(seqs.len(), std::sync::atomic::Ordering::SeqCst);
            }
            seqs
        })
    };
    // Alice keeps at most 32 messages ahead of carol, so that only the
    // client that reads nothing can fall 4 MiB behind.
    for round in 0..FLOOD / 16 {
        while received.load(std::sync::atomic::Ordering::SeqCst) + 32 < round * 16 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        send_many(&mut alice, conv, &format!("f{round}-"), &text, 16, 16).await;
    }
    // Everyone else was served throughout.
    let seqs = reader.await.expect("reader");
    assert_eq!(seqs, (1..=FLOOD as u64).collect::<Vec<_>>());
    assert_eq!(chatd.metric("chatd_slow_consumers_total").await, 1.0);

    // The stalled client reads what it was sent: whole frames, then
    // SLOW_CONSUMER, then the end of the stream.
    let frames = read_to_end(&mut lazy).await;
    match frames.last().and_then(|f| f.body.clone()) {
        Some(S::Error(e)) => assert_eq!(e.code, ErrorCode::SlowConsumer as i32, "{e:?}"),
        other => panic!("last frame {other:?}"),
    }
    let pushed: Vec<u64> = frames
        .iter()
        .filter_map(|f| match &f.body {
            Some(S::MessagePush(p)) => p.message.as_ref().map(|m| m.seq),
            _ => None,
        })
        .collect();
    assert!(pushed.len() < FLOOD, "{} pushes", pushed.len());
    assert_eq!(pushed, (1..=pushed.len() as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_while_clients_that_never_read_ask_for_more() {
    let dir = tempfile::tempdir().expect("dir");
    let chatd = Chatd::start(dir.path(), "");
    let mut alice = Raw::register(chatd.addr, "alice").await;
    const LAZY: usize = 4;
    let mut lazy = Vec::new();
    for i in 0..LAZY {
        lazy.push(register_small_window(chatd.addr, &format!("lazy{i}")).await);
    }
    let ids: Vec<u64> = lazy.iter().map(|c| c.user_id).collect();
    let conv = alice.create_group("pages", &ids).await;
    // 200 messages of 4 KiB: one history page is 800 KiB.
    send_many(&mut alice, conv, "p", &"z".repeat(4096), 200, 50).await;
    let page = {
        let mut bytes = Vec::new();
        let frame = pb::ClientFrame {
            request_id: 1,
            body: Some(C::GetHistory(pb::GetHistory {
                conversation_id: conv,
                before_seq: 0,
                after_seq: Some(0),
                limit: 200,
            })),
        };
        for _ in 0..100 {
            bytes.extend(chat_protocol::codec::encode_to_vec(&frame, 1 << 20).expect("encode"));
        }
        bytes
    };
    let baseline = chatd.rss_kib();
    let mut peak = baseline;
    // Each client asks for 1,000 pages (800 MB) and reads none of them,
    // writing until the server stops reading it or closes it.
    let mut asked = 0usize;
    for _ in 0..10 {
        for c in &mut lazy {
            use tokio::io::AsyncWriteExt;
            let write = c.wire.stream.write_all(&page);
            if let Ok(Ok(())) =
                tokio::time::timeout(std::time::Duration::from_millis(200), write).await
            {
                asked += 100;
            }
            peak = peak.max(chatd.rss_kib());
        }
    }
    common::poll_for(std::time::Duration::from_secs(5), async || {
        peak = peak.max(chatd.rss_kib());
        (chatd.metric("chatd_slow_consumers_total").await >= LAZY as f64).then_some(())
    })
    .await;
    eprintln!(
        "rss baseline {baseline} KiB, peak {peak} KiB (+{} KiB); {asked} pages of 800 KiB asked for",
        peak - baseline
    );
    assert_eq!(
        chatd.metric("chatd_slow_consumers_total").await,
        LAZY as f64
    );
    // Per session: the 4 MiB queue, the frame being written and the few
    // replies being built (`STORE_READS_PER_SESSION`), with allocator slack,
    // against 800 MB asked for by each (without that bound: +860 MiB).
    assert!(
        peak - baseline < (LAZY as u64) * 32 * 1024,
        "memory grew by {} KiB",
        peak - baseline
    );
    // The server serves others as before.
    let mut bob = Raw::register(chatd.addr, "bob").await;
    let direct = alice.create_direct(bob.user_id).await;
    let ack = alice.send_text(direct, "after", "still here").await;
    assert_eq!(bob.next_message().await.seq, ack.seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_shed_before_messages_for_a_session_that_falls_behind() {
    let dir = tempfile::tempdir().expect("dir");
    let chatd = Chatd::start(
        dir.path(),
        "durability = \"buffered\"\nsession_queue_frames = 100000\nsession_queue_bytes = 8388608",
    );
    let mut alice = Raw::register(chatd.addr, "alice").await;
    let mut bob = Raw::register(chatd.addr, "bob").await;
    let mut behind = register_small_window(chatd.addr, "behind").await;
    let conv = alice
        .create_group("team", &[bob.user_id, behind.user_id])
        .await;
    let text = "y".repeat(60 * 1024);
    // `behind` stops reading. Each round: one message from alice, and bob
    // starts or stops typing (each change is forwarded). Once the server
    // reports shedding, a few more rounds, staying below the full bound.
    let mut rounds = 0usize;
    let mut extra = None;
    while extra != Some(0) {
        send_many(&mut alice, conv, &format!("r{rounds}-"), &text, 1, 1).await;
        bob.send(C::Typing(pb::Typing {
            conversation_id: conv,
            active: rounds % 2 == 0,
        }))
        .await;
        bob.next_message().await;
        rounds += 1;
        extra = match extra {
            Some(n) => Some(n - 1),
            None if rounds % 8 == 0 && chatd.metric("chatd_ephemeral_shed_total").await > 0.0 => {
                Some(8)
            }
            None => None,
        };
        assert!(rounds < 2000, "nothing was ever shed");
    }
    // A last message that `behind` must also get: everything before it
    // was queued or written, nothing closed the session.
    let marker = {
        let rid = alice.send(common::send_body(conv, "end", "end")).await;
        match alice.reply(rid).await {
            S::SendAck(a) => a.seq,
            other => panic!("{other:?}"),
        }
    };
    let (mut messages, mut typing) = (Vec::new(), 0usize);
    while messages.last() != Some(&marker) {
        let f = behind.read_frame().await.expect("not disconnected");
        match f.body {
            Some(S::MessagePush(p)) => messages.extend(p.message.map(|m| m.seq)),
            Some(S::TypingEvent(_)) => typing += 1,
            Some(S::Error(e)) => panic!("{e:?}"),
            _ => {}
        }
    }
    assert_eq!(messages, (1..=marker).collect::<Vec<_>>(), "every message");
    assert!(typing < rounds, "typing shed: {typing} of {rounds} arrived");
    eprintln!("{typing} of {rounds} typing events arrived, every message did");
}
