//! RESP2, the Redis protocol: just enough for `SUBSCRIBE` and `PUBLISH`.

use anyhow::bail;
use bytes::{Buf as _, BytesMut};

use super::{Decoder, Event};
use crate::payload;

/// Appends a command (an array of bulk strings).
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    use std::io::Write as _;
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n", a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// One RESP2 value.
#[derive(Debug, PartialEq, Eq)]
enum Value {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Value>),
}

/// Parses one value at `buf[pos..]`, returning it and the position after
/// it, or `None` if incomplete.
fn parse(buf: &[u8], pos: usize) -> anyhow::Result<Option<(Value, usize)>> {
    let Some(rest) = buf.get(pos..) else {
        return Ok(None);
    };
    let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") else {
        if rest.len() > 64 * 1024 {
            bail!("RESP line too long");
        }
        return Ok(None);
    };
    let Some((&kind, line)) = rest[..nl].split_first() else {
        bail!("empty RESP line");
    };
    let after = pos + nl + 2;
    let number = || -> anyhow::Result<i64> { Ok(std::str::from_utf8(line)?.parse::<i64>()?) };
    Ok(match kind {
        b'+' => Some((Value::Simple(line.to_vec()), after)),
        b'-' => Some((Value::Error(line.to_vec()), after)),
        b':' => Some((Value::Int(number()?), after)),
        b'$' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some((Value::Bulk(None), after)));
            }
            let n = usize::try_from(n)?;
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            Some((
                Value::Bulk(Some(buf[after..after + n].to_vec())),
                after + n + 2,
            ))
        }
        b'*' => {
            let n = number()?;
            let mut items = Vec::new();
            let mut at = after;
            for _ in 0..n.max(0) {
                match parse(buf, at)? {
                    Some((v, next)) => {
                        items.push(v);
                        at = next;
                    }
                    None => return Ok(None),
                }
            }
            Some((Value::Array(items), at))
        }
        other => bail!("unexpected RESP type byte {other:#x}"),
    })
}

/// The RESP2 decoder for a publishing or a subscribed connection.
#[derive(Default)]
pub struct RespDecoder {
    buf: BytesMut,
}

impl Decoder for RespDecoder {
    fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        let Some((value, used)) = parse(&self.buf, 0)? else {
            return Ok(None);
        };
        self.buf.advance(used);
        Ok(Some(match value {
            Value::Int(n) => Event::Ack {
                tag: u64::try_from(n).unwrap_or(0),
            },
            Value::Error(e) => Event::Error {
                tag: 0,
                text: String::from_utf8_lossy(&e).into_owned(),
            },
            Value::Array(items) => match items.as_slice() {
                [Value::Bulk(Some(kind)), _, Value::Bulk(Some(data))] if kind == b"message" => {
                    Event::Deliver {
                        conv: 0,
                        seq: 0,
                        system: false,
                        header: payload::parse(data),
                    }
                }
                _ => Event::Other,
            },
            Value::Simple(s) if s == b"PONG" => Event::Pong,
            Value::Simple(_) | Value::Bulk(_) => Event::Other,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_publish_replies_and_messages_split_anywhere() {
        let wire = b":3\r\n*3\r\n$9\r\nsubscribe\r\n$4\r\nlg.1\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$4\r\nlg.1\r\n$9\r\n1:2:3;xxx\r\n-ERR no\r\n";
        for split in 0..wire.len() {
            let mut d = RespDecoder::default();
            let mut events = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                d.buffer().extend_from_slice(part);
                while let Some(e) = d.next_event().unwrap() {
                    events.push(format!("{e:?}"));
                }
            }
            assert_eq!(events.len(), 4, "{events:?}");
            assert!(events[0].starts_with("Ack { tag: 3"));
            assert!(events[1].starts_with("Other"));
            assert!(events[2].contains("counter: 2"), "{}", events[2]);
            assert!(events[3].starts_with("Error"));
        }
    }

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"PUBLISH", b"c", b"hi"]);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$2\r\nhi\r\n");
    }
}
