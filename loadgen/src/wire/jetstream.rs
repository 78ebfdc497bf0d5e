//! NATS JetStream as the scenario code sees it. The protocol itself is
//! async-nats's ([`crate::jetstream`]); between it and the scenario the
//! bytes are loadgen's own records, so that a JetStream connection is a
//! [`crate::transport::Link`] with a [`Decoder`] like every other target:
//!
//! - to the writer: `u16 subject length, subject, u32 payload length,
//!   payload` per publish;
//! - from the reader: `D u32 length payload` (a delivery), `A` (the next
//!   publish acknowledged: acks come in publish order), `E u32 length
//!   text` (an error).

use anyhow::bail;
use bytes::{Buf as _, BytesMut};

use super::{Decoder, Event};
use crate::payload;

/// Appends one publish of `payload` to `subject`.
pub fn encode_publish(out: &mut Vec<u8>, subject: &str, payload: &[u8]) {
    // Subjects are loadgen's own (`lg.u12`), payloads at most a few KiB
    // beyond `--payload`: the lengths fit.
    out.extend_from_slice(&(subject.len() as u16).to_be_bytes());
    out.extend_from_slice(subject.as_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// The publishes in `bytes` (whole records from [`encode_publish`]).
pub fn publishes(mut bytes: &[u8]) -> anyhow::Result<Vec<(&str, &[u8])>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let Some((len, rest)) = bytes.split_first_chunk::<2>() else {
            bail!("truncated publish record");
        };
        let len = u16::from_be_bytes(*len) as usize;
        let Some((subject, rest)) = rest.split_at_checked(len) else {
            bail!("truncated publish subject");
        };
        let Some((len, rest)) = rest.split_first_chunk::<4>() else {
            bail!("truncated publish record");
        };
        let len = u32::from_be_bytes(*len) as usize;
        let Some((payload, rest)) = rest.split_at_checked(len) else {
            bail!("truncated publish payload");
        };
        out.push((std::str::from_utf8(subject)?, payload));
        bytes = rest;
    }
    Ok(out)
}

/// Appends a delivery record.
pub fn encode_delivery(out: &mut BytesMut, payload: &[u8]) {
    out.extend_from_slice(b"D");
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Appends an ack record.
pub fn encode_ack(out: &mut BytesMut) {
    out.extend_from_slice(b"A");
}

/// Appends an error record.
pub fn encode_error(out: &mut BytesMut, text: &str) {
    out.extend_from_slice(b"E");
    out.extend_from_slice(&(text.len() as u32).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Decodes the reader's records.
#[derive(Default)]
pub struct JetStreamDecoder {
    buf: BytesMut,
}

impl Decoder for JetStreamDecoder {
    fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        let Some(&kind) = self.buf.first() else {
            return Ok(None);
        };
        if kind == b'A' {
            self.buf.advance(1);
            return Ok(Some(Event::Ack { tag: 0 }));
        }
        let Some(len) = self.buf.get(1..5) else {
            return Ok(None);
        };
        let mut len_bytes = [0; 4];
        len_bytes.copy_from_slice(len);
        let len = u32::from_be_bytes(len_bytes) as usize;
        let Some(body) = self.buf.get(5..5 + len) else {
            return Ok(None);
        };
        let event = match kind {
            b'D' => Event::Deliver {
                conv: 0,
                seq: 0,
                system: false,
                header: payload::parse(body),
            },
            b'E' => Event::Error {
                tag: 0,
                text: String::from_utf8_lossy(body).into_owned(),
            },
            other => bail!("unknown JetStream record {other:#x}"),
        };
        self.buf.advance(5 + len);
        Ok(Some(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_round_trip() {
        let mut out = Vec::new();
        encode_publish(&mut out, "lg.u1", b"1:2:3;xx");
        encode_publish(&mut out, "lg.c0", b"");
        let p = publishes(&out).unwrap();
        assert_eq!(p, vec![("lg.u1", &b"1:2:3;xx"[..]), ("lg.c0", &b""[..])]);
        assert!(publishes(&out[..out.len() - 1]).is_err());
    }

    #[test]
    fn records_decode_split_anywhere() {
        let mut wire = BytesMut::new();
        encode_delivery(&mut wire, b"1:2:3;xxx");
        encode_ack(&mut wire);
        encode_error(&mut wire, "timed out");
        for split in 0..wire.len() {
            let mut d = JetStreamDecoder::default();
            let mut events = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                d.buffer().extend_from_slice(part);
                while let Some(e) = d.next_event().unwrap() {
                    events.push(format!("{e:?}"));
                }
            }
            assert_eq!(events.len(), 3, "{events:?}");
            assert!(events[0].contains("counter: 2"));
            assert!(events[1].starts_with("Ack"));
            assert!(events[2].contains("timed out"));
        }
    }
}
