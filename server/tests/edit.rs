//! EditMessage: the sender replaces the text of their own message; every
//! member's session is told with MessageEdited, and history, sync and the
//! conversation list show the latest text with `edited_at_ms`, also after a
//! restart. An edit takes no seq, so unread counts do not move. Edits of
//! other users' messages, SYSTEM or deleted messages, and empty or
//! oversized texts are refused and change nothing.

mod common;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use common::{Raw, TestServer, error_code};

fn edit(conversation: u64, seq: u64, text: &str) -> C {
    C::EditMessage(pb::EditMessage {
        conversation_id: conversation,
        seq,
        text: text.into(),
    })
}

/// The next MessageEdited push to `c` (other pushes are skipped).
async fn next_edit(c: &mut Raw) -> pb::Message {
    loop {
        let f = match c.pushes.pop_front() {
            Some(f) => f,
            None => c.read_frame().await.expect("connection closed"),
        };
        if let Some(S::MessageEdited(e)) = f.body {
            return e.message.expect("an edit carries the message");
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

/// `c`'s conversation list entry for `conversation`.
async fn summary(c: &mut Raw, conversation: u64) -> pb::ConversationSummary {
    match c
        .request(C::ListConversations(pb::ListConversations::default()))
        .await
    {
        S::ConversationList(l) => l
            .conversations
            .into_iter()
            .find(|s| s.conversation_id == conversation)
            .expect("listed"),
        other => panic!("list: {other:?}"),
    }
}

#[tokio::test]
async fn the_sender_edits_and_everyone_sees_the_latest_text_without_a_new_unread() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let mut carol = Raw::register(server.addr, "carol").await;
    let group = alice
        .create_group("trip", &[bob.user_id, carol.user_id])
        .await;
    let sent = bob.send_text(group, "b1", "see you at 8").await;
    let unread_before = summary(&mut alice, group).await.unread_count;
    assert_eq!(unread_before, 1);

    assert!(matches!(
        bob.request(edit(group, sent.seq, "see you at 9")).await,
        S::Done(_)
    ));
    for c in [&mut alice, &mut carol, &mut bob] {
        let m = next_edit(c).await;
        assert_eq!((m.seq, m.text.as_str()), (sent.seq, "see you at 9"));
        assert_eq!(m.message_id, sent.message_id);
        assert!(m.edited_at_ms >= sent.sent_at_ms);
    }
    // History, the conversation list and Sync show the latest text; the
    // unread count is what it was.
    let m = stored(&mut alice, group, sent.seq).await;
    assert_eq!(m.text, "see you at 9");
    assert_ne!(m.edited_at_ms, 0);
    assert_eq!(m.sent_at_ms, sent.sent_at_ms);
    let s = summary(&mut alice, group).await;
    assert_eq!(s.unread_count, unread_before, "an edit is not unread");
    assert_eq!(s.last_seq, sent.seq);
    let last = s.last_message.expect("a last message");
    assert_eq!(
        (last.text.as_str(), last.edited_at_ms),
        ("see you at 9", m.edited_at_ms)
    );
    let r = carol
        .request(C::Sync(pb::Sync {
            cursors: vec![pb::Cursor {
                conversation_id: group,
                seq: 0,
            }],
            limit_per_conversation: 0,
        }))
        .await;
    let S::SyncResult(sync) = r else {
        panic!("sync: {r:?}");
    };
    let gap = &sync.gaps[0];
    assert_eq!(gap.to_seq, sent.seq, "no seq taken by the edit");
    assert_eq!(gap.messages[0].text, "see you at 9");
    // The next message takes the next seq.
    assert_eq!(carol.send_text(group, "c1", "ok").await.seq, sent.seq + 1);

    // The edit survives a restart.
    let server = server.restart().await;
    let mut alice = Raw::login(server.addr, "alice").await;
    let m = stored(&mut alice, group, sent.seq).await;
    assert_eq!(m.text, "see you at 9");
    assert_ne!(m.edited_at_ms, 0);
    server.stop().await;
}

#[tokio::test]
async fn edits_of_others_system_or_deleted_messages_and_bad_texts_are_refused() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let mut dave = Raw::register(server.addr, "dave").await;
    let group = alice.create_group("trip", &[bob.user_id]).await;
    let bobs = bob.send_text(group, "b1", "original").await.seq;

    // Not even the group's owner edits someone else's message.
    let refusals = [
        (
            alice.request(edit(group, bobs, "hijacked")).await,
            ErrorCode::Forbidden,
        ),
        (
            dave.request(edit(group, bobs, "hijacked")).await,
            ErrorCode::NotAMember,
        ),
        (
            bob.request(edit(group, 999, "x")).await,
            ErrorCode::NotFound,
        ),
        (
            bob.request(edit(group, bobs, "")).await,
            ErrorCode::InvalidArgument,
        ),
        (
            bob.request(edit(group, bobs, &"x".repeat(64 * 1024 + 1)))
                .await,
            ErrorCode::MessageTooLarge,
        ),
        (
            bob.request(edit(987_654, 1, "x")).await,
            ErrorCode::NotFound,
        ),
    ];
    for (reply, code) in refusals {
        assert_eq!(error_code(&reply), code);
    }
    assert_eq!(stored(&mut bob, group, bobs).await.text, "original");
    assert_eq!(stored(&mut bob, group, bobs).await.edited_at_ms, 0);

    // A SYSTEM message (the member added) is not edited.
    let added = match alice
        .request(C::AddMembers(pb::AddMembers {
            conversation_id: group,
            user_ids: vec![dave.user_id],
        }))
        .await
    {
        S::Conversation(c) => c.last_seq,
        other => panic!("add: {other:?}"),
    };
    assert_eq!(
        error_code(&alice.request(edit(group, added, "x")).await),
        ErrorCode::InvalidArgument
    );

    // A deleted message is not brought back.
    let del = C::DeleteMessage(pb::DeleteMessage {
        conversation_id: group,
        seq: bobs,
    });
    assert!(matches!(bob.request(del).await, S::Done(_)));
    assert_eq!(
        error_code(&bob.request(edit(group, bobs, "back")).await),
        ErrorCode::Conflict
    );
    let m = stored(&mut bob, group, bobs).await;
    assert!(m.deleted && m.text.is_empty());
    server.stop().await;
}
