//! Push notifications for users with no connected device.
//!
//! chatd holds no APNs or FCM credentials. It POSTs one JSON document per
//! notification to a push gateway the operator runs (`push_gateway_url`),
//! which holds the credentials and forwards to the providers; without a
//! gateway configured nothing is computed.
//!
//! The path of a notification:
//!
//! 1. Once a user message in a direct chat or group is durable, the owner
//!    shard hands its recipients (not the sender; never for channels) to the
//!    shards that keep their presence ([`crate::presence`]).
//! 2. Each presence shard keeps the users with no connected session and
//!    offers them to the push queue ([`Push::offer`], bounded by
//!    `push_queue`; when it is full the notification is dropped and counted
//!    in `chatd_push_dropped_total`: the message itself is stored and
//!    arrives with the next sync).
//! 3. The push thread reads the user's registrations (the `user_tokens`
//!    keyspace: a device's push token lives with its session token, so
//!    logging out or the session expiring ends its notifications), and
//!    POSTs to the gateway, at most [`MAX_IN_FLIGHT`] at once, retrying
//!    failures [`ATTEMPTS`] times. Tokens the gateway reports as rejected
//!    are deleted.
//!
//! Notifications survive a crash: the message's batch also writes a
//! `push_outbox` entry (conversation ‖ seq), removed once every recipient's
//! notification has been handed to the gateway or found unneeded (an
//! [`OutboxTicket`] inside the shared [`Notice`] deletes it when the last
//! holder lets go). On start the push thread reads the entries left behind
//! (at most [`OUTBOX_RECOVERY_MAX`], none older than [`OUTBOX_MAX_AGE`]) and
//! notifies every member but the sender, since nobody is connected yet. So
//! a notification may arrive twice after a crash, never zero times unless
//! the queue overflowed (counted) or the gateway kept failing.
//!
//! The gateway is `https://` (verified against the webpki roots plus
//! `push_gateway_ca`) or `http://`. The request (`Content-Type:
//! application/json`, and `Authorization: Bearer <push_gateway_token>` when
//! one is configured):
//!
//! ```json
//! {"notification": {"user_id": 2, "conversation_id": 7, "conversation_kind": "direct",
//!   "title": "", "seq": 12, "message_id": "1234", "sender_id": 1,
//!   "sent_at_ms": 1700000000000, "preview": "hello", "has_media": false},
//!  "devices": [{"provider": "fcm", "token": "…", "device_id": "phone"}]}
//! ```
//!
//! A 2xx answer may carry `{"rejected": ["token", …]}`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chat_protocol::pb;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderValue;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::config::{Config, Secret};
use crate::records::PushRegistration;
use crate::storage::writer::{Batch, Writer};
use crate::storage::{Store, keys};

/// Gateway requests in flight at once.
pub const MAX_IN_FLIGHT: usize = 16;
/// Tries per notification (connection failures and 5xx answers).
pub const ATTEMPTS: u32 = 3;
/// Time one gateway request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Characters of message text in a preview.
const PREVIEW_CHARS: usize = 100;
/// Longest device token accepted.
pub const TOKEN_MAX: usize = 4096;
/// Unfinished notifications read back from the outbox per start.
pub const OUTBOX_RECOVERY_MAX: usize = 10_000;
/// Unfinished notifications older than this are dropped after a restart
/// instead of sent.
pub const OUTBOX_MAX_AGE: Duration = Duration::from_secs(3600);

/// A message's `push_outbox` entry, deleted when the ticket is dropped, i.e.
/// when nothing holds the message's [`Notice`] any more. While the push
/// thread is stopping, dropped tickets keep their entries for the next start.
#[derive(Debug)]
pub struct OutboxTicket {
    key: [u8; 16],
    done: mpsc::Sender<[u8; 16]>,
    stopping: Arc<AtomicBool>,
    armed: bool,
}

