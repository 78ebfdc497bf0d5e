//! Places where the spec once disagreed with the server or was silent,
//! each settled and checked here over real sockets: resume carries the gap
//! in ResumeOk, direct chats have two MEMBERs, a request with request_id 0
//! is refused, fire-and-forget frames get no reply in any state, an error
//! that closes the connection still answers its request, and a Sync cursor
//! for a conversation that never existed is reported removed, and no
//! conversation starts with a CREATED event. (The
//! failed-login `retry_after_ms` is checked in `limits.rs`, presence
//! subscriptions in `presence.rs`.)

mod common;

use chat_protocol::ErrorCode;
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

#[tokio::test]
async fn a_request_with_request_id_zero_is_refused_and_not_carried_out() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let bob = Raw::register(server.addr, "bob").await;
    let conv = alice.create_direct(bob.user_id).await;
    alice
        .send_with_id(0, common::send_body(conv, "zero", "never stored"))
        .await;
    let f = alice.read_frame().await.expect("an answer");
    assert_eq!(f.request_id, 0);
    let Some(S::Error(e)) = f.body else {
        panic!("expected an error: {f:?}");
    };
    assert_eq!(e.code, ErrorCode::InvalidArgument as i32);
    // The session stays open, and the send was not carried out.
    let S::MessagePage(h) = alice.history(conv, 0, 0, 10).await else {
        panic!("history");
    };
    assert!(h.messages.is_empty(), "stored: {:?}", h.messages);
    let ack = alice.send_text(conv, "one", "hello").await;
    assert_eq!(ack.seq, 1);
    server.stop().await;
}

#[tokio::test]
async fn fire_and_forget_frames_before_hello_get_no_reply() {
    let server = TestServer::start();
    let mut c = Raw::connect_bare(server.addr).await;
    c.send_with_id(
        0,
        C::Typing(pb::Typing {
            conversation_id: 1,
            active: true,
        }),
    )
    .await;
    c.send_with_id(0, C::MarkRead(pb::MarkRead::default()))
        .await;
    // The next frame is the Pong: nothing answered the two before it, and
    // the connection is open.
    let pong = c.request(C::Ping(pb::Ping { nonce: 5 })).await;
    assert!(matches!(pong, S::Pong(p) if p.nonce == 5), "{pong:?}");
    assert!(c.pushes.is_empty(), "answered: {:?}", c.pushes);
    c.hello(&[]).await;
    server.stop().await;
}

#[tokio::test]
async fn unsupported_version_answers_the_hello_and_closes() {
    let server = TestServer::start();
    let mut c = Raw::connect_bare(server.addr).await;
    c.send_with_id(
        9,
        C::Hello(pb::Hello {
            protocol_version: 99,
            ..Default::default()
        }),
    )
    .await;
    let f = c.read_frame().await.expect("an answer");
    assert_eq!(f.request_id, 9, "the error answers the Hello");
    let Some(S::Error(e)) = f.body else {
        panic!("expected an error: {f:?}");
    };
    assert_eq!(e.code, ErrorCode::UnsupportedVersion as i32);
    assert!(c.read_frame().await.is_none(), "the connection is closed");
    server.stop().await;
}

#[tokio::test]
async fn a_sync_cursor_for_a_conversation_that_never_existed_is_reported_removed() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let bob = Raw::register(server.addr, "bob").await;
    let conv = alice.create_direct(bob.user_id).await;
    alice.send_text(conv, "a", "hi").await;
    let never = conv + 1_000_000;
    let r = alice
        .request(C::Sync(pb::Sync {
            cursors: vec![
                pb::Cursor {
                    conversation_id: conv,
                    seq: 0,
                },
                pb::Cursor {
                    conversation_id: never,
                    seq: 3,
                },
            ],
            limit_per_conversation: 10,
        }))
        .await;
    let S::SyncResult(sync) = r else {
        panic!("sync: {r:?}");
    };
    assert_eq!(sync.removed_conversation_ids, vec![never]);
    let gaps: Vec<u64> = sync.gaps.iter().map(|g| g.conversation_id).collect();
    assert_eq!(gaps, vec![conv]);
    server.stop().await;
}

#[tokio::test]
async fn a_new_conversation_starts_without_a_created_event() {
    // `SystemEvent.CREATED` is reserved: a new group's history is empty
    // until its first message, which gets seq 1.
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let bob = Raw::register(server.addr, "bob").await;
    let group = alice.create_group("team", &[bob.user_id]).await;
    let S::MessagePage(page) = alice.history(group, 0, 0, 10).await else {
        panic!("history");
    };
    assert!(page.messages.is_empty(), "{:?}", page.messages);
    assert_eq!(page.last_seq, 0);
    let ack = alice.send_text(group, "first", "hello").await;
    assert_eq!(ack.seq, 1);
    server.stop().await;
}
