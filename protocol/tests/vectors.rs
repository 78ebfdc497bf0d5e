//! Every vector in `spec/vectors/frames.json` is decoded and re-encoded here.
//!
//! The expected values live in [`samples`]; the JSON file is their encoding.
//! After a deliberate change to `chat.proto`, regenerate the file with
//! `UPDATE_VECTORS=1 cargo test -p chat-protocol --test vectors` and review
//! the diff.

use chat_protocol::codec::{self, FrameError};
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

const MAX: usize = chat_protocol::DEFAULT_MAX_FRAME_BYTES;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Vector {
    name: String,
    direction: String,
    hex: String,
    expect: String,
    /// True when the bytes are the one canonical encoding of what they
    /// decode to: re-encoding the decoded frame gives exactly these bytes.
    /// False for frames that decode but re-encode differently (a
    /// non-minimal prefix, skipped unknown fields) and for every vector
    /// that does not decode to a frame.
    canonical: bool,
    meaning: String,
}

enum Sample {
    Client(pb::ClientFrame),
    Server(pb::ServerFrame),
}

/// A hand-made vector: raw bytes and the outcome a receiver must reach.
struct Raw {
    name: &'static str,
    direction: &'static str,
    bytes: Vec<u8>,
    expect: &'static str,
    meaning: &'static str,
}

fn client(request_id: u64, body: C) -> Sample {
    Sample::Client(pb::ClientFrame {
        request_id,
        body: Some(body),
    })
}

fn server(request_id: u64, body: S) -> Sample {
    Sample::Server(pb::ServerFrame {
        request_id,
        body: Some(body),
    })
}

fn device() -> Option<pb::DeviceInfo> {
    Some(pb::DeviceInfo {
        device_id: "d1".into(),
        platform: "ios".into(),
    })
}

fn text_message(seq: u64) -> pb::Message {
    pb::Message {
        conversation_id: 9,
        seq,
        message_id: 0x0193_0000_0000_1001,
        sender_id: 1,
        sent_at_ms: 1_763_800_000_000,
        client_msg_id: "m1".into(),
        kind: pb::MessageKind::User as i32,
        text: "hi".into(),
        ..Default::default()
    }
}

