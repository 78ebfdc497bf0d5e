//! Online backup (`chatd backup DEST`): while clients send without pause,
//! the running server copies its data into a new directory; a server
//! started on the copy holds every message acknowledged before the backup
//! began, at its seq, with no gaps, and new messages continue the seqs.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chat_protocol::pb::server_frame::Body as S;
use common::Raw;
use common::process::Chatd;

/// Acknowledged sends of one conversation: seq → text.
type Acked = Arc<Mutex<BTreeMap<u64, String>>>;

/// Sends to `conversation` one message after another until `stop`,
/// recording each ack.
fn sender(
    mut client: Raw,
    conversation: u64,
    tag: &'static str,
    stop: Arc<AtomicBool>,
) -> (Acked, tokio::task::JoinHandle<()>) {
    let acked = Acked::default();
    let task = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // Large enough that the log seals segments during the run.
                let text = format!("{tag} {n} {}", "x".repeat(4000));
                let ack = client
                    .send_text(conversation, &format!("{tag}-{n}"), &text)
                    .await;
                acked.lock().unwrap().insert(ack.seq, text);
            }
        })
    };
    (acked, task)
}

/// Every message of `conversation`, by seq, paging back from the newest.
async fn all_messages(client: &mut Raw, conversation: u64) -> BTreeMap<u64, String> {
    let mut all = BTreeMap::new();
    let mut before = 0;
    loop {
        match client.history(conversation, before, 0, 200).await {
            S::MessagePage(page) => {
                for m in &page.messages {
                    all.insert(m.seq, m.text.clone());
                }
                let Some(oldest) = page.messages.iter().map(|m| m.seq).min() else {
                    return all;
                };
                if !page.has_more || oldest <= 1 {
                    return all;
                }
                before = oldest;
            }
            other => panic!("history: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_serves_every_message_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let chatd = Chatd::start(dir.path(), "");
    let mut alice = Raw::register(chatd.addr, "alice").await;
    let bob = Raw::register(chatd.addr, "bob").await;
    let carol = Raw::register(chatd.addr, "carol").await;
    let direct = alice.create_direct(bob.user_id).await;
    let group = alice
        .create_group("backup", &[bob.user_id, carol.user_id])
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let (direct_acked, a) = sender(alice, direct, "direct", stop.clone());
    let (group_acked, b) = sender(carol, group, "group", stop.clone());
    common::wait_until("messages acknowledged before the backup", async || {
        direct_acked.lock().unwrap().len() >= 600 && group_acked.lock().unwrap().len() >= 600
    })
    .await;

    // Everything acknowledged before the backup begins must be in it.
    let before_direct = direct_acked.lock().unwrap().clone();
    let before_group = group_acked.lock().unwrap().clone();
    let copy = tempfile::tempdir().unwrap();
    let dest = copy.path().join("data");
    let out = {
        let dest = dest.to_str().unwrap().to_owned();
        let chatd = &chatd;
        tokio::task::block_in_place(|| chatd.command(&["backup", &dest], ""))
    };
    assert!(
        out.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(report.contains("acknowledged="), "{report}");
    eprintln!("{report}");

    // The server went on serving during the backup.
    let during = direct_acked.lock().unwrap().len();
    common::wait_until("messages acknowledged after the backup", async || {
        direct_acked.lock().unwrap().len() > during + 50
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    a.await.unwrap();
    b.await.unwrap();

    // A backup never overwrites: the same destination again is refused.
    let again = {
        let dest = dest.to_str().unwrap().to_owned();
        let chatd = &chatd;
        tokio::task::block_in_place(|| chatd.command(&["backup", &dest], ""))
    };
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    drop(chatd);

    // A server on the copy: logins work, every message acknowledged before
    // the backup is there at its seq, seqs are dense, and new sends follow.
    let restored = Chatd::start(copy.path(), "");
    let mut alice = Raw::login(restored.addr, "alice").await;
    let mut carol = Raw::login(restored.addr, "carol").await;
    for (client, conversation, before) in [
        (&mut alice, direct, &before_direct),
        (&mut carol, group, &before_group),
    ] {
        let stored = all_messages(client, conversation).await;
        let last = stored.keys().next_back().copied().unwrap_or(0);
        assert_eq!(
            stored.keys().copied().collect::<Vec<_>>(),
            (1..=last).collect::<Vec<_>>(),
            "seqs of {conversation} are not dense"
        );
        for (seq, text) in before {
            assert_eq!(stored.get(seq), Some(text), "seq {seq} of {conversation}");
        }
        let ack = client
            .send_text(conversation, "after-restore", "after restore")
            .await;
        assert_eq!(ack.seq, last + 1, "seqs continue after the copy's last");
    }
}

#[tokio::test]
async fn the_control_socket_refuses_what_it_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let chatd = Chatd::start(dir.path(), "");
    let data = dir.path().join("data");
    let ask = |command: &str| {
        chatd::control::request(&data, command)
            .unwrap_err()
            .to_string()
    };
    assert!(ask("format c:").contains("unknown command"));
    assert!(ask("backup").contains("usage"));
    assert!(ask("backup relative/dir").contains("not an absolute path"));
    let inside = data.join("copy");
    assert!(ask(&format!("backup {}", inside.display())).contains("inside the data directory"));
    assert!(!inside.exists());
    // Only the server's user may connect.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join(chatd::control::SOCKET))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    drop(chatd);
}
