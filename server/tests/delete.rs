//! DeleteMessage: a message deleted for everyone loses its content in the
//! store and in every history, and a MESSAGE_DELETED system message tells
//! every member. Only the sender, or an owner or admin of a group, may
//! delete; deleting twice changes nothing the second time.

mod common;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S, system_event};
use common::{Raw, TestServer, error_code};

fn delete(conversation: u64, seq: u64) -> C {
    C::DeleteMessage(pb::DeleteMessage {
        conversation_id: conversation,
        seq,
    })
}

/// The next MESSAGE_DELETED system message pushed to `c`.
async fn next_deletion(c: &mut Raw) -> pb::Message {
    loop {
        let m = c.next_message().await;
        let kind = m.system.as_ref().map(|s| s.kind);
        if kind == Some(system_event::Kind::MessageDeleted as i32) {
            return m;
        }
    }
}

/// Message `seq` as `c` reads it from history.
async fn stored(c: &mut Raw, conversation: u64, seq: u64) -> pb::Message {
    match c.history(conversation, seq + 1, 0, 1).await {
        S::MessagePage(p) => p
            .messages
            .into_iter()
            .find(|m| m.seq == seq)
            .expect("in history"),
        other => panic!("history: {other:?}"),
    }
}

#[tokio::test]
async fn the_sender_or_a_group_admin_deletes_a_message_for_everyone() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let mut carol = Raw::register(server.addr, "carol").await;
    let mut dave = Raw::register(server.addr, "dave").await;
    let group = alice
        .create_group("trip", &[bob.user_id, carol.user_id])
        .await;
    let bobs = bob.send_text(group, "b1", "bob's secret").await.seq;
    let carols = carol.send_text(group, "c1", "carol's words").await.seq;

    // A member who did not send it, and an outsider, may not.
    assert_eq!(
        error_code(&carol.request(delete(group, bobs)).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        error_code(&dave.request(delete(group, bobs)).await),
        ErrorCode::NotAMember
    );
    assert_eq!(
        error_code(&bob.request(delete(group, 999)).await),
        ErrorCode::NotFound
    );

    // The sender may: every member hears of it, and the content is gone.
    assert!(matches!(bob.request(delete(group, bobs)).await, S::Done(_)));
    for c in [&mut alice, &mut carol] {
        let event = next_deletion(c).await;
        let system = event.system.expect("system event");
        assert_eq!(system.target_seq, bobs);
        assert_eq!(system.actor_id, bob.user_id);
        let m = stored(c, group, bobs).await;
        assert!(m.deleted);
        assert!(m.text.is_empty() && m.media.is_none() && m.ciphertext.is_empty());
        assert_eq!(m.sender_id, bob.user_id);
    }
    let deletion = next_deletion(&mut bob).await.seq;
    // Deleting again is done, and writes nothing: the next seq is the
    // next message's.
    assert!(matches!(bob.request(delete(group, bobs)).await, S::Done(_)));
    let after = bob.send_text(group, "b2", "still here").await.seq;
    assert_eq!(after, deletion + 1);
    // System messages are not deleted.
    assert_eq!(
        error_code(&alice.request(delete(group, deletion)).await),
        ErrorCode::InvalidArgument
    );
    // The group's owner deletes someone else's message.
    assert!(matches!(
        alice.request(delete(group, carols)).await,
        S::Done(_)
    ));
    assert_eq!(
        next_deletion(&mut carol)
            .await
            .system
            .expect("event")
            .target_seq,
        carols
    );
    assert!(stored(&mut carol, group, carols).await.deleted);

    // Two deletes of one message sent together (both may read it before
    // either is written) tell the members once.
    let twice = bob.send_text(group, "b3", "oops").await.seq;
    let first = bob.send(delete(group, twice)).await;
    let second = bob.send(delete(group, twice)).await;
    assert!(matches!(bob.reply(first).await, S::Done(_)));
    assert!(matches!(bob.reply(second).await, S::Done(_)));
    let next = bob.send_text(group, "b4", "next").await.seq;
    assert_eq!(next, twice + 2, "one MESSAGE_DELETED between");

    // In a direct chat only the sender deletes.
    let direct = alice.create_direct(bob.user_id).await;
    let hers = alice.send_text(direct, "d1", "hello").await.seq;
    assert_eq!(
        error_code(&bob.request(delete(direct, hers)).await),
        ErrorCode::Forbidden
    );
    assert!(matches!(
        alice.request(delete(direct, hers)).await,
        S::Done(_)
    ));
    assert!(stored(&mut bob, direct, hers).await.deleted);
    server.stop().await;
}
