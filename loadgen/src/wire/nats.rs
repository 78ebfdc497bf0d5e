//! The NATS client protocol: `CONNECT`, `SUB`, `PUB`, `MSG`, `PING`/`PONG`.

use anyhow::bail;
use bytes::{Buf as _, BytesMut};

use super::{Decoder, Event};
use crate::payload;

/// The first thing a client sends: no `+OK` per command, and a `PING` whose
/// `PONG` tells that the server processed it.
pub const CONNECT: &[u8] =
    b"CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":true,\"name\":\"loadgen\",\"lang\":\"rust\",\"version\":\"0.1\",\"protocol\":1}\r\nPING\r\n";

/// Appends a `SUB`.
pub fn encode_sub(out: &mut Vec<u8>, subject: &str, sid: u64) {
    use std::io::Write as _;
    let _ = write!(out, "SUB {subject} {sid}\r\n");
}

/// Appends a `PUB`.
pub fn encode_pub(out: &mut Vec<u8>, subject: &str, payload: &[u8]) {
    use std::io::Write as _;
    let _ = write!(out, "PUB {subject} {}\r\n", payload.len());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// The NATS decoder.
#[derive(Default)]
pub struct NatsDecoder {
    buf: BytesMut,
}

impl Decoder for NatsDecoder {
    fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        let Some(nl) = self.buf.windows(2).position(|w| w == b"\r\n") else {
            if self.buf.len() > 1 << 20 {
                bail!("NATS control line too long");
            }
            return Ok(None);
        };
        let line = &self.buf[..nl];
        let event = if line.starts_with(b"MSG ") {
            // MSG <subject> <sid> [reply-to] <#bytes>
            let text = std::str::from_utf8(line)?;
            let Some(len) = text
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse::<usize>().ok())
            else {
                bail!("bad MSG line {text:?}");
            };
            let start = nl + 2;
            if self.buf.len() < start + len + 2 {
                return Ok(None);
            }
            let header = payload::parse(&self.buf[start..start + len]);
            self.buf.advance(start + len + 2);
            return Ok(Some(Event::Deliver {
                conv: 0,
                seq: 0,
                system: false,
                header,
            }));
        } else if line == b"PING" {
            Event::Reply(b"PONG\r\n".to_vec())
        } else if line == b"PONG" {
            Event::Pong
        } else if line.starts_with(b"-ERR") {
            Event::Error {
                tag: 0,
                text: String::from_utf8_lossy(line).into_owned(),
            }
        } else {
            Event::Other
        };
        self.buf.advance(nl + 2);
        Ok(Some(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_messages_split_anywhere() {
        let wire = b"INFO {}\r\nPING\r\nMSG lg.1 1 9\r\n1:2:3;xxx\r\nPONG\r\n-ERR 'x'\r\n";
        for split in 0..wire.len() {
            let mut d = NatsDecoder::default();
            let mut events = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                d.buffer().extend_from_slice(part);
                while let Some(e) = d.next_event().unwrap() {
                    events.push(format!("{e:?}"));
                }
            }
            assert_eq!(events.len(), 5, "{events:?}");
            assert!(events[2].contains("counter: 2"), "{}", events[2]);
            assert!(events[3].starts_with("Pong"));
            assert!(events[4].starts_with("Error"));
        }
    }
}
