//! The public client: requests, the event stream, reconnect and resume.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use chat_protocol::{ConversationId, ErrorCode, UserId};
use tokio::sync::{Mutex, mpsc, watch};

use crate::connection::Conn;
use crate::cursors::Cursors;
use crate::error::{Error, Result};
use crate::options::ClientOptions;
use crate::url::Endpoint;

/// Something the server told the app.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
// Messages are by far the most frequent event; boxing them would add an
// allocation to every one to shrink the rare others.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// A message, at most once per (conversation, seq) and in seq order per
    /// conversation, whether it came live, from Sync or from a gap fetch.
    Message(pb::Message),
    /// A member's delivered or read cursor moved.
    Receipt(pb::ReceiptEvent),
    /// Someone is typing or stopped.
    Typing(pb::TypingEvent),
    /// A watched user's presence changed.
    Presence(pb::PresenceEvent),
    /// The server announced it is going away; the client reconnects.
    GoAway(pb::GoAway),
    /// The connection dropped. If reconnecting is on, `Reconnected` follows
    /// once the session is resumed; otherwise the client is finished.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// The session was resumed after a disconnect; missed messages were
    /// (or are being) delivered as `Message` events.
    Reconnected,
}

/// The app's side of the event stream.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the client is closed and drained.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// An event if one is ready, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

#[derive(Debug, Clone)]
struct Auth {
    user_id: u64,
    token: String,
}

#[derive(Debug)]
struct Inner {
    endpoint: Endpoint,
    options: ClientOptions,
    /// The current connection; `None` while reconnecting.
    conn: watch::Sender<Option<Arc<Conn>>>,
    auth: StdMutex<Option<Auth>>,
    /// Cursors, held while messages are emitted so that each
    /// conversation's events leave in order.
    cursors: Mutex<Cursors>,
    /// Conversations whose gap is being fetched.
    fetching: StdMutex<HashSet<u64>>,
    events: mpsc::Sender<Event>,
    closed: AtomicBool,
}

/// A connection to a chat server, shared by cloning.
///
/// Requests wait for the connection while the client reconnects; sends are
/// retried with the same `client_msg_id` until acknowledged, so a message is
/// stored once however often it is retried.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

fn std_lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values stay consistent across a panic (plain fields).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unexpected(reply: S) -> Error {
    Error::UnexpectedReply(format!("{reply:?}"))
}

/// Requests that may be sent again after a reconnect without changing their
/// effect.
fn safe_to_retry(body: &C) -> bool {
    !matches!(
        body,
        C::Register(_)
            | C::Login(_)
            | C::Logout(_)
            | C::Resume(_)
            | C::Hello(_)
            | C::CreateConversation(_)
            | C::AddMembers(_)
            | C::RemoveMember(_)
            | C::SetRole(_)
            | C::LeaveConversation(_)
            | C::UpdateConversation(_)
            | C::TransferOwnership(_)
    )
}

impl Client {
    /// Connects to `url` (`tcp://host:port`) and completes the handshake.
    pub async fn connect(url: &str, options: ClientOptions) -> Result<(Client, Events)> {
        let endpoint = Endpoint::parse(url)?;
        let (conn, pushes) = Conn::open(&endpoint, &options).await?;
        let (events_tx, events_rx) = mpsc::channel(options.event_buffer.max(1));
        let (conn_tx, _) = watch::channel(Some(conn.clone()));
        let inner = Arc::new(Inner {
            endpoint,
            cursors: Mutex::new(Cursors::new(options.max_held_per_conversation)),
            options,
            conn: conn_tx,
            auth: StdMutex::new(None),
            fetching: StdMutex::new(HashSet::new()),
            events: events_tx,
            closed: AtomicBool::new(false),
        });
        let client = Client { inner };
        client.run_connection(conn, pushes);
        Ok((client, Events { rx: events_rx }))
    }

    /// The logged-in user.
    pub fn user_id(&self) -> Option<UserId> {
        std_lock(&self.inner.auth)
            .as_ref()
            .map(|a| UserId(a.user_id))
    }

    /// The session token, to store for [`Client::resume`] after an app
    /// restart.
    pub fn session_token(&self) -> Option<String> {
        std_lock(&self.inner.auth).as_ref().map(|a| a.token.clone())
    }

