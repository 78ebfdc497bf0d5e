//! Records and enums of the chat/1 protocol (`spec/chat.proto`) as the
//! foreign languages see them: ids are plain integers, bytes are byte
//! arrays, enums are typed (an unknown wire value reads as `Unspecified`).

use chat_client::pb;

/// Declares a foreign enum mirroring a protobuf enum, with conversions both
/// ways.
macro_rules! mirror_enum {
    ($(#[$doc:meta])* $name:ident = $wire:path { $($(#[$vdoc:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl From<$wire> for $name {
            fn from(w: $wire) -> Self {
                match w {
                    $(<$wire>::$variant => $name::$variant),+
                }
            }
        }

        impl From<$name> for $wire {
            fn from(v: $name) -> Self {
                match v {
                    $($name::$variant => <$wire>::$variant),+
                }
            }
        }
    };
}

mirror_enum! {
    /// What kind of conversation.
    ConversationKind = pb::ConversationKind {
        /// Not set.
        Unspecified,
        /// Two users.
        Direct,
        /// Members with roles.
        Group,
        /// Broadcast to subscribers.
        Channel,
    }
}

mirror_enum! {
    /// A member's role in a conversation.
    Role = pb::Role {
        /// Not set.
        Unspecified,
        /// May read and send.
        Member,
        /// May also manage members and the title.
        Admin,
        /// May also change roles and transfer ownership.
        Owner,
        /// A channel subscriber: reads only.
        Subscriber,
    }
}

mirror_enum! {
    /// Who wrote a message.
    MessageKind = pb::MessageKind {
        /// Not set.
        Unspecified,
        /// A user.
        User,
        /// The server, describing a change (`Message.system`).
        System,
    }
}

mirror_enum! {
    /// Which cursor a receipt moved.
    ReceiptKind = pb::ReceiptKind {
        /// Not set.
        Unspecified,
        /// Delivered to a device.
        Delivered,
        /// Read by the user.
        Read,
    }
}

mirror_enum! {
    /// A user's presence.
    PresenceStatus = pb::PresenceStatus {
        /// Not set.
        Unspecified,
        /// Online.
        Online,
        /// Away.
        Away,
        /// Busy.
        Busy,
        /// Offline.
        Offline,
    }
}

mirror_enum! {
    /// When a conversation's messages notify this user.
    NotificationLevel = pb::NotificationLevel {
        /// Not set: as `All`.
        Unspecified,
        /// Every message.
        All,
        /// Messages that mention the user or everyone.
        Mentions,
        /// None (until `muted_until_ms`, if set).
        Muted,
    }
}

mirror_enum! {
    /// What a SYSTEM message reports.
    SystemEventKind = pb::system_event::Kind {
        /// Not set.
        Unspecified,
        /// The conversation was created.
        Created,
        /// Members were added.
        MemberAdded,
        /// A member was removed.
        MemberRemoved,
        /// A member left.
        MemberLeft,
        /// A member's role changed.
        RoleChanged,
        /// The title changed.
        TitleChanged,
        /// Ownership moved to another member.
        OwnershipTransferred,
        /// A message was deleted.
        MessageDeleted,
        /// A member was banned (removed, kept out until unbanned).
        MemberBanned,
    }
}

/// What the server said in Welcome.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Welcome {
    /// Protocol version in use.
    pub protocol_version: u32,
    /// The server's name.
    pub server_name: String,
    /// Largest frame, bytes.
    pub max_frame_bytes: u32,
    /// Largest message text plus media, bytes.
    pub max_message_bytes: u32,
    /// Heartbeat interval, milliseconds.
    pub heartbeat_interval_ms: u32,
    /// Optional features the server offers.
    pub capabilities: Vec<String>,
}

