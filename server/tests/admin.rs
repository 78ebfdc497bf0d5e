//! `chatd set-password`: an operator sets a user's password on the data of
//! a stopped server, and every token of the user is revoked. The command
//! refuses a running server, unknown users and passwords Register would
//! refuse.

mod common;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use common::process::Chatd;
use common::{Raw, error_code};

async fn login(addr: std::net::SocketAddr, password: &str) -> S {
    Raw::connect(addr)
        .await
        .request(C::Login(pb::Login {
            username: "alice".into(),
            password: password.into(),
            device: None,
        }))
        .await
}

#[tokio::test]
async fn set_password_replaces_the_password_and_revokes_every_token() {
    let dir = tempfile::tempdir().expect("dir");
    let mut chatd = Chatd::start(dir.path(), "");
    let phone = Raw::register(chatd.addr, "alice").await;
    let laptop = Raw::login(chatd.addr, "alice").await;
    let tokens = [phone.token.clone(), laptop.token.clone()];
    drop((phone, laptop));

    // The running server holds the store.
    let out = chatd.command(&["set-password", "alice"], "a brand new secret\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("still running"), "{stderr}");

    chatd.kill();
    let out = chatd.command(&["set-password", "nobody"], "a brand new secret\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no user named \"nobody\""), "{stderr}");
    let out = chatd.command(&["set-password", "alice"], "short\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("8-256 bytes"), "{stderr}");
    let out = chatd.command(&["set-password", "alice"], "a brand new secret\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("2 session token(s) revoked"), "{stdout}");

    chatd.spawn();
    chatd.wait_listening().await;
    assert_eq!(
        error_code(&login(chatd.addr, "password123").await),
        ErrorCode::InvalidCredentials
    );
    assert!(matches!(
        login(chatd.addr, "a brand new secret").await,
        S::AuthOk(_)
    ));
    for token in tokens {
        let resumed = Raw::connect(chatd.addr)
            .await
            .request(C::Resume(pb::Resume {
                session_token: token,
                device: None,
                cursors: vec![],
            }))
            .await;
        assert_eq!(error_code(&resumed), ErrorCode::TokenInvalid);
    }
    chatd.kill();
}
