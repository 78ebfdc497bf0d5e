//! Locks the on-disk layout documented in the README ("Storage layout"):
//! a store written by the server is read back here with fjall directly.
//! (The commit log's format is covered in `server/src/storage/log.rs`.)

mod common;

use chat_protocol::pb;
use common::{Raw, TestServer};
use fjall::{Database, KeyspaceCreateOptions};
use prost::Message;

#[tokio::test]
async fn keyspaces_and_keys_are_as_documented() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let bob = Raw::register(server.addr, "bob").await;
    let conv = alice.create_direct(bob.user_id).await;
    let ack = alice.send_text(conv, "k1", "on disk").await;
    let data = server.stop_keeping_data().await;

    // A clean stop leaves everything in fjall: the commit log's segments
    // were persisted and deleted.
    let left: Vec<_> = std::fs::read_dir(data.path().join("log"))
        .expect("log directory")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "commit log left behind: {left:?}");

    let db = Database::builder(data.path().join("store"))
        .open()
        .expect("open");
    let ks = |name: &str| {
        db.keyspace(name, KeyspaceCreateOptions::default)
            .expect("keyspace")
    };

    let mut key = conv.to_be_bytes().to_vec();
    key.extend_from_slice(&(!ack.seq).to_be_bytes());
    let stored = ks("messages")
        .get(&key)
        .expect("read")
        .expect("message under conversation ‖ !seq");
    let m = pb::Message::decode(&*stored).expect("chat.v1.Message");
    assert_eq!(
        (m.seq, m.text.as_str(), m.message_id),
        (1, "on disk", ack.message_id)
    );

    let id = ks("usernames")
        .get("alice")
        .expect("read")
        .expect("username index");
    assert_eq!(&*id, &alice.user_id.to_be_bytes());
    assert!(
        ks("users")
            .get(alice.user_id.to_be_bytes())
            .expect("read")
            .is_some()
    );

    let (lo, hi) = (
        alice.user_id.min(bob.user_id),
        alice.user_id.max(bob.user_id),
    );
    let mut pair = lo.to_be_bytes().to_vec();
    pair.extend_from_slice(&hi.to_be_bytes());
    let direct = ks("direct").get(&pair).expect("read").expect("direct pair");
    assert_eq!(&*direct, &conv.to_be_bytes());

    let mut member = conv.to_be_bytes().to_vec();
    member.extend_from_slice(&alice.user_id.to_be_bytes());
    assert!(ks("members").get(&member).expect("read").is_some());
    let mut uc = alice.user_id.to_be_bytes().to_vec();
    uc.extend_from_slice(&conv.to_be_bytes());
    assert!(ks("user_conversations").get(&uc).expect("read").is_some());

    let mut idem = conv.to_be_bytes().to_vec();
    idem.extend_from_slice(&alice.user_id.to_be_bytes());
    idem.extend_from_slice(b"k1");
    assert!(ks("idempotency").get(&idem).expect("read").is_some());
}