impl From<pb::Welcome> for Welcome {
    fn from(w: pb::Welcome) -> Self {
        Self {
            protocol_version: w.protocol_version,
            server_name: w.server_name,
            max_frame_bytes: w.max_frame_bytes,
            max_message_bytes: w.max_message_bytes,
            heartbeat_interval_ms: w.heartbeat_interval_ms,
            capabilities: w.capabilities,
        }
    }
}

/// A user's public profile.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Profile {
    /// The user's id.
    pub user_id: u64,
    /// The login name.
    pub username: String,
    /// The name shown to others.
    pub display_name: String,
    /// When the account was created, Unix milliseconds.
    pub created_at_ms: u64,
    /// The user deleted the account: show their messages as from a deleted
    /// user.
    pub deleted: bool,
}

impl From<pb::Profile> for Profile {
    fn from(p: pb::Profile) -> Self {
        Self {
            user_id: p.user_id,
            username: p.username,
            display_name: p.display_name,
            created_at_ms: p.created_at_ms,
            deleted: p.deleted,
        }
    }
}

/// A logged-in session (Register, Login, Resume).
#[derive(Debug, Clone, uniffi::Record)]
pub struct AuthSession {
    /// The user's id.
    pub user_id: u64,
    /// The token for `resume`; store it securely.
    pub session_token: String,
    /// When the token expires, Unix milliseconds.
    pub token_expires_at_ms: u64,
    /// The user's profile, if the server sent it.
    pub profile: Option<Profile>,
}

impl From<pb::AuthOk> for AuthSession {
    fn from(a: pb::AuthOk) -> Self {
        Self {
            user_id: a.user_id,
            session_token: a.session_token,
            token_expires_at_ms: a.token_expires_at_ms,
            profile: a.profile.map(Into::into),
        }
    }
}

/// The result of `resume`: the session, and what changed while away. The
/// missed messages themselves arrive as `ChatEvent.Message`.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ResumeResult {
    /// The resumed session.
    pub session: Option<AuthSession>,
    /// Conversations with missed messages: `(conversation, from, to)`.
    pub gaps: Vec<Gap>,
    /// Conversations the user no longer belongs to.
    pub removed_conversation_ids: Vec<u64>,
}

/// Messages missed in one conversation, reported by Resume.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Gap {
    /// The conversation.
    pub conversation_id: u64,
    /// First missed seq.
    pub from_seq: u64,
    /// Last missed seq.
    pub to_seq: u64,
    /// Whether the reply held only part of them (the client fetches the
    /// rest and delivers them as events).
    pub truncated: bool,
}

impl From<pb::ResumeOk> for ResumeResult {
    fn from(r: pb::ResumeOk) -> Self {
        let sync = r.sync.unwrap_or_default();
        Self {
            session: r.auth.map(Into::into),
            gaps: sync
                .gaps
                .into_iter()
                .map(|g| Gap {
                    conversation_id: g.conversation_id,
                    from_seq: g.from_seq,
                    to_seq: g.to_seq,
                    truncated: g.truncated,
                })
                .collect(),
            removed_conversation_ids: sync.removed_conversation_ids,
        }
    }
}

/// A member of a conversation.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Member {
    /// The user's id.
    pub user_id: u64,
    /// The user's role.
    pub role: Role,
}

/// A conversation's metadata.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Conversation {
    /// The conversation's id.
    pub conversation_id: u64,
    /// Direct, group or channel.
    pub kind: ConversationKind,
    /// The title (empty for direct conversations).
    pub title: String,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    /// The creator's user id.
    pub created_by: u64,
    /// The newest message's seq.
    pub last_seq: u64,
    /// This user's role.
    pub my_role: Role,
    /// How many members.
    pub member_count: u32,
    /// The members (may be a prefix of them for large conversations).
    pub members: Vec<Member>,
    /// Users banned from the group or channel (for owners and admins only).
    pub banned_ids: Vec<u64>,
}

