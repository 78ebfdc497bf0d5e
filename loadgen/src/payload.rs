//! The bytes every test message carries: who sent it, its number in that
//! sender's stream and when it was (meant to be) sent, padded to the
//! requested payload size. Receivers use the header to measure latency and to
//! check that every sender's stream arrives complete, once and in order.

/// Parsed message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Index of the sending stream (user, or user × conversation).
    pub stream: u32,
    /// 0, 1, 2, ... within the stream.
    pub counter: u64,
    /// Nanoseconds since the run's clock started.
    pub sent_ns: u64,
}

/// Writes `header` followed by padding so that the payload is `size` bytes
/// (or just the header when it is longer than `size`). ASCII only, so it is
/// valid as a protobuf `string`.
pub fn write(out: &mut Vec<u8>, header: Header, size: usize) {
    use std::io::Write as _;
    let start = out.len();
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "{}:{}:{};",
        header.stream, header.counter, header.sent_ns
    );
    let written = out.len() - start;
    if written < size {
        out.resize(start + size, b'x');
    }
}

/// The header at the start of `bytes`, if it is one.
pub fn parse(bytes: &[u8]) -> Option<Header> {
    let end = bytes.iter().position(|&b| b == b';')?;
    let text = std::str::from_utf8(bytes.get(..end)?).ok()?;
    let mut parts = text.split(':');
    let stream = parts.next()?.parse().ok()?;
    let counter = parts.next()?.parse().ok()?;
    let sent_ns = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(Header {
        stream,
        counter,
        sent_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let h = Header {
            stream: 7,
            counter: 123,
            sent_ns: 987_654_321,
        };
        let mut buf = Vec::new();
        write(&mut buf, h, 100);
        assert_eq!(buf.len(), 100);
        assert_eq!(parse(&buf), Some(h));
        let mut short = Vec::new();
        write(&mut short, h, 4);
        assert_eq!(parse(&short), Some(h));
        assert_eq!(parse(b"garbage"), None);
        assert_eq!(parse(b"1:2;"), None);
    }
}
