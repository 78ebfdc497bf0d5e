//! Building encoded server frames. Frames are encoded once into [`Bytes`]
//! and then shared by every session that sends them (a fan-out to 500
//! members encodes the push once).

use bytes::Bytes;
use chat_protocol::pb::{self, server_frame::Body};
use chat_protocol::{ErrorCode, codec};

/// A request that could not be carried out: the wire code and a detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct Refusal {
    /// Wire error code (`spec/errors.md`).
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// Suggested wait before a retry, for RATE_LIMITED and the like.
    pub retry_after_ms: u32,
}

impl Refusal {
    /// A refusal with a detail message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: 0,
        }
    }

    /// The same refusal with a retry hint.
    pub fn retry_after(mut self, ms: u32) -> Self {
        self.retry_after_ms = ms;
        self
    }
}

/// Result of a request handler.
pub type Handled = Result<Body, Refusal>;

/// Encodes a frame. Server frames are built from bounded inputs; one that
/// would still exceed the frame limit (a page of maximal messages) is
/// replaced by an error so that the client never receives an oversized frame.
pub fn encode(frame: &pb::ServerFrame) -> Bytes {
    match codec::encode_to_vec(frame, chat_protocol::DEFAULT_MAX_FRAME_BYTES) {
        Ok(v) => Bytes::from(v),
        Err(_) => error(
            frame.request_id,
            ErrorCode::Internal,
            "reply exceeds the frame limit; request fewer items",
        ),
    }
}

/// The frame answering `request_id` with `result`.
pub fn answer(request_id: u64, result: Handled) -> Bytes {
    match result {
        Ok(body) => encode(&pb::ServerFrame {
            request_id,
            body: Some(body),
        }),
        Err(r) => error_with_retry(request_id, r.code, &r.message, r.retry_after_ms),
    }
}

/// An Error frame.
pub fn error(request_id: u64, code: ErrorCode, message: &str) -> Bytes {
    error_with_retry(request_id, code, message, 0)
}

/// An Error frame with a retry hint.
pub fn error_with_retry(
    request_id: u64,
    code: ErrorCode,
    message: &str,
    retry_after_ms: u32,
) -> Bytes {
    let frame = pb::ServerFrame {
        request_id,
        body: Some(Body::Error(pb::Error {
            code: code as i32,
            message: message.to_owned(),
            retry_after_ms,
        })),
    };
    // Error messages are short server strings: the frame is far below any
    // frame limit, so it is encoded without the limit check (the chat/1
    // prefix is protobuf's varint length).
    Bytes::from(prost::Message::encode_length_delimited_to_vec(&frame))
}

/// `ServerFrame.body`'s field number for `MessagePush` and
/// `MessagePush.message`'s (`protocol/proto/chat.proto`).
const MESSAGE_PUSH_FIELD: u32 = 40;
const PUSHED_MESSAGE_FIELD: u32 = 1;

/// The push of a message whose protobuf encoding is `message`: the frame
/// [`push`] makes of `Body::MessagePush`, byte for byte, built around the
/// encoding the store keeps instead of encoding the message a second time.
pub fn message_push(message: &[u8]) -> Bytes {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    let inner =
        key_len(PUSHED_MESSAGE_FIELD) + encoded_len_varint(message.len() as u64) + message.len();
    let frame = key_len(MESSAGE_PUSH_FIELD) + encoded_len_varint(inner as u64) + inner;
    if frame > chat_protocol::DEFAULT_MAX_FRAME_BYTES {
        return error(0, ErrorCode::Internal, "push exceeds the frame limit");
    }
    let mut out = Vec::with_capacity(encoded_len_varint(frame as u64) + frame);
    encode_varint(frame as u64, &mut out);
    encode_key(MESSAGE_PUSH_FIELD, WireType::LengthDelimited, &mut out);
    encode_varint(inner as u64, &mut out);
    encode_key(PUSHED_MESSAGE_FIELD, WireType::LengthDelimited, &mut out);
    encode_varint(message.len() as u64, &mut out);
    out.extend_from_slice(message);
    Bytes::from(out)
}

/// `ServerFrame.send_ack`.
const SEND_ACK_FIELD: u32 = 30;

