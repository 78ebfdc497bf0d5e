//! The HTTP listener: health and Prometheus metrics.

mod common;

use common::{Raw, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

fn value(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn health_and_metrics_are_served() {
    let server = TestServer::start();
    let (status, body) = get(server.http_addr, "/health").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"status\":\"ok\""), "{body}");

    let mut alice = Raw::register(server.addr, "alice").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let conv = alice.create_direct(bob.user_id).await;
    for i in 0..5 {
        alice.send_text(conv, &i.to_string(), "counted").await;
    }
    // Both sides received all five pushes, so all ten deliveries counted.
    for _ in 0..5 {
        bob.next_message().await;
        alice.next_message().await;
    }
    let (status, metrics) = get(server.http_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        value(&metrics, "chatd_messages_in_total") >= 5.0,
        "{metrics}"
    );
    assert!(value(&metrics, "chatd_messages_stored_total") >= 5.0);
    assert!(value(&metrics, "chatd_deliveries_total") >= 10.0);
    assert!(value(&metrics, "chatd_storage_commit_seconds_count") >= 1.0);
    assert!(value(&metrics, "chatd_write_ack_seconds_count") >= 5.0);
    // Group commit: records per commit are counted (at least one per message).
    assert!(value(&metrics, "chatd_storage_batch_ops_sum") >= 5.0);
    assert!(metrics.contains("chatd_sessions{shard="));
    // The store's background state: the messages above are in a memtable,
    // written through a journal, with nothing asking the writer to wait.
    assert!(value(&metrics, "chatd_store_write_buffer_bytes") > 0.0);
    assert!(value(&metrics, "chatd_store_journal_files") >= 1.0);
    assert!(metrics.contains("chatd_store_flushes_pending"));
    assert_eq!(value(&metrics, "chatd_storage_stalls_total"), 0.0);
    // Every commit went through the commit log and on into fjall.
    assert!(value(&metrics, "chatd_log_segments_total") >= 1.0);
    assert!(value(&metrics, "chatd_storage_apply_seconds_count") >= 1.0);
    assert!(metrics.contains("chatd_storage_unapplied_commits"));
    assert_eq!(get(server.http_addr, "/nope").await.0, 404);
    server.stop().await;
}

/// Fan-outs go only to the shards that hold a recipient's session: with
/// four shards, a direct chat's two users are on at most two, so every
/// message skips at least two shards; a group spread over the shards still
/// reaches every member, including one who reconnects (and so may move to
/// another shard).
#[tokio::test]
async fn fanouts_skip_shards_without_recipients_and_reach_every_session() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = chatd::Config::for_tests(dir.path());
    config.shards = 4;
    let server = TestServer::start_with(dir, config);
    let skipped = |m: &str| value(m, "chatd_fanout_shards_skipped_total");

    let mut alice = Raw::register(server.addr, "alice").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let direct = alice.create_direct(bob.user_id).await;
    let before = skipped(&get(server.http_addr, "/metrics").await.1);
    for i in 0..5 {
        alice.send_text(direct, &format!("d{i}"), "hi").await;
    }
    for _ in 0..5 {
        bob.next_message().await;
        alice.next_message().await;
    }
    let after = skipped(&get(server.http_addr, "/metrics").await.1);
    assert!(after - before >= 10.0, "skipped {before} then {after}");

    let mut members = Vec::new();
    for i in 0..8 {
        members.push(Raw::register(server.addr, &format!("member{i}")).await);
    }
    let ids: Vec<u64> = members.iter().map(|m| m.user_id).collect();
    let group = alice.create_group("spread", &ids).await;
    // One member reconnects: its old shard stops holding it, its new one
    // (possibly another) starts.
    drop(members.remove(0));
    members.insert(0, Raw::login(server.addr, "member0").await);
    for i in 0..3 {
        alice.send_text(group, &format!("g{i}"), "all").await;
    }
    for member in &mut members {
        let mut texts = Vec::new();
        while texts.len() < 3 {
            let m = member.next_message().await;
            if m.conversation_id == group && m.text == "all" {
                texts.push(m.seq);
            }
        }
        assert!(texts.windows(2).all(|w| w[0] < w[1]), "{texts:?}");
    }
    server.stop().await;
}
