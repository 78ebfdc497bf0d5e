//! XMPP client-to-server (RFC 6120) as loadgen speaks it to ejabberd: a
//! stream of XML elements read with quick-xml, one top-level element (a
//! stanza, or a stream-level element such as `<r/>`) at a time, and the
//! few things loadgen sends. Stream management (XEP-0198) gives acks:
//! the server's `<a h='n'/>` says it has handled the first `n` stanzas
//! the client sent since `<enable/>`.

use std::fmt::Write as _;

use anyhow::{Context as _, bail};
use bytes::{Buf as _, BytesMut};
use quick_xml::errors::{Error as XmlError, IllFormedError, SyntaxError};
use quick_xml::events::{BytesStart, Event as XmlEvent};

use super::{Decoder, Event};
use crate::payload;

/// The stream management namespace.
pub const SM: &str = "urn:xmpp:sm:3";

/// Largest top-level element accepted (ejabberd's `max_stanza_size` in
/// loadgen's configuration is 64 KiB).
const MAX_ELEMENT: usize = 1 << 20;

/// The opening of a client stream to `host`.
pub fn stream_header(host: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream to='{host}' xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
    )
}

/// Appends a chat `<message>` to `to` carrying `body`, with an id from
/// `id`.
pub fn encode_message(out: &mut Vec<u8>, to: &str, id: u64, body: &[u8]) {
    let mut s = String::with_capacity(body.len() + to.len() + 80);
    let body = String::from_utf8_lossy(body);
    let _ = write!(
        s,
        "<message to='{}' type='chat' id='{id:x}'><body>{}</body></message>",
        quick_xml::escape::escape(to),
        quick_xml::escape::escape(body.as_ref()),
    );
    out.extend_from_slice(s.as_bytes());
}

/// Appends a stream management ack request.
pub fn encode_ack_request(out: &mut Vec<u8>) {
    let _ = write!(StringSink(out), "<r xmlns='{SM}'/>");
}

/// Appends the answer to the server's ack request: `handled` stanzas
/// received so far.
pub fn encode_ack(out: &mut Vec<u8>, handled: u32) {
    let _ = write!(StringSink(out), "<a xmlns='{SM}' h='{handled}'/>");
}

/// `write!` into a byte vector.
struct StringSink<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for StringSink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// One XML element with its attributes, text and children.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Element {
    /// The qualified name as written (`message`, `stream:features`).
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    fn from_start(e: &BytesStart<'_>) -> anyhow::Result<Self> {
        let mut el = Element {
            name: String::from_utf8_lossy(e.name().as_ref()).into_owned(),
            ..Default::default()
        };
        for a in e.attributes() {
            let a = a.context("bad XML attribute")?;
            el.attrs.push((
                String::from_utf8_lossy(a.key.as_ref()).into_owned(),
                a.normalized_value(quick_xml::XmlVersion::Explicit1_0)
                    .context("bad XML attribute value")?
                    .into_owned(),
            ));
        }
        Ok(el)
    }

    /// The value of attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first child called `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Whether this is a stanza (`message`, `presence`, `iq`), which the
    /// stream management count covers.
    pub fn is_stanza(&self) -> bool {
        matches!(self.name.as_str(), "message" | "presence" | "iq")
    }
}

/// What the server's stream holds next.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// `<stream:stream ...>` (the server's stream header; again after
    /// authentication restarts the stream).
    StreamStart(Element),
    /// A complete top-level element.
    Element(Element),
    /// `</stream:stream>`: the server closed the stream.
    StreamEnd,
}

/// Whether a quick-xml error means only that the input stopped short.
fn is_incomplete(e: &XmlError) -> bool {
    matches!(
        e,
        XmlError::Syntax(
            SyntaxError::UnclosedTag
                | SyntaxError::UnclosedPI
                | SyntaxError::UnclosedXmlDecl
                | SyntaxError::UnclosedComment
                | SyntaxError::UnclosedCData
                | SyntaxError::UnclosedDoctype
                | SyntaxError::InvalidBangMarkup
                | SyntaxError::UnclosedSingleQuotedAttributeValue
                | SyntaxError::UnclosedDoubleQuotedAttributeValue
        ) | XmlError::IllFormed(IllFormedError::UnclosedReference)
    )
}

