// chat_proto.js: a small protobuf encoder/decoder for the chat/1 frames.
//
// The schema below is spec/chat.proto (package chat.v1) written as data:
// every message, field number and type is copied from that file, which is
// normative; when chat.proto changes, this table changes with it
// (server/src/web.rs has a test comparing the two). The wire format is
// protobuf's, as described in spec/framing.md; on the WebSocket bridge one
// binary message is one ClientFrame/ServerFrame body, without a prefix.
//
// Values in JavaScript:
// - uint64 fields (ids, seqs, times) decode to a Number when they fit in
//   Number.MAX_SAFE_INTEGER and to a decimal string otherwise, so ids can
//   be used as Map keys with String(id) either way. The encoder accepts a
//   Number, a BigInt or a decimal string.
// - fixed64 fields (message_id) decode to a decimal string.
// - enums decode to their Number; `ChatProto.enums` maps names to numbers.
// - a missing scalar decodes to its default (0, "", false, empty bytes), a
//   missing message field to undefined, a repeated field to [].
// - a `oneof body` member is a property named after the field, and the
//   decoder also sets `body` to that name: {request_id: 3, body: "welcome",
//   welcome: {...}}.
// - a proto3 `optional` field is written whenever it is not undefined/null,
//   so GetHistory{after_seq: 0} asks "from the start".
// Unknown fields are skipped, as protobuf requires (spec/README.md).
"use strict";

