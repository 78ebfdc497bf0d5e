//! Groups: 500 members online, membership changes, roles, concurrent senders.

mod common;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use common::{Raw, TestServer, error_code};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_member_group_delivers_every_message_to_every_member_once_in_order() {
    let server = TestServer::start();
    let addr = server.addr;
    let mut members = Vec::with_capacity(500);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..500 {
        tasks.spawn(async move { (i, Raw::register(addr, &format!("member{i:03}")).await) });
    }
    while let Some(r) = tasks.join_next().await {
        members.push(r.expect("register"));
    }
    members.sort_by_key(|(i, _)| *i);
    let mut members: Vec<Raw> = members.into_iter().map(|(_, c)| c).collect();
    let ids: Vec<u64> = members.iter().map(|c| c.user_id).collect();

    let mut owner = members.remove(0);
    let conv = owner.create_group("everyone", &ids[1..]).await;
    const N: u64 = 10;
    for i in 1..=N {
        let ack = owner
            .send_text(conv, &format!("m{i}"), &format!("broadcast {i}"))
            .await;
        assert_eq!(ack.seq, i);
    }
    members.push(owner);
    let mut readers = tokio::task::JoinSet::new();
    for mut m in members {
        readers.spawn(async move {
            for i in 1..=N {
                let msg = m.next_message().await;
                assert_eq!(
                    (msg.conversation_id, msg.seq),
                    (conv, i),
                    "in order, no gaps, no duplicates"
                );
            }
            let pong = m.request(C::Ping(pb::Ping { nonce: 9 })).await;
            assert!(matches!(pong, S::Pong(_)));
            assert!(
                m.pushes
                    .iter()
                    .all(|f| !matches!(f.body, Some(S::MessagePush(_)))),
                "no duplicate pushes"
            );
        });
    }
    let mut done = 0;
    while let Some(r) = readers.join_next().await {
        r.expect("member received everything");
        done += 1;
    }
    assert_eq!(done, 500);
    server.stop().await;
}

#[tokio::test]
async fn a_removed_member_no_longer_receives_or_reads_the_group() {
    let server = TestServer::start();
    let mut owner = Raw::register(server.addr, "owner").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let mut carol = Raw::register(server.addr, "carol").await;
    let conv = owner
        .create_group("team", &[bob.user_id, carol.user_id])
        .await;
    owner.send_text(conv, "1", "before").await;
    assert_eq!(bob.next_message().await.text, "before");

    let reply = owner
        .request(C::RemoveMember(pb::RemoveMember {
            conversation_id: conv,
            user_id: bob.user_id,
        }))
        .await;
    let view = match reply {
        S::Conversation(c) => c,
        other => panic!("{other:?}"),
    };
    assert_eq!(view.member_count, 2);
    // Bob hears of his removal, in sequence, as his last message.
    let removal = bob.next_message().await;
    assert_eq!(removal.seq, 2);
    assert_eq!(removal.kind, pb::MessageKind::System as i32);
    let event = removal.system.expect("system event");
    assert_eq!(event.kind, pb::system_event::Kind::MemberRemoved as i32);
    assert_eq!(event.user_ids, vec![bob.user_id]);

    owner.send_text(conv, "2", "after").await;
    assert_eq!(carol.next_message().await.seq, 1);
    assert_eq!(carol.next_message().await.seq, 2);
    assert_eq!(carol.next_message().await.text, "after");

    assert_eq!(
        error_code(&bob.history(conv, 0, 0, 10).await),
        ErrorCode::NotAMember
    );
    let send = bob.request(common::send_body(conv, "x", "let me in")).await;
    assert_eq!(error_code(&send), ErrorCode::NotAMember);
    let sync = bob
        .request(C::Sync(pb::Sync {
            cursors: vec![pb::Cursor {
                conversation_id: conv,
                seq: 2,
            }],
            limit_per_conversation: 0,
        }))
        .await;
    match sync {
        S::SyncResult(r) => {
            assert!(r.gaps.is_empty());
            assert_eq!(r.removed_conversation_ids, vec![conv]);
        }
        other => panic!("{other:?}"),
    }
    // No push of "after" reached Bob.
    let pong = bob.request(C::Ping(pb::Ping { nonce: 1 })).await;
    assert!(matches!(pong, S::Pong(_)));
    assert!(
        bob.pushes
            .iter()
            .all(|f| !matches!(f.body, Some(S::MessagePush(_))))
    );
    server.stop().await;
}

