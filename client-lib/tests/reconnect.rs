//! Reconnect, resume and re-send after a dropped connection; retries on
//! retryable refusals; giving up when the token is refused.

mod support;

use std::time::Duration;

use chat_client::pb::{self, client_frame::Body as C, server_frame::Body as S};
use chat_client::{ClientOptions, ConversationId, Error, ErrorCode, Event};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_in_flight_survives_a_dropped_connection() {
    let server = MockServer::start().await;
    let (client, mut events, mut peer) = logged_in(&server).await;
    client.set_cursor(ConversationId(7), 1).await;
    let send = {
        let client = client.clone();
        tokio::spawn(async move { client.send_text(ConversationId(7), "hi").await })
    };
    let (_, body) = peer.recv_request().await;
    let C::SendMessage(first) = body else {
        panic!("{body:?}")
    };
    assert_eq!(first.client_msg_id.len(), 32);
    drop(peer);

    assert!(matches!(
        next_event(&mut events).await,
        Event::Disconnected { .. }
    ));
    let mut peer = server.accept_greeted(60_000).await;
    let (rid, body) = peer.recv_request().await;
    let C::Resume(resume) = body else {
        panic!("{body:?}")
    };
    assert_eq!(resume.session_token, "tok");
    assert_eq!(resume.device.map(|d| d.device_id), Some("dev-1".into()));
    assert_eq!(
        resume.cursors,
        vec![pb::Cursor {
            conversation_id: 7,
            seq: 1
        }]
    );
    // A push overtaking the ResumeOk (the server registers the session for
    // pushes first) must not be emitted before the gap.
    peer.push(push(7, 4)).await;
    peer.send(
        rid,
        S::ResumeOk(pb::ResumeOk {
            auth: Some(auth_ok()),
            sync: Some(pb::SyncResult {
                gaps: vec![pb::Gap {
                    conversation_id: 7,
                    from_seq: 2,
                    to_seq: 3,
                    messages: vec![message(7, 2), message(7, 3)],
                    truncated: false,
                }],
                removed_conversation_ids: vec![],
            }),
        }),
    )
    .await;
    // The interrupted send goes again, with the same id, now marked as a
    // retry.
    let (rid, body) = peer.recv_request().await;
    let C::SendMessage(again) = body else {
        panic!("{body:?}")
    };
    assert!(first.first_attempt && !again.first_attempt);
    assert_eq!(
        again,
        pb::SendMessage {
            first_attempt: false,
            ..first.clone()
        }
    );
    peer.send(
        rid,
        S::SendAck(pb::SendAck {
            conversation_id: 7,
            seq: 5,
            client_msg_id: again.client_msg_id.clone(),
            duplicate: true,
            ..Default::default()
        }),
    )
    .await;
    let ack = send.await.unwrap().unwrap();
    assert_eq!((ack.seq, ack.duplicate), (5, true));
    // The catch-up comes before Reconnected; the live push before or after.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        seen.push(match next_event(&mut events).await {
            Event::Message(m) => format!("m{}", m.seq),
            other => format!("{other:?}"),
        });
    }
    seen.retain(|e| e != "m4");
    assert_eq!(seen, ["m2", "m3", "Reconnected"]);
    quiet(&mut events).await;
}

#[tokio::test]
async fn requests_wait_for_the_reconnect() {
    let server = MockServer::start().await;
    let (client, mut events, peer) = logged_in(&server).await;
    drop(peer);
    assert!(matches!(
        next_event(&mut events).await,
        Event::Disconnected { .. }
    ));
    let history = {
        let client = client.clone();
        tokio::spawn(async move { client.history_latest(ConversationId(7), 10).await })
    };
    let mut peer = server.accept_greeted(60_000).await;
    let (rid, body) = peer.recv_request().await;
    assert!(matches!(body, C::Resume(_)), "{body:?}");
    peer.send(
        rid,
        S::ResumeOk(pb::ResumeOk {
            auth: Some(auth_ok()),
            sync: Some(pb::SyncResult::default()),
        }),
    )
    .await;
    let (rid, body) = peer.recv_request().await;
    assert!(
        matches!(body, C::GetHistory(ref h) if h.after_seq.is_none()),
        "{body:?}"
    );
    peer.send(rid, page(7, [3, 2, 1], false)).await;
    assert_eq!(history.await.unwrap().unwrap().messages.len(), 3);
    assert_eq!(next_event(&mut events).await, Event::Reconnected);
}