/// One well-formed frame of every kind, with what it means.
fn samples() -> Vec<(&'static str, &'static str, Sample)> {
    use pb::*;
    vec![
        (
            "client_hello",
            "Hello, protocol version 1",
            client(
                1,
                C::Hello(Hello {
                    protocol_version: 1,
                    client_name: "app".into(),
                    client_version: "1.0".into(),
                    capabilities: vec!["datagrams".into()],
                }),
            ),
        ),
        (
            "client_register",
            "Register alice",
            client(
                2,
                C::Register(Register {
                    username: "alice".into(),
                    password: "correct horse".into(),
                    display_name: "Alice".into(),
                    device: device(),
                }),
            ),
        ),
        (
            "client_login",
            "Login alice",
            client(
                3,
                C::Login(Login {
                    username: "alice".into(),
                    password: "correct horse".into(),
                    device: device(),
                }),
            ),
        ),
        (
            "client_logout",
            "Logout this device",
            client(4, C::Logout(Logout { all_devices: false })),
        ),
        (
            "client_delete_message",
            "Delete seq 3 of conversation 9 for everyone",
            client(
                31,
                C::DeleteMessage(DeleteMessage {
                    conversation_id: 9,
                    seq: 3,
                }),
            ),
        ),
        (
            "client_edit_message",
            "Edit the text of seq 3 of conversation 9",
            client(
                32,
                C::EditMessage(EditMessage {
                    conversation_id: 9,
                    seq: 3,
                    text: "hi!".into(),
                }),
            ),
        ),
        (
            "client_react",
            "React to seq 3 of conversation 9 with a thumbs-up",
            client(
                33,
                C::React(React {
                    conversation_id: 9,
                    seq: 3,
                    emoji: "👍".into(),
                    remove: false,
                }),
            ),
        ),
        (
            "client_block_user",
            "Block user 2",
            client(34, C::BlockUser(BlockUser { user_id: 2 })),
        ),
        (
            "client_unblock_user",
            "Unblock user 2",
            client(35, C::UnblockUser(UnblockUser { user_id: 2 })),
        ),
        (
            "client_list_blocked",
            "List the users the caller blocked",
            client(36, C::ListBlocked(ListBlocked {})),
        ),
        (
            "client_ban_member",
            "Ban user 5 from conversation 9",
            client(
                37,
                C::BanMember(BanMember {
                    conversation_id: 9,
                    user_id: 5,
                }),
            ),
        ),
        (
            "client_unban_member",
            "Lift user 5's ban from conversation 9",
            client(
                38,
                C::UnbanMember(UnbanMember {
                    conversation_id: 9,
                    user_id: 5,
                }),
            ),
        ),
        (
            "client_set_notification_level",
            "Mentions only in conversation 9",
            client(
                39,
                C::SetNotificationLevel(SetNotificationLevel {
                    conversation_id: 9,
                    level: NotificationLevel::Mentions as i32,
                    muted_until_ms: 0,
                }),
            ),
        ),
        (
            "client_change_password",
            "Change the password",
            client(
                9,
                C::ChangePassword(ChangePassword {
                    current_password: "correct horse".into(),
                    new_password: "battery staple".into(),
                }),
            ),
        ),
        (
            "client_delete_account",
            "Delete the caller's account, with its password",
            client(
                10,
                C::DeleteAccount(DeleteAccount {
                    password: "correct horse".into(),
                }),
            ),
        ),
        (
            "client_resume",
            "Resume with a token and one cursor",
            client(
                5,
                C::Resume(Resume {
                    session_token: "tok".into(),
                    device: device(),
                    cursors: vec![Cursor {
                        conversation_id: 9,
                        seq: 41,
                    }],
                }),
            ),
        ),
        (
            "client_get_profile",
            "Profile of user 2",
            client(
                6,
                C::GetProfile(GetProfile {
                    user_id: 2,
                    username: String::new(),
                }),
            ),
        ),
        (
            "client_update_profile",
            "Change display name",
            client(
                7,
                C::UpdateProfile(UpdateProfile {
                    display_name: "Al".into(),
                    hide_last_seen: true,
                }),
            ),
        ),
        (
            "client_register_push_token",
            "FCM push token",
            client(
                8,
                C::RegisterPushToken(RegisterPushToken {
                    provider: "fcm".into(),
                    token: "t".into(),
                }),
            ),
        ),
        (
            "client_create_conversation",
            "Create a group with users 2 and 3",
            client(
                10,
                C::CreateConversation(CreateConversation {
                    kind: ConversationKind::Group as i32,
                    member_ids: vec![2, 3],
                    title: "team".into(),
                }),
            ),
        ),
        (
            "client_add_members",
            "Add user 4 to conversation 9",
            client(
                11,
                C::AddMembers(AddMembers {
                    conversation_id: 9,
                    user_ids: vec![4],
                }),
            ),
        ),
        (
            "client_remove_member",
            "Remove user 4 from conversation 9",
            client(
                12,
                C::RemoveMember(RemoveMember {
                    conversation_id: 9,
                    user_id: 4,
                }),
            ),
        ),
        (
            "client_set_role",
            "Make user 2 an admin",
            client(
                13,
                C::SetRole(SetRole {
                    conversation_id: 9,
                    user_id: 2,
                    role: Role::Admin as i32,
                }),
            ),
        ),
        (
            "client_leave_conversation",
            "Leave conversation 9",
            client(
                14,
                C::LeaveConversation(LeaveConversation { conversation_id: 9 }),
            ),
        ),
        (
            "client_update_conversation",
            "Rename conversation 9",
            client(
                15,
                C::UpdateConversation(UpdateConversation {
                    conversation_id: 9,
                    title: "new".into(),
                }),
            ),
        ),
        (
            "client_transfer_ownership",
            "Hand conversation 9 to user 2",
            client(
                16,
                C::TransferOwnership(TransferOwnership {
                    conversation_id: 9,
                    new_owner_id: 2,
                }),
            ),
        ),
        (
            "client_list_conversations",
            "First 20 conversations",
            client(
                17,
                C::ListConversations(ListConversations {
                    limit: 20,
                    before_activity_ms: 0,
                }),
            ),
        ),
        (
            "client_get_conversation",
            "Conversation 9",
            client(
                18,
                C::GetConversation(GetConversation { conversation_id: 9 }),
            ),
        ),
        (
            "client_send_message",
            "Send \"hi\" to conversation 9",
            client(
                20,
                C::SendMessage(SendMessage {
                    conversation_id: 9,
                    client_msg_id: "m1".into(),
                    text: "hi".into(),
                    ..Default::default()
                }),
            ),
        ),
        (
            "client_get_history",
            "50 messages before seq 100",
            client(
                21,
                C::GetHistory(GetHistory {
                    conversation_id: 9,
                    before_seq: 100,
                    after_seq: None,
                    limit: 50,
                }),
            ),
        ),
        (
            "client_sync",
            "Sync from cursor 41",
            client(
                22,
                C::Sync(Sync {
                    cursors: vec![Cursor {
                        conversation_id: 9,
                        seq: 41,
                    }],
                    limit_per_conversation: 100,
                }),
            ),
        ),
        (
            "client_mark_delivered",
            "Delivered up to 42, no reply wanted",
            client(
                0,
                C::MarkDelivered(MarkDelivered {
                    conversation_id: 9,
                    seq: 42,
                }),
            ),
        ),
        (
            "client_mark_read",
            "Read up to 42",
            client(
                23,
                C::MarkRead(MarkRead {
                    conversation_id: 9,
                    seq: 42,
                }),
            ),
        ),
        (
            "client_get_receipts",
            "Receipt counts of seq 42",
            client(
                24,
                C::GetReceipts(GetReceipts {
                    conversation_id: 9,
                    seq: 42,
                }),
            ),
        ),
        (
            "client_request_upload",
            "Ask to upload a 2 KiB JPEG",
            client(
                25,
                C::RequestUpload(RequestUpload {
                    mime_type: "image/jpeg".into(),
                    size_bytes: 2048,
                }),
            ),
        ),
        (
            "client_typing",
            "Typing in conversation 9",
            client(
                0,
                C::Typing(Typing {
                    conversation_id: 9,
                    active: true,
                }),
            ),
        ),
        (
            "client_set_presence",
            "Set status busy",
            client(
                26,
                C::SetPresence(SetPresence {
                    status: PresenceStatus::Busy as i32,
                }),
            ),
        ),
        (
            "client_subscribe_presence",
            "Watch users 2 and 3",
            client(
                27,
                C::SubscribePresence(SubscribePresence {
                    user_ids: vec![2, 3],
                }),
            ),
        ),
        (
            "client_unsubscribe_presence",
            "Stop watching user 3",
            client(
                28,
                C::UnsubscribePresence(UnsubscribePresence { user_ids: vec![3] }),
            ),
        ),
        (
            "client_subscribe_channel",
            "Subscribe to channel 12",
            client(
                29,
                C::SubscribeChannel(SubscribeChannel {
                    conversation_id: 12,
                }),
            ),
        ),
        (
            "client_unsubscribe_channel",
            "Unsubscribe from channel 12",
            client(
                30,
                C::UnsubscribeChannel(UnsubscribeChannel {
                    conversation_id: 12,
                }),
            ),
        ),
        (
            "client_ping",
            "Ping with nonce 1",
            client(7, C::Ping(Ping { nonce: 1 })),
        ),
        (
            "client_pong",
            "Answer to a server ping",
            client(0, C::Pong(Pong { nonce: 5 })),
        ),
        (
            "server_error",
            "Request 20 refused: not a member",
            server(
                20,
                S::Error(Error {
                    code: ErrorCode::NotAMember as i32,
                    message: "not a member".into(),
                    retry_after_ms: 0,
                }),
            ),
        ),
        (
            "server_done",
            "Request 14 succeeded",
            server(14, S::Done(Done {})),
        ),
        (
            "server_welcome",
            "Welcome with the default limits",
            server(
                1,
                S::Welcome(Welcome {
                    protocol_version: 1,
                    server_name: "chatd".into(),
                    max_frame_bytes: 1 << 20,
                    max_message_bytes: 64 << 10,
                    heartbeat_interval_ms: 15_000,
                    capabilities: vec![],
                }),
            ),
        ),
        (
            "server_auth_ok",
            "Logged in as user 1",
            server(
                3,
                S::AuthOk(AuthOk {
                    user_id: 1,
                    session_token: "tok".into(),
                    token_expires_at_ms: 1_766_400_000_000,
                    profile: Some(Profile {
                        user_id: 1,
                        username: "alice".into(),
                        display_name: "Alice".into(),
                        created_at_ms: 1_763_800_000_000,
                        deleted: false,
                    }),
                }),
            ),
        ),
        (
            "server_resume_ok",
            "Resumed; one gap",
            server(
                5,
                S::ResumeOk(ResumeOk {
                    auth: Some(AuthOk {
                        user_id: 1,
                        session_token: "tok".into(),
                        token_expires_at_ms: 1_766_400_000_000,
                        profile: None,
                    }),
                    sync: Some(SyncResult {
                        gaps: vec![Gap {
                            conversation_id: 9,
                            from_seq: 42,
                            to_seq: 42,
                            messages: vec![text_message(42)],
                            truncated: false,
                        }],
                        removed_conversation_ids: vec![],
                    }),
                }),
            ),
        ),
        (
            "server_profile",
            "Profile of bob",
            server(
                6,
                S::Profile(Profile {
                    user_id: 2,
                    username: "bob".into(),
                    display_name: "Bob".into(),
                    created_at_ms: 1_763_800_000_000,
                    deleted: false,
                }),
            ),
        ),
        (
            "server_conversation",
            "A direct conversation",
            server(
                10,
                S::Conversation(Conversation {
                    conversation_id: 9,
                    kind: ConversationKind::Direct as i32,
                    title: String::new(),
                    created_at_ms: 1_763_800_000_000,
                    created_by: 1,
                    last_seq: 1,
                    my_role: Role::Member as i32,
                    member_count: 2,
                    members: vec![
                        Member {
                            user_id: 1,
                            role: Role::Member as i32,
                        },
                        Member {
                            user_id: 2,
                            role: Role::Member as i32,
                        },
                    ],
                    banned_ids: vec![],
                }),
            ),
        ),
        (
            "server_conversation_list",
            "One conversation with 3 unread",
            server(
                17,
                S::ConversationList(ConversationList {
                    conversations: vec![ConversationSummary {
                        conversation_id: 9,
                        kind: ConversationKind::Group as i32,
                        title: "team".into(),
                        last_seq: 45,
                        last_activity_ms: 1_763_800_000_000,
                        last_message: None,
                        read_seq: 42,
                        delivered_seq: 45,
                        unread_count: 3,
                        my_role: Role::Member as i32,
                        mention_count: 0,
                        notification_level: NotificationLevel::Unspecified as i32,
                        muted_until_ms: 0,
                    }],
                    next_before_activity_ms: 0,
                }),
            ),
        ),
        (
            "server_send_ack",
            "Message stored as seq 42",
            server(
                20,
                S::SendAck(SendAck {
                    conversation_id: 9,
                    seq: 42,
                    message_id: 0x0193_0000_0000_1001,
                    sent_at_ms: 1_763_800_000_000,
                    client_msg_id: "m1".into(),
                    duplicate: false,
                }),
            ),
        ),
        (
            "server_message_page",
            "A page of one message",
            server(
                21,
                S::MessagePage(MessagePage {
                    conversation_id: 9,
                    messages: vec![text_message(41)],
                    has_more: true,
                    last_seq: 42,
                }),
            ),
        ),
        (
            "server_sync_result",
            "One gap, truncated",
            server(
                22,
                S::SyncResult(SyncResult {
                    gaps: vec![Gap {
                        conversation_id: 9,
                        from_seq: 42,
                        to_seq: 1000,
                        messages: vec![text_message(42)],
                        truncated: true,
                    }],
                    removed_conversation_ids: vec![3],
                }),
            ),
        ),
        (
            "server_receipt_counts",
            "Delivered to 480, read by 312 of 500",
            server(
                24,
                S::ReceiptCounts(ReceiptCounts {
                    conversation_id: 9,
                    seq: 42,
                    member_count: 500,
                    delivered_count: 480,
                    read_count: 312,
                }),
            ),
        ),
        (
            "server_upload_ticket",
            "Where to upload",
            server(
                25,
                S::UploadTicket(UploadTicket {
                    media_id: "md1".into(),
                    upload_url: "/media/md1?sig=ab".into(),
                    download_url: "/media/md1?sig=cd".into(),
                    expires_at_ms: 1_763_803_600_000,
                }),
            ),
        ),
        (
            "server_message_push",
            "New message seq 42",
            server(
                0,
                S::MessagePush(MessagePush {
                    message: Some(text_message(42)),
                }),
            ),
        ),
        (
            "server_message_edited",
            "Message seq 42 edited",
            server(
                0,
                S::MessageEdited(MessageEdited {
                    message: Some(pb::Message {
                        text: "hi!".into(),
                        edited_at_ms: 1_763_800_060_000,
                        ..text_message(42)
                    }),
                }),
            ),
        ),
        (
            "server_reaction_event",
            "User 2 reacted to seq 42; two thumbs-up now",
            server(
                0,
                S::ReactionEvent(ReactionEvent {
                    conversation_id: 9,
                    seq: 42,
                    user_id: 2,
                    emoji: "👍".into(),
                    removed: false,
                    reactions: vec![Reaction {
                        emoji: "👍".into(),
                        count: 2,
                        mine: false,
                    }],
                }),
            ),
        ),
        (
            "server_blocked_users",
            "The caller blocked users 2 and 7",
            server(
                36,
                S::BlockedUsers(BlockedUsers {
                    user_ids: vec![2, 7],
                }),
            ),
        ),
        (
            "server_receipt_event",
            "User 2 read up to 42",
            server(
                0,
                S::ReceiptEvent(ReceiptEvent {
                    conversation_id: 9,
                    user_id: 2,
                    kind: ReceiptKind::Read as i32,
                    seq: 42,
                    at_ms: 1_763_800_000_000,
                }),
            ),
        ),
        (
            "server_typing_event",
            "User 2 is typing",
            server(
                0,
                S::TypingEvent(TypingEvent {
                    conversation_id: 9,
                    user_id: 2,
                    active: true,
                    expires_in_ms: 5000,
                }),
            ),
        ),
        (
            "server_presence_event",
            "User 2 went away",
            server(
                0,
                S::PresenceEvent(PresenceEvent {
                    user_id: 2,
                    status: PresenceStatus::Away as i32,
                    last_seen_ms: 1_763_800_000_000,
                }),
            ),
        ),
        (
            "server_conversation_event",
            "User 4 was added",
            server(
                0,
                S::ConversationEvent(ConversationEvent {
                    conversation_id: 9,
                    seq: 43,
                    event: Some(SystemEvent {
                        kind: system_event::Kind::MemberAdded as i32,
                        actor_id: 1,
                        user_ids: vec![4],
                        role: Role::Member as i32,
                        title: String::new(),
                        target_seq: 0,
                    }),
                }),
            ),
        ),
        (
            "server_ping",
            "Server ping",
            server(0, S::Ping(Ping { nonce: 5 })),
        ),
        (
            "server_pong",
            "Answer to ping 1",
            server(7, S::Pong(Pong { nonce: 1 })),
        ),
        (
            "server_go_away",
            "Shutting down, reconnect in 1 s",
            server(
                0,
                S::GoAway(GoAway {
                    code: ErrorCode::ShuttingDown as i32,
                    message: "restart".into(),
                    reconnect_after_ms: 1000,
                }),
            ),
        ),
    ]
}

