//! Operator commands. `chatd set-password` sets a user's password on a
//! stopped server's data, and every token of the user is revoked; it
//! refuses a running server, unknown users and passwords Register would
//! refuse. `list-users` and `list-conversations` list a stopped server's
//! data; `disable-user` revokes an account's tokens and has its logins
//! refused (on a running server, through its control socket, its sessions
//! also end at once), `enable-user` undoes it; `delete-user` erases an
//! account as DeleteAccount does.

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

#[tokio::test]
async fn operators_list_users_and_conversations_and_disable_accounts() {
    let dir = tempfile::tempdir().expect("dir");
    let mut chatd = Chatd::start(dir.path(), "");
    let mut alice = Raw::register(chatd.addr, "alice").await;
    let bob = Raw::register(chatd.addr, "bob").await;
    let group = alice.create_group("club\tnight", &[bob.user_id]).await;
    alice.send_text(group, "1", "hello").await;
    let token = alice.token.clone();
    drop((alice, bob));

    // Through the running server's control socket: carol's session ends at
    // once, her token is revoked, her logins are refused; enabled, she logs
    // in again.
    let mut carol = Raw::register(chatd.addr, "carol").await;
    let carol_token = carol.token.clone();
    let out = chatd.command(&["disable-user", "nobody"], "");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such user"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = chatd.command(&["disable-user", "carol"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("1 session token(s) revoked"), "{said}");
    let mut told = false;
    while let Some(frame) = carol.read_frame().await {
        if let Some(S::Error(e)) = frame.body {
            told |= e.code == ErrorCode::AccountDisabled as i32;
        }
    }
    assert!(told, "the session is told why it ends");
    let addr = chatd.addr;
    let carol_login = move |password: &'static str| async move {
        Raw::connect(addr)
            .await
            .request(C::Login(pb::Login {
                username: "carol".into(),
                password: password.into(),
                device: None,
            }))
            .await
    };
    assert_eq!(
        error_code(&carol_login("password123").await),
        ErrorCode::AccountDisabled
    );
    let resumed = Raw::connect(chatd.addr)
        .await
        .request(C::Resume(pb::Resume {
            session_token: carol_token,
            device: None,
            cursors: vec![],
        }))
        .await;
    assert_eq!(error_code(&resumed), ErrorCode::TokenInvalid);
    let out = chatd.command(&["enable-user", "carol"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(matches!(carol_login("password123").await, S::AuthOk(_)));
    chatd.kill();

    let out = chatd.command(&["list-users"], "");
    let users = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = users.lines().collect();
    assert_eq!(lines[0], "id\tusername\tdisplay_name\tcreated_at_ms\tstate");
    assert_eq!(lines.len(), 4, "{users}");
    assert!(
        lines[1].contains("\talice\t") && lines[1].ends_with("\tactive"),
        "{users}"
    );
    let out = chatd.command(&["list-conversations"], "");
    let convs = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        convs
            .lines()
            .any(|l| l == format!("{group}\tgroup\t2\t1\tclub night")),
        "{convs}"
    );

    let out = chatd.command(&["disable-user", "nobody"], "");
    assert!(!out.status.success());
    let out = chatd.command(&["disable-user", "alice"], "");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("1 session token(s) revoked"), "{said}");
    let out = chatd.command(&["list-users"], "");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\talice\t"));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.contains("\talice\t") && l.ends_with("\tdisabled"))
    );

    chatd.spawn();
    chatd.wait_listening().await;
    assert_eq!(
        error_code(&login(chatd.addr, "password123").await),
        ErrorCode::AccountDisabled
    );
    assert_eq!(
        error_code(&login(chatd.addr, "not the password").await),
        ErrorCode::InvalidCredentials,
        "only the password's holder learns it is disabled"
    );
    let resumed = Raw::connect(chatd.addr)
        .await
        .request(C::Resume(pb::Resume {
            session_token: token,
            device: None,
            cursors: vec![],
        }))
        .await;
    assert_eq!(error_code(&resumed), ErrorCode::TokenInvalid);
    chatd.kill();

    let out = chatd.command(&["enable-user", "alice"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    chatd.spawn();
    chatd.wait_listening().await;
    assert!(matches!(
        login(chatd.addr, "password123").await,
        S::AuthOk(_)
    ));
    chatd.kill();
}

#[tokio::test]
async fn delete_user_erases_an_account_on_a_stopped_server() {
    let dir = tempfile::tempdir().expect("dir");
    let mut chatd = Chatd::start(dir.path(), "");
    let mut alice = Raw::register(chatd.addr, "alice").await;
    let mut bob = Raw::register(chatd.addr, "bob").await;
    let group = bob.create_group("trip", &[alice.user_id]).await;
    alice.send_text(group, "a1", "kept").await;
    let (a, token) = (alice.user_id, alice.token.clone());
    drop((alice, bob));
    chatd.kill();

    let out = chatd.command(&["delete-user", "nobody"], "");
    assert!(!out.status.success());
    let out = chatd.command(&["delete-user", "alice"], "");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("\"alice\" deleted"), "{said}");
    let out = chatd.command(&["delete-user", "alice"], "");
    assert!(!out.status.success(), "deleted already");

    chatd.spawn();
    chatd.wait_listening().await;
    assert_eq!(
        error_code(&login(chatd.addr, "password123").await),
        ErrorCode::InvalidCredentials
    );
    let resumed = Raw::connect(chatd.addr)
        .await
        .request(C::Resume(pb::Resume {
            session_token: token,
            device: None,
            cursors: vec![],
        }))
        .await;
    assert_eq!(error_code(&resumed), ErrorCode::TokenInvalid);
    let mut bob = Raw::login(chatd.addr, "bob").await;
    match bob
        .request(C::GetProfile(pb::GetProfile {
            user_id: a,
            username: String::new(),
        }))
        .await
    {
        S::Profile(p) => assert!(p.deleted && p.username.is_empty()),
        other => panic!("profile: {other:?}"),
    }
    match bob.history(group, 0, 0, 10).await {
        S::MessagePage(p) => assert!(
            p.messages
                .iter()
                .any(|m| m.sender_id == a && m.text == "kept")
        ),
        other => panic!("history: {other:?}"),
    }
    chatd.kill();
}