impl OutboxTicket {
    /// Leaves the entry in the outbox.
    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for OutboxTicket {
    fn drop(&mut self) {
        if self.armed && !self.stopping.load(Ordering::Acquire) {
            // A full queue keeps the entry: the notification is sent again
            // after a restart, which is better than never.
            let _ = self.done.try_send(self.key);
        }
    }
}

/// What a notification says about a message; shared by its recipients.
#[derive(Debug, Serialize)]
pub struct Notice {
    /// Conversation.
    pub conversation_id: u64,
    /// `direct` or `group`.
    pub conversation_kind: &'static str,
    /// The group's title (empty for direct chats).
    pub title: String,
    /// Seq of the message.
    pub seq: u64,
    /// Message id, as a decimal string (JSON numbers lose 64-bit precision).
    pub message_id: String,
    /// Sender.
    pub sender_id: u64,
    /// When it was sent, Unix ms.
    pub sent_at_ms: u64,
    /// The start of the text, unless `push_preview` is off or the message is
    /// end-to-end encrypted.
    pub preview: String,
    /// Whether it carries media.
    pub has_media: bool,
    /// The message's outbox entry, if it has one.
    #[serde(skip)]
    pub outbox: Option<OutboxTicket>,
}

impl Notice {
    /// The notice for a stored user message, or `None` for conversations
    /// that do not notify (channels).
    pub fn of(m: &pb::Message, kind: i32, title: &str, preview: bool) -> Option<Self> {
        let conversation_kind = match pb::ConversationKind::try_from(kind) {
            Ok(pb::ConversationKind::Direct) => "direct",
            Ok(pb::ConversationKind::Group) => "group",
            _ => return None,
        };
        let preview = if preview && m.ciphertext.is_empty() {
            m.text.chars().take(PREVIEW_CHARS).collect()
        } else {
            String::new()
        };
        Some(Self {
            conversation_id: m.conversation_id,
            conversation_kind,
            title: title.to_string(),
            seq: m.seq,
            message_id: m.message_id.to_string(),
            sender_id: m.sender_id,
            sent_at_ms: m.sent_at_ms,
            preview,
            has_media: m.media.is_some(),
            outbox: None,
        })
    }
}

type Queued = (u64, Arc<Notice>);

/// The shards' side of the push queue.
#[derive(Debug, Clone)]
pub struct Push {
    tx: Option<mpsc::Sender<Queued>>,
    outbox: Option<Outbox>,
}

/// Makes [`OutboxTicket`]s.
#[derive(Debug, Clone)]
struct Outbox {
    done: mpsc::Sender<[u8; 16]>,
    stopping: Arc<AtomicBool>,
}

impl Outbox {
    fn ticket(&self, conversation: u64, seq: u64) -> OutboxTicket {
        OutboxTicket {
            key: keys::pair(conversation, seq),
            done: self.done.clone(),
            stopping: self.stopping.clone(),
            armed: true,
        }
    }
}

impl Push {
    /// A queue that takes nothing (no gateway configured).
    pub fn disabled() -> Self {
        Self {
            tx: None,
            outbox: None,
        }
    }

    /// Adds the outbox entry of message `seq` of `conversation` to `batch`
    /// and returns the ticket that deletes it, when notifications are on.
    pub fn stage(&self, conversation: u64, seq: u64, batch: &mut Batch) -> Option<OutboxTicket> {
        let outbox = self.outbox.as_ref()?;
        batch.put_outbox(conversation, seq);
        Some(outbox.ticket(conversation, seq))
    }

    /// Whether notifications are sent at all.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a notification for `user`; drops it if the queue is full.
    pub fn offer(&self, user: u64, notice: &Arc<Notice>) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send((user, notice.clone())).is_err() {
            metrics::counter!("chatd_push_dropped_total").increment(1);
        }
    }
}

/// The push thread; it ends when every [`Push`] handle is gone and the
/// requests in flight are done.
#[derive(Debug)]
pub struct PushThread(Option<std::thread::JoinHandle<()>>);

impl PushThread {
    /// Waits for the thread to end.
    pub fn join(self) {
        if let Some(h) = self.0 {
            let _ = h.join();
        }
    }
}