/// Frames that are not a plain encoding of a sample: error cases and
/// forward-compatibility cases.
fn raw_vectors() -> Vec<Raw> {
    let mut oversized = Vec::new();
    prost::encoding::encode_varint((MAX + 1) as u64, &mut oversized);
    vec![
        Raw {
            name: "empty_frame",
            direction: "client",
            bytes: vec![0x00],
            expect: "frame",
            meaning: "Zero-length body: a ClientFrame with no body (answered with UNKNOWN_MESSAGE)",
        },
        Raw {
            name: "unknown_body_field",
            direction: "client",
            bytes: vec![0x05, 0x08, 0x07, 0xba, 0x06, 0x00],
            expect: "frame",
            meaning: "request_id 7 and an unknown field 103 (a message from a newer client): decodes with no body",
        },
        Raw {
            name: "unknown_field_in_ping",
            direction: "client",
            bytes: vec![0x09, 0x08, 0x07, 0x92, 0x03, 0x04, 0x08, 0x01, 0x78, 0x02],
            expect: "frame",
            meaning: "Ping nonce 1 with an unknown varint field 15 = 2 inside: the unknown field is skipped",
        },
        Raw {
            name: "truncated_prefix",
            direction: "client",
            bytes: vec![0x80],
            expect: "incomplete",
            meaning: "A length prefix cut after its first byte: wait for more bytes",
        },
        Raw {
            name: "truncated_body",
            direction: "client",
            bytes: vec![0x05, 0x08, 0x07],
            expect: "incomplete",
            meaning: "Announces 5 bytes, only 2 present: wait for more bytes",
        },
        Raw {
            name: "oversized_prefix",
            direction: "client",
            bytes: oversized,
            expect: "too_large",
            meaning: "Announces 1,048,577 bytes, one over the default limit: FRAME_TOO_LARGE before any body arrives",
        },
        Raw {
            name: "oversized_huge_prefix",
            direction: "client",
            bytes: vec![0xff, 0xff, 0xff, 0xff, 0x0f],
            expect: "too_large",
            meaning: "Announces 4 GiB - 1: refused from the prefix alone",
        },
        Raw {
            name: "invalid_varint_eleven_bytes",
            direction: "client",
            bytes: vec![
                0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
            ],
            expect: "invalid_varint",
            meaning: "Non-minimal zero prefix longer than 10 bytes: MALFORMED_FRAME",
        },
        Raw {
            name: "invalid_varint_overflow",
            direction: "client",
            bytes: vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02],
            expect: "invalid_varint",
            meaning: "Tenth prefix byte carries more than the last bit of 64: MALFORMED_FRAME",
        },
        Raw {
            name: "nonminimal_prefix",
            direction: "client",
            bytes: vec![0x82, 0x00, 0x08, 0x07],
            expect: "frame",
            meaning: "Length 2 written in two bytes (non-minimal but valid): request_id 7, no body",
        },
        Raw {
            name: "malformed_wire_type",
            direction: "client",
            bytes: vec![0x02, 0x0f, 0x00],
            expect: "malformed",
            meaning: "Field 1 with the invalid wire type 7: MALFORMED_FRAME",
        },
        Raw {
            name: "malformed_nested_length",
            direction: "client",
            bytes: vec![0x03, 0x92, 0x03, 0x05],
            expect: "malformed",
            meaning: "Ping announcing 5 bytes inside a 3-byte frame: MALFORMED_FRAME",
        },
        Raw {
            name: "malformed_utf8",
            direction: "server",
            bytes: vec![0x06, 0x12, 0x04, 0x12, 0x02, 0xff, 0xfe],
            expect: "malformed",
            meaning: "Error whose message is not UTF-8: MALFORMED_FRAME",
        },
    ]
}

