//! React: any member adds or removes an emoji reaction to a message; every
//! member's session is told with ReactionEvent; history, sync and the
//! conversation list carry per-emoji counts and whether the reader is among
//! them, also after a restart. Adding twice changes nothing; reactions take
//! no seq. Bad emoji, too many distinct ones, SYSTEM and deleted messages
//! and outsiders are refused and change nothing.

mod common;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use common::{Raw, TestServer, error_code};

fn react(conversation: u64, seq: u64, emoji: &str, remove: bool) -> C {
    C::React(pb::React {
        conversation_id: conversation,
        seq,
        emoji: emoji.into(),
        remove,
    })
}

/// The next ReactionEvent pushed to `c` (other pushes are skipped).
async fn next_reaction(c: &mut Raw) -> pb::ReactionEvent {
    loop {
        let f = match c.pushes.pop_front() {
            Some(f) => f,
            None => c.read_frame().await.expect("connection closed"),
        };
        if let Some(S::ReactionEvent(e)) = f.body {
            return e;
        }
    }
}

/// The reactions of message `seq` as `c` reads them from history:
/// (emoji, count, mine).
async fn reactions(c: &mut Raw, conversation: u64, seq: u64) -> Vec<(String, u32, bool)> {
    match c.history(conversation, seq + 1, 0, 1).await {
        S::MessagePage(p) => p
            .messages
            .into_iter()
            .find(|m| m.seq == seq)
            .expect("in history")
            .reactions
            .into_iter()
            .map(|r| (r.emoji, r.count, r.mine))
            .collect(),
        other => panic!("history: {other:?}"),
    }
}

fn r(emoji: &str, count: u32, mine: bool) -> (String, u32, bool) {
    (emoji.to_owned(), count, mine)
}

#[tokio::test]
async fn members_react_everyone_sees_counts_and_adding_twice_changes_nothing() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let mut carol = Raw::register(server.addr, "carol").await;
    let group = alice
        .create_group("trip", &[bob.user_id, carol.user_id])
        .await;
    let seq = bob.send_text(group, "b1", "we leave at 8").await.seq;

    for (alice_reacts, emoji) in [(true, "👍"), (false, "👍"), (false, "🎉")] {
        let c = if alice_reacts { &mut alice } else { &mut carol };
        assert!(matches!(
            c.request(react(group, seq, emoji, false)).await,
            S::Done(_)
        ));
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = next_reaction(&mut bob).await;
        assert_eq!((e.conversation_id, e.seq), (group, seq));
        seen.push((e.user_id, e.emoji));
    }
    assert_eq!(
        seen,
        [
            (alice.user_id, "👍".to_owned()),
            (carol.user_id, "👍".to_owned()),
            (carol.user_id, "🎉".to_owned())
        ]
    );
    assert_eq!(
        reactions(&mut alice, group, seq).await,
        [r("👍", 2, true), r("🎉", 1, false)]
    );
    assert_eq!(
        reactions(&mut carol, group, seq).await,
        [r("👍", 2, true), r("🎉", 1, true)]
    );
    assert_eq!(
        reactions(&mut bob, group, seq).await,
        [r("👍", 2, false), r("🎉", 1, false)]
    );

    // Adding again is done and changes nothing; removing drops the count.
    assert!(matches!(
        alice.request(react(group, seq, "👍", false)).await,
        S::Done(_)
    ));
    assert!(matches!(
        carol.request(react(group, seq, "🎉", true)).await,
        S::Done(_)
    ));
    let e = next_reaction(&mut bob).await;
    assert!(e.removed, "the repeated add sent no event: {e:?}");
    assert_eq!(
        e.reactions
            .iter()
            .map(|r| (r.emoji.as_str(), r.count))
            .collect::<Vec<_>>(),
        [("👍", 2)]
    );

    // The conversation list's preview and Sync carry them; no seq was
    // taken, so unread counts are as before.
    let list = match bob
        .request(C::ListConversations(pb::ListConversations::default()))
        .await
    {
        S::ConversationList(l) => l,
        other => panic!("list: {other:?}"),
    };
    let summary = list
        .conversations
        .iter()
        .find(|s| s.conversation_id == group)
        .expect("listed");
    assert_eq!(summary.last_seq, seq);
    let last = summary.last_message.as_ref().expect("preview");
    assert_eq!(last.reactions.len(), 1);
    let sync = match carol
        .request(C::Sync(pb::Sync {
            cursors: vec![],
            limit_per_conversation: 0,
        }))
        .await
    {
        S::SyncResult(s) => s,
        other => panic!("sync: {other:?}"),
    };
    let m = &sync.gaps[0].messages[0];
    assert_eq!(
        m.reactions
            .iter()
            .map(|r| (r.emoji.as_str(), r.count, r.mine))
            .collect::<Vec<_>>(),
        [("👍", 2, true)]
    );

    // Kept across a restart.
    let server = server.restart().await;
    let mut carol = Raw::login(server.addr, "carol").await;
    assert_eq!(reactions(&mut carol, group, seq).await, [r("👍", 2, true)]);
    server.stop().await;
}

#[tokio::test]
async fn bad_reactions_are_refused_and_change_nothing() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let mut dave = Raw::register(server.addr, "dave").await;
    let group = alice.create_group("trip", &[bob.user_id]).await;
    let seq = bob.send_text(group, "b1", "hello").await.seq;

    let cases = [
        (
            dave.request(react(group, seq, "👍", false)).await,
            ErrorCode::NotAMember,
        ),
        (
            alice.request(react(group, seq, "", false)).await,
            ErrorCode::InvalidArgument,
        ),
        (
            alice
                .request(react(group, seq, &"🎉".repeat(9), false))
                .await,
            ErrorCode::InvalidArgument,
        ),
        (
            alice.request(react(group, seq, "\n", false)).await,
            ErrorCode::InvalidArgument,
        ),
        (
            alice.request(react(group, 999, "👍", false)).await,
            ErrorCode::NotFound,
        ),
        (
            alice.request(react(987_654, 1, "👍", false)).await,
            ErrorCode::NotFound,
        ),
    ];
    for (reply, code) in cases {
        assert_eq!(error_code(&reply), code);
    }
    assert!(reactions(&mut alice, group, seq).await.is_empty());

    // At most 20 distinct emoji per message; one already there still counts.
    for i in 0..20 {
        let c = if i % 2 == 0 { &mut alice } else { &mut bob };
        assert!(matches!(
            c.request(react(group, seq, &format!("e{i}"), false)).await,
            S::Done(_)
        ));
    }
    assert_eq!(
        error_code(&alice.request(react(group, seq, "e20", false)).await),
        ErrorCode::ReactionLimit
    );
    assert!(matches!(
        alice.request(react(group, seq, "e1", false)).await,
        S::Done(_)
    ));
    let now = reactions(&mut alice, group, seq).await;
    assert_eq!(now.len(), 20);
    assert!(now.contains(&r("e1", 2, true)));

    // SYSTEM messages take none; deleted messages take none and show none.
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
        error_code(&alice.request(react(group, added, "👍", false)).await),
        ErrorCode::InvalidArgument
    );
    let del = C::DeleteMessage(pb::DeleteMessage {
        conversation_id: group,
        seq,
    });
    assert!(matches!(bob.request(del).await, S::Done(_)));
    assert_eq!(
        error_code(&alice.request(react(group, seq, "e0", false)).await),
        ErrorCode::Conflict
    );
    assert!(reactions(&mut alice, group, seq).await.is_empty());
    server.stop().await;
}
