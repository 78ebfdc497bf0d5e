//! Requests and replies: handshake, login state, out-of-order replies, error
//! replies, pings, unsupported transports, closing.

mod support;

use chat_client::pb::{self, client_frame::Body as C, server_frame::Body as S};
use chat_client::{Client, ConversationId, Error, ErrorCode, UserId};
use support::*;

#[tokio::test]
async fn login_sets_the_session_and_sends_the_device() {
    let server = MockServer::start().await;
    let (client, _events, mut peer) = connect(&server, options()).await;
    assert!(client.is_connected());
    assert_eq!(client.welcome().map(|w| w.server_name), Some("mock".into()));
    assert_eq!(client.user_id(), None);
    let login = {
        let client = client.clone();
        tokio::spawn(async move { client.login("alice", "pw").await })
    };
    let (rid, body) = peer.recv_request().await;
    let C::Login(login_req) = body else {
        panic!("{body:?}")
    };
    assert_eq!(login_req.username, "alice");
    assert_eq!(login_req.device.map(|d| d.device_id), Some("dev-1".into()));
    peer.send(rid, S::AuthOk(auth_ok())).await;
    login.await.unwrap().unwrap();
    assert_eq!(client.user_id(), Some(UserId(1)));
    assert_eq!(client.session_token().as_deref(), Some("tok"));
}

#[tokio::test]
async fn replies_are_matched_by_request_id_in_any_order() {
    let server = MockServer::start().await;
    let (client, _events, mut peer) = logged_in(&server).await;
    let a = {
        let client = client.clone();
        tokio::spawn(async move { client.get_conversation(ConversationId(10)).await })
    };
    let (rid_a, _) = peer.recv_request().await;
    let b = {
        let client = client.clone();
        tokio::spawn(async move { client.get_conversation(ConversationId(20)).await })
    };
    let (rid_b, _) = peer.recv_request().await;
    assert!(rid_b > rid_a, "request ids increase");
    let conv = |id| {
        S::Conversation(pb::Conversation {
            conversation_id: id,
            ..Default::default()
        })
    };
    peer.send(rid_b, conv(20)).await;
    peer.send(rid_a, conv(10)).await;
    assert_eq!(b.await.unwrap().unwrap().conversation_id, 20);
    assert_eq!(a.await.unwrap().unwrap().conversation_id, 10);
}

#[tokio::test]
async fn error_replies_become_server_errors() {
    let server = MockServer::start().await;
    let (client, _events, mut peer) = logged_in(&server).await;
    let req = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .request(C::GetConversation(pb::GetConversation {
                    conversation_id: 5,
                }))
                .await
        })
    };
    let (rid, _) = peer.recv_request().await;
    peer.send(rid, error(ErrorCode::NotAMember, 0)).await;
    match req.await.unwrap() {
        Err(Error::Server { code, message, .. }) => {
            assert_eq!(code, ErrorCode::NotAMember);
            assert_eq!(message, "NotAMember");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn server_pings_are_answered_with_request_id_zero() {
    let server = MockServer::start().await;
    let (_client, _events, mut peer) = connect(&server, options()).await;
    peer.push(S::Ping(pb::Ping { nonce: 77 })).await;
    let frame = peer.recv().await;
    assert_eq!(frame.request_id, 0);
    assert_eq!(frame.body, Some(C::Pong(pb::Pong { nonce: 77 })));
}

#[tokio::test]
async fn the_client_pings_and_drops_a_silent_connection() {
    let server = MockServer::start().await;
    let url = server.url.clone();
    let connecting = tokio::spawn(async move { Client::connect(&url, options()).await });
    let mut peer = server.accept_greeted(100).await;
    let (_client, mut events) = connecting.await.unwrap().unwrap();
    let frame = peer.recv().await;
    assert!(matches!(frame.body, Some(C::Ping(_))), "{frame:?}");
    assert_ne!(frame.request_id, 0, "client pings are requests");
    // No Pong: after two intervals the client gives up on the connection.
    match next_event(&mut events).await {
        chat_client::Event::Disconnected { reason } => assert!(reason.contains("Pong"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // ...and reconnects.
    let _peer = server.accept_greeted(60_000).await;
    assert_eq!(
        next_event(&mut events).await,
        chat_client::Event::Reconnected
    );
}

#[tokio::test]
async fn bad_urls_are_refused() {
    for url in ["tcp://h:1/path", "quic://h", "ws://user@h:1/ws"] {
        match Client::connect(url, options()).await {
            Err(Error::InvalidUrl(_)) => {}
            other => panic!("{url}: {:?}", other.map(|_| ())),
        }
    }
    assert!(matches!(
        Client::connect("http://h:1", options()).await,
        Err(Error::InvalidUrl(_))
    ));
}

#[tokio::test]
async fn typing_is_fire_and_forget() {
    let server = MockServer::start().await;
    let (client, _events, mut peer) = logged_in(&server).await;
    client.typing(ConversationId(3), true).await.unwrap();
    let frame = peer.recv().await;
    assert_eq!(frame.request_id, 0);
    assert!(matches!(frame.body, Some(C::Typing(t)) if t.active && t.conversation_id == 3));
}

#[tokio::test]
async fn close_ends_requests_events_and_the_connection() {
    let server = MockServer::start().await;
    let (client, mut events, mut peer) = logged_in(&server).await;
    client.close().await;
    peer.expect_eof().await;
    assert_eq!(events.next().await, None);
    assert!(matches!(
        client.get_conversation(ConversationId(1)).await,
        Err(Error::Closed)
    ));
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let server = MockServer::start().await;
    let (client, mut events, mut peer) = logged_in(&server).await;
    drop(client);
    peer.expect_eof().await;
    assert_eq!(events.next().await, None);
}
