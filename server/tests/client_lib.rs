//! client-lib against a real server: events, idempotent sends across a
//! server restart, resume and sync from stored cursors.

mod common;

use std::time::Duration;

use chat_client::{Client, ClientOptions, ConversationId, Event, Events, UserId};
use common::TestServer;

fn url(server: &TestServer) -> String {
    format!("tcp://{}", server.addr)
}

async fn connect(server: &TestServer) -> (Client, Events) {
    Client::connect(&url(server), ClientOptions::default())
        .await
        .expect("connect")
}

/// Collects message events until `n` arrived (other events are skipped).
async fn messages(events: &mut Events, n: usize) -> Vec<chat_client::pb::Message> {
    let mut out = Vec::new();
    while out.len() < n {
        let event = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .expect("timed out waiting for messages")
            .expect("event stream open");
        if let Event::Message(m) = event {
            out.push(m);
        }
    }
    out
}

/// No further message event arrives within a short wait.
async fn no_more_messages(events: &mut Events) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.next()).await {
        assert!(!matches!(event, Event::Message(_)), "unexpected {event:?}");
    }
}

#[tokio::test]
async fn messages_arrive_as_events_once_and_in_order() {
    let server = TestServer::start();
    let (alice, _alice_events) = connect(&server).await;
    let (bob, mut bob_events) = connect(&server).await;
    alice
        .register("alice", "password123", "Alice")
        .await
        .expect("register");
    let bob_id = bob
        .register("bob", "password123", "Bob")
        .await
        .expect("register")
        .user_id;
    let chat = alice.create_direct(UserId(bob_id)).await.expect("direct");
    let conv = ConversationId(chat.conversation_id);
    for i in 0..50 {
        let ack = alice.send_text(conv, &format!("m{i}")).await.expect("ack");
        assert_eq!(ack.seq, i + 1);
    }
    let got = messages(&mut bob_events, 50).await;
    assert_eq!(
        got.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=50).collect::<Vec<_>>()
    );
    assert_eq!(bob.cursor(conv).await, 50);
    no_more_messages(&mut bob_events).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_survive_a_server_restart_without_loss_or_duplicates() {
    let server = TestServer::start();
    let (alice, _alice_events) = connect(&server).await;
    let (bob, mut bob_events) = connect(&server).await;
    alice
        .register("alice", "password123", "")
        .await
        .expect("register");
    let bob_id = bob
        .register("bob", "password123", "")
        .await
        .expect("register")
        .user_id;
    let conv = ConversationId(
        alice
            .create_direct(UserId(bob_id))
            .await
            .expect("direct")
            .conversation_id,
    );

    // A sender that keeps going while the server restarts underneath it.
    let sender = {
        let alice = alice.clone();
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..200 {
                let ack = alice
                    .send_text(conv, &format!("n{i}"))
                    .await
                    .expect("acked eventually");
                seqs.push(ack.seq);
            }
            seqs
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let server = server.restart().await;
    let seqs = sender.await.expect("sender");
    assert_eq!(
        seqs,
        (1..=200).collect::<Vec<_>>(),
        "every send acked once, in order"
    );

    let got = messages(&mut bob_events, 200).await;
    assert_eq!(
        got.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=200).collect::<Vec<_>>()
    );
    let texts: Vec<String> = got.iter().map(|m| m.text.clone()).collect();
    assert_eq!(texts, (0..200).map(|i| format!("n{i}")).collect::<Vec<_>>());
    no_more_messages(&mut bob_events).await;
    server.stop().await;
}

