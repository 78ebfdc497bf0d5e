//! The `ejabberd` target: users registered with `ejabberdctl register`
//! before the run, then one XMPP client-to-server session each over plain
//! TCP: SASL PLAIN, resource binding, stream management (XEP-0198) and
//! initial presence. In the load, senders send one-to-one chat
//! `<message>`s to their partner's bare JID, each batch followed by an
//! ack request; the server's `<a h/>` acks them in order.

use std::collections::HashMap;
use std::rc::Rc;

use anyhow::{Context as _, bail};
use base64::Engine as _;

use crate::peers::{EJABBERD_HOST, EjabberdCtl};
use crate::session::PASSWORD;
use crate::setup::{self, Conn, Dest, Kind, Plan, Ready};
use crate::transport::{Dialer, Link};
use crate::wire::xmpp::{self, Element, Item, XmlStream, XmppDecoder};

/// `ejabberdctl register`s run at once (each boots an Erlang VM).
const REGISTER_CONCURRENCY: usize = 4;

/// The resource every session binds.
const RESOURCE: &str = "loadgen";

/// Longest one session may take to log in (a server that stops answering
/// fails the run instead of hanging it).
const LOGIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A session being set up.
struct XmppSession {
    link: Link,
    stream: XmlStream,
    /// Stanzas received since stream management was enabled.
    received: u32,
    sm_enabled: bool,
}

impl XmppSession {
    async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.link.writer.write_all(bytes).await?;
        Ok(())
    }

    /// The next item, answering the server's ack requests on the way.
    async fn next(&mut self) -> anyhow::Result<Item> {
        loop {
            if let Some(item) = self.stream.next()? {
                if let Item::Element(el) = &item {
                    if self.sm_enabled && el.is_stanza() {
                        self.received = self.received.wrapping_add(1);
                    }
                    if el.name == "r" && self.sm_enabled {
                        let mut out = Vec::new();
                        xmpp::encode_ack(&mut out, self.received);
                        self.write(&out).await?;
                        continue;
                    }
                    if el.name == "stream:error" {
                        bail!("{}", xmpp::error_text(el));
                    }
                }
                return Ok(item);
            }
            self.stream.buf.reserve(16 * 1024);
            if self.link.reader.read_buf(&mut self.stream.buf).await? == 0 {
                bail!("ejabberd closed the connection during setup");
            }
        }
    }

    /// The next top-level element; a stream header or end is an error.
    async fn element(&mut self) -> anyhow::Result<Element> {
        match self.next().await? {
            Item::Element(el) => Ok(el),
            other => bail!("expected an element, got {other:?}"),
        }
    }

    /// Opens (or, after authentication, reopens) the stream and returns
    /// the server's features.
    async fn open_stream(&mut self) -> anyhow::Result<Element> {
        self.write(xmpp::stream_header(EJABBERD_HOST).as_bytes())
            .await?;
        match self.next().await? {
            Item::StreamStart(_) => {}
            other => bail!("expected the stream header, got {other:?}"),
        }
        let features = self.element().await?;
        if features.name != "stream:features" {
            bail!("expected stream features, got <{}>", features.name);
        }
        Ok(features)
    }

    /// Everything up to a session that is bound, available and has stream
    /// management on, whose `<a h='1'/>` (for the initial presence) has
    /// arrived.
    async fn log_in(
        dialer: &Dialer,
        source: Option<std::net::IpAddr>,
        user: &str,
    ) -> anyhow::Result<Self> {
        let link = dialer.connect(source).await?;
        let mut s = Self {
            link,
            stream: XmlStream::default(),
            received: 0,
            sm_enabled: false,
        };
        let features = s.open_stream().await?;
        let plain = features
            .child("mechanisms")
            .is_some_and(|m| m.children.iter().any(|c| c.text == "PLAIN"));
        if !plain {
            bail!("ejabberd does not offer SASL PLAIN: {features:?}");
        }
        let credentials = base64::engine::general_purpose::STANDARD
            .encode(format!("\0{user}\0{PASSWORD}").as_bytes());
        s.write(
            format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{credentials}</auth>"
            )
            .as_bytes(),
        )
        .await?;
        let reply = s.element().await?;
        if reply.name != "success" {
            bail!("authentication of {user} failed: {reply:?}");
        }
        let features = s.open_stream().await?;
        if features.child("sm").is_none() {
            bail!("ejabberd does not offer stream management: {features:?}");
        }
        s.write(
            format!(
                "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
                 <resource>{RESOURCE}</resource></bind></iq>"
            )
            .as_bytes(),
        )
        .await?;
        let bound = s.element().await?;
        if bound.name != "iq" || bound.attr("type") != Some("result") {
            bail!("binding a resource for {user} failed: {bound:?}");
        }
        s.write(format!("<enable xmlns='{}'/>", xmpp::SM).as_bytes())
            .await?;
        let enabled = s.element().await?;
        if enabled.name != "enabled" {
            bail!("enabling stream management for {user} failed: {enabled:?}");
        }
        s.sm_enabled = true;
        let mut out = b"<presence/>".to_vec();
        xmpp::encode_ack_request(&mut out);
        s.write(&out).await?;
        loop {
            let el = s.element().await?;
            if el.name == "a" {
                if el.attr("h") == Some("1") {
                    return Ok(s);
                }
                bail!("initial presence of {user} not acknowledged: {el:?}");
            }
        }
    }
}

