//! Presence over real sockets: multi-device, heartbeat timeout, manual
//! status, interest-based delivery.

mod common;

use std::time::Duration;

use chat_protocol::pb::{self, PresenceStatus, client_frame::Body as C, server_frame::Body as S};
use common::{Raw, TestServer};

/// Pings (keeping `c` alive) until a presence event for `user` with
/// `status` arrives; returns it.
async fn await_presence(c: &mut Raw, user: u64, status: PresenceStatus) -> pb::PresenceEvent {
    let what = format!("{status:?} for user {user}");
    common::wait_for(&what, async || {
        let pong = c.request(C::Ping(pb::Ping { nonce: 0 })).await;
        assert!(matches!(pong, S::Pong(_)));
        let mut found = None;
        while let Some(f) = c.pushes.pop_front() {
            if let Some(S::PresenceEvent(e)) = f.body {
                if found.is_none() && e.user_id == user && e.status == status as i32 {
                    found = Some(e);
                }
            }
        }
        found
    })
    .await
}

/// Every presence event `c` holds right now (after a round trip).
async fn presence_events(c: &mut Raw) -> Vec<pb::PresenceEvent> {
    let pong = c.request(C::Ping(pb::Ping { nonce: 0 })).await;
    assert!(matches!(pong, S::Pong(_)));
    c.pushes
        .drain(..)
        .filter_map(|f| match f.body {
            Some(S::PresenceEvent(e)) => Some(e),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn presence_follows_devices_status_and_heartbeats() {
    // Sessions silent for 3 intervals (1.5 s) are closed.
    let server = TestServer::start_configured(|c| c.heartbeat_interval_ms = 500);
    let alice = Raw::register(server.addr, "alice").await;
    let alice_id = alice.user_id;
    drop(alice);
    let mut bob = Raw::register(server.addr, "bob").await;
    let mut carol = Raw::register(server.addr, "carol").await;

    let r = bob
        .request(C::SubscribePresence(pb::SubscribePresence {
            user_ids: vec![alice_id],
        }))
        .await;
    assert!(matches!(r, S::Done(_)));
    // Bob may subscribe before the server has seen Alice's first session
    // end (then he hears Offline without a last seen, Online, Offline);
    // either way he ends up with Offline and the time that session ended.
    let offline = loop {
        let e = await_presence(&mut bob, alice_id, PresenceStatus::Offline).await;
        if e.last_seen_ms > 0 {
            break e;
        }
    };

    let phone = Raw::login(server.addr, "alice").await;
    await_presence(&mut bob, alice_id, PresenceStatus::Online).await;
    let mut laptop = Raw::login(server.addr, "alice").await;
    drop(phone);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = presence_events(&mut bob).await;
    assert!(
        events
            .iter()
            .all(|e| e.status != PresenceStatus::Offline as i32),
        "online while the laptop is connected: {events:?}"
    );

    let r = laptop
        .request(C::SetPresence(pb::SetPresence {
            status: PresenceStatus::Busy as i32,
        }))
        .await;
    assert!(matches!(r, S::Done(_)));
    await_presence(&mut bob, alice_id, PresenceStatus::Busy).await;

    // The laptop goes silent: closed after the heartbeat TTL, Alice is offline.
    // The clock moves in steps shorter than the TTL; Bob pings between them.
    let clock = &server.config.clock;
    let silent_since = clock.now();
    let seen = loop {
        server.advance(Duration::from_millis(250));
        if let Some(e) = presence_events(&mut bob)
            .await
            .into_iter()
            .find(|e| e.user_id == alice_id && e.status == PresenceStatus::Offline as i32)
        {
            break e;
        }
        assert!(
            clock.now().duration_since(silent_since) < Duration::from_secs(10),
            "no Offline for user {alice_id}"
        );
        // Real time for the close and the presence publication tick.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(clock.now().duration_since(silent_since) >= Duration::from_millis(1000));
    assert!(seen.last_seen_ms > offline.last_seen_ms);
    drop(laptop);

    // Carol never subscribed and heard nothing; Bob unsubscribes and hears
    // nothing more.
    // (Carol was silent too, so the server closed her session by now.)
    let mut carol_frames = Vec::new();
    while let Some(f) = carol.read_frame().await {
        carol_frames.push(f);
    }
    assert!(
        carol_frames
            .iter()
            .all(|f| !matches!(f.body, Some(S::PresenceEvent(_))))
    );
    assert!(carol_frames.iter().any(|f| matches!(&f.body, Some(S::Error(e)) if e.code == chat_protocol::ErrorCode::IdleTimeout as i32)));
    let r = bob
        .request(C::UnsubscribePresence(pb::UnsubscribePresence {
            user_ids: vec![alice_id],
        }))
        .await;
    assert!(matches!(r, S::Done(_)));
    let _again = Raw::login(server.addr, "alice").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(presence_events(&mut bob).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn hidden_last_seen_and_appear_offline() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let r = alice
        .request(C::UpdateProfile(pb::UpdateProfile {
            display_name: String::new(),
            hide_last_seen: true,
        }))
        .await;
    assert!(matches!(r, S::Profile(_)));
    let r = bob
        .request(C::SubscribePresence(pb::SubscribePresence {
            user_ids: vec![alice.user_id],
        }))
        .await;
    assert!(matches!(r, S::Done(_)));
    await_presence(&mut bob, alice.user_id, PresenceStatus::Online).await;
    let r = alice
        .request(C::SetPresence(pb::SetPresence {
            status: PresenceStatus::Offline as i32,
        }))
        .await;
    assert!(matches!(r, S::Done(_)));
    let invisible = await_presence(&mut bob, alice.user_id, PresenceStatus::Offline).await;
    assert_eq!(invisible.last_seen_ms, 0, "hidden last seen");
    server.stop().await;
}

#[tokio::test]
async fn subscribing_gives_exactly_one_state_per_user() {
    let server = TestServer::start();
    let alice = Raw::register(server.addr, "alice").await;
    let alice_id = alice.user_id;
    drop(alice);
    // Wait until Alice's session has ended and her last seen is kept.
    let mut dave = Raw::register(server.addr, "dave").await;
    let watch = |users: Vec<u64>| C::SubscribePresence(pb::SubscribePresence { user_ids: users });
    assert!(matches!(
        dave.request(watch(vec![alice_id])).await,
        S::Done(_)
    ));
    loop {
        let e = await_presence(&mut dave, alice_id, PresenceStatus::Offline).await;
        if e.last_seen_ms > 0 {
            break;
        }
    }
    drop(dave);

    // Carol connected a moment before; user 999999 does not exist.
    let carol = Raw::register(server.addr, "carol").await;
    let unknown = 999_999;
    let mut bob = Raw::register(server.addr, "bob").await;
    let r = bob
        .request(watch(vec![alice_id, carol.user_id, unknown]))
        .await;
    assert!(matches!(r, S::Done(_)));
    // Five publication intervals: anything owed has arrived by then.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = presence_events(&mut bob).await;
    let of = |user: u64| -> Vec<(i32, bool)> {
        events
            .iter()
            .filter(|e| e.user_id == user)
            .map(|e| (e.status, e.last_seen_ms > 0))
            .collect()
    };
    let offline = PresenceStatus::Offline as i32;
    assert_eq!(of(alice_id), vec![(offline, true)], "{events:?}");
    assert_eq!(
        of(carol.user_id),
        vec![(PresenceStatus::Online as i32, false)],
        "{events:?}"
    );
    assert_eq!(of(unknown), vec![(offline, false)], "{events:?}");
    server.stop().await;
}