#[tokio::test]
async fn an_app_restart_resumes_from_stored_cursors() {
    let server = TestServer::start();
    let (alice, _alice_events) = connect(&server).await;
    let (bob, mut bob_events) = connect(&server).await;
    alice
        .register("alice", "password123", "")
        .await
        .expect("register");
    let bob_id = bob
        .register("bob", "password123", "")
        .await
        .expect("register")
        .user_id;
    let conv = ConversationId(
        alice
            .create_direct(UserId(bob_id))
            .await
            .expect("direct")
            .conversation_id,
    );
    for i in 0..10 {
        alice
            .send_text(conv, &format!("early{i}"))
            .await
            .expect("ack");
    }
    messages(&mut bob_events, 10).await;
    // The app saves its token and cursors, and quits.
    let token = bob.session_token().expect("token");
    let saved = bob.cursors().await;
    bob.close().await;
    drop(bob_events);

    for i in 0..700 {
        alice
            .send_text(conv, &format!("late{i}"))
            .await
            .expect("ack");
    }

    let (bob, mut bob_events) = connect(&server).await;
    for c in saved {
        bob.set_cursor(ConversationId(c.conversation_id), c.seq)
            .await;
    }
    bob.resume(&token).await.expect("resume");
    let got = messages(&mut bob_events, 700).await;
    assert_eq!(
        got.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (11..=710).collect::<Vec<_>>()
    );
    no_more_messages(&mut bob_events).await;
    server.stop().await;
}

/// Waits for a presence event about `user` with `status`.
async fn presence(events: &mut Events, user: u64, status: chat_client::pb::PresenceStatus) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .expect("timed out waiting for presence")
            .expect("event stream open");
        if let Event::Presence(p) = event {
            if p.user_id == user && p.status == status as i32 {
                return;
            }
        }
    }
}

#[tokio::test]
async fn presence_watches_are_renewed_after_a_restart_and_the_typed_api_covers_the_rest() {
    use chat_client::pb::{PresenceStatus, Role};
    let server = TestServer::start();
    let (alice, _alice_events) = connect(&server).await;
    let (bob, mut bob_events) = connect(&server).await;
    let alice_id = alice
        .register("alice", "password123", "")
        .await
        .expect("register")
        .user_id;
    bob.register("bob", "password123", "")
        .await
        .expect("register");
    let found = bob.find_user("alice").await.expect("find");
    assert_eq!(found.user_id, alice_id);

    bob.watch_presence(&[UserId(alice_id)])
        .await
        .expect("watch");
    presence(&mut bob_events, alice_id, PresenceStatus::Online).await;
    alice
        .set_presence(PresenceStatus::Busy)
        .await
        .expect("status");
    presence(&mut bob_events, alice_id, PresenceStatus::Busy).await;

    // Both clients reconnect on their own; Bob's watch is renewed and he
    // hears Alice again without asking.
    let server = server.restart().await;
    presence(&mut bob_events, alice_id, PresenceStatus::Online).await;

    // Channels, roles, titles and media through the typed API.
    let channel = ConversationId(
        alice
            .create_channel("news")
            .await
            .expect("channel")
            .conversation_id,
    );
    bob.subscribe_channel(channel).await.expect("subscribe");
    let renamed = alice.set_title(channel, "daily news").await.expect("title");
    assert_eq!(renamed.title, "daily news");
    alice
        .set_role(channel, bob.user_id().expect("bob"), Role::Admin)
        .await
        .expect("role");
    // Channels list no members; Bob sees his own role.
    let seen = bob.get_conversation(channel).await.expect("conversation");
    assert_eq!(seen.my_role, Role::Admin as i32);
    let ticket = bob.request_upload("image/png", 1024).await.expect("ticket");
    assert_eq!(ticket.media_id.len(), 32);
    bob.register_push_token("fcm", "bob-device")
        .await
        .expect("push token");
    let ack = bob.send_text(channel, "admin post").await.expect("post");
    let counts = alice.receipts(channel, ack.seq).await.expect("receipts");
    assert!(counts.member_count >= 2);
    // An admin leaves rather than unsubscribes.
    let err = bob.unsubscribe_channel(channel).await.expect_err("admin");
    assert!(format!("{err:?}").contains("Conflict"), "{err:?}");
    bob.leave(channel).await.expect("leave");
    server.stop().await;
}

