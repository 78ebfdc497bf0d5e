//! Cluster mode: several chatd nodes on NATS JetStream (README, "Cluster
//! mode").
//!
//! One JetStream stream holds every acknowledged write of the cluster, in
//! order: each record is one commit's writes in the commit log's format
//! with the pushes they cause ([`wire`]). A write is acknowledged to a
//! client only once JetStream has stored it (on its replicas, with the
//! servers' fsync policy) and this node's store holds it.
//!
//! - **Every node's store is a view of the stream.** Each node consumes the
//!   whole stream in order into its local store, recording the last stream
//!   sequence applied in the same commit (`meta` `cluster_applied`), so a
//!   restarted node goes on from there. Reads (history, sync, logins) are
//!   local and the same on every node once it has caught up.
//! - **Each conversation partition has one owner node**, holding a lease in
//!   a JetStream key-value bucket. Only the owner sequences the partition's
//!   conversations; other nodes forward those requests to it over NATS
//!   (request and reply). The owner publishes a partition's commits to the
//!   partition's subject with the expected last subject sequence, so a
//!   stale owner (paused past its lease, or partitioned away) is refused by
//!   JetStream and never writes a duplicate seq or a gap.
//! - **A lease moves when its node dies**: leases are not renewed and expire
//!   after `cluster.lease_ms`; the next request for the partition takes it.
//!   A new owner first applies the stream through the partition's last
//!   record, then loads conversations from its store as a restarted server
//!   does.
//! - Pushes travel in the stream records (every node pushes a record's
//!   messages to its own sessions once it has applied it); typing
//!   indicators, which are not stored, on a core NATS subject.
//!
//! Writes that are not a conversation's (accounts, tokens, new
//! conversations, push outbox) go to one global subject without an
//! expected sequence, except those that claim a key once in the cluster
//! (a username, the direct chat of a pair): each goes to the key's own
//! subject expecting it empty, so the first claim wins on every node.
//!
//! Everything NATS runs on the link's own runtime (one thread); shards
//! reach it through [`Link`]'s methods, which never block a shard thread.

pub mod wire;

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use chat_protocol::{ConversationId, ErrorCode};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Config;
use crate::directory::Directory;
use crate::mesh::{Mesh, link_source};
use crate::owner::{Origin, OwnerRequest};
use crate::placement::Placement;
use crate::shard_msg::ShardMsg;
use crate::storage::writer::{Batch, Writer};
use crate::storage::{Result, StorageError, Store};

/// Records applied to the local store but not yet acknowledged by it, at
/// most: the consumer waits beyond.
const APPLY_PIPELINE: usize = 1024;

/// How long the stream consumer may go without a record before the link
/// checks whether the stream has more (a consumer on a server that failed
/// stalls; it is then made afresh).
const STALL_CHECK: Duration = Duration::from_secs(1);

/// How long a starting node waits for the JetStream cluster to be ready
/// (a leader elected) before giving up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Header of a forwarded request's refusal by a node that does not own
/// the conversation's partition (any more).
const MOVED_HEADER: &str = "Chatd-Moved";

/// How long a client is asked to wait before retrying a request refused
/// because its conversation's owner is changing.
pub const RETRY_AFTER_MS: u32 = 500;

/// A request forwarded to another node, waiting for its reply.
struct Pending {
    origin: Origin,
    partition: u32,
    owner: u16,
    deadline: tokio::time::Instant,
}

/// The stream's metadata key recording its number of partitions.
const PARTITIONS_KEY: &str = "chatd_partitions";

/// Core NATS topics (`<stream>.<topic>`): typing pushes, session ends,
/// presence announcements.
const EPHEMERAL: &str = "eph";
const END_USER: &str = "end";

/// Core NATS topic of [`Link::publish_unwatch`].
const UNWATCH: &str = "unwatch";
const PRESENCE: &str = "presence";

/// Users per presence announcement message.
const PRESENCE_PER_MESSAGE: usize = 1000;

/// Times a node tries to take or read a partition's lease before it
/// answers SERVER_BUSY.
const LEASE_ATTEMPTS: usize = 10;

/// Requests waiting to be forwarded to other nodes, at most; beyond, a
/// request is answered SERVER_BUSY at once.
pub const FORWARD_QUEUE: usize = 16_384;

/// Where the link hands pushes, replies and forwarded requests: the shards.
struct Shards {
    mesh: Arc<Mesh<ShardMsg>>,
    directory: Arc<Directory>,
    place: Placement,
}

/// This node's connection to the cluster. Shared by the shards, the
/// writer and the link's runtime.
pub struct Link {
    /// This node's number.
    pub node: u16,
    partitions: u32,
    rt: tokio::runtime::Handle,
    client: async_nats::Client,
    js: jetstream::Context,
    leases: kv::Store,
    /// Stream name, also the prefix of its subjects.
    stream: String,
    /// The last stream sequence the local store holds.
    applied: watch::Receiver<u64>,
    /// Owner node of each partition as last known here (0: unknown).
    owners: Box<[AtomicU16]>,
    /// Our lease's revision, for each partition this node owns.
    revisions: Box<[AtomicU64]>,
    /// Each partition's last stream sequence, for the one shard that
    /// publishes the partition's commits while this node owns it.
    expected: Box<[AtomicU64]>,
    /// Bumped whenever this node gains or loses a partition: the owner
    /// shard forgets what it loaded in an earlier tenure.
    epochs: Box<[AtomicU64]>,
    /// One at a time per partition: taking a lease.
    taking: Box<[tokio::sync::Mutex<()>]>,
    /// Reply subjects of forwarded requests being handled here.
    replies: Mutex<hashbrown::HashMap<u64, async_nats::Subject>>,
    /// Requests waiting to be forwarded, in order.
    forwards: mpsc::Sender<OwnerRequest>,
    /// Per partition, requests handed to the link and not yet forwarded or
    /// taken by this node's owner shard ([`Link::direct`]).
    routing: Box<[std::sync::atomic::AtomicU32]>,
    /// Requests forwarded to other nodes and not yet answered, by token.
    pending: Mutex<hashbrown::HashMap<u64, Pending>>,
    /// Subject prefix of this node's replies (`<inbox>.<token>`).
    inbox: String,
    next_token: AtomicU64,
    timeout: Duration,
    lease: Duration,
    shards: OnceLock<Shards>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("node", &self.node).finish()
    }
}

