//! BanMember and UnbanMember: an owner or admin bans a user from a group or
//! channel; a member is removed (a MEMBER_BANNED system message tells
//! everyone, the banned user included), and the user cannot be added back
//! or subscribe again until unbanned, also after a restart. Only owners and
//! admins see the bans; members, outsiders and bans of the owner are
//! refused and change nothing.

mod common;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S, system_event};
use common::{Raw, TestServer, error_code};

fn ban(conversation: u64, user: u64) -> C {
    C::BanMember(pb::BanMember {
        conversation_id: conversation,
        user_id: user,
    })
}

fn unban(conversation: u64, user: u64) -> C {
    C::UnbanMember(pb::UnbanMember {
        conversation_id: conversation,
        user_id: user,
    })
}

fn add(conversation: u64, user: u64) -> C {
    C::AddMembers(pb::AddMembers {
        conversation_id: conversation,
        user_ids: vec![user],
    })
}

async fn get(c: &mut Raw, conversation: u64) -> S {
    c.request(C::GetConversation(pb::GetConversation {
        conversation_id: conversation,
    }))
    .await
}

fn conversation(reply: S) -> pb::Conversation {
    match reply {
        S::Conversation(c) => c,
        other => panic!("expected a conversation: {other:?}"),
    }
}

#[tokio::test]
async fn a_banned_user_is_removed_and_kept_out_until_unbanned() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let mut mallory = Raw::register(server.addr, "mallory").await;
    let mut dave = Raw::register(server.addr, "dave").await;
    let (b, m) = (bob.user_id, mallory.user_id);
    let group = alice.create_group("club", &[b, m]).await;

    // Members do not ban, nobody bans the owner, outsiders nothing.
    let cases = [
        (bob.request(ban(group, m)).await, ErrorCode::Forbidden),
        (
            mallory.request(ban(group, alice.user_id)).await,
            ErrorCode::Forbidden,
        ),
        (dave.request(ban(group, m)).await, ErrorCode::NotAMember),
        (
            alice.request(ban(group, alice.user_id)).await,
            ErrorCode::InvalidArgument,
        ),
        (
            alice.request(ban(group, 987_654)).await,
            ErrorCode::NotFound,
        ),
    ];
    for (reply, code) in cases {
        assert_eq!(error_code(&reply), code);
    }

    // The owner bans Mallory: removed, and everyone hears it.
    let c = conversation(alice.request(ban(group, m)).await);
    assert_eq!(c.banned_ids, [m]);
    assert!(c.members.iter().all(|x| x.user_id != m));
    for who in [&mut bob, &mut mallory] {
        let msg = who.next_message().await;
        let sys = msg.system.expect("a system message");
        assert_eq!(sys.kind, system_event::Kind::MemberBanned as i32);
        assert_eq!(sys.user_ids, [m]);
    }
    assert_eq!(
        error_code(
            &mallory
                .request(common::send_body(group, "m1", "let me in"))
                .await
        ),
        ErrorCode::NotAMember
    );
    // Members do not see who is banned.
    assert!(
        conversation(get(&mut bob, group).await)
            .banned_ids
            .is_empty()
    );

    // Kept out across a restart: the ban is stored.
    let server = server.restart().await;
    let mut alice = Raw::login(server.addr, "alice").await;
    let mut bob = Raw::login(server.addr, "bob").await;
    assert_eq!(
        error_code(&alice.request(add(group, m)).await),
        ErrorCode::Banned
    );
    assert_eq!(conversation(get(&mut alice, group).await).banned_ids, [m]);
    // An admin may unban; a member may not.
    let r = alice
        .request(C::SetRole(pb::SetRole {
            conversation_id: group,
            user_id: b,
            role: pb::Role::Admin as i32,
        }))
        .await;
    assert!(matches!(r, S::Conversation(_)), "{r:?}");
    let mut dave = Raw::login(server.addr, "dave").await;
    assert_eq!(
        error_code(&dave.request(unban(group, m)).await),
        ErrorCode::NotAMember
    );
    let c = conversation(bob.request(unban(group, m)).await);
    assert!(c.banned_ids.is_empty());
    let c = conversation(bob.request(add(group, m)).await);
    assert!(c.members.iter().any(|x| x.user_id == m), "back in");

    // A channel's banned subscriber cannot subscribe again.
    let channel = conversation(
        alice
            .request(C::CreateConversation(pb::CreateConversation {
                kind: pb::ConversationKind::Channel as i32,
                member_ids: vec![],
                title: "news".into(),
            }))
            .await,
    )
    .conversation_id;
    let subscribe = || {
        C::SubscribeChannel(pb::SubscribeChannel {
            conversation_id: channel,
        })
    };
    assert!(matches!(dave.request(subscribe()).await, S::Done(_)));
    assert_eq!(
        conversation(alice.request(ban(channel, dave.user_id)).await).banned_ids,
        [dave.user_id]
    );
    assert_eq!(
        error_code(&dave.request(subscribe()).await),
        ErrorCode::Banned
    );
    // Nobody is banned from a direct chat (block instead).
    let direct = alice.create_direct(dave.user_id).await;
    assert_eq!(
        error_code(&alice.request(ban(direct, dave.user_id)).await),
        ErrorCode::InvalidArgument
    );
    server.stop().await;
}
