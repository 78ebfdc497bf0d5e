//! chat/1 (`spec/`): length-delimited protobuf frames.

use anyhow::{Context as _, bail};
use bytes::BytesMut;
use chat_protocol::codec::{self, DEFAULT_MAX_FRAME_BYTES, FrameDecoder};
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};

use super::{Decoder, Event};
use crate::payload;

/// Appends one client frame.
pub fn encode(out: &mut Vec<u8>, request_id: u64, body: C) {
    let frame = pb::ClientFrame {
        request_id,
        body: Some(body),
    };
    // Our own frames are far below the limit.
    let _ = codec::encode(&frame, out, DEFAULT_MAX_FRAME_BYTES);
}

/// Appends a `SendMessage` whose text is `text` (ASCII from
/// [`payload::write`]).
pub fn encode_send(out: &mut Vec<u8>, request_id: u64, conversation_id: u64, text: &[u8]) {
    let body = C::SendMessage(pb::SendMessage {
        conversation_id,
        client_msg_id: format!("lg-{request_id}"),
        text: String::from_utf8_lossy(text).into_owned(),
        // Every id is fresh and sent once, as client-lib does for new sends.
        first_attempt: true,
        ..Default::default()
    });
    encode(out, request_id, body);
}

/// The chat/1 decoder.
pub struct ChatDecoder {
    inner: FrameDecoder,
}

impl Default for ChatDecoder {
    fn default() -> Self {
        Self {
            inner: FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES),
        }
    }
}

impl ChatDecoder {
    /// The next whole frame.
    pub fn next_frame(&mut self) -> anyhow::Result<Option<pb::ServerFrame>> {
        self.inner
            .next_frame::<pb::ServerFrame>()
            .context("bad frame from server")
    }
}

/// The events a message in a push, a sync gap or a history page stands for.
pub fn deliver_event(m: &pb::Message) -> Event {
    Event::Deliver {
        conv: m.conversation_id,
        seq: m.seq,
        system: m.kind == pb::MessageKind::System as i32,
        header: payload::parse(m.text.as_bytes()),
    }
}

impl Decoder for ChatDecoder {
    fn buffer(&mut self) -> &mut BytesMut {
        self.inner.buffer_mut()
    }

    fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        let Some(frame) = self.next_frame()? else {
            return Ok(None);
        };
        let rid = frame.request_id;
        Ok(Some(match frame.body {
            Some(S::SendAck(_)) => Event::Ack { tag: rid },
            Some(S::MessagePush(p)) => match p.message {
                Some(m) => deliver_event(&m),
                None => Event::Other,
            },
            Some(S::Ping(p)) => {
                let mut out = Vec::new();
                encode(&mut out, 0, C::Pong(pb::Pong { nonce: p.nonce }));
                Event::Reply(out)
            }
            Some(S::Pong(_)) => Event::Pong,
            Some(S::Error(e)) => Event::Error {
                tag: rid,
                text: format!("{:?}: {}", e.code(), e.message),
            },
            Some(S::GoAway(g)) => Event::Error {
                tag: 0,
                text: format!("GoAway {:?}: {}", g.code(), g.message),
            },
            _ => Event::Other,
        }))
    }
}

/// The reply body or the server's error as an `anyhow` error.
pub fn expect_ok(frame: pb::ServerFrame) -> anyhow::Result<S> {
    match frame.body {
        Some(S::Error(e)) => bail!("server error {:?}: {}", e.code(), e.message),
        Some(body) => Ok(body),
        None => bail!("empty frame from server"),
    }
}