fn expected_raw(name: &str) -> Option<Sample> {
    use pb::*;
    Some(match name {
        "empty_frame" => Sample::Client(ClientFrame::default()),
        "unknown_body_field" | "nonminimal_prefix" => Sample::Client(ClientFrame {
            request_id: 7,
            body: None,
        }),
        "unknown_field_in_ping" => client(7, C::Ping(Ping { nonce: 1 })),
        _ => return None,
    })
}

fn encode(sample: &Sample) -> Vec<u8> {
    match sample {
        Sample::Client(f) => codec::encode_to_vec(f, MAX),
        Sample::Server(f) => codec::encode_to_vec(f, MAX),
    }
    .expect("samples are small")
}

fn direction(sample: &Sample) -> &'static str {
    match sample {
        Sample::Client(_) => "client",
        Sample::Server(_) => "server",
    }
}

fn generate() -> Vec<Vector> {
    let mut out: Vec<Vector> = samples()
        .into_iter()
        .map(|(name, meaning, sample)| Vector {
            name: name.into(),
            direction: direction(&sample).into(),
            hex: hex::encode(encode(&sample)),
            expect: "frame".into(),
            canonical: true,
            meaning: meaning.into(),
        })
        .collect();
    out.extend(raw_vectors().into_iter().map(|r| {
        let canonical = matches!(
            outcome(r.direction, &r.bytes),
            Ok(Some((frame, used))) if used == r.bytes.len() && encode(&frame) == r.bytes
        );
        Vector {
            name: r.name.into(),
            direction: r.direction.into(),
            hex: hex::encode(&r.bytes),
            expect: r.expect.into(),
            canonical,
            meaning: r.meaning.into(),
        }
    }));
    out
}

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec/vectors/frames.json")
}

