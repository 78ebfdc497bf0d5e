//! BlockUser: between a blocked pair no direct conversation is created,
//! nothing is sent in the existing one (either way), typing and presence
//! stay hidden, while their group goes on as before. Blocks are listed,
//! survive a restart and are lifted by UnblockUser. Blocking oneself or an
//! unknown user is refused.

mod common;

use std::time::Duration;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use common::{Raw, TestServer, error_code, send_body};

fn block(user: u64) -> C {
    C::BlockUser(pb::BlockUser { user_id: user })
}

fn unblock(user: u64) -> C {
    C::UnblockUser(pb::UnblockUser { user_id: user })
}

async fn blocked(c: &mut Raw) -> Vec<u64> {
    match c.request(C::ListBlocked(pb::ListBlocked {})).await {
        S::BlockedUsers(b) => b.user_ids,
        other => panic!("list blocked: {other:?}"),
    }
}

fn create_direct(other: u64) -> C {
    C::CreateConversation(pb::CreateConversation {
        kind: pb::ConversationKind::Direct as i32,
        member_ids: vec![other],
        title: String::new(),
    })
}

/// Frames `c` gets until the group message `marker` arrives (it is
/// consumed), keeping nothing else aside.
async fn frames_until(c: &mut Raw, marker: &str) -> Vec<pb::ServerFrame> {
    let mut seen = Vec::new();
    loop {
        let f = match c.pushes.pop_front() {
            Some(f) => f,
            None => c.read_frame().await.expect("connection open"),
        };
        if let Some(S::MessagePush(p)) = &f.body {
            if p.message.as_ref().is_some_and(|m| m.text == marker) {
                return seen;
            }
        }
        seen.push(f);
    }
}

/// Waits for `c` to hear that `user` has `status`.
async fn presence_of(c: &mut Raw, user: u64, status: pb::PresenceStatus) {
    loop {
        let f = match c.pushes.pop_front() {
            Some(f) => f,
            None => c.read_frame().await.expect("connection open"),
        };
        if let Some(S::PresenceEvent(p)) = f.body {
            if p.user_id == user && p.status == status as i32 {
                return;
            }
        }
    }
}

fn subscribe(users: &[u64]) -> C {
    C::SubscribePresence(pb::SubscribePresence {
        user_ids: users.to_vec(),
    })
}

fn busy() -> C {
    C::SetPresence(pb::SetPresence {
        status: pb::PresenceStatus::Busy as i32,
    })
}

#[tokio::test]
async fn a_blocked_pair_exchanges_nothing_directly_and_their_group_goes_on() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let mut carol = Raw::register(server.addr, "carol").await;
    let (a, b) = (alice.user_id, bob.user_id);
    let direct = alice.create_direct(b).await;
    alice.send_text(direct, "d1", "hi bob").await;
    let group = carol.create_group("all", &[a, b]).await;
    // Bob and Carol watch Alice's presence.
    assert!(matches!(bob.request(subscribe(&[a])).await, S::Done(_)));
    assert!(matches!(carol.request(subscribe(&[a])).await, S::Done(_)));
    for c in [&mut bob, &mut carol] {
        presence_of(c, a, pb::PresenceStatus::Online).await;
    }

    assert_eq!(
        error_code(&alice.request(block(a)).await),
        ErrorCode::InvalidArgument,
        "blocking oneself"
    );
    assert_eq!(
        error_code(&alice.request(block(987_654)).await),
        ErrorCode::NotFound
    );
    assert!(blocked(&mut alice).await.is_empty());
    assert!(matches!(alice.request(block(b)).await, S::Done(_)));
    assert!(matches!(alice.request(block(b)).await, S::Done(_)), "twice");
    assert_eq!(blocked(&mut alice).await, [b]);
    assert!(blocked(&mut bob).await.is_empty(), "only one's own blocks");

    // Either way, nothing goes through the direct chat, and none is made.
    for (c, cmid) in [(&mut bob, "b1"), (&mut alice, "a1")] {
        let r = c.request(send_body(direct, cmid, "hello?")).await;
        assert_eq!(error_code(&r), ErrorCode::Blocked);
    }
    let edit = C::EditMessage(pb::EditMessage {
        conversation_id: direct,
        seq: 1,
        text: "hi".into(),
    });
    assert_eq!(error_code(&alice.request(edit).await), ErrorCode::Blocked);
    assert_eq!(
        error_code(&bob.request(create_direct(a)).await),
        ErrorCode::Blocked
    );
    assert_eq!(
        error_code(&alice.request(create_direct(b)).await),
        ErrorCode::Blocked
    );
    // Others are not affected.
    let carols = match carol.request(create_direct(a)).await {
        S::Conversation(c) => c.conversation_id,
        other => panic!("create: {other:?}"),
    };
    assert_ne!(carols, direct);

    // Bob's typing in the direct chat and Alice's presence stay hidden;
    // Carol still sees Alice's presence, and the group goes on.
    let typing = C::Typing(pb::Typing {
        conversation_id: direct,
        active: true,
    });
    bob.send_with_id(0, typing).await;
    assert!(matches!(alice.request(busy()).await, S::Done(_)));
    presence_of(&mut carol, a, pb::PresenceStatus::Busy).await;
    // Resubscribing does not bring it back.
    assert!(matches!(bob.request(subscribe(&[a])).await, S::Done(_)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.send_text(group, "g1", "marker for alice").await;
    alice.send_text(group, "g2", "marker for bob").await;
    let to_alice = frames_until(&mut alice, "marker for alice").await;
    assert!(
        !to_alice
            .iter()
            .any(|f| matches!(&f.body, Some(S::TypingEvent(t)) if t.user_id == b)),
        "{to_alice:?}"
    );
    let to_bob = frames_until(&mut bob, "marker for bob").await;
    assert!(
        !to_bob
            .iter()
            .any(|f| matches!(&f.body, Some(S::PresenceEvent(p)) if p.user_id == a)),
        "{to_bob:?}"
    );

    // The block survives a restart.
    let server = server.restart().await;
    let mut alice = Raw::login(server.addr, "alice").await;
    let mut bob = Raw::login(server.addr, "bob").await;
    assert_eq!(blocked(&mut alice).await, [b]);
    let r = bob.request(send_body(direct, "b2", "still?")).await;
    assert_eq!(error_code(&r), ErrorCode::Blocked);

    // Unblocking restores the direct chat, unless both blocked.
    assert!(matches!(bob.request(block(a)).await, S::Done(_)));
    assert!(matches!(alice.request(unblock(b)).await, S::Done(_)));
    let r = alice.request(send_body(direct, "a2", "hm")).await;
    assert_eq!(error_code(&r), ErrorCode::Blocked, "Bob still blocks Alice");
    assert!(matches!(bob.request(unblock(a)).await, S::Done(_)));
    assert!(matches!(bob.request(unblock(a)).await, S::Done(_)), "twice");
    assert!(blocked(&mut alice).await.is_empty());
    assert_eq!(alice.send_text(direct, "a3", "friends again").await.seq, 2);
    match bob.request(create_direct(a)).await {
        S::Conversation(c) => assert_eq!(c.conversation_id, direct),
        other => panic!("create: {other:?}"),
    }
    server.stop().await;
}