impl From<pb::Conversation> for Conversation {
    fn from(c: pb::Conversation) -> Self {
        Self {
            conversation_id: c.conversation_id,
            kind: c.kind().into(),
            title: c.title.clone(),
            created_at_ms: c.created_at_ms,
            created_by: c.created_by,
            last_seq: c.last_seq,
            my_role: c.my_role().into(),
            member_count: c.member_count,
            members: c
                .members
                .iter()
                .map(|m| Member {
                    user_id: m.user_id,
                    role: m.role().into(),
                })
                .collect(),
            banned_ids: c.banned_ids.clone(),
        }
    }
}

/// One row of the conversation list.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ConversationSummary {
    /// The conversation's id.
    pub conversation_id: u64,
    /// Direct, group or channel.
    pub kind: ConversationKind,
    /// The title.
    pub title: String,
    /// The newest message's seq.
    pub last_seq: u64,
    /// Unix milliseconds of the newest activity.
    pub last_activity_ms: u64,
    /// The newest message, if any.
    pub last_message: Option<Message>,
    /// This user's read cursor.
    pub read_seq: u64,
    /// This user's delivered cursor.
    pub delivered_seq: u64,
    /// Messages after the read cursor.
    pub unread_count: u64,
    /// This user's role.
    pub my_role: Role,
    /// Unread messages that mention this user or everyone (up to 1000).
    pub mention_count: u64,
    /// This user's notification level here.
    pub notification_level: NotificationLevel,
    /// With `Muted`: when the mute ends, Unix milliseconds (0: until changed).
    pub muted_until_ms: u64,
}

/// A page of the conversation list.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ConversationList {
    /// Newest activity first.
    pub conversations: Vec<ConversationSummary>,
    /// Pass to `list_conversations_before` for the next page; 0 at the end.
    pub next_before_activity_ms: u64,
}

impl From<pb::ConversationList> for ConversationList {
    fn from(l: pb::ConversationList) -> Self {
        Self {
            conversations: l
                .conversations
                .into_iter()
                .map(|s| ConversationSummary {
                    conversation_id: s.conversation_id,
                    kind: s.kind().into(),
                    title: s.title.clone(),
                    last_seq: s.last_seq,
                    last_activity_ms: s.last_activity_ms,
                    my_role: s.my_role().into(),
                    notification_level: s.notification_level().into(),
                    last_message: s.last_message.map(Into::into),
                    read_seq: s.read_seq,
                    delivered_seq: s.delivered_seq,
                    unread_count: s.unread_count,
                    mention_count: s.mention_count,
                    muted_until_ms: s.muted_until_ms,
                })
                .collect(),
            next_before_activity_ms: l.next_before_activity_ms,
        }
    }
}

/// An attachment stored through an upload ticket.
#[derive(Debug, Clone, uniffi::Record)]
pub struct MediaRef {
    /// From the upload ticket.
    pub media_id: String,
    /// MIME type.
    pub mime_type: String,
    /// Size, bytes.
    pub size_bytes: u64,
    /// Where to download it.
    pub url: String,
    /// Pixels, for images and video; 0 otherwise.
    pub width: u32,
    /// Pixels, for images and video; 0 otherwise.
    pub height: u32,
    /// A small preview image.
    pub thumbnail: Vec<u8>,
}

impl From<pb::MediaRef> for MediaRef {
    fn from(m: pb::MediaRef) -> Self {
        Self {
            media_id: m.media_id,
            mime_type: m.mime_type,
            size_bytes: m.size_bytes,
            url: m.url,
            width: m.width,
            height: m.height,
            thumbnail: m.thumbnail.to_vec(),
        }
    }
}

impl From<MediaRef> for pb::MediaRef {
    fn from(m: MediaRef) -> Self {
        Self {
            media_id: m.media_id,
            mime_type: m.mime_type,
            size_bytes: m.size_bytes,
            url: m.url,
            width: m.width,
            height: m.height,
            thumbnail: m.thumbnail.into(),
        }
    }
}

