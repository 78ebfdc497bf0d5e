//! The `nats-jetstream` target, through async-nats: one file-storage
//! stream holds every message; each user has a client connection, a
//! push consumer of its own subject (`direct`) or its conversation's
//! (`group`, `channel`), and publishes that count as sent once JetStream
//! acknowledges them (stored, and with `sync_interval: always` synced).
//!
//! Consumers are ephemeral, acknowledge nothing and keep their state in
//! memory: the messages are durable, a consumer's position is not.
//!
//! A user's connection is a [`Link`] like every other target's: the
//! writer half ([`JsWriter`]) publishes the records that
//! [`wire::jetstream::encode_publish`] made, the reader half
//! ([`JsReader`]) turns deliveries and publish acks, in publish order,
//! into the records [`wire::jetstream::JetStreamDecoder`] reads.

use std::collections::HashMap;
use std::future::IntoFuture as _;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, push};
use async_nats::jetstream::context::{ContextBuilder, PublishAckFuture};
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;
use tokio::sync::mpsc;

use crate::setup::{self, Conn, Plan, Ready};
use crate::transport::{Link, Reader, Writer};
use crate::wire;

/// The stream every run's messages go to.
const STREAM: &str = "LG";

/// Publishes handed from a user's writer to its reader, whose acks are
/// awaited in order. Bounded; senders' windows keep it far below this,
/// and so the acks awaited (at most one window's worth per sender).
const ACK_QUEUE: usize = 4096;

/// How long a publish may wait for its ack (async-nats's default is 5 s;
/// a disk that syncs every write can take longer under a full window).
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// An ack being awaited.
type AckFuture = Pin<
    Box<
        dyn Future<
                Output = Result<
                    async_nats::jetstream::publish::PublishAck,
                    async_nats::jetstream::context::PublishError,
                >,
            > + Send,
    >,
>;

/// The sending half of a user's JetStream connection.
pub struct JsWriter {
    context: async_nats::jetstream::Context,
    acks: mpsc::Sender<PublishAckFuture>,
}

impl JsWriter {
    /// Publishes every record in `bytes` and hands its ack to the reader.
    pub async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let records = wire::jetstream::publishes(bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        for (subject, payload) in records {
            let ack = self
                .context
                .publish(subject.to_owned(), Bytes::copy_from_slice(payload))
                .await
                .map_err(std::io::Error::other)?;
            self.acks
                .send(ack)
                .await
                .map_err(|_| std::io::Error::other("the connection's reader is gone"))?;
        }
        Ok(())
    }
}

/// The receiving half of a user's JetStream connection.
pub struct JsReader {
    deliveries: async_nats::Subscriber,
    acks: mpsc::Receiver<PublishAckFuture>,
    pending: FuturesOrdered<AckFuture>,
    writer_open: bool,
    deliveries_open: bool,
}

impl JsReader {
    /// Appends the next records (a delivery, an ack or an error) to `buf`;
    /// 0 once the consumer's subscription and the writer have both ended.
    pub async fn read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        let before = buf.len();
        loop {
            if !self.writer_open && !self.deliveries_open && self.pending.is_empty() {
                return Ok(0);
            }
            tokio::select! {
                biased;
                Some(ack) = self.pending.next(), if !self.pending.is_empty() => match ack {
                    Ok(_) => wire::jetstream::encode_ack(buf),
                    Err(e) => wire::jetstream::encode_error(buf, &format!("publish not acknowledged: {e}")),
                },
                ack = self.acks.recv(), if self.writer_open => {
                    match ack {
                        Some(a) => self.pending.push_back(a.into_future()),
                        None => self.writer_open = false,
                    }
                    continue;
                }
                m = self.deliveries.next(), if self.deliveries_open => match m {
                    // Status messages (heartbeats, flow control) are off
                    // for these consumers; anything else is a delivery.
                    Some(m) if m.status.is_none() => wire::jetstream::encode_delivery(buf, &m.payload),
                    Some(_) => continue,
                    None => {
                        self.deliveries_open = false;
                        continue;
                    }
                },
            }
            return Ok(buf.len() - before);
        }
    }
}

/// Connects to the started nats-server, creates the stream and one push
/// consumer per user, and returns the users' connections.
pub async fn prepare(plan: &Plan, addr: std::net::SocketAddr) -> anyhow::Result<Ready> {
    let url = format!("nats://{addr}");
    let admin = async_nats::connect(url.as_str())
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let context = async_nats::jetstream::new(admin);
    context
        .create_stream(StreamConfig {
            name: STREAM.into(),
            subjects: vec!["lg.>".into()],
            storage: StorageType::File,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .context("creating the JetStream stream")?;
    let (listens, dests) = setup::subjects(plan);
    let listens = std::rc::Rc::new(listens);
    let conns = setup::bounded(plan.users, 64, |u| {
        let listens = listens.clone();
        let url = url.clone();
        async move {
            let client = async_nats::ConnectOptions::new()
                .name("loadgen")
                .connect(url.as_str())
                .await
                .with_context(|| format!("connecting user {u}"))?;
            let context = ContextBuilder::new()
                .timeout(ACK_TIMEOUT)
                .build(client.clone());
            let inbox = client.new_inbox();
            // Subscribed before the consumer exists, so that it has
            // interest from its first delivery on.
            let deliveries = client.subscribe(inbox.clone()).await?;
            let filter = listens[u]
                .first()
                .map(|s| s.to_string())
                .context("a user without a subject")?;
            let stream = context.get_stream(STREAM).await?;
            stream
                .create_consumer(push::Config {
                    deliver_subject: inbox,
                    filter_subject: filter,
                    ack_policy: AckPolicy::None,
                    deliver_policy: DeliverPolicy::All,
                    // Kept for the whole run even if a client stalls.
                    inactive_threshold: Duration::from_secs(300),
                    // The messages are durable in the file stream; this
                    // live reader's position is not (it is ephemeral, like
                    // a session's cursor). On file storage 500 consumers
                    // rewrite their state files for every message.
                    memory_storage: true,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("creating the consumer of user {u}"))?;
            let (tx, rx) = mpsc::channel(ACK_QUEUE);
            let link = Link {
                reader: Reader::Js(Box::new(JsReader {
                    deliveries,
                    acks: rx,
                    pending: FuturesOrdered::new(),
                    writer_open: true,
                    deliveries_open: true,
                })),
                writer: Writer::Js(Box::new(JsWriter { context, acks: tx })),
            };
            Ok(Conn {
                user: u,
                link,
                decoder: Box::<wire::jetstream::JetStreamDecoder>::default(),
                sends: true,
            })
        }
    })
    .await?;
    Ok(Ready {
        conns,
        dests,
        conv_base: HashMap::new(),
    })
}