/// The link's thread, which runs its runtime.
#[derive(Debug)]
pub struct LinkRuntime {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LinkRuntime {
    /// Stops the link's tasks and closes the connection (after the shards
    /// have stopped).
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Why the link could not start.
#[derive(Debug, thiserror::Error)]
#[error("cluster: {0}")]
pub struct LinkError(String);

fn link_error(what: &str) -> impl FnOnce(String) -> LinkError + '_ {
    move |e| LinkError(format!("{what}: {e}"))
}

fn cluster_error(e: impl std::fmt::Display) -> StorageError {
    StorageError::Cluster(e.to_string())
}

/// Checks the cluster settings of `config`.
pub fn validate(config: &Config) -> std::result::Result<(), LinkError> {
    let c = &config.cluster;
    if !(1..=1023).contains(&c.node_id) {
        return Err(LinkError(
            "cluster.node_id must be 1 to 1023, unique in the cluster".into(),
        ));
    }
    if c.partitions == 0 || c.partitions > 65_536 {
        return Err(LinkError("cluster.partitions must be 1 to 65536".into()));
    }
    if (usize::from(c.node_id) + 1) * config.nr_shards() > 1024 {
        return Err(LinkError(format!(
            "cluster.node_id {} with {} shards leaves no room for message id generators (node_id + 1) × shards ≤ 1024",
            c.node_id,
            config.nr_shards()
        )));
    }
    if c.stream.is_empty()
        || !c
            .stream
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    {
        return Err(LinkError(
            "cluster.stream must be letters, digits and _".into(),
        ));
    }
    Ok(())
}

impl Link {
    /// Connects to the cluster, creates the stream and the lease bucket if
    /// they do not exist, and applies the stream into `store` (through the
    /// local `writer`) until the store holds everything the stream held
    /// when the node started. Blocks the calling thread.
    pub fn start(
        config: &Config,
        store: &Store,
        writer: Writer,
    ) -> std::result::Result<(Arc<Link>, LinkRuntime), LinkError> {
        validate(config)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| LinkError(format!("starting the cluster runtime: {e}")))?;
        let applied = store
            .cluster_applied()
            .map_err(|e| LinkError(format!("reading the applied stream sequence: {e}")))?;
        let handle = rt.handle().clone();
        let config = config.clone();
        let (started, start) = std::sync::mpsc::sync_channel(1);
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("chatd-cluster".into())
            .spawn(move || {
                rt.block_on(async move {
                    let link = connect(config, handle, writer, applied).await;
                    let ok = link.is_ok();
                    let _ = started.send(link);
                    if ok {
                        let _ = stopped.await;
                    }
                });
                rt.shutdown_timeout(Duration::from_secs(2));
            })
            .map_err(|e| LinkError(format!("starting the cluster thread: {e}")))?;
        let link = start
            .recv()
            .map_err(|_| LinkError("the cluster thread stopped while connecting".into()))??;
        Ok((
            link,
            LinkRuntime {
                stop: Some(stop),
                thread: Some(thread),
            },
        ))
    }

    /// Hands the link the shards, for pushes, replies and forwarded
    /// requests; before it, there are no sessions to push to.
    pub fn attach(&self, mesh: Arc<Mesh<ShardMsg>>, directory: Arc<Directory>, place: Placement) {
        let _ = self.shards.set(Shards {
            mesh,
            directory,
            place,
        });
    }

    /// Number of partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition of `conversation`.
    pub fn partition_of(&self, conversation: ConversationId) -> u32 {
        partition_of(conversation, self.partitions)
    }

    /// Whether this node owns `partition` now.
    pub fn owns(&self, partition: u32) -> bool {
        self.owner_hint(partition) == Some(self.node)
    }

    fn owner_hint(&self, partition: u32) -> Option<u16> {
        let n = self.owners.get(partition as usize)?.load(Ordering::Acquire);
        (n != 0).then_some(n)
    }

    /// Changes whenever this node gains or loses `partition`.
    pub fn epoch(&self, partition: u32) -> u64 {
        self.epochs
            .get(partition as usize)
            .map_or(0, |e| e.load(Ordering::Acquire))
    }