    fn device(&self) -> Option<pb::DeviceInfo> {
        Some(pb::DeviceInfo {
            device_id: self.inner.options.device_id.clone(),
            platform: std::env::consts::OS.into(),
        })
    }

    fn logged_in(&self, ok: &pb::AuthOk) {
        *std_lock(&self.inner.auth) = Some(Auth {
            user_id: ok.user_id,
            token: ok.session_token.clone(),
        });
    }

    /// Creates an account and logs in.
    pub async fn register(
        &self,
        username: &str,
        password: &str,
        display_name: &str,
    ) -> Result<pb::AuthOk> {
        let body = C::Register(pb::Register {
            username: username.into(),
            password: password.into(),
            display_name: display_name.into(),
            device: self.device(),
        });
        match self.request(body).await? {
            S::AuthOk(ok) => {
                self.logged_in(&ok);
                Ok(ok)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Logs in with a password.
    pub async fn login(&self, username: &str, password: &str) -> Result<pb::AuthOk> {
        let body = C::Login(pb::Login {
            username: username.into(),
            password: password.into(),
            device: self.device(),
        });
        match self.request(body).await? {
            S::AuthOk(ok) => {
                self.logged_in(&ok);
                Ok(ok)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Logs in with a stored token and catches up from the cursors set with
    /// [`Client::set_cursor`]; missed messages arrive as events.
    pub async fn resume(&self, token: &str) -> Result<pb::ResumeOk> {
        let cursors = self.inner.cursors.lock().await.all();
        let body = C::Resume(pb::Resume {
            session_token: token.into(),
            device: self.device(),
            cursors,
        });
        match self.request(body).await? {
            S::ResumeOk(ok) => {
                if let Some(auth) = &ok.auth {
                    self.logged_in(auth);
                }
                if let Some(sync) = ok.sync.clone() {
                    self.apply_sync(sync).await;
                }
                Ok(ok)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Logs out (this device, or every device of the user).
    pub async fn logout(&self, all_devices: bool) -> Result<()> {
        self.request(C::Logout(pb::Logout { all_devices })).await?;
        *std_lock(&self.inner.auth) = None;
        Ok(())
    }

    /// The direct conversation with `other`, created if needed.
    pub async fn create_direct(&self, other: UserId) -> Result<pb::Conversation> {
        self.create(pb::ConversationKind::Direct, &[other], "")
            .await
    }

    /// A new group with the caller as owner.
    pub async fn create_group(&self, title: &str, members: &[UserId]) -> Result<pb::Conversation> {
        self.create(pb::ConversationKind::Group, members, title)
            .await
    }

    /// A new broadcast channel with the caller as owner.
    pub async fn create_channel(&self, title: &str) -> Result<pb::Conversation> {
        self.create(pb::ConversationKind::Channel, &[], title).await
    }

    async fn create(
        &self,
        kind: pb::ConversationKind,
        members: &[UserId],
        title: &str,
    ) -> Result<pb::Conversation> {
        let body = C::CreateConversation(pb::CreateConversation {
            kind: kind as i32,
            member_ids: members.iter().map(|u| u.0).collect(),
            title: title.into(),
        });
        let c = self.expect_conversation(body).await?;
        // Everything from the start of a new conversation is wanted.
        self.inner.cursors.lock().await.start(c.conversation_id, 0);
        Ok(c)
    }

    async fn expect_conversation(&self, body: C) -> Result<pb::Conversation> {
        match self.request(body).await? {
            S::Conversation(c) => Ok(c),
            other => Err(unexpected(other)),
        }
    }

    /// Adds members to a group (admins only).
    pub async fn add_members(
        &self,
        conversation: ConversationId,
        users: &[UserId],
    ) -> Result<pb::Conversation> {
        self.expect_conversation(C::AddMembers(pb::AddMembers {
            conversation_id: conversation.0,
            user_ids: users.iter().map(|u| u.0).collect(),
        }))
        .await
    }

    /// Removes a member from a group (admins only).
    pub async fn remove_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<pb::Conversation> {
        self.expect_conversation(C::RemoveMember(pb::RemoveMember {
            conversation_id: conversation.0,
            user_id: user.0,
        }))
        .await
    }

    /// Leaves a group or channel.
    pub async fn leave(&self, conversation: ConversationId) -> Result<()> {
        self.request(C::LeaveConversation(pb::LeaveConversation {
            conversation_id: conversation.0,
        }))
        .await?;
        self.inner.cursors.lock().await.remove(conversation.0);
        Ok(())
    }

    /// A conversation with its members.
    pub async fn get_conversation(&self, conversation: ConversationId) -> Result<pb::Conversation> {
        self.expect_conversation(C::GetConversation(pb::GetConversation {
            conversation_id: conversation.0,
        }))
        .await
    }

    /// The user's conversations, most recently active first, with unread
    /// counts.
    pub async fn list_conversations(&self, limit: u32) -> Result<pb::ConversationList> {
        match self
            .request(C::ListConversations(pb::ListConversations {
                limit,
                before_activity_ms: 0,
            }))
            .await?
        {
            S::ConversationList(l) => Ok(l),
            other => Err(unexpected(other)),
        }
    }

    /// Sends a text message.
    pub async fn send_text(&self, conversation: ConversationId, text: &str) -> Result<pb::SendAck> {
        self.send(pb::SendMessage {
            conversation_id: conversation.0,
            text: text.into(),
            ..Default::default()
        })
        .await
    }

    /// Sends a message. An empty `client_msg_id` is filled with a random one;
    /// the send is retried with it across reconnects and on retryable
    /// refusals until acknowledged or `send_retry_timeout` passes.
    pub async fn send(&self, mut msg: pb::SendMessage) -> Result<pb::SendAck> {
        if msg.client_msg_id.is_empty() {
            msg.client_msg_id = format!("{:032x}", rand::random::<u128>());
        }
        let deadline = Instant::now() + self.inner.options.send_retry_timeout;
        loop {
            let err = match self.request(C::SendMessage(msg.clone())).await {
                Ok(S::SendAck(ack)) => return Ok(ack),
                Ok(other) => return Err(unexpected(other)),
                Err(e) => e,
            };
            let wait = match &err {
                Error::Server {
                    code,
                    retry_after_ms,
                    ..
                } if code.is_retryable() => {
                    Duration::from_millis(u64::from(*retry_after_ms).max(100))
                }
                Error::Disconnected(_) | Error::Timeout => Duration::from_millis(50),
                _ => return Err(err),
            };
            if Instant::now() + wait > deadline {
                return Err(err);
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// The newest messages, newest first (opening a conversation).
    pub async fn history_latest(
        &self,
        conversation: ConversationId,
        limit: u32,
    ) -> Result<pb::MessagePage> {
        self.history(conversation, 0, None, limit).await
    }

    /// Messages before `before_seq`, newest first (scrolling up).
    pub async fn history_before(
        &self,
        conversation: ConversationId,
        before_seq: u64,
        limit: u32,
    ) -> Result<pb::MessagePage> {
        self.history(conversation, before_seq, None, limit).await
    }

    /// Messages after `after_seq`, oldest first (catching up; 0 reads from
    /// the start).
    pub async fn history_after(
        &self,
        conversation: ConversationId,
        after_seq: u64,
        limit: u32,
    ) -> Result<pb::MessagePage> {
        self.history(conversation, 0, Some(after_seq), limit).await
    }

    /// A page of history; see `spec/messages.md`, "GetHistory".
    async fn history(
        &self,
        conversation: ConversationId,
        before_seq: u64,
        after_seq: Option<u64>,
        limit: u32,
    ) -> Result<pb::MessagePage> {
        match self
            .request(C::GetHistory(pb::GetHistory {
                conversation_id: conversation.0,
                before_seq,
                after_seq,
                limit,
            }))
            .await?
        {
            S::MessagePage(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// Fetches everything missed since the tracked cursors; the messages
    /// arrive as events, in order, without duplicates.
    pub async fn sync(&self) -> Result<()> {
        let cursors = self.inner.cursors.lock().await.all();
        let body = C::Sync(pb::Sync {
            cursors,
            limit_per_conversation: self.inner.options.sync_limit_per_conversation,
        });
        match self.request(body).await? {
            S::SyncResult(r) => {
                self.apply_sync(r).await;
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }

    /// Marks everything up to `seq` as read.
    pub async fn mark_read(&self, conversation: ConversationId, seq: u64) -> Result<()> {
        self.request(C::MarkRead(pb::MarkRead {
            conversation_id: conversation.0,
            seq,
        }))
        .await
        .map(drop)
    }

    /// Any request; an Error reply becomes [`Error::Server`]. Requests that
    /// are safe to repeat are retried across a reconnect.
    pub async fn request(&self, body: C) -> Result<S> {
        let retry = safe_to_retry(&body);
        let deadline = Instant::now() + self.inner.options.request_timeout;
        loop {
            let conn = self.current_conn(deadline).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            match conn.request(body.clone(), left).await {
                Err(Error::Disconnected(_)) if retry && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    async fn current_conn(&self, deadline: Instant) -> Result<Arc<Conn>> {
        let mut rx = self.inner.conn.subscribe();
        loop {
            if self.inner.closed.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            if let Some(c) = rx.borrow_and_update().clone() {
                if !c.is_closed() {
                    return Ok(c);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Closed),
                Err(_) => return Err(Error::Disconnected("not connected".into())),
            }
        }
    }

    /// The cursor of a conversation: every message up to it was delivered.
    pub async fn cursor(&self, conversation: ConversationId) -> u64 {
        self.inner.cursors.lock().await.get(conversation.0)
    }

    /// Restores a cursor saved by the app.
    pub async fn set_cursor(&self, conversation: ConversationId, seq: u64) {
        self.inner.cursors.lock().await.set(conversation.0, seq);
    }

    /// Every cursor, for the app to save.
    pub async fn cursors(&self) -> Vec<pb::Cursor> {
        self.inner.cursors.lock().await.all()
    }

    /// Closes the connection and stops reconnecting.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.conn.send_replace(None);
    }

    // ---- connection lifecycle -------------------------------------------

    fn run_connection(&self, conn: Arc<Conn>, mut pushes: mpsc::Receiver<pb::ServerFrame>) {
        let client = self.clone();
        let heartbeat =
            Duration::from_millis(u64::from(conn.welcome.heartbeat_interval_ms.max(1000)));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(heartbeat);
            tick.tick().await;
            let mut goaway_delay = None;
            loop {
                tokio::select! {
                    push = pushes.recv() => match push {
                        Some(frame) => {
                            if let Some(S::GoAway(g)) = &frame.body {
                                goaway_delay = Some(Duration::from_millis(u64::from(g.reconnect_after_ms)));
                            }
                            client.on_push(&conn, frame).await;
                        }
                        None => break,
                    },
                    _ = tick.tick() => conn.send_oneway(C::Ping(pb::Ping { nonce: 0 })),
                }
                if client.inner.closed.load(Ordering::Acquire) {
                    return;
                }
            }
            client
                .emit(Event::Disconnected {
                    reason: "connection closed".into(),
                })
                .await;
            // Only the connection that just ended is cleared.
            client.inner.conn.send_if_modified(|c| match c {
                Some(current) if Arc::ptr_eq(current, &conn) => {
                    *c = None;
                    true
                }
                _ => false,
            });
            if client.inner.options.reconnect && !client.inner.closed.load(Ordering::Acquire) {
                client.reconnect(goaway_delay).await;
            }
        });
    }

    async fn reconnect(&self, first_delay: Option<Duration>) {
        let opts = &self.inner.options;
        let mut delay = first_delay
            .unwrap_or(opts.reconnect_min_delay)
            .max(opts.reconnect_min_delay);
        loop {
            if self.inner.closed.load(Ordering::Acquire) {
                return;
            }
            let jitter = 0.5 + rand::random::<f64>();
            tokio::time::sleep(delay.mul_f64(jitter)).await;
            delay = (delay * 2).min(opts.reconnect_max_delay);
            let Ok((conn, pushes)) = Conn::open(&self.inner.endpoint, opts).await else {
                continue;
            };
            self.run_connection(conn.clone(), pushes);
            let auth = std_lock(&self.inner.auth).clone();
            if let Some(auth) = auth {
                let cursors = self.inner.cursors.lock().await.all();
                let resume = C::Resume(pb::Resume {
                    session_token: auth.token.clone(),
                    device: self.device(),
                    cursors,
                });
                match conn.request(resume, opts.request_timeout).await {
                    Ok(S::ResumeOk(ok)) => {
                        self.inner.conn.send_replace(Some(conn));
                        if let Some(sync) = ok.sync {
                            self.apply_sync(sync).await;
                        }
                    }
                    Err(Error::Server {
                        code: ErrorCode::TokenInvalid,
                        message,
                        ..
                    }) => {
                        *std_lock(&self.inner.auth) = None;
                        self.inner.closed.store(true, Ordering::Release);
                        self.emit(Event::Disconnected {
                            reason: format!("session ended: {message}"),
                        })
                        .await;
                        return;
                    }
                    // The new connection failed too; its task reconnects.
                    _ => return,
                }
            } else {
                self.inner.conn.send_replace(Some(conn));
            }
            self.emit(Event::Reconnected).await;
            return;
        }
    }

    async fn emit(&self, event: Event) {
        let _ = self.inner.events.send(event).await;
    }

    async fn on_push(&self, conn: &Arc<Conn>, frame: pb::ServerFrame) {
        match frame.body {
            Some(S::MessagePush(p)) => {
                if let Some(m) = p.message {
                    let gaps = self.offer(vec![m]).await;
                    self.fetch_gaps(gaps);
                }
            }
            Some(S::Ping(p)) => conn.send_oneway(C::Pong(pb::Pong { nonce: p.nonce })),
            Some(S::ReceiptEvent(r)) => self.emit(Event::Receipt(r)).await,
            Some(S::TypingEvent(t)) => self.emit(Event::Typing(t)).await,
            Some(S::PresenceEvent(p)) => self.emit(Event::Presence(p)).await,
            Some(S::GoAway(g)) => self.emit(Event::GoAway(g)).await,
            _ => {}
        }
    }

    /// Emits what can be emitted in order; returns the conversations that
    /// have a gap to fetch.
    async fn offer(&self, messages: Vec<pb::Message>) -> Vec<u64> {
        let mut gaps = Vec::new();
        {
            let mut cursors = self.inner.cursors.lock().await;
            for m in messages {
                let conversation = m.conversation_id;
                let offered = cursors.offer(m);
                for m in offered.emit {
                    let _ = self.inner.events.send(Event::Message(m)).await;
                }
                if offered.missing_after.is_some() {
                    gaps.push(conversation);
                }
            }
        }
        gaps
    }

    /// Starts a fetch for each conversation with a gap, one at a time per
    /// conversation.
    fn fetch_gaps(&self, gaps: Vec<u64>) {
        for conversation in gaps {
            if std_lock(&self.inner.fetching).insert(conversation) {
                let client = self.clone();
                tokio::spawn(async move {
                    client.fill_gap(conversation).await;
                    std_lock(&client.inner.fetching).remove(&conversation);
                });
            }
        }
    }

    /// Fetches history after the cursor until the conversation is whole.
    async fn fill_gap(&self, conversation: u64) {
        loop {
            let after = self.inner.cursors.lock().await.get(conversation);
            let page = match self
                .history_after(ConversationId(conversation), after, 200)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(conversation, cause = %e, "gap fetch failed; the next sync repairs it");
                    return;
                }
            };
            let more = page.has_more;
            let got = !page.messages.is_empty();
            // Further gaps found here are this loop's next turns.
            let _ = self.offer(page.messages).await;
            let now = self.inner.cursors.lock().await.get(conversation);
            if !more || !got || now == after {
                return;
            }
        }
    }

    async fn apply_sync(&self, result: pb::SyncResult) {
        {
            let mut cursors = self.inner.cursors.lock().await;
            for removed in &result.removed_conversation_ids {
                cursors.remove(*removed);
            }
            for gap in &result.gaps {
                cursors.start(gap.conversation_id, gap.from_seq.saturating_sub(1));
            }
        }
        for gap in result.gaps {
            let conversation = gap.conversation_id;
            let mut gaps = self.offer(gap.messages).await;
            if gap.truncated {
                gaps.push(conversation);
            }
            self.fetch_gaps(gaps);
        }
    }
}
