//! Setting a messaging run up on each target: accounts and conversations on
//! chatd; subscriptions on Redis and NATS; readers of Redis streams (here),
//! JetStream consumers ([`crate::jetstream`]) and XMPP sessions
//! ([`crate::xmpp`]). The result is a set of open connections and, for
//! each sending stream, where its messages go.

use std::collections::HashMap;
use std::rc::Rc;

use anyhow::{Context as _, bail};
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};

use crate::cli::{Common, Target};
use crate::conn;
use crate::scenario::Server;
use crate::session::{self, ChatSession};
use crate::transport::{Dialer, Link};
use crate::wire::{self, Decoder, Event};

/// What kind of conversations a plan makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Direct,
    Group,
    Channel,
}

/// Who talks to whom.
#[derive(Debug, Clone)]
pub struct Plan {
    pub kind: Kind,
    pub users: usize,
    /// Members of each conversation; the first one creates it (and posts,
    /// for a channel).
    pub convs: Vec<Vec<usize>>,
    /// Sending streams: (conversation index, sending user).
    pub streams: Vec<(usize, usize)>,
}

impl Plan {
    pub fn direct(users: usize) -> Self {
        let pairs = users / 2;
        let convs: Vec<Vec<usize>> = (0..pairs).map(|p| vec![2 * p, 2 * p + 1]).collect();
        let streams = (0..pairs)
            .flat_map(|p| [(p, 2 * p), (p, 2 * p + 1)])
            .collect();
        Self {
            kind: Kind::Direct,
            users: pairs * 2,
            convs,
            streams,
        }
    }

    pub fn group(groups: usize, size: usize, senders: usize) -> Self {
        let convs: Vec<Vec<usize>> = (0..groups)
            .map(|g| (g * size..(g + 1) * size).collect())
            .collect();
        let streams = (0..groups)
            .flat_map(|g| (0..senders.clamp(1, size)).map(move |k| (g, g * size + k)))
            .collect();
        Self {
            kind: Kind::Group,
            users: groups * size,
            convs,
            streams,
        }
    }

    pub fn channel(subscribers: usize) -> Self {
        Self {
            kind: Kind::Channel,
            users: subscribers + 1,
            convs: vec![(0..=subscribers).collect()],
            streams: vec![(0, 0)],
        }
    }

    /// Conversation of each user (every plan puts a user in one).
    pub fn conv_of_user(&self) -> Vec<usize> {
        let mut of = vec![0; self.users];
        for (c, members) in self.convs.iter().enumerate() {
            for &u in members {
                of[u] = c;
            }
        }
        of
    }
}

/// Where a stream's messages go.
#[derive(Debug, Clone)]
pub enum Dest {
    /// A chat/1 conversation id.
    Chat(u64),
    /// A Redis channel or stream key, a NATS subject or an XMPP JID.
    Subject(Rc<str>),
}

/// One open connection of a user.
pub struct Conn {
    pub user: usize,
    pub link: Link,
    pub decoder: Box<dyn Decoder>,
    /// Whether the user's messages are sent on this connection.
    pub sends: bool,
}

/// A run ready to start.
pub struct Ready {
    pub conns: Vec<Conn>,
    pub dests: Vec<Dest>,
    /// chat/1: the last seq of each conversation when the load starts;
    /// pushes at or below it are setup traffic.
    pub conv_base: HashMap<u64, u64>,
}

/// Runs `f(0..n)` with at most `limit` running at once; results in order.
/// Must run inside a `LocalSet`.
pub async fn bounded<T, Fut>(
    n: usize,
    limit: usize,
    f: impl Fn(usize) -> Fut,
) -> anyhow::Result<Vec<T>>
where
    T: 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>> + 'static,
{
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(limit.max(1)));
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let fut = f(i);
        handles.push(tokio::task::spawn_local(async move {
            let r = fut.await;
            drop(permit);
            r
        }));
    }
    let mut out = Vec::with_capacity(n);
    for h in handles {
        out.push(h.await??);
    }
    Ok(out)
}

/// Sets `plan` up on `server`.
pub async fn prepare(plan: &Plan, common: &Common, server: &Server) -> anyhow::Result<Ready> {
    let dialer = server.dialer.clone();
    match common.target {
        Target::Chatd => prepare_chatd(plan, common, dialer).await,
        Target::Redis | Target::Nats => prepare_pubsub(plan, common, dialer).await,
        Target::RedisStreams => prepare_streams(plan, common, dialer).await,
        Target::NatsJetstream => crate::jetstream::prepare(plan, dialer.addr()).await,
        Target::Ejabberd => {
            let ctl = server.spawned.as_ref().and_then(|s| s.ejabberd.as_ref());
            crate::xmpp::prepare(plan, dialer, ctl, common.source_addrs).await
        }
    }
}

