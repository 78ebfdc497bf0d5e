//! The public client: one method per chat/1 request, plus the raw
//! [`Client::request`] for the others.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use chat_protocol::{ConversationId, UserId};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::connection::Conn;
use crate::cursors::Cursors;
use crate::error::{Error, Result};
use crate::events::{EventSink, Events};
use crate::inner::{Inner, Link};
use crate::lock;
use crate::options::ClientOptions;
use crate::url::Endpoint;

/// First wait before re-sending a message after a transient failure; it
/// doubles per attempt up to [`SEND_BACKOFF_MAX`].
const SEND_BACKOFF_MIN: Duration = Duration::from_millis(50);
const SEND_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A connection to a chat server, shared by cloning (`Send + Sync`; clones
/// share one connection).
///
/// Requests issued while the client reconnects wait for the connection
/// (within [`ClientOptions::request_timeout`]). Dropping the last clone
/// closes the client, like [`Client::close`].
#[derive(Debug, Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

/// Owned by the app's clones only (the background tasks hold `Inner`), so
/// its drop means the app is done with the client.
#[derive(Debug)]
struct Handle {
    inner: Arc<Inner>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.shutdown();
    }
}

impl Client {
    /// Connects to `url` and completes the Hello handshake. The returned
    /// [`Events`] must be read continuously.
    ///
    /// The scheme picks the transport: `tcp://host:port`,
    /// `tls://host:port`, `quic://host:port`, `ws://host:port/ws`,
    /// `wss://host:port/ws` (`spec/README.md`, "Transports"). Reconnects
    /// use the same URL. An untrusted certificate fails with
    /// [`Error::Tls`]; see [`ClientOptions::trusted_certs_pem`].
    pub async fn connect(url: &str, options: ClientOptions) -> Result<(Client, Events)> {
        let endpoint = Endpoint::parse(url)?;
        let (conn, pushes) = Conn::open(&endpoint, &options).await?;
        let (events_tx, events_rx) = mpsc::channel(options.event_buffer.max(1));
        let cursors = Arc::new(Mutex::new(Cursors::new(options.max_held_per_conversation)));
        let inner = Arc::new(Inner {
            endpoint,
            options,
            link: watch::Sender::new(Link::Connecting),
            auth: Mutex::new(None),
            order: tokio::sync::Mutex::new(()),
            cursors: cursors.clone(),
            fetching: Mutex::new(HashSet::new()),
            watching: Mutex::new(HashSet::new()),
            events: EventSink::new(events_tx),
        });
        inner.start(conn, pushes);
        let client = Client {
            handle: Arc::new(Handle { inner }),
        };
        Ok((client, Events::new(events_rx, cursors)))
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.handle.inner
    }

    async fn call(&self, body: C) -> Result<S> {
        self.inner().request(body).await
    }

    /// The logged-in user, if any.
    pub fn user_id(&self) -> Option<UserId> {
        self.inner().auth().map(|a| UserId(a.user_id))
    }

    /// The session token, to store (securely) for [`Client::resume`] after
    /// an app restart.
    pub fn session_token(&self) -> Option<String> {
        self.inner().auth().map(|a| a.token)
    }

    /// What the server announced in Welcome (limits, heartbeat), while
    /// connected.
    pub fn welcome(&self) -> Option<pb::Welcome> {
        self.inner().conn().map(|c| c.welcome().clone())
    }

    /// Whether a connection is up (and resumed, if logged in).
    pub fn is_connected(&self) -> bool {
        self.inner().conn().is_some()
    }

    // ---- session ------------------------------------------------------------