/// The next item at the start of `buf` and the bytes it took, or `None`
/// while it is incomplete. Whitespace, the XML declaration and comments
/// between elements are skipped.
pub fn next_item(buf: &[u8]) -> anyhow::Result<Option<(Item, usize)>> {
    let mut reader = quick_xml::Reader::from_reader(buf);
    // Parsing starts inside the stream element, whose end tag is then
    // unmatched.
    reader.config_mut().allow_unmatched_ends = true;
    let mut stack: Vec<Element> = Vec::new();
    loop {
        let event = match reader.read_event() {
            Ok(ev) => ev,
            Err(e) if is_incomplete(&e) => return incomplete(buf),
            Err(e) => return Err(e).context("malformed XML from the server"),
        };
        let done = |el: Element, r: &quick_xml::Reader<&[u8]>| {
            Ok(Some((Item::Element(el), r.buffer_position() as usize)))
        };
        match event {
            XmlEvent::Start(e) => {
                let el = Element::from_start(&e)?;
                if stack.is_empty() && el.name == "stream:stream" {
                    return Ok(Some((
                        Item::StreamStart(el),
                        reader.buffer_position() as usize,
                    )));
                }
                stack.push(el);
            }
            XmlEvent::Empty(e) => {
                let el = Element::from_start(&e)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => return done(el, &reader),
                }
            }
            XmlEvent::End(_) => match stack.pop() {
                None => return Ok(Some((Item::StreamEnd, reader.buffer_position() as usize))),
                Some(el) => match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => return done(el, &reader),
                },
            },
            XmlEvent::Text(t) => {
                if let Some(el) = stack.last_mut() {
                    el.text.push_str(&t.decode().context("text is not UTF-8")?);
                }
            }
            XmlEvent::CData(t) => {
                if let Some(el) = stack.last_mut() {
                    el.text.push_str(&t.decode().context("CDATA is not UTF-8")?);
                }
            }
            XmlEvent::GeneralRef(r) => {
                if let Some(el) = stack.last_mut() {
                    if let Some(c) = r.resolve_char_ref().context("bad character reference")? {
                        el.text.push(c);
                    } else {
                        let name = r.decode().context("bad entity reference")?;
                        match quick_xml::escape::resolve_predefined_entity(&name) {
                            Some(v) => el.text.push_str(v),
                            None => bail!("unknown XML entity &{name};"),
                        }
                    }
                }
            }
            XmlEvent::Eof => return incomplete(buf),
            XmlEvent::Decl(_) | XmlEvent::Comment(_) | XmlEvent::PI(_) | XmlEvent::DocType(_) => {}
        }
    }
}

fn incomplete<T>(buf: &[u8]) -> anyhow::Result<Option<T>> {
    if buf.len() > MAX_ELEMENT {
        bail!("an XML element of more than {MAX_ELEMENT} bytes");
    }
    Ok(None)
}

/// Received bytes, taken an item at a time.
#[derive(Default)]
pub struct XmlStream {
    pub buf: BytesMut,
}

impl XmlStream {
    /// The next complete item, if buffered.
    pub fn next(&mut self) -> anyhow::Result<Option<Item>> {
        let Some((item, used)) = next_item(&self.buf)? else {
            return Ok(None);
        };
        self.buf.advance(used);
        Ok(Some(item))
    }
}

/// The text of a `<stream:error>` or a stanza error.
pub fn error_text(el: &Element) -> String {
    let condition = el
        .children
        .iter()
        .map(|c| c.name.as_str())
        .find(|n| *n != "text")
        .unwrap_or("unknown");
    let text = el.child("text").map(|t| t.text.as_str()).unwrap_or("");
    format!("{} {condition} {text}", el.name).trim().to_owned()
}

/// The load phase's decoder of an authenticated, bound session with
/// stream management on: messages are deliveries, `<a h/>` acks the
/// client's sends in order, `<r/>` is answered with the count of stanzas
/// received.
pub struct XmppDecoder {
    stream: XmlStream,
    /// Stanzas received since `<enable/>` (stream management's `h` for
    /// the server's stanzas).
    received: u32,
    /// The last `h` the server acked.
    acked: u32,
    /// Acks still to hand out from the last `<a/>`.
    acks_due: u32,
}

impl XmppDecoder {
    /// Takes over a session from setup: what is buffered, the stanzas
    /// received and the server's last `h`.
    pub fn new(stream: XmlStream, received: u32, acked: u32) -> Self {
        Self {
            stream,
            received,
            acked,
            acks_due: 0,
        }
    }

    fn on_element(&mut self, el: Element) -> anyhow::Result<Event> {
        if el.is_stanza() {
            self.received = self.received.wrapping_add(1);
        }
        Ok(match el.name.as_str() {
            "message" if el.attr("type") == Some("error") => Event::Error {
                tag: 0,
                text: error_text(el.child("error").unwrap_or(&el)),
            },
            "message" => match el.child("body") {
                Some(body) => Event::Deliver {
                    conv: 0,
                    seq: 0,
                    system: false,
                    header: payload::parse(body.text.as_bytes()),
                },
                None => Event::Other,
            },
            "r" => {
                let mut out = Vec::new();
                encode_ack(&mut out, self.received);
                Event::Reply(out)
            }
            "a" => {
                let h: u32 = el
                    .attr("h")
                    .and_then(|h| h.parse().ok())
                    .context("<a/> without a count")?;
                // `h` counts modulo 2^32 (XEP-0198).
                self.acks_due = h.wrapping_sub(self.acked);
                self.acked = h;
                self.take_ack().unwrap_or(Event::Other)
            }
            "stream:error" => Event::Error {
                tag: 0,
                text: error_text(&el),
            },
            _ => Event::Other,
        })
    }