async fn prepare_chatd(plan: &Plan, common: &Common, dialer: Rc<Dialer>) -> anyhow::Result<Ready> {
    let prefix = session::run_prefix();
    let sources = common.source_addrs;
    let mut sessions = bounded(plan.users, 64, |i| {
        let name = format!("{prefix}u{i}");
        let dialer = dialer.clone();
        async move {
            let mut s = ChatSession::connect(&dialer, conn::source_addr(i, sources)).await?;
            s.register(&name).await?;
            Ok(s)
        }
    })
    .await?;

    let mut conv_ids = Vec::with_capacity(plan.convs.len());
    let mut conv_base = HashMap::new();
    for (c, members) in plan.convs.iter().enumerate() {
        let creator = members[0];
        let others: Vec<u64> = members[1..].iter().map(|&u| sessions[u].user_id).collect();
        let (kind, member_ids) = match plan.kind {
            Kind::Direct => (pb::ConversationKind::Direct, others),
            Kind::Group => (pb::ConversationKind::Group, others),
            Kind::Channel => (pb::ConversationKind::Channel, vec![]),
        };
        let id = match sessions[creator]
            .request(C::CreateConversation(pb::CreateConversation {
                kind: kind as i32,
                member_ids,
                title: format!("loadgen {c}"),
            }))
            .await
            .context("creating a conversation")?
        {
            S::Conversation(conv) => conv.conversation_id,
            other => bail!("expected Conversation, got {other:?}"),
        };
        if plan.kind == Kind::Channel {
            // Pipelined: every subscriber asks, then every answer is read.
            let mut rids = Vec::with_capacity(members.len());
            for &u in &members[1..] {
                let rid = sessions[u]
                    .send(C::SubscribeChannel(pb::SubscribeChannel {
                        conversation_id: id,
                    }))
                    .await?;
                rids.push((u, rid));
            }
            for (u, rid) in rids {
                sessions[u].reply(rid).await.context("subscribing")?;
            }
        }
        let base = match sessions[creator]
            .request(C::GetConversation(pb::GetConversation {
                conversation_id: id,
            }))
            .await?
        {
            S::Conversation(conv) => conv.last_seq,
            other => bail!("expected Conversation, got {other:?}"),
        };
        conv_ids.push(id);
        conv_base.insert(id, base);
    }
    let dests = plan
        .streams
        .iter()
        .map(|&(c, _)| Dest::Chat(conv_ids[c]))
        .collect();
    let conns = sessions
        .into_iter()
        .enumerate()
        .map(|(user, s)| {
            let (link, decoder) = s.into_parts();
            Conn {
                user,
                link,
                decoder,
                sends: true,
            }
        })
        .collect();
    Ok(Ready {
        conns,
        dests,
        conv_base,
    })
}

/// Redis and NATS: in a direct plan every user listens on its own channel
/// (`lg.u<user>`) and senders publish to their partner's, the design the
/// issue names; in groups and channels the members listen on the
/// conversation's channel (`lg.c<conv>`), one publish per message. Redis
/// streams and JetStream use the same names for their streams and
/// subjects.
pub fn subjects(plan: &Plan) -> (Vec<Vec<Rc<str>>>, Vec<Dest>) {
    let conv_of = plan.conv_of_user();
    let conv_subject: Vec<Rc<str>> = (0..plan.convs.len())
        .map(|c| Rc::from(format!("lg.c{c}")))
        .collect();
    let user_subject: Vec<Rc<str>> = (0..plan.users)
        .map(|u| Rc::from(format!("lg.u{u}")))
        .collect();
    let listens = (0..plan.users)
        .map(|u| match plan.kind {
            Kind::Direct => vec![user_subject[u].clone()],
            Kind::Group | Kind::Channel => vec![conv_subject[conv_of[u]].clone()],
        })
        .collect();
    let dests = plan
        .streams
        .iter()
        .map(|&(c, sender)| match plan.kind {
            Kind::Direct => {
                let peer = plan.convs[c]
                    .iter()
                    .copied()
                    .find(|&u| u != sender)
                    .unwrap_or(sender);
                Dest::Subject(user_subject[peer].clone())
            }
            Kind::Group | Kind::Channel => Dest::Subject(conv_subject[c].clone()),
        })
        .collect();
    (listens, dests)
}