    /// Creates an account and logs in. Not re-sent if the connection drops
    /// while it is in flight ([`Error::Disconnected`]): the account may
    /// exist; log in.
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
            device: self.inner().device(),
        });
        self.authenticate(body).await
    }

    /// Logs in with a password.
    pub async fn login(&self, username: &str, password: &str) -> Result<pb::AuthOk> {
        let body = C::Login(pb::Login {
            username: username.into(),
            password: password.into(),
            device: self.inner().device(),
        });
        self.authenticate(body).await
    }

    async fn authenticate(&self, body: C) -> Result<pb::AuthOk> {
        match self.call(body).await? {
            S::AuthOk(ok) => {
                self.inner().set_auth(&ok, "");
                Ok(ok)
            }
            other => Err(Error::unexpected(&other)),
        }
    }

    /// Logs in with a stored token (after an app restart) and catches up
    /// from the cursors restored with [`Client::set_cursor`]: the missed
    /// messages are queued as events, in order, before this returns
    /// (truncated gaps are fetched with GetHistory first). The client
    /// resumes by itself after reconnects; this call is for a new `Client`.
    ///
    /// Fails with [`Error::Server`] `TOKEN_INVALID` if the token expired or
    /// was revoked: log in with the password.
    pub async fn resume(&self, token: &str) -> Result<pb::ResumeOk> {
        let inner = self.inner();
        let conn = inner
            .current_conn(Instant::now() + inner.options.request_timeout)
            .await?;
        let (ok, open) = inner.resume_on(&conn, token, || {}).await?;
        for conversation in open {
            inner.fill_gap(conversation).await;
        }
        Ok(ok)
    }

    /// Logs out (this device's token, or with `all_devices` every token of
    /// the user). The connection stays open, unauthenticated.
    pub async fn logout(&self, all_devices: bool) -> Result<()> {
        self.call(C::Logout(pb::Logout { all_devices })).await?;
        self.inner().clear_auth();
        Ok(())
    }

    /// Replaces the password. The user's other sessions are ended and their
    /// tokens revoked; this session and its token go on. A wrong
    /// `current` is [`Error::Server`] with `INVALID_CREDENTIALS`.
    pub async fn change_password(&self, current: &str, new: &str) -> Result<()> {
        self.call(C::ChangePassword(pb::ChangePassword {
            current_password: current.into(),
            new_password: new.into(),
        }))
        .await?;
        Ok(())
    }

    // ---- conversations -----------------------------------------------------

    /// The direct conversation with `other`, created if needed.
    pub async fn create_direct(&self, other: UserId) -> Result<pb::Conversation> {
        self.create(pb::ConversationKind::Direct, &[other], "")
            .await
    }

    /// A new group with the caller as owner and `members` (without the
    /// caller).
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
        let c = self.conversation(body).await?;
        // Everything from the start of a conversation the user created is
        // wanted (a direct conversation may have existed before).
        lock(&self.inner().cursors).start(c.conversation_id, 0);
        Ok(c)
    }

    async fn conversation(&self, body: C) -> Result<pb::Conversation> {
        match self.call(body).await? {
            S::Conversation(c) => Ok(c),
            other => Err(Error::unexpected(&other)),
        }
    }

    /// Adds members to a group (admins only).
    pub async fn add_members(
        &self,
        conversation: ConversationId,
        users: &[UserId],
    ) -> Result<pb::Conversation> {
        self.conversation(C::AddMembers(pb::AddMembers {
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
        self.conversation(C::RemoveMember(pb::RemoveMember {
            conversation_id: conversation.0,
            user_id: user.0,
        }))
        .await
    }

    /// Bans a user from a group or channel (owners and admins): a member is
    /// removed with a MEMBER_BANNED system message, and the user cannot be
    /// added again or subscribe (`BANNED`) until unbanned. The reply's
    /// `banned_ids` lists the bans.
    pub async fn ban_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<pb::Conversation> {
        self.conversation(C::BanMember(pb::BanMember {
            conversation_id: conversation.0,
            user_id: user.0,
        }))
        .await
    }

    /// Lifts a ban (owners and admins).
    pub async fn unban_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<pb::Conversation> {
        self.conversation(C::UnbanMember(pb::UnbanMember {
            conversation_id: conversation.0,
            user_id: user.0,
        }))
        .await
    }

    /// Leaves a group or channel. The conversation's cursor is kept until a
    /// Sync reports it removed ([`Event::ConversationRemoved`](crate::Event::ConversationRemoved)),
    /// so the user's own `MEMBER_LEFT` message is still delivered.
    pub async fn leave(&self, conversation: ConversationId) -> Result<()> {
        self.call(C::LeaveConversation(pb::LeaveConversation {
            conversation_id: conversation.0,
        }))
        .await
        .map(drop)
    }

    /// Makes a member an admin, or an admin a member again (owner and
    /// admins only).
    pub async fn set_role(
        &self,
        conversation: ConversationId,
        user: UserId,
        role: pb::Role,
    ) -> Result<pb::Conversation> {
        self.conversation(C::SetRole(pb::SetRole {
            conversation_id: conversation.0,
            user_id: user.0,
            role: role as i32,
        }))
        .await
    }

    /// Renames a group or channel (admins only).
    pub async fn set_title(
        &self,
        conversation: ConversationId,
        title: &str,
    ) -> Result<pb::Conversation> {
        self.conversation(C::UpdateConversation(pb::UpdateConversation {
            conversation_id: conversation.0,
            title: title.into(),
        }))
        .await
    }

    /// Hands a group to another member (owner only).
    pub async fn transfer_ownership(
        &self,
        conversation: ConversationId,
        new_owner: UserId,
    ) -> Result<pb::Conversation> {
        self.conversation(C::TransferOwnership(pb::TransferOwnership {
            conversation_id: conversation.0,
            new_owner_id: new_owner.0,
        }))
        .await
    }

    /// Subscribes to a broadcast channel: its posts are pushed from now on
    /// and its history can be read.
    pub async fn subscribe_channel(&self, channel: ConversationId) -> Result<()> {
        self.call(C::SubscribeChannel(pb::SubscribeChannel {
            conversation_id: channel.0,
        }))
        .await?;
        lock(&self.inner().cursors).start(channel.0, 0);
        Ok(())
    }

    /// Unsubscribes from a broadcast channel.
    pub async fn unsubscribe_channel(&self, channel: ConversationId) -> Result<()> {
        self.call(C::UnsubscribeChannel(pb::UnsubscribeChannel {
            conversation_id: channel.0,
        }))
        .await
        .map(drop)
    }

    /// A user's public profile, by id.
    pub async fn profile(&self, user: UserId) -> Result<pb::Profile> {
        self.profile_of(pb::GetProfile {
            user_id: user.0,
            username: String::new(),
        })
        .await
    }

    /// A user's public profile, by username (to start a chat with them).
    pub async fn find_user(&self, username: &str) -> Result<pb::Profile> {
        self.profile_of(pb::GetProfile {
            user_id: 0,
            username: username.into(),
        })
        .await
    }

    async fn profile_of(&self, req: pb::GetProfile) -> Result<pb::Profile> {
        match self.call(C::GetProfile(req)).await? {
            S::Profile(p) => Ok(p),
            other => Err(Error::unexpected(&other)),
        }
    }

    /// Changes the user's display name (empty keeps it) and whether others
    /// see their last-seen time.
    pub async fn update_profile(
        &self,
        display_name: &str,
        hide_last_seen: bool,
    ) -> Result<pb::Profile> {
        let body = C::UpdateProfile(pb::UpdateProfile {
            display_name: display_name.into(),
            hide_last_seen,
        });
        match self.call(body).await? {
            S::Profile(p) => Ok(p),
            other => Err(Error::unexpected(&other)),
        }
    }

    /// How many members received and read message `seq`.
    pub async fn receipts(
        &self,
        conversation: ConversationId,
        seq: u64,
    ) -> Result<pb::ReceiptCounts> {
        let body = C::GetReceipts(pb::GetReceipts {
            conversation_id: conversation.0,
            seq,
        });
        match self.call(body).await? {
            S::ReceiptCounts(c) => Ok(c),
            other => Err(Error::unexpected(&other)),
        }
    }

    /// Sets the status other users see (`Offline` appears offline).
    pub async fn set_presence(&self, status: pb::PresenceStatus) -> Result<()> {
        self.call(C::SetPresence(pb::SetPresence {
            status: status as i32,
        }))
        .await
        .map(drop)
    }

    /// Watches users' presence: their current state and every change arrive
    /// as [`Event::Presence`](crate::Event::Presence), also after the client
    /// reconnects.
    pub async fn watch_presence(&self, users: &[UserId]) -> Result<()> {
        let ids: Vec<u64> = users.iter().map(|u| u.0).collect();
        lock(&self.inner().watching).extend(ids.iter().copied());
        self.call(C::SubscribePresence(pb::SubscribePresence {
            user_ids: ids,
        }))
        .await
        .map(drop)
    }

    /// Stops watching users' presence.
    pub async fn unwatch_presence(&self, users: &[UserId]) -> Result<()> {
        let ids: Vec<u64> = users.iter().map(|u| u.0).collect();
        {
            let mut watching = lock(&self.inner().watching);
            for id in &ids {
                watching.remove(id);
            }
        }
        self.call(C::UnsubscribePresence(pb::UnsubscribePresence {
            user_ids: ids,
        }))
        .await
        .map(drop)
    }

    /// Asks where to upload a media file of `size_bytes`: `PUT` the bytes
    /// to the ticket's `upload_url` with any HTTP client, then send a
    /// message whose [`pb::MediaRef`] names `media_id`. Recipients get a
    /// signed download URL in the message.
    pub async fn request_upload(
        &self,
        mime_type: &str,
        size_bytes: u64,
    ) -> Result<pb::UploadTicket> {
        let body = C::RequestUpload(pb::RequestUpload {
            mime_type: mime_type.into(),
            size_bytes,
        });
        match self.call(body).await? {
            S::UploadTicket(t) => Ok(t),
            other => Err(Error::unexpected(&other)),
        }
    }

    /// Registers this device for push notifications while the user has no
    /// connected session (`provider`: `apns`, `fcm` or `webpush`). Lasts
    /// until this session logs out.
    pub async fn register_push_token(&self, provider: &str, token: &str) -> Result<()> {
        self.call(C::RegisterPushToken(pb::RegisterPushToken {
            provider: provider.into(),
            token: token.into(),
        }))
        .await
        .map(drop)
    }

    /// A conversation with its members.
    pub async fn get_conversation(&self, conversation: ConversationId) -> Result<pb::Conversation> {
        self.conversation(C::GetConversation(pb::GetConversation {
            conversation_id: conversation.0,
        }))
        .await
    }

    /// The user's conversations, most recently active first, with unread
    /// counts; `limit` 0 means the server's default.
    pub async fn list_conversations(&self, limit: u32) -> Result<pb::ConversationList> {
        self.list_conversations_before(limit, 0).await
    }

    /// The next page of [`Client::list_conversations`]: pass the previous
    /// page's `next_before_activity_ms`.
    pub async fn list_conversations_before(
        &self,
        limit: u32,
        before_activity_ms: u64,
    ) -> Result<pb::ConversationList> {
        match self
            .call(C::ListConversations(pb::ListConversations {
                limit,
                before_activity_ms,
            }))
            .await?
        {
            S::ConversationList(l) => Ok(l),
            other => Err(Error::unexpected(&other)),
        }
    }

    /// Deletes the user's account after re-entering its `password`: every
    /// token is revoked and every session ends (this client's too, which
    /// then stops: [`Event::Disconnected`] is its last event), the profile
    /// is erased (the username stays taken), push registrations and
    /// uploaded media are removed; messages stay, shown as from a deleted
    /// user. A wrong password is `INVALID_CREDENTIALS` and changes nothing.
    ///
    /// [`Event::Disconnected`]: crate::Event::Disconnected
    pub async fn delete_account(&self, password: &str) -> Result<()> {
        self.call(C::DeleteAccount(pb::DeleteAccount {
            password: password.into(),
        }))
        .await?;
        Ok(())
    }

    /// Sets this user's notification level for a conversation: push
    /// notifications for every message (`All`, the default), only for those
    /// that mention the user or everyone (`Mentions`), or none (`Muted`,
    /// until `muted_until_ms` if not 0, Unix milliseconds). Mentions are
    /// sent with [`Client::send`]'s `mention_ids` and `mention_everyone`.
    pub async fn set_notification_level(
        &self,
        conversation: ConversationId,
        level: pb::NotificationLevel,
        muted_until_ms: u64,
    ) -> Result<()> {
        self.call(C::SetNotificationLevel(pb::SetNotificationLevel {
            conversation_id: conversation.0,
            level: level as i32,
            muted_until_ms,
        }))
        .await?;
        Ok(())
    }

    // ---- blocking ------------------------------------------------------------

    /// Blocks a user: no new direct conversation between the two, nothing
    /// sent, edited, reacted to or typed in an existing one (`BLOCKED`), and
    /// neither sees the other's presence. Groups and channels are
    /// unaffected. Blocking twice is done with nothing changed.
    pub async fn block_user(&self, user: UserId) -> Result<()> {
        self.call(C::BlockUser(pb::BlockUser { user_id: user.0 }))
            .await?;
        Ok(())
    }

    /// Lifts a block the user made.
    pub async fn unblock_user(&self, user: UserId) -> Result<()> {
        self.call(C::UnblockUser(pb::UnblockUser { user_id: user.0 }))
            .await?;
        Ok(())
    }

    /// The users this user blocked, ascending.
    pub async fn blocked_users(&self) -> Result<Vec<UserId>> {
        match self.call(C::ListBlocked(pb::ListBlocked {})).await? {
            S::BlockedUsers(b) => Ok(b.user_ids.into_iter().map(UserId).collect()),
            other => Err(Error::unexpected(&other)),
        }
    }

    // ---- messages ------------------------------------------------------------

    /// Deletes a message for everyone: its content is dropped from the
    /// store, and a MESSAGE_DELETED system message reaches every member.
    /// The sender may delete their own messages; in a group or channel an
    /// owner or admin may delete anyone's.
    pub async fn delete_message(&self, conversation: ConversationId, seq: u64) -> Result<()> {
        self.call(C::DeleteMessage(pb::DeleteMessage {
            conversation_id: conversation.0,
            seq,
        }))
        .await?;
        Ok(())
    }

    /// Replaces the text of one of the user's own messages. The message keeps
    /// its seq (an edit is not a new message: no unread count moves, no push
    /// notification); every member's sessions get [`Event::MessageEdited`]
    /// with the message as stored now, `edited_at_ms` set.
    ///
    /// [`Event::MessageEdited`]: crate::Event::MessageEdited
    pub async fn edit_message(
        &self,
        conversation: ConversationId,
        seq: u64,
        text: &str,
    ) -> Result<()> {
        self.call(C::EditMessage(pb::EditMessage {
            conversation_id: conversation.0,
            seq,
            text: text.into(),
        }))
        .await?;
        Ok(())
    }

    /// Adds the user's reaction `emoji` (1-32 bytes, e.g. "👍") to a USER
    /// message. Adding one the user has already is done with nothing
    /// changed; a message holds at most 20 distinct emoji (`REACTION_LIMIT`
    /// past that). Every member's sessions get [`Event::Reaction`].
    ///
    /// [`Event::Reaction`]: crate::Event::Reaction
    pub async fn react(&self, conversation: ConversationId, seq: u64, emoji: &str) -> Result<()> {
        self.set_reaction(conversation, seq, emoji, false).await
    }

    /// Removes the user's reaction `emoji` from a message; removing one the
    /// user does not have is done with nothing changed.
    pub async fn remove_reaction(
        &self,
        conversation: ConversationId,
        seq: u64,
        emoji: &str,
    ) -> Result<()> {
        self.set_reaction(conversation, seq, emoji, true).await
    }

    async fn set_reaction(
        &self,
        conversation: ConversationId,
        seq: u64,
        emoji: &str,
        remove: bool,
    ) -> Result<()> {
        self.call(C::React(pb::React {
            conversation_id: conversation.0,
            seq,
            emoji: emoji.into(),
            remove,
        }))
        .await?;
        Ok(())
    }

    /// Sends a text message; see [`Client::send`].
    pub async fn send_text(&self, conversation: ConversationId, text: &str) -> Result<pb::SendAck> {
        self.send(pb::SendMessage {
            conversation_id: conversation.0,
            text: text.into(),
            ..Default::default()
        })
        .await
    }

    /// Sends a message and returns its ack, which the server sends once the
    /// message is durable.
    ///
    /// An empty `client_msg_id` is filled with a random 128-bit hex id. The
    /// same frame (same `client_msg_id`) is sent again after a reconnect and
    /// after retryable refusals (honouring `retry_after_ms`) until
    /// [`ClientOptions::send_retry_timeout`] passes; the server stores it
    /// once and answers retries with the original ack (`duplicate: true`).
    /// To retry across app restarts, choose and store the id yourself; set
    /// `first_attempt` only when you know this id was never sent before
    /// (`spec/messages.md`, "SendMessage").
    ///
    /// The message also arrives as an [`Event::Message`](crate::Event::Message)
    /// like everyone else's.
    pub async fn send(&self, mut msg: pb::SendMessage) -> Result<pb::SendAck> {
        if msg.client_msg_id.is_empty() {
            msg.client_msg_id = format!("{:032x}", rand::random::<u128>());
            // A fresh id has never been sent: the server can skip its store
            // lookup for an earlier copy. Cleared for every retransmission.
            msg.first_attempt = true;
        }
        let options = &self.inner().options;
        let deadline = Instant::now() + options.send_retry_timeout;
        let mut wait = SEND_BACKOFF_MIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = options.request_timeout.min(left);
            let err = match self
                .inner()
                .request_within(C::SendMessage(msg.clone()), attempt)
                .await
            {
                Ok(S::SendAck(ack)) => return Ok(ack),
                Ok(other) => return Err(Error::unexpected(&other)),
                Err(e) => e,
            };
            msg.first_attempt = false;
            if !err.is_transient() {
                return Err(err);
            }
            if let Error::Server { retry_after_ms, .. } = &err {
                wait = wait.max(Duration::from_millis(u64::from(*retry_after_ms)));
            }
            if Instant::now() + wait >= deadline {
                return Err(err);
            }
            tracing::debug!(cause = %err, ?wait, client_msg_id = %msg.client_msg_id, "send retried");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(SEND_BACKOFF_MAX);
        }
    }

    /// A page of history (`spec/messages.md`, "GetHistory"). With
    /// `before_seq > 0`: messages with seq < before_seq, newest first. With
    /// `after_seq = Some(n)`: messages with seq > n, oldest first (`Some(0)`
    /// reads from the start). With neither: the newest page, newest first.
    /// `limit` 0 means the server's default (50); the maximum is 200.
    ///
    /// History pages are returned, not emitted as events, and do not move
    /// cursors.
    pub async fn history(
        &self,
        conversation: ConversationId,
        before_seq: u64,
        after_seq: Option<u64>,
        limit: u32,
    ) -> Result<pb::MessagePage> {
        match self
            .call(C::GetHistory(pb::GetHistory {
                conversation_id: conversation.0,
                before_seq,
                after_seq,
                limit,
            }))
            .await?
        {
            S::MessagePage(p) => Ok(p),
            other => Err(Error::unexpected(&other)),
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

    /// Messages after `after_seq`, oldest first (0 reads from the start).
    pub async fn history_after(
        &self,
        conversation: ConversationId,
        after_seq: u64,
        limit: u32,
    ) -> Result<pb::MessagePage> {
        self.history(conversation, 0, Some(after_seq), limit).await
    }

    /// Fetches everything missed since the tracked cursors (conversations
    /// without a cursor from their start) and queues it as events, in
    /// order, without duplicates; returns once all of it is queued. The
    /// client does this by itself when it resumes after a reconnect.
    pub async fn sync(&self) -> Result<()> {
        self.inner().sync().await
    }

    /// Reports that every message up to `seq` is stored on this device.
    pub async fn mark_delivered(&self, conversation: ConversationId, seq: u64) -> Result<()> {
        self.call(C::MarkDelivered(pb::MarkDelivered {
            conversation_id: conversation.0,
            seq,
        }))
        .await
        .map(drop)
    }

    /// Reports that the user saw every message up to `seq`.
    pub async fn mark_read(&self, conversation: ConversationId, seq: u64) -> Result<()> {
        self.call(C::MarkRead(pb::MarkRead {
            conversation_id: conversation.0,
            seq,
        }))
        .await
        .map(drop)
    }

    /// Says the user is typing (refresh every 3 s while it lasts) or
    /// stopped. Fire-and-forget.
    pub async fn typing(&self, conversation: ConversationId, active: bool) -> Result<()> {
        self.notify(C::Typing(pb::Typing {
            conversation_id: conversation.0,
            active,
        }))
        .await
    }

    /// Any request; the reply's body is returned and an `Error` reply
    /// becomes [`Error::Server`]. Requests that are safe to repeat (reads,
    /// sends, cursors, subscriptions) are re-sent if the connection drops
    /// while they are in flight. Register, Login and Resume sent this way do
    /// not update the client's login state: use the dedicated methods.
    pub async fn request(&self, body: C) -> Result<S> {
        self.call(body).await
    }

    /// Sends a frame that gets no reply (`request_id` 0): `Typing`, or
    /// `MarkRead`/`MarkDelivered` without confirmation.
    pub async fn notify(&self, body: C) -> Result<()> {
        self.inner().notify(body).await
    }

    // ---- cursors -------------------------------------------------------------

    /// The cursor of a conversation: every message up to it was taken from
    /// [`Events`] (0 if untracked). Never waits.
    pub async fn cursor(&self, conversation: ConversationId) -> u64 {
        lock(&self.inner().cursors).get(conversation.0)
    }

    /// Restores a cursor saved by the app, before [`Client::resume`] or
    /// [`Client::sync`]. Never moves a cursor backwards. Never waits.
    pub async fn set_cursor(&self, conversation: ConversationId, seq: u64) {
        lock(&self.inner().cursors).set(conversation.0, seq);
    }

    /// Every cursor, for the app to save alongside the session token. Never
    /// waits.
    pub async fn cursors(&self) -> Vec<pb::Cursor> {
        lock(&self.inner().cursors).all()
    }

    /// Closes the connection and stops reconnecting. Pending and later
    /// requests fail with [`Error::Closed`]; [`Events`] ends once drained.
    pub async fn close(&self) {
        if let Some(conn) = self.inner().shutdown() {
            conn.close_and_wait("client closed").await;
        }
    }
}
