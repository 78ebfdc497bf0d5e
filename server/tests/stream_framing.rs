//! Frames on a byte stream arrive however TCP cuts them: many in one read,
//! one across many reads, larger than one read. Every cut decodes to the
//! same frames in the same order, and the replies come back intact.

mod common;

use chat_protocol::codec;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use common::{Raw, TestServer, send_body};

fn encode(rid: u64, body: C) -> Vec<u8> {
    let frame = pb::ClientFrame {
        request_id: rid,
        body: Some(body),
    };
    codec::encode_to_vec(&frame, usize::MAX).expect("encode")
}

/// Reads pongs until `count` arrived, checking their order.
async fn pongs_in_order(c: &mut Raw, first: u64, count: u64) {
    let mut next = first;
    while next < first + count {
        let f = c.read_frame().await.expect("connection closed");
        match f.body {
            Some(S::Pong(p)) => {
                assert_eq!(p.nonce, next, "pongs out of order");
                assert_eq!(f.request_id, next);
                next += 1;
            }
            other => panic!("expected a pong, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn pipelined_frames_in_one_write_are_all_answered_in_order() {
    let server = TestServer::start();
    let mut c = Raw::register(server.addr, "piper").await;
    // 900 pings in one write (fewer than the 1,024 frames a session may
    // have queued), with ids large enough that together they are more than
    // one read: reads end inside frames, and replies leave in batches.
    let first = 1u64 << 60;
    let mut bytes = Vec::new();
    for n in first..first + 900 {
        bytes.extend(encode(n, C::Ping(pb::Ping { nonce: n })));
    }
    assert!(bytes.len() > 16 * 1024);
    c.write_bytes(&bytes).await;
    pongs_in_order(&mut c, first, 900).await;
    // The session still works for ordinary requests afterwards.
    let reply = c.request(C::Ping(pb::Ping { nonce: 7 })).await;
    assert!(matches!(reply, S::Pong(pb::Pong { nonce: 7 })), "{reply:?}");
    server.stop().await;
}

#[tokio::test]
async fn frames_cut_at_every_size_arrive_whole() {
    let server = TestServer::start();
    let mut a = Raw::register(server.addr, "cutter").await;
    let mut b = Raw::register(server.addr, "reader").await;
    let conv = a.create_direct(b.user_id).await;

    // A message larger than one read (16 KiB), then a small one, written
    // in pieces of growing size that end anywhere in a frame.
    let big = "x".repeat(50_000);
    let mut bytes = encode(9001, send_body(conv, "big", &big));
    bytes.extend(encode(9002, send_body(conv, "small", "after the big one")));
    bytes.extend(encode(9003, C::Ping(pb::Ping { nonce: 9003 })));
    let mut at = 0;
    let mut piece = 1;
    while at < bytes.len() {
        let end = (at + piece).min(bytes.len());
        a.write_bytes(&bytes[at..end]).await;
        // Give the server a chance to read each piece on its own.
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        at = end;
        piece = piece * 3 + 1;
    }
    for rid in [9001, 9002] {
        match a.reply(rid).await {
            S::SendAck(_) => {}
            other => panic!("send {rid}: {other:?}"),
        }
    }
    assert!(matches!(
        a.reply(9003).await,
        S::Pong(pb::Pong { nonce: 9003 })
    ));
    let first = b.next_message().await;
    assert_eq!(first.text, big);
    let second = b.next_message().await;
    assert_eq!(second.text, "after the big one");
    assert_eq!(second.seq, first.seq + 1);

    // A whole frame and the start of the next in one write, the rest in
    // another.
    let mut bytes = encode(9100, C::Ping(pb::Ping { nonce: 9100 }));
    let next = encode(9101, send_body(conv, "split", "split in two"));
    let cut = next.len() / 2;
    bytes.extend_from_slice(&next[..cut]);
    a.write_bytes(&bytes).await;
    assert!(matches!(
        a.reply(9100).await,
        S::Pong(pb::Pong { nonce: 9100 })
    ));
    a.write_bytes(&next[cut..]).await;
    assert!(matches!(a.reply(9101).await, S::SendAck(_)));
    assert_eq!(b.next_message().await.text, "split in two");
    server.stop().await;
}
