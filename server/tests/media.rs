//! Media sharing: a ticket, an upload to the signed URL, a message that
//! references the media, and the recipient fetching it from the URL that
//! came with the message.

mod common;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use common::{Raw, TestServer, error_code};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 exchange; returns the status, headers and body.
async fn http(url: &str, method: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
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
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    (status, head, out[split + 4..].to_vec())
}

fn ticket(reply: S) -> pb::UploadTicket {
    match reply {
        S::UploadTicket(t) => t,
        other => panic!("expected UploadTicket, got {other:?}"),
    }
}

#[tokio::test]
async fn media_is_uploaded_once_shared_in_a_message_and_downloaded_by_the_recipient() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let conv = alice.create_direct(bob.user_id).await;

    let photo: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let t = ticket(
        alice
            .request(C::RequestUpload(pb::RequestUpload {
                mime_type: "image/jpeg".into(),
                size_bytes: photo.len() as u64,
            }))
            .await,
    );
    // Not there before the upload.
    assert_eq!(http(&t.download_url, "GET", b"").await.0, 404);
    let (status, _, _) = http(&t.upload_url, "PUT", &photo).await;
    assert_eq!(status, 201);
    // Media is immutable: the same ticket cannot replace it.
    assert_eq!(http(&t.upload_url, "PUT", b"other").await.0, 409);

    let sent = alice
        .request(C::SendMessage(pb::SendMessage {
            conversation_id: conv,
            client_msg_id: "photo-1".into(),
            text: "look".into(),
            media: Some(pb::MediaRef {
                media_id: t.media_id.clone(),
                mime_type: "image/jpeg".into(),
                size_bytes: photo.len() as u64,
                url: "https://elsewhere.invalid/x".into(),
                width: 640,
                height: 480,
                thumbnail: Default::default(),
            }),
            ..Default::default()
        }))
        .await;
    assert!(matches!(sent, S::SendAck(_)), "{sent:?}");

    // Bob's push carries a URL signed by the server, not the sender's.
    let pushed = bob.next_message().await;
    let media = pushed.media.expect("media");
    assert_eq!((media.width, media.height), (640, 480));
    assert!(
        media
            .url
            .starts_with(&format!("http://{}/media/", server.http_addr))
    );
    let (status, head, body) = http(&media.url, "GET", b"").await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: image/jpeg")
    );
    assert!(body == photo, "downloaded bytes differ");

    // History hands out a fresh URL too.
    let page = match bob.history(conv, 0, 0, 10).await {
        S::MessagePage(p) => p,
        other => panic!("{other:?}"),
    };
    let url = page.messages[0].media.as_ref().expect("media").url.clone();
    assert_eq!(http(&url, "GET", b"").await.0, 200);

    // A tampered signature is refused.
    let forged = format!("{}0", url.trim_end_matches(|c: char| c.is_ascii_hexdigit()));
    assert_eq!(http(&forged, "GET", b"").await.0, 403);
    server.stop().await;
}

#[tokio::test]
async fn uploads_are_held_to_their_ticket_and_bad_references_refused() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let bob = Raw::register(server.addr, "bob").await;
    let conv = alice.create_direct(bob.user_id).await;

    let t = ticket(
        alice
            .request(C::RequestUpload(pb::RequestUpload {
                mime_type: "text/plain".into(),
                size_bytes: 10,
            }))
            .await,
    );
    assert_eq!(http(&t.upload_url, "PUT", &[b'x'; 11]).await.0, 413);
    // The failed upload left nothing behind; the ticket still works.
    assert_eq!(http(&t.download_url, "GET", b"").await.0, 404);
    assert_eq!(http(&t.upload_url, "PUT", b"0123456789").await.0, 201);
    // A download URL does not upload.
    assert_eq!(http(&t.download_url, "PUT", b"x").await.0, 403);

    let too_big = alice
        .request(C::RequestUpload(pb::RequestUpload {
            mime_type: "video/mp4".into(),
            size_bytes: server.config.max_media_bytes + 1,
        }))
        .await;
    assert_eq!(error_code(&too_big), ErrorCode::MessageTooLarge);
    let no_type = alice
        .request(C::RequestUpload(pb::RequestUpload {
            mime_type: "nonsense".into(),
            size_bytes: 1,
        }))
        .await;
    assert_eq!(error_code(&no_type), ErrorCode::InvalidArgument);

    let bad_ref = alice
        .request(C::SendMessage(pb::SendMessage {
            conversation_id: conv,
            client_msg_id: "m".into(),
            media: Some(pb::MediaRef {
                media_id: "../../etc/passwd".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await;
    assert_eq!(error_code(&bad_ref), ErrorCode::InvalidArgument);

    // Before login, no tickets.
    let mut anonymous = Raw::connect(server.addr).await;
    let r = anonymous
        .request(C::RequestUpload(pb::RequestUpload {
            mime_type: "text/plain".into(),
            size_bytes: 1,
        }))
        .await;
    assert_eq!(error_code(&r), ErrorCode::Unauthenticated);
    server.stop().await;
}
