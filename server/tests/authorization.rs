//! Every request type tried by a user who is not a member, not an admin,
//! logged out or holding a revoked or expired token: refused with the right
//! code, and nothing changes.

mod common;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use common::{Raw, TestServer, error_code};

/// One request of every kind that needs a logged-in user, aimed at `conv`
/// and `target`.
fn every_request(conv: u64, target: u64) -> Vec<C> {
    vec![
        C::Logout(pb::Logout { all_devices: false }),
        C::ChangePassword(pb::ChangePassword {
            current_password: "password123".into(),
            new_password: "taken over".into(),
        }),
        C::DeleteMessage(pb::DeleteMessage {
            conversation_id: conv,
            seq: 1,
        }),
        C::EditMessage(pb::EditMessage {
            conversation_id: conv,
            seq: 1,
            text: "rewritten".into(),
        }),
        C::React(pb::React {
            conversation_id: conv,
            seq: 1,
            emoji: "👎".into(),
            remove: false,
        }),
        C::SetNotificationLevel(pb::SetNotificationLevel {
            conversation_id: conv,
            level: pb::NotificationLevel::Muted as i32,
            muted_until_ms: 0,
        }),
        C::DeleteAccount(pb::DeleteAccount {
            password: "password123".into(),
        }),
        C::BlockUser(pb::BlockUser { user_id: target }),
        C::UnblockUser(pb::UnblockUser { user_id: target }),
        C::ListBlocked(pb::ListBlocked {}),
        C::BanMember(pb::BanMember {
            conversation_id: conv,
            user_id: target,
        }),
        C::UnbanMember(pb::UnbanMember {
            conversation_id: conv,
            user_id: target,
        }),
        C::GetProfile(pb::GetProfile {
            user_id: target,
            username: String::new(),
        }),
        C::UpdateProfile(pb::UpdateProfile {
            display_name: "x".into(),
            hide_last_seen: false,
        }),
        C::RegisterPushToken(pb::RegisterPushToken {
            provider: "fcm".into(),
            token: "t".into(),
        }),
        C::CreateConversation(pb::CreateConversation {
            kind: pb::ConversationKind::Direct as i32,
            member_ids: vec![target],
            title: String::new(),
        }),
        C::AddMembers(pb::AddMembers {
            conversation_id: conv,
            user_ids: vec![target],
        }),
        C::RemoveMember(pb::RemoveMember {
            conversation_id: conv,
            user_id: target,
        }),
        C::SetRole(pb::SetRole {
            conversation_id: conv,
            user_id: target,
            role: pb::Role::Admin as i32,
        }),
        C::LeaveConversation(pb::LeaveConversation {
            conversation_id: conv,
        }),
        C::UpdateConversation(pb::UpdateConversation {
            conversation_id: conv,
            title: "hijacked".into(),
        }),
        C::TransferOwnership(pb::TransferOwnership {
            conversation_id: conv,
            new_owner_id: target,
        }),
        C::ListConversations(pb::ListConversations::default()),
        C::GetConversation(pb::GetConversation {
            conversation_id: conv,
        }),
        common::send_body(conv, "intruder", "let me in"),
        C::GetHistory(pb::GetHistory {
            conversation_id: conv,
            before_seq: 0,
            after_seq: Some(0),
            limit: 10,
        }),
        C::Sync(pb::Sync {
            cursors: vec![],
            limit_per_conversation: 0,
        }),
        C::MarkDelivered(pb::MarkDelivered {
            conversation_id: conv,
            seq: 1,
        }),
        C::MarkRead(pb::MarkRead {
            conversation_id: conv,
            seq: 1,
        }),
        C::GetReceipts(pb::GetReceipts {
            conversation_id: conv,
            seq: 1,
        }),
        C::RequestUpload(pb::RequestUpload {
            mime_type: "image/png".into(),
            size_bytes: 10,
        }),
        C::Typing(pb::Typing {
            conversation_id: conv,
            active: true,
        }),
        C::SetPresence(pb::SetPresence {
            status: pb::PresenceStatus::Busy as i32,
        }),
        C::SubscribePresence(pb::SubscribePresence {
            user_ids: vec![target],
        }),
        C::UnsubscribePresence(pb::UnsubscribePresence {
            user_ids: vec![target],
        }),
        C::SubscribeChannel(pb::SubscribeChannel {
            conversation_id: conv,
        }),
        C::UnsubscribeChannel(pb::UnsubscribeChannel {
            conversation_id: conv,
        }),
    ]
}

