//! The browser page (`server/web/`), driven in a real headless Chromium.
//!
//! A `chatd` runs in-process on 127.0.0.1 port 0; Debian's `chromedriver`
//! (package `chromium-driver`) starts Debian's `chromium` for each browser
//! user, and the test drives the page over WebDriver (fantoccini) the way a
//! person would: typing into the forms and reading what the page shows.
//! `bash .ci/test` installs both packages; without them these tests fail
//! with a message saying so.
//!
//! Waits poll the page until a condition holds, bounded by [`WAIT`]; none
//! asserts on time. Screenshots go to `test-artifacts/` at the workspace
//! root.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use common::{Raw, TestServer};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// Bound on every wait for the page to reach a state.
const WAIT: Duration = Duration::from_secs(30);

/// Chromium flags that work in a container without a display, GPU, sandbox
/// or network (nothing but loopback is contacted).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1100,720",
];

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn required_program(name: &str, package: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| {
        panic!(
            "`{name}` not found in PATH: the browser tests need Debian's `{package}` package \
             (`bash .ci/test` installs it, or `apt-get install chromium chromium-driver`)"
        )
    })
}

/// A chromedriver child process in its own process group; dropping it
/// kills the group, browsers included, even when a test fails half-way.
struct Chromedriver {
    child: Child,
    port: u16,
}

impl Chromedriver {
    /// Attempts at starting chromedriver on a fresh port. Between choosing a
    /// free port and chromedriver binding it another process may take it;
    /// chromedriver then exits, and the next attempt uses another port.
    /// (Its own `--port=0` is no help: it then often fails with "IPv4 port
    /// not available".)
    const ATTEMPTS: usize = 5;

    fn start() -> Self {
        let program = required_program("chromedriver", "chromium-driver");
        let mut failures = Vec::new();
        for _ in 0..Self::ATTEMPTS {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("find a free port")
                .port();
            match Self::start_on(&program, port) {
                Ok(driver) => return driver,
                Err(output) => failures.push(format!("port {port}: {output}")),
            }
        }
        panic!("chromedriver did not start: {failures:#?}");
    }

    /// Starts chromedriver on `port` and waits until it says it listens;
    /// `Err` holds what it printed if it exits or stays silent instead.
    fn start_on(program: &Path, port: u16) -> Result<Self, String> {
        let mut child = {
            use std::os::unix::process::CommandExt;
            Command::new(program)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("start chromedriver")
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let ready = line.contains("started successfully");
                if tx.send((ready, line)).is_err() || ready {
                    break;
                }
            }
        });
        let deadline = Instant::now() + WAIT;
        let mut output = Vec::new();
        let outcome = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((true, _)) => break Ok(()),
                Ok((false, line)) => output.push(line),
                Err(_) => break Err(output.join(" / ")),
            }
        };
        let driver = Self { child, port };
        // On failure, dropping `driver` ends whatever is left of it.
        outcome.map(|()| driver)
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser window with its own fresh profile (so its own localStorage).
async fn open_browser(driver: &Chromedriver, profile: &Path) -> Client {
    open_browser_with(driver, profile, &[]).await
}

