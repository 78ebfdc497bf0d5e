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
    let reacted = alice
        .request(chat_protocol::pb::client_frame::Body::React(pb::React {
            conversation_id: conv,
            seq: ack.seq,
            emoji: "👍".into(),
            remove: false,
        }))
        .await;
    assert!(matches!(
        reacted,
        chat_protocol::pb::server_frame::Body::Done(_)
    ));
    let data = server.stop_keeping_data().await;

    let db = Database::builder(data.path().join("store"))
        .open()
        .expect("open");
    let ks = |name: &str| {
        db.keyspace(name, KeyspaceCreateOptions::default)
            .expect("keyspace")
    };

    // Messages live in the commit log's segments; `message_runs` says
    // where: under conversation ‖ !highest seq, the segment (its first
    // commit), then per message its seq, offset and length, little-endian.
    let mut key = conv.to_be_bytes().to_vec();
    key.extend_from_slice(&(!ack.seq).to_be_bytes());
    let run = ks("message_runs")
        .get(&key)
        .expect("read")
        .expect("run under conversation ‖ !highest seq");
    assert_eq!(run.len(), 8 + 20, "one message");
    let le = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let (segment, seq, offset) = (le(&run[..8]), le(&run[8..16]), le(&run[16..24]) as usize);
    let len = u32::from_le_bytes(run[24..28].try_into().expect("4 bytes")) as usize;
    assert_eq!(seq, ack.seq);
    let file = std::fs::read(data.path().join("log").join(format!("{segment:020}.log")))
        .expect("the segment named by its first commit");
    let m = pb::Message::decode(&file[offset..offset + len]).expect("chat.v1.Message");
    assert_eq!(
        (m.seq, m.text.as_str(), m.message_id),
        (1, "on disk", ack.message_id)
    );
    // Nothing was put twice, so no newer version is indexed on its own.
    assert!(ks("message_index").get(&key).expect("read").is_none());
    // A clean stop indexed every segment: nothing is left to replay.
    let indexed = ks("meta")
        .get("indexed_through")
        .expect("read")
        .expect("indexed_through");
    let mut last_segment = 0;
    for e in std::fs::read_dir(data.path().join("log")).expect("log directory") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        if let Some(first) = name
            .strip_suffix(".log")
            .and_then(|n| n.parse::<u64>().ok())
        {
            last_segment = last_segment.max(first);
        }
    }
    assert!(last_segment > 0, "the log keeps its segments");
    assert!(u64::from_be_bytes((*indexed).try_into().expect("8 bytes")) >= last_segment);

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

    // conversation ‖ sender ‖ XXH3-128 of client_msg_id, big-endian.
    let mut idem = conv.to_be_bytes().to_vec();
    idem.extend_from_slice(&alice.user_id.to_be_bytes());
    idem.extend_from_slice(&xxhash_rust::xxh3::xxh3_128(b"k1").to_be_bytes());
    assert!(ks("idempotency").get(&idem).expect("read").is_some());

    // Reactions: counts under conversation ‖ seq, each user's under
    // conversation ‖ seq ‖ user.
    let mut at = conv.to_be_bytes().to_vec();
    at.extend_from_slice(&ack.seq.to_be_bytes());
    let counts = ks("reactions")
        .get(&at)
        .expect("read")
        .expect("counts under conversation ‖ seq");
    let counts = chatd::records::ReactionCounts::decode(&*counts).expect("ReactionCounts");
    assert_eq!(
        counts
            .counts
            .iter()
            .map(|c| (c.emoji.as_str(), c.count))
            .collect::<Vec<_>>(),
        [("👍", 1)]
    );
    at.extend_from_slice(&alice.user_id.to_be_bytes());
    let mine = ks("reactors")
        .get(&at)
        .expect("read")
        .expect("the user's under conversation ‖ seq ‖ user");
    let mine = chatd::records::UserReactions::decode(&*mine).expect("UserReactions");
    assert_eq!(mine.emoji, ["👍"]);
}