#[tokio::test]
async fn go_away_is_reported_and_honoured() {
    let server = MockServer::start().await;
    let (_client, mut events, mut peer) = connect(&server, options()).await;
    let go_away = pb::GoAway {
        code: ErrorCode::ShuttingDown as i32,
        message: "restart".into(),
        reconnect_after_ms: 200,
    };
    peer.push(S::GoAway(go_away.clone())).await;
    assert_eq!(next_event(&mut events).await, Event::GoAway(go_away));
    let dropped = std::time::Instant::now();
    drop(peer);
    match next_event(&mut events).await {
        Event::Disconnected { reason } => assert!(reason.contains("restart"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let _peer = server.accept_greeted(60_000).await;
    assert!(dropped.elapsed() >= Duration::from_millis(190));
    assert_eq!(next_event(&mut events).await, Event::Reconnected);
}

#[tokio::test]
async fn a_refused_token_ends_the_client() {
    let server = MockServer::start().await;
    let (client, mut events, peer) = logged_in(&server).await;
    drop(peer);
    assert!(matches!(
        next_event(&mut events).await,
        Event::Disconnected { .. }
    ));
    let mut peer = server.accept_greeted(60_000).await;
    let (rid, _) = peer.recv_request().await;
    peer.send(rid, error(ErrorCode::TokenInvalid, 0)).await;
    match next_event(&mut events).await {
        Event::Disconnected { reason } => assert!(reason.contains("TokenInvalid"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(events.next().await, None);
    assert_eq!(client.user_id(), None);
    assert!(matches!(
        client.get_conversation(ConversationId(1)).await,
        Err(Error::Disconnected(_))
    ));
}

#[tokio::test]
async fn without_reconnect_the_first_drop_is_final() {
    let server = MockServer::start().await;
    let options = ClientOptions {
        reconnect: false,
        ..options()
    };
    let (client, mut events, peer) = connect(&server, options).await;
    drop(peer);
    assert!(matches!(
        next_event(&mut events).await,
        Event::Disconnected { .. }
    ));
    assert_eq!(events.next().await, None);
    assert!(matches!(
        client.list_conversations(10).await,
        Err(Error::Disconnected(_))
    ));
}

#[tokio::test]
async fn retryable_refusals_are_retried_with_the_same_id() {
    let server = MockServer::start().await;
    let (client, _events, mut peer) = logged_in(&server).await;
    let send = {
        let client = client.clone();
        tokio::spawn(async move { client.send_text(ConversationId(7), "hi").await })
    };
    let (rid, body) = peer.recv_request().await;
    let C::SendMessage(first) = body else {
        panic!("{body:?}")
    };
    let refused = std::time::Instant::now();
    peer.send(rid, error(ErrorCode::RateLimited, 150)).await;
    let (rid, body) = peer.recv_request().await;
    assert!(
        refused.elapsed() >= Duration::from_millis(140),
        "retry_after_ms honoured"
    );
    assert!(first.first_attempt);
    assert_eq!(
        body,
        C::SendMessage(pb::SendMessage {
            first_attempt: false,
            ..first.clone()
        })
    );
    peer.send(rid, error(ErrorCode::MessageTooLarge, 0)).await;
    match send.await.unwrap() {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::MessageTooLarge)),
        Ok(ack) => panic!("{ack:?}"),
    }
}

#[tokio::test]
async fn login_is_not_resent_after_a_drop() {
    let server = MockServer::start().await;
    let (client, mut events, mut peer) = connect(&server, options()).await;
    let login = {
        let client = client.clone();
        tokio::spawn(async move { client.login("alice", "pw").await })
    };
    let _ = peer.recv_request().await;
    drop(peer);
    assert!(matches!(login.await.unwrap(), Err(Error::Disconnected(_))));
    assert!(matches!(
        next_event(&mut events).await,
        Event::Disconnected { .. }
    ));
    // Not logged in: no Resume, and no Login either.
    let mut peer = server.accept_greeted(60_000).await;
    assert_eq!(next_event(&mut events).await, Event::Reconnected);
    let list = {
        let client = client.clone();
        tokio::spawn(async move { client.list_conversations(5).await })
    };
    let (rid, body) = peer.recv_request().await;
    assert!(matches!(body, C::ListConversations(_)), "{body:?}");
    peer.send(rid, S::ConversationList(pb::ConversationList::default()))
        .await;
    list.await.unwrap().unwrap();
}