#[tokio::test]
async fn roles_are_enforced_with_clear_errors() {
    let server = TestServer::start();
    let mut owner = Raw::register(server.addr, "owner").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let carol = Raw::register(server.addr, "carol").await;
    let dave = Raw::register(server.addr, "dave").await;
    let conv = owner.create_group("team", &[bob.user_id]).await;

    let add = C::AddMembers(pb::AddMembers {
        conversation_id: conv,
        user_ids: vec![carol.user_id],
    });
    assert_eq!(
        error_code(&bob.request(add.clone()).await),
        ErrorCode::Forbidden
    );
    let promote = C::SetRole(pb::SetRole {
        conversation_id: conv,
        user_id: bob.user_id,
        role: pb::Role::Admin as i32,
    });
    assert_eq!(
        error_code(&bob.request(promote.clone()).await),
        ErrorCode::Forbidden
    );
    assert!(matches!(owner.request(promote).await, S::Conversation(_)));
    assert!(matches!(bob.request(add).await, S::Conversation(_)));
    let leave = C::LeaveConversation(pb::LeaveConversation {
        conversation_id: conv,
    });
    assert_eq!(
        error_code(&owner.request(leave.clone()).await),
        ErrorCode::Conflict
    );
    let missing = C::AddMembers(pb::AddMembers {
        conversation_id: conv,
        user_ids: vec![424_242],
    });
    assert_eq!(
        error_code(&owner.request(missing).await),
        ErrorCode::NotFound
    );
    let outsider = C::AddMembers(pb::AddMembers {
        conversation_id: conv,
        user_ids: vec![dave.user_id],
    });
    let mut dave = dave;
    assert_eq!(
        error_code(&dave.request(outsider).await),
        ErrorCode::NotAMember
    );
    let transfer = C::TransferOwnership(pb::TransferOwnership {
        conversation_id: conv,
        new_owner_id: bob.user_id,
    });
    assert!(matches!(owner.request(transfer).await, S::Conversation(_)));
    assert!(matches!(owner.request(leave).await, S::Done(_)));
    assert_eq!(
        error_code(&owner.history(conv, 0, 0, 5).await),
        ErrorCode::NotAMember
    );
    server.stop().await;
}

#[tokio::test]
async fn group_size_is_limited() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = chatd::Config::for_tests(dir.path());
    config.max_group_members = 3;
    let server = TestServer::start_with(dir, config);
    let mut users = Vec::new();
    for i in 0..4 {
        users.push(Raw::register(server.addr, &format!("user{i}")).await);
    }
    let ids: Vec<u64> = users.iter().map(|u| u.user_id).collect();
    let reply = users[0]
        .request(C::CreateConversation(pb::CreateConversation {
            kind: pb::ConversationKind::Group as i32,
            member_ids: ids[1..].to_vec(),
            title: "too big".into(),
        }))
        .await;
    assert_eq!(error_code(&reply), ErrorCode::MemberLimit);
    let conv = users[0].create_group("ok", &ids[1..3]).await;
    let add = C::AddMembers(pb::AddMembers {
        conversation_id: conv,
        user_ids: vec![ids[3]],
    });
    assert_eq!(
        error_code(&users[0].request(add).await),
        ErrorCode::MemberLimit
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_get_gap_free_seqs() {
    let server = TestServer::start();
    let addr = server.addr;
    let mut senders = Vec::new();
    for i in 0..8 {
        senders.push(Raw::register(addr, &format!("sender{i}")).await);
    }
    let ids: Vec<u64> = senders.iter().map(|s| s.user_id).collect();
    let conv = senders[0].create_group("busy", &ids[1..]).await;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut s) in senders.into_iter().enumerate() {
        tasks.spawn(async move {
            // Pipelined: 50 sends in flight, then the acks.
            let mut rids = Vec::new();
            for j in 0..50 {
                rids.push(
                    s.send(common::send_body(conv, &format!("{i}-{j}"), "hi"))
                        .await,
                );
            }
            let mut seqs = Vec::new();
            for rid in rids {
                match s.reply(rid).await {
                    S::SendAck(a) => seqs.push(a.seq),
                    other => panic!("{other:?}"),
                }
            }
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "one sender's messages keep their order"
            );
            seqs
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.expect("sender"));
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=400).collect::<Vec<u64>>(),
        "dense, no gaps, no duplicates"
    );
    server.stop().await;
}