/// Starts the push thread if a gateway is configured.
pub fn start(config: &Config, store: Store, writer: Writer) -> std::io::Result<(Push, PushThread)> {
    let Some(url) = config.push_gateway_url.as_deref() else {
        return Ok((Push::disabled(), PushThread(None)));
    };
    let gateway = Gateway::new(
        url,
        config.push_gateway_ca.as_deref(),
        config.push_gateway_token.as_ref(),
    )?;
    let queue = config.push_queue.max(1);
    let (tx, rx) = mpsc::channel(queue);
    let (done, finished) = mpsc::channel(queue);
    let outbox = Outbox {
        done,
        stopping: Arc::new(AtomicBool::new(false)),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let worker = Worker {
        gateway: Arc::new(gateway),
        store,
        writer,
        permits: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        tasks: tokio::task::JoinSet::new(),
        preview: config.push_preview,
        clock: config.clock.clone(),
    };
    let recovery = outbox.clone();
    let handle = std::thread::Builder::new()
        .name("chatd-push".into())
        .spawn(move || runtime.block_on(run(worker, rx, recovery, finished)))?;
    let push = Push {
        tx: Some(tx),
        outbox: Some(outbox),
    };
    Ok((push, PushThread(Some(handle))))
}

/// The gateway and how chatd reaches it: plain HTTP, or HTTPS verified
/// against the webpki roots plus `push_gateway_ca`.
struct Gateway {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: hyper::Uri,
    /// `Bearer <push_gateway_token>`, marked sensitive.
    authorization: Option<HeaderValue>,
    /// Whether the last notification failed every try: the first failure
    /// after a success is logged, the rest only counted.
    failing: AtomicBool,
}

impl Gateway {
    fn new(url: &str, ca: Option<&Path>, token: Option<&Secret>) -> std::io::Result<Self> {
        let invalid =
            |detail: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, detail);
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| invalid(format!("push_gateway_url {url:?}: {e}")))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") => {
                let loopback = uri.host().is_some_and(|h| {
                    h == "localhost"
                        || h.trim_matches(['[', ']'])
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                });
                if token.is_some() && !loopback {
                    tracing::warn!(
                        "push_gateway_token is sent in clear text to an http:// gateway on another host; use https://"
                    );
                }
            }
            _ => {
                return Err(invalid(
                    "push_gateway_url must be an https:// or http:// URL".into(),
                ));
            }
        }
        let authorization = token
            .map(|t| {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", t.expose()))
                    .map_err(|_| invalid("push_gateway_token must be printable ASCII".into()))?;
                v.set_sensitive(true);
                Ok::<_, std::io::Error>(v)
            })
            .transpose()?;
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = ca {
            let bad = |e: &dyn std::fmt::Display| {
                invalid(format!("push_gateway_ca {}: {e}", path.display()))
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(&e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(&e))?;
            if certs.is_empty() {
                return Err(bad(&"no certificate found"));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| bad(&e))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(format!("push gateway TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            uri,
            authorization,
            failing: AtomicBool::new(false),
        })
    }
}

#[derive(Serialize)]
struct Device<'a> {
    provider: &'a str,
    token: &'a str,
    device_id: &'a str,
}

#[derive(Serialize)]
struct Request<'a> {
    notification: &'a Notice,
    user_id: u64,
    devices: Vec<Device<'a>>,
}

#[derive(Deserialize, Default)]
struct Answer {
    #[serde(default)]
    rejected: Vec<String>,
}

/// What the push thread works with.
struct Worker {
    gateway: Arc<Gateway>,
    store: Store,
    writer: Writer,
    permits: Arc<tokio::sync::Semaphore>,
    tasks: tokio::task::JoinSet<()>,
    /// `push_preview`.
    preview: bool,
    /// For the outbox's age limit and token expiry.
    clock: Clock,
}

impl Worker {
    /// Sends `notice` to `user`'s devices, if it has any, once fewer than
    /// [`MAX_IN_FLIGHT`] requests are under way.
    async fn dispatch(&mut self, user: u64, notice: Arc<Notice>) {
        while self.tasks.try_join_next().is_some() {}
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return;
        };
        // A fast local read on this thread, not a shard's.
        let regs = match live_registrations(&self.store, user, self.clock.now_ms()) {
            Ok(r) if r.is_empty() => return,
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(cause = %e, "reading push registrations failed");
                return;
            }
        };
        let (gateway, writer) = (self.gateway.clone(), self.writer.clone());
        self.tasks.spawn(async move {
            let _permit = permit;
            deliver(&gateway, &writer, user, &notice, &regs).await;
        });
    }

    /// Notifies the recipients of the messages left in the outbox by the
    /// previous run.
    async fn recover(&mut self, outbox: &Outbox) {
        let entries = match self.store.push_outbox(OUTBOX_RECOVERY_MAX) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(cause = %e, "reading the push outbox failed");
                return;
            }
        };
        if !entries.is_empty() {
            tracing::info!(
                messages = entries.len(),
                "resuming unfinished push notifications"
            );
        }
        let oldest = self
            .clock
            .now_ms()
            .saturating_sub(OUTBOX_MAX_AGE.as_millis() as u64);
        for (conversation, seq) in entries {
            // Dropping the ticket without sending deletes the entry.
            let ticket = outbox.ticket(conversation, seq);
            let found = self.store.message(conversation, seq).and_then(|m| {
                let c = self.store.conversation(conversation)?;
                let members = self.store.members(conversation)?;
                Ok(m.zip(c).map(|(m, c)| (m, c, members)))
            });
            let (message, record, members) = match found {
                Ok(Some(found)) => found,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(cause = %e, "reading an outbox message failed");
                    ticket.keep();
                    continue;
                }
            };
            if message.sent_at_ms < oldest {
                continue;
            }
            let notice = Notice::of(&message, record.kind, &record.title, self.preview);
            let Some(mut notice) = notice else {
                continue;
            };
            notice.outbox = Some(ticket);
            let notice = Arc::new(notice);
            let now = self.clock.now_ms();
            for (user, member) in members {
                // As when the message was stored: each member's level decides.
                let mentioned = message.mention_everyone || message.mention_ids.contains(&user);
                if user != message.sender_id && member.notified(mentioned, now) {
                    self.dispatch(user, notice.clone()).await;
                }
            }
        }
    }
}

