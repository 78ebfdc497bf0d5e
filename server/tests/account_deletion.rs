//! DeleteAccount: after the right password, every session of the user
//! ends and no token works any more; the profile is erased (shown as
//! deleted), the username stays taken, uploaded media is gone, and the
//! user's messages stay in their conversations under their user id. A
//! wrong password changes nothing. Kept across a restart.

mod common;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use common::{Raw, TestServer, error_code};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 exchange; returns the status.
async fn http(url: &str, method: &str, body: &[u8]) -> u16 {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').expect("path");
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    let head = format!(
        "{method} /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let head = String::from_utf8_lossy(&out);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line")
}

fn delete_account(password: &str) -> C {
    C::DeleteAccount(pb::DeleteAccount {
        password: password.into(),
    })
}

async fn login(addr: std::net::SocketAddr, username: &str) -> S {
    Raw::connect(addr)
        .await
        .request(C::Login(pb::Login {
            username: username.into(),
            password: "password123".into(),
            device: None,
        }))
        .await
}

async fn profile(c: &mut Raw, user_id: u64, username: &str) -> S {
    c.request(C::GetProfile(pb::GetProfile {
        user_id,
        username: username.into(),
    }))
    .await
}

#[tokio::test]
async fn a_deleted_account_is_gone_and_its_messages_stay() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut alice_laptop = Raw::login(server.addr, "alice").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let a = alice.user_id;
    let group = bob.create_group("trip", &[a]).await;
    let sent = alice.send_text(group, "a1", "see you there").await;
    let t = match alice
        .request(C::RequestUpload(pb::RequestUpload {
            mime_type: "image/png".into(),
            size_bytes: 5,
        }))
        .await
    {
        S::UploadTicket(t) => t,
        other => panic!("ticket: {other:?}"),
    };
    assert_eq!(http(&t.upload_url, "PUT", b"image").await, 201);
    assert_eq!(http(&t.download_url, "GET", b"").await, 200);

    // The wrong password changes nothing.
    assert_eq!(
        error_code(&alice.request(delete_account("not my password")).await),
        ErrorCode::InvalidCredentials
    );
    assert!(matches!(login(server.addr, "alice").await, S::AuthOk(_)));

    // The right one: Done, then every session of Alice ends.
    assert!(matches!(
        alice.request(delete_account("password123")).await,
        S::Done(_)
    ));
    for c in [&mut alice, &mut alice_laptop] {
        loop {
            match c.read_frame().await {
                None => break,
                Some(f) => {
                    if let Some(S::Error(e)) = f.body {
                        assert_eq!(e.code, ErrorCode::TokenInvalid as i32);
                    }
                }
            }
        }
    }
    let gone = |server: &TestServer, token: String| {
        let addr = server.addr;
        async move {
            Raw::connect(addr)
                .await
                .request(C::Resume(pb::Resume {
                    session_token: token,
                    device: None,
                    cursors: vec![],
                }))
                .await
        }
    };
    assert_eq!(
        error_code(&gone(&server, alice.token.clone()).await),
        ErrorCode::TokenInvalid
    );
    assert_eq!(
        error_code(&login(server.addr, "alice").await),
        ErrorCode::InvalidCredentials
    );
    assert_eq!(
        http(&t.download_url, "GET", b"").await,
        404,
        "media removed"
    );

    // The profile is erased, the username stays taken, the message stays.
    let check = async |bob: &mut Raw, addr| {
        match profile(bob, a, "").await {
            S::Profile(p) => {
                assert!(p.deleted);
                assert!(p.username.is_empty() && p.display_name.is_empty());
            }
            other => panic!("profile: {other:?}"),
        }
        assert_eq!(
            error_code(&profile(bob, 0, "alice").await),
            ErrorCode::NotFound
        );
        let mut again = Raw::connect(addr).await;
        let r = again
            .request(C::Register(pb::Register {
                username: "alice".into(),
                password: "password123".into(),
                display_name: String::new(),
                device: None,
            }))
            .await;
        assert_eq!(error_code(&r), ErrorCode::UsernameTaken);
        match bob.history(group, 0, 0, 10).await {
            S::MessagePage(p) => {
                let m = p.messages.iter().find(|m| m.seq == sent.seq).expect("kept");
                assert_eq!((m.sender_id, m.text.as_str()), (a, "see you there"));
            }
            other => panic!("history: {other:?}"),
        }
        // Nobody adds the deleted user anywhere.
        let add = C::AddMembers(pb::AddMembers {
            conversation_id: group,
            user_ids: vec![a],
        });
        assert_eq!(error_code(&bob.request(add).await), ErrorCode::NotFound);
        let direct = C::CreateConversation(pb::CreateConversation {
            kind: pb::ConversationKind::Direct as i32,
            member_ids: vec![a],
            title: String::new(),
        });
        assert_eq!(error_code(&bob.request(direct).await), ErrorCode::NotFound);
    };
    check(&mut bob, server.addr).await;
    let server = server.restart().await;
    let mut bob = Raw::login(server.addr, "bob").await;
    check(&mut bob, server.addr).await;
    server.stop().await;
}
