//! The wire protocols loadgen speaks, each as an encoder for the
//! frames it sends and a streaming decoder that turns received bytes into
//! [`Event`]s. The scenario code above them is the same for every target.

pub mod chat;
pub mod jetstream;
pub mod nats;
pub mod resp;
pub mod xmpp;

use bytes::BytesMut;

use crate::payload::Header;

/// Something a connection received that the scenario cares about.
#[derive(Debug)]
pub enum Event {
    /// The server accepted a send: chat/1 `SendAck` (tag = request id), or
    /// the next send of the connection acknowledged (replies in send
    /// order): a Redis `PUBLISH` reply (tag = number of subscribers that
    /// got it) or `XADD` reply, a JetStream publish ack, one send of an
    /// XMPP `<a h/>` (tag 0).
    Ack { tag: u64 },
    /// A message for this connection. `conv`/`seq` are the chat/1
    /// conversation and sequence number (0 for targets without them).
    Deliver {
        conv: u64,
        seq: u64,
        system: bool,
        header: Option<Header>,
    },
    /// Bytes that must be written back (a ping's answer).
    Reply(Vec<u8>),
    /// An answer to our ping.
    Pong,
    /// An error from the server; `tag` is the request it answers (0: none).
    Error { tag: u64, text: String },
    /// Anything else (subscription confirmations, receipts, ...).
    Other,
}

/// A streaming decoder: read socket bytes into [`Decoder::buffer`], then
/// take events until `None`.
pub trait Decoder {
    /// The receive buffer to read into.
    fn buffer(&mut self) -> &mut BytesMut;
    /// The next complete event, `None` if more bytes are needed.
    fn next_event(&mut self) -> anyhow::Result<Option<Event>>;
}
