//! RESP2, the Redis protocol: just enough for `SUBSCRIBE` and `PUBLISH`
//! (pub/sub), and `XADD` and `XREAD` (streams).

use std::collections::VecDeque;

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

/// The field every stream entry keeps its payload in.
pub const STREAM_FIELD: &[u8] = b"m";

/// Entries one `XREAD` returns at most: bounds a reply's size.
const XREAD_COUNT: &str = "1000";

/// Appends an `XADD` of `payload` to stream `key` (id chosen by Redis).
pub fn encode_xadd(out: &mut Vec<u8>, key: &[u8], payload: &[u8]) {
    encode_command(out, &[b"XADD", key, b"*", STREAM_FIELD, payload]);
}

/// Appends a blocking `XREAD` of stream `key` after entry `after`.
pub fn encode_xread(out: &mut Vec<u8>, key: &[u8], after: &[u8]) {
    encode_command(
        out,
        &[
            b"XREAD",
            b"COUNT",
            XREAD_COUNT.as_bytes(),
            b"BLOCK",
            b"0",
            b"STREAMS",
            key,
            after,
        ],
    );
}

/// The RESP2 decoder for a publishing or a subscribed connection, and
/// for `XADD`s (whose reply, the new entry's id, is the ack).
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
            Value::Bulk(Some(_)) => Event::Ack { tag: 0 },
            Value::Simple(_) | Value::Bulk(None) => Event::Other,
        }))
    }
}

/// The decoder of a connection that reads one stream with `XREAD BLOCK`:
/// every entry of a reply is a delivery, and the reply's answer is the
/// next `XREAD`, after the last entry seen, so exactly one is pending at
/// a time and no entry is skipped or read twice.
pub struct StreamReader {
    buf: BytesMut,
    key: Vec<u8>,
    last_id: Vec<u8>,
    ready: VecDeque<Event>,
}

impl StreamReader {
    /// A reader of stream `key`, whose first `XREAD` (after `0-0`, so
    /// from the start) [`StreamReader::first_read`] makes.
    pub fn new(key: &[u8]) -> Self {
        Self {
            buf: BytesMut::new(),
            key: key.to_vec(),
            last_id: b"0-0".to_vec(),
            ready: VecDeque::new(),
        }
    }

    /// The `XREAD` to send before the load starts.
    pub fn first_read(&self) -> Vec<u8> {
        let mut out = Vec::new();
        encode_xread(&mut out, &self.key, &self.last_id);
        out
    }

    /// Queues the deliveries of one `XREAD` reply and the next `XREAD`.
    fn on_reply(&mut self, items: Vec<Value>) -> anyhow::Result<()> {
        for stream in items {
            let Value::Array(parts) = stream else {
                bail!("XREAD reply: a stream is not an array");
            };
            let Some(Value::Array(entries)) = parts.into_iter().nth(1) else {
                bail!("XREAD reply: no entries");
            };
            for entry in entries {
                let Value::Array(entry) = entry else {
                    bail!("XREAD reply: an entry is not an array");
                };
                let mut entry = entry.into_iter();
                let (Some(Value::Bulk(Some(id))), Some(Value::Array(fields))) =
                    (entry.next(), entry.next())
                else {
                    bail!("XREAD reply: an entry without id and fields");
                };
                let payload = match fields.as_slice() {
                    [Value::Bulk(Some(f)), Value::Bulk(Some(v))] if f == STREAM_FIELD => Some(v),
                    _ => None,
                };
                self.ready.push_back(Event::Deliver {
                    conv: 0,
                    seq: 0,
                    system: false,
                    header: payload.and_then(|p| payload::parse(p)),
                });
                self.last_id = id;
            }
        }
        let mut next = Vec::new();
        encode_xread(&mut next, &self.key, &self.last_id);
        self.ready.push_back(Event::Reply(next));
        Ok(())
    }
}

impl Decoder for StreamReader {
    fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        if let Some(ev) = self.ready.pop_front() {
            return Ok(Some(ev));
        }
        let Some((value, used)) = parse(&self.buf, 0)? else {
            return Ok(None);
        };
        self.buf.advance(used);
        match value {
            // (A timed-out XREAD, which BLOCK 0 never gives, is a null
            // array: no entries, the same XREAD again.)
            Value::Array(items) => self.on_reply(items)?,
            Value::Error(e) => {
                return Ok(Some(Event::Error {
                    tag: 0,
                    text: String::from_utf8_lossy(&e).into_owned(),
                }));
            }
            _ => return Ok(Some(Event::Other)),
        }
        Ok(self.ready.pop_front())
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
    fn reads_a_stream_split_anywhere() {
        let wire = b"*1\r\n*2\r\n$1\r\nk\r\n*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nm\r\n$9\r\n1:2:3;xxx\r\n*2\r\n$3\r\n2-0\r\n*2\r\n$1\r\nm\r\n$9\r\n1:3:4;xxx\r\n";
        for split in 0..wire.len() {
            let mut d = StreamReader::new(b"k");
            let mut events = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                d.buffer().extend_from_slice(part);
                while let Some(e) = d.next_event().unwrap() {
                    events.push(e);
                }
            }
            assert_eq!(events.len(), 3, "{events:?}");
            assert!(format!("{:?}", events[0]).contains("counter: 2"));
            assert!(format!("{:?}", events[1]).contains("counter: 3"));
            let Event::Reply(next) = &events[2] else {
                panic!("{events:?}");
            };
            let mut want = Vec::new();
            encode_xread(&mut want, b"k", b"2-0");
            assert_eq!(next, &want);
        }
    }

    #[test]
    fn xadd_replies_are_acks() {
        let mut d = RespDecoder::default();
        d.buffer().extend_from_slice(b"$3\r\n1-0\r\n-ERR x\r\n");
        assert!(matches!(d.next_event().unwrap(), Some(Event::Ack { .. })));
        assert!(matches!(d.next_event().unwrap(), Some(Event::Error { .. })));
    }

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"PUBLISH", b"c", b"hi"]);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$2\r\nhi\r\n");
    }
}