fn load() -> Vec<Vector> {
    let text = std::fs::read_to_string(vectors_path()).expect("spec/vectors/frames.json exists");
    serde_json::from_str(&text).expect("frames.json is a JSON array of vectors")
}

/// Decodes `bytes` as the vector's direction says, describing the outcome.
fn outcome(direction: &str, bytes: &[u8]) -> Result<Option<(Sample, usize)>, FrameError> {
    Ok(match direction {
        "client" => {
            codec::decode::<pb::ClientFrame>(bytes, MAX)?.map(|(f, n)| (Sample::Client(f), n))
        }
        "server" => {
            codec::decode::<pb::ServerFrame>(bytes, MAX)?.map(|(f, n)| (Sample::Server(f), n))
        }
        other => panic!("unknown direction {other}"),
    })
}

fn same(a: &Sample, b: &Sample) -> bool {
    match (a, b) {
        (Sample::Client(a), Sample::Client(b)) => a == b,
        (Sample::Server(a), Sample::Server(b)) => a == b,
        _ => false,
    }
}

#[test]
fn vector_file_matches_the_samples() {
    let generated = generate();
    if std::env::var_os("UPDATE_VECTORS").is_some() {
        let mut text = serde_json::to_string_pretty(&generated).expect("serialisable");
        text.push('\n');
        std::fs::write(vectors_path(), text).expect("write frames.json");
    }
    let stored = load();
    assert_eq!(
        stored, generated,
        "spec/vectors/frames.json is stale; regenerate with UPDATE_VECTORS=1 and review"
    );
}

