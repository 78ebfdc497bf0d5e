//! The client object: every request of `chat_client::Client` as an async
//! method.
//!
//! Ids are plain `u64` (user and conversation ids of the protocol). Each
//! call runs on the library's runtime ([`crate::runtime`]), so it may be
//! awaited from any foreign executor.

use std::sync::Arc;

use chat_client::{Client, ConversationId, Events, UserId, pb};
use tokio::sync::Mutex;

use crate::error::Result;
use crate::listener::{EventListener, ListenerHandle};
use crate::options::ClientOptions;
use crate::runtime::run;
use crate::types::{
    AuthSession, Conversation, ConversationList, Cursor, MessagePage, NotificationLevel,
    OutgoingMessage, PresenceStatus, Profile, ReceiptCounts, ResumeResult, Role, SendAck,
    UploadTicket, Welcome,
};

/// Connects to the chatd at `url`: `tcp://host:port`, `tls://host:port`,
/// `quic://host:port`, `ws://host:port/ws` or `wss://host:port/ws`.
/// Certificates are checked against the webpki roots plus
/// `options.trusted_certs_pem`. Then call `register`, `login` or `resume`,
/// and `set_listener` to receive events.
#[uniffi::export]
pub async fn connect(url: String, options: ClientOptions) -> Result<Arc<ChatClient>> {
    run(async move {
        let (client, events) = Client::connect(&url, options.into()).await?;
        Ok(Arc::new(ChatClient {
            client,
            events: Arc::new(Mutex::new(events)),
        }))
    })
    .await
}

/// A connection to chatd that reconnects and resumes by itself.
#[derive(uniffi::Object)]
pub struct ChatClient {
    client: Client,
    /// Taken by the running listener task for as long as it runs.
    events: Arc<Mutex<Events>>,
}

fn users(ids: Vec<u64>) -> Vec<UserId> {
    ids.into_iter().map(UserId).collect()
}

#[uniffi::export]
impl ChatClient {
    // ---- events and state ------------------------------------------------

    /// Delivers events to `listener` until the returned handle is cancelled
    /// or dropped (keep it). Events queue up, within
    /// `ClientOptions.event_buffer`, until a listener is set; set one right
    /// after connecting.
    pub fn set_listener(&self, listener: Box<dyn EventListener>) -> Result<Arc<ListenerHandle>> {
        crate::listener::start(self.events.clone(), listener).map(Arc::new)
    }

    /// The logged-in user, if any.
    pub fn user_id(&self) -> Option<u64> {
        self.client.user_id().map(|u| u.0)
    }

    /// The session token to store for `resume`, if logged in.
    pub fn session_token(&self) -> Option<String> {
        self.client.session_token()
    }

