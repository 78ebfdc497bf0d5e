//! Records the server stores, encoded with protobuf like the wire types so
//! that fields can be added without migrating old data. Message bodies are
//! stored as `pb::Message` itself. The layout is described in the README
//! ("Storage layout") and locked by `tests/storage_layout.rs`.

use chat_protocol::pb;

/// `users` keyspace value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserRecord {
    /// Unique login name.
    #[prost(string, tag = "1")]
    pub username: String,
    /// Shown to other users.
    #[prost(string, tag = "2")]
    pub display_name: String,
    /// argon2id PHC string.
    #[prost(string, tag = "3")]
    pub password_hash: String,
    /// Unix milliseconds.
    #[prost(uint64, tag = "4")]
    pub created_at_ms: u64,
    /// Whether others see last-seen times.
    #[prost(bool, tag = "5")]
    pub hide_last_seen: bool,
    /// Disabled by the operator (`chatd disable-user`): logins are refused
    /// with ACCOUNT_DISABLED.
    #[prost(bool, tag = "6")]
    pub disabled: bool,
    /// The user deleted the account (DeleteAccount, `chatd delete-user`):
    /// a tombstone with no password, display name or profile, whose
    /// username stays taken.
    #[prost(bool, tag = "7")]
    pub deleted: bool,
}

impl UserRecord {
    /// The public part of the record; a deleted account shows only that
    /// it was.
    pub fn profile(&self, user_id: u64) -> pb::Profile {
        if self.deleted {
            return pb::Profile {
                user_id,
                deleted: true,
                ..Default::default()
            };
        }
        pb::Profile {
            user_id,
            username: self.username.clone(),
            display_name: self.display_name.clone(),
            created_at_ms: self.created_at_ms,
            deleted: false,
        }
    }

    /// The record erased down to its tombstone: the username (which stays
    /// taken) and the creation time.
    pub fn tombstone(&self) -> Self {
        Self {
            username: self.username.clone(),
            display_name: String::new(),
            password_hash: String::new(),
            created_at_ms: self.created_at_ms,
            hide_last_seen: true,
            disabled: false,
            deleted: true,
        }
    }
}

/// `tokens` keyspace value; the key is the SHA-256 of the token.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TokenRecord {
    /// Owner of the token.
    #[prost(uint64, tag = "1")]
    pub user_id: u64,
    /// Unix milliseconds after which the token is refused.
    #[prost(uint64, tag = "2")]
    pub expires_at_ms: u64,
    /// Device that logged in.
    #[prost(string, tag = "3")]
    pub device_id: String,
}

/// `user_tokens` keyspace value (key: user ‖ SHA-256(session token)): the
/// push notification address the device holding that session registered,
/// if any. Kept with the session token so that logging out, or the token
/// expiring, ends the notifications too.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRegistration {
    /// `apns`, `fcm` or `webpush`; empty if the device registered none.
    #[prost(string, tag = "1")]
    pub provider: String,
    /// The provider's device token.
    #[prost(string, tag = "2")]
    pub token: String,
    /// The device, as named at login.
    #[prost(string, tag = "3")]
    pub device_id: String,
}

/// `conversations` keyspace value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConversationRecord {
    /// `pb::ConversationKind`.
    #[prost(int32, tag = "1")]
    pub kind: i32,
    /// Group or channel title.
    #[prost(string, tag = "2")]
    pub title: String,
    /// Unix milliseconds.
    #[prost(uint64, tag = "3")]
    pub created_at_ms: u64,
    /// Creator.
    #[prost(uint64, tag = "4")]
    pub created_by: u64,
}

/// `members` keyspace value (key: conversation ‖ user): the member's role
/// and receipt cursors. Kept per conversation so that the owner shard loads
/// a conversation's members and cursors with one prefix scan.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct MemberRecord {
    /// `pb::Role`.
    #[prost(int32, tag = "1")]
    pub role: i32,
    /// Conversation seq at which the user joined (0 = at creation).
    #[prost(uint64, tag = "2")]
    pub joined_seq: u64,
    /// Highest seq the user has read.
    #[prost(uint64, tag = "3")]
    pub read_seq: u64,
    /// Highest seq delivered to one of the user's devices.
    #[prost(uint64, tag = "4")]
    pub delivered_seq: u64,
    /// `pb::NotificationLevel` the user chose (0: ALL).
    #[prost(int32, tag = "5")]
    pub notification_level: i32,
    /// With MUTED: Unix ms when the mute ends (0: until changed).
    #[prost(uint64, tag = "6")]
    pub muted_until_ms: u64,
}

impl MemberRecord {
    /// Whether the member gets a push notification for a message at
    /// `now_ms` that mentions them (`mentioned`, or @everyone) or not
    /// (`spec/messages.md`, "SetNotificationLevel").
    pub fn notified(&self, mentioned: bool, now_ms: u64) -> bool {
        match pb::NotificationLevel::try_from(self.notification_level) {
            Ok(pb::NotificationLevel::Muted) => {
                self.muted_until_ms != 0 && now_ms >= self.muted_until_ms
            }
            Ok(pb::NotificationLevel::Mentions) => mentioned,
            _ => true,
        }
    }
}

/// `user_conversations` keyspace value (key: user ‖ conversation): the
/// per-user index of conversations.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserConversationRecord {
    /// Conversation seq at which the user joined.
    #[prost(uint64, tag = "3")]
    pub joined_seq: u64,
}

/// `idempotency` keyspace value (key: conversation ‖ sender ‖ client_msg_id):
/// the original ack.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IdempotencyRecord {
    /// Seq of the original message.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// Its message id.
    #[prost(fixed64, tag = "2")]
    pub message_id: u64,
    /// Its timestamp.
    #[prost(uint64, tag = "3")]
    pub sent_at_ms: u64,
}

/// `reactions` keyspace value (key: conversation ‖ seq): how many users
/// reacted to the message with each emoji, in the order the emoji were
/// first used; an emoji nobody uses any more is dropped.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReactionCounts {
    /// One entry per emoji.
    #[prost(message, repeated, tag = "1")]
    pub counts: Vec<ReactionCount>,
}

/// One emoji of [`ReactionCounts`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReactionCount {
    /// The emoji.
    #[prost(string, tag = "1")]
    pub emoji: String,
    /// Users who reacted with it.
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

/// `reactors` keyspace value (key: conversation ‖ seq ‖ user): the emoji
/// one user reacted to the message with; the key is deleted when there are
/// none left.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserReactions {
    /// The emoji, each once.
    #[prost(string, repeated, tag = "1")]
    pub emoji: Vec<String>,
}

/// `bans` keyspace value (key: conversation ‖ user): who banned the user
/// from the group or channel, and when.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BanRecord {
    /// The owner or admin who banned.
    #[prost(uint64, tag = "1")]
    pub by: u64,
    /// Unix milliseconds.
    #[prost(uint64, tag = "2")]
    pub at_ms: u64,
}