/// The SendAck answering `request_id`, encoded field by field: the same
/// bytes as `answer(request_id, Ok(Body::SendAck(ack)))` without building
/// the frame's message tree (one per stored message, on the owner shard).
pub fn send_ack(request_id: u64, ack: SendAckRef<'_>) -> Bytes {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    // proto3: fields holding their default are not written.
    let varint = |field: u32, v: u64| {
        if v == 0 {
            0
        } else {
            key_len(field) + encoded_len_varint(v)
        }
    };
    let cmid = ack.client_msg_id.as_bytes();
    let inner = varint(1, ack.conversation_id)
        + varint(2, ack.seq)
        + if ack.message_id == 0 {
            0
        } else {
            key_len(3) + 8
        }
        + varint(4, ack.sent_at_ms)
        + if cmid.is_empty() {
            0
        } else {
            key_len(5) + encoded_len_varint(cmid.len() as u64) + cmid.len()
        }
        + varint(6, u64::from(ack.duplicate));
    let frame =
        varint(1, request_id) + key_len(SEND_ACK_FIELD) + encoded_len_varint(inner as u64) + inner;
    if frame > chat_protocol::DEFAULT_MAX_FRAME_BYTES {
        return error(
            request_id,
            ErrorCode::Internal,
            "ack exceeds the frame limit",
        );
    }
    let mut out = Vec::with_capacity(encoded_len_varint(frame as u64) + frame);
    let put_varint = |out: &mut Vec<u8>, field: u32, v: u64| {
        if v != 0 {
            encode_key(field, WireType::Varint, out);
            encode_varint(v, out);
        }
    };
    encode_varint(frame as u64, &mut out);
    put_varint(&mut out, 1, request_id);
    encode_key(SEND_ACK_FIELD, WireType::LengthDelimited, &mut out);
    encode_varint(inner as u64, &mut out);
    put_varint(&mut out, 1, ack.conversation_id);
    put_varint(&mut out, 2, ack.seq);
    if ack.message_id != 0 {
        encode_key(3, WireType::SixtyFourBit, &mut out);
        out.extend_from_slice(&ack.message_id.to_le_bytes());
    }
    put_varint(&mut out, 4, ack.sent_at_ms);
    if !cmid.is_empty() {
        encode_key(5, WireType::LengthDelimited, &mut out);
        encode_varint(cmid.len() as u64, &mut out);
        out.extend_from_slice(cmid);
    }
    put_varint(&mut out, 6, u64::from(ack.duplicate));
    Bytes::from(out)
}

/// The fields of a SendAck, borrowed (see [`send_ack`]).
#[derive(Debug, Clone, Copy)]
pub struct SendAckRef<'a> {
    /// `conversation_id`.
    pub conversation_id: u64,
    /// `seq`.
    pub seq: u64,
    /// `message_id`.
    pub message_id: u64,
    /// `sent_at_ms`.
    pub sent_at_ms: u64,
    /// `client_msg_id`.
    pub client_msg_id: &'a str,
    /// `duplicate`.
    pub duplicate: bool,
}

/// A push (request_id 0).
pub fn push(body: Body) -> Bytes {
    encode(&pb::ServerFrame {
        request_id: 0,
        body: Some(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn a_message_push_built_around_the_stored_encoding_is_the_encoded_push() {
        for text_len in [0, 1, 100, 200, 20_000] {
            let m = pb::Message {
                conversation_id: 7,
                seq: 300,
                message_id: 1 << 40,
                sender_id: 9,
                sent_at_ms: 1_700_000_000_000,
                client_msg_id: "c-1".into(),
                text: "x".repeat(text_len),
                ..Default::default()
            };
            let expected = push(Body::MessagePush(pb::MessagePush {
                message: Some(m.clone()),
            }));
            assert_eq!(
                message_push(&m.encode_to_vec()),
                expected,
                "text of {text_len} bytes"
            );
        }
    }

    #[test]
    fn a_hand_encoded_send_ack_is_the_encoded_answer() {
        let cmids = [String::new(), "c-1".into(), "x".repeat(64)];
        for rid in [0, 1, 300, u64::MAX] {
            for cmid in &cmids {
                for (conv, seq, id, at, duplicate) in [
                    (0, 0, 0, 0, false),
                    (7, 1, 1 << 40, 1_700_000_000_000, false),
                    (u64::MAX, 300, u64::MAX, 1, true),
                ] {
                    let expected = answer(
                        rid,
                        Ok(Body::SendAck(pb::SendAck {
                            conversation_id: conv,
                            seq,
                            message_id: id,
                            sent_at_ms: at,
                            client_msg_id: cmid.clone(),
                            duplicate,
                        })),
                    );
                    let ack = SendAckRef {
                        conversation_id: conv,
                        seq,
                        message_id: id,
                        sent_at_ms: at,
                        client_msg_id: cmid,
                        duplicate,
                    };
                    assert_eq!(send_ack(rid, ack), expected, "rid {rid}, {ack:?}");
                }
            }
        }
    }
}