    /// The last stream sequence the local store holds.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    fn subject_of(&self, partition: Option<u32>) -> String {
        match partition {
            Some(p) => format!("{}.p.{p}", self.stream),
            None => format!("{}.g", self.stream),
        }
    }

    /// Publishes `batch` (with `pushes` for the other nodes' sessions) to
    /// the stream, on `partition`'s subject with its expected last
    /// sequence, or on the global one; returns once JetStream has stored it
    /// and the local store holds it. `StorageError::Moved` if the partition
    /// has another owner now.
    pub async fn write(
        self: &Arc<Self>,
        partition: Option<u32>,
        batch: Batch,
        pushes: Vec<wire::Push>,
    ) -> Result<u64> {
        let (done, wait) = oneshot::channel();
        let link = self.clone();
        self.rt.spawn(async move {
            let _ = done.send(link.publish(partition, batch, pushes).await);
        });
        wait.await.map_err(|_| StorageError::WriterStopped)?
    }

    /// [`Link::write`] on the global subject, for code on a blocking thread.
    pub fn write_blocking(self: &Arc<Self>, batch: Batch) -> Result<u64> {
        self.blocking(None, batch)
    }

    /// Writes `batch` only if nothing was ever written with the claim
    /// `key` (a username, a pair's direct chat): the first claim of a key
    /// in the whole cluster wins, a later one gets `StorageError::Taken`
    /// and writes nothing. Then, or on any error, returns once the local
    /// store holds what the stream held, so that the caller reads the
    /// winner. For code on a blocking thread.
    pub fn claim_blocking(self: &Arc<Self>, key: &str, batch: Batch) -> Result<u64> {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key.as_bytes());
        let subject = format!(
            "{}.k.{}",
            self.stream,
            hex::encode(digest.get(..16).unwrap_or_default())
        );
        self.blocking(Some(subject), batch)
    }

    fn blocking(self: &Arc<Self>, claim: Option<String>, batch: Batch) -> Result<u64> {
        let (done, wait) = oneshot::channel();
        let link = self.clone();
        self.rt.spawn(async move {
            let result = match claim {
                None => link.publish(None, batch, Vec::new()).await,
                Some(subject) => {
                    let result = link
                        .try_publish(subject, Some(0), None, batch, Vec::new())
                        .await;
                    if result.is_err() {
                        let _ = link.catch_up().await;
                    }
                    match result {
                        Err(StorageError::Moved) => Err(StorageError::Taken),
                        other => other,
                    }
                }
            };
            let _ = done.send(result);
        });
        wait.blocking_recv()
            .map_err(|_| StorageError::WriterStopped)?
    }

    /// Waits until the local store holds everything the stream holds now.
    async fn catch_up(&self) -> Result<()> {
        let last = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(cluster_error)?
            .get_info()
            .await
            .map_err(cluster_error)?
            .state
            .last_sequence;
        self.wait_applied(last).await
    }

    async fn publish(
        &self,
        partition: Option<u32>,
        batch: Batch,
        pushes: Vec<wire::Push>,
    ) -> Result<u64> {
        let subject = self.subject_of(partition);
        let expected = partition
            .and_then(|p| self.expected.get(p as usize))
            .map(|e| e.load(Ordering::Acquire));
        let result = self
            .try_publish(subject, expected, partition, batch, pushes)
            .await;
        if let (Err(e), Some(p)) = (&result, partition) {
            // Whether a write that failed half-way is in the stream is not
            // known here: the partition is taken over afresh (through its
            // last record) before this node writes it again, so the
            // owner's next seq follows whatever the stream holds.
            if !matches!(e, StorageError::Moved) {
                tracing::warn!(partition = p, cause = %e, "partition write failed");
            }
            self.lose(p);
        }
        result
    }

    /// Publishes to `subject`, expecting its last sequence to be
    /// `expected` if given; a partition's expected sequence moves on to the
    /// write's.
    async fn try_publish(
        &self,
        subject: String,
        expected: Option<u64>,
        partition: Option<u32>,
        batch: Batch,
        pushes: Vec<wire::Push>,
    ) -> Result<u64> {
        let payload = wire::encode_record(self.node, &pushes, &batch);
        drop(batch);
        let mut msg = jetstream::message::PublishMessage::build().payload(payload);
        if let Some(e) = expected {
            msg = msg.expected_last_subject_sequence(e);
        }
        let sent = tokio::time::timeout(self.timeout, async {
            self.js.send_publish(subject, msg).await?.await
        })
        .await;
        let ack = match sent {
            Err(_) => return Err(cluster_error("no acknowledgement from JetStream in time")),
            Ok(Err(e)) if wrong_last_sequence(&e) => {
                tracing::warn!(
                    ?partition,
                    "write refused: the partition has a newer writer"
                );
                return Err(StorageError::Moved);
            }
            Ok(Err(e)) => return Err(cluster_error(e)),
            Ok(Ok(ack)) => ack,
        };
        if let Some(e) = partition.and_then(|p| self.expected.get(p as usize)) {
            e.store(ack.sequence, Ordering::Release);
        }
        self.wait_applied(ack.sequence).await?;
        Ok(ack.sequence)
    }

    async fn wait_applied(&self, seq: u64) -> Result<()> {
        let mut applied = self.applied.clone();
        match tokio::time::timeout(self.timeout, applied.wait_for(|&a| a >= seq)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StorageError::WriterStopped),
            Err(_) => Err(cluster_error("the local store fell behind the stream")),
        }
    }

    /// This node no longer owns `partition` (or is not sure it does).
    fn lose(&self, partition: u32) {
        let p = partition as usize;
        if let Some(o) = self.owners.get(p) {
            o.store(0, Ordering::Release);
        }
        if let Some(r) = self.revisions.get(p) {
            r.store(0, Ordering::Release);
        }
        if let Some(e) = self.epochs.get(p) {
            e.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The owner node of `partition`, taking the lease if nobody holds it.
    async fn resolve(&self, partition: u32) -> Result<u16> {
        if let Some(n) = self.owner_hint(partition) {
            return Ok(n);
        }
        let Some(lock) = self.taking.get(partition as usize) else {
            return Err(cluster_error("no such partition"));
        };
        let _taking = lock.lock().await;
        if let Some(n) = self.owner_hint(partition) {
            return Ok(n);
        }
        let key = format!("p{partition}");
        let me = Bytes::from(self.node.to_string());
        for attempt in 0..LEASE_ATTEMPTS {
            if attempt > 0 {
                // A replica that has not seen the winner's lease yet, or
                // one that just expired: ask again shortly.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            match self.leases.create(&key, me.clone()).await {
                Ok(revision) => {
                    self.take_over(partition, revision).await?;
                    return Ok(self.node);
                }
                // Taken already (reported as AlreadyExists, or as the
                // constant-sequence refusal this client does not name), or
                // the bucket briefly unavailable: read who holds it.
                Err(e) if e.kind() == kv::CreateErrorKind::InvalidKey => {
                    return Err(cluster_error(e));
                }
                Err(_) => {}
            }
            let entry = match self.leases.entry(&key).await {
                Ok(e) => e,
                Err(e) if attempt + 1 == LEASE_ATTEMPTS => return Err(cluster_error(e)),
                Err(_) => continue,
            };
            match entry {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    let owner = std::str::from_utf8(&entry.value)
                        .ok()
                        .and_then(|s| s.parse::<u16>().ok())
                        .unwrap_or(0);
                    if owner == self.node {
                        self.take_over(partition, entry.revision).await?;
                        return Ok(self.node);
                    }
                    if owner != 0 {
                        if let Some(o) = self.owners.get(partition as usize) {
                            o.store(owner, Ordering::Release);
                        }
                        return Ok(owner);
                    }
                }
                // Deleted or expired between the two calls: try again.
                _ => {}
            }
        }
        Err(cluster_error("the partition's lease is changing hands"))
    }

    /// Takes `partition` over with the lease at `revision`: applies the
    /// stream through the partition's last record first.
    async fn take_over(&self, partition: u32, revision: u64) -> Result<()> {
        let subject = self.subject_of(Some(partition));
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(cluster_error)?;
        let last = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => 0,
            Err(e) => return Err(cluster_error(e)),
        };
        self.wait_applied(last).await?;
        let p = partition as usize;
        if let (Some(x), Some(r), Some(e), Some(o)) = (
            self.expected.get(p),
            self.revisions.get(p),
            self.epochs.get(p),
            self.owners.get(p),
        ) {
            x.store(last, Ordering::Release);
            r.store(revision, Ordering::Release);
            e.fetch_add(1, Ordering::AcqRel);
            o.store(self.node, Ordering::Release);
        }
        tracing::info!(partition, last, "took over the partition");
        Ok(())
    }

    /// Routes `req` to its conversation's owner: this node's owner shard
    /// (through the mesh) or another node (forwarded over NATS). The reply
    /// reaches the origin session either way. Requests leave in the order
    /// they come (so one session's sends to a conversation are sequenced in
    /// the order sent); beyond [`FORWARD_QUEUE`] waiting, a request is
    /// answered SERVER_BUSY at once.
    pub fn forward(&self, req: OwnerRequest) {
        let partition = self.partition_of(req.conversation());
        self.count_routing(partition, 1);
        if let Err(e) = self.forwards.try_send(req) {
            let req = match e {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
            };
            self.count_routing(partition, -1);
            let origin = req.origin;
            let link = self.shards.get().map(|s| (s.mesh.clone(), s.place));
            if let Some((mesh, place)) = link {
                let msg = ShardMsg::Reply {
                    session: origin.session,
                    frame: Some(busy(
                        origin.request_id,
                        "too many requests waiting to be forwarded",
                    )),
                };
                let src = link_source(place.nr_shards());
                self.rt
                    .spawn(async move { mesh.send(src, origin.shard, msg).await });
            }
        }
    }

    /// Forwards queued requests, in order; replies come back to
    /// [`Link::collect_replies`].
    async fn forward_loop(self: Arc<Self>, mut queue: mpsc::Receiver<OwnerRequest>) {
        while let Some(req) = queue.recv().await {
            self.route(req).await;
        }
    }

    async fn route(&self, req: OwnerRequest) {
        let partition = self.partition_of(req.conversation());
        // Handed to this node's owner shard: counted off there, once the
        // shard has taken it ([`Link::routed`]).
        if !self.route_one(req).await {
            self.count_routing(partition, -1);
        }
    }

    /// Whether a request for `partition` may go straight to this node's
    /// owner shard: the node owns the partition and none of the
    /// partition's requests is still on its way through the link (a later
    /// request going straight there would overtake it).
    pub fn direct(&self, partition: u32) -> bool {
        self.owns(partition)
            && self
                .routing
                .get(partition as usize)
                .is_some_and(|r| r.load(Ordering::Acquire) == 0)
    }

    /// The owner shard took a request the link routed to it.
    pub fn routed(&self, conversation: ConversationId) {
        self.count_routing(self.partition_of(conversation), -1);
    }

    fn count_routing(&self, partition: u32, delta: i32) {
        if let Some(r) = self.routing.get(partition as usize) {
            if delta > 0 {
                r.fetch_add(1, Ordering::AcqRel);
            } else {
                let _ = r.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            }
        }
    }

    /// Routes one request; whether it went to this node's owner shard.
    async fn route_one(&self, req: OwnerRequest) -> bool {
        let origin = req.origin;
        let partition = self.partition_of(req.conversation());
        let owner = match self.resolve(partition).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(partition, cause = %e, "no owner for the partition");
                self.answer_origin(
                    origin,
                    Some(busy(origin.request_id, "no owner for the conversation yet")),
                )
                .await;
                return false;
            }
        };
        if owner == self.node {
            let Some(shards) = self.shards.get() else {
                return false;
            };
            let dst = shards.place.owner_of(req.conversation());
            let src = link_source(shards.place.nr_shards());
            shards
                .mesh
                .send(src, dst, ShardMsg::Routed(Box::new(req)))
                .await;
            return true;
        }
        let payload = wire::encode_request(&req, self.applied());
        drop(req);
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + self.timeout;
        self.pending.lock().insert(
            token,
            Pending {
                origin,
                partition,
                owner,
                deadline,
            },
        );
        let subject = format!("{}.node.{owner}", self.stream);
        let reply = format!("{}.{token}", self.inbox);
        if self
            .client
            .publish_with_reply(subject, reply, payload)
            .await
            .is_err()
        {
            let failed = self.pending.lock().remove(&token);
            if let Some(p) = failed {
                self.answer_origin(
                    p.origin,
                    Some(busy(p.origin.request_id, "the owner could not be reached")),
                )
                .await;
            }
        }
        false
    }

    /// Hands the owners' replies to the sessions that asked.
    async fn collect_replies(self: Arc<Self>, mut replies: async_nats::Subscriber) {
        while let Some(msg) = replies.next().await {
            let Some(token) = msg
                .subject
                .rsplit('.')
                .next()
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            let waiting = self.pending.lock().remove(&token);
            let Some(p) = waiting else {
                continue;
            };
            let moved = msg
                .headers
                .as_ref()
                .is_some_and(|h| h.get(MOVED_HEADER).is_some());
            let frame = if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) || moved {
                // The owner is gone, or says it is not the owner.
                self.suspect(p.partition, p.owner);
                Some(busy(p.origin.request_id, "the conversation's owner moved"))
            } else {
                (!msg.payload.is_empty()).then_some(msg.payload)
            };
            self.answer_origin(p.origin, frame).await;
        }
    }

    /// Answers SERVER_BUSY to forwarded requests whose owner did not reply
    /// in time, and suspects the owner.
    async fn expire_forwards(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let now = tokio::time::Instant::now();
            let expired: Vec<Pending> = {
                let mut pending = self.pending.lock();
                let late: Vec<u64> = pending
                    .iter()
                    .filter(|(_, p)| p.deadline <= now)
                    .map(|(t, _)| *t)
                    .collect();
                late.iter().filter_map(|t| pending.remove(t)).collect()
            };
            for p in expired {
                self.suspect(p.partition, p.owner);
                self.answer_origin(
                    p.origin,
                    Some(busy(
                        p.origin.request_id,
                        "the owner did not answer in time",
                    )),
                )
                .await;
            }
        }
    }

    /// `owner` did not answer for `partition` (gone, paused or cut off):
    /// forget it, so that the next request asks the lease bucket again and
    /// takes the lease once it has expired.
    fn suspect(&self, partition: u32, owner: u16) {
        if let Some(o) = self.owners.get(partition as usize) {
            let _ = o.compare_exchange(owner, 0, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Hands a reply to the session at `origin` on this node.
    async fn answer_origin(&self, origin: Origin, frame: Option<Bytes>) {
        let Some(shards) = self.shards.get() else {
            return;
        };
        let src = link_source(shards.place.nr_shards());
        let msg = ShardMsg::Reply {
            session: origin.session,
            frame,
        };
        shards.mesh.send(src, origin.shard, msg).await;
    }

    /// Whether `origin` is a request forwarded from another node.
    pub fn is_forwarded(&self, origin: &Origin) -> bool {
        self.shards
            .get()
            .is_some_and(|s| origin.shard == link_source(s.place.nr_shards()))
    }

    /// Answers a forwarded request (its origin's `session` is the token
    /// [`Link::serve`] gave it); `None` answers a request that gets no
    /// reply.
    pub fn answer_forwarded(&self, origin: Origin, frame: Option<Bytes>) {
        let Some(reply) = self.replies.lock().remove(&origin.session) else {
            return;
        };
        self.notify(reply, frame.unwrap_or_default());
    }

    /// Publishes `payload` on core NATS (no acknowledgement), from the
    /// link's runtime.
    fn notify(
        &self,
        subject: impl async_nats::subject::ToSubject + Send + 'static,
        payload: Bytes,
    ) {
        let client = self.client.clone();
        self.rt.spawn(async move {
            let _ = client.publish(subject, payload).await;
        });
    }

    /// The subject of this cluster's `topic` on core NATS.
    fn topic(&self, topic: &str) -> String {
        format!("{}.{topic}", self.stream)
    }

    /// Publishes a typing push for the other nodes' sessions.
    pub fn publish_ephemeral(&self, users: Arc<[u64]>, frame: Bytes) {
        let payload = wire::encode_ephemeral(self.node, &(users, frame));
        self.notify(self.topic(EPHEMERAL), payload);
    }

    /// Announces users' states on this node (status, last seen) to the
    /// other nodes, each to hold for `ttl_ms` unless announced again.
    pub fn publish_presence(&self, states: &[wire::NodePresence], ttl_ms: u64) {
        for chunk in states.chunks(PRESENCE_PER_MESSAGE) {
            let payload = wire::encode_presence(self.node, ttl_ms, chunk);
            self.notify(self.topic(PRESENCE), payload);
        }
    }

    /// Hands other nodes' presence announcements to the shards keeping
    /// those users' presence.
    async fn relay_presence(self: Arc<Self>, mut sub: async_nats::Subscriber) {
        while let Some(msg) = sub.next().await {
            let Some((node, ttl_ms, states)) = wire::decode_presence(msg.payload) else {
                continue;
            };
            let Some(shards) = self.shards.get().filter(|_| node != self.node) else {
                continue;
            };
            let src = link_source(shards.place.nr_shards());
            for (user, status, last_seen_ms) in states {
                let op = crate::presence::PresenceOp::Remote {
                    user,
                    node,
                    status,
                    last_seen_ms,
                    ttl_ms,
                };
                let dst = shards.place.presence_of(chat_protocol::UserId(user));
                shards.mesh.send(src, dst, ShardMsg::Presence(op)).await;
            }
        }
    }

    /// Closes `user`'s sessions on the other nodes with `frame` (logout
    /// everywhere, a password change: the user's tokens are revoked in the
    /// stream already).
    pub fn publish_end_user(&self, user: u64, frame: Bytes) {
        let payload = wire::encode_end_user(self.node, user, &frame);
        self.notify(self.topic(END_USER), payload);
    }

    /// Ends the presence watches between two users on the other nodes (one
    /// blocked the other; the block is in the stream already).
    pub fn publish_unwatch(&self, a: u64, b: u64) {
        let payload = wire::encode_unwatch(self.node, a, b);
        self.notify(self.topic(UNWATCH), payload);
    }

    /// Ends the presence watches other nodes ask this one to end.
    async fn relay_unwatch(self: Arc<Self>, mut sub: async_nats::Subscriber) {
        while let Some(msg) = sub.next().await {
            let Some((origin, a, b)) = wire::decode_unwatch(msg.payload) else {
                continue;
            };
            let Some(shards) = self.shards.get().filter(|_| origin != self.node) else {
                continue;
            };
            let nr_shards = shards.place.nr_shards();
            for dst in 0..nr_shards {
                let msg = ShardMsg::Unwatch(a, b);
                shards.mesh.send(link_source(nr_shards), dst, msg).await;
            }
        }
    }

    /// Closes the sessions other nodes ask this one to close.
    async fn relay_end_user(self: Arc<Self>, mut sub: async_nats::Subscriber) {
        while let Some(msg) = sub.next().await {
            let Some((origin, user, frame)) = wire::decode_end_user(msg.payload) else {
                continue;
            };
            let Some(shards) = self.shards.get().filter(|_| origin != self.node) else {
                continue;
            };
            let nr_shards = shards.place.nr_shards();
            for dst in 0..nr_shards {
                let msg = ShardMsg::EndUser {
                    user,
                    frame: frame.clone(),
                };
                shards.mesh.send(link_source(nr_shards), dst, msg).await;
            }
        }
    }

    /// Pushes to this node's sessions of the recipients.
    async fn push_local(&self, pushes: Vec<wire::Push>, ephemeral: bool) {
        let Some(shards) = self.shards.get() else {
            return;
        };
        let nr_shards = shards.place.nr_shards();
        let src = link_source(nr_shards);
        for (users, frame) in pushes {
            let targets = shards.directory.shards_of(&users);
            for dst in 0..nr_shards {
                if targets.is_some_and(|t| !t.contains(dst)) {
                    continue;
                }
                let msg = ShardMsg::Deliver {
                    users: users.clone(),
                    frame: frame.clone(),
                    ephemeral,
                };
                shards.mesh.send(src, dst, msg).await;
            }
        }
    }

    /// Handles requests forwarded to this node: once the store has applied
    /// what the origin had, each goes to the owner shard with a token that
    /// routes its reply back.
    async fn serve(self: Arc<Self>, mut requests: async_nats::Subscriber) {
        // One at a time, in arrival order: requests of one origin session
        // reach the owner shard in the order they were sent.
        while let Some(msg) = requests.next().await {
            let Some(reply) = msg.reply else { continue };
            let Ok(forward) = <wire::Forward as prost::Message>::decode(msg.payload) else {
                continue;
            };
            self.serve_one(forward, reply).await;
        }
    }

    async fn serve_one(&self, forward: wire::Forward, reply: async_nats::Subject) {
        let request_id = forward.request_id;
        let conversation = ConversationId(forward.conversation);
        let partition = self.partition_of(conversation);
        // Refused with a mark that tells the origin to ask the lease
        // bucket again rather than this node.
        let refuse = async |link: &Link, reply| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(MOVED_HEADER, "1");
            let _ = link
                .client
                .publish_with_headers(
                    reply,
                    headers,
                    busy(request_id, "this node does not own the conversation"),
                )
                .await;
        };
        if self.wait_applied(forward.after).await.is_err() {
            refuse(self, reply).await;
            return;
        }
        // A node that gave the partition up after a failed write (its lease
        // still standing) takes it back here.
        let owned = self.owns(partition)
            || matches!(self.resolve(partition).await, Ok(n) if n == self.node);
        let Some(shards) = self.shards.get().filter(|_| owned) else {
            refuse(self, reply).await;
            return;
        };
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let src = link_source(shards.place.nr_shards());
        let origin = Origin {
            shard: src,
            session: token,
            request_id,
        };
        let Some(req) = wire::decode_request(forward, origin) else {
            refuse(self, reply).await;
            return;
        };
        self.replies.lock().insert(token, reply);
        let dst = shards.place.owner_of(conversation);
        shards
            .mesh
            .send(src, dst, ShardMsg::Request(Box::new(req)))
            .await;
    }

    /// Keeps the owner table current from the lease bucket's changes.
    async fn watch_leases(self: Arc<Self>) {
        loop {
            let mut watch = match self.leases.watch_all().await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(cause = %e, "watching leases");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            while let Some(Ok(entry)) = watch.next().await {
                let Some(p) = entry
                    .key
                    .strip_prefix('p')
                    .and_then(|p| p.parse::<u32>().ok())
                    .filter(|&p| p < self.partitions)
                else {
                    continue;
                };
                let owner = match entry.operation {
                    kv::Operation::Put => std::str::from_utf8(&entry.value)
                        .ok()
                        .and_then(|s| s.parse::<u16>().ok())
                        .unwrap_or(0),
                    _ => 0,
                };
                if owner == self.node {
                    continue;
                }
                if self.owns(p) {
                    tracing::warn!(partition = p, owner, "lost the partition's lease");
                    self.lose(p);
                }
                if let Some(o) = self.owners.get(p as usize) {
                    o.store(owner, Ordering::Release);
                }
            }
        }
    }

    /// Renews this node's leases every third of their lifetime; a lease
    /// that cannot be renewed is lost.
    async fn renew_leases(self: Arc<Self>) {
        let me = Bytes::from(self.node.to_string());
        let mut tick = tokio::time::interval(self.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for p in 0..self.partitions {
                let Some(rev) = self.revisions.get(p as usize) else {
                    continue;
                };
                let revision = rev.load(Ordering::Acquire);
                if revision == 0 || !self.owns(p) {
                    continue;
                }
                match self
                    .leases
                    .update(format!("p{p}"), me.clone(), revision)
                    .await
                {
                    Ok(next) => {
                        let _ = rev.compare_exchange(
                            revision,
                            next,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        );
                    }
                    Err(e) => {
                        tracing::warn!(partition = p, cause = %e, "lease not renewed; giving the partition up");
                        self.lose(p);
                    }
                }
            }
        }
    }

    /// Pushes typing indicators published by other nodes to this node's
    /// sessions.
    async fn relay_ephemeral(self: Arc<Self>, mut sub: async_nats::Subscriber) {
        while let Some(msg) = sub.next().await {
            if let Ok((origin, pushes)) = wire::decode_ephemeral(msg.payload) {
                if origin != self.node {
                    self.push_local(pushes, true).await;
                }
            }
        }
    }
}

/// A SERVER_BUSY reply: the conversation's owner is changing or out of
/// reach; the client retries after [`RETRY_AFTER_MS`].
pub fn busy(request_id: u64, why: &str) -> Bytes {
    crate::reply::error_with_retry(
        request_id,
        ErrorCode::ServerBusy,
        &format!("{why}; retry"),
        RETRY_AFTER_MS,
    )
}

/// Whether JetStream refused a publish for its expected last subject
/// sequence (the constant form, expecting an empty subject, has its own
/// error code).
fn wrong_last_sequence(e: &jetstream::context::PublishError) -> bool {
    use jetstream::ErrorCode;
    if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence {
        return true;
    }
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|j| j.error_code() == ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT)
}