#[test]
fn every_vector_decodes_as_documented() {
    let samples = samples();
    let vectors = load();
    assert!(vectors.len() >= samples.len() + raw_vectors().len());
    for v in &vectors {
        let bytes = hex::decode(&v.hex).expect("hex");
        let got = outcome(&v.direction, &bytes);
        match v.expect.as_str() {
            "frame" => {
                let (frame, used) = got
                    .unwrap_or_else(|e| panic!("{}: {e}", v.name))
                    .unwrap_or_else(|| panic!("{}: incomplete", v.name));
                assert_eq!(used, bytes.len(), "{}: one whole frame", v.name);
                let expected = samples
                    .iter()
                    .find(|(name, _, _)| *name == v.name)
                    .map(|(_, _, s)| match s {
                        Sample::Client(f) => Sample::Client(f.clone()),
                        Sample::Server(f) => Sample::Server(f.clone()),
                    })
                    .or_else(|| expected_raw(&v.name))
                    .unwrap_or_else(|| panic!("{}: no expected value", v.name));
                assert!(
                    same(&frame, &expected),
                    "{}: decoded to something else",
                    v.name
                );
                // Canonical encodings re-encode to the same bytes; the
                // others (a non-minimal prefix, skipped unknown fields) do
                // not, and say so.
                if v.canonical {
                    assert_eq!(encode(&frame), bytes, "{}: re-encoding differs", v.name);
                } else {
                    assert_ne!(encode(&frame), bytes, "{}: canonical after all", v.name);
                }
            }
            _ if v.canonical => panic!("{}: only frames can be canonical", v.name),
            "incomplete" => assert!(matches!(got, Ok(None)), "{}: {:?}", v.name, got.err()),
            "too_large" => assert!(
                matches!(got, Err(FrameError::TooLarge { .. })),
                "{}",
                v.name
            ),
            "invalid_varint" => {
                assert!(matches!(got, Err(FrameError::InvalidVarint)), "{}", v.name)
            }
            "malformed" => assert!(matches!(got, Err(FrameError::Malformed(_))), "{}", v.name),
            other => panic!("{}: unknown expectation {other}", v.name),
        }
    }
}

