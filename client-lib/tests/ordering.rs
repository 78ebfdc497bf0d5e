//! The event stream: each message once, in seq order, gaps filled from
//! history.

mod support;

use chat_client::pb::{self, client_frame::Body as C, server_frame::Body as S};
use chat_client::{ConversationId, Event};
use support::*;

#[tokio::test]
async fn duplicates_are_dropped_and_gaps_filled_in_order() {
    let server = MockServer::start().await;
    let (client, mut events, mut peer) = logged_in(&server).await;
    client.set_cursor(ConversationId(7), 0).await;
    for seq in [1, 2, 2, 1, 5, 6] {
        peer.push(push(7, seq)).await;
    }
    assert_eq!(next_messages(&mut events, 2).await, vec![(7, 1), (7, 2)]);
    // 5 revealed a gap after 2.
    let (rid, body) = peer.recv_request().await;
    let C::GetHistory(h) = body else {
        panic!("{body:?}")
    };
    assert_eq!(
        (h.conversation_id, h.after_seq, h.before_seq, h.limit),
        (7, Some(2), 0, 200)
    );
    quiet(&mut events).await;
    peer.send(rid, page(7, 3..=5, false)).await;
    assert_eq!(
        next_messages(&mut events, 4).await,
        vec![(7, 3), (7, 4), (7, 5), (7, 6)]
    );
    peer.push(push(7, 4)).await;
    peer.push(push(7, 7)).await;
    assert_eq!(next_messages(&mut events, 1).await, vec![(7, 7)]);
    assert_eq!(client.cursor(ConversationId(7)).await, 7);
    assert_eq!(
        client.cursors().await,
        vec![pb::Cursor {
            conversation_id: 7,
            seq: 7
        }]
    );
}

#[tokio::test]
async fn a_long_gap_is_fetched_page_by_page() {
    let server = MockServer::start().await;
    let (client, mut events, mut peer) = logged_in(&server).await;
    client.set_cursor(ConversationId(7), 10).await;
    peer.push(push(7, 500)).await;
    let (rid, body) = peer.recv_request().await;
    assert!(
        matches!(body, C::GetHistory(ref h) if h.after_seq == Some(10)),
        "{body:?}"
    );
    peer.send(rid, page(7, 11..=210, true)).await;
    let (rid, body) = peer.recv_request().await;
    assert!(
        matches!(body, C::GetHistory(ref h) if h.after_seq == Some(210)),
        "{body:?}"
    );
    peer.send(rid, page(7, 211..=410, true)).await;
    let (rid, body) = peer.recv_request().await;
    assert!(
        matches!(body, C::GetHistory(ref h) if h.after_seq == Some(410)),
        "{body:?}"
    );
    peer.send(rid, page(7, 411..=500, false)).await;
    let got = next_messages(&mut events, 490).await;
    assert_eq!(got, (11..=500).map(|s| (7, s)).collect::<Vec<_>>());
    quiet(&mut events).await;
}

#[tokio::test]
async fn an_unknown_conversation_starts_at_its_first_push() {
    let server = MockServer::start().await;
    let (client, mut events, mut peer) = logged_in(&server).await;
    peer.push(push(9, 40)).await;
    peer.push(push(9, 41)).await;
    assert_eq!(next_messages(&mut events, 2).await, vec![(9, 40), (9, 41)]);
    assert_eq!(client.cursor(ConversationId(9)).await, 41);
}

#[tokio::test]
async fn other_pushes_become_events() {
    let server = MockServer::start().await;
    let (_client, mut events, mut peer) = logged_in(&server).await;
    let receipt = pb::ReceiptEvent {
        conversation_id: 1,
        user_id: 2,
        kind: pb::ReceiptKind::Read as i32,
        seq: 3,
        at_ms: 4,
    };
    peer.push(S::ReceiptEvent(receipt)).await;
    let typing = pb::TypingEvent {
        conversation_id: 1,
        user_id: 2,
        active: true,
        expires_in_ms: 5000,
    };
    peer.push(S::TypingEvent(typing)).await;
    assert_eq!(next_event(&mut events).await, Event::Receipt(receipt));
    assert_eq!(next_event(&mut events).await, Event::Typing(typing));
}

#[tokio::test]
async fn sync_delivers_gaps_and_fetches_truncated_ones() {
    let server = MockServer::start().await;
    let (client, mut events, mut peer) = logged_in(&server).await;
    client.set_cursor(ConversationId(3), 0).await;
    client.set_cursor(ConversationId(4), 8).await;
    client.set_cursor(ConversationId(6), 2).await;
    let sync = {
        let client = client.clone();
        tokio::spawn(async move { client.sync().await })
    };
    let (rid, body) = peer.recv_request().await;
    let C::Sync(s) = body else { panic!("{body:?}") };
    assert_eq!(s.limit_per_conversation, 500);
    assert_eq!(
        s.cursors
            .iter()
            .map(|c| (c.conversation_id, c.seq))
            .collect::<Vec<_>>(),
        vec![(3, 0), (4, 8), (6, 2)]
    );
    let gap =
        |conversation, from_seq, to_seq, seqs: std::ops::RangeInclusive<u64>, truncated| pb::Gap {
            conversation_id: conversation,
            from_seq,
            to_seq,
            messages: seqs.map(|s| message(conversation, s)).collect(),
            truncated,
        };
    peer.send(
        rid,
        S::SyncResult(pb::SyncResult {
            gaps: vec![
                gap(3, 1, 5, 1..=2, true),
                gap(4, 9, 9, 9..=9, false),
                gap(5, 1, 1, 1..=1, false),
            ],
            removed_conversation_ids: vec![6],
        }),
    )
    .await;
    let (rid, body) = peer.recv_request().await;
    assert!(
        matches!(body, C::GetHistory(ref h) if h.conversation_id == 3 && h.after_seq == Some(2)),
        "{body:?}"
    );
    peer.send(rid, page(3, 3..=5, false)).await;
    sync.await.unwrap().unwrap();
    assert_eq!(
        next_event(&mut events).await,
        Event::ConversationRemoved(ConversationId(6))
    );
    assert_eq!(
        next_messages(&mut events, 7).await,
        vec![(3, 1), (3, 2), (4, 9), (5, 1), (3, 3), (3, 4), (3, 5)]
    );
    assert_eq!(
        client
            .cursors()
            .await
            .iter()
            .map(|c| (c.conversation_id, c.seq))
            .collect::<Vec<_>>(),
        vec![(3, 5), (4, 9), (5, 1)]
    );
}
