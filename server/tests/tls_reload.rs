//! A renewed certificate without a restart: after SIGHUP chatd presents the
//! certificate and key now in its files; a session opened before goes on,
//! and files it cannot use leave the certificate in use in place.

mod common;

use std::path::Path;
use std::time::Duration;

use chat_client::{Client, ClientOptions, Error};
use common::process::Chatd;

/// A self-signed certificate for localhost, as (certificate, key) PEM.
fn issue() -> (String, String) {
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    (issued.cert.pem(), issued.signing_key.serialize_pem())
}

/// Client options that trust only the certificate in `pem`.
fn trusting(dir: &Path, name: &str, pem: &str) -> ClientOptions {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write");
    ClientOptions {
        reconnect: false,
        ..ClientOptions::default()
    }
    .trust_cert_file(&path)
    .expect("read")
}

#[tokio::test]
async fn sighup_swaps_the_certificate_for_new_handshakes() {
    let dir = tempfile::tempdir().expect("dir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (old_cert, old_key) = issue();
    std::fs::write(&cert_path, &old_cert).expect("write");
    std::fs::write(&key_path, &old_key).expect("write");
    let chatd = Chatd::start(
        dir.path(),
        &format!(
            "tls_listen = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
            cert_path.display(),
            key_path.display()
        ),
    );
    let url = format!(
        "tls://localhost:{}",
        chatd.tls_addr.expect("TLS listener").port()
    );
    let trusts_old = trusting(dir.path(), "old.pem", &old_cert);
    let (before, _events) = Client::connect(&url, trusts_old.clone())
        .await
        .expect("the first certificate is served");
    before
        .register("alice", "correct horse battery", "Alice")
        .await
        .expect("register");

    // The certificate is renewed in place.
    let (new_cert, new_key) = issue();
    std::fs::write(&cert_path, &new_cert).expect("write");
    std::fs::write(&key_path, &new_key).expect("write");
    chatd.hangup();
    chatd.wait_log("TLS certificate reloaded");
    let trusts_new = trusting(dir.path(), "new.pem", &new_cert);
    let (after, _events) = Client::connect(&url, trusts_new.clone())
        .await
        .expect("the renewed certificate is served");
    after
        .login("alice", "correct horse battery")
        .await
        .expect("login");
    assert!(matches!(
        Client::connect(&url, trusts_old).await,
        Err(Error::Tls(_))
    ));
    // The session opened with the first certificate is still served.
    tokio::time::timeout(Duration::from_secs(30), before.list_conversations(10))
        .await
        .expect("in time")
        .expect("still connected");

    // A key that does not belong to the certificate is refused, and the
    // renewed certificate stays in use.
    let (_, stray_key) = issue();
    std::fs::write(&key_path, &stray_key).expect("write");
    chatd.hangup();
    chatd.wait_log("reloading the TLS certificate failed");
    let (still, _events) = Client::connect(&url, trusts_new)
        .await
        .expect("the renewed certificate is still served");
    still.close().await;
    after.close().await;
    before.close().await;
}