/// Conversation-scoped requests (those where membership matters).
fn conversation_requests(conv: u64, target: u64) -> Vec<C> {
    every_request(conv, target)
        .into_iter()
        .filter(|b| {
            matches!(
                b,
                C::AddMembers(_)
                    | C::RemoveMember(_)
                    | C::SetRole(_)
                    | C::LeaveConversation(_)
                    | C::UpdateConversation(_)
                    | C::TransferOwnership(_)
                    | C::GetConversation(_)
                    | C::SendMessage(_)
                    | C::DeleteMessage(_)
                    | C::EditMessage(_)
                    | C::React(_)
                    | C::BanMember(_)
                    | C::SetNotificationLevel(_)
                    | C::UnbanMember(_)
                    | C::GetHistory(_)
                    | C::MarkDelivered(_)
                    | C::MarkRead(_)
                    | C::GetReceipts(_)
            )
        })
        .collect()
}

struct World {
    server: TestServer,
    alice: Raw,
    bob: Raw,
    eve: Raw,
    group: u64,
}

async fn world(config: impl FnOnce(&mut chatd::Config)) -> World {
    let server = TestServer::start_configured(config);
    let mut alice = Raw::register(server.addr, "alice").await;
    let bob = Raw::register(server.addr, "bob").await;
    let eve = Raw::register(server.addr, "eve").await;
    let group = alice.create_group("team", &[bob.user_id]).await;
    alice.send_text(group, "1", "hello team").await;
    World {
        server,
        alice,
        bob,
        eve,
        group,
    }
}

/// What an observer sees of the group: members with roles, title, messages.
async fn snapshot(alice: &mut Raw, group: u64) -> (Vec<(u64, i32)>, String, Vec<(u64, String)>) {
    let conv = match alice
        .request(C::GetConversation(pb::GetConversation {
            conversation_id: group,
        }))
        .await
    {
        S::Conversation(c) => c,
        other => panic!("{other:?}"),
    };
    let page = match alice.history(group, 0, 0, 200).await {
        S::MessagePage(p) => p,
        other => panic!("{other:?}"),
    };
    (
        conv.members.iter().map(|m| (m.user_id, m.role)).collect(),
        conv.title,
        page.messages
            .iter()
            .map(|m| (m.seq, m.text.clone()))
            .collect(),
    )
}

/// Requests that get a reply (everything but the fire-and-forget Typing).
fn answered(body: &C) -> bool {
    !matches!(body, C::Typing(_))
}