async fn run(
    mut worker: Worker,
    mut rx: mpsc::Receiver<Queued>,
    outbox: Outbox,
    finished: mpsc::Receiver<[u8; 16]>,
) {
    let deletes = tokio::spawn(forget_finished(finished, worker.writer.clone()));
    worker.recover(&outbox).await;
    while let Some((user, notice)) = rx.recv().await {
        worker.dispatch(user, notice).await;
    }
    // Stopping: what is in flight gets a bounded time; the rest, and the
    // outbox entries of everything unfinished, wait for the next start.
    let drain = async { while worker.tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    outbox.stopping.store(true, Ordering::Release);
    drop((worker, rx, outbox));
    let _ = tokio::time::timeout(Duration::from_secs(5), deletes).await;
}

/// Deletes the outbox entries of finished notifications, many per write.
async fn forget_finished(mut finished: mpsc::Receiver<[u8; 16]>, writer: Writer) {
    let mut keys = Vec::new();
    while finished.recv_many(&mut keys, 1024).await > 0 {
        let mut batch = Batch::with_capacity(keys.len() * Batch::delete_bytes(16));
        for key in keys.drain(..) {
            batch.delete_outbox(key);
        }
        let n = batch.len();
        if let Err(e) = writer.write(batch).await {
            tracing::warn!(cause = %e, "clearing the push outbox failed");
            return;
        }
        metrics::counter!("chatd_push_outbox_cleared_total").increment(n as u64);
    }
}

/// The user's registrations whose session is still valid.
fn live_registrations(
    store: &Store,
    user: u64,
    now: u64,
) -> Result<Vec<(Vec<u8>, PushRegistration)>, crate::storage::StorageError> {
    let mut out = Vec::new();
    for (hash, reg) in store.push_registrations(user)? {
        if store
            .token(&hash)?
            .is_some_and(|t| t.expires_at_ms > now && t.user_id == user)
        {
            out.push((hash, reg));
        }
    }
    Ok(out)
}

async fn deliver(
    gateway: &Gateway,
    writer: &Writer,
    user: u64,
    notice: &Notice,
    regs: &[(Vec<u8>, PushRegistration)],
) {
    let request = Request {
        notification: notice,
        user_id: user,
        devices: regs
            .iter()
            .map(|(_, r)| Device {
                provider: &r.provider,
                token: &r.token,
                device_id: &r.device_id,
            })
            .collect(),
    };
    let Ok(body) = serde_json::to_vec(&request) else {
        return;
    };
    let body = Bytes::from(body);
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=ATTEMPTS {
        let mut req = hyper::Request::post(gateway.uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(auth) = &gateway.authorization {
            req = req.header(hyper::header::AUTHORIZATION, auth.clone());
        }
        let Ok(req) = req.body(Full::new(body.clone())) else {
            return;
        };
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let resp = gateway
                .client
                .request(req)
                .await
                .map_err(|e| error_chain(&e))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, bytes))
        })
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
        let cause = match outcome {
            Ok((status, bytes)) if status.is_success() => {
                metrics::counter!("chatd_push_sent_total").increment(1);
                if gateway.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("push gateway reachable again");
                }
                let answer: Answer = serde_json::from_slice(&bytes).unwrap_or_default();
                forget_rejected(writer, user, regs, &answer.rejected).await;
                return;
            }
            Ok((status, _)) if status.is_client_error() => {
                tracing::warn!(%status, "push gateway refused a notification");
                metrics::counter!("chatd_push_failed_total").increment(1);
                return;
            }
            Ok((status, _)) => format!("answered {status}"),
            Err(e) => e,
        };
        tracing::debug!(%cause, attempt, "push gateway request failed");
        if attempt == ATTEMPTS {
            if !gateway.failing.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    %cause,
                    "push gateway failing; notifications failed from now on are counted in chatd_push_failed_total"
                );
            }
            break;
        }
        tokio::time::sleep(delay).await;
        delay *= 5;
    }
    metrics::counter!("chatd_push_failed_total").increment(1);
}

/// An error and its sources, as one line: a failed connection says why
/// (refused, a certificate not trusted, ...).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn forget_rejected(
    writer: &Writer,
    user: u64,
    regs: &[(Vec<u8>, PushRegistration)],
    rejected: &[String],
) {
    let mut batch = Batch::new();
    for (hash, reg) in regs {
        if rejected.contains(&reg.token) {
            // The session stays; only its push address goes.
            batch.set_push_registration(user, hash, None);
        }
    }
    if !batch.is_empty() {
        if let Err(e) = writer.write(batch).await {
            tracing::warn!(cause = %e, "forgetting rejected push tokens failed");
        }
    }
}