#[test]
fn every_frame_kind_has_a_vector() {
    let vectors = load();
    let names: Vec<&str> = vectors.iter().map(|v| v.name.as_str()).collect();
    // Decoding each sample's oneof tag tells which kinds are covered; every
    // field of both envelopes' `body` must appear.
    let client_kinds = samples()
        .iter()
        .filter_map(|(_, _, s)| match s {
            Sample::Client(f) => f.body.as_ref().map(std::mem::discriminant),
            Sample::Server(_) => None,
        })
        .collect::<std::collections::HashSet<_>>();
    let server_kinds = samples()
        .iter()
        .filter_map(|(_, _, s)| match s {
            Sample::Server(f) => f.body.as_ref().map(std::mem::discriminant),
            Sample::Client(_) => None,
        })
        .collect::<std::collections::HashSet<_>>();
    let proto = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../spec/chat.proto"),
    )
    .expect("chat.proto");
    let oneof_fields = |envelope: &str| -> usize {
        let start = proto
            .find(&format!("message {envelope} {{"))
            .expect("envelope");
        let block = &proto[start..];
        let body = &block[block.find("oneof body {").expect("oneof")..];
        let body = &body[..body.find('}').expect("end of oneof")];
        body.lines().filter(|l| l.trim().ends_with(';')).count()
    };
    assert_eq!(
        client_kinds.len(),
        oneof_fields("ClientFrame"),
        "a ClientFrame kind lacks a vector"
    );
    assert_eq!(
        server_kinds.len(),
        oneof_fields("ServerFrame"),
        "a ServerFrame kind lacks a vector"
    );
    for raw in raw_vectors() {
        assert!(names.contains(&raw.name));
    }
}

#[test]
fn every_truncation_of_every_vector_is_incomplete_or_a_typed_error() {
    for v in load() {
        let bytes = hex::decode(&v.hex).expect("hex");
        for cut in 0..bytes.len() {
            let got = outcome(&v.direction, &bytes[..cut]);
            match v.expect.as_str() {
                // A strict prefix of a good frame is never a frame.
                "frame" | "incomplete" => {
                    assert!(
                        matches!(got, Ok(None)),
                        "{} cut at {cut}: {:?}",
                        v.name,
                        got.err()
                    )
                }
                // Errors may already show in a prefix, or not yet.
                _ => assert!(!matches!(got, Ok(Some(_))), "{} cut at {cut}", v.name),
            }
        }
    }
}
