//! Mentions and notification levels: a message carries the members it
//! mentions (or @everyone in a group); mentions of non-members, @everyone
//! outside groups and too many mentions are refused and change nothing.
//! The conversation list counts unread mentions beside the unread count;
//! each member's notification level is stored, shown in the list, kept
//! across a restart. (Push notifications following the level are checked
//! in `push.rs`.)

mod common;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{
    self, NotificationLevel, client_frame::Body as C, server_frame::Body as S,
};
use common::{Raw, TestServer, error_code};

fn mention(conversation: u64, cmid: &str, ids: &[u64], everyone: bool) -> C {
    C::SendMessage(pb::SendMessage {
        conversation_id: conversation,
        client_msg_id: cmid.into(),
        text: format!("hey {cmid}"),
        mention_ids: ids.to_vec(),
        mention_everyone: everyone,
        ..Default::default()
    })
}

fn level(conversation: u64, level: NotificationLevel, until: u64) -> C {
    C::SetNotificationLevel(pb::SetNotificationLevel {
        conversation_id: conversation,
        level: level as i32,
        muted_until_ms: until,
    })
}

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
async fn mentions_are_counted_for_the_mentioned_and_levels_are_kept() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let mut carol = Raw::register(server.addr, "carol").await;
    let dave = Raw::register(server.addr, "dave").await;
    let (b, c) = (bob.user_id, carol.user_id);
    let group = alice.create_group("trip", &[b, c]).await;
    let direct = alice.create_direct(b).await;

    // Refused, and nothing is stored.
    let too_many: Vec<u64> = (0..51).map(|_| b).collect();
    let cases = [
        (
            mention(group, "x1", &[dave.user_id], false),
            ErrorCode::InvalidArgument,
        ),
        (mention(direct, "x2", &[], true), ErrorCode::InvalidArgument),
        (
            mention(group, "x3", &too_many, false),
            ErrorCode::InvalidArgument,
        ),
    ];
    for (body, code) in cases {
        assert_eq!(error_code(&alice.request(body).await), code);
    }
    assert_eq!(summary(&mut bob, group).await.last_seq, 0);

    // Bob mentioned once, everyone once; Carol only by @everyone; Alice's
    // own @everyone does not count for her.
    let m = match alice.request(mention(group, "m1", &[b, b], false)).await {
        S::SendAck(a) => a.seq,
        other => panic!("send: {other:?}"),
    };
    alice.send_text(group, "m2", "no mention").await;
    assert!(matches!(
        alice.request(mention(group, "m3", &[], true)).await,
        S::SendAck(_)
    ));
    let sb = summary(&mut bob, group).await;
    assert_eq!((sb.unread_count, sb.mention_count), (3, 2));
    let sc = summary(&mut carol, group).await;
    assert_eq!((sc.unread_count, sc.mention_count), (3, 1));
    assert_eq!(summary(&mut alice, group).await.mention_count, 0);
    match bob.history(group, m + 1, 0, 1).await {
        S::MessagePage(p) => assert_eq!(p.messages[0].mention_ids, [b], "each once"),
        other => panic!("history: {other:?}"),
    }
    // Reading past them clears the count.
    let read = C::MarkRead(pb::MarkRead {
        conversation_id: group,
        seq: m,
    });
    assert!(matches!(bob.request(read).await, S::Done(_)));
    assert_eq!(summary(&mut bob, group).await.mention_count, 1);

    // Notification levels: refused when bad, stored, kept.
    let cases = [
        (
            level(group, NotificationLevel::All, 5),
            ErrorCode::InvalidArgument,
        ),
        (
            C::SetNotificationLevel(pb::SetNotificationLevel {
                conversation_id: group,
                level: 99,
                muted_until_ms: 0,
            }),
            ErrorCode::InvalidArgument,
        ),
    ];
    for (body, code) in cases {
        assert_eq!(error_code(&bob.request(body).await), code);
    }
    let mut dave = dave;
    assert_eq!(
        error_code(
            &dave
                .request(level(group, NotificationLevel::Muted, 0))
                .await
        ),
        ErrorCode::NotAMember
    );
    assert!(matches!(
        bob.request(level(group, NotificationLevel::Mentions, 0))
            .await,
        S::Done(_)
    ));
    assert!(matches!(
        carol
            .request(level(group, NotificationLevel::Muted, 4_000_000_000_000))
            .await,
        S::Done(_)
    ));
    let server = server.restart().await;
    let mut bob = Raw::login(server.addr, "bob").await;
    let mut carol = Raw::login(server.addr, "carol").await;
    let sb = summary(&mut bob, group).await;
    assert_eq!(sb.notification_level, NotificationLevel::Mentions as i32);
    assert_eq!(sb.mention_count, 1, "kept across the restart");
    let sc = summary(&mut carol, group).await;
    assert_eq!(
        (sc.notification_level, sc.muted_until_ms),
        (NotificationLevel::Muted as i32, 4_000_000_000_000)
    );
    server.stop().await;
}