    fn take_ack(&mut self) -> Option<Event> {
        if self.acks_due == 0 {
            return None;
        }
        self.acks_due -= 1;
        Some(Event::Ack { tag: 0 })
    }
}

impl Decoder for XmppDecoder {
    fn buffer(&mut self) -> &mut BytesMut {
        &mut self.stream.buf
    }

    fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        if let Some(ack) = self.take_ack() {
            return Ok(Some(ack));
        }
        Ok(match self.stream.next()? {
            None => None,
            Some(Item::Element(el)) => Some(self.on_element(el)?),
            Some(Item::StreamStart(_)) => Some(Event::Other),
            Some(Item::StreamEnd) => Some(Event::Error {
                tag: 0,
                text: "the server closed the XMPP stream".into(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(wire: &[u8], split: usize) -> Vec<Item> {
        let mut s = XmlStream::default();
        let mut out = Vec::new();
        for part in [&wire[..split], &wire[split..]] {
            s.buf.extend_from_slice(part);
            while let Some(i) = s.next().unwrap() {
                out.push(i);
            }
        }
        out
    }

    #[test]
    fn elements_split_anywhere() {
        let wire = b"<?xml version='1.0'?><stream:stream id='1' xmlns='jabber:client'>\
            <stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
            <mechanism>PLAIN</mechanism></mechanisms></stream:features>\
            <message from='a@x/r' type='chat'><body>1:2:3;a &amp; b&#x41;</body></message>\
            <r xmlns='urn:xmpp:sm:3'/></stream:stream>";
        for split in 0..wire.len() {
            let got = items(wire, split);
            assert_eq!(got.len(), 5, "split {split}: {got:?}");
            let Item::StreamStart(h) = &got[0] else {
                panic!("{got:?}")
            };
            assert_eq!(h.attr("id"), Some("1"));
            let Item::Element(f) = &got[1] else {
                panic!("{got:?}")
            };
            let mech = f.child("mechanisms").and_then(|m| m.child("mechanism"));
            assert_eq!(mech.map(|m| m.text.as_str()), Some("PLAIN"));
            let Item::Element(m) = &got[2] else {
                panic!("{got:?}")
            };
            assert_eq!(
                m.child("body").map(|b| b.text.as_str()),
                Some("1:2:3;a & bA")
            );
            assert_eq!(
                got[3],
                Item::Element(Element {
                    name: "r".into(),
                    attrs: vec![("xmlns".into(), SM.into())],
                    ..Default::default()
                })
            );
            assert_eq!(got[4], Item::StreamEnd);
        }
    }

    #[test]
    fn decoder_delivers_acks_and_answers() {
        let mut d = XmppDecoder::new(XmlStream::default(), 1, 1);
        d.buffer().extend_from_slice(
            b"<message type='chat'><body>7:0:5;xx</body></message>\
              <a xmlns='urn:xmpp:sm:3' h='3'/><r xmlns='urn:xmpp:sm:3'/>\
              <message type='error'><error><item-not-found/></error></message>",
        );
        let mut events = Vec::new();
        while let Some(e) = d.next_event().unwrap() {
            events.push(e);
        }
        assert!(matches!(&events[0], Event::Deliver { header: Some(h), .. } if h.stream == 7));
        assert!(matches!(events[1], Event::Ack { .. }));
        assert!(matches!(events[2], Event::Ack { .. }));
        let Event::Reply(a) = &events[3] else {
            panic!("{events:?}")
        };
        assert_eq!(a, b"<a xmlns='urn:xmpp:sm:3' h='2'/>");
        assert!(matches!(&events[4], Event::Error { text, .. } if text.contains("item-not-found")));
        assert_eq!(events.len(), 5);
    }

    #[test]
    fn oversized_elements_are_refused() {
        let mut wire = b"<message><body>".to_vec();
        wire.resize(MAX_ELEMENT + 10, b'x');
        assert!(next_item(&wire).is_err());
    }

    #[test]
    fn messages_are_escaped() {
        let mut out = Vec::new();
        encode_message(&mut out, "b@x", 255, b"1:2:3;<&>");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<message to='b@x' type='chat' id='ff'><body>1:2:3;&lt;&amp;&gt;</body></message>"
        );
    }
}