/// The partition of `conversation` among `partitions`.
pub fn partition_of(conversation: ConversationId, partitions: u32) -> u32 {
    // A different multiplier from the shard placement's.
    let h = conversation.get().wrapping_mul(0xD6E8_FEB8_6659_FD93) >> 32;
    (h % u64::from(partitions.max(1))) as u32
}

async fn subscribe(
    client: &async_nats::Client,
    subject: String,
) -> std::result::Result<async_nats::Subscriber, LinkError> {
    client
        .subscribe(subject.clone())
        .await
        .map_err(|e| LinkError(format!("subscribing to {subject}: {e}")))
}

async fn connect(
    config: Config,
    rt: tokio::runtime::Handle,
    writer: Writer,
    applied: u64,
) -> std::result::Result<Arc<Link>, LinkError> {
    let c = &config.cluster;
    let addrs: Vec<async_nats::ServerAddr> = c
        .nats_urls
        .iter()
        .map(|u| {
            u.parse()
                .map_err(|e| LinkError(format!("cluster.nats_urls: {u}: {e}")))
        })
        .collect::<std::result::Result<_, _>>()?;
    let timeout = Duration::from_millis(c.request_timeout_ms.max(100));
    let client = async_nats::ConnectOptions::new()
        .name(format!("chatd-{}", c.node_id))
        .request_timeout(Some(timeout))
        .retry_on_initial_connect()
        .connect(addrs)
        .await
        .map_err(|e| link_error("connecting to NATS")(e.to_string()))?;
    let js = jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    let stream_config = stream::Config {
        name: c.stream.clone(),
        subjects: vec![
            format!("{}.p.*", c.stream),
            format!("{}.k.*", c.stream),
            format!("{}.g", c.stream),
        ],
        storage: stream::StorageType::File,
        num_replicas: c.replicas.max(1),
        allow_direct: true,
        metadata: [(PARTITIONS_KEY.to_owned(), c.partitions.to_string())].into(),
        ..Default::default()
    };
    // The JetStream cluster may still be electing its leader.
    let stream = loop {
        match js.get_or_create_stream(stream_config.clone()).await {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::info!(cause = %e, "waiting for JetStream");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(link_error("creating the stream")(e.to_string())),
        }
    };
    // Every node must split conversations the same way, or two nodes
    // would sequence one conversation under different partitions.
    let fixed = stream
        .cached_info()
        .config
        .metadata
        .get(PARTITIONS_KEY)
        .cloned();
    if let Some(fixed) = fixed.filter(|f| *f != c.partitions.to_string()) {
        return Err(LinkError(format!(
            "cluster.partitions is {} here but the stream {} was made with {fixed}: every node must use the stream's",
            c.partitions, c.stream
        )));
    }
    let lease = Duration::from_millis(c.lease_ms.max(300));
    let bucket = format!("{}_leases", c.stream);
    let leases = loop {
        let got = match js.get_key_value(&bucket).await {
            Ok(kv) => Ok(kv),
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    history: 1,
                    max_age: lease,
                    storage: stream::StorageType::File,
                    num_replicas: c.replicas.max(1),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string()),
        };
        match got {
            Ok(kv) => break kv,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::info!(cause = %e, "waiting for the lease bucket");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(link_error("creating the lease bucket")(e)),
        }
    };
    let (applied_tx, applied_rx) = watch::channel(applied);
    let (forwards, forward_queue) = mpsc::channel(FORWARD_QUEUE);
    let inbox = client.new_inbox();
    let n = c.partitions as usize;
    let link = Arc::new(Link {
        node: c.node_id,
        partitions: c.partitions,
        rt,
        client: client.clone(),
        js,
        leases,
        stream: c.stream.clone(),
        applied: applied_rx,
        owners: (0..n).map(|_| AtomicU16::new(0)).collect(),
        revisions: (0..n).map(|_| AtomicU64::new(0)).collect(),
        expected: (0..n).map(|_| AtomicU64::new(0)).collect(),
        epochs: (0..n).map(|_| AtomicU64::new(0)).collect(),
        taking: (0..n).map(|_| tokio::sync::Mutex::new(())).collect(),
        replies: Mutex::new(hashbrown::HashMap::new()),
        forwards,
        routing: (0..n)
            .map(|_| std::sync::atomic::AtomicU32::new(0))
            .collect(),
        pending: Mutex::new(hashbrown::HashMap::new()),
        inbox: inbox.clone(),
        next_token: AtomicU64::new(1),
        timeout,
        lease,
        shards: OnceLock::new(),
    });
    let last = stream
        .get_info()
        .await
        .map_err(|e| link_error("reading the stream")(e.to_string()))?
        .state
        .last_sequence;
    tokio::spawn(consume(link.clone(), stream, writer, applied, applied_tx));
    tokio::spawn(link.clone().watch_leases());
    tokio::spawn(link.clone().renew_leases());
    let requests = subscribe(&client, format!("{}.node.{}", c.stream, c.node_id)).await?;
    tokio::spawn(link.clone().serve(requests));
    let replies = subscribe(&client, format!("{inbox}.*")).await?;
    tokio::spawn(link.clone().collect_replies(replies));
    tokio::spawn(link.clone().forward_loop(forward_queue));
    tokio::spawn(link.clone().expire_forwards());
    let typing = subscribe(&client, link.topic(EPHEMERAL)).await?;
    tokio::spawn(link.clone().relay_ephemeral(typing));
    let ends = subscribe(&client, link.topic(END_USER)).await?;
    tokio::spawn(link.clone().relay_end_user(ends));
    let unwatches = subscribe(&client, link.topic(UNWATCH)).await?;
    tokio::spawn(link.clone().relay_unwatch(unwatches));
    let presence = subscribe(&client, link.topic(PRESENCE)).await?;
    tokio::spawn(link.clone().relay_presence(presence));
    tracing::info!(
        node = c.node_id,
        applied,
        stream_last = last,
        "catching up with the cluster stream"
    );
    let mut caught_up = link.applied.clone();
    caught_up
        .wait_for(|&a| a >= last)
        .await
        .map_err(|_| LinkError("the local store stopped while catching up".into()))?;
    Ok(link)
}