#[tokio::test]
async fn a_password_changed_through_the_client_is_the_one_that_logs_in() {
    let server = TestServer::start();
    let (phone, _phone_events) = connect(&server).await;
    phone
        .register("dana", "first password", "Dana")
        .await
        .expect("register");
    let err = phone
        .change_password("not the password", "second password")
        .await
        .expect_err("wrong current password");
    assert_eq!(
        err.code(),
        Some(chat_client::pb::ErrorCode::InvalidCredentials)
    );
    phone
        .change_password("first password", "second password")
        .await
        .expect("changed");
    let (laptop, _laptop_events) = connect(&server).await;
    assert!(laptop.login("dana", "first password").await.is_err());
    laptop
        .login("dana", "second password")
        .await
        .expect("the new password logs in");
    laptop.close().await;
    phone.close().await;
    server.stop().await;
}

#[tokio::test]
async fn an_edit_through_the_client_reaches_members_as_an_edit_not_a_message() {
    let server = TestServer::start();
    let (alice, _alice_events) = connect(&server).await;
    let (bob, mut bob_events) = connect(&server).await;
    alice
        .register("alice", "password123", "")
        .await
        .expect("register");
    let bob_id = bob
        .register("bob", "password123", "")
        .await
        .expect("register")
        .user_id;
    let chat = alice.create_direct(UserId(bob_id)).await.expect("direct");
    let conv = ConversationId(chat.conversation_id);
    let ack = alice.send_text(conv, "helo").await.expect("ack");
    messages(&mut bob_events, 1).await;
    alice
        .edit_message(conv, ack.seq, "hello")
        .await
        .expect("edited");
    let edited = loop {
        let event = tokio::time::timeout(Duration::from_secs(30), bob_events.next())
            .await
            .expect("timed out waiting for the edit")
            .expect("event stream open");
        match event {
            Event::MessageEdited(m) => break m,
            Event::Message(m) => panic!("an edit is not a new message: {m:?}"),
            _ => {}
        }
    };
    assert_eq!((edited.seq, edited.text.as_str()), (ack.seq, "hello"));
    assert!(edited.edited_at_ms > 0);
    // Bob reacts; Alice hears of it as a reaction, and history counts it.
    bob.react(conv, ack.seq, "👍").await.expect("reacted");
    let reaction = loop {
        let event = tokio::time::timeout(Duration::from_secs(30), bob_events.next())
            .await
            .expect("timed out waiting for the reaction")
            .expect("event stream open");
        if let Event::Reaction(r) = event {
            break r;
        }
    };
    assert_eq!((reaction.user_id, reaction.emoji.as_str()), (bob_id, "👍"));
    let page = bob.history(conv, 0, None, 0).await.expect("history");
    let counted = &page.messages[0].reactions;
    assert_eq!(
        (counted.len(), counted[0].count, counted[0].mine),
        (1, 1, true)
    );
    bob.remove_reaction(conv, ack.seq, "👍")
        .await
        .expect("removed");
    // Bob may not edit Alice's message.
    let refused = bob.edit_message(conv, ack.seq, "hijacked").await;
    assert!(
        matches!(
            refused,
            Err(chat_client::Error::Server { code, .. }) if code == chat_client::ErrorCode::Forbidden
        ),
        "{refused:?}"
    );
    // Alice blocks Bob: listed, and Bob's messages are refused.
    alice.block_user(UserId(bob_id)).await.expect("blocked");
    assert_eq!(
        alice.blocked_users().await.expect("listed"),
        [UserId(bob_id)]
    );
    let refused = bob.send_text(conv, "hello?").await;
    assert!(
        matches!(
            refused,
            Err(chat_client::Error::Server { code, .. }) if code == chat_client::ErrorCode::Blocked
        ),
        "{refused:?}"
    );
    alice.unblock_user(UserId(bob_id)).await.expect("unblocked");
    assert!(alice.blocked_users().await.expect("listed").is_empty());
    // Alice deletes her account; Bob sees her as deleted.
    let wrong = alice.delete_account("not the password").await;
    assert!(
        matches!(
            wrong,
            Err(chat_client::Error::Server { code, .. }) if code == chat_client::ErrorCode::InvalidCredentials
        ),
        "{wrong:?}"
    );
    alice.delete_account("password123").await.expect("deleted");
    let gone = bob.profile(UserId(chat.created_by)).await.expect("profile");
    assert!(gone.deleted && gone.username.is_empty());
    server.stop().await;
}