    /// The current connection's Welcome, if connected.
    pub fn welcome(&self) -> Option<Welcome> {
        self.client.welcome().map(Into::into)
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    // ---- session ---------------------------------------------------------

    /// Creates an account and logs in.
    pub async fn register(
        &self,
        username: String,
        password: String,
        display_name: String,
    ) -> Result<AuthSession> {
        let c = self.client.clone();
        run(async move {
            Ok(c.register(&username, &password, &display_name)
                .await?
                .into())
        })
        .await
    }

    /// Logs in.
    pub async fn login(&self, username: String, password: String) -> Result<AuthSession> {
        let c = self.client.clone();
        run(async move { Ok(c.login(&username, &password).await?.into()) }).await
    }

    /// Resumes a stored session with the cursors set by `set_cursor` (or
    /// tracked since connecting); missed messages arrive as events.
    pub async fn resume(&self, session_token: String) -> Result<ResumeResult> {
        let c = self.client.clone();
        run(async move { Ok(c.resume(&session_token).await?.into()) }).await
    }

    /// Ends the session (of this device, or of all the user's devices).
    pub async fn logout(&self, all_devices: bool) -> Result<()> {
        let c = self.client.clone();
        run(async move { Ok(c.logout(all_devices).await?) }).await
    }

    /// Changes the password.
    pub async fn change_password(&self, current: String, new: String) -> Result<()> {
        let c = self.client.clone();
        run(async move { Ok(c.change_password(&current, &new).await?) }).await
    }

    // ---- users -----------------------------------------------------------

    /// A user's profile by id.
    pub async fn profile(&self, user_id: u64) -> Result<Profile> {
        let c = self.client.clone();
        run(async move { Ok(c.profile(UserId(user_id)).await?.into()) }).await
    }

    /// A user's profile by username.
    pub async fn find_user(&self, username: String) -> Result<Profile> {
        let c = self.client.clone();
        run(async move { Ok(c.find_user(&username).await?.into()) }).await
    }

    /// Changes this user's display name and last-seen visibility.
    pub async fn update_profile(
        &self,
        display_name: String,
        hide_last_seen: bool,
    ) -> Result<Profile> {
        let c = self.client.clone();
        run(async move {
            Ok(c.update_profile(&display_name, hide_last_seen)
                .await?
                .into())
        })
        .await
    }

    /// Registers this device for push notifications (`provider` e.g.
    /// "fcm" or "apns").
    pub async fn register_push_token(&self, provider: String, token: String) -> Result<()> {
        let c = self.client.clone();
        run(async move { Ok(c.register_push_token(&provider, &token).await?) }).await
    }

    // ---- conversations ---------------------------------------------------

    /// Opens (or finds) the direct conversation with another user.
    pub async fn create_direct(&self, other_user_id: u64) -> Result<Conversation> {
        let c = self.client.clone();
        run(async move { Ok(c.create_direct(UserId(other_user_id)).await?.into()) }).await
    }

    /// Creates a group with this user as owner.
    pub async fn create_group(&self, title: String, member_ids: Vec<u64>) -> Result<Conversation> {
        let c = self.client.clone();
        run(async move { Ok(c.create_group(&title, &users(member_ids)).await?.into()) }).await
    }

    /// Creates a channel with this user as owner.
    pub async fn create_channel(&self, title: String) -> Result<Conversation> {
        let c = self.client.clone();
        run(async move { Ok(c.create_channel(&title).await?.into()) }).await
    }

    /// A conversation's metadata.
    pub async fn get_conversation(&self, conversation_id: u64) -> Result<Conversation> {
        let c = self.client.clone();
        run(async move {
            Ok(c.get_conversation(ConversationId(conversation_id))
                .await?
                .into())
        })
        .await
    }

    /// The newest `limit` conversations by activity.
    pub async fn list_conversations(&self, limit: u32) -> Result<ConversationList> {
        let c = self.client.clone();
        run(async move { Ok(c.list_conversations(limit).await?.into()) }).await
    }

    /// The next page of conversations, older than `before_activity_ms`.
    pub async fn list_conversations_before(
        &self,
        limit: u32,
        before_activity_ms: u64,
    ) -> Result<ConversationList> {
        let c = self.client.clone();
        run(async move {
            Ok(c.list_conversations_before(limit, before_activity_ms)
                .await?
                .into())
        })
        .await
    }

    /// Adds members to a group (admins and owners).
    pub async fn add_members(
        &self,
        conversation_id: u64,
        user_ids: Vec<u64>,
    ) -> Result<Conversation> {
        let c = self.client.clone();
        run(async move {
            Ok(
                c.add_members(ConversationId(conversation_id), &users(user_ids))
                    .await?
                    .into(),
            )
        })
        .await
    }

    /// Removes a member from a group.
    pub async fn remove_member(&self, conversation_id: u64, user_id: u64) -> Result<Conversation> {
        let c = self.client.clone();
        run(async move {
            Ok(
                c.remove_member(ConversationId(conversation_id), UserId(user_id))
                    .await?
                    .into(),
            )
        })
        .await
    }

    /// Bans a user from a group or channel (owners and admins).
    pub async fn ban_member(&self, conversation_id: u64, user_id: u64) -> Result<Conversation> {
        let c = self.client.clone();
        run(async move {
            Ok(
                c.ban_member(ConversationId(conversation_id), UserId(user_id))
                    .await?
                    .into(),
            )
        })
        .await
    }

    /// Lifts a ban (owners and admins).
    pub async fn unban_member(&self, conversation_id: u64, user_id: u64) -> Result<Conversation> {
        let c = self.client.clone();
        run(async move {
            Ok(
                c.unban_member(ConversationId(conversation_id), UserId(user_id))
                    .await?
                    .into(),
            )
        })
        .await
    }

    /// Leaves a group.
    pub async fn leave(&self, conversation_id: u64) -> Result<()> {
        let c = self.client.clone();
        run(async move { Ok(c.leave(ConversationId(conversation_id)).await?) }).await
    }

    /// Changes a member's role.
    pub async fn set_role(
        &self,
        conversation_id: u64,
        user_id: u64,
        role: Role,
    ) -> Result<Conversation> {
        let c = self.client.clone();
        run(async move {
            Ok(c.set_role(
                ConversationId(conversation_id),
                UserId(user_id),
                pb::Role::from(role),
            )
            .await?
            .into())
        })
        .await
    }

    /// Changes a group's or channel's title.
    pub async fn set_title(&self, conversation_id: u64, title: String) -> Result<Conversation> {
        let c = self.client.clone();
        run(async move {
            Ok(c.set_title(ConversationId(conversation_id), &title)
                .await?
                .into())
        })
        .await
    }

    /// Hands ownership to another member.
    pub async fn transfer_ownership(
        &self,
        conversation_id: u64,
        new_owner_id: u64,
    ) -> Result<Conversation> {
        let c = self.client.clone();
        run(async move {
            Ok(
                c.transfer_ownership(ConversationId(conversation_id), UserId(new_owner_id))
                    .await?
                    .into(),
            )
        })
        .await
    }

    /// Subscribes to a channel; its messages are delivered from the start.
    pub async fn subscribe_channel(&self, channel_id: u64) -> Result<()> {
        let c = self.client.clone();
        run(async move { Ok(c.subscribe_channel(ConversationId(channel_id)).await?) }).await
    }

    /// Unsubscribes from a channel.
    pub async fn unsubscribe_channel(&self, channel_id: u64) -> Result<()> {
        let c = self.client.clone();
        run(async move { Ok(c.unsubscribe_channel(ConversationId(channel_id)).await?) }).await
    }

    /// Deletes the user's account after re-entering its password; every
    /// session ends and the client stops.
    pub async fn delete_account(&self, password: String) -> Result<()> {
        let c = self.client.clone();
        run(async move { Ok(c.delete_account(&password).await?) }).await
    }

    /// Sets this user's notification level for a conversation; with `Muted`,
    /// `muted_until_ms` (Unix ms, 0: until changed) ends the mute.
    pub async fn set_notification_level(
        &self,
        conversation_id: u64,
        level: NotificationLevel,
        muted_until_ms: u64,
    ) -> Result<()> {
        let c = self.client.clone();
        run(async move {
            Ok(c.set_notification_level(
                ConversationId(conversation_id),
                level.into(),
                muted_until_ms,
            )
            .await?)
        })
        .await
    }

    // ---- blocking --------------------------------------------------------

    /// Blocks a user (no direct messages, no presence either way).
    pub async fn block_user(&self, user_id: u64) -> Result<()> {
        let c = self.client.clone();
        run(async move { Ok(c.block_user(UserId(user_id)).await?) }).await
    }

    /// Lifts a block.
    pub async fn unblock_user(&self, user_id: u64) -> Result<()> {
        let c = self.client.clone();
        run(async move { Ok(c.unblock_user(UserId(user_id)).await?) }).await
    }

    /// The users this user blocked, ascending.
    pub async fn blocked_users(&self) -> Result<Vec<u64>> {
        let c = self.client.clone();
        run(async move { Ok(c.blocked_users().await?.into_iter().map(|u| u.0).collect()) }).await
    }

    // ---- messages --------------------------------------------------------

    /// Sends a text message; retried with the same idempotency key across
    /// reconnects and retryable refusals (`send_retry_timeout_ms`), so it is
    /// stored once.
    pub async fn send_text(&self, conversation_id: u64, text: String) -> Result<SendAck> {
        let c = self.client.clone();
        run(async move {
            Ok(c.send_text(ConversationId(conversation_id), &text)
                .await?
                .into())
        })
        .await
    }

    /// Sends a message with media, ciphertext or a reply; retried like
    /// `send_text`. An empty `client_msg_id` gets a fresh random one.
    pub async fn send(&self, message: OutgoingMessage) -> Result<SendAck> {
        let c = self.client.clone();
        run(async move { Ok(c.send(message.into()).await?.into()) }).await
    }

    /// Deletes a message (its sender, or an admin).
    pub async fn delete_message(&self, conversation_id: u64, seq: u64) -> Result<()> {
        let c = self.client.clone();
        run(async move {
            Ok(c.delete_message(ConversationId(conversation_id), seq)
                .await?)
        })
        .await
    }

    /// Replaces the text of one of the user's own messages (same seq; no
    /// unread count moves). Members get a `MessageEdited` event.
    pub async fn edit_message(&self, conversation_id: u64, seq: u64, text: String) -> Result<()> {
        let c = self.client.clone();
        run(async move {
            Ok(c.edit_message(ConversationId(conversation_id), seq, &text)
                .await?)
        })
        .await
    }

    /// Adds the user's reaction (an emoji of at most 32 bytes) to a message;
    /// adding one the user has is done with nothing changed.
    pub async fn react(&self, conversation_id: u64, seq: u64, emoji: String) -> Result<()> {
        let c = self.client.clone();
        run(async move {
            Ok(c.react(ConversationId(conversation_id), seq, &emoji)
                .await?)
        })
        .await
    }

    /// Removes the user's reaction from a message.
    pub async fn remove_reaction(
        &self,
        conversation_id: u64,
        seq: u64,
        emoji: String,
    ) -> Result<()> {
        let c = self.client.clone();
        run(async move {
            Ok(
                c.remove_reaction(ConversationId(conversation_id), seq, &emoji)
                    .await?,
            )
        })
        .await
    }

    /// Asks for an upload ticket for an attachment.
    pub async fn request_upload(&self, mime_type: String, size_bytes: u64) -> Result<UploadTicket> {
        let c = self.client.clone();
        run(async move { Ok(c.request_upload(&mime_type, size_bytes).await?.into()) }).await
    }

    /// A page of history: messages before `before_seq` (0: the newest) or,
    /// with `after_seq`, after it; at most `limit` (0: the server's default).
    pub async fn history(
        &self,
        conversation_id: u64,
        before_seq: u64,
        after_seq: Option<u64>,
        limit: u32,
    ) -> Result<MessagePage> {
        let c = self.client.clone();
        run(async move {
            Ok(c.history(
                ConversationId(conversation_id),
                before_seq,
                after_seq,
                limit,
            )
            .await?
            .into())
        })
        .await
    }

    /// The newest `limit` messages.
    pub async fn history_latest(&self, conversation_id: u64, limit: u32) -> Result<MessagePage> {
        self.history(conversation_id, 0, None, limit).await
    }

    /// Up to `limit` messages before `before_seq`.
    pub async fn history_before(
        &self,
        conversation_id: u64,
        before_seq: u64,
        limit: u32,
    ) -> Result<MessagePage> {
        self.history(conversation_id, before_seq, None, limit).await
    }

    /// Up to `limit` messages after `after_seq`.
    pub async fn history_after(
        &self,
        conversation_id: u64,
        after_seq: u64,
        limit: u32,
    ) -> Result<MessagePage> {
        self.history(conversation_id, 0, Some(after_seq), limit)
            .await
    }

    /// Fetches everything after the cursors; it arrives as events before
    /// this returns.
    pub async fn sync(&self) -> Result<()> {
        let c = self.client.clone();
        run(async move { Ok(c.sync().await?) }).await
    }

    // ---- receipts, typing, presence -------------------------------------

    /// Marks messages up to `seq` delivered to this device.
    pub async fn mark_delivered(&self, conversation_id: u64, seq: u64) -> Result<()> {
        let c = self.client.clone();
        run(async move {
            Ok(c.mark_delivered(ConversationId(conversation_id), seq)
                .await?)
        })
        .await
    }

    /// Marks messages up to `seq` read.
    pub async fn mark_read(&self, conversation_id: u64, seq: u64) -> Result<()> {
        let c = self.client.clone();
        run(async move { Ok(c.mark_read(ConversationId(conversation_id), seq).await?) }).await
    }

    /// How many members received and read message `seq`.
    pub async fn receipts(&self, conversation_id: u64, seq: u64) -> Result<ReceiptCounts> {
        let c = self.client.clone();
        run(async move {
            Ok(c.receipts(ConversationId(conversation_id), seq)
                .await?
                .into())
        })
        .await
    }

    /// Starts or stops the typing indicator (no reply; a datagram on QUIC).
    pub async fn typing(&self, conversation_id: u64, active: bool) -> Result<()> {
        let c = self.client.clone();
        run(async move { Ok(c.typing(ConversationId(conversation_id), active).await?) }).await
    }

    /// Sets this user's presence.
    pub async fn set_presence(&self, status: PresenceStatus) -> Result<()> {
        let c = self.client.clone();
        run(async move { Ok(c.set_presence(status.into()).await?) }).await
    }

    /// Receives `Presence` events for these users (kept across reconnects).
    pub async fn watch_presence(&self, user_ids: Vec<u64>) -> Result<()> {
        let c = self.client.clone();
        run(async move { Ok(c.watch_presence(&users(user_ids)).await?) }).await
    }

    /// Stops `Presence` events for these users.
    pub async fn unwatch_presence(&self, user_ids: Vec<u64>) -> Result<()> {
        let c = self.client.clone();
        run(async move { Ok(c.unwatch_presence(&users(user_ids)).await?) }).await
    }

    // ---- cursors and shutdown -------------------------------------------

    /// The newest seq delivered to the listener in a conversation.
    pub async fn cursor(&self, conversation_id: u64) -> u64 {
        self.client.cursor(ConversationId(conversation_id)).await
    }

    /// Restores a stored cursor before `resume` (after an app restart).
    pub async fn set_cursor(&self, conversation_id: u64, seq: u64) {
        self.client
            .set_cursor(ConversationId(conversation_id), seq)
            .await;
    }

    /// Every tracked cursor, for the app to store.
    pub async fn cursors(&self) -> Vec<Cursor> {
        self.client
            .cursors()
            .await
            .into_iter()
            .map(Into::into)
            .collect()
    }

    /// Closes the connection and stops reconnecting; the listener gets
    /// `Ended` once the queued events are delivered. (Not `close`: Kotlin
    /// objects are `AutoCloseable`, whose `close` frees the Rust object.)
    pub async fn shutdown(&self) {
        let c = self.client.clone();
        // The only failure is a runtime that could not start, and then
        // there is nothing to close.
        let _ = run(async move {
            c.close().await;
            Ok(())
        })
        .await;
    }
}