/// A record handed to the local writer, waiting for it to be stored.
struct Applying {
    seq: u64,
    stored: oneshot::Receiver<Result<u64>>,
    pushes: Vec<wire::Push>,
    remote: bool,
}

/// Applies the stream into the local store in order, from the sequence
/// after `applied`; then pushes each record written by another node to
/// this node's sessions.
async fn consume(
    link: Arc<Link>,
    stream: stream::Stream,
    writer: Writer,
    applied: u64,
    applied_tx: watch::Sender<u64>,
) {
    let (queue, mut stored) = mpsc::channel::<Applying>(APPLY_PIPELINE);
    let completer = link.clone();
    tokio::spawn(async move {
        while let Some(a) = stored.recv().await {
            match a.stored.await {
                Ok(Ok(_)) => {
                    applied_tx.send_replace(a.seq);
                    if a.remote && !a.pushes.is_empty() {
                        completer.push_local(a.pushes, false).await;
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(seq = a.seq, cause = %e, "applying the cluster stream failed");
                    return;
                }
                Err(_) => return,
            }
        }
    });
    let mut next = applied + 1;
    loop {
        let config = jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: next,
            },
            ..Default::default()
        };
        let messages = match stream.create_consumer(config).await {
            Ok(c) => c.messages().await,
            Err(e) => {
                tracing::warn!(cause = %e, "creating the stream consumer");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(cause = %e, "reading the stream");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            let msg = match tokio::time::timeout(STALL_CHECK, messages.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => {
                    tracing::warn!(cause = %e, "reading the stream");
                    break;
                }
                Ok(None) => break,
                // Quiet: fine if the stream holds nothing more; a consumer
                // left behind by a server's failure is made afresh.
                Err(_) => match stream.get_info().await {
                    Ok(info) if info.state.last_sequence >= next => {
                        tracing::info!(next, "the stream consumer stalled; recreating it");
                        break;
                    }
                    _ => continue,
                },
            };
            let Ok(info) = msg.info() else { continue };
            let seq = info.stream_sequence;
            if seq < next {
                continue;
            }
            let record = match wire::decode_record(msg.message.payload.clone()) {
                Ok(r) => r,
                Err(e) => {
                    // A record this version cannot read: stop applying
                    // rather than build a store with a hole in it.
                    tracing::error!(seq, cause = %e, "undecodable record in the cluster stream; stopped applying");
                    return;
                }
            };
            let mut batch = record.batch;
            batch.put_cluster_applied(seq);
            let stored = match writer.enqueue(batch).await {
                Ok(rx) => rx,
                Err(_) => return,
            };
            let applying = Applying {
                seq,
                stored,
                pushes: record.pushes,
                remote: record.origin != link.node,
            };
            if queue.send(applying).await.is_err() {
                return;
            }
            next = seq + 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