/// The account name of user `i` of this run.
fn username(prefix: &str, i: usize) -> String {
    format!("{prefix}u{i}")
}

/// Registers the users, logs each in and returns the sessions with where
/// each stream's messages go (the partner's bare JID).
pub async fn prepare(
    plan: &Plan,
    dialer: Rc<Dialer>,
    ctl: Option<&EjabberdCtl>,
    source_addrs: usize,
) -> anyhow::Result<Ready> {
    if plan.kind != Kind::Direct {
        bail!("ejabberd runs the direct scenario only (one-to-one <message> stanzas)");
    }
    let Some(ctl) = ctl else {
        bail!("ejabberd: users are registered with ejabberdctl, so loadgen must start ejabberd");
    };
    let prefix = crate::session::run_prefix();
    let ctl = Rc::new(ctl.clone());
    setup::bounded(plan.users, REGISTER_CONCURRENCY, |i| {
        let ctl = ctl.clone();
        let name = username(&prefix, i);
        async move { ctl.register(&name, PASSWORD).await }
    })
    .await
    .context("registering the users")?;
    let prefix = Rc::new(prefix);
    let conns = setup::bounded(plan.users, 64, |u| {
        let dialer = dialer.clone();
        let prefix = prefix.clone();
        async move {
            let source = crate::conn::source_addr(u, source_addrs);
            let name = username(&prefix, u);
            let login = XmppSession::log_in(&dialer, source, &name);
            let s = tokio::time::timeout(LOGIN_TIMEOUT, login)
                .await
                .with_context(|| format!("user {u} not logged in within 30 s"))?
                .with_context(|| format!("logging user {u} in"))?;
            Ok(Conn {
                user: u,
                link: s.link,
                decoder: Box::new(XmppDecoder::new(s.stream, s.received, 1)),
                sends: true,
            })
        }
    })
    .await?;
    let dests = plan
        .streams
        .iter()
        .map(|&(c, sender)| {
            let peer = plan.convs[c]
                .iter()
                .copied()
                .find(|&u| u != sender)
                .unwrap_or(sender);
            Dest::Subject(Rc::from(format!(
                "{}@{EJABBERD_HOST}",
                username(&prefix, peer)
            )))
        })
        .collect();
    Ok(Ready {
        conns,
        dests,
        conv_base: HashMap::new(),
    })
}
