//! Places where the spec once disagreed with the server or was silent,
//! each settled and checked here over real sockets (the failed-login
//! `retry_after_ms` is in `limits.rs`, presence subscriptions in
//! `presence.rs`).

mod common;

use chat_protocol::pb::{self, Role, client_frame::Body as C, server_frame::Body as S};
use common::{Raw, TestServer};

#[tokio::test]
async fn resume_ok_carries_what_was_missed_and_nothing_is_pushed_after_it() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let bob = Raw::register(server.addr, "bob").await;
    let conv = alice.create_direct(bob.user_id).await;
    for i in 1..=3 {
        alice.send_text(conv, &format!("m{i}"), "missed").await;
    }
    let mut again = Raw::connect(server.addr).await;
    let r = again
        .request(C::Resume(pb::Resume {
            session_token: bob.token.clone(),
            device: None,
            cursors: vec![pb::Cursor {
                conversation_id: conv,
                seq: 0,
            }],
        }))
        .await;
    let S::ResumeOk(ok) = r else {
        panic!("resume: {r:?}");
    };
    let gaps = ok.sync.map(|s| s.gaps).unwrap_or_default();
    let seqs: Vec<u64> = gaps
        .iter()
        .flat_map(|g| g.messages.iter().map(|m| m.seq))
        .collect();
    assert_eq!(seqs, vec![1, 2, 3], "the gap is in ResumeOk.sync");
    let pong = again.request(C::Ping(pb::Ping { nonce: 1 })).await;
    assert!(matches!(pong, S::Pong(_)));
    let pushed: Vec<_> = again
        .pushes
        .iter()
        .filter(|f| matches!(f.body, Some(S::MessagePush(_))))
        .collect();
    assert!(pushed.is_empty(), "nothing pushed besides: {pushed:?}");
    server.stop().await;
}

#[tokio::test]
async fn both_users_of_a_direct_chat_are_members() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let bob = Raw::register(server.addr, "bob").await;
    let conv = alice.create_direct(bob.user_id).await;
    let r = alice
        .request(C::GetConversation(pb::GetConversation {
            conversation_id: conv,
        }))
        .await;
    let S::Conversation(c) = r else {
        panic!("get: {r:?}");
    };
    assert_eq!(c.my_role, Role::Member as i32);
    let mut roles: Vec<(u64, i32)> = c.members.iter().map(|m| (m.user_id, m.role)).collect();
    roles.sort_unstable();
    assert_eq!(
        roles,
        vec![
            (alice.user_id, Role::Member as i32),
            (bob.user_id, Role::Member as i32)
        ]
    );
    server.stop().await;
}