#[tokio::test]
async fn non_members_are_refused_everything_about_a_conversation() {
    let mut w = world(|_| {}).await;
    let before = snapshot(&mut w.alice, w.group).await;
    for body in conversation_requests(w.group, w.eve.user_id) {
        let name = format!("{body:?}");
        let reply = w.eve.request(body).await;
        assert_eq!(error_code(&reply), ErrorCode::NotAMember, "{name}");
    }
    let sync = w
        .eve
        .request(C::Sync(pb::Sync {
            cursors: vec![pb::Cursor {
                conversation_id: w.group,
                seq: 0,
            }],
            limit_per_conversation: 0,
        }))
        .await;
    match sync {
        S::SyncResult(r) => {
            assert!(r.gaps.is_empty(), "no messages leak through sync");
            assert_eq!(r.removed_conversation_ids, vec![w.group]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(snapshot(&mut w.alice, w.group).await, before);
    w.server.stop().await;
}

#[tokio::test]
async fn members_who_are_not_admins_cannot_manage_the_group() {
    let mut w = world(|_| {}).await;
    let before = snapshot(&mut w.alice, w.group).await;
    let (g, alice, eve) = (w.group, w.alice.user_id, w.eve.user_id);
    let admin_only = [
        C::AddMembers(pb::AddMembers {
            conversation_id: g,
            user_ids: vec![eve],
        }),
        C::RemoveMember(pb::RemoveMember {
            conversation_id: g,
            user_id: alice,
        }),
        C::SetRole(pb::SetRole {
            conversation_id: g,
            user_id: w.bob.user_id,
            role: pb::Role::Admin as i32,
        }),
        C::UpdateConversation(pb::UpdateConversation {
            conversation_id: g,
            title: "mine".into(),
        }),
        C::TransferOwnership(pb::TransferOwnership {
            conversation_id: g,
            new_owner_id: w.bob.user_id,
        }),
        C::BanMember(pb::BanMember {
            conversation_id: g,
            user_id: alice,
        }),
        C::UnbanMember(pb::UnbanMember {
            conversation_id: g,
            user_id: eve,
        }),
        // Alice's "hello team": only its sender edits it.
        C::EditMessage(pb::EditMessage {
            conversation_id: g,
            seq: 1,
            text: "bob was here".into(),
        }),
    ];
    for body in admin_only {
        let name = format!("{body:?}");
        assert_eq!(
            error_code(&w.bob.request(body).await),
            ErrorCode::Forbidden,
            "{name}"
        );
    }
    assert_eq!(snapshot(&mut w.alice, w.group).await, before);

    // Channel subscribers read but do not post.
    let channel = match w
        .alice
        .request(C::CreateConversation(pb::CreateConversation {
            kind: pb::ConversationKind::Channel as i32,
            member_ids: vec![],
            title: "news".into(),
        }))
        .await
    {
        S::Conversation(c) => c.conversation_id,
        other => panic!("{other:?}"),
    };
    let r = w
        .bob
        .request(C::SubscribeChannel(pb::SubscribeChannel {
            conversation_id: channel,
        }))
        .await;
    assert!(matches!(r, S::Done(_)));
    let r = w.bob.request(common::send_body(channel, "x", "spam")).await;
    assert_eq!(error_code(&r), ErrorCode::Forbidden);
    let r = w
        .bob
        .request(C::SubscribeChannel(pb::SubscribeChannel {
            conversation_id: w.group,
        }))
        .await;
    assert_eq!(
        error_code(&r),
        ErrorCode::InvalidArgument,
        "a group is not a channel"
    );
    w.server.stop().await;
}

#[tokio::test]
async fn nothing_but_authentication_before_login_or_after_logout() {
    let mut w = world(|_| {}).await;
    let before = snapshot(&mut w.alice, w.group).await;
    let mut anonymous = Raw::connect(w.server.addr).await;
    for body in every_request(w.group, w.bob.user_id)
        .into_iter()
        .filter(answered)
    {
        let name = format!("{body:?}");
        assert_eq!(
            error_code(&anonymous.request(body).await),
            ErrorCode::Unauthenticated,
            "{name}"
        );
    }
    // Bob logs out on this connection; the same connection is now anonymous.
    let r = w
        .bob
        .request(C::Logout(pb::Logout { all_devices: false }))
        .await;
    assert!(matches!(r, S::Done(_)));
    for body in every_request(w.group, w.alice.user_id)
        .into_iter()
        .filter(answered)
    {
        let name = format!("{body:?}");
        assert_eq!(
            error_code(&w.bob.request(body).await),
            ErrorCode::Unauthenticated,
            "{name}"
        );
    }
    assert_eq!(snapshot(&mut w.alice, w.group).await, before);
    w.server.stop().await;
}

async fn resume(addr: std::net::SocketAddr, token: &str) -> S {
    let mut c = Raw::connect(addr).await;
    c.request(C::Resume(pb::Resume {
        session_token: token.into(),
        device: None,
        cursors: vec![],
    }))
    .await
}

#[tokio::test]
async fn revoked_and_expired_tokens_are_refused() {
    let w = world(|c| c.token_ttl_secs = 2).await;
    let addr = w.server.addr;
    // A fresh token works.
    assert!(matches!(resume(addr, &w.bob.token).await, S::ResumeOk(_)));
    // Logout revokes this session's token only.
    let mut bob_phone = Raw::login(addr, "bob").await;
    let phone_token = bob_phone.token.clone();
    let r = bob_phone
        .request(C::Logout(pb::Logout { all_devices: false }))
        .await;
    assert!(matches!(r, S::Done(_)));
    assert_eq!(
        error_code(&resume(addr, &phone_token).await),
        ErrorCode::TokenInvalid
    );
    assert!(matches!(resume(addr, &w.bob.token).await, S::ResumeOk(_)));
    // Logout everywhere revokes every token of the user.
    let mut alice = w.alice;
    let alice_laptop = Raw::login(addr, "alice").await;
    let r = alice
        .request(C::Logout(pb::Logout { all_devices: true }))
        .await;
    assert!(matches!(r, S::Done(_)));
    assert_eq!(
        error_code(&resume(addr, &alice_laptop.token).await),
        ErrorCode::TokenInvalid
    );
    assert_eq!(
        error_code(&resume(addr, &alice.token).await),
        ErrorCode::TokenInvalid
    );
    // A token past its lifetime is refused.
    w.server.advance(std::time::Duration::from_millis(2100));
    assert_eq!(
        error_code(&resume(addr, &w.bob.token).await),
        ErrorCode::TokenInvalid
    );
    assert_eq!(
        error_code(&resume(addr, "not-a-token").await),
        ErrorCode::TokenInvalid
    );
    w.server.stop().await;
}

/// Frames `observer` receives up to and including the message with
/// `marker` text.
async fn frames_until(observer: &mut Raw, marker: &str) -> Vec<pb::ServerFrame> {
    let mut frames = Vec::new();
    loop {
        let f = match observer.pushes.pop_front() {
            Some(f) => f,
            None => observer.read_frame().await.expect("open"),
        };
        let done = matches!(&f.body, Some(S::MessagePush(p)) if p.message.as_ref().is_some_and(|m| m.text == marker));
        frames.push(f);
        if done {
            return frames;
        }
    }
}

#[tokio::test]
async fn typing_from_outsiders_and_logged_out_sessions_reaches_nobody() {
    let mut w = world(|_| {}).await;
    let typing = C::Typing(pb::Typing {
        conversation_id: w.group,
        active: true,
    });
    // An outsider, an anonymous session and a logged-out one "type" in the
    // group; each then proves with a Ping that its frame was processed.
    let mut anonymous = Raw::connect(w.server.addr).await;
    let mut gone = Raw::login(w.server.addr, "bob").await;
    let r = gone
        .request(C::Logout(pb::Logout { all_devices: false }))
        .await;
    assert!(matches!(r, S::Done(_)));
    for c in [&mut w.eve, &mut anonymous, &mut gone] {
        c.send(typing.clone()).await;
        let pong = c.request(C::Ping(pb::Ping { nonce: 5 })).await;
        assert!(matches!(pong, S::Pong(_)), "{pong:?}");
    }
    w.alice.send_text(w.group, "m", "marker").await;
    let seen = frames_until(&mut w.bob, "marker").await;
    assert!(
        !seen
            .iter()
            .any(|f| matches!(f.body, Some(S::TypingEvent(_)))),
        "{seen:?}"
    );
    w.server.stop().await;
}

#[tokio::test]
async fn authentication_is_refused_on_an_authenticated_session() {
    let mut w = world(|_| {}).await;
    let token = w.alice.token.clone();
    let attempts = [
        C::Hello(pb::Hello {
            protocol_version: 1,
            ..Default::default()
        }),
        C::Register(pb::Register {
            username: "second".into(),
            password: "password123".into(),
            ..Default::default()
        }),
        C::Login(pb::Login {
            username: "eve".into(),
            password: "password123".into(),
            device: None,
        }),
        C::Resume(pb::Resume {
            session_token: token,
            device: None,
            cursors: vec![],
        }),
    ];
    for body in attempts {
        let name = format!("{body:?}");
        let code = error_code(&w.bob.request(body).await);
        let expected = if name.starts_with("Hello") {
            ErrorCode::InvalidArgument
        } else {
            ErrorCode::AlreadyAuthenticated
        };
        assert_eq!(code, expected, "{name}");
    }
    // Still bob; no account "second" was created.
    let me = w
        .bob
        .request(C::GetProfile(pb::GetProfile {
            user_id: 0,
            username: "second".into(),
        }))
        .await;
    assert_eq!(error_code(&me), ErrorCode::NotFound);
    let r = w
        .bob
        .request(C::LeaveConversation(pb::LeaveConversation {
            conversation_id: w.group,
        }))
        .await;
    assert!(matches!(r, S::Done(_)), "bob is still bob: {r:?}");
    w.server.stop().await;
}

#[tokio::test]
async fn a_session_whose_resume_was_refused_can_do_nothing() {
    let mut w = world(|c| c.token_ttl_secs = 1).await;
    let addr = w.server.addr;
    // Bob's phone logs out (its token is revoked); alice's token expires.
    let mut phone = Raw::login(addr, "bob").await;
    let revoked = phone.token.clone();
    let r = phone
        .request(C::Logout(pb::Logout { all_devices: false }))
        .await;
    assert!(matches!(r, S::Done(_)));
    let before = snapshot(&mut w.alice, w.group).await;
    w.server.advance(std::time::Duration::from_millis(1100));
    let expired = w.alice.token.clone();
    for token in [revoked, expired] {
        let mut c = Raw::connect(addr).await;
        let r = c
            .request(C::Resume(pb::Resume {
                session_token: token,
                device: None,
                cursors: vec![pb::Cursor {
                    conversation_id: w.group,
                    seq: 0,
                }],
            }))
            .await;
        assert_eq!(error_code(&r), ErrorCode::TokenInvalid);
        // No messages leaked with the refusal, and every request after it
        // is refused.
        assert!(
            c.pushes
                .iter()
                .all(|f| !matches!(f.body, Some(S::MessagePush(_))))
        );
        for body in every_request(w.group, w.eve.user_id)
            .into_iter()
            .filter(answered)
        {
            let name = format!("{body:?}");
            assert_eq!(
                error_code(&c.request(body).await),
                ErrorCode::Unauthenticated,
                "{name}"
            );
        }
    }
    // Alice's own live session was not ended by its token expiring (the
    // token only matters for Resume), and nothing changed.
    assert_eq!(snapshot(&mut w.alice, w.group).await, before);
    w.server.stop().await;
}

#[tokio::test]
async fn channel_subscribers_cannot_manage_the_channel() {
    let mut w = world(|_| {}).await;
    let channel = match w
        .alice
        .request(C::CreateConversation(pb::CreateConversation {
            kind: pb::ConversationKind::Channel as i32,
            member_ids: vec![],
            title: "news".into(),
        }))
        .await
    {
        S::Conversation(c) => c.conversation_id,
        other => panic!("{other:?}"),
    };
    let r = w
        .bob
        .request(C::SubscribeChannel(pb::SubscribeChannel {
            conversation_id: channel,
        }))
        .await;
    assert!(matches!(r, S::Done(_)));
    let before = snapshot(&mut w.alice, channel).await;
    let (alice, eve) = (w.alice.user_id, w.eve.user_id);
    let admin_only = [
        common::send_body(channel, "x", "spam"),
        C::AddMembers(pb::AddMembers {
            conversation_id: channel,
            user_ids: vec![eve],
        }),
        C::RemoveMember(pb::RemoveMember {
            conversation_id: channel,
            user_id: alice,
        }),
        C::SetRole(pb::SetRole {
            conversation_id: channel,
            user_id: w.bob.user_id,
            role: pb::Role::Admin as i32,
        }),
        C::UpdateConversation(pb::UpdateConversation {
            conversation_id: channel,
            title: "mine".into(),
        }),
        C::TransferOwnership(pb::TransferOwnership {
            conversation_id: channel,
            new_owner_id: w.bob.user_id,
        }),
    ];
    for body in admin_only {
        let name = format!("{body:?}");
        assert_eq!(
            error_code(&w.bob.request(body).await),
            ErrorCode::Forbidden,
            "{name}"
        );
    }
    assert_eq!(snapshot(&mut w.alice, channel).await, before);
    w.server.stop().await;
}

/// `c` is told `TOKEN_INVALID` and closed, and its token no longer
/// resumes.
async fn assert_ended_and_revoked(addr: std::net::SocketAddr, mut c: Raw) {
    let mut last = None;
    while let Some(f) = c.read_frame().await {
        if let Some(S::Error(e)) = f.body {
            assert_eq!(f.request_id, 0);
            last = ErrorCode::try_from(e.code).ok();
        }
    }
    assert_eq!(last, Some(ErrorCode::TokenInvalid));
    assert_eq!(
        error_code(&resume(addr, &c.token).await),
        ErrorCode::TokenInvalid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_out_everywhere_ends_the_other_sessions_too() {
    let mut w = world(|_| {}).await;
    let addr = w.server.addr;
    // Alice's other devices: raw sessions (spread over the shards) and an
    // app using client-lib, which would otherwise reconnect and resume.
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(Raw::login(addr, "alice").await);
    }
    let (app, mut app_events) = chat_client::Client::connect(
        &format!("tcp://{addr}"),
        chat_client::ClientOptions {
            reconnect_min_delay: std::time::Duration::from_millis(20),
            ..Default::default()
        },
    )
    .await
    .expect("connect");
    app.login("alice", "password123").await.expect("login");
    let r = w
        .alice
        .request(C::Logout(pb::Logout { all_devices: true }))
        .await;
    assert!(matches!(r, S::Done(_)));
    for c in others {
        assert_ended_and_revoked(addr, c).await;
    }
    // The app is told, tries to resume, is refused, and stops.
    let mut disconnects = 0;
    while let Some(event) = tokio::time::timeout(common::WAIT, app_events.next())
        .await
        .expect("events end")
    {
        if matches!(event, chat_client::Event::Disconnected { .. }) {
            disconnects += 1;
        }
        assert!(!matches!(event, chat_client::Event::Reconnected));
    }
    assert!(disconnects >= 1);
    assert!(app.session_token().is_none());
    // Bob's sessions are untouched.
    let pong = w.bob.request(C::Ping(pb::Ping { nonce: 1 })).await;
    assert!(matches!(pong, S::Pong(_)));
    w.server.stop().await;
}

/// Login with `password` on a new connection: its reply.
async fn login_reply(addr: std::net::SocketAddr, username: &str, password: &str) -> S {
    let mut c = Raw::connect(addr).await;
    c.request(C::Login(pb::Login {
        username: username.into(),
        password: password.into(),
        device: None,
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_password_ends_the_other_sessions_and_keeps_this_one() {
    let mut w = world(|c| c.login_failures_per_username = 3).await;
    let addr = w.server.addr;
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(Raw::login(addr, "alice").await);
    }
    let change = |current: &str, new: &str| {
        C::ChangePassword(pb::ChangePassword {
            current_password: current.into(),
            new_password: new.into(),
        })
    };
    // A new password that Register would refuse is refused.
    let r = w.alice.request(change("password123", "short")).await;
    assert_eq!(error_code(&r), ErrorCode::InvalidArgument);
    // A wrong current password is refused and counts as a failed login.
    let r = w.alice.request(change("guess1234", "new password")).await;
    assert_eq!(error_code(&r), ErrorCode::InvalidCredentials);

    let r = w.alice.request(change("password123", "new password")).await;
    assert!(matches!(r, S::Done(_)), "{r:?}");
    // Every other session is told and closed, and its token is revoked.
    for c in others {
        assert_ended_and_revoked(addr, c).await;
    }
    // This session goes on, and its token still resumes.
    let pong = w.alice.request(C::Ping(pb::Ping { nonce: 1 })).await;
    assert!(matches!(pong, S::Pong(_)));
    let group = w.alice.history(w.group, 0, 0, 10).await;
    assert!(matches!(group, S::MessagePage(_)), "{group:?}");
    assert!(matches!(resume(addr, &w.alice.token).await, S::ResumeOk(_)));
    // Only the new password logs in.
    assert_eq!(
        error_code(&login_reply(addr, "alice", "password123").await),
        ErrorCode::InvalidCredentials
    );
    assert!(matches!(
        login_reply(addr, "alice", "new password").await,
        S::AuthOk(_)
    ));
    // Bob's sessions are untouched.
    let pong = w.bob.request(C::Ping(pb::Ping { nonce: 1 })).await;
    assert!(matches!(pong, S::Pong(_)));

    // Guessing through a session hits the failed-login limit (3 per
    // username here; one wrong password above and one wrong login count).
    let r = w.alice.request(change("guess5678", "other password")).await;
    assert_eq!(error_code(&r), ErrorCode::InvalidCredentials);
    let r = w
        .alice
        .request(change("new password", "other password"))
        .await;
    assert_eq!(error_code(&r), ErrorCode::TooManyLoginAttempts);
    w.server.stop().await;
}