(function (global) {
  const F = (num, name, type, opts) => Object.assign({ num, name, type }, opts || {});
  const R = { repeated: true };
  const O = { optional: true };
  const BODY = { oneof: "body" };

  // Scalar types: uint64, uint32, bool, string, bytes, fixed64, enum.
  // Any other type name is a message of this table.
  const schema = {
    ClientFrame: [
      F(1, "request_id", "uint64"),
      F(10, "hello", "Hello", BODY),
      F(11, "register", "Register", BODY),
      F(12, "login", "Login", BODY),
      F(13, "logout", "Logout", BODY),
      F(14, "resume", "Resume", BODY),
      F(15, "get_profile", "GetProfile", BODY),
      F(16, "update_profile", "UpdateProfile", BODY),
      F(17, "register_push_token", "RegisterPushToken", BODY),
      F(18, "change_password", "ChangePassword", BODY),
      F(19, "delete_account", "DeleteAccount", BODY),
      F(20, "create_conversation", "CreateConversation", BODY),
      F(21, "add_members", "AddMembers", BODY),
      F(22, "remove_member", "RemoveMember", BODY),
      F(23, "set_role", "SetRole", BODY),
      F(24, "leave_conversation", "LeaveConversation", BODY),
      F(25, "update_conversation", "UpdateConversation", BODY),
      F(26, "transfer_ownership", "TransferOwnership", BODY),
      F(27, "list_conversations", "ListConversations", BODY),
      F(28, "get_conversation", "GetConversation", BODY),
      F(30, "send_message", "SendMessage", BODY),
      F(31, "get_history", "GetHistory", BODY),
      F(32, "sync", "Sync", BODY),
      F(33, "mark_delivered", "MarkDelivered", BODY),
      F(34, "mark_read", "MarkRead", BODY),
      F(35, "get_receipts", "GetReceipts", BODY),
      F(36, "request_upload", "RequestUpload", BODY),
      F(29, "set_notification_level", "SetNotificationLevel", BODY),
      F(37, "delete_message", "DeleteMessage", BODY),
      F(38, "edit_message", "EditMessage", BODY),
      F(39, "react", "React", BODY),
      F(40, "typing", "Typing", BODY),
      F(41, "set_presence", "SetPresence", BODY),
      F(42, "subscribe_presence", "SubscribePresence", BODY),
      F(43, "unsubscribe_presence", "UnsubscribePresence", BODY),
      F(44, "subscribe_channel", "SubscribeChannel", BODY),
      F(45, "unsubscribe_channel", "UnsubscribeChannel", BODY),
      F(50, "ping", "Ping", BODY),
      F(51, "pong", "Pong", BODY),
      F(60, "block_user", "BlockUser", BODY),
      F(61, "unblock_user", "UnblockUser", BODY),
      F(62, "list_blocked", "ListBlocked", BODY),
      F(63, "ban_member", "BanMember", BODY),
      F(64, "unban_member", "UnbanMember", BODY),
    ],
    ServerFrame: [
      F(1, "request_id", "uint64"),
      F(2, "error", "Error", BODY),
      F(3, "done", "Done", BODY),
      F(10, "welcome", "Welcome", BODY),
      F(11, "auth_ok", "AuthOk", BODY),
      F(14, "resume_ok", "ResumeOk", BODY),
      F(15, "profile", "Profile", BODY),
      F(20, "conversation", "Conversation", BODY),
      F(27, "conversation_list", "ConversationList", BODY),
      F(30, "send_ack", "SendAck", BODY),
      F(31, "message_page", "MessagePage", BODY),
      F(32, "sync_result", "SyncResult", BODY),
      F(35, "receipt_counts", "ReceiptCounts", BODY),
      F(36, "upload_ticket", "UploadTicket", BODY),
      F(40, "message_push", "MessagePush", BODY),
      F(41, "receipt_event", "ReceiptEvent", BODY),
      F(42, "typing_event", "TypingEvent", BODY),
      F(43, "presence_event", "PresenceEvent", BODY),
      F(44, "conversation_event", "ConversationEvent", BODY),
      F(45, "message_edited", "MessageEdited", BODY),
      F(46, "reaction_event", "ReactionEvent", BODY),
      F(50, "ping", "Ping", BODY),
      F(51, "pong", "Pong", BODY),
      F(52, "go_away", "GoAway", BODY),
      F(60, "blocked_users", "BlockedUsers", BODY),
    ],
    Error: [F(1, "code", "enum"), F(2, "message", "string"), F(3, "retry_after_ms", "uint32")],
    Done: [],
    Hello: [
      F(1, "protocol_version", "uint32"),
      F(2, "client_name", "string"),
      F(3, "client_version", "string"),
      F(4, "capabilities", "string", R),
    ],
    Welcome: [
      F(1, "protocol_version", "uint32"),
      F(2, "server_name", "string"),
      F(3, "max_frame_bytes", "uint32"),
      F(4, "max_message_bytes", "uint32"),
      F(5, "heartbeat_interval_ms", "uint32"),
      F(6, "capabilities", "string", R),
    ],
    Register: [
      F(1, "username", "string"),
      F(2, "password", "string"),
      F(3, "display_name", "string"),
      F(4, "device", "DeviceInfo"),
    ],
    Login: [F(1, "username", "string"), F(2, "password", "string"), F(3, "device", "DeviceInfo")],
    DeviceInfo: [F(1, "device_id", "string"), F(2, "platform", "string")],
    AuthOk: [
      F(1, "user_id", "uint64"),
      F(2, "session_token", "string"),
      F(3, "token_expires_at_ms", "uint64"),
      F(4, "profile", "Profile"),
    ],
    Logout: [F(1, "all_devices", "bool")],
    ChangePassword: [F(1, "current_password", "string"), F(2, "new_password", "string")],
    Resume: [
      F(1, "session_token", "string"),
      F(2, "device", "DeviceInfo"),
      F(3, "cursors", "Cursor", R),
    ],
    ResumeOk: [F(1, "auth", "AuthOk"), F(2, "sync", "SyncResult")],
    GetProfile: [F(1, "user_id", "uint64"), F(2, "username", "string")],
    UpdateProfile: [F(1, "display_name", "string"), F(2, "hide_last_seen", "bool")],
    Profile: [
      F(1, "user_id", "uint64"),
      F(2, "username", "string"),
      F(3, "display_name", "string"),
      F(4, "created_at_ms", "uint64"),
      F(5, "deleted", "bool"),
    ],
    RegisterPushToken: [F(1, "provider", "string"), F(2, "token", "string")],
    Ping: [F(1, "nonce", "uint64")],
    Pong: [F(1, "nonce", "uint64")],
    GoAway: [F(1, "code", "enum"), F(2, "message", "string"), F(3, "reconnect_after_ms", "uint32")],
    CreateConversation: [
      F(1, "kind", "enum"),
      F(2, "member_ids", "uint64", R),
      F(3, "title", "string"),
    ],
    Conversation: [
      F(1, "conversation_id", "uint64"),
      F(2, "kind", "enum"),
      F(3, "title", "string"),
      F(4, "created_at_ms", "uint64"),
      F(5, "created_by", "uint64"),
      F(6, "last_seq", "uint64"),
      F(7, "my_role", "enum"),
      F(8, "member_count", "uint32"),
      F(9, "members", "Member", R),
      F(10, "banned_ids", "uint64", R),
    ],
    Member: [F(1, "user_id", "uint64"), F(2, "role", "enum")],
    AddMembers: [F(1, "conversation_id", "uint64"), F(2, "user_ids", "uint64", R)],
    RemoveMember: [F(1, "conversation_id", "uint64"), F(2, "user_id", "uint64")],
    SetRole: [F(1, "conversation_id", "uint64"), F(2, "user_id", "uint64"), F(3, "role", "enum")],
    LeaveConversation: [F(1, "conversation_id", "uint64")],
    UpdateConversation: [F(1, "conversation_id", "uint64"), F(2, "title", "string")],
    TransferOwnership: [F(1, "conversation_id", "uint64"), F(2, "new_owner_id", "uint64")],
    GetConversation: [F(1, "conversation_id", "uint64")],
    ListConversations: [F(1, "limit", "uint32"), F(2, "before_activity_ms", "uint64")],
    ConversationSummary: [
      F(1, "conversation_id", "uint64"),
      F(2, "kind", "enum"),
      F(3, "title", "string"),
      F(4, "last_seq", "uint64"),
      F(5, "last_activity_ms", "uint64"),
      F(6, "last_message", "Message"),
      F(7, "read_seq", "uint64"),
      F(8, "delivered_seq", "uint64"),
      F(9, "unread_count", "uint64"),
      F(10, "my_role", "enum"),
      F(11, "mention_count", "uint64"),
      F(12, "notification_level", "enum"),
      F(13, "muted_until_ms", "uint64"),
    ],
    ConversationList: [
      F(1, "conversations", "ConversationSummary", R),
      F(2, "next_before_activity_ms", "uint64"),
    ],
    ConversationEvent: [
      F(1, "conversation_id", "uint64"),
      F(2, "seq", "uint64"),
      F(3, "event", "SystemEvent"),
    ],
    SendMessage: [
      F(1, "conversation_id", "uint64"),
      F(2, "client_msg_id", "string"),
      F(3, "text", "string"),
      F(4, "media", "MediaRef"),
      F(5, "ciphertext", "bytes"),
      F(6, "reply_to_seq", "uint64"),
      F(7, "first_attempt", "bool"),
      F(8, "mention_ids", "uint64", R),
      F(9, "mention_everyone", "bool"),
    ],
    SendAck: [
      F(1, "conversation_id", "uint64"),
      F(2, "seq", "uint64"),
      F(3, "message_id", "fixed64"),
      F(4, "sent_at_ms", "uint64"),
      F(5, "client_msg_id", "string"),
      F(6, "duplicate", "bool"),
    ],
    MediaRef: [
      F(1, "media_id", "string"),
      F(2, "mime_type", "string"),
      F(3, "size_bytes", "uint64"),
      F(4, "url", "string"),
      F(5, "width", "uint32"),
      F(6, "height", "uint32"),
      F(7, "thumbnail", "bytes"),
    ],
    RequestUpload: [F(1, "mime_type", "string"), F(2, "size_bytes", "uint64")],
    UploadTicket: [
      F(1, "media_id", "string"),
      F(2, "upload_url", "string"),
      F(3, "download_url", "string"),
      F(4, "expires_at_ms", "uint64"),
    ],
    Message: [
      F(1, "conversation_id", "uint64"),
      F(2, "seq", "uint64"),
      F(3, "message_id", "fixed64"),
      F(4, "sender_id", "uint64"),
      F(5, "sent_at_ms", "uint64"),
      F(6, "client_msg_id", "string"),
      F(7, "kind", "enum"),
      F(8, "text", "string"),
      F(9, "media", "MediaRef"),
      F(10, "ciphertext", "bytes"),
      F(11, "reply_to_seq", "uint64"),
      F(12, "system", "SystemEvent"),
      F(13, "deleted", "bool"),
      F(14, "edited_at_ms", "uint64"),
      F(15, "reactions", "Reaction", R),
      F(16, "mention_ids", "uint64", R),
      F(17, "mention_everyone", "bool"),
    ],
    SystemEvent: [
      F(1, "kind", "enum"),
      F(2, "actor_id", "uint64"),
      F(3, "user_ids", "uint64", R),
      F(4, "role", "enum"),
      F(5, "title", "string"),
      F(6, "target_seq", "uint64"),
    ],
    DeleteMessage: [F(1, "conversation_id", "uint64"), F(2, "seq", "uint64")],
    EditMessage: [
      F(1, "conversation_id", "uint64"),
      F(2, "seq", "uint64"),
      F(3, "text", "string"),
    ],
    MessageEdited: [F(1, "message", "Message")],
    DeleteAccount: [F(1, "password", "string")],
    SetNotificationLevel: [
      F(1, "conversation_id", "uint64"),
      F(2, "level", "enum"),
      F(3, "muted_until_ms", "uint64"),
    ],
    BlockUser: [F(1, "user_id", "uint64")],
    UnblockUser: [F(1, "user_id", "uint64")],
    ListBlocked: [],
    BlockedUsers: [F(1, "user_ids", "uint64", R)],
    BanMember: [F(1, "conversation_id", "uint64"), F(2, "user_id", "uint64")],
    UnbanMember: [F(1, "conversation_id", "uint64"), F(2, "user_id", "uint64")],
    Reaction: [F(1, "emoji", "string"), F(2, "count", "uint32"), F(3, "mine", "bool")],
    React: [
      F(1, "conversation_id", "uint64"),
      F(2, "seq", "uint64"),
      F(3, "emoji", "string"),
      F(4, "remove", "bool"),
    ],
    ReactionEvent: [
      F(1, "conversation_id", "uint64"),
      F(2, "seq", "uint64"),
      F(3, "user_id", "uint64"),
      F(4, "emoji", "string"),
      F(5, "removed", "bool"),
      F(6, "reactions", "Reaction", R),
    ],
    MessagePush: [F(1, "message", "Message")],
    GetHistory: [
      F(1, "conversation_id", "uint64"),
      F(2, "before_seq", "uint64"),
      F(3, "after_seq", "uint64", O),
      F(4, "limit", "uint32"),
    ],
    MessagePage: [
      F(1, "conversation_id", "uint64"),
      F(2, "messages", "Message", R),
      F(3, "has_more", "bool"),
      F(4, "last_seq", "uint64"),
    ],
    Cursor: [F(1, "conversation_id", "uint64"), F(2, "seq", "uint64")],
    Sync: [F(1, "cursors", "Cursor", R), F(2, "limit_per_conversation", "uint32")],
    Gap: [
      F(1, "conversation_id", "uint64"),
      F(2, "from_seq", "uint64"),
      F(3, "to_seq", "uint64"),
      F(4, "messages", "Message", R),
      F(5, "truncated", "bool"),
    ],
    SyncResult: [F(1, "gaps", "Gap", R), F(2, "removed_conversation_ids", "uint64", R)],
    MarkDelivered: [F(1, "conversation_id", "uint64"), F(2, "seq", "uint64")],
    MarkRead: [F(1, "conversation_id", "uint64"), F(2, "seq", "uint64")],
    ReceiptEvent: [
      F(1, "conversation_id", "uint64"),
      F(2, "user_id", "uint64"),
      F(3, "kind", "enum"),
      F(4, "seq", "uint64"),
      F(5, "at_ms", "uint64"),
    ],
    GetReceipts: [F(1, "conversation_id", "uint64"), F(2, "seq", "uint64")],
    ReceiptCounts: [
      F(1, "conversation_id", "uint64"),
      F(2, "seq", "uint64"),
      F(3, "member_count", "uint32"),
      F(4, "delivered_count", "uint32"),
      F(5, "read_count", "uint32"),
    ],
    Typing: [F(1, "conversation_id", "uint64"), F(2, "active", "bool")],
    TypingEvent: [
      F(1, "conversation_id", "uint64"),
      F(2, "user_id", "uint64"),
      F(3, "active", "bool"),
      F(4, "expires_in_ms", "uint32"),
    ],
    SetPresence: [F(1, "status", "enum")],
    SubscribePresence: [F(1, "user_ids", "uint64", R)],
    UnsubscribePresence: [F(1, "user_ids", "uint64", R)],
    PresenceEvent: [
      F(1, "user_id", "uint64"),
      F(2, "status", "enum"),
      F(3, "last_seen_ms", "uint64"),
    ],
    SubscribeChannel: [F(1, "conversation_id", "uint64")],
    UnsubscribeChannel: [F(1, "conversation_id", "uint64")],
  };

  // Enum values of chat.proto, by enum name.
  const enums = {
    ErrorCode: {
      ERROR_CODE_UNSPECIFIED: 0,
      MALFORMED_FRAME: 100,
      FRAME_TOO_LARGE: 101,
      UNKNOWN_MESSAGE: 102,
      UNSUPPORTED_VERSION: 103,
      HELLO_REQUIRED: 104,
      INVALID_ARGUMENT: 105,
      UNAUTHENTICATED: 200,
      INVALID_CREDENTIALS: 201,
      USERNAME_TAKEN: 202,
      TOKEN_INVALID: 203,
      TOO_MANY_LOGIN_ATTEMPTS: 204,
      ALREADY_AUTHENTICATED: 205,
      ACCOUNT_DISABLED: 206,
      NOT_A_MEMBER: 300,
      FORBIDDEN: 301,
      NOT_FOUND: 302,
      MEMBER_LIMIT: 303,
      CONFLICT: 304,
      BLOCKED: 305,
      BANNED: 306,
      RATE_LIMITED: 400,
      MESSAGE_TOO_LARGE: 401,
      SLOW_CONSUMER: 402,
      TOO_MANY_SESSIONS: 403,
      SERVER_BUSY: 404,
      IDLE_TIMEOUT: 405,
      REACTION_LIMIT: 406,
      INTERNAL: 500,
      SHUTTING_DOWN: 501,
      STORAGE_FAILURE: 502,
    },
    ConversationKind: { CONVERSATION_KIND_UNSPECIFIED: 0, DIRECT: 1, GROUP: 2, CHANNEL: 3 },
    Role: { ROLE_UNSPECIFIED: 0, MEMBER: 1, ADMIN: 2, OWNER: 3, SUBSCRIBER: 4 },
    MessageKind: { MESSAGE_KIND_UNSPECIFIED: 0, USER: 1, SYSTEM: 2 },
    NotificationLevel: { NOTIFICATION_LEVEL_UNSPECIFIED: 0, ALL: 1, MENTIONS: 2, MUTED: 3 },
    SystemEventKind: {
      KIND_UNSPECIFIED: 0,
      CREATED: 1,
      MEMBER_ADDED: 2,
      MEMBER_REMOVED: 3,
      MEMBER_LEFT: 4,
      ROLE_CHANGED: 5,
      TITLE_CHANGED: 6,
      OWNERSHIP_TRANSFERRED: 7,
      MESSAGE_DELETED: 8,
      MEMBER_BANNED: 9,
    },
    ReceiptKind: { RECEIPT_KIND_UNSPECIFIED: 0, DELIVERED: 1, READ: 2 },
    PresenceStatus: {
      PRESENCE_STATUS_UNSPECIFIED: 0,
      ONLINE: 1,
      AWAY: 2,
      BUSY: 3,
      OFFLINE: 4,
    },
  };

  // The name of an enum value (for display), or its number if unknown.
  function enumName(enumType, value) {
    const table = enums[enumType] || {};
    for (const k of Object.keys(table)) if (table[k] === value) return k;
    return String(value);
  }

  const WIRE_VARINT = 0;
  const WIRE_I64 = 1;
  const WIRE_LEN = 2;
  const WIRE_I32 = 5;
  const MAX_U64 = (1n << 64n) - 1n;

  const utf8Encoder = new TextEncoder();
  const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

  class DecodeError extends Error {}

  function toBigInt(v) {
    if (typeof v === "bigint") return v;
    if (typeof v === "number") {
      if (!Number.isInteger(v) || v < 0) throw new RangeError("not an unsigned integer: " + v);
      return BigInt(v);
    }
    if (typeof v === "string" && /^[0-9]+$/.test(v)) return BigInt(v);
    if (typeof v === "boolean") return v ? 1n : 0n;
    throw new RangeError("not an unsigned integer: " + v);
  }

  // A uint64 as the page uses it: Number when exact, decimal string otherwise.
  function fromBigInt(b) {
    return b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : b.toString();
  }

  class Writer {
    constructor() {
      this.bytes = [];
    }
    varint(v) {
      let b = toBigInt(v);
      if (b > MAX_U64) throw new RangeError("uint64 out of range: " + b);
      while (b >= 0x80n) {
        this.bytes.push(Number(b & 0x7fn) | 0x80);
        b >>= 7n;
      }
      this.bytes.push(Number(b));
    }
    tag(num, wire) {
      this.varint(num * 8 + wire);
    }
    raw(arr) {
      for (let i = 0; i < arr.length; i++) this.bytes.push(arr[i]);
    }
    lenDelimited(arr) {
      this.varint(arr.length);
      this.raw(arr);
    }
    fixed64(v) {
      let b = toBigInt(v);
      for (let i = 0; i < 8; i++) {
        this.bytes.push(Number(b & 0xffn));
        b >>= 8n;
      }
    }
    finish() {
      return Uint8Array.from(this.bytes);
    }
  }

  function isDefault(type, v) {
    switch (type) {
      case "string":
        return v === "";
      case "bool":
        return v === false;
      case "bytes":
        return v.length === 0;
      default:
        return toBigInt(v) === 0n;
    }
  }

  function writeScalar(w, f, v) {
    switch (f.type) {
      case "string":
        w.tag(f.num, WIRE_LEN);
        w.lenDelimited(utf8Encoder.encode(v));
        break;
      case "bytes":
        w.tag(f.num, WIRE_LEN);
        w.lenDelimited(v);
        break;
      case "fixed64":
        w.tag(f.num, WIRE_I64);
        w.fixed64(v);
        break;
      default:
        w.tag(f.num, WIRE_VARINT);
        w.varint(v);
    }
  }

  function isScalar(type) {
    return !(type in schema);
  }

  // Encodes `obj` as message `type`; returns a Uint8Array.
  function encode(type, obj) {
    const fields = schema[type];
    if (!fields) throw new Error("unknown message type " + type);
    const w = new Writer();
    for (const f of fields) {
      const v = obj[f.name];
      if (v === undefined || v === null) continue;
      if (f.repeated) {
        if (!Array.isArray(v)) throw new TypeError(type + "." + f.name + " must be an array");
        if (v.length === 0) continue;
        if (!isScalar(f.type)) {
          for (const item of v) {
            w.tag(f.num, WIRE_LEN);
            w.lenDelimited(encode(f.type, item));
          }
        } else if (f.type === "string" || f.type === "bytes") {
          for (const item of v) writeScalar(w, f, item);
        } else {
          // proto3 packs repeated numeric fields.
          const inner = new Writer();
          for (const item of v) {
            if (f.type === "fixed64") inner.fixed64(item);
            else inner.varint(item);
          }
          w.tag(f.num, WIRE_LEN);
          w.lenDelimited(inner.bytes);
        }
      } else if (!isScalar(f.type)) {
        w.tag(f.num, WIRE_LEN);
        w.lenDelimited(encode(f.type, v));
      } else if (f.optional || !isDefault(f.type, v)) {
        writeScalar(w, f, v);
      }
    }
    return w.finish();
  }

  class Reader {
    constructor(buf, start, end) {
      this.buf = buf;
      this.pos = start;
      this.end = end;
    }
    varint() {
      let result = 0n;
      let shift = 0n;
      for (let i = 0; i < 10; i++) {
        if (this.pos >= this.end) throw new DecodeError("truncated varint");
        const b = this.buf[this.pos++];
        result |= BigInt(b & 0x7f) << shift;
        if ((b & 0x80) === 0) {
          if (i === 9 && b > 1) throw new DecodeError("varint overflows 64 bits");
          return result;
        }
        shift += 7n;
      }
      throw new DecodeError("varint longer than 10 bytes");
    }
    fixed64() {
      if (this.end - this.pos < 8) throw new DecodeError("truncated fixed64");
      let result = 0n;
      for (let i = 7; i >= 0; i--) result = (result << 8n) | BigInt(this.buf[this.pos + i]);
      this.pos += 8;
      return result;
    }
    lenDelimited() {
      const len = this.varint();
      if (len > BigInt(this.end - this.pos)) throw new DecodeError("length past the end");
      const start = this.pos;
      this.pos += Number(len);
      return [start, this.pos];
    }
    skip(wire) {
      switch (wire) {
        case WIRE_VARINT:
          this.varint();
          break;
        case WIRE_I64:
          if (this.end - this.pos < 8) throw new DecodeError("truncated fixed64");
          this.pos += 8;
          break;
        case WIRE_LEN:
          this.lenDelimited();
          break;
        case WIRE_I32:
          if (this.end - this.pos < 4) throw new DecodeError("truncated fixed32");
          this.pos += 4;
          break;
        default:
          throw new DecodeError("invalid wire type " + wire);
      }
    }
  }

  function defaultValue(f) {
    if (f.repeated) return [];
    if (!isScalar(f.type) || f.optional) return undefined;
    switch (f.type) {
      case "string":
        return "";
      case "bool":
        return false;
      case "bytes":
        return new Uint8Array(0);
      case "fixed64":
        return "0";
      default:
        return 0;
    }
  }

  function scalarFromVarint(type, b) {
    if (type === "bool") return b !== 0n;
    if (type === "uint32" || type === "enum") return Number(BigInt.asUintN(32, b));
    return fromBigInt(b);
  }

  function decodeScalar(r, f, wire) {
    switch (f.type) {
      case "string": {
        if (wire !== WIRE_LEN) throw new DecodeError("wrong wire type for " + f.name);
        const [s, e] = r.lenDelimited();
        try {
          return utf8Decoder.decode(r.buf.subarray(s, e));
        } catch (_) {
          throw new DecodeError("invalid UTF-8 in " + f.name);
        }
      }
      case "bytes": {
        if (wire !== WIRE_LEN) throw new DecodeError("wrong wire type for " + f.name);
        const [s, e] = r.lenDelimited();
        return r.buf.slice(s, e);
      }
      case "fixed64":
        if (wire !== WIRE_I64) throw new DecodeError("wrong wire type for " + f.name);
        return r.fixed64().toString();
      default:
        if (wire !== WIRE_VARINT) throw new DecodeError("wrong wire type for " + f.name);
        return scalarFromVarint(f.type, r.varint());
    }
  }

  function decodeFrom(type, buf, start, end) {
    const fields = schema[type];
    const byNum = new Map(fields.map((f) => [f.num, f]));
    const out = {};
    for (const f of fields) {
      const d = defaultValue(f);
      if (d !== undefined) out[f.name] = d;
    }
    const r = new Reader(buf, start, end);
    while (r.pos < r.end) {
      const key = r.varint();
      const num = Number(key >> 3n);
      const wire = Number(key & 7n);
      if (num === 0) throw new DecodeError("field number 0");
      const f = byNum.get(num);
      if (!f) {
        r.skip(wire);
        continue;
      }
      if (!isScalar(f.type)) {
        if (wire !== WIRE_LEN) throw new DecodeError("wrong wire type for " + f.name);
        const [s, e] = r.lenDelimited();
        const v = decodeFrom(f.type, buf, s, e);
        if (f.repeated) out[f.name].push(v);
        else out[f.name] = v;
        if (f.oneof) {
          // A later oneof member replaces an earlier one.
          if (out[f.oneof] !== undefined && out[f.oneof] !== f.name) delete out[out[f.oneof]];
          out[f.oneof] = f.name;
        }
      } else if (f.repeated && wire === WIRE_LEN && f.type !== "string" && f.type !== "bytes") {
        const [s, e] = r.lenDelimited();
        const inner = new Reader(buf, s, e);
        while (inner.pos < inner.end) {
          if (f.type === "fixed64") out[f.name].push(inner.fixed64().toString());
          else out[f.name].push(scalarFromVarint(f.type, inner.varint()));
        }
      } else {
        const v = decodeScalar(r, f, wire);
        if (f.repeated) out[f.name].push(v);
        else out[f.name] = v;
      }
    }
    return out;
  }

  // Decodes message `type` from a Uint8Array or ArrayBuffer. Throws
  // ChatProto.DecodeError on bytes that are not a valid `type`.
  function decode(type, data) {
    if (!schema[type]) throw new Error("unknown message type " + type);
    const buf = data instanceof Uint8Array ? data : new Uint8Array(data);
    return decodeFrom(type, buf, 0, buf.length);
  }

  // Reads protobuf's varint length prefix (spec/framing.md) at the start of
  // `buf`: returns [length, prefixBytes]. Used by the test vectors only: the
  // WebSocket bridge carries bodies without prefix.
  function readPrefix(buf) {
    const r = new Reader(buf, 0, buf.length);
    const len = r.varint();
    return [Number(len), r.pos];
  }

  function toHex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function fromHex(hex) {
    const out = new Uint8Array(hex.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
    return out;
  }

  global.ChatProto = {
    schema,
    enums,
    enumName,
    encode,
    decode,
    readPrefix,
    toHex,
    fromHex,
    DecodeError,
  };
})(typeof window !== "undefined" ? window : globalThis);