/// Reads events until `done` says so.
async fn read_until(
    link: &mut Link,
    decoder: &mut dyn Decoder,
    mut done: impl FnMut(&Event) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    loop {
        while let Some(ev) = decoder.next_event()? {
            if let Event::Error { text, .. } = &ev {
                bail!("server error: {text}");
            }
            if done(&ev)? {
                return Ok(());
            }
        }
        let buf = decoder.buffer();
        buf.reserve(16 * 1024);
        if link.reader.read_buf(buf).await? == 0 {
            bail!("server closed the connection during setup");
        }
    }
}

async fn prepare_pubsub(plan: &Plan, common: &Common, dialer: Rc<Dialer>) -> anyhow::Result<Ready> {
    let (listens, dests) = subjects(plan);
    let listens = Rc::new(listens);
    let target = common.target;
    let sources = common.source_addrs;
    let per_user = bounded(plan.users, 64, |u| {
        let listens = listens.clone();
        let dialer = dialer.clone();
        async move {
            let source = conn::source_addr(u, sources);
            let mut conns = Vec::new();
            match target {
                Target::Redis => {
                    let mut sub = dialer.connect(source).await?;
                    let mut out = Vec::new();
                    for s in &listens[u] {
                        wire::resp::encode_command(&mut out, &[b"SUBSCRIBE", s.as_bytes()]);
                    }
                    sub.writer.write_all(&out).await?;
                    let mut decoder: Box<dyn Decoder> = Box::<wire::resp::RespDecoder>::default();
                    let mut confirmed = 0;
                    let want = listens[u].len();
                    read_until(&mut sub, decoder.as_mut(), |_| {
                        confirmed += 1;
                        Ok(confirmed == want)
                    })
                    .await?;
                    conns.push(Conn {
                        user: u,
                        link: sub,
                        decoder,
                        sends: false,
                    });
                    let publish = dialer.connect(source).await?;
                    conns.push(Conn {
                        user: u,
                        link: publish,
                        decoder: Box::<wire::resp::RespDecoder>::default(),
                        sends: true,
                    });
                }
                Target::Nats => {
                    let mut c = dialer.connect(source).await?;
                    let mut out = wire::nats::CONNECT.to_vec();
                    for (sid, s) in listens[u].iter().enumerate() {
                        wire::nats::encode_sub(&mut out, s, sid as u64 + 1);
                    }
                    out.extend_from_slice(b"PING\r\n");
                    c.writer.write_all(&out).await?;
                    let mut decoder: Box<dyn Decoder> = Box::<wire::nats::NatsDecoder>::default();
                    let mut pongs = 0;
                    read_until(&mut c, decoder.as_mut(), |ev| {
                        if matches!(ev, Event::Pong) {
                            pongs += 1;
                        }
                        Ok(pongs == 2)
                    })
                    .await?;
                    conns.push(Conn {
                        user: u,
                        link: c,
                        decoder,
                        sends: true,
                    });
                }
                other => bail!("{} is not a pub/sub target", other.name()),
            }
            Ok(conns)
        }
    })
    .await?;
    Ok(Ready {
        conns: per_user.into_iter().flatten().collect(),
        dests,
        conv_base: HashMap::new(),
    })
}

/// Redis streams: one stream per listening subject of [`subjects`]; each
/// user has a publishing connection (`XADD`, whose reply is the ack) and a
/// reading one, whose first `XREAD` starts at the stream's beginning, so
/// that no entry is missed however the first `XADD`s and it interleave.
async fn prepare_streams(
    plan: &Plan,
    common: &Common,
    dialer: Rc<Dialer>,
) -> anyhow::Result<Ready> {
    let (listens, dests) = subjects(plan);
    let listens = Rc::new(listens);
    let sources = common.source_addrs;
    let per_user = bounded(plan.users, 64, |u| {
        let listens = listens.clone();
        let dialer = dialer.clone();
        async move {
            let source = conn::source_addr(u, sources);
            let key = listens[u]
                .first()
                .context("a user without a stream")?
                .clone();
            let decoder = wire::resp::StreamReader::new(key.as_bytes());
            let mut read = dialer.connect(source).await?;
            read.writer.write_all(&decoder.first_read()).await?;
            let publish = dialer.connect(source).await?;
            Ok([
                Conn {
                    user: u,
                    link: read,
                    decoder: Box::new(decoder),
                    sends: false,
                },
                Conn {
                    user: u,
                    link: publish,
                    decoder: Box::<wire::resp::RespDecoder>::default(),
                    sends: true,
                },
            ])
        }
    })
    .await?;
    let conns = per_user.into_iter().flatten().collect();
    Ok(Ready {
        conns,
        dests,
        conv_base: HashMap::new(),
    })
}