async fn open_browser_with(driver: &Chromedriver, profile: &Path, extra: &[&str]) -> Client {
    let chromium = required_program("chromium", "chromium");
    let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(format!("--user-data-dir={}", profile.display()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": chromium, "args": args }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("chromedriver starts chromium")
}

fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create test-artifacts/");
    dir
}

async fn screenshot(browser: &Client, name: &str) -> PathBuf {
    let png = browser.screenshot().await.expect("screenshot");
    let path = artifacts_dir().join(name);
    std::fs::write(&path, png).expect("write screenshot");
    path
}

/// Runs `script` (a function body; `arguments` are `args`) in the page.
async fn js(browser: &Client, script: &str, args: Vec<Value>) -> Value {
    browser
        .execute(script, args)
        .await
        .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
}

/// Polls `condition` (a JS expression) until it is truthy; on timeout,
/// saves a screenshot and fails with what the page shows.
async fn wait_for(browser: &Client, who: &str, what: &str, condition: &str) {
    let script = format!("return !!({condition});");
    let deadline = Instant::now() + WAIT;
    loop {
        if js(browser, &script, vec![]).await == Value::Bool(true) {
            return;
        }
        if Instant::now() > deadline {
            let shot = screenshot(browser, &format!("browser-timeout-{who}.png")).await;
            let page = js(
                browser,
                "return {status: document.getElementById('status').textContent, \
                 errors: document.getElementById('errors').textContent, \
                 auth: document.getElementById('auth-error').textContent};",
                vec![],
            )
            .await;
            panic!(
                "{who}: timed out waiting until {what}; page: {page}; screenshot {}",
                shot.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn fill(browser: &Client, css: &str, text: &str) {
    let field = browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    field.clear().await.expect("clear");
    field.send_keys(text).await.expect("type");
}

/// Clicks the first element matching `css`, waiting (bounded) for it to
/// exist. The page re-renders lists as pushes arrive, so an element found a
/// moment ago may have been replaced: then it is looked up again.
async fn click(browser: &Client, css: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let result = match browser.find(Locator::Css(css)).await {
            Ok(element) => element.click().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => return,
            Err(e)
                if (e.to_string().contains("stale element")
                    || e.to_string().contains("no such element"))
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("click {css}: {e}"),
        }
    }
}

/// Opens the page and registers `username` through the form.
async fn register(browser: &Client, base: &str, username: &str, display: &str) {
    browser.goto(base).await.expect("open the page");
    wait_for(
        browser,
        username,
        "the login form shows",
        "!document.getElementById('auth').hidden",
    )
    .await;
    fill(browser, "#username", username).await;
    fill(browser, "#password", "password123").await;
    fill(browser, "#display-name", display).await;
    click(browser, "#register-btn").await;
    wait_for(
        browser,
        username,
        "the chat view shows the user",
        &format!(
            "!document.getElementById('app').hidden && \
             document.getElementById('me').textContent === {}",
            json!(display)
        ),
    )
    .await;
}

/// Texts of the messages shown in the open conversation, oldest first.
const SHOWN_TEXTS: &str = "Array.from(document.querySelectorAll('#messages .message .text'))\
     .map(e => e.textContent)";

fn shows_message(text: &str) -> String {
    format!(
        "Array.from(document.querySelectorAll('#messages .message[data-state=\"sent\"] .text'))\
         .some(e => e.textContent === {})",
        json!(text)
    )
}

async fn send(browser: &Client, text: &str) {
    fill(browser, "#message-input", text).await;
    click(browser, "#send-btn").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browser_users_chat_live_scroll_history_and_resume() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = chatd::Config::for_tests(dir.path());
    // Sessions silent for 3 s are closed: the pages must keep theirs alive
    // with Pings (checked at the end: no reconnect but the restart's).
    config.heartbeat_interval_ms = 1000;
    let server = TestServer::start_with(dir, config);
    let base = format!("http://{}/", server.http_addr);
    let driver = Chromedriver::start();
    let profiles = tempfile::tempdir().expect("temp dir");
    let alice = open_browser(&driver, &profiles.path().join("alice")).await;
    let bob = open_browser(&driver, &profiles.path().join("bob")).await;

    register(&alice, &base, "alice", "Alice").await;
    register(&bob, &base, "bob", "Bob").await;

    // Alice starts a direct chat with bob by username and writes to him.
    fill(&alice, "#direct-username", "bob").await;
    click(&alice, "#direct-btn").await;
    wait_for(
        &alice,
        "alice",
        "the chat with Bob is open",
        "!document.getElementById('chat').hidden && \
         document.getElementById('chat-title').textContent.startsWith('Bob')",
    )
    .await;
    send(&alice, "Hello Bob, this is Alice").await;
    // Acknowledged: shown as stored (data-state "sent"), no longer pending.
    wait_for(
        &alice,
        "alice",
        "her message is acknowledged",
        &shows_message("Hello Bob, this is Alice"),
    )
    .await;

    // Bob never reloaded: the conversation arrives live, unread.
    wait_for(
        &bob,
        "bob",
        "the conversation from Alice appears with one unread message",
        "Array.from(document.querySelectorAll('#conversations .conversation'))\
         .some(li => li.querySelector('.title').textContent.startsWith('Alice') && \
                     li.querySelector('.unread').textContent === '1' && \
                     !li.querySelector('.unread').hidden)",
    )
    .await;
    click(&bob, "#conversations .conversation").await;
    wait_for(
        &bob,
        "bob",
        "Alice's message is shown",
        &shows_message("Hello Bob, this is Alice"),
    )
    .await;
    wait_for(
        &bob,
        "bob",
        "opening the chat marked it read",
        "document.querySelector('#conversations .conversation .unread').hidden",
    )
    .await;

    // Alice sees that Bob is online, and that he is typing before he sends.
    wait_for(
        &alice,
        "alice",
        "Bob shows as online",
        "document.getElementById('chat-subtitle').textContent === 'online'",
    )
    .await;
    fill(&bob, "#message-input", "Hi Alice! Bob here.").await;
    wait_for(
        &alice,
        "alice",
        "Bob shows as typing",
        "document.getElementById('typing').textContent === 'Bob is typing…'",
    )
    .await;
    // Bob answers; Alice sees it appear without doing anything, and the
    // typing line goes away with it.
    click(&bob, "#send-btn").await;
    wait_for(
        &alice,
        "alice",
        "Bob's answer appears and he no longer shows as typing",
        &format!(
            "{} && document.getElementById('typing').textContent === ''",
            shows_message("Hi Alice! Bob here.")
        ),
    )
    .await;
    // Bob read Alice's message, so her page marks it read.
    wait_for(
        &alice,
        "alice",
        "her message shows as read",
        "Array.from(document.querySelectorAll('#messages .message.mine .meta'))\
         .some(e => e.textContent.includes('read'))",
    )
    .await;
    let alice_sees = js(&alice, &format!("return {SHOWN_TEXTS};"), vec![]).await;
    assert_eq!(
        alice_sees,
        json!(["Hello Bob, this is Alice", "Hi Alice! Bob here."]),
        "each message once, in order"
    );
    let alice_shot = screenshot(&alice, "browser-alice.png").await;
    let bob_shot = screenshot(&bob, "browser-bob.png").await;

    // History: Alice's phone (a TCP client) posts a long backlog. Bob's page
    // receives it live; scrolling up pages through GetHistory(before_seq)
    // down to the first message.
    let conversation: u64 = js(
        &bob,
        "return document.querySelector('#conversations .conversation').dataset.id;",
        vec![],
    )
    .await
    .as_str()
    .and_then(|s| s.parse().ok())
    .expect("conversation id");
    let mut phone = Raw::login(server.addr, "alice").await;
    const BACKLOG: usize = 130;
    for i in 1..=BACKLOG {
        let reply = phone
            .request(C::SendMessage(pb::SendMessage {
                conversation_id: conversation,
                client_msg_id: format!("backlog-{i}"),
                text: format!("backlog {i}"),
                ..Default::default()
            }))
            .await;
        assert!(matches!(reply, S::SendAck(_)), "{reply:?}");
    }
    wait_for(
        &bob,
        "bob",
        "the backlog arrives live",
        &shows_message(&format!("backlog {BACKLOG}")),
    )
    .await;

    // A reload: the page resumes with the stored token (no password), shows
    // the newest page only, and scrolling up loads the rest.
    bob.refresh().await.expect("reload");
    wait_for(
        &bob,
        "bob",
        "the reloaded page resumes the session and lists the chat",
        "!document.getElementById('app').hidden && \
         document.getElementById('me').textContent === 'Bob' && \
         document.querySelector('#conversations .conversation .title') && \
         document.querySelector('#conversations .conversation .title').textContent.startsWith('Alice')",
    )
    .await;
    click(&bob, "#conversations .conversation").await;
    wait_for(
        &bob,
        "bob",
        "the newest page is shown",
        &shows_message(&format!("backlog {BACKLOG}")),
    )
    .await;
    let first_page = js(
        &bob,
        "return document.querySelectorAll('#messages .message').length;",
        vec![],
    )
    .await
    .as_u64()
    .expect("count");
    assert!(
        (first_page as usize) < BACKLOG,
        "the reload shows a page, not everything: {first_page}"
    );
    // Scroll to the top until the first message (Alice's greeting) is in.
    let deadline = Instant::now() + WAIT;
    loop {
        let found = js(
            &bob,
            &format!(
                "document.getElementById('messages-scroll').scrollTop = 0; return {};",
                shows_message("Hello Bob, this is Alice")
            ),
            vec![],
        )
        .await;
        if found == Value::Bool(true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "scrolling up never reached the first message"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(
        &bob,
        "bob",
        "the start of the conversation is reached",
        "document.getElementById('history-status').textContent === 'Start of the conversation'",
    )
    .await;
    // Receipts from before the reload are asked for, not forgotten.
    wait_for(
        &bob,
        "bob",
        "his message still shows as read by Alice",
        "Array.from(document.querySelectorAll('#messages .message.mine'))\
         .some(li => li.querySelector('.text').textContent === 'Hi Alice! Bob here.' && \
                     li.querySelector('.meta').textContent.includes('read'))",
    )
    .await;
    let texts = js(&bob, &format!("return {SHOWN_TEXTS};"), vec![]).await;
    let texts: Vec<String> = serde_json::from_value(texts).expect("texts");
    let mut expected = vec![
        "Hello Bob, this is Alice".to_string(),
        "Hi Alice! Bob here.".to_string(),
    ];
    expected.extend((1..=BACKLOG).map(|i| format!("backlog {i}")));
    assert_eq!(texts, expected, "whole history, once each, in order");

    // Bob deletes his message for everyone with its Delete button: his page
    // shows it deleted, with a line saying so, and the store has no text.
    js(
        &bob,
        "Array.from(document.querySelectorAll('#messages .message.mine'))\
           .find(li => li.querySelector('.text').textContent === 'Hi Alice! Bob here.')\
           .querySelector('button.delete').click();",
        vec![],
    )
    .await;
    wait_for(
        &bob,
        "bob",
        "his message shows as deleted",
        "Array.from(document.querySelectorAll('#messages .message.deleted .text'))\
           .some(e => e.textContent === 'This message was deleted') && \
         Array.from(document.querySelectorAll('#messages .message.system'))\
           .some(e => e.textContent === 'Bob deleted a message')",
    )
    .await;
    match phone.history(conversation, 0, 0, 200).await {
        S::MessagePage(page) => {
            let his: Vec<_> = page
                .messages
                .iter()
                .filter(|m| m.deleted)
                .map(|m| (m.seq, m.text.clone()))
                .collect();
            assert_eq!(his, vec![(2, String::new())], "only Bob's message, emptied");
        }
        other => panic!("history: {other:?}"),
    }

    // Errors are shown, not swallowed: a chat with a user who does not exist.
    fill(&bob, "#direct-username", "nobody").await;
    click(&bob, "#direct-btn").await;
    wait_for(
        &bob,
        "bob",
        "an error about the unknown user shows",
        "document.getElementById('errors').textContent.includes('No user named nobody')",
    )
    .await;

    let history_shot = screenshot(&bob, "browser-bob-history.png").await;

    // A group: Alice creates it with bob by username; it appears on Bob's
    // page with her message, labelled with the sender's name.
    click(&alice, "#group-box summary").await;
    fill(&alice, "#group-title", "Weekend plans").await;
    fill(&alice, "#group-members", "bob").await;
    click(&alice, "#group-btn").await;
    wait_for(
        &alice,
        "alice",
        "the group is open",
        "document.getElementById('chat-title').textContent === 'Weekend plans' && \
         document.getElementById('chat-subtitle').textContent === '2 members'",
    )
    .await;
    send(&alice, "Group hello").await;
    wait_for(
        &alice,
        "alice",
        "the group message is acknowledged",
        &shows_message("Group hello"),
    )
    .await;
    let group_row = "Array.from(document.querySelectorAll('#conversations .conversation'))\
                     .find(li => li.querySelector('.title').textContent === 'Weekend plans')";
    wait_for(
        &bob,
        "bob",
        "the group appears with Alice's message",
        &format!(
            "{group_row} && {group_row}.querySelector('.preview').textContent === 'Group hello'"
        ),
    )
    .await;
    js(&bob, &format!("{group_row}.click();"), vec![]).await;
    wait_for(
        &bob,
        "bob",
        "the group message shows its sender, the header its members",
        "Array.from(document.querySelectorAll('#messages .message')).some(li => \
           li.querySelector('.sender') && li.querySelector('.sender').textContent === 'Alice' && \
           li.querySelector('.text').textContent === 'Group hello') && \
         document.getElementById('chat-subtitle').textContent === '2 members'",
    )
    .await;

    // The server restarts. Both pages reconnect and resume by themselves; a
    // message Alice writes meanwhile is sent (once) when her page is back,
    // and Bob's page receives it live.
    drop(phone);
    let server = server.restart().await;
    send(&alice, "After the restart").await;
    wait_for(
        &alice,
        "alice",
        "the message written across the restart is acknowledged",
        &shows_message("After the restart"),
    )
    .await;
    wait_for(
        &bob,
        "bob",
        "Bob's page reconnected and receives it",
        &shows_message("After the restart"),
    )
    .await;
    let alice_group = js(&alice, &format!("return {SHOWN_TEXTS};"), vec![]).await;
    assert_eq!(
        alice_group,
        json!(["Group hello", "After the restart"]),
        "sent once across the reconnect"
    );
    wait_for(
        &bob,
        "bob",
        "the status shows online",
        "document.getElementById('status').dataset.state === 'online'",
    )
    .await;
    let group_shot = screenshot(&bob, "browser-bob-group.png").await;
    // One connection per page load plus one after the restart: heartbeats
    // kept every session alive (Bob's page was reloaded once, so counts
    // afresh).
    for (who, page) in [("alice", &alice), ("bob", &bob)] {
        let seen = js(
            page,
            "return [document.getElementById('status').dataset.sessions, \
                     document.getElementById('errors').textContent];",
            vec![],
        )
        .await;
        assert_eq!(
            seen[0],
            json!("2"),
            "{who}: connections made; page errors: {}",
            seen[1]
        );
    }

    // Logging out forgets the session; a wrong password is refused with a
    // message; the right one brings the conversations back.
    click(&alice, "#logout-btn").await;
    wait_for(
        &alice,
        "alice",
        "the login form is back",
        "!document.getElementById('auth').hidden && document.getElementById('app').hidden && \
         localStorage.getItem('chatd.token') === null",
    )
    .await;
    fill(&alice, "#username", "alice").await;
    fill(&alice, "#password", "not her password").await;
    click(&alice, "#login-btn").await;
    wait_for(
        &alice,
        "alice",
        "the wrong password is refused",
        "document.getElementById('auth-error').textContent === 'Wrong username or password.'",
    )
    .await;
    fill(&alice, "#password", "password123").await;
    click(&alice, "#login-btn").await;
    wait_for(
        &alice,
        "alice",
        "she is logged in with both conversations listed",
        "!document.getElementById('app').hidden && \
         Array.from(document.querySelectorAll('#conversations .conversation .title'))\
           .map(e => e.textContent).join('|').startsWith('Weekend plans|Bob')",
    )
    .await;

    // Changing the password: a wrong current password is refused with a
    // message; the right one is confirmed, and then only the new password
    // logs in.
    click(&alice, "#password-box summary").await;
    fill(&alice, "#current-password", "not her password").await;
    fill(&alice, "#new-password", "a longer secret").await;
    click(&alice, "#password-btn").await;
    wait_for(
        &alice,
        "alice",
        "the wrong current password is refused",
        "document.getElementById('password-result').textContent === \
         'The current password is wrong.'",
    )
    .await;
    fill(&alice, "#current-password", "password123").await;
    fill(&alice, "#new-password", "a longer secret").await;
    click(&alice, "#password-btn").await;
    wait_for(
        &alice,
        "alice",
        "the change is confirmed",
        "document.getElementById('password-result').textContent.startsWith('Password changed.')",
    )
    .await;
    click(&alice, "#logout-btn").await;
    fill(&alice, "#username", "alice").await;
    fill(&alice, "#password", "a longer secret").await;
    click(&alice, "#login-btn").await;
    wait_for(
        &alice,
        "alice",
        "the new password logs her in",
        "!document.getElementById('app').hidden",
    )
    .await;

    eprintln!(
        "screenshots: {} {} {} {}",
        alice_shot.display(),
        bob_shot.display(),
        history_shot.display(),
        group_shot.display()
    );
    alice.close().await.expect("close alice's browser");
    bob.close().await.expect("close bob's browser");
    drop(driver);
    server.stop().await;
}

/// The `li` of the open conversation's message whose text is `text`, as a
/// JS expression (undefined while there is none).
fn message_item(text: &str) -> String {
    format!(
        "Array.from(document.querySelectorAll('#messages .message')).find(li => \
           li.querySelector('.text') && li.querySelector('.text').textContent === {})",
        json!(text)
    )
}

/// Clicks the element `element` (a JS expression) from a timer, so that the
/// script returns before the click opens a `prompt` or `confirm` (which
/// would hold the script). For the message buttons the page shows on hover.
async fn click_soon(browser: &Client, element: &str) {
    js(
        browser,
        &format!("const e = {element}; setTimeout(() => e.click(), 0);"),
        vec![],
    )
    .await;
}

/// Waits (bounded) for the page's `prompt` or `confirm`, types `text` into
/// a prompt, and accepts it.
async fn answer_dialog(browser: &Client, who: &str, text: Option<&str>) {
    let deadline = Instant::now() + WAIT;
    while let Err(e) = browser.get_alert_text().await {
        assert!(Instant::now() < deadline, "{who}: no dialog opened: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(text) = text {
        browser
            .send_alert_text(text)
            .await
            .expect("type into the prompt");
    }
    browser.accept_alert().await.expect("accept the dialog");
}

/// Reactions, edits, the members panel with BanMember and UnbanMember, and
/// blocking, through the page: what one user does, the other's page shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browser_users_react_edit_ban_and_block() {
    let server = TestServer::start();
    let base = format!("http://{}/", server.http_addr);
    let driver = Chromedriver::start();
    let profiles = tempfile::tempdir().expect("temp dir");
    let alice = open_browser(&driver, &profiles.path().join("alice")).await;
    let bob = open_browser(&driver, &profiles.path().join("bob")).await;
    register(&alice, &base, "alice", "Alice").await;
    register(&bob, &base, "bob", "Bob").await;
    let bob_id = js(
        &bob,
        "return document.getElementById('me').dataset.userId;",
        vec![],
    )
    .await;
    let bob_id = bob_id.as_str().expect("bob's user id").to_string();

    // Alice creates a group with bob; her first message brings it to his
    // page, and he answers.
    click(&alice, "#group-box summary").await;
    fill(&alice, "#group-title", "Book club").await;
    fill(&alice, "#group-members", "bob").await;
    click(&alice, "#group-btn").await;
    wait_for(
        &alice,
        "alice",
        "the group is open",
        "document.getElementById('chat-title').textContent === 'Book club' && \
         document.getElementById('chat-subtitle').textContent === '2 members'",
    )
    .await;
    send(&alice, "Welcome to the book club").await;
    let group_row = "Array.from(document.querySelectorAll('#conversations .conversation'))\
                     .find(li => li.querySelector('.title').textContent === 'Book club')";
    wait_for(&bob, "bob", "the group appears", group_row).await;
    js(&bob, &format!("{group_row}.click();"), vec![]).await;
    wait_for(
        &bob,
        "bob",
        "Alice's message shows",
        &shows_message("Welcome to the book club"),
    )
    .await;
    send(&bob, "Which book first?").await;
    wait_for(
        &alice,
        "alice",
        "Bob's message arrives",
        &shows_message("Which book first?"),
    )
    .await;

    // Alice reacts to it with the message's "+" button; both pages show
    // the count, hers as her own reaction.
    let bobs_message = message_item("Which book first?");
    click_soon(
        &alice,
        &format!("{bobs_message}.querySelector('button.react')"),
    )
    .await;
    answer_dialog(&alice, "alice", Some("👍")).await;
    let reaction_shown = format!(
        "{bobs_message} && Array.from({bobs_message}.querySelectorAll('.reaction'))\
           .some(b => b.textContent === '👍 1')"
    );
    wait_for(&bob, "bob", "Alice's reaction shows", &reaction_shown).await;
    wait_for(
        &alice,
        "alice",
        "her reaction shows as hers",
        &format!("{reaction_shown} && {bobs_message}.querySelector('.reaction.mine')"),
    )
    .await;

    // Bob edits his message; Alice's page shows the new text, marked edited,
    // with the reaction kept.
    click_soon(
        &bob,
        &format!("{bobs_message}.querySelector('button.edit')"),
    )
    .await;
    answer_dialog(&bob, "bob", Some("Which book first? I vote Dune.")).await;
    let edited = message_item("Which book first? I vote Dune.");
    wait_for(
        &alice,
        "alice",
        "the edited text shows, marked edited",
        &format!(
            "{edited} && {edited}.querySelector('.meta').textContent.includes('(edited)') && \
             {edited}.querySelector('.reaction').textContent === '👍 1' && !{bobs_message}"
        ),
    )
    .await;

    // Each opens the members panel. Both see both members with their roles;
    // only Alice, the owner, gets a Ban button (beside Bob, not herself) and
    // the Banned section.
    click(&alice, "#members-btn").await;
    click(&bob, "#members-btn").await;
    let listed = format!(
        "document.querySelectorAll('#members-list li.member').length === 2 && \
         document.querySelector('#members-list li.member[data-role=\"owner\"] .member-name')\
           .textContent.startsWith('Alice') && \
         document.querySelector('#members-list li[data-user-id=\"{bob_id}\"]') && \
         document.querySelector('#members-list li[data-user-id=\"{bob_id}\"]').dataset.role === 'member' && \
         document.querySelector('#members-list li[data-user-id=\"{bob_id}\"] .member-name')\
           .textContent.startsWith('Bob')"
    );
    wait_for(
        &alice,
        "alice",
        "her panel lists both, a Ban button beside Bob only, nobody banned",
        &format!(
            "!document.getElementById('members-panel').hidden && {listed} && \
             document.querySelectorAll('#members-list .ban-btn').length === 1 && \
             document.querySelector('#members-list li[data-user-id=\"{bob_id}\"] .ban-btn') && \
             !document.getElementById('bans').hidden && \
             !document.getElementById('banned-empty').hidden"
        ),
    )
    .await;
    wait_for(
        &bob,
        "bob",
        "his panel lists both, without Ban buttons or bans",
        &format!(
            "!document.getElementById('members-panel').hidden && {listed} && \
             document.querySelectorAll('#members-panel .ban-btn').length === 0 && \
             document.getElementById('bans').hidden"
        ),
    )
    .await;

    // Alice bans Bob (confirming). His page drops the group and says so;
    // hers shows the ban, one member left, and Bob under Banned.
    click(
        &alice,
        &format!("#members-list li[data-user-id=\"{bob_id}\"] .ban-btn"),
    )
    .await;
    answer_dialog(&alice, "alice", None).await;
    wait_for(
        &bob,
        "bob",
        "the group is gone from his page, with a message saying so",
        &format!(
            "!{group_row} && document.getElementById('chat').hidden && \
             document.getElementById('errors').textContent\
               .includes('You are no longer a member of Book club.')"
        ),
    )
    .await;
    wait_for(
        &alice,
        "alice",
        "Bob shows as banned, no longer a member",
        &format!(
            "document.getElementById('chat-subtitle').textContent === '1 member' && \
             document.getElementById('members-heading').textContent === 'Members (1)' && \
             !document.querySelector('#members-list li[data-user-id=\"{bob_id}\"]') && \
             document.querySelector('#banned-list li[data-user-id=\"{bob_id}\"] .member-name') && \
             document.querySelector('#banned-list li[data-user-id=\"{bob_id}\"] .member-name')\
               .textContent.startsWith('Bob') && \
             document.getElementById('banned-empty').hidden && \
             Array.from(document.querySelectorAll('#messages .message.system'))\
               .some(e => e.textContent === 'Alice banned Bob')"
        ),
    )
    .await;
    let ban_shot = screenshot(&alice, "browser-alice-ban.png").await;

    // She lifts the ban: Bob leaves the Banned list.
    click(
        &alice,
        &format!("#banned-list li[data-user-id=\"{bob_id}\"] .unban-btn"),
    )
    .await;
    wait_for(
        &alice,
        "alice",
        "nobody is banned any more",
        "document.querySelectorAll('#banned-list li').length === 0 && \
         !document.getElementById('banned-empty').hidden",
    )
    .await;

    // A direct chat: once Alice blocks Bob, his next message there is
    // refused, and his page says so.
    fill(&alice, "#direct-username", "bob").await;
    click(&alice, "#direct-btn").await;
    wait_for(
        &alice,
        "alice",
        "the chat with Bob is open, without a members panel",
        "document.getElementById('chat-title').textContent.startsWith('Bob') && \
         document.getElementById('members-btn').hidden && \
         document.getElementById('members-panel').hidden && \
         !document.getElementById('block-btn').hidden",
    )
    .await;
    send(&alice, "See you at the club").await;
    let direct_row = "Array.from(document.querySelectorAll('#conversations .conversation'))\
                      .find(li => li.querySelector('.title').textContent.startsWith('Alice'))";
    wait_for(&bob, "bob", "the direct chat appears", direct_row).await;
    js(&bob, &format!("{direct_row}.click();"), vec![]).await;
    wait_for(
        &bob,
        "bob",
        "Alice's direct message shows",
        &shows_message("See you at the club"),
    )
    .await;
    click(&alice, "#block-btn").await;
    wait_for(
        &alice,
        "alice",
        "Bob shows as blocked",
        "document.getElementById('block-btn').textContent === 'Unblock'",
    )
    .await;
    send(&bob, "Are you there?").await;
    wait_for(
        &bob,
        "bob",
        "his message is refused, visibly",
        "Array.from(document.querySelectorAll('#messages .message[data-state=\"failed\"] .text'))\
           .some(e => e.textContent === 'Are you there?') && \
         document.getElementById('errors').textContent.includes('Message not sent: BLOCKED')",
    )
    .await;
    let block_shot = screenshot(&bob, "browser-bob-blocked.png").await;

    eprintln!(
        "screenshots: {} {}",
        ban_shot.display(),
        block_shot.display()
    );
    alice.close().await.expect("close alice's browser");
    bob.close().await.expect("close bob's browser");
    drop(driver);
    server.stop().await;
}

/// Served by the HTTPS listener, the page connects with `wss://` (a page on
/// https may not open plain `ws://`) and works the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_over_https_talks_over_wss() {
    let server = TestServer::start();
    let wss = server.wss_addr.expect("the test config enables wss_listen");
    let driver = Chromedriver::start();
    let profiles = tempfile::tempdir().expect("temp dir");
    // The server's development certificate is self-signed.
    let browser = open_browser_with(
        &driver,
        &profiles.path().join("tls"),
        &["--ignore-certificate-errors"],
    )
    .await;
    register(&browser, &format!("https://{wss}/"), "carol", "Carol").await;
    fill(&browser, "#direct-username", "carol").await;
    click(&browser, "#direct-btn").await;
    // A direct chat with oneself is refused by the server, and the page says so.
    wait_for(
        &browser,
        "carol",
        "the server's refusal is shown",
        "document.getElementById('errors').textContent.includes('INVALID_ARGUMENT')",
    )
    .await;
    let protocol = js(&browser, "return location.protocol;", vec![]).await;
    assert_eq!(protocol, json!("https:"));
    browser.close().await.expect("close the browser");
    drop(driver);
    server.stop().await;
}

/// The page's codec (`web/chat_proto.js`) against the normative sources: its
/// schema must be `spec/chat.proto`, field by field, and it must decode every
/// frame of `spec/vectors/frames.json` and re-encode the canonical ones to
/// the same bytes, in the browser that runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_codec_matches_chat_proto_and_the_spec_vectors() {
    let server = TestServer::start();
    let base = format!("http://{}/", server.http_addr);
    let driver = Chromedriver::start();
    let profiles = tempfile::tempdir().expect("temp dir");
    let browser = open_browser(&driver, &profiles.path().join("codec")).await;
    browser.goto(&base).await.expect("open the page");
    wait_for(
        &browser,
        "codec",
        "the codec is loaded",
        "window.ChatProto !== undefined",
    )
    .await;

    let (messages, enums) = proto_schema();
    let mismatches = js(
        &browser,
        r#"
        const [want, wantEnums] = arguments;
        const P = window.ChatProto;
        const out = [];
        for (const name of Object.keys(want)) {
          const have = P.schema[name];
          if (!have) { out.push("missing message " + name); continue; }
          const h = have.map(f => [f.num, f.name, f.type, !!f.repeated, !!f.optional, f.oneof || ""]);
          if (JSON.stringify(h) !== JSON.stringify(want[name])) {
            out.push(name + ": have " + JSON.stringify(h) + " want " + JSON.stringify(want[name]));
          }
        }
        for (const name of Object.keys(P.schema)) if (!(name in want)) out.push("extra message " + name);
        for (const name of Object.keys(wantEnums)) {
          const sorted = (o) => JSON.stringify(Object.entries(o || {}).sort());
          if (sorted(P.enums[name]) !== sorted(wantEnums[name])) {
            out.push("enum " + name + ": have " + JSON.stringify(P.enums[name]));
          }
        }
        for (const name of Object.keys(P.enums)) if (!(name in wantEnums)) out.push("extra enum " + name);
        return out;
        "#,
        vec![messages, enums],
    )
    .await;
    assert_eq!(
        mismatches,
        json!([]),
        "chat_proto.js differs from chat.proto"
    );

    let vectors: Value =
        serde_json::from_str(include_str!("../../spec/vectors/frames.json")).expect("frames.json");
    let report = js(
        &browser,
        r#"
        const vectors = arguments[0];
        const P = window.ChatProto;
        const failures = [];
        let checked = 0;
        const decoded = {};
        for (const v of vectors) {
          if (v.expect !== "frame" && v.expect !== "malformed") continue;
          const bytes = P.fromHex(v.hex);
          const [len, n] = P.readPrefix(bytes);
          const body = bytes.subarray(n, n + len);
          const type = v.direction === "client" ? "ClientFrame" : "ServerFrame";
          checked++;
          let f;
          try {
            f = P.decode(type, body);
          } catch (e) {
            if (v.expect === "frame" || !(e instanceof P.DecodeError)) failures.push(v.name + ": " + e);
            continue;
          }
          if (v.expect === "malformed") { failures.push(v.name + ": decoded"); continue; }
          decoded[v.name] = f;
          const again = P.toHex(P.encode(type, f));
          // Canonical vectors re-encode to the same bytes (the prefix is
          // checked by the Rust codec: the page writes minimal prefixes).
          if (v.canonical && again !== P.toHex(body)) {
            failures.push(v.name + ": re-encoded " + again + " from " + P.toHex(body));
          }
        }
        const push = decoded.server_message_push.message_push.message;
        const hist = decoded.client_get_history.get_history;
        return {
          checked, failures,
          hello: decoded.client_hello.hello,
          pushBody: decoded.server_message_push.body,
          push: [push.conversation_id, push.seq, push.message_id, push.text, push.kind],
          history: [hist.before_seq, hist.after_seq === undefined, hist.limit],
          members: decoded.client_create_conversation.create_conversation.member_ids,
          unknownBody: decoded.unknown_body_field.body === undefined,
          ping: decoded.unknown_field_in_ping.ping.nonce,
          // An explicit after_seq 0 is written: "from the start".
          afterZero: P.toHex(P.encode("GetHistory", {conversation_id: 9, after_seq: 0})),
          // Ids past 2^53 keep every digit.
          bigId: P.decode("Ping", P.encode("Ping", {nonce: "18446744073709551615"})).nonce,
        };
        "#,
        vec![vectors],
    )
    .await;
    assert_eq!(report["failures"], json!([]), "{report}");
    assert!(report["checked"].as_u64().unwrap_or(0) >= 55, "{report}");
    assert_eq!(
        report["hello"],
        json!({"protocol_version": 1, "client_name": "app", "client_version": "1.0",
               "capabilities": ["datagrams"]})
    );
    assert_eq!(report["pushBody"], json!("message_push"));
    assert_eq!(
        report["push"],
        json!([9, 42, (0x0193_0000_0000_1001u64).to_string(), "hi", 1])
    );
    assert_eq!(report["history"], json!([100, true, 50]));
    assert_eq!(report["members"], json!([2, 3]));
    assert_eq!(report["unknownBody"], json!(true));
    assert_eq!(report["ping"], json!(1));
    assert_eq!(report["afterZero"], json!("08091800"));
    assert_eq!(report["bigId"], json!("18446744073709551615"));

    browser.close().await.expect("close the browser");
    drop(driver);
    server.stop().await;
}

/// `spec/chat.proto` as the JS codec's schema would write it: per message,
/// `[number, name, type, repeated, optional, oneof]`; per enum, name → value.
fn proto_schema() -> (Value, Value) {
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec");
    let set = protox::compile([spec.join("chat.proto")], [&spec]).expect("chat.proto compiles");
    let mut messages = serde_json::Map::new();
    let mut enums = serde_json::Map::new();
    let enum_json = |e: &protox::prost_reflect::prost_types::EnumDescriptorProto| {
        let mut m = serde_json::Map::new();
        for v in &e.value {
            m.insert(v.name().to_string(), json!(v.number()));
        }
        Value::Object(m)
    };
    for file in &set.file {
        for e in &file.enum_type {
            enums.insert(e.name().to_string(), enum_json(e));
        }
        for m in &file.message_type {
            for e in &m.enum_type {
                enums.insert(format!("{}{}", m.name(), e.name()), enum_json(e));
            }
            let fields: Vec<Value> = m
                .field
                .iter()
                .map(|f| {
                    use protox::prost_reflect::prost_types::field_descriptor_proto::{Label, Type};
                    let ty = match f.r#type() {
                        Type::Uint64 => "uint64".to_string(),
                        Type::Uint32 => "uint32".to_string(),
                        Type::Bool => "bool".to_string(),
                        Type::String => "string".to_string(),
                        Type::Bytes => "bytes".to_string(),
                        Type::Fixed64 => "fixed64".to_string(),
                        Type::Enum => "enum".to_string(),
                        Type::Message => f
                            .type_name()
                            .rsplit('.')
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                        other => {
                            panic!("{}.{}: type {other:?} not in the codec", m.name(), f.name())
                        }
                    };
                    let optional = f.proto3_optional();
                    let oneof = match f.oneof_index {
                        Some(i) if !optional => m.oneof_decl[i as usize].name().to_string(),
                        _ => String::new(),
                    };
                    json!([
                        f.number(),
                        f.name(),
                        ty,
                        f.label() == Label::Repeated,
                        optional,
                        oneof
                    ])
                })
                .collect();
            messages.insert(m.name().to_string(), Value::Array(fields));
        }
    }
    (Value::Object(messages), Value::Object(enums))
}