/// Where to upload an attachment.
#[derive(Debug, Clone, uniffi::Record)]
pub struct UploadTicket {
    /// Goes into `MediaRef.media_id`.
    pub media_id: String,
    /// HTTP PUT target.
    pub upload_url: String,
    /// Goes into `MediaRef.url`.
    pub download_url: String,
    /// Unix milliseconds after which the upload URL is refused.
    pub expires_at_ms: u64,
}

impl From<pb::UploadTicket> for UploadTicket {
    fn from(t: pb::UploadTicket) -> Self {
        Self {
            media_id: t.media_id,
            upload_url: t.upload_url,
            download_url: t.download_url,
            expires_at_ms: t.expires_at_ms,
        }
    }
}

/// What a SYSTEM message reports.
#[derive(Debug, Clone, uniffi::Record)]
pub struct SystemEvent {
    /// What happened.
    pub kind: SystemEventKind,
    /// Who did it.
    pub actor_id: u64,
    /// Whom it concerned.
    pub user_ids: Vec<u64>,
    /// The new role, for `RoleChanged`.
    pub role: Role,
    /// The new title, for `TitleChanged`.
    pub title: String,
    /// The deleted message, for `MessageDeleted`.
    pub target_seq: u64,
}

impl From<pb::SystemEvent> for SystemEvent {
    fn from(s: pb::SystemEvent) -> Self {
        Self {
            kind: s.kind().into(),
            role: s.role().into(),
            actor_id: s.actor_id,
            user_ids: s.user_ids,
            title: s.title,
            target_seq: s.target_seq,
        }
    }
}

/// A stored message.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Message {
    /// The conversation.
    pub conversation_id: u64,
    /// Position in the conversation, from 1, without holes.
    pub seq: u64,
    /// Globally unique id.
    pub message_id: u64,
    /// The author (0 for SYSTEM messages).
    pub sender_id: u64,
    /// Unix milliseconds, as stored by the server.
    pub sent_at_ms: u64,
    /// The sender's idempotency key.
    pub client_msg_id: String,
    /// User or SYSTEM.
    pub kind: MessageKind,
    /// The text.
    pub text: String,
    /// An attachment.
    pub media: Option<MediaRef>,
    /// End-to-end encrypted content, opaque to the server.
    pub ciphertext: Vec<u8>,
    /// The message replied to, 0 if none.
    pub reply_to_seq: u64,
    /// For SYSTEM messages, what happened.
    pub system: Option<SystemEvent>,
    /// Deleted: only the metadata is left.
    pub deleted: bool,
    /// Unix milliseconds of the latest edit; 0 if never edited.
    pub edited_at_ms: u64,
    /// Reactions as this user sees them (filled in history and sync; empty
    /// in live pushes).
    pub reactions: Vec<Reaction>,
    /// Members the message mentions.
    pub mention_ids: Vec<u64>,
    /// The message mentions everyone.
    pub mention_everyone: bool,
}

impl From<pb::Message> for Message {
    fn from(m: pb::Message) -> Self {
        Self {
            kind: m.kind().into(),
            conversation_id: m.conversation_id,
            seq: m.seq,
            message_id: m.message_id,
            sender_id: m.sender_id,
            sent_at_ms: m.sent_at_ms,
            client_msg_id: m.client_msg_id,
            text: m.text,
            media: m.media.map(Into::into),
            ciphertext: m.ciphertext.to_vec(),
            reply_to_seq: m.reply_to_seq,
            system: m.system.map(Into::into),
            deleted: m.deleted,
            edited_at_ms: m.edited_at_ms,
            reactions: m.reactions.into_iter().map(Into::into).collect(),
            mention_ids: m.mention_ids,
            mention_everyone: m.mention_everyone,
        }
    }
}

/// One emoji's reactions to a message.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Reaction {
    /// The emoji.
    pub emoji: String,
    /// How many users reacted with it.
    pub count: u32,
    /// This user is one of them (always false in a `ReactionEvent`).
    pub mine: bool,
}

impl From<pb::Reaction> for Reaction {
    fn from(r: pb::Reaction) -> Self {
        Self {
            emoji: r.emoji,
            count: r.count,
            mine: r.mine,
        }
    }
}

/// A reaction was added or removed.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ReactionEvent {
    /// The conversation.
    pub conversation_id: u64,
    /// The message.
    pub seq: u64,
    /// Who reacted.
    pub user_id: u64,
    /// The emoji.
    pub emoji: String,
    /// True if the reaction was removed.
    pub removed: bool,
    /// The message's reactions after the change.
    pub reactions: Vec<Reaction>,
}

impl From<pb::ReactionEvent> for ReactionEvent {
    fn from(r: pb::ReactionEvent) -> Self {
        Self {
            conversation_id: r.conversation_id,
            seq: r.seq,
            user_id: r.user_id,
            emoji: r.emoji,
            removed: r.removed,
            reactions: r.reactions.into_iter().map(Into::into).collect(),
        }
    }
}

/// A message to send. Leave `client_msg_id` empty to have one generated;
/// the client re-sends under the same id until stored.
#[derive(Debug, Clone, uniffi::Record)]
pub struct OutgoingMessage {
    /// The conversation.
    pub conversation_id: u64,
    /// The text.
    pub text: String,
    /// An attachment, uploaded through `request_upload`.
    pub media: Option<MediaRef>,
    /// End-to-end encrypted content.
    pub ciphertext: Vec<u8>,
    /// The message replied to, 0 if none.
    pub reply_to_seq: u64,
    /// The idempotency key; empty for a fresh random one.
    pub client_msg_id: String,
    /// Members the message mentions (resolve `@username` to ids first).
    pub mention_ids: Vec<u64>,
    /// Mentions everyone (groups only).
    pub mention_everyone: bool,
}

impl From<OutgoingMessage> for pb::SendMessage {
    fn from(m: OutgoingMessage) -> Self {
        Self {
            conversation_id: m.conversation_id,
            client_msg_id: m.client_msg_id,
            text: m.text,
            media: m.media.map(Into::into),
            ciphertext: m.ciphertext.into(),
            reply_to_seq: m.reply_to_seq,
            first_attempt: false,
            mention_ids: m.mention_ids,
            mention_everyone: m.mention_everyone,
        }
    }
}

/// The server stored a message.
#[derive(Debug, Clone, uniffi::Record)]
pub struct SendAck {
    /// The conversation.
    pub conversation_id: u64,
    /// The message's seq.
    pub seq: u64,
    /// The message's global id.
    pub message_id: u64,
    /// Unix milliseconds, as stored.
    pub sent_at_ms: u64,
    /// The idempotency key used.
    pub client_msg_id: String,
    /// An earlier attempt had already been stored; this is its ack.
    pub duplicate: bool,
}

impl From<pb::SendAck> for SendAck {
    fn from(a: pb::SendAck) -> Self {
        Self {
            conversation_id: a.conversation_id,
            seq: a.seq,
            message_id: a.message_id,
            sent_at_ms: a.sent_at_ms,
            client_msg_id: a.client_msg_id,
            duplicate: a.duplicate,
        }
    }
}

/// A page of a conversation's history, ascending by seq.
#[derive(Debug, Clone, uniffi::Record)]
pub struct MessagePage {
    /// The conversation.
    pub conversation_id: u64,
    /// The messages.
    pub messages: Vec<Message>,
    /// More messages exist in the direction asked for.
    pub has_more: bool,
    /// The conversation's newest seq.
    pub last_seq: u64,
}

impl From<pb::MessagePage> for MessagePage {
    fn from(p: pb::MessagePage) -> Self {
        Self {
            conversation_id: p.conversation_id,
            messages: p.messages.into_iter().map(Into::into).collect(),
            has_more: p.has_more,
            last_seq: p.last_seq,
        }
    }
}

/// The newest seq delivered to the app in one conversation.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Cursor {
    /// The conversation.
    pub conversation_id: u64,
    /// The seq.
    pub seq: u64,
}

impl From<pb::Cursor> for Cursor {
    fn from(c: pb::Cursor) -> Self {
        Self {
            conversation_id: c.conversation_id,
            seq: c.seq,
        }
    }
}

/// How many members received and read a message.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ReceiptCounts {
    /// The conversation.
    pub conversation_id: u64,
    /// The message.
    pub seq: u64,
    /// Members besides the sender.
    pub member_count: u32,
    /// Of them, how many have it delivered.
    pub delivered_count: u32,
    /// Of them, how many read it.
    pub read_count: u32,
}

impl From<pb::ReceiptCounts> for ReceiptCounts {
    fn from(c: pb::ReceiptCounts) -> Self {
        Self {
            conversation_id: c.conversation_id,
            seq: c.seq,
            member_count: c.member_count,
            delivered_count: c.delivered_count,
            read_count: c.read_count,
        }
    }
}

/// A member's delivered or read cursor moved.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ReceiptEvent {
    /// The conversation.
    pub conversation_id: u64,
    /// The member.
    pub user_id: u64,
    /// Delivered or read.
    pub kind: ReceiptKind,
    /// The new cursor.
    pub seq: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
}

impl From<pb::ReceiptEvent> for ReceiptEvent {
    fn from(r: pb::ReceiptEvent) -> Self {
        Self {
            kind: r.kind().into(),
            conversation_id: r.conversation_id,
            user_id: r.user_id,
            seq: r.seq,
            at_ms: r.at_ms,
        }
    }
}

/// Someone started or stopped typing.
#[derive(Debug, Clone, uniffi::Record)]
pub struct TypingEvent {
    /// The conversation.
    pub conversation_id: u64,
    /// Who.
    pub user_id: u64,
    /// Typing now.
    pub active: bool,
    /// Treat as stopped after this many milliseconds without a renewal.
    pub expires_in_ms: u32,
}

impl From<pb::TypingEvent> for TypingEvent {
    fn from(t: pb::TypingEvent) -> Self {
        Self {
            conversation_id: t.conversation_id,
            user_id: t.user_id,
            active: t.active,
            expires_in_ms: t.expires_in_ms,
        }
    }
}

/// A watched user's presence changed.
#[derive(Debug, Clone, uniffi::Record)]
pub struct PresenceEvent {
    /// Who.
    pub user_id: u64,
    /// The new status.
    pub status: PresenceStatus,
    /// Unix milliseconds last seen online (0 if hidden).
    pub last_seen_ms: u64,
}

impl From<pb::PresenceEvent> for PresenceEvent {
    fn from(p: pb::PresenceEvent) -> Self {
        Self {
            status: p.status().into(),
            user_id: p.user_id,
            last_seen_ms: p.last_seen_ms,
        }
    }
}

/// A conversation's metadata changed.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ConversationEvent {
    /// The conversation.
    pub conversation_id: u64,
    /// The seq of the SYSTEM message recording it.
    pub seq: u64,
    /// What changed.
    pub event: Option<SystemEvent>,
}

impl From<pb::ConversationEvent> for ConversationEvent {
    fn from(c: pb::ConversationEvent) -> Self {
        Self {
            conversation_id: c.conversation_id,
            seq: c.seq,
            event: c.event.map(Into::into),
        }
    }
}

/// The server is going away.
#[derive(Debug, Clone, uniffi::Record)]
pub struct GoAway {
    /// Why (usually `ShuttingDown`).
    pub code: crate::ErrorCode,
    /// Detail text, for logs.
    pub detail: String,
    /// The client reconnects after this many milliseconds.
    pub reconnect_after_ms: u32,
}

impl From<pb::GoAway> for GoAway {
    fn from(g: pb::GoAway) -> Self {
        Self {
            code: g.code().into(),
            detail: g.message,
            reconnect_after_ms: g.reconnect_after_ms,
        }
    }
}
